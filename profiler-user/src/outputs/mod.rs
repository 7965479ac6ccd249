//! Every rendering of a recording, one module each.
pub mod folded;
pub mod html;
pub mod junit;
pub mod live;
pub mod pprof;
pub mod summary;
pub mod trace;
