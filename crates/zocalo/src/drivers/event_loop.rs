//! The event-loop driver: one thread watches every connection and serves exactly those that are
//! ready (the `select`, `poll` and `epoll` models run one or more of these loops). All sockets
//! are non-blocking; listeners, control connections, data connections, the stop signal and the
//! timers live in one loop.
//!
//! TLS handshakes are the one costly step done on the loop's own thread (a signature with the
//! server's key: about 3 ms with RSA-4096). A turn spends at most [`HANDSHAKE_BUDGET`] on them;
//! a handshaking connection that is ready once it is spent waits for the next turn (the poller
//! is level-triggered, so it is reported again), and every other session ready in the turn is
//! served first. A crowd of handshakes then delays a NOOP by one budget, not by the crowd.
//!
//! Tokens carry a slot index and a kind (control or data) in their low bits. A connection's data
//! descriptor is deregistered before its transfer is dropped, so a recycled descriptor number
//! never meets a stale registration.
//!
//! **With io_uring** (`uring`) the same loop is also a completion loop: listeners take
//! connections with one multishot accept each, and a clear control connection is served by a
//! receive and a send the kernel carries out ([`zocalo_poller::Ring`]) rather than by readiness
//! and read(2)/write(2). One receive and one send at most are in flight (so replies are
//! written in order); once AUTH TLS is accepted the receive is cancelled before its reply goes,
//! so the handshake finds the socket untouched; TLS connections, data connections, PROXY headers and the signals stay on
//! readiness, which the ring also gives. A closed connection's slot is not reused until the
//! completions of its cancelled operations came back (they name the slot).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zocalo_poller::uring::{Completion, Done, Op};
use zocalo_poller::{new_poller, Backend, Event, Interest, Poller, Token};
use zocalo_proto::session::{Cancel, Lane, Work};

use crate::drivers::accept::{Accepted, Arrival, Door, Entrance, Listener, Verdict, ACCEPT_PAUSE};
use crate::drivers::connection::{Connection, Ctx, Io, Wanted};
use crate::drivers::workers::{Key, Workers};
use crate::state::limits::Limits;
use crate::sys::net::{self, FdReserve};

const KIND_BITS: usize = 2;
const CONTROL: usize = 0;
const DATA: usize = 1;
const LISTENER: usize = 2;
const SIGNAL: usize = 3;
/// The index of the workers' eventfd among the SIGNAL tokens (0 is the stop signal).
const WORK_DONE: usize = 1;
/// LISTENER tokens and work keys from this index on name a [`Door`] slot: a connection whose
/// PROXY header is being read, or whose admission (a Redis call) is on a worker.
const GATE_BASE: usize = 1 << 24;

/// CPU time one turn of the loop may spend on TLS handshakes (at least one step runs per turn).
const HANDSHAKE_BUDGET: Duration = Duration::from_millis(4);

fn token(index: usize, kind: usize) -> Token {
    Token(index << KIND_BITS | kind)
}

/// What the loops of `epoll:N` share.
pub struct Shared {
    pub ctx: Arc<Ctx>,
    pub limits: Arc<Limits>,
    pub reserve: Arc<FdReserve>,
}

/// One loop, with its own listeners.
pub struct EventLoop {
    poller: Box<dyn Poller>,
    ctx: Arc<Ctx>,
    listeners: Vec<Listener>,
    /// Connections on their way to a session: a balancer's PROXY header being read, or an
    /// admission out on a worker.
    door: Door,
    /// Accepting paused (listeners unregistered) until then: out of descriptors.
    accept_paused: Option<Instant>,
    /// Where the sessions' storage and authentication work runs.
    workers: Workers,
    /// Serial number of the next connection, for [`Key`].
    next_serial: u64,
    conns: Vec<Option<Box<Slot>>>,
    free: Vec<usize>,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    stop_by: Option<Instant>,
    /// Time spent on handshakes in this turn (see [`HANDSHAKE_BUDGET`]).
    handshakes_spent: Duration,
    /// The poller is io_uring: accept and clear control channels by completions.
    uring: bool,
    /// Slots of closed connections whose ring operations have not all completed, with the
    /// count still out.
    draining: std::collections::HashMap<usize, u8>,
    /// The last wait's completions and the bytes they received (kept for their capacity).
    completions: Vec<Completion>,
    received: Vec<u8>,
}

/// One client's place in the loop: its connection, and the loop's bookkeeping for it.
struct Slot {
    conn: Connection,
    /// Tells this connection apart from earlier ones in the same slot (for work results).
    serial: u64,
    /// What the control descriptor is registered for now.
    control_interest: Interest,
    /// The deadline pushed on the timer heap last.
    scheduled: Option<Instant>,
    /// A receive, a send in flight on the ring.
    recv_out: bool,
    send_out: bool,
}

/// The connection's registrations in this loop's poller.
struct LoopIo<'a> {
    poller: &'a mut dyn Poller,
    index: usize,
}

impl Io for LoopIo<'_> {
    fn control_replaced(&mut self, old: RawFd, new: RawFd) -> io::Result<()> {
        let _ = self.poller.deregister(old);
        self.poller.register(new, token(self.index, CONTROL), Interest::READABLE)
    }

    fn watch_data(&mut self, fd: RawFd, writable: bool, again: bool) -> io::Result<()> {
        let interest = if writable { Interest::WRITABLE } else { Interest::READABLE };
        match again {
            true => self.poller.reregister(fd, token(self.index, DATA), interest),
            false => self.poller.register(fd, token(self.index, DATA), interest),
        }
    }

    fn unwatch_data(&mut self, fd: RawFd) {
        let _ = self.poller.deregister(fd);
    }
}

/// The loop's side of its [`Door`]: header sockets are registered in the poller, admissions
/// that ask Redis go to the login lane, and the connections let in are collected for
/// [`EventLoop::open`].
struct LoopEntrance<'a> {
    poller: &'a mut dyn Poller,
    workers: &'a Workers,
    arrivals: &'a mut Vec<Arrival>,
}

impl Entrance for LoopEntrance<'_> {
    fn watch(&mut self, fd: RawFd, gate: usize) -> io::Result<()> {
        self.poller.register(fd, token(GATE_BASE + gate, LISTENER), Interest::READABLE)
    }

    fn unwatch(&mut self, fd: RawFd) {
        let _ = self.poller.deregister(fd);
    }

    fn offload(
        &mut self,
        gate: usize,
        serial: u64,
        admission: Box<dyn FnOnce() -> Verdict + Send>,
    ) {
        let work = Work::in_lane(Lane::Login, Cancel::default(), admission);
        self.workers.submit(Key { index: GATE_BASE + gate, serial, transfer: 0 }, work);
    }

    fn enter(&mut self, arrival: Arrival) {
        self.arrivals.push(arrival);
    }
}

fn interest(wanted: Wanted) -> Interest {
    match wanted {
        Wanted::Read => Interest::READABLE,
        Wanted::Write => Interest::WRITABLE,
        Wanted::Both => Interest::BOTH,
    }
}

impl EventLoop {
    pub fn new(backend: Backend, shared: Shared, listeners: Vec<Listener>) -> io::Result<Self> {
        let Shared { ctx, limits, reserve } = shared;
        let mut poller = new_poller(backend)?;
        let uring = poller.ring().is_some();
        for (i, l) in listeners.iter().enumerate() {
            l.sock.set_nonblocking(true)?;
            let (fd, token) = (l.sock.as_raw_fd(), token(i, LISTENER));
            match poller.ring() {
                Some(ring) => ring.accept_multishot(fd, token)?,
                None => poller.register(fd, token, Interest::READABLE)?,
            }
        }
        poller.register(ctx.shutdown.fd(), token(0, SIGNAL), Interest::READABLE)?;
        let workers = Workers::start(ctx.work_threads)?;
        poller.register(workers.as_raw_fd(), token(WORK_DONE, SIGNAL), Interest::READABLE)?;
        let (conns, free, timers) = (Vec::new(), Vec::new(), BinaryHeap::new());
        let door = Door::new(limits, reserve, ctx.proxy_from.clone(), ctx.proxy_timeout, true);
        Ok(EventLoop {
            poller,
            ctx,
            listeners,
            door,
            accept_paused: None,
            workers,
            next_serial: 0,
            conns,
            free,
            timers,
            stop_by: None,
            handshakes_spent: Duration::ZERO,
            uring,
            draining: std::collections::HashMap::new(),
            completions: Vec::new(),
            received: Vec::new(),
        })
    }

    /// Serves until the stop signal and the grace period are over.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Vec::with_capacity(256);
        loop {
            let timeout = self.next_timeout();
            self.poller.wait(&mut events, timeout)?;
            self.handshakes_spent = Duration::ZERO;
            for ev in &events {
                self.dispatch(ev);
            }
            if self.uring {
                self.on_completions();
            }
            self.fire_timers();
            self.resume_accepting();
            if self.stop_by.is_some() && self.conns.iter().all(Option::is_none) {
                return Ok(());
            }
        }
    }

    fn dispatch(&mut self, ev: &Event) {
        let (index, kind) = (ev.token.0 >> KIND_BITS, ev.token.0 & ((1 << KIND_BITS) - 1));
        match kind {
            LISTENER if index >= GATE_BASE => {
                self.at_door(|door, _, entrance| door.on_gate(index - GATE_BASE, entrance))
            }
            LISTENER => self.accept(index),
            SIGNAL if index == WORK_DONE => self.on_work_done(),
            SIGNAL => self.begin_stop(),
            CONTROL => self.on_control(index, ev),
            _ => self.on_data(index),
        }
    }

    // ---- accepting -----------------------------------------------------------------------

    /// Takes the connections waiting on listener `index`, each greeted before the next.
    fn accept(&mut self, index: usize) {
        loop {
            let accepted = self.at_door(|door, listeners, entrance| {
                listeners.get(index).map(|l| door.accept_one(l, entrance))
            });
            match accepted {
                Some(Accepted::One) => {}
                Some(Accepted::Pause) => return self.pause_accepting(),
                Some(Accepted::Drained) | None => return,
            }
        }
    }

    /// Steps the door: `step` is given it, the listeners and the loop's side of it; then the
    /// connections it let in become sessions.
    fn at_door<R>(
        &mut self,
        step: impl FnOnce(&mut Door, &[Listener], &mut LoopEntrance) -> R,
    ) -> R {
        let mut arrivals = Vec::new();
        let entrance = &mut LoopEntrance {
            poller: self.poller.as_mut(),
            workers: &self.workers,
            arrivals: &mut arrivals,
        };
        let stepped = step(&mut self.door, &self.listeners, entrance);
        for arrival in arrivals {
            self.open_one(arrival);
        }
        stepped
    }

    /// Out of descriptors with none to spare: stop watching the listeners for a moment (they
    /// would stay ready and spin the loop), while the sessions go on.
    fn pause_accepting(&mut self) {
        if self.accept_paused.is_some() {
            return;
        }
        for (i, l) in self.listeners.iter().enumerate() {
            match self.poller.ring() {
                Some(ring) => ring.cancel(token(i, LISTENER), Op::Accept),
                None => drop(self.poller.deregister(l.sock.as_raw_fd())),
            }
        }
        self.accept_paused = Some(Instant::now() + ACCEPT_PAUSE);
    }

    fn resume_accepting(&mut self) {
        if self.accept_paused.is_none_or(|t| t > Instant::now()) || self.stop_by.is_some() {
            return;
        }
        self.accept_paused = None;
        for (i, l) in self.listeners.iter().enumerate() {
            let (fd, token) = (l.sock.as_raw_fd(), token(i, LISTENER));
            // A multishot accept that is still in flight (its cancel lost the race) refuses a
            // second one, which is what we want.
            let _ = match self.poller.ring() {
                Some(ring) => ring.accept_multishot(fd, token),
                None => self.poller.register(fd, token, Interest::READABLE),
            };
        }
    }

    /// Gives a connection let in its session in this loop.
    fn open_one(&mut self, arrival: Arrival) {
        let Arrival { stream, peer, implicit_tls, permit, .. } = arrival;
        if let Some(limit) = self.poller.capacity_limit() {
            if stream.as_raw_fd() as usize >= limit {
                crate::ops::observe::refused(crate::ops::observe::Refused::FdSetsize, Some(peer));
                return net::refuse(
                    &stream,
                    zocalo_proto::reply::Reply::new(
                        421,
                        "Too many connections for select(2); try later.",
                    ),
                );
            }
        }
        let Ok(mut conn) =
            Connection::new(stream, peer, Some(permit), &self.ctx, implicit_tls, false)
        else {
            return;
        };
        self.next_serial += 1;
        let index = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        let fd = conn.control.fd();
        let on_ring = self.uring && conn.use_ring();
        if !on_ring {
            if let Err(e) = self.poller.register(fd, token(index, CONTROL), Interest::READABLE) {
                tracing::warn!("cannot watch a connection: {e}");
                self.free.push(index);
                return;
            }
        }
        let serial = self.next_serial;
        let control_interest = Interest::READABLE;
        let (recv_out, send_out) = (false, false);
        let slot = Slot { conn, serial, control_interest, scheduled: None, recv_out, send_out };
        self.conns[index] = Some(Box::new(slot));
        self.drive(index);
    }

    // ---- events --------------------------------------------------------------------------

    fn on_control(&mut self, index: usize, ev: &Event) {
        let Some(slot) = self.conns.get_mut(index).and_then(Option::as_mut) else {
            return;
        };
        let handshake = slot.conn.handshaking().then(Instant::now);
        if handshake.is_some() && self.handshakes_spent >= HANDSHAKE_BUDGET {
            // Reported again at the next turn, after the sessions that are ready now.
            return crate::ops::metrics::inc(crate::ops::metrics::Counter::TlsHandshakesDeferred);
        }
        if ev.readable || ev.hup || ev.error {
            slot.conn.on_control();
        }
        self.drive(index);
        if let Some(started) = handshake {
            self.handshakes_spent += started.elapsed();
        }
    }

    fn on_data(&mut self, index: usize) {
        let Some(slot) = self.conns.get_mut(index).and_then(Option::as_mut) else {
            return;
        };
        slot.conn.on_data(&mut LoopIo { poller: self.poller.as_mut(), index });
        self.drive(index);
    }

    /// Hands finished work to its sessions (a connection that closed meanwhile is gone, and its
    /// result with it).
    fn on_work_done(&mut self) {
        for finished in self.workers.take_finished() {
            let Key { index, serial, transfer } = finished.key;
            if index >= GATE_BASE {
                let verdict = finished.done.take::<Verdict>();
                let gate = index - GATE_BASE;
                self.at_door(|door, _, entrance| door.admitted(gate, serial, verdict, entrance));
                continue;
            }
            let Some(slot) = self.conns.get_mut(index).and_then(Option::as_mut) else {
                continue;
            };
            if slot.serial != serial {
                continue;
            }
            if transfer == 0 {
                slot.conn.work_done(finished.done);
            } else {
                let io = &mut LoopIo { poller: self.poller.as_mut(), index };
                slot.conn.data_work_done(transfer, finished.done, io);
            }
            self.drive(index);
        }
    }

    /// Hands the ring's completions to their listeners and sessions.
    fn on_completions(&mut self) {
        let (mut done, mut bytes) =
            (std::mem::take(&mut self.completions), std::mem::take(&mut self.received));
        if let Some(ring) = self.poller.ring() {
            ring.take_completions(&mut done, &mut bytes);
        }
        for c in done.drain(..) {
            let (index, kind) = (c.token.0 >> KIND_BITS, c.token.0 & ((1 << KIND_BITS) - 1));
            match (kind, c.done) {
                (LISTENER, Done::Accepted(accepted)) => self.accepted(index, accepted, c.more),
                (CONTROL, Done::Received(got)) => {
                    let Some(slot) = self.ring_slot(index, Op::Recv) else { continue };
                    slot.conn.received(got.map(|range| &bytes[range]));
                    self.drive(index);
                }
                (CONTROL, Done::Sent(result, _)) => {
                    let Some(slot) = self.ring_slot(index, Op::Send) else { continue };
                    slot.conn.sent(result);
                    self.drive(index);
                }
                _ => {}
            }
        }
        (self.completions, self.received) = (done, bytes);
    }

    /// The live slot an operation completed for, its flag cleared; `None` (and one operation
    /// fewer to wait for) if its connection closed meanwhile.
    fn ring_slot(&mut self, index: usize, op: Op) -> Option<&mut Slot> {
        if let Some(left) = self.draining.get_mut(&index) {
            *left -= 1;
            if *left == 0 {
                self.draining.remove(&index);
                self.free.push(index);
            }
            return None;
        }
        let slot = self.conns.get_mut(index)?.as_mut()?;
        match op {
            Op::Send => slot.send_out = false,
            _ => slot.recv_out = false,
        }
        Some(slot)
    }

    /// A multishot accept completed on listener `index`.
    fn accepted(&mut self, index: usize, accepted: io::Result<std::os::fd::OwnedFd>, more: bool) {
        let Some(listener) = self.listeners.get(index) else {
            return; // stopping: the listeners are gone, and a late connection with them
        };
        let implicit_tls = listener.implicit_tls;
        match accepted {
            Ok(fd) => {
                let stream = std::net::TcpStream::from(fd);
                if let Ok(peer) = stream.peer_addr() {
                    self.at_door(|door, _, entrance| {
                        door.arrive(stream, peer, implicit_tls, entrance)
                    });
                }
            }
            // Cancelled: accepting paused or the server stops.
            Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => return,
            // Out of descriptors: accept(2) with the reserve, as the readiness loops do.
            Err(e) if net::out_of_descriptors(&e) => self.accept(index),
            Err(e) => tracing::warn!("accept failed: {e}"),
        }
        if !more && self.accept_paused.is_none() && self.stop_by.is_none() {
            let fd = self.listeners[index].sock.as_raw_fd();
            if let Some(ring) = self.poller.ring() {
                let _ = ring.accept_multishot(fd, token(index, LISTENER));
            }
        }
    }

    fn begin_stop(&mut self) {
        crate::ops::systemd::notify("STOPPING=1");
        let _ = self.poller.deregister(self.ctx.shutdown.fd());
        if let Some(ring) = self.poller.ring() {
            let _ = ring.submit(); // an accept armed again this turn names a listener closed now
        }
        for (i, l) in self.listeners.drain(..).enumerate() {
            match self.poller.ring() {
                Some(ring) => ring.cancel(token(i, LISTENER), Op::Accept),
                None => drop(self.poller.deregister(l.sock.as_raw_fd())),
            }
        }
        self.stop_by = Some(Instant::now() + self.ctx.grace);
        self.at_door(|door, _, entrance| door.close(entrance));
        let by = Instant::now() + self.ctx.grace;
        for index in 0..self.conns.len() {
            if let Some(slot) = self.conns[index].as_mut() {
                slot.conn.begin_stop(by);
            }
            self.drive(index);
        }
    }

    /// Writes replies, carries out actions, updates registrations and the timer of one slot.
    fn drive(&mut self, index: usize) {
        let Some(slot) = self.conns.get_mut(index).and_then(Option::as_mut) else {
            return;
        };
        let span = slot.conn.span.clone();
        let _in_span = span.enter();
        loop {
            slot.conn.pump(&mut LoopIo { poller: self.poller.as_mut(), index }, &self.ctx);
            if slot.conn.closed {
                self.remove(index);
                return;
            }
            let mut ran_here = false;
            while let Some((data, work)) = slot.conn.take_work() {
                if !data && work.lane() == Lane::Inline {
                    // An in-memory login: no I/O, no hash, so no trip to a worker and back.
                    slot.conn.work_done(work.run());
                    ran_here = true;
                    continue;
                }
                let transfer = if data { slot.conn.transfers } else { 0 };
                self.workers.submit(Key { index, serial: slot.serial, transfer }, work);
            }
            if !ran_here {
                break;
            }
        }
        if slot.conn.on_ring() {
            return self.ring_io(index);
        }
        let wanted = interest(slot.conn.interest());
        if wanted != slot.control_interest {
            let fd = slot.conn.control.fd();
            let _ = self.poller.reregister(fd, token(index, CONTROL), wanted);
            slot.control_interest = wanted;
        }
        self.schedule(index);
    }

    /// Submits what a connection on the ring has to send, and a receive when it can take
    /// input; then its timer.
    fn ring_io(&mut self, index: usize) {
        let Some(slot) = self.conns.get_mut(index).and_then(Option::as_mut) else {
            return;
        };
        let (fd, token) = (slot.conn.control.fd(), token(index, CONTROL));
        let ring = self.poller.ring().expect("a ring connection has a ring");
        if let Some(buf) = slot.conn.take_send() {
            match ring.send(fd, token, buf) {
                Ok(()) => slot.send_out = true,
                Err(_) => slot.conn.sent(Err(io::ErrorKind::Other.into())),
            }
        }
        if let Some(max) = slot.conn.start_recv() {
            match ring.recv(fd, token, max) {
                Ok(()) => slot.recv_out = true,
                Err(e) => slot.conn.received(Err(e)),
            }
        }
        if slot.conn.take_cancel_recv() {
            ring.cancel(token, Op::Recv);
        }
        if slot.conn.closed {
            return self.remove(index);
        }
        self.schedule(index);
    }

    fn remove(&mut self, index: usize) {
        if let Some(mut slot) = self.conns[index].take() {
            let span = slot.conn.span.clone();
            let _in_span = span.enter();
            let token = token(index, CONTROL);
            if let (Some(ring), Some(buf)) = (self.poller.ring(), slot.conn.take_send()) {
                // A last reply (a timeout's): written only if the socket takes it at once.
                slot.send_out |= ring.send(slot.conn.control.fd(), token, buf).is_ok();
            }
            let out = u8::from(slot.recv_out) + u8::from(slot.send_out);
            if let Some(ring) = self.poller.ring().filter(|_| out > 0) {
                // The operations hold the socket open: cancel them; the slot waits for them.
                if slot.recv_out {
                    ring.cancel(token, Op::Recv);
                }
                if slot.send_out {
                    ring.cancel(token, Op::Send);
                }
                // Before the descriptor closes: a queued operation names it by number.
                let _ = ring.submit();
            } else {
                let _ = self.poller.deregister(slot.conn.control.fd());
            }
            slot.conn.finish(&mut LoopIo { poller: self.poller.as_mut(), index });
            match out {
                0 => self.free.push(index),
                _ => drop(self.draining.insert(index, out)),
            }
        }
    }

    // ---- timers --------------------------------------------------------------------------

    fn schedule(&mut self, index: usize) {
        let Some(slot) = self.conns[index].as_mut() else {
            return;
        };
        let Some(deadline) = slot.conn.deadline(&self.ctx) else {
            return;
        };
        if slot.scheduled.is_none_or(|s| deadline < s) {
            slot.scheduled = Some(deadline);
            self.timers.push(Reverse((deadline, index)));
        }
    }

    fn next_timeout(&self) -> Option<Duration> {
        let next = self.timers.peek().map(|Reverse((t, _))| *t);
        let gates = self.door.next_deadline();
        let next = [next, self.stop_by, self.accept_paused, gates].into_iter().flatten().min()?;
        Some(next.saturating_duration_since(Instant::now()))
    }

    /// Fires the timers due now. A timer a connection sets again for a time already past waits
    /// for the next turn of the loop, so no connection can keep the loop from the others.
    fn fire_timers(&mut self) {
        let now = Instant::now();
        self.at_door(|door, _, entrance| door.expire(now, entrance));
        let mut due = Vec::new();
        while let Some(&Reverse((at, index))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            due.push((at, index));
        }
        for (at, index) in due {
            let Some(slot) = self.conns.get_mut(index).and_then(Option::as_mut) else {
                continue;
            };
            if slot.scheduled != Some(at) {
                continue;
            }
            slot.scheduled = None;
            let span = slot.conn.span.clone();
            let _in_span = span.enter();
            slot.conn.fire(now, &mut LoopIo { poller: self.poller.as_mut(), index }, &self.ctx);
            self.drive(index);
        }
    }
}
