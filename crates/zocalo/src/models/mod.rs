//! The server models of the notes, each a small driver around the same session core.
//!
//! | model       | who serves a connection                     | file            |
//! |-------------|---------------------------------------------|-----------------|
//! | `iterative` | the accepting thread itself, one at a time  | `iterative.rs`  |
//! | `process`   | a child process forked per connection        | `process.rs`    |
//! | `thread`    | a thread spawned per connection              | `thread.rs`     |
//! | `pool:N`    | one of N threads created at start            | `pool.rs`       |
//! | `select`, `poll`, `epoll[:N]` | one readiness loop (per core) for all | `event.rs` |
//! | `uring[:N]` | one completion loop (per core) for all: io_uring | `event.rs` |
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
use std::os::fd::AsRawFd;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use zocalo_poller::fds::{self, PollFd};
use zocalo_poller::Backend;

use crate::drivers::accept::{Accepted, Arrival, Door, Entrance, Listener, ACCEPT_PAUSE};
use crate::drivers::blocking;
use crate::drivers::connection::Ctx;
use crate::services::Beside;
use crate::state::limits::Limits;
use crate::sys::net;

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
            ("uring", n) => Ok(Model::Event(Backend::Uring, n.unwrap_or(1))),
            _ => Err(format!(
                "unknown model {s:?}: use iterative, process, thread, pool[:N], select, poll, \
                 epoll[:N] or uring[:N]"
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

impl Model {
    /// Where the services beside the server run: the `process` model's parent must stay
    /// single-threaded to fork, so they get processes of their own; the other models give them
    /// threads.
    pub fn services(self) -> Beside {
        match self {
            Model::Process => Beside::Process,
            _ => Beside::Thread,
        }
    }

    /// The TFTP model for a `--model` value: the event-loop models run TFTP on one event loop
    /// of the same kind; `process` runs it with a thread per transfer (TFTP has no connection
    /// to fork for).
    pub fn tftp(self) -> zocalo_tftp::Model {
        use zocalo_tftp::Model as Tftp;
        match self {
            Model::Iterative => Tftp::Iterative,
            Model::Pool(n) => Tftp::Pool(n),
            Model::Event(backend, _) => Tftp::Event(backend),
            Model::Process | Model::Thread => Tftp::Thread,
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

/// Called once when a model is fully set up and accepting (the `listening` lines).
pub type Ready = Option<Box<dyn FnOnce() + Send>>;

/// What every model is given.
pub struct Server {
    pub ready: Ready,
    /// SIGHUP and `ctl reload`: the `process` model's parent reloads in its accept loop
    /// (where its children fork from); the other models reload on a thread of their own.
    pub reload: crate::sys::shutdown::Reload,
    pub reloader: crate::state::reload::Reloader,
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

/// Accepts on every listener until the stop signal, giving each connection let in to
/// `handle` (the [`Door`] refuses the others with their 421, and reads a trusted balancer's
/// PROXY header first, without blocking: this loop polls those sockets beside the listeners).
/// `on_wake` runs after each wait; `extra_fds` are more descriptors that end a wait.
pub(crate) fn accept_loop(
    server: &Server,
    ready: Ready,
    handle: impl FnMut(Arrival),
    mut on_wake: impl FnMut(),
    extra_fds: &[i32],
) -> io::Result<()> {
    let ctx = &server.ctx;
    let (limits, reserve) = (server.limits.clone(), server.reserve.clone());
    let mut door = Door::new(limits, reserve, ctx.proxy_from.clone(), ctx.proxy_timeout, false);
    let mut entrance = Handler(handle);
    let mut fixed: Vec<PollFd> =
        server.listeners.iter().map(|l| fds::watch(l.sock.as_raw_fd(), true, false)).collect();
    fixed.push(fds::watch(ctx.shutdown.fd(), true, false));
    fixed.extend(extra_fds.iter().map(|&fd| fds::watch(fd, true, false)));
    for l in &server.listeners {
        l.sock.set_nonblocking(true)?;
    }
    if let Some(ready) = ready {
        ready();
    }
    let (mut polled, mut gates) = (Vec::new(), Vec::new());
    loop {
        polled.clear();
        polled.extend_from_slice(&fixed);
        gates.clear();
        gates.extend(door.held());
        polled.extend(gates.iter().map(|&(_, fd)| fds::watch(fd, true, false)));
        let timeout = door.next_deadline().map(|at| at.saturating_duration_since(Instant::now()));
        fds::wait(&mut polled, timeout)?;
        on_wake();
        if fds::fired(&polled[server.listeners.len()]) {
            crate::ops::systemd::notify("STOPPING=1");
            return Ok(());
        }
        for (i, listener) in server.listeners.iter().enumerate() {
            if fds::fired(&polled[i]) && door.accept(listener, &mut entrance) == Accepted::Pause {
                // Nothing could be taken off the backlog: pause instead of spinning (this
                // thread only accepts; the sessions go on).
                std::thread::sleep(ACCEPT_PAUSE);
            }
        }
        for (&(gate, _), p) in gates.iter().zip(&polled[fixed.len()..]) {
            if fds::fired(p) {
                door.on_gate(gate, &mut entrance);
            }
        }
        door.expire(Instant::now(), &mut entrance);
    }
}

/// The blocking loop's [`Entrance`]: headers are polled from [`Door::held`], admissions run
/// here, and a connection let in goes to the model's handler.
struct Handler<F>(F);

impl<F: FnMut(Arrival)> Entrance for Handler<F> {
    fn enter(&mut self, arrival: Arrival) {
        (self.0)(arrival)
    }
}

/// Serves one connection with the blocking driver; its place in the limits is given back when
/// the session ends.
pub(crate) fn serve_blocking(arrival: Arrival, ctx: &Ctx) {
    let Arrival { stream, peer, implicit_tls, permit, .. } = arrival;
    blocking::serve(stream, peer, ctx, implicit_tls);
    drop(permit);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_round_trip() {
        for name in [
            "iterative",
            "process",
            "thread",
            "pool:3",
            "select",
            "poll",
            "epoll",
            "epoll:2",
            "uring",
            "uring:2",
        ] {
            assert_eq!(name.parse::<Model>().unwrap().to_string(), name);
        }
        assert!("pool:0".parse::<Model>().is_err());
        assert!("select:2".parse::<Model>().is_err());
        assert!("fork".parse::<Model>().is_err());
        assert_eq!("epoll".parse::<Model>().unwrap(), Model::default());
    }
}
