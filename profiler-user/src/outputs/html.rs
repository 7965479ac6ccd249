//! `report.html`: the whole recording as one self-contained page a person opens from disk, with
//! no network: the header (target, duration, threshold, verdict, losses), the threads' timelines,
//! a sortable table of stalls and, for the selected stall, its own icicle graph with the
//! on-CPU / blocked / runqueue / lock split, the syscalls, wakers or lock holders and the task.
//!
//! What this module owns: turning a [`Recording`] into the page's data (plain JSON with short
//! keys) and the page itself. The drawing is done in the browser by d3 and d3-flame-graph
//! (vendored from npm at build time by `build.rs`, inlined here) and a small script of ours
//! (`html/report.js`) that only wires them to the data.
//!
//! Invariants:
//! - everything from the target (function, thread and file names, paths) reaches the page only
//!   as JSON inside `<script type="application/json">`, with `<`, `>`, `&`, U+2028 and U+2029
//!   escaped ([`script_json`]), and the script writes it with `textContent` / d3's `.text()`,
//!   never as markup;
//! - the size is bounded whatever the recording's length ([`PAGE_LIMITS`]): the longest stalls get
//!   a full icicle, the next ones a table row, and the page says how many were left out.

use std::collections::HashMap;

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::{
    analysis::headline::{self, View},
    model::{FrameKind, Recording, SpanKind, StackKind, StackRecord, StallRecord},
    units::format_duration,
};

/// How much of a recording the page carries, with the reason for each limit.
pub struct PageLimits {
    /// Stalls with a full icicle (the longest ones): a person looks at the worst few, and each
    /// tree costs up to `nodes_per_stall` nodes of JSON.
    pub stalls_with_stacks: usize,
    /// Rows of the stall table: more than a person scrolls through; stalls.json has them all.
    pub table_rows: usize,
    /// Nodes of one stall's tree; the lightest stacks past it are summed into one node.
    pub nodes_per_stall: usize,
    /// Off-CPU and runqueue spans on the timelines (the longest kept), ~30 bytes each.
    pub spans: usize,
    /// Loop threads whose iterations are drawn (the timeline shows at most 40 rows); each
    /// carries at most 1,024 marks (`analysis::iterations`), so ~40,000 marks (~1.2 MB).
    pub iteration_threads: usize,
    /// Characters of one frame or thread name: a hostile or generated name cannot bloat the page.
    pub name_chars: usize,
}

/// At most ~100 × 2,000 nodes (~6 MB) + 5,000 rows (~1.5 MB) + 20,000 spans (~0.6 MB), plus
/// the ~300 KB of d3: a page a browser opens at once even for an hour of recording.
pub const PAGE_LIMITS: PageLimits = PageLimits {
    stalls_with_stacks: 100,
    table_rows: 5_000,
    nodes_per_stall: 2_000,
    spans: 20_000,
    iteration_threads: 40,
    name_chars: 300,
};

const D3_JS: &str = include_str!(concat!(env!("OUT_DIR"), "/d3.min.js"));
const FLAMEGRAPH_JS: &str = include_str!(concat!(env!("OUT_DIR"), "/d3-flamegraph.min.js"));
const APP_JS: &str = include_str!("html/report.js");
const APP_CSS: &str = include_str!("html/report.css");

/// The page's data; short keys on the many small items keep long recordings small.
#[derive(Serialize)]
struct Page {
    title: String,
    processes: Vec<ProcessView>,
    recorded_ns: u64,
    threshold_ns: u64,
    passed: bool,
    budgets: Vec<BudgetView>,
    lost_events: u64,
    stacks_lost: u64,
    spans_dropped: u64,
    stalls_total: usize,
    stalls_in_table: usize,
    stalls_with_stacks: usize,
    hints: Vec<String>,
    threads: Vec<ThreadView>,
    /// [thread index, kind ("b" blocked, "r" runqueue), start µs, duration µs].
    spans: Vec<(usize, &'static str, u64, u64)>,
    stalls: Vec<StallView>,
}

#[derive(Serialize)]
struct ProcessView {
    pid: u32,
    comm: String,
    exe: String,
}

#[derive(Serialize)]
struct BudgetView {
    budget: String,
    text: String,
    passed: bool,
}

#[derive(Serialize)]
struct ThreadView {
    pid: u32,
    tid: u32,
    comm: String,
    #[serde(rename = "loop")]
    is_loop: bool,
    iterations: u64,
    /// Iteration marks: [start µs, duration µs, iterations, busy µs, longest µs] from the
    /// recording's start; one iteration each unless the thread had many.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    it: Vec<IterationMark>,
}

/// [start µs, duration µs, iterations, busy µs, longest µs].
type IterationMark = (u64, u64, u64, u64, u64);

#[derive(Serialize)]
struct StallView {
    id: usize,
    /// Index into `threads`.
    thread: usize,
    pid: u32,
    tid: u32,
    comm: String,
    /// From the recording's start, µs (clamped at 0 for a stall that began before it).
    start_us: u64,
    duration_ns: u64,
    on_cpu_ns: u64,
    blocked_ns: u64,
    runqueue_ns: u64,
    lock_ns: u64,
    headline: String,
    task: Option<String>,
    caveat: &'static str,
    causes: Vec<CauseView>,
    /// None past `stalls_with_stacks`.
    tree: Option<Node>,
}

/// Where the stall waited: one line per (kind, syscall, waker), heaviest first.
#[derive(Serialize)]
struct CauseView {
    kind: &'static str,
    ns: u64,
    syscall: Option<String>,
    /// The waker, or for a lock the thread that released it.
    by: Option<String>,
}

/// A frame of an icicle graph: name, inclusive weight in ns, kind (`p`ython, `n`ative,
/// `k`ernel, `j`it, or the time-kind markers `on`, `b`locked, `r`unqueue, `l`ock), children.
#[derive(Serialize, Default)]
struct Node {
    n: String,
    v: u64,
    k: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    c: Vec<Node>,
}

impl Node {
    fn child(&mut self, name: &str, kind: &'static str) -> &mut Node {
        let index = match self.c.iter().position(|c| c.n == name && c.k == kind) {
            Some(index) => index,
            None => {
                self.c.push(Node {
                    n: name.to_string(),
                    k: kind,
                    ..Node::default()
                });
                self.c.len() - 1
            }
        };
        &mut self.c[index]
    }

    fn sort(&mut self) {
        self.c
            .sort_by(|a, b| b.v.cmp(&a.v).then_with(|| a.n.cmp(&b.n)));
        self.c.iter_mut().for_each(Node::sort);
    }
}

fn clip(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

fn frame_kind_code(kind: FrameKind) -> &'static str {
    match kind {
        FrameKind::Python => "p",
        FrameKind::Native => "n",
        FrameKind::Kernel => "k",
        // JavaScript read from V8's heap is drawn as JIT code (the page knows no other kind).
        FrameKind::Jit | FrameKind::Js => "j",
    }
}

/// The leaf that says what kind of time a stack is, with the syscall and who ended the wait.
fn marker(stack: &StackRecord) -> (String, &'static str) {
    let by = stack.waker.as_ref().map(|w| w.describe());
    let (text, kind) = match stack.kind {
        StackKind::OffCpu => (
            match &stack.syscall {
                Some(s) => format!("[blocked in {s}()]"),
                None => "[blocked]".to_string(),
            },
            "b",
        ),
        StackKind::Runqueue => ("[waiting for a CPU]".to_string(), "r"),
        StackKind::Lock => ("[waiting for a lock]".to_string(), "l"),
        StackKind::OnCpu => return (String::new(), "on"),
    };
    let text = match by {
        Some(by) if kind == "l" => format!("{text} released by {by}"),
        Some(by) => format!("{text} woken by {by}"),
        None => text,
    };
    (clip(&text, PAGE_LIMITS.name_chars), kind)
}

/// The stall's stacks merged by frame from the outermost in, as its own flamegraph: the
/// heaviest stacks first until the node budget is spent, the rest summed into one node.
fn stall_tree(stall: &StallRecord, view: View) -> Node {
    let mut root = Node {
        n: format!("stall {}", format_duration(stall.duration_ns)),
        k: "on",
        ..Node::default()
    };
    let mut stacks: Vec<&StackRecord> = stall.stacks.iter().collect();
    stacks.sort_by_key(|s| std::cmp::Reverse(s.weight_ns));
    let mut nodes = 1;
    let mut rest = (0usize, 0u64);
    for stack in stacks {
        let depth = stack.frames.len() + 1;
        if nodes + depth > PAGE_LIMITS.nodes_per_stall {
            rest.0 += 1;
            rest.1 += stack.weight_ns;
            continue;
        }
        nodes += depth;
        root.v += stack.weight_ns;
        let mut node = &mut root;
        // Runs of unnamed frames (a stripped module's addresses) fold into one, as everywhere.
        let did_work = headline::did_work(stack.kind);
        for shown in headline::folded(&stack.frames, did_work, view).iter().rev() {
            let name = clip(&shown.graph, PAGE_LIMITS.name_chars);
            node = node.child(&name, frame_kind_code(shown.kind));
            node.v += stack.weight_ns;
        }
        let (text, kind) = marker(stack);
        if !text.is_empty() {
            node.child(&text, kind).v += stack.weight_ns;
        }
    }
    if rest.0 > 0 {
        root.v += rest.1;
        root.child(
            &format!("[{} lighter stacks not drawn: see stalls.json]", rest.0),
            "on",
        )
        .v += rest.1;
    }
    root.sort();
    root
}

fn causes(stall: &StallRecord) -> Vec<CauseView> {
    let mut causes: Vec<CauseView> = Vec::new();
    for stack in &stall.stacks {
        let kind = match stack.kind {
            StackKind::OffCpu => "blocked",
            StackKind::Runqueue => "runqueue",
            StackKind::Lock => "lock",
            StackKind::OnCpu => continue,
        };
        let by = stack
            .waker
            .as_ref()
            .map(|w| clip(&w.describe(), PAGE_LIMITS.name_chars));
        match causes
            .iter_mut()
            .find(|c| c.kind == kind && c.syscall == stack.syscall && c.by == by)
        {
            Some(cause) => cause.ns += stack.weight_ns,
            None => causes.push(CauseView {
                kind,
                ns: stack.weight_ns,
                syscall: stack.syscall.clone(),
                by,
            }),
        }
    }
    causes.sort_by_key(|c| std::cmp::Reverse(c.ns));
    causes.truncate(8);
    causes
}

/// The table's "where": the stall's dominant code path, as the live line says it.
fn headline(stall: &StallRecord, view: View) -> String {
    let text = headline::headline(stall, view)
        .map(|h| h.text(" < "))
        .unwrap_or_else(|| format!("(no frames: {})", stall.no_frames_why()));
    clip(&text, 4 * PAGE_LIMITS.name_chars)
}

/// The iteration marks of the first loop threads (by pid, tid, as the timeline's rows).
fn iteration_marks(recording: &Recording) -> HashMap<(u32, u32), Vec<IterationMark>> {
    let rel_us = |ns: u64| ns.saturating_sub(recording.start_ns) / 1000;
    let mut loops: Vec<_> = recording
        .threads
        .iter()
        .filter(|t| t.is_loop && !t.iteration_marks.is_empty())
        .collect();
    loops.sort_by_key(|t| (t.pid, t.tid));
    loops
        .into_iter()
        .take(PAGE_LIMITS.iteration_threads)
        .map(|t| {
            let marks = t
                .iteration_marks
                .iter()
                .take(2 * crate::analysis::iterations::MAX_BUCKETS)
                .map(|b| {
                    let start = rel_us(b.start_ns);
                    (
                        start,
                        rel_us(b.end_ns).saturating_sub(start),
                        b.count,
                        b.busy_ns / 1000,
                        b.longest_ns / 1000,
                    )
                })
                .collect();
            ((t.pid, t.tid), marks)
        })
        .collect()
}

fn page(recording: &Recording, view: View) -> Page {
    let mut marks = iteration_marks(recording);
    let mut threads: Vec<ThreadView> = recording
        .threads
        .iter()
        .map(|t| ThreadView {
            pid: t.pid,
            tid: t.tid,
            comm: clip(&t.comm, PAGE_LIMITS.name_chars),
            is_loop: t.is_loop,
            iterations: t.iterations,
            it: marks.remove(&(t.pid, t.tid)).unwrap_or_default(),
        })
        .collect();
    let mut thread_index: HashMap<(u32, u32), usize> = threads
        .iter()
        .enumerate()
        .map(|(i, t)| ((t.pid, t.tid), i))
        .collect();
    let mut index_of = |pid: u32, tid: u32, comm: &str, threads: &mut Vec<ThreadView>| {
        *thread_index.entry((pid, tid)).or_insert_with(|| {
            threads.push(ThreadView {
                pid,
                tid,
                comm: clip(comm, PAGE_LIMITS.name_chars),
                is_loop: false,
                iterations: 0,
                it: Vec::new(),
            });
            threads.len() - 1
        })
    };
    let rel_us = |ns: u64| ns.saturating_sub(recording.start_ns) / 1000;

    // The longest stalls get the rows and the trees; the table sorts them again in the page.
    let mut order: Vec<usize> = (0..recording.stalls.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(recording.stalls[i].duration_ns));
    order.truncate(PAGE_LIMITS.table_rows);
    let mut stalls = Vec::with_capacity(order.len());
    for (rank, &i) in order.iter().enumerate() {
        let stall = &recording.stalls[i];
        let lock_ns: u64 = stall
            .stacks
            .iter()
            .filter(|s| s.kind == StackKind::Lock)
            .map(|s| s.weight_ns)
            .sum();
        stalls.push(StallView {
            id: i,
            thread: index_of(stall.pid, stall.tid, &stall.comm, &mut threads),
            pid: stall.pid,
            tid: stall.tid,
            comm: clip(&stall.comm, PAGE_LIMITS.name_chars),
            start_us: rel_us(stall.start_ns),
            duration_ns: stall.duration_ns,
            on_cpu_ns: stall.on_cpu_ns,
            blocked_ns: stall.off_cpu_ns.saturating_sub(lock_ns),
            runqueue_ns: stall.runqueue_ns,
            lock_ns,
            headline: headline(stall, view),
            task: stall.task.as_ref().map(|t| {
                clip(
                    &format!(
                        "{} (coroutine {})",
                        t.name.as_deref().unwrap_or("?"),
                        t.coroutine
                    ),
                    PAGE_LIMITS.name_chars,
                )
            }),
            caveat: stall.caveat().trim(),
            causes: causes(stall),
            tree: (rank < PAGE_LIMITS.stalls_with_stacks).then(|| stall_tree(stall, view)),
        });
    }
    stalls.sort_by_key(|s| s.start_us);

    let mut spans: Vec<(usize, &'static str, u64, u64)> = Vec::new();
    let mut kept: Vec<&crate::model::SpanRecord> = recording
        .spans
        .iter()
        .filter(|s| matches!(s.kind, SpanKind::OffCpu | SpanKind::Runqueue))
        .collect();
    kept.sort_by_key(|s| std::cmp::Reverse(s.end_ns.saturating_sub(s.start_ns)));
    let spans_cut = kept.len().saturating_sub(PAGE_LIMITS.spans);
    kept.truncate(PAGE_LIMITS.spans);
    for span in kept {
        let thread = index_of(span.pid, span.tid, "?", &mut threads);
        let kind = if span.kind == SpanKind::Runqueue {
            "r"
        } else {
            "b"
        };
        spans.push((
            thread,
            kind,
            rel_us(span.start_ns),
            span.end_ns
                .saturating_sub(span.start_ns.max(recording.start_ns))
                / 1000,
        ));
    }
    spans.sort_by_key(|s| s.2);

    let processes: Vec<ProcessView> = recording
        .processes
        .iter()
        .map(|p| ProcessView {
            pid: p.pid,
            comm: clip(&p.comm, PAGE_LIMITS.name_chars),
            exe: clip(&p.exe, PAGE_LIMITS.name_chars),
        })
        .collect();
    let title = match processes.first() {
        Some(p) if processes.len() == 1 => format!("stallscope: {} ({})", p.comm, p.pid),
        Some(p) => format!(
            "stallscope: {} ({}) and {} more",
            p.comm,
            p.pid,
            processes.len() - 1
        ),
        None => "stallscope".to_string(),
    };
    Page {
        title,
        processes,
        recorded_ns: recording.recorded_ns,
        threshold_ns: recording.threshold_ns,
        passed: recording.verdict.passed,
        budgets: recording
            .verdict
            .budgets
            .iter()
            .map(|b| BudgetView {
                budget: b.budget.clone(),
                text: b.describe(),
                passed: b.passed,
            })
            .collect(),
        lost_events: recording.lost_events,
        stacks_lost: recording.drops.kernel_stack + recording.drops.user_stacks_lost(),
        spans_dropped: recording.spans_dropped + spans_cut as u64,
        stalls_total: recording.stalls.len(),
        stalls_in_table: stalls.len(),
        stalls_with_stacks: stalls.iter().filter(|s| s.tree.is_some()).count(),
        hints: recording.hints.clone(),
        threads,
        spans,
        stalls,
    }
}

/// JSON that can sit inside a `<script>` element: none of `<`, `>`, `&` (no `</script>`, no
/// `<!--`), nor U+2028/U+2029 (line terminators in older JavaScript). They can only occur
/// inside JSON strings, where the `\u` escapes mean the same characters.
fn script_json(value: &impl Serialize) -> Result<String> {
    let json = serde_json::to_string(value).context("serializing the report's data")?;
    let mut out = String::with_capacity(json.len() + json.len() / 16);
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Text for an HTML element's content or a quoted attribute (the sanitizer's XML escaper:
/// the same five entities, and no control character).
fn html_text(text: &str) -> String {
    crate::sanitize::xml(text)
}

/// The page: our styles, the skeleton, the data, then d3, d3-flame-graph and our script.
pub fn report_html(recording: &Recording, view: View) -> Result<String> {
    let page = page(recording, view);
    let title = html_text(&page.title);
    let data = script_json(&page)?;
    Ok(format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{APP_CSS}</style>
</head><body>
<header id="header"><h1>{title}</h1><div id="summary"></div><div id="verdict"></div><div id="notes"></div></header>
<section><h2>Timeline</h2><p class="help">One row per thread; loop iterations in green (shaded buckets where there were many), stalls in red, blocked time in blue, waiting for a CPU in orange. Scroll to zoom, drag to pan, click a stall to open it.</p><div id="timeline"></div></section>
<section id="stall-section"><h2>Stalls</h2>
<div class="search"><label>Search functions: <input id="search" type="search" placeholder="e.g. validate" autocomplete="off"></label> <span id="search-result"></span></div>
<div id="table-wrap"><table id="stalls"><thead></thead><tbody></tbody></table></div>
<div id="table-note"></div>
</section>
<section id="detail"><h2 id="detail-title">Select a stall</h2><div id="breakdown"></div><ul id="causes"></ul><div id="task"></div><div id="flame-details" class="help"></div><div id="flame"></div></section>
<script type="application/json" id="stallscope-data">{data}</script>
<script>{D3_JS}</script>
<script>{FLAMEGRAPH_JS}</script>
<script>{APP_JS}</script>
</body></html>
"#
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Drops;
    use crate::model::Frame;

    fn frame(function: &str, kind: FrameKind) -> Frame {
        Frame {
            function: function.into(),
            file: None,
            line: None,
            module: None,
            kind,
        }
    }

    fn stack(kind: &str, weight_ns: u64, frames: Vec<Frame>) -> StackRecord {
        StackRecord {
            kind: serde_json::from_value(serde_json::Value::from(kind)).expect("a stack kind"),
            weight_ns,
            count: 1,
            syscall: (kind == "off_cpu").then(|| "nanosleep".to_string()),
            frames,
            waker: None,
        }
    }

    // Built from JSON, as stalls.json is read: fields others add later (with serde defaults)
    // do not break these fixtures.
    fn stall(duration_ns: u64, stacks: Vec<StackRecord>) -> StallRecord {
        StallRecord {
            comm: "srv</script><b>".into(),
            start_ns: 1_000,
            end_ns: 1_000 + duration_ns,
            stacks,
            ..crate::model::fixtures::stall(10, 10, duration_ns)
        }
    }

    fn recording(stalls: Vec<StallRecord>) -> Recording {
        serde_json::from_value(serde_json::json!({
            "version": 1, "threshold_ns": 100_000_000u64, "recorded_ns": 1_000_000_000u64,
            "start_ns": 0, "end_ns": 1_000_000_000u64, "sample_freq_hz": 99, "lost_events": 0,
            "drops": Drops::default(),
            "processes": [{ "pid": 10, "comm": "srv&<x>", "exe": "/bin/srv",
                            "started_ns": null, "exited_ns": null }],
            "threads": [], "stalls": stalls, "offcpu": [],
            "verdict": { "budgets": [], "passed": true },
        }))
        .expect("recording fixture")
    }

    #[test]
    fn tree_merges_stacks_by_frame_from_the_outermost() {
        let s = stall(
            300,
            vec![
                stack(
                    "on_cpu",
                    200,
                    vec![
                        frame("burn", FrameKind::Native),
                        frame("main", FrameKind::Native),
                    ],
                ),
                stack(
                    "off_cpu",
                    100,
                    vec![
                        frame("schedule", FrameKind::Kernel),
                        frame("nap", FrameKind::Native),
                        frame("main", FrameKind::Native),
                    ],
                ),
            ],
        );
        let tree = stall_tree(&s, View::PythonFirst);
        assert_eq!(tree.v, 300);
        assert_eq!(tree.c.len(), 1);
        let main = &tree.c[0];
        assert_eq!((main.n.as_str(), main.v), ("main", 300));
        assert_eq!(main.c[0].n, "burn");
        assert_eq!(main.c[1].n, "nap");
        let marker = &main.c[1].c[0].c[0];
        assert_eq!(
            (marker.n.as_str(), marker.k),
            ("[blocked in nanosleep()]", "b")
        );
    }

    #[test]
    fn trees_are_bounded_and_say_what_they_left_out() {
        let deep: Vec<Frame> = (0..100)
            .map(|i| frame(&format!("f{i}"), FrameKind::Native))
            .collect();
        let stacks = (0..50)
            .map(|i| {
                let mut frames = deep.clone();
                frames[0] = frame(&format!("leaf{i}"), FrameKind::Native);
                stack("on_cpu", 1000 - i, frames)
            })
            .collect();
        let tree = stall_tree(&stall(100_000, stacks), View::PythonFirst);
        fn count(node: &Node) -> usize {
            1 + node.c.iter().map(count).sum::<usize>()
        }
        assert!(count(&tree) <= PAGE_LIMITS.nodes_per_stall + 1);
        assert!(
            tree.c
                .iter()
                .any(|c| c.n.contains("lighter stacks not drawn"))
        );
        assert_eq!(tree.v, (0..50).map(|i| 1000 - i).sum::<u64>());
    }

    #[test]
    fn names_from_the_target_cannot_leave_the_data_element() {
        let evil = "x</script><script>alert(1)</script>\u{2028}&amp;";
        let rec = recording(vec![stall(
            200_000_000,
            vec![stack(
                "on_cpu",
                200_000_000,
                vec![frame(evil, FrameKind::Native)],
            )],
        )]);
        let html = report_html(&rec, View::PythonFirst).expect("html");
        let start = html
            .find(r#"<script type="application/json" id="stallscope-data">"#)
            .expect("data element");
        let data = &html[start..];
        let end = data.find("</script>").expect("closing tag");
        let json = &data[data.find('>').expect("tag end") + 1..end];
        assert!(!json.contains('<') && !json.contains('>') && !json.contains('&'));
        assert!(!json.contains('\u{2028}'));
        let back: serde_json::Value = serde_json::from_str(json).expect("valid JSON");
        assert_eq!(back["stalls"][0]["tree"]["c"][0]["n"], evil);
        assert!(html.contains("<title>stallscope: srv&amp;&lt;x&gt; (10)</title>"));
    }

    #[test]
    fn only_the_longest_stalls_carry_trees() {
        let stalls = (0..(PAGE_LIMITS.stalls_with_stacks as u64 + 20))
            .map(|i| {
                stall(
                    100_000_000 + i,
                    vec![stack("on_cpu", 1, vec![frame("f", FrameKind::Native)])],
                )
            })
            .collect();
        let page = page(&recording(stalls), View::PythonFirst);
        assert_eq!(page.stalls_with_stacks, PAGE_LIMITS.stalls_with_stacks);
        let shortest_with_tree = page
            .stalls
            .iter()
            .filter(|s| s.tree.is_some())
            .map(|s| s.duration_ns)
            .min();
        let longest_without = page
            .stalls
            .iter()
            .filter(|s| s.tree.is_none())
            .map(|s| s.duration_ns)
            .max();
        assert!(shortest_with_tree > longest_without);
    }
}
