//! Virtual paths: what the client sees (`/dir/file`) and what the storage is given (`dir/file`).
//!
//! Resolution is lexical and clamps at the root: `..` above `/` stays at `/`, as on most FTP
//! servers. This is only the first fence. The storage opens every path with the kernel's
//! confinement (openat2 RESOLVE_BENEATH), which also stops symlinks that point outside.

/// Resolves `arg` against the current directory `cwd` (itself absolute and normalised) and
/// returns an absolute normalised path (`/` or `/a/b`).
pub fn resolve(cwd: &str, arg: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    let start = if arg.starts_with('/') { "" } else { cwd };
    for part in start.split('/').chain(arg.split('/')) {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    let mut out = String::with_capacity(start.len() + arg.len() + 1);
    for p in &parts {
        out.push('/');
        out.push_str(p);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// The storage-relative form of an absolute virtual path: no leading `/`, root is `""`.
pub fn relative(abs: &str) -> &str {
    abs.trim_start_matches('/')
}

/// The last component of an absolute virtual path (`""` for the root).
pub fn file_name(abs: &str) -> &str {
    abs.rsplit('/').next().unwrap_or("")
}

/// Quotes a path for a 257 reply: embedded `"` are doubled (RFC 959 appendix II).
pub fn quote(path: &str) -> String {
    path.replace('"', "\"\"")
}

/// True when the last component of `arg` is a wildcard pattern (`*`, `?` or `[...]`), as
/// `mget *.bin` sends to NLST.
pub fn is_pattern(arg: &str) -> bool {
    arg.rsplit('/').next().is_some_and(|last| last.contains(['*', '?', '[']))
}

/// The longest wildcard pattern accepted: a file name's own limit (255 bytes on Linux).
pub const MAX_PATTERN: usize = 255;

/// Whether `name` matches the shell pattern `pattern` (see [`Glob`]); a pattern longer than
/// [`MAX_PATTERN`] matches nothing.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    Glob::new(pattern).is_some_and(|g| g.matches(name))
}

/// One element of a pattern.
#[derive(Debug, Clone)]
enum Token {
    Char(char),
    Any,
    /// A run of `*`.
    Star,
    Set {
        negate: bool,
        items: Vec<(char, char)>,
    },
}

impl Token {
    fn matches(&self, ch: char) -> bool {
        match self {
            Token::Char(c) => *c == ch,
            Token::Any => true,
            Token::Star => false,
            Token::Set { negate, items } => {
                items.iter().any(|(a, b)| (*a..=*b).contains(&ch)) != *negate
            }
        }
    }
}

/// Positions of a pattern as a bit set (at most [`MAX_PATTERN`] + 1 of them).
type Bits = [u64; 4];

fn shift(bits: &Bits) -> Bits {
    let mut out = [0u64; 4];
    for i in 0..4 {
        out[i] = bits[i] << 1 | if i > 0 { bits[i - 1] >> 63 } else { 0 };
    }
    out
}

fn and(a: &Bits, b: &Bits) -> Bits {
    std::array::from_fn(|i| a[i] & b[i])
}

fn or(a: &Bits, b: &Bits) -> Bits {
    std::array::from_fn(|i| a[i] | b[i])
}

/// A shell pattern, compiled once for a listing: `*` any run, `?` one character, `[abc]`,
/// `[a-z]` and `[!a]` (or `[^a]`) a set; an unclosed `[` is a literal. As in a shell, a
/// leading `.` in a name is matched only by a leading `.` in the pattern, so `*` leaves dot
/// files out.
///
/// Matching simulates the pattern's automaton with a bit per position (shift-and), so a name
/// costs a few word operations per character whatever the pattern: `NLST *[xxxx...]` over
/// 50,000 names cost 26 s of CPU with backtracking (vsftpd's CVE-2011-0762 is the same
/// class); here it costs what any listing does.
#[derive(Debug, Clone)]
pub struct Glob {
    tokens: Vec<Token>,
    /// Positions whose token is `*` (they loop on any character).
    stars: Bits,
    /// For each ASCII character, the positions whose token takes it.
    ascii: Vec<Bits>,
    dot_first: bool,
}

impl Glob {
    /// Compiles `pattern`; `None` if it is longer than [`MAX_PATTERN`] characters.
    pub fn new(pattern: &str) -> Option<Glob> {
        let p: Vec<char> = pattern.chars().collect();
        if p.len() > MAX_PATTERN {
            return None;
        }
        let mut tokens = Vec::new();
        let mut i = 0;
        while i < p.len() {
            let token = match p[i] {
                '*' if matches!(tokens.last(), Some(Token::Star)) => {
                    i += 1;
                    continue;
                }
                '*' => Token::Star,
                '?' => Token::Any,
                '[' => match p[i + 1..].iter().position(|&x| x == ']') {
                    Some(len) if len > 0 => {
                        let set = &p[i + 1..i + 1 + len];
                        i += len + 1;
                        let (negate, set) = match set.first() {
                            Some('!' | '^') => (true, &set[1..]),
                            _ => (false, set),
                        };
                        let mut items = Vec::new();
                        let mut j = 0;
                        while j < set.len() {
                            if j + 2 < set.len() && set[j + 1] == '-' {
                                items.push((set[j], set[j + 2]));
                                j += 3;
                            } else {
                                items.push((set[j], set[j]));
                                j += 1;
                            }
                        }
                        Token::Set { negate, items }
                    }
                    _ => Token::Char('['),
                },
                c => Token::Char(c),
            };
            tokens.push(token);
            i += 1;
        }
        let mut stars = [0u64; 4];
        for (j, t) in tokens.iter().enumerate() {
            if matches!(t, Token::Star) {
                stars[j / 64] |= 1 << (j % 64);
            }
        }
        let ascii = (0u8..128).map(|c| Self::takes(&tokens, char::from(c))).collect();
        Some(Glob { tokens, stars, ascii, dot_first: pattern.starts_with('.') })
    }

    fn takes(tokens: &[Token], ch: char) -> Bits {
        let mut bits = [0u64; 4];
        for (j, t) in tokens.iter().enumerate() {
            if t.matches(ch) {
                bits[j / 64] |= 1 << (j % 64);
            }
        }
        bits
    }

    /// Adds the positions reached from a `*` without consuming a character (runs of `*`
    /// are one token, so one step is enough).
    fn close(&self, bits: Bits) -> Bits {
        or(&bits, &shift(&and(&bits, &self.stars)))
    }

    pub fn matches(&self, name: &str) -> bool {
        if name.starts_with('.') && !self.dot_first {
            return false;
        }
        let mut state = self.close([1, 0, 0, 0]);
        for ch in name.chars() {
            let takes = match self.ascii.get(ch as usize) {
                Some(bits) => *bits,
                None => Self::takes(&self.tokens, ch),
            };
            state = self.close(or(&shift(&and(&state, &takes)), &and(&state, &self.stars)));
            if state == [0; 4] {
                return false;
            }
        }
        let end = self.tokens.len();
        state[end / 64] & (1 << (end % 64)) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_as_a_shell_does() {
        assert!(glob_match("*.bin", "a.bin") && !glob_match("*.bin", "a.binx"));
        assert!(glob_match("f?.txt", "f1.txt") && !glob_match("f?.txt", "f12.txt"));
        assert!(glob_match("[ab]*", "beta") && !glob_match("[ab]*", "gamma"));
        assert!(glob_match("[a-c]x", "bx") && !glob_match("[!a-c]x", "bx"));
        assert!(glob_match("*", "anything") && !glob_match("*", ".hidden"));
        assert!(glob_match(".*", ".hidden"));
        assert!(glob_match("a*b*c", "aXXbYYc") && !glob_match("a*b*c", "aXXbYY"));
        assert!(glob_match("[x", "[x"));
        assert!(is_pattern("/tn/*.bin") && !is_pattern("/t*n/file"));
        assert!(glob_match("a**b", "ab") && glob_match("*", "") && !glob_match("?", ""));
        assert!(glob_match("[]x", "[]x"), "an empty set is literal text");
        assert!(glob_match("é*", "été") && glob_match("[à-ê]t", "ét"));
        assert!(glob_match("*x*", "axb") && !glob_match("*x*", "ab"));
        // The longest pattern still compiles; one past it matches nothing.
        let longest = "?".repeat(MAX_PATTERN);
        assert!(glob_match(&longest, &"n".repeat(MAX_PATTERN)));
        assert!(!glob_match(&format!("{longest}*"), "n"));
    }

    #[test]
    fn a_hostile_pattern_costs_what_a_listing_does() {
        // 50,000 names against a pattern that backtracking matchers take quadratic time on.
        let pattern = format!("*[{}]", "x".repeat(250));
        let glob = Glob::new(&pattern).unwrap();
        let names: Vec<String> = (0..50_000).map(|i| format!("file-{i:08}-aaaaaaaaaaaa")).collect();
        assert!(names.iter().all(|n| !glob.matches(n)));
        let stars = Glob::new(&format!("{}b", "*a".repeat(60))).unwrap();
        assert!(!stars.matches(&"a".repeat(5000)));
        assert!(stars.matches(&format!("{}b", "a".repeat(5000))));
    }

    #[test]
    fn relative_and_absolute() {
        assert_eq!(resolve("/", "a"), "/a");
        assert_eq!(resolve("/a", "b/c"), "/a/b/c");
        assert_eq!(resolve("/a", "/b"), "/b");
        assert_eq!(resolve("/a/b", "."), "/a/b");
    }

    #[test]
    fn dotdot_clamps_at_root() {
        assert_eq!(resolve("/", ".."), "/");
        assert_eq!(resolve("/a", "../../../etc/passwd"), "/etc/passwd");
        assert_eq!(resolve("/a/b", ".."), "/a");
        assert_eq!(resolve("/", "a/../../b"), "/b");
    }

    #[test]
    fn redundant_separators() {
        assert_eq!(resolve("/", "//a///b/"), "/a/b");
        assert_eq!(resolve("/", ""), "/");
    }

    #[test]
    fn helpers() {
        assert_eq!(relative("/a/b"), "a/b");
        assert_eq!(relative("/"), "");
        assert_eq!(file_name("/a/b"), "b");
        assert_eq!(quote("a\"b"), "a\"\"b");
    }
}
