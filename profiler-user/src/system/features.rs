//! What the running kernel's BPF offers beyond the oldest kernel stallscope supports (5.10),
//! asked of the verifier itself: a tiny program calling a helper is refused with "invalid func"
//! or "unknown func" exactly when the kernel does not know that helper (how libbpf probes too).
//! Version numbers alone would miss backports (distribution kernels carry many).

use std::os::fd::{FromRawFd, OwnedFd};

use profiler_common::COMPAT_PY_FRAMES;

/// The oldest kernel stallscope supports, and what it needs from it.
pub const OLDEST_SUPPORTED: (u32, u32) = (5, 10);
pub const OLDEST_SUPPORTED_TEXT: &str = "5.10";

/// The helpers whose absence changes what stallscope loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelFeatures {
    /// `bpf_loop` (5.17): the Python frame walk in a loop the verifier checks once.
    pub bpf_loop: bool,
    /// `bpf_task_pt_regs` (5.15): the user registers for a stack copy.
    pub task_pt_regs: bool,
    /// `bpf_get_current_task_btf` (5.11).
    pub current_task_btf: bool,
    /// This kernel's verifier refused the full programs as too complex (E2BIG: Debian 12's
    /// 6.1 does, where 6.12's prunes the same paths): the compat build is loaded instead.
    pub full_refused: bool,
}

const BPF_FUNC_GET_CURRENT_TASK_BTF: i32 = 158;
const BPF_FUNC_TASK_PT_REGS: i32 = 175;
const BPF_FUNC_LOOP: i32 = 181;

impl KernelFeatures {
    pub const ALL: KernelFeatures = KernelFeatures {
        bpf_loop: true,
        task_pt_regs: true,
        current_task_btf: true,
        full_refused: false,
    };
    /// What Linux 5.10 has of these.
    pub const NONE: KernelFeatures = KernelFeatures {
        bpf_loop: false,
        task_pt_regs: false,
        current_task_btf: false,
        full_refused: false,
    };

    /// Asks the verifier. `STALLSCOPE_COMPAT=1` answers as a 5.10 kernel does (nothing), so the
    /// programs for older kernels can be tried on a new one.
    pub fn probe() -> Self {
        if std::env::var_os("STALLSCOPE_COMPAT").is_some_and(|v| v == "1") {
            return KernelFeatures::NONE;
        }
        KernelFeatures {
            bpf_loop: helper_known(BPF_FUNC_LOOP),
            task_pt_regs: helper_known(BPF_FUNC_TASK_PT_REGS),
            current_task_btf: helper_known(BPF_FUNC_GET_CURRENT_TASK_BTF),
            full_refused: false,
        }
    }

    /// The same kernel, after its verifier refused the full programs as too complex.
    pub fn with_full_refused(self) -> Self {
        KernelFeatures {
            full_refused: true,
            ..self
        }
    }

    /// The full programs load here; otherwise the compat build (no bpf_loop, registers from
    /// task_struct.stack) does.
    pub fn full(&self) -> bool {
        self.bpf_loop && self.task_pt_regs && self.current_task_btf && !self.full_refused
    }

    /// What is off on this kernel, and why, one phrase each (empty: nothing).
    pub fn limits(&self) -> Vec<String> {
        if self.full() {
            return Vec::new();
        }
        // One build serves every kernel that lacks any of the three.
        let why = if self.full_refused {
            "this kernel's verifier refused the full programs as too complex"
        } else if !self.bpf_loop {
            "no bpf_loop before 5.17"
        } else if !self.task_pt_regs {
            "no bpf_task_pt_regs before 5.15"
        } else {
            "no bpf_get_current_task_btf before 5.11"
        };
        vec![compat_python(why)]
    }

    /// "on this kernel: ..." for the live start line, the summary and doctor (None: nothing off).
    pub fn limits_line(&self) -> Option<String> {
        let limits = self.limits();
        (!limits.is_empty()).then(|| format!("on this kernel: {}", limits.join("; ")))
    }
}

/// What to do on a kernel older than the oldest supported.
pub const UPGRADE: &str = "upgrade to Linux 5.10 or later";

/// What the compat build does with Python stacks, and why.
fn compat_python(why: &str) -> String {
    if COMPAT_PY_FRAMES == 0 {
        format!("no Python frames ({why})")
    } else {
        format!("Python frames limited to {COMPAT_PY_FRAMES} per stack ({why})")
    }
}

/// The kernel is older than the oldest supported: the reason that doctor and record both give
/// (with [`UPGRADE`]; None: supported, or the release cannot be read).
pub fn too_old(release: &str) -> Option<String> {
    let version = parse_release(release)?;
    (version < OLDEST_SUPPORTED).then(|| {
        format!(
            "Linux {release} is older than {OLDEST_SUPPORTED_TEXT}, the oldest kernel stallscope \
             supports (BPF ring buffers, BTF, bounded loops)"
        )
    })
}

/// The one line `record` gives on such a kernel: doctor's reason and fix.
pub fn too_old_line(reason: &str) -> String {
    format!("{reason} — fix: {UPGRADE}")
}

/// (major, minor) of a release string such as `5.10.0-32-amd64`.
pub fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The running kernel's release as uname(2) gives it to us (`uname -r`): the one source for
/// doctor's verdict and record's/watch's refusal, so they always agree (a UNAME26 personality,
/// `setarch --uname-2.6`, makes both say the same "too old").
pub fn kernel_release() -> Option<String> {
    // SAFETY: utsname is plain old data; all-zero bytes are a valid value.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: uname writes into the struct we own and pass by valid pointer.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return None;
    }
    // SAFETY: the kernel NUL-terminates `release` within the array.
    let release = unsafe { std::ffi::CStr::from_ptr(uts.release.as_ptr()) };
    Some(release.to_string_lossy().into_owned())
}

pub(crate) const BPF_PROG_LOAD: libc::c_long = 5;
pub(crate) const BPF_PROG_TYPE_TRACEPOINT: u32 = 5;

/// `union bpf_attr` as BPF_PROG_LOAD reads it (the leading fields; the rest zero). Shared with
/// doctor's program-type checks.
#[repr(C)]
#[derive(Default)]
pub(crate) struct ProgLoadAttr {
    pub(crate) prog_type: u32,
    pub(crate) insn_cnt: u32,
    pub(crate) insns: u64,
    pub(crate) license: u64,
    pub(crate) log_level: u32,
    pub(crate) log_size: u32,
    pub(crate) log_buf: u64,
    pub(crate) kern_version: u32,
    pub(crate) prog_flags: u32,
    pub(crate) rest: [u64; 10],
}

const _: () = assert!(size_of::<ProgLoadAttr>() == 128);

/// Whether the verifier knows helper `id` in a tracepoint program: `call id; r0 = 0; exit` is
/// refused for its arguments (or loads) when it does, for the helper itself when it does not.
fn helper_known(id: i32) -> bool {
    let imm = id.to_le_bytes();
    // BPF_JMP|BPF_CALL with imm = id; BPF_ALU64|BPF_MOV|BPF_K r0 = 0; BPF_JMP|BPF_EXIT.
    let insns: [[u8; 8]; 3] = [
        [0x85, 0, 0, 0, imm[0], imm[1], imm[2], imm[3]],
        [0xb7, 0, 0, 0, 0, 0, 0, 0],
        [0x95, 0, 0, 0, 0, 0, 0, 0],
    ];
    let license = c"GPL";
    let mut log = vec![0u8; 4096];
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_TRACEPOINT,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        ..Default::default()
    };
    // SAFETY: `attr` is a valid bpf_attr prefix of the size passed; its pointers point to live
    // buffers we own for the duration of the call (the kernel writes at most log_size bytes).
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            std::ptr::from_ref(&attr),
            size_of::<ProgLoadAttr>() as libc::c_uint,
        )
    };
    if fd >= 0 {
        if let Ok(fd) = i32::try_from(fd) {
            // SAFETY: the kernel just returned this fd and nothing else owns it.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        return true;
    }
    !refuses_helper(&String::from_utf8_lossy(&log))
}

/// The verifier's words for a helper it does not know (or not for this program type).
pub fn refuses_helper(log: &str) -> bool {
    log.contains("invalid func") || log.contains("unknown func")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_older_than_5_10_are_refused_with_the_fix() {
        let reason = too_old("5.4.0-150-generic").expect("5.4 is too old");
        assert!(reason.contains("older than 5.10"), "{reason}");
        assert!(too_old_line(&reason).ends_with("— fix: upgrade to Linux 5.10 or later"));
        assert_eq!(too_old("5.10.0-32-amd64"), None);
        assert_eq!(too_old("6.12.117+deb13-amd64"), None);
        assert_eq!(too_old("garbage"), None);
    }

    #[test]
    fn a_kernel_whose_verifier_refused_the_full_programs_says_so() {
        let refused = KernelFeatures::ALL.with_full_refused();
        assert!(KernelFeatures::ALL.full() && !refused.full());
        let line = refused.limits_line().unwrap_or_default();
        assert!(
            line.contains("Python frames limited") && line.contains("refused the full programs"),
            "{line}"
        );
    }

    #[test]
    fn names_what_is_off() {
        assert_eq!(KernelFeatures::ALL.limits_line(), None);
        let old = KernelFeatures::NONE;
        let line = old.limits_line().expect("something is off on 5.10");
        assert_eq!(
            line,
            format!(
                "on this kernel: {}",
                compat_python("no bpf_loop before 5.17")
            )
        );
        assert!(line.contains("Python frames"), "{line}");
    }

    #[test]
    fn recognises_an_unknown_helper() {
        assert!(refuses_helper(
            "0: (85) call unknown#181\ninvalid func unknown#181\n"
        ));
        assert!(!refuses_helper("0: (85) call bpf_loop#181\nR1 !read_ok\n"));
    }

    /// On the machine running the tests (6.18), every helper is there.
    #[test]
    fn this_kernel_has_everything() {
        let release = kernel_release().unwrap_or_default();
        if parse_release(&release).is_some_and(|v| v >= (5, 17))
            && std::env::var_os("STALLSCOPE_COMPAT").is_none()
        {
            assert_eq!(
                KernelFeatures::probe(),
                KernelFeatures::ALL,
                "Linux {release}"
            );
        }
    }
}
