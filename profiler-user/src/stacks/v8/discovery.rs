//! Finding V8 in a process: the binaries that may carry its metadata, their builtins' code ranges,
//! and the per-process cache of [`V8Process`]es.

use super::*;

/// Identity of a binary on disk (replaced binaries are read again).
#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) struct FileKey {
    pub(super) path: PathBuf,
    pub(super) dev: u64,
    pub(super) inode: u64,
    pub(super) mtime: i64,
}

/// Whether a mapped file may be a V8 embedder: `node`, `nodejs`, `node22`, `libnode.so.127`.
pub(super) fn may_be_v8(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    name.starts_with("node") || name.starts_with("libnode.so") || name.starts_with("libv8")
}

/// Most processes tracked (bounded memory).
pub(super) const MAX_PROCESSES: usize = 4096;

/// Every Node process seen, and the metadata of each V8 binary.
#[derive(Default)]
pub struct V8s {
    pub(super) binaries: HashMap<FileKey, Result<Arc<Metadata>, V8Error>>,
    pub(super) processes: HashMap<u32, Option<V8Process<ProcMem>>>,
    /// Why a process's JS frames cannot be named, for the summary.
    pub failures: HashMap<u32, V8Error>,
    /// Processes whose JS frames are named: (pid, V8 version, binary).
    pub found: Vec<(u32, String, String)>,
}

impl V8s {
    /// Forgets a process (exec'd or gone).
    pub fn forget(&mut self, pid: u32) {
        self.processes.remove(&pid);
    }

    pub(super) fn metadata(
        &mut self,
        pid: u32,
        mapping: &Mapping,
    ) -> Option<Result<Arc<Metadata>, V8Error>> {
        let path = crate::stacks::symbolize::elf_path(pid, mapping)?;
        let meta = fs::metadata(&path).ok()?;
        let key = FileKey {
            path: path.clone(),
            dev: meta.dev(),
            inode: meta.ino(),
            mtime: meta.mtime(),
        };
        if let Some(result) = self.binaries.get(&key) {
            return Some(result.clone());
        }
        let shown = mapping.path.display().to_string();
        // The file is the target's: not read whole when it is larger than any V8 embedder.
        let result = if meta.len() > MAX_BINARY_BYTES {
            Err(V8Error::Read {
                path: shown.clone(),
                reason: format!("{} bytes, more than any V8 binary", meta.len()),
            })
        } else {
            fs::read(&path).map_err(|err| V8Error::Read {
                path: shown.clone(),
                reason: err.to_string(),
            })
        };
        let result = result
            .and_then(|data| Metadata::parse(&data, &shown))
            .map(Arc::new);
        if self.binaries.len() < 256 {
            self.binaries.insert(key, result.clone());
        }
        Some(result)
    }

    /// Looks at a process's mappings for a V8 binary with metadata.
    pub(super) fn detect(&mut self, pid: u32) -> Option<V8Process<ProcMem>> {
        let maps = procfs::maps(pid)?;
        // The first binary with metadata: Debian's `node` is a small program that links
        // `libnode.so`, where V8 (and its metadata) is.
        let mut first_error = None;
        let mut found = None;
        let mut seen: Vec<&Path> = Vec::new();
        for mapping in maps.iter().filter(|m| m.executable && may_be_v8(&m.path)) {
            if seen.contains(&mapping.path.as_path()) || seen.len() >= 8 {
                continue;
            }
            seen.push(&mapping.path);
            match self.metadata(pid, mapping) {
                Some(Ok(meta)) => {
                    found = Some((mapping.clone(), meta));
                    break;
                }
                Some(Err(err)) => {
                    first_error.get_or_insert(err);
                }
                None => {}
            }
        }
        let Some((candidate, meta)) = found else {
            if let Some(err) = first_error
                && self.failures.len() < 1000
            {
                self.failures.insert(pid, err);
            }
            return None;
        };
        let Some(mem) = ProcMem::open(pid) else {
            if self.failures.len() < 1000 {
                self.failures.insert(
                    pid,
                    V8Error::Read {
                        path: format!("/proc/{pid}/mem"),
                        reason:
                            "cannot open it (CAP_SYS_PTRACE is needed for another user's process)"
                                .into(),
                    },
                );
            }
            return None;
        };
        // A stripped binary (Debian's libnode.so) does not say where its builtins are: every
        // frame in its code is looked at then (a frame is taken as JavaScript only when its
        // slots hold a context and a JSFunction, each checked by type).
        let builtins = match &meta.builtins_svma {
            Some(svma) => builtins_avma(&maps, &candidate.path, svma, pid),
            None => maps
                .iter()
                .filter(|m| m.executable && m.path == candidate.path)
                .map(|m| m.start..m.end)
                .collect(),
        };
        let file_code = file_code(&maps);
        if self.found.len() < 1000 {
            self.found.push((
                pid,
                meta.version_string(),
                candidate.path.display().to_string(),
            ));
        }
        log::info!(
            "process {pid} runs V8 {} ({}): JavaScript frames on",
            meta.version_string(),
            candidate.path.display()
        );
        let scanning_binary = meta.builtins_svma.is_none();
        let mut process = V8Process::new(meta, mem, builtins, file_code);
        process.scanning_binary = scanning_binary;
        Some(process)
    }

    /// The process's V8 state, detected on first use.
    pub fn process(&mut self, pid: u32) -> Option<&mut V8Process<ProcMem>> {
        if !self.processes.contains_key(&pid) {
            if self.processes.len() >= MAX_PROCESSES
                && let Some(&other) = self.processes.keys().next()
            {
                self.processes.remove(&other);
            }
            let detected = self.detect(pid);
            self.processes.insert(pid, detected);
        }
        self.processes.get_mut(&pid)?.as_mut()
    }

    pub fn stats(&self) -> V8Stats {
        let mut total = V8Stats::default();
        for process in self.processes.values().flatten() {
            total.frames += process.stats.frames;
            total.unreadable += process.stats.unreadable;
            total.by_bytecode += process.stats.by_bytecode;
            total.live += process.stats.live;
            total.positions += process.stats.positions;
        }
        total
    }
}

pub(super) fn file_code(maps: &[Mapping]) -> Vec<Range<u64>> {
    maps.iter()
        .filter(|m| m.executable && m.path.starts_with("/"))
        .map(|m| m.start..m.end)
        .collect()
}

/// Where the builtins are mapped: every executable mapping of the binary that holds their
/// file range. V8 maps them a second time next to its JIT code ("short builtin calls": the
/// embedded blob remapped into the code range, from the same file), and runs that copy.
pub(super) fn builtins_avma(
    maps: &[Mapping],
    path: &Path,
    svma: &Range<u64>,
    pid: u32,
) -> Vec<Range<u64>> {
    let Some(first) = maps.iter().find(|m| m.path == path && m.executable) else {
        return Vec::new();
    };
    let Some(elf_path) = crate::stacks::symbolize::elf_path(pid, first) else {
        return Vec::new();
    };
    // Only the program headers are needed: read the first pages.
    let Ok(file) = File::open(elf_path) else {
        return Vec::new();
    };
    let mut head = vec![0u8; 64 * 1024];
    let Ok(read) = file.read_at(&mut head, 0) else {
        return Vec::new();
    };
    head.truncate(read);
    let Some(offset) = svma_to_offset(&head, svma.start) else {
        return Vec::new();
    };
    let end = offset.saturating_add(svma.end.saturating_sub(svma.start));
    maps.iter()
        .filter(|m| m.path == path && m.executable)
        .filter_map(|m| {
            let map_end = m.file_offset.saturating_add(m.end.saturating_sub(m.start));
            let (from, to) = (offset.max(m.file_offset), end.min(map_end));
            (from < to).then(|| m.start + (from - m.file_offset)..m.start + (to - m.file_offset))
        })
        .collect()
}

/// The file offset of an SVMA, from the ELF64 program headers at the start of the file.
pub(super) fn svma_to_offset(head: &[u8], svma: u64) -> Option<u64> {
    let u16_at = |at: usize| Some(u16::from_le_bytes(head.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(head.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_le_bytes(head.get(at..at + 8)?.try_into().ok()?));
    if head.get(0..4)? != b"\x7fELF" || *head.get(4)? != 2 {
        return None;
    }
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    for index in 0..phnum.min(64) {
        let at = phoff.checked_add(index.checked_mul(phentsize)?)?;
        if u32_at(at)? != 1 {
            continue;
        }
        let (offset, vaddr, filesz) = (u64_at(at + 8)?, u64_at(at + 16)?, u64_at(at + 32)?);
        if vaddr <= svma && svma < vaddr.saturating_add(filesz) {
            return (svma - vaddr).checked_add(offset);
        }
    }
    None
}
