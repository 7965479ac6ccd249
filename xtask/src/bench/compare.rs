//! `cargo xtask bench --side-by-side` (and `--compare BASE`): ways of running the agent side by
//! side in one run, interleaved, for the before/after of the levers of issue #16. The variants
//! are this build at default settings, this build with a lever switched back off by its
//! environment switch (`STALLSCOPE_EAGER_STACKS=1`: stacks copied at every switch-out as
//! before; `STALLSCOPE_CLASSIC_TRACEPOINTS=1`: classic sched tracepoints;
//! `STALLSCOPE_KSTACK_REUSE=0`: every kernel stack walked), at 999 Hz, and the
//! agent binary BASE when given. Writes `bench/SIDE_BY_SIDE.md` (`--quick`:
//! `target/bench/COMPARE.md`). Each measure is a ratio or a
//! figure with its min-max spread over rounds:
//! - a process no agent follows (pipe ping-pong): no agent, bpftrace with one classic
//!   `sched_switch` probe (for scale), and the variants, the order rotated each round;
//! - a followed process at 10,000 switches/s: agent CPU, and each eBPF program's run time per
//!   followed switch and per run (kernel BPF statistics);
//! - the HTTP services under wrk: requests/s and CPU per request (service + agent CPU over
//!   requests) against the unprofiled run of the same round, agent CPU and RSS; then one run
//!   per variant with BPF statistics on, for the eBPF programs' time per target switch.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use super::{
    AgentVariant, BpfStats, Options, Spread, Window, build_c_target, cpu_ticks, overhead, rss_kib,
    set_agent_variant, start_agent, start_switcher, thousands, ticks_per_second, tools,
};
use crate::output;

pub struct CompareOptions {
    /// An agent binary to compare with (e.g. a build from before a change).
    pub base: Option<PathBuf>,
    /// Interleaved rounds of the unfollowed ping-pong.
    pub pairs: usize,
    /// Rounds of the HTTP comparison (0: skipped).
    pub http_rounds: usize,
}

/// One way of running the agent, with the label its rows carry.
#[derive(Clone)]
struct Variant {
    label: String,
    agent: AgentVariant,
}

const EAGER: (&str, &str) = ("STALLSCOPE_EAGER_STACKS", "1");
const CLASSIC: (&str, &str) = ("STALLSCOPE_CLASSIC_TRACEPOINTS", "1");
const WALK_ALL: (&str, &str) = ("STALLSCOPE_KSTACK_REUSE", "0");
/// No program on any syscall: what a bystander pays per switch alone (not a usable recording).
const SCHEDULER_ONLY: (&str, &str) = ("STALLSCOPE_SYSCALL_HOOKS", "0");

fn this_build(label: &str, env: &[(&'static str, &'static str)], args: &[&'static str]) -> Variant {
    Variant {
        label: label.to_string(),
        agent: AgentVariant {
            binary: super::default_agent_path(),
            env: env.to_vec(),
            args: args.to_vec(),
            watch: false,
        },
    }
}

fn with_base(mut variants: Vec<Variant>, base: Option<&Path>) -> Vec<Variant> {
    if let Some(base) = base {
        variants.push(Variant {
            label: format!("BASE `{}`", base.display()),
            agent: AgentVariant {
                binary: base.to_path_buf(),
                env: Vec::new(),
                args: Vec::new(),
                watch: false,
            },
        });
    }
    variants
}

/// `stallscope watch --pid PID`: the always-on monitor at its defaults.
fn watch_variant() -> Variant {
    Variant {
        agent: AgentVariant {
            watch: true,
            ..this_build("`watch`", &[], &[]).agent
        },
        label: "`watch`".to_string(),
    }
}

fn default_variant() -> Variant {
    this_build("default", &[], &[])
}

/// Every kernel stack walked, none reused from the same place.
fn walk_all() -> Variant {
    this_build("kernel stacks walked", &[WALK_ALL], &[])
}

/// Both levers off: the hooks and stack capture as they were before issue #16 (the per-syscall
/// tracepoints stay: they have no switch).
fn levers_off() -> Variant {
    this_build("levers off (both switches)", &[EAGER, CLASSIC], &[])
}

pub fn run(opts: &Options, compare: &CompareOptions) -> Result<()> {
    let dir = super::scratch()?;
    let started = Instant::now();
    let base = compare.base.as_deref();
    let load = output(Command::new("cat").arg("/proc/loadavg")).unwrap_or_default();
    let mut text = format!(
        "# stallscope: variants side by side\n\nMachine: {}; load average at the start: {}.{}\n\nVariants: this build (`{}`) at default settings; with `{}=1` (stacks copied at every switch-out, as before the late-stacks lever); with `{}=1` (classic sched tracepoints, as before the raw-tracepoint lever); with `{}=0` (every kernel stack walked, as before their reuse); with the first two; at `--freq 999`; and `stallscope watch --pid` (the always-on monitor){}. Spreads are min-max over rounds; rounds are interleaved, the order rotated each round.\n",
        super::machine_line(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        if opts.quick {
            " **Quick run: a smoke test, not results.**"
        } else {
            ""
        },
        super::default_agent_path().display(),
        EAGER.0,
        CLASSIC.0,
        WALK_ALL.0,
        base.map_or(String::new(), |b| format!("; and BASE `{}`", b.display())),
    );
    // bpftrace runs in the first part already (wrk and py-spy only for the HTTP services).
    let tools = tools::ensure(&dir)?;
    eprintln!("bench: side by side: unfollowed ping-pong");
    let hooks = with_base(
        vec![
            default_variant(),
            this_build("classic tracepoints", &[CLASSIC], &[]),
            this_build("scheduler hooks only", &[SCHEDULER_ONLY], &[]),
        ],
        base,
    );
    text.push_str(&unfollowed(opts, &dir, &hooks, compare.pairs)?);
    eprintln!("bench: side by side: followed switcher at 10,000 switches/s");
    let levers = with_base(
        vec![
            default_variant(),
            this_build("eager stacks", &[EAGER], &[]),
            this_build("classic tracepoints", &[CLASSIC], &[]),
            walk_all(),
            levers_off(),
            watch_variant(),
        ],
        base,
    );
    text.push_str(&followed(opts, &dir, &levers)?);
    if compare.http_rounds > 0 {
        let http_variants = with_base(
            vec![
                default_variant(),
                this_build("`--freq 999`", &[], &["--freq", "999"]),
                walk_all(),
                levers_off(),
                watch_variant(),
            ],
            base,
        );
        for app in [overhead::App::FastApi, overhead::App::Tokio] {
            eprintln!("bench: side by side: {}", app.label());
            text.push_str(&http(
                opts,
                &tools,
                &dir,
                &http_variants,
                app,
                compare.http_rounds,
            )?);
        }
    }
    set_agent_variant(None);
    let load = output(Command::new("cat").arg("/proc/loadavg")).unwrap_or_default();
    text.push_str(&format!(
        "\nLoad average at the end: {}. This comparison took {:.1} minutes.\n",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        started.elapsed().as_secs_f64() / 60.0
    ));
    // A full run is kept beside the main results; a quick one is only a smoke test.
    let path = if opts.quick {
        dir.join("COMPARE.md")
    } else {
        crate::root().join("bench/SIDE_BY_SIDE.md")
    };
    std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    println!("{text}");
    eprintln!("bench: written to {}", path.display());
    Ok(())
}

/// The ping-pong's output: wall time and the process's CPU time, in ns.
pub fn pingpong_ns(out: &str) -> Result<(u64, u64)> {
    let mut fields = out.split_whitespace().map(str::parse::<u64>);
    match (fields.next(), fields.next()) {
        (Some(Ok(wall)), Some(Ok(cpu))) => Ok((wall, cpu)),
        _ => anyhow::bail!("ping-pong output is not `WALL_NS CPU_NS`: {out:?}"),
    }
}

/// One ping-pong run: (wall, CPU) in ms.
fn run_pingpong(binary: &Path, rounds: u64) -> Result<(f64, f64)> {
    let out = output(Command::new(binary).arg(rounds.to_string()))
        .context("running the ping-pong benchmark")?;
    let (wall, cpu) = pingpong_ns(&out)?;
    Ok((wall as f64 / 1e6, cpu as f64 / 1e6))
}

/// bpftrace with one classic `sched_switch` probe filtered to one pid: the usual price of a
/// tracing tool on everyone else, for scale.
const ONE_PROBE_BT: &str = r#"BEGIN { printf("ready\n"); }
tracepoint:sched:sched_switch /pid == $1/ { @switches = count(); }
"#;

fn start_bpftrace(dir: &Path, pid: u32) -> Result<Child> {
    let script = dir.join("one-probe.bt");
    std::fs::write(&script, ONE_PROBE_BT)
        .with_context(|| format!("writing {}", script.display()))?;
    let mut child = Command::new("bpftrace")
        .arg(&script)
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting bpftrace")?;
    if let Err(err) = super::wait_for_line(
        &mut child,
        "bpftrace",
        |l| l == "ready",
        Duration::from_secs(60),
    ) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(err);
    }
    Ok(child)
}

fn stop_bpftrace(mut child: Child) -> Result<()> {
    super::interrupt(&child);
    if super::wait_timeout(&mut child, Duration::from_secs(20)).is_err() {
        let _ = child.kill();
    }
    Ok(())
}

/// The ping-pong nobody follows: no agent, bpftrace's one probe, and each variant recording
/// another (idle) process, in an order rotated each round.
fn unfollowed(opts: &Options, dir: &Path, variants: &[Variant], pairs: usize) -> Result<String> {
    let pingpong = build_c_target(dir, "pingpong", &["-O2", "-pthread"])?;
    let rounds: u64 = if opts.quick { 50_000 } else { 200_000 };
    let idle = super::Guard::spawn(Command::new("sleep").arg("3600"))?;
    // Peers: 0 no agent, 1 bpftrace, 2.. the variants.
    let peers = 2 + variants.len();
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); peers];
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); peers];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); peers];
    let mut cpu_ratios: Vec<Vec<f64>> = vec![Vec::new(); peers];
    for round in 0..pairs {
        let mut this_round = vec![(0.0f64, 0.0f64); peers];
        for step in 0..peers {
            let which = (round + step) % peers;
            this_round[which] = match which {
                0 => run_pingpong(&pingpong, rounds)?,
                1 => {
                    let bpftrace = start_bpftrace(dir, idle.id())?;
                    let ms = run_pingpong(&pingpong, rounds);
                    stop_bpftrace(bpftrace)?;
                    ms?
                }
                _ => {
                    set_agent_variant(Some(variants[which - 2].agent.clone()));
                    let agent = start_agent(idle.id(), &dir.join("compare-idle"), &[])?;
                    let ms = run_pingpong(&pingpong, rounds);
                    agent.stop()?;
                    ms?
                }
            };
        }
        for which in 0..peers {
            let ((wall, cpu_ms), (wall_none, cpu_none)) = (this_round[which], this_round[0]);
            times[which].push(wall);
            ratios[which].push(wall / wall_none);
            cpu[which].push(cpu_ms);
            cpu_ratios[which].push(cpu_ms / cpu_none);
        }
    }
    drop(idle);
    let mut table = format!(
        "\n## A process no agent follows\n\nA pipe ping-pong between two threads, {} round trips (about 400,000 context switches and 800,000 syscalls), with no agent, with bpftrace's one classic `sched_switch` probe filtered to another pid, and with each variant recording another (idle) process; {pairs} interleaved rounds. Ratio: time with the peer over time without it in the same round. CPU: the ping-pong's own CPU time (both threads; the programs that run for its switches and syscalls run in its context), which shows a peer's cost where wall time may not (a probe on the switch path can keep a small VM's vCPUs from idling between wake-ups).\n\n| peer | time, median (min-max) | ratio to none, median (min-max) | rounds slower than none | CPU, median (min-max) | CPU ratio to none, median (min-max) | rounds with more CPU than none |\n| --- | --- | --- | --- | --- | --- | --- |\n| none | {} ms | 1 | - | {} ms | 1 | - |\n",
        thousands(rounds as f64),
        Spread::of(&times[0]).show(1),
        Spread::of(&cpu[0]).show(1)
    );
    let labels: Vec<String> = std::iter::once("bpftrace, one `sched_switch` probe".to_string())
        .chain(variants.iter().map(|v| format!("stallscope, {}", v.label)))
        .collect();
    for (peer, label) in labels.iter().enumerate().map(|(i, l)| (i + 1, l)) {
        let slower = ratios[peer].iter().filter(|&&r| r > 1.0).count();
        let costlier = cpu_ratios[peer].iter().filter(|&&r| r > 1.0).count();
        table.push_str(&format!(
            "| {label} | {} ms | {} | {slower} of {pairs} | {} ms | {} | {costlier} of {pairs} |\n",
            Spread::of(&times[peer]).show(1),
            Spread::of(&ratios[peer]).show(3),
            Spread::of(&cpu[peer]).show(1),
            Spread::of(&cpu_ratios[peer]).show(3),
        ));
    }
    Ok(table)
}

/// Per-program kernel statistics of the programs a process holds: name -> (run ns, runs).
fn program_stats(pid: u32) -> BTreeMap<String, (u64, u64)> {
    let mut ids = Vec::new();
    if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) {
        for info in fds
            .flatten()
            .filter_map(|fd| std::fs::read_to_string(fd.path()).ok())
        {
            if let Some(id) = info
                .lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
            {
                ids.push(id);
            }
        }
    }
    let mut stats = BTreeMap::new();
    let Some(listing) = output(Command::new("bpftool").args(["-j", "prog", "show"])) else {
        return stats;
    };
    let Ok(serde_json::Value::Array(progs)) = serde_json::from_str(&listing) else {
        return stats;
    };
    for prog in progs {
        let id = prog["id"].as_u64().unwrap_or(0);
        if !ids.contains(&id) {
            continue;
        }
        let name = prog["name"].as_str().unwrap_or("?").to_string();
        let entry = stats.entry(name).or_insert((0, 0));
        entry.0 += prog["run_time_ns"].as_u64().unwrap_or(0);
        entry.1 += prog["run_cnt"].as_u64().unwrap_or(0);
    }
    stats
}

/// Per program, one value per round: ns per target switch, ns per run, runs per switch.
#[derive(Default)]
struct ProgramRounds {
    ns_per_switch: Vec<f64>,
    ns_per_run: Vec<f64>,
    runs_per_switch: Vec<f64>,
}

/// Adds the programs' deltas over a window to `programs`.
fn add_program_rounds(
    programs: &mut BTreeMap<String, ProgramRounds>,
    before: &BTreeMap<String, (u64, u64)>,
    after: &BTreeMap<String, (u64, u64)>,
    switches: f64,
) {
    for (name, (ns, runs)) in after {
        let (ns0, runs0) = before.get(name).copied().unwrap_or((0, 0));
        let (ns, runs) = (ns.saturating_sub(ns0), runs.saturating_sub(runs0));
        let entry = programs.entry(name.clone()).or_default();
        entry.ns_per_switch.push(ns as f64 / switches);
        entry.ns_per_run.push(ns as f64 / runs.max(1) as f64);
        entry.runs_per_switch.push(runs as f64 / switches);
    }
}

fn program_table(variants: &[Variant], programs: &[BTreeMap<String, ProgramRounds>]) -> String {
    let mut table = String::from(
        "| variant | program | ns per target switch | ns per run | runs per target switch |\n| --- | --- | --- | --- | --- |\n",
    );
    for (variant, programs) in variants.iter().zip(programs) {
        let mut total: Vec<f64> = Vec::new();
        for (name, rounds) in programs {
            for (i, v) in rounds.ns_per_switch.iter().enumerate() {
                if total.len() <= i {
                    total.push(0.0);
                }
                total[i] += v;
            }
            table.push_str(&format!(
                "| {} | {name} | {} | {} | {} |\n",
                variant.label,
                Spread::of(&rounds.ns_per_switch).show(0),
                Spread::of(&rounds.ns_per_run).show(0),
                Spread::of(&rounds.runs_per_switch).show(2)
            ));
        }
        table.push_str(&format!(
            "| {} | **all** | **{}** | | |\n",
            variant.label,
            Spread::of(&total).show(0)
        ));
    }
    table
}

/// A followed process making 10,000 switches/s (one thread waking on a timer, burning ~20 us
/// in user code, sleeping), recorded by each variant, interleaved, with BPF statistics on.
fn followed(opts: &Options, dir: &Path, variants: &[Variant]) -> Result<String> {
    let switcher = build_c_target(dir, "switcher", &["-O2", "-g", "-pthread"])?;
    let rate = super::scale::SPREAD_RATE;
    let _stats = BpfStats::try_enable();
    let n = variants.len();
    let mut agent_pct: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut agent_ms: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut switch_rate: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut programs: Vec<BTreeMap<String, ProgramRounds>> =
        (0..n).map(|_| BTreeMap::new()).collect();
    let repeats = if opts.quick { 1 } else { 3 };
    for round in 0..repeats {
        for step in 0..n {
            let which = (round + step) % n;
            set_agent_variant(Some(variants[which].agent.clone()));
            let target = start_switcher(&switcher, "threads", 1, rate)?;
            let agent = start_agent(target.id(), &dir.join("compare-followed"), &[])?;
            std::thread::sleep(Duration::from_millis(500));
            let before = program_stats(agent.id());
            let window = Window::start(Some(agent.id()), target.id());
            std::thread::sleep(opts.window);
            let measured = window.finish();
            let after = program_stats(agent.id());
            agent.stop_with_target(target)?;
            let switches = measured.switches.max(1) as f64;
            agent_pct[which].push(measured.cpu_percent());
            agent_ms[which].push(measured.ms_per_1000_switches());
            switch_rate[which].push(measured.switches_per_s());
            add_program_rounds(&mut programs[which], &before, &after, switches);
        }
    }
    let mut table = format!(
        "\n## A followed process at {} switches/s\n\n`bench/targets/switcher.c threads 1 {rate}`: one thread that wakes on a timer, burns about 20 us in user code and sleeps, recorded {} s per run by each variant, {repeats} round(s), interleaved; BPF statistics on (`BPF_ENABLE_STATS`, as `kernel.bpf_stats_enabled`). Switches: the kernel's count for the target.\n\n| variant | target switches/s | agent CPU (% of one core) | agent CPU per 1,000 target switches |\n| --- | --- | --- | --- |\n",
        thousands(rate as f64),
        opts.window.as_secs()
    );
    for (i, variant) in variants.iter().enumerate() {
        table.push_str(&format!(
            "| {} | {} | {} | {} ms |\n",
            variant.label,
            thousands(Spread::of(&switch_rate[i]).median),
            Spread::of(&agent_pct[i]).show(2),
            Spread::of(&agent_ms[i]).show(2),
        ));
    }
    table.push_str("\nEach eBPF program (all its runs, on any task: the filters run for every switch and wait-point syscall on the machine), over the target's switches:\n\n");
    table.push_str(&program_table(variants, &programs));
    Ok(table)
}

/// An HTTP service under wrk: none and each variant, rotated, `rounds` times; then one run per
/// variant with BPF statistics on.
fn http(
    opts: &Options,
    tools: &tools::Tools,
    dir: &Path,
    variants: &[Variant],
    app: overhead::App,
    rounds: usize,
) -> Result<String> {
    let server = overhead::start_server(app, tools, dir)?;
    let url = format!("http://127.0.0.1:{}{}", server.port, app.path());
    let pid = server.guard.id();
    overhead::run_wrk(&url, Duration::from_secs(2))?;
    let n = variants.len();
    let peers = n + 1;
    let mut rps: Vec<Vec<f64>> = vec![Vec::new(); peers];
    let mut rps_ratio: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut cpu_ratio: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut agent_cpu: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut agent_ms: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut rss: Vec<Vec<f64>> = vec![Vec::new(); n];
    let mut switch_rate: Vec<f64> = Vec::new();
    for round in 0..rounds {
        let mut this_round = vec![(0.0f64, 0.0f64); peers];
        for step in 0..peers {
            let which = (round + step) % peers;
            let agent = if which == 0 {
                None
            } else {
                set_agent_variant(Some(variants[which - 1].agent.clone()));
                let agent = start_agent(pid, &dir.join("compare-http"), &[])?;
                std::thread::sleep(Duration::from_millis(300));
                Some(agent)
            };
            let service_before = cpu_ticks(pid).unwrap_or(0);
            let window = Window::start(agent.as_ref().map(super::Agent::id), pid);
            let wrk = overhead::run_wrk(&url, opts.wrk)?;
            let measured = window.finish();
            let service_s = cpu_ticks(pid).unwrap_or(0).saturating_sub(service_before) as f64
                / ticks_per_second();
            if let Some(agent) = agent {
                rss[which - 1].push(rss_kib(agent.id()).unwrap_or(0) as f64 / 1024.0);
                agent.stop()?;
                agent_cpu[which - 1].push(measured.cpu_percent());
                agent_ms[which - 1].push(measured.ms_per_1000_switches());
            } else {
                switch_rate.push(measured.switches_per_s());
            }
            let requests = wrk.requests_per_s * measured.seconds;
            // CPU per request: the service's and the agent's.
            this_round[which] = (
                wrk.requests_per_s,
                (service_s + measured.cpu_s) / requests.max(1.0),
            );
        }
        for which in 0..peers {
            rps[which].push(this_round[which].0);
        }
        for v in 0..n {
            rps_ratio[v].push(this_round[v + 1].0 / this_round[0].0);
            cpu_ratio[v].push(this_round[v + 1].1 / this_round[0].1);
        }
    }
    let mut table = format!(
        "\n## {}\n\n`wrk -t2 -c32 -d{}s` on loopback, {rounds} round(s), order rotated; ratios to the unprofiled run of the same round. CPU per request: service CPU (its eBPF programs' time included when they ran in its context) plus agent CPU, over requests. The service made {} switches/s unprofiled (median). Agent RSS: just before it stopped.\n\n| agent | requests/s | requests/s vs none | CPU per request vs none | agent CPU (% of one core) | agent CPU per 1,000 target switches | agent RSS |\n| --- | --- | --- | --- | --- | --- | --- |\n| none | {} | 1 | 1 | - | - | - |\n",
        app.label(),
        opts.wrk.as_secs(),
        thousands(Spread::of(&switch_rate).median),
        Spread::of(&rps[0]).show(0)
    );
    for (v, variant) in variants.iter().enumerate() {
        table.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} ms | {} MiB |\n",
            variant.label,
            Spread::of(&rps[v + 1]).show(0),
            Spread::of(&rps_ratio[v]).show(3),
            Spread::of(&cpu_ratio[v]).show(3),
            Spread::of(&agent_cpu[v]).show(1),
            Spread::of(&agent_ms[v]).show(1),
            Spread::of(&rss[v]).show(1),
        ));
    }
    // The eBPF programs' own time under this load: one more run per variant, statistics on
    // (they cost two clock reads per program run, so the rounds above go without).
    let stats = BpfStats::try_enable();
    let mut programs: Vec<BTreeMap<String, ProgramRounds>> =
        (0..n).map(|_| BTreeMap::new()).collect();
    let mut bpf_pct: Vec<Vec<f64>> = vec![Vec::new(); n];
    for (v, variant) in variants.iter().enumerate() {
        set_agent_variant(Some(variant.agent.clone()));
        let agent = start_agent(pid, &dir.join("compare-http"), &[])?;
        std::thread::sleep(Duration::from_millis(300));
        let before = program_stats(agent.id());
        let window = Window::start(Some(agent.id()), pid);
        overhead::run_wrk(&url, opts.wrk.min(Duration::from_secs(5)))?;
        let measured = window.finish();
        let after = program_stats(agent.id());
        agent.stop()?;
        bpf_pct[v].push(measured.bpf_percent());
        add_program_rounds(
            &mut programs[v],
            &before,
            &after,
            measured.switches.max(1) as f64,
        );
    }
    drop(stats);
    table.push_str(&format!(
        "\nIts eBPF programs under the same load (one {} s run per variant, BPF statistics on): % of one core, then each program over the service's switches.\n\n| variant | eBPF programs (% of one core) |\n| --- | --- |\n",
        opts.wrk.min(Duration::from_secs(5)).as_secs()
    ));
    for (v, variant) in variants.iter().enumerate() {
        table.push_str(&format!(
            "| {} | {} |\n",
            variant.label,
            Spread::of(&bpf_pct[v]).show(1)
        ));
    }
    table.push('\n');
    table.push_str(&program_table(variants, &programs));
    Ok(table)
}
