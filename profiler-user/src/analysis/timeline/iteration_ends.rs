//! Loop iterations and their ends: entering and leaving a wait point, a thread's exit, and the
//! end of the recording (partial stalls).

use super::*;

impl Timeline {
    pub(super) fn wait_enter(&mut self, tid: u32, ts: u64) -> Option<Stall> {
        let threshold = self.config.threshold_ns;
        let thread = self.threads.get_mut(&tid)?;
        thread.is_loop = true;
        thread.run = None;
        if thread.in_wait {
            self.anomalies.wait_enter_while_waiting += 1;
            return None;
        }
        thread.in_wait = true;
        let mut iteration = thread.iteration.take()?;
        let since = match thread.cpu {
            Cpu::Running { since } => since,
            Cpu::Unknown => 0,
            // It is making a syscall, so it is running, whatever we last saw: the switch-in
            // was not seen.
            Cpu::Runnable { since, .. } | Cpu::Blocked { since, .. } => {
                self.anomalies.not_running += 1;
                iteration.add_unaccounted(since, ts, true);
                ts
            }
        };
        iteration.add_time(StackKind::OnCpu, since, ts);
        thread.cpu = Cpu::Running { since: ts };
        if std::mem::take(&mut thread.startup) {
            // From its creation to its first wait point: start-up, not an iteration.
            if self.startups.len() < MAX_STARTUPS {
                self.startups.push(Startup {
                    pid: thread.pid,
                    tid,
                    start_ns: iteration.start_ns,
                    end_ns: ts,
                });
            }
            return None;
        }
        if !iteration.partial {
            thread.iterations += 1;
            thread.iteration_marks.push(iteration.start_ns, ts);
        }
        let mismatch = &mut self.anomalies.breakdown_mismatch;
        let stall = iteration.into_stall(thread.pid, tid, ts, StallRule::Iteration, mismatch);
        if stall.duration_ns() < threshold {
            return None;
        }
        if !self.config.hold_for_impact {
            return Some(stall);
        }
        // Held until the wait returns; one still held (its return was lost) goes now.
        thread.held.replace(stall)
    }

    /// Back from the wait point: a stall held there goes, with the events now ready.
    pub(super) fn wait_exit(&mut self, tid: u32, ts: u64, ready: Option<u64>) -> Option<Stall> {
        let thread = self.threads.get_mut(&tid)?;
        let held = thread.held.take().map(|mut stall| {
            stall.ready_events = ready;
            stall
        });
        if !thread.in_wait && thread.is_loop && thread.iteration.is_some() {
            self.anomalies.iterations_discarded += 1;
        }
        thread.is_loop = true;
        thread.run = None;
        thread.in_wait = false;
        thread.iteration = Some(Span::new(ts, false));
        // Returning from a syscall: it is on a CPU now.
        thread.cpu = Cpu::Running { since: ts };
        held
    }

    pub(super) fn exit(&mut self, tid: u32, ts: u64) -> Option<Stall> {
        let threshold = self.config.threshold_ns;
        let mut thread = self.threads.remove(&tid)?;
        if let Some(held) = thread.held.take() {
            // It exited in the wait point after a stall (so no span of its own is open).
            if self.just_exited.len() < 65536 {
                self.just_exited.insert(tid);
            }
            self.exited.push(ThreadSummary {
                pid: thread.pid,
                tid,
                is_loop: thread.is_loop,
                iterations: thread.iterations,
                exited: true,
                iteration_marks: thread.iteration_marks,
            });
            return Some(held);
        }
        if self.just_exited.len() < 65536 {
            self.just_exited.insert(tid);
        }
        let ts = ts.max(thread.last_ts);
        if !thread.close_on_cpu(ts) {
            self.anomalies.not_running += 1;
        }
        self.exited.push(ThreadSummary {
            pid: thread.pid,
            tid,
            is_loop: thread.is_loop,
            iterations: thread.iterations,
            exited: true,
            iteration_marks: thread.iteration_marks,
        });
        let (span, rule) = if thread.is_loop {
            (thread.iteration.take(), StallRule::Iteration)
        } else {
            (thread.run.take(), StallRule::Run)
        };
        let mismatch = &mut self.anomalies.breakdown_mismatch;
        let mut stall = span?.into_stall(thread.pid, tid, ts, rule, mismatch);
        stall.startup = thread.startup;
        (stall.duration_ns() >= threshold && !thread.in_wait).then_some(stall)
    }

    /// Ends the recording at `ts`: spans still open past the threshold are reported as partial
    /// stalls (a user who stops the recording mid-stall wants to see it).
    pub fn finish(mut self, ts: u64) -> TimelineResult {
        let threshold = self.config.threshold_ns;
        let mut stalls = Vec::new();
        let mut threads = std::mem::take(&mut self.exited);
        let mut tids: Vec<u32> = self.threads.keys().copied().collect();
        tids.sort_unstable();
        for tid in tids {
            let Some(mut thread) = self.threads.remove(&tid) else {
                continue;
            };
            stalls.extend(thread.held.take());
            // Close the thread's current state at the end, whatever it is: a loop blocked in
            // a syscall when the user stops the recording is exactly the stall to explain.
            let limit = self.config.max_stacks_per_span;
            let ts = ts.max(thread.last_ts);
            match thread.cpu {
                Cpu::Running { since } => {
                    for span in thread.spans() {
                        span.add_time(StackKind::OnCpu, since, ts);
                    }
                }
                Cpu::Unknown => {
                    for span in thread.spans() {
                        span.add_time(StackKind::OnCpu, 0, ts);
                    }
                }
                Cpu::Blocked {
                    since,
                    stack,
                    syscall,
                    gil_holder,
                } => add_blocked(
                    &mut thread,
                    limit,
                    (since, ts),
                    stack,
                    syscall,
                    None,
                    gil_holder.is_some(),
                ),
                Cpu::Runnable { since, stack, .. } => {
                    for span in thread.spans() {
                        let ns = span.add_time(StackKind::Runqueue, since, ts);
                        if let Some(stack) = stack {
                            span.add_stack(limit, StackKind::Runqueue, stack, None, ns);
                        }
                    }
                }
            }
            let open = if thread.is_loop && !thread.in_wait {
                thread.iteration.take().map(|s| (s, StallRule::Iteration))
            } else if !thread.is_loop {
                thread.run.take().map(|s| (s, StallRule::Run))
            } else {
                None
            };
            if let Some((mut span, rule)) = open {
                span.partial = true;
                let mismatch = &mut self.anomalies.breakdown_mismatch;
                let stall = span.into_stall(thread.pid, tid, ts, rule, mismatch);
                if stall.duration_ns() >= threshold {
                    stalls.push(stall);
                }
            }
            threads.push(ThreadSummary {
                pid: thread.pid,
                tid,
                is_loop: thread.is_loop,
                iterations: thread.iterations,
                exited: false,
                iteration_marks: thread.iteration_marks,
            });
        }
        TimelineResult {
            open_stalls: stalls,
            threads,
            offcpu: self.offcpu,
            anomalies: self.anomalies,
            marks: self.marks,
            marks_dropped: self.marks_dropped,
            startups: self.startups,
        }
    }
}
