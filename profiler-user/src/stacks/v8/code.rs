//! Compiled JavaScript code: which `Code` object a pc is in, and where in the program that pc
//! is: for baseline (Sparkplug) code the bytecode offset (through the code's bytecode offset
//! table), for optimized (Maglev, TurboFan) code the source position, with the functions
//! inlined there (through the code's deoptimization data), innermost first. V8 14's Maglev
//! code records each position after the machine code it is for (TurboFan's and older Maglev's
//! before it), so its table is read at the first entry past the pc.
//!
//! Up to V8 12 a JSFunction points at its code; since V8 13 it holds a handle into the
//! process-wide dispatch table, and its current code may not even be the one a frame runs (a
//! frame keeps running code that was replaced). So the code is found the way V8's own stack
//! walker does, from the pc: the InstructionStream that holds it starts right below it (code
//! space objects are 32-byte aligned, the instructions follow the stream's header), and that
//! stream points back at its Code, whose instruction range must hold the pc. The scan is
//! bounded, and what it finds is checked both ways.

use super::{positions::SourcePosition, *};

/// Farthest below a pc its InstructionStream's start is looked for (a function's optimized
/// code is rarely over a few tens of KiB).
const MAX_SCAN_BYTES: u64 = 256 << 10;
/// Bytes read at a time while scanning down.
const SCAN_CHUNK: u64 = 4096;
/// Code objects start 32-byte aligned (kCodeAlignment is 32 or 64 on x86-64).
const STREAM_ALIGN: u64 = 32;
/// Candidate map words whose type is read during one scan, before the map is known.
const MAX_TYPE_CHECKS: usize = 256;
/// Most code ranges remembered per process.
pub(super) const MAX_CACHED_CODES: usize = 4096;
/// Deepest chain of inlined functions followed.
const MAX_INLINING_DEPTH: usize = 16;
/// Longest bytecode array walked for a baseline frame's bytecode offset.
const MAX_BYTECODE_BYTES: usize = 1 << 20;
/// Longest DeoptimizationData or literal array looked into.
const MAX_ARRAY_LENGTH: i32 = 1 << 16;

/// Where a compiled frame is: its own function's script offset and, innermost first, the
/// functions inlined at that pc (SharedFunctionInfos) with their script offsets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct CodePosition {
    pub(super) inlined: Vec<(u64, u32)>,
    pub(super) offset: Option<u32>,
}

impl<M: Memory> V8Process<M> {
    /// Where JIT code running at `pc` for the frame `slots` is, if its code is found.
    pub(super) fn compiled_position(
        &mut self,
        function: Option<u64>,
        slots: &FrameSlots,
        pc: u64,
    ) -> Option<CodePosition> {
        let meta = Arc::clone(&self.meta);
        let layout = meta.positions.as_ref()?;
        let code_layout = layout.code.as_ref()?;
        let (code, start) = self.code_at(function, pc)?;
        let reader = self.reader();
        let pc_offset = pc.checked_sub(start)?;
        let flags = self.mem.u32(at(code, code_layout.flags)?)?;
        let kind = flags.checked_shr(code_layout.kind_shift)? & code_layout.kind_mask;
        let table = reader.field(code, code_layout.positions)?;
        let table = reader.byte_array(table, layout)?;
        if kind == code_layout.kind_baseline {
            let offset = self.baseline_bytecode_offset(slots, code, &table, pc_offset)?;
            return Some(CodePosition {
                inlined: Vec::new(),
                offset: Some(self.bytecode_position(slots.bytecode_array, offset)?),
            });
        }
        let pc_offset = i64::try_from(pc_offset).ok()?;
        // CodeKind lists MAGLEV right after BASELINE (V8 11-14).
        let raw = if code_layout.kind_baseline.checked_add(1) == Some(kind)
            && meta.version >= (14, 0, 0)
        {
            positions::raw_position_after(&table, pc_offset)?
        } else {
            positions::raw_position_at(&table, pc_offset)?
        };
        let position = positions::decode_position(raw)?;
        self.inlined_chain(code, position)
    }

    /// The Code object whose instructions hold `pc`, with their start: the function's own
    /// code where the function still points at it (V8 12), else the one remembered for that
    /// range, else found by scanning down from `pc`.
    fn code_at(&mut self, function: Option<u64>, pc: u64) -> Option<(u64, u64)> {
        let meta = Arc::clone(&self.meta);
        let layout = meta.positions.as_ref()?.code.as_ref()?;
        if let (Some(function), Some(off)) = (function, layout.function_code)
            && let Some(code) = self.reader().field(function, off)
            && let Some(start) = self.code_holding(code, pc)
        {
            return Some((code, start));
        }
        let cached = self
            .codes
            .iter()
            .find(|(range, _)| range.contains(&pc))
            .map(|(_, code)| *code);
        if let Some(code) = cached {
            if let Some(start) = self.code_holding(code, pc)
                && self.stream_points_back(code, start)
            {
                return Some((code, start));
            }
            // Moved or freed since: forget the range.
            self.codes.retain(|(range, _)| !range.contains(&pc));
        }
        let code = self.scan_for_code(pc)?;
        let start = self.code_holding(code, pc)?;
        let size = self.mem.u32(at(code, layout.instruction_size)?)?;
        if self.codes.len() >= MAX_CACHED_CODES {
            self.codes.clear();
        }
        self.codes
            .push((start..start.saturating_add(u64::from(size)), code));
        Some((code, start))
    }

    /// The start of `code`'s instructions when it is a Code object holding `pc`.
    fn code_holding(&self, code: u64, pc: u64) -> Option<u64> {
        let layout = self.meta.positions.as_ref()?.code.as_ref()?;
        let reader = self.reader();
        if reader.type_of(code)? != layout.type_code {
            return None;
        }
        let start = reader.field(code, layout.instruction_start)?;
        let size = self.mem.u32(at(code, layout.instruction_size)?)?;
        pc.checked_sub(start)
            .filter(|&o| o < u64::from(size))
            .map(|_| start)
    }

    /// Whether `code`'s InstructionStream still is its own (points back at it, and its
    /// instructions start at `start`). A remembered Code the GC freed keeps its old fields
    /// for a while, its range already reused by other code: its position table would place
    /// a frame of that new code at an unrelated line. Where streams are not described, true.
    fn stream_points_back(&self, code: u64, start: u64) -> bool {
        let Some(layout) = self.meta.positions.as_ref().and_then(|p| p.code.as_ref()) else {
            return true;
        };
        let Some(stream) = layout.stream.as_ref() else {
            return true;
        };
        let reader = self.reader();
        let Some(tagged) = reader.field(code, layout.instruction_stream) else {
            return false;
        };
        reader.field(tagged, stream.code) == Some(code)
            && tagged
                .checked_sub(HEAP_OBJECT_TAG)
                .and_then(|s| s.checked_add(stream.header))
                == Some(start)
    }

    /// The Code whose InstructionStream is the nearest one below `pc`, checked both ways (the
    /// stream's back pointer is a Code whose stream is this one and whose instructions start
    /// right after its header).
    fn scan_for_code(&mut self, pc: u64) -> Option<u64> {
        let meta = Arc::clone(&self.meta);
        let layout = meta.positions.as_ref()?.code.as_ref()?;
        let stream = layout.stream.clone()?;
        let instruction_stream = layout.instruction_stream;
        let lowest = pc.saturating_sub(MAX_SCAN_BYTES);
        // Candidate instruction starts, from the highest at or below pc.
        let mut candidate = (pc & !(STREAM_ALIGN - 1)).checked_sub(stream.header)?;
        let mut type_checks = 0;
        let mut chunk: Vec<u8> = Vec::new();
        let mut chunk_start = u64::MAX;
        while candidate >= lowest {
            if candidate < chunk_start {
                // Within the candidate's page: the page below may be unmapped.
                chunk_start = candidate
                    .saturating_sub(SCAN_CHUNK - 8)
                    .max(candidate & !(SCAN_CHUNK - 1))
                    & !7;
                let len = (candidate + 8 - chunk_start) as usize;
                chunk = vec![0u8; len];
                // Unmapped: the stream is not there.
                self.mem.read(chunk_start, &mut chunk)?;
            }
            let at_chunk = (candidate - chunk_start) as usize;
            let word = u64::from_le_bytes(chunk.get(at_chunk..at_chunk + 8)?.try_into().ok()?);
            let is_map = match self.stream_map {
                Some(map) => word == map,
                None if is_heap_object(word) && type_checks < MAX_TYPE_CHECKS => {
                    type_checks += 1;
                    self.reader().type_of(candidate + HEAP_OBJECT_TAG) == Some(stream.type_stream)
                }
                None => false,
            };
            if is_map {
                let tagged = candidate + HEAP_OBJECT_TAG;
                let code = self.reader().field(tagged, stream.code)?;
                let back = self.reader().field(code, instruction_stream)?;
                let start = self.reader().field(code, layout.instruction_start)?;
                if back != tagged || start != candidate.checked_add(stream.header)? {
                    return None;
                }
                self.stream_map = Some(word);
                return Some(code);
            }
            candidate = candidate.checked_sub(STREAM_ALIGN)?;
        }
        None
    }

    /// The bytecode a baseline frame is at: the code's table holds, for each bytecode in
    /// order, the length of the machine code it became (after the prologue's), so it is walked
    /// beside the bytecodes (their lengths from `kBytecodeSizes`) up to the pc offset, the way
    /// V8's BytecodeOffsetIterator does. -1 in the prologue.
    fn baseline_bytecode_offset(
        &self,
        slots: &FrameSlots,
        code: u64,
        table: &[u8],
        pc_offset: u64,
    ) -> Option<i64> {
        let layout = self.meta.positions.as_ref()?;
        let sizes = layout.bytecode_sizes.as_ref()?;
        let bytecode_array = self.bytecode_array_of(slots, code)?;
        let reader = self.reader();
        let length = smi_value(reader.field(bytecode_array, layout.bytecode_length)?)?;
        let length = usize::try_from(length)
            .ok()
            .filter(|&l| l <= MAX_BYTECODE_BYTES)?;
        let mut bytecodes = vec![0u8; length];
        self.mem
            .read(at(bytecode_array, layout.bytecode_data)?, &mut bytecodes)?;
        positions::baseline_offset(table, &bytecodes, sizes, pc_offset)
    }

    /// A baseline frame's BytecodeArray: its frame slot's, else its code's.
    fn bytecode_array_of(&self, slots: &FrameSlots, code: u64) -> Option<u64> {
        let wanted = self.meta.type_bytecode_array?;
        let reader = self.reader();
        if reader.type_of(slots.bytecode_array) == Some(wanted) {
            return Some(slots.bytecode_array);
        }
        let layout = self.meta.positions.as_ref()?.code.as_ref()?;
        let from_code = reader.field(code, layout.deopt_data)?;
        (reader.type_of(from_code) == Some(wanted)).then_some(from_code)
    }

    /// The script offset of a bytecode offset in a BytecodeArray (its position table).
    pub(super) fn bytecode_position(&self, bytecode_array: u64, offset: i64) -> Option<u32> {
        let layout = self.meta.positions.as_ref()?;
        let reader = self.reader();
        if reader.type_of(bytecode_array)? != self.meta.type_bytecode_array? {
            return None;
        }
        let table = reader.field(bytecode_array, layout.bytecode_positions)?;
        let table = reader.byte_array(table, layout)?;
        let position = positions::raw_position_at(&table, offset)?;
        positions::decode_position(position).map(|p| p.script_offset)
    }

    /// The functions inlined at a position, innermost first, each with its offset: an
    /// inlining id indexes the code's inlining positions, each the call site (a position of
    /// the caller, itself maybe inlined) and the callee (an index into the literals).
    fn inlined_chain(&self, code: u64, mut position: SourcePosition) -> Option<CodePosition> {
        let mut out = CodePosition::default();
        if position.inlined.is_none() {
            out.offset = Some(position.script_offset);
            return Some(out);
        }
        let layout = self.meta.positions.as_ref()?;
        let inlining = layout.code.as_ref()?.inlining.as_ref()?;
        let reader = self.reader();
        let data = reader.field(code, layout.code.as_ref()?.deopt_data)?;
        let element = |array: u64, index: u64| -> Option<u64> {
            let length = smi_value(reader.field(array, layout.byte_array_length)?)?;
            if !(0..MAX_ARRAY_LENGTH).contains(&length) || index >= length as u64 {
                return None;
            }
            reader.field(
                array,
                layout.byte_array_data.checked_add(index.checked_mul(8)?)?,
            )
        };
        let sites = reader.byte_array(element(data, inlining.positions)?, layout)?;
        let literals = element(data, inlining.literals)?;
        for _ in 0..MAX_INLINING_DEPTH {
            let Some(id) = position.inlined else {
                out.offset = Some(position.script_offset);
                return Some(out);
            };
            // InliningPosition: the call site's SourcePosition (8 bytes), the callee's index
            // (4 bytes, -1: the code's own function), padding.
            let entry = sites.get(usize::try_from(id).ok()?.checked_mul(16)?..)?;
            let site = i64::from_le_bytes(entry.get(..8)?.try_into().ok()?);
            let callee = i32::from_le_bytes(entry.get(8..12)?.try_into().ok()?);
            let shared = match u64::try_from(callee) {
                Ok(index) => strong(element(literals, index)?),
                Err(_) => self.own_shared(data, inlining, &element)?,
            };
            if reader.type_of(shared)? != self.meta.type_shared_function_info {
                return None;
            }
            out.inlined.push((shared, position.script_offset));
            position = positions::decode_position(site)?;
        }
        None
    }

    /// The code's own SharedFunctionInfo, from its deoptimization data (V8 13 wraps it).
    fn own_shared(
        &self,
        data: u64,
        inlining: &InliningLayout,
        element: &dyn Fn(u64, u64) -> Option<u64>,
    ) -> Option<u64> {
        let word = element(data, inlining.shared)?;
        let reader = self.reader();
        match inlining.type_shared_wrapper {
            Some(wrapper) if reader.type_of(word) == Some(wrapper) => {
                reader.field(word, inlining.off_wrapper_shared)
            }
            _ => Some(word),
        }
    }
}

/// A weak reference (tag 11) as the strong pointer (tag 01) it holds.
fn strong(word: u64) -> u64 {
    if word & HEAP_OBJECT_TAG_MASK == 3 {
        word & !2
    } else {
        word
    }
}
