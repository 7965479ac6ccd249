//! Following a whole service, as the seeds need it: attach to the master of a pre-fork server and
//! follow its workers as they are forked, recycled, killed and replaced (seed 001: gunicorn
//! gthread workers recycled by `max_requests`; seed 000: a FastAPI loop blocked inside an
//! `async def`), keep what exited workers did, say what a loop is blocked in when recording
//! stops while it is, and record a process that lives in its own PID and mount namespaces by
//! the PID the user sees on the host.
//!
//! Gunicorn, uvicorn and FastAPI come from a virtualenv the tests create on first use
//! (`target/test-venv`, from `tests/targets/service/requirements.txt`; PyPI must be reachable
//! the first time). Every service is started in its own process group and the whole group is
//! killed when the test ends, pass or fail.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read, Write},
    net::TcpStream,
    os::unix::{fs::MetadataExt, net::UnixStream, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use stallscope_tests::{
    Agent, AgentResult, Lines, Needed, SLEEPING_SYSCALLS, c_target, free_port, function_names,
    monotonic_ns, ns_field, require_root, run_setup_step, scratch_dir, tolerance_ns,
    user_function_names, workspace_root,
};

// ---------------------------------------------------------------------------------------------
// The Python environment.

/// The real interpreter behind pyenv's shim (the shim is a shell script that execs it).
fn system_python() -> String {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .needed_output();
    assert!(out.status.success(), "python3 does not run: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `target/test-venv` with gunicorn, uvicorn and FastAPI, created or brought up to date with
/// requirements.txt once per test binary.
fn venv() -> PathBuf {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        let dir = workspace_root().join("target/test-venv");
        let requirements = workspace_root().join("tests/targets/service/requirements.txt");
        let wanted = std::fs::read_to_string(&requirements).expect("requirements.txt");
        let stamp = dir.join("stallscope-requirements.txt");
        let python = dir.join("bin/python");
        if python.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&wanted) {
            return dir;
        }
        if !python.exists() {
            run_setup_step(
                Command::new(system_python()).args(["-m", "venv"]).arg(&dir),
                "creating the test virtualenv target/test-venv (Debian's python3 needs \
                 `apt-get install python3-venv`)",
            );
        }
        run_setup_step(
            Command::new(dir.join("bin/pip"))
                .args(["install", "--quiet", "-r"])
                .arg(&requirements),
            "installing gunicorn, uvicorn and fastapi into target/test-venv (PyPI must be \
             reachable)",
        );
        std::fs::write(&stamp, &wanted).expect("write the virtualenv stamp");
        dir
    })
    .clone()
}

fn copy_app(name: &str, dir: &Path) {
    let source = workspace_root().join("tests/targets/service").join(name);
    std::fs::copy(&source, dir.join(name))
        .unwrap_or_else(|e| panic!("copy {}: {e}", source.display()));
}

// ---------------------------------------------------------------------------------------------
// Services we start: a process group, killed whole when dropped.

struct Service {
    child: Child,
    stdout: Lines,
    stderr: Lines,
}

impl Service {
    fn spawn(cmd: &mut Command) -> Self {
        let mut child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
        let stdout = Lines::spawn(child.stdout.take().expect("stdout"));
        let stderr = Lines::spawn(child.stderr.take().expect("stderr"));
        Service {
            child,
            stdout,
            stderr,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Panics with what the service said when `line` does not come in time.
    fn wait_stderr(&mut self, needle: &str, timeout: Duration) -> String {
        match self.stderr.wait_for(needle, timeout) {
            Some(line) => line,
            None => panic!(
                "the service did not log {needle:?} within {timeout:?}:\n{}",
                self.stderr.collect(Duration::from_millis(100)).join("\n")
            ),
        }
    }

    /// Every log line so far.
    fn log(&mut self) -> Vec<String> {
        self.stderr.collect(Duration::from_millis(200))
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // The group we created: the master (or unshare) and every worker it forked.
        // SAFETY: signalling our own process group.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// Gunicorn's "Booting worker with pid: N" lines, in order.
fn booted_workers(log: &[String]) -> Vec<u32> {
    log.iter()
        .filter_map(|l| l.split("Booting worker with pid: ").nth(1))
        .filter_map(|pid| pid.trim().parse().ok())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// /proc, read-only.

/// (ppid, starttime) from /proc/PID/stat.
fn stat_fields(pid: u32) -> Option<(u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After "pid (comm) ": state ppid ... starttime is field 22 overall, 20th here.
    if fields.first() == Some(&"Z") {
        return None;
    }
    Some((fields.get(1)?.parse().ok()?, fields.get(19)?.parse().ok()?))
}

fn start_time(pid: u32) -> Option<u64> {
    stat_fields(pid).map(|(_, start)| start)
}

/// Living (non-zombie) children of a process.
fn children(parent: u32) -> BTreeSet<u32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| stat_fields(pid).is_some_and(|(ppid, _)| ppid == parent))
        .collect()
}

fn status_field(pid: u32, name: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(':')
                .map(|v| v.trim().to_string())
        })
}

/// The target is never ptraced nor stopped: checked on each process while the agent records.
fn assert_untouched(pids: &BTreeSet<u32>) {
    for &pid in pids {
        if let Some(tracer) = status_field(pid, "TracerPid") {
            assert_eq!(tracer, "0", "pid {pid} is being traced");
        }
        if let Some(state) = status_field(pid, "State") {
            assert!(
                !state.starts_with('T') && !state.starts_with('t'),
                "pid {pid} is stopped: {state}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1 by hand: one request per connection, bounded by timeouts.

fn http_exchange(mut stream: impl Read + Write, path: &str) -> std::io::Result<(u16, String)> {
    stream.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no HTTP status in {text:?}")))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

fn get_unix(socket: &Path, path: &str) -> std::io::Result<(u16, String)> {
    let stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    http_exchange(stream, path)
}

fn get_tcp(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    http_exchange(stream, path)
}

/// A 200 answer's JSON body from the FastAPI app.
fn get_json(port: u16, path: &str) -> Value {
    let (status, body) = get_tcp(port, path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

// ---------------------------------------------------------------------------------------------
// What the scratch directory holds, to prove the agent touched nothing in it.

#[derive(Debug, PartialEq, Eq)]
enum Entry {
    File {
        ino: u64,
        mtime_ns: i64,
        bytes: Vec<u8>,
    },
    Dir {
        ino: u64,
    },
    Socket {
        ino: u64,
    },
    Other {
        ino: u64,
        mode: u32,
    },
}

fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Entry> {
    fn walk(root: &Path, dir: &Path, into: &mut BTreeMap<PathBuf, Entry>) {
        for entry in std::fs::read_dir(dir).expect("read scratch dir") {
            let path = entry.expect("dir entry").path();
            let meta = std::fs::symlink_metadata(&path).expect("stat");
            let rel = path.strip_prefix(root).expect("under root").to_path_buf();
            let ino = meta.ino();
            let kind = meta.mode() & libc::S_IFMT;
            let entry = if meta.is_dir() {
                walk(root, &path, into);
                Entry::Dir { ino }
            } else if meta.is_file() {
                Entry::File {
                    ino,
                    mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
                    bytes: std::fs::read(&path).expect("read"),
                }
            } else if kind == libc::S_IFSOCK {
                Entry::Socket { ino }
            } else {
                Entry::Other {
                    ino,
                    mode: meta.mode(),
                }
            };
            into.insert(rel, entry);
        }
    }
    let mut entries = BTreeMap::new();
    walk(dir, dir, &mut entries);
    entries
}

// ---------------------------------------------------------------------------------------------
// Reading the recording.

fn stopped_ok(result: &AgentResult) -> Value {
    assert!(
        result.status.success(),
        "agent failed ({}): {:#?}",
        result.status,
        result.stderr
    );
    result.stalls_json()
}

fn processes_by_pid(json: &Value) -> BTreeMap<u64, Value> {
    json["processes"]
        .as_array()
        .expect("processes array")
        .iter()
        .filter_map(|p| Some((p["pid"].as_u64()?, p.clone())))
        .collect()
}

fn thread_entry(json: &Value, pid: u32, tid: u32) -> Option<&Value> {
    json["threads"].as_array()?.iter().find(|t| {
        t["pid"].as_u64() == Some(u64::from(pid)) && t["tid"].as_u64() == Some(u64::from(tid))
    })
}

/// The stall of `pid` that contains the span [start_ns, end_ns] the target measured itself.
fn stall_covering(stalls: &[Value], pid: u32, start_ns: u64, end_ns: u64) -> Option<&Value> {
    stalls.iter().find(|s| {
        s["pid"].as_u64() == Some(u64::from(pid))
            && s["start_ns"].as_u64().unwrap_or(u64::MAX) <= start_ns + 20_000_000
            && s["end_ns"].as_u64().unwrap_or(0) + 20_000_000 >= end_ns
    })
}

/// The heaviest of a stall's stacks of the given kinds.
fn heaviest_of<'a>(stall: &'a Value, kinds: &[&str]) -> &'a Value {
    stall["stacks"]
        .as_array()
        .and_then(|stacks| {
            stacks
                .iter()
                .filter(|s| kinds.iter().any(|k| s["kind"] == *k))
                .max_by_key(|s| s["weight_ns"].as_u64().unwrap_or(0))
        })
        .unwrap_or(&Value::Null)
}

fn has_interpreter_frame(stack: &Value) -> bool {
    function_names(stack)
        .iter()
        .any(|f| f.contains("_PyEval_EvalFrameDefault") || f.contains("PyObject_"))
}

// ---------------------------------------------------------------------------------------------

/// Seed 001: gthread workers recycled by max_requests under the master the agent was given.
/// Every worker that lived while recording is in the recording, with its start and exit; the
/// service's files (the app, the shared unix socket) are exactly as they were; the master is the
/// same process and still answers.
#[test]
fn gunicorn_gthread_recycled_workers_seed_001() {
    require_root();
    let venv = venv();
    let dir = scratch_dir("gunicorn-gthread");
    let out = scratch_dir("gunicorn-gthread-recording");
    copy_app("wsgi_app.py", &dir);
    let socket = dir.join("gunicorn.sock");
    assert!(
        socket.as_os_str().len() < 100,
        "unix socket path too long: {}",
        socket.display()
    );
    let mut service = Service::spawn(
        Command::new(venv.join("bin/gunicorn"))
            .args([
                "--workers",
                "2",
                "--threads",
                "2",
                "--worker-class",
                "gthread",
            ])
            .args(["--max-requests", "20", "--max-requests-jitter", "0"])
            .args(["--log-level", "info", "--no-control-socket", "--chdir"])
            .arg(&dir)
            .arg("--bind")
            .arg(format!("unix:{}", socket.display()))
            .arg("wsgi_app:app")
            .current_dir(&dir)
            .env("PYTHONDONTWRITEBYTECODE", "1"),
    );
    let master = service.pid();
    service.wait_stderr("Listening at: unix:", Duration::from_secs(30));
    // Both first workers booted and the socket answers.
    let deadline = Instant::now() + Duration::from_secs(30);
    while booted_workers(&service.log()).len() < 2 || children(master).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "workers never booted: {:#?}",
            service.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
    let (status, body) = get_unix(&socket, "/").expect("the service answers before recording");
    assert_eq!(status, 200, "{body}");
    thread::sleep(Duration::from_millis(300));
    let initial = children(master);
    assert_eq!(initial.len(), 2, "two workers at attach: {initial:?}");
    let master_started = start_time(master).expect("master alive");
    let before = snapshot(&dir);
    assert!(
        matches!(
            before.get(Path::new("gunicorn.sock")),
            Some(Entry::Socket { .. })
        ),
        "the shared socket is there: {before:?}"
    );

    let t_attach = monotonic_ns();
    let agent = Agent::record(
        &["--pid", &master.to_string(), "--threshold", "100ms"],
        &out,
    );
    let mut watched = initial.clone();
    watched.insert(master);
    assert_untouched(&watched);

    // Bounded load: 4 clients x 50 requests = 200, through recycling (20 requests per worker).
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let socket = socket.clone();
            thread::spawn(move || {
                let mut served = Vec::new();
                let mut errors = Vec::new();
                for _ in 0..50 {
                    match get_unix(&socket, "/") {
                        Ok((200, body)) => served.push(body),
                        Ok((status, body)) => errors.push(format!("HTTP {status}: {body}")),
                        Err(e) => errors.push(e.to_string()),
                    }
                }
                (served, errors)
            })
        })
        .collect();
    let mut served = Vec::new();
    let mut errors = Vec::new();
    let mut sampled_during_load = false;
    for client in clients {
        if !sampled_during_load {
            // While workers come and go: nothing is traced or stopped.
            let mut now = children(master);
            now.insert(master);
            assert_untouched(&now);
            sampled_during_load = true;
        }
        let (s, e) = client.join().expect("client thread");
        served.extend(s);
        errors.extend(e);
    }
    eprintln!(
        "load: {} answered, {} errors {:?}",
        served.len(),
        errors.len(),
        errors.iter().take(5).collect::<Vec<_>>()
    );
    assert!(
        served.len() >= 190,
        "the service answers through recycling ({} of 200; errors: {errors:#?})",
        served.len()
    );
    let served_by: BTreeSet<u32> = served
        .iter()
        .filter_map(|b| b.trim().strip_prefix("ok ")?.parse().ok())
        .collect();

    // Let the master settle: two workers, each one it announced, stable for a moment.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut stable_since = Instant::now();
    let mut last = BTreeSet::new();
    loop {
        let now = children(master);
        let booted: BTreeSet<u32> = booted_workers(&service.log()).into_iter().collect();
        let settled = now.len() == 2 && now.iter().all(|p| booted.contains(p));
        if !settled || now != last {
            stable_since = Instant::now();
            last = now;
        } else if stable_since.elapsed() > Duration::from_millis(500) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "gunicorn did not settle to 2 workers: {last:?}\n{}",
            service.log().join("\n")
        );
        thread::sleep(Duration::from_millis(100));
    }
    let alive_at_stop = children(master);
    let log = service.log();
    let t_stop = monotonic_ns();
    let result = agent.stop();
    let json = stopped_ok(&result);

    // The master is the same process, was left as it was, and still serves.
    assert_eq!(
        start_time(master),
        Some(master_started),
        "the master is the same process"
    );
    assert_untouched(&BTreeSet::from([master]));
    let (status, body) = get_unix(&socket, "/").expect("the service answers after recording");
    assert_eq!(status, 200, "{body}");
    // Nothing in the service's directory changed: same app bytes, same socket inode (never
    // unlinked and re-created: the seed's 502s came from a vanished socket).
    let after = snapshot(&dir);
    assert_eq!(before, after, "the service's files changed while recording");

    // The truth about workers: the ones alive at attach and every one gunicorn booted since.
    let booted_during: Vec<u32> = booted_workers(&log)
        .into_iter()
        .filter(|p| !initial.contains(p))
        .collect();
    assert!(
        booted_during.len() >= 4,
        "max_requests recycled at least 4 workers during the load: {booted_during:?}\n{}",
        log.join("\n")
    );
    let lived: BTreeSet<u32> = initial
        .iter()
        .copied()
        .chain(booted_during.iter().copied())
        .collect();
    assert!(
        served_by.is_subset(&lived),
        "every answer came from a worker gunicorn announced: {served_by:?} vs {lived:?}"
    );
    eprintln!(
        "workers: {} at attach, {} booted while recording, {} alive at stop, {} served",
        initial.len(),
        booted_during.len(),
        alive_at_stop.len(),
        served_by.len()
    );

    // Every problem is listed, not only the first: a failure here is a report on following.
    let processes = processes_by_pid(&json);
    let mut problems = Vec::new();
    match processes.get(&u64::from(master)) {
        None => problems.push(format!("the master {master} is not in processes")),
        Some(record) if !record["exited_ns"].is_null() => {
            problems.push(format!("the master has exited_ns: {record}"))
        }
        Some(_) => {}
    }
    for &worker in &lived {
        let Some(record) = processes.get(&u64::from(worker)) else {
            problems.push(format!(
                "worker {worker} lived while recording but is not in processes"
            ));
            continue;
        };
        let started = record["started_ns"].as_u64();
        let exited = record["exited_ns"].as_u64();
        if initial.contains(&worker) {
            if started.is_some_and(|s| s >= t_attach) {
                problems.push(format!(
                    "worker {worker} existed before attach but started_ns is in the recording: \
                     {record}"
                ));
            }
        } else {
            match started {
                None => problems.push(format!(
                    "worker {worker} was forked while recording, started_ns is null: {record}"
                )),
                Some(s) if !(t_attach..=t_stop).contains(&s) => problems.push(format!(
                    "worker {worker} started_ns {s} outside the recording [{t_attach}, {t_stop}]"
                )),
                Some(_) => {}
            }
        }
        match (alive_at_stop.contains(&worker), exited) {
            (true, Some(_)) => problems.push(format!(
                "worker {worker} was alive at stop but has exited_ns: {record}"
            )),
            (false, None) => problems.push(format!(
                "worker {worker} was recycled while recording, exited_ns is null: {record}"
            )),
            (false, Some(e)) if !(t_attach..=t_stop).contains(&e) => problems.push(format!(
                "worker {worker} exited_ns {e} outside the recording [{t_attach}, {t_stop}]"
            )),
            (false, Some(e)) if started.is_some_and(|s| s >= e) => problems.push(format!(
                "worker {worker} exited before it started: {record}"
            )),
            _ => {}
        }
        if !record["exe"].as_str().is_some_and(|e| e.contains("python")) {
            problems.push(format!(
                "worker {worker}'s exe is not the venv's python: {record}"
            ));
        }
        // Symbols outlive the worker: its user frames (off-CPU profile and stalls) resolve,
        // although most of these workers are gone by the time the recording is written.
        let of_worker = |v: &&Value| v["pid"].as_u64() == Some(u64::from(worker));
        let offcpu = json["offcpu"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(of_worker);
        let stalled = json["stalls"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(of_worker)
            .flat_map(|s| s["stacks"].as_array().into_iter().flatten());
        let user_frames: Vec<String> = offcpu
            .chain(stalled)
            .flat_map(user_function_names)
            .collect();
        let resolved = user_frames
            .iter()
            .filter(|f| !f.starts_with("[unknown]"))
            .count();
        if !user_frames.is_empty() && resolved == 0 {
            problems.push(format!(
                "worker {worker}: none of its {} user frames is symbolized (e.g. {:?}); \
                 exited {}",
                user_frames.len(),
                user_frames.iter().take(3).collect::<Vec<_>>(),
                exited.is_some()
            ));
        }
    }
    // The recording followed inside the workers, not only their births and deaths: each worker
    // that served a request shows its gthread main loop (epoll) as a loop thread.
    for &worker in &served_by {
        let entry = thread_entry(&json, worker, worker);
        if !entry.is_some_and(|t| t["loop"] == true) {
            problems.push(format!(
                "worker {worker}'s main thread is not a loop thread: {entry:?}"
            ));
        }
    }
    // One entry per thread.
    let mut seen = BTreeMap::new();
    for thread in json["threads"].as_array().expect("threads") {
        let key = (thread["pid"].as_u64(), thread["tid"].as_u64());
        if let Some(first) = seen.insert(key, thread.clone()) {
            problems.push(format!(
                "thread listed twice in threads[]: {first} and {thread}"
            ));
        }
    }
    // Nothing in the recording belongs to a process outside the service.
    for stall in json["stalls"].as_array().expect("stalls") {
        let pid = ns_field(stall, "pid") as u32;
        if pid != master && !lived.contains(&pid) {
            problems.push(format!("stall of a process outside the service: {stall}"));
        }
    }
    assert!(
        problems.is_empty(),
        "{} problem(s) following gunicorn's workers (recording in {}):\n{}\nprocesses: {:?}\n\
         lost_events {}, drops {}\nthe agent said:\n{}",
        problems.len(),
        out.display(),
        problems.join("\n"),
        processes.keys().collect::<Vec<_>>(),
        json["lost_events"],
        json["drops"],
        result.stderr.join("\n")
    );
}

/// The FastAPI app under gunicorn's master with two uvicorn workers, ready to serve.
fn uvicorn_service(name: &str) -> (Service, u16) {
    let venv = venv();
    let dir = scratch_dir(name);
    copy_app("fastapi_app.py", &dir);
    let port = free_port();
    let mut service = Service::spawn(
        Command::new(venv.join("bin/gunicorn"))
            .args(["-k", "uvicorn.workers.UvicornWorker", "--workers", "2"])
            .args(["--log-level", "info", "--no-control-socket", "--chdir"])
            .arg(&dir)
            .arg("--bind")
            .arg(format!("127.0.0.1:{port}"))
            .arg("fastapi_app:app")
            .current_dir(&dir)
            .env("PYTHONDONTWRITEBYTECODE", "1"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = service.log();
        let ready = log
            .iter()
            .filter(|l| l.contains("Application startup complete"))
            .count();
        if ready >= 2 && children(service.pid()).len() == 2 {
            return (service, port);
        }
        assert!(
            Instant::now() < deadline,
            "uvicorn workers never became ready:\n{}",
            log.join("\n")
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Seed 000 under a pre-fork master: FastAPI `async def` endpoints that block the loop (a sleep,
/// pure-Python CPU) in uvicorn workers. Each stall is reported under the worker that served it,
/// measured and explained; a worker SIGKILLed mid-recording keeps its stall and symbols, and its
/// replacement is followed.
#[test]
fn uvicorn_workers_stall_named_by_worker_pid() {
    require_root();
    let out = scratch_dir("uvicorn-workers-recording");
    let (mut service, port) = uvicorn_service("uvicorn-workers");
    let master = service.pid();
    let initial = children(master);
    assert_eq!(initial.len(), 2, "two workers: {initial:?}");
    let master_started = start_time(master).expect("master alive");

    let t_attach = monotonic_ns();
    let agent = Agent::record(
        &["--pid", &master.to_string(), "--threshold", "100ms"],
        &out,
    );
    for _ in 0..10 {
        let pid = get_json(port, "/ok")["pid"].as_u64().expect("pid");
        assert!(initial.contains(&(pid as u32)), "served by a worker: {pid}");
    }
    let block = get_json(port, "/block");
    for _ in 0..5 {
        get_json(port, "/ok");
    }
    let cpu = get_json(port, "/cpu");
    for _ in 0..5 {
        get_json(port, "/ok");
    }
    let truth = |answer: &Value| {
        (
            answer["pid"].as_u64().expect("pid") as u32,
            answer["start_ns"].as_u64().expect("start_ns"),
            answer["end_ns"].as_u64().expect("end_ns"),
        )
    };
    let (block_pid, block_start, block_end) = truth(&block);
    let (cpu_pid, cpu_start, cpu_end) = truth(&cpu);
    eprintln!("/block served by {block_pid}, /cpu by {cpu_pid}");
    thread::sleep(Duration::from_millis(200));

    // The worker that blocked is killed (it is ours: this test started the service).
    let victim = block_pid;
    let t_kill = monotonic_ns();
    // SAFETY: signalling a worker of the service this test started.
    assert_eq!(unsafe { libc::kill(victim as i32, libc::SIGKILL) }, 0);
    // The master notices and boots a replacement.
    let deadline = Instant::now() + Duration::from_secs(30);
    let replacement = loop {
        let fresh: Vec<u32> = booted_workers(&service.log())
            .into_iter()
            .filter(|p| !initial.contains(p))
            .collect();
        if let Some(&pid) = fresh.first() {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "no replacement worker booted:\n{}",
            service.log().join("\n")
        );
        thread::sleep(Duration::from_millis(100));
    };
    service.wait_stderr(
        &format!("[{replacement}] [INFO] Application startup complete"),
        Duration::from_secs(30),
    );
    for _ in 0..10 {
        get_json(port, "/ok");
    }
    thread::sleep(Duration::from_millis(200));
    let alive_at_stop = children(master);
    let t_stop = monotonic_ns();
    let result = agent.stop();
    let json = stopped_ok(&result);
    assert_eq!(start_time(master), Some(master_started), "same master");
    assert!(alive_at_stop.contains(&replacement), "{alive_at_stop:?}");
    assert!(!alive_at_stop.contains(&victim), "{alive_at_stop:?}");
    get_json(port, "/ok");

    let stalls = json["stalls"].as_array().expect("stalls").clone();
    for (what, pid, start, end) in [
        ("/block", block_pid, block_start, block_end),
        ("/cpu", cpu_pid, cpu_start, cpu_end),
    ] {
        let stall = stall_covering(&stalls, pid, start, end).unwrap_or_else(|| {
            panic!(
                "no stall of worker {pid} covers {what} [{start}, {end}]: {:#?}",
                stalls
                    .iter()
                    .map(|s| (&s["pid"], &s["tid"], &s["start_ns"], &s["duration_ns"]))
                    .collect::<Vec<_>>()
            )
        });
        let duration = ns_field(stall, "duration_ns");
        let measured = end - start;
        eprintln!(
            "{what}: worker {pid}, app measured {:.1} ms, stall {:.1} ms (on {:.1}, off {:.1}, rq {:.1})",
            measured as f64 / 1e6,
            duration as f64 / 1e6,
            ns_field(stall, "on_cpu_ns") as f64 / 1e6,
            ns_field(stall, "off_cpu_ns") as f64 / 1e6,
            ns_field(stall, "runqueue_ns") as f64 / 1e6,
        );
        // Held to what the app measured itself: on this shared 2-CPU VM a planted 300 ms
        // sleep has been seen to take 860 ms of wall time (host preemption), and the agent
        // must report that truth, not the nominal 300 ms.
        assert!(
            measured >= 300_000_000,
            "{what}: the app planted at least 300 ms"
        );
        assert!(
            duration.abs_diff(measured) <= tolerance_ns(measured),
            "{what} stall {duration} ns, the app measured {measured} ns (planted 300 ms): {stall:#}"
        );
        assert_eq!(
            ns_field(stall, "tid"),
            u64::from(pid),
            "on the worker's main (loop) thread: {stall:#}"
        );
        let thread = thread_entry(&json, pid, pid);
        assert!(
            thread.is_some_and(|t| t["loop"] == true),
            "worker {pid}'s main thread is a loop thread: {thread:?}"
        );
        let on = ns_field(stall, "on_cpu_ns");
        let off = ns_field(stall, "off_cpu_ns");
        let rq = ns_field(stall, "runqueue_ns");
        assert!(
            on + off + rq >= duration - duration / 10,
            "{what}: the breakdown accounts for the stall's time: {stall:#}"
        );
        // The heaviest stack that says what the thread did (running or blocked); under CPU
        // contention a CPU-bound handler also waits for the CPU (runqueue), which is not
        // what it did.
        let top = heaviest_of(stall, &["on_cpu", "off_cpu"]);
        if what == "/block" {
            assert!(off > on + rq, "/block is mostly off-CPU: {stall:#}");
            assert_eq!(top["kind"], "off_cpu", "{top:#}");
            let syscall = top["syscall"].as_str().unwrap_or("");
            assert!(
                SLEEPING_SYSCALLS.contains(&syscall),
                "/block blocked in a sleeping syscall, got {syscall:?}: {top:#}"
            );
        } else {
            assert!(
                on > off && off < duration / 10,
                "/cpu is CPU work, never blocked (on-CPU or waiting for a CPU): {stall:#}"
            );
            assert_eq!(top["kind"], "on_cpu", "{top:#}");
        }
        assert!(
            has_interpreter_frame(top),
            "{what}: CPython's frames symbolized on the dominant stack (worker {pid}{}): {:?}",
            if pid == victim { ", killed since" } else { "" },
            user_function_names(top)
        );
    }

    let processes = processes_by_pid(&json);
    let victim_record = processes
        .get(&u64::from(victim))
        .unwrap_or_else(|| panic!("the killed worker {victim} is in processes: {processes:#?}"));
    let exited = victim_record["exited_ns"]
        .as_u64()
        .unwrap_or_else(|| panic!("the killed worker {victim} has exited_ns: {victim_record:#}"));
    assert!(
        (t_kill..=t_stop).contains(&exited),
        "killed at {t_kill}, exited_ns {exited}, stopped at {t_stop}"
    );
    assert!(exited > block_end, "its stall came before its death");
    let replacement_record = processes.get(&u64::from(replacement)).unwrap_or_else(|| {
        panic!("the replacement worker {replacement} is in processes: {processes:#?}")
    });
    let started = replacement_record["started_ns"]
        .as_u64()
        .unwrap_or_else(|| {
            panic!("the replacement {replacement} has started_ns: {replacement_record:#}")
        });
    assert!(
        (t_kill..=t_stop).contains(&started),
        "replacement started_ns {started} after the kill {t_kill}"
    );
    assert!(
        replacement_record["exited_ns"].is_null(),
        "{replacement_record:#}"
    );
    for worker in initial.iter().filter(|&&w| w != victim) {
        let record = processes
            .get(&u64::from(*worker))
            .unwrap_or_else(|| panic!("worker {worker} in processes: {processes:#?}"));
        assert!(record["exited_ns"].is_null(), "{record:#}");
        assert!(
            record["started_ns"].as_u64().is_none_or(|s| s < t_attach),
            "{record:#}"
        );
    }
    assert!(processes.contains_key(&u64::from(master)));
}

/// A process in its own PID and mount namespaces (a container without its network namespace):
/// recorded by its host PID, its binary resolved through /proc/PID/root although that path
/// does not exist on the host, and reported under the PID the user gave.
#[test]
fn container_pid_and_mount_namespace() {
    require_root();
    let binary = c_target(
        "epoll_server",
        &[
            "-O2",
            "-g",
            "-fno-omit-frame-pointer",
            "-mno-omit-leaf-frame-pointer",
        ],
    );
    let dir = scratch_dir("container-ns");
    let out = scratch_dir("container-ns-recording");
    let mountpoint = dir.join("ns-root");
    std::fs::create_dir(&mountpoint).expect("mountpoint");
    let in_ns = mountpoint.join("server_in_ns");
    let mut service = Service::spawn(
        Command::new("unshare")
            .args(["--mount", "--pid", "--fork", "--mount-proc", "--propagation", "private"])
            .args([
                "sh",
                "-c",
                r#"mount -t tmpfs stallscope-test "$1" && cp "$2" "$1/server_in_ns" && exec "$1/server_in_ns" 0"#,
                "sh",
            ])
            .arg(&mountpoint)
            .arg(&binary),
    );
    let line = match service
        .stdout
        .wait_for("listening", Duration::from_secs(10))
    {
        Some(line) => line,
        None => panic!(
            "the server in the namespace did not start: {:#?}",
            service.stderr.collect(Duration::from_millis(200))
        ),
    };
    let port: u16 = line
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let unshare = service.pid();
    let host_pid = {
        let kids = children(unshare);
        assert_eq!(
            kids.len(),
            1,
            "unshare forked the namespace's init: {kids:?}"
        );
        *kids.first().expect("one child")
    };
    // It is what it should be: PID 1 of a new PID namespace, in another mount namespace, running
    // a binary the host cannot see.
    let nspid = status_field(host_pid, "NSpid").expect("NSpid");
    assert_eq!(
        nspid.split_whitespace().collect::<Vec<_>>(),
        [host_pid.to_string().as_str(), "1"],
        "host pid {host_pid} is pid 1 in its namespace"
    );
    let mnt_ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).expect("mnt ns");
    assert_ne!(mnt_ns(&host_pid.to_string()), mnt_ns("self"));
    assert_eq!(
        std::fs::read_link(format!("/proc/{host_pid}/exe")).expect("exe"),
        in_ns
    );
    assert!(
        !in_ns.exists(),
        "{} must exist only inside the namespace",
        in_ns.display()
    );

    let request = |line: &str| {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        stream
            .write_all(format!("{line}\n").as_bytes())
            .expect("send");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("answer");
        assert_eq!(answer.trim(), "ok");
    };
    let agent = Agent::record(
        &["--pid", &host_pid.to_string(), "--threshold", "100ms"],
        &out,
    );
    for _ in 0..10 {
        request("quick");
    }
    request("burn 200");
    for _ in 0..10 {
        request("quick");
    }
    thread::sleep(Duration::from_millis(200));
    let result = agent.stop();
    let json = stopped_ok(&result);
    request("quick");
    assert!(!in_ns.exists(), "the agent created nothing on the host");

    let planted_line = service
        .stdout
        .wait_for("planted burn", Duration::from_secs(5))
        .expect("the server reports its burn");
    let fields: Vec<u64> = planted_line
        .split_whitespace()
        .skip(2)
        .filter_map(|f| f.parse().ok())
        .collect();
    let (start, end) = (fields[0], fields[1]);
    let stalls = json["stalls"].as_array().expect("stalls").clone();
    assert_eq!(stalls.len(), 1, "only the planted stall: {stalls:#?}");
    for stall in &stalls {
        assert_eq!(
            ns_field(stall, "pid"),
            u64::from(host_pid),
            "reported under the host PID the user gave, not the namespace's: {stall:#}"
        );
        assert_eq!(ns_field(stall, "tid"), u64::from(host_pid), "{stall:#}");
    }
    let stall = stall_covering(&stalls, host_pid, start, end)
        .unwrap_or_else(|| panic!("no stall covers the burn [{start}, {end}]: {stalls:#?}"));
    let duration = ns_field(stall, "duration_ns");
    assert!(
        duration.abs_diff(end - start) <= tolerance_ns(end - start),
        "stall {duration} ns, the server measured {} ns",
        end - start
    );
    let (on, off) = (ns_field(stall, "on_cpu_ns"), ns_field(stall, "off_cpu_ns"));
    assert!(
        on > off && off < duration / 10,
        "a CPU burn: on-CPU (or waiting for a CPU), never blocked: {stall:#}"
    );
    let top = heaviest_of(stall, &["on_cpu", "off_cpu"]);
    let names = user_function_names(top);
    assert!(
        names.iter().take(4).any(|n| n == "burn_cpu"),
        "burn_cpu resolved from the binary inside the namespace: {names:?}\n{stall:#}"
    );
    assert!(
        names.iter().any(|n| n == "main"),
        "the stack reaches main: {names:?}"
    );
    let processes = processes_by_pid(&json);
    assert_eq!(
        processes.keys().copied().collect::<Vec<_>>(),
        [u64::from(host_pid)],
        "the one process, by its host PID: {processes:#?}"
    );
    let record = &processes[&u64::from(host_pid)];
    assert!(record["exited_ns"].is_null(), "{record:#}");
    let thread = thread_entry(&json, host_pid, host_pid);
    assert!(
        thread.is_some_and(|t| t["loop"] == true),
        "the server's loop thread, by host tid: {thread:?}"
    );
}

/// The seed's moment of looking: a worker's loop is blocked *now*, and the recording is stopped
/// while it still is (Ctrl-C on a stuck service). The open stall is reported as partial, under
/// that worker, with the time it has been blocked and where: the sleeping syscall and CPython's
/// frames above it.
#[test]
fn stopped_while_a_worker_loop_is_blocked() {
    require_root();
    let out = scratch_dir("uvicorn-blocked-at-stop-recording");
    let (service, port) = uvicorn_service("uvicorn-blocked-at-stop");
    let master = service.pid();
    let workers = children(master);
    let agent = Agent::record(
        &["--pid", &master.to_string(), "--threshold", "100ms"],
        &out,
    );
    let client = thread::spawn(move || get_json(port, "/block?seconds=2.5"));
    // Which worker is asleep in the handler: /proc/PID/syscall (read-only) shows the syscall
    // number it is blocked in, 230 = clock_nanosleep on x86-64.
    let deadline = Instant::now() + Duration::from_secs(5);
    let sleeper = loop {
        let asleep: Vec<u32> = workers
            .iter()
            .copied()
            .filter(|w| {
                std::fs::read_to_string(format!("/proc/{w}/syscall"))
                    .is_ok_and(|s| s.split_whitespace().next() == Some("230"))
            })
            .collect();
        if let [one] = asleep[..] {
            break one;
        }
        assert!(
            Instant::now() < deadline,
            "no worker went to sleep in /block"
        );
        thread::sleep(Duration::from_millis(20));
    };
    thread::sleep(Duration::from_millis(800));
    let t_stop = monotonic_ns();
    let result = agent.stop();
    let answer = client.join().expect("the /block request is answered");
    let json = stopped_ok(&result);
    let (pid, start_ns) = (
        answer["pid"].as_u64().expect("pid") as u32,
        answer["start_ns"].as_u64().expect("start_ns"),
    );
    assert_eq!(pid, sleeper, "the worker seen asleep served /block");
    let stalls = json["stalls"].as_array().expect("stalls");
    let stall = stalls
        .iter()
        .find(|s| {
            s["pid"].as_u64() == Some(u64::from(pid))
                && s["start_ns"]
                    .as_u64()
                    .is_some_and(|t| t <= start_ns + 20_000_000)
                && s["end_ns"]
                    .as_u64()
                    .is_some_and(|t| t + 20_000_000 >= start_ns)
        })
        .unwrap_or_else(|| {
            panic!("no stall of worker {pid} open at stop, blocked since {start_ns}: {stalls:#?}")
        });
    let duration = ns_field(stall, "duration_ns");
    let (on, off, rq) = (
        ns_field(stall, "on_cpu_ns"),
        ns_field(stall, "off_cpu_ns"),
        ns_field(stall, "runqueue_ns"),
    );
    eprintln!(
        "open at stop: worker {pid}, {:.1} ms (on {:.1}, off {:.1}, rq {:.1}), partial {}",
        duration as f64 / 1e6,
        on as f64 / 1e6,
        off as f64 / 1e6,
        rq as f64 / 1e6,
        stall["partial"]
    );
    assert_eq!(ns_field(stall, "tid"), u64::from(pid), "{stall:#}");
    assert_eq!(stall["partial"], true, "still open at stop: {stall:#}");
    assert!(
        duration >= 700_000_000 && stall["end_ns"].as_u64() <= Some(t_stop + 1_000_000_000),
        "from the request until the stop: {stall:#}"
    );
    assert!(
        off >= duration - duration / 5,
        "blocked the whole time it has been open: off-CPU {off} of {duration} ns \
         (on {on}, runqueue {rq}): {stall:#}"
    );
    let top = heaviest_of(stall, &["on_cpu", "off_cpu"]);
    assert_eq!(top["kind"], "off_cpu", "what it is blocked in: {stall:#}");
    assert!(
        SLEEPING_SYSCALLS.contains(&top["syscall"].as_str().unwrap_or("")),
        "blocked in the sleep: {top:#}"
    );
    assert!(
        has_interpreter_frame(top),
        "CPython's frames above the sleep: {:?}",
        user_function_names(top)
    );
}
