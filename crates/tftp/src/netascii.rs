//! Netascii (RFC 1350 section 1, after RFC 764): the wire form of text transfers.
//!
//! On the wire a line ends in CR LF and a bare carriage return is sent as CR NUL. Locally (Unix)
//! a line ends in LF. Encoding is a byte-by-byte map; decoding keeps one byte of state, a CR seen
//! at the end of one block whose meaning depends on the first byte of the next, so conversion
//! streams across block boundaries.

/// Appends the netascii form of local text `input` to `out`.
pub fn encode(input: &[u8], out: &mut Vec<u8>) {
    for &byte in input {
        match byte {
            b'\n' => out.extend_from_slice(b"\r\n"),
            b'\r' => out.extend_from_slice(b"\r\0"),
            other => out.push(other),
        }
    }
}

/// How many local bytes a chunk of netascii stands for (every CR starts a two-byte pair);
/// `after_cr` carries the state from one chunk to the next.
pub fn decoded_len(encoded: &[u8], after_cr: &mut bool) -> usize {
    let mut len = 0;
    for &byte in encoded {
        let second = std::mem::take(after_cr);
        if !second {
            len += 1;
            *after_cr = byte == b'\r';
        }
    }
    len
}

/// Streaming netascii to local text decoder.
#[derive(Clone, Copy, Debug, Default)]
pub struct Decoder {
    pending_cr: bool,
}

impl Decoder {
    /// A decoder at the start of a file.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the local form of the next chunk of netascii to `out`.
    ///
    /// CR LF becomes LF, CR NUL becomes CR; a CR followed by anything else is kept as is (a
    /// lenient reading of text from careless senders).
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &byte in input {
            if self.pending_cr {
                self.pending_cr = false;
                match byte {
                    b'\n' => out.push(b'\n'),
                    0 => out.push(b'\r'),
                    b'\r' => {
                        out.push(b'\r');
                        self.pending_cr = true;
                    }
                    other => out.extend_from_slice(&[b'\r', other]),
                }
            } else if byte == b'\r' {
                self.pending_cr = true;
            } else {
                out.push(byte);
            }
        }
    }

    /// Ends the file: a CR left at the very end is kept.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.pending_cr) {
            out.push(b'\r');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_chunks(wire: &[u8], chunk: usize) -> Vec<u8> {
        let mut decoder = Decoder::new();
        let mut out = Vec::new();
        for part in wire.chunks(chunk) {
            decoder.decode(part, &mut out);
        }
        decoder.finish(&mut out);
        out
    }

    #[test]
    fn encodes_line_ends_and_bare_cr() {
        let mut out = Vec::new();
        encode(b"a\nb\rc\r\n", &mut out);
        assert_eq!(out, b"a\r\nb\r\0c\r\0\r\n");
    }

    #[test]
    fn round_trips_across_every_split() {
        let text = b"one\ntwo\r\nthree\rfour\n\n\r\r\x00end\r";
        let mut wire = Vec::new();
        encode(text, &mut wire);
        for chunk in 1..=wire.len() {
            assert_eq!(decode_in_chunks(&wire, chunk), text, "chunk size {chunk}");
        }
    }

    #[test]
    fn counts_local_bytes_across_chunks() {
        let text = b"a\nb\r\n\r\rc";
        let mut wire = Vec::new();
        encode(text, &mut wire);
        for chunk in 1..=wire.len() {
            let mut after_cr = false;
            let total: usize = wire.chunks(chunk).map(|c| decoded_len(c, &mut after_cr)).sum();
            assert_eq!(total, text.len(), "chunk size {chunk}");
        }
    }

    #[test]
    fn keeps_cr_before_other_bytes() {
        assert_eq!(decode_in_chunks(b"a\rb", 1), b"a\rb");
    }
}
