//! One recording's state while events flow: from raw kernel events to the [`Recording`]. Used
//! live (with the kernel's maps at hand) and when re-rendering a saved recording (replaying its
//! saved events with its saved symbols), so both produce the same results by construction.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    io::{BufWriter, Write as _},
    path::Path,
};

use anyhow::{Context as _, Result};
use profiler_common::{Event as RawEvent, PyFrame, drop as drop_index, kind};
use serde::{Deserialize, Serialize};

use crate::{
    analysis::events::{self, Lifecycle, LossDetector},
    analysis::reorder::{self, Reorder},
    analysis::timeline::{self, StackKey, Stall, Timeline},
    config::RecordConfig,
    model::{
        self, Drops, Frame, FrameKind, OffCpuRecord, ProcessRecord, Recording, StackKind,
        StackRecord, StallRecord, StallRule,
    },
    stacks::python,
    stacks::symbolize::Symbols,
    syscalls,
    system::attach::Probes,
    system::procfs,
};

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
    /// a few thousand frames (~0.5 MB): 10,000 of them would be gigabytes. Past this (~60 MB)
    /// later stalls are kept with their times but without stacks, counted in `stacks_dropped`.
    pub stall_frames: usize,
    /// Spans and samples for the timeline view (trace.json): about 10 MB at most.
    pub marks: usize,
    /// Off-CPU spans shorter than this are left out of the timeline view.
    pub min_mark_ns: u64,
}

pub const LIMITS: Limits = Limits {
    stacks_per_stall: 256,
    offcpu_entries: 20_000,
    offcpu_written: 2_000,
    stalls: 10_000,
    stall_frames: 300_000,
    marks: 200_000,
    min_mark_ns: 1_000_000,
};

pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub struct ProcessState {
    pub record: ProcessRecord,
    pub id: Option<procfs::ProcessId>,
}

/// Where each stall goes as it ends, besides the recording: `watch`'s metrics, events log and
/// flight recorder. Called with the stall's process (None when it is not known any more).
pub trait StallSink {
    fn stall(&mut self, stall: &StallRecord, process: Option<&ProcessRecord>);
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
    /// Exited (pid, tids) whose names and stacks are dropped at the next [`Session::purge_exited`].
    exited_to_purge: Vec<u32>,
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
    pub processes: HashMap<u32, ProcessState>,
    /// Processes that exited during the recording (their PIDs may come back as others).
    past_processes: Vec<ProcessRecord>,
    exited_pids: HashSet<u32>,
    /// Last exit status passed to exit_group, and last signal, per process.
    exit_calls: HashMap<u32, i32>,
    /// Fork times of children not yet known as processes (a short-lived child can be gone from
    /// /proc before its fork event is read; its own first event then shows it is a process).
    forks: HashMap<u32, (u64, u32)>,
    signals: HashMap<u32, i32>,
    pub thread_names: HashMap<u32, String>,
    /// Names of waking threads, from the wake-up events (which run in the waker's context).
    waker_names: HashMap<u32, String>,
    pub stalls: Vec<StallRecord>,
    stalls_not_kept: u64,
    /// Frames held by `stalls` (bounded by `LIMITS.stall_frames`).
    stall_frames_held: usize,
    /// Stacks left out of kept stalls once `LIMITS.stall_frames` was reached.
    stall_stacks_not_kept: u64,
    /// Processes that exited before their maps could be read for Python: said once, at the end
    /// (a shim or build script can start dozens; a line each would bury what matters).
    maps_unread_exited: u64,
    startup_said: bool,
    /// Raw events saved for `stallscope report` (None when replaying).
    pub event_log: Option<EventLog>,
    waiting_at_start: Vec<(u32, u32)>,
    /// Unwound user stacks waiting for the event they belong to: tid -> (taken at, ips).
    pending_stacks: HashMap<u32, (u64, Vec<u64>)>,
    /// Each thread's last unwound copy, for the kernel's "repeated" records.
    last_unwound: HashMap<u32, Vec<u64>>,
    stacks_repeated: u64,
    /// Repeated records for a thread with no last copy here: counted among the drops.
    repeats_without_copy: u64,
    /// Decoded Python stacks waiting for their event: tid -> (taken at, frames, task).
    pending_python: HashMap<u32, PendingPython>,
    /// CPython interpreters of the followed processes.
    pub pythons: python::Pythons,
    /// Processes whose interpreter the kernel side has not been told about yet.
    pythons_to_register: Vec<u32>,
    /// The asyncio task each thread ran, as seen in its Python stacks: (time, task) at each
    /// change, the latest TASK_HISTORY per thread.
    task_history: HashMap<u32, std::collections::VecDeque<(u64, Option<model::TaskInfo>)>>,
    /// The kernel's drop counters when recording stopped (see `stopped`).
    kernel_drops_at_stop: Option<[u64; drop_index::COUNT as usize]>,
    /// What the recording says about Python (interpreters seen, frames read).
    python_report: model::PythonReport,
    /// Processes that may still load CPython (just started or exec'd): pid -> (tries, last).
    python_maybe_later: HashMap<u32, (u32, std::time::Instant)>,
    unwind_ns: u64,
    /// Time spent reading JavaScript frames, summed.
    v8_ns: u64,
    stack_bytes_copied: u64,
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
        });
        let resolver = Resolver {
            python_only: config.python_only,
            ..Resolver::default()
        };
        Session {
            sink: None,
            streaming: false,
            stalls_not_streamed: 0,
            exited_to_purge: Vec::new(),
            config,
            own_pid: std::process::id(),
            timeline,
            reorder: Reorder::new(reorder::Config::live(procfs::online_cpus())),
            reorder_window_ns: reorder::WINDOW_NS,
            released: Vec::new(),
            resolver,
            loss: LossDetector::default(),
            processes: HashMap::new(),
            past_processes: Vec::new(),
            exited_pids: HashSet::new(),
            exit_calls: HashMap::new(),
            forks: HashMap::new(),
            signals: HashMap::new(),
            thread_names: HashMap::new(),
            waker_names: HashMap::new(),
            stalls: Vec::new(),
            stalls_not_kept: 0,
            stall_frames_held: 0,
            stall_stacks_not_kept: 0,
            maps_unread_exited: 0,
            startup_said: false,
            event_log: None,
            waiting_at_start: Vec::new(),
            pending_stacks: HashMap::new(),
            last_unwound: HashMap::new(),
            stacks_repeated: 0,
            repeats_without_copy: 0,
            pending_python: HashMap::new(),
            pythons: python::Pythons::default(),
            pythons_to_register: Vec::new(),
            python_maybe_later: HashMap::new(),
            python_report: model::PythonReport::default(),
            task_history: HashMap::new(),
            kernel_drops_at_stop: None,
            unwind_ns: 0,
            v8_ns: 0,
            stack_bytes_copied: 0,
            unwinders: crate::stacks::unwind::Unwinders::new(),
            v8s: crate::stacks::v8::V8s::default(),
            debug_events: std::env::var_os("STALLSCOPE_DEBUG_EVENTS").is_some(),
            live_sink: None,
        }
    }

    /// Registers a process we follow, reading what /proc says about it while it lives.
    pub fn add_process(&mut self, pid: u32, started_ns: Option<u64>) {
        if self.processes.contains_key(&pid) {
            return;
        }
        // A PID the recording saw exit before belongs to a new process now: start afresh so
        // the two are never mixed (the old one's stacks were resolved when it exited).
        if self.exited_pids.remove(&pid) {
            self.resolver.symbols.forget(pid);
            self.unwinders.forget(pid);
            self.v8s.forget(pid);
        }
        let stat = procfs::stat(pid);
        let record = ProcessRecord {
            pid,
            comm: stat.as_ref().map_or_else(|| "?".into(), |s| s.comm.clone()),
            exe: procfs::exe(pid)
                .map_or_else(String::new, |p| crate::sanitize::name(&p.to_string_lossy())),
            started_ns,
            exited_ns: None,
            exit_code: None,
            exit_signal: None,
        };
        self.resolver.symbols.snapshot(pid);
        for tid in procfs::threads(pid) {
            if let Some(stat) = procfs::thread_stat(pid, tid) {
                self.thread_names.insert(tid, stat.comm);
            }
        }
        let id = procfs::process_id(pid);
        self.processes.insert(pid, ProcessState { record, id });
        self.detect_python(pid, started_ns.is_some());
        // V8's metadata is read now, not at the first stack: reading a 100 MB node binary
        // takes a while, and the first stacks' objects must be read before the GC moves them.
        self.v8s.process(pid);
    }

    /// Looks for CPython in a process; one that may still load it (`may_load_later`: a command
    /// just started, a process that just exec'd) is looked at again for a few seconds.
    fn detect_python(&mut self, pid: u32, may_load_later: bool) {
        self.pythons.forget(pid);
        match self.pythons.detect(pid) {
            Ok(Some(python::Detection::Readable(interpreter))) => {
                log::info!(
                    "process {pid} runs CPython {} ({}): Python frames on, read from {}",
                    interpreter.version,
                    interpreter.binary.display(),
                    interpreter.frames_from
                );
                self.note_interpreter(model::PythonInterpreterRecord {
                    pid,
                    version: format!("3.{}", interpreter.minor),
                    release: interpreter.version.clone(),
                    binary: interpreter.binary.display().to_string(),
                    frames: interpreter.frames_from.clone(),
                });
                self.pythons.add(pid, *interpreter);
                self.pythons_to_register.push(pid);
                self.python_maybe_later.remove(&pid);
            }
            Ok(Some(python::Detection::Unreadable(unreadable))) => {
                self.python_maybe_later.remove(&pid);
                eprintln!(
                    "stallscope: warning: process {pid}: CPython {} ({}): no Python frames, \
                     native frames only: {}",
                    unreadable.version,
                    unreadable.binary.display(),
                    unreadable.reason
                );
                let minor = unreadable.version.split('.').take(2).collect::<Vec<_>>();
                self.note_interpreter(model::PythonInterpreterRecord {
                    pid,
                    version: minor.join("."),
                    release: unreadable.version.clone(),
                    binary: unreadable.binary.display().to_string(),
                    frames: format!("not read: {}", unreadable.reason),
                });
            }
            Ok(None) if may_load_later => {
                self.python_maybe_later
                    .entry(pid)
                    .or_insert((0, std::time::Instant::now()));
            }
            Ok(None) => {}
            Err(err) => {
                self.python_maybe_later.remove(&pid);
                if gone(pid, &err) {
                    self.maps_unread_exited += 1;
                } else {
                    eprintln!("stallscope: warning: process {pid}: no Python frames: {err:#}");
                }
            }
        }
    }

    fn note_interpreter(&mut self, record: model::PythonInterpreterRecord) {
        if self.python_report.interpreters.len() < 10_000 {
            self.python_report.interpreters.push(record);
        }
    }

    /// Hands newly found interpreters to the kernel side, and looks again at processes that
    /// may have loaded one since (every 100 ms, for 5 s).
    pub fn sync_python(&mut self, probes: &mut Probes) {
        let now = std::time::Instant::now();
        let due: Vec<u32> = self
            .python_maybe_later
            .iter()
            .filter(|(_, (_, last))| now.duration_since(*last).as_millis() >= 100)
            .map(|(pid, _)| *pid)
            .collect();
        for pid in due {
            let tries = self.python_maybe_later.get(&pid).map_or(0, |t| t.0) + 1;
            if tries > 50 || !self.processes.contains_key(&pid) {
                self.python_maybe_later.remove(&pid);
                continue;
            }
            self.python_maybe_later.insert(pid, (tries, now));
            self.detect_python(pid, true);
            if let Some(entry) = self.python_maybe_later.get_mut(&pid) {
                *entry = (tries, now);
            }
        }
        for pid in std::mem::take(&mut self.pythons_to_register) {
            if let Some(interpreter) = self.pythons.get(pid)
                && let Err(err) = probes.set_python(pid, interpreter.kernel_layout())
            {
                eprintln!("stallscope: warning: {err:#}");
            }
        }
    }

    /// A thread found blocked in a wait point when recording began: a loop thread between
    /// iterations. Remembered in the recording so a replay starts from the same knowledge.
    pub fn mark_waiting(&mut self, pid: u32, tid: u32) {
        self.timeline.mark_waiting(pid, tid);
        self.waiting_at_start.push((pid, tid));
    }

    /// A user-stack copy: unwind it now (the bytes are gone after this) and keep the result
    /// for the event that follows it.
    pub fn handle_stack(&mut self, header: &profiler_common::UserStackHeader, stack: &[u8]) {
        if header.pid == self.own_pid {
            return;
        }
        if self.debug_events {
            eprintln!("stack {header:?}");
        }
        if header.flags & profiler_common::STACK_REPEATED != 0 {
            // The thread is where it was at its last copy: the same unwind.
            if let Some(ips) = self.last_unwound.get(&header.tid) {
                self.stacks_repeated += 1;
                self.pending_stacks
                    .insert(header.tid, (header.ts_ns, ips.clone()));
            } else {
                // Its last copy was lost or not kept (past MAX_TASK_THREADS): no user stack.
                self.repeats_without_copy += 1;
            }
            return;
        }
        let started = std::time::Instant::now();
        let (mut ips, fps) = self
            .unwinders
            .unwind_with_fps(header.pid, header.ip, header.sp, header.bp, stack);
        self.unwind_ns += started.elapsed().as_nanos() as u64;
        self.merge_js(header.pid, &mut ips, &fps, stack, header.sp);
        self.stack_bytes_copied += stack.len() as u64;
        if self.last_unwound.len() < MAX_TASK_THREADS || self.last_unwound.contains_key(&header.tid)
        {
            self.last_unwound.insert(header.tid, ips.clone());
        }
        self.pending_stacks.insert(header.tid, (header.ts_ns, ips));
    }

    /// JavaScript frames in place of the V8 code that ran them, read now (while the stack bytes
    /// are here and the objects they point to have not moved).
    fn merge_js(&mut self, pid: u32, ips: &mut Vec<u64>, fps: &[u64], stack: &[u8], sp: u64) {
        let Some(process) = self.v8s.process(pid) else {
            return;
        };
        let started = std::time::Instant::now();
        let found = process.frames(ips, fps, stack, sp);
        if found.iter().any(Option::is_some) {
            let mut merged = Vec::with_capacity(ips.len());
            for (&ip, js) in ips.iter().zip(found) {
                match js {
                    None => merged.push(ip),
                    // The rest of the JS frame just named.
                    Some(None) => {}
                    Some(Some(frame)) => merged.push(self.resolver.js_entry(frame).unwrap_or(ip)),
                }
            }
            *ips = merged;
        }
        self.v8_ns += started.elapsed().as_nanos() as u64;
    }

    /// Python frames: decoded now (the code objects may be freed soon) and kept for the event
    /// that follows them.
    pub fn handle_python(&mut self, header: &profiler_common::PyStackHeader, frames: &[PyFrame]) {
        if header.pid == self.own_pid {
            return;
        }
        let started = std::time::Instant::now();
        let decoded = self.pythons.decode(header.pid, frames);
        let task = self.pythons.task(header, frames, &decoded);
        if !self.pythons.changed.is_empty() {
            let changed = std::mem::take(&mut self.pythons.changed);
            self.pythons_to_register.extend(changed);
        }
        let report = &mut self.python_report;
        report.decode_ns += started.elapsed().as_nanos() as u64;
        report.stacks += 1;
        report.frames += frames.len() as u64;
        report.truncated += u64::from(header.truncated != 0);
        self.pending_python.insert(
            header.tid,
            PendingPython {
                taken_ns: header.ts_ns,
                frames: decoded,
                task,
            },
        );
    }

    pub fn handle_raw(&mut self, mut probes: Option<&mut Probes>, raw: &RawEvent) {
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
            // to a later one.
            let fresh = |taken_ns: u64| raw.ts_ns.abs_diff(taken_ns) < 1_000_000;
            let native = self
                .pending_stacks
                .remove(&owner)
                .filter(|(taken_ns, _)| fresh(*taken_ns))
                .map(|(_, ips)| ips);
            let python = self
                .pending_python
                .remove(&owner)
                .filter(|p| fresh(p.taken_ns));
            let native = match (native, &python, probes.as_deref()) {
                (Some(ips), _, _) => Some(ips),
                // Python frames without a copied native stack: the kernel walked it instead.
                (None, Some(_), Some(probes)) if raw.user_stack_id >= 0 => {
                    Some(probes.stack(raw.user_stack_id).unwrap_or_default())
                }
                _ => None,
            };
            if native.is_some() || python.is_some() {
                let frames = match python {
                    Some(python) => {
                        self.note_task(raw.tid, raw.ts_ns, python.task);
                        python.frames
                    }
                    None => Vec::new(),
                };
                raw.user_stack_id = self
                    .resolver
                    .intern_mixed(native.unwrap_or_default(), &frames);
            }
        }
        if let Some(probes) = probes.as_deref_mut()
            && (!self.pythons_to_register.is_empty() || !self.python_maybe_later.is_empty())
        {
            self.sync_python(probes);
        }
        // Stacks are attached above, in arrival order (a CPU's copy precedes its event);
        // from here on events go in timestamp order.
        let mut released = std::mem::take(&mut self.released);
        self.reorder.push(raw, &mut |r| released.push(r));
        self.handle_released(probes, &mut released);
    }

    /// Time has passed: `now_ns` was read before a drain that emptied the ring buffer, so
    /// events older than it by the reorder window can go on (see [`Reorder::advance`]).
    pub fn advance(&mut self, probes: Option<&mut Probes>, now_ns: u64) {
        let mut released = std::mem::take(&mut self.released);
        self.reorder.advance(now_ns, &mut |r| released.push(r));
        self.handle_released(probes, &mut released);
    }

    /// Recording stopped: every event still held goes on, in order.
    pub fn flush(&mut self, probes: Option<&mut Probes>) {
        let mut released = std::mem::take(&mut self.released);
        self.reorder.flush(&mut |r| released.push(r));
        self.handle_released(probes, &mut released);
    }

    fn handle_released(
        &mut self,
        mut probes: Option<&mut Probes>,
        released: &mut Vec<reorder::Released<RawEvent>>,
    ) {
        for r in released.drain(..) {
            if r.late && r.item.pid != self.own_pid {
                self.timeline.late(r.item.tid);
            }
            self.handle_event(probes.as_deref_mut(), &r.item);
        }
        // Keep the buffer (and its capacity) for the next call.
        std::mem::swap(&mut self.released, released);
    }

    fn handle_event(&mut self, mut probes: Option<&mut Probes>, raw: &RawEvent) {
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
        // Only events taken in the thread's own context carry its name (a wake-up carries the
        // waker's).
        if raw.comm[0] != 0 && !matches!(raw.kind, kind::WAKING | kind::WAKEUP) {
            // Compared as bytes: this runs for every event, and names rarely change.
            let bytes = comm_bytes(&raw.comm);
            let stored = self.thread_names.get(&raw.tid).map(String::as_bytes);
            // A name that needed escaping is stored escaped: compare it escaped too.
            if stored != Some(bytes) {
                let name = comm_string(&raw.comm);
                if stored != Some(name.as_bytes()) {
                    self.thread_names.insert(raw.tid, name);
                }
            }
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
        if raw.kind == kind::WAKING && raw.comm[0] != 0 && self.waker_names.len() < 65536 {
            // A waker may belong to a process we do not follow: its name is only here.
            self.waker_names
                .entry(raw.arg0 as u32)
                .or_insert_with(|| comm_string(&raw.comm));
        }
        if let Some(log) = self.event_log.as_mut() {
            log.write(raw);
        }
        // A runtime-specific wait point (tokio's futex) counts only for that runtime's threads;
        // for anyone else the same syscall is a lock wait inside an iteration.
        let decoded = if matches!(raw.kind, kind::WAIT_ENTER | kind::WAIT_EXIT)
            && !syscalls::is_wait_point_for(
                self.thread_names.get(&raw.tid).map_or("", String::as_str),
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
            let live = probes.is_some();
            if live
                && !self.processes.contains_key(&event.pid)
                && !self.exited_pids.contains(&event.pid)
                && event.pid == event.tid
            {
                let fork = self.forks.remove(&event.pid);
                self.add_process(event.pid, fork.map(|(ts, _)| ts));
                if let Some((_, parent)) = fork {
                    self.inherit_exe(parent, event.pid);
                }
                if let Some(process) = self.processes.get_mut(&event.pid)
                    && process.record.comm == "?"
                    && raw.comm[0] != 0
                {
                    process.record.comm = comm_string(&raw.comm);
                }
            }
        }
        if let Some(lifecycle) = decoded.lifecycle {
            self.lifecycle(probes.as_deref_mut(), lifecycle, raw.ts_ns);
        }
        if let Some(event) = decoded.timeline
            && let Some(stall) = self.timeline.handle(&event)
        {
            self.stall_ended(probes.as_deref(), stall, true);
        }
        self.say_startup(probes.is_some());
    }

    /// How long start-up took, said once: the first thread to reach its wait point after being
    /// seen created (the command's, under `record --`).
    fn say_startup(&mut self, live: bool) {
        if self.startup_said || !live || self.config.quiet {
            return;
        }
        let Some(first) = self.timeline.startups().first().copied() else {
            return;
        };
        self.startup_said = true;
        println!(
            "stallscope: {} (pid {}) started up in {} (to its first wait point: start-up, not a stall)",
            self.thread_name(first.tid),
            first.pid,
            crate::units::format_duration(first.end_ns.saturating_sub(first.start_ns))
        );
    }

    fn lifecycle(&mut self, probes: Option<&mut Probes>, lifecycle: Lifecycle, ts_ns: u64) {
        let live = probes.is_some();
        match lifecycle {
            Lifecycle::Fork {
                parent_pid,
                child_tid,
            } if live => {
                self.timeline.forked(child_tid);
                // The child may be gone from /proc by the time we look (a worker that lived
                // a few ms): until it execs, its address space is its parent's.
                self.resolver.symbols.inherit(parent_pid, child_tid);
                self.unwinders.inherit(parent_pid, child_tid);
                // A new process (not a thread) has itself as thread group leader.
                let is_process = procfs::stat(child_tid).is_some()
                    && procfs::read_text(&format!("/proc/{child_tid}/status"))
                        .and_then(|s| {
                            s.lines()
                                .find_map(|l| l.strip_prefix("Tgid:").map(|v| v.trim().to_string()))
                        })
                        .is_some_and(|tgid| tgid == child_tid.to_string());
                if is_process {
                    self.add_process(child_tid, Some(ts_ns));
                    self.inherit_exe(parent_pid, child_tid);
                } else if self.forks.len() < 65536 {
                    self.forks.insert(child_tid, (ts_ns, parent_pid));
                }
            }
            Lifecycle::Fork { child_tid, .. } => self.timeline.forked(child_tid),
            Lifecycle::Exec { pid } if live && !self.processes.contains_key(&pid) => {
                // A process the kernel side started following at this exec (`watch`'s match):
                // new to us, and it may load CPython in a moment.
                self.add_process(pid, Some(ts_ns));
            }
            Lifecycle::Exec { pid } if live => {
                // The old image's stacks are resolved against the old mappings first.
                self.resolver.resolve_pid(probes.as_deref(), pid);
                self.resolver.symbols.forget(pid);
                self.resolver.symbols.snapshot(pid);
                self.unwinders.forget(pid);
                self.v8s.forget(pid);
                if let Some(probes) = probes {
                    probes.forget_python(pid);
                }
                if self.processes.contains_key(&pid) {
                    self.detect_python(pid, true);
                    self.v8s.process(pid);
                }
                if let Some(process) = self.processes.get_mut(&pid) {
                    if let Some(stat) = procfs::stat(pid) {
                        process.record.comm = stat.comm;
                    }
                    if let Some(exe) = procfs::exe(pid) {
                        process.record.exe = crate::sanitize::name(&exe.to_string_lossy());
                    }
                }
            }
            Lifecycle::Exec { .. } => {}
            Lifecycle::ExitCall { pid, status } => {
                self.exit_calls.insert(pid, status);
            }
            Lifecycle::Signal { pid, signal } => {
                self.signals.insert(pid, signal);
            }
            Lifecycle::Exit {
                pid, group_dead, ..
            } => {
                if group_dead {
                    self.process_exited(probes, pid, ts_ns);
                }
            }
        }
    }

    /// A child that /proc could not describe (already a zombie) runs its parent's binary
    /// until it execs.
    fn inherit_exe(&mut self, parent: u32, child: u32) {
        let parent_exe = self.processes.get(&parent).map(|p| p.record.exe.clone());
        if let (Some(exe), Some(process)) = (parent_exe, self.processes.get_mut(&child))
            && process.record.exe.is_empty()
        {
            process.record.exe = exe;
        }
    }

    /// The last thread of a process is gone: record how it ended, resolve its stacks while
    /// its mappings are the ones we know, and free its PID for a new process.
    fn process_exited(&mut self, probes: Option<&mut Probes>, pid: u32, ts_ns: u64) {
        let status = self.exit_calls.remove(&pid);
        let signal = self.signals.remove(&pid);
        let Some(mut process) = self.processes.remove(&pid) else {
            return;
        };
        process.record.exited_ns = Some(ts_ns);
        match status {
            Some(code) => process.record.exit_code = Some(code),
            None => {
                process.record.exit_signal =
                    Some(signal.map_or_else(|| "a signal".into(), signal_name))
            }
        }
        let live = probes.is_some();
        if let Some(probes) = probes {
            probes.unfollow(pid);
            probes.forget_python(pid);
            self.resolver.resolve_pid(Some(&*probes), pid);
        }
        self.pythons.forget(pid);
        self.v8s.forget(pid);
        self.python_maybe_later.remove(&pid);
        if live {
            self.exited_pids.insert(pid);
        }
        if self.streaming {
            // Its stacks were resolved just above, for a stall its exit ends; the rest goes at
            // the next purge.
            self.exited_to_purge.push(pid);
            return;
        }
        self.past_processes.push(process.record);
    }

    /// `watch`: drops what is kept of the processes that exited since the last call (their
    /// symbols, unwind tables, resolved stacks, thread names). Call it from a timer, not
    /// right at the exit: the events of a dying process trail its exit by a little.
    pub fn purge_exited(&mut self, exited_threads: &[timeline::ThreadSummary]) {
        for thread in exited_threads {
            self.thread_names.remove(&thread.tid);
            self.task_history.remove(&thread.tid);
            self.last_unwound.remove(&thread.tid);
        }
        let gone: HashSet<u32> = std::mem::take(&mut self.exited_to_purge)
            .into_iter()
            .filter(|pid| !self.processes.contains_key(pid))
            .collect();
        if gone.is_empty() {
            return;
        }
        for &pid in &gone {
            self.exited_pids.remove(&pid);
            self.unwinders.forget(pid);
            self.v8s.forget(pid);
            self.pythons.forget(pid);
        }
        self.resolver.forget_pids(&gone);
    }

    /// Whether a stall is shown: iterations of loop threads always; runs only for processes
    /// with no loop thread (a worker pool's CPU work is not a stall of anyone's loop); with
    /// --thread/--thread-name, only those threads.
    fn is_reported(&self, stall: &Stall) -> bool {
        if !self.config.threads.is_empty() || self.config.thread_name.is_some() {
            let by_tid = self.config.threads.contains(&stall.tid);
            let by_name = self
                .config
                .thread_name
                .as_ref()
                .is_some_and(|name| self.thread_names.get(&stall.tid) == Some(name));
            return by_tid || by_name;
        }
        match stall.rule {
            StallRule::Iteration => true,
            StallRule::Run => {
                !self.timeline.is_loop_thread(stall.tid)
                    && !self.timeline.process_has_loop(stall.pid)
            }
        }
    }

    fn stall_ended(&mut self, probes: Option<&Probes>, stall: Stall, live: bool) {
        if !self.is_reported(&stall) {
            return;
        }
        // Streaming, a stall cannot be taken back later: a partial one (its thread was first
        // seen in the middle of it: a program's start-up before its first wait, a loop met at
        // attach) and a run (its thread may turn out to be a loop thread) are left out.
        if self.streaming && (stall.partial || stall.rule == StallRule::Run) {
            self.stalls_not_streamed += 1;
            return;
        }
        if self.stalls.len() >= LIMITS.stalls {
            self.stalls_not_kept += 1;
            return;
        }
        let record = self.stall_record(probes, &stall);
        // A run while the thread starts up is a stall only if it never reaches a wait point
        // (decided at the end, with the runs of processes that turned out to have a loop).
        if live
            && !stall.startup
            && let Some(sink) = self.live_sink.as_mut()
        {
            sink.stall(&record, self.processes.get(&record.pid).map(|p| &p.record));
        }
        if let Some(sink) = self.sink.as_mut() {
            sink.stall(&record, self.processes.get(&record.pid).map(|p| &p.record));
        }
        if self.streaming {
            return;
        }
        let mut record = record;
        self.stall_stacks_not_kept += keep_within_frame_budget(
            &mut record,
            &mut self.stall_frames_held,
            LIMITS.stall_frames,
        );
        self.stalls.push(record);
    }

    fn stall_record(&mut self, probes: Option<&Probes>, stall: &Stall) -> StallRecord {
        let stacks: Vec<StackRecord> = stall
            .stacks
            .iter()
            .map(|s| StackRecord {
                kind: s.kind,
                weight_ns: s.weight_ns,
                count: s.count,
                syscall: syscall_name(s.syscall),
                frames: self.resolver.frames(probes, s.stack),
                waker: s.waker.map(|w| self.waker_record(probes, w)),
            })
            .collect();
        let stacks = merge_same_frames(stacks);
        StallRecord {
            pid: stall.pid,
            tid: stall.tid,
            comm: self.thread_name(stall.tid),
            start_ns: stall.start_ns,
            end_ns: stall.end_ns,
            duration_ns: stall.duration_ns(),
            on_cpu_ns: stall.on_cpu_ns,
            off_cpu_ns: stall.off_cpu_ns,
            runqueue_ns: stall.runqueue_ns,
            rule: stall.rule,
            partial: stall.partial,
            data_lost: stall.data_lost,
            unaccounted_ns: stall.unaccounted_ns,
            adds_up: stall.unaccounted_ns <= model::ADDS_UP_NS,
            unaccounted_why: unaccounted_why(stall, self.reorder_window_ns),
            late_events: stall.late_events,
            missed_switches: stall.odd_transitions,
            task: self.stall_task(stall),
            stacks,
        }
    }

    /// Remembers which asyncio task a thread ran at `ts_ns` (only changes are kept).
    fn note_task(&mut self, tid: u32, ts_ns: u64, task: Option<model::TaskInfo>) {
        if !self.task_history.contains_key(&tid) && self.task_history.len() >= MAX_TASK_THREADS {
            return;
        }
        let history = self.task_history.entry(tid).or_default();
        if history.back().map(|(_, last)| last) == Some(&task) {
            return;
        }
        if history.len() >= TASK_HISTORY {
            history.pop_front();
        }
        history.push_back((ts_ns, task));
    }

    /// The asyncio task of a stall: the one its thread ran longest during the stall (a loop
    /// iteration can run several callbacks; the one that held the loop is what matters).
    fn stall_task(&self, stall: &Stall) -> Option<model::TaskInfo> {
        let history = self.task_history.get(&stall.tid)?;
        let (start, end) = (stall.start_ns, stall.end_ns);
        // The task current at the start, then each change during the stall.
        let mut current = history
            .iter()
            .rev()
            .find(|(ts, _)| *ts <= start)
            .and_then(|(_, task)| task.as_ref());
        let mut since = start;
        let mut time: Vec<(&model::TaskInfo, u64)> = Vec::new();
        fn credit<'a>(
            time: &mut Vec<(&'a model::TaskInfo, u64)>,
            task: Option<&'a model::TaskInfo>,
            ns: u64,
        ) {
            if let Some(task) = task {
                match time.iter_mut().find(|(t, _)| *t == task) {
                    Some((_, total)) => *total += ns,
                    None => time.push((task, ns)),
                }
            }
        }
        for (ts, task) in history.iter().filter(|(ts, _)| (start..=end).contains(ts)) {
            credit(&mut time, current, ts - since);
            current = task.as_ref();
            since = *ts;
        }
        credit(&mut time, current, end.saturating_sub(since));
        time.into_iter()
            .max_by_key(|(_, ns)| *ns)
            .map(|(task, _)| task.clone())
    }

    fn waker_record(
        &mut self,
        probes: Option<&Probes>,
        waker: timeline::Waker,
    ) -> model::WakerRecord {
        let mut frames = self.resolver.frames(probes, waker.stack);
        let comm = self
            .thread_names
            .get(&waker.tid)
            .or_else(|| self.waker_names.get(&waker.tid))
            .cloned()
            .unwrap_or_else(|| "?".into());
        // A wake-up from an interrupt (a timer expiring, I/O completing) runs in whatever task
        // the interrupt landed on: that task did not wake anyone. Name the interrupt instead.
        let in_interrupt = |name: &str| {
            name.starts_with("sysvec_")
                || name.starts_with("asm_sysvec_")
                || name.contains("irq_")
                || name.contains("softirq")
                || name.contains("common_interrupt")
        };
        let idle = comm.starts_with("swapper");
        if idle
            || frames
                .iter()
                .any(|f| f.kind == FrameKind::Kernel && in_interrupt(&f.function))
        {
            let timer = frames
                .iter()
                .any(|f| f.function.starts_with("hrtimer_wakeup"));
            frames.retain(|f| f.kind == FrameKind::Kernel);
            return model::WakerRecord {
                pid: 0,
                tid: 0,
                comm: if timer {
                    "timer interrupt"
                } else {
                    "interrupt"
                }
                .into(),
                frames,
            };
        }
        model::WakerRecord {
            pid: waker.pid,
            tid: waker.tid,
            comm,
            frames,
        }
    }

    fn thread_name(&self, tid: u32) -> String {
        self.thread_names
            .get(&tid)
            .cloned()
            .unwrap_or_else(|| "?".into())
    }

    /// Recording has stopped: the kernel side stops following anyone (so nothing it drops while
    /// the outputs are written counts as lost), and its drop counters are taken now.
    pub fn stopped(&mut self, probes: &mut Probes) {
        probes.unfollow_all();
        self.kernel_drops_at_stop = Some(probes.drops());
    }

    /// Processes gone from /proc without an exit event (it was lost with a full ring buffer):
    /// recorded as exited now, so churn stays right; how they ended is unknown.
    pub fn reap_vanished(&mut self, now_ns: u64) {
        let vanished: Vec<u32> = self
            .processes
            .iter()
            .filter(|(_, p)| p.id.is_some_and(|id| !procfs::is_alive(id)))
            .map(|(pid, _)| *pid)
            .collect();
        for pid in vanished {
            if let Some(mut process) = self.processes.remove(&pid) {
                process.record.exited_ns = Some(now_ns);
                process.record.exit_signal = Some("unknown (exit event lost)".into());
                self.exited_pids.insert(pid);
                self.past_processes.push(process.record);
            }
        }
    }

    pub fn all_targets_gone(&self) -> bool {
        self.processes
            .values()
            .all(|p| !p.id.is_some_and(procfs::is_alive))
    }

    pub fn finish(mut self, probes: Option<&Probes>, start_ns: u64, end_ns: u64) -> Recording {
        let finished = std::mem::replace(
            &mut self.timeline,
            Timeline::new(timeline::Config {
                threshold_ns: u64::MAX,
                sample_period_ns: 1,
                max_stacks_per_span: 0,
                max_offcpu_entries: 0,
                max_marks: 0,
                min_mark_ns: 0,
            }),
        );
        // Decide "is this thread a loop thread" with the full knowledge of the recording.
        let result = finished.finish(end_ns);
        let loop_tids: HashSet<u32> = result
            .threads
            .iter()
            .filter(|t| t.is_loop)
            .map(|t| t.tid)
            .collect();
        let loop_pids: HashSet<u32> = result
            .threads
            .iter()
            .filter(|t| t.is_loop)
            .map(|t| t.pid)
            .collect();
        for stall in result.open_stalls {
            self.stall_ended(probes, stall, false);
        }
        // Runs reported before a thread of their process turned out to be a loop thread.
        let selected = !self.config.threads.is_empty() || self.config.thread_name.is_some();
        self.stalls.retain(|s| {
            selected
                || s.rule == StallRule::Iteration
                || !(loop_tids.contains(&s.tid) || loop_pids.contains(&s.pid))
        });
        self.stalls.sort_by_key(|s| s.start_ns);

        let mut offcpu: Vec<_> = result.offcpu.into_iter().collect();
        offcpu.sort_by_key(|entry| std::cmp::Reverse(entry.1));
        let offcpu_dropped = offcpu.len().saturating_sub(LIMITS.offcpu_written) as u64;
        let offcpu = offcpu
            .into_iter()
            .take(LIMITS.offcpu_written)
            .map(
                |((pid, tid, stack, syscall, waker), weight_ns)| OffCpuRecord {
                    pid,
                    tid,
                    comm: self.thread_name(tid),
                    weight_ns,
                    syscall: syscall_name(syscall),
                    frames: self.resolver.frames(probes, stack),
                    waker: waker.map(|w| self.waker_record(probes, w)),
                },
            )
            .collect();
        let spans = result
            .marks
            .iter()
            .map(|mark| model::SpanRecord {
                pid: mark.pid,
                tid: mark.tid,
                kind: match mark.kind {
                    StackKind::OnCpu => "sample",
                    other => other.as_str(),
                }
                .to_string(),
                start_ns: mark.start_ns,
                end_ns: mark.end_ns,
                syscall: syscall_name(mark.syscall),
                label: mark
                    .stack
                    .map(|key| span_label(&self.resolver.frames(probes, key)))
                    .unwrap_or_default(),
            })
            .collect();
        let startups = result
            .startups
            .iter()
            .map(|s| model::StartupRecord {
                pid: s.pid,
                tid: s.tid,
                comm: self.thread_name(s.tid),
                start_ns: s.start_ns,
                end_ns: s.end_ns,
            })
            .collect();
        let threads = result
            .threads
            .iter()
            .map(|t| model::ThreadRecord {
                pid: t.pid,
                tid: t.tid,
                comm: self.thread_name(t.tid),
                is_loop: t.is_loop,
                iterations: t.iterations,
                iteration_marks: t
                    .iteration_marks
                    .buckets()
                    .iter()
                    .map(|b| model::IterationBucketRecord {
                        start_ns: b.start_ns,
                        end_ns: b.end_ns,
                        count: b.count,
                        busy_ns: b.busy_ns,
                        longest_ns: b.longest_ns,
                    })
                    .collect(),
            })
            .collect();
        // Counted when recording stopped: the programs run on while outputs are written.
        let kernel_drops = self
            .kernel_drops_at_stop
            .or_else(|| probes.map(Probes::drops))
            .unwrap_or_default();
        let mut processes: Vec<ProcessRecord> = self
            .past_processes
            .iter()
            .cloned()
            .chain(self.processes.values().map(|p| p.record.clone()))
            .collect();
        processes.sort_by_key(|p| (p.pid, p.started_ns));
        let v8_stats = self.v8s.stats();
        let mut hints = hints(&processes, &self.v8s);
        if !self.resolver.symbols.unopenable.is_empty() {
            hints.push(format!(
                "{} mapped file(s) could not be opened (deleted or replaced since they started, and /proc/PID/map_files needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN): their frames are named by offset and their stacks may be short; e.g. {}",
                self.resolver.symbols.unopenable.len(),
                self.resolver.symbols.unopenable.iter().next().map_or("", String::as_str)
            ));
        }
        if !self.resolver.symbols.debug_refused.is_empty() {
            hints.push(format!(
                "{} file(s) have a debug link or .dwp file that is not a plain regular file beside them (a symlink, a FIFO, a path, or too big): their debug files were not read, so their frames have no file:line; e.g. {}",
                self.resolver.symbols.debug_refused.len(),
                self.resolver.symbols.debug_refused.iter().next().map_or("", String::as_str)
            ));
        }
        if self.maps_unread_exited > 0 {
            hints.push(format!(
                "{} short-lived {} exited before their maps could be read (no Python frames for them)",
                self.maps_unread_exited,
                if self.maps_unread_exited == 1 { "process" } else { "processes" }
            ));
        }
        let kernel_frames_seen = self.resolver.seen.iter().any(|k| k.kernel >= 0);
        if kernel_frames_seen && self.resolver.symbols.kernel_symbols_hidden() {
            hints.push(
                "kernel frames are unnamed: /proc/kallsyms hides its addresses from this user; run as root or add CAP_SYSLOG (and check kernel.kptr_restrict)".into(),
            );
        }
        Recording {
            version: model::SCHEMA_VERSION,
            threshold_ns: self.config.threshold_ns,
            recorded_ns: end_ns.saturating_sub(start_ns),
            start_ns,
            end_ns,
            sample_freq_hz: self.config.freq_hz,
            lost_events: self
                .loss
                .lost
                .max(kernel_drops[drop_index::RINGBUF_FULL as usize]),
            drops: Drops {
                ringbuf_full: kernel_drops[drop_index::RINGBUF_FULL as usize],
                kernel_stack: kernel_drops[drop_index::KERNEL_STACK as usize],
                user_stack: kernel_drops[drop_index::USER_STACK as usize],
                follow_map_full: kernel_drops[drop_index::FOLLOW_MAP_FULL as usize],
                iterations_discarded: result.anomalies.iterations_discarded,
                stacks_dropped: result.anomalies.stacks_dropped
                    + self.stalls_not_kept
                    + self.stall_stacks_not_kept
                    + offcpu_dropped,
                events_not_saved: 0,
                repeats_without_copy: self.repeats_without_copy,
            },
            processes,
            threads,
            stalls: self.stalls,
            offcpu,
            hints,
            unwind: model::UnwindReport {
                stacks: self.unwinders.stats.stacks,
                frames: self.unwinders.stats.frames,
                truncated: self.unwinders.stats.truncated,
                bytes_copied: self.stack_bytes_copied,
                unwind_ns: self.unwind_ns,
                repeated: self.stacks_repeated,
                files_parsed: self.unwinders.stats.files_parsed,
                files_failed: self.unwinders.stats.files_failed,
                symbol_failures: self.resolver.symbols.failures,
            },
            python: model::PythonReport {
                unreadable_frames: self.pythons.unreadable_frames,
                ..self.python_report
            },
            javascript: model::JsReport {
                runtimes: self
                    .v8s
                    .found
                    .iter()
                    .map(|(pid, version, binary)| model::JsRuntimeRecord {
                        pid: *pid,
                        v8_version: version.clone(),
                        binary: binary.clone(),
                    })
                    .collect(),
                frames: v8_stats.frames,
                unreadable_frames: v8_stats.unreadable,
                read_ns: self.v8_ns,
            },
            spans,
            spans_dropped: result.marks_dropped,
            waiting_at_start: self.waiting_at_start,
            startups,
            kernel_limits: Vec::new(),
            reorder: {
                let stats = self.reorder.stats();
                let a = result.anomalies;
                model::ReorderReport {
                    window_ns: self.reorder_window_ns,
                    late_events: stats.late,
                    reordered: stats.reordered,
                    released_early: stats.released_early,
                    max_held: stats.max_held,
                    missed_switches: a.switch_out_not_running
                        + a.switch_in_while_running
                        + a.not_running,
                    breakdown_mismatches: a.breakdown_mismatch,
                }
            },
            verdict: model::Verdict {
                budgets: Vec::new(),
                passed: true,
            },
        }
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

fn signal_name(signal: i32) -> String {
    const NAMES: [&str; 32] = [
        "",
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    usize::try_from(signal)
        .ok()
        .and_then(|i| NAMES.get(i))
        .filter(|n| !n.is_empty())
        .map_or_else(|| format!("signal {signal}"), |n| n.to_string())
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

/// Whether reading a process failed because it is gone: its /proc entry went away or it is a
/// zombie, or the read said so (ENOENT, ESRCH).
fn gone(pid: u32, err: &anyhow::Error) -> bool {
    let said_gone = err.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|e| {
            e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(3)
        })
    });
    // A zombie (exited, not yet reaped) still has its /proc entry, with no maps.
    said_gone || procfs::stat(pid).is_none_or(|s| matches!(s.state, 'Z' | 'X'))
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
        .map(|f| f.function.clone())
        .unwrap_or_default()
}

fn comm_bytes(comm: &[u8; 16]) -> &[u8] {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    &comm[..end]
}

fn comm_string(comm: &[u8; 16]) -> String {
    crate::sanitize::name_bytes(comm_bytes(comm))
}

/// Keeps a stall's stacks while the frames held by all kept stalls stay within `limit`;
/// past it the stall keeps its times and breakdown but no stacks. Returns the stacks left out.
fn keep_within_frame_budget(record: &mut StallRecord, held: &mut usize, limit: usize) -> u64 {
    let frames: usize = record
        .stacks
        .iter()
        .map(|s| s.frames.len() + s.waker.as_ref().map_or(0, |w| w.frames.len()))
        .sum();
    if held.saturating_add(frames) <= limit {
        *held += frames;
        return 0;
    }
    let dropped = record.stacks.len() as u64;
    record.stacks = Vec::new();
    dropped
}

/// Task changes remembered per thread: a stall is reported when it ends, so only the recent
/// past is needed.
const TASK_HISTORY: usize = 4096;
const MAX_TASK_THREADS: usize = 65536;

/// A decoded Python stack waiting for the event it was taken for.
struct PendingPython {
    taken_ns: u64,
    frames: Vec<python::DecodedFrame>,
    task: Option<model::TaskInfo>,
}

/// Stack ids to frames, cached. Live, it reads the kernel's stack map and symbolizes; replaying
/// a saved recording, every key was resolved when it was saved.
#[derive(Default)]
pub struct Resolver {
    pub symbols: Symbols,
    stack_cache: HashMap<i32, Vec<u64>>,
    resolved: HashMap<StackKey, Vec<Frame>>,
    /// Every stack seen in the events, resolved at the end so a saved recording can be
    /// re-rendered with a lower threshold.
    pub seen: HashSet<StackKey>,
    /// User stacks unwound in userspace, by the ids handed out for them (from INTERNED_BASE,
    /// apart from the kernel stack map's ids).
    /// (Each stack stored once, shared by the lookup table and the list.)
    interned: foldhash::HashMap<std::sync::Arc<[u64]>, i32>,
    interned_ips: Vec<std::sync::Arc<[u64]>>,
    pub interned_dropped: u64,
    /// Python frames met so far; an unwound stack refers to them by index (see PY_MARK).
    python_frames: Vec<Frame>,
    python_frame_ids: foldhash::HashMap<Frame, u64>,
    /// JavaScript frames met so far; an unwound stack refers to them by index (see JS_MARK).
    js_frames: Vec<Frame>,
    js_frame_ids: foldhash::HashMap<Frame, u64>,
    /// `--python-only`: stacks with Python frames show only those.
    pub python_only: bool,
}

/// Marks an entry of an unwound stack as a Python frame (user addresses never have this bit);
/// the low bits index `python_frames`, PY_ENTRY marks the outermost frame of an interpreter run.
const PY_MARK: u64 = 1 << 63;
const PY_ENTRY: u64 = 1 << 62;
const PY_INDEX: u64 = (1 << 62) - 1;
/// Distinct Python frames (function, file, line) kept.
const MAX_PYTHON_FRAMES: usize = 200_000;
/// Marks an entry of an unwound stack as a JavaScript frame in place of the native one (user
/// addresses stay below 2^47; PY_MARK is clear); the low bits index `js_frames`.
const JS_MARK: u64 = 1 << 61;
const JS_INDEX: u64 = JS_MARK - 1;
/// Distinct JavaScript frames kept.
const MAX_JS_FRAMES: usize = 200_000;

/// First id given to an unwound user stack; kernel stack-map ids are far below.
pub const INTERNED_BASE: i32 = 1 << 24;
/// Distinct unwound stacks kept (bounded memory); past it new ones are dropped and counted.
const MAX_INTERNED: usize = 100_000;

/// Bound on distinct stacks remembered for saving; past it, re-rendering shows fewer frames.
const MAX_SEEN_STACKS: usize = 200_000;

impl Resolver {
    pub fn from_saved(saved: Vec<SavedStack>) -> Self {
        let resolved = saved
            .into_iter()
            .map(|s| {
                (
                    StackKey {
                        pid: s.pid,
                        kernel: s.kernel,
                        user: s.user,
                    },
                    s.frames,
                )
            })
            .collect();
        Resolver {
            resolved,
            ..Default::default()
        }
    }

    /// The id of an unwound user stack with Python frames (innermost first) to merge in.
    pub fn intern_mixed(&mut self, mut ips: Vec<u64>, python: &[python::DecodedFrame]) -> i32 {
        for frame in python {
            let index = match self.python_frame_ids.get(&frame.frame) {
                Some(&index) => index,
                None if self.python_frames.len() < MAX_PYTHON_FRAMES => {
                    let index = self.python_frames.len() as u64;
                    self.python_frames.push(frame.frame.clone());
                    self.python_frame_ids.insert(frame.frame.clone(), index);
                    index
                }
                None => {
                    self.interned_dropped += 1;
                    continue;
                }
            };
            ips.push(PY_MARK | if frame.entry { PY_ENTRY } else { 0 } | index);
        }
        self.intern(ips)
    }

    /// The entry standing for a JavaScript frame in an unwound stack (None when the table is
    /// full: the native frame stays).
    pub fn js_entry(&mut self, frame: Frame) -> Option<u64> {
        if let Some(&index) = self.js_frame_ids.get(&frame) {
            return Some(JS_MARK | index);
        }
        if self.js_frames.len() >= MAX_JS_FRAMES {
            self.interned_dropped += 1;
            return None;
        }
        let index = self.js_frames.len() as u64;
        self.js_frames.push(frame.clone());
        self.js_frame_ids.insert(frame, index);
        Some(JS_MARK | index)
    }

    /// Native user frames (JavaScript ones in place) with the Python frames of an unwound
    /// stack merged in.
    fn user_frames(&mut self, pid: u32, ips: &[u64]) -> Vec<Frame> {
        let (python, native): (Vec<u64>, Vec<u64>) = ips.iter().partition(|&&ip| ip & PY_MARK != 0);
        let mut frames = Vec::with_capacity(native.len());
        for (index, &ip) in native.iter().enumerate() {
            if ip & JS_MARK != 0 {
                frames.extend(self.js_frames.get((ip & JS_INDEX) as usize).cloned());
            } else {
                frames.extend(self.symbols.user_frame(pid, ip, index == 0));
            }
        }
        let native = frames;
        if python.is_empty() {
            return native;
        }
        let python: Vec<python::DecodedFrame> = python
            .iter()
            .filter_map(|&entry| {
                Some(python::DecodedFrame {
                    frame: self.python_frames.get((entry & PY_INDEX) as usize)?.clone(),
                    entry: entry & PY_ENTRY != 0,
                    coroutine: false,
                })
            })
            .collect();
        python::merge(native, &python)
    }

    fn saw(&mut self, key: StackKey) {
        if self.seen.len() < MAX_SEEN_STACKS {
            self.seen.insert(key);
        }
    }

    /// The id of an unwound user stack (the same stack always gets the same id).
    pub fn intern(&mut self, ips: Vec<u64>) -> i32 {
        if let Some(&id) = self.interned.get(ips.as_slice()) {
            return id;
        }
        if self.interned_ips.len() >= MAX_INTERNED {
            self.interned_dropped += 1;
            return profiler_common::NO_STACK;
        }
        let id = INTERNED_BASE + self.interned_ips.len() as i32;
        let ips: std::sync::Arc<[u64]> = ips.into();
        self.interned_ips.push(ips.clone());
        self.interned.insert(ips, id);
        id
    }

    fn stack_ips(&mut self, probes: &Probes, id: i32) -> Vec<u64> {
        if id < 0 {
            return Vec::new();
        }
        if id >= INTERNED_BASE {
            return self
                .interned_ips
                .get((id - INTERNED_BASE) as usize)
                .map(|ips| ips.to_vec())
                .unwrap_or_default();
        }
        if let Some(ips) = self.stack_cache.get(&id) {
            return ips.clone();
        }
        let ips = probes.stack(id).unwrap_or_default();
        self.stack_cache.insert(id, ips.clone());
        ips
    }

    /// Kernel frames (innermost) then user frames, as DESIGN.md orders them.
    pub fn frames(&mut self, probes: Option<&Probes>, key: StackKey) -> Vec<Frame> {
        if let Some(frames) = self.resolved.get(&key) {
            return frames.clone();
        }
        let Some(probes) = probes else {
            return Vec::new();
        };
        let kernel_ips = self.stack_ips(probes, key.kernel);
        let user_ips = self.stack_ips(probes, key.user);
        let mut frames = self.symbols.kernel_frames(&kernel_ips);
        frames.extend(self.user_frames(key.pid, &user_ips));
        if self.python_only && frames.iter().any(|f| f.kind == FrameKind::Python) {
            frames.retain(|f| f.kind == FrameKind::Python);
        }
        self.resolved.insert(key, frames.clone());
        frames
    }

    /// Forgets processes that are gone: their symbols and the stacks resolved for it (`watch`).
    pub fn forget_pids(&mut self, pids: &HashSet<u32>) {
        for &pid in pids {
            self.symbols.forget(pid);
        }
        self.resolved.retain(|key, _| !pids.contains(&key.pid));
        self.seen.retain(|key| !pids.contains(&key.pid));
    }

    /// Resolves now every stack seen of one process (it is exiting: its PID may be reused).
    pub fn resolve_pid(&mut self, probes: Option<&Probes>, pid: u32) {
        let keys: Vec<StackKey> = self.seen.iter().filter(|k| k.pid == pid).copied().collect();
        for key in keys {
            self.frames(probes, key);
        }
    }

    /// Resolves every stack seen, for saving next to the recording.
    pub fn save_all(&mut self, probes: Option<&Probes>) -> Vec<SavedStack> {
        let mut keys: Vec<StackKey> = self.seen.iter().copied().collect();
        keys.sort();
        keys.into_iter()
            .map(|key| SavedStack {
                pid: key.pid,
                kernel: key.kernel,
                user: key.user,
                frames: self.frames(probes, key),
            })
            .collect()
    }
}

/// `symbols.json`: every distinct frame once, and each stack as indices into that table (a
/// Python service's stacks share most of their 50-odd frames).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SavedSymbols {
    pub frames: Vec<Frame>,
    pub stacks: Vec<SavedStackFrames>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SavedStackFrames {
    pub pid: u32,
    pub kernel: i32,
    pub user: i32,
    pub frames: Vec<u32>,
}

impl SavedSymbols {
    pub fn from_stacks(stacks: &[SavedStack]) -> Self {
        let mut saved = SavedSymbols::default();
        let mut index: HashMap<&Frame, u32> = HashMap::new();
        for stack in stacks {
            let frames = stack
                .frames
                .iter()
                .map(|frame| {
                    *index.entry(frame).or_insert_with(|| {
                        saved.frames.push(frame.clone());
                        saved.frames.len() as u32 - 1
                    })
                })
                .collect();
            saved.stacks.push(SavedStackFrames {
                pid: stack.pid,
                kernel: stack.kernel,
                user: stack.user,
                frames,
            });
        }
        saved
    }

    pub fn into_stacks(self) -> Vec<SavedStack> {
        let frames = self.frames;
        self.stacks
            .into_iter()
            .map(|s| SavedStack {
                pid: s.pid,
                kernel: s.kernel,
                user: s.user,
                frames: s
                    .frames
                    .iter()
                    .filter_map(|&i| frames.get(i as usize).cloned())
                    .collect(),
            })
            .collect()
    }
}

/// Reads `symbols.json`: the frame-table form, or the list of stacks with their frames that
/// recordings made before it hold.
pub fn parse_symbols(text: &str) -> serde_json::Result<Vec<SavedStack>> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Table(SavedSymbols),
        List(Vec<SavedStack>),
    }
    Ok(match serde_json::from_str(text)? {
        Either::Table(table) => table.into_stacks(),
        Either::List(list) => list,
    })
}

/// One resolved stack in `symbols.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SavedStack {
    pub pid: u32,
    pub kernel: i32,
    pub user: i32,
    pub frames: Vec<Frame>,
}

/// Raw events saved as they arrive (`events.bin`: the 80-byte records back to back), bounded.
pub struct EventLog {
    writer: BufWriter<File>,
    written: u64,
    limit: u64,
    pub not_saved: u64,
    pub failed: Option<String>,
}

pub const EVENTS_BIN: &str = "events.bin";
pub const SYMBOLS_JSON: &str = "symbols.json";

impl EventLog {
    pub fn create(dir: &Path, limit: u64) -> Result<Self> {
        let path = dir.join(EVENTS_BIN);
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(EventLog {
            writer: BufWriter::with_capacity(1 << 20, file),
            written: 0,
            limit,
            not_saved: 0,
            failed: None,
        })
    }

    fn write(&mut self, raw: &RawEvent) {
        if self.written >= self.limit || self.failed.is_some() {
            self.not_saved += 1;
            return;
        }
        // SAFETY: RawEvent is plain data without padding (asserted in profiler-common).
        let bytes = unsafe {
            std::slice::from_raw_parts((raw as *const RawEvent).cast::<u8>(), size_of::<RawEvent>())
        };
        match self.writer.write_all(bytes) {
            Ok(()) => self.written += 1,
            Err(err) => self.failed = Some(err.to_string()),
        }
    }

    pub fn finish(mut self) -> Result<u64> {
        if let Some(err) = self.failed.take() {
            anyhow::bail!("saving events failed: {err}");
        }
        self.writer.flush().context("saving events")?;
        Ok(self.not_saved)
    }
}

/// Reads a saved `events.bin` back.
pub fn read_event_log(dir: &Path) -> Result<Vec<RawEvent>> {
    let path = dir.join(EVENTS_BIN);
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let size = size_of::<RawEvent>();
    if bytes.len() % size != 0 {
        anyhow::bail!(
            "{} is truncated or corrupted ({} bytes is not a whole number of {size}-byte events)",
            path.display(),
            bytes.len()
        );
    }
    Ok(bytes
        .chunks_exact(size)
        .filter_map(events::decode)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn config() -> RecordConfig {
        RecordConfig {
            target: crate::config::Target::Pids(Vec::new()),
            threshold_ns: 100 * MS,
            duration: None,
            freq_hz: 100,
            out: None,
            threads: Vec::new(),
            thread_name: None,
            quiet: true,
            ring_buffer_bytes: 0,
            budgets: Vec::new(),
            formats: crate::config::Formats::ALL,
            stack_bytes: 0,
            python_only: false,
        }
    }

    /// Issue #22 end to end through the session (the wiring from raw events to the stall):
    /// CPU 1's switch-in arrives before CPU 0's switch-out it follows; the reorder stage puts
    /// them in order, and the breakdown is right and adds up. (That a replay of `events.bin`
    /// gives the same stalls is checked on real recordings by tests/tests/stress_breakdown.rs.)
    #[test]
    fn events_out_of_order_across_cpus_give_the_right_breakdown() {
        const PID: u32 = 4242;
        let mut seqs = [0u64; 2];
        let mut raw = |ms_x10: u64, cpu: u32, kind: u32| {
            seqs[cpu as usize] += 1;
            RawEvent {
                ts_ns: ms_x10 * MS / 10,
                seq: seqs[cpu as usize],
                kind,
                cpu,
                pid: PID,
                tid: PID,
                syscall: if matches!(kind, kind::WAIT_ENTER | kind::WAIT_EXIT) {
                    232 // epoll_wait
                } else {
                    -1
                },
                // SWITCH_OUT: preempted (TASK_REPORT_MAX), still runnable.
                arg0: if kind == kind::SWITCH_OUT { 0x100 } else { 0 },
                kernel_stack_id: -1,
                user_stack_id: -1,
                comm: *b"server\0\0\0\0\0\0\0\0\0\0",
                ..RawEvent::default()
            }
        };
        let mut arrival = vec![raw(10, 0, kind::WAIT_EXIT)];
        arrival.extend((1..=20).map(|i| raw(10 + i * 100, 0, kind::SAMPLE)));
        arrival.push(raw(2045, 1, kind::SWITCH_IN));
        arrival.push(raw(2040, 0, kind::SWITCH_OUT));
        arrival.extend((21..=24).map(|i| raw(10 + i * 100, 1, kind::SAMPLE)));
        arrival.push(raw(2510, 1, kind::WAIT_ENTER));

        let mut live = Session::new(config());
        live.mark_waiting(PID, PID);
        for event in &arrival {
            live.handle_raw(None, event);
        }
        live.flush(None);
        let recording = live.finish(None, 0, 3000 * MS);
        assert_eq!(recording.stalls.len(), 1);
        let stall = &recording.stalls[0];
        assert_eq!(stall.duration_ns, 250 * MS);
        assert_eq!(stall.runqueue_ns, MS / 2, "{stall:?}");
        assert_eq!(stall.on_cpu_ns, 250 * MS - MS / 2);
        assert!(stall.adds_up && stall.unaccounted_ns == 0, "{stall:?}");
        assert_eq!(recording.reorder.reordered, 1);
        assert_eq!(recording.reorder.late_events, 0);
        assert_eq!(recording.reorder.window_ns, reorder::WINDOW_NS);
    }

    /// A "repeated" stack record for a thread whose previous copy the agent never had is a
    /// lost user stack, counted among the drops (and so in the summary's "stacks lost"); one
    /// for a thread it has a copy of reuses that copy and is no drop.
    #[test]
    fn a_repeated_stack_without_a_previous_copy_is_counted_as_a_drop() {
        const PID: u32 = 4242;
        let header = |tid: u32, flags: u32| profiler_common::UserStackHeader {
            ts_ns: MS,
            pid: PID,
            tid,
            flags,
            ..Default::default()
        };
        let mut session = Session::new(config());
        session.handle_stack(&header(PID + 1, profiler_common::STACK_REPEATED), &[]);
        session.handle_stack(&header(PID + 2, 0), &[]);
        session.handle_stack(&header(PID + 2, profiler_common::STACK_REPEATED), &[]);
        let recording = session.finish(None, 0, 10 * MS);
        assert_eq!(recording.drops.repeats_without_copy, 1);
        assert_eq!(recording.drops.user_stacks_lost(), 1);
        assert_eq!(recording.unwind.repeated, 1);
    }

    fn frame(name: &str) -> Frame {
        Frame {
            function: name.into(),
            file: Some("app.py".into()),
            line: Some(3),
            module: None,
            kind: FrameKind::Python,
        }
    }

    fn stall_with(stacks: usize, frames_each: usize) -> StallRecord {
        StallRecord {
            pid: 1,
            tid: 1,
            comm: "app".into(),
            start_ns: 0,
            end_ns: 300 * MS,
            duration_ns: 300 * MS,
            on_cpu_ns: 300 * MS,
            off_cpu_ns: 0,
            runqueue_ns: 0,
            rule: StallRule::Run,
            partial: false,
            data_lost: false,
            unaccounted_ns: 0,
            adds_up: true,
            unaccounted_why: None,
            late_events: 0,
            missed_switches: 0,
            task: None,
            stacks: (0..stacks)
                .map(|_| StackRecord {
                    kind: StackKind::OnCpu,
                    weight_ns: MS,
                    count: 1,
                    syscall: None,
                    frames: vec![frame("handler"); frames_each],
                    waker: None,
                })
                .collect(),
        }
    }

    #[test]
    fn kept_stalls_hold_no_more_frames_than_the_budget_and_the_rest_is_counted() {
        let limit = 10_000;
        let mut held = 0;
        let mut dropped = 0;
        let mut kept = Vec::new();
        for _ in 0..100 {
            let mut stall = stall_with(20, 100);
            dropped += keep_within_frame_budget(&mut stall, &mut held, limit);
            kept.push(stall);
        }
        let frames: usize = kept
            .iter()
            .flat_map(|s| &s.stacks)
            .map(|s| s.frames.len())
            .sum();
        assert!(frames <= limit, "{frames} frames held");
        assert_eq!(
            frames, 10_000,
            "the first five stalls keep all their stacks"
        );
        assert_eq!(dropped, 95 * 20, "every stack left out is counted");
        // Past the budget a stall is still reported, with its times.
        assert_eq!(kept.len(), 100);
        assert_eq!(kept[99].duration_ns, 300 * MS);
    }

    #[test]
    fn symbols_are_saved_with_each_frame_once_and_read_back_in_both_forms() {
        let stacks = vec![
            SavedStack {
                pid: 1,
                kernel: -1,
                user: INTERNED_BASE,
                frames: vec![frame("leaf"), frame("main")],
            },
            SavedStack {
                pid: 1,
                kernel: 4,
                user: INTERNED_BASE + 1,
                frames: vec![frame("other"), frame("main")],
            },
        ];
        let table = SavedSymbols::from_stacks(&stacks);
        assert_eq!(table.frames.len(), 3, "main is stored once");
        let text = serde_json::to_string(&table).expect("serialize");
        assert_eq!(parse_symbols(&text).expect("table form"), stacks);
        // Recordings made before the frame table hold a plain list.
        let old = serde_json::to_string(&stacks).expect("serialize");
        assert_eq!(parse_symbols(&old).expect("list form"), stacks);
        assert!(parse_symbols("{\"frames\": 3}").is_err());
    }
}
