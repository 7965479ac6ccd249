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
