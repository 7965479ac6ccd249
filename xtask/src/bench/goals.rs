//! The goals of issue #9, each with what this run measured and whether it was met (or missed by
//! how much).

use super::{
    costs::{AgentCost, EveryoneElse},
    long_run::LongRunFacts,
    loss::Sweep,
    or_dash,
    overhead::{Overhead, Tool},
    scale::Scale,
    thousands,
};

pub struct Inputs<'a> {
    pub overhead: &'a Overhead,
    pub agent_cost: &'a AgentCost,
    pub everyone_else: &'a EveryoneElse,
    pub sweep: &'a Sweep,
    pub scale: &'a Scale,
    /// The latest long runs and their RSS after 10 minutes (MiB).
    pub long_runs: Vec<(LongRunFacts, f64)>,
}

/// "met", or "missed by ..." in the measure's own terms.
fn verdict(measured: f64, limit: f64, unit: &str) -> String {
    if !measured.is_finite() {
        "not measured".into()
    } else if measured <= limit {
        "met".into()
    } else {
        format!("**missed** by {:.1} {unit}", measured - limit)
    }
}

pub fn table(inputs: &Inputs) -> String {
    let mut text = String::from("| goal | measured | verdict |\n| --- | --- | --- |\n");
    for (tool, limit) in [(Tool::Stallscope, 1.0), (Tool::Stallscope999, 3.0)] {
        for app in &inputs.overhead.apps {
            let Some(row) = app.row(tool) else { continue };
            // Throughput loss in percent: the ratio's median, and its range over rounds.
            let loss = 100.0 * (1.0 - row.requests_ratio.median);
            text.push_str(&format!(
                "| throughput loss ≤ {limit:.0} % at {} ({}) | {loss:.1} % (rounds: {:.1} to {:.1} %); meanwhile the agent used {:.1} % of one core and its eBPF programs {} % | {} |\n",
                if tool == Tool::Stallscope {
                    "default settings"
                } else {
                    "999 Hz"
                },
                app.name,
                100.0 * (1.0 - row.requests_ratio.max),
                100.0 * (1.0 - row.requests_ratio.min),
                row.cpu_percent.median,
                row.kernel.map_or_else(|| "-".into(), |m| or_dash(m.bpf_percent(), 1)),
                verdict(loss, limit, "points"),
            ));
        }
    }
    match inputs.scale.percent_at_reference_rate() {
        Some((percent, bpf)) => text.push_str(&format!(
            "| agent ≤ 2 % of one core at 10,000 target switches/s | {percent:.2} % (one followed thread at 10,000 switches/s, section 5; its eBPF programs: {} % more); {:.2} % from the ping-pong's cost per switch (section 2) | {} |\n",
            or_dash(bpf, 2),
            inputs.agent_cost.ms_per_1000_switches,
            verdict(percent, 2.0, "points"),
        )),
        None => text.push_str("| agent ≤ 2 % of one core at 10,000 target switches/s | not measured | - |\n"),
    }
    let lost: u64 = inputs
        .overhead
        .apps
        .iter()
        .filter_map(|app| app.row(Tool::Stallscope))
        .map(|row| row.lost_events)
        .sum();
    text.push_str(&format!(
        "| zero lost events at default settings under the load test | {lost} lost | {} |\n",
        if lost == 0 {
            "met".to_string()
        } else {
            format!("**missed** by {lost} events")
        }
    ));
    if inputs.long_runs.is_empty() {
        text.push_str(
            "| RSS ≤ 100 MB after 10 minutes | no long run of 10 minutes or more (`cargo xtask bench --long`) | - |\n",
        );
    }
    for (facts, mib) in &inputs.long_runs {
        let mb = mib * 1.048_576;
        text.push_str(&format!(
            "| RSS ≤ 100 MB after 10 minutes | {mb:.1} MB ({mib:.1} MiB; `{}`, {}) | {} |\n",
            facts.file,
            facts.machine,
            verdict(mb, 100.0, "MB")
        ));
    }
    let e = inputs.everyone_else;
    text.push_str(&format!(
        "| an unfollowed process's slowdown within noise | {:+.1} % (noise {:.1} %) | {} |\n",
        100.0 * e.slowdown(),
        100.0 * e.noise(),
        verdict(100.0 * e.slowdown(), 100.0 * e.noise(), "points"),
    ));
    if let Some(ring) = inputs.sweep.rings.first() {
        let note = match (ring.onset(), ring.highest_clean()) {
            (Some(onset), _) => format!(
                "loss starts at {} switches/s with the default {} KiB ring buffer",
                thousands(onset.switches_per_s),
                thousands(ring.ring_kib as f64)
            ),
            (None, Some(clean)) => format!(
                "no loss up to {} switches/s with the default {} KiB ring buffer",
                thousands(clean.switches_per_s),
                thousands(ring.ring_kib as f64)
            ),
            (None, None) => "not measured".into(),
        };
        text.push_str(&format!("\nFor reference: {note} (section 4)"));
        for storm in &inputs.scale.storms {
            text.push_str(&format!(
                "; a 50-thread storm of {} switches/s, agent at nice {}: {} events/s end to end, {} lost",
                thousands(storm.measured.switches_per_s()),
                storm.nice,
                thousands(storm.events_per_s),
                storm.lost
            ));
        }
        text.push_str(" (section 5).\n");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::verdict;

    #[test]
    fn verdicts() {
        assert_eq!(verdict(0.5, 1.0, "points"), "met");
        assert_eq!(verdict(1.0, 1.0, "points"), "met");
        assert_eq!(verdict(1.75, 1.0, "points"), "**missed** by 0.8 points");
        assert_eq!(verdict(f64::NAN, 1.0, "points"), "not measured");
    }
}
