//! FTP replies (RFC 959 section 4.2): a three-digit code and text, on one line or several. Every
//! reply zocalo sends is written here, by the session and by the drivers' refusals (a full
//! server's 421) alike.

use std::fmt::Write as _;

/// One reply. A multi-line reply repeats its code on the last line only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply<'a> {
    pub code: u16,
    lines: Lines<'a>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lines<'a> {
    One(&'a str),
    Many(&'a [&'a str]),
}

impl<'a> Reply<'a> {
    /// `CODE TEXT`.
    pub const fn new(code: u16, text: &'a str) -> Self {
        Reply { code, lines: Lines::One(text) }
    }

    /// `CODE-FIRST`, the middle lines as they are, `CODE LAST`.
    pub const fn multi(code: u16, lines: &'a [&'a str]) -> Self {
        Reply { code, lines: Lines::Many(lines) }
    }

    /// Appends the reply's bytes, CRLF-terminated.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut text = String::new();
        let code = self.code;
        match self.lines {
            Lines::One(line) => {
                let _ = write!(text, "{code} {line}\r\n");
            }
            Lines::Many(lines) => {
                let last = lines.len().saturating_sub(1);
                for (i, line) in lines.iter().enumerate() {
                    let _ = match i {
                        0 if last > 0 => write!(text, "{code}-{line}\r\n"),
                        i if i == last => write!(text, "{code} {line}\r\n"),
                        _ => write!(text, "{line}\r\n"),
                    };
                }
            }
        }
        out.extend_from_slice(text.as_bytes());
    }

    /// The reply's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_and_many_lines() {
        assert_eq!(Reply::new(200, "NOOP ok.").to_bytes(), b"200 NOOP ok.\r\n");
        let lines = ["Features:", " SIZE", "End"];
        assert_eq!(Reply::multi(211, &lines).to_bytes(), b"211-Features:\r\n SIZE\r\n211 End\r\n");
        assert_eq!(Reply::multi(214, &["Only"]).to_bytes(), b"214 Only\r\n");
    }
}
