//! `stallscope report DIR`: re-render a saved recording with the target long gone, e.g. with
//! another threshold. The saved events are replayed through the same [`Session`] the live
//! recording used, with the stacks resolved when it was saved, so a re-render at the original
//! threshold reproduces the original stalls.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use crate::{
    analysis::budget,
    analysis::session::{self, Resolver, Session},
    commands::{
        record::{Outcome, StopReason},
        render,
    },
    config::{Formats, RecordConfig, View, fail_on::Budget},
    model::{self, Recording},
    outputs::summary,
    store::events::{EVENTS_BIN, read_event_log},
    store::recording::load_recording,
    store::symbols::{SYMBOLS_JSON, load_symbols},
    system::access::Replay,
};

pub struct ReportOptions {
    pub dir: PathBuf,
    pub out: Option<PathBuf>,
    pub threshold_ns: Option<u64>,
    pub formats: Formats,
    pub budgets: Vec<Budget>,
    /// How stacks are shown (`--native`).
    pub view: View,
}

/// Replays a saved recording into a fresh [`Recording`] with `threshold_ns`.
pub fn replay(dir: &Path, saved: &Recording, threshold_ns: u64) -> Result<Recording> {
    let events = read_event_log(dir)?;
    let stacks = load_symbols(dir)?;
    Ok(replay_events(&events, stacks, saved, threshold_ns))
}

/// Replays saved events with their saved stacks: what [`replay`] does once the files are
/// read. Both come from files anyone could have edited: any content gives a recording.
pub fn replay_events(
    events: &[profiler_common::Event],
    stacks: Vec<session::SavedStack>,
    saved: &Recording,
    threshold_ns: u64,
) -> Recording {
    let config = RecordConfig::for_replay(threshold_ns, saved.sample_freq_hz.max(1));
    let mut session = Session::new(config);
    session.resolver = Resolver::from_saved(stacks);
    for process in &saved.processes {
        session.processes.add_saved(process.clone());
    }
    for thread in &saved.threads {
        session
            .processes
            .name_thread(thread.tid, thread.comm.clone());
    }
    for &(pid, tid) in &saved.waiting_at_start {
        session.mark_waiting(pid, tid);
    }
    // The saved events are in the order the timeline handled them live (after the reorder
    // stage): passed straight through, late ones told by the same rule.
    session.reorder =
        crate::analysis::reorder::Reorder::new(crate::analysis::reorder::Config::passthrough());
    if saved.reorder.window_ns > 0 {
        session.reorder_window_ns = saved.reorder.window_ns;
    }
    for raw in events {
        session.handle_raw(&mut Replay, raw);
    }
    session.flush(&mut Replay);
    let mut recording = session.finish(&Replay, saved.start_ns, saved.end_ns);
    // What the kernel lost was counted live; a replay cannot see it again.
    recording.lost_events = saved.lost_events;
    // The live stage's window and counts; the replay's own late events are the same ones.
    recording.reorder = model::ReorderReport {
        late_events: recording.reorder.late_events,
        missed_switches: recording.reorder.missed_switches,
        untraced_switch_ins: recording.reorder.untraced_switch_ins,
        breakdown_mismatches: recording.reorder.breakdown_mismatches,
        window_ns: recording.reorder.window_ns,
        ..saved.reorder
    };
    recording.drops = saved.drops.clone();
    recording.unwind = saved.unwind;
    recording.python = saved.python.clone();
    recording.kernel_limits = saved.kernel_limits.clone();
    // The asyncio task of a stall was read live from the target's memory; a stall cut anew
    // takes the task of the recorded stall it overlaps on the same thread.
    for stall in &mut recording.stalls {
        stall.task = saved
            .stalls
            .iter()
            .find(|s| s.tid == stall.tid && s.start_ns < stall.end_ns && stall.start_ns < s.end_ns)
            .and_then(|s| s.task.clone());
    }
    recording
}

pub fn run(options: ReportOptions) -> Result<Outcome> {
    let saved = load_recording(&options.dir)?;
    let threshold_ns = options.threshold_ns.unwrap_or(saved.threshold_ns);
    let mut recording =
        if threshold_ns == saved.threshold_ns && !options.dir.join(EVENTS_BIN).exists() {
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
    recording.verdict = budget::judge(&options.budgets, &recording);
    let out_dir = options.out.clone().unwrap_or_else(|| options.dir.clone());
    render::prepare_output_dir(&out_dir)?;
    if out_dir != options.dir {
        // Keep the new directory a complete recording too (re-renderable again).
        for name in [EVENTS_BIN, SYMBOLS_JSON] {
            let from = options.dir.join(name);
            if from.exists() {
                std::fs::copy(&from, out_dir.join(name))
                    .with_context(|| format!("copying {}", from.display()))?;
            }
        }
    }
    let written = render::write_outputs(&out_dir, &recording, &options.formats, options.view)?;
    print!(
        "{}",
        summary::summary_text(&recording, &written, options.view)
    );
    Ok(Outcome {
        recording,
        out_dir,
        stop: StopReason::External,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::model::{Frame, FrameKind};

    /// Pids above the kernel's largest pid_max (2^22): never a live process, so a replay
    /// never reads /proc for them.
    const NO_SUCH_PID: u32 = 4_200_000;

    fn empty_recording() -> Recording {
        let config = RecordConfig {
            freq_hz: 99,
            ..crate::config::fixtures::record_config()
        };
        Session::new(config).finish(&crate::system::access::Replay, 0, 1_000_000_000)
    }

    fn raw_event() -> impl Strategy<Value = profiler_common::Event> {
        (
            (0u32..14, 0u32..4, 0u32..6, 0u64..400_000_000),
            (any::<u64>(), any::<u64>(), -1i32..4, -1i32..4),
            (any::<i32>(), any::<u32>(), any::<[u8; 16]>(), 0u64..8),
        )
            .prop_map(
                |((kind, pid, tid, ts), (arg0, arg1, kernel, user), (syscall, aux, comm, seq))| {
                    profiler_common::Event {
                        ts_ns: ts,
                        seq,
                        arg0,
                        arg1,
                        kind,
                        cpu: tid % 2,
                        pid: NO_SUCH_PID + pid,
                        tid: NO_SUCH_PID + pid * 8 + tid,
                        kernel_stack_id: kernel,
                        user_stack_id: user,
                        syscall,
                        aux,
                        comm,
                    }
                },
            )
    }

    fn saved_stack() -> impl Strategy<Value = session::SavedStack> {
        (
            0u32..4,
            -1i32..4,
            -1i32..4,
            proptest::collection::vec(".{0,20}", 0..4),
        )
            .prop_map(|(pid, kernel, user, names)| session::SavedStack {
                pid: NO_SUCH_PID + pid,
                kernel,
                user,
                frames: names
                    .into_iter()
                    .map(|name| Frame {
                        column: None,
                        function: crate::sanitize::name(&name).into(),
                        file: None,
                        line: None,
                        module: None,
                        kind: FrameKind::Native,
                    })
                    .collect(),
            })
    }

    /// A whole replay and every rendering per case (about half a second with overflow
    /// checks on a loaded machine): a twentieth of the cases of the parsers.
    fn replay_config() -> ProptestConfig {
        let config = crate::fuzz_config();
        ProptestConfig {
            cases: (config.cases / 20).max(16),
            ..config
        }
    }

    proptest! {
        #![proptest_config(replay_config())]

        /// events.bin and symbols.json of a recording are files anyone could have edited (or
        /// a target's garbage got into): any events, in any order, with any stacks, replay to
        /// a recording that every output renders, never a panic.
        #[test]
        fn fuzz_replay_any_events_and_render_everything(
            events in proptest::collection::vec(raw_event(), 0..60),
            stacks in proptest::collection::vec(saved_stack(), 0..6),
            threshold_ms in 1u64..200,
        ) {
            let saved = empty_recording();
            let mut events = events;
            events.sort_by_key(|e| e.ts_ns);
            let recording = replay_events(&events, stacks, &saved, threshold_ms * 1_000_000);
            for view in [View::PythonFirst, View::Native] {
                let _ = summary::summary_markdown(&recording, view);
                let _ = summary::summary_text(&recording, &[], view);
                let folded = crate::outputs::folded::stall_folded(&recording, view);
                let _ = crate::outputs::folded::flamegraph_svg(&folded, "t");
                for stall in &recording.stalls {
                    let _ = crate::outputs::live::live_line(stall, view);
                }
            }
            let _ = crate::outputs::folded::offcpu_folded(&recording);
            let _ = crate::outputs::trace::trace_json(&recording);
            let _ = crate::outputs::pprof::profile_pb_gz(&recording);
            for stall in &recording.stalls {
                prop_assert!(stall.start_ns <= stall.end_ns);
            }
        }

    }

    proptest! {
        #![proptest_config(crate::fuzz_config())]

        /// symbols.json and stalls.json as any text: an error or a value, never a panic.
        #[test]
        fn fuzz_load_symbols_and_recording(text in ".{0,300}", index in any::<u32>()) {
            let _ = crate::store::symbols::parse_symbols(&text);
            let _ = serde_json::from_str::<Recording>(&text);
            let table = format!(
                r#"{{"frames":[{{"function":"f","file":null,"line":null,"module":null,"kind":"native"}}],"stacks":[{{"pid":1,"kernel":-1,"user":0,"frames":[{index},0]}}]}}"#
            );
            let stacks = crate::store::symbols::parse_symbols(&table).expect("well-formed table");
            prop_assert!(stacks[0].frames.len() <= 2);
        }
    }
}
