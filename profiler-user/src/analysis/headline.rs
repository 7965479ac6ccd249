//! A stall's headline: its dominant code path, the way its own flamegraph would draw it.
//!
//! The heaviest single stack is a poor headline when a stall's time is spread over many
//! slightly different stacks (a CPU loop sampled at different lines and leaves): a short sleep
//! with one stack then outweighs it. So the stall's stacks are merged by frame from the
//! outermost in (function and file, not line: lines are what differ between samples of one
//! loop), and the path is followed down while one child holds most of the time. Where the time
//! splits between big children that spend it differently (one on-CPU, one blocked), the stall
//! is *mixed* and each is named with its share:
//! `sync_compress (app.py:22) 69 % on-CPU; sync_write_to_disk (app.py:17) 31 % blocked in
//! clock_nanosleep()`.
//!
//! Frames are read as a person reads the program ([`readable`]): for a stack with Python frames,
//! Python-first as py-spy shows it (the Python frames and the native leaf that did the work,
//! `sre_ucs1_match < validate (app.py:39)`, the interpreter's own C frames folded away; every
//! frame with `--native`, [`View`]), the user frames otherwise (the kernel's only when there is
//! nothing else), and a run of unnamed frames (addresses in a stripped module) folded into
//! `[3 frames in redis-server]`.
//! Pure: stall records in, text out.

use std::collections::HashMap;

use crate::model::{Frame, FrameKind, StackKind, StackRecord, StallRecord};

/// A branch holding at least this share of the stall is named on its own (a mixed stall).
const BRANCH_SHARE: f64 = 0.2;
/// The path goes one frame deeper while its heaviest child holds at least this share of it.
const FOLLOW_SHARE: f64 = 0.5;
/// Branches named in a mixed headline.
const MAX_BRANCHES: usize = 3;
/// Named frames shown for a single path (innermost first).
const NAMED_FRAMES: usize = 3;

/// One frame as shown: a real frame, or a folded run of unnamed ones.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shown {
    /// What merges in the tree: function and file (not the line), or the folded run's text.
    pub key: String,
    /// What is printed: with the line for frames that have one.
    pub text: String,
    pub named: bool,
    /// The frame's kind (the first frame's, for a folded run).
    pub kind: FrameKind,
    /// Its label in a graph, where frames merge by function: the line only for Python and JS frames
    /// (as in the flamegraph SVG), the run's text for a folded run.
    pub graph: String,
}

/// Whether a frame has a name: not an address in a module (`libfoo.so+0x1234`) nor an unknown
/// address.
pub fn is_named(frame: &Frame) -> bool {
    !frame.function.is_empty()
        && !frame.function.starts_with("[unknown]")
        && !frame.function.contains("+0x")
}

/// The module an unnamed frame is in, as its name says it (`redis-server+0x1628f1`: the name
/// the program was started as, see `symbolize::started_as_name`), else its file's name.
fn module_name(frame: &Frame) -> Option<&str> {
    let module = frame.module.as_deref()?;
    if let Some((shown, _)) = frame.function.split_once("+0x")
        && !shown.is_empty()
    {
        return Some(shown);
    }
    Some(module.rsplit('/').next().unwrap_or(module))
}

fn frame_text(frame: &Frame) -> String {
    match (&frame.file, crate::model::position_text(frame)) {
        (Some(file), Some(line)) => format!(
            "{} ({}:{line})",
            frame.function,
            file.rsplit('/').next().unwrap_or(file)
        ),
        _ => frame.function.to_string(),
    }
}

/// How stacks of Python processes are shown: a rendering option each output is given (see
/// [`View`]); stalls.json always has every frame.
pub use crate::config::View;

/// The interpreter's call machinery: never the native leaf that did the work, only the way
/// into it (calling a C function, running bytecode).
const DISPATCH_PREFIXES: &[&str] = &[
    "_PyEval_",
    "PyEval_",
    "_PyObject_Call",
    "PyObject_Call",
    "_PyObject_Vectorcall",
    "PyObject_Vectorcall",
    "_PyObject_MakeTpCall",
    "_PyFunction_Vectorcall",
    "_PyVectorcall",
    "PyVectorcall",
    "method_vectorcall",
    "cfunction_",
    "vectorcall",
    "slot_tp_",
    "_Py_call",
    "call_function",
    "function_code_fastcall",
];

fn is_dispatch(frame: &Frame) -> bool {
    DISPATCH_PREFIXES
        .iter()
        .any(|p| frame.function.starts_with(p))
}

/// The frames of one stack a view shows, innermost first. Python-first, for a stack with Python
/// frames: those, and (when `did_work`: an on-CPU or runqueue stack, whose leaf is where the
/// time went; a blocked stack's leaf is the wait its marker names) the innermost named native
/// frame inside the innermost Python frame, unless it is the interpreter's call machinery.
/// Every other stack, and every stack in the native view: all its frames.
pub fn view_frames(frames: &[Frame], did_work: bool, view: View) -> Vec<&Frame> {
    let Some(innermost_python) = frames.iter().position(|f| f.kind == FrameKind::Python) else {
        return frames.iter().collect();
    };
    if view == View::Native {
        return frames.iter().collect();
    }
    // The innermost user frame, when it has a name; an unnamed one (a stripped interpreter's
    // address) or the call machinery says nothing about the work, so no leaf then. Not the
    // innermost *named* frame: under a stripped interpreter that is some caller further out
    // (uvloop's `__Pyx_PyObject_Call`), not where the time went.
    let leaf = frames[..innermost_python]
        .iter()
        .find(|f| f.kind != FrameKind::Kernel)
        .filter(|f| did_work && is_named(f) && !is_dispatch(f));
    leaf.into_iter()
        .chain(frames.iter().filter(|f| f.kind == FrameKind::Python))
        .collect()
}

/// Whether a stack of this kind spent its time where its leaf is (on a CPU, or preempted there).
pub fn did_work(kind: StackKind) -> bool {
    matches!(kind, StackKind::OnCpu | StackKind::Runqueue)
}

/// The frames a person reads, innermost first, in a [`View`]: Python-first for Python stacks
/// ([`view_frames`]), else the user frames, else the kernel's; each run of two or more unnamed
/// frames folded into one.
pub fn readable(frames: &[Frame], did_work: bool, view: View) -> Vec<Shown> {
    fold(&chosen_frames(&view_frames(frames, did_work, view)))
}

/// Every frame of a view, innermost first, with runs of two or more unnamed frames folded (for
/// graphs).
pub fn folded(frames: &[Frame], did_work: bool, view: View) -> Vec<Shown> {
    fold(&view_frames(frames, did_work, view))
}

fn chosen_frames<'a>(frames: &[&'a Frame]) -> Vec<&'a Frame> {
    let user = frames.iter().any(|f| f.kind != FrameKind::Kernel);
    frames
        .iter()
        .filter(|f| !user || f.kind != FrameKind::Kernel)
        .copied()
        .collect()
}

fn fold(chosen: &[&Frame]) -> Vec<Shown> {
    let mut shown = Vec::with_capacity(chosen.len());
    let mut i = 0;
    while i < chosen.len() {
        let frame = chosen[i];
        if is_named(frame) {
            shown.push(Shown {
                key: format!(
                    "{}\u{0}{}",
                    frame.function,
                    frame.file.as_deref().unwrap_or("")
                ),
                text: frame_text(frame),
                named: true,
                kind: frame.kind,
                graph: if matches!(frame.kind, FrameKind::Python | FrameKind::Js) {
                    frame_text(frame)
                } else {
                    frame.function.to_string()
                },
            });
            i += 1;
            continue;
        }
        let run = chosen[i..].iter().take_while(|f| !is_named(f)).count();
        let text = if run == 1 {
            frame.function.to_string()
        } else {
            let module = module_name(frame);
            let same = chosen[i..i + run].iter().all(|f| module_name(f) == module);
            match module {
                Some(module) if same => format!("[{run} frames in {module}]"),
                _ => format!("[{run} unnamed frames]"),
            }
        };
        shown.push(Shown {
            key: text.clone(),
            graph: text.clone(),
            text,
            named: false,
            kind: frame.kind,
        });
        i += run;
    }
    shown
}

/// A node of the stall's merged tree.
#[derive(Default)]
struct Node {
    key: String,
    weight_ns: u64,
    /// Printed forms (lines) and their weights: the heaviest is shown.
    texts: HashMap<String, u64>,
    named: bool,
    /// Weight by kind of time: on_cpu, off_cpu, runqueue, lock.
    kinds: [u64; 4],
    /// Heaviest stack through this node, by kind (for its syscall and waker).
    heaviest: [Option<(u64, usize)>; 4],
    children: Vec<Node>,
}

fn kind_index(kind: StackKind) -> usize {
    match kind {
        StackKind::OnCpu => 0,
        StackKind::OffCpu => 1,
        StackKind::Runqueue => 2,
        StackKind::Lock => 3,
    }
}

impl Node {
    fn add(&mut self, stack: usize, kind: usize, weight_ns: u64) {
        self.weight_ns += weight_ns;
        self.kinds[kind] += weight_ns;
        if self.heaviest[kind].is_none_or(|(w, _)| weight_ns > w) {
            self.heaviest[kind] = Some((weight_ns, stack));
        }
    }

    fn child(&mut self, shown: &Shown) -> &mut Node {
        let index = match self.children.iter().position(|c| c.key == shown.key) {
            Some(index) => index,
            None => {
                self.children.push(Node {
                    key: shown.key.clone(),
                    named: shown.named,
                    ..Node::default()
                });
                self.children.len() - 1
            }
        };
        &mut self.children[index]
    }

    fn text(&self) -> &str {
        self.texts
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
            .map_or(self.key.as_str(), |(text, _)| text.as_str())
    }

    fn heaviest_child(&self) -> Option<&Node> {
        self.children.iter().max_by(|a, b| {
            a.weight_ns
                .cmp(&b.weight_ns)
                .then_with(|| b.key.cmp(&a.key))
        })
    }

    fn dominant_kind(&self) -> usize {
        (0..4)
            .max_by_key(|&k| (self.kinds[k], std::cmp::Reverse(k)))
            .unwrap_or(0)
    }
}

fn tree(stacks: &[StackRecord], view: View) -> Node {
    let mut root = Node::default();
    for (index, stack) in stacks.iter().enumerate() {
        let kind = kind_index(stack.kind);
        root.add(index, kind, stack.weight_ns);
        let mut node = &mut root;
        for shown in readable(&stack.frames, did_work(stack.kind), view)
            .iter()
            .rev()
        {
            node = node.child(shown);
            node.add(index, kind, stack.weight_ns);
            *node.texts.entry(shown.text.clone()).or_default() += stack.weight_ns;
        }
    }
    root
}

/// One code path of the headline.
#[derive(Clone, Debug, PartialEq)]
pub struct Branch {
    /// Innermost first: the path's innermost frame and its callers, up to [`NAMED_FRAMES`]
    /// named ones (folded unnamed runs in between kept).
    pub frames: Vec<String>,
    pub weight_ns: u64,
    /// Share of the stall's stack time, 0..=1.
    pub share: f64,
    /// The kind of time that dominates it: "on-CPU", "blocked in read()", "waiting for a CPU",
    /// "waiting for a lock".
    pub what: String,
    /// The cause of its heaviest stack of that kind (" [blocked in read()], woken by ...").
    pub cause: String,
    /// Whether any of `frames` is a named one (not only folded addresses).
    pub named: bool,
}

/// A stall's dominant code path, or its big branches when mixed.
#[derive(Clone, Debug, PartialEq)]
pub struct Headline {
    pub branches: Vec<Branch>,
}

impl Headline {
    pub fn is_mixed(&self) -> bool {
        self.branches.len() > 1
    }

    /// Whether some frame of it has a name.
    pub fn has_named(&self) -> bool {
        self.branches.iter().any(|b| b.named)
    }

    /// `burn_cpu (srv.c:40) < handle_request (srv.c:67) < main (srv.c:112) [waiting for a CPU]`
    /// for one path (with its share when it holds less than half of the stall);
    /// `a (x.py:22) 69 % on-CPU; b (x.py:17) 31 % blocked in clock_nanosleep()` when mixed.
    pub fn text(&self, separator: &str) -> String {
        format!("{}{}", self.place(separator), self.cause())
    }

    /// Why, for one path: the cause of its heaviest stack (empty when mixed: each branch says).
    pub fn cause(&self) -> &str {
        match self.branches.as_slice() {
            [one] => &one.cause,
            _ => "",
        }
    }

    /// Where: the path's frames (with its share when under half), or the mixed branches.
    pub fn place(&self, separator: &str) -> String {
        match self.branches.as_slice() {
            [one] => {
                let share = if one.share < 0.5 {
                    format!(" ({:.0} % of it)", one.share * 100.0)
                } else {
                    String::new()
                };
                format!("{}{share}", one.frames.join(separator))
            }
            many => many
                .iter()
                .map(|b| {
                    format!(
                        "{} {:.0} % {}",
                        b.frames.first().map_or("?", String::as_str),
                        b.share * 100.0,
                        b.what
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
        }
    }
}

/// Follows the heaviest child while it holds most of the node; returns the path's nodes,
/// outermost first.
fn follow(mut path: Vec<&Node>) -> Vec<&Node> {
    while let Some(node) = path.last().copied() {
        match node.heaviest_child() {
            Some(child) if child.weight_ns as f64 >= FOLLOW_SHARE * node.weight_ns as f64 => {
                path.push(child)
            }
            _ => break,
        }
    }
    path
}

fn branch(path: &[&Node], total_ns: u64, stacks: &[StackRecord]) -> Branch {
    let head = path.last().copied();
    let mut frames = Vec::new();
    let mut named = 0;
    for node in path.iter().rev() {
        if named == NAMED_FRAMES {
            break;
        }
        frames.push(node.text().to_string());
        if node.named {
            named += 1;
        }
    }
    let named = named > 0;
    let (weight_ns, kind, stack) = match head {
        Some(head) => {
            let kind = head.dominant_kind();
            (
                head.weight_ns,
                kind,
                head.heaviest[kind].and_then(|(_, i)| stacks.get(i)),
            )
        }
        None => (0, 0, None),
    };
    let what = match kind {
        1 => match stack.and_then(|s| s.syscall.as_deref()) {
            Some(syscall) => format!("blocked in {syscall}()"),
            None => "blocked".to_string(),
        },
        2 => "waiting for a CPU".to_string(),
        3 => "waiting for a lock".to_string(),
        _ => "on-CPU".to_string(),
    };
    Branch {
        frames,
        weight_ns,
        share: weight_ns as f64 / total_ns.max(1) as f64,
        what,
        cause: stack.map(StackRecord::cause).unwrap_or_default(),
        named,
    }
}

/// The stall's headline in a view; None when it has no frame at all.
pub fn headline(stall: &StallRecord, view: View) -> Option<Headline> {
    let root = tree(&stall.stacks, view);
    if root.children.is_empty() {
        return None;
    }
    let total = root.weight_ns;
    let mut path: Vec<&Node> = Vec::new();
    let mut node = &root;
    loop {
        let mut big: Vec<&Node> = node
            .children
            .iter()
            .filter(|c| c.weight_ns as f64 >= BRANCH_SHARE * total as f64)
            .collect();
        // Mixed: big branches that spend their time differently (one computes, one sleeps).
        // Big branches of one kind are one job seen at different leaves: follow on instead.
        let kinds: std::collections::BTreeSet<usize> =
            big.iter().map(|c| c.dominant_kind()).collect();
        if big.len() >= 2 && kinds.len() >= 2 {
            big.sort_by(|a, b| {
                b.weight_ns
                    .cmp(&a.weight_ns)
                    .then_with(|| a.key.cmp(&b.key))
            });
            let branches = big
                .into_iter()
                .take(MAX_BRANCHES)
                .map(|child| {
                    let mut start = path.clone();
                    start.push(child);
                    branch(&follow(start), total, &stall.stacks)
                })
                .collect();
            return Some(Headline { branches });
        }
        match node.heaviest_child() {
            Some(child) if child.weight_ns as f64 >= FOLLOW_SHARE * node.weight_ns as f64 => {
                path.push(child);
                node = child;
            }
            _ => break,
        }
    }
    if path.is_empty() {
        // The time is spread thin from the outermost frame on: name the heaviest outer frame.
        path = follow(vec![root.heaviest_child()?]);
    }
    Some(Headline {
        branches: vec![branch(&path, total, &stall.stacks)],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn py(function: &str, line: u32) -> Frame {
        Frame {
            column: None,
            function: function.into(),
            file: Some("/srv/mixed_workload.py".into()),
            line: Some(line),
            module: None,
            kind: FrameKind::Python,
        }
    }

    fn native(function: &str, module: &str) -> Frame {
        Frame {
            column: None,
            function: function.into(),
            file: None,
            line: None,
            module: Some(module.into()),
            kind: FrameKind::Native,
        }
    }

    fn kernel(function: &str) -> Frame {
        Frame {
            column: None,
            function: function.into(),
            file: None,
            line: None,
            module: None,
            kind: FrameKind::Kernel,
        }
    }

    fn stack(kind: &str, weight_ns: u64, syscall: Option<&str>, frames: Vec<Frame>) -> StackRecord {
        StackRecord {
            kind: serde_json::from_value(serde_json::Value::from(kind)).expect("a stack kind"),
            weight_ns,
            count: 1,
            syscall: syscall.map(str::to_string),
            frames,
            waker: None,
        }
    }

    fn stall(stacks: Vec<StackRecord>) -> StallRecord {
        StallRecord {
            comm: "python3".into(),
            on_cpu_ns: 0,
            stacks,
            ..crate::model::fixtures::stall(1, 1, 800_000_000)
        }
    }

    /// The case of issue #23: a compress loop's time spread over 23 stacks that differ in
    /// their line and C leaf (3 % each), and one 31 % sleep stack, the heaviest single stack.
    #[test]
    fn time_spread_over_near_identical_stacks_is_summed_by_frame() {
        let outer = || vec![py("cycle", 30), py("main", 40)];
        let mut stacks = Vec::new();
        for i in 0..23u32 {
            let mut frames = vec![py("sync_compress", 22 + i % 2)];
            frames.extend(outer());
            frames.insert(0, native(&format!("deflate_{i}"), "/usr/lib/libz.so.1"));
            stacks.push(stack("on_cpu", 24_000_000, None, frames));
        }
        let mut sleep = vec![py("sync_write_to_disk", 17)];
        sleep.extend(outer());
        sleep.insert(0, kernel("schedule"));
        stacks.push(stack(
            "off_cpu",
            248_000_000,
            Some("clock_nanosleep"),
            sleep,
        ));
        let stall = stall(stacks);
        assert_eq!(
            stall.dominant_stack().map(|s| s.kind.as_str()),
            Some("off_cpu"),
            "the heaviest single stack is the sleep (what the old headline named)"
        );
        let headline = headline(&stall, View::PythonFirst).expect("a headline");
        assert!(headline.is_mixed());
        assert_eq!(
            headline.text(" < "),
            "sync_compress (mixed_workload.py:22) 69 % on-CPU; \
             sync_write_to_disk (mixed_workload.py:17) 31 % blocked in clock_nanosleep()"
        );
    }

    #[test]
    fn one_dominant_path_reads_innermost_first_with_its_cause() {
        let frames = |leaf: &str| {
            vec![
                native(leaf, "/srv/epoll_server"),
                native("burn_cpu", "/srv/epoll_server"),
                native("handle_request", "/srv/epoll_server"),
                native("main", "/srv/epoll_server"),
                native("__libc_start_call_main", "/lib/libc.so.6"),
            ]
        };
        let stall = stall(vec![
            stack("on_cpu", 40, None, frames("now_ns")),
            stack("on_cpu", 35, None, frames("__GI___clock_gettime")),
            stack("runqueue", 25, None, frames("now_ns")),
        ]);
        let headline = headline(&stall, View::PythonFirst).expect("a headline");
        assert!(!headline.is_mixed());
        // now_ns holds 65 % of burn_cpu's time: the path goes on to it.
        assert_eq!(headline.text(" < "), "now_ns < burn_cpu < handle_request");
        let spread = self::stall(vec![
            stack("on_cpu", 40, None, frames("now_ns")),
            stack("on_cpu", 35, None, frames("__GI___clock_gettime")),
            stack("on_cpu", 25, None, frames("write")),
        ]);
        assert_eq!(
            headline_text(&spread),
            "burn_cpu < handle_request < main",
            "no leaf holds most of burn_cpu: the path stops there"
        );
    }

    fn headline_text(stall: &StallRecord) -> String {
        headline(stall, View::PythonFirst)
            .map(|h| h.text(" < "))
            .unwrap_or_default()
    }

    #[test]
    fn unnamed_runs_fold_and_named_frames_follow() {
        let module = "/usr/bin/redis-check-rdb";
        let frames = vec![
            native("redis-check-rdb+0x1628f1", module),
            native("redis-check-rdb+0x158274", module),
            native("redis-check-rdb+0x15754a", module),
            native("lua_pcall", module),
            native("luaCallFunction", module),
            native("evalGenericCommand", module),
            native("call", module),
        ];
        let shown = readable(&frames, true, View::PythonFirst);
        assert_eq!(shown[0].text, "[3 frames in redis-check-rdb]");
        assert!(!shown[0].named);
        let stall = stall(vec![stack("on_cpu", 100, None, frames)]);
        assert_eq!(
            headline_text(&stall),
            "[3 frames in redis-check-rdb] < lua_pcall < luaCallFunction < evalGenericCommand"
        );
    }

    #[test]
    fn a_stack_with_no_named_frame_still_reads_as_one_line() {
        let frames = vec![
            native("[unknown] 0x7f068ce962ad", "/usr/bin/bash"),
            Frame {
                module: None,
                ..native("[unknown] 0x7f068ce90000", "")
            },
            kernel("schedule"),
        ];
        let shown = readable(&frames, true, View::PythonFirst);
        assert_eq!(shown.len(), 1);
        assert_eq!(shown[0].text, "[2 unnamed frames]");
        let stall = stall(vec![stack("off_cpu", 100, Some("read"), frames)]);
        assert_eq!(
            headline_text(&stall),
            "[2 unnamed frames] [blocked in read()]"
        );
        let only_kernel = self::stall(vec![stack(
            "off_cpu",
            100,
            Some("read"),
            vec![kernel("schedule"), kernel("ksys_read")],
        )]);
        assert_eq!(
            headline_text(&only_kernel),
            "schedule < ksys_read [blocked in read()]",
            "kernel frames when there is nothing else"
        );
        assert_eq!(headline(&self::stall(vec![]), View::PythonFirst), None);
    }

    /// The regex stall of the demo, as the unwinder and the Python walk merge it: native frames
    /// inside, between and outside the Python ones.
    fn regex_stack() -> Vec<Frame> {
        let python = "/usr/bin/python3.11";
        vec![
            kernel("asm_sysvec_apic_timer_interrupt"),
            native("sre_ucs1_match", python),
            native("sre_ucs1_search", python),
            native("_sre_SRE_Pattern_search_impl", python),
            native("method_vectorcall_FASTCALL_KEYWORDS", python),
            native("PyObject_Vectorcall", python),
            py("validate", 39),
            py("handle_validate", 47),
            native("task_step_impl", "/usr/lib/python3.11/_asyncio.so"),
            native("python3.11+0x1df0b3", python),
            py("Handle._run", 84),
            native("Py_RunMain", python),
            native("main", python),
        ]
    }

    fn texts(shown: Vec<Shown>) -> Vec<String> {
        shown.into_iter().map(|s| s.text).collect()
    }

    #[test]
    fn python_first_folds_the_interpreter_away_and_keeps_the_leaf_that_worked() {
        let frames = regex_stack();
        assert_eq!(
            texts(readable(&frames, true, View::PythonFirst)),
            vec![
                "sre_ucs1_match",
                "validate (mixed_workload.py:39)",
                "handle_validate (mixed_workload.py:47)",
                "Handle._run (mixed_workload.py:84)",
            ]
        );
        let stall = stall(vec![stack("on_cpu", 100, None, frames.clone())]);
        assert_eq!(
            headline_text(&stall),
            "sre_ucs1_match < validate (mixed_workload.py:39) < handle_validate (mixed_workload.py:47)"
        );
        // --native: every user frame, the interpreter's included (the kernel's still hidden).
        let native_view = texts(readable(&frames, true, View::Native));
        assert_eq!(native_view.len(), frames.len() - 1);
        assert_eq!(
            native_view[..3],
            [
                "sre_ucs1_match",
                "sre_ucs1_search",
                "_sre_SRE_Pattern_search_impl"
            ]
        );
        assert!(native_view.contains(&"task_step_impl".to_string()));
        // The graphs (flamegraph.svg, report.html) get the same frames.
        let graph: Vec<&str> = view_frames(&frames, true, View::PythonFirst)
            .iter()
            .map(|f| &*f.function)
            .collect();
        assert_eq!(
            graph,
            [
                "sre_ucs1_match",
                "validate",
                "handle_validate",
                "Handle._run"
            ]
        );
    }

    #[test]
    fn python_first_keeps_no_leaf_for_waits_machinery_or_unnamed_code() {
        let python = "/usr/bin/python3.11";
        let mut sleep = vec![
            kernel("schedule"),
            native("__GI___clock_nanosleep", "/lib/libc.so.6"),
            native("pysleep", python),
            native("time_sleep", python),
        ];
        sleep.extend([py("handle_sleep", 56), py("serve_client", 87)]);
        // A blocked stack's leaf is the wait its marker already names.
        let stall = stall(vec![stack(
            "off_cpu",
            100,
            Some("clock_nanosleep"),
            sleep.clone(),
        )]);
        assert_eq!(
            headline_text(&stall),
            "handle_sleep (mixed_workload.py:56) < serve_client (mixed_workload.py:87) [blocked in clock_nanosleep()]"
        );
        // On a CPU in the call machinery itself: interpreter overhead, folded away.
        let dispatch = vec![
            native("_PyEval_EvalFrameDefault", python),
            native("long_add", python),
            py("hot_loop", 12),
        ];
        assert_eq!(
            texts(readable(&dispatch, true, View::PythonFirst)),
            ["hot_loop (mixed_workload.py:12)"]
        );
        // A stripped interpreter's address says nothing: Python frames only.
        let stripped = vec![
            native("python3.11+0x1df0b3", python),
            native("python3.11+0x1de000", python),
            py("validate", 39),
        ];
        assert_eq!(
            texts(readable(&stripped, true, View::PythonFirst)),
            ["validate (mixed_workload.py:39)"]
        );
        // A stripped interpreter run from uvloop: the named frame further out is the Cython
        // caller, not the work.
        let under_uvloop = vec![
            native("python3.14+0x1df0b3", python),
            native("__Pyx_PyObject_Call", "/venv/uvloop/loop.so"),
            py("validate", 39),
        ];
        assert_eq!(
            texts(readable(&under_uvloop, true, View::PythonFirst)),
            ["validate (mixed_workload.py:39)"]
        );
        assert_eq!(
            texts(readable(&stripped, true, View::Native)),
            [
                "[2 frames in python3.11]",
                "validate (mixed_workload.py:39)"
            ]
        );
        // A stack without Python frames is the same in both views.
        let c = vec![native("burn_cpu", "/srv/a"), native("main", "/srv/a")];
        assert_eq!(
            readable(&c, true, View::PythonFirst),
            readable(&c, true, View::Native)
        );
    }

    /// Debian's redis-server is a symlink to redis-check-rdb: maps name the file, the frames
    /// (and so the folded run) the name it was started as.
    #[test]
    fn unnamed_runs_are_named_as_the_program_was_started() {
        let module = "/usr/bin/redis-check-rdb";
        let frames = vec![
            native("redis-server+0x1628f1", module),
            native("redis-server+0x158274", module),
            native("lua_pcall", module),
        ];
        let shown = readable(&frames, true, View::PythonFirst);
        assert_eq!(shown[0].text, "[2 frames in redis-server]");
        assert_eq!(
            frames[0].module.as_deref(),
            Some(module),
            "the real path stays"
        );
    }

    #[test]
    fn a_single_unnamed_frame_keeps_its_address() {
        let frames = vec![
            native("libfoo.so+0x1234", "/lib/libfoo.so"),
            native("work", "/srv/app"),
        ];
        let texts: Vec<String> = readable(&frames, true, View::PythonFirst)
            .into_iter()
            .map(|s| s.text)
            .collect();
        assert_eq!(texts, vec!["libfoo.so+0x1234", "work"]);
    }
}
