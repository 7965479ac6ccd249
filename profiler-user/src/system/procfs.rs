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
    // The target names its threads (prctl PR_SET_NAME): made safe here, where it enters.
    let comm = crate::sanitize::name(text.get(open + 1..close)?);
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state); starttime is field 22.
    Some(Stat {
        comm,
        state: rest.first()?.chars().next()?,
        ppid: rest.get(1)?.parse().ok()?,
        start_ticks: rest.get(19)?.parse().ok()?,
    })
}

/// A /proc text file that may hold the target's names (its comm, its paths): not
/// necessarily UTF-8, so read as bytes, with invalid sequences replaced.
pub fn read_text(path: &str) -> Option<String> {
    let bytes = fs::read(path).ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

pub fn stat(pid: u32) -> Option<Stat> {
    parse_stat(&read_text(&format!("/proc/{pid}/stat"))?)
}

pub fn thread_stat(pid: u32, tid: u32) -> Option<Stat> {
    parse_stat(&read_text(&format!("/proc/{pid}/task/{tid}/stat"))?)
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

/// The process a live thread belongs to (its `Tgid:` in /proc/TID/status), None when gone.
pub fn tgid_of(tid: u32) -> Option<u32> {
    let status = read_text(&format!("/proc/{tid}/status"))?;
    let state_dead = status
        .lines()
        .find_map(|l| l.strip_prefix("State:"))
        .is_some_and(|s| s.trim_start().starts_with('Z') || s.trim_start().starts_with('X'));
    if state_dead {
        return None;
    }
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
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
    let text = read_text(&format!("/proc/{pid}/task/{tid}/syscall"))?;
    text.split_whitespace().next()?.parse().ok()
}

/// Reads `buf.len()` bytes of process `pid`'s memory at `addr` (process_vm_readv: no file
/// descriptor, the target is not stopped); false unless all were read. The bytes are the
/// target's and may change under it: callers treat them as hostile input.
pub fn read_memory(pid: u32, addr: u64, buf: &mut [u8]) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: buf.len(),
    };
    // SAFETY: one local iovec over `buf`, which we own and which outlives the call; the
    // remote address is only read by the kernel, which checks it against the target's mappings.
    let read = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
    usize::try_from(read).is_ok_and(|n| n == buf.len())
}

/// A thread blocked in a syscall as /proc shows it without stopping it: the syscall, the user
/// stack pointer and instruction pointer it entered the call with
/// (/proc/PID/task/TID/syscall), and up to `bytes` of its stack from there (/proc/PID/mem).
#[derive(Clone, Debug)]
pub struct BlockedStack {
    pub syscall: i64,
    pub ip: u64,
    pub sp: u64,
    pub stack: Vec<u8>,
}

/// See [`BlockedStack`]; None when the thread is running, in user space, or unreadable.
pub fn blocked_stack(pid: u32, tid: u32, bytes: usize) -> Option<BlockedStack> {
    use std::os::unix::fs::FileExt as _;
    let text = read_text(&format!("/proc/{pid}/task/{tid}/syscall"))?;
    let (syscall, sp, ip) = parse_syscall_file(&text)?;
    let mem = fs::File::open(format!("/proc/{pid}/mem")).ok()?;
    // Up to `bytes`, less where the stack's mapping ends sooner: halve until a read succeeds.
    let mut len = bytes;
    while len >= 64 {
        let mut stack = vec![0u8; len];
        if let Ok(n) = mem.read_at(&mut stack, sp)
            && n > 0
        {
            stack.truncate(n);
            return Some(BlockedStack {
                syscall,
                ip,
                sp,
                stack,
            });
        }
        len /= 2;
    }
    None
}

/// (syscall, sp, pc) from /proc/PID/task/TID/syscall: "NR ARG1 .. ARG6 SP PC" (hex but NR);
/// None for "running", "-1 SP PC" (not in a syscall) or anything else.
fn parse_syscall_file(text: &str) -> Option<(i64, u64, u64)> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    let [nr, _, _, _, _, _, _, sp, pc] = fields[..] else {
        return None;
    };
    let hex = |f: &str| u64::from_str_radix(f.strip_prefix("0x")?, 16).ok();
    let nr: i64 = nr.parse().ok()?;
    (nr >= 0).then_some((nr, hex(sp)?, hex(pc)?))
}

/// Opens a file a target may have put in our way (a binary, a library, a debug file) for
/// reading, refusing anything but a regular file: `O_NONBLOCK` so that a FIFO swapped in
/// cannot hang the agent at open, then a check of what was opened.
pub fn open_regular(path: &Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    if !file.metadata()?.file_type().is_file() {
        return Err(std::io::Error::other(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    Ok(file)
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
    parse_maps_bytes(text.as_bytes())
}

/// [`parse_maps`] of the file's bytes: paths are the target's file names, which need not be
/// UTF-8, and are kept as they are so that they can be opened.
pub fn parse_maps_bytes(bytes: &[u8]) -> Vec<Mapping> {
    use std::os::unix::ffi::OsStrExt as _;
    bytes
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            // Five fields, then the path (which may hold spaces) after the padding.
            let mut rest = line;
            let mut field = || {
                let start = rest.iter().position(|b| !b.is_ascii_whitespace())?;
                let len = rest[start..]
                    .iter()
                    .position(u8::is_ascii_whitespace)
                    .unwrap_or(rest.len() - start);
                let value = std::str::from_utf8(&rest[start..start + len]).ok();
                rest = &rest[start + len..];
                value
            };
            let range = field()?;
            let perms = field()?;
            let offset = field()?;
            let _dev = field()?;
            let inode = field()?;
            let path = rest.trim_ascii();
            if !(path.starts_with(b"/") || path == b"[vdso]") {
                return None;
            }
            let path = path.strip_suffix(b" (deleted)").unwrap_or(path);
            let (start, end) = range.split_once('-')?;
            Some(Mapping {
                start: u64::from_str_radix(start, 16).ok()?,
                end: u64::from_str_radix(end, 16).ok()?,
                file_offset: u64::from_str_radix(offset, 16).ok()?,
                executable: perms.contains('x'),
                path: PathBuf::from(std::ffi::OsStr::from_bytes(path)),
                inode: inode.parse().unwrap_or(0),
            })
        })
        .collect()
}

pub fn maps(pid: u32) -> Option<Vec<Mapping>> {
    Some(parse_maps_bytes(
        &fs::read(format!("/proc/{pid}/maps")).ok()?,
    ))
}

/// What the stack readers ask /proc about a target (its mappings, its binary, the files behind
/// them), behind one small trait: live, [`LiveProc`] reads the real /proc; replaying,
/// [`NoProc`] finds nothing (the PIDs may belong to someone else by now); tests use
/// [`fake::FakeProc`], so the readers' decisions (which mapping is an interpreter, which path
/// reaches a replaced binary) are unit-tested without a target.
pub trait ProcReader: Send {
    /// /proc/PID/maps, file-backed mappings only (None: gone, or not readable).
    fn maps(&self, pid: u32) -> Option<Vec<Mapping>>;
    /// The binary a process runs (/proc/PID/exe).
    fn exe(&self, pid: u32) -> Option<PathBuf>;
    /// The inode of the file a path names, symlinks followed (the /proc/PID/map_files and
    /// /proc/PID/exe links); None when there is none or it cannot be looked at.
    fn inode(&self, path: &Path) -> Option<u64>;
    /// Opens a file a target may have put in our way, regular files only (see
    /// [`open_regular`]).
    fn open_regular(&self, path: &Path) -> std::io::Result<fs::File>;
    /// /proc/PID/mem, read-only (no ptrace attach: the target keeps running).
    fn open_mem(&self, pid: u32) -> std::io::Result<fs::File>;
    /// /proc/PID/cmdline: the arguments, NUL-separated (the target may have rewritten them).
    fn cmdline(&self, pid: u32) -> Option<Vec<u8>>;
    /// /proc/PID/stat.
    fn stat(&self, pid: u32) -> Option<Stat>;
}

/// The real /proc.
pub struct LiveProc;

impl ProcReader for LiveProc {
    fn maps(&self, pid: u32) -> Option<Vec<Mapping>> {
        maps(pid)
    }
    fn exe(&self, pid: u32) -> Option<PathBuf> {
        exe(pid)
    }
    fn inode(&self, path: &Path) -> Option<u64> {
        use std::os::unix::fs::MetadataExt as _;
        fs::metadata(path).ok().map(|m| m.ino())
    }
    fn open_regular(&self, path: &Path) -> std::io::Result<fs::File> {
        open_regular(path)
    }
    fn open_mem(&self, pid: u32) -> std::io::Result<fs::File> {
        fs::File::open(format!("/proc/{pid}/mem"))
    }
    fn cmdline(&self, pid: u32) -> Option<Vec<u8>> {
        fs::read(format!("/proc/{pid}/cmdline")).ok()
    }
    fn stat(&self, pid: u32) -> Option<Stat> {
        stat(pid)
    }
}

/// Replaying: no process is there to read.
pub struct NoProc;

impl ProcReader for NoProc {
    fn maps(&self, _pid: u32) -> Option<Vec<Mapping>> {
        None
    }
    fn exe(&self, _pid: u32) -> Option<PathBuf> {
        None
    }
    fn inode(&self, _path: &Path) -> Option<u64> {
        None
    }
    fn open_regular(&self, path: &Path) -> std::io::Result<fs::File> {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{}: not read when replaying", path.display()),
        ))
    }
    fn open_mem(&self, pid: u32) -> std::io::Result<fs::File> {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("/proc/{pid}/mem: not read when replaying"),
        ))
    }
    fn cmdline(&self, _pid: u32) -> Option<Vec<u8>> {
        None
    }
    fn stat(&self, _pid: u32) -> Option<Stat> {
        None
    }
}

/// The path that reaches the file behind a mapping of process `pid`: its own path when that is
/// still the mapped file (same inode); else, while the process lives, the mapping itself
/// through /proc/PID/map_files (a binary deleted or replaced since it was started); else
/// /proc/PID/exe (the main binary, reachable with ptrace access alone); else the path through
/// the process's root (a container). None when none of these is the mapped file.
pub fn mapped_file(proc: &dyn ProcReader, pid: u32, mapping: &Mapping) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = &mapping.path;
    // A pseudo-mapping ([vdso]) has no file. (`Path::starts_with` compares whole components:
    // it never matched "[vdso]", which was then looked up relative to the agent's directory.)
    if path.as_os_str().as_bytes().starts_with(b"[") {
        return None;
    }
    // An inode of 0 (not known) takes any file at the path.
    let same_file = |candidate: &Path| {
        proc.inode(candidate)
            .is_some_and(|inode| mapping.inode == 0 || inode == mapping.inode)
    };
    if same_file(path) {
        return Some(path.to_path_buf());
    }
    let mapped = PathBuf::from(format!(
        "/proc/{pid}/map_files/{:x}-{:x}",
        mapping.start, mapping.end
    ));
    if same_file(&mapped) {
        return Some(mapped);
    }
    // map_files needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN; the main binary is also
    // reachable through /proc/PID/exe with ptrace access alone.
    let exe = PathBuf::from(format!("/proc/{pid}/exe"));
    if same_file(&exe) {
        return Some(exe);
    }
    let relative = path.strip_prefix("/").ok()?;
    let in_root = PathBuf::from(format!("/proc/{pid}/root")).join(relative);
    same_file(&in_root).then_some(in_root)
}

/// Clock ticks per second, for converting start times.
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as u64 } else { 100 }
}

/// A /proc made of plain data, for unit tests.
#[cfg(test)]
pub mod fake {
    use std::{cell::RefCell, collections::HashMap};

    use super::*;

    #[derive(Default)]
    pub struct FakeProc {
        pub maps: HashMap<u32, Vec<Mapping>>,
        pub exes: HashMap<u32, PathBuf>,
        /// Files by path (as the links would resolve): their inode, and the real file a test
        /// hands out when one is opened (None: it cannot be opened).
        pub files: HashMap<PathBuf, (u64, Option<PathBuf>)>,
        /// Every path opened, in order.
        pub opened: RefCell<Vec<PathBuf>>,
        pub cmdlines: HashMap<u32, Vec<u8>>,
        /// Process names (the stat's comm).
        pub comms: HashMap<u32, String>,
    }

    impl FakeProc {
        /// A file at `path` with this inode, opened as the real file `contents`.
        pub fn file(&mut self, path: &str, inode: u64, contents: Option<&Path>) {
            self.files
                .insert(path.into(), (inode, contents.map(Path::to_path_buf)));
        }
    }

    impl ProcReader for FakeProc {
        fn maps(&self, pid: u32) -> Option<Vec<Mapping>> {
            self.maps.get(&pid).cloned()
        }
        fn exe(&self, pid: u32) -> Option<PathBuf> {
            self.exes.get(&pid).cloned()
        }
        fn inode(&self, path: &Path) -> Option<u64> {
            self.files.get(path).map(|(inode, _)| *inode)
        }
        fn open_regular(&self, path: &Path) -> std::io::Result<fs::File> {
            self.opened.borrow_mut().push(path.to_path_buf());
            match self.files.get(path) {
                Some((_, Some(real))) => open_regular(real),
                _ => Err(std::io::ErrorKind::NotFound.into()),
            }
        }
        fn open_mem(&self, _pid: u32) -> std::io::Result<fs::File> {
            Err(std::io::ErrorKind::PermissionDenied.into())
        }
        fn cmdline(&self, pid: u32) -> Option<Vec<u8>> {
            self.cmdlines.get(&pid).cloned()
        }
        fn stat(&self, pid: u32) -> Option<Stat> {
            Some(Stat {
                comm: self.comms.get(&pid)?.clone(),
                state: 'S',
                ppid: 1,
                start_ticks: 0,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// process_vm_readv reads what a process holds at an address (our own here), and says
    /// so when it cannot (an unmapped page).
    #[test]
    fn memory_is_read_whole_or_not_at_all() {
        let here: [u8; 7] = *b"stalls!";
        let mut read = [0u8; 7];
        assert!(read_memory(
            std::process::id(),
            here.as_ptr() as u64,
            &mut read
        ));
        assert_eq!(&read, b"stalls!");
        assert!(
            !read_memory(std::process::id(), 8, &mut read),
            "page 0 is not mapped"
        );
        assert!(!read_memory(u32::MAX, here.as_ptr() as u64, &mut read));
    }

    /// A blocked thread's line names its syscall, stack and instruction pointers; a running
    /// thread or one in user space has none.
    #[test]
    fn syscall_file_of_a_blocked_thread() {
        let line = "230 0x1 0x1 0x7ffd5e4c2f80 0x0 0x0 0x0 0x7ffd5e4c2f48 0x7f0a1c2e4d85\n";
        assert_eq!(
            parse_syscall_file(line),
            Some((230, 0x7ffd5e4c2f48, 0x7f0a1c2e4d85))
        );
        assert_eq!(parse_syscall_file("running\n"), None);
        assert_eq!(
            parse_syscall_file("-1 0x7ffd5e4c2f48 0x7f0a1c2e4d85\n"),
            None
        );
        assert_eq!(parse_syscall_file("230 0x1 zz 0 0 0 0 0x7ffd 0xzz"), None);
    }

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

    mod fuzz {
        use proptest::prelude::*;

        use super::super::*;

        proptest! {
            #![proptest_config(crate::fuzz_config())]

            /// A thread names itself anything (16 bytes, parentheses included): the stat line
            /// still parses, and the name comes out safe.
            #[test]
            fn fuzz_stat(comm in proptest::collection::vec(1u8..=255, 0..16), noise in ".{0,300}") {
                let comm = String::from_utf8_lossy(&comm).into_owned();
                let line = format!("4242 ({comm}) S 1 4242 4242 0 -1 4194560 153 0 0 0 0 0 0 0 20 0 1 0 987654 12345 67");
                let stat = parse_stat(&line).expect("well-formed line");
                prop_assert_eq!(stat.start_ticks, 987654);
                prop_assert!(!stat.comm.chars().any(char::is_control));
                let _ = parse_stat(&noise);
            }

            /// Paths in /proc/PID/maps are the target's file names: any text parses or is
            /// skipped.
            #[test]
            fn fuzz_maps(text in ".{0,600}", bytes in proptest::collection::vec(any::<u8>(), 0..600), path in ".{0,80}") {
                let _ = parse_maps(&text);
                let _ = parse_maps_bytes(&bytes);
                let line = format!("7f0000000000-7f0000001000 r-xp 00002000 fe:01 77 /{path}\n");
                for mapping in parse_maps(&line) {
                    prop_assert!(mapping.start <= mapping.end);
                }
            }
        }
    }

    fn mapping(path: &str, inode: u64) -> Mapping {
        Mapping {
            start: 0x1000,
            end: 0x2000,
            file_offset: 0,
            executable: true,
            path: path.into(),
            inode,
        }
    }

    /// The file behind a mapping: its path while it is the same file; a binary replaced since
    /// (another inode at the path) through map_files, or /proc/PID/exe without the capability
    /// map_files needs; a container's through the process's root; none for a pseudo-mapping or
    /// a file no path reaches any more.
    #[test]
    fn the_file_behind_a_mapping_is_found_by_its_inode() {
        use fake::FakeProc;
        let mut proc = FakeProc::default();
        let app = mapping("/usr/bin/app", 7);
        proc.file("/usr/bin/app", 7, None);
        assert_eq!(mapped_file(&proc, 42, &app), Some("/usr/bin/app".into()));
        // Replaced on disk by an upgrade.
        proc.file("/usr/bin/app", 8, None);
        assert_eq!(mapped_file(&proc, 42, &app), None);
        proc.file("/proc/42/exe", 7, None);
        assert_eq!(mapped_file(&proc, 42, &app), Some("/proc/42/exe".into()));
        proc.file("/proc/42/map_files/1000-2000", 7, None);
        assert_eq!(
            mapped_file(&proc, 42, &app),
            Some("/proc/42/map_files/1000-2000".into())
        );
        let lib = mapping("/usr/lib/libssl.so.3", 9);
        proc.file("/proc/42/root/usr/lib/libssl.so.3", 9, None);
        assert_eq!(
            mapped_file(&proc, 42, &lib),
            Some("/proc/42/root/usr/lib/libssl.so.3".into())
        );
        // A pseudo-mapping has no file, even where one of its name exists.
        proc.file("[vdso]", 0, None);
        assert_eq!(mapped_file(&proc, 42, &mapping("[vdso]", 0)), None);
        // Replaying, nothing is looked at.
        assert_eq!(mapped_file(&NoProc, 42, &app), None);
    }
}
