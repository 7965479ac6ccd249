//! A tokio TCP server with planted stalls, for stallscope's native-stack tests.
//!
//! Usage: `tokio_app PORT` (0 = ephemeral). Prints `listening PORT`, then serves one line per
//! connection on 127.0.0.1 and answers `ok\n`:
//!   `sleep` -> `blocking_sleep_handler()`: blocks the worker thread in `std::thread::sleep`
//!              for 200 ms (off-CPU, nanosleep / clock_nanosleep)
//!   `hash`  -> `hash_handler()`: hashes a buffer on the worker for 200 ms (on-CPU)
//!   `quick` -> answers at once
//! Each planted stall prints `planted KIND DURATION_NS` (measured with `Instant`, i.e.
//! CLOCK_MONOTONIC) before the answer is sent.
//!
//! Built with the default release profile (no frame pointers), so a profiler must unwind the
//! worker's stack from .eh_frame to get from the handler to the thread's start.

use std::{
    future::Future,
    hint::black_box,
    io::Write,
    pin::Pin,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
};

const PLANTED: Duration = Duration::from_millis(200);

/// Blocks the worker thread: the mistake the profiler must catch.
#[inline(never)]
async fn blocking_sleep_handler() -> Duration {
    let start = Instant::now();
    std::thread::sleep(black_box(PLANTED));
    start.elapsed()
}

/// Hashes on the worker thread for `PLANTED`; the clock is read only every 100k rounds so the
/// samples land in this function rather than in the vDSO.
#[inline(never)]
async fn hash_handler() -> Duration {
    let start = Instant::now();
    let buf: Vec<u8> = (0..4096u32).map(|i| (i * 31 + 7) as u8).collect();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0usize;
    loop {
        for _ in 0..100_000 {
            // FNV-1a over the buffer, mixed with a xorshift step.
            hash ^= u64::from(buf[i % buf.len()]);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            hash ^= hash << 13;
            hash ^= hash >> 7;
            i = i.wrapping_add(1);
        }
        black_box(hash);
        if start.elapsed() >= PLANTED {
            break;
        }
    }
    start.elapsed()
}

/// A handler's future behind dynamic dispatch, the way web frameworks' routers hold handlers.
type Handler = Pin<Box<dyn Future<Output = Duration> + Send>>;

/// Polls a handler through its vtable. `#[inline(never)]` on an async fn only keeps the
/// function that builds the future out of line; without dynamic dispatch LLVM inlines the
/// future's body (its `{{closure}}`) into the task's poll, and a release build without debug
/// info has no trace of the handler left. `black_box` keeps the vtable opaque so the body stays
/// a function of its own (`tokio_app::hash_handler::{{closure}}`), as it is behind a router.
async fn run(handler: Handler) -> Duration {
    black_box(handler).await
}

fn report(kind: &str, took: Duration) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "planted {kind} {}", took.as_nanos());
    let _ = out.flush();
}

async fn serve(stream: TcpStream) -> std::io::Result<()> {
    let mut stream = BufReader::new(stream);
    let mut line = String::new();
    stream.read_line(&mut line).await?;
    match line.trim() {
        "sleep" => report("sleep", run(Box::pin(blocking_sleep_handler())).await),
        "hash" => report("hash", run(Box::pin(hash_handler())).await),
        _ => {}
    }
    stream.get_mut().write_all(b"ok\n").await?;
    stream.get_mut().shutdown().await
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening {}", listener.local_addr()?.port())?;
        out.flush()?;
    }
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            if let Err(e) = serve(stream).await {
                eprintln!("tokio_app: {e}");
            }
        });
    }
}
