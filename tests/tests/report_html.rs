//! report.html in a real browser (issue #23): a recording of the C epoll server with a planted
//! CPU burn and a planted sleep is opened from disk in headless Chromium with the network off
//! (tests/browser/report_html.cjs, playwright-core driving Debian's chromium). Each stall is
//! clicked in the table and its icicle must show the planted functions; sorting, zooming the
//! timeline and searching a function must work; no console error, no request, a screenshot.

use std::{path::Path, process::Command, time::Duration};

use serde_json::Value;
use stallscope_tests::{Agent, EpollServer, require_root, scratch_dir, workspace_root};

const FP_FLAGS: &[&str] = &[
    "-O2",
    "-g",
    "-fno-omit-frame-pointer",
    "-mno-omit-leaf-frame-pointer",
];

/// Runs the browser driver on `report`, returns what the page showed.
fn open_in_browser(report: &Path, screenshot: &Path, search: &str) -> Value {
    let script = workspace_root().join("tests/browser/report_html.cjs");
    let output = Command::new("node")
        .arg(&script)
        .arg(report)
        .arg(screenshot)
        .arg(search)
        .output()
        .expect("run node (it comes with the machine image; run `cargo xtask setup` for the rest)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "browser driver failed ({}): {stderr}",
        output.status
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "driver output is not JSON ({e}): {}\n{stderr}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn report_html_opens_offline_and_shows_each_stalls_stack() {
    require_root();
    let mut server = EpollServer::start(FP_FLAGS);
    let out = scratch_dir("report-html");
    let pid = server.target.pid().to_string();
    let agent = Agent::record(&["--pid", &pid, "--threshold", "100ms"], &out);
    server.plant(&["burn 300", "sleep 250"], 10);
    std::thread::sleep(Duration::from_millis(200));
    let result = agent.stop();
    assert!(
        result.status.success(),
        "agent failed: {:#?}",
        result.stderr
    );
    assert_eq!(server.planted().len(), 2);

    let json = result.stalls_json();
    let stalls = json["stalls"].as_array().expect("stalls").clone();
    assert_eq!(stalls.len(), 2, "the two planted stalls: {stalls:#?}");
    let longest = stalls
        .iter()
        .enumerate()
        .max_by_key(|(_, s)| s["duration_ns"].as_u64().unwrap_or(0))
        .map(|(i, _)| i.to_string())
        .expect("a longest stall");

    let report = out.join("report.html");
    let html = std::fs::read_to_string(&report).expect("report.html written by record");
    // Self-contained: nothing for the browser to fetch.
    for needle in ["<script src", "<link", "<img", "<iframe", "@import"] {
        assert!(!html.contains(needle), "report.html references {needle}");
    }
    eprintln!("report.html: {} bytes", html.len());

    let screenshot = out.join("report.png");
    let page = open_in_browser(&report, &screenshot, "sleep_in_handler");
    eprintln!(
        "{}",
        serde_json::to_string_pretty(&page).unwrap_or_default()
    );
    assert_eq!(strings(&page["console_errors"]), Vec::<String>::new());
    assert_eq!(strings(&page["page_errors"]), Vec::<String>::new());
    assert_eq!(
        strings(&page["requests"]),
        Vec::<String>::new(),
        "the page asked for something"
    );
    let header = page["header"].as_str().unwrap_or_default();
    assert!(
        header.contains("epoll_server") && header.contains(&pid),
        "{header}"
    );
    assert!(header.contains("threshold 100.0 ms"), "{header}");

    let shown = page["stalls"].as_array().expect("stalls clicked");
    assert_eq!(shown.len(), 2, "one table row per stall");
    let frames_of = |function: &str| {
        shown
            .iter()
            .map(|s| strings(&s["frames"]))
            .find(|frames| frames.iter().any(|f| f == function))
            .unwrap_or_else(|| panic!("no stall's icicle shows {function}: {shown:#?}"))
    };
    let burn = frames_of("burn_cpu");
    for caller in ["handle_request", "main"] {
        assert!(
            burn.iter().any(|f| f == caller),
            "{caller} under burn_cpu: {burn:?}"
        );
    }
    let sleep = frames_of("sleep_in_handler");
    assert!(
        sleep
            .iter()
            .any(|f| f.starts_with("[blocked in nanosleep()]")),
        "the sleep's leaf says where it blocked: {sleep:?}"
    );
    assert!(
        !sleep.iter().any(|f| f == "burn_cpu"),
        "each stall has its own graph"
    );
    let sleep_stall = shown
        .iter()
        .find(|s| {
            strings(&s["frames"])
                .iter()
                .any(|f| f == "sleep_in_handler")
        })
        .expect("sleep stall");
    assert!(
        sleep_stall["causes"]
            .as_str()
            .unwrap_or_default()
            .contains("blocked in nanosleep()"),
        "{sleep_stall:#?}"
    );
    assert!(
        sleep_stall["breakdown"]
            .as_str()
            .unwrap_or_default()
            .contains("blocked"),
        "{sleep_stall:#?}"
    );

    assert_eq!(
        page["first_row_after_sort"],
        longest.as_str(),
        "sorted by duration"
    );
    let timeline = &page["timeline"];
    assert_eq!(timeline["stalls"], 2, "both stalls on the timeline");
    // The loop's iterations are drawn (as many marks as stalls.json has for the loop thread),
    // and each stall is one of them: an iteration mark starts where the stall starts and lasts
    // as long (µs rounding aside).
    let iterations = timeline["iterations"].as_array().expect("iteration marks");
    let loop_marks: usize = json["threads"]
        .as_array()
        .expect("threads")
        .iter()
        .filter(|t| t["loop"] == true)
        .map(|t| t["iteration_marks"].as_array().map_or(0, Vec::len))
        .sum();
    assert!(loop_marks >= 2, "stalls.json has the iterations: {json:#}");
    assert_eq!(
        iterations.len(),
        loop_marks,
        "every iteration mark is drawn"
    );
    let field = |v: &Value, i: usize| v[i].as_f64().unwrap_or(-1.0);
    for stall in timeline["stall_marks"].as_array().expect("stall marks") {
        assert!(
            iterations
                .iter()
                .any(|m| (field(m, 0) - field(stall, 0)).abs() <= 1.0
                    && (field(m, 1) - field(stall, 1)).abs() <= 2.0),
            "stall {stall} is an iteration on the timeline: {iterations:?}"
        );
    }
    assert_ne!(
        timeline["ticks_before"], timeline["ticks_after"],
        "the wheel zooms the timeline"
    );
    let search = &page["search"];
    assert_eq!(
        strings(&search["visible_rows"]),
        vec![sleep_stall["id"].as_str().unwrap_or_default().to_string()],
        "searching sleep_in_handler leaves its stall: {search:#?}"
    );
    assert_eq!(strings(&search["highlighted"]), vec!["sleep_in_handler"]);

    let png = std::fs::read(&screenshot).expect("screenshot written");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000);
}
