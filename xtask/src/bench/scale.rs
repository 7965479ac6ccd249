//! Scale: the event rate the agent sustains end to end (a storm from a followed process with 50
//! busy threads), and the agent's CPU as the same switch rate is spread over 1, 10 and 100
//! followed threads, then processes.

use std::{path::Path, thread, time::Duration};

use anyhow::{Context, Result};

use super::{
    Agent, Measured, Options, Window, build_c_target, start_agent, start_switcher, thousands,
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
    pub measured: Measured,
    pub events_per_s: f64,
    pub lost: u64,
    pub events: u64,
}

pub struct Scale {
    pub storm: Storm,
    pub rows: Vec<ScaleRow>,
    pub markdown: String,
}

impl Scale {
    /// Agent CPU (% of one core) at the reference rate on one thread, scaled to exactly
    /// [`SPREAD_RATE`] switches/s.
    pub fn percent_at_reference_rate(&self) -> Option<f64> {
        let row = self
            .rows
            .iter()
            .find(|r| r.mode == "threads" && r.count == 1)?;
        // m ms of CPU per 1,000 switches at R switches/s is m * R / 1,000 ms per second, i.e.
        // m * R / 10,000 percent of one core.
        Some(row.measured.ms_per_1000_switches() * SPREAD_RATE as f64 / 1e4)
    }
}

pub fn run(opts: &Options, dir: &Path) -> Result<Scale> {
    let switcher = build_c_target(dir, "switcher", &["-O2", "-g", "-pthread"])?;
    eprintln!("bench: scale: storm of {} threads", 2 * STORM_PAIRS);
    let storm = storm(opts, dir, &switcher).context("the 50-thread storm")?;
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
    let markdown = markdown(opts, &storm, &rows);
    Ok(Scale {
        storm,
        rows,
        markdown,
    })
}

fn storm(opts: &Options, dir: &Path, switcher: &Path) -> Result<Storm> {
    let target = start_switcher(switcher, "pairs", STORM_PAIRS, 0)?;
    let agent = start_agent(target.id(), &dir.join("storm"), &[])?;
    let window = Window::start(Some(agent.id()), target.id());
    thread::sleep(opts.window * 2);
    let measured = window.finish();
    let facts = agent.stop_with_target(target)?;
    Ok(Storm {
        measured,
        events_per_s: Agent::events_per_s(&facts),
        lost: facts.lost_events,
        events: facts.events,
    })
}

fn markdown(opts: &Options, storm: &Storm, rows: &[ScaleRow]) -> String {
    let mut text = format!(
        "Storm: a followed process with {} threads ping-ponging over pipes as fast as they can (`switcher pairs {STORM_PAIRS} 0`), recorded {} s at default settings:\n\n| target switches/s | events received | events/s sustained end to end | lost events | agent CPU (% of one core) |\n| --- | --- | --- | --- | --- |\n| {} | {} | {} | {} | {:.1} |\n",
        2 * STORM_PAIRS,
        2 * opts.window.as_secs(),
        thousands(storm.measured.switches_per_s()),
        thousands(storm.events as f64),
        thousands(storm.events_per_s),
        storm.lost,
        storm.measured.cpu_percent(),
    );
    text.push_str(&format!(
        "\nThe same {} switches/s spread over more followed threads, then processes (each wakes on a timer, burns ~20 us in user code and sleeps: every switch-out is an event with a user-stack copy), {} s each:\n\n| followed | target switches/s | events/s received | agent CPU (% of one core) | agent CPU per 1,000 target switches | lost events |\n| --- | --- | --- | --- | --- | --- |\n",
        thousands(SPREAD_RATE as f64),
        opts.window.as_secs()
    ));
    for row in rows {
        text.push_str(&format!(
            "| {} {} | {} | {} | {:.2} | {:.2} ms | {} |\n",
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
            row.lost
        ));
    }
    text
}
