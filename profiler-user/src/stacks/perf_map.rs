//! A JIT's own symbol map, `/tmp/perf-PID.map` ("START SIZE name" per line, hex), as written
//! by Node `--perf-basic-prof`, Python `-X perf` and the JVM's perf agents: found, opened and
//! parsed without letting the target choose what the agent (root) reads.
//!
//! The file is the target's, so it is hostile input, and so is where it points:
//! - it is looked up inside the target's mount namespace, through `/proc/PID/root`, with the
//!   PID the target knows itself by (`NSpid`: a process in a container writes
//!   `/tmp/perf-<its own pid>.map`);
//! - it is opened with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)` from the target's root,
//!   so no symlink on the way leaves that root, and with `O_NOFOLLOW` so the file itself is no
//!   symlink at all, and `O_NONBLOCK` so a FIFO cannot hang the agent;
//! - it must be a regular file owned by the target's user or by root (perf's rule);
//! - at most [`MAX_PERF_MAP_BYTES`] are read, and each name is made safe
//!   ([`crate::sanitize::name`]).
//!
//! blazesym never reads perf maps here: symbolize uses only its ELF and kernel sources (its
//! process source, which would read them without these checks, is not used).

use std::{
    fs::File,
    io::Read as _,
    os::{
        fd::{FromRawFd as _, OwnedFd},
        unix::fs::MetadataExt as _,
    },
};

/// Largest perf map read: Node writes about 100 bytes per compiled function, so this is over
/// half a million functions; past it the rest of the file is ignored (and said once).
pub const MAX_PERF_MAP_BYTES: u64 = 64 << 20;

/// Why a perf map was not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("{path} is a symbolic link (not followed)")]
    Symlink { path: String },
    #[error("{path} is not a regular file")]
    NotRegular { path: String },
    #[error("{path} is owned by uid {owner}, not by the process's user ({uid}) or root")]
    Owner { path: String, owner: u32, uid: u32 },
    #[error("{path} could not be opened: {error}")]
    Open { path: String, error: String },
}

/// A perf map read: its entries, how big the file was, whether it was cut at the limit.
#[derive(Debug, Default)]
pub struct PerfMap {
    /// (start, end, name), sorted by start.
    pub entries: Vec<(u64, u64, String)>,
    pub size: u64,
    pub truncated: bool,
}

impl PerfMap {
    /// The name of the JIT code at `addr`.
    pub fn lookup(&self, addr: u64) -> Option<&str> {
        let index = self
            .entries
            .partition_point(|e| e.0 <= addr)
            .checked_sub(1)?;
        let (start, end, name) = &self.entries[index];
        (*start <= addr && addr < *end).then_some(name.as_str())
    }
}

/// Entries of a perf map's text; malformed lines are skipped, names made safe.
pub fn parse(text: &str) -> Vec<(u64, u64, String)> {
    let hex = |field: &str| u64::from_str_radix(field.trim_start_matches("0x"), 16).ok();
    let mut entries: Vec<(u64, u64, String)> = text
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ' ');
            let start = hex(parts.next()?)?;
            let size = hex(parts.next()?)?;
            let end = start.checked_add(size)?;
            Some((start, end, crate::sanitize::name(parts.next()?.trim())))
        })
        .collect();
    entries.sort_by_key(|e| e.0);
    entries
}

/// The PID the process sees itself as (last field of `NSpid:` in /proc/PID/status), and its
/// effective uid.
fn identity(pid: u32) -> Option<(u32, u32)> {
    let status = crate::system::procfs::read_text(&format!("/proc/{pid}/status"))?;
    parse_identity(&status)
}

/// (pid in its own namespace, effective uid) from /proc/PID/status text.
pub fn parse_identity(status: &str) -> Option<(u32, u32)> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(str::split_whitespace)
    };
    let ns_pid = field("NSpid:")?.last()?.parse().ok()?;
    let euid = field("Uid:")?.nth(1)?.parse().ok()?;
    Some((ns_pid, euid))
}

/// Where the target's perf map is, as the target names it (for messages).
fn shown_path(ns_pid: u32) -> String {
    format!("/tmp/perf-{ns_pid}.map")
}

/// Whether the process has a perf map (any file at that path, checked or not).
pub fn exists(pid: u32) -> bool {
    identity(pid).is_some_and(|(ns_pid, _)| {
        std::path::Path::new(&format!("/proc/{pid}/root{}", shown_path(ns_pid)))
            .symlink_metadata()
            .is_ok()
    })
}

/// Opens `path` (relative to `root`) the safe way: no symlink leaves `root`, the last
/// component is no symlink, a FIFO does not block.
fn open_in_root(root: &File, path: &str) -> std::io::Result<File> {
    use std::os::fd::AsRawFd as _;
    let path = std::ffi::CString::new(path).map_err(std::io::Error::other)?;
    /// `struct open_how` of linux/openat2.h (libc's is non-exhaustive).
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow {
        flags: (libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: openat2 with a valid dirfd, a NUL-terminated path and an open_how of the size
    // passed; the returned fd (if any) is ours.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            path.as_ptr(),
            &how as *const OpenHow,
            size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
}

/// The process's perf map: None when it has none; an error when it has one that must not
/// be read; `known_size` skips reading a file that has not grown.
pub fn read(pid: u32, known_size: Option<u64>) -> Result<Option<PerfMap>, Refused> {
    let Some((ns_pid, uid)) = identity(pid) else {
        return Ok(None);
    };
    let path = shown_path(ns_pid);
    let Ok(root) = File::open(format!("/proc/{pid}/root")) else {
        return Ok(None);
    };
    let file = match open_in_root(&root, &path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) if err.raw_os_error() == Some(libc::ELOOP) => {
            return Err(Refused::Symlink { path });
        }
        Err(err) => {
            return Err(Refused::Open {
                path,
                error: err.to_string(),
            });
        }
    };
    let meta = file.metadata().map_err(|err| Refused::Open {
        path: path.clone(),
        error: err.to_string(),
    })?;
    if !meta.file_type().is_file() {
        return Err(Refused::NotRegular { path });
    }
    if meta.uid() != uid && meta.uid() != 0 {
        return Err(Refused::Owner {
            path,
            owner: meta.uid(),
            uid,
        });
    }
    if known_size == Some(meta.len()) {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    let read = file
        .take(MAX_PERF_MAP_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|err| Refused::Open {
            path,
            error: err.to_string(),
        })?;
    let text = String::from_utf8_lossy(&bytes);
    Ok(Some(PerfMap {
        entries: parse(&text),
        size: meta.len(),
        truncated: read as u64 >= MAX_PERF_MAP_BYTES && meta.len() > MAX_PERF_MAP_BYTES,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lookup_by_address() {
        let map = PerfMap {
            entries: parse(
                "3f00 20 LazyCompile:*spinForMs /app.js:3\n1000 10 Builtin:Add\nzz bad\n",
            ),
            ..Default::default()
        };
        assert_eq!(map.lookup(0x1008), Some("Builtin:Add"));
        assert_eq!(map.lookup(0x3f1f), Some("LazyCompile:*spinForMs /app.js:3"));
        assert_eq!(map.lookup(0x3f20), None);
        assert_eq!(map.lookup(0x10), None);
    }

    #[test]
    fn hostile_lines_are_skipped_or_made_safe() {
        let entries = parse("ffffffffffffffff 10 wraps\n10 10 evil\x1b[2J</text>\n");
        assert_eq!(entries, [(0x10, 0x20, "evil\\x1b[2J</text>".to_string())]);
    }

    #[test]
    fn identity_reads_the_namespace_pid_and_effective_uid() {
        let status = "Name:\tnode\nUid:\t1000\t1001\t1001\t1001\nNSpid:\t4242\t7\n";
        assert_eq!(parse_identity(status), Some((7, 1001)));
        assert_eq!(parse_identity("Name:\tx\n"), None);
    }

    #[test]
    fn a_symlinked_map_is_refused_and_a_plain_one_read() {
        // This test process is the "target": its own /tmp/perf-PID.map.
        let pid = std::process::id();
        let (ns_pid, _) = identity(pid).expect("own status");
        let path = format!("/tmp/perf-{ns_pid}.map");
        let _ = std::fs::remove_file(&path);
        std::os::unix::fs::symlink("/etc/shadow", &path).expect("symlink");
        let refused = read(pid, None);
        let _ = std::fs::remove_file(&path);
        assert_eq!(refused.err(), Some(Refused::Symlink { path: path.clone() }));
        std::fs::write(&path, "1000 10 jitted\n").expect("write");
        let map = read(pid, None);
        let again = read(pid, Some(15));
        let _ = std::fs::remove_file(&path);
        let map = map.expect("allowed").expect("present");
        assert_eq!(map.lookup(0x1001), Some("jitted"));
        assert!(
            again.expect("allowed").is_none(),
            "unchanged size is not re-read"
        );
    }

    proptest! {
        #![proptest_config(crate::fuzz_config())]
        #[test]
        fn fuzz_perf_map_parse(text in ".{0,400}", lines in proptest::collection::vec(("[0-9a-f]{1,16}", "[0-9a-f]{1,16}", ".{0,40}"), 0..20)) {
            let mut all = text;
            for (start, size, name) in lines {
                all.push_str(&format!("\n{start} {size} {name}"));
            }
            let entries = parse(&all);
            prop_assert!(entries.windows(2).all(|w| w[0].0 <= w[1].0));
            for (start, end, name) in &entries {
                prop_assert!(start <= end);
                prop_assert!(!name.chars().any(char::is_control));
            }
            let map = PerfMap { entries, ..Default::default() };
            let _ = map.lookup(0x1000);
        }
    }
}
