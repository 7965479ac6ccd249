//! `stallscope doctor`: checks what recording needs, one line per item (being written).

/// Runs every check, prints one line per item, returns the exit code (0 all pass, 1 otherwise).
pub fn run(developer: bool) -> u8 {
    let _ = developer;
    0
}
