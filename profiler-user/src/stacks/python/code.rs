//! Code objects: reading and caching them from the target's memory, and decoding their line
//! tables (lnotab, 3.10 linetable, 3.11+ location table) into line numbers.

use super::*;

impl Process {
    pub(super) fn code(&mut self, addr: u64) -> Option<&mut Code> {
        let layout = self.interpreter.layout.code;
        let memory = self.memory.as_ref()?;
        let fresh = match self.codes.get(&addr) {
            Some(Some(code)) if code.checked.elapsed() < RECHECK => true,
            Some(Some(code)) => read_identity(memory, addr, &layout) == Some(code.identity),
            Some(None) | None => false,
        };
        if fresh {
            if let Some(Some(code)) = self.codes.get_mut(&addr) {
                code.checked = Instant::now();
            }
        } else {
            if self.codes.len() >= MAX_CODES || self.code_bytes >= MAX_CODE_BYTES {
                self.codes.clear();
                self.code_bytes = 0;
            }
            let code = read_code(memory, addr, &layout);
            self.code_bytes += code.as_ref().map_or(0, |c| {
                c.name.len()
                    + c.file.len()
                    + c.linetable.len()
                    + size_of::<Code>()
                    + MAX_CACHED_LINES * size_of::<(u64, Option<u32>)>()
            });
            self.codes.insert(addr, code);
        }
        self.codes.get_mut(&addr)?.as_mut()
    }
}

pub(super) fn read_identity(memory: &Memory, addr: u64, layout: &CodeLayout) -> Option<[u64; 4]> {
    let name = layout.qualname.unwrap_or(layout.name);
    let field = |offset: u64| memory.u64(addr.checked_add(offset)?);
    Some([
        field(name)?,
        field(layout.filename)?,
        field(layout.linetable)?,
        field(layout.first_line)? & 0xffff_ffff,
    ])
}

pub(super) fn read_code(memory: &Memory, addr: u64, layout: &CodeLayout) -> Option<Code> {
    if addr == 0 {
        return None;
    }
    let identity = read_identity(memory, addr, layout)?;
    let [name_obj, file_obj, table_obj, first_line] = identity;
    let name = memory.string(name_obj, layout, MAX_NAME)?;
    let file = memory.string(file_obj, layout, 4 * MAX_NAME)?;
    // ob_size of the bytes object: garbage claims any size; more than the limit is garbage.
    let table_len = memory.u64(table_obj.checked_add(0x10)?)?;
    if table_len > MAX_LINETABLE as u64 {
        return None;
    }
    let linetable = memory.bytes(table_obj.checked_add(0x20)?, table_len as usize)?;
    let flags = memory.u64(addr.checked_add(layout.flags)?)? as u32;
    Some(Code {
        name: name.into(),
        file: file.into(),
        first_line: first_line as u32,
        linetable,
        coroutine: flags & (CO_COROUTINE | CO_ITERABLE_COROUTINE | CO_ASYNC_GENERATOR) != 0,
        identity,
        checked: Instant::now(),
        lines: Vec::new(),
    })
}

pub(super) fn line_for(layout: &Layout, code: &Code, raw: &PyFrame) -> Option<u32> {
    let first = code.first_line as i64;
    let line = match (layout.minor, layout.code.code_adaptive) {
        (9, _) => lnotab_line(&code.linetable, first, raw.ip as i64),
        (10, _) => linetable_310_line(&code.linetable, first, 2 * raw.ip as i64),
        (_, Some(adaptive)) => {
            let index = raw.ip.checked_sub(raw.code.checked_add(adaptive)?)? / 2;
            location_table_line(&code.linetable, first, index)
        }
        _ => None,
    }?;
    u32::try_from(line).ok()
}

/// 3.9 `co_lnotab`: (address increment, signed line increment) pairs; `lasti` in bytes.
pub fn lnotab_line(table: &[u8], first_line: i64, lasti: i64) -> Option<i64> {
    if lasti < 0 {
        return Some(first_line);
    }
    let mut addr = 0i64;
    let mut line = first_line;
    for pair in table.chunks_exact(2) {
        addr += pair[0] as i64;
        if addr > lasti {
            break;
        }
        line = line.checked_add(pair[1] as i8 as i64)?;
    }
    Some(line)
}

/// 3.10 `co_linetable`: (range length in bytes, signed line delta or -128 for none) pairs.
pub fn linetable_310_line(table: &[u8], first_line: i64, offset: i64) -> Option<i64> {
    if offset < 0 {
        return Some(first_line);
    }
    let mut line = first_line;
    let mut start = 0i64;
    for pair in table.chunks_exact(2) {
        let (length, delta) = (pair[0] as i64, pair[1] as i8);
        let has_line = delta != -128;
        if has_line {
            line = line.checked_add(delta as i64)?;
        }
        let end = start + length;
        if start <= offset && offset < end {
            return has_line.then_some(line);
        }
        start = end;
    }
    None
}

/// 3.11+ location table: variable-length entries of 1 to 8 code units each.
pub fn location_table_line(table: &[u8], first_line: i64, index: u64) -> Option<i64> {
    let mut at = 0usize;
    let mut line = first_line;
    let mut addr = 0u64;
    let varint = |at: &mut usize| -> Option<u64> {
        let mut value = 0u64;
        let mut shift = 0;
        loop {
            let byte = *table.get(*at)?;
            *at += 1;
            value |= ((byte & 0x3f) as u64) << shift;
            shift += 6;
            if byte & 0x40 == 0 || shift > 60 {
                return Some(value);
            }
        }
    };
    let svarint = |at: &mut usize| -> Option<i64> {
        let v = varint(at)?;
        Some(if v & 1 == 1 {
            -((v >> 1) as i64)
        } else {
            (v >> 1) as i64
        })
    };
    while at < table.len() {
        let first = table[at];
        at += 1;
        let code = (first >> 3) & 0xf;
        let units = (first & 7) as u64 + 1;
        let (delta, has_line) = match code {
            15 => (0, false),
            14 => {
                let delta = svarint(&mut at)?;
                varint(&mut at)?;
                varint(&mut at)?;
                varint(&mut at)?;
                (delta, true)
            }
            13 => (svarint(&mut at)?, true),
            10..=12 => {
                at += 2;
                (code as i64 - 10, true)
            }
            _ => {
                at += 1;
                (0, true)
            }
        };
        // Garbage tables claim deltas of up to 2^59: no line, rather than an overflow.
        line = line.checked_add(delta)?;
        if addr <= index && index < addr + units {
            return has_line.then_some(line);
        }
        addr += units;
    }
    None
}
