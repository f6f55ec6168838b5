//! What happens between ACCEPT and the session, once for every driver: the listeners, the
//! descriptor reserve and the pause when the process runs out, a trusted balancer's PROXY
//! header, admission against the limits (and the cluster's, with `--shared-state`), and the
//! `421` of a client over a limit.
//!
//! [`Door`] holds the connections on their way in and is stepped by its driver as
//! [`crate::drivers::connection::Connection`] is for a session: the blocking accept loop of the
//! iterative, process, thread and pool models, the event loop of select, poll and epoll, and
//! `serve --inetd`, where inetd did the ACCEPT. What differs between them is an [`Entrance`]:
//! how a header's socket is watched, where an admission that asks Redis runs, and what is done
//! with a connection let in.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::drivers::proxy::{self, Gate, Origin};
use crate::state::limits::{Limits, Permit, Refusal};
use crate::sys::net::{self, Cidr, FdReserve};

/// A listening socket, and whether its connections start in TLS (implicit FTPS).
pub struct Listener {
    pub sock: TcpListener,
    pub implicit_tls: bool,
    /// Handed over by systemd (socket activation) rather than bound here.
    pub inherited: bool,
}

/// How long accepting pauses when the descriptor limit is reached and not even the reserve
/// descriptor could refuse a client.
pub const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Connections from a balancer whose PROXY header is still being read, at most this many at a
/// time (each holds a descriptor and at most 528 bytes), admissions out on a worker included;
/// more are closed with a log line.
pub const MAX_GATES: usize = 4096;

/// A connection let in: its client's address (the socket's peer, or the one a trusted
/// balancer's PROXY header gave) and the permit that counts it against the limits.
pub struct Arrival {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    /// The connection speaks TLS from its first byte.
    pub implicit_tls: bool,
    pub permit: Permit,
    /// The other connections the door holds now: a child forked for this one closes its
    /// copies, or they would outlive the parent's.
    pub held: Vec<RawFd>,
}

/// A verdict of the limits, as the work that asks Redis returns it.
pub type Verdict = Result<Permit, Refusal>;

/// What a driver does for its [`Door`].
pub trait Entrance {
    /// Start watching a header's socket for reading; `gate` comes back to [`Door::on_gate`].
    /// A blocking loop polls [`Door::held`] each turn instead.
    fn watch(&mut self, _fd: RawFd, _gate: usize) -> io::Result<()> {
        Ok(())
    }

    /// Stop watching it.
    fn unwatch(&mut self, _fd: RawFd) {}

    /// Run `admission` (it asks Redis) off this thread and hand its verdict to
    /// [`Door::admitted`] with `gate` and `serial`. Only called when the door was made with
    /// `offload`.
    fn offload(
        &mut self,
        _gate: usize,
        _serial: u64,
        _admission: Box<dyn FnOnce() -> Verdict + Send>,
    ) {
    }

    /// The connection is let in: give it a session.
    fn enter(&mut self, arrival: Arrival);
}

/// Whether the listener had more to give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// One connection was taken (and let in, refused, or left at the door).
    One,
    /// Every waiting connection was taken.
    Drained,
    /// Out of descriptors and none could be spared to refuse a client: stop watching the
    /// listeners for [`ACCEPT_PAUSE`] (they would stay ready and spin the loop).
    Pause,
}

/// The connections on their way in.
pub struct Door {
    limits: Arc<Limits>,
    reserve: Arc<FdReserve>,
    proxy_from: Vec<Cidr>,
    proxy_timeout: Duration,
    /// Admissions that ask Redis go to [`Entrance::offload`] (an event loop never waits on
    /// the network); otherwise they run here.
    offload: bool,
    slots: Vec<Option<Pending>>,
    free: Vec<usize>,
    serial: u64,
}

enum Pending {
    /// A balancer's PROXY header being read.
    Header { gate: Gate, implicit_tls: bool },
    /// An admission out on a worker; its verdict comes back with `serial`.
    Admitting { stream: TcpStream, peer: SocketAddr, implicit_tls: bool, serial: u64 },
}

impl Door {
    pub fn new(
        limits: Arc<Limits>,
        reserve: Arc<FdReserve>,
        proxy_from: Vec<Cidr>,
        proxy_timeout: Duration,
        offload: bool,
    ) -> Self {
        let offload = offload && limits.is_shared();
        let (slots, free) = (Vec::new(), Vec::new());
        Door { limits, reserve, proxy_from, proxy_timeout, offload, slots, free, serial: 0 }
    }

    /// Accepts every connection waiting on `listener` (it is non-blocking).
    pub fn accept(&mut self, listener: &Listener, entrance: &mut impl Entrance) -> Accepted {
        loop {
            match self.accept_one(listener, entrance) {
                Accepted::One => {}
                other => return other,
            }
        }
    }

    /// Accepts one connection waiting on `listener`, so that a driver can open its session
    /// (and greet it) before it takes the next.
    pub fn accept_one(&mut self, listener: &Listener, entrance: &mut impl Entrance) -> Accepted {
        loop {
            match listener.sock.accept() {
                Ok((stream, peer)) => {
                    self.arrive(stream, peer, listener.implicit_tls, entrance);
                    return Accepted::One;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if net::out_of_descriptors(&e) => {
                    if !self.reserve.shed(&listener.sock, &e) {
                        return Accepted::Pause;
                    }
                }
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        tracing::warn!("accept failed: {e}");
                    }
                    return Accepted::Drained;
                }
            }
        }
    }

    /// A connection accepted (here, or by inetd): its header is read first if it comes from a
    /// trusted balancer, then it is admitted.
    pub fn arrive(
        &mut self,
        stream: TcpStream,
        peer: SocketAddr,
        implicit_tls: bool,
        entrance: &mut impl Entrance,
    ) {
        if !proxy::trusted(&self.proxy_from, peer.ip()) {
            return self.admit(stream, peer, implicit_tls, entrance);
        }
        if self.slots.len() - self.free.len() >= MAX_GATES {
            // A flood would write a line per connection: one a second, with the count.
            static FULL: crate::ops::logs::Throttle =
                crate::ops::logs::Throttle::new(Duration::from_secs(1));
            crate::ops::metrics::inc(crate::ops::metrics::Counter::ProxyRefused);
            if let Some(held) = FULL.allow() {
                tracing::warn!(
                    balancer = %peer,
                    more = held,
                    "too many PROXY headers pending ({MAX_GATES}); closed (and {held} more since \
                     the last such line)"
                );
            }
            return;
        }
        let deadline = Instant::now() + self.proxy_timeout;
        let gate = match Gate::new(stream, peer, deadline) {
            Ok(gate) => gate,
            Err(e) => return tracing::warn!(balancer = %peer, "cannot read a PROXY header: {e}"),
        };
        let fd = gate.stream.as_raw_fd();
        let i = self.put(Pending::Header { gate, implicit_tls });
        if let Err(e) = entrance.watch(fd, i) {
            tracing::warn!("cannot watch a connection: {e}");
            self.take(i);
            return;
        }
        self.on_gate(i, entrance);
    }

    /// Reads more of header `i` (its socket is readable, or its time is up).
    pub fn on_gate(&mut self, i: usize, entrance: &mut impl Entrance) {
        let Some(Some(Pending::Header { gate, .. })) = self.slots.get_mut(i) else {
            return;
        };
        let result = match gate.step() {
            Ok(None) if gate.deadline <= Instant::now() => Err(proxy::Refused::TimedOut),
            Ok(None) => return,
            Ok(Some(origin)) => Ok(origin),
            Err(why) => Err(why),
        };
        let Some(Pending::Header { gate, implicit_tls }) = self.take(i) else {
            return;
        };
        entrance.unwatch(gate.stream.as_raw_fd());
        match result {
            Ok(Origin::Client(peer)) => {
                self.admit(gate.into_stream(), peer, implicit_tls, entrance)
            }
            // A health check of the balancer itself: it counts against no limit.
            Ok(Origin::Balancer(b)) => {
                let permit = Ok(self.limits.exempt(b.ip()));
                self.let_in(gate.into_stream(), b, implicit_tls, permit, entrance)
            }
            Err(why) => proxy::log_refused(gate.balancer, &why),
        }
    }

    /// Gives up on the headers whose time is up.
    pub fn expire(&mut self, now: Instant, entrance: &mut impl Entrance) {
        if self.slots.len() == self.free.len() {
            return;
        }
        for i in 0..self.slots.len() {
            if matches!(&self.slots[i], Some(Pending::Header { gate, .. }) if gate.deadline <= now)
            {
                self.on_gate(i, entrance);
            }
        }
    }

    /// When the next header's time is up.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.headers_waiting().map(|(_, _, deadline)| deadline).min()
    }

    /// The headers being read: slot, socket and deadline.
    fn headers_waiting(&self) -> impl Iterator<Item = (usize, RawFd, Instant)> + '_ {
        self.slots.iter().enumerate().filter_map(|(i, p)| match p {
            Some(Pending::Header { gate, .. }) => Some((i, gate.stream.as_raw_fd(), gate.deadline)),
            _ => None,
        })
    }

    /// The sockets of the headers being read, with their slots: what a blocking loop polls.
    pub fn held(&self) -> impl Iterator<Item = (usize, RawFd)> + '_ {
        self.headers_waiting().map(|(i, fd, _)| (i, fd))
    }

    /// The verdict of an offloaded admission. A stale one (its slot was emptied by a stop and
    /// reused) is dropped, and its permit with it.
    pub fn admitted(
        &mut self,
        i: usize,
        serial: u64,
        verdict: Option<Verdict>,
        entrance: &mut impl Entrance,
    ) {
        if !matches!(&self.slots.get(i), Some(Some(Pending::Admitting { serial: s, .. })) if *s == serial)
        {
            return;
        }
        let Some(Pending::Admitting { stream, peer, implicit_tls, .. }) = self.take(i) else {
            return;
        };
        let verdict = verdict.unwrap_or(Err(Refusal::TooManyConnections));
        self.let_in(stream, peer, implicit_tls, verdict, entrance);
    }

    /// At a stop: closes every connection not yet let in.
    pub fn close(&mut self, entrance: &mut impl Entrance) {
        for pending in self.slots.drain(..).flatten() {
            if let Pending::Header { gate, .. } = pending {
                entrance.unwatch(gate.stream.as_raw_fd());
            }
        }
        self.free.clear();
    }

    /// Counts the connection against the limits: here, or with `--shared-state` on a worker
    /// (the result comes back through [`Self::admitted`]).
    fn admit(
        &mut self,
        stream: TcpStream,
        peer: SocketAddr,
        implicit_tls: bool,
        entrance: &mut impl Entrance,
    ) {
        if !self.offload {
            let verdict = self.limits.admit(peer.ip());
            return self.let_in(stream, peer, implicit_tls, verdict, entrance);
        }
        self.serial += 1;
        let serial = self.serial;
        let i = self.put(Pending::Admitting { stream, peer, implicit_tls, serial });
        let limits = self.limits.clone();
        entrance.offload(i, serial, Box::new(move || limits.admit(peer.ip())));
    }

    /// Hands the connection over, or refuses it with its 421.
    fn let_in(
        &mut self,
        stream: TcpStream,
        peer: SocketAddr,
        implicit_tls: bool,
        verdict: Verdict,
        entrance: &mut impl Entrance,
    ) {
        match verdict {
            Ok(permit) => {
                let held = self.held().map(|(_, fd)| fd).collect();
                entrance.enter(Arrival { stream, peer, implicit_tls, permit, held });
            }
            Err(refusal) => {
                crate::ops::observe::refused(refusal.cause(), Some(peer));
                net::refuse(&stream, refusal.reply())
            }
        }
    }

    fn put(&mut self, pending: Pending) -> usize {
        let i = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        self.slots[i] = Some(pending);
        i
    }

    fn take(&mut self, i: usize) -> Option<Pending> {
        let pending = self.slots.get_mut(i)?.take()?;
        self.free.push(i);
        Some(pending)
    }
}
