//! The agent's own costs: CPU on a followed context-switch-heavy process, the cost to processes
//! it does not follow (the in-kernel filter), and unwinding throughput.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};

use super::{
    Agent, Options, Spread, bpf_run_ns, build_c_target, cpu_ticks, or_dash, start_agent, thousands,
    ticks_per_second,
};
use crate::{output, status};

/// Unwinding: the agent records a CPU-bound process whose every sample is a 40-deep stack built
/// without frame pointers, at 999 Hz, once per stack-copy size. From the agent's own counters:
/// stacks unwound per second of agent unwinding time (one core, caches warm after the first
/// few), bytes copied per sample, frames per stack and how many unwinds stopped short.
pub fn unwinding(opts: &Options, dir: &Path) -> Result<String> {
    let target_bin = build_c_target(dir, "deep_burn", &["-O2", "-g", "-fomit-frame-pointer"])?;
    let mut target = super::Guard::spawn(&mut Command::new(&target_bin))?;
    let pid = target.id().to_string();
    let seconds = if opts.quick { "2s" } else { "6s" };
    let mut table = String::from(
        "| stack copy | stacks | stacks/s (one core) | bytes copied / sample | frames / stack | stopped short |\n| --- | --- | --- | --- | --- | --- |\n",
    );
    for bytes in [8192u32, 16384, 32768] {
        let out = dir.join(format!("unwind-{bytes}"));
        let _ = std::fs::remove_dir_all(&out);
        status(
            Command::new(super::agent_path())
                .args(["record", "--pid", &pid, "--duration", seconds])
                .args(["--freq", "999", "--quiet", "--format", "json"])
                .args(["--stack-bytes", &bytes.to_string(), "--out"])
                .arg(&out)
                .stdout(Stdio::null()),
        )?;
        let path = out.join("stalls.json");
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?,
        )?;
        let u = &json["unwind"];
        let n = |k: &str| u[k].as_u64().unwrap_or(0);
        let stacks = n("stacks").max(1);
        let per_second = stacks as f64 / (n("unwind_ns").max(1) as f64 / 1e9);
        table.push_str(&format!(
            "| {} KiB | {} | {} | {} | {:.1} | {:.1}% |\n",
            bytes / 1024,
            thousands(n("stacks") as f64),
            thousands(per_second),
            thousands((n("bytes_copied") / stacks) as f64),
            n("frames") as f64 / stacks as f64,
            n("truncated") as f64 * 100.0 / stacks as f64,
        ));
    }
    let _ = target.child().kill();
    Ok(table)
}

/// One ping-pong run: its wall time in ns (the first of the two numbers it prints).
fn run_pingpong(binary: &Path, rounds: u64) -> Result<u64> {
    let out = output(Command::new(binary).arg(rounds.to_string()))
        .context("running the ping-pong benchmark")?;
    Ok(super::compare::pingpong_ns(&out)?.0)
}

/// The in-kernel filter, measured.
pub struct EveryoneElse {
    pub markdown: String,
    pub without_ms: Spread,
    pub with_ms: Spread,
}

impl EveryoneElse {
    /// Slowdown of the unfollowed process with the agent running, from the medians.
    pub fn slowdown(&self) -> f64 {
        self.with_ms.median / self.without_ms.median - 1.0
    }

    /// The run-to-run noise without the agent: the range relative to the median.
    pub fn noise(&self) -> f64 {
        (self.without_ms.max - self.without_ms.min) / self.without_ms.median
    }
}

/// A pipe ping-pong that stallscope does not follow, timed with no agent and with the agent
/// recording some other (idle) process, interleaved: the in-kernel filter should make the
/// difference noise.
pub fn everyone_else(opts: &Options, dir: &Path) -> Result<EveryoneElse> {
    let pingpong = build_c_target(dir, "pingpong", &["-O2", "-pthread"])?;
    let (runs, rounds) = if opts.quick {
        (1, 20_000)
    } else {
        (5, 200_000)
    };
    let idle = super::Guard::spawn(Command::new("sleep").arg("3600"))?;
    let mut without = Vec::new();
    let mut with = Vec::new();
    for _ in 0..runs {
        without.push(run_pingpong(&pingpong, rounds)? as f64 / 1e6);
        let agent = start_agent(idle.id(), &dir.join("idle-recording"), &[])?;
        with.push(run_pingpong(&pingpong, rounds)? as f64 / 1e6);
        agent.stop()?;
    }
    drop(idle);
    let result = EveryoneElse {
        markdown: String::new(),
        without_ms: Spread::of(&without),
        with_ms: Spread::of(&with),
    };
    let verdict = if result.slowdown() <= result.noise() {
        "within the noise (the run-to-run range without the agent)"
    } else {
        "**beyond the noise** (the run-to-run range without the agent)"
    };
    Ok(EveryoneElse {
        markdown: format!(
            "A pipe ping-pong between two threads, {} round trips, that stallscope does not follow, timed with no agent and with the agent recording another (idle) process, interleaved, {runs} run(s) each:\n\n| agent | time, median (min-max) |\n| --- | --- |\n| none | {} ms |\n| recording another process | {} ms |\n\nSlowdown with the agent: **{:+.1} %**, {verdict}: {:.1} %.\n",
            thousands(rounds as f64),
            result.without_ms.show(1),
            result.with_ms.show(1),
            100.0 * result.slowdown(),
            100.0 * result.noise(),
        ),
        ..result
    })
}

/// Waits for a child and returns its context switches (all its threads, voluntary and
/// involuntary), from the kernel's accounting of the reaped process.
fn wait_counting_switches(child: Child) -> Result<u64> {
    let pid = child.id() as libc::pid_t;
    let mut wstatus = 0;
    // SAFETY: a zeroed rusage is a valid out-parameter.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child; both pointers are valid for the call.
    let reaped = unsafe { libc::wait4(pid, &mut wstatus, 0, &mut usage) };
    if reaped != pid {
        bail!(
            "waiting for process {pid}: {}",
            std::io::Error::last_os_error()
        );
    }
    if !libc::WIFEXITED(wstatus) || libc::WEXITSTATUS(wstatus) != 0 {
        bail!("process {pid} failed (wait status {wstatus:#x})");
    }
    Ok((usage.ru_nvcsw + usage.ru_nivcsw).max(0) as u64)
}

/// The agent on a followed, context-switch-heavy process.
pub struct AgentCost {
    pub markdown: String,
    pub switches_per_s: f64,
    pub cpu_percent: f64,
    pub ms_per_1000_switches: f64,
    /// Time of the agent's eBPF programs per 1,000 switches (0 without eBPF statistics).
    pub bpf_ms_per_1000_switches: f64,
    pub lost_events: u64,
}

/// The agent recording a followed ping-pong (every switch an event, and a user-stack copy at
/// every switch-out, since `read` is not a wait point): its CPU time per second of recording
/// and per 1,000 context switches of the target, and its lost events.
pub fn agent_cost(opts: &Options, dir: &Path) -> Result<AgentCost> {
    let pingpong = build_c_target(dir, "pingpong", &["-O2", "-pthread"])?;
    let rounds: u64 = if opts.quick { 200_000 } else { 1_000_000 };
    let mut target = Command::new(&pingpong)
        .arg(rounds.to_string())
        .stdout(Stdio::null())
        .spawn()
        .context("starting the ping-pong")?;
    let out = dir.join("agent-cost");
    let agent = match start_agent(target.id(), &out, &[]) {
        Ok(agent) => agent,
        Err(err) => {
            let _ = target.kill();
            let _ = target.wait();
            return Err(err);
        }
    };
    let started = Instant::now();
    let ticks_before = cpu_ticks(agent.id()).unwrap_or(0);
    let bpf_before = bpf_run_ns(agent.id());
    let switches = wait_counting_switches(target);
    let seconds = started.elapsed().as_secs_f64();
    let ticks = cpu_ticks(agent.id())
        .unwrap_or(0)
        .saturating_sub(ticks_before);
    let bpf_s = bpf_run_ns(agent.id()).saturating_sub(bpf_before) as f64 / 1e9;
    // The target exited, so the agent stops by itself.
    let facts = agent
        .wait_for_exit()
        .context("the agent after its target exited")?;
    // The switches counted include the few before the agent attached; the ping-pong starts at
    // once, so they are a small overcount of the recorded ones (conservative per switch).
    let switches = switches? as f64;
    let cpu_s = ticks as f64 / ticks_per_second();
    let cost = AgentCost {
        markdown: String::new(),
        switches_per_s: switches / seconds,
        cpu_percent: 100.0 * cpu_s / seconds,
        ms_per_1000_switches: 1e6 * cpu_s / switches.max(1.0),
        bpf_ms_per_1000_switches: 1e6 * bpf_s / switches.max(1.0),
        lost_events: facts.lost_events,
    };
    Ok(AgentCost {
        markdown: format!(
            "A followed pipe ping-pong between two threads ({} round trips; `read` is not a wait point, so every switch-out is an event with a user-stack copy), default settings, recorded to its end:\n\n| target switches/s | agent CPU (% of one core) | agent CPU per 1,000 target switches | eBPF programs per 1,000 target switches | events/s received | lost events |\n| --- | --- | --- | --- | --- | --- |\n| {} | {:.1} % | {:.2} ms | {} ms | {} | {} |\n\nAt this cost per switch, 10,000 target switches/s would take {:.1} % of one core in the agent (measured directly in section 5), plus {} % in its eBPF programs, charged to the tasks they run in.\n",
            thousands(rounds as f64),
            thousands(cost.switches_per_s),
            cost.cpu_percent,
            cost.ms_per_1000_switches,
            or_dash(cost.bpf_ms_per_1000_switches, 2),
            thousands(Agent::events_per_s(&facts)),
            cost.lost_events,
            cost.ms_per_1000_switches,
            or_dash(cost.bpf_ms_per_1000_switches, 2),
        ),
        ..cost
    })
}
