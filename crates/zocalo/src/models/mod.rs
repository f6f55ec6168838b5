//! The server models of the notes, each a small driver around the same session core.
//!
//! | model       | who serves a connection                     | file            |
//! |-------------|---------------------------------------------|-----------------|
//! | `iterative` | the accepting thread itself, one at a time  | `iterative.rs`  |
//! | `process`   | a child process forked per connection        | `process.rs`    |
//! | `thread`    | a thread spawned per connection              | `thread.rs`     |
//! | `pool:N`    | one of N threads created at start            | `pool.rs`       |
//! | `select`, `poll`, `epoll[:N]` | one readiness loop (per core) for all | `event.rs` |
//!
//! The drivers the models run are in [`crate::drivers`].
//!
//! The blocking models share [`crate::drivers::blocking`]; they differ only in how they hand it a socket.

pub mod event;
pub mod iterative;
pub mod pool;
pub mod process;
pub mod thread;

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use zocalo_poller::Backend;

use crate::drivers::blocking;
use crate::drivers::connection::Ctx;
use crate::drivers::proxy::{self, Gate};
use crate::net;
use crate::ops::limits::{Limits, Permit};

/// The `--model` switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    Iterative,
    Process,
    Thread,
    Pool(usize),
    Event(Backend, usize),
}

impl Default for Model {
    fn default() -> Self {
        Model::Event(Backend::Epoll, 1)
    }
}

impl FromStr for Model {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (name, n) = match s.split_once(':') {
            Some((name, n)) => {
                let n: usize = n.parse().map_err(|_| format!("bad count in {s:?}"))?;
                if n == 0 {
                    return Err(format!("count must be at least 1 in {s:?}"));
                }
                (name, Some(n))
            }
            None => (s, None),
        };
        match (name, n) {
            ("iterative", None) => Ok(Model::Iterative),
            ("process", None) => Ok(Model::Process),
            ("thread", None) => Ok(Model::Thread),
            ("pool", n) => Ok(Model::Pool(n.unwrap_or(default_pool_size()))),
            ("select", None) => Ok(Model::Event(Backend::Select, 1)),
            ("poll", None) => Ok(Model::Event(Backend::Poll, 1)),
            ("epoll", n) => Ok(Model::Event(Backend::Epoll, n.unwrap_or(1))),
            _ => Err(format!(
                "unknown model {s:?}: use iterative, process, thread, pool[:N], select, poll or epoll[:N]"
            )),
        }
    }
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Model::Iterative => f.write_str("iterative"),
            Model::Process => f.write_str("process"),
            Model::Thread => f.write_str("thread"),
            Model::Pool(n) => write!(f, "pool:{n}"),
            Model::Event(b, 1) => write!(f, "{b}"),
            Model::Event(b, n) => write!(f, "{b}:{n}"),
        }
    }
}

/// Workers of `pool` when no N is given: enough to serve an ordinary load at once (Apache's
/// and Tomcat's defaults are of this order), and 4 per core on a large machine. A worker is a
/// thread that mostly waits, so the cost is its stack's touched pages.
pub const DEFAULT_POOL: usize = 256;

fn default_pool_size() -> usize {
    std::thread::available_parallelism().map_or(DEFAULT_POOL, |n| (n.get() * 4).max(DEFAULT_POOL))
}

/// A listening socket, and whether its connections start in TLS (implicit FTPS).
pub struct Listener {
    pub sock: TcpListener,
    pub implicit_tls: bool,
    /// Handed over by systemd (socket activation) rather than bound here.
    pub inherited: bool,
}

/// Called once when a model is fully set up and accepting (the `listening` lines).
pub type Ready = Option<Box<dyn FnOnce() + Send>>;

/// What every model is given.
pub struct Server {
    pub ready: Ready,
    /// SIGHUP and `ctl reload`: the `process` model's parent reloads in its accept loop
    /// (where its children fork from); the other models reload on a thread of their own.
    pub reload: crate::shutdown::Reload,
    pub reloader: crate::serve::Reloader,
    /// The descriptor kept back to refuse clients with 421 at the descriptor limit.
    pub reserve: Arc<net::FdReserve>,
    pub ctx: Arc<Ctx>,
    pub limits: Arc<Limits>,
    pub listeners: Vec<Listener>,
    /// Queue length for `pool` beyond its workers.
    pub pool_queue: usize,
    /// The listen backlog, for the extra listeners of `epoll:N`.
    pub backlog: i32,
    /// The listeners came from systemd: the extra loops of `epoll:N` share them (a socket
    /// bound here could not join them with SO_REUSEPORT).
    pub inherited_listeners: bool,
}

impl Server {
    /// Closes the listening sockets once the accept loop is over, so that a client arriving
    /// during the grace period is refused at once instead of waiting in the backlog.
    pub fn stop_accepting(&mut self) {
        self.listeners.clear();
    }
}

/// Runs the chosen model until the stop signal and the grace period are over.
pub fn run(model: Model, server: Server) -> io::Result<()> {
    match model {
        Model::Iterative => iterative::run(server),
        Model::Process => process::run(server),
        Model::Thread => thread::run(server),
        Model::Pool(n) => pool::run(server, n),
        Model::Event(backend, n) => event::run(server, backend, n),
    }
}

/// Runs `service` in a child process of its own (the `process` model's TFTP server and admin
/// channel), forked while the server has only one thread: the child closes its copies of the
/// FTP listeners, runs `service` and exits without the parent's destructors; the parent goes on.
pub fn fork_service(
    listeners: &[Listener],
    service: impl FnOnce() -> io::Result<()>,
) -> io::Result<()> {
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

/// Runs `service` beside the server for as long as the server lives: in the `process` model in
/// a process of its own (forked now, while the parent still has one thread; it exits when
/// `service` returns), otherwise on a thread named `name`. `service` is told which it got
/// (true: a process of its own).
pub fn spawn_service(
    model: Model,
    listeners: &[Listener],
    name: &str,
    service: impl FnOnce(bool) + Send + 'static,
) -> io::Result<()> {
    match model {
        Model::Process => fork_service(listeners, move || {
            service(true);
            Ok(())
        }),
        _ => {
            std::thread::Builder::new().name(name.into()).spawn(move || service(false))?;
            Ok(())
        }
    }
}

/// How long accepting pauses when the descriptor limit is reached and not even the reserve
/// descriptor could refuse a client.
pub(crate) const ACCEPT_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

/// An accepted connection and its client's address: the socket's peer, or the address a
/// trusted balancer's PROXY header gave.
pub struct Accepted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    /// Other descriptors the accept loop holds (connections whose PROXY header is pending): a
    /// child forked for this connection closes its copies, or they would outlive the parent's.
    pub pending: Vec<RawFd>,
}

/// Connections from a balancer whose PROXY header is still being read, at most this many at a
/// time (each holds a descriptor and at most 528 bytes); more are closed with a log line.
pub(crate) const MAX_GATES: usize = 4096;

/// Accepts on every listener until the stop signal, giving each admitted connection to
/// `handle`; a connection over a limit gets its 421 here and is closed. A connection from a
/// trusted balancer first has its PROXY header read here, without blocking (the loop polls
/// those sockets beside the listeners), so that the limits count the real client.
pub(crate) fn accept_loop(
    server: &Server,
    ready: Ready,
    mut handle: impl FnMut(Accepted, Permit, bool),
    mut on_wake: impl FnMut(),
    extra_fds: &[i32],
) -> io::Result<()> {
    let shutdown_fd = server.ctx.shutdown.fd();
    let mut fixed: Vec<libc::pollfd> = server
        .listeners
        .iter()
        .map(|l| libc::pollfd { fd: l.sock.as_raw_fd(), events: libc::POLLIN, revents: 0 })
        .collect();
    fixed.push(libc::pollfd { fd: shutdown_fd, events: libc::POLLIN, revents: 0 });
    for &fd in extra_fds {
        fixed.push(libc::pollfd { fd, events: libc::POLLIN, revents: 0 });
    }
    for l in &server.listeners {
        l.sock.set_nonblocking(true)?;
    }
    if let Some(ready) = ready {
        ready();
    }
    let mut gates: Vec<(Gate, bool)> = Vec::new();
    let mut fds = Vec::new();
    loop {
        fds.clear();
        fds.extend_from_slice(&fixed);
        let pollin = |g: &(Gate, bool)| libc::pollfd {
            fd: g.0.stream.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        fds.extend(gates.iter().map(pollin));
        let timeout = match gates.iter().map(|g| g.0.deadline).min() {
            Some(at) => {
                let left = at.saturating_duration_since(Instant::now());
                left.as_millis().min(60_000) as i32 + 1
            }
            None => -1,
        };
        // SAFETY: `fds` is a valid, initialised slice of pollfd.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        on_wake();
        if fds[server.listeners.len()].revents != 0 {
            crate::ops::systemd::notify("STOPPING=1");
            return Ok(());
        }
        for (i, listener) in server.listeners.iter().enumerate() {
            if fds[i].revents != 0 {
                accept_ready(listener, server, &mut handle, &mut gates);
            }
        }
        let ready: Vec<bool> = fds[fixed.len()..].iter().map(|p| p.revents != 0).collect();
        let now = Instant::now();
        // Downwards, so that swap_remove only moves a gate already looked at.
        for i in (0..ready.len().min(gates.len())).rev() {
            if !ready[i] && gates[i].0.deadline > now {
                continue;
            }
            let (mut gate, implicit) = gates.swap_remove(i);
            match gate.step() {
                Ok(Some(from)) => {
                    let (stream, pending) = (gate.into_stream(), pending_fds(&gates));
                    let accepted = Accepted { stream, peer: from.addr(), pending };
                    match from {
                        proxy::Origin::Client(_) => admit(server, accepted, implicit, &mut handle),
                        proxy::Origin::Balancer(b) => {
                            let _ = accepted.stream.set_nonblocking(false);
                            handle(accepted, server.limits.exempt(b.ip()), implicit);
                        }
                    }
                }
                Ok(None) if gate.deadline > now => gates.push((gate, implicit)),
                Ok(None) => proxy::log_refused(gate.balancer, &proxy::Refused::TimedOut),
                Err(why) => proxy::log_refused(gate.balancer, &why),
            }
        }
    }
}

fn accept_ready(
    listener: &Listener,
    server: &Server,
    handle: &mut impl FnMut(Accepted, Permit, bool),
    gates: &mut Vec<(Gate, bool)>,
) {
    loop {
        match listener.sock.accept() {
            Ok((stream, peer)) if proxy::trusted(&server.ctx.proxy_from, peer.ip()) => {
                if gates.len() >= MAX_GATES {
                    tracing::warn!(balancer = %peer, "too many PROXY headers pending; closed");
                    continue;
                }
                let deadline = Instant::now() + server.ctx.proxy_timeout;
                match Gate::new(stream, peer, deadline) {
                    Ok(gate) => gates.push((gate, listener.implicit_tls)),
                    Err(e) => tracing::warn!(balancer = %peer, "cannot read a PROXY header: {e}"),
                }
            }
            Ok((stream, peer)) => {
                let pending = pending_fds(gates);
                admit(server, Accepted { stream, peer, pending }, listener.implicit_tls, handle);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if net::out_of_descriptors(&e) => {
                if !server.reserve.shed(&listener.sock, &e) {
                    // Nothing could be taken off the backlog: pause instead of spinning (this
                    // thread only accepts; the sessions go on).
                    std::thread::sleep(ACCEPT_PAUSE);
                    return;
                }
            }
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                return;
            }
        }
    }
}

fn pending_fds(gates: &[(Gate, bool)]) -> Vec<RawFd> {
    gates.iter().map(|(g, _)| g.stream.as_raw_fd()).collect()
}

/// Counts the connection against the limits (here and, with `--shared-state`, across the
/// cluster) and hands it over, or refuses it with its 421.
fn admit(
    server: &Server,
    accepted: Accepted,
    implicit: bool,
    handle: &mut impl FnMut(Accepted, Permit, bool),
) {
    match server.limits.admit(accepted.peer.ip()) {
        Ok(permit) => {
            let _ = accepted.stream.set_nonblocking(false);
            handle(accepted, permit, implicit);
        }
        Err(refusal) => {
            crate::ops::observe::refused(refusal.cause(), Some(accepted.peer));
            net::refuse(&accepted.stream, refusal.reply())
        }
    }
}

/// Serves one connection with the blocking driver.
pub(crate) fn serve_blocking(accepted: Accepted, ctx: &Ctx, implicit_tls: bool) {
    blocking::serve(accepted.stream, accepted.peer, ctx, implicit_tls);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_round_trip() {
        for name in
            ["iterative", "process", "thread", "pool:3", "select", "poll", "epoll", "epoll:2"]
        {
            assert_eq!(name.parse::<Model>().unwrap().to_string(), name);
        }
        assert!("pool:0".parse::<Model>().is_err());
        assert!("select:2".parse::<Model>().is_err());
        assert!("fork".parse::<Model>().is_err());
        assert_eq!("epoll".parse::<Model>().unwrap(), Model::default());
    }
}
