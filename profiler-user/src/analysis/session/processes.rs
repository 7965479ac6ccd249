//! The process table: the processes a recording follows and those that exited, how each one
//! ended (its exit status or signal), forks not yet seen as processes, PIDs that came back as
//! other processes, and thread (and waker) names. Pure bookkeeping: what a process's start or end
//! means for the symbolizer, the unwinders and the kernel maps is the session's dispatch.

use std::collections::{HashMap, HashSet};

use crate::{model::ProcessRecord, system::access::SystemAccess, system::procfs};

/// Forks and waker names remembered at most (a fork bomb or a busy box must not eat memory).
const MAX_FORKS: usize = 65536;
const MAX_WAKER_NAMES: usize = 65536;

/// A followed process: what the recording says about it, and who it is in /proc (None when
/// not known: replayed, or gone before it was looked at).
pub struct ProcessState {
    pub record: ProcessRecord,
    pub id: Option<procfs::ProcessId>,
}

/// What [`ProcessTable::add`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Added {
    /// Followed already: nothing changed.
    Known,
    /// A new process.
    New,
    /// A new process with the PID of one the recording saw exit: what was kept for the old
    /// one (symbols, unwind tables) must be forgotten so the two are never mixed.
    Reused,
}

#[derive(Default)]
pub struct ProcessTable {
    /// Looked up for every event, like the names below: foldhash (see `thread_names`).
    followed: foldhash::HashMap<u32, ProcessState>,
    /// Processes that exited during the recording (their PIDs may come back as others).
    past: Vec<ProcessRecord>,
    /// PIDs seen exit live: a later process with one of them is a new one.
    exited_pids: HashSet<u32>,
    /// Last exit status passed to exit_group, and last signal, per process.
    exit_calls: HashMap<u32, i32>,
    signals: HashMap<u32, i32>,
    /// Fork times (and parents) of children not yet known as processes (a short-lived child
    /// can be gone from /proc before its fork event is read; its own first event then shows it
    /// is a process).
    forks: HashMap<u32, (u64, u32)>,
    /// Looked up for every event: foldhash rather than SipHash (tids are not chosen by an
    /// attacker who could aim at collisions).
    thread_names: foldhash::HashMap<u32, String>,
    /// Names of waking threads, from the wake-up events (which run in the waker's context).
    waker_names: foldhash::HashMap<u32, String>,
    /// Exited PIDs whose leftovers are dropped at the next [`ProcessTable::purge`] (`watch`).
    to_purge: Vec<u32>,
}

impl ProcessTable {
    pub fn len(&self) -> usize {
        self.followed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.followed.is_empty()
    }

    /// Whether a process is followed now.
    pub fn contains(&self, pid: u32) -> bool {
        self.followed.contains_key(&pid)
    }

    /// The PIDs followed now.
    pub fn pids(&self) -> Vec<u32> {
        self.followed.keys().copied().collect()
    }

    /// The records of the processes followed now.
    pub fn followed_records(&self) -> impl Iterator<Item = &ProcessRecord> {
        self.followed.values().map(|p| &p.record)
    }

    pub fn record(&self, pid: u32) -> Option<&ProcessRecord> {
        self.followed.get(&pid).map(|p| &p.record)
    }

    /// An event of a PID neither followed nor seen exit: a process to add (live).
    pub(super) fn is_unknown(&self, pid: u32) -> bool {
        !self.followed.contains_key(&pid) && !self.exited_pids.contains(&pid)
    }

    /// Registers a process, described from what /proc says about it while it lives (its
    /// name, binary, threads' names).
    pub fn add(&mut self, system: &dyn SystemAccess, pid: u32, started_ns: Option<u64>) -> Added {
        if self.followed.contains_key(&pid) {
            return Added::Known;
        }
        let added = if self.exited_pids.remove(&pid) {
            Added::Reused
        } else {
            Added::New
        };
        let record = ProcessRecord {
            pid,
            comm: system.stat(pid).map_or_else(|| "?".into(), |s| s.comm),
            exe: system
                .exe(pid)
                .map_or_else(String::new, |p| crate::sanitize::name(&p.to_string_lossy())),
            started_ns,
            exited_ns: None,
            exit_code: None,
            exit_signal: None,
        };
        for tid in system.threads(pid) {
            if let Some(stat) = system.thread_stat(pid, tid) {
                self.thread_names.insert(tid, stat.comm);
            }
        }
        let id = system.process_id(pid);
        self.followed.insert(pid, ProcessState { record, id });
        added
    }

    /// A process as a saved recording describes it (replaying: nothing is read).
    pub fn add_saved(&mut self, record: ProcessRecord) {
        self.followed
            .insert(record.pid, ProcessState { record, id: None });
    }

    /// A task forked that is not (yet) known as a process: remembered until its first event.
    pub(super) fn forked(&mut self, child_tid: u32, ts_ns: u64, parent_pid: u32) {
        if self.forks.len() < MAX_FORKS {
            self.forks.insert(child_tid, (ts_ns, parent_pid));
        }
    }

    /// The fork (time, parent) of a task, once: it turned out to be a process.
    pub(super) fn take_fork(&mut self, pid: u32) -> Option<(u64, u32)> {
        self.forks.remove(&pid)
    }

    /// A child that /proc could not describe (already a zombie) runs its parent's binary
    /// until it execs.
    pub(super) fn inherit_exe(&mut self, parent: u32, child: u32) {
        let parent_exe = self.followed.get(&parent).map(|p| p.record.exe.clone());
        if let (Some(exe), Some(process)) = (parent_exe, self.followed.get_mut(&child))
            && process.record.exe.is_empty()
        {
            process.record.exe = exe;
        }
    }

    /// A process /proc could not name gets the name its events carry.
    pub(super) fn name_if_unknown(&mut self, pid: u32, comm: &[u8; 16]) {
        if let Some(process) = self.followed.get_mut(&pid)
            && process.record.comm == "?"
            && comm[0] != 0
        {
            process.record.comm = comm_string(comm);
        }
    }

    /// It exec'd: its new name and binary, as /proc says now.
    pub(super) fn exec(&mut self, system: &dyn SystemAccess, pid: u32) {
        if let Some(process) = self.followed.get_mut(&pid) {
            if let Some(stat) = system.stat(pid) {
                process.record.comm = stat.comm;
            }
            if let Some(exe) = system.exe(pid) {
                process.record.exe = crate::sanitize::name(&exe.to_string_lossy());
            }
        }
    }

    pub(super) fn exit_call(&mut self, pid: u32, status: i32) {
        self.exit_calls.insert(pid, status);
    }

    pub(super) fn signal(&mut self, pid: u32, signal: i32) {
        self.signals.insert(pid, signal);
    }

    /// The last thread of a process is gone: it is recorded with how it ended (the status it
    /// passed to exit_group, else the last signal it got). `live`: its PID may come back as
    /// another process. `streaming`: nothing is kept of it (dropped at the next purge).
    /// False when the process was not followed.
    pub(super) fn exited(&mut self, pid: u32, ts_ns: u64, live: bool, streaming: bool) -> bool {
        let status = self.exit_calls.remove(&pid);
        let signal = self.signals.remove(&pid);
        let Some(mut process) = self.followed.remove(&pid) else {
            return false;
        };
        process.record.exited_ns = Some(ts_ns);
        match status {
            Some(code) => process.record.exit_code = Some(code),
            None => {
                process.record.exit_signal =
                    Some(signal.map_or_else(|| "a signal".into(), signal_name))
            }
        }
        if live {
            self.exited_pids.insert(pid);
        }
        self.gone(process.record, streaming);
        true
    }

    /// Processes gone from /proc without an exit event (it was lost with a full ring buffer):
    /// recorded as exited now, so churn stays right; how they ended is unknown. Streaming, also
    /// one that was already gone when its first event was read (a late event of a process
    /// that exited): nothing of it is kept.
    pub fn reap_vanished(&mut self, system: &dyn SystemAccess, now_ns: u64, streaming: bool) {
        let vanished: Vec<u32> = self
            .followed
            .iter()
            .filter(|(_, p)| match p.id {
                Some(id) => !system.is_alive(id),
                None => streaming,
            })
            .map(|(pid, _)| *pid)
            .collect();
        for pid in vanished {
            if let Some(mut process) = self.followed.remove(&pid) {
                process.record.exited_ns = Some(now_ns);
                process.record.exit_signal = Some("unknown (exit event lost)".into());
                self.exited_pids.insert(pid);
                self.gone(process.record, streaming);
            }
        }
    }

    fn gone(&mut self, record: ProcessRecord, streaming: bool) {
        if streaming {
            self.to_purge.push(record.pid);
        } else {
            self.past.push(record);
        }
    }

    /// Whether every followed process is gone (or was never known alive).
    pub fn all_gone(&self, system: &dyn SystemAccess) -> bool {
        self.followed
            .values()
            .all(|p| !p.id.is_some_and(|id| system.is_alive(id)))
    }

    /// `watch`: forgets the names of the threads that exited, and returns the processes that
    /// exited since the last call and did not come back (their PIDs are free again).
    pub(super) fn purge(&mut self, exited_tids: impl Iterator<Item = u32>) -> HashSet<u32> {
        for tid in exited_tids {
            self.thread_names.remove(&tid);
        }
        let gone: HashSet<u32> = std::mem::take(&mut self.to_purge)
            .into_iter()
            .filter(|pid| !self.followed.contains_key(pid))
            .collect();
        for pid in &gone {
            self.exited_pids.remove(pid);
        }
        gone
    }

    /// PIDs of the processes that exited during the recording.
    pub(super) fn exited_pids_recorded(&self) -> HashSet<u32> {
        self.past.iter().map(|p| p.pid).collect()
    }

    /// Every process of the recording, exited and followed, by PID then start.
    pub(super) fn all_records(&self) -> Vec<ProcessRecord> {
        let mut processes: Vec<ProcessRecord> = self
            .past
            .iter()
            .cloned()
            .chain(self.followed.values().map(|p| p.record.clone()))
            .collect();
        processes.sort_by_key(|p| (p.pid, p.started_ns));
        processes
    }

    /// The name an event of the thread carries (only events taken in the thread's own context
    /// carry it: the caller checks).
    pub(super) fn name_thread_from(&mut self, tid: u32, comm: &[u8; 16]) {
        // Compared as bytes: this runs for every event, and names rarely change.
        let bytes = comm_bytes(comm);
        let stored = self.thread_names.get(&tid).map(String::as_bytes);
        // A name that needed escaping is stored escaped: compare it escaped too.
        if stored != Some(bytes) {
            let name = comm_string(comm);
            if stored != Some(name.as_bytes()) {
                self.thread_names.insert(tid, name);
            }
        }
    }

    /// A thread's name as a saved recording has it (replaying).
    pub fn name_thread(&mut self, tid: u32, name: String) {
        self.thread_names.insert(tid, name);
    }

    /// A waker's name from its wake-up event: it may belong to a process we do not follow, so
    /// its name is only there.
    pub(super) fn name_waker(&mut self, tid: u32, comm: &[u8; 16]) {
        if comm[0] != 0 && self.waker_names.len() < MAX_WAKER_NAMES {
            self.waker_names
                .entry(tid)
                .or_insert_with(|| comm_string(comm));
        }
    }

    pub(super) fn thread_name_of(&self, tid: u32) -> Option<&str> {
        self.thread_names.get(&tid).map(String::as_str)
    }

    /// A thread's name, "?" when not known.
    pub(super) fn thread_name(&self, tid: u32) -> String {
        self.thread_name_of(tid).unwrap_or("?").to_string()
    }

    /// A waking thread's name: its own if followed, else the one its wake-up carried.
    pub(super) fn waker_name(&self, tid: u32) -> String {
        self.thread_names
            .get(&tid)
            .or_else(|| self.waker_names.get(&tid))
            .cloned()
            .unwrap_or_else(|| "?".into())
    }
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

fn comm_bytes(comm: &[u8; 16]) -> &[u8] {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    &comm[..end]
}

pub(super) fn comm_string(comm: &[u8; 16]) -> String {
    crate::sanitize::name_bytes(comm_bytes(comm))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system::access::{Replay, fake::FakeSystem};

    fn comm(name: &str) -> [u8; 16] {
        let mut comm = [0u8; 16];
        comm[..name.len()].copy_from_slice(name.as_bytes());
        comm
    }

    fn ended(table: &ProcessTable) -> Vec<(u32, Option<i32>, Option<String>)> {
        table
            .all_records()
            .into_iter()
            .filter(|p| p.exited_ns.is_some())
            .map(|p| (p.pid, p.exit_code, p.exit_signal))
            .collect()
    }

    /// How a process ended: the status it passed to exit_group wins over a signal it got; a
    /// signal is named; no status and no signal seen is "a signal" (the kernel killed it).
    #[test]
    fn an_exit_is_recorded_with_its_status_else_its_signal() {
        let mut system = FakeSystem::default();
        let mut table = ProcessTable::default();
        for pid in [10, 11, 12, 13] {
            system.spawn(pid, "app", &[]);
            assert_eq!(table.add(&system, pid, Some(0)), Added::New);
        }
        table.signal(10, 15);
        table.exit_call(10, 0);
        table.signal(11, 9);
        table.signal(12, 77);
        assert!(table.exited(10, 5, true, false));
        assert!(table.exited(11, 6, true, false));
        assert!(table.exited(12, 7, true, false));
        assert!(table.exited(13, 8, true, false));
        assert!(!table.exited(99, 9, true, false), "never followed");
        assert_eq!(
            ended(&table),
            vec![
                (10, Some(0), None),
                (11, None, Some("SIGKILL".into())),
                (12, None, Some("signal 77".into())),
                (13, None, Some("a signal".into())),
            ]
        );
        assert!(table.is_empty());
    }

    /// A PID seen exit live comes back as a new process (a new record, "reused" so the caller
    /// forgets the old one's symbols); replayed exits free nothing (PIDs say nothing of now).
    #[test]
    fn a_pid_that_exited_comes_back_as_a_new_process() {
        let mut system = FakeSystem::default();
        system.spawn(10, "first", &[(11, "worker")]);
        let mut table = ProcessTable::default();
        assert_eq!(table.add(&system, 10, Some(1)), Added::New);
        assert_eq!(table.add(&system, 10, Some(1)), Added::Known);
        assert_eq!(table.thread_name(11), "worker");
        table.exited(10, 2, true, false);
        assert!(
            !table.is_unknown(10),
            "a late event of it does not bring it back"
        );
        system.reap(10);
        system.spawn(10, "second", &[]);
        assert_eq!(table.add(&system, 10, Some(3)), Added::Reused);
        let names: Vec<_> = table.all_records().into_iter().map(|p| p.comm).collect();
        assert_eq!(names, vec!["first", "second"]);

        let mut replayed = ProcessTable::default();
        replayed.add(&Replay, 20, None);
        replayed.exited(20, 2, false, false);
        assert!(replayed.is_unknown(20));
        assert_eq!(replayed.all_records()[0].comm, "?");
    }

    /// Streaming (`watch`), an exited process is not kept: it is handed out once by the next
    /// purge, unless its PID came back meanwhile; the exited threads' names go too.
    #[test]
    fn streaming_keeps_no_exited_process_and_purges_it_once() {
        let mut system = FakeSystem::default();
        system.spawn(10, "app", &[(11, "worker")]);
        system.spawn(20, "other", &[]);
        let mut table = ProcessTable::default();
        table.add(&system, 10, None);
        table.add(&system, 20, None);
        table.exited(10, 5, true, true);
        table.exited(20, 5, true, true);
        system.reap(20);
        system.spawn(20, "again", &[]);
        table.add(&system, 20, None);
        assert!(table.all_records().iter().all(|p| p.exited_ns.is_none()));
        let gone = table.purge([11].into_iter());
        assert_eq!(gone, HashSet::from([10]));
        assert_eq!(table.thread_name(11), "?");
        assert!(table.is_unknown(10), "its PID is free again");
        assert!(table.purge(std::iter::empty()).is_empty(), "once");
    }

    /// A process gone from /proc without its exit event is recorded as exited, how unknown;
    /// one still alive stays, and one never seen alive (no id) stays unless streaming.
    #[test]
    fn a_process_gone_without_an_exit_event_is_reaped() {
        let mut system = FakeSystem::default();
        system.spawn(10, "gone", &[]);
        system.spawn(11, "alive", &[]);
        let mut table = ProcessTable::default();
        table.add(&system, 10, None);
        table.add(&system, 11, None);
        table.add(&Replay, 12, None);
        assert!(!table.all_gone(&system));
        system.reap(10);
        table.reap_vanished(&system, 50, false);
        assert_eq!(
            ended(&table),
            vec![(10, None, Some("unknown (exit event lost)".into()))]
        );
        assert_eq!(table.len(), 2);
        table.reap_vanished(&system, 60, true);
        assert_eq!(table.pids(), vec![11]);
        system.reap(11);
        assert!(table.all_gone(&system));
    }

    /// A fork is remembered until the child turns out to be a process (once), bounded; a child
    /// without a binary of its own runs its parent's; one /proc could not name gets its
    /// events' name.
    #[test]
    fn a_forked_child_gets_its_fork_time_and_its_parents_binary() {
        let mut system = FakeSystem::default();
        system.spawn(10, "parent", &[]);
        let mut table = ProcessTable::default();
        table.add(&system, 10, None);
        table.forked(11, 100, 10);
        assert_eq!(table.take_fork(11), Some((100, 10)));
        assert_eq!(table.take_fork(11), None);
        // Gone from /proc by the time it is looked at: no name, no binary.
        table.add(&Replay, 11, Some(100));
        table.inherit_exe(10, 11);
        table.name_if_unknown(11, &comm("child"));
        let child = table.record(11).expect("added");
        assert_eq!(
            (child.comm.as_str(), child.exe.as_str()),
            ("child", "/usr/bin/parent")
        );
        for tid in 0..(MAX_FORKS as u32 + 10) {
            table.forked(1000 + tid, 1, 10);
        }
        assert_eq!(table.forks.len(), MAX_FORKS);
    }

    /// Thread names follow the events (a rename is seen), stored escaped; a waker's name comes
    /// from its wake-up only when it is not a thread we know.
    #[test]
    fn thread_and_waker_names_follow_the_events() {
        let mut table = ProcessTable::default();
        table.name_thread_from(5, &comm("before"));
        table.name_thread_from(5, &comm("after"));
        assert_eq!(table.thread_name(5), "after");
        let mut odd = comm("a");
        odd[1] = 0x1b; // ESC: never printed raw
        table.name_thread_from(6, &odd);
        let escaped = table.thread_name(6);
        assert!(!escaped.contains('\x1b'), "{escaped:?}");
        table.name_thread_from(6, &odd);
        assert_eq!(table.thread_name(6), escaped);
        table.name_waker(5, &comm("waker"));
        table.name_waker(7, &comm("waker"));
        table.name_waker(8, &[0; 16]);
        assert_eq!(table.waker_name(5), "after");
        assert_eq!(table.waker_name(7), "waker");
        assert_eq!(table.waker_name(8), "?");
    }
}
