//! `--metrics ADDR`: `/metrics` (the counters of [`crate::ops::metrics`] in the Prometheus text
//! format) and `/health` for balancers.
//!
//! A small blocking server of its own: one request per connection, each on a short-lived thread
//! of its own (at most [`HANDLERS`] at once, so a slow or idle client never delays a balancer's
//! `/health`), each read and write bounded by a timeout, requests larger than 8 KiB refused. GET
//! and HEAD are answered. It needs no runtime and no crate.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::ops::metrics::render;

/// The largest request read; scrapers send a few hundred bytes.
const REQUEST_MAX: usize = 8 * 1024;
/// How long one request may take to arrive or its answer to leave.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Requests answered at once; a connection past that is closed at once.
const HANDLERS: usize = 16;

/// Serves `/metrics` and `/health` until `stop` says so. `draining` says whether the server is
/// stopping (then `/health` answers 503, so a balancer sends no new sessions).
pub fn serve(listener: &TcpListener, draining: &dyn Fn() -> bool, stop: &dyn Fn() -> bool) {
    let _ = listener.set_nonblocking(true);
    let busy = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    while !stop() {
        match listener.accept() {
            Ok((stream, _)) => {
                if busy.load(Ordering::Relaxed) >= HANDLERS {
                    continue; // dropped: closed without an answer
                }
                let (draining, mine) = (draining(), busy.clone());
                busy.fetch_add(1, Ordering::Relaxed);
                let handler = std::thread::Builder::new().name("zocalo-http".into());
                let spawned = handler.spawn(move || {
                    let _ = answer(stream, draining);
                    mine.fetch_sub(1, Ordering::Relaxed);
                });
                if spawned.is_err() {
                    busy.fetch_sub(1, Ordering::Relaxed);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // A 200 ms tick, so that `stop` is looked at.
                let fd = std::os::fd::AsRawFd::as_raw_fd(listener);
                let _ = zocalo_poller::fds::wait_one(fd, false, Duration::from_millis(200));
            }
            Err(e) if crate::sys::net::out_of_descriptors(&e) => {
                std::thread::sleep(IO_TIMEOUT / 10)
            }
            Err(_) => {}
        }
    }
}

fn answer(mut stream: TcpStream, draining: bool) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut request = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        if request.len() > REQUEST_MAX || Instant::now() > deadline {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
                false,
            );
        }
        match stream.read(&mut buf)? {
            0 => return Ok(()),
            n => request.extend_from_slice(&buf[..n]),
        }
    }
    let line = request.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let head_only = method == "HEAD";
    let (status, kind, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            ("200 OK", "text/plain; version=0.0.4; charset=utf-8", render())
        }
        ("GET" | "HEAD", "/health") if draining => {
            ("503 Service Unavailable", "text/plain", "draining\n".into())
        }
        ("GET" | "HEAD", "/health") => ("200 OK", "text/plain", "ok\n".into()),
        ("GET" | "HEAD", _) => ("404 Not Found", "text/plain", "not found\n".into()),
        _ => ("405 Method Not Allowed", "text/plain", String::new()),
    };
    respond(&mut stream, status, kind, &body, head_only)
}

/// Writes the head and `body`; for HEAD (Prometheus and monitors send it) the same head,
/// Content-Length included, and no body.
fn respond(
    stream: &mut TcpStream,
    status: &str,
    kind: &str,
    body: &str,
    head_only: bool,
) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    if !head_only {
        stream.write_all(body.as_bytes())?;
    }
    Ok(())
}
