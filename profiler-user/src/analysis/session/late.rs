//! Late capture's other half: a thread that blocked in a syscall sends its user and Python
//! stacks when it leaves the call ([`kind::LATE_STACKS`], right after its switch-in), not at
//! its switch-out. Its wake-up and switch-in, which close the block in the timeline, are held
//! here until those stacks came, so the block is counted with them, as if they had been taken
//! at the switch-out. Held only for a block at least as long as the kernel's rule (1 /
//! [`LATE_STACK_FRACTION`] of the threshold); a shorter one goes on with its kernel stack.
//! Bounded: a few events per thread, released by time too (a stack that never comes: the
//! event was lost, the thread died in the call).

use profiler_common::{
    Event as RawEvent, LATE_STACK_FRACTION, LATE_STACKS_PENDING, NO_STACK, kind,
};

/// Events held per thread at most: a block's wake-up, wake, switch-in, and what a thread does
/// in the kernel before it leaves the call (a preemption, samples).
const MAX_HELD: usize = 16;

/// Events are released after this much event time even without their stacks.
const MAX_HOLD_NS: u64 = 200_000_000;

/// A thread switched out blocked in a syscall, whose stacks come at its exit.
struct Pending {
    /// Its first switch-out in that syscall.
    out_ns: u64,
    pid: u32,
    syscall: i32,
    /// Its events since the block ended, waiting for the stacks (empty: not holding).
    held: Vec<RawEvent>,
}

/// What to do with an event (see [`LateStacks::route`]).
pub(super) enum Route {
    /// Handle it now.
    Now,
    /// Held: nothing to do yet.
    Held,
    /// The stacks of the thread's block: handle this event first when `event_first` (the
    /// late-stacks event), patch the blocked state's user stack with `user`, handle `release`
    /// in order, then this event unless it went first (a switch-out copied in the same call).
    Patch {
        user: i32,
        release: Vec<RawEvent>,
        event_first: bool,
    },
    /// Handle `release` first (held without their stacks), then this event.
    ReleaseFirst(Vec<RawEvent>),
}

#[derive(Default)]
pub(super) struct LateStacks {
    /// Looked up for every event: foldhash, not SipHash (tids are not an attacker's choice of
    /// collisions).
    pending: foldhash::HashMap<u32, Pending>,
    /// Blocks whose events were released without their stacks (counted, for --verbose).
    pub(super) released_without: u64,
    /// Event time of the next look for holds past [`MAX_HOLD_NS`].
    next_expiry_ns: u64,
}

impl LateStacks {
    /// Where `raw` goes, given the stall threshold (the kernel's rule is a fraction of it).
    pub(super) fn route(&mut self, raw: &RawEvent, threshold_ns: u64) -> Route {
        let min_ns = threshold_ns / LATE_STACK_FRACTION;
        let tid = raw.tid;
        if raw.kind == kind::LATE_STACKS {
            return match self.pending.remove(&tid) {
                Some(pending) if raw.user_stack_id != NO_STACK => Route::Patch {
                    user: raw.user_stack_id,
                    release: pending.held,
                    event_first: true,
                },
                Some(pending) => self.without(pending.held),
                None => Route::Now,
            };
        }
        if raw.kind == kind::EXIT {
            // Gone (it may have died in the call): nothing more will come for it.
            let held = self.take_held(tid);
            return self.without(held);
        }
        let Some(pending) = self.pending.get_mut(&tid) else {
            if raw.kind == kind::SWITCH_OUT && raw.arg1 & LATE_STACKS_PENDING != 0 {
                self.pending.insert(
                    tid,
                    Pending {
                        out_ns: raw.ts_ns,
                        pid: raw.pid,
                        syscall: raw.syscall,
                        held: Vec::new(),
                    },
                );
            }
            return Route::Now;
        };
        if !pending.held.is_empty() {
            if raw.kind == kind::SWITCH_OUT
                && raw.user_stack_id != NO_STACK
                && raw.syscall == pending.syscall
            {
                // Blocked again in the same call, long after the first block: the kernel
                // copied this one's stacks at once (see `defer_stacks` in the programs), and
                // they are the ones the first block was waiting for.
                let held = self.take_held(tid);
                return Route::Patch {
                    user: raw.user_stack_id,
                    release: held,
                    event_first: false,
                };
            }
            if pending.held.len() < MAX_HELD {
                pending.held.push(*raw);
                return Route::Held;
            }
            let held = self.take_held(tid);
            return self.without(held);
        }
        match raw.kind {
            // The block ends: held if it lasted long enough for the kernel to send its stacks.
            kind::WAKING | kind::WAKEUP | kind::SWITCH_IN
                if raw.ts_ns.saturating_sub(pending.out_ns) >= min_ns =>
            {
                pending.held.push(*raw);
                Route::Held
            }
            kind::WAKING | kind::WAKEUP | kind::SWITCH_IN => {
                // Short: its stacks are not taken.
                self.pending.remove(&tid);
                Route::Now
            }
            _ => Route::Now,
        }
    }

    /// Ends `tid`'s hold: the events held for it (none if it was not held).
    fn take_held(&mut self, tid: u32) -> Vec<RawEvent> {
        self.pending
            .remove(&tid)
            .map(|p| p.held)
            .unwrap_or_default()
    }

    fn without(&mut self, held: Vec<RawEvent>) -> Route {
        if held.is_empty() {
            return Route::Now;
        }
        self.released_without += 1;
        Route::ReleaseFirst(held)
    }

    /// Threads held for longer than [`MAX_HOLD_NS`] of event time (at `now_ns`): their events,
    /// released without stacks, oldest hold first.
    pub(super) fn expired(&mut self, now_ns: u64) -> Vec<RawEvent> {
        if now_ns < self.next_expiry_ns || self.pending.is_empty() {
            return Vec::new();
        }
        self.next_expiry_ns = now_ns + MAX_HOLD_NS / 4;
        let old: Vec<u32> = self
            .pending
            .iter()
            .filter(|(_, p)| {
                p.held
                    .first()
                    .is_some_and(|e| now_ns.saturating_sub(e.ts_ns) > MAX_HOLD_NS)
            })
            .map(|(&tid, _)| tid)
            .collect();
        self.take(&old)
    }

    /// Threads still blocked in the syscall they blocked in (nothing held yet): (pid, tid,
    /// syscall). At the end of a recording their stacks have not come and will not.
    pub(super) fn still_blocked(&self) -> Vec<(u32, u32, i32)> {
        self.pending
            .iter()
            .filter(|(_, p)| p.held.is_empty())
            .map(|(&tid, p)| (p.pid, tid, p.syscall))
            .collect()
    }

    /// A still-blocked thread's stacks were found another way.
    pub(super) fn resolved(&mut self, tid: u32) {
        self.pending.remove(&tid);
    }

    /// Everything held (recording stopped), in time order.
    pub(super) fn drain(&mut self) -> Vec<RawEvent> {
        let all: Vec<u32> = self.pending.keys().copied().collect();
        self.take(&all)
    }

    fn take(&mut self, tids: &[u32]) -> Vec<RawEvent> {
        let mut events = Vec::new();
        for tid in tids {
            if let Some(pending) = self.pending.remove(tid)
                && !pending.held.is_empty()
            {
                self.released_without += 1;
                events.extend(pending.held);
            }
        }
        events.sort_by_key(|e| e.ts_ns);
        events
    }
}

/// A held switch-out in the same syscall (the thread blocked again before leaving it) gets the
/// same user stack: its registers and stack had not changed.
pub(super) fn patch_held(event: &mut RawEvent, user: i32) {
    if event.kind == kind::SWITCH_OUT
        && event.arg1 & LATE_STACKS_PENDING != 0
        && event.user_stack_id == NO_STACK
    {
        event.user_stack_id = user;
        // It has its stacks: a replay of it waits for none.
        event.arg1 &= !LATE_STACKS_PENDING;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const THRESHOLD: u64 = 100_000_000;
    const MIN: u64 = THRESHOLD / LATE_STACK_FRACTION;

    fn event(kind: u32, ts_ns: u64, arg1: u64) -> RawEvent {
        RawEvent {
            kind,
            ts_ns,
            arg1,
            pid: 10,
            tid: 11,
            user_stack_id: NO_STACK,
            kernel_stack_id: 5,
            ..RawEvent::default()
        }
    }

    fn now(route: Route) -> bool {
        matches!(route, Route::Now)
    }

    /// A long block's wake-up and switch-in wait for its stacks, which then patch it and
    /// release them in order; a short block goes straight on.
    #[test]
    fn a_long_block_waits_for_its_stacks_a_short_one_does_not() {
        let mut late = LateStacks::default();
        assert!(now(late.route(
            &event(kind::SWITCH_OUT, 1000, LATE_STACKS_PENDING),
            THRESHOLD
        )));
        assert!(matches!(
            late.route(&event(kind::WAKING, 1000 + MIN, 0), THRESHOLD),
            Route::Held
        ));
        assert!(matches!(
            late.route(&event(kind::SWITCH_IN, 1000 + MIN + 5, 0), THRESHOLD),
            Route::Held
        ));
        let mut stacks = event(kind::LATE_STACKS, 1000 + MIN + 9, 1);
        stacks.user_stack_id = 42;
        match late.route(&stacks, THRESHOLD) {
            Route::Patch { user, release, .. } => {
                assert_eq!(user, 42);
                let kinds: Vec<u32> = release.iter().map(|e| e.kind).collect();
                assert_eq!(kinds, [kind::WAKING, kind::SWITCH_IN]);
            }
            _ => panic!("the stacks patch the block"),
        }
        // Short: nothing held, and stacks arriving anyway change nothing.
        assert!(now(late.route(
            &event(kind::SWITCH_OUT, 5000, LATE_STACKS_PENDING),
            THRESHOLD
        )));
        assert!(now(
            late.route(&event(kind::WAKING, 5000 + MIN - 1, 0), THRESHOLD)
        ));
        assert!(now(
            late.route(&event(kind::SWITCH_IN, 5000 + MIN + 1, 0), THRESHOLD)
        ));
        assert!(now(late.route(&stacks, THRESHOLD)));
        assert_eq!(late.released_without, 0);
    }

    /// Stacks that never come (lost) cannot hold a thread's events for long: they go on after
    /// MAX_HOLD_NS of event time, or when too many wait, or when recording stops.
    #[test]
    fn held_events_go_on_without_their_stacks_when_they_do_not_come() {
        let mut late = LateStacks::default();
        late.route(
            &event(kind::SWITCH_OUT, 1000, LATE_STACKS_PENDING),
            THRESHOLD,
        );
        late.route(&event(kind::WAKING, 1000 + MIN, 0), THRESHOLD);
        assert!(late.expired(1000 + MIN + 1).is_empty());
        let released = late.expired(1000 + MIN + MAX_HOLD_NS + 1);
        assert_eq!(released.len(), 1);
        assert_eq!(late.released_without, 1);

        late.route(
            &event(kind::SWITCH_OUT, 1000, LATE_STACKS_PENDING),
            THRESHOLD,
        );
        late.route(&event(kind::WAKING, 1000 + MIN, 0), THRESHOLD);
        for i in 1..MAX_HELD as u64 {
            assert!(matches!(
                late.route(&event(kind::SAMPLE, 1000 + MIN + i, 0), THRESHOLD),
                Route::Held
            ));
        }
        match late.route(&event(kind::SAMPLE, 2000 + MIN, 0), THRESHOLD) {
            Route::ReleaseFirst(held) => assert_eq!(held.len(), MAX_HELD),
            _ => panic!("too many held"),
        }

        late.route(
            &event(kind::SWITCH_OUT, 9000, LATE_STACKS_PENDING),
            THRESHOLD,
        );
        late.route(&event(kind::SWITCH_IN, 9000 + MIN, 0), THRESHOLD);
        assert_eq!(late.drain().len(), 1);
    }

    /// Blocking again in the same call, long after the first block (the kernel copies that
    /// one's stacks at once): they patch the held block, then the switch-out goes on.
    #[test]
    fn a_switch_out_copied_in_the_same_call_patches_the_held_block() {
        let mut late = LateStacks::default();
        let mut out = event(kind::SWITCH_OUT, 1000, LATE_STACKS_PENDING);
        out.syscall = 75;
        late.route(&out, THRESHOLD);
        late.route(&event(kind::WAKING, 1000 + MIN, 0), THRESHOLD);
        let mut again = event(kind::SWITCH_OUT, 1000 + 2 * MIN, 1);
        again.syscall = 75;
        again.user_stack_id = 7;
        match late.route(&again, THRESHOLD) {
            Route::Patch {
                user,
                release,
                event_first,
            } => assert_eq!((user, release.len(), event_first), (7, 1, false)),
            _ => panic!("the copy patches the held block"),
        }
    }

    /// Blocking again in the same call before leaving it: that switch-out gets the stacks too.
    #[test]
    fn a_second_block_in_the_same_call_gets_the_same_stacks() {
        let mut held = event(kind::SWITCH_OUT, 10, LATE_STACKS_PENDING);
        patch_held(&mut held, 42);
        assert_eq!(held.user_stack_id, 42);
        let mut sample = event(kind::SAMPLE, 10, 0);
        patch_held(&mut sample, 42);
        assert_eq!(sample.user_stack_id, NO_STACK);
    }
}
