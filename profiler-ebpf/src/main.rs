//! stallscope's kernel side: scheduler, wait-point syscall, sampling and process-lifecycle
//! probes, all filtered to the followed processes before any other work.
//!
//! Invariants:
//! - The first thing every program does is a lookup in `FOLLOWED_PIDS` (by the current tgid) or
//!   `FOLLOWED_TIDS` (by a thread named in the tracepoint). An untargeted process costs that
//!   lookup and nothing else.
//! - Every event attempted bumps the per-CPU sequence number, written or not, and every failure
//!   bumps a `DROPS` counter: loss is always visible to the agent.
//! - Tracepoint field offsets come from the agent (`OFFSETS`), which reads them from tracefs;
//!   nothing here hard-codes a kernel's layout.
#![no_std]
#![no_main]

use aya_ebpf::{
    Global,
    bindings::BPF_F_USER_STACK,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task_btf,
        bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user_buf,
        bpf_task_pt_regs,
    },
    macros::{map, perf_event, tracepoint},
    maps::{Array, HashMap, PerCpuArray, RingBuf, StackTrace},
    programs::{PerfEventContext, TracePointContext, tracing::StackIdContext},
};
use aya_log_ebpf::debug;
use profiler_common::{
    Event, FIELD_ABSENT, MAX_STACK_COPY, MAX_SYSCALL_NR, NO_STACK, NO_SYSCALL, TracepointOffsets,
    USER_STACK_COPIED, UserStackCopy, UserStackHeader, drop, kind,
};

#[unsafe(no_mangle)]
static OFFSETS: Global<TracepointOffsets> = Global::new(TracepointOffsets::UNSET);

/// Bytes of user stack to copy at each sample and switch-out outside a wait point (0: none,
/// use the kernel's frame-pointer walk instead). Set by the agent, at most MAX_STACK_COPY.
#[unsafe(no_mangle)]
static STACK_COPY_BYTES: Global<u32> = Global::new(0);

/// Scratch records for user-stack copies, three per CPU (slot 0: switch-out, 1: sample,
/// 2: waker), so a sample that interrupts a program on the same CPU never shares a buffer with
/// it. The agent sizes it to 3 x CPUs at load.
#[map]
static STACK_SCRATCH: Array<UserStackCopy> = Array::with_max_entries(2, 0);

/// Events to the agent. The agent may resize it at load (`--ring-buffer`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// Kernel and user stacks by id. No `BPF_F_REUSE_STACKID`: a colliding stack is dropped and
/// counted rather than silently overwriting one the agent may not have read yet.
#[map]
static STACKS: StackTrace = StackTrace::with_max_entries(16384, 0);

/// Followed processes (tgid -> 1). Also holds the tid of every thread forked by a followed
/// process, because at fork time we cannot tell a thread from a process; such keys are removed
/// when that thread exits.
#[map]
static FOLLOWED_PIDS: HashMap<u32, u32> = HashMap::with_max_entries(8192, 0);

/// Followed threads (tid -> tgid), for tracepoints that name a thread other than `current`.
#[map]
static FOLLOWED_TIDS: HashMap<u32, u32> = HashMap::with_max_entries(65536, 0);

/// Syscall each followed thread is in (tid -> nr, or NO_SYSCALL), so a switch-out can say what
/// the thread blocked in.
#[map]
static THREAD_SYSCALL: HashMap<u32, i32> = HashMap::with_max_entries(65536, 0);

/// Wait-point syscalls (nr -> 1), filled by the agent from its table of runtimes.
#[map]
static WAIT_POINTS: Array<u32> = Array::with_max_entries(MAX_SYSCALL_NR, 0);

#[map]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(drop::COUNT, 0);

#[map]
static SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn count_drop(index: u32) {
    if let Some(counter) = DROPS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, and a BPF program is not preempted by another on its CPU.
        unsafe { *counter += 1 }
    }
}

#[inline(always)]
fn next_seq() -> u64 {
    match SEQ.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, see count_drop.
        Some(seq) => unsafe {
            *seq += 1;
            *seq
        },
        None => 0,
    }
}

#[inline(always)]
fn current_ids() -> (u32, u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    ((pid_tgid >> 32) as u32, pid_tgid as u32)
}

#[inline(always)]
fn is_followed_pid(tgid: u32) -> bool {
    // SAFETY: the value is only compared against None.
    tgid != 0 && unsafe { FOLLOWED_PIDS.get(&tgid) }.is_some()
}

#[inline(always)]
fn followed_tid(tid: u32) -> Option<u32> {
    if tid == 0 {
        return None;
    }
    // SAFETY: plain u32 copied out of the map.
    unsafe { FOLLOWED_TIDS.get(&tid) }.copied()
}

/// Records `tid` as a thread of `tgid` (so later switch-ins and wake-ups of it are seen), fixing
/// the entry fork made for a new process with its parent's tgid.
#[inline(always)]
fn remember_thread(tgid: u32, tid: u32) {
    match FOLLOWED_TIDS.get_ptr_mut(&tid) {
        Some(known) => {
            // SAFETY: pointer into the map's value, valid for this program run.
            unsafe {
                if *known != tgid {
                    *known = tgid;
                }
            }
        }
        None => {
            if FOLLOWED_TIDS.insert(&tid, &tgid, 0).is_err() {
                count_drop(drop::FOLLOW_MAP_FULL);
            }
        }
    }
}

#[inline(always)]
fn thread_syscall(tid: u32) -> i32 {
    // SAFETY: plain i32 copied out of the map.
    unsafe { THREAD_SYSCALL.get(&tid) }
        .copied()
        .unwrap_or(NO_SYSCALL)
}

#[inline(always)]
fn set_thread_syscall(tid: u32, nr: i32) {
    match THREAD_SYSCALL.get_ptr_mut(&tid) {
        // SAFETY: pointer into the map's value, valid for this program run.
        Some(slot) => unsafe { *slot = nr },
        None => {
            let _ = THREAD_SYSCALL.insert(&tid, &nr, 0);
        }
    }
}

/// 0: not a wait point; 1: a wait point for every thread; 2: for some runtimes' threads only
/// (the agent decides which).
#[inline(always)]
fn wait_point_mark(nr: i64) -> u32 {
    if nr >= 0 && nr < MAX_SYSCALL_NR as i64 {
        WAIT_POINTS.get(nr as u32).copied().unwrap_or(0)
    } else {
        0
    }
}

#[inline(always)]
fn is_wait_point(nr: i64) -> bool {
    wait_point_mark(nr) != 0
}

/// A wait for work in every runtime: a thread there is idle, so its stack is not copied.
#[inline(always)]
fn is_idle_wait(nr: i64) -> bool {
    wait_point_mark(nr) == 1
}

/// `bpf_get_stackid` answers -EFAULT when there is no stack to take (a sample that hit user
/// mode has no kernel frames): that is not a loss. Anything else (-EEXIST: the bucket holds a
/// different stack; -ENOMEM) is.
const EFAULT: i32 = 14;

#[inline(always)]
fn stack_id<C: StackIdContext>(ctx: &C, flags: u64, drop_counter: u32) -> i32 {
    match ctx.get_stackid(&STACKS, flags) {
        Ok(id) => id as i32,
        Err(err) => {
            if err != -EFAULT {
                count_drop(drop_counter);
            }
            NO_STACK
        }
    }
}

/// Offsets in x86-64 `struct pt_regs`, in u64 words (arch/x86/include/asm/ptrace.h).
const PT_REGS_BP: usize = 4;
const PT_REGS_IP: usize = 16;
const PT_REGS_SP: usize = 19;
const STACK_CHUNK: usize = 4096;

/// Stack ids for an event, and whether the user stack was copied for the agent to unwind
/// (then no frame-pointer walk is needed). Copying is skipped inside a wait point: an idle
/// loop costs nothing.
#[inline(always)]
fn stacks<C: StackIdContext>(
    ctx: &C,
    pid: u32,
    tid: u32,
    syscall: i32,
    slot: u32,
) -> (i32, i32, bool) {
    let kernel = stack_id(ctx, 0, drop::KERNEL_STACK);
    let copied = !is_idle_wait(syscall as i64) && copy_user_stack(pid, tid, slot);
    let user = if copied {
        NO_STACK
    } else {
        stack_id(ctx, BPF_F_USER_STACK as u64, drop::USER_STACK)
    };
    (kernel, user, copied)
}

/// Sends the current thread's user registers and the top of its user stack.
#[inline(always)]
fn copy_user_stack(pid: u32, tid: u32, slot: u32) -> bool {
    let want = STACK_COPY_BYTES.load() as usize;
    if want == 0 {
        return false;
    }
    // SAFETY: helper without preconditions.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(buf) = STACK_SCRATCH.get_ptr_mut(cpu * 3 + slot) else {
        return false;
    };
    // SAFETY: the map value lives for this program run and no other program uses this slot
    // on this CPU meanwhile (see STACK_SCRATCH).
    let buf = unsafe { &mut *buf };
    // The user registers saved at kernel entry: valid both at sched_switch and in a sample
    // that interrupted the kernel.
    // SAFETY: helpers valid in tracing programs; the result is only read with probe_read.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as *const u64;
    if regs.is_null() {
        return false;
    }
    // SAFETY: probe reads of kernel memory; failures are handled.
    let (ip, sp, bp) = unsafe {
        match (
            bpf_probe_read_kernel(regs.add(PT_REGS_IP)),
            bpf_probe_read_kernel(regs.add(PT_REGS_SP)),
            bpf_probe_read_kernel(regs.add(PT_REGS_BP)),
        ) {
            (Ok(ip), Ok(sp), Ok(bp)) => (ip, sp, bp),
            _ => return false,
        }
    };
    // Copy in 4 KiB chunks until `want` or the first unreadable chunk: the stack's mapping
    // ends somewhere above sp (the top of the main thread's stack is close), and a read that
    // crosses its end fails whole.
    let want = if want > MAX_STACK_COPY {
        MAX_STACK_COPY
    } else {
        want
    };
    let mut len = 0usize;
    for chunk in 0..(MAX_STACK_COPY / STACK_CHUNK) {
        let start = chunk * STACK_CHUNK;
        if start >= want || start + STACK_CHUNK > MAX_STACK_COPY {
            break;
        }
        let src = (sp as usize + start) as *const u8;
        // SAFETY: reading user memory into our buffer, within its bounds (checked above).
        if unsafe { bpf_probe_read_user_buf(src, &mut buf.data[start..start + STACK_CHUNK]) }
            .is_err()
        {
            break;
        }
        len = start + STACK_CHUNK;
    }
    // Then the part of the last chunk that is still mapped, in halving pieces: the outermost
    // frames (main, the thread start) live right below the end of the mapping.
    let mut piece = STACK_CHUNK / 2;
    while piece >= 64 {
        if len + piece <= want && len + piece <= MAX_STACK_COPY {
            let src = (sp as usize + len) as *const u8;
            // SAFETY: as above, within the buffer.
            if unsafe { bpf_probe_read_user_buf(src, &mut buf.data[len..len + piece]) }.is_ok() {
                len += piece;
            }
        }
        piece /= 2;
    }
    if len == 0 {
        count_drop(drop::USER_STACK);
        return false;
    }
    buf.header = UserStackHeader {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        ip,
        sp,
        bp,
        pid,
        tid,
        len: len as u32,
        _reserved: 0,
    };
    let total = size_of::<UserStackHeader>() + len;
    if total > size_of::<UserStackCopy>() {
        return false;
    }
    // SAFETY: `total` bytes of `buf` are initialised (header, then `len` copied bytes).
    let bytes =
        unsafe { core::slice::from_raw_parts((buf as *const UserStackCopy).cast::<u8>(), total) };
    if EVENTS.output::<[u8]>(bytes, wakeup_flags()).is_err() {
        count_drop(drop::RINGBUF_FULL);
        return false;
    }
    true
}

/// An event with the common fields filled in; the caller sets the rest.
#[inline(always)]
fn new_event(kind: u32, pid: u32, tid: u32) -> Event {
    Event {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        seq: next_seq(),
        arg0: 0,
        arg1: 0,
        kind,
        // SAFETY: helper without preconditions.
        cpu: unsafe { bpf_get_smp_processor_id() },
        pid,
        tid,
        kernel_stack_id: NO_STACK,
        user_stack_id: NO_STACK,
        syscall: NO_SYSCALL,
        aux: 0,
        comm: [0; 16],
    }
}

/// Wake the agent only once a batch has accumulated (it also drains on a short timer). Waking
/// it per event makes it preempt the very threads it watches, whose switch-outs are events that
/// wake it again: a feedback loop of tens of thousands of switches per second.
const WAKEUP_BYTES: u64 = 128 * 1024;
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

#[inline(always)]
fn wakeup_flags() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA) >= WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

#[inline(always)]
fn submit(event: &Event) {
    match EVENTS.reserve::<Event>(0) {
        Some(mut entry) => {
            entry.write(*event);
            entry.submit(wakeup_flags());
        }
        None => count_drop(drop::RINGBUF_FULL),
    }
}

#[tracepoint]
pub fn sched_switch(ctx: TracePointContext) -> u32 {
    let _ = try_sched_switch(&ctx);
    0
}

fn try_sched_switch(ctx: &TracePointContext) -> Result<(), i32> {
    let offsets = OFFSETS.load();
    // At sched_switch `current` is still the task being switched out.
    let (tgid, tid) = current_ids();
    if is_followed_pid(tgid) {
        remember_thread(tgid, tid);
        let prev_state: i64 = unsafe { ctx.read_at(offsets.switch_prev_state as usize)? };
        let syscall = thread_syscall(tid);
        let (kernel, user, copied) = stacks(ctx, tgid, tid, syscall, 0);
        let mut event = new_event(kind::SWITCH_OUT, tgid, tid);
        event.arg0 = prev_state as u64;
        event.arg1 = if copied { USER_STACK_COPIED } else { 0 };
        (event.kernel_stack_id, event.user_stack_id) = (kernel, user);
        event.syscall = syscall;
        event.comm = bpf_get_current_comm().unwrap_or_default();
        submit(&event);
    }
    let next_tid: i32 = unsafe { ctx.read_at(offsets.switch_next_pid as usize)? };
    if let Some(next_tgid) = followed_tid(next_tid as u32) {
        submit(&new_event(kind::SWITCH_IN, next_tgid, next_tid as u32));
    }
    Ok(())
}

#[tracepoint]
pub fn sched_waking(ctx: TracePointContext) -> u32 {
    let _ = try_wakeup(&ctx, kind::WAKING);
    0
}

#[tracepoint]
pub fn sched_wakeup(ctx: TracePointContext) -> u32 {
    let _ = try_wakeup(&ctx, kind::WAKEUP);
    0
}

fn try_wakeup(ctx: &TracePointContext, kind: u32) -> Result<(), i32> {
    let offsets = OFFSETS.load();
    let woken: i32 = unsafe { ctx.read_at(offsets.wakeup_pid as usize)? };
    let Some(woken_tgid) = followed_tid(woken as u32) else {
        return Ok(());
    };
    let (waker_tgid, waker_tid) = current_ids();
    let target_cpu: i32 = unsafe { ctx.read_at(offsets.wakeup_target_cpu as usize) }.unwrap_or(-1);
    let mut event = new_event(kind, woken_tgid, woken as u32);
    event.arg0 = ((waker_tgid as u64) << 32) | waker_tid as u64;
    event.aux = target_cpu as u32;
    event.comm = bpf_get_current_comm().unwrap_or_default();
    if kind == kind::WAKING && waker_tgid != 0 {
        // sched_waking runs in the waker's context: its stacks say what released the sleeper
        // (the code that unlocked the mutex, wrote to the pipe, ...). A followed waker's user
        // stack is copied for full unwinding (libc's wrappers keep no frame pointer).
        event.kernel_stack_id = stack_id(ctx, 0, drop::KERNEL_STACK);
        if is_followed_pid(waker_tgid) && copy_user_stack(waker_tgid, waker_tid, 2) {
            event.arg1 = USER_STACK_COPIED;
        } else {
            event.user_stack_id = stack_id(ctx, BPF_F_USER_STACK as u64, drop::USER_STACK);
        }
    }
    submit(&event);
    Ok(())
}

#[tracepoint]
pub fn sys_enter(ctx: TracePointContext) -> u32 {
    let _ = try_sys_enter(&ctx);
    0
}

fn try_sys_enter(ctx: &TracePointContext) -> Result<(), i32> {
    let (tgid, tid) = current_ids();
    if !is_followed_pid(tgid) {
        return Ok(());
    }
    let offsets = OFFSETS.load();
    let nr: i64 = unsafe { ctx.read_at(offsets.sys_enter_id as usize)? };
    set_thread_syscall(tid, nr as i32);
    // exit (60) and exit_group (231) never return: this is the only place to see the status.
    if nr == 60 || nr == 231 {
        let status: i64 = unsafe { ctx.read_at(offsets.sys_enter_args as usize) }.unwrap_or(0);
        let mut event = new_event(kind::EXIT_CALL, tgid, tid);
        event.syscall = nr as i32;
        event.arg0 = status as u64;
        submit(&event);
        return Ok(());
    }
    if is_wait_point(nr) {
        remember_thread(tgid, tid);
        let mut event = new_event(kind::WAIT_ENTER, tgid, tid);
        event.syscall = nr as i32;
        submit(&event);
    }
    Ok(())
}

#[tracepoint]
pub fn sys_exit(ctx: TracePointContext) -> u32 {
    let _ = try_sys_exit(&ctx);
    0
}

fn try_sys_exit(ctx: &TracePointContext) -> Result<(), i32> {
    let (tgid, tid) = current_ids();
    if !is_followed_pid(tgid) {
        return Ok(());
    }
    let offsets = OFFSETS.load();
    let nr: i64 = unsafe { ctx.read_at(offsets.sys_exit_id as usize)? };
    set_thread_syscall(tid, NO_SYSCALL);
    if is_wait_point(nr) {
        let ret: i64 = unsafe { ctx.read_at(offsets.sys_exit_ret as usize) }.unwrap_or(0);
        let mut event = new_event(kind::WAIT_EXIT, tgid, tid);
        event.syscall = nr as i32;
        event.arg0 = ret as u64;
        submit(&event);
    }
    Ok(())
}

#[perf_event]
pub fn cpu_sample(ctx: PerfEventContext) -> u32 {
    let (tgid, tid) = current_ids();
    if is_followed_pid(tgid) {
        let syscall = thread_syscall(tid);
        let (kernel, user, copied) = stacks(&ctx, tgid, tid, syscall, 1);
        let mut event = new_event(kind::SAMPLE, tgid, tid);
        event.arg1 = if copied { USER_STACK_COPIED } else { 0 };
        (event.kernel_stack_id, event.user_stack_id) = (kernel, user);
        event.syscall = syscall;
        submit(&event);
    }
    0
}

#[tracepoint]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    let _ = try_fork(&ctx);
    0
}

fn try_fork(ctx: &TracePointContext) -> Result<(), i32> {
    let (tgid, tid) = current_ids();
    if !is_followed_pid(tgid) {
        return Ok(());
    }
    let child: i32 = unsafe { ctx.read_at(OFFSETS.load().fork_child_pid as usize)? };
    let child = child as u32;
    // A thread or a new process: follow it either way (see FOLLOWED_PIDS), before it first runs,
    // so none of a new worker's events are lost.
    if FOLLOWED_PIDS.insert(&child, &1, 0).is_err()
        || FOLLOWED_TIDS.insert(&child, &tgid, 0).is_err()
    {
        count_drop(drop::FOLLOW_MAP_FULL);
    }
    debug!(ctx, "following {} (forked by {}/{})", child, tgid, tid);
    let mut event = new_event(kind::FORK, tgid, tid);
    event.arg0 = child as u64;
    event.comm = bpf_get_current_comm().unwrap_or_default();
    submit(&event);
    Ok(())
}

#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let _ = try_exit(&ctx);
    0
}

fn try_exit(ctx: &TracePointContext) -> Result<(), i32> {
    let (tgid, tid) = current_ids();
    if !is_followed_pid(tgid) {
        return Ok(());
    }
    let offsets = OFFSETS.load();
    let group_dead = if offsets.exit_group_dead == FIELD_ABSENT {
        0
    } else {
        let dead: u8 = unsafe { ctx.read_at(offsets.exit_group_dead as usize) }.unwrap_or(0);
        dead as u32
    };
    let _ = FOLLOWED_TIDS.remove(&tid);
    let _ = THREAD_SYSCALL.remove(&tid);
    if tid != tgid {
        // The key fork added for this thread, in case it had been a process.
        let _ = FOLLOWED_PIDS.remove(&tid);
    }
    let mut event = new_event(kind::EXIT, tgid, tid);
    event.aux = group_dead;
    event.comm = bpf_get_current_comm().unwrap_or_default();
    submit(&event);
    if group_dead == 1 {
        // Last thread of the group: the process is gone. Its tgid can be reused by an unrelated
        // process, which must not be followed.
        let _ = FOLLOWED_PIDS.remove(&tgid);
    }
    Ok(())
}

#[tracepoint]
pub fn signal_generate(ctx: TracePointContext) -> u32 {
    let _ = try_signal(&ctx);
    0
}

/// A signal for a followed thread: what killed a worker, when it did not exit by itself.
fn try_signal(ctx: &TracePointContext) -> Result<(), i32> {
    let offsets = OFFSETS.load();
    if offsets.signal_pid == FIELD_ABSENT {
        return Ok(());
    }
    let target: i32 = unsafe { ctx.read_at(offsets.signal_pid as usize)? };
    let Some(target_tgid) = followed_tid(target as u32) else {
        return Ok(());
    };
    let sig: i32 = unsafe { ctx.read_at(offsets.signal_sig as usize)? };
    let result: i32 = unsafe { ctx.read_at(offsets.signal_result as usize) }.unwrap_or(0);
    let mut event = new_event(kind::SIGNAL, target_tgid, target as u32);
    event.arg0 = sig as u32 as u64;
    event.aux = result as u32;
    submit(&event);
    Ok(())
}

#[tracepoint]
pub fn sched_process_exec(ctx: TracePointContext) -> u32 {
    let _ = try_exec(&ctx);
    0
}

fn try_exec(ctx: &TracePointContext) -> Result<(), i32> {
    let (tgid, tid) = current_ids();
    if !is_followed_pid(tgid) {
        return Ok(());
    }
    let old: i32 = unsafe { ctx.read_at(OFFSETS.load().exec_old_pid as usize)? };
    let mut event = new_event(kind::EXEC, tgid, tid);
    event.arg0 = old as u32 as u64;
    event.comm = bpf_get_current_comm().unwrap_or_default();
    submit(&event);
    Ok(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
