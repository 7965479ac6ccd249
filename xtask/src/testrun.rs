//! Runs `cargo test` with its output passed through while noting, per test binary, which tests
//! failed and which binaries failed without a test to blame (a crash, a build error), so that
//! `cargo xtask test` ends with one summary of every failure.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result};

/// What one or more `cargo test` runs reported.
#[derive(Default)]
pub struct Report {
    /// (suite, test binary, test name) of every failed test.
    failed_tests: Vec<(String, String, String)>,
    /// (suite, what cargo said) for failures that name no test: a binary that crashed or did
    /// not build.
    failed_runs: Vec<(String, String)>,
    /// Tests that passed, over all runs.
    passed: u64,
}

impl Report {
    /// Runs `cmd` (a `cargo test`), echoing its output, and adds what failed to the report.
    pub fn run(&mut self, suite: &str, cmd: &mut Command) -> Result<()> {
        eprintln!("test: {suite}: {cmd:?}");
        // One pipe for both streams: cargo's `Running X` lines (stderr) and the harness's
        // `test NAME ... FAILED` lines (stdout) then arrive in the order they were written.
        let (reader, writer) = std::io::pipe().context("creating a pipe for cargo test")?;
        let mut child = cmd
            .stdout(writer.try_clone().context("duplicating the pipe")?)
            .stderr(writer)
            .spawn()
            .with_context(|| format!("cannot run {cmd:?}"))?;
        // Our copy of the write end went to the child with `cmd`; drop the command's so the
        // read below ends when cargo exits.
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        let mut parser = Parser::new(suite);
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            println!("{line}");
            parser.line(&line, self);
        }
        let status = child.wait().context("waiting for cargo test")?;
        if !status.success() && !parser.blamed_any {
            self.failed_runs.push((
                suite.to_string(),
                format!("cargo test exited with {status}"),
            ));
        }
        Ok(())
    }

    /// A check that is not a `cargo test` run (the kernel VMs) failed.
    pub fn failed_run(&mut self, suite: &str, what: String) {
        self.failed_runs.push((suite.to_string(), what));
    }

    pub fn failed(&self) -> bool {
        !self.failed_tests.is_empty() || !self.failed_runs.is_empty()
    }

    /// The closing summary: every failure, by suite and test binary.
    pub fn summary(&self, took: Duration) -> String {
        let mut out = String::from("\n== test summary ==\n");
        if !self.failed() {
            out += &format!(
                "all {} tests passed in {:.0?}\n",
                self.passed,
                Duration::from_secs(took.as_secs())
            );
            return out;
        }
        out += &format!(
            "{} passed, {} failed, {} runs failed without a test to blame ({:.0?})\n",
            self.passed,
            self.failed_tests.len(),
            self.failed_runs.len(),
            Duration::from_secs(took.as_secs())
        );
        for (suite, binary, test) in &self.failed_tests {
            out += &format!("FAILED  {suite}: {binary}: {test}\n");
        }
        for (suite, what) in &self.failed_runs {
            out += &format!("FAILED  {suite}: {what}\n");
        }
        out
    }
}

/// Follows cargo's and the test harness's lines: `Running tests/main.rs (target/.../main-HASH)`
/// names the binary (`main`) whose `test MODULE::NAME ... FAILED` lines follow; a binary that did not exit successfully without a
/// failed test (a crash, a timeout kill) and cargo's build errors are failures of their own.
struct Parser {
    suite: String,
    binary: String,
    /// Failed tests of the current binary: its non-zero exit is then explained.
    binary_failures: usize,
    /// Whether this run's failure was already explained by a failed test or an error line.
    blamed_any: bool,
}

impl Parser {
    fn new(suite: &str) -> Self {
        Parser {
            suite: suite.to_string(),
            binary: String::from("(building)"),
            binary_failures: 0,
            blamed_any: false,
        }
    }

    fn line(&mut self, line: &str, report: &mut Report) {
        let text = line.trim();
        if let Some(rest) = text
            .strip_prefix("Running ")
            .or_else(|| text.strip_prefix("Doc-tests "))
        {
            self.binary = binary_name(rest);
            self.binary_failures = 0;
        } else if let Some(name) = text
            .strip_prefix("test ")
            .and_then(|rest| rest.strip_suffix(" ... FAILED"))
        {
            report
                .failed_tests
                .push((self.suite.clone(), self.binary.clone(), name.to_string()));
            self.binary_failures += 1;
            self.blamed_any = true;
        } else if text.starts_with("test ") && text.ends_with(" ... ok") {
            report.passed += 1;
        } else if text.starts_with("process didn't exit successfully") {
            if self.binary_failures == 0 {
                self.blame(report, text);
            }
        } else if let Some(what) = text.strip_prefix("error") {
            // `error: test failed, to rerun ...` and the closing `error: N targets failed`
            // restate failures already counted; anything else (`error[E0308]`, a linker error)
            // is a build failure.
            let restated = what.contains("test failed") || what.contains("target");
            if !restated {
                self.blame(report, text);
            }
        }
    }

    fn blame(&mut self, report: &mut Report, what: &str) {
        report
            .failed_runs
            .push((self.suite.clone(), format!("{}: {what}", self.binary)));
        self.blamed_any = true;
    }
}

/// The test binary a `Running` / `Doc-tests` line announces, as cargo names it (`--test main`,
/// `profiler_user`): the executable in parentheses without its hash, else the line's text
/// (`Doc-tests stallscope_tests` has no executable).
fn binary_name(running: &str) -> String {
    let Some((source, executable)) = running.split_once(" (") else {
        return running.to_string();
    };
    let file = executable
        .trim_end_matches(')')
        .rsplit('/')
        .next()
        .unwrap_or(executable);
    match file.rsplit_once('-') {
        Some((name, hash)) if !name.is_empty() && hash.chars().all(|c| c.is_ascii_hexdigit()) => {
            name.to_string()
        }
        _ => source.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(lines: &[&str]) -> Report {
        let mut report = Report::default();
        let mut parser = Parser::new("integration tests");
        for line in lines {
            parser.line(line, &mut report);
        }
        report
    }

    #[test]
    fn failed_tests_are_named_with_their_binary() {
        let report = feed(&[
            "     Running tests/a.rs (target/release/deps/a-1)",
            "test one ... ok",
            "test two ... FAILED",
            "error: test failed, to rerun pass `--test a`",
            "     Running tests/b.rs (target/release/deps/b-2)",
            "test three ... FAILED",
            "error: 2 targets failed:",
        ]);
        assert_eq!(report.passed, 1);
        assert_eq!(
            report.failed_tests,
            vec![
                ("integration tests".into(), "a".into(), "two".into()),
                ("integration tests".into(), "b".into(), "three".into()),
            ]
        );
        assert!(report.failed_runs.is_empty());
        let summary = report.summary(Duration::from_secs(3));
        assert!(
            summary.contains("FAILED  integration tests: b: three"),
            "{summary}"
        );
    }

    #[test]
    fn a_crashed_binary_is_a_failure_without_a_test() {
        let report = feed(&[
            "     Running tests/c.rs (target/release/deps/c-3)",
            "error: test failed, to rerun pass `--test c`",
            "",
            "Caused by:",
            "  process didn't exit successfully: `c-3` (signal: 11, SIGSEGV)",
        ]);
        assert!(report.failed());
        assert!(
            report.failed_runs[0].1.starts_with("c: "),
            "{:?}",
            report.failed_runs
        );
    }

    /// The one integration binary: a failure is named by the binary and the test's module path.
    #[test]
    fn a_failed_test_of_the_one_binary_is_named_with_its_module() {
        let report = feed(&[
            "     Running unittests src/main.rs (target/release/deps/stallscope-9f3a0c1d2e4b5a67)",
            "test timeline::tests::a_burn_is_a_stall ... ok",
            "     Running tests/main.rs (target/release/deps/main-843fcf09408da0dd)",
            "test c_epoll_server::planted_stalls_are_found_measured_and_explained ... ok",
            "test cpython_native::cpython_native_frames_unwind_to_main ... FAILED",
            "error: test failed, to rerun pass `--test main`",
        ]);
        assert_eq!(report.passed, 2);
        let summary = report.summary(Duration::from_secs(3));
        assert!(
            summary.contains(
                "FAILED  integration tests: main: cpython_native::cpython_native_frames_unwind_to_main"
            ),
            "{summary}"
        );
    }

    #[test]
    fn a_clean_run_passes() {
        let report = feed(&["test one ... ok"]);
        assert!(!report.failed());
        assert!(
            report
                .summary(Duration::ZERO)
                .contains("all 1 tests passed")
        );
    }

    #[test]
    fn a_build_error_is_a_failure() {
        let report = feed(&[
            "error[E0425]: cannot find value `x` in this scope",
            "error: could not compile `stallscope-tests` (test \"a\") due to 1 previous error",
        ]);
        assert!(report.failed());
        assert_eq!(report.failed_runs.len(), 2, "{:?}", report.failed_runs);
    }
}
