//! stallscope's integration tests, one binary with a module per feature (as aya's and ripgrep's
//! suites): built and linked once instead of once per feature. Each module runs the real agent
//! against real processes; `tests/src/lib.rs` holds what they share.
//!
//! A new feature's tests go in `tests/tests/<feature>.rs`, declared below. Cargo's automatic
//! test discovery is off (tests/Cargo.toml), so a file not declared here would never build or
//! run: `every_test_file_is_a_module_of_this_binary` fails when one is missing.

mod c_epoll_server;
mod ci_mode;
mod command_mode;
mod cpython_native;
mod doctor;
mod errors;
mod follow_more;
mod follow_service;
mod hardening_input;
mod hardening_signals;
mod hostile_target;
mod native_stacks;
mod python_stacks;
mod report_html;
mod stress_breakdown;
mod watch;
mod why_it_waited;

/// Every `tests/tests/*.rs` file is declared as a module above: with autotests off, an
/// undeclared file (a branch adding a feature's tests as a binary of its own) is silently skipped.
#[test]
fn every_test_file_is_a_module_of_this_binary() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let main = std::fs::read_to_string(dir.join("main.rs")).expect("read tests/tests/main.rs");
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("list tests/tests") {
        let path = entry.expect("list tests/tests").path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let is_module = path.extension().is_some_and(|e| e == "rs") && stem != "main";
        if is_module && !main.lines().any(|l| l.trim() == format!("mod {stem};")) {
            missing.push(stem.to_string());
        }
    }
    assert!(
        missing.is_empty(),
        "tests/tests/{{{}}}.rs not declared in tests/tests/main.rs: add `mod NAME;` there",
        missing.join(",")
    );
}
