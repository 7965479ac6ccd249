//! From the kernel's events to iterations, stalls and verdicts: decoding, reordering, the
//! timeline state machine, the session that drives it, and the `--fail-on` budgets.
pub mod budget;
pub mod events;
pub mod headline;
pub mod iterations;
pub mod reorder;
pub mod session;
pub mod timeline;
