//! Hardening: how the agent ends, and how it behaves when the kernel drops events.
//!
//! - SIGINT, SIGTERM and SIGHUP stop recording, write every output and exit 0.
//! - A second SIGINT/SIGTERM while the outputs are being prepared aborts at once (exit 130)
//!   with a one-line report and no outputs.
//! - SIGKILL leaves nothing behind: the kernel releases every program, map and link the agent
//!   held, tracefs and the mount table are as they were, no file appeared outside the output
//!   directory, and the target runs on as the same, untouched process.
//! - Overload: a 4 KiB ring buffer under a context-switch storm. The agent keeps running with
//!   bounded memory, counts the losses, reports them in stalls.json, the summary and live on
//!   stderr, and flags the stalls whose data is incomplete instead of reporting wrong durations.
//!
//! Every test runs the real agent against real processes (root needed).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use stallscope_tests::{
    EpollServer, Lines, Needed, Planted, Target, agent_bin, c_target, planted_lines, require_root,
    scratch_dir, stall_containing, tolerance_ns,
};

const FP_FLAGS: &[&str] = &["-O2", "-g", "-fno-omit-frame-pointer"];

/// Every file `record` writes with the default `--format all`.
const OUTPUTS: &[&str] = &[
    "stalls.json",
    "stalls.folded",
    "flamegraph.svg",
    "offcpu.folded",
    "offcpu.svg",
    "trace.json",
    "profile.pb.gz",
    "summary.md",
    "junit.xml",
    "events.bin",
    "symbols.json",
];

/// The renderings an aborted run must not have written (events.bin is streamed while
/// recording, so it may exist).
const RENDERED: &[&str] = &[
    "stalls.json",
    "stalls.folded",
    "flamegraph.svg",
    "offcpu.folded",
    "offcpu.svg",
    "trace.json",
    "profile.pb.gz",
    "summary.md",
    "junit.xml",
    "symbols.json",
];

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        libc::SIGKILL => "SIGKILL",
        _ => "signal",
    }
}

fn send(pid: u32, signal: i32) {
    // SAFETY: kill(2) on a process this test started.
    let rc = unsafe { libc::kill(pid as i32, signal) };
    assert_eq!(rc, 0, "kill({pid}, {})", signal_name(signal));
}

/// A `stallscope record` this test started, with its output streams and optional extra
/// environment (the helpers' `Agent` has no way to pass one). Killed if a test panics.
struct Recorder {
    child: Child,
    stdout: Lines,
    stderr: Lines,
    out_dir: PathBuf,
}

struct Finished {
    status: ExitStatus,
    /// From the signal that ended it to its exit.
    exit_after: Duration,
    stdout: Vec<String>,
    stderr: Vec<String>,
    out_dir: PathBuf,
}

impl Finished {
    fn context(&self) -> String {
        format!(
            "status {:?}\nstderr:\n{}\nstdout:\n{}",
            self.status,
            self.stderr.join("\n"),
            self.stdout.join("\n")
        )
    }

    fn stalls_json(&self) -> Value {
        let path = self.out_dir.join("stalls.json");
        let text = fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}\n{}", path.display(), self.context()));
        serde_json::from_str(&text).expect("stalls.json is JSON")
    }
}

impl Recorder {
    fn start(args: &[&str], out_dir: &Path, env: &[(&str, &str)]) -> Self {
        require_root();
        let mut cmd = Command::new(agent_bin());
        cmd.arg("record")
            .args(args)
            .arg("--out")
            .arg(out_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in env {
            cmd.env(key, value);
        }
        let mut child = cmd.spawn().expect("start stallscope");
        let stdout = Lines::spawn(child.stdout.take().expect("stdout"));
        let mut stderr = Lines::spawn(child.stderr.take().expect("stderr"));
        if stderr
            .wait_for("stallscope: recording", Duration::from_secs(30))
            .is_none()
        {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "stallscope did not start recording: {:#?}",
                stderr.collect(Duration::from_millis(300))
            );
        }
        Recorder {
            child,
            stdout,
            stderr,
            out_dir: out_dir.to_path_buf(),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    fn signal(&self, signal: i32) {
        send(self.pid(), signal);
    }

    /// Waits up to `timeout` for it to exit; `since` is when the signal that should end it
    /// was sent.
    fn wait(&mut self, since: Instant, timeout: Duration) -> Finished {
        let deadline = since + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "stallscope did not exit within {timeout:?}\nstderr:\n{}",
                    self.stderr.collect(Duration::from_millis(200)).join("\n")
                );
            }
            thread::sleep(Duration::from_millis(5));
        };
        let exit_after = since.elapsed();
        Finished {
            status,
            exit_after,
            stdout: self.stdout.collect(Duration::from_millis(200)),
            stderr: self.stderr.collect(Duration::from_millis(200)),
            out_dir: self.out_dir.clone(),
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Signals
// ---------------------------------------------------------------------------------------------

#[test]
fn sigint_sigterm_sighup_write_outputs_and_exit_0() {
    require_root();
    let mut server = EpollServer::start(FP_FLAGS);
    let pid = server.target.pid().to_string();
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        let name = signal_name(signal);
        let out = scratch_dir(&format!("sig-{}", name.to_lowercase()));
        let mut agent = Recorder::start(&["--pid", &pid, "--threshold", "100ms"], &out, &[]);
        server.request("quick");
        server.request("burn 200");
        server.request("quick");
        thread::sleep(Duration::from_millis(200));
        let sent = Instant::now();
        agent.signal(signal);
        let done = agent.wait(sent, Duration::from_secs(60));
        eprintln!(
            "{name}: exited {:?} after {:?}",
            done.status, done.exit_after
        );
        assert_eq!(
            done.status.code(),
            Some(0),
            "{name} must stop the recording and exit 0\n{}",
            done.context()
        );
        for file in OUTPUTS {
            let path = out.join(file);
            let meta = fs::metadata(&path).unwrap_or_else(|e| {
                panic!(
                    "{name}: {} missing ({e})\n{}",
                    path.display(),
                    done.context()
                )
            });
            assert!(meta.is_file(), "{name}: {} is not a file", path.display());
        }
        for file in [
            "stalls.json",
            "flamegraph.svg",
            "trace.json",
            "profile.pb.gz",
            "summary.md",
            "junit.xml",
            "events.bin",
            "symbols.json",
        ] {
            let len = fs::metadata(out.join(file)).map(|m| m.len()).unwrap_or(0);
            assert!(len > 0, "{name}: {file} is empty");
        }
        let json = done.stalls_json();
        assert_eq!(json["version"], 1);
        let stalls = json["stalls"].as_array().expect("stalls array");
        let planted: Vec<Planted> = server
            .planted()
            .into_iter()
            .filter(|p| p.kind == "burn")
            .collect();
        let truth = planted.last().expect("the server planted a burn");
        assert_eq!(
            stalls.len(),
            1,
            "{name}: exactly the planted stall: {stalls:#?}"
        );
        let stall = stall_containing(stalls, truth)
            .unwrap_or_else(|| panic!("{name}: no stall covers {truth:?}: {stalls:#?}"));
        let duration = stall["duration_ns"].as_u64().expect("duration_ns");
        assert!(
            duration.abs_diff(truth.duration_ns()) <= tolerance_ns(truth.duration_ns()),
            "{name}: stall of {duration} ns, the server measured {} ns",
            truth.duration_ns()
        );
        // The human summary is printed on the way out.
        let stdout = done.stdout.join("\n");
        assert!(
            stdout.contains("stallscope: recorded") && stdout.contains("1 stall(s)"),
            "{name}: summary on stdout\n{}",
            done.context()
        );
        assert!(
            !done
                .stderr
                .iter()
                .any(|l| l.contains("interrupted again") || l.contains("panicked")),
            "{name}\n{}",
            done.context()
        );
    }
}

#[test]
fn second_sigint_aborts_at_once() {
    require_root();
    let server = EpollServer::start(FP_FLAGS);
    let pid = server.target.pid().to_string();
    // (first signal, second signal): a second Ctrl-C is the case; a second SIGTERM
    // (a supervisor's stop timeout) and Ctrl-C after a SIGHUP end it the same way.
    for (first, second) in [
        (libc::SIGINT, libc::SIGINT),
        (libc::SIGTERM, libc::SIGTERM),
        (libc::SIGHUP, libc::SIGINT),
    ] {
        let label = format!("{} then {}", signal_name(first), signal_name(second));
        let out = scratch_dir(&format!(
            "sig-twice-{}-{}",
            signal_name(first).to_lowercase(),
            signal_name(second).to_lowercase()
        ));
        let mut agent = Recorder::start(
            &["--pid", &pid, "--threshold", "100ms"],
            &out,
            &[("STALLSCOPE_TEST_FINISH_DELAY_MS", "3000")],
        );
        server.request("burn 200");
        server.request("quick");
        thread::sleep(Duration::from_millis(200));
        agent.signal(first);
        thread::sleep(Duration::from_millis(300));
        assert!(
            agent.alive(),
            "{label}: the agent must still be finishing 300 ms after the first signal (finish delay 3 s)"
        );
        let sent = Instant::now();
        agent.signal(second);
        // The short report comes first, then the process ends (closing its BPF objects is the
        // kernel's part of the exit).
        let reported = agent
            .stderr
            .wait_for("interrupted again", Duration::from_secs(1))
            .map(|_| sent.elapsed());
        let done = agent.wait(sent, Duration::from_secs(10));
        eprintln!(
            "{label}: abort line after {reported:?}, exited {:?} {:?} after the second signal",
            done.status, done.exit_after
        );
        assert!(
            reported.is_some(),
            "{label}: no abort line within 1 s of the second signal\n{}",
            done.context()
        );
        // The abort line comes within milliseconds; exiting also waits for the kernel to
        // detach the programs (~0.3-0.8 s measured), hence 2 s rather than a tight bound.
        assert!(
            done.exit_after < Duration::from_secs(2),
            "{label}: must abort at once, took {:?}\n{}",
            done.exit_after,
            done.context()
        );
        assert_eq!(done.status.code(), Some(130), "{label}\n{}", done.context());
        let abort_lines: Vec<&String> = done
            .stderr
            .iter()
            .filter(|l| l.starts_with("stallscope: interrupted again: aborting with"))
            .collect();
        assert_eq!(
            abort_lines.len(),
            1,
            "{label}: one abort line\n{}",
            done.context()
        );
        assert!(
            abort_lines[0].contains("with 1 stall(s) seen")
                && abort_lines[0].ends_with("outputs were not written"),
            "{label}: the short report counts the one planted stall: {}",
            abort_lines[0]
        );
        for file in RENDERED {
            assert!(
                !out.join(file).exists(),
                "{label}: {file} written although the run was aborted\n{}",
                done.context()
            );
        }
        assert!(
            !done
                .stdout
                .iter()
                .any(|l| l.contains("stallscope: recorded")),
            "{label}: no summary after an abort\n{}",
            done.context()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// SIGKILL: what the kernel and the file system look like afterwards
// ---------------------------------------------------------------------------------------------

/// BPF objects (and file paths) a process holds, from /proc/PID/fd and fdinfo.
#[derive(Debug, Default)]
struct Held {
    progs: BTreeSet<u64>,
    maps: BTreeSet<u64>,
    links: BTreeSet<u64>,
    perf_events: usize,
    /// Paths of regular files (or anything with a path) open for writing.
    writable_paths: Vec<String>,
}

fn held_by(pid: u32) -> Held {
    let mut held = Held::default();
    let dir = format!("/proc/{pid}/fd");
    for entry in fs::read_dir(&dir).expect("read /proc/PID/fd").flatten() {
        let fd = entry.file_name().to_string_lossy().into_owned();
        let Ok(target) = fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        let Ok(info) = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")) else {
            continue;
        };
        let field = |name: &str| {
            info.lines().find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix(':'))
                    .map(|v| v.trim().to_string())
            })
        };
        let link_id = field("link_id").and_then(|v| v.parse().ok());
        if let Some(id) = link_id {
            held.links.insert(id);
        }
        if let Some(id) = field("prog_id").and_then(|v| v.parse().ok()) {
            held.progs.insert(id);
        }
        if link_id.is_none()
            && let Some(id) = field("map_id").and_then(|v| v.parse().ok())
        {
            held.maps.insert(id);
        }
        if target.contains("perf_event") {
            held.perf_events += 1;
        }
        let flags = field("flags")
            .and_then(|v| u32::from_str_radix(&v, 8).ok())
            .unwrap_or(0);
        let writable = flags & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32;
        if writable && target.starts_with('/') {
            held.writable_paths.push(target);
        }
    }
    held
}

/// `bpftool {prog,map,link} show -j` as id → name.
fn bpf_objects(kind: &str) -> BTreeMap<u64, String> {
    let out = Command::new("bpftool")
        .args([kind, "show", "-j"])
        .needed_output();
    assert!(
        out.status.success(),
        "bpftool {kind} show: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_slice(&out.stdout).expect("bpftool -j prints JSON");
    json.as_array()
        .map(|objects| {
            objects
                .iter()
                .filter_map(|o| {
                    Some((
                        o["id"].as_u64()?,
                        o["name"].as_str().unwrap_or("").to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Everything below `root` (relative paths), without following symlinks.
fn listing(root: &Path, recursive: bool) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if let Ok(rel) = path.strip_prefix(root) {
                found.insert(rel.to_string_lossy().into_owned());
            }
            if recursive && entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path);
            }
        }
    }
    found
}

/// What the machine looks like where an agent could leave traces.
#[derive(Debug, PartialEq)]
struct MachineState {
    /// Mount-table lines of tracefs, debugfs and bpffs.
    mounts: Vec<String>,
    /// tracefs files a tracer changes (dynamic probes, enabled events, the tracer).
    tracefs: BTreeMap<String, String>,
}

fn tracefs_root() -> Option<PathBuf> {
    fs::read_to_string("/proc/self/mountinfo")
        .ok()?
        .lines()
        .find(|l| l.contains(" - tracefs "))
        .and_then(|l| l.split_whitespace().nth(4).map(PathBuf::from))
}

fn machine_state() -> MachineState {
    let mounts = fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter(|l| l.contains(" - tracefs ") || l.contains(" - debugfs ") || l.contains(" - bpf "))
        .map(str::to_string)
        .collect();
    let mut tracefs = BTreeMap::new();
    if let Some(root) = tracefs_root() {
        for file in [
            "kprobe_events",
            "uprobe_events",
            "dynamic_events",
            "set_event",
            "current_tracer",
            "tracing_on",
            "events/sched/sched_switch/enable",
            "events/raw_syscalls/sys_enter/enable",
            "events/raw_syscalls/sys_exit/enable",
        ] {
            let value = fs::read_to_string(root.join(file)).unwrap_or_else(|e| format!("<{e}>"));
            tracefs.insert(file.to_string(), value);
        }
    }
    MachineState { mounts, tracefs }
}

/// What must not change about the target.
#[derive(Debug, PartialEq)]
struct TargetState {
    start_time: String,
    tracer_pid: String,
    signals: Vec<String>,
    threads: String,
    maps: String,
}

fn target_state(pid: u32) -> TargetState {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).expect("target alive");
    // Fields after the parenthesised comm; starttime is field 22 (index 19 after it).
    let after_comm = stat.rsplit_once(')').expect("stat format").1;
    let start_time = after_comm
        .split_whitespace()
        .nth(19)
        .expect("starttime")
        .to_string();
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("target status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let state = field("State");
    assert!(
        !state.starts_with('T') && !state.starts_with('t') && !state.starts_with('Z'),
        "target {pid} is {state}"
    );
    TargetState {
        start_time,
        tracer_pid: field("TracerPid"),
        signals: ["SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt"]
            .iter()
            .map(|f| format!("{f}={}", field(f)))
            .collect(),
        threads: field("Threads"),
        maps: fs::read_to_string(format!("/proc/{pid}/maps")).expect("target maps"),
    }
}

#[test]
fn sigkill_leaves_nothing_behind() {
    require_root();
    let mut server = EpollServer::start(FP_FLAGS);
    let target_pid = server.target.pid();
    server.request("quick");
    let target_before = target_state(target_pid);
    let machine_before = machine_state();
    let scratch_roots = [
        (PathBuf::from("/tmp"), false),
        (PathBuf::from("/dev/shm"), false),
        (PathBuf::from("/sys/fs/bpf"), true),
    ];
    let files_before: Vec<BTreeSet<String>> = scratch_roots
        .iter()
        .map(|(root, recursive)| listing(root, *recursive))
        .collect();

    let out = scratch_dir("sigkill");
    let pid = target_pid.to_string();
    let mut agent = Recorder::start(&["--pid", &pid, "--threshold", "100ms"], &out, &[]);
    let agent_pid = agent.pid();
    server.request("burn 150");
    server.request("quick");
    thread::sleep(Duration::from_millis(300));
    assert!(agent.alive(), "the agent is recording");

    // What it holds right now: its BPF programs must be the kernel's view of it.
    let held = held_by(agent_pid);
    let progs_now = bpf_objects("prog");
    let names: BTreeSet<&str> = held
        .progs
        .iter()
        .filter_map(|id| progs_now.get(id).map(String::as_str))
        .collect();
    eprintln!(
        "agent {agent_pid} holds {} progs {names:?}, {} maps, {} links, {} perf events",
        held.progs.len(),
        held.maps.len(),
        held.links.len(),
        held.perf_events
    );
    for expected in ["sched_switch", "sched_wakeup", "sys_enter", "sys_exit"] {
        assert!(
            names.contains(expected),
            "the agent's fds hold program {expected}: {names:?} (held: {held:?})"
        );
    }
    assert!(!held.maps.is_empty(), "the agent holds its maps: {held:?}");
    let map_names: BTreeSet<String> = {
        let maps_now = bpf_objects("map");
        held.maps
            .iter()
            .filter_map(|id| maps_now.get(id).cloned())
            .filter(|n| !n.is_empty())
            .collect()
    };
    // Files it has open for writing are in its output directory (or are its pipes/terminal).
    let out_canonical = fs::canonicalize(&out).expect("out dir");
    let stray: Vec<&String> = held
        .writable_paths
        .iter()
        .filter(|p| {
            !Path::new(p.as_str()).starts_with(&out_canonical)
                && !Path::new(p.as_str()).starts_with(&out)
                && p.as_str() != "/dev/null"
                && !p.starts_with("/dev/pts/")
        })
        .collect();
    assert!(
        stray.is_empty(),
        "the agent has files open for writing outside {}: {stray:?}",
        out.display()
    );

    let killed = Instant::now();
    agent.signal(libc::SIGKILL);
    let done = agent.wait(killed, Duration::from_secs(10));
    assert_eq!(
        done.status.signal(),
        Some(libc::SIGKILL),
        "{}",
        done.context()
    );

    // The kernel releases everything it held: programs, maps and links die with its fds.
    let deadline = Instant::now() + Duration::from_secs(3);
    let (left_progs, left_maps, left_links) = loop {
        let progs = bpf_objects("prog");
        let maps = bpf_objects("map");
        let links = bpf_objects("link");
        let left_progs: Vec<(u64, String)> = held
            .progs
            .iter()
            .filter_map(|id| progs.get(id).map(|n| (*id, n.clone())))
            .collect();
        let left_maps: Vec<(u64, String)> = held
            .maps
            .iter()
            .filter_map(|id| maps.get(id).map(|n| (*id, n.clone())))
            .collect();
        let left_links: Vec<u64> = held
            .links
            .iter()
            .filter(|id| links.contains_key(id))
            .copied()
            .collect();
        if (left_progs.is_empty() && left_maps.is_empty() && left_links.is_empty())
            || Instant::now() > deadline
        {
            break (left_progs, left_maps, left_links);
        }
        thread::sleep(Duration::from_millis(100));
    };
    eprintln!("released {:?} after SIGKILL", killed.elapsed());
    assert!(
        left_progs.is_empty() && left_maps.is_empty() && left_links.is_empty(),
        "still loaded 3 s after SIGKILL: programs {left_progs:?}, maps {left_maps:?}, links {left_links:?}"
    );

    // In its output directory, at most the files a recording consists of (no temp files).
    let in_out: Vec<String> = listing(&out, true).into_iter().collect();
    assert!(
        in_out.iter().all(|name| OUTPUTS.contains(&name.as_str())),
        "unexpected files in {} after SIGKILL: {in_out:?}",
        out.display()
    );

    // Mounts and tracefs as they were.
    let machine_after = machine_state();
    assert_eq!(
        machine_before, machine_after,
        "SIGKILL of the agent changed tracefs or the mount table"
    );

    // No new file that is the agent's, outside its output directory (other processes on the
    // machine may create files meanwhile: only names that point at the agent count).
    let agent_pid_text = agent_pid.to_string();
    let mut suspicious_names: Vec<String> = vec!["stallscope".to_string(), agent_pid_text.clone()];
    suspicious_names.extend(names.iter().map(|s| s.to_string()));
    suspicious_names.extend(map_names.iter().cloned());
    for ((root, recursive), before) in scratch_roots.iter().zip(&files_before) {
        let after = listing(root, *recursive);
        let new: Vec<&String> = after.difference(before).collect();
        let theirs: Vec<&&String> = new
            .iter()
            .filter(|name| {
                let lower = name.to_lowercase();
                suspicious_names
                    .iter()
                    .any(|s| lower.contains(&s.to_lowercase()))
            })
            .collect();
        assert!(
            theirs.is_empty(),
            "left behind in {}: {theirs:?} (all new entries: {new:?})",
            root.display()
        );
        if root.starts_with("/sys/fs/bpf") {
            assert!(
                new.is_empty(),
                "new bpffs pins appeared while the agent ran: {new:?}"
            );
        }
    }

    // The target runs on: same process, not stopped, not traced, no signal pending, same
    // mappings and threads, and it still answers (a planted stall is still measured by it).
    let target_after = target_state(target_pid);
    assert_eq!(
        target_before, target_after,
        "the target changed while the agent was attached and killed"
    );
    server.request("quick");
    server.request("burn 50");
    server.request("quick");
    let planted = server.planted();
    assert!(
        planted.iter().any(|p| p.kind == "burn"
            && p.start_ns > 0
            && p.duration_ns().abs_diff(50_000_000) < 20_000_000),
        "the target answered a burn after the agent was killed: {planted:?}"
    );
    assert!(
        server.target.child.try_wait().expect("try_wait").is_none(),
        "the target is still running"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Overload
// ---------------------------------------------------------------------------------------------

/// Samples a process's VmRSS every 500 ms, and whether it was alive, until stopped.
struct RssSampler {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<(Vec<u64>, Vec<String>)>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = thread::spawn(move || {
            let mut rss_kib = Vec::new();
            let mut problems = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                match fs::read_to_string(format!("/proc/{pid}/status")) {
                    Ok(status) => {
                        let field = |name: &str| {
                            status
                                .lines()
                                .find_map(|l| l.strip_prefix(name))
                                .map(|v| v.trim().to_string())
                                .unwrap_or_default()
                        };
                        let state = field("State:");
                        if state.starts_with('Z') || state.starts_with('X') {
                            problems.push(format!("agent {pid} is {state}"));
                        }
                        if let Some(kib) = field("VmRSS:")
                            .split_whitespace()
                            .next()
                            .and_then(|v| v.parse().ok())
                        {
                            rss_kib.push(kib);
                        }
                    }
                    Err(e) => problems.push(format!("agent {pid} gone: {e}")),
                }
                thread::sleep(Duration::from_millis(500));
            }
            (rss_kib, problems)
        });
        RssSampler { stop, handle }
    }

    fn finish(self) -> (Vec<u64>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().expect("sampler thread")
    }
}

#[test]
fn overload_with_a_tiny_ring_buffer() {
    require_root();
    let storm = c_target(
        "storm",
        &["-O2", "-g", "-fno-omit-frame-pointer", "-pthread"],
    );
    // 20 ping-pong pairs (40 threads) for 6 s; the loop burns 300 ms every second; the process
    // gives up by itself after 45 s.
    let mut target = Target::spawn(Command::new(storm).args(["20", "6000", "300", "1000", "45"]));
    assert!(
        target
            .stdout
            .wait_for("ready", Duration::from_secs(10))
            .is_some(),
        "storm target starts"
    );
    let out = scratch_dir("overload");
    let pid = target.pid().to_string();
    let mut agent = Recorder::start(
        &[
            "--pid",
            &pid,
            "--threshold",
            "100ms",
            "--ring-buffer-kib",
            "4",
        ],
        &out,
        &[],
    );
    let sampler = RssSampler::start(agent.pid());
    send(target.pid(), libc::SIGUSR1);
    assert!(
        target
            .stdout
            .wait_for("storm start", Duration::from_secs(5))
            .is_some(),
        "the storm starts"
    );
    // The loss is reported live, while recording.
    let live_warning = agent
        .stderr
        .wait_for("events lost so far", Duration::from_secs(8));
    assert!(
        live_warning.is_some(),
        "no live 'events lost' warning on stderr during the storm: {:#?}",
        agent.stderr.seen
    );
    assert!(
        target
            .stdout
            .wait_for("storm end", Duration::from_secs(20))
            .is_some(),
        "the storm ends: {:?}",
        target.stdout.seen
    );
    // A little more recording after the storm, then stop it like a user does.
    thread::sleep(Duration::from_millis(1500));
    assert!(
        agent.alive(),
        "the agent died under the storm: {:#?}",
        agent.stderr.collect(Duration::from_millis(200))
    );
    let (rss_kib, problems) = sampler.finish();
    let stopped = Instant::now();
    agent.signal(libc::SIGINT);
    let done = agent.wait(stopped, Duration::from_secs(60));
    eprintln!(
        "agent: exit {:?} {:?} after SIGINT; RSS samples (KiB): {rss_kib:?}",
        done.status, done.exit_after
    );
    assert!(problems.is_empty(), "{problems:?}");
    assert!(
        rss_kib.len() >= 10,
        "RSS sampled throughout the run: {rss_kib:?}"
    );
    let max_rss = rss_kib.iter().copied().max().unwrap_or(0);
    assert!(
        max_rss < 300 * 1024,
        "agent RSS reached {max_rss} KiB under the storm"
    );
    assert_eq!(done.status.code(), Some(0), "{}", done.context());

    // Counted and reported everywhere.
    let json = done.stalls_json();
    let lost = json["lost_events"].as_u64().expect("lost_events");
    let ringbuf_full = json["drops"]["ringbuf_full"]
        .as_u64()
        .expect("drops.ringbuf_full");
    eprintln!("lost_events {lost}, drops {}", json["drops"]);
    assert!(lost > 0, "a 4 KiB ring under a storm loses events");
    assert!(ringbuf_full > 0, "drops.ringbuf_full counts them");
    assert!(
        lost >= ringbuf_full,
        "lost_events {lost} must count every ring-buffer drop ({ringbuf_full})"
    );
    let lost_line = done
        .stdout
        .iter()
        .find(|l| l.starts_with("  lost:"))
        .unwrap_or_else(|| panic!("no '  lost:' line in the summary\n{}", done.context()));
    assert!(
        lost_line.contains(&format!("{lost} events")),
        "summary says {lost_line}, stalls.json {lost}"
    );
    let summary_md = fs::read_to_string(out.join("summary.md")).expect("summary.md");
    assert!(
        summary_md.contains(&format!("Lost events: {lost}")),
        "summary.md reports the loss: {summary_md}"
    );
    let last_warning = done
        .stderr
        .iter()
        .rev()
        .find(|l| l.contains("events lost so far"))
        .expect("live warning");
    let warned: u64 = last_warning
        .split_whitespace()
        .nth(2)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("count in {last_warning}"));
    assert!(
        warned > 0 && warned <= lost,
        "live count {warned}, final {lost}"
    );

    // No wrong duration is reported as trustworthy: a stall is either flagged (data_lost, or
    // partial at the end of recording) or it is a planted burn measured right.
    let planted: Vec<Planted> = planted_lines(&target.stdout.collect(Duration::from_millis(200)))
        .into_iter()
        .filter(|p| p.kind == "burn")
        .collect();
    let stalls = json["stalls"].as_array().expect("stalls").clone();
    assert!(
        !stalls.is_empty(),
        "the agent still reports stalls under overload"
    );
    let mut flagged = 0;
    for stall in &stalls {
        let start = stall["start_ns"].as_u64().expect("start_ns");
        let duration = stall["duration_ns"].as_u64().expect("duration_ns");
        let data_lost = stall["data_lost"].as_bool().expect("data_lost is a bool");
        let partial = stall["partial"].as_bool().unwrap_or(false);
        let matching = planted.iter().find(|p| {
            stall_containing(std::slice::from_ref(stall), p).is_some()
                && duration.abs_diff(p.duration_ns()) <= tolerance_ns(p.duration_ns())
        });
        eprintln!(
            "stall at {start}: {:.1} ms data_lost {data_lost} partial {partial} planted {:?}",
            duration as f64 / 1e6,
            matching.map(|p| p.duration_ns() as f64 / 1e6)
        );
        if data_lost || partial {
            flagged += 1;
            continue;
        }
        assert!(
            matching.is_some(),
            "a stall not flagged data_lost has a duration no planted burn explains: {stall:#}\nplanted: {planted:?}"
        );
    }
    // The live lines flag them too.
    let stdout = done.stdout.join("\n");
    let flagged_live = stdout
        .matches("(events were lost during this stall")
        .count();
    let data_lost_ended = stalls
        .iter()
        .filter(|s| s["data_lost"] == true && s["partial"] != true)
        .count();
    eprintln!(
        "{} stalls, {flagged} flagged, {flagged_live} flagged live; {} planted burns",
        stalls.len(),
        planted.len()
    );
    assert!(
        flagged_live >= data_lost_ended,
        "{data_lost_ended} data_lost stalls but {flagged_live} live lines say so\n{stdout}"
    );
    // For the record: did the agent measure the burns planted after the storm again?
    if let Some(storm_end) = target
        .stdout
        .seen
        .iter()
        .find_map(|l| l.strip_prefix("storm end ")?.trim().parse::<u64>().ok())
    {
        for p in planted.iter().filter(|p| p.start_ns > storm_end) {
            let found = stall_containing(&stalls, p);
            eprintln!(
                "after the storm: burn of {:.1} ms -> {:?}",
                p.duration_ns() as f64 / 1e6,
                found.map(|s| (s["duration_ns"].as_u64(), s["data_lost"].as_bool()))
            );
        }
    }

    // The human summaries (summary.md, the CI job summary, and the one printed on stdout)
    // list the worst stalls by duration: a stall whose data is incomplete must not appear
    // there as a plain, trustworthy duration.
    let summary_rows: Vec<&str> = summary_md
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| duration") && !l.starts_with("| ---"))
        .collect();
    let mut worst: Vec<&Value> = stalls.iter().collect();
    worst.sort_by_key(|s| std::cmp::Reverse(s["duration_ns"].as_u64().unwrap_or(0)));
    for (rank, stall) in worst.iter().enumerate().take(summary_rows.len()) {
        if stall["data_lost"] != true {
            continue;
        }
        let row = summary_rows[rank].to_lowercase();
        assert!(
            row.contains("lost") || row.contains("incomplete"),
            "summary.md lists a data_lost stall of {} ns as a plain duration: {}\n{summary_md}",
            stall["duration_ns"],
            summary_rows[rank]
        );
    }
}
