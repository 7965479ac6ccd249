//! `cargo xtask kernels`: the agent on the kernels users run, booted in qemu.
//!
//! Debian's own kernel images (bullseye 5.10, bookworm 6.1, trixie 6.12) are fetched once with
//! apt (a sources list per suite, cached under target/kernels/) and booted under software
//! emulation (TCG: KVM guests hang on this machine kind) with an initramfs built here: busybox,
//! the agent and the libraries it links, static test targets, and an /init that runs the checks
//! and powers off. The guest writes its results to a second serial port (a file here), apart
//! from the kernel's console, and this module judges them: one line per kernel, an error when
//! any check missed.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use crate::{agent_path, root, status};

/// A Debian suite and the kernel series its `linux-image-amd64` depends on.
pub struct Kernel {
    pub suite: &'static str,
    pub series: &'static str,
}

/// Oldest first: the oldest is the oldest kernel stallscope supports.
pub const KERNELS: &[Kernel] = &[
    Kernel {
        suite: "bullseye",
        series: "5.10",
    },
    Kernel {
        suite: "bookworm",
        series: "6.1",
    },
    Kernel {
        suite: "trixie",
        series: "6.12",
    },
];

/// What `cargo xtask test` boots (the oldest and the newest), to stay in the CI budget.
pub const CI_KERNELS: &[&str] = &["5.10", "6.12"];

/// A guest that has not powered off by then is stuck (boot ~15 s, attach ~5-30 s, checks ~20 s).
const GUEST_TIMEOUT: Duration = Duration::from_secs(420);

/// The planted stalls the guest asks the C server for, and the function each must be found in.
const PLANTED: &[(&str, &str)] = &[("burn", "burn_cpu"), ("sleep", "sleep_in_handler")];

fn work_dir() -> PathBuf {
    root().join("target/kernels")
}

/// Boots each selected kernel (by series, e.g. "5.10"; empty: all) and checks the agent there.
pub fn run(selected: &[String]) -> Result<()> {
    let kernels: Vec<&Kernel> = KERNELS
        .iter()
        .filter(|k| selected.is_empty() || selected.iter().any(|s| s == k.series))
        .collect();
    if kernels.is_empty() {
        let known: Vec<&str> = KERNELS.iter().map(|k| k.series).collect();
        bail!(
            "no kernel matches {selected:?}; known: {}",
            known.join(", ")
        );
    }
    let initramfs = build_initramfs().context("building the initramfs")?;
    let mut lines = Vec::new();
    let mut failed = 0;
    for kernel in kernels {
        let started = Instant::now();
        let check = || {
            fetch(kernel)
                .and_then(|vmlinuz| boot(kernel, &vmlinuz, &initramfs))
                .map(|results| judge(&results))
                .unwrap_or_else(|err| Verdict::failed(format!("{err:#}")))
        };
        let mut verdict = check();
        if !verdict.ok {
            // A second boot before failing: under software emulation a vCPU can stall for
            // longer than the agent's reorder window, or a guest die mid-check (both seen once
            // in many runs, each time on a different check), while a real regression fails
            // both boots. The first boot's logs are kept beside the second's, and its verdict
            // is printed either way.
            let first = keep_first_attempt(kernel, verdict.summary);
            eprintln!(
                "kernels: {} failed once, booting it again: {first}",
                kernel.series
            );
            verdict = check();
            verdict.summary = format!("{} (first boot failed: {first})", verdict.summary);
        }
        if !verdict.ok {
            failed += 1;
        }
        let mut line = format!(
            "kernels: {:<5} {:<8} {} ({:.0?}): {}",
            kernel.series,
            kernel.suite,
            if verdict.ok { "ok  " } else { "FAIL" },
            started.elapsed(),
            verdict.summary
        );
        if !verdict.ok {
            let dir = work_dir().join(kernel.suite);
            line.push_str(&format!(
                " [results {}, console {}]",
                dir.join("results.txt").display(),
                dir.join("console.log").display()
            ));
        }
        eprintln!("{line}");
        lines.push(line);
    }
    eprintln!("kernels: logs in {}", work_dir().display());
    for line in &lines {
        println!("{line}");
    }
    if failed > 0 {
        bail!("{failed} kernel(s) failed (console logs under target/kernels/<suite>/)");
    }
    Ok(())
}

/// Renames a failed boot's results and console log to `*.first.*` (so the second boot does not
/// overwrite them) and returns its summary with their new paths.
fn keep_first_attempt(kernel: &Kernel, summary: String) -> String {
    let dir = work_dir().join(kernel.suite);
    for (from, to) in [
        ("results.txt", "results.first.txt"),
        ("console.log", "console.first.log"),
    ] {
        let _ = fs::rename(dir.join(from), dir.join(to));
    }
    format!("{summary} [{}]", dir.join("results.first.txt").display())
}

fn apt_options(dir: &Path) -> Vec<String> {
    [
        format!(
            "Dir::Etc::sourcelist={}",
            dir.join("sources.list").display()
        ),
        "Dir::Etc::sourceparts=-".to_string(),
        format!("Dir::State::Lists={}", dir.join("lists").display()),
        format!("Dir::Cache={}", dir.join("cache").display()),
        // The package host serves a snapshot whose Release files are past their Valid-Until.
        "Acquire::Check-Valid-Until=false".to_string(),
        "APT::Sandbox::User=root".to_string(),
    ]
    .into_iter()
    .flat_map(|o| ["-o".to_string(), o])
    .collect()
}

/// The suite's kernel image, downloaded and unpacked once (target/kernels/SUITE/vmlinuz).
fn fetch(kernel: &Kernel) -> Result<PathBuf> {
    let dir = work_dir().join(kernel.suite);
    let vmlinuz = dir.join("vmlinuz");
    if vmlinuz.exists() {
        return Ok(vmlinuz);
    }
    eprintln!("kernels: fetching Debian {}'s kernel", kernel.suite);
    fs::create_dir_all(dir.join("lists/partial"))?;
    fs::create_dir_all(dir.join("cache/archives/partial"))?;
    fs::write(
        dir.join("sources.list"),
        format!("deb http://deb.debian.org/debian {} main\n", kernel.suite),
    )?;
    let options = apt_options(&dir);
    status(
        Command::new("apt-get")
            .args(&options)
            .args(["update", "-qq"])
            .stdout(Stdio::null()),
    )
    .with_context(|| format!("apt-get update for {}", kernel.suite))?;
    let depends = crate::output(
        Command::new("apt-cache")
            .args(&options)
            .args(["depends", "linux-image-amd64"]),
    )
    .ok_or_else(|| {
        anyhow!(
            "apt-cache depends linux-image-amd64 failed for {}",
            kernel.suite
        )
    })?;
    let package = image_package(&depends)
        .ok_or_else(|| anyhow!("no linux-image package in {}: {depends}", kernel.suite))?;
    status(
        Command::new("apt-get")
            .args(&options)
            .args(["download", "-qq", &package])
            .current_dir(&dir),
    )
    .with_context(|| format!("downloading {package}"))?;
    let deb = fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| anyhow!("apt-get download left no .deb in {}", dir.display()))?;
    // Only boot/ is needed: the initramfs carries everything else, and no module is loaded.
    let unpacked = dir.join("unpacked");
    fs::create_dir_all(&unpacked)?;
    status(Command::new("sh").arg("-c").arg(format!(
        "dpkg-deb --fsys-tarfile '{}' | tar -x -C '{}' ./boot",
        deb.display(),
        unpacked.display()
    )))?;
    let image = fs::read_dir(unpacked.join("boot"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .ok_or_else(|| anyhow!("no boot/vmlinuz-* in {}", deb.display()))?;
    fs::copy(&image, &vmlinuz)?;
    fs::remove_file(&deb)?;
    Ok(vmlinuz)
}

/// The versioned image package `linux-image-amd64` depends on (apt-cache depends output).
pub fn image_package(depends: &str) -> Option<String> {
    depends.lines().find_map(|line| {
        let name = line.trim().strip_prefix("Depends:")?.trim();
        name.starts_with("linux-image-").then(|| name.to_string())
    })
}

/// The guest's /init: mounts what the agent needs, runs the checks, writes results to ttyS1.
const INIT: &str = r#"#!/bin/sh
export PATH=/bin:/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tracefs tracefs /sys/kernel/tracing
mount -t bpf bpf /sys/fs/bpf
# The host's STALLSCOPE_TRAMPOLINES=1 (the agent's opt-in to fentry/fexit hooks) reaches the guest
# as a kernel parameter (with the attach log on: it says which hooks were used).
grep -q 'stallscope.trampolines=1' /proc/cmdline && export STALLSCOPE_TRAMPOLINES=1 RUST_LOG=profiler_user::system::attach=info
ip link set lo up
stty -F /dev/ttyS1 raw -echo
exec 3>/dev/ttyS1
section() { echo "=== $1" >&3; cat "$2" >&3; echo >&3; echo "=== end" >&3; }
# step NAME: says on the results port which step begins, and arms a watchdog for it: a step
# still running after STEP_S seconds is reported as hung, with every process's state and kernel
# stack and the kernel's log (blocked tasks dumped), and the guest powers off, so the host says
# which step hung instead of waiting for its own timeout.
STEP_S=120
WATCHDOG=
step() {
  [ -n "$WATCHDOG" ] && kill $WATCHDOG 2>/dev/null
  echo "=== step $1" >&3; echo "at $(cut -d ' ' -f 1 /proc/uptime) s" >&3; echo "=== end" >&3
  ( sleep $STEP_S && hung "$1" ) &
  WATCHDOG=$!
}
hung() {
  {
    echo "step '$1' still running after $STEP_S s"
    for p in /proc/[0-9]*; do
      # Kernel threads have an empty command line (and /proc files a size of 0).
      cmd=$(tr '\0' ' ' < $p/cmdline 2>/dev/null)
      [ -n "$cmd" ] || continue
      echo "--- ${p#/proc/}: $cmd"
      for t in $p/task/*; do
        echo "  thread ${t##*/} $(grep State: $t/status) wchan $(cat $t/wchan 2>/dev/null)"
        sed 's/^/    /' $t/stack 2>/dev/null
      done
    done
    echo w > /proc/sysrq-trigger
    sleep 1
    # From the first report of trouble (or the blocked tasks just dumped) on.
    dmesg | awk 'f || /sysrq: Show Blocked State|blocked for more than|soft lockup|BUG:|WARNING:|Call Trace/ {f=1} f' | tail -n 200
  } > /tmp/hung 2>&1
  section "hung $1" /tmp/hung
  poweroff -f
}
sysctl -w kernel.hung_task_timeout_secs=30 > /dev/null 2>&1
step uname
uname -r > /tmp/uname; section uname /tmp/uname
step doctor
stallscope doctor > /tmp/doctor 2>&1; echo "rc $?" >> /tmp/doctor; section doctor /tmp/doctor

# The C loop: a planted CPU burn and a planted sleep among quick requests.
step "record: attach"
/targets/epoll_server 7070 > /tmp/server 2>&1 &
SERVER=$!
stallscope record --pid $SERVER --threshold 100ms -o /tmp/rec-c --format summary \
  > /tmp/agent-c.out 2> /tmp/agent-c.err &
AGENT=$!
i=0
while ! grep -q "stallscope: recording" /tmp/agent-c.err && kill -0 $AGENT 2>/dev/null && [ $i -lt 900 ]; do
  sleep 0.1; i=$((i+1))
done
echo "attach_ds $i" > /tmp/attach; section attach /tmp/attach
if ! grep -q "stallscope: recording" /tmp/agent-c.err; then
  kill -9 $AGENT; section agent-c /tmp/agent-c.err
  [ -f /tmp/rec-c/verifier.log ] && tail -n 40 /tmp/rec-c/verifier.log > /tmp/verifier && section verifier-c /tmp/verifier
  echo "=== done" >&3; poweroff -f
fi
step "record: requests"
ask() { echo "$1" | nc 127.0.0.1 7070 > /dev/null; }
ask_port() { echo "$2" | nc 127.0.0.1 "$1" > /dev/null; }
# record_pid PID NAME: records PID into /tmp/rec-NAME, back once the agent says "recording".
record_pid() {
  step "$2: attach"
  stallscope record --pid $1 --threshold 100ms -o /tmp/rec-$2 --format summary \
    > /tmp/agent-$2.out 2> /tmp/agent-$2.err &
  AGENT=$!
  i=0
  while ! grep -q "stallscope: recording" /tmp/agent-$2.err && kill -0 $AGENT 2>/dev/null && [ $i -lt 900 ]; do
    sleep 0.1; i=$((i+1))
  done
}
# stop_agent NAME: stops the agent and writes its sections.
stop_agent() {
  step "$1: stop the agent"
  sleep 0.3
  kill -INT $AGENT
  wait $AGENT
  echo "rc $?" >> /tmp/agent-$1.err
  section agent-$1 /tmp/agent-$1.err
  [ -f /tmp/rec-$1/stalls.json ] && section stalls-$1 /tmp/rec-$1/stalls.json
}
quick() { for n in 1 2 3 4 5; do ask quick; done; }
quick; ask "burn 300"; quick; ask "sleep 300"; quick
step "record: stop the agent"
sleep 0.3
kill -INT $AGENT
wait $AGENT
echo "rc $?" >> /tmp/agent-c.err
kill $SERVER
section server /tmp/server
section agent-c /tmp/agent-c.err
section summary-c /tmp/agent-c.out
[ -f /tmp/rec-c/stalls.json ] && section stalls-c /tmp/rec-c/stalls.json
[ -f /tmp/rec-c/verifier.log ] && tail -n 40 /tmp/rec-c/verifier.log > /tmp/verifier && section verifier-c /tmp/verifier

# watch, as the always-on monitor runs (SIGTERM ends it): the same burn and sleep on a second
# server, logged one JSON line each; then ci around a load command that plants one more burn,
# with a budget it exceeds (exit 3).
step "watch: attach"
/targets/epoll_server 7073 > /tmp/server-w 2>&1 &
WSERVER=$!
stallscope watch --pid $WSERVER --events /tmp/watch.jsonl --quiet > /tmp/agent-w.out 2> /tmp/agent-w.err &
AGENT=$!
i=0
while ! grep -q "stallscope: watching" /tmp/agent-w.err && kill -0 $AGENT 2>/dev/null && [ $i -lt 900 ]; do
  sleep 0.1; i=$((i+1))
done
step "watch: requests"
for n in 1 2 3; do ask_port 7073 quick; done; ask_port 7073 "burn 300"
for n in 1 2 3; do ask_port 7073 quick; done; ask_port 7073 "sleep 300"
for n in 1 2 3; do ask_port 7073 quick; done
step "watch: stop the agent"
sleep 0.5
kill -TERM $AGENT
wait $AGENT
echo "rc $?" >> /tmp/agent-w.err
section agent-w /tmp/agent-w.err
[ -f /tmp/watch.jsonl ] && section watch-events /tmp/watch.jsonl
step ci
stallscope ci --pid $WSERVER --fail-on max=200ms -o /tmp/rec-ci --format summary \
  -- sh -c 'echo "burn 300" | nc 127.0.0.1 7073 > /dev/null' > /tmp/agent-ci.out 2> /tmp/agent-ci.err
echo "rc $?" >> /tmp/agent-ci.err
section agent-ci /tmp/agent-ci.err
kill $WSERVER
section server-w /tmp/server-w

# CPython 3.11 (pyenv's, at its own path) burning 200 ms in Python code every 5th wake-up.
PY=$(ls /root/.pyenv/versions/*/bin/python3.11 2>/dev/null | head -n 1)
if [ -n "$PY" ]; then
  step "py311: attach"
  $PY -S -E /targets/py_busy_loop.py > /tmp/py.out 2>&1 &
  PYPID=$!
  sleep 1
  stallscope record --pid $PYPID --threshold 100ms -o /tmp/rec-py --format summary \
    > /tmp/agent-py.out 2> /tmp/agent-py.err &
  AGENT=$!
  i=0
  while ! grep -q "stallscope: recording" /tmp/agent-py.err && kill -0 $AGENT 2>/dev/null && [ $i -lt 900 ]; do
    sleep 0.1; i=$((i+1))
  done
  sleep 3
  step "py311: stop the agent"
  kill -INT $AGENT
  wait $AGENT
  echo "rc $?" >> /tmp/agent-py.err
  kill $PYPID
  section py-out /tmp/py.out
  section agent-py /tmp/agent-py.err
  [ -f /tmp/rec-py/stalls.json ] && section stalls-py /tmp/rec-py/stalls.json
fi

# The tokio release binary: a 200 ms hash and a 200 ms blocking sleep among quick requests.
/targets/tokio_app 7071 > /tmp/tokio.out 2>&1 &
TOKIO=$!
record_pid $TOKIO tokio
step "tokio: requests"
for n in 1 2 3; do ask_port 7071 quick; done; ask_port 7071 hash
for n in 1 2 3; do ask_port 7071 quick; done; ask_port 7071 sleep
for n in 1 2 3; do ask_port 7071 quick; done
stop_agent tokio
kill $TOKIO
section tokio-out /tmp/tokio.out

# CPython 3.14 from Debian's unstable root (a copy of its interpreter, libraries and standard
# library under /sid), chrooted there as the tests run it: asyncio_service.py's regex
# validation on the loop, among quick requests.
if [ -x /sid/usr/bin/python3.14 ]; then
  step "py314: start"
  chroot /sid /usr/bin/python3.14 -S -E /targets/asyncio_service.py 7072 > /tmp/py314.out 2>&1 &
  PY314=$!
  i=0
  while ! grep -q listening /tmp/py314.out && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
  record_pid $PY314 py314
  get() { printf 'GET %s HTTP/1.0\r\n\r\n' "$1" | nc 127.0.0.1 7072 | tail -n 1 >> /tmp/py314.resp; echo >> /tmp/py314.resp; }
  step "py314: requests"
  for n in 1 2 3; do get /ok; done; get "/validate?ms=300"; for n in 1 2 3; do get /ok; done
  stop_agent py314
  kill $PY314
  section py314-out /tmp/py314.out
  section py314-resp /tmp/py314.resp
fi
step dmesg
dmesg | tail -n 60 > /tmp/dmesg; section dmesg /tmp/dmesg
kill $WATCHDOG 2>/dev/null
echo "=== done" >&3
exec 3>&-
poweroff -f
"#;

/// Builds target/kernels/initramfs.cpio from the current agent binary.
fn build_initramfs() -> Result<PathBuf> {
    let agent = agent_path();
    if !agent.exists() {
        bail!("{} is missing: run `cargo xtask build`", agent.display());
    }
    let dir = work_dir().join("initramfs");
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    for sub in [
        "bin", "sbin", "usr/bin", "proc", "sys", "dev", "tmp", "targets",
    ] {
        fs::create_dir_all(dir.join(sub))?;
    }
    let busybox = Path::new("/bin/busybox");
    if !is_static(busybox) {
        bail!("/bin/busybox is not the static one: run `cargo xtask setup` (busybox-static)");
    }
    fs::copy(busybox, dir.join("bin/busybox"))?;
    let applets = crate::output(Command::new(busybox).arg("--list"))
        .ok_or_else(|| anyhow!("busybox --list failed"))?;
    for applet in applets.lines().filter(|a| !a.is_empty() && *a != "busybox") {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet))?;
    }
    fs::copy(&agent, dir.join("bin/stallscope"))?;
    for library in linked_libraries(&agent)? {
        let to = dir.join(library.strip_prefix("/").unwrap_or(&library));
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::copy(&library, &to).with_context(|| format!("copying {}", library.display()))?;
    }
    status(
        Command::new("gcc")
            .args([
                "-static",
                "-O2",
                "-g",
                "-fno-omit-frame-pointer",
                "-mno-omit-leaf-frame-pointer",
                "-o",
            ])
            .arg(dir.join("targets/epoll_server"))
            .arg(root().join("tests/targets/epoll_server.c")),
    )
    .context("building the static C target (gcc -static; libc6-dev)")?;
    let init = dir.join("init");
    fs::write(&init, INIT)?;
    fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    copy_python(&dir)?;
    fs::copy(
        root().join("tests/targets/py_busy_loop.py"),
        dir.join("targets/py_busy_loop.py"),
    )?;
    let tokio = tokio_app()?;
    fs::copy(&tokio, dir.join("targets/tokio_app"))?;
    copy_libraries(&tokio, &dir)?;
    copy_sid_python(&dir)?;
    let cpio = work_dir().join("initramfs.cpio");
    status(Command::new("sh").arg("-c").arg(format!(
        "cd '{}' && find . -print0 | cpio --null -o -H newc --quiet > '{}'",
        dir.display(),
        cpio.display()
    )))
    .context("packing the initramfs (cpio)")?;
    Ok(cpio)
}

/// The image's pyenv CPython 3.11, at its own path (so it finds its library): the binary, the
/// libraries it links, and what `python -S -E` imports that is not frozen (encodings, the
/// extension modules). Skipped (no Python check) when the machine has no such interpreter.
fn copy_python(dir: &Path) -> Result<()> {
    let Some(prefix) = fs::read_dir("/root/.pyenv/versions")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.join("bin/python3.11").exists())
    else {
        eprintln!("kernels: no pyenv CPython 3.11 here: the Python check is skipped");
        return Ok(());
    };
    let python = prefix.join("bin/python3.11");
    let inside = |path: &Path| dir.join(path.strip_prefix("/").unwrap_or(path));
    fs::create_dir_all(inside(&prefix.join("bin")))?;
    fs::copy(&python, inside(&python))?;
    for library in linked_libraries(&python)? {
        let to = inside(&library);
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::copy(&library, &to).with_context(|| format!("copying {}", library.display()))?;
    }
    let lib = prefix.join("lib/python3.11");
    for sub in ["encodings", "lib-dynload"] {
        fs::create_dir_all(inside(&lib))?;
        status(
            Command::new("cp")
                .arg("-a")
                .arg(lib.join(sub))
                .arg(inside(&lib)),
        )?;
    }
    Ok(())
}

/// The tests' tokio target (tests/targets/tokio_app), built with Cargo's default release
/// profile (no frame pointers) into target/tokio_app as the tests build it.
fn tokio_app() -> Result<PathBuf> {
    let target_dir = root().join("target/tokio_app");
    status(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args(["build", "--release", "--quiet", "--manifest-path"])
            .arg(root().join("tests/targets/tokio_app/Cargo.toml"))
            .arg("--target-dir")
            .arg(&target_dir)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_BUILD_RUSTFLAGS"),
    )
    .context("building tests/targets/tokio_app")?;
    Ok(target_dir.join("release/tokio_app"))
}

/// Copies the libraries `ldd` lists for `binary` into the image at their own paths.
fn copy_libraries(binary: &Path, dir: &Path) -> Result<()> {
    for library in linked_libraries(binary)? {
        let to = dir.join(library.strip_prefix("/").unwrap_or(&library));
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::copy(&library, &to).with_context(|| format!("copying {}", library.display()))?;
    }
    Ok(())
}

/// Debian unstable's CPython 3.14 (from target/sid, made by `cargo xtask setup`) as a small
/// root of its own under /sid: the interpreter, the libraries the root's `ldd` lists, its
/// standard library, and asyncio_service.py. The guest chroots into it, as the tests run the
/// root's interpreters; the image's libc stays the host's, for the agent.
fn copy_sid_python(dir: &Path) -> Result<()> {
    let sid = crate::sid::root_dir(&root());
    let python = Path::new("/usr/bin/python3.14");
    let inside_sid = |path: &Path| sid.join(path.strip_prefix("/").unwrap_or(path));
    if !inside_sid(python).exists() {
        bail!(
            "{} is missing: run `cargo xtask setup`",
            inside_sid(python).display()
        );
    }
    let mini = dir.join("sid");
    let inside_mini = |path: &Path| mini.join(path.strip_prefix("/").unwrap_or(path));
    let listing = crate::output(Command::new("chroot").arg(&sid).arg("ldd").arg(python))
        .ok_or_else(|| anyhow!("ldd {} in {} failed", python.display(), sid.display()))?;
    for path in parse_ldd(&listing)
        .into_iter()
        .chain([python.to_path_buf()])
    {
        // Resolved inside the root: its merged-/usr links are relative.
        let from = fs::canonicalize(inside_sid(&path))
            .with_context(|| format!("resolving {}", inside_sid(&path).display()))?;
        let to = inside_mini(&path);
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::copy(&from, &to).with_context(|| format!("copying {}", from.display()))?;
    }
    fs::create_dir_all(inside_mini(Path::new("/usr/lib")))?;
    status(
        Command::new("cp")
            .arg("-a")
            .arg(inside_sid(Path::new("/usr/lib/python3.14")))
            .arg(inside_mini(Path::new("/usr/lib"))),
    )?;
    fs::create_dir_all(mini.join("targets"))?;
    fs::copy(
        root().join("tests/targets/python/asyncio_service.py"),
        mini.join("targets/asyncio_service.py"),
    )?;
    Ok(())
}

fn is_static(binary: &Path) -> bool {
    crate::output(Command::new("ldd").arg(binary)).is_none()
}

/// The shared libraries `ldd` lists for a binary (the loader included), as absolute paths.
fn linked_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let listing = crate::output(Command::new("ldd").arg(binary))
        .ok_or_else(|| anyhow!("ldd {} failed", binary.display()))?;
    Ok(parse_ldd(&listing))
}

pub fn parse_ldd(listing: &str) -> Vec<PathBuf> {
    listing
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// The guest kernel's command line; `stallscope.trampolines=1` (an unknown parameter the kernel
/// leaves in /proc/cmdline) when the host asks for the agent's trampoline hooks.
fn kernel_command_line() -> String {
    let mut line = "console=ttyS0 quiet panic=-1".to_string();
    if std::env::var_os("STALLSCOPE_TRAMPOLINES").is_some_and(|v| v == "1") {
        line.push_str(" stallscope.trampolines=1");
    }
    line
}

/// Boots one kernel with the initramfs; returns what the guest wrote on its second serial port.
fn boot(kernel: &Kernel, vmlinuz: &Path, initramfs: &Path) -> Result<String> {
    let dir = work_dir().join(kernel.suite);
    let console = dir.join("console.log");
    let results = dir.join("results.txt");
    let _ = fs::remove_file(&results);
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg,thread=multi", "-cpu", "max", "-smp", "2"])
        .args(["-m", "2048", "-nographic", "-no-reboot", "-monitor", "none"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", &kernel_command_line()])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-serial")
        .arg(format!("file:{}", results.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("starting qemu-system-x86_64 (run `cargo xtask setup`)")?;
    let deadline = Instant::now() + GUEST_TIMEOUT;
    loop {
        if let Some(exit) = child.try_wait()? {
            if !exit.success() {
                bail!("qemu exited with {exit}; see {}", console.display());
            }
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let written = fs::read_to_string(&results).unwrap_or_default();
            bail!(
                "the guest did not power off within {GUEST_TIMEOUT:?}, hung in step '{}' (its \
                 watchdog did not fire either); results {}, console {}",
                last_step(&sections(&written)).unwrap_or("none: before /init"),
                results.display(),
                console.display()
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
    fs::read_to_string(&results).with_context(|| format!("reading {}", results.display()))
}

/// The guest's sections ("=== NAME" ... "=== end"), by name.
pub fn sections(results: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in results.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(name) = line.strip_prefix("=== ") {
            if let Some(done) = current.take() {
                out.push(done);
            }
            if name != "end" {
                current = Some((name.to_string(), String::new()));
            }
            continue;
        }
        if let Some((_, body)) = current.as_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    out.extend(current);
    out
}

/// The last step the guest said it began ("=== step NAME").
fn last_step(sections: &[(String, String)]) -> Option<&str> {
    sections
        .iter()
        .rev()
        .find_map(|(name, _)| name.strip_prefix("step "))
}

fn section<'a>(sections: &'a [(String, String)], name: &str) -> Option<&'a str> {
    sections
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, body)| body.as_str())
}

/// The judgement on one kernel's run.
pub struct Verdict {
    pub ok: bool,
    pub summary: String,
}

impl Verdict {
    fn failed(summary: String) -> Self {
        Verdict { ok: false, summary }
    }
}

/// Judges the guest's results: doctor ran, the agent recorded, and each planted stall was
/// found, covering the server's own timing, with its function on the heaviest code stack.
pub fn judge(results: &str) -> Verdict {
    let sections = sections(results);
    let mut parts = Vec::new();
    let mut ok = true;
    match section(&sections, "uname") {
        Some(release) => parts.push(format!("Linux {}", release.trim())),
        None => {
            return Verdict::failed("the guest wrote nothing (did /init run?)".to_string());
        }
    }
    let doctor = section(&sections, "doctor").unwrap_or("");
    parts.push(doctor_summary(doctor));
    if let Some((name, _)) = sections.iter().find(|(n, _)| n.starts_with("hung ")) {
        ok = false;
        parts.push(format!(
            "HUNG in step '{}' (the guest's watchdog fired; each process's state and kernel \
             stack and the kernel log are in its section of the results)",
            &name["hung ".len()..]
        ));
    } else if section(&sections, "done").is_none() {
        ok = false;
        parts.push(format!(
            "the guest stopped before the end of its checks (last step: {})",
            last_step(&sections).unwrap_or("none")
        ));
    }
    if let Some(attach) = section(&sections, "attach")
        .and_then(|a| a.trim().strip_prefix("attach_ds "))
        .and_then(|n| n.parse::<u64>().ok())
    {
        parts.push(format!("attach {:.1} s", attach as f64 / 10.0));
    }
    let agent = section(&sections, "agent-c").unwrap_or("");
    let stalls = section(&sections, "stalls-c").and_then(|s| serde_json::from_str::<Value>(s).ok());
    let planted = planted(section(&sections, "server").unwrap_or(""));
    match stalls {
        None => {
            ok = false;
            parts.push(format!(
                "C loop: no stalls.json; agent said: {}",
                last_lines(agent)
            ));
        }
        Some(json) => {
            let timed = timed_iterations(section(&sections, "server").unwrap_or(""));
            let (found, detail) = judge_c_loop(&json, &planted, &timed);
            ok &= found;
            parts.push(format!("C loop: {detail}"));
        }
    }
    if let Some(notes) = degraded_notes(agent) {
        parts.push(notes);
    }
    if let Some(agent_py) = section(&sections, "agent-py") {
        let json = section(&sections, "stalls-py").and_then(|s| serde_json::from_str(s).ok());
        let (found, detail) = judge_python(json.as_ref(), agent_py);
        ok &= found;
        parts.push(format!("CPython 3.11: {detail}"));
    }
    let (found, detail) = judge_watch(
        section(&sections, "watch-events").unwrap_or(""),
        section(&sections, "server-w").unwrap_or(""),
        section(&sections, "agent-w").unwrap_or(""),
    );
    ok &= found;
    parts.push(format!("watch: {detail}"));
    let (found, detail) = judge_ci(section(&sections, "agent-ci").unwrap_or(""));
    ok &= found;
    parts.push(format!("ci: {detail}"));
    let json_of = |name: &str| section(&sections, name).and_then(|s| serde_json::from_str(s).ok());
    let (found, detail) = judge_tokio(
        json_of("stalls-tokio").as_ref(),
        section(&sections, "tokio-out").unwrap_or(""),
        section(&sections, "agent-tokio").unwrap_or(""),
    );
    ok &= found;
    parts.push(format!("tokio: {detail}"));
    match section(&sections, "agent-py314") {
        Some(agent) => {
            let (found, detail) = judge_asyncio(
                json_of("stalls-py314").as_ref(),
                section(&sections, "py314-resp").unwrap_or(""),
                agent,
            );
            ok &= found;
            parts.push(format!("CPython 3.14: {detail}"));
        }
        None => {
            ok = false;
            parts.push(
                "CPython 3.14: not run (no /sid/usr/bin/python3.14 in the image)".to_string(),
            );
        }
    }
    Verdict {
        ok,
        summary: parts.join("; "),
    }
}

/// "doctor: 12 ok, 1 warning" or the failing checks' names.
fn doctor_summary(doctor: &str) -> String {
    let rc = doctor
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("rc "))
        .unwrap_or("?")
        .trim()
        .to_string();
    let problems: Vec<String> = doctor
        .lines()
        .filter(|l| l.contains("FAIL") || l.contains("WARN"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    if problems.is_empty() {
        format!("doctor exit {rc}")
    } else {
        format!("doctor exit {rc} ({})", problems.join(" | "))
    }
}

/// What the agent said it turned off on this kernel (its "on this kernel:" line).
fn degraded_notes(agent: &str) -> Option<String> {
    agent
        .lines()
        .find(|l| l.contains("on this kernel"))
        .map(|l| l.trim_start_matches("stallscope: ").trim().to_string())
}

fn last_lines(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(3)..].join(" / ")
}

/// (kind, start_ns, end_ns) of each stall the server says it planted.
pub fn planted(server: &str) -> Vec<(String, u64, u64)> {
    server
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            (parts.next()? == "planted").then_some(())?;
            Some((
                parts.next()?.to_string(),
                parts.next()?.parse().ok()?,
                parts.next()?.parse().ok()?,
            ))
        })
        .collect()
}

/// (start_ns, end_ns) of each loop iteration the server timed itself as slow ("iteration"
/// lines: 50 ms or more by its own clock, planted or not).
pub fn timed_iterations(server: &str) -> Vec<(u64, u64)> {
    server
        .lines()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            (parts.next()? == "iteration").then_some(())?;
            Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
        })
        .collect()
}

/// Whether the loop's own clock saw the iteration a stall reports as slow as the agent did: an
/// iteration the server timed overlaps it and is at most max(20 ms, a fifth) shorter (the agent
/// measures from the wait's exit tracepoint to the next wait's entry, the server between the
/// calls). Then the stall is true, the target's own slowness (a quick request that took 119 ms
/// in the guest's TCP code under emulation); a stall the loop did not see is false.
fn timed_by_target(stall: &Value, timed: &[(u64, u64)]) -> Option<u64> {
    let start = stall["start_ns"].as_u64()?;
    let end = stall["end_ns"].as_u64()?;
    let reported = end.saturating_sub(start);
    let slack = (reported / 5).max(20_000_000);
    timed
        .iter()
        .filter(|&&(a, b)| a <= end && start <= b)
        .map(|&(a, b)| b.saturating_sub(a))
        .find(|&own| own + slack >= reported)
}

/// Each planted stall found (a stall covering it) and named (its function among the user
/// frames of the stall's heaviest on-CPU or blocked stack); a stall outside them fails unless
/// the server timed that iteration as slow itself (`timed`, see `timed_by_target`).
pub fn judge_c_loop(
    json: &Value,
    planted: &[(String, u64, u64)],
    timed: &[(u64, u64)],
) -> (bool, String) {
    let stalls = json["stalls"].as_array().cloned().unwrap_or_default();
    let mut ok = true;
    let mut parts = Vec::new();
    for &(kind, function) in PLANTED {
        let Some((_, start, end)) = planted.iter().find(|(k, _, _)| k == kind) else {
            ok = false;
            parts.push(format!("{kind}: the server never ran it"));
            continue;
        };
        let slack = 20_000_000;
        let stall = stalls.iter().find(|s| {
            let s_start = s["start_ns"].as_u64().unwrap_or(u64::MAX);
            let s_end = s["end_ns"].as_u64().unwrap_or(0);
            s_start <= start + slack && s_end + slack >= *end
        });
        let Some(stall) = stall else {
            ok = false;
            parts.push(format!("{kind} {} ms NOT FOUND", (end - start) / 1_000_000));
            continue;
        };
        let duration = stall["duration_ns"].as_u64().unwrap_or(0);
        let names = heaviest_code_stack_functions(stall);
        if names.iter().any(|n| n == function) {
            parts.push(format!(
                "{kind} {} ms found ({} ms, in {function})",
                (end - start) / 1_000_000,
                duration / 1_000_000
            ));
        } else {
            ok = false;
            parts.push(format!(
                "{kind} found ({} ms) but NOT NAMED {function} (top: {}; {})",
                duration / 1_000_000,
                names
                    .iter()
                    .take(4)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(" < "),
                stack_shapes(stall)
            ));
        }
    }
    let spans: Vec<(u64, u64)> = planted
        .iter()
        .map(|(_, start, end)| (*start, *end))
        .collect();
    let outside = outside_spans(&stalls, &spans);
    let (slow, false_stalls): (Vec<&Value>, Vec<&Value>) = outside
        .iter()
        .partition(|s| timed_by_target(s, timed).is_some());
    if !slow.is_empty() {
        let times: Vec<String> = slow
            .iter()
            .map(|s| {
                format!(
                    "{} ms, the loop's own clock {} ms",
                    s["duration_ns"].as_u64().unwrap_or(0) / 1_000_000,
                    timed_by_target(s, timed).unwrap_or(0) / 1_000_000
                )
            })
            .collect();
        parts.push(format!(
            "{} quick request(s) really slow in the guest ({}), not failed",
            slow.len(),
            times.join("; ")
        ));
    }
    if !false_stalls.is_empty() {
        ok = false;
        parts.push(format!(
            "{} FALSE stalls (outside the planted ones, the loop's own clock saw no slow iteration)",
            false_stalls.len()
        ));
    }
    parts.push(format!("{} stalls", stalls.len()));
    (ok, parts.join(", "))
}

/// `watch`'s events log judged as the C loop's recording is: each planted stall one line, named,
/// nothing false; and SIGTERM ended it with exit 0.
pub fn judge_watch(events: &str, server: &str, agent: &str) -> (bool, String) {
    let stalls: Option<Vec<Value>> = events
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l.trim()).ok())
        .collect();
    let Some(stalls) = stalls else {
        return (false, "an events line is not JSON".to_string());
    };
    let planted = planted(server);
    // The server's planted spans after watch's (ci's burn) are not watch's to find.
    let watched: Vec<_> = planted.iter().take(PLANTED.len()).cloned().collect();
    let (mut ok, mut detail) = judge_c_loop(
        &serde_json::json!({ "stalls": stalls }),
        &watched,
        &timed_iterations(server),
    );
    let rc = exit_code(agent);
    if rc != Some(0) {
        ok = false;
        detail.push_str(&format!(
            ", exit {} on SIGTERM (0 wanted): {}",
            rc.map_or("?".to_string(), |c| c.to_string()),
            last_lines(agent)
        ));
    }
    (ok, detail)
}

/// `ci` with a budget the planted burn exceeds: exit 3.
pub fn judge_ci(agent: &str) -> (bool, String) {
    match exit_code(agent) {
        Some(3) => (true, "budget max=200ms exceeded, exit 3".to_string()),
        rc => (
            false,
            format!(
                "exit {} (3 wanted: the budget is exceeded): {}",
                rc.map_or("?".to_string(), |c| c.to_string()),
                last_lines(agent)
            ),
        ),
    }
}

/// The `rc N` line the guest appends to an agent's stderr.
fn exit_code(agent: &str) -> Option<i32> {
    agent
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("rc "))
        .and_then(|n| n.trim().parse().ok())
}

/// Stalls that overlap none of the planted spans (start_ns, end_ns): reported where the target
/// only answered quick requests.
pub fn unexplained(stalls: &[Value], spans: &[(u64, u64)]) -> usize {
    outside_spans(stalls, spans).len()
}

fn outside_spans<'a>(stalls: &'a [Value], spans: &[(u64, u64)]) -> Vec<&'a Value> {
    stalls
        .iter()
        .filter(|s| {
            let start = s["start_ns"].as_u64().unwrap_or(0);
            let end = s["end_ns"].as_u64().unwrap_or(0);
            !spans.iter().any(|&(a, b)| start <= b && a <= end)
        })
        .collect()
}

/// The tokio target's planted 200 ms hash and blocking sleep, each a stall with its handler on
/// the heaviest code stack, and no other stall (the quick requests around them).
pub fn judge_tokio(json: Option<&Value>, out: &str, agent: &str) -> (bool, String) {
    let Some(json) = json else {
        return (
            false,
            format!("no stalls.json; agent said: {}", last_lines(agent)),
        );
    };
    let stalls = json["stalls"].as_array().cloned().unwrap_or_default();
    let mut ok = true;
    let mut parts = Vec::new();
    for (kind, function) in [
        ("hash", "hash_handler"),
        ("sleep", "blocking_sleep_handler"),
    ] {
        if !out
            .lines()
            .any(|l| l.starts_with(&format!("planted {kind} ")))
        {
            ok = false;
            parts.push(format!("{kind}: the server never ran it"));
            continue;
        }
        let named = stalls
            .iter()
            .filter(|s| {
                heaviest_code_stack_functions(s)
                    .iter()
                    .any(|f| f.contains(function))
            })
            .count();
        if named == 1 {
            parts.push(format!("{kind} found, in {function}"));
        } else {
            ok = false;
            parts.push(format!("{kind}: {named} stalls in {function} (1 expected)"));
        }
    }
    // A stall outside the handlers that polled a task is a quick request reported as a stall:
    // false. One in the worker's own scheduling (no task polled) is reported, not failed:
    // under emulation tokio's bookkeeping (its poll-time average calls powf, soft-float in
    // TCG) and waiting for the CPU with the agent can take a worker past the threshold.
    let others: Vec<&Value> = stalls
        .iter()
        .filter(|s| {
            !heaviest_code_stack_functions(s)
                .iter()
                .any(|f| f.contains("hash_handler") || f.contains("blocking_sleep_handler"))
        })
        .collect();
    let false_stalls = others
        .iter()
        .filter(|s| {
            heaviest_code_stack_functions(s)
                .iter()
                .any(|f| f.contains("Harness<T,S>::poll"))
        })
        .count();
    if false_stalls > 0 {
        ok = false;
        parts.push(format!(
            "{false_stalls} FALSE stalls (a quick request's task)"
        ));
    }
    if others.len() > false_stalls {
        parts.push(format!(
            "{} in the scheduler, no task polled (emulation)",
            others.len() - false_stalls
        ));
    }
    parts.push(format!("{} stalls", stalls.len()));
    (ok, parts.join(", "))
}

/// asyncio_service.py's /validate (the regex on the loop): a stall covering the span it
/// answered with, `validate` among the Python frames of its heaviest code stack, and no stall
/// outside it (the /ok requests around it).
pub fn judge_asyncio(json: Option<&Value>, responses: &str, agent: &str) -> (bool, String) {
    let Some(json) = json else {
        return (
            false,
            format!("no stalls.json; agent said: {}", last_lines(agent)),
        );
    };
    let stalls = json["stalls"].as_array().cloned().unwrap_or_default();
    let spans: Vec<(u64, u64)> = responses
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .filter_map(|v| Some((v["start_ns"].as_u64()?, v["end_ns"].as_u64()?)))
        .collect();
    let Some(&(start, end)) = spans.first() else {
        return (false, "the service never answered /validate".to_string());
    };
    let slack = 20_000_000;
    let mut ok = true;
    let mut parts = Vec::new();
    match stalls.iter().find(|s| {
        s["start_ns"].as_u64().unwrap_or(u64::MAX) <= start + slack
            && s["end_ns"].as_u64().unwrap_or(0) + slack >= end
    }) {
        None => {
            ok = false;
            parts.push(format!("regex {} ms NOT FOUND", (end - start) / 1_000_000));
        }
        Some(stall) => {
            // Under emulation the vDSO clock is slow enough that the loop's own time() calls
            // can outweigh the regex in one stall: validate on one of its 3 heaviest stacks.
            let names = heaviest_code_stack_functions(stall);
            let named = if agent.contains("Python frames limited to") {
                named_with_truncated_frames(stall)
            } else {
                heavy_code_stacks_functions(stall, 3)
                    .iter()
                    .any(|stack| stack.iter().any(|n| n == "validate"))
            };
            if named {
                parts.push(format!(
                    "regex {} ms found, in validate",
                    (end - start) / 1_000_000
                ));
            } else {
                ok = false;
                parts.push(format!(
                    "regex found but NOT NAMED validate (top: {})",
                    names
                        .iter()
                        .take(4)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(" < ")
                ));
            }
        }
    }
    let false_stalls = unexplained(&stalls, &spans);
    if false_stalls > 0 {
        ok = false;
        parts.push(format!("{false_stalls} FALSE stalls (outside /validate)"));
    }
    parts.push(format!("{} stalls", stalls.len()));
    (ok, parts.join(", "))
}

/// The Python loop's 200 ms burns found as stalls, with `burn_in_python` among their frames
/// (only a stall, where the agent says this kernel gives no Python frames).
pub fn judge_python(json: Option<&Value>, agent: &str) -> (bool, String) {
    let Some(json) = json else {
        return (
            false,
            format!("no stalls.json; agent said: {}", last_lines(agent)),
        );
    };
    let stalls = json["stalls"].as_array().cloned().unwrap_or_default();
    let burns: Vec<&Value> = stalls
        .iter()
        .filter(|s| s["duration_ns"].as_u64().unwrap_or(0) >= 150_000_000)
        .collect();
    if burns.is_empty() {
        return (
            false,
            format!("no 200 ms burn found ({} stalls)", stalls.len()),
        );
    }
    // A burn that began before the recording did (caught while the agent attached) precedes
    // the agent's reading of the interpreter: its Python frames are not asked for.
    let started = json["start_ns"].as_u64().unwrap_or(0);
    let (early, burns): (Vec<&Value>, Vec<&Value>) = burns
        .into_iter()
        .partition(|s| s["start_ns"].as_u64().unwrap_or(u64::MAX) < started);
    let early_note = if early.is_empty() {
        String::new()
    } else {
        format!(" ({} more before the recording began)", early.len())
    };
    let named = burns
        .iter()
        .filter(|s| s.to_string().contains("\"burn_in_python\""))
        .count();
    if agent.contains("no Python frames") {
        return (
            true,
            format!(
                "{} burns found (no Python frames on this kernel)",
                burns.len()
            ),
        );
    }
    if burns.is_empty() {
        (
            false,
            format!("no 200 ms burn after the recording began{early_note}"),
        )
    } else if named == burns.len() {
        (
            true,
            format!("{} burns found, in burn_in_python{early_note}", burns.len()),
        )
    } else {
        (
            false,
            format!(
                "{} of {} burns NOT NAMED burn_in_python{early_note}",
                burns.len() - named,
                burns.len()
            ),
        )
    }
}

/// User function names of a stall's heaviest stack that is not runqueue time (under emulation
/// on a shared machine, waiting for a CPU can outweigh the planted work).
/// The user functions of the `n` heaviest code stacks of a stall, heaviest first.
fn heavy_code_stacks_functions(stall: &Value, n: usize) -> Vec<Vec<String>> {
    let mut stacks: Vec<&Value> = stall["stacks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["kind"] != "runqueue")
        .collect();
    stacks.sort_by_key(|s| std::cmp::Reverse(s["weight_ns"].as_u64().unwrap_or(0)));
    stacks
        .into_iter()
        .take(n)
        .map(|stack| {
            stack["frames"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|f| f["kind"] != "kernel")
                .filter_map(|f| f["function"].as_str().map(str::to_string))
                .collect()
        })
        .collect()
}

/// The handler's call tree, as a stall's stacks show it when the kernel walks only the
/// innermost Python frames (the compat build: 2): a sample inside `json.loads`, which
/// `validate` calls, names `JSONDecoder.decode < loads` and not `validate`, and the loop's own
/// clock reads (slow under emulation) name `handle_validate`. So: `validate` named on some
/// stack, and the Python function with the most time summed over the stall's stacks is one of
/// the handler's own (not the event loop's, nor another handler's).
fn named_with_truncated_frames(stall: &Value) -> bool {
    const HANDLER: [&str; 5] = [
        "handle_validate",
        "validate",
        "loads",
        "JSONDecoder.decode",
        "JSONDecoder.raw_decode",
    ];
    let mut summed: std::collections::BTreeMap<String, u64> = Default::default();
    for stack in stall["stacks"].as_array().into_iter().flatten() {
        if stack["kind"] == "runqueue" {
            continue;
        }
        let weight = stack["weight_ns"].as_u64().unwrap_or(0);
        let mut names: Vec<&str> = stack["frames"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|f| f["kind"] == "python")
            .filter_map(|f| f["function"].as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        for name in names {
            *summed.entry(name.to_string()).or_default() += weight;
        }
    }
    let top = summed.iter().max_by_key(|(_, weight)| **weight);
    summed.contains_key("validate") && top.is_some_and(|(name, _)| HANDLER.contains(&name.as_str()))
}

/// Why a stall may lack its function: each stack's kind, weight and frames by kind, and the
/// stall's own marks of missing data.
fn stack_shapes(stall: &Value) -> String {
    let stacks: Vec<String> = stall["stacks"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|stack| {
            let frames = stack["frames"].as_array().cloned().unwrap_or_default();
            let kernel = frames.iter().filter(|f| f["kind"] == "kernel").count();
            format!(
                "{} {} ms {}k+{}u",
                stack["kind"].as_str().unwrap_or("?"),
                stack["weight_ns"].as_u64().unwrap_or(0) / 1_000_000,
                kernel,
                frames.len() - kernel
            )
        })
        .collect();
    format!(
        "stacks [{}], late_events {}, missed_switches {}, data_lost {}, unaccounted {} ms",
        stacks.join(", "),
        stall["late_events"],
        stall["missed_switches"],
        stall["data_lost"],
        stall["unaccounted_ns"].as_u64().unwrap_or(0) / 1_000_000
    )
}

fn heaviest_code_stack_functions(stall: &Value) -> Vec<String> {
    let Some(stack) = stall["stacks"].as_array().and_then(|stacks| {
        stacks
            .iter()
            .filter(|s| s["kind"] != "runqueue")
            .max_by_key(|s| s["weight_ns"].as_u64().unwrap_or(0))
    }) else {
        return Vec::new();
    };
    stack["frames"]
        .as_array()
        .map(|frames| {
            frames
                .iter()
                .filter(|f| f["kind"] != "kernel")
                .filter_map(|f| f["function"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_versioned_image_package() {
        let depends = "linux-image-amd64\n  Depends: linux-image-6.12.117+deb13-amd64\n";
        assert_eq!(
            image_package(depends).as_deref(),
            Some("linux-image-6.12.117+deb13-amd64")
        );
        assert_eq!(image_package("linux-image-amd64\n"), None);
    }

    #[test]
    fn lists_ldd_paths() {
        let ldd = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(ldd),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
    }

    fn stall(start: u64, end: u64, function: &str) -> Value {
        serde_json::json!({
            "start_ns": start, "end_ns": end, "duration_ns": end - start,
            "stacks": [
                {"kind": "runqueue", "weight_ns": 900, "frames": [{"kind": "user", "function": "x"}]},
                {"kind": "on_cpu", "weight_ns": 100, "frames": [
                    {"kind": "kernel", "function": "schedule"},
                    {"kind": "user", "function": function},
                    {"kind": "user", "function": "main"}]}
            ]
        })
    }

    #[test]
    fn judges_found_named_missing_and_misnamed_stalls() {
        let planted = planted(
            "listening 7070\nplanted burn 1000000000 1300000000\n\
             planted sleep 2000000000 2300000000\n",
        );
        assert_eq!(planted.len(), 2);
        let good = serde_json::json!({"stalls": [
            stall(995_000_000, 1_301_000_000, "burn_cpu"),
            stall(1_999_000_000, 2_300_000_000, "sleep_in_handler")]});
        let (ok, detail) = judge_c_loop(&good, &planted, &[]);
        assert!(ok, "{detail}");
        assert!(detail.contains("in burn_cpu"), "{detail}");

        let missing =
            serde_json::json!({"stalls": [stall(995_000_000, 1_301_000_000, "burn_cpu")]});
        let (ok, detail) = judge_c_loop(&missing, &planted, &[]);
        assert!(!ok);
        assert!(detail.contains("sleep 300 ms NOT FOUND"), "{detail}");

        let misnamed = serde_json::json!({"stalls": [
            stall(995_000_000, 1_301_000_000, "main"),
            stall(1_999_000_000, 2_300_000_000, "sleep_in_handler")]});
        let (ok, detail) = judge_c_loop(&misnamed, &planted, &[]);
        assert!(!ok);
        assert!(detail.contains("NOT NAMED burn_cpu"), "{detail}");
    }

    /// The 6.1 VM run of 2026-12-01: a quick request took 119 ms in the guest's TCP code under
    /// emulation. The loop timed that iteration itself (118 ms): a true stall, not failed. The
    /// same stall where the loop saw only quick iterations (or one far shorter) is false.
    #[test]
    fn an_unplanted_stall_passes_only_when_the_loop_timed_it_slow_itself() {
        let server = "planted burn 1000000000 1300000000\nplanted sleep 2000000000 2300000000\n\
                      iteration 999000000 1301000000\niteration 1999000000 2300500000\n";
        let planted = planted(server);
        let slow_quick = stall(500_000_000, 619_000_000, "tcp_fin");
        let recording = |extra: Value| {
            serde_json::json!({"stalls": [
                extra,
                stall(995_000_000, 1_301_000_000, "burn_cpu"),
                stall(1_999_000_000, 2_300_000_000, "sleep_in_handler")]})
        };
        let with_it = format!("{server}iteration 500500000 618500000\n");
        let (ok, detail) = judge_c_loop(
            &recording(slow_quick.clone()),
            &planted,
            &timed_iterations(&with_it),
        );
        assert!(ok, "{detail}");
        assert!(
            detail.contains("1 quick request(s) really slow"),
            "{detail}"
        );
        assert!(detail.contains("own clock 118 ms"), "{detail}");
        let (ok, detail) = judge_c_loop(
            &recording(slow_quick.clone()),
            &planted,
            &timed_iterations(server),
        );
        assert!(!ok && detail.contains("1 FALSE"), "{detail}");
        let much_shorter = format!("{server}iteration 500500000 560000000\n");
        let (ok, detail) = judge_c_loop(
            &recording(slow_quick),
            &planted,
            &timed_iterations(&much_shorter),
        );
        assert!(!ok && detail.contains("1 FALSE"), "{detail}");
    }

    #[test]
    fn watch_lines_are_judged_like_a_recording_and_ci_wants_exit_3() {
        let server = "planted burn 1000000000 1300000000\nplanted sleep 2000000000 2300000000\n\
                      planted burn 5000000000 5300000000\n";
        let line = |start, end, function| stall(start, end, function).to_string();
        let events = format!(
            "{}\n{}\n",
            line(995_000_000, 1_301_000_000, "burn_cpu"),
            line(1_999_000_000, 2_300_000_000, "sleep_in_handler")
        );
        let (ok, detail) = judge_watch(&events, server, "stallscope: watch stopped\nrc 0\n");
        assert!(ok, "{detail}");
        let (ok, detail) = judge_watch(&events, server, "rc 143\n");
        assert!(!ok && detail.contains("exit 143"), "{detail}");
        let one = format!("{}\n", line(995_000_000, 1_301_000_000, "burn_cpu"));
        let (ok, detail) = judge_watch(&one, server, "rc 0\n");
        assert!(!ok && detail.contains("sleep 300 ms NOT FOUND"), "{detail}");
        let (ok, _) = judge_watch("not json\n", server, "rc 0\n");
        assert!(!ok);
        assert!(judge_ci("stall 301 ms\nrc 3\n").0);
        let (ok, detail) = judge_ci("rc 0\n");
        assert!(!ok && detail.contains("exit 0"), "{detail}");
    }

    #[test]
    fn python_burns_must_be_named_unless_the_kernel_has_no_python_frames() {
        let burn = |function: &str| {
            serde_json::json!({"stalls": [{"duration_ns": 201_000_000u64, "stacks": [
                {"kind": "on_cpu", "frames": [{"kind": "python", "function": function}]}]}]})
        };
        let (ok, detail) = judge_python(Some(&burn("burn_in_python")), "recording");
        assert!(ok && detail.contains("in burn_in_python"), "{detail}");
        // The 5.10 VM on one host CPU: a burn caught while attaching, before the recording's
        // start, has no Python frames yet; the burns after it must.
        let stall = |start: u64, function: &str| {
            serde_json::json!({"start_ns": start, "duration_ns": 201_000_000u64, "stacks": [
                {"kind": "on_cpu", "frames": [{"kind": "python", "function": function}]}]})
        };
        let early = serde_json::json!({"start_ns": 1_000_000_000u64, "stalls": [
            stall(800_000_000, "_PyEval_EvalFrameDefault"), stall(1_200_000_000, "burn_in_python")]});
        let (ok, detail) = judge_python(Some(&early), "recording");
        assert!(ok && detail.contains("1 more before"), "{detail}");
        let late = serde_json::json!({"start_ns": 1_000_000_000u64, "stalls": [
            stall(1_100_000_000, "_PyEval_EvalFrameDefault"), stall(1_200_000_000, "burn_in_python")]});
        let (ok, detail) = judge_python(Some(&late), "recording");
        assert!(!ok && detail.contains("1 of 2 burns NOT NAMED"), "{detail}");
        let (ok, detail) = judge_python(Some(&burn("_PyEval_EvalFrameDefault")), "recording");
        assert!(!ok && detail.contains("NOT NAMED"), "{detail}");
        let on_5_10 = "stallscope: on this kernel: no Python frames (no bpf_loop before 5.17)";
        let (ok, _) = judge_python(Some(&burn("_PyEval_EvalFrameDefault")), on_5_10);
        assert!(ok);
        let (ok, detail) = judge_python(Some(&serde_json::json!({"stalls": []})), on_5_10);
        assert!(!ok && detail.contains("no 200 ms burn"), "{detail}");
    }

    #[test]
    fn tokio_handlers_named_and_quick_tasks_never_stalls() {
        let out = "listening 7071\nplanted hash 200000000\nplanted sleep 200000000\n";
        let good = serde_json::json!({"stalls": [
            stall(0, 200_000_000, "tokio_app::hash_handler::{{closure}}"),
            stall(300_000_000, 500_000_000, "tokio_app::blocking_sleep_handler::{{closure}}")]});
        let (ok, detail) = judge_tokio(Some(&good), out, "");
        assert!(ok, "{detail}");
        let quick = serde_json::json!({"stalls": [
            stall(0, 200_000_000, "tokio_app::hash_handler::{{closure}}"),
            stall(300_000_000, 500_000_000, "tokio_app::blocking_sleep_handler::{{closure}}"),
            stall(600_000_000, 720_000_000, "tokio::runtime::task::harness::Harness<T,S>::poll")]});
        let (ok, detail) = judge_tokio(Some(&quick), out, "");
        assert!(!ok && detail.contains("1 FALSE"), "{detail}");
        let (ok, detail) = judge_tokio(Some(&serde_json::json!({"stalls": []})), out, "");
        assert!(
            !ok && detail.contains("0 stalls in hash_handler"),
            "{detail}"
        );
    }

    #[test]
    fn asyncio_regex_found_named_and_nothing_else() {
        let responses = "{\"ok\": true}\n{\"start_ns\": 1000000000, \"end_ns\": 1300000000}\n";
        let python = |start: u64, end: u64, function: &str| {
            serde_json::json!({"start_ns": start, "end_ns": end, "stacks": [
                {"kind": "on_cpu", "weight_ns": 1, "frames": [
                    {"kind": "python", "function": function}]}]})
        };
        let good = serde_json::json!({"stalls": [python(990_000_000, 1_310_000_000, "validate")]});
        let (ok, detail) = judge_asyncio(Some(&good), responses, "");
        assert!(ok && detail.contains("in validate"), "{detail}");
        let extra = serde_json::json!({"stalls": [
            python(990_000_000, 1_310_000_000, "validate"),
            python(2_000_000_000, 2_150_000_000, "serve_client")]});
        let (ok, detail) = judge_asyncio(Some(&extra), responses, "");
        assert!(!ok && detail.contains("1 FALSE"), "{detail}");
        let unnamed =
            serde_json::json!({"stalls": [python(990_000_000, 1_310_000_000, "handle_sleep")]});
        let (ok, detail) = judge_asyncio(Some(&unnamed), responses, "");
        assert!(!ok && detail.contains("NOT NAMED validate"), "{detail}");
    }

    /// With the compat build's 2 Python frames per stack (the 5.10 VM, CI of 2026-12-01): the
    /// loop's clock reads in `handle_validate` and `json.loads` inside `validate` outweigh the
    /// regex's own samples, each stack alone; the handler's call tree still names the stall. The
    /// event loop's frames on top, or no `validate` at all, still fail.
    #[test]
    fn truncated_python_frames_name_the_handler_by_its_call_tree() {
        let responses = "{\"start_ns\": 1000000000, \"end_ns\": 1300000000}\n";
        let stack = |weight: u64, names: &[&str]| {
            serde_json::json!({"kind": "on_cpu", "weight_ns": weight, "frames":
                names.iter().map(|n| serde_json::json!({"kind": "python", "function": n}))
                    .collect::<Vec<_>>()})
        };
        let stall = |stacks: Vec<Value>| {
            serde_json::json!({"stalls": [{"start_ns": 990_000_000u64,
                "end_ns": 1_310_000_000u64, "stacks": stacks}]})
        };
        let limited = "stallscope: on this kernel: Python frames limited to 2 per stack";
        let ci = stall(vec![
            stack(80, &["handle_validate", "serve_client"]),
            stack(10, &["JSONDecoder.decode", "loads"]),
            stack(10, &["JSONDecoder.raw_decode", "JSONDecoder.decode"]),
            stack(10, &["JSONDecoder.raw_decode", "JSONDecoder.decode"]),
            stack(10, &["validate", "handle_validate"]),
        ]);
        let (ok, detail) = judge_asyncio(Some(&ci), responses, limited);
        assert!(ok && detail.contains("in validate"), "{detail}");
        let (ok, _) = judge_asyncio(Some(&ci), responses, "");
        assert!(!ok, "with full frames the top-3 rule holds");
        let loop_on_top = stall(vec![
            stack(200, &["_run_once", "run_forever"]),
            stack(10, &["validate", "handle_validate"]),
        ]);
        assert!(!judge_asyncio(Some(&loop_on_top), responses, limited).0);
        let no_validate = stall(vec![stack(200, &["JSONDecoder.decode", "loads"])]);
        assert!(!judge_asyncio(Some(&no_validate), responses, limited).0);
    }

    #[test]
    fn splits_the_guest_sections() {
        let results =
            "=== uname\r\n5.10.0-32-amd64\r\n=== end\r\n=== doctor\nok\nrc 1\n=== end\n=== done\n";
        let sections = sections(results);
        assert_eq!(section(&sections, "uname"), Some("5.10.0-32-amd64\n"));
        assert_eq!(section(&sections, "doctor"), Some("ok\nrc 1\n"));
        assert!(section(&sections, "done").is_some());
        let verdict =
            judge("=== uname\n6.1\n=== end\n=== doctor\nrc 0\n=== end\n=== step ci\n=== end\n");
        assert!(!verdict.ok);
        assert!(
            verdict.summary.contains("stopped before the end") && verdict.summary.contains("ci"),
            "{}",
            verdict.summary
        );
        let verdict =
            judge("=== uname\n5.10\n=== end\n=== step ci\n=== end\n=== hung ci\nps\n=== end\n");
        assert!(
            !verdict.ok && verdict.summary.contains("HUNG in step 'ci'"),
            "{}",
            verdict.summary
        );
    }
}
