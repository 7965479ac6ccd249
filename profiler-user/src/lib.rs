//! stallscope's agent: finds event-loop stalls in live processes with eBPF and explains them.
//!
//! Layers, each importing only the ones below it:
//! - [`cli`]: command line → validated config (only the binary's `main.rs` uses it);
//! - [`commands`]: `record`, `ci`, `report`, `diff`, `doctor`, `watch`, wiring the layers at the I/O edge;
//! - [`outputs`]: every rendering of a recording (folded/SVG, summary, the live line, trace,
//!   pprof, JUnit, report.html) and `watch`'s (metrics, events log); [`store`]: a saved
//!   recording read back;
//! - [`analysis`]: events → typed events → timestamp order → iterations and stalls, and the
//!   `--fail-on` budgets;
//! - [`stacks`]: addresses and interpreter memory → frames (native unwinding, Python, V8, perf
//!   maps, blazesym);
//! - [`system`]: what the machine and the targets look like (tracefs, /proc, BTF, privileges,
//!   features) and the eBPF programs (the only aya user);
//! - leaves: [`model`] (the stalls.json schema), [`config`] (what a command was asked to do),
//!   [`units`] (durations), [`syscalls`] (the wait points), [`sanitize`] (names the target
//!   controls, made safe).
pub mod analysis;
pub mod cli;
pub mod commands;
pub mod config;
pub mod model;
pub mod outputs;
pub mod sanitize;
pub mod stacks;
pub mod store;
pub mod syscalls;
pub mod system;
pub mod units;

/// Settings of the property tests that fuzz the parsers of target-controlled bytes (their
/// names start with `fuzz_`): a short run in the unit tests, a long one with
/// `cargo xtask fuzz` (which sets `STALLSCOPE_FUZZ_CASES`).
#[cfg(test)]
pub(crate) fn fuzz_config() -> proptest::test_runner::Config {
    let cases = std::env::var("STALLSCOPE_FUZZ_CASES")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(256);
    proptest::test_runner::Config {
        cases,
        // Never write proptest-regressions/ files into the source tree.
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    }
}
