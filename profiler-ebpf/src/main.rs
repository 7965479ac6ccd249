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
//! - Built twice: as is for Linux 5.17+, and with feature `compat` for older kernels (see
//!   `compat` below), which differ only in the helpers those kernels lack.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext as _, Global,
    bindings::BPF_F_USER_STACK,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_kernel_str_bytes, bpf_probe_read_user, bpf_probe_read_user_buf,
    },
    macros::{fentry, fexit, map, perf_event, raw_tracepoint, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf, StackTrace},
    programs::{
        FEntryContext, FExitContext, PerfEventContext, RawTracePointContext, TracePointContext,
        tracing::StackIdContext,
    },
};
use aya_log_ebpf::debug;
use profiler_common::{
    COMPAT_PY_FRAMES, COMPAT_PY_THREADS, Event, FIELD_ABSENT, GIL_HELD_BY_OTHER, GlobState,
    LATE_STACKS_PENDING, LastStack, MATCH_TEXT_BYTES, MAX_MATCH_CGROUPS, MAX_MATCH_PATTERNS,
    MAX_PY_FRAMES, MAX_STACK_COPY, MAX_SYSCALL_NR, MatchPattern, NO_STACK, NO_SYSCALL,
    PY_FRAME_ENTRY, PY_FRAME_OWNER_NOT_CODE, PY_STACK_COPIED, PY_STACK_HEADER_SIZE, PyFrame,
    PyProcess, PyStackCopy, PyStackHeader, STACK_REPEAT_PROBE, STACK_REPEATED, SWITCH_IN_UNTRACED,
    TaskOffsets, TracepointOffsets, USER_STACK_COPIED, UserStackCopy, UserStackHeader, drop,
    is_runtime_worker, kind, kstack_stat, matching, syscall_nr::FUTEX, wait_mark,
};

#[unsafe(no_mangle)]
static OFFSETS: Global<TracepointOffsets> = Global::new(TracepointOffsets::UNSET);

/// `task_struct` field offsets from the kernel's BTF, for the raw scheduler tracepoints (whose
/// arguments are task pointers). Unused when the agent attached the classic ones instead.
#[unsafe(no_mangle)]
static TASK: Global<TaskOffsets> = Global::new(TaskOffsets::UNSET);

/// Bytes of user stack to copy at each sample and switch-out outside a wait point (0: none,
/// use the kernel's frame-pointer walk instead). Set by the agent, at most MAX_STACK_COPY.
#[unsafe(no_mangle)]
static STACK_COPY_BYTES: Global<u32> = Global::new(0);

/// Scratch records for user-stack copies, four per CPU (slot 0: switch-out, 1: sample,
/// 2: waker, 3: late capture at syscall exit, which may be preempted), so a program that
/// interrupts or preempts another on the same CPU never shares a buffer with it. The agent
/// sizes it to 4 x CPUs at load.
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

/// Wait-point syscall each followed thread is in (tid -> nr, with NOT_A_WAIT for a sleep), set
/// and cleared by the wait points' own tracepoints: a wake-up (which runs in the waker's
/// context) tells from it whether the sleeper idled in its loop's wait. Only wait points are
/// tracked: what any other syscall a thread is in is read from its saved registers
/// (`current_syscall`), so no program runs for the syscalls of the machine.
#[map]
static THREAD_SYSCALL: HashMap<u32, i32> = HashMap::with_max_entries(65536, 0);

/// When each followed thread last went to sleep outside an idle wait (tid -> ns), so that a
/// wake-up knows how long its sleeper has been blocked.
#[map]
static BLOCKED_SINCE: HashMap<u32, u64> = HashMap::with_max_entries(65536, 0);

/// A sleeper blocked for less than this (ns) has its waker's stacks skipped: such a wait is too
/// short to matter for a stall (the agent sets it to a fraction of the threshold, see
/// `WAKER_STACK_FRACTION` in record.rs). 0: always take them.
#[unsafe(no_mangle)]
static WAKER_MIN_BLOCKED_NS: Global<u64> = Global::new(0);

/// Late capture (0: off, stacks at switch-out): a thread blocked in a syscall gets only its
/// kernel stack at switch-out; its user stack and Python frames are taken by `sys_exit_late`
/// when it leaves the syscall, if it was off-CPU at least this long (ns). Set by the agent
/// (threshold / LATE_STACK_FRACTION) when it attached `sys_exit_late`.
#[unsafe(no_mangle)]
static LATE_MIN_NS: Global<u64> = Global::new(0);

/// Threads switched out blocked in a syscall whose user stacks wait for its exit (tid -> when
/// the first switch-out in that syscall was; 0: none pending). Entries stay (set to 0) until
/// the thread exits: a write in place costs less than a delete at every syscall exit.
#[map]
static LATE_SINCE: HashMap<u32, u64> = HashMap::with_max_entries(65536, 0);

/// 1: stacks at preemptions too, and wakers' stacks for any wait (the behaviour before late
/// capture; `STALLSCOPE_EAGER_STACKS=1`, for measuring what it saves).
#[unsafe(no_mangle)]
static EAGER_STACKS: Global<u32> = Global::new(0);

/// Wait-point syscalls (nr -> a `wait_mark`), filled by the agent from its table of runtimes.
#[map]
static WAIT_POINTS: Array<u32> = Array::with_max_entries(MAX_SYSCALL_NR, 0);

/// Each thread's last user-stack copy (tid -> registers and a checksum of the top of its
/// stack): a thread that blocks again where it blocked before (a ping-pong, a worker parked
/// in the same wait) is sent as "repeated" instead of 32 KiB again.
#[map]
static LAST_STACKS: HashMap<u32, LastStack> = HashMap::with_max_entries(65536, 0);

/// Followed processes that run CPython (tgid -> where its state is and its version's layout).
#[map]
static PY_PROCS: HashMap<u32, PyProcess> = HashMap::with_max_entries(4096, 0);

/// Thread state of each Python thread found so far (tid -> PyThreadState*), checked on use.
#[map]
static PY_THREADS: HashMap<u32, u64> = HashMap::with_max_entries(65536, 0);

/// The reverse (PyThreadState* -> tid), to name the thread that holds the GIL.
#[map]
static PY_TSTATE_TIDS: HashMap<u64, u32> = HashMap::with_max_entries(65536, 0);

/// Python stacks are assembled here (slot 0: switch-out, 1: sample, 2: late capture).
#[map]
static PY_SCRATCH: PerCpuArray<PyStackCopy> = PerCpuArray::with_max_entries(3, 0);

/// Offset of `thread.fsbase` in `struct task_struct` (from the kernel's BTF), or 0 when unknown:
/// before 3.11 CPython names a thread state's thread only by pthread_self(), which is fs_base.
#[unsafe(no_mangle)]
static TASK_FSBASE_OFFSET: Global<u32> = Global::new(0);

/// `stallscope watch`: what new processes are followed by themselves (bits of
/// `profiler_common::matching`; 0, as for `record`, follows only the agent's choices and their
/// descendants).
#[unsafe(no_mangle)]
static MATCH_ON: Global<u32> = Global::new(0);

/// Offset of the `__data_loc` of the exec'd path in sched_process_exec's record (FIELD_ABSENT:
/// no `--exe` match in the kernel).
#[unsafe(no_mangle)]
static EXEC_FILENAME_OFFSET: Global<u32> = Global::new(FIELD_ABSENT);

/// `--comm` / `--exe` globs.
#[map]
static MATCH_PATTERNS: Array<MatchPattern> = Array::with_max_entries(MAX_MATCH_PATTERNS, 0);

/// Cgroup v2 ids whose processes are followed (`--cgroup`, descendants listed by the agent).
#[map]
static MATCH_CGROUPS: HashMap<u64, u32> = HashMap::with_max_entries(MAX_MATCH_CGROUPS, 0);

/// A glob match's state (too big for the 512-byte stack).
#[map]
static GLOB_SCRATCH: PerCpuArray<GlobState> = PerCpuArray::with_max_entries(1, 0);

#[map]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(drop::COUNT, 0);

#[map]
static SEQ: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Offset of `sched_info.last_arrival` in `struct task_struct` (from the kernel's BTF; 0:
/// unknown): when the scheduler last put the task on a CPU, in that runqueue's clock. It is
/// set at every switch-in, traced or not.
#[unsafe(no_mangle)]
static TASK_ARRIVAL_OFFSET: Global<u32> = Global::new(0);

/// Per CPU: the followed thread whose switch-in on this CPU was traced and which has not been
/// switched out since (0: none), and how `sched_info.last_arrival` maps to CLOCK_MONOTONIC
/// here. A kernel can run a task whose tracepoints never fire (a hidden supervisor's threads):
/// the switch from it to our thread then reports nothing, and only this says the thread is
/// running (see `check_switched_in`).
#[repr(C)]
#[derive(Clone, Copy)]
struct OnCpu {
    tid: u32,
    /// `ON_CPU_LEARN`: measure the clock offset at the thread's next event (its switch-in was
    /// traced and stamped `in_ts`); `ON_CPU_OFFSET`: `offset` holds a measurement.
    flags: u32,
    in_ts: u64,
    offset: i64,
}

const ON_CPU_LEARN: u32 = 1;
const ON_CPU_OFFSET: u32 = 2;

#[map]
static ON_CPU: PerCpuArray<OnCpu> = PerCpuArray::with_max_entries(1, 0);

/// A per-CPU word that values pass through to forget what the verifier knows of them (see
/// `opaque`).
#[map]
static OPAQUE: PerCpuArray<i64> = PerCpuArray::with_max_entries(1, 0);

/// `value`, as a number the verifier knows nothing about. A value computed on several branches
/// (the syscall from the saved registers: none, a wait, a sleep) keeps those branches apart
/// in the verifier's search through everything that follows; through a map it is one unknown
/// number again, as a map lookup's result always was, and the programs stay verifiable.
#[inline(always)]
fn opaque(value: i64) -> i64 {
    forget(value).unwrap_or(value)
}

/// A pointer's address as a number the verifier knows nothing about (see `opaque`), for
/// arithmetic it forbids on pointers; None (never the pointer itself) if the slot is missing.
#[inline(always)]
fn address<T>(pointer: *const T) -> Option<i64> {
    forget(pointer as i64)
}

/// `value` written to the `OPAQUE` slot and read back: what the verifier knew of it is gone.
#[inline(always)]
fn forget(value: i64) -> Option<i64> {
    let slot = OPAQUE.get_ptr_mut(0)?;
    // SAFETY: per-CPU slot, see count_drop; written then read back at once.
    unsafe {
        core::ptr::write_volatile(slot, value);
        Some(core::ptr::read_volatile(slot))
    }
}

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

/// The syscall's `wait_mark`: not a wait point, one for every thread, or one for a runtime's
/// workers only.
#[inline(always)]
fn wait_point_mark(nr: i64) -> u32 {
    if nr >= 0 && nr < MAX_SYSCALL_NR as i64 {
        WAIT_POINTS
            .get(nr as u32)
            .copied()
            .unwrap_or(wait_mark::NONE)
    } else {
        wait_mark::NONE
    }
}

#[inline(always)]
fn is_wait_point(nr: i64) -> bool {
    wait_point_mark(nr) != wait_mark::NONE
}

/// A wait for work: a thread there is idle, so its stack is not copied. `EVERY_THREAD` marks
/// one for every thread; `RUNTIME_ONLY` one for a runtime's own workers, told by name the same
/// way the agent tells them (`is_runtime_worker`; for anyone else a futex is a lock wait whose
/// stack matters). A tokio worker parks and unparks thousands of times a second: copying
/// its stack each time cost a loaded server a fifth of its throughput.
#[inline(always)]
fn is_idle_wait(nr: i64) -> bool {
    match wait_point_mark(nr) {
        wait_mark::EVERY_THREAD => true,
        wait_mark::RUNTIME_ONLY => {
            bpf_get_current_comm().is_ok_and(|comm| is_runtime_worker(&comm))
        }
        _ => false,
    }
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

/// Where a kernel stack is taken: the hooks' own frames differ, and so how many of them the
/// walk skips (see `kstack_skip`).
mod kstack_site {
    pub const SWITCH_OUT: u32 = 0;
    pub const WAKER: u32 = 1;
}

/// How many innermost frames a kernel stack walk at `site` skips: our programs' own (the
/// sched_switch program and its switch-out subprogram; the sched_waking program). Their
/// return addresses differ wherever the compiler copied the call, which would make one place
/// give several stack ids; the agent drops these frames anyway (`without_probe_frames`), so
/// skipping one too many (a `bpf_trace_run`) loses nothing of the target's.
#[inline(always)]
fn kstack_skip(site: u32) -> u64 {
    if site == kstack_site::WAKER { 1 } else { 2 }
}

/// A place a followed process's kernel stack was taken: its syscall (`orig_ax`, -1 outside
/// one), where its user code made it (the saved user ip), and where the syscall's handler
/// returns to in `do_syscall_64` and how far above the hook that return address sits (see
/// `kstack_anchor`). The same syscall from the same user instruction through frames adding
/// up to the same size has, but for a rare coincidence, the same kernel stack (checked, see
/// `kernel_stack_id`).
#[repr(C)]
#[derive(Clone, Copy)]
struct KstackPlace {
    tgid: u32,
    site: u32,
    syscall: u64,
    user_ip: u64,
    anchor: u64,
    anchor_offset: u64,
}

/// How much of the task stack above a raw tracepoint's arguments is searched for the return
/// into `do_syscall_64`: deeper paths are walked every time.
const KSTACK_WINDOW: usize = 2048;
const KSTACK_WINDOW_WORDS: usize = KSTACK_WINDOW / 8;

#[map]
static KSTACK_SCRATCH: PerCpuArray<[u64; KSTACK_WINDOW_WORDS]> =
    PerCpuArray::with_max_entries(1, 0);

/// `do_syscall_64`'s code, from /proc/kallsyms (both 0: unknown, or reuse off by
/// `STALLSCOPE_KSTACK_REUSE=0`: every kernel stack walked).
#[unsafe(no_mangle)]
static SYSCALL_TEXT_START: Global<u64> = Global::new(0);
#[unsafe(no_mangle)]
static SYSCALL_TEXT_END: Global<u64> = Global::new(0);

/// The stack id last taken at a place, and how often it was reused since (`KSTACK_UNSTABLE`:
/// a check found another stack there, so it is walked every time).
#[repr(C)]
#[derive(Clone, Copy)]
struct KstackSeen {
    id: i32,
    uses: u32,
}

const KSTACK_UNSTABLE: u32 = u32::MAX;

/// Kernel stacks reused at switch-outs and wakers' wake-ups. Walking ~20 kernel frames
/// (`bpf_get_stackid`, ORC) is ~2 µs, two thirds of a followed switch-out's cost, and a
/// thread blocks in the same few places again and again. Stack ids stay valid: STACKS never
/// evicts (no `BPF_F_REUSE_STACKID`).
#[map]
static KSTACK_REUSE: LruHashMap<KstackPlace, KstackSeen> = LruHashMap::with_max_entries(8192, 0);

#[map]
static KSTACK_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(kstack_stat::COUNT, 0);

#[inline(always)]
fn count_kstack(index: u32) {
    if let Some(counter) = KSTACK_STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, see count_drop.
        unsafe { *counter += 1 }
    }
}

/// The place the current task's kernel stack would be taken at, None when the hook's
/// arguments are not on the task's own stack (a classic tracepoint's record, a waker in an
/// interrupt), outside a 64-bit syscall, or the stack is unreadable.
#[inline(always)]
fn kstack_place<C: StackIdContext>(ctx: &C, tgid: u32, site: u32) -> Option<KstackPlace> {
    let regs = compat::user_regs();
    if regs.is_null() {
        return None;
    }
    // A raw tracepoint's arguments are an array on its caller's frame, on the task's stack,
    // whose top holds the saved user registers.
    let args = ctx.as_ptr() as *const u64;
    let depth = address(regs)? - address(args)?;
    if !(64..16384).contains(&depth) {
        return None;
    }
    // SAFETY: probe read of kernel memory; failure handled. orig_ax and ip are adjacent.
    let saved: [u64; 2] =
        unsafe { bpf_probe_read_kernel(regs.add(PT_REGS_ORIG_AX).cast()) }.ok()?;
    let (anchor_offset, anchor) = kstack_anchor(args, depth as u64)?;
    Some(KstackPlace {
        tgid,
        site,
        syscall: saved[0],
        user_ip: saved[1],
        anchor,
        anchor_offset,
    })
}

/// The first return address into `do_syscall_64` above `args` (its word index, and itself),
/// never reading past the saved registers `depth` bytes up. Why not simply the depth: with
/// randomize_kstack_offset each syscall's frames start up to 1 KiB lower, below the syscall
/// entry's frame; the frames from the hook up to that return address do not move relative
/// to each other.
#[inline(always)]
fn kstack_anchor(args: *const u64, depth: u64) -> Option<(u64, u64)> {
    let (start, end) = (SYSCALL_TEXT_START.load(), SYSCALL_TEXT_END.load());
    if start == 0 {
        return None;
    }
    let scratch = KSTACK_SCRATCH.get_ptr_mut(0)?;
    let len = depth.min(KSTACK_WINDOW as u64) & !7;
    if len == 0 || len > KSTACK_WINDOW as u64 {
        return None;
    }
    // SAFETY: probe read of at most KSTACK_WINDOW bytes (bounded above) into the per-CPU
    // scratch of that size; failure handled.
    let read = unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_kernel(scratch.cast(), len as u32, args.cast())
    };
    if read != 0 {
        return None;
    }
    // SAFETY: per-CPU scratch, filled above.
    let words = unsafe { &*scratch };
    for index in 0..KSTACK_WINDOW_WORDS {
        if (index as u64) * 8 >= len {
            break;
        }
        let word = words[index];
        if word > start && word < end {
            return Some((index as u64, word));
        }
    }
    None
}

/// Whether the `uses`-th reuse of a place walks the stack again to check it: the first three,
/// then one in 16.
#[inline(always)]
fn kstack_check_due(uses: u32) -> bool {
    uses <= 3 || uses % 16 == 0
}

/// The current thread's kernel stack id at a switch-out or a waker's wake-up, reused from the
/// last walk at the same place (see `KstackPlace`) when there was one. Some reuses walk it
/// again (`kstack_check_due`): a place where a check finds another stack is walked every time
/// from then on; between two checks, an event whose path differs gets the place's stack.
#[inline(always)]
fn kernel_stack_id<C: StackIdContext>(ctx: &C, tgid: u32, site: u32) -> i32 {
    let Some(place) = kstack_place(ctx, tgid, site) else {
        return walk_kernel_stack(ctx, site, kstack_stat::TAKEN);
    };
    let Some(seen) = KSTACK_REUSE.get_ptr_mut(&place) else {
        let id = walk_kernel_stack(ctx, site, kstack_stat::TAKEN);
        if id != NO_STACK {
            let _ = KSTACK_REUSE.insert(&place, &KstackSeen { id, uses: 0 }, 0);
        }
        return id;
    };
    // SAFETY: pointer into the map's value, valid for this program run.
    let seen = unsafe { &mut *seen };
    if seen.uses == KSTACK_UNSTABLE {
        return walk_kernel_stack(ctx, site, kstack_stat::TAKEN);
    }
    // Kept below the mark, and past the first checks, however long it runs.
    seen.uses = if seen.uses >= 1 << 30 {
        16
    } else {
        seen.uses + 1
    };
    if !kstack_check_due(seen.uses) {
        count_kstack(kstack_stat::REUSED);
        return seen.id;
    }
    let id = walk_kernel_stack(ctx, site, kstack_stat::VERIFIED);
    if id != seen.id {
        seen.uses = KSTACK_UNSTABLE;
        count_kstack(kstack_stat::DIFFERED);
    }
    id
}

/// Walks the kernel stack at `site`, counted as `why` (`kstack_stat`).
#[inline(always)]
fn walk_kernel_stack<C: StackIdContext>(ctx: &C, site: u32, why: u32) -> i32 {
    count_kstack(why);
    stack_id(ctx, kstack_skip(site), drop::KERNEL_STACK)
}

/// The current task's `sched_info.last_arrival` (runqueue clock; 0 when unknown).
#[inline(always)]
fn current_arrival() -> u64 {
    let offset = TASK_ARRIVAL_OFFSET.load();
    if offset == 0 {
        return 0;
    }
    let task = compat::current_task();
    // SAFETY: kernel probe read, failure handled.
    unsafe { bpf_probe_read_kernel(task.add(offset as usize).cast::<u64>()) }.unwrap_or(0)
}

/// Run first by every program that reports an event in a followed thread's own context (a
/// switch-out, a sample, a wait point): the thread is on this CPU now. When its switch-in here
/// was not traced, a SWITCH_IN marked `SWITCH_IN_UNTRACED` goes first, with when it really
/// came in; after a traced one, the first event measures the clock offset that needs. Costs a
/// per-CPU slot for followed threads only: nothing is added to other threads' switches.
#[inline(always)]
fn check_switched_in(tgid: u32, tid: u32) {
    let Some(slot) = ON_CPU.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot, see count_drop.
    let slot = unsafe { &mut *slot };
    if slot.tid == tid {
        if slot.flags & ON_CPU_LEARN != 0 {
            let arrival = current_arrival();
            if arrival != 0 {
                slot.offset = slot.in_ts as i64 - arrival as i64;
                slot.flags = ON_CPU_OFFSET;
            } else {
                slot.flags &= !ON_CPU_LEARN;
            }
        }
        return;
    }
    let mut event = new_event(kind::SWITCH_IN, tgid, tid);
    let arrival = current_arrival();
    if arrival != 0 && slot.flags & ON_CPU_OFFSET != 0 {
        let at = (arrival as i64).wrapping_add(slot.offset) as u64;
        // Never later than now, whatever the clocks did since the offset was measured.
        event.arg0 = if at > event.ts_ns { event.ts_ns } else { at };
    }
    event.arg1 = SWITCH_IN_UNTRACED;
    submit(&event);
    slot.tid = tid;
    slot.flags &= !ON_CPU_LEARN;
}

/// A traced switch-in of `tid` on this CPU, stamped `ts`; or (`tid` 0) the switch-out of the
/// thread that was on it.
#[inline(always)]
fn switched_in(tid: u32, ts: u64) {
    if let Some(slot) = ON_CPU.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, see count_drop.
        unsafe {
            (*slot).tid = tid;
            (*slot).in_ts = ts;
            (*slot).flags =
                ((*slot).flags & ON_CPU_OFFSET) | if tid != 0 { ON_CPU_LEARN } else { 0 };
        }
    }
}

/// Offsets in x86-64 `struct pt_regs`, in u64 words (arch/x86/include/asm/ptrace.h).
const PT_REGS_BP: usize = 4;
const PT_REGS_IP: usize = 16;
const PT_REGS_SP: usize = 19;
const PT_REGS_SI: usize = 13;
const PT_REGS_DI: usize = 14;
/// The syscall number saved at kernel entry; -1 for an interrupt or exception (the entry code
/// writes -1 there: "no syscall to restart").
const PT_REGS_ORIG_AX: usize = 15;
const STACK_CHUNK: usize = 4096;

/// The syscall the current thread is in (NO_SYSCALL when it entered the kernel by an interrupt
/// or exception), from the user registers saved at kernel entry, with NOT_A_WAIT on a wait
/// point used as a plain sleep. Read when needed instead of tracking every syscall: a
/// `raw_syscalls` program runs for every syscall of every process on the machine.
#[inline(always)]
fn current_syscall() -> i32 {
    opaque(i64::from(read_current_syscall())) as i32
}

#[inline(always)]
fn read_current_syscall() -> i32 {
    let regs = compat::user_regs();
    if regs.is_null() {
        return NO_SYSCALL;
    }
    // SAFETY: probe read of kernel memory; failure handled.
    let nr = unsafe { bpf_probe_read_kernel(regs.add(PT_REGS_ORIG_AX)) }.unwrap_or(u64::MAX) as i64;
    if nr < 0 || nr > i32::MAX as i64 {
        return NO_SYSCALL;
    }
    if is_wait_point(nr)
        && syscall_waits_on_no_fds(nr, |index| {
            let word = if index == 0 { PT_REGS_DI } else { PT_REGS_SI };
            // SAFETY: as above.
            unsafe { bpf_probe_read_kernel(regs.add(word)) }.unwrap_or(1)
        })
    {
        return nr as i32 | NOT_A_WAIT;
    }
    nr as i32
}

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
    // Slot 0 is a switch-out's: its kernel stack is one of few places (a sample's is not).
    let kernel = if slot == 0 {
        kernel_stack_id(ctx, pid, kstack_site::SWITCH_OUT)
    } else {
        stack_id(ctx, 0, drop::KERNEL_STACK)
    };
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
    let Some(buf) = STACK_SCRATCH.get_ptr_mut(cpu * 4 + slot) else {
        return false;
    };
    // SAFETY: the map value lives for this program run and no other program uses this slot
    // on this CPU meanwhile (see STACK_SCRATCH).
    let buf = unsafe { &mut *buf };
    // The user registers saved at kernel entry: valid both at sched_switch and in a sample
    // that interrupted the kernel.
    let regs = compat::user_regs();
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
    // The top of the stack and the registers as at the last copy: the same stack, most likely
    // (the same call chain at the same depth), so the agent reuses the last unwind.
    let mut sum = 0u64;
    // SAFETY: reading user memory into our buffer, within its bounds.
    if unsafe { bpf_probe_read_user_buf(sp as *const u8, &mut buf.data[..STACK_REPEAT_PROBE]) }
        .is_ok()
    {
        for i in 0..(STACK_REPEAT_PROBE / 8) {
            // SAFETY: i * 8 + 8 <= STACK_REPEAT_PROBE <= the buffer's length.
            let word =
                unsafe { core::ptr::read_unaligned(buf.data.as_ptr().add(i * 8).cast::<u64>()) };
            sum = sum.rotate_left(7) ^ word;
        }
    }
    let now = LastStack { ip, sp, bp, sum };
    // SAFETY: the value is copied out of the map.
    if sum != 0 && unsafe { LAST_STACKS.get(&tid) }.copied() == Some(now) {
        buf.header = UserStackHeader {
            ts_ns: unsafe { bpf_ktime_get_ns() },
            ip,
            sp,
            bp,
            pid,
            tid,
            len: 0,
            flags: STACK_REPEATED,
        };
        let bytes = unsafe {
            core::slice::from_raw_parts(
                (buf as *const UserStackCopy).cast::<u8>(),
                size_of::<UserStackHeader>(),
            )
        };
        if EVENTS.output::<[u8]>(bytes, wakeup_flags()).is_err() {
            count_drop(drop::RINGBUF_FULL);
            return false;
        }
        return true;
    }
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
        flags: 0,
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
    // Remembered only once sent: a repeat must refer to a copy the agent has.
    let _ = LAST_STACKS.insert(&tid, &now, 0);
    true
}

/// What the Python walk found for one event.
struct PythonStack {
    /// A Python stack record was sent for the event.
    sent: bool,
    /// The thread sleeps in a futex while another thread holds the GIL: that thread's tid (0
    /// when it was never seen running Python).
    gil_holder: Option<u32>,
}

const NO_PYTHON: PythonStack = PythonStack {
    sent: false,
    gil_holder: None,
};

/// Takes the current thread's stacks (and Python frames) for `event`, which lives in map
/// memory (`EVENT_SCRATCH`): what each capture found is written there as it is found, so no
/// register or stack slot carries it past the Python walk. The walk is a `bpf_loop` call, and
/// a verifier before 6.4 that must track a value's precision back across such a call gives up
/// and treats every number it knows as exact; with the captures' outcomes (copied or not, an
/// id or none, the state reported) still in registers, no two of its paths would then ever
/// look alike again, and Debian 12's 6.1 refused `sched_switch` as too complex.
#[inline(always)]
fn capture<C: StackIdContext>(ctx: &C, event: &mut Event, syscall: i32, slot: u32, gil: bool) {
    let (pid, tid) = (event.pid, event.tid);
    let (kernel, user, copied) = stacks(ctx, pid, tid, syscall, slot);
    event.kernel_stack_id = kernel;
    event.user_stack_id = user;
    if copied {
        event.arg1 |= USER_STACK_COPIED;
    }
    let python = python_stack(pid, tid, syscall, slot, gil);
    if python.sent {
        event.arg1 |= PY_STACK_COPIED;
    }
    if let Some(holder) = python.gil_holder {
        event.arg1 |= GIL_HELD_BY_OTHER;
        event.aux = holder;
    }
}

/// Events being assembled (slot 0: switch-out, 1: sample), see `capture`.
#[map]
static EVENT_SCRATCH: PerCpuArray<Event> = PerCpuArray::with_max_entries(2, 0);

/// Thread states looked at when a thread is not in the cache yet.
const MAX_PY_THREADS: usize = 128;
/// Shim frames skipped per walk on top of MAX_PY_FRAMES real ones.
const MAX_PY_SHIMS: usize = 32;
/// `_gil_runtime_state.last_holder` and `.locked`, the same in 3.9 to 3.13.
const GIL_LAST_HOLDER: u64 = 0x8;
const GIL_LOCKED: u64 = 0x10;

#[inline(always)]
fn read_user<T>(addr: u64) -> Option<T> {
    if addr == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_user copes with any address; failures are reported.
    unsafe { bpf_probe_read_user(addr as *const T) }.ok()
}

/// The current task's fs_base (= pthread_self() on x86-64 glibc), or 0 when unknown.
#[inline(always)]
fn current_fsbase() -> u64 {
    let offset = TASK_FSBASE_OFFSET.load();
    if offset == 0 {
        return 0;
    }
    let task = compat::current_task();
    // SAFETY: kernel probe read, failure handled.
    unsafe { bpf_probe_read_kernel(task.add(offset as usize).cast::<u64>()) }.unwrap_or(0)
}

/// State of the thread-list search, shared with its bpf_loop callback.
#[repr(C)]
struct FindThread {
    tstate: u64,
    key: u64,
    id_offset: u64,
    next_offset: u64,
    found: u64,
}

/// One step of the thread-list walk: bpf_loop keeps the verifier's work to one iteration, where
/// an unrolled loop of this size took it minutes.
extern "C" fn find_thread_step(_index: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: bpf_loop hands back the pointer we gave it, to a FindThread on our stack.
    let find = unsafe { &mut *(ctx as *mut FindThread) };
    if find.tstate == 0 {
        return 1;
    }
    if read_user::<u64>(find.tstate + find.id_offset) == Some(find.key) {
        find.found = find.tstate;
        return 1;
    }
    find.tstate = read_user(find.tstate + find.next_offset).unwrap_or(0);
    0
}

/// The PyThreadState of thread `tid`: from the cache when it still names this thread, else by
/// walking the interpreter's thread list (newest first).
#[inline(always)]
fn thread_state(py: &PyProcess, tid: u32) -> Option<u64> {
    let key = if py.thread_id_is_pthread == 1 {
        current_fsbase()
    } else {
        tid as u64
    };
    if key == 0 {
        return None;
    }
    let id_offset = py.tstate_thread_id as u64;
    // SAFETY: plain u64 copied out of the map.
    if let Some(cached) = unsafe { PY_THREADS.get(&tid) }.copied()
        && read_user::<u64>(cached + id_offset) == Some(key)
    {
        return Some(cached);
    }
    let interp: u64 = read_user(py.runtime + py.interp_head as u64)?;
    let mut find = FindThread {
        tstate: read_user(interp + py.threads_head as u64)?,
        key,
        id_offset,
        next_offset: py.tstate_next as u64,
        found: 0,
    };
    compat::repeat(
        MAX_PY_THREADS,
        COMPAT_PY_THREADS,
        find_thread_step,
        (&mut find as *mut FindThread).cast(),
    );
    if find.found == 0 {
        return None;
    }
    let _ = PY_THREADS.insert(&tid, &find.found, 0);
    let _ = PY_TSTATE_TIDS.insert(&find.found, &tid, 0);
    Some(find.found)
}

/// The thread holding the GIL, when it is held by a thread other than `own` (0 when that
/// thread was never seen).
#[inline(always)]
fn gil_held_by_other(py: &PyProcess, own: u64) -> Option<u32> {
    let gil = if py.gil_static != 0 {
        py.gil_static
    } else if py.gil_in_interp != FIELD_ABSENT {
        let interp: u64 = read_user(py.runtime + py.interp_head as u64)?;
        read_user(interp + py.gil_in_interp as u64)?
    } else {
        return None;
    };
    // `last_holder` stays set after a release: only `locked` says the GIL is held now.
    let locked: i32 = read_user(gil + GIL_LOCKED)?;
    let holder: u64 = read_user(gil + GIL_LAST_HOLDER)?;
    if locked == 0 || holder == 0 || holder == own {
        return None;
    }
    // SAFETY: plain u32 copied out of the map.
    Some(unsafe { PY_TSTATE_TIDS.get(&holder) }.copied().unwrap_or(0))
}

/// Walks the current thread's Python frames (when its process runs CPython) and sends them
/// for the event that follows. Skipped inside an idle wait point, like the native stack.
#[inline(always)]
fn python_stack(pid: u32, tid: u32, syscall: i32, slot: u32, gil: bool) -> PythonStack {
    if compat::NO_PYTHON_WALK || is_idle_wait(syscall as i64) {
        return NO_PYTHON;
    }
    // SAFETY: the value is copied out of the map.
    let Some(py) = (unsafe { PY_PROCS.get(&pid) }).copied() else {
        return NO_PYTHON;
    };
    let Some(tstate) = thread_state(&py, tid) else {
        return NO_PYTHON;
    };
    let gil_holder = if gil && syscall == FUTEX {
        gil_held_by_other(&py, tstate)
    } else {
        None
    };
    PythonStack {
        sent: send_python_frames(&py, pid, tid, tstate, slot),
        gil_holder,
    }
}

/// At a late switch-out: only whether the thread sleeps for the GIL (read now, while it is
/// held); its frames are walked when it leaves the syscall.
#[inline(always)]
fn python_gil_holder(pid: u32, tid: u32, syscall: i32) -> Option<u32> {
    if compat::NO_PYTHON_WALK || syscall != FUTEX {
        return None;
    }
    // SAFETY: the value is copied out of the map.
    let py = (unsafe { PY_PROCS.get(&pid) }).copied()?;
    let tstate = thread_state(&py, tid)?;
    gil_held_by_other(&py, tstate)
}

/// Late capture: the current thread's Python frames, sent for the event that follows.
#[inline(always)]
fn python_frames(pid: u32, tid: u32) -> bool {
    if compat::NO_PYTHON_WALK {
        return false;
    }
    // SAFETY: the value is copied out of the map.
    let Some(py) = (unsafe { PY_PROCS.get(&pid) }).copied() else {
        return false;
    };
    let Some(tstate) = thread_state(&py, tid) else {
        return false;
    };
    send_python_frames(&py, pid, tid, tstate, 2)
}

#[inline(always)]
fn top_frame(py: &PyProcess, tstate: u64) -> Option<u64> {
    let top: u64 = read_user(tstate + py.tstate_frame as u64)?;
    if py.cframe_frame == FIELD_ABSENT {
        return Some(top);
    }
    read_user(top + py.cframe_frame as u64)
}

/// State of the frame walk, shared with its bpf_loop callback.
#[repr(C)]
struct WalkFrames {
    py: PyProcess,
    frame: u64,
    depth: u64,
    slot: u32,
    truncated: u32,
    handle: u64,
    task_candidates: [u64; 2],
}

/// `Handle._callback`: the second of Handle's __slots__ (sorted: `_args`, `_callback`, ...),
/// right after the object header.
const HANDLE_CALLBACK: u64 = 0x18;
/// Where a `TaskStepMethWrapper` (0x10) or a builtin method bound to a Task (`m_self`, 0x18)
/// keeps the Task.
const CALLBACK_TASK_WORDS: [u64; 2] = [0x10, 0x18];

/// One step of the frame walk (see find_thread_step for why a callback).
extern "C" fn walk_frame_step(_index: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: bpf_loop hands back the pointer we gave it, to a WalkFrames on our stack.
    let walk = unsafe { &mut *(ctx as *mut WalkFrames) };
    let py = &walk.py;
    let frame = walk.frame;
    if frame == 0 {
        return 1;
    }
    let depth = walk.depth as usize;
    if depth >= MAX_PY_FRAMES {
        walk.truncated = 1;
        return 1;
    }
    let Some(buf) = PY_SCRATCH.get_ptr_mut(walk.slot) else {
        return 1;
    };
    // SAFETY: per-CPU slot used by one program at a time on this CPU (see STACK_SCRATCH).
    let buf = unsafe { &mut *buf };
    walk.frame = read_user(frame + py.frame_back as u64).unwrap_or(0);
    if py.frame_owner != FIELD_ABSENT
        && read_user::<u8>(frame + py.frame_owner as u64)
            .is_some_and(|owner| owner >= PY_FRAME_OWNER_NOT_CODE)
    {
        // A 3.12+ shim or 3.14+ entry frame: the frame walked just before is the outermost of
        // its eval run, and the shim's stack address says where the run sits in the native
        // stack. Only the first one after a frame counts (3.15's `base_frame` sentinel follows
        // the bottom run's entry frame, and is not on the stack).
        if depth > 0
            && let Some(last) = buf.frames.get_mut(depth - 1)
            && last.flags & PY_FRAME_ENTRY == 0
        {
            last.flags |= PY_FRAME_ENTRY;
            last.entry_shim_low32 = frame as u32;
        }
        return 0;
    }
    let entry = py.frame_owner == FIELD_ABSENT
        || (py.frame_is_entry != FIELD_ABSENT
            && read_user::<u8>(frame + py.frame_is_entry as u64).unwrap_or(0) != 0);
    // 3.14+: a tagged `_PyStackRef`; the mask clears the tag bits.
    let code: u64 = read_user::<u64>(frame + py.frame_code as u64).unwrap_or(0) & py.code_mask;
    if code != 0 && code == py.handle_run_code && walk.handle == 0 {
        let handle: u64 = read_user(frame + py.frame_locals as u64).unwrap_or(0);
        let callback: u64 = read_user(handle + HANDLE_CALLBACK).unwrap_or(0);
        walk.handle = handle;
        walk.task_candidates = [
            read_user(callback + CALLBACK_TASK_WORDS[0]).unwrap_or(0),
            read_user(callback + CALLBACK_TASK_WORDS[1]).unwrap_or(0),
        ];
    }
    let ip = if py.ip_is_pointer == 1 {
        read_user::<u64>(frame + py.frame_ip as u64).unwrap_or(0)
    } else {
        read_user::<i32>(frame + py.frame_ip as u64).unwrap_or(-1) as i64 as u64
    };
    if let Some(slot) = buf.frames.get_mut(depth) {
        *slot = PyFrame {
            code,
            ip,
            frame,
            flags: if entry { PY_FRAME_ENTRY } else { 0 },
            entry_shim_low32: 0,
        };
        walk.depth += 1;
    }
    0
}

/// The thread's running asyncio Task (3.14+), read now: by the time the agent looks, the loop
/// may run another.
#[inline(always)]
fn running_task(py: &PyProcess, tstate: u64) -> u64 {
    if py.tstate_running_task == FIELD_ABSENT {
        return 0;
    }
    read_user(tstate + py.tstate_running_task as u64).unwrap_or(0)
}

#[inline(always)]
fn send_python_frames(py: &PyProcess, pid: u32, tid: u32, tstate: u64, slot: u32) -> bool {
    let Some(frame) = top_frame(py, tstate) else {
        return false;
    };
    if frame == 0 {
        // No Python code running on this thread.
        return false;
    }
    let mut walk = WalkFrames {
        py: *py,
        frame,
        // Unknown to the verifier: the callback's first check is then verified for every
        // depth at once, and the next steps' states fall within it. From an exact 0 it
        // verifies the callback once per depth (as many times as frames), which with the
        // rest of a program can pass the million-instruction limit (it did on 6.18).
        depth: opaque(0) as u64,
        slot,
        truncated: 0,
        handle: 0,
        task_candidates: [0; 2],
    };
    compat::repeat(
        MAX_PY_FRAMES + MAX_PY_SHIMS,
        COMPAT_PY_FRAMES,
        walk_frame_step,
        (&mut walk as *mut WalkFrames).cast(),
    );
    let depth = walk.depth as usize;
    if depth == 0 || depth > MAX_PY_FRAMES {
        return false;
    }
    let Some(buf) = PY_SCRATCH.get_ptr_mut(slot) else {
        return false;
    };
    // SAFETY: as in walk_frame_step.
    let buf = unsafe { &mut *buf };
    buf.header = PyStackHeader {
        // SAFETY: helper without preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        tstate,
        pid,
        tid,
        depth: depth as u32,
        truncated: walk.truncated,
        magic: PyStackHeader::MAGIC,
        handle: walk.handle,
        task_candidates: walk.task_candidates,
        running_task: running_task(py, tstate),
    };
    let total = PY_STACK_HEADER_SIZE + depth * size_of::<PyFrame>();
    if total > size_of::<PyStackCopy>() {
        return false;
    }
    // SAFETY: the header and `depth` frames are initialised.
    let bytes =
        unsafe { core::slice::from_raw_parts((buf as *const PyStackCopy).cast::<u8>(), total) };
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

/// sched_switch as a raw tracepoint: (preempt, prev, next, prev_state) as the scheduler passes
/// them, with no trace record formatted first. This program runs at every context switch of
/// the machine: the cheapest hook there is for it.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sched_switch(ctx: RawTracePointContext) -> i32 {
    let preempt: u64 = ctx.arg(0);
    let next: u64 = ctx.arg(2);
    let state: u64 = ctx.arg(3);
    let next_tid = task_field::<i32>(next, TASK.load().pid).unwrap_or(0);
    let _ = on_switch(
        &ctx,
        || reported_state(preempt & 0xff != 0, state as u32),
        next_tid,
    );
    0
}

/// The classic tracepoint, for kernels without BTF or before 5.18 (no prev_state argument).
#[tracepoint]
pub fn tp_sched_switch(ctx: TracePointContext) -> u32 {
    let offsets = OFFSETS.load();
    let next_tid: i32 = unsafe { ctx.read_at(offsets.switch_next_pid as usize) }.unwrap_or(0);
    let _ = on_switch(
        &ctx,
        || unsafe { ctx.read_at::<i64>(offsets.switch_prev_state as usize) }.unwrap_or(0),
        next_tid,
    );
    0
}

/// A field of a task_struct the kernel passed us.
#[inline(always)]
fn task_field<T>(task: u64, offset: u32) -> Option<T> {
    if task == 0 {
        return None;
    }
    // SAFETY: probe read of kernel memory; failure handled.
    unsafe { bpf_probe_read_kernel((task as *const u8).add(offset as usize).cast::<T>()) }.ok()
}

/// `prev_state` as the classic tracepoint reports it (`__trace_sched_switch_state`): a
/// preemption is TASK_REPORT_MAX, anything else the highest reported state bit, so the agent
/// reads the same values from either hook.
#[inline(always)]
fn reported_state(preempt: bool, state: u32) -> i64 {
    const TASK_REPORT: u32 = 0x7f;
    const TASK_IDLE: u32 = 0x402;
    const TASK_DEAD: u32 = 0x80;
    const TASK_RTLOCK_WAIT: u32 = 0x1000;
    const TASK_FROZEN: u32 = 0x8000;
    if preempt {
        return 0x100; // TASK_REPORT_MAX
    }
    if state & TASK_IDLE == TASK_IDLE {
        return 0x80; // TASK_REPORT_IDLE
    }
    if state & (TASK_RTLOCK_WAIT | TASK_FROZEN) != 0 {
        return 2; // reported as uninterruptible
    }
    let mut report = state & TASK_REPORT;
    if state & TASK_DEAD != 0 {
        // Its exit_state (zombie or dead) is what the classic record shows.
        report |= 0x20;
    }
    let mut bit = 0x40u32;
    while bit != 0 {
        if report & bit != 0 {
            return bit as i64;
        }
        bit >>= 1;
    }
    0
}

fn on_switch<C: StackIdContext>(
    ctx: &C,
    prev_state: impl Fn() -> i64,
    next_tid: i32,
) -> Result<(), i32> {
    // At sched_switch `current` is still the task being switched out.
    let (tgid, tid) = current_ids();
    if is_followed_pid(tgid) {
        remember_thread(tgid, tid);
        check_switched_in(tgid, tid);
        // Through the map: `reported_state` ends in a constant per path (ten of them), and
        // each would otherwise be a path of its own through everything that follows.
        switch_out(ctx, tgid, tid, opaque(prev_state()));
        switched_in(0, 0);
    }
    // Read back after the switch-out's captures (see `capture`), so that this test's
    // precision is tracked to the read, not back across the Python walk.
    let next_tid = opaque(i64::from(next_tid)) as u32;
    if let Some(next_tgid) = followed_tid(next_tid) {
        let event = new_event(kind::SWITCH_IN, next_tgid, next_tid);
        submit(&event);
        switched_in(next_tid, event.ts_ns);
    }
    Ok(())
}

/// The followed current thread leaves the CPU in `prev_state`: a SWITCH_OUT, with its stacks
/// unless it goes idle in its wait point or was preempted.
#[inline(always)]
fn switch_out<C: StackIdContext>(ctx: &C, tgid: u32, tid: u32, prev_state: i64) {
    let Some(event) = EVENT_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU slot of this program (see EVENT_SCRATCH), valid for this run.
    let event = unsafe { &mut *event };
    let syscall = current_syscall();
    *event = new_event(kind::SWITCH_OUT, tgid, tid);
    event.arg0 = prev_state as u64;
    event.syscall = reported_syscall(syscall);
    event.comm = bpf_get_current_comm().unwrap_or_default();
    // A thread preempted inside a syscall is not waiting in it (it may be on its way out
    // of the call, where the saved registers still name it): its stacks are taken as
    // anywhere else.
    let blocked_in = opaque(if prev_state & 0xff == 0 {
        NO_SYSCALL as i64
    } else {
        syscall as i64
    }) as i32;
    // No stacks for a loop going idle in its wait point (between iterations), nor for a
    // preempted thread: it is still where it was running, which its samples show (the
    // agent gives its runqueue time the stack of its latest sample).
    let preempted = prev_state & 0xff == 0 && EAGER_STACKS.load() == 0;
    if !preempted && !is_idle_wait(blocked_in as i64) {
        // When it went to sleep: a wake-up of a short sleep takes no waker stacks.
        // SAFETY: helper without preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        match BLOCKED_SINCE.get_ptr_mut(&tid) {
            // SAFETY: pointer into the map's value, valid for this program run.
            Some(slot) => unsafe { *slot = now },
            None => {
                let _ = BLOCKED_SINCE.insert(&tid, &now, 0);
            }
        }
        // Blocked in a syscall: its user registers and stack stay as they are until it leaves
        // the call, so they are read then (`sys_exit_late`), and only if the block lasted.
        // Not for CPython processes: the agent reads a stack's asyncio Task from the target's
        // memory when the record arrives, and after the thread left the call that Task may be
        // gone (the request done); their stacks are read at switch-out, while it sleeps.
        let late = !compat::NO_LATE
            && blocked_in != NO_SYSCALL
            && LATE_MIN_NS.load() != 0
            // SAFETY: only compared against None.
            && unsafe { PY_PROCS.get(&tgid) }.is_none()
            && defer_stacks(tid, now);
        if late {
            event.kernel_stack_id = kernel_stack_id(ctx, tgid, kstack_site::SWITCH_OUT);
            event.arg1 |= LATE_STACKS_PENDING;
            if let Some(holder) = python_gil_holder(tgid, tid, blocked_in) {
                event.arg1 |= GIL_HELD_BY_OTHER;
                event.aux = holder;
            }
        } else {
            capture(ctx, event, blocked_in, 0, true);
        }
        restamp(event);
    }
    submit(event);
}

/// Stamps `event` after its captures, as their records are: the agent attaches a copied
/// stack only to an event stamped close to it (100 ms, `COPY_MAX_AGE_NS`; under emulation a
/// capture can take milliseconds).
#[inline(always)]
fn restamp(event: &mut Event) {
    // SAFETY: helper without preconditions.
    event.ts_ns = unsafe { bpf_ktime_get_ns() };
}

#[raw_tracepoint(tracepoint = "sched_waking")]
pub fn sched_waking(ctx: RawTracePointContext) -> i32 {
    let _ = raw_wakeup(&ctx, kind::WAKING);
    0
}

/// Also attached to sched_wakeup_new.
#[raw_tracepoint(tracepoint = "sched_wakeup")]
pub fn sched_wakeup(ctx: RawTracePointContext) -> i32 {
    let _ = raw_wakeup(&ctx, kind::WAKEUP);
    0
}

#[inline(always)]
fn raw_wakeup(ctx: &RawTracePointContext, kind: u32) -> Result<(), i32> {
    let task = TASK.load();
    let woken: u64 = ctx.arg(0);
    let tid = task_field::<i32>(woken, task.pid).ok_or(0)?;
    let Some(woken_tgid) = followed_tid(tid as u32) else {
        return Ok(());
    };
    // Only for a followed thread: what task_cpu() reads.
    let cpu = task_field::<i32>(woken, task.cpu).unwrap_or(-1);
    on_wakeup(ctx, kind, tid, woken_tgid, cpu)
}

#[tracepoint]
pub fn tp_sched_waking(ctx: TracePointContext) -> u32 {
    let _ = try_wakeup(&ctx, kind::WAKING);
    0
}

#[tracepoint]
pub fn tp_sched_wakeup(ctx: TracePointContext) -> u32 {
    let _ = try_wakeup(&ctx, kind::WAKEUP);
    0
}

fn try_wakeup(ctx: &TracePointContext, kind: u32) -> Result<(), i32> {
    let offsets = OFFSETS.load();
    let woken: i32 = unsafe { ctx.read_at(offsets.wakeup_pid as usize)? };
    let Some(woken_tgid) = followed_tid(woken as u32) else {
        return Ok(());
    };
    let target_cpu: i32 = unsafe { ctx.read_at(offsets.wakeup_target_cpu as usize) }.unwrap_or(-1);
    on_wakeup(ctx, kind, woken, woken_tgid, target_cpu)
}

/// A followed thread woken (`woken`, of process `woken_tgid`), in the waker's context.
#[inline(always)]
fn on_wakeup<C: StackIdContext>(
    ctx: &C,
    kind: u32,
    woken: i32,
    woken_tgid: u32,
    target_cpu: i32,
) -> Result<(), i32> {
    let (waker_tgid, waker_tid) = current_ids();
    let mut event = new_event(kind, woken_tgid, woken as u32);
    event.arg0 = ((waker_tgid as u64) << 32) | waker_tid as u64;
    event.aux = target_cpu as u32;
    event.comm = bpf_get_current_comm().unwrap_or_default();
    // Waking a thread that idles in its loop's wait (a request arrived) starts an iteration:
    // who did it explains nothing, so the waker's stacks are not taken (on a busy server this
    // is most wake-ups).
    if kind == kind::WAKING
        && waker_tgid != 0
        && !is_idle_wait(thread_syscall(woken as u32) as i64)
        && (thread_syscall(woken as u32) == FUTEX || blocked_long_enough(woken as u32))
    {
        // sched_waking runs in the waker's context: its stacks say what released the sleeper
        // (the code that unlocked the mutex, wrote to the pipe, ...). A followed waker's user
        // stack is copied for full unwinding (libc's wrappers keep no frame pointer).
        event.kernel_stack_id = kernel_stack_id(ctx, waker_tgid, kstack_site::WAKER);
        if is_followed_pid(waker_tgid) && copy_user_stack(waker_tgid, waker_tid, 2) {
            event.arg1 = USER_STACK_COPIED;
        } else {
            event.user_stack_id = stack_id(ctx, BPF_F_USER_STACK as u64, drop::USER_STACK);
        }
    }
    submit(&event);
    Ok(())
}

/// The sleeper has been blocked at least WAKER_MIN_BLOCKED_NS (or we do not know since when).
/// Not asked for a futex (a lock or the GIL): who released it is the lock holder the agent
/// names, and a contended lock is many short waits that add up.
#[inline(always)]
fn blocked_long_enough(tid: u32) -> bool {
    let min = WAKER_MIN_BLOCKED_NS.load();
    if min == 0 {
        return true;
    }
    // SAFETY: plain u64 copied out of the map.
    match unsafe { BLOCKED_SINCE.get(&tid) }.copied() {
        // SAFETY: helper without preconditions.
        Some(since) => unsafe { bpf_ktime_get_ns() }.saturating_sub(since) >= min,
        None => true,
    }
}

/// Marks, in THREAD_SYSCALL, a wait-point syscall used as a plain sleep (see waits_on_no_fds):
/// no WAIT_ENTER/EXIT is sent for it and its stacks are taken as for any other sleep.
const NOT_A_WAIT: i32 = 1 << 20;

/// poll/select with no descriptors is a sleep, not a wait for work: Python before 3.11
/// implements time.sleep() with select(0, NULL, NULL, NULL, timeout). `arg(i)` reads the
/// syscall's argument i (0 or 1).
#[inline(always)]
fn syscall_waits_on_no_fds(nr: i64, arg: impl Fn(usize) -> u64) -> bool {
    const POLL: i64 = 7;
    const SELECT: i64 = 23;
    const PSELECT6: i64 = 270;
    const PPOLL: i64 = 271;
    if !matches!(nr, POLL | SELECT | PSELECT6 | PPOLL) {
        return false;
    }
    // args[0] is nfds for select/pselect6; for poll/ppoll it is the array, args[1] its length.
    let index = if nr == SELECT || nr == PSELECT6 { 0 } else { 1 };
    arg(index) == 0
}

/// The syscall to report in an event (without the NOT_A_WAIT mark).
#[inline(always)]
fn reported_syscall(marked: i32) -> i32 {
    if marked == NO_SYSCALL {
        NO_SYSCALL
    } else {
        marked & !NOT_A_WAIT
    }
}

/// Attached to the per-syscall tracepoints (`syscalls:sys_enter_NAME`) of the wait points and
/// of exit/exit_group only: other syscalls run no program of ours.
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
    let nr: i32 = unsafe { ctx.read_at(offsets.syscall_enter_nr as usize)? };
    on_sys_enter(tgid, tid, nr as i64, |index| {
        unsafe { ctx.read_at(offsets.syscall_enter_args as usize + 8 * index) }.unwrap_or(1)
    });
    Ok(())
}

/// Entry of a wait point or of exit/exit_group by a followed thread, from either hook (the
/// per-syscall tracepoints or the trampolines on the syscall wrappers). `arg(i)` reads the
/// syscall's argument i.
#[inline(always)]
fn on_sys_enter(tgid: u32, tid: u32, nr: i64, arg: impl Fn(usize) -> u64) {
    check_switched_in(tgid, tid);
    // exit (60) and exit_group (231) never return: this is the only place to see the status.
    if nr == 60 || nr == 231 {
        let mut event = new_event(kind::EXIT_CALL, tgid, tid);
        event.syscall = nr as i32;
        event.arg0 = arg(0);
        submit(&event);
        return;
    }
    if !is_wait_point(nr) {
        return;
    }
    let sleep = syscall_waits_on_no_fds(nr, &arg);
    set_thread_syscall(
        tid,
        if sleep {
            nr as i32 | NOT_A_WAIT
        } else {
            nr as i32
        },
    );
    if !sleep {
        remember_thread(tgid, tid);
        let mut event = new_event(kind::WAIT_ENTER, tgid, tid);
        event.syscall = nr as i32;
        submit(&event);
    }
}

/// Attached to the wait points' `syscalls:sys_exit_NAME` tracepoints only.
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
    let nr: i32 = unsafe { ctx.read_at(offsets.syscall_exit_nr as usize)? };
    let ret: i64 = unsafe { ctx.read_at(offsets.syscall_exit_ret as usize) }.unwrap_or(0);
    on_sys_exit(tgid, tid, nr as i64, ret);
    Ok(())
}

/// Exit of a wait point by a followed thread, from either hook.
#[inline(always)]
fn on_sys_exit(tgid: u32, tid: u32, nr: i64, ret: i64) {
    check_switched_in(tgid, tid);
    let marked = thread_syscall(tid);
    let was_sleep = marked != NO_SYSCALL && marked & NOT_A_WAIT != 0;
    if marked != NO_SYSCALL {
        set_thread_syscall(tid, NO_SYSCALL);
    }
    if is_wait_point(nr) && !was_sleep {
        let mut event = new_event(kind::WAIT_EXIT, tgid, tid);
        event.syscall = nr as i32;
        event.arg0 = ret as u64;
        submit(&event);
    }
}

/// x86-64 `struct pt_regs` offsets of the syscall arguments (di, si, dx, r10), fixed by the
/// architecture's ABI: the trampolines on `__x64_sys_*` get the caller's saved registers.
const PT_REGS_ARGS: [usize; 4] = [112, 104, 96, 56];

/// Argument `index` of the syscall whose saved registers are at `regs` (1 when unreadable,
/// which `syscall_waits_on_no_fds` takes as "has descriptors").
#[inline(always)]
fn regs_arg(regs: u64, index: usize) -> u64 {
    let offset = if index < PT_REGS_ARGS.len() {
        PT_REGS_ARGS[index]
    } else {
        return 1;
    };
    // SAFETY: probe read of kernel memory, failure handled.
    unsafe { bpf_probe_read_kernel((regs as usize + offset) as *const u64) }.unwrap_or(1)
}

/// The entry trampoline of one syscall wrapper (both macros below use it).
macro_rules! entry_trampoline {
    ($entry:ident, $wrapper:literal, $nr:literal) => {
        #[fentry(function = $wrapper)]
        pub fn $entry(ctx: FEntryContext) -> u32 {
            let (tgid, tid) = current_ids();
            if is_followed_pid(tgid) {
                let regs: u64 = ctx.arg(0);
                on_sys_enter(tgid, tid, $nr, |index| regs_arg(regs, index));
            }
            0
        }
    };
}

/// Trampolines on the syscall wrappers (`__x64_sys_NAME`), used instead of the per-syscall
/// tracepoints where the kernel has them: any `syscalls:*` tracepoint flags every task of the
/// machine for the slow syscall path (TIF_SYSCALL_TRACEPOINT), a trampoline costs only the
/// callers of its own syscall. One program per syscall: a tracing program is loaded for one
/// function. The syscall number is the wrapper's, not read from the registers.
macro_rules! syscall_trampolines {
    ($(($entry:ident, $exit:ident, $wrapper:literal, $nr:literal)),* $(,)?) => {
        $(
            entry_trampoline!($entry, $wrapper, $nr);

            #[fexit(function = $wrapper)]
            pub fn $exit(ctx: FExitContext) -> u32 {
                let (tgid, tid) = current_ids();
                if is_followed_pid(tgid) {
                    let ret: i64 = ctx.arg(1);
                    on_sys_exit(tgid, tid, $nr, ret);
                }
                0
            }
        )*
    };
}

syscall_trampolines!(
    (
        fentry_epoll_wait,
        fexit_epoll_wait,
        "__x64_sys_epoll_wait",
        232
    ),
    (
        fentry_epoll_pwait,
        fexit_epoll_pwait,
        "__x64_sys_epoll_pwait",
        281
    ),
    (
        fentry_epoll_pwait2,
        fexit_epoll_pwait2,
        "__x64_sys_epoll_pwait2",
        441
    ),
    (fentry_poll, fexit_poll, "__x64_sys_poll", 7),
    (fentry_ppoll, fexit_ppoll, "__x64_sys_ppoll", 271),
    (fentry_select, fexit_select, "__x64_sys_select", 23),
    (fentry_pselect6, fexit_pselect6, "__x64_sys_pselect6", 270),
    (fentry_futex, fexit_futex, "__x64_sys_futex", 202),
);

// exit and exit_group never return: an entry trampoline only.
entry_trampoline!(fentry_exit, "__x64_sys_exit", 60);
entry_trampoline!(fentry_exit_group, "__x64_sys_exit_group", 231);

/// Whether `tid`, blocked in a syscall at `now`, leaves its stacks to its exit from the call:
/// yes for its first block there (noted), and for more blocks in the same call while the
/// first is recent; once a call has lasted that long (fsync waits for its pages many times,
/// each wait short), each further block in it is copied at once: it matters, and its exit
/// would copy the same registers and stack, too late for the blocks before.
#[inline(always)]
fn defer_stacks(tid: u32, now: u64) -> bool {
    match LATE_SINCE.get_ptr_mut(&tid) {
        // SAFETY: pointer into the map's value, valid for this program run.
        Some(slot) => unsafe {
            if *slot == 0 {
                *slot = now;
                true
            } else if now.saturating_sub(*slot) >= LATE_MIN_NS.load() {
                false
            } else {
                true
            }
        },
        None => {
            if LATE_SINCE.insert(&tid, &now, 0).is_err() {
                count_drop(drop::FOLLOW_MAP_FULL);
                return false;
            }
            true
        }
    }
}

/// Late capture, on `raw_syscalls:sys_exit` (every syscall exit of the machine: one hash
/// lookup by tid, and nothing else, for any thread without a pending block). A thread that
/// blocked in this syscall has its user stack copied and its Python frames walked now, with
/// the registers and stack it blocked with, when it was off-CPU long enough to matter.
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit_late(ctx: RawTracePointContext) -> i32 {
    late_capture(&ctx);
    0
}

/// Late capture on the return of `schedule()` (a trampoline, used instead of `sys_exit_late`
/// where the kernel has them): it runs in the woken thread's own context, still in the
/// kernel, so its user registers and stack are the ones it blocked with; it runs once per
/// voluntary switch-in instead of at every syscall exit of the machine, and sets no syscall
/// tracepoint flag. A block is judged on its own length there (a thread's next block starts
/// a new pending capture).
#[fexit(function = "schedule")]
pub fn schedule_late(ctx: FExitContext) -> u32 {
    late_capture(&ctx);
    0
}

/// A thread that blocked in a syscall has its user stack copied and its Python frames walked
/// now, with the registers and stack it blocked with, when it was off-CPU long enough to
/// matter. One hash lookup by tid, and nothing else, for any thread without a pending block.
#[inline(always)]
fn late_capture<C: StackIdContext>(ctx: &C) {
    let (tgid, tid) = current_ids();
    let Some(slot) = LATE_SINCE.get_ptr_mut(&tid) else {
        return;
    };
    // SAFETY: pointer into the map's value, valid for this program run.
    let since = unsafe { core::ptr::replace(slot, 0) };
    if since == 0 || !is_followed_pid(tgid) {
        return;
    }
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.saturating_sub(since) < LATE_MIN_NS.load() {
        return;
    }
    check_switched_in(tgid, tid);
    let copied = copy_user_stack(tgid, tid, 3);
    let mut event = new_event(kind::LATE_STACKS, tgid, tid);
    event.arg0 = since;
    event.arg1 = if copied { USER_STACK_COPIED } else { 0 };
    if !copied {
        event.user_stack_id = stack_id(ctx, BPF_F_USER_STACK as u64, drop::USER_STACK);
    }
    if python_frames(tgid, tid) {
        event.arg1 |= PY_STACK_COPIED;
    }
    submit(&event);
}

#[perf_event]
pub fn cpu_sample(ctx: PerfEventContext) -> u32 {
    let (tgid, tid) = current_ids();
    if is_followed_pid(tgid) {
        check_switched_in(tgid, tid);
        let Some(event) = EVENT_SCRATCH.get_ptr_mut(1) else {
            return 0;
        };
        // SAFETY: per-CPU slot of this program (see EVENT_SCRATCH), valid for this run.
        let event = unsafe { &mut *event };
        *event = new_event(kind::SAMPLE, tgid, tid);
        sample(&ctx, event);
    }
    0
}

/// Completes and sends a followed thread's sample event: its stacks and Python frames.
#[inline(always)]
fn sample(ctx: &PerfEventContext, event: &mut Event) {
    let syscall = current_syscall();
    event.syscall = reported_syscall(syscall);
    // No GIL holder for a sample: the thread is on CPU (only a switch-out waits for the GIL),
    // and the holder check doubles what the verifier walks here.
    capture(ctx, event, syscall, 1, false);
    restamp(event);
    submit(event);
}

#[tracepoint]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    let _ = try_fork(&ctx);
    0
}

fn try_fork(ctx: &TracePointContext) -> Result<(), i32> {
    let (tgid, tid) = current_ids();
    if !is_followed_pid(tgid) {
        // `watch`: a process that matches (its name, its cgroup) but is not followed yet (it
        // was renamed, or moved into the cgroup, after it started) is followed from now on,
        // with the child it is making.
        if !matches_new_process(ctx, false) || !follow_current(tgid, tid) {
            return Ok(());
        }
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
    let _ = LAST_STACKS.remove(&tid);
    let _ = BLOCKED_SINCE.remove(&tid);
    let _ = LATE_SINCE.remove(&tid);
    // SAFETY: plain u64 copied out of the map.
    if let Some(tstate) = unsafe { PY_THREADS.get(&tid) }.copied() {
        let _ = PY_TSTATE_TIDS.remove(&tstate);
        let _ = PY_THREADS.remove(&tid);
    }
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
        let _ = PY_PROCS.remove(&tgid);
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
    let mut matched = 0;
    if !is_followed_pid(tgid) {
        // `watch`: a new program that matches is followed from its first instruction.
        if !matches_new_process(ctx, true) || !follow_current(tgid, tid) {
            return Ok(());
        }
        matched = 1;
    }
    let old: i32 = unsafe { ctx.read_at(OFFSETS.load().exec_old_pid as usize)? };
    let mut event = new_event(kind::EXEC, tgid, tid);
    event.arg0 = old as u32 as u64;
    // 1: followed from now on because it matched (the agent has not heard of it before).
    event.aux = matched;
    event.comm = bpf_get_current_comm().unwrap_or_default();
    submit(&event);
    Ok(())
}

/// Starts following the current process (it matched): its tgid and this thread. False when
/// the follow set is full (counted).
#[inline(always)]
fn follow_current(tgid: u32, tid: u32) -> bool {
    if FOLLOWED_PIDS.insert(&tgid, &1, 0).is_err() || FOLLOWED_TIDS.insert(&tid, &tgid, 0).is_err()
    {
        count_drop(drop::FOLLOW_MAP_FULL);
        return false;
    }
    true
}

/// Whether the current task, not followed yet, is one `watch` was asked to follow: in a listed
/// cgroup, or with a command name (or, at exec, an exec'd path) matching a pattern. Runs only
/// at exec and fork of unfollowed processes, and only when `MATCH_ON` is set.
#[inline(always)]
fn matches_new_process(ctx: &TracePointContext, at_exec: bool) -> bool {
    let on = MATCH_ON.load();
    if on == 0 {
        return false;
    }
    if on & matching::CGROUP != 0 {
        // SAFETY: helper without preconditions.
        let id = unsafe { bpf_get_current_cgroup_id() };
        // SAFETY: only compared against None.
        if unsafe { MATCH_CGROUPS.get(&id) }.is_some() {
            return true;
        }
    }
    if compat::NO_GLOB {
        // No bpf_loop: the agent's periodic look at /proc finds these instead.
        return false;
    }
    if on & matching::COMM != 0 {
        let comm = bpf_get_current_comm().unwrap_or_default();
        if glob_any(matching::COMM, |text| {
            let mut len = comm.len();
            for (i, &b) in comm.iter().enumerate() {
                text[i] = b;
                if b == 0 && len == comm.len() {
                    len = i;
                }
            }
            len as u32
        }) {
            return true;
        }
    }
    if at_exec && on & matching::EXE != 0 {
        let offset = EXEC_FILENAME_OFFSET.load();
        if offset == FIELD_ABSENT {
            return false;
        }
        // SAFETY: the offset is the record's own `__data_loc` field (from tracefs).
        let Ok(loc) = (unsafe { ctx.read_at::<u32>(offset as usize) }) else {
            return false;
        };
        let path = (ctx.as_ptr() as usize + (loc & 0xffff) as usize) as *const u8;
        return glob_any(matching::EXE, |text| {
            // SAFETY: a kernel probe read into the scratch buffer, failure handled.
            match unsafe { bpf_probe_read_kernel_str_bytes(path, text) } {
                Ok(bytes) => bytes.len() as u32,
                Err(_) => 0,
            }
        });
    }
    false
}

/// Fills the scratch text with `fill` (which returns its length), then tries every pattern of
/// `kind` on it.
#[inline(always)]
fn glob_any(kind: u32, fill: impl FnOnce(&mut [u8; MATCH_TEXT_BYTES]) -> u32) -> bool {
    let Some(state) = GLOB_SCRATCH.get_ptr_mut(0) else {
        return false;
    };
    // Raw pointer accesses only: the bpf_loop callback writes the same slot.
    // SAFETY: per-CPU slot, see count_drop.
    unsafe {
        (*state).text_len = fill(&mut (*state).text);
        if (*state).text_len == 0 {
            return false;
        }
    }
    for index in 0..MAX_MATCH_PATTERNS {
        let Some(pattern) = MATCH_PATTERNS.get(index) else {
            break;
        };
        if pattern.kind != kind {
            continue;
        }
        // SAFETY: as above.
        let steps = unsafe {
            (*state).reset(index);
            (*state).max_steps(pattern)
        };
        compat::repeat(steps as usize, 0, glob_step, core::ptr::null_mut());
        // SAFETY: as above.
        if unsafe { core::ptr::read_volatile(&(*state).result) } == 1 {
            return true;
        }
    }
    false
}

/// One step of a glob match under bpf_loop (its state is in GLOB_SCRATCH).
extern "C" fn glob_step(_index: u64, _ctx: *mut core::ffi::c_void) -> i64 {
    let Some(state) = GLOB_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: per-CPU slot, see count_drop.
    let state = unsafe { &mut *state };
    let Some(pattern) = MATCH_PATTERNS.get(state.pattern) else {
        state.result = 2;
        return 1;
    };
    i64::from(state.step(pattern))
}

/// What the kernel offers, or its stand-in where an older kernel lacks it (feature `compat`).
mod compat {
    /// No late capture in the compat build: stacks at switch-out (its verifier walks every
    /// path, and the eager path alone is what the old kernels were checked with).
    pub const NO_LATE: bool = cfg!(feature = "compat");

    /// No glob match of new processes in the compat build (no bpf_loop for its steps).
    pub const NO_GLOB: bool = cfg!(feature = "compat");

    /// No Python walk at all in the compat build when it may take no step.
    pub const NO_PYTHON_WALK: bool = cfg!(feature = "compat") && super::COMPAT_PY_FRAMES == 0;

    /// A loop step: `bpf_loop`'s callback signature (1 stops, 0 goes on).
    pub type Step = extern "C" fn(u64, *mut core::ffi::c_void) -> i64;

    /// Runs `step` up to `steps` times with bpf_loop (5.17+), whose callback the verifier
    /// checks once, or up to `compat_steps` times in a bounded loop it walks step by step.
    #[inline(always)]
    pub fn repeat(steps: usize, compat_steps: usize, step: Step, ctx: *mut core::ffi::c_void) {
        #[cfg(not(feature = "compat"))]
        {
            let _ = compat_steps;
            // SAFETY: a static callback and a context on the caller's stack, as bpf_loop
            // requires.
            unsafe {
                aya_ebpf::helpers::bpf_loop(steps as u32, step as *mut core::ffi::c_void, ctx, 0)
            };
        }
        #[cfg(feature = "compat")]
        {
            let _ = steps;
            for index in 0..compat_steps {
                if step(index as u64, ctx) != 0 {
                    break;
                }
            }
        }
    }

    /// The current task_struct (only ever read with probe reads).
    #[inline(always)]
    pub fn current_task() -> *const u8 {
        #[cfg(not(feature = "compat"))]
        // SAFETY: helper valid in tracing programs (5.11+).
        let task = unsafe { aya_ebpf::helpers::bpf_get_current_task_btf() } as *const u8;
        #[cfg(feature = "compat")]
        // SAFETY: helper valid in tracing programs (4.8+).
        let task = unsafe { aya_ebpf::helpers::bpf_get_current_task() } as *const u8;
        task
    }

    /// The current task's user registers, saved at kernel entry (null when unknown).
    #[inline(always)]
    pub fn user_regs() -> *const u64 {
        #[cfg(not(feature = "compat"))]
        {
            // SAFETY: helpers valid in tracing programs (5.15+); only read with probe reads.
            unsafe {
                aya_ebpf::helpers::bpf_task_pt_regs(aya_ebpf::helpers::bpf_get_current_task_btf())
                    as *const u64
            }
        }
        #[cfg(feature = "compat")]
        {
            // What task_pt_regs() computes on x86-64: the registers sit at the top of the
            // task's kernel stack (THREAD_SIZE 16 KiB, no padding on x86-64).
            const THREAD_SIZE: u64 = 16384;
            const PT_REGS_SIZE: u64 = 21 * 8;
            let offset = super::TASK_STACK_OFFSET.load();
            if offset == 0 {
                return core::ptr::null();
            }
            let task = current_task();
            // SAFETY: kernel probe read, failure handled.
            let stack: u64 = unsafe {
                aya_ebpf::helpers::bpf_probe_read_kernel(task.add(offset as usize).cast::<u64>())
            }
            .unwrap_or(0);
            if stack == 0 {
                return core::ptr::null();
            }
            (stack + THREAD_SIZE - PT_REGS_SIZE) as *const u64
        }
    }
}

/// Offset of `task_struct.stack` (from the kernel's BTF), for the registers of a kernel
/// without bpf_task_pt_regs (0: unknown, no user-stack copies there).
#[unsafe(no_mangle)]
static TASK_STACK_OFFSET: Global<u32> = Global::new(0);

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
