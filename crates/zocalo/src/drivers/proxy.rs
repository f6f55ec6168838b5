//! Reading the PROXY protocol header that a trusted load balancer sends first, on control and
//! passive data connections (`--proxy-protocol-from`). The parser is the core's
//! ([`zocalo_proto::proxy`]); this is the socket side.
//!
//! A [`Gate`] reads without ever taking a byte past the header: it peeks, and consumes only the
//! bytes the parser says belong to it, so a TLS ClientHello or an upload's first bytes that came
//! in the same segment stay in the socket. Every byte it consumes is part of the header, so a
//! level-triggered poller never reports the same bytes twice. The socket is non-blocking; the
//! caller waits for readability and calls [`Gate::step`] again, and gives up at the deadline.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Instant;

use zocalo_proto::proxy::{self, Parsed, MAX_V2};

use crate::sys::net::Cidr;

/// Whether connections from `peer` must start with a header.
pub fn trusted(ranges: &[Cidr], peer: IpAddr) -> bool {
    ranges.iter().any(|c| c.contains(peer))
}

/// A connection whose header is being read.
pub struct Gate {
    pub stream: TcpStream,
    /// The balancer's address (the socket's peer).
    pub balancer: SocketAddr,
    pub deadline: Instant,
    buf: Vec<u8>,
}

/// Whom a connection with a whole header is from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The client the header names.
    Client(SocketAddr),
    /// The balancer itself: a `LOCAL` header (a health check), or one without a TCP address.
    Balancer(SocketAddr),
}

impl Origin {
    /// The address the connection counts as coming from.
    pub fn addr(self) -> SocketAddr {
        match self {
            Origin::Client(a) | Origin::Balancer(a) => a,
        }
    }
}

/// Why a header was refused, for the log line.
#[derive(Debug)]
pub enum Refused {
    Malformed(proxy::Error),
    Closed,
    Io(io::Error),
    TimedOut,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Malformed(e) => write!(f, "{e}"),
            Refused::Closed => f.write_str("connection closed before its PROXY header ended"),
            Refused::Io(e) => write!(f, "reading the PROXY header: {e}"),
            Refused::TimedOut => f.write_str("no whole PROXY header in time"),
        }
    }
}

impl Gate {
    /// Starts reading `stream`'s header (the socket is made non-blocking).
    pub fn new(stream: TcpStream, balancer: SocketAddr, deadline: Instant) -> io::Result<Self> {
        stream.set_nonblocking(true)?;
        Ok(Gate { stream, balancer, deadline, buf: Vec::new() })
    }

    /// Reads what is there. `Ok(Some(from))` once the header is whole. `Ok(None)`: wait until
    /// the socket is readable and call again.
    pub fn step(&mut self) -> Result<Option<Origin>, Refused> {
        let mut peek = [0u8; MAX_V2];
        let room = MAX_V2 - self.buf.len();
        let n = loop {
            // SAFETY: `peek` is valid for `room` bytes; MSG_PEEK leaves them in the socket.
            let n = unsafe {
                libc::recv(self.stream.as_raw_fd(), peek.as_mut_ptr().cast(), room, libc::MSG_PEEK)
            };
            if n >= 0 {
                break n as usize;
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(None),
                _ => return Err(Refused::Io(err)),
            }
        };
        if n == 0 {
            return Err(Refused::Closed);
        }
        let mut all = std::mem::take(&mut self.buf);
        all.extend_from_slice(&peek[..n]);
        let parsed = proxy::parse(&all).map_err(Refused::Malformed)?;
        // Every byte up to the header's end (or all of them, when it has not ended yet) belongs
        // to the header: take exactly those off the socket.
        let (take, done) = match parsed {
            Parsed::Complete(h) => (h.len - (all.len() - n), Some(h)),
            Parsed::Incomplete => (n, None),
        };
        consume(&self.stream, take).map_err(Refused::Io)?;
        all.truncate(all.len() - n + take);
        self.buf = all;
        Ok(done.map(|h| match h.addrs {
            Some(a) => {
                Origin::Client(SocketAddr::new(a.source.ip().to_canonical(), a.source.port()))
            }
            None => Origin::Balancer(self.balancer),
        }))
    }

    /// Gives the connection back once the header is read.
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }
}

/// Takes `n` bytes that a peek showed are there.
fn consume(stream: &TcpStream, mut n: usize) -> io::Result<()> {
    let mut sink = [0u8; MAX_V2];
    while n > 0 {
        // SAFETY: `sink` is valid for `n <= MAX_V2` bytes.
        let got = unsafe { libc::recv(stream.as_raw_fd(), sink.as_mut_ptr().cast(), n, 0) };
        match got {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            g if g > 0 => n -= g as usize,
            _ => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
    Ok(())
}

/// Logs a refused header: the connection is then closed without a reply.
pub fn log_refused(balancer: SocketAddr, why: &Refused) {
    crate::ops::metrics::inc(crate::ops::metrics::Counter::ProxyRefused);
    tracing::warn!(%balancer, "closed a connection from a trusted balancer: {why}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    #[test]
    fn a_gate_takes_the_header_and_nothing_after_it() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (sock, balancer) = listener.accept().unwrap();
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        let mut gate = Gate::new(sock, balancer, deadline).unwrap();
        assert!(gate.step().unwrap().is_none(), "nothing sent yet");
        client.write_all(b"PROXY TCP4 192.0.2.9 127.0.0.1 4").unwrap();
        zocalo_poller::fds::wait_one(gate.stream.as_raw_fd(), false, deadline - Instant::now())
            .unwrap();
        assert!(gate.step().unwrap().is_none(), "half a header");
        client.write_all(b"000 21\r\nUSER x\r\n").unwrap();
        let peer = loop {
            zocalo_poller::fds::wait_one(gate.stream.as_raw_fd(), false, deadline - Instant::now())
                .unwrap();
            if let Some(peer) = gate.step().unwrap() {
                break peer;
            }
        };
        assert_eq!(peer, Origin::Client("192.0.2.9:4000".parse().unwrap()));
        let mut rest = [0u8; 8];
        let mut stream = gate.into_stream();
        stream.set_nonblocking(false).unwrap();
        std::io::Read::read_exact(&mut stream, &mut rest).unwrap();
        assert_eq!(&rest, b"USER x\r\n");
    }
}
