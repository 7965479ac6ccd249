//! Do we have what loading eBPF and opening perf events takes? Checked up front so the user gets
//! one line naming the missing capability, not an EPERM from deep inside the loader.

/// Capability numbers from linux/capability.h.
const CAP_SYS_ADMIN: u32 = 21;
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

/// Effective capability set of this process, as a 64-bit mask.
fn effective_caps() -> Option<u64> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget with a v3 header writes two CapData structs.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    (rc == 0).then(|| u64::from(data[0].effective) | (u64::from(data[1].effective) << 32))
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
