//! The CPU state machine of a thread: wake-ups, switches out and in, and the blocked time (lock
//! waits included) they attribute to the open spans.

use super::*;

impl Timeline {
    /// The GIL holder a blocked thread waits for, if it sleeps waiting for the GIL.
    pub(super) fn gil_holder(&self, tid: u32) -> Option<u32> {
        match self.threads.get(&tid)?.cpu {
            Cpu::Blocked { gil_holder, .. } => gil_holder,
            _ => None,
        }
    }

    /// Ends a sleep, woken by `waker` (for a GIL wait: the holder, when known by tid). What the
    /// waker did while the sleeper waited (its samples since the sleep began) says why.
    pub(super) fn woken_by(&mut self, tid: u32, ts: u64, waker: Option<Waker>) {
        let config = self.config;
        let since = match self.threads.get(&tid).map(|t| t.cpu) {
            Some(Cpu::Blocked { since, .. }) => since,
            _ => ts,
        };
        let holder_samples: Vec<StackKey> = waker
            .and_then(|waker| self.threads.get(&waker.tid))
            .map(|holder| {
                holder
                    .recent_samples
                    .iter()
                    .filter(|(at, _)| (since..=ts).contains(at))
                    .map(|(_, stack)| *stack)
                    .collect()
            })
            .unwrap_or_default();
        if let Some(thread) = self.threads.get_mut(&tid) {
            match waker {
                Some(waker) => wake(thread, ts, config, Some((waker, &holder_samples))),
                None => wake(thread, ts, config, None),
            }
        }
    }

    /// Late capture: the user stack of the thread's block in a syscall, taken as it left the
    /// call, joins the kernel stack its switch-out carried, while the block is still open (its
    /// wake-up and switch-in were held for it). The stack as it is now, when patched.
    pub fn late_user_stack(&mut self, tid: u32, user: i32) -> Option<StackKey> {
        let thread = self.threads.get_mut(&tid)?;
        match &mut thread.cpu {
            Cpu::Blocked { stack, .. } if stack.user < 0 => {
                stack.user = user;
                Some(*stack)
            }
            _ => None,
        }
    }

    pub(super) fn switch_out(
        &mut self,
        tid: u32,
        ts: u64,
        runnable: bool,
        stack: StackKey,
        syscall: Option<i32>,
        gil_holder: Option<u32>,
    ) -> Option<Stall> {
        let threshold = self.config.threshold_ns;
        let thread = self.threads.get_mut(&tid)?;
        if !thread.close_on_cpu(ts) {
            self.anomalies.switch_out_not_running += 1;
        }
        thread.cpu = if runnable {
            Cpu::Runnable {
                since: ts,
                out_since: ts,
                stack: preempted_stack(
                    &thread.recent_samples,
                    ts,
                    stack,
                    self.config.sample_period_ns,
                ),
                syscall: None,
                waker: None,
            }
        } else {
            Cpu::Blocked {
                since: ts,
                stack,
                syscall,
                gil_holder,
            }
        };
        if runnable {
            return None;
        }
        if thread.in_wait
            && let Some(mut held) = thread.held.take()
        {
            // The wait blocked: nothing was ready when the loop came back.
            held.ready_events = Some(0);
            return Some(held);
        }
        // A voluntary sleep ends a run.
        let run = thread.run.take()?;
        let mismatch = &mut self.anomalies.breakdown_mismatch;
        let mut stall = run.into_stall(thread.pid, tid, ts, StallRule::Run, mismatch);
        stall.startup = thread.startup;
        (stall.duration_ns() >= threshold).then_some(stall)
    }

    /// The kernel found the thread running (event at `ts`) without a traced switch-in; it came
    /// in at `at_ns` when known. Timed, it is that switch-in, back-dated: the intervals since
    /// then were not attributed yet (nothing after `at_ns` told the thread's CPU state), and
    /// spans that began after it only get their own part of it. Untimed, the interval since the
    /// last transition cannot be split and stays unaccounted, as for a sample of a thread we
    /// believed off-CPU.
    pub(super) fn switched_in_untraced(&mut self, tid: u32, ts: u64, at_ns: Option<u64>) {
        let Some(thread) = self.threads.get_mut(&tid) else {
            return;
        };
        let since = match thread.cpu {
            Cpu::Running { .. } => return,
            Cpu::Unknown => 0,
            Cpu::Runnable { since, .. } | Cpu::Blocked { since, .. } => since,
        };
        match at_ns {
            Some(at) => {
                self.anomalies.untraced_switch_ins += 1;
                self.switch_in(tid, at.clamp(since, ts));
            }
            None if since == 0 => self.switch_in(tid, ts),
            None => {
                self.anomalies.not_running += 1;
                for span in thread.spans() {
                    span.add_unaccounted(since, ts, true);
                }
                thread.cpu = Cpu::Running { since: ts };
            }
        }
    }

    pub(super) fn switch_in(&mut self, tid: u32, ts: u64) {
        let limit = self.config.max_stacks_per_span;
        let max_offcpu = self.config.max_offcpu_entries;
        let Some(thread) = self.threads.get_mut(&tid) else {
            return;
        };
        let pid = thread.pid;
        let mut marks: [Option<Mark>; 2] = [None, None];
        let span = |kind, start_ns, end_ns, stack, syscall| {
            Some(Mark {
                pid,
                tid,
                kind,
                start_ns,
                end_ns,
                stack,
                syscall,
            })
        };
        match thread.cpu {
            Cpu::Runnable {
                since,
                out_since,
                stack,
                syscall,
                ..
            } => {
                if out_since < since {
                    marks[0] = span(StackKind::OffCpu, out_since, since, stack, syscall);
                }
                marks[1] = span(StackKind::Runqueue, since, ts, stack, None);
            }
            Cpu::Blocked {
                since,
                stack,
                syscall,
                ..
            } => marks[0] = span(StackKind::OffCpu, since, ts, Some(stack), syscall),
            Cpu::Running { .. } | Cpu::Unknown => {}
        }
        let out = match thread.cpu {
            Cpu::Runnable {
                since,
                out_since,
                stack,
                syscall,
                waker,
            } => {
                if let Some(stack) = stack {
                    for span in thread.spans() {
                        let ns = span.add_time(StackKind::Runqueue, since, ts);
                        span.add_stack(limit, StackKind::Runqueue, stack, None, ns);
                    }
                } else {
                    for span in thread.spans() {
                        span.add_time(StackKind::Runqueue, since, ts);
                    }
                }
                stack.map(|stack| (out_since, stack, syscall, waker))
            }
            Cpu::Blocked {
                since,
                stack,
                syscall,
                gil_holder,
            } => {
                // The wake-up was lost or reordered: count all of it as blocked.
                add_blocked(
                    thread,
                    limit,
                    (since, ts),
                    stack,
                    syscall,
                    None,
                    gil_holder.is_some(),
                );
                Some((since, stack, syscall, None))
            }
            Cpu::Running { since } => {
                // The switch-out before was not seen (lost, or later than the window): the
                // time since it ran splits in an unknown way.
                self.anomalies.switch_in_while_running += 1;
                for span in thread.spans() {
                    span.add_unaccounted(since, ts, true);
                }
                None
            }
            // Seen for the first time (a partial span began with this event or just before).
            Cpu::Unknown => {
                for span in thread.spans() {
                    span.add_unaccounted(0, ts, false);
                }
                None
            }
        };
        if let Some((out_since, stack, syscall, waker)) = out {
            let key = (thread.pid, tid, stack, syscall, waker);
            let ns = ts.saturating_sub(out_since);
            if let Some(total) = self.offcpu.get_mut(&key) {
                *total += ns;
            } else if self.offcpu.len() < max_offcpu {
                self.offcpu.insert(key, ns);
            } else {
                self.anomalies.stacks_dropped += 1;
            }
        }
        thread.cpu = Cpu::Running { since: ts };
        if thread.run.is_none() && !thread.is_loop {
            thread.run = Some(Span::new(ts, false));
        }
        for mark in marks.into_iter().flatten() {
            self.mark(mark);
        }
    }
}

/// Blocked time from `from` to `to` with the sleeper's `stack`. A futex wait ended by a thread
/// of the same process is a lock wait; when that holder was sampled on a CPU meanwhile, the
/// time is shared among those samples (waker = the holder at each sample), so the report says
/// what the holder was doing, not only how it released the lock. A wait for the GIL (`gil`) is
/// a lock wait whoever woke it.
pub(super) fn add_blocked(
    thread: &mut Thread,
    limit: usize,
    (from, to): (u64, u64),
    stack: StackKey,
    syscall: Option<i32>,
    woken: Option<(Waker, &[StackKey])>,
    gil: bool,
) {
    let waker = woken.map(|(w, _)| w);
    let kind = match waker {
        _ if gil => StackKind::Lock,
        Some(w) if syscall == Some(FUTEX) && w.pid == thread.pid => StackKind::Lock,
        _ => StackKind::OffCpu,
    };
    let holder_samples = match woken {
        Some((_, samples)) if kind == StackKind::Lock => samples,
        _ => &[],
    };
    for span in thread.spans() {
        let ns = span.add_time(kind, from, to);
        if let (Some(holder), false) = (waker, holder_samples.is_empty()) {
            let share = ns / holder_samples.len() as u64;
            for sample in holder_samples {
                let at_sample = Waker {
                    stack: *sample,
                    ..holder
                };
                span.add_woken_stack(limit, kind, stack, syscall, Some(at_sample), share);
            }
        } else {
            span.add_woken_stack(limit, kind, stack, syscall, waker, ns);
        }
    }
}

pub(super) fn wake(
    thread: &mut Thread,
    ts: u64,
    config: Config,
    woken: Option<(Waker, &[StackKey])>,
) {
    let waker = woken.map(|(w, _)| w);
    // Waking a thread that is running or already runnable is normal (it had not slept yet);
    // only the first wake after a sleep ends the blocked time.
    if let Cpu::Blocked {
        since,
        stack,
        syscall,
        gil_holder,
    } = thread.cpu
    {
        add_blocked(
            thread,
            config.max_stacks_per_span,
            (since, ts),
            stack,
            syscall,
            woken,
            gil_holder.is_some(),
        );
        thread.cpu = Cpu::Runnable {
            since: ts,
            out_since: since,
            stack: Some(stack),
            syscall,
            waker,
        };
    }
}
