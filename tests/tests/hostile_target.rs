//! A hostile target cannot make the root agent read files for it, inject markup or escape
//! sequences into what people open, or keep the agent's full privileges alive (issue #20):
//!
//! - names: a process (tests/targets/hostile_jit.c) names its thread with ESC, `<i>`, `|`, a
//!   backtick, `&`, a newline and bytes that are not UTF-8, runs from a directory whose name
//!   holds the same, and burns CPU in JIT code its perf map names
//!   `jit_spin<script>alert(1)</script>|`id`&amp;` plus ESC sequences: every output (stalls.json,
//!   trace.json, summary.md, junit.xml, the SVGs, folded files, the terminal) shows them
//!   escaped, the JSON files stay valid, and the JIT frame is still named;
//! - perf maps: a `/tmp/perf-PID.map` that is a symlink to a root-only file, or a map owned by
//!   another user, gives one warning line and none of that file's content in any output;
//! - capabilities: while recording, the agent's effective, permitted and bounding sets no
//!   longer hold CAP_SYS_ADMIN, CAP_BPF or CAP_PERFMON (read from /proc/AGENT/status), and the
//!   recording still finds the stall;
//! - files: a copy of a real binary whose `.eh_frame`, `.eh_frame_hdr`, `.debug_frame`,
//!   `.debug_line`, `.debug_info` and `.gnu_debuglink` are overwritten with random bytes
//!   (still runnable) is recorded without a crash, with the failure counted; a debug link
//!   naming a FIFO beside the binary does not hang the agent (debug files not followed, said in
//!   a hint, the function still named from the ELF symbols).
//! - DWARF and symbol names: a copy whose burn function and source file are renamed (same
//!   length) to markup, a pipe, a backtick and ESC in its DWARF strings and symbol table shows
//!   them escaped in every output; a function name that is not UTF-8 shows as module+offset.

use std::{
    ffi::OsStr,
    fs,
    os::unix::{ffi::OsStrExt as _, fs::PermissionsExt as _},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::Value;
use stallscope_tests::{Agent, AgentResult, Target, c_target, scratch_dir};

/// The target's thread name as the agent must show it: escapes for the control characters,
/// U+FFFD for the bytes that are not UTF-8, the markup characters kept (escaped per output).
const SHOWN_COMM: &str = "\\x1b[2J<i>|`&\\x0a\u{FFFD}\u{FFFD}";

/// A file only root can read, holding a perf map that would name every address.
struct Secret {
    path: PathBuf,
    token: String,
}

impl Secret {
    fn new(name: &str) -> Self {
        let token = format!("SECRET-{name}-{}", std::process::id());
        let path = PathBuf::from(format!("/tmp/stallscope-{token}"));
        fs::write(&path, format!("0 7fffffffffff {token}\n")).expect("write secret");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod secret");
        Secret { path, token }
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// The hostile target, copied into a directory with a hostile name, started with `args`.
struct Hostile {
    target: Target,
    perf_map: PathBuf,
}

impl Drop for Hostile {
    fn drop(&mut self) {
        let _ = self.target.child.kill();
        let _ = self.target.child.wait();
        let _ = fs::remove_file(&self.perf_map);
    }
}

fn start_hostile(name: &str, args: &[&str]) -> Hostile {
    let built = c_target("hostile_jit", &["-O2", "-g"]);
    let dir = scratch_dir(name);
    // Made of the same characters as the thread name: markup, a pipe, a backtick, ESC and
    // bytes that are not UTF-8. Readable by nobody, whom the target runs as.
    let hostile_dir = dir.join(OsStr::from_bytes(b"bin<b>|`&\x1b[7m\xff"));
    fs::create_dir_all(&hostile_dir).expect("hostile dir");
    for d in [&dir, &hostile_dir] {
        fs::set_permissions(d, fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let binary = hostile_dir.join("hostile_jit");
    fs::copy(&built, &binary).expect("copy target");
    let mut target = Target::spawn(Command::new(&binary).args(args));
    let ready = target
        .stdout
        .wait_for("ready", Duration::from_secs(10))
        .expect("hostile target did not start");
    let perf_map = PathBuf::from(ready.trim_start_matches("ready ").trim());
    Hostile { target, perf_map }
}

/// Records the hostile target for 3 s; also returns the /proc status of each of the agent's
/// threads, read while it recorded (capabilities are per thread).
fn record(hostile: &Hostile, name: &str, extra: &[&str]) -> (AgentResult, Vec<String>) {
    let out = scratch_dir(&format!("{name}-out"));
    let pid = hostile.target.pid().to_string();
    let mut args = vec!["--pid", &pid, "--duration", "3s"];
    args.extend_from_slice(extra);
    let agent = Agent::record(&args, &out);
    std::thread::sleep(Duration::from_millis(1500));
    // Read while it records: after attaching, the agent has dropped what it no longer needs.
    let statuses = fs::read_dir(format!("/proc/{}/task", agent.pid()))
        .map(|tasks| {
            tasks
                .filter_map(|task| fs::read_to_string(task.ok()?.path().join("status")).ok())
                .collect()
        })
        .unwrap_or_default();
    (agent.wait(), statuses)
}

/// Every string anywhere in a JSON value.
fn strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
        Value::Object(map) => map.iter().for_each(|(k, v)| {
            out.push(k.clone());
            strings(v, out);
        }),
        _ => {}
    }
}

/// The text outputs of a recording, by file name (pprof is gzip: checked by decoding below).
fn text_outputs(dir: &Path) -> Vec<(String, Vec<u8>)> {
    [
        "stalls.json",
        "trace.json",
        "summary.md",
        "junit.xml",
        "flamegraph.svg",
        "offcpu.svg",
        "stalls.folded",
        "offcpu.folded",
        "symbols.json",
        "report.html",
    ]
    .iter()
    .filter_map(|name| Some((name.to_string(), fs::read(dir.join(name)).ok()?)))
    .collect()
}

fn gunzip(path: &Path) -> Vec<u8> {
    let out = Command::new("gzip")
        .arg("-dc")
        .arg(path)
        .output()
        .expect("run gzip (in the machine image)");
    assert!(out.status.success(), "{} is not gzip", path.display());
    out.stdout
}

fn has_control(bytes: &[u8]) -> bool {
    // ESC, BEL, CR and the other C0 controls except tab and newline (which the formats
    // themselves use), DEL, and the C1 controls as UTF-8 (0xc2 0x80..0x9f).
    bytes
        .iter()
        .any(|&b| (b < 0x20 && b != b'\n' && b != b'\t') || b == 0x7f)
        || bytes
            .windows(2)
            .any(|w| w[0] == 0xc2 && (0x80..=0x9f).contains(&w[1]))
}

/// The checks every hostile name must pass in every output of `result`: no control character
/// in any JSON string or any output file, every file UTF-8, the JSON files valid, none of
/// `markup` raw in the SVG, junit.xml, summary.md or report.html, the XML well-formed, and no
/// escape sequence in anything the agent printed. Returns the text outputs by name.
fn assert_every_output_escaped(result: &AgentResult, markup: &[&str]) -> Vec<(String, Vec<u8>)> {
    let mut all = Vec::new();
    strings(&result.stalls_json(), &mut all);
    assert!(
        all.iter().all(|s| !s.chars().any(char::is_control)),
        "control characters in stalls.json"
    );
    let outputs = text_outputs(&result.out_dir);
    assert!(
        outputs.len() >= 8,
        "outputs missing: {:?}",
        outputs.iter().map(|o| &o.0).collect::<Vec<_>>()
    );
    for (name, bytes) in &outputs {
        assert!(!has_control(bytes), "{name} holds control characters");
        assert!(std::str::from_utf8(bytes).is_ok(), "{name} is not UTF-8");
    }
    for name in ["trace.json", "symbols.json"] {
        serde_json::from_str::<Value>(&output_text(&outputs, name))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    for name in ["flamegraph.svg", "junit.xml", "summary.md", "report.html"] {
        let text = output_text(&outputs, name);
        // (inferno's SVG has a <script> of its own: the target's markup is more specific.)
        for markup in markup {
            if let Some(at) = text.find(markup) {
                let context = &text[at.saturating_sub(80)..(at + 80).min(text.len())];
                panic!("{name} carries the target's markup {markup}: ...{context}...");
            }
        }
    }
    // Still well-formed XML, as a browser or a CI's JUnit reader needs.
    for name in ["flamegraph.svg", "offcpu.svg", "junit.xml"] {
        let lint = Command::new("xmllint")
            .arg("--noout")
            .arg(result.out_dir.join(name))
            .output()
            .expect("run xmllint (`cargo xtask setup` installs libxml2-utils)");
        assert!(
            lint.status.success(),
            "{name} is not well-formed: {}",
            String::from_utf8_lossy(&lint.stderr)
        );
    }
    for line in result.stdout.iter().chain(&result.stderr) {
        assert!(
            !has_control(line.as_bytes()),
            "control characters reached the terminal: {line:?}"
        );
    }
    outputs
}

fn output_text(outputs: &[(String, Vec<u8>)], name: &str) -> String {
    outputs
        .iter()
        .find(|o| o.0 == name)
        .map(|o| String::from_utf8_lossy(&o.1).into_owned())
        .unwrap_or_else(|| panic!("no {name}"))
}

/// The jit frame of the hostile map, from the stall on the target's thread.
fn jit_frames(json: &Value) -> Vec<String> {
    let mut names = Vec::new();
    for stall in json["stalls"].as_array().into_iter().flatten() {
        for stack in stall["stacks"].as_array().into_iter().flatten() {
            for frame in stack["frames"].as_array().into_iter().flatten() {
                if frame["kind"] == "jit" {
                    names.extend(frame["function"].as_str().map(str::to_string));
                }
            }
        }
    }
    names
}

fn cap_mask(status: &str, field: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_MODULE: u32 = 16;
const CAP_BPF: u32 = 39;
const CAP_PERFMON: u32 = 38;

#[test]
fn hostile_names_come_out_escaped_in_every_output_and_capabilities_are_dropped() {
    let hostile = start_hostile("hostile-names", &["names"]);
    let (result, statuses) = record(&hostile, "hostile-names", &["--fail-on", "count=0"]);
    let stderr = result.stderr.join("\n");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        result.status.code(),
        Some(3),
        "a stall, over budget: {stderr}"
    );

    // The recording works after the capabilities were dropped: the stall, its thread, the
    // JIT frame named from the perf map.
    let json = result.stalls_json();
    let stalls = json["stalls"].as_array().expect("stalls");
    assert!(!stalls.is_empty(), "no stall found: {stderr}");
    assert!(
        stalls.iter().any(|s| s["comm"] == SHOWN_COMM),
        "thread name not shown escaped: {:?}",
        stalls.iter().map(|s| &s["comm"]).collect::<Vec<_>>()
    );
    let jit = jit_frames(&json);
    assert!(
        jit.iter()
            .any(|f| f.starts_with("jit_spin<script>alert(1)</script>|`id`&amp;\\x1b[31mRED")),
        "JIT frame not named from the perf map, or not escaped: {jit:?}"
    );

    let outputs =
        assert_every_output_escaped(&result, &["<script>alert", "</script>|", "<i>", "<b>"]);
    let output = |name: &str| output_text(&outputs, name);
    assert!(
        output("flamegraph.svg").contains("jit_spin&lt;script&gt;"),
        "the SVG still names the JIT frame"
    );
    // summary.md: the stall row still has its six cells (the `|` in the name did not split it).
    let summary = output("summary.md");
    let row = summary
        .lines()
        .find(|l| l.contains("alert(1)"))
        .unwrap_or_else(|| panic!("no stall row in summary.md:\n{summary}"));
    let cells = row.replace("\\|", "").matches('|').count();
    assert_eq!(cells, 6, "stall row split by the target's `|`: {row}");
    let pprof = gunzip(&result.out_dir.join("profile.pb.gz"));
    // Protobuf is binary: look for the names themselves in its string table.
    let pprof = String::from_utf8_lossy(&pprof);
    assert!(
        pprof.contains("&amp;\\x1b[31mRED"),
        "pprof names the JIT frame escaped"
    );
    assert!(
        !pprof.contains("\x1b[31m") && !pprof.contains("\x1b[2J"),
        "ESC sequences in the pprof string table"
    );

    // Capabilities: read while it recorded, in every thread of the agent.
    assert!(
        !statuses.is_empty(),
        "no status of the agent read while it recorded"
    );
    for status in &statuses {
        for field in ["CapEff:", "CapPrm:", "CapBnd:"] {
            let mask = cap_mask(status, field);
            for (cap, name) in [
                (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
                (CAP_BPF, "CAP_BPF"),
                (CAP_PERFMON, "CAP_PERFMON"),
                (CAP_SYS_MODULE, "CAP_SYS_MODULE"),
            ] {
                assert_eq!(
                    mask & (1 << cap),
                    0,
                    "{field} still holds {name}: {mask:#x}\n{status}"
                );
            }
        }
    }
    let effective = cap_mask(&statuses[0], "CapEff:");
    assert_ne!(
        effective & (1 << CAP_SYS_PTRACE),
        0,
        "CAP_SYS_PTRACE is still needed: {effective:#x}"
    );
    assert_ne!(
        effective & (1 << CAP_DAC_READ_SEARCH),
        0,
        "CAP_DAC_READ_SEARCH is still needed: {effective:#x}"
    );
}

fn assert_perf_map_refused(mode: &[&str], name: &str, why: &str) {
    let secret = Secret::new(name);
    let mut args = mode.to_vec();
    if mode == ["symlink"] {
        args.push(secret.path.to_str().expect("utf-8 path"));
    }
    let hostile = start_hostile(name, &args);
    if mode == ["owner"] {
        // A map that would name everything, owned by a user who is neither the target's nor
        // root: the target could have had it planted by that user.
        fs::write(
            &hostile.perf_map,
            format!("0 7fffffffffff {}\n", secret.token),
        )
        .expect("map");
        std::os::unix::fs::chown(&hostile.perf_map, Some(12345), Some(12345)).expect("chown");
    }
    let (result, _) = record(&hostile, name, &[]);
    let stderr = result.stderr.join("\n");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(result.status.code(), Some(0), "{stderr}");
    let warnings: Vec<&String> = result
        .stderr
        .iter()
        .filter(|l| l.contains("perf map not read"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning line: {stderr}");
    assert!(warnings[0].contains(why), "{}", warnings[0]);
    let json = result.stalls_json();
    assert!(
        !json["stalls"].as_array().expect("stalls").is_empty(),
        "the stall is still found"
    );
    for (file, bytes) in text_outputs(&result.out_dir) {
        assert!(
            !String::from_utf8_lossy(&bytes).contains(&secret.token),
            "{file} shows the secret"
        );
    }
    let pprof = gunzip(&result.out_dir.join("profile.pb.gz"));
    assert!(
        !String::from_utf8_lossy(&pprof).contains(&secret.token),
        "pprof shows the secret"
    );
    let printed = format!("{}\n{stderr}", result.stdout.join("\n"));
    assert!(
        !printed.contains(&secret.token),
        "the terminal shows the secret"
    );
}

#[test]
fn perf_map_symlink_to_a_root_only_file_is_not_read() {
    assert_perf_map_refused(&["symlink"], "perfmap-symlink", "symbolic link");
}

#[test]
fn perf_map_owned_by_another_user_is_not_read() {
    assert_perf_map_refused(&["owner"], "perfmap-owner", "owned by uid 12345");
}

/// (name, file offset, size) of each section, from `readelf -SW`.
fn sections(binary: &Path) -> Vec<(String, u64, u64)> {
    let out = Command::new("readelf")
        .arg("-SW")
        .arg(binary)
        .output()
        .expect("run readelf (binutils, installed with gcc by `cargo xtask setup`)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_once(']')?.1.split_whitespace().collect();
            let hex = |i: usize| u64::from_str_radix(fields.get(i)?, 16).ok();
            Some((fields.first()?.to_string(), hex(3)?, hex(4)?))
        })
        .collect()
}

fn run_tool(program: &str, args: &[&OsStr]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program} (binutils, from `cargo xtask setup`): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A copy of the hostile target in `dir`, with its DWARF split into `hostile_jit.debug` and a
/// `.gnu_debuglink` to it (as distributions ship binaries).
fn binary_with_debug_link(dir: &Path) -> PathBuf {
    let built = c_target("hostile_jit", &["-O2", "-g"]);
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).expect("chmod");
    let binary = dir.join("hostile_jit");
    fs::copy(&built, &binary).expect("copy");
    let debug = dir.join("hostile_jit.debug");
    run_tool(
        "objcopy",
        &[
            OsStr::new("--only-keep-debug"),
            binary.as_os_str(),
            debug.as_os_str(),
        ],
    );
    let mut link = std::ffi::OsString::from("--add-gnu-debuglink=");
    link.push(&debug);
    run_tool("objcopy", &[&link, binary.as_os_str()]);
    binary
}

/// Records the target started from `binary` (burning in `burn_native`) for 3 s.
fn record_native(binary: &Path, name: &str) -> (AgentResult, Value) {
    let mut target = Target::spawn(Command::new(binary).arg("native"));
    target
        .stdout
        .wait_for("ready", Duration::from_secs(10))
        .expect("target did not start");
    let hostile = Hostile {
        target,
        perf_map: PathBuf::from("/nonexistent"),
    };
    let (result, _) = record(&hostile, name, &[]);
    let stderr = result.stderr.join("\n");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(result.status.code(), Some(0), "{stderr}");
    let json = result.stalls_json();
    assert!(
        !json["stalls"].as_array().expect("stalls").is_empty(),
        "the burn is still found: {stderr}"
    );
    (result, json)
}

#[test]
fn binary_with_sections_overwritten_by_random_bytes_is_recorded_with_the_failure_counted() {
    let dir = scratch_dir("corrupt-binary");
    let binary = binary_with_debug_link(&dir);
    let wanted = [
        ".eh_frame",
        ".eh_frame_hdr",
        ".debug_frame",
        ".debug_line",
        ".debug_info",
        ".debug_abbrev",
        ".debug_str",
        ".gnu_debuglink",
    ];
    let mut bytes = fs::read(&binary).expect("read copy");
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut overwritten = Vec::new();
    for (name, offset, size) in sections(&binary) {
        if !wanted.contains(&name.as_str()) {
            continue;
        }
        for byte in &mut bytes[offset as usize..(offset + size) as usize] {
            // xorshift64: random enough, the same every run.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *byte = state as u8;
        }
        overwritten.push(name);
    }
    for needed in [".eh_frame", ".debug_line", ".debug_info", ".gnu_debuglink"] {
        assert!(
            overwritten.iter().any(|n| n == needed),
            "{needed} not found: {overwritten:?}"
        );
    }
    fs::write(&binary, &bytes).expect("write corrupted copy");
    // The DWARF in the binary is garbage now; so is the debug file's, reached by no link.
    let (_, json) = record_native(&binary, "corrupt-binary");
    let unwind = &json["unwind"];
    let counted = ["truncated", "files_failed", "symbol_failures"]
        .iter()
        .map(|k| unwind[k].as_u64().unwrap_or(0))
        .sum::<u64>();
    assert!(counted > 0, "the failure is counted: {unwind}");
}

/// `burn_native` (11 bytes) and `hostile_jit.c` (13 bytes) renamed, at the same lengths, to
/// names made of markup, a pipe, a backtick, ESC and a byte that is not UTF-8.
const HOSTILE_FUNCTION: &[u8; 11] = b"b<i>|`&\x1b[zn";
const HOSTILE_FILE: &[u8; 13] = b"h<b>|`&\x1b]\xffx.c";
/// How the agent must show them: the escapes of `sanitize::name`.
const SHOWN_FUNCTION: &str = "b<i>|`&\\x1b[zn";
const SHOWN_FILE_END: &str = "h<b>|`&\\x1b]\u{FFFD}x.c";

/// Overwrites every occurrence of `from` with `to` (same length) inside the named sections;
/// returns the sections where it was found.
fn rename_in_sections(
    bytes: &mut [u8],
    binary: &Path,
    names: &[&str],
    from: &[u8],
    to: &[u8],
) -> Vec<String> {
    assert_eq!(from.len(), to.len(), "a rename keeps the length");
    let mut found = Vec::new();
    for (name, offset, size) in sections(binary) {
        if !names.contains(&name.as_str()) {
            continue;
        }
        let section = &mut bytes[offset as usize..(offset + size) as usize];
        let mut at = 0;
        while let Some(pos) = section[at..].windows(from.len()).position(|w| w == from) {
            section[at + pos..at + pos + to.len()].copy_from_slice(to);
            at += pos + to.len();
            found.push(name.clone());
        }
    }
    found
}

/// A copy of the hostile target whose `burn_native` is called `function` in its DWARF and ELF
/// symbols, and whose source file is called [`HOSTILE_FILE`] in its DWARF.
fn binary_with_renamed_burn(name: &str, function: &[u8]) -> PathBuf {
    let dir = scratch_dir(name);
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
    let built = c_target("hostile_jit", &["-O2", "-g"]);
    let binary = dir.join("hostile_jit");
    fs::copy(&built, &binary).expect("copy");
    let mut bytes = fs::read(&binary).expect("read copy");
    // The function's name in the DWARF strings and the ELF symbol table; the source file's
    // name in the DWARF line table's strings (where DWARF 5 keeps it) and the CU's name.
    let string_sections = [
        ".debug_str",
        ".debug_line_str",
        ".debug_info",
        ".debug_line",
        ".strtab",
    ];
    let function_in = rename_in_sections(
        &mut bytes,
        &binary,
        &string_sections,
        b"burn_native",
        function,
    );
    let file_in = rename_in_sections(
        &mut bytes,
        &binary,
        &string_sections,
        b"hostile_jit.c",
        HOSTILE_FILE,
    );
    assert!(
        function_in.iter().any(|s| s == ".strtab")
            && function_in.iter().any(|s| s.starts_with(".debug")),
        "burn_native in the symbols and the DWARF: {function_in:?}"
    );
    assert!(!file_in.is_empty(), "hostile_jit.c in the DWARF strings");
    fs::write(&binary, &bytes).expect("write renamed copy");
    binary
}

/// Every frame of every stall's stacks.
fn stall_frames(json: &Value) -> Vec<&Value> {
    json["stalls"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["stacks"].as_array().into_iter().flatten())
        .flat_map(|st| st["frames"].as_array().into_iter().flatten())
        .collect()
}

#[test]
fn hostile_function_and_file_names_in_dwarf_and_elf_symbols_come_out_escaped() {
    let binary = binary_with_renamed_burn("hostile-dwarf", HOSTILE_FUNCTION);
    let (result, json) = record_native(&binary, "hostile-dwarf");
    let frames = stall_frames(&json);
    let burn = frames
        .iter()
        .find(|f| f["function"] == SHOWN_FUNCTION)
        .unwrap_or_else(|| {
            let names: Vec<_> = frames.iter().map(|f| &f["function"]).collect();
            panic!("the renamed burn function is named, escaped: {names:?}")
        });
    let file = burn["file"].as_str().unwrap_or_default();
    assert!(
        file.ends_with(SHOWN_FILE_END),
        "its file named from the DWARF line table, escaped: {burn}"
    );
    let outputs = assert_every_output_escaped(&result, &["<i>", "<b>"]);
    assert!(
        output_text(&outputs, "flamegraph.svg").contains("b&lt;i&gt;|`&amp;"),
        "the SVG names the burn function, escaped"
    );
}

#[test]
fn function_name_that_is_not_utf8_is_shown_as_its_module_and_offset() {
    // blazesym reads symbol names as UTF-8: a name that is not is no name, so the frame is
    // shown by module and offset (and the stall still found), never as raw bytes.
    let binary = binary_with_renamed_burn("dwarf-not-utf8", b"burn\xff\xfe<i>\x1bn");
    let (result, json) = record_native(&binary, "dwarf-not-utf8");
    let frames = stall_frames(&json);
    let leaves: Vec<&str> = json["stalls"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["stacks"].as_array().into_iter().flatten())
        .filter_map(|st| st["frames"][0]["function"].as_str())
        .collect();
    assert!(
        leaves.iter().any(|f| f.starts_with("hostile_jit+0x")),
        "the burn is shown by module and offset: {leaves:?}"
    );
    assert!(
        frames.iter().any(|f| f["function"] == "main"),
        "the other frames are still named"
    );
    assert_every_output_escaped(&result, &["<i>"]);
}

#[test]
fn debug_link_to_a_fifo_does_not_hang_the_agent() {
    let dir = scratch_dir("debuglink-fifo");
    let binary = binary_with_debug_link(&dir);
    // The debug file the link names is now a FIFO nobody writes to: opening it blocks.
    let debug = dir.join("hostile_jit.debug");
    fs::remove_file(&debug).expect("remove debug file");
    let path = std::ffi::CString::new(debug.as_os_str().as_bytes()).expect("path");
    // SAFETY: mkfifo with a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o644) }, 0, "mkfifo");
    let (_, json) = record_native(&binary, "debuglink-fifo");
    let hints = json["hints"].to_string();
    assert!(
        hints.contains("debug link"),
        "the refused debug link is said: {hints}"
    );
    let named = json["stalls"].as_array().into_iter().flatten().any(|s| {
        s["stacks"].as_array().into_iter().flatten().any(|st| {
            st["frames"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|f| f["function"] == "burn_native")
        })
    });
    assert!(named, "burn_native still named from the ELF symbols");
}

/// pyenv's CPython 3.12 (the machine image has pyenv).
fn pyenv_python312() -> PathBuf {
    let root = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root/.pyenv"));
    let versions = root.join("versions");
    let mut found: Vec<PathBuf> = fs::read_dir(&versions)
        .unwrap_or_else(|e| panic!("{}: {e} (the machine image has pyenv)", versions.display()))
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| {
            p.file_name()
                .and_then(OsStr::to_str)
                .is_some_and(|n| n.starts_with("3.12"))
        })
        .map(|p| p.join("bin/python3.12"))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!(
            "no CPython 3.12 under {}: `pyenv install 3.12`",
            versions.display()
        )
    })
}

#[test]
fn python_with_garbage_code_objects_and_a_frame_cycle_costs_bounded_time() {
    let script = stallscope_tests::workspace_root().join("tests/targets/python/hostile_code.py");
    let mut target = Target::spawn(Command::new(pyenv_python312()).arg(&script));
    target
        .stdout
        .wait_for("ready", Duration::from_secs(20))
        .expect("hostile Python did not start");
    let hostile = Hostile {
        target,
        perf_map: PathBuf::from("/nonexistent"),
    };
    let started = std::time::Instant::now();
    let (result, _) = record(&hostile, "hostile-python", &[]);
    let stderr = result.stderr.join("\n");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(result.status.code(), Some(0), "{stderr}");
    // 3 s of recording; writing the outputs must not take long past it (generous: a shared
    // 2-core machine), which a 1 TiB line table or an endless walk would.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    let json = result.stalls_json();
    let python = &json["python"];
    assert!(
        python["stacks"].as_u64().unwrap_or(0) > 0,
        "Python stacks were read: {python}"
    );
    assert!(
        python["unreadable_frames"].as_u64().unwrap_or(0) > 0,
        "garbage code objects are counted: {python}"
    );
    assert!(
        python["truncated"].as_u64().unwrap_or(0) > 0,
        "the cycle is cut at the depth limit: {python}"
    );
    let mut unreadable = 0;
    for stall in json["stalls"].as_array().into_iter().flatten() {
        for stack in stall["stacks"].as_array().into_iter().flatten() {
            let frames = stack["frames"].as_array().expect("frames");
            assert!(frames.len() <= 1024, "a stack of {} frames", frames.len());
            unreadable += frames
                .iter()
                .filter(|f| f["kind"] == "python" && f["function"] == "[unreadable]")
                .count();
        }
    }
    assert!(unreadable > 0, "the garbage frame shows as [unreadable]");
}
