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
use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zocalo_poller::{new_poller, Backend, Event, Interest, Poller, Token};
use zocalo_proto::session::{Action, Outcome, Session, Work};

use crate::drivers::blocking::{finish_transfer, open_control, Control, Ctx, Published, XferStart};
use crate::drivers::data::{DataTask, Step};
use crate::drivers::proxy::{self, Gate};
use crate::drivers::workers::{Key, Workers};
use crate::models::Listener;
use crate::net::{self, FdReserve};
use crate::ops::limits::{Limits, Permit, Refusal};
use crate::ops::xferlog::Xferlog;
use crate::tls::{Stream, Tls};

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
    conns: Vec<Option<Box<Conn>>>,
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

/// One client's state in the loop.
struct Conn {
    control: Stream,
    /// This connection's TLS scope, once it speaks TLS.
    tls: Option<Tls>,
    /// AUTH TLS accepted: the handshake is under way.
    handshaking: bool,
    session: Session,
    local: SocketAddr,
    peer: SocketAddr,
    _permit: Permit,
    /// The passive listener, and when it closes if no transfer takes it (the data timeout).
    passive: Option<(TcpListener, Instant)>,
    task: Option<Box<DataTask>>,
    /// The data descriptor registered now, and whether for writing.
    data_reg: Option<(RawFd, bool)>,
    control_interest: Interest,
    data_activity: Instant,
    scheduled: Option<Instant>,
    closed: bool,
    published: Option<Published>,
    /// Every log line of this session is written in this span (its id and peer).
    span: tracing::Span,
    /// Bytes moved by the session's transfers, for its closing log line.
    bytes: u64,
    xferlog: Option<Arc<Xferlog>>,
    xfer: XferStart,
    data_sleep: Option<Instant>,
    created: Instant,
    /// A login or idle timeout fired: the connection closes now, its last reply written only
    /// if the socket takes it at once.
    expired: bool,
    /// Work the session asked for, to go to the workers once this turn is over.
    work: Option<Work>,
    /// Tells this connection apart from earlier ones in the same slot.
    serial: u64,
    /// The running transfer's file I/O, to go to the workers once this turn is over.
    data_work: Option<Work>,
    /// Transfers started so far: tells the running one's I/O results from an aborted one's.
    transfers: u64,
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

    fn next_gate_deadline(&self) -> Option<Instant> {
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
        let work = Work::new(move || limits.admit(peer.ip()));
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
        let Ok(mut conn) = Conn::new(stream, peer, permit, &self.ctx, implicit) else {
            return;
        };
        self.next_serial += 1;
        conn.serial = self.next_serial;
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
        self.conns[index] = Some(Box::new(conn));
        self.drive(index);
    }

    // ---- events --------------------------------------------------------------------------

    fn on_control(&mut self, index: usize, ev: &Event) {
        let Some(conn) = self.conns.get_mut(index).and_then(Option::as_mut) else {
            return;
        };
        if ev.readable || ev.hup || ev.error {
            conn.read_control();
        }
        self.drive(index);
    }

    fn on_data(&mut self, index: usize) {
        let Some(conn) = self.conns.get_mut(index).and_then(Option::as_mut) else {
            return;
        };
        conn.data_activity = Instant::now();
        conn.step_task(self.poller.as_mut(), index);
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
            let Some(conn) = self.conns.get_mut(index).and_then(Option::as_mut) else {
                continue;
            };
            if conn.serial != serial {
                continue;
            }
            if transfer == 0 {
                conn.session.handle_work_done(finished.done);
            } else if transfer == conn.transfers {
                let Some(task) = conn.task.as_mut() else {
                    continue;
                };
                task.io_done(finished.done);
                conn.data_activity = Instant::now();
                conn.step_task(self.poller.as_mut(), index);
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
        for index in 0..self.conns.len() {
            self.drive(index);
        }
    }

    /// Writes replies, carries out actions, updates registrations and the timer of one slot.
    fn drive(&mut self, index: usize) {
        let stopping = self.stop_by.is_some();
        let Some(conn) = self.conns.get_mut(index).and_then(Option::as_mut) else {
            return;
        };
        let span = conn.span.clone();
        let _in_span = span.enter();
        conn.pump(self.poller.as_mut(), index, &self.ctx, stopping);
        if conn.expired {
            if !conn.handshaking {
                conn.flush();
            }
            conn.closed = true;
        }
        if !conn.closed && conn.session.input_room() > 0 && conn.control.has_buffered() {
            conn.read_control();
            conn.pump(self.poller.as_mut(), index, &self.ctx, stopping);
        }
        if conn.closed {
            self.remove(index);
            return;
        }
        if let Some(work) = conn.work.take() {
            self.workers.submit(Key { index, serial: conn.serial, transfer: 0 }, work);
        }
        if let Some(work) = conn.data_work.take() {
            let key = Key { index, serial: conn.serial, transfer: conn.transfers };
            self.workers.submit(key, work);
        }
        crate::ops::observe::events(&mut conn.session);
        if let Some(p) = &mut conn.published {
            p.update(&conn.session);
        }
        let interest = conn.wanted_interest();
        if interest != conn.control_interest {
            let fd = conn.control.fd();
            let _ = self.poller.reregister(fd, token(index, CONTROL), interest);
            conn.control_interest = interest;
        }
        self.schedule(index);
    }

    fn remove(&mut self, index: usize) {
        if let Some(mut conn) = self.conns[index].take() {
            let span = conn.span.clone();
            let _in_span = span.enter();
            crate::ops::observe::events(&mut conn.session);
            crate::ops::observe::closed(conn.created, conn.bytes);
            conn.published.take();
            conn.drop_task(self.poller.as_mut());
            let _ = self.poller.deregister(conn.control.fd());
            conn.control.close();
            self.free.push(index);
        }
    }

    // ---- timers --------------------------------------------------------------------------

    fn schedule(&mut self, index: usize) {
        let Some(conn) = self.conns[index].as_mut() else {
            return;
        };
        let Some(deadline) = conn.deadline(&self.ctx, self.stop_by) else {
            return;
        };
        if conn.scheduled.is_none_or(|s| deadline < s) {
            conn.scheduled = Some(deadline);
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
        if self.gates.len() > self.free_gates.len() {
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
            let Some(conn) = self.conns.get_mut(index).and_then(Option::as_mut) else {
                continue;
            };
            if conn.scheduled != Some(at) {
                continue;
            }
            conn.scheduled = None;
            conn.fire(now, &self.ctx, self.stop_by, self.poller.as_mut(), index);
            self.drive(index);
        }
    }
}

impl Conn {
    fn new(
        sock: TcpStream,
        peer: SocketAddr,
        permit: Permit,
        ctx: &Ctx,
        implicit: bool,
    ) -> io::Result<Self> {
        let Control { stream: control, session, tls: scope, local } =
            open_control(sock, peer, ctx, implicit)?;
        let now = Instant::now();
        let (id, span) = crate::ops::observe::opened(peer);
        let published = ctx.registry.as_ref().map(|r| Published::new(r, control.fd(), peer, id));
        Ok(Conn {
            span,
            bytes: 0,
            tls: scope,
            published,
            xferlog: ctx.xferlog.clone(),
            xfer: XferStart { at: now, ascii: false },
            data_sleep: None,
            created: now,
            expired: false,
            work: None,
            serial: 0,
            data_work: None,
            transfers: 0,
            control,
            handshaking: false,
            session,
            local,
            peer,
            _permit: permit,
            passive: None,
            task: None,
            data_reg: None,
            control_interest: Interest::READABLE,
            data_activity: now,
            scheduled: None,
            closed: false,
        })
    }

    fn read_control(&mut self) {
        if self.handshaking {
            return;
        }
        let mut buf = [0u8; 4096];
        loop {
            let room = self.session.input_room().min(buf.len());
            if room == 0 {
                return;
            }
            match self.control.read(&mut buf[..room]) {
                Ok(0) if self.published.as_ref().is_some_and(Published::kicked) => {
                    return self.session.handle_admin_close();
                }
                Ok(0) => return self.closed = true,
                Ok(n) => {
                    self.session.handle_input(&buf[..n]);
                    if n < room {
                        return;
                    }
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => return self.closed = true,
            }
        }
    }

    /// Flushes output and runs actions until the session has nothing more to do now.
    fn pump(&mut self, poller: &mut dyn Poller, index: usize, ctx: &Ctx, stopping: bool) {
        if self.handshaking && !self.advance_handshake() {
            return;
        }
        loop {
            if !self.flush() {
                return;
            }
            match self.session.poll_action() {
                Some(action) => self.act(action, poller, index, ctx),
                None => break,
            }
        }
        if stopping && self.session.is_idle() && !self.session.is_closed() {
            self.session.handle_shutdown();
            self.pump(poller, index, ctx, false);
        }
    }

    /// Writes what the socket takes; false while output is still pending (or on error).
    fn flush(&mut self) -> bool {
        loop {
            let result = match self.session.pending_output() {
                [] => self.control.flush_tls(),
                out => self.control.write(out).map(|n| self.session.advance_output(n)),
            };
            match result {
                Ok(()) if self.session.pending_output().is_empty() => return true,
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
                Err(_) => {
                    self.closed = true;
                    return false;
                }
            }
        }
    }

    /// AUTH TLS was accepted and its 234 written: wrap the control connection. The descriptor
    /// changes, so it is registered anew.
    fn start_tls(&mut self, poller: &mut dyn Poller, index: usize, ctx: &Ctx) {
        let Some(tls) = &ctx.tls else {
            return self.session.handle_shutdown();
        };
        let _ = poller.deregister(self.control.fd());
        let scope = tls.for_session();
        let upgraded = self.control.upgrade_in_place(&scope);
        self.tls = Some(scope);
        let registered =
            poller.register(self.control.fd(), token(index, CONTROL), Interest::READABLE);
        if upgraded.is_err() || registered.is_err() {
            self.closed = true;
            return;
        }
        self.control_interest = Interest::READABLE;
        self.handshaking = true;
        self.advance_handshake();
    }

    /// Drives the control connection's handshake; true once it is complete.
    fn advance_handshake(&mut self) -> bool {
        let Stream::Tls(t) = &mut self.control else {
            return true;
        };
        match t.handshake() {
            Ok(true) if !t.is_handshaking() => {
                self.handshaking = false;
                self.session.handle_tls_established();
                true
            }
            Ok(_) => false,
            Err(e) if e.kind() == ErrorKind::WouldBlock => false,
            Err(_) => {
                self.closed = true;
                false
            }
        }
    }

    fn act(&mut self, action: Action, poller: &mut dyn Poller, index: usize, ctx: &Ctx) {
        match action {
            Action::OpenPassive => {
                let opened = net::open_passive(self.local.ip(), ctx.passive_ports.as_ref());
                let result = match &opened {
                    Ok(l) => l.local_addr(),
                    Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                };
                let expires = Instant::now() + ctx.data_timeout;
                self.passive = opened.ok().map(|l| (l, expires));
                self.session.handle_passive_opened(result);
            }
            Action::ClosePassive => self.passive = None,
            Action::Transfer(t) => {
                self.data_activity = Instant::now();
                let passive = self.passive.take().map(|(l, _)| l);
                self.xfer = XferStart { at: Instant::now(), ascii: t.ascii };
                let (tls, rates) = (self.tls.as_ref(), ctx.rates);
                let (peer, proxy_from) = (self.peer.ip(), &ctx.proxy_from);
                match DataTask::new(t, passive, self.local, peer, tls, rates, proxy_from) {
                    Ok(mut task) => {
                        task.offload_file_io();
                        self.transfers += 1;
                        self.task = Some(Box::new(task));
                        self.step_task(poller, index);
                    }
                    Err(outcome) => self.done(outcome),
                }
            }
            Action::Abort => {
                if self.task.is_some() {
                    self.drop_task(poller);
                    self.done(Outcome::Aborted);
                }
            }
            Action::StartTls => self.start_tls(poller, index, ctx),
            Action::Work(work) => self.work = Some(work),
            Action::Close => self.closed = true,
        }
    }

    fn done(&mut self, outcome: Outcome) {
        // A transfer can end on a data or timer event, outside `drive`'s span.
        let _in_span = self.span.clone().entered();
        let log = self.xferlog.as_deref();
        self.bytes += finish_transfer(log, &mut self.session, self.peer.ip(), self.xfer, outcome);
    }

    fn step_task(&mut self, poller: &mut dyn Poller, index: usize) {
        let Some(task) = self.task.as_mut() else {
            return;
        };
        match task.step() {
            Step::Finished(outcome) => {
                self.drop_task(poller);
                self.done(outcome);
            }
            Step::Wait { fd, writable } => self.watch_data(poller, index, fd, writable),
            Step::Sleep(until) => {
                self.unwatch_data(poller);
                self.data_sleep = Some(until);
            }
            Step::Io(work) => {
                self.unwatch_data(poller);
                self.data_work = Some(work);
            }
        }
    }

    fn watch_data(&mut self, poller: &mut dyn Poller, index: usize, fd: RawFd, writable: bool) {
        if self.data_reg == Some((fd, writable)) {
            return;
        }
        let interest = if writable { Interest::WRITABLE } else { Interest::READABLE };
        let result = match self.data_reg {
            Some((old, _)) if old == fd => poller.reregister(fd, token(index, DATA), interest),
            Some((old, _)) => {
                let _ = poller.deregister(old);
                poller.register(fd, token(index, DATA), interest)
            }
            None => poller.register(fd, token(index, DATA), interest),
        };
        match result {
            Ok(()) => self.data_reg = Some((fd, writable)),
            Err(e) => {
                tracing::warn!("cannot watch a data connection: {e}");
                self.drop_task(poller);
                self.done(Outcome::NoConnection);
            }
        }
    }

    /// Stops watching the data descriptor (the transfer sleeps, waits for its file I/O, or ends).
    fn unwatch_data(&mut self, poller: &mut dyn Poller) {
        if let Some((fd, _)) = self.data_reg.take() {
            let _ = poller.deregister(fd);
        }
    }

    /// Deregisters the data descriptor, then drops the transfer (closing it).
    fn drop_task(&mut self, poller: &mut dyn Poller) {
        self.data_sleep = None;
        self.unwatch_data(poller);
        self.task = None;
    }

    fn wanted_interest(&self) -> Interest {
        if self.handshaking {
            return if self.control.wants_write() {
                Interest::WRITABLE
            } else {
                Interest::READABLE
            };
        }
        let read = self.session.input_room() > 0;
        let write = !self.session.pending_output().is_empty() || self.control.wants_write();
        match (read, write) {
            (_, true) if read => Interest::BOTH,
            (_, true) => Interest::WRITABLE,
            _ => Interest::READABLE,
        }
    }

    /// The connection's one deadline: the session's timers (login, idle, a failed login's
    /// delay, a TLS handshake's bound), and the data channel's.
    fn deadline(&self, ctx: &Ctx, stop_by: Option<Instant>) -> Option<Instant> {
        let data = self.task.as_ref().map(|_| self.data_activity + ctx.data_timeout);
        let stop = stop_by.filter(|_| self.task.is_some());
        let passive = self.passive.as_ref().map(|(_, expires)| *expires);
        [self.session.poll_timeout(), data, stop, self.data_sleep, passive]
            .into_iter()
            .flatten()
            .min()
    }

    fn fire(
        &mut self,
        now: Instant,
        ctx: &Ctx,
        stop_by: Option<Instant>,
        poller: &mut dyn Poller,
        index: usize,
    ) {
        if self.passive.as_ref().is_some_and(|(_, expires)| *expires <= now) {
            self.passive = None;
        }
        if self.data_sleep.is_some_and(|t| t <= now) {
            self.data_sleep = None;
            self.data_activity = now;
            self.step_task(poller, index);
        }
        if let Some(task) = &self.task {
            let stalled = self.data_activity + ctx.data_timeout <= now;
            let out_of_grace = stop_by.is_some_and(|t| t <= now);
            if stalled || out_of_grace {
                let outcome = match (out_of_grace, task.is_connecting()) {
                    (true, _) => Outcome::ShuttingDown,
                    (false, true) => Outcome::NoConnection,
                    (false, false) => Outcome::ConnectionLost,
                };
                self.drop_task(poller);
                self.done(outcome);
            }
        }
        if self.session.poll_timeout().is_some_and(|t| t <= now) {
            self.session.handle_timeout(now);
            if self.session.expired() {
                if self.handshaking {
                    tracing::debug!(peer = %self.peer, "TLS handshake timed out");
                }
                self.expired = true;
            }
        }
    }
}
