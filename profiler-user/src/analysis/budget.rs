//! The CI verdict: a recording judged against parsed `--fail-on` budgets
//! ([`crate::config::fail_on`]), or two recordings against growth budgets (`diff`).
//! Should a growth budget reach [`judge`], it fails with a result that says a base recording
//! is needed: a budget never passes without being checked.

use std::collections::BTreeMap;

use crate::{
    config::fail_on::{Budget, Limit, Metric, Scope},
    model::{BudgetResult, Recording, Verdict},
    units::{format_duration, format_percent},
};

/// Judges `recording` against absolute budgets: one result per budget, for the whole recording
/// or, for scoped budgets, for the worst process or thread (so the verdict stays small however
/// many workers came and went; `measured` says how many were over). A growth budget fails
/// here, as it has no base to compare with: use [`judge_growth`].
pub fn judge(budgets: &[Budget], recording: &Recording) -> Verdict {
    verdict(
        budgets
            .iter()
            .map(|budget| match budget.limit() {
                Limit::AtMost(limit) => judge_limit(budget, limit, recording),
                Limit::GrowthPercent(_) | Limit::GrowthBy(_) => BudgetResult {
                    budget: budget.text().to_string(),
                    measured: format!("growth of {}", budget.metric().describe()),
                    subject: Subject::All.label(),
                    limit: budget.limit_text(),
                    actual: "unknown: growth limits need a base recording (stallscope diff)"
                        .to_string(),
                    passed: false,
                },
            })
            .collect(),
    )
}

/// Judges for `stallscope diff`: absolute budgets apply to `new`, growth budgets compare the
/// whole of `new` with the whole of `base`. Percent growth from a base of 0 is infinite (fails)
/// unless `new` is 0 too.
pub fn judge_growth(budgets: &[Budget], base: &Recording, new: &Recording) -> Verdict {
    verdict(
        budgets
            .iter()
            .map(|budget| judge_diff_one(budget, base, new))
            .collect(),
    )
}

fn verdict(budgets: Vec<BudgetResult>) -> Verdict {
    let passed = budgets.iter().all(|r| r.passed);
    Verdict { budgets, passed }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Subject {
    All,
    Process(u32),
    Thread(u32, u32),
}

impl Subject {
    fn label(self) -> String {
        match self {
            Subject::All => "all".to_string(),
            Subject::Process(pid) => format!("pid {pid}"),
            Subject::Thread(pid, tid) => format!("pid {pid} tid {tid}"),
        }
    }
}

/// Stall durations (sorted) per subject of `scope`. Processes and threads that were recorded
/// but never stalled are subjects too, with no durations, so they count in "worst of N".
fn durations_by_subject(recording: &Recording, scope: Scope) -> BTreeMap<Subject, Vec<u64>> {
    let mut groups: BTreeMap<Subject, Vec<u64>> = BTreeMap::new();
    match scope {
        Scope::All => {
            groups.insert(Subject::All, Vec::new());
        }
        Scope::Process => {
            for process in &recording.processes {
                groups.entry(Subject::Process(process.pid)).or_default();
            }
        }
        Scope::Thread => {
            for thread in &recording.threads {
                groups
                    .entry(Subject::Thread(thread.pid, thread.tid))
                    .or_default();
            }
        }
    }
    for stall in &recording.stalls {
        let subject = match scope {
            Scope::All => Subject::All,
            Scope::Process => Subject::Process(stall.pid),
            Scope::Thread => Subject::Thread(stall.pid, stall.tid),
        };
        groups.entry(subject).or_default().push(stall.duration_ns);
    }
    for durations in groups.values_mut() {
        durations.sort_unstable();
    }
    groups
}

fn judge_limit(budget: &Budget, limit: u64, recording: &Recording) -> BudgetResult {
    let metric = budget.metric();
    let groups = durations_by_subject(recording, budget.scope());
    let values: Vec<(Subject, u64)> = groups
        .iter()
        .map(|(subject, durations)| (*subject, metric.of(durations)))
        .collect();
    // Ties go to the first subject (lowest pid/tid), so the verdict is reproducible.
    let worst = values
        .iter()
        .fold(None, |worst, &(subject, value)| match worst {
            Some((_, worst_value)) if worst_value >= value => worst,
            _ => Some((subject, value)),
        });
    let over = values.iter().filter(|(_, value)| *value > limit).count();
    let measured = match budget.scope() {
        Scope::All => metric.describe().to_string(),
        scope if values.is_empty() => format!(
            "{} per {}: none was recorded",
            metric.describe(),
            scope.unit(1)
        ),
        scope => format!(
            "{} per {}: worst of {} {}, {} over the limit",
            metric.describe(),
            scope.unit(1),
            values.len(),
            scope.unit(values.len()),
            over
        ),
    };
    let (subject, actual) = match worst {
        Some((subject, value)) => (subject.label(), value),
        None => ("none".to_string(), 0),
    };
    BudgetResult {
        budget: budget.text().to_string(),
        measured,
        subject,
        limit: budget.limit_text(),
        actual: metric.format(actual),
        passed: over == 0,
    }
}

fn judge_diff_one(budget: &Budget, base: &Recording, new: &Recording) -> BudgetResult {
    let metric = budget.metric();
    let whole = |recording: &Recording| {
        let mut durations: Vec<u64> = recording.stalls.iter().map(|s| s.duration_ns).collect();
        durations.sort_unstable();
        metric.of(&durations)
    };
    let (base_value, new_value) = (whole(base), whole(new));
    let diff = i128::from(new_value) - i128::from(base_value);
    let (change, passed) = match budget.limit() {
        Limit::GrowthPercent(limit) => {
            // Compared as diff*100 <= limit*base rather than by dividing, so a base of 0 needs
            // no special case and exactly +20% passes a +20% budget.
            let passed = diff as f64 * 100.0 <= limit * base_value as f64;
            let percent = if base_value == 0 {
                if new_value == 0 { 0.0 } else { f64::INFINITY }
            } else {
                diff as f64 * 100.0 / base_value as f64
            };
            (format_percent(percent), passed)
        }
        Limit::GrowthBy(limit) => (format_signed(metric, diff), diff <= i128::from(limit)),
        Limit::AtMost(limit) => return judge_limit(budget, limit, new),
    };
    // Stalls are iterations over the threshold: with different thresholds the two sets of
    // stalls are not alike, and whoever reads a failing diff should know.
    let caveat = if base.threshold_ns == new.threshold_ns {
        String::new()
    } else {
        format!(
            " (thresholds differ: base {}, new {})",
            format_duration(base.threshold_ns),
            format_duration(new.threshold_ns)
        )
    };
    let measured = format!(
        "growth of {} from the base recording{caveat}",
        metric.describe()
    );
    BudgetResult {
        budget: budget.text().to_string(),
        measured,
        subject: Subject::All.label(),
        limit: budget.limit_text(),
        actual: format!(
            "{change} ({} -> {})",
            metric.format(base_value),
            metric.format(new_value)
        ),
        passed,
    }
}

fn format_signed(metric: Metric, diff: i128) -> String {
    let sign = if diff < 0 { '-' } else { '+' };
    let magnitude = u64::try_from(diff.unsigned_abs()).unwrap_or(u64::MAX);
    format!("{sign}{}", metric.format(magnitude))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    use crate::{
        config::{UsageError, fail_on::parse_budgets},
        model::{ProcessRecord, StallRecord, ThreadRecord},
    };

    const MS: u64 = 1_000_000;

    // Records are built from their JSON form, with only the fields budgets read, so that fields
    // added to the schema later (with serde defaults) do not break these tests.
    fn from_json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
        serde_json::from_value(value).expect("a valid record")
    }

    fn stall(pid: u32, tid: u32, duration_ns: u64) -> StallRecord {
        from_json(json!({
            "pid": pid, "tid": tid, "comm": format!("t{tid}"),
            "start_ns": 0, "end_ns": duration_ns, "duration_ns": duration_ns,
            "on_cpu_ns": duration_ns, "off_cpu_ns": 0, "runqueue_ns": 0,
            "rule": "iteration", "partial": false, "data_lost": false, "stacks": [],
        }))
    }

    fn process(pid: u32) -> ProcessRecord {
        from_json(json!({
            "pid": pid, "comm": format!("p{pid}"), "exe": "/bin/server",
            "started_ns": null, "exited_ns": null,
        }))
    }

    fn thread(pid: u32, tid: u32) -> ThreadRecord {
        from_json(json!({
            "pid": pid, "tid": tid, "comm": format!("t{tid}"), "loop": true, "iterations": 10,
        }))
    }

    fn recording(stalls: Vec<StallRecord>) -> Recording {
        let mut recording: Recording = from_json(json!({
            "version": crate::model::SCHEMA_VERSION,
            "threshold_ns": 100 * MS, "recorded_ns": 10_000 * MS,
            "start_ns": 0, "end_ns": 10_000 * MS, "sample_freq_hz": 99, "lost_events": 0,
            "drops": {
                "ringbuf_full": 0, "kernel_stack": 0, "user_stack": 0, "follow_map_full": 0,
                "iterations_discarded": 0, "stacks_dropped": 0,
            },
            "processes": [], "threads": [], "stalls": [], "offcpu": [],
            "verdict": { "budgets": [], "passed": true },
        }));
        recording.stalls = stalls;
        recording
    }

    /// Stalls of the given lengths (ms) on pid 1 tid 1.
    fn stalls_ms(durations: &[u64]) -> Recording {
        recording(durations.iter().map(|&d| stall(1, 1, d * MS)).collect())
    }

    fn parse(text: &str) -> Vec<Budget> {
        parse_budgets(text, false).expect("parses")
    }

    fn parse_growth(text: &str) -> Vec<Budget> {
        parse_budgets(text, true).expect("parses")
    }

    fn error(text: &str, allow_growth: bool) -> String {
        match parse_budgets(text, allow_growth) {
            Ok(budgets) => panic!("'{text}' parsed as {budgets:?}"),
            Err(UsageError(message)) => message,
        }
    }

    fn one(text: &str, recording: &Recording) -> BudgetResult {
        let verdict = judge(&parse(text), recording);
        assert_eq!(verdict.budgets.len(), 1);
        verdict.budgets.into_iter().next().expect("one result")
    }

    // ---- parsing ----

    #[test]
    fn parses_the_design_examples() {
        let budgets = parse("max=200ms,count=0,total=1s,p99=50ms");
        let got: Vec<(Scope, Metric, Limit)> = budgets
            .iter()
            .map(|b| (b.scope(), b.metric(), b.limit()))
            .collect();
        assert_eq!(
            got,
            vec![
                (Scope::All, Metric::Max, Limit::AtMost(200 * MS)),
                (Scope::All, Metric::Count, Limit::AtMost(0)),
                (Scope::All, Metric::Total, Limit::AtMost(1_000 * MS)),
                (Scope::All, Metric::P99, Limit::AtMost(50 * MS)),
            ]
        );
        assert_eq!(budgets[0].text(), "max=200ms");
        assert_eq!(budgets[0].to_string(), "max=200ms");
    }

    #[test]
    fn every_metric_and_scope_parses() {
        for metric in Metric::ALL {
            let value = if metric == Metric::Count { "3" } else { "5ms" };
            for (prefix, scope) in [
                ("", Scope::All),
                ("all:", Scope::All),
                ("process:", Scope::Process),
                ("thread:", Scope::Thread),
            ] {
                let text = format!("{prefix}{}={value}", metric.name());
                let budgets = parse(&text);
                assert_eq!(budgets.len(), 1, "{text}");
                assert_eq!(budgets[0].metric(), metric, "{text}");
                assert_eq!(budgets[0].scope(), scope, "{text}");
                assert!(!budgets[0].is_growth());
            }
        }
    }

    #[test]
    fn whitespace_around_items_and_separators_is_ignored() {
        let budgets = parse("  max = 200ms ,\tprocess : count=2 , p50=1.5s ");
        assert_eq!(budgets.len(), 3);
        assert_eq!(budgets[0].text(), "max = 200ms");
        assert_eq!(budgets[0].limit(), Limit::AtMost(200 * MS));
        assert_eq!(budgets[1].scope(), Scope::Process);
        assert_eq!(budgets[1].limit(), Limit::AtMost(2));
        assert_eq!(budgets[2].limit(), Limit::AtMost(1_500 * MS));
    }

    #[test]
    fn duration_units_are_those_of_the_command_line() {
        let limits: Vec<Limit> = parse("max=250us,max=2s,max=2m,max=0,max=0ms")
            .iter()
            .map(Budget::limit)
            .collect();
        assert_eq!(
            limits,
            vec![
                Limit::AtMost(250_000),
                Limit::AtMost(2_000 * MS),
                Limit::AtMost(120_000 * MS),
                Limit::AtMost(0),
                Limit::AtMost(0),
            ]
        );
    }

    #[test]
    fn unknown_metric_names_the_piece_and_the_choices() {
        assert_eq!(
            error("mx=1s", false),
            "--fail-on 'mx=1s': unknown metric 'mx'; use max, count, total, p50, p90 or p99"
        );
        assert!(error("max=1s, p95=2s", false).contains("unknown metric 'p95'"));
        assert!(error("MAX=1s", false).contains("unknown metric 'MAX'"));
        assert!(error("process:=1s", false).contains("no metric before '='"));
    }

    #[test]
    fn unknown_scope_names_the_choices() {
        let message = error("proc:max=1s", false);
        assert_eq!(
            message,
            "--fail-on 'proc:max=1s': unknown scope 'proc'; use all, process or thread \
             (e.g. process:max=200ms)"
        );
    }

    #[test]
    fn empty_items_are_errors() {
        for text in ["max=1s,", ",max=1s", "max=1s,,count=0", "max=1s, ,count=0"] {
            let message = error(text, false);
            assert!(message.contains("is empty"), "{text}: {message}");
            assert!(message.contains("[scope:]metric=value"), "{message}");
        }
        assert!(error("max=1s,", false).contains("budget 2 is empty"));
        for text in ["", "   "] {
            assert!(error(text, false).contains("no budget given"), "{text:?}");
        }
    }

    #[test]
    fn malformed_items_are_errors_with_an_example() {
        assert_eq!(
            error("max", false),
            "--fail-on 'max': expected metric=value; write [scope:]metric=value, \
             comma-separated, e.g. max=200ms,count=0"
        );
        assert_eq!(
            error("max=", false),
            "--fail-on 'max=': no value after '='; e.g. max=200ms"
        );
        assert_eq!(
            error("count=", false),
            "--fail-on 'count=': no value after '='; e.g. count=0"
        );
    }

    #[test]
    fn durations_need_a_unit() {
        let message = error("max=200", false);
        assert!(message.starts_with("--fail-on 'max=200': "), "{message}");
        assert!(message.contains("no unit"), "{message}");
        assert!(message.ends_with("e.g. max=200ms"), "{message}");
        assert!(error("p99=1h", false).contains("unknown unit 'h'"));
        assert!(error("total=fast", false).contains("--fail-on 'total=fast'"));
    }

    #[test]
    fn counts_are_whole_numbers() {
        for text in ["count=1.5", "count=1s", "count=x", "count=1e3"] {
            let message = error(text, false);
            assert!(message.contains("whole number"), "{text}: {message}");
        }
        assert!(error("count=99999999999999999999999", false).contains("too large"));
        assert_eq!(parse("count=7")[0].limit(), Limit::AtMost(7));
    }

    #[test]
    fn negative_limits_are_errors() {
        assert_eq!(
            error("max=-1s", false),
            "--fail-on 'max=-1s': a limit cannot be negative; e.g. max=200ms"
        );
        assert!(error("count=-1", false).contains("cannot be negative"));
    }

    #[test]
    fn growth_is_refused_outside_diff() {
        for text in ["total=+20%", "count=+2", "p99=+10ms", "max=20%"] {
            let message = error(text, false);
            assert!(
                message.contains("only apply to stallscope diff"),
                "{text}: {message}"
            );
        }
        assert_eq!(
            error("total=+20%", false),
            "--fail-on 'total=+20%': growth limits (+N%, +N) compare two recordings and only \
             apply to stallscope diff; give a limit such as total=200ms"
        );
    }

    #[test]
    fn growth_forms_parse_for_diff() {
        let budgets = parse_growth(
            "total=+20%, count=+2, p99=+10ms, max=+15%, count=+50%, max=+0%, p50=+12.5%, max=+0",
        );
        let limits: Vec<(Metric, Limit)> =
            budgets.iter().map(|b| (b.metric(), b.limit())).collect();
        assert_eq!(
            limits,
            vec![
                (Metric::Total, Limit::GrowthPercent(20.0)),
                (Metric::Count, Limit::GrowthBy(2)),
                (Metric::P99, Limit::GrowthBy(10 * MS)),
                (Metric::Max, Limit::GrowthPercent(15.0)),
                (Metric::Count, Limit::GrowthPercent(50.0)),
                (Metric::Max, Limit::GrowthPercent(0.0)),
                (Metric::P50, Limit::GrowthPercent(12.5)),
                (Metric::Max, Limit::GrowthBy(0)),
            ]
        );
        assert!(budgets.iter().all(Budget::is_growth));
        assert!(budgets.iter().all(|b| b.scope() == Scope::All));
        // Absolute limits still parse alongside growth ones.
        assert_eq!(parse_growth("max=1s")[0].limit(), Limit::AtMost(1_000 * MS));
        assert_eq!(parse_growth("all:total=+5%")[0].scope(), Scope::All);
    }

    #[test]
    fn malformed_growth_is_explained() {
        assert_eq!(
            error("total=20%", true),
            "--fail-on 'total=20%': a percentage is a growth limit and needs a '+': total=+20%"
        );
        for text in [
            "total=+x%",
            "total=+%",
            "total=+inf%",
            "total=+NaN%",
            "total=+-5%",
        ] {
            assert!(
                error(text, true).contains("is not a percentage"),
                "{text}: {}",
                error(text, true)
            );
        }
        let message = error("p99=+10", true);
        assert!(message.contains("no unit"), "{message}");
        assert!(
            message.contains("+<duration> (e.g. p99=+10ms)"),
            "{message}"
        );
        let message = error("count=+2ms", true);
        assert!(message.contains("whole number"), "{message}");
        assert!(message.contains("count=+2"), "{message}");
    }

    #[test]
    fn scoped_growth_is_refused() {
        assert_eq!(
            error("process:total=+20%", true),
            "--fail-on 'process:total=+20%': growth limits compare whole recordings (process \
             and thread ids differ between runs); drop the scope: total=+20%"
        );
        assert!(error("thread:count=+1", true).contains("drop the scope"));
    }

    // ---- statistics ----

    #[test]
    fn percentiles_are_nearest_rank() {
        let sorted: Vec<u64> = (1..=10).collect();
        assert_eq!(Metric::P50.of(&sorted), 5);
        assert_eq!(Metric::P90.of(&sorted), 9);
        assert_eq!(Metric::P99.of(&sorted), 10);
        assert_eq!(Metric::Max.of(&sorted), 10);
        assert_eq!(Metric::Count.of(&sorted), 10);
        assert_eq!(Metric::Total.of(&sorted), 55);
        let hundred: Vec<u64> = (1..=100).collect();
        assert_eq!(Metric::P50.of(&hundred), 50);
        assert_eq!(Metric::P90.of(&hundred), 90);
        assert_eq!(Metric::P99.of(&hundred), 99);
        assert_eq!(Metric::P50.of(&[7]), 7);
        assert_eq!(Metric::P99.of(&[7]), 7);
        assert_eq!(Metric::P50.of(&[1, 2]), 1);
        for metric in Metric::ALL {
            assert_eq!(metric.of(&[]), 0, "{metric:?}");
        }
        assert_eq!(Metric::Total.of(&[u64::MAX, 5]), u64::MAX);
    }

    // ---- judging a recording ----

    #[test]
    fn whole_recording_limits_pass_at_the_limit_and_fail_above() {
        let rec = stalls_ms(&[150, 300, 120]);
        let result = one("max=300ms", &rec);
        assert!(result.passed, "{result:?}");
        assert_eq!(result.actual, "300.0 ms");
        assert_eq!(result.limit, "300.0 ms");
        assert_eq!(result.subject, "all");
        assert_eq!(result.measured, "longest stall");
        assert!(!one("max=299ms", &rec).passed);
        assert!(one("count=3", &rec).passed);
        let count = one("count=2", &rec);
        assert!(!count.passed);
        assert_eq!((count.actual.as_str(), count.limit.as_str()), ("3", "2"));
        let total = one("total=500ms", &rec);
        assert!(!total.passed);
        assert_eq!(total.actual, "570.0 ms");
        assert!(one("total=570ms", &rec).passed);
        assert_eq!(one("p50=1s", &rec).actual, "150.0 ms");
        assert_eq!(one("p90=1s", &rec).actual, "300.0 ms");
        assert!(!one("p99=250ms", &rec).passed);
    }

    #[test]
    fn an_empty_recording_passes_everything() {
        let rec = recording(vec![]);
        let verdict = judge(&parse("count=0,max=0,total=0,p50=0,p90=0,p99=0"), &rec);
        assert!(verdict.passed, "{verdict:?}");
        assert_eq!(verdict.budgets.len(), 6);
        assert_eq!(verdict.budgets[0].actual, "0");
        assert_eq!(verdict.budgets[1].actual, "0 ms");
    }

    #[test]
    fn count_zero_fails_on_any_stall() {
        let result = one("count=0", &stalls_ms(&[101]));
        assert!(!result.passed);
        assert_eq!(result.describe(), "number of stalls = 1, limit 0");
    }

    #[test]
    fn verdict_is_the_and_of_all_results_in_budget_order() {
        let rec = stalls_ms(&[150, 300]);
        let verdict = judge(&parse("max=1s,count=1,total=1s"), &rec);
        assert!(!verdict.passed);
        let passed: Vec<bool> = verdict.budgets.iter().map(|r| r.passed).collect();
        assert_eq!(passed, vec![true, false, true]);
        let names: Vec<&str> = verdict.budgets.iter().map(|r| r.budget.as_str()).collect();
        assert_eq!(names, vec!["max=1s", "count=1", "total=1s"]);
        let verdict = judge(&[], &rec);
        assert!(verdict.passed);
        assert!(verdict.budgets.is_empty());
    }

    fn workers() -> Recording {
        // pid 10: two stalls of 150 ms; pid 20: one of 400 ms; pid 30: recorded, no stalls;
        // pid 40: only seen in a stall (a worker that came and went).
        let mut rec = recording(vec![
            stall(10, 11, 150 * MS),
            stall(10, 12, 150 * MS),
            stall(20, 21, 400 * MS),
            stall(40, 41, 120 * MS),
        ]);
        rec.processes = vec![process(10), process(20), process(30)];
        rec.threads = vec![
            thread(10, 11),
            thread(10, 12),
            thread(20, 21),
            thread(30, 31),
        ];
        rec
    }

    #[test]
    fn process_scope_reports_the_worst_process() {
        let rec = workers();
        let result = one("process:max=200ms", &rec);
        assert!(!result.passed);
        assert_eq!(result.subject, "pid 20");
        assert_eq!(result.actual, "400.0 ms");
        assert_eq!(
            result.measured,
            "longest stall per process: worst of 4 processes, 1 over the limit"
        );
        let result = one("process:count=1", &rec);
        assert!(!result.passed);
        assert_eq!(result.subject, "pid 10");
        assert_eq!(result.actual, "2");
        // The whole recording has 4 stalls, but no single process more than 2.
        assert!(one("process:count=2", &rec).passed);
        assert!(!one("count=2", &rec).passed);
        let total = one("process:total=250ms", &rec);
        assert_eq!(total.subject, "pid 20");
        assert!(total.measured.ends_with("2 over the limit"), "{total:?}");
    }

    #[test]
    fn thread_scope_reports_the_worst_thread() {
        let rec = workers();
        let result = one("thread:count=0", &rec);
        assert!(!result.passed);
        // Every stalled thread has one stall: the tie goes to the lowest (pid, tid).
        assert_eq!(result.subject, "pid 10 tid 11");
        assert_eq!(
            result.measured,
            "number of stalls per thread: worst of 5 threads, 4 over the limit"
        );
        let result = one("thread:p99=500ms", &rec);
        assert!(result.passed);
        assert_eq!(result.subject, "pid 20 tid 21");
        assert_eq!(
            result.measured,
            "p99 of stall durations per thread: worst of 5 threads, 0 over the limit"
        );
    }

    #[test]
    fn subjects_without_stalls_count_as_zero() {
        let mut rec = recording(vec![]);
        rec.processes = vec![process(7)];
        let result = one("process:max=0", &rec);
        assert!(result.passed);
        assert_eq!(result.subject, "pid 7");
        assert_eq!(result.actual, "0 ms");
        assert_eq!(
            result.measured,
            "longest stall per process: worst of 1 process, 0 over the limit"
        );
    }

    #[test]
    fn scoped_budgets_with_no_subjects_pass_and_say_so() {
        let result = one("thread:max=1s", &recording(vec![]));
        assert!(result.passed);
        assert_eq!(result.subject, "none");
        assert_eq!(
            result.measured,
            "longest stall per thread: none was recorded"
        );
    }

    #[test]
    fn growth_budgets_fail_without_a_base() {
        let verdict = judge(&parse_growth("total=+20%"), &recording(vec![]));
        assert!(!verdict.passed);
        assert!(
            verdict.budgets[0].actual.contains("need a base recording"),
            "{verdict:?}"
        );
        assert_eq!(verdict.budgets[0].limit, "+20.0%");
    }

    // ---- judging a diff ----

    fn diff(text: &str, base: &[u64], new: &[u64]) -> BudgetResult {
        let verdict = judge_growth(&parse_growth(text), &stalls_ms(base), &stalls_ms(new));
        assert_eq!(verdict.budgets.len(), 1);
        assert_eq!(verdict.passed, verdict.budgets[0].passed);
        verdict.budgets.into_iter().next().expect("one result")
    }

    #[test]
    fn percent_growth_passes_up_to_the_limit() {
        let result = diff("total=+20%", &[500, 500], &[600, 600]);
        assert!(result.passed, "{result:?}");
        assert_eq!(result.actual, "+20.0% (1.00 s -> 1.20 s)");
        assert_eq!(result.limit, "+20.0%");
        assert_eq!(result.subject, "all");
        assert_eq!(
            result.measured,
            "growth of total stall time from the base recording"
        );
        let result = diff("total=+20%", &[500, 500], &[600, 601]);
        assert!(!result.passed);
        assert_eq!(result.actual, "+20.1% (1.00 s -> 1.20 s)");
        assert!(diff("max=+15%", &[200], &[229]).passed);
        assert!(!diff("max=+15%", &[200], &[231]).passed);
        assert!(!diff("count=+50%", &[100, 100], &[100, 100, 100, 100]).passed);
    }

    #[test]
    fn shrinking_always_passes_and_shows_a_negative_change() {
        let result = diff("p99=+0%", &[400], &[200]);
        assert!(result.passed);
        assert_eq!(result.actual, "-50.0% (400.0 ms -> 200.0 ms)");
        let result = diff("p99=+10ms", &[400], &[200]);
        assert!(result.passed);
        assert_eq!(result.actual, "-200.0 ms (400.0 ms -> 200.0 ms)");
    }

    #[test]
    fn percent_growth_from_zero_is_infinite() {
        let result = diff("total=+1000%", &[], &[150]);
        assert!(!result.passed);
        assert_eq!(result.actual, "+inf% (0 ms -> 150.0 ms)");
        let result = diff("total=+0%", &[], &[]);
        assert!(result.passed);
        assert_eq!(result.actual, "+0.0% (0 ms -> 0 ms)");
    }

    #[test]
    fn absolute_growth_for_counts_and_durations() {
        let result = diff("count=+2", &[100], &[100, 100, 100]);
        assert!(result.passed);
        assert_eq!(result.actual, "+2 (1 -> 3)");
        assert_eq!(result.limit, "+2");
        assert!(!diff("count=+2", &[100], &[100, 100, 100, 100]).passed);
        let result = diff("p99=+10ms", &[200], &[210]);
        assert!(result.passed);
        assert_eq!(result.limit, "+10.0 ms");
        assert_eq!(result.actual, "+10.0 ms (200.0 ms -> 210.0 ms)");
        assert!(!diff("p99=+10ms", &[200], &[211]).passed);
        // From nothing to something: plain absolute growth, no special case.
        assert!(diff("count=+1", &[], &[100]).passed);
    }

    #[test]
    fn absolute_budgets_in_a_diff_apply_to_the_new_recording() {
        let budgets = parse_growth("max=250ms,count=+10");
        let verdict = judge_growth(&budgets, &stalls_ms(&[300]), &stalls_ms(&[200]));
        assert!(verdict.passed, "{verdict:?}");
        assert_eq!(verdict.budgets[0].actual, "200.0 ms");
        let verdict = judge_growth(&budgets, &stalls_ms(&[200]), &stalls_ms(&[300]));
        assert!(!verdict.passed);
        assert_eq!(
            verdict.budgets.iter().map(|r| r.passed).collect::<Vec<_>>(),
            vec![false, true]
        );
        let verdict = judge_growth(
            &parse_growth("process:max=300ms"),
            &stalls_ms(&[]),
            &workers(),
        );
        assert_eq!(verdict.budgets[0].subject, "pid 20");
    }

    #[test]
    fn a_diff_across_thresholds_says_so() {
        let base = stalls_ms(&[200]);
        let mut new = stalls_ms(&[200]);
        new.threshold_ns = 50 * MS;
        let verdict = judge_growth(&parse_growth("count=+0"), &base, &new);
        assert!(
            verdict.budgets[0]
                .measured
                .ends_with("(thresholds differ: base 100.0 ms, new 50.0 ms)"),
            "{verdict:?}"
        );
    }

    // ---- formatting ----

    #[test]
    fn percents_carry_a_sign() {
        assert_eq!(format_percent(23.44), "+23.4%");
        assert_eq!(format_percent(-5.0), "-5.0%");
        assert_eq!(format_percent(0.0), "+0.0%");
        assert_eq!(format_percent(-0.01), "+0.0%");
        assert_eq!(format_percent(f64::INFINITY), "+inf%");
        assert_eq!(format_signed(Metric::Count, -3), "-3");
        assert_eq!(format_signed(Metric::Max, 0), "+0 ms");
    }

    #[test]
    fn results_print_as_one_line() {
        let result = one("max=200ms", &stalls_ms(&[212]));
        assert_eq!(
            result.to_string(),
            "FAIL max=200ms (all): longest stall = 212.0 ms, limit 200.0 ms"
        );
        let result = one("max=300ms", &stalls_ms(&[212]));
        assert!(result.to_string().starts_with("ok   max=300ms (all): "));
    }

    #[test]
    fn results_serialize_with_the_documented_names() {
        let result = one("count=0", &stalls_ms(&[150]));
        let json = serde_json::to_value(&result).expect("json");
        for key in ["budget", "measured", "subject", "limit", "actual", "passed"] {
            assert!(json.get(key).is_some(), "{key} missing from {json}");
        }
        let back: BudgetResult = serde_json::from_value(json).expect("parses back");
        assert_eq!(back, result);
    }
}

#[cfg(test)]
mod proptests {
    //! Property tests of `--fail-on` parsing: any text gives budgets or a one-line usage error,
    //! never a panic; generated valid budgets parse to what they say and survive a round trip
    //! through their Display.

    use proptest::prelude::*;

    use super::*;
    use crate::config::{UsageError, fail_on::parse_budgets};

    fn config() -> ProptestConfig {
        ProptestConfig {
            cases: 2000,
            // Never write proptest-regressions/ files into the source tree.
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    fn is_one_line(message: &str) -> bool {
        !message.is_empty() && !message.contains('\n') && !message.contains('\r')
    }

    /// Pieces of budgets, right and wrong, to be glued together.
    fn token() -> impl Strategy<Value = String> {
        let scope = "(all|process|thread|proc|THREAD|)[ ]?(:|::|)[ ]?";
        let metric = "(max|count|total|p50|p90|p99|p100|min|)";
        let eq = "[ ]?(=|==|:|)[ ]?";
        let value = "(\\+|-|\\+\\+|)[ ]?([0-9]{0,21}([.][0-9]{0,4})?|inf|NaN|1e400|x)[ ]?(ms|s|us|m|ns|%|h|)";
        prop_oneof![
            6 => valid_budget().prop_map(|(text, ..)| text),
            4 => (scope, metric, eq, value).prop_map(|(s, m, e, v)| format!("{s}{m}{e}{v}")),
            1 => "[ =:+%,.0-9a-z-]{0,12}",
            1 => any::<String>(),
        ]
    }

    fn budget_list() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(token(), 0..5),
            prop::collection::vec(any::<bool>(), 5),
        )
            .prop_map(|(tokens, spaces)| {
                tokens
                    .iter()
                    .zip(&spaces)
                    .map(|(t, s)| if *s { format!(" {t} ") } else { t.clone() })
                    .collect::<Vec<_>>()
                    .join(",")
            })
    }

    /// What every parse result must satisfy, whatever the input.
    fn check_any(text: &str) -> Result<(), TestCaseError> {
        let strict = parse_budgets(text, false);
        let growth = parse_budgets(text, true);
        for (result, allow_growth) in [(&strict, false), (&growth, true)] {
            match result {
                Ok(budgets) => {
                    let items: Vec<&str> = text.split(',').map(str::trim).collect();
                    prop_assert_eq!(budgets.len(), items.len(), "{:?}", text);
                    for (budget, item) in budgets.iter().zip(&items) {
                        prop_assert_eq!(budget.text(), *item);
                        prop_assert!(allow_growth || !budget.is_growth(), "{text:?}");
                        if budget.is_growth() {
                            prop_assert_eq!(budget.scope(), Scope::All, "{:?}", text);
                        }
                        if let Limit::GrowthPercent(p) = budget.limit() {
                            prop_assert!(p.is_finite() && p >= 0.0, "{text:?}");
                        }
                    }
                    // Its Display round-trips.
                    let again: Vec<String> = budgets.iter().map(|b| b.to_string()).collect();
                    prop_assert_eq!(&parse_budgets(&again.join(","), allow_growth), result);
                }
                Err(UsageError(message)) => {
                    prop_assert!(message.starts_with("--fail-on '"), "{message}");
                    if !text.contains(['\n', '\r']) {
                        prop_assert!(is_one_line(message), "{message:?}");
                    }
                }
            }
        }
        // Allowing growth only ever accepts more, and never changes what was accepted.
        if let Ok(budgets) = &strict {
            prop_assert_eq!(Ok(budgets), growth.as_ref(), "{:?}", text);
        }
        Ok(())
    }

    #[derive(Clone, Debug)]
    enum Value {
        AtMost(String, u64),
        Percent(String, f64),
        By(String, u64),
    }

    fn duration_text() -> impl Strategy<Value = (String, u64)> {
        prop_oneof![
            Just(("0".to_string(), 0)),
            Just(("000".to_string(), 0)),
            (
                0u32..=u32::MAX,
                prop::sample::select(vec![
                    ("us", 1_000u64),
                    ("ms", 1_000_000),
                    ("s", 1_000_000_000)
                ])
            )
                .prop_map(|(n, (unit, scale))| (format!("{n}{unit}"), u64::from(n) * scale)),
            (0u32..100_000_000).prop_map(|n| (format!("{n}m"), u64::from(n) * 60_000_000_000)),
            (0u32..10_000, 0u32..10).prop_map(|(n, tenth)| (
                format!("{n}.{tenth}ms"),
                u64::from(n) * 1_000_000 + u64::from(tenth) * 100_000
            )),
        ]
    }

    fn value_for(metric: Metric) -> BoxedStrategy<Value> {
        let percent = (0u32..1_000_000, 0u32..10).prop_map(|(whole, tenth)| {
            let text = format!("+{whole}.{tenth}%");
            Value::Percent(text, f64::from(whole) + f64::from(tenth) / 10.0)
        });
        if metric == Metric::Count {
            prop_oneof![
                any::<u64>().prop_map(|n| Value::AtMost(n.to_string(), n)),
                any::<u64>().prop_map(|n| Value::By(format!("+{n}"), n)),
                percent,
            ]
            .boxed()
        } else {
            prop_oneof![
                duration_text().prop_map(|(text, ns)| Value::AtMost(text, ns)),
                duration_text().prop_map(|(text, ns)| Value::By(format!("+{text}"), ns)),
                percent,
            ]
            .boxed()
        }
    }

    /// A valid budget: (text, scope, metric, value); growth budgets are whole-recording only.
    fn valid_budget() -> impl Strategy<Value = (String, Scope, Metric, Value)> {
        (
            prop::sample::select(vec![
                None,
                Some(Scope::All),
                Some(Scope::Process),
                Some(Scope::Thread),
            ]),
            prop::sample::select(Metric::ALL.to_vec()),
            prop::sample::select(vec!["", " ", "  "]),
        )
            .prop_flat_map(|(scope, metric, pad)| {
                value_for(metric).prop_filter_map("growth is whole-recording only", move |value| {
                    let growth = !matches!(value, Value::AtMost(..));
                    if growth && scope.is_some_and(|s| s != Scope::All) {
                        return None;
                    }
                    let value_text = match &value {
                        Value::AtMost(t, _) | Value::Percent(t, _) | Value::By(t, _) => t.clone(),
                    };
                    let prefix = match scope {
                        None => String::new(),
                        Some(Scope::All) => format!("all{pad}:{pad}"),
                        Some(Scope::Process) => format!("process{pad}:{pad}"),
                        Some(Scope::Thread) => format!("thread{pad}:{pad}"),
                    };
                    let text = format!("{prefix}{}{pad}={pad}{value_text}", metric.name());
                    Some((text, scope.unwrap_or(Scope::All), metric, value))
                })
            })
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn never_panics_on_any_string(text in any::<String>()) {
            check_any(&text)?;
        }

        #[test]
        fn never_panics_on_plausible_token_lists(text in budget_list()) {
            check_any(&text)?;
        }

        #[test]
        fn valid_budgets_parse_to_what_they_say(
            budgets in prop::collection::vec(valid_budget(), 1..6),
            pad in prop::sample::select(vec!["", " ", "\t"]),
        ) {
            let text = budgets
                .iter()
                .map(|(t, ..)| format!("{pad}{t}{pad}"))
                .collect::<Vec<_>>()
                .join(",");
            let any_growth = budgets.iter().any(|(.., v)| !matches!(v, Value::AtMost(..)));
            let strict = parse_budgets(&text, false);
            if any_growth {
                let UsageError(message) = strict.expect_err("growth refused outside diff");
                prop_assert!(message.contains("only apply to stallscope diff"), "{message}");
            } else {
                prop_assert_eq!(&strict, &parse_budgets(&text, true));
            }
            let parsed = parse_budgets(&text, true).map_err(|e| TestCaseError::fail(e.0))?;
            prop_assert_eq!(parsed.len(), budgets.len());
            for (budget, (item, scope, metric, value)) in parsed.iter().zip(&budgets) {
                prop_assert_eq!(budget.text(), item.as_str());
                prop_assert_eq!(budget.to_string(), item.clone());
                prop_assert_eq!(budget.scope(), *scope, "{}", item);
                prop_assert_eq!(budget.metric(), *metric, "{}", item);
                match value {
                    Value::AtMost(_, n) => prop_assert_eq!(budget.limit(), Limit::AtMost(*n), "{}", item),
                    Value::By(_, n) => prop_assert_eq!(budget.limit(), Limit::GrowthBy(*n), "{}", item),
                    Value::Percent(_, p) => match budget.limit() {
                        Limit::GrowthPercent(parsed) => {
                            prop_assert!((parsed - p).abs() < 1e-9, "{item}: {parsed} vs {p}")
                        }
                        other => prop_assert!(false, "{item}: {other:?}"),
                    },
                }
            }
            // Display round trip: the budgets print as they were written and parse back equal.
            let printed: Vec<String> = parsed.iter().map(ToString::to_string).collect();
            prop_assert_eq!(parse_budgets(&printed.join(","), true), Ok(parsed));
        }

        #[test]
        fn scoped_growth_is_always_refused(
            scope in prop::sample::select(vec!["process", "thread"]),
            metric in prop::sample::select(Metric::ALL.to_vec()),
            value in prop::sample::select(vec!["+20%", "+1", "+10ms"]),
        ) {
            let text = format!("{scope}:{}={value}", metric.name());
            prop_assert!(parse_budgets(&text, true).is_err(), "{text}");
            prop_assert!(parse_budgets(&text, false).is_err(), "{text}");
        }
    }
}
