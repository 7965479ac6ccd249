//! The reorder stage between decoding and the timeline: events of all CPUs leave it in
//! timestamp order. Pure (items in, items out), bounded, no clock of its own.
//!
//! Why: every CPU writes into one shared ring buffer and the agent reads it in reservation
//! order, which is each CPU's own order but not one time order across CPUs. An event is
//! stamped (`bpf_ktime_get_ns`) before its program reserves its record; a program held up
//! between the two (stack copies, an interrupt, a descheduled vCPU) lets another CPU's later
//! events in first. The timeline needs one order per thread: a switch-in handled before the
//! switch-out it follows loses the run before it (issue #22: 47 ms on-CPU for a 250 ms burn).
//!
//! How: one FIFO per CPU (a CPU's events arrive in its own order, which is kept, so per-CPU
//! sequence numbers still tell losses after this stage), merged by timestamp (ties: arrival
//! order). The oldest held event is released as soon as nothing older can still come:
//! - every CPU has sent an event at least as new (a CPU's later events are never older), or
//! - it is older than the newest time known by more than the window ([`Config::window_ns`]):
//!   the newest event's stamp, or a clock reading the caller took before a drain that
//!   emptied the ring ([`Reorder::advance`]). Only an event that spent longer than the window
//!   between its stamp and its reservation can still come before it;
//! - or more than [`Config::max_held`] events are held (bounded memory): the oldest leaves
//!   early, counted in [`Stats::released_early`].
//!
//! An event older than one already released is *late*: it is released at once, marked late
//! (the timeline flags what it touches rather than rewinding time) and counted in
//! [`Stats::late`]. The same rule judges a replay of the released sequence, so re-rendering
//! a recording finds the same late events: see [`Config::passthrough`].

use std::collections::{BinaryHeap, VecDeque};

/// What the stage needs of an item.
pub trait Stamped {
    fn ts_ns(&self) -> u64;
    fn cpu(&self) -> u32;
}

impl Stamped for profiler_common::Event {
    fn ts_ns(&self) -> u64 {
        self.ts_ns
    }
    fn cpu(&self) -> u32 {
        self.cpu
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// How long an event may take from its stamp to its reservation and still be put in
    /// order. 50 ms: a program runs for microseconds, but a vCPU of a loaded shared machine can
    /// be descheduled for milliseconds in the middle of one; the cost is that much delay of the
    /// live lines, and the events of 50 ms held (about 1 MB at 150,000 events/s).
    pub window_ns: u64,
    /// Events held at most (bounded memory): 262,144 x ~90 bytes = 24 MB, over a second of the
    /// busiest event rate measured here (256,000 events/s).
    pub max_held: usize,
    /// CPUs that can send events (their number, ids 0..cpus). A CPU not heard from yet holds
    /// back the every-CPU rule (it could have an event in flight), so with an idle CPU the
    /// window decides. More CPUs seen than this are added as they come.
    pub cpus: usize,
}

/// 50 ms; see [`Config::window_ns`].
pub const WINDOW_NS: u64 = 50_000_000;
/// See [`Config::max_held`].
pub const MAX_HELD: usize = 262_144;

impl Config {
    pub fn live(cpus: usize) -> Self {
        Config {
            window_ns: WINDOW_NS,
            max_held: MAX_HELD,
            cpus,
        }
    }

    /// For a sequence that already left a reorder stage (a saved recording): every event is
    /// released as it comes, and late ones are told by the same rule as live.
    pub fn passthrough() -> Self {
        Config {
            window_ns: 0,
            max_held: 0,
            cpus: 0,
        }
    }
}

/// Counters for the report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events older than one already released (handed on out of order, marked late).
    pub late: u64,
    /// Events released before their time because `max_held` were held.
    pub released_early: u64,
    /// Most events held at once.
    pub max_held: u64,
    /// Events put back in order: released after an event that arrived after them.
    pub reordered: u64,
}

/// One held item, by CPU.
struct Held<T> {
    arrival: u64,
    item: T,
}

/// A CPU's head in the merge heap: smallest (ts, arrival) first.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Head {
    ts_ns: u64,
    arrival: u64,
    cpu: u32,
}

pub struct Reorder<T> {
    config: Config,
    queues: Vec<VecDeque<Held<T>>>,
    /// The newest stamp seen from each CPU (0: none yet).
    newest_by_cpu: Vec<u64>,
    /// min(newest_by_cpu): everything up to it is safe to release.
    every_cpu_past: u64,
    /// The newest time known: newest stamp, or the caller's clock (see `advance`).
    newest_ns: u64,
    heads: BinaryHeap<std::cmp::Reverse<Head>>,
    held: usize,
    arrivals: u64,
    /// Newest stamp released, and the arrival number of the newest arrival released.
    released_ns: u64,
    released_arrival: Option<u64>,
    stats: Stats,
}

/// An item leaving the stage; `late` when something newer had already left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Released<T> {
    pub item: T,
    pub late: bool,
}

impl<T: Stamped> Reorder<T> {
    pub fn new(config: Config) -> Self {
        Reorder {
            config,
            queues: (0..config.cpus).map(|_| VecDeque::new()).collect(),
            newest_by_cpu: vec![0; config.cpus],
            every_cpu_past: 0,
            newest_ns: 0,
            heads: BinaryHeap::new(),
            held: 0,
            arrivals: 0,
            released_ns: 0,
            released_arrival: None,
            stats: Stats::default(),
        }
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    pub fn held(&self) -> usize {
        self.held
    }

    pub fn config(&self) -> Config {
        self.config
    }

    /// Takes one item in; hands on (to `out`) every item that can leave now, in order.
    pub fn push(&mut self, item: T, out: &mut impl FnMut(Released<T>)) {
        let ts = item.ts_ns();
        let cpu = item.cpu() as usize;
        if cpu >= self.queues.len() {
            // A CPU beyond the count given (hot-plugged, or a corrupt record): room for it.
            // Bounded: the CPU id is a u32, but ids past 65,536 share the last queue.
            let cpus = (cpu + 1).min(65_536);
            self.queues.resize_with(cpus, VecDeque::new);
            self.newest_by_cpu.resize(cpus, 0);
            self.every_cpu_past = 0;
        }
        let cpu = cpu.min(self.queues.len() - 1);
        let arrival = self.arrivals;
        self.arrivals += 1;
        let queue = &mut self.queues[cpu];
        if queue.is_empty() {
            self.heads.push(std::cmp::Reverse(Head {
                ts_ns: ts,
                arrival,
                cpu: cpu as u32,
            }));
        }
        queue.push_back(Held { arrival, item });
        self.held += 1;
        self.stats.max_held = self.stats.max_held.max(self.held as u64);
        let was_slowest = self.newest_by_cpu[cpu] <= self.every_cpu_past;
        self.newest_by_cpu[cpu] = self.newest_by_cpu[cpu].max(ts);
        if was_slowest {
            self.every_cpu_past = self.newest_by_cpu.iter().copied().min().unwrap_or(0);
        }
        self.newest_ns = self.newest_ns.max(ts);
        self.release(out);
    }

    /// Time has passed without events: `now_ns` is a clock reading (CLOCK_MONOTONIC, as the
    /// stamps) taken *before* a drain that emptied the ring, so every event stamped before
    /// it has arrived unless it spent longer than the window in flight.
    pub fn advance(&mut self, now_ns: u64, out: &mut impl FnMut(Released<T>)) {
        self.newest_ns = self.newest_ns.max(now_ns);
        self.release(out);
    }

    /// Hands on everything held, in order (recording stopped).
    pub fn flush(&mut self, out: &mut impl FnMut(Released<T>)) {
        while self.pop(out, true) {}
    }

    fn release(&mut self, out: &mut impl FnMut(Released<T>)) {
        while self.pop(out, false) {}
    }

    /// Releases the oldest held item if it may leave (or `force`); false when none left.
    fn pop(&mut self, out: &mut impl FnMut(Released<T>), force: bool) -> bool {
        let Some(std::cmp::Reverse(head)) = self.heads.peek() else {
            return false;
        };
        let by_window = head.ts_ns.saturating_add(self.config.window_ns) <= self.newest_ns;
        let by_every_cpu = head.ts_ns <= self.every_cpu_past;
        let too_many = self.held > self.config.max_held;
        if !(force || by_window || by_every_cpu || too_many) {
            return false;
        }
        if too_many && !(force || by_window || by_every_cpu) {
            self.stats.released_early += 1;
        }
        let cpu = head.cpu as usize;
        self.heads.pop();
        let queue = &mut self.queues[cpu];
        let Some(held) = queue.pop_front() else {
            return true;
        };
        if let Some(next) = queue.front() {
            self.heads.push(std::cmp::Reverse(Head {
                ts_ns: next.item.ts_ns(),
                arrival: next.arrival,
                cpu: cpu as u32,
            }));
        }
        self.held -= 1;
        let ts = held.item.ts_ns();
        let late = ts < self.released_ns;
        if late {
            self.stats.late += 1;
        }
        match self.released_arrival {
            Some(newest) if held.arrival < newest => self.stats.reordered += 1,
            _ => self.released_arrival = Some(held.arrival),
        }
        self.released_ns = self.released_ns.max(ts);
        out(Released {
            item: held.item,
            late,
        });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct Item {
        ts: u64,
        cpu: u32,
        id: u32,
    }

    impl Stamped for Item {
        fn ts_ns(&self) -> u64 {
            self.ts
        }
        fn cpu(&self) -> u32 {
            self.cpu
        }
    }

    fn item(ms: u64, cpu: u32, id: u32) -> Item {
        Item {
            ts: ms * MS,
            cpu,
            id,
        }
    }

    fn config(cpus: usize) -> Config {
        Config {
            window_ns: 10 * MS,
            max_held: 1000,
            cpus,
        }
    }

    /// Pushes `items` in arrival order; returns the ids released after each push.
    fn feed(reorder: &mut Reorder<Item>, items: &[Item]) -> Vec<Vec<u32>> {
        items
            .iter()
            .map(|&i| {
                let mut out = Vec::new();
                reorder.push(i, &mut |r: Released<Item>| out.push(r.item.id));
                out
            })
            .collect()
    }

    fn flush(reorder: &mut Reorder<Item>) -> Vec<u32> {
        let mut out = Vec::new();
        reorder.flush(&mut |r: Released<Item>| out.push(r.item.id));
        out
    }

    /// The 47 ms case: CPU 1's switch-in (ts 101) arrives before CPU 0's switch-out (ts 100)
    /// it follows; the switch-out leaves first.
    #[test]
    fn a_later_event_of_another_cpu_waits_for_the_earlier_one() {
        let mut r = Reorder::new(config(2));
        let released = feed(
            &mut r,
            &[
                item(101, 1, 1), // switch-in on CPU 1
                item(100, 0, 2), // switch-out on CPU 0, arrives second
                item(103, 1, 3),
                item(104, 0, 4),
            ],
        );
        // Nothing leaves before every CPU is past it (or the window has passed).
        assert_eq!(released, vec![vec![], vec![2], vec![], vec![1, 3]]);
        assert_eq!(flush(&mut r), vec![4]);
        assert_eq!(r.stats().late, 0);
        assert_eq!(r.stats().reordered, 1);
    }

    #[test]
    fn a_quiet_cpu_holds_events_back_only_for_the_window() {
        let mut r = Reorder::new(config(2));
        // CPU 1 never speaks: CPU 0's events wait for the window (10 ms).
        let released = feed(
            &mut r,
            &[
                item(100, 0, 1),
                item(105, 0, 2),
                item(110, 0, 3),
                item(121, 0, 4),
            ],
        );
        assert_eq!(
            released,
            vec![vec![], vec![], vec![1], vec![2, 3]],
            "released once 10 ms older than the newest"
        );
        // The caller's clock moves the window on without events.
        let mut out = Vec::new();
        r.advance(131 * MS, &mut |x: Released<Item>| out.push(x.item.id));
        assert_eq!(out, vec![4]);
        assert_eq!(r.held(), 0);
    }

    #[test]
    fn each_cpu_keeps_its_own_order_even_if_its_stamps_go_back() {
        let mut r = Reorder::new(config(1));
        let mut out = Vec::new();
        for i in [item(100, 0, 1), item(99, 0, 2), item(101, 0, 3)] {
            r.push(i, &mut |x: Released<Item>| out.push((x.item.id, x.late)));
        }
        out.extend(flush(&mut r).into_iter().map(|id| (id, false)));
        // Sequence numbers per CPU must stay in order for loss detection: 2 stays after 1,
        // and is late (older than 1, already released).
        assert_eq!(out, vec![(1, false), (2, true), (3, false)]);
        assert_eq!(r.stats().late, 1);
    }

    #[test]
    fn an_event_later_than_the_window_is_handed_on_marked_late() {
        let mut r = Reorder::new(config(2));
        let mut out = Vec::new();
        let mut take = |r: &mut Reorder<Item>, i: Item| {
            r.push(i, &mut |x: Released<Item>| out.push((x.item.id, x.late)));
        };
        take(&mut r, item(100, 0, 1));
        take(&mut r, item(130, 0, 2)); // 1 leaves by the window
        take(&mut r, item(95, 1, 3)); // stamped before 1, arrived after it left: late
        take(&mut r, item(131, 1, 4));
        assert_eq!(out, vec![(1, false), (3, true), (2, false)]);
        assert_eq!(r.stats().late, 1);
    }

    #[test]
    fn memory_is_bounded_and_early_releases_are_counted() {
        let mut r = Reorder::new(Config {
            window_ns: u64::MAX / 2,
            max_held: 3,
            cpus: 2,
        });
        let released: Vec<u32> = feed(
            &mut r,
            &[
                item(1, 0, 1),
                item(2, 0, 2),
                item(3, 0, 3),
                item(4, 0, 4),
                item(5, 0, 5),
            ],
        )
        .concat();
        assert_eq!(released, vec![1, 2]);
        assert_eq!(r.held(), 3);
        assert_eq!(r.stats().released_early, 2);
        assert_eq!(flush(&mut r), vec![3, 4, 5]);
    }

    #[test]
    fn passthrough_releases_at_once_and_finds_the_same_late_events() {
        // The sequence the live stage released above, replayed from a recording.
        let mut r = Reorder::new(Config::passthrough());
        let mut out = Vec::new();
        for i in [
            item(100, 0, 1),
            item(95, 1, 3),
            item(130, 0, 2),
            item(131, 1, 4),
        ] {
            r.push(i, &mut |x: Released<Item>| out.push((x.item.id, x.late)));
        }
        assert_eq!(out, vec![(1, false), (3, true), (2, false), (4, false)]);
    }

    /// Many CPUs, random delays under the window: the output is sorted, nothing is late.
    #[test]
    fn interleaved_cpus_come_out_sorted() {
        let mut r = Reorder::new(config(4));
        // Arrival order: each CPU's events in its order, delayed by a pseudo-random amount
        // below the window (in-flight time), merged by arrival time.
        let mut seed = 12345u64;
        let mut arrivals: Vec<(u64, Item)> = Vec::new();
        for cpu in 0..4u32 {
            let mut ts = 0;
            let mut last_arrival = 0;
            for n in 0..500u32 {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                ts += 1 + (seed >> 33) % (2 * MS);
                let delay = (seed >> 20) % (9 * MS);
                // Reservation order on one CPU is its program order.
                last_arrival = (ts + delay).max(last_arrival);
                arrivals.push((
                    last_arrival,
                    Item {
                        ts,
                        cpu,
                        id: cpu * 1000 + n,
                    },
                ));
            }
        }
        arrivals.sort_by_key(|(at, i)| (*at, i.cpu));
        let mut out: Vec<Item> = Vec::new();
        for (_, i) in arrivals {
            r.push(i, &mut |x: Released<Item>| {
                assert!(!x.late, "{:?} late", x.item);
                out.push(x.item);
            });
        }
        r.flush(&mut |x: Released<Item>| out.push(x.item));
        assert_eq!(out.len(), 2000);
        assert!(out.windows(2).all(|w| w[0].ts <= w[1].ts));
        assert_eq!(r.stats().late, 0);
        assert!(r.stats().max_held < 2000, "released as it went");
    }
}
