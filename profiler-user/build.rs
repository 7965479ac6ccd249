//! Builds the eBPF programs (profiler-ebpf) for the BPF target with nightly and bpf-linker, and
//! leaves the object in OUT_DIR for `include_bytes_aligned!`. `cargo xtask setup` installs what
//! this needs; set AYA_BUILD_SKIP=1 for metadata-only work (docs) on a machine without it.
//!
//! It also vendors the chart libraries report.html inlines (d3 and d3-flame-graph from npm,
//! see `web_vendor`), so no minified library is committed and the page needs no network.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

/// npm packages report.html inlines, pinned. `cargo xtask setup` installs the same list (with
/// playwright-core for the browser test) into `target/web`; keep the two in step.
const WEB_PACKAGES: &[&str] = &["d3@7.9.2", "d3-flame-graph@5.0.0"];

/// (file in target/web/node_modules, name in OUT_DIR).
const WEB_FILES: &[(&str, &str)] = &[
    ("d3/dist/d3.min.js", "d3.min.js"),
    (
        "d3-flame-graph/dist/d3-flamegraph.umd.min.js",
        "d3-flamegraph.min.js",
    ),
];

fn main() -> anyhow::Result<()> {
    web_vendor()?;
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf_package = packages
        .into_iter()
        .find(|package| package.name.as_str() == "profiler-ebpf")
        .ok_or_else(|| anyhow!("profiler-ebpf package not found in the workspace"))?;
    let root_dir = ebpf_package
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf_package.manifest_path))?;
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    // Twice: for kernels with bpf_loop (5.17+), then with feature `compat` for older ones. Both
    // builds land in OUT_DIR/stallscope; each is moved aside to its own name.
    for (features, name) in [
        (&[][..], "stallscope-modern"),
        (&["compat"][..], "stallscope-compat"),
    ] {
        let package = aya_build::Package {
            name: ebpf_package.name.as_str(),
            root_dir: root_dir.as_str(),
            features,
            ..Default::default()
        };
        aya_build::build_ebpf([package], Toolchain::default()).context(
            "building the eBPF programs failed; run `cargo xtask setup` to install bpf-linker and nightly rust-src",
        )?;
        if out_dir.join("stallscope").exists() {
            std::fs::rename(out_dir.join("stallscope"), out_dir.join(name))
                .with_context(|| format!("moving the eBPF object to {name}"))?;
        }
    }
    Ok(())
}

/// Copies the vendored chart libraries into OUT_DIR for `include_str!`. They come from
/// `target/web` (installed by `cargo xtask setup`); when missing, npm installs them there. When
/// that fails too (no npm, no registry), the build still succeeds with stand-ins that make
/// report.html say how to fix it, so a machine without npm can still build and record.
fn web_vendor() -> anyhow::Result<()> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let web = manifest
        .parent()
        .ok_or_else(|| anyhow!("no workspace above {}", manifest.display()))?
        .join("target/web");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let present = |web: &Path| {
        WEB_FILES
            .iter()
            .all(|(f, _)| web.join("node_modules").join(f).is_file())
    };
    if !present(&web) {
        let installed = std::fs::create_dir_all(&web).is_ok()
            && Command::new("npm")
                .args(["install", "--no-audit", "--no-fund", "--ignore-scripts"])
                .arg("--prefix")
                .arg(&web)
                .args(WEB_PACKAGES)
                .status()
                .is_ok_and(|s| s.success());
        if !installed {
            println!(
                "cargo:warning=report.html will lack its charts: npm could not install {} into {}; run `cargo xtask setup`",
                WEB_PACKAGES.join(" "),
                web.display()
            );
        }
    }
    for (from, to) in WEB_FILES {
        let source = web.join("node_modules").join(from);
        println!("cargo:rerun-if-changed={}", source.display());
        let text = std::fs::read_to_string(&source).unwrap_or_else(|_| {
            "window.STALLSCOPE_VENDOR_MISSING = 'stallscope was built without its chart libraries (npm d3, d3-flame-graph): run `cargo xtask setup` and rebuild';".to_string()
        });
        // Inlined in a <script> element: a closing tag inside would end it early.
        if text.to_ascii_lowercase().contains("</script") {
            return Err(anyhow!(
                "{} contains </script; cannot inline it",
                source.display()
            ));
        }
        std::fs::write(out.join(to), text).with_context(|| format!("writing {to} to OUT_DIR"))?;
    }
    Ok(())
}
