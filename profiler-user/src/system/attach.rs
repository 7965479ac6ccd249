//! Loading and attaching the eBPF programs, and the handles to their maps: the only module that
//! uses aya. Links are owned by the returned [`Probes`] and released when it drops, or by the
//! kernel when the agent dies, even by SIGKILL: nothing is pinned, nothing is left behind.

use std::{
    collections::HashMap as StdHashMap,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf, StackTraceMap},
    programs::{
        PerfEvent, ProgramError, RawTracePoint, TracePoint,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy, SoftwareEvent},
    },
    util::online_cpus,
};
use profiler_common::{
    COMPAT_PY_FRAMES, FIELD_ABSENT, MATCH_PATTERN_BYTES, MAX_MATCH_CGROUPS, MAX_MATCH_PATTERNS,
    MatchPattern, PyProcess, TaskOffsets, TracepointOffsets, drop, kstack_stat, matching,
    wait_mark,
};

use crate::system::features::KernelFeatures;

/// The compiled programs, built by build.rs: for kernels with everything the programs use
/// (5.17+), and for older ones (feature `compat` of profiler-ebpf).
static PROGRAMS: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/stallscope-modern"));
static PROGRAMS_COMPAT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/stallscope-compat"));

pub struct LoadOptions {
    pub offsets: TracepointOffsets,
    pub ring_buffer_bytes: u32,
    pub freq_hz: u64,
    pub wait_points: Vec<u32>,
    /// Wait points of some runtimes' threads only (the agent decides per thread).
    pub runtime_wait_points: Vec<u32>,
    /// Bytes of user stack copied per sample/switch-out (0: frame-pointer walk only).
    pub stack_copy_bytes: u32,
    /// Offset of `task_struct.thread.fsbase` (0: unknown; Python 3.9/3.10 frames are then not
    /// read).
    pub task_fsbase_offset: u32,
    /// Offset of `task_struct.sched_info.last_arrival` (0: unknown; a switch-in the kernel did
    /// not trace is then not timed, and its interval stays unaccounted).
    pub task_arrival_offset: u32,
    /// `task_struct` offsets for the raw scheduler tracepoints; None: the classic ones (no
    /// BTF, or a kernel before 5.18).
    pub task_offsets: Option<TaskOffsets>,
    /// A sleeper's waker gets its stacks taken only once it has been blocked this long (ns;
    /// 0: always).
    pub waker_min_blocked_ns: u64,
    /// Stacks at preemptions and for every waker, as before late capture (for measuring).
    pub eager_stacks: bool,
    /// Late capture (0: off): a thread blocked in a syscall gets its user and Python stacks
    /// when it leaves the call, if it was off-CPU at least this long (ns). Only with the full
    /// programs; the compat build copies them at switch-out.
    pub late_min_ns: u64,
    /// Where `do_syscall_64`'s code is (start, end), to reuse a kernel stack id taken before
    /// at the same place (see `KSTACK_REUSE` in the programs); (0, 0) walks every one.
    pub syscall_text: (u64, u64),
    /// Try BPF trampolines (fentry/fexit) before the syscall tracepoints (see `load`).
    pub trampolines: bool,
    /// Programs on syscalls at all (false only to measure the scheduler hooks' cost alone).
    pub syscall_hooks: bool,
    /// Offset of `task_struct.stack` (0: unknown), for the user registers where the kernel
    /// has no bpf_task_pt_regs.
    pub task_stack_offset: u32,
    /// What the kernel offers: which build of the programs to load.
    pub features: KernelFeatures,
    /// Where the verifier's log goes when it refuses a program.
    pub verifier_log: PathBuf,
    /// `--verbose`: the verifier's log on the terminal too.
    pub verbose: bool,
    /// `watch`: new processes the kernel side follows by itself (nothing for `record`).
    pub matching: Matching,
}

/// What new processes the kernel side follows by itself, at exec and fork (`watch --comm`,
/// `--exe`, `--cgroup`); empty: only the agent's choices and their descendants.
#[derive(Clone, Debug, Default)]
pub struct Matching {
    /// `--comm` globs (matched against the 15-byte command name).
    pub comm: Vec<String>,
    /// `--exe` globs (matched against the path given to exec).
    pub exe: Vec<String>,
    /// Cgroup v2 ids (a `--cgroup` directory and its descendants).
    pub cgroups: Vec<u64>,
    /// Offset of the exec'd path in sched_process_exec's record (None: no `--exe` in the
    /// kernel; the agent's look at /proc still finds them).
    pub exec_filename_offset: Option<u32>,
}

impl Matching {
    /// The `MATCH_ON` bits.
    fn bits(&self) -> u32 {
        let mut bits = 0;
        if !self.comm.is_empty() {
            bits |= matching::COMM;
        }
        if !self.exe.is_empty() && self.exec_filename_offset.is_some() {
            bits |= matching::EXE;
        }
        if !self.cgroups.is_empty() {
            bits |= matching::CGROUP;
        }
        bits
    }

    /// The pattern slots: an `--exe` glob without a `/` is matched against the path's last
    /// component (as `*/GLOB`, and as is for a bare name).
    pub fn patterns(&self) -> Result<Vec<MatchPattern>> {
        let mut slots = Vec::new();
        let mut add = |kind: u32, text: &str| -> Result<()> {
            let slot = MatchPattern::new(kind, text.as_bytes()).ok_or_else(|| {
                anyhow!(
                    "pattern '{text}' is longer than {MATCH_PATTERN_BYTES} bytes; use a shorter glob"
                )
            })?;
            slots.push(slot);
            Ok(())
        };
        for glob in &self.comm {
            add(matching::COMM, glob)?;
        }
        for glob in &self.exe {
            if glob.contains('/') {
                add(matching::EXE, glob)?;
            } else {
                add(matching::EXE, glob)?;
                add(matching::EXE, &format!("*/{glob}"))?;
            }
        }
        if slots.len() > MAX_MATCH_PATTERNS as usize {
            anyhow::bail!(
                "too many --comm/--exe patterns ({} slots, at most {MAX_MATCH_PATTERNS}; an --exe without '/' takes two)",
                slots.len()
            );
        }
        Ok(slots)
    }
}

/// Loaded, attached programs and the maps the agent talks to.
pub struct Probes {
    // Keeps programs and links alive.
    _ebpf: Ebpf,
    pub logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    followed_pids: HashMap<MapData, u32, u32>,
    followed_tids: HashMap<MapData, u32, u32>,
    stacks: StackTraceMap<MapData>,
    drops: PerCpuArray<MapData, u64>,
    kstack_stats: PerCpuArray<MapData, u64>,
    py_procs: HashMap<MapData, u32, PyProcess>,
    match_cgroups: HashMap<MapData, u64, u32>,
    /// The loaded programs walk Python frames (not the compat build without a walk).
    python_walk: bool,
}

/// (category, name, program, required) for every tracepoint the agent needs. An optional one
/// that the kernel lacks only costs the detail it gives (what signal killed a process). An
/// empty program: nothing is attached to it, but the kernel must have it (the per-syscall
/// `syscalls:*` events the agent attaches to, see [`SYSCALL_PROGRAMS`], are built on
/// `raw_syscalls`; a program on `raw_syscalls` itself would run for every syscall of the
/// machine).
pub const TRACEPOINTS: &[(&str, &str, &str, bool)] = &[
    ("sched", "sched_switch", "sched_switch", true),
    ("sched", "sched_waking", "sched_waking", true),
    ("sched", "sched_wakeup", "sched_wakeup", true),
    ("sched", "sched_wakeup_new", "sched_wakeup", true),
    ("raw_syscalls", "sys_enter", "", true),
    ("raw_syscalls", "sys_exit", "", true),
    ("sched", "sched_process_fork", "sched_process_fork", true),
    ("sched", "sched_process_exit", "sched_process_exit", true),
    ("sched", "sched_process_exec", "sched_process_exec", true),
    ("signal", "signal_generate", "signal_generate", false),
];

/// The scheduler tracepoints hooked as raw tracepoints when the kernel's BTF allows (they run
/// at every switch and wake-up of the machine; a raw tracepoint formats no record): their
/// programs are then the ones named in [`TRACEPOINTS`], else the classic `tp_` ones.
const RAW_SCHED: [&str; 4] = [
    "sched_switch",
    "sched_waking",
    "sched_wakeup",
    "sched_wakeup_new",
];

/// The syscalls whose own tracepoints the agent attaches to besides the wait points: exit and
/// exit_group never return, their entry is the only place to see the exit status.
const EXIT_SYSCALLS: [&str; 2] = ["exit", "exit_group"];

/// Programs on per-syscall tracepoints: (program, tracepoint name prefix).
const SYSCALL_PROGRAMS: [(&str, &str); 2] =
    [("sys_enter", "sys_enter_"), ("sys_exit", "sys_exit_")];

/// Loads the programs into the kernel; nothing is attached yet, so nothing is recorded.
pub fn load(options: &LoadOptions) -> Result<(Probes, RingBuf<MapData>)> {
    let possible_cpus =
        aya::util::nr_cpus().map_err(|(path, err)| anyhow!("reading {path}: {err}"))? as u32;
    let object = if options.features.full() {
        PROGRAMS
    } else {
        PROGRAMS_COMPAT
    };
    let late_min_ns = if options.features.full() {
        options.late_min_ns
    } else {
        0
    };
    let mut ebpf = EbpfLoader::new()
        .verifier_log_level(log_level(options.verbose))
        .override_global("OFFSETS", &options.offsets, true)
        .override_global("LATE_MIN_NS", &late_min_ns, true)
        .override_global("STACK_COPY_BYTES", &options.stack_copy_bytes, true)
        .override_global("TASK_FSBASE_OFFSET", &options.task_fsbase_offset, true)
        .override_global("TASK_ARRIVAL_OFFSET", &options.task_arrival_offset, true)
        .override_global("WAKER_MIN_BLOCKED_NS", &options.waker_min_blocked_ns, true)
        .override_global("EAGER_STACKS", &u32::from(options.eager_stacks), true)
        .override_global("SYSCALL_TEXT_START", &options.syscall_text.0, true)
        .override_global("SYSCALL_TEXT_END", &options.syscall_text.1, true)
        .override_global(
            "TASK",
            &options.task_offsets.unwrap_or(TaskOffsets::UNSET),
            true,
        )
        .override_global("TASK_STACK_OFFSET", &options.task_stack_offset, false)
        .override_global("MATCH_ON", &options.matching.bits(), true)
        .override_global(
            "EXEC_FILENAME_OFFSET",
            &options
                .matching
                .exec_filename_offset
                .unwrap_or(FIELD_ABSENT),
            true,
        )
        .map_max_entries("EVENTS", options.ring_buffer_bytes)
        // Four scratch slots per CPU id the kernel may report (see STACK_SCRATCH).
        .map_max_entries("STACK_SCRATCH", 4 * possible_cpus)
        .load(object)
        .context("loading the eBPF programs into the kernel")?;
    let logger = aya_log::EbpfLogger::init(&mut ebpf).ok();

    let mut wait_points: Array<MapData, u32> = take(&mut ebpf, "WAIT_POINTS")?;
    // Runtime-only wait points (tokio's futex): events are sent for every thread and the agent
    // decides; the kernel skips the stack copy only for threads `is_runtime_worker` names, since
    // a futex elsewhere is a lock wait. A syscall in both lists is a wait for every thread.
    let marks = options
        .runtime_wait_points
        .iter()
        .map(|&nr| (nr, wait_mark::RUNTIME_ONLY))
        .chain(
            options
                .wait_points
                .iter()
                .map(|&nr| (nr, wait_mark::EVERY_THREAD)),
        );
    for (nr, mark) in marks {
        wait_points
            .set(nr, mark, 0)
            .with_context(|| format!("marking syscall {nr} as a wait point"))?;
    }
    set_matching(&mut ebpf, &options.matching)?;
    let mut programs_loaded: StdHashMap<String, bool> = StdHashMap::new();
    let raw = options.task_offsets.is_some();
    let mut attachments: Vec<(&str, String, String, bool)> = Vec::new();
    for &(category, name, program, required) in TRACEPOINTS {
        if program.is_empty() {
            continue;
        }
        if RAW_SCHED.contains(&name) {
            if raw {
                let raw_tp: &mut RawTracePoint = ebpf
                    .program_mut(program)
                    .ok_or_else(|| anyhow!("program {program} missing from the eBPF object"))?
                    .try_into()
                    .with_context(|| format!("program {program} is not a raw tracepoint"))?;
                if !programs_loaded.contains_key(program) {
                    let started = std::time::Instant::now();
                    verified(
                        raw_tp.load(),
                        program,
                        &options.verifier_log,
                        options.verbose,
                    )?;
                    log_verified(program, started, raw_tp.info());
                    programs_loaded.insert(program.to_string(), true);
                }
                raw_tp
                    .attach(name)
                    .with_context(|| format!("attaching to raw tracepoint {name}"))?;
                continue;
            }
            attachments.push((
                category,
                name.to_string(),
                format!("tp_{program}"),
                required,
            ));
            continue;
        }
        attachments.push((category, name.to_string(), program.to_string(), required));
    }
    // Trampolines where the kernel has them (no syscall tracepoint: bystanders' syscalls stay
    // on the fast path), else the per-syscall tracepoints and late capture on sys_exit.
    let trampolines = options.trampolines
        && options.syscall_hooks
        && options.features.full()
        && load_trampolines(&mut ebpf, options, late_min_ns != 0)?;
    if !options.syscall_hooks {
        log::warn!("hooks: none on syscalls (STALLSCOPE_SYSCALL_HOOKS=0, for measuring only)");
    } else if trampolines {
        log::info!("hooks: trampolines on the syscall wrappers and on schedule()");
        attach_trampolines(&mut ebpf, options, late_min_ns != 0)?;
    } else {
        log::info!("hooks: per-syscall tracepoints, late capture on raw_syscalls:sys_exit");
        if late_min_ns != 0 {
            attach_sys_exit_late(&mut ebpf, options)?;
        }
        attachments.extend(syscall_attachments(options));
    }
    for (category, name, program, required) in attachments {
        let (name, program) = (name.as_str(), program.as_str());
        let tracepoint: &mut TracePoint = ebpf
            .program_mut(program)
            .ok_or_else(|| anyhow!("program {program} missing from the eBPF object"))?
            .try_into()
            .with_context(|| format!("program {program} is not a tracepoint"))?;
        if !programs_loaded.contains_key(program) {
            let started = std::time::Instant::now();
            verified(
                tracepoint.load(),
                program,
                &options.verifier_log,
                options.verbose,
            )?;
            log_verified(program, started, tracepoint.info());
            programs_loaded.insert(program.to_string(), true);
        }
        match tracepoint.attach(category, name) {
            Ok(_) => {}
            Err(err) if !required => {
                log::warn!("optional tracepoint {category}:{name} not attached: {err}");
            }
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("attaching to tracepoint {category}:{name}"));
            }
        }
    }
    let sampler: &mut PerfEvent = ebpf
        .program_mut("cpu_sample")
        .ok_or_else(|| anyhow!("program cpu_sample missing from the eBPF object"))?
        .try_into()
        .context("program cpu_sample is not a perf_event program")?;
    let started = std::time::Instant::now();
    verified(
        sampler.load(),
        "cpu_sample",
        &options.verifier_log,
        options.verbose,
    )?;
    log_verified("cpu_sample", started, sampler.info());
    let cpus = online_cpus().map_err(|(path, err)| anyhow!("reading {path}: {err}"))?;
    for cpu in cpus {
        sampler
            .attach(
                PerfEventConfig::Software(SoftwareEvent::CpuClock),
                PerfEventScope::AllProcessesOneCpu { cpu },
                SamplePolicy::Frequency(options.freq_hz),
                true,
            )
            .with_context(|| format!("attaching the cpu-clock sampler on CPU {cpu}"))?;
    }
    let events = take(&mut ebpf, "EVENTS")?;
    let mut probes = Probes {
        match_cgroups: take(&mut ebpf, "MATCH_CGROUPS")?,
        followed_pids: take(&mut ebpf, "FOLLOWED_PIDS")?,
        followed_tids: take(&mut ebpf, "FOLLOWED_TIDS")?,
        stacks: take(&mut ebpf, "STACKS")?,
        drops: take(&mut ebpf, "DROPS")?,
        kstack_stats: take(&mut ebpf, "KSTACK_STATS")?,
        py_procs: take(&mut ebpf, "PY_PROCS")?,
        python_walk: options.features.full() || COMPAT_PY_FRAMES != 0,
        logger,
        _ebpf: ebpf,
    };
    for &id in &options.matching.cgroups {
        probes.follow_cgroup(id)?;
    }
    Ok((probes, events))
}

/// Whether the kernel refused with EPERM anywhere in the error's chain: the errno of an
/// `io::Error` the chain holds (aya keeps the syscall's error as the source), not words in
/// the message, which a verifier log or a file name could contain too.
pub fn is_permission_denied(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::EPERM))
    })
}

/// Whether the verifier refused a program as too complex (E2BIG: it gave up after a million
/// instructions), which an older verifier does where a newer one prunes the same paths.
pub fn is_too_complex(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::E2BIG))
    })
}

/// What the verifier logs when it refuses a program: its error and statistics, and with
/// `--verbose` also every instruction it walked. That trail runs to tens of megabytes for a
/// program refused as too complex, and since a kernel before 6.4 stops at a full buffer, aya
/// retries with ten times the buffer each time: each retry verifies the whole program again
/// (two minutes each under emulation), and the compat build's load waited for all of them.
fn log_level(verbose: bool) -> aya::VerifierLogLevel {
    if verbose {
        aya::VerifierLogLevel::DEBUG | aya::VerifierLogLevel::STATS
    } else {
        aya::VerifierLogLevel::STATS
    }
}

/// Logs (`RUST_LOG=info`) how much work the verifier did on a program it accepted: the
/// instructions it processed (its limit is a million; an older kernel's verifier prunes less,
/// so a program near the limit here is refused there) and how long it took.
fn log_verified(
    program: &str,
    started: std::time::Instant,
    info: Result<aya::programs::ProgramInfo, ProgramError>,
) {
    let insns = info
        .ok()
        .and_then(|info| info.verified_instruction_count())
        .map_or("?".to_string(), |n| n.to_string());
    log::info!(
        "verifier: {program}: {insns} instructions processed in {:.2?}",
        started.elapsed()
    );
}

/// Fills the kernel side's match tables before anything is attached.
fn set_matching(ebpf: &mut Ebpf, matching: &Matching) -> Result<()> {
    let mut patterns: Array<&mut MapData, MatchPattern> = Array::try_from(
        ebpf.map_mut("MATCH_PATTERNS")
            .ok_or_else(|| anyhow!("map MATCH_PATTERNS missing from the eBPF object"))?,
    )
    .context("map MATCH_PATTERNS has an unexpected type")?;
    for (index, slot) in matching.patterns()?.into_iter().enumerate() {
        patterns
            .set(index as u32, slot, 0)
            .context("setting a --comm/--exe pattern")?;
    }
    Ok(())
}

/// A program load's outcome; a verifier refusal becomes one line naming the file its log was
/// written to (the log runs to thousands of lines: not for the terminal, unless `verbose`).
fn verified(
    result: Result<(), ProgramError>,
    program: &str,
    log_path: &Path,
    verbose: bool,
) -> Result<()> {
    match result {
        Ok(()) => Ok(()),
        Err(ProgramError::LoadError {
            io_error,
            verifier_log,
        }) => Err(refused(
            program,
            io_error,
            &format!("{verifier_log:?}"),
            log_path,
            verbose,
        )),
        Err(err) => Err(err).with_context(|| format!("loading program {program}")),
    }
}

/// The error for a program the verifier refused: one line saying where its log went (and,
/// `verbose`, the log itself below it, made safe for a terminal), the errno typed in the chain.
fn refused(
    program: &str,
    io_error: std::io::Error,
    log: &str,
    log_path: &Path,
    verbose: bool,
) -> anyhow::Error {
    let place = match std::fs::write(log_path, log) {
        Ok(()) => format!("its log is in {}", log_path.display()),
        Err(err) => format!(
            "its log could not be saved to {}: {err}",
            log_path.display()
        ),
    };
    let mut line = format!(
        "the kernel's verifier refused program {program} ({io_error}); {place}; \
         `stallscope doctor` says what this kernel lacks"
    );
    if verbose {
        line.push_str("\nverifier log:\n");
        line.push_str(&crate::sanitize::terminal_lines(log.trim_end()));
    }
    anyhow::Error::new(io_error).context(line)
}

/// Late capture on `raw_syscalls:sys_exit`, where trampolines are not available. Before
/// anything is recorded: a pending block must always find its exit hooked.
fn attach_sys_exit_late(ebpf: &mut Ebpf, options: &LoadOptions) -> Result<()> {
    let raw_tp: &mut RawTracePoint = ebpf
        .program_mut("sys_exit_late")
        .ok_or_else(|| anyhow!("program sys_exit_late missing from the eBPF object"))?
        .try_into()
        .context("program sys_exit_late is not a raw tracepoint")?;
    verified(
        raw_tp.load(),
        "sys_exit_late",
        &options.verifier_log,
        options.verbose,
    )?;
    raw_tp
        .attach("sys_exit")
        .context("attaching to raw tracepoint sys_exit (late stack capture)")?;
    Ok(())
}

/// The syscall names of every wait point, then exit and exit_group.
fn hooked_syscalls(options: &LoadOptions) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Vec::new();
    for &nr in options
        .wait_points
        .iter()
        .chain(&options.runtime_wait_points)
    {
        if let Some(name) = crate::syscalls::name(i64::from(nr))
            && !names.contains(&name)
        {
            names.push(name);
        }
    }
    names
}

/// The trampoline programs for `options`: (program, kernel function) pairs.
fn trampoline_programs(options: &LoadOptions, late: bool) -> Vec<(String, String)> {
    let mut programs = Vec::new();
    for name in hooked_syscalls(options) {
        for prefix in ["fentry_", "fexit_"] {
            programs.push((format!("{prefix}{name}"), format!("__x64_sys_{name}")));
        }
    }
    for name in EXIT_SYSCALLS {
        programs.push((format!("fentry_{name}"), format!("__x64_sys_{name}")));
    }
    if late {
        programs.push(("schedule_late".to_string(), "schedule".to_string()));
    }
    programs
}

/// Loads the trampoline programs; false (logged, nothing attached) when this kernel cannot
/// take one of them (no BTF, no such function, no trampolines on this architecture), and the
/// agent falls back to the tracepoints.
fn load_trampolines(ebpf: &mut Ebpf, options: &LoadOptions, late: bool) -> Result<bool> {
    let programs = trampoline_programs(options, late);
    let btf = match aya::Btf::from_sys_fs() {
        Ok(btf) => btf,
        Err(err) => {
            log::info!("no kernel BTF for trampolines ({err}): using tracepoints");
            return Ok(false);
        }
    };
    for (program, function) in &programs {
        let started = std::time::Instant::now();
        let loaded = match ebpf.program_mut(program) {
            Some(aya::programs::Program::FEntry(p)) => p.load(function, &btf).map(|()| p.info()),
            Some(aya::programs::Program::FExit(p)) => p.load(function, &btf).map(|()| p.info()),
            // A wait point without a trampoline program (one added to the table only).
            _ => {
                log::info!("no trampoline program {program}: using tracepoints");
                return Ok(false);
            }
        };
        match loaded {
            Ok(info) => log_verified(program, started, info),
            Err(err) => {
                log::info!(
                    "trampoline {program} on {function} not loaded ({err}): using tracepoints"
                );
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Attaches the trampolines [`load_trampolines`] loaded.
fn attach_trampolines(ebpf: &mut Ebpf, options: &LoadOptions, late: bool) -> Result<()> {
    let programs = trampoline_programs(options, late);
    for (program, function) in &programs {
        let attached = match ebpf.program_mut(program) {
            Some(aya::programs::Program::FEntry(p)) => p.attach().map(|_| ()),
            Some(aya::programs::Program::FExit(p)) => p.attach().map(|_| ()),
            _ => return Err(anyhow!("program {program} missing from the eBPF object")),
        };
        attached.with_context(|| format!("attaching trampoline {program} on {function}"))?;
    }
    Ok(())
}

/// The per-syscall tracepoints: entry and exit of every wait point (a thread's iterations start
/// and end there), entry of exit and exit_group. A wait point this kernel has no tracepoint for
/// is skipped with a warning (loops waiting in it are then not seen as loops).
fn syscall_attachments(options: &LoadOptions) -> Vec<(&'static str, String, String, bool)> {
    let names = hooked_syscalls(options);
    let mut attachments = Vec::new();
    for name in &names {
        for (program, prefix) in SYSCALL_PROGRAMS {
            attachments.push((
                "syscalls",
                format!("{prefix}{name}"),
                program.to_string(),
                false,
            ));
        }
    }
    for name in EXIT_SYSCALLS {
        attachments.push((
            "syscalls",
            format!("sys_enter_{name}"),
            "sys_enter".to_string(),
            false,
        ));
    }
    attachments
}

fn take<T>(ebpf: &mut Ebpf, name: &str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

impl Probes {
    /// Adds a process (and the thread ids it has now) to the in-kernel follow set.
    pub fn follow(&mut self, pid: u32, tids: &[u32]) -> Result<()> {
        self.followed_pids
            .insert(pid, 1, 0)
            .with_context(|| format!("following process {pid}"))?;
        for &tid in tids {
            self.followed_tids
                .insert(tid, pid, 0)
                .with_context(|| format!("following thread {tid} of {pid}"))?;
        }
        Ok(())
    }

    /// `watch --cgroup`: processes of this cgroup (v2 id) that exec or fork are followed.
    pub fn follow_cgroup(&mut self, id: u64) -> Result<()> {
        self.match_cgroups
            .insert(id, 1, 0)
            .with_context(|| format!("following cgroup id {id} (at most {MAX_MATCH_CGROUPS})"))
    }

    /// Whether a process is in the kernel's follow set.
    pub fn is_followed(&self, pid: u32) -> bool {
        self.followed_pids.get(&pid, 0).is_ok()
    }

    /// Removes follow-set entries of processes and threads that are gone (their exit raced
    /// with the agent adding them, or its event was lost): a long run must leave nothing per
    /// exited process. A thread's entry goes when /proc no longer shows it in that process.
    /// Returns how many entries were removed.
    pub fn prune_gone(&mut self) -> usize {
        let tids: Vec<(u32, u32)> = self.followed_tids.iter().filter_map(Result::ok).collect();
        let mut removed = 0;
        for (tid, tgid) in tids {
            if crate::system::procfs::tgid_of(tid) != Some(tgid) {
                removed += usize::from(self.followed_tids.remove(&tid).is_ok());
            }
        }
        let pids: Vec<u32> = self.followed_pids.keys().filter_map(Result::ok).collect();
        for pid in pids {
            if crate::system::procfs::process_id(pid).is_none() {
                removed += usize::from(self.followed_pids.remove(&pid).is_ok());
            }
        }
        removed
    }

    /// Stops following a process that has gone (its PID may be reused by someone else).
    pub fn unfollow(&mut self, pid: u32) {
        let _ = self.followed_pids.remove(&pid);
    }

    /// Stops following everyone (recording is over; the stack map stays readable).
    pub fn unfollow_all(&mut self) {
        let pids: Vec<u32> = self.followed_pids.keys().filter_map(Result::ok).collect();
        for pid in pids {
            let _ = self.followed_pids.remove(&pid);
        }
    }

    /// Tells the kernel side where a process's CPython is, so its frames are walked.
    pub fn set_python(&mut self, pid: u32, layout: PyProcess) -> Result<()> {
        if !self.python_walk {
            // Nothing would read it.
            return Ok(());
        }
        self.py_procs
            .insert(pid, layout, 0)
            .with_context(|| format!("registering the Python interpreter of {pid}"))
    }

    pub fn forget_python(&mut self, pid: u32) {
        let _ = self.py_procs.remove(&pid);
    }

    /// Instruction pointers of a stack id, innermost first.
    pub fn stack(&self, id: i32) -> Option<Vec<u64>> {
        let id = u32::try_from(id).ok()?;
        let trace = self.stacks.get(&id, 0).ok()?;
        Some(trace.frames().iter().map(|f| f.ip).collect())
    }

    /// Kernel-side drop counters, summed over CPUs, indexed by `profiler_common::drop`.
    pub fn drops(&self) -> [u64; drop::COUNT as usize] {
        summed(&self.drops)
    }

    /// How the kernel stacks of switch-outs and wakers were had, summed over CPUs, indexed
    /// by `profiler_common::kstack_stat`.
    pub fn kstack_stats(&self) -> [u64; kstack_stat::COUNT as usize] {
        summed(&self.kstack_stats)
    }
}

/// Every counter of a per-CPU array, summed over CPUs (0 for one that cannot be read).
fn summed<const N: usize>(counters: &PerCpuArray<MapData, u64>) -> [u64; N] {
    let mut totals = [0u64; N];
    for (index, total) in totals.iter_mut().enumerate() {
        if let Ok(values) = counters.get(&(index as u32), 0) {
            *total = values.iter().sum();
        }
    }
    totals
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "0: (79) r1 = *(u64 *)(r1 +0)\nR1 invalid mem access 'scalar'\x1b[2J\n";

    fn refusal(verbose: bool) -> (String, String) {
        let dir = std::env::temp_dir().join(format!(
            "stallscope-refused-{}-{verbose}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("verifier.log");
        let err = refused(
            "sched_switch",
            std::io::Error::from_raw_os_error(libc::EINVAL),
            LOG,
            &path,
            verbose,
        );
        let saved = std::fs::read_to_string(&path).expect("log saved");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            err.chain().any(|c| c
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.raw_os_error() == Some(libc::EINVAL))),
            "the errno stays typed in the chain"
        );
        (format!("{err}"), saved)
    }

    #[test]
    fn a_refusal_is_one_line_naming_the_saved_log() {
        let (message, saved) = refusal(false);
        assert_eq!(saved, LOG, "the whole log is saved");
        assert_eq!(message.lines().count(), 1, "{message}");
        assert!(
            message.contains("refused program sched_switch"),
            "{message}"
        );
        assert!(message.contains("verifier.log"), "{message}");
        assert!(!message.contains("invalid mem access"), "{message}");
    }

    #[test]
    fn verbose_puts_the_log_under_the_line_without_escape_sequences() {
        let (message, _) = refusal(true);
        let mut lines = message.lines();
        assert!(lines.next().is_some_and(|l| l.contains("verifier.log")));
        assert_eq!(lines.next(), Some("verifier log:"));
        assert!(
            message.contains("R1 invalid mem access 'scalar'\\x1b[2J"),
            "{message}"
        );
        assert!(
            !message.contains('\x1b'),
            "no escape sequence reaches the terminal"
        );
    }
}
