//! What a recording session needs from the system, behind one small trait: the kernel side's
//! maps (stop following a process, register a Python interpreter, read a stack id, the drop
//! counters) and what /proc says about a process. Live, [`Probes`] does it for real; replaying
//! a saved recording, [`Replay`] says "not live" and reads nothing (the PIDs may belong to
//! someone else by now); tests use [`fake::FakeSystem`], so the session's decisions are
//! unit-tested on synthetic events without a kernel (the idea of aya's `sys/fake.rs`).
//!
//! The stack readers' view of /proc (maps, binaries) is [`SystemAccess::proc_reader`] (see
//! [`procfs::ProcReader`]): CPython detection and its memory reader go through it, and the
//! symbolizer's snapshots read through a reader of their own (`Symbols::with_reader`); the
//! stacks of threads still blocked when recording stops are read with
//! [`SystemAccess::blocked_stack`]. Not behind it yet: the V8 reader and the unwinder, which
//! read the targets themselves (see `stacks/`); for a PID that does not exist they find nothing.

use std::path::PathBuf;

use anyhow::Result;
use profiler_common::{PyProcess, drop};

use crate::system::{attach::Probes, procfs};

/// The kernel side's drop counters, indexed by `profiler_common::drop`.
pub type KernelDrops = [u64; drop::COUNT as usize];

/// The system as a session sees it. Reads take `&self`; changes to the kernel maps `&mut self`.
pub trait SystemAccess {
    /// Whether the events come from processes running now, so /proc and the kernel maps
    /// describe them (false when replaying).
    fn live(&self) -> bool;

    /// Instruction pointers of a kernel stack-map id, innermost first.
    fn kernel_stack(&self, id: i32) -> Option<Vec<u64>>;
    /// Stops following a process that has gone (its PID may be reused by someone else).
    fn unfollow(&mut self, pid: u32);
    /// Stops following everyone (recording is over).
    fn unfollow_all(&mut self);
    /// Tells the kernel side where a process's CPython is, so its frames are walked.
    fn set_python(&mut self, pid: u32, layout: PyProcess) -> Result<()>;
    fn forget_python(&mut self, pid: u32);
    /// The kernel side's drop counters now (None when there is no kernel side).
    fn kernel_drops(&self) -> Option<KernelDrops>;

    /// /proc/PID/stat of a process.
    fn stat(&self, pid: u32) -> Option<procfs::Stat>;
    /// /proc/PID/task/TID/stat of one of its threads.
    fn thread_stat(&self, pid: u32, tid: u32) -> Option<procfs::Stat>;
    /// The binary a process runs.
    fn exe(&self, pid: u32) -> Option<PathBuf>;
    /// Thread ids of a process.
    fn threads(&self, pid: u32) -> Vec<u32>;
    /// Whether a task that was just forked is a process (its own thread group leader) rather
    /// than a thread.
    fn is_process(&self, tid: u32) -> bool;
    /// Who a PID is now (None when gone or a zombie).
    fn process_id(&self, pid: u32) -> Option<procfs::ProcessId>;
    /// Still alive, and still the same process.
    fn is_alive(&self, id: procfs::ProcessId) -> bool {
        self.process_id(id.pid) == Some(id)
    }
    /// What the stack readers read of /proc (maps, binaries: see [`procfs::ProcReader`]).
    fn proc_reader(&self) -> &dyn procfs::ProcReader;
    /// A thread blocked in a syscall: the call, its registers and up to `bytes` of its stack
    /// (see [`procfs::BlockedStack`]).
    fn blocked_stack(&self, pid: u32, tid: u32, bytes: usize) -> Option<procfs::BlockedStack>;
}

/// Live: the loaded programs' maps and the real /proc.
impl SystemAccess for Probes {
    fn live(&self) -> bool {
        true
    }
    fn kernel_stack(&self, id: i32) -> Option<Vec<u64>> {
        self.stack(id)
    }
    fn unfollow(&mut self, pid: u32) {
        Probes::unfollow(self, pid);
    }
    fn unfollow_all(&mut self) {
        Probes::unfollow_all(self);
    }
    fn set_python(&mut self, pid: u32, layout: PyProcess) -> Result<()> {
        Probes::set_python(self, pid, layout)
    }
    fn forget_python(&mut self, pid: u32) {
        Probes::forget_python(self, pid);
    }
    fn kernel_drops(&self) -> Option<KernelDrops> {
        Some(self.drops())
    }
    fn stat(&self, pid: u32) -> Option<procfs::Stat> {
        procfs::stat(pid)
    }
    fn thread_stat(&self, pid: u32, tid: u32) -> Option<procfs::Stat> {
        procfs::thread_stat(pid, tid)
    }
    fn exe(&self, pid: u32) -> Option<PathBuf> {
        procfs::exe(pid)
    }
    fn threads(&self, pid: u32) -> Vec<u32> {
        procfs::threads(pid)
    }
    fn is_process(&self, tid: u32) -> bool {
        // A zombie counts too (it still has its stat): it was a process, gone already.
        procfs::stat(tid).is_some()
            && procfs::read_text(&format!("/proc/{tid}/status"))
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("Tgid:").map(|v| v.trim().to_string()))
                })
                .is_some_and(|tgid| tgid == tid.to_string())
    }
    fn process_id(&self, pid: u32) -> Option<procfs::ProcessId> {
        procfs::process_id(pid)
    }
    fn proc_reader(&self) -> &dyn procfs::ProcReader {
        &procfs::LiveProc
    }
    fn blocked_stack(&self, pid: u32, tid: u32, bytes: usize) -> Option<procfs::BlockedStack> {
        procfs::blocked_stack(pid, tid, bytes)
    }
}

/// Replaying a saved recording: nothing is live, nothing is read, no kernel map is touched.
/// Everything known about the recorded processes was saved with them.
pub struct Replay;

impl SystemAccess for Replay {
    fn live(&self) -> bool {
        false
    }
    fn kernel_stack(&self, _id: i32) -> Option<Vec<u64>> {
        None
    }
    fn unfollow(&mut self, _pid: u32) {}
    fn unfollow_all(&mut self) {}
    fn set_python(&mut self, _pid: u32, _layout: PyProcess) -> Result<()> {
        Ok(())
    }
    fn forget_python(&mut self, _pid: u32) {}
    fn kernel_drops(&self) -> Option<KernelDrops> {
        None
    }
    fn stat(&self, _pid: u32) -> Option<procfs::Stat> {
        None
    }
    fn thread_stat(&self, _pid: u32, _tid: u32) -> Option<procfs::Stat> {
        None
    }
    fn exe(&self, _pid: u32) -> Option<PathBuf> {
        None
    }
    fn threads(&self, _pid: u32) -> Vec<u32> {
        Vec::new()
    }
    fn is_process(&self, _tid: u32) -> bool {
        false
    }
    fn process_id(&self, _pid: u32) -> Option<procfs::ProcessId> {
        None
    }
    fn proc_reader(&self) -> &dyn procfs::ProcReader {
        &procfs::NoProc
    }
    fn blocked_stack(&self, _pid: u32, _tid: u32, _bytes: usize) -> Option<procfs::BlockedStack> {
        None
    }
}

/// A live system made of plain data, for unit tests: the processes /proc would show, the kernel
/// stacks the stack map would hold, and a log of what the session did to the kernel maps.
#[cfg(test)]
pub mod fake {
    use std::collections::{BTreeSet, HashMap};

    use super::*;

    /// One process as the fake /proc shows it.
    #[derive(Clone, Debug)]
    pub struct FakeProcess {
        pub comm: String,
        pub exe: PathBuf,
        /// Thread ids and their names.
        pub threads: Vec<(u32, String)>,
        pub start_ticks: u64,
    }

    #[derive(Default)]
    pub struct FakeSystem {
        pub processes: HashMap<u32, FakeProcess>,
        pub kernel_stacks: HashMap<i32, Vec<u64>>,
        pub drops: KernelDrops,
        /// PIDs the kernel side follows (the session only removes them: following is the
        /// commands' job).
        pub followed: BTreeSet<u32>,
        /// PIDs whose interpreter the kernel side was told about.
        pub pythons: BTreeSet<u32>,
        /// Every `unfollow` call, in order.
        pub unfollowed: Vec<u32>,
        /// What the stack readers find in /proc (a spawned process maps nothing: no Python).
        pub proc: procfs::fake::FakeProc,
        /// Threads blocked in a syscall, by tid.
        pub blocked: HashMap<u32, procfs::BlockedStack>,
    }

    impl FakeSystem {
        /// Adds a process (its main thread named like it) that the kernel side follows.
        pub fn spawn(&mut self, pid: u32, comm: &str, threads: &[(u32, &str)]) {
            let mut all = vec![(pid, comm.to_string())];
            all.extend(threads.iter().map(|(tid, name)| (*tid, name.to_string())));
            self.processes.insert(
                pid,
                FakeProcess {
                    comm: comm.into(),
                    exe: PathBuf::from(format!("/usr/bin/{comm}")),
                    threads: all,
                    start_ticks: u64::from(pid),
                },
            );
            self.followed.insert(pid);
            self.proc.maps.insert(pid, Vec::new());
        }

        /// The process is gone from the fake /proc.
        pub fn reap(&mut self, pid: u32) {
            self.processes.remove(&pid);
            self.proc.maps.remove(&pid);
        }

        fn stat_of(comm: &str, start_ticks: u64) -> procfs::Stat {
            procfs::Stat {
                comm: comm.into(),
                state: 'S',
                ppid: 1,
                start_ticks,
            }
        }
    }

    impl SystemAccess for FakeSystem {
        fn live(&self) -> bool {
            true
        }
        fn kernel_stack(&self, id: i32) -> Option<Vec<u64>> {
            self.kernel_stacks.get(&id).cloned()
        }
        fn unfollow(&mut self, pid: u32) {
            self.followed.remove(&pid);
            self.unfollowed.push(pid);
        }
        fn unfollow_all(&mut self) {
            self.followed.clear();
        }
        fn set_python(&mut self, pid: u32, _layout: PyProcess) -> Result<()> {
            self.pythons.insert(pid);
            Ok(())
        }
        fn forget_python(&mut self, pid: u32) {
            self.pythons.remove(&pid);
        }
        fn kernel_drops(&self) -> Option<KernelDrops> {
            Some(self.drops)
        }
        fn stat(&self, pid: u32) -> Option<procfs::Stat> {
            let p = self.processes.get(&pid)?;
            Some(Self::stat_of(&p.comm, p.start_ticks))
        }
        fn thread_stat(&self, pid: u32, tid: u32) -> Option<procfs::Stat> {
            let p = self.processes.get(&pid)?;
            let (_, name) = p.threads.iter().find(|(t, _)| *t == tid)?;
            Some(Self::stat_of(name, p.start_ticks))
        }
        fn exe(&self, pid: u32) -> Option<PathBuf> {
            Some(self.processes.get(&pid)?.exe.clone())
        }
        fn threads(&self, pid: u32) -> Vec<u32> {
            self.processes
                .get(&pid)
                .map(|p| p.threads.iter().map(|(tid, _)| *tid).collect())
                .unwrap_or_default()
        }
        fn is_process(&self, tid: u32) -> bool {
            self.processes.contains_key(&tid)
        }
        fn process_id(&self, pid: u32) -> Option<procfs::ProcessId> {
            let p = self.processes.get(&pid)?;
            Some(procfs::ProcessId {
                pid,
                start_ticks: p.start_ticks,
            })
        }
        fn proc_reader(&self) -> &dyn procfs::ProcReader {
            &self.proc
        }
        fn blocked_stack(&self, _pid: u32, tid: u32, bytes: usize) -> Option<procfs::BlockedStack> {
            let mut blocked = self.blocked.get(&tid)?.clone();
            blocked.stack.truncate(bytes);
            Some(blocked)
        }
    }
}
