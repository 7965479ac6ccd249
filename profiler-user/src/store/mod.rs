//! The recording store: the files a recording directory holds (`stalls.json`, `events.bin`,
//! `symbols.json`), written by `record` and read back for `report` and `diff`.
pub mod events;
pub mod recording;
pub mod symbols;

use std::path::Path;

use anyhow::{Context as _, Result};

/// Writes `value` as JSON to `path` through a buffer, never the whole text in memory (a long
/// busy recording's stalls.json is hundreds of MB: issue #16).
pub fn write_json(path: &Path, value: &impl serde::Serialize, pretty: bool) -> Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    let serialized = if pretty {
        serde_json::to_writer_pretty(&mut out, value)
    } else {
        serde_json::to_writer(&mut out, value)
    };
    serialized.with_context(|| format!("writing {}", path.display()))?;
    std::io::Write::flush(&mut out).with_context(|| format!("writing {}", path.display()))
}
