//! Builds the eBPF programs (profiler-ebpf) for the BPF target with nightly and bpf-linker, and
//! leaves the object in OUT_DIR for `include_bytes_aligned!`. `cargo xtask setup` installs what
//! this needs; set AYA_BUILD_SKIP=1 for metadata-only work (docs) on a machine without it.
use std::path::PathBuf;

use anyhow::{Context as _, anyhow};
use aya_build::Toolchain;

fn main() -> anyhow::Result<()> {
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
