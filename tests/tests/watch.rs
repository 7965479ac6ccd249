//! `stallscope watch`, the always-on monitor, against real processes and a real Prometheus:
//! services started *after* the agent, matched by name (or by their cgroup) in the kernel at
//! exec, stall on purpose; Debian's Prometheus scrapes `/metrics` every second and its HTTP API
//! must return the planted stall counts and histogram buckets per service; the events log has one
//! line per stall naming the right function, and loses none across a SIGHUP rotation; the agent
//! exits 0 on SIGTERM; it runs as an unprivileged user with only the capabilities its systemd
//! unit grants.

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    net::TcpStream,
    os::unix::fs::{PermissionsExt as _, symlink},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;
use stallscope_tests::{
    Lines, Needed, Planted, Target, agent_bin, c_target, free_port, planted_lines, require_root,
    scratch_dir, tolerance_ns, workspace_root,
};

/// A running `stallscope watch`; killed if a test fails before stopping it.
struct Watch {
    child: Option<Child>,
    stderr: Lines,
    stdout: Lines,
}

impl Watch {
    /// Starts `stallscope watch ARGS` and waits until it says it is watching.
    fn start(args: &[&str]) -> Self {
        let mut command = Command::new(agent_bin());
        command.arg("watch").args(args);
        Self::spawn(command)
    }

    /// Starts `command` (a `stallscope watch`, possibly behind a privilege wrapper).
    fn spawn(mut command: Command) -> Self {
        require_root();
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .needed_spawn();
        let stderr = Lines::spawn(child.stderr.take().expect("stderr"));
        let stdout = Lines::spawn(child.stdout.take().expect("stdout"));
        let mut watch = Watch {
            child: Some(child),
            stderr,
            stdout,
        };
        if watch
            .stderr
            .wait_for("stallscope: watching", Duration::from_secs(90))
            .is_none()
        {
            let seen = watch.stderr.collect(Duration::from_millis(200));
            panic!("watch did not start: {seen:#?}");
        }
        watch
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: a signal to the agent we started.
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// SIGTERM, as systemd and Kubernetes stop it; returns its status and stderr.
    fn stop(mut self) -> (ExitStatus, Vec<String>) {
        self.signal(libc::SIGTERM);
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("watch did not exit within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let _ = self.stdout.collect(Duration::from_millis(100));
        (status, self.stderr.collect(Duration::from_millis(100)))
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Debian's Prometheus, scraping the agent every second, with its data in the scratch dir.
struct Prometheus {
    _target: Target,
    port: u16,
}

impl Prometheus {
    fn start(dir: &Path, agent_port: u16) -> Self {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: stallscope\n    static_configs:\n      - targets: ['127.0.0.1:{agent_port}']\n"
            ),
        )
        .expect("write prometheus.yml");
        let port = free_port();
        let target = Target::spawn(
            Command::new("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("tsdb").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .stderr(Stdio::null()),
        );
        let prometheus = Prometheus {
            _target: target,
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while http_get(port, "/-/ready").is_none_or(|(status, _)| status != 200) {
            assert!(Instant::now() < deadline, "Prometheus did not get ready");
            std::thread::sleep(Duration::from_millis(200));
        }
        prometheus
    }

    /// An instant query through the HTTP API: (labels, value) of each series.
    fn query(&self, promql: &str) -> Vec<(HashMap<String, String>, f64)> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let Some((200, body)) = http_get(self.port, &path) else {
            return Vec::new();
        };
        let Ok(json) = serde_json::from_str::<Value>(&body) else {
            return Vec::new();
        };
        json["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|series| {
                let labels = series["metric"]
                    .as_object()?
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                    .collect();
                let value = series["value"][1].as_str()?.parse().ok()?;
                Some((labels, value))
            })
            .collect()
    }

    /// `sum by (LABEL) (...)` as a map, waiting until `done` holds (scrapes come each second).
    fn wait_for(
        &self,
        promql: &str,
        label: &str,
        done: impl Fn(&HashMap<String, f64>) -> bool,
    ) -> HashMap<String, f64> {
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            let by: HashMap<String, f64> = self
                .query(promql)
                .into_iter()
                .map(|(labels, v)| (labels.get(label).cloned().unwrap_or_default(), v))
                .collect();
            if done(&by) || Instant::now() > deadline {
                return by;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// GET http://127.0.0.1:PORT/PATH: (status, body).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// The C loop under a name of its own (the kernel's comm is the file name it was exec'd as).
fn c_service(dir: &Path, name: &str) -> PathBuf {
    let built = c_target("watch_loop", &["-O1", "-g"]);
    let named = dir.join(name);
    std::fs::copy(&built, &named).expect("copy the C target");
    named
}

/// The machine's CPython under a name of its own (a symlink: exec names the process after it).
fn python_service(dir: &Path, name: &str) -> PathBuf {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .needed_output();
    let real = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && !real.is_empty(),
        "python3 -c: {out:?}"
    );
    let named = dir.join(name);
    symlink(&real, &named).expect("symlink python");
    named
}

/// The events log's lines, each a JSON object.
fn event_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"))
        })
        .collect()
}

fn function_names(event: &Value) -> Vec<String> {
    event["stacks"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["frames"].as_array().into_iter().flatten())
        .filter_map(|f| f["function"].as_str().map(str::to_string))
        .collect()
}

/// The logged stall that contains a planted one (same clock), with 20 ms of slack.
fn logged<'a>(events: &'a [Value], planted: &Planted) -> Option<&'a Value> {
    logged_of(events, planted, None)
}

/// The line of a planted stall of the process named `comm` (another service running beside
/// it may stall at the same time: its line must not stand for this one's).
fn logged_of<'a>(events: &'a [Value], planted: &Planted, comm: Option<&str>) -> Option<&'a Value> {
    events.iter().find(|e| {
        if comm.is_some_and(|comm| e["process"]["comm"] != comm) {
            return false;
        }
        let start = e["start_ns"].as_u64().unwrap_or(u64::MAX);
        let end = e["end_ns"].as_u64().unwrap_or(0);
        start <= planted.start_ns + 20_000_000 && end + 20_000_000 >= planted.end_ns
    })
}

fn wait_exit(target: &mut Target, within: Duration) {
    let deadline = Instant::now() + within;
    while target.child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "target did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn watch_feeds_prometheus_the_stalls_of_services_started_after_it() {
    let dir = scratch_dir("watch-prometheus");
    let c_bin = c_service(&dir, "stallsvc_c");
    let py_bin = python_service(&dir, "stallsvc_py");
    let events = dir.join("events.jsonl");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let watch = Watch::start(&[
        "--comm",
        "stallsvc_c",
        "--comm",
        "stallsvc_p?",
        "--listen",
        &listen,
        "--events",
        events.to_str().expect("utf-8 path"),
        "--threshold",
        "100ms",
    ]);
    let (status, health) = http_get(port, "/healthz").expect("/healthz answers");
    assert_eq!((status, health.as_str()), (200, "ok\n"));
    let prometheus = Prometheus::start(&dir, port);

    // Both start after the agent: found by name when they are exec'd.
    let mut c = Target::spawn(Command::new(&c_bin).args(["3", "250", "10"]));
    let service = workspace_root().join("tests/targets/python/asyncio_service.py");
    let mut py = Target::spawn(Command::new(&py_bin).arg(&service).arg("0"));
    let line = py
        .stdout
        .wait_for("listening on", Duration::from_secs(30))
        .expect("the Python service reports its port");
    let py_port: u16 = line
        .rsplit(' ')
        .next()
        .and_then(|p| p.trim().parse().ok())
        .expect("port");
    for path in ["/ok", "/validate?ms=300", "/ok", "/validate?ms=300", "/ok"] {
        let (status, _) = http_get(py_port, path).expect("the service answers");
        assert_eq!(status, 200, "{path}");
    }
    wait_exit(&mut c, Duration::from_secs(30));
    let c_planted = planted_lines(&c.stdout.collect(Duration::from_millis(100)));
    assert_eq!(c_planted.len(), 3, "the C loop planted 3 stalls");

    let want = [("stallsvc_c", 3.0), ("stallsvc_py", 2.0)];
    let stalls = prometheus.wait_for("sum by (comm) (stallscope_stalls_total)", "comm", |by| {
        want.iter().all(|(comm, n)| by.get(*comm) == Some(n))
    });
    let stderr = &watch.stderr.seen;
    assert_eq!(
        stalls,
        want.iter().map(|(c, n)| (c.to_string(), *n)).collect(),
        "stall counts per service in Prometheus (nothing else may be counted); agent: {stderr:#?}"
    );
    // The histogram: no planted stall is under 200 ms, all are under 2 s.
    for (le, expect_c, expect_py) in [("0.2", 0.0, 0.0), ("2.0", 3.0, 2.0), ("+Inf", 3.0, 2.0)] {
        let buckets = prometheus.query(&format!(
            "sum by (comm) (stallscope_stall_duration_seconds_bucket{{le=\"{le}\"}})"
        ));
        let get = |comm: &str| {
            buckets
                .iter()
                .find(|(l, _)| l.get("comm").map(String::as_str) == Some(comm))
                .map(|(_, v)| *v)
        };
        assert_eq!(get("stallsvc_c"), Some(expect_c), "C le={le}: {buckets:?}");
        assert_eq!(
            get("stallsvc_py"),
            Some(expect_py),
            "Python le={le}: {buckets:?}"
        );
    }
    // Impact: when the C loop came back from each spin its timer had fired: 1 event ready
    // (its epoll_wait takes at most 1).
    let ready =
        prometheus.query("sum by (le) (stallscope_stall_ready_events_bucket{comm=\"stallsvc_c\"})");
    let bucket = |le: &str| {
        ready
            .iter()
            .find(|(l, _)| l.get("le").map(String::as_str) == Some(le))
            .map(|(_, v)| *v)
    };
    assert_eq!(
        (bucket("0.0"), bucket("1.0")),
        (Some(0.0), Some(3.0)),
        "{ready:?}"
    );
    // Iterations, so a stall rate can be computed: the C loop ticked ~55 times.
    let iterations = prometheus.wait_for(
        "sum by (comm) (stallscope_loop_iterations_total)",
        "comm",
        |by| by.get("stallsvc_c").is_some_and(|n| *n >= 40.0) && by.contains_key("stallsvc_py"),
    );
    assert!(
        iterations.get("stallsvc_c").is_some_and(|n| *n >= 40.0),
        "{iterations:?}"
    );
    assert!(
        iterations.get("stallsvc_py").is_some_and(|n| *n >= 5.0),
        "{iterations:?}"
    );
    for metric in [
        "stallscope_followed_processes",
        "stallscope_lost_events_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ] {
        assert!(
            !prometheus.query(metric).is_empty(),
            "{metric} is not in Prometheus"
        );
    }

    // The events log: one line per stall, the C ones at the planted spins in spin_in_handler,
    // the Python ones in the regex validation.
    let lines = event_lines(&events);
    let comms: Vec<&str> = lines.iter().filter_map(|e| e["comm"].as_str()).collect();
    assert_eq!(lines.len(), 5, "one line per stall: {comms:?}");
    for planted in &c_planted {
        let event = logged_of(&lines, planted, Some("stallsvc_c"))
            .unwrap_or_else(|| panic!("no logged stall of stallsvc_c at {planted:?}: {lines:#?}"));
        assert_eq!(event["process"]["comm"], "stallsvc_c");
        assert!(
            event["duration_ns"].as_u64().is_some_and(
                |d| d.abs_diff(planted.duration_ns()) <= tolerance_ns(planted.duration_ns())
            ),
            "duration {} vs planted {}",
            event["duration_ns"],
            planted.duration_ns()
        );
        assert!(
            event["top_frames"][0]
                .as_str()
                .is_some_and(|f| f.contains("spin_in_handler")),
            "{:#}",
            event["top_frames"]
        );
        assert_eq!(
            event["cause"]
                .as_str()
                .map(|c| c == "cpu" || c == "runqueue"),
            Some(true)
        );
        assert_eq!(event["ready_events"], 1, "the timer fired during the spin");
    }
    let python: Vec<&Value> = lines
        .iter()
        .filter(|e| e["process"]["comm"] == "stallsvc_py")
        .collect();
    assert_eq!(python.len(), 2);
    for event in python {
        let names = function_names(event);
        assert!(
            names.iter().any(|n| n.contains("validate")),
            "the Python stall names the validation: {names:?}"
        );
        assert!(event["host"].is_string() && event["time"].is_f64());
    }
    drop(c);
    drop(py);
    let (status, stderr) = watch.stop();
    assert!(
        status.success(),
        "watch exits 0 on SIGTERM: {status:?} {stderr:#?}"
    );
}

/// Also the flight recorder: `--keep-dir DIR --keep 2` holds the reports of the 2 latest stalls
/// and leaves what else is in DIR alone.
#[test]
fn watch_events_log_loses_no_line_across_sighup_rotation() {
    let dir = scratch_dir("watch-rotation");
    let c_bin = c_service(&dir, "stallsvc_rot");
    let events = dir.join("events.jsonl");
    let rotated = dir.join("events.jsonl.1");
    let keep_dir = dir.join("flight");
    std::fs::create_dir(&keep_dir).expect("create keep dir");
    let theirs = keep_dir.join("README.txt");
    std::fs::write(&theirs, "not the agent's").expect("write");
    let watch = Watch::start(&[
        "--comm",
        "stallsvc_rot",
        "--events",
        events.to_str().expect("utf-8 path"),
        "--keep-dir",
        keep_dir.to_str().expect("utf-8 path"),
        "--keep",
        "2",
        "--quiet",
    ]);
    // 6 stalls of 150 ms, 0.5 s apart.
    let mut c = Target::spawn(Command::new(&c_bin).args(["6", "150", "25"]));
    let deadline = Instant::now() + Duration::from_secs(30);
    while event_lines(&events).len() < 2 {
        assert!(Instant::now() < deadline, "no stall logged");
        std::thread::sleep(Duration::from_millis(20));
    }
    // logrotate's way: rename, then SIGHUP.
    std::fs::rename(&events, &rotated).expect("rotate");
    watch.signal(libc::SIGHUP);
    wait_exit(&mut c, Duration::from_secs(30));
    let planted = planted_lines(&c.stdout.collect(Duration::from_millis(100)));
    assert_eq!(planted.len(), 6);
    std::thread::sleep(Duration::from_millis(500));
    let (status, stderr) = watch.stop();
    assert!(status.success(), "{status:?} {stderr:#?}");
    let before = event_lines(&rotated);
    let after = event_lines(&events);
    assert!(
        before.len() >= 2,
        "lines before the rotation stay in the renamed file"
    );
    assert!(!after.is_empty(), "lines after SIGHUP go to the new file");
    let all: Vec<Value> = before.into_iter().chain(after).collect();
    assert_eq!(
        all.len(),
        6,
        "one line per stall, none lost or doubled: {all:#?}"
    );
    for p in &planted {
        assert!(logged(&all, p).is_some(), "no line for {p:?}");
    }
    // The flight recorder kept the last two stalls' reports, and nothing of ours beyond them.
    assert!(
        theirs.is_file(),
        "a file the agent did not write was removed"
    );
    let mut reports: Vec<PathBuf> = std::fs::read_dir(&keep_dir)
        .expect("list keep dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    reports.sort();
    assert_eq!(reports.len(), 2, "{reports:?}");
    let mut kept_starts: Vec<u64> = reports
        .iter()
        .map(|r| {
            assert!(r.join("flamegraph.svg").is_file() && r.join("stalls.folded").is_file());
            let json: Value = serde_json::from_str(
                &std::fs::read_to_string(r.join("stalls.json")).expect("a report's stalls.json"),
            )
            .expect("JSON");
            assert_eq!(json["stalls"].as_array().map(Vec::len), Some(1));
            json["stalls"][0]["start_ns"].as_u64().expect("start_ns")
        })
        .collect();
    kept_starts.sort_unstable();
    let mut last_two: Vec<u64> = all.iter().filter_map(|e| e["start_ns"].as_u64()).collect();
    last_two.sort_unstable();
    assert_eq!(
        kept_starts,
        last_two[last_two.len() - 2..].to_vec(),
        "the newest two are kept"
    );
}

/// The cgroup v2 mount (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a hybrid machine).
fn cgroup2_root() -> PathBuf {
    std::fs::read_to_string("/proc/self/mounts")
        .expect("read /proc/self/mounts")
        .lines()
        .find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .expect("this test needs cgroup v2 mounted (a unified or hybrid hierarchy)")
}

/// A cgroup this test made, removed (once empty) when dropped.
struct TestCgroup(PathBuf);

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn watch_follows_every_process_of_a_cgroup_and_nothing_outside_it() {
    let dir = scratch_dir("watch-cgroup");
    let c_bin = c_service(&dir, "stallsvc_cg");
    let name = format!("stallscope-test-{}", std::process::id());
    let cgroup = TestCgroup(cgroup2_root().join(&name));
    std::fs::create_dir(&cgroup.0).expect("create a test cgroup");
    let events = dir.join("events.jsonl");
    let watch = Watch::start(&[
        "--cgroup",
        &name,
        "--events",
        events.to_str().expect("utf-8 path"),
        "--quiet",
    ]);
    // The same program twice, started after the agent: one joins the cgroup before it execs,
    // the other stays outside and must not be reported.
    let procs = cgroup.0.join("cgroup.procs");
    let mut inside = Target::spawn(Command::new("sh").arg("-c").arg(format!(
        "echo $$ > {} && exec {} 3 200 10",
        procs.display(),
        c_bin.display()
    )));
    let mut outside = Target::spawn(Command::new(&c_bin).args(["3", "200", "10"]));
    wait_exit(&mut inside, Duration::from_secs(30));
    wait_exit(&mut outside, Duration::from_secs(30));
    let planted = planted_lines(&inside.stdout.collect(Duration::from_millis(100)));
    assert_eq!(planted.len(), 3);
    std::thread::sleep(Duration::from_millis(500));
    let (status, stderr) = watch.stop();
    assert!(status.success(), "{status:?} {stderr:#?}");
    let lines = event_lines(&events);
    let pids: Vec<u64> = lines.iter().filter_map(|e| e["pid"].as_u64()).collect();
    assert!(
        pids.iter().all(|&p| p == u64::from(inside.pid())),
        "only the process in the cgroup ({}) is reported, not {} outside it: {pids:?}",
        inside.pid(),
        outside.pid()
    );
    assert_eq!(lines.len(), 3, "its three stalls: {lines:#?}");
    for p in &planted {
        let event = logged(&lines, p).unwrap_or_else(|| panic!("no line for {p:?}"));
        assert_eq!(event["cgroup"].as_str(), Some(format!("/{name}").as_str()));
    }
}

/// The capabilities `docs/stallscope-watch.service` grants, as setpriv's `+cap` list.
fn documented_capabilities() -> String {
    let unit = std::fs::read_to_string(workspace_root().join("docs/stallscope-watch.service"))
        .expect("read docs/stallscope-watch.service");
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .expect("the unit grants AmbientCapabilities");
    let caps: Vec<String> = line
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    assert!(caps.len() >= 3, "capabilities listed: {line}");
    caps.join(",")
}

#[test]
fn watch_runs_as_nobody_with_only_the_capabilities_its_unit_grants() {
    // As the systemd unit runs it (DynamicUser, AmbientCapabilities): not root, no other
    // capability in any set; the stalls of a root-owned service are still found and named.
    let dir = scratch_dir("watch-capabilities");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let c_bin = c_service(&dir, "capsvc_c");
    let events = dir.join("events.jsonl");
    let caps = documented_capabilities();
    let mut command = Command::new("setpriv");
    command
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(format!("--inh-caps=-all,{caps}"))
        .arg(format!("--ambient-caps=-all,{caps}"))
        .arg(format!("--bounding-set=-all,{caps}"))
        .arg("--")
        .arg(agent_bin())
        .args(["watch", "--comm", "capsvc_c", "--quiet", "--events"])
        .arg(&events);
    let watch = Watch::spawn(command);
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", watch.pid())).unwrap_or_default();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.contains("65534")),
        "the agent runs as nobody: {status}"
    );
    let mut c = Target::spawn(Command::new(&c_bin).args(["3", "200", "10"]));
    wait_exit(&mut c, Duration::from_secs(30));
    let planted = planted_lines(&c.stdout.collect(Duration::from_millis(100)));
    assert_eq!(planted.len(), 3);
    std::thread::sleep(Duration::from_millis(500));
    let (status, stderr) = watch.stop();
    assert!(status.success(), "{status:?} {stderr:#?}");
    let lines = event_lines(&events);
    for p in &planted {
        let event = logged(&lines, p).unwrap_or_else(|| panic!("no line for {p:?}: {stderr:#?}"));
        let names = function_names(event);
        assert_eq!(
            names.first().map(String::as_str),
            Some("spin_in_handler"),
            "the service's function on top, read without root: {names:?}"
        );
    }
}

/// Resident memory of a process, in bytes.
fn rss_bytes(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Entries of the agent's own map NAME (found through its fds' fdinfo, since other agents on
/// the machine have maps of the same name), read with bpftool.
fn map_entries(agent: i32, name: &str) -> usize {
    let ids: Vec<String> = std::fs::read_dir(format!("/proc/{agent}/fdinfo"))
        .expect("the agent's fdinfo")
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("map_id:"))
                .map(|id| id.trim().to_string())
        })
        .collect();
    for id in ids {
        let show = Command::new("bpftool")
            .args(["-j", "map", "show", "id", &id])
            .needed_output();
        let Ok(info) = serde_json::from_slice::<Value>(&show.stdout) else {
            continue;
        };
        if info["name"] != name {
            continue;
        }
        let dump = Command::new("bpftool")
            .args(["-j", "map", "dump", "id", &id])
            .needed_output();
        let entries: Value = serde_json::from_slice(&dump.stdout).expect("bpftool's JSON");
        return entries.as_array().map_or(0, Vec::len);
    }
    panic!("the agent has no map named {name}");
}

/// Worker churn (fork and exec a worker every 50 ms, each stalling once and exiting): the
/// agent's memory stays flat, every worker's stall is seen, and nothing of the exited workers
/// is left in the kernel's follow maps.
#[test]
fn watch_memory_stays_flat_under_worker_churn() {
    let dir = scratch_dir("watch-churn");
    let built = c_target("watch_churn", &["-O1", "-g"]);
    let churn = dir.join("stallsvc_churn");
    std::fs::copy(&built, &churn).expect("copy");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let watch = Watch::start(&[
        "--comm",
        "stallsvc_churn",
        "--threshold",
        "20ms",
        "--listen",
        &listen,
        "--quiet",
    ]);
    let agent = watch.pid();
    const SECONDS: u64 = 24;
    let mut target = Target::spawn(Command::new(&churn).arg(SECONDS.to_string()));
    let started = Instant::now();
    let mut samples: Vec<(f64, u64)> = Vec::new();
    while target.child.try_wait().expect("wait").is_none() {
        samples.push((started.elapsed().as_secs_f64(), rss_bytes(agent)));
        assert!(
            started.elapsed() < Duration::from_secs(SECONDS + 30),
            "churn did not end"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let workers: u64 = target
        .stdout
        .wait_for("workers", Duration::from_secs(5))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .expect("the churn reports its workers");
    // The last exits are read within a tick; a process whose exit was lost, at the next look
    // at /proc (every 2 s).
    let deadline = Instant::now() + Duration::from_secs(10);
    let page = loop {
        let page = http_get(port, "/metrics").expect("/metrics").1;
        if page.contains("\nstallscope_followed_processes 0\n") || Instant::now() > deadline {
            break page;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let metric = |name: &str| -> f64 {
        page.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let stalls = metric("stallscope_stalls_total{");
    let followed = metric("stallscope_followed_processes");
    let pids_left = map_entries(agent, "FOLLOWED_PIDS");
    let tids_left = map_entries(agent, "FOLLOWED_TIDS");
    let (status, stderr) = watch.stop();
    assert!(status.success(), "{status:?} {stderr:#?}");
    // Memory: after a third of the run (caches warm), flat to the end: within 10 % or 8 MB.
    let warm = samples
        .iter()
        .find(|(t, _)| *t >= SECONDS as f64 / 3.0)
        .map(|(_, rss)| *rss)
        .expect("samples");
    let peak = samples.iter().map(|(_, rss)| *rss).max().unwrap_or(0);
    let allowed = warm + (warm / 10).max(8 << 20);
    assert!(
        peak <= allowed,
        "RSS grew under churn: {} MB after warm-up, peak {} MB ({} workers): {samples:?}",
        warm >> 20,
        peak >> 20,
        workers
    );
    assert!(workers >= 100, "the churn made {workers} workers");
    // Each worker stalls once (30 ms, threshold 20 ms): nearly all are seen (a worker the
    // machine's load kept under the threshold is not a stall), none twice.
    assert!(
        stalls <= workers as f64 && stalls >= workers as f64 * 0.8,
        "{stalls} stalls for {workers} workers"
    );
    assert!(
        pids_left == 0 && tids_left == 0,
        "the follow maps hold {pids_left} processes and {tids_left} threads after they all exited"
    );
    assert_eq!(followed, 0.0, "every worker and the parent have exited");
    eprintln!(
        "churn: {workers} workers, {stalls} stalls, RSS {} MB after warm-up, peak {} MB",
        warm >> 20,
        peak >> 20
    );
}
