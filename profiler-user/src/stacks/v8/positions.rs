//! Where in its script a JS frame is: V8's source position tables (the VLQ-encoded delta table
//! of `src/codegen/source-position-table.cc`) decoded at a frame's bytecode offset (interpreted
//! frames) or pc offset (optimized code), and the script offset turned into a line and column.
//!
//! A table is target memory: every value is bounded, a table that does not decode gives no
//! position, and the walk stops at the table's end (its length is bounded by the reader).

/// Largest source position table read (bytes); V8's are a few bytes per statement.
pub(super) const MAX_TABLE_BYTES: usize = 256 << 10;

/// One VLQ quantity (7 bits a byte, high bit set while more follow), at most 10 bytes.
fn unsigned_vlq(table: &[u8], at: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..70).step_by(7) {
        let byte = *table.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// A zig-zag signed VLQ quantity (`base::VLQDecode`).
fn signed_vlq(table: &[u8], at: &mut usize) -> Option<i64> {
    let value = unsigned_vlq(table, at)?;
    Some(((value >> 1) as i64) ^ -((value & 1) as i64))
}

/// The raw `SourcePosition` of the last entry at or before `code_offset` (a bytecode offset,
/// or a pc offset into optimized code): entries are (code offset, position) deltas from the
/// previous one, starting at code offset -1 (`kFunctionEntryBytecodeOffset`) and position 0;
/// the code delta's sign says whether the entry is a statement.
pub(super) fn raw_position_at(table: &[u8], code_offset: i64) -> Option<i64> {
    let (mut code, mut position) = (-1i64, 0i64);
    let mut found = None;
    let mut at = 0;
    while at < table.len() {
        let delta = signed_vlq(table, &mut at)?;
        let delta = if delta >= 0 { delta } else { -(delta + 1) };
        code = code.checked_add(delta)?;
        if code > code_offset {
            break;
        }
        position = position.checked_add(signed_vlq(table, &mut at)?)?;
        found = Some(position);
    }
    found
}

/// The raw `SourcePosition` of the first entry after `code_offset`: V8 14's Maglev code
/// records a node's position at the end of the node's machine code (seen on 14.6: a call's
/// entry follows its return address, the entry before it being the previous node's), so the
/// code up to an entry has that entry's position.
pub(super) fn raw_position_after(table: &[u8], code_offset: i64) -> Option<i64> {
    let (mut code, mut position) = (-1i64, 0i64);
    let mut at = 0;
    while at < table.len() {
        let delta = signed_vlq(table, &mut at)?;
        let delta = if delta >= 0 { delta } else { -(delta + 1) };
        code = code.checked_add(delta)?;
        position = position.checked_add(signed_vlq(table, &mut at)?)?;
        if code > code_offset {
            return Some(position);
        }
    }
    None
}

/// The bytecode offset a baseline (Sparkplug) code's pc offset is at (-1: the prologue), from
/// its bytecode offset table (unsigned VLQ lengths of machine code: the prologue's, then one per
/// bytecode in order) walked beside the bytecodes, as V8's BytecodeOffsetIterator does.
pub(super) fn baseline_offset(
    table: &[u8],
    bytecodes: &[u8],
    sizes: &super::metadata::BytecodeSizes,
    pc_offset: u64,
) -> Option<i64> {
    let mut at = 0;
    let mut end = unsigned_vlq(table, &mut at)?;
    let (mut bytecode, mut next) = (-1i64, 0usize);
    while end < pc_offset {
        if at >= table.len() || next >= bytecodes.len() {
            return None;
        }
        end = end.checked_add(unsigned_vlq(table, &mut at)?)?;
        bytecode = i64::try_from(next).ok()?;
        next = next.checked_add(sizes.length_at(bytecodes, next)?)?;
    }
    Some(bytecode)
}

/// A decoded `SourcePosition` (src/codegen/source-position.h): bit 0 says "external" (a line
/// in another file, builtins only), bits 1-30 the script offset plus one, bits 31-46 the
/// inlining id plus one (0: not inlined).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct SourcePosition {
    pub(super) script_offset: u32,
    /// Which inlined function the position is in (an index into the code's inlining
    /// positions), `None` for the code's own function.
    pub(super) inlined: Option<u32>,
}

pub(super) fn decode_position(raw: i64) -> Option<SourcePosition> {
    let raw = u64::try_from(raw).ok()?;
    if raw & 1 == 1 {
        return None;
    }
    let offset = ((raw >> 1) & ((1 << 30) - 1)).checked_sub(1)?;
    let inlining = ((raw >> 31) & 0xffff) as u32;
    Some(SourcePosition {
        script_offset: u32::try_from(offset).ok()?,
        inlined: inlining.checked_sub(1),
    })
}

/// The 1-based line and column of a character offset, given where each line ends (the
/// offsets of the newlines).
pub(super) fn line_and_column(line_ends: &[u32], offset: u32) -> (u32, u32) {
    let index = line_ends.partition_point(|&end| end < offset);
    let line_start = match index {
        0 => 0,
        _ => line_ends[index - 1].saturating_add(1),
    };
    let line = u32::try_from(index).unwrap_or(u32::MAX).saturating_add(1);
    (line, offset.saturating_sub(line_start).saturating_add(1))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Encodes (code offset, raw position, is statement) entries the way V8's
    /// SourcePositionTableBuilder does.
    pub(in crate::stacks::v8) fn encode(entries: &[(i64, i64, bool)]) -> Vec<u8> {
        fn put(out: &mut Vec<u8>, value: i64) {
            let mut encoded = ((value << 1) ^ (value >> 63)) as u64;
            loop {
                let more = encoded > 0x7f;
                out.push((encoded & 0x7f) as u8 | if more { 0x80 } else { 0 });
                encoded >>= 7;
                if !more {
                    break;
                }
            }
        }
        let mut out = Vec::new();
        let (mut code, mut position) = (-1, 0);
        for &(c, p, statement) in entries {
            let delta = c - code;
            put(&mut out, if statement { delta } else { -delta - 1 });
            put(&mut out, p - position);
            (code, position) = (c, p);
        }
        out
    }

    /// A raw `SourcePosition` (inlining -1: not inlined).
    pub(in crate::stacks::v8) fn raw(offset: i64, inlining: i64) -> i64 {
        ((offset + 1) << 1) | ((inlining + 1) << 31)
    }

    #[test]
    fn a_table_from_node_22_decodes_at_the_frames_bytecode_offset() {
        // waitAtomicsMs's table as Node 22.23.5 keeps it; its frame's bytecode offset was 24
        // (the CallProperty of `Atomics.wait`, whose position is `wait`, offset 128).
        let table = [
            0x01, 0xf0, 0x02, 0x02, 0x44, 0x06, 0x14, 0x09, 0x3c, 0x0f, 0x14, 0x15, 0x13, 0x0a,
            0x54,
        ];
        let at = |offset| raw_position_at(&table, offset).and_then(decode_position);
        assert_eq!(at(24).map(|p| p.script_offset), Some(128));
        assert_eq!(at(26).map(|p| p.script_offset), Some(128));
        assert_eq!(at(29).map(|p| p.script_offset), Some(149));
        assert_eq!(at(-1).map(|p| p.script_offset), Some(91));
        assert_eq!(at(-2), None);
    }

    #[test]
    fn maglev_14_positions_are_read_after_the_pc() {
        // waitAtomicsMs's Maglev code as Node 26.12.1 keeps it (entries from its table): the
        // call into Atomics.wait returns at 0x6e, and its position (`wait`, in the inlined
        // waitOnCell) is the entry at 0x84; the one before is the function's start.
        let table = encode(&[
            (0x10, raw(1995, -1), true),
            (0x4d, raw(1995, -1), true),
            (0x84, raw(2276, 0), true),
            (0xf7, raw(2178, -1), true),
        ]);
        let after = |offset| raw_position_after(&table, offset).and_then(decode_position);
        let expected = SourcePosition {
            script_offset: 2276,
            inlined: Some(0),
        };
        assert_eq!(after(0x6d), Some(expected));
        assert_eq!(after(0x83), Some(expected));
        assert_eq!(after(0x84).map(|p| p.script_offset), Some(2178));
        assert_eq!(after(0xf7), None);
        assert_eq!(after(0).map(|p| p.script_offset), Some(1995));
        // Where the entry before is read (TurboFan, Maglev before V8 14): the start.
        let before = raw_position_at(&table, 0x6d).and_then(decode_position);
        assert_eq!(before.map(|p| p.script_offset), Some(1995));
    }

    #[test]
    fn positions_round_trip_with_inlining_ids() {
        let table = encode(&[
            (-1, raw(10, -1), false),
            (0, raw(12, -1), true),
            (7, raw(40, 0), false),
            (300, raw(5, 2), true),
            (301, raw(1_000_000, -1), false),
        ]);
        let at = |offset| raw_position_at(&table, offset).and_then(decode_position);
        assert_eq!(
            at(6),
            Some(SourcePosition {
                script_offset: 12,
                inlined: None
            })
        );
        assert_eq!(at(7).and_then(|p| p.inlined), Some(0));
        assert_eq!(
            at(300),
            Some(SourcePosition {
                script_offset: 5,
                inlined: Some(2)
            })
        );
        assert_eq!(at(1 << 40).map(|p| p.script_offset), Some(1_000_000));
    }

    #[test]
    fn lines_and_columns() {
        let ends = [2, 5, 6];
        assert_eq!(line_and_column(&ends, 0), (1, 1));
        assert_eq!(line_and_column(&ends, 2), (1, 3));
        assert_eq!(line_and_column(&ends, 3), (2, 1));
        assert_eq!(line_and_column(&ends, 7), (4, 1));
        assert_eq!(line_and_column(&ends, 9), (4, 3));
        assert_eq!(line_and_column(&[], 9), (1, 10));
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::super::*;

        proptest! {
            #![proptest_config(crate::fuzz_config())]

            /// Source position tables are read from the target: garbage gives a position or
            /// none, in time linear in the table, never a panic or an overflow.
            #[test]
            fn fuzz_source_position_tables(table in proptest::collection::vec(any::<u8>(), 0..2048), offset in any::<i64>(), ends in proptest::collection::vec(any::<u32>(), 0..64), at in any::<u32>()) {
                if let Some(raw) = raw_position_at(&table, offset) {
                    let _ = decode_position(raw);
                }
                let _ = decode_position(offset);
                // A baseline offset table walked beside garbage bytecodes.
                let sizes: Vec<u8> = (0..48).map(|i| if i % 16 < 2 { 1 } else { (i % 5 + 1) as u8 }).collect();
                let sizes = crate::stacks::v8::metadata::BytecodeSizes::new(sizes).expect("sizes");
                if let Some(bytecode) = baseline_offset(&table, &table, &sizes, offset as u64 & 0xffff) {
                    prop_assert!(bytecode >= -1 && bytecode < table.len() as i64);
                }
                let mut ends = ends;
                ends.sort_unstable();
                let (line, column) = line_and_column(&ends, at);
                prop_assert!(line >= 1 && column >= 1);
            }
        }
    }
}
