//! The per-connection driver shared by the blocking models (iterative, process, thread, pool).
//!
//! One thread serves one client with a poll(2) over at most three descriptors: the control
//! connection, the data connection of a running transfer, and the server's stop signal. So both
//! of FTP's channels stay live (ABOR, STAT and NOOP are answered mid-transfer) without a second
//! thread per transfer.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::ops::RangeInclusive;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use zocalo_proto::session::{Action, Config, Outcome, Session};

use crate::drivers::data::{DataTask, Rates, Step};
use crate::net;
use crate::ops::registry::{Entry, Registry};
use crate::ops::xferlog::{Record, Xferlog};
use crate::shutdown::Shutdown;
use crate::tls::{Stream, Tls};

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
    pub proxy_from: Vec<crate::drivers::proxy::Cidr>,
    pub proxy_timeout: Duration,
    /// `--shared-state`.
    pub shared: Option<Arc<crate::ops::shared::Shared>>,
}

/// A new client's control connection, ready for its driver.
pub struct Control {
    pub stream: Stream,
    /// The session, with its 220 greeting queued.
    pub session: Session,
    /// The connection's TLS scope, when it is in TLS from the first byte (implicit FTPS).
    pub tls: Option<Tls>,
    pub local: SocketAddr,
}

/// Sets up an accepted connection the same way for every model: non-blocking, TCP_NODELAY
/// (replies are small and latency-bound), and TLS from the first byte on an implicit listener.
pub fn open_control(
    sock: TcpStream,
    peer: SocketAddr,
    ctx: &Ctx,
    implicit: bool,
) -> io::Result<Control> {
    sock.set_nonblocking(true)?;
    let _ = sock.set_nodelay(true);
    let local = sock.local_addr()?;
    let tls = ctx.tls.as_ref().filter(|_| implicit).map(Tls::for_session);
    let (stream, session) = match &tls {
        Some(scope) => (
            Stream::Plain(sock).upgrade(scope)?,
            Session::new_implicit_tls(ctx.config.clone(), peer, local),
        ),
        None => (Stream::Plain(sock), Session::new(ctx.config.clone(), peer, local)),
    };
    Ok(Control { stream, session, tls, local })
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
    session: &mut Session,
    peer: IpAddr,
    start: XferStart,
    outcome: Outcome,
) -> u64 {
    let mut moved = 0;
    if let Some((verb, path, bytes)) = session.transfer_status() {
        let complete = matches!(outcome, Outcome::Done);
        let user = session.user().unwrap_or("");
        let took = start.at.elapsed();
        moved = bytes;
        crate::ops::metrics::transfer(verb, complete, bytes, took);
        let ms = took.as_millis() as u64;
        match verb {
            "RETR" | "STOR" | "APPE" | "STOU" => {
                tracing::info!(verb, path, bytes, complete, user, %peer, ms, "transfer")
            }
            _ => tracing::debug!(verb, path, bytes, complete, user, ms, "listing"),
        }
        if let Some(log) = log {
            let anonymous = session.is_anonymous();
            let ascii = start.ascii;
            log.record(&Record { verb, path, bytes, took, peer, user, anonymous, ascii, complete });
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
}

impl Published {
    pub fn new(registry: &Arc<Registry>, fd: RawFd, peer: SocketAddr, id: u64) -> Self {
        let peer = peer.to_string();
        Published { entry: registry.enter(fd, &peer, id), peer, shown: (None, None) }
    }

    /// Publishes what changed since the last call.
    pub fn update(&mut self, session: &Session) {
        let status = session.transfer_status();
        let user = session.user();
        let transfer = status.map(|(verb, path, _)| (verb, path.to_string()));
        if user != self.shown.0.as_deref() || transfer != self.shown.1 {
            self.shown = (user.map(str::to_string), transfer);
            let text = self.shown.1.as_ref().map(|(v, p)| format!("{v} {p}")).unwrap_or_default();
            let bytes = status.map_or(0, |s| s.2);
            self.entry.publish(&self.peer, user.unwrap_or(""), &text, bytes);
        } else if let Some((_, _, bytes)) = status {
            self.entry.progress(bytes);
        }
    }

    pub fn kicked(&self) -> bool {
        self.entry.kicked()
    }
}

/// Serves one client until it leaves; never panics on what the client sends. `peer` is the
/// client's address (a balancer's PROXY header may have given it). With `implicit`,
/// the connection speaks TLS from its first byte (implicit FTPS).
pub fn serve(stream: TcpStream, peer: SocketAddr, ctx: &Ctx, implicit: bool) {
    let (id, span) = crate::ops::observe::opened(peer);
    let _in_span = span.enter();
    let since = Instant::now();
    let Ok(mut conn) = Conn::new(stream, peer, ctx, implicit, id) else {
        return crate::ops::observe::closed(since, 0);
    };
    loop {
        crate::ops::observe::events(&mut conn.session);
        if let Some(p) = &mut conn.published {
            p.update(&conn.session);
        }
        if !conn.turn() {
            break;
        }
    }
    crate::ops::observe::events(&mut conn.session);
    conn.published.take();
    conn.control.close();
    crate::ops::observe::closed(since, conn.bytes);
}

struct Conn<'a> {
    ctx: &'a Ctx,
    control: Stream,
    peer: SocketAddr,
    local: SocketAddr,
    session: Session,
    /// The passive listener, and when it closes if no transfer takes it (the data timeout).
    passive: Option<(TcpListener, Instant)>,
    task: Option<DataTask>,
    wait: Option<Step>,
    data_activity: Instant,
    stop_by: Option<Instant>,
    closed: bool,
    published: Option<Published>,
    /// This connection's TLS scope, once it speaks TLS.
    tls: Option<Tls>,
    xfer: XferStart,
    data_sleep: Option<Instant>,
    /// A login or idle timeout fired: the connection closes now, its last reply written only
    /// if the socket takes it at once.
    expired: bool,
    /// Bytes moved by the session's transfers, for its closing log line.
    bytes: u64,
}

impl<'a> Conn<'a> {
    fn new(
        sock: TcpStream,
        peer: SocketAddr,
        ctx: &'a Ctx,
        implicit: bool,
        id: u64,
    ) -> io::Result<Self> {
        let Control { stream: control, session, tls: scope, local } =
            open_control(sock, peer, ctx, implicit)?;
        let now = Instant::now();
        let fd = control.fd();
        Ok(Conn {
            ctx,
            tls: scope,
            control,
            peer,
            local,
            session,
            passive: None,
            task: None,
            wait: None,
            data_activity: now,
            stop_by: None,
            closed: false,
            published: ctx.registry.as_ref().map(|r| Published::new(r, fd, peer, id)),
            xfer: XferStart { at: now, ascii: false },
            data_sleep: None,
            expired: false,
            bytes: 0,
        })
    }

    /// One round: flush replies, carry out actions, wait for the next event. False when done.
    fn turn(&mut self) -> bool {
        if !self.flush_and_act() {
            return false;
        }
        self.wait_for_events();
        self.flush_and_act()
    }

    fn flush_and_act(&mut self) -> bool {
        if self.expired {
            self.abort_task();
            let _ = self.flush_now();
            return false;
        }
        loop {
            if self.flush().is_err() {
                self.abort_task();
                return false;
            }
            let Some(action) = self.session.poll_action() else {
                break;
            };
            self.act(action);
        }
        if self.stop_by.is_some() && self.session.is_idle() {
            self.session.handle_shutdown();
            let _ = self.flush();
            return false;
        }
        !self.closed
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::OpenPassive => {
                let opened = net::open_passive(self.local.ip(), self.ctx.passive_ports.as_ref());
                let addr = opened.as_ref().map_err(|e| io::Error::new(e.kind(), e.to_string()));
                let result = addr.and_then(|l| l.local_addr());
                let expires = Instant::now() + self.ctx.data_timeout;
                self.passive = opened.ok().map(|l| (l, expires));
                self.session.handle_passive_opened(result);
            }
            Action::ClosePassive => self.passive = None,
            Action::Transfer(t) => {
                self.data_activity = Instant::now();
                let (passive, tls) = (self.passive.take().map(|(l, _)| l), self.tls.as_ref());
                self.xfer = XferStart { at: Instant::now(), ascii: t.ascii };
                let (peer, proxy_from) = (self.peer.ip(), &self.ctx.proxy_from);
                match DataTask::new(t, passive, self.local, peer, tls, self.ctx.rates, proxy_from) {
                    Ok(task) => {
                        self.task = Some(task);
                        self.step_task();
                    }
                    Err(outcome) => self.done(outcome),
                }
            }
            Action::Abort => {
                if self.task.take().is_some() {
                    self.wait = None;
                    self.done(Outcome::Aborted);
                }
            }
            Action::StartTls => self.start_tls(),
            Action::Work(work) => self.session.handle_work_done(work.run()),
            Action::Close => self.closed = true,
        }
    }

    fn done(&mut self, outcome: Outcome) {
        let log = self.ctx.xferlog.as_deref();
        self.bytes += finish_transfer(log, &mut self.session, self.peer.ip(), self.xfer, outcome);
    }

    fn step_task(&mut self) {
        let Some(task) = self.task.as_mut() else {
            return;
        };
        let mut step = task.step();
        // This driver's thread serves one client: file I/O runs right here.
        while let Step::Io(work) = step {
            task.io_done(work.run());
            step = task.step();
        }
        match step {
            Step::Finished(outcome) => {
                self.task = None;
                self.wait = None;
                self.done(outcome);
            }
            Step::Sleep(until) => {
                self.wait = None;
                self.data_sleep = Some(until);
            }
            wait => self.wait = Some(wait),
        }
    }

    fn abort_task(&mut self) {
        self.data_sleep = None;
        self.task = None;
        self.wait = None;
    }

    /// Writes all pending output, waiting for the socket as long as the idle timeout allows.
    fn flush(&mut self) -> io::Result<()> {
        loop {
            match self.flush_now() {
                Err(e) if e.kind() == ErrorKind::WouldBlock => self.wait_writable()?,
                other => return other,
            }
        }
    }

    /// Writes what the socket takes now; WouldBlock while output is still pending.
    fn flush_now(&mut self) -> io::Result<()> {
        loop {
            let result = match self.session.pending_output() {
                [] => self.control.flush_tls(),
                out => self.control.write(out).map(|n| self.session.advance_output(n)),
            };
            match result {
                Ok(()) if self.session.pending_output().is_empty() => return Ok(()),
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn wait_writable(&self) -> io::Result<()> {
        let events = if self.control.is_handshaking() {
            libc::POLLIN | libc::POLLOUT
        } else {
            libc::POLLOUT
        };
        match poll_one(self.control.fd(), events, self.ctx.config.idle_timeout)? {
            true => Ok(()),
            false => Err(ErrorKind::TimedOut.into()),
        }
    }

    /// AUTH TLS was accepted and its 234 written: wrap the control connection and finish the
    /// handshake before reading another command.
    fn start_tls(&mut self) {
        let (Some(tls), Stream::Plain(_)) = (&self.ctx.tls, &self.control) else {
            return self.session.handle_shutdown();
        };
        let scope = tls.for_session();
        let upgraded = self.control.upgrade_in_place(&scope);
        self.tls = Some(scope);
        if upgraded.is_err() {
            self.closed = true;
            return;
        }
        // The session's login or idle timeout bounds the handshake.
        let idle = Instant::now() + self.ctx.config.idle_timeout;
        let deadline = self.session.poll_timeout().unwrap_or(idle);
        loop {
            let Stream::Tls(t) = &mut self.control else { return };
            match t.handshake() {
                Ok(true) if !t.is_handshaking() => break,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => {
                    self.closed = true;
                    return;
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let events = if t.wants_write() { libc::POLLOUT } else { libc::POLLIN };
            if left.is_zero() || !poll_one(t.fd(), events, left).unwrap_or(false) {
                self.closed = true;
                return;
            }
        }
        self.session.handle_tls_established();
    }

    fn wait_for_events(&mut self) {
        let mut fds = [pollfd(-1, 0); 3];
        let reading = self.session.input_room() > 0;
        if reading && self.control.has_buffered() {
            self.read_control();
            return;
        }
        let control_events = if reading { libc::POLLIN } else { 0 };
        fds[0] = pollfd(self.control.fd(), control_events);
        if let Some(Step::Wait { fd, writable }) = self.wait {
            fds[1] = pollfd(fd, if writable { libc::POLLOUT } else { libc::POLLIN });
        }
        if self.stop_by.is_none() {
            fds[2] = pollfd(self.ctx.shutdown.fd(), libc::POLLIN);
        }
        let deadline = self.deadline();
        let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        // SAFETY: `fds` is a valid array of three pollfd; negative fds are ignored by poll(2).
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 3, timeout_ms(timeout)) };
        if n < 0 {
            return;
        }
        if fds[2].revents != 0 {
            self.stop_by = Some(Instant::now() + self.ctx.grace);
        }
        if fds[1].revents != 0 {
            self.data_activity = Instant::now();
            self.step_task();
        }
        if fds[0].revents != 0 {
            self.read_control();
        }
        self.fire_timers();
    }

    fn read_control(&mut self) {
        let mut buf = [0u8; 4096];
        let room = self.session.input_room().min(buf.len());
        match self.control.read(&mut buf[..room]) {
            Ok(0) if self.published.as_ref().is_some_and(Published::kicked) => {
                self.abort_task();
                self.session.handle_admin_close();
            }
            Ok(0) => {
                self.abort_task();
                self.closed = true;
            }
            Ok(n) => self.session.handle_input(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
            Err(_) => {
                self.abort_task();
                self.closed = true;
            }
        }
    }

    /// The connection's one deadline: the session's timers, and the data channel's.
    fn deadline(&self) -> Option<Instant> {
        let data = self.task.as_ref().map(|_| self.data_activity + self.ctx.data_timeout);
        let passive = self.passive.as_ref().map(|(_, expires)| *expires);
        [self.session.poll_timeout(), data, self.stop_by, self.data_sleep, passive]
            .into_iter()
            .flatten()
            .min()
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        if self.passive.as_ref().is_some_and(|(_, expires)| *expires <= now) {
            self.passive = None;
        }
        if self.data_sleep.is_some_and(|t| t <= now) {
            self.data_sleep = None;
            self.data_activity = now;
            self.step_task();
        }
        if let Some(task) = &self.task {
            if self.data_activity + self.ctx.data_timeout <= now {
                let outcome = if task.is_connecting() {
                    Outcome::NoConnection
                } else {
                    Outcome::ConnectionLost
                };
                self.abort_task();
                self.done(outcome);
            }
        }
        if self.stop_by.is_some_and(|t| t <= now) && self.task.is_some() {
            self.abort_task();
            self.done(Outcome::ShuttingDown);
        }
        if self.session.poll_timeout().is_some_and(|t| t <= now) {
            self.session.handle_timeout(now);
            self.expired |= self.session.expired();
        }
    }
}

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd { fd, events, revents: 0 }
}

fn timeout_ms(timeout: Option<Duration>) -> libc::c_int {
    match timeout {
        Some(d) => {
            d.as_millis().min(i32::MAX as u128) as libc::c_int
                + i32::from(d.subsec_nanos() % 1_000_000 != 0)
        }
        None => -1,
    }
}

/// Waits for one event on one descriptor; false on timeout.
pub fn poll_one(fd: RawFd, events: libc::c_short, timeout: Duration) -> io::Result<bool> {
    let mut pfd = pollfd(fd, events);
    loop {
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout_ms(Some(timeout))) };
        if n >= 0 {
            return Ok(n == 1);
        }
        let err = io::Error::last_os_error();
        if err.kind() != ErrorKind::Interrupted {
            return Err(err);
        }
    }
}
