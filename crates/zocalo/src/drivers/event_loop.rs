//! The event-loop driver: one thread watches every connection and serves exactly those that are
//! ready (the `select`, `poll` and `epoll` models run one or more of these loops). All sockets
//! are non-blocking; listeners, control connections, data connections, the stop signal and the
//! timers live in one loop.
//!
//! Tokens carry a slot index and a kind (control or data) in their low bits. A connection's data
//! descriptor is deregistered before its transfer is dropped, so a recycled descriptor number
//! never meets a stale registration.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, ErrorKind};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zocalo_poller::{new_poller, Backend, Event, Interest, Poller, Token};
use zocalo_proto::session::{Cancel, Lane, Work};

use crate::drivers::connection::{Connection, Ctx, Io, Wanted};
use crate::drivers::proxy::{self, Gate};
use crate::drivers::workers::{Key, Workers};
use crate::models::Listener;
use crate::net::{self, FdReserve};
use crate::ops::limits::{Limits, Permit, Refusal};

const KIND_BITS: usize = 2;
const CONTROL: usize = 0;
const DATA: usize = 1;
const LISTENER: usize = 2;
const SIGNAL: usize = 3;
/// The index of the workers' eventfd among the SIGNAL tokens (0 is the stop signal).
const WORK_DONE: usize = 1;
/// LISTENER tokens and work keys from this index on name a [`Gate`] slot: a connection whose
/// PROXY header is being read, or whose admission (a Redis call) is on a worker.
const GATE_BASE: usize = 1 << 24;

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
    limits: Arc<Limits>,
    reserve: Arc<FdReserve>,
    listeners: Vec<Listener>,
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
    /// Connections not yet sessions: a balancer's PROXY header being read, or an admission
    /// out on a worker. Their deadlines are few and short, so they are scanned, not heaped.
    gates: Vec<Option<Pending>>,
    free_gates: Vec<usize>,
}

/// A connection on its way to becoming a session.
struct Pending {
    state: PendingState,
    implicit: bool,
    serial: u64,
}

enum PendingState {
    Header(Gate),
    /// The admission runs on a worker (it asks Redis); the result comes back with this slot's
    /// key.
    Admitting {
        stream: TcpStream,
        peer: SocketAddr,
    },
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
        for (i, l) in listeners.iter().enumerate() {
            l.sock.set_nonblocking(true)?;
            poller.register(l.sock.as_raw_fd(), token(i, LISTENER), Interest::READABLE)?;
        }
        poller.register(ctx.shutdown.fd(), token(0, SIGNAL), Interest::READABLE)?;
        let workers = Workers::start(ctx.work_threads)?;
        poller.register(workers.as_raw_fd(), token(WORK_DONE, SIGNAL), Interest::READABLE)?;
        let (conns, free, timers) = (Vec::new(), Vec::new(), BinaryHeap::new());
        Ok(EventLoop {
            poller,
            ctx,
            limits,
            reserve,
            listeners,
            accept_paused: None,
            workers,
            next_serial: 0,
            conns,
            free,
            timers,
            stop_by: None,
            gates: Vec::new(),
            free_gates: Vec::new(),
        })
    }

    /// Serves until the stop signal and the grace period are over.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Vec::with_capacity(256);
        loop {
            let timeout = self.next_timeout();
            self.poller.wait(&mut events, timeout)?;
            for ev in &events {
                self.dispatch(ev);
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
            LISTENER if index >= GATE_BASE => self.on_gate(index - GATE_BASE),
            LISTENER => self.accept(index),
            SIGNAL if index == WORK_DONE => self.on_work_done(),
            SIGNAL => self.begin_stop(),
            CONTROL => self.on_control(index, ev),
            _ => self.on_data(index),
        }
    }

    // ---- accepting -----------------------------------------------------------------------

    fn accept(&mut self, index: usize) {
        loop {
            let Some(listener) = self.listeners.get(index) else {
                return;
            };
            let implicit = listener.implicit_tls;
            match listener.sock.accept() {
                Ok((stream, peer)) if proxy::trusted(&self.ctx.proxy_from, peer.ip()) => {
                    self.open_gate(stream, peer, implicit);
                }
                Ok((stream, peer)) => self.admit(stream, peer, implicit),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if net::out_of_descriptors(&e) => {
                    if !self.reserve.shed(&listener.sock, &e) {
                        return self.pause_accepting();
                    }
                }
                Err(e) => {
                    if e.kind() != ErrorKind::WouldBlock {
                        tracing::warn!("accept failed: {e}");
                    }
                    return;
                }
            }
        }
    }

    /// Out of descriptors with none to spare: stop watching the listeners for a moment (they
    /// would stay ready and spin the loop), while the sessions go on.
    fn pause_accepting(&mut self) {
        if self.accept_paused.is_some() {
            return;
        }
        for l in &self.listeners {
            let _ = self.poller.deregister(l.sock.as_raw_fd());
        }
        self.accept_paused = Some(Instant::now() + crate::models::ACCEPT_PAUSE);
    }

    fn resume_accepting(&mut self) {
        if self.accept_paused.is_none_or(|t| t > Instant::now()) || self.stop_by.is_some() {
            return;
        }
        self.accept_paused = None;
        for (i, l) in self.listeners.iter().enumerate() {
            let _ =
                self.poller.register(l.sock.as_raw_fd(), token(i, LISTENER), Interest::READABLE);
        }
    }

    // ---- before the session: PROXY headers and admission ------------------------------------

    fn new_gate(&mut self, pending: Pending) -> usize {
        let i = self.free_gates.pop().unwrap_or_else(|| {
            self.gates.push(None);
            self.gates.len() - 1
        });
        self.gates[i] = Some(pending);
        i
    }

    fn open_gate(&mut self, stream: TcpStream, balancer: SocketAddr, implicit: bool) {
        if self.gates.len() - self.free_gates.len() >= crate::models::MAX_GATES {
            return tracing::warn!(%balancer, "too many PROXY headers pending; closed");
        }
        let deadline = Instant::now() + self.ctx.proxy_timeout;
        let gate = match Gate::new(stream, balancer, deadline) {
            Ok(gate) => gate,
            Err(e) => return tracing::warn!(%balancer, "cannot read a PROXY header: {e}"),
        };
        let fd = gate.stream.as_raw_fd();
        self.next_serial += 1;
        let pending =
            Pending { state: PendingState::Header(gate), implicit, serial: self.next_serial };
        let i = self.new_gate(pending);
        if let Err(e) = self.poller.register(fd, token(GATE_BASE + i, LISTENER), Interest::READABLE)
        {
            tracing::warn!("cannot watch a connection: {e}");
            self.gates[i] = None;
            self.free_gates.push(i);
            return;
        }
        self.on_gate(i);
    }

    /// Reads more of a header; past its deadline (`now`), gives up.
    fn on_gate(&mut self, i: usize) {
        let Some(Some(Pending { state: PendingState::Header(gate), .. })) = self.gates.get_mut(i)
        else {
            return;
        };
        let result = match gate.step() {
            Ok(None) if gate.deadline <= Instant::now() => Err(proxy::Refused::TimedOut),
            Ok(None) => return,
            other => other,
        };
        let Some(Pending { state: PendingState::Header(gate), implicit, .. }) =
            self.gates[i].take()
        else {
            return;
        };
        self.free_gates.push(i);
        let _ = self.poller.deregister(gate.stream.as_raw_fd());
        match result {
            Ok(Some(proxy::Origin::Client(peer))) => self.admit(gate.into_stream(), peer, implicit),
            Ok(Some(proxy::Origin::Balancer(b))) => {
                let exempt = Ok(self.limits.exempt(b.ip()));
                self.admitted(gate.into_stream(), b, implicit, exempt)
            }
            Ok(None) => {}
            Err(why) => proxy::log_refused(gate.balancer, &why),
        }
    }

    /// Connections not yet sessions, if any.
    fn has_gates(&self) -> bool {
        self.gates.len() > self.free_gates.len()
    }

    fn next_gate_deadline(&self) -> Option<Instant> {
        if !self.has_gates() {
            return None;
        }
        self.gates
            .iter()
            .filter_map(|g| match g {
                Some(Pending { state: PendingState::Header(gate), .. }) => Some(gate.deadline),
                _ => None,
            })
            .min()
    }

    fn expire_gates(&mut self, now: Instant) {
        for i in 0..self.gates.len() {
            if matches!(&self.gates[i], Some(Pending { state: PendingState::Header(g), .. }) if g.deadline <= now)
            {
                self.on_gate(i);
            }
        }
    }

    /// Counts the connection against the limits. With `--shared-state` that asks Redis, which
    /// a worker does (the loop never waits on the network); the result comes back through
    /// [`Self::admitted`].
    fn admit(&mut self, stream: TcpStream, peer: SocketAddr, implicit: bool) {
        if !self.limits.is_shared() {
            let verdict = self.limits.admit(peer.ip());
            return self.admitted(stream, peer, implicit, verdict);
        }
        self.next_serial += 1;
        let serial = self.next_serial;
        let state = PendingState::Admitting { stream, peer };
        let i = self.new_gate(Pending { state, implicit, serial });
        let limits = self.limits.clone();
        let work = Work::in_lane(Lane::Login, Cancel::default(), move || limits.admit(peer.ip()));
        self.workers.submit(Key { index: GATE_BASE + i, serial, transfer: 0 }, work);
    }

    fn on_admission(&mut self, i: usize, serial: u64, done: zocalo_proto::session::Done) {
        if !matches!(&self.gates.get(i), Some(Some(p)) if p.serial == serial) {
            return;
        }
        let Some(Pending { state: PendingState::Admitting { stream, peer }, implicit, .. }) =
            self.gates[i].take()
        else {
            return;
        };
        self.free_gates.push(i);
        let verdict =
            done.take::<Result<Permit, Refusal>>().unwrap_or(Err(Refusal::TooManyConnections));
        self.admitted(stream, peer, implicit, verdict);
    }

    fn admitted(
        &mut self,
        stream: TcpStream,
        peer: SocketAddr,
        implicit: bool,
        verdict: Result<Permit, Refusal>,
    ) {
        let permit = match verdict {
            Ok(p) => p,
            Err(refusal) => {
                crate::ops::observe::refused(refusal.cause(), Some(peer));
                return net::refuse(&stream, refusal.reply());
            }
        };
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
        let Ok(conn) = Connection::new(stream, peer, Some(permit), &self.ctx, implicit, false)
        else {
            return;
        };
        self.next_serial += 1;
        let index = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        let fd = conn.control.fd();
        if let Err(e) = self.poller.register(fd, token(index, CONTROL), Interest::READABLE) {
            tracing::warn!("cannot watch a connection: {e}");
            self.free.push(index);
            return;
        }
        let serial = self.next_serial;
        let slot = Slot { conn, serial, control_interest: Interest::READABLE, scheduled: None };
        self.conns[index] = Some(Box::new(slot));
        self.drive(index);
    }

    // ---- events --------------------------------------------------------------------------

    fn on_control(&mut self, index: usize, ev: &Event) {
        let Some(slot) = self.conns.get_mut(index).and_then(Option::as_mut) else {
            return;
        };
        if ev.readable || ev.hup || ev.error {
            slot.conn.on_control();
        }
        self.drive(index);
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
                self.on_admission(index - GATE_BASE, serial, finished.done);
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

    fn begin_stop(&mut self) {
        crate::ops::systemd::notify("STOPPING=1");
        let _ = self.poller.deregister(self.ctx.shutdown.fd());
        for l in self.listeners.drain(..) {
            let _ = self.poller.deregister(l.sock.as_raw_fd());
        }
        self.stop_by = Some(Instant::now() + self.ctx.grace);
        for pending in self.gates.drain(..).flatten() {
            if let PendingState::Header(gate) = pending.state {
                let _ = self.poller.deregister(gate.stream.as_raw_fd());
            }
        }
        self.free_gates.clear();
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
        slot.conn.pump(&mut LoopIo { poller: self.poller.as_mut(), index }, &self.ctx);
        if slot.conn.closed {
            self.remove(index);
            return;
        }
        while let Some((data, work)) = slot.conn.take_work() {
            let transfer = if data { slot.conn.transfers } else { 0 };
            self.workers.submit(Key { index, serial: slot.serial, transfer }, work);
        }
        let wanted = interest(slot.conn.interest());
        if wanted != slot.control_interest {
            let fd = slot.conn.control.fd();
            let _ = self.poller.reregister(fd, token(index, CONTROL), wanted);
            slot.control_interest = wanted;
        }
        self.schedule(index);
    }

    fn remove(&mut self, index: usize) {
        if let Some(mut slot) = self.conns[index].take() {
            let span = slot.conn.span.clone();
            let _in_span = span.enter();
            let _ = self.poller.deregister(slot.conn.control.fd());
            slot.conn.finish(&mut LoopIo { poller: self.poller.as_mut(), index });
            self.free.push(index);
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
        let gates = self.next_gate_deadline();
        let next = [next, self.stop_by, self.accept_paused, gates].into_iter().flatten().min()?;
        Some(next.saturating_duration_since(Instant::now()))
    }

    /// Fires the timers due now. A timer a connection sets again for a time already past waits
    /// for the next turn of the loop, so no connection can keep the loop from the others.
    fn fire_timers(&mut self) {
        let now = Instant::now();
        if self.has_gates() {
            self.expire_gates(now);
        }
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
