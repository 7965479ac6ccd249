//! `--fail-on` budgets: parsing, and judging a recording against them (the CI verdict).
//! (Being written; see the module docs once complete.)

use serde::{Deserialize, Serialize};

/// The outcome of one budget, as stored in stalls.json under `verdict.budgets`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct BudgetResult {
    /// The budget as the user wrote it, e.g. `max=200ms` or `thread:p99=50ms`.
    pub budget: String,
    /// What was measured, e.g. "longest stall" or "p99 of stall durations".
    pub measured: String,
    /// Where: "all", or "pid 123", or "pid 123 tid 124".
    pub subject: String,
    /// The limit and the actual value, in the budget's unit, for people.
    pub limit: String,
    pub actual: String,
    pub passed: bool,
}
