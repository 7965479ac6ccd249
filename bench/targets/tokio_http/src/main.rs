//! A small tokio/hyper HTTP/1.1 server for the overhead benchmark (`cargo xtask bench`).
//!
//! Usage: `tokio_http PORT` (0 = ephemeral). Binds 127.0.0.1, prints `listening PORT`, and
//! answers every request with a short text body after a little work: a hash over a 4 KiB buffer
//! (tens of microseconds), so a request costs more than the HTTP plumbing alone, the way a real
//! handler does. Multi-threaded runtime with one worker per CPU (tokio's default).

use std::{convert::Infallible, hint::black_box, io::Write, net::SocketAddr};

use http_body_util::Full;
use hyper::{
    body::{Bytes, Incoming},
    server::conn::http1,
    service::service_fn,
    Request, Response,
};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// FNV-1a over a buffer, a few passes: the per-request work.
#[inline(never)]
fn work(seed: u64) -> u64 {
    let buf: [u8; 4096] = std::array::from_fn(|i| (i as u64 ^ seed) as u8);
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for _ in 0..4 {
        for &b in black_box(&buf[..]) {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let hash = work(req.uri().path().len() as u64);
    Ok(Response::new(Full::new(Bytes::from(format!("ok {hash:016x}\n")))))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = std::env::args()
        .nth(1)
        .map(|p| p.parse())
        .transpose()?
        .unwrap_or(0);
    let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening {}", listener.local_addr()?.port())?;
        out.flush()?;
    }
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service_fn(handle))
                .await;
        });
    }
}
