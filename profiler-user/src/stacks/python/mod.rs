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

mod asyncio;
mod code;
mod discovery;
mod layouts;
mod merge;
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
    system::procfs,
};

use self::{asyncio::*, code::*, discovery::*};
pub use self::{
    code::{linetable_310_line, lnotab_line, location_table_line},
    discovery::{Detection, Interpreter, Unreadable},
    layouts::layout,
    merge::{merge, merge_placed, place_runs},
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
    fn open(proc: &dyn procfs::ProcReader, pid: u32) -> Option<Self> {
        proc.open_mem(pid).ok().map(|file| Memory {
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
    /// Shared with every frame decoded from this code object (see `model::Frame`).
    name: std::sync::Arc<str>,
    file: std::sync::Arc<str>,
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
    /// On an entry frame: the low 32 bits of its run's C-stack entry frame (0: unknown), which
    /// places the run in the native stack (see `merge::place_runs`).
    pub entry_shim_low32: u32,
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
    /// A process found running CPython: its memory is read through `proc` from now on.
    pub fn add(&mut self, proc: &dyn procfs::ProcReader, pid: u32, interpreter: Interpreter) {
        self.processes.insert(
            pid,
            Process {
                interpreter,
                memory: Memory::open(proc, pid),
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
                        column: None,
                        line: code.line(&layout, raw),
                        function: code.name.clone(),
                        file: Some(code.file.clone()),
                        module: None,
                        kind: FrameKind::Python,
                    },
                    entry,
                    coroutine: code.coroutine,
                    entry_shim_low32: raw.entry_shim_low32,
                },
                None => {
                    self.unreadable_frames += 1;
                    DecodedFrame {
                        frame: Frame {
                            column: None,
                            function: "[unreadable]".into(),
                            file: None,
                            line: None,
                            module: None,
                            kind: FrameKind::Python,
                        },
                        entry,
                        coroutine: false,
                        entry_shim_low32: raw.entry_shim_low32,
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
        let coroutine = decoded[outermost].frame.function.to_string();
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

#[cfg(test)]
mod tests {
    use super::*;

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
            entry_shim_low32: 0,
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
