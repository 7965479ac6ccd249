//! `watch`'s Prometheus metrics: what it counts, under which names and labels, and their
//! exposition (OpenMetrics text, which Prometheus asks for and parses; encoded by the
//! `prometheus-client` crate).
//!
//! Names follow Prometheus's conventions: a `stallscope_` prefix, base units (seconds), counters
//! ending in `_total`, the agent's own cost under the standard `process_*` names.
//!
//! Cardinality is bounded: labels are `comm` (the process's command name), `cgroup` (its unit or
//! scope, see [`crate::system::cgroup::label`]) and `cause` (cpu, blocked, runqueue, lock); never a pid
//! (workers churn). At most [`MAX_SERIES`] (comm, cgroup) pairs get their own series; stalls of
//! any further pair are counted under `comm="_other", cgroup="_other"` and the overflow is
//! itself counted (`stallscope_label_overflow_total`).

use std::collections::HashSet;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

use crate::model::StallRecord;

/// Distinct (comm, cgroup) label pairs with series of their own.
pub const MAX_SERIES: usize = 500;

/// Label value standing for every pair past [`MAX_SERIES`].
pub const OVERFLOW_LABEL: &str = "_other";

/// The Content-Type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Buckets of the stall duration histogram, in seconds: from asyncio's 100 ms slow-callback
/// default to a minute (a lower --threshold fills the first bucket).
const DURATION_BUCKETS: [f64; 10] = [0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0];

/// Buckets of the ready-events histogram (how many events the loop found waiting when it came
/// back from a stall).
const READY_BUCKETS: [f64; 8] = [0.0, 1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 1000.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub comm: String,
    pub cgroup: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StallLabels {
    pub comm: String,
    pub cgroup: String,
    pub cause: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    stalls: Family<StallLabels, Counter>,
    durations: HistogramFamily<StallLabels>,
    ready: HistogramFamily<ServiceLabels>,
    iterations: Family<ServiceLabels, Counter>,
    followed: Gauge,
    lost: Counter,
    overflow: Counter,
    cpu_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    rss_bytes: Gauge,
    pairs: HashSet<ServiceLabels>,
    lost_seen: u64,
    cpu_seen: f64,
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

fn ready_histogram() -> Histogram {
    Histogram::new(READY_BUCKETS)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let stalls = Family::<StallLabels, Counter>::default();
        let durations: HistogramFamily<StallLabels> =
            Family::new_with_constructor(duration_histogram as fn() -> Histogram);
        let ready: HistogramFamily<ServiceLabels> =
            Family::new_with_constructor(ready_histogram as fn() -> Histogram);
        let iterations = Family::<ServiceLabels, Counter>::default();
        let followed = Gauge::default();
        let lost = Counter::default();
        let overflow = Counter::default();
        let cpu_seconds = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        let rss_bytes = Gauge::default();
        registry.register(
            "stallscope_stalls",
            "Event-loop stalls (iterations longer than the threshold) that ended, by process name, cgroup and dominant cause (cpu, blocked, runqueue, lock)",
            stalls.clone(),
        );
        registry.register_with_unit(
            "stallscope_stall_duration",
            "Duration of the stalls that ended",
            Unit::Seconds,
            durations.clone(),
        );
        registry.register(
            "stallscope_stall_ready_events",
            "Events ready when the loop came back from a stall (the wait call's return value right after it: work that queued behind the stall)",
            ready.clone(),
        );
        registry.register(
            "stallscope_loop_iterations",
            "Loop iterations completed by followed loop threads (stall rate = stalls / iterations)",
            iterations.clone(),
        );
        registry.register(
            "stallscope_followed_processes",
            "Processes followed right now",
            followed.clone(),
        );
        registry.register(
            "stallscope_lost_events",
            "Events the kernel could not deliver (ring buffer full); stalls meanwhile are marked data_lost",
            lost.clone(),
        );
        registry.register(
            "stallscope_label_overflow",
            "Stalls counted under comm=\"_other\",cgroup=\"_other\" because 500 (comm, cgroup) pairs already had series",
            overflow.clone(),
        );
        registry.register_with_unit(
            "process_cpu",
            "CPU time used by the stallscope agent itself (user and system)",
            Unit::Seconds,
            cpu_seconds.clone(),
        );
        registry.register_with_unit(
            "process_resident_memory",
            "Resident memory of the stallscope agent itself",
            Unit::Bytes,
            rss_bytes.clone(),
        );
        Metrics {
            registry,
            stalls,
            durations,
            ready,
            iterations,
            followed,
            lost,
            overflow,
            cpu_seconds,
            rss_bytes,
            pairs: HashSet::new(),
            lost_seen: 0,
            cpu_seen: 0.0,
        }
    }

    /// The labels a (comm, cgroup) pair is counted under: its own, or the overflow pair once
    /// MAX_SERIES pairs exist.
    fn bounded(&mut self, comm: &str, cgroup: &str) -> ServiceLabels {
        let labels = ServiceLabels {
            comm: comm.to_string(),
            cgroup: cgroup.to_string(),
        };
        if self.pairs.contains(&labels) {
            return labels;
        }
        if self.pairs.len() < MAX_SERIES {
            self.pairs.insert(labels.clone());
            return labels;
        }
        self.overflow.inc();
        ServiceLabels {
            comm: OVERFLOW_LABEL.into(),
            cgroup: OVERFLOW_LABEL.into(),
        }
    }

    /// A stall ended in a process named `comm` in cgroup `cgroup`.
    pub fn stall(&mut self, stall: &StallRecord, comm: &str, cgroup: &str) {
        let service = self.bounded(comm, cgroup);
        let labels = StallLabels {
            comm: service.comm.clone(),
            cgroup: service.cgroup.clone(),
            cause: cause(stall).to_string(),
        };
        self.stalls.get_or_create(&labels).inc();
        self.durations
            .get_or_create(&labels)
            .observe(stall.duration_ns as f64 / 1e9);
        if let Some(ready) = stall.ready_events {
            self.ready.get_or_create(&service).observe(ready as f64);
        }
    }

    /// Iterations completed since the last call by loop threads of one (comm, cgroup).
    pub fn iterations(&mut self, comm: &str, cgroup: &str, count: u64) {
        if count == 0 {
            return;
        }
        let labels = self.bounded(comm, cgroup);
        self.iterations.get_or_create(&labels).inc_by(count);
    }

    /// The numbers that are read rather than counted: followed processes, lost events so far,
    /// the agent's own CPU time and resident memory.
    pub fn set_state(&mut self, followed: usize, lost_total: u64, cpu_seconds: f64, rss: u64) {
        self.followed.set(followed as i64);
        if lost_total > self.lost_seen {
            self.lost.inc_by(lost_total - self.lost_seen);
            self.lost_seen = lost_total;
        }
        if cpu_seconds > self.cpu_seen {
            self.cpu_seconds.inc_by(cpu_seconds - self.cpu_seen);
            self.cpu_seen = cpu_seconds;
        }
        self.rss_bytes.set(rss as i64);
    }

    /// The exposition, for `/metrics`.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail; an encoder error would leave a truncated page,
        // which Prometheus reports as a failed scrape.
        if encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}

/// The stall's dominant cause as a label value: cpu (on-CPU), blocked (off-CPU, not on a
/// lock), runqueue (runnable, waiting for a CPU), lock (waiting for a lock or the GIL another
/// thread held).
pub fn cause(stall: &StallRecord) -> &'static str {
    let lock_ns: u64 = stall
        .stacks
        .iter()
        .filter(|s| s.kind == crate::model::StackKind::Lock)
        .map(|s| s.weight_ns)
        .sum();
    let blocked_ns = stall.off_cpu_ns.saturating_sub(lock_ns);
    let causes = [
        ("cpu", stall.on_cpu_ns),
        ("blocked", blocked_ns),
        ("runqueue", stall.runqueue_ns),
        ("lock", lock_ns),
    ];
    causes
        .iter()
        .max_by_key(|(_, ns)| *ns)
        .map_or("cpu", |(name, _)| name)
}

/// The agent's own CPU time (user + system, seconds) and resident memory (bytes), from /proc.
pub fn own_usage() -> (f64, u64) {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|text| {
            // Fields after the command name (which may hold spaces and parentheses).
            let rest = text.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) / ticks)
        })
        .unwrap_or(0.0);
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|text| text.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page);
    (cpu, rss)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stall(on_cpu_ms: u64, off_cpu_ms: u64, lock_ms: u64) -> StallRecord {
        const MS: u64 = 1_000_000;
        let mut stacks = Vec::new();
        if lock_ms > 0 {
            stacks.push(crate::model::StackRecord {
                kind: crate::model::StackKind::Lock,
                weight_ns: lock_ms * MS,
                count: 1,
                syscall: Some("futex".into()),
                frames: Vec::new(),
                waker: None,
            });
        }
        StallRecord {
            comm: "loop".into(),
            on_cpu_ns: on_cpu_ms * MS,
            off_cpu_ns: off_cpu_ms * MS,
            ready_events: Some(3),
            stacks,
            ..crate::model::fixtures::stall(1, 1, (on_cpu_ms + off_cpu_ms) * MS)
        }
    }

    #[test]
    fn causes_name_the_dominant_kind_of_time() {
        assert_eq!(cause(&stall(200, 10, 0)), "cpu");
        assert_eq!(cause(&stall(10, 200, 0)), "blocked");
        assert_eq!(cause(&stall(10, 200, 150)), "lock");
    }

    #[test]
    fn exposition_has_the_conventional_names_and_counts() {
        let mut metrics = Metrics::new();
        metrics.stall(&stall(250, 0, 0), "server", "app.service");
        metrics.stall(&stall(250, 0, 0), "server", "app.service");
        metrics.stall(&stall(0, 1500, 0), "server", "app.service");
        metrics.iterations("server", "app.service", 40);
        metrics.set_state(2, 7, 1.5, 4096);
        let text = metrics.encode();
        for line in [
            "stallscope_stalls_total{comm=\"server\",cgroup=\"app.service\",cause=\"cpu\"} 2",
            "stallscope_stalls_total{comm=\"server\",cgroup=\"app.service\",cause=\"blocked\"} 1",
            "stallscope_stall_duration_seconds_bucket{le=\"0.5\",comm=\"server\",cgroup=\"app.service\",cause=\"cpu\"} 2",
            "stallscope_stall_duration_seconds_bucket{le=\"1.0\",comm=\"server\",cgroup=\"app.service\",cause=\"blocked\"} 0",
            "stallscope_stall_duration_seconds_bucket{le=\"2.0\",comm=\"server\",cgroup=\"app.service\",cause=\"blocked\"} 1",
            "stallscope_loop_iterations_total{comm=\"server\",cgroup=\"app.service\"} 40",
            "stallscope_followed_processes 2",
            "stallscope_lost_events_total 7",
            "process_resident_memory_bytes 4096",
            "process_cpu_seconds_total 1.5",
            "stallscope_stall_ready_events_bucket{le=\"5.0\",comm=\"server\",cgroup=\"app.service\"} 3",
            "stallscope_stall_ready_events_bucket{le=\"2.0\",comm=\"server\",cgroup=\"app.service\"} 0",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn label_pairs_past_the_bound_share_one_overflow_series() {
        let mut metrics = Metrics::new();
        for i in 0..MAX_SERIES + 10 {
            metrics.stall(&stall(250, 0, 0), &format!("worker{i}"), "/");
        }
        let text = metrics.encode();
        assert!(
            text.contains(
                "stallscope_stalls_total{comm=\"_other\",cgroup=\"_other\",cause=\"cpu\"} 10"
            ),
            "{text}"
        );
        assert!(text.contains("stallscope_label_overflow_total 10"));
        let series = text
            .lines()
            .filter(|l| l.starts_with("stallscope_stalls_total{"))
            .count();
        assert_eq!(series, MAX_SERIES + 1);
    }
}
