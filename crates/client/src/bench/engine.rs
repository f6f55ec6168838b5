//! The load generator: many FTP sessions driven by one thread over one poller.
//!
//! Each [`Session`] is a small state machine that walks a script of [`Step`]s (log in, transfer,
//! sit idle, quit) on a non-blocking control connection and, for transfers, a non-blocking
//! passive data connection. The [`Engine`] owns the poller (epoll by default, any
//! `zocalo-poller` backend) and the sessions, and reports an [`Outcome`] per finished session.
//! One thread and no per-session buffers beyond a reply buffer keep the generator light, so that
//! on a small machine it measures the server and not itself.
//!
//! What it does not do: TLS, active mode, or keep time on its own: callers decide when to stop
//! with the deadlines they pass to [`Engine::turn`]'s callers.

use std::io::{self, Read, Write};
use std::mem;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use zocalo_poller::{new_poller, Backend, Event, Interest, Poller, Token};

use crate::reply::{Reply, ReplyBuffer};

/// Size of the shared buffer data connections are read into and written from.
const SCRATCH: usize = 256 * 1024;

/// One step of a session's script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// USER, PASS, TYPE I.
    Login,
    /// RETR the path, discarding the bytes.
    Retr(String),
    /// STOR this many bytes (zeros) to the path.
    Stor(String, u64),
    /// LIST the path, discarding the listing.
    List(String),
    /// MLSD the path, discarding the listing.
    Mlsd(String),
    /// Stay logged in until [`Engine::release_idle`].
    Idle,
    /// QUIT and wait for the server to answer or close.
    Quit,
}

/// Where to connect and as whom.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    pub user: String,
    pub pass: String,
}

/// How one session ended.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub id: usize,
    pub ok: bool,
    /// From the start of the connect to the end of the script (or the failure).
    pub latency: Duration,
    /// Data bytes moved.
    pub bytes: u64,
    pub error: Option<String>,
}

/// What a session waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Connecting,
    Greeting,
    User,
    Pass,
    Type,
    Passive,
    Transfer,
    Idle,
    Quit,
}

/// A passive data connection of a transfer in progress.
struct Data {
    tcp: TcpStream,
    /// An upload (STOR) rather than a download.
    upload: bool,
    /// Bytes still to send (uploads).
    to_send: u64,
    done: bool,
}

/// One FTP session and where it is in its script.
struct Session {
    id: usize,
    ctrl: TcpStream,
    data: Option<Data>,
    replies: ReplyBuffer,
    out: Vec<u8>,
    steps: Rc<[Step]>,
    pc: usize,
    phase: Phase,
    started: Instant,
    bytes: u64,
    /// The transfer's final reply arrived (and was 2yz).
    final_ok: bool,
    /// Counted in [`Engine::idle`].
    counted_idle: bool,
    /// A finished data connection, to deregister before it is closed.
    closing: Option<Data>,
}

/// What a session's handler decided.
enum Next {
    Continue,
    Finished,
    Failed(String),
}

/// Sessions, the poller that watches them, and the outcomes of those that ended.
pub struct Engine {
    poller: Box<dyn Poller>,
    target: Target,
    slots: Vec<Option<Session>>,
    free: Vec<usize>,
    events: Vec<Event>,
    scratch: Vec<u8>,
    outcomes: Vec<Outcome>,
    next_id: usize,
    active: usize,
    idle: usize,
}

impl Engine {
    pub fn new(target: Target, backend: Backend) -> io::Result<Engine> {
        Ok(Engine {
            poller: new_poller(backend)?,
            target,
            slots: Vec::new(),
            free: Vec::new(),
            events: Vec::with_capacity(1024),
            scratch: vec![0; SCRATCH],
            outcomes: Vec::new(),
            next_id: 0,
            active: 0,
            idle: 0,
        })
    }

    /// Sessions started and not yet finished.
    pub fn active(&self) -> usize {
        self.active
    }

    /// Sessions sitting in an [`Step::Idle`] step.
    pub fn idle(&self) -> usize {
        self.idle
    }

    /// Starts a session on `steps`; returns its id. A failed connect is reported as an outcome.
    pub fn start(&mut self, steps: Rc<[Step]>) -> usize {
        let id = self.next_id;
        self.next_id += 1;
        let started = Instant::now();
        let ctrl = match connect_nonblocking(self.target.addr) {
            Ok(tcp) => tcp,
            Err(e) => {
                self.outcomes.push(failure(id, started, format!("connect: {e}")));
                return id;
            }
        };
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        let token = Token(slot * 2);
        if let Err(e) = self.poller.register(ctrl.as_raw_fd(), token, Interest::WRITABLE) {
            self.free.push(slot);
            self.outcomes.push(failure(id, started, format!("register: {e}")));
            return id;
        }
        self.slots[slot] = Some(Session::new(id, ctrl, steps, started));
        self.active += 1;
        id
    }

    /// Lets every idle session go on with its script.
    pub fn release_idle(&mut self) {
        for slot in 0..self.slots.len() {
            let Some(session) = self.slots[slot].as_mut() else {
                continue;
            };
            if session.phase == Phase::Idle {
                self.idle -= 1;
                session.counted_idle = false;
                session.pc += 1;
                let next = session.advance(&self.target);
                self.settle(slot, next);
            }
        }
    }

    /// Waits at most `timeout` for readiness and handles what is ready.
    pub fn turn(&mut self, timeout: Duration) -> io::Result<()> {
        let mut events = mem::take(&mut self.events);
        self.poller.wait(&mut events, Some(timeout))?;
        for event in &events {
            let slot = event.token.0 / 2;
            let next = match self.slots.get_mut(slot).and_then(Option::as_mut) {
                Some(s) if event.token.0 % 2 == 0 => s.on_control(event, &self.target),
                Some(s) => s.on_data(&mut self.scratch, &self.target),
                None => continue,
            };
            self.settle(slot, next);
        }
        self.events = events;
        Ok(())
    }

    /// Ends every session still running as failed with `why`.
    pub fn abort_all(&mut self, why: &str) {
        for slot in 0..self.slots.len() {
            if self.slots[slot].is_some() {
                self.settle(slot, Next::Failed(why.to_owned()));
            }
        }
    }

    /// The outcomes of sessions that ended since the last call.
    pub fn take_outcomes(&mut self) -> Vec<Outcome> {
        mem::take(&mut self.outcomes)
    }

    /// Applies a handler's decision: updates interests, or retires the session.
    fn settle(&mut self, slot: usize, next: Next) {
        if self.slots[slot].is_none() {
            return;
        }
        let result = match next {
            Next::Continue => self.update_interest(slot).map_err(|e| e.to_string()),
            Next::Finished => Err(String::new()),
            Next::Failed(why) => Err(why),
        };
        if let Err(why) = result {
            self.retire(slot, why);
        }
    }

    /// Registers the data connection if new, and sets both interests from the session's needs.
    fn update_interest(&mut self, slot: usize) -> io::Result<()> {
        let session = self.slots[slot].as_mut().expect("settled slot holds a session");
        if let Some(old) = session.closing.take() {
            self.poller.deregister(old.tcp.as_raw_fd())?;
        }
        if session.phase == Phase::Idle && !session.counted_idle {
            session.counted_idle = true;
            self.idle += 1;
        }
        let ctrl_interest = if session.phase == Phase::Connecting || !session.out.is_empty() {
            Interest::BOTH
        } else {
            Interest::READABLE
        };
        let ctrl_fd = session.ctrl.as_raw_fd();
        let data = session.data.as_ref().map(|d| (d.tcp.as_raw_fd(), d.interest()));
        self.poller.reregister(ctrl_fd, Token(slot * 2), ctrl_interest)?;
        if let Some((fd, interest)) = data {
            let token = Token(slot * 2 + 1);
            match self.poller.reregister(fd, token, interest) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.poller.register(fd, token, interest)?
                }
                other => other?,
            }
        }
        Ok(())
    }

    /// Closes a finished session and records its outcome (`why` empty means success).
    fn retire(&mut self, slot: usize, why: String) {
        let Some(mut session) = self.slots[slot].take() else {
            return;
        };
        if session.counted_idle {
            self.idle -= 1;
        }
        for data in [session.data.take(), session.closing.take()].into_iter().flatten() {
            let _ = self.poller.deregister(data.tcp.as_raw_fd());
        }
        let _ = self.poller.deregister(session.ctrl.as_raw_fd());
        self.free.push(slot);
        self.active -= 1;
        self.outcomes.push(Outcome {
            id: session.id,
            ok: why.is_empty(),
            latency: session.started.elapsed(),
            bytes: session.bytes,
            error: (!why.is_empty()).then_some(why),
        });
    }
}

fn failure(id: usize, started: Instant, why: String) -> Outcome {
    Outcome { id, ok: false, latency: started.elapsed(), bytes: 0, error: Some(why) }
}

impl Data {
    fn interest(&self) -> Interest {
        if self.upload {
            Interest::WRITABLE
        } else {
            Interest::READABLE
        }
    }
}

impl Session {
    fn new(id: usize, ctrl: TcpStream, steps: Rc<[Step]>, started: Instant) -> Session {
        Session {
            id,
            ctrl,
            data: None,
            replies: ReplyBuffer::new(),
            out: Vec::new(),
            steps,
            pc: 0,
            phase: Phase::Connecting,
            started,
            bytes: 0,
            final_ok: false,
            counted_idle: false,
            closing: None,
        }
    }

    /// The control connection is ready: finish connecting, flush, or read replies.
    fn on_control(&mut self, event: &Event, target: &Target) -> Next {
        if self.phase == Phase::Connecting {
            if let Some(e) = self.ctrl.take_error().ok().flatten() {
                return Next::Failed(format!("connect: {e}"));
            }
            self.phase = Phase::Greeting;
        }
        if event.writable && !self.out.is_empty() {
            if let Err(e) = self.flush() {
                return Next::Failed(format!("control write: {e}"));
            }
        }
        if event.readable || event.hup || event.error {
            return self.read_control(target);
        }
        Next::Continue
    }

    fn read_control(&mut self, target: &Target) -> Next {
        let mut buf = [0u8; 4096];
        let mut closed = false;
        loop {
            match self.ctrl.read(&mut buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => self.replies.extend(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if self.phase == Phase::Quit => return finished_or(e),
                Err(e) => return Next::Failed(format!("control read: {e}")),
            }
        }
        // Replies that arrived before the close are handled first: a server that refuses a
        // session says why (421) and then closes, in one read.
        loop {
            match self.replies.next_reply() {
                Ok(Some(reply)) => match self.on_reply(reply, target) {
                    Next::Continue => {}
                    other => return other,
                },
                Ok(None) => break,
                Err(e) => return Next::Failed(e.to_string()),
            }
        }
        match (closed, self.phase) {
            (false, _) => Next::Continue,
            (true, Phase::Quit) => Next::Finished,
            (true, phase) => Next::Failed(format!("server closed during {phase:?}")),
        }
    }

    /// The protocol: what each reply means in each phase.
    fn on_reply(&mut self, reply: Reply, target: &Target) -> Next {
        let code = reply.code;
        match (self.phase, code) {
            (Phase::Greeting, 120) => Next::Continue,
            (Phase::Greeting, 220) => self.advance(target),
            (Phase::User, 230) => self.send("TYPE I", Phase::Type),
            (Phase::User, 331) => self.send(&format!("PASS {}", target.pass), Phase::Pass),
            (Phase::Pass, 230 | 202) => self.send("TYPE I", Phase::Type),
            (Phase::Type, 200) => self.step_done(target),
            (Phase::Passive, 227 | 229) => self.open_data(&reply, target),
            (Phase::Transfer, 100..=199) => Next::Continue,
            (Phase::Transfer, 200..=299) => {
                self.final_ok = true;
                self.maybe_transfer_done(target)
            }
            (Phase::Quit, _) => Next::Finished,
            (Phase::Idle, 421) => Next::Failed(format!("idle session closed: {reply}")),
            _ => Next::Failed(format!("{:?}: {reply}", self.phase)),
        }
    }

    /// Starts the current step of the script.
    fn advance(&mut self, target: &Target) -> Next {
        let Some(step) = self.steps.get(self.pc).cloned() else {
            return Next::Finished;
        };
        match step {
            Step::Login => self.send(&format!("USER {}", target.user), Phase::User),
            Step::Retr(_) | Step::Stor(..) | Step::List(_) | Step::Mlsd(_) => {
                let command = if target.addr.is_ipv6() { "EPSV" } else { "PASV" };
                self.send(command, Phase::Passive)
            }
            Step::Idle => {
                self.phase = Phase::Idle;
                Next::Continue
            }
            Step::Quit => self.send("QUIT", Phase::Quit),
        }
    }

    fn step_done(&mut self, target: &Target) -> Next {
        self.pc += 1;
        self.advance(target)
    }

    /// Connects the data connection to the announced port, then sends the transfer command.
    fn open_data(&mut self, reply: &Reply, target: &Target) -> Next {
        let text = reply.text();
        let addr = match reply.code {
            229 => zocalo_proto::command::epsv_reply_port(&text)
                .map(|port| SocketAddr::new(target.addr.ip(), port)),
            _ => zocalo_proto::command::pasv_reply_addr(&format!("{} {text}", reply.code)),
        };
        let Some(addr) = addr else {
            return Next::Failed(format!("bad passive reply: {reply}"));
        };
        let tcp = match connect_nonblocking(addr) {
            Ok(tcp) => tcp,
            Err(e) => return Next::Failed(format!("data connect: {e}")),
        };
        let (command, upload, to_send) = match &self.steps[self.pc] {
            Step::Retr(p) => (format!("RETR {p}"), false, 0),
            Step::Stor(p, n) => (format!("STOR {p}"), true, *n),
            Step::List(p) => (format!("LIST {p}"), false, 0),
            Step::Mlsd(p) => (format!("MLSD {p}"), false, 0),
            other => return Next::Failed(format!("no transfer in {other:?}")),
        };
        self.data = Some(Data { tcp, upload, to_send, done: false });
        self.final_ok = false;
        self.send(&command, Phase::Transfer)
    }

    /// The data connection is ready: read (downloads) or write (uploads) what it can.
    fn on_data(&mut self, scratch: &mut [u8], target: &Target) -> Next {
        let Some(data) = self.data.as_mut() else {
            return Next::Continue;
        };
        let result = if data.upload { pump_out(data, scratch) } else { pump_in(data, scratch) };
        match result {
            Ok(n) => self.bytes += n,
            Err(e) => return Next::Failed(format!("data: {e}")),
        }
        if data.done {
            self.closing = self.data.take();
            if self.final_ok {
                return self.step_done(target);
            }
        }
        Next::Continue
    }

    /// Both the data connection and the final reply are done: next step.
    fn maybe_transfer_done(&mut self, target: &Target) -> Next {
        if self.data.is_some() {
            return Next::Continue;
        }
        self.step_done(target)
    }

    /// Queues a command line and moves to `phase`.
    fn send(&mut self, line: &str, phase: Phase) -> Next {
        self.out.extend_from_slice(line.as_bytes());
        self.out.extend_from_slice(b"\r\n");
        self.phase = phase;
        match self.flush() {
            Ok(()) => Next::Continue,
            Err(e) => Next::Failed(format!("control write: {e}")),
        }
    }

    /// Writes what the socket takes of the pending control bytes.
    fn flush(&mut self) -> io::Result<()> {
        while !self.out.is_empty() {
            match self.ctrl.write(&self.out) {
                Ok(n) => drop(self.out.drain(..n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

fn finished_or(e: io::Error) -> Next {
    match e.kind() {
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => Next::Finished,
        _ => Next::Failed(format!("control read: {e}")),
    }
}

/// Reads a download until it would block or ends.
fn pump_in(data: &mut Data, scratch: &mut [u8]) -> io::Result<u64> {
    let mut total = 0;
    loop {
        match data.tcp.read(scratch) {
            Ok(0) => {
                data.done = true;
                return Ok(total);
            }
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(total),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Writes an upload until it would block or is complete, then half-closes.
fn pump_out(data: &mut Data, scratch: &mut [u8]) -> io::Result<u64> {
    let mut total = 0;
    while data.to_send > 0 {
        let len = scratch.len().min(data.to_send as usize);
        match data.tcp.write(&scratch[..len]) {
            Ok(n) => {
                data.to_send -= n as u64;
                total += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(total),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(total),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    data.tcp.shutdown(Shutdown::Write)?;
    data.done = true;
    Ok(total)
}

/// Starts a non-blocking TCP connect to `addr`; it completes when the socket turns writable.
pub fn connect_nonblocking(addr: SocketAddr) -> io::Result<TcpStream> {
    let family = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    let flags = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(family, flags, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket that nothing else owns; the stream closes it on drop.
    let tcp = unsafe { TcpStream::from_raw_fd(fd) };
    let (storage, len) = sockaddr(addr);
    // SAFETY: `storage` holds a valid sockaddr of `len` bytes for the socket's family.
    let rc = unsafe { libc::connect(fd, (&raw const storage).cast(), len) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(err);
        }
    }
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// `addr` as a C socket address.
fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(v4.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in>().write(sin) };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: v6.ip().octets() },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in6>().write(sin6) };
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}
