//! Where a password comes from when the URL has none: `~/.netrc` (or `$NETRC`), as curl `-n`,
//! lftp and ftp(1) read it, then a prompt with echo off when standard input is a terminal.
//! A URL with no user at all logs in anonymously unless `.netrc` names the host.

use std::io::{self, BufRead, IsTerminal, Write};
use std::path::PathBuf;

use crate::url::FtpUrl;

/// One `machine` (or `default`) entry of a netrc file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetrcEntry {
    /// `None` for `default`.
    pub machine: Option<String>,
    pub login: Option<String>,
    pub password: Option<String>,
}

/// Parses a netrc file: whitespace-separated tokens `machine NAME`, `default`, `login NAME`,
/// `password WORD`, `account WORD`, and `macdef NAME` (whose body, up to an empty line, is
/// skipped).
pub fn parse_netrc(text: &str) -> Vec<NetrcEntry> {
    // The tokens in order; a macro's body (the lines after `macdef`, up to an empty one) is
    // not made of tokens and is left out.
    let mut tokens = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.iter().position(|w| *w == "macdef") {
            Some(at) => {
                tokens.extend_from_slice(&words[..at]);
                lines.by_ref().take_while(|l| !l.trim().is_empty()).for_each(drop);
            }
            None => tokens.extend(words),
        }
    }
    let mut entries: Vec<NetrcEntry> = Vec::new();
    let mut tokens = tokens.into_iter();
    while let Some(token) = tokens.next() {
        let value = |tokens: &mut std::vec::IntoIter<&str>| tokens.next().map(str::to_string);
        match token {
            "machine" => {
                let machine = value(&mut tokens);
                entries.push(NetrcEntry { machine, ..NetrcEntry::default() });
            }
            "default" => entries.push(NetrcEntry::default()),
            "login" | "password" => {
                let v = value(&mut tokens);
                if let Some(e) = entries.last_mut() {
                    match token {
                        "login" => e.login = v,
                        _ => e.password = v,
                    }
                }
            }
            "account" => drop(value(&mut tokens)),
            _ => {}
        }
    }
    entries
}

/// The entry for `host` (and `user`, when the URL names one): a matching `machine`, else
/// `default`.
pub fn lookup<'a>(
    entries: &'a [NetrcEntry],
    host: &str,
    user: Option<&str>,
) -> Option<&'a NetrcEntry> {
    let fits = |e: &&NetrcEntry| user.is_none() || e.login.as_deref() == user;
    entries
        .iter()
        .filter(|e| e.machine.as_deref() == Some(host))
        .find(fits)
        .or_else(|| entries.iter().filter(|e| e.machine.is_none()).find(fits))
}

fn netrc_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("NETRC") {
        return Some(PathBuf::from(path));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".netrc"))
}

/// Fills in the URL's user and password from `.netrc`, or asks for the password at the
/// terminal. An error says where a password could come from.
pub fn complete(url: &mut FtpUrl) -> Result<(), String> {
    if url.password.is_some() {
        return Ok(());
    }
    if let Some(text) = netrc_path().and_then(|p| std::fs::read_to_string(p).ok()) {
        let entries = parse_netrc(&text);
        if let Some(entry) = lookup(&entries, &url.host, url.user.as_deref()) {
            if url.user.is_none() {
                url.user = entry.login.clone();
            }
            if url.user.is_some() && entry.password.is_some() {
                url.password = entry.password.clone();
                return Ok(());
            }
        }
    }
    let Some(user) = url.user.clone() else {
        return Ok(()); // anonymous
    };
    if !io::stdin().is_terminal() {
        return Err(format!(
            "no password for {user}@{}: give it in the URL, in ~/.netrc, or type it at a terminal",
            url.host
        ));
    }
    url.password = Some(prompt(&format!("Password for {user}@{}: ", url.host))?);
    Ok(())
}

/// Reads one line from the terminal with echo turned off.
fn prompt(text: &str) -> Result<String, String> {
    let mut err = io::stderr();
    let _ = write!(err, "{text}");
    let _ = err.flush();
    let fd = 0;
    // SAFETY: termios is a plain C struct; tcgetattr fills it for a terminal descriptor.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a termios for descriptor 0.
    let have_termios = unsafe { libc::tcgetattr(fd, &mut saved) } == 0;
    if have_termios {
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        quiet.c_lflag |= libc::ECHONL;
        // SAFETY: as above; restored below.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) };
    }
    let mut line = String::new();
    let read = io::stdin().lock().read_line(&mut line);
    if have_termios {
        // SAFETY: restores the settings read above.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
    }
    read.map_err(|e| format!("reading the password: {e}"))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netrc_entries_are_found_by_host_and_login() {
        let text = "machine files.example login bob password s3cret\n\
                    macdef init\n  cd /pub\n\n\
                    machine files.example\n  login eve\n  password other\n\
                    default login anonymous password me@example\n";
        let entries = parse_netrc(text);
        assert_eq!(entries.len(), 3);
        let bob = lookup(&entries, "files.example", None).unwrap();
        assert_eq!((bob.login.as_deref(), bob.password.as_deref()), (Some("bob"), Some("s3cret")));
        let eve = lookup(&entries, "files.example", Some("eve")).unwrap();
        assert_eq!(eve.password.as_deref(), Some("other"));
        let other = lookup(&entries, "elsewhere", None).unwrap();
        assert_eq!(other.login.as_deref(), Some("anonymous"));
        assert!(lookup(&parse_netrc("machine a login x password y"), "b", None).is_none());
    }
}
