//! TFTP packets on the wire: a validated [`Packet`] parsed from bytes and emitted back.
//!
//! The five packet types of RFC 1350 (section 5) plus the option acknowledgment of RFC 2347:
//!
//! ```text
//!  2 bytes    string   1 byte   string   1 byte   [string 1 byte string 1 byte]*
//! | 01/02  | filename |   0  |   mode   |   0  |  opt  |  0  |  value  |  0  |   RRQ / WRQ
//! | 03     | block #  | data (0..blksize bytes)                                  DATA
//! | 04     | block #  |                                                          ACK
//! | 05     | errcode  | errmsg  | 0 |                                            ERROR
//! | 06     | opt | 0 | value | 0 | ...                                           OACK
//! ```
//!
//! Parsing is "parse, don't validate" in the smoltcp manner: [`Packet::parse`] checks everything
//! (opcode, NUL terminators, UTF-8, known mode, option pairs without duplicates, sizes) and returns
//! a value that borrows the datagram, so the rest of the crate never re-checks bytes.
//! [`Packet::emit`] appends the wire form to a buffer; [`Packet::buffer_len`] says how long it is.
//!
//! No panic: no input, however malformed, makes this module panic; every failure is a
//! [`ParseError`], which [`ParseError::error_code`] maps to the ERROR packet to answer with.

use std::fmt;

/// Largest DATA payload RFC 2348 allows (a blksize of 65464 fits an IPv4 UDP datagram).
pub const MAX_BLKSIZE: u16 = 65464;
/// Smallest blksize RFC 2348 allows.
pub const MIN_BLKSIZE: u16 = 8;
/// RFC 1350's block size, used when no blksize option was negotiated.
pub const DEFAULT_BLKSIZE: u16 = 512;
/// RFC 2347: "the final packet ... must not exceed 512 octets" for a request with options.
pub const MAX_REQUEST_LEN: usize = 512;
/// The longest datagram any TFTP packet can be: a DATA header plus the largest block.
pub const MAX_PACKET_LEN: usize = 4 + MAX_BLKSIZE as usize;

const OP_RRQ: u16 = 1;
const OP_WRQ: u16 = 2;
const OP_DATA: u16 = 3;
const OP_ACK: u16 = 4;
const OP_ERROR: u16 = 5;
const OP_OACK: u16 = 6;

/// A TFTP error code (RFC 1350 appendix, RFC 2347 adds 8). Unknown codes are kept as numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    /// "Not defined, see error message (if any)."
    pub const NOT_DEFINED: Self = Self(0);
    /// "File not found."
    pub const FILE_NOT_FOUND: Self = Self(1);
    /// "Access violation."
    pub const ACCESS_VIOLATION: Self = Self(2);
    /// "Disk full or allocation exceeded."
    pub const DISK_FULL: Self = Self(3);
    /// "Illegal TFTP operation."
    pub const ILLEGAL_OPERATION: Self = Self(4);
    /// "Unknown transfer ID."
    pub const UNKNOWN_TID: Self = Self(5);
    /// "File already exists."
    pub const FILE_EXISTS: Self = Self(6);
    /// "No such user."
    pub const NO_SUCH_USER: Self = Self(7);
    /// RFC 2347: the transfer should be terminated due to option negotiation.
    pub const OPTION_NEGOTIATION: Self = Self(8);
}

/// Transfer mode of a request (RFC 1350 section 1); "mail" is obsolete and refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Lines end in CR LF on the wire, a bare CR is sent as CR NUL (RFC 764 NVT ASCII).
    Netascii,
    /// Raw 8-bit bytes.
    Octet,
    /// Obsolete mail delivery mode; parsed so that it can be refused by name.
    Mail,
}

impl Mode {
    /// The mode's name as sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Netascii => "netascii",
            Mode::Octet => "octet",
            Mode::Mail => "mail",
        }
    }

    fn parse(name: &str) -> Option<Mode> {
        [Mode::Netascii, Mode::Octet, Mode::Mail]
            .into_iter()
            .find(|mode| name.eq_ignore_ascii_case(mode.as_str()))
    }
}

/// Why a datagram is not a valid TFTP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Shorter than its fixed header.
    Truncated,
    /// Opcode outside 1..=6.
    UnknownOpcode(u16),
    /// A string field without its terminating NUL.
    MissingNul,
    /// A string field that is not UTF-8 (or, for modes and options, not ASCII).
    NotText,
    /// A mode other than netascii, octet or mail.
    UnknownMode,
    /// An option name without a value.
    OptionWithoutValue,
    /// The same option twice in one request (RFC 2347 leaves this undefined; we refuse it).
    DuplicateOption,
    /// Longer than a packet of its type may be.
    Oversized,
    /// Bytes after a fixed-size packet (ACK).
    TrailingBytes,
    /// A request with an empty file name.
    EmptyFilename,
}

impl ParseError {
    /// The TFTP error code to answer this error with: 8 for option problems, 4 otherwise.
    pub fn error_code(self) -> ErrorCode {
        match self {
            ParseError::DuplicateOption | ParseError::OptionWithoutValue => {
                ErrorCode::OPTION_NEGOTIATION
            }
            _ => ErrorCode::ILLEGAL_OPERATION,
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Truncated => f.write_str("truncated packet"),
            ParseError::UnknownOpcode(op) => write!(f, "unknown opcode {op}"),
            ParseError::MissingNul => f.write_str("string field without terminating NUL"),
            ParseError::NotText => f.write_str("string field is not text"),
            ParseError::UnknownMode => f.write_str("unknown transfer mode"),
            ParseError::OptionWithoutValue => f.write_str("option without a value"),
            ParseError::DuplicateOption => f.write_str("duplicate option"),
            ParseError::Oversized => f.write_str("packet too long"),
            ParseError::TrailingBytes => f.write_str("trailing bytes after packet"),
            ParseError::EmptyFilename => f.write_str("empty file name"),
        }
    }
}

impl std::error::Error for ParseError {}

/// The option section of a request or OACK: NUL-terminated name/value pairs, already checked
/// (ASCII, paired, no name twice ignoring case), so iterating it cannot fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OptionList<'a> {
    bytes: &'a [u8],
}

impl<'a> OptionList<'a> {
    /// Checks an option section (everything after the mode of a request, or after the opcode of
    /// an OACK).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ParseError> {
        let list = OptionList { bytes };
        let mut seen: Vec<&str> = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let (name, after_name) = take_ascii(rest)?;
            if after_name.is_empty() {
                return Err(ParseError::OptionWithoutValue);
            }
            let (_, after_value) = take_ascii(after_name)?;
            if seen.iter().any(|s| s.eq_ignore_ascii_case(name)) {
                return Err(ParseError::DuplicateOption);
            }
            seen.push(name);
            rest = after_value;
        }
        Ok(list)
    }

    /// The (name, value) pairs in order; names keep the case the peer sent.
    pub fn iter(&self) -> OptionIter<'a> {
        OptionIter { rest: self.bytes }
    }

    /// The value of an option, looked up ignoring case (RFC 2347: names are case-insensitive).
    pub fn find(&self, name: &str) -> Option<&'a str> {
        self.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v)
    }

    /// Whether there are no options.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The raw wire bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

/// Iterator over a checked [`OptionList`].
#[derive(Clone, Debug)]
pub struct OptionIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for OptionIter<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        let (name, rest) = take_ascii(self.rest).ok()?;
        let (value, rest) = take_ascii(rest).ok()?;
        self.rest = rest;
        Some((name, value))
    }
}

/// A read or write request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// The file name exactly as the client sent it.
    pub filename: &'a str,
    /// Transfer mode.
    pub mode: Mode,
    /// RFC 2347 options, possibly empty.
    pub options: OptionList<'a>,
}

/// A parsed TFTP packet borrowing the datagram it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    /// Read request (opcode 1).
    Rrq(Request<'a>),
    /// Write request (opcode 2).
    Wrq(Request<'a>),
    /// A data block (opcode 3).
    Data {
        /// Block number (wraps from 65535 to 0).
        block: u16,
        /// Payload, at most [`MAX_BLKSIZE`] bytes.
        data: &'a [u8],
    },
    /// Acknowledgment (opcode 4).
    Ack {
        /// Block number being acknowledged.
        block: u16,
    },
    /// Error (opcode 5); ends the transfer.
    Error {
        /// Error code.
        code: ErrorCode,
        /// Human-readable message.
        message: &'a str,
    },
    /// Option acknowledgment (opcode 6, RFC 2347).
    Oack(OptionList<'a>),
}

impl<'a> Packet<'a> {
    /// Parses and validates one datagram.
    pub fn parse(bytes: &'a [u8]) -> Result<Packet<'a>, ParseError> {
        if bytes.len() < 2 {
            return Err(ParseError::Truncated);
        }
        let opcode = u16::from_be_bytes([bytes[0], bytes[1]]);
        let body = &bytes[2..];
        match opcode {
            OP_RRQ => parse_request(bytes.len(), body).map(Packet::Rrq),
            OP_WRQ => parse_request(bytes.len(), body).map(Packet::Wrq),
            OP_DATA => parse_data(body),
            OP_ACK => parse_ack(body),
            OP_ERROR => parse_error(body),
            OP_OACK => parse_oack(body),
            other => Err(ParseError::UnknownOpcode(other)),
        }
    }

    /// The length of the wire form, as [`Packet::emit`] writes it.
    pub fn buffer_len(&self) -> usize {
        2 + match self {
            Packet::Rrq(req) | Packet::Wrq(req) => {
                req.filename.len() + 1 + req.mode.as_str().len() + 1 + req.options.bytes.len()
            }
            Packet::Data { data, .. } => 2 + data.len(),
            Packet::Ack { .. } => 2,
            Packet::Error { message, .. } => 2 + message.len() + 1,
            Packet::Oack(options) => options.bytes.len(),
        }
    }

    /// Appends the wire form to `buf`.
    pub fn emit(&self, buf: &mut Vec<u8>) {
        buf.reserve(self.buffer_len());
        match self {
            Packet::Rrq(req) => emit_request(buf, OP_RRQ, req),
            Packet::Wrq(req) => emit_request(buf, OP_WRQ, req),
            Packet::Data { block, data } => emit_data(buf, *block, data),
            Packet::Ack { block } => emit_ack(buf, *block),
            Packet::Error { code, message } => emit_error(buf, *code, message),
            Packet::Oack(options) => {
                buf.extend_from_slice(&OP_OACK.to_be_bytes());
                buf.extend_from_slice(options.bytes);
            }
        }
    }
}

fn parse_request(total_len: usize, body: &[u8]) -> Result<Request<'_>, ParseError> {
    if total_len > MAX_REQUEST_LEN {
        return Err(ParseError::Oversized);
    }
    let (filename, rest) = take_field(body)?;
    let filename = std::str::from_utf8(filename).map_err(|_| ParseError::NotText)?;
    if filename.is_empty() {
        return Err(ParseError::EmptyFilename);
    }
    let (mode, rest) = take_ascii(rest)?;
    let mode = Mode::parse(mode).ok_or(ParseError::UnknownMode)?;
    let options = OptionList::parse(rest)?;
    Ok(Request { filename, mode, options })
}

fn parse_data(body: &[u8]) -> Result<Packet<'_>, ParseError> {
    let (block, data) = take_u16(body)?;
    if data.len() > MAX_BLKSIZE as usize {
        return Err(ParseError::Oversized);
    }
    Ok(Packet::Data { block, data })
}

fn parse_ack(body: &[u8]) -> Result<Packet<'_>, ParseError> {
    let (block, rest) = take_u16(body)?;
    if !rest.is_empty() {
        return Err(ParseError::TrailingBytes);
    }
    Ok(Packet::Ack { block })
}

fn parse_error(body: &[u8]) -> Result<Packet<'_>, ParseError> {
    let (code, rest) = take_u16(body)?;
    if rest.len() > MAX_BLKSIZE as usize {
        return Err(ParseError::Oversized);
    }
    let (message, rest) = take_field(rest)?;
    if !rest.is_empty() {
        return Err(ParseError::TrailingBytes);
    }
    let message = std::str::from_utf8(message).map_err(|_| ParseError::NotText)?;
    Ok(Packet::Error { code: ErrorCode(code), message })
}

fn parse_oack(body: &[u8]) -> Result<Packet<'_>, ParseError> {
    if body.len() > MAX_REQUEST_LEN {
        return Err(ParseError::Oversized);
    }
    OptionList::parse(body).map(Packet::Oack)
}

fn take_u16(bytes: &[u8]) -> Result<(u16, &[u8]), ParseError> {
    match bytes {
        [hi, lo, rest @ ..] => Ok((u16::from_be_bytes([*hi, *lo]), rest)),
        _ => Err(ParseError::Truncated),
    }
}

/// Splits off a NUL-terminated field; returns it without the NUL, and the bytes after the NUL.
fn take_field(bytes: &[u8]) -> Result<(&[u8], &[u8]), ParseError> {
    let nul = bytes.iter().position(|&b| b == 0).ok_or(ParseError::MissingNul)?;
    Ok((&bytes[..nul], &bytes[nul + 1..]))
}

fn take_ascii(bytes: &[u8]) -> Result<(&str, &[u8]), ParseError> {
    let (field, rest) = take_field(bytes)?;
    if !field.is_ascii() {
        return Err(ParseError::NotText);
    }
    let text = std::str::from_utf8(field).map_err(|_| ParseError::NotText)?;
    Ok((text, rest))
}

fn emit_request(buf: &mut Vec<u8>, opcode: u16, req: &Request<'_>) {
    buf.extend_from_slice(&opcode.to_be_bytes());
    push_field(buf, req.filename);
    push_field(buf, req.mode.as_str());
    buf.extend_from_slice(req.options.bytes);
}

/// Appends a DATA packet.
pub fn emit_data(buf: &mut Vec<u8>, block: u16, data: &[u8]) {
    buf.extend_from_slice(&OP_DATA.to_be_bytes());
    buf.extend_from_slice(&block.to_be_bytes());
    buf.extend_from_slice(data);
}

/// Appends an ACK packet.
pub fn emit_ack(buf: &mut Vec<u8>, block: u16) {
    buf.extend_from_slice(&OP_ACK.to_be_bytes());
    buf.extend_from_slice(&block.to_be_bytes());
}

/// Appends an ERROR packet.
pub fn emit_error(buf: &mut Vec<u8>, code: ErrorCode, message: &str) {
    buf.extend_from_slice(&OP_ERROR.to_be_bytes());
    buf.extend_from_slice(&code.0.to_be_bytes());
    // A NUL inside the message would end it early on the wire: cut it there.
    let message = message.split('\0').next().unwrap_or("");
    push_field(buf, message);
}

/// Appends the header of an OACK packet; follow it with [`push_option`] calls.
pub fn emit_oack_header(buf: &mut Vec<u8>) {
    buf.extend_from_slice(&OP_OACK.to_be_bytes());
}

/// Appends the header of a request; follow it with [`push_option`] calls.
pub fn emit_request_header(buf: &mut Vec<u8>, write: bool, filename: &str, mode: Mode) {
    let opcode = if write { OP_WRQ } else { OP_RRQ };
    buf.extend_from_slice(&opcode.to_be_bytes());
    push_field(buf, filename);
    push_field(buf, mode.as_str());
}

/// Appends one option name/value pair.
pub fn push_option(buf: &mut Vec<u8>, name: &str, value: impl fmt::Display) {
    push_field(buf, name);
    push_field(buf, &value.to_string());
}

fn push_field(buf: &mut Vec<u8>, text: &str) {
    buf.extend_from_slice(text.as_bytes());
    buf.push(0);
}
