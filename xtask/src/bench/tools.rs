//! What the benchmarks need besides the agent, installed when missing (each step says "ok" and
//! skips when its piece is there): wrk and bpftrace from Debian, a virtualenv with the FastAPI
//! app's requirements and py-spy, and the tokio HTTP server target.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{apt_install, cargo, output, root, status};

/// Debian bookworm: wrk 4.1.0, bpftrace 0.17.
pub const APT_PACKAGES: &[&str] = &["wrk", "bpftrace"];

/// py-spy, pinned, next to the FastAPI app's own requirements.
const PY_SPY: &str = "py-spy==0.4.3";

pub struct Tools {
    /// The virtualenv's python (uvicorn, FastAPI).
    pub python: PathBuf,
    pub py_spy: PathBuf,
    pub tokio_http: PathBuf,
    versions: String,
}

impl Tools {
    /// One line naming every tool and its version.
    pub fn versions(&self) -> &str {
        &self.versions
    }
}

pub fn ensure(dir: &Path) -> Result<Tools> {
    apt_install("bench", APT_PACKAGES)?;
    let venv = ensure_venv()?;
    let tokio_http = build_tokio_http(dir)?;
    let python = venv.join("bin/python");
    let py_spy = venv.join("bin/py-spy");
    // wrk prints its version with its usage and exits 1: read stdout whatever the status.
    let first_line = |cmd: &mut Command| {
        cmd.stderr(std::process::Stdio::null())
            .output()
            .ok()
            .and_then(|out| {
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .next()
                    .map(|l| l.trim().to_string())
            })
            .filter(|l| !l.is_empty())
            .unwrap_or_else(|| "unknown".into())
    };
    let versions = format!(
        "{}, {}, {}, Python {} with uvicorn {} and FastAPI {}",
        first_line(Command::new("wrk").arg("--version"))
            .split(" Copyright")
            .next()
            .unwrap_or("wrk"),
        first_line(Command::new("bpftrace").arg("--version")),
        first_line(Command::new(&py_spy).arg("--version")),
        first_line(Command::new(&python).arg("--version")).trim_start_matches("Python "),
        first_line(
            Command::new(&python).args(["-c", "import uvicorn; print(uvicorn.__version__)"])
        ),
        first_line(
            Command::new(&python).args(["-c", "import fastapi; print(fastapi.__version__)"])
        ),
    );
    Ok(Tools {
        python,
        py_spy,
        tokio_http,
        versions,
    })
}

/// The real interpreter behind pyenv's shim (the shim is a shell script that execs it).
fn system_python() -> Result<String> {
    output(Command::new("python3").args(["-c", "import sys; print(sys.executable)"]))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .context("python3 is not on PATH (the FastAPI benchmark needs it)")
}

/// `target/bench-venv`: the FastAPI app's requirements (tests/targets/service) and py-spy,
/// created or brought up to date when the wanted set changed.
fn ensure_venv() -> Result<PathBuf> {
    let dir = root().join("target/bench-venv");
    let requirements = root().join("tests/targets/service/requirements.txt");
    let wanted = format!(
        "{}{PY_SPY}\n",
        std::fs::read_to_string(&requirements)
            .with_context(|| format!("reading {}", requirements.display()))?
    );
    let stamp = dir.join("stallscope-bench-requirements.txt");
    let python = dir.join("bin/python");
    if python.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&wanted) {
        eprintln!("bench: ok: {} present", dir.display());
        return Ok(dir);
    }
    if !python.exists() {
        eprintln!("bench: creating {}", dir.display());
        status(Command::new(system_python()?).args(["-m", "venv"]).arg(&dir)).context(
            "creating the benchmark virtualenv (Debian's python3 needs `apt-get install python3-venv`)",
        )?;
    }
    eprintln!(
        "bench: installing uvicorn, FastAPI and {PY_SPY} into {}",
        dir.display()
    );
    status(
        Command::new(dir.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(&requirements)
            .arg(PY_SPY),
    )
    .context("installing the benchmark's Python packages (PyPI must be reachable)")?;
    std::fs::write(&stamp, &wanted).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(dir)
}

/// `bench/targets/tokio_http`, its own Cargo project, with Cargo's default release profile
/// whatever flags the outer build was given (incremental: quick when nothing changed).
fn build_tokio_http(dir: &Path) -> Result<PathBuf> {
    let manifest = root().join("bench/targets/tokio_http/Cargo.toml");
    let target_dir = dir.join("tokio_http");
    status(
        cargo()
            .args([
                "build",
                "--release",
                "--locked",
                "--quiet",
                "--manifest-path",
            ])
            .arg(&manifest)
            .arg("--target-dir")
            .arg(&target_dir)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_BUILD_RUSTFLAGS"),
    )
    .context("building the tokio HTTP server (bench/targets/tokio_http)")?;
    let binary = target_dir.join("release/tokio_http");
    if !binary.exists() {
        bail!("cargo built no {}", binary.display());
    }
    eprintln!("bench: ok: {}", binary.display());
    Ok(binary)
}
