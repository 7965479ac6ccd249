//! User stacks from copied stack bytes: DWARF CFI (`.eh_frame`, `.debug_frame`) unwinding with
//! framehop, falling back to frame pointers where a module has no unwind info. This is what
//! gives full stacks for binaries built without frame pointers (CPython, Rust and C release
//! builds), which the kernel's frame-pointer walk cannot follow.
//!
//! Unwind tables are parsed once per file (keyed by path, device, inode and mtime, so a binary
//! replaced on disk is parsed again) and shared by every process that maps it. Each process gets
//! a framehop unwinder with one module per mapped ELF file, built from /proc/PID/maps while the
//! process lives and kept afterwards, so a worker that exits mid-recording still unwinds (its
//! stack copies were taken while it lived).

use std::{
    collections::HashMap,
    fs,
    ops::{Deref, Range},
    os::unix::fs::MetadataExt,
    path::PathBuf,
    sync::Arc,
};

use framehop::{
    ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder,
    x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64},
};
use object::{Object, ObjectSection, ObjectSegment};

use crate::{
    stacks::unwind_cache::{self, UnwindCache},
    system::procfs::{self, Mapping},
};

/// Section bytes shared between the file cache and every unwinder using them.
#[derive(Clone)]
pub struct Bytes(Arc<[u8]>);

impl Default for Bytes {
    fn default() -> Self {
        Bytes(Arc::from(&[][..]))
    }
}

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

/// What framehop needs from one ELF file, parsed once.
struct ElfUnwindInfo {
    /// (p_vaddr, p_offset, p_filesz) of each executable PT_LOAD segment, to place mappings.
    segments: Vec<(u64, u64, u64)>,
    /// Where .text lies (its bytes are not kept: framehop does not use them for ELF, and the
    /// stack scan reads the few it checks from the target, see [`CodeBytes`]; a copy of every
    /// module's .text was ~10 MB of a Python service's agent).
    text_svma: Option<Range<u64>>,
    eh_frame_svma: Option<Range<u64>>,
    eh_frame: Option<Bytes>,
    eh_frame_hdr_svma: Option<Range<u64>>,
    eh_frame_hdr: Option<Bytes>,
    debug_frame: Option<Bytes>,
    got_svma: Option<Range<u64>>,
}

/// Largest section copied for unwinding (compressed or not): a file is the target's, and its
/// headers may claim any size (a sparse file, a decompression bomb). Real `.text` sections
/// of the biggest binaries (browsers) are around 200 MB.
const MAX_SECTION_BYTES: u64 = 512 << 20;

fn section<'data, R: object::ReadRef<'data>>(
    file: &object::File<'data, R>,
    name: &str,
) -> (Option<Range<u64>>, Option<Bytes>) {
    let Some(section) = file.section_by_name(name) else {
        return (None, None);
    };
    let Some(end) = section.address().checked_add(section.size()) else {
        return (None, None);
    };
    let fits = section.compressed_file_range().is_ok_and(|range| {
        range.compressed_size <= MAX_SECTION_BYTES && range.uncompressed_size <= MAX_SECTION_BYTES
    });
    let data = fits
        .then(|| section.uncompressed_data().ok())
        .flatten()
        .map(|d| Bytes(Arc::from(d.as_ref())));
    (Some(section.address()..end), data)
}

impl ElfUnwindInfo {
    fn parse<'data, R: object::ReadRef<'data>>(data: R) -> Option<Self> {
        let file = object::File::parse(data).ok()?;
        // Only executable segments: the page a code mapping starts at often also holds the end
        // of the read-only segment before it, which would give the wrong bias.
        let segments = file
            .segments()
            .filter(|s| match s.flags() {
                object::SegmentFlags::Elf { p_flags } => p_flags & object::elf::PF_X != 0,
                _ => true,
            })
            .map(|s| {
                let (offset, size) = s.file_range();
                (s.address(), offset, size)
            })
            .collect();
        let text_svma = file.section_by_name(".text").and_then(|text| {
            let end = text.address().checked_add(text.size())?;
            Some(text.address()..end)
        });
        let (eh_frame_svma, eh_frame) = section(&file, ".eh_frame");
        let (eh_frame_hdr_svma, eh_frame_hdr) = section(&file, ".eh_frame_hdr");
        let (_, debug_frame) = section(&file, ".debug_frame");
        let (got_svma, _) = section(&file, ".got");
        Some(ElfUnwindInfo {
            segments,
            text_svma,
            eh_frame_svma,
            eh_frame,
            eh_frame_hdr_svma,
            eh_frame_hdr,
            debug_frame,
            got_svma,
        })
    }

    fn section_info(&self) -> ExplicitModuleSectionInfo<Bytes> {
        ExplicitModuleSectionInfo {
            base_svma: 0,
            text_svma: self.text_svma.clone(),
            text: None,
            eh_frame_svma: self.eh_frame_svma.clone(),
            eh_frame: self.eh_frame.clone(),
            eh_frame_hdr_svma: self.eh_frame_hdr_svma.clone(),
            eh_frame_hdr: self.eh_frame_hdr.clone(),
            debug_frame: self.debug_frame.clone(),
            got_svma: self.got_svma.clone(),
            ..Default::default()
        }
    }

    /// The load bias of a mapping (AVMA minus SVMA), from the PT_LOAD segment it maps. A
    /// segment's file offset need not be page-aligned while the mapping's is, so the segment
    /// is found by its page-aligned start.
    fn bias(&self, mapping: &Mapping) -> Option<u64> {
        self.segments.iter().find_map(|&(vaddr, offset, size)| {
            let aligned = offset & !0xfff;
            let inside =
                aligned <= mapping.file_offset && mapping.file_offset < offset + size.max(1);
            // A byte at file offset f sits at avma = start + (f - map offset) and at
            // svma = vaddr + (f - segment offset); the difference does not depend on f.
            inside.then(|| {
                mapping
                    .start
                    .wrapping_sub(mapping.file_offset)
                    .wrapping_add(offset)
                    .wrapping_sub(vaddr)
            })
        })
    }
}

/// Identity of a file on disk: a binary replaced since it was parsed is parsed again.
#[derive(Clone, PartialEq, Eq, Hash)]
struct FileKey {
    path: PathBuf,
    dev: u64,
    inode: u64,
    mtime: i64,
}

struct ProcessUnwinder {
    unwinder: UnwinderX86_64<Bytes>,
    /// Start addresses of the mappings that became modules.
    covered: Vec<Range<u64>>,
    /// The avma ranges of the modules' .text, where return-address candidates are checked.
    texts: Vec<Range<u64>>,
    code: CodeBytes,
    /// The mappings last read, for a forked child to inherit.
    mappings: Vec<Mapping>,
}

impl ProcessUnwinder {
    /// The 7 code bytes before `avma`, if it lies in a known .text (and they are in it too).
    fn code_before(&self, avma: u64) -> Option<[u8; 7]> {
        let start = avma.checked_sub(7)?;
        self.texts
            .iter()
            .find(|r| r.contains(&avma) && r.start <= start)?;
        let mut bytes = [0u8; 7];
        self.code.read(start, &mut bytes).then_some(bytes)
    }
}

/// Where the stack scan reads the code before a candidate return address: the target's memory
/// (the code it runs, read only for the few words that point into a module's .text), or a
/// test's bytes.
enum CodeBytes {
    Target(u32),
    #[cfg(test)]
    Fixed {
        start: u64,
        bytes: Vec<u8>,
    },
}

impl CodeBytes {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        match self {
            CodeBytes::Target(pid) => procfs::read_memory(*pid, addr, buf),
            #[cfg(test)]
            CodeBytes::Fixed { start, bytes } => {
                let found = usize::try_from(addr.wrapping_sub(*start))
                    .ok()
                    .filter(|_| addr >= *start)
                    .and_then(|offset| bytes.get(offset..offset.checked_add(buf.len())?));
                match found {
                    Some(found) => {
                        buf.copy_from_slice(found);
                        true
                    }
                    None => false,
                }
            }
        }
    }
}

/// Counters for the report and the bench.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnwindStats {
    pub stacks: u64,
    pub frames: u64,
    /// Unwinds that stopped early (an address outside the copied bytes, no unwind info, ...).
    pub truncated: u64,
    pub files_parsed: u64,
    pub files_failed: u64,
    /// Stacks where a caller was found by scanning (no unwind rule for the leaf).
    pub scanned: u64,
    /// Stacks whose unwind was reused (see [`unwind_cache`]); counted in `stacks` too.
    pub reused: u64,
}

/// Unwinds from `start` (the interrupted instruction, or a return address found by the stack
/// scan) with (sp, bp); returns the addresses, the frame pointer (rbp) each frame ran with
/// (what V8's frames are read at), its stack pointer (frame k's locals lie between its
/// stack pointer and frame k+1's: where a Python run's C-stack entry frame says the run goes),
/// and whether it reached the end cleanly. A return address
/// is looked up one byte back (inside its call instruction): after a call that ends its
/// function it is the next function's first byte, whose unwind rule is not the caller's.
/// Every step must move the stack pointer up: a rule that does not (glibc's clone3 in the
/// child, right after the syscall, has none that applies) would otherwise repeat forever.
/// Recursion, where the same return address legitimately repeats, does move it.
fn walk(
    unwinder: &UnwinderX86_64<Bytes>,
    cache: &mut CacheX86_64,
    read_stack: &mut impl FnMut(u64) -> Result<u64, ()>,
    start: FrameAddress,
    sp: u64,
    bp: u64,
) -> Walked {
    let mut w = Walked {
        frames: Vec::with_capacity(32),
        fps: Vec::with_capacity(32),
        sps: Vec::with_capacity(32),
        complete: false,
        scanned: false,
        scanned_found: false,
    };
    w.frames.push(start.address());
    w.fps.push(bp);
    w.sps.push(sp);
    let mut regs = UnwindRegsX86_64::new(start.address(), sp, bp);
    let mut address = start;
    loop {
        let previous_sp = regs.sp();
        match unwinder.unwind_frame(address, &mut regs, cache, read_stack) {
            Ok(Some(return_address)) => {
                if regs.sp() <= previous_sp {
                    return w;
                }
                let Some(next) = FrameAddress::from_return_address(return_address) else {
                    w.complete = true;
                    return w;
                };
                w.frames.push(return_address);
                w.fps.push(regs.bp());
                w.sps.push(regs.sp());
                if w.frames.len() >= MAX_FRAMES {
                    return w;
                }
                address = next;
            }
            Ok(None) => {
                w.complete = true;
                return w;
            }
            Err(_) => return w,
        }
    }
}

/// What [`walk`] found: one entry per frame in each list, innermost first.
struct Walked {
    frames: Vec<u64>,
    fps: Vec<u64>,
    sps: Vec<u64>,
    complete: bool,
    /// The stack was scanned for the leaf's caller (see `copy_walk`), and a caller found.
    scanned: bool,
    scanned_found: bool,
}

/// Words of stack scanned for a return address when the leaf cannot be unwound.
const SCAN_WORDS: usize = 512;

/// Stack words (with their addresses) that look like return addresses into known code: they
/// point just after a `call` (e8 rel32, or ff /2 through a register or memory).
fn return_address_candidates<'a>(
    process: &'a ProcessUnwinder,
    stack: &'a [u8],
    sp: u64,
) -> impl Iterator<Item = (u64, u64)> + 'a {
    stack
        .chunks_exact(8)
        .take(SCAN_WORDS)
        .enumerate()
        .filter_map(move |(index, word)| {
            let value = u64::from_le_bytes(word.try_into().ok()?);
            let code = process.code_before(value)?;
            follows_call(&code).then_some((sp + 8 * index as u64, value))
        })
}

/// Whether the 7 bytes before an address end with a call instruction.
fn follows_call(before: &[u8; 7]) -> bool {
    // e8 rel32: 5 bytes.
    before[2] == 0xe8
        // ff /2 with ModRM forms of 2, 3 and 6/7 bytes (register, [reg+disp8], [rip+disp32]).
        || (before[5] == 0xff && (before[6] & 0x38) == 0x10)
        || (before[4] == 0xff && (before[5] & 0x38) == 0x10)
        || (before[1] == 0xff && (before[2] & 0x38) == 0x10)
        || (before[0] == 0xff && (before[1] & 0x38) == 0x10)
}

/// Most processes with a live unwinder; past it the oldest are dropped (bounded memory).
const MAX_PROCESSES: usize = 4096;
/// Most frames per stack: deeper stacks are cut (recursion gone wrong).
const MAX_FRAMES: usize = 256;

pub struct Unwinders {
    files: HashMap<FileKey, Option<Arc<ElfUnwindInfo>>>,
    processes: HashMap<u32, ProcessUnwinder>,
    cache: CacheX86_64,
    /// Unwinds of copies seen before (see [`unwind_cache`]).
    pub reused: UnwindCache,
    /// Bumped whenever a process gains modules or is forgotten: a reused unwind must have been
    /// made with the same modules.
    generation: u64,
    pub stats: UnwindStats,
}

impl Default for Unwinders {
    fn default() -> Self {
        Self::new()
    }
}

impl Unwinders {
    pub fn new() -> Self {
        Unwinders {
            files: HashMap::new(),
            processes: HashMap::new(),
            cache: CacheX86_64::new(),
            reused: UnwindCache::default(),
            generation: 0,
            stats: UnwindStats::default(),
        }
    }

    fn file_info(&mut self, pid: u32, mapping: &Mapping) -> Option<Arc<ElfUnwindInfo>> {
        let open_path = crate::stacks::symbolize::elf_path(pid, mapping)?;
        let meta = fs::metadata(&open_path).ok()?;
        let key = FileKey {
            path: open_path.clone(),
            dev: meta.dev(),
            inode: meta.ino(),
            mtime: meta.mtime(),
        };
        if let Some(info) = self.files.get(&key) {
            return info.clone();
        }
        // Only the headers and the sections named are read, never the whole file.
        let info = procfs::open_regular(&open_path)
            .ok()
            .and_then(|file| ElfUnwindInfo::parse(&object::ReadCache::new(file)))
            .map(Arc::new);
        if info.is_some() {
            self.stats.files_parsed += 1;
        } else {
            self.stats.files_failed += 1;
        }
        self.files.insert(key, info.clone());
        info
    }

    /// Forgets a process (its image was replaced by exec, or its PID now names another).
    pub fn forget(&mut self, pid: u32) {
        self.processes.remove(&pid);
        self.generation += 1;
    }

    /// Adds modules for every executable mapping of `pid` not yet covered. Returns false when
    /// the process is gone (nothing new can be learnt).
    pub fn refresh(&mut self, pid: u32) -> bool {
        let Some(maps) = procfs::maps(pid) else {
            return false;
        };
        self.add_mappings(pid, &maps);
        true
    }

    /// A forked child shares its parent's address space until it execs: when the child is gone
    /// from /proc before we look (a short-lived worker), unwind it with what the parent mapped.
    pub fn inherit(&mut self, parent: u32, child: u32) {
        if self.processes.contains_key(&child) {
            return;
        }
        if let Some(maps) = self.processes.get(&parent).map(|p| p.mappings.clone()) {
            self.add_mappings(child, &maps);
        }
    }

    fn add_mappings(&mut self, pid: u32, maps: &[Mapping]) {
        // Bounded memory: past the limit, forget some other process (any: a HashMap has no
        // order, and the limit is far above what a service runs).
        if !self.processes.contains_key(&pid)
            && self.processes.len() >= MAX_PROCESSES
            && let Some(&other) = self.processes.keys().next()
        {
            self.processes.remove(&other);
            self.generation += 1;
        }
        let mut added = Vec::new();
        {
            let covered = self
                .processes
                .get(&pid)
                .map(|p| p.covered.clone())
                .unwrap_or_default();
            for mapping in maps
                .iter()
                .filter(|m| m.executable && m.path.starts_with("/"))
            {
                if covered.iter().any(|r| r.start == mapping.start) {
                    continue;
                }
                let Some(info) = self.file_info(pid, mapping) else {
                    continue;
                };
                let Some(bias) = info.bias(mapping) else {
                    continue;
                };
                let module = Module::new(
                    mapping.path.display().to_string(),
                    mapping.start..mapping.end,
                    bias,
                    info.section_info(),
                );
                let text = info
                    .text_svma
                    .as_ref()
                    .map(|svma| svma.start.wrapping_add(bias)..svma.end.wrapping_add(bias));
                added.push((mapping.start..mapping.end, module, text));
            }
        }
        let process = self
            .processes
            .entry(pid)
            .or_insert_with(|| ProcessUnwinder {
                unwinder: UnwinderX86_64::new(),
                covered: Vec::new(),
                texts: Vec::new(),
                code: CodeBytes::Target(pid),
                mappings: Vec::new(),
            });
        if !added.is_empty() {
            self.generation += 1;
        }
        for (range, module, text) in added {
            process.unwinder.add_module(module);
            process.covered.push(range);
            process.texts.extend(text);
        }
        process.mappings = maps.to_vec();
    }

    fn covers(&self, pid: u32, addr: u64) -> bool {
        self.processes
            .get(&pid)
            .is_some_and(|p| p.covered.iter().any(|r| r.contains(&addr)))
    }

    /// Unwinds one copied stack. Returns instruction addresses, innermost first: the
    /// interrupted `ip`, then return addresses.
    pub fn unwind(&mut self, pid: u32, ip: u64, sp: u64, bp: u64, stack: &[u8]) -> Vec<u64> {
        self.unwind_frames(pid, ip, sp, bp, stack).ips
    }

    /// [`Self::unwind`], with the frame pointer and stack pointer each frame ran with.
    pub fn unwind_frames(&mut self, pid: u32, ip: u64, sp: u64, bp: u64, stack: &[u8]) -> Unwound {
        if !self.covers(pid, ip) {
            // New code mapped since we last looked (or a process seen for the first time).
            self.refresh(pid);
        }
        self.stats.stacks += 1;
        let Some(process) = self.processes.get(&pid) else {
            self.stats.truncated += 1;
            return Unwound {
                ips: vec![ip],
                fps: vec![bp],
                sps: vec![sp],
            };
        };
        let word = |addr: u64| -> Option<u64> {
            let offset = usize::try_from(addr.checked_sub(sp)?).ok()?;
            let bytes = stack.get(offset..offset.checked_add(8)?)?;
            Some(u64::from_le_bytes(bytes.try_into().ok()?))
        };
        let key = unwind_cache::Key { pid, ip, sp };
        let seen_here = match self.reused.get(&key, self.generation, bp, word) {
            unwind_cache::Lookup::Hit { unwound, complete } => {
                self.stats.reused += 1;
                self.stats.truncated += u64::from(!complete);
                self.stats.frames += unwound.ips.len() as u64;
                return unwound;
            }
            unwind_cache::Lookup::Miss { seen_here } => seen_here,
        };
        let (walked, reads) = copy_walk(process, &mut self.cache, ip, sp, bp, stack);
        if walked.scanned_found {
            self.stats.scanned += 1;
        }
        if !walked.complete {
            self.stats.truncated += 1;
        }
        self.stats.frames += walked.frames.len() as u64;
        // A scan looked at words beyond those recorded: not reusable on the recorded ones.
        if !walked.scanned {
            // Seen here before with another rbp (code that uses rbp as a plain register, such
            // as a loop keeping its deadline there): unwind again with a different rbp; if
            // nothing but the frames that carry the initial rbp through changes, the unwind
            // does not depend on it, and is reused whatever rbp the next copy has.
            let probe = seen_here.then(|| {
                let probe_bp = bp ^ unwind_cache::PROBE_BP;
                let (other, other_reads) =
                    copy_walk(process, &mut self.cache, ip, sp, probe_bp, stack);
                let same = !other.scanned
                    && other.complete == walked.complete
                    && other_reads == reads
                    && other.frames == walked.frames
                    && other.sps == walked.sps;
                same.then(|| unwind_cache::passthrough(&walked.fps, bp, &other.fps, probe_bp))
                    .flatten()
            });
            let fps = match probe.flatten() {
                Some(template) => unwind_cache::Fps::Template(template),
                None => unwind_cache::Fps::Exact(bp),
            };
            self.reused.insert(
                key,
                self.generation,
                fps,
                reads,
                &walked.frames,
                &walked.fps,
                &walked.sps,
                walked.complete,
            );
        }
        Unwound {
            ips: walked.frames,
            fps: walked.fps,
            sps: walked.sps,
        }
    }
}

/// Unwinds one copy (with the stack-scan fallback), recording every stack word read.
fn copy_walk(
    process: &ProcessUnwinder,
    cache: &mut CacheX86_64,
    ip: u64,
    sp: u64,
    bp: u64,
    stack: &[u8],
) -> (Walked, Vec<(u64, Option<u64>)>) {
    let word = |addr: u64| -> Option<u64> {
        let offset = usize::try_from(addr.checked_sub(sp)?).ok()?;
        let bytes = stack.get(offset..offset.checked_add(8)?)?;
        Some(u64::from_le_bytes(bytes.try_into().ok()?))
    };
    // Every word read is remembered, so that the next copy with the same registers and the
    // same words reuses this unwind.
    let mut reads = Vec::with_capacity(64);
    let mut read_stack = |addr: u64| -> Result<u64, ()> {
        let value = word(addr);
        reads.push((addr, value));
        value.ok_or(())
    };
    let mut walked = walk(
        &process.unwinder,
        cache,
        &mut read_stack,
        FrameAddress::from_instruction_pointer(ip),
        sp,
        bp,
    );
    if !walked.complete && walked.frames.len() <= 1 {
        // The leaf has no usable unwind rule (hand-written assembly such as OpenSSL's
        // SHA kernels, whose CFA is an expression): find its caller's return address by
        // scanning the stack for a word that points just after a call instruction, and
        // carry on from there. The same heuristic crash reporters use.
        // Stale return addresses linger in dead stack slots; take the first candidate from
        // which the rest of the stack unwinds cleanly to its root.
        walked.scanned = true;
        for (slot, return_address) in return_address_candidates(process, stack, sp).take(8) {
            let Some(caller) = FrameAddress::from_return_address(return_address) else {
                continue;
            };
            let rest = walk(
                &process.unwinder,
                cache,
                &mut read_stack,
                caller,
                slot + 8,
                bp,
            );
            if rest.complete {
                walked.frames.truncate(1);
                walked.frames.extend(rest.frames);
                walked.fps.truncate(1);
                walked.fps.extend(rest.fps);
                walked.sps.truncate(1);
                walked.sps.extend(rest.sps);
                walked.complete = true;
                walked.scanned_found = true;
                break;
            }
        }
    }
    if walked.frames.is_empty() {
        walked.frames.push(ip);
        walked.fps.push(bp);
        walked.sps.push(sp);
    }
    (walked, reads)
}

/// One unwound stack, innermost first: the interrupted instruction then return addresses, and
/// for each frame the frame pointer (rbp) and stack pointer it ran with (same lengths).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unwound {
    pub ips: Vec<u64>,
    pub fps: Vec<u64>,
    pub sps: Vec<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binary padded to 64 GiB with a hole (a sparse file, which a target can map): its
    /// unwind tables are read without reading the file whole (64 GiB would not fit here).
    #[test]
    fn huge_sparse_binary_is_not_read_whole() {
        let exe = std::env::current_exe().expect("test binary");
        let path = std::env::temp_dir().join(format!("stallscope-sparse-{}", std::process::id()));
        std::fs::copy(&exe, &path).expect("copy");
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        file.set_len(64 << 30).expect("make it sparse");
        drop(file);
        let opened = procfs::open_regular(&path).expect("regular file");
        let info = ElfUnwindInfo::parse(&object::ReadCache::new(opened));
        let _ = std::fs::remove_file(&path);
        let info = info.expect("parsed");
        assert!(info.eh_frame.is_some(), "its .eh_frame was read");
    }

    fn info(segments: Vec<(u64, u64, u64)>) -> ElfUnwindInfo {
        ElfUnwindInfo {
            segments,
            text_svma: None,
            eh_frame_svma: None,
            eh_frame: None,
            eh_frame_hdr_svma: None,
            eh_frame_hdr: None,
            debug_frame: None,
            got_svma: None,
        }
    }

    fn mapping(start: u64, file_offset: u64) -> Mapping {
        Mapping {
            start,
            end: start + 0x10000,
            file_offset,
            executable: true,
            path: PathBuf::from("/bin/x"),
            inode: 0,
        }
    }

    /// A Rust PIE as linked by lld: the text segment's file offset (0x33a30) is not page
    /// aligned and differs from its vaddr (0x34a30) by a page.
    #[test]
    fn bias_of_an_unaligned_text_segment() {
        let elf = info(vec![(0x34a30, 0x33a30, 0x7a000)]);
        let bias = elf
            .bias(&mapping(0x55f8cd712000, 0x33000))
            .expect("segment");
        // svma 0x34a30 must land at avma start + (0x33a30 - 0x33000).
        assert_eq!(0x34a30 + bias, 0x55f8cd712000 + 0xa30);
    }

    #[test]
    fn call_instructions_before_return_addresses() {
        // call rel32
        assert!(follows_call(&[0x90, 0x90, 0xe8, 1, 2, 3, 4]));
        // call *%rax (ff d0)
        assert!(follows_call(&[0x90, 0x90, 0x90, 0x90, 0x90, 0xff, 0xd0]));
        // call *0x10(%rax) (ff 50 10)
        assert!(follows_call(&[0x90, 0x90, 0x90, 0x90, 0xff, 0x50, 0x10]));
        // call *disp32(%rip) (ff 15 ..)
        assert!(follows_call(&[0x90, 0xff, 0x15, 1, 2, 3, 4]));
        // plain data
        assert!(!follows_call(&[0, 0, 0, 0, 0, 0, 0]));
        // jmp *%rax (ff e0) is not a call
        assert!(!follows_call(&[0x90, 0x90, 0x90, 0x90, 0x90, 0xff, 0xe0]));
    }

    /// `.eh_frame` (version 1 CIE, no augmentation: 8-byte absolute addresses) with a CIE of
    /// the entry rule (CFA = rsp + 8, return address at CFA - 8) and one FDE per
    /// (start, length, CFA offset from rsp).
    fn eh_frame(fdes: &[(u64, u64, u8)]) -> Vec<u8> {
        fn entry(out: &mut Vec<u8>, body: &[u8]) {
            let mut body = body.to_vec();
            while !(body.len() + 4).is_multiple_of(8) {
                body.push(0); // DW_CFA_nop
            }
            out.extend((body.len() as u32).to_le_bytes());
            out.extend(body);
        }
        let mut out = Vec::new();
        // id 0, version 1, "", code align 1, data align -8, RA register 16,
        // DW_CFA_def_cfa rsp+8, DW_CFA_offset r16 at cfa-8.
        entry(
            &mut out,
            &[0, 0, 0, 0, 1, 0, 1, 0x78, 16, 0x0c, 7, 8, 0x90, 1],
        );
        for &(start, len, cfa_offset) in fdes {
            let cie_pointer = (out.len() + 4) as u32;
            let mut body = cie_pointer.to_le_bytes().to_vec();
            body.extend(start.to_le_bytes());
            body.extend(len.to_le_bytes());
            body.extend([0x0e, cfa_offset]); // DW_CFA_def_cfa_offset
            entry(&mut out, &body);
        }
        out.extend(0u32.to_le_bytes());
        out
    }

    /// The stack-scan fallback carries on from a return address as a return address: its unwind
    /// rule is looked up one byte back, in the calling function. Here the caller (0x1000..0x1010,
    /// CFA = rsp + 16) ends with a call, so its return address 0x1010 is the first byte of the
    /// next function (CFA = rsp + 8): looked up as an instruction pointer, the walk took that
    /// function's rule, read a stale word as the caller's return address and gave up.
    #[test]
    fn stack_scan_resumes_at_a_return_address_not_an_instruction_pointer() {
        const PID: u32 = u32::MAX; // no such process: nothing is read from /proc
        let module = 0xf00..0x3000;
        let text_start = 0xf00;
        let mut text = vec![0x90u8; 0x200]; // nop
        // The caller's last instruction: call rel32 at 0x100b..0x1010.
        text[0x10b..0x110].copy_from_slice(&[0xe8, 0x10, 0, 0, 0]);
        let text_avma = text_start..text_start + text.len() as u64;
        let eh_frame = eh_frame(&[(0x1000, 0x10, 16), (0x1010, 0x10, 8)]);
        let section_info = ExplicitModuleSectionInfo {
            base_svma: 0,
            text_svma: Some(text_avma.clone()),
            eh_frame_svma: Some(0x2000..0x2000 + eh_frame.len() as u64),
            eh_frame: Some(Bytes(Arc::from(&eh_frame[..]))),
            ..Default::default()
        };
        let mut unwinder = UnwinderX86_64::new();
        unwinder.add_module(Module::new(
            "caller".into(),
            module.clone(),
            0,
            section_info,
        ));
        let mut unwinders = Unwinders::new();
        unwinders.processes.insert(
            PID,
            ProcessUnwinder {
                unwinder,
                covered: vec![module],
                texts: vec![text_avma],
                code: CodeBytes::Fixed {
                    start: text_start,
                    bytes: text,
                },
                mappings: Vec::new(),
            },
        );
        // The leaf (0xf80, before the first FDE) has no unwind rule and bp is no frame pointer
        // (framehop's fallback fails): only the scan finds its caller. Above the return
        // address: a stale word, then the caller's own return address, 0 (the end of the stack).
        let sp = 0x7fff_0000;
        let stale = 0x5000u64;
        let stack: Vec<u8> = [0x1010u64, stale, 0]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        let frames = unwinders.unwind(PID, 0xf80, sp, 0x10, &stack);
        assert_eq!(frames, vec![0xf80, 0x1010]);
        assert_eq!(unwinders.stats.scanned, 1);
        assert_eq!(unwinders.stats.truncated, 0);
    }

    /// Unwinders for a fake process with two functions, 0x1000..0x1010 and 0x1010..0x1020,
    /// both with the entry rule (CFA = rsp + 8): no frame pointer involved.
    fn two_functions() -> Unwinders {
        let module = 0x1000..0x3000;
        let eh_frame = eh_frame(&[(0x1000, 0x10, 8), (0x1010, 0x10, 8)]);
        let section_info = ExplicitModuleSectionInfo {
            base_svma: 0,
            eh_frame_svma: Some(0x2000..0x2000 + eh_frame.len() as u64),
            eh_frame: Some(Bytes(Arc::from(&eh_frame[..]))),
            ..Default::default()
        };
        let mut unwinder = UnwinderX86_64::new();
        unwinder.add_module(Module::new("two".into(), module.clone(), 0, section_info));
        let mut unwinders = Unwinders::new();
        unwinders.processes.insert(
            u32::MAX,
            ProcessUnwinder {
                unwinder,
                covered: vec![module],
                texts: Vec::new(),
                code: CodeBytes::Target(u32::MAX),
                mappings: Vec::new(),
            },
        );
        unwinders
    }

    /// A copy with the same registers and words as one unwound before is not unwound again,
    /// and what is reused is what a fresh unwind gives: with another rbp (this code does not
    /// use it, as a second unwind shows), and not once a return address changed.
    #[test]
    fn a_repeated_copy_reuses_its_unwind_exactly() {
        const PID: u32 = u32::MAX; // no such process: nothing is read from /proc
        let sp = 0x7fff_0000;
        let stack = |ret: u64| -> Vec<u8> {
            [ret, 0, 0xdead]
                .iter()
                .flat_map(|w| w.to_le_bytes())
                .collect()
        };
        let fresh =
            |bp: u64, ret: u64| two_functions().unwind_frames(PID, 0x1004, sp, bp, &stack(ret));
        let mut unwinders = two_functions();
        let first = unwinders.unwind_frames(PID, 0x1004, sp, 0x11, &stack(0x1015));
        assert_eq!(first.ips, vec![0x1004, 0x1015]);
        assert_eq!(first, fresh(0x11, 0x1015));
        // Another rbp: unwound (and found not to depend on it).
        assert_eq!(
            unwinders.unwind_frames(PID, 0x1004, sp, 0x22, &stack(0x1015)),
            fresh(0x22, 0x1015)
        );
        assert_eq!(unwinders.stats.reused, 0);
        for bp in [0x33, 0x22, 0] {
            assert_eq!(
                unwinders.unwind_frames(PID, 0x1004, sp, bp, &stack(0x1015)),
                fresh(bp, 0x1015),
                "rbp {bp:#x}"
            );
        }
        assert_eq!(unwinders.stats.reused, 3);
        // The return address changed: unwound again.
        let moved = unwinders.unwind_frames(PID, 0x1004, sp, 0x33, &stack(0x1017));
        assert_eq!(moved, fresh(0x33, 0x1017));
        assert_eq!(moved.ips, vec![0x1004, 0x1017]);
        assert_eq!(unwinders.stats.reused, 3);
        assert_eq!(unwinders.stats.stacks, 6);
        assert_eq!(unwinders.stats.frames, 12);
        // New modules for the process: nothing made before is reused.
        unwinders.forget(PID - 1);
        let _ = unwinders.unwind_frames(PID, 0x1004, sp, 0x33, &stack(0x1017));
        assert_eq!(unwinders.stats.reused, 3);
    }

    #[test]
    fn bias_of_a_classic_layout() {
        let elf = info(vec![(0, 0, 0x1000), (0x1000, 0x1000, 0x2000)]);
        assert_eq!(
            elf.bias(&mapping(0x7f0000001000, 0x1000)),
            Some(0x7f0000000000)
        );
        assert_eq!(elf.bias(&mapping(0x7f0000001000, 0x9000)), None);
    }
}
