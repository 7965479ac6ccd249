//! tracefs: find (or mount) it, and read tracepoint field offsets from its `format` files.
//!
//! Field offsets differ between kernels, so the programs never hard-code them: the agent reads
//! them here at start-up and hands them over as a global ([`TracepointOffsets`]).

use std::{
    fs,
    path::{Path, PathBuf},
};

use profiler_common::{FIELD_ABSENT, TracepointOffsets};

/// Where tracefs may be mounted, in the order the agent looks.
pub const CANDIDATES: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error(
        "tracefs is not mounted and mounting it at /sys/kernel/tracing failed ({0}); mount it with `mount -t tracefs tracefs /sys/kernel/tracing` and run again"
    )]
    NotMounted(std::io::Error),
    #[error(
        "tracefs at {0} is mounted but not readable by this user; run as root, or add CAP_DAC_READ_SEARCH"
    )]
    Unreadable(PathBuf),
    #[error("cannot read tracepoint format {path}: {source}")]
    Format {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tracepoint {tracepoint} has no field '{field}' on this kernel")]
    MissingField { tracepoint: String, field: String },
}

/// Returns the tracefs root, mounting tracefs at /sys/kernel/tracing when nothing is mounted.
/// The mount is left in place: aya needs it for the lifetime of the attachments, and a mounted
/// tracefs changes nothing for other users of the machine.
pub fn ensure_mounted() -> Result<PathBuf, TracefsError> {
    if let Some(root) = find() {
        return Ok(root);
    }
    // Mounted, but root-only (mode 0700) and we are not root: mounting again would fail with
    // a misleading EPERM.
    if let Some(root) = CANDIDATES.iter().map(PathBuf::from).find(|root| {
        std::fs::metadata(root.join("events/sched/sched_switch/format"))
            .is_err_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied)
    }) {
        return Err(TracefsError::Unreadable(root));
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(TracefsError::NotMounted(std::io::Error::last_os_error()));
    }
    find().ok_or_else(|| {
        TracefsError::NotMounted(std::io::Error::other("mounted, but no events directory"))
    })
}

/// The mounted tracefs root, if any.
pub fn find() -> Option<PathBuf> {
    CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|root| root.join("events/sched/sched_switch/format").exists())
}

/// Offset of `field` in a tracepoint `format` file's text, if present.
pub fn field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let decl = line.trim().strip_prefix("field:")?;
        let (decl, rest) = decl.split_once(';')?;
        // The name is the last word of the declaration, before any array suffix: "char comm[16]".
        let name = decl.split_whitespace().last()?;
        let name = name.split('[').next()?;
        if name != field {
            return None;
        }
        let offset = rest.trim().strip_prefix("offset:")?;
        offset.split(';').next()?.trim().parse().ok()
    })
}

struct Formats<'a> {
    root: &'a Path,
}

impl Formats<'_> {
    fn read(&self, tracepoint: &str) -> Result<String, TracefsError> {
        let path = self.root.join("events").join(tracepoint).join("format");
        fs::read_to_string(&path).map_err(|source| TracefsError::Format { path, source })
    }

    fn required(&self, text: &str, tracepoint: &str, field: &str) -> Result<u32, TracefsError> {
        field_offset(text, field).ok_or_else(|| TracefsError::MissingField {
            tracepoint: tracepoint.into(),
            field: field.into(),
        })
    }
}

/// Reads every offset the programs need from `root/events/*/*/format`.
pub fn read_offsets(root: &Path) -> Result<TracepointOffsets, TracefsError> {
    let formats = Formats { root };
    let switch = formats.read("sched/sched_switch")?;
    let wakeup = formats.read("sched/sched_wakeup")?;
    let fork = formats.read("sched/sched_process_fork")?;
    let exit = formats.read("sched/sched_process_exit")?;
    let exec = formats.read("sched/sched_process_exec")?;
    let enter = formats.read("raw_syscalls/sys_enter")?;
    let exit_sys = formats.read("raw_syscalls/sys_exit")?;
    // The per-syscall records share one layout: a syscall number, then the arguments (or the
    // return value), 8 bytes each.
    let wait_enter = formats.read("syscalls/sys_enter_epoll_wait")?;
    let wait_exit = formats.read("syscalls/sys_exit_epoll_wait")?;
    // Optional: only names what killed a process.
    let signal = formats.read("signal/signal_generate").unwrap_or_default();
    Ok(TracepointOffsets {
        switch_prev_pid: formats.required(&switch, "sched_switch", "prev_pid")?,
        switch_prev_state: formats.required(&switch, "sched_switch", "prev_state")?,
        switch_next_pid: formats.required(&switch, "sched_switch", "next_pid")?,
        wakeup_pid: formats.required(&wakeup, "sched_wakeup", "pid")?,
        wakeup_target_cpu: formats.required(&wakeup, "sched_wakeup", "target_cpu")?,
        fork_parent_pid: formats.required(&fork, "sched_process_fork", "parent_pid")?,
        fork_child_pid: formats.required(&fork, "sched_process_fork", "child_pid")?,
        exit_pid: formats.required(&exit, "sched_process_exit", "pid")?,
        exit_group_dead: field_offset(&exit, "group_dead").unwrap_or(FIELD_ABSENT),
        exec_pid: formats.required(&exec, "sched_process_exec", "pid")?,
        exec_old_pid: formats.required(&exec, "sched_process_exec", "old_pid")?,
        sys_enter_id: formats.required(&enter, "sys_enter", "id")?,
        sys_enter_args: formats.required(&enter, "sys_enter", "args")?,
        sys_exit_id: formats.required(&exit_sys, "sys_exit", "id")?,
        sys_exit_ret: formats.required(&exit_sys, "sys_exit", "ret")?,
        signal_sig: field_offset(&signal, "sig").unwrap_or(FIELD_ABSENT),
        signal_pid: field_offset(&signal, "pid").unwrap_or(FIELD_ABSENT),
        signal_result: field_offset(&signal, "result").unwrap_or(FIELD_ABSENT),
        syscall_enter_nr: formats.required(&wait_enter, "sys_enter_epoll_wait", "__syscall_nr")?,
        syscall_enter_args: formats.required(&wait_enter, "sys_enter_epoll_wait", "epfd")?,
        syscall_exit_nr: formats.required(&wait_exit, "sys_exit_epoll_wait", "__syscall_nr")?,
        syscall_exit_ret: formats.required(&wait_exit, "sys_exit_epoll_wait", "ret")?,
    })
}

/// Offset of the exec'd path (`__data_loc char[] filename`) in sched_process_exec's record, for
/// `watch --exe` (None when this kernel's record has no such field).
pub fn exec_filename_offset(root: &Path) -> Option<u32> {
    let exec = Formats { root }.read("sched/sched_process_exec").ok()?;
    field_offset(&exec, "filename")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SWITCH: &str = "name: sched_switch
ID: 316
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:char prev_comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:pid_t prev_pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:long prev_state;\toffset:32;\tsize:8;\tsigned:1;
\tfield:pid_t next_pid;\toffset:56;\tsize:4;\tsigned:1;
\tfield:__data_loc char[] parent_comm;\toffset:60;\tsize:4;\tsigned:0;
";

    #[test]
    fn reads_field_offsets() {
        assert_eq!(field_offset(SWITCH, "prev_pid"), Some(24));
        assert_eq!(field_offset(SWITCH, "prev_state"), Some(32));
        assert_eq!(field_offset(SWITCH, "next_pid"), Some(56));
        assert_eq!(field_offset(SWITCH, "prev_comm"), Some(8));
        assert_eq!(field_offset(SWITCH, "parent_comm"), Some(60));
        assert_eq!(field_offset(SWITCH, "pid"), None);
        assert_eq!(field_offset(SWITCH, "next_prio"), None);
    }
}
