//! What `doctor` looks at on this machine: the kernel release, tracefs, the toolchain, and
//! trial bpf() and perf_event_open() calls (a map of each kind, a trivial program, a cpu-clock
//! event), each closed again at once. The judging of these facts is in the parent module.

use super::*;

/// Looks at this machine.
pub fn probe(developer: bool) -> Facts {
    Facts {
        kernel_release: crate::system::features::kernel_release(),
        btf: Path::new("/sys/kernel/btf/vmlinux").exists(),
        task_fsbase: crate::system::btf::task_fsbase_offset().ok(),
        features: KernelFeatures::probe(),
        missing_caps: crate::system::privileges::missing_capabilities(),
        effective_caps: fs::read_to_string("/proc/self/status")
            .ok()
            .as_deref()
            .and_then(parse_cap_eff),
        tracefs: probe_tracefs(),
        ringbuf: create_map(BPF_MAP_TYPE_RINGBUF, 0, 0, 4096),
        stack_map: create_map(BPF_MAP_TYPE_STACK_TRACE, 4, 8 * 127, 16),
        plain_maps: create_map(BPF_MAP_TYPE_HASH, 4, 4, 16)
            .and_then(|()| create_map(BPF_MAP_TYPE_ARRAY, 4, 4, 16))
            .and_then(|()| create_map(BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, 16)),
        prog_tracepoint: load_trivial_program(BPF_PROG_TYPE_TRACEPOINT),
        prog_perf_event: load_trivial_program(BPF_PROG_TYPE_PERF_EVENT),
        perf_event: open_cpu_clock(),
        perf_event_paranoid: fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
            .ok()
            .and_then(|s| s.trim().parse().ok()),
        syscall_entry: crate::system::kallsyms::syscall_entry_text(),
        developer: developer.then(probe_developer),
    }
}

pub(super) fn probe_tracefs() -> Tracefs {
    let Some(root) = crate::system::tracefs::find() else {
        let mounts = fs::read_to_string("/proc/self/mounts")
            .map(|text| tracefs_mounts(&text))
            .unwrap_or_default();
        return if mounts.is_empty() {
            Tracefs::NotMounted
        } else {
            Tracefs::Unusable { mounts }
        };
    };
    let tracepoints = TRACEPOINTS
        .iter()
        .map(|&tracepoint| {
            let dir = root.join("events").join(tracepoint);
            let format = match fs::read_to_string(dir.join("format")) {
                Ok(text) => format_fields(&text).map_or(Format::Unparsable, Format::Parsed),
                Err(_) if !dir.exists() => Format::Missing,
                Err(err) if err.kind() == ErrorKind::NotFound => Format::Missing,
                Err(err) => Format::Unreadable(err.to_string()),
            };
            (tracepoint, format)
        })
        .collect();
    let offsets = crate::system::tracefs::read_offsets(&root).map_err(|err| err.to_string());
    Tracefs::Mounted {
        root,
        tracepoints,
        offsets,
    }
}

pub(super) fn probe_developer() -> Developer {
    let bpf_linker = match Command::new("bpf-linker").arg("--version").output() {
        Ok(out) if out.status.success() => {
            Ok(first_line(&out.stdout).unwrap_or_else(|| "runs (no version printed)".to_string()))
        }
        Ok(out) => Err(format!(
            "`bpf-linker --version` failed ({}): {}",
            out.status,
            first_line(&out.stderr).unwrap_or_default()
        )),
        Err(err) if err.kind() == ErrorKind::NotFound => Err("not found in PATH".to_string()),
        Err(err) => Err(format!("cannot run bpf-linker: {err}")),
    };
    let rust_src = match Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
    {
        Ok(out) if out.status.success() => {
            Ok(lists_rust_src(&String::from_utf8_lossy(&out.stdout)))
        }
        Ok(out) => Err(format!(
            "rustup cannot list nightly's components: {}",
            first_line(&out.stderr).unwrap_or_else(|| out.status.to_string())
        )),
        Err(err) if err.kind() == ErrorKind::NotFound => {
            Err("rustup not found in PATH".to_string())
        }
        Err(err) => Err(format!("cannot run rustup: {err}")),
    };
    Developer {
        bpf_linker,
        rust_src,
    }
}

pub(super) fn first_line(bytes: &[u8]) -> Option<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .map(str::to_string)
}

// Raw bpf() and perf_event_open(): the kernel ABI, laid out by hand (linux/bpf.h,
// linux/perf_event.h). Each attribute struct is 128 bytes; the kernel zero-extends shorter
// attributes than its own, and every field we do not set is zero.

pub(super) const BPF_MAP_CREATE: libc::c_long = 0;
pub(super) const BPF_MAP_TYPE_HASH: u32 = 1;
pub(super) const BPF_MAP_TYPE_ARRAY: u32 = 2;
pub(super) const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
pub(super) const BPF_MAP_TYPE_STACK_TRACE: u32 = 7;
pub(super) const BPF_MAP_TYPE_RINGBUF: u32 = 27;
pub(super) const BPF_PROG_TYPE_PERF_EVENT: u32 = 7;

#[repr(C)]
#[derive(Default)]
pub(super) struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    rest: [u32; 27],
}

const _: () = assert!(size_of::<MapCreateAttr>() == 128);

/// `bpf(cmd, attr)`; the new fd is closed at once.
pub(super) fn bpf<T>(cmd: libc::c_long, attr: &T) -> Probe {
    // SAFETY: `attr` is a valid, initialized #[repr(C)] bpf_attr prefix of the size we pass; the
    // kernel only reads it (and any pointers in it point to live memory the caller owns).
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_ref(attr),
            size_of::<T>() as libc::c_uint,
        )
    };
    close_fd(fd)
}

/// Turns a syscall's return into a probe result, closing the fd it returned.
pub(super) fn close_fd(fd: libc::c_long) -> Probe {
    if fd < 0 {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EINVAL));
    }
    let fd = i32::try_from(fd).map_err(|_| libc::EBADF)?;
    // SAFETY: the kernel just returned this fd to us and nothing else owns it.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(())
}

pub(super) fn create_map(map_type: u32, key_size: u32, value_size: u32, max_entries: u32) -> Probe {
    let attr = MapCreateAttr {
        map_type,
        key_size,
        value_size,
        max_entries,
        ..Default::default()
    };
    bpf(BPF_MAP_CREATE, &attr)
}

/// Loads `r0 = 0; exit` as `prog_type`.
pub(super) fn load_trivial_program(prog_type: u32) -> Probe {
    // struct bpf_insn {u8 code; u8 dst:4, src:4; s16 off; s32 imm}: BPF_ALU64|BPF_MOV|BPF_K r0 = 0,
    // then BPF_JMP|BPF_EXIT.
    let insns: [[u8; 8]; 2] = [[0xb7, 0, 0, 0, 0, 0, 0, 0], [0x95, 0, 0, 0, 0, 0, 0, 0]];
    let license = c"GPL";
    let attr = ProgLoadAttr {
        prog_type,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..Default::default()
    };
    bpf(BPF_PROG_LOAD, &attr)
}

pub(super) const PERF_TYPE_SOFTWARE: u32 = 1;
pub(super) const PERF_COUNT_SW_CPU_CLOCK: u64 = 0;
pub(super) const PERF_FLAG_DISABLED: u64 = 1 << 0;
pub(super) const PERF_FLAG_FREQ: u64 = 1 << 10;
pub(super) const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;

#[repr(C)]
#[derive(Default)]
pub(super) struct PerfEventAttr {
    kind: u32,
    size: u32,
    config: u64,
    sample_freq: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    rest: [u64; 10],
}

const _: () = assert!(size_of::<PerfEventAttr>() == 128);

/// Opens (disabled) and closes a 99 Hz cpu-clock event on CPU 0 for all processes, as the
/// sampler does on every CPU.
pub(super) fn open_cpu_clock() -> Probe {
    let attr = PerfEventAttr {
        kind: PERF_TYPE_SOFTWARE,
        size: size_of::<PerfEventAttr>() as u32,
        config: PERF_COUNT_SW_CPU_CLOCK,
        sample_freq: 99,
        flags: PERF_FLAG_DISABLED | PERF_FLAG_FREQ,
        ..Default::default()
    };
    // SAFETY: `attr` is a valid perf_event_attr of the size it declares; pid -1, cpu 0, no group.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            std::ptr::from_ref(&attr),
            -1 as libc::pid_t,
            0 as libc::c_int,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    close_fd(fd)
}
