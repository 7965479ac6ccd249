//! Command line: clap definitions, and their validation into a plain [`RecordConfig`].
//!
//! Parsing only validates; anything that needs I/O (does the PID exist, is the output directory
//! writable) happens later, in `record`. A value a user typed wrong is a [`UsageError`] (exit 2).

use std::{fmt, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

/// Find out why an event loop stopped answering: off-CPU and event-loop stall profiler (eBPF).
#[derive(Debug, Parser)]
#[command(name = "stallscope", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Record a running process (--pid) or a command, report every loop iteration past the
    /// threshold (a stall) and where its time went.
    Record(RecordArgs),
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// Process(es) to record, comma-separated. Their children and threads are followed too.
    #[arg(
        long,
        short = 'p',
        value_delimiter = ',',
        required_unless_present = "command"
    )]
    pub pid: Vec<String>,

    /// An iteration longer than this is a stall (units: us, ms, s, m).
    #[arg(long, default_value = "100ms")]
    pub threshold: String,

    /// Stop recording after this long (default: until Ctrl-C or every target exits).
    #[arg(long, short = 'd')]
    pub duration: Option<String>,

    /// cpu-clock samples per second, per CPU.
    #[arg(long, default_value_t = 99)]
    pub freq: u64,

    /// Output directory (default: ./stallscope-<pid>-<YYYYmmdd-HHMMSS>).
    #[arg(long, short = 'o')]
    pub out: Option<PathBuf>,

    /// Treat these threads as loop threads (skip auto-detection), comma-separated TIDs.
    #[arg(long, value_delimiter = ',')]
    pub thread: Vec<String>,

    /// Treat threads with this name (comm) as loop threads.
    #[arg(long)]
    pub thread_name: Option<String>,

    /// Do not print each stall as it ends.
    #[arg(long, short = 'q')]
    pub quiet: bool,

    /// Ring buffer size in KiB (a power of two, at least 4).
    #[arg(long, default_value_t = 8192, hide = true)]
    pub ring_buffer_kib: u32,

    /// Command to run and record (instead of --pid).
    #[arg(last = true, num_args = 1.., conflicts_with = "pid")]
    pub command: Vec<String>,
}

/// What to record: validated, plain values.
#[derive(Clone, Debug, PartialEq, Eq)]
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

impl RecordArgs {
    pub fn to_config(&self) -> Result<RecordConfig, UsageError> {
        let target = if self.command.is_empty() {
            Target::Pids(parse_pid_list(&self.pid)?)
        } else {
            Target::Command(self.command.clone())
        };
        let threshold_ns = parse_duration_ns(&self.threshold)
            .map_err(|e| UsageError(format!("--threshold {}: {e}", self.threshold)))?;
        if threshold_ns == 0 {
            return Err(UsageError(
                "--threshold must be greater than 0 (e.g. --threshold 100ms)".into(),
            ));
        }
        let duration = match &self.duration {
            None => None,
            Some(text) => {
                let ns = parse_duration_ns(text)
                    .map_err(|e| UsageError(format!("--duration {text}: {e}")))?;
                if ns == 0 {
                    return Err(UsageError("--duration must be greater than 0".into()));
                }
                Some(Duration::from_nanos(ns))
            }
        };
        if !(1..=10_000).contains(&self.freq) {
            return Err(UsageError(format!(
                "--freq {} is out of range: use 1 to 10000 samples per second",
                self.freq
            )));
        }
        let ring_kib = self.ring_buffer_kib;
        if ring_kib < 4 || !ring_kib.is_power_of_two() || ring_kib > 1024 * 1024 {
            return Err(UsageError(format!(
                "--ring-buffer-kib {ring_kib}: must be a power of two from 4 to 1048576"
            )));
        }
        Ok(RecordConfig {
            target,
            threshold_ns,
            duration,
            freq_hz: self.freq,
            out: self.out.clone(),
            threads: parse_pid_list(&self.thread)?,
            thread_name: self.thread_name.clone(),
            quiet: self.quiet,
            ring_buffer_bytes: ring_kib * 1024,
        })
    }
}

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

/// Parses a duration such as `100ms`, `1.5s`, `250us`, `2m` into nanoseconds. A bare number is
/// rejected: a unit is required, so that `--threshold 100` is never silently 100 ns or 100 s.
pub fn parse_duration_ns(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("'{text}' has no unit; use us, ms, s or m (e.g. 100ms)"))?;
    let (number, unit) = text.split_at(split);
    let scale: f64 = match unit {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "m" | "min" => 60e9,
        _ => return Err(format!("unknown unit '{unit}'; use us, ms, s or m")),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{number}' is not a number"))?;
    let ns = value * scale;
    if !ns.is_finite() || ns > u64::MAX as f64 / 2.0 {
        return Err(format!("'{text}' is too large"));
    }
    Ok(ns.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit_and_scale_right() {
        assert_eq!(parse_duration_ns("100ms"), Ok(100_000_000));
        assert_eq!(parse_duration_ns("1.5s"), Ok(1_500_000_000));
        assert_eq!(parse_duration_ns("250us"), Ok(250_000));
        assert_eq!(parse_duration_ns("2m"), Ok(120_000_000_000));
        assert!(parse_duration_ns("100").is_err());
        assert!(parse_duration_ns("abc").is_err());
        assert!(parse_duration_ns("ms").is_err());
        assert!(parse_duration_ns("1..2s").is_err());
        assert!(parse_duration_ns("10h").is_err());
        assert!(parse_duration_ns("99999999999999999999m").is_err());
    }

    #[test]
    fn pid_lists_reject_junk() {
        assert_eq!(
            parse_pid_list(&["12".into(), " 34".into()]),
            Ok(vec![12, 34])
        );
        assert!(parse_pid_list(&["0".into()]).is_err());
        assert!(parse_pid_list(&["-3".into()]).is_err());
        assert!(parse_pid_list(&["x".into()]).is_err());
    }

    #[test]
    fn zero_threshold_is_a_usage_error() {
        let cli = Cli::try_parse_from(["stallscope", "record", "--pid", "1", "--threshold", "0ms"])
            .expect("parses");
        let Command::Record(args) = cli.command;
        assert!(args.to_config().is_err());
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
