//! What a recording saves for `stallscope report`: the raw events (`events.bin`, bounded) and
//! the stacks resolved when it ended (`symbols.json`), and reading them back.

use super::*;

/// `symbols.json`: every distinct frame once, and each stack as indices into that table (a
/// Python service's stacks share most of their 50-odd frames).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SavedSymbols {
    pub frames: Vec<Frame>,
    pub stacks: Vec<SavedStackFrames>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SavedStackFrames {
    pub pid: u32,
    pub kernel: i32,
    pub user: i32,
    pub frames: Vec<u32>,
}

impl SavedSymbols {
    pub fn from_stacks(stacks: &[SavedStack]) -> Self {
        let mut saved = SavedSymbols::default();
        let mut index: HashMap<&Frame, u32> = HashMap::new();
        for stack in stacks {
            let frames = stack
                .frames
                .iter()
                .map(|frame| {
                    *index.entry(frame).or_insert_with(|| {
                        saved.frames.push(frame.clone());
                        saved.frames.len() as u32 - 1
                    })
                })
                .collect();
            saved.stacks.push(SavedStackFrames {
                pid: stack.pid,
                kernel: stack.kernel,
                user: stack.user,
                frames,
            });
        }
        saved
    }

    pub fn into_stacks(self) -> Vec<SavedStack> {
        let frames = self.frames;
        self.stacks
            .into_iter()
            .map(|s| SavedStack {
                pid: s.pid,
                kernel: s.kernel,
                user: s.user,
                frames: s
                    .frames
                    .iter()
                    .filter_map(|&i| frames.get(i as usize).cloned())
                    .collect(),
            })
            .collect()
    }
}

/// Reads `symbols.json`: the frame-table form, or the list of stacks with their frames that
/// recordings made before it hold.
pub fn parse_symbols(text: &str) -> serde_json::Result<Vec<SavedStack>> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Table(SavedSymbols),
        List(Vec<SavedStack>),
    }
    Ok(match serde_json::from_str(text)? {
        Either::Table(table) => table.into_stacks(),
        Either::List(list) => list,
    })
}

/// One resolved stack in `symbols.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SavedStack {
    pub pid: u32,
    pub kernel: i32,
    pub user: i32,
    pub frames: Vec<Frame>,
}

/// Raw events saved as they arrive (`events.bin`: the 80-byte records back to back), bounded.
pub struct EventLog {
    pub(super) writer: BufWriter<File>,
    pub(super) written: u64,
    pub(super) limit: u64,
    pub not_saved: u64,
    pub failed: Option<String>,
}

pub const EVENTS_BIN: &str = "events.bin";
pub const SYMBOLS_JSON: &str = "symbols.json";

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

    pub(super) fn write(&mut self, raw: &RawEvent) {
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

    pub fn finish(mut self) -> Result<u64> {
        if let Some(err) = self.failed.take() {
            anyhow::bail!("saving events failed: {err}");
        }
        self.writer.flush().context("saving events")?;
        Ok(self.not_saved)
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
