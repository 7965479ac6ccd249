//! Chrome trace-event / Perfetto timeline (`trace.json`): one track per followed thread, with
//! stalls, off-CPU spans, runqueue waits and samples on it, and process start/exit marks.
//!
//! The JSON object form of the trace-event format is used (not the bare array), because it can
//! carry `displayTimeUnit` and `otherData` (what was recorded, what was dropped). Times in the
//! format are microseconds; ours are CLOCK_MONOTONIC nanoseconds, so every `ts` is made relative
//! to the start of the recording (monotonic times are meaningless as dates anyway) and given as
//! a float to keep sub-microsecond precision. Anything before the start (a stall that began
//! before recording) is clamped to 0, since viewers reject or misplace negative times.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use crate::{
    model::{Recording, SpanKind, StallRecord, top_user_frames},
    units::format_duration,
};

/// One event plus the keys it is sorted by.
struct Event {
    metadata: bool,
    ts: f64,
    dur: f64,
    value: Value,
}

/// Converts monotonic times to trace microseconds relative to the recording's start.
struct Clock {
    start_ns: u64,
}

impl Clock {
    /// Clamped to the start: see the module comment.
    fn clamp(&self, ns: u64) -> u64 {
        ns.max(self.start_ns)
    }

    fn ts_us(&self, ns: u64) -> f64 {
        (self.clamp(ns) - self.start_ns) as f64 / 1000.0
    }

    /// Duration between clamped ends: a span that began before the recording starts at 0 and
    /// keeps only its visible part, so it never reaches past its true end.
    fn dur_us(&self, start_ns: u64, end_ns: u64) -> f64 {
        self.clamp(end_ns).saturating_sub(self.clamp(start_ns)) as f64 / 1000.0
    }
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn metadata(name: &str, pid: u32, tid: u32, args: Value) -> Event {
    Event {
        metadata: true,
        ts: 0.0,
        dur: 0.0,
        value: json!({ "name": name, "ph": "M", "ts": 0, "pid": pid, "tid": tid, "args": args }),
    }
}

/// Names for every process and thread that appears anywhere, so no track is left as a bare
/// number when a thread or process record is missing (e.g. a thread seen only in a stall).
fn metadata_events(recording: &Recording) -> Vec<Event> {
    let mut processes: BTreeMap<u32, Option<String>> = BTreeMap::new();
    for p in &recording.processes {
        processes.insert(p.pid, Some(format!("{} ({})", p.comm, p.pid)));
    }
    // (pid, tid) → (name, is_loop); the thread records win over names seen elsewhere.
    let mut threads: BTreeMap<(u32, u32), (String, bool)> = BTreeMap::new();
    for t in &recording.threads {
        threads.insert((t.pid, t.tid), (t.comm.clone(), t.is_loop));
    }
    let seen = recording
        .stalls
        .iter()
        .map(|s| (s.pid, s.tid, s.comm.as_str()))
        .chain(
            recording
                .offcpu
                .iter()
                .map(|o| (o.pid, o.tid, o.comm.as_str())),
        );
    for (pid, tid, comm) in seen {
        threads
            .entry((pid, tid))
            .or_insert_with(|| (comm.to_string(), false));
        processes.entry(pid).or_insert(None);
    }
    let span_threads: BTreeSet<(u32, u32)> =
        recording.spans.iter().map(|s| (s.pid, s.tid)).collect();
    for (pid, tid) in span_threads {
        processes.entry(pid).or_insert(None);
        threads
            .entry((pid, tid))
            .or_insert_with(|| (format!("thread {tid}"), false));
    }
    for &(pid, _) in threads.keys() {
        processes.entry(pid).or_insert(None);
    }

    let mut events = Vec::new();
    for (pid, name) in processes {
        let name = name.unwrap_or_else(|| format!("process {pid}"));
        events.push(metadata("process_name", pid, pid, json!({ "name": name })));
    }
    for ((pid, tid), (comm, is_loop)) in threads {
        let name = if is_loop {
            format!("{comm} (loop)")
        } else {
            comm
        };
        events.push(metadata("thread_name", pid, tid, json!({ "name": name })));
        // Loop threads are what the stalls are about: list them first in each process.
        let sort_index = if is_loop { 0 } else { 1 };
        events.push(metadata(
            "thread_sort_index",
            pid,
            tid,
            json!({ "sort_index": sort_index }),
        ));
    }
    events
}

fn stall_event(clock: &Clock, stall: &StallRecord) -> Event {
    let ts = clock.ts_us(stall.start_ns);
    let dur = clock.dur_us(stall.start_ns, stall.end_ns);
    let mut args = Map::new();
    args.insert("duration_ms".into(), json!(ms(stall.duration_ns)));
    args.insert("on_cpu_ms".into(), json!(ms(stall.on_cpu_ns)));
    args.insert("off_cpu_ms".into(), json!(ms(stall.off_cpu_ns)));
    args.insert("runqueue_ms".into(), json!(ms(stall.runqueue_ns)));
    args.insert("mostly".into(), json!(stall.dominant_kind()));
    args.insert("rule".into(), json!(stall.rule));
    args.insert("partial".into(), json!(stall.partial));
    args.insert("data_lost".into(), json!(stall.data_lost));
    if stall.unaccounted_ns > 0 {
        args.insert("unaccounted_ms".into(), json!(ms(stall.unaccounted_ns)));
        if let Some(why) = &stall.unaccounted_why {
            args.insert("unaccounted_why".into(), json!(why));
        }
    }
    if let Some(stack) = stall.dominant_stack() {
        // The innermost user frame says where the code was; a kernel frame such as `schedule`
        // is only the fallback when the stack has nothing else.
        let top = top_user_frames(stack, 1)
            .into_iter()
            .next()
            .or_else(|| stack.frames.first());
        if let Some(frame) = top {
            let location = match (&frame.file, crate::model::position_text(frame)) {
                (Some(file), Some(line)) => format!("{} ({file}:{line})", frame.function),
                (Some(file), None) => format!("{} ({file})", frame.function),
                _ => frame.function.to_string(),
            };
            args.insert("top_frame".into(), json!(location));
        }
        args.insert("top_stack_kind".into(), json!(stack.kind));
        if let Some(syscall) = &stack.syscall {
            args.insert("top_stack_syscall".into(), json!(syscall));
        }
        args.insert("top_stack_ms".into(), json!(ms(stack.weight_ns)));
    }
    Event {
        metadata: false,
        ts,
        dur,
        value: json!({
            "name": format!("stall {}", format_duration(stall.duration_ns)),
            "cat": "stall",
            "ph": "X",
            "ts": ts,
            "dur": dur,
            "pid": stall.pid,
            "tid": stall.tid,
            "args": args,
        }),
    }
}

fn span_event(clock: &Clock, span: &crate::model::SpanRecord) -> Event {
    let ts = clock.ts_us(span.start_ns);
    let mut args = Map::new();
    if let Some(syscall) = &span.syscall {
        args.insert("syscall".into(), json!(syscall));
    }
    if !span.label.is_empty() {
        args.insert("function".into(), json!(span.label));
    }
    if span.kind == SpanKind::Sample {
        let name = if span.label.is_empty() {
            "on-CPU sample"
        } else {
            span.label.as_str()
        };
        return Event {
            metadata: false,
            ts,
            dur: 0.0,
            value: json!({
                "name": name, "cat": "sample", "ph": "i", "s": "t", "ts": ts,
                "pid": span.pid, "tid": span.tid, "args": args,
            }),
        };
    }
    let name = match (span.kind, &span.syscall) {
        (SpanKind::OffCpu, Some(syscall)) => format!("blocked in {syscall}"),
        // One name for every runqueue wait, so viewers colour and aggregate them together; the
        // function is in args.
        (SpanKind::Runqueue, _) => "waiting for a CPU".to_string(),
        _ if !span.label.is_empty() => span.label.clone(),
        (SpanKind::OffCpu, None) => "blocked".to_string(),
        (kind, _) => kind.as_str().to_string(),
    };
    let dur = clock.dur_us(span.start_ns, span.end_ns);
    Event {
        metadata: false,
        ts,
        dur,
        value: json!({
            "name": name, "cat": span.kind.as_str(), "ph": "X", "ts": ts, "dur": dur,
            "pid": span.pid, "tid": span.tid, "args": args,
        }),
    }
}

fn process_events(clock: &Clock, recording: &Recording) -> Vec<Event> {
    let mut events = Vec::new();
    for p in &recording.processes {
        let marks = [
            ("process started", p.started_ns),
            ("process exited", p.exited_ns),
        ];
        for (name, at) in marks {
            let Some(at) = at else { continue };
            let ts = clock.ts_us(at);
            events.push(Event {
                metadata: false,
                ts,
                dur: 0.0,
                value: json!({
                    "name": name, "cat": "process", "ph": "i", "s": "p", "ts": ts,
                    "pid": p.pid, "tid": p.pid,
                    "args": { "comm": p.comm, "exe": p.exe },
                }),
            });
        }
    }
    events
}

/// The recording as a Chrome trace-event JSON object (`trace.json`), for Perfetto or
/// chrome://tracing.
pub fn trace_json(recording: &Recording) -> Value {
    let clock = Clock {
        start_ns: recording.start_ns,
    };
    let mut events = metadata_events(recording);
    events.extend(recording.stalls.iter().map(|s| stall_event(&clock, s)));
    events.extend(recording.spans.iter().map(|s| span_event(&clock, s)));
    events.extend(process_events(&clock, recording));
    // Metadata first, then by time; at equal times the longer event first, so a parent comes
    // before what it encloses (as a streaming reader building a slice stack expects). The sort
    // is stable, so ties keep the order above.
    events.sort_by(|a, b| {
        b.metadata
            .cmp(&a.metadata)
            .then(a.ts.total_cmp(&b.ts))
            .then(b.dur.total_cmp(&a.dur))
    });
    json!({
        "traceEvents": events.into_iter().map(|e| e.value).collect::<Vec<_>>(),
        "displayTimeUnit": "ms",
        "otherData": {
            "tool": "stallscope",
            "version": recording.version,
            "clock": "CLOCK_MONOTONIC; ts is relative to start_ns",
            "start_ns": recording.start_ns,
            "end_ns": recording.end_ns,
            "recorded_ms": ms(recording.recorded_ns),
            "threshold_ms": ms(recording.threshold_ns),
            "sample_freq_hz": recording.sample_freq_hz,
            "lost_events": recording.lost_events,
            "spans_dropped": recording.spans_dropped,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        Frame, FrameKind, OffCpuRecord, ProcessRecord, SpanRecord, StackRecord, ThreadRecord,
        Verdict,
    };

    /// A strict check of the trace-event format (the JSON object form), as documented in
    /// "Trace Event Format" (Chrome) and accepted by Perfetto's JSON importer: the keys each phase
    /// needs, with the right types. Nesting of "X" events is not checked: the format does not
    /// require it.
    fn validate(trace: &Value) -> Result<(), String> {
        let top = trace.as_object().ok_or("the trace is not a JSON object")?;
        let events = top
            .get("traceEvents")
            .ok_or("no traceEvents")?
            .as_array()
            .ok_or("traceEvents is not an array")?;
        if let Some(unit) = top.get("displayTimeUnit") {
            match unit.as_str() {
                Some("ms" | "ns") => {}
                _ => return Err(format!("displayTimeUnit must be \"ms\" or \"ns\": {unit}")),
            }
        }
        if let Some(other) = top.get("otherData")
            && !other.is_object()
        {
            return Err("otherData is not an object".into());
        }
        for (i, event) in events.iter().enumerate() {
            validate_event(event).map_err(|e| format!("event {i}: {e}: {event}"))?;
        }
        Ok(())
    }

    fn validate_event(event: &Value) -> Result<(), String> {
        let e = event.as_object().ok_or("not an object")?;
        let string = |key: &str| -> Result<&str, String> {
            e.get(key)
                .ok_or(format!("missing {key}"))?
                .as_str()
                .ok_or(format!("{key} is not a string"))
        };
        let time = |key: &str| -> Result<f64, String> {
            let v = e.get(key).ok_or(format!("missing {key}"))?;
            let t = v.as_f64().ok_or(format!("{key} is not a number"))?;
            if !t.is_finite() || t < 0.0 {
                return Err(format!("{key} must be finite and >= 0, is {t}"));
            }
            Ok(t)
        };
        let id = |key: &str| -> Result<u64, String> {
            e.get(key)
                .ok_or(format!("missing {key}"))?
                .as_u64()
                .ok_or(format!("{key} is not a non-negative integer"))
        };
        let name = string("name")?;
        let ph = string("ph")?;
        time("ts")?;
        id("pid")?;
        id("tid")?;
        if let Some(cat) = e.get("cat")
            && !cat.is_string()
        {
            return Err("cat is not a string".into());
        }
        if let Some(args) = e.get("args")
            && !args.is_object()
        {
            return Err("args is not an object".into());
        }
        match ph {
            "X" => {
                time("dur")?;
            }
            "B" | "E" => {}
            "i" | "I" => {
                if let Some(scope) = e.get("s") {
                    match scope.as_str() {
                        Some("g" | "p" | "t") => {}
                        _ => return Err(format!("instant scope must be g, p or t: {scope}")),
                    }
                }
            }
            "C" => {
                let args = e
                    .get("args")
                    .and_then(Value::as_object)
                    .ok_or("counter without args")?;
                if !args.values().all(Value::is_number) {
                    return Err("counter args must be numbers".into());
                }
            }
            "M" => {
                let args = e
                    .get("args")
                    .and_then(Value::as_object)
                    .ok_or("metadata without args")?;
                match name {
                    "process_name" | "thread_name" | "process_labels" => {
                        let key = if name == "process_labels" {
                            "labels"
                        } else {
                            "name"
                        };
                        if !args.get(key).is_some_and(Value::is_string) {
                            return Err(format!("{name} needs a string args.{key}"));
                        }
                    }
                    "process_sort_index" | "thread_sort_index" => {
                        if !args.get("sort_index").is_some_and(Value::is_i64) {
                            return Err(format!("{name} needs an integer args.sort_index"));
                        }
                    }
                    _ => return Err(format!("unknown metadata event {name}")),
                }
            }
            _ => return Err(format!("unknown phase {ph}")),
        }
        Ok(())
    }

    fn frame(function: &str, kind: FrameKind) -> Frame {
        Frame {
            column: None,
            function: function.into(),
            file: Some("app.py".into()),
            line: Some(12),
            module: None,
            kind,
        }
    }

    const START: u64 = 10_000_000_000;

    fn recording() -> Recording {
        let stall = StallRecord {
            start_ns: START + 1_000_000,
            end_ns: START + 313_400_000,
            on_cpu_ns: 12_400_000,
            off_cpu_ns: 300_000_000,
            stacks: vec![
                StackRecord {
                    kind: crate::model::StackKind::OnCpu,
                    weight_ns: 12_400_000,
                    count: 1,
                    syscall: None,
                    frames: vec![frame("parse", FrameKind::Python)],
                    waker: None,
                },
                StackRecord {
                    kind: crate::model::StackKind::OffCpu,
                    weight_ns: 300_000_000,
                    count: 1,
                    syscall: Some("read".into()),
                    frames: vec![
                        frame("schedule", FrameKind::Kernel),
                        frame("load_file", FrameKind::Python),
                    ],
                    waker: None,
                },
            ],
            ..crate::model::fixtures::stall(10, 11, 312_400_000)
        };
        // Began before the recording: clamped to ts 0, only the visible part kept.
        let early = StallRecord {
            tid: 12,
            comm: "worker".into(),
            start_ns: START - 50_000_000,
            end_ns: START + 150_000_000,
            duration_ns: 200_000_000,
            partial: true,
            stacks: vec![],
            ..stall.clone()
        };
        let span =
            |kind: SpanKind, start: u64, end: u64, syscall: Option<&str>, label: &str| SpanRecord {
                pid: 10,
                tid: 11,
                kind,
                start_ns: START + start,
                end_ns: START + end,
                syscall: syscall.map(Into::into),
                label: label.into(),
            };
        Recording {
            start_ns: START,
            end_ns: START + 1_000_000_000,
            lost_events: 3,
            processes: vec![ProcessRecord {
                pid: 10,
                comm: "server".into(),
                exe: "/srv/server".into(),
                started_ns: Some(START - 5),
                exited_ns: Some(START + 900_000_000),
                exit_code: None,
                exit_signal: None,
            }],
            threads: vec![
                ThreadRecord {
                    pid: 10,
                    tid: 11,
                    comm: "server".into(),
                    is_loop: true,
                    iterations: 40,
                    iteration_marks: Vec::new(),
                },
                ThreadRecord {
                    pid: 10,
                    tid: 12,
                    comm: "worker".into(),
                    is_loop: false,
                    iterations: 0,
                    iteration_marks: Vec::new(),
                },
            ],
            stalls: vec![stall, early],
            offcpu: vec![OffCpuRecord {
                // A thread of a process with no record: still gets named tracks.
                pid: 20,
                tid: 21,
                comm: "helper".into(),
                weight_ns: 1,
                syscall: None,
                frames: Vec::new().into(),
                waker: None,
            }],
            spans: vec![
                span(
                    SpanKind::OffCpu,
                    13_400_000,
                    313_400_000,
                    Some("read"),
                    "load_file",
                ),
                span(SpanKind::Runqueue, 500_000_000, 500_250_000, None, "parse"),
                span(SpanKind::Sample, 5_000_000, 5_000_000, None, "parse"),
                span(
                    SpanKind::OffCpu,
                    600_000_000,
                    600_000_500,
                    None,
                    "wait_thing",
                ),
            ],
            verdict: Verdict::default(),
            // The rest as the shared fixture has it (a 1 s recording at 99 Hz, 100 ms
            // threshold, nothing dropped).
            ..crate::model::fixtures::recording()
        }
    }

    fn events(trace: &Value) -> &Vec<Value> {
        trace["traceEvents"].as_array().expect("array")
    }

    fn find<'a>(trace: &'a Value, name: &str) -> &'a Value {
        events(trace)
            .iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no event named {name}"))
    }

    #[test]
    fn output_passes_the_validator() {
        let trace = trace_json(&recording());
        validate(&trace).expect("valid");
        assert_eq!(trace["displayTimeUnit"], "ms");
        assert_eq!(trace["otherData"]["lost_events"], 3);
        // And survives serialization: no NaN or other non-JSON values.
        let text = serde_json::to_string(&trace).expect("serializes");
        let back: Value = serde_json::from_str(&text).expect("parses");
        validate(&back).expect("still valid");
    }

    #[test]
    fn metadata_names_every_process_and_thread() {
        let trace = trace_json(&recording());
        let names: Vec<(String, u64, u64, String)> = events(&trace)
            .iter()
            .filter(|e| e["ph"] == "M" && e["name"].as_str().is_some_and(|n| n.ends_with("_name")))
            .map(|e| {
                (
                    e["name"].as_str().expect("name").to_string(),
                    e["pid"].as_u64().expect("pid"),
                    e["tid"].as_u64().expect("tid"),
                    e["args"]["name"].as_str().expect("args.name").to_string(),
                )
            })
            .collect();
        let expect = |kind: &str, pid: u64, tid: u64, name: &str| {
            assert!(
                names.contains(&(kind.to_string(), pid, tid, name.to_string())),
                "{kind} {pid}/{tid} {name} missing from {names:?}"
            );
        };
        expect("process_name", 10, 10, "server (10)");
        expect("process_name", 20, 20, "process 20");
        expect("thread_name", 10, 11, "server (loop)");
        expect("thread_name", 10, 12, "worker");
        expect("thread_name", 20, 21, "helper");
        assert_eq!(names.len(), 5);
    }

    #[test]
    fn stalls_are_complete_events_in_microseconds() {
        let trace = trace_json(&recording());
        let stall = find(&trace, "stall 312.4 ms");
        assert_eq!(stall["ph"], "X");
        assert_eq!(stall["cat"], "stall");
        assert_eq!(stall["ts"], 1000.0);
        assert_eq!(stall["dur"], 312_400.0);
        assert_eq!(stall["pid"], 10);
        assert_eq!(stall["tid"], 11);
        let args = &stall["args"];
        assert_eq!(args["on_cpu_ms"], 12.4);
        assert_eq!(args["off_cpu_ms"], 300.0);
        assert_eq!(args["runqueue_ms"], 0.0);
        // Heaviest stack is the blocked one; its innermost user frame, not `schedule`.
        assert_eq!(args["top_frame"], "load_file (app.py:12)");
        assert_eq!(args["top_stack_kind"], "off_cpu");
        assert_eq!(args["top_stack_syscall"], "read");
    }

    #[test]
    fn times_before_the_recording_are_clamped() {
        let trace = trace_json(&recording());
        let early = find(&trace, "stall 200.0 ms");
        assert_eq!(early["ts"], 0.0);
        // Only the part inside the recording is drawn.
        assert_eq!(early["dur"], 150_000.0);
        assert_eq!(early["args"]["partial"], true);
        let started = find(&trace, "process started");
        assert_eq!(started["ts"], 0.0);
        assert_eq!(started["s"], "p");
        assert_eq!(started["ph"], "i");
        let exited = find(&trace, "process exited");
        assert_eq!(exited["ts"], 900_000.0);
        assert_eq!(exited["pid"], 10);
    }

    #[test]
    fn spans_and_samples() {
        let trace = trace_json(&recording());
        let blocked = find(&trace, "blocked in read");
        assert_eq!(blocked["ph"], "X");
        assert_eq!(blocked["cat"], "off_cpu");
        assert_eq!(blocked["ts"], 13_400.0);
        assert_eq!(blocked["dur"], 300_000.0);
        assert_eq!(blocked["args"]["function"], "load_file");
        let waiting = find(&trace, "waiting for a CPU");
        assert_eq!(waiting["cat"], "runqueue");
        assert_eq!(waiting["dur"], 250.0);
        assert_eq!(waiting["args"]["function"], "parse");
        // Sub-microsecond precision is kept.
        let unnamed = find(&trace, "wait_thing");
        assert_eq!(unnamed["cat"], "off_cpu");
        assert_eq!(unnamed["dur"], 0.5);
        let sample = find(&trace, "parse");
        assert_eq!(sample["ph"], "i");
        assert_eq!(sample["s"], "t");
        assert_eq!(sample["cat"], "sample");
        assert_eq!(sample["ts"], 5000.0);
    }

    #[test]
    fn events_are_sorted_metadata_first_then_by_time() {
        let trace = trace_json(&recording());
        let list = events(&trace);
        let first_timed = list.iter().position(|e| e["ph"] != "M").expect("timed");
        assert!(list[..first_timed].iter().all(|e| e["ph"] == "M"));
        assert!(list[first_timed..].iter().all(|e| e["ph"] != "M"));
        let ts: Vec<f64> = list[first_timed..]
            .iter()
            .map(|e| e["ts"].as_f64().expect("ts"))
            .collect();
        assert!(ts.windows(2).all(|w| w[0] <= w[1]), "{ts:?}");
        // At ts 0 the longer stall-clamped event comes before the instant.
        assert_eq!(list[first_timed]["name"], "stall 200.0 ms");
    }

    #[test]
    fn empty_recording_is_valid() {
        let mut rec = recording();
        rec.processes.clear();
        rec.threads.clear();
        rec.stalls.clear();
        rec.offcpu.clear();
        rec.spans.clear();
        let trace = trace_json(&rec);
        validate(&trace).expect("valid");
        assert!(events(&trace).is_empty());
    }

    #[test]
    fn inverted_times_give_zero_durations_not_negative_ones() {
        let mut rec = recording();
        rec.spans[0].end_ns = rec.spans[0].start_ns - 1;
        rec.stalls[0].end_ns = 0;
        let trace = trace_json(&rec);
        validate(&trace).expect("valid");
        assert_eq!(find(&trace, "blocked in read")["dur"], 0.0);
        assert_eq!(find(&trace, "stall 312.4 ms")["dur"], 0.0);
    }

    #[test]
    fn validator_rejects_bad_traces() {
        let good = json!({ "name": "a", "ph": "X", "ts": 1.5, "dur": 2, "pid": 1, "tid": 2 });
        assert_eq!(validate(&json!({ "traceEvents": [good.clone()] })), Ok(()));
        let with = |key: &str, value: Value| {
            let mut event = good.clone();
            event[key] = value;
            json!({ "traceEvents": [event] })
        };
        let without = |key: &str| {
            let mut event = good.clone();
            event.as_object_mut().expect("object").remove(key);
            json!({ "traceEvents": [event] })
        };
        let bad = [
            ("not an object", json!([good.clone()])),
            ("no traceEvents", json!({ "events": [] })),
            ("traceEvents not array", json!({ "traceEvents": {} })),
            (
                "bad displayTimeUnit",
                json!({ "traceEvents": [], "displayTimeUnit": "us" }),
            ),
            (
                "bad otherData",
                json!({ "traceEvents": [], "otherData": [] }),
            ),
            ("event not object", json!({ "traceEvents": [1] })),
            ("no name", without("name")),
            ("no ph", without("ph")),
            ("no ts", without("ts")),
            ("no pid", without("pid")),
            ("no tid", without("tid")),
            ("no dur on X", without("dur")),
            ("name not string", with("name", json!(3))),
            ("ts string", with("ts", json!("1"))),
            ("ts negative", with("ts", json!(-1.0))),
            ("dur negative", with("dur", json!(-0.5))),
            ("pid string", with("pid", json!("1"))),
            ("tid negative", with("tid", json!(-2))),
            ("tid fractional", with("tid", json!(2.5))),
            ("unknown phase", with("ph", json!("Q"))),
            ("cat not string", with("cat", json!(1))),
            ("args not object", with("args", json!([1]))),
            (
                "bad instant scope",
                json!({ "traceEvents": [{ "name": "a", "ph": "i", "s": "x", "ts": 0, "pid": 1, "tid": 1 }] }),
            ),
            (
                "metadata without args",
                json!({ "traceEvents": [{ "name": "thread_name", "ph": "M", "ts": 0, "pid": 1, "tid": 1 }] }),
            ),
            (
                "metadata name not string",
                json!({ "traceEvents": [{ "name": "thread_name", "ph": "M", "ts": 0, "pid": 1, "tid": 1, "args": { "name": 5 } }] }),
            ),
            (
                "sort index not integer",
                json!({ "traceEvents": [{ "name": "thread_sort_index", "ph": "M", "ts": 0, "pid": 1, "tid": 1, "args": { "sort_index": "0" } }] }),
            ),
            (
                "unknown metadata",
                json!({ "traceEvents": [{ "name": "colour", "ph": "M", "ts": 0, "pid": 1, "tid": 1, "args": {} }] }),
            ),
            (
                "counter with a string",
                json!({ "traceEvents": [{ "name": "c", "ph": "C", "ts": 0, "pid": 1, "tid": 1, "args": { "v": "1" } }] }),
            ),
        ];
        for (what, trace) in bad {
            assert!(validate(&trace).is_err(), "accepted: {what}: {trace}");
        }
    }
}
