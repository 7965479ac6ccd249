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
