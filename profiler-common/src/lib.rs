//! Types shared by the eBPF programs (`profiler-ebpf`) and the agent (`profiler-user`).
//!
//! Everything here is `#[repr(C)]` plain data: the kernel writes these bytes into the ring buffer
//! and the agent reads them back, so both sides must agree on layout to the byte. Sizes are
//! asserted at compile time. Flags are `u32`, never `bool`, so that no padding byte is left
//! uninitialised (the verifier rejects reads of uninitialised stack, and `Pod` forbids padding).
#![no_std]

/// What an [`Event`] records. Kept as plain `u32` constants rather than an enum, because the
/// kernel side writes raw integers and an unknown value from a newer kernel build must not be UB.
pub mod kind {
    /// A followed thread was switched out (`current` at sched_switch).
    pub const SWITCH_OUT: u32 = 1;
    /// A followed thread was switched in (`next` at sched_switch).
    pub const SWITCH_IN: u32 = 2;
    /// A followed thread was picked for waking (sched_waking, runs in the waker's context).
    pub const WAKING: u32 = 3;
    /// A followed thread was put on a runqueue (sched_wakeup / sched_wakeup_new).
    pub const WAKEUP: u32 = 4;
    /// A followed thread entered a wait-point syscall (epoll_wait, poll, select, ...).
    pub const WAIT_ENTER: u32 = 5;
    /// A followed thread returned from a wait-point syscall.
    pub const WAIT_EXIT: u32 = 6;
    /// A cpu-clock sample hit a followed thread.
    pub const SAMPLE: u32 = 7;
    /// A followed process forked or spawned a thread.
    pub const FORK: u32 = 8;
    /// A followed thread exited.
    pub const EXIT: u32 = 9;
    /// A followed process called exec.
    pub const EXEC: u32 = 10;
    /// A followed thread called exit or exit_group (`arg0`: the exit status it passed).
    pub const EXIT_CALL: u32 = 11;
    /// A signal was generated for a followed thread (`arg0`: signal number, `aux`: result).
    pub const SIGNAL: u32 = 12;
    /// Late capture: a followed thread left the syscall it had blocked in (sys_exit, its own
    /// context: user registers and stack as at its switch-out), off-CPU long enough for its
    /// stacks to matter; they were sent just before (`arg1`: copy flags as on SWITCH_OUT,
    /// `arg0`: when its first switch-out in that syscall was, `user_stack_id` when walked by
    /// the kernel). They belong to the thread's switch-outs in that syscall (flagged
    /// [`super::LATE_STACKS_PENDING`]).
    pub const LATE_STACKS: u32 = 13;
}

/// Indices into the per-CPU `KSTACK_STATS` counter array: how the kernel stacks of
/// switch-outs and wakers were had (see `KSTACK_REUSE` in the eBPF programs).
pub mod kstack_stat {
    /// Walked by the kernel (`bpf_get_stackid`): no reuse possible or allowed.
    pub const TAKEN: u32 = 0;
    /// The stack id taken last at the same place, reused without a walk.
    pub const REUSED: u32 = 1;
    /// Walked again to check a place's reused id.
    pub const VERIFIED: u32 = 2;
    /// Checks that found another stack: that place is walked every time from then on.
    pub const DIFFERED: u32 = 3;
    /// Number of counters.
    pub const COUNT: u32 = 4;
}

/// Indices into the per-CPU `DROPS` counter array: every place the kernel side gives up on data.
pub mod drop {
    /// The ring buffer was full; the event was lost.
    pub const RINGBUF_FULL: u32 = 0;
    /// `bpf_get_stackid` failed for a kernel stack (bucket collision or map full).
    pub const KERNEL_STACK: u32 = 1;
    /// `bpf_get_stackid` failed for a user stack.
    pub const USER_STACK: u32 = 2;
    /// A followed-set map was full, so a new thread or process could not be followed.
    pub const FOLLOW_MAP_FULL: u32 = 3;
    /// Number of counters.
    pub const COUNT: u32 = 4;
}

/// Sentinel for "no stack" in [`Event::kernel_stack_id`] / [`Event::user_stack_id`].
pub const NO_STACK: i32 = -1;
/// Sentinel for "not in a syscall" in [`Event::syscall`].
pub const NO_SYSCALL: i32 = -1;
/// Size of the syscall-number table the agent fills with wait points.
pub const MAX_SYSCALL_NR: u32 = 512;

/// Syscall numbers both sides decide on (x86-64, asm/unistd_64.h). The agent's name table
/// (`syscalls.rs`) checks they match its names.
pub mod syscall_nr {
    /// Where a thread waits for a lock (a mutex, the GIL) and where tokio's idle workers park.
    pub const FUTEX: i32 = 202;
}

/// Names (comm, at most 15 bytes) an async runtime gives the worker threads that park in its
/// runtime-only wait points (`wait_mark::RUNTIME_ONLY`): tokio's idle workers in `futex`.
/// "tokio-rt-worker" since tokio 1.42, "tokio-runtime-worker" (cut to 15 bytes) before. The
/// kernel side (which thread's park skips its stack copy) and the agent (which futex is a wait
/// for work, not a lock) both decide with [`is_runtime_worker`].
pub const RUNTIME_WORKER_NAMES: [&[u8]; 2] = [b"tokio-rt-worker", b"tokio-runtime-w"];

/// Whether a thread named `comm` is a runtime's worker: `comm` is the kernel's NUL-padded
/// 16 bytes or the agent's name as text; a name starting with one of [`RUNTIME_WORKER_NAMES`].
/// Plain bounded loops (no `memcmp`), so that the eBPF programs can call it.
#[inline(always)]
pub fn is_runtime_worker(comm: &[u8]) -> bool {
    let mut n = 0;
    while n < RUNTIME_WORKER_NAMES.len() {
        if starts_with(comm, RUNTIME_WORKER_NAMES[n]) {
            return true;
        }
        n += 1;
    }
    false
}

#[inline(always)]
fn starts_with(text: &[u8], prefix: &[u8]) -> bool {
    if text.len() < prefix.len() {
        return false;
    }
    let mut i = 0;
    while i < prefix.len() {
        if text[i] != prefix[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Values of the agent's wait-point table (`WAIT_POINTS` map, indexed by syscall number).
pub mod wait_mark {
    /// Not a wait point.
    pub const NONE: u32 = 0;
    /// A wait for work for every thread (epoll_wait, poll, select, ...).
    pub const EVERY_THREAD: u32 = 1;
    /// A wait for work only for a runtime's own workers ([`super::is_runtime_worker`]); for
    /// anyone else the same syscall is a lock wait whose stack matters.
    pub const RUNTIME_ONLY: u32 = 2;
}

/// One record in the ring buffer. The meaning of `arg0`, `arg1`, `aux` and `syscall` depends on
/// `kind` (-: 0, or [`NO_SYSCALL`]):
///
/// | kind       | arg0                | arg1              | aux              | syscall        |
/// |------------|---------------------|-------------------|------------------|----------------|
/// | SWITCH_OUT | prev_state          | copy flags¹, GIL² | GIL holder² or 0 | it is in       |
/// | SWITCH_IN  | -                   | -                 | -                | -              |
/// | WAKING     | waker tgid<<32\|tid | waker copied³     | target cpu or 0  | -              |
/// | WAKEUP     | waker tgid<<32\|tid | -                 | target cpu or 0  | -              |
/// | WAIT_ENTER | -                   | -                 | -                | the wait point |
/// | WAIT_EXIT  | return value        | -                 | -                | the wait point |
/// | SAMPLE     | -                   | copy flags¹       | -                | it is in       |
/// | FORK       | child tid           | -                 | -                | -              |
/// | EXIT       | -                   | -                 | group_dead (0/1) | -              |
/// | EXEC       | old tid             | -                 | -                | -              |
/// | EXIT_CALL  | exit status         | -                 | -                | exit(_group)   |
/// | SIGNAL     | signal number       | -                 | result           | -              |
///
/// ¹ [`USER_STACK_COPIED`] and [`PY_STACK_COPIED`]: the thread's user-stack copy / Python stack
/// record was sent just before this event. ² [`GIL_HELD_BY_OTHER`]: asleep in a futex while
/// another thread of its process held the GIL; `aux` is the holder's tid (0 if not known yet).
/// ³ [`USER_STACK_COPIED`] when the waker's user stack was copied; otherwise its stacks, if
/// taken, are stack ids.
///
/// `comm` is the current task's: the thread switched out for SWITCH_OUT, the waker for
/// WAKING/WAKEUP, the thread itself for FORK, EXIT and EXEC; empty for the other kinds.
///
/// `pid`/`tid` always name the thread the event is about (for WAKING that is the woken thread,
/// not the waker). For events taken in another task's context (SWITCH_IN, WAKING, WAKEUP), `pid`
/// is the followed-set's record of the thread's process and may lag for a brand-new process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// Per-CPU sequence number, incremented for every event attempted on that CPU, written or
    /// not: a gap tells the agent exactly where (which CPU, between which times) events were lost.
    pub seq: u64,
    pub arg0: u64,
    pub arg1: u64,
    pub kind: u32,
    pub cpu: u32,
    /// Thread group id (process id).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    pub kernel_stack_id: i32,
    pub user_stack_id: i32,
    /// Syscall number the thread is in, or [`NO_SYSCALL`].
    pub syscall: i32,
    pub aux: u32,
    /// `comm` of the thread (NUL-padded).
    pub comm: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<Event>() == 80);

/// Byte offsets of tracepoint fields, read by the agent from tracefs `format` files at start-up
/// (they differ between kernels) and handed to the programs as a global.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TracepointOffsets {
    pub switch_prev_pid: u32,
    pub switch_prev_state: u32,
    pub switch_next_pid: u32,
    pub wakeup_pid: u32,
    pub wakeup_target_cpu: u32,
    pub fork_parent_pid: u32,
    pub fork_child_pid: u32,
    pub exit_pid: u32,
    /// `u32::MAX` when the kernel has no `group_dead` field.
    pub exit_group_dead: u32,
    pub exec_pid: u32,
    pub exec_old_pid: u32,
    pub sys_enter_id: u32,
    pub sys_enter_args: u32,
    pub sys_exit_id: u32,
    pub sys_exit_ret: u32,
    /// signal:signal_generate fields; `FIELD_ABSENT` when the tracepoint is missing.
    pub signal_sig: u32,
    pub signal_pid: u32,
    pub signal_result: u32,
    /// `__syscall_nr` and the first argument in the per-syscall `syscalls:sys_enter_NAME`
    /// records, `__syscall_nr` and `ret` in `syscalls:sys_exit_NAME` (the same for every
    /// syscall; read from epoll_wait's).
    pub syscall_enter_nr: u32,
    pub syscall_enter_args: u32,
    pub syscall_exit_nr: u32,
    pub syscall_exit_ret: u32,
}

const _: () = assert!(core::mem::size_of::<TracepointOffsets>() == 88);

impl TracepointOffsets {
    /// All zero: the value compiled into the programs, always replaced by the agent at load.
    pub const UNSET: Self = Self {
        switch_prev_pid: 0,
        switch_prev_state: 0,
        switch_next_pid: 0,
        wakeup_pid: 0,
        wakeup_target_cpu: 0,
        fork_parent_pid: 0,
        fork_child_pid: 0,
        exit_pid: 0,
        exit_group_dead: FIELD_ABSENT,
        exec_pid: 0,
        exec_old_pid: 0,
        sys_enter_id: 0,
        sys_enter_args: 0,
        sys_exit_id: 0,
        sys_exit_ret: 0,
        signal_sig: FIELD_ABSENT,
        signal_pid: FIELD_ABSENT,
        signal_result: FIELD_ABSENT,
        syscall_enter_nr: 0,
        syscall_enter_args: 0,
        syscall_exit_nr: 0,
        syscall_exit_ret: 0,
    };
}

/// Where the raw scheduler tracepoints find what they need in a `struct task_struct` (their
/// arguments are task pointers): byte offsets from the kernel's BTF, read by the agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskOffsets {
    pub pid: u32,
    /// `__state` (`state` before 5.14).
    pub state: u32,
    /// What `task_cpu()` reads.
    pub cpu: u32,
    /// 1 when the raw sched_switch passes `prev_state` (5.18+).
    pub switch_has_state: u32,
}

impl TaskOffsets {
    pub const UNSET: Self = Self {
        pid: 0,
        state: 0,
        cpu: 0,
        switch_has_state: 0,
    };
}

/// Absent optional tracepoint field.
pub const FIELD_ABSENT: u32 = u32::MAX;

/// `Event::arg1` flag on SWITCH_OUT and SAMPLE: a [`UserStackCopy`] for this thread was sent
/// just before this event (same CPU, so it precedes it in the ring buffer).
pub const USER_STACK_COPIED: u64 = 1;

/// Largest user-stack copy the programs can send; the agent picks the size used, up to this.
pub const MAX_STACK_COPY: usize = 32768;

/// Header of a user-stack copy: the registers an unwinder starts from, and how many bytes of
/// stack (from `sp` upwards) follow. The record's total size tells it apart from an [`Event`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserStackHeader {
    pub ts_ns: u64,
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    pub pid: u32,
    pub tid: u32,
    /// Bytes of stack copied (the record carries exactly this many after the header).
    pub len: u32,
    /// [`STACK_REPEATED`] when no bytes follow because the stack is the thread's previous one.
    pub flags: u32,
}

/// [`UserStackHeader::flags`]: the thread is at the same place as at its previous copy (same
/// registers, same top of stack): the agent reuses that unwind instead of a new copy.
pub const STACK_REPEATED: u32 = 1;

/// Bytes at the top of the stack compared to tell a repeated stack.
pub const STACK_REPEAT_PROBE: usize = 512;

/// What the kernel side remembers of a thread's last stack copy.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LastStack {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
    /// Checksum of the top STACK_REPEAT_PROBE bytes.
    pub sum: u64,
}

const _: () = assert!(core::mem::size_of::<UserStackHeader>() == 48);

/// The per-CPU scratch record a user-stack copy is assembled in before it is sent.
#[repr(C)]
pub struct UserStackCopy {
    pub header: UserStackHeader,
    pub data: [u8; MAX_STACK_COPY],
}

/// `Event::arg1` flag on SWITCH_OUT and SAMPLE: a [`PyStackHeader`] record with this thread's
/// Python frames was sent just before this event (after the user-stack copy, if any).
pub const PY_STACK_COPIED: u64 = 2;

/// `Event::arg1` flag on SWITCH_OUT: the thread went to sleep in a futex while another thread
/// of its Python process held the GIL; `Event::aux` is that holder's tid (0 if not known yet).
pub const GIL_HELD_BY_OTHER: u64 = 4;

/// `Event::arg1` flag on SWITCH_IN: the scheduler tracepoint never fired for this switch-in
/// (the task that ran before it is one the kernel does not trace: its own switch-out is not
/// reported), so the kernel side found the thread running on that CPU at its next event there
/// (a sample, a switch-out, a wait point) and sends this then, stamped then. `Event::arg0` is
/// when it was switched in (CLOCK_MONOTONIC ns, from the task's `sched_info.last_arrival`
/// moved to that clock by the offset measured at traced switch-ins on that CPU; 0: not known).
pub const SWITCH_IN_UNTRACED: u64 = 8;

/// `Event::arg1` flag on SWITCH_OUT: the thread blocked in a syscall; only its kernel stack was
/// taken. Its user and Python stacks follow in a [`kind::LATE_STACKS`] event when it leaves the
/// syscall, if it was off-CPU at least 1/[`LATE_STACK_FRACTION`] of the stall threshold.
pub const LATE_STACKS_PENDING: u64 = 16;

/// Late capture's rule: a thread blocked in a syscall has its user stack copied and its Python
/// frames walked when it leaves the syscall, and only when it was off-CPU at least this
/// fraction of the threshold (1 ms at the default 100 ms): a hundred shorter blocks would be
/// needed to make one stall, and most blocks of a busy process are microseconds. Shorter ones
/// keep their time and kernel stack, without user frames.
pub const LATE_STACK_FRACTION: u64 = 100;

/// Python frames walked per stack; deeper stacks keep their innermost frames.
pub const MAX_PY_FRAMES: usize = 96;
/// Steps of the Python frame walk (frames, and the C-stack shims of 3.12+) in the programs
/// built for kernels without `bpf_loop` (before 5.17), in a bounded loop the verifier walks
/// step by step: the innermost frames only, said as "Python frames limited to N per stack".
/// 0: no walk there. Measured: 16 steps exceed the verifier's million instructions (22 s to
/// refuse on 6.18); 4 steps load on 6.18 but keep 5.10's verifier busy for minutes under
/// emulation; 2 steps verify there and name the innermost frames on 5.10 and 6.12.
pub const COMPAT_PY_FRAMES: usize = 2;
pub const COMPAT_PY_THREADS: usize = 2;

/// Where a followed process's CPython keeps its state, and the field offsets of its version:
/// everything the kernel side needs to walk a thread's frames (PYTHON_LAYOUTS.md, section 8).
/// Filled by the agent per process; offsets are relative to the struct they belong to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyProcess {
    /// Address of `_PyRuntime` in the process.
    pub runtime: u64,
    /// Address of the GIL's `_gil_runtime_state` when it sits at a fixed place (3.9 to 3.11);
    /// 0 when it hangs off the interpreter (`gil_in_interp`).
    pub gil_static: u64,
    /// `_PyRuntime.interpreters.head`.
    pub interp_head: u32,
    /// `interp->tstate_head` / `interp->threads.head`.
    pub threads_head: u32,
    /// Pointer to the GIL in the interpreter (3.12+), or [`FIELD_ABSENT`].
    pub gil_in_interp: u32,
    pub tstate_next: u32,
    /// `native_thread_id` (compared with the tid) or, before 3.11, `thread_id` (= pthread_self,
    /// compared with the task's fs_base).
    pub tstate_thread_id: u32,
    /// 1 when `tstate_thread_id` holds a pthread_t (compare with fs_base).
    pub thread_id_is_pthread: u32,
    /// Offset of the top frame (or of `cframe`) in the thread state.
    pub tstate_frame: u32,
    /// Offset of `current_frame` in `_PyCFrame` (3.11, 3.12), or [`FIELD_ABSENT`].
    pub cframe_frame: u32,
    pub frame_back: u32,
    pub frame_code: u32,
    /// `f_lasti` (an i32, before 3.11) or the instruction pointer (3.11+).
    pub frame_ip: u32,
    /// 1 when `frame_ip` is a pointer (3.11+).
    pub ip_is_pointer: u32,
    /// `owner` (3.11+) or [`FIELD_ABSENT`].
    pub frame_owner: u32,
    /// `is_entry` (3.11 only) or [`FIELD_ABSENT`].
    pub frame_is_entry: u32,
    /// Code object of asyncio's `Handle._run` once the agent has seen it (0 before): at that
    /// frame the kernel side reads the handle's callback, which leads to the running Task.
    pub handle_run_code: u64,
    /// Offset of a frame's first local (`self` in `Handle._run`).
    pub frame_locals: u32,
    /// Offset of the running asyncio Task in the thread state (3.14+, from the asyncio debug
    /// offsets), or [`FIELD_ABSENT`]: read at sample time into [`PyStackHeader::running_task`].
    pub tstate_running_task: u32,
    /// ANDed with the frame's code field: 3.14+ keeps it as a tagged `_PyStackRef` (the low
    /// bits are tags, not address); all ones before.
    pub code_mask: u64,
}

const _: () = assert!(core::mem::size_of::<PyProcess>() == 96);

/// Per-frame flag in [`PyFrame::flags`]: this frame is the outermost of one run of the
/// interpreter loop (`_PyEval_EvalFrameDefault`): the agent replaces one native eval frame with
/// the Python frames up to and including this one.
pub const PY_FRAME_ENTRY: u32 = 1;

/// Frame owners from this value up are not Python code: the C-stack shim of 3.12/3.13
/// (`FRAME_OWNED_BY_CSTACK` = 3), the eval-loop entry frame of 3.14+
/// (`FRAME_OWNED_BY_INTERPRETER` = 3, also the 3.15 `base_frame` sentinel) and 3.14's
/// `FRAME_OWNED_BY_CSTACK` = 4. Each one ends a run of the interpreter loop.
pub const PY_FRAME_OWNER_NOT_CODE: u8 = 3;

/// One Python frame as the kernel saw it; the agent decodes the code object.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyFrame {
    /// Address of the code object.
    pub code: u64,
    /// Instruction pointer (3.11+) or `f_lasti` (before 3.11).
    pub ip: u64,
    /// Address of the frame itself.
    pub frame: u64,
    pub flags: u32,
    /// On the outermost frame of a run ([`PY_FRAME_ENTRY`], 3.12+): the low 32 bits of the
    /// address of the entry (shim) frame after it, 0 when unknown. That frame is a local of the
    /// C function running the interpreter loop, so it lies inside that function's native stack
    /// frame: the agent finds where the run goes in the native stack by stack address (which
    /// survives stripped binaries and tail-calling interpreters), rebuilding the full address
    /// from the stack pointer (the shim is above it, within 4 GiB).
    pub entry_shim_low32: u32,
}

const _: () = assert!(core::mem::size_of::<PyFrame>() == 32);

/// Header of a Python stack record: `depth` [`PyFrame`]s follow, innermost first. Its size is
/// 8 modulo 16, which tells the record apart from an [`Event`] and a user-stack copy (whose sizes
/// are multiples of 16).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PyStackHeader {
    pub ts_ns: u64,
    /// The thread state walked.
    pub tstate: u64,
    pub pid: u32,
    pub tid: u32,
    pub depth: u32,
    /// 1 when the walk stopped at MAX_PY_FRAMES with frames left.
    pub truncated: u32,
    pub magic: u64,
    /// At a `Handle._run` frame (see [`PyProcess::handle_run_code`]): the handle, and the two
    /// words of its callback where a Task step wrapper or a bound Task method keeps its Task.
    /// Read now, because by the time the agent looks the frame may be gone.
    pub handle: u64,
    pub task_candidates: [u64; 2],
    /// The thread's running asyncio Task at sample time (3.14+, see
    /// [`PyProcess::tstate_running_task`]), 0 when none or not known.
    pub running_task: u64,
}

impl PyStackHeader {
    /// Written by the kernel side; the agent checks it before trusting the record.
    pub const MAGIC: u64 = 0x7079_7374_6163_6b31; // "pystack1"
}

/// Size of [`PyStackHeader`] (72 bytes, 8 modulo 16).
pub const PY_STACK_HEADER_SIZE: usize = 72;
const _: () = assert!(core::mem::size_of::<PyStackHeader>() == PY_STACK_HEADER_SIZE);

/// The per-CPU scratch record a Python stack is assembled in.
#[repr(C)]
pub struct PyStackCopy {
    pub header: PyStackHeader,
    pub frames: [PyFrame; MAX_PY_FRAMES],
}

/// `stallscope watch`: which new processes the kernel side starts following by itself, at exec
/// and fork, before their first instruction runs (bits of the `MATCH_ON` global; 0 for `record`).
pub mod matching {
    /// The command name (`comm`) is matched against the [`super::MatchPattern`]s of kind COMM.
    pub const COMM: u32 = 1;
    /// The path given to exec is matched against the patterns of kind EXE (at exec only).
    pub const EXE: u32 = 2;
    /// The task's cgroup (v2 id) is looked up in `MATCH_CGROUPS`.
    pub const CGROUP: u32 = 4;
}

/// Glob patterns (`*`, `?`, literal bytes) the kernel side matches new processes with.
pub const MAX_MATCH_PATTERNS: u32 = 16;
/// Longest pattern, in bytes.
pub const MATCH_PATTERN_BYTES: usize = 64;
/// Bytes of the exec'd path matched (longer paths are matched on their first bytes).
pub const MATCH_TEXT_BYTES: usize = 256;
/// Cgroups (with their descendants, listed one by one by the agent) followed by `--cgroup`.
pub const MAX_MATCH_CGROUPS: u32 = 4096;

/// One `--comm`/`--exe` glob, as the agent hands it to the kernel side.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatchPattern {
    /// [`matching::COMM`] or [`matching::EXE`]; 0 for an unused slot.
    pub kind: u32,
    /// Bytes used in `bytes`.
    pub len: u32,
    pub bytes: [u8; MATCH_PATTERN_BYTES],
}

const _: () = assert!(core::mem::size_of::<MatchPattern>() == 72);

impl Default for MatchPattern {
    fn default() -> Self {
        MatchPattern {
            kind: 0,
            len: 0,
            bytes: [0; MATCH_PATTERN_BYTES],
        }
    }
}

/// The kernel side's scratch state of one glob match (per CPU; see `glob_step` there).
#[repr(C)]
pub struct GlobState {
    pub text: [u8; MATCH_TEXT_BYTES],
    pub text_len: u32,
    pub pattern: u32,
    pub p: u32,
    pub s: u32,
    /// Position of the last `*` seen in the pattern, or `u32::MAX`.
    pub star: u32,
    pub mark: u32,
    /// 0 while running, 1 matched, 2 did not.
    pub result: u32,
    pub _reserved: u32,
}

impl GlobState {
    /// Steps a match of `text[..text_len]` against a pattern may take: the greedy matcher with
    /// one backtracking point is at most quadratic.
    pub fn max_steps(&self, pattern: &MatchPattern) -> u32 {
        (self.text_len.min(MATCH_TEXT_BYTES as u32) + 2)
            * (pattern.len.min(MATCH_PATTERN_BYTES as u32) + 2)
    }

    /// Starts a match of the text against pattern slot `pattern`.
    pub fn reset(&mut self, pattern: u32) {
        self.pattern = pattern;
        self.p = 0;
        self.s = 0;
        self.star = u32::MAX;
        self.mark = 0;
        self.result = 0;
    }

    /// One step of the glob match (`*` any run of bytes, `?` any byte, anything else itself);
    /// true once `result` is decided. Written as single steps so the kernel side can run it
    /// under `bpf_loop`; the masks keep every index provably in bounds for the verifier.
    #[inline(always)]
    pub fn step(&mut self, pattern: &MatchPattern) -> bool {
        let plen = if pattern.len as usize > MATCH_PATTERN_BYTES {
            MATCH_PATTERN_BYTES as u32
        } else {
            pattern.len
        };
        let tlen = if self.text_len as usize > MATCH_TEXT_BYTES {
            MATCH_TEXT_BYTES as u32
        } else {
            self.text_len
        };
        let (p, s) = (self.p, self.s);
        let pc = if p < plen {
            Some(pattern.bytes[p as usize & (MATCH_PATTERN_BYTES - 1)])
        } else {
            None
        };
        if s < tlen {
            let c = self.text[s as usize & (MATCH_TEXT_BYTES - 1)];
            match pc {
                Some(b'*') => {
                    self.star = p;
                    self.mark = s;
                    self.p = p + 1;
                    return false;
                }
                Some(pc) if pc == b'?' || pc == c => {
                    self.p = p + 1;
                    self.s = s + 1;
                    return false;
                }
                _ => {}
            }
            if self.star != u32::MAX {
                self.p = self.star + 1;
                self.mark += 1;
                self.s = self.mark;
                return false;
            }
            self.result = 2;
            return true;
        }
        // The text is used up: only trailing stars may be left of the pattern.
        if pc == Some(b'*') {
            self.p = p + 1;
            return false;
        }
        self.result = if p >= plen { 1 } else { 2 };
        true
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: both types are repr(C), made only of integers and arrays of integers, and have no
    // padding (asserted by the size checks above), so every bit pattern is valid.
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::TracepointOffsets {}
    unsafe impl aya::Pod for super::TaskOffsets {}
    unsafe impl aya::Pod for super::PyProcess {}
    unsafe impl aya::Pod for super::MatchPattern {}
}

impl MatchPattern {
    /// A pattern slot of `kind` (None when the pattern is longer than MATCH_PATTERN_BYTES).
    pub fn new(kind: u32, pattern: &[u8]) -> Option<Self> {
        if pattern.len() > MATCH_PATTERN_BYTES {
            return None;
        }
        let mut slot = MatchPattern {
            kind,
            len: pattern.len() as u32,
            ..MatchPattern::default()
        };
        slot.bytes[..pattern.len()].copy_from_slice(pattern);
        Some(slot)
    }

    /// Whether `text` matches, by the very steps the kernel side runs (texts longer than
    /// MATCH_TEXT_BYTES are matched on their first bytes, as there).
    pub fn matches(&self, text: &[u8]) -> bool {
        let mut state = GlobState {
            text: [0; MATCH_TEXT_BYTES],
            text_len: 0,
            pattern: 0,
            p: 0,
            s: 0,
            star: u32::MAX,
            mark: 0,
            result: 0,
            _reserved: 0,
        };
        let len = text.len().min(MATCH_TEXT_BYTES);
        state.text[..len].copy_from_slice(&text[..len]);
        state.text_len = len as u32;
        state.reset(0);
        for _ in 0..state.max_steps(self) {
            if state.step(self) {
                break;
            }
        }
        state.result == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glob(pattern: &str, text: &str) -> bool {
        MatchPattern::new(matching::COMM, pattern.as_bytes())
            .map(|p| p.matches(text.as_bytes()))
            .unwrap_or(false)
    }

    #[test]
    fn glob_matches_like_a_shell() {
        assert!(glob("python3*", "python3.11"));
        assert!(glob("python3*", "python3"));
        assert!(!glob("python3*", "python"));
        assert!(glob("*loop", "stress_loop"));
        assert!(!glob("*loop", "stress_loops"));
        assert!(glob("st?ll", "stall"));
        assert!(!glob("st?ll", "stl"));
        assert!(glob("*", ""));
        assert!(glob("", ""));
        assert!(!glob("", "x"));
        assert!(glob("*/bin/*py*", "/usr/bin/python3.11"));
        assert!(glob("a*b*c", "aXXbYYbZZc"));
        assert!(!glob("a*b*c", "aXXbYYbZZ"));
        assert!(glob("**x", "abx"));
        // Literal bytes only: no classes, and a star in the text is just a byte.
        assert!(glob("a*", "a*"));
        assert!(!glob("[ab]", "a"));
    }

    #[test]
    fn glob_steps_stay_within_the_bound_the_kernel_gives_them() {
        // Worst case for one backtracking point: many stars and near misses.
        let pattern =
            MatchPattern::new(matching::EXE, b"*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b").unwrap_or_default();
        let text = [b'a'; MATCH_TEXT_BYTES];
        let mut state = GlobState {
            text,
            text_len: MATCH_TEXT_BYTES as u32,
            pattern: 0,
            p: 0,
            s: 0,
            star: u32::MAX,
            mark: 0,
            result: 0,
            _reserved: 0,
        };
        state.reset(0);
        let mut steps = 0;
        while !state.step(&pattern) {
            steps += 1;
            assert!(steps < state.max_steps(&pattern), "too many steps");
        }
        assert_eq!(state.result, 2);
    }

    /// Both sides' inputs: the kernel's NUL-padded comm and the agent's thread name as text.
    #[test]
    fn runtime_workers_are_told_by_name_the_same_way_on_both_sides() {
        let kernel = |name: &[u8]| {
            let mut comm = [0u8; 16];
            comm[..name.len()].copy_from_slice(name);
            is_runtime_worker(&comm)
        };
        for worker in ["tokio-rt-worker", "tokio-runtime-w"] {
            assert!(kernel(worker.as_bytes()), "{worker} (kernel)");
            assert!(is_runtime_worker(worker.as_bytes()), "{worker} (agent)");
        }
        // Names the kernel's old `tokio-r` prefix took for workers while the agent did not: a
        // futex there is a lock wait, whose stack must be copied.
        for other in ["tokio-r", "tokio-rayon", "tokio-rt-blocki", "python3", ""] {
            assert!(!kernel(other.as_bytes()), "{other} (kernel)");
            assert!(!is_runtime_worker(other.as_bytes()), "{other} (agent)");
        }
    }
}
