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
    path::{Path, PathBuf},
    sync::Arc,
};

use framehop::{
    ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder,
    x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64},
};
use object::{Object, ObjectSection, ObjectSegment};

use crate::procfs::{self, Mapping};

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
    text_svma: Option<Range<u64>>,
    text: Option<Bytes>,
    eh_frame_svma: Option<Range<u64>>,
    eh_frame: Option<Bytes>,
    eh_frame_hdr_svma: Option<Range<u64>>,
    eh_frame_hdr: Option<Bytes>,
    debug_frame: Option<Bytes>,
    got_svma: Option<Range<u64>>,
}

fn section(file: &object::File<'_>, name: &str) -> (Option<Range<u64>>, Option<Bytes>) {
    match file.section_by_name(name) {
        Some(section) => {
            let range = section.address()..section.address() + section.size();
            let data = section
                .uncompressed_data()
                .ok()
                .map(|d| Bytes(Arc::from(d.as_ref())));
            (Some(range), data)
        }
        None => (None, None),
    }
}

impl ElfUnwindInfo {
    fn parse(data: &[u8]) -> Option<Self> {
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
        let (text_svma, text) = section(&file, ".text");
        let (eh_frame_svma, eh_frame) = section(&file, ".eh_frame");
        let (eh_frame_hdr_svma, eh_frame_hdr) = section(&file, ".eh_frame_hdr");
        let (_, debug_frame) = section(&file, ".debug_frame");
        let (got_svma, _) = section(&file, ".got");
        Some(ElfUnwindInfo {
            segments,
            text_svma,
            text,
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
            text: self.text.clone(),
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
}

/// Most processes with a live unwinder; past it the oldest are dropped (bounded memory).
const MAX_PROCESSES: usize = 4096;
/// Most frames per stack: deeper stacks are cut (recursion gone wrong).
const MAX_FRAMES: usize = 256;

pub struct Unwinders {
    files: HashMap<FileKey, Option<Arc<ElfUnwindInfo>>>,
    processes: HashMap<u32, ProcessUnwinder>,
    cache: CacheX86_64,
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
            stats: UnwindStats::default(),
        }
    }

    fn file_info(&mut self, pid: u32, path: &Path) -> Option<Arc<ElfUnwindInfo>> {
        let open_path = crate::symbolize::elf_path(pid, path)?;
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
        let info = fs::read(&open_path)
            .ok()
            .and_then(|data| ElfUnwindInfo::parse(&data))
            .map(Arc::new);
        if info.is_some() {
            self.stats.files_parsed += 1;
        } else {
            self.stats.files_failed += 1;
        }
        self.files.insert(key, info.clone());
        info
    }

    /// Adds modules for every executable mapping of `pid` not yet covered. Returns false when
    /// the process is gone (nothing new can be learnt).
    pub fn refresh(&mut self, pid: u32) -> bool {
        let Some(maps) = procfs::maps(pid) else {
            return false;
        };
        // Bounded memory: past the limit, forget some other process (any: a HashMap has no
        // order, and the limit is far above what a service runs).
        if !self.processes.contains_key(&pid)
            && self.processes.len() >= MAX_PROCESSES
            && let Some(&other) = self.processes.keys().next()
        {
            self.processes.remove(&other);
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
                let Some(info) = self.file_info(pid, &mapping.path) else {
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
                added.push((mapping.start..mapping.end, module));
            }
        }
        let process = self
            .processes
            .entry(pid)
            .or_insert_with(|| ProcessUnwinder {
                unwinder: UnwinderX86_64::new(),
                covered: Vec::new(),
            });
        for (range, module) in added {
            process.unwinder.add_module(module);
            process.covered.push(range);
        }
        true
    }

    fn covers(&self, pid: u32, addr: u64) -> bool {
        self.processes
            .get(&pid)
            .is_some_and(|p| p.covered.iter().any(|r| r.contains(&addr)))
    }

    /// Unwinds one copied stack. Returns instruction addresses, innermost first: the
    /// interrupted `ip`, then return addresses.
    pub fn unwind(&mut self, pid: u32, ip: u64, sp: u64, bp: u64, stack: &[u8]) -> Vec<u64> {
        if !self.covers(pid, ip) {
            // New code mapped since we last looked (or a process seen for the first time).
            self.refresh(pid);
        }
        self.stats.stacks += 1;
        let Some(process) = self.processes.get(&pid) else {
            self.stats.truncated += 1;
            return vec![ip];
        };
        let mut read_stack = |addr: u64| -> Result<u64, ()> {
            let offset = addr.checked_sub(sp).ok_or(())? as usize;
            let bytes = stack.get(offset..offset + 8).ok_or(())?;
            Ok(u64::from_le_bytes(bytes.try_into().map_err(|_| ())?))
        };
        let mut frames = Vec::with_capacity(32);
        let mut iter = process.unwinder.iter_frames(
            ip,
            UnwindRegsX86_64::new(ip, sp, bp),
            &mut self.cache,
            &mut read_stack,
        );
        loop {
            match iter.next() {
                Ok(Some(frame)) => {
                    frames.push(match frame {
                        FrameAddress::InstructionPointer(addr) => addr,
                        FrameAddress::ReturnAddress(addr) => addr.get(),
                    });
                    if frames.len() >= MAX_FRAMES {
                        self.stats.truncated += 1;
                        break;
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    self.stats.truncated += 1;
                    break;
                }
            }
        }
        if frames.is_empty() {
            frames.push(ip);
        }
        self.stats.frames += frames.len() as u64;
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(segments: Vec<(u64, u64, u64)>) -> ElfUnwindInfo {
        ElfUnwindInfo {
            segments,
            text_svma: None,
            text: None,
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
    fn bias_of_a_classic_layout() {
        let elf = info(vec![(0, 0, 0x1000), (0x1000, 0x1000, 0x2000)]);
        assert_eq!(
            elf.bias(&mapping(0x7f0000001000, 0x1000)),
            Some(0x7f0000000000)
        );
        assert_eq!(elf.bias(&mapping(0x7f0000001000, 0x9000)), None);
    }
}
