//! The blocking driver: runs one [`Transfer`] over one UDP socket, in the calling thread.
//!
//! The socket is not `connect`ed, because a connected UDP socket silently drops datagrams from
//! other addresses, and RFC 1350 wants those answered with ERROR 5 ("unknown transfer ID")
//! without disturbing the transfer. Instead the driver compares source addresses itself.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::packet::{emit_error, ErrorCode, Packet, MAX_PACKET_LEN};
use crate::transfer::Transfer;

/// How often a waiting driver looks at the shutdown flag.
pub(crate) const SHUTDOWN_POLL: Duration = Duration::from_millis(200);

/// Asks for a large receive buffer (the kernel caps it at `net.core.rmem_max`), so that a
/// window of large blocks arriving in one burst is not dropped. Best effort.
pub(crate) fn grow_receive_buffer(socket: &UdpSocket) {
    use std::os::fd::AsRawFd;
    let size: libc::c_int = 4 << 20;
    // SAFETY: a valid socket descriptor and a pointer to a c_int of the given length.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Who the transfer talks to.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Peer {
    /// The server side: the client's address is the transfer ID.
    Known(SocketAddr),
    /// The client side: the request goes to `server`; the first answer from the same IP (any
    /// port) fixes the server's transfer ID.
    Request { server: SocketAddr },
}

impl Peer {
    fn destination(&self) -> SocketAddr {
        match *self {
            Peer::Known(addr) | Peer::Request { server: addr } => addr,
        }
    }

    /// Whether a datagram from `from` belongs to the transfer; locks the peer on first answer.
    fn admit(&mut self, from: SocketAddr) -> bool {
        match *self {
            Peer::Known(addr) => addr == from,
            Peer::Request { server } if server.ip() == from.ip() => {
                *self = Peer::Known(from);
                true
            }
            Peer::Request { .. } => false,
        }
    }
}

/// When to stop driving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StopAt {
    /// As soon as the outcome is known (a client in a hurry).
    Outcome,
    /// Once the machine is finished, dally included (a server).
    Finished,
}

/// What can stop a transfer before it is finished.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Stops<'a> {
    /// The server is shutting down: the peer is told so (ERROR 0).
    pub shutdown: Option<&'a AtomicBool>,
    /// A newer request from the same port replaced this transfer: it is dropped without a
    /// word, since the client has already moved on.
    pub replaced: Option<&'a AtomicBool>,
}

impl Stops<'_> {
    fn set(flag: Option<&AtomicBool>) -> bool {
        flag.is_some_and(|flag| flag.load(Ordering::Relaxed))
    }
}

/// Drives `machine` until it stops. `on_progress` is called after every datagram handled.
pub(crate) fn drive(
    socket: &UdpSocket,
    machine: &mut dyn Transfer,
    mut peer: Peer,
    stop_at: StopAt,
    stops: Stops<'_>,
    on_progress: &mut dyn FnMut(u64, Option<u64>),
) -> io::Result<()> {
    let mut buf = vec![0u8; MAX_PACKET_LEN + 1];
    grow_receive_buffer(socket);
    loop {
        flush(socket, machine, peer.destination())?;
        if done(machine, stop_at) {
            return Ok(());
        }
        if Stops::set(stops.replaced) {
            tracing::debug!(peer = %peer.destination(), "transfer replaced by a new request");
            return Ok(());
        }
        if Stops::set(stops.shutdown) {
            machine.abort("server shutting down");
            flush(socket, machine, peer.destination())?;
            return Ok(());
        }
        step(socket, machine, &mut peer, &mut buf, on_progress)?;
    }
}

/// Waits for one datagram or the machine's deadline, whichever comes first, and feeds it in.
fn step(
    socket: &UdpSocket,
    machine: &mut dyn Transfer,
    peer: &mut Peer,
    buf: &mut [u8],
    on_progress: &mut dyn FnMut(u64, Option<u64>),
) -> io::Result<()> {
    let now = Instant::now();
    let deadline = machine.poll_timeout().unwrap_or(now + SHUTDOWN_POLL);
    if now >= deadline {
        machine.handle_timeout(now);
        return Ok(());
    }
    let wait = (deadline - now).clamp(Duration::from_millis(1), SHUTDOWN_POLL);
    socket.set_read_timeout(Some(wait))?;
    match receive(socket, buf)? {
        Some((len, from)) if peer.admit(from) => {
            machine.handle_datagram(&buf[..len], Instant::now());
            let (done, total) = machine.progress();
            on_progress(done, total);
        }
        Some((len, from)) => reject_stranger(socket, from, &buf[..len]),
        None => {}
    }
    Ok(())
}

fn done(machine: &dyn Transfer, stop_at: StopAt) -> bool {
    match stop_at {
        StopAt::Outcome => machine.outcome().is_some(),
        StopAt::Finished => machine.is_finished(),
    }
}

fn flush(socket: &UdpSocket, machine: &mut dyn Transfer, to: SocketAddr) -> io::Result<()> {
    while let Some(packet) = machine.poll_transmit() {
        socket.send_to(packet, to)?;
    }
    Ok(())
}

/// One datagram, or `None` when the read timed out (or was interrupted).
pub(crate) fn receive(
    socket: &UdpSocket,
    buf: &mut [u8],
) -> io::Result<Option<(usize, SocketAddr)>> {
    match socket.recv_from(buf) {
        Ok(got) => Ok(Some(got)),
        Err(err) if transient(&err) => Ok(None),
        Err(err) => Err(err),
    }
}

/// Errors that only mean "nothing arrived this time". ECONNREFUSED is one: an ICMP port
/// unreachable for an earlier datagram of ours, which the timeout deals with.
pub(crate) fn transient(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock
            | io::ErrorKind::TimedOut
            | io::ErrorKind::Interrupted
            | io::ErrorKind::ConnectionRefused
    )
}

/// RFC 1350 section 4: a packet from the wrong port gets ERROR 5, and the transfer goes on.
/// An ERROR is not answered, so that two confused hosts cannot ping-pong errors forever.
pub(crate) fn reject_stranger(socket: &UdpSocket, from: SocketAddr, datagram: &[u8]) {
    if matches!(Packet::parse(datagram), Ok(Packet::Error { .. })) {
        return;
    }
    let mut packet = Vec::new();
    emit_error(&mut packet, ErrorCode::UNKNOWN_TID, "unknown transfer ID");
    // Best effort: the stranger's fate does not matter to this transfer.
    let _ = socket.send_to(&packet, from);
}
