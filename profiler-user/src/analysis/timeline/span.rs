//! A span (one iteration or run of a thread) and its time breakdown: on-CPU, off-CPU, runqueue
//! and unaccounted time, the stacks each is attributed to, and the stall it becomes.

use super::*;

/// What a span's time is attributed to: kind, stack, syscall and (for waits) the waker.
pub(super) type SpanStackKey = (StackKind, StackKey, Option<i32>, Option<Waker>);

#[derive(Clone, Debug)]
pub(super) struct Span {
    pub(super) start_ns: u64,
    pub(super) on_cpu_ns: u64,
    pub(super) off_cpu_ns: u64,
    pub(super) runqueue_ns: u64,
    pub(super) stacks: foldhash::HashMap<SpanStackKey, (u64, u32)>,
    pub(super) stacks_dropped: u64,
    pub(super) partial: bool,
    pub(super) data_lost: bool,
    pub(super) unaccounted_ns: u64,
    pub(super) late_events: u32,
    pub(super) odd_transitions: u32,
}

impl Span {
    pub(super) fn new(start_ns: u64, partial: bool) -> Self {
        Span {
            start_ns,
            on_cpu_ns: 0,
            off_cpu_ns: 0,
            runqueue_ns: 0,
            stacks: Default::default(),
            stacks_dropped: 0,
            partial,
            data_lost: false,
            unaccounted_ns: 0,
            late_events: 0,
            odd_transitions: 0,
        }
    }

    /// The part of [from, to) inside this span cannot be split (a transition was not seen):
    /// kept as unaccounted, so the breakdown still adds up and says why.
    pub(super) fn add_unaccounted(&mut self, from: u64, to: u64, odd: bool) {
        let from = from.max(self.start_ns);
        self.unaccounted_ns += to.saturating_sub(from);
        if odd {
            self.odd_transitions = self.odd_transitions.saturating_add(1);
        }
    }

    /// Adds the part of [from, to) that lies inside this span.
    pub(super) fn add_time(&mut self, kind: StackKind, from: u64, to: u64) -> u64 {
        let from = from.max(self.start_ns);
        let ns = to.saturating_sub(from);
        match kind {
            StackKind::OnCpu => self.on_cpu_ns += ns,
            StackKind::OffCpu | StackKind::Lock => self.off_cpu_ns += ns,
            StackKind::Runqueue => self.runqueue_ns += ns,
        }
        ns
    }

    pub(super) fn add_stack(
        &mut self,
        limit: usize,
        kind: StackKind,
        stack: StackKey,
        syscall: Option<i32>,
        ns: u64,
    ) {
        self.add_woken_stack(limit, kind, stack, syscall, None, ns);
    }

    pub(super) fn add_woken_stack(
        &mut self,
        limit: usize,
        kind: StackKind,
        stack: StackKey,
        syscall: Option<i32>,
        waker: Option<Waker>,
        ns: u64,
    ) {
        if ns == 0 {
            return;
        }
        let key = (kind, stack, syscall, waker);
        if let Some((weight, count)) = self.stacks.get_mut(&key) {
            *weight += ns;
            *count += 1;
        } else if self.stacks.len() < limit {
            self.stacks.insert(key, (ns, 1));
        } else {
            self.stacks_dropped += 1;
        }
    }

    /// Closes the span at `end_ns`; `mismatch` counts a breakdown that did not add up.
    pub(super) fn into_stall(
        mut self,
        pid: u32,
        tid: u32,
        end_ns: u64,
        rule: StallRule,
        mismatch: &mut u64,
    ) -> Stall {
        let duration = end_ns.saturating_sub(self.start_ns);
        let accounted = self.on_cpu_ns + self.off_cpu_ns + self.runqueue_ns;
        if accounted + self.unaccounted_ns != duration {
            // The add-up invariant (module docs): every transition tiles time from the span's
            // start to its end. Breaking it is a bug here, never the input's fault.
            if cfg!(any(debug_assertions, test)) {
                panic!(
                    "breakdown of tid {tid} [{}, {end_ns}] does not add up: on {} + off {} + rq {} + unaccounted {} != {duration}",
                    self.start_ns,
                    self.on_cpu_ns,
                    self.off_cpu_ns,
                    self.runqueue_ns,
                    self.unaccounted_ns
                );
            }
            *mismatch += 1;
            self.unaccounted_ns = duration.saturating_sub(accounted);
        }
        debug_assert!(
            self.unaccounted_ns == 0
                || self.partial
                || self.data_lost
                || self.late_events > 0
                || self.odd_transitions > 0,
            "unaccounted time without a reason"
        );
        let mut stacks: Vec<WeightedStack> = self
            .stacks
            .into_iter()
            .map(
                |((kind, stack, syscall, waker), (weight_ns, count))| WeightedStack {
                    kind,
                    stack,
                    syscall,
                    waker,
                    weight_ns,
                    count,
                },
            )
            .collect();
        stacks.sort_by(|a, b| {
            b.weight_ns
                .cmp(&a.weight_ns)
                .then((a.kind, a.stack).cmp(&(b.kind, b.stack)))
        });
        Stall {
            pid,
            tid,
            start_ns: self.start_ns,
            end_ns,
            on_cpu_ns: self.on_cpu_ns,
            off_cpu_ns: self.off_cpu_ns,
            runqueue_ns: self.runqueue_ns,
            stacks,
            stacks_dropped: self.stacks_dropped,
            rule,
            partial: self.partial,
            data_lost: self.data_lost,
            unaccounted_ns: self.unaccounted_ns,
            late_events: self.late_events,
            odd_transitions: self.odd_transitions,
            ready_events: None,
            startup: false,
        }
    }
}
