//! Reading /proc: whether a process exists (and is the same one: start time), its threads,
//! children, names, which syscall a thread is blocked in, and its memory mappings.
//!
//! Only reads. Nothing here stops, signals or writes to a target.

use std::{
    fs,
    path::{Path, PathBuf},
};

/// Identity of a process: PID plus its start time in clock ticks since boot, so that a reused
/// PID is never taken for the process we attached to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProcessId {
    pub pid: u32,
    pub start_ticks: u64,
}

/// Fields of /proc/PID/stat we use. `comm` may contain spaces and parentheses, so the line is
/// split at the *last* ')'.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    pub comm: String,
    pub state: char,
    pub ppid: u32,
    pub start_ticks: u64,
}

pub fn parse_stat(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state); starttime is field 22.
    Some(Stat {
        comm,
        state: rest.first()?.chars().next()?,
        ppid: rest.get(1)?.parse().ok()?,
        start_ticks: rest.get(19)?.parse().ok()?,
    })
}

pub fn stat(pid: u32) -> Option<Stat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

pub fn thread_stat(pid: u32, tid: u32) -> Option<Stat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?)
}

/// The process's identity, or None when it does not exist (or is a zombie: it has exited).
pub fn process_id(pid: u32) -> Option<ProcessId> {
    let stat = stat(pid)?;
    (stat.state != 'Z' && stat.state != 'X').then_some(ProcessId {
        pid,
        start_ticks: stat.start_ticks,
    })
}

/// Still alive, and still the same process.
pub fn is_alive(id: ProcessId) -> bool {
    process_id(id.pid) == Some(id)
}

/// Thread ids of a process.
pub fn threads(pid: u32) -> Vec<u32> {
    numeric_entries(Path::new(&format!("/proc/{pid}/task")))
}

/// CPUs online (the ones whose events the kernel side can send), at least 1.
pub fn online_cpus() -> usize {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    usize::try_from(n).unwrap_or(1).max(1)
}

/// Every process on the machine.
pub fn all_pids() -> Vec<u32> {
    numeric_entries(Path::new("/proc"))
}

fn numeric_entries(dir: &Path) -> Vec<u32> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// `roots` and all their descendants alive now (from the ppid links in /proc/*/stat).
pub fn with_descendants(roots: &[u32]) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = all_pids()
        .into_iter()
        .filter_map(|pid| Some((pid, stat(pid)?.ppid)))
        .collect();
    let mut result: Vec<u32> = roots.to_vec();
    let mut index = 0;
    while index < result.len() {
        let parent = result[index];
        for &(pid, ppid) in &parents {
            if ppid == parent && !result.contains(&pid) {
                result.push(pid);
            }
        }
        index += 1;
    }
    result
}

/// The syscall a thread is blocked in (first field of /proc/PID/task/TID/syscall), or None when
/// it is running or in user space. Reading this file does not stop the thread.
pub fn blocked_syscall(pid: u32, tid: u32) -> Option<i64> {
    let text = fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

pub fn exe(pid: u32) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/exe")).ok()
}

/// One executable-or-not file mapping from /proc/PID/maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub file_offset: u64,
    pub executable: bool,
    pub path: PathBuf,
    /// Inode of the mapped file: tells a binary replaced on disk since it was mapped.
    pub inode: u64,
}

/// File-backed mappings of /proc/PID/maps text (anonymous, [heap], [stack] and the like are
/// dropped: nothing to symbolize them with, except [vdso] which is kept by name).
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let range = fields.next()?;
            let perms = fields.next()?;
            let offset = fields.next()?;
            let _dev = fields.next()?;
            let inode = fields.next()?;
            let path: Vec<&str> = fields.collect();
            let path = path.join(" ");
            if !(path.starts_with('/') || path == "[vdso]") {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            Some(Mapping {
                start: u64::from_str_radix(start, 16).ok()?,
                end: u64::from_str_radix(end, 16).ok()?,
                file_offset: u64::from_str_radix(offset, 16).ok()?,
                executable: perms.contains('x'),
                path: PathBuf::from(path.trim_end_matches(" (deleted)")),
                inode: inode.parse().unwrap_or(0),
            })
        })
        .collect()
}

pub fn maps(pid: u32) -> Option<Vec<Mapping>> {
    Some(parse_maps(
        &fs::read_to_string(format!("/proc/{pid}/maps")).ok()?,
    ))
}

/// Clock ticks per second, for converting start times.
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_awkward_comm() {
        let line = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 153 0 0 0 0 0 0 0 20 0 1 0 987654 12345 67 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let stat = parse_stat(line).expect("parses");
        assert_eq!(stat.comm, "my (odd) name");
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.ppid, 1);
        assert_eq!(stat.start_ticks, 987654);
    }

    #[test]
    fn maps_keep_files_and_vdso() {
        let text = "\
55d4c8a00000-55d4c8a01000 r--p 00000000 fe:01 123 /usr/bin/my server
55d4c8a01000-55d4c8a02000 r-xp 00001000 fe:01 123 /usr/bin/my server
7ffd5e9f0000-7ffd5ea11000 rw-p 00000000 00:00 0                          [stack]
7f0000000000-7f0000001000 r-xp 00002000 fe:01 77 /tmp/gone.so (deleted)
7ffd5eb2e000-7ffd5eb30000 r-xp 00000000 00:00 0                          [vdso]
";
        let maps = parse_maps(text);
        assert_eq!(maps.len(), 4);
        assert_eq!(maps[1].start, 0x55d4c8a01000);
        assert_eq!(maps[1].file_offset, 0x1000);
        assert!(maps[1].executable);
        assert_eq!(maps[1].path, PathBuf::from("/usr/bin/my server"));
        assert_eq!(maps[2].path, PathBuf::from("/tmp/gone.so"));
        assert_eq!(maps[3].path, PathBuf::from("[vdso]"));
    }
}
