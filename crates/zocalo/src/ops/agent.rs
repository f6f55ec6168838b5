//! HAProxy's agent check (`--agent ADDR`): the balancer connects now and then, reads one line
//! and closes. `up ready` keeps the node in rotation; `drain` (after `zocalo ctl drain`) sets
//! its weight to 0, so the balancer sends it no new sessions while the running ones go on.
//! When the server stops, its listeners close at once, which the balancer's own check sees.

use std::io::Write;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::time::Duration;

use crate::shutdown::Shutdown;

/// The line for the balancer.
pub fn status() -> &'static [u8] {
    match crate::ops::metrics::draining() {
        true => b"drain\n",
        false => b"up ready\n",
    }
}

/// Answers agent checks until the server stops.
pub fn serve(listener: &TcpListener, shutdown: &Shutdown) {
    let _ = listener.set_nonblocking(true);
    while crate::shutdown::wait_unless_stopped(listener.as_raw_fd(), shutdown) {
        while let Ok((mut stream, _)) = listener.accept() {
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = stream.write_all(status());
        }
    }
}
