//! Sans-IO transfer state machines: a [`Sender`] of DATA blocks and a [`Receiver`] that
//! acknowledges them, for either end of a transfer (RFC 1350, with RFC 2347 OACK negotiation,
//! RFC 2348 blksize, RFC 2349 timeout/tsize and RFC 7440 windowsize).
//!
//! These types contain no networking code and never read a clock: datagrams come in as byte
//! slices, time comes in as an [`Instant`] argument, and packets to send come out as byte
//! slices. That keeps them testable in a simulated network and lets any driver run them: the
//! blocking drivers in this crate, or an event loop later.
//!
//! # Driving a transfer
//!
//! Every machine implements [`Transfer`]. A driver loops:
//!
//! 1. send every datagram [`Transfer::poll_transmit`] returns, until it returns `None`;
//! 2. stop if [`Transfer::is_finished`] (or, not waiting for the final dally, if
//!    [`Transfer::outcome`] is `Some`);
//! 3. wait for a datagram from the peer or for [`Transfer::poll_timeout`], then call
//!    [`Transfer::handle_datagram`] or [`Transfer::handle_timeout`], and go back to 1.
//!
//! Only the peer's transfer ID may feed `handle_datagram`: checking the source address is the
//! driver's job.
//!
//! # Retransmission
//!
//! Only a timeout retransmits. A duplicate ACK is ignored, so a delayed ACK can never double
//! the DATA stream (the Sorcerer's Apprentice bug, RFC 1123 section 4.2.3.1). With a window
//! (RFC 7440), an ACK for a block inside the window that was sent slides the window to the
//! block after it and sends from there. After `max_retries` timeouts in a row without progress
//! the transfer fails and sends an ERROR.
//!
//! # No panic
//!
//! No datagram, however malformed, and no I/O error makes these machines panic: bad input ends
//! the transfer with an ERROR packet (code 4 for an illegal operation) or is dropped.

mod receiver;
mod sender;

use std::fmt;
use std::io;
use std::time::{Duration, Instant};

pub use receiver::Receiver;
pub use sender::Sender;

use crate::options::Options;
use crate::packet::{emit_error, ErrorCode, Mode};

/// Inputs and outputs of a transfer state machine; see the [module docs](self) for the order
/// in which a driver calls them.
pub trait Transfer {
    /// Feeds one datagram from the peer.
    fn handle_datagram(&mut self, bytes: &[u8], now: Instant);
    /// Tells the machine that time has passed; call when [`Transfer::poll_timeout`] is due.
    fn handle_timeout(&mut self, now: Instant);
    /// The next datagram to send to the peer, if any.
    fn poll_transmit(&mut self) -> Option<&[u8]>;
    /// When [`Transfer::handle_timeout`] should next be called.
    fn poll_timeout(&self) -> Option<Instant>;
    /// Ends the transfer now, sending the peer an ERROR 0 with `message`.
    fn abort(&mut self, message: &str);
    /// How the transfer ended, once it has.
    fn outcome(&self) -> Option<&Outcome>;
    /// Moves the outcome out, for a driver that is done with the machine.
    fn take_outcome(&mut self) -> Option<Outcome>;
    /// Whether the machine needs nothing more (the outcome is known and any dally is over).
    fn is_finished(&self) -> bool;
    /// Bytes moved so far, and the total if known (file size or tsize).
    fn progress(&self) -> (u64, Option<u64>);
}

/// Settings every transfer needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Retransmission timeout used until (or unless) a timeout option is agreed.
    pub timeout: Duration,
    /// Timeouts in a row, without progress, before the transfer is abandoned.
    pub max_retries: u32,
    /// How long the peer has to answer at all (a server's first packet): until it does,
    /// retransmissions come at most a second apart and the transfer is given up after this,
    /// whatever timeout was agreed. `None`: only `max_retries` bounds it (a client's request).
    pub first_answer: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Config { timeout: Duration::from_secs(1), max_retries: 5, first_answer: None }
    }
}

/// How a transfer starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// The server side, after it accepted a request: `granted` are the options to acknowledge
    /// (an OACK is sent first unless empty); `total` is the transfer size if known.
    Server {
        /// Options to put in the OACK.
        granted: Options,
        /// File size (RRQ) or the client's tsize (WRQ), for progress reports.
        total: Option<u64>,
    },
    /// The client side: send a request for `filename` and negotiate `requested`.
    Client {
        /// Remote file name.
        filename: String,
        /// Transfer mode.
        mode: Mode,
        /// Options to ask for (empty: a plain RFC 1350 request).
        requested: Options,
    },
}

/// How a finished transfer ended.
#[derive(Debug)]
pub enum Outcome {
    /// Every byte arrived and was acknowledged.
    Complete {
        /// Payload bytes moved (after netascii conversion for a receiver).
        bytes: u64,
    },
    /// The transfer stopped early.
    Failed(TransferError),
}

/// Why a transfer failed.
#[derive(Debug)]
pub enum TransferError {
    /// The peer sent an ERROR packet.
    Peer {
        /// Its error code.
        code: ErrorCode,
        /// Its message.
        message: String,
    },
    /// The peer broke the protocol; we sent it an ERROR with this code.
    Protocol {
        /// The code we sent.
        code: ErrorCode,
        /// What was wrong.
        message: String,
    },
    /// No progress after the allowed number of retransmissions.
    TimedOut,
    /// Reading the source or writing the sink failed.
    Io(io::Error),
    /// [`Transfer::abort`] was called.
    Aborted(String),
}

impl fmt::Display for TransferError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransferError::Peer { code, message } => {
                write!(f, "peer sent error {}: {message}", code.0)
            }
            TransferError::Protocol { code, message } => {
                write!(f, "protocol error (sent error {}): {message}", code.0)
            }
            TransferError::TimedOut => f.write_str("transfer timed out"),
            TransferError::Io(err) => write!(f, "I/O error: {err}"),
            TransferError::Aborted(why) => write!(f, "aborted: {why}"),
        }
    }
}

impl std::error::Error for TransferError {}

impl TransferError {
    /// The text to put in the ERROR packet that reports this error to the peer.
    fn wire_message(&self) -> String {
        match self {
            TransferError::Protocol { message, .. } | TransferError::Aborted(message) => {
                message.clone()
            }
            TransferError::Io(err) => error_message_for(err).to_string(),
            other => other.to_string(),
        }
    }
}

/// The words that report a local I/O error to the peer (the detail, an OS error number, stays
/// in the server's log).
pub fn error_message_for(err: &io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => return "Disk full",
        Some(libc::EFBIG) => return "File too large",
        Some(libc::EISDIR) => return "Is a directory",
        Some(libc::EXDEV) | Some(libc::ELOOP) => return "Path leaves the served tree",
        Some(libc::EROFS) => return "Read-only file system",
        _ => {}
    }
    match err.kind() {
        io::ErrorKind::NotFound => "File not found",
        io::ErrorKind::PermissionDenied => "Access violation",
        io::ErrorKind::AlreadyExists => "File already exists",
        io::ErrorKind::InvalidInput => "Not a regular file",
        _ => "The server could not read or write the file",
    }
}

/// The TFTP error code that reports a local I/O error to the peer: the one mapping from
/// `io::Error` to the wire, used by the server and the transfers alike.
pub fn error_code_for(err: &io::Error) -> ErrorCode {
    match err.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG) => return ErrorCode::DISK_FULL,
        Some(libc::EXDEV) | Some(libc::ELOOP) | Some(libc::EISDIR) | Some(libc::EROFS) => {
            return ErrorCode::ACCESS_VIOLATION
        }
        _ => {}
    }
    match err.kind() {
        io::ErrorKind::NotFound => ErrorCode::FILE_NOT_FOUND,
        io::ErrorKind::PermissionDenied => ErrorCode::ACCESS_VIOLATION,
        io::ErrorKind::AlreadyExists => ErrorCode::FILE_EXISTS,
        _ => ErrorCode::NOT_DEFINED,
    }
}

/// Absolute block numbers count from 1 without wrapping; the wire number wraps 65535 -> 0.
fn wire(block: u64) -> u16 {
    (block & 0xffff) as u16
}

/// Retransmission timer with a bounded number of retries.
#[derive(Clone, Copy, Debug)]
struct Timer {
    deadline: Option<Instant>,
    timeout: Duration,
    retries: u32,
    max_retries: u32,
    started: Instant,
    /// The peer answered once (see [`Config::first_answer`]).
    answered: bool,
    first_answer: Option<Duration>,
}

/// The longest wait between retransmissions while the peer has not answered yet.
const UNANSWERED_RESEND: Duration = Duration::from_secs(1);

impl Timer {
    fn new(config: &Config, now: Instant) -> Self {
        let mut timer = Timer {
            deadline: None,
            timeout: config.timeout,
            retries: 0,
            max_retries: config.max_retries,
            started: now,
            answered: false,
            first_answer: config.first_answer,
        };
        timer.deadline = Some(now + timer.interval());
        timer
    }

    /// The wait before the next retransmission.
    fn interval(&self) -> Duration {
        match self.first_answer {
            Some(_) if !self.answered => self.timeout.min(UNANSWERED_RESEND),
            _ => self.timeout,
        }
    }

    /// Progress was made: reset the retry count and restart the clock.
    fn progress(&mut self, now: Instant) {
        self.answered = true;
        self.retries = 0;
        self.deadline = Some(now + self.timeout);
    }

    fn expired(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| now >= d)
    }

    /// Counts one retransmission; false when the retries are used up (or a peer that never
    /// answered had its time).
    fn retry(&mut self, now: Instant) -> bool {
        self.retries += 1;
        self.deadline = Some(now + self.interval());
        if let Some(first) = self.first_answer.filter(|_| !self.answered) {
            return now.duration_since(self.started) < first;
        }
        self.retries <= self.max_retries
    }

    fn stop(&mut self) {
        self.deadline = None;
    }
}

/// A one-packet outbox: the last control packet (request, OACK, ACK or ERROR), kept for
/// retransmission, and whether it is waiting to go out.
#[derive(Clone, Debug, Default)]
struct Outbox {
    packet: Vec<u8>,
    pending: bool,
}

impl Outbox {
    /// Replaces the packet with what `write` emits and queues it.
    fn set(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        self.packet.clear();
        write(&mut self.packet);
        self.pending = true;
    }

    fn error(&mut self, code: ErrorCode, message: &str) {
        self.set(|buf| emit_error(buf, code, message));
    }

    fn resend(&mut self) {
        self.pending = !self.packet.is_empty();
    }

    fn take(&mut self) -> Option<&[u8]> {
        std::mem::take(&mut self.pending).then_some(self.packet.as_slice())
    }
}

/// Emits a request packet for a client start.
fn emit_request(buf: &mut Vec<u8>, write: bool, filename: &str, mode: Mode, opts: &Options) {
    crate::packet::emit_request_header(buf, write, filename, mode);
    opts.emit(buf);
}

/// Emits an OACK with `opts`.
fn emit_oack(buf: &mut Vec<u8>, opts: &Options) {
    crate::packet::emit_oack_header(buf);
    opts.emit(buf);
}

/// Ends a transfer with `err`, queueing an ERROR for the peer when `code` is given.
fn fail(
    outcome: &mut Option<Outcome>,
    outbox: &mut Outbox,
    timer: &mut Timer,
    err: TransferError,
    code: Option<ErrorCode>,
) {
    if outcome.is_some() {
        return;
    }
    if let Some(code) = code {
        outbox.error(code, &err.wire_message());
    }
    timer.stop();
    *outcome = Some(Outcome::Failed(err));
}

/// A protocol error to report with ERROR 4.
fn illegal(message: &str) -> TransferError {
    TransferError::Protocol { code: ErrorCode::ILLEGAL_OPERATION, message: message.to_string() }
}
