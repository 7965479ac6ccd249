//! Every rendering of a recording, one module each, and `watch`'s outputs for a long run.
pub mod events_log;
pub mod flight_recorder;
pub mod headline;
pub mod html;
pub mod junit;
pub mod metrics;
pub mod pprof;
pub mod report;
pub mod trace;
