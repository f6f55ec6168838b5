//! File hashes for HASH (draft-bryan-ftpext-hash) and the XSHA256, XSHA512, XSHA1, XMD5 and XCRC
//! commands (as ProFTPD's mod_digest and SFTPGo answer them). The session asks for one as
//! storage work, so it runs where the driver runs such work (never on an event loop's thread);
//! [`digest`] reads the file a chunk at a time and gives up past a deadline.

use std::io::{self, Read};
use std::time::SystemTime;

use sha1::Digest;

use crate::work::Cancel;

/// The algorithms offered; the first is the default of OPTS HASH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha256,
    Sha512,
    Sha1,
    Md5,
    Crc32,
}

pub const ALGORITHMS: [Algorithm; 5] =
    [Algorithm::Sha256, Algorithm::Sha512, Algorithm::Sha1, Algorithm::Md5, Algorithm::Crc32];

impl Algorithm {
    /// The name in FEAT, OPTS HASH and the HASH reply.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Sha512 => "SHA-512",
            Algorithm::Sha1 => "SHA-1",
            Algorithm::Md5 => "MD5",
            Algorithm::Crc32 => "CRC32",
        }
    }

    pub fn from_name(name: &str) -> Option<Algorithm> {
        ALGORITHMS.into_iter().find(|a| a.name().eq_ignore_ascii_case(name))
    }
}

/// Why a hash was not computed in time.
#[derive(Debug)]
pub struct TooSlow;

impl std::fmt::Display for TooSlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("hashing took too long; ask for a byte range")
    }
}

impl std::error::Error for TooSlow {}

enum State {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
    Sha1(sha1::Sha1),
    Md5(md5::Md5),
    Crc32(crc32fast::Hasher),
}

impl State {
    fn new(algorithm: Algorithm) -> State {
        match algorithm {
            Algorithm::Sha256 => State::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => State::Sha512(sha2::Sha512::new()),
            Algorithm::Sha1 => State::Sha1(sha1::Sha1::new()),
            Algorithm::Md5 => State::Md5(md5::Md5::new()),
            Algorithm::Crc32 => State::Crc32(crc32fast::Hasher::new()),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            State::Sha256(h) => h.update(bytes),
            State::Sha512(h) => h.update(bytes),
            State::Sha1(h) => h.update(bytes),
            State::Md5(h) => h.update(bytes),
            State::Crc32(h) => h.update(bytes),
        }
    }

    fn hex(self) -> String {
        let bytes: Vec<u8> = match self {
            State::Sha256(h) => h.finalize().to_vec(),
            State::Sha512(h) => h.finalize().to_vec(),
            State::Sha1(h) => h.finalize().to_vec(),
            State::Md5(h) => h.finalize().to_vec(),
            State::Crc32(h) => h.finalize().to_be_bytes().to_vec(),
        };
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Hashes at most `len` bytes of `reader` (already positioned at the range's start), giving up
/// with [`TooSlow`] once `clock` passes `deadline`, and at once when `cancel` is set (its
/// session is gone).
pub fn digest(
    algorithm: Algorithm,
    reader: &mut dyn Read,
    len: u64,
    clock: fn() -> SystemTime,
    deadline: SystemTime,
    cancel: &Cancel,
) -> io::Result<String> {
    let mut state = State::new(algorithm);
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = len;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = match reader.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        state.update(&buf[..n]);
        left -= n as u64;
        if clock() > deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, TooSlow));
        }
        if cancel.is_cancelled() {
            return Err(io::ErrorKind::Interrupted.into());
        }
    }
    Ok(state.hex())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(algorithm: Algorithm, data: &[u8]) -> String {
        let far = SystemTime::now() + std::time::Duration::from_secs(3600);
        let cancel = Cancel::default();
        digest(algorithm, &mut &data[..], data.len() as u64, SystemTime::now, far, &cancel).unwrap()
    }

    #[test]
    fn a_cancelled_hash_stops() {
        let far = SystemTime::now() + std::time::Duration::from_secs(3600);
        let cancel = Cancel::default();
        cancel.cancel();
        let mut endless = io::repeat(0);
        let err = digest(Algorithm::Md5, &mut endless, u64::MAX, SystemTime::now, far, &cancel);
        assert_eq!(err.unwrap_err().kind(), io::ErrorKind::Interrupted);
    }

    #[test]
    fn known_answers() {
        let abc = b"abc";
        assert_eq!(
            hex(Algorithm::Sha256, abc),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(hex(Algorithm::Sha1, abc), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(hex(Algorithm::Md5, abc), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(hex(Algorithm::Crc32, abc), "352441c2");
        assert!(hex(Algorithm::Sha512, abc).starts_with("ddaf35a193617aba"));
        assert_eq!(Algorithm::from_name("sha-512"), Some(Algorithm::Sha512));
        assert_eq!(Algorithm::from_name("SHA-3"), None);
    }

    #[test]
    fn a_range_and_a_deadline() {
        let far = SystemTime::now() + std::time::Duration::from_secs(3600);
        let part = digest(
            Algorithm::Md5,
            &mut &b"abcdef"[..],
            3,
            SystemTime::now,
            far,
            &Cancel::default(),
        )
        .unwrap();
        assert_eq!(part, hex(Algorithm::Md5, b"abc"));
        let past = SystemTime::UNIX_EPOCH;
        let err = digest(
            Algorithm::Md5,
            &mut &b"abcdef"[..],
            6,
            SystemTime::now,
            past,
            &Cancel::default(),
        )
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
