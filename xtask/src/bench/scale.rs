//! Scale: the event rate the agent sustains end to end (a storm from a followed process with 50
//! busy threads), and the agent's CPU as the same switch rate is spread over 1, 10 and 100
//! followed threads, then processes.

use std::{path::Path, thread, time::Duration};

use anyhow::{Context, Result};

use super::{
    Agent, Measured, Options, Window, build_c_target, or_dash, start_agent, start_agent_niced,
    start_switcher, thousands,
};

/// The switch rate of the thread/process scaling runs: the goal's reference rate.
pub const SPREAD_RATE: u64 = 10_000;
const STORM_PAIRS: u32 = 25;

#[derive(Clone, Copy, Debug)]
pub struct ScaleRow {
    pub mode: &'static str,
    pub count: u32,
    pub measured: Measured,
    pub events_per_s: f64,
    pub lost: u64,
}

#[derive(Clone, Copy, Debug)]
pub struct Storm {
    /// The agent's nice value (0: as started by hand; negative: ahead of the busy target).
    pub nice: i32,
    pub measured: Measured,
    pub events_per_s: f64,
    pub lost: u64,
    pub events: u64,
}

pub struct Scale {
    /// The storm with the agent at normal priority, then at a raised one.
    pub storms: Vec<Storm>,
    pub rows: Vec<ScaleRow>,
    pub markdown: String,
}

impl Scale {
    /// Agent CPU (% of one core) at the reference rate on one thread, scaled to exactly
    /// [`SPREAD_RATE`] switches/s; and the same for its eBPF programs.
    pub fn percent_at_reference_rate(&self) -> Option<(f64, f64)> {
        let row = self
            .rows
            .iter()
            .find(|r| r.mode == "threads" && r.count == 1)?;
        // m ms of CPU per 1,000 switches at R switches/s is m * R / 1,000 ms per second, i.e.
        // m * R / 10,000 percent of one core.
        let at_rate = |ms_per_1000: f64| ms_per_1000 * SPREAD_RATE as f64 / 1e4;
        Some((
            at_rate(row.measured.ms_per_1000_switches()),
            at_rate(row.measured.bpf_ms_per_1000_switches()),
        ))
    }
}

/// The nice value of the second storm run: the agent ahead of a target that keeps every CPU
/// busy with 50 runnable threads (at nice 0 it gets a fair share, 1/51 of the machine).
const RAISED_NICE: i32 = -10;

pub fn run(opts: &Options, dir: &Path) -> Result<Scale> {
    let switcher = build_c_target(dir, "switcher", &["-O2", "-g", "-pthread"])?;
    let mut storms = Vec::new();
    for nice in [0, RAISED_NICE] {
        eprintln!(
            "bench: scale: storm of {} threads, agent at nice {nice}",
            2 * STORM_PAIRS
        );
        storms.push(storm(opts, dir, &switcher, nice).context("the 50-thread storm")?);
    }
    let mut rows = Vec::new();
    for mode in ["threads", "procs"] {
        for count in [1u32, 10, 100] {
            eprintln!("bench: scale: {count} {mode}");
            let target = start_switcher(&switcher, mode, count, SPREAD_RATE)?;
            let agent = start_agent(target.id(), &dir.join("scale"), &[])?;
            thread::sleep(Duration::from_millis(500));
            let window = Window::start(Some(agent.id()), target.id());
            thread::sleep(opts.window);
            let measured = window.finish();
            let facts = agent
                .stop_with_target(target)
                .with_context(|| format!("recording {count} {mode}"))?;
            rows.push(ScaleRow {
                mode: if mode == "procs" {
                    "processes"
                } else {
                    "threads"
                },
                count,
                measured,
                events_per_s: Agent::events_per_s(&facts),
                lost: facts.lost_events,
            });
        }
    }
    let markdown = markdown(opts, &storms, &rows);
    Ok(Scale {
        storms,
        rows,
        markdown,
    })
}

fn storm(opts: &Options, dir: &Path, switcher: &Path, nice: i32) -> Result<Storm> {
    let target = start_switcher(switcher, "pairs", STORM_PAIRS, 0)?;
    let agent = start_agent_niced(target.id(), &dir.join("storm"), &[], nice)?;
    let window = Window::start(Some(agent.id()), target.id());
    thread::sleep(opts.window * 2);
    let measured = window.finish();
    let facts = agent.stop_with_target(target)?;
    Ok(Storm {
        nice,
        measured,
        events_per_s: Agent::events_per_s(&facts),
        lost: facts.lost_events,
        events: facts.events,
    })
}

fn markdown(opts: &Options, storms: &[Storm], rows: &[ScaleRow]) -> String {
    let mut text = format!(
        "Storm: a followed process with {} threads ping-ponging over pipes as fast as they can (`switcher pairs {STORM_PAIRS} 0`), recorded {} s at default settings, with the agent started as usual (nice 0) and ahead of the target (`nice -n {RAISED_NICE}`):\n\n| agent priority | target switches/s | events received | events/s sustained end to end | lost events | agent CPU (% of one core) | eBPF programs (% of one core) |\n| --- | --- | --- | --- | --- | --- | --- |\n",
        2 * STORM_PAIRS,
        2 * opts.window.as_secs(),
    );
    for storm in storms {
        text.push_str(&format!(
            "| nice {} | {} | {} | {} | {} | {:.1} | {} |\n",
            storm.nice,
            thousands(storm.measured.switches_per_s()),
            thousands(storm.events as f64),
            thousands(storm.events_per_s),
            storm.lost,
            storm.measured.cpu_percent(),
            or_dash(storm.measured.bpf_percent(), 1),
        ));
    }
    text.push_str(&format!(
        "\nThe same {} switches/s spread over more followed threads, then processes (each wakes on a timer, burns ~20 us in user code and sleeps: every switch-out is an event with a user-stack copy), {} s each:\n\n| followed | target switches/s | events/s received | agent CPU (% of one core) | agent CPU per 1,000 target switches | eBPF programs per 1,000 target switches | lost events |\n| --- | --- | --- | --- | --- | --- | --- |\n",
        thousands(SPREAD_RATE as f64),
        opts.window.as_secs()
    ));
    for row in rows {
        text.push_str(&format!(
            "| {} {} | {} | {} | {:.2} | {:.2} ms | {} ms | {} |\n",
            row.count,
            match (row.mode, row.count) {
                ("threads", 1) => "thread",
                ("processes", 1) => "process",
                (mode, _) => mode,
            },
            thousands(row.measured.switches_per_s()),
            thousands(row.events_per_s),
            row.measured.cpu_percent(),
            row.measured.ms_per_1000_switches(),
            or_dash(row.measured.bpf_ms_per_1000_switches(), 2),
            row.lost
        ));
    }
    text
}
