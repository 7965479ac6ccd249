//! The recording as data: the `stalls.json` schema of DESIGN.md ([`Recording`] and the records
//! it holds, [`Frame`], [`Verdict`]), the names of a recording's files, and the questions every
//! output asks of a stall (its dominant stack, its cause in words, its top frames). A leaf: it
//! imports nothing of the crate but the other leaves, so every layer can use it.
//!
//! The schema's closed sets of values (a stall's `rule`, a stack's `kind`) are enums with the
//! names stalls.json has always used, so a renderer matches on variants, not on strings.

use std::{
    fmt::{self, Write as _},
    sync::Arc,
};

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FrameKind {
    Python,
    Native,
    Kernel,
    Jit,
    /// A JavaScript function read from V8's heap (see `stacks/v8/`).
    Js,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Frame {
    /// Shared (`Arc<str>`): the same names repeat across a recording's stacks, and a kept
    /// stall's frames are clones of the resolver's (see `analysis::session::Names`).
    pub function: Arc<str>,
    pub file: Option<Arc<str>>,
    pub line: Option<u32>,
    /// 1-based column of the position in `line` (JavaScript frames read at their position);
    /// absent in recordings made before it existed and where unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<u32>,
    pub module: Option<Arc<str>>,
    pub kind: FrameKind,
}

/// Which rule made a stall (`rule` in stalls.json).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StallRule {
    /// A loop iteration past the threshold.
    Iteration,
    /// A run past the threshold on a thread with no wait point.
    Run,
}

/// What kind of time a stack stands for (`kind` of a stack in stalls.json). The order is the
/// timeline's (stacks of a stall sort by it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StackKind {
    /// Running: on-CPU samples.
    OnCpu,
    /// Blocked (off-CPU), in a syscall or not.
    OffCpu,
    /// Runnable, waiting for a CPU.
    Runqueue,
    /// Blocked on a lock (a futex) that another thread of the process held.
    Lock,
}

impl StackKind {
    /// The name stalls.json and trace.json use.
    pub fn as_str(self) -> &'static str {
        match self {
            StackKind::OnCpu => "on_cpu",
            StackKind::OffCpu => "off_cpu",
            StackKind::Runqueue => "runqueue",
            StackKind::Lock => "lock",
        }
    }
}

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Recording {
    pub version: u32,
    pub threshold_ns: u64,
    pub recorded_ns: u64,
    pub start_ns: u64,
    pub end_ns: u64,
    pub sample_freq_hz: u64,
    /// Events the kernel could not deliver (ring buffer full), from per-CPU sequence gaps.
    pub lost_events: u64,
    pub drops: Drops,
    pub processes: Vec<ProcessRecord>,
    pub threads: Vec<ThreadRecord>,
    pub stalls: Vec<StallRecord>,
    /// Off-CPU time of every followed thread, by stack (offcputime-style).
    pub offcpu: Vec<OffCpuRecord>,
    /// Off-CPU spans, runqueue waits and samples of followed threads, in time order, for the
    /// timeline view (trace.json). Bounded: see `spans_dropped`.
    #[serde(default)]
    pub spans: Vec<SpanRecord>,
    #[serde(default)]
    pub spans_dropped: u64,
    /// How user stacks were unwound (copied stack bytes, DWARF CFI).
    #[serde(default)]
    pub unwind: UnwindReport,
    /// CPython interpreters found and the cost and completeness of reading their frames.
    #[serde(default)]
    pub python: PythonReport,
    /// Node processes whose JavaScript frames were read from V8's metadata, and at what cost.
    #[serde(default)]
    pub javascript: JsReport,
    /// One-line advice on getting better results (e.g. how to name JIT frames).
    #[serde(default)]
    pub hints: Vec<String>,
    /// (pid, tid) of threads blocked in a wait point when recording began.
    #[serde(default)]
    pub waiting_at_start: Vec<(u32, u32)>,
    /// Threads seen from their creation, from then to their first wait point (a shim exec'ing
    /// the interpreter, its imports): start-up, not stalls.
    #[serde(default)]
    pub startups: Vec<StartupRecord>,
    /// What the kernel recorded on could not do (e.g. full Python stacks before 5.17).
    #[serde(default)]
    pub kernel_limits: Vec<String>,
    /// How the CPUs' events were put in time order, and what did not fit.
    #[serde(default)]
    pub reorder: ReorderReport,
    pub verdict: Verdict,
}

/// The reorder stage between the ring buffer and the timeline (module `reorder`), and the
/// timeline's transitions that could not happen with a complete, ordered stream.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReorderReport {
    /// Events are held until no older one can come, at most this long.
    pub window_ns: u64,
    /// Events older than one already handed to the timeline (later than the window): handled
    /// out of order, and the stalls they touch say so (`late_events`).
    pub late_events: u64,
    /// Events put back in time order (they arrived after a newer event of another CPU).
    pub reordered: u64,
    /// Events handed on before their time because the stage was full (bounded memory).
    pub released_early: u64,
    pub max_held: u64,
    /// Switch-ins or switch-outs the timeline did not see (lost or late): each left its
    /// interval unaccounted in the stall it fell in.
    pub missed_switches: u64,
    /// Switch-ins the kernel's tracepoint never reported (the task before them is one the
    /// kernel does not trace) but the kernel side timed from the thread's own scheduler
    /// accounting: put back in place, nothing left unaccounted (README, Limits).
    #[serde(default)]
    pub untraced_switch_ins: u64,
    /// Stalls whose breakdown did not add up by a fault of the timeline (should be 0).
    pub breakdown_mismatches: u64,
}

/// A stall's breakdown adds up when on-CPU + blocked + runqueue is within this of its duration.
pub const ADDS_UP_NS: u64 = 1_000_000;

/// What a timeline span stands for (`kind` of a span in stalls.json, `cat` in trace.json).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpanKind {
    /// Blocked (off-CPU).
    OffCpu,
    /// Runnable, waiting for a CPU.
    Runqueue,
    /// An on-CPU sample, where `end_ns == start_ns`.
    Sample,
    /// Blocked on a lock another thread held (the timeline marks none today; kept so every
    /// stack kind has its span kind).
    Lock,
}

impl SpanKind {
    /// The span kind for a timeline mark of this stack kind (an on-CPU one is a sample).
    pub fn of_stack(kind: StackKind) -> Self {
        match kind {
            StackKind::OnCpu => SpanKind::Sample,
            StackKind::OffCpu => SpanKind::OffCpu,
            StackKind::Runqueue => SpanKind::Runqueue,
            StackKind::Lock => SpanKind::Lock,
        }
    }

    /// The name stalls.json and trace.json use.
    pub fn as_str(self) -> &'static str {
        match self {
            SpanKind::OffCpu => "off_cpu",
            SpanKind::Runqueue => "runqueue",
            SpanKind::Sample => "sample",
            SpanKind::Lock => "lock",
        }
    }
}

/// One span on a thread's timeline track.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SpanRecord {
    pub pid: u32,
    pub tid: u32,
    pub kind: SpanKind,
    pub start_ns: u64,
    pub end_ns: u64,
    pub syscall: Option<String>,
    /// Innermost user function, or kernel function when there is no user frame.
    pub label: String,
}

/// Cost and completeness of user-stack unwinding, for the bench and for trust in the frames.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct UnwindReport {
    /// Stack copies unwound.
    pub stacks: u64,
    pub frames: u64,
    /// Unwinds that stopped before reaching the thread's entry (bytes not copied, no unwind info).
    pub truncated: u64,
    /// Stack bytes copied by the kernel, summed.
    pub bytes_copied: u64,
    /// Time spent unwinding in the agent, summed.
    pub unwind_ns: u64,
    pub files_parsed: u64,
    /// ELF files whose unwind tables could not be parsed (corrupt, unreadable, not ELF).
    pub files_failed: u64,
    /// Addresses blazesym failed on (a corrupt symbol table or DWARF): named by offset.
    #[serde(default)]
    pub symbol_failures: u64,
    /// Stacks the kernel found unchanged since the thread's previous copy (not copied again).
    #[serde(default)]
    pub repeated: u64,
    /// Copies whose unwind was reused: the same registers and the same stack words read as a
    /// copy unwound before (counted in `stacks` too).
    #[serde(default)]
    pub reused: u64,
}

/// The CPython interpreters seen, and how their frames were read.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PythonReport {
    pub interpreters: Vec<PythonInterpreterRecord>,
    /// Python stacks read by the kernel side.
    pub stacks: u64,
    pub frames: u64,
    /// Stacks cut at the walk's depth limit (the outermost frames are missing).
    pub truncated: u64,
    /// Frames whose code object could not be read (freed meanwhile, or garbage): shown as
    /// `[unreadable]`.
    pub unreadable_frames: u64,
    /// Time spent decoding frames in the agent, summed.
    pub decode_ns: u64,
}

/// The V8 runtimes seen (Node) and how their JavaScript frames were read.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct JsReport {
    pub runtimes: Vec<JsRuntimeRecord>,
    /// JavaScript frames named.
    pub frames: u64,
    /// Frames in V8 code whose function could not be read (left as native frames).
    pub unreadable_frames: u64,
    /// Time spent reading JavaScript frames in the agent, summed.
    pub read_ns: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct JsRuntimeRecord {
    pub pid: u32,
    /// V8's version, "12.4.254".
    pub v8_version: String,
    /// The file holding V8 (`node` or `libnode.so`).
    pub binary: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PythonInterpreterRecord {
    pub pid: u32,
    /// "3.12".
    pub version: String,
    /// "3.14.10" when the binary says (3.11+), else as `version`.
    #[serde(default)]
    pub release: String,
    /// The file holding `_PyRuntime` (libpython or the python executable).
    pub binary: String,
    /// How its frames were read: "_Py_DebugOffsets (3.14 table, version 3.14.10)", "table of
    /// stallscope (3.12)", or "not read: <why>".
    #[serde(default)]
    pub frames: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Drops {
    pub ringbuf_full: u64,
    pub kernel_stack: u64,
    pub user_stack: u64,
    pub follow_map_full: u64,
    /// Iterations thrown away because their wait-point entry was lost.
    pub iterations_discarded: u64,
    /// Distinct stacks past the per-stall or off-CPU limits.
    pub stacks_dropped: u64,
    /// Events not saved to events.bin (its size limit): `report` re-renders only what was saved.
    #[serde(default)]
    pub events_not_saved: u64,
    /// The kernel's "same stack as the last copy" records for a thread whose last copy the
    /// agent does not have (that copy was lost, or the thread is past the ones remembered): the
    /// event they belong to has no user stack.
    #[serde(default)]
    pub repeats_without_copy: u64,
    /// Late capture: blocks in a syscall long enough for user stacks whose stacks never came
    /// (their record was lost, or the thread died in the call): counted with their kernel
    /// stack only.
    #[serde(default)]
    pub late_stacks_missing: u64,
}

impl Drops {
    /// User stacks lost, in the kernel (stack map) or for want of the copy a repeat refers to.
    pub fn user_stacks_lost(&self) -> u64 {
        self.user_stack + self.repeats_without_copy + self.late_stacks_missing
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessRecord {
    pub pid: u32,
    pub comm: String,
    pub exe: String,
    pub started_ns: Option<u64>,
    pub exited_ns: Option<u64>,
    /// How it ended: the status it passed to exit, or the signal that killed it.
    #[serde(default)]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub exit_signal: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ThreadRecord {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    #[serde(rename = "loop")]
    pub is_loop: bool,
    pub iterations: u64,
    /// Its complete iterations in time order, for the timeline: one per iteration while there
    /// are few, else neighbours merged into buckets (at most 1,024 per thread).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub iteration_marks: Vec<IterationBucketRecord>,
}

/// A thread's start-up: from its creation to its first wait point.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StartupRecord {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub start_ns: u64,
    pub end_ns: u64,
}

/// Iterations of a loop thread that started close together (one, unless there were many).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct IterationBucketRecord {
    pub start_ns: u64,
    pub end_ns: u64,
    pub count: u64,
    /// Sum of their durations.
    pub busy_ns: u64,
    pub longest_ns: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StallRecord {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub start_ns: u64,
    pub end_ns: u64,
    pub duration_ns: u64,
    pub on_cpu_ns: u64,
    pub off_cpu_ns: u64,
    pub runqueue_ns: u64,
    /// A loop iteration past the threshold, or a run of a thread with no wait point.
    pub rule: StallRule,
    /// Began before recording or was still open at its end: the duration is a lower bound.
    pub partial: bool,
    /// Events were lost during it: the breakdown may be incomplete.
    pub data_lost: bool,
    /// Time of the stall the breakdown could not attribute:
    /// `on_cpu_ns + off_cpu_ns + runqueue_ns + unaccounted_ns == duration_ns`.
    #[serde(default)]
    pub unaccounted_ns: u64,
    /// `unaccounted_ns` is at most [`ADDS_UP_NS`] (1 ms). (Recordings made before this field
    /// did not check: read as true.)
    #[serde(default = "yes")]
    pub adds_up: bool,
    /// Why time is unaccounted (present when `unaccounted_ns` > 0): events lost, events later
    /// than the reorder window, switches not seen, a partial stall.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unaccounted_why: Option<String>,
    /// Events of its thread that came later than the reorder window while it ran.
    #[serde(default)]
    pub late_events: u32,
    /// Switch-ins or switch-outs of its thread that were not seen while it ran.
    #[serde(default)]
    pub missed_switches: u32,
    /// The asyncio task running on the loop during the stall (Python).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskInfo>,
    /// Its impact: how many events were ready when the loop came back to its wait point right
    /// after it (the wait call's return value, at most its maxevents; 0 when the wait blocked).
    /// Absent when not known (a wait point that returns no count, such as a runtime's futex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_events: Option<u64>,
    pub stacks: Vec<StackRecord>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StackRecord {
    pub kind: StackKind,
    pub weight_ns: u64,
    pub count: u32,
    pub syscall: Option<String>,
    /// Innermost first.
    pub frames: Vec<Frame>,
    /// Who ended the wait (off-CPU and lock stacks): the thread and its stack at the wake-up.
    #[serde(default)]
    pub waker: Option<WakerRecord>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct WakerRecord {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    /// Innermost first (kernel, then user).
    pub frames: Vec<Frame>,
}

impl WakerRecord {
    /// "tid 4312 (writer) write_after_delay": who, and the code that woke.
    pub fn describe(&self) -> String {
        if self.tid == 0 {
            return self.comm.clone();
        }
        // The program's own code, past libc's wrappers (write, the mutex unlock path).
        let is_libc = |f: &&Frame| {
            f.module
                .as_deref()
                .is_some_and(|m| m.contains("/libc.so") || m.contains("/libpthread"))
        };
        let user = || self.frames.iter().filter(|f| f.kind != FrameKind::Kernel);
        let place = user()
            .find(|f| !is_libc(f))
            .or_else(|| user().next())
            .map(|f| format!(" {}", f.function))
            .unwrap_or_default();
        format!("tid {} ({}){place}", self.tid, self.comm)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct OffCpuRecord {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub weight_ns: u64,
    pub syscall: Option<String>,
    /// Shared between the records of one stack (threads, syscalls and wakers apart): a busy
    /// recording has thousands of records and a Python stack is ~70 frames.
    pub frames: std::sync::Arc<[Frame]>,
    #[serde(default)]
    pub waker: Option<WakerRecord>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Verdict {
    pub budgets: Vec<BudgetResult>,
    pub passed: bool,
}

/// Exit code of a command whose budgets were exceeded (DESIGN.md).
pub const BUDGET_EXCEEDED_EXIT: u8 = 3;

impl Verdict {
    /// The exit code the verdict asks for: 0 passed, [`BUDGET_EXCEEDED_EXIT`] otherwise. The one
    /// place that says so, for `record`, `ci`, `report` and `diff`.
    pub fn exit_code(&self) -> u8 {
        if self.passed { 0 } else { BUDGET_EXCEEDED_EXIT }
    }
}

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

impl BudgetResult {
    /// One line for people: "longest stall = 212.3 ms, limit 200.0 ms".
    pub fn describe(&self) -> String {
        format!("{} = {}, limit {}", self.measured, self.actual, self.limit)
    }
}

impl fmt::Display for BudgetResult {
    /// "FAIL max=200ms (all): longest stall = 212.3 ms, limit 200.0 ms".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = if self.passed { "ok  " } else { "FAIL" };
        write!(
            f,
            "{status} {} ({}): {}",
            self.budget,
            self.subject,
            self.describe()
        )
    }
}

/// The asyncio task a stack ran in: its coroutine (the outermost `async def` frame) and, when
/// it could be read, the Task's name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct TaskInfo {
    pub name: Option<String>,
    pub coroutine: String,
    /// The Tasks awaiting this one, nearest first (3.14+: each awaits the one before it), as
    /// `python -m asyncio pstree` shows them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub awaited_by: Vec<TaskRef>,
}

/// A Task by its name and its coroutine's qualname.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct TaskRef {
    pub name: Option<String>,
    pub coroutine: String,
}

/// Files written for each recording.
pub const STALLS_JSON: &str = "stalls.json";
pub const STALLS_FOLDED: &str = "stalls.folded";
pub const FLAMEGRAPH_SVG: &str = "flamegraph.svg";
pub const OFFCPU_FOLDED: &str = "offcpu.folded";
pub const OFFCPU_SVG: &str = "offcpu.svg";
pub const PROFILE_PB_GZ: &str = "profile.pb.gz";
pub const TRACE_JSON: &str = "trace.json";
pub const SUMMARY_MD: &str = "summary.md";
pub const JUNIT_XML: &str = "junit.xml";
pub const REPORT_HTML: &str = "report.html";

impl StackRecord {
    /// Why this time was spent, in words: " [blocked in read()], woken by tid 4312 (writer)
    /// write_after_delay", " [waiting for a lock], held by ...", " [waiting for a CPU]".
    pub fn cause(&self) -> String {
        let waker = self
            .waker
            .as_ref()
            .map(|w| w.describe())
            .unwrap_or_default();
        match (self.kind, &self.syscall) {
            (StackKind::Lock, _) => format!(" [waiting for a lock] released by {waker}"),
            (StackKind::OffCpu, syscall) => {
                let what = syscall.as_ref().map_or_else(
                    || "[blocked]".to_string(),
                    |s| format!("[blocked in {s}()]"),
                );
                if waker.is_empty() {
                    format!(" {what}")
                } else {
                    format!(" {what}, woken by {waker}")
                }
            }
            (StackKind::Runqueue, _) => {
                " [waiting for a CPU: runnable but not running]".to_string()
            }
            _ => String::new(),
        }
    }
}

fn yes() -> bool {
    true
}

impl StallRecord {
    /// The stack that explains most of the stall: the heaviest one.
    pub fn dominant_stack(&self) -> Option<&StackRecord> {
        self.stacks.iter().max_by_key(|s| s.weight_ns)
    }

    /// The top user frames of the heaviest stack, innermost first, joined by `separator`.
    pub fn top_frames_text(&self, separator: &str) -> String {
        self.dominant_stack()
            .map(|s| {
                top_user_frames(s, 3)
                    .into_iter()
                    .map(frame_text)
                    .collect::<Vec<_>>()
                    .join(separator)
            })
            .unwrap_or_default()
    }

    /// What a reader must know before trusting the duration, for summaries (empty if nothing).
    pub fn caveat(&self) -> &'static str {
        match (self.data_lost, self.partial, self.adds_up) {
            (true, _, _) => " (incomplete: events lost, duration may be wrong)",
            (false, true, _) => " (partial: began before or outlived the recording)",
            (false, false, false) => " (breakdown incomplete: see unaccounted time)",
            _ => "",
        }
    }

    /// The stack the live line and summaries name, with its top named frames: the heaviest
    /// stack that has a named frame (user or Python frames first, kernel frames otherwise).
    pub fn headline(&self) -> Option<(&StackRecord, Vec<&Frame>)> {
        let mut stacks: Vec<&StackRecord> = self.stacks.iter().collect();
        stacks.sort_by_key(|s| std::cmp::Reverse(s.weight_ns));
        stacks.into_iter().find_map(|stack| {
            let named: Vec<&Frame> = top_user_frames(stack, usize::MAX)
                .into_iter()
                .filter(|f| is_named(f))
                .take(3)
                .collect();
            let named = if named.is_empty() {
                stack
                    .frames
                    .iter()
                    .filter(|f| f.kind == FrameKind::Kernel && is_named(f))
                    .take(3)
                    .collect()
            } else {
                named
            };
            (!named.is_empty()).then_some((stack, named))
        })
    }

    /// Why the stall has no named frames to show (when [`Self::headline`] is None).
    pub fn no_frames_why(&self) -> &'static str {
        if self.stacks.is_empty() {
            "no stack was taken inside it (no sample or switch-out with a stack landed in it)"
        } else if self.stacks.iter().all(|s| s.frames.is_empty()) {
            "its stacks could not be read (stack ids lost or not resolved)"
        } else {
            "its frames are unnamed (stripped code, or JIT code without a perf map)"
        }
    }

    /// Which kind of time dominates: "on-CPU", "blocked" or "runqueue".
    pub fn dominant_kind(&self) -> &'static str {
        let max = self.on_cpu_ns.max(self.off_cpu_ns).max(self.runqueue_ns);
        if max == self.on_cpu_ns {
            "on-CPU"
        } else if max == self.off_cpu_ns {
            "blocked"
        } else {
            "runqueue"
        }
    }
}

/// The user frames that matter first: innermost first, kernel frames skipped.
/// The innermost frames a person should read first: the program's own code. In a stack with
/// Python frames those are the Python frames (the interpreter's C code under a regex or a
/// sleep says less than the function that called it).
/// Whether a frame has a name (not an address in a module, or an unknown address).
pub fn is_named(frame: &Frame) -> bool {
    !frame.function.is_empty()
        && !frame.function.starts_with("[unknown]")
        && !frame.function.contains("+0x")
}

pub fn top_user_frames(stack: &StackRecord, count: usize) -> Vec<&Frame> {
    let python = stack.frames.iter().any(|f| f.kind == FrameKind::Python);
    stack
        .frames
        .iter()
        .filter(|f| {
            if python {
                f.kind == FrameKind::Python
            } else {
                f.kind != FrameKind::Kernel
            }
        })
        .take(count)
        .collect()
}

/// `line` or `line:column` (1-based both) where the frame has them.
pub fn position_text(frame: &Frame) -> Option<String> {
    match (frame.line, frame.column) {
        (Some(line), Some(column)) => Some(format!("{line}:{column}")),
        (Some(line), None) => Some(line.to_string()),
        _ => None,
    }
}

pub fn frame_text(frame: &Frame) -> String {
    match (&frame.file, position_text(frame)) {
        (Some(file), Some(line)) => format!("{} ({}:{line})", frame.function, short_path(file)),
        (Some(file), None) if frame.kind == FrameKind::Js => {
            format!("{} ({})", frame.function, short_path(file))
        }
        _ => frame.function.to_string(),
    }
}

/// The file name of a path, for frames shown to people.
pub fn short_path(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// "asyncio task Task-3 (coroutine serve_client)", then ", awaited by task X (coroutine Y) <
/// task Z (coroutine W)" when other Tasks await it (nearest first).
pub fn task_text(task: &TaskInfo) -> String {
    let mut text = format!(
        "asyncio task {} (coroutine {})",
        task.name.as_deref().unwrap_or("?"),
        task.coroutine
    );
    if !task.awaited_by.is_empty() {
        let chain: Vec<String> = task
            .awaited_by
            .iter()
            .map(|t| {
                format!(
                    "task {} (coroutine {})",
                    t.name.as_deref().unwrap_or("?"),
                    t.coroutine
                )
            })
            .collect();
        let _ = write!(text, ", awaited by {}", chain.join(" < "));
    }
    text
}

/// A recording with one stall (a burn and a short sleep), shared by the tests of the outputs.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    pub fn frame(function: &str, kind: FrameKind) -> Frame {
        Frame {
            column: None,
            function: function.into(),
            file: None,
            line: None,
            module: None,
            kind,
        }
    }

    /// A loop iteration of `duration_ns` from time 0, all of it on CPU, adding up, no stacks:
    /// tests change what they look at with struct-update syntax.
    pub fn stall(pid: u32, tid: u32, duration_ns: u64) -> StallRecord {
        StallRecord {
            pid,
            tid,
            comm: "server".into(),
            start_ns: 0,
            end_ns: duration_ns,
            duration_ns,
            on_cpu_ns: duration_ns,
            off_cpu_ns: 0,
            runqueue_ns: 0,
            rule: StallRule::Iteration,
            partial: false,
            data_lost: false,
            unaccounted_ns: 0,
            adds_up: true,
            unaccounted_why: None,
            late_events: 0,
            missed_switches: 0,
            task: None,
            ready_events: None,
            stacks: Vec::new(),
        }
    }

    pub fn recording() -> Recording {
        let stall = StallRecord {
            on_cpu_ns: 290_000_000,
            runqueue_ns: 10_000_000,
            stacks: vec![
                StackRecord {
                    kind: StackKind::OnCpu,
                    weight_ns: 200_000_000,
                    count: 20,
                    syscall: None,
                    frames: vec![
                        frame("burn_cpu", FrameKind::Native),
                        frame("main", FrameKind::Native),
                    ],
                    waker: None,
                },
                StackRecord {
                    kind: StackKind::OffCpu,
                    weight_ns: 5_000_000,
                    count: 1,
                    syscall: Some("nanosleep".into()),
                    frames: vec![
                        frame("schedule", FrameKind::Kernel),
                        frame("nap", FrameKind::Native),
                        frame("main", FrameKind::Native),
                    ],
                    waker: None,
                },
            ],
            ..stall(10, 11, 300_000_000)
        };
        Recording {
            version: SCHEMA_VERSION,
            threshold_ns: 100_000_000,
            recorded_ns: 1_000_000_000,
            start_ns: 0,
            end_ns: 1_000_000_000,
            sample_freq_hz: 99,
            lost_events: 0,
            drops: Drops::default(),
            processes: vec![ProcessRecord {
                pid: 10,
                comm: "server".into(),
                exe: "/bin/server".into(),
                started_ns: None,
                exited_ns: None,
                exit_code: None,
                exit_signal: None,
            }],
            threads: vec![],
            stalls: vec![stall],
            offcpu: vec![],
            spans: vec![],
            spans_dropped: 0,
            unwind: UnwindReport::default(),
            python: PythonReport::default(),
            javascript: JsReport::default(),
            hints: vec![],
            waiting_at_start: vec![],
            startups: vec![],
            kernel_limits: vec![],
            reorder: Default::default(),
            verdict: Verdict {
                budgets: vec![],
                passed: true,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{fixtures::recording, *};

    /// Issue #18: "exit 3 unless passed" was written in three commands; it is the verdict's.
    #[test]
    fn exit_3_unless_passed_is_one_rule() {
        let mut verdict = Verdict {
            budgets: vec![],
            passed: true,
        };
        assert_eq!(verdict.exit_code(), 0);
        verdict.passed = false;
        assert_eq!(verdict.exit_code(), 3);
        assert_eq!(BUDGET_EXCEEDED_EXIT, 3);
    }

    /// A frame's column is optional in stalls.json: absent when unknown (and in recordings
    /// made before it existed, which still load), shown as `file:line:column` when known.
    #[test]
    fn a_frame_column_is_optional_and_shown_after_the_line() {
        let old = r#"{"function":"f","file":"/srv/app.js","line":3,"module":null,"kind":"js"}"#;
        let mut frame: Frame = serde_json::from_str(old).expect("a frame without column");
        assert_eq!(frame.column, None);
        assert!(
            !serde_json::to_string(&frame)
                .expect("json")
                .contains("column")
        );
        assert_eq!(frame_text(&frame), "f (app.js:3)");
        frame.column = Some(18);
        let json = serde_json::to_value(&frame).expect("json");
        assert_eq!(json["column"], 18);
        assert_eq!(frame_text(&frame), "f (app.js:3:18)");
        let back: Frame = serde_json::from_value(json).expect("round trip");
        assert_eq!(back, frame);
    }

    /// The schema's closed sets are enums with the names stalls.json has always had.
    #[test]
    fn rule_and_stack_kind_keep_their_json_names() {
        let json = serde_json::to_value(recording()).expect("json");
        assert_eq!(json["stalls"][0]["rule"], "iteration");
        assert_eq!(json["stalls"][0]["stacks"][0]["kind"], "on_cpu");
        assert_eq!(json["stalls"][0]["stacks"][1]["kind"], "off_cpu");
        for (kind, name) in [
            (StackKind::OnCpu, "on_cpu"),
            (StackKind::OffCpu, "off_cpu"),
            (StackKind::Runqueue, "runqueue"),
            (StackKind::Lock, "lock"),
        ] {
            assert_eq!(serde_json::to_value(kind).expect("json"), name);
            assert_eq!(kind.as_str(), name);
        }
        assert_eq!(serde_json::to_value(StallRule::Run).expect("json"), "run");
        assert!(serde_json::from_value::<StackKind>(serde_json::json!("sideways")).is_err());
    }

    #[test]
    fn json_round_trips_with_the_documented_names() {
        let rec = recording();
        let json = serde_json::to_value(&rec).expect("json");
        assert_eq!(json["version"], 1);
        assert_eq!(
            json["stalls"][0]["stacks"][0]["frames"][0]["kind"],
            "native"
        );
        assert_eq!(
            json["stalls"][0]["stacks"][1]["frames"][0]["kind"],
            "kernel"
        );
        let back: Recording = serde_json::from_value(json).expect("parses back");
        assert_eq!(back, rec);
    }
}
