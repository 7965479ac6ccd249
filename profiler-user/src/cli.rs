//! Command line: clap definitions, and their validation into a plain [`RecordConfig`].
//!
//! Parsing only validates; anything that needs I/O (does the PID exist, is the output directory
//! writable) happens later, in `record`. A value a user typed wrong is a [`UsageError`] (exit 2).

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{
    commands::{ci::CiOptions, diff::DiffOptions, replay::ReportOptions},
    config::{
        self, Formats, RecordConfig, Target, UsageError, View, WatchConfig,
        fail_on::{Budget, parse_budgets},
        parse_pid_list, parse_threshold,
    },
    units::parse_duration_ns,
};

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
    /// Record a service while a load test runs, then judge the --fail-on budgets (exit 3 when
    /// exceeded, 4 when the load command itself failed).
    Ci(CiArgs),
    /// Re-render a saved recording directory (e.g. with another --threshold or --format).
    Report(ReportArgs),
    /// Compare two recordings: differential flamegraph and what grew, with growth budgets.
    Diff(DiffArgs),
    /// Check kernel, permissions and toolchain support; say what is missing and how to fix it.
    Doctor(DoctorArgs),
    /// Always-on: follow matching processes as they come and go, serve Prometheus metrics,
    /// log each stall as a JSON line, keep the latest stalls' reports. Runs until stopped.
    Watch(WatchArgs),
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Processes to follow, comma-separated (with their children and threads).
    #[arg(long, short = 'p', value_delimiter = ',')]
    pub pid: Vec<String>,

    /// Follow processes whose command name matches this glob (`*`, `?`), at exec and fork,
    /// from their first instruction; repeatable. Names are at most 15 bytes (the kernel's comm).
    #[arg(long)]
    pub comm: Vec<String>,

    /// Follow processes whose executable path matches this glob; a glob without `/` matches
    /// the file name. Repeatable.
    #[arg(long)]
    pub exe: Vec<String>,

    /// Follow every process of this cgroup (v2) and its descendants: a path under
    /// /sys/fs/cgroup, e.g. system.slice/nginx.service. Repeatable.
    #[arg(long)]
    pub cgroup: Vec<String>,

    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (and /healthz).
    #[arg(long)]
    pub listen: Option<String>,

    /// Append one JSON line per stall to FILE (`-`: standard output); SIGHUP reopens it.
    #[arg(long)]
    pub events: Option<String>,

    /// Write each stall's own report (stalls.json, folded, flamegraph.svg) under DIR.
    #[arg(long, requires = "keep")]
    pub keep_dir: Option<PathBuf>,

    /// How many stall reports --keep-dir keeps (the oldest are removed).
    #[arg(long, requires = "keep_dir")]
    pub keep: Option<usize>,

    /// An iteration longer than this is a stall (units: us, ms, s, m).
    #[arg(long, default_value = config::DEFAULT_THRESHOLD)]
    pub threshold: String,

    /// cpu-clock samples per second, per CPU.
    #[arg(long, default_value_t = config::DEFAULT_FREQ_HZ)]
    pub freq: u64,

    /// Bytes of user stack copied per sample and switch-out (see `record --stack-bytes`).
    #[arg(long, default_value_t = config::DEFAULT_STACK_BYTES)]
    pub stack_bytes: u32,

    /// Ring buffer size in KiB (see `record --ring-buffer-kib`).
    #[arg(long, default_value_t = config::DEFAULT_RING_BUFFER_KIB)]
    pub ring_buffer_kib: u32,

    /// Do not print each stall as it ends.
    #[arg(long, short = 'q')]
    pub quiet: bool,

    /// Show only the Python frames of stacks that have any.
    #[arg(long)]
    pub python_only: bool,

    /// When the kernel refuses a program, print its verifier's log here too (it is always
    /// written to a file the error names).
    #[arg(long, short = 'v')]
    pub verbose: bool,
}

impl WatchArgs {
    pub fn to_config(&self) -> Result<WatchConfig, UsageError> {
        if self.pid.is_empty()
            && self.comm.is_empty()
            && self.exe.is_empty()
            && self.cgroup.is_empty()
        {
            return Err(UsageError(
                "watch needs something to follow: --pid, --comm, --exe or --cgroup (e.g. --comm 'python3*')".into(),
            ));
        }
        for glob in self.comm.iter().chain(&self.exe) {
            if glob.is_empty() || glob.len() > profiler_common::MATCH_PATTERN_BYTES {
                return Err(UsageError(format!(
                    "pattern '{glob}': give 1 to {} bytes",
                    profiler_common::MATCH_PATTERN_BYTES
                )));
            }
        }
        let listen = self
            .listen
            .as_deref()
            .map(|text| {
                text.parse::<std::net::SocketAddr>().map_err(|_| {
                    UsageError(format!(
                        "--listen {text}: give ADDRESS:PORT, e.g. 127.0.0.1:9464 or [::]:9464"
                    ))
                })
            })
            .transpose()?;
        let record = RecordArgs {
            pid: self.pid.clone(),
            threshold: self.threshold.clone(),
            duration: None,
            freq: self.freq,
            out: None,
            thread: Vec::new(),
            thread_name: None,
            quiet: self.quiet,
            fail_on: None,
            format: vec!["all".into()],
            stack_bytes: self.stack_bytes,
            ring_buffer_kib: self.ring_buffer_kib,
            python_only: self.python_only,
            verbose: self.verbose,
            native: false,
            command: Vec::new(),
        }
        .to_config()?;
        if self.keep == Some(0) {
            return Err(UsageError("--keep must be at least 1".into()));
        }
        Ok(WatchConfig {
            record,
            comm: self.comm.clone(),
            exe: self.exe.clone(),
            cgroups: self.cgroup.clone(),
            listen,
            events: self.events.clone(),
            keep_dir: self.keep_dir.clone(),
            keep: self.keep.unwrap_or(0),
        })
    }
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Also check what building stallscope needs (bpf-linker, nightly rust-src).
    #[arg(long)]
    pub developer: bool,
}

#[derive(Debug, Args)]
pub struct CiArgs {
    /// The service to record (or use --spawn).
    #[arg(
        long,
        short = 'p',
        value_delimiter = ',',
        required_unless_present = "spawn"
    )]
    pub pid: Vec<String>,

    /// Start the server with this shell command, record it, stop it afterwards.
    #[arg(long, conflicts_with = "pid")]
    pub spawn: Option<String>,

    /// Wait until the service is ready before starting the load: tcp:PORT or http://HOST:PORT/PATH.
    #[arg(long)]
    pub ready: Option<String>,

    /// How long to wait for --ready.
    #[arg(long, default_value = config::DEFAULT_READY_TIMEOUT)]
    pub ready_timeout: String,

    /// Budgets, e.g. `max=200ms,count=0`; exceeded means exit code 3.
    #[arg(long)]
    pub fail_on: Option<String>,

    /// An iteration longer than this is a stall.
    #[arg(long, default_value = config::DEFAULT_THRESHOLD)]
    pub threshold: String,

    /// cpu-clock samples per second, per CPU.
    #[arg(long, default_value_t = config::DEFAULT_FREQ_HZ)]
    pub freq: u64,

    /// Output directory (default: ./stallscope-<pid>-<YYYYmmdd-HHMMSS>).
    #[arg(long, short = 'o')]
    pub out: Option<PathBuf>,

    /// Outputs to render (see `record --format`).
    #[arg(long, default_value = "all", value_delimiter = ',')]
    pub format: Vec<String>,

    /// Do not print each stall as it ends.
    #[arg(long, short = 'q')]
    pub quiet: bool,

    /// Keep only the Python frames of stacks that have any, in every output and stalls.json
    /// (stricter than the default view: no native leaf either).
    #[arg(long)]
    pub python_only: bool,

    /// When the kernel refuses a program, print its verifier's log here too (it is always
    /// written to a file the error names).
    #[arg(long, short = 'v')]
    pub verbose: bool,

    /// Show every frame of Python stacks (the interpreter's C code between Python frames too),
    /// instead of the default Python-first view (Python frames and the native leaf that did the
    /// work). stalls.json has every frame either way.
    #[arg(long, conflicts_with = "python_only")]
    pub native: bool,

    /// The load command (wrk, k6, locust, a pytest run, ...).
    #[arg(last = true, num_args = 1.., required = true)]
    pub load: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// A directory written by `stallscope record` or `ci`.
    pub dir: PathBuf,

    /// Re-cut stalls at this threshold (replays the saved events).
    #[arg(long)]
    pub threshold: Option<String>,

    /// Outputs to render (see `record --format`).
    #[arg(long, default_value = "all", value_delimiter = ',')]
    pub format: Vec<String>,

    /// Write here instead of into DIR.
    #[arg(long, short = 'o')]
    pub out: Option<PathBuf>,

    /// Judge these budgets (exit 3 when exceeded).
    #[arg(long)]
    pub fail_on: Option<String>,

    /// Show every frame of Python stacks instead of the Python-first view (see `record`).
    #[arg(long)]
    pub native: bool,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The baseline recording directory.
    pub base: PathBuf,
    /// The recording to compare with it.
    pub new: PathBuf,
    /// Budgets on growth, e.g. `total=+20%,count=+2,p99=+10ms` (exit 3 when exceeded).
    #[arg(long)]
    pub fail_on: Option<String>,
    /// Where to write diff.svg, diff.folded, diff.md (default: NEW).
    #[arg(long, short = 'o')]
    pub out: Option<PathBuf>,
}

impl CiArgs {
    pub fn to_options(&self) -> Result<CiOptions, UsageError> {
        let record = RecordArgs {
            pid: if self.pid.is_empty() {
                vec![]
            } else {
                self.pid.clone()
            },
            threshold: self.threshold.clone(),
            duration: None,
            freq: self.freq,
            out: self.out.clone(),
            thread: Vec::new(),
            thread_name: None,
            quiet: self.quiet,
            fail_on: self.fail_on.clone(),
            format: self.format.clone(),
            // `ci` has no flags for these: record's defaults, from the one place they are set.
            ring_buffer_kib: config::DEFAULT_RING_BUFFER_KIB,
            stack_bytes: config::DEFAULT_STACK_BYTES,
            python_only: self.python_only,
            verbose: self.verbose,
            native: self.native,
            command: Vec::new(),
        };
        let mut config = record.to_config()?;
        if self.spawn.is_some() {
            config.target = Target::Pids(Vec::new());
        }
        let ready_timeout = parse_duration_ns(&self.ready_timeout)
            .map_err(|e| UsageError(format!("--ready-timeout {}: {e}", self.ready_timeout)))?;
        Ok(CiOptions {
            record: config,
            spawn: self.spawn.clone(),
            ready: self
                .ready
                .as_deref()
                .map(crate::commands::ci::parse_readiness)
                .transpose()?,
            ready_timeout: Duration::from_nanos(ready_timeout),
            load: self.load.clone(),
        })
    }
}

impl ReportArgs {
    pub fn to_options(&self) -> Result<ReportOptions, UsageError> {
        Ok(ReportOptions {
            dir: self.dir.clone(),
            out: self.out.clone(),
            threshold_ns: self.threshold.as_deref().map(parse_threshold).transpose()?,
            formats: Formats::parse(&self.format)?,
            budgets: budgets(self.fail_on.as_deref(), false)?,
            view: View::from_native(self.native),
        })
    }
}

impl DiffArgs {
    pub fn to_options(&self) -> Result<DiffOptions, UsageError> {
        Ok(DiffOptions {
            base: self.base.clone(),
            new: self.new.clone(),
            out: self.out.clone(),
            budgets: budgets(self.fail_on.as_deref(), true)?,
        })
    }
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
    #[arg(long, default_value = config::DEFAULT_THRESHOLD)]
    pub threshold: String,

    /// Stop recording after this long (default: until Ctrl-C or every target exits).
    #[arg(long, short = 'd')]
    pub duration: Option<String>,

    /// cpu-clock samples per second, per CPU.
    #[arg(long, default_value_t = config::DEFAULT_FREQ_HZ)]
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

    /// Fail (exit 3) when a budget is exceeded, e.g. `max=200ms,count=0` or `thread:p99=50ms`.
    /// Metrics: max, count, total, p50, p90, p99; scopes: all (default), process, thread.
    #[arg(long)]
    pub fail_on: Option<String>,

    /// Outputs to render, comma-separated: svg, folded, trace, pprof, summary, junit, html, or all.
    /// stalls.json and the saved events are always written.
    #[arg(long, default_value = "all", value_delimiter = ',')]
    pub format: Vec<String>,

    /// Bytes of user stack copied at each sample and switch-out outside a wait point, for
    /// DWARF unwinding (0: frame pointers only). At most 32768. The default reaches the
    /// thread start of Node/V8 and CPython stacks; see README (Benchmarks) for the cost.
    #[arg(long, default_value_t = config::DEFAULT_STACK_BYTES)]
    pub stack_bytes: u32,

    /// Ring buffer size in KiB (a power of two, at least 4). The default (4 MiB) holds ~125
    /// full stack copies (a repeated stack is sent without its copy): no loss measured on a
    /// loaded FastAPI service at 999 Hz; a larger one helps targets with bursts of new stacks.
    #[arg(long, default_value_t = config::DEFAULT_RING_BUFFER_KIB)]
    pub ring_buffer_kib: u32,

    /// Keep only the Python frames of stacks that have any, in every output and stalls.json
    /// (stricter than the default view: no native leaf, no kernel frames).
    #[arg(long)]
    pub python_only: bool,

    /// When the kernel refuses a program, print its verifier's log here too (it is always
    /// written to a file the error names).
    #[arg(long, short = 'v')]
    pub verbose: bool,

    /// Show every frame of Python stacks (the interpreter's C code between Python frames too),
    /// instead of the default Python-first view (Python frames and the native leaf that did the
    /// work). stalls.json has every frame either way.
    #[arg(long, conflicts_with = "python_only")]
    pub native: bool,

    /// Command to run and record (instead of --pid).
    #[arg(last = true, num_args = 1.., conflicts_with = "pid")]
    pub command: Vec<String>,
}

impl RecordArgs {
    pub fn to_config(&self) -> Result<RecordConfig, UsageError> {
        let target = if self.command.is_empty() {
            Target::Pids(parse_pid_list(&self.pid)?)
        } else {
            Target::Command(self.command.clone())
        };
        let threshold_ns = parse_threshold(&self.threshold)?;
        let budgets = budgets(self.fail_on.as_deref(), false)?;
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
            budgets,
            formats: Formats::parse(&self.format)?,
            stack_bytes: if self.stack_bytes > config::MAX_STACK_BYTES {
                return Err(UsageError(format!(
                    "--stack-bytes {}: at most {}",
                    self.stack_bytes,
                    config::MAX_STACK_BYTES
                )));
            } else {
                self.stack_bytes
            },
            python_only: self.python_only,
            verbose: self.verbose,
            view: View::from_native(self.native),
        })
    }
}

/// `--fail-on`, parsed here once: the commands get the budgets, never the text again.
fn budgets(text: Option<&str>, allow_growth: bool) -> Result<Vec<Budget>, UsageError> {
    text.map_or(Ok(Vec::new()), |text| parse_budgets(text, allow_growth))
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
        let Command::Record(args) = cli.command else {
            panic!("record")
        };
        assert!(args.to_config().is_err());
    }

    fn parse(args: &[&str]) -> Command {
        Cli::try_parse_from(std::iter::once("stallscope").chain(args.iter().copied()))
            .expect("parses")
            .command
    }

    /// Issue #18: `--fail-on` was parsed by the command line to validate it, then again by each
    /// command; now once, and the config carries the budgets.
    #[test]
    fn fail_on_is_parsed_once_into_the_config() {
        let expected = parse_budgets("max=200ms,thread:count=0", false).expect("valid");
        let Command::Record(args) =
            parse(&["record", "-p", "1", "--fail-on", "max=200ms,thread:count=0"])
        else {
            panic!("record")
        };
        assert_eq!(args.to_config().expect("valid").budgets, expected);
        let Command::Ci(args) = parse(&[
            "ci",
            "-p",
            "1",
            "--fail-on",
            "max=200ms,thread:count=0",
            "--",
            "true",
        ]) else {
            panic!("ci")
        };
        assert_eq!(args.to_options().expect("valid").record.budgets, expected);
        let Command::Report(args) =
            parse(&["report", "dir", "--fail-on", "max=200ms,thread:count=0"])
        else {
            panic!("report")
        };
        assert_eq!(args.to_options().expect("valid").budgets, expected);
        let Command::Diff(args) = parse(&["diff", "a", "b", "--fail-on", "total=+20%"]) else {
            panic!("diff")
        };
        assert_eq!(
            args.to_options().expect("valid").budgets,
            parse_budgets("total=+20%", true).expect("valid")
        );
        // Still refused at once, before anything is recorded.
        let Command::Record(args) = parse(&["record", "-p", "1", "--fail-on", "total=+20%"]) else {
            panic!("record")
        };
        assert!(args.to_config().is_err());
    }

    /// Issue #18: `ci` re-stated record's defaults (32768) by hand; both now come from config.
    #[test]
    fn ci_takes_the_record_defaults_from_one_place() {
        let Command::Record(record) = parse(&["record", "-p", "1"]) else {
            panic!("record")
        };
        let Command::Ci(ci) = parse(&["ci", "-p", "1", "--", "true"]) else {
            panic!("ci")
        };
        let record = record.to_config().expect("valid");
        let ci = ci.to_options().expect("valid").record;
        assert_eq!(
            record.ring_buffer_bytes,
            config::DEFAULT_RING_BUFFER_KIB * 1024
        );
        assert_eq!(record.stack_bytes, config::DEFAULT_STACK_BYTES);
        assert_eq!(ci.ring_buffer_bytes, record.ring_buffer_bytes);
        assert_eq!(ci.stack_bytes, record.stack_bytes);
        assert_eq!(ci.threshold_ns, record.threshold_ns);
        assert_eq!(ci.freq_hz, record.freq_hz);
    }

    /// Issue #18: `--native` was a process-wide flag set by `main`; now each command's config
    /// carries the view its renderers are given (Python-first unless asked).
    #[test]
    fn native_is_the_view_each_command_renders_with() {
        let view = |args: &[&str]| match parse(args) {
            Command::Record(a) => a.to_config().expect("valid").view,
            Command::Ci(a) => a.to_options().expect("valid").record.view,
            Command::Report(a) => a.to_options().expect("valid").view,
            _ => panic!("record, ci or report"),
        };
        assert_eq!(view(&["record", "-p", "1"]), View::PythonFirst);
        assert_eq!(view(&["record", "-p", "1", "--native"]), View::Native);
        assert_eq!(
            view(&["ci", "-p", "1", "--native", "--", "true"]),
            View::Native
        );
        assert_eq!(view(&["ci", "-p", "1", "--", "true"]), View::PythonFirst);
        assert_eq!(view(&["report", "dir", "--native"]), View::Native);
        assert_eq!(view(&["report", "dir"]), View::PythonFirst);
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}

#[cfg(test)]
mod proptests {
    //! Property tests of the command-line value parsers: whatever a user types, a value or a
    //! one-line error, never a panic; documented forms parse to exactly what they say.

    use proptest::prelude::*;

    use super::*;

    fn config() -> ProptestConfig {
        ProptestConfig {
            cases: 2000,
            // Never write proptest-regressions/ files into the source tree.
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    /// The documented units and their scale in nanoseconds.
    const UNITS: [(&str, u128); 4] = [
        ("us", 1_000),
        ("ms", 1_000_000),
        ("s", 1_000_000_000),
        ("m", 60_000_000_000),
    ];

    fn unit() -> impl Strategy<Value = (&'static str, u128)> {
        prop::sample::select(UNITS.to_vec())
    }

    /// Strings close to durations: digits, dots, signs, exponents, spaces, real and wrong units.
    fn near_duration() -> impl Strategy<Value = String> {
        "[ \t]?[-+]?[0-9]{0,22}[.]?[0-9]{0,6}([eE][-+]?[0-9]{1,3})?[ ]?(ns|us|µs|ms|s|m|min|h|d|sec|MS|S|\\.|%|)[ \t]?"
    }

    fn is_one_line(message: &str) -> bool {
        !message.is_empty() && !message.contains('\n') && !message.contains('\r')
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn duration_never_panics_on_any_string(text in any::<String>()) {
            let result = parse_duration_ns(&text);
            if let Err(message) = result {
                prop_assert!(!message.is_empty());
                if !text.contains(['\n', '\r']) {
                    prop_assert!(is_one_line(&message), "{message:?}");
                }
            }
        }

        #[test]
        fn duration_never_panics_on_near_misses(text in near_duration()) {
            match parse_duration_ns(&text) {
                Ok(_) => {
                    // Accepted only with a unit, and never with a sign, exponent or junk.
                    let trimmed = text.trim();
                    prop_assert!(
                        trimmed.starts_with(|c: char| c.is_ascii_digit() || c == '.'),
                        "{text:?} accepted"
                    );
                    prop_assert!(!trimmed.contains(['-', '+', 'e', 'E', '%', ' ']), "{text:?} accepted");
                    prop_assert!(
                        ["ns", "us", "µs", "ms", "s", "m", "min"]
                            .iter()
                            .any(|u| trimmed.ends_with(u)),
                        "{text:?} accepted"
                    );
                }
                Err(message) => prop_assert!(is_one_line(&message), "{message:?}"),
            }
        }

        #[test]
        fn whole_durations_parse_to_the_exact_nanosecond(n in any::<u32>(), (unit, scale) in unit()) {
            let exact = u128::from(n) * scale;
            let text = format!("{n}{unit}");
            let result = parse_duration_ns(&text);
            if exact <= u128::from(u64::MAX / 2) {
                prop_assert_eq!(result.clone(), Ok(exact as u64), "{}", text);
                // Whitespace around the value is ignored.
                prop_assert_eq!(parse_duration_ns(&format!("  {text}\t")), result);
            } else if exact > u128::from(u64::MAX) {
                let message = result.expect_err("more than u64::MAX ns cannot be accepted");
                prop_assert!(message.contains("too large"), "{text}: {message}");
            } else {
                prop_assert!(result.is_err() || result == Ok(exact as u64), "{text}: {result:?}");
            }
        }

        #[test]
        fn fractional_durations_parse_exactly(
            whole in 0u32..100_000,
            millis in 0u32..1000,
            (unit, scale) in unit(),
        ) {
            let text = format!("{whole}.{millis:03}{unit}");
            let exact = (u128::from(whole) * scale + u128::from(millis) * scale / 1000) as u64;
            let parsed = parse_duration_ns(&text);
            if scale <= 1_000_000_000 {
                prop_assert_eq!(parsed, Ok(exact), "{}", text);
            } else {
                // Minutes: 6e15 ns is where f64 steps by 1 ns; allow that rounding.
                let parsed = parsed.map_err(TestCaseError::fail)?;
                prop_assert!(parsed.abs_diff(exact) <= 1, "{text}: {parsed} vs {exact}");
            }
        }

        #[test]
        fn bare_and_negative_numbers_are_refused(n in any::<u32>(), (unit, _) in unit()) {
            let bare = parse_duration_ns(&n.to_string());
            prop_assert!(bare.as_ref().is_err_and(|m| m.contains("has no unit")), "{n}: {bare:?}");
            let negative = format!("-{n}{unit}");
            prop_assert!(parse_duration_ns(&negative).is_err(), "{negative} accepted");
        }

        #[test]
        fn pid_list_never_panics(items in prop::collection::vec(any::<String>(), 0..6)) {
            match parse_pid_list(&items) {
                Ok(pids) => {
                    prop_assert_eq!(pids.len(), items.len());
                    prop_assert!(pids.iter().all(|&pid| pid > 0));
                }
                Err(UsageError(message)) => {
                    prop_assert!(message.contains("is not a process or thread id"), "{message}");
                    if !items.iter().any(|i| i.contains(['\n', '\r'])) {
                        prop_assert!(is_one_line(&message), "{message:?}");
                    }
                }
            }
        }

        #[test]
        fn pid_accepts_exactly_positive_u32(n in prop_oneof![
            any::<i64>(),
            -2i64..=2,
            (i64::from(u32::MAX) - 2)..=(i64::from(u32::MAX) + 2),
        ]) {
            let text = n.to_string();
            let result = parse_pid_list(std::slice::from_ref(&text));
            if (1..=i64::from(u32::MAX)).contains(&n) {
                prop_assert_eq!(result, Ok(vec![n as u32]));
            } else {
                let UsageError(message) = result.expect_err("not a positive u32");
                prop_assert!(message.contains(&format!("'{text}'")), "{message}");
            }
        }

        #[test]
        fn pid_strings_accepted_are_numbers(text in prop_oneof![
            any::<String>(),
            "[ +\\-0-9a-fx٣]{0,12}",
        ]) {
            if let Ok(pids) = parse_pid_list(std::slice::from_ref(&text)) {
                // Only decimal ASCII digits (an optional '+', surrounding blanks) make a PID.
                let trimmed = text.trim();
                let digits = trimmed.strip_prefix('+').unwrap_or(trimmed);
                prop_assert!(!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()), "{text:?} accepted");
                prop_assert_eq!(digits.parse::<u64>().ok(), Some(u64::from(pids[0])));
                prop_assert!(pids[0] > 0);
            }
        }

        #[test]
        fn pid_lists_keep_order_and_name_the_bad_item(
            pids in prop::collection::vec(1u32.., 1..8),
            bad in prop_oneof![Just("0".to_string()), Just("-1".to_string()), "[a-z]{1,5}", Just("4294967296".to_string())],
            at in any::<prop::sample::Index>(),
        ) {
            let mut items: Vec<String> = pids.iter().map(|p| format!(" {p} ")).collect();
            prop_assert_eq!(parse_pid_list(&items), Ok(pids.clone()));
            let index = at.index(items.len() + 1);
            items.insert(index, bad.clone());
            let UsageError(message) = parse_pid_list(&items).expect_err("a bad item");
            prop_assert!(message.contains(&format!("'{bad}'")), "{message}");
        }
    }
}
