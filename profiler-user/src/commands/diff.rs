//! `stallscope diff BASE NEW`: what grew between two recordings: a differential flamegraph
//! (inferno's differential mode: red grew, blue shrank) and a table of stall count, total,
//! percentiles and the functions whose stall time grew most, judged against growth budgets.

use std::{collections::HashMap, fmt::Write as _, path::PathBuf};

use anyhow::{Context as _, Result};

use crate::{
    analysis::budget,
    commands::render,
    config::{
        View,
        fail_on::{Budget, nearest_rank},
    },
    model::{Recording, Verdict, top_user_frames},
    outputs::folded::{flamegraph_svg, stall_folded_without_ids},
    store::recording::load_recording,
    units::format_duration,
};

pub struct DiffOptions {
    pub base: PathBuf,
    pub new: PathBuf,
    pub out: Option<PathBuf>,
    pub budgets: Vec<Budget>,
}

pub const DIFF_FOLDED: &str = "diff.folded";
pub const DIFF_SVG: &str = "diff.svg";
pub const DIFF_MD: &str = "diff.md";

/// Nearest-rank percentile of stall durations (0 with no stalls), as budgets compute it.
pub fn percentile_ns(recording: &Recording, percent: usize) -> u64 {
    let mut durations: Vec<u64> = recording.stalls.iter().map(|s| s.duration_ns).collect();
    durations.sort_unstable();
    nearest_rank(&durations, percent)
}

/// Stall time by the innermost user function of each stack.
fn time_by_function(recording: &Recording) -> HashMap<String, u64> {
    let mut totals = HashMap::new();
    for stall in &recording.stalls {
        for stack in &stall.stacks {
            if let Some(frame) = top_user_frames(stack, 1).first() {
                *totals.entry(frame.function.to_string()).or_default() += stack.weight_ns;
            }
        }
    }
    totals
}

fn change(base: u64, new: u64) -> String {
    if base == 0 {
        return if new == 0 { "=".into() } else { "new".into() };
    }
    format!("{:+.1}%", (new as f64 - base as f64) * 100.0 / base as f64)
}

/// The growth table, as markdown.
pub fn growth_table(base: &Recording, new: &Recording) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "| metric | base | new | change |");
    let _ = writeln!(md, "| --- | --- | --- | --- |");
    let count = |r: &Recording| r.stalls.len() as u64;
    let total = |r: &Recording| r.stalls.iter().map(|s| s.duration_ns).sum::<u64>();
    let _ = writeln!(
        md,
        "| stalls | {} | {} | {} |",
        count(base),
        count(new),
        change(count(base), count(new))
    );
    let rows: [(&str, u64, u64); 5] = [
        ("total stall time", total(base), total(new)),
        ("p50", percentile_ns(base, 50), percentile_ns(new, 50)),
        ("p90", percentile_ns(base, 90), percentile_ns(new, 90)),
        ("p99", percentile_ns(base, 99), percentile_ns(new, 99)),
        ("longest", percentile_ns(base, 100), percentile_ns(new, 100)),
    ];
    for (name, b, n) in rows {
        let _ = writeln!(
            md,
            "| {name} | {} | {} | {} |",
            format_duration(b),
            format_duration(n),
            change(b, n)
        );
    }
    let base_fns = time_by_function(base);
    let new_fns = time_by_function(new);
    let mut grown: Vec<(&String, u64, u64)> = new_fns
        .iter()
        .map(|(f, n)| (f, base_fns.get(f).copied().unwrap_or(0), *n))
        .filter(|(_, b, n)| n > b)
        .collect();
    grown.sort_by_key(|(_, b, n)| std::cmp::Reverse(n - b));
    if !grown.is_empty() {
        let _ = writeln!(md, "\n| function (top of stack) | base | new | change |");
        let _ = writeln!(md, "| --- | --- | --- | --- |");
        for (function, b, n) in grown.into_iter().take(10) {
            let _ = writeln!(
                md,
                "| `{function}` | {} | {} | {} |",
                format_duration(b),
                format_duration(n),
                change(b, n)
            );
        }
    }
    md
}

/// Differential folded lines ("stack before after"), process and thread named without ids so
/// the two runs' frames line up.
pub fn differential_folded(base: &Recording, new: &Recording) -> Result<Vec<String>> {
    // `diff` has no --native: both sides read as the default view.
    let before = stall_folded_without_ids(base, View::PythonFirst).join("\n");
    let after = stall_folded_without_ids(new, View::PythonFirst).join("\n");
    let mut out = Vec::new();
    let options = inferno::differential::Options::default();
    inferno::differential::from_readers(options, before.as_bytes(), after.as_bytes(), &mut out)
        .context("computing the differential profile")?;
    Ok(String::from_utf8_lossy(&out)
        .lines()
        .map(str::to_string)
        .collect())
}

pub struct DiffOutcome {
    pub verdict: Verdict,
}

impl DiffOutcome {
    pub fn exit_code(&self) -> u8 {
        self.verdict.exit_code()
    }
}

pub fn run(options: DiffOptions) -> Result<DiffOutcome> {
    let base = load_recording(&options.base)?;
    let new = load_recording(&options.new)?;
    let verdict = budget::judge_growth(&options.budgets, &base, &new);
    let out_dir = options.out.clone().unwrap_or_else(|| options.new.clone());
    render::prepare_output_dir(&out_dir)?;
    let lines = differential_folded(&base, &new)?;
    let write = |name: &str, bytes: &[u8]| -> Result<PathBuf> {
        let path = out_dir.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    };
    let mut folded = lines.join("\n");
    folded.push('\n');
    let folded_path = write(DIFF_FOLDED, folded.as_bytes())?;
    let svg = flamegraph_svg(
        &lines,
        "stallscope diff: stall time, red grew and blue shrank since the base",
    )?;
    let svg_path = write(DIFF_SVG, &svg)?;
    let mut md = format!(
        "## stallscope diff\n\nbase: `{}`\nnew: `{}`\n\n",
        options.base.display(),
        options.new.display()
    );
    md.push_str(&growth_table(&base, &new));
    if !verdict.budgets.is_empty() {
        let _ = writeln!(
            md,
            "\nverdict: {}",
            if verdict.passed {
                "passed"
            } else {
                "budget exceeded"
            }
        );
        for b in &verdict.budgets {
            let _ = writeln!(
                md,
                "- `{}`: {} {} (limit {}) {}",
                b.budget,
                b.measured,
                b.actual,
                b.limit,
                if b.passed { "pass" } else { "FAIL" }
            );
        }
    }
    let md_path = write(DIFF_MD, md.as_bytes())?;
    println!("{md}");
    println!(
        "outputs:\n  {}\n  {}\n  {}",
        svg_path.display(),
        folded_path.display(),
        md_path.display()
    );
    Ok(DiffOutcome { verdict })
}
