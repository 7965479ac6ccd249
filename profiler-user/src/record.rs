//! `stallscope record`: set up, run the event loop, write the outputs. The edges (I/O, signals,
//! the kernel) live here; decisions are delegated to the pure modules (timeline, report).

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};
use profiler_common::{Event as RawEvent, drop as drop_index, kind};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
    time::{Instant, MissedTickBehavior},
};

use crate::{
    attach::{self, LoadOptions, Probes},
    cli::{RecordConfig, Target},
    events::{self, Lifecycle, LossDetector},
    privileges, procfs,
    report::{self, Drops, OffCpuRecord, ProcessRecord, Recording, StackRecord, StallRecord},
    symbolize::{Frame, Symbols},
    syscalls,
    timeline::{self, StackKey, Stall, StallRule, Timeline},
    tracefs,
};

/// Limits on what a recording keeps, with the reason for each.
pub struct Limits {
    /// Distinct stacks per stall: the top few explain a stall; thousands only cost memory.
    pub stacks_per_stall: usize,
    /// (thread, stack) pairs in the off-CPU profile: enough for any real service.
    pub offcpu_entries: usize,
    /// Stalls kept in full; past this only the count grows (a loop stalling every iteration for
    /// an hour must not eat the machine).
    pub stalls: usize,
    /// Spans and samples for the timeline view (trace.json): about 10 MB at most.
    pub marks: usize,
    /// Off-CPU spans shorter than this are left out of the timeline view.
    pub min_mark_ns: u64,
}

pub const LIMITS: Limits = Limits {
    stacks_per_stall: 256,
    offcpu_entries: 20_000,
    stalls: 10_000,
    marks: 200_000,
    min_mark_ns: 1_000_000,
};

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Why recording stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    Duration,
    Signal,
    TargetsExited,
}

struct ProcessState {
    record: ProcessRecord,
    id: Option<procfs::ProcessId>,
}

/// Everything one recording accumulates while events flow.
struct Session {
    config: RecordConfig,
    own_pid: u32,
    timeline: Timeline,
    symbols: Symbols,
    loss: LossDetector,
    processes: HashMap<u32, ProcessState>,
    thread_names: HashMap<u32, String>,
    stalls: Vec<StallRecord>,
    stalls_not_kept: u64,
    resolved: HashMap<StackKey, Vec<Frame>>,
    stack_cache: HashMap<i32, Vec<u64>>,
    /// STALLSCOPE_DEBUG_EVENTS=1: print every raw event (for developing the probes).
    debug_events: bool,
}

impl Session {
    fn new(config: RecordConfig) -> Self {
        let timeline = Timeline::new(timeline::Config {
            threshold_ns: config.threshold_ns,
            sample_period_ns: 1_000_000_000 / config.freq_hz,
            max_stacks_per_span: LIMITS.stacks_per_stall,
            max_offcpu_entries: LIMITS.offcpu_entries,
            max_marks: LIMITS.marks,
            min_mark_ns: LIMITS.min_mark_ns,
        });
        Session {
            config,
            own_pid: std::process::id(),
            timeline,
            symbols: Symbols::new(),
            loss: LossDetector::default(),
            processes: HashMap::new(),
            thread_names: HashMap::new(),
            stalls: Vec::new(),
            stalls_not_kept: 0,
            resolved: HashMap::new(),
            stack_cache: HashMap::new(),
            debug_events: std::env::var_os("STALLSCOPE_DEBUG_EVENTS").is_some(),
        }
    }

    /// Registers a process we follow, reading what /proc says about it while it lives.
    fn add_process(&mut self, pid: u32, started_ns: Option<u64>) {
        if self.processes.contains_key(&pid) {
            return;
        }
        let stat = procfs::stat(pid);
        let record = ProcessRecord {
            pid,
            comm: stat.as_ref().map_or_else(|| "?".into(), |s| s.comm.clone()),
            exe: procfs::exe(pid).map_or_else(String::new, |p| p.display().to_string()),
            started_ns,
            exited_ns: None,
        };
        self.symbols.snapshot(pid);
        for tid in procfs::threads(pid) {
            if let Some(stat) = procfs::thread_stat(pid, tid) {
                self.thread_names.insert(tid, stat.comm);
            }
        }
        let id = procfs::process_id(pid);
        self.processes.insert(pid, ProcessState { record, id });
    }

    fn handle_raw(&mut self, probes: &mut Probes, raw: &RawEvent) {
        if raw.pid == self.own_pid {
            // Only while spawning a COMMAND do we follow ourselves (so the kernel follows the
            // child from its first instruction); our own events are not part of the recording.
            return;
        }
        if self.loss.observe(raw.cpu, raw.seq) > 0 {
            self.timeline.lost();
        }
        // Only events taken in the thread's own context carry its name (a wake-up carries the
        // waker's).
        if raw.comm[0] != 0 && !matches!(raw.kind, kind::WAKING | kind::WAKEUP) {
            let comm = comm_string(&raw.comm);
            if self.thread_names.get(&raw.tid) != Some(&comm) {
                self.thread_names.insert(raw.tid, comm);
            }
        }
        if self.debug_events {
            eprintln!("event {raw:?}");
        }
        let decoded = events::interpret(raw);
        if let Some(lifecycle) = decoded.lifecycle {
            self.lifecycle(probes, lifecycle, raw.ts_ns);
        }
        if let Some(event) = decoded.timeline {
            if !self.processes.contains_key(&event.pid) && event.pid == event.tid {
                self.add_process(event.pid, None);
            }
            if let Some(stall) = self.timeline.handle(&event) {
                self.stall_ended(probes, stall, true);
            }
        }
    }

    fn lifecycle(&mut self, probes: &mut Probes, lifecycle: Lifecycle, ts_ns: u64) {
        match lifecycle {
            Lifecycle::Fork { child_tid, .. } => {
                // A new process (not a thread) has itself as thread group leader.
                let is_process = procfs::stat(child_tid).is_some()
                    && std::fs::read_to_string(format!("/proc/{child_tid}/status"))
                        .ok()
                        .and_then(|s| {
                            s.lines()
                                .find_map(|l| l.strip_prefix("Tgid:").map(|v| v.trim().to_string()))
                        })
                        .is_some_and(|tgid| tgid == child_tid.to_string());
                if is_process {
                    self.add_process(child_tid, Some(ts_ns));
                }
            }
            Lifecycle::Exec { pid } => {
                self.symbols.forget(pid);
                self.symbols.snapshot(pid);
                if let Some(process) = self.processes.get_mut(&pid) {
                    if let Some(stat) = procfs::stat(pid) {
                        process.record.comm = stat.comm;
                    }
                    if let Some(exe) = procfs::exe(pid) {
                        process.record.exe = exe.display().to_string();
                    }
                }
            }
            Lifecycle::Exit {
                pid, group_dead, ..
            } => {
                if group_dead {
                    if let Some(process) = self.processes.get_mut(&pid) {
                        process.record.exited_ns = Some(ts_ns);
                    }
                    probes.unfollow(pid);
                }
            }
        }
    }

    /// Whether a stall is shown: iterations of loop threads always; runs only for processes
    /// with no loop thread (a worker pool's CPU work is not a stall of anyone's loop); with
    /// --thread/--thread-name, only those threads.
    fn is_reported(&self, stall: &Stall) -> bool {
        if !self.config.threads.is_empty() || self.config.thread_name.is_some() {
            let by_tid = self.config.threads.contains(&stall.tid);
            let by_name = self
                .config
                .thread_name
                .as_ref()
                .is_some_and(|name| self.thread_names.get(&stall.tid) == Some(name));
            return by_tid || by_name;
        }
        match stall.rule {
            StallRule::Iteration => true,
            StallRule::Run => {
                !self.timeline.is_loop_thread(stall.tid)
                    && !self.timeline.process_has_loop(stall.pid)
            }
        }
    }

    fn stall_ended(&mut self, probes: &Probes, stall: Stall, live: bool) {
        if !self.is_reported(&stall) {
            return;
        }
        if self.stalls.len() >= LIMITS.stalls {
            self.stalls_not_kept += 1;
            return;
        }
        let record = self.stall_record(probes, &stall);
        if live && !self.config.quiet {
            println!("{}", report::live_line(&record));
        }
        self.stalls.push(record);
    }

    fn stall_record(&mut self, probes: &Probes, stall: &Stall) -> StallRecord {
        let stacks = stall
            .stacks
            .iter()
            .map(|s| StackRecord {
                kind: s.kind.as_str().to_string(),
                weight_ns: s.weight_ns,
                count: s.count,
                syscall: syscall_name(s.syscall),
                frames: self.frames(probes, s.stack),
            })
            .collect();
        StallRecord {
            pid: stall.pid,
            tid: stall.tid,
            comm: self.thread_name(stall.tid),
            start_ns: stall.start_ns,
            end_ns: stall.end_ns,
            duration_ns: stall.duration_ns(),
            on_cpu_ns: stall.on_cpu_ns,
            off_cpu_ns: stall.off_cpu_ns,
            runqueue_ns: stall.runqueue_ns,
            rule: match stall.rule {
                StallRule::Iteration => "iteration",
                StallRule::Run => "run",
            }
            .into(),
            partial: stall.partial,
            data_lost: stall.data_lost,
            stacks,
        }
    }

    fn thread_name(&self, tid: u32) -> String {
        self.thread_names
            .get(&tid)
            .cloned()
            .unwrap_or_else(|| "?".into())
    }

    fn stack_ips(&mut self, probes: &Probes, id: i32) -> Vec<u64> {
        if id < 0 {
            return Vec::new();
        }
        if let Some(ips) = self.stack_cache.get(&id) {
            return ips.clone();
        }
        let ips = probes.stack(id).unwrap_or_default();
        self.stack_cache.insert(id, ips.clone());
        ips
    }

    /// Kernel frames (innermost) then user frames, as DESIGN.md orders them.
    fn frames(&mut self, probes: &Probes, key: StackKey) -> Vec<Frame> {
        if let Some(frames) = self.resolved.get(&key) {
            return frames.clone();
        }
        let kernel_ips = self.stack_ips(probes, key.kernel);
        let user_ips = self.stack_ips(probes, key.user);
        let mut frames = self.symbols.kernel_frames(&kernel_ips);
        frames.extend(self.symbols.user_frames(key.pid, &user_ips));
        self.resolved.insert(key, frames.clone());
        frames
    }

    fn all_targets_gone(&self) -> bool {
        self.processes
            .values()
            .all(|p| p.record.exited_ns.is_some() || !p.id.is_some_and(procfs::is_alive))
    }

    fn finish(mut self, probes: &Probes, start_ns: u64, end_ns: u64) -> Recording {
        let finished = std::mem::replace(
            &mut self.timeline,
            Timeline::new(timeline::Config {
                threshold_ns: u64::MAX,
                sample_period_ns: 1,
                max_stacks_per_span: 0,
                max_offcpu_entries: 0,
                max_marks: 0,
                min_mark_ns: 0,
            }),
        );
        // Decide "is this thread a loop thread" with the full knowledge of the recording.
        let result = finished.finish(end_ns);
        let loop_tids: HashSet<u32> = result
            .threads
            .iter()
            .filter(|t| t.is_loop)
            .map(|t| t.tid)
            .collect();
        let loop_pids: HashSet<u32> = result
            .threads
            .iter()
            .filter(|t| t.is_loop)
            .map(|t| t.pid)
            .collect();
        for stall in result.open_stalls {
            self.stall_ended(probes, stall, false);
        }
        // Runs reported before a thread of their process turned out to be a loop thread.
        let selected = !self.config.threads.is_empty() || self.config.thread_name.is_some();
        self.stalls.retain(|s| {
            selected
                || s.rule == "iteration"
                || !(loop_tids.contains(&s.tid) || loop_pids.contains(&s.pid))
        });
        self.stalls.sort_by_key(|s| s.start_ns);

        let mut offcpu: Vec<_> = result.offcpu.into_iter().collect();
        offcpu.sort_by_key(|entry| std::cmp::Reverse(entry.1));
        let offcpu = offcpu
            .into_iter()
            .map(|((pid, tid, stack, syscall), weight_ns)| OffCpuRecord {
                pid,
                tid,
                comm: self.thread_name(tid),
                weight_ns,
                syscall: syscall_name(syscall),
                frames: self.frames(probes, stack),
            })
            .collect();
        let spans = result
            .marks
            .iter()
            .map(|mark| report::SpanRecord {
                pid: mark.pid,
                tid: mark.tid,
                kind: match mark.kind {
                    timeline::StackKind::OnCpu => "sample",
                    other => other.as_str(),
                }
                .to_string(),
                start_ns: mark.start_ns,
                end_ns: mark.end_ns,
                syscall: syscall_name(mark.syscall),
                label: mark
                    .stack
                    .map(|key| span_label(&self.frames(probes, key)))
                    .unwrap_or_default(),
            })
            .collect();
        let threads = result
            .threads
            .iter()
            .map(|t| report::ThreadRecord {
                pid: t.pid,
                tid: t.tid,
                comm: self.thread_name(t.tid),
                is_loop: t.is_loop,
                iterations: t.iterations,
            })
            .collect();
        let kernel_drops = probes.drops();
        let mut processes: Vec<ProcessRecord> =
            self.processes.values().map(|p| p.record.clone()).collect();
        processes.sort_by_key(|p| p.pid);
        Recording {
            version: report::SCHEMA_VERSION,
            threshold_ns: self.config.threshold_ns,
            recorded_ns: end_ns.saturating_sub(start_ns),
            start_ns,
            end_ns,
            sample_freq_hz: self.config.freq_hz,
            lost_events: self
                .loss
                .lost
                .max(kernel_drops[drop_index::RINGBUF_FULL as usize]),
            drops: Drops {
                ringbuf_full: kernel_drops[drop_index::RINGBUF_FULL as usize],
                kernel_stack: kernel_drops[drop_index::KERNEL_STACK as usize],
                user_stack: kernel_drops[drop_index::USER_STACK as usize],
                follow_map_full: kernel_drops[drop_index::FOLLOW_MAP_FULL as usize],
                iterations_discarded: result.anomalies.iterations_discarded,
                stacks_dropped: result.anomalies.stacks_dropped + self.stalls_not_kept,
            },
            processes,
            threads,
            stalls: self.stalls,
            offcpu,
            spans,
            spans_dropped: result.marks_dropped,
            verdict: report::Verdict {
                budgets: Vec::new(),
                passed: true,
            },
        }
    }
}

fn syscall_name(nr: Option<i32>) -> Option<String> {
    let nr = nr?;
    Some(syscalls::name(i64::from(nr)).map_or_else(|| format!("syscall {nr}"), str::to_string))
}

/// The innermost user function of a stack, or its innermost kernel function.
fn span_label(frames: &[Frame]) -> String {
    frames
        .iter()
        .find(|f| f.kind != crate::symbolize::FrameKind::Kernel)
        .or_else(|| frames.first())
        .map(|f| f.function.clone())
        .unwrap_or_default()
}

fn comm_string(comm: &[u8; 16]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

fn local_timestamp() -> String {
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
    report::ensure_writable_dir(&dir).with_context(|| {
        format!(
            "output directory {} is not writable; choose another with --out",
            dir.display()
        )
    })?;
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

pub async fn run(config: RecordConfig) -> Result<()> {
    let start_pids = match &config.target {
        Target::Pids(pids) => resolve_pids(pids)?,
        Target::Command(_) => Vec::new(),
    };
    let label = match (&config.target, start_pids.first()) {
        (Target::Pids(_), Some(first)) => first.pid.to_string(),
        _ => "command".to_string(),
    };
    let out_dir = prepare_out_dir(&config, &label)?;
    if let Some(problem) = privileges::check() {
        bail!(problem);
    }
    let tracefs_root = tracefs::ensure_mounted()?;
    let offsets = tracefs::read_offsets(&tracefs_root)?;
    let (mut probes, ring) = attach::load(&LoadOptions {
        offsets,
        ring_buffer_bytes: config.ring_buffer_bytes,
        freq_hz: config.freq_hz,
        wait_points: syscalls::wait_point_numbers(),
    })
    .map_err(explain_load_error)?;

    let mut session = Session::new(config.clone());
    let mut child = None;
    match &config.target {
        Target::Pids(_) => {
            let pids: Vec<u32> = start_pids.iter().map(|p| p.pid).collect();
            for pid in procfs::with_descendants(&pids) {
                probes.follow(pid, &procfs::threads(pid))?;
                session.add_process(pid, None);
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
    for pid in session.processes.keys().copied().collect::<Vec<_>>() {
        detect_waiting_threads(&mut session, pid);
    }
    let start_ns = monotonic_ns();
    announce(&session, &out_dir);

    let stop = event_loop(&mut session, &mut probes, ring, child).await?;
    let end_ns = monotonic_ns();
    let recording = session.finish(&probes, start_ns, end_ns);
    let written = report::write_outputs(&out_dir, &recording)?;
    if stop == StopReason::TargetsExited {
        eprintln!("stallscope: every target has exited; recording stopped");
    }
    print!("{}", report::summary_text(&recording, &written));
    Ok(())
}

fn explain_load_error(err: anyhow::Error) -> anyhow::Error {
    let text = format!("{err:#}");
    if text.contains("Operation not permitted") || text.contains("EPERM") {
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
    session.add_process(pid, Some(monotonic_ns()));
    Ok(child)
}

/// Threads blocked in a wait point right now are loop threads between iterations.
fn detect_waiting_threads(session: &mut Session, pid: u32) {
    for tid in procfs::threads(pid) {
        if procfs::blocked_syscall(pid, tid).is_some_and(syscalls::is_wait_point) {
            session.timeline.mark_waiting(pid, tid);
        }
    }
}

fn announce(session: &Session, out_dir: &std::path::Path) {
    let mut pids: Vec<String> = session
        .processes
        .values()
        .map(|p| format!("{} ({})", p.record.pid, p.record.comm))
        .collect();
    pids.sort();
    let duration = session
        .config
        .duration
        .map_or_else(|| "until Ctrl-C".to_string(), |d| format!("for {d:?}"));
    eprintln!(
        "stallscope: recording {} {duration}, threshold {}, writing to {}",
        pids.join(", "),
        report::format_ms(session.config.threshold_ns),
        out_dir.display()
    );
}

async fn event_loop(
    session: &mut Session,
    probes: &mut Probes,
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    mut child: Option<tokio::process::Child>,
) -> Result<StopReason> {
    // SAFETY: the ring buffer owns its map fd, which stays open and unchanged while the
    // AsyncFd owns the ring buffer.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| anyhow!("watching the ring buffer: {}", e.into_parts().1))?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let deadline = session.config.duration.map(|d| Instant::now() + d);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let reason = loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting for events")?;
                drain(session, probes, guard.get_inner_mut());
                guard.clear_ready();
            }
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => {
                break StopReason::Duration;
            }
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
                if child.is_none() && session.all_targets_gone() {
                    break StopReason::TargetsExited;
                }
            }
        }
    };
    drain(session, probes, ring.get_mut());
    Ok(reason)
}

fn drain(
    session: &mut Session,
    probes: &mut Probes,
    ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
) {
    // Copy each record out before handling it: handling may read maps, and the ring slot must
    // be released promptly so the kernel can reuse it.
    while let Some(item) = ring.next() {
        let raw = events::decode(&item);
        drop(item);
        if let Some(raw) = raw {
            session.handle_raw(probes, &raw);
        }
    }
}
