//! Session tests on synthetic events: the decisions (stalls and their breakdown, processes
//! followed and unfollowed, stacks attached to their events) with the system faked, live and
//! replayed, without a kernel.

use super::*;
use crate::model::StackKind;
use crate::system::access::{Replay, fake::FakeSystem};

const MS: u64 = 1_000_000;

fn config() -> RecordConfig {
    crate::config::fixtures::record_config()
}

/// Issue #22 end to end through the session (the wiring from raw events to the stall):
/// CPU 1's switch-in arrives before CPU 0's switch-out it follows; the reorder stage puts
/// them in order, and the breakdown is right and adds up. (That a replay of `events.bin`
/// gives the same stalls is checked on real recordings by tests/tests/stress_breakdown.rs.)
#[test]
fn events_out_of_order_across_cpus_give_the_right_breakdown() {
    const PID: u32 = 4242;
    let mut seqs = [0u64; 2];
    let mut raw = |ms_x10: u64, cpu: u32, kind: u32| {
        seqs[cpu as usize] += 1;
        RawEvent {
            ts_ns: ms_x10 * MS / 10,
            seq: seqs[cpu as usize],
            kind,
            cpu,
            pid: PID,
            tid: PID,
            syscall: if matches!(kind, kind::WAIT_ENTER | kind::WAIT_EXIT) {
                232 // epoll_wait
            } else {
                -1
            },
            // SWITCH_OUT: preempted (TASK_REPORT_MAX), still runnable.
            arg0: if kind == kind::SWITCH_OUT { 0x100 } else { 0 },
            kernel_stack_id: -1,
            user_stack_id: -1,
            comm: *b"server\0\0\0\0\0\0\0\0\0\0",
            ..RawEvent::default()
        }
    };
    let mut arrival = vec![raw(10, 0, kind::WAIT_EXIT)];
    arrival.extend((1..=20).map(|i| raw(10 + i * 100, 0, kind::SAMPLE)));
    arrival.push(raw(2045, 1, kind::SWITCH_IN));
    arrival.push(raw(2040, 0, kind::SWITCH_OUT));
    arrival.extend((21..=24).map(|i| raw(10 + i * 100, 1, kind::SAMPLE)));
    arrival.push(raw(2510, 1, kind::WAIT_ENTER));

    let mut live = Session::new(config());
    live.mark_waiting(PID, PID);
    for event in &arrival {
        live.handle_raw(&mut Replay, event);
    }
    live.flush(&mut Replay);
    let recording = live.finish(&Replay, 0, 3000 * MS);
    assert_eq!(recording.stalls.len(), 1);
    let stall = &recording.stalls[0];
    assert_eq!(stall.duration_ns, 250 * MS);
    assert_eq!(stall.runqueue_ns, MS / 2, "{stall:?}");
    assert_eq!(stall.on_cpu_ns, 250 * MS - MS / 2);
    assert!(stall.adds_up && stall.unaccounted_ns == 0, "{stall:?}");
    assert_eq!(recording.reorder.reordered, 1);
    assert_eq!(recording.reorder.late_events, 0);
    assert_eq!(recording.reorder.window_ns, reorder::WINDOW_NS);
}

/// A "repeated" stack record for a thread whose previous copy the agent never had is a
/// lost user stack, counted among the drops (and so in the summary's "stacks lost"); one
/// for a thread it has a copy of reuses that copy and is no drop.
#[test]
fn a_repeated_stack_without_a_previous_copy_is_counted_as_a_drop() {
    const PID: u32 = 4242;
    let header = |tid: u32, flags: u32| profiler_common::UserStackHeader {
        ts_ns: MS,
        pid: PID,
        tid,
        flags,
        ..Default::default()
    };
    let mut session = Session::new(config());
    session.handle_stack(&header(PID + 1, profiler_common::STACK_REPEATED), &[]);
    session.handle_stack(&header(PID + 2, 0), &[]);
    session.handle_stack(&header(PID + 2, profiler_common::STACK_REPEATED), &[]);
    let recording = session.finish(&Replay, 0, 10 * MS);
    assert_eq!(recording.drops.repeats_without_copy, 1);
    assert_eq!(recording.drops.user_stacks_lost(), 1);
    assert_eq!(recording.unwind.repeated, 1);
}

/// A 300 ms run with `stacks` stacks of `frames_each` frames each.
fn stall_with(stacks: usize, frames_each: usize) -> StallRecord {
    StallRecord {
        comm: "app".into(),
        rule: StallRule::Run,
        stacks: (0..stacks)
            .map(|_| StackRecord {
                kind: StackKind::OnCpu,
                weight_ns: MS,
                count: 1,
                syscall: None,
                frames: vec![frame("handler"); frames_each],
                waker: None,
            })
            .collect(),
        ..crate::model::fixtures::stall(1, 1, 300 * MS)
    }
}

#[test]
fn kept_stalls_hold_no_more_frames_than_the_budget_and_the_rest_is_counted() {
    let limit = 10_000;
    let mut held = 0;
    let mut dropped = 0;
    let mut kept = Vec::new();
    for _ in 0..100 {
        let mut stall = stall_with(20, 100);
        dropped += stalls::keep_within_frame_budget(&mut stall, &mut held, limit);
        kept.push(stall);
    }
    let frames: usize = kept
        .iter()
        .flat_map(|s| &s.stacks)
        .map(|s| s.frames.len())
        .sum();
    assert!(frames <= limit, "{frames} frames held");
    assert_eq!(
        frames, 10_000,
        "the first five stalls keep all their stacks"
    );
    assert_eq!(dropped, 95 * 20, "every stack left out is counted");
    // Past the budget a stall is still reported, with its times.
    assert_eq!(kept.len(), 100);
    assert_eq!(kept[99].duration_ns, 300 * MS);
}

/// Kept stalls hold one copy of each frame list (stacks and wakers): what comes back out is
/// what went in, in order, and the same stack in two stalls is stored once.
#[test]
fn kept_stalls_share_their_frames_and_give_them_back_unchanged() {
    let mut records = StallRecords::default();
    let mut with_waker = stall_with(2, 3);
    with_waker.stacks[1].frames = vec![frame("other"), frame("main")];
    with_waker.stacks[1].waker = Some(crate::model::WakerRecord {
        pid: 1,
        tid: 2,
        comm: "writer".into(),
        frames: vec![frame("wake_up"), frame("write")],
    });
    let first = StallRecord {
        start_ns: 1,
        ..with_waker.clone()
    };
    let second = StallRecord {
        start_ns: 2,
        ..with_waker.clone()
    };
    records.keep(first.clone());
    records.keep(second.clone());
    assert_eq!(
        records.shared_lists(),
        3,
        "two stacks and one waker, each stored once"
    );
    let back = records.into_sorted(|_, _| true);
    assert_eq!(back, vec![first, second]);
}

fn frame(name: &str) -> Frame {
    Frame {
        column: None,
        function: name.into(),
        file: Some("app.py".into()),
        line: Some(3),
        module: None,
        kind: FrameKind::Python,
    }
}

/// PIDs above the kernel's PID_MAX_LIMIT (2^22): no real process has them, so the readers that
/// look at /proc themselves (Python, V8, the symbolizer) find nothing for them.
const SERVER: u32 = 5_000_001;
const CHILD: u32 = 5_000_002;
const THREAD: u32 = 5_000_003;
const EPOLL_WAIT: i32 = 232;

fn comm(name: &str) -> [u8; 16] {
    let mut comm = [0u8; 16];
    comm[..name.len()].copy_from_slice(name.as_bytes());
    comm
}

/// Raw events as the kernel side sends them, one CPU, numbered in order.
#[derive(Default)]
struct Script {
    seq: u64,
    events: Vec<RawEvent>,
}

impl Script {
    fn event(&mut self, ts_ns: u64, pid: u32, kind: u32) -> &mut RawEvent {
        self.seq += 1;
        self.events.push(RawEvent {
            ts_ns,
            seq: self.seq,
            kind,
            cpu: 0,
            pid,
            tid: pid,
            syscall: profiler_common::NO_SYSCALL,
            kernel_stack_id: -1,
            user_stack_id: -1,
            // A wake-up carries its waker's name, not the thread's.
            comm: if matches!(kind, kind::WAKING | kind::WAKEUP) {
                [0; 16]
            } else {
                comm("server")
            },
            ..RawEvent::default()
        });
        let last = self.events.len() - 1;
        &mut self.events[last]
    }
    fn wait_exit(&mut self, ts_ns: u64, pid: u32) {
        self.event(ts_ns, pid, kind::WAIT_EXIT).syscall = EPOLL_WAIT;
    }
    fn wait_enter(&mut self, ts_ns: u64, pid: u32) {
        self.event(ts_ns, pid, kind::WAIT_ENTER).syscall = EPOLL_WAIT;
    }
    /// `runnable`: preempted (TASK_REPORT_MAX); otherwise asleep (TASK_INTERRUPTIBLE).
    fn switch_out(&mut self, ts_ns: u64, pid: u32, runnable: bool) {
        self.event(ts_ns, pid, kind::SWITCH_OUT).arg0 = if runnable { 0x100 } else { 1 };
    }
    /// Ten quick iterations (5 ms each, a sample in each) from `from_ns`, 10 ms apart.
    fn quick_iterations(&mut self, from_ns: u64, pid: u32) {
        for i in 0..10 {
            let t = from_ns + i * 10 * MS;
            self.wait_exit(t, pid);
            self.event(t + 2 * MS, pid, kind::SAMPLE);
            self.wait_enter(t + 5 * MS, pid);
        }
    }
    /// One 300 ms iteration from 300 ms: 190 ms on CPU, 90 ms asleep, 20 ms waiting for a CPU.
    fn slow_iteration(&mut self, pid: u32) {
        self.wait_exit(300 * MS, pid);
        self.event(320 * MS, pid, kind::SAMPLE).kernel_stack_id = 3;
        self.switch_out(350 * MS, pid, false);
        self.event(440 * MS, pid, kind::WAKEUP);
        self.event(450 * MS, pid, kind::SWITCH_IN);
        self.event(460 * MS, pid, kind::SAMPLE);
        self.switch_out(500 * MS, pid, true);
        self.event(510 * MS, pid, kind::SWITCH_IN);
        self.event(550 * MS, pid, kind::SAMPLE);
        self.wait_enter(600 * MS, pid);
    }
}

fn server() -> FakeSystem {
    let mut system = FakeSystem::default();
    system.spawn(SERVER, "server", &[]);
    // What the kernel's stack map holds for the sample's id (a kernel address).
    system.kernel_stacks.insert(3, vec![0xffff_ffff_8100_0000]);
    system
}

/// A loop thread's stall, the script run live against the fake system.
fn live_stall_recording() -> (Recording, FakeSystem) {
    let mut system = server();
    let mut session = Session::new(config());
    session.add_process(&system, SERVER, None);
    session.mark_waiting(SERVER, SERVER);
    let mut script = Script::default();
    script.quick_iterations(MS, SERVER);
    script.slow_iteration(SERVER);
    script.quick_iterations(610 * MS, SERVER);
    for event in &script.events {
        session.handle_raw(&mut system, event);
    }
    session.flush(&mut system);
    session.stopped(&mut system);
    (session.finish(&system, 0, 1000 * MS), system)
}

/// Issue #18: the session's decisions on synthetic events, live (the system faked): of 21
/// iterations only the slow one is a stall, with its time split into on-CPU, asleep and
/// waiting for a CPU; the process is described from (fake) /proc and the sample's kernel
/// stack read from the (fake) stack map.
#[test]
fn a_slow_iteration_is_one_stall_with_its_breakdown_and_quick_ones_are_none() {
    let (recording, system) = live_stall_recording();
    assert_eq!(recording.stalls.len(), 1, "{:#?}", recording.stalls);
    let stall = &recording.stalls[0];
    assert_eq!((stall.pid, stall.tid), (SERVER, SERVER));
    assert_eq!(stall.rule, StallRule::Iteration);
    assert_eq!(stall.comm, "server");
    assert_eq!((stall.start_ns, stall.end_ns), (300 * MS, 600 * MS));
    assert_eq!(stall.off_cpu_ns, 90 * MS, "{stall:#?}");
    assert_eq!(stall.runqueue_ns, 20 * MS, "{stall:#?}");
    assert_eq!(stall.on_cpu_ns, 190 * MS, "{stall:#?}");
    assert!(
        stall.adds_up && !stall.partial && !stall.data_lost,
        "{stall:#?}"
    );
    let kernel_frames: Vec<&Frame> = stall
        .stacks
        .iter()
        .filter(|s| s.kind == StackKind::OnCpu)
        .flat_map(|s| &s.frames)
        .collect();
    assert_eq!(kernel_frames.len(), 1, "{:#?}", stall.stacks);
    assert_eq!(kernel_frames[0].kind, FrameKind::Kernel);

    let thread = recording.threads.iter().find(|t| t.tid == SERVER);
    assert!(
        thread.is_some_and(|t| t.is_loop && t.iterations == 21),
        "{thread:?}"
    );
    assert_eq!(recording.processes.len(), 1);
    assert_eq!(recording.processes[0].comm, "server");
    assert_eq!(recording.processes[0].exe, "/usr/bin/server");
    // Stopping unfollowed everyone; nothing was lost.
    assert!(system.followed.is_empty());
    assert_eq!(recording.lost_events, 0);
}

/// Replaying the same events (nothing live: no /proc, no stack map) gives the same stall with
/// the same breakdown; the kernel stack, never saved here, is not read from anywhere.
#[test]
fn a_replay_decides_the_same_stall_without_the_system() {
    let (live, _) = live_stall_recording();
    let mut session = Session::new(config());
    session.mark_waiting(SERVER, SERVER);
    session.reorder = Reorder::new(reorder::Config::passthrough());
    let mut script = Script::default();
    script.quick_iterations(MS, SERVER);
    script.slow_iteration(SERVER);
    script.quick_iterations(610 * MS, SERVER);
    for event in &script.events {
        session.handle_raw(&mut Replay, event);
    }
    session.flush(&mut Replay);
    let replayed = session.finish(&Replay, 0, 1000 * MS);
    assert_eq!(replayed.stalls.len(), 1);
    let (a, b) = (&live.stalls[0], &replayed.stalls[0]);
    assert_eq!(
        (
            a.start_ns,
            a.end_ns,
            a.on_cpu_ns,
            a.off_cpu_ns,
            a.runqueue_ns
        ),
        (
            b.start_ns,
            b.end_ns,
            b.on_cpu_ns,
            b.off_cpu_ns,
            b.runqueue_ns
        )
    );
    assert_eq!(b.comm, "server");
    assert!(
        b.stacks.iter().all(|s| s.frames.is_empty()),
        "{:#?}",
        b.stacks
    );
    assert!(replayed.processes.is_empty(), "nothing read from /proc");
}

/// Issue #18: a process's lifecycle through the system: a forked child that /proc shows as a
/// process is followed from its fork (a forked thread is not a process), its exec renames it,
/// its exit is recorded with its status and unfollows it in the kernel maps, the parent's
/// death by signal likewise; a new process with the exited child's PID is a new record.
#[test]
fn fork_exec_and_exit_follow_and_unfollow_processes() {
    let mut system = FakeSystem::default();
    system.spawn(SERVER, "shim", &[]);
    system.drops[drop_index::RINGBUF_FULL as usize] = 7;
    let mut session = Session::new(config());
    session.add_process(&system, SERVER, Some(0));
    let mut script = Script::default();
    // The child is in /proc by the time its fork is read; the thread is not a process.
    system.spawn(CHILD, "shim", &[]);
    script.event(10 * MS, SERVER, kind::FORK).arg0 = u64::from(CHILD);
    script.event(11 * MS, SERVER, kind::FORK).arg0 = u64::from(THREAD);
    for event in std::mem::take(&mut script.events) {
        session.handle_raw(&mut system, &event);
    }
    session.flush(&mut system);
    // It execs python3.
    let child = system.processes.get_mut(&CHILD).expect("spawned above");
    child.comm = "python3".into();
    child.exe = "/usr/bin/python3".into();
    script.event(20 * MS, CHILD, kind::EXEC);
    script.event(30 * MS, CHILD, kind::EXIT_CALL).arg0 = 3;
    script.event(31 * MS, CHILD, kind::EXIT).aux = 1;
    // A late event of the exited child does not bring it back.
    script.event(32 * MS, CHILD, kind::SAMPLE);
    for event in std::mem::take(&mut script.events) {
        session.handle_raw(&mut system, &event);
    }
    session.flush(&mut system);
    assert_eq!(system.unfollowed, vec![CHILD]);
    // The child's PID comes back as another child, then the parent is killed.
    system.reap(CHILD);
    system.spawn(CHILD, "again", &[]);
    script.event(35 * MS, SERVER, kind::FORK).arg0 = u64::from(CHILD);
    script.event(40 * MS, SERVER, kind::SIGNAL).arg0 = 9;
    script.event(41 * MS, SERVER, kind::EXIT).aux = 1;
    for event in &script.events {
        session.handle_raw(&mut system, event);
    }
    session.flush(&mut system);
    assert_eq!(system.unfollowed, vec![CHILD, SERVER]);
    session.stopped(&mut system);
    assert!(system.followed.is_empty());
    let recording = session.finish(&system, 0, 100 * MS);

    let summary: Vec<_> = recording
        .processes
        .iter()
        .map(|p| {
            (
                p.pid,
                p.comm.as_str(),
                p.exe.as_str(),
                p.started_ns,
                p.exited_ns,
                p.exit_code,
                p.exit_signal.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                SERVER,
                "shim",
                "/usr/bin/shim",
                Some(0),
                Some(41 * MS),
                None,
                Some("SIGKILL")
            ),
            (
                CHILD,
                "python3",
                "/usr/bin/python3",
                Some(10 * MS),
                Some(31 * MS),
                Some(3),
                None
            ),
            (
                CHILD,
                "again",
                "/usr/bin/again",
                Some(35 * MS),
                None,
                None,
                None
            ),
        ]
    );
    assert!(recording.stalls.is_empty());
    assert_eq!(recording.drops.ringbuf_full, 7);
    assert_eq!(recording.lost_events, 7);
}

/// A user-stack copy is attached to the event taken with it (the thread's record just before
/// it, even stamped 2.3 ms apart: an emulator's vCPU preempted between the two stamps), never
/// to a later event of the thread or to another thread's event.
#[test]
fn a_stack_copy_goes_to_its_own_event_only() {
    let mut system = server();
    let mut session = Session::new(config());
    session.add_process(&system, SERVER, None);
    // Each copy at its own address, so each would be a stack of its own.
    let copy = |ts_ns: u64, tid: u32| profiler_common::UserStackHeader {
        ts_ns,
        ip: 0x40_0000 + ts_ns / MS * 0x1000,
        sp: 0x7ffd_0000,
        pid: SERVER,
        tid,
        ..Default::default()
    };
    // In ring-buffer order: each copy just before the event it was taken for.
    let mut script = Script::default();
    let mut copy_then_sample = |stack_ts_ns: u64, stack_tid: u32, sample_ts_ns: u64| {
        session.handle_stack(&copy(stack_ts_ns, stack_tid), &[]);
        script.event(sample_ts_ns, SERVER, kind::SAMPLE).arg1 = profiler_common::USER_STACK_COPIED;
        let event = script.events.pop().expect("just pushed");
        session.handle_raw(&mut system, &event);
    };
    // Its own event.
    copy_then_sample(10 * MS, SERVER, 10 * MS);
    // A copy whose event was lost: the next event, 15 ms later, has a copy too, a repeat of
    // a copy the agent does not have (its record comes first, as every copy's does).
    session.handle_stack(&copy(20 * MS, SERVER), &[]);
    let mut repeat = copy(35 * MS, SERVER);
    repeat.flags = profiler_common::STACK_REPEATED;
    session.stacks.forget_thread(SERVER);
    session.handle_stack(&repeat, &[]);
    script.event(35 * MS, SERVER, kind::SAMPLE).arg1 = profiler_common::USER_STACK_COPIED;
    let event = script.events.pop().expect("just pushed");
    session.handle_raw(&mut system, &event);
    let mut copy_then_sample = |stack_ts_ns: u64, stack_tid: u32, sample_ts_ns: u64| {
        session.handle_stack(&copy(stack_ts_ns, stack_tid), &[]);
        script.event(sample_ts_ns, SERVER, kind::SAMPLE).arg1 = profiler_common::USER_STACK_COPIED;
        let event = script.events.pop().expect("just pushed");
        session.handle_raw(&mut system, &event);
    };
    // Another thread's copy.
    copy_then_sample(40 * MS, THREAD, 40 * MS);
    // Its own event, stamped 2.3 ms after the copy.
    copy_then_sample(50 * MS, SERVER, 50 * MS + 2_300_000);
    session.flush(&mut system);
    let unwound: Vec<_> = session
        .resolver
        .seen
        .iter()
        .filter(|k| k.user >= INTERNED_BASE)
        .collect();
    assert_eq!(unwound.len(), 2, "{unwound:?}");
}
