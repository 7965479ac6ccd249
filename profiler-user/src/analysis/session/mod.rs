//! One recording's state while events flow: from raw kernel events to the [`Recording`]. Used
//! live (with the kernel's maps at hand) and when re-rendering a saved recording (replaying its
//! saved events with its saved symbols), so both produce the same results by construction.

use std::collections::{HashMap, HashSet};

use anyhow::Result;
use profiler_common::{Event as RawEvent, PyFrame, drop as drop_index, kind};
use serde::{Deserialize, Serialize};

use crate::{
    analysis::events::{self, Lifecycle, LossDetector},
    analysis::reorder::{self, Reorder},
    analysis::timeline::{self, StackKey, Stall, Timeline},
    config::RecordConfig,
    model::{
        self, Drops, Frame, FrameKind, OffCpuRecord, ProcessRecord, Recording, StackRecord,
        StallRecord, StallRule,
    },
    stacks::python,
    stacks::symbolize::Symbols,
    syscalls,
    system::access::SystemAccess,
    system::procfs,
};

mod finish;
mod late;
mod lifecycle;
mod names;
mod pending;
mod processes;
mod python_detection;
mod python_tasks;
mod resolver;
mod stack_table;
mod stalls;

use names::Names;
use pending::PendingStacks;
pub use processes::{Added, ProcessState, ProcessTable};
pub use python_detection::PythonDetection;
use python_tasks::{PendingPython, TaskHistory};
pub use resolver::{INTERNED_BASE, Resolver, SavedStack};
use stack_table::StackTable;
pub use stalls::StallRecords;

/// Limits on what a recording keeps, with the reason for each.
pub struct Limits {
    /// Distinct stacks per stall: the top few explain a stall; thousands only cost memory.
    pub stacks_per_stall: usize,
    /// (thread, stack) pairs in the off-CPU profile: enough for any real service.
    pub offcpu_entries: usize,
    /// Of those, the heaviest written out: with waker stacks an entry is ~10-20 KB of JSON, and
    /// the rest is a long tail of microseconds.
    pub offcpu_written: usize,
    /// Stalls kept in full; past this only the count grows (a loop stalling every iteration for
    /// an hour must not eat the machine).
    pub stalls: usize,
    /// Resolved frames held by the kept stalls' stacks. A busy Python service's stall carries
    /// a few thousand frames: 10,000 of them would be gigabytes. Past this later stalls are
    /// kept with their times but without stacks, counted in `stacks_dropped`. Names are shared
    /// and so are frame lists met again (see `StallRecords`): at most ~72 bytes per frame
    /// (~22 MB) while recording, far less when stalls repeat their stacks.
    pub stall_frames: usize,
    /// Spans and samples for the timeline view (trace.json): about 10 MB at most.
    pub marks: usize,
    /// Off-CPU spans shorter than this are left out of the timeline view.
    pub min_mark_ns: u64,
}

/// How far from its event a user-stack copy may be stamped (see `handle_raw`).
const COPY_MAX_AGE_NS: u64 = 100_000_000;

pub const LIMITS: Limits = Limits {
    stacks_per_stall: 256,
    offcpu_entries: 20_000,
    offcpu_written: 2_000,
    stalls: 10_000,
    stall_frames: 300_000,
    marks: 200_000,
    min_mark_ns: 1_000_000,
};

pub use crate::units::monotonic_ns;

/// Where each stall goes as it ends, besides the recording: `watch`'s metrics, events log and
/// flight recorder. Called with the stall's process (None when it is not known any more).
pub trait StallSink {
    fn stall(&mut self, stall: &StallRecord, process: Option<&ProcessRecord>);
}

/// Where the raw events go in the order the timeline handles them, so a replay sees what the
/// live recording saw (`events.bin`: see `store::events`).
pub trait EventSink {
    fn write(&mut self, raw: &RawEvent);
    /// Done: how many events were left out (the sink is bounded).
    fn finish(self: Box<Self>) -> Result<u64>;
}

/// Everything one recording accumulates while events flow.
pub struct Session {
    /// Stalls are handed here as they end (`watch`).
    pub sink: Option<Box<dyn StallSink>>,
    /// `watch`: nothing accumulates for the final recording (stalls go to the sink only, exited
    /// processes and their symbols are forgotten), so memory stays flat for days.
    pub streaming: bool,
    /// Partial stalls and runs left out while streaming (see `stall_ended`).
    pub stalls_not_streamed: u64,
    pub config: RecordConfig,
    own_pid: u32,
    pub timeline: Timeline,
    /// Puts the CPUs' events in timestamp order before the timeline (see [`reorder`]); a
    /// replay passes its saved events, already in that order, straight through.
    pub reorder: Reorder<RawEvent>,
    /// The window the events were put in order with (a replay's pass-through stage has none;
    /// the recording's is reported).
    pub reorder_window_ns: u64,
    /// Events the reorder stage released, waiting to be handled (reused buffer).
    released: Vec<reorder::Released<RawEvent>>,
    pub resolver: Resolver,
    pub loss: LossDetector,
    /// The processes followed and exited, and the threads' names (see [`ProcessTable`]).
    pub processes: ProcessTable,
    /// The stalls kept for the recording (see [`StallRecords`]).
    pub stalls: StallRecords,
    startup_said: bool,
    /// Raw events saved for `stallscope report` (None when replaying).
    pub event_log: Option<Box<dyn EventSink>>,
    waiting_at_start: Vec<(u32, u32)>,
    /// Unwound user stacks waiting for the event they belong to (see [`PendingStacks`]).
    stacks: PendingStacks,
    /// Blocks in a syscall whose stacks come when the thread leaves the call (see [`late`]).
    late: late::LateStacks,
    /// Decoded Python stacks waiting for their event: tid -> (taken at, frames, task).
    pending_python: foldhash::HashMap<u32, PendingPython>,
    /// Which followed processes run CPython (see [`PythonDetection`]).
    pub python: PythonDetection,
    /// The asyncio task each thread ran (see [`TaskHistory`]).
    tasks: TaskHistory,
    /// The kernel's drop counters when recording stopped (see `stopped`).
    kernel_drops_at_stop: Option<[u64; drop_index::COUNT as usize]>,
    /// Time spent reading JavaScript frames, summed.
    v8_ns: u64,
    pub unwinders: crate::stacks::unwind::Unwinders,
    /// Node processes: JavaScript frames from V8's postmortem metadata.
    pub v8s: crate::stacks::v8::V8s,
    /// STALLSCOPE_DEBUG_EVENTS=1: print every raw event (for developing the probes).
    debug_events: bool,
    /// Where each stall goes the moment it ends while recording live (the terminal's live
    /// line); None when quiet or replaying. The analysis decides stalls; it never prints.
    pub live_sink: Option<Box<dyn StallSink>>,
}

impl Session {
    pub fn new(config: RecordConfig) -> Self {
        let timeline = Timeline::new(timeline::Config {
            threshold_ns: config.threshold_ns,
            sample_period_ns: 1_000_000_000 / config.freq_hz,
            max_stacks_per_span: LIMITS.stacks_per_stall,
            max_offcpu_entries: LIMITS.offcpu_entries,
            max_marks: LIMITS.marks,
            min_mark_ns: LIMITS.min_mark_ns,
            hold_for_impact: true,
        });
        let resolver = Resolver {
            python_only: config.python_only,
            ..Resolver::default()
        };
        Session {
            sink: None,
            streaming: false,
            stalls_not_streamed: 0,
            config,
            own_pid: std::process::id(),
            timeline,
            reorder: Reorder::new(reorder::Config::live(procfs::online_cpus())),
            reorder_window_ns: reorder::WINDOW_NS,
            released: Vec::new(),
            resolver,
            loss: LossDetector::default(),
            processes: ProcessTable::default(),
            stalls: StallRecords::default(),
            startup_said: false,
            event_log: None,
            waiting_at_start: Vec::new(),
            stacks: PendingStacks::default(),
            late: late::LateStacks::default(),
            pending_python: Default::default(),
            python: PythonDetection::default(),
            tasks: TaskHistory::default(),
            kernel_drops_at_stop: None,
            v8_ns: 0,
            unwinders: crate::stacks::unwind::Unwinders::new(),
            v8s: crate::stacks::v8::V8s::default(),
            debug_events: std::env::var_os("STALLSCOPE_DEBUG_EVENTS").is_some(),
            live_sink: None,
        }
    }

    pub fn handle_raw(&mut self, system: &mut dyn SystemAccess, raw: &RawEvent) {
        let mut raw = *raw;
        let copied = profiler_common::USER_STACK_COPIED | profiler_common::PY_STACK_COPIED;
        if raw.arg1 & copied != 0 {
            // Live: attach the stacks sent just before this event. (A replayed event already
            // carries the id it was given live.) A wake-up carries its waker's stack, copied in
            // the waker's context.
            let owner = if raw.kind == kind::WAKING {
                raw.arg0 as u32
            } else {
                raw.tid
            };
            // Only copies from this very event: one whose event was lost must not be attached
            // to a later one. That is what the ring buffer's order gives: a thread's copy is
            // the record just before its event (one program run, on one CPU), and the kernel
            // flags an event as copied only once its copy is in the ring, so a later flagged
            // event's own copy has replaced a lost event's (see `PendingStacks`). The time
            // bound is a second guard, wide enough for an emulator's vCPU preempted by its
            // loaded host between the copy's stamp and the event's (2.3 ms seen on a 5.10 VM
            // sharing one host CPU: the sleep's copy then went unattached, its stall without
            // user frames).
            let fresh = |taken_ns: u64| raw.ts_ns.abs_diff(taken_ns) < COPY_MAX_AGE_NS;
            let native = self
                .stacks
                .take(owner)
                .filter(|(taken_ns, _)| fresh(*taken_ns))
                .map(|(_, stack)| stack);
            let python = self
                .pending_python
                .remove(&owner)
                .filter(|p| fresh(p.taken_ns));
            let native = match (native, &python) {
                (Some(stack), _) => Some(stack),
                // Python frames without a copied native stack: the kernel walked it instead
                // (no stack pointers: the runs are placed by the native frames' names).
                (None, Some(_)) if system.live() && raw.user_stack_id >= 0 => {
                    Some(pending::UserStack {
                        ips: system.kernel_stack(raw.user_stack_id).unwrap_or_default(),
                        sps: Vec::new(),
                    })
                }
                _ => None,
            };
            if native.is_some() || python.is_some() {
                let frames = match python {
                    Some(python) => {
                        // Late stacks: the task was the thread's from its switch-out on.
                        let at = if raw.kind == kind::LATE_STACKS {
                            raw.arg0
                        } else {
                            raw.ts_ns
                        };
                        self.tasks.note(raw.tid, at, python.task);
                        python.frames
                    }
                    None => Vec::new(),
                };
                let native = native.unwrap_or_default();
                raw.user_stack_id = self.resolver.intern_mixed(native.ips, &native.sps, &frames);
            }
        }
        if system.live() && self.python.pending() {
            self.sync_python(system);
        }
        // Stacks are attached above, in arrival order (a CPU's copy precedes its event);
        // from here on events go in timestamp order.
        let mut released = std::mem::take(&mut self.released);
        self.reorder.push(raw, &mut |r| released.push(r));
        self.handle_released(system, &mut released);
    }

    /// Time has passed: `now_ns` was read before a drain that emptied the ring buffer, so
    /// events older than it by the reorder window can go on (see [`Reorder::advance`]).
    pub fn advance(&mut self, system: &mut dyn SystemAccess, now_ns: u64) {
        let mut released = std::mem::take(&mut self.released);
        self.reorder.advance(now_ns, &mut |r| released.push(r));
        self.handle_released(system, &mut released);
    }

    /// Recording stopped: every event still held goes on, in order.
    pub fn flush(&mut self, system: &mut dyn SystemAccess) {
        let mut released = std::mem::take(&mut self.released);
        self.reorder.flush(&mut |r| released.push(r));
        self.handle_released(system, &mut released);
        if system.live() {
            self.stacks_of_open_blocks(system);
        }
        for held in self.late.drain() {
            self.handle_now(system, &held);
        }
    }

    /// Threads still blocked in a syscall when recording stops never left it, so the kernel
    /// never sent their user stacks: read them from /proc instead (the registers the thread
    /// entered the call with, its stack from /proc/PID/mem; the thread is not stopped) and
    /// unwind them as the kernel's copy would be. Native frames only: the Python walk runs in
    /// the kernel. A replay does not redo this (its saved events have no such stack).
    fn stacks_of_open_blocks(&mut self, system: &dyn SystemAccess) {
        for (pid, tid, syscall) in self.late.still_blocked() {
            let Some(blocked) = system.blocked_stack(pid, tid, self.config.stack_bytes as usize)
            else {
                continue;
            };
            if blocked.syscall != i64::from(syscall) {
                continue;
            }
            let unwound =
                self.unwinders
                    .unwind_frames(pid, blocked.ip, blocked.sp, 0, &blocked.stack);
            let sps = if unwound.ips.len() == unwound.sps.len() {
                unwound.sps
            } else {
                Vec::new()
            };
            let user = self.resolver.intern_mixed(unwound.ips, &sps, &[]);
            if let Some(key) = self.timeline.late_user_stack(tid, user) {
                self.resolver.saw(key);
            }
            self.late.resolved(tid);
        }
    }

    fn handle_released(
        &mut self,
        system: &mut dyn SystemAccess,
        released: &mut Vec<reorder::Released<RawEvent>>,
    ) {
        for r in released.drain(..) {
            if r.late && r.item.pid != self.own_pid {
                self.timeline.late(r.item.tid);
            }
            self.handle_event(system, &r.item);
        }
        // Keep the buffer (and its capacity) for the next call.
        std::mem::swap(&mut self.released, released);
    }

    fn handle_event(&mut self, system: &mut dyn SystemAccess, raw: &RawEvent) {
        // Sequence numbers first: our own events (below) used numbers too.
        if self.loss.observe(raw.cpu, raw.seq) > 0 {
            self.timeline.lost();
        }
        if raw.pid == self.own_pid {
            // Only while spawning a COMMAND do we follow ourselves (so the kernel follows the
            // child from its first instruction); our own events are not part of the recording,
            // but the fork is: the COMMAND is seen from its creation, so its time before its
            // first wait point is start-up (saved, so a replay knows it too).
            if let Some(Lifecycle::Fork { child_tid, .. }) = events::interpret(raw).lifecycle {
                self.timeline.forked(child_tid);
                if let Some(log) = self.event_log.as_mut() {
                    log.write(raw);
                }
            }
            return;
        }
        for held in self.late.expired(raw.ts_ns) {
            self.handle_now(system, &held);
        }
        match self.late.route(raw, self.config.threshold_ns) {
            late::Route::Now => self.handle_now(system, raw),
            late::Route::Held => {}
            late::Route::Patch {
                user,
                release,
                event_first,
            } => {
                if event_first {
                    self.handle_now(system, raw);
                }
                if let Some(key) = self.timeline.late_user_stack(raw.tid, user) {
                    self.resolver.saw(key);
                }
                for mut held in release {
                    late::patch_held(&mut held, user);
                    self.handle_now(system, &held);
                }
                if !event_first {
                    self.handle_now(system, raw);
                }
            }
            late::Route::ReleaseFirst(held) => {
                for held in held {
                    self.handle_now(system, &held);
                }
                self.handle_now(system, raw);
            }
        }
    }

    /// An event in its turn (after the reorder stage, and any wait for late stacks).
    fn handle_now(&mut self, system: &mut dyn SystemAccess, raw: &RawEvent) {
        // Only events taken in the thread's own context carry its name (a wake-up carries the
        // waker's).
        if raw.comm[0] != 0 && !matches!(raw.kind, kind::WAKING | kind::WAKEUP) {
            self.processes.name_thread_from(raw.tid, &raw.comm);
        }
        if self.debug_events {
            eprintln!("event {raw:?}");
        }
        let decoded = events::interpret(raw);
        if raw.kernel_stack_id >= 0 || raw.user_stack_id >= 0 {
            let key = if raw.kind == kind::WAKING {
                events::waker_stack(raw)
            } else {
                StackKey {
                    pid: raw.pid,
                    kernel: raw.kernel_stack_id,
                    user: raw.user_stack_id,
                }
            };
            self.resolver.saw(key);
        }
        if raw.kind == kind::WAKING {
            self.processes.name_waker(raw.arg0 as u32, &raw.comm);
        }
        if let Some(log) = self.event_log.as_mut() {
            log.write(raw);
        }
        // A runtime-specific wait point (tokio's futex) counts only for that runtime's threads;
        // for anyone else the same syscall is a lock wait inside an iteration.
        let decoded = if matches!(raw.kind, kind::WAIT_ENTER | kind::WAIT_EXIT)
            && !syscalls::is_wait_point_for(
                self.processes.thread_name_of(raw.tid).unwrap_or(""),
                i64::from(raw.syscall),
            ) {
            events::Decoded {
                timeline: None,
                ..decoded
            }
        } else {
            decoded
        };
        if let Some(event) = decoded.timeline {
            // Before its lifecycle events: a short-lived child's exit must find it.
            // Replaying, /proc says nothing about the recorded processes (the PIDs may belong to
            // someone else by now): everything known about them was saved.
            if system.live() && self.processes.is_unknown(event.pid) && event.pid == event.tid {
                let fork = self.processes.take_fork(event.pid);
                self.add_process(system, event.pid, fork.map(|(ts, _)| ts));
                if let Some((_, parent)) = fork {
                    self.processes.inherit_exe(parent, event.pid);
                }
                self.processes.name_if_unknown(event.pid, &raw.comm);
            }
        }
        if let Some(lifecycle) = decoded.lifecycle {
            self.lifecycle(system, lifecycle, raw.ts_ns);
        }
        if let Some(event) = decoded.timeline
            && let Some(stall) = self.timeline.handle(&event)
        {
            self.stall_ended(system, stall, true);
        }
        self.say_startup(system.live());
    }

    /// Recording has stopped: the kernel side stops following anyone (so nothing it drops while
    /// the outputs are written counts as lost), and its drop counters are taken now.
    pub fn stopped(&mut self, system: &mut dyn SystemAccess) {
        system.unfollow_all();
        self.kernel_drops_at_stop = system.kernel_drops();
    }
}

/// Stacks that read the same once symbolized (different addresses on one line, or native frames
/// hidden by --python-only) are one stack to a reader: their weights are added, heaviest first.
fn merge_same_frames(stacks: Vec<StackRecord>) -> Vec<StackRecord> {
    let mut merged: Vec<StackRecord> = Vec::with_capacity(stacks.len());
    for stack in stacks {
        match merged.iter_mut().find(|m| {
            m.kind == stack.kind
                && m.syscall == stack.syscall
                && m.waker == stack.waker
                && m.frames == stack.frames
        }) {
            Some(same) => {
                same.weight_ns += stack.weight_ns;
                same.count += stack.count;
            }
            None => merged.push(stack),
        }
    }
    merged.sort_by_key(|s| std::cmp::Reverse(s.weight_ns));
    merged
}

/// Why part of a stall's time is unaccounted, in words (None when none is).
fn unaccounted_why(stall: &Stall, window_ns: u64) -> Option<String> {
    if stall.unaccounted_ns == 0 {
        return None;
    }
    let mut why = Vec::new();
    if stall.data_lost {
        why.push("events were lost (ring buffer full)".to_string());
    }
    if stall.late_events > 0 {
        why.push(format!(
            "{} event(s) came later than the {} reorder window",
            stall.late_events,
            crate::units::format_duration(window_ns)
        ));
    }
    if stall.odd_transitions > 0 {
        why.push(format!(
            "{} switch-in(s) or switch-out(s) of the thread were not seen",
            stall.odd_transitions
        ));
    }
    if stall.partial {
        why.push("it began before the recording (its start is not known)".to_string());
    }
    if why.is_empty() {
        why.push("not known".to_string());
    }
    Some(why.join("; "))
}

/// Advice for the summary: a Node process whose JavaScript frames could not be read from V8's
/// metadata (why, in one line), where a perf map is the remaining way to name compiled code.
fn hints(processes: &[ProcessRecord], v8s: &crate::stacks::v8::V8s) -> Vec<String> {
    let mut hints = Vec::new();
    for process in processes {
        let Some(err) = v8s.failures.get(&process.pid) else {
            continue;
        };
        let perf_map = if !crate::stacks::perf_map::exists(process.pid) {
            "; start it with `node --perf-basic-prof` to name at least its compiled functions"
        } else {
            ""
        };
        hints.push(format!(
            "{} ({}): JavaScript functions are not named: {err}{perf_map}",
            process.comm, process.pid
        ));
    }
    hints
}

fn syscall_name(nr: Option<i32>) -> Option<String> {
    let nr = nr?;
    Some(syscalls::name(i64::from(nr)).map_or_else(|| format!("syscall {nr}"), str::to_string))
}

/// The innermost user function of a stack, or its innermost kernel function.
fn span_label(frames: &[Frame]) -> String {
    frames
        .iter()
        .find(|f| f.kind != FrameKind::Kernel)
        .or_else(|| frames.first())
        .map(|f| f.function.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
