//! Stack copies waiting for the event they belong to: the kernel's user-stack records, unwound
//! here (DWARF, with V8's JavaScript frames merged in).

use super::{python_tasks::MAX_TASK_THREADS, *};

/// An unwound user stack waiting for its event: the addresses (innermost first) and, lined up
/// with them, the stack pointer each frame ran with (empty when not known).
#[derive(Clone, Debug, Default)]
pub(super) struct UserStack {
    pub(super) ips: Vec<u64>,
    pub(super) sps: Vec<u64>,
}

/// Unwound user stacks waiting for the event they belong to, each thread's last unwind (for the
/// kernel's "repeated" records), and what unwinding cost. Bounded: one of each per thread, for
/// at most MAX_TASK_THREADS threads' last unwinds.
#[derive(Default)]
pub(super) struct PendingStacks {
    /// tid -> (taken at, stack).
    waiting: foldhash::HashMap<u32, (u64, UserStack)>,
    last_unwound: foldhash::HashMap<u32, UserStack>,
    /// Repeated records that reused the thread's last unwind.
    pub(super) repeated: u64,
    /// Repeated records for a thread with no last copy here: counted among the drops.
    pub(super) repeats_without_copy: u64,
    pub(super) unwind_ns: u64,
    pub(super) bytes_copied: u64,
}

impl PendingStacks {
    /// A "repeated" record: the thread is where it was at its last copy, so the same unwind
    /// waits for its event; without a last copy (lost, or not kept) it is counted.
    /// Every record replaces what waited for the thread, so the event that follows a record
    /// never takes an older copy (one whose own event was lost).
    pub(super) fn repeat(&mut self, tid: u32, ts_ns: u64) {
        match self.last_unwound.get(&tid) {
            Some(stack) => {
                self.repeated += 1;
                self.waiting.insert(tid, (ts_ns, stack.clone()));
            }
            None => {
                self.repeats_without_copy += 1;
                self.waiting.remove(&tid);
            }
        }
    }

    /// A copy just unwound: it waits for its event, and is the thread's last unwind.
    pub(super) fn unwound(&mut self, tid: u32, ts_ns: u64, stack: UserStack) {
        if self.last_unwound.len() < MAX_TASK_THREADS || self.last_unwound.contains_key(&tid) {
            self.last_unwound.insert(tid, stack.clone());
        }
        self.waiting.insert(tid, (ts_ns, stack));
    }

    /// The stack waiting for the thread's next event: (taken at, stack).
    pub(super) fn take(&mut self, tid: u32) -> Option<(u64, UserStack)> {
        self.waiting.remove(&tid)
    }

    /// The thread is gone: nothing of it is kept.
    pub(super) fn forget_thread(&mut self, tid: u32) {
        self.last_unwound.remove(&tid);
    }
}

impl Session {
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
            self.stacks.repeat(header.tid, header.ts_ns);
            return;
        }
        let started = std::time::Instant::now();
        let unwound = self
            .unwinders
            .unwind_frames(header.pid, header.ip, header.sp, header.bp, stack);
        self.stacks.unwind_ns += started.elapsed().as_nanos() as u64;
        let mut ips = unwound.ips;
        self.merge_js(header.pid, &mut ips, &unwound.fps, stack, header.sp);
        // The stack pointers place Python runs (see `python::place_runs`); JavaScript frames
        // merged in change the frame count, and then they no longer line up.
        let sps = if ips.len() == unwound.sps.len() {
            unwound.sps
        } else {
            Vec::new()
        };
        self.stacks.bytes_copied += stack.len() as u64;
        self.stacks
            .unwound(header.tid, header.ts_ns, UserStack { ips, sps });
    }

    /// JavaScript frames in place of the V8 code that ran them, read now (while the stack bytes
    /// are here and the objects they point to have not moved).
    pub(super) fn merge_js(
        &mut self,
        pid: u32,
        ips: &mut Vec<u64>,
        fps: &[u64],
        stack: &[u8],
        sp: u64,
    ) {
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
                    // The JS frames it stands for (none: the rest of the JS frame just named).
                    Some(frames) => {
                        for frame in frames {
                            merged.push(self.resolver.js_entry(frame).unwrap_or(ip));
                        }
                    }
                }
            }
            *ips = merged;
        }
        self.v8_ns += started.elapsed().as_nanos() as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A repeated record reuses the thread's last unwind once per event; one for a thread
    /// never unwound is counted, and waits for nothing.
    #[test]
    fn a_repeat_reuses_the_last_unwind_of_that_thread_only() {
        let mut stacks = PendingStacks::default();
        let ips = |taken: Option<(u64, UserStack)>| taken.map(|(ts, s)| (ts, s.ips));
        let stack = UserStack {
            ips: vec![0xa, 0xb],
            sps: vec![0x100, 0x180],
        };
        stacks.unwound(1, 10, stack);
        assert_eq!(ips(stacks.take(1)), Some((10, vec![0xa, 0xb])));
        assert_eq!(ips(stacks.take(1)), None, "taken once");
        stacks.repeat(1, 20);
        stacks.repeat(2, 20);
        assert_eq!(ips(stacks.take(1)), Some((20, vec![0xa, 0xb])));
        assert!(stacks.take(2).is_none());
        assert_eq!((stacks.repeated, stacks.repeats_without_copy), (1, 1));
        stacks.forget_thread(1);
        stacks.repeat(1, 30);
        assert!(stacks.take(1).is_none(), "forgotten");
        assert_eq!(stacks.repeats_without_copy, 2);
        // A copy whose event was lost, then a repeat the agent has no copy for: the repeat's
        // event must not take the older copy.
        stacks.unwound(3, 40, UserStack::default());
        stacks.forget_thread(3);
        stacks.repeat(3, 50);
        assert!(
            stacks.take(3).is_none(),
            "the lost event's copy is not attached"
        );
    }
}
