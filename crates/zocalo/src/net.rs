//! Sockets as the notes describe them: socket, BIND (with SO_REUSEADDR, and IPV6_V6ONLY so IPv4
//! and IPv6 get their own listeners), LISTEN with a chosen backlog; and the passive data ports.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU32, Ordering};

use socket2::{Domain, Socket, Type};

/// Backlog of a passive data listener. One connection is expected, but a backlog of 1 makes
/// the kernel drop a SYN that races an earlier one (a client retrying, a scanner), and a dropped
/// SYN costs the client a one-second retransmission.
const PASSIVE_BACKLOG: i32 = 8;

/// Binds and listens. `reuse_port` lets several event loops share one port (SO_REUSEPORT).
pub fn listen(addr: SocketAddr, backlog: i32, reuse_port: bool) -> io::Result<TcpListener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), None)?;
    sock.set_reuse_address(true)?;
    if reuse_port {
        sock.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.bind(&addr.into())?;
    sock.listen(backlog)?;
    Ok(sock.into())
}

/// Opens a passive data listener on `ip`, on a port from `range` if one is set (trying each,
/// starting from a rotating offset so concurrent sessions do not collide), else any port.
pub fn open_passive(ip: IpAddr, range: Option<&RangeInclusive<u16>>) -> io::Result<TcpListener> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let Some(range) = range else {
        return listen(SocketAddr::new(ip, 0), PASSIVE_BACKLOG, false);
    };
    let (start, len) = (u32::from(*range.start()), u32::from(*range.end() - *range.start()) + 1);
    let offset = NEXT.fetch_add(1, Ordering::Relaxed).wrapping_add(std::process::id());
    for i in 0..len {
        let port = (start + (offset.wrapping_add(i) % len)) as u16;
        match listen(SocketAddr::new(ip, port), PASSIVE_BACKLOG, false) {
            Ok(l) => return Ok(l),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(io::ErrorKind::AddrInUse, "no free passive port in range"))
}

/// Writes a short reply to a socket that will not get a session (over a limit), best effort.
pub fn refuse(stream: &std::net::TcpStream, reply: &[u8]) {
    use std::io::Write;
    let _ = stream.set_nonblocking(true);
    let _ = (&*stream).write(reply);
}
