//! Ring-buffer bytes to typed events: the timeline's [`timeline::Event`]s and the process
//! lifecycle events the follow set needs. Also detects lost events from per-CPU sequence gaps.

use profiler_common::{
    Event as RawEvent, GIL_HELD_BY_OTHER, NO_SYSCALL, PY_STACK_HEADER_SIZE, PyFrame, PyStackHeader,
    SWITCH_IN_UNTRACED, UserStackHeader, kind,
};

use crate::analysis::timeline::{self, StackKey, What};

/// Decodes one ring-buffer record. Records of the wrong size (a mismatched build) are refused.
pub fn decode(bytes: &[u8]) -> Option<RawEvent> {
    if bytes.len() < size_of::<RawEvent>() {
        return None;
    }
    // SAFETY: length checked; RawEvent is plain data valid for any bit pattern; the read is
    // unaligned-safe.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<RawEvent>()) })
}

/// One ring-buffer record: an event, or a user-stack copy for the event that follows it.
#[derive(Debug)]
pub enum Record<'a> {
    Event(RawEvent),
    Stack {
        header: UserStackHeader,
        stack: &'a [u8],
    },
    /// Python frames for the event that follows, innermost first.
    Python {
        header: PyStackHeader,
        frames: Vec<PyFrame>,
    },
}

/// Tells the record types apart by size: events are fixed-size, stack copies are a header
/// plus `len` bytes (both multiples of 16), Python stacks are 8 modulo 16.
pub fn decode_record(bytes: &[u8]) -> Option<Record<'_>> {
    if bytes.len() == size_of::<RawEvent>() {
        return decode(bytes).map(Record::Event);
    }
    if bytes.len() % 16 == PY_STACK_HEADER_SIZE % 16 {
        return decode_python(bytes);
    }
    let header_size = size_of::<UserStackHeader>();
    if bytes.len() < header_size {
        return None;
    }
    // SAFETY: length checked; plain data valid for any bit pattern; unaligned read.
    let header = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<UserStackHeader>()) };
    let stack = bytes.get(header_size..header_size + header.len as usize)?;
    Some(Record::Stack { header, stack })
}

fn decode_python(bytes: &[u8]) -> Option<Record<'_>> {
    if bytes.len() < PY_STACK_HEADER_SIZE {
        return None;
    }
    // SAFETY: length checked; plain data valid for any bit pattern; unaligned read.
    let header = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<PyStackHeader>()) };
    if header.magic != PyStackHeader::MAGIC {
        return None;
    }
    let frames = bytes[PY_STACK_HEADER_SIZE..]
        .chunks_exact(size_of::<PyFrame>())
        .take(header.depth as usize)
        // SAFETY: each chunk is exactly one plain-data PyFrame; unaligned read.
        .map(|chunk| unsafe { std::ptr::read_unaligned(chunk.as_ptr().cast::<PyFrame>()) })
        .collect();
    Some(Record::Python { header, frames })
}

/// Process lifecycle, for following workers and for the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    Fork {
        parent_pid: u32,
        child_tid: u32,
    },
    Exec {
        pid: u32,
    },
    Exit {
        pid: u32,
        tid: u32,
        group_dead: bool,
    },
    /// exit/exit_group called with this status.
    ExitCall {
        pid: u32,
        status: i32,
    },
    /// A signal was generated for one of the process's threads.
    Signal {
        pid: u32,
        signal: i32,
    },
}

/// What one raw event means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoded {
    pub timeline: Option<timeline::Event>,
    pub lifecycle: Option<Lifecycle>,
}

/// `prev_state` of sched_switch says "still runnable" (preempted or yielded) when no
/// sleeping/stopped bit is set. The kernel ORs TASK_REPORT_MAX (0x100 and up) in for preemption,
/// so only the low byte of task-state bits matters.
/// <https://elixir.bootlin.com/linux/v6.18/source/include/trace/events/sched.h#L223>
pub fn is_runnable(prev_state: u64) -> bool {
    prev_state & 0xff == 0
}

/// The waker's stacks, carried by a WAKING event (symbolized in the waker's process).
pub fn waker_stack(raw: &RawEvent) -> StackKey {
    StackKey {
        pid: (raw.arg0 >> 32) as u32,
        kernel: raw.kernel_stack_id,
        user: raw.user_stack_id,
    }
}

/// A wait point's return value when it counts ready events (the poll family: epoll_wait,
/// poll, select and their variants return how many are ready; io_uring_enter and a runtime's
/// futex do not), and is not an error.
fn ready_count(raw: &RawEvent) -> Option<u64> {
    const COUNTS_READY: [&str; 7] = [
        "epoll_wait",
        "epoll_pwait",
        "epoll_pwait2",
        "poll",
        "ppoll",
        "select",
        "pselect6",
    ];
    let name = crate::syscalls::name(i64::from(raw.syscall))?;
    let ret = raw.arg0 as i64;
    (COUNTS_READY.contains(&name) && ret >= 0).then_some(ret as u64)
}

pub fn interpret(raw: &RawEvent) -> Decoded {
    let stack = StackKey {
        pid: raw.pid,
        kernel: raw.kernel_stack_id,
        user: raw.user_stack_id,
    };
    let syscall = (raw.syscall != NO_SYSCALL).then_some(raw.syscall);
    let what = match raw.kind {
        kind::SWITCH_OUT => Some(What::SwitchOut {
            runnable: is_runnable(raw.arg0),
            stack,
            syscall,
            gil_holder: (raw.arg1 & GIL_HELD_BY_OTHER != 0).then_some(raw.aux),
        }),
        kind::SWITCH_IN if raw.arg1 & SWITCH_IN_UNTRACED != 0 => Some(What::SwitchedInUntraced {
            at_ns: (raw.arg0 != 0).then_some(raw.arg0),
        }),
        kind::SWITCH_IN => Some(What::SwitchIn),
        kind::WAKING => Some(What::WokenBy(timeline::Waker {
            pid: (raw.arg0 >> 32) as u32,
            tid: raw.arg0 as u32,
            stack: waker_stack(raw),
        })),
        kind::WAKEUP => Some(What::Wake),
        kind::WAIT_ENTER => Some(What::WaitEnter),
        kind::WAIT_EXIT => Some(match ready_count(raw) {
            Some(ready) => What::WaitReturned { ready },
            None => What::WaitExit,
        }),
        kind::SAMPLE => Some(What::Sample { stack, syscall }),
        kind::EXIT => Some(What::Exit),
        _ => None,
    };
    let lifecycle = match raw.kind {
        kind::FORK => Some(Lifecycle::Fork {
            parent_pid: raw.pid,
            child_tid: raw.arg0 as u32,
        }),
        kind::EXEC => Some(Lifecycle::Exec { pid: raw.pid }),
        kind::EXIT => Some(Lifecycle::Exit {
            pid: raw.pid,
            tid: raw.tid,
            group_dead: raw.aux == 1,
        }),
        kind::EXIT_CALL => Some(Lifecycle::ExitCall {
            pid: raw.pid,
            status: raw.arg0 as i32,
        }),
        kind::SIGNAL => Some(Lifecycle::Signal {
            pid: raw.pid,
            signal: raw.arg0 as i32,
        }),
        _ => None,
    };
    Decoded {
        timeline: what.map(|what| timeline::Event {
            ts_ns: raw.ts_ns,
            pid: raw.pid,
            tid: raw.tid,
            what,
        }),
        lifecycle,
    }
}

/// Tracks per-CPU sequence numbers; a jump means the kernel dropped events on that CPU.
#[derive(Default)]
pub struct LossDetector {
    last_seq: foldhash::HashMap<u32, u64>,
    pub lost: u64,
}

impl LossDetector {
    /// Returns how many events were lost just before this one on its CPU.
    ///
    /// Numbers may arrive out of order: a program that interrupts another on the same CPU (a
    /// perf-event sample inside a raw-tracepoint program, which takes no recursion guard
    /// against it) takes the next number and submits first, so the interrupted event arrives
    /// after a later number. It was counted lost when that number opened a gap: it is taken
    /// back off the count, and the CPU's highest number stays the reference (moving back to it
    /// counted the gap again: a recording with no loss reported 2 lost events).
    pub fn observe(&mut self, cpu: u32, seq: u64) -> u64 {
        let Some(&last) = self.last_seq.get(&cpu) else {
            self.last_seq.insert(cpu, seq);
            return 0;
        };
        if seq <= last {
            if seq < last {
                self.lost = self.lost.saturating_sub(1);
            }
            return 0;
        }
        self.last_seq.insert(cpu, seq);
        let gap = seq - last - 1;
        self.lost = self.lost.saturating_add(gap);
        gap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prev_state_decoding() {
        assert!(is_runnable(0)); // yielded, TASK_RUNNING
        assert!(is_runnable(0x100)); // preempted: TASK_REPORT_MAX
        assert!(!is_runnable(1)); // S
        assert!(!is_runnable(2)); // D
    }

    #[test]
    fn sequence_gaps_are_losses() {
        let mut d = LossDetector::default();
        assert_eq!(d.observe(0, 1), 0);
        assert_eq!(d.observe(1, 7), 0);
        assert_eq!(d.observe(0, 2), 0);
        assert_eq!(d.observe(0, 6), 3);
        assert_eq!(d.observe(1, 8), 0);
        assert_eq!(d.lost, 3);
    }

    #[test]
    fn an_event_overtaken_on_its_cpu_is_not_lost() {
        let mut d = LossDetector::default();
        assert_eq!(d.observe(0, 10), 0);
        // 11 was taken by a switch-out that a sample (12) interrupted before it submitted.
        assert_eq!(d.observe(0, 12), 1);
        assert_eq!(d.observe(0, 11), 0);
        assert_eq!(d.observe(0, 13), 0);
        assert_eq!(d.lost, 0);
        // A real loss stays counted beside it.
        assert_eq!(d.observe(0, 16), 2);
        assert_eq!(d.observe(0, 15), 0);
        assert_eq!(d.lost, 1);
    }

    fn bytes_of<T>(value: &T) -> &[u8] {
        // SAFETY: viewing plain data as bytes.
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
    }

    #[test]
    fn python_records_are_told_apart_by_size_and_magic() {
        let header = PyStackHeader {
            ts_ns: 7,
            tstate: 0x1000,
            pid: 1,
            tid: 2,
            depth: 2,
            truncated: 0,
            magic: PyStackHeader::MAGIC,
            handle: 0x3000,
            task_candidates: [0x4000, 0],
            running_task: 0,
        };
        let frame = |code| PyFrame {
            code,
            ip: code + 8,
            frame: 0x2000,
            flags: 1,
            entry_shim_low32: 0,
        };
        let mut record = bytes_of(&header).to_vec();
        record.extend_from_slice(bytes_of(&frame(0xa0)));
        record.extend_from_slice(bytes_of(&frame(0xb0)));
        match decode_record(&record) {
            Some(Record::Python { header: h, frames }) => {
                assert_eq!(h, header);
                assert_eq!(frames, [frame(0xa0), frame(0xb0)]);
            }
            other => panic!("not a Python record: {other:?}"),
        }
        // Never mistaken for an event or a stack copy, whatever the depth.
        for depth in 0..=profiler_common::MAX_PY_FRAMES {
            let size = PY_STACK_HEADER_SIZE + depth * size_of::<PyFrame>();
            assert_ne!(size, size_of::<RawEvent>());
            assert_ne!(size % 16, size_of::<UserStackHeader>() % 16);
        }
        // A wrong magic is refused rather than decoded as garbage frames.
        record[32] ^= 1;
        assert!(decode_record(&record).is_none());
    }

    #[test]
    fn an_untraced_switch_in_keeps_its_time() {
        let raw = |arg0, arg1| RawEvent {
            kind: kind::SWITCH_IN,
            ts_ns: 500,
            arg0,
            arg1,
            ..Default::default()
        };
        let what = |arg0, arg1| interpret(&raw(arg0, arg1)).timeline.map(|e| e.what);
        assert_eq!(what(0, 0), Some(What::SwitchIn));
        assert_eq!(
            what(420, SWITCH_IN_UNTRACED),
            Some(What::SwitchedInUntraced { at_ns: Some(420) })
        );
        assert_eq!(
            what(0, SWITCH_IN_UNTRACED),
            Some(What::SwitchedInUntraced { at_ns: None })
        );
    }

    #[test]
    fn decode_refuses_short_records() {
        assert!(decode(&[0u8; 10]).is_none());
        let raw = RawEvent {
            kind: kind::SAMPLE,
            ts_ns: 5,
            pid: 1,
            tid: 2,
            ..Default::default()
        };
        // SAFETY: viewing a plain-data struct as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&raw as *const RawEvent).cast::<u8>(),
                size_of::<RawEvent>(),
            )
        };
        assert_eq!(decode(bytes), Some(raw));
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::super::*;

        proptest! {
            #![proptest_config(crate::fuzz_config())]

            /// Any ring-buffer record decodes to something or nothing, never a panic, and what
            /// it decodes to is interpreted without one either.
            #[test]
            fn fuzz_ring_buffer_records(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
                match decode_record(&bytes) {
                    Some(Record::Event(raw)) => { let _ = interpret(&raw); }
                    Some(Record::Stack { header, stack }) => {
                        prop_assert!(stack.len() == header.len as usize);
                    }
                    Some(Record::Python { header, frames }) => {
                        prop_assert!(frames.len() <= header.depth as usize);
                    }
                    None => {}
                }
            }

            /// A record of exactly one event's size with any content.
            #[test]
            fn fuzz_events(bytes in proptest::collection::vec(any::<u8>(), size_of::<RawEvent>())) {
                let raw = decode(&bytes).expect("right size");
                let _ = interpret(&raw);
                let _ = waker_stack(&raw);
            }

            #[test]
            fn fuzz_sequence_numbers(seqs in proptest::collection::vec((0u32..4, any::<u64>()), 0..50)) {
                let mut detector = LossDetector::default();
                for (cpu, seq) in seqs {
                    detector.observe(cpu, seq);
                }
            }
        }
    }
}
