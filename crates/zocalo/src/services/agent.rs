//! HAProxy's agent check (`--agent ADDR`): the balancer connects now and then, reads one line
//! and closes. `up ready` keeps the node in rotation; `drain` (after `zocalo ctl drain`, and
//! through a stop's grace period) sets its weight to 0, so the balancer sends it no new sessions
//! while the running ones go on. A stopping node also closes its FTP listeners at once, which
//! the balancer's own check sees.

use std::io::Write;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::sys::shutdown::Shutdown;

/// The line for the balancer.
pub fn status(stopping: bool) -> &'static [u8] {
    match stopping || crate::ops::metrics::draining() {
        true => b"drain\n",
        false => b"up ready\n",
    }
}

/// Answers agent checks as long as the process lives; `exit_after`: in a process of its own
/// (the `process` model), return this long after a stop began (the grace period).
pub fn serve(listener: &TcpListener, shutdown: &Shutdown, exit_after: Option<Duration>) {
    let _ = listener.set_nonblocking(true);
    let mut stopped_at: Option<Instant> = None;
    loop {
        let stopping = shutdown.is_triggered();
        if stopping {
            let at = *stopped_at.get_or_insert_with(Instant::now);
            if exit_after.is_some_and(|grace| at.elapsed() > grace) {
                return;
            }
        }
        // Short waits once stopping: the stop signal stays readable, so it cannot be waited on.
        let wait = if stopping { Duration::from_millis(100) } else { Duration::from_secs(1) };
        let ready = zocalo_poller::fds::wait_one(listener.as_raw_fd(), false, wait);
        if !stopping && !ready.unwrap_or(false) {
            continue;
        }
        while let Ok((mut stream, _)) = listener.accept() {
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = stream.write_all(status(stopping));
        }
    }
}
