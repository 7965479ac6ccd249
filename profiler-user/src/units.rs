//! Durations and the clock: reading durations as the command line writes them (`100ms`, `1.5s`), and writing them
//! for people. One formatter for every output, so the live line, the summaries and the budgets
//! print a duration the same way.

/// Parses a duration such as `100ms`, `1.5s`, `250us`, `2m` into nanoseconds. A bare number is
/// rejected: a unit is required, so that `--threshold 100` is never silently 100 ns or 100 s.
pub fn parse_duration_ns(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("'{text}' has no unit; use us, ms, s or m (e.g. 100ms)"))?;
    let (number, unit) = text.split_at(split);
    let scale: f64 = match unit {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "m" | "min" => 60e9,
        _ => return Err(format!("unknown unit '{unit}'; use us, ms, s or m")),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{number}' is not a number"))?;
    let ns = value * scale;
    if !ns.is_finite() || ns > u64::MAX as f64 / 2.0 {
        return Err(format!("'{text}' is too large"));
    }
    Ok(ns.round() as u64)
}

/// A duration for people: "0 ms", "850 ns", "250.0 us", "212.3 ms", "1.20 s".
pub fn format_duration(ns: u64) -> String {
    // Unit boundaries sit where the smaller unit would round up to 1000.0, so 999.96 ms reads
    // "1.00 s", never "1000.0 ms".
    if ns == 0 {
        "0 ms".to_string()
    } else if ns >= 999_950_000 {
        format!("{:.2} s", ns as f64 / 1e9)
    } else if ns >= 999_950 {
        format!("{:.1} ms", ns as f64 / 1e6)
    } else if ns >= 1_000 {
        format!("{:.1} us", ns as f64 / 1e3)
    } else {
        format!("{ns} ns")
    }
}

/// A growth percentage: "+23.4%", "-5.0%", "+inf%".
pub fn format_percent(percent: f64) -> String {
    if percent.is_infinite() {
        return if percent > 0.0 { "+inf%" } else { "-inf%" }.to_string();
    }
    // Values that round to zero print as "+0.0%", not "-0.0%".
    if percent.abs() < 0.05 {
        return "+0.0%".to_string();
    }
    format!("{percent:+.1}%")
}

/// CLOCK_MONOTONIC in nanoseconds: the clock the kernel side stamps events with
/// (`bpf_ktime_get_ns`).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(format_duration(0), "0 ms");
        assert_eq!(format_duration(850), "850 ns");
        assert_eq!(format_duration(250_000), "250.0 us");
        assert_eq!(format_duration(999_949), "999.9 us");
        assert_eq!(format_duration(999_950), "1.0 ms");
        assert_eq!(format_duration(212_300_000), "212.3 ms");
        assert_eq!(format_duration(999_949_999), "999.9 ms");
        assert_eq!(format_duration(999_960_000), "1.00 s");
        assert_eq!(format_duration(1_200_000_000), "1.20 s");
        assert_eq!(format_duration(120_000_000_000), "120.00 s");
    }
}
