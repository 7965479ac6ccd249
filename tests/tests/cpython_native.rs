//! CPython's own native frames, from a pyenv build without frame pointers, unwind through the
//! interpreter loop to `main` (DWARF CFI from libpython), with the Python frames in place of the
//! interpreter loop's: one stack from the Python function down to `_start`.

use std::{process::Command, time::Duration};

use stallscope_tests::{
    Agent, Needed, Target, dominant_code_stack, require_root, scratch_dir, user_function_names,
    workspace_root,
};

/// The real interpreter behind pyenv's shim (the shim is a shell script that execs it).
fn python() -> String {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .needed_output();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn cpython_native_frames_unwind_to_main() {
    require_root();
    let script = workspace_root().join("tests/targets/py_busy_loop.py");
    let mut target = Target::spawn(Command::new(python()).arg(&script));
    let out = scratch_dir("cpython-native");
    let pid = target.pid().to_string();
    let agent = Agent::record(&["--pid", &pid, "--threshold", "100ms"], &out);
    // The agent takes a second or more to start, and the loop burns every 450 ms: the burns
    // reported while it started were queued unread and are not in the recording. Waiting for those
    // (as this test once did) stopped the agent ~0.3 s into its recording, with one burn or none.
    target.stdout.collect(Duration::ZERO);
    target.stdout.seen.clear();
    // Three planted burns reported from now on: the first may have begun before recording began,
    // the other two lie wholly inside it.
    for _ in 0..3 {
        assert!(
            target
                .stdout
                .wait_for("planted busy", Duration::from_secs(5))
                .is_some(),
            "the loop reports its burns"
        );
        target.stdout.seen.clear();
    }
    std::thread::sleep(Duration::from_millis(100));
    let result = agent.stop();
    assert!(result.status.success(), "{:#?}", result.stderr);
    let json = result.stalls_json();
    let stalls = json["stalls"].as_array().expect("stalls");
    assert!(stalls.len() >= 2, "{stalls:#?}");
    for stall in stalls {
        let top = dominant_code_stack(stall);
        assert_eq!(top["kind"], "on_cpu", "{top:#}");
        let names = user_function_names(top);
        let python: Vec<&str> = top["frames"]
            .as_array()
            .map(|frames| {
                frames
                    .iter()
                    .filter(|f| f["kind"] == "python")
                    .filter_map(|f| f["function"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(
            python.first().copied(),
            Some("burn_in_python"),
            "the burning function is the innermost Python frame: {names:?}"
        );
        assert!(
            python.ends_with(&["main", "<module>"]),
            "Python frames down to the module: {python:?}"
        );
        assert!(
            !names.iter().any(|n| n == "_PyEval_EvalFrameDefault"),
            "each interpreter loop frame is replaced by its Python frames: {names:?}"
        );
        assert!(
            names.iter().any(|n| n == "main" || n == "Py_BytesMain"),
            "the stack reaches main: {names:?}"
        );
        let last = names.last().map(String::as_str).unwrap_or("");
        assert!(
            matches!(
                last,
                "_start" | "__libc_start_main_impl" | "__libc_start_call_main"
            ),
            "outermost frame is the process entry, got {last}: {names:?}"
        );
    }
}
