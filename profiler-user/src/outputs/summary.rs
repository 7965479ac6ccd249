//! The summaries: the text printed when a recording ends, `summary.md` (also appended to
//! GitHub's job summary), and the lines they share (worker churn, Python and JavaScript
//! coverage, ordering trouble).

use std::{fmt::Write as _, fs, io, path::Path};

use anyhow::{Context as _, Result};

use crate::{
    analysis::headline::{self, View},
    model::{JsReport, ProcessRecord, PythonReport, Recording, StallRecord, task_text},
    sanitize,
    units::format_duration,
};

/// Appends the markdown summary to `$GITHUB_STEP_SUMMARY` when running in GitHub Actions.
pub fn append_github_step_summary(recording: &Recording, view: View) -> Result<()> {
    let Some(path) = std::env::var_os("GITHUB_STEP_SUMMARY") else {
        return Ok(());
    };
    let mut file = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .with_context(|| {
            format!(
                "opening $GITHUB_STEP_SUMMARY ({})",
                Path::new(&path).display()
            )
        })?;
    io::Write::write_all(&mut file, summary_markdown(recording, view).as_bytes())
        .context("appending to $GITHUB_STEP_SUMMARY")
}

/// The summary for people and CI job pages: verdict first, then the worst stalls.
pub fn summary_markdown(recording: &Recording, view: View) -> String {
    let mut md = String::new();
    let verdict = &recording.verdict;
    let stalls = &recording.stalls;
    let headline = if verdict.passed {
        "✅ stallscope: passed"
    } else {
        "❌ stallscope: budget exceeded"
    };
    let _ = writeln!(md, "## {headline}\n");
    if !verdict.budgets.is_empty() {
        let _ = writeln!(
            md,
            "| budget | where | measured | actual | limit | result |"
        );
        let _ = writeln!(md, "| --- | --- | --- | --- | --- | --- |");
        for b in &verdict.budgets {
            let _ = writeln!(
                md,
                "| `{}` | {} | {} | {} | {} | {} |",
                sanitize::markdown_code(&b.budget),
                sanitize::markdown_text(&b.subject),
                b.measured,
                b.actual,
                b.limit,
                if b.passed { "pass" } else { "**FAIL**" }
            );
        }
        let _ = writeln!(md);
    }
    let total: u64 = stalls.iter().map(|s| s.duration_ns).sum();
    let longest = stalls.iter().map(|s| s.duration_ns).max().unwrap_or(0);
    let _ = writeln!(
        md,
        "Recorded {} of {}: **{} stall(s)** over {} (longest {}, total {}).\n",
        format_duration(recording.recorded_ns),
        recording
            .processes
            .iter()
            .map(|p| format!("{} ({})", sanitize::markdown_text(&p.comm), p.pid))
            .collect::<Vec<_>>()
            .join(", "),
        stalls.len(),
        format_duration(recording.threshold_ns),
        format_duration(longest),
        format_duration(total),
    );
    if !stalls.is_empty() {
        let _ = writeln!(md, "| duration | thread | mostly | where | why |");
        let _ = writeln!(md, "| --- | --- | --- | --- | --- |");
        for stall in worst_stalls(recording, 10) {
            let headline = headline::headline(stall, view);
            let place = headline
                .as_ref()
                .map(|h| h.place(" ← "))
                .unwrap_or_default();
            let mut why = match &headline {
                Some(h) if h.is_mixed() => "mixed: shares in where".to_string(),
                Some(h) => h.cause().to_string(),
                None => stall.no_frames_why().to_string(),
            };
            if let Some(task) = &stall.task {
                let _ = write!(why, "; in {}", task_text(task));
            }
            let _ = writeln!(
                md,
                "| {}{} | {} ({}/{}) | {} | {} | {} |",
                format_duration(stall.duration_ns),
                stall.caveat(),
                sanitize::markdown_text(&stall.comm),
                stall.pid,
                stall.tid,
                stall.dominant_kind(),
                sanitize::markdown_text(&place),
                sanitize::markdown_text(why.trim())
            );
        }
        let _ = writeln!(md);
    }
    let churn = churn_lines(recording);
    if !churn.is_empty() {
        // A fenced block shows its text as is; only a backtick run could close it early.
        let churn: Vec<String> = churn
            .iter()
            .map(|l| sanitize::terminal(l).replace('`', "'"))
            .collect();
        let _ = writeln!(md, "```\n{}\n```\n", churn.join("\n"));
    }
    if let Some(line) = startup_line(recording) {
        let _ = writeln!(md, "{}\n", sanitize::markdown_text(&line));
    }
    for hint in &recording.hints {
        let _ = writeln!(md, "> hint: {}\n", sanitize::markdown_text(hint));
    }
    if let Some(line) = python_line(&recording.python) {
        let _ = writeln!(md, "```\n{line}\n```\n");
    }
    let drops = &recording.drops;
    let _ = writeln!(
        md,
        "Lost events: {} · stacks lost: {} kernel, {} user.",
        recording.lost_events,
        drops.kernel_stack,
        drops.user_stacks_lost()
    );
    if let Some(line) = reorder_line(recording) {
        let _ = writeln!(md, "\n{line}");
    }
    md
}

/// Says what the reorder stage could not put in order, and stalls that do not add up
/// (nothing when all is well).
pub fn reorder_line(recording: &Recording) -> Option<String> {
    let r = &recording.reorder;
    let not_adding_up = recording.stalls.iter().filter(|s| !s.adds_up).count();
    if r.late_events == 0 && r.released_early == 0 && not_adding_up == 0 {
        return None;
    }
    Some(format!(
        "ordering: {} events came later than the {} reorder window, {} left it early (full); {} stall(s) with time unaccounted (each says why)",
        r.late_events,
        format_duration(r.window_ns),
        r.released_early,
        not_adding_up
    ))
}

/// The longest stalls, longest first.
fn worst_stalls(recording: &Recording, count: usize) -> Vec<&StallRecord> {
    let mut worst: Vec<&StallRecord> = recording.stalls.iter().collect();
    worst.sort_by_key(|s| std::cmp::Reverse(s.duration_ns));
    worst.truncate(count);
    worst
}

/// Worker churn, for services whose master forks and recycles workers: how many processes
/// started and exited during the recording, when (seconds from its start), and how they ended.
pub fn churn_lines(recording: &Recording) -> Vec<String> {
    let seconds = |ns: u64| ns.saturating_sub(recording.start_ns) as f64 / 1e9;
    let started: Vec<&ProcessRecord> = recording
        .processes
        .iter()
        .filter(|p| p.started_ns.is_some())
        .collect();
    let exited: Vec<&ProcessRecord> = recording
        .processes
        .iter()
        .filter(|p| p.exited_ns.is_some())
        .collect();
    if started.is_empty() && exited.is_empty() {
        return Vec::new();
    }
    let span = |times: Vec<u64>| match (times.iter().min(), times.iter().max()) {
        (Some(first), Some(last)) => format!(
            " (first at +{:.1} s, last at +{:.1} s)",
            seconds(*first),
            seconds(*last)
        ),
        _ => String::new(),
    };
    let mut lines = vec![format!(
        "processes: {} started{}, {} exited{}",
        started.len(),
        span(started.iter().filter_map(|p| p.started_ns).collect()),
        exited.len(),
        span(exited.iter().filter_map(|p| p.exited_ns).collect()),
    )];
    for process in exited.iter().take(20) {
        let how = match (&process.exit_code, &process.exit_signal) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(signal)) => format!("killed by {signal}"),
            (None, None) => "exited".into(),
        };
        lines.push(format!(
            "  {} ({}) {how} at +{:.1} s",
            process.comm,
            process.pid,
            seconds(process.exited_ns.unwrap_or(0))
        ));
    }
    lines
}

/// The human summary printed at the end.
pub fn summary_text(recording: &Recording, written: &[String], view: View) -> String {
    let mut text = String::new();
    let processes: Vec<String> = recording
        .processes
        .iter()
        .map(|p| format!("{} ({})", p.comm, p.pid))
        .collect();
    let loops = recording.threads.iter().filter(|t| t.is_loop).count();
    let iterations: u64 = recording.threads.iter().map(|t| t.iterations).sum();
    let _ = writeln!(
        text,
        "\nstallscope: recorded {} for {}: {} loop thread(s), {} iterations, {} stall(s) over {}",
        processes.join(", "),
        format_duration(recording.recorded_ns),
        loops,
        iterations,
        recording.stalls.len(),
        format_duration(recording.threshold_ns),
    );
    if !recording.stalls.is_empty() {
        let total: u64 = recording.stalls.iter().map(|s| s.duration_ns).sum();
        let longest = recording
            .stalls
            .iter()
            .map(|s| s.duration_ns)
            .max()
            .unwrap_or(0);
        let _ = writeln!(
            text,
            "  longest {}, total {}",
            format_duration(longest),
            format_duration(total)
        );
        for stall in worst_stalls(recording, 10) {
            let (top, cause) = match headline::headline(stall, view) {
                Some(h) => (h.place(" < "), h.cause().to_string()),
                None => (
                    format!("(no frames: {})", stall.no_frames_why()),
                    String::new(),
                ),
            };
            let _ = writeln!(
                text,
                "  {:>9}  {}/{}  mostly {:<8}  {}{}{}",
                format_duration(stall.duration_ns),
                stall.comm,
                stall.tid,
                stall.dominant_kind(),
                top,
                cause,
                stall.caveat()
            );
        }
    }
    if loops == 0 {
        let _ = writeln!(
            text,
            "  no loop thread was seen (no thread waited in epoll/poll/select): stalls are runs that held a CPU past the threshold"
        );
    }
    let drops = &recording.drops;
    if recording.lost_events > 0 || drops.kernel_stack + drops.user_stacks_lost() > 0 {
        let _ = writeln!(
            text,
            "  lost: {} events (ring buffer full), {} kernel and {} user stacks; results may be incomplete",
            recording.lost_events,
            drops.kernel_stack,
            drops.user_stacks_lost()
        );
    }
    if let Some(line) = reorder_line(recording) {
        let _ = writeln!(text, "  {line}");
    }
    if let Some(line) = python_line(&recording.python) {
        let _ = writeln!(text, "  {line}");
    }
    if let Some(line) = javascript_line(&recording.javascript) {
        let _ = writeln!(text, "  {line}");
    }
    for line in churn_lines(recording) {
        let _ = writeln!(text, "  {line}");
    }
    if let Some(line) = startup_line(recording) {
        let _ = writeln!(text, "  {line}");
    }
    if !recording.kernel_limits.is_empty() {
        let _ = writeln!(
            text,
            "  on this kernel: {}",
            recording.kernel_limits.join("; ")
        );
    }
    for hint in &recording.hints {
        let _ = writeln!(text, "  hint: {hint}");
    }
    let _ = writeln!(text, "outputs:");
    for path in written {
        let _ = writeln!(text, "  {path}");
    }
    sanitize::terminal_lines(&text)
}

/// "Python 3.12 (2 processes): 1,234 stacks read, 0 frames unreadable, 0 cut short".
fn python_line(python: &PythonReport) -> Option<String> {
    if python.interpreters.is_empty() {
        return None;
    }
    let mut versions: Vec<&str> = python
        .interpreters
        .iter()
        .map(|i| i.version.as_str())
        .collect();
    versions.sort();
    versions.dedup();
    let mut line = format!(
        "Python {} ({} process(es)): {} stacks read, {} frames unreadable, {} cut at {} frames",
        versions.join(", "),
        python.interpreters.len(),
        python.stacks,
        python.unreadable_frames,
        python.truncated,
        profiler_common::MAX_PY_FRAMES
    );
    // How each distinct interpreter's frames were read.
    let mut how: Vec<String> = python
        .interpreters
        .iter()
        .filter(|i| !i.frames.is_empty())
        .map(|i| {
            let release = if i.release.is_empty() {
                &i.version
            } else {
                &i.release
            };
            format!("{release}: {}", i.frames)
        })
        .collect();
    how.sort();
    how.dedup();
    for entry in how {
        let _ = write!(line, "\n    {entry}");
    }
    Some(line)
}

/// "JavaScript (V8 12.4.254, 1 process(es)): 1,234 frames named, 0 unreadable".
fn javascript_line(js: &JsReport) -> Option<String> {
    if js.runtimes.is_empty() {
        return None;
    }
    let mut versions: Vec<&str> = js.runtimes.iter().map(|r| r.v8_version.as_str()).collect();
    versions.sort();
    versions.dedup();
    Some(format!(
        "JavaScript (V8 {}, {} process(es)): {} frames named, {} unreadable",
        versions.join(", "),
        js.runtimes.len(),
        js.frames,
        js.unreadable_frames
    ))
}

/// One line on start-up, said once: the first thread's (the command's, under `record --`),
/// and how many more there were.
pub fn startup_line(recording: &Recording) -> Option<String> {
    let first = recording.startups.first()?;
    let more = match recording.startups.len() - 1 {
        0 => String::new(),
        1 => " (and 1 more thread's)".to_string(),
        n => format!(" (and {n} more threads')"),
    };
    Some(format!(
        "start-up: {} (pid {} tid {}) took {} to its first wait point, not counted as a stall{more}",
        first.comm,
        first.pid,
        first.tid,
        format_duration(first.end_ns.saturating_sub(first.start_ns))
    ))
}
