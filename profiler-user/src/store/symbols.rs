//! `symbols.json` of a recording directory: every stack seen, resolved to frames when the
//! recording ended, so `stallscope report` re-renders without the target. Written with each
//! distinct frame once; read back in that form or the plain list older recordings hold. The
//! file comes from a directory anyone could have edited: any content gives stacks or an error.

use std::{collections::HashMap, path::Path};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::{analysis::session::SavedStack, model::Frame};

pub const SYMBOLS_JSON: &str = "symbols.json";

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

/// Builds `symbols.json`'s table one stack at a time, so the resolved stacks of a recording
/// need not all be held at once (each frame's names are shared `Arc<str>`: a key is cheap).
#[derive(Default)]
pub struct SymbolTable {
    saved: SavedSymbols,
    index: HashMap<Frame, u32>,
}

impl SymbolTable {
    pub fn push(&mut self, stack: &SavedStack) {
        let saved = &mut self.saved;
        let frames = stack
            .frames
            .iter()
            .map(|frame| {
                *self.index.entry(frame.clone()).or_insert_with(|| {
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

    pub fn into_saved(self) -> SavedSymbols {
        self.saved
    }
}

impl SavedSymbols {
    pub fn from_stacks(stacks: &[SavedStack]) -> Self {
        let mut table = SymbolTable::default();
        for stack in stacks {
            table.push(stack);
        }
        table.into_saved()
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

/// Writes `symbols.json` into a recording directory.
pub fn save_symbols(dir: &Path, table: SymbolTable) -> Result<()> {
    let path = dir.join(SYMBOLS_JSON);
    super::write_json(&path, &table.into_saved(), false)
}

/// Reads `symbols.json` of a recording directory.
pub fn load_symbols(dir: &Path) -> Result<Vec<SavedStack>> {
    let path = dir.join(SYMBOLS_JSON);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse_symbols(&text).with_context(|| format!("{} is truncated or corrupted", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{analysis::session::INTERNED_BASE, model::FrameKind};

    fn frame(name: &str) -> Frame {
        Frame {
            column: None,
            function: name.into(),
            file: Some("app.py".into()),
            line: Some(3),
            module: None,
            kind: FrameKind::Python,
        }
    }

    #[test]
    fn symbols_are_saved_with_each_frame_once_and_read_back_in_both_forms() {
        let stacks = vec![
            SavedStack {
                pid: 1,
                kernel: -1,
                user: INTERNED_BASE,
                frames: vec![frame("leaf"), frame("main")],
            },
            SavedStack {
                pid: 1,
                kernel: 4,
                user: INTERNED_BASE + 1,
                frames: vec![frame("other"), frame("main")],
            },
        ];
        let table = SavedSymbols::from_stacks(&stacks);
        assert_eq!(table.frames.len(), 3, "main is stored once");
        let text = serde_json::to_string(&table).expect("serialize");
        assert_eq!(parse_symbols(&text).expect("table form"), stacks);
        // Recordings made before the frame table hold a plain list.
        let old = serde_json::to_string(&stacks).expect("serialize");
        assert_eq!(parse_symbols(&old).expect("list form"), stacks);
        assert!(parse_symbols("{\"frames\": 3}").is_err());
    }
}
