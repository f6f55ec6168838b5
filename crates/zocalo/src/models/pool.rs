//! `pool:N`: N worker threads created once at start; the cost of creation is paid only once.
//! Connections beyond the workers wait in a bounded queue; when it is full the client gets 421
//! at once rather than an unbounded wait.

use std::io;
use std::net::TcpStream;
use std::sync::mpsc::{self, Receiver, TrySendError};
use std::sync::{Arc, Mutex};

use super::{accept_loop, serve_blocking, Server};
use crate::limits::Permit;
use crate::net;

type Job = (TcpStream, Permit, bool);

pub fn run(mut server: Server, workers: usize) -> io::Result<()> {
    let ready = server.ready.take();
    let (tx, rx) = mpsc::sync_channel::<Job>(server.pool_queue);
    let rx = Arc::new(Mutex::new(rx));
    let handles: Vec<_> = (0..workers)
        .map(|i| {
            let (rx, ctx) = (rx.clone(), server.ctx.clone());
            std::thread::Builder::new()
                .name(format!("zocalo-pool-{i}"))
                .spawn(move || worker(&rx, &ctx))
        })
        .collect::<Result<_, _>>()?;
    let result = accept_loop(
        &server,
        ready,
        |stream, permit, tls| match tx.try_send((stream, permit, tls)) {
            Ok(()) => {}
            Err(TrySendError::Full((stream, ..)) | TrySendError::Disconnected((stream, ..))) => {
                net::refuse(&stream, b"421 All workers busy and the queue is full; try later.\r\n")
            }
        },
        || {},
        &[],
    );
    // Stop taking connections now: a client arriving during the grace period is refused at
    // once instead of waiting in the backlog.
    server.listeners.clear();
    drop(tx);
    for h in handles {
        let _ = h.join();
    }
    result
}

fn worker(rx: &Mutex<Receiver<Job>>, ctx: &crate::conn::Ctx) {
    loop {
        let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok((stream, permit, tls)) = job else {
            return;
        };
        if ctx.shutdown.is_triggered() {
            net::refuse(&stream, b"421 Server shutting down.\r\n");
            continue;
        }
        serve_blocking(stream, ctx, tls);
        drop(permit);
    }
}
