//! Event loss against the switch rate: a followed ping-pong (`bench/targets/switcher.c`, four
//! pairs of threads) at increasing rates, at the default ring buffer and at a small one, to
//! find where the kernel starts dropping events.

use std::{path::Path, thread, time::Duration};

use anyhow::{Context, Result};

use super::{
    Agent, Options, Window, build_c_target, or_dash, start_agent, start_switcher, thousands,
};

/// The agent's default (`--ring-buffer-kib`).
pub const DEFAULT_RING_KIB: u64 = 4 * 1024;
/// A small ring, to show where loss starts when the buffer is what limits.
const SMALL_RING_KIB: u64 = 256;
const PAIRS: u32 = 4;

#[derive(Clone, Copy, Debug)]
pub struct Step {
    /// Switch-outs per second asked of the target (0: as fast as it can).
    pub aimed: u64,
    pub switches_per_s: f64,
    pub events_per_s: f64,
    pub lost: u64,
    pub lost_share: f64,
    pub cpu_percent: f64,
    pub bpf_percent: f64,
}

pub struct RingSweep {
    pub ring_kib: u64,
    pub steps: Vec<Step>,
}

impl RingSweep {
    /// The lowest switch rate with lost events.
    pub fn onset(&self) -> Option<&Step> {
        self.steps
            .iter()
            .filter(|s| s.lost > 0)
            .min_by(|a, b| a.switches_per_s.total_cmp(&b.switches_per_s))
    }

    /// The highest switch rate without loss.
    pub fn highest_clean(&self) -> Option<&Step> {
        self.steps
            .iter()
            .filter(|s| s.lost == 0)
            .max_by(|a, b| a.switches_per_s.total_cmp(&b.switches_per_s))
    }
}

pub struct Sweep {
    pub rings: Vec<RingSweep>,
    pub markdown: String,
}

pub fn sweep(opts: &Options, dir: &Path) -> Result<Sweep> {
    let switcher = build_c_target(dir, "switcher", &["-O2", "-g", "-pthread"])?;
    let rates: &[u64] = if opts.quick {
        &[30_000, 0]
    } else {
        &[10_000, 30_000, 100_000, 300_000, 0]
    };
    let mut rings = Vec::new();
    for ring_kib in [DEFAULT_RING_KIB, SMALL_RING_KIB] {
        let mut steps = Vec::new();
        for &aimed in rates {
            eprintln!(
                "bench: loss: ring {ring_kib} KiB, {} switches/s",
                if aimed == 0 {
                    "as many".to_string()
                } else {
                    thousands(aimed as f64)
                }
            );
            let step = one_step(opts, dir, &switcher, ring_kib, aimed)
                .with_context(|| format!("loss sweep at {aimed}/s, ring {ring_kib} KiB"))?;
            steps.push(step);
        }
        rings.push(RingSweep { ring_kib, steps });
    }
    let markdown = markdown(opts, &rings);
    Ok(Sweep { rings, markdown })
}

fn one_step(
    opts: &Options,
    dir: &Path,
    switcher: &Path,
    ring_kib: u64,
    aimed: u64,
) -> Result<Step> {
    let target = start_switcher(switcher, "pairs", PAIRS, aimed)?;
    let ring = ring_kib.to_string();
    let extra: &[&str] = if ring_kib == DEFAULT_RING_KIB {
        &[]
    } else {
        &["--ring-buffer-kib", &ring]
    };
    let agent = start_agent(target.id(), &dir.join("loss-sweep"), extra)?;
    thread::sleep(Duration::from_millis(300));
    let window = Window::start(Some(agent.id()), target.id());
    thread::sleep(opts.window);
    let measured = window.finish();
    let facts = agent.stop_with_target(target)?;
    let events_per_s = Agent::events_per_s(&facts);
    Ok(Step {
        aimed,
        switches_per_s: measured.switches_per_s(),
        events_per_s,
        lost: facts.lost_events,
        lost_share: facts.lost_events as f64 / (facts.events + facts.lost_events).max(1) as f64,
        cpu_percent: measured.cpu_percent(),
        bpf_percent: measured.bpf_percent(),
    })
}

fn markdown(opts: &Options, rings: &[RingSweep]) -> String {
    let mut text = format!(
        "\nSweep: a followed process whose {PAIRS} pairs of threads ping-pong over pipes at a set rate (`bench/targets/switcher.c`; `read` is not a wait point, so every switch-out is an event with a user-stack copy), recorded {} s per step at default settings but the ring buffer size:\n\n| ring buffer | switches/s aimed | target switches/s | events/s received | lost events | lost share | agent CPU (% of one core) | eBPF programs (% of one core) |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n",
        opts.window.as_secs()
    );
    for ring in rings {
        for step in &ring.steps {
            text.push_str(&format!(
                "| {} KiB | {} | {} | {} | {} | {:.2} % | {:.1} | {} |\n",
                thousands(ring.ring_kib as f64),
                if step.aimed == 0 {
                    "as many as it can".to_string()
                } else {
                    thousands(step.aimed as f64)
                },
                thousands(step.switches_per_s),
                thousands(step.events_per_s),
                step.lost,
                100.0 * step.lost_share,
                step.cpu_percent,
                or_dash(step.bpf_percent, 1),
            ));
        }
    }
    text.push('\n');
    for ring in rings {
        let size = format!("{} KiB", thousands(ring.ring_kib as f64));
        match (ring.onset(), ring.highest_clean()) {
            (Some(onset), Some(clean)) => text.push_str(&format!(
                "- {size}: no loss up to {} switches/s; loss from {} switches/s ({:.2} % of events).\n",
                thousands(clean.switches_per_s),
                thousands(onset.switches_per_s),
                100.0 * onset.lost_share
            )),
            (Some(onset), None) => text.push_str(&format!(
                "- {size}: loss at every rate tried, from {} switches/s.\n",
                thousands(onset.switches_per_s)
            )),
            (None, Some(clean)) => text.push_str(&format!(
                "- {size}: no loss at any rate tried, up to {} switches/s (the most this machine made with the agent attached).\n",
                thousands(clean.switches_per_s)
            )),
            (None, None) => {}
        }
    }
    text
}
