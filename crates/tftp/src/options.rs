//! Option negotiation: RFC 2347 (OACK), RFC 2348 (blksize), RFC 2349 (timeout, tsize) and
//! RFC 7440 (windowsize).
//!
//! A client lists the options it wants in its request; the server answers with an OACK naming
//! the ones it accepts, possibly with smaller values (blksize, windowsize), or with a plain
//! RFC 1350 reply if it accepts none. Options we do not know, and known options with a value we
//! cannot use (not a number, or out of range), are ignored, which RFC 2347 allows: the server
//! "simply omits" them from its OACK.

use std::time::Duration;

use crate::packet::{push_option, Mode, OptionList, DEFAULT_BLKSIZE, MAX_BLKSIZE, MIN_BLKSIZE};

/// Values of the options a transfer uses. `None` means the option is not negotiated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// RFC 2348 block size, 8..=65464.
    pub blksize: Option<u16>,
    /// RFC 2349 retransmission timeout in seconds, 1..=255.
    pub timeout: Option<u8>,
    /// RFC 2349 transfer size in bytes (0 in a read request asks the server for it).
    pub tsize: Option<u64>,
    /// RFC 7440 window size in blocks, 1..=65535.
    pub windowsize: Option<u16>,
}

impl Options {
    /// Reads the known options of a request or OACK, ignoring unknown and unusable ones.
    pub fn from_list(list: &OptionList<'_>) -> Options {
        let number = |name| list.find(name).and_then(|v: &str| v.parse::<u64>().ok());
        Options {
            blksize: number("blksize").filter(|n| *n >= u64::from(MIN_BLKSIZE)).map(clamp_u16),
            timeout: number("timeout").filter(|n| (1..=255).contains(n)).map(|n| n as u8),
            tsize: number("tsize"),
            windowsize: number("windowsize").filter(|n| *n >= 1).map(clamp_u16),
        }
    }

    /// Whether no option is set (then no OACK is sent).
    pub fn is_empty(&self) -> bool {
        *self == Options::default()
    }

    /// Appends the options as name/value pairs, as in a request or OACK.
    pub fn emit(&self, buf: &mut Vec<u8>) {
        if let Some(n) = self.blksize {
            push_option(buf, "blksize", n);
        }
        if let Some(n) = self.timeout {
            push_option(buf, "timeout", n);
        }
        if let Some(n) = self.tsize {
            push_option(buf, "tsize", n);
        }
        if let Some(n) = self.windowsize {
            push_option(buf, "windowsize", n);
        }
    }

    /// The transfer parameters these options give, with `default_timeout` when none was agreed.
    pub fn params(&self, default_timeout: Duration) -> Params {
        Params {
            blksize: self.blksize.unwrap_or(DEFAULT_BLKSIZE),
            windowsize: self.windowsize.unwrap_or(1),
            timeout: self.timeout.map_or(default_timeout, |s| Duration::from_secs(u64::from(s))),
        }
    }

    /// Client side: checks a server's OACK against what we asked for (RFC 2347: the server may
    /// only acknowledge options that were requested; RFC 2348/7440: it may lower blksize and
    /// windowsize but not raise them; RFC 2349: it must echo the timeout).
    pub fn accept_oack(&self, oack: &Options, list: &OptionList<'_>) -> Result<(), &'static str> {
        let unrequested = list.iter().any(|(name, _)| !self.requested(name));
        if unrequested {
            return Err("server acknowledged an option that was not requested");
        }
        if !within(oack.blksize, self.blksize) || !within(oack.windowsize, self.windowsize) {
            return Err("server raised blksize or windowsize");
        }
        if oack.timeout.is_some() && oack.timeout != self.timeout {
            return Err("server changed the timeout");
        }
        Ok(())
    }

    fn requested(&self, name: &str) -> bool {
        let asked = [
            ("blksize", self.blksize.is_some()),
            ("timeout", self.timeout.is_some()),
            ("tsize", self.tsize.is_some()),
            ("windowsize", self.windowsize.is_some()),
        ];
        asked.iter().any(|(n, set)| *set && n.eq_ignore_ascii_case(name))
    }
}

fn within(granted: Option<u16>, asked: Option<u16>) -> bool {
    match (granted, asked) {
        (Some(g), Some(a)) => g <= a,
        _ => true,
    }
}

fn clamp_u16(n: u64) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// The parameters a transfer runs with once negotiation is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// Bytes per DATA block; a shorter block ends the transfer.
    pub blksize: u16,
    /// Blocks sent before waiting for an ACK.
    pub windowsize: u16,
    /// Retransmission timeout.
    pub timeout: Duration,
}

/// Server limits applied to what clients ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest blksize granted.
    pub max_blksize: u16,
    /// Largest windowsize granted.
    pub max_windowsize: u16,
    /// Largest timeout (seconds) granted; a larger one is left out of the OACK.
    pub max_timeout: u8,
}

/// Which side of the transfer the server is on, for the tsize option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// RRQ: the server sends; it reports the file size (if known) in tsize.
    Read {
        /// Size of the file, if the storage knows it.
        size: Option<u64>,
    },
    /// WRQ: the server receives; it accepts the client's tsize.
    Write,
}

/// Server side: the options to grant for a request (the OACK contents; empty means no OACK).
pub fn negotiate(
    requested: &Options,
    mode: Mode,
    direction: Direction,
    limits: &Limits,
) -> Options {
    let tsize = match direction {
        // A netascii file's size on the wire differs from its size on disk: leave tsize out.
        Direction::Read { size } if mode == Mode::Octet => requested.tsize.and(size),
        Direction::Read { .. } => None,
        Direction::Write => requested.tsize,
    };
    Options {
        blksize: requested.blksize.map(|n| n.min(limits.max_blksize).min(MAX_BLKSIZE)),
        timeout: requested.timeout.filter(|t| *t <= limits.max_timeout),
        tsize,
        windowsize: requested.windowsize.map(|n| n.min(limits.max_windowsize).max(1)),
    }
}
