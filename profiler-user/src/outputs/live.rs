//! The live line: one stall as it ends, for the terminal (its duration and breakdown, the
//! dominant code path or why there is none, its asyncio task, its caveats).

use std::fmt::Write as _;

use crate::{
    analysis::{
        headline::{self, View},
        session::StallSink,
    },
    model::{ProcessRecord, StallRecord, frame_text, task_text},
    sanitize,
    units::format_duration,
};

/// One line per stall, printed as it ends.
pub fn live_line(stall: &StallRecord, view: View) -> String {
    let mut line = format!(
        "stall {:>9}  {} pid {} tid {}  on-CPU {}  blocked {}  runqueue {}",
        format_duration(stall.duration_ns),
        stall.comm,
        stall.pid,
        stall.tid,
        format_duration(stall.on_cpu_ns),
        format_duration(stall.off_cpu_ns),
        format_duration(stall.runqueue_ns),
    );
    // The dominant code path, aggregated by frame (module `headline`).
    match headline::headline(stall, view) {
        Some(headline) if headline.has_named() => {
            let _ = write!(line, "\n    at {}", headline.text(" < "));
        }
        // No named frame on the dominant path: the heaviest stack that has some, saying so.
        Some(_) | None if stall.headline().is_some() => {
            if let Some((stack, frames)) = stall.headline() {
                let frames: Vec<String> = frames.into_iter().map(frame_text).collect();
                let _ = write!(
                    line,
                    "\n    at {}{} ({} of it; the heaviest part has no named frame)",
                    frames.join(" < "),
                    stack.cause(),
                    format_duration(stack.weight_ns)
                );
            }
        }
        Some(headline) => {
            let _ = write!(
                line,
                "\n    at {} (no named frame: {})",
                headline.text(" < "),
                stall.no_frames_why()
            );
        }
        None => {
            let _ = write!(line, "\n    (no frames to show: {})", stall.no_frames_why());
        }
    }
    if !stall.adds_up {
        let _ = write!(
            line,
            "\n    ({} of it unaccounted: {})",
            format_duration(stall.unaccounted_ns),
            stall.unaccounted_why.as_deref().unwrap_or("unknown")
        );
    }
    if let Some(task) = &stall.task {
        let _ = write!(line, "\n    in {}", task_text(task));
    }
    match stall.ready_events {
        Some(0) | None => {}
        Some(1) => line.push_str("\n    1 event was waiting when the loop came back"),
        Some(n) => {
            let _ = write!(
                line,
                "\n    {n} events were waiting when the loop came back"
            );
        }
    }
    if stall.partial {
        line.push_str("\n    (partial: it began before recording or was still running at the end)");
    }
    if stall.data_lost {
        line.push_str(
            "\n    (events were lost during this stall: the breakdown may be incomplete)",
        );
    }
    // For the terminal: nothing the target named may carry an escape sequence to it.
    sanitize::terminal_lines(&line)
}

/// The live line as a stall sink: each stall printed on standard output as it ends.
pub struct LiveLines(pub View);

impl StallSink for LiveLines {
    fn stall(&mut self, stall: &StallRecord, _process: Option<&ProcessRecord>) {
        println!("{}", live_line(stall, self.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::{
            FrameKind,
            fixtures::{frame, recording},
        },
        outputs::summary::summary_text,
    };

    /// Issue #18: the live line and summaries had a formatter of their own next to the budgets'
    /// (which read 999.96 ms as "1000.0 ms" and any sub-millisecond time as "0.0 ms"); every
    /// output now writes a duration as the budgets do.
    #[test]
    fn one_duration_formatter_for_every_output() {
        let mut rec = recording();
        let stall = &mut rec.stalls[0];
        stall.duration_ns = 999_960_000;
        stall.runqueue_ns = 250_000;
        let line = live_line(stall, View::PythonFirst);
        assert!(
            line.contains(&format!("stall {:>9}", format_duration(999_960_000))),
            "{line}"
        );
        assert!(line.contains("stall    1.00 s"), "{line}");
        assert!(line.contains("runqueue 250.0 us"), "{line}");
        let summary = summary_text(&rec, &[], View::PythonFirst);
        assert!(summary.contains("longest 1.00 s"), "{summary}");
    }

    #[test]
    fn live_line_names_the_cause() {
        let rec = recording();
        let line = live_line(&rec.stalls[0], View::PythonFirst);
        assert!(line.contains("300.0 ms"), "{line}");
        assert!(line.contains("burn_cpu < main"), "{line}");
        assert_eq!(rec.stalls[0].dominant_kind(), "on-CPU");
        assert!(!line.contains("unaccounted"), "{line}");
    }

    /// Issue #22: the live line always names frames, or says why it cannot; and a breakdown
    /// that does not add up says so, with the reason.
    #[test]
    fn live_line_always_names_frames_or_says_why_not() {
        let mut rec = recording();
        let stall = &mut rec.stalls[0];
        // The heaviest stack has only unnamed frames: the next one with names is shown.
        stall.stacks[0].frames = vec![frame("[unknown] 0x1234", FrameKind::Native)];
        let line = live_line(stall, View::PythonFirst);
        assert!(line.contains("    at nap < main"), "{line}");
        assert!(
            line.contains("of it; the heaviest part has no named frame"),
            "{line}"
        );
        // No stack at all.
        stall.stacks.clear();
        let line = live_line(stall, View::PythonFirst);
        assert!(
            line.contains("    (no frames to show: no stack was taken inside it"),
            "{line}"
        );
        // Time the timeline could not attribute.
        stall.unaccounted_ns = 48_000_000;
        stall.on_cpu_ns -= 48_000_000;
        stall.adds_up = false;
        stall.unaccounted_why =
            Some("1 switch-in(s) or switch-out(s) of the thread were not seen".into());
        let line = live_line(stall, View::PythonFirst);
        assert!(
            line.contains("(48.0 ms of it unaccounted: 1 switch-in(s) or switch-out(s)"),
            "{line}"
        );
        assert!(stall.caveat().contains("breakdown incomplete"));
        let summary = summary_text(&rec, &[], View::PythonFirst);
        assert!(
            summary.contains("1 stall(s) with time unaccounted"),
            "{summary}"
        );
    }
}
