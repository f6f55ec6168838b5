//! The data channel: getting the connection (accept on the passive listener, or connect for
//! PORT/EPRT) and pumping the bytes, as a non-blocking state machine that every driver steps.
//!
//! [`DataTask::step`] does as much work as the socket allows and then says which descriptor to
//! wait on. The per-connection driver waits with poll(2) beside its control connection; the
//! event loop registers the descriptor in its poller. Files are sent with sendfile(2) when the
//! transfer is binary, so RETR bytes never enter user space.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use socket2::{Domain, SockAddr, Socket, Type};
use zocalo_proto::ascii::{Decoder, Encoder};
use zocalo_proto::session::{Body, Endpoint, Outcome, Transfer};
use zocalo_proto::FileHandle;

const CHUNK: usize = 64 * 1024;
const SENDFILE_CHUNK: usize = 4 << 20;
/// Chunks moved per step before yielding, so one fast transfer cannot starve an event loop.
const BUDGET: usize = 16;

/// What a step needs next.
#[derive(Debug)]
pub enum Step {
    /// Wait until `fd` is readable (`false`) or writable (`true`), then step again.
    Wait {
        fd: RawFd,
        writable: bool,
    },
    Finished(Outcome),
}

/// One transfer, from connection setup to the last byte.
pub struct DataTask {
    state: State,
    progress: Arc<AtomicU64>,
}

enum State {
    Accepting {
        listener: TcpListener,
        peer: IpAddr,
        pump: Option<Pump>,
    },
    Connecting {
        sock: Socket,
        pump: Option<Pump>,
    },
    /// The passive listener stays open until the task ends, so its descriptor number cannot be
    /// reused while a driver may still have it registered.
    Running {
        sock: TcpStream,
        pump: Pump,
        _listener: Option<TcpListener>,
    },
    Done,
}

impl DataTask {
    /// Starts a transfer; `passive` is the listener opened for PASV/EPSV, `local` the control
    /// connection's local address (active connections leave from it), `peer` its peer.
    pub fn new(
        t: Transfer,
        passive: Option<TcpListener>,
        local: SocketAddr,
        peer: IpAddr,
    ) -> Result<Self, Outcome> {
        let pump = Some(Pump::new(t.body, t.ascii));
        let state = match (t.endpoint, passive) {
            (Endpoint::Passive, Some(listener)) => {
                listener
                    .set_nonblocking(true)
                    .map_err(|_| Outcome::NoConnection)?;
                State::Accepting {
                    listener,
                    peer,
                    pump,
                }
            }
            (Endpoint::Passive, None) => return Err(Outcome::NoConnection),
            (Endpoint::Active(addr), _) => {
                let sock = connect(addr, local).map_err(|_| Outcome::NoConnection)?;
                State::Connecting { sock, pump }
            }
        };
        Ok(DataTask {
            state,
            progress: t.progress,
        })
    }

    /// True while no data connection exists yet (a timeout then means 425, not 426).
    pub fn is_connecting(&self) -> bool {
        matches!(
            self.state,
            State::Accepting { .. } | State::Connecting { .. }
        )
    }

    /// Bytes moved so far.
    pub fn progress(&self) -> u64 {
        self.progress.load(Ordering::Relaxed)
    }

    /// Does all the work possible without blocking.
    pub fn step(&mut self) -> Step {
        loop {
            match std::mem::replace(&mut self.state, State::Done) {
                State::Accepting {
                    listener,
                    peer,
                    pump,
                } => match accept_from(&listener, peer) {
                    Ok(Some(sock)) => self.state = running(sock, pump, Some(listener)),
                    Ok(None) => {
                        return self.park(State::Accepting {
                            listener,
                            peer,
                            pump,
                        })
                    }
                    Err(_) => return Step::Finished(Outcome::NoConnection),
                },
                State::Connecting { sock, pump } => match connected(&sock) {
                    Ok(true) => self.state = running(sock.into(), pump, None),
                    Ok(false) => return self.park(State::Connecting { sock, pump }),
                    Err(_) => return Step::Finished(Outcome::NoConnection),
                },
                State::Running {
                    mut sock,
                    mut pump,
                    _listener,
                } => match pump.run(&mut sock, &self.progress) {
                    Ok(None) => return Step::Finished(Outcome::Done),
                    Ok(Some(_)) => {
                        return self.park(State::Running {
                            sock,
                            pump,
                            _listener,
                        })
                    }
                    Err(outcome) => return Step::Finished(outcome),
                },
                State::Done => return Step::Finished(Outcome::Done),
            }
        }
    }

    fn park(&mut self, state: State) -> Step {
        let (fd, writable) = match &state {
            State::Accepting { listener, .. } => (listener.as_raw_fd(), false),
            State::Connecting { sock, .. } => (sock.as_raw_fd(), true),
            State::Running { sock, pump, .. } => (sock.as_raw_fd(), pump.wants_write()),
            State::Done => (-1, false),
        };
        self.state = state;
        Step::Wait { fd, writable }
    }
}

fn running(sock: TcpStream, pump: Option<Pump>, listener: Option<TcpListener>) -> State {
    match pump {
        Some(pump) => State::Running {
            sock,
            pump,
            _listener: listener,
        },
        None => State::Done,
    }
}

/// Accepts one connection, dropping any that come from an address other than the client's.
fn accept_from(listener: &TcpListener, peer: IpAddr) -> io::Result<Option<TcpStream>> {
    loop {
        match listener.accept() {
            Ok((sock, from)) if canonical_ip(from.ip()) == peer => {
                sock.set_nonblocking(true)?;
                return Ok(Some(sock));
            }
            Ok((sock, from)) => {
                tracing::warn!(%from, expected = %peer, "refused a data connection from a foreign address");
                drop(sock);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
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

/// Moves the bytes of one transfer over a connected non-blocking socket.
struct Pump {
    kind: PumpKind,
    /// Bytes read or encoded but not yet written out.
    buf: Vec<u8>,
    pos: usize,
}

enum PumpKind {
    /// Binary send with sendfile(2).
    SendFile {
        _file: Box<dyn FileHandle>,
        fd: RawFd,
    },
    /// Send through the buffer (TYPE A, or a handle without a descriptor).
    SendCopy {
        file: Box<dyn FileHandle>,
        encoder: Option<Encoder>,
        eof: bool,
    },
    SendBytes,
    Receive {
        file: Option<Box<dyn FileHandle>>,
        decoder: Option<Decoder>,
    },
}

impl Pump {
    fn new(body: Body, ascii: bool) -> Self {
        let kind = match body {
            Body::Send(file) => match (file.raw_fd(), ascii) {
                (Some(fd), false) => PumpKind::SendFile { _file: file, fd },
                _ => PumpKind::SendCopy {
                    file,
                    encoder: ascii.then(Encoder::default),
                    eof: false,
                },
            },
            Body::Bytes(bytes) => {
                return Pump {
                    kind: PumpKind::SendBytes,
                    buf: bytes,
                    pos: 0,
                }
            }
            Body::Receive(file) => PumpKind::Receive {
                file: Some(file),
                decoder: ascii.then(Decoder::default),
            },
        };
        Pump {
            kind,
            buf: Vec::new(),
            pos: 0,
        }
    }

    fn wants_write(&self) -> bool {
        !matches!(self.kind, PumpKind::Receive { .. })
    }

    /// `Ok(None)` when finished, `Ok(Some(()))` when the socket would block.
    fn run(&mut self, sock: &mut TcpStream, progress: &AtomicU64) -> Result<Option<()>, Outcome> {
        match &mut self.kind {
            PumpKind::SendFile { fd, .. } => send_file(sock, *fd, progress),
            PumpKind::SendCopy { .. } | PumpKind::SendBytes => self.send_copy(sock, progress),
            PumpKind::Receive { .. } => self.receive(sock, progress),
        }
    }

    fn send_copy(
        &mut self,
        sock: &mut TcpStream,
        progress: &AtomicU64,
    ) -> Result<Option<()>, Outcome> {
        for _ in 0..BUDGET * 4 {
            if self.pos < self.buf.len() {
                match sock.write(&self.buf[self.pos..]) {
                    Ok(n) => {
                        self.pos += n;
                        progress.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(Some(())),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => return Err(Outcome::ConnectionLost),
                }
                continue;
            }
            if !self.refill()? {
                return Ok(None);
            }
        }
        Ok(Some(()))
    }

    /// Reads the next chunk of the file into the buffer; false at end of file.
    fn refill(&mut self) -> Result<bool, Outcome> {
        let PumpKind::SendCopy { file, encoder, eof } = &mut self.kind else {
            return Ok(false);
        };
        if *eof {
            return Ok(false);
        }
        let mut chunk = vec![0u8; CHUNK];
        let n = file.read(&mut chunk).map_err(Outcome::Storage)?;
        self.buf.clear();
        self.pos = 0;
        match encoder {
            Some(enc) => enc.encode(&chunk[..n], &mut self.buf),
            None => self.buf.extend_from_slice(&chunk[..n]),
        }
        *eof = n == 0;
        Ok(n > 0)
    }

    fn receive(
        &mut self,
        sock: &mut TcpStream,
        progress: &AtomicU64,
    ) -> Result<Option<()>, Outcome> {
        let PumpKind::Receive { file, decoder } = &mut self.kind else {
            return Ok(None);
        };
        if self.buf.len() < CHUNK {
            self.buf.resize(CHUNK, 0);
        }
        let mut decoded = Vec::new();
        for _ in 0..BUDGET {
            let n = match sock.read(&mut self.buf) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(Some(())),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return Err(Outcome::ConnectionLost),
            };
            let Some(f) = file.as_mut() else {
                return Ok(None);
            };
            if n == 0 {
                if let Some(dec) = decoder {
                    decoded.clear();
                    dec.finish(&mut decoded);
                    f.write_all(&decoded).map_err(Outcome::Storage)?;
                }
                f.flush().map_err(Outcome::Storage)?;
                let f = file.take().expect("checked above");
                f.finish().map_err(Outcome::Storage)?;
                return Ok(None);
            }
            progress.fetch_add(n as u64, Ordering::Relaxed);
            match decoder {
                Some(dec) => {
                    decoded.clear();
                    dec.decode(&self.buf[..n], &mut decoded);
                    f.write_all(&decoded).map_err(Outcome::Storage)?;
                }
                None => f.write_all(&self.buf[..n]).map_err(Outcome::Storage)?,
            }
        }
        Ok(Some(()))
    }
}

fn send_file(sock: &TcpStream, fd: RawFd, progress: &AtomicU64) -> Result<Option<()>, Outcome> {
    for _ in 0..BUDGET {
        // SAFETY: both descriptors are open for the duration of the call; a null offset uses and
        // advances the file's own position.
        let n =
            unsafe { libc::sendfile(sock.as_raw_fd(), fd, std::ptr::null_mut(), SENDFILE_CHUNK) };
        if n > 0 {
            progress.fetch_add(n as u64, Ordering::Relaxed);
            continue;
        }
        if n == 0 {
            return Ok(None);
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            ErrorKind::WouldBlock => return Ok(Some(())),
            ErrorKind::Interrupted => continue,
            ErrorKind::BrokenPipe | ErrorKind::ConnectionReset => {
                return Err(Outcome::ConnectionLost)
            }
            _ if err.raw_os_error() == Some(libc::EIO) => return Err(Outcome::Storage(err)),
            _ => return Err(Outcome::ConnectionLost),
        }
    }
    Ok(Some(()))
}
