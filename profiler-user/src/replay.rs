//! `stallscope report DIR`: re-render a saved recording with the target long gone, e.g. with
//! another threshold. The saved events are replayed through the same [`Session`] the live
//! recording used, with the stacks resolved when it was saved, so a re-render at the original
//! threshold reproduces the original stalls.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

use crate::{
    budget,
    cli::{Formats, RecordConfig, Target},
    record::Outcome,
    record::StopReason,
    report::{self, Recording},
    session::{self, ProcessState, Resolver, Session},
};

pub struct ReportOptions {
    pub dir: PathBuf,
    pub out: Option<PathBuf>,
    pub threshold_ns: Option<u64>,
    pub formats: Formats,
    pub fail_on: Option<String>,
}

/// Reads `stalls.json` of a recording directory, with errors that say what is wrong.
pub fn load_recording(dir: &Path) -> Result<Recording> {
    if !dir.is_dir() {
        bail!(
            "{} is not a stallscope recording directory (it does not exist)",
            dir.display()
        );
    }
    let path = dir.join(report::STALLS_JSON);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{} has no readable stalls.json: is it a stallscope recording directory?",
            dir.display()
        )
    })?;
    let recording: Recording = serde_json::from_str(&text)
        .with_context(|| format!("{} is truncated or corrupted", path.display()))?;
    if recording.version != report::SCHEMA_VERSION {
        bail!(
            "{} has schema version {}, this stallscope reads version {}",
            path.display(),
            recording.version,
            report::SCHEMA_VERSION
        );
    }
    Ok(recording)
}

fn load_symbols(dir: &Path) -> Result<Vec<session::SavedStack>> {
    let path = dir.join(session::SYMBOLS_JSON);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    session::parse_symbols(&text)
        .with_context(|| format!("{} is truncated or corrupted", path.display()))
}

/// Replays a saved recording into a fresh [`Recording`] with `threshold_ns`.
pub fn replay(dir: &Path, saved: &Recording, threshold_ns: u64) -> Result<Recording> {
    let events = session::read_event_log(dir)?;
    let stacks = load_symbols(dir)?;
    let config = RecordConfig {
        target: Target::Pids(Vec::new()),
        threshold_ns,
        duration: None,
        freq_hz: saved.sample_freq_hz.max(1),
        out: None,
        threads: Vec::new(),
        thread_name: None,
        quiet: true,
        ring_buffer_bytes: 0,
        fail_on: None,
        formats: Formats::ALL,
        stack_bytes: 0,
        python_only: false,
    };
    let mut session = Session::new(config);
    session.resolver = Resolver::from_saved(stacks);
    for process in &saved.processes {
        session.processes.insert(
            process.pid,
            ProcessState {
                record: process.clone(),
                id: None,
            },
        );
    }
    for thread in &saved.threads {
        session.thread_names.insert(thread.tid, thread.comm.clone());
    }
    for &(pid, tid) in &saved.waiting_at_start {
        session.mark_waiting(pid, tid);
    }
    // The saved events are in the order the timeline handled them live (after the reorder
    // stage): passed straight through, late ones told by the same rule.
    session.reorder = crate::reorder::Reorder::new(crate::reorder::Config::passthrough());
    if saved.reorder.window_ns > 0 {
        session.reorder_window_ns = saved.reorder.window_ns;
    }
    for raw in &events {
        session.handle_raw(None, raw);
    }
    session.flush(None);
    let mut recording = session.finish(None, saved.start_ns, saved.end_ns);
    // What the kernel lost was counted live; a replay cannot see it again.
    recording.lost_events = saved.lost_events;
    // The live stage's window and counts; the replay's own late events are the same ones.
    recording.reorder = crate::report::ReorderReport {
        late_events: recording.reorder.late_events,
        missed_switches: recording.reorder.missed_switches,
        breakdown_mismatches: recording.reorder.breakdown_mismatches,
        window_ns: recording.reorder.window_ns,
        ..saved.reorder
    };
    recording.drops = saved.drops.clone();
    recording.unwind = saved.unwind;
    recording.python = saved.python.clone();
    // The asyncio task of a stall was read live from the target's memory; a stall cut anew
    // takes the task of the recorded stall it overlaps on the same thread.
    for stall in &mut recording.stalls {
        stall.task = saved
            .stalls
            .iter()
            .find(|s| s.tid == stall.tid && s.start_ns < stall.end_ns && stall.start_ns < s.end_ns)
            .and_then(|s| s.task.clone());
    }
    Ok(recording)
}

pub fn run(options: ReportOptions) -> Result<Outcome> {
    let saved = load_recording(&options.dir)?;
    let threshold_ns = options.threshold_ns.unwrap_or(saved.threshold_ns);
    let mut recording =
        if threshold_ns == saved.threshold_ns && !options.dir.join(session::EVENTS_BIN).exists() {
            saved.clone()
        } else {
            replay(&options.dir, &saved, threshold_ns)?
        };
    if saved.drops.events_not_saved > 0 {
        eprintln!(
            "stallscope: {} events of this recording were not saved (size limit): the re-render covers only its beginning",
            saved.drops.events_not_saved
        );
    }
    let budgets = match &options.fail_on {
        Some(text) => budget::parse_budgets(text, false)?,
        None => Vec::new(),
    };
    recording.verdict = budget::judge(&budgets, &recording);
    let out_dir = options.out.clone().unwrap_or_else(|| options.dir.clone());
    report::prepare_output_dir(&out_dir)?;
    if out_dir != options.dir {
        // Keep the new directory a complete recording too (re-renderable again).
        for name in [session::EVENTS_BIN, session::SYMBOLS_JSON] {
            let from = options.dir.join(name);
            if from.exists() {
                std::fs::copy(&from, out_dir.join(name))
                    .with_context(|| format!("copying {}", from.display()))?;
            }
        }
    }
    let written = report::write_outputs(&out_dir, &recording, &options.formats)?;
    print!("{}", report::summary_text(&recording, &written));
    Ok(Outcome {
        recording,
        out_dir,
        stop: StopReason::External,
    })
}
