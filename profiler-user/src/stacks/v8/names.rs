//! Names and scripts: reading V8 heap objects (tagged pointers, strings, scope infos) into a
//! function's name and position, and source positions into line numbers.

use super::*;

pub(super) fn is_heap_object(tagged: u64) -> bool {
    tagged & HEAP_OBJECT_TAG_MASK == HEAP_OBJECT_TAG && tagged > 0x1000
}

/// The address of a field of a tagged object (`None` where target garbage would overflow).
pub(super) fn at(tagged: u64, offset: u64) -> Option<u64> {
    tagged.checked_sub(HEAP_OBJECT_TAG)?.checked_add(offset)
}

pub(super) fn is_smi(word: u64) -> bool {
    word & 1 == 0
}

pub(super) fn smi_value(word: u64) -> Option<i32> {
    is_smi(word).then_some((word >> 32) as i32)
}

/// Objects read with one metadata set.
pub(super) struct Reader<'a, M: Memory> {
    pub(super) meta: &'a Metadata,
    pub(super) mem: &'a M,
}

impl<M: Memory> Reader<'_, M> {
    /// Where a young object copied since the stack was taken now is: the scavenger leaves
    /// the new address (untagged, so it reads as a Smi) in the old copy's map word. At most a
    /// few hops; None when the old copy is gone.
    pub(super) fn forwarded(&self, mut tagged: u64) -> Option<u64> {
        for _ in 0..3 {
            if !is_heap_object(tagged) {
                return None;
            }
            let map_word = self.mem.u64(at(tagged, self.meta.off_map)?)?;
            if is_heap_object(map_word) {
                return Some(tagged);
            }
            if map_word & HEAP_OBJECT_TAG_MASK != 0 || map_word < 0x1000 {
                return None;
            }
            tagged = map_word + HEAP_OBJECT_TAG;
        }
        None
    }

    /// The instance type of a tagged heap object pointer.
    pub(super) fn type_of(&self, tagged: u64) -> Option<u16> {
        if !is_heap_object(tagged) {
            return None;
        }
        let map = self.mem.u64(at(tagged, self.meta.off_map)?)?;
        if !is_heap_object(map) {
            return None;
        }
        self.mem.u16(at(map, self.meta.off_map_instance_type)?)
    }

    /// A tagged field of a tagged object.
    pub(super) fn field(&self, tagged: u64, offset: u64) -> Option<u64> {
        self.mem.u64(at(tagged, offset)?)
    }

    /// A string's text, at most `max` bytes (longer ones are cut, with "…").
    pub(super) fn string(&self, tagged: u64, max: usize) -> Option<String> {
        let mut out = Vec::new();
        self.string_into(tagged, max, MAX_STRING_DEPTH, &mut out)?;
        let mut text = String::from_utf8_lossy(&out).into_owned();
        // A character cut at `max` became a replacement character: keep within `max`.
        if text.len() > max {
            let cut = (0..=max)
                .rev()
                .find(|&i| text.is_char_boundary(i))
                .unwrap_or(0);
            text.truncate(cut);
        }
        if out.len() >= max {
            text.push('…');
        }
        Some(text)
    }

    /// Appends a string's bytes (UTF-8) to `out`, up to `max` bytes in all.
    pub(super) fn string_into(
        &self,
        tagged: u64,
        max: usize,
        depth: usize,
        out: &mut Vec<u8>,
    ) -> Option<()> {
        let layout = &self.meta.strings;
        let kind = self.type_of(tagged)?;
        if kind >= layout.first_nonstring_type || depth == 0 {
            return None;
        }
        let length = self.mem.u32(at(tagged, layout.off_length)?)? as usize;
        let room = max.saturating_sub(out.len());
        if room == 0 {
            return Some(());
        }
        let representation = kind & layout.representation_mask;
        if representation == layout.seq_tag {
            let one_byte = kind & layout.encoding_mask == layout.one_byte_tag;
            if one_byte {
                let take = length.min(room);
                let mut buf = vec![0u8; take];
                self.mem
                    .read(at(tagged, layout.off_one_byte_chars)?, &mut buf)?;
                // Latin-1 to UTF-8.
                out.extend(buf.iter().flat_map(|&b| {
                    let mut utf8 = [0u8; 2];
                    char::from(b).encode_utf8(&mut utf8).as_bytes().to_vec()
                }));
            } else {
                let take = length.min(room);
                let mut buf = vec![0u8; take * 2];
                self.mem
                    .read(at(tagged, layout.off_two_byte_chars)?, &mut buf)?;
                let units = buf
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]));
                let text: String = char::decode_utf16(units)
                    .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
                    .collect();
                out.extend_from_slice(text.as_bytes());
            }
            out.truncate(max);
            Some(())
        } else if representation == layout.cons_tag {
            let first = self.field(tagged, layout.off_cons_first)?;
            let second = self.field(tagged, layout.off_cons_second)?;
            self.string_into(first, max, depth - 1, out)?;
            self.string_into(second, max, depth - 1, out)
        } else if representation == layout.thin_tag {
            let actual = self.field(tagged, layout.off_thin_actual)?;
            self.string_into(actual, max, depth - 1, out)
        } else if representation == layout.sliced_tag {
            let parent = self.field(tagged, layout.off_sliced_parent)?;
            let offset = smi_value(self.field(tagged, layout.off_sliced_offset)?)?;
            let mut whole = Vec::new();
            let wanted = usize::try_from(offset)
                .ok()?
                .checked_add(length)?
                .min(max * 4);
            self.string_into(parent, wanted, depth - 1, &mut whole)?;
            // Offsets count characters; names are ASCII in practice, so bytes serve.
            let start = usize::try_from(offset).ok()?.min(whole.len());
            let end = start.saturating_add(length).min(whole.len());
            out.extend_from_slice(&whole[start..end]);
            out.truncate(max);
            Some(())
        } else {
            // External strings (Node's own module sources) live outside the heap.
            None
        }
    }

    /// The function's name and, where known, its start position in the script, from a
    /// SharedFunctionInfo's `name_or_scope_info`.
    pub(super) fn function_name(&self, name_or_scope: u64) -> (Option<String>, Option<u32>) {
        let Some(kind) = self.type_of(name_or_scope) else {
            return (None, None);
        };
        if kind < self.meta.strings.first_nonstring_type {
            return (self.string(name_or_scope, MAX_NAME_BYTES), None);
        }
        if kind != self.meta.type_scope_info {
            return (None, None);
        }
        self.scope_info_name(name_or_scope)
    }

    /// ScopeInfo has no metadata for its variable part: the name is the first string after the
    /// context locals (its function-variable slot), as llnode and OpenTelemetry read it.
    pub(super) fn scope_info_name(&self, scope_info: u64) -> (Option<String>, Option<u32>) {
        // Slots follow the map.
        let slot = |index: u64| self.field(scope_info, index.checked_mul(8)?.checked_add(8)?);
        let start = if self.meta.scope_info_has_positions() {
            slot(3)
                .and_then(smi_value)
                .and_then(|v| u32::try_from(v).ok())
        } else {
            None
        };
        let locals = slot(self.meta.scope_info_context_locals)
            .and_then(smi_value)
            .and_then(|v| u64::try_from(v).ok())
            .unwrap_or(0);
        // Up to 75 local names are inlined (two slots each: name, info); past that a hash
        // table takes one slot and the infos follow.
        let skip = if locals <= 75 { 2 * locals } else { 1 + locals };
        let first = self.meta.scope_info_first_vars.saturating_add(skip);
        let mut previous: Option<u64> = None;
        for index in first..first.saturating_add(SCOPE_INFO_SLOTS) {
            let Some(word) = slot(index) else { break };
            if is_heap_object(word)
                && self
                    .type_of(word)
                    .is_some_and(|k| k < self.meta.strings.first_nonstring_type)
            {
                let name = self.string(word, MAX_NAME_BYTES);
                let start = start.or_else(|| self.old_positions(scope_info, index));
                return (name, start);
            }
            previous = Some(word);
        }
        let _ = previous;
        (None, start)
    }

    /// Before V8 12.8 the start and end positions follow the name as two Smis (start < end).
    pub(super) fn old_positions(&self, scope_info: u64, name_index: u64) -> Option<u32> {
        let slot = |index: u64| self.field(scope_info, index.checked_mul(8)?.checked_add(8)?);
        for index in name_index.saturating_add(1)..name_index.saturating_add(8) {
            let (a, b) = (slot(index)?, slot(index.checked_add(1)?)?);
            if let (Some(start), Some(end)) = (smi_value(a), smi_value(b))
                && 0 <= start
                && start < end
            {
                return u32::try_from(start).ok();
            }
        }
        None
    }
}

/// Character offsets of each '\n' in a text.
pub(super) fn line_ends(text: &str) -> Vec<u32> {
    text.chars()
        .enumerate()
        .filter(|(_, c)| *c == '\n')
        .map(|(i, _)| i as u32)
        .collect()
}

impl<M: Memory> Reader<'_, M> {
    /// The bytes of a ByteArray (or TrustedByteArray), at most
    /// [`positions::MAX_TABLE_BYTES`]; `None` for anything else (an undefined table: V8
    /// collects source positions lazily).
    pub(super) fn byte_array(&self, tagged: u64, layout: &PositionLayout) -> Option<Vec<u8>> {
        let kind = self.type_of(tagged)?;
        if !layout.byte_array_types.contains(&kind) {
            return None;
        }
        let length = smi_value(self.field(tagged, layout.byte_array_length)?)?;
        let length = usize::try_from(length).ok()?;
        if length > positions::MAX_TABLE_BYTES {
            return None;
        }
        let mut bytes = vec![0u8; length];
        self.mem
            .read(at(tagged, layout.byte_array_data)?, &mut bytes)?;
        Some(bytes)
    }
}
