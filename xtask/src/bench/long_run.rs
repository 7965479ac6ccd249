//! `cargo xtask bench --long`: the agent's memory over a long recording of a busy server, and
//! how the main results refer to its latest figures (`bench/LONG_RUN.md`).

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use super::{Guard, machine_line, rss_kib, scratch, start_agent, wait_timeout};
use crate::{build_demo_server, root, send};

const LONG_RUN_MD: &str = "bench/LONG_RUN.md";

/// A recording of a busy server (a request every 5 ms, a 150 ms stall every 2 s): the agent's
/// RSS is sampled when it starts recording and every minute; with every cache bounded, growth
/// must stop.
pub fn long_run(minutes: u64) -> Result<()> {
    let dir = scratch()?;
    let server_bin = build_demo_server(&dir)?;
    let mut server = Guard::spawn(Command::new(&server_bin).arg("0").stdout(Stdio::piped()))?;
    let mut server_out = BufReader::new(server.child().stdout.take().context("server stdout")?);
    let mut first = String::new();
    server_out.read_line(&mut first)?;
    thread::spawn(move || for _ in server_out.lines() {});
    let port: u16 = first
        .trim()
        .strip_prefix("listening ")
        .and_then(|p| p.parse().ok())
        .context("server did not report its port")?;
    let agent = start_agent(
        server.id(),
        &dir.join("long-run"),
        &["--duration", &format!("{minutes}m")],
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    let load_stop = stop.clone();
    let load = thread::spawn(move || {
        let mut sent = 0u64;
        while !load_stop.load(Ordering::Relaxed) {
            let line = if sent % 400 == 399 {
                "burn 150\n"
            } else {
                "quick\n"
            };
            let _ = send(port, line);
            sent += 1;
            thread::sleep(Duration::from_millis(5));
        }
        sent
    });
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
    stop.store(true, Ordering::Relaxed);
    let sent = load.join().unwrap_or(0);
    drop(server);
    let text = format!(
        "# Long run\n\nMachine: {}\n\n{minutes} minutes recording a busy epoll server ({sent} requests, a 150 ms stall every ~2 s); agent exit: {status}. Minute 0 is when the agent started recording.\n\n{table}",
        machine_line()
    );
    let path = root().join(LONG_RUN_MD);
    std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    println!("{text}");
    Ok(())
}

/// The agent's RSS in the latest long run.
#[derive(Clone, Debug)]
pub struct LongRunFacts {
    pub machine: String,
    /// (minute, MiB), in order.
    pub rss: Vec<(u64, f64)>,
}

impl LongRunFacts {
    /// RSS at the first sample past `minute` (or the last one).
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

fn read_long_run() -> Option<LongRunFacts> {
    let text = std::fs::read_to_string(root().join(LONG_RUN_MD)).ok()?;
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
    (!rss.is_empty()).then_some(LongRunFacts { machine, rss })
}

/// The latest long run, when there is one that lasted at least `minutes`.
pub fn rss_at_minute(minutes: u64) -> Option<(LongRunFacts, f64)> {
    let facts = read_long_run()?;
    let last = facts.rss.last()?.0;
    if last < minutes {
        return None;
    }
    let mib = facts.at(minutes)?;
    Some((facts, mib))
}

/// A paragraph for the results: RSS at the start and after 10 minutes, from the latest long run.
pub fn reference() -> String {
    let Some(facts) = read_long_run() else {
        return format!(
            "\nRSS over a long recording: no `{LONG_RUN_MD}` yet; run `cargo xtask bench --long` (30 minutes).\n"
        );
    };
    let (start_minute, start) = facts.start().unwrap_or((0, f64::NAN));
    let last = facts.rss.last().copied().unwrap_or((0, f64::NAN));
    let peak = facts.rss.iter().map(|(_, m)| *m).fold(0.0, f64::max);
    format!(
        "\nRSS over a long recording of a busy server (from `{LONG_RUN_MD}`, `cargo xtask bench --long`, {}): {start:.1} MiB at minute {start_minute}, {:.1} MiB after 10 minutes, {:.1} MiB at minute {} (peak {peak:.1} MiB).\n",
        facts.machine,
        facts.at(10).unwrap_or(f64::NAN),
        last.1,
        last.0,
    )
}
