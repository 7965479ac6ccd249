//! Which followed processes run CPython: interpreters found (and the layouts the kernel side is
//! to be told), processes looked at again because they may load it in a moment (a command just
//! started, a process that just exec'd), and what the recording says about Python.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::{model, stacks::python, system::access::SystemAccess};

/// A process that may still load CPython is looked at again this often, this many times
/// (5 s: an interpreter starting up has mapped itself by then).
const RETRY_EVERY: Duration = Duration::from_millis(100);
const MAX_TRIES: u32 = 50;
/// Interpreters listed in the recording at most.
const MAX_INTERPRETERS: usize = 10_000;

#[derive(Default)]
pub struct PythonDetection {
    /// CPython interpreters of the followed processes.
    pub pythons: python::Pythons,
    /// Processes whose interpreter the kernel side has not been told about yet.
    to_register: Vec<u32>,
    /// Processes that may still load CPython: pid -> (tries, last try).
    maybe_later: HashMap<u32, (u32, Instant)>,
    /// What the recording says about Python (interpreters seen, frames read).
    pub(super) report: model::PythonReport,
    /// Processes that exited before their maps could be read: said once, at the end (a shim
    /// or build script can start dozens; a line each would bury what matters).
    pub(super) maps_unread_exited: u64,
}

impl PythonDetection {
    /// Looks for CPython in a process; one that may still load it (`may_load_later`) is
    /// looked at again for a few seconds (see [`PythonDetection::due`]).
    pub(super) fn detect(&mut self, system: &dyn SystemAccess, pid: u32, may_load_later: bool) {
        self.pythons.forget(pid);
        match self.pythons.detect(system.proc_reader(), pid) {
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
                self.pythons.add(system.proc_reader(), pid, *interpreter);
                self.to_register.push(pid);
                self.maybe_later.remove(&pid);
            }
            Ok(Some(python::Detection::Unreadable(unreadable))) => {
                self.maybe_later.remove(&pid);
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
            Ok(None) if may_load_later => self.may_load_later(pid, Instant::now()),
            Ok(None) => {}
            Err(err) => {
                self.maybe_later.remove(&pid);
                if gone(system, pid, &err) {
                    self.maps_unread_exited += 1;
                } else {
                    eprintln!("stallscope: warning: process {pid}: no Python frames: {err:#}");
                }
            }
        }
    }

    fn note_interpreter(&mut self, record: model::PythonInterpreterRecord) {
        if self.report.interpreters.len() < MAX_INTERPRETERS {
            self.report.interpreters.push(record);
        }
    }

    /// No CPython yet, but it may come: looked at again (first from `now`).
    fn may_load_later(&mut self, pid: u32, now: Instant) {
        self.maybe_later.entry(pid).or_insert((0, now));
    }

    /// Whether [`PythonDetection::sync`] has anything to do.
    pub(super) fn pending(&self) -> bool {
        !self.to_register.is_empty() || !self.maybe_later.is_empty()
    }

    /// The processes to look at again now: each one RETRY_EVERY apart, MAX_TRIES times, and
    /// only while it is followed (`followed`); the others are given up.
    fn due(&mut self, now: Instant, followed: impl Fn(u32) -> bool) -> Vec<u32> {
        let mut due: Vec<u32> = self
            .maybe_later
            .iter()
            .filter(|(_, (_, last))| now.duration_since(*last) >= RETRY_EVERY)
            .map(|(pid, _)| *pid)
            .collect();
        due.retain(|pid| {
            let tries = self.maybe_later.get(pid).map_or(0, |t| t.0) + 1;
            if tries > MAX_TRIES || !followed(*pid) {
                self.maybe_later.remove(pid);
                return false;
            }
            self.maybe_later.insert(*pid, (tries, now));
            true
        });
        due
    }

    /// Hands newly found interpreters to the kernel side, and looks again at the processes
    /// that may have loaded one since.
    pub(super) fn sync(&mut self, system: &mut dyn SystemAccess, followed: impl Fn(u32) -> bool) {
        for pid in self.due(Instant::now(), followed) {
            self.detect(system, pid, true);
        }
        for pid in std::mem::take(&mut self.to_register) {
            if let Some(interpreter) = self.pythons.get(pid)
                && let Err(err) = system.set_python(pid, interpreter.kernel_layout())
            {
                eprintln!("stallscope: warning: {err:#}");
            }
        }
    }

    /// Python frames decoded now (the code objects may be freed soon), with the asyncio task
    /// they ran; a process whose kernel-side layout changed (it learnt a task's layout) is
    /// told again at the next sync.
    pub(super) fn decode(
        &mut self,
        header: &profiler_common::PyStackHeader,
        frames: &[profiler_common::PyFrame],
    ) -> (Vec<python::DecodedFrame>, Option<model::TaskInfo>) {
        let started = Instant::now();
        let decoded = self.pythons.decode(header.pid, frames);
        let task = self.pythons.task(header, frames, &decoded);
        if !self.pythons.changed.is_empty() {
            let changed = std::mem::take(&mut self.pythons.changed);
            self.to_register.extend(changed);
        }
        let report = &mut self.report;
        report.decode_ns += started.elapsed().as_nanos() as u64;
        report.stacks += 1;
        report.frames += frames.len() as u64;
        report.truncated += u64::from(header.truncated != 0);
        (decoded, task)
    }

    /// The process exited (or exec'd into something else): nothing of its interpreter is kept.
    pub(super) fn forget(&mut self, pid: u32) {
        self.pythons.forget(pid);
        self.maybe_later.remove(&pid);
    }
}

/// Whether reading a process failed because it is gone: its /proc entry went away or it is a
/// zombie, or the read said so (ENOENT, ESRCH).
fn gone(system: &dyn SystemAccess, pid: u32, err: &anyhow::Error) -> bool {
    let said_gone = err.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|e| {
            e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(3)
        })
    });
    // A zombie (exited, not yet reaped) still has its /proc entry, with no maps.
    said_gone
        || system
            .stat(pid)
            .is_none_or(|s| matches!(s.state, 'Z' | 'X'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system::access::fake::FakeSystem;

    /// A process that may still load CPython is looked at again every 100 ms, 50 times at
    /// most, and not at all once it is no longer followed.
    #[test]
    fn a_process_that_may_load_python_later_is_retried_for_a_while_only() {
        let mut detection = PythonDetection::default();
        let start = Instant::now();
        detection.may_load_later(1, start);
        detection.may_load_later(2, start);
        assert!(detection.pending());
        assert!(detection.due(start, |_| true).is_empty(), "too soon");
        let mut now = start;
        let mut tries = 0;
        loop {
            now += RETRY_EVERY;
            let mut due = detection.due(now, |pid| pid == 1);
            due.sort_unstable();
            if due.is_empty() {
                break;
            }
            assert_eq!(due, vec![1], "2 is not followed");
            assert!(detection.due(now, |_| true).is_empty(), "100 ms apart");
            tries += 1;
        }
        assert_eq!(tries, MAX_TRIES);
        assert!(!detection.pending());
    }

    /// A read that failed because the process is gone (ENOENT, or a zombie) is counted, not
    /// warned about; another failure is a warning.
    #[test]
    fn a_read_failing_because_the_process_is_gone_is_told_apart() {
        let mut system = FakeSystem::default();
        system.spawn(10, "app", &[]);
        let not_found = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::NotFound))
            .context("reading /proc/10/maps");
        let denied =
            anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        assert!(gone(&system, 10, &not_found));
        assert!(!gone(&system, 10, &denied));
        system.reap(10);
        assert!(gone(&system, 10, &denied), "no /proc entry");
    }
}
