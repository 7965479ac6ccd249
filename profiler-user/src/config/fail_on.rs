//! `--fail-on` budgets as the user writes them, parsed once into [`Budget`]s that the commands
//! carry in their config; judging a recording against them is `analysis::budget`'s job.
//!
//! A budget list is comma-separated `[scope:]metric=value` items; whitespace around items and
//! around `:` and `=` is ignored, an empty item (a stray comma) is an error.
//!
//! - metric: `max` (longest stall), `count` (number of stalls), `total` (sum of stall
//!   durations), `p50`, `p90`, `p99` (nearest-rank percentiles of stall durations);
//! - scope: none or `all` (the whole recording), `process` (every process on its own must be
//!   within the limit), `thread` (every thread on its own);
//! - value, an absolute limit (the measured value must be at most this): a duration with a unit
//!   as [`parse_duration_ns`](crate::units::parse_duration_ns) reads it (`250us`, `200ms`, `1.5s`, `2m`; a bare `0` is allowed),
//!   or for `count` a whole number;
//! - value, a growth limit (`stallscope diff` only, whole recording only): `+N%` (relative growth
//!   over the base, any metric), `+N` for `count` or `+<duration>` for the others (absolute
//!   growth).
//!
//! Examples: `max=200ms,count=0`, `process:p99=50ms`, `total=+20%,count=+2,p99=+10ms`.
//!
//! Growth budgets are refused at parse time unless the caller asks for them
//! (`parse_budgets(text, true)`, for `diff`), so `record` and `ci` tell the user at once rather
//! than after a whole recording. Should one reach `judge` anyway, it fails with a result that
//! says a base recording is needed: a budget never passes without being checked.

use std::fmt;

use crate::{
    config::UsageError,
    units::{format_duration, format_percent, parse_duration_ns},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Metric {
    Max,
    Count,
    Total,
    P50,
    P90,
    P99,
}

impl Metric {
    pub const ALL: [Metric; 6] = [
        Metric::Max,
        Metric::Count,
        Metric::Total,
        Metric::P50,
        Metric::P90,
        Metric::P99,
    ];

    /// The name used in budgets.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Max => "max",
            Metric::Count => "count",
            Metric::Total => "total",
            Metric::P50 => "p50",
            Metric::P90 => "p90",
            Metric::P99 => "p99",
        }
    }

    /// What it measures, for people.
    pub fn describe(self) -> &'static str {
        match self {
            Metric::Max => "longest stall",
            Metric::Count => "number of stalls",
            Metric::Total => "total stall time",
            Metric::P50 => "p50 of stall durations",
            Metric::P90 => "p90 of stall durations",
            Metric::P99 => "p99 of stall durations",
        }
    }

    fn from_name(name: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.name() == name)
    }

    fn is_duration(self) -> bool {
        self != Metric::Count
    }

    /// The metric over stall durations sorted ascending; 0 when there are none.
    pub fn of(self, sorted: &[u64]) -> u64 {
        match self {
            Metric::Max => sorted.last().copied().unwrap_or(0),
            Metric::Count => sorted.len() as u64,
            Metric::Total => sorted.iter().fold(0u64, |sum, &d| sum.saturating_add(d)),
            Metric::P50 => nearest_rank(sorted, 50),
            Metric::P90 => nearest_rank(sorted, 90),
            Metric::P99 => nearest_rank(sorted, 99),
        }
    }

    pub fn format(self, value: u64) -> String {
        if self.is_duration() {
            format_duration(value)
        } else {
            value.to_string()
        }
    }
}

/// Nearest-rank percentile: the smallest value with at least `percent`% of values at or below
/// it. Always one of the observed durations, so a p99 budget is checked against a real stall.
pub fn nearest_rank(sorted: &[u64], percent: usize) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let n = sorted.len();
    let rank = (percent * n).div_ceil(100).clamp(1, n);
    sorted[rank - 1]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The whole recording.
    All,
    /// Each process on its own: the worst one decides.
    Process,
    /// Each thread on its own: the worst one decides.
    Thread,
}

impl Scope {
    fn from_name(name: &str) -> Option<Scope> {
        match name {
            "all" => Some(Scope::All),
            "process" => Some(Scope::Process),
            "thread" => Some(Scope::Thread),
            _ => None,
        }
    }

    pub fn unit(self, n: usize) -> &'static str {
        match (self, n) {
            (Scope::All, _) => "recording",
            (Scope::Process, 1) => "process",
            (Scope::Process, _) => "processes",
            (Scope::Thread, 1) => "thread",
            (Scope::Thread, _) => "threads",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Limit {
    /// The measured value must be at most this: nanoseconds, or a number of stalls for `count`.
    AtMost(u64),
    /// `+N%`: new may exceed base by at most N percent of base.
    GrowthPercent(f64),
    /// `+N` / `+10ms`: new may exceed base by at most this much (same units as `AtMost`).
    GrowthBy(u64),
}

impl Limit {
    pub fn is_growth(self) -> bool {
        !matches!(self, Limit::AtMost(_))
    }
}

/// One parsed budget. Fields are private so that every budget went through [`parse_budgets`]:
/// a growth budget is then always whole-recording, which is the only way it has a meaning
/// (PIDs and TIDs of two recordings do not correspond).
#[derive(Clone, Debug, PartialEq)]
pub struct Budget {
    text: String,
    scope: Scope,
    metric: Metric,
    limit: Limit,
}

impl Budget {
    /// The budget as the user wrote it (trimmed).
    pub fn text(&self) -> &str {
        &self.text
    }
    pub fn scope(&self) -> Scope {
        self.scope
    }
    pub fn metric(&self) -> Metric {
        self.metric
    }
    pub fn limit(&self) -> Limit {
        self.limit
    }
    pub fn is_growth(&self) -> bool {
        self.limit.is_growth()
    }

    pub fn limit_text(&self) -> String {
        match self.limit {
            Limit::AtMost(value) => self.metric.format(value),
            Limit::GrowthPercent(percent) => format_percent(percent),
            Limit::GrowthBy(value) => format!("+{}", self.metric.format(value)),
        }
    }
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

const FORM: &str = "write [scope:]metric=value, comma-separated, e.g. max=200ms,count=0";
const METRICS: &str = "use max, count, total, p50, p90 or p99";
const SCOPES: &str = "use all, process or thread (e.g. process:max=200ms)";

/// Parses a `--fail-on` list (syntax in the module docs). `allow_growth` accepts `+N%`-style
/// growth budgets, which only `diff` can judge; elsewhere they are a usage error.
pub fn parse_budgets(text: &str, allow_growth: bool) -> Result<Vec<Budget>, UsageError> {
    if text.trim().is_empty() {
        return Err(UsageError(format!(
            "--fail-on '{text}': no budget given; {FORM}"
        )));
    }
    text.split(',')
        .enumerate()
        .map(|(index, item)| {
            let item = item.trim();
            if item.is_empty() {
                Err(UsageError(format!(
                    "--fail-on '{}': budget {} is empty (a stray comma?); {FORM}",
                    text.trim(),
                    index + 1
                )))
            } else {
                parse_one(item, allow_growth)
            }
        })
        .collect()
}

fn parse_one(item: &str, allow_growth: bool) -> Result<Budget, UsageError> {
    let error = |why: String| UsageError(format!("--fail-on '{item}': {why}"));
    let Some((key, value)) = item.split_once('=') else {
        return Err(error(format!("expected metric=value; {FORM}")));
    };
    let (key, value) = (key.trim(), value.trim());
    let (scope, metric_name) = match key.split_once(':') {
        Some((scope, metric)) => {
            let scope = scope.trim();
            let parsed = Scope::from_name(scope)
                .ok_or_else(|| error(format!("unknown scope '{scope}'; {SCOPES}")))?;
            (parsed, metric.trim())
        }
        None => (Scope::All, key),
    };
    if metric_name.is_empty() {
        return Err(error(format!("no metric before '='; {METRICS}")));
    }
    let metric = Metric::from_name(metric_name)
        .ok_or_else(|| error(format!("unknown metric '{metric_name}'; {METRICS}")))?;
    let example = if metric.is_duration() {
        format!("{}=200ms", metric.name())
    } else {
        "count=0".to_string()
    };
    if value.is_empty() {
        return Err(error(format!("no value after '='; e.g. {example}")));
    }
    let growth_help = format!(
        "growth limits (+N%, +N) compare two recordings and only apply to stallscope diff; \
         give a limit such as {example}"
    );
    let limit = if let Some(growth) = value.strip_prefix('+') {
        if !allow_growth {
            return Err(error(growth_help));
        }
        if scope != Scope::All {
            return Err(error(format!(
                "growth limits compare whole recordings (process and thread ids differ between \
                 runs); drop the scope: {}={value}",
                metric.name()
            )));
        }
        let growth = growth.trim();
        if let Some(percent) = growth.strip_suffix('%') {
            let percent = percent.trim();
            match percent.parse::<f64>() {
                Ok(p) if p.is_finite() && p >= 0.0 => Limit::GrowthPercent(p),
                _ => {
                    return Err(error(format!(
                        "'{percent}' is not a percentage; e.g. {}=+20%",
                        metric.name()
                    )));
                }
            }
        } else {
            Limit::GrowthBy(parse_amount(metric, growth).map_err(|why| {
                error(format!(
                    "{why}; a growth limit is +N% or {}",
                    if metric.is_duration() {
                        format!("+<duration> (e.g. {}=+10ms)", metric.name())
                    } else {
                        "+N stalls (e.g. count=+2)".to_string()
                    }
                ))
            })?)
        }
    } else if value.ends_with('%') {
        return Err(error(if allow_growth {
            format!(
                "a percentage is a growth limit and needs a '+': {}=+{value}",
                metric.name()
            )
        } else {
            growth_help
        }));
    } else if value.starts_with('-') {
        return Err(error(format!("a limit cannot be negative; e.g. {example}")));
    } else {
        Limit::AtMost(
            parse_amount(metric, value).map_err(|why| error(format!("{why}; e.g. {example}")))?,
        )
    };
    Ok(Budget {
        text: item.to_string(),
        scope,
        metric,
        limit,
    })
}

/// A count or a duration, per the metric. A bare `0` is accepted for durations: it cannot be
/// misread whatever the unit, unlike the bare numbers `parse_duration_ns` refuses.
fn parse_amount(metric: Metric, text: &str) -> Result<u64, String> {
    if metric.is_duration() {
        if !text.is_empty() && text.bytes().all(|b| b == b'0') {
            return Ok(0);
        }
        parse_duration_ns(text)
    } else if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse::<u64>()
            .map_err(|_| format!("'{text}' is too large"))
    } else {
        Err(format!(
            "count takes a whole number of stalls, not '{text}'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

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
}

#[cfg(test)]
mod proptests {
    //! Property tests of `--fail-on` parsing: any text gives budgets or a one-line usage error,
    //! never a panic; generated valid budgets parse to what they say and survive a round trip
    //! through their Display.

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
