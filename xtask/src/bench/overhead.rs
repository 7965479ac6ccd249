//! Overhead on a loaded service: a FastAPI/uvicorn app and a tokio/hyper server under wrk on
//! loopback, in interleaved rounds of no profiler, stallscope at default settings, stallscope at
//! 999 Hz, py-spy at 999 Hz (Python only) and an offcputime-style bpftrace script. Requests/s
//! and p99 latency are compared with the unprofiled run of the same round; the stallscope runs
//! also give the agent's cost and lost events under load.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{
    Agent, Guard, Measured, Options, Spread, Window, interrupt, or_dash, rss_kib, start_agent,
    thousands, tools::Tools, wait_for_line, wait_timeout,
};

/// wrk's load: bounded concurrency (two threads, 32 connections), the latency distribution on.
const WRK_THREADS: &str = "2";
const WRK_CONNECTIONS: &str = "32";
/// py-spy and stallscope's high-rate runs sample at the same rate.
const HIGH_RATE: &str = "999";

/// bpftrace's offcputime-style script: at every switch-out of a target thread, its kernel and
/// user stacks (frame pointers) and the time; at its switch-in, off-CPU time summed by stack.
const OFFCPU_BT: &str = r#"tracepoint:sched:sched_switch
/pid == $1/
{
  @start[tid] = nsecs;
  @kstack[tid] = kstack;
  @ustack[tid] = ustack;
}

tracepoint:sched:sched_switch
/@start[args->next_pid]/
{
  $t = args->next_pid;
  @offcpu[@kstack[$t], @ustack[$t], args->next_comm] = sum(nsecs - @start[$t]);
  delete(@start[$t]);
}

BEGIN { printf("ready\n"); }
END { clear(@start); clear(@kstack); clear(@ustack); }
"#;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    None,
    Stallscope,
    Stallscope999,
    PySpy,
    Bpftrace,
}

impl Tool {
    fn label(self) -> &'static str {
        match self {
            Tool::None => "none",
            Tool::Stallscope => "stallscope, default (99 Hz)",
            Tool::Stallscope999 => "stallscope `--freq 999`",
            Tool::PySpy => "py-spy `record --nonblocking --rate 999`",
            Tool::Bpftrace => "bpftrace, offcputime-style",
        }
    }

    fn is_stallscope(self) -> bool {
        matches!(self, Tool::Stallscope | Tool::Stallscope999)
    }

    fn uses_bpf(self) -> bool {
        self.is_stallscope() || self == Tool::Bpftrace
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum App {
    FastApi,
    Tokio,
}

impl App {
    pub(super) fn label(self) -> &'static str {
        match self {
            App::FastApi => "FastAPI/uvicorn",
            App::Tokio => "tokio/hyper",
        }
    }

    fn description(self) -> &'static str {
        match self {
            App::FastApi => {
                "`tests/targets/service/fastapi_app.py` under uvicorn (one process, asyncio loop), `GET /ok` (an `async def` returning a small JSON object)"
            }
            App::Tokio => {
                "`bench/targets/tokio_http` (hyper 1 on tokio's multi-threaded runtime, a worker per CPU, release build without frame pointers), `GET /` (hashes 16 KiB, answers a line)"
            }
        }
    }

    fn tools(self) -> &'static [Tool] {
        match self {
            App::FastApi => &[
                Tool::None,
                Tool::Stallscope,
                Tool::Stallscope999,
                Tool::PySpy,
                Tool::Bpftrace,
            ],
            App::Tokio => &[
                Tool::None,
                Tool::Stallscope,
                Tool::Stallscope999,
                Tool::Bpftrace,
            ],
        }
    }

    pub fn path(self) -> &'static str {
        match self {
            App::FastApi => "/ok",
            App::Tokio => "/",
        }
    }
}

/// One wrk run.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct WrkResult {
    pub requests_per_s: f64,
    pub p99_ms: f64,
    /// Socket errors and non-2xx answers.
    pub errors: u64,
}

/// One run: a tool, a round, what wrk and the window saw.
#[derive(Clone, Debug)]
struct Run {
    tool: Tool,
    round: usize,
    wrk: WrkResult,
    /// CPU of the profiler's process (none for `Tool::None`) and the target's switches.
    measured: Measured,
    lost_events: Option<u64>,
    events_per_s: Option<f64>,
    rss_start_mib: Option<f64>,
    rss_end_mib: Option<f64>,
}

/// Per tool, over rounds.
#[derive(Clone, Debug)]
pub struct Row {
    pub tool: Tool,
    pub requests_ratio: Spread,
    pub p99_ratio: Spread,
    pub requests_per_s: Spread,
    pub p99_ms: Spread,
    pub cpu_percent: Spread,
    pub switches_per_s: Spread,
    pub ms_per_1000_switches: Spread,
    pub events_per_s: Spread,
    pub lost_events: u64,
    pub rss_start_mib: Spread,
    pub rss_end_mib: Spread,
    pub errors: u64,
    pub runs: usize,
    /// From a separate run with eBPF run-time statistics on (not among the rounds: the
    /// statistics cost a little on every program run): the tool's eBPF programs' time.
    pub kernel: Option<Measured>,
}

pub struct AppResult {
    pub name: &'static str,
    pub rows: Vec<Row>,
}

impl AppResult {
    pub fn row(&self, tool: Tool) -> Option<&Row> {
        self.rows.iter().find(|r| r.tool == tool)
    }
}

pub struct Overhead {
    pub apps: Vec<AppResult>,
    /// Section 1.
    pub markdown: String,
    /// Section 2's part: the agent under the HTTP load.
    pub agent_markdown: String,
    /// Section 4's part: lost events under the load test.
    pub loss_markdown: String,
}

pub fn run(opts: &Options, tools: &Tools, dir: &Path) -> Result<Overhead> {
    let mut apps = Vec::new();
    let mut markdown = format!(
        "Load: `wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{}s --latency` on loopback, after a warm-up run. {} interleaved round(s); within a round the tools run one after another, in an order rotated each round, against the same server process. Each profiler starts before the run (and is ready) and stops after it.\n",
        opts.wrk.as_secs(),
        opts.rounds
    );
    for app in [App::FastApi, App::Tokio] {
        eprintln!("bench: overhead: {}", app.label());
        let result = run_app(opts, tools, dir, app)
            .with_context(|| format!("overhead benchmark on {}", app.label()))?;
        markdown.push_str(&app_markdown(app, &result));
        apps.push(result);
    }
    let agent_markdown = agent_markdown(&apps);
    let loss_markdown = loss_markdown(&apps);
    Ok(Overhead {
        apps,
        markdown,
        agent_markdown,
        loss_markdown,
    })
}

fn run_app(opts: &Options, tools: &Tools, dir: &Path, app: App) -> Result<AppResult> {
    let server = start_server(app, tools, dir)?;
    let url = format!("http://127.0.0.1:{}{}", server.port, app.path());
    eprintln!("bench: overhead: {}: warm-up", app.label());
    run_wrk(&url, Duration::from_secs(if opts.quick { 1 } else { 3 }))?;
    let mut runs = Vec::new();
    let list = app.tools();
    for round in 0..opts.rounds {
        for i in 0..list.len() {
            let tool = list[(i + round) % list.len()];
            eprintln!(
                "bench: overhead: {}: round {}/{}: {}",
                app.label(),
                round + 1,
                opts.rounds,
                tool.label()
            );
            // One directory per app and tool, overwritten each round (recordings of a busy
            // service under load are tens of megabytes).
            let tag = format!(
                "{}-{}",
                match app {
                    App::FastApi => "fastapi",
                    App::Tokio => "tokio",
                },
                format!("{tool:?}").to_lowercase()
            );
            let run = one_run(opts, tools, dir, &server, &url, tool, round, &tag)
                .with_context(|| format!("{} run, round {}", tool.label(), round + 1))?;
            runs.push(run);
        }
    }
    let mut kernel = Vec::new();
    if let Some(_stats) = super::BpfStats::try_enable() {
        for &tool in list.iter().filter(|t| t.uses_bpf()) {
            eprintln!(
                "bench: overhead: {}: in-kernel time of {}",
                app.label(),
                tool.label()
            );
            let tag = format!("{}-{tool:?}-stats", app.label().replace('/', "-")).to_lowercase();
            let run = one_run(opts, tools, dir, &server, &url, tool, usize::MAX, &tag)
                .with_context(|| format!("{} run with eBPF statistics", tool.label()))?;
            kernel.push((tool, run.measured));
        }
    }
    drop(server);
    Ok(AppResult {
        name: app.label(),
        rows: list
            .iter()
            .map(|&tool| Row {
                kernel: kernel.iter().find(|(t, _)| *t == tool).map(|(_, m)| *m),
                ..summarize(tool, &runs)
            })
            .collect(),
    })
}

/// A profiler other than stallscope, running.
struct OtherTool {
    child: Child,
}

enum Running {
    Nothing,
    Agent(Agent),
    Other(OtherTool),
}

impl Running {
    fn pid(&self) -> Option<u32> {
        match self {
            Running::Nothing => None,
            Running::Agent(agent) => Some(agent.id()),
            Running::Other(other) => Some(other.child.id()),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn one_run(
    opts: &Options,
    tools: &Tools,
    dir: &Path,
    server: &Server,
    url: &str,
    tool: Tool,
    round: usize,
    tag: &str,
) -> Result<Run> {
    let pid = server.guard.id();
    let out = dir.join(format!("overhead-{tag}"));
    let running = start_tool(tools, tool, pid, &out)?;
    let rss_start_mib = match &running {
        Running::Agent(agent) => rss_kib(agent.id()).map(|k| k as f64 / 1024.0),
        _ => None,
    };
    // Let the profiler's start-up work (symbol tables, /proc scans) settle.
    thread::sleep(Duration::from_millis(300));
    let window = Window::start(running.pid(), pid);
    let wrk = run_wrk(url, opts.wrk);
    let measured = window.finish();
    let rss_end_mib = match &running {
        Running::Agent(agent) => rss_kib(agent.id()).map(|k| k as f64 / 1024.0),
        _ => None,
    };
    let (lost_events, events_per_s) = match running {
        Running::Nothing => (None, None),
        Running::Agent(agent) => {
            let facts = agent.stop()?;
            (
                Some(facts.lost_events),
                Some(facts.events as f64 / facts.recorded_s.max(1e-9)),
            )
        }
        Running::Other(mut other) => {
            interrupt(&other.child);
            // The round's numbers are in (wrk has finished): a peer that is slow to exit (bpftrace
            // printing and symbolizing its maps) is killed, not a reason to lose the benchmark.
            if let Err(err) = wait_timeout(&mut other.child, Duration::from_secs(60)) {
                eprintln!(
                    "bench: warning: stopping {}: {err:#} (killed)",
                    tool.label()
                );
            }
            (None, None)
        }
    };
    Ok(Run {
        tool,
        round,
        wrk: wrk?,
        measured,
        lost_events,
        events_per_s,
        rss_start_mib,
        rss_end_mib,
    })
}

fn start_tool(tools: &Tools, tool: Tool, pid: u32, out: &Path) -> Result<Running> {
    let pid_arg = pid.to_string();
    match tool {
        Tool::None => Ok(Running::Nothing),
        Tool::Stallscope => Ok(Running::Agent(start_agent(pid, out, &[])?)),
        Tool::Stallscope999 => Ok(Running::Agent(start_agent(
            pid,
            out,
            &["--freq", HIGH_RATE],
        )?)),
        Tool::PySpy => {
            std::fs::create_dir_all(out)?;
            // py-spy says it is sampling on stderr; `exec` keeps the shell's pid for py-spy.
            let mut child = Command::new("sh")
                .arg("-c")
                .arg("exec \"$0\" \"$@\" 2>&1")
                .arg(&tools.py_spy)
                .args(["record", "--nonblocking", "--rate", HIGH_RATE])
                .args(["--pid", &pid_arg, "--format", "raw", "--output"])
                .arg(out.join("py-spy.folded"))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .context("starting py-spy")?;
            ready_or_kill(&mut child, "py-spy", |l| l.contains("Sampling process"))?;
            Ok(Running::Other(OtherTool { child }))
        }
        Tool::Bpftrace => {
            std::fs::create_dir_all(out)?;
            let script = out.join("offcpu.bt");
            std::fs::write(&script, OFFCPU_BT)
                .with_context(|| format!("writing {}", script.display()))?;
            let log_path = out.join("bpftrace.stderr");
            let log = std::fs::File::create(&log_path)
                .with_context(|| format!("creating {}", log_path.display()))?;
            let mut child = Command::new("bpftrace")
                .arg(&script)
                .arg(&pid_arg)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(log)
                .spawn()
                .context("starting bpftrace")?;
            ready_or_kill(&mut child, "bpftrace", |l| l == "ready").with_context(|| {
                format!(
                    "bpftrace: {}",
                    std::fs::read_to_string(&log_path)
                        .unwrap_or_default()
                        .trim()
                )
            })?;
            Ok(Running::Other(OtherTool { child }))
        }
    }
}

fn ready_or_kill(child: &mut Child, what: &str, ready: impl Fn(&str) -> bool) -> Result<()> {
    if let Err(err) = wait_for_line(child, what, ready, Duration::from_secs(60)) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(err);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The services.

pub struct Server {
    pub guard: Guard,
    pub port: u16,
}

fn free_port() -> Result<u16> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

pub fn start_server(app: App, tools: &Tools, dir: &Path) -> Result<Server> {
    match app {
        App::FastApi => {
            let port = free_port()?;
            let log_path = dir.join("uvicorn.log");
            let log = std::fs::File::create(&log_path)
                .with_context(|| format!("creating {}", log_path.display()))?;
            let guard = Guard::spawn(
                Command::new(&tools.python)
                    .args(["-m", "uvicorn", "fastapi_app:app", "--app-dir"])
                    .arg(crate::root().join("tests/targets/service"))
                    .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                    .args(["--log-level", "warning", "--no-access-log"])
                    .stdout(Stdio::null())
                    .stderr(log),
            )?;
            let deadline = Instant::now() + Duration::from_secs(60);
            while !http_ok(port, app.path()) {
                if Instant::now() > deadline {
                    bail!(
                        "uvicorn did not answer on port {port} within 60 s (log: {})",
                        log_path.display()
                    );
                }
                thread::sleep(Duration::from_millis(100));
            }
            Ok(Server { guard, port })
        }
        App::Tokio => {
            let mut guard = Guard::spawn(
                Command::new(&tools.tokio_http)
                    .arg("0")
                    .stdout(Stdio::piped()),
            )?;
            let line = wait_for_line(
                guard.child(),
                "the tokio server",
                |l| l.starts_with("listening "),
                Duration::from_secs(20),
            )?;
            let port = line
                .trim_start_matches("listening ")
                .trim()
                .parse()
                .context("the tokio server's port")?;
            Ok(Server { guard, port })
        }
    }
}

/// One GET answered 200.
pub fn http_ok(port: u16, path: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = [0u8; 16];
    let mut got = 0;
    while got < answer.len() {
        match stream.read(&mut answer[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    answer[..got].starts_with(b"HTTP/1.1 200")
}

// ---------------------------------------------------------------------------------------------
// wrk.

pub(super) fn run_wrk(url: &str, duration: Duration) -> Result<WrkResult> {
    let out = Command::new("wrk")
        .args(["-t", WRK_THREADS, "-c", WRK_CONNECTIONS])
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .arg("--latency")
        .arg(url)
        .stdin(Stdio::null())
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "wrk failed ({}): {}{}",
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_wrk(&text)
}

/// wrk's duration units: `us`, `ms`, `s`, `m`, `h`.
fn parse_wrk_duration_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.trim().parse().ok()?;
    let scale = match unit {
        "us" => 1e-3,
        "ms" => 1.0,
        "s" => 1e3,
        "m" => 60e3,
        "h" => 3600e3,
        _ => return None,
    };
    Some(value * scale)
}

pub fn parse_wrk(text: &str) -> Result<WrkResult> {
    let requests_per_s = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in wrk's output:\n{text}"))?;
    let p99_ms = text
        .lines()
        .skip_while(|l| !l.contains("Latency Distribution"))
        .find_map(|l| l.trim().strip_prefix("99%"))
        .and_then(|v| parse_wrk_duration_ms(v.trim()))
        .with_context(|| format!("no 99% latency in wrk's output:\n{text}"))?;
    let numbers_after = |prefix: &str| -> u64 {
        text.lines()
            .filter_map(|l| l.trim().strip_prefix(prefix))
            .flat_map(|rest| {
                rest.split([',', ' '])
                    .filter_map(|w| w.parse::<u64>().ok())
                    .collect::<Vec<_>>()
            })
            .sum()
    };
    Ok(WrkResult {
        requests_per_s,
        p99_ms,
        errors: numbers_after("Socket errors:") + numbers_after("Non-2xx or 3xx responses:"),
    })
}

// ---------------------------------------------------------------------------------------------
// Summaries.

fn summarize(tool: Tool, runs: &[Run]) -> Row {
    let mine: Vec<&Run> = runs.iter().filter(|r| r.tool == tool).collect();
    let baseline = |round: usize| {
        runs.iter()
            .find(|r| r.tool == Tool::None && r.round == round)
    };
    let ratios = |f: fn(&WrkResult) -> f64| {
        Spread::of(
            &mine
                .iter()
                .filter_map(|r| Some(f(&r.wrk) / f(&baseline(r.round)?.wrk)))
                .collect::<Vec<_>>(),
        )
    };
    let spread = |f: &dyn Fn(&Run) -> Option<f64>| {
        Spread::of(&mine.iter().filter_map(|r| f(r)).collect::<Vec<_>>())
    };
    let has_process = tool != Tool::None;
    Row {
        tool,
        requests_ratio: ratios(|w| w.requests_per_s),
        p99_ratio: ratios(|w| w.p99_ms),
        requests_per_s: spread(&|r| Some(r.wrk.requests_per_s)),
        p99_ms: spread(&|r| Some(r.wrk.p99_ms)),
        cpu_percent: spread(&|r| has_process.then(|| r.measured.cpu_percent())),
        switches_per_s: spread(&|r| Some(r.measured.switches_per_s())),
        ms_per_1000_switches: spread(&|r| has_process.then(|| r.measured.ms_per_1000_switches())),
        events_per_s: spread(&|r| r.events_per_s),
        lost_events: mine.iter().filter_map(|r| r.lost_events).sum(),
        rss_start_mib: spread(&|r| r.rss_start_mib),
        rss_end_mib: spread(&|r| r.rss_end_mib),
        errors: mine.iter().map(|r| r.wrk.errors).sum(),
        runs: mine.len(),
        kernel: None,
    }
}

fn app_markdown(app: App, result: &AppResult) -> String {
    let mut text = format!(
        "\n### {}\n\n{}.\n\n| profiler | requests/s | requests/s vs none | p99 latency | p99 vs none | profiler process CPU (% of one core) | its eBPF programs (% of one core) |\n| --- | --- | --- | --- | --- | --- | --- |\n",
        app.label(),
        app.description()
    );
    for row in &result.rows {
        text.push_str(&format!(
            "| {} | {} | {} | {:.2} ms | {} | {} | {} |\n",
            row.tool.label(),
            thousands(row.requests_per_s.median),
            if row.tool == Tool::None {
                "1".into()
            } else {
                row.requests_ratio.show(3)
            },
            row.p99_ms.median,
            if row.tool == Tool::None {
                "1".into()
            } else {
                row.p99_ratio.show(2)
            },
            if row.tool == Tool::None {
                "-".into()
            } else {
                row.cpu_percent.show(1)
            },
            row.kernel
                .map_or_else(|| "-".into(), |m| or_dash(m.bpf_percent(), 1)),
        ));
    }
    let errors: u64 = result.rows.iter().map(|r| r.errors).sum();
    if errors > 0 {
        text.push_str(&format!(
            "\nwrk counted {errors} socket errors or non-2xx answers over all runs.\n"
        ));
    }
    if let Some(none) = result.row(Tool::None) {
        text.push_str(&format!(
            "\nThe service made {} context switches/s under this load (unprofiled, median).\n",
            thousands(none.switches_per_s.median)
        ));
    }
    text.push_str(
        "\nThe profiler's process CPU is its user-space side only. Its eBPF programs run in the kernel, charged to whichever task was running (the service, wrk, anyone: the in-kernel filter runs at every switch and syscall on the machine); their time comes from the kernel's eBPF statistics in one more run per tool, outside the rounds. py-spy's reads of the target's memory are its own CPU.\n",
    );
    text
}

fn agent_markdown(apps: &[AppResult]) -> String {
    let mut text = String::from(
        "\nThe agent under the HTTP load of section 1 (its stallscope runs; medians with the range over rounds; in-kernel time from the separate run with eBPF statistics):\n\n| service | setting | target switches/s | agent CPU (% of one core) | agent CPU per 1,000 target switches | eBPF programs (% of one core) | events/s received | agent RSS at start | agent RSS after the run |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for app in apps {
        for row in app.rows.iter().filter(|r| r.tool.is_stallscope()) {
            text.push_str(&format!(
                "| {} | {} | {} | {} | {} ms | {} | {} | {:.1} MiB | {:.1} MiB |\n",
                app.name,
                row.tool.label(),
                thousands(row.switches_per_s.median),
                row.cpu_percent.show(1),
                row.ms_per_1000_switches.show(2),
                row.kernel
                    .map_or_else(|| "-".into(), |m| or_dash(m.bpf_percent(), 1)),
                thousands(row.events_per_s.median),
                row.rss_start_mib.median,
                row.rss_end_mib.max,
            ));
        }
    }
    text
}

fn loss_markdown(apps: &[AppResult]) -> String {
    let mut text = String::from(
        "Under the load test of section 1 (4 MiB ring buffer, the default):\n\n| service | setting | runs | events/s received | lost events (all runs) |\n| --- | --- | --- | --- | --- |\n",
    );
    for app in apps {
        for row in app.rows.iter().filter(|r| r.tool.is_stallscope()) {
            text.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                app.name,
                row.tool.label(),
                row.runs,
                thousands(row.events_per_s.median),
                row.lost_events
            ));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK_OUTPUT: &str = "Running 5s test @ http://127.0.0.1:39863/
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   744.47us  529.24us   8.02ms   81.58%
    Req/Sec    22.70k     1.31k   26.09k    72.00%
  Latency Distribution
     50%  623.00us
     75%    0.92ms
     90%    1.36ms
     99%    2.73ms
  226081 requests in 5.00s, 20.70MB read
  Socket errors: connect 0, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 4
Requests/sec:  45186.60
Transfer/sec:      4.14MB
";

    #[test]
    fn parses_wrk() {
        let r = parse_wrk(WRK_OUTPUT).unwrap_or_default();
        assert_eq!(r.requests_per_s, 45186.60);
        assert!((r.p99_ms - 2.73).abs() < 1e-9);
        assert_eq!(r.errors, 9);
    }

    #[test]
    fn wrk_units() {
        assert_eq!(parse_wrk_duration_ms("623.00us"), Some(0.623));
        assert_eq!(parse_wrk_duration_ms("1.50s"), Some(1500.0));
        assert_eq!(parse_wrk_duration_ms("2.00m"), Some(120_000.0));
        assert_eq!(parse_wrk_duration_ms("12"), None);
    }

    #[test]
    fn wrk_without_latency_is_an_error() {
        assert!(parse_wrk("Requests/sec: 10\n").is_err());
    }
}
