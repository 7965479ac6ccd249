//! pprof output (`profile.pb.gz`), so Pyroscope, Parca, Grafana or `go tool pprof` can read a
//! recording.
//!
//! The protobuf messages are written by hand with `prost` derives, mirroring
//! github.com/google/pprof/proto/profile.proto field for field: that avoids a protoc build step,
//! and the tag numbers are the whole contract, so they are spelled out below.
//!
//! The profile has two sample types, `stall`/`nanoseconds` (time spent inside stalls, every stack
//! of every stall) and `offcpu`/`nanoseconds` (off-CPU time of every followed thread); each
//! sample carries both values with one of them 0, which is how pprof models a profile with
//! several measurements. Who and what (pid, tid, thread, kind of time, syscall) are sample
//! labels rather than synthetic root frames, so consumers can filter and group by them
//! (`go tool pprof -tagfocus`, Pyroscope/Parca label selectors) and identical code merges
//! across threads.

use std::{collections::HashMap, io::Write as _, sync::Arc};

use anyhow::{Context as _, Result};
use flate2::{Compression, write::GzEncoder};

use crate::model::{Frame, FrameKind, Recording};

/// `profile.proto` `Profile`.
#[derive(Clone, PartialEq, prost::Message)]
struct Profile {
    #[prost(message, repeated, tag = "1")]
    sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    sample: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    mapping: Vec<Mapping>,
    #[prost(message, repeated, tag = "4")]
    location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    string_table: Vec<String>,
    #[prost(int64, tag = "7")]
    drop_frames: i64,
    #[prost(int64, tag = "8")]
    keep_frames: i64,
    #[prost(int64, tag = "9")]
    time_nanos: i64,
    #[prost(int64, tag = "10")]
    duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    period: i64,
    #[prost(int64, repeated, tag = "13")]
    comment: Vec<i64>,
    #[prost(int64, tag = "14")]
    default_sample_type: i64,
}

/// `profile.proto` `ValueType`: both fields are string-table indices.
#[derive(Clone, PartialEq, prost::Message)]
struct ValueType {
    #[prost(int64, tag = "1")]
    r#type: i64,
    #[prost(int64, tag = "2")]
    unit: i64,
}

/// `profile.proto` `Sample`. Repeated numbers are packed, as proto3 (and pprof) expect.
#[derive(Clone, PartialEq, prost::Message)]
struct Sample {
    /// Leaf first.
    #[prost(uint64, repeated, tag = "1")]
    location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    label: Vec<Label>,
}

/// `profile.proto` `Label`: either `str` or `num` is set (string-table indices for strings).
#[derive(Clone, PartialEq, prost::Message)]
struct Label {
    #[prost(int64, tag = "1")]
    key: i64,
    #[prost(int64, tag = "2")]
    str: i64,
    #[prost(int64, tag = "3")]
    num: i64,
    #[prost(int64, tag = "4")]
    num_unit: i64,
}

/// `profile.proto` `Mapping`. One per module (binary or library) named by the frames.
#[derive(Clone, PartialEq, prost::Message)]
struct Mapping {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(uint64, tag = "2")]
    memory_start: u64,
    #[prost(uint64, tag = "3")]
    memory_limit: u64,
    #[prost(uint64, tag = "4")]
    file_offset: u64,
    #[prost(int64, tag = "5")]
    filename: i64,
    #[prost(int64, tag = "6")]
    build_id: i64,
    #[prost(bool, tag = "7")]
    has_functions: bool,
    #[prost(bool, tag = "8")]
    has_filenames: bool,
    #[prost(bool, tag = "9")]
    has_line_numbers: bool,
    #[prost(bool, tag = "10")]
    has_inline_frames: bool,
}

/// `profile.proto` `Location`.
#[derive(Clone, PartialEq, prost::Message)]
struct Location {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(uint64, tag = "2")]
    mapping_id: u64,
    #[prost(uint64, tag = "3")]
    address: u64,
    #[prost(message, repeated, tag = "4")]
    line: Vec<Line>,
    #[prost(bool, tag = "5")]
    is_folded: bool,
}

/// `profile.proto` `Line`.
#[derive(Clone, PartialEq, prost::Message)]
struct Line {
    #[prost(uint64, tag = "1")]
    function_id: u64,
    #[prost(int64, tag = "2")]
    line: i64,
}

/// `profile.proto` `Function`.
#[derive(Clone, PartialEq, prost::Message)]
struct Function {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(int64, tag = "2")]
    name: i64,
    #[prost(int64, tag = "3")]
    system_name: i64,
    #[prost(int64, tag = "4")]
    filename: i64,
    #[prost(int64, tag = "5")]
    start_line: i64,
}

/// The frame standing for a stack that could not be captured.
const NO_STACK: &str = "[unknown stack]";

/// The mapping a frame belongs to. Kernel and JIT frames carry no module; naming them as perf
/// does (`[kernel.kallsyms]`) lets pprof consumers tell kernel code apart, which is otherwise
/// lost since pprof has no notion of frame kinds.
fn module_of(frame: &Frame) -> Option<&str> {
    match (&frame.module, frame.kind) {
        (Some(module), _) => Some(module),
        (None, FrameKind::Kernel) => Some("[kernel.kallsyms]"),
        (None, FrameKind::Jit) => Some("[jit]"),
        (None, FrameKind::Python | FrameKind::Native | FrameKind::Js) => None,
    }
}

/// Value index of each sample type in `Sample::value`.
const STALL: usize = 0;
const OFFCPU: usize = 1;

/// Interns strings, functions, mappings and locations as the profile is built. Ids are given in
/// first-seen order, so the same recording always gives the same bytes.
struct Builder {
    profile: Profile,
    strings: HashMap<String, i64>,
    /// (name, file) → function id.
    functions: HashMap<(Arc<str>, Option<Arc<str>>), u64>,
    /// module → mapping id.
    mappings: HashMap<String, u64>,
    locations: HashMap<LocationKey, u64>,
}

/// What tells locations apart: the frame as pprof can show it, i.e. with its mapping rather
/// than its kind (see [`module_of`]).
type LocationKey = (Arc<str>, Option<Arc<str>>, Option<u32>, Option<String>);

impl Builder {
    fn new() -> Self {
        let mut builder = Builder {
            profile: Profile::default(),
            strings: HashMap::new(),
            functions: HashMap::new(),
            mappings: HashMap::new(),
            locations: HashMap::new(),
        };
        // pprof requires string_table[0] == "": index 0 means "no string" everywhere.
        builder.string("");
        builder
    }

    fn string(&mut self, s: &str) -> i64 {
        if let Some(&index) = self.strings.get(s) {
            return index;
        }
        let index = self.profile.string_table.len() as i64;
        self.profile.string_table.push(s.to_string());
        self.strings.insert(s.to_string(), index);
        index
    }

    fn value_type(&mut self, r#type: &str, unit: &str) -> ValueType {
        ValueType {
            r#type: self.string(r#type),
            unit: self.string(unit),
        }
    }

    fn function(&mut self, frame: &Frame) -> u64 {
        let key = (frame.function.clone(), frame.file.clone());
        if let Some(&id) = self.functions.get(&key) {
            return id;
        }
        let id = self.profile.function.len() as u64 + 1;
        let name = self.string(&frame.function);
        let filename = frame.file.as_deref().map_or(0, |f| self.string(f));
        self.profile.function.push(Function {
            id,
            name,
            // Our names are already what the user should see (demangled, or Python
            // qualnames): there is no separate linker name to keep.
            system_name: name,
            filename,
            start_line: 0,
        });
        self.functions.insert(key, id);
        id
    }

    fn mapping(&mut self, module: &str) -> u64 {
        if let Some(&id) = self.mappings.get(module) {
            return id;
        }
        let id = self.profile.mapping.len() as u64 + 1;
        let filename = self.string(module);
        self.profile.mapping.push(Mapping {
            id,
            filename,
            // Frames are symbolized already; saying so stops pprof from trying to symbolize
            // them again from (absent) addresses and binaries.
            has_functions: true,
            has_filenames: true,
            has_line_numbers: true,
            ..Default::default()
        });
        self.mappings.insert(module.to_string(), id);
        id
    }

    fn location(&mut self, frame: &Frame) -> u64 {
        let key: LocationKey = (
            frame.function.clone(),
            frame.file.clone(),
            frame.line,
            module_of(frame).map(str::to_string),
        );
        if let Some(&id) = self.locations.get(&key) {
            return id;
        }
        let id = self.profile.location.len() as u64 + 1;
        let function_id = self.function(frame);
        let mapping_id = module_of(frame).map_or(0, |m| self.mapping(m));
        self.profile.location.push(Location {
            id,
            mapping_id,
            // Addresses are not kept in the recording; a location is identified by its line.
            address: 0,
            line: vec![Line {
                function_id,
                line: frame.line.map_or(0, i64::from),
            }],
            is_folded: false,
        });
        self.locations.insert(key, id);
        id
    }

    fn str_label(&mut self, key: &str, value: &str) -> Label {
        Label {
            key: self.string(key),
            str: self.string(value),
            ..Default::default()
        }
    }

    fn num_label(&mut self, key: &str, value: u64) -> Label {
        Label {
            key: self.string(key),
            num: value as i64,
            ..Default::default()
        }
    }

    // One call per sample with everything it is labelled with; a struct for these would only
    // be unpacked again here.
    #[allow(clippy::too_many_arguments)]
    fn sample(
        &mut self,
        which: usize,
        weight_ns: u64,
        frames: &[Frame],
        pid: u32,
        tid: u32,
        thread: &str,
        kind: &str,
        syscall: Option<&str>,
    ) {
        // A zero-weight stack adds nothing to any view and only bloats the file.
        if weight_ns == 0 {
            return;
        }
        // Frames are innermost first, which is pprof's order too (location_id[0] is the leaf).
        let location_id = if frames.is_empty() {
            // The stack was lost (see the drop counters) but its time is real. pprof accepts a
            // sample without locations, yet consumers show such time nowhere (`go tool pprof`
            // counts it in the total only): a placeholder frame keeps it visible.
            vec![self.location(&Frame {
                column: None,
                function: NO_STACK.into(),
                file: None,
                line: None,
                module: None,
                kind: FrameKind::Native,
            })]
        } else {
            frames.iter().map(|f| self.location(f)).collect()
        };
        let mut value = vec![0i64; 2];
        value[which] = i64::try_from(weight_ns).unwrap_or(i64::MAX);
        let mut label = vec![
            self.num_label("pid", u64::from(pid)),
            self.num_label("tid", u64::from(tid)),
            self.str_label("thread", thread),
            self.str_label("kind", kind),
        ];
        if let Some(syscall) = syscall {
            label.push(self.str_label("syscall", syscall));
        }
        self.profile.sample.push(Sample {
            location_id,
            value,
            label,
        });
    }
}

fn build(recording: &Recording) -> Profile {
    let mut b = Builder::new();
    let sample_type = vec![
        b.value_type("stall", "nanoseconds"),
        b.value_type("offcpu", "nanoseconds"),
    ];
    b.profile.sample_type = sample_type;
    // Stall time is what the tool is about: make it the view consumers open by default.
    b.profile.default_sample_type = b.profile.sample_type[STALL].r#type;
    // On-CPU weights come from sampling at this period; off-CPU weights are measured exactly.
    b.profile.period_type = Some(b.value_type("cpu", "nanoseconds"));
    b.profile.period = 1_000_000_000u64
        .checked_div(recording.sample_freq_hz)
        .and_then(|ns| i64::try_from(ns).ok())
        .unwrap_or(0);
    // Only CLOCK_MONOTONIC times are recorded, which mean nothing as wall-clock time: leave
    // time_nanos unset (0) rather than invent a date.
    b.profile.time_nanos = 0;
    b.profile.duration_nanos =
        i64::try_from(recording.end_ns.saturating_sub(recording.start_ns)).unwrap_or(i64::MAX);

    let comments = [
        format!(
            "stallscope: stalls over {} ms",
            recording.threshold_ns as f64 / 1e6
        ),
        format!(
            "lost events: {}, stacks dropped: {}",
            recording.lost_events, recording.drops.stacks_dropped
        ),
    ];
    for comment in comments {
        let index = b.string(&comment);
        b.profile.comment.push(index);
    }

    for stall in &recording.stalls {
        for stack in &stall.stacks {
            b.sample(
                STALL,
                stack.weight_ns,
                &stack.frames,
                stall.pid,
                stall.tid,
                &stall.comm,
                stack.kind.as_str(),
                stack.syscall.as_deref(),
            );
        }
    }
    for entry in &recording.offcpu {
        b.sample(
            OFFCPU,
            entry.weight_ns,
            &entry.frames,
            entry.pid,
            entry.tid,
            &entry.comm,
            "off_cpu",
            entry.syscall.as_deref(),
        );
    }
    b.profile
}

/// The recording as a gzip-compressed pprof `Profile` (`profile.pb.gz`).
pub fn profile_pb_gz(recording: &Recording) -> Result<Vec<u8>> {
    let bytes = prost::Message::encode_to_vec(&build(recording));
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&bytes)
        .context("compressing the pprof profile")?;
    gz.finish().context("compressing the pprof profile")
}

/// Reads back what [`profile_pb_gz`] wrote.
#[cfg(test)]
fn decode_for_test(bytes: &[u8]) -> Result<Profile> {
    use std::io::Read as _;
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut raw)
        .context("gunzip")?;
    <Profile as prost::Message>::decode(raw.as_slice()).context("decoding the profile")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{OffCpuRecord, ProcessRecord, StackRecord, StallRecord, Verdict};

    fn frame(function: &str, file: Option<&str>, line: Option<u32>, kind: FrameKind) -> Frame {
        Frame {
            column: None,
            function: function.into(),
            file: file.map(Into::into),
            line,
            module: match kind {
                FrameKind::Kernel => None,
                FrameKind::Python => Some("/usr/bin/python3.12".into()),
                _ => Some("/srv/server".into()),
            },
            kind,
        }
    }

    fn stack(kind: &str, weight_ns: u64, syscall: Option<&str>, frames: Vec<Frame>) -> StackRecord {
        StackRecord {
            kind: serde_json::from_value(serde_json::Value::from(kind)).expect("a stack kind"),
            weight_ns,
            count: 1,
            syscall: syscall.map(Into::into),
            frames,
            waker: None,
        }
    }

    fn recording() -> Recording {
        let handler = frame("handle", Some("app.py"), Some(42), FrameKind::Python);
        let main = frame("main", Some("server.c"), Some(7), FrameKind::Native);
        let stall = StallRecord {
            start_ns: 1_000_000_000,
            end_ns: 1_300_000_000,
            on_cpu_ns: 200_000_000,
            off_cpu_ns: 90_000_000,
            runqueue_ns: 10_000_000,
            stacks: vec![
                stack(
                    "on_cpu",
                    200_000_000,
                    None,
                    vec![
                        frame("burn_cpu", Some("server.c"), Some(3), FrameKind::Native),
                        handler.clone(),
                        main.clone(),
                    ],
                ),
                stack(
                    "off_cpu",
                    90_000_000,
                    Some("read"),
                    vec![
                        frame("schedule", None, None, FrameKind::Kernel),
                        handler.clone(),
                        main.clone(),
                    ],
                ),
                stack("runqueue", 10_000_000, None, vec![main.clone()]),
                // Weightless stacks carry nothing and are left out.
                stack("lock", 0, None, vec![main.clone()]),
            ],
            ..crate::model::fixtures::stall(10, 11, 300_000_000)
        };
        Recording {
            recorded_ns: 5_000_000_000,
            start_ns: 1_000,
            end_ns: 5_000_001_000,
            processes: vec![ProcessRecord {
                pid: 10,
                comm: "server".into(),
                exe: "/srv/server".into(),
                started_ns: None,
                exited_ns: None,
                exit_code: None,
                exit_signal: None,
            }],
            stalls: vec![stall],
            offcpu: vec![
                OffCpuRecord {
                    pid: 10,
                    tid: 12,
                    comm: "worker".into(),
                    weight_ns: 4_000_000_000,
                    syscall: Some("futex".into()),
                    frames: vec![frame("schedule", None, None, FrameKind::Kernel), main].into(),
                    waker: None,
                },
                OffCpuRecord {
                    pid: 10,
                    tid: 11,
                    comm: "server".into(),
                    weight_ns: 700_000_000,
                    syscall: None,
                    frames: Vec::new().into(),
                    waker: None,
                },
            ],
            verdict: Verdict::default(),
            // The rest as the shared fixture has it (empty).
            ..crate::model::fixtures::recording()
        }
    }

    fn decoded(recording: &Recording) -> Profile {
        let bytes = profile_pb_gz(recording).expect("encodes");
        // gzip magic: consumers sniff it to decide whether to gunzip.
        assert_eq!(&bytes[..2], &[0x1f, 0x8b]);
        decode_for_test(&bytes).expect("decodes")
    }

    fn s(p: &Profile, index: i64) -> &str {
        &p.string_table[usize::try_from(index).expect("index >= 0")]
    }

    /// The function names of a sample, leaf first.
    fn names(p: &Profile, sample: &Sample) -> Vec<String> {
        sample
            .location_id
            .iter()
            .map(|id| {
                let loc = &p.location[usize::try_from(*id - 1).expect("id")];
                assert_eq!(loc.id, *id, "location ids are their 1-based index");
                assert_eq!(loc.line.len(), 1);
                let func = &p.function[usize::try_from(loc.line[0].function_id - 1).expect("id")];
                assert_eq!(func.id, loc.line[0].function_id);
                s(p, func.name).to_string()
            })
            .collect()
    }

    fn label<'a>(p: &Profile, sample: &'a Sample, key: &str) -> Option<&'a Label> {
        sample.label.iter().find(|l| s(p, l.key) == key)
    }

    #[test]
    fn header_follows_the_pprof_conventions() {
        let p = decoded(&recording());
        assert_eq!(p.string_table[0], "");
        let types: Vec<(&str, &str)> = p
            .sample_type
            .iter()
            .map(|t| (s(&p, t.r#type), s(&p, t.unit)))
            .collect();
        assert_eq!(
            types,
            vec![("stall", "nanoseconds"), ("offcpu", "nanoseconds")]
        );
        assert_eq!(s(&p, p.default_sample_type), "stall");
        assert_eq!(p.duration_nanos, 5_000_000_000);
        assert_eq!(p.time_nanos, 0);
        let period_type = p.period_type.as_ref().expect("period type");
        assert_eq!(s(&p, period_type.r#type), "cpu");
        assert_eq!(p.period, 1_000_000_000 / 99);
        assert!(
            p.comment
                .iter()
                .any(|c| s(&p, *c).contains("stalls over 100 ms"))
        );
    }

    #[test]
    fn stall_stacks_become_stall_samples_leaf_first_with_labels() {
        let p = decoded(&recording());
        // 3 weighted stall stacks + 2 off-CPU entries; the weightless lock stack is dropped.
        assert_eq!(p.sample.len(), 5);
        let on_cpu = &p.sample[0];
        assert_eq!(on_cpu.value, vec![200_000_000, 0]);
        assert_eq!(names(&p, on_cpu), vec!["burn_cpu", "handle", "main"]);
        assert_eq!(label(&p, on_cpu, "pid").expect("pid").num, 10);
        assert_eq!(label(&p, on_cpu, "tid").expect("tid").num, 11);
        assert_eq!(
            s(&p, label(&p, on_cpu, "thread").expect("thread").str),
            "server"
        );
        assert_eq!(
            s(&p, label(&p, on_cpu, "kind").expect("kind").str),
            "on_cpu"
        );
        assert!(label(&p, on_cpu, "syscall").is_none());

        let blocked = &p.sample[1];
        assert_eq!(blocked.value, vec![90_000_000, 0]);
        assert_eq!(names(&p, blocked), vec!["schedule", "handle", "main"]);
        assert_eq!(
            s(&p, label(&p, blocked, "kind").expect("kind").str),
            "off_cpu"
        );
        assert_eq!(
            s(&p, label(&p, blocked, "syscall").expect("syscall").str),
            "read"
        );
        let runqueue = &p.sample[2];
        assert_eq!(
            s(&p, label(&p, runqueue, "kind").expect("kind").str),
            "runqueue"
        );
        let stall_total: i64 = p.sample.iter().map(|x| x.value[STALL]).sum();
        assert_eq!(stall_total, 300_000_000);
    }

    #[test]
    fn offcpu_entries_become_offcpu_samples() {
        let p = decoded(&recording());
        let futex = &p.sample[3];
        assert_eq!(futex.value, vec![0, 4_000_000_000]);
        assert_eq!(names(&p, futex), vec!["schedule", "main"]);
        assert_eq!(
            s(&p, label(&p, futex, "thread").expect("thread").str),
            "worker"
        );
        assert_eq!(label(&p, futex, "tid").expect("tid").num, 12);
        assert_eq!(
            s(&p, label(&p, futex, "kind").expect("kind").str),
            "off_cpu"
        );
        assert_eq!(
            s(&p, label(&p, futex, "syscall").expect("syscall").str),
            "futex"
        );
        // A lost stack still counts, under a placeholder frame.
        let unknown = &p.sample[4];
        assert_eq!(names(&p, unknown), vec![NO_STACK]);
        assert_eq!(unknown.value, vec![0, 700_000_000]);
    }

    #[test]
    fn frames_functions_and_mappings_are_interned() {
        let p = decoded(&recording());
        // Each function once, however often used.
        let mut functions: Vec<&str> = p.function.iter().map(|f| s(&p, f.name)).collect();
        functions.sort_unstable();
        assert_eq!(
            functions,
            vec![NO_STACK, "burn_cpu", "handle", "main", "schedule"]
        );
        assert_eq!(p.location.len(), 5);
        for (i, f) in p.function.iter().enumerate() {
            assert_eq!(f.id, i as u64 + 1);
            assert_eq!(f.system_name, f.name);
        }
        let handle = p
            .function
            .iter()
            .find(|f| s(&p, f.name) == "handle")
            .expect("handle");
        assert_eq!(s(&p, handle.filename), "app.py");
        let handle_loc = p
            .location
            .iter()
            .find(|l| l.line[0].function_id == handle.id)
            .expect("location");
        assert_eq!(handle_loc.line[0].line, 42);
        let mapping = &p.mapping[usize::try_from(handle_loc.mapping_id - 1).expect("id")];
        assert_eq!(s(&p, mapping.filename), "/usr/bin/python3.12");
        assert!(mapping.has_functions);
        // Kernel frames have no module: they get perf's name for the kernel.
        let schedule = p
            .function
            .iter()
            .find(|f| s(&p, f.name) == "schedule")
            .expect("schedule");
        assert_eq!(s(&p, schedule.filename), "");
        let schedule_loc = p
            .location
            .iter()
            .find(|l| l.line[0].function_id == schedule.id)
            .expect("location");
        let kernel = &p.mapping[usize::try_from(schedule_loc.mapping_id - 1).expect("id")];
        assert_eq!(s(&p, kernel.filename), "[kernel.kallsyms]");
        // A user frame without a module (and the placeholder) has no mapping.
        let unknown = p
            .location
            .iter()
            .find(|l| s(&p, p.function[(l.line[0].function_id - 1) as usize].name) == NO_STACK)
            .expect("placeholder");
        assert_eq!(unknown.mapping_id, 0);
        assert_eq!(p.mapping.len(), 3);
        // Every string is stored once.
        let mut strings = p.string_table.clone();
        strings.sort_unstable();
        strings.dedup();
        assert_eq!(strings.len(), p.string_table.len());
    }

    #[test]
    fn same_function_on_different_lines_shares_the_function_not_the_location() {
        let mut rec = recording();
        rec.stalls[0].stacks = vec![
            stack(
                "on_cpu",
                1,
                None,
                vec![frame("f", Some("a.py"), Some(1), FrameKind::Python)],
            ),
            stack(
                "on_cpu",
                1,
                None,
                vec![frame("f", Some("a.py"), Some(2), FrameKind::Python)],
            ),
            stack(
                "on_cpu",
                1,
                None,
                vec![frame("f", Some("b.py"), Some(1), FrameKind::Python)],
            ),
        ];
        rec.offcpu.clear();
        let p = decoded(&rec);
        assert_eq!(p.location.len(), 3);
        assert_eq!(p.function.len(), 2, "one function per (name, file)");
        assert_eq!(
            p.location[0].line[0].function_id,
            p.location[1].line[0].function_id
        );
        assert_ne!(
            p.location[0].line[0].function_id,
            p.location[2].line[0].function_id
        );
    }

    #[test]
    fn empty_recording_is_a_valid_empty_profile() {
        let mut rec = recording();
        rec.stalls.clear();
        rec.offcpu.clear();
        rec.sample_freq_hz = 0;
        rec.end_ns = 0; // before start: the duration saturates instead of wrapping
        let p = decoded(&rec);
        assert!(p.sample.is_empty());
        assert!(p.location.is_empty());
        assert_eq!(p.sample_type.len(), 2);
        assert_eq!(p.period, 0);
        assert_eq!(p.duration_nanos, 0);
    }

    #[test]
    fn output_is_deterministic() {
        let rec = recording();
        assert_eq!(
            profile_pb_gz(&rec).expect("a"),
            profile_pb_gz(&rec).expect("b")
        );
    }

    #[test]
    fn wire_format_uses_the_profile_proto_tags() {
        // Hand-check a few bytes of the uncompressed encoding against profile.proto, so a
        // mistyped tag cannot round-trip through our own decoder unnoticed.
        let vt = ValueType { r#type: 1, unit: 2 };
        assert_eq!(prost::Message::encode_to_vec(&vt), vec![0x08, 1, 0x10, 2]);
        let sample = Sample {
            location_id: vec![1, 2],
            value: vec![3, 0],
            label: vec![],
        };
        // Packed: field 1 and 2 as length-delimited (wire type 2).
        assert_eq!(
            prost::Message::encode_to_vec(&sample),
            vec![0x0a, 2, 1, 2, 0x12, 2, 3, 0]
        );
        let profile = Profile {
            string_table: vec![String::new()],
            duration_nanos: 5,
            default_sample_type: 1,
            ..Default::default()
        };
        // string_table = 6 (0x32, empty string), duration_nanos = 10 (0x50),
        // default_sample_type = 14 (0x70).
        assert_eq!(
            prost::Message::encode_to_vec(&profile),
            vec![0x32, 0, 0x50, 5, 0x70, 1]
        );
        let location = Location {
            id: 1,
            mapping_id: 0,
            address: 0,
            line: vec![Line {
                function_id: 3,
                line: 4,
            }],
            is_folded: true,
        };
        assert_eq!(
            prost::Message::encode_to_vec(&location),
            vec![0x08, 1, 0x22, 4, 0x08, 3, 0x10, 4, 0x28, 1]
        );
        let function = Function {
            id: 1,
            name: 2,
            system_name: 3,
            filename: 4,
            start_line: 5,
        };
        assert_eq!(
            prost::Message::encode_to_vec(&function),
            vec![0x08, 1, 0x10, 2, 0x18, 3, 0x20, 4, 0x28, 5]
        );
        let label = Label {
            key: 1,
            str: 2,
            num: 3,
            num_unit: 4,
        };
        assert_eq!(
            prost::Message::encode_to_vec(&label),
            vec![0x08, 1, 0x10, 2, 0x18, 3, 0x20, 4]
        );
        let mapping = Mapping {
            id: 1,
            filename: 2,
            has_functions: true,
            has_inline_frames: true,
            ..Default::default()
        };
        assert_eq!(
            prost::Message::encode_to_vec(&mapping),
            vec![0x08, 1, 0x28, 2, 0x38, 1, 0x50, 1]
        );
    }

    #[test]
    fn kernel_and_jit_frames_without_a_module_get_named_mappings() {
        let jit = Frame {
            column: None,
            function: "jitted".into(),
            file: None,
            line: None,
            module: None,
            kind: FrameKind::Jit,
        };
        assert_eq!(module_of(&jit), Some("[jit]"));
        let kernel = Frame {
            kind: FrameKind::Kernel,
            ..jit.clone()
        };
        assert_eq!(module_of(&kernel), Some("[kernel.kallsyms]"));
        let native = Frame {
            kind: FrameKind::Native,
            ..jit.clone()
        };
        assert_eq!(module_of(&native), None);
        let named = Frame {
            module: Some("/lib/libfoo.so".into()),
            ..kernel
        };
        assert_eq!(module_of(&named), Some("/lib/libfoo.so"));
    }
}
