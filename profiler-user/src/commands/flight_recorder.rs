//! `watch --keep-dir DIR --keep N`: each stall's own report (stalls.json, folded stacks, the
//! flamegraph) in a directory of its own under DIR, the N most recent kept.
//!
//! It removes only what it wrote: the files it created (by their exact paths) and then their
//! directory, which is left in place if anything else was put there. Nothing that was in DIR
//! before, or that another program writes there, is touched; reports of an earlier run of the
//! agent are left alone too (it only knows what it wrote itself).

use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

use crate::{
    commands::render,
    config::{Formats, View},
    model::{self, ProcessRecord, Recording, StallRecord},
};

pub struct FlightRecorder {
    dir: PathBuf,
    keep: usize,
    /// Directories written, oldest first, with the files in each.
    written: VecDeque<(PathBuf, Vec<PathBuf>)>,
    /// Reports numbered in this run (part of each directory's name, so names never collide).
    next: u64,
    pub failed: u64,
}

/// What each stall's report holds besides stalls.json.
const FORMATS: Formats = Formats {
    svg: true,
    folded: true,
    ..Formats::NONE
};

impl FlightRecorder {
    /// Checks DIR can be written (creating it if missing).
    pub fn new(dir: &Path, keep: usize) -> Result<Self> {
        render::prepare_output_dir(dir)?;
        Ok(FlightRecorder {
            dir: dir.to_path_buf(),
            keep: keep.max(1),
            written: VecDeque::new(),
            next: 0,
            failed: 0,
        })
    }

    /// Writes one stall's report, then removes the oldest beyond the N kept.
    pub fn record(
        &mut self,
        stall: &StallRecord,
        process: Option<&ProcessRecord>,
        threshold_ns: u64,
    ) {
        match self.write(stall, process, threshold_ns) {
            Ok(entry) => self.written.push_back(entry),
            Err(err) => {
                self.failed += 1;
                if self.failed == 1 {
                    eprintln!("stallscope: warning: flight recorder: {err:#}");
                }
            }
        }
        while self.written.len() > self.keep {
            if let Some((dir, files)) = self.written.pop_front() {
                remove_own(&dir, &files);
            }
        }
    }

    fn write(
        &mut self,
        stall: &StallRecord,
        process: Option<&ProcessRecord>,
        threshold_ns: u64,
    ) -> Result<(PathBuf, Vec<PathBuf>)> {
        self.next += 1;
        let name = format!(
            "stall-{}-{}-{}-{:06}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis()),
            crate::sanitize::name(&stall.comm).replace(['/', ' '], "_"),
            stall.pid,
            self.next
        );
        let dir = self.dir.join(name);
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let recording = one_stall(stall, process, threshold_ns);
        // `watch` has no --native: the default view.
        let files = render::write_outputs(&dir, &recording, &FORMATS, View::PythonFirst)?;
        Ok((dir, files.into_iter().map(PathBuf::from).collect()))
    }
}

/// Removes the files we wrote, then the directory if that left it empty.
fn remove_own(dir: &Path, files: &[PathBuf]) {
    for file in files {
        let _ = std::fs::remove_file(file);
    }
    // Fails (and leaves it) when someone else put something in it.
    let _ = std::fs::remove_dir(dir);
}

/// A recording of one stall, so every existing rendering serves as its report.
fn one_stall(stall: &StallRecord, process: Option<&ProcessRecord>, threshold_ns: u64) -> Recording {
    Recording {
        version: model::SCHEMA_VERSION,
        threshold_ns,
        recorded_ns: stall.duration_ns,
        start_ns: stall.start_ns,
        end_ns: stall.end_ns,
        sample_freq_hz: 0,
        lost_events: 0,
        drops: model::Drops::default(),
        processes: process.into_iter().cloned().collect(),
        threads: Vec::new(),
        stalls: vec![stall.clone()],
        offcpu: Vec::new(),
        spans: Vec::new(),
        spans_dropped: 0,
        unwind: model::UnwindReport::default(),
        python: model::PythonReport::default(),
        javascript: model::JsReport::default(),
        hints: Vec::new(),
        waiting_at_start: Vec::new(),
        startups: Vec::new(),
        kernel_limits: Vec::new(),
        reorder: model::ReorderReport::default(),
        verdict: model::Verdict {
            budgets: Vec::new(),
            passed: true,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stall(pid: u32) -> StallRecord {
        StallRecord {
            comm: "loop".into(),
            ..crate::model::fixtures::stall(pid, pid, 200_000_000)
        }
    }

    #[test]
    fn keeps_the_newest_n_and_removes_only_its_own_files() {
        let base = std::env::temp_dir().join(format!("stallscope-fr-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).expect("temp dir");
        let theirs = base.join("notes.txt");
        std::fs::write(&theirs, "not ours").expect("write");
        let mut recorder = FlightRecorder::new(&base, 2).expect("recorder");
        for pid in 1..=3 {
            recorder.record(&stall(pid), None, 100_000_000);
        }
        // A file someone else put into our oldest kept report's directory.
        let (second, _) = recorder.written.front().cloned().expect("kept");
        std::fs::write(second.join("mine.txt"), "theirs").expect("write");
        recorder.record(&stall(4), None, 100_000_000);
        let mut names: Vec<String> = std::fs::read_dir(&base)
            .expect("list")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert!(theirs.exists(), "a file it did not write was removed");
        assert!(second.join("mine.txt").exists());
        assert!(
            !second.join(model::STALLS_JSON).exists(),
            "its own file stays"
        );
        let reports: Vec<&String> = names.iter().filter(|n| n.starts_with("stall-")).collect();
        // Reports 3 and 4, plus report 2's directory kept for the foreign file.
        assert_eq!(reports.len(), 3, "{names:?}");
        for (dir, _) in &recorder.written {
            assert!(dir.join(model::STALLS_JSON).is_file());
            assert!(dir.join(model::FLAMEGRAPH_SVG).is_file());
        }
        let _ = std::fs::remove_dir_all(&base);
    }
}
