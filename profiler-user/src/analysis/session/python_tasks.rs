//! CPython in the session: interpreters looked for (see [`PythonDetection`]), the Python stacks
//! the kernel sends decoded and kept for their event, and the asyncio task each thread ran (for
//! a stall's `task`).

use super::*;

/// Task changes remembered per thread: a stall is reported when it ends, so only the recent
/// past is needed.
pub(super) const TASK_HISTORY: usize = 4096;
pub(super) const MAX_TASK_THREADS: usize = 65536;

/// A decoded Python stack waiting for the event it was taken for.
pub(super) struct PendingPython {
    pub(super) taken_ns: u64,
    pub(super) frames: Vec<python::DecodedFrame>,
    pub(super) task: Option<model::TaskInfo>,
}

impl Session {
    /// Looks for CPython in a process (see [`PythonDetection::detect`]).
    pub(super) fn detect_python(
        &mut self,
        system: &dyn SystemAccess,
        pid: u32,
        may_load_later: bool,
    ) {
        self.python.detect(system, pid, may_load_later);
    }

    /// Hands newly found interpreters to the kernel side, and looks again at processes that
    /// may have loaded one since (every 100 ms, for 5 s).
    pub fn sync_python(&mut self, system: &mut dyn SystemAccess) {
        let processes = &self.processes;
        self.python.sync(system, |pid| processes.contains(pid));
    }

    /// Python frames: decoded now (the code objects may be freed soon) and kept for the event
    /// that follows them.
    pub fn handle_python(&mut self, header: &profiler_common::PyStackHeader, frames: &[PyFrame]) {
        if header.pid == self.own_pid {
            return;
        }
        let (decoded, task) = self.python.decode(header, frames);
        self.pending_python.insert(
            header.tid,
            PendingPython {
                taken_ns: header.ts_ns,
                frames: decoded,
                task,
            },
        );
    }
}

/// The asyncio task each thread ran, as seen in its Python stacks: (time, task) at each change,
/// the latest TASK_HISTORY per thread, for at most MAX_TASK_THREADS threads.
#[derive(Default)]
pub(super) struct TaskHistory {
    by_thread: HashMap<u32, std::collections::VecDeque<(u64, Option<model::TaskInfo>)>>,
}

impl TaskHistory {
    /// Remembers which asyncio task a thread ran at `ts_ns` (only changes are kept).
    pub(super) fn note(&mut self, tid: u32, ts_ns: u64, task: Option<model::TaskInfo>) {
        if !self.by_thread.contains_key(&tid) && self.by_thread.len() >= MAX_TASK_THREADS {
            return;
        }
        let history = self.by_thread.entry(tid).or_default();
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
    pub(super) fn longest_in(&self, tid: u32, start: u64, end: u64) -> Option<model::TaskInfo> {
        let history = self.by_thread.get(&tid)?;
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

    /// The thread is gone.
    pub(super) fn forget_thread(&mut self, tid: u32) {
        self.by_thread.remove(&tid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(name: &str) -> Option<model::TaskInfo> {
        Some(model::TaskInfo {
            name: Some(name.into()),
            coroutine: format!("{name}()"),
            awaited_by: Vec::new(),
        })
    }

    /// A stall's task is the one its thread ran longest during it, counting the one current
    /// at its start; a thread with no Python stacks has none.
    #[test]
    fn the_task_of_a_stall_is_the_one_that_ran_longest_in_it() {
        let mut history = TaskHistory::default();
        history.note(1, 0, task("accept"));
        history.note(1, 100, task("handler"));
        history.note(1, 100, task("handler"));
        history.note(1, 400, None);
        history.note(1, 450, task("accept"));
        // 50..500: accept 50 + 50, handler 300.
        assert_eq!(history.longest_in(1, 50, 500), task("handler"));
        // 0..150: accept 100, handler 50.
        assert_eq!(history.longest_in(1, 0, 150), task("accept"));
        assert_eq!(history.longest_in(2, 0, 500), None);
        history.forget_thread(1);
        assert_eq!(history.longest_in(1, 50, 500), None);
    }
}
