//! Why the loop waited: four C epoll loops (tests/targets/wait_*.c) that each wait in a different
//! way on their loop, recorded by the real agent attached by PID. For each planted wait the agent
//! must report a stall covering it, measured right, and name the cause the way a person would:
//! - a pthread mutex held by a worker computing for 300 ms: a `lock` stall in `futex`, the worker
//!   (and its function) named as the cause;
//! - a blocking read on a pipe whose writer writes after 250 ms: blocked in `read`, woken by the
//!   writer, in `write_after_delay`;
//! - the loop pinned to CPU 0 with two CPU hogs of another process there: mostly runqueue time,
//!   called "waiting for a CPU";
//! - fsync of freshly written pages on a real filesystem: blocked in `fsync`, with the
//!   filesystem's kernel frames.
//!
//! Each target is triggered with SIGUSR1 (a signalfd in its loop; the test signals its own child,
//! the agent never does), prints `planted KIND START_NS END_NS` around the wait, and exits by
//! itself after 15 s.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use stallscope_tests::{
    Agent, AgentResult, Lines, Planted, Target, c_target, dominant_code_stack, dominant_stack,
    function_names, planted_lines, require_root, scratch_dir, tolerance_ns, user_function_names,
};

const FLAGS: &[&str] = &[
    "-O2",
    "-g",
    "-fno-omit-frame-pointer",
    "-mno-omit-leaf-frame-pointer",
    "-pthread",
];

/// How many times each wait is planted.
const ROUNDS: usize = 2;

/// The agent's own rendering of a stall's duration (units::format_duration, at 1 ms and up),
/// to find a stall's lines.
fn format_ms(ns: u64) -> String {
    if ns >= 999_950_000 {
        format!("{:.2} s", ns as f64 / 1e9)
    } else {
        format!("{:.1} ms", ns as f64 / 1e6)
    }
}

/// Starts a target and waits until its loop is set up.
fn start_target(name: &str, args: &[&str]) -> Target {
    let binary = c_target(name, FLAGS);
    let mut target = Target::spawn(Command::new(binary).args(args));
    target
        .stdout
        .wait_for("ready", Duration::from_secs(10))
        .unwrap_or_else(|| panic!("{name} did not start"));
    target
}

/// Waits until the target has printed `count` planted lines.
fn wait_planted(stdout: &mut Lines, count: usize, timeout: Duration) -> Vec<Planted> {
    let deadline = Instant::now() + timeout;
    loop {
        let planted = planted_lines(&stdout.seen);
        if planted.len() >= count {
            return planted;
        }
        assert!(
            Instant::now() < deadline,
            "the target printed {} of {count} planted lines: {:#?}",
            planted.len(),
            stdout.seen
        );
        // A needle no line contains: this only moves received lines into `seen`.
        stdout.wait_for("\n", Duration::from_millis(50));
    }
}

/// Plants one more wait: SIGUSR1 to our own target, whose loop reads it from a signalfd.
fn trigger(target: &mut Target, round: usize) -> Planted {
    // SAFETY: signalling our own child, which blocks SIGUSR1 and reads it from a signalfd.
    let rc = unsafe { libc::kill(target.pid() as i32, libc::SIGUSR1) };
    assert_eq!(rc, 0, "signalling the target");
    let planted = wait_planted(&mut target.stdout, round, Duration::from_secs(10));
    planted[round - 1].clone()
}

/// The tid of the target's thread named `name` (/proc/PID/task/*/comm); threads name themselves
/// right after they start, so this waits a little.
fn thread_named(pid: u32, name: &str) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("list threads");
        for task in tasks.map_while(Result::ok) {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim() == name {
                return task
                    .file_name()
                    .to_str()
                    .and_then(|t| t.parse().ok())
                    .expect("tid");
            }
        }
        assert!(Instant::now() < deadline, "no thread named {name} in {pid}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The loop thread's stall containing the planted wait (same clock: CLOCK_MONOTONIC), with its
/// duration checked against the target's own measurement.
fn stall_for<'a>(result: &AgentResult, json: &'a Value, tid: u32, truth: &Planted) -> &'a Value {
    let stalls = json["stalls"].as_array().expect("stalls array");
    let stall = stalls
        .iter()
        .filter(|s| s["tid"] == tid)
        .find(|s| {
            let start = s["start_ns"].as_u64().unwrap_or(u64::MAX);
            let end = s["end_ns"].as_u64().unwrap_or(0);
            start <= truth.start_ns + 20_000_000 && end + 20_000_000 >= truth.end_ns
        })
        .unwrap_or_else(|| {
            panic!(
                "no stall of loop thread {tid} covers {truth:?} (lost events: {}): {stalls:#?}\nagent stdout: {:#?}",
                json["lost_events"], result.stdout
            )
        });
    let duration = stall["duration_ns"].as_u64().expect("duration");
    let error = duration.abs_diff(truth.duration_ns());
    eprintln!(
        "{}: truth {:.1} ms, measured {:.1} ms (on-CPU {:.1}, blocked {:.1}, runqueue {:.1})",
        truth.kind,
        truth.duration_ns() as f64 / 1e6,
        duration as f64 / 1e6,
        stall["on_cpu_ns"].as_u64().unwrap_or(0) as f64 / 1e6,
        stall["off_cpu_ns"].as_u64().unwrap_or(0) as f64 / 1e6,
        stall["runqueue_ns"].as_u64().unwrap_or(0) as f64 / 1e6,
    );
    assert!(
        error <= tolerance_ns(truth.duration_ns()),
        "{} stall measured {duration} ns, the target says {} ns: {stall:#}",
        truth.kind,
        truth.duration_ns()
    );
    stall
}

/// The live lines the agent printed for this stall: `stall …` and the indented lines under it.
fn live_block(result: &AgentResult, stall: &Value) -> String {
    let duration = format_ms(stall["duration_ns"].as_u64().expect("duration"));
    let tid = format!("tid {} ", stall["tid"]);
    let lines = &result.stdout;
    let first = lines
        .iter()
        .position(|l| l.starts_with("stall ") && l.contains(&duration) && l.contains(&tid))
        .unwrap_or_else(|| panic!("no live line for the {duration} stall ({tid}): {lines:#?}"));
    let block: Vec<&str> = std::iter::once(lines[first].as_str())
        .chain(
            lines[first + 1..]
                .iter()
                .take_while(|l| l.starts_with(' '))
                .map(String::as_str),
        )
        .collect();
    let block = block.join("\n");
    eprintln!("live:\n{block}");
    block
}

/// The line of the final summary (printed on stop) for this stall.
fn summary_line(result: &AgentResult, stall: &Value) -> String {
    let duration = format_ms(stall["duration_ns"].as_u64().expect("duration"));
    let who = format!("/{} ", stall["tid"]);
    let line = result
        .stdout
        .iter()
        .find(|l| !l.starts_with("stall ") && l.contains(&duration) && l.contains(&who))
        .unwrap_or_else(|| {
            panic!(
                "no summary line for the {duration} stall: {:#?}",
                result.stdout
            )
        })
        .clone();
    eprintln!("summary: {}", line.trim());
    line
}

fn kernel_function_names(stack: &Value) -> Vec<String> {
    stack["frames"]
        .as_array()
        .map(|frames| {
            frames
                .iter()
                .filter(|f| f["kind"] == "kernel")
                .filter_map(|f| f["function"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn stop(agent: Agent) -> (AgentResult, Value) {
    std::thread::sleep(Duration::from_millis(200));
    let result = agent.stop();
    assert!(
        result.status.success(),
        "agent failed: {:#?}",
        result.stderr
    );
    let json = result.stalls_json();
    (result, json)
}

#[test]
fn lock_wait_names_the_holder_and_what_it_was_doing() {
    require_root();
    let mut target = start_target("wait_mutex", &[]);
    let pid = target.pid();
    let worker = thread_named(pid, "worker");
    let out = scratch_dir("why-mutex");
    let agent = Agent::record(&["--pid", &pid.to_string(), "--threshold", "100ms"], &out);
    let planted: Vec<Planted> = (1..=ROUNDS).map(|r| trigger(&mut target, r)).collect();
    let (result, json) = stop(agent);

    for truth in &planted {
        assert_eq!(truth.kind, "lock");
        let stall = stall_for(&result, &json, pid, truth);
        let top = dominant_code_stack(stall);
        let live = live_block(&result, stall);
        assert_eq!(
            top["kind"], "lock",
            "a wait for a mutex held by another thread of the target is a lock wait: {stall:#}"
        );
        assert_eq!(top["syscall"], "futex", "{top:#}");
        let names = user_function_names(top);
        assert!(
            names.iter().any(|n| n == "take_shared_lock"),
            "the loop's stack shows where it took the lock: {names:?}"
        );
        let waker = &top["waker"];
        assert_eq!(
            waker["tid"], worker,
            "the lock holder (worker, tid {worker}) released the loop: {top:#}"
        );
        let waker_names = function_names(waker);
        assert!(
            waker_names.iter().any(|n| n == "hold_lock_and_compute"),
            "the holder's stack names what it did with the lock: {waker_names:?}"
        );
        // "woken by tid N (worker) …" or, for a lock, "released by tid N (worker) …".
        assert!(
            (live.contains("woken by") || live.contains("released by"))
                && live.contains(&format!("tid {worker} (worker)")),
            "the live line names the holder: {live}"
        );
    }
}

#[test]
fn blocking_read_names_the_writer() {
    require_root();
    let mut target = start_target("wait_pipe", &[]);
    let pid = target.pid();
    let writer = thread_named(pid, "writer");
    let out = scratch_dir("why-pipe");
    let agent = Agent::record(&["--pid", &pid.to_string(), "--threshold", "100ms"], &out);
    let planted: Vec<Planted> = (1..=ROUNDS).map(|r| trigger(&mut target, r)).collect();
    let (result, json) = stop(agent);

    for truth in &planted {
        assert_eq!(truth.kind, "read");
        let stall = stall_for(&result, &json, pid, truth);
        let top = dominant_code_stack(stall);
        let live = live_block(&result, stall);
        assert_eq!(top["kind"], "off_cpu", "{stall:#}");
        assert_eq!(top["syscall"], "read", "{top:#}");
        let names = user_function_names(top);
        assert!(
            names.iter().any(|n| n == "read_from_pipe"),
            "the loop's stack shows the blocking read: {names:?}"
        );
        let waker = &top["waker"];
        assert_eq!(waker["comm"], "writer", "the writer woke the loop: {top:#}");
        assert_eq!(waker["tid"], writer, "{top:#}");
        let waker_names = function_names(waker);
        assert!(
            waker_names.iter().any(|n| n == "write_after_delay"),
            "the writer's stack names the code that wrote late: {waker_names:?}"
        );
        assert!(
            live.contains("blocked in read")
                && live.contains("woken by")
                && live.contains("writer"),
            "the live line says what the loop waited in and who ended it: {live}"
        );
    }
}

/// The planted read blocks where the loop has blocked 40 times just before, so its kernel stack
/// at switch-out is the one reused from that place (the agent's counts, logged at info, say
/// reuse happened and no check found a different stack there): it must still be the pipe read's,
/// with the same syscall, user frames and waker as a walked one.
#[test]
fn reused_kernel_stack_is_the_blocking_reads() {
    require_root();
    let mut target = start_target("wait_pipe", &["40"]);
    let pid = target.pid();
    let out = scratch_dir("why-pipe-reused");
    let agent = Agent::record_with_env(
        &["--pid", &pid.to_string(), "--threshold", "100ms"],
        &out,
        &[("RUST_LOG", "info")],
    );
    let planted: Vec<Planted> = (1..=ROUNDS).map(|r| trigger(&mut target, r)).collect();
    let (result, json) = stop(agent);

    let counts = result
        .stderr
        .iter()
        .find_map(|l| {
            l.split_once("kernel stacks at switch-outs and wakers: ")
                .map(|(_, c)| c)
        })
        .unwrap_or_else(|| panic!("no kernel stack counts logged: {:#?}", result.stderr));
    let count = |what: &str| -> u64 {
        counts
            .split(", ")
            .find_map(|part| part.strip_suffix(what)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no `{what}` count in {counts:?}"))
    };
    eprintln!("kernel stacks: {counts}");
    assert!(
        count(" reused") >= 40,
        "the repeated reads reused their kernel stack: {counts}"
    );
    assert_eq!(
        count(" differed"),
        0,
        "no check found another stack at a place: {counts}"
    );
    for truth in &planted {
        let stall = stall_for(&result, &json, pid, truth);
        let top = dominant_code_stack(stall);
        assert_eq!(top["syscall"], "read", "{top:#}");
        let kernel = kernel_function_names(top);
        assert!(
            kernel.iter().any(|n| n.contains("pipe_read")),
            "the reused kernel stack is the pipe read's: {kernel:?}"
        );
        assert!(
            !kernel
                .iter()
                .any(|n| n.contains("nanosleep") || n.contains("ep_poll") || n.starts_with("bpf_")),
            "nothing of another place, nor of our programs: {kernel:?}"
        );
        assert!(
            user_function_names(top)
                .iter()
                .any(|n| n == "read_from_pipe"),
            "{top:#}"
        );
        assert_eq!(top["waker"]["comm"], "writer", "{top:#}");
    }
}

#[test]
fn waiting_for_a_cpu_is_runqueue_time() {
    require_root();
    let hog = c_target("wait_hog", FLAGS);
    let mut target = start_target("wait_runqueue", &[]);
    let pid = target.pid();
    let out = scratch_dir("why-runqueue");
    let agent = Agent::record(&["--pid", &pid.to_string(), "--threshold", "100ms"], &out);
    let mut planted = Vec::new();
    for round in 1..=ROUNDS {
        // Two hogs of another process on the loop's CPU, only while the loop works; they are
        // ours, killed when dropped, and stop by themselves after 10 s anyway.
        let mut hogs: Vec<Target> = (0..2)
            .map(|_| Target::spawn(Command::new(&hog).args(["0", "10"])))
            .collect();
        for h in &mut hogs {
            h.stdout
                .wait_for("hogging", Duration::from_secs(5))
                .expect("hog pinned to CPU 0");
        }
        std::thread::sleep(Duration::from_millis(100));
        planted.push(trigger(&mut target, round));
        drop(hogs);
    }
    let (result, json) = stop(agent);

    for truth in &planted {
        assert_eq!(truth.kind, "runqueue");
        let stall = stall_for(&result, &json, pid, truth);
        let on = stall["on_cpu_ns"].as_u64().expect("on");
        let off = stall["off_cpu_ns"].as_u64().expect("off");
        let rq = stall["runqueue_ns"].as_u64().expect("rq");
        assert!(
            rq > on && rq > off,
            "two hogs on the loop's CPU: runqueue time dominates: {stall:#}"
        );
        let live = live_block(&result, stall);
        let summary = summary_line(&result, stall);
        assert!(
            summary.contains("mostly runqueue"),
            "the summary names it: {summary}"
        );
        assert!(
            live.contains("waiting for a CPU"),
            "the live line says the loop was waiting for a CPU: {live}"
        );
        let names = user_function_names(dominant_stack(stall));
        assert!(
            names.iter().any(|n| n == "crunch_numbers"),
            "the stack shows the work that was kept waiting: {names:?}"
        );
    }
}

#[test]
fn fsync_shows_the_filesystem() {
    require_root();
    // Pages written to a real filesystem under target/test-runs (on tmpfs fsync is instant).
    let data = scratch_dir("why-fsync-data");
    assert_not_tmpfs(&data);
    let mut target = start_target("wait_fsync", &[data.to_str().expect("utf-8 path"), "128"]);
    let pid = target.pid();
    let out = scratch_dir("why-fsync");
    // A 20 ms threshold: on a fast virtual disk fsync of a fresh 128 MiB file takes about
    // 45-80 ms, under the default 100 ms; the loop's other iterations (4 MiB of writes into the
    // page cache each, about 1 ms) stay far below it.
    let agent = Agent::record(&["--pid", &pid.to_string(), "--threshold", "20ms"], &out);
    let planted: Vec<Planted> = (1..=ROUNDS).map(|r| trigger(&mut target, r)).collect();
    let (result, json) = stop(agent);
    drop(target);
    // The data files are the target's (ours): remove them, keep the recording.
    let _ = std::fs::remove_dir_all(&data);

    for truth in &planted {
        assert_eq!(truth.kind, "fsync");
        let stall = stall_for(&result, &json, pid, truth);
        // What the loop blocked in. On a virtual disk under load, fsync's own on-CPU kernel work
        // (submitting the writeback, ringing the virtqueue) can outweigh the wait for the disk,
        // so the heaviest blocked stack is judged, not the heaviest stack of any kind.
        let top = heaviest_off_cpu_stack(stall);
        let live = live_block(&result, stall);
        assert_eq!(top["kind"], "off_cpu", "{stall:#}");
        assert_eq!(top["syscall"], "fsync", "{top:#}");
        let off_cpu = stall["off_cpu_ns"].as_u64().expect("off_cpu_ns");
        assert!(
            off_cpu * 5 >= stall["duration_ns"].as_u64().expect("duration"),
            "the wait for the disk is a fair part of the stall (at least a fifth): {stall:#}"
        );
        let kernel = kernel_function_names(top);
        assert!(
            kernel.iter().any(|n| {
                [
                    "ext4",
                    "xfs",
                    "btrfs",
                    "f2fs",
                    "jbd2",
                    "file_write_and_wait",
                    "filemap_",
                ]
                .iter()
                .any(|fs| n.contains(fs))
            }),
            "kernel frames show the filesystem's fsync path: {kernel:?}"
        );
        let names = user_function_names(top);
        assert!(
            names.iter().any(|n| n == "flush_to_disk"),
            "the loop's stack shows the fsync call: {names:?}"
        );
        // "blocked in fsync" when the wait dominates, else the fsync call on top of the user
        // frames ("at __GI_fsync (fsync.c:27) < flush_to_disk ..."); the first line holds the
        // command name (wait_fsync), so only the lines below it count.
        let detail = live.split_once('\n').map_or("", |(_, rest)| rest);
        assert!(
            detail.contains("blocked in fsync") || detail.contains("fsync ("),
            "the live line names fsync as what held the loop: {live}"
        );
    }
}

/// The heaviest stack of the time the loop was blocked.
fn heaviest_off_cpu_stack(stall: &Value) -> &Value {
    stall["stacks"]
        .as_array()
        .and_then(|stacks| {
            stacks
                .iter()
                .filter(|s| s["kind"] == "off_cpu")
                .max_by_key(|s| s["weight_ns"].as_u64().unwrap_or(0))
        })
        .unwrap_or(&Value::Null)
}

fn assert_not_tmpfs(dir: &Path) {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    let path = std::ffi::CString::new(dir.to_str().expect("utf-8 path")).expect("no NUL");
    // SAFETY: statfs is plain data (all zeroes is a valid value).
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid out-parameter.
    let rc = unsafe { libc::statfs(path.as_ptr(), &mut fs) };
    assert_eq!(rc, 0, "statfs {}", dir.display());
    assert_ne!(
        fs.f_type as i64,
        TMPFS_MAGIC,
        "{} is on tmpfs, where fsync does not wait for a disk",
        dir.display()
    );
}
