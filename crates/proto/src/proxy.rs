//! The PROXY protocol header (HAProxy's, versions 1 and 2) that a load balancer puts before a
//! connection's first byte to say whom the connection is really from.
//!
//! [`parse`] looks at the bytes received so far and says whether they hold a whole header, need
//! more, or can never become one. It never consumes past the header: the caller reads exactly
//! [`Header::len`] bytes off the socket (it peeks until then), so the client's first bytes after
//! the header (a TLS ClientHello, an upload's data) stay in the socket for whoever reads next.
//!
//! Version 1 is one text line of at most 107 bytes: `PROXY TCP4 SRC DST SPORT DPORT\r\n`
//! (`TCP6`, or `UNKNOWN` and anything up to the line end). Version 2 is a 16-byte binary prefix
//! (a 12-byte signature, version and command, family and protocol, the length of the rest) and
//! the addresses, then optional TLVs, which are skipped. A header longer than [`MAX_V2`] is
//! refused: HAProxy's own headers are far shorter, and a length field must not make the server
//! wait for (or hold) 64 KiB per connection.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The version 2 signature.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest version 1 header, CRLF included (the specification's limit).
pub const MAX_V1: usize = 107;
/// The longest version 2 header accepted (16-byte prefix and what follows it).
pub const MAX_V2: usize = 16 + 512;

/// A whole header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Its length in bytes: what to take off the socket.
    pub len: usize,
    /// The client's and the balancer's addresses; `None` for a `LOCAL` command (a health check
    /// of the balancer's own), for `UNKNOWN` and for families other than TCP over IPv4 or IPv6:
    /// the connection is then taken as coming from the balancer itself.
    pub addrs: Option<Addrs>,
}

/// The addresses a header carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addrs {
    /// The client's address, as the balancer saw it.
    pub source: SocketAddr,
    /// The address the client connected to (the balancer's).
    pub destination: SocketAddr,
}

/// What the bytes so far amount to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    Complete(Header),
    /// A header may still follow: read more (up to [`MAX_V2`] bytes in all).
    Incomplete,
}

/// Why the bytes can never be a header; the text goes into the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Neither signature.
    NotProxy,
    /// A v1 line longer than 107 bytes, or a v2 length past [`MAX_V2`].
    TooLong,
    /// A v1 line that does not follow the grammar (protocol, addresses, ports).
    BadV1,
    /// A v2 header with an unknown version or command, or addresses that do not fit its length.
    BadV2,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Error::NotProxy => "not a PROXY protocol header",
            Error::TooLong => "PROXY header too long",
            Error::BadV1 => "malformed PROXY v1 header",
            Error::BadV2 => "malformed PROXY v2 header",
        })
    }
}

impl std::error::Error for Error {}

/// Parses the start of a connection's bytes.
pub fn parse(buf: &[u8]) -> Result<Parsed, Error> {
    if buf.is_empty() {
        return Ok(Parsed::Incomplete);
    }
    if V2_SIGNATURE.starts_with(&buf[..buf.len().min(V2_SIGNATURE.len())]) {
        return parse_v2(buf);
    }
    if b"PROXY ".starts_with(&buf[..buf.len().min(6)]) {
        return parse_v1(buf);
    }
    Err(Error::NotProxy)
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, Error> {
    let scan = &buf[..buf.len().min(MAX_V1)];
    let Some(end) = scan.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() >= MAX_V1 {
            return Err(Error::TooLong);
        }
        // A bare LF, or any byte a header cannot hold, ends the wait at once.
        if scan.iter().any(|&b| b == b'\n' || !(b == b'\r' || (0x20..0x7f).contains(&b))) {
            return Err(Error::BadV1);
        }
        return Ok(Parsed::Incomplete);
    };
    let len = end + 2;
    let line = std::str::from_utf8(&buf[6..end]).map_err(|_| Error::BadV1)?;
    let mut words = line.split(' ');
    let addrs = match words.next() {
        Some("UNKNOWN") => None,
        Some(proto @ ("TCP4" | "TCP6")) => {
            let mut next = || words.next().ok_or(Error::BadV1);
            let (src, dst, sport, dport) = (next()?, next()?, next()?, next()?);
            if words.next().is_some() {
                return Err(Error::BadV1);
            }
            let ip = |s: &str| -> Result<IpAddr, Error> {
                match proto {
                    "TCP4" => s.parse::<Ipv4Addr>().map(IpAddr::V4).map_err(|_| Error::BadV1),
                    _ => s.parse::<Ipv6Addr>().map(IpAddr::V6).map_err(|_| Error::BadV1),
                }
            };
            let port = |s: &str| -> Result<u16, Error> {
                // The grammar has no sign and no leading zeros.
                if s.is_empty() || s.len() > 5 || (s.len() > 1 && s.starts_with('0')) {
                    return Err(Error::BadV1);
                }
                if !s.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(Error::BadV1);
                }
                s.parse().map_err(|_| Error::BadV1)
            };
            Some(Addrs {
                source: SocketAddr::new(ip(src)?, port(sport)?),
                destination: SocketAddr::new(ip(dst)?, port(dport)?),
            })
        }
        _ => return Err(Error::BadV1),
    };
    Ok(Parsed::Complete(Header { len, addrs }))
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, Error> {
    if buf.len() < 16 {
        return Ok(Parsed::Incomplete);
    }
    let (ver_cmd, family) = (buf[12], buf[13]);
    let rest = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let len = 16 + rest;
    if ver_cmd >> 4 != 2 {
        return Err(Error::BadV2);
    }
    if len > MAX_V2 {
        return Err(Error::TooLong);
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(Error::BadV2),
    };
    if buf.len() < len {
        return Ok(Parsed::Incomplete);
    }
    let body = &buf[16..len];
    let addrs = match family {
        // TCP over IPv4: two addresses and two ports.
        0x11 => {
            let a = body.get(..12).ok_or(Error::BadV2)?;
            let ip = |i: usize| IpAddr::V4(Ipv4Addr::new(a[i], a[i + 1], a[i + 2], a[i + 3]));
            let port = |i: usize| u16::from_be_bytes([a[i], a[i + 1]]);
            Some(Addrs {
                source: SocketAddr::new(ip(0), port(8)),
                destination: SocketAddr::new(ip(4), port(10)),
            })
        }
        // TCP over IPv6.
        0x21 => {
            let a = body.get(..36).ok_or(Error::BadV2)?;
            let ip = |i: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&a[i..i + 16]);
                IpAddr::V6(Ipv6Addr::from(octets))
            };
            let port = |i: usize| u16::from_be_bytes([a[i], a[i + 1]]);
            Some(Addrs {
                source: SocketAddr::new(ip(0), port(32)),
                destination: SocketAddr::new(ip(16), port(34)),
            })
        }
        // UNSPEC, UDP, unix sockets: nothing the server can use as a client address.
        _ => None,
    };
    Ok(Parsed::Complete(Header { len, addrs: if local { None } else { addrs } }))
}

/// A version 2 header for `addrs` (`None`: a `LOCAL` one), for tests and the fuzz target.
pub fn encode_v2(addrs: Option<Addrs>) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    let Some(Addrs { source, destination }) = addrs else {
        out.extend_from_slice(&[0x20, 0x00, 0, 0]);
        return out;
    };
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.extend_from_slice(&[0x21, 0x11, 0, 12]);
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.extend_from_slice(&[0x21, 0x21, 0, 36]);
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
        }
    }
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&destination.port().to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(src: &str, dst: &str) -> Option<Addrs> {
        Some(Addrs { source: src.parse().unwrap(), destination: dst.parse().unwrap() })
    }

    #[test]
    fn v1_tcp4_and_tcp6() {
        let line = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 21\r\nUSER x\r\n";
        let want = Header { len: 44, addrs: addrs("192.0.2.7:56324", "198.51.100.1:21") };
        assert_eq!(parse(line), Ok(Parsed::Complete(want)));
        let line = b"PROXY TCP6 2001:db8::1 ::1 1 65535\r\n";
        let Ok(Parsed::Complete(h)) = parse(line) else { panic!() };
        assert_eq!(h.addrs, addrs("[2001:db8::1]:1", "[::1]:65535"));
        assert_eq!(h.len, line.len());
        let Ok(Parsed::Complete(h)) = parse(b"PROXY UNKNOWN whatever\r\n") else { panic!() };
        assert_eq!(h.addrs, None);
    }

    #[test]
    fn v1_needs_more_until_the_line_ends() {
        let line = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 21\r\n";
        for n in 0..line.len() {
            assert_eq!(parse(&line[..n]), Ok(Parsed::Incomplete), "prefix of {n} bytes");
        }
    }

    #[test]
    fn v1_refusals() {
        for bad in [
            &b"PROXY TCP4 999.1.1.1 1.1.1.1 1 2\r\n"[..],
            b"PROXY TCP4 1.1.1.1 1.1.1.1 1 65536\r\n",
            b"PROXY TCP4 1.1.1.1 1.1.1.1 01 2\r\n",
            b"PROXY TCP4 1.1.1.1 1.1.1.1 +1 2\r\n",
            b"PROXY TCP4 ::1 1.1.1.1 1 2\r\n",
            b"PROXY TCP6 1.1.1.1 ::1 1 2\r\n",
            b"PROXY TCP4 1.1.1.1 1.1.1.1 1 2 3\r\n",
            b"PROXY TCP4 1.1.1.1 1.1.1.1 1\r\n",
            b"PROXY UDP4 1.1.1.1 1.1.1.1 1 2\r\n",
            b"PROXY TCP4 1.1.1.1 1.1.1.1 1 2\n",
            b"PROXY \x80",
        ] {
            assert_eq!(parse(bad), Err(Error::BadV1), "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(parse(&[b'X'; 20]), Err(Error::NotProxy));
        assert_eq!(parse(b"GET / HTTP/1.0\r\n"), Err(Error::NotProxy));
        assert_eq!(parse(b"USER anonymous\r\n"), Err(Error::NotProxy));
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(MAX_V1, b'a');
        assert_eq!(parse(&long), Err(Error::TooLong));
    }

    #[test]
    fn v2_round_trips_and_waits_for_its_length() {
        for a in [addrs("192.0.2.7:56324", "198.51.100.1:21"), addrs("[2001:db8::1]:9", "[::1]:21")]
        {
            let mut bytes = encode_v2(a);
            let len = bytes.len();
            for n in 0..len {
                assert_eq!(parse(&bytes[..n]), Ok(Parsed::Incomplete), "prefix of {n} bytes");
            }
            bytes.extend_from_slice(b"\x16\x03\x01 a ClientHello");
            assert_eq!(parse(&bytes), Ok(Parsed::Complete(Header { len, addrs: a })));
        }
        assert_eq!(parse(&encode_v2(None)), Ok(Parsed::Complete(Header { len: 16, addrs: None })));
    }

    #[test]
    fn v2_skips_tlvs_and_refuses_bad_ones() {
        let mut h = encode_v2(addrs("10.0.0.1:1000", "10.0.0.2:21"));
        h[15] += 7;
        h.extend_from_slice(&[0x04, 0, 4, 1, 2, 3, 4]);
        let Ok(Parsed::Complete(got)) = parse(&h) else { panic!() };
        assert_eq!((got.len, got.addrs), (h.len(), addrs("10.0.0.1:1000", "10.0.0.2:21")));

        let mut short = encode_v2(addrs("10.0.0.1:1000", "10.0.0.2:21"));
        short[15] = 4;
        short.truncate(20);
        assert_eq!(parse(&short), Err(Error::BadV2), "addresses longer than the header");
        let mut huge = encode_v2(None);
        huge[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(parse(&huge), Err(Error::TooLong));
        let mut version = encode_v2(None);
        version[12] = 0x10;
        assert_eq!(parse(&version), Err(Error::BadV2));
        let mut command = encode_v2(None);
        command[12] = 0x22;
        assert_eq!(parse(&command), Err(Error::BadV2));
        let mut unix = encode_v2(None);
        unix[12..14].copy_from_slice(&[0x21, 0x31]);
        let Ok(Parsed::Complete(got)) = parse(&unix) else { panic!() };
        assert_eq!(got.addrs, None, "a family without a TCP address");
    }
}
