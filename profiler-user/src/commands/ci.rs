//! `stallscope ci`: record a service exactly while a load test runs, then judge the budgets.
//! Optionally starts the server itself (`--spawn`), waits until it is ready, and stops it after.
//!
//! Exit codes: 0 within budget; 3 a budget was exceeded; 4 the load command failed (budgets
//! within); 1 an error of stallscope's own (the server did not become ready, ...); 2 bad usage.

use std::{
    cell::RefCell,
    net::TcpStream,
    process::ExitStatus,
    rc::Rc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::{
    commands::record,
    config::{RecordConfig, Target},
};

/// How to tell that a spawned server is ready for the load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// A TCP connect to 127.0.0.1:PORT (or HOST:PORT) succeeds.
    Tcp(String),
    /// An HTTP GET of the URL answers (any status line).
    Http { host_port: String, path: String },
}

pub const LOAD_FAILED_EXIT: u8 = 4;

pub fn parse_readiness(text: &str) -> Result<Readiness, crate::config::UsageError> {
    let bad = || {
        crate::config::UsageError(format!(
            "--ready {text}: use tcp:PORT, tcp:HOST:PORT or http://HOST:PORT/PATH"
        ))
    };
    if let Some(rest) = text.strip_prefix("tcp:") {
        let host_port = if rest.contains(':') {
            rest.to_string()
        } else {
            format!("127.0.0.1:{rest}")
        };
        let port = host_port.rsplit(':').next().ok_or_else(bad)?;
        port.parse::<u16>().map_err(|_| bad())?;
        return Ok(Readiness::Tcp(host_port));
    }
    if let Some(rest) = text.strip_prefix("http://") {
        let (host_port, path) = match rest.find('/') {
            Some(i) => (rest[..i].to_string(), rest[i..].to_string()),
            None => (rest.to_string(), "/".to_string()),
        };
        if host_port.is_empty() {
            return Err(bad());
        }
        let host_port = if host_port.contains(':') {
            host_port
        } else {
            format!("{host_port}:80")
        };
        return Ok(Readiness::Http { host_port, path });
    }
    Err(bad())
}

fn is_ready(readiness: &Readiness) -> bool {
    use std::io::{Read, Write};
    match readiness {
        Readiness::Tcp(host_port) => TcpStream::connect(host_port).is_ok(),
        Readiness::Http { host_port, path } => {
            let Ok(mut stream) = TcpStream::connect(host_port) else {
                return false;
            };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let request =
                format!("GET {path} HTTP/1.0\r\nHost: {host_port}\r\nConnection: close\r\n\r\n");
            if stream.write_all(request.as_bytes()).is_err() {
                return false;
            }
            let mut head = [0u8; 12];
            stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/")
        }
    }
}

pub struct CiOptions {
    pub record: RecordConfig,
    pub spawn: Option<String>,
    pub ready: Option<Readiness>,
    pub ready_timeout: Duration,
    pub load: Vec<String>,
}

/// A server we started ourselves; stopped (SIGTERM, then SIGKILL) when dropped.
struct SpawnedServer {
    child: std::process::Child,
}

impl Drop for SpawnedServer {
    fn drop(&mut self) {
        // We started it for this run, so stopping it is ours to do (DESIGN.md: `--spawn ...
        // stops it afterwards`). A --pid target is never signalled.
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_server(command: &str) -> Result<SpawnedServer> {
    let child = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("exec {command}"))
        .stdin(std::process::Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start the server `{command}`"))?;
    Ok(SpawnedServer { child })
}

fn wait_ready(server: &mut SpawnedServer, readiness: &Readiness, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = server.child.try_wait() {
            bail!("the server exited before it was ready ({status})");
        }
        if is_ready(readiness) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "the server was not ready after {timeout:?} ({readiness:?}); raise --ready-timeout or check the server's output"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub async fn run(options: CiOptions) -> Result<u8> {
    let CiOptions {
        mut record,
        spawn,
        ready,
        ready_timeout,
        load,
    } = options;
    let mut server = match &spawn {
        Some(command) => {
            let mut server = spawn_server(command)?;
            match &ready {
                Some(readiness) => wait_ready(&mut server, readiness, ready_timeout)?,
                None => std::thread::sleep(Duration::from_millis(500)),
            }
            record.target = Target::Pids(vec![server.child.id()]);
            Some(server)
        }
        None => {
            if let Some(readiness) = &ready {
                let deadline = Instant::now() + ready_timeout;
                while !is_ready(readiness) {
                    if Instant::now() >= deadline {
                        bail!("the service was not ready after {ready_timeout:?} ({readiness:?})");
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            None
        }
    };
    let (program, args) = load
        .split_first()
        .ok_or_else(|| anyhow!("no load command given after --"))?;
    let load_status: Rc<RefCell<Option<std::io::Result<ExitStatus>>>> = Rc::default();
    let status_slot = Rc::clone(&load_status);
    let mut load_command = tokio::process::Command::new(program);
    load_command.args(args).kill_on_drop(true);
    let program_name = program.clone();
    // The load starts only once the probes are attached and following the service, so its
    // first requests are recorded; recording stops when it exits.
    let start_load = move || -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> {
        Box::pin(async move {
            let result = match load_command.spawn() {
                Ok(mut child) => child.wait().await,
                Err(err) => Err(err),
            };
            *status_slot.borrow_mut() = Some(result);
        })
    };
    let outcome = record::run_with_start(record, start_load).await;
    drop(server.take());
    let outcome = outcome?;
    let load_result = load_status.borrow_mut().take();
    let load_ok = match load_result {
        Some(Ok(status)) if status.success() => true,
        Some(Ok(status)) => {
            eprintln!("stallscope: the load command `{program_name}` failed ({status})");
            false
        }
        Some(Err(err)) => {
            eprintln!("stallscope: cannot run the load command `{program_name}`: {err}");
            false
        }
        None => {
            eprintln!(
                "stallscope: recording stopped before the load command `{program_name}` finished"
            );
            false
        }
    };
    let verdict_code = outcome.exit_code();
    eprintln!(
        "stallscope: verdict: {}",
        if outcome.recording.verdict.passed {
            "passed"
        } else {
            "budget exceeded"
        }
    );
    Ok(if verdict_code != 0 {
        verdict_code
    } else if !load_ok {
        LOAD_FAILED_EXIT
    } else {
        0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_forms() {
        assert_eq!(
            parse_readiness("tcp:8080"),
            Ok(Readiness::Tcp("127.0.0.1:8080".into()))
        );
        assert_eq!(
            parse_readiness("http://localhost:8000/health"),
            Ok(Readiness::Http {
                host_port: "localhost:8000".into(),
                path: "/health".into()
            })
        );
        assert!(parse_readiness("tcp:http").is_err());
        assert!(parse_readiness("8080").is_err());
    }
}
