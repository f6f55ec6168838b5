//! TYPE A line-ending conversion on the wire (RFC 959 section 3.1.1.1): files keep Unix `\n`,
//! the data connection carries `\r\n`. Both directions stream across buffer boundaries.

/// Converts `\n` to `\r\n` for sending. A `\r\n` already in the file is sent unchanged.
#[derive(Debug, Default)]
pub struct Encoder {
    last_was_cr: bool,
}

impl Encoder {
    /// Appends the wire form of `input` to `out`.
    pub fn encode(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + input.len() / 32);
        for &b in input {
            if b == b'\n' && !self.last_was_cr {
                out.push(b'\r');
            }
            out.push(b);
            self.last_was_cr = b == b'\r';
        }
    }
}

/// Converts `\r\n` to `\n` for storing; a `\r` not followed by `\n` is kept.
#[derive(Debug, Default)]
pub struct Decoder {
    pending_cr: bool,
}

impl Decoder {
    /// Appends the disk form of `input` to `out`.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + 1);
        for &b in input {
            if self.pending_cr && b != b'\n' {
                out.push(b'\r');
            }
            self.pending_cr = b == b'\r';
            if !self.pending_cr {
                out.push(b);
            }
        }
    }

    /// Flushes a trailing `\r` at the end of the stream.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.pending_cr) {
            out.push(b'\r');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_chunks(chunks: &[&[u8]]) -> Vec<u8> {
        let (mut e, mut out) = (Encoder::default(), Vec::new());
        chunks.iter().for_each(|c| e.encode(c, &mut out));
        out
    }

    fn decode_chunks(chunks: &[&[u8]]) -> Vec<u8> {
        let (mut d, mut out) = (Decoder::default(), Vec::new());
        chunks.iter().for_each(|c| d.decode(c, &mut out));
        d.finish(&mut out);
        out
    }

    #[test]
    fn encode_adds_cr() {
        assert_eq!(encode_chunks(&[b"a\nb\n"]), b"a\r\nb\r\n");
        assert_eq!(encode_chunks(&[b"a\r", b"\nb"]), b"a\r\nb");
    }

    #[test]
    fn decode_strips_cr_across_chunks() {
        assert_eq!(decode_chunks(&[b"a\r\nb\r\n"]), b"a\nb\n");
        assert_eq!(decode_chunks(&[b"a\r", b"\nb"]), b"a\nb");
        assert_eq!(decode_chunks(&[b"a\rb\r"]), b"a\rb\r");
    }

    #[test]
    fn round_trip() {
        let text = b"one\ntwo\n\nthree";
        let wire = encode_chunks(&[text]);
        assert_eq!(decode_chunks(&[&wire[..5], &wire[5..]]), text);
    }
}
