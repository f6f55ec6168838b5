//! One connection's driver, written once for every model: it carries out the session's
//! actions, flushes its replies, reads the control channel, starts TLS, steps the data task and
//! fires the timers. The blocking driver ([`super::blocking`]) and the event loop
//! ([`super::event_loop`]) differ only in how they wait for what [`Connection`] asks:
//!
//! - readiness of the control socket ([`Connection::interest`]), of the data socket
//!   ([`Connection::data_wait`]) and the time of [`Connection::deadline`];
//! - where the session's storage work and the transfer's file I/O run: inline (a blocking
//!   driver's thread serves one client) or on the event loop's workers
//!   ([`Connection::take_work`]).
//!
//! Every socket is non-blocking. A driver calls [`Connection::pump`] after each event; when
//! [`Connection::closed`] is set it calls [`Connection::finish`]. Registrations with a poller go
//! through [`Io`], which the blocking driver implements with nothing at all (its poll set is
//! built from the same answers each time it waits).

use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::ops::RangeInclusive;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use zocalo_proto::session::{Action, Cancel, Config, Outcome, Session, Work};

use crate::drivers::data::{DataTask, Rates, Step};
use crate::ops::hooks::Hooks;
use crate::ops::observe::Emitter;
use crate::ops::xferlog::{Record, Xferlog};
use crate::state::limits::Permit;
use crate::state::registry::{Entry, Registry};
use crate::sys::net;
use crate::sys::shutdown::Shutdown;
use crate::sys::tls::{Stream, Tls};

/// Everything a connection needs from the server.
pub struct Ctx {
    pub config: Arc<Config>,
    pub passive_ports: Option<RangeInclusive<u16>>,
    pub data_timeout: Duration,
    /// How long running transfers may go on after a stop is asked for.
    pub grace: Duration,
    pub shutdown: Shutdown,
    /// FTPS: AUTH TLS, PROT P and implicit-TLS listeners.
    pub tls: Option<Tls>,
    /// The table `zocalo ctl` reads, when the admin socket is on.
    pub registry: Option<Arc<Registry>>,
    /// `--xferlog`.
    pub xferlog: Option<Arc<Xferlog>>,
    /// `--max-rate-down`, `--max-rate-up`.
    pub rates: Rates,
    /// Worker threads per event loop (more for network storage).
    pub work_threads: usize,
    /// `--proxy-protocol-from`: balancers whose control and data connections start with a
    /// PROXY header, and how long they have to send it.
    pub proxy_from: Vec<crate::sys::net::Cidr>,
    pub proxy_timeout: Duration,
    /// `--shared-state`.
    pub shared: Option<Arc<crate::state::shared::Shared>>,
    /// The `[[hook]]` tables.
    pub hooks: Option<Arc<Hooks>>,
}

/// What a connection waits for on a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wanted {
    Read,
    Write,
    Both,
}

/// A poller's registrations, as the connection changes them. The event loop registers with its
/// poller; the blocking driver needs none of it.
pub trait Io {
    /// The control descriptor changed (a TLS upgrade): watch `new` for reading instead.
    fn control_replaced(&mut self, old: RawFd, new: RawFd) -> io::Result<()>;
    /// Watch the data descriptor: `again` when it is already watched (with the other
    /// direction).
    fn watch_data(&mut self, fd: RawFd, writable: bool, again: bool) -> io::Result<()>;
    /// Stop watching it (before it closes, so a reused number never meets a stale entry).
    fn unwatch_data(&mut self, fd: RawFd);
}

/// The blocking driver's [`Io`]: it polls what the connection says each time it waits.
pub struct NoRegistrations;

impl Io for NoRegistrations {
    fn control_replaced(&mut self, _old: RawFd, _new: RawFd) -> io::Result<()> {
        Ok(())
    }

    fn watch_data(&mut self, _fd: RawFd, _writable: bool, _again: bool) -> io::Result<()> {
        Ok(())
    }

    fn unwatch_data(&mut self, _fd: RawFd) {}
}

/// One client's connection and session.
pub struct Connection {
    pub control: Stream,
    /// This connection's TLS scope, once it speaks TLS.
    tls: Option<Tls>,
    /// AUTH TLS accepted: the handshake is under way.
    handshaking: bool,
    pub session: Session,
    local: SocketAddr,
    peer: SocketAddr,
    _permit: Option<Permit>,
    /// The passive listener, and when it closes if no transfer takes it (the data timeout).
    passive: Option<(TcpListener, Instant)>,
    task: Option<Box<DataTask>>,
    /// The data descriptor waited on now, and whether for writing.
    data_reg: Option<(RawFd, bool)>,
    data_activity: Instant,
    /// The transfer's bandwidth limit says: not before then.
    data_sleep: Option<Instant>,
    /// A stop was asked for: running transfers may go on until then.
    stop_by: Option<Instant>,
    pub closed: bool,
    published: Option<Published>,
    /// Every log line of this session is written in this span (its id and peer).
    pub span: tracing::Span,
    /// Bytes moved by the session's transfers, for its closing log line.
    bytes: u64,
    xfer: XferStart,
    xferlog: Option<Arc<Xferlog>>,
    created: Instant,
    /// A balancer's health check: its opening and closing are logged at debug only.
    health_check: bool,
    /// A login or idle timeout fired: the connection closes now, its last reply written only
    /// if the socket takes it at once.
    expired: bool,
    /// Run the session's work and the transfer's file I/O on this thread (blocking drivers).
    inline: bool,
    /// Work the session asked for, for the driver to run ([`Self::take_work`]).
    work: Option<Work>,
    /// Cancels the session's work while it is out: the connection may close first.
    work_out: Option<Cancel>,
    /// The running transfer's file I/O, likewise.
    data_work: Option<Work>,
    /// Transfers started so far: tells the running one's I/O results from an aborted one's.
    pub transfers: u64,
    /// Where the session's events go besides the log (hooks).
    emitter: Option<Emitter>,
    /// The control channel's bytes go through the event loop's io_uring instead of read(2) and
    /// write(2) (a clear control connection in the `uring` model; TLS ones use readiness).
    ring: Option<RingSide>,
}

/// A control connection served by completions: the loop receives for it and sends what it
/// hands over, one send at a time.
#[derive(Debug, Default)]
struct RingSide {
    /// A send is in flight: the session's pending output is not written until it completes.
    sending: bool,
    /// A receive is in flight.
    receiving: bool,
    /// The receive must be cancelled before the reply to AUTH TLS goes out.
    cancel_recv: bool,
    /// Output copied for the loop to send ([`Connection::take_send`]).
    outbox: Option<Vec<u8>>,
}

impl Connection {
    /// Opens the session on an accepted connection (its 220 queued). `inline`: run storage
    /// work and file I/O on the calling thread. `permit`: its place in the limits, released
    /// when the connection is dropped (the blocking models hold theirs themselves).
    pub fn new(
        sock: TcpStream,
        peer: SocketAddr,
        permit: Option<Permit>,
        ctx: &Ctx,
        implicit: bool,
        inline: bool,
    ) -> io::Result<Self> {
        sock.set_nonblocking(true)?;
        // Replies are small and latency-bound.
        let _ = sock.set_nodelay(true);
        let local = sock.local_addr()?;
        let scope = ctx.tls.as_ref().filter(|_| implicit).map(Tls::for_session);
        let (control, mut session) = match &scope {
            Some(scope) => (
                Stream::Plain(sock).upgrade(scope)?,
                Session::new_implicit_tls(ctx.config.clone(), peer, local),
            ),
            None => (Stream::Plain(sock), Session::new(ctx.config.clone(), peer, local)),
        };
        let now = Instant::now();
        // A session whose client is the balancer itself came with a LOCAL header: a health check.
        let health_check = crate::drivers::proxy::trusted(&ctx.proxy_from, peer.ip());
        let (id, span) = crate::ops::observe::opened(peer, health_check);
        session.set_id(id);
        let emitter = ctx.hooks.clone().map(|hooks| Emitter { hooks, session: id, client: peer });
        let published = ctx.registry.as_ref().map(|r| Published::new(r, control.fd(), peer, id));
        Ok(Connection {
            control,
            tls: scope,
            handshaking: false,
            session,
            local,
            peer,
            _permit: permit,
            passive: None,
            task: None,
            data_reg: None,
            data_activity: now,
            data_sleep: None,
            stop_by: None,
            closed: false,
            published,
            span,
            bytes: 0,
            xfer: XferStart { at: now, ascii: false },
            xferlog: ctx.xferlog.clone(),
            created: now,
            health_check,
            expired: false,
            inline,
            work: None,
            work_out: None,
            data_work: None,
            transfers: 0,
            emitter,
            ring: None,
        })
    }

    // ---- the completion-based control channel (the `uring` model) -----------------------

    /// From now on the driver receives and sends this connection's control bytes
    /// ([`Self::wants_recv`], [`Self::received`], [`Self::take_send`], [`Self::sent`]); a clear
    /// connection only: TLS keeps to readiness.
    pub fn use_ring(&mut self) -> bool {
        if matches!(self.control, Stream::Plain(_)) {
            self.ring = Some(RingSide::default());
        }
        self.ring.is_some()
    }

    /// Whether the control channel is served by completions.
    pub fn on_ring(&self) -> bool {
        self.ring.is_some()
    }

    /// Starts a receive if the connection takes input now, and says how many bytes it may
    /// bring: none while one is in flight, while the session's input is full (it waits in the
    /// socket), or once AUTH TLS is accepted (the handshake must find the socket untouched).
    pub fn start_recv(&mut self) -> Option<usize> {
        let ring = self.ring.as_mut()?;
        let room = self.session.input_room();
        if ring.receiving || self.closed || room == 0 || self.session.tls_starting() {
            return None;
        }
        ring.receiving = true;
        Some(room)
    }

    /// Whether the receive in flight must be cancelled now (once).
    pub fn take_cancel_recv(&mut self) -> bool {
        self.ring.as_mut().is_some_and(|r| std::mem::take(&mut r.cancel_recv))
    }

    /// What a receive brought: bytes, end of file, or an error.
    pub fn received(&mut self, got: io::Result<&[u8]>) {
        if let Some(ring) = self.ring.as_mut() {
            ring.receiving = false;
        }
        match got {
            Ok([]) => self.control_eof(),
            Ok(bytes) => self.session.handle_input(bytes),
            // Cancelled for AUTH TLS: nothing came.
            Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => {}
            Err(_) => self.closed = true,
        }
    }

    /// Output to send, copied out of the session (which keeps it until [`Self::sent`]).
    pub fn take_send(&mut self) -> Option<Vec<u8>> {
        self.ring.as_mut()?.outbox.take()
    }

    /// A send finished: the session's output moves on by what it wrote.
    pub fn sent(&mut self, result: io::Result<usize>) {
        let Some(ring) = self.ring.as_mut() else { return };
        ring.sending = false;
        match result {
            Ok(n) if n > 0 => self.session.advance_output(n),
            _ => self.closed = true,
        }
    }

    // ---- what the driver calls -----------------------------------------------------------

    /// Writes replies and carries out actions until the session has nothing more to do now;
    /// reads what TLS already decrypted; publishes the session's events and state.
    pub fn pump(&mut self, io: &mut dyn Io, ctx: &Ctx) {
        self.act_all(io, ctx);
        if self.expired {
            if !self.handshaking {
                self.flush();
            }
            self.closed = true;
        }
        if !self.closed && self.session.input_room() > 0 && self.control.has_buffered() {
            self.read_control();
            self.act_all(io, ctx);
        }
        crate::ops::observe::events(&mut self.session, self.emitter.as_ref());
        if let Some(p) = &mut self.published {
            p.update(&self.session);
        }
    }

    /// The control socket is ready (or hung up).
    pub fn on_control(&mut self) {
        self.read_control();
    }

    /// The data socket is ready.
    pub fn on_data(&mut self, io: &mut dyn Io) {
        self.data_activity = Instant::now();
        self.step_task(io);
    }

    /// The result of the session's [`Work`] (from [`Self::take_work`]).
    pub fn work_done(&mut self, done: zocalo_proto::session::Done) {
        self.work_out = None;
        self.session.handle_work_done(done);
    }

    /// The result of the transfer's file I/O (from [`Self::take_work`]), for transfer number
    /// `transfer`; a result for an aborted transfer is dropped.
    pub fn data_work_done(
        &mut self,
        transfer: u64,
        done: zocalo_proto::session::Done,
        io: &mut dyn Io,
    ) {
        if transfer != self.transfers {
            return;
        }
        let Some(task) = self.task.as_mut() else {
            return;
        };
        task.io_done(done);
        self.data_activity = Instant::now();
        self.step_task(io);
    }

    /// Work to run elsewhere: the session's (`false`) or the transfer's file I/O (`true`).
    pub fn take_work(&mut self) -> Option<(bool, Work)> {
        if let Some(w) = self.work.take() {
            self.work_out = Some(w.canceller());
            return Some((false, w));
        }
        self.data_work.take().map(|w| (true, w))
    }

    /// The server is stopping: running transfers may go on until `by`, then everything closes.
    pub fn begin_stop(&mut self, by: Instant) {
        self.stop_by.get_or_insert(by);
    }

    /// Whether a stop was asked for.
    pub fn stopping(&self) -> bool {
        self.stop_by.is_some()
    }

    /// Whether the control connection's TLS handshake is under way (its next step may sign
    /// with the server's key: milliseconds of CPU with a large RSA key).
    pub fn handshaking(&self) -> bool {
        self.handshaking
    }

    /// What to wait for on the control socket.
    pub fn interest(&self) -> Wanted {
        if self.handshaking {
            return if self.control.wants_write() { Wanted::Write } else { Wanted::Read };
        }
        let read = self.session.input_room() > 0;
        let write = !self.session.pending_output().is_empty() || self.control.wants_write();
        match (read, write) {
            (true, true) => Wanted::Both,
            (false, true) => Wanted::Write,
            _ => Wanted::Read,
        }
    }

    /// What to wait for on the data socket: its descriptor, and whether for writing.
    pub fn data_wait(&self) -> Option<(RawFd, bool)> {
        self.data_reg
    }

    /// The connection's one deadline: the session's timers (login, idle, a failed login's
    /// delay, a TLS handshake's bound), and the data channel's.
    pub fn deadline(&self, ctx: &Ctx) -> Option<Instant> {
        let data = self.task.as_ref().map(|_| self.data_activity + ctx.data_timeout);
        let stop = self.stop_by.filter(|_| self.task.is_some());
        let passive = self.passive.as_ref().map(|(_, expires)| *expires);
        [self.session.poll_timeout(), data, stop, self.data_sleep, passive]
            .into_iter()
            .flatten()
            .min()
    }

    /// Fires what is due at `now`.
    pub fn fire(&mut self, now: Instant, io: &mut dyn Io, ctx: &Ctx) {
        if self.passive.as_ref().is_some_and(|(_, expires)| *expires <= now) {
            self.passive = None;
        }
        if self.data_sleep.is_some_and(|t| t <= now) {
            self.data_sleep = None;
            self.data_activity = now;
            self.step_task(io);
        }
        if let Some(task) = &self.task {
            let stalled = self.data_activity + ctx.data_timeout <= now;
            let out_of_grace = self.stop_by.is_some_and(|t| t <= now);
            if stalled && task.clear_but_hello() {
                let _in_span = self.span.clone().entered();
                tracing::debug!(
                    "the client sent a TLS ClientHello on a clear data connection: it wants \
                     PROT P (it must send PROT P before the transfer)"
                );
            }
            if stalled || out_of_grace {
                let outcome = match (out_of_grace, task.is_connecting()) {
                    (true, _) => Outcome::ShuttingDown,
                    (false, true) => Outcome::NoConnection,
                    (false, false) => Outcome::ConnectionLost,
                };
                self.drop_task(io);
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

    /// The connection is over: logs it, leaves the session table, closes both channels.
    pub fn finish(&mut self, io: &mut dyn Io) {
        crate::ops::observe::events(&mut self.session, self.emitter.as_ref());
        crate::ops::observe::closed(self.created, self.bytes, self.health_check);
        if let (Some(e), Some(user)) = (&self.emitter, self.session.user()) {
            e.session_end(user, self.created, self.bytes);
        }
        if let Some(work) = self.work_out.take() {
            work.cancel();
        }
        self.published.take();
        self.drop_task(io);
        self.control.close();
    }

    // ---- the work itself -----------------------------------------------------------------

    fn act_all(&mut self, io: &mut dyn Io, ctx: &Ctx) {
        if self.handshaking && !self.advance_handshake() {
            return;
        }
        loop {
            if !self.flush() {
                return;
            }
            match self.session.poll_action() {
                Some(action) => self.act(action, io, ctx),
                None => break,
            }
        }
        if self.stop_by.is_some() && self.session.is_idle() && !self.session.is_closed() {
            self.session.handle_shutdown();
            self.act_all(io, ctx);
        }
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
                Ok(0) => return self.control_eof(),
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

    /// The control channel reached end of file: the client closed it, or an administrator
    /// kicked the session (its socket was shut down for reading).
    fn control_eof(&mut self) {
        if self.published.as_ref().is_some_and(Published::kicked) {
            if let Some(task) = &self.task {
                task.reset_on_close();
            }
            return self.session.handle_admin_close();
        }
        self.closed = true;
    }

    /// Writes what the socket takes; false while output is still pending (or on error). On a
    /// ring, hands the output to the driver instead, and is false until its send completes.
    fn flush(&mut self) -> bool {
        if let Some(ring) = &mut self.ring {
            let out = self.session.pending_output();
            if out.is_empty() {
                return true;
            }
            if ring.sending {
                return false;
            }
            if ring.receiving && self.session.tls_starting() {
                // Not a byte of the ClientHello may go to a receive: the client sends it once
                // it has this reply, so the receive is cancelled before the reply goes.
                ring.cancel_recv = true;
                return false;
            }
            ring.outbox = Some(out.to_vec());
            ring.sending = true;
            return false;
        }
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

    /// AUTH TLS was accepted and its 234 written: wrap the control connection (its descriptor
    /// changes) and start the handshake.
    fn start_tls(&mut self, io: &mut dyn Io, ctx: &Ctx) {
        let Some(tls) = &ctx.tls else {
            return self.session.handle_shutdown();
        };
        let old = self.control.fd();
        // TLS is served by readiness; no receive or send is in flight now (see wants_recv).
        self.ring = None;
        let scope = tls.for_session();
        let upgraded = self.control.upgrade_in_place(&scope);
        self.tls = Some(scope);
        let watched = io.control_replaced(old, self.control.fd());
        if upgraded.is_err() || watched.is_err() {
            self.closed = true;
            return;
        }
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

    fn act(&mut self, action: Action, io: &mut dyn Io, ctx: &Ctx) {
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
                        if !self.inline {
                            task.offload_file_io();
                        }
                        self.transfers += 1;
                        self.task = Some(Box::new(task));
                        self.step_task(io);
                    }
                    Err(outcome) => self.done(outcome),
                }
            }
            Action::Abort => {
                if self.task.is_some() {
                    self.drop_task(io);
                    self.done(Outcome::Aborted);
                }
            }
            Action::StartTls => self.start_tls(io, ctx),
            Action::Work(work) if self.inline => self.session.handle_work_done(work.run()),
            Action::Work(work) => self.work = Some(work),
            Action::Close => self.closed = true,
        }
    }

    fn done(&mut self, outcome: Outcome) {
        // A transfer can end on a data or timer event, outside the driver's span.
        let _in_span = self.span.clone().entered();
        let (log, emitter) = (self.xferlog.as_deref(), self.emitter.as_ref());
        let session = &mut self.session;
        self.bytes += finish_transfer(log, emitter, session, self.peer.ip(), self.xfer, outcome);
    }

    fn step_task(&mut self, io: &mut dyn Io) {
        let Some(task) = self.task.as_mut() else {
            return;
        };
        // Only an offloading task (the event loop's) returns `Step::Io`; a blocking driver's
        // does its file I/O inside `step`, on the thread that serves its one client.
        match task.step() {
            Step::Finished(outcome) => {
                self.drop_task(io);
                self.done(outcome);
            }
            Step::Wait { fd, writable } => self.watch_data(io, fd, writable),
            Step::Sleep(until) => {
                self.unwatch_data(io);
                self.data_sleep = Some(until);
            }
            Step::Io(work) => {
                self.unwatch_data(io);
                self.data_work = Some(work);
            }
        }
    }

    fn watch_data(&mut self, io: &mut dyn Io, fd: RawFd, writable: bool) {
        if self.data_reg == Some((fd, writable)) {
            return;
        }
        if let Some((old, _)) = self.data_reg.filter(|(old, _)| *old != fd) {
            io.unwatch_data(old);
            self.data_reg = None;
        }
        match io.watch_data(fd, writable, self.data_reg.is_some()) {
            Ok(()) => self.data_reg = Some((fd, writable)),
            Err(e) => {
                tracing::warn!("cannot watch a data connection: {e}");
                self.drop_task(io);
                self.done(Outcome::NoConnection);
            }
        }
    }

    /// Stops watching the data descriptor (the transfer sleeps, waits for its file I/O, or ends).
    fn unwatch_data(&mut self, io: &mut dyn Io) {
        if let Some((fd, _)) = self.data_reg.take() {
            io.unwatch_data(fd);
        }
    }

    /// Stops watching the data descriptor, then drops the transfer (closing it).
    fn drop_task(&mut self, io: &mut dyn Io) {
        self.data_sleep = None;
        self.unwatch_data(io);
        self.task = None;
    }
}

/// When the running transfer started and whether it is TYPE A, for its log line.
#[derive(Debug, Clone, Copy)]
pub struct XferStart {
    pub at: Instant,
    pub ascii: bool,
}

/// Logs and counts a finished transfer (and appends it to the xferlog), then tells the
/// session. Returns the bytes it moved.
pub fn finish_transfer(
    log: Option<&Xferlog>,
    emitter: Option<&Emitter>,
    session: &mut Session,
    peer: IpAddr,
    start: XferStart,
    outcome: Outcome,
) -> u64 {
    let mut moved = 0;
    if let Some((kind, path, bytes)) = session.transfer_status() {
        let complete = matches!(outcome, Outcome::Done);
        let user = session.user().unwrap_or("");
        let took = start.at.elapsed();
        moved = bytes;
        crate::ops::metrics::transfer(kind, complete, bytes, took);
        let (ms, verb) = (took.as_millis() as u64, kind.verb());
        match kind.is_listing() {
            false => {
                tracing::info!(verb, path, bytes, complete, user, %peer, ms, "transfer");
                let result = if complete { "complete" } else { "failed" };
                let detail = format!("{verb} {path} {bytes} bytes {ms} ms {result}");
                crate::ops::recent::record("transfer", user, &peer.to_string(), &detail);
            }
            true => tracing::debug!(verb, path, bytes, complete, user, ms, "listing"),
        }
        if let Some(e) = emitter {
            e.transfer(kind, path, bytes, &outcome, user, took);
        }
        if let Some(log) = log {
            let anonymous = session.is_anonymous();
            let ascii = start.ascii;
            log.record(&Record { kind, path, bytes, took, peer, user, anonymous, ascii, complete });
        }
    }
    session.handle_transfer_done(outcome);
    moved
}

/// A session's published state, kept in step with the registry.
pub struct Published {
    entry: Entry,
    peer: String,
    shown: (Option<String>, Option<(&'static str, String)>),
    /// The verb and activity time last published.
    active: (&'static str, Option<std::time::Instant>),
}

impl Published {
    pub fn new(registry: &Arc<Registry>, fd: RawFd, peer: SocketAddr, id: u64) -> Self {
        let peer = peer.to_string();
        let entry = registry.enter(fd, &peer, id);
        Published { entry, peer, shown: (None, None), active: ("", None) }
    }

    /// Publishes what changed since the last call.
    pub fn update(&mut self, session: &Session) {
        let status = session.transfer_status();
        let user = session.user();
        let transfer = status.map(|(kind, path, _)| (kind.verb(), path.to_string()));
        if user != self.shown.0.as_deref() || transfer != self.shown.1 {
            self.shown = (user.map(str::to_string), transfer);
            let text = self.shown.1.as_ref().map(|(v, p)| format!("{v} {p}")).unwrap_or_default();
            let bytes = status.map_or(0, |s| s.2);
            self.entry.publish(&self.peer, user.unwrap_or(""), &text, bytes);
            let started = if status.is_some() { crate::state::registry::now_ms() } else { 0 };
            self.entry.transfer_started(session.transfer_size(), started);
        } else if let Some((_, _, bytes)) = status {
            self.entry.progress(bytes);
        }
        let (verb, at) = (session.last_command(), session.last_activity());
        if verb.as_ptr() != self.active.0.as_ptr() || Some(at) != self.active.1 {
            self.active = (verb, Some(at));
            let ago = at.elapsed().as_millis() as u64;
            self.entry.activity(verb, crate::state::registry::now_ms().saturating_sub(ago));
        }
    }

    pub fn kicked(&self) -> bool {
        self.entry.kicked()
    }
}
