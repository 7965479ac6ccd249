//! `stallscope watch`: the always-on monitor. The same probes, session and stall detection as
//! `record`, run until stopped, with processes followed as they come and go and each stall
//! handed, as it ends, to the outputs of a long-running agent: Prometheus metrics
//! ([`crate::outputs::metrics`], served at `/metrics`), a JSON-lines log ([`crate::outputs::events_log`]) and
//! a flight recorder ([`crate::commands::flight_recorder`]).
//!
//! Which processes: `--pid` (and descendants), plus everyone matching `--comm`/`--exe` globs or
//! in a `--cgroup`. The kernel side follows a match by itself at exec and fork (from its first
//! instruction); a look at /proc every [`RESCAN`] finds what it cannot (processes that were
//! there first, kernels without bpf_loop, a process moved into a cgroup without exec).
//!
//! Nothing accumulates: the session streams (stalls are not kept, exited processes and their
//! symbols are dropped a tick after their exit), so memory stays flat for days.

use std::{
    cell::RefCell,
    collections::{HashMap, HashSet},
    path::PathBuf,
    rc::Rc,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use profiler_common::{MatchPattern, drop as drop_index};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    signal::unix::{SignalKind, signal},
    time::MissedTickBehavior,
};

use crate::{
    analysis::session::{Session, StallSink, monotonic_ns},
    commands::{
        flight_recorder::FlightRecorder,
        record::{self, detect_waiting_threads},
    },
    config::{Target, View, WatchConfig},
    model::{ProcessRecord, StallRecord},
    outputs::{
        events_log::{self, EventsLog, StallEvent},
        metrics::{self, Metrics},
    },
    system::{
        attach::{Matching, Probes},
        cgroup,
        features::{self, KernelFeatures},
        privileges, procfs,
        ring_reader::RingReader,
        tracefs,
    },
};

/// How often /proc (and the cgroups' trees) are looked at for processes to follow.
const RESCAN: Duration = Duration::from_secs(2);

/// What `watch` was asked to follow.
struct Selection {
    comm: Vec<MatchPattern>,
    exe: Vec<MatchPattern>,
    cgroup_dirs: Vec<PathBuf>,
    /// The cgroup paths as /proc/PID/cgroup writes them ("/system.slice/x.service").
    cgroup_paths: Vec<String>,
    cgroup_ids: HashSet<u64>,
}

impl Selection {
    fn new(config: &WatchConfig, matching: &Matching) -> Result<Self> {
        let patterns = matching.patterns()?;
        let of_kind = |kind| {
            patterns
                .iter()
                .filter(|p| p.kind == kind)
                .copied()
                .collect::<Vec<_>>()
        };
        let mut cgroup_dirs = Vec::new();
        let mut cgroup_paths = Vec::new();
        for given in &config.cgroups {
            let dir = cgroup::resolve(given)?;
            let relative = dir
                .strip_prefix(cgroup::root())
                .map(|p| format!("/{}", p.display()))
                .unwrap_or_else(|_| dir.display().to_string());
            cgroup_paths.push(relative);
            cgroup_dirs.push(dir);
        }
        Ok(Selection {
            comm: of_kind(profiler_common::matching::COMM),
            exe: of_kind(profiler_common::matching::EXE),
            cgroup_dirs,
            cgroup_paths,
            cgroup_ids: HashSet::new(),
        })
    }

    /// Every cgroup id under the selected cgroups now (they gain children as pods and units
    /// start).
    fn cgroup_ids_now(&self) -> Vec<u64> {
        self.cgroup_dirs
            .iter()
            .flat_map(|dir| cgroup::with_descendants(dir))
            .filter_map(|dir| cgroup::id(&dir).ok())
            .collect()
    }

    /// Whether a running process is one to follow (by name, executable or cgroup).
    fn matches(&self, pid: u32) -> bool {
        if !self.comm.is_empty()
            && let Some(stat) = procfs::stat(pid)
            && self.comm.iter().any(|p| p.matches(stat.comm.as_bytes()))
        {
            return true;
        }
        if !self.exe.is_empty()
            && let Some(exe) = procfs::exe(pid)
        {
            let exe = exe.to_string_lossy();
            if self.exe.iter().any(|p| p.matches(exe.as_bytes())) {
                return true;
            }
        }
        if !self.cgroup_paths.is_empty()
            && let Some(path) = cgroup::of_pid(pid)
        {
            return self
                .cgroup_paths
                .iter()
                .any(|c| path == *c || path.starts_with(&format!("{c}/")));
        }
        false
    }
}

/// The outputs, shared by the session's sink (stalls) and the event loop (scrapes, SIGHUP).
struct Outputs {
    metrics: Metrics,
    events: Option<EventsLog>,
    recorder: Option<FlightRecorder>,
    /// (comm, cgroup label) per process, read once while it lives.
    labels: HashMap<u32, (String, String)>,
    host: String,
    threshold_ns: u64,
}

impl Outputs {
    fn labels(&mut self, pid: u32, process: Option<&ProcessRecord>) -> (String, String) {
        if let Some(labels) = self.labels.get(&pid) {
            return labels.clone();
        }
        let comm = process
            .map(|p| p.comm.clone())
            .or_else(|| procfs::stat(pid).map(|s| s.comm))
            .unwrap_or_else(|| "?".into());
        let cgroup = cgroup::of_pid(pid).map_or_else(|| "unknown".into(), |p| cgroup::label(&p));
        // Bounded by the followed processes: pruned when they are gone (see `prune`).
        self.labels.insert(pid, (comm.clone(), cgroup.clone()));
        (comm, cgroup)
    }
}

struct Sink(Rc<RefCell<Outputs>>);

impl StallSink for Sink {
    fn stall(&mut self, stall: &StallRecord, process: Option<&ProcessRecord>) {
        let mut outputs = self.0.borrow_mut();
        let (comm, cgroup) = outputs.labels(stall.pid, process);
        outputs.metrics.stall(stall, &comm, &cgroup);
        let host = outputs.host.clone();
        if let Some(events) = outputs.events.as_mut() {
            // `watch` has no --native: its events read as the default view.
            let top_frames = crate::analysis::headline::headline(stall, View::PythonFirst)
                .map(|h| h.text("\u{1f}"))
                .map(|text| text.split('\u{1f}').map(str::to_string).collect())
                .unwrap_or_default();
            events.write(&StallEvent {
                time: events_log::wall_clock_s(),
                host: &host,
                stall,
                process,
                cgroup: &cgroup,
                cause: metrics::cause(stall),
                top_frames,
            });
        }
        let threshold_ns = outputs.threshold_ns;
        if let Some(recorder) = outputs.recorder.as_mut() {
            recorder.record(stall, process, threshold_ns);
        }
    }
}

/// `stallscope watch`: runs until SIGINT or SIGTERM (exit 0).
pub async fn run(config: WatchConfig) -> Result<()> {
    if let Some(reason) = features::kernel_release().and_then(|r| features::too_old(&r)) {
        bail!(features::too_old_line(&reason));
    }
    let start_pids: Vec<u32> = match &config.record.target {
        Target::Pids(pids) => pids.clone(),
        Target::Command(_) => Vec::new(),
    };
    for &pid in &start_pids {
        if procfs::process_id(pid).is_none() {
            bail!("no process with PID {pid}: it is not running (check with `ps -p {pid}`)");
        }
    }
    if let Some(problem) = privileges::check() {
        bail!(problem);
    }
    let tracefs_root = tracefs::ensure_mounted()?;
    let matching = Matching {
        comm: config.comm.clone(),
        exe: config.exe.clone(),
        cgroups: Vec::new(),
        exec_filename_offset: tracefs::exec_filename_offset(&tracefs_root),
    };
    let mut selection = Selection::new(&config, &matching)?;
    // Outputs before the probes: a bad path fails before anything is loaded.
    let events = config.events.as_deref().map(EventsLog::open).transpose()?;
    let recorder = match &config.keep_dir {
        Some(dir) => Some(FlightRecorder::new(dir, config.keep)?),
        None => None,
    };
    let listener = match config.listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr} (--listen)"))?,
        ),
        None => None,
    };
    let kernel = KernelFeatures::probe();
    let offsets = tracefs::read_offsets(&tracefs_root)?;
    let verifier_log = std::env::temp_dir().join(format!(
        "stallscope-watch-{}-verifier.log",
        std::process::id()
    ));
    let matching = Matching {
        cgroups: selection.cgroup_ids_now(),
        ..matching
    };
    selection.cgroup_ids = matching.cgroups.iter().copied().collect();
    let (mut probes, ring, kernel) = record::load_probes(kernel, |kernel| {
        record::load_options(
            &config.record,
            kernel,
            offsets,
            verifier_log.clone(),
            matching.clone(),
        )
    })
    .map_err(record::explain_load_error)?;

    let outputs = Rc::new(RefCell::new(Outputs {
        metrics: Metrics::new(),
        events,
        recorder,
        labels: HashMap::new(),
        host: events_log::hostname(),
        threshold_ns: config.record.threshold_ns,
    }));
    let mut session = Session::new(config.record.clone());
    session.streaming = true;
    // Runs for days: the table of unwound stacks starts afresh when full (see Resolver).
    session.resolver.rotate_interned = true;
    session.sink = Some(Box::new(Sink(outputs.clone())));
    if !config.record.quiet {
        session.live_sink = Some(Box::new(crate::outputs::live::LiveLines(
            config.record.view,
        )));
    }
    for pid in procfs::with_descendants(&start_pids) {
        follow(&mut session, &mut probes, pid);
    }
    rescan(&mut session, &mut probes, &mut selection);
    let keep = privileges::still_needed(
        config
            .keep_dir
            .as_deref()
            .is_some_and(privileges::output_needs_override),
    );
    if let Err(err) = privileges::drop_all_but(keep) {
        eprintln!("stallscope: warning: could not drop unneeded capabilities: {err}");
    }
    session.sync_python(&mut probes);
    announce(&config, &session);
    if let Some(limits) = kernel.limits_line() {
        eprintln!("stallscope: {limits}");
    }
    let local = tokio::task::LocalSet::new();
    local
        .run_until(event_loop(
            &mut session,
            &mut probes,
            ring,
            listener,
            &outputs,
            &mut selection,
        ))
        .await?;
    probes.unfollow_all();
    eprintln!("stallscope: watch stopped");
    Ok(())
}

fn announce(config: &WatchConfig, session: &Session) {
    let mut what = Vec::new();
    if !session.processes.is_empty() {
        what.push(format!("{} process(es) now", session.processes.len()));
    }
    for glob in &config.comm {
        what.push(format!("--comm {glob}"));
    }
    for glob in &config.exe {
        what.push(format!("--exe {glob}"));
    }
    for cgroup in &config.cgroups {
        what.push(format!("--cgroup {cgroup}"));
    }
    let listen = config
        .listen
        .map(|a| format!(", metrics at http://{a}/metrics"))
        .unwrap_or_default();
    eprintln!(
        "stallscope: watching {}, threshold {}{listen}",
        what.join(", "),
        crate::units::format_duration(config.record.threshold_ns)
    );
}

/// Starts following a running process (its threads now; its children as they come).
fn follow(session: &mut Session, probes: &mut Probes, pid: u32) {
    if session.processes.contains(pid) {
        return;
    }
    let Some(id) = procfs::process_id(pid) else {
        return;
    };
    if let Err(err) = probes.follow(pid, &procfs::threads(pid)) {
        log::warn!("{err:#}");
        return;
    }
    if !procfs::is_alive(id) {
        // It exited while we added it: its exit did not see it followed, so nothing would
        // remove its entries (the periodic prune would, later).
        probes.unfollow(pid);
        return;
    }
    session.add_process(probes, pid, None);
    detect_waiting_threads(session, pid);
}

/// Follows what matches now and the kernel side has not caught (it was running before, or
/// changed cgroup without an exec), and tells the kernel side about new descendant cgroups.
fn rescan(session: &mut Session, probes: &mut Probes, selection: &mut Selection) {
    for id in selection.cgroup_ids_now() {
        if selection.cgroup_ids.len() < profiler_common::MAX_MATCH_CGROUPS as usize
            && selection.cgroup_ids.insert(id)
            && let Err(err) = probes.follow_cgroup(id)
        {
            log::warn!("{err:#}");
        }
    }
    let mut candidates: Vec<u32> = Vec::new();
    if !selection.comm.is_empty() || !selection.exe.is_empty() {
        candidates.extend(procfs::all_pids());
    }
    for dir in &selection.cgroup_dirs {
        for sub in cgroup::with_descendants(dir) {
            candidates.extend(cgroup::procs(&sub));
        }
    }
    let own = std::process::id();
    candidates.sort_unstable();
    candidates.dedup();
    for pid in candidates {
        if pid != own && !session.processes.contains(pid) && selection.matches(pid) {
            follow(session, probes, pid);
        }
    }
}

/// Running iteration counts, turned into the iterations counter's increments.
#[derive(Default)]
struct IterationCounts {
    last: HashMap<u32, u64>,
}

impl IterationCounts {
    /// Adds what every loop thread did since the last tick (exited threads: up to their end).
    fn update(&mut self, session: &mut Session, outputs: &mut Outputs) {
        let exited = session.timeline.take_exited();
        let mut deltas: HashMap<u32, u64> = HashMap::new();
        for thread in &exited {
            let last = self.last.remove(&thread.tid).unwrap_or(0);
            *deltas.entry(thread.pid).or_default() += thread.iterations.saturating_sub(last);
        }
        for (pid, tid, iterations) in session.timeline.live_iterations() {
            let last = self.last.insert(tid, iterations).unwrap_or(0);
            // A smaller count: the tid belongs to a new thread now.
            let delta = if iterations >= last {
                iterations - last
            } else {
                iterations
            };
            *deltas.entry(pid).or_default() += delta;
        }
        for (pid, delta) in deltas {
            if delta == 0 {
                continue;
            }
            let process = session.processes.record(pid);
            let (comm, cgroup) = outputs.labels(pid, process);
            outputs.metrics.iterations(&comm, &cgroup, delta);
        }
        session.purge_exited(&exited);
    }
}

async fn event_loop(
    session: &mut Session,
    probes: &mut Probes,
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    listener: Option<TcpListener>,
    outputs: &Rc<RefCell<Outputs>>,
    selection: &mut Selection,
) -> Result<()> {
    let mut ring = RingReader::spawn(ring)?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut reported_losses = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut rescan_tick = tokio::time::interval(RESCAN);
    rescan_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut counts = IterationCounts::default();
    loop {
        tokio::select! {
            batch = ring.next() => {
                let Some(batch) = batch else {
                    bail!("the ring buffer's reader thread ended");
                };
                record::handle_batch(session, probes, &batch);
            }
            _ = tick.tick() => {
                if let Some(logger) = probes.logger.as_mut() {
                    logger.flush();
                }
                record::warn_about_losses(session, probes, &mut reported_losses);
                session.sync_python(probes);
                let mut outputs = outputs.borrow_mut();
                counts.update(session, &mut outputs);
                refresh_state(session, probes, &mut outputs);
            }
            _ = rescan_tick.tick() => {
                // Processes whose exit was not seen (lost, or a late event brought a dead one
                // back): gone from /proc, so forgotten, as their exit would have.
                session.reap_vanished(probes, monotonic_ns());
                rescan(session, probes, selection);
                probes.prune_gone();
            }
            accepted = async {
                match listener.as_ref() {
                    Some(l) => l.accept().await,
                    None => std::future::pending().await,
                }
            } => {
                if let Ok((stream, _)) = accepted {
                    let page = {
                        let mut outputs = outputs.borrow_mut();
                        refresh_state(session, probes, &mut outputs);
                        outputs.metrics.encode()
                    };
                    tokio::task::spawn_local(serve(stream, page));
                }
            }
            _ = sighup.recv() => {
                if let Some(events) = outputs.borrow_mut().events.as_mut()
                    && let Err(err) = events.reopen()
                {
                    eprintln!("stallscope: warning: {err:#}");
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    record::read_to_the_end(session, probes, &mut ring).await;
    session.flush(probes);
    record::log_kstack_stats(probes);
    Ok(())
}

/// The numbers read rather than counted, and the label cache pruned of processes gone.
fn refresh_state(session: &Session, probes: &Probes, outputs: &mut Outputs) {
    let kernel_full = probes.drops()[drop_index::RINGBUF_FULL as usize];
    let lost = session.loss.lost.max(kernel_full);
    let (cpu, rss) = metrics::own_usage();
    outputs
        .metrics
        .set_state(session.processes.len(), lost, cpu, rss);
    if outputs.labels.len() > 2 * session.processes.len() + 64 {
        outputs
            .labels
            .retain(|pid, _| session.processes.contains(*pid));
    }
}

/// Largest request head read (Prometheus sends a few hundred bytes).
const MAX_REQUEST_BYTES: usize = 8192;

/// Answers one HTTP/1.x request: GET /metrics (the page rendered when it was accepted),
/// GET /healthz, 404 otherwise. One request per connection; a client that sends nothing for
/// 5 s is dropped.
async fn serve(mut stream: TcpStream, page: String) {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < MAX_REQUEST_BYTES {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    if read.is_err() {
        return;
    }
    let (status, content_type, body) = route(&request, page);
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn route(request: &[u8], page: String) -> (&'static str, &'static str, String) {
    let line = request
        .split(|&b| b == b'\r' || b == b'\n')
        .next()
        .unwrap_or(&[]);
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => ("200 OK", metrics::CONTENT_TYPE, page),
        ("GET", "/healthz") => ("200 OK", "text/plain; charset=utf-8", "ok\n".into()),
        ("GET", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found: try /metrics or /healthz\n".into(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_metrics_health_and_the_rest() {
        let get = |path: &str| {
            route(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
                "page".into(),
            )
        };
        assert_eq!(get("/metrics").0, "200 OK");
        assert_eq!(get("/metrics").2, "page");
        assert_eq!(get("/metrics?x=1").2, "page");
        assert_eq!(get("/healthz").2, "ok\n");
        assert_eq!(get("/").0, "404 Not Found");
        assert_eq!(
            route(b"POST /metrics HTTP/1.1\r\n\r\n", String::new()).0,
            "405 Method Not Allowed"
        );
        assert_eq!(route(b"", String::new()).0, "405 Method Not Allowed");
    }
}
