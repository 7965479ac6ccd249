//! What a command was asked to do, as plain validated values: [`RecordConfig`], its
//! [`Target`] and [`Formats`], the parsed `--fail-on` budgets ([`fail_on`]), the defaults the
//! command line and `ci` share, and [`UsageError`] for a value typed wrong (exit 2). A leaf: the
//! clap definitions in `cli` map arguments to these values; every other layer reads them.

use std::{fmt, path::PathBuf, time::Duration};

use crate::units::parse_duration_ns;

pub mod fail_on;

use fail_on::Budget;

/// `--threshold` when not given: an iteration longer than this is a stall.
pub const DEFAULT_THRESHOLD: &str = "100ms";
/// `--freq` when not given: cpu-clock samples per second, per CPU.
pub const DEFAULT_FREQ_HZ: u64 = 99;
/// `--stack-bytes` when not given, and its maximum (the kernel side's copy buffer).
pub const DEFAULT_STACK_BYTES: u32 = 32768;
pub const MAX_STACK_BYTES: u32 = 32768;
/// `--ring-buffer-kib` when not given (4 MiB: ~125 full stack copies, and most copies are
/// not full: a repeated stack is sent as its registers). No loss at 8 or 4 MiB on the loaded
/// FastAPI service at 999 Hz nor on the followed ping-pong at 30,000 switches/s (bench/RESULTS.md,
/// section 8); the kernel maps a ring's pages twice (for records that wrap around), so each
/// MiB of ring is two of the agent's RSS once the ring has gone round (issue #16's 100 MiB).
pub const DEFAULT_RING_BUFFER_KIB: u32 = 4096;
/// `ci --ready-timeout` when not given.
pub const DEFAULT_READY_TIMEOUT: &str = "30s";

/// What to record: validated, plain values.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordConfig {
    pub target: Target,
    pub threshold_ns: u64,
    pub duration: Option<Duration>,
    pub freq_hz: u64,
    pub out: Option<PathBuf>,
    pub threads: Vec<u32>,
    pub thread_name: Option<String>,
    pub quiet: bool,
    pub ring_buffer_bytes: u32,
    /// `--fail-on`, parsed once (empty: no budgets).
    pub budgets: Vec<Budget>,
    pub formats: Formats,
    pub stack_bytes: u32,
    pub python_only: bool,
    /// `--verbose`: diagnostics (the verifier's log) on the terminal, not only in files.
    pub verbose: bool,
    /// How stacks are shown in the outputs (`--native`).
    pub view: View,
}

impl RecordConfig {
    /// The config of a saved recording's replay: nothing is attached, written or printed while
    /// it replays; only the threshold and the sampling rate count.
    pub fn for_replay(threshold_ns: u64, freq_hz: u64) -> Self {
        RecordConfig {
            target: Target::Pids(Vec::new()),
            threshold_ns,
            duration: None,
            freq_hz,
            out: None,
            threads: Vec::new(),
            thread_name: None,
            quiet: true,
            ring_buffer_bytes: 0,
            budgets: Vec::new(),
            formats: Formats::ALL,
            stack_bytes: 0,
            python_only: false,
            verbose: false,
            view: View::PythonFirst,
        }
    }
}

/// How stacks of Python processes are shown (live line, summaries, flamegraph.svg,
/// report.html): chosen once per run (`--native`) and handed to each renderer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum View {
    /// As py-spy shows them: the Python frames, the interpreter's own C frames folded away, and
    /// the native leaf that did the work (`sre_ucs1_match`, `deflate`) kept. The default.
    #[default]
    PythonFirst,
    /// Every frame (`--native`).
    Native,
}

impl View {
    /// The view `--native` asks for.
    pub fn from_native(native: bool) -> Self {
        if native {
            View::Native
        } else {
            View::PythonFirst
        }
    }
}

/// Which renderings to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Formats {
    pub svg: bool,
    pub folded: bool,
    pub trace: bool,
    pub pprof: bool,
    pub summary: bool,
    pub junit: bool,
    pub html: bool,
}

impl Formats {
    pub const ALL: Formats = Formats {
        svg: true,
        folded: true,
        trace: true,
        pprof: true,
        summary: true,
        junit: true,
        html: true,
    };

    /// No rendering but stalls.json.
    pub const NONE: Formats = Formats {
        svg: false,
        folded: false,
        trace: false,
        pprof: false,
        summary: false,
        junit: false,
        html: false,
    };

    pub fn parse(items: &[String]) -> Result<Formats, UsageError> {
        let mut formats = Formats::NONE;
        for item in items {
            match item.trim() {
                "all" => formats = Formats::ALL,
                "svg" => formats.svg = true,
                "folded" => formats.folded = true,
                "trace" => formats.trace = true,
                "pprof" => formats.pprof = true,
                "summary" => formats.summary = true,
                "junit" => formats.junit = true,
                "html" => formats.html = true,
                "json" => {}
                other => {
                    return Err(UsageError(format!(
                        "--format {other}: unknown output; use svg, folded, trace, pprof, summary, junit, html or all"
                    )));
                }
            }
        }
        Ok(formats)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Pids(Vec<u32>),
    Command(Vec<String>),
}

/// A mistake in the command line: exit code 2.
#[derive(Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Parses "1234" items into PIDs (already split on commas by clap).
pub fn parse_pid_list(items: &[String]) -> Result<Vec<u32>, UsageError> {
    items
        .iter()
        .map(|item| {
            let item = item.trim();
            match item.parse::<u32>() {
                Ok(0) | Err(_) => Err(UsageError(format!(
                    "'{item}' is not a process or thread id (a positive integer)"
                ))),
                Ok(pid) => Ok(pid),
            }
        })
        .collect()
}

/// `--threshold`: a duration greater than 0.
pub fn parse_threshold(text: &str) -> Result<u64, UsageError> {
    let ns = parse_duration_ns(text).map_err(|e| UsageError(format!("--threshold {text}: {e}")))?;
    if ns == 0 {
        return Err(UsageError(
            "--threshold must be greater than 0 (e.g. --threshold 100ms)".into(),
        ));
    }
    Ok(ns)
}

/// What `watch` follows and where its outputs go: validated, plain values.
#[derive(Clone, Debug, PartialEq)]
pub struct WatchConfig {
    /// Threshold, sampling and stack settings, as for `record` (target: the --pid list).
    pub record: RecordConfig,
    pub comm: Vec<String>,
    pub exe: Vec<String>,
    pub cgroups: Vec<String>,
    pub listen: Option<std::net::SocketAddr>,
    pub events: Option<String>,
    pub keep_dir: Option<PathBuf>,
    pub keep: usize,
}

/// Configs for unit tests; change a field with struct-update syntax
/// (`RecordConfig { threads: vec![7], ..fixtures::record_config() }`).
#[cfg(test)]
pub mod fixtures {
    use super::RecordConfig;

    /// Quiet, a 100 ms threshold, 100 samples per second, nothing written.
    pub fn record_config() -> RecordConfig {
        RecordConfig::for_replay(100_000_000, 100)
    }
}
