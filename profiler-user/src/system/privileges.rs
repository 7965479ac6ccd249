//! Do we have what loading eBPF and opening perf events takes? Checked up front so the user gets
//! one line naming the missing capability, not an EPERM from deep inside the loader.

/// Capability numbers from linux/capability.h.
const CAP_DAC_OVERRIDE: u32 = 1;
const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SETPCAP: u32 = 8;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYSLOG: u32 = 34;
const CAP_CHECKPOINT_RESTORE: u32 = 40;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// (effective, permitted) capability sets of this thread, as 64-bit masks.
fn caps() -> Option<(u64, u64)> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget with a v3 header writes two CapData structs.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    let join = |low: u32, high: u32| u64::from(low) | (u64::from(high) << 32);
    (rc == 0).then(|| {
        (
            join(data[0].effective, data[1].effective),
            join(data[0].permitted, data[1].permitted),
        )
    })
}

/// Effective capability set of this process, as a 64-bit mask.
fn effective_caps() -> Option<u64> {
    caps().map(|(effective, _)| effective)
}

/// Names of the capabilities we lack; empty when recording can go ahead.
pub fn missing_capabilities() -> Vec<&'static str> {
    let Some(caps) = effective_caps() else {
        return vec!["(capget failed)"];
    };
    let has = |cap: u32| caps & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) {
        return Vec::new();
    }
    let mut missing = Vec::new();
    if !has(CAP_BPF) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) {
        missing.push("CAP_PERFMON");
    }
    missing
}

/// One line telling the user what to do, or None when privileges suffice.
pub fn check() -> Option<String> {
    let missing = missing_capabilities();
    (!missing.is_empty()).then(|| {
        format!(
            "stallscope needs root, or the capabilities CAP_BPF and CAP_PERFMON, to load its eBPF probes (missing: {}); run it with sudo",
            missing.join(", ")
        )
    })
}

/// What the agent still needs once its probes are loaded and attached, and why:
/// - CAP_SYS_PTRACE: /proc/PID/mem (Python frames), /proc/PID/maps, /proc/PID/root and
///   /proc/PID/task/TID/syscall of targets owned by other users;
/// - CAP_DAC_READ_SEARCH: the targets' binaries and libraries (and their debug files) when
///   their permissions do not let root's uid read them without it;
/// - CAP_SYSLOG: kernel symbol addresses in /proc/kallsyms, read when symbolizing at the end;
/// - CAP_CHECKPOINT_RESTORE: /proc/PID/map_files, for binaries deleted or replaced on disk
///   (it replaces CAP_SYS_ADMIN there since Linux 5.9);
/// - CAP_DAC_OVERRIDE, only when the outputs go somewhere this uid does not own (an existing
///   `--out` directory of another user, `$GITHUB_STEP_SUMMARY`).
///
/// - CAP_BPF, only on kernels before 5.19 (see [`fds_need_cap_bpf`]).
///
/// Not kept: CAP_PERFMON and CAP_SYS_ADMIN (the maps, ring buffer and perf events are used
/// through file descriptors opened at attach time, which need no capability from 5.19 on),
/// and all the rest (modules, raw I/O, network, setuid...).
pub fn still_needed(output_needs_override: bool) -> u64 {
    let mut keep = [
        CAP_SYS_PTRACE,
        CAP_DAC_READ_SEARCH,
        CAP_SYSLOG,
        CAP_CHECKPOINT_RESTORE,
    ]
    .iter()
    .fold(0u64, |mask, cap| mask | (1 << cap));
    if output_needs_override {
        keep |= 1 << CAP_DAC_OVERRIDE;
    }
    let release = crate::system::features::kernel_release().unwrap_or_default();
    if fds_need_cap_bpf(&release) {
        keep |= 1 << CAP_BPF;
    }
    keep
}

/// Whether every bpf() call, even on a map fd the agent already holds, needs CAP_BPF on this
/// kernel: before 5.19, with `kernel.unprivileged_bpf_disabled` set (Debian's and most
/// distributions' default), the syscall's entry refused any command to a caller without
/// CAP_BPF or CAP_SYS_ADMIN, so after the drop the agent could neither register a Python
/// interpreter nor read a stack ("bpf_map_update_elem failed: Operation not permitted" on
/// Debian 11's 5.10). 5.19 narrowed that check to BPF_MAP_CREATE and BPF_PROG_LOAD (commit
/// c8644cd0efe7, "bpf: refine kernel.unprivileged_bpf_disabled behaviour"). An unreadable
/// release keeps CAP_BPF: losing the maps costs more than keeping one capability.
pub fn fds_need_cap_bpf(release: &str) -> bool {
    crate::system::features::parse_release(release).is_none_or(|version| version < (5, 19))
}

/// Whether writing into `dir` (and the GitHub step summary) needs CAP_DAC_OVERRIDE: true
/// when this uid does not own the directory or a step summary file is to be appended.
pub fn output_needs_override(dir: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    std::env::var_os("GITHUB_STEP_SUMMARY").is_some()
        || std::fs::metadata(dir).map_or(true, |m| m.uid() != euid)
}

/// Keeps only the capabilities in `keep` (intersected with what the thread has): drops the rest
/// from the bounding set (so no child or exec gets them back), the ambient set, and the
/// permitted, effective and inheritable sets. Capabilities are per thread: call this while
/// the agent has one thread, so every thread made later inherits the smaller sets. Returns
/// the effective set left.
pub fn drop_all_but(keep: u64) -> std::io::Result<u64> {
    let (_, permitted) = caps().ok_or_else(std::io::Error::last_os_error)?;
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
        .unwrap_or(40)
        .min(63);
    // The bounding set needs CAP_SETPCAP to shrink; without it (a non-root user with ambient
    // capabilities) it stays, and the sets below still shrink.
    if permitted & (1 << CAP_SETPCAP) != 0 {
        for cap in (0..=last).filter(|cap| keep & (1 << cap) == 0) {
            // SAFETY: prctl with integer arguments only.
            unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        }
    }
    // SAFETY: prctl with integer arguments only.
    unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    let kept = permitted & keep;
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: kept as u32,
            permitted: kept as u32,
            inheritable: 0,
        },
        CapData {
            effective: (kept >> 32) as u32,
            permitted: (kept >> 32) as u32,
            inheritable: 0,
        },
    ];
    // SAFETY: capset with a v3 header reads two CapData structs.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(effective_caps().unwrap_or(kept))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian 11's 5.10 refused the map updates and stack reads of an agent that had dropped
    /// CAP_BPF (EPERM), which cost it Python frames and kernel stacks there.
    #[test]
    fn cap_bpf_is_kept_where_map_fds_need_it() {
        assert!(fds_need_cap_bpf("5.10.0-32-amd64"));
        assert!(fds_need_cap_bpf("5.18.19"));
        assert!(fds_need_cap_bpf("garbage"));
        assert!(!fds_need_cap_bpf("5.19.0"));
        assert!(!fds_need_cap_bpf("6.1.0-28-amd64"));
        let kept = still_needed(false);
        assert!(kept & (1 << CAP_SYS_PTRACE) != 0);
        assert!(kept & (1 << CAP_SYS_ADMIN) == 0);
        assert!(kept & (1 << CAP_PERFMON) == 0);
    }
}
