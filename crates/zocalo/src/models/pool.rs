//! `pool:N`: N worker threads created once at start; the cost of creation is paid only once.
//! Connections beyond the workers wait in a bounded queue; when it is full the client gets 421
//! at once rather than an unbounded wait.
//!
//! The bound counts sessions admitted and not yet finished (served or waiting), not jobs in the
//! channel: with a bounded channel, a burst of connections could fill it before idle workers
//! woke up to take their jobs, and clients were refused while workers sat idle (the `sessions`
//! benchmark showed it at 500 clients; docs/benchmarks.md).

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};

use super::{accept_loop, serve_blocking, Server};
use crate::drivers::accept::Arrival;
use crate::sys::net;
use zocalo_proto::reply::Reply;

type Job = Arrival;

pub fn run(mut server: Server, workers: usize) -> io::Result<()> {
    let ready = server.ready.take();
    let capacity = workers + server.pool_queue;
    // Only the accept loop adds to it and workers only take from it, so a check then an add
    // cannot overshoot.
    let admitted = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    crate::ops::metrics::add(crate::ops::metrics::Counter::WorkThreads, workers as u64);
    let handles: Vec<_> = (0..workers)
        .map(|i| {
            let (rx, ctx, admitted) = (rx.clone(), server.ctx.clone(), admitted.clone());
            std::thread::Builder::new()
                .name(format!("zocalo-pool-{i}"))
                .spawn(move || worker(&rx, &ctx, &admitted))
        })
        .collect::<Result<_, _>>()?;
    let refuse = |a: &Arrival| {
        crate::ops::observe::refused(crate::ops::observe::Refused::PoolFull, Some(a.peer));
        net::refuse(
            &a.stream,
            Reply::new(421, "All workers busy and the queue is full; try later."),
        )
    };
    let result = accept_loop(
        &server,
        ready,
        |arrival| {
            if admitted.load(Ordering::Acquire) >= capacity {
                return refuse(&arrival);
            }
            admitted.fetch_add(1, Ordering::AcqRel);
            crate::ops::metrics::inc(crate::ops::metrics::Counter::WorkQueued);
            if let Err(mpsc::SendError(arrival)) = tx.send(arrival) {
                crate::ops::metrics::dec(crate::ops::metrics::Counter::WorkQueued);
                admitted.fetch_sub(1, Ordering::AcqRel);
                refuse(&arrival);
            }
        },
        || {},
        &[],
    );
    server.stop_accepting();
    drop(tx);
    for h in handles {
        let _ = h.join();
    }
    result
}

fn worker(
    rx: &Mutex<Receiver<Job>>,
    ctx: &crate::drivers::connection::Ctx,
    admitted: &AtomicUsize,
) {
    loop {
        let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok(arrival) = job else {
            return;
        };
        use crate::ops::metrics::{dec, inc, Counter};
        dec(Counter::WorkQueued);
        inc(Counter::WorkBusy);
        if ctx.shutdown.is_triggered() {
            crate::ops::observe::refused(
                crate::ops::observe::Refused::Shutdown,
                Some(arrival.peer),
            );
            net::refuse(&arrival.stream, Reply::new(421, "Server shutting down."));
        } else {
            serve_blocking(arrival, ctx);
        }
        dec(Counter::WorkBusy);
        admitted.fetch_sub(1, Ordering::AcqRel);
    }
}
