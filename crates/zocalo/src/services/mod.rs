//! What runs beside the FTP server for as long as it lives: the admin channel, HAProxy's agent
//! check, the metrics HTTP server, TFTP; and the one place that decides whether such a service
//! gets a thread or a process of its own ([`spawn`]).
//!
//! - [`admin`]: the `zocalo ctl` channel; [`agent`]: HAProxy's agent check;
//! - [`metrics_http`]: `/metrics` and `/health`; [`tftp`]: TFTP from the same storage;
//! - [`console`]: the web console and its JSON API.
//!
//! The shared-state sync loop is `Shared`'s own ([`crate::state::shared`]); it is spawned here
//! like the others.

pub mod admin;
pub mod agent;
pub mod console;
pub mod metrics_http;
pub mod tftp;

use std::io;
use std::os::fd::AsRawFd;

pub use crate::drivers::accept::Listener;

/// Where a service runs: see [`crate::models::Model::services`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beside {
    Thread,
    Process,
}

/// Runs `service` in a child process of its own, forked while the server has only one thread:
/// the child closes its copies of the FTP listeners, runs `service` and exits without the
/// parent's destructors; the parent goes on.
pub fn fork(listeners: &[Listener], service: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
    // SAFETY: called before any thread is started; the child only runs `service` and exits.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            for l in listeners {
                // SAFETY: closing the child's copies of the FTP listening descriptors.
                unsafe { libc::close(l.sock.as_raw_fd()) };
            }
            let served = service();
            // SAFETY: leave without running the parent's destructors.
            unsafe { libc::_exit(i32::from(served.is_err())) }
        }
        _ => Ok(()),
    }
}

/// Runs `service` beside the server for as long as the server lives: with [`Beside::Process`]
/// in a process of its own (forked now, while the parent still has one thread; it exits when
/// `service` returns), otherwise on a thread named `name`. `service` is told which it got
/// (true: a process of its own).
pub fn spawn(
    beside: Beside,
    listeners: &[Listener],
    name: &str,
    service: impl FnOnce(bool) + Send + 'static,
) -> io::Result<()> {
    match beside {
        Beside::Process => fork(listeners, move || {
            service(true);
            Ok(())
        }),
        Beside::Thread => {
            std::thread::Builder::new().name(name.into()).spawn(move || service(false))?;
            Ok(())
        }
    }
}
