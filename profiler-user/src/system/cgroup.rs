//! Control groups (v2) as `watch --cgroup` sees them: a directory under the cgroup root, its
//! id (the one `bpf_get_current_cgroup_id()` returns: the directory's inode number), its
//! descendants and processes, and which cgroup a process is in.
//!
//! Everything here only reads. Paths come from the user or from /proc; a cgroup tree is walked
//! to a bounded number of directories.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// Where cgroup v2 is mounted on a unified systemd machine and in a container; a hybrid machine
/// has it elsewhere (`/sys/fs/cgroup/unified`): see [`root`].
pub const DEFAULT_ROOT: &str = "/sys/fs/cgroup";

/// The cgroup v2 mount point, from /proc/self/mounts (the first `cgroup2` mount).
pub fn root() -> PathBuf {
    std::fs::read_to_string("/proc/self/mounts")
        .ok()
        .and_then(|text| cgroup2_mount(&text))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT))
}

fn cgroup2_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (_, point, kind) = (fields.next()?, fields.next()?, fields.next()?);
        (kind == "cgroup2").then(|| PathBuf::from(point))
    })
}

/// Cgroups walked under one `--cgroup` (the kernel side's table holds MAX_MATCH_CGROUPS).
pub const MAX_DESCENDANTS: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "cgroup '{given}' not found: looked for {path} (give a directory of the cgroup v2 tree, relative to its mount point, e.g. system.slice/nginx.service)"
    )]
    NotFound { given: String, path: PathBuf },
    #[error("cgroup {path} cannot be read: {source}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A `--cgroup` argument as a directory: absolute under the root, or relative to it.
pub fn resolve(given: &str) -> Result<PathBuf, CgroupError> {
    let root = root();
    let path = if Path::new(given).starts_with(&root) {
        PathBuf::from(given)
    } else {
        root.join(given.trim_start_matches('/'))
    };
    if !path.join("cgroup.procs").is_file() {
        return Err(CgroupError::NotFound {
            given: given.to_string(),
            path,
        });
    }
    Ok(path)
}

/// The cgroup's id as the kernel reports it to BPF programs (its kernfs inode number).
pub fn id(dir: &Path) -> Result<u64, CgroupError> {
    std::fs::metadata(dir)
        .map(|m| m.ino())
        .map_err(|source| CgroupError::Unreadable {
            path: dir.to_path_buf(),
            source,
        })
}

/// The directory and every cgroup below it, breadth first, at most MAX_DESCENDANTS.
pub fn with_descendants(dir: &Path) -> Vec<PathBuf> {
    let mut found = vec![dir.to_path_buf()];
    let mut next = 0;
    while next < found.len() && found.len() < MAX_DESCENDANTS {
        let Ok(entries) = std::fs::read_dir(&found[next]) else {
            next += 1;
            continue;
        };
        for entry in entries.flatten() {
            // Never follow a symlink out of the tree: only real subdirectories are cgroups.
            if entry.file_type().is_ok_and(|t| t.is_dir()) && found.len() < MAX_DESCENDANTS {
                found.push(entry.path());
            }
        }
        next += 1;
    }
    found
}

/// Processes in one cgroup directory (not its descendants).
pub fn procs(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|text| parse_procs(&text))
        .unwrap_or_default()
}

fn parse_procs(text: &str) -> Vec<u32> {
    text.lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect()
}

/// The cgroup v2 path of a process ("/system.slice/nginx.service"), None when it has gone or
/// the machine has no unified hierarchy.
pub fn of_pid(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    parse_proc_cgroup(&text)
}

/// The unified hierarchy's line of /proc/PID/cgroup: "0::/path".
fn parse_proc_cgroup(text: &str) -> Option<String> {
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(|path| crate::sanitize::name(path.trim()))
}

/// A short, stable label for a cgroup path: the systemd unit or container scope it ends in
/// ("nginx.service", "cri-containerd-3f2a….scope"), else the path itself; `/` for the root.
pub fn label(path: &str) -> String {
    let last = path.rsplit('/').find(|part| !part.is_empty());
    match last {
        Some(unit)
            if unit.ends_with(".service")
                || unit.ends_with(".scope")
                || unit.ends_with(".slice") =>
        {
            unit.to_string()
        }
        Some(_) => path.to_string(),
        None => "/".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_unified_line_of_proc_cgroup() {
        let text = "12:cpu,cpuacct:/old\n0::/system.slice/nginx.service\n";
        assert_eq!(
            parse_proc_cgroup(text).as_deref(),
            Some("/system.slice/nginx.service")
        );
        assert_eq!(parse_proc_cgroup("3:memory:/x\n"), None);
        assert_eq!(parse_procs("12\n 13\nbogus\n\n"), vec![12, 13]);
    }

    #[test]
    fn labels_name_the_unit_or_keep_the_path() {
        assert_eq!(label("/system.slice/nginx.service"), "nginx.service");
        assert_eq!(
            label("/user.slice/user-0.slice/session-3.scope"),
            "session-3.scope"
        );
        assert_eq!(label("/stallscope-test/inner"), "/stallscope-test/inner");
        assert_eq!(label("/"), "/");
    }

    #[test]
    fn a_missing_cgroup_says_where_it_looked() {
        let err = resolve("no-such-cgroup-here.service")
            .err()
            .map(|e| e.to_string());
        let looked = root().join("no-such-cgroup-here.service");
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains(&looked.display().to_string())),
            "{err:?}"
        );
    }

    #[test]
    fn finds_the_unified_mount_of_a_hybrid_machine() {
        let mounts = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        assert_eq!(
            cgroup2_mount(mounts),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(cgroup2_mount("proc /proc proc rw 0 0\n"), None);
    }
}
