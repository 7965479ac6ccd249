//! `cargo xtask bench`: benchmarks, never tests. Loopback only, bounded in time (the default run
//! takes about 15 minutes on a 2-core machine once tools and targets are built; `--quick`
//! about 3), as root. Writes `bench/RESULTS.md` (`--quick`: `target/bench/RESULTS-quick.md`)
//! and prints it. `STALLSCOPE_BIN=PATH` benchmarks that agent instead of building one.
//!
//! Sections, in the order of the results file:
//! 1. overhead on loaded HTTP services (`overhead`): FastAPI/uvicorn and a tokio/hyper server
//!    under wrk, interleaved rounds of no profiler, stallscope (default and 999 Hz), py-spy and
//!    bpftrace;
//! 2. agent cost (`costs`): CPU per second and per 1,000 target switches, RSS;
//! 3. cost to processes that are not followed (`costs`);
//! 4. event loss (`loss`): under the load test, and a sweep of switch rates;
//! 5. scale (`scale`): events/s from a 50-thread storm, agent CPU against the number of
//!    followed threads and processes;
//! 6. unwinding (`costs`), then the goals, met or missed by how much (`goals`).
//!
//! `--long` is the long-run memory check (`long_run`), written to `bench/LONG_RUN.md`
//! (`--service fastapi`: `bench/LONG_RUN_FASTAPI.md`); the main results quote the latest.
//!
//! The agent's eBPF programs run in the kernel, charged to whatever task was running; their
//! time is read from the kernel's eBPF statistics (`BpfStats`), switched on only for runs
//! whose measure is not the speed of something else.

mod compare;
mod costs;
mod goals;
mod long_run;
mod loss;
mod overhead;
mod scale;
mod tools;

#[cfg(test)]
pub use tools::APT_PACKAGES;

use std::{
    io::{BufRead, BufReader},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

pub use compare::CompareOptions;
pub use long_run::{Service, long_run};

use crate::{output, root, status};

/// Knobs of one benchmark run: the full run, or `--quick` (a smoke test of every piece).
pub struct Options {
    pub quick: bool,
    /// Interleaved rounds of the overhead benchmark.
    pub rounds: usize,
    /// Length of one wrk run.
    pub wrk: Duration,
    /// Measurement window of the loss sweep and scale runs.
    pub window: Duration,
}

impl Options {
    pub fn new(quick: bool, rounds: Option<usize>) -> Self {
        Options {
            quick,
            rounds: rounds.unwrap_or(if quick { 1 } else { 5 }).max(1),
            wrk: Duration::from_secs(if quick { 3 } else { 10 }),
            window: Duration::from_secs(if quick { 2 } else { 5 }),
        }
    }
}

pub fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the benchmarks load eBPF programs and install tools: run `cargo xtask bench` as root (sudo -E)"
        );
    }
    Ok(())
}

/// The agent under test: `STALLSCOPE_BIN` when set (to bench a given build), else the one
/// `cargo xtask build` makes.
pub fn agent_path() -> PathBuf {
    current_variant().map_or_else(default_agent_path, |v| v.binary)
}

/// The agent under test when no comparison switched it (see [`set_agent_variant`]).
pub fn default_agent_path() -> PathBuf {
    std::env::var_os("STALLSCOPE_BIN").map_or_else(crate::agent_path, PathBuf::from)
}

/// One way of running the agent in a side-by-side comparison: a binary, and the environment
/// and arguments added to every recording (the levers' switches, `--freq 999`).
#[derive(Clone, Debug)]
pub struct AgentVariant {
    pub binary: PathBuf,
    pub env: Vec<(&'static str, &'static str)>,
    pub args: Vec<&'static str>,
    /// Run as `stallscope watch --pid PID` (the always-on monitor, which writes no recording)
    /// instead of `record`.
    pub watch: bool,
}

/// The variant `--compare`/`--side-by-side` runs next (None: the default agent as it is).
static AGENT_VARIANT: Mutex<Option<AgentVariant>> = Mutex::new(None);

pub fn set_agent_variant(variant: Option<AgentVariant>) {
    if let Ok(mut guard) = AGENT_VARIANT.lock() {
        *guard = variant;
    }
}

fn current_variant() -> Option<AgentVariant> {
    AGENT_VARIANT.lock().ok().and_then(|guard| guard.clone())
}

/// `--side-by-side` / `--compare BASE`: variants of this build (and BASE) side by side (see the
/// `compare` module).
pub fn compare(opts: &Options, compare: &CompareOptions) -> Result<()> {
    compare::run(opts, compare)
}

/// Scratch space for targets and recordings.
fn scratch() -> Result<PathBuf> {
    let dir = root().join("target/bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// The results file as it grows, with progress on stderr.
struct Report {
    text: String,
    started: Instant,
}

impl Report {
    fn section(&mut self, title: &str, what: &str) {
        eprintln!(
            "bench: [{:>5.1} min] {what}",
            self.started.elapsed().as_secs_f64() / 60.0
        );
        self.text.push_str(&format!("\n## {title}\n\n"));
    }

    fn push(&mut self, markdown: &str) {
        self.text.push_str(markdown);
    }
}

pub fn run(opts: &Options) -> Result<()> {
    let dir = scratch()?;
    let mut report = Report {
        text: String::new(),
        started: Instant::now(),
    };
    let tools = tools::ensure(&dir)?;
    report.push(&format!(
        "# stallscope benchmarks\n\nMachine: {}\n\nReproduce: `cargo xtask bench` (as root; installs wrk, bpftrace and py-spy when missing).{}\n\nTools: {}. stallscope runs at default settings unless said (`--freq 99`, 4 MiB ring buffer, 32 KiB stack copies; `--quiet --format json`, which change only what is printed and written at the end). A target's *switches* are the kernel's count of its threads' context switches (voluntary + involuntary, from `/proc/PID/task/*/status`, what `pidstat -w` shows). Ratios are to the unprofiled run of the same round; spreads are min-max over rounds.\n",
        machine_line(),
        if opts.quick {
            " **Quick run (`--quick`): one round, short runs. A smoke test, not results.**"
        } else {
            ""
        },
        tools.versions()
    ));

    report.section(
        "1. Overhead on a loaded service",
        "overhead: FastAPI/uvicorn and tokio under wrk, interleaved rounds",
    );
    let overhead = overhead::run(opts, &tools, &dir)?;
    report.push(&overhead.markdown);

    report.section(
        "2. Agent cost",
        "agent cost: a followed ping-pong (and the HTTP runs above)",
    );
    // eBPF run-time statistics on for the agent-cost, loss and scale runs (not for the
    // throughput runs above or the unfollowed process below, whose speed is the measure).
    let stats = BpfStats::try_enable();
    let agent_cost = costs::agent_cost(opts, &dir)?;
    drop(stats);
    report.push(&agent_cost.markdown);
    report.push(&overhead.agent_markdown);
    report.push(&long_run::reference());

    report.section(
        "3. Cost to everyone else (a process that is not followed)",
        "cost to processes that are not followed: interleaved ping-pong runs",
    );
    let everyone_else = costs::everyone_else(opts, &dir)?;
    report.push(&everyone_else.markdown);

    report.section(
        "4. Event loss",
        "event loss: switch-rate sweep on a followed ping-pong",
    );
    report.push(&overhead.loss_markdown);
    let stats = BpfStats::try_enable();
    let sweep = loss::sweep(opts, &dir)?;
    report.push(&sweep.markdown);

    report.section(
        "5. Scale",
        "scale: a 50-thread storm, and 1/10/100 followed threads and processes",
    );
    let scale = scale::run(opts, &dir)?;
    drop(stats);
    report.push(&scale.markdown);

    report.section(
        "Unwinding (40-deep stacks, no frame pointers, 999 Hz)",
        "unwinding: one recording per stack-copy size",
    );
    report.push(&costs::unwinding(opts, &dir)?);

    report.section("6. Goals", "goals");
    report.push(&goals::table(&goals::Inputs {
        overhead: &overhead,
        agent_cost: &agent_cost,
        everyone_else: &everyone_else,
        sweep: &sweep,
        scale: &scale,
        long_runs: long_run::rss_at_minute(10),
    }));
    let minutes = report.started.elapsed().as_secs_f64() / 60.0;
    report.push(&format!("\nThis run took {minutes:.1} minutes.\n"));

    let path = if opts.quick {
        dir.join("RESULTS-quick.md")
    } else {
        root().join("bench/RESULTS.md")
    };
    std::fs::write(&path, &report.text).with_context(|| format!("writing {}", path.display()))?;
    println!("{}", report.text);
    eprintln!(
        "bench: written to {} ({minutes:.1} minutes)",
        path.display()
    );
    Ok(())
}

pub fn machine_line() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = output(Command::new("uname").arg("-r")).unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let date = output(Command::new("date").arg("+%Y-%m-%d")).unwrap_or_default();
    format!(
        "{} · {cores} cores · kernel {} · {}",
        cpu,
        kernel.trim(),
        date.trim()
    )
}

// ---------------------------------------------------------------------------------------------
// Processes we start.

/// A process we started, in its own process group, killed (the whole group) when dropped.
pub struct Guard {
    child: Child,
}

impl Guard {
    pub fn spawn(cmd: &mut Command) -> Result<Self> {
        let shown = format!("{cmd:?}");
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {shown}"))?;
        Ok(Guard { child })
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // SAFETY: signalling the process group of our own child.
        unsafe { libc::killpg(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// Reads a child's stdout until a line satisfies `ready` (returning it), then drains the rest
/// in the background so the child never blocks on a full pipe.
fn wait_for_line(
    child: &mut Child,
    what: &str,
    ready: impl Fn(&str) -> bool,
    timeout: Duration,
) -> Result<String> {
    let stdout = child
        .stdout
        .take()
        .with_context(|| format!("{what}: no stdout pipe"))?;
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                // Nobody listens any more: keep draining.
                continue;
            }
        }
    });
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if ready(&line) => return Ok(line),
            Ok(_) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                bail!("{what} did not become ready within {timeout:?}")
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                bail!("{what} exited before it was ready ({:?})", child.try_wait())
            }
        }
    }
}

/// Waits for a child to exit, at most `timeout`; kills it after that.
fn wait_timeout(child: &mut Child, timeout: Duration) -> Result<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("process {} did not exit within {timeout:?}", child.id());
        }
        thread::sleep(Duration::from_millis(20));
    }
}

fn interrupt(child: &Child) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
}

/// Builds a C benchmark target from `bench/targets/NAME.c`.
fn build_c_target(dir: &Path, name: &str, flags: &[&str]) -> Result<PathBuf> {
    let binary = dir.join(name);
    status(
        Command::new("cc")
            .args(flags)
            .arg("-o")
            .arg(&binary)
            .arg(root().join(format!("bench/targets/{name}.c"))),
    )?;
    Ok(binary)
}

/// `bench/targets/switcher.c`: context switches at a chosen rate (see its header), started and
/// ready.
fn start_switcher(binary: &Path, mode: &str, count: u32, rate: u64) -> Result<Guard> {
    let mut guard = Guard::spawn(
        Command::new(binary)
            .args([mode, &count.to_string(), &rate.to_string(), "900"])
            .stdout(Stdio::piped()),
    )?;
    wait_for_line(
        guard.child(),
        "the switcher target",
        |l| l == "ready",
        Duration::from_secs(20),
    )?;
    Ok(guard)
}

// ---------------------------------------------------------------------------------------------
// The agent.

/// A running `stallscope record`.
pub struct Agent {
    child: Child,
    out: PathBuf,
    stderr: Arc<Mutex<Vec<String>>>,
    /// When it said it was recording.
    started: Instant,
    /// A `watch`: it writes no recording and runs until it is stopped.
    watch: bool,
}

/// What a recording says about itself, from `stalls.json` and `events.bin`.
#[derive(Clone, Copy, Debug, Default)]
pub struct RecordingFacts {
    pub lost_events: u64,
    /// Events the agent received and processed (saved to events.bin, or counted as not saved).
    pub events: u64,
    pub recorded_s: f64,
}

/// Size of one record in events.bin (`profiler_common::Event`, asserted to be 80 bytes there).
const EVENT_RECORD_BYTES: u64 = 80;

/// Starts the agent on `pid` (its threads and children followed) and waits until it records.
pub fn start_agent(pid: u32, out: &Path, extra: &[&str]) -> Result<Agent> {
    start_agent_niced(pid, out, extra, 0)
}

/// [`start_agent`] at a nice value (negative: ahead of a busy target).
pub fn start_agent_niced(pid: u32, out: &Path, extra: &[&str], nice: i32) -> Result<Agent> {
    let _ = std::fs::remove_dir_all(out);
    let variant = current_variant();
    let mut command = if nice == 0 {
        Command::new(agent_path())
    } else {
        // nice execs the agent: same pid.
        let mut command = Command::new("nice");
        command.args(["-n", &nice.to_string()]).arg(agent_path());
        command
    };
    let watch = variant.as_ref().is_some_and(|v| v.watch);
    let pid = pid.to_string();
    if watch {
        command.args(["watch", "--pid", &pid, "--quiet"]);
    } else {
        command.args(["record", "--pid", &pid, "--quiet", "--format", "json"]);
    }
    command
        .args(extra)
        .args(variant.iter().flat_map(|v| v.args.iter()))
        .envs(variant.iter().flat_map(|v| v.env.iter().copied()));
    if !watch {
        command.arg("--out").arg(out);
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting stallscope")?;
    let stderr = child.stderr.take().context("agent stderr")?;
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let (tx, rx) = std::sync::mpsc::channel();
    let kept = lines.clone();
    thread::spawn(move || {
        let mut announced = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !announced
                && (line.contains("stallscope: recording") || line.contains("stallscope: watching"))
            {
                announced = true;
                let _ = tx.send(());
            }
            if let Ok(mut kept) = kept.lock()
                && kept.len() < 200
            {
                kept.push(line);
            }
        }
    });
    let mut agent = Agent {
        child,
        out: out.to_path_buf(),
        stderr: lines,
        started: Instant::now(),
        watch,
    };
    if rx.recv_timeout(Duration::from_secs(60)).is_err() {
        let _ = agent.child.kill();
        let status = agent.child.wait();
        bail!(
            "stallscope did not start recording ({status:?}): {}",
            agent.stderr_text()
        );
    }
    agent.started = Instant::now();
    Ok(agent)
}

impl Agent {
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The process itself, for a recording that ends by `--duration`.
    pub fn into_child(self) -> Child {
        self.child
    }

    fn stderr_text(&self) -> String {
        self.stderr
            .lock()
            .map(|l| l.join(" | "))
            .unwrap_or_default()
    }

    /// Ctrl-C, then what the recording says about itself.
    pub fn stop(mut self) -> Result<RecordingFacts> {
        interrupt(&self.child);
        self.finish()
    }

    /// Ends a recording by ending its target: the target is killed and the agent, seeing every
    /// target gone, stops by itself. Nothing is recorded after the target, so nothing can be
    /// lost while the agent writes its outputs (its eBPF programs stay attached until it exits,
    /// and the kernel counts what a busy target sends meanwhile as lost, which stopping by
    /// Ctrl-C would add to the recording's losses). Events per second are over the time from
    /// the agent's start to the kill.
    pub fn stop_with_target(mut self, target: Guard) -> Result<RecordingFacts> {
        let recording = self.started.elapsed().as_secs_f64();
        drop(target);
        if self.watch {
            // watch outlives its targets: it is stopped as systemd would.
            interrupt(&self.child);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait()?.is_none() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        if self.child.try_wait()?.is_none() {
            interrupt(&self.child);
        }
        Ok(RecordingFacts {
            recorded_s: recording,
            ..self.finish()?
        })
    }

    /// For a recording that ends by itself (`--duration`, or its targets exited).
    pub fn wait_for_exit(mut self) -> Result<RecordingFacts> {
        self.finish()
    }

    fn finish(&mut self) -> Result<RecordingFacts> {
        let status = wait_timeout(&mut self.child, Duration::from_secs(180))?;
        if !status.success() {
            bail!("stallscope exited with {status}: {}", self.stderr_text());
        }
        if self.watch {
            return Ok(RecordingFacts::default());
        }
        recording_facts(&self.out)
    }

    pub fn events_per_s(facts: &RecordingFacts) -> f64 {
        facts.events as f64 / facts.recorded_s.max(1e-9)
    }
}

fn recording_facts(out: &Path) -> Result<RecordingFacts> {
    let path = out.join("stalls.json");
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("parsing {}", path.display()))?;
    let saved_bytes = std::fs::metadata(out.join("events.bin")).map_or(0, |m| m.len());
    if !saved_bytes.is_multiple_of(EVENT_RECORD_BYTES) {
        bail!(
            "{}/events.bin is not a whole number of {EVENT_RECORD_BYTES}-byte events: has the event layout changed? (xtask/src/bench/mod.rs)",
            out.display()
        );
    }
    Ok(RecordingFacts {
        lost_events: json["lost_events"].as_u64().unwrap_or(0),
        events: saved_bytes / EVENT_RECORD_BYTES
            + json["drops"]["events_not_saved"].as_u64().unwrap_or(0),
        recorded_s: json["recorded_ns"].as_u64().unwrap_or(0) as f64 / 1e9,
    })
}

// ---------------------------------------------------------------------------------------------
// Measuring.

/// User + system CPU time of a process (all its threads), in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?)
}

pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Processes whose parent is `pid`, recursively.
fn descendants(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
                continue;
            };
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse().ok());
            if let Some(ppid) = ppid {
                parents.push((child, ppid));
            }
        }
    }
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(c, _)| *c),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// Context switches of every thread of `pid` and of its descendants, as the kernel counts them.
pub fn target_switches(pid: u32) -> u64 {
    let mut total = 0;
    for process in std::iter::once(pid).chain(descendants(pid)) {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{process}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
                continue;
            };
            total += status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    total
}

/// Run time of the eBPF programs a process holds, summed (`run_time_ns` in the fdinfo of its
/// program fds): counted by the kernel only while a [`BpfStats`] is held, 0 otherwise.
pub fn bpf_run_ns(pid: u32) -> u64 {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return 0;
    };
    fds.flatten()
        .filter_map(|fd| std::fs::read_to_string(fd.path()).ok())
        .filter(|info| info.contains("prog_type:"))
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("run_time_ns:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum()
}

/// The kernel's accounting of eBPF program run time (`BPF_ENABLE_STATS`), on while this is
/// held and off again when it is dropped or the bench dies (nothing to restore by hand). It
/// costs two clock reads per program run, so the throughput runs go without it.
pub struct BpfStats {
    _fd: std::os::fd::OwnedFd,
}

impl BpfStats {
    pub fn enable() -> Result<Self> {
        const BPF_ENABLE_STATS: libc::c_long = 32;
        /// `union bpf_attr`'s `enable_stats`: the type, BPF_STATS_RUN_TIME (0).
        #[repr(C)]
        struct EnableStats {
            kind: u32,
        }
        let attr = EnableStats { kind: 0 };
        // SAFETY: the kernel reads `size_of::<EnableStats>()` bytes from a valid pointer.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_ENABLE_STATS,
                &attr as *const EnableStats,
                std::mem::size_of::<EnableStats>(),
            )
        };
        if fd < 0 {
            bail!(
                "enabling eBPF run-time statistics: {}",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: the kernel returned a new file descriptor, now owned here only.
        let fd =
            unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
        Ok(BpfStats { _fd: fd })
    }

    /// Enabled, or `None` with a note on stderr (older kernels): the in-kernel columns then
    /// read "-".
    pub fn try_enable() -> Option<Self> {
        match Self::enable() {
            Ok(stats) => Some(stats),
            Err(err) => {
                eprintln!("bench: {err:#}; in-kernel times will not be shown");
                None
            }
        }
    }
}

/// CPU time of one process (and the run time of the eBPF programs it holds) and the context
/// switches of another, over a window.
pub struct Window {
    started: Instant,
    cpu_pid: Option<u32>,
    ticks: u64,
    bpf_ns: u64,
    target: u32,
    switches: u64,
}

/// What a [`Window`] saw.
#[derive(Clone, Copy, Debug, Default)]
pub struct Measured {
    pub seconds: f64,
    /// CPU time of the measured process, seconds.
    pub cpu_s: f64,
    /// Run time of its eBPF programs, seconds (0 unless [`BpfStats`] were on).
    pub bpf_s: f64,
    pub switches: u64,
}

impl Measured {
    pub fn cpu_percent(&self) -> f64 {
        100.0 * self.cpu_s / self.seconds.max(1e-9)
    }

    /// In-kernel time of the process's eBPF programs, % of one core.
    pub fn bpf_percent(&self) -> f64 {
        100.0 * self.bpf_s / self.seconds.max(1e-9)
    }

    pub fn switches_per_s(&self) -> f64 {
        self.switches as f64 / self.seconds.max(1e-9)
    }

    /// Milliseconds of CPU per 1,000 target switches.
    pub fn ms_per_1000_switches(&self) -> f64 {
        1e6 * self.cpu_s / (self.switches.max(1) as f64)
    }

    /// Milliseconds of eBPF program time per 1,000 target switches.
    pub fn bpf_ms_per_1000_switches(&self) -> f64 {
        1e6 * self.bpf_s / (self.switches.max(1) as f64)
    }
}

impl Window {
    pub fn start(cpu_pid: Option<u32>, target: u32) -> Self {
        Window {
            started: Instant::now(),
            cpu_pid,
            ticks: cpu_pid.and_then(cpu_ticks).unwrap_or(0),
            bpf_ns: cpu_pid.map_or(0, bpf_run_ns),
            target,
            switches: target_switches(target),
        }
    }

    pub fn finish(self) -> Measured {
        let ticks = self.cpu_pid.and_then(cpu_ticks).unwrap_or(0);
        let bpf_ns = self.cpu_pid.map_or(0, bpf_run_ns);
        Measured {
            seconds: self.started.elapsed().as_secs_f64(),
            cpu_s: ticks.saturating_sub(self.ticks) as f64 / ticks_per_second(),
            bpf_s: bpf_ns.saturating_sub(self.bpf_ns) as f64 / 1e9,
            switches: target_switches(self.target).saturating_sub(self.switches),
        }
    }
}

/// "-" for a figure that was not measured (0 or not finite), else with `decimals` digits.
pub fn or_dash(value: f64, decimals: usize) -> String {
    if value.is_finite() && value > 0.0 {
        format!("{value:.decimals$}")
    } else {
        "-".into()
    }
}

/// Median and range of a few measurements.
#[derive(Clone, Copy, Debug, Default)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Spread {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        if sorted.is_empty() {
            return Spread {
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
            };
        }
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Spread {
            median,
            min: sorted[0],
            max: sorted[n - 1],
        }
    }

    /// `median (min-max)` with `decimals` digits.
    pub fn show(&self, decimals: usize) -> String {
        format!(
            "{:.d$} ({:.d$}-{:.d$})",
            self.median,
            self.min,
            self.max,
            d = decimals
        )
    }
}

/// 12345.6 -> "12,346".
pub fn thousands(value: f64) -> String {
    if !value.is_finite() {
        return "-".into();
    }
    let digits = format!("{:.0}", value.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if value < 0.0 && digits != "0" {
        out.insert(0, '-');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_of_odd_and_even_counts() {
        let s = Spread::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let s = Spread::of(&[4.0, 1.0, 2.0, 3.0]);
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 4.0));
        assert!(Spread::of(&[]).median.is_nan());
    }

    #[test]
    fn the_ping_pong_prints_wall_then_cpu_time() {
        assert_eq!(
            compare::pingpong_ns("1338462557 957618044\n").ok(),
            Some((1338462557, 957618044))
        );
        // A ping-pong built before it printed CPU time, or garbage: an error, not a zero.
        for bad in ["1338462557\n", "", "12 x"] {
            assert!(compare::pingpong_ns(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1234.0), "1,234");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
        assert_eq!(thousands(-4321.0), "-4,321");
    }
}
