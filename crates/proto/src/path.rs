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

/// Whether `name` matches the shell pattern `pattern`: `*` any run, `?` one character,
/// `[abc]`, `[a-z]` and `[!a]` (or `[^a]`) a set. As in a shell, a leading `.` in `name` is
/// matched only by a leading `.` in the pattern, so `*` leaves dot files out.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    if name.starts_with('.') && !pattern.starts_with('.') {
        return false;
    }
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Iterative matching with one backtrack point for the last `*` (linear in practice,
    // never exponential).
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some(pi);
                mark = ni;
                pi += 1;
            }
            Some(&c) if single_match(&p, &mut pi, c, n[ni]) => ni += 1,
            _ => match star {
                Some(s) => {
                    pi = s + 1;
                    mark += 1;
                    ni = mark;
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// Matches one pattern element at `p[*pi]` (a literal, `?` or a `[...]` set) against `ch`,
/// advancing `pi` past it on a match.
fn single_match(p: &[char], pi: &mut usize, c: char, ch: char) -> bool {
    match c {
        '?' => {
            *pi += 1;
            true
        }
        '[' => match p[*pi + 1..].iter().position(|&x| x == ']') {
            Some(len) if len > 0 => {
                let set = &p[*pi + 1..*pi + 1 + len];
                let (negate, set) = match set.first() {
                    Some('!' | '^') => (true, &set[1..]),
                    _ => (false, set),
                };
                let mut hit = false;
                let mut i = 0;
                while i < set.len() {
                    if i + 2 < set.len() && set[i + 1] == '-' {
                        hit |= (set[i]..=set[i + 2]).contains(&ch);
                        i += 3;
                    } else {
                        hit |= set[i] == ch;
                        i += 1;
                    }
                }
                let matched = hit != negate;
                if matched {
                    *pi += len + 2;
                }
                matched
            }
            _ => {
                // An unclosed `[` is a literal.
                let matched = ch == '[';
                *pi += usize::from(matched);
                matched
            }
        },
        literal => {
            let matched = literal == ch;
            *pi += usize::from(matched);
            matched
        }
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
        // A pattern that backtracks a lot on a long name still ends (one backtrack point).
        let long = "a".repeat(5000);
        assert!(!glob_match(&format!("{}b", "*a".repeat(50)), &long));
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
