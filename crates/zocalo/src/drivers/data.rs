//! The data channel: getting the connection (accept on the passive listener, or connect for
//! PORT/EPRT), the TLS handshake for PROT P, and pumping the bytes, as a non-blocking state
//! machine that every driver steps.
//!
//! [`DataTask::step`] does as much work as the socket allows (within a budget, so one fast
//! transfer cannot starve an event loop) and then says which descriptor to wait on. The
//! per-connection driver waits with poll(2) beside its control connection; the event loop
//! registers the descriptor in its poller. Binary files on clear connections are sent with
//! sendfile(2), so RETR bytes never enter user space.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, SockAddr, Socket, Type};
use zocalo_proto::ascii::{Decoder, Encoder};
use zocalo_proto::session::{Body, Cancel, Done, Endpoint, Lane, Outcome, Transfer, Work};
use zocalo_proto::FileHandle;

use crate::sys::tls::{Stream, Tls};

const CHUNK: usize = 64 * 1024;
/// Largest upload read. An upload's buffer starts at [`CHUNK`] and doubles up to this while
/// reads come back full, so a fast sender gets large file writes and a slow one never costs
/// more than 64 KiB (growing reads made STOR markedly faster: docs/benchmarks.md).
const RECV_MAX: usize = 1 << 20;
const SENDFILE_CHUNK: usize = 4 << 20;
/// Chunks moved per step before yielding.
const BUDGET: usize = 16;

/// What a step needs next.
#[derive(Debug)]
pub enum Step {
    /// Wait until `fd` is readable (`false`) or writable (`true`), then step again.
    Wait {
        fd: RawFd,
        writable: bool,
    },
    /// The bandwidth limit is used up: step again at this time.
    Sleep(Instant),
    /// An upload's file write (or its final flush and rename), to run off an event loop's
    /// thread; hand the result to [`DataTask::io_done`], then step again. Nothing is read from
    /// the data connection meanwhile, so an upload holds at most one buffer in flight.
    Io(Work),
    Finished(Outcome),
}

/// How far one pump call got.
enum Flow {
    Done,
    /// The socket would block in the pump's direction.
    Blocked,
    /// The budget ran out with work left: step again soon.
    Yield,
    /// The bandwidth limit is used up until then.
    Throttled(Instant),
    /// This file I/O must run before anything else moves.
    Io(Work),
}

/// A token bucket for `--max-rate-down` and `--max-rate-up` (bytes per second, per session).
struct Throttle {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Throttle {
    fn new(rate: u64) -> Self {
        Throttle { rate: rate as f64, tokens: 0.0, last: Instant::now() }
    }

    /// How many of `want` bytes may move now, or when to try again.
    fn allow(&mut self, want: usize) -> Result<usize, Instant> {
        let now = Instant::now();
        let burst = (self.rate / 10.0).max(4096.0);
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(burst);
        self.last = now;
        if self.tokens >= 1.0 {
            return Ok(want.min(self.tokens as usize));
        }
        let wait = (1024.0_f64.min(burst) - self.tokens) / self.rate;
        Err(now + Duration::from_secs_f64(wait))
    }

    fn consume(&mut self, n: usize) {
        self.tokens -= n as f64;
    }
}

/// Applies an optional throttle to a chunk size.
fn allowance(throttle: &mut Option<Throttle>, want: usize) -> Result<usize, Instant> {
    match throttle {
        Some(t) => t.allow(want),
        None => Ok(want),
    }
}

fn spend(throttle: &mut Option<Throttle>, n: usize) {
    if let Some(t) = throttle {
        t.consume(n);
    }
}

/// One transfer, from connection setup to the last byte.
pub struct DataTask {
    state: State,
    /// Balancers whose passive data connections start with a PROXY header.
    proxy_from: Vec<crate::sys::net::Cidr>,
    progress: Arc<AtomicU64>,
    tls: Option<Tls>,
    throttle: Option<Throttle>,
    /// A file write failed off the thread; the next step reports it.
    failed: Option<Outcome>,
}

/// Per-session bandwidth limits in bytes per second.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rates {
    pub down: Option<u64>,
    pub up: Option<u64>,
}

enum State {
    Accepting {
        listener: TcpListener,
        peer: IpAddr,
        pump: Pump,
    },
    /// A passive data connection from a trusted balancer: its PROXY header says whether it
    /// comes from the client.
    Proxied {
        gate: crate::drivers::proxy::Gate,
        listener: TcpListener,
        peer: IpAddr,
        pump: Pump,
    },
    Connecting {
        sock: Socket,
        pump: Pump,
    },
    /// The passive listener stays open until the task ends, so its descriptor number cannot be
    /// reused while a driver may still have it registered.
    Running {
        stream: Stream,
        pump: Pump,
        _listener: Option<TcpListener>,
        closing: bool,
    },
    Done,
}

impl DataTask {
    /// Makes the data connection end with a reset when it closes, so that the client stops at
    /// once instead of reading what the kernel still holds for it (a kicked session).
    pub fn reset_on_close(&self) {
        if let State::Running { stream, .. } = &self.state {
            let fd = stream.fd();
            if fd >= 0 {
                // SAFETY: the stream's own descriptor, open for as long as this borrow.
                let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
                let _ = socket2::SockRef::from(&fd).set_linger(Some(Duration::ZERO));
            }
        }
    }

    /// Starts a transfer; `passive` is the listener opened for PASV/EPSV, `local` the control
    /// connection's local address (active connections leave from it), `peer` its client. `tls`
    /// is the server's TLS setup, used when the transfer is protected (PROT P); `proxy_from` the
    /// balancers whose connections start with a PROXY header.
    pub fn new(
        t: Transfer,
        passive: Option<TcpListener>,
        local: SocketAddr,
        peer: IpAddr,
        tls: Option<&Tls>,
        rates: Rates,
        proxy_from: &[crate::sys::net::Cidr],
    ) -> Result<Self, Outcome> {
        let peer = peer.to_canonical();
        let pump = Pump::new(t.body, t.ascii, t.tls);
        // The lower of the server's limit and the account's own.
        let server = if pump.sends() { rates.down } else { rates.up };
        let rate = match (server, t.rate_limit) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let throttle = rate.map(Throttle::new);
        let tls = if t.tls { Some(tls.ok_or(Outcome::TlsRejected)?.clone()) } else { None };
        let state = match (t.endpoint, passive) {
            (Endpoint::Passive, Some(listener)) => {
                listener.set_nonblocking(true).map_err(|_| Outcome::NoConnection)?;
                State::Accepting { listener, peer, pump }
            }
            (Endpoint::Passive, None) => return Err(Outcome::NoConnection),
            (Endpoint::Active(addr), _) => {
                let sock = connect(addr, local).map_err(|_| Outcome::NoConnection)?;
                State::Connecting { sock, pump }
            }
        };
        let proxy_from = proxy_from.to_vec();
        Ok(DataTask { state, proxy_from, progress: t.progress, tls, throttle, failed: None })
    }

    /// Uploads write their file through [`Step::Io`] instead of on the stepping thread (the
    /// event loop asks for this; the blocking drivers write inline).
    pub fn offload_file_io(&mut self) {
        match &mut self.state {
            State::Accepting { pump, .. }
            | State::Proxied { pump, .. }
            | State::Connecting { pump, .. }
            | State::Running { pump, .. } => pump.offload = true,
            State::Done => {}
        }
    }

    /// The result of the last [`Step::Io`].
    pub fn io_done(&mut self, done: Done) {
        let State::Running { pump, .. } = &mut self.state else {
            return;
        };
        match done.take::<Written>() {
            Some(written) => {
                if let Err(outcome) = pump.written(written) {
                    self.failed = Some(outcome);
                }
            }
            None => self.failed = Some(Outcome::ConnectionLost),
        }
    }

    /// Whether the client of a clear data connection has sent a TLS ClientHello (a client that
    /// speaks TLS on data without PROT P, as aioftp does in implicit FTPS): a look at the
    /// waiting bytes, none taken.
    pub fn clear_but_hello(&self) -> bool {
        let State::Running { stream: Stream::Plain(sock), .. } = &self.state else {
            return false;
        };
        let mut head = [0u8; 3];
        matches!(sock.peek(&mut head), Ok(3) if head[0] == 0x16 && head[1] == 0x03)
    }

    /// True while no data connection exists yet (a timeout then means 425, not 426).
    pub fn is_connecting(&self) -> bool {
        matches!(
            self.state,
            State::Accepting { .. } | State::Proxied { .. } | State::Connecting { .. }
        )
    }

    /// Does all the work possible without blocking.
    pub fn step(&mut self) -> Step {
        if let Some(outcome) = self.failed.take() {
            self.state = State::Done;
            return Step::Finished(outcome);
        }
        loop {
            match std::mem::replace(&mut self.state, State::Done) {
                State::Accepting { listener, peer, pump } => {
                    match accept_from(&listener, peer, &self.proxy_from) {
                        Ok(Some(Accepted::Direct(sock))) => {
                            match self.running(sock, pump, Some(listener)) {
                                Ok(state) => self.state = state,
                                Err(outcome) => return Step::Finished(outcome),
                            }
                        }
                        Ok(Some(Accepted::Proxied(gate))) => {
                            self.state = State::Proxied { gate, listener, peer, pump };
                        }
                        Ok(None) => {
                            return self.park(State::Accepting { listener, peer, pump }, false)
                        }
                        Err(_) => return Step::Finished(Outcome::NoConnection),
                    }
                }
                State::Proxied { mut gate, listener, peer, pump } => match gate.step() {
                    Ok(Some(crate::drivers::proxy::Origin::Client(from))) if from.ip() == peer => {
                        match self.running(gate.into_stream(), pump, Some(listener)) {
                            Ok(state) => self.state = state,
                            Err(outcome) => return Step::Finished(outcome),
                        }
                    }
                    Ok(Some(from)) => {
                        let (balancer, from) = (gate.balancer, from.addr());
                        tracing::warn!(%from, %balancer, expected = %peer, "refused a data connection from another address");
                        self.state = State::Accepting { listener, peer, pump };
                    }
                    Ok(None) => {
                        return self.park(State::Proxied { gate, listener, peer, pump }, false)
                    }
                    Err(why) => {
                        crate::drivers::proxy::log_refused(gate.balancer, &why);
                        self.state = State::Accepting { listener, peer, pump };
                    }
                },
                State::Connecting { sock, pump } => match connected(&sock) {
                    Ok(true) => match self.running(sock.into(), pump, None) {
                        Ok(state) => self.state = state,
                        Err(outcome) => return Step::Finished(outcome),
                    },
                    Ok(false) => return self.park(State::Connecting { sock, pump }, false),
                    Err(_) => return Step::Finished(Outcome::NoConnection),
                },
                State::Running { stream, pump, _listener, closing } => {
                    return self.run(stream, pump, _listener, closing);
                }
                State::Done => return Step::Finished(Outcome::Done),
            }
        }
    }

    fn running(
        &self,
        sock: TcpStream,
        pump: Pump,
        listener: Option<TcpListener>,
    ) -> Result<State, Outcome> {
        sock.set_nonblocking(true).map_err(|_| Outcome::ConnectionLost)?;
        let mut pump = pump;
        pump.begin()?;
        let mut stream = Stream::Plain(sock);
        if let Some(tls) = &self.tls {
            stream = stream.upgrade_data(tls).map_err(|_| Outcome::TlsRejected)?;
        }
        Ok(State::Running { stream, pump, _listener: listener, closing: false })
    }

    fn run(
        &mut self,
        mut stream: Stream,
        mut pump: Pump,
        listener: Option<TcpListener>,
        mut closing: bool,
    ) -> Step {
        if let Stream::Tls(t) = &mut stream {
            match t.handshake() {
                Ok(_) if t.is_handshaking() => {}
                Ok(_) if self.tls.as_ref().is_some_and(|c| c.require_reuse) && !t.resumed() => {
                    return Step::Finished(Outcome::TlsRejected);
                }
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => return Step::Finished(Outcome::TlsRejected),
            }
            if t.is_handshaking() {
                let state = State::Running { stream, pump, _listener: listener, closing };
                return self.park(state, false);
            }
        }
        let flow = if closing {
            Ok(Flow::Done)
        } else {
            pump.run(&mut stream, &self.progress, &mut self.throttle)
        };
        match flow {
            Ok(Flow::Done) => {
                if !closing {
                    stream.close();
                    closing = true;
                }
                match stream.flush_tls() {
                    Ok(()) => Step::Finished(Outcome::Done),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        let state = State::Running { stream, pump, _listener: listener, closing };
                        self.park(state, false)
                    }
                    Err(_) => Step::Finished(Outcome::ConnectionLost),
                }
            }
            Ok(Flow::Throttled(until)) => {
                self.state = State::Running { stream, pump, _listener: listener, closing };
                Step::Sleep(until)
            }
            Ok(Flow::Io(work)) => {
                self.state = State::Running { stream, pump, _listener: listener, closing };
                Step::Io(work)
            }
            Ok(flow) => {
                let state = State::Running { stream, pump, _listener: listener, closing };
                self.park(state, matches!(flow, Flow::Yield))
            }
            Err(outcome) => Step::Finished(outcome),
        }
    }

    /// Stores the state and says what to wait for. `again` asks for an immediate new step (a
    /// socket is writable almost always, so waiting for writability returns at once).
    fn park(&mut self, state: State, again: bool) -> Step {
        let (fd, writable) = match &state {
            State::Accepting { listener, .. } => (listener.as_raw_fd(), false),
            State::Proxied { gate, .. } => (gate.stream.as_raw_fd(), false),
            State::Connecting { sock, .. } => (sock.as_raw_fd(), true),
            State::Running { stream, pump, closing, .. } => {
                let writable = again
                    || stream.wants_write()
                    || (*closing)
                    || (!stream.is_handshaking() && pump.sends());
                (stream.fd(), writable)
            }
            State::Done => (-1, false),
        };
        self.state = state;
        Step::Wait { fd, writable }
    }
}

/// A passive data connection: from the client, or from a balancer that sends its header first.
enum Accepted {
    Direct(TcpStream),
    Proxied(crate::drivers::proxy::Gate),
}

/// Accepts one connection, dropping any that come from an address other than the client's
/// (a trusted balancer's connection is kept until its header says whom it is from).
fn accept_from(
    listener: &TcpListener,
    peer: IpAddr,
    proxy_from: &[crate::sys::net::Cidr],
) -> io::Result<Option<Accepted>> {
    loop {
        match listener.accept() {
            Ok((sock, from)) if crate::drivers::proxy::trusted(proxy_from, from.ip()) => {
                // The data timeout bounds the wait; the header has no deadline of its own here.
                let far = std::time::Instant::now() + std::time::Duration::from_secs(3600);
                return Ok(Some(Accepted::Proxied(crate::drivers::proxy::Gate::new(
                    sock, from, far,
                )?)));
            }
            Ok((sock, from)) if from.ip().to_canonical() == peer => {
                return Ok(Some(Accepted::Direct(sock)))
            }
            Ok((sock, from)) => {
                tracing::warn!(%from, expected = %peer, "refused a data connection from another address");
                drop(sock);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

fn connect(addr: SocketAddr, local: SocketAddr) -> io::Result<Socket> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), None)?;
    sock.set_nonblocking(true)?;
    if local.is_ipv4() == addr.is_ipv4() {
        sock.bind(&SockAddr::from(SocketAddr::new(local.ip(), 0)))?;
    }
    match sock.connect(&addr.into()) {
        Ok(()) => Ok(sock),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(sock),
        Err(e) => Err(e),
    }
}

fn connected(sock: &Socket) -> io::Result<bool> {
    if let Some(e) = sock.take_error()? {
        return Err(e);
    }
    match sock.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotConnected => Ok(false),
        Err(e) => Err(e),
    }
}

/// Moves the bytes of one transfer over a connected non-blocking stream.
struct Pump {
    kind: PumpKind,
    /// Bytes read or encoded but not yet written out.
    buf: Vec<u8>,
    pos: usize,
    /// Uploads hand their file writes out as [`Flow::Io`].
    offload: bool,
}

/// What an offloaded upload write gives back: the file, the buffer (for reuse), the result,
/// and whether it was the final flush (then the upload is complete).
struct Written {
    file: Option<Box<dyn FileHandle>>,
    chunk: Vec<u8>,
    result: io::Result<()>,
    last: bool,
}

enum PumpKind {
    /// Binary send of a file on a clear connection, with sendfile(2).
    SendFile { _file: Box<dyn FileHandle>, fd: RawFd },
    /// Send through the buffer (TYPE A, TLS, a listing, or a handle without a descriptor).
    SendCopy {
        /// Out (`None`) while an offloaded read has it.
        file: Option<Box<dyn FileHandle>>,
        /// TYPE A: the encoder, with its scratch buffer for the unconverted bytes.
        encoder: Option<(Encoder, Vec<u8>)>,
        eof: bool,
    },
    Receive {
        file: Option<Box<dyn FileHandle>>,
        decoder: Option<Decoder>,
        /// The final flush ran: the upload is complete.
        done: bool,
    },
}

impl Pump {
    fn new(body: Body, ascii: bool, tls: bool) -> Self {
        let kind = match body {
            Body::Send(file) => match (file.raw_fd(), ascii || tls) {
                (Some(fd), false) => PumpKind::SendFile { _file: file, fd },
                _ => PumpKind::SendCopy {
                    file: Some(file),
                    encoder: ascii.then(|| (Encoder::default(), Vec::new())),
                    eof: false,
                },
            },
            Body::Listing(file) => {
                PumpKind::SendCopy { file: Some(file), encoder: None, eof: false }
            }
            Body::Receive(file) => {
                let decoder = ascii.then(Decoder::default);
                PumpKind::Receive { file: Some(file), decoder, done: false }
            }
        };
        Pump { kind, buf: Vec::new(), pos: 0, offload: false }
    }

    /// Takes back what an offloaded write or read returned. After an upload's final flush the
    /// upload is over; a read's bytes (TYPE A-encoded here) are what to send next.
    fn written(&mut self, w: Written) -> Result<(), Outcome> {
        if let PumpKind::SendCopy { file, encoder, eof } = &mut self.kind {
            *file = w.file;
            w.result.map_err(Outcome::Storage)?;
            *eof = w.chunk.is_empty();
            self.pos = 0;
            match encoder {
                Some((enc, scratch)) => {
                    *scratch = w.chunk;
                    self.buf.clear();
                    enc.encode(scratch, &mut self.buf);
                }
                None => self.buf = w.chunk,
            }
            return Ok(());
        }
        let PumpKind::Receive { file, done, .. } = &mut self.kind else {
            return Ok(());
        };
        *file = w.file;
        *done = w.last;
        let size = self.buf.len().max(CHUNK);
        self.buf = w.chunk;
        self.buf.clear();
        self.buf.resize(size, 0);
        w.result.map_err(Outcome::Storage)
    }

    /// The data connection is up: an upload may now truncate its target.
    fn begin(&mut self) -> Result<(), Outcome> {
        match &mut self.kind {
            PumpKind::Receive { file: Some(f), .. } => f.begin().map_err(Outcome::Storage),
            _ => Ok(()),
        }
    }

    fn sends(&self) -> bool {
        !matches!(self.kind, PumpKind::Receive { .. })
    }

    fn run(
        &mut self,
        stream: &mut Stream,
        progress: &AtomicU64,
        throttle: &mut Option<Throttle>,
    ) -> Result<Flow, Outcome> {
        match (&mut self.kind, &*stream) {
            (PumpKind::SendFile { fd, .. }, Stream::Plain(sock)) => {
                send_file(sock, *fd, progress, throttle)
            }
            (PumpKind::Receive { .. }, _) => self.receive(stream, progress, throttle),
            _ => self.send_copy(stream, progress, throttle),
        }
    }

    fn send_copy(
        &mut self,
        stream: &mut Stream,
        progress: &AtomicU64,
        throttle: &mut Option<Throttle>,
    ) -> Result<Flow, Outcome> {
        for _ in 0..BUDGET * 4 {
            if self.pos < self.buf.len() {
                let allowed = match allowance(throttle, self.buf.len() - self.pos) {
                    Ok(n) => n,
                    Err(until) => return Ok(Flow::Throttled(until)),
                };
                match stream.write(&self.buf[self.pos..self.pos + allowed]) {
                    Ok(n) => {
                        spend(throttle, n);
                        self.pos += n;
                        progress.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(Flow::Blocked),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => return Err(Outcome::ConnectionLost),
                }
                continue;
            }
            if self.offload {
                return Ok(self.read_off_thread());
            }
            if !self.refill()? {
                return Ok(Flow::Done);
            }
        }
        Ok(Flow::Yield)
    }

    /// The next chunk of the file (or listing) as a [`Work`] that reads it off the thread
    /// (`Flow::Io`), or `Flow::Done` at the end. The bytes come back through [`Pump::written`].
    fn read_off_thread(&mut self) -> Flow {
        let PumpKind::SendCopy { file, eof: false, .. } = &mut self.kind else {
            return Flow::Done;
        };
        // The file is out with a read already: nothing moves until it comes back.
        let Some(mut file) = file.take() else {
            return Flow::Blocked;
        };
        let mut chunk = std::mem::take(&mut self.buf);
        chunk.resize(CHUNK, 0);
        Flow::Io(Work::new(move || {
            let result = file.read(&mut chunk).map(|n| chunk.truncate(n));
            Written { file: Some(file), chunk, result, last: false }
        }))
    }

    /// Reads the next chunk of the file into the buffer; false at end of file.
    fn refill(&mut self) -> Result<bool, Outcome> {
        let PumpKind::SendCopy { file: Some(file), encoder, eof } = &mut self.kind else {
            return Ok(false);
        };
        if *eof {
            return Ok(false);
        }
        self.pos = 0;
        let n = match encoder {
            // Binary: read straight into the send buffer, reused from chunk to chunk.
            None => {
                self.buf.resize(CHUNK, 0);
                let n = file.read(&mut self.buf).map_err(Outcome::Storage)?;
                self.buf.truncate(n);
                n
            }
            Some((enc, scratch)) => {
                scratch.resize(CHUNK, 0);
                let n = file.read(scratch).map_err(Outcome::Storage)?;
                self.buf.clear();
                enc.encode(&scratch[..n], &mut self.buf);
                n
            }
        };
        *eof = n == 0;
        Ok(n > 0)
    }

    fn receive(
        &mut self,
        stream: &mut Stream,
        progress: &AtomicU64,
        throttle: &mut Option<Throttle>,
    ) -> Result<Flow, Outcome> {
        if matches!(self.kind, PumpKind::Receive { done: true, .. }) {
            return Ok(Flow::Done);
        }
        if self.buf.len() < CHUNK {
            self.buf.resize(CHUNK, 0);
        }
        let mut decoded = Vec::new();
        for _ in 0..BUDGET {
            let allowed = match allowance(throttle, self.buf.len()) {
                Ok(n) => n,
                Err(until) => return Ok(Flow::Throttled(until)),
            };
            let n = match stream.read(&mut self.buf[..allowed]) {
                Ok(n) => {
                    spend(throttle, n);
                    n
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(Flow::Blocked),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return Err(Outcome::ConnectionLost),
            };
            if n == 0 && stream.truncated() {
                // An FTPS upload's end must be TLS's close_notify: a bare TCP close could be
                // anyone's cut, so the file is not complete (426), as vsftpd's
                // strict_ssl_read_eof has it.
                tracing::info!("upload ended without TLS close_notify: treated as cut");
                return Err(Outcome::ConnectionLost);
            }
            let PumpKind::Receive { file, decoder, .. } = &mut self.kind else {
                return Ok(Flow::Done);
            };
            if n == 0 && self.offload {
                return Ok(Flow::Io(finish_upload_off_thread(file, decoder)));
            }
            if n == 0 {
                return finish_upload(file, decoder).map(|()| Flow::Done);
            }
            progress.fetch_add(n as u64, Ordering::Relaxed);
            if self.offload {
                return Ok(Flow::Io(write_off_thread(&mut self.buf, n, file, decoder, decoded)));
            }
            let PumpKind::Receive { file: Some(f), decoder, .. } = &mut self.kind else {
                return Ok(Flow::Done);
            };
            let bytes = match decoder {
                Some(dec) => {
                    decoded.clear();
                    dec.decode(&self.buf[..n], &mut decoded);
                    &decoded[..]
                }
                None => &self.buf[..n],
            };
            f.write_all(bytes).map_err(Outcome::Storage)?;
            if n == self.buf.len() && n < RECV_MAX {
                self.buf.resize(n * 2, 0);
            }
        }
        Ok(Flow::Yield)
    }
}

/// Hands the `n` bytes just read into `buf` (decoded if TYPE A) to a [`Work`] that writes
/// them; the file and the buffer come back through [`Pump::written`]. A buffer that came back
/// full is replaced by one twice its size, as on the inline path.
fn write_off_thread(
    buf: &mut Vec<u8>,
    n: usize,
    file: &mut Option<Box<dyn FileHandle>>,
    decoder: &mut Option<Decoder>,
    mut decoded: Vec<u8>,
) -> Work {
    let grow = n == buf.len() && n < RECV_MAX;
    let mut chunk = std::mem::take(buf);
    if grow {
        *buf = vec![0; n * 2];
    }
    match decoder {
        Some(dec) => {
            decoded.clear();
            dec.decode(&chunk[..n], &mut decoded);
            chunk = decoded;
        }
        None => chunk.truncate(n),
    }
    let mut file = file.take();
    Work::new(move || {
        let result = match file.as_mut() {
            Some(f) => f.write_all(&chunk),
            None => Ok(()),
        };
        Written { file, chunk, result, last: false }
    })
}

/// [`finish_upload`] as a [`Work`], for the event loop.
fn finish_upload_off_thread(
    file: &mut Option<Box<dyn FileHandle>>,
    decoder: &mut Option<Decoder>,
) -> Work {
    let (mut file, mut decoder) = (file.take(), decoder.take());
    // An upload check waits for its verdict in the finish: with long work, not short calls.
    let lane = match file.as_ref().is_some_and(|f| f.slow_finish()) {
        true => Lane::Bulk,
        false => Lane::Storage,
    };
    Work::in_lane(lane, Cancel::default(), move || {
        let result = finish_upload(&mut file, &mut decoder);
        let result = result.map_err(|outcome| match outcome {
            Outcome::Storage(e) => e,
            _ => io::Error::other("upload failed"),
        });
        Written { file: None, chunk: Vec::new(), result, last: true }
    })
}

/// The client closed the data connection: flush, and let the storage put the file in place.
fn finish_upload(
    file: &mut Option<Box<dyn FileHandle>>,
    decoder: &mut Option<Decoder>,
) -> Result<(), Outcome> {
    let Some(mut f) = file.take() else {
        return Ok(());
    };
    if let Some(dec) = decoder {
        let mut tail = Vec::new();
        dec.finish(&mut tail);
        f.write_all(&tail).map_err(Outcome::Storage)?;
    }
    f.flush().map_err(Outcome::Storage)?;
    f.finish().map_err(Outcome::Storage)
}

fn send_file(
    sock: &TcpStream,
    fd: RawFd,
    progress: &AtomicU64,
    throttle: &mut Option<Throttle>,
) -> Result<Flow, Outcome> {
    for _ in 0..BUDGET {
        let allowed = match allowance(throttle, SENDFILE_CHUNK) {
            Ok(n) => n,
            Err(until) => return Ok(Flow::Throttled(until)),
        };
        // SAFETY: both descriptors are open for the duration of the call; a null offset uses and
        // advances the file's own position.
        let n = unsafe { libc::sendfile(sock.as_raw_fd(), fd, std::ptr::null_mut(), allowed) };
        if n > 0 {
            spend(throttle, n as usize);
            progress.fetch_add(n as u64, Ordering::Relaxed);
            continue;
        }
        if n == 0 {
            return Ok(Flow::Done);
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            ErrorKind::WouldBlock => return Ok(Flow::Blocked),
            ErrorKind::Interrupted => continue,
            _ if err.raw_os_error() == Some(libc::EIO) => return Err(Outcome::Storage(err)),
            _ => return Err(Outcome::ConnectionLost),
        }
    }
    Ok(Flow::Yield)
}
