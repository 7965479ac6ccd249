//! `cargo xtask dist`: the one file to copy to a host. A static build for the musl target when
//! it can be had (`rustup target add x86_64-unknown-linux-musl`), checked by running it in a
//! root that holds nothing but the binary (no glibc, no loader); otherwise the glibc build,
//! with the newest glibc symbol version it needs said.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{cargo, output, root, status};

const MUSL: &str = "x86_64-unknown-linux-musl";

pub fn run() -> Result<()> {
    let dist = root().join("target/dist");
    std::fs::create_dir_all(&dist).context("creating target/dist")?;
    let version = env!("CARGO_PKG_VERSION");
    if musl_target() {
        status(cargo().args([
            "build",
            "--release",
            "-p",
            "profiler-user",
            "--target",
            MUSL,
        ]))?;
        let built = root().join(format!("target/{MUSL}/release/stallscope"));
        let file = dist.join(format!("stallscope-{version}-x86_64-linux-static"));
        std::fs::copy(&built, &file)
            .with_context(|| format!("copying {} to {}", built.display(), file.display()))?;
        check_without_libc(&file, &dist)?;
        eprintln!(
            "dist: {} (statically linked, musl; runs in a root without glibc)",
            file.display()
        );
        return Ok(());
    }
    eprintln!(
        "dist: the {MUSL} target is not available (`rustup target add {MUSL}` failed): building against glibc"
    );
    status(cargo().args(["build", "--release", "-p", "profiler-user"]))?;
    let built = root().join("target/release/stallscope");
    let file = dist.join(format!("stallscope-{version}-x86_64-linux-gnu"));
    std::fs::copy(&built, &file)
        .with_context(|| format!("copying {} to {}", built.display(), file.display()))?;
    let needs = newest_glibc(&file)?;
    eprintln!(
        "dist: {} (dynamically linked: needs glibc {} or newer)",
        file.display(),
        needs.unwrap_or_else(|| "(no versioned symbol found)".into())
    );
    Ok(())
}

/// Whether the musl target's standard library is there, adding it when it is not.
fn musl_target() -> bool {
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"]))
        .is_some_and(|list| list.lines().any(|l| l.trim() == MUSL));
    installed
        || Command::new("rustup")
            .args(["target", "add", MUSL])
            .status()
            .is_ok_and(|s| s.success())
}

/// Runs the binary in a root that holds only itself: a dynamically linked one cannot even
/// start there (no loader, no libc).
fn check_without_libc(binary: &Path, dist: &Path) -> Result<()> {
    let chroot = dist.join("check-root");
    let _ = std::fs::remove_dir_all(&chroot);
    std::fs::create_dir_all(&chroot).context("creating the check root")?;
    let inside = chroot.join("stallscope");
    std::fs::copy(binary, &inside).context("copying into the check root")?;
    let result = (|| -> Result<()> {
        let version = Command::new("chroot")
            .arg(&chroot)
            .args(["/stallscope", "--version"])
            .output()
            .context("running chroot (root is needed for `cargo xtask dist`'s check)")?;
        let text = String::from_utf8_lossy(&version.stdout);
        if !version.status.success() || !text.starts_with("stallscope ") {
            bail!(
                "the static binary does not run in a root without libc: {} {}",
                version.status,
                String::from_utf8_lossy(&version.stderr)
            );
        }
        let help = Command::new("chroot")
            .arg(&chroot)
            .args(["/stallscope", "watch", "--help"])
            .output()
            .context("running chroot")?;
        if !help.status.success() {
            bail!("`stallscope watch --help` failed in the check root");
        }
        Ok(())
    })();
    // The check root is ours: removed whatever happened.
    let _ = std::fs::remove_dir_all(&chroot);
    result
}

/// The newest `GLIBC_x.y` symbol version the binary refers to.
fn newest_glibc(binary: &PathBuf) -> Result<Option<String>> {
    let bytes = std::fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    let mut newest: Option<(u32, u32)> = None;
    let needle = b"GLIBC_2.";
    for (at, _) in bytes
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
    {
        let rest = &bytes[at + needle.len()..];
        let digits: Vec<u8> = rest
            .iter()
            .copied()
            .take_while(|b| b.is_ascii_digit() || *b == b'.')
            .collect();
        let text = String::from_utf8_lossy(&digits);
        let mut parts = text.split('.');
        let minor = parts.next().and_then(|m| m.parse::<u32>().ok());
        let patch = parts
            .next()
            .and_then(|p| p.parse::<u32>().ok())
            .unwrap_or(0);
        if let Some(minor) = minor
            && newest.is_none_or(|n| (minor, patch) > n)
        {
            newest = Some((minor, patch));
        }
    }
    Ok(newest.map(|(minor, patch)| {
        if patch == 0 {
            format!("2.{minor}")
        } else {
            format!("2.{minor}.{patch}")
        }
    }))
}
