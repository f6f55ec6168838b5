//! The TFTP client: [`get`] and [`put`] one file, with optional RFC 2347 options.
//!
//! Each call binds a fresh UDP socket on port 0 (the client's transfer ID), sends the request
//! to the server's port, and from the first answer on talks only to the port that answered
//! (RFC 1350 section 4); datagrams from any other port get ERROR 5.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::driver::{drive, Peer, StopAt, Stops};
use crate::options::Options;
use crate::packet::Mode;
use crate::transfer::{self, Outcome, Receiver, Sender, Start, Transfer, TransferError};

/// A progress callback: bytes moved so far, and the total if known.
pub type ProgressFn = Arc<dyn Fn(u64, Option<u64>) + Send + Sync>;

/// What a client asks for.
#[derive(Clone)]
pub struct ClientOptions {
    /// Transfer mode.
    pub mode: Mode,
    /// RFC 2348 blksize to ask for.
    pub blksize: Option<u16>,
    /// RFC 7440 windowsize to ask for.
    pub windowsize: Option<u16>,
    /// RFC 2349 timeout option (seconds) to ask for.
    pub timeout: Option<u8>,
    /// RFC 2349 tsize: ask for (get) or announce (put, when the size is known) the size.
    pub tsize: bool,
    /// Retransmission timeout used unless a timeout option is agreed.
    pub retransmit: Duration,
    /// Timeouts in a row before giving up.
    pub max_retries: u32,
    /// Called as the transfer makes progress.
    pub progress: Option<ProgressFn>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            mode: Mode::Octet,
            blksize: None,
            windowsize: None,
            timeout: None,
            tsize: false,
            retransmit: Duration::from_secs(1),
            max_retries: 5,
            progress: None,
        }
    }
}

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field("mode", &self.mode)
            .field("blksize", &self.blksize)
            .field("windowsize", &self.windowsize)
            .field("timeout", &self.timeout)
            .field("tsize", &self.tsize)
            .field("retransmit", &self.retransmit)
            .field("max_retries", &self.max_retries)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

impl ClientOptions {
    fn requested(&self, tsize: Option<u64>) -> Options {
        Options {
            blksize: self.blksize,
            timeout: self.timeout,
            tsize: tsize.filter(|_| self.tsize),
            windowsize: self.windowsize,
        }
    }

    fn config(&self) -> transfer::Config {
        transfer::Config {
            timeout: self.retransmit,
            max_retries: self.max_retries,
            first_answer: None,
        }
    }
}

/// Why a client transfer failed.
#[derive(Debug)]
pub enum ClientError {
    /// The local socket failed.
    Io(io::Error),
    /// The transfer failed (server error, timeout, local file error...).
    Transfer(TransferError),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Io(err) => write!(f, "socket error: {err}"),
            ClientError::Transfer(err) => err.fmt(f),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Io(err) => Some(err),
            ClientError::Transfer(err) => Some(err),
        }
    }
}

impl From<io::Error> for ClientError {
    fn from(err: io::Error) -> Self {
        ClientError::Io(err)
    }
}

/// Downloads `path` from `server` into `dest`; returns the bytes written.
pub fn get(
    server: SocketAddr,
    path: &str,
    dest: &mut dyn Write,
    opts: &ClientOptions,
) -> Result<u64, ClientError> {
    let start = client_start(path, opts, opts.tsize.then_some(0));
    let mut receiver = Receiver::new(dest, opts.mode, start, opts.config(), Instant::now());
    run(server, &mut receiver, opts)
}

/// Uploads `source` to `path` on `server`; `size` is announced with tsize when
/// [`ClientOptions::tsize`] is set. Returns the bytes sent.
pub fn put(
    server: SocketAddr,
    path: &str,
    source: &mut dyn Read,
    size: Option<u64>,
    opts: &ClientOptions,
) -> Result<u64, ClientError> {
    let start = client_start(path, opts, size);
    let mut sender = Sender::new(source, opts.mode, start, opts.config(), Instant::now());
    run(server, &mut sender, opts)
}

fn client_start(path: &str, opts: &ClientOptions, tsize: Option<u64>) -> Start {
    Start::Client { filename: path.to_string(), mode: opts.mode, requested: opts.requested(tsize) }
}

fn run(
    server: SocketAddr,
    machine: &mut dyn Transfer,
    opts: &ClientOptions,
) -> Result<u64, ClientError> {
    let socket = UdpSocket::bind(SocketAddr::new(unspecified(server.ip()), 0))?;
    let mut report = |done, total| {
        if let Some(progress) = &opts.progress {
            progress(done, total);
        }
    };
    let peer = Peer::Request { server };
    drive(&socket, machine, peer, StopAt::Outcome, Stops::default(), &mut report)?;
    match machine.take_outcome() {
        Some(Outcome::Complete { bytes }) => Ok(bytes),
        Some(Outcome::Failed(err)) => Err(ClientError::Transfer(err)),
        None => Err(ClientError::Transfer(TransferError::TimedOut)),
    }
}

fn unspecified(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}
