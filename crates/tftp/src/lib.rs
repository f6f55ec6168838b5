//! TFTP for zocalo: packets, sans-IO transfer state machines, a server with selectable models,
//! and a client.
//!
//! Protocols: RFC 1350 (TFTP revision 2: RRQ, WRQ, DATA, ACK, ERROR; octet and netascii modes),
//! RFC 2347 (option extension, OACK), RFC 2348 (blksize), RFC 2349 (timeout and tsize) and
//! RFC 7440 (windowsize). Block numbers roll over from 65535 to 0, so files of any size move.
//!
//! - [`packet`]: the wire format, parsed into a validated [`Packet`] and emitted back.
//! - [`transfer`]: [`Sender`] and [`Receiver`], which contain no networking code and read no
//!   clock: they take datagrams and the current time, and return datagrams and deadlines.
//! - [`server`]: [`serve`] on a bound UDP socket, with a new socket per transfer, scheduled
//!   by a [`Model`]: iterative, thread per transfer, a fixed pool, or one event-loop thread
//!   on select, poll or epoll.
//! - [`client`]: [`get`] and [`put`].
//! - [`storage`]: the [`TftpStorage`] trait the server reads and writes through, and
//!   [`DirStorage`], a directory confined by `openat2(RESOLVE_BENEATH)`.
//!
//! No panic: nothing a peer sends can make this crate panic. Malformed packets (truncated,
//! missing NULs, unknown opcodes, oversized, duplicate options) are answered with an ERROR
//! packet (code 4, or 8 for option errors) or dropped.
//!
//! Not implemented: the obsolete "mail" mode (refused with ERROR 4), multicast (RFC 2090).

pub mod client;
mod driver;
pub mod netascii;
pub mod options;
pub mod packet;
pub mod server;
pub mod storage;
pub mod transfer;

pub use client::{get, put, ClientError, ClientOptions, ProgressFn};
pub use options::Options;
pub use packet::{ErrorCode, Mode, Packet, ParseError};
pub use server::{serve, Model, ServerConfig};
pub use storage::{DirStorage, TftpStorage};
pub use transfer::{Outcome, Receiver, Sender, Start, Transfer, TransferError};
/// The readiness backend of [`Model::Event`], re-exported from `zocalo-poller`.
pub use zocalo_poller::Backend;
