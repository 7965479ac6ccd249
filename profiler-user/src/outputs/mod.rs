//! Every rendering of a recording, one module each, and `watch`'s outputs for a long run.
pub mod events_log;
pub mod folded;
pub mod html;
pub mod junit;
pub mod live;
pub mod metrics;
pub mod pprof;
pub mod summary;
pub mod trace;
