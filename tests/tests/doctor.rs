//! `stallscope doctor` on this machine, for real: everything passes as root; a private mount
//! namespace without tracefs and a capability-stripped run fail with the right fix; the
//! developer checks find bpf-linker and nightly rust-src.
//!
//! tracefs is unmounted only inside a private mount namespace (`unshare -m --propagation
//! private`), never in the machine's own, where other tests use it.

use std::process::{Command, Stdio};

use stallscope_tests::{agent_bin, require_root};

struct Doctor {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Doctor {
    /// The line whose check name (second column) is `name`.
    fn line(&self, name: &str) -> &str {
        self.stdout
            .lines()
            .find(|line| {
                line.get(6..).is_some_and(|rest| {
                    rest.starts_with(name) && rest[name.len()..].starts_with("  ")
                })
            })
            .unwrap_or_else(|| panic!("no line for '{name}' in:\n{}", self.stdout))
    }

    fn assert_status(&self, name: &str, status: &str) {
        let line = self.line(name);
        assert!(
            line.starts_with(&format!("{status:<6}")),
            "'{name}' should be {status}: {line}\nfull output:\n{}",
            self.stdout
        );
    }

    fn last_line(&self) -> &str {
        self.stdout.lines().last().unwrap_or_default()
    }
}

/// Runs `PREFIX... <agent> doctor ARGS...`.
fn doctor(prefix: &[&str], args: &[&str]) -> Doctor {
    let agent = agent_bin();
    let mut command = match prefix.split_first() {
        Some((program, rest)) => {
            let mut command = Command::new(program);
            command.args(rest).arg(&agent);
            command
        }
        None => Command::new(&agent),
    };
    let out = command
        .arg("doctor")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run stallscope doctor");
    let result = Doctor {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert!(
        !result.stderr.contains("panicked"),
        "doctor panicked: {}",
        result.stderr
    );
    result
}

const TRACEPOINTS: [&str; 9] = [
    "sched:sched_switch",
    "sched:sched_waking",
    "sched:sched_wakeup",
    "sched:sched_wakeup_new",
    "raw_syscalls:sys_enter",
    "raw_syscalls:sys_exit",
    "sched:sched_process_fork",
    "sched:sched_process_exit",
    "sched:sched_process_exec",
];

#[test]
fn passes_on_this_machine_as_root() {
    require_root();
    let out = doctor(&[], &[]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    for name in [
        "kernel",
        "BTF",
        "capabilities",
        "tracefs",
        "tracepoint offsets",
        "ringbuf",
        "stack trace map",
        "tracepoint programs",
        "perf_event programs",
        "perf_event cpu-clock",
    ] {
        out.assert_status(name, "ok");
    }
    for tracepoint in TRACEPOINTS {
        out.assert_status(&format!("tracepoint {tracepoint}"), "ok");
    }
    assert!(out.line("tracefs").contains("mounted at /sys/kernel/"));
    assert!(!out.stdout.contains("FAIL"), "{}", out.stdout);
    assert_eq!(out.last_line(), "stallscope doctor: all checks passed");
    // Developer checks only with --developer.
    assert!(!out.stdout.contains("bpf-linker"), "{}", out.stdout);
}

#[test]
fn fails_without_tracefs_and_gives_the_mount_command() {
    require_root();
    // Only this private mount namespace loses tracefs; the machine's stays mounted.
    let out = doctor(
        &[
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            "umount /sys/kernel/debug/tracing 2>/dev/null; umount /sys/kernel/tracing 2>/dev/null; exec \"$@\"",
            "sh",
        ],
        &[],
    );
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    out.assert_status("tracefs", "FAIL");
    let line = out.line("tracefs");
    assert!(
        line.contains("not mounted")
            && line.contains("fix: mount -t tracefs tracefs /sys/kernel/tracing"),
        "{line}"
    );
    // Doctor reports; it does not mount (the agent does that when recording).
    out.assert_status("tracepoints", "WARN");
    // Everything that does not need tracefs still passes.
    for name in ["ringbuf", "capabilities", "perf_event cpu-clock", "BTF"] {
        out.assert_status(name, "ok");
    }
    assert_eq!(
        out.last_line(),
        "stallscope doctor: 1 problem(s); fix them and run again"
    );
    assert!(
        std::fs::read_to_string("/proc/self/mounts")
            .expect("read mounts")
            .contains(" tracefs "),
        "tracefs must still be mounted outside the namespace"
    );
}

#[test]
fn fails_without_bpf_capabilities_and_names_them() {
    require_root();
    let out = doctor(
        &["setpriv", "--bounding-set=-bpf,-perfmon,-sys_admin", "--"],
        &[],
    );
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    out.assert_status("capabilities", "FAIL");
    let caps = out.line("capabilities");
    assert!(
        caps.contains("CAP_BPF") && caps.contains("CAP_PERFMON") && caps.contains("fix:"),
        "{caps}"
    );
    // The real probes are refused too, and say why.
    out.assert_status("ringbuf", "FAIL");
    assert!(out.line("ringbuf").contains("EPERM"), "{}", out.stdout);
    out.assert_status("tracepoint programs", "FAIL");
    out.assert_status("perf_event cpu-clock", "FAIL");
    out.assert_status("CAP_SYS_ADMIN", "WARN");
    assert!(
        out.last_line()
            .ends_with("problem(s); fix them and run again"),
        "{}",
        out.stdout
    );
}

#[test]
fn developer_checks_pass_on_this_machine() {
    require_root();
    let out = doctor(&[], &["--developer"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    out.assert_status("bpf-linker", "ok");
    assert!(
        out.line("bpf-linker").contains("bpf-linker 0."),
        "{}",
        out.stdout
    );
    out.assert_status("nightly rust-src", "ok");
    out.assert_status("tracefs", "ok");
    assert_eq!(out.last_line(), "stallscope doctor: all checks passed");
}

/// A kernel older than 5.10, as the agent sees it: `setarch --uname-2.6` (the UNAME26
/// personality) makes uname(2) report a 2.6 release. doctor fails on it, and record and watch
/// refuse at once with the very same reason and fix on one line, exit 1, before touching the
/// kernel: no verifier output, no half-started recording.
#[test]
fn a_kernel_older_than_5_10_is_refused_by_record_and_watch_with_doctors_line() {
    require_root();
    let uname26 = ["setarch", "x86_64", "--uname-2.6"];
    let out = doctor(&uname26, &[]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    out.assert_status("kernel", "FAIL");
    let verdict = out.line("kernel");
    let reason = verdict
        .split_once("Linux ")
        .map(|(_, rest)| format!("Linux {rest}"))
        .expect("doctor names the release");
    assert!(
        reason.contains("older than 5.10") && reason.contains("fix: upgrade to Linux 5.10"),
        "{verdict}"
    );
    let dir = std::env::temp_dir().join(format!("stallscope-too-old-{}", std::process::id()));
    let own = std::process::id().to_string();
    let out_dir = |name: &str| dir.join(name).display().to_string();
    for command in [
        vec![
            "record",
            "--pid",
            &own,
            "--duration",
            "2s",
            "-o",
            &out_dir("record"),
        ],
        vec![
            "watch",
            "--pid",
            &own,
            "--quiet",
            "--events",
            &out_dir("watch"),
        ],
        vec!["ci", "--pid", &own, "-o", &out_dir("ci"), "--", "true"],
    ] {
        let out = Command::new(uname26[0])
            .args(&uname26[1..])
            .arg(agent_bin())
            .args(&command)
            .stdin(Stdio::null())
            .output()
            .expect("run stallscope");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}: {stderr}", command[0]);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{}: one line only:\n{stderr}", command[0]);
        assert!(
            lines[0].contains(&reason),
            "{}: the same reason and fix as doctor ({reason}):\n{stderr}",
            command[0]
        );
        assert!(
            !stderr.contains("verifier") && !stderr.contains("recording"),
            "{}: {stderr}",
            command[0]
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
