//! The blocking models' driver (iterative, process, thread, pool): one thread (or process)
//! serves one client, waiting in poll(2) on at most three descriptors: the control connection,
//! the data connection of a running transfer, and the server's stop signal. So both of FTP's
//! channels stay live (ABOR, STAT and NOOP are answered mid-transfer) without a second thread
//! per transfer.
//!
//! Everything else is [`Connection`]'s, as in the event loop: this file is only the waiting.
//! Storage work and file I/O run inline, on this thread.

use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use crate::drivers::connection::{Connection, Ctx, NoRegistrations, Wanted};
use zocalo_poller::fds;

/// Serves one client until it leaves; never panics on what the client sends. `peer` is the
/// client's address (a balancer's PROXY header may have given it). With `implicit`, the
/// connection speaks TLS from its first byte (implicit FTPS).
pub fn serve(stream: TcpStream, peer: SocketAddr, ctx: &Ctx, implicit: bool) {
    let Ok(mut conn) = Connection::new(stream, peer, None, ctx, implicit, true) else {
        return;
    };
    let _in_span = conn.span.clone().entered();
    let io = &mut NoRegistrations;
    loop {
        conn.pump(io, ctx);
        if conn.closed {
            break;
        }
        wait(&mut conn, ctx);
    }
    conn.finish(io);
}

/// Waits for what the connection asks (its sockets, its deadline, the stop signal) and hands
/// it what happened.
fn wait(conn: &mut Connection, ctx: &Ctx) {
    let io = &mut NoRegistrations;
    let (read, write) = match conn.interest() {
        Wanted::Read => (true, false),
        Wanted::Write => (false, true),
        Wanted::Both => (true, true),
    };
    let mut polled = [fds::watch(conn.control.fd(), read, write), fds::NONE, fds::NONE];
    if let Some((fd, writable)) = conn.data_wait() {
        polled[1] = fds::watch(fd, !writable, writable);
    }
    if !conn.stopping() {
        polled[2] = fds::watch(ctx.shutdown.fd(), true, false);
    }
    let timeout = conn.deadline(ctx).map(|d| d.saturating_duration_since(Instant::now()));
    if fds::wait(&mut polled, timeout).is_err() {
        return;
    }
    if fds::fired(&polled[2]) {
        conn.begin_stop(Instant::now() + ctx.grace);
    }
    if fds::fired(&polled[1]) {
        conn.on_data(io);
    }
    if fds::fired(&polled[0]) {
        conn.on_control();
    }
    conn.fire(Instant::now(), io, ctx);
}
