//! The recording store: the files a recording directory holds (`stalls.json`, `events.bin`,
//! `symbols.json`), written by `record` and read back for `report` and `diff`.
pub mod events;
pub mod recording;
pub mod symbols;
