//! Every mistake a user can make gets one line that says what happened and what to do, with exit
//! code 1 (2 for a bad command line). The agent is run for real in each case.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use stallscope_tests::{Needed, Target, agent_bin, require_root, run_agent, scratch_dir};

/// A long-lived process of ours to point the agent at.
fn sleeper() -> Target {
    Target::spawn(Command::new("sleep").arg("60"))
}

fn assert_one_line_error(stderr: &str, needle: &str) {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "exactly one line of error, got: {stderr}");
    assert!(
        lines[0].contains(needle),
        "error should say '{needle}': {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

fn unused_pid() -> u32 {
    let max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(32768);
    (2..max)
        .rev()
        .find(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        .expect("a free pid")
}

#[test]
fn pid_that_does_not_exist() {
    let pid = unused_pid().to_string();
    let out = scratch_dir("err-nopid");
    let (code, _, stderr) = run_agent(&[
        "record",
        "--pid",
        &pid,
        "--out",
        out.to_str().expect("utf8"),
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert_one_line_error(&stderr, &format!("no process with PID {pid}"));
}

#[test]
fn pid_that_exits_while_attaching() {
    require_root();
    let short = Target::spawn(Command::new("sleep").arg("0.3"));
    let out = scratch_dir("err-exits");
    // Widen the attach window past the target's life (test hook, see record.rs).
    let output = Command::new(agent_bin())
        .args(["record", "--pid", &short.pid().to_string(), "--out"])
        .arg(&out)
        .env("STALLSCOPE_TEST_ATTACH_DELAY_MS", "1500")
        .stdin(Stdio::null())
        .output()
        .expect("run agent");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_one_line_error(&stderr, "exited while stallscope was attaching");
}

#[test]
fn bad_thresholds_are_usage_errors() {
    for (threshold, needle) in [
        ("0ms", "--threshold must be greater than 0"),
        ("abc", "--threshold abc"),
        ("100", "has no unit"),
    ] {
        let (code, _, stderr) = run_agent(&["record", "--pid", "1", "--threshold", threshold]);
        assert_eq!(code, 2, "{threshold}: {stderr}");
        assert_one_line_error(&stderr, needle);
    }
    let (code, _, stderr) = run_agent(&["record", "--pid", "abc"]);
    assert_eq!(code, 2, "{stderr}");
    assert_one_line_error(&stderr, "'abc' is not a process or thread id");
    let (code, _, stderr) = run_agent(&["record"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--pid"), "{stderr}");
}

#[test]
fn output_directory_not_writable() {
    require_root();
    let target = sleeper();
    let dir = scratch_dir("err-ro");
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"])
        .arg(&dir)
        .needed_status();
    assert!(status.success(), "mounting a read-only tmpfs for the test");
    let out = dir.join("recording");
    let (code, _, stderr) = run_agent(&[
        "record",
        "--pid",
        &target.pid().to_string(),
        "--out",
        out.to_str().expect("utf8"),
    ]);
    let _ = Command::new("umount").arg(&dir).status();
    assert_eq!(code, 1, "{stderr}");
    assert_one_line_error(&stderr, "is not writable; choose another with --out");
    assert!(stderr.contains("Read-only file system"), "{stderr}");
}

#[test]
fn missing_capabilities_are_named() {
    require_root();
    let target = sleeper();
    let out = scratch_dir("err-caps");
    let output = Command::new("setpriv")
        .args(["--bounding-set=-bpf,-perfmon,-sys_admin", "--"])
        .arg(agent_bin())
        .args(["record", "--pid", &target.pid().to_string(), "--out"])
        .arg(&out)
        .stdin(Stdio::null())
        .needed_output();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_one_line_error(&stderr, "missing: CAP_BPF, CAP_PERFMON");
    assert!(stderr.contains("run it with sudo"), "{stderr}");
}

/// Runs the agent in a private mount namespace where tracefs is not mounted.
fn without_tracefs(extra_setpriv: &[&str], args: &[&str]) -> (i32, String) {
    let script = r#"umount /sys/kernel/debug/tracing 2>/dev/null; umount /sys/kernel/tracing 2>/dev/null;
if [ -e /sys/kernel/tracing/events ]; then echo "tracefs still mounted" >&2; exit 99; fi
exec "$@""#;
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c", script, "sh"]);
    if !extra_setpriv.is_empty() {
        cmd.arg("setpriv").args(extra_setpriv).arg("--");
    }
    let output = cmd
        .arg(agent_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("unshare");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn tracefs_not_mounted_is_mounted_by_the_agent() {
    require_root();
    let target = sleeper();
    let out = scratch_dir("tracefs-mount");
    let pid = target.pid().to_string();
    let out_text = out.to_str().expect("utf8");
    let (code, stderr) = without_tracefs(
        &[],
        &[
            "record",
            "--pid",
            &pid,
            "--duration",
            "1s",
            "--out",
            out_text,
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(out.join("stalls.json").exists());
}

#[test]
fn tracefs_not_mountable_says_how() {
    require_root();
    let target = sleeper();
    let out = scratch_dir("tracefs-fail");
    let pid = target.pid().to_string();
    let out_text = out.to_str().expect("utf8");
    // Without CAP_SYS_ADMIN the agent cannot mount tracefs itself.
    let (code, stderr) = without_tracefs(
        &["--bounding-set=-sys_admin"],
        &[
            "record",
            "--pid",
            &pid,
            "--duration",
            "1s",
            "--out",
            out_text,
        ],
    );
    assert_eq!(code, 1, "{stderr}");
    assert_one_line_error(&stderr, "mount -t tracefs tracefs /sys/kernel/tracing");
}
