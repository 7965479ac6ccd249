//! Finding CPython in a process: the interpreter binary or libpython among its mappings, its
//! version, `.PyRuntime` and `_Py_DebugOffsets`, and the asyncio extension's debug table.

use super::*;

/// A CPython interpreter found in a process.
#[derive(Clone, Debug)]
pub struct Interpreter {
    pub minor: u32,
    /// "3.14.10" when the binary says (3.11+), else "3.12".
    pub version: String,
    /// How its frames are read: "_Py_DebugOffsets (3.14 table)", "table of stallscope (3.12)".
    pub frames_from: String,
    /// asyncio's offsets (3.14+), once its table was found (3.14 keeps it in the `_asyncio`
    /// extension, loaded with asyncio).
    pub asyncio: Option<AsyncioOffsets>,
    /// asyncio's `Handle._run` code object, once seen (see `PyProcess::handle_run_code`).
    pub handle_run_code: u64,
    /// The ELF that holds `_PyRuntime` (libpython, or the python executable).
    pub binary: PathBuf,
    pub runtime: u64,
    pub(super) layout: Layout,
}

impl Interpreter {
    /// What the kernel side needs to walk this process's frames.
    pub fn kernel_layout(&self) -> PyProcess {
        PyProcess {
            runtime: self.runtime,
            gil_static: self.layout.gil_in_runtime.map_or(0, |o| self.runtime + o),
            handle_run_code: self.handle_run_code,
            tstate_running_task: self
                .asyncio
                .and_then(|a| u32::try_from(a.running_task).ok())
                .unwrap_or(ABSENT),
            ..self.layout.kernel
        }
    }
}

/// Minor version from a file name such as `libpython3.12.so.1.0` or `python3.11`.
pub(super) fn minor_from_name(path: &Path) -> Option<u32> {
    let name = path.file_name()?.to_str()?;
    let rest = name
        .strip_prefix("libpython3.")
        .or_else(|| name.strip_prefix("python3."))?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// What a binary says about the CPython in it (the same for every process that maps it).
#[derive(Clone, Debug)]
pub(super) struct BinaryFacts {
    minor: u32,
    version: String,
    frames_from: String,
    runtime_symbol: u64,
    /// Page-aligned address of the first PT_LOAD (the load bias is start - this).
    first_load: u64,
    pub(super) layout: Layout,
    /// The binary's own `.AsyncioDebug` section (3.15 builds `_asyncio` in).
    asyncio: Option<AsyncioOffsets>,
}

/// A CPython found whose frames cannot be read: which, and why (said once, in the recording's
/// summary too).
#[derive(Clone, Debug)]
pub struct Unreadable {
    pub version: String,
    pub binary: PathBuf,
    pub reason: String,
}

/// What a process runs, as far as Python goes.
#[derive(Debug)]
pub enum Detection {
    Readable(Box<Interpreter>),
    Unreadable(Unreadable),
}

impl Pythons {
    /// Looks for CPython in a live process: libpython mapped, or an executable that defines
    /// `_PyRuntime` itself (a static build such as Debian's). `Ok(None)`: not Python. Each
    /// binary is read once (by path and inode), whatever the number of processes mapping it.
    /// What /proc says is read through `proc` (see [`procfs::ProcReader`]).
    pub fn detect(&mut self, proc: &dyn procfs::ProcReader, pid: u32) -> Result<Option<Detection>> {
        let maps = proc
            .maps(pid)
            .with_context(|| format!("reading /proc/{pid}/maps"))?;
        let exe = proc.exe(pid);
        let mut candidates: Vec<&procfs::Mapping> = maps
            .iter()
            .filter(|m| {
                m.file_offset == 0
                    && m.path
                        .file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("libpython3"))
            })
            .collect();
        if let Some(exe) = &exe
            && let Some(mapping) = maps.iter().find(|m| &m.path == exe && m.file_offset == 0)
        {
            candidates.push(mapping);
        }
        for mapping in candidates {
            let key = (mapping.path.clone(), mapping.inode);
            let facts = match self.binaries.get(&key) {
                Some(facts) => facts.clone(),
                None => {
                    let facts = binary_facts(proc, pid, mapping)?;
                    self.binaries.insert(key, facts.clone());
                    facts
                }
            };
            match facts {
                Some(Ok(facts)) => {
                    let bias = mapping.start.wrapping_sub(facts.first_load);
                    let asyncio = facts.asyncio.or_else(|| {
                        (facts.minor >= 14)
                            .then(|| asyncio_extension(proc, pid, &maps))
                            .flatten()
                    });
                    return Ok(Some(Detection::Readable(Box::new(Interpreter {
                        minor: facts.minor,
                        version: facts.version,
                        frames_from: facts.frames_from,
                        asyncio,
                        handle_run_code: 0,
                        binary: mapping.path.clone(),
                        runtime: bias.wrapping_add(facts.runtime_symbol),
                        layout: facts.layout,
                    }))));
                }
                Some(Err(unreadable)) => {
                    return Ok(Some(Detection::Unreadable(Unreadable {
                        binary: mapping.path.clone(),
                        ..unreadable
                    })));
                }
                None => {}
            }
        }
        Ok(None)
    }
}

/// The file behind a mapping of process `pid`: the same file, by inode, whether it is on the
/// host's path, only reachable through the mapping itself, or in the process's root (a
/// container, a chroot). Opened to be read as needed, not whole: the file is the target's, and
/// may be huge or sparse.
pub(super) fn open_binary(
    proc: &dyn procfs::ProcReader,
    pid: u32,
    mapping: &procfs::Mapping,
) -> Result<File> {
    let path = procfs::mapped_file(proc, pid, mapping)
        .with_context(|| format!("{} is not reachable (deleted?)", mapping.path.display()))?;
    proc.open_regular(&path)
        .with_context(|| format!("reading {}", path.display()))
}

/// The `.AsyncioDebug` table of an ELF file, if it has one.
pub(super) fn asyncio_section<'data, R: object::ReadRef<'data>>(
    elf: &object::File<'data, R>,
) -> Option<AsyncioOffsets> {
    let section = elf.section_by_name(".AsyncioDebug")?;
    offsets::parse_asyncio(section.data().ok()?).ok()
}

/// 3.14: the asyncio table is in the `_asyncio` extension module, mapped once asyncio is
/// imported.
pub(super) fn asyncio_extension(
    proc: &dyn procfs::ProcReader,
    pid: u32,
    maps: &[procfs::Mapping],
) -> Option<AsyncioOffsets> {
    let mapping = maps.iter().find(|m| {
        m.file_offset == 0
            && m.path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("_asyncio.") && n.ends_with(".so"))
    })?;
    let data = object::ReadCache::new(open_binary(proc, pid, mapping).ok()?);
    let elf = object::File::parse(&data).ok()?;
    asyncio_section(&elf)
}

/// What a binary says about CPython: `None`, not CPython; `Some(Err)`, a CPython whose frames
/// cannot be read (and why).
pub(super) type Facts = Option<std::result::Result<BinaryFacts, Unreadable>>;

pub(super) fn binary_facts(
    proc: &dyn procfs::ProcReader,
    pid: u32,
    mapping: &procfs::Mapping,
) -> Result<Facts> {
    let path = mapping.path.as_path();
    let data = object::ReadCache::new(open_binary(proc, pid, mapping)?);
    let elf = object::File::parse(&data).with_context(|| format!("parsing {}", path.display()))?;
    let Some(runtime_sym) = elf.dynamic_symbols().find(|s| s.name() == Ok("_PyRuntime")) else {
        return Ok(None);
    };
    let version_hex = py_version(&elf);
    let minor = match minor_from_name(path) {
        Some(minor) => minor,
        None => version_hex
            .map(|hex| ((hex >> 16) & 0xff) as u32)
            .with_context(|| {
                format!(
                    "{} has _PyRuntime but no version in its name or Py_Version",
                    path.display()
                )
            })?,
    };
    let version = version_hex.map_or_else(|| format!("3.{minor}"), offsets::version_text);
    let unreadable = |version: String, reason: String| {
        Ok(Some(Err(Unreadable {
            version,
            binary: path.to_path_buf(),
            reason,
        })))
    };
    // From 3.13 on the interpreter describes itself; before, our table is all there is.
    let (layout, frames_from) = if minor >= 13 {
        let debug = match runtime_bytes(&elf, &runtime_sym) {
            None => Err(Refused::Short),
            Some(bytes) => offsets::parse(bytes),
        };
        let debug = match debug {
            Ok(debug) => debug,
            Err(refused) => {
                return unreadable(version, format!("{refused}: Python frames are not read"));
            }
        };
        let version = offsets::version_text(debug.version);
        if (debug.version >> 16) & 0xff != u64::from(minor) {
            return unreadable(
                version,
                format!(
                    "its name says 3.{minor} but its _Py_DebugOffsets say {}: Python frames are \
                     not read",
                    offsets::version_text(debug.version)
                ),
            );
        }
        if debug.free_threaded {
            return unreadable(
                version,
                "a free-threaded build (Py_GIL_DISABLED): its frames are not read (no such \
                 build was tested) and no GIL waits are reported for it"
                    .into(),
            );
        }
        let Some(mut layout) = layout(minor.min(13)) else {
            bail!("no base layout for 3.{minor}");
        };
        layout.minor = minor;
        apply_debug_offsets(&mut layout, &debug)
            .with_context(|| format!("reading _Py_DebugOffsets of {}", path.display()))?;
        (
            layout,
            format!(
                "_Py_DebugOffsets ({} table, version {})",
                debug.table,
                offsets::version_text(debug.version)
            ),
        )
    } else {
        match layout(minor) {
            Some(layout) => (layout, format!("table of stallscope (3.{minor})")),
            None => {
                return unreadable(
                    version,
                    format!(
                        "CPython 3.{minor}: stallscope reads frames of 3.9 to 3.{} only",
                        offsets::NEWEST_UNDERSTOOD.trim_start_matches("3.")
                    ),
                );
            }
        }
    };
    let first_load = elf
        .segments()
        .map(|s| s.address())
        .min()
        .context("no PT_LOAD segment")?;
    Ok(Some(Ok(BinaryFacts {
        minor,
        version,
        frames_from,
        runtime_symbol: runtime_sym.address(),
        first_load: first_load & !0xfff,
        layout,
        asyncio: asyncio_section(&elf),
    })))
}

/// The file's bytes of `_PyRuntime` (its static initializer), from its section.
pub(super) fn runtime_bytes<'data, R: object::ReadRef<'data>>(
    elf: &object::File<'data, R>,
    symbol: &object::Symbol<'data, '_, R>,
) -> Option<&'data [u8]> {
    // Only the table's bytes are read (the section may be large; the file is the target's).
    let section = elf.section_by_index(symbol.section_index()?).ok()?;
    let end = section.address().checked_add(section.size())?;
    let size = end
        .checked_sub(symbol.address())?
        .min(DEBUG_OFFSETS_MAX_BYTES);
    section.data_range(symbol.address(), size).ok().flatten()
}

/// `Py_Version` (3.11+): PY_VERSION_HEX, read from the file.
pub(super) fn py_version<'data, R: object::ReadRef<'data>>(
    elf: &object::File<'data, R>,
) -> Option<u64> {
    let symbol = elf
        .dynamic_symbols()
        .find(|s| s.name() == Ok("Py_Version"))?;
    let section = elf.section_by_index(symbol.section_index()?).ok()?;
    let bytes = section.data_range(symbol.address(), 4).ok()??;
    Some(u32::from_le_bytes(bytes.try_into().ok()?) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::system::procfs::{Mapping, fake::FakeProc};

    fn mapping(path: &str, file_offset: u64, inode: u64) -> Mapping {
        Mapping {
            start: 0x40_0000,
            end: 0x50_0000,
            file_offset,
            executable: true,
            path: path.into(),
            inode,
        }
    }

    /// Which mappings are read for CPython: a libpython mapped from its start, and the binary
    /// the process runs; nothing else is opened (libc, a libpython mapped from its middle, a
    /// binary that is not the process's own). A binary is
    /// read once whatever the number of processes running it; unreadable maps and a mapped
    /// file no path reaches are errors that say which.
    #[test]
    fn only_libpython_or_the_executable_is_read_and_each_binary_once() {
        let mut proc = FakeProc::default();
        let mut pythons = Pythons::default();
        proc.maps.insert(
            1,
            vec![
                mapping("/usr/lib/x86_64-linux-gnu/libc.so.6", 0, 1),
                mapping("/usr/lib/libpython3.12.so.1.0", 0x1000, 2),
                mapping("/usr/bin/node", 0, 3),
            ],
        );
        assert!(matches!(pythons.detect(&proc, 1), Ok(None)));
        assert!(proc.opened.borrow().is_empty(), "{:?}", proc.opened);

        // Two processes running one binary with no _PyRuntime (this test's own).
        let own = std::env::current_exe().expect("the test binary");
        proc.file("/usr/bin/tool", 4, Some(&own));
        for pid in [2, 3] {
            proc.maps.insert(pid, vec![mapping("/usr/bin/tool", 0, 4)]);
            proc.exes.insert(pid, "/usr/bin/tool".into());
            assert!(matches!(pythons.detect(&proc, pid), Ok(None)));
        }
        assert_eq!(*proc.opened.borrow(), vec![PathBuf::from("/usr/bin/tool")]);

        proc.maps
            .insert(4, vec![mapping("/usr/lib/libpython3.13.so.1.0", 0, 5)]);
        let err = pythons.detect(&proc, 4).expect_err("no file behind it");
        assert!(
            format!("{err:#}").contains("libpython3.13.so.1.0 is not reachable"),
            "{err:#}"
        );
        let err = pythons.detect(&proc, 5).expect_err("no maps");
        assert!(
            format!("{err:#}").contains("reading /proc/5/maps"),
            "{err:#}"
        );
    }
}
