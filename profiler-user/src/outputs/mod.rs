//! Every rendering of a recording, one module each.
pub mod headline;
pub mod html;
pub mod junit;
pub mod pprof;
pub mod report;
pub mod trace;
