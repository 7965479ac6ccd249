//! The recording store: the files a recording directory holds, read back for `report` and
//! `diff`.
pub mod recording;
