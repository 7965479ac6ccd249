//! `cargo xtask bench --compare BASE`: two agent builds side by side in one run, interleaved,
//! for a before/after of one change (the levers of issue #16). Writes
//! `target/bench/COMPARE.md`. Three measures, each as ratios with min-max spreads over rounds:
//! - a process neither agent follows (pipe ping-pong), no agent / BASE / this build, the order
//!   rotated each round;
//! - a followed ping-pong: agent CPU and eBPF time per 1,000 target switches, and each eBPF
//!   program's run time per run and runs per switch (kernel BPF statistics);
//! - the HTTP services under wrk (unless `--compare-http 0`): requests/s and CPU per request
//!   (service + agent CPU over requests) against the unprofiled run of the same round.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result};

use super::{
    BpfStats, Options, Spread, Window, build_c_target, cpu_ticks, overhead, set_agent_override,
    start_agent, thousands, ticks_per_second, tools,
};
use crate::output;

pub struct CompareOptions {
    pub base: PathBuf,
    /// Interleaved rounds of the unfollowed ping-pong.
    pub pairs: usize,
    /// Rounds of the HTTP comparison (0: skipped).
    pub http_rounds: usize,
}

/// The two builds: (label, binary).
fn builds(base: &Path) -> [(&'static str, PathBuf); 2] {
    [
        ("before (BASE)", base.to_path_buf()),
        ("after (this build)", super::default_agent_path()),
    ]
}

pub fn run(opts: &Options, compare: &CompareOptions) -> Result<()> {
    let dir = super::scratch()?;
    let started = Instant::now();
    let builds = builds(&compare.base);
    let mut text = format!(
        "# stallscope: two builds side by side\n\nMachine: {}\n\nBASE: `{}`; this build: `{}`.\n",
        super::machine_line(),
        builds[0].1.display(),
        builds[1].1.display()
    );
    eprintln!("bench: compare: unfollowed ping-pong");
    text.push_str(&unfollowed(opts, &dir, &builds, compare.pairs)?);
    eprintln!("bench: compare: followed ping-pong");
    text.push_str(&followed(opts, &dir, &builds)?);
    if compare.http_rounds > 0 {
        let tools = tools::ensure(&dir)?;
        for app in [overhead::App::Tokio, overhead::App::FastApi] {
            eprintln!("bench: compare: {}", app.label());
            text.push_str(&http(
                opts,
                &tools,
                &dir,
                &builds,
                app,
                compare.http_rounds,
            )?);
        }
    }
    set_agent_override(None);
    text.push_str(&format!(
        "\nThis comparison took {:.1} minutes.\n",
        started.elapsed().as_secs_f64() / 60.0
    ));
    let path = dir.join("COMPARE.md");
    std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    println!("{text}");
    eprintln!("bench: written to {}", path.display());
    Ok(())
}

fn run_pingpong(binary: &Path, rounds: u64) -> Result<f64> {
    let out = output(Command::new(binary).arg(rounds.to_string()))
        .context("running the ping-pong benchmark")?;
    Ok(out.trim().parse::<f64>().context("ping-pong output")? / 1e6)
}

/// The ping-pong nobody follows: none, BASE, this build, in an order rotated each round.
fn unfollowed(
    opts: &Options,
    dir: &Path,
    builds: &[(&'static str, PathBuf); 2],
    pairs: usize,
) -> Result<String> {
    let pingpong = build_c_target(dir, "pingpong", &["-O2", "-pthread"])?;
    let rounds: u64 = if opts.quick { 20_000 } else { 100_000 };
    let idle = super::Guard::spawn(Command::new("sleep").arg("3600"))?;
    // times[0]: no agent; [1], [2]: the builds.
    let mut times: [Vec<f64>; 3] = Default::default();
    let mut ratios: [Vec<f64>; 2] = Default::default();
    for round in 0..pairs {
        let mut this_round = [0.0f64; 3];
        for step in 0..3 {
            let which = (round + step) % 3;
            this_round[which] = if which == 0 {
                run_pingpong(&pingpong, rounds)?
            } else {
                set_agent_override(Some(builds[which - 1].1.clone()));
                let agent = start_agent(idle.id(), &dir.join("compare-idle"), &[])?;
                let ms = run_pingpong(&pingpong, rounds)?;
                agent.stop()?;
                ms
            };
        }
        for which in 0..3 {
            times[which].push(this_round[which]);
        }
        for build in 0..2 {
            ratios[build].push(this_round[build + 1] / this_round[0]);
        }
    }
    drop(idle);
    let mut table = format!(
        "\n## A process neither agent follows\n\nA pipe ping-pong between two threads, {} round trips, with no agent, with BASE and with this build recording another (idle) process; {pairs} interleaved rounds, order rotated. Ratio: time with the agent over time without it in the same round.\n\n| agent | time, median (min-max) | ratio to none, median (min-max) |\n| --- | --- | --- |\n| none | {} ms | 1 |\n",
        thousands(rounds as f64),
        Spread::of(&times[0]).show(1)
    );
    for build in 0..2 {
        table.push_str(&format!(
            "| {} | {} ms | {} |\n",
            builds[build].0,
            Spread::of(&times[build + 1]).show(1),
            Spread::of(&ratios[build]).show(3)
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

/// Per program: (ns per run, runs per switch), one value per round.
type ProgramRounds = BTreeMap<String, (Vec<f64>, Vec<f64>)>;

/// The followed ping-pong, once per build (3 rounds each, interleaved).
fn followed(opts: &Options, dir: &Path, builds: &[(&'static str, PathBuf); 2]) -> Result<String> {
    let pingpong = build_c_target(dir, "pingpong", &["-O2", "-pthread"])?;
    let rounds: u64 = if opts.quick { 100_000 } else { 300_000 };
    let _stats = BpfStats::try_enable();
    let mut agent_ms: [Vec<f64>; 2] = Default::default();
    let mut bpf_ms: [Vec<f64>; 2] = Default::default();
    // Per build, per program: (ns per run, runs per switch) per round.
    let mut programs: [ProgramRounds; 2] = Default::default();
    let repeats = if opts.quick { 1 } else { 3 };
    for round in 0..repeats {
        for step in 0..2 {
            let build = (round + step) % 2;
            set_agent_override(Some(builds[build].1.clone()));
            let mut target = Command::new(&pingpong)
                .arg(rounds.to_string())
                .stdout(Stdio::null())
                .spawn()
                .context("starting the ping-pong")?;
            let agent = match start_agent(target.id(), &dir.join("compare-followed"), &[]) {
                Ok(agent) => agent,
                Err(err) => {
                    let _ = target.kill();
                    let _ = target.wait();
                    return Err(err);
                }
            };
            let ticks_before = cpu_ticks(agent.id()).unwrap_or(0);
            let before = program_stats(agent.id());
            let switches_before = super::target_switches(target.id());
            let window = Window::start(Some(agent.id()), target.id());
            let mut switches = switches_before;
            while target.try_wait()?.is_none() {
                switches = super::target_switches(target.id()).max(switches);
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let after = program_stats(agent.id());
            let measured = window.finish();
            let ticks = cpu_ticks(agent.id())
                .unwrap_or(0)
                .saturating_sub(ticks_before);
            agent.wait_for_exit()?;
            let switches = switches.saturating_sub(switches_before).max(1) as f64;
            agent_ms[build].push(1e6 * ticks as f64 / ticks_per_second() / switches);
            bpf_ms[build].push(1e6 * measured.bpf_s / switches);
            for (name, (ns, runs)) in &after {
                let (ns0, runs0) = before.get(name).copied().unwrap_or((0, 0));
                let (ns, runs) = (ns.saturating_sub(ns0), runs.saturating_sub(runs0));
                let entry = programs[build].entry(name.clone()).or_default();
                entry.0.push(ns as f64 / runs.max(1) as f64);
                entry.1.push(runs as f64 / switches);
            }
        }
    }
    let mut table = format!(
        "\n## A followed ping-pong\n\nA pipe ping-pong between two threads ({} round trips, every switch-out outside a wait point), recorded to its end by each build, {repeats} round(s) each, interleaved; eBPF statistics on. Switches counted while it ran (sampled every 20 ms).\n\n| build | agent CPU per 1,000 switches | eBPF per 1,000 switches |\n| --- | --- | --- |\n",
        thousands(rounds as f64)
    );
    for build in 0..2 {
        table.push_str(&format!(
            "| {} | {} ms | {} ms |\n",
            builds[build].0,
            Spread::of(&agent_ms[build]).show(2),
            Spread::of(&bpf_ms[build]).show(2)
        ));
    }
    table.push_str(
        "\nPer program: median run time per run, and runs per target switch (all runs, followed or not).\n\n| build | program | ns per run | runs per switch |\n| --- | --- | --- | --- |\n",
    );
    for build in 0..2 {
        for (name, (ns, runs)) in &programs[build] {
            table.push_str(&format!(
                "| {} | {name} | {} | {} |\n",
                builds[build].0,
                Spread::of(ns).show(0),
                Spread::of(runs).show(2)
            ));
        }
    }
    Ok(table)
}

/// An HTTP service under wrk: none, BASE, this build, rotated, `rounds` times.
fn http(
    opts: &Options,
    tools: &tools::Tools,
    dir: &Path,
    builds: &[(&'static str, PathBuf); 2],
    app: overhead::App,
    rounds: usize,
) -> Result<String> {
    let server = overhead::start_server(app, tools, dir)?;
    let url = format!("http://127.0.0.1:{}{}", server.port, app.path());
    let pid = server.guard.id();
    overhead::run_wrk(&url, std::time::Duration::from_secs(2))?;
    let mut rps: [Vec<f64>; 3] = Default::default();
    let mut rps_ratio: [Vec<f64>; 2] = Default::default();
    let mut cpu_ratio: [Vec<f64>; 2] = Default::default();
    let mut agent_cpu: [Vec<f64>; 2] = Default::default();
    for round in 0..rounds {
        let mut this_round = [(0.0f64, 0.0f64); 3];
        for step in 0..3 {
            let which = (round + step) % 3;
            let agent = if which == 0 {
                None
            } else {
                set_agent_override(Some(builds[which - 1].1.clone()));
                let agent = start_agent(pid, &dir.join("compare-http"), &[])?;
                std::thread::sleep(std::time::Duration::from_millis(300));
                Some(agent)
            };
            let service_before = cpu_ticks(pid).unwrap_or(0);
            let window = Window::start(agent.as_ref().map(super::Agent::id), pid);
            let wrk = overhead::run_wrk(&url, opts.wrk)?;
            let measured = window.finish();
            let service_s = cpu_ticks(pid).unwrap_or(0).saturating_sub(service_before) as f64
                / ticks_per_second();
            if let Some(agent) = agent {
                agent.stop()?;
                agent_cpu[which - 1].push(measured.cpu_percent());
            }
            let requests = wrk.requests_per_s * measured.seconds;
            // CPU per request: the service's and the agent's.
            this_round[which] = (
                wrk.requests_per_s,
                (service_s + measured.cpu_s) / requests.max(1.0),
            );
        }
        for which in 0..3 {
            rps[which].push(this_round[which].0);
        }
        for build in 0..2 {
            rps_ratio[build].push(this_round[build + 1].0 / this_round[0].0);
            cpu_ratio[build].push(this_round[build + 1].1 / this_round[0].1);
        }
    }
    let mut table = format!(
        "\n## {}\n\n`wrk -t2 -c32 -d{}s` on loopback, {rounds} round(s), order rotated; ratios to the unprofiled run of the same round. CPU per request: service CPU plus agent CPU (user space), over requests; in-kernel eBPF time is in the service's CPU when it runs in the service's context.\n\n| agent | requests/s | requests/s vs none | CPU per request vs none | agent CPU (% of one core) |\n| --- | --- | --- | --- | --- |\n| none | {} | 1 | 1 | - |\n",
        app.label(),
        opts.wrk.as_secs(),
        Spread::of(&rps[0]).show(0)
    );
    for build in 0..2 {
        table.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            builds[build].0,
            Spread::of(&rps[build + 1]).show(0),
            Spread::of(&rps_ratio[build]).show(3),
            Spread::of(&cpu_ratio[build]).show(3),
            Spread::of(&agent_cpu[build]).show(1)
        ));
    }
    Ok(table)
}
