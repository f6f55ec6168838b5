//! FTP replies (RFC 959 section 4.2): parsing lines, single or multi-line, into [`Reply`] values.
//!
//! A multi-line reply opens with `ddd-text` and ends at the first line that starts with the same
//! three digits followed by a space; lines in between are taken as they are, even when they begin
//! with other digits. [`ReplyParser`] works line by line for the blocking client;
//! [`ReplyBuffer`] works on raw bytes for the event-driven load generator. Neither does I/O.

use std::fmt;

/// Longest control line accepted from a server; a longer one is a protocol error.
pub const MAX_LINE: usize = 64 * 1024;

/// One complete reply: the code and its text lines (code and separator stripped from the first
/// and last line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    /// The text, lines joined with newlines.
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// The first line of text, for PASV/EPSV address parsing and short messages.
    pub fn first_line(&self) -> &str {
        self.lines.first().map_or("", String::as_str)
    }

    /// 1yz: positive preliminary (a transfer is starting).
    pub fn is_preliminary(&self) -> bool {
        self.code / 100 == 1
    }

    /// 2yz: positive completion.
    pub fn is_ok(&self) -> bool {
        self.code / 100 == 2
    }

    /// 3yz: positive intermediate (send the next command of the sequence).
    pub fn is_intermediate(&self) -> bool {
        self.code / 100 == 3
    }
}

impl fmt::Display for Reply {
    /// `code text`, on one line per text line, as the server sent it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.lines.join(" / "))
    }
}

/// A line that cannot start a reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyError(pub String);

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ReplyError {}

fn malformed(line: &str) -> ReplyError {
    let shown: String = line.chars().take(200).collect();
    ReplyError(format!("malformed reply line {shown:?}"))
}

/// The most a multi-line reply may hold: a server that never ends one (or sends megabytes of
/// FEAT) fails the command instead of growing the client without bound.
pub const MAX_REPLY_BYTES: usize = 1 << 20;

/// Assembles replies from lines (without their line ending).
#[derive(Debug, Default)]
pub struct ReplyParser {
    open: Option<Reply>,
    /// Bytes of the open reply so far.
    bytes: usize,
}

impl ReplyParser {
    pub fn new() -> ReplyParser {
        ReplyParser::default()
    }

    /// Feeds one line; returns the reply it completes, if any.
    pub fn feed_line(&mut self, line: &str) -> Result<Option<Reply>, ReplyError> {
        let line = line.trim_end_matches(['\r', '\n']);
        match self.open.take() {
            None => {
                self.bytes = line.len();
                self.start(line)
            }
            Some(mut reply) => {
                self.bytes += line.len() + 2;
                if self.bytes > MAX_REPLY_BYTES {
                    return Err(ReplyError(format!(
                        "a {} reply longer than {} KiB: the server never ends it",
                        reply.code,
                        MAX_REPLY_BYTES >> 10
                    )));
                }
                if ends_reply(line, reply.code) {
                    reply.lines.push(line[4..].to_owned());
                    return Ok(Some(reply));
                }
                reply.lines.push(continuation_text(line, reply.code).to_owned());
                self.open = Some(reply);
                Ok(None)
            }
        }
    }

    fn start(&mut self, line: &str) -> Result<Option<Reply>, ReplyError> {
        let code = reply_code(line).ok_or_else(|| malformed(line))?;
        let text = line.get(4..).unwrap_or("").to_owned();
        let reply = Reply { code, lines: vec![text] };
        match line.as_bytes().get(3) {
            Some(b'-') => {
                self.open = Some(reply);
                Ok(None)
            }
            Some(b' ') | None => Ok(Some(reply)),
            Some(_) => Err(malformed(line)),
        }
    }
}

/// The three-digit code that opens `line`, if it has one in the valid range (100 to 599).
fn reply_code(line: &str) -> Option<u16> {
    let digits = line.get(..3)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let code: u16 = digits.parse().ok()?;
    (100..600).contains(&code).then_some(code)
}

fn ends_reply(line: &str, code: u16) -> bool {
    reply_code(line) == Some(code) && line.as_bytes().get(3) == Some(&b' ')
}

/// A continuation line's text: servers often repeat `ddd-`; strip it when they do.
fn continuation_text(line: &str, code: u16) -> &str {
    if reply_code(line) == Some(code) && line.as_bytes().get(3) == Some(&b'-') {
        &line[4..]
    } else {
        line
    }
}

/// Bytes in, replies out: the byte-level front of [`ReplyParser`] for non-blocking sockets.
#[derive(Debug, Default)]
pub struct ReplyBuffer {
    bytes: Vec<u8>,
    parser: ReplyParser,
}

impl ReplyBuffer {
    pub fn new() -> ReplyBuffer {
        ReplyBuffer::default()
    }

    /// Appends bytes read from the control connection.
    pub fn extend(&mut self, data: &[u8]) {
        self.bytes.extend_from_slice(data);
    }

    /// The next complete reply, `Ok(None)` if more bytes are needed.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, ReplyError> {
        while let Some(end) = self.bytes.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.bytes.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            if let Some(reply) = self.parser.feed_line(&line)? {
                return Ok(Some(reply));
            }
        }
        if self.bytes.len() > MAX_LINE {
            return Err(ReplyError("a reply line longer than 64 KiB".into()));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(lines: &[&str]) -> Vec<Reply> {
        let mut parser = ReplyParser::new();
        lines.iter().filter_map(|l| parser.feed_line(l).unwrap()).collect()
    }

    #[test]
    fn single_line() {
        let replies = parse_all(&["220 Service ready\r\n"]);
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0].code, 220);
        assert_eq!(replies[0].text(), "Service ready");
        assert!(replies[0].is_ok());
    }

    #[test]
    fn multi_line_with_foreign_codes_inside() {
        let replies = parse_all(&[
            "211-Features:",
            " MDTM",
            "220 this is not the end",
            "211-still going",
            "211 End",
        ]);
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0].code, 211);
        assert_eq!(
            replies[0].lines,
            ["Features:", " MDTM", "220 this is not the end", "still going", "End"]
        );
    }

    #[test]
    fn two_replies_in_a_row() {
        let replies = parse_all(&["150 Opening", "226-Done", "226 Bye"]);
        let codes: Vec<u16> = replies.iter().map(|r| r.code).collect();
        assert_eq!(codes, [150, 226]);
    }

    #[test]
    fn code_without_text() {
        assert_eq!(parse_all(&["200"])[0].code, 200);
    }

    #[test]
    fn malformed_lines_are_errors() {
        for bad in ["hello", "20 short", "2000 x", "099 low", "200x"] {
            assert!(ReplyParser::new().feed_line(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn buffer_splits_partial_reads() {
        let mut buf = ReplyBuffer::new();
        buf.extend(b"230-Welcome\r\n230 Lo");
        assert_eq!(buf.next_reply().unwrap(), None);
        buf.extend(b"gged in\r\n331 next\r\n");
        let first = buf.next_reply().unwrap().unwrap();
        assert_eq!((first.code, first.lines.len()), (230, 2));
        assert_eq!(buf.next_reply().unwrap().unwrap().code, 331);
        assert_eq!(buf.next_reply().unwrap(), None);
    }

    #[test]
    fn buffer_caps_a_line() {
        let mut buf = ReplyBuffer::new();
        buf.extend(&vec![b'2'; MAX_LINE + 1]);
        assert!(buf.next_reply().is_err());
    }
}
