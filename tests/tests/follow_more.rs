//! More of following a service: several --pid at once, a target that execs into another
//! binary mid-recording (symbols and unwind tables reloaded for the new image), and the summary
//! saying when and how each process ended.

use std::{process::Command, time::Duration};

use stallscope_tests::{
    Agent, EpollServer, Target, c_target, dominant_code_stack, require_root, scratch_dir,
    user_function_names,
};

const FP_FLAGS: &[&str] = &["-O2", "-g", "-fomit-frame-pointer"];

fn request(port: u16, line: &str) {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .write_all(format!("{line}\n").as_bytes())
        .expect("send");
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .expect("answer");
    assert_eq!(answer.trim(), "ok");
}

#[test]
fn several_pids_at_once() {
    require_root();
    let a = EpollServer::start(FP_FLAGS);
    let b = EpollServer::start(FP_FLAGS);
    let out = scratch_dir("several-pids");
    let pids = format!("{},{}", a.target.pid(), b.target.pid());
    let agent = Agent::record(&["--pid", &pids], &out);
    a.request("burn 200");
    b.request("burn 200");
    std::thread::sleep(Duration::from_millis(100));
    let result = agent.stop();
    assert!(result.status.success(), "{:#?}", result.stderr);
    let json = result.stalls_json();
    let stalls = json["stalls"].as_array().expect("stalls");
    for pid in [a.target.pid(), b.target.pid()] {
        let stall = stalls
            .iter()
            .find(|s| s["pid"] == pid)
            .unwrap_or_else(|| panic!("a stall for {pid}: {stalls:#?}"));
        assert!(
            user_function_names(dominant_code_stack(stall))
                .iter()
                .any(|f| f == "burn_cpu")
        );
    }
}

#[test]
fn exec_replaces_the_image_and_its_symbols() {
    require_root();
    let server = c_target("epoll_server", FP_FLAGS);
    // A shell that execs the server after the agent is attached: same PID, new image.
    let mut target = Target::spawn(
        Command::new("sh")
            .arg("-c")
            .arg(format!("sleep 1.5; exec {} 0", server.display())),
    );
    let out = scratch_dir("exec-image");
    let pid = target.pid();
    let agent = Agent::record(&["--pid", &pid.to_string()], &out);
    let line = target
        .stdout
        .wait_for("listening", Duration::from_secs(10))
        .expect("server started after exec");
    let port: u16 = line
        .rsplit(' ')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    request(port, "burn 200");
    std::thread::sleep(Duration::from_millis(100));
    let result = agent.stop();
    assert!(result.status.success(), "{:#?}", result.stderr);
    let json = result.stalls_json();
    let stall = json["stalls"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["pid"] == pid))
        .unwrap_or_else(|| panic!("stall of the exec'd process: {json:#}"));
    let names = user_function_names(dominant_code_stack(stall));
    assert!(
        names.iter().take(3).any(|f| f == "burn_cpu") && names.iter().any(|f| f == "main"),
        "frames of the new image: {names:?}"
    );
    let process = json["processes"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["pid"] == pid))
        .expect("process");
    assert!(
        process["exe"]
            .as_str()
            .is_some_and(|e| e.contains("epoll_server")),
        "exe updated at exec: {process}"
    );
    drop(target);
}

#[test]
fn the_summary_says_when_and_how_processes_ended() {
    require_root();
    let out = scratch_dir("how-ended");
    let output = Command::new(stallscope_tests::agent_bin())
        .args(["record", "--out"])
        .arg(&out)
        .args([
            "--",
            "sh",
            "-c",
            "sleep 5 & p=$!; sleep 0.3; kill -9 $p; sh -c 'exit 7'; exit 0",
        ])
        .output()
        .expect("stallscope");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("killed by SIGKILL"), "{stdout}");
    assert!(stdout.contains("exit code 7"), "{stdout}");
    assert!(stdout.contains("processes: "), "{stdout}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("stalls.json")).expect("json"))
            .expect("json");
    let processes = json["processes"].as_array().expect("processes");
    assert!(processes.iter().any(|p| p["exit_signal"] == "SIGKILL"));
    assert!(processes.iter().any(|p| p["exit_code"] == 7));
    assert!(
        processes.iter().all(|p| p["exited_ns"].is_u64()),
        "{processes:#?}"
    );
}
