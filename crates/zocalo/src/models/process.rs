//! `process`: fork(2) per connection from a single-threaded accept loop, the way inetd-era
//! servers (vsftpd, ProFTPD) work. The child serves one client and exits; the parent only
//! accepts, counts and reaps.
//!
//! Limits that span connections stay in the parent: each child's [`Permit`] is held here, keyed
//! by pid, and released when the child is reaped, so `--max-connections` and `--max-per-ip`
//! hold in this model too. SIGCHLD wakes the accept loop through an eventfd.

use std::collections::HashMap;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use zocalo_poller::Waker;

use super::{accept_loop, Server};
use crate::drivers::accept::Arrival;
use crate::drivers::blocking;
use crate::state::limits::Permit;
use crate::state::registry::Registry;
use crate::sys::net;

static CHILD_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_sigchld(_sig: libc::c_int) {
    crate::sys::shutdown::wake_from_handler(&CHILD_FD);
}

fn install_sigchld(waker: &Waker) -> io::Result<()> {
    CHILD_FD.store(waker.as_raw_fd(), Ordering::SeqCst);
    crate::sys::shutdown::set_handler(libc::SIGCHLD, on_sigchld, libc::SA_NOCLDSTOP)
}

pub fn run(mut server: Server) -> io::Result<()> {
    let ready = server.ready.take();
    let child_waker = Waker::new()?;
    install_sigchld(&child_waker)?;
    let mut children: HashMap<libc::pid_t, Permit> = HashMap::new();
    let extra = [child_waker.as_raw_fd(), server.reload.fd()];
    let registry = server.ctx.registry.clone();
    let result = {
        let children = std::cell::RefCell::new(&mut children);
        accept_loop(
            &server,
            ready,
            |arrival| {
                let Arrival { stream, peer, implicit_tls, permit, held } = arrival;
                // SAFETY: the accept loop is single-threaded, so the child starts with a
                // consistent copy of the parent's memory.
                match unsafe { libc::fork() } {
                    0 => {
                        // The parent's: it releases the count when it reaps this child.
                        permit.forget();
                        for l in &server.listeners {
                            // SAFETY: closing our copy of the listening descriptor in the child.
                            unsafe { libc::close(l.sock.as_raw_fd()) };
                        }
                        for &fd in &held {
                            // SAFETY: our copies of connections whose PROXY header the parent
                            // is still reading: the parent alone decides when they close.
                            unsafe { libc::close(fd) };
                        }
                        if server.ctx.registry.is_some() {
                            crate::state::registry::install_child_kick(stream.as_raw_fd());
                        }
                        blocking::serve(stream, peer, &server.ctx, implicit_tls);
                        if let Some(hooks) = &server.ctx.hooks {
                            // The session's events run in this process: they end with it.
                            hooks.drain(server.ctx.grace.max(Duration::from_secs(30)));
                        }
                        // SAFETY: leave without running the parent's destructors or atexit.
                        unsafe { libc::_exit(0) }
                    }
                    -1 => {
                        tracing::warn!("fork failed: {}", io::Error::last_os_error());
                        net::refuse(
                            &stream,
                            zocalo_proto::reply::Reply::new(
                                421,
                                "Cannot serve you now; try later.",
                            ),
                        );
                    }
                    pid => {
                        children.borrow_mut().insert(pid, permit);
                    }
                }
            },
            || {
                let _ = child_waker.drain();
                reap(&mut children.borrow_mut(), registry.as_deref());
                server.reloader.answer(&server.reload);
            },
            &extra,
        )
    };
    server.stop_accepting();
    let limit = server.ctx.grace + Duration::from_secs(2);
    wait_children(&mut children, limit, &child_waker, registry.as_deref());
    result
}

/// Collects every exited child and releases its permit and its session-table slot.
fn reap(children: &mut HashMap<libc::pid_t, Permit>, registry: Option<&Registry>) {
    loop {
        let mut status = 0;
        // SAFETY: plain waitpid with a valid status pointer.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid <= 0 {
            return;
        }
        children.remove(&pid);
        if let Some(registry) = registry {
            registry.release_pid(pid);
        }
    }
}

/// At shutdown: children see the stop signal themselves (they inherited its descriptor); wait
/// for them within the grace period, then kill what is left.
fn wait_children(
    children: &mut HashMap<libc::pid_t, Permit>,
    limit: Duration,
    waker: &Waker,
    registry: Option<&Registry>,
) {
    let deadline = Instant::now() + limit;
    while !children.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            for pid in children.keys() {
                // SAFETY: signalling our own child.
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
            left_for_dead(children);
            return;
        }
        let _ = zocalo_poller::fds::wait_one(
            waker.as_raw_fd(),
            false,
            left.min(Duration::from_millis(100)),
        );
        let _ = waker.drain();
        reap(children, registry);
    }
}

fn left_for_dead(children: &mut HashMap<libc::pid_t, Permit>) {
    for pid in children.keys() {
        let mut status = 0;
        // SAFETY: blocking waitpid on a child we just killed.
        unsafe { libc::waitpid(*pid, &mut status, 0) };
    }
    children.clear();
}
