//! Stall and waker records: which stalls are reported, and each one turned into its
//! [`StallRecord`] (stacks resolved, waker named) as it ends, handed to the sinks.

use std::sync::Arc;

use super::*;

/// The stalls kept for the recording as they end, bounded in count (`LIMITS.stalls`) and in
/// frames (`LIMITS.stall_frames`), and what was left out.
#[derive(Default)]
pub struct StallRecords {
    kept: Vec<Kept>,
    /// The frame lists of kept stacks and wakers, one copy each: a service's stalls go through
    /// the same few stacks again and again (issue #16: the kept stalls' frames were most of
    /// the agent's heap). Holds only what `kept` holds, so the frame budget bounds it too.
    shared: foldhash::HashSet<Arc<[Frame]>>,
    /// Stalls past `LIMITS.stalls`: counted, not kept.
    not_kept: u64,
    /// Frames held by `kept`.
    frames_held: usize,
    /// Stacks left out of kept stalls once `LIMITS.stall_frames` was reached.
    stacks_not_kept: u64,
    /// Runs of threads still starting up (pid, tid, start): see `finish`.
    startup_runs: HashSet<(u32, u32, u64)>,
}

impl StallRecords {
    pub fn len(&self) -> usize {
        self.kept.len()
    }

    pub fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// No room for another stall: it is counted instead.
    fn full(&mut self) -> bool {
        let full = self.kept.len() >= LIMITS.stalls;
        self.not_kept += u64::from(full);
        full
    }

    /// A run while its thread starts up: a stall only if the thread never reaches a wait point.
    fn started_up(&mut self, stall: &Stall) {
        if self.startup_runs.len() < 65536 {
            self.startup_runs
                .insert((stall.pid, stall.tid, stall.start_ns));
        }
    }

    pub(super) fn keep(&mut self, mut record: StallRecord) {
        self.stacks_not_kept +=
            keep_within_frame_budget(&mut record, &mut self.frames_held, LIMITS.stall_frames);
        let frames = record
            .stacks
            .iter_mut()
            .map(|stack| {
                let waker = stack
                    .waker
                    .as_mut()
                    .map(|w| self.share(std::mem::take(&mut w.frames)));
                (self.share(std::mem::take(&mut stack.frames)), waker)
            })
            .collect();
        self.kept.push(Kept { record, frames });
    }

    #[cfg(test)]
    pub(super) fn shared_lists(&self) -> usize {
        self.shared.len()
    }

    /// The one copy of a frame list.
    fn share(&mut self, frames: Vec<Frame>) -> Arc<[Frame]> {
        if let Some(shared) = self.shared.get(frames.as_slice()) {
            return shared.clone();
        }
        let frames: Arc<[Frame]> = frames.into();
        self.shared.insert(frames.clone());
        frames
    }

    /// Stalls and stacks left out.
    pub(super) fn dropped(&self) -> u64 {
        self.not_kept + self.stacks_not_kept
    }

    /// The kept stalls in time order, those `keep` refuses left out (it is told whether each
    /// was a run while its thread started up: see `finish`).
    pub(super) fn into_sorted(
        self,
        mut keep: impl FnMut(&StallRecord, bool) -> bool,
    ) -> Vec<StallRecord> {
        let startup_runs = self.startup_runs;
        let mut stalls: Vec<StallRecord> = self
            .kept
            .into_iter()
            .filter(|s| {
                let s = &s.record;
                keep(s, startup_runs.contains(&(s.pid, s.tid, s.start_ns)))
            })
            .map(Kept::into_record)
            .collect();
        stalls.sort_by_key(|s| s.start_ns);
        stalls
    }
}

/// A kept stall: its record, the frames of its stacks (and of their wakers) held apart, in
/// the stacks' order, shared with the other kept stalls.
struct Kept {
    record: StallRecord,
    frames: Vec<KeptFrames>,
}

/// A kept stack's frames and its waker's.
type KeptFrames = (Arc<[Frame]>, Option<Arc<[Frame]>>);

impl Kept {
    fn into_record(self) -> StallRecord {
        let mut record = self.record;
        for (stack, (frames, waker)) in record.stacks.iter_mut().zip(self.frames) {
            stack.frames = frames.to_vec();
            if let (Some(w), Some(frames)) = (stack.waker.as_mut(), waker) {
                w.frames = frames.to_vec();
            }
        }
        record
    }
}

impl Session {
    /// Whether a stall is shown: iterations of loop threads always; runs only for processes
    /// with no loop thread (a worker pool's CPU work is not a stall of anyone's loop); with
    /// --thread/--thread-name, only those threads.
    pub(super) fn is_reported(&self, stall: &Stall) -> bool {
        if !self.config.threads.is_empty() || self.config.thread_name.is_some() {
            let by_tid = self.config.threads.contains(&stall.tid);
            let by_name = self.config.thread_name.as_ref().is_some_and(|name| {
                self.processes.thread_name_of(stall.tid) == Some(name.as_str())
            });
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

    pub(super) fn stall_ended(&mut self, system: &dyn SystemAccess, stall: Stall, live: bool) {
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
        if self.stalls.full() {
            return;
        }
        let record = self.stall_record(system, &stall);
        // A run while the thread starts up is a stall only if it never reaches a wait point
        // (decided at the end, with the runs of processes that turned out to have a loop).
        if stall.startup {
            self.stalls.started_up(&stall);
        }
        if live
            && !stall.startup
            && let Some(sink) = self.live_sink.as_mut()
        {
            sink.stall(&record, self.processes.record(record.pid));
        }
        if let Some(sink) = self.sink.as_mut() {
            sink.stall(&record, self.processes.record(record.pid));
        }
        if self.streaming {
            return;
        }
        self.stalls.keep(record);
    }

    pub(super) fn stall_record(&mut self, system: &dyn SystemAccess, stall: &Stall) -> StallRecord {
        let stacks: Vec<StackRecord> = stall
            .stacks
            .iter()
            .map(|s| StackRecord {
                kind: s.kind,
                weight_ns: s.weight_ns,
                count: s.count,
                syscall: syscall_name(s.syscall),
                frames: self.resolver.frames(system, s.stack),
                waker: s.waker.map(|w| self.waker_record(system, w)),
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
            task: self
                .tasks
                .longest_in(stall.tid, stall.start_ns, stall.end_ns),
            ready_events: stall.ready_events,
            stacks,
        }
    }

    pub(super) fn waker_record(
        &mut self,
        system: &dyn SystemAccess,
        waker: timeline::Waker,
    ) -> model::WakerRecord {
        let mut frames = self.resolver.frames(system, waker.stack);
        let comm = self.processes.waker_name(waker.tid);
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
}

/// Keeps a stall's stacks while the frames held by all kept stalls stay within `limit`;
/// past it the stall keeps its times and breakdown but no stacks. Returns the stacks left out.
pub(super) fn keep_within_frame_budget(
    record: &mut StallRecord,
    held: &mut usize,
    limit: usize,
) -> u64 {
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
