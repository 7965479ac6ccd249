//! `cargo xtask demo`: a stdlib-only asyncio service with two planted stalls, recorded for five
//! seconds, so the main job can be seen without installing anything from PyPI.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::{agent_path, root};

/// The machine's Python 3 (any of 3.9 to 3.13): the demo needs no package.
fn python() -> PathBuf {
    ["/usr/bin/python3", "/usr/local/bin/python3"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("python3"))
}

/// One HTTP/1.1 GET; the service closes the connection after answering.
fn get(port: u16, path: &str) -> Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .with_context(|| format!("connecting to the demo service on port {port}"))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

pub fn run() -> Result<()> {
    let dir = root().join("target/demo");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let script = root().join("tests/targets/python/asyncio_service.py");
    let python = python();
    let mut service = Command::new(&python)
        .arg(&script)
        .arg("0")
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {} {}", python.display(), script.display()))?;
    let mut service_out = BufReader::new(service.stdout.take().context("service stdout")?);
    let mut first = String::new();
    service_out.read_line(&mut first)?;
    let port: u16 = first
        .trim()
        .strip_prefix("listening on ")
        .and_then(|p| p.parse().ok())
        .context("the demo service did not report its port")?;
    let pid = service.id();
    eprintln!(
        "demo: started asyncio_service.py (pid {pid}, {}) on 127.0.0.1:{port}",
        python.display()
    );
    let out_dir = dir.join("recording");
    let mut agent = Command::new(agent_path())
        .args([
            "record",
            "--pid",
            &pid.to_string(),
            "--duration",
            "5s",
            "--out",
        ])
        .arg(&out_dir)
        .stderr(Stdio::piped())
        .spawn()
        .context("starting stallscope")?;
    let mut lines = BufReader::new(agent.stderr.take().context("agent stderr")?).lines();
    let mut ready = false;
    for line in lines.by_ref() {
        let line = line?;
        eprintln!("{line}");
        if line.contains("stallscope: recording") {
            ready = true;
            break;
        }
    }
    thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            eprintln!("{line}");
        }
    });
    if ready {
        eprintln!(
            "demo: sending requests: quick ones, /validate (a regex over a JSON body inside an \
             async def: 250 ms on the loop) and /sleep (time.sleep(0.2) inside an async def)"
        );
        for path in ["/validate?ms=250", "/sleep?ms=200"] {
            for _ in 0..20 {
                get(port, "/ok")?;
            }
            get(port, path)?;
            thread::sleep(Duration::from_millis(300));
        }
    }
    let status = agent.wait()?;
    let _ = service.kill();
    let _ = service.wait();
    if !status.success() {
        bail!("stallscope exited with {status}");
    }
    screenshot(&out_dir.join("report.html"));
    eprintln!(
        "demo: outputs are in {} (open report.html in a browser)",
        out_dir.display()
    );
    Ok(())
}

/// README's picture of report.html: the demo's page in headless Chromium, the longest stall
/// selected (tests/browser/report_html.cjs --plain). A failure is said, not fatal: the
/// recording is the demo's point.
fn screenshot(report: &std::path::Path) {
    let png = root().join("docs/report.png");
    let result = Command::new("node")
        .arg(root().join("tests/browser/report_html.cjs"))
        .arg(report)
        .arg(&png)
        .arg("--plain")
        .stdout(Stdio::null())
        .status();
    match result {
        Ok(status) if status.success() => {
            eprintln!("demo: screenshot of report.html in {}", png.display())
        }
        Ok(status) => eprintln!("demo: no screenshot of report.html (browser driver: {status})"),
        Err(err) => eprintln!("demo: no screenshot of report.html (cannot run node: {err})"),
    }
}
