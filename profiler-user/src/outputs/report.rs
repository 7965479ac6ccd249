//! The recording as data ([`Recording`], the `stalls.json` schema of DESIGN.md) and every output
//! rendered from it: JSON, folded stacks, flamegraph SVGs, the live line and the text summary.
//! Pure apart from [`write_outputs`], which writes the files.

use std::{fmt::Write as _, fs, io, path::Path};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::{
    cli::Formats,
    sanitize,
    stacks::symbolize::{Frame, FrameKind},
};

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
    /// Stalls whose breakdown did not add up by a fault of the timeline (should be 0).
    pub breakdown_mismatches: u64,
}

/// A stall's breakdown adds up when on-CPU + blocked + runqueue is within this of its duration.
pub const ADDS_UP_NS: u64 = 1_000_000;

/// One span on a thread's timeline track.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SpanRecord {
    pub pid: u32,
    pub tid: u32,
    /// "off_cpu" (blocked), "runqueue" (waiting for a CPU) or "sample" (an on-CPU sample,
    /// where `end_ns == start_ns`).
    pub kind: String,
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
}

impl Drops {
    /// User stacks lost, in the kernel (stack map) or for want of the copy a repeat refers to.
    pub fn user_stacks_lost(&self) -> u64 {
        self.user_stack + self.repeats_without_copy
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

/// One line on start-up, said once: the first thread's (the command's, under `record --`),
/// and how many more there were.
pub fn startup_line(recording: &Recording) -> Option<String> {
    let first = recording.startups.first()?;
    let more = match recording.startups.len() - 1 {
        0 => String::new(),
        1 => " (and 1 more thread's)".to_string(),
        n => format!(" (and {n} more threads')"),
    };
    Some(format!(
        "start-up: {} (pid {} tid {}) took {} to its first wait point, not counted as a stall{more}",
        first.comm,
        first.pid,
        first.tid,
        format_ms(first.end_ns.saturating_sub(first.start_ns))
    ))
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
    /// "iteration" (a loop iteration) or "run" (a thread with no wait point held the CPU).
    pub rule: String,
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
    pub task: Option<crate::stacks::python::TaskInfo>,
    /// Its impact: how many events were ready when the loop came back to its wait point right
    /// after it (the wait call's return value, at most its maxevents; 0 when the wait blocked).
    /// Absent when not known (a wait point that returns no count, such as a runtime's futex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_events: Option<u64>,
    pub stacks: Vec<StackRecord>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct StackRecord {
    pub kind: String,
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
    pub frames: Vec<Frame>,
    #[serde(default)]
    pub waker: Option<WakerRecord>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Verdict {
    pub budgets: Vec<crate::analysis::budget::BudgetResult>,
    pub passed: bool,
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
        match (self.kind.as_str(), &self.syscall) {
            ("lock", _) => format!(" [waiting for a lock] released by {waker}"),
            ("off_cpu", syscall) => {
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
            ("runqueue", _) => " [waiting for a CPU: runnable but not running]".to_string(),
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

/// Label of a frame in folded stacks. inferno colours `_[k]` frames as kernel and `_[j]` as JIT.
fn frame_label(frame: &Frame) -> String {
    let name = frame.function.replace(';', ":");
    match frame.kind {
        FrameKind::Kernel => format!("{name}_[k]"),
        FrameKind::Jit => format!("{name}_[j]"),
        FrameKind::Python | FrameKind::Js => match (&frame.file, frame.line) {
            (Some(file), Some(line)) => format!("{name} ({}:{line})", short_path(file)),
            (Some(file), None) if frame.kind == FrameKind::Js => {
                format!("{name} ({})", short_path(file))
            }
            _ => name,
        },
        FrameKind::Native => name,
    }
}

fn short_path(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The leaf marker saying what kind of waiting a stack is (none for on-CPU time), so the code
/// above it merges across kinds while the leaf tells them apart.
fn kind_marker(kind: &str, syscall: Option<&str>) -> Option<String> {
    match kind {
        "off_cpu" => Some(match syscall {
            Some(syscall) => format!("[blocked in {syscall}]"),
            None => "[blocked]".into(),
        }),
        "runqueue" => Some("[waiting for a CPU]".into()),
        "lock" => Some("[waiting for a lock]".into()),
        _ => None,
    }
}

/// A folded line; with a waker, offwaketime style: the sleeper's stack, `--`, then the waker's
/// stack from its innermost frame out, ending with the waking thread.
fn folded_line(
    process: &str,
    thread: &str,
    frames: &[Frame],
    marker: Option<String>,
    waker: Option<&WakerRecord>,
    weight_ns: u64,
) -> Option<String> {
    let weight_us = weight_ns / 1000;
    if weight_us == 0 {
        return None;
    }
    let mut parts = vec![process.replace(';', ":"), thread.replace(';', ":")];
    parts.extend(frames.iter().rev().map(frame_label));
    parts.extend(marker);
    if let Some(waker) = waker {
        parts.push("--".into());
        parts.extend(
            waker
                .frames
                .iter()
                .map(|f| format!("{}_[w]", f.function.replace(';', ":"))),
        );
        parts.push(format!(
            "woken by {} ({})_[w]",
            waker.comm.replace(';', ":"),
            waker.tid
        ));
    }
    Some(format!("{} {weight_us}", parts.join(";")))
}

fn process_label(recording: &Recording, pid: u32) -> String {
    let comm = recording
        .processes
        .iter()
        .find(|p| p.pid == pid)
        .map_or("?", |p| p.comm.as_str());
    format!("{comm} ({pid})")
}

/// Stall time, weighted in microseconds; root frame = process;thread.
pub fn stall_folded(recording: &Recording) -> Vec<String> {
    stall_folded_labelled(recording, true)
}

/// As [`stall_folded`], but process and thread are named without their ids, so that two
/// recordings of the same service (different PIDs) can be compared.
pub fn stall_folded_without_ids(recording: &Recording) -> Vec<String> {
    stall_folded_labelled(recording, false)
}

fn stall_folded_labelled(recording: &Recording, with_ids: bool) -> Vec<String> {
    let mut lines = Vec::new();
    for stall in &recording.stalls {
        let (process, thread) = if with_ids {
            (
                process_label(recording, stall.pid),
                format!("{} ({})", stall.comm, stall.tid),
            )
        } else {
            let process = recording
                .processes
                .iter()
                .find(|p| p.pid == stall.pid)
                .map_or_else(|| "?".to_string(), |p| p.comm.clone());
            (process, stall.comm.clone())
        };
        for stack in &stall.stacks {
            let marker = kind_marker(&stack.kind, stack.syscall.as_deref());
            // Python-first unless --native (module `headline`), as the live line reads.
            let frames: Vec<Frame> = crate::outputs::headline::view_frames(
                &stack.frames,
                crate::outputs::headline::did_work(&stack.kind),
                crate::outputs::headline::view(),
            )
            .into_iter()
            .cloned()
            .collect();
            lines.extend(folded_line(
                &process,
                &thread,
                &frames,
                marker,
                stack.waker.as_ref(),
                stack.weight_ns,
            ));
        }
    }
    merge_folded(lines)
}

/// Off-CPU time of every followed thread, weighted in microseconds.
pub fn offcpu_folded(recording: &Recording) -> Vec<String> {
    let lines = recording
        .offcpu
        .iter()
        .filter_map(|entry| {
            let process = process_label(recording, entry.pid);
            let thread = format!("{} ({})", entry.comm, entry.tid);
            let marker = kind_marker("off_cpu", entry.syscall.as_deref());
            folded_line(
                &process,
                &thread,
                &entry.frames,
                marker,
                entry.waker.as_ref(),
                entry.weight_ns,
            )
        })
        .collect();
    merge_folded(lines)
}

/// Sums identical stacks and sorts, as folded files conventionally are.
fn merge_folded(lines: Vec<String>) -> Vec<String> {
    let mut totals: std::collections::BTreeMap<String, u64> = Default::default();
    for line in lines {
        if let Some((stack, count)) = line.rsplit_once(' ') {
            *totals.entry(stack.to_string()).or_default() += count.parse::<u64>().unwrap_or(0);
        }
    }
    totals
        .into_iter()
        .map(|(stack, count)| format!("{stack} {count}"))
        .collect()
}

/// Renders folded lines as a flamegraph. An empty profile still gets a valid SVG that says so,
/// so a CI artifact link never points at nothing.
pub fn flamegraph_svg(lines: &[String], title: &str) -> Result<Vec<u8>> {
    if lines.is_empty() {
        return Ok(empty_svg(title).into_bytes());
    }
    let mut options = inferno::flamegraph::Options::default();
    options.title = title.to_string();
    options.count_name = "us".to_string();
    options.hash = true;
    let mut svg = Vec::new();
    inferno::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut svg)
        .context("rendering the flamegraph")?;
    Ok(svg)
}

fn empty_svg(title: &str) -> String {
    format!(
        r#"<?xml version="1.0" standalone="no"?>
<svg version="1.1" width="600" height="60" xmlns="http://www.w3.org/2000/svg"><text x="10" y="25" font-family="Verdana" font-size="14">{}</text><text x="10" y="48" font-family="Verdana" font-size="12">nothing recorded: no stack exceeded the threshold</text></svg>
"#,
        sanitize::xml(title)
    )
}

/// Writes stalls.json and the renderings `formats` asks for into `dir`; returns their paths.
pub fn write_outputs(dir: &Path, recording: &Recording, formats: &Formats) -> Result<Vec<String>> {
    let mut written = Vec::new();
    let mut write = |name: &str, bytes: &[u8]| -> Result<()> {
        let path = dir.join(name);
        fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        written.push(path.display().to_string());
        Ok(())
    };
    let json = serde_json::to_vec_pretty(recording).context("serializing stalls.json")?;
    write(STALLS_JSON, &json)?;
    let stalls = stall_folded(recording);
    let offcpu = offcpu_folded(recording);
    if formats.folded {
        write(STALLS_FOLDED, folded_text(&stalls).as_bytes())?;
        write(OFFCPU_FOLDED, folded_text(&offcpu).as_bytes())?;
    }
    if formats.svg {
        write(
            FLAMEGRAPH_SVG,
            &flamegraph_svg(&stalls, "stallscope: where stall time went")?,
        )?;
        write(
            OFFCPU_SVG,
            &flamegraph_svg(&offcpu, "stallscope: off-CPU time of followed threads")?,
        )?;
    }
    if formats.pprof {
        write(
            PROFILE_PB_GZ,
            &crate::outputs::pprof::profile_pb_gz(recording)?,
        )?;
    }
    if formats.trace {
        let trace = serde_json::to_vec(&crate::outputs::trace::trace_json(recording))
            .context("serializing trace.json")?;
        write(TRACE_JSON, &trace)?;
    }
    if formats.summary {
        write(SUMMARY_MD, summary_markdown(recording).as_bytes())?;
    }
    if formats.junit {
        let xml = crate::outputs::junit::junit_xml(
            &recording.verdict,
            "stallscope",
            recording.recorded_ns as f64 / 1e9,
        );
        write(JUNIT_XML, xml.as_bytes())?;
    }
    if formats.html {
        write(
            REPORT_HTML,
            crate::outputs::html::report_html(recording)?.as_bytes(),
        )?;
    }
    Ok(written)
}

/// Appends the markdown summary to `$GITHUB_STEP_SUMMARY` when running in GitHub Actions.
pub fn append_github_step_summary(recording: &Recording) -> Result<()> {
    let Some(path) = std::env::var_os("GITHUB_STEP_SUMMARY") else {
        return Ok(());
    };
    let mut file = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&path)
        .with_context(|| {
            format!(
                "opening $GITHUB_STEP_SUMMARY ({})",
                Path::new(&path).display()
            )
        })?;
    io::Write::write_all(&mut file, summary_markdown(recording).as_bytes())
        .context("appending to $GITHUB_STEP_SUMMARY")
}

/// The summary for people and CI job pages: verdict first, then the worst stalls.
pub fn summary_markdown(recording: &Recording) -> String {
    let mut md = String::new();
    let verdict = &recording.verdict;
    let stalls = &recording.stalls;
    let headline = if verdict.passed {
        "✅ stallscope: passed"
    } else {
        "❌ stallscope: budget exceeded"
    };
    let _ = writeln!(md, "## {headline}\n");
    if !verdict.budgets.is_empty() {
        let _ = writeln!(
            md,
            "| budget | where | measured | actual | limit | result |"
        );
        let _ = writeln!(md, "| --- | --- | --- | --- | --- | --- |");
        for b in &verdict.budgets {
            let _ = writeln!(
                md,
                "| `{}` | {} | {} | {} | {} | {} |",
                sanitize::markdown_code(&b.budget),
                sanitize::markdown_text(&b.subject),
                b.measured,
                b.actual,
                b.limit,
                if b.passed { "pass" } else { "**FAIL**" }
            );
        }
        let _ = writeln!(md);
    }
    let total: u64 = stalls.iter().map(|s| s.duration_ns).sum();
    let longest = stalls.iter().map(|s| s.duration_ns).max().unwrap_or(0);
    let _ = writeln!(
        md,
        "Recorded {} of {}: **{} stall(s)** over {} (longest {}, total {}).\n",
        format_ms(recording.recorded_ns),
        recording
            .processes
            .iter()
            .map(|p| format!("{} ({})", sanitize::markdown_text(&p.comm), p.pid))
            .collect::<Vec<_>>()
            .join(", "),
        stalls.len(),
        format_ms(recording.threshold_ns),
        format_ms(longest),
        format_ms(total),
    );
    if !stalls.is_empty() {
        let _ = writeln!(md, "| duration | thread | mostly | where | why |");
        let _ = writeln!(md, "| --- | --- | --- | --- | --- |");
        for stall in worst_stalls(recording, 10) {
            let headline = crate::outputs::headline::headline(stall);
            let place = headline
                .as_ref()
                .map(|h| h.place(" ← "))
                .unwrap_or_default();
            let mut why = match &headline {
                Some(h) if h.is_mixed() => "mixed: shares in where".to_string(),
                Some(h) => h.cause().to_string(),
                None => stall.no_frames_why().to_string(),
            };
            if let Some(task) = &stall.task {
                let _ = write!(why, "; in {}", task_text(task));
            }
            let _ = writeln!(
                md,
                "| {}{} | {} ({}/{}) | {} | {} | {} |",
                format_ms(stall.duration_ns),
                stall.caveat(),
                sanitize::markdown_text(&stall.comm),
                stall.pid,
                stall.tid,
                stall.dominant_kind(),
                sanitize::markdown_text(&place),
                sanitize::markdown_text(why.trim())
            );
        }
        let _ = writeln!(md);
    }
    let churn = churn_lines(recording);
    if !churn.is_empty() {
        // A fenced block shows its text as is; only a backtick run could close it early.
        let churn: Vec<String> = churn
            .iter()
            .map(|l| sanitize::terminal(l).replace('`', "'"))
            .collect();
        let _ = writeln!(md, "```\n{}\n```\n", churn.join("\n"));
    }
    if let Some(line) = startup_line(recording) {
        let _ = writeln!(md, "{}\n", sanitize::markdown_text(&line));
    }
    for hint in &recording.hints {
        let _ = writeln!(md, "> hint: {}\n", sanitize::markdown_text(hint));
    }
    if let Some(line) = python_line(&recording.python) {
        let _ = writeln!(md, "```\n{line}\n```\n");
    }
    let drops = &recording.drops;
    let _ = writeln!(
        md,
        "Lost events: {} · stacks lost: {} kernel, {} user.",
        recording.lost_events,
        drops.kernel_stack,
        drops.user_stacks_lost()
    );
    if let Some(line) = reorder_line(recording) {
        let _ = writeln!(md, "\n{line}");
    }
    md
}

/// Says what the reorder stage could not put in order, and stalls that do not add up
/// (nothing when all is well).
pub fn reorder_line(recording: &Recording) -> Option<String> {
    let r = &recording.reorder;
    let not_adding_up = recording.stalls.iter().filter(|s| !s.adds_up).count();
    if r.late_events == 0 && r.released_early == 0 && not_adding_up == 0 {
        return None;
    }
    Some(format!(
        "ordering: {} events came later than the {} reorder window, {} left it early (full); {} stall(s) with time unaccounted (each says why)",
        r.late_events,
        format_ms(r.window_ns),
        r.released_early,
        not_adding_up
    ))
}

fn folded_text(lines: &[String]) -> String {
    let mut text = lines.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    text
}

pub fn format_ms(ns: u64) -> String {
    let ms = ns as f64 / 1e6;
    if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else {
        format!("{ms:.1} ms")
    }
}

/// The longest stalls, longest first.
fn worst_stalls(recording: &Recording, count: usize) -> Vec<&StallRecord> {
    let mut worst: Vec<&StallRecord> = recording.stalls.iter().collect();
    worst.sort_by_key(|s| std::cmp::Reverse(s.duration_ns));
    worst.truncate(count);
    worst
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

fn frame_text(frame: &Frame) -> String {
    match (&frame.file, frame.line) {
        (Some(file), Some(line)) => format!("{} ({}:{line})", frame.function, short_path(file)),
        (Some(file), None) if frame.kind == FrameKind::Js => {
            format!("{} ({})", frame.function, short_path(file))
        }
        _ => frame.function.clone(),
    }
}

/// One line per stall, printed as it ends.
pub fn live_line(stall: &StallRecord) -> String {
    let mut line = format!(
        "stall {:>9}  {} pid {} tid {}  on-CPU {}  blocked {}  runqueue {}",
        format_ms(stall.duration_ns),
        stall.comm,
        stall.pid,
        stall.tid,
        format_ms(stall.on_cpu_ns),
        format_ms(stall.off_cpu_ns),
        format_ms(stall.runqueue_ns),
    );
    // The dominant code path, aggregated by frame (module `headline`).
    match crate::outputs::headline::headline(stall) {
        Some(headline) if headline.has_named() => {
            let _ = write!(line, "\n    at {}", headline.text(" < "));
        }
        // No named frame on the dominant path: the heaviest stack that has some, saying so.
        Some(_) | None if stall.headline().is_some() => {
            if let Some((stack, frames)) = stall.headline() {
                let frames: Vec<String> = frames.into_iter().map(frame_text).collect();
                let _ = write!(
                    line,
                    "\n    at {}{} ({} of it; the heaviest part has no named frame)",
                    frames.join(" < "),
                    stack.cause(),
                    format_ms(stack.weight_ns)
                );
            }
        }
        Some(headline) => {
            let _ = write!(
                line,
                "\n    at {} (no named frame: {})",
                headline.text(" < "),
                stall.no_frames_why()
            );
        }
        None => {
            let _ = write!(line, "\n    (no frames to show: {})", stall.no_frames_why());
        }
    }
    if !stall.adds_up {
        let _ = write!(
            line,
            "\n    ({} of it unaccounted: {})",
            format_ms(stall.unaccounted_ns),
            stall.unaccounted_why.as_deref().unwrap_or("unknown")
        );
    }
    if let Some(task) = &stall.task {
        let _ = write!(line, "\n    in {}", task_text(task));
    }
    match stall.ready_events {
        Some(0) | None => {}
        Some(1) => line.push_str("\n    1 event was waiting when the loop came back"),
        Some(n) => {
            let _ = write!(
                line,
                "\n    {n} events were waiting when the loop came back"
            );
        }
    }
    if stall.partial {
        line.push_str("\n    (partial: it began before recording or was still running at the end)");
    }
    if stall.data_lost {
        line.push_str(
            "\n    (events were lost during this stall: the breakdown may be incomplete)",
        );
    }
    // For the terminal: nothing the target named may carry an escape sequence to it.
    sanitize::terminal_lines(&line)
}

/// "asyncio task Task-3 (coroutine serve_client)", then ", awaited by task X (coroutine Y) <
/// task Z (coroutine W)" when other Tasks await it (nearest first).
pub fn task_text(task: &crate::stacks::python::TaskInfo) -> String {
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

/// Worker churn, for services whose master forks and recycles workers: how many processes
/// started and exited during the recording, when (seconds from its start), and how they ended.
pub fn churn_lines(recording: &Recording) -> Vec<String> {
    let seconds = |ns: u64| ns.saturating_sub(recording.start_ns) as f64 / 1e9;
    let started: Vec<&ProcessRecord> = recording
        .processes
        .iter()
        .filter(|p| p.started_ns.is_some())
        .collect();
    let exited: Vec<&ProcessRecord> = recording
        .processes
        .iter()
        .filter(|p| p.exited_ns.is_some())
        .collect();
    if started.is_empty() && exited.is_empty() {
        return Vec::new();
    }
    let span = |times: Vec<u64>| match (times.iter().min(), times.iter().max()) {
        (Some(first), Some(last)) => format!(
            " (first at +{:.1} s, last at +{:.1} s)",
            seconds(*first),
            seconds(*last)
        ),
        _ => String::new(),
    };
    let mut lines = vec![format!(
        "processes: {} started{}, {} exited{}",
        started.len(),
        span(started.iter().filter_map(|p| p.started_ns).collect()),
        exited.len(),
        span(exited.iter().filter_map(|p| p.exited_ns).collect()),
    )];
    for process in exited.iter().take(20) {
        let how = match (&process.exit_code, &process.exit_signal) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(signal)) => format!("killed by {signal}"),
            (None, None) => "exited".into(),
        };
        lines.push(format!(
            "  {} ({}) {how} at +{:.1} s",
            process.comm,
            process.pid,
            seconds(process.exited_ns.unwrap_or(0))
        ));
    }
    lines
}

/// The human summary printed at the end.
pub fn summary_text(recording: &Recording, written: &[String]) -> String {
    let mut text = String::new();
    let processes: Vec<String> = recording
        .processes
        .iter()
        .map(|p| format!("{} ({})", p.comm, p.pid))
        .collect();
    let loops = recording.threads.iter().filter(|t| t.is_loop).count();
    let iterations: u64 = recording.threads.iter().map(|t| t.iterations).sum();
    let _ = writeln!(
        text,
        "\nstallscope: recorded {} for {}: {} loop thread(s), {} iterations, {} stall(s) over {}",
        processes.join(", "),
        format_ms(recording.recorded_ns),
        loops,
        iterations,
        recording.stalls.len(),
        format_ms(recording.threshold_ns),
    );
    if !recording.stalls.is_empty() {
        let total: u64 = recording.stalls.iter().map(|s| s.duration_ns).sum();
        let longest = recording
            .stalls
            .iter()
            .map(|s| s.duration_ns)
            .max()
            .unwrap_or(0);
        let _ = writeln!(
            text,
            "  longest {}, total {}",
            format_ms(longest),
            format_ms(total)
        );
        for stall in worst_stalls(recording, 10) {
            let (top, cause) = match crate::outputs::headline::headline(stall) {
                Some(h) => (h.place(" < "), h.cause().to_string()),
                None => (
                    format!("(no frames: {})", stall.no_frames_why()),
                    String::new(),
                ),
            };
            let _ = writeln!(
                text,
                "  {:>9}  {}/{}  mostly {:<8}  {}{}{}",
                format_ms(stall.duration_ns),
                stall.comm,
                stall.tid,
                stall.dominant_kind(),
                top,
                cause,
                stall.caveat()
            );
        }
    }
    if loops == 0 {
        let _ = writeln!(
            text,
            "  no loop thread was seen (no thread waited in epoll/poll/select): stalls are runs that held a CPU past the threshold"
        );
    }
    let drops = &recording.drops;
    if recording.lost_events > 0 || drops.kernel_stack + drops.user_stacks_lost() > 0 {
        let _ = writeln!(
            text,
            "  lost: {} events (ring buffer full), {} kernel and {} user stacks; results may be incomplete",
            recording.lost_events,
            drops.kernel_stack,
            drops.user_stacks_lost()
        );
    }
    if let Some(line) = reorder_line(recording) {
        let _ = writeln!(text, "  {line}");
    }
    if let Some(line) = python_line(&recording.python) {
        let _ = writeln!(text, "  {line}");
    }
    if let Some(line) = javascript_line(&recording.javascript) {
        let _ = writeln!(text, "  {line}");
    }
    for line in churn_lines(recording) {
        let _ = writeln!(text, "  {line}");
    }
    if let Some(line) = startup_line(recording) {
        let _ = writeln!(text, "  {line}");
    }
    if !recording.kernel_limits.is_empty() {
        let _ = writeln!(
            text,
            "  on this kernel: {}",
            recording.kernel_limits.join("; ")
        );
    }
    for hint in &recording.hints {
        let _ = writeln!(text, "  hint: {hint}");
    }
    let _ = writeln!(text, "outputs:");
    for path in written {
        let _ = writeln!(text, "  {path}");
    }
    sanitize::terminal_lines(&text)
}

/// "Python 3.12 (2 processes): 1,234 stacks read, 0 frames unreadable, 0 cut short".
fn python_line(python: &PythonReport) -> Option<String> {
    if python.interpreters.is_empty() {
        return None;
    }
    let mut versions: Vec<&str> = python
        .interpreters
        .iter()
        .map(|i| i.version.as_str())
        .collect();
    versions.sort();
    versions.dedup();
    let mut line = format!(
        "Python {} ({} process(es)): {} stacks read, {} frames unreadable, {} cut at {} frames",
        versions.join(", "),
        python.interpreters.len(),
        python.stacks,
        python.unreadable_frames,
        python.truncated,
        profiler_common::MAX_PY_FRAMES
    );
    // How each distinct interpreter's frames were read.
    let mut how: Vec<String> = python
        .interpreters
        .iter()
        .filter(|i| !i.frames.is_empty())
        .map(|i| {
            let release = if i.release.is_empty() {
                &i.version
            } else {
                &i.release
            };
            format!("{release}: {}", i.frames)
        })
        .collect();
    how.sort();
    how.dedup();
    for entry in how {
        let _ = write!(line, "\n    {entry}");
    }
    Some(line)
}

/// "JavaScript (V8 12.4.254, 1 process(es)): 1,234 frames named, 0 unreadable".
fn javascript_line(js: &JsReport) -> Option<String> {
    if js.runtimes.is_empty() {
        return None;
    }
    let mut versions: Vec<&str> = js.runtimes.iter().map(|r| r.v8_version.as_str()).collect();
    versions.sort();
    versions.dedup();
    Some(format!(
        "JavaScript (V8 {}, {} process(es)): {} frames named, {} unreadable",
        versions.join(", "),
        js.runtimes.len(),
        js.frames,
        js.unreadable_frames
    ))
}

/// Makes sure `dir` can take the outputs, with the error every command gives when it cannot.
pub fn prepare_output_dir(dir: &Path) -> Result<()> {
    ensure_writable_dir(dir).with_context(|| {
        format!(
            "output directory {} is not writable; choose another with --out",
            dir.display()
        )
    })
}

/// Whether `dir` can take our files: created if missing, probed with a temporary file that is
/// removed again (it is ours).
pub fn ensure_writable_dir(dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let probe = dir.join(".stallscope-write-test");
    fs::write(&probe, b"")?;
    fs::remove_file(&probe)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(function: &str, kind: FrameKind) -> Frame {
        Frame {
            function: function.into(),
            file: None,
            line: None,
            module: None,
            kind,
        }
    }

    fn recording() -> Recording {
        let stall = StallRecord {
            pid: 10,
            tid: 11,
            comm: "server".into(),
            start_ns: 0,
            end_ns: 300_000_000,
            duration_ns: 300_000_000,
            on_cpu_ns: 290_000_000,
            off_cpu_ns: 0,
            runqueue_ns: 10_000_000,
            rule: "iteration".into(),
            partial: false,
            data_lost: false,
            unaccounted_ns: 0,
            adds_up: true,
            unaccounted_why: None,
            late_events: 0,
            missed_switches: 0,
            task: None,
            ready_events: None,
            stacks: vec![
                StackRecord {
                    kind: "on_cpu".into(),
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
                    kind: "off_cpu".into(),
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

    #[test]
    fn folded_is_outermost_first_with_kind_markers() {
        let lines = stall_folded(&recording());
        assert_eq!(
            lines,
            vec![
                "server (10);server (11);main;burn_cpu 200000".to_string(),
                "server (10);server (11);main;nap;schedule_[k];[blocked in nanosleep] 5000"
                    .to_string(),
            ]
        );
    }

    #[test]
    fn svg_contains_the_frames_and_empty_profiles_still_render() {
        let lines = stall_folded(&recording());
        let svg = String::from_utf8(flamegraph_svg(&lines, "t").expect("svg")).expect("utf8");
        assert!(svg.contains("burn_cpu"));
        let empty = String::from_utf8(flamegraph_svg(&[], "t").expect("svg")).expect("utf8");
        assert!(empty.starts_with("<?xml"));
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

    #[test]
    fn live_line_names_the_cause() {
        let rec = recording();
        let line = live_line(&rec.stalls[0]);
        assert!(line.contains("300.0 ms"), "{line}");
        assert!(line.contains("burn_cpu < main"), "{line}");
        assert_eq!(rec.stalls[0].dominant_kind(), "on-CPU");
        assert!(!line.contains("unaccounted"), "{line}");
    }

    /// Issue #22: the live line always names frames, or says why it cannot; and a breakdown
    /// that does not add up says so, with the reason.
    #[test]
    fn live_line_always_names_frames_or_says_why_not() {
        let mut rec = recording();
        let stall = &mut rec.stalls[0];
        // The heaviest stack has only unnamed frames: the next one with names is shown.
        stall.stacks[0].frames = vec![frame("[unknown] 0x1234", FrameKind::Native)];
        let line = live_line(stall);
        assert!(line.contains("    at nap < main"), "{line}");
        assert!(
            line.contains("of it; the heaviest part has no named frame"),
            "{line}"
        );
        // No stack at all.
        stall.stacks.clear();
        let line = live_line(stall);
        assert!(
            line.contains("    (no frames to show: no stack was taken inside it"),
            "{line}"
        );
        // Time the timeline could not attribute.
        stall.unaccounted_ns = 48_000_000;
        stall.on_cpu_ns -= 48_000_000;
        stall.adds_up = false;
        stall.unaccounted_why =
            Some("1 switch-in(s) or switch-out(s) of the thread were not seen".into());
        let line = live_line(stall);
        assert!(
            line.contains("(48.0 ms of it unaccounted: 1 switch-in(s) or switch-out(s)"),
            "{line}"
        );
        assert!(stall.caveat().contains("breakdown incomplete"));
        let summary = summary_text(&rec, &[]);
        assert!(
            summary.contains("1 stall(s) with time unaccounted"),
            "{summary}"
        );
    }
}
