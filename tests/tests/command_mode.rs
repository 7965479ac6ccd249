//! `stallscope record -- COMMAND`: the agent starts the program, follows it from its first
//! instruction, finds its loop thread from the epoll_wait calls it sees (the program was not
//! running at attach, so /proc had nothing to say), reports its one stall, and stops with exit
//! code 0 when the program exits; what is symbolized after the exit still resolves.

use std::process::{Command, Stdio};

use stallscope_tests::{
    agent_bin, c_target, dominant_code_stack, require_root, scratch_dir, user_function_names,
};

#[test]
fn records_a_command_until_it_exits() {
    require_root();
    let program = c_target(
        "timer_loop",
        &[
            "-O2",
            "-g",
            "-fno-omit-frame-pointer",
            "-mno-omit-leaf-frame-pointer",
        ],
    );
    let out = scratch_dir("command-mode");
    let output = Command::new(agent_bin())
        .args(["record", "--threshold", "100ms", "--out"])
        .arg(&out)
        .arg("--")
        .arg(&program)
        .stdin(Stdio::null())
        .output()
        .expect("run stallscope");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("command exited"), "{stderr}");
    let planted = stderr
        .lines()
        .find_map(|l| l.strip_prefix("planted spin "))
        .expect("the program reports its planted stall");
    let mut times = planted
        .split_whitespace()
        .filter_map(|t| t.parse::<u64>().ok());
    let (start, end) = (times.next().expect("start"), times.next().expect("end"));

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("stalls.json")).expect("json"))
            .expect("json");
    let stalls = json["stalls"].as_array().expect("stalls");
    assert_eq!(stalls.len(), 1, "{stalls:#?}");
    let stall = &stalls[0];
    let duration = stall["duration_ns"].as_u64().expect("duration");
    let truth = end - start;
    assert!(
        duration.abs_diff(truth) <= (truth / 10).max(20_000_000),
        "{duration} vs {truth}"
    );
    let names = user_function_names(dominant_code_stack(stall));
    assert!(
        names.iter().take(3).any(|n| n == "spin_on_tick"),
        "{names:?}"
    );
    let threads = json["threads"].as_array().expect("threads");
    assert!(
        threads
            .iter()
            .any(|t| t["loop"] == true && t["iterations"].as_u64() >= Some(20)),
        "{threads:#?}"
    );
    let process = &json["processes"][0];
    assert!(
        process["exited_ns"].is_u64(),
        "the exit is recorded: {process}"
    );
}

/// `record -- python3 app.py` through the machine's pyenv shim (a bash script that runs
/// helpers and execs the interpreter): the shim, the interpreter's start and 300 ms of import
/// time before `asyncio.run` are start-up, said once with its length, not a stall; the planted
/// 250 ms sleep inside a coroutine still is one; the shim's short-lived helpers give no warning
/// line each.
#[test]
fn command_start_up_is_not_a_stall() {
    require_root();
    let script = stallscope_tests::workspace_root().join("tests/targets/python/startup_app.py");
    let out = scratch_dir("command-startup");
    let output = Command::new(agent_bin())
        .args(["record", "--threshold", "100ms", "--out"])
        .arg(&out)
        .args(["--", "python3"])
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .expect("run stallscope");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    let planted = stderr
        .lines()
        .find_map(|l| l.strip_prefix("planted sleep "))
        .unwrap_or_else(|| panic!("the program reports its planted stall: {stderr}"));
    let mut times = planted
        .split_whitespace()
        .filter_map(|t| t.parse::<u64>().ok());
    let (start, end) = (times.next().expect("start"), times.next().expect("end"));

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("stalls.json")).expect("json"))
            .expect("json");
    let stalls = json["stalls"].as_array().expect("stalls");
    assert_eq!(
        stalls.len(),
        1,
        "only the planted sleep, no start-up stall: {stalls:#?}\n{stdout}"
    );
    let stall = &stalls[0];
    let truth = end - start;
    let duration = stall["duration_ns"].as_u64().expect("duration");
    assert!(
        duration.abs_diff(truth) <= (truth / 10).max(20_000_000),
        "{duration} vs {truth}"
    );
    assert!(
        stall["start_ns"].as_u64().expect("start") + 20_000_000 >= start,
        "{stall:#}"
    );
    let live_stalls = stdout.lines().filter(|l| l.starts_with("stall ")).count();
    assert_eq!(
        live_stalls, 1,
        "one live line, the planted stall's:\n{stdout}"
    );

    // Start-up: said once, live and in the summary, at least the 300 ms of imports long.
    let said: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("started up in"))
        .collect();
    assert_eq!(said.len(), 1, "{stdout}");
    let startups = json["startups"]
        .as_array()
        .expect("startups in stalls.json");
    let took = |s: &serde_json::Value| {
        s["end_ns"].as_u64().unwrap_or(0) - s["start_ns"].as_u64().unwrap_or(u64::MAX / 2)
    };
    assert!(
        startups
            .iter()
            .any(|s| took(s) >= 300_000_000 && s["end_ns"].as_u64() <= Some(start)),
        "a start-up of 300 ms or more, ended before the planted stall: {startups:#?}"
    );
    assert!(
        stdout.contains("start-up: ") || stderr.contains("start-up: "),
        "the summary says it: {stdout}"
    );
    assert!(
        !stderr.contains("no Python frames: reading"),
        "no warning line per short-lived process: {stderr}"
    );
}

/// A stripped program started through a symlink (as Debian's `redis-server` is a link to
/// `redis-check-rdb`): its unnamed frames and the live line use the name it was started as,
/// stalls.json keeps the real file in `module`.
#[test]
fn unnamed_frames_carry_the_name_the_program_was_started_as() {
    require_root();
    let program = c_target("timer_loop", &["-O2", "-s"]);
    let out = scratch_dir("command-started-as");
    let link = out.join("spin-server");
    std::os::unix::fs::symlink(&program, &link).expect("symlink");
    let output = Command::new(agent_bin())
        .args(["record", "--threshold", "100ms", "--out"])
        .arg(&out)
        .arg("--")
        .arg(&link)
        .stdin(Stdio::null())
        .output()
        .expect("run stallscope");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("stalls.json")).expect("json"))
            .expect("json");
    let stalls = json["stalls"].as_array().expect("stalls");
    assert_eq!(stalls.len(), 1, "{stalls:#?}");
    let real = std::fs::canonicalize(&program).expect("real path");
    let real = real.to_string_lossy();
    let file = real.rsplit('/').next().unwrap_or_default().to_string();
    let frames: Vec<&serde_json::Value> = stalls[0]["stacks"]
        .as_array()
        .expect("stacks")
        .iter()
        .flat_map(|s| s["frames"].as_array().into_iter().flatten())
        .filter(|f| f["module"].as_str() == Some(&*real))
        .collect();
    assert!(!frames.is_empty(), "frames in the program: {stalls:#?}");
    for frame in &frames {
        let function = frame["function"].as_str().unwrap_or_default();
        assert!(
            function.starts_with("spin-server+0x"),
            "named as started, not as the file {file}: {frame}"
        );
    }
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("    at ") && l.contains("spin-server") && !l.contains(&file)),
        "the live line: {stdout}"
    );
}
