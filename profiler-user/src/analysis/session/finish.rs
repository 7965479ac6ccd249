//! The end of a recording: everything the session accumulated turned into the [`Recording`].

use super::*;

impl Session {
    pub fn finish(mut self, system: &dyn SystemAccess, start_ns: u64, end_ns: u64) -> Recording {
        let finished = std::mem::replace(
            &mut self.timeline,
            Timeline::new(timeline::Config {
                threshold_ns: u64::MAX,
                sample_period_ns: 1,
                max_stacks_per_span: 0,
                max_offcpu_entries: 0,
                max_marks: 0,
                min_mark_ns: 0,
                hold_for_impact: false,
            }),
        );
        // Decide "is this thread a loop thread" with the full knowledge of the recording.
        let result = finished.finish(end_ns);
        let loop_tids: HashSet<u32> = result
            .threads
            .iter()
            .filter(|t| t.is_loop)
            .map(|t| t.tid)
            .collect();
        let loop_pids: HashSet<u32> = result
            .threads
            .iter()
            .filter(|t| t.is_loop)
            .map(|t| t.pid)
            .collect();
        for stall in result.open_stalls {
            self.stall_ended(system, stall, false);
        }
        // Runs reported before a thread of their process turned out to be a loop thread.
        let selected = !self.config.threads.is_empty() || self.config.thread_name.is_some();
        // A process that ran only while starting up and exited without reaching a wait point,
        // beside a process that has a loop, is a helper (a shim's, a wrapper's): its runs are
        // that start-up, not stalls.
        let exited = self.processes.exited_pids_recorded();
        let stalls_dropped = self.stalls.dropped();
        let stalls = std::mem::take(&mut self.stalls).into_sorted(|s, startup_run| {
            let helper = startup_run && exited.contains(&s.pid) && !loop_pids.is_empty();
            selected
                || s.rule == StallRule::Iteration
                || !(loop_tids.contains(&s.tid) || loop_pids.contains(&s.pid) || helper)
        });

        let mut offcpu: Vec<_> = result.offcpu.into_iter().collect();
        offcpu.sort_by_key(|entry| std::cmp::Reverse(entry.1));
        let offcpu_dropped = offcpu.len().saturating_sub(LIMITS.offcpu_written) as u64;
        let mut shared = foldhash::HashMap::default();
        let offcpu = offcpu
            .into_iter()
            .take(LIMITS.offcpu_written)
            .map(
                |((pid, tid, stack, syscall, waker), weight_ns)| OffCpuRecord {
                    pid,
                    tid,
                    comm: self.thread_name(tid),
                    weight_ns,
                    syscall: syscall_name(syscall),
                    frames: self.resolver.shared_frames(system, stack, &mut shared),
                    waker: waker.map(|w| self.waker_record(system, w)),
                },
            )
            .collect();
        // A span keeps only a label (its first function): its stack is resolved for it once
        // and let go, not cached (heaptrack, 4 minutes of loaded FastAPI: caching the ~13,000
        // span stacks' frames was 119 MB at the end).
        let mut labels: foldhash::HashMap<StackKey, String> = Default::default();
        let spans = result
            .marks
            .iter()
            .map(|mark| model::SpanRecord {
                pid: mark.pid,
                tid: mark.tid,
                kind: model::SpanKind::of_stack(mark.kind),
                start_ns: mark.start_ns,
                end_ns: mark.end_ns,
                syscall: syscall_name(mark.syscall),
                label: mark
                    .stack
                    .map(|key| {
                        labels
                            .entry(key)
                            .or_insert_with(|| match shared.get(&key) {
                                Some(frames) => span_label(frames),
                                None => span_label(&self.resolver.uncached_frames(system, key)),
                            })
                            .clone()
                    })
                    .unwrap_or_default(),
            })
            .collect();
        drop((shared, labels));
        let startups = result
            .startups
            .iter()
            .map(|s| model::StartupRecord {
                pid: s.pid,
                tid: s.tid,
                comm: self.thread_name(s.tid),
                start_ns: s.start_ns,
                end_ns: s.end_ns,
            })
            .collect();
        let threads = result
            .threads
            .iter()
            .map(|t| model::ThreadRecord {
                pid: t.pid,
                tid: t.tid,
                comm: self.thread_name(t.tid),
                is_loop: t.is_loop,
                iterations: t.iterations,
                iteration_marks: t
                    .iteration_marks
                    .buckets()
                    .iter()
                    .map(|b| model::IterationBucketRecord {
                        start_ns: b.start_ns,
                        end_ns: b.end_ns,
                        count: b.count,
                        busy_ns: b.busy_ns,
                        longest_ns: b.longest_ns,
                    })
                    .collect(),
            })
            .collect();
        // Counted when recording stopped: the programs run on while outputs are written.
        let kernel_drops = self
            .kernel_drops_at_stop
            .or_else(|| system.kernel_drops())
            .unwrap_or_default();
        let processes = self.processes.all_records();
        let v8_stats = self.v8s.stats();
        let mut hints = hints(&processes, &self.v8s);
        if !self.resolver.symbols.unopenable.is_empty() {
            hints.push(format!(
                "{} mapped file(s) could not be opened (deleted or replaced since they started, and /proc/PID/map_files needs CAP_CHECKPOINT_RESTORE or CAP_SYS_ADMIN): their frames are named by offset and their stacks may be short; e.g. {}",
                self.resolver.symbols.unopenable.len(),
                self.resolver.symbols.unopenable.iter().next().map_or("", String::as_str)
            ));
        }
        if !self.resolver.symbols.debug_refused.is_empty() {
            hints.push(format!(
                "{} file(s) have a debug link or .dwp file that is not a plain regular file beside them (a symlink, a FIFO, a path, or too big): their debug files were not read, so their frames have no file:line; e.g. {}",
                self.resolver.symbols.debug_refused.len(),
                self.resolver.symbols.debug_refused.iter().next().map_or("", String::as_str)
            ));
        }
        let maps_unread_exited = self.python.maps_unread_exited;
        if maps_unread_exited > 0 {
            hints.push(format!(
                "{} short-lived {} exited before their maps could be read (no Python frames for them)",
                maps_unread_exited,
                if maps_unread_exited == 1 { "process" } else { "processes" }
            ));
        }
        let kernel_frames_seen = self.resolver.seen.iter().any(|k| k.kernel >= 0);
        if kernel_frames_seen && self.resolver.symbols.kernel_symbols_hidden() {
            hints.push(
                "kernel frames are unnamed: /proc/kallsyms hides its addresses from this user; run as root or add CAP_SYSLOG (and check kernel.kptr_restrict)".into(),
            );
        }
        Recording {
            version: model::SCHEMA_VERSION,
            threshold_ns: self.config.threshold_ns,
            recorded_ns: end_ns.saturating_sub(start_ns),
            start_ns,
            end_ns,
            sample_freq_hz: self.config.freq_hz,
            lost_events: self
                .loss
                .lost
                .max(kernel_drops[drop_index::RINGBUF_FULL as usize]),
            drops: Drops {
                ringbuf_full: kernel_drops[drop_index::RINGBUF_FULL as usize],
                kernel_stack: kernel_drops[drop_index::KERNEL_STACK as usize],
                user_stack: kernel_drops[drop_index::USER_STACK as usize],
                follow_map_full: kernel_drops[drop_index::FOLLOW_MAP_FULL as usize],
                iterations_discarded: result.anomalies.iterations_discarded,
                stacks_dropped: result.anomalies.stacks_dropped
                    + stalls_dropped
                    + offcpu_dropped
                    + self.resolver.interned_dropped,
                events_not_saved: 0,
                repeats_without_copy: self.stacks.repeats_without_copy,
                late_stacks_missing: self.late.released_without,
            },
            processes,
            threads,
            stalls,
            offcpu,
            hints,
            unwind: model::UnwindReport {
                stacks: self.unwinders.stats.stacks,
                frames: self.unwinders.stats.frames,
                truncated: self.unwinders.stats.truncated,
                bytes_copied: self.stacks.bytes_copied,
                unwind_ns: self.stacks.unwind_ns,
                repeated: self.stacks.repeated,
                reused: self.unwinders.stats.reused,
                files_parsed: self.unwinders.stats.files_parsed,
                files_failed: self.unwinders.stats.files_failed,
                symbol_failures: self.resolver.symbols.failures,
            },
            python: model::PythonReport {
                unreadable_frames: self.python.pythons.unreadable_frames,
                ..self.python.report
            },
            javascript: model::JsReport {
                runtimes: self
                    .v8s
                    .found
                    .iter()
                    .map(|(pid, version, binary)| model::JsRuntimeRecord {
                        pid: *pid,
                        v8_version: version.clone(),
                        binary: binary.clone(),
                    })
                    .collect(),
                frames: v8_stats.frames,
                unreadable_frames: v8_stats.unreadable,
                read_ns: self.v8_ns,
            },
            spans,
            spans_dropped: result.marks_dropped,
            waiting_at_start: self.waiting_at_start,
            startups,
            kernel_limits: Vec::new(),
            reorder: {
                let stats = self.reorder.stats();
                let a = result.anomalies;
                model::ReorderReport {
                    window_ns: self.reorder_window_ns,
                    late_events: stats.late,
                    reordered: stats.reordered,
                    released_early: stats.released_early,
                    max_held: stats.max_held,
                    missed_switches: a.switch_out_not_running
                        + a.switch_in_while_running
                        + a.not_running,
                    untraced_switch_ins: a.untraced_switch_ins,
                    breakdown_mismatches: a.breakdown_mismatch,
                }
            },
            verdict: model::Verdict {
                budgets: Vec::new(),
                passed: true,
            },
        }
    }
}
