//! CI mode, as docs/ci.md documents it: `stallscope ci --spawn SERVER --ready tcp:PORT
//! --fail-on ... -- LOAD`. A version of the server with a planted stall fails with exit code 3,
//! the fixed version passes with 0; each output is checked by a real consumer (go tool pprof,
//! xmllint against a JUnit XSD, an SVG parser) or a strict trace-event validator; the saved
//! recording re-renders (`report`) and compares (`diff`).

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use serde_json::Value;
use stallscope_tests::{
    Needed, agent_bin, c_target, free_port, require_root, scratch_dir, workspace_root,
};

const FP_FLAGS: &[&str] = &[
    "-O2",
    "-g",
    "-fno-omit-frame-pointer",
    "-mno-omit-leaf-frame-pointer",
];

/// Runs the documented CI flow against the epoll server; `fixed` selects the fixed version.
fn ci_run(name: &str, fixed: bool, env: &[(&str, &Path)]) -> (Output, PathBuf) {
    require_root();
    let server = c_target("epoll_server", FP_FLAGS);
    let port = free_port().to_string();
    let out = scratch_dir(name);
    let spawn = format!(
        "{} {port}{}",
        server.display(),
        if fixed { " fixed" } else { "" }
    );
    let load = workspace_root().join("tests/targets/load.sh");
    let mut cmd = Command::new(agent_bin());
    cmd.args(["ci", "--spawn", &spawn, "--ready", &format!("tcp:{port}")])
        .args(["--fail-on", "max=200ms,count=0", "--out"])
        .arg(&out)
        .arg("--")
        .arg(&load)
        .args([port.as_str(), "20", "300"])
        .stdin(Stdio::null());
    for (key, value) in env {
        cmd.env(key, value);
    }
    (cmd.output().expect("run stallscope ci"), out)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn check_trace_event_format(trace: &Value) {
    let events = trace["traceEvents"].as_array().expect("traceEvents array");
    assert!(!events.is_empty());
    for event in events {
        let ph = event["ph"].as_str().expect("ph is a string");
        assert!(event["name"].is_string(), "name: {event}");
        assert!(
            event["pid"].is_u64() && event["tid"].is_u64(),
            "pid/tid numbers: {event}"
        );
        match ph {
            "M" => match event["name"].as_str() {
                Some("process_name" | "thread_name") => {
                    assert!(event["args"]["name"].is_string(), "{event}")
                }
                Some("process_sort_index" | "thread_sort_index") => {
                    assert!(event["args"]["sort_index"].is_i64(), "{event}")
                }
                _ => panic!("unknown metadata event: {event}"),
            },
            "X" => {
                assert!(event["ts"].as_f64().is_some_and(|t| t >= 0.0), "{event}");
                assert!(event["dur"].as_f64().is_some_and(|d| d >= 0.0), "{event}");
            }
            "i" | "I" => {
                assert!(event["ts"].as_f64().is_some_and(|t| t >= 0.0), "{event}");
                assert!(
                    matches!(event["s"].as_str(), Some("g" | "p" | "t") | None),
                    "{event}"
                );
            }
            other => panic!("unexpected phase {other}: {event}"),
        }
    }
}

#[test]
fn documented_ci_flow_fails_on_the_stall_and_passes_when_fixed() {
    let summary_file = scratch_dir("ci-summary").join("step-summary.md");
    let (output, out) = ci_run(
        "ci-planted",
        false,
        &[("GITHUB_STEP_SUMMARY", &summary_file)],
    );
    let stderr = text(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(3),
        "budget exceeded → 3: {stderr}"
    );
    assert!(stderr.contains("verdict: budget exceeded"), "{stderr}");

    let json: Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("stalls.json")).expect("stalls.json"),
    )
    .expect("json");
    assert_eq!(json["stalls"].as_array().map(Vec::len), Some(1), "{json:#}");
    assert_eq!(json["verdict"]["passed"], false);
    assert!(
        json["verdict"]["budgets"]
            .as_array()
            .is_some_and(|b| b.iter().any(|r| r["passed"] == false))
    );

    // pprof, read by Go's own pprof.
    let pprof = Command::new("go")
        .args(["tool", "pprof", "-raw"])
        .arg(out.join("profile.pb.gz"))
        .env("HOME", std::env::temp_dir())
        .needed_output();
    let raw = text(&pprof.stdout);
    assert!(pprof.status.success(), "{}", text(&pprof.stderr));
    assert!(
        raw.contains("burn_cpu") && raw.contains("stall/nanoseconds"),
        "{raw}"
    );

    // JUnit XML against the JUnit schema; one failing case per exceeded budget.
    let junit = out.join("junit.xml");
    let xsd = workspace_root().join("tests/schemas/junit.xsd");
    let lint = Command::new("xmllint")
        .arg("--noout")
        .arg("--schema")
        .arg(&xsd)
        .arg(&junit)
        .needed_output();
    assert!(lint.status.success(), "{}", text(&lint.stderr));
    let junit_text = std::fs::read_to_string(&junit).expect("junit");
    assert_eq!(junit_text.matches("<failure").count(), 2, "{junit_text}");

    // The flamegraph parses as XML (SVG) and names the planted function.
    let svg = out.join("flamegraph.svg");
    let lint = Command::new("xmllint")
        .arg("--noout")
        .arg(&svg)
        .needed_output();
    assert!(lint.status.success(), "{}", text(&lint.stderr));
    assert!(
        std::fs::read_to_string(&svg)
            .expect("svg")
            .contains("burn_cpu")
    );

    // trace.json in the trace-event format, with the stall on the loop thread's track.
    let trace: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("trace.json")).expect("trace"))
            .expect("json");
    check_trace_event_format(&trace);
    let events = trace["traceEvents"].as_array().expect("events");
    assert!(events.iter().any(|e| e["ph"] == "X" && e["cat"] == "stall"));

    // summary.md leads with the verdict, and went to the GitHub job summary too.
    let summary = std::fs::read_to_string(out.join("summary.md")).expect("summary.md");
    assert!(
        summary.starts_with("## ❌ stallscope: budget exceeded"),
        "{summary}"
    );
    assert!(summary.contains("burn_cpu"), "{summary}");
    assert_eq!(
        std::fs::read_to_string(&summary_file).expect("step summary"),
        summary
    );

    // The fixed version passes.
    let (fixed, fixed_out) = ci_run("ci-fixed", true, &[]);
    assert_eq!(fixed.status.code(), Some(0), "{}", text(&fixed.stderr));
    let fixed_json: Value = serde_json::from_str(
        &std::fs::read_to_string(fixed_out.join("stalls.json")).expect("json"),
    )
    .expect("json");
    assert_eq!(fixed_json["stalls"].as_array().map(Vec::len), Some(0));
    assert_eq!(fixed_json["verdict"]["passed"], true);

    // diff: what grew from the fixed run to the planted one, judged by a growth budget.
    let diff_out = scratch_dir("ci-diff");
    let diff = Command::new(agent_bin())
        .arg("diff")
        .arg(&fixed_out)
        .arg(&out)
        .args(["--fail-on", "count=+0", "--out"])
        .arg(&diff_out)
        .output()
        .expect("diff");
    assert_eq!(diff.status.code(), Some(3), "{}", text(&diff.stderr));
    let table = text(&diff.stdout);
    assert!(
        table.contains("| stalls | 0 | 1 |") && table.contains("burn_cpu"),
        "{table}"
    );
    let diff_svg = std::fs::read_to_string(diff_out.join("diff.svg")).expect("diff.svg");
    assert!(diff_svg.contains("burn_cpu"));

    // report: the saved recording re-renders with the target long gone.
    let same = scratch_dir("ci-report-same");
    let rerender = Command::new(agent_bin())
        .arg("report")
        .arg(&out)
        .arg("--out")
        .arg(&same)
        .output()
        .expect("report");
    assert!(rerender.status.success(), "{}", text(&rerender.stderr));
    let again: Value =
        serde_json::from_str(&std::fs::read_to_string(same.join("stalls.json")).expect("json"))
            .expect("json");
    assert_eq!(
        again["stalls"], json["stalls"],
        "same threshold reproduces the same stalls"
    );
    let higher = scratch_dir("ci-report-higher");
    let rerender = Command::new(agent_bin())
        .arg("report")
        .arg(&out)
        .args(["--threshold", "400ms", "--out"])
        .arg(&higher)
        .output()
        .expect("report");
    assert!(rerender.status.success(), "{}", text(&rerender.stderr));
    let fewer: Value =
        serde_json::from_str(&std::fs::read_to_string(higher.join("stalls.json")).expect("json"))
            .expect("json");
    assert_eq!(fewer["stalls"].as_array().map(Vec::len), Some(0));
    let lower = scratch_dir("ci-report-lower");
    let rerender = Command::new(agent_bin())
        .arg("report")
        .arg(&out)
        .args(["--threshold", "250ms", "--format", "svg", "--out"])
        .arg(&lower)
        .output()
        .expect("report");
    assert!(rerender.status.success(), "{}", text(&rerender.stderr));
    assert!(lower.join("flamegraph.svg").exists() && !lower.join("trace.json").exists());
}

#[test]
fn a_failing_load_command_fails_the_run_with_its_own_code() {
    // Budgets within (fixed server, none given), but the load command fails: exit 4.
    require_root();
    let server = c_target("epoll_server", FP_FLAGS);
    let port = free_port().to_string();
    let out = scratch_dir("ci-load-fails-2");
    let output = Command::new(agent_bin())
        .args([
            "ci",
            "--spawn",
            &format!("{} {port} fixed", server.display()),
            "--ready",
            &format!("tcp:{port}"),
            "--out",
        ])
        .arg(&out)
        .args(["--", "false"])
        .output()
        .expect("ci");
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("the load command `false` failed"),
        "{stderr}"
    );
}

#[test]
fn report_on_a_missing_or_corrupted_recording_says_so() {
    let missing = scratch_dir("report-missing").join("nope");
    let output = Command::new(agent_bin())
        .arg("report")
        .arg(&missing)
        .output()
        .expect("report");
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("is not a stallscope recording directory"),
        "{}",
        text(&output.stderr)
    );
    let broken = scratch_dir("report-broken");
    std::fs::write(broken.join("stalls.json"), "{\"version\": 1, \"thresh").expect("write");
    let output = Command::new(agent_bin())
        .arg("report")
        .arg(&broken)
        .output()
        .expect("report");
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("truncated or corrupted"),
        "{}",
        text(&output.stderr)
    );
}
