//! Folded stacks (`stalls.folded`, `offcpu.folded`: one `frame;frame;... weight` line per
//! stack, outermost first, weights in microseconds) and the flamegraph SVGs inferno draws from
//! them. Pure: a recording in, lines and bytes out.

use anyhow::{Context as _, Result};

use crate::{
    analysis::headline::{self, View},
    model::{Frame, FrameKind, Recording, StackKind, WakerRecord, short_path},
    sanitize,
};

/// Label of a frame in folded stacks. inferno colours `_[k]` frames as kernel and `_[j]` as JIT.
fn frame_label(frame: &Frame) -> String {
    let name = frame.function.replace(';', ":");
    match frame.kind {
        FrameKind::Kernel => format!("{name}_[k]"),
        FrameKind::Jit => format!("{name}_[j]"),
        FrameKind::Python | FrameKind::Js => match (&frame.file, frame.line) {
            (Some(file), Some(line)) => format!("{name} ({}:{line})", short_path(file)),
            (Some(file), None) if frame.kind == FrameKind::Js => {
                format!("{name} ({})", short_path(file))
            }
            _ => name,
        },
        FrameKind::Native => name,
    }
}

/// The leaf marker saying what kind of waiting a stack is (none for on-CPU time), so the code
/// above it merges across kinds while the leaf tells them apart.
fn kind_marker(kind: StackKind, syscall: Option<&str>) -> Option<String> {
    match kind {
        StackKind::OffCpu => Some(match syscall {
            Some(syscall) => format!("[blocked in {syscall}]"),
            None => "[blocked]".into(),
        }),
        StackKind::Runqueue => Some("[waiting for a CPU]".into()),
        StackKind::Lock => Some("[waiting for a lock]".into()),
        StackKind::OnCpu => None,
    }
}

/// A folded line; with a waker, offwaketime style: the sleeper's stack, `--`, then the waker's
/// stack from its innermost frame out, ending with the waking thread.
fn folded_line(
    process: &str,
    thread: &str,
    frames: &[Frame],
    marker: Option<String>,
    waker: Option<&WakerRecord>,
    weight_ns: u64,
) -> Option<String> {
    let weight_us = weight_ns / 1000;
    if weight_us == 0 {
        return None;
    }
    let mut parts = vec![process.replace(';', ":"), thread.replace(';', ":")];
    parts.extend(frames.iter().rev().map(frame_label));
    parts.extend(marker);
    if let Some(waker) = waker {
        parts.push("--".into());
        parts.extend(
            waker
                .frames
                .iter()
                .map(|f| format!("{}_[w]", f.function.replace(';', ":"))),
        );
        parts.push(format!(
            "woken by {} ({})_[w]",
            waker.comm.replace(';', ":"),
            waker.tid
        ));
    }
    Some(format!("{} {weight_us}", parts.join(";")))
}

fn process_label(recording: &Recording, pid: u32) -> String {
    let comm = recording
        .processes
        .iter()
        .find(|p| p.pid == pid)
        .map_or("?", |p| p.comm.as_str());
    format!("{comm} ({pid})")
}

/// Stall time, weighted in microseconds; root frame = process;thread.
pub fn stall_folded(recording: &Recording, view: View) -> Vec<String> {
    stall_folded_labelled(recording, true, view)
}

/// As [`stall_folded`], but process and thread are named without their ids, so that two
/// recordings of the same service (different PIDs) can be compared.
pub fn stall_folded_without_ids(recording: &Recording, view: View) -> Vec<String> {
    stall_folded_labelled(recording, false, view)
}

fn stall_folded_labelled(recording: &Recording, with_ids: bool, view: View) -> Vec<String> {
    let mut lines = Vec::new();
    for stall in &recording.stalls {
        let (process, thread) = if with_ids {
            (
                process_label(recording, stall.pid),
                format!("{} ({})", stall.comm, stall.tid),
            )
        } else {
            let process = recording
                .processes
                .iter()
                .find(|p| p.pid == stall.pid)
                .map_or_else(|| "?".to_string(), |p| p.comm.clone());
            (process, stall.comm.clone())
        };
        for stack in &stall.stacks {
            let marker = kind_marker(stack.kind, stack.syscall.as_deref());
            // Python-first unless --native (module `headline`), as the live line reads.
            let frames: Vec<Frame> =
                headline::view_frames(&stack.frames, headline::did_work(stack.kind), view)
                    .into_iter()
                    .cloned()
                    .collect();
            lines.extend(folded_line(
                &process,
                &thread,
                &frames,
                marker,
                stack.waker.as_ref(),
                stack.weight_ns,
            ));
        }
    }
    merge_folded(lines)
}

/// Off-CPU time of every followed thread, weighted in microseconds.
pub fn offcpu_folded(recording: &Recording) -> Vec<String> {
    let lines = recording
        .offcpu
        .iter()
        .filter_map(|entry| {
            let process = process_label(recording, entry.pid);
            let thread = format!("{} ({})", entry.comm, entry.tid);
            let marker = kind_marker(StackKind::OffCpu, entry.syscall.as_deref());
            folded_line(
                &process,
                &thread,
                &entry.frames,
                marker,
                entry.waker.as_ref(),
                entry.weight_ns,
            )
        })
        .collect();
    merge_folded(lines)
}

/// Sums identical stacks and sorts, as folded files conventionally are.
fn merge_folded(lines: Vec<String>) -> Vec<String> {
    let mut totals: std::collections::BTreeMap<String, u64> = Default::default();
    for line in lines {
        if let Some((stack, count)) = line.rsplit_once(' ') {
            *totals.entry(stack.to_string()).or_default() += count.parse::<u64>().unwrap_or(0);
        }
    }
    totals
        .into_iter()
        .map(|(stack, count)| format!("{stack} {count}"))
        .collect()
}

/// Renders folded lines as a flamegraph. An empty profile still gets a valid SVG that says so,
/// so a CI artifact link never points at nothing.
pub fn flamegraph_svg(lines: &[String], title: &str) -> Result<Vec<u8>> {
    if lines.is_empty() {
        return Ok(empty_svg(title).into_bytes());
    }
    let mut options = inferno::flamegraph::Options::default();
    options.title = title.to_string();
    options.count_name = "us".to_string();
    options.hash = true;
    let mut svg = Vec::new();
    inferno::flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut svg)
        .context("rendering the flamegraph")?;
    Ok(svg)
}

fn empty_svg(title: &str) -> String {
    format!(
        r#"<?xml version="1.0" standalone="no"?>
<svg version="1.1" width="600" height="60" xmlns="http://www.w3.org/2000/svg"><text x="10" y="25" font-family="Verdana" font-size="14">{}</text><text x="10" y="48" font-family="Verdana" font-size="12">nothing recorded: no stack exceeded the threshold</text></svg>
"#,
        sanitize::xml(title)
    )
}

pub fn folded_text(lines: &[String]) -> String {
    let mut text = lines.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::recording;

    #[test]
    fn folded_is_outermost_first_with_kind_markers() {
        let lines = stall_folded(&recording(), View::PythonFirst);
        assert_eq!(
            lines,
            vec![
                "server (10);server (11);main;burn_cpu 200000".to_string(),
                "server (10);server (11);main;nap;schedule_[k];[blocked in nanosleep] 5000"
                    .to_string(),
            ]
        );
    }

    #[test]
    fn svg_contains_the_frames_and_empty_profiles_still_render() {
        let lines = stall_folded(&recording(), View::PythonFirst);
        let svg = String::from_utf8(flamegraph_svg(&lines, "t").expect("svg")).expect("utf8");
        assert!(svg.contains("burn_cpu"));
        let empty = String::from_utf8(flamegraph_svg(&[], "t").expect("svg")).expect("utf8");
        assert!(empty.starts_with("<?xml"));
    }
}
