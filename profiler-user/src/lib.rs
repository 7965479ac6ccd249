//! stallscope's agent: finds event-loop stalls in live processes with eBPF and explains them.
//!
//! Modules, one concept each:
//! - [`cli`]: command line → validated config;
//! - [`tracefs`], [`procfs`], [`privileges`], [`features`]: what the machine and the targets
//!   look like;
//! - [`attach`]: the eBPF programs and maps (the only aya user);
//! - [`events`]: ring-buffer bytes → typed events, loss detection;
//! - [`reorder`]: the CPUs' events back in timestamp order, bounded, late ones counted;
//! - [`timeline`]: the pure state machine from events to iterations and stalls;
//! - [`symbolize`]: addresses → frames (the only blazesym user); [`perf_map`]: JIT symbol
//!   maps read without letting the target choose the file; [`v8`]: JavaScript frames of
//!   Node processes from V8's postmortem metadata;
//! - [`report`]: the recording as data, and every output rendered from it;
//! - [`budget`]: `--fail-on` expressions and the CI verdict; [`junit`], [`pprof`], [`trace`]:
//!   more renderings of a recording for CI and other tools; [`html`]: report.html;
//! - [`sanitize`]: names the target controls, made safe for every output;
//! - [`record`]: the `record` command, wiring the above together at the I/O edge.
pub mod attach;
pub mod btf;
pub mod budget;
pub mod cgroup;
pub mod ci;
pub mod cli;
pub mod diff;
pub mod doctor;
pub mod events;
pub mod events_log;
pub mod features;
pub mod flight_recorder;
pub mod headline;
pub mod html;
pub mod junit;
pub mod metrics;
pub mod perf_map;
pub mod pprof;
pub mod privileges;
pub mod procfs;
pub mod python;
pub mod python_offsets;
pub mod record;
pub mod reorder;
pub mod replay;
pub mod report;
pub mod sanitize;
pub mod session;
pub mod symbolize;
pub mod syscalls;
pub mod timeline;
pub mod trace;
pub mod tracefs;
pub mod unwind;
pub mod v8;
pub mod watch;

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
