//! Process and thread lifecycle: processes followed and their exits, forks, execs, signals
//! and names; start-up; processes that vanished.

use super::*;

impl Session {
    /// Registers a process we follow, reading what /proc says about it while it lives.
    pub fn add_process(&mut self, system: &dyn SystemAccess, pid: u32, started_ns: Option<u64>) {
        match self.processes.add(system, pid, started_ns) {
            Added::Known => return,
            // A PID the recording saw exit before belongs to a new process now: start afresh
            // so the two are never mixed (the old one's stacks were resolved when it exited).
            Added::Reused => {
                self.resolver.symbols.forget(pid);
                self.unwinders.forget(pid);
                self.v8s.forget(pid);
            }
            Added::New => {}
        }
        self.resolver.symbols.snapshot(pid);
        self.detect_python(system, pid, started_ns.is_some());
        // V8's metadata is read now, not at the first stack: reading a 100 MB node binary
        // takes a while, and the first stacks' objects must be read before the GC moves them.
        self.v8s.process(pid);
    }

    /// A thread found blocked in a wait point when recording began: a loop thread between
    /// iterations. Remembered in the recording so a replay starts from the same knowledge.
    pub fn mark_waiting(&mut self, pid: u32, tid: u32) {
        self.timeline.mark_waiting(pid, tid);
        self.waiting_at_start.push((pid, tid));
    }

    /// How long start-up took, said once: the first thread to reach its wait point after being
    /// seen created (the command's, under `record --`).
    pub(super) fn say_startup(&mut self, live: bool) {
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

    pub(super) fn lifecycle(
        &mut self,
        system: &mut dyn SystemAccess,
        lifecycle: Lifecycle,
        ts_ns: u64,
    ) {
        let live = system.live();
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
                if system.is_process(child_tid) {
                    self.add_process(system, child_tid, Some(ts_ns));
                    self.processes.inherit_exe(parent_pid, child_tid);
                } else {
                    self.processes.forked(child_tid, ts_ns, parent_pid);
                }
            }
            Lifecycle::Fork { child_tid, .. } => self.timeline.forked(child_tid),
            Lifecycle::Exec { pid } if live && !self.processes.contains(pid) => {
                // A process the kernel side started following at this exec (`watch`'s match):
                // new to us, and it may load CPython in a moment.
                self.add_process(system, pid, Some(ts_ns));
            }
            Lifecycle::Exec { pid } if live => {
                // The old image's stacks are resolved against the old mappings first.
                self.resolver.resolve_pid(system, pid);
                self.resolver.symbols.forget(pid);
                self.resolver.symbols.snapshot(pid);
                self.unwinders.forget(pid);
                self.v8s.forget(pid);
                system.forget_python(pid);
                if self.processes.contains(pid) {
                    self.detect_python(system, pid, true);
                    self.v8s.process(pid);
                }
                self.processes.exec(system, pid);
            }
            Lifecycle::Exec { .. } => {}
            Lifecycle::ExitCall { pid, status } => self.processes.exit_call(pid, status),
            Lifecycle::Signal { pid, signal } => self.processes.signal(pid, signal),
            Lifecycle::Exit {
                pid, group_dead, ..
            } => {
                if group_dead {
                    self.process_exited(system, pid, ts_ns);
                }
            }
        }
    }

    /// The last thread of a process is gone: record how it ended, resolve its stacks while
    /// its mappings are the ones we know, and free its PID for a new process.
    pub(super) fn process_exited(&mut self, system: &mut dyn SystemAccess, pid: u32, ts_ns: u64) {
        let live = system.live();
        if !self.processes.exited(pid, ts_ns, live, self.streaming) {
            return;
        }
        if live {
            system.unfollow(pid);
            system.forget_python(pid);
            // Streaming, its stacks are resolved here for a stall its exit ends; the rest goes
            // at the next purge.
            self.resolver.resolve_pid(system, pid);
        }
        self.python.forget(pid);
        self.v8s.forget(pid);
    }

    /// `watch`: drops what is kept of the processes that exited since the last call (their
    /// symbols, unwind tables, resolved stacks, thread names). Call it from a timer, not
    /// right at the exit: the events of a dying process trail its exit by a little.
    pub fn purge_exited(&mut self, exited_threads: &[timeline::ThreadSummary]) {
        for thread in exited_threads {
            self.tasks.forget_thread(thread.tid);
            self.stacks.forget_thread(thread.tid);
        }
        let gone = self
            .processes
            .purge(exited_threads.iter().map(|thread| thread.tid));
        if gone.is_empty() {
            return;
        }
        for &pid in &gone {
            self.unwinders.forget(pid);
            self.v8s.forget(pid);
            self.python.forget(pid);
        }
        self.resolver.forget_pids(&gone);
    }

    pub(super) fn thread_name(&self, tid: u32) -> String {
        self.processes.thread_name(tid)
    }

    /// Processes gone from /proc without an exit event (see [`ProcessTable::reap_vanished`]).
    pub fn reap_vanished(&mut self, system: &dyn SystemAccess, now_ns: u64) {
        self.processes.reap_vanished(system, now_ns, self.streaming);
    }

    pub fn all_targets_gone(&self, system: &dyn SystemAccess) -> bool {
        self.processes.all_gone(system)
    }
}
