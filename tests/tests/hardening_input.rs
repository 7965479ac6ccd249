//! Hardening against bad input and hostile conditions, with the real agent:
//!
//! - every flag given a bad value: a usage error (exit 2) that names the flag, never a panic;
//! - `report` on a missing, truncated or corrupted recording: exit 1, one line saying which file
//!   is wrong and how; a damaged event log that still has whole records never crashes it;
//! - a full output disk (a 64 KiB tmpfs): exit 1, one line with "No space left on device";
//! - a target that execs into a setuid binary (`su`): followed across the exec, exit 0;
//! - targets whose binaries are stripped (frames named module+offset, at the right offsets),
//!   have no .eh_frame (frame pointers still give `burn_cpu` < `handle_request` < `main`), or
//!   were deleted or replaced on disk since they started (still symbolized from the mapped file);
//! - permissions: CAP_BPF + CAP_PERFMON (+ CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH) without the rest
//!   of root records a stall of a target owned by another user; without CAP_PERFMON (or
//!   CAP_BPF) the one line names exactly the missing capability; a non-root user with ambient
//!   capabilities records, or is told which capability is missing; and what least privilege
//!   cannot do (kernel symbol names need CAP_SYSLOG, /proc/PID/map_files CAP_SYS_ADMIN or
//!   CAP_CHECKPOINT_RESTORE) is either done anyway or said, never silently dropped.
//!
//! Targets: tests/targets/epoll_server.c (and timer_loop.c as the replacement program), built
//! here with cc and post-processed with binutils' `strip` and `objcopy`.

use std::{
    fs,
    io::Read,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use stallscope_tests::{
    Agent, AgentResult, EpollServer, Lines, Needed, Planted, Target, agent_bin, c_target,
    dominant_code_stack, require_root, run_agent, scratch_dir, user_function_names,
};

const FP_FLAGS: &[&str] = &["-O2", "-g", "-fno-omit-frame-pointer"];
const NO_FP_FLAGS: &[&str] = &["-O2", "-g", "-fomit-frame-pointer"];
const NO_UNWIND_TABLES_FLAGS: &[&str] = &[
    "-O2",
    "-fno-omit-frame-pointer",
    "-fno-asynchronous-unwind-tables",
    "-fno-unwind-tables",
];

// ---------------------------------------------------------------------------------------------
// Helpers

fn non_empty_lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.trim().is_empty()).collect()
}

fn assert_no_panic(stderr: &str) {
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "the agent panicked: {stderr}"
    );
}

/// Exactly one line, `stallscope: error: ...`, saying `needle`.
fn assert_one_line_error(stderr: &str, needle: &str) {
    assert_no_panic(stderr);
    let lines = non_empty_lines(stderr);
    assert_eq!(lines.len(), 1, "exactly one line of error, got: {stderr}");
    assert!(
        lines[0].starts_with("stallscope: error: "),
        "the error line starts with 'stallscope: error:': {stderr}"
    );
    assert!(
        lines[0].contains(needle),
        "error should say '{needle}': {stderr}"
    );
}

fn run_agent_in(args: &[&str]) -> (i32, String) {
    let (code, _, stderr) = run_agent(args);
    (code, stderr)
}

/// Starts an epoll server from an arbitrary binary (the library's `EpollServer::start` compiles
/// its own), optionally through a wrapper such as `setpriv --reuid=...`.
fn start_server(wrapper: &[&str], binary: &Path) -> EpollServer {
    let mut command = match wrapper.split_first() {
        Some((program, args)) => {
            let mut command = Command::new(program);
            command.args(args).arg(binary);
            command
        }
        None => Command::new(binary),
    };
    command.arg("0");
    let mut target = Target::spawn(&mut command);
    let line = target
        .stdout
        .wait_for("listening", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("{} did not start listening", binary.display()));
    let port = line
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port number");
    EpollServer { target, port }
}

/// Attaches by PID, plants one 200 ms CPU burn between quick requests, stops the agent.
fn record_one_burn(server: &mut EpollServer, name: &str) -> (AgentResult, Planted) {
    let out = scratch_dir(name);
    let pid = server.target.pid().to_string();
    let agent = Agent::record(&["--pid", &pid, "--threshold", "100ms"], &out);
    plant_burn(server);
    let result = agent.stop();
    assert!(
        result.status.success(),
        "agent failed: {:#?}",
        result.stderr
    );
    assert_no_panic(&result.stderr.join("\n"));
    let planted = server.planted();
    assert_eq!(planted.len(), 1, "server log: {planted:?}");
    (result, planted[0].clone())
}

fn plant_burn(server: &EpollServer) {
    for _ in 0..5 {
        server.request("quick");
    }
    std::thread::sleep(Duration::from_millis(100));
    server.request("burn 200");
    std::thread::sleep(Duration::from_millis(100));
    for _ in 0..5 {
        server.request("quick");
    }
    std::thread::sleep(Duration::from_millis(200));
}

/// The stall that contains the planted burn, and its heaviest code stack (runqueue time is the
/// machine's contention, not the code's), which must be on-CPU.
fn burn_stall(json: &Value, planted: &Planted) -> (Value, Value) {
    let stalls = json["stalls"].as_array().expect("stalls array");
    let stall = stalls
        .iter()
        .find(|s| {
            let start = s["start_ns"].as_u64().unwrap_or(u64::MAX);
            let end = s["end_ns"].as_u64().unwrap_or(0);
            start <= planted.start_ns + 20_000_000 && end + 20_000_000 >= planted.end_ns
        })
        .unwrap_or_else(|| panic!("no stall covers the planted burn {planted:?}: {stalls:#?}"))
        .clone();
    let top = dominant_code_stack(&stall).clone();
    assert_eq!(top["kind"], "on_cpu", "a burn is on-CPU: {stall:#}");
    (stall, top)
}

fn assert_burn_named(top: &Value, what: &str) {
    let names = user_function_names(top);
    assert!(
        names.iter().take(4).any(|n| n == "burn_cpu"),
        "{what}: burn_cpu among the top frames: {names:?}\n{top:#}"
    );
    for caller in ["handle_request", "main"] {
        assert!(
            names.iter().any(|n| n == caller),
            "{what}: the stack reaches {caller}: {names:?}"
        );
    }
    let burn = names.iter().position(|n| n == "burn_cpu");
    let handler = names.iter().position(|n| n == "handle_request");
    assert!(burn < handler, "{what}: innermost first: {names:?}");
}

/// A copy of `from` at `to`, executable.
fn copy_binary(from: &Path, to: &Path) {
    fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copying {} to {}: {e}", from.display(), to.display()));
    fs::set_permissions(to, fs::Permissions::from_mode(0o755)).expect("chmod");
}

fn run_tool(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program} (binutils): {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn section_names(binary: &Path) -> Vec<String> {
    let text = run_tool("readelf", &["-SW", binary.to_str().expect("utf8")]);
    text.lines()
        .filter_map(|line| {
            let rest = line.split_once(']')?.1;
            Some(rest.split_whitespace().next()?.to_string())
        })
        .collect()
}

/// Function name -> file-offset range, from an unstripped binary's symbol table and its
/// program headers (the stripped copy has the same code at the same offsets).
fn function_file_ranges(binary: &Path, names: &[&str]) -> Vec<(String, u64, u64)> {
    let path = binary.to_str().expect("utf8");
    // LOAD segments: (file offset, vaddr, file size).
    let loads: Vec<(u64, u64, u64)> = run_tool("readelf", &["-lW", path])
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            (fields.next()? == "LOAD").then_some(())?;
            let hex = |f: Option<&str>| u64::from_str_radix(f?.trim_start_matches("0x"), 16).ok();
            let offset = hex(fields.next())?;
            let vaddr = hex(fields.next())?;
            let _paddr = fields.next()?;
            let filesz = hex(fields.next())?;
            Some((offset, vaddr, filesz))
        })
        .collect();
    assert!(!loads.is_empty(), "no LOAD segment in {path}");
    let symbols = run_tool("nm", &["-S", "--defined-only", path]);
    names
        .iter()
        .map(|name| {
            let (vaddr, size) = symbols
                .lines()
                .find_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    (fields.len() == 4 && fields[3] == *name).then(|| {
                        (
                            u64::from_str_radix(fields[0], 16).expect("address"),
                            u64::from_str_radix(fields[1], 16).expect("size"),
                        )
                    })
                })
                .unwrap_or_else(|| panic!("{name} not in the symbol table of {path}"));
            let (offset, seg_vaddr, _) = loads
                .iter()
                .find(|(_, v, filesz)| *v <= vaddr && vaddr < v + filesz)
                .unwrap_or_else(|| panic!("{name} at {vaddr:#x} is in no LOAD segment"));
            let start = vaddr - seg_vaddr + offset;
            ((*name).to_string(), start, start + size)
        })
        .collect()
}

/// A tmpfs mounted for one test, unmounted when dropped (also when the test fails).
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(dir: &Path, options: &str) -> Self {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir)
            .needed_status();
        assert!(
            status.success(),
            "mounting a tmpfs ({options}) on {}",
            dir.display()
        );
        Mount(dir.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// `stallscope record` started through a wrapper (setpriv), with its stderr and stdout read.
struct WrappedAgent {
    child: Child,
    stderr: Lines,
    stdout: Lines,
}

impl WrappedAgent {
    fn start(wrapper: &[&str], args: &[&str]) -> Self {
        let (program, wrapper_args) = wrapper.split_first().expect("a wrapper");
        let mut child = Command::new(program)
            .args(wrapper_args)
            .arg(agent_bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program}: {e}"));
        let stderr = Lines::spawn(child.stderr.take().expect("stderr"));
        let stdout = Lines::spawn(child.stdout.take().expect("stdout"));
        WrappedAgent {
            child,
            stderr,
            stdout,
        }
    }

    fn wait(mut self) -> (ExitStatus, Vec<String>, Vec<String>) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "stallscope did not exit");
            std::thread::sleep(Duration::from_millis(50));
        };
        (
            status,
            self.stdout.collect(Duration::from_millis(200)),
            self.stderr.collect(Duration::from_millis(200)),
        )
    }
}

impl Drop for WrappedAgent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Bad flag values

#[test]
fn bad_flag_values_are_usage_errors_that_name_the_flag() {
    // (arguments, what the first line of the error must say). Parsing happens before anything
    // is checked or loaded, so these need no target and no privileges.
    let cases: &[(&[&str], &str)] = &[
        (
            &["record", "--pid", "1", "--threshold", "-5ms"],
            // clap takes "-5ms" for a flag: "unexpected argument '-5' found".
            "'-5'",
        ),
        (
            &["record", "--pid", "1", "--threshold", "1e3ms"],
            "--threshold 1e3ms",
        ),
        (
            &["record", "--pid", "1", "--threshold", "5h"],
            "unknown unit 'h'",
        ),
        (
            &[
                "record",
                "--pid",
                "1",
                "--threshold",
                "99999999999999999999m",
            ],
            "too large",
        ),
        (&["record", "--pid", "1", "--threshold", ""], "--threshold"),
        (
            &["record", "--pid", "1", "--threshold", "NaNms"],
            "--threshold NaNms",
        ),
        (
            &["record", "--pid", "1", "--threshold", "0.0000001ms"],
            "greater than 0",
        ),
        (
            &["record", "--pid", "1", "--duration", "0s"],
            "--duration must be greater than 0",
        ),
        (&["record", "--pid", "1", "--duration", "10"], "has no unit"),
        (
            &["record", "--pid", "1", "--duration", "1..5s"],
            "--duration 1..5s",
        ),
        (
            &["record", "--pid", "0"],
            "'0' is not a process or thread id",
        ),
        (
            &["record", "--pid", "4294967296"],
            "'4294967296' is not a process or thread id",
        ),
        (
            &["record", "--pid", "1,,2"],
            "'' is not a process or thread id",
        ),
        (
            &["record", "--pid", "1,x"],
            "'x' is not a process or thread id",
        ),
        (&["record", "--pid", "-1"], "-1"),
        (
            &["record", "--pid", "1", "--thread", "0"],
            "'0' is not a process or thread id",
        ),
        (
            &["record", "--pid", "1", "--thread", "12a"],
            "'12a' is not a process or thread id",
        ),
        (&["record", "--pid", "1", "--fail-on", ""], "--fail-on"),
        (
            &["record", "--pid", "1", "--fail-on", "max=200ms,"],
            "a stray comma",
        ),
        (
            &["record", "--pid", "1", "--fail-on", "max=200"],
            "has no unit",
        ),
        (
            &["record", "--pid", "1", "--fail-on", "p95=1s"],
            "unknown metric 'p95'",
        ),
        (
            &["record", "--pid", "1", "--fail-on", "host:max=1s"],
            "unknown scope 'host'",
        ),
        (
            &["record", "--pid", "1", "--fail-on", "count=1.5"],
            "whole number",
        ),
        (
            &[
                "record",
                "--pid",
                "1",
                "--fail-on",
                "count=99999999999999999999",
            ],
            "too large",
        ),
        (
            &["record", "--pid", "1", "--fail-on", "total=+20%"],
            "only apply to stallscope diff",
        ),
        (
            &["record", "--pid", "1", "--fail-on", "max=-1s"],
            "cannot be negative",
        ),
        (
            &["record", "--pid", "1", "--freq", "0"],
            "--freq 0 is out of range",
        ),
        (
            &["record", "--pid", "1", "--freq", "100000"],
            "--freq 100000 is out of range",
        ),
        (&["record", "--pid", "1", "--freq", "abc"], "--freq"),
        (&["record", "--pid", "1", "--freq", "-1"], "-1"),
        (
            &["record", "--pid", "1", "--stack-bytes", "40000"],
            "--stack-bytes 40000",
        ),
        (
            &["record", "--pid", "1", "--stack-bytes", "4294967296"],
            "--stack-bytes",
        ),
        (
            &["record", "--pid", "1", "--ring-buffer-kib", "3"],
            "--ring-buffer-kib 3",
        ),
        (
            &["record", "--pid", "1", "--ring-buffer-kib", "12"],
            "power of two",
        ),
        (
            &["record", "--pid", "1", "--format", "svg,png"],
            "--format png",
        ),
        (&["record", "--pid", "1", "--bogus"], "--bogus"),
        (
            &["record", "--pid", "1", "--", "true"],
            "cannot be used with",
        ),
        (
            &["report", "/nonexistent", "--threshold", "0ms"],
            "--threshold must be greater than 0",
        ),
        (
            &["report", "/nonexistent", "--threshold", "fast"],
            "--threshold fast",
        ),
        (
            &["report", "/nonexistent", "--fail-on", "max"],
            "expected metric=value",
        ),
        (
            &["report", "/nonexistent", "--format", "xlsx"],
            "--format xlsx",
        ),
        (
            &["diff", "/a", "/b", "--fail-on", "process:total=+20%"],
            "drop the scope",
        ),
        (
            &["diff", "/a", "/b", "--fail-on", "total=+x%"],
            "is not a percentage",
        ),
        (
            &["ci", "--pid", "1", "--ready-timeout", "soon", "--", "true"],
            "--ready-timeout soon",
        ),
        (
            &["ci", "--pid", "1", "--ready", "udp:80", "--", "true"],
            "udp:80",
        ),
        (
            &["ci", "--pid", "1", "--threshold", "0ms", "--", "true"],
            "--threshold",
        ),
        (
            &["ci", "--pid", "0", "--", "true"],
            "'0' is not a process or thread id",
        ),
        (
            &["ci", "--pid", "1", "--ready", "tcp:99999", "--", "true"],
            "--ready tcp:99999",
        ),
        (
            &["ci", "--pid", "1", "--ready", "http://", "--", "true"],
            "--ready http://",
        ),
        (
            &["ci", "--pid", "1"],
            "required arguments were not provided",
        ),
    ];
    for (args, needle) in cases {
        let (code, stderr) = run_agent_in(args);
        assert_eq!(code, 2, "{args:?} is a usage error: {stderr}");
        assert_no_panic(&stderr);
        let lines = non_empty_lines(&stderr);
        assert!(!lines.is_empty(), "{args:?}: no error message");
        // The agent's own checks print one line; clap's print the error first, then usage.
        if lines[0].starts_with("stallscope: ") {
            assert_eq!(lines.len(), 1, "{args:?}: one line: {stderr}");
            assert!(
                !lines[0].starts_with("stallscope: error:"),
                "{args:?}: {stderr}"
            );
        } else {
            assert!(lines[0].starts_with("error: "), "{args:?}: {stderr}");
        }
        assert!(
            lines[0].contains(needle),
            "{args:?}: the first line should say '{needle}': {stderr}"
        );
    }
}

#[test]
fn usage_errors_stay_on_one_line_when_the_value_holds_a_newline() {
    // A value pasted with a line break (e.g. from a YAML block in CI) must not break the
    // "one line" promise: the agent quotes the value back.
    for args in [
        &["record", "--pid", "1", "--threshold", "1\n0ms"][..],
        &["record", "--pid", "1\n2"][..],
        &["record", "--pid", "1", "--fail-on", "max=1s,\ncount=0x"][..],
    ] {
        let (code, stderr) = run_agent_in(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert_no_panic(&stderr);
        assert_eq!(
            non_empty_lines(&stderr).len(),
            1,
            "{args:?}: the usage error must be one line, got: {stderr:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 2. `report` on damaged recordings

/// A real recording with events: a shell that sleeps 50 ms in a loop, recorded for 1 s.
fn real_recording(name: &str) -> PathBuf {
    require_root();
    let sleeper = Target::spawn(Command::new("sh").args(["-c", "while :; do sleep 0.05; done"]));
    let out = scratch_dir(name).join("recording");
    let pid = sleeper.pid().to_string();
    let (code, stderr) = run_agent_in(&[
        "record",
        "--pid",
        &pid,
        "--duration",
        "1s",
        "--quiet",
        "--out",
        out.to_str().expect("utf8"),
    ]);
    assert_eq!(code, 0, "recording the sleeper: {stderr}");
    drop(sleeper);
    let events = fs::metadata(out.join("events.bin"))
        .expect("events.bin")
        .len();
    assert!(
        events > 0 && events.is_multiple_of(80),
        "events.bin of {events} bytes"
    );
    assert!(out.join("symbols.json").exists() && out.join("stalls.json").exists());
    out
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("mkdir");
    for entry in fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

#[test]
fn report_on_missing_truncated_or_corrupted_recordings_says_what_is_wrong() {
    let original = real_recording("report-damaged");
    let base = original.parent().expect("parent").to_path_buf();
    // Control: the intact recording re-renders (so the failures below come from the damage).
    let intact = base.join("intact");
    copy_dir(&original, &intact);
    let (code, stderr) = run_agent_in(&["report", intact.to_str().expect("utf8")]);
    assert_eq!(code, 0, "the intact copy re-renders: {stderr}");

    type Damage = fn(&Path);
    let cases: &[(&str, Damage, &str)] = &[
        (
            "events-truncated",
            |dir| {
                let path = dir.join("events.bin");
                let len = fs::metadata(&path).expect("events.bin").len();
                let file = fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .expect("open");
                file.set_len(len - 37).expect("truncate");
            },
            "events.bin is truncated or corrupted",
        ),
        (
            "events-one-byte-more",
            |dir| {
                let path = dir.join("events.bin");
                let mut bytes = fs::read(&path).expect("read");
                bytes.push(0);
                fs::write(&path, bytes).expect("write");
            },
            "is not a whole number of 80-byte events",
        ),
        (
            "symbols-garbage",
            |dir| fs::write(dir.join("symbols.json"), b"\x00\x01garbage{[").expect("write"),
            "symbols.json is truncated or corrupted",
        ),
        (
            "symbols-truncated",
            |dir| {
                let path = dir.join("symbols.json");
                let text = fs::read(&path).expect("read");
                fs::write(&path, &text[..text.len() / 2]).expect("write");
            },
            "symbols.json is truncated or corrupted",
        ),
        (
            "symbols-missing",
            |dir| fs::remove_file(dir.join("symbols.json")).expect("rm"),
            "symbols.json",
        ),
        (
            "stalls-truncated",
            |dir| {
                let path = dir.join("stalls.json");
                let text = fs::read(&path).expect("read");
                fs::write(&path, &text[..text.len() / 2]).expect("write");
            },
            "stalls.json is truncated or corrupted",
        ),
        (
            "stalls-empty",
            |dir| fs::write(dir.join("stalls.json"), b"").expect("write"),
            "stalls.json is truncated or corrupted",
        ),
        (
            "stalls-wrong-shape",
            |dir| fs::write(dir.join("stalls.json"), b"[1, 2, 3]").expect("write"),
            "stalls.json is truncated or corrupted",
        ),
        (
            "stalls-binary",
            |dir| fs::write(dir.join("stalls.json"), [0xff_u8, 0xfe, 0x00, 0x7b]).expect("write"),
            "stalls.json",
        ),
        (
            "stalls-future-version",
            |dir| {
                let path = dir.join("stalls.json");
                let mut json: Value =
                    serde_json::from_str(&fs::read_to_string(&path).expect("read")).expect("json");
                json["version"] = Value::from(99);
                fs::write(&path, json.to_string()).expect("write");
            },
            "schema version 99",
        ),
        (
            "stalls-missing",
            |dir| fs::remove_file(dir.join("stalls.json")).expect("rm"),
            "has no readable stalls.json",
        ),
        (
            "stalls-is-a-directory",
            |dir| {
                fs::remove_file(dir.join("stalls.json")).expect("rm");
                fs::create_dir(dir.join("stalls.json")).expect("mkdir");
            },
            "has no readable stalls.json",
        ),
    ];
    for (name, damage, needle) in cases {
        let dir = base.join(name);
        copy_dir(&original, &dir);
        damage(&dir);
        let (code, stderr) = run_agent_in(&["report", dir.to_str().expect("utf8")]);
        assert_eq!(code, 1, "{name}: {stderr}");
        assert_one_line_error(&stderr, needle);
    }

    // Missing directory, and a file where the directory should be.
    let missing = base.join("no-such-recording");
    let (code, stderr) = run_agent_in(&["report", missing.to_str().expect("utf8")]);
    assert_eq!(code, 1, "{stderr}");
    assert_one_line_error(&stderr, "is not a stallscope recording directory");
    let file = base.join("a-file");
    fs::write(&file, b"not a directory").expect("write");
    let (code, stderr) = run_agent_in(&["report", file.to_str().expect("utf8")]);
    assert_eq!(code, 1, "{stderr}");
    assert_one_line_error(&stderr, "is not a stallscope recording directory");

    // --out that cannot be written: one line, the directory named.
    let (code, stderr) = run_agent_in(&[
        "report",
        original.to_str().expect("utf8"),
        "--out",
        file.join("sub").to_str().expect("utf8"),
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert_one_line_error(&stderr, "is not writable; choose another with --out");

    // --out on a full disk: one line, the cause named.
    let full = base.join("full");
    fs::create_dir_all(&full).expect("mkdir");
    let mount = Mount::tmpfs(&full, "size=16k");
    let (code, stderr) = run_agent_in(&[
        "report",
        original.to_str().expect("utf8"),
        "--out",
        full.join("rerender").to_str().expect("utf8"),
    ]);
    drop(mount);
    assert_eq!(code, 1, "{stderr}");
    assert_one_line_error(&stderr, "No space left on device");
}

/// A tiny deterministic generator (xorshift), so failures can be reproduced.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn report_on_a_scrambled_event_log_never_crashes() {
    // Whole 80-byte records whose bytes are random, bit-flipped, or in the wrong order: the
    // replay may find other stalls, or refuse with one line, but never panics or hangs.
    let original = real_recording("report-scrambled");
    let base = original.parent().expect("parent").to_path_buf();
    let events = fs::read(original.join("events.bin")).expect("events.bin");
    for seed in 1..=12u64 {
        let mut rng = Rng(seed * 0x9e37_79b9_7f4a_7c15);
        let mut bytes = events.clone();
        match seed % 4 {
            0 => bytes.iter_mut().for_each(|b| *b = rng.next() as u8),
            1 => {
                for _ in 0..bytes.len() / 8 {
                    let at = rng.below(bytes.len());
                    bytes[at] ^= 1 << rng.below(8);
                }
            }
            2 => {
                let mut records: Vec<Vec<u8>> = bytes.chunks(80).map(<[u8]>::to_vec).collect();
                for i in (1..records.len()).rev() {
                    records.swap(i, rng.below(i + 1));
                }
                bytes = records.concat();
            }
            _ => {
                // Extreme values in every 8-byte field of some records.
                for record in bytes.chunks_mut(80) {
                    if rng.below(3) == 0 {
                        let field = rng.below(10) * 8;
                        let value = [u64::MAX, 0, 1 << 63, u64::from(u32::MAX)][rng.below(4)];
                        record[field..field + 8].copy_from_slice(&value.to_ne_bytes());
                    }
                }
            }
        }
        let dir = base.join(format!("scrambled-{seed}"));
        copy_dir(&original, &dir);
        fs::write(dir.join("events.bin"), &bytes).expect("write");
        let mut child = Command::new(agent_bin())
            .args(["report", dir.to_str().expect("utf8"), "--threshold", "1ms"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("report");
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("seed {seed}: report hangs on a scrambled events.bin");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut stderr)
            .expect("stderr");
        assert_no_panic(&stderr);
        match status.code() {
            Some(0) => {
                let json: Value = serde_json::from_str(
                    &fs::read_to_string(dir.join("stalls.json")).expect("stalls.json"),
                )
                .expect("a re-render writes valid JSON");
                assert_eq!(json["version"], 1);
            }
            Some(1) => assert_one_line_error(&stderr, "events.bin"),
            other => panic!("seed {seed}: exit {other:?}: {stderr}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 3. A full output disk

#[test]
fn full_output_disk_is_one_line_and_exit_1() {
    require_root();
    let mut server = EpollServer::start(FP_FLAGS);
    let dir = scratch_dir("disk-full");
    let mount = Mount::tmpfs(&dir, "size=64k");
    let out = dir.join("recording");
    let pid = server.target.pid().to_string();
    let agent = Agent::record(&["--pid", &pid, "--duration", "3s"], &out);
    plant_burn(&server);
    let result = agent.wait();
    drop(mount);
    assert_eq!(server.planted().len(), 1, "the burn was planted");
    let stderr = result.stderr.join("\n");
    assert_no_panic(&stderr);
    assert_eq!(result.status.code(), Some(1), "{stderr}");
    // Besides the "recording ..." banner and live warnings, one error line.
    let errors: Vec<&String> = result
        .stderr
        .iter()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("stallscope: recording "))
        .collect();
    assert_eq!(errors.len(), 1, "one error line: {stderr}");
    assert!(errors[0].starts_with("stallscope: error: "), "{stderr}");
    assert!(errors[0].contains("No space left on device"), "{stderr}");
    // The live line still told the user about the stall.
    assert!(
        result.stdout.iter().any(|l| l.starts_with("stall ")),
        "the stall was printed live: {:?}",
        result.stdout
    );
}

// ---------------------------------------------------------------------------------------------
// 4. A target that execs into a setuid binary

#[test]
fn target_that_execs_into_a_setuid_binary_is_followed() {
    require_root();
    let su = Path::new("/usr/bin/su");
    let mode = fs::metadata(su).expect("/usr/bin/su exists").mode();
    assert!(
        mode & 0o4000 != 0,
        "/usr/bin/su is setuid here (mode {mode:o})"
    );
    let out = scratch_dir("setuid-exec");
    // The target execs only once the agent records: loading and attaching takes from 0.6 s on
    // an idle machine to 8 s on a loaded one (the verifier), so a fixed head start either
    // outlives the target or lets the exec and su's fork happen before the attach (then
    // nothing is followed across the exec). It waits on a FIFO (sh's `read`: no polling
    // child that could pass for su's).
    let go = scratch_dir("setuid-exec-go").join("go");
    let go_c = std::ffi::CString::new(go.to_str().expect("utf8")).expect("no NUL");
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(
        unsafe { libc::mkfifo(go_c.as_ptr(), 0o600) },
        0,
        "mkfifo {go:?}"
    );
    let script = format!("read _ < '{}'; exec su root -c 'sleep 2'", go.display());
    let target = Target::spawn(Command::new("sh").args(["-c", &script]));
    let pid = target.pid();
    let agent = Agent::record(&["--pid", &pid.to_string(), "--duration", "4s"], &out);
    {
        use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
        // Non-blocking: fails (ENXIO) rather than hangs if the target is not reading.
        let mut fifo = fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&go)
            .expect("the target waits on its FIFO");
        fifo.write_all(b"go\n").expect("tell the target to exec");
    }
    let result = agent.wait();
    let stderr = result.stderr.join("\n");
    assert_no_panic(&stderr);
    assert!(result.status.success(), "{stderr}");
    let json = result.stalls_json();
    let processes = json["processes"].as_array().expect("processes");
    let me = processes
        .iter()
        .find(|p| p["pid"] == pid)
        .unwrap_or_else(|| panic!("pid {pid} among the processes: {processes:#?}"));
    assert_eq!(me["exe"], "/usr/bin/su", "the exec was followed: {me:#}");
    assert_eq!(me["comm"], "su", "{me:#}");
    // su's own child (the `sleep 2` it runs) was followed too.
    assert!(
        processes
            .iter()
            .any(|p| p["comm"] == "sleep" && p["started_ns"].is_u64()),
        "su's child was followed: {processes:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Binaries as they are found in the wild

#[test]
fn stripped_binary_frames_are_module_plus_offset_at_the_right_offsets() {
    require_root();
    let built = c_target("epoll_server", NO_FP_FLAGS);
    let dir = scratch_dir("stripped");
    let stripped = dir.join("epoll_server_stripped");
    copy_binary(&built, &stripped);
    run_tool("strip", &[stripped.to_str().expect("utf8")]);
    let sections = section_names(&stripped);
    assert!(
        !sections
            .iter()
            .any(|s| s == ".symtab" || s.starts_with(".debug")),
        "strip removed the symbols: {sections:?}"
    );
    assert!(sections.iter().any(|s| s == ".eh_frame"), "{sections:?}");
    let ranges = function_file_ranges(&built, &["burn_cpu", "handle_request", "main"]);

    let mut server = start_server(&[], &stripped);
    let (result, planted) = record_one_burn(&mut server, "stripped-rec");
    let json = result.stalls_json();
    let (_, top) = burn_stall(&json, &planted);
    let frames = top["frames"].as_array().expect("frames");
    let module = stripped.to_str().expect("utf8");
    // Frames in the stripped binary: "epoll_server_stripped+0x<offset>", mapped back to the
    // functions of the unstripped build by offset.
    let ours: Vec<(String, u64)> = frames
        .iter()
        .filter(|f| f["module"] == module)
        .map(|f| {
            let name = f["function"].as_str().expect("function");
            let offset = name
                .strip_prefix("epoll_server_stripped+0x")
                .and_then(|hex| u64::from_str_radix(hex, 16).ok())
                .unwrap_or_else(|| panic!("a stripped frame is named module+offset: {f:#}"));
            assert_eq!(f["kind"], "native", "{f:#}");
            let function = ranges
                .iter()
                .find(|(_, start, end)| (*start..*end).contains(&offset))
                .map_or_else(|| format!("?{offset:#x}"), |(n, ..)| n.clone());
            (function, offset)
        })
        .collect();
    let functions: Vec<&str> = ours.iter().map(|(f, _)| f.as_str()).collect();
    assert!(
        !user_function_names(&top).iter().any(|n| n == "burn_cpu"),
        "no name can come from a stripped binary: {top:#}"
    );
    // The same unwinding as with symbols: burn_cpu < handle_request < main, at their offsets.
    let expected = ["burn_cpu", "handle_request", "main"];
    let found: Vec<&str> = functions
        .iter()
        .copied()
        .filter(|f| expected.contains(f))
        .collect();
    assert_eq!(
        found, expected,
        "offsets of the stripped frames fall in burn_cpu, handle_request, main: {ours:x?}\n{top:#}"
    );
    // Frames outside the binary (libc) are still named.
    assert!(
        frames
            .iter()
            .any(|f| f["module"].as_str().is_some_and(|m| m.contains("libc"))
                && !f["function"].as_str().unwrap_or("").contains("+0x")),
        "libc frames keep their names: {top:#}"
    );
}

#[test]
fn binary_without_eh_frame_unwinds_with_frame_pointers() {
    require_root();
    let built = c_target("epoll_server", NO_UNWIND_TABLES_FLAGS);
    let dir = scratch_dir("no-eh-frame");
    let binary = dir.join("epoll_server_no_eh_frame");
    copy_binary(&built, &binary);
    run_tool(
        "objcopy",
        &[
            "--remove-section=.eh_frame",
            "--remove-section=.eh_frame_hdr",
            binary.to_str().expect("utf8"),
        ],
    );
    let sections = section_names(&binary);
    assert!(
        !sections
            .iter()
            .any(|s| s.starts_with(".eh_frame") || s == ".debug_frame"),
        "no unwind tables left: {sections:?}"
    );
    let mut server = start_server(&[], &binary);
    let (result, planted) = record_one_burn(&mut server, "no-eh-frame-rec");
    let json = result.stalls_json();
    let (_, top) = burn_stall(&json, &planted);
    assert_burn_named(&top, "no .eh_frame");
}

#[test]
fn deleted_binary_is_still_symbolized() {
    require_root();
    let built = c_target("epoll_server", NO_FP_FLAGS);
    let dir = scratch_dir("deleted-binary");
    let binary = dir.join("epoll_server_deleted");
    copy_binary(&built, &binary);
    let mut server = start_server(&[], &binary);
    fs::remove_file(&binary).expect("delete the binary we made");
    let exe = fs::read_link(format!("/proc/{}/exe", server.target.pid())).expect("exe link");
    assert!(
        exe.to_string_lossy().ends_with(" (deleted)"),
        "{}",
        exe.display()
    );
    let (result, planted) = record_one_burn(&mut server, "deleted-binary-rec");
    let json = result.stalls_json();
    let (_, top) = burn_stall(&json, &planted);
    assert_burn_named(&top, "deleted binary");
    let burn = top["frames"]
        .as_array()
        .expect("frames")
        .iter()
        .find(|f| f["function"] == "burn_cpu")
        .expect("burn_cpu frame");
    assert_eq!(burn["module"], binary.to_str().expect("utf8"), "{burn:#}");
}

/// Starts the server from a scratch copy, replaces the file the way a deploy does (write a new
/// file, rename it over) before or after the agent attached, plants a burn.
fn replaced_binary(name: &str, replace_before_attach: bool) {
    require_root();
    let built = c_target("epoll_server", NO_FP_FLAGS);
    let other = c_target("timer_loop", &["-O2", "-g", "-fomit-frame-pointer"]);
    let dir = scratch_dir(name);
    let binary = dir.join("epoll_server_replaced");
    copy_binary(&built, &binary);
    let mut server = start_server(&[], &binary);
    let replace = || {
        let before = fs::metadata(&binary).expect("binary").ino();
        let staging = dir.join(".epoll_server_replaced.new");
        copy_binary(&other, &staging);
        fs::rename(&staging, &binary).expect("rename over the binary");
        assert_ne!(fs::metadata(&binary).expect("binary").ino(), before);
    };
    if replace_before_attach {
        replace();
    }
    let pid = server.target.pid().to_string();
    let out = scratch_dir(&format!("{name}-rec"));
    let agent = Agent::record(&["--pid", &pid, "--threshold", "100ms"], &out);
    if !replace_before_attach {
        replace();
    }
    plant_burn(&server);
    let result = agent.stop();
    assert!(result.status.success(), "{:#?}", result.stderr);
    assert_no_panic(&result.stderr.join("\n"));
    let planted = server.planted();
    assert_eq!(planted.len(), 1, "{planted:?}");
    let json = result.stalls_json();
    let (_, top) = burn_stall(&json, &planted[0]);
    assert_burn_named(&top, name);
    let names = user_function_names(&top);
    assert!(
        !names.iter().any(|n| n == "spin_on_tick"),
        "{name}: no symbol of the new file: {names:?}"
    );
}

#[test]
fn binary_replaced_before_attach_is_symbolized_from_the_running_image() {
    replaced_binary("replaced-before-attach", true);
}

#[test]
fn binary_replaced_while_recording_is_symbolized_from_the_running_image() {
    replaced_binary("replaced-while-recording", false);
}

// ---------------------------------------------------------------------------------------------
// 6. Permissions

const LEAST_PRIVILEGE: &str = "-all,+bpf,+perfmon,+sys_ptrace,+dac_read_search";

#[test]
fn records_with_bpf_perfmon_and_ptrace_capabilities_only() {
    require_root();
    // The target runs as another user, so that nothing works by owning it.
    let built = c_target("epoll_server", FP_FLAGS);
    let mut server = start_server(
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
        ],
        &built,
    );
    let pid = server.target.pid().to_string();
    let out = scratch_dir("least-privilege");
    let agent = WrappedAgent::start(
        &[
            "setpriv",
            &format!("--bounding-set={LEAST_PRIVILEGE}"),
            "--",
        ],
        &[
            "record",
            "--pid",
            &pid,
            "--duration",
            "3s",
            "--out",
            out.to_str().expect("utf8"),
        ],
    );
    let mut agent = agent;
    if agent
        .stderr
        .wait_for("stallscope: recording", Duration::from_secs(30))
        .is_none()
    {
        let (status, _, stderr) = agent.wait();
        panic!("with {LEAST_PRIVILEGE} the agent did not start ({status}): {stderr:#?}");
    }
    plant_burn(&server);
    let (status, _stdout, stderr) = agent.wait();
    assert_no_panic(&stderr.join("\n"));
    assert!(
        status.success(),
        "with {LEAST_PRIVILEGE}: {status}: {stderr:#?}"
    );
    let planted = server.planted();
    assert_eq!(planted.len(), 1, "{planted:?}");
    let json: Value =
        serde_json::from_str(&fs::read_to_string(out.join("stalls.json")).expect("stalls.json"))
            .expect("json");
    let (_, top) = burn_stall(&json, &planted[0]);
    assert_burn_named(&top, "least privilege");
}

#[test]
fn a_missing_capability_is_named_exactly() {
    require_root();
    let target = Target::spawn(Command::new("sleep").arg("30"));
    let pid = target.pid().to_string();
    for (bounding, missing, present) in [
        ("-all,+bpf", "CAP_PERFMON", "CAP_BPF"),
        ("-all,+perfmon", "CAP_BPF", "CAP_PERFMON"),
        (
            "-all,+bpf,+sys_ptrace,+dac_read_search",
            "CAP_PERFMON",
            "CAP_BPF",
        ),
    ] {
        let out = scratch_dir("caps-missing").join(bounding.replace([',', '+', '-'], "_"));
        let output = Command::new("setpriv")
            .arg(format!("--bounding-set={bounding}"))
            .arg("--")
            .arg(agent_bin())
            .args(["record", "--pid", &pid, "--duration", "1s", "--out"])
            .arg(&out)
            .stdin(Stdio::null())
            .needed_output();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{bounding}: {stderr}");
        assert_one_line_error(&stderr, &format!("(missing: {missing})"));
        let missing_list = stderr
            .split("(missing: ")
            .nth(1)
            .and_then(|rest| rest.split(')').next())
            .unwrap_or("");
        assert!(
            !missing_list.contains(present),
            "{bounding}: {present} is not missing: {stderr}"
        );
        assert!(
            !out.join("stalls.json").exists(),
            "nothing recorded without privileges"
        );
    }
}

/// Records `server` with the least-privilege bounding set while `plant` runs; returns the
/// recording, the agent's stderr and summary.md, and what the server planted.
fn record_least_privilege(
    server: &mut EpollServer,
    name: &str,
    plant: &str,
) -> (Value, String, Vec<Planted>) {
    let pid = server.target.pid().to_string();
    let out = scratch_dir(name);
    let mut agent = WrappedAgent::start(
        &[
            "setpriv",
            &format!("--bounding-set={LEAST_PRIVILEGE}"),
            "--",
        ],
        &[
            "record",
            "--pid",
            &pid,
            "--duration",
            "2s",
            "--out",
            out.to_str().expect("utf8"),
        ],
    );
    if agent
        .stderr
        .wait_for("stallscope: recording", Duration::from_secs(30))
        .is_none()
    {
        let (status, _, stderr) = agent.wait();
        panic!("with {LEAST_PRIVILEGE} the agent did not start ({status}): {stderr:#?}");
    }
    server.request("quick");
    std::thread::sleep(Duration::from_millis(100));
    server.request(plant);
    let (status, _, stderr) = agent.wait();
    let stderr = stderr.join("\n");
    assert_no_panic(&stderr);
    assert!(status.success(), "{status}: {stderr}");
    let json: Value =
        serde_json::from_str(&fs::read_to_string(out.join("stalls.json")).expect("stalls.json"))
            .expect("json");
    let summary = fs::read_to_string(out.join("summary.md")).unwrap_or_default();
    (json, format!("{stderr}\n{summary}"), server.planted())
}

#[test]
fn least_privilege_names_kernel_frames_or_says_cap_syslog_is_missing() {
    require_root();
    // Blocked in nanosleep: the off-CPU stack has kernel frames, which are named from
    // /proc/kallsyms; without CAP_SYSLOG the kernel shows every address there as 0.
    let mut server = EpollServer::start(FP_FLAGS);
    let (json, messages, planted) =
        record_least_privilege(&mut server, "least-privilege-kernel", "sleep 200");
    assert_eq!(planted.len(), 1, "{planted:?}");
    let stall = json["stalls"]
        .as_array()
        .and_then(|s| s.first())
        .unwrap_or_else(|| panic!("the sleep is a stall: {json:#}"));
    let top = dominant_code_stack(stall);
    assert_eq!(top["kind"], "off_cpu", "{stall:#}");
    let kernel: Vec<&str> = top["frames"]
        .as_array()
        .expect("frames")
        .iter()
        .filter(|f| f["kind"] == "kernel")
        .filter_map(|f| f["function"].as_str())
        .collect();
    assert!(
        !kernel.is_empty(),
        "kernel frames in the off-CPU stack: {top:#}"
    );
    let unnamed = kernel
        .iter()
        .filter(|f| f.starts_with("[kernel]+0x"))
        .count();
    assert!(
        unnamed == 0 || messages.contains("CAP_SYSLOG"),
        "with {LEAST_PRIVILEGE}, {unnamed} of {} kernel frames are unnamed ({kernel:?}) and \
         nothing says CAP_SYSLOG is missing: {messages}",
        kernel.len()
    );
}

#[test]
fn least_privilege_names_deleted_binaries_or_says_which_capability_is_missing() {
    require_root();
    // /proc/PID/map_files, through which a deleted binary is read, needs CAP_SYS_ADMIN or
    // CAP_CHECKPOINT_RESTORE; /proc/PID/exe would do with CAP_SYS_PTRACE alone.
    let built = c_target("epoll_server", NO_FP_FLAGS);
    let dir = scratch_dir("least-privilege-deleted");
    let binary = dir.join("epoll_server_deleted");
    copy_binary(&built, &binary);
    let mut server = start_server(&[], &binary);
    fs::remove_file(&binary).expect("delete the binary we made");
    let (json, messages, planted) =
        record_least_privilege(&mut server, "least-privilege-deleted-rec", "burn 200");
    assert_eq!(planted.len(), 1, "{planted:?}");
    let (_, top) = burn_stall(&json, &planted[0]);
    let names = user_function_names(&top);
    let named = names.iter().any(|n| n == "burn_cpu")
        && names.iter().any(|n| n == "handle_request")
        && names.iter().any(|n| n == "main");
    assert!(
        named || messages.contains("CAP_CHECKPOINT_RESTORE") || messages.contains("CAP_SYS_ADMIN"),
        "with {LEAST_PRIVILEGE}, the deleted binary's stack is {names:?} and nothing names the \
         missing capability: {messages}"
    );
}

#[test]
fn non_root_user_with_capabilities_records_or_is_told_which_one_is_missing() {
    require_root();
    // A service account (uid 65534) given the capabilities as ambient ones, no root at all.
    let target = Target::spawn(Command::new("sleep").arg("30"));
    let pid = target.pid().to_string();
    let base = scratch_dir("non-root-caps");
    for (caps, must_work) in [
        ("+bpf,+perfmon", false),
        ("+bpf,+perfmon,+dac_read_search", true),
    ] {
        let out = base.join(caps.replace([',', '+'], "_"));
        fs::create_dir_all(&out).expect("mkdir");
        let c_out = std::ffi::CString::new(out.to_str().expect("utf8")).expect("cstring");
        // SAFETY: chown on a path we just created.
        assert_eq!(unsafe { libc::chown(c_out.as_ptr(), 65534, 65534) }, 0);
        let output = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                &format!("--inh-caps={caps}"),
                &format!("--ambient-caps={caps}"),
                "--",
            ])
            .arg(agent_bin())
            .args([
                "record",
                "--pid",
                &pid,
                "--duration",
                "1s",
                "--quiet",
                "--out",
            ])
            .arg(&out)
            .stdin(Stdio::null())
            .needed_output();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_no_panic(&stderr);
        match output.status.code() {
            Some(0) => assert!(out.join("stalls.json").exists(), "{caps}: {stderr}"),
            Some(1) if !must_work => {
                let line = non_empty_lines(&stderr).join(" ");
                assert_one_line_error(&stderr, "");
                // tracefs is mounted; it is only unreadable to this user.
                assert!(
                    !line.contains("tracefs is not mounted"),
                    "{caps}: tracefs is mounted (root-only); the error must say what is \
                     missing (CAP_DAC_READ_SEARCH), not that it is unmounted: {line}"
                );
                assert!(line.contains("CAP_DAC_READ_SEARCH"), "{caps}: {line}");
            }
            other => panic!("{caps}: exit {other:?}: {stderr}"),
        }
    }
}
