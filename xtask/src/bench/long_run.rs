//! `cargo xtask bench --long`: the agent's memory over a long recording of a busy service, and
//! how the main results refer to the latest figures (`bench/LONG_RUN.md`, and
//! `bench/LONG_RUN_FASTAPI.md` for `--service fastapi`).

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use super::{
    Guard, machine_line,
    overhead::{App, http_ok, start_server},
    rss_kib, scratch, start_agent, tools, wait_timeout,
};
use crate::{build_demo_server, root, send};

/// The service the long run records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Service {
    /// The bundled C epoll server: a request every 5 ms, a 150 ms stall every ~2 s.
    Epoll,
    /// The FastAPI app under uvicorn, kept busy by wrk (one thread, 4 connections), with a
    /// 300 ms CPU-bound request every 2 s; CPython stacks are the agent's heaviest.
    Fastapi,
}

impl Service {
    fn file(self) -> &'static str {
        match self {
            Service::Epoll => "bench/LONG_RUN.md",
            Service::Fastapi => "bench/LONG_RUN_FASTAPI.md",
        }
    }

    fn all() -> [Service; 2] {
        [Service::Epoll, Service::Fastapi]
    }
}

/// A service under load for the long run; everything stops when dropped.
struct Loaded {
    _server: Guard,
    _load: Vec<Guard>,
    pid: u32,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drop for Loaded {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A thread sending requests until `stop`, counting them.
fn load_thread(
    stop: &Arc<AtomicBool>,
    sent: &Arc<AtomicU64>,
    each: impl Fn(u64) + Send + 'static,
) -> thread::JoinHandle<()> {
    let (stop, sent) = (stop.clone(), sent.clone());
    thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            each(sent.fetch_add(1, Ordering::Relaxed));
        }
    })
}

fn start_loaded(service: Service, minutes: u64) -> Result<Loaded> {
    let dir = scratch()?;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    match service {
        Service::Epoll => {
            let server_bin = build_demo_server(&dir)?;
            let mut server =
                Guard::spawn(Command::new(&server_bin).arg("0").stdout(Stdio::piped()))?;
            let mut out = BufReader::new(server.child().stdout.take().context("server stdout")?);
            let mut first = String::new();
            out.read_line(&mut first)?;
            thread::spawn(move || for _ in out.lines() {});
            let port: u16 = first
                .trim()
                .strip_prefix("listening ")
                .and_then(|p| p.parse().ok())
                .context("server did not report its port")?;
            let thread = load_thread(&stop, &sent, move |n| {
                let _ = send(
                    port,
                    if n % 400 == 399 {
                        "burn 150\n"
                    } else {
                        "quick\n"
                    },
                );
                thread::sleep(Duration::from_millis(5));
            });
            Ok(Loaded {
                pid: server.id(),
                _server: server,
                _load: Vec::new(),
                stop,
                sent,
                thread: Some(thread),
            })
        }
        Service::Fastapi => {
            let tools = tools::ensure(&dir)?;
            let server = start_server(App::FastApi, &tools, &dir)?;
            let port = server.port;
            let wrk = Guard::spawn(
                Command::new("wrk")
                    .args(["-t1", "-c4", "--timeout", "5s"])
                    .arg(format!("-d{}s", minutes * 60 + 60))
                    .arg(format!("http://127.0.0.1:{port}{}", App::FastApi.path()))
                    .stdout(Stdio::null()),
            )?;
            let thread = load_thread(&stop, &sent, move |_| {
                let _ = http_ok(port, "/cpu");
                thread::sleep(Duration::from_secs(2));
            });
            Ok(Loaded {
                pid: server.guard.id(),
                _server: server.guard,
                _load: vec![wrk],
                stop,
                sent,
                thread: Some(thread),
            })
        }
    }
}

/// A recording of a busy service: the agent's RSS is sampled when it starts recording and
/// every minute; with every cache bounded, growth must stop.
pub fn long_run(minutes: u64, service: Service) -> Result<()> {
    let dir = scratch()?;
    let loaded = start_loaded(service, minutes)?;
    let agent = start_agent(
        loaded.pid,
        &dir.join("long-run"),
        &["--duration", &format!("{minutes}m")],
    )?;
    let mut table = String::from("| minute | agent RSS (MiB) |\n| --- | --- |\n");
    let started = Instant::now();
    for minute in 0..=minutes {
        while started.elapsed() < Duration::from_secs(minute * 60) {
            thread::sleep(Duration::from_millis(500));
        }
        let Some(kib) = rss_kib(agent.id()) else {
            break;
        };
        let line = format!("| {minute} | {:.1} |\n", kib as f64 / 1024.0);
        eprint!("long run: {line}");
        table.push_str(&line);
    }
    let mut child = agent.into_child();
    let status = wait_timeout(&mut child, Duration::from_secs(300))?;
    let sent = loaded.sent.load(Ordering::Relaxed);
    drop(loaded);
    let what = match service {
        Service::Epoll => {
            format!("a busy epoll server ({sent} requests, a 150 ms stall every ~2 s)")
        }
        Service::Fastapi => format!(
            "the FastAPI app under uvicorn, kept busy by `wrk -t1 -c4` on `/ok`, with {sent} requests to `/cpu` (300 ms of pure-Python CPU each, one every ~2 s)"
        ),
    };
    let text = format!(
        "# Long run\n\nMachine: {}\n\n{minutes} minutes recording {what}; agent exit: {status}. Minute 0 is when the agent started recording. Reproduce: `cargo xtask bench --long --service {}`.\n\n{table}",
        machine_line(),
        match service {
            Service::Epoll => "epoll",
            Service::Fastapi => "fastapi",
        }
    );
    let path = root().join(service.file());
    std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    println!("{text}");
    Ok(())
}

/// The agent's RSS in the latest long run of a service.
#[derive(Clone, Debug)]
pub struct LongRunFacts {
    pub file: &'static str,
    pub machine: String,
    /// (minute, MiB), in order.
    pub rss: Vec<(u64, f64)>,
}

impl LongRunFacts {
    /// RSS at the first sample at or past `minute` (or the last one).
    pub fn at(&self, minute: u64) -> Option<f64> {
        self.rss
            .iter()
            .find(|(m, _)| *m >= minute)
            .or(self.rss.last())
            .map(|(_, mib)| *mib)
    }

    /// The first non-zero sample (the agent's RSS once it records).
    pub fn start(&self) -> Option<(u64, f64)> {
        self.rss.iter().copied().find(|(_, mib)| *mib > 0.0)
    }
}

fn read_long_run(service: Service) -> Option<LongRunFacts> {
    let text = std::fs::read_to_string(root().join(service.file())).ok()?;
    parse_long_run(service.file(), &text)
}

fn parse_long_run(file: &'static str, text: &str) -> Option<LongRunFacts> {
    let machine = text
        .lines()
        .find_map(|l| l.strip_prefix("Machine: "))
        .unwrap_or("unknown machine")
        .to_string();
    let rss = text
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            Some((cells.first()?.parse().ok()?, cells.get(1)?.parse().ok()?))
        })
        .collect::<Vec<(u64, f64)>>();
    (!rss.is_empty()).then_some(LongRunFacts { file, machine, rss })
}

/// The latest long runs that lasted at least `minutes`, each with its RSS then (MiB).
pub fn rss_at_minute(minutes: u64) -> Vec<(LongRunFacts, f64)> {
    Service::all()
        .into_iter()
        .filter_map(read_long_run)
        .filter(|facts| facts.rss.last().is_some_and(|(m, _)| *m >= minutes))
        .filter_map(|facts| {
            let mib = facts.at(minutes)?;
            Some((facts, mib))
        })
        .collect()
}

/// A paragraph for the results: RSS at the start and after 10 minutes, from the latest long
/// runs.
pub fn reference() -> String {
    let mut text = String::new();
    for service in Service::all() {
        let Some(facts) = read_long_run(service) else {
            text.push_str(&format!(
                "\nRSS over a long recording: no `{}` yet (`cargo xtask bench --long --service {}`, 30 minutes).\n",
                service.file(),
                match service {
                    Service::Epoll => "epoll",
                    Service::Fastapi => "fastapi",
                }
            ));
            continue;
        };
        let (start_minute, start) = facts.start().unwrap_or((0, f64::NAN));
        let last = facts.rss.last().copied().unwrap_or((0, f64::NAN));
        let peak = facts.rss.iter().map(|(_, m)| *m).fold(0.0, f64::max);
        let at_10 = if last.0 >= 10 {
            format!(
                "{:.1} MiB after 10 minutes, ",
                facts.at(10).unwrap_or(f64::NAN)
            )
        } else {
            String::new()
        };
        text.push_str(&format!(
            "\nRSS over a long recording ({}, `{}`, {}): {start:.1} MiB at minute {start_minute}, {at_10}{:.1} MiB at minute {} (peak {peak:.1} MiB).\n",
            match service {
                Service::Epoll => "a busy C epoll server",
                Service::Fastapi => "the FastAPI app under load",
            },
            facts.file,
            facts.machine,
            last.1,
            last.0,
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_long_run_table() {
        let text = "# Long run\n\nMachine: X · 2 cores\n\n| minute | agent RSS (MiB) |\n| --- | --- |\n| 0 | 0.0 |\n| 1 | 48.9 |\n| 10 | 56.3 |\n| 30 | 62.5 |\n";
        let facts = parse_long_run("f", text);
        assert!(facts.is_some());
        let Some(facts) = facts else { return };
        assert_eq!(facts.machine, "X · 2 cores");
        assert_eq!(facts.start(), Some((1, 48.9)));
        assert_eq!(facts.at(10), Some(56.3));
        assert_eq!(facts.at(11), Some(62.5));
        assert_eq!(facts.at(99), Some(62.5));
    }
}
