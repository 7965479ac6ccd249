//! Just enough of the kernel's BTF (`/sys/kernel/btf/vmlinux`) to find field offsets and a
//! tracepoint's argument count: `task_struct.thread.fsbase`, which the Python walker needs
//! before CPython 3.11 (a thread state names its thread only by `pthread_self()`, and that is
//! the thread's fs_base), and the `task_struct` fields the raw scheduler tracepoints read
//! (their arguments are task pointers, not formatted records).
//!
//! aya parses BTF too, but keeps member offsets private; the format is small and stable
//! (<https://docs.kernel.org/bpf/btf.html>), so this reads the type section directly.

use std::collections::HashMap;

use anyhow::{Context as _, Result, bail};

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_PTR: u32 = 2;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_TYPE_TAG: u32 = 18;

struct Type {
    kind: u32,
    name: u32,
    /// Size for structs, the referred type for modifiers and typedefs.
    size_or_type: u32,
    kind_flag: bool,
    /// Members of a struct or union, parameters of a function prototype.
    vlen: usize,
    /// (name offset, type id, bit offset) for struct and union members.
    members: Vec<(u32, u32, u32)>,
}

pub struct Btf {
    strings: Vec<u8>,
    /// Types by id (id 0 is `void`, not stored).
    types: Vec<Type>,
    by_name: HashMap<String, Vec<u32>>,
    typedefs: HashMap<String, u32>,
}

impl Btf {
    pub fn from_sys_fs() -> Result<Self> {
        let path = "/sys/kernel/btf/vmlinux";
        let data = std::fs::read(path).with_context(|| format!("reading {path}"))?;
        Self::parse(&data).with_context(|| format!("parsing {path}"))
    }

    pub fn parse(data: &[u8]) -> Result<Self> {
        let u32_at = |offset: usize| -> Result<u32> {
            let bytes = data
                .get(offset..offset + 4)
                .context("BTF data ends early")?;
            Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
        };
        if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != MAGIC {
            bail!("not little-endian BTF");
        }
        let header_len = u32_at(4)? as usize;
        let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
        let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
        let strings = data
            .get(header_len + str_off..header_len + str_off + str_len)
            .context("BTF string section out of bounds")?
            .to_vec();
        let mut types = Vec::new();
        let mut at = header_len + type_off;
        let end = at + type_len;
        while at + 12 <= end {
            let (name, info, size_or_type) = (u32_at(at)?, u32_at(at + 4)?, u32_at(at + 8)?);
            at += 12;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let mut members = Vec::new();
            if kind == KIND_STRUCT || kind == KIND_UNION {
                for i in 0..vlen {
                    let member = at + i * 12;
                    members.push((u32_at(member)?, u32_at(member + 4)?, u32_at(member + 8)?));
                }
            }
            at += extra_bytes(kind, vlen)?;
            types.push(Type {
                kind,
                name,
                size_or_type,
                kind_flag: info >> 31 == 1,
                vlen,
                members,
            });
        }
        let mut btf = Btf {
            strings,
            types,
            by_name: HashMap::new(),
            typedefs: HashMap::new(),
        };
        for (index, ty) in btf.types.iter().enumerate() {
            if ty.kind == KIND_STRUCT {
                let name = btf.string(ty.name).to_string();
                btf.by_name.entry(name).or_default().push(index as u32 + 1);
            } else if ty.kind == KIND_TYPEDEF {
                let name = btf.string(ty.name).to_string();
                btf.typedefs.entry(name).or_insert(index as u32 + 1);
            }
        }
        Ok(btf)
    }

    fn string(&self, offset: u32) -> &str {
        let rest = self.strings.get(offset as usize..).unwrap_or_default();
        let len = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..len]).unwrap_or("")
    }

    fn get(&self, id: u32) -> Option<&Type> {
        self.types.get(id.checked_sub(1)? as usize)
    }

    /// Follows typedefs and qualifiers to the type they name.
    fn resolve(&self, mut id: u32) -> Option<u32> {
        for _ in 0..32 {
            let ty = self.get(id)?;
            match ty.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = ty.size_or_type
                }
                _ => return Some(id),
            }
        }
        None
    }

    /// Byte offset of `path` (e.g. `["thread", "fsbase"]`) inside struct `name`.
    pub fn field_offset(&self, name: &str, path: &[&str]) -> Option<u32> {
        // Several structs may share a name (from different units); take the one with members.
        let mut id = *self
            .by_name
            .get(name)?
            .iter()
            .find(|&&id| self.get(id).is_some_and(|t| !t.members.is_empty()))?;
        let mut bits = 0u32;
        for field in path {
            let ty = self.get(id)?;
            let &(_, member_type, offset) = ty
                .members
                .iter()
                .find(|(member_name, _, _)| self.string(*member_name) == *field)?;
            bits += if ty.kind_flag {
                offset & 0x00ff_ffff
            } else {
                offset
            };
            id = self.resolve(member_type)?;
        }
        bits.is_multiple_of(8).then_some(bits / 8)
    }
}

impl Btf {
    /// Arguments a raw tracepoint passes (its `TP_PROTO`), from the kernel's
    /// `btf_trace_NAME` typedef: a pointer to a prototype whose first parameter is the probe's
    /// `void *data`, not a tracepoint argument.
    pub fn raw_tracepoint_args(&self, name: &str) -> Option<usize> {
        let typedef = self.get(*self.typedefs.get(&format!("btf_trace_{name}"))?)?;
        let pointer = self.get(typedef.size_or_type)?;
        if pointer.kind != KIND_PTR {
            return None;
        }
        let proto = self.get(pointer.size_or_type)?;
        (proto.kind == KIND_FUNC_PROTO).then(|| proto.vlen.saturating_sub(1))
    }
}

/// Bytes that follow a type's 12-byte common part, by kind.
fn extra_bytes(kind: u32, vlen: usize) -> Result<usize> {
    Ok(match kind {
        1 => 4,                    // INT
        3 => 12,                   // ARRAY
        4 | 5 => 12 * vlen,        // STRUCT, UNION
        6 => 8 * vlen,             // ENUM
        13 => 8 * vlen,            // FUNC_PROTO
        14 => 4,                   // VAR
        15 => 12 * vlen,           // DATASEC
        17 => 4,                   // DECL_TAG
        19 => 12 * vlen,           // ENUM64
        2 | 7..=12 | 16 | 18 => 0, // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG
        other => bail!("unknown BTF kind {other}"),
    })
}

/// Offset of `thread.fsbase` in `struct task_struct` on this kernel (x86-64).
pub fn task_fsbase_offset() -> Result<u32> {
    Btf::from_sys_fs()?
        .field_offset("task_struct", &["thread", "fsbase"])
        .context("task_struct.thread.fsbase not found in the kernel's BTF")
}

/// Offset of `sched_info.last_arrival` in `struct task_struct`: when the task was last put on
/// a CPU (CONFIG_SCHED_INFO, on wherever delay accounting or schedstats are built).
pub fn task_arrival_offset() -> Result<u32> {
    Btf::from_sys_fs()?
        .field_offset("task_struct", &["sched_info", "last_arrival"])
        .context("task_struct.sched_info.last_arrival not found in the kernel's BTF")
}

/// What the raw scheduler tracepoints need to know about `struct task_struct` on this kernel.
pub fn task_offsets() -> Result<profiler_common::TaskOffsets> {
    let btf = Btf::from_sys_fs()?;
    let field = |path: &[&str]| {
        btf.field_offset("task_struct", path).with_context(|| {
            format!(
                "task_struct.{} not found in the kernel's BTF",
                path.join(".")
            )
        })
    };
    // task_cpu(): in thread_info since 5.16 on x86-64, in task_struct before.
    let cpu = field(&["thread_info", "cpu"]).or_else(|_| field(&["cpu"]))?;
    let switch_args = btf
        .raw_tracepoint_args("sched_switch")
        .context("the kernel's BTF has no btf_trace_sched_switch")?;
    Ok(profiler_common::TaskOffsets {
        pid: field(&["pid"])?,
        state: field(&["__state"]).or_else(|_| field(&["state"]))?,
        cpu,
        // (preempt, prev, next, prev_state) since 5.18; before, prev_state is read from prev.
        switch_has_state: u32::from(switch_args >= 4),
    })
}

/// Offset of `stack` (the kernel stack, whose top holds the user registers) in `struct
/// task_struct`: for kernels without bpf_task_pt_regs (before 5.15).
pub fn task_stack_offset() -> Result<u32> {
    Btf::from_sys_fs()?
        .field_offset("task_struct", &["stack"])
        .context("task_struct.stack not found in the kernel's BTF")
}

#[cfg(test)]
mod tests {
    #[test]
    fn task_offsets_on_this_kernel() {
        let Ok(offsets) = super::task_offsets() else {
            return;
        };
        assert!(offsets.pid > 0 && offsets.pid < 16384, "{offsets:?}");
        assert_eq!(offsets.pid % 4, 0);
        assert_eq!(offsets.cpu % 4, 0);
        assert_ne!(offsets.pid, offsets.state);
    }

    #[test]
    fn finds_last_arrival_on_this_kernel() {
        let Ok(offset) = super::task_arrival_offset() else {
            return;
        };
        assert!(offset > 0 && offset < 16384, "offset {offset}");
        assert_eq!(offset % 8, 0);
    }

    #[test]
    fn finds_fsbase_on_this_kernel() {
        // The kernel's own BTF: present on every machine stallscope supports (DESIGN.md).
        let Ok(offset) = super::task_fsbase_offset() else {
            return;
        };
        assert!(offset > 0 && offset < 16384, "offset {offset}");
        assert_eq!(offset % 8, 0);
    }
}
