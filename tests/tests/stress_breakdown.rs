//! Every stall adds up, under stress (issue #22): a C epoll loop (tests/targets/stress_loop.c)
//! plants 200 stalls of four kinds (CPU burn, sleep, a mutex held by another thread, runqueue
//! delay from two CPU hogs pinned to the loop's CPU), 100 to 150 ms each, while it moves itself
//! between two CPUs (sched_setaffinity flips, one in the middle of every burn). The agent is
//! pinned to the second CPU, so about half the stalls happen on the agent's CPU and half on
//! the other.
//!
//! Judged on what is reported, not on time: every planted stall is found (a stall of the loop
//! thread covering the span the target measured, its duration within max(10 %, 20 ms)); no
//! event lost or later than the reorder window; every stall's breakdown adds up (on-CPU +
//! blocked + runqueue within 1 ms of its duration), including where the kernel never traced
//! a switch-in of the loop (the task before it is one the kernel does not trace, as this
//! machine's supervisor: README, Limits): those are counted (`untraced_switch_ins`) and timed,
//! and a switch the timeline still missed (`missed_switches`) fails the test; the dominant
//! kind is the planted one; every live line names the stall's frames or says why it cannot;
//! and re-rendering the recording from its saved events gives the same stalls, to the
//! nanosecond.
//!
//! Prints one `stress:` line with the worst add-up error and the reorder counters, for the
//! repeated runs the issue asks for (`--nocapture`).

use std::{
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use stallscope_tests::{
    Agent, Target, allowed_cpus, c_target, dominant_code_stack, ns_field, require_root, run_agent,
    scratch_dir, tolerance_ns, user_function_names,
};

const FLAGS: &[&str] = &[
    "-O2",
    "-g",
    "-fno-omit-frame-pointer",
    "-mno-omit-leaf-frame-pointer",
    "-pthread",
];

const STALLS: usize = 200;
const MS: u64 = 1_000_000;

#[derive(Clone, Debug)]
struct Planted {
    kind: String,
    start_ns: u64,
    end_ns: u64,
    cpu: usize,
}

fn planted_lines(lines: &[String]) -> Vec<Planted> {
    lines
        .iter()
        .filter_map(|line| {
            let mut parts = line.split_whitespace();
            (parts.next()? == "planted").then_some(())?;
            Some(Planted {
                kind: parts.next()?.to_string(),
                start_ns: parts.next()?.parse().ok()?,
                end_ns: parts.next()?.parse().ok()?,
                cpu: parts.next()?.parse().ok()?,
            })
        })
        .collect()
}

/// |duration - (on + off + runqueue)|.
fn add_up_error(stall: &Value) -> u64 {
    let parts = ns_field(stall, "on_cpu_ns")
        + ns_field(stall, "off_cpu_ns")
        + ns_field(stall, "runqueue_ns");
    ns_field(stall, "duration_ns").abs_diff(parts)
}

/// The kind of time the planted kind must dominate with. Runqueue time is the machine's
/// contention (other engineers load this 2-core machine), so for the kinds that are not about
/// it, the code's own kinds are compared (as the other tests do).
fn dominant_kind_problem(planted: &Planted, stall: &Value) -> Option<String> {
    let (on, off, rq) = (
        ns_field(stall, "on_cpu_ns"),
        ns_field(stall, "off_cpu_ns"),
        ns_field(stall, "runqueue_ns"),
    );
    let stack = dominant_code_stack(stall);
    let functions = user_function_names(stack);
    let has = |name: &str| functions.iter().any(|f| f == name);
    let ok = match planted.kind.as_str() {
        "burn" => on > off && stack["kind"] == "on_cpu" && has("spin_on_loop"),
        "sleep" => off > on && stack["kind"] == "off_cpu" && has("sleep_on_loop"),
        "lock" => off > on && stack["kind"] == "lock" && has("wait_for_lock"),
        "runqueue" => rq > on && rq > off,
        other => panic!("unknown planted kind {other}"),
    };
    (!ok).then(|| {
        format!(
            "planted {} ({} ms) reported as on {:.1} / off {:.1} / rq {:.1} ms, top code stack {} {:?}",
            planted.kind,
            (planted.end_ns - planted.start_ns) / MS,
            on as f64 / 1e6,
            off as f64 / 1e6,
            rq as f64 / 1e6,
            stack["kind"],
            functions.iter().take(4).collect::<Vec<_>>()
        )
    })
}

#[test]
fn two_hundred_mixed_stalls_on_a_migrating_loop_all_add_up() {
    require_root();
    let cpus = allowed_cpus();
    assert!(
        cpus.len() >= 2,
        "this test moves the loop between two CPUs; this machine lets it use {cpus:?}"
    );
    let (cpu_a, cpu_b) = (cpus[0], cpus[1]);
    let seed = std::process::id();
    let binary = c_target("stress_loop", FLAGS);
    let mut target = Target::spawn(Command::new(binary).args([
        cpu_a.to_string(),
        cpu_b.to_string(),
        STALLS.to_string(),
        seed.to_string(),
    ]));
    let ready = target
        .stdout
        .wait_for("ready", Duration::from_secs(10))
        .expect("stress_loop did not start");
    let loop_tid: u64 = ready
        .split_whitespace()
        .nth(1)
        .and_then(|t| t.parse().ok())
        .expect("loop tid");
    let dir = scratch_dir("stress");
    let pid = target.pid().to_string();
    // The agent on the second CPU: the loop is on it for about half the stalls.
    let agent = Agent::record_on(
        &["--pid", &pid, "--threshold", "50ms"],
        &dir.join("rec"),
        Some(cpu_b),
    );
    // SAFETY: signalling our own child (the trigger), never the agent's business.
    unsafe { libc::kill(target.pid() as i32, libc::SIGUSR1) };
    let started = Instant::now();
    // A loaded machine stretches the CPU burns on the wall clock: generous.
    let done = target.stdout.wait_for("done", Duration::from_secs(400));
    std::thread::sleep(Duration::from_millis(300));
    let result = agent.stop();
    assert!(
        done.is_some(),
        "stress_loop did not finish its {STALLS} stalls in 400 s ({} planted)",
        planted_lines(&target.stdout.seen).len()
    );
    let planted = planted_lines(&target.stdout.collect(Duration::from_millis(100)));
    assert_eq!(planted.len(), STALLS);
    assert!(
        result.status.success(),
        "agent failed: {:#?}",
        result.stderr
    );
    let json = result.stalls_json();
    let stalls = json["stalls"].as_array().expect("stalls");

    // Nothing is lost here (4 MiB ring buffer, the default), nothing comes later than the reorder window,
    // and a switch-in the kernel did not trace is timed by the kernel side: every breakdown
    // must add up. (Had the kernel lost events, the stalls would say so; this test wants none.)
    let mut problems = Vec::new();
    for (what, value) in [
        ("events lost", &json["lost_events"]),
        (
            "events later than the reorder window",
            &json["reorder"]["late_events"],
        ),
        (
            "breakdowns the timeline got wrong",
            &json["reorder"]["breakdown_mismatches"],
        ),
        (
            "switches neither traced nor timed",
            &json["reorder"]["missed_switches"],
        ),
    ] {
        if value.as_u64() != Some(0) {
            problems.push(format!("{value} {what}"));
        }
    }
    let mut worst_error = 0u64;
    let mut flagged = 0;
    for stall in stalls {
        let error = add_up_error(stall);
        worst_error = worst_error.max(error);
        let unaccounted = ns_field(stall, "unaccounted_ns");
        // The fields say the same thing as the numbers.
        assert_eq!(error, unaccounted, "unaccounted_ns is the gap: {stall}");
        assert_eq!(
            stall["adds_up"].as_bool(),
            Some(error <= MS),
            "adds_up: {stall}"
        );
        if error > MS {
            flagged += 1;
            let why = stall["unaccounted_why"].as_str().unwrap_or("");
            problems.push(format!(
                "stall at {} ({} ms) does not add up by {:.1} ms: {why:?}",
                ns_field(stall, "start_ns"),
                ns_field(stall, "duration_ns") / MS,
                error as f64 / 1e6,
            ));
            // The live line says why all the same.
            let shown = format!("of it unaccounted: {why}");
            if !result.stdout.iter().any(|l| l.contains(&shown)) {
                problems.push(format!("live line does not show {shown:?}"));
            }
        }
    }

    // Every planted stall found, on the loop thread, right length and right kind.
    let mut missed = 0;
    let mut same_cpu = 0;
    for p in &planted {
        let slack = 5 * MS;
        let found = stalls.iter().find(|s| {
            s["tid"].as_u64() == Some(loop_tid)
                && ns_field(s, "start_ns") <= p.start_ns + slack
                && ns_field(s, "end_ns") + slack >= p.end_ns
        });
        let Some(stall) = found else {
            missed += 1;
            problems.push(format!(
                "planted {} at {} ({} ms) not found",
                p.kind,
                p.start_ns,
                (p.end_ns - p.start_ns) / MS
            ));
            continue;
        };
        same_cpu += usize::from(p.cpu == cpu_b);
        let truth = p.end_ns - p.start_ns;
        if ns_field(stall, "duration_ns").abs_diff(truth) > tolerance_ns(truth) {
            problems.push(format!(
                "planted {} of {:.1} ms reported as {:.1} ms",
                p.kind,
                truth as f64 / 1e6,
                ns_field(stall, "duration_ns") as f64 / 1e6
            ));
        }
        if let Some(problem) = dominant_kind_problem(p, stall) {
            problems.push(problem);
        }
    }
    assert!(
        same_cpu > 0 && same_cpu < planted.len(),
        "stalls both on the agent's CPU and off it ({same_cpu} of {} on it)",
        planted.len()
    );

    // Every live line names frames or says why it has none.
    let lines = &result.stdout;
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with("stall ") {
            let next = lines.get(i + 1).map_or("", String::as_str);
            if !(next.starts_with("    at ") || next.starts_with("    (no frames to show: ")) {
                problems.push(format!(
                    "live line without frames or why: {line:?} {next:?}"
                ));
            }
        }
    }

    // The recording re-renders from its saved events to the same stalls.
    let (code, _, stderr) = run_agent(&[
        "report",
        &dir.join("rec").display().to_string(),
        "--threshold",
        "50ms",
        "--out",
        &dir.join("again").display().to_string(),
        "--format",
        "summary",
    ]);
    assert_eq!(code, 0, "report: {stderr}");
    let again: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("again/stalls.json")).expect("re-rendered stalls.json"),
    )
    .expect("JSON");
    let key = |s: &Value| {
        (
            ns_field(s, "tid"),
            ns_field(s, "start_ns"),
            ns_field(s, "end_ns"),
            ns_field(s, "on_cpu_ns"),
            ns_field(s, "off_cpu_ns"),
            ns_field(s, "runqueue_ns"),
            ns_field(s, "unaccounted_ns"),
        )
    };
    let live: Vec<_> = stalls.iter().map(key).collect();
    let replayed: Vec<_> = again["stalls"]
        .as_array()
        .expect("stalls")
        .iter()
        .map(key)
        .collect();
    if live != replayed {
        problems.push(format!(
            "replay differs from live: {} vs {} stalls, first difference {:?}",
            live.len(),
            replayed.len(),
            live.iter().zip(&replayed).find(|(a, b)| a != b)
        ));
    }

    let reorder = &json["reorder"];
    eprintln!(
        "stress: {} planted, {} missed, {} stalls reported, {} not adding up, worst add-up error {:.3} ms, {} on the agent's CPU, reorder: {} late, {} reordered, {} missed switches, {} untraced switch-ins timed, max held {}, lost {}, {:.0} s",
        planted.len(),
        missed,
        stalls.len(),
        flagged,
        worst_error as f64 / 1e6,
        same_cpu,
        reorder["late_events"],
        reorder["reordered"],
        reorder["missed_switches"],
        reorder["untraced_switch_ins"],
        reorder["max_held"],
        json["lost_events"],
        started.elapsed().as_secs_f64()
    );
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}
