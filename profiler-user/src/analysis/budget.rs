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
        config::fail_on::parse_budgets,
        model::{ProcessRecord, StallRecord, ThreadRecord},
    };

    const MS: u64 = 1_000_000;

    // Records are built from their JSON form, with only the fields budgets read, so that fields
    // added to the schema later (with serde defaults) do not break these tests.
    fn from_json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
        serde_json::from_value(value).expect("a valid record")
    }

    fn stall(pid: u32, tid: u32, duration_ns: u64) -> StallRecord {
        StallRecord {
            comm: format!("t{tid}"),
            ..crate::model::fixtures::stall(pid, tid, duration_ns)
        }
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

    fn one(text: &str, recording: &Recording) -> BudgetResult {
        let verdict = judge(&parse(text), recording);
        assert_eq!(verdict.budgets.len(), 1);
        verdict.budgets.into_iter().next().expect("one result")
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
