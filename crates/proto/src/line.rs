//! The control connection's input: bytes in, command lines out, with a hard cap on memory.
//!
//! RFC 959 section 4.1.3 ends each command with `<CRLF>`; many clients send a bare `\n`, so both
//! end a line. Telnet control sequences (RFC 854) that clients send around `ABOR` (IAC IP, IAC
//! DM) are removed; `IAC IAC` stands for a literal 0xFF byte.
//!
//! The buffer never holds more than [`MAX_LINE`] bytes. A client that sends more without a line
//! end is told so and disconnected by the session; the buffer is freed whenever it is empty, so
//! an idle session costs nothing here.

/// The longest command line accepted, terminator included (room for a `PATH_MAX` path).
pub const MAX_LINE: usize = 4096 + 16;

const IAC: u8 = 0xFF;

/// Accumulates control-connection bytes until a full line is present.
#[derive(Debug, Default)]
pub struct LineBuffer {
    buf: Vec<u8>,
    /// Bytes at the front of `buf` already handed out as lines.
    consumed: usize,
}

/// What [`LineBuffer::extend`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Overflow {
    /// Everything fitted.
    No,
    /// The cap was reached without a line end; the buffer was cleared.
    LineTooLong,
}

impl LineBuffer {
    /// How many more bytes the buffer takes before it is full.
    pub fn room(&self) -> usize {
        MAX_LINE.saturating_sub(self.buf.len() - self.consumed)
    }

    /// True when no bytes are buffered.
    pub fn is_empty(&self) -> bool {
        self.buf.len() == self.consumed
    }

    /// Appends bytes; a caller should give no more than [`room`](Self::room) bytes at once.
    pub fn extend(&mut self, bytes: &[u8]) -> Overflow {
        self.compact();
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= MAX_LINE && !self.buf.contains(&b'\n') {
            self.buf = Vec::new();
            self.consumed = 0;
            return Overflow::LineTooLong;
        }
        Overflow::No
    }

    /// Takes the next complete line, without its terminator and with Telnet sequences removed.
    pub fn next_line(&mut self) -> Option<Vec<u8>> {
        let pending = &self.buf[self.consumed..];
        let end = pending.iter().position(|&b| b == b'\n')?;
        let line = strip_telnet(trim_cr(&pending[..end]));
        self.consumed += end + 1;
        if self.is_empty() {
            self.buf = Vec::new();
            self.consumed = 0;
        }
        Some(line)
    }

    fn compact(&mut self) {
        if self.consumed > 0 {
            self.buf.drain(..self.consumed);
            self.consumed = 0;
        }
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Removes Telnet commands: `IAC x` for a command byte x (0xF0..=0xFE, with a third byte for
/// WILL/WONT/DO/DONT), `IAC IAC` becomes 0xFF, and a lone `IAC` (whose DM went out of band) goes.
pub fn strip_telnet(line: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(line.len());
    let mut i = 0;
    while i < line.len() {
        if line[i] != IAC {
            out.push(line[i]);
            i += 1;
            continue;
        }
        match line.get(i + 1) {
            Some(&IAC) => {
                out.push(IAC);
                i += 2;
            }
            Some(&(0xFB..=0xFE)) => i += 3,
            Some(&(0xF0..=0xFA)) => i += 2,
            _ => i += 1,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8]) -> Vec<Vec<u8>> {
        let mut b = LineBuffer::default();
        assert_eq!(b.extend(input), Overflow::No);
        std::iter::from_fn(|| b.next_line()).collect()
    }

    #[test]
    fn crlf_and_bare_lf_both_end_lines() {
        assert_eq!(lines(b"NOOP\r\nPWD\nSY"), vec![b"NOOP".to_vec(), b"PWD".to_vec()]);
    }

    #[test]
    fn partial_line_waits_for_rest() {
        let mut b = LineBuffer::default();
        b.extend(b"NO");
        assert_eq!(b.next_line(), None);
        b.extend(b"OP\r\n");
        assert_eq!(b.next_line(), Some(b"NOOP".to_vec()));
        assert!(b.is_empty());
    }

    #[test]
    fn telnet_interrupt_before_abor_is_removed() {
        assert_eq!(lines(b"\xff\xf4\xff\xf2ABOR\r\n"), vec![b"ABOR".to_vec()]);
        assert_eq!(lines(b"\xff\xf4\xffABOR\r\n"), vec![b"ABOR".to_vec()]);
        assert_eq!(lines(b"RETR a\xff\xffb\r\n"), vec![b"RETR a\xffb".to_vec()]);
        assert_eq!(lines(b"\xff\xfb\x01NOOP\n"), vec![b"NOOP".to_vec()]);
    }

    #[test]
    fn overlong_line_is_refused_and_memory_freed() {
        let mut b = LineBuffer::default();
        let chunk = vec![b'a'; 1000];
        let mut outcome = Overflow::No;
        for _ in 0..10 {
            outcome = b.extend(&chunk[..b.room().min(chunk.len()).max(1)]);
            if outcome == Overflow::LineTooLong {
                break;
            }
        }
        assert_eq!(outcome, Overflow::LineTooLong);
        assert!(b.is_empty());
        assert_eq!(b.buf.capacity(), 0);
    }

    #[test]
    fn room_shrinks_as_bytes_arrive() {
        let mut b = LineBuffer::default();
        assert_eq!(b.room(), MAX_LINE);
        b.extend(b"abc");
        assert_eq!(b.room(), MAX_LINE - 3);
    }
}
