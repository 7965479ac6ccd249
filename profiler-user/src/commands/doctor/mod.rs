//! `stallscope doctor`: checks what recording (and, with `--developer`, building) needs, one line
//! per item with pass/fail and the fix.
//!
//! Two halves: [`probe`] gathers [`Facts`] from the machine (uname, /proc, tracefs, small raw
//! `bpf()` and `perf_event_open()` calls whose objects are closed at once), and [`checks`] turns
//! facts into [`Check`]s without touching anything, so every verdict and every fix is unit-tested
//! on synthetic facts. Doctor changes nothing on the machine: it never mounts tracefs, never
//! attaches a program, never changes a sysctl.

use std::{
    fmt::Write as _,
    fs,
    io::ErrorKind,
    os::fd::{FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    process::Command,
};

use profiler_common::{FIELD_ABSENT, TracepointOffsets};

use crate::system::features::{
    self, BPF_PROG_LOAD, BPF_PROG_TYPE_TRACEPOINT, KernelFeatures, ProgLoadAttr,
};

/// Every tracepoint the agent requires, as `category/name` (the required entries of
/// `attach::TRACEPOINTS`; a unit test keeps the two in step).
mod probe;

pub use probe::probe;

pub const TRACEPOINTS: [&str; 9] = [
    "sched/sched_switch",
    "sched/sched_waking",
    "sched/sched_wakeup",
    "sched/sched_wakeup_new",
    "raw_syscalls/sys_enter",
    "raw_syscalls/sys_exit",
    "sched/sched_process_fork",
    "sched/sched_process_exit",
    "sched/sched_process_exec",
];

/// Where the agent looks for tracefs.
use crate::system::tracefs::CANDIDATES as TRACEFS_CANDIDATES;
const MOUNT_TRACEFS: &str = "mount -t tracefs tracefs /sys/kernel/tracing";
const RUN_AS_ROOT: &str = "run stallscope as root (sudo), or with CAP_BPF and CAP_PERFMON";
const XTASK_SETUP: &str = "cargo xtask setup";

/// The kernel that loads every program in full: bpf_task_pt_regs (5.15) and bpf_loop (5.17, the
/// Python frame walk). From 5.10 on the compat build loads instead (see `features`).
const MIN_KERNEL: (u32, u32) = (5, 17);

// Capability numbers from linux/capability.h.
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub detail: String,
    pub fix: Option<String>,
}

impl Check {
    fn pass(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Check {
            name: name.into(),
            status: Status::Pass,
            detail: detail.into(),
            fix: None,
        }
    }

    fn warn(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Check {
            name: name.into(),
            status: Status::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    fn fail(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Check {
            name: name.into(),
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Result of one raw syscall probe: `Err(errno)` when the kernel refused.
pub type Probe = Result<(), i32>;

/// What one tracepoint's `format` file looked like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Format {
    /// Read and parsed; this many fields.
    Parsed(usize),
    /// No `events/<category>/<name>` directory: the kernel lacks the tracepoint.
    Missing,
    /// Read, but no `field:` lines this parser understands.
    Unparsable,
    /// Exists but could not be read.
    Unreadable(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tracefs {
    /// Found where the agent looks, with each tracepoint's format and the offsets read from them.
    Mounted {
        root: PathBuf,
        tracepoints: Vec<(&'static str, Format)>,
        offsets: Result<TracepointOffsets, String>,
    },
    /// tracefs is mounted (at these places) but the agent cannot use it: not where it looks, or
    /// not readable by this user.
    Unusable {
        mounts: Vec<String>,
    },
    NotMounted,
}

/// Toolchain facts for `--developer`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Developer {
    /// `bpf-linker --version`'s first line, or why it did not run.
    pub bpf_linker: Result<String, String>,
    /// Whether nightly lists rust-src as installed, or why rustup did not answer.
    pub rust_src: Result<bool, String>,
}

/// Everything the checks are computed from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    pub kernel_release: Option<String>,
    pub btf: bool,
    /// Offset of `task_struct.thread.fsbase` from the kernel's BTF (Python 3.9/3.10 frames).
    pub task_fsbase: Option<u32>,
    /// The BPF helpers the full programs need, as the verifier answers.
    pub features: KernelFeatures,
    /// From `privileges::missing_capabilities`: empty when loading programs is allowed.
    pub missing_caps: Vec<&'static str>,
    /// Effective capability mask (CapEff of /proc/self/status).
    pub effective_caps: Option<u64>,
    pub tracefs: Tracefs,
    pub ringbuf: Probe,
    pub stack_map: Probe,
    pub plain_maps: Probe,
    pub prog_tracepoint: Probe,
    pub prog_perf_event: Probe,
    pub perf_event: Probe,
    pub perf_event_paranoid: Option<i32>,
    /// Where `do_syscall_64` is, from /proc/kallsyms (None: hidden or absent), for reusing
    /// kernel stacks taken at the same place.
    pub syscall_entry: Option<(u64, u64)>,
    pub developer: Option<Developer>,
}

impl Facts {
    fn has_cap(&self, cap: u32) -> bool {
        self.effective_caps
            .is_some_and(|caps| caps & (1u64 << cap) != 0)
    }

    /// CAP_PERFMON or CAP_SYS_ADMIN: perf_event_paranoid does not apply.
    fn perf_privileged(&self) -> bool {
        self.has_cap(CAP_PERFMON) || self.has_cap(CAP_SYS_ADMIN)
    }
}

// ---------------------------------------------------------------------------------------------
// The pure part: facts → checks → text.

/// `"6.18.44-fc-v657"` → `(6, 18)`.
pub fn parse_kernel_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor: String = parts
        .next()?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    Some((major, minor.parse().ok()?))
}

/// The CapEff mask from /proc/self/status text.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

/// Mount points of tracefs in /proc/self/mounts text.
pub fn tracefs_mounts(mounts: &str) -> Vec<String> {
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let _device = fields.next()?;
            let point = fields.next()?;
            (fields.next()? == "tracefs").then(|| point.to_string())
        })
        .collect()
}

/// Whether `rustup component list --installed` output lists rust-src.
pub fn lists_rust_src(components: &str) -> bool {
    components
        .lines()
        .any(|line| line.split_whitespace().next() == Some("rust-src"))
}

/// Number of fields in a tracepoint `format` file, `None` when it does not parse.
pub fn format_fields(format: &str) -> Option<usize> {
    // Every tracepoint starts with the common header; if its first field is not found the file
    // is not in the format the agent's parser reads.
    crate::system::tracefs::field_offset(format, "common_type")?;
    Some(
        format
            .lines()
            .filter(|line| line.trim_start().starts_with("field:"))
            .count(),
    )
}

fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::EINVAL => "EINVAL",
        libc::ENOENT => "ENOENT",
        libc::ENOSYS => "ENOSYS",
        libc::E2BIG => "E2BIG",
        libc::ENOMEM => "ENOMEM",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENODEV => "ENODEV",
        libc::EBUSY => "EBUSY",
        _ => return std::io::Error::from_raw_os_error(errno).to_string(),
    };
    name.to_string()
}

/// A check for one bpf() probe: EPERM is a privilege problem, anything else a kernel one.
fn bpf_probe_check(
    facts: &Facts,
    name: &str,
    what: &str,
    probe: Probe,
    unsupported_fix: &str,
) -> Check {
    match probe {
        Ok(()) => Check::pass(name, format!("{what}: works")),
        Err(errno @ (libc::EPERM | libc::EACCES)) if !facts.missing_caps.is_empty() => Check::fail(
            name,
            format!(
                "{what}: refused ({}): missing {}",
                errno_name(errno),
                facts.missing_caps.join(", ")
            ),
            RUN_AS_ROOT,
        ),
        Err(errno @ (libc::EPERM | libc::EACCES)) => {
            let mut fix = String::from(
                "check kernel lockdown (cat /sys/kernel/security/lockdown) and security modules (SELinux, AppArmor) that can forbid bpf()",
            );
            if facts
                .kernel_release
                .as_deref()
                .and_then(parse_kernel_release)
                .is_some_and(|version| version < (5, 11))
            {
                fix.push_str("; before Linux 5.11 BPF memory counts against RLIMIT_MEMLOCK: run `ulimit -l unlimited` first");
            }
            Check::fail(
                name,
                format!(
                    "{what}: refused ({}) although privileged",
                    errno_name(errno)
                ),
                fix,
            )
        }
        Err(errno) => Check::fail(
            name,
            format!(
                "{what}: not supported by this kernel ({})",
                errno_name(errno)
            ),
            unsupported_fix,
        ),
    }
}

fn kernel_check(facts: &Facts) -> Check {
    let Some(release) = &facts.kernel_release else {
        return Check::warn(
            "kernel",
            "uname failed: version unknown",
            "run `uname -r`; stallscope needs Linux 5.10 or later",
        );
    };
    if let Some(reason) = features::too_old(release) {
        return Check::fail("kernel", reason, features::UPGRADE);
    }
    if let Some(limits) = facts.features.limits_line() {
        return Check::warn(
            "kernel",
            format!("Linux {release} works, with less: {limits}"),
            "Linux 5.17 or later reads Python stacks in full",
        );
    }
    match parse_kernel_release(release) {
        Some(version) if version >= MIN_KERNEL => Check::pass(
            "kernel",
            format!(
                "Linux {release} (5.17 or later: BPF ring buffers, bpf_loop, CAP_BPF, CAP_PERFMON)"
            ),
        ),
        Some(_) => Check::pass(
            "kernel",
            format!("Linux {release} (has bpf_loop and bpf_task_pt_regs: backported)"),
        ),
        None => Check::warn(
            "kernel",
            format!("cannot parse kernel release {release:?}"),
            "stallscope needs Linux 5.10 or later; check `uname -r`",
        ),
    }
}

fn btf_check(facts: &Facts) -> Check {
    match (facts.btf, facts.task_fsbase) {
        (true, Some(offset)) => Check::pass(
            "BTF",
            format!(
                "/sys/kernel/btf/vmlinux present (task_struct.thread.fsbase at {offset:#x}, for Python 3.9/3.10 frames)"
            ),
        ),
        (true, None) => Check::warn(
            "BTF",
            "/sys/kernel/btf/vmlinux has no task_struct.thread.fsbase: Python 3.9 and 3.10 frames cannot be read (3.11+ can)",
            "this is expected on non-x86-64 kernels; use Python 3.11 or later",
        ),
        // The programs use no CO-RE relocations (field offsets come from tracefs), so recording
        // works without kernel BTF; only Python 3.9/3.10 frames need it.
        (false, _) => Check::warn(
            "BTF",
            "/sys/kernel/btf/vmlinux missing: stallscope records without it (tracepoint layouts come from tracefs), but cannot read Python 3.9/3.10 frames",
            "use a kernel built with CONFIG_DEBUG_INFO_BTF=y",
        ),
    }
}

fn capability_checks(facts: &Facts) -> Vec<Check> {
    let mut checks = Vec::new();
    if facts.missing_caps.is_empty() {
        let how = if facts.has_cap(CAP_SYS_ADMIN) {
            "root / CAP_SYS_ADMIN"
        } else {
            "CAP_BPF and CAP_PERFMON"
        };
        checks.push(Check::pass(
            "capabilities",
            format!("{how}: may load eBPF programs and open perf events"),
        ));
    } else {
        checks.push(Check::fail(
            "capabilities",
            format!(
                "missing {} (loading eBPF programs and sampling every CPU need root, or CAP_BPF and CAP_PERFMON)",
                facts.missing_caps.join(", ")
            ),
            RUN_AS_ROOT,
        ));
    }
    let optional = [
        (
            "CAP_SYS_PTRACE",
            CAP_SYS_PTRACE,
            "reading /proc/PID/maps of other users' processes (to symbolize their stacks)",
            "run stallscope as root (sudo) to record other users' processes".to_string(),
        ),
        (
            "CAP_SYS_ADMIN",
            CAP_SYS_ADMIN,
            "mounting tracefs when it is not mounted",
            format!("keep tracefs mounted ({MOUNT_TRACEFS}), or run stallscope as root (sudo)"),
        ),
    ];
    for (name, cap, purpose, fix) in optional {
        if facts.has_cap(cap) {
            checks.push(Check::pass(name, format!("present: {purpose}")));
        } else {
            checks.push(Check::warn(
                name,
                format!("missing: needed for {purpose}"),
                fix,
            ));
        }
    }
    checks
}

fn tracefs_checks(facts: &Facts) -> Vec<Check> {
    let mounts_itself = if facts.has_cap(CAP_SYS_ADMIN) {
        " (`stallscope record` mounts it by itself, as it runs with CAP_SYS_ADMIN)"
    } else {
        " (`stallscope record` mounts it by itself when it has CAP_SYS_ADMIN, i.e. as root)"
    };
    match &facts.tracefs {
        Tracefs::NotMounted => vec![
            Check::fail(
                "tracefs",
                "not mounted",
                format!("{MOUNT_TRACEFS}{mounts_itself}"),
            ),
            Check::warn(
                "tracepoints",
                format!(
                    "{} tracepoints not checked: tracefs is not mounted",
                    TRACEPOINTS.len()
                ),
                "mount tracefs (see above) and run doctor again",
            ),
        ],
        Tracefs::Unusable { mounts } => {
            let standard = mounts
                .iter()
                .any(|m| TRACEFS_CANDIDATES.contains(&m.as_str()));
            let (detail, fix) = if standard {
                (
                    format!(
                        "mounted at {} but events/sched/sched_switch/format is not readable",
                        mounts.join(", ")
                    ),
                    "run stallscope as root (sudo): tracefs is readable by root only".to_string(),
                )
            } else {
                (
                    format!(
                        "mounted at {}, not at /sys/kernel/tracing or /sys/kernel/debug/tracing",
                        mounts.join(", ")
                    ),
                    format!("{MOUNT_TRACEFS}{mounts_itself}"),
                )
            };
            vec![
                Check::fail("tracefs", detail, fix),
                Check::warn(
                    "tracepoints",
                    format!(
                        "{} tracepoints not checked: tracefs is not usable",
                        TRACEPOINTS.len()
                    ),
                    "fix tracefs (see above) and run doctor again",
                ),
            ]
        }
        Tracefs::Mounted {
            root,
            tracepoints,
            offsets,
        } => {
            let mut checks = vec![Check::pass(
                "tracefs",
                format!("mounted at {}", root.display()),
            )];
            for (tracepoint, format) in tracepoints {
                checks.push(tracepoint_check(root, tracepoint, format));
            }
            checks.push(match offsets {
                Ok(offsets) => Check::pass("tracepoint offsets", describe_offsets(offsets)),
                Err(err) => Check::fail(
                    "tracepoint offsets",
                    err.clone(),
                    "this kernel's tracepoint layout lacks a field stallscope reads; report it with `uname -r` and the format file",
                ),
            });
            checks
        }
    }
}

fn tracepoint_check(root: &Path, tracepoint: &str, format: &Format) -> Check {
    let name = format!("tracepoint {}", tracepoint.replacen('/', ":", 1));
    let path = root.join("events").join(tracepoint).join("format");
    match format {
        Format::Parsed(fields) => {
            Check::pass(name, format!("present, format parses ({fields} fields)"))
        }
        Format::Missing => {
            let config = if tracepoint.starts_with("raw_syscalls/") {
                "CONFIG_FTRACE_SYSCALLS=y"
            } else {
                "CONFIG_TRACEPOINTS=y and CONFIG_EVENT_TRACING=y"
            };
            Check::fail(
                name,
                format!("missing: no {}", path.display()),
                format!("use a kernel built with {config}"),
            )
        }
        Format::Unparsable => Check::fail(
            name,
            format!("{} does not parse (no common_type field)", path.display()),
            "report it with `uname -r` and the format file",
        ),
        Format::Unreadable(err) => Check::fail(
            name,
            format!("cannot read {}: {err}", path.display()),
            "run stallscope as root (sudo): tracefs is readable by root only",
        ),
    }
}

fn describe_offsets(offsets: &TracepointOffsets) -> String {
    let group_dead = if offsets.exit_group_dead == FIELD_ABSENT {
        "absent".to_string()
    } else {
        offsets.exit_group_dead.to_string()
    };
    format!(
        "all fields found: sched_switch prev_pid {} prev_state {} next_pid {}; sched_process_fork child_pid {}; sched_process_exit pid {} group_dead {}; sys_enter id {}; sys_exit ret {}",
        offsets.switch_prev_pid,
        offsets.switch_prev_state,
        offsets.switch_next_pid,
        offsets.fork_child_pid,
        offsets.exit_pid,
        group_dead,
        offsets.sys_enter_id,
        offsets.sys_exit_ret,
    )
}

fn perf_event_checks(facts: &Facts) -> Vec<Check> {
    let paranoid = facts
        .perf_event_paranoid
        .map_or("unknown".to_string(), |v| v.to_string());
    let perf_event = match facts.perf_event {
        Ok(()) => Check::pass(
            "perf_event cpu-clock",
            "software cpu-clock sampling on CPU 0 for all processes: works",
        ),
        Err(errno @ (libc::EPERM | libc::EACCES)) if !facts.perf_privileged() => Check::fail(
            "perf_event cpu-clock",
            format!(
                "sampling every process on a CPU refused ({}): needs CAP_PERFMON (perf_event_paranoid is {paranoid})",
                errno_name(errno)
            ),
            "run stallscope as root (sudo), or with CAP_PERFMON",
        ),
        Err(errno @ (libc::EPERM | libc::EACCES)) => Check::fail(
            "perf_event cpu-clock",
            format!(
                "sampling every process on a CPU refused ({}) although privileged",
                errno_name(errno)
            ),
            "check kernel lockdown and security modules (SELinux, AppArmor) that can forbid perf_event_open",
        ),
        Err(errno) => Check::fail(
            "perf_event cpu-clock",
            format!(
                "software cpu-clock event not available ({})",
                errno_name(errno)
            ),
            "use a kernel built with CONFIG_PERF_EVENTS=y",
        ),
    };
    let paranoid_check = match facts.perf_event_paranoid {
        _ if facts.perf_privileged() => Check::pass(
            "perf_event_paranoid",
            format!("{paranoid} (does not matter: running with CAP_PERFMON or root)"),
        ),
        Some(value) if value <= 0 => Check::pass(
            "perf_event_paranoid",
            format!("{value} (allows CPU-wide sampling without CAP_PERFMON)"),
        ),
        _ => Check::warn(
            "perf_event_paranoid",
            format!("{paranoid}: CPU-wide sampling needs CAP_PERFMON at this level"),
            "run stallscope as root (sudo), or with CAP_PERFMON",
        ),
    };
    vec![perf_event, paranoid_check]
}

fn developer_checks(developer: &Developer) -> Vec<Check> {
    let linker = match &developer.bpf_linker {
        Ok(version) => Check::pass("bpf-linker", version.clone()),
        Err(err) => Check::fail(
            "bpf-linker",
            err.clone(),
            format!("{XTASK_SETUP} (builds bpf-linker against the system LLVM)"),
        ),
    };
    let rust_src = match &developer.rust_src {
        Ok(true) => Check::pass(
            "nightly rust-src",
            "installed (the eBPF crate builds core with it)",
        ),
        Ok(false) => Check::fail(
            "nightly rust-src",
            "not installed for the nightly toolchain",
            format!("{XTASK_SETUP} (runs `rustup component add rust-src --toolchain nightly`)"),
        ),
        Err(err) => Check::fail("nightly rust-src", err.clone(), XTASK_SETUP),
    };
    vec![linker, rust_src]
}

/// Every check, in report order.
pub fn checks(facts: &Facts) -> Vec<Check> {
    let mut checks = vec![kernel_check(facts), btf_check(facts)];
    checks.extend(capability_checks(facts));
    checks.extend(tracefs_checks(facts));
    let old_kernel = "use Linux 5.8 or later built with CONFIG_BPF_SYSCALL=y";
    checks.push(bpf_probe_check(
        facts,
        "ringbuf",
        "BPF_MAP_TYPE_RINGBUF map",
        facts.ringbuf,
        "use Linux 5.8 or later (BPF ring buffers)",
    ));
    checks.push(bpf_probe_check(
        facts,
        "stack trace map",
        "BPF_MAP_TYPE_STACK_TRACE map",
        facts.stack_map,
        "use a kernel built with CONFIG_BPF_SYSCALL=y and CONFIG_PERF_EVENTS=y",
    ));
    checks.push(bpf_probe_check(
        facts,
        "hash/array maps",
        "hash, array and per-CPU array maps",
        facts.plain_maps,
        old_kernel,
    ));
    checks.push(bpf_probe_check(
        facts,
        "tracepoint programs",
        "BPF_PROG_TYPE_TRACEPOINT program load",
        facts.prog_tracepoint,
        "use a kernel built with CONFIG_BPF_EVENTS=y",
    ));
    checks.push(bpf_probe_check(
        facts,
        "perf_event programs",
        "BPF_PROG_TYPE_PERF_EVENT program load",
        facts.prog_perf_event,
        "use a kernel built with CONFIG_BPF_EVENTS=y and CONFIG_PERF_EVENTS=y",
    ));
    checks.push(Check::pass(
        "kprobes, fentry",
        "not needed: stallscope uses tracepoints and perf events only",
    ));
    checks.extend(perf_event_checks(facts));
    checks.push(kstack_reuse_check(facts));
    checks.push(python_check());
    if let Some(developer) = &facts.developer {
        checks.extend(developer_checks(developer));
    }
    checks
}

/// Whether kernel stacks can be reused at a place blocked at before (a cost, not a capability:
/// without it every one is walked, about 2 µs more per followed switch-out).
fn kstack_reuse_check(facts: &Facts) -> Check {
    match facts.syscall_entry {
        Some(_) => Check::pass(
            "kernel stack reuse",
            "do_syscall_64 found in /proc/kallsyms: a kernel stack is walked once per place",
        ),
        None => Check::warn(
            "kernel stack reuse",
            "/proc/kallsyms hides do_syscall_64's address: every kernel stack is walked \
             (about 2 µs more per followed switch-out)",
            "run as root with kernel.kptr_restrict at 0 or 1",
        ),
    }
}

/// Which CPython versions this build reads frames of, and from where (the recording summary
/// says, per interpreter seen, which way was used).
fn python_check() -> Check {
    Check::pass(
        "Python",
        format!(
            "CPython 3.9-3.12 frames from stallscope's tables, 3.13-{} from the interpreter's \
             _Py_DebugOffsets (3.14+ asyncio tasks from AsyncioDebug); newer or free-threaded \
             builds: native frames only, said in one warning line",
            crate::stacks::python::offsets::NEWEST_UNDERSTOOD
        ),
    )
}

/// One report line: `ok    tracefs          mounted at /sys/kernel/tracing`.
pub fn format_check(check: &Check, name_width: usize) -> String {
    let label = match check.status {
        Status::Pass => "ok",
        Status::Warn => "WARN",
        Status::Fail => "FAIL",
    };
    let mut line = format!(
        "{label:<6}{name:<name_width$}{detail}",
        name = check.name,
        detail = check.detail
    );
    if check.status != Status::Pass
        && let Some(fix) = &check.fix
    {
        let _ = write!(line, " — fix: {fix}");
    }
    line
}

/// Number of failed checks.
pub fn problems(checks: &[Check]) -> usize {
    checks.iter().filter(|c| c.status == Status::Fail).count()
}

/// The whole report: one line per check, then the verdict line.
pub fn format_report(checks: &[Check]) -> String {
    let name_width = checks
        .iter()
        .map(|c| c.name.chars().count() + 2)
        .max()
        .unwrap_or(0)
        .max(17);
    let mut text = String::new();
    for check in checks {
        text.push_str(&format_check(check, name_width));
        text.push('\n');
    }
    match problems(checks) {
        0 => text.push_str("stallscope doctor: all checks passed\n"),
        n => {
            let _ = writeln!(
                text,
                "stallscope doctor: {n} problem(s); fix them and run again"
            );
        }
    }
    text
}

/// 0 when nothing failed (warnings allowed), 1 otherwise.
pub fn exit_code(checks: &[Check]) -> u8 {
    u8::from(problems(checks) > 0)
}

/// Runs every check, prints one line per item, returns the exit code (0 all pass, 1 otherwise).
pub fn run(developer: bool) -> u8 {
    let checks = checks(&probe(developer));
    print!("{}", format_report(&checks));
    exit_code(&checks)
}

// ---------------------------------------------------------------------------------------------
// The probing part: gathers facts, changes nothing.

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT_CAPS: u64 = 0x0000_01ff_ffff_ffff;
    /// Root after `setpriv --bounding-set=-bpf,-perfmon,-sys_admin`.
    const DROPPED_CAPS: u64 = 0x0000_013f_fedf_ffff;

    fn offsets() -> TracepointOffsets {
        TracepointOffsets {
            switch_prev_pid: 24,
            switch_prev_state: 32,
            switch_next_pid: 56,
            fork_parent_pid: 12,
            fork_child_pid: 20,
            exit_pid: 24,
            sys_enter_id: 8,
            sys_exit_id: 8,
            sys_exit_ret: 16,
            ..Default::default()
        }
    }

    fn healthy() -> Facts {
        Facts {
            kernel_release: Some("6.18.44-fc-v657".into()),
            btf: true,
            task_fsbase: Some(0x1234),
            features: KernelFeatures::ALL,
            missing_caps: Vec::new(),
            effective_caps: Some(ROOT_CAPS),
            tracefs: Tracefs::Mounted {
                root: PathBuf::from("/sys/kernel/tracing"),
                tracepoints: TRACEPOINTS
                    .iter()
                    .map(|&t| (t, Format::Parsed(5)))
                    .collect(),
                offsets: Ok(offsets()),
            },
            ringbuf: Ok(()),
            stack_map: Ok(()),
            plain_maps: Ok(()),
            prog_tracepoint: Ok(()),
            prog_perf_event: Ok(()),
            perf_event: Ok(()),
            perf_event_paranoid: Some(2),
            syscall_entry: Some((0xffff_ffff_8223_c8e0, 0xffff_ffff_8223_cb70)),
            developer: None,
        }
    }

    fn find<'a>(checks: &'a [Check], name: &str) -> &'a Check {
        checks
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no check named {name}: {checks:#?}"))
    }

    #[test]
    fn healthy_machine_passes_everything() {
        let checks = checks(&healthy());
        assert!(
            checks.iter().all(|c| c.status == Status::Pass),
            "{checks:#?}"
        );
        for tracepoint in TRACEPOINTS {
            let name = format!("tracepoint {}", tracepoint.replacen('/', ":", 1));
            assert_eq!(find(&checks, &name).status, Status::Pass);
        }
        assert_eq!(exit_code(&checks), 0);
        let report = format_report(&checks);
        assert!(
            report.ends_with("stallscope doctor: all checks passed\n"),
            "{report}"
        );
        assert_eq!(report.lines().count(), checks.len() + 1);
        assert!(!report.contains("fix:"), "{report}");
        assert!(
            find(&checks, "perf_event_paranoid")
                .detail
                .contains("does not matter")
        );
    }

    #[test]
    fn hidden_kallsyms_warns_that_kernel_stacks_are_all_walked() {
        let facts = Facts {
            syscall_entry: None,
            ..healthy()
        };
        let checks = checks(&facts);
        let check = find(&checks, "kernel stack reuse");
        assert_eq!(check.status, Status::Warn, "{check:#?}");
        assert!(
            check.detail.contains("every kernel stack is walked"),
            "{check:#?}"
        );
        assert_eq!(exit_code(&checks), 0, "a cost, not a failure");
    }

    #[test]
    fn formats_one_aligned_line_per_check() {
        let ok = Check::pass("tracefs", "mounted at /sys/kernel/tracing");
        assert_eq!(
            format_check(&ok, 17),
            "ok    tracefs          mounted at /sys/kernel/tracing"
        );
        let fail = Check::fail("tracefs", "not mounted", MOUNT_TRACEFS);
        assert_eq!(
            format_check(&fail, 17),
            "FAIL  tracefs          not mounted — fix: mount -t tracefs tracefs /sys/kernel/tracing"
        );
        let warn = Check::warn("BTF", "missing", "rebuild");
        assert_eq!(format_check(&warn, 5), "WARN  BTF  missing — fix: rebuild");
        // Names longer than the minimum width widen the column for every line.
        let report = format_report(&[ok, Check::pass("a-rather-long-check-name", "x")]);
        let columns: Vec<usize> = report
            .lines()
            .take(2)
            .map(|l| l.find("mounted").or_else(|| l.rfind('x')).unwrap_or(0))
            .collect();
        assert_eq!(columns[0], columns[1], "{report}");
    }

    #[test]
    fn tracefs_not_mounted_fails_with_the_mount_command() {
        let mut facts = healthy();
        facts.tracefs = Tracefs::NotMounted;
        let checks = checks(&facts);
        let tracefs = find(&checks, "tracefs");
        assert_eq!(tracefs.status, Status::Fail);
        let fix = tracefs.fix.as_deref().unwrap_or_default();
        assert!(fix.starts_with(MOUNT_TRACEFS), "{fix}");
        assert!(fix.contains("mounts it by itself"), "{fix}");
        // The unchecked tracepoints are one warning, not nine more problems.
        assert_eq!(find(&checks, "tracepoints").status, Status::Warn);
        assert_eq!(problems(&checks), 1);
        assert_eq!(exit_code(&checks), 1);
        let report = format_report(&checks);
        assert!(
            report.ends_with("stallscope doctor: 1 problem(s); fix them and run again\n"),
            "{report}"
        );
        assert!(
            report.contains("FAIL  tracefs  ")
                && report
                    .contains("not mounted — fix: mount -t tracefs tracefs /sys/kernel/tracing"),
            "{report}"
        );
    }

    #[test]
    fn tracefs_mounted_but_unreadable_or_elsewhere() {
        let mut facts = healthy();
        facts.tracefs = Tracefs::Unusable {
            mounts: vec!["/sys/kernel/tracing".into()],
        };
        let all = checks(&facts);
        let check = find(&all, "tracefs");
        assert_eq!(check.status, Status::Fail);
        assert!(check.detail.contains("not readable"), "{check:?}");
        assert!(check.fix.as_deref().unwrap_or_default().contains("root"));

        facts.tracefs = Tracefs::Unusable {
            mounts: vec!["/mnt/trace".into()],
        };
        let checks = checks(&facts);
        let check = find(&checks, "tracefs");
        assert!(check.detail.contains("/mnt/trace"), "{check:?}");
        assert!(
            check
                .fix
                .as_deref()
                .unwrap_or_default()
                .starts_with(MOUNT_TRACEFS)
        );
    }

    #[test]
    fn missing_or_broken_tracepoints_fail_one_by_one() {
        let mut facts = healthy();
        facts.tracefs = Tracefs::Mounted {
            root: PathBuf::from("/sys/kernel/tracing"),
            tracepoints: vec![
                ("sched/sched_switch", Format::Parsed(9)),
                ("raw_syscalls/sys_enter", Format::Missing),
                ("sched/sched_waking", Format::Unparsable),
                (
                    "sched/sched_wakeup",
                    Format::Unreadable("Permission denied".into()),
                ),
            ],
            offsets: Err("tracepoint sys_enter has no field 'id' on this kernel".into()),
        };
        let checks = checks(&facts);
        assert_eq!(
            find(&checks, "tracepoint sched:sched_switch").status,
            Status::Pass
        );
        let missing = find(&checks, "tracepoint raw_syscalls:sys_enter");
        assert_eq!(missing.status, Status::Fail);
        assert!(
            missing
                .detail
                .contains("/sys/kernel/tracing/events/raw_syscalls/sys_enter/format")
        );
        assert!(
            missing
                .fix
                .as_deref()
                .unwrap_or_default()
                .contains("CONFIG_FTRACE_SYSCALLS")
        );
        assert_eq!(
            find(&checks, "tracepoint sched:sched_waking").status,
            Status::Fail
        );
        let unreadable = find(&checks, "tracepoint sched:sched_wakeup");
        assert!(unreadable.detail.contains("Permission denied"));
        let offsets = find(&checks, "tracepoint offsets");
        assert_eq!(offsets.status, Status::Fail);
        assert!(offsets.detail.contains("'id'"));
        assert_eq!(problems(&checks), 4);
    }

    #[test]
    fn dropped_capabilities_name_cap_bpf_and_cap_perfmon() {
        let mut facts = healthy();
        facts.missing_caps = vec!["CAP_BPF", "CAP_PERFMON"];
        facts.effective_caps = Some(DROPPED_CAPS);
        facts.ringbuf = Err(libc::EPERM);
        facts.stack_map = Err(libc::EPERM);
        facts.plain_maps = Err(libc::EPERM);
        facts.prog_tracepoint = Err(libc::EPERM);
        facts.prog_perf_event = Err(libc::EPERM);
        facts.perf_event = Err(libc::EACCES);
        let checks = checks(&facts);
        let caps = find(&checks, "capabilities");
        assert_eq!(caps.status, Status::Fail);
        assert!(caps.detail.contains("CAP_BPF, CAP_PERFMON"), "{caps:?}");
        assert_eq!(caps.fix.as_deref(), Some(RUN_AS_ROOT));
        let ringbuf = find(&checks, "ringbuf");
        assert_eq!(ringbuf.status, Status::Fail);
        assert!(ringbuf.detail.contains("EPERM") && ringbuf.detail.contains("CAP_BPF"));
        assert_eq!(ringbuf.fix.as_deref(), Some(RUN_AS_ROOT));
        let perf = find(&checks, "perf_event cpu-clock");
        assert!(perf.detail.contains("EACCES") && perf.detail.contains("perf_event_paranoid is 2"));
        assert_eq!(find(&checks, "perf_event_paranoid").status, Status::Warn);
        // Still root otherwise: ptrace is there, sys_admin is not.
        assert_eq!(find(&checks, "CAP_SYS_PTRACE").status, Status::Pass);
        let admin = find(&checks, "CAP_SYS_ADMIN");
        assert_eq!(admin.status, Status::Warn);
        assert!(admin.detail.contains("mounting tracefs"));
        assert_eq!(find(&checks, "tracefs").status, Status::Pass);
        assert_eq!(problems(&checks), 7);
    }

    #[test]
    fn eperm_while_privileged_points_at_lockdown_and_memlock() {
        let mut facts = healthy();
        facts.kernel_release = Some("5.10.0-28-amd64".into());
        facts.ringbuf = Err(libc::EPERM);
        let checks = checks(&facts);
        let ringbuf = find(&checks, "ringbuf");
        assert!(
            ringbuf.detail.contains("although privileged"),
            "{ringbuf:?}"
        );
        let fix = ringbuf.fix.as_deref().unwrap_or_default();
        assert!(
            fix.contains("lockdown") && fix.contains("RLIMIT_MEMLOCK"),
            "{fix}"
        );
    }

    #[test]
    fn old_kernel_without_ring_buffers_fails() {
        let mut facts = healthy();
        facts.kernel_release = Some("5.4.0-150-generic".into());
        facts.ringbuf = Err(libc::EINVAL);
        let checks = checks(&facts);
        let kernel = find(&checks, "kernel");
        assert_eq!(kernel.status, Status::Fail);
        assert!(kernel.detail.contains("older than 5.10"), "{kernel:?}");
        assert_eq!(
            kernel.fix.as_deref(),
            Some("upgrade to Linux 5.10 or later")
        );
        let ringbuf = find(&checks, "ringbuf");
        assert!(ringbuf.detail.contains("not supported") && ringbuf.detail.contains("EINVAL"));
        assert!(ringbuf.fix.as_deref().unwrap_or_default().contains("5.8"));
    }

    #[test]
    fn kernel_without_bpf_loop_works_with_less() {
        let mut facts = healthy();
        facts.kernel_release = Some("5.10.0-32-amd64".into());
        facts.features = KernelFeatures::NONE;
        let checks = checks(&facts);
        let kernel = find(&checks, "kernel");
        assert_eq!(kernel.status, Status::Warn);
        assert!(
            kernel.detail.contains("on this kernel: ")
                && kernel.detail.contains("Python frames")
                && kernel.detail.contains("no bpf_loop before 5.17"),
            "{kernel:?}"
        );
        assert_eq!(exit_code(&checks), 0);
    }

    #[test]
    fn missing_btf_is_only_a_warning() {
        let mut facts = healthy();
        facts.btf = false;
        let checks = checks(&facts);
        assert_eq!(find(&checks, "BTF").status, Status::Warn);
        assert_eq!(exit_code(&checks), 0);
        assert!(format_report(&checks).ends_with("all checks passed\n"));
    }

    #[test]
    fn unprivileged_paranoid_levels() {
        let mut facts = healthy();
        facts.effective_caps = Some(0);
        facts.perf_event_paranoid = Some(-1);
        assert_eq!(
            find(&checks(&facts), "perf_event_paranoid").status,
            Status::Pass
        );
        facts.perf_event_paranoid = Some(2);
        assert_eq!(
            find(&checks(&facts), "perf_event_paranoid").status,
            Status::Warn
        );
    }

    #[test]
    fn developer_checks_say_cargo_xtask_setup() {
        let mut facts = healthy();
        facts.developer = Some(Developer {
            bpf_linker: Ok("bpf-linker 0.13.0".into()),
            rust_src: Ok(true),
        });
        let checks_ok = checks(&facts);
        assert_eq!(find(&checks_ok, "bpf-linker").detail, "bpf-linker 0.13.0");
        assert_eq!(find(&checks_ok, "nightly rust-src").status, Status::Pass);
        assert_eq!(exit_code(&checks_ok), 0);

        facts.developer = Some(Developer {
            bpf_linker: Err("not found in PATH".into()),
            rust_src: Ok(false),
        });
        let checks = checks(&facts);
        for name in ["bpf-linker", "nightly rust-src"] {
            let check = find(&checks, name);
            assert_eq!(check.status, Status::Fail);
            assert!(
                check
                    .fix
                    .as_deref()
                    .unwrap_or_default()
                    .starts_with("cargo xtask setup"),
                "{check:?}"
            );
        }
        assert!(
            format_report(&checks)
                .ends_with("stallscope doctor: 2 problem(s); fix them and run again\n")
        );
    }

    #[test]
    fn parses_machine_facts() {
        assert_eq!(parse_kernel_release("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(parse_kernel_release("5.8.0"), Some((5, 8)));
        assert_eq!(parse_kernel_release("5.10-rc1"), Some((5, 10)));
        assert_eq!(parse_kernel_release("6.1+"), Some((6, 1)));
        assert_eq!(parse_kernel_release("garbage"), None);
        assert!((5, 17) >= MIN_KERNEL && (5, 15) < MIN_KERNEL && (4, 19) < MIN_KERNEL);

        let status = "Name:\tcat\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(status), Some(ROOT_CAPS));
        assert_eq!(parse_cap_eff("Name:\tcat\n"), None);

        let mounts = "sysfs /sys sysfs rw 0 0\ntracefs /sys/kernel/tracing tracefs rw,relatime 0 0\n\
                      none /mnt/t tracefs rw 0 0\n";
        assert_eq!(tracefs_mounts(mounts), ["/sys/kernel/tracing", "/mnt/t"]);
        assert!(tracefs_mounts("proc /proc proc rw 0 0\n").is_empty());

        assert!(lists_rust_src(
            "cargo-x86_64-unknown-linux-gnu\nrust-src\nrustc-x86_64\n"
        ));
        assert!(!lists_rust_src(
            "cargo-x86_64-unknown-linux-gnu\nrust-std-x86_64\n"
        ));
    }

    #[test]
    fn parses_format_files() {
        let format = "name: sched_wakeup\nID: 318\nformat:\n\
                      \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
                      \tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n\
                      \tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;\n\nprint fmt: \"pid=%d\"\n";
        assert_eq!(format_fields(format), Some(3));
        assert_eq!(format_fields("name: x\nformat:\n"), None);
    }

    #[test]
    fn tracepoint_list_matches_what_the_agent_attaches() {
        let required: Vec<String> = crate::system::attach::TRACEPOINTS
            .iter()
            .filter(|t| t.3)
            .map(|(category, name, _, _)| format!("{category}/{name}"))
            .collect();
        assert_eq!(required, TRACEPOINTS.map(str::to_string).to_vec());
    }
}
