//! Addresses to frames, with blazesym: the only module that uses it.
//!
//! User addresses are symbolized from the ELF file behind each mapping, by *file offset*, using a
//! snapshot of /proc/PID/maps taken while the process lived. That way a worker that exits during
//! the recording is still symbolized at the end (its binary is still on disk), which the
//! process-based source of blazesym cannot do once /proc/PID is gone.
//!
//! Results are cached per (pid, address); blazesym caches parsed ELF/DWARF per path.
//! `blazesym::symbolize::Symbolizer` is not `Send`: keep a [`Symbols`] on one thread.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use blazesym::symbolize::{
    Input, Symbolized, Symbolizer,
    source::{Elf, Kernel, Source},
};

use crate::{
    model::{Frame, FrameKind},
    sanitize,
    stacks::perf_map::{self, PerfMap},
    system::procfs::{self, Mapping},
};

/// A frame for an address no symbol names: `module+0x1234`, or `[unknown] 0x1234` outside
/// any module.
fn unknown_frame(addr: u64, module: Option<String>, kind: FrameKind) -> Frame {
    unknown_frame_as(addr, module, None, kind)
}

/// As [`unknown_frame`], named `SHOWN+0x1234` when `shown` (the name the program was started
/// as, see [`started_as_name`]) is given; the real path stays in `module`.
fn unknown_frame_as(
    addr: u64,
    module: Option<String>,
    shown: Option<&str>,
    kind: FrameKind,
) -> Frame {
    let function = match (&module, shown) {
        (Some(_), Some(shown)) => format!("{shown}+{addr:#x}"),
        (Some(module), None) => format!("{}+{addr:#x}", short_module(module)),
        (None, _) => format!("[unknown] {addr:#x}"),
    };
    Frame {
        column: None,
        function: function.into(),
        file: None,
        line: None,
        module: module.map(Into::into),
        kind,
    }
}

fn short_module(module: &str) -> &str {
    module.rsplit('/').next().unwrap_or(module)
}

/// The name a program was started as, when it is not its file's: `redis-server` for
/// `/usr/bin/redis-check-rdb` (the file its symlink points to), which /proc/PID/maps and
/// /proc/PID/exe name. Taken from argv[0] (its last path part, up to a space: a server may
/// rewrite its title) when the kernel's comm, set at exec from the name executed (at most
/// 15 bytes), agrees; None when they disagree or it is the file's own name.
pub fn started_as_name(exe_file: &str, argv0: &str, comm: &str) -> Option<String> {
    let first = argv0.split_whitespace().next()?;
    let name = first.rsplit('/').next().unwrap_or(first);
    const COMM_BYTES: usize = 15;
    let agrees =
        !comm.is_empty() && (name == comm || (comm.len() == COMM_BYTES && name.starts_with(comm)));
    (!name.is_empty() && name != exe_file && agrees).then(|| sanitize::name(name))
}

fn read_started_as(proc: &dyn procfs::ProcReader, pid: u32) -> Option<(PathBuf, String)> {
    let exe = proc.exe(pid)?;
    let cmdline = proc.cmdline(pid)?;
    let argv0 =
        String::from_utf8_lossy(cmdline.split(|b| *b == 0).next().unwrap_or(&[])).into_owned();
    let comm = proc.stat(pid)?.comm;
    let file = exe.file_name()?.to_string_lossy().into_owned();
    let name = started_as_name(&file, &argv0, &comm)?;
    Some((exe, name))
}

/// Cache limits: bounded memory on long recordings of programs with huge code.
const MAX_CACHED_ADDRESSES: usize = 200_000;
const MAX_CACHED_FILES: usize = 4096;
/// Largest debug file blazesym may open through a debug link: it checksums the whole file,
/// so a huge or sparse one would cost minutes. Real ones reach a few GB (browsers).
const MAX_DEBUG_FILE_BYTES: u64 = 8 << 30;

/// Whether blazesym may follow the debug files of the ELF at `path` (its `.gnu_debuglink`
/// and `PATH.dwp`). The binary is the target's, so are the name in its debug link and the
/// directory beside it: blazesym would open whatever it finds there, and a FIFO blocks that
/// open forever, a symlink leads anywhere, a sparse file costs a checksum over all of it. So
/// a link that is not a plain file name, or a candidate beside the binary that is a symlink,
/// not a regular file or too big, turns debug symbols off for that file (ELF symbols stay).
/// Candidates under /usr/lib/debug and /lib/debug are root's and not checked.
fn debug_files_are_safe(path: &Path) -> bool {
    use std::os::unix::ffi::{OsStrExt as _, OsStringExt as _};
    let acceptable = |candidate: &Path| match candidate.symlink_metadata() {
        Err(_) => true,
        Ok(meta) => meta.file_type().is_file() && meta.len() <= MAX_DEBUG_FILE_BYTES,
    };
    let mut dwp = path.as_os_str().to_os_string().into_vec();
    dwp.extend_from_slice(b".dwp");
    if !acceptable(Path::new(std::ffi::OsStr::from_bytes(&dwp))) {
        return false;
    }
    let Some(link) = debug_link_name(path) else {
        return true;
    };
    if link.is_empty() || link.contains(&b'/') || link == b"." || link == b".." {
        return false;
    }
    let link = std::ffi::OsStr::from_bytes(&link);
    // blazesym looks beside the canonical path of the binary; check beside both.
    let dirs = [
        path.parent().map(Path::to_path_buf),
        std::fs::canonicalize(path)
            .ok()
            .and_then(|c| c.parent().map(Path::to_path_buf)),
    ];
    dirs.iter()
        .flatten()
        .all(|dir| acceptable(&dir.join(link)) && acceptable(&dir.join(".debug").join(link)))
}

/// The file name in an ELF's `.gnu_debuglink`, read without reading the whole file.
fn debug_link_name(path: &Path) -> Option<Vec<u8>> {
    use object::Object as _;
    let file = procfs::open_regular(path).ok()?;
    let data = object::ReadCache::new(file);
    let elf = object::File::parse(&data).ok()?;
    let (name, _crc) = elf.gnu_debuglink().ok()??;
    Some(name.to_vec())
}

pub struct Symbols {
    symbolizer: Symbolizer,
    /// Where the processes' mappings and names are read (the real /proc but in tests).
    proc: Box<dyn procfs::ProcReader>,
    maps: HashMap<u32, Vec<Mapping>>,
    /// When each process's mappings were last read: unknown addresses (JIT code) would
    /// otherwise re-read /proc/PID/maps for every one of them.
    maps_read_at: HashMap<u32, std::time::Instant>,
    /// Perf maps by pid, with when each was last looked at.
    perf_maps: HashMap<u32, (PerfMap, std::time::Instant)>,
    /// Processes whose perf map was refused (said once each).
    perf_maps_refused: std::collections::HashSet<u32>,
    /// /proc/kallsyms shows zero addresses (no CAP_SYSLOG, or kptr_restrict): kernel frames
    /// cannot be named. Checked once.
    kernel_symbols_hidden: Option<bool>,
    /// Mapped files that could not be opened (deleted or replaced, and /proc/PID/map_files not
    /// readable without CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN).
    pub unopenable: std::collections::BTreeSet<String>,
    user_cache: HashMap<(u32, u64), Vec<Frame>>,
    /// Per file blazesym opens: whether its debug files (`.gnu_debuglink`, `.dwp`) may be
    /// followed (see [`debug_files_are_safe`]).
    debug_safe: HashMap<PathBuf, bool>,
    /// Files whose debug files were not followed (said once, in the summary's hints).
    pub debug_refused: std::collections::BTreeSet<String>,
    kernel_cache: HashMap<u64, Frame>,
    pub failures: u64,
    /// Per process: its executable's real path and the name it was started as, when they
    /// differ (see [`started_as_name`]): its unnamed frames are shown under that name.
    started_as: HashMap<u32, (PathBuf, String)>,
}

impl Default for Symbols {
    fn default() -> Self {
        Self::new()
    }
}

impl Symbols {
    pub fn new() -> Self {
        Self::with_reader(Box::new(procfs::LiveProc))
    }

    /// Symbols of processes whose mappings and names `proc` reads.
    pub fn with_reader(proc: Box<dyn procfs::ProcReader>) -> Self {
        Symbols {
            symbolizer: Symbolizer::new(),
            proc,
            maps: HashMap::new(),
            maps_read_at: HashMap::new(),
            perf_maps: HashMap::new(),
            perf_maps_refused: Default::default(),
            kernel_symbols_hidden: None,
            unopenable: Default::default(),
            user_cache: HashMap::new(),
            debug_safe: HashMap::new(),
            debug_refused: Default::default(),
            kernel_cache: HashMap::new(),
            failures: 0,
            started_as: HashMap::new(),
        }
    }

    /// Reads the process's mappings now, while it is alive (replacing an older snapshot: after
    /// exec, or when code was loaded since). Returns false when the process is gone.
    pub fn snapshot(&mut self, pid: u32) -> bool {
        self.maps_read_at.insert(pid, std::time::Instant::now());
        match self.proc.maps(pid) {
            Some(maps) if !maps.is_empty() => {
                self.maps.insert(pid, maps);
                if self.started_as.len() >= MAX_CACHED_FILES {
                    self.started_as.clear();
                }
                match read_started_as(self.proc.as_ref(), pid) {
                    Some(started) => self.started_as.insert(pid, started),
                    None => self.started_as.remove(&pid),
                };
                true
            }
            _ => false,
        }
    }

    /// A forked child's mappings are its parent's until it execs: used when the child is gone
    /// from /proc before we could read its own.
    pub fn inherit(&mut self, parent: u32, child: u32) {
        if !self.maps.contains_key(&child)
            && let Some(maps) = self.maps.get(&parent).cloned()
        {
            self.maps.insert(child, maps);
        }
    }

    /// Forget what was cached for `pid` (its image was replaced by exec).
    pub fn forget(&mut self, pid: u32) {
        self.maps.remove(&pid);
        self.user_cache.retain(|(p, _), _| *p != pid);
    }

    pub fn has_snapshot(&self, pid: u32) -> bool {
        self.maps.contains_key(&pid)
    }

    fn mapping(&mut self, pid: u32, addr: u64) -> Option<Mapping> {
        let find = |maps: &HashMap<u32, Vec<Mapping>>| {
            maps.get(&pid)?
                .iter()
                .find(|m| m.start <= addr && addr < m.end)
                .cloned()
        };
        if let Some(mapping) = find(&self.maps) {
            return Some(mapping);
        }
        // Code mapped since the last snapshot (dlopen, a new worker): look again if it lives,
        // but not more than twice a second.
        let stale = self
            .maps_read_at
            .get(&pid)
            .is_none_or(|at| at.elapsed() > std::time::Duration::from_millis(500));
        if stale && self.snapshot(pid) {
            return find(&self.maps);
        }
        None
    }

    /// Frames for a user stack, innermost first. `ips[0]` is the interrupted instruction; the
    /// others are return addresses, looked up one byte earlier so they land in the call.
    pub fn user_frames(&mut self, pid: u32, ips: &[u64]) -> Vec<Frame> {
        let mut frames = Vec::with_capacity(ips.len());
        for (index, &ip) in ips.iter().enumerate() {
            let lookup = if index == 0 { ip } else { ip.saturating_sub(1) };
            frames.extend(self.user_address(pid, lookup));
        }
        frames
    }

    /// Frames for one user address: the interrupted instruction (`leaf`) or a return address.
    pub fn user_frame(&mut self, pid: u32, ip: u64, leaf: bool) -> Vec<Frame> {
        self.user_address(pid, if leaf { ip } else { ip.saturating_sub(1) })
    }

    fn user_address(&mut self, pid: u32, addr: u64) -> Vec<Frame> {
        if let Some(frames) = self.user_cache.get(&(pid, addr)) {
            return frames.clone();
        }
        let frames = match self.mapping(pid, addr) {
            Some(mapping) => self.symbolize_in_file(pid, &mapping, addr),
            None => match self.jit_symbol(pid, addr) {
                Some(name) => vec![Frame {
                    column: None,
                    function: name.into(),
                    file: None,
                    line: None,
                    module: Some("[jit]".into()),
                    kind: FrameKind::Jit,
                }],
                None => vec![unknown_frame(addr, None, FrameKind::Native)],
            },
        };
        if self.user_cache.len() >= MAX_CACHED_ADDRESSES {
            self.user_cache.clear();
        }
        self.user_cache.insert((pid, addr), frames.clone());
        frames
    }

    /// A name for JIT code from the process's perf map, re-read when the JIT has appended
    /// (looked at no more than twice a second: every unknown address comes here).
    fn jit_symbol(&mut self, pid: u32, addr: u64) -> Option<String> {
        let stale = self
            .perf_maps
            .get(&pid)
            .is_none_or(|(_, at)| at.elapsed() > std::time::Duration::from_millis(500));
        if stale && !self.perf_maps_refused.contains(&pid) {
            let known = self.perf_maps.get(&pid).map(|(map, _)| map.size);
            match perf_map::read(pid, known) {
                Ok(Some(map)) => {
                    if map.truncated {
                        eprintln!(
                            "stallscope: warning: process {pid}: perf map larger than {} MiB; only its start is used",
                            perf_map::MAX_PERF_MAP_BYTES >> 20
                        );
                    }
                    self.perf_maps.insert(pid, (map, std::time::Instant::now()));
                }
                Ok(None) => {
                    let now = std::time::Instant::now();
                    self.perf_maps
                        .entry(pid)
                        .or_insert_with(|| (PerfMap::default(), now))
                        .1 = now;
                }
                Err(refused) => {
                    eprintln!("stallscope: warning: process {pid}: perf map not read: {refused}");
                    self.perf_maps_refused.insert(pid);
                    self.perf_maps.remove(&pid);
                }
            }
        }
        self.perf_maps.get(&pid)?.0.lookup(addr).map(str::to_string)
    }

    fn symbolize_in_file(&mut self, pid: u32, mapping: &Mapping, addr: u64) -> Vec<Frame> {
        let module = sanitize::name(&mapping.path.to_string_lossy());
        let file_offset = addr - mapping.start + mapping.file_offset;
        let shown = self
            .started_as
            .get(&pid)
            .filter(|(exe, _)| *exe == mapping.path)
            .map(|(_, name)| name.clone());
        let Some(path) = elf_path(pid, mapping) else {
            if self.unopenable.len() < 64 {
                self.unopenable.insert(module.clone());
            }
            return vec![unknown_frame(file_offset, Some(module), FrameKind::Native)];
        };
        if self.debug_safe.len() >= MAX_CACHED_FILES {
            self.debug_safe.clear();
        }
        let safe = *self
            .debug_safe
            .entry(path.clone())
            .or_insert_with(|| debug_files_are_safe(&path));
        if !safe && self.debug_refused.len() < 64 {
            self.debug_refused.insert(module.clone());
        }
        let mut elf = Elf::new(path);
        elf.debug_syms = safe;
        let source = Source::Elf(elf);
        match self
            .symbolizer
            .symbolize_single(&source, Input::FileOffset(file_offset))
        {
            Ok(Symbolized::Sym(sym)) => frames_of(&sym, Some(module), FrameKind::Native),
            Ok(Symbolized::Unknown(_)) => vec![unknown_frame_as(
                file_offset,
                Some(module),
                shown.as_deref(),
                FrameKind::Native,
            )],
            Err(_) => {
                self.failures += 1;
                vec![unknown_frame_as(
                    file_offset,
                    Some(module),
                    shown.as_deref(),
                    FrameKind::Native,
                )]
            }
        }
    }

    /// Whether kernel frames come out unnamed because /proc/kallsyms hides its addresses.
    pub fn kernel_symbols_hidden(&mut self) -> bool {
        *self.kernel_symbols_hidden.get_or_insert_with(|| {
            // Hidden addresses read as all zeros; per-CPU symbols are legitimately 0, so look
            // for any non-zero address among the first lines.
            std::fs::read_to_string("/proc/kallsyms").map_or(true, |text| {
                !text.lines().take(1000).any(|line| {
                    line.split_whitespace()
                        .next()
                        .is_some_and(|a| !a.trim_start_matches('0').is_empty())
                })
            })
        })
    }

    /// Frames for a kernel stack, innermost first.
    pub fn kernel_frames(&mut self, ips: &[u64]) -> Vec<Frame> {
        let missing: Vec<u64> = ips
            .iter()
            .copied()
            .filter(|ip| !self.kernel_cache.contains_key(ip))
            .collect();
        if !missing.is_empty() {
            let source = Source::Kernel(Kernel::default());
            match self.symbolizer.symbolize(&source, Input::AbsAddr(&missing)) {
                Ok(results) => {
                    for (ip, result) in missing.iter().zip(results) {
                        let frame = match result {
                            Symbolized::Sym(sym) => Frame {
                                column: None,
                                function: sym.name.as_ref().into(),
                                file: None,
                                line: None,
                                module: Some("[kernel]".into()),
                                kind: FrameKind::Kernel,
                            },
                            Symbolized::Unknown(_) => {
                                unknown_frame(*ip, Some("[kernel]".into()), FrameKind::Kernel)
                            }
                        };
                        self.kernel_cache.insert(*ip, frame);
                    }
                }
                Err(_) => self.failures += 1,
            }
        }
        let frames: Vec<Frame> = ips
            .iter()
            .map(|ip| {
                self.kernel_cache.get(ip).cloned().unwrap_or_else(|| {
                    unknown_frame(*ip, Some("[kernel]".into()), FrameKind::Kernel)
                })
            })
            .collect();
        without_probe_frames(frames)
    }
}

/// A kernel stack taken inside one of our programs begins (innermost) with the program and the
/// tracepoint machinery that ran it (`bpf_prog_<tag>_sched_switch`, `bpf_trace_run4`,
/// `__bpf_trace_sched_switch`, `__traceiter_sched_switch`): our cost, not the target's code,
/// so a blocked stack starts at `__schedule` as the user expects.
fn without_probe_frames(mut frames: Vec<Frame>) -> Vec<Frame> {
    const PROBE_PREFIXES: &[&str] = &[
        "bpf_prog_",
        "bpf_trace_run",
        "__bpf_trace_",
        "__traceiter_",
        "bpf_get_stack",
        "bpf_get_stackid",
        "__bpf_get_stack",
        "perf_trace_",
    ];
    let probe = frames
        .iter()
        .take_while(|f| {
            PROBE_PREFIXES
                .iter()
                .any(|prefix| f.function.starts_with(prefix))
        })
        .count();
    // A stack of nothing but probe frames is kept: an empty one would read as no stack.
    if probe < frames.len() {
        frames.drain(..probe);
    }
    frames
}

/// The path that reaches the file behind a mapping of a live process (see
/// [`procfs::mapped_file`]).
pub fn elf_path(pid: u32, mapping: &Mapping) -> Option<PathBuf> {
    procfs::mapped_file(&procfs::LiveProc, pid, mapping)
}

/// A symbol and the functions inlined at the address, innermost first. blazesym lists inlined
/// calls outermost first, each with the location of its call site in the caller.
fn frames_of(
    sym: &blazesym::symbolize::Sym<'_>,
    module: Option<String>,
    kind: FrameKind,
) -> Vec<Frame> {
    let location = |info: Option<&blazesym::symbolize::CodeInfo<'_>>| {
        info.map_or((None, None), |info| {
            (
                Some(sanitize::name(&info.to_path().to_string_lossy())),
                info.line,
            )
        })
    };
    // One module name for the symbol and every function inlined in it.
    let module: Option<std::sync::Arc<str>> = module.map(Into::into);
    let frame = |name: &str, (file, line): (Option<String>, Option<u32>)| Frame {
        column: None,
        function: sanitize::name(name).into(),
        file: file.map(Into::into),
        line,
        module: module.clone(),
        kind,
    };
    let here = location(sym.code_info.as_deref());
    let Some((innermost, outer)) = sym.inlined.split_last() else {
        return vec![frame(&sym.name, here)];
    };
    let mut frames = vec![frame(&innermost.name, here)];
    let mut call_site = location(innermost.code_info.as_ref());
    for inlined in outer.iter().rev() {
        frames.push(frame(&inlined.name, call_site));
        call_site = location(inlined.code_info.as_ref());
    }
    frames.push(frame(&sym.name, call_site));
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel(name: &str) -> Frame {
        Frame {
            column: None,
            function: name.into(),
            file: None,
            line: None,
            module: Some("[kernel]".into()),
            kind: FrameKind::Kernel,
        }
    }

    /// The stack begins at `__schedule`, not in our program; the machinery's names further
    /// out (a target's own tracepoint use) and a stack of nothing else are kept.
    #[test]
    fn the_probe_s_own_frames_are_cut_from_the_leaf_end_only() {
        let names = |frames: Vec<Frame>| -> Vec<String> {
            frames.iter().map(|f| f.function.to_string()).collect()
        };
        let stack = [
            "bpf_prog_e7dd1991dc44c54b_sched_switch",
            "bpf_trace_run4",
            "__bpf_trace_sched_switch",
            "__schedule",
            "schedule",
            "__traceiter_x",
            "do_nanosleep",
        ]
        .map(kernel)
        .to_vec();
        assert_eq!(
            names(without_probe_frames(stack)),
            ["__schedule", "schedule", "__traceiter_x", "do_nanosleep"]
        );
        let only = vec![kernel("bpf_trace_run4")];
        assert_eq!(names(without_probe_frames(only)), ["bpf_trace_run4"]);
        assert!(without_probe_frames(Vec::new()).is_empty());
    }

    /// A snapshot reads the process's mappings while it lives (through the reader: faked
    /// here) and the name it was started as (Debian's redis-server, a symlink to
    /// redis-check-rdb); a process gone, or mapping nothing, leaves no snapshot.
    #[test]
    fn a_snapshot_keeps_the_mappings_and_the_name_the_program_was_started_as() {
        let mut proc = procfs::fake::FakeProc::default();
        let exe = "/usr/bin/redis-check-rdb";
        proc.maps.insert(
            7,
            vec![Mapping {
                start: 0x40_0000,
                end: 0x50_0000,
                file_offset: 0,
                executable: true,
                path: exe.into(),
                inode: 3,
            }],
        );
        proc.exes.insert(7, exe.into());
        proc.cmdlines.insert(7, b"redis-server *:6379\0".to_vec());
        proc.comms.insert(7, "redis-server".into());
        proc.maps.insert(8, Vec::new());
        let mut symbols = Symbols::with_reader(Box::new(proc));
        assert!(symbols.snapshot(7));
        assert!(symbols.has_snapshot(7));
        assert_eq!(
            symbols.started_as.get(&7),
            Some(&(PathBuf::from(exe), "redis-server".to_string()))
        );
        assert!(!symbols.snapshot(8), "maps nothing");
        assert!(!symbols.snapshot(9), "gone");
        assert!(!symbols.has_snapshot(8) && !symbols.has_snapshot(9));
    }

    #[test]
    fn programs_are_named_as_they_were_started() {
        // Debian's redis-server: a symlink to redis-check-rdb, its title rewritten.
        assert_eq!(
            started_as_name("redis-check-rdb", "redis-server *:6379", "redis-server"),
            Some("redis-server".to_string())
        );
        // pyenv's shim execs .../bin/python3, a symlink to python3.11.
        assert_eq!(
            started_as_name(
                "python3.11",
                "/root/.pyenv/versions/3.11.7/bin/python3",
                "python3"
            ),
            Some("python3".to_string())
        );
        // comm holds at most 15 bytes of the name.
        assert_eq!(
            started_as_name("x", "a-very-long-server-name", "a-very-long-ser"),
            Some("a-very-long-server-name".to_string())
        );
        // Its own name, an argv[0] the kernel's comm disagrees with, or nothing: the file's.
        assert_eq!(started_as_name("nginx", "nginx: master", "nginx"), None);
        assert_eq!(started_as_name("srv", "liar", "srv"), None);
        assert_eq!(started_as_name("srv", "", "srv"), None);
        let hostile = started_as_name("srv", "x\u{1b}[31m", "x\u{1b}[31m").unwrap_or_default();
        assert!(!hostile.contains('\u{1b}'), "made safe: {hostile:?}");
    }
}
