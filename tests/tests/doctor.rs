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
