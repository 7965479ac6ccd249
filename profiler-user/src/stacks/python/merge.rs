//! Where a stack's Python frames go among its native frames (both innermost first). Each run
//! of the interpreter loop (the Python frames up to an entry frame) stands in place of the
//! native frame that ran it. From 3.12 on, the kernel sends the stack address of each run's
//! entry (shim) frame, a local of the C function running the loop: the run goes in place of the
//! native frame whose stack frame holds it ([`place_runs`]). That holds in stripped builds,
//! where that function has no name (Debian's python3.14 and python3.15), and in tail-calling
//! ones. Otherwise (3.9 to 3.11, no copied stack, a shim outside the unwound stack) the runs
//! replace the native frames named as the interpreter loop, in order ([`merge`]).

use crate::model::{Frame, FrameKind};

use super::DecodedFrame;

/// The native frame each run of `python` replaces (a run ends at an entry frame; the runs in
/// order, innermost first), found by stack address: `sps` are the stack pointers the native
/// frames ran with (innermost first), so frame k's locals lie in `[sps[k], sps[k + 1])`. A run
/// left after the last entry frame (the walk was cut short) has no place and goes to the
/// bottom. None when a run cannot be placed this way (no stack pointers, no shim address, one
/// outside the unwound frames or out of order): the caller places them by name instead.
pub fn place_runs(sps: &[u64], python: &[DecodedFrame]) -> Option<Vec<usize>> {
    let sp = *sps.first()?;
    let mut places = Vec::new();
    let mut next = 0;
    for frame in python.iter().filter(|f| f.entry) {
        if frame.entry_shim_low32 == 0 {
            return None;
        }
        // The shim is above the stack pointer and within 4 GiB of it.
        let shim = sp.checked_add(u64::from(frame.entry_shim_low32.wrapping_sub(sp as u32)))?;
        let index =
            (next..sps.len().saturating_sub(1)).find(|&k| sps[k] <= shim && shim < sps[k + 1])?;
        places.push(index);
        next = index + 1;
    }
    Some(places)
}

/// The frames of a stack whose Python runs were placed by [`place_runs`], in order: the native
/// frames named as interpreter internals next to a run go (the tail-calling interpreter's
/// instruction function above it, the inlined `_PyEval_EvalFrame` wrapper below it).
pub fn merge_placed(frames: Vec<Frame>) -> Vec<Frame> {
    let internal = |f: &Frame| is_eval_frame(f) || &*f.function == "_PyEval_EvalFrame";
    let python = |f: Option<&Frame>| f.is_some_and(|f| f.kind == FrameKind::Python);
    let mut keep = vec![true; frames.len()];
    let mut start = 0;
    while start < frames.len() {
        if !internal(&frames[start]) {
            start += 1;
            continue;
        }
        let end = (start..frames.len())
            .find(|&k| !internal(&frames[k]))
            .unwrap_or(frames.len());
        let before = start.checked_sub(1).and_then(|k| frames.get(k));
        if python(before) || python(frames.get(end)) {
            keep[start..end].fill(false);
        }
        start = end;
    }
    frames
        .into_iter()
        .zip(keep)
        .filter_map(|(frame, keep)| keep.then_some(frame))
        .collect()
}

/// Names of the native functions that run Python frames: each is replaced by the Python frames
/// of one run of the interpreter loop. A build with the tail-calling interpreter (clang 19+,
/// `--with-tail-call-interp`) runs them in one `_TAIL_CALL_<INSTRUCTION>` function per
/// instruction, jumping from one to the next: the one on the stack stands for its run.
pub(super) fn is_eval_frame(frame: &Frame) -> bool {
    frame.kind == FrameKind::Native
        && (frame.function.starts_with("_PyEval_EvalFrameDefault")
            || &*frame.function == "PyEval_EvalFrameEx"
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
        } else if !(replaced && &*frame.function == "_PyEval_EvalFrame") {
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
            column: None,
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
                column: None,
                function: name.into(),
                file: Some("app.py".into()),
                line: Some(1),
                module: None,
                kind: FrameKind::Python,
            },
            entry,
            coroutine: false,
            entry_shim_low32: 0,
        }
    }

    fn names(frames: &[Frame]) -> Vec<&str> {
        frames.iter().map(|f| &*f.function).collect()
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

    fn entry_at(name: &str, shim: u64) -> DecodedFrame {
        DecodedFrame {
            entry_shim_low32: shim as u32,
            ..py(name, true)
        }
    }

    /// Debian's stripped python3.14 as recorded: no native frame is named as the loop, yet each
    /// run goes where its entry frame lies on the stack (the loop's frame, 0x7fff_1200..).
    #[test]
    fn runs_go_where_their_entry_frames_lie_on_the_stack() {
        let native = [
            native("sre_match"),
            native("python3.14+0x29ad5d"),
            native("python3.14+0x523d4"),
            native("python3.14+0x3d8bba"),
            native("_asyncio+0xa7d8"),
            native("python3.14+0x4b204"),
            native("PyEval_EvalCode"),
            native("_start"),
        ];
        let sps = [
            0x7fff_1000,
            0x7fff_1040,
            0x7fff_1100,
            0x7fff_1400,
            0x7fff_1480,
            0x7fff_1500,
            0x7fff_1900,
            0x7fff_1a00,
        ];
        let python = [
            py("validate", false),
            py("handle_validate", false),
            entry_at("serve_client", 0x7fff_1230),
            py("Handle._run", false),
            entry_at("<module>", 0x7fff_1640),
        ];
        let places = place_runs(&sps, &python).expect("placed");
        // The loop's frames (one function, stripped: no name says so).
        let replaced: Vec<&str> = places.iter().map(|&k| &*native[k].function).collect();
        assert_eq!(replaced, ["python3.14+0x523d4", "python3.14+0x4b204"]);
        // Outside every frame but the root's, out of order, unknown: not placed.
        assert_eq!(place_runs(&sps, &[entry_at("f", 0x7fff_1a10)]), None);
        assert_eq!(place_runs(&sps, &[entry_at("f", 0x7fff_0f00)]), None);
        assert_eq!(
            place_runs(
                &sps,
                &[entry_at("a", 0x7fff_1640), entry_at("b", 0x7fff_1230)]
            ),
            None
        );
        assert_eq!(place_runs(&sps, &[py("a", true)]), None);
        assert_eq!(place_runs(&[], &python), None);
        // The address is rebuilt from its low 32 bits across a 4 GiB boundary.
        let high = [0x1_ffff_fff0, 0x2_0000_0100, 0x2_0000_0200];
        assert_eq!(
            place_runs(&high, &[entry_at("f", 0x2_0000_0010)]),
            Some(vec![0])
        );
    }

    #[test]
    fn interpreter_internals_next_to_a_placed_run_go() {
        let frames = vec![
            native("sre_match"),
            native("_TAIL_CALL_CALL_BUILTIN_FAST"),
            py("validate", false).frame,
            native("_PyEval_EvalFrame"),
            native("task_step"),
            native("_PyEval_EvalFrameDefault"),
            native("main"),
        ];
        assert_eq!(
            names(&merge_placed(frames)),
            [
                "sre_match",
                "validate",
                "task_step",
                "_PyEval_EvalFrameDefault",
                "main"
            ]
        );
    }
}
