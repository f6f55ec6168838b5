//! Sockets as the notes describe them: socket, BIND (with SO_REUSEADDR, and IPV6_V6ONLY so IPv4
//! and IPv6 get their own listeners), LISTEN with a chosen backlog; and the passive data ports.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::ops::RangeInclusive;
use std::str::FromStr;
use std::sync::OnceLock;

use socket2::{Domain, Socket, Type};
use zocalo_proto::reply::Reply;

/// Backlog of a passive data listener. One connection is expected, but a backlog of 1 makes
/// the kernel drop a SYN that races an earlier one (a client retrying, a scanner), and a dropped
/// SYN costs the client a one-second retransmission.
const PASSIVE_BACKLOG: i32 = 8;

/// Binds and listens for a server's own address: with `reuse_port` (so that the extra loops of
/// `epoll:N` can join it), first checks with a plain bind that no other server listens there,
/// since SO_REUSEPORT would otherwise let a second server share the port and its clients.
pub fn listen_first(addr: SocketAddr, backlog: i32, reuse_port: bool) -> io::Result<TcpListener> {
    if reuse_port && addr.port() != 0 {
        let probe = Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), None)?;
        probe.set_reuse_address(true)?;
        if addr.is_ipv6() {
            probe.set_only_v6(true)?;
        }
        probe.bind(&addr.into())?;
    }
    listen(addr, backlog, reuse_port)
}

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

/// Opens a passive data listener on `ip`, on a port from `range` if one is set, else on an odd
/// port of the kernel's ephemeral range (the half that connect(2) leaves to bind(2)).
///
/// The port is chosen here, not by bind(2) with port 0: every data connection the server
/// closes leaves a TIME_WAIT socket on its port for a minute, and the kernel's own search
/// (`inet_csk_find_open_port`) skips each such port only after a conflict check under a lock.
/// At a few thousand sessions per second most of the range is in TIME_WAIT, and a profile of
/// the `sessions` benchmark showed that search taking most of the CPU. Binding a chosen
/// port with SO_REUSEADDR coexists with our own TIME_WAIT sockets (they inherit the flag), so
/// the first try almost always succeeds. Ports are tried onwards from a random one, so that
/// neither concurrent sessions nor a third party can guess the next port; after
/// [`DEFAULT_TRIES`] misses in the default range the kernel picks after all.
pub fn open_passive(ip: IpAddr, range: Option<&RangeInclusive<u16>>) -> io::Result<TcpListener> {
    // std's per-map random keys, seeded from the OS: a random number without a dependency.
    let offset = RandomState::new().build_hasher().finish() as u32;
    let (first, count, step, tries) = match range {
        Some(r) => {
            let count = u32::from(*r.end() - *r.start()) + 1;
            (u32::from(*r.start()), count, 1, count)
        }
        None => {
            let (low, high) = *ephemeral_range();
            let first = u32::from(low | 1);
            let count = (u32::from(high).saturating_sub(first)) / 2 + 1;
            (first, count, 2, DEFAULT_TRIES.min(count))
        }
    };
    for i in 0..tries {
        let port = (first + step * (offset.wrapping_add(i) % count)) as u16;
        match listen(SocketAddr::new(ip, port), PASSIVE_BACKLOG, false) {
            Ok(l) => return Ok(l),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(e),
        }
    }
    match range {
        Some(_) => Err(io::Error::new(io::ErrorKind::AddrInUse, "no free passive port in range")),
        None => listen(SocketAddr::new(ip, 0), PASSIVE_BACKLOG, false),
    }
}

/// Ports tried in the default passive range before leaving the choice to the kernel.
const DEFAULT_TRIES: u32 = 32;

/// The kernel's ephemeral port range (`net.ipv4.ip_local_port_range`, which IPv6 shares), read
/// once; Linux's default if it cannot be read.
pub(crate) fn ephemeral_range() -> &'static (u16, u16) {
    static RANGE: OnceLock<(u16, u16)> = OnceLock::new();
    RANGE.get_or_init(|| {
        let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range");
        let parsed = text.ok().and_then(|t| {
            let mut it = t.split_whitespace().map(str::parse::<u16>);
            match (it.next()?, it.next()?) {
                (Ok(low), Ok(high)) if 1024 <= low && low < high => Some((low, high)),
                _ => None,
            }
        });
        parsed.unwrap_or((32768, 60999))
    })
}

/// Writes a short reply to a socket that will not get a session (over a limit), best effort.
pub fn refuse(stream: &std::net::TcpStream, reply: Reply<'_>) {
    use std::io::Write;
    let _ = stream.set_nonblocking(true);
    let _ = (&*stream).write(&reply.to_bytes());
}

/// True for the accept(2) errors that say the process or the system is out of descriptors
/// (or buffers): the pending connection stays in the backlog, so the listener stays ready.
pub fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

/// One descriptor held back for the moment the process runs out (the trick of nginx and
/// libev): on EMFILE the accept loop frees it, accepts the waiting client, answers it `421` and
/// closes it, then takes the descriptor back. So at the limit the backlog drains with a clear
/// reply instead of the listener staying ready forever, and the loop never spins on it.
pub struct FdReserve {
    spare: std::sync::Mutex<Option<std::fs::File>>,
    refused: std::sync::atomic::AtomicU64,
    log_every: crate::ops::logs::Throttle,
}

/// How often the descriptor-limit warning may be logged.
const LIMIT_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl FdReserve {
    pub fn new() -> Self {
        FdReserve {
            spare: std::sync::Mutex::new(std::fs::File::open("/dev/null").ok()),
            refused: std::sync::atomic::AtomicU64::new(0),
            log_every: crate::ops::logs::Throttle::new(LIMIT_LOG_EVERY),
        }
    }

    /// Called when accept(2) failed with [`out_of_descriptors`]: refuses one waiting client
    /// with 421. False when none could be taken (the reserve was gone too): the caller pauses
    /// accepting for a moment instead of retrying at once.
    pub fn shed(&self, listener: &TcpListener, error: &io::Error) -> bool {
        let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
        let freed = spare.take().is_some();
        let shed = freed
            && match listener.accept() {
                Ok((stream, _)) => {
                    crate::ops::metrics::inc(crate::ops::metrics::Counter::RefusedDescriptors);
                    refuse(
                        &stream,
                        Reply::new(421, "Server out of file descriptors; try again later."),
                    );
                    true
                }
                Err(_) => false,
            };
        *spare = std::fs::File::open("/dev/null").ok();
        drop(spare);
        if shed {
            self.refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.log(error);
        shed
    }

    /// Logs the condition at most once per [`LIMIT_LOG_EVERY`], with how many clients were
    /// refused since the last line.
    fn log(&self, error: &io::Error) {
        if self.log_every.allow().is_none() {
            return;
        }
        let refused = self.refused.swap(0, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(
            refused,
            "cannot accept: {error}; new clients get 421 until descriptors free up \
             (raise the limit with LimitNOFILE= or ulimit -n)"
        );
    }
}

impl Default for FdReserve {
    fn default() -> Self {
        Self::new()
    }
}

/// An address range in CIDR notation (`10.0.0.0/8`, `::1/128`; a bare address is one host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    bits: u8,
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("--proxy-protocol-from wants an address range like 10.0.0.0/24, got {s:?}");
        let (addr, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let net: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            Some(b) => b.parse::<u8>().ok().filter(|b| *b <= max).ok_or_else(bad)?,
            None => max,
        };
        Ok(Cidr { net, bits })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.bits)
    }
}

impl Cidr {
    /// Whether `ip` is in the range (an IPv4-mapped IPv6 address counts as its IPv4 one).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(&net.octets(), &ip.octets(), self.bits),
            (IpAddr::V6(net), IpAddr::V6(ip)) => prefix_eq(&net.octets(), &ip.octets(), self.bits),
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let (whole, rest) = (usize::from(bits / 8), bits % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    rest == 0 || (a[whole] ^ b[whole]) >> (8 - rest) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[test]
    fn default_passive_ports_are_odd_ports_of_the_ephemeral_range() {
        let (low, high) = *ephemeral_range();
        let listeners: Vec<_> = (0..4).map(|_| open_passive(LOOPBACK, None).unwrap()).collect();
        let ports: Vec<u16> = listeners.iter().map(|l| l.local_addr().unwrap().port()).collect();
        for &port in &ports {
            assert!((low..=high).contains(&port), "{port} outside {low}-{high}");
            assert_eq!(port % 2, 1, "{port} is even: connect(2)'s half of the range");
        }
        let mut distinct = ports.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
    }

    #[test]
    fn a_configured_range_is_kept_to() {
        let probe = listen(SocketAddr::new(LOOPBACK, 0), 1, false).unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        let range = port..=port;
        let first = open_passive(LOOPBACK, Some(&range)).unwrap();
        assert_eq!(first.local_addr().unwrap().port(), port);
        let err = open_passive(LOOPBACK, Some(&range)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }

    #[test]
    fn ranges() {
        let c: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.1.0.1".parse().unwrap()));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let odd: Cidr = "192.168.0.0/23".parse().unwrap();
        assert!(odd.contains("192.168.1.9".parse().unwrap()));
        assert!(!odd.contains("192.168.2.9".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("10.0.0.1".parse().unwrap()));
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains("8.8.8.8".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nonsense", "10.0.0.0/", "::/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }
}
