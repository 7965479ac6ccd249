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
            // The thread is where it was at its last copy: the same unwind.
            if let Some(stack) = self.last_unwound.get(&header.tid) {
                self.stacks_repeated += 1;
                self.pending_stacks
                    .insert(header.tid, (header.ts_ns, stack.clone()));
            } else {
                // Its last copy was lost or not kept (past MAX_TASK_THREADS): no user stack.
                self.repeats_without_copy += 1;
            }
            return;
        }
        let started = std::time::Instant::now();
        let unwound = self
            .unwinders
            .unwind_frames(header.pid, header.ip, header.sp, header.bp, stack);
        self.unwind_ns += started.elapsed().as_nanos() as u64;
        let mut ips = unwound.ips;
        self.merge_js(header.pid, &mut ips, &unwound.fps, stack, header.sp);
        // The stack pointers place Python runs (see `python::place_runs`); JavaScript frames
        // merged in change the frame count, and then they no longer line up.
        let sps = if ips.len() == unwound.sps.len() {
            unwound.sps
        } else {
            Vec::new()
        };
        let stack_ = UserStack { ips, sps };
        self.stack_bytes_copied += stack.len() as u64;
        if self.last_unwound.len() < MAX_TASK_THREADS || self.last_unwound.contains_key(&header.tid)
        {
            self.last_unwound.insert(header.tid, stack_.clone());
        }
        self.pending_stacks
            .insert(header.tid, (header.ts_ns, stack_));
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
                    // The rest of the JS frame just named.
                    Some(None) => {}
                    Some(Some(frame)) => merged.push(self.resolver.js_entry(frame).unwrap_or(ip)),
                }
            }
            *ips = merged;
        }
        self.v8_ns += started.elapsed().as_nanos() as u64;
    }
}
