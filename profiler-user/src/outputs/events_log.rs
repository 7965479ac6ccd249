//! `watch --events FILE|-`: one JSON object per stall as it ends, one per line (for journald,
//! Loki, Vector). Each line is the stall as in stalls.json plus its process, cgroup, dominant
//! cause and top frames. Every line is written whole and flushed at once, so a reader never
//! sees half a line; [`EventsLog::reopen`] (on SIGHUP) closes the file and opens the path again,
//! as logrotate expects: lines written before the rotation are in the renamed file, later
//! ones in the new file, none lost.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write as _},
    path::PathBuf,
};

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::model::{ProcessRecord, StallRecord};

/// Where the lines go.
enum Sink {
    Stdout,
    File { path: PathBuf, file: File },
}

pub struct EventsLog {
    sink: Sink,
    /// Lines that could not be written (disk full, file removed under us), counted.
    pub failed: u64,
}

/// One line of the log.
#[derive(Serialize)]
pub struct StallEvent<'a> {
    /// Wall-clock time the stall ended, seconds since the epoch (the stall's own timestamps
    /// are CLOCK_MONOTONIC, as in stalls.json).
    pub time: f64,
    pub host: &'a str,
    #[serde(flatten)]
    pub stall: &'a StallRecord,
    pub process: Option<&'a ProcessRecord>,
    pub cgroup: &'a str,
    pub cause: &'a str,
    /// The stall's dominant code path, innermost first ("function (file:line)").
    pub top_frames: Vec<String>,
}

impl EventsLog {
    /// `-` is standard output; anything else a file, appended to (created when missing).
    pub fn open(target: &str) -> Result<Self> {
        let sink = if target == "-" {
            Sink::Stdout
        } else {
            let path = PathBuf::from(target);
            let file = open_append(&path)?;
            Sink::File { path, file }
        };
        Ok(EventsLog { sink, failed: 0 })
    }

    /// Writes one stall as one line.
    pub fn write(&mut self, event: &StallEvent) {
        let mut line = match serde_json::to_vec(event) {
            Ok(line) => line,
            Err(_) => {
                self.failed += 1;
                return;
            }
        };
        line.push(b'\n');
        // One write call per line: with O_APPEND the line lands whole even if another
        // writer shares the file.
        let written = match &mut self.sink {
            Sink::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(&line).and_then(|()| out.flush())
            }
            Sink::File { file, .. } => file.write_all(&line),
        };
        if written.is_err() {
            self.failed += 1;
        }
    }

    /// SIGHUP: the file may have been renamed (logrotate); open the path again.
    pub fn reopen(&mut self) -> Result<()> {
        if let Sink::File { path, file } = &mut self.sink {
            *file = open_append(path)?;
        }
        Ok(())
    }
}

fn open_append(path: &std::path::Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening the events file {}", path.display()))
}

/// This machine's name, for the `host` field (Loki and journald readers aggregate hosts).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| crate::sanitize::name(h.trim()))
        .unwrap_or_default()
}

/// Seconds since the epoch, now.
pub fn wall_clock_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
