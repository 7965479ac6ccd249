//! asyncio (3.14+): the running Task of a thread and the chain of Tasks awaiting it, read from
//! the event loop's memory with the `AsyncioDebug` offsets.

use super::*;

/// Awaiters followed up from the running Task (a chain longer than this is cut).
pub(super) const MAX_AWAIT_CHAIN: usize = 16;
/// Set slots looked at for a Task's awaiters.
pub(super) const MAX_SET_SLOTS: u64 = 1024;

/// How often a 3.14 process running coroutines without a known asyncio table is looked at again.
pub(super) const ASYNCIO_RECHECK: Duration = Duration::from_secs(2);

impl Pythons {
    /// 3.14 keeps asyncio's table in the `_asyncio` extension: a process that imported asyncio
    /// after it was found gets it now (the kernel side then reads its running Tasks).
    pub(super) fn find_asyncio_later(&mut self, pid: u32) {
        let Some(process) = self.processes.get_mut(&pid) else {
            return;
        };
        if process.interpreter.minor < 14
            || process.interpreter.asyncio.is_some()
            || process
                .asyncio_checked
                .is_some_and(|at| at.elapsed() < ASYNCIO_RECHECK)
        {
            return;
        }
        process.asyncio_checked = Some(Instant::now());
        // Only live processes get here (a replay decodes no Python stacks).
        let proc = procfs::LiveProc;
        let Some(maps) = procfs::ProcReader::maps(&proc, pid) else {
            return;
        };
        if let Some(asyncio) = asyncio_extension(&proc, pid, &maps) {
            process.interpreter.asyncio = Some(asyncio);
            self.changed.push(pid);
        }
    }

    /// 3.14+: the Task the kernel found running on the thread (the thread state's
    /// `asyncio_running_task`, from the AsyncioDebug table), its name and coroutine, and the
    /// Tasks awaiting it, as `python -m asyncio pstree` shows them. None when the object is no
    /// Task any more (the agent reads after the fact; the stack's frames are used then).
    pub(super) fn running_task(
        &mut self,
        pid: u32,
        task: u64,
        decoded: &[DecodedFrame],
    ) -> Option<TaskInfo> {
        let process = self.processes.get(&pid)?;
        let asyncio = process.interpreter.asyncio?;
        let memory = process.memory.as_ref()?;
        let layout = &process.interpreter.layout;
        let minor = process.interpreter.minor;
        let mut info = task_ref(memory, minor, layout, &asyncio, task)?;
        // The stack's own outermost coroutine frame, when the Task's coroutine object cannot be
        // read (the names are the same: a Task runs its coroutine).
        if info.coroutine.is_empty()
            && let Some(frame) = decoded.iter().rev().find(|f| f.coroutine)
        {
            info.coroutine = frame.frame.function.to_string();
        }
        let mut awaited_by = Vec::new();
        let mut current = task;
        let mut seen = vec![task];
        while awaited_by.len() < MAX_AWAIT_CHAIN {
            let Some(awaiter) = first_awaiter(memory, layout, &asyncio, current) else {
                break;
            };
            if seen.contains(&awaiter) {
                break;
            }
            let Some(awaiter_info) = task_ref(memory, minor, layout, &asyncio, awaiter) else {
                break;
            };
            awaited_by.push(TaskRef {
                name: awaiter_info.name,
                coroutine: awaiter_info.coroutine,
            });
            seen.push(awaiter);
            current = awaiter;
        }
        Some(TaskInfo {
            name: info.name,
            coroutine: info.coroutine,
            awaited_by,
        })
    }
}

/// A Task's name and its coroutine's qualname; None when `task` is not an asyncio Task.
pub(super) fn task_ref(
    memory: &Memory,
    minor: u32,
    layout: &Layout,
    asyncio: &AsyncioOffsets,
    task: u64,
) -> Option<TaskRef> {
    if !type_name(memory, task)?.ends_with("Task") {
        return None;
    }
    let is_task = memory.bytes(task + asyncio.task_is_task, 1)?;
    if is_task[0] == 0 {
        return None;
    }
    let name = memory
        .u64(task + asyncio.task_name)
        .and_then(|obj| name_of(memory, minor, obj, layout));
    let coroutine = memory
        .u64(task + asyncio.task_coro)
        .zip(layout.gi_qualname)
        .and_then(|(coro, qualname)| memory.u64(coro + qualname))
        .filter(|&obj| type_name(memory, obj).is_some_and(|t| t == "str"))
        .and_then(|obj| memory.string(obj, &layout.code, MAX_NAME))
        .unwrap_or_default();
    Some(TaskRef { name, coroutine })
}

/// One Task awaiting `task` (`task_awaited_by`: one Task, or a set of them when several).
pub(super) fn first_awaiter(
    memory: &Memory,
    layout: &Layout,
    asyncio: &AsyncioOffsets,
    task: u64,
) -> Option<u64> {
    let awaited_by = memory.u64(task + asyncio.task_awaited_by)?;
    if awaited_by == 0 {
        return None;
    }
    let is_set = memory.bytes(task + asyncio.task_awaited_by_is_set, 1)?[0] != 0;
    if !is_set {
        return Some(awaited_by);
    }
    // A set: its table of (key, hash) entries; the first live entry that is a Task.
    let set = layout.set?;
    let table = memory.u64(awaited_by + set.table)?;
    let slots = (memory.u64(awaited_by + set.mask)? + 1).min(MAX_SET_SLOTS);
    (0..slots).find_map(|slot| {
        let key = memory.u64(table + 16 * slot)?;
        (key != 0 && type_name(memory, key).is_some_and(|t| t.ends_with("Task"))).then_some(key)
    })
}

/// asyncio's `Handle._run` (3.11+ qualname; older versions only say `_run`).
pub(super) fn is_handle_run(frame: &Frame) -> bool {
    (&*frame.function == "Handle._run" || &*frame.function == "_run")
        && frame
            .file
            .as_deref()
            .is_some_and(|f| f.ends_with("asyncio/events.py"))
}

/// The coroutine object a coroutine frame belongs to: 3.11+ frames live inside it
/// (`cr_iframe`); older frames point to it (`f_gen`).
pub(super) fn coroutine_object(memory: &Memory, layout: &Layout, frame: u64) -> Option<u64> {
    match layout.minor {
        9 => memory.u64(frame + 0x60),
        10 => memory.u64(frame + 0x58),
        _ => frame.checked_sub(layout.gi_iframe),
    }
    .filter(|&addr| addr != 0)
}

/// A coroutine's `__qualname__` (before 3.11): the str among its first fields that ends with
/// its code's name and qualifies it (`Class.method`); the field order differs between versions.
pub(super) fn coroutine_qualname(
    memory: &Memory,
    coroutine: u64,
    name: &str,
    layout: &Layout,
) -> Option<String> {
    let fields = memory.bytes(coroutine + 0x10, 8 * 10)?;
    fields.chunks_exact(8).find_map(|field| {
        let obj = u64::from_le_bytes(field.try_into().ok()?);
        if obj == 0 || type_name(memory, obj)? != "str" {
            return None;
        }
        let text = memory.string(obj, &layout.code, MAX_NAME)?;
        (text.len() > name.len() && text.ends_with(&format!(".{name}"))).then_some(text)
    })
}

/// Name of an object's type (`ob_type->tp_name`).
pub(super) fn type_name(memory: &Memory, obj: u64) -> Option<String> {
    let ty = memory.u64(obj.checked_add(0x8)?)?;
    if let Ok(cache) = memory.type_names.try_borrow()
        && let Some((text, read)) = cache.get(&ty)
        && read.elapsed() < RECHECK
    {
        return Some(text.clone());
    }
    let name = memory.u64(ty.checked_add(0x18)?)?;
    let bytes = memory.bytes(name, 32)?;
    let len = bytes.iter().position(|&b| b == 0)?;
    let text = String::from_utf8(bytes[..len].to_vec()).ok()?;
    if let Ok(mut cache) = memory.type_names.try_borrow_mut() {
        if cache.len() >= MAX_TYPE_NAMES {
            cache.clear();
        }
        cache.insert(ty, (text.clone(), Instant::now()));
    }
    Some(text)
}

/// A Task found for a coroutine: where its `task_coro` field is (the name object follows).
pub(super) struct FoundTask {
    pub(super) coro_field: u64,
    pub(super) name_obj: u64,
    pub(super) name: String,
}

/// A task name object's text: a str, or the number of a default name (3.13).
pub(super) fn name_of(
    memory: &Memory,
    minor: u32,
    name_obj: u64,
    layout: &Layout,
) -> Option<String> {
    match type_name(memory, name_obj)?.as_str() {
        "str" => memory.string(name_obj, &layout.code, MAX_NAME),
        // 3.13 keeps the default name as a number until someone asks for it.
        "int" => small_int(memory, minor, name_obj).map(|n| format!("Task-{n}")),
        _ => None,
    }
}

/// The Task behind a Handle: its callback is the Task's step or wake-up, a small wrapper object
/// (3.9 to 3.11, and the step in 3.12+) or a builtin method bound to the Task (the wake-up in
/// 3.12+). Handle's __slots__ (sorted by name) start after the object header.
pub(super) fn task_from_handle(memory: &Memory, handle: u64) -> Option<u64> {
    (0..8).find_map(|slot| {
        let value = memory.u64(handle + 0x10 + 8 * slot)?;
        let callback_type = type_name(memory, value)?;
        let task = if callback_type.ends_with("TaskStepMethWrapper")
            || callback_type.ends_with("TaskWakeupMethWrapper")
        {
            memory.u64(value + 0x10)?
        } else if callback_type == "builtin_function_or_method" {
            memory.u64(value + 0x18)?
        } else {
            return None;
        };
        type_name(memory, task)?.ends_with("Task").then_some(task)
    })
}

/// A Task's name, when it runs `coroutine`: `task_coro` is followed by `task_name` in 3.9 to
/// 3.13.
pub(super) fn task_of(
    memory: &Memory,
    minor: u32,
    task: u64,
    coroutine: u64,
    layout: &Layout,
) -> Option<FoundTask> {
    let fields = memory.bytes(task + 0x10, 8 * 48)?;
    let pointers: Vec<u64> = fields
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
        .collect();
    let index = pointers.iter().position(|&p| p == coroutine)?;
    let name_obj = *pointers.get(index + 1)?;
    let name = name_of(memory, minor, name_obj, layout)?;
    Some(FoundTask {
        coro_field: task + 0x10 + 8 * index as u64,
        name_obj,
        name,
    })
}

/// A non-negative int below 2**60.
pub(super) fn small_int(memory: &Memory, minor: u32, obj: u64) -> Option<u64> {
    let size = memory.u64(obj + 0x10)?;
    let digits = if minor >= 12 { size >> 3 } else { size };
    let raw = memory.bytes(obj + 0x18, 8)?;
    let low = u32::from_le_bytes(raw[0..4].try_into().ok()?) as u64;
    let high = u32::from_le_bytes(raw[4..8].try_into().ok()?) as u64;
    match digits {
        0 => Some(0),
        1 => Some(low),
        2 => Some(low | (high << 30)),
        _ => None,
    }
}
