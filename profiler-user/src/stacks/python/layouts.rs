//! The per-version layouts of CPython 3.9 to 3.13 (PYTHON_LAYOUTS.md sections 1 to 4 and 6),
//! one table of named fields per minor version: what the kernel side walks (runtime →
//! interpreter → thread states → frames) and what the agent decodes (code objects, strings).
//! 3.13 and later are then corrected from the interpreter's own `_Py_DebugOffsets` (see
//! [`super::offsets`]); 3.14 and 3.15 start from the 3.13 table for what those lack.

use profiler_common::PyProcess;

use super::{ABSENT, CodeLayout, Layout};

/// One minor version's layout, as written in PYTHON_LAYOUTS.md.
struct VersionLayout {
    /// The kernel side's walk; `runtime` and `gil_static` are set per process.
    kernel: PyProcess,
    /// Offset of the static GIL in `_PyRuntime` (3.9 to 3.11).
    gil_in_runtime: Option<u64>,
    code: CodeLayout,
    /// Where a coroutine's frame sits in the coroutine object (`cr_iframe`, 3.11+).
    gi_iframe: u64,
}

/// What every version's walk has in common: the fields set per process, or from the debug
/// offsets of 3.14+, and `tstate->next` (0x8 in every version).
const WALK: PyProcess = PyProcess {
    runtime: 0,
    gil_static: 0,
    interp_head: ABSENT,
    threads_head: ABSENT,
    gil_in_interp: ABSENT,
    tstate_next: 0x8,
    tstate_thread_id: ABSENT,
    thread_id_is_pthread: 0,
    tstate_frame: ABSENT,
    cframe_frame: ABSENT,
    frame_back: ABSENT,
    frame_code: ABSENT,
    frame_ip: ABSENT,
    ip_is_pointer: 0,
    frame_owner: ABSENT,
    frame_is_entry: ABSENT,
    handle_run_code: 0,
    frame_locals: ABSENT,
    tstate_running_task: ABSENT,
    code_mask: u64::MAX,
};

/// 3.9 and 3.10 code objects: no qualified name, no inline bytecode; strings with `wstr`.
const CODE_39: CodeLayout = CodeLayout {
    flags: 0x24,
    first_line: 0x28,
    filename: 0x68,
    name: 0x70,
    qualname: None,
    linetable: 0x78,
    code_adaptive: None,
    ascii_data: 0x30,
    compact_data: 0x48,
};

/// 3.9: `PyFrameObject`s, `f_lasti` in bytes; the thread named by `pthread_self`.
const V39: VersionLayout = VersionLayout {
    kernel: PyProcess {
        interp_head: 0x20,
        threads_head: 0x8,
        tstate_thread_id: 0xb0,
        thread_id_is_pthread: 1,
        tstate_frame: 0x18,
        frame_back: 0x18,
        frame_code: 0x20,
        frame_ip: 0x68,
        frame_locals: 0x168,
        ..WALK
    },
    gil_in_runtime: Some(0x160),
    code: CODE_39,
    gi_iframe: 0x48,
};

/// 3.10: as 3.9, `f_lasti` in code units and the frame's fields 8 bytes earlier.
const V310: VersionLayout = VersionLayout {
    kernel: PyProcess {
        frame_ip: 0x60,
        frame_locals: 0x160,
        ..V39.kernel
    },
    ..V39
};

/// 3.11: `_PyInterpreterFrame`s through `cframe`, `is_entry` marks the loop's entries.
const V311: VersionLayout = VersionLayout {
    kernel: PyProcess {
        interp_head: 0x28,
        threads_head: 0x10,
        tstate_thread_id: 0xa0,
        tstate_frame: 0x38,
        cframe_frame: 0x8,
        frame_back: 0x30,
        frame_code: 0x20,
        frame_ip: 0x38,
        ip_is_pointer: 1,
        frame_owner: 0x45,
        frame_is_entry: 0x44,
        frame_locals: 0x48,
        ..WALK
    },
    gil_in_runtime: Some(0x168),
    code: CodeLayout {
        flags: 0x30,
        first_line: 0x48,
        filename: 0x70,
        name: 0x78,
        qualname: Some(0x80),
        linetable: 0x88,
        code_adaptive: Some(0xb8),
        ..CODE_39
    },
    gi_iframe: 0x50,
};

/// 3.12: the GIL hangs off the interpreter, shim frames (owner 3), strings without `wstr`.
const V312: VersionLayout = VersionLayout {
    kernel: PyProcess {
        interp_head: 0x28,
        threads_head: 0x48,
        gil_in_interp: 0x180,
        tstate_thread_id: 0x90,
        tstate_frame: 0x38,
        cframe_frame: 0x0,
        frame_back: 0x8,
        frame_code: 0x0,
        frame_ip: 0x38,
        ip_is_pointer: 1,
        frame_owner: 0x46,
        frame_locals: 0x48,
        ..WALK
    },
    gil_in_runtime: None,
    code: CodeLayout {
        first_line: 0x44,
        code_adaptive: Some(0xc0),
        ascii_data: 0x28,
        compact_data: 0x38,
        ..V311.code
    },
    gi_iframe: 0x48,
};

/// 3.13: `_PyRuntime` starts with `_Py_DebugOffsets`, `cframe` is gone.
const V313: VersionLayout = VersionLayout {
    kernel: PyProcess {
        interp_head: 0x278,
        threads_head: 0x1cb0,
        gil_in_interp: 0x10,
        tstate_thread_id: 0xa0,
        tstate_frame: 0x48,
        cframe_frame: ABSENT,
        ..V312.kernel
    },
    code: CodeLayout {
        code_adaptive: Some(0xc8),
        ..V312.code
    },
    ..V312
};

/// The layout of CPython 3.`minor` (3.9 to 3.13), None for any other.
pub fn layout(minor: u32) -> Option<Layout> {
    let table = match minor {
        9 => &V39,
        10 => &V310,
        11 => &V311,
        12 => &V312,
        13 => &V313,
        _ => return None,
    };
    Some(Layout {
        minor,
        kernel: table.kernel,
        gil_in_runtime: table.gil_in_runtime,
        code: table.code,
        gi_iframe: table.gi_iframe,
        gi_qualname: None,
        set: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each version's walk as PYTHON_LAYOUTS.md section 8 spells it out (top frame, thread
    /// match, frame links), and its code object fields (section 3): the tables say the same.
    #[test]
    fn each_version_walks_as_the_layouts_document_says() {
        // (minor, interp head, threads head, top frame in tstate, cframe's frame, previous,
        //  code, owner, thread id, pthread?)
        let walks = [
            (9, 0x20, 0x8, 0x18, ABSENT, 0x18, 0x20, ABSENT, 0xb0, 1),
            (10, 0x20, 0x8, 0x18, ABSENT, 0x18, 0x20, ABSENT, 0xb0, 1),
            (11, 0x28, 0x10, 0x38, 0x8, 0x30, 0x20, 0x45, 0xa0, 0),
            (12, 0x28, 0x48, 0x38, 0x0, 0x8, 0x0, 0x46, 0x90, 0),
            (13, 0x278, 0x1cb0, 0x48, ABSENT, 0x8, 0x0, 0x46, 0xa0, 0),
        ];
        for (minor, head, threads, top, cframe, back, code, owner, tid, pthread) in walks {
            let k = layout(minor).expect("a layout").kernel;
            let got = (
                k.interp_head,
                k.threads_head,
                k.tstate_frame,
                k.cframe_frame,
                k.frame_back,
                k.frame_code,
                k.frame_owner,
                k.tstate_thread_id,
                k.thread_id_is_pthread,
            );
            let want = (head, threads, top, cframe, back, code, owner, tid, pthread);
            assert_eq!(got, want, "3.{minor}");
        }
        // f_lasti: bytes in 3.9, code units in 3.10, an instruction pointer from 3.11.
        let ip = |minor| layout(minor).map(|l| (l.kernel.frame_ip, l.kernel.ip_is_pointer));
        assert_eq!(ip(9), Some((0x68, 0)));
        assert_eq!(ip(10), Some((0x60, 0)));
        assert_eq!(ip(11), Some((0x38, 1)));
        // Only 3.11 marks entries with is_entry; the GIL is static up to 3.11.
        for minor in 9..=13 {
            let l = layout(minor).expect("a layout");
            assert_eq!(l.kernel.frame_is_entry != ABSENT, minor == 11, "3.{minor}");
            assert_eq!(l.gil_in_runtime.is_some(), minor <= 11, "3.{minor}");
            assert_eq!(l.kernel.gil_in_interp != ABSENT, minor >= 12, "3.{minor}");
        }
    }

    #[test]
    fn each_version_decodes_code_objects_as_the_layouts_document_says() {
        // (minor, co_firstlineno, co_filename, co_name, co_qualname, line table,
        //  co_code_adaptive, sizeof(PyASCIIObject))
        let codes = [
            (9, 0x28, 0x68, 0x70, None, 0x78, None, 0x30),
            (10, 0x28, 0x68, 0x70, None, 0x78, None, 0x30),
            (11, 0x48, 0x70, 0x78, Some(0x80), 0x88, Some(0xb8), 0x30),
            (12, 0x44, 0x70, 0x78, Some(0x80), 0x88, Some(0xc0), 0x28),
            (13, 0x44, 0x70, 0x78, Some(0x80), 0x88, Some(0xc8), 0x28),
        ];
        for (minor, first, file, name, qualname, table, adaptive, ascii) in codes {
            let c = layout(minor).expect("a layout").code;
            let got = (
                c.first_line,
                c.filename,
                c.name,
                c.qualname,
                c.linetable,
                c.code_adaptive,
                c.ascii_data,
            );
            assert_eq!(
                got,
                (first, file, name, qualname, table, adaptive, ascii),
                "3.{minor}"
            );
            // The compact (non-ASCII) header is 0x18 bytes longer in 3.9-3.11, 0x10 later.
            assert_eq!(
                c.compact_data - c.ascii_data,
                if minor <= 11 { 0x18 } else { 0x10 }
            );
        }
        assert_eq!(layout(11).map(|l| l.gi_iframe), Some(0x50));
        assert_eq!(layout(13).map(|l| l.gi_iframe), Some(0x48));
    }
}
