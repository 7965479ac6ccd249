//! The Debian unstable ("sid") root the tests run CPython 3.14 and 3.15 in: `target/sid`, made
//! by debootstrap (under a minute), with the interpreters, their venv modules, the host's CA
//! bundle (so pip reaches PyPI) and a virtualenv with FastAPI and uvicorn for 3.14
//! (`/opt/venv-3.14`). Kept under `target/` so a CI cache carries it; each part is made once and
//! marked done with a stamp file that names what it holds, so a changed recipe remakes it.
//!
//! The tests start their targets with `chroot target/sid python3.X ...`: the processes live in
//! the host's mount namespace but see the root, so the agent must read their binaries through
//! `/proc/PID/root`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

use crate::status;

/// Debian's mirror of this machine kind (the same host as its own sources).
const MIRROR: &str = "http://deb.debian.org/debian";

/// Packages of the root: what the tests run, and what gives them pip and venvs.
const PACKAGES: &[&str] = &[
    "python3.14",
    "python3.15",
    "python3.14-venv",
    "python3.15-venv",
];

/// Where the FastAPI virtualenv is, inside the root.
pub const VENV_314: &str = "/opt/venv-3.14";

/// The host's CA bundle: pip inside the root reaches PyPI only with it (the host's pip
/// settings, `PIP_CERT` among them, point at this path and are inherited through chroot).
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

pub fn root_dir(workspace: &Path) -> PathBuf {
    workspace.join("target/sid")
}

pub fn setup(workspace: &Path) -> Result<()> {
    let root = root_dir(workspace);
    setup_root(&root)?;
    setup_venv(workspace, &root)?;
    setup_apt_packages(&root)
}

/// Packages added to the root by apt: Debian's nodejs (24, V8 in `libnode.so`) for the
/// JavaScript-frame tests, and python3.14-dbg (a second, debug build of 3.14 to read).
const APT_PACKAGES: &[&str] = &["nodejs", "python3.14-dbg"];

/// [`APT_PACKAGES`] in the root: apt inside it, which needs /proc there while it runs.
fn setup_apt_packages(root: &Path) -> Result<()> {
    let recipe = format!(
        "apt-get install --no-install-recommends {}\n",
        APT_PACKAGES.join(" ")
    );
    if done(root, ".stallscope-apt", &recipe) {
        eprintln!("setup: ok: {} in the sid root", APT_PACKAGES.join(", "));
        return Ok(());
    }
    eprintln!(
        "setup: installing {} in the sid root (apt, about a minute)",
        APT_PACKAGES.join(", ")
    );
    let proc_dir = root.join("proc");
    status(
        Command::new("mount")
            .args(["-t", "proc", "proc"])
            .arg(&proc_dir),
    )?;
    // The package host serves a snapshot whose Release file is past its Valid-Until date.
    let apt = |args: &[&str]| {
        status(
            Command::new("chroot")
                .arg(root)
                .arg("apt-get")
                .args(["-q", "-o", "Acquire::Check-Valid-Until=false"])
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
    };
    let mut install = vec!["install", "-y", "--no-install-recommends"];
    install.extend_from_slice(APT_PACKAGES);
    let installed = apt(&["update"]).and_then(|()| apt(&install));
    let unmounted = status(Command::new("umount").arg(&proc_dir));
    installed.with_context(|| {
        format!(
            "installing {} in the sid root (is the Debian mirror reachable?)",
            APT_PACKAGES.join(", ")
        )
    })?;
    unmounted?;
    std::fs::write(root.join(".stallscope-apt"), recipe)?;
    Ok(())
}

/// Has the stamp `name` in the root the content `recipe`?
fn done(root: &Path, name: &str, recipe: &str) -> bool {
    std::fs::read_to_string(root.join(name)).is_ok_and(|s| s == recipe)
}

fn setup_root(root: &Path) -> Result<()> {
    let recipe = format!("debootstrap --variant=minbase sid {}\n", PACKAGES.join(","));
    if done(root, ".stallscope-root", &recipe) {
        eprintln!(
            "setup: ok: Debian sid root with CPython 3.14 and 3.15 at {}",
            root.display()
        );
        return Ok(());
    }
    eprintln!(
        "setup: making the Debian sid root with CPython 3.14 and 3.15 at {} (about a minute)",
        root.display()
    );
    // Built aside and moved in place when complete: an interrupted run leaves no half root
    // that looks finished.
    let building = root.with_extension("building");
    for dir in [root, building.as_path()] {
        if dir.exists() {
            std::fs::remove_dir_all(dir)
                .with_context(|| format!("removing the old {}", dir.display()))?;
        }
    }
    status(
        Command::new("debootstrap")
            .args(["--variant=minbase"])
            .arg(format!("--include={}", PACKAGES.join(",")))
            .arg("sid")
            .arg(&building)
            .arg(MIRROR),
    )
    .context("debootstrap of Debian sid (is the Debian mirror reachable? are you root?)")?;
    let ca = building.join(CA_BUNDLE.trim_start_matches('/'));
    if let Some(parent) = ca.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::copy(CA_BUNDLE, &ca).with_context(|| format!("copying {CA_BUNDLE} into the root"))?;
    std::fs::write(building.join(".stallscope-root"), &recipe)?;
    std::fs::rename(&building, root)
        .with_context(|| format!("moving {} to {}", building.display(), root.display()))
}

/// The FastAPI virtualenv for 3.14, with the pins the other versions' virtualenvs use.
fn setup_venv(workspace: &Path, root: &Path) -> Result<()> {
    let requirements =
        std::fs::read_to_string(workspace.join("tests/targets/python/requirements.txt"))
            .context("reading tests/targets/python/requirements.txt")?;
    let pins: Vec<&str> = requirements
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let recipe = format!("{VENV_314}: {}\n", pins.join(" "));
    if done(root, ".stallscope-venv", &recipe) {
        eprintln!("setup: ok: FastAPI virtualenv {VENV_314} in the sid root");
        return Ok(());
    }
    eprintln!("setup: making the FastAPI virtualenv {VENV_314} in the sid root (PyPI)");
    let venv = root.join(VENV_314.trim_start_matches('/'));
    if venv.exists() {
        std::fs::remove_dir_all(&venv)?;
    }
    status(
        Command::new("chroot")
            .arg(root)
            .args(["python3.14", "-m", "venv", VENV_314]),
    )?;
    status(
        Command::new("chroot")
            .arg(root)
            .arg(format!("{VENV_314}/bin/pip"))
            .args(["install", "--quiet"])
            .args(&pins)
            // The host's local wheel directory is not in the root.
            .env_remove("PIP_FIND_LINKS"),
    )
    .context("installing FastAPI and uvicorn in the sid root (PyPI must be reachable)")?;
    std::fs::write(root.join(".stallscope-venv"), &recipe)?;
    Ok(())
}
