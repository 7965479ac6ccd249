//! Process and thread lifecycle: processes followed and their exits, forks, execs, signals
//! and names; start-up; processes that vanished.

use super::*;

impl Session {
    /// Registers a process we follow, reading what /proc says about it while it lives.
    pub fn add_process(&mut self, system: &dyn SystemAccess, pid: u32, started_ns: Option<u64>) {
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
        let stat = system.stat(pid);
        let record = ProcessRecord {
            pid,
            comm: stat.as_ref().map_or_else(|| "?".into(), |s| s.comm.clone()),
            exe: system
                .exe(pid)
                .map_or_else(String::new, |p| crate::sanitize::name(&p.to_string_lossy())),
            started_ns,
            exited_ns: None,
            exit_code: None,
            exit_signal: None,
        };
        self.resolver.symbols.snapshot(pid);
        for tid in system.threads(pid) {
            if let Some(stat) = system.thread_stat(pid, tid) {
                self.thread_names.insert(tid, stat.comm);
            }
        }
        let id = system.process_id(pid);
        self.processes.insert(pid, ProcessState { record, id });
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
                    self.inherit_exe(parent_pid, child_tid);
                } else if self.forks.len() < 65536 {
                    self.forks.insert(child_tid, (ts_ns, parent_pid));
                }
            }
            Lifecycle::Fork { child_tid, .. } => self.timeline.forked(child_tid),
            Lifecycle::Exec { pid } if live && !self.processes.contains_key(&pid) => {
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
                if self.processes.contains_key(&pid) {
                    self.detect_python(system, pid, true);
                    self.v8s.process(pid);
                }
                if let Some(process) = self.processes.get_mut(&pid) {
                    if let Some(stat) = system.stat(pid) {
                        process.record.comm = stat.comm;
                    }
                    if let Some(exe) = system.exe(pid) {
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
                    self.process_exited(system, pid, ts_ns);
                }
            }
        }
    }

    /// A child that /proc could not describe (already a zombie) runs its parent's binary
    /// until it execs.
    pub(super) fn inherit_exe(&mut self, parent: u32, child: u32) {
        let parent_exe = self.processes.get(&parent).map(|p| p.record.exe.clone());
        if let (Some(exe), Some(process)) = (parent_exe, self.processes.get_mut(&child))
            && process.record.exe.is_empty()
        {
            process.record.exe = exe;
        }
    }

    /// The last thread of a process is gone: record how it ended, resolve its stacks while
    /// its mappings are the ones we know, and free its PID for a new process.
    pub(super) fn process_exited(&mut self, system: &mut dyn SystemAccess, pid: u32, ts_ns: u64) {
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
        let live = system.live();
        if live {
            system.unfollow(pid);
            system.forget_python(pid);
            self.resolver.resolve_pid(system, pid);
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
            self.tasks.forget_thread(thread.tid);
            self.stacks.forget_thread(thread.tid);
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

    pub(super) fn thread_name(&self, tid: u32) -> String {
        self.thread_names
            .get(&tid)
            .cloned()
            .unwrap_or_else(|| "?".into())
    }

    /// Processes gone from /proc without an exit event (it was lost with a full ring buffer):
    /// recorded as exited now, so churn stays right; how they ended is unknown.
    pub fn reap_vanished(&mut self, system: &dyn SystemAccess, now_ns: u64) {
        let vanished: Vec<u32> = self
            .processes
            .iter()
            // Streaming, also one that was already gone when its first event was read (a
            // late event of a process that exited): nothing of it is kept.
            .filter(|(_, p)| match p.id {
                Some(id) => !system.is_alive(id),
                None => self.streaming,
            })
            .map(|(pid, _)| *pid)
            .collect();
        for pid in vanished {
            if let Some(mut process) = self.processes.remove(&pid) {
                process.record.exited_ns = Some(now_ns);
                process.record.exit_signal = Some("unknown (exit event lost)".into());
                self.exited_pids.insert(pid);
                if self.streaming {
                    self.exited_to_purge.push(pid);
                } else {
                    self.past_processes.push(process.record);
                }
            }
        }
    }

    pub fn all_targets_gone(&self, system: &dyn SystemAccess) -> bool {
        self.processes
            .values()
            .all(|p| !p.id.is_some_and(|id| system.is_alive(id)))
    }
}
