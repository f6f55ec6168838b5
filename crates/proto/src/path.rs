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

#[cfg(test)]
mod tests {
    use super::*;

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
