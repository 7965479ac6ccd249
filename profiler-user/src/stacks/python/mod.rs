//! CPython 3.9 to 3.15: finding the interpreter in a process, the per-version layout the kernel
//! side walks frames with, and decoding the frames it sends (code objects, line tables) into
//! [`Frame`]s. The offsets are from `PYTHON_LAYOUTS.md` (checked on live processes) for 3.9 to
//! 3.12, and from 3.13 on from the interpreter's own `_Py_DebugOffsets` (see
//! [`crate::stacks::python::offsets`]); asyncio's running Task and its awaiters (3.14+) from the
//! `AsyncioDebug` table.
//!
//! The kernel sends, per frame, the code object's address and the instruction pointer. Code
//! objects are read here from `/proc/PID/mem` (read-only: the target is never stopped, written
//! or signalled) and cached by address; a cached entry is re-checked against the code object's
//! name, file and line-table pointers at most once a second, so a freed code object whose
//! address is reused by another is noticed.

pub mod offsets;

use std::{
    cell::RefCell,
    collections::HashMap,
    fs::File,
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use object::{Object as _, ObjectSection as _, ObjectSegment as _, ObjectSymbol as _};
use profiler_common::{FIELD_ABSENT, PY_FRAME_ENTRY, PyFrame, PyProcess, PyStackHeader};

use crate::{
    model::{Frame, FrameKind, TaskInfo, TaskRef},
    stacks::python::offsets::{AsyncioOffsets, DebugOffsets, Refused},
    stacks::symbolize,
    system::procfs,
};

/// Offsets the agent needs to decode a code object and its strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CodeLayout {
    flags: u64,
    first_line: u64,
    filename: u64,
    name: u64,
    qualname: Option<u64>,
    linetable: u64,
    /// Start of the inline bytecode (3.11+): instruction pointers are relative to it.
    code_adaptive: Option<u64>,
    /// Where a compact ASCII string's characters start (sizeof(PyASCIIObject)).
    ascii_data: u64,
    /// Where a compact non-ASCII string's code units start (sizeof(PyCompactUnicodeObject)).
    compact_data: u64,
}

/// One CPython minor version's layout: what the kernel walks and what the agent decodes.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub minor: u32,
    kernel: PyProcess,
    /// Offset of the static GIL in `_PyRuntime` (3.9 to 3.11).
    gil_in_runtime: Option<u64>,
    code: CodeLayout,
    /// Where a coroutine's frame sits in the coroutine object (3.11+: `cr_iframe`).
    gi_iframe: u64,
    /// Where a coroutine keeps its `__qualname__` (3.14+, from the debug offsets).
    gi_qualname: Option<u64>,
    /// `PySetObject` fields (3.14+), to read the set of a Task's awaiters.
    set: Option<offsets::SetOffsets>,
}

const ABSENT: u32 = FIELD_ABSENT;

/// The layouts of PYTHON_LAYOUTS.md sections 1 to 4 and 6.
pub fn layout(minor: u32) -> Option<Layout> {
    let kernel = |interp_head,
                  threads_head,
                  gil_in_interp,
                  thread_id,
                  is_pthread,
                  frame,
                  cframe,
                  back,
                  code,
                  ip,
                  ip_ptr,
                  owner,
                  is_entry| PyProcess {
        runtime: 0,
        gil_static: 0,
        interp_head,
        threads_head,
        gil_in_interp,
        tstate_next: 0x8,
        tstate_thread_id: thread_id,
        thread_id_is_pthread: is_pthread,
        tstate_frame: frame,
        cframe_frame: cframe,
        frame_back: back,
        frame_code: code,
        frame_ip: ip,
        ip_is_pointer: ip_ptr,
        frame_owner: owner,
        frame_is_entry: is_entry,
        handle_run_code: 0,
        // A frame's first local: f_localsplus (3.9: 0x168, 3.10: 0x160), localsplus (0x48).
        frame_locals: if ip_ptr == 1 {
            0x48
        } else if ip == 0x68 {
            0x168
        } else {
            0x160
        },
        tstate_running_task: ABSENT,
        code_mask: u64::MAX,
    };
    let old_strings = (0x30, 0x48);
    let new_strings = (0x28, 0x38);
    let code = |flags, first_line, qualname: Option<u64>, adaptive, (ascii_data, compact_data)| {
        CodeLayout {
            flags,
            first_line,
            filename: if qualname.is_some() { 0x70 } else { 0x68 },
            name: if qualname.is_some() { 0x78 } else { 0x70 },
            qualname,
            linetable: if qualname.is_some() { 0x88 } else { 0x78 },
            code_adaptive: adaptive,
            ascii_data,
            compact_data,
        }
    };
    let (kernel, gil_in_runtime, code) = match minor {
        9 => (
            kernel(
                0x20, 0x8, ABSENT, 0xb0, 1, 0x18, ABSENT, 0x18, 0x20, 0x68, 0, ABSENT, ABSENT,
            ),
            Some(0x160),
            code(0x24, 0x28, None, None, old_strings),
        ),
        10 => (
            kernel(
                0x20, 0x8, ABSENT, 0xb0, 1, 0x18, ABSENT, 0x18, 0x20, 0x60, 0, ABSENT, ABSENT,
            ),
            Some(0x160),
            code(0x24, 0x28, None, None, old_strings),
        ),
        11 => (
            kernel(
                0x28, 0x10, ABSENT, 0xa0, 0, 0x38, 0x8, 0x30, 0x20, 0x38, 1, 0x45, 0x44,
            ),
            Some(0x168),
            code(0x30, 0x48, Some(0x80), Some(0xb8), old_strings),
        ),
        12 => (
            kernel(
                0x28, 0x48, 0x180, 0x90, 0, 0x38, 0x0, 0x8, 0x0, 0x38, 1, 0x46, ABSENT,
            ),
            None,
            code(0x30, 0x44, Some(0x80), Some(0xc0), new_strings),
        ),
        13 => (
            kernel(
                0x278, 0x1cb0, 0x10, 0xa0, 0, 0x48, ABSENT, 0x8, 0x0, 0x38, 1, 0x46, ABSENT,
            ),
            None,
            code(0x30, 0x44, Some(0x80), Some(0xc8), new_strings),
        ),
        _ => return None,
    };
    Some(Layout {
        minor,
        kernel,
        gil_in_runtime,
        code,
        gi_iframe: if minor == 11 { 0x50 } else { 0x48 },
        gi_qualname: None,
        set: None,
    })
}

/// 3.13+ describes itself: `_Py_DebugOffsets` at the start of `_PyRuntime` (its static
/// initializer is in the file). Every offset the walk and the decoding use comes from there;
/// 3.13's table of ours only supplies what it lacks (`co_flags`, the compact string header,
/// which are the same from 3.12 to 3.15: checked against the DWARF of Debian's 3.14 and 3.15).
fn apply_debug_offsets(layout: &mut Layout, debug: &DebugOffsets) -> Result<()> {
    let field = |value: u64| -> Result<u32> {
        u32::try_from(value).context("a _Py_DebugOffsets offset does not fit 32 bits")
    };
    let k = &mut layout.kernel;
    k.interp_head = field(debug.interpreters_head)?;
    k.threads_head = field(debug.threads_head)?;
    k.gil_in_interp = field(debug.ceval_gil)?;
    k.tstate_next = field(debug.tstate_next)?;
    k.tstate_frame = field(debug.current_frame)?;
    k.tstate_thread_id = field(debug.native_thread_id)?;
    k.frame_back = field(debug.frame_previous)?;
    k.frame_code = field(debug.frame_executable)?;
    k.frame_ip = field(debug.frame_instr_ptr)?;
    k.frame_owner = field(debug.frame_owner)?;
    k.frame_locals = field(debug.frame_localsplus)?;
    if layout.minor >= 14 {
        // `f_executable` is a `_PyStackRef`: its low bits are tags (Py_TAG_BITS), objects are
        // 8-byte aligned.
        k.code_mask = !3;
    }
    let c = &mut layout.code;
    c.filename = debug.co_filename;
    c.name = debug.co_name;
    c.qualname = Some(debug.co_qualname);
    c.linetable = debug.co_linetable;
    c.first_line = debug.co_firstlineno;
    c.code_adaptive = Some(debug.co_code_adaptive);
    c.ascii_data = debug.ascii_size;
    if let Some(compact) = debug.compact_size {
        c.compact_data = compact;
    }
    if let Some(iframe) = debug.gi_iframe {
        layout.gi_iframe = iframe;
    }
    layout.gi_qualname = debug.gi_name.map(|name| name + 8);
    layout.set = debug.set;
    Ok(())
}

/// A CPython interpreter found in a process.
#[derive(Clone, Debug)]
pub struct Interpreter {
    pub minor: u32,
    /// "3.14.10" when the binary says (3.11+), else "3.12".
    pub version: String,
    /// How its frames are read: "_Py_DebugOffsets (3.14 table)", "table of stallscope (3.12)".
    pub frames_from: String,
    /// asyncio's offsets (3.14+), once its table was found (3.14 keeps it in the `_asyncio`
    /// extension, loaded with asyncio).
    pub asyncio: Option<AsyncioOffsets>,
    /// asyncio's `Handle._run` code object, once seen (see `PyProcess::handle_run_code`).
    pub handle_run_code: u64,
    /// The ELF that holds `_PyRuntime` (libpython, or the python executable).
    pub binary: PathBuf,
    pub runtime: u64,
    layout: Layout,
}

impl Interpreter {
    /// What the kernel side needs to walk this process's frames.
    pub fn kernel_layout(&self) -> PyProcess {
        PyProcess {
            runtime: self.runtime,
            gil_static: self.layout.gil_in_runtime.map_or(0, |o| self.runtime + o),
            handle_run_code: self.handle_run_code,
            tstate_running_task: self
                .asyncio
                .and_then(|a| u32::try_from(a.running_task).ok())
                .unwrap_or(ABSENT),
            ..self.layout.kernel
        }
    }
}

/// Minor version from a file name such as `libpython3.12.so.1.0` or `python3.11`.
fn minor_from_name(path: &Path) -> Option<u32> {
    let name = path.file_name()?.to_str()?;
    let rest = name
        .strip_prefix("libpython3.")
        .or_else(|| name.strip_prefix("python3."))?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// What a binary says about the CPython in it (the same for every process that maps it).
#[derive(Clone, Debug)]
struct BinaryFacts {
    minor: u32,
    version: String,
    frames_from: String,
    runtime_symbol: u64,
    /// Page-aligned address of the first PT_LOAD (the load bias is start - this).
    first_load: u64,
    layout: Layout,
    /// The binary's own `.AsyncioDebug` section (3.15 builds `_asyncio` in).
    asyncio: Option<AsyncioOffsets>,
}

/// A CPython found whose frames cannot be read: which, and why (said once, in the recording's
/// summary too).
#[derive(Clone, Debug)]
pub struct Unreadable {
    pub version: String,
    pub binary: PathBuf,
    pub reason: String,
}

/// What a process runs, as far as Python goes.
#[derive(Debug)]
pub enum Detection {
    Readable(Box<Interpreter>),
    Unreadable(Unreadable),
}

impl Pythons {
    /// Looks for CPython in a live process: libpython mapped, or an executable that defines
    /// `_PyRuntime` itself (a static build such as Debian's). `Ok(None)`: not Python. Each
    /// binary is read once (by path and inode), whatever the number of processes mapping it.
    pub fn detect(&mut self, pid: u32) -> Result<Option<Detection>> {
        let maps = procfs::maps(pid).with_context(|| format!("reading /proc/{pid}/maps"))?;
        let exe = procfs::exe(pid);
        let mut candidates: Vec<&procfs::Mapping> = maps
            .iter()
            .filter(|m| {
                m.file_offset == 0
                    && m.path
                        .file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("libpython3"))
            })
            .collect();
        if let Some(exe) = &exe
            && let Some(mapping) = maps.iter().find(|m| &m.path == exe && m.file_offset == 0)
        {
            candidates.push(mapping);
        }
        for mapping in candidates {
            let key = (mapping.path.clone(), mapping.inode);
            let facts = match self.binaries.get(&key) {
                Some(facts) => facts.clone(),
                None => {
                    let facts = binary_facts(pid, mapping)?;
                    self.binaries.insert(key, facts.clone());
                    facts
                }
            };
            match facts {
                Some(Ok(facts)) => {
                    let bias = mapping.start.wrapping_sub(facts.first_load);
                    let asyncio = facts.asyncio.or_else(|| {
                        (facts.minor >= 14)
                            .then(|| asyncio_extension(pid, &maps))
                            .flatten()
                    });
                    return Ok(Some(Detection::Readable(Box::new(Interpreter {
                        minor: facts.minor,
                        version: facts.version,
                        frames_from: facts.frames_from,
                        asyncio,
                        handle_run_code: 0,
                        binary: mapping.path.clone(),
                        runtime: bias.wrapping_add(facts.runtime_symbol),
                        layout: facts.layout,
                    }))));
                }
                Some(Err(unreadable)) => {
                    return Ok(Some(Detection::Unreadable(Unreadable {
                        binary: mapping.path.clone(),
                        ..unreadable
                    })));
                }
                None => {}
            }
        }
        Ok(None)
    }
}

/// The file behind a mapping of process `pid`: the same file, by inode, whether it is on the
/// host's path, only reachable through the mapping itself, or in the process's root (a
/// container, a chroot). Opened to be read as needed, not whole: the file is the target's, and
/// may be huge or sparse.
fn open_binary(pid: u32, mapping: &procfs::Mapping) -> Result<File> {
    let path = symbolize::elf_path(pid, mapping)
        .with_context(|| format!("{} is not reachable (deleted?)", mapping.path.display()))?;
    procfs::open_regular(&path).with_context(|| format!("reading {}", path.display()))
}

/// The `.AsyncioDebug` table of an ELF file, if it has one.
fn asyncio_section<'data, R: object::ReadRef<'data>>(
    elf: &object::File<'data, R>,
) -> Option<AsyncioOffsets> {
    let section = elf.section_by_name(".AsyncioDebug")?;
    offsets::parse_asyncio(section.data().ok()?).ok()
}

/// 3.14: the asyncio table is in the `_asyncio` extension module, mapped once asyncio is
/// imported.
fn asyncio_extension(pid: u32, maps: &[procfs::Mapping]) -> Option<AsyncioOffsets> {
    let mapping = maps.iter().find(|m| {
        m.file_offset == 0
            && m.path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("_asyncio.") && n.ends_with(".so"))
    })?;
    let data = object::ReadCache::new(open_binary(pid, mapping).ok()?);
    let elf = object::File::parse(&data).ok()?;
    asyncio_section(&elf)
}

/// What a binary says about CPython: `None`, not CPython; `Some(Err)`, a CPython whose frames
/// cannot be read (and why).
type Facts = Option<std::result::Result<BinaryFacts, Unreadable>>;

fn binary_facts(pid: u32, mapping: &procfs::Mapping) -> Result<Facts> {
    let path = mapping.path.as_path();
    let data = object::ReadCache::new(open_binary(pid, mapping)?);
    let elf = object::File::parse(&data).with_context(|| format!("parsing {}", path.display()))?;
    let Some(runtime_sym) = elf.dynamic_symbols().find(|s| s.name() == Ok("_PyRuntime")) else {
        return Ok(None);
    };
    let version_hex = py_version(&elf);
    let minor = match minor_from_name(path) {
        Some(minor) => minor,
        None => version_hex
            .map(|hex| ((hex >> 16) & 0xff) as u32)
            .with_context(|| {
                format!(
                    "{} has _PyRuntime but no version in its name or Py_Version",
                    path.display()
                )
            })?,
    };
    let version = version_hex.map_or_else(|| format!("3.{minor}"), offsets::version_text);
    let unreadable = |version: String, reason: String| {
        Ok(Some(Err(Unreadable {
            version,
            binary: path.to_path_buf(),
            reason,
        })))
    };
    // From 3.13 on the interpreter describes itself; before, our table is all there is.
    let (layout, frames_from) = if minor >= 13 {
        let debug = match runtime_bytes(&elf, &runtime_sym) {
            None => Err(Refused::Short),
            Some(bytes) => offsets::parse(bytes),
        };
        let debug = match debug {
            Ok(debug) => debug,
            Err(refused) => {
                return unreadable(version, format!("{refused}: Python frames are not read"));
            }
        };
        let version = offsets::version_text(debug.version);
        if (debug.version >> 16) & 0xff != u64::from(minor) {
            return unreadable(
                version,
                format!(
                    "its name says 3.{minor} but its _Py_DebugOffsets say {}: Python frames are \
                     not read",
                    offsets::version_text(debug.version)
                ),
            );
        }
        if debug.free_threaded {
            return unreadable(
                version,
                "a free-threaded build (Py_GIL_DISABLED): its frames are not read (no such \
                 build was tested) and no GIL waits are reported for it"
                    .into(),
            );
        }
        let Some(mut layout) = layout(minor.min(13)) else {
            bail!("no base layout for 3.{minor}");
        };
        layout.minor = minor;
        apply_debug_offsets(&mut layout, &debug)
            .with_context(|| format!("reading _Py_DebugOffsets of {}", path.display()))?;
        (
            layout,
            format!(
                "_Py_DebugOffsets ({} table, version {})",
                debug.table,
                offsets::version_text(debug.version)
            ),
        )
    } else {
        match layout(minor) {
            Some(layout) => (layout, format!("table of stallscope (3.{minor})")),
            None => {
                return unreadable(
                    version,
                    format!(
                        "CPython 3.{minor}: stallscope reads frames of 3.9 to 3.{} only",
                        offsets::NEWEST_UNDERSTOOD.trim_start_matches("3.")
                    ),
                );
            }
        }
    };
    let first_load = elf
        .segments()
        .map(|s| s.address())
        .min()
        .context("no PT_LOAD segment")?;
    Ok(Some(Ok(BinaryFacts {
        minor,
        version,
        frames_from,
        runtime_symbol: runtime_sym.address(),
        first_load: first_load & !0xfff,
        layout,
        asyncio: asyncio_section(&elf),
    })))
}

/// The file's bytes of `_PyRuntime` (its static initializer), from its section.
fn runtime_bytes<'data, R: object::ReadRef<'data>>(
    elf: &object::File<'data, R>,
    symbol: &object::Symbol<'data, '_, R>,
) -> Option<&'data [u8]> {
    // Only the table's bytes are read (the section may be large; the file is the target's).
    let section = elf.section_by_index(symbol.section_index()?).ok()?;
    let end = section.address().checked_add(section.size())?;
    let size = end
        .checked_sub(symbol.address())?
        .min(DEBUG_OFFSETS_MAX_BYTES);
    section.data_range(symbol.address(), size).ok().flatten()
}

/// `Py_Version` (3.11+): PY_VERSION_HEX, read from the file.
fn py_version<'data, R: object::ReadRef<'data>>(elf: &object::File<'data, R>) -> Option<u64> {
    let symbol = elf
        .dynamic_symbols()
        .find(|s| s.name() == Ok("Py_Version"))?;
    let section = elf.section_by_index(symbol.section_index()?).ok()?;
    let bytes = section.data_range(symbol.address(), 4).ok()??;
    Some(u32::from_le_bytes(bytes.try_into().ok()?) as u64)
}

/// Bytes of `.PyRuntime` read for `_Py_DebugOffsets` (a few hundred bytes in 3.13-3.15).
const DEBUG_OFFSETS_MAX_BYTES: u64 = 16 << 10;

/// Read-only view of a process's memory.
struct Memory {
    file: File,
    /// Type names by type object, trusted for [`RECHECK`] as code objects are: the task lookup
    /// asks for the type of several objects per stack, and each read is a syscall.
    type_names: RefCell<HashMap<u64, (String, Instant)>>,
}

/// Type names kept per process (past it the cache starts afresh).
const MAX_TYPE_NAMES: usize = 4096;

impl Memory {
    fn open(pid: u32) -> Option<Self> {
        File::open(format!("/proc/{pid}/mem"))
            .ok()
            .map(|file| Memory {
                file,
                type_names: RefCell::default(),
            })
    }

    fn bytes(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, addr).ok()?;
        Some(buf)
    }

    fn u64(&self, addr: u64) -> Option<u64> {
        let mut buf = [0u8; 8];
        self.file.read_exact_at(&mut buf, addr).ok()?;
        Some(u64::from_le_bytes(buf))
    }

    /// A `str` object's text (PYTHON_LAYOUTS.md 4.2), at most `max` code points.
    fn string(&self, obj: u64, code: &CodeLayout, max: usize) -> Option<String> {
        self.raw_string(obj, code, max)
            .map(|text| crate::sanitize::name(&text))
    }

    fn raw_string(&self, obj: u64, code: &CodeLayout, max: usize) -> Option<String> {
        let header = self.bytes(obj.checked_add(0x10)?, 0x18)?;
        let length = u64::from_le_bytes(header[0..8].try_into().ok()?) as usize;
        let state = u32::from_le_bytes(header[0x10..0x14].try_into().ok()?);
        let (kind, compact, ascii) = (
            (state >> 2) & 7,
            state & (1 << 5) != 0,
            state & (1 << 6) != 0,
        );
        if !compact {
            return None;
        }
        let length = length.min(max);
        if ascii {
            let bytes = self.bytes(obj.checked_add(code.ascii_data)?, length)?;
            return Some(String::from_utf8_lossy(&bytes).into_owned());
        }
        let width = kind as usize;
        if !matches!(width, 1 | 2 | 4) {
            return None;
        }
        let bytes = self.bytes(obj.checked_add(code.compact_data)?, length * width)?;
        Some(
            bytes
                .chunks_exact(width)
                .map(|unit| {
                    let mut value = [0u8; 4];
                    value[..width].copy_from_slice(unit);
                    char::from_u32(u32::from_le_bytes(value)).unwrap_or('\u{fffd}')
                })
                .collect(),
        )
    }
}

/// Limits: names and line tables of real programs are far below these.
const MAX_NAME: usize = 512;
const MAX_LINETABLE: usize = 1 << 20;
/// Code objects cached per process; past it the cache starts afresh (bounded memory).
const MAX_CODES: usize = 100_000;
/// Bytes of code objects cached per process, past which it starts afresh too: a process
/// whose code objects all claim a line table near [`MAX_LINETABLE`] would otherwise hold
/// MAX_CODES of them (100 GB); real programs stay below a few MB.
const MAX_CODE_BYTES: usize = 64 << 20;
/// How long a cached code object is trusted before its identity is checked again.
const RECHECK: Duration = Duration::from_secs(1);

/// Flags of `co_flags` that make a frame a coroutine's.
const CO_COROUTINE: u32 = 0x80;
const CO_ITERABLE_COROUTINE: u32 = 0x100;
const CO_ASYNC_GENERATOR: u32 = 0x200;

struct Code {
    name: String,
    file: String,
    first_line: u32,
    linetable: Vec<u8>,
    coroutine: bool,
    /// The pointers that identify this code object (name, file, line table, first line).
    identity: [u64; 4],
    checked: Instant,
    /// Lines found for instruction pointers of this code object: a server's stacks stop at the
    /// same few places again and again, and walking a 3.11+ location table for each frame of
    /// each stack was the largest single cost of decoding (profiled under HTTP load). Bounded
    /// by [`MAX_CACHED_LINES`]; dropped with the code object.
    lines: Vec<(u64, Option<u32>)>,
}

/// Instruction pointers whose line is kept per code object (past it the cache starts afresh).
const MAX_CACHED_LINES: usize = 32;

impl Code {
    fn line(&mut self, layout: &Layout, raw: &PyFrame) -> Option<u32> {
        if let Some(&(_, line)) = self.lines.iter().find(|(ip, _)| *ip == raw.ip) {
            return line;
        }
        let line = line_for(layout, self, raw);
        if self.lines.len() >= MAX_CACHED_LINES {
            self.lines.clear();
        }
        self.lines.push((raw.ip, line));
        line
    }
}

struct Process {
    interpreter: Interpreter,
    memory: Option<Memory>,
    codes: foldhash::HashMap<u64, Option<Code>>,
    /// Bytes held by `codes` (names, files, line tables): bounded by [`MAX_CODE_BYTES`].
    code_bytes: usize,
    /// Task names by coroutine object address (with the coroutine's qualname, which tells a
    /// reused address apart).
    task_names: HashMap<u64, FoundTask>,
    /// Qualified names of coroutine code objects (before 3.11), by code object address.
    qualnames: HashMap<u64, String>,
    /// When the `_asyncio` extension was last looked for (3.14, see `find_asyncio_later`).
    asyncio_checked: Option<Instant>,
}

/// One decoded Python frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedFrame {
    pub frame: Frame,
    /// Outermost frame of one run of the interpreter loop.
    pub entry: bool,
    /// The frame of a coroutine (async def).
    pub coroutine: bool,
}

/// The interpreters of the followed processes and their decoded code objects.
#[derive(Default)]
pub struct Pythons {
    processes: HashMap<u32, Process>,
    /// Processes whose kernel-side layout changed (learned `Handle._run`).
    pub changed: Vec<u32>,
    /// Binaries looked at, by path and inode: what they say about CPython (None: not Python).
    binaries: HashMap<(PathBuf, u64), Facts>,
    pub unreadable_frames: u64,
}

/// Tasks looked up per process (by coroutine address); past it the cache starts afresh.
const MAX_TASKS: usize = 10_000;

impl Pythons {
    pub fn add(&mut self, pid: u32, interpreter: Interpreter) {
        self.processes.insert(
            pid,
            Process {
                interpreter,
                memory: Memory::open(pid),
                code_bytes: 0,
                codes: Default::default(),
                task_names: HashMap::new(),
                qualnames: HashMap::new(),
                asyncio_checked: None,
            },
        );
    }

    pub fn forget(&mut self, pid: u32) {
        self.processes.remove(&pid);
    }

    pub fn get(&self, pid: u32) -> Option<&Interpreter> {
        self.processes.get(&pid).map(|p| &p.interpreter)
    }

    /// Decodes the frames the kernel sent, innermost first. Unreadable ones (the code object
    /// was freed meanwhile, or is garbage) are named `[unreadable]`.
    pub fn decode(&mut self, pid: u32, frames: &[PyFrame]) -> Vec<DecodedFrame> {
        let Some(process) = self.processes.get_mut(&pid) else {
            return Vec::new();
        };
        let layout = process.interpreter.layout;
        let mut decoded = Vec::with_capacity(frames.len());
        for raw in frames {
            let entry = raw.flags & PY_FRAME_ENTRY != 0;
            let code = process.code(raw.code);
            let frame = match code {
                Some(code) => DecodedFrame {
                    frame: Frame {
                        line: code.line(&layout, raw),
                        function: code.name.clone(),
                        file: Some(code.file.clone()),
                        module: None,
                        kind: FrameKind::Python,
                    },
                    entry,
                    coroutine: code.coroutine,
                },
                None => {
                    self.unreadable_frames += 1;
                    DecodedFrame {
                        frame: Frame {
                            function: "[unreadable]".into(),
                            file: None,
                            line: None,
                            module: None,
                            kind: FrameKind::Python,
                        },
                        entry,
                        coroutine: false,
                    }
                }
            };
            decoded.push(frame);
        }
        decoded
    }
}

impl Pythons {
    /// The asyncio task of a stack: the outermost coroutine frame names the coroutine; the Task
    /// object is found through the `Handle._run` frame below it, whose handle's callback is the
    /// Task's step (`TaskStepMethWrapper`), and its name is the field after its coroutine.
    pub fn task(
        &mut self,
        header: &PyStackHeader,
        raw: &[PyFrame],
        decoded: &[DecodedFrame],
    ) -> Option<TaskInfo> {
        let pid = header.pid;
        if decoded.iter().any(|f| f.coroutine) {
            self.find_asyncio_later(pid);
        }
        if header.running_task != 0
            && let Some(task) = self.running_task(pid, header.running_task, decoded)
        {
            return Some(task);
        }
        let outermost = decoded.iter().rposition(|f| f.coroutine)?;
        let coroutine = decoded[outermost].frame.function.clone();
        let process = self.processes.get_mut(&pid)?;
        let minor = process.interpreter.minor;
        let memory = process.memory.as_ref()?;
        let coroutine_addr = coroutine_object(
            memory,
            &process.interpreter.layout,
            raw.get(outermost)?.frame,
        )?;
        let coroutine = if minor < 11 {
            // Code objects have no qualified name before 3.11; coroutine objects do. It is the
            // same for every coroutine of one code object: read once.
            let code = raw.get(outermost)?.code;
            match process.qualnames.get(&code) {
                Some(qualname) => qualname.clone(),
                None => match coroutine_qualname(
                    memory,
                    coroutine_addr,
                    &coroutine,
                    &process.interpreter.layout,
                ) {
                    // Only a name found is kept: a read that failed (the frame was gone) is
                    // tried again with the next stack.
                    Some(qualname) => {
                        if process.qualnames.len() < MAX_CODES {
                            process.qualnames.insert(code, qualname.clone());
                        }
                        qualname
                    }
                    None => coroutine,
                },
            }
        } else {
            coroutine
        };
        // A cached task still holds this coroutine and name: the coroutine's address was not
        // reused by another one (every request of a server makes a new one).
        // The name is read again: a new Task's default name can be a number object at the
        // address of the old one's (3.13 keeps it as an int until asked).
        if let Some(found) = process.task_names.get(&coroutine_addr)
            && memory.bytes(found.coro_field, 16).is_some_and(|b| {
                b[..8] == coroutine_addr.to_le_bytes() && b[8..] == found.name_obj.to_le_bytes()
            })
            && let Some(name) = name_of(memory, minor, found.name_obj, &process.interpreter.layout)
        {
            return Some(TaskInfo {
                name: Some(name),
                coroutine,
                awaited_by: Vec::new(),
            });
        }
        let handle_frame = decoded[outermost..]
            .iter()
            .position(|f| is_handle_run(&f.frame))
            .and_then(|offset| raw.get(outermost + offset));
        let layout = &process.interpreter.layout;
        // The Task as the kernel found it at sample time (the frame may be gone by now), else
        // through the frame, if it is still there.
        let from_kernel = header
            .task_candidates
            .iter()
            .filter(|&&task| task != 0)
            .find(|&&task| type_name(memory, task).is_some_and(|t| t.ends_with("Task")))
            .and_then(|&task| task_of(memory, minor, task, coroutine_addr, layout));
        let found = from_kernel.or_else(|| {
            let frame = handle_frame?;
            let handle = memory.u64(frame.frame + u64::from(layout.kernel.frame_locals))?;
            let task = task_from_handle(memory, handle)?;
            task_of(memory, minor, task, coroutine_addr, layout)
        });
        if let Some(frame) = handle_frame
            && process.interpreter.handle_run_code != frame.code
        {
            // Tell the kernel side (see `Session::sync_python`).
            process.interpreter.handle_run_code = frame.code;
            self.changed.push(pid);
        }
        let name = found.as_ref().map(|f| f.name.clone());
        if let Some(found) = found {
            if process.task_names.len() >= MAX_TASKS {
                process.task_names.clear();
            }
            process.task_names.insert(coroutine_addr, found);
        }
        Some(TaskInfo {
            name,
            coroutine,
            awaited_by: Vec::new(),
        })
    }
}

/// Awaiters followed up from the running Task (a chain longer than this is cut).
const MAX_AWAIT_CHAIN: usize = 16;
/// Set slots looked at for a Task's awaiters.
const MAX_SET_SLOTS: u64 = 1024;

/// How often a 3.14 process running coroutines without a known asyncio table is looked at again.
const ASYNCIO_RECHECK: Duration = Duration::from_secs(2);

impl Pythons {
    /// 3.14 keeps asyncio's table in the `_asyncio` extension: a process that imported asyncio
    /// after it was found gets it now (the kernel side then reads its running Tasks).
    fn find_asyncio_later(&mut self, pid: u32) {
        let Some(process) = self.processes.get_mut(&pid) else {
            return;
        };
        if process.interpreter.minor < 14
            || process.interpreter.asyncio.is_some()
            || process
                .asyncio_checked
                .is_some_and(|at| at.elapsed() < ASYNCIO_RECHECK)
        {
            return;
        }
        process.asyncio_checked = Some(Instant::now());
        let Some(maps) = procfs::maps(pid) else {
            return;
        };
        if let Some(asyncio) = asyncio_extension(pid, &maps) {
            process.interpreter.asyncio = Some(asyncio);
            self.changed.push(pid);
        }
    }

    /// 3.14+: the Task the kernel found running on the thread (the thread state's
    /// `asyncio_running_task`, from the AsyncioDebug table), its name and coroutine, and the
    /// Tasks awaiting it, as `python -m asyncio pstree` shows them. None when the object is no
    /// Task any more (the agent reads after the fact; the stack's frames are used then).
    fn running_task(&mut self, pid: u32, task: u64, decoded: &[DecodedFrame]) -> Option<TaskInfo> {
        let process = self.processes.get(&pid)?;
        let asyncio = process.interpreter.asyncio?;
        let memory = process.memory.as_ref()?;
        let layout = &process.interpreter.layout;
        let minor = process.interpreter.minor;
        let mut info = task_ref(memory, minor, layout, &asyncio, task)?;
        // The stack's own outermost coroutine frame, when the Task's coroutine object cannot be
        // read (the names are the same: a Task runs its coroutine).
        if info.coroutine.is_empty()
            && let Some(frame) = decoded.iter().rev().find(|f| f.coroutine)
        {
            info.coroutine = frame.frame.function.clone();
        }
        let mut awaited_by = Vec::new();
        let mut current = task;
        let mut seen = vec![task];
        while awaited_by.len() < MAX_AWAIT_CHAIN {
            let Some(awaiter) = first_awaiter(memory, layout, &asyncio, current) else {
                break;
            };
            if seen.contains(&awaiter) {
                break;
            }
            let Some(awaiter_info) = task_ref(memory, minor, layout, &asyncio, awaiter) else {
                break;
            };
            awaited_by.push(TaskRef {
                name: awaiter_info.name,
                coroutine: awaiter_info.coroutine,
            });
            seen.push(awaiter);
            current = awaiter;
        }
        Some(TaskInfo {
            name: info.name,
            coroutine: info.coroutine,
            awaited_by,
        })
    }
}

/// A Task's name and its coroutine's qualname; None when `task` is not an asyncio Task.
fn task_ref(
    memory: &Memory,
    minor: u32,
    layout: &Layout,
    asyncio: &AsyncioOffsets,
    task: u64,
) -> Option<TaskRef> {
    if !type_name(memory, task)?.ends_with("Task") {
        return None;
    }
    let is_task = memory.bytes(task + asyncio.task_is_task, 1)?;
    if is_task[0] == 0 {
        return None;
    }
    let name = memory
        .u64(task + asyncio.task_name)
        .and_then(|obj| name_of(memory, minor, obj, layout));
    let coroutine = memory
        .u64(task + asyncio.task_coro)
        .zip(layout.gi_qualname)
        .and_then(|(coro, qualname)| memory.u64(coro + qualname))
        .filter(|&obj| type_name(memory, obj).is_some_and(|t| t == "str"))
        .and_then(|obj| memory.string(obj, &layout.code, MAX_NAME))
        .unwrap_or_default();
    Some(TaskRef { name, coroutine })
}

/// One Task awaiting `task` (`task_awaited_by`: one Task, or a set of them when several).
fn first_awaiter(
    memory: &Memory,
    layout: &Layout,
    asyncio: &AsyncioOffsets,
    task: u64,
) -> Option<u64> {
    let awaited_by = memory.u64(task + asyncio.task_awaited_by)?;
    if awaited_by == 0 {
        return None;
    }
    let is_set = memory.bytes(task + asyncio.task_awaited_by_is_set, 1)?[0] != 0;
    if !is_set {
        return Some(awaited_by);
    }
    // A set: its table of (key, hash) entries; the first live entry that is a Task.
    let set = layout.set?;
    let table = memory.u64(awaited_by + set.table)?;
    let slots = (memory.u64(awaited_by + set.mask)? + 1).min(MAX_SET_SLOTS);
    (0..slots).find_map(|slot| {
        let key = memory.u64(table + 16 * slot)?;
        (key != 0 && type_name(memory, key).is_some_and(|t| t.ends_with("Task"))).then_some(key)
    })
}

/// asyncio's `Handle._run` (3.11+ qualname; older versions only say `_run`).
fn is_handle_run(frame: &Frame) -> bool {
    (frame.function == "Handle._run" || frame.function == "_run")
        && frame
            .file
            .as_deref()
            .is_some_and(|f| f.ends_with("asyncio/events.py"))
}

/// The coroutine object a coroutine frame belongs to: 3.11+ frames live inside it
/// (`cr_iframe`); older frames point to it (`f_gen`).
fn coroutine_object(memory: &Memory, layout: &Layout, frame: u64) -> Option<u64> {
    match layout.minor {
        9 => memory.u64(frame + 0x60),
        10 => memory.u64(frame + 0x58),
        _ => frame.checked_sub(layout.gi_iframe),
    }
    .filter(|&addr| addr != 0)
}

/// A coroutine's `__qualname__` (before 3.11): the str among its first fields that ends with
/// its code's name and qualifies it (`Class.method`); the field order differs between versions.
fn coroutine_qualname(
    memory: &Memory,
    coroutine: u64,
    name: &str,
    layout: &Layout,
) -> Option<String> {
    let fields = memory.bytes(coroutine + 0x10, 8 * 10)?;
    fields.chunks_exact(8).find_map(|field| {
        let obj = u64::from_le_bytes(field.try_into().ok()?);
        if obj == 0 || type_name(memory, obj)? != "str" {
            return None;
        }
        let text = memory.string(obj, &layout.code, MAX_NAME)?;
        (text.len() > name.len() && text.ends_with(&format!(".{name}"))).then_some(text)
    })
}

/// Name of an object's type (`ob_type->tp_name`).
fn type_name(memory: &Memory, obj: u64) -> Option<String> {
    let ty = memory.u64(obj.checked_add(0x8)?)?;
    if let Ok(cache) = memory.type_names.try_borrow()
        && let Some((text, read)) = cache.get(&ty)
        && read.elapsed() < RECHECK
    {
        return Some(text.clone());
    }
    let name = memory.u64(ty.checked_add(0x18)?)?;
    let bytes = memory.bytes(name, 32)?;
    let len = bytes.iter().position(|&b| b == 0)?;
    let text = String::from_utf8(bytes[..len].to_vec()).ok()?;
    if let Ok(mut cache) = memory.type_names.try_borrow_mut() {
        if cache.len() >= MAX_TYPE_NAMES {
            cache.clear();
        }
        cache.insert(ty, (text.clone(), Instant::now()));
    }
    Some(text)
}

/// A Task found for a coroutine: where its `task_coro` field is (the name object follows).
struct FoundTask {
    coro_field: u64,
    name_obj: u64,
    name: String,
}

/// A task name object's text: a str, or the number of a default name (3.13).
fn name_of(memory: &Memory, minor: u32, name_obj: u64, layout: &Layout) -> Option<String> {
    match type_name(memory, name_obj)?.as_str() {
        "str" => memory.string(name_obj, &layout.code, MAX_NAME),
        // 3.13 keeps the default name as a number until someone asks for it.
        "int" => small_int(memory, minor, name_obj).map(|n| format!("Task-{n}")),
        _ => None,
    }
}

/// The Task behind a Handle: its callback is the Task's step or wake-up, a small wrapper object
/// (3.9 to 3.11, and the step in 3.12+) or a builtin method bound to the Task (the wake-up in
/// 3.12+). Handle's __slots__ (sorted by name) start after the object header.
fn task_from_handle(memory: &Memory, handle: u64) -> Option<u64> {
    (0..8).find_map(|slot| {
        let value = memory.u64(handle + 0x10 + 8 * slot)?;
        let callback_type = type_name(memory, value)?;
        let task = if callback_type.ends_with("TaskStepMethWrapper")
            || callback_type.ends_with("TaskWakeupMethWrapper")
        {
            memory.u64(value + 0x10)?
        } else if callback_type == "builtin_function_or_method" {
            memory.u64(value + 0x18)?
        } else {
            return None;
        };
        type_name(memory, task)?.ends_with("Task").then_some(task)
    })
}

/// A Task's name, when it runs `coroutine`: `task_coro` is followed by `task_name` in 3.9 to
/// 3.13.
fn task_of(
    memory: &Memory,
    minor: u32,
    task: u64,
    coroutine: u64,
    layout: &Layout,
) -> Option<FoundTask> {
    let fields = memory.bytes(task + 0x10, 8 * 48)?;
    let pointers: Vec<u64> = fields
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
        .collect();
    let index = pointers.iter().position(|&p| p == coroutine)?;
    let name_obj = *pointers.get(index + 1)?;
    let name = name_of(memory, minor, name_obj, layout)?;
    Some(FoundTask {
        coro_field: task + 0x10 + 8 * index as u64,
        name_obj,
        name,
    })
}

/// A non-negative int below 2**60.
fn small_int(memory: &Memory, minor: u32, obj: u64) -> Option<u64> {
    let size = memory.u64(obj + 0x10)?;
    let digits = if minor >= 12 { size >> 3 } else { size };
    let raw = memory.bytes(obj + 0x18, 8)?;
    let low = u32::from_le_bytes(raw[0..4].try_into().ok()?) as u64;
    let high = u32::from_le_bytes(raw[4..8].try_into().ok()?) as u64;
    match digits {
        0 => Some(0),
        1 => Some(low),
        2 => Some(low | (high << 30)),
        _ => None,
    }
}

impl Process {
    fn code(&mut self, addr: u64) -> Option<&mut Code> {
        let layout = self.interpreter.layout.code;
        let memory = self.memory.as_ref()?;
        let fresh = match self.codes.get(&addr) {
            Some(Some(code)) if code.checked.elapsed() < RECHECK => true,
            Some(Some(code)) => read_identity(memory, addr, &layout) == Some(code.identity),
            Some(None) | None => false,
        };
        if fresh {
            if let Some(Some(code)) = self.codes.get_mut(&addr) {
                code.checked = Instant::now();
            }
        } else {
            if self.codes.len() >= MAX_CODES || self.code_bytes >= MAX_CODE_BYTES {
                self.codes.clear();
                self.code_bytes = 0;
            }
            let code = read_code(memory, addr, &layout);
            self.code_bytes += code.as_ref().map_or(0, |c| {
                c.name.len()
                    + c.file.len()
                    + c.linetable.len()
                    + size_of::<Code>()
                    + MAX_CACHED_LINES * size_of::<(u64, Option<u32>)>()
            });
            self.codes.insert(addr, code);
        }
        self.codes.get_mut(&addr)?.as_mut()
    }
}

fn read_identity(memory: &Memory, addr: u64, layout: &CodeLayout) -> Option<[u64; 4]> {
    let name = layout.qualname.unwrap_or(layout.name);
    let field = |offset: u64| memory.u64(addr.checked_add(offset)?);
    Some([
        field(name)?,
        field(layout.filename)?,
        field(layout.linetable)?,
        field(layout.first_line)? & 0xffff_ffff,
    ])
}

fn read_code(memory: &Memory, addr: u64, layout: &CodeLayout) -> Option<Code> {
    if addr == 0 {
        return None;
    }
    let identity = read_identity(memory, addr, layout)?;
    let [name_obj, file_obj, table_obj, first_line] = identity;
    let name = memory.string(name_obj, layout, MAX_NAME)?;
    let file = memory.string(file_obj, layout, 4 * MAX_NAME)?;
    // ob_size of the bytes object: garbage claims any size; more than the limit is garbage.
    let table_len = memory.u64(table_obj.checked_add(0x10)?)?;
    if table_len > MAX_LINETABLE as u64 {
        return None;
    }
    let linetable = memory.bytes(table_obj.checked_add(0x20)?, table_len as usize)?;
    let flags = memory.u64(addr.checked_add(layout.flags)?)? as u32;
    Some(Code {
        name,
        file,
        first_line: first_line as u32,
        linetable,
        coroutine: flags & (CO_COROUTINE | CO_ITERABLE_COROUTINE | CO_ASYNC_GENERATOR) != 0,
        identity,
        checked: Instant::now(),
        lines: Vec::new(),
    })
}

fn line_for(layout: &Layout, code: &Code, raw: &PyFrame) -> Option<u32> {
    let first = code.first_line as i64;
    let line = match (layout.minor, layout.code.code_adaptive) {
        (9, _) => lnotab_line(&code.linetable, first, raw.ip as i64),
        (10, _) => linetable_310_line(&code.linetable, first, 2 * raw.ip as i64),
        (_, Some(adaptive)) => {
            let index = raw.ip.checked_sub(raw.code.checked_add(adaptive)?)? / 2;
            location_table_line(&code.linetable, first, index)
        }
        _ => None,
    }?;
    u32::try_from(line).ok()
}

/// 3.9 `co_lnotab`: (address increment, signed line increment) pairs; `lasti` in bytes.
pub fn lnotab_line(table: &[u8], first_line: i64, lasti: i64) -> Option<i64> {
    if lasti < 0 {
        return Some(first_line);
    }
    let mut addr = 0i64;
    let mut line = first_line;
    for pair in table.chunks_exact(2) {
        addr += pair[0] as i64;
        if addr > lasti {
            break;
        }
        line = line.checked_add(pair[1] as i8 as i64)?;
    }
    Some(line)
}

/// 3.10 `co_linetable`: (range length in bytes, signed line delta or -128 for none) pairs.
pub fn linetable_310_line(table: &[u8], first_line: i64, offset: i64) -> Option<i64> {
    if offset < 0 {
        return Some(first_line);
    }
    let mut line = first_line;
    let mut start = 0i64;
    for pair in table.chunks_exact(2) {
        let (length, delta) = (pair[0] as i64, pair[1] as i8);
        let has_line = delta != -128;
        if has_line {
            line = line.checked_add(delta as i64)?;
        }
        let end = start + length;
        if start <= offset && offset < end {
            return has_line.then_some(line);
        }
        start = end;
    }
    None
}

/// 3.11+ location table: variable-length entries of 1 to 8 code units each.
pub fn location_table_line(table: &[u8], first_line: i64, index: u64) -> Option<i64> {
    let mut at = 0usize;
    let mut line = first_line;
    let mut addr = 0u64;
    let varint = |at: &mut usize| -> Option<u64> {
        let mut value = 0u64;
        let mut shift = 0;
        loop {
            let byte = *table.get(*at)?;
            *at += 1;
            value |= ((byte & 0x3f) as u64) << shift;
            shift += 6;
            if byte & 0x40 == 0 || shift > 60 {
                return Some(value);
            }
        }
    };
    let svarint = |at: &mut usize| -> Option<i64> {
        let v = varint(at)?;
        Some(if v & 1 == 1 {
            -((v >> 1) as i64)
        } else {
            (v >> 1) as i64
        })
    };
    while at < table.len() {
        let first = table[at];
        at += 1;
        let code = (first >> 3) & 0xf;
        let units = (first & 7) as u64 + 1;
        let (delta, has_line) = match code {
            15 => (0, false),
            14 => {
                let delta = svarint(&mut at)?;
                varint(&mut at)?;
                varint(&mut at)?;
                varint(&mut at)?;
                (delta, true)
            }
            13 => (svarint(&mut at)?, true),
            10..=12 => {
                at += 2;
                (code as i64 - 10, true)
            }
            _ => {
                at += 1;
                (0, true)
            }
        };
        // Garbage tables claim deltas of up to 2^59: no line, rather than an overflow.
        line = line.checked_add(delta)?;
        if addr <= index && index < addr + units {
            return has_line.then_some(line);
        }
        addr += units;
    }
    None
}

/// Names of the native functions that run Python frames: each is replaced by the Python frames
/// of one run of the interpreter loop. A build with the tail-calling interpreter (clang 19+,
/// `--with-tail-call-interp`) runs them in one `_TAIL_CALL_<INSTRUCTION>` function per
/// instruction, jumping from one to the next: the one on the stack stands for its run.
fn is_eval_frame(frame: &Frame) -> bool {
    frame.kind == FrameKind::Native
        && (frame.function.starts_with("_PyEval_EvalFrameDefault")
            || frame.function == "PyEval_EvalFrameEx"
            || is_tail_call(frame))
}

fn is_tail_call(frame: &Frame) -> bool {
    frame.function.starts_with("_TAIL_CALL_")
}

/// Python frames in place of the interpreter loop's native frames (both innermost first): the
/// n-th `_PyEval_EvalFrameDefault` from the top becomes the n-th run of Python frames (a run
/// ends at an entry frame). Runs left over (the native stack was cut short) go to the bottom.
pub fn merge(native: Vec<Frame>, python: &[DecodedFrame]) -> Vec<Frame> {
    let mut runs: Vec<&[DecodedFrame]> = Vec::new();
    let mut start = 0;
    for (index, frame) in python.iter().enumerate() {
        if frame.entry {
            runs.push(&python[start..=index]);
            start = index + 1;
        }
    }
    if start < python.len() {
        runs.push(&python[start..]);
    }
    let mut runs = runs.into_iter();
    let mut merged = Vec::with_capacity(native.len() + python.len());
    let mut replaced = false;
    // The previous native frame was an eval frame (Some), and a tail-calling one (true).
    let mut previous_eval: Option<bool> = None;
    for frame in native {
        if is_eval_frame(&frame) {
            let tail = is_tail_call(&frame);
            if let Some(previous_tail) = previous_eval
                && (tail || previous_tail)
            {
                // A tail-calling instruction right above the loop entry that called it (or
                // another one): one run of the loop, already replaced.
                previous_eval = Some(tail || previous_tail);
                continue;
            }
            previous_eval = Some(tail);
            match runs.next() {
                Some(run) => {
                    merged.extend(run.iter().map(|f| f.frame.clone()));
                    replaced = true;
                    continue;
                }
                None => merged.push(frame),
            }
        } else if !(replaced && frame.function == "_PyEval_EvalFrame") {
            // (`_PyEval_EvalFrame` is the inline wrapper around the loop just replaced.)
            merged.push(frame);
        }
        previous_eval = None;
        replaced = false;
    }
    for run in runs {
        merged.extend(run.iter().map(|f| f.frame.clone()));
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn native(name: &str) -> Frame {
        Frame {
            function: name.into(),
            file: None,
            line: None,
            module: None,
            kind: FrameKind::Native,
        }
    }

    fn py(name: &str, entry: bool) -> DecodedFrame {
        DecodedFrame {
            frame: Frame {
                function: name.into(),
                file: Some("app.py".into()),
                line: Some(1),
                module: None,
                kind: FrameKind::Python,
            },
            entry,
            coroutine: false,
        }
    }

    fn names(frames: &[Frame]) -> Vec<&str> {
        frames.iter().map(|f| f.function.as_str()).collect()
    }

    #[test]
    fn python_runs_replace_eval_frames_in_order() {
        let native = vec![
            native("re_search"),
            native("_PyEval_EvalFrameDefault"),
            native("task_step"),
            native("_PyEval_EvalFrameDefault"),
            native("main"),
        ];
        let python = [
            py("handler", false),
            py("Task.step", true),
            py("_run_once", false),
            py("<module>", true),
        ];
        assert_eq!(
            names(&merge(native, &python)),
            [
                "re_search",
                "handler",
                "Task.step",
                "task_step",
                "_run_once",
                "<module>",
                "main"
            ]
        );
    }

    #[test]
    fn tail_calling_interpreter_runs_are_placed_like_eval_frames() {
        // A tail-calling build: the running instruction's function is on the stack, above the
        // loop's entry (or in place of it).
        let native = vec![
            native("sre_match"),
            native("_TAIL_CALL_CALL_BUILTIN_FAST"),
            native("_PyEval_EvalFrameDefault"),
            native("task_step"),
            native("_TAIL_CALL_CALL"),
            native("main"),
        ];
        let python = [
            py("validate", false),
            py("handler", true),
            py("_run_once", false),
            py("<module>", true),
        ];
        assert_eq!(
            names(&merge(native, &python)),
            [
                "sre_match",
                "validate",
                "handler",
                "task_step",
                "_run_once",
                "<module>",
                "main"
            ]
        );
    }

    #[test]
    fn leftover_python_goes_to_the_bottom_and_spare_eval_frames_stay() {
        let python = [py("a", true), py("b", true)];
        let merged = merge(
            vec![native("_PyEval_EvalFrameDefault"), native("x")],
            &python,
        );
        assert_eq!(names(&merged), ["a", "x", "b"]);
        let merged = merge(
            vec![
                native("_PyEval_EvalFrameDefault"),
                native("_PyEval_EvalFrameDefault"),
            ],
            &[py("a", true)],
        );
        assert_eq!(names(&merged), ["a", "_PyEval_EvalFrameDefault"]);
    }

    #[test]
    fn lnotab_39() {
        // line 10 for bytes 0..6, +2 at byte 6, +1 at byte 20.
        let table = [6, 2, 14, 1];
        assert_eq!(lnotab_line(&table, 10, 0), Some(10));
        assert_eq!(lnotab_line(&table, 10, 4), Some(10));
        assert_eq!(lnotab_line(&table, 10, 6), Some(12));
        assert_eq!(lnotab_line(&table, 10, 19), Some(12));
        assert_eq!(lnotab_line(&table, 10, 20), Some(13));
    }

    #[test]
    fn linetable_310() {
        // [0,4): line+1, [4,10): no line, [10,12): line+2
        let table = [4, 1, 6, 0x80, 2, 2];
        assert_eq!(linetable_310_line(&table, 5, 0), Some(6));
        assert_eq!(linetable_310_line(&table, 5, 6), None);
        assert_eq!(linetable_310_line(&table, 5, 11), Some(8));
        assert_eq!(linetable_310_line(&table, 5, 12), None);
    }

    #[test]
    fn location_table_311() {
        // Entry 1: code 13 (no columns), 2 units, delta +1 (svarint 2).
        // Entry 2: code 10 (one-line, delta 0), 1 unit, columns 3 and 9.
        // Entry 3: code 11 (delta +1), 3 units.
        // Entry 4: code 15 (no location), 1 unit.
        // Entry 5: code 14 (long), 1 unit, delta -2 (svarint 5), end delta, cols.
        let table = [
            0x80 | (13 << 3) | 1,
            2,
            0x80 | (10 << 3),
            3,
            9,
            0x80 | (11 << 3) | 2,
            1,
            4,
            0x80 | (15 << 3),
            0x80 | (14 << 3),
            5,
            0,
            1,
            1,
        ];
        let line = |i| location_table_line(&table, 20, i);
        assert_eq!(line(0), Some(21));
        assert_eq!(line(1), Some(21));
        assert_eq!(line(2), Some(21));
        assert_eq!(line(3), Some(22));
        assert_eq!(line(5), Some(22));
        assert_eq!(line(6), None);
        assert_eq!(line(7), Some(20));
        assert_eq!(line(8), None);
    }

    #[test]
    fn cached_lines_are_the_table_s_and_bounded() {
        let layout = layout(10).expect("3.10 layout");
        // 3.10 pairs (length in bytes, line delta): lines 11, 12, none, 10 over 2-byte units.
        let table = vec![4, 1, 6, 1, 2, 0x80, 40, 254];
        let mut code = Code {
            name: "f".into(),
            file: "f.py".into(),
            first_line: 10,
            linetable: table,
            coroutine: false,
            identity: [0; 4],
            checked: Instant::now(),
            lines: Vec::new(),
        };
        let frame = |ip| PyFrame {
            code: 0x1000,
            ip,
            frame: 0,
            flags: 0,
            _reserved: 0,
        };
        for round in 0..3 {
            for ip in 0..(3 * MAX_CACHED_LINES as u64) {
                let raw = frame(ip);
                let expected = line_for(&layout, &code, &raw);
                assert_eq!(code.line(&layout, &raw), expected, "ip {ip}, round {round}");
                assert!(code.lines.len() <= MAX_CACHED_LINES);
            }
        }
        assert_eq!(code.line(&layout, &frame(0)), Some(11));
        assert_eq!(code.line(&layout, &frame(3)), Some(12));
        assert_eq!(code.line(&layout, &frame(5)), None);
    }

    #[test]
    fn version_from_file_names() {
        assert_eq!(
            minor_from_name(Path::new("/x/libpython3.12.so.1.0")),
            Some(12)
        );
        assert_eq!(minor_from_name(Path::new("/usr/bin/python3.11")), Some(11));
        assert_eq!(minor_from_name(Path::new("/usr/bin/python3")), None);
        assert_eq!(minor_from_name(Path::new("/x/libc.so.6")), None);
    }

    #[test]
    fn every_supported_version_has_a_layout() {
        for minor in 9..=13 {
            let layout = layout(minor).expect("layout");
            assert_eq!(layout.minor, minor);
            // Before 3.11 a thread state names its thread by pthread_self (fs_base).
            assert_eq!(layout.kernel.thread_id_is_pthread == 1, minor < 11);
        }
        assert!(layout(8).is_none());
        assert!(layout(14).is_none());
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::super::*;

        proptest! {
            #![proptest_config(crate::fuzz_config())]

            /// Line tables are read from the target: garbage gives a line or none, in time
            /// linear in the table, never a panic or an overflow.
            #[test]
            fn fuzz_line_tables(table in proptest::collection::vec(any::<u8>(), 0..2048), first in any::<i32>(), at in any::<i64>(), index in any::<u64>()) {
                let first = i64::from(first);
                let _ = lnotab_line(&table, first, at);
                let _ = linetable_310_line(&table, first, at);
                let _ = location_table_line(&table, first, index);
                let _ = location_table_line(&table, first, index % 4096);
            }
        }
    }
}
