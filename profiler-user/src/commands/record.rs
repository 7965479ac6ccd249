//! `stallscope record`: set up, run the event loop, write the outputs. The edges (I/O, signals,
//! the kernel) live here; what events mean is decided in [`crate::analysis::session`] and the pure modules.

use std::{future::Future, path::PathBuf, pin::Pin, time::Duration};

use anyhow::{Context as _, Result, anyhow, bail};
use tokio::{
    signal::unix::{SignalKind, signal},
    time::{Instant, MissedTickBehavior},
};

use crate::{
    analysis::budget,
    analysis::events,
    analysis::session::{Session, monotonic_ns},
    commands::render,
    config::{RecordConfig, Target},
    model::Recording,
    outputs::{live, summary},
    store::{events::EventLog, symbols},
    syscalls,
    system::attach::{self, LoadOptions, Probes},
    system::features::{self, KernelFeatures},
    system::privileges,
    system::procfs,
    system::ring_reader::{Batch, RingReader},
    system::tracefs,
};

/// Why recording stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Duration,
    Signal,
    TargetsExited,
    /// The caller's own stop condition (for `ci`: the load command finished).
    External,
}

/// What a finished recording produced.
pub struct Outcome {
    pub recording: Recording,
    pub out_dir: PathBuf,
    pub stop: StopReason,
}

impl Outcome {
    /// Exit code per DESIGN.md: the verdict's.
    pub fn exit_code(&self) -> u8 {
        self.recording.verdict.exit_code()
    }
}

/// Most raw events saved for `stallscope report` (80 bytes each: 160 MB at most).
const MAX_SAVED_EVENTS: u64 = 2_000_000;

pub fn local_timestamp() -> String {
    // SAFETY: time/localtime_r/strftime with valid buffers.
    unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&now, &mut tm);
        let mut buf = [0u8; 32];
        let n = libc::strftime(
            buf.as_mut_ptr().cast(),
            buf.len(),
            c"%Y%m%d-%H%M%S".as_ptr(),
            &tm,
        );
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

/// Checks the targets exist before anything is loaded.
fn resolve_pids(pids: &[u32]) -> Result<Vec<procfs::ProcessId>> {
    pids.iter()
        .map(|&pid| {
            procfs::process_id(pid).ok_or_else(|| {
                anyhow!("no process with PID {pid}: it is not running (check with `ps -p {pid}`)")
            })
        })
        .collect()
}

fn prepare_out_dir(config: &RecordConfig, label: &str) -> Result<PathBuf> {
    let dir = config
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("stallscope-{label}-{}", local_timestamp())));
    render::prepare_output_dir(&dir)?;
    Ok(dir)
}

/// Test hook: widen the window between the target check and the attach, so the "target exited
/// while attaching" path can be tested deterministically. Never set in normal use.
fn test_attach_delay() {
    if let Some(ms) = std::env::var("STALLSCOPE_TEST_ATTACH_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        std::thread::sleep(Duration::from_millis(ms));
    }
}

/// `stallscope record`: records until --duration, a signal, or the targets exit.
/// Test hook: hold the agent in its finishing phase (after the first interrupt, before the
/// outputs are written) so the second-interrupt abort can be tested. Never set in normal use.
fn test_finish_delay() {
    if let Some(ms) = std::env::var("STALLSCOPE_TEST_FINISH_DELAY_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        std::thread::sleep(Duration::from_millis(ms));
    }
}

pub async fn run(config: RecordConfig) -> Result<Outcome> {
    run_with_start(config, || Box::pin(std::future::pending())).await
}

/// Records; once attached, calls `start`, and stops when the future it returns completes (or on
/// any of `record`'s own stop conditions). `ci` starts its load command there.
pub async fn run_with_start(
    config: RecordConfig,
    start: impl FnOnce() -> Pin<Box<dyn Future<Output = ()>>>,
) -> Result<Outcome> {
    let start_pids = match &config.target {
        Target::Pids(pids) => resolve_pids(pids)?,
        Target::Command(_) => Vec::new(),
    };
    let label = match (&config.target, start_pids.first()) {
        (Target::Pids(_), Some(first)) => first.pid.to_string(),
        _ => "command".to_string(),
    };
    if let Some(reason) = features::kernel_release().and_then(|r| features::too_old(&r)) {
        bail!(features::too_old_line(&reason));
    }
    let out_dir = prepare_out_dir(&config, &label)?;
    if let Some(problem) = privileges::check() {
        bail!(problem);
    }
    let kernel = KernelFeatures::probe();
    let tracefs_root = tracefs::ensure_mounted()?;
    let offsets = tracefs::read_offsets(&tracefs_root)?;
    let (mut probes, ring, kernel) = load_probes(kernel, |kernel| {
        load_options(
            &config,
            kernel,
            offsets,
            out_dir.join("verifier.log"),
            attach::Matching::default(),
        )
    })
    .map_err(explain_load_error)?;

    let mut session = Session::new(config.clone());
    if !config.quiet {
        session.live_sink = Some(Box::new(live::LiveLines(config.view)));
    }
    session.event_log = Some(Box::new(EventLog::create(&out_dir, MAX_SAVED_EVENTS)?));
    let mut child = None;
    match &config.target {
        Target::Pids(_) => {
            let pids: Vec<u32> = start_pids.iter().map(|p| p.pid).collect();
            for pid in procfs::with_descendants(&pids) {
                // V8's metadata first: reading a 100 MB node binary takes a while, and a
                // followed process's events would pile up in the ring meanwhile.
                session.v8s.process(pid);
                probes.follow(pid, &procfs::threads(pid))?;
                session.add_process(&probes, pid, None);
            }
            test_attach_delay();
            for id in &start_pids {
                if !procfs::is_alive(*id) {
                    bail!(
                        "process {} exited while stallscope was attaching; nothing was recorded",
                        id.pid
                    );
                }
            }
        }
        Target::Command(argv) => {
            child = Some(spawn_followed(&mut probes, &mut session, argv)?);
        }
    }
    // Attached: what a compromised agent could do with the rest of root's capabilities
    // (load programs, read kernel memory, load modules) is no longer needed.
    let keep = privileges::still_needed(privileges::output_needs_override(&out_dir));
    if let Err(err) = privileges::drop_all_but(keep) {
        eprintln!("stallscope: warning: could not drop unneeded capabilities: {err}");
    }
    for pid in session.processes.pids() {
        detect_waiting_threads(&mut session, pid);
    }
    session.sync_python(&mut probes);
    let start_ns = monotonic_ns();
    announce(&session, &out_dir);
    if let Some(limits) = kernel.limits_line() {
        eprintln!("stallscope: {limits}");
    }

    let stop = event_loop(&mut session, &mut probes, ring, child, start()).await?;
    session.stopped(&mut probes);
    test_finish_delay();
    let end_ns = monotonic_ns();
    let event_log = session.event_log.take();
    let mut saved = symbols::SymbolTable::default();
    session
        .resolver
        .save_all(&probes, |stack| saved.push(stack));
    let mut recording = session.finish(&probes, start_ns, end_ns);
    recording.kernel_limits = kernel.limits();
    if let Some(log) = event_log {
        recording.drops.events_not_saved = log.finish()?;
    }
    symbols::save_symbols(&out_dir, saved)?;
    recording.verdict = budget::judge(&config.budgets, &recording);
    let written = render::write_outputs(&out_dir, &recording, &config.formats, config.view)?;
    if stop == StopReason::TargetsExited {
        eprintln!("stallscope: every target has exited; recording stopped");
    }
    print!(
        "{}",
        summary::summary_text(&recording, &written, config.view)
    );
    summary::append_github_step_summary(&recording, config.view)?;
    Ok(Outcome {
        recording,
        out_dir,
        stop,
    })
}

/// The programs' settings for recording with `config` (shared with `watch`, which adds what
/// new processes the kernel side follows by itself).
pub fn load_options(
    config: &RecordConfig,
    kernel: KernelFeatures,
    offsets: profiler_common::TracepointOffsets,
    verifier_log: PathBuf,
    matching: attach::Matching,
) -> LoadOptions {
    LoadOptions {
        offsets,
        ring_buffer_bytes: config.ring_buffer_bytes,
        freq_hz: config.freq_hz,
        wait_points: syscalls::wait_point_numbers(),
        runtime_wait_points: syscalls::runtime_wait_point_numbers(),
        stack_copy_bytes: config.stack_bytes,
        task_fsbase_offset: fsbase_offset(),
        // Without it a switch-in the kernel does not trace stays untimed (README, Limits).
        task_arrival_offset: crate::system::btf::task_arrival_offset().unwrap_or(0),
        task_offsets: task_offsets(),
        waker_min_blocked_ns: if eager_stacks() {
            0
        } else {
            config.threshold_ns / WAKER_STACK_FRACTION
        },
        eager_stacks: eager_stacks(),
        late_min_ns: if eager_stacks() || !late_stacks() || !syscall_hooks() {
            0
        } else {
            config.threshold_ns / profiler_common::LATE_STACK_FRACTION
        },
        task_stack_offset: stack_offset(&kernel),
        syscall_text: syscall_text(),
        trampolines: trampolines(),
        syscall_hooks: syscall_hooks(),
        features: kernel,
        verifier_log,
        verbose: config.verbose,
        matching,
    }
}

/// Where the kernel keeps a task's fs_base, for Python 3.9/3.10 threads (0 when unknown: their
/// Python frames are then not read, which is said once).
fn fsbase_offset() -> u32 {
    match crate::system::btf::task_fsbase_offset() {
        Ok(offset) => offset,
        Err(err) => {
            eprintln!("stallscope: warning: {err:#}; Python 3.9 and 3.10 frames will not be shown");
            0
        }
    }
}

/// A waker's stacks are taken when its sleeper has been blocked at least this fraction of the
/// threshold (1 ms at the default 100 ms): shorter waits would take a hundred to make a stall,
/// and a ping-pong's microsecond sleeps are most wake-ups of a busy process.
/// Their time is still counted, with the sleeper's own switch-out stack. Futex waits (locks, the
/// GIL) always get their waker's stacks: a contended lock is many short waits.
const WAKER_STACK_FRACTION: u64 = 100;

/// Where `do_syscall_64` is, for reusing kernel stacks taken at the same place; (0, 0) when
/// /proc/kallsyms hides it (every kernel stack is then walked) or with
/// `STALLSCOPE_KSTACK_REUSE=0` (exact, for measuring what reuse saves).
fn syscall_text() -> (u64, u64) {
    if std::env::var_os("STALLSCOPE_KSTACK_REUSE").is_some_and(|v| v == "0") {
        return (0, 0);
    }
    crate::system::kallsyms::syscall_entry_text().unwrap_or((0, 0))
}

/// `STALLSCOPE_EAGER_STACKS=1`: stacks at every preemption and for every waker, as before late
/// capture (to measure what it saves).
fn eager_stacks() -> bool {
    std::env::var_os("STALLSCOPE_EAGER_STACKS").is_some_and(|v| v == "1")
}

/// `STALLSCOPE_LATE_STACKS=0`: blocked threads' stacks at switch-out, and no program on
/// `raw_syscalls:sys_exit` (late capture costs every syscall of the machine one filter run;
/// to measure it against that, or to spare a host whose other processes make many syscalls).
fn late_stacks() -> bool {
    std::env::var_os("STALLSCOPE_LATE_STACKS").is_none_or(|v| v != "0")
}

/// `STALLSCOPE_TRAMPOLINES=1`: the wait points, exits and late capture on BPF trampolines
/// instead of syscall tracepoints (sparing every other process's syscalls the tracepoint slow
/// path), where the kernel loads them. Opt-in until that path has run on a kernel that allows
/// tracing programs (the development host refuses them; bench/RESULTS.md).
fn trampolines() -> bool {
    std::env::var_os("STALLSCOPE_TRAMPOLINES").is_some_and(|v| v == "1")
}

/// `STALLSCOPE_SYSCALL_HOOKS=0`: no program on any syscall (no wait points, exits or late
/// capture), only the scheduler's: for the benchmark, to split what other processes pay per
/// switch from what they pay per syscall. Loop iterations are then not cut at the wait points
/// and blocks carry no syscall: not for real recordings.
fn syscall_hooks() -> bool {
    std::env::var_os("STALLSCOPE_SYSCALL_HOOKS").is_none_or(|v| v != "0")
}

/// `STALLSCOPE_CLASSIC_TRACEPOINTS=1` forces the classic scheduler tracepoints (to measure the
/// raw ones against them, or to sidestep a kernel whose raw ones misbehave).
fn classic_tracepoints() -> bool {
    std::env::var_os("STALLSCOPE_CLASSIC_TRACEPOINTS").is_some_and(|v| v == "1")
}

/// `task_struct` offsets for the raw scheduler tracepoints; without them (no BTF, a kernel
/// before 5.18) the classic tracepoints do the same job at a higher cost per switch.
fn task_offsets() -> Option<profiler_common::TaskOffsets> {
    if classic_tracepoints() {
        return None;
    }
    match crate::system::btf::task_offsets() {
        Ok(offsets) if offsets.switch_has_state == 1 => Some(offsets),
        Ok(_) => {
            log::info!("sched_switch passes no prev_state (before 5.18): classic tracepoints");
            None
        }
        Err(err) => {
            log::info!("{err:#}: classic scheduler tracepoints");
            None
        }
    }
}

/// Where the kernel keeps a task's kernel stack, for the user registers on a kernel without
/// bpf_task_pt_regs (0 when unknown there: user stacks then come from frame pointers only).
fn stack_offset(kernel: &KernelFeatures) -> u32 {
    if kernel.full() {
        return 0;
    }
    match crate::system::btf::task_stack_offset() {
        Ok(offset) => offset,
        Err(err) => {
            eprintln!(
                "stallscope: warning: {err:#}; on this kernel user stacks come from frame pointers only and wait points are not seen"
            );
            0
        }
    }
}

/// Loads and attaches the programs for `kernel`; when its verifier refuses the full programs as
/// too complex, the compat build instead (said as what is off on this kernel). Returns the
/// features the loaded programs have.
pub fn load_probes(
    kernel: KernelFeatures,
    options: impl Fn(KernelFeatures) -> LoadOptions,
) -> Result<(
    Probes,
    aya::maps::RingBuf<aya::maps::MapData>,
    KernelFeatures,
)> {
    match attach::load(&options(kernel)) {
        Err(err) if fallback(kernel, &err).is_some() => {
            let compat = kernel.with_full_refused();
            eprintln!("stallscope: {}", fallback_line(&err, &compat));
            let (probes, ring) = attach::load(&options(compat)).with_context(|| {
                format!("the compat programs, after the full ones were refused: {err:#}")
            })?;
            Ok((probes, ring, compat))
        }
        loaded => loaded.map(|(probes, ring)| (probes, ring, kernel)),
    }
}

/// The features to load with after `err`: the compat build when the verifier refused the full
/// programs as too complex (E2BIG; an older verifier prunes less), else none (the error
/// stands: any other refusal is a bug to report, and the compat build was already tried).
pub fn fallback(kernel: KernelFeatures, err: &anyhow::Error) -> Option<KernelFeatures> {
    (kernel.full() && attach::is_too_complex(err)).then(|| kernel.with_full_refused())
}

/// The one line saying the compat build is loaded instead, and why: the refusal's own first
/// line (which program, where its log is) and what the compat build lacks.
pub fn fallback_line(err: &anyhow::Error, compat: &KernelFeatures) -> String {
    let refusal = err.to_string();
    let refusal = refusal.lines().next().unwrap_or_default();
    let lacks = compat.limits().join("; ");
    format!("{refusal}; loading the compat build instead: {lacks}")
}

pub fn explain_load_error(err: anyhow::Error) -> anyhow::Error {
    if attach::is_permission_denied(&err) {
        err.context("the kernel refused the eBPF programs (EPERM): run as root, or with CAP_BPF and CAP_PERFMON, and check kernel.perf_event_paranoid and kernel.unprivileged_bpf_disabled")
    } else {
        err
    }
}

/// Starts COMMAND so that the kernel follows it from its first instruction: we follow
/// ourselves just for the fork (the kernel then follows the child), then stop.
fn spawn_followed(
    probes: &mut Probes,
    session: &mut Session,
    argv: &[String],
) -> Result<tokio::process::Child> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| anyhow!("no command given after --"))?;
    let own = std::process::id();
    probes.follow(own, &[])?;
    let spawned = tokio::process::Command::new(program).args(args).spawn();
    probes.unfollow(own);
    let child = spawned.with_context(|| format!("cannot run `{program}`"))?;
    let pid = child
        .id()
        .ok_or_else(|| anyhow!("`{program}` exited before it could be followed"))?;
    // Belt and braces: the fork event made the kernel follow it; make sure.
    probes.follow(pid, &[pid])?;
    session.add_process(probes, pid, Some(monotonic_ns()));
    Ok(child)
}

/// Threads blocked in a wait point right now are loop threads between iterations.
pub fn detect_waiting_threads(session: &mut Session, pid: u32) {
    for tid in procfs::threads(pid) {
        let comm = procfs::thread_stat(pid, tid)
            .map(|s| s.comm)
            .unwrap_or_default();
        if procfs::blocked_syscall(pid, tid)
            .is_some_and(|nr| syscalls::is_wait_point_for(&comm, nr))
        {
            session.mark_waiting(pid, tid);
        }
    }
}

fn announce(session: &Session, out_dir: &std::path::Path) {
    let mut pids: Vec<String> = session
        .processes
        .followed_records()
        .map(|p| format!("{} ({})", p.pid, p.comm))
        .collect();
    pids.sort();
    let duration = session
        .config
        .duration
        .map_or_else(|| "until Ctrl-C".to_string(), |d| format!("for {d:?}"));
    eprintln!(
        "stallscope: recording {} {duration}, threshold {}, writing to {}",
        pids.join(", "),
        crate::units::format_duration(session.config.threshold_ns),
        out_dir.display()
    );
}

async fn event_loop(
    session: &mut Session,
    probes: &mut Probes,
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    mut child: Option<tokio::process::Child>,
    mut stop: Pin<Box<dyn Future<Output = ()>>>,
) -> Result<StopReason> {
    let mut ring = RingReader::spawn(ring)?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let deadline = session.config.duration.map(|d| Instant::now() + d);
    let mut reported_losses = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let reason = loop {
        tokio::select! {
            batch = ring.next() => {
                let Some(batch) = batch else {
                    bail!("the ring buffer's reader thread ended");
                };
                handle_batch(session, probes, &batch);
            }
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {
                break StopReason::Duration;
            }
            () = &mut stop => break StopReason::External,
            _ = sigint.recv() => break StopReason::Signal,
            _ = sigterm.recv() => break StopReason::Signal,
            _ = sighup.recv() => break StopReason::Signal,
            status = async { match child.as_mut() { Some(c) => c.wait().await, None => std::future::pending().await } } => {
                if let Ok(status) = status {
                    eprintln!("stallscope: command exited ({status})");
                }
                // Let the kernel's last events (exit) arrive.
                tokio::time::sleep(Duration::from_millis(50)).await;
                break StopReason::TargetsExited;
            }
            _ = tick.tick() => {
                if let Some(logger) = probes.logger.as_mut() {
                    logger.flush();
                }
                warn_about_losses(session, probes, &mut reported_losses);
                if reported_losses > 0 {
                    session.reap_vanished(probes, monotonic_ns());
                }
                if child.is_none() && session.all_targets_gone(probes) {
                    break StopReason::TargetsExited;
                }
            }
        }
    };
    read_to_the_end(session, probes, &mut ring).await;
    session.flush(probes);
    log_kstack_stats(probes);
    if reason == StopReason::Signal {
        abort_on_second_interrupt(session.stalls.len());
    }
    Ok(reason)
}

/// How many kernel stacks were walked and how many reused (`RUST_LOG=info`, for the benches).
pub fn log_kstack_stats(probes: &Probes) {
    use profiler_common::kstack_stat;
    let stats = probes.kstack_stats();
    log::info!(
        "kernel stacks at switch-outs and wakers: {} walked, {} reused, {} checks, {} differed",
        stats[kstack_stat::TAKEN as usize],
        stats[kstack_stat::REUSED as usize],
        stats[kstack_stat::VERIFIED as usize],
        stats[kstack_stat::DIFFERED as usize],
    );
}

/// Says so, live, when the kernel drops events (at most once per tick, and only when the count
/// grew): the stalls of that time are flagged `data_lost`, not silently wrong.
pub fn warn_about_losses(session: &Session, probes: &Probes, reported: &mut u64) {
    let kernel_full = probes.drops()[profiler_common::drop::RINGBUF_FULL as usize];
    let lost = session.loss.lost.max(kernel_full);
    if lost > *reported {
        eprintln!(
            "stallscope: warning: {} events lost so far (ring buffer full); stalls meanwhile are marked data_lost. A larger --ring-buffer-kib or a lower --freq helps",
            lost
        );
        *reported = lost;
    }
}

/// The message the second Ctrl-C prints; formatted before the handler can run, since a signal
/// handler may only call async-signal-safe functions (write, _exit).
static ABORT_MESSAGE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();

extern "C" fn abort_now(_signal: libc::c_int) {
    if let Some(message) = ABORT_MESSAGE.get() {
        // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is immutable.
        unsafe { libc::write(2, message.as_ptr().cast(), message.len()) };
    }
    // SAFETY: as above.
    unsafe { libc::_exit(130) };
}

/// After the first interrupt the agent symbolizes and writes its outputs, which can take a
/// while on a big recording; a second Ctrl-C (or SIGTERM) ends it at once with a short report.
fn abort_on_second_interrupt(stalls_so_far: usize) {
    let _ = ABORT_MESSAGE.set(
        format!(
            "\nstallscope: interrupted again: aborting with {stalls_so_far} stall(s) seen; outputs were not written\n"
        )
        .into_bytes(),
    );
    // SAFETY: installing a handler that only calls async-signal-safe functions.
    unsafe {
        libc::signal(libc::SIGINT, abort_now as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, abort_now as *const () as libc::sighandler_t);
    }
}

/// Stops reading the ring after a last read, and handles every batch up to it.
pub async fn read_to_the_end(session: &mut Session, probes: &mut Probes, ring: &mut RingReader) {
    ring.stop();
    while let Some(batch) = ring.next().await {
        handle_batch(session, probes, &batch);
    }
    log::info!(
        "ring reader: at most {} KiB of records waited for the session",
        ring.most_queued_bytes() >> 10
    );
}

/// What the ring held, handled in order; then the events older than the read's start are
/// released from the reorder window (they were in the ring by then, unless they took longer
/// than the window to get there).
pub fn handle_batch(session: &mut Session, probes: &mut Probes, batch: &Batch) {
    for record in batch.records() {
        match events::decode_record(record) {
            Some(events::Record::Event(raw)) => session.handle_raw(probes, &raw),
            Some(events::Record::Stack { header, stack }) => session.handle_stack(&header, stack),
            Some(events::Record::Python { header, frames }) => {
                session.handle_python(&header, &frames)
            }
            None => {}
        }
    }
    if let Some(read_ns) = batch.read_ns {
        session.advance(probes, read_ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refusal as `attach::refused` makes it: the errno typed at the bottom, one line on top.
    fn refusal(errno: i32) -> anyhow::Error {
        anyhow::Error::new(std::io::Error::from_raw_os_error(errno)).context(
            "the kernel's verifier refused program sched_switch (Argument list too long (os error 7)); \
             its log is in /tmp/out/verifier.log; `stallscope doctor` says what this kernel lacks\n\
             verifier log:\nprocessed 1000001 insns",
        )
    }

    /// Issue #21: Debian 12's 6.1 refuses the full programs as too complex (E2BIG); only that
    /// refusal, and only of the full build, falls back to the compat build.
    #[test]
    fn too_complex_full_programs_fall_back_to_compat_once() {
        let compat = fallback(KernelFeatures::ALL, &refusal(libc::E2BIG));
        assert_eq!(compat, Some(KernelFeatures::ALL.with_full_refused()));
        assert!(
            !compat.is_some_and(|c| c.full()),
            "the fallback loads the compat build"
        );
        // Any other refusal is reported as it is.
        assert_eq!(fallback(KernelFeatures::ALL, &refusal(libc::EINVAL)), None);
        assert_eq!(fallback(KernelFeatures::ALL, &refusal(libc::EACCES)), None);
        // The compat build refused too: nothing left to try.
        assert_eq!(fallback(KernelFeatures::NONE, &refusal(libc::E2BIG)), None);
        assert_eq!(
            fallback(
                KernelFeatures::ALL.with_full_refused(),
                &refusal(libc::E2BIG)
            ),
            None
        );
    }

    /// The user sees one line: which program was refused, where its log is, that the compat
    /// build is loaded, and what that costs; not the log (even when --verbose put it below).
    #[test]
    fn fallback_says_so_in_one_line() {
        let compat = KernelFeatures::ALL.with_full_refused();
        let line = fallback_line(&refusal(libc::E2BIG), &compat);
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains("refused program sched_switch"), "{line}");
        assert!(line.contains("/tmp/out/verifier.log"), "{line}");
        assert!(line.contains("loading the compat build instead"), "{line}");
        assert!(line.contains("too complex"), "{line}");
        assert!(!line.contains("processed"), "{line}");
    }

    fn explained(err: anyhow::Error) -> String {
        format!("{:#}", explain_load_error(err))
    }

    /// Issue #18: EPERM was found by matching the error's text ("Operation not permitted",
    /// "EPERM"); it is now the errno of the `io::Error` in the chain, as aya reports it.
    #[test]
    fn eperm_is_a_typed_error_not_matched_text() {
        let refused = aya::maps::MapError::SyscallError(aya::sys::SyscallError {
            call: "bpf_map_create",
            io_error: std::io::Error::from_raw_os_error(libc::EPERM),
        });
        let err = anyhow::Error::new(aya::EbpfError::MapError(refused))
            .context("loading the eBPF programs into the kernel");
        assert!(
            explained(err).contains("run as root, or with CAP_BPF and CAP_PERFMON"),
            "EPERM from the kernel is explained"
        );
        // Words are not the errno: a message that only says them is left as it is.
        let words = anyhow!("map EPERM_COUNTS: Operation not permitted, says the log");
        assert!(!explained(words).contains("CAP_BPF"));
        // Nor is another errno.
        let eacces = anyhow::Error::new(std::io::Error::from_raw_os_error(libc::EACCES));
        assert!(!explained(eacces).contains("CAP_BPF"));
    }
}
