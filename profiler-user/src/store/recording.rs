//! A saved recording read back: `stalls.json` (the [`Recording`]), with errors that say what
//! is wrong with the directory (`symbols.json` and `events.bin`: see the sibling modules).
//! The file comes from a directory anyone could have edited: any content gives a recording
//! or an error, never a panic.

use std::path::Path;

use anyhow::{Context as _, Result, bail};

use crate::model::{self, Recording};

/// Reads `stalls.json` of a recording directory, with errors that say what is wrong.
pub fn load_recording(dir: &Path) -> Result<Recording> {
    if !dir.is_dir() {
        bail!(
            "{} is not a stallscope recording directory (it does not exist)",
            dir.display()
        );
    }
    let path = dir.join(model::STALLS_JSON);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{} has no readable stalls.json: is it a stallscope recording directory?",
            dir.display()
        )
    })?;
    let recording: Recording = serde_json::from_str(&text)
        .with_context(|| format!("{} is truncated or corrupted", path.display()))?;
    if recording.version != model::SCHEMA_VERSION {
        bail!(
            "{} has schema version {}, this stallscope reads version {}",
            path.display(),
            recording.version,
            model::SCHEMA_VERSION
        );
    }
    Ok(recording)
}
