//! `ftp://user:pass@host:port/path` and `ftps://` URLs (RFC 1738 section 3.2).
//!
//! Parses the scheme (`ftps://` means implicit TLS, default port 990), percent-decoded user,
//! password and path, IPv6 literals in brackets, and the default port 21. It does not resolve
//! host names, and does not interpret `;type=` suffixes.

use std::fmt;

/// How the control connection starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// Plain FTP; TLS may still be negotiated with AUTH TLS.
    Ftp,
    /// Implicit FTPS: TLS from the first byte.
    Ftps,
}

/// A parsed FTP URL. `path` is percent-decoded and keeps its leading `/` (`/` if none was given).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FtpUrl {
    pub scheme: Scheme,
    pub user: Option<String>,
    pub password: Option<String>,
    /// Host name or IP literal, without brackets.
    pub host: String,
    pub port: u16,
    pub path: String,
}

/// Why a URL was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UrlError(pub String);

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad URL: {}", self.0)
    }
}

impl std::error::Error for UrlError {}

impl FtpUrl {
    /// Parses `ftp://[user[:pass]@]host[:port][/path]` or the same with `ftps://`.
    pub fn parse(text: &str) -> Result<FtpUrl, UrlError> {
        let (scheme, rest) = split_scheme(text)?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (user, password) = split_userinfo(userinfo)?;
        let default_port = if scheme == Scheme::Ftps { 990 } else { 21 };
        let (host, port) = split_host_port(hostport, default_port)?;
        Ok(FtpUrl { scheme, user, password, host, port, path: percent_decode(path)? })
    }

    /// `host:port`, with brackets around an IPv6 literal: what `TcpStream::connect` takes.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The last path component, if the path names something other than a directory.
    pub fn file_name(&self) -> Option<&str> {
        self.path.rsplit('/').next().filter(|n| !n.is_empty())
    }
}

impl fmt::Display for FtpUrl {
    /// Prints the URL without the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::Ftp => "ftp",
            Scheme::Ftps => "ftps",
        };
        let user = self.user.as_deref().map(|u| format!("{u}@")).unwrap_or_default();
        write!(f, "{scheme}://{user}{}{}", self.authority(), self.path)
    }
}

fn split_scheme(text: &str) -> Result<(Scheme, &str), UrlError> {
    let (scheme, rest) = text
        .split_once("://")
        .ok_or_else(|| UrlError(format!("{text:?} has no scheme (ftp:// or ftps://)")))?;
    match scheme.to_ascii_lowercase().as_str() {
        "ftp" => Ok((Scheme::Ftp, rest)),
        "ftps" => Ok((Scheme::Ftps, rest)),
        other => Err(UrlError(format!("unsupported scheme {other:?}"))),
    }
}

fn split_userinfo(info: Option<&str>) -> Result<(Option<String>, Option<String>), UrlError> {
    let Some(info) = info else {
        return Ok((None, None));
    };
    let (user, pass) = match info.split_once(':') {
        Some((u, p)) => (u, Some(p)),
        None => (info, None),
    };
    let pass = pass.map(percent_decode).transpose()?;
    Ok((Some(percent_decode(user)?), pass))
}

fn split_host_port(text: &str, default_port: u16) -> Result<(String, u16), UrlError> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let end = rest.find(']').ok_or_else(|| UrlError("unclosed [ in host".into()))?;
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(UrlError(format!("junk after IPv6 literal: {after:?}"))),
        };
        (&rest[..end], port)
    } else {
        match text.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (text, None),
        }
    };
    if host.is_empty() {
        return Err(UrlError("empty host".into()));
    }
    let port = match port {
        Some(p) => p.parse().map_err(|_| UrlError(format!("bad port {p:?}")))?,
        None => default_port,
    };
    Ok((host.to_owned(), port))
}

/// Decodes `%XX` escapes; the result must be UTF-8.
pub fn percent_decode(text: &str) -> Result<String, UrlError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| UrlError(format!("bad percent escape in {text:?}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| UrlError(format!("{text:?} is not UTF-8 once decoded")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_url_with_credentials_and_port() {
        let url = FtpUrl::parse("ftp://bob:s%40cret@example.org:2121/pub/a%20b.txt").unwrap();
        assert_eq!(url.scheme, Scheme::Ftp);
        assert_eq!(url.user.as_deref(), Some("bob"));
        assert_eq!(url.password.as_deref(), Some("s@cret"));
        assert_eq!(url.host, "example.org");
        assert_eq!(url.port, 2121);
        assert_eq!(url.path, "/pub/a b.txt");
        assert_eq!(url.file_name(), Some("a b.txt"));
    }

    #[test]
    fn defaults_anonymous_port_and_path() {
        let url = FtpUrl::parse("ftp://host").unwrap();
        assert_eq!((url.user, url.port, url.path.as_str()), (None, 21, "/"));
        assert_eq!(FtpUrl::parse("ftps://host/").unwrap().port, 990);
        assert_eq!(FtpUrl::parse("FTPS://host/").unwrap().scheme, Scheme::Ftps);
    }

    #[test]
    fn ipv6_literals() {
        let url = FtpUrl::parse("ftp://[::1]:2121/x").unwrap();
        assert_eq!(url.host, "::1");
        assert_eq!(url.port, 2121);
        assert_eq!(url.authority(), "[::1]:2121");
        assert_eq!(FtpUrl::parse("ftp://[fe80::1]/").unwrap().port, 21);
    }

    #[test]
    fn password_with_at_sign_uses_last_at() {
        let url = FtpUrl::parse("ftp://u:p@ss@h/").unwrap();
        assert_eq!(url.password.as_deref(), Some("p@ss"));
        assert_eq!(url.host, "h");
    }

    #[test]
    fn refusals() {
        for bad in [
            "http://h/",
            "h/path",
            "ftp://:21/",
            "ftp://h:99999/",
            "ftp://[::1/",
            "ftp://h/%zz",
            "ftp://[::1]x/",
        ] {
            assert!(FtpUrl::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn display_hides_password() {
        let url = FtpUrl::parse("ftp://u:secret@[::1]:21/f").unwrap();
        assert_eq!(url.to_string(), "ftp://u@[::1]:21/f");
    }
}
