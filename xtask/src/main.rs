//! Developer tasks: `cargo xtask setup | build | test | demo`.
//!
//! `setup` makes a bare machine of this kind able to build and test stallscope, idempotently:
//! each step checks first, says "ok" and skips when its piece is there, and fails with the
//! command to run by hand when it cannot install it.

use std::{
    env,
    io::{BufRead, BufReader, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "stallscope developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build needs (apt packages, nightly rust-src, bpf-linker).
    Setup,
    /// setup, then build the agent (release).
    Build,
    /// setup, build, then run every test: unit tests and integration tests on real processes.
    Test {
        /// Only run tests whose name contains this.
        filter: Option<String>,
    },
    /// setup, build, then record a bundled server with a planted stall and show the result.
    Demo,
    /// Benchmarks (never tests): unwinding cost and stack-copy sizes; writes bench/RESULTS.md.
    Bench {
        /// Also run the long-run memory check: a 30-minute recording of a busy server, with the
        /// agent's RSS sampled every minute (written to bench/LONG_RUN.md).
        #[arg(long)]
        long: bool,
        /// Length of the long run in minutes.
        #[arg(long, default_value_t = 30)]
        minutes: u64,
    },
}

/// Debian packages: LLVM for bpf-linker, a C compiler for the test targets, and the tools the
/// tests use to check our outputs.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "gcc",
    "libc6-dev",
    // glibc's debug symbols, so stacks name start_thread, clone3, __libc_start_call_main.
    "libc6-dbg",
    // Real consumers of our outputs in the tests: `go tool pprof`, xmllint (JUnit XSD, SVG).
    "golang-go",
    "libxml2-utils",
];

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.task {
        Task::Setup => setup(),
        Task::Build => {
            setup()?;
            build()
        }
        Task::Test { filter } => {
            setup()?;
            build()?;
            test(filter.as_deref())
        }
        Task::Demo => {
            setup()?;
            build()?;
            demo()
        }
        Task::Bench { long, minutes } => {
            setup()?;
            build()?;
            if long {
                bench_long_run(minutes)
            } else {
                bench()
            }
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn status(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn setup() -> Result<()> {
    let started = Instant::now();
    setup_apt()?;
    setup_rust_src()?;
    setup_bpf_linker()?;
    eprintln!("setup: done in {:.0?}", started.elapsed());
    Ok(())
}

fn apt_installed(package: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|s| s.contains("install ok installed"))
}

fn setup_apt() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !apt_installed(p))
        .collect();
    if missing.is_empty() {
        eprintln!(
            "setup: ok: apt packages present ({})",
            APT_PACKAGES.join(", ")
        );
        return Ok(());
    }
    eprintln!("setup: installing apt packages: {}", missing.join(" "));
    status(Command::new("apt-get").args(["update", "-qq"]))
        .context("apt-get update (are you root?)")?;
    status(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| {
        format!(
            "installing {}; try `apt-get install {}`",
            missing.join(" "),
            missing.join(" ")
        )
    })
}

fn setup_rust_src() -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]));
    match installed {
        Some(list) if list.lines().any(|l| l.starts_with("rust-src")) => {
            eprintln!("setup: ok: nightly toolchain with rust-src present");
            Ok(())
        }
        Some(_) => {
            eprintln!("setup: adding rust-src to the nightly toolchain");
            status(Command::new("rustup").args([
                "component",
                "add",
                "rust-src",
                "--toolchain",
                "nightly",
            ]))
        }
        None => {
            eprintln!("setup: installing the nightly toolchain (minimal, with rust-src)");
            status(Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]))
            .context("the eBPF programs need a nightly Rust toolchain with rust-src")
        }
    }
}

fn setup_bpf_linker() -> Result<()> {
    if let Some(version) = output(Command::new("bpf-linker").arg("--version")) {
        eprintln!("setup: ok: {} present", version.trim());
        return Ok(());
    }
    eprintln!("setup: building bpf-linker against Debian's LLVM 22 (about 3 minutes)");
    // The default feature downloads a prebuilt LLVM, which cannot be fetched here; link the
    // system LLVM instead.
    status(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
    )
    .context("installing bpf-linker; see TOOLCHAIN notes in README")
}

fn cargo() -> Command {
    let mut cmd = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

fn agent_path() -> PathBuf {
    root().join("target/release/stallscope")
}

fn build() -> Result<()> {
    let started = Instant::now();
    status(cargo().args(["build", "--release", "-p", "profiler-user"]))?;
    eprintln!(
        "build: {} ({:.0?})",
        agent_path().display(),
        started.elapsed()
    );
    Ok(())
}

fn test(filter: Option<&str>) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the integration tests load eBPF programs: run `cargo xtask test` as root (sudo -E)");
    }
    let filter: Vec<&str> = filter.into_iter().collect();
    status(
        cargo()
            .args([
                "test",
                "--release",
                "-p",
                "profiler-common",
                "-p",
                "profiler-user",
                "-p",
                "xtask",
            ])
            .args(&filter),
    )
    .context("unit tests failed")?;
    status(
        cargo()
            .args(["test", "--release", "-p", "stallscope-tests", "--"])
            .args(&filter)
            .arg("--test-threads=1")
            .env("STALLSCOPE_BIN", agent_path()),
    )
    .context("integration tests failed")
}

/// Builds the bundled epoll server with planted stalls.
fn build_demo_server(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let binary = dir.join("epoll_server");
    status(
        Command::new("cc")
            .args([
                "-O2",
                "-g",
                "-fno-omit-frame-pointer",
                "-mno-omit-leaf-frame-pointer",
                "-o",
            ])
            .arg(&binary)
            .arg(root().join("tests/targets/epoll_server.c")),
    )?;
    Ok(binary)
}

fn send(port: u16, line: &str) -> Result<()> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    Ok(())
}

fn demo() -> Result<()> {
    let dir = root().join("target/demo");
    let server_bin = build_demo_server(&dir)?;
    let mut server = Command::new(&server_bin)
        .arg("0")
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the demo server")?;
    let mut server_out = BufReader::new(server.stdout.take().context("server stdout")?);
    let mut first = String::new();
    server_out.read_line(&mut first)?;
    let port: u16 = first
        .trim()
        .strip_prefix("listening ")
        .and_then(|p| p.parse().ok())
        .context("demo server did not report its port")?;
    let pid = server.id();
    eprintln!(
        "demo: started epoll_server (pid {pid}) on 127.0.0.1:{port}; it burns CPU for 250 ms in burn_cpu() when asked"
    );
    let out_dir = dir.join("recording");
    let mut agent = Command::new(agent_path())
        .args([
            "record",
            "--pid",
            &pid.to_string(),
            "--duration",
            "5s",
            "--out",
        ])
        .arg(&out_dir)
        .stderr(Stdio::piped())
        .spawn()
        .context("starting stallscope")?;
    let agent_err = BufReader::new(agent.stderr.take().context("agent stderr")?);
    let mut ready = false;
    let mut lines = agent_err.lines();
    for line in lines.by_ref() {
        let line = line?;
        eprintln!("{line}");
        if line.contains("stallscope: recording") {
            ready = true;
            break;
        }
    }
    thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            eprintln!("{line}");
        }
    });
    if ready {
        eprintln!("demo: sending requests: quick ones, and one that stalls the loop");
        for round in 0..2 {
            for _ in 0..20 {
                send(port, "quick\n")?;
            }
            send(
                port,
                if round == 0 {
                    "burn 250\n"
                } else {
                    "sleep 200\n"
                },
            )?;
            thread::sleep(Duration::from_millis(300));
        }
    }
    let status = agent.wait()?;
    let _ = server.kill();
    let _ = server.wait();
    if !status.success() {
        bail!("stallscope exited with {status}");
    }
    eprintln!(
        "demo: outputs are in {} (open flamegraph.svg in a browser)",
        out_dir.display()
    );
    Ok(())
}

/// Unwinding: the agent records a CPU-bound process whose every sample is a 40-deep stack built
/// without frame pointers, at 999 Hz, once per stack-copy size. From the agent's own counters:
/// stacks unwound per second of agent unwinding time (one core, caches warm after the first
/// few), bytes copied per sample, frames per stack and how many unwinds stopped short.
fn bench_unwinding(dir: &Path) -> Result<String> {
    let target_bin = dir.join("deep_burn");
    status(
        Command::new("cc")
            .args(["-O2", "-g", "-fomit-frame-pointer", "-o"])
            .arg(&target_bin)
            .arg(root().join("bench/targets/deep_burn.c")),
    )?;
    let mut target = Command::new(&target_bin)
        .spawn()
        .context("starting the bench target")?;
    let pid = target.id().to_string();
    let mut table = String::from(
        "| stack copy | stacks | stacks/s (one core) | bytes copied / sample | frames / stack | stopped short |\n| --- | --- | --- | --- | --- | --- |\n",
    );
    let result = (|| -> Result<()> {
        for bytes in [8192u32, 16384, 32768] {
            let out = dir.join(format!("unwind-{bytes}"));
            let _ = std::fs::remove_dir_all(&out);
            status(
                Command::new(agent_path())
                    .args([
                        "record",
                        "--pid",
                        &pid,
                        "--duration",
                        "6s",
                        "--freq",
                        "999",
                        "--quiet",
                    ])
                    .args([
                        "--stack-bytes",
                        &bytes.to_string(),
                        "--format",
                        "json",
                        "--out",
                    ])
                    .arg(&out)
                    .stdout(Stdio::null()),
            )?;
            let json: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(out.join("stalls.json")).context("stalls.json")?,
            )?;
            let u = &json["unwind"];
            let n = |k: &str| u[k].as_u64().unwrap_or(0);
            let stacks = n("stacks").max(1);
            let per_second = stacks as f64 / (n("unwind_ns").max(1) as f64 / 1e9);
            table.push_str(&format!(
                "| {} KiB | {} | {:.0} | {} | {:.1} | {:.1}% |\n",
                bytes / 1024,
                n("stacks"),
                per_second,
                n("bytes_copied") / stacks,
                n("frames") as f64 / stacks as f64,
                n("truncated") as f64 * 100.0 / stacks as f64,
            ));
        }
        Ok(())
    })();
    let _ = target.kill();
    let _ = target.wait();
    result?;
    Ok(table)
}

fn machine_line() -> String {
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

fn bench() -> Result<()> {
    let dir = root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    let mut results = format!(
        "# stallscope benchmarks\n\nMachine: {}\n\nReproduce: `cargo xtask bench` (as root).\n\n",
        machine_line()
    );
    eprintln!("bench: unwinding (3 runs of 6 s)");
    results.push_str("## Unwinding (40-deep stacks, no frame pointers, 999 Hz)\n\n");
    results.push_str(&bench_unwinding(&dir)?);
    eprintln!("bench: cost to processes that are not followed (10 interleaved runs)");
    results.push_str("\n## Cost to everyone else (a process that is not followed)\n\n");
    results.push_str(&bench_everyone_else(&dir)?);
    eprintln!("bench: agent cost on a context-switch-heavy followed process");
    results.push_str("\n## Agent cost (followed pipe ping-pong, default settings)\n\n");
    results.push_str(&bench_agent_cost(&dir)?);
    let path = root().join("bench/RESULTS.md");
    std::fs::write(&path, &results).with_context(|| format!("writing {}", path.display()))?;
    println!("{results}");
    eprintln!("bench: written to {}", path.display());
    Ok(())
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A 30-minute recording of a busy server (a request every 5 ms, a 150 ms stall every 2 s):
/// the agent's RSS is sampled every minute; with every cache bounded, growth must stop.
fn bench_long_run(minutes: u64) -> Result<()> {
    let dir = root().join("target/bench");
    let server_bin = build_demo_server(&dir)?;
    let mut server = Command::new(&server_bin)
        .arg("0")
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the server")?;
    let mut server_out = BufReader::new(server.stdout.take().context("server stdout")?);
    let mut first = String::new();
    server_out.read_line(&mut first)?;
    thread::spawn(move || for _ in server_out.lines() {});
    let port: u16 = first
        .trim()
        .strip_prefix("listening ")
        .and_then(|p| p.parse().ok())
        .context("server did not report its port")?;
    let out = dir.join("long-run");
    let _ = std::fs::remove_dir_all(&out);
    let mut agent = Command::new(agent_path())
        .args([
            "record",
            "--pid",
            &server.id().to_string(),
            "--quiet",
            "--format",
            "json",
        ])
        .args(["--duration", &format!("{minutes}m"), "--out"])
        .arg(&out)
        .stdout(Stdio::null())
        .spawn()
        .context("starting stallscope")?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load_stop = stop.clone();
    let load = thread::spawn(move || {
        let mut sent = 0u64;
        while !load_stop.load(std::sync::atomic::Ordering::Relaxed) {
            let line = if sent % 400 == 399 {
                "burn 150\n"
            } else {
                "quick\n"
            };
            let _ = send(port, line);
            sent += 1;
            thread::sleep(Duration::from_millis(5));
        }
        sent
    });
    let mut table = String::from("| minute | agent RSS (MiB) |\n| --- | --- |\n");
    let started = Instant::now();
    for minute in 0..=minutes {
        while started.elapsed() < Duration::from_secs(minute * 60) {
            thread::sleep(Duration::from_millis(500));
        }
        let Some(kib) = rss_kib(agent.id()) else {
            break;
        };
        let line = format!("| {minute} | {:.1} |\n", kib as f64 / 1024.0);
        eprint!("long run: {line}");
        table.push_str(&line);
    }
    let status = agent.wait()?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = load.join().unwrap_or(0);
    let _ = server.kill();
    let _ = server.wait();
    let text = format!(
        "# Long run\n\nMachine: {}\n\n{minutes} minutes recording a busy epoll server ({sent} requests, a 150 ms stall every ~2 s); agent exit: {status}.\n\n{table}",
        machine_line()
    );
    let path = root().join("bench/LONG_RUN.md");
    std::fs::write(&path, &text)?;
    println!("{text}");
    Ok(())
}

fn build_bench_target(dir: &Path, name: &str, flags: &[&str]) -> Result<PathBuf> {
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

fn run_pingpong(binary: &Path, rounds: u64) -> Result<u64> {
    let out = output(Command::new(binary).arg(rounds.to_string()))
        .context("running the ping-pong benchmark")?;
    out.trim().parse().context("ping-pong output")
}

/// Starts the agent on `pid` and waits until it is recording.
fn start_agent(pid: u32, out: &Path, extra: &[&str]) -> Result<std::process::Child> {
    let _ = std::fs::remove_dir_all(out);
    let mut agent = Command::new(agent_path())
        .args([
            "record",
            "--pid",
            &pid.to_string(),
            "--quiet",
            "--format",
            "json",
        ])
        .args(extra)
        .arg("--out")
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting stallscope")?;
    let stderr = agent.stderr.take().context("agent stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    for line in lines.by_ref() {
        if line?.contains("stallscope: recording") {
            break;
        }
    }
    thread::spawn(move || for _ in lines {});
    Ok(agent)
}

fn stop_agent(mut agent: std::process::Child) -> Result<()> {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.id() as i32, libc::SIGINT) };
    agent.wait()?;
    Ok(())
}

fn median(mut values: Vec<u64>) -> u64 {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or(0)
}

/// A pipe ping-pong that stallscope does not follow, timed with no agent and with the agent
/// recording some other (idle) process, interleaved: the in-kernel filter should make the
/// difference noise.
fn bench_everyone_else(dir: &Path) -> Result<String> {
    let pingpong = build_bench_target(dir, "pingpong", &["-O2", "-pthread"])?;
    let rounds = 200_000;
    let mut idle = Command::new("sleep").arg("600").spawn()?;
    let mut without = Vec::new();
    let mut with = Vec::new();
    let result = (|| -> Result<()> {
        for _ in 0..5 {
            without.push(run_pingpong(&pingpong, rounds)?);
            let agent = start_agent(idle.id(), &dir.join("idle-recording"), &[])?;
            with.push(run_pingpong(&pingpong, rounds)?);
            stop_agent(agent)?;
        }
        Ok(())
    })();
    let _ = idle.kill();
    let _ = idle.wait();
    result?;
    let (a, b) = (median(without.clone()), median(with.clone()));
    Ok(format!(
        "{rounds} round trips (400,000 context switches) of an unfollowed process, median of 5 interleaved runs each:\n\n| agent | median time | spread (min-max) |\n| --- | --- | --- |\n| none | {:.1} ms | {:.1}-{:.1} ms |\n| recording another process | {:.1} ms | {:.1}-{:.1} ms |\n\nratio with/without: **{:.3}**\n",
        a as f64 / 1e6,
        *without.iter().min().unwrap_or(&0) as f64 / 1e6,
        *without.iter().max().unwrap_or(&0) as f64 / 1e6,
        b as f64 / 1e6,
        *with.iter().min().unwrap_or(&0) as f64 / 1e6,
        *with.iter().max().unwrap_or(&0) as f64 / 1e6,
        b as f64 / a.max(1) as f64
    ))
}

fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?)
}

/// The agent recording a followed ping-pong (every switch an event): its CPU time per second
/// of recording and per 1,000 context switches of the target, and its lost events.
fn bench_agent_cost(dir: &Path) -> Result<String> {
    let pingpong = build_bench_target(dir, "pingpong", &["-O2", "-pthread"])?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let rounds: u64 = 1_000_000;
    let mut target = Command::new(&pingpong)
        .arg(rounds.to_string())
        .stdout(Stdio::piped())
        .spawn()?;
    let out = dir.join("agent-cost");
    let agent = start_agent(target.id(), &out, &[])?;
    let agent_pid = agent.id();
    let started = Instant::now();
    let ticks_before = cpu_ticks(agent_pid).unwrap_or(0);
    target.wait()?;
    let seconds = started.elapsed().as_secs_f64();
    let ticks = cpu_ticks(agent_pid).unwrap_or(0) - ticks_before;
    stop_agent(agent)?;
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("stalls.json"))?)?;
    let switches = 2.0 * 2.0 * rounds as f64; // two threads, a switch each way per round trip
    let cpu_s = ticks as f64 / hz;
    Ok(format!(
        "| target switches/s | agent CPU (% of one core) | agent CPU per 1,000 switches | lost events |\n| --- | --- | --- | --- |\n| {:.0} | {:.1} % | {:.2} ms | {} |\n",
        switches / seconds,
        100.0 * cpu_s / seconds,
        1000.0 * cpu_s / switches * 1000.0,
        json["lost_events"].as_u64().unwrap_or(0)
    ))
}
