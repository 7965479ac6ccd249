//! CPython's descriptions of itself (3.13 and later): the `_Py_DebugOffsets` table at the start
//! of `_PyRuntime` and asyncio's `AsyncioDebug` table (`_Py_AsyncioDebug` in 3.15), parsed from
//! their static initializers in the ELF file. They give the field offsets of the interpreter's
//! structures for exactly the build at hand, so a patch release that moves a field (3.14.5 and
//! 3.14.6 did) is read right without a table of ours.
//!
//! The tables themselves change shape between minor versions (and between pre-releases): the
//! positions of their fields are known here for 3.13, 3.14 and 3.15 (read from the DWARF of
//! Debian's python3.14d and python3.15d with `ptype /o`). A table of another version is not
//! guessed at: the caller gets the reason and shows native frames only. Every offset read is
//! checked against the size of the structure it belongs to before it is trusted.

use std::fmt;

/// Where each field sits in one version's `_Py_DebugOffsets` (byte positions in the table).
struct Positions {
    /// Which table this is ("3.14").
    name: &'static str,
    /// Size of the whole table.
    total: usize,
    runtime_size: usize,
    interpreters_head: usize,
    interp_size: usize,
    threads_head: usize,
    ceval_gil: usize,
    tstate_size: usize,
    tstate_next: usize,
    current_frame: usize,
    native_thread_id: usize,
    frame_size: usize,
    frame_previous: usize,
    frame_executable: usize,
    frame_instr_ptr: usize,
    frame_localsplus: usize,
    frame_owner: usize,
    code_size: usize,
    co_filename: usize,
    co_name: usize,
    co_qualname: usize,
    co_linetable: usize,
    co_firstlineno: usize,
    co_code_adaptive: usize,
    ascii_size: usize,
    compact_size: Option<usize>,
    /// `gen_object`: size, gi_name, gi_iframe (3.14+).
    gen_object: Option<[usize; 3]>,
    /// `set_object`: size, used, table, mask (3.14+).
    set_object: Option<[usize; 4]>,
}

/// 3.13 (PYTHON_LAYOUTS.md section 5).
const TABLE_313: Positions = Positions {
    name: "3.13",
    total: 0x248,
    runtime_size: 0x18,
    interpreters_head: 0x28,
    interp_size: 0x30,
    threads_head: 0x48,
    ceval_gil: 0x70,
    tstate_size: 0x98,
    tstate_next: 0xa8,
    current_frame: 0xb8,
    native_thread_id: 0xc8,
    frame_size: 0xe0,
    frame_previous: 0xe8,
    frame_executable: 0xf0,
    frame_instr_ptr: 0xf8,
    frame_localsplus: 0x100,
    frame_owner: 0x108,
    code_size: 0x110,
    co_filename: 0x118,
    co_name: 0x120,
    co_qualname: 0x128,
    co_linetable: 0x130,
    co_firstlineno: 0x138,
    co_code_adaptive: 0x158,
    ascii_size: 0x230,
    compact_size: None,
    gen_object: None,
    set_object: None,
};

/// 3.14: the interpreter state gained threads_main, code_object_generation and
/// tlbc_generation, the frame stackpointer and tlbc_index, the code object co_tlbc; new set,
/// gen, llist_node and debugger_support sections.
const TABLE_314: Positions = Positions {
    name: "3.14",
    total: 760,
    runtime_size: 24,
    interpreters_head: 40,
    interp_size: 48,
    threads_head: 72,
    ceval_gil: 120,
    tstate_size: 176,
    tstate_next: 192,
    current_frame: 208,
    native_thread_id: 224,
    frame_size: 248,
    frame_previous: 256,
    frame_executable: 264,
    frame_instr_ptr: 272,
    frame_localsplus: 280,
    frame_owner: 288,
    code_size: 312,
    co_filename: 320,
    co_name: 328,
    co_qualname: 336,
    co_linetable: 344,
    co_firstlineno: 352,
    co_code_adaptive: 384,
    ascii_size: 640,
    compact_size: None,
    gen_object: Some([664, 672, 680]),
    set_object: Some([496, 504, 512, 520]),
};

/// 3.15 (from 3.15.0b4 on): the thread state gained base_frame, last_profiled_frame(_seq),
/// holds_gil, gil_requested, current_exception, exc_state; the type object tp_basicsize and
/// tp_dictoffset, a heap type section, the unicode object compactunicodeobject_size, the gc
/// section frame and generation stats.
const TABLE_315: Positions = Positions {
    name: "3.15",
    total: 888,
    runtime_size: 24,
    interpreters_head: 40,
    interp_size: 48,
    threads_head: 72,
    ceval_gil: 120,
    tstate_size: 176,
    tstate_next: 192,
    current_frame: 208,
    native_thread_id: 248,
    frame_size: 312,
    frame_previous: 320,
    frame_executable: 328,
    frame_instr_ptr: 336,
    frame_localsplus: 344,
    frame_owner: 352,
    code_size: 376,
    co_filename: 384,
    co_name: 392,
    co_qualname: 400,
    co_linetable: 408,
    co_firstlineno: 416,
    co_code_adaptive: 448,
    ascii_size: 736,
    compact_size: Some(744),
    gen_object: Some([792, 800, 808]),
    set_object: Some([592, 600, 608, 616]),
};

/// The table of a `PY_VERSION_HEX`, when its shape is known. 3.14 and 3.15 pre-releases are not
/// accepted: their tables changed shape between betas (3.15.0b4 added a field).
fn table_for(version: u64) -> Option<&'static Positions> {
    match version {
        0x030d_0000..0x030e_0000 => Some(&TABLE_313),
        0x030e_00f0..0x030f_0000 => Some(&TABLE_314),
        0x030f_00f0..0x0310_0000 => Some(&TABLE_315),
        _ => None,
    }
}

/// The newest table understood, for messages.
pub const NEWEST_UNDERSTOOD: &str = "3.15";

/// The offsets stallscope uses, read from an interpreter's `_Py_DebugOffsets`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DebugOffsets {
    /// `PY_VERSION_HEX` of the interpreter.
    pub version: u64,
    pub free_threaded: bool,
    /// Which table shape was read ("3.14").
    pub table: &'static str,
    pub runtime_size: u64,
    pub interpreters_head: u64,
    pub threads_head: u64,
    pub ceval_gil: u64,
    pub tstate_next: u64,
    pub current_frame: u64,
    pub native_thread_id: u64,
    pub frame_previous: u64,
    pub frame_executable: u64,
    pub frame_instr_ptr: u64,
    pub frame_localsplus: u64,
    pub frame_owner: u64,
    pub co_filename: u64,
    pub co_name: u64,
    pub co_qualname: u64,
    pub co_linetable: u64,
    pub co_firstlineno: u64,
    pub co_code_adaptive: u64,
    pub ascii_size: u64,
    pub compact_size: Option<u64>,
    /// Offset of a generator's (coroutine's) name and embedded frame.
    pub gi_name: Option<u64>,
    pub gi_iframe: Option<u64>,
    /// `PySetObject`: used, table, mask.
    pub set: Option<SetOffsets>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetOffsets {
    pub used: u64,
    pub table: u64,
    pub mask: u64,
}

/// Why a table was not used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// No `xdebugpy` cookie: not a table at all.
    NoCookie,
    /// A version whose table shape is not known.
    UnknownVersion(u64),
    /// The bytes end before the table does.
    Short,
    /// An offset outside its structure, or a structure of an absurd size.
    Inconsistent(String),
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::NoCookie => write!(f, "no _Py_DebugOffsets cookie"),
            Refused::UnknownVersion(version) => write!(
                f,
                "its _Py_DebugOffsets are of CPython {}, a table shape stallscope does not know \
                 (3.13 to {NEWEST_UNDERSTOOD} final releases are read)",
                version_text(*version)
            ),
            Refused::Short => write!(f, "_Py_DebugOffsets ends early"),
            Refused::Inconsistent(what) => write!(f, "_Py_DebugOffsets do not add up: {what}"),
        }
    }
}

/// "3.14.10", "3.15.0b4" from a `PY_VERSION_HEX`.
pub fn version_text(version: u64) -> String {
    let (major, minor, micro) = (version >> 24, (version >> 16) & 0xff, (version >> 8) & 0xff);
    let serial = version & 0xf;
    let level = match (version >> 4) & 0xf {
        0xa => "a",
        0xb => "b",
        0xc => "rc",
        _ => return format!("{major}.{minor}.{micro}"),
    };
    format!("{major}.{minor}.{micro}{level}{serial}")
}

fn word(bytes: &[u8], at: usize) -> Result<u64, Refused> {
    let slice = bytes.get(at..at + 8).ok_or(Refused::Short)?;
    let mut array = [0u8; 8];
    array.copy_from_slice(slice);
    Ok(u64::from_le_bytes(array))
}

/// Largest plausible sizes of the structures read (far above every build seen).
const MAX_RUNTIME: u64 = 64 << 20;
const MAX_TSTATE: u64 = 1 << 16;
const MAX_FRAME: u64 = 1 << 10;
const MAX_CODE: u64 = 1 << 12;
const MAX_OBJECT: u64 = 1 << 12;

/// Parses the table at the start of `bytes` (the `.PyRuntime` section, or `_PyRuntime`'s bytes).
pub fn parse(bytes: &[u8]) -> Result<DebugOffsets, Refused> {
    if bytes.get(..8) != Some(b"xdebugpy".as_slice()) {
        return Err(Refused::NoCookie);
    }
    let version = word(bytes, 8)?;
    let table = table_for(version).ok_or(Refused::UnknownVersion(version))?;
    if bytes.len() < table.total {
        return Err(Refused::Short);
    }
    let at = |position: usize| word(bytes, position);
    let optional = |position: Option<usize>| position.map(at).transpose();
    // Each offset must leave room for the 8 bytes read there inside its structure.
    let within = |what: &str, size: u64, max: u64, fields: &[(&str, u64)]| -> Result<(), Refused> {
        if size == 0 || size > max {
            return Err(Refused::Inconsistent(format!("{what} size {size:#x}")));
        }
        for (name, offset) in fields {
            if offset.checked_add(8).is_none_or(|end| end > size) {
                return Err(Refused::Inconsistent(format!(
                    "{what}.{name} at {offset:#x} outside its {size:#x} bytes"
                )));
            }
        }
        Ok(())
    };
    let free_threaded = at(0x10)? != 0;
    let runtime_size = at(table.runtime_size)?;
    let interpreters_head = at(table.interpreters_head)?;
    within(
        "runtime",
        runtime_size,
        MAX_RUNTIME,
        &[("interpreters_head", interpreters_head)],
    )?;
    let interp_size = at(table.interp_size)?;
    let threads_head = at(table.threads_head)?;
    let ceval_gil = at(table.ceval_gil)?;
    within(
        "interpreter",
        interp_size,
        MAX_RUNTIME,
        &[("threads_head", threads_head), ("ceval_gil", ceval_gil)],
    )?;
    let tstate_size = at(table.tstate_size)?;
    let tstate_next = at(table.tstate_next)?;
    let current_frame = at(table.current_frame)?;
    let native_thread_id = at(table.native_thread_id)?;
    within(
        "thread_state",
        tstate_size,
        MAX_TSTATE,
        &[
            ("next", tstate_next),
            ("current_frame", current_frame),
            ("native_thread_id", native_thread_id),
        ],
    )?;
    let frame_size = at(table.frame_size)?;
    let frame_previous = at(table.frame_previous)?;
    let frame_executable = at(table.frame_executable)?;
    let frame_instr_ptr = at(table.frame_instr_ptr)?;
    let frame_localsplus = at(table.frame_localsplus)?;
    let frame_owner = at(table.frame_owner)?;
    within(
        "interpreter_frame",
        frame_size,
        MAX_FRAME,
        &[
            ("previous", frame_previous),
            ("executable", frame_executable),
            ("instr_ptr", frame_instr_ptr),
            // One byte is read at owner; localsplus is where locals start (may equal size-8).
            ("owner", frame_owner.saturating_sub(7)),
            ("localsplus", frame_localsplus.saturating_sub(8)),
        ],
    )?;
    let code_size = at(table.code_size)?;
    let co_filename = at(table.co_filename)?;
    let co_name = at(table.co_name)?;
    let co_qualname = at(table.co_qualname)?;
    let co_linetable = at(table.co_linetable)?;
    let co_firstlineno = at(table.co_firstlineno)?;
    let co_code_adaptive = at(table.co_code_adaptive)?;
    within(
        "code_object",
        code_size,
        MAX_CODE,
        &[
            ("filename", co_filename),
            ("name", co_name),
            ("qualname", co_qualname),
            ("linetable", co_linetable),
            ("firstlineno", co_firstlineno),
            // The inline bytecode starts at the end of the fixed part.
            ("co_code_adaptive", co_code_adaptive.saturating_sub(8)),
        ],
    )?;
    let ascii_size = at(table.ascii_size)?;
    let compact_size = optional(table.compact_size)?;
    for size in std::iter::once(ascii_size).chain(compact_size) {
        if !(0x18..=0x80).contains(&size) {
            return Err(Refused::Inconsistent(format!(
                "string header size {size:#x}"
            )));
        }
    }
    let (gi_name, gi_iframe) = match table.gen_object {
        Some([size, name, iframe]) => {
            let (size, name, iframe) = (at(size)?, at(name)?, at(iframe)?);
            // The qualname (read right after the name) must fit too.
            within(
                "gen_object",
                size,
                MAX_OBJECT,
                &[("gi_qualname", name + 8), ("gi_iframe", iframe)],
            )?;
            (Some(name), Some(iframe))
        }
        None => (None, None),
    };
    let set = match table.set_object {
        Some([size, used, table_field, mask]) => {
            let set = SetOffsets {
                used: at(used)?,
                table: at(table_field)?,
                mask: at(mask)?,
            };
            within(
                "set_object",
                at(size)?,
                MAX_OBJECT,
                &[("used", set.used), ("table", set.table), ("mask", set.mask)],
            )?;
            Some(set)
        }
        None => None,
    };
    Ok(DebugOffsets {
        version,
        free_threaded,
        table: table.name,
        runtime_size,
        interpreters_head,
        threads_head,
        ceval_gil,
        tstate_next,
        current_frame,
        native_thread_id,
        frame_previous,
        frame_executable,
        frame_instr_ptr,
        frame_localsplus,
        frame_owner,
        co_filename,
        co_name,
        co_qualname,
        co_linetable,
        co_firstlineno,
        co_code_adaptive,
        ascii_size,
        compact_size,
        gi_name,
        gi_iframe,
        set,
    })
}

/// asyncio's offsets (3.14+): where a Task keeps its name, coroutine and awaiters, and where a
/// thread state keeps the running Task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AsyncioOffsets {
    pub task_name: u64,
    pub task_awaited_by: u64,
    pub task_is_task: u64,
    pub task_awaited_by_is_set: u64,
    pub task_coro: u64,
    /// In the thread state (`_PyThreadStateImpl`).
    pub running_task: u64,
}

/// Size of the AsyncioDebug table in 3.14 and 3.15.
const ASYNCIO_TABLE: usize = 0x68;

/// Parses the `.AsyncioDebug` section (the same shape in 3.14 and 3.15: task object, interpreter
/// state, thread state parts).
pub fn parse_asyncio(bytes: &[u8]) -> Result<AsyncioOffsets, Refused> {
    if bytes.len() < ASYNCIO_TABLE {
        return Err(Refused::Short);
    }
    let at = |position: usize| word(bytes, position);
    let task_size = at(0)?;
    let offsets = AsyncioOffsets {
        task_name: at(8)?,
        task_awaited_by: at(16)?,
        task_is_task: at(24)?,
        task_awaited_by_is_set: at(32)?,
        task_coro: at(40)?,
        running_task: at(88)?,
    };
    let tstate_size = at(72)?;
    let pointers = [
        ("task_name", offsets.task_name, task_size),
        ("task_awaited_by", offsets.task_awaited_by, task_size),
        ("task_coro", offsets.task_coro, task_size),
        ("asyncio_running_task", offsets.running_task, tstate_size),
    ];
    let bytes_ = [
        ("task_is_task", offsets.task_is_task, task_size),
        (
            "task_awaited_by_is_set",
            offsets.task_awaited_by_is_set,
            task_size,
        ),
    ];
    if task_size == 0 || task_size > MAX_OBJECT || tstate_size == 0 || tstate_size > MAX_TSTATE {
        return Err(Refused::Inconsistent(format!(
            "AsyncioDebug sizes {task_size:#x}, {tstate_size:#x}"
        )));
    }
    for (name, offset, size) in pointers {
        if offset.checked_add(8).is_none_or(|end| end > size) {
            return Err(Refused::Inconsistent(format!(
                "AsyncioDebug {name} at {offset:#x}"
            )));
        }
    }
    for (name, offset, size) in bytes_ {
        if offset >= size {
            return Err(Refused::Inconsistent(format!(
                "AsyncioDebug {name} at {offset:#x}"
            )));
        }
    }
    Ok(offsets)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table of shape `positions` with `values` at those positions.
    fn table(version: u64, total: usize, values: &[(usize, u64)]) -> Vec<u8> {
        let mut bytes = vec![0u8; total];
        bytes[..8].copy_from_slice(b"xdebugpy");
        bytes[8..16].copy_from_slice(&version.to_le_bytes());
        for &(at, value) in values {
            bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
        }
        bytes
    }

    /// The values Debian's python3.14 3.14.10 carries (read from its .PyRuntime section).
    fn debian_314() -> Vec<u8> {
        let t = &TABLE_314;
        table(
            0x030e_0af0,
            t.total,
            &[
                (t.runtime_size, 0x4d4c8),
                (t.interpreters_head, 0x328),
                (t.interp_size, 0x37248),
                (t.threads_head, 0x1cb0),
                (t.ceval_gil, 0x10),
                (t.tstate_size, 0x340),
                (t.tstate_next, 0x8),
                (t.current_frame, 0x48),
                (t.native_thread_id, 0xa0),
                (t.frame_size, 0x58),
                (t.frame_previous, 0x8),
                (t.frame_executable, 0x0),
                (t.frame_instr_ptr, 0x38),
                (t.frame_localsplus, 0x50),
                (t.frame_owner, 0x4a),
                (t.code_size, 0xd8),
                (t.co_filename, 0x70),
                (t.co_name, 0x78),
                (t.co_qualname, 0x80),
                (t.co_linetable, 0x88),
                (t.co_firstlineno, 0x44),
                (t.co_code_adaptive, 0xd0),
                (t.ascii_size, 0x28),
                (664, 0xa0),
                (672, 0x18),
                (680, 0x48),
                (496, 0xc8),
                (504, 0x18),
                (512, 0x28),
                (520, 0x20),
            ],
        )
    }

    #[test]
    fn debian_314_table_is_read() {
        let offsets = parse(&debian_314()).expect("3.14 table");
        assert_eq!(offsets.table, "3.14");
        assert_eq!(version_text(offsets.version), "3.14.10");
        assert_eq!(offsets.frame_owner, 0x4a);
        assert_eq!(offsets.co_code_adaptive, 0xd0);
        assert_eq!(offsets.native_thread_id, 0xa0);
        assert_eq!(offsets.gi_iframe, Some(0x48));
        assert!(!offsets.free_threaded);
    }

    #[test]
    fn unknown_versions_and_bad_offsets_are_refused() {
        let mut bytes = debian_314();
        // 3.16: a table shape not known.
        bytes[8..16].copy_from_slice(&0x0310_00f0u64.to_le_bytes());
        assert_eq!(parse(&bytes), Err(Refused::UnknownVersion(0x0310_00f0)));
        assert!(
            Refused::UnknownVersion(0x0310_00f0)
                .to_string()
                .contains("CPython 3.16.0")
        );
        // A 3.14 beta: its table shape differed.
        bytes[8..16].copy_from_slice(&0x030e_00b3u64.to_le_bytes());
        assert!(matches!(parse(&bytes), Err(Refused::UnknownVersion(_))));
        // The owner byte outside the frame.
        let mut bytes = debian_314();
        bytes[TABLE_314.frame_owner..TABLE_314.frame_owner + 8]
            .copy_from_slice(&0x58u64.to_le_bytes());
        assert!(matches!(parse(&bytes), Err(Refused::Inconsistent(_))));
        // Cut short, and no cookie.
        assert_eq!(parse(&debian_314()[..100]), Err(Refused::Short));
        assert_eq!(parse(&[0u8; 1024]), Err(Refused::NoCookie));
    }

    #[test]
    fn versions_read_as_people_write_them() {
        assert_eq!(version_text(0x030f_02f0), "3.15.2");
        assert_eq!(version_text(0x030f_00b4), "3.15.0b4");
        assert_eq!(version_text(0x030e_00c1), "3.14.0rc1");
    }

    #[test]
    fn asyncio_table_of_315() {
        let mut bytes = vec![0u8; ASYNCIO_TABLE];
        for (at, value) in [
            (0, 168u64),
            (8, 136),
            (16, 96),
            (24, 108),
            (32, 109),
            (40, 128),
            (48, 152),
            (56, 226256),
            (64, 10864),
            (72, 1104),
            (80, 1024),
            (88, 1032),
            (96, 1048),
        ] {
            bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
        }
        let offsets = parse_asyncio(&bytes).expect("asyncio table");
        assert_eq!(offsets.task_name, 136);
        assert_eq!(offsets.task_coro, 128);
        assert_eq!(offsets.running_task, 1032);
        bytes[88..96].copy_from_slice(&1100u64.to_le_bytes());
        assert!(parse_asyncio(&bytes).is_err());
        assert_eq!(parse_asyncio(&bytes[..0x40]), Err(Refused::Short));
    }
}
