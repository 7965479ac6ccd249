//! Kernel symbol addresses from /proc/kallsyms (root sees them; others read zeros).

/// The symbol the 64-bit syscall entry calls handlers from: a return address into it marks,
/// on a task's kernel stack, where the syscall's own frames begin.
const SYSCALL_ENTRY: &str = "do_syscall_64";

/// Where `do_syscall_64`'s code is (start, end): None when /proc/kallsyms cannot be read,
/// hides addresses, or lacks it.
pub fn syscall_entry_text() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/kallsyms").ok()?;
    symbol_range(&text, SYSCALL_ENTRY)
}

/// The code of text symbol `name` in a kallsyms listing: from its address to the next higher
/// symbol's (the listing gives no sizes, and is not sorted throughout).
pub fn symbol_range(kallsyms: &str, name: &str) -> Option<(u64, u64)> {
    let start = kallsyms
        .lines()
        .filter_map(parse_line)
        .find(|&(_, kind, symbol, module)| symbol == name && matches!(kind, "T" | "t") && !module)
        .map(|(address, ..)| address)
        .filter(|&address| address != 0)?;
    let end = kallsyms
        .lines()
        .filter_map(parse_line)
        .map(|(address, ..)| address)
        .filter(|&address| address > start)
        .min()?;
    Some((start, end))
}

/// One kallsyms line: address, type, name, and whether a module's (`[module]` after it).
fn parse_line(line: &str) -> Option<(u64, &str, &str, bool)> {
    let mut fields = line.split_ascii_whitespace();
    let address = u64::from_str_radix(fields.next()?, 16).ok()?;
    let kind = fields.next()?;
    let symbol = fields.next()?;
    Some((address, kind, symbol, fields.next().is_some()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = "\
ffffffff8223c8e0 T do_syscall_64
ffffffff81000080 T entry_SYSCALL_64
ffffffff8223cb70 t __pfx___do_fast_syscall_32
ffffffff8223cb80 t __do_fast_syscall_32
ffffffffc0001000 t do_syscall_64\t[some_module]
";

    #[test]
    fn range_runs_to_the_next_symbol_whatever_the_order() {
        assert_eq!(
            symbol_range(LISTING, "do_syscall_64"),
            Some((0xffff_ffff_8223_c8e0, 0xffff_ffff_8223_cb70))
        );
    }

    #[test]
    fn hidden_addresses_and_absent_symbols_give_none() {
        let hidden = "0000000000000000 T do_syscall_64\n0000000000000000 T x64_sys_call\n";
        assert_eq!(symbol_range(hidden, "do_syscall_64"), None);
        assert_eq!(symbol_range(LISTING, "no_such_symbol"), None);
        assert_eq!(
            symbol_range("garbage\n\nzz T do_syscall_64\n", "do_syscall_64"),
            None
        );
    }
}
