//! V8's postmortem metadata: the `v8dbg_*` symbols of a binary parsed into a [`Metadata`] (frame
//! layout, type tags, class field offsets), with the fallbacks for the few V8 stopped exporting.

use super::*;

/// String shapes (instance-type bits and field offsets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct StringLayout {
    pub(super) first_nonstring_type: u16,
    pub(super) representation_mask: u16,
    pub(super) encoding_mask: u16,
    pub(super) one_byte_tag: u16,
    pub(super) seq_tag: u16,
    pub(super) cons_tag: u16,
    pub(super) sliced_tag: u16,
    pub(super) thin_tag: u16,
    pub(super) off_length: u64,
    pub(super) off_one_byte_chars: u64,
    pub(super) off_two_byte_chars: u64,
    pub(super) off_cons_first: u64,
    pub(super) off_cons_second: u64,
    pub(super) off_sliced_parent: u64,
    pub(super) off_sliced_offset: u64,
    pub(super) off_thin_actual: u64,
}

/// The `v8dbg_*` values of one binary, by name without the prefix.
pub(super) struct Symbols {
    pub(super) values: HashMap<String, i64>,
}

impl Symbols {
    pub(super) fn get(&self, name: &str) -> Option<i64> {
        self.values.get(name).copied()
    }

    /// A class field, whatever type suffix this V8 gives it (`name_or_scope_info__Object`,
    /// `..._Tagged_Object_`, `..._Tagged_NameOrScopeInfoT_` over the versions).
    pub(super) fn field(&self, class: &str, field: &str) -> Option<u64> {
        let prefix = format!("class_{class}__{field}__");
        let mut found: Vec<(&String, i64)> = self
            .values
            .iter()
            .filter(|(name, _)| name.starts_with(&prefix))
            .map(|(name, value)| (name, *value))
            .collect();
        found.sort();
        found
            .first()
            .and_then(|(_, value)| u64::try_from(*value).ok())
    }

    /// The first of several names V8 used for a type tag.
    pub(super) fn type_tag(&self, names: &[&str]) -> Option<u16> {
        names
            .iter()
            .find_map(|name| self.get(&format!("type_{name}")))
            .and_then(|v| u16::try_from(v).ok())
    }
}

/// Reads a 4-byte value at a file address (SVMA) from the PT_LOAD segment holding it; zero in
/// the part of a segment not backed by the file (.bss: the constant is 0).
pub(super) fn value_at(
    file: &object::File<'_>,
    data: &[u8],
    svma: u64,
    size: usize,
) -> Option<u64> {
    for segment in file.segments() {
        let start = segment.address();
        // The file is the target's (a binary in a container): its headers may be garbage.
        if svma < start || svma >= start.saturating_add(segment.size()) {
            continue;
        }
        let (offset, file_size) = segment.file_range();
        let within = svma - start;
        if within.saturating_add(size as u64) > file_size {
            return Some(0);
        }
        let at = usize::try_from(offset.checked_add(within)?).ok()?;
        let bytes = data.get(at..at.checked_add(size)?)?;
        let mut word = [0u8; 8];
        word[..size].copy_from_slice(bytes);
        return Some(u64::from_le_bytes(word));
    }
    None
}

/// `size` bytes at a file address, from the file-backed part of the segment holding them.
pub(super) fn bytes_at(
    file: &object::File<'_>,
    data: &[u8],
    svma: u64,
    size: u64,
) -> Option<Vec<u8>> {
    let size = usize::try_from(size).ok().filter(|&s| s <= 1 << 16)?;
    file.segments().find_map(|segment| {
        let within = svma.checked_sub(segment.address())?;
        let (offset, file_size) = segment.file_range();
        if within.checked_add(size as u64)? > file_size {
            return None;
        }
        let at = usize::try_from(offset.checked_add(within)?).ok()?;
        data.get(at..at.checked_add(size)?).map(<[u8]>::to_vec)
    })
}

/// Where the source position tables are and how code objects are laid out, for the line and
/// column a frame is at. V8 exports the few fields used here for some versions only: each
/// fallback says where it comes from (V8's class layouts, as OpenTelemetry's nodev8 reader also
/// takes them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct PositionLayout {
    /// `BytecodeArray::data` (its header size): a frame's bytecode offset slot holds the
    /// offset from the tagged BytecodeArray, header included.
    pub(super) bytecode_data: u64,
    pub(super) bytecode_length: u64,
    pub(super) bytecode_positions: u64,
    /// ByteArray and TrustedByteArray (the tables' type since V8 12.4).
    pub(super) byte_array_types: Vec<u16>,
    pub(super) byte_array_length: u64,
    pub(super) byte_array_data: u64,
    /// Optimized code (V8 12 and later, where `Code` has these fields): `None` before.
    pub(super) code: Option<CodeLayout>,
    /// Bytecode sizes by operand scale (`Bytecodes::kBytecodeSizes`, read from the binary's
    /// symbol table, else the known table of its V8 version), to walk a baseline code's
    /// bytecode offset table: `None` for a stripped build of a V8 version not known here.
    pub(super) bytecode_sizes: Option<BytecodeSizes>,
}

/// `Bytecodes::kBytecodeSizes[3][count]`: the size of each bytecode, with its operands, at
/// operand scale 1, 2 and 4 (after a `Wide` or `ExtraWide` prefix, bytecodes 0 and 1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BytecodeSizes {
    sizes: Vec<u8>,
    count: usize,
}

impl BytecodeSizes {
    /// The table from the symbol's bytes, checked: three rows, the prefixes one byte wide in
    /// each, every size within what V8's operands allow.
    pub(super) fn new(sizes: Vec<u8>) -> Option<Self> {
        let count = sizes.len() / 3;
        let sane = sizes.len().is_multiple_of(3)
            && (16..=1024).contains(&count)
            && (0..3).all(|row| sizes[row * count] == 1 && sizes[row * count + 1] == 1)
            && sizes.iter().all(|&s| (1..=64).contains(&s));
        sane.then_some(BytecodeSizes { sizes, count })
    }

    /// The length of the bytecode at `at` (its prefix included), `None` past the end.
    pub(super) fn length_at(&self, bytecodes: &[u8], at: usize) -> Option<usize> {
        let first = usize::from(*bytecodes.get(at)?);
        let (row, bytecode, prefix) = match first {
            0 | 1 => (
                first + 1,
                usize::from(*bytecodes.get(at.checked_add(1)?)?),
                1,
            ),
            _ => (0, first, 0),
        };
        if bytecode >= self.count {
            return None;
        }
        Some(usize::from(self.sizes[row * self.count + bytecode]) + prefix)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct CodeLayout {
    /// `JSFunction::code`: gone in V8 13, where a function reaches its code through the
    /// process-wide dispatch table; the code a frame runs is then found from its pc.
    pub(super) function_code: Option<u64>,
    pub(super) type_code: u16,
    /// `Code::deoptimization_data_or_interpreter_data`, the field before the position table
    /// (code.h, V8 12-14: not exported).
    pub(super) deopt_data: u64,
    pub(super) positions: u64,
    pub(super) instruction_start: u64,
    pub(super) instruction_size: u64,
    pub(super) flags: u64,
    pub(super) kind_mask: u32,
    pub(super) kind_shift: u32,
    pub(super) kind_baseline: u32,
    /// The code's InstructionStream (`Code::instruction_stream`) and that object's layout, to
    /// find the code a pc is in.
    pub(super) instruction_stream: u64,
    pub(super) stream: Option<StreamLayout>,
    pub(super) inlining: Option<InliningLayout>,
}

/// An InstructionStream: its type tag, where its instructions start (its header size) and its
/// back pointer to its Code (the field after the map since V8 11.x, instruction-stream.h: not
/// exported; each use is checked against the Code's own fields).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct StreamLayout {
    pub(super) type_stream: u16,
    pub(super) header: u64,
    pub(super) code: u64,
}

/// Where optimized code's deoptimization data keeps the functions inlined into it (indices of
/// the DeoptimizationData array, exported).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct InliningLayout {
    pub(super) literals: u64,
    pub(super) positions: u64,
    /// Of the code's own function: a SharedFunctionInfo (V8 12) or its wrapper (V8 13).
    pub(super) shared: u64,
    pub(super) type_shared_wrapper: Option<u16>,
    pub(super) off_wrapper_shared: u64,
}

impl PositionLayout {
    pub(super) fn from_symbols(symbols: &Symbols, version: (u32, u32, u32)) -> Option<Self> {
        let bytecode_data = symbols.field("BytecodeArray", "data")?;
        let bytecode_length = symbols
            .field("BytecodeArray", "length")
            .or_else(|| symbols.field("FixedArrayBase", "length"))?;
        // Not exported since V8 9.4. Before 12.x: length, constant pool, handler table, source
        // position table; since (a trusted object): length, wrapper, source position table.
        let bytecode_positions = symbols
            .field("BytecodeArray", "source_position_table")
            .or_else(|| {
                symbols
                    .field("BytecodeArray", "wrapper")
                    .map(|wrapper| wrapper + 8)
            })
            .or_else(|| (version < (12, 0, 0)).then_some(bytecode_length + 24))?;
        let byte_array_types: Vec<u16> = [
            "ByteArray__BYTE_ARRAY_TYPE",
            "TrustedByteArray__TRUSTED_BYTE_ARRAY_TYPE",
        ]
        .iter()
        .filter_map(|name| symbols.type_tag(&[name]))
        .collect();
        if byte_array_types.is_empty() {
            return None;
        }
        Some(PositionLayout {
            bytecode_data,
            bytecode_length,
            bytecode_positions,
            byte_array_types,
            byte_array_length: symbols.field("FixedArrayBase", "length").unwrap_or(8),
            byte_array_data: symbols.field("FixedArray", "data").unwrap_or(16),
            code: CodeLayout::from_symbols(symbols, version),
            bytecode_sizes: None,
        })
    }
}

/// Where a Code object keeps its tables and instructions.
struct CodeFields {
    deopt_data: u64,
    positions: u64,
    instruction_stream: u64,
    instruction_start: u64,
    instruction_size: u64,
    flags: u64,
}

impl CodeFields {
    /// V8 12 and later: deoptimization data, position table, wrapper, instruction stream,
    /// instruction start, ... (code.h); the table is not exported, the wrapper and the rest are.
    fn exported(symbols: &Symbols) -> Option<Self> {
        let wrapper = symbols.field("Code", "wrapper")?;
        let positions = symbols
            .field("Code", "source_position_table")
            .unwrap_or(wrapper.checked_sub(8)?);
        Some(CodeFields {
            deopt_data: positions.checked_sub(8)?,
            positions,
            instruction_stream: symbols.field("Code", "instruction_stream")?,
            instruction_start: symbols.field("Code", "instruction_start")?,
            instruction_size: symbols.field("Code", "instruction_size")?,
            flags: symbols.field("Code", "flags")?,
        })
    }

    /// V8 11.3 (Node 20), where Code and InstructionStream were already split: it exports the
    /// deoptimization data and the position table (or, for baseline code, the bytecode offset
    /// table in the same field), not the rest, which V8 11.3's code.h places right after the
    /// table: the instruction stream, the instruction start, the flags (4 bytes, then the
    /// builtin id and kind-specific flags) and the instruction size. Each use is checked (the
    /// stream's back pointer, the Code's own type, the pc within its instructions).
    fn v8_11(symbols: &Symbols, version: (u32, u32, u32)) -> Option<Self> {
        if !((11, 3, 0)..(12, 0, 0)).contains(&version)
            || symbols
                .type_tag(&["InstructionStream__INSTRUCTION_STREAM_TYPE"])
                .is_none()
        {
            return None;
        }
        let positions = symbols.field("Code", "source_position_table")?;
        Some(CodeFields {
            deopt_data: symbols.field("Code", "deoptimization_data")?,
            positions,
            instruction_stream: positions.checked_add(8)?,
            instruction_start: positions.checked_add(16)?,
            flags: positions.checked_add(24)?,
            instruction_size: positions.checked_add(32)?,
        })
    }
}

impl CodeLayout {
    fn from_symbols(symbols: &Symbols, version: (u32, u32, u32)) -> Option<Self> {
        let fields =
            CodeFields::exported(symbols).or_else(|| CodeFields::v8_11(symbols, version))?;
        let kind = |name: &str| symbols.get(name).and_then(|v| u32::try_from(v).ok());
        let index = |name: &str| symbols.get(name).and_then(|v| u64::try_from(v).ok());
        let stream = symbols
            .type_tag(&["InstructionStream__INSTRUCTION_STREAM_TYPE"])
            .zip(symbols.field("InstructionStream", "instruction_start"))
            .filter(|(_, header)| (16..=256).contains(header) && header % 8 == 0)
            .map(|(type_stream, header)| StreamLayout {
                type_stream,
                header,
                code: 8,
            });
        let inlining = (|| {
            Some(InliningLayout {
                literals: index("DeoptimizationDataLiteralArrayIndex")?,
                positions: index("DeoptimizationDataInliningPositionsIndex")?,
                shared: index("DeoptimizationDataWrappedSharedFunctionInfoIndex")
                    .or_else(|| index("DeoptimizationDataSharedFunctionInfoIndex"))?,
                type_shared_wrapper: symbols
                    .type_tag(&["SharedFunctionInfoWrapper__SHARED_FUNCTION_INFO_WRAPPER_TYPE"]),
                off_wrapper_shared: symbols
                    .field("SharedFunctionInfoWrapper", "shared_info")
                    .unwrap_or(8),
            })
        })()
        .filter(|l| l.literals.max(l.positions).max(l.shared) < 64);
        Some(CodeLayout {
            function_code: symbols.field("JSFunction", "code"),
            type_code: symbols.type_tag(&["Code__CODE_TYPE"])?,
            deopt_data: fields.deopt_data,
            positions: fields.positions,
            instruction_start: fields.instruction_start,
            instruction_size: fields.instruction_size,
            flags: fields.flags,
            kind_mask: kind("CodeKindFieldMask").unwrap_or(15),
            kind_shift: kind("CodeKindFieldShift").unwrap_or(0),
            kind_baseline: kind("CodeKindBaseline")?,
            instruction_stream: fields.instruction_stream,
            stream,
            inlining,
        })
    }
}

/// Most `v8dbg_*` values kept from one binary (V8 exports about 500).
const MAX_SYMBOLS: usize = 10_000;

/// Largest binary read for its metadata: Node's own are 100-120 MB, Debian's libnode.so 80 MB.
pub(super) const MAX_BINARY_BYTES: u64 = 1 << 30;

pub(super) fn version_string((a, b, c): (u32, u32, u32)) -> String {
    format!("{a}.{b}.{c}")
}

impl Metadata {
    /// Reads the metadata from an ELF file's bytes (`path` only names it in errors).
    pub fn parse(data: &[u8], path: &str) -> Result<Self, V8Error> {
        let file = object::File::parse(data).map_err(|err| V8Error::Read {
            path: path.into(),
            reason: err.to_string(),
        })?;
        let mut values = HashMap::new();
        let mut version = [None::<u64>; 3];
        let mut blob_start = None;
        let mut blob_size = None;
        let mut bytecode_sizes = None;
        for symbol in file.dynamic_symbols().chain(file.symbols()) {
            let Ok(name) = symbol.name() else { continue };
            let at = symbol.address();
            if let Some(short) = name.strip_prefix("v8dbg_") {
                // V8 exports a few hundred; more is not V8's (bounded memory).
                if values.len() >= MAX_SYMBOLS {
                    continue;
                }
                if let Some(value) = value_at(&file, data, at, 4) {
                    values.insert(short.to_string(), i64::from(value as u32 as i32));
                }
                continue;
            }
            match name {
                "_ZN2v88internal7Version6major_E" => version[0] = value_at(&file, data, at, 4),
                "_ZN2v88internal7Version6minor_E" => version[1] = value_at(&file, data, at, 4),
                "_ZN2v88internal7Version6build_E" => version[2] = value_at(&file, data, at, 4),
                "v8_Default_embedded_blob_code_" => blob_start = Some(at),
                "_ZN2v88internal11interpreter9Bytecodes14kBytecodeSizesE" => {
                    bytecode_sizes =
                        bytes_at(&file, data, at, symbol.size()).and_then(BytecodeSizes::new);
                }
                "v8_Default_embedded_blob_code_size_" => {
                    blob_size = value_at(&file, data, at, 4);
                }
                _ => {}
            }
        }
        if values.is_empty() {
            return Err(V8Error::NoMetadata { path: path.into() });
        }
        let version = (
            version[0].unwrap_or(0) as u32,
            version[1].unwrap_or(0) as u32,
            version[2].unwrap_or(0) as u32,
        );
        let builtins_svma = match (blob_start, blob_size) {
            (Some(start), Some(size)) if size > 0 => start.checked_add(size).map(|end| start..end),
            _ => None,
        };
        let mut meta = Self::from_symbols(&Symbols { values }, version, builtins_svma, path)?;
        // A stripped binary has no symbol: the table of its V8 version, where it is known.
        let bytecode_sizes = bytecode_sizes.or_else(|| {
            super::bytecode_tables::known(version).and_then(|t| BytecodeSizes::new(t.to_vec()))
        });
        if let Some(positions) = meta.positions.as_mut() {
            positions.bytecode_sizes = bytecode_sizes;
        }
        Ok(meta)
    }

    pub(super) fn from_symbols(
        symbols: &Symbols,
        version: (u32, u32, u32),
        builtins_svma: Option<Range<u64>>,
        path: &str,
    ) -> Result<Self, V8Error> {
        let missing = |what: &'static str| V8Error::Missing {
            path: path.into(),
            version: version_string(version),
            what,
        };
        let unsupported = |what: &'static str| V8Error::Unsupported {
            path: path.into(),
            version: version_string(version),
            what,
        };
        // Pointer compression (SmiShiftSize 0) keeps 32-bit fields relative to a cage base:
        // Node does not build with it, and this reader does not follow it.
        if symbols.get("HeapObjectTag") != Some(1)
            || symbols.get("HeapObjectTagMask") != Some(3)
            || symbols.get("SmiTagMask") != Some(1)
        {
            return Err(unsupported("another object tagging scheme"));
        }
        if symbols.get("SmiShiftSize") != Some(31) {
            return Err(unsupported("pointer compression"));
        }
        let fp = |name: &'static str| {
            symbols
                .get(name)
                .filter(|v| (-128..0).contains(v) && v % 8 == 0)
                .ok_or_else(|| missing(name))
        };
        let fp_function = fp("off_fp_function")?;
        let fp_context = fp("off_fp_context")?;
        // Exported since V8 9.5; below the JSFunction, after the argument count, before that.
        let fp_bytecode_array = fp("off_fp_bytecode_array").unwrap_or(fp_function - 16);
        let fp_bytecode_offset = fp("off_fp_bytecode_offset").unwrap_or(fp_bytecode_array - 8);
        let type_js_function = symbols
            .type_tag(&["JSFunction__JS_FUNCTION_TYPE"])
            .ok_or_else(|| missing("the JSFunction type tag"))?;
        // The range of JSFunction subclasses' tags is exported since V8 11.x; before it, V8
        // 9.6.138 and later have 15 (OpenTelemetry's nodev8 reader uses the same rule).
        let js_function_types = match (
            symbols.get("FirstJSFunctionType"),
            symbols.get("LastJSFunctionType"),
        ) {
            (Some(first), Some(last)) if first <= last => (first as u16, last as u16),
            _ => (type_js_function, type_js_function.saturating_add(14)),
        };
        let type_shared_function_info = symbols
            .type_tag(&["SharedFunctionInfo__SHARED_FUNCTION_INFO_TYPE"])
            .ok_or_else(|| missing("the SharedFunctionInfo type tag"))?;
        let type_script = symbols
            .type_tag(&["Script__SCRIPT_TYPE"])
            .ok_or_else(|| missing("the Script type tag"))?;
        let type_scope_info = symbols
            .type_tag(&["ScopeInfo__SCOPE_INFO_TYPE"])
            .ok_or_else(|| missing("the ScopeInfo type tag"))?;
        let type_bytecode_array = symbols.type_tag(&["BytecodeArray__BYTECODE_ARRAY_TYPE"]);
        let tag = |name: &'static str| {
            symbols
                .get(name)
                .and_then(|v| u16::try_from(v).ok())
                .ok_or_else(|| missing(name))
        };
        let field = |class: &str, name: &str, what: &'static str| {
            symbols.field(class, name).ok_or_else(|| missing(what))
        };
        // Tags that are 0 are emitted into .bss by some builds: a missing one reads as 0.
        let strings = StringLayout {
            first_nonstring_type: tag("FirstNonstringType")?,
            representation_mask: tag("StringRepresentationMask")?,
            encoding_mask: tag("StringEncodingMask")?,
            one_byte_tag: tag("OneByteStringTag")?,
            seq_tag: symbols.get("SeqStringTag").unwrap_or(0) as u16,
            cons_tag: tag("ConsStringTag")?,
            sliced_tag: tag("SlicedStringTag")?,
            thin_tag: tag("ThinStringTag")?,
            off_length: field("String", "length", "String::length")?,
            off_one_byte_chars: field("SeqOneByteString", "chars", "SeqOneByteString::chars")?,
            // Two-byte characters start where one-byte ones do (SeqString's header).
            off_two_byte_chars: symbols
                .field("SeqTwoByteString", "chars")
                .or_else(|| symbols.field("SeqOneByteString", "chars"))
                .ok_or_else(|| missing("SeqTwoByteString::chars"))?,
            off_cons_first: field("ConsString", "first", "ConsString::first")?,
            off_cons_second: field("ConsString", "second", "ConsString::second")?,
            off_sliced_parent: field("SlicedString", "parent", "SlicedString::parent")?,
            off_sliced_offset: field("SlicedString", "offset", "SlicedString::offset")?,
            off_thin_actual: field("ThinString", "actual", "ThinString::actual")?,
        };
        let off_shared_script = symbols
            .field("SharedFunctionInfo", "script")
            .or_else(|| symbols.field("SharedFunctionInfo", "script_or_debug_info"))
            .or_else(|| symbols.field("SharedFunctionInfo", "raw_script"))
            .ok_or_else(|| missing("SharedFunctionInfo::script"))?;
        Ok(Metadata {
            version,
            fp_function,
            fp_context,
            fp_bytecode_offset,
            fp_bytecode_array,
            js_function_types,
            type_shared_function_info,
            type_script,
            type_scope_info,
            type_bytecode_array,
            strings,
            // The map is a HeapObject's first field (exported as 0, often into .bss).
            off_map: symbols.field("HeapObject", "map").unwrap_or(0),
            off_map_instance_type: field("Map", "instance_type", "Map::instance_type")?,
            off_function_shared: field("JSFunction", "shared", "JSFunction::shared")?,
            off_shared_name: field(
                "SharedFunctionInfo",
                "name_or_scope_info",
                "SharedFunctionInfo::name_or_scope_info",
            )?,
            off_shared_script,
            off_script_name: field("Script", "name", "Script::name")?,
            off_script_source: symbols.field("Script", "source"),
            scope_info_first_vars: symbols
                .get("scopeinfo_idx_first_vars")
                .and_then(|v| u64::try_from(v).ok())
                .ok_or_else(|| missing("scopeinfo_idx_first_vars"))?,
            scope_info_context_locals: symbols
                .get("scopeinfo_idx_ncontextlocals")
                .and_then(|v| u64::try_from(v).ok())
                .ok_or_else(|| missing("scopeinfo_idx_ncontextlocals"))?,
            off_bytecode_data: symbols.field("BytecodeArray", "data"),
            positions: PositionLayout::from_symbols(symbols, version),
            builtins_svma,
        })
    }

    pub fn version_string(&self) -> String {
        version_string(self.version)
    }

    /// ScopeInfo keeps the function's source positions in fixed slots since V8 12.8.44
    /// (scope-info.tq `position_info`), right before its variable part.
    pub(super) fn scope_info_has_positions(&self) -> bool {
        self.version >= (12, 8, 44)
    }
}
