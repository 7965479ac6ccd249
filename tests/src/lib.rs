//! Helpers for stallscope's integration tests: build and run real target programs, run the
//! real agent against them, and read what it wrote. Targets are killed when dropped (they are
//! ours); the agent is stopped the way a user stops it (SIGINT).
//!
//! These tests need root and a kernel with BPF; `cargo xtask test` runs them. A missing
//! privilege is a failure with a message, never a silent skip.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{
        Mutex, OnceLock,
        mpsc::{self, Receiver},
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate lives in the workspace")
        .to_path_buf()
}

/// The agent binary: $STALLSCOPE_BIN (set by `cargo xtask test`) or target/release/stallscope.
pub fn agent_bin() -> PathBuf {
    let path = std::env::var_os("STALLSCOPE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/release/stallscope"));
    assert!(
        path.exists(),
        "{} does not exist: run `cargo xtask test` (it builds the agent first)",
        path.display()
    );
    path
}

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "integration tests load eBPF programs: run them as root (`sudo -E cargo xtask test`)"
    );
}

/// Where each program the tests start comes from, so a missing one is named with its fix.
/// Setup (`cargo xtask setup`) installs the Debian packages named here; the rest come with the
/// machine image.
const PROGRAM_SOURCES: &[(&str, &str)] = &[
    (
        "bpftool",
        "Debian package bpftool, installed by `cargo xtask setup`",
    ),
    (
        "xmllint",
        "Debian package libxml2-utils, installed by `cargo xtask setup`",
    ),
    (
        "go",
        "Debian package golang-go, installed by `cargo xtask setup`",
    ),
    ("cc", "Debian package gcc, installed by `cargo xtask setup`"),
    ("python3", "the machine image's pyenv CPython"),
    ("setpriv", "Debian package util-linux"),
    ("unshare", "Debian package util-linux"),
    ("mount", "Debian package mount"),
    (
        "prometheus",
        "Debian package prometheus, installed by `cargo xtask setup`",
    ),
    ("sh", "the machine image (dash)"),
];

/// Running a program a test needs: a missing program is a failure that says which program and
/// how to get it, never a bare `expect` panic.
pub trait Needed {
    fn needed_output(&mut self) -> Output;
    fn needed_status(&mut self) -> ExitStatus;
    fn needed_spawn(&mut self) -> Child;
}

impl Needed for Command {
    fn needed_output(&mut self) -> Output {
        let result = self.output();
        explain_spawn(self, result)
    }

    fn needed_status(&mut self) -> ExitStatus {
        let result = self.status();
        explain_spawn(self, result)
    }

    fn needed_spawn(&mut self) -> Child {
        let result = self.spawn();
        explain_spawn(self, result)
    }
}

fn explain_spawn<T>(cmd: &Command, result: std::io::Result<T>) -> T {
    match result {
        Ok(value) => value,
        Err(err) => panic!("{}", missing_program_message(cmd, &err)),
    }
}

/// The one-line reason a program could not be started, with the fix when it is not installed.
pub fn missing_program_message(cmd: &Command, err: &std::io::Error) -> String {
    let program = cmd.get_program().to_string_lossy().into_owned();
    if err.kind() != std::io::ErrorKind::NotFound {
        return format!("cannot run `{program}`: {err}");
    }
    let name = Path::new(&program)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| program.clone());
    let source = PROGRAM_SOURCES
        .iter()
        .find(|(p, _)| *p == name)
        .map(|(_, source)| *source)
        .unwrap_or("see README's list of what setup installs");
    format!(
        "this test runs `{program}`, which is not installed ({source}): run `cargo xtask setup`"
    )
}

/// A fresh, empty directory for one test's outputs.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = workspace_root()
        .join("target/test-runs")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Compiles a C target from tests/targets once per test binary.
pub fn c_target(name: &str, flags: &[&str]) -> PathBuf {
    static BUILT: OnceLock<Mutex<Vec<(String, PathBuf)>>> = OnceLock::new();
    let built = BUILT.get_or_init(|| Mutex::new(Vec::new()));
    let mut built = built.lock().expect("lock");
    let key = format!("{name} {}", flags.join(" "));
    if let Some((_, path)) = built.iter().find(|(k, _)| *k == key) {
        return path.clone();
    }
    let dir = workspace_root().join("target/test-targets");
    std::fs::create_dir_all(&dir).expect("create target dir");
    let binary = dir.join(format!("{name}-{}", built.len()));
    let source = workspace_root().join(format!("tests/targets/{name}.c"));
    let status = Command::new("cc")
        .args(flags)
        .arg("-o")
        .arg(&binary)
        .arg(&source)
        .needed_status();
    assert!(status.success(), "compiling {}", source.display());
    built.push((key, binary.clone()));
    binary
}

/// Reads a child's stdout lines on a thread, so tests can wait for a line with a timeout.
pub struct Lines {
    rx: Receiver<String>,
    pub seen: Vec<String>,
}

impl Lines {
    pub fn spawn(reader: impl Read + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(reader).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines {
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a line containing `needle`.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
            return Some(line.clone());
        }
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return Some(line);
                    }
                }
                Err(_) => return None,
            }
        }
        None
    }

    /// Everything received so far (waits briefly for stragglers).
    pub fn collect(&mut self, settle: Duration) -> Vec<String> {
        while let Ok(line) = self.rx.recv_timeout(settle) {
            self.seen.push(line);
        }
        self.seen.clone()
    }
}

/// A process we started; killed when dropped.
pub struct Target {
    pub child: Child,
    pub stdout: Lines,
}

impl Target {
    pub fn spawn(cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .needed_spawn();
        let stdout = Lines::spawn(child.stdout.take().expect("stdout"));
        Target { child, stdout }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The bundled epoll server (tests/targets/epoll_server.c) with planted stalls.
pub struct EpollServer {
    pub target: Target,
    pub port: u16,
}

/// A stall the server planted, as it measured it itself (CLOCK_MONOTONIC ns).
#[derive(Clone, Debug)]
pub struct Planted {
    pub kind: String,
    pub start_ns: u64,
    pub end_ns: u64,
}

impl Planted {
    pub fn duration_ns(&self) -> u64 {
        self.end_ns - self.start_ns
    }
}

impl EpollServer {
    pub fn start(flags: &[&str]) -> Self {
        let binary = c_target("epoll_server", flags);
        let mut target = Target::spawn(Command::new(binary).arg("0"));
        let line = target
            .stdout
            .wait_for("listening", Duration::from_secs(10))
            .expect("server reports its port");
        let port = line
            .trim()
            .rsplit(' ')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port number");
        EpollServer { target, port }
    }

    /// Sends one request line and waits for the answer.
    pub fn request(&self, line: &str) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        stream
            .write_all(format!("{line}\n").as_bytes())
            .expect("send");
        let mut answer = String::new();
        BufReader::new(stream)
            .read_line(&mut answer)
            .expect("answer");
        assert_eq!(answer.trim(), "ok");
    }

    /// A bounded load: `quick_each` quick requests before each planted one, and after the last.
    pub fn plant(&self, planted: &[&str], quick_each: usize) {
        for request in planted {
            for _ in 0..quick_each {
                self.request("quick");
            }
            self.request(request);
        }
        for _ in 0..quick_each {
            self.request("quick");
        }
    }

    pub fn planted(&mut self) -> Vec<Planted> {
        planted_lines(&self.target.stdout.collect(Duration::from_millis(200)))
    }
}

/// The `planted KIND START_NS END_NS` lines a C target printed (other lines are skipped).
pub fn planted_lines(lines: &[String]) -> Vec<Planted> {
    lines
        .iter()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            (parts.next()? == "planted").then_some(())?;
            Some(Planted {
                kind: parts.next()?.to_string(),
                start_ns: parts.next()?.parse().ok()?,
                end_ns: parts.next()?.parse().ok()?,
            })
        })
        .collect()
}

/// The stall that contains a planted one, 20 ms of slack at each end (same clock:
/// CLOCK_MONOTONIC).
pub fn stall_containing<'a>(stalls: &'a [Value], planted: &Planted) -> Option<&'a Value> {
    stalls.iter().find(|s| {
        let start = s["start_ns"].as_u64().unwrap_or(u64::MAX);
        let end = s["end_ns"].as_u64().unwrap_or(0);
        start <= planted.start_ns + 20_000_000 && end + 20_000_000 >= planted.end_ns
    })
}

/// CLOCK_MONOTONIC now, the clock the agent reports in.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A loopback TCP port nobody listens on right now (the kernel picks it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Runs a step that prepares a test (a virtualenv, a pip install): its failure fails the test
/// with the step's output.
pub fn run_setup_step(cmd: &mut Command, what: &str) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({cmd:?}, {}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A nanosecond (or id) field of a stall or thread of stalls.json, which must be there.
pub fn ns_field(value: &Value, field: &str) -> u64 {
    value[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {value:#}"))
}

/// Python's `time.sleep`: `clock_nanosleep` from 3.11, `select` before.
pub const SLEEPING_SYSCALLS: &[&str] = &["clock_nanosleep", "nanosleep", "select", "pselect6"];

/// A running `stallscope record`.
pub struct Agent {
    child: Child,
    stderr: Lines,
    stdout: Lines,
    pub out_dir: PathBuf,
}

/// What the agent left: exit status, its output, and the recording.
pub struct AgentResult {
    pub status: ExitStatus,
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
    pub out_dir: PathBuf,
}

impl AgentResult {
    pub fn stalls_json(&self) -> Value {
        let path = self.out_dir.join("stalls.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "reading {}: {e}\nstderr: {:#?}\nstdout: {:#?}",
                path.display(),
                self.stderr,
                self.stdout
            )
        });
        serde_json::from_str(&text).expect("stalls.json is JSON")
    }
}

impl Agent {
    /// Starts `stallscope record ARGS --out DIR` and waits until it says it is recording.
    pub fn record(args: &[&str], out_dir: &Path) -> Self {
        Self::record_on(args, out_dir, None)
    }

    /// As [`Agent::record`], with the agent pinned to one CPU (as `taskset -c CPU` would).
    pub fn record_on(args: &[&str], out_dir: &Path, cpu: Option<usize>) -> Self {
        Self::start(args, out_dir, cpu, &[])
    }

    /// As [`Agent::record`], with these environment variables set for the agent.
    pub fn record_with_env(args: &[&str], out_dir: &Path, env: &[(&str, &str)]) -> Self {
        Self::start(args, out_dir, None, env)
    }

    fn start(args: &[&str], out_dir: &Path, cpu: Option<usize>, env: &[(&str, &str)]) -> Self {
        require_root();
        let mut command = Command::new(agent_bin());
        command.envs(env.iter().copied());
        if let Some(cpu) = cpu {
            use std::os::unix::process::CommandExt as _;
            // SAFETY: only sched_setaffinity (async-signal-safe) runs between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(cpu, &mut set);
                    if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = command
            .arg("record")
            .args(args)
            .arg("--out")
            .arg(out_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .expect("start stallscope");
        let mut stderr = Lines::spawn(child.stderr.take().expect("stderr"));
        let stdout = Lines::spawn(child.stdout.take().expect("stdout"));
        if stderr
            .wait_for("stallscope: recording", Duration::from_secs(30))
            .is_none()
        {
            let _ = child.kill();
            panic!(
                "stallscope did not start recording: {:#?}",
                stderr.collect(Duration::from_millis(500))
            );
        }
        Agent {
            child,
            stderr,
            stdout,
            out_dir: out_dir.to_path_buf(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops it like Ctrl-C does and waits for it to write its outputs.
    pub fn stop(self) -> AgentResult {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.wait()
    }

    /// Waits for it to finish on its own (--duration, or the targets exited).
    pub fn wait(mut self) -> AgentResult {
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "stallscope did not exit");
            thread::sleep(Duration::from_millis(50));
        };
        AgentResult {
            status,
            stdout: self.stdout.collect(Duration::from_millis(200)),
            stderr: self.stderr.collect(Duration::from_millis(200)),
            out_dir: self.out_dir.clone(),
        }
    }
}

/// The CPUs this process may run on (its affinity mask), in order.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: sched_getaffinity writes into a zeroed cpu_set_t of the size given.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

/// How far a measured stall may be from the target's own timing: max(10 %, 20 ms), as the
/// issues state.
pub fn tolerance_ns(truth_ns: u64) -> u64 {
    (truth_ns / 10).max(20_000_000)
}

/// Runs the agent to completion with the given arguments (for error cases).
pub fn run_agent(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(agent_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run stallscope");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Function names of a stack's frames, innermost first.
pub fn function_names(stack: &Value) -> Vec<String> {
    stack["frames"]
        .as_array()
        .map(|frames| {
            frames
                .iter()
                .filter_map(|f| f["function"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The user (non-kernel) function names of a stack, innermost first.
pub fn user_function_names(stack: &Value) -> Vec<String> {
    stack["frames"]
        .as_array()
        .map(|frames| {
            frames
                .iter()
                .filter(|f| f["kind"] != "kernel")
                .filter_map(|f| f["function"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The heaviest stack of a stall that the code itself accounts for (on-CPU, blocked, lock):
/// runqueue time measures the machine's contention, which on a shared 2-core CI machine can
/// outweigh a planted 200 ms burn without saying anything about the code.
pub fn dominant_code_stack(stall: &Value) -> &Value {
    stall["stacks"]
        .as_array()
        .and_then(|stacks| {
            stacks
                .iter()
                .filter(|s| s["kind"] != "runqueue")
                .max_by_key(|s| s["weight_ns"].as_u64().unwrap_or(0))
        })
        .unwrap_or(&Value::Null)
}

/// The heaviest stack of a stall.
pub fn dominant_stack(stall: &Value) -> &Value {
    stall["stacks"]
        .as_array()
        .and_then(|stacks| {
            stacks
                .iter()
                .max_by_key(|s| s["weight_ns"].as_u64().unwrap_or(0))
        })
        .unwrap_or(&Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_is_named_with_the_fix() {
        let absent = "bpftool-not-installed-here";
        let cmd = Command::new(absent);
        let err = std::io::Error::from(std::io::ErrorKind::NotFound);
        let message = missing_program_message(&cmd, &err);
        assert!(
            message.contains("`bpftool-not-installed-here`, which is not installed")
                && message.ends_with("run `cargo xtask setup`"),
            "{message}"
        );
        let known = missing_program_message(&Command::new("xmllint"), &err);
        assert!(known.contains("libxml2-utils"), "{known}");
    }

    #[test]
    fn needed_output_panics_with_the_message() {
        let panic = std::panic::catch_unwind(|| {
            Command::new("/nonexistent/stallscope-test-program").needed_output()
        })
        .expect_err("a missing program must fail the test");
        let text = panic.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(text.contains("cargo xtask setup"), "{text}");
    }
}
