//! `events.bin` of a recording directory: the raw events in the order the timeline handled
//! them (the 80-byte records back to back), bounded, so `stallscope report` replays them; and
//! reading them back. A file anyone could have edited: any content gives events or an error.

use std::{
    fs::File,
    io::{BufWriter, Write as _},
    path::Path,
};

use anyhow::{Context as _, Result};
use profiler_common::Event as RawEvent;

use crate::analysis::{events, session::EventSink};

pub const EVENTS_BIN: &str = "events.bin";

/// Raw events saved as they arrive (`events.bin`: the 80-byte records back to back), bounded.
pub struct EventLog {
    writer: BufWriter<File>,
    written: u64,
    limit: u64,
    pub not_saved: u64,
    pub failed: Option<String>,
}

impl EventLog {
    pub fn create(dir: &Path, limit: u64) -> Result<Self> {
        let path = dir.join(EVENTS_BIN);
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(EventLog {
            writer: BufWriter::with_capacity(1 << 20, file),
            written: 0,
            limit,
            not_saved: 0,
            failed: None,
        })
    }

    fn save(&mut self, raw: &RawEvent) {
        if self.written >= self.limit || self.failed.is_some() {
            self.not_saved += 1;
            return;
        }
        // SAFETY: RawEvent is plain data without padding (asserted in profiler-common).
        let bytes = unsafe {
            std::slice::from_raw_parts((raw as *const RawEvent).cast::<u8>(), size_of::<RawEvent>())
        };
        match self.writer.write_all(bytes) {
            Ok(()) => self.written += 1,
            Err(err) => self.failed = Some(err.to_string()),
        }
    }

    /// Flushes the file; the events left out (past the limit) are returned.
    pub fn finish(mut self) -> Result<u64> {
        if let Some(err) = self.failed.take() {
            anyhow::bail!("saving events failed: {err}");
        }
        self.writer.flush().context("saving events")?;
        Ok(self.not_saved)
    }
}

impl EventSink for EventLog {
    fn write(&mut self, raw: &RawEvent) {
        self.save(raw);
    }

    fn finish(self: Box<Self>) -> Result<u64> {
        EventLog::finish(*self)
    }
}

/// Reads a saved `events.bin` back.
pub fn read_event_log(dir: &Path) -> Result<Vec<RawEvent>> {
    let path = dir.join(EVENTS_BIN);
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let size = size_of::<RawEvent>();
    if bytes.len() % size != 0 {
        anyhow::bail!(
            "{} is truncated or corrupted ({} bytes is not a whole number of {size}-byte events)",
            path.display(),
            bytes.len()
        );
    }
    Ok(bytes
        .chunks_exact(size)
        .filter_map(events::decode)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("stallscope-events-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    /// Events written through the session's sink read back the same, the ones past the limit
    /// counted; a file cut in the middle of an event says so.
    #[test]
    fn saved_events_read_back_and_a_truncated_file_is_an_error() {
        let dir = dir("roundtrip");
        let event = |seq: u64| RawEvent {
            seq,
            ts_ns: seq * 1000,
            ..RawEvent::default()
        };
        let mut sink: Box<dyn EventSink> = Box::new(EventLog::create(&dir, 2).expect("create"));
        for seq in 1..=3 {
            sink.write(&event(seq));
        }
        assert_eq!(sink.finish().expect("flushed"), 1, "one past the limit");
        assert_eq!(
            read_event_log(&dir).expect("reads"),
            vec![event(1), event(2)]
        );
        let path = dir.join(EVENTS_BIN);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes.pop();
        std::fs::write(&path, bytes).expect("write");
        let err = read_event_log(&dir).expect_err("truncated");
        assert!(
            format!("{err:#}").contains("truncated or corrupted"),
            "{err:#}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
