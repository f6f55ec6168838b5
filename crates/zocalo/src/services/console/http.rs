//! The little HTTP/1.1 the console needs, over any blocking stream (a `TcpStream`, or rustls'
//! `StreamOwned` over one): one request read at a time with its head bounded to 16 KiB and its
//! body to 64 KiB, keep-alive, `Content-Length` bodies only (no chunked uploads: browsers send
//! forms and `fetch` bodies with a length).

use std::io::{self, BufRead, BufReader, Read, Write};

const HEAD_MAX: usize = 16 * 1024;
const BODY_MAX: usize = 64 * 1024;

/// One request.
#[derive(Debug, Default)]
pub struct Request {
    pub method: String,
    /// The path, without its query.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The client asked to close after this one (`Connection: close`, or HTTP/1.0).
    pub close: bool,
}

impl Request {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The cookie `name`, if the request has it.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
            .flat_map(|(_, v)| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    }

    /// A field of a form body (`application/x-www-form-urlencoded`).
    pub fn form(&self, name: &str) -> Option<String> {
        let body = std::str::from_utf8(&self.body).ok()?;
        body.split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(n, _)| url_decode(n) == name)
            .map(|(_, v)| url_decode(v))
    }
}

/// Decodes `%XX` and `+` of a form field.
pub fn url_decode(s: &str) -> String {
    percent_decode(&s.replace('+', " "))
}

/// Decodes `%XX` (a path: `+` stays itself).
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Why no request could be read.
#[derive(Debug)]
pub enum Bad {
    /// The connection ended (or timed out) between requests: nothing to answer.
    Gone,
    /// A request that cannot be served: answered with this status, then the connection closes.
    Status(&'static str),
}

impl From<io::Error> for Bad {
    fn from(_: io::Error) -> Self {
        Bad::Gone
    }
}

/// Reads the next request from `reader`.
pub fn read_request<R: Read>(reader: &mut BufReader<R>) -> Result<Request, Bad> {
    let mut head = Vec::new();
    loop {
        let before = head.len();
        let n = reader
            .by_ref()
            .take((HEAD_MAX + 1 - head.len()) as u64)
            .read_until(b'\n', &mut head)?;
        if n == 0 {
            return Err(if head.is_empty() { Bad::Gone } else { Bad::Status("400 Bad Request") });
        }
        if head.len() > HEAD_MAX {
            return Err(Bad::Status("431 Request Header Fields Too Large"));
        }
        let line = &head[before..];
        if line == b"\r\n" || line == b"\n" {
            if before == 0 {
                head.clear(); // a stray empty line before a request (RFC 9112 2.2)
                continue;
            }
            break;
        }
    }
    let head = String::from_utf8(head).map_err(|_| Bad::Status("400 Bad Request"))?;
    let mut lines = head.lines();
    let mut first = lines.next().unwrap_or("").split(' ');
    let (method, target, version) = (first.next(), first.next(), first.next());
    let (Some(method), Some(target), Some(version)) = (method, target, version) else {
        return Err(Bad::Status("400 Bad Request"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(Bad::Status("505 HTTP Version Not Supported"));
    }
    let mut request = Request {
        method: method.to_string(),
        path: percent_decode(target.split('?').next().unwrap_or("")),
        close: version == "HTTP/1.0",
        ..Request::default()
    };
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(Bad::Status("400 Bad Request"));
        };
        request.headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    if request.header("transfer-encoding").is_some() {
        return Err(Bad::Status("411 Length Required"));
    }
    if request.header("connection").is_some_and(|c| c.eq_ignore_ascii_case("close")) {
        request.close = true;
    }
    let length = match request.header("content-length") {
        None => 0,
        Some(n) => n.parse::<usize>().map_err(|_| Bad::Status("400 Bad Request"))?,
    };
    if length > BODY_MAX {
        return Err(Bad::Status("413 Content Too Large"));
    }
    request.body = vec![0; length];
    reader.read_exact(&mut request.body)?;
    Ok(request)
}

/// An answer.
pub struct Response {
    pub status: &'static str,
    pub kind: &'static str,
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

impl Response {
    pub fn new(status: &'static str, kind: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Response { status, kind, body: body.into(), headers: Vec::new() }
    }

    pub fn json(status: &'static str, value: &serde_json::Value) -> Self {
        Response::new(status, "application/json", value.to_string())
    }

    pub fn text(status: &'static str, text: &str) -> Self {
        Response::new(status, "text/plain; charset=utf-8", text)
    }

    /// A redirection to `to` after a form (303: the browser follows with a GET).
    pub fn see_other(to: &str) -> Self {
        let mut r = Response::new("303 See Other", "text/plain", "");
        r.headers.push(("Location", to.to_string()));
        r
    }

    pub fn with(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }

    /// Writes the answer; `head_only` for HEAD; `close` adds `Connection: close`.
    pub fn write<W: Write>(&self, out: &mut W, head_only: bool, close: bool) -> io::Result<()> {
        let mut head = format!(
            "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n\
             X-Content-Type-Options: nosniff\r\nX-Frame-Options: DENY\r\n\
             Content-Security-Policy: default-src 'self'; frame-ancestors 'none'\r\n\
             Referrer-Policy: same-origin\r\n",
            self.status,
            self.kind,
            self.body.len()
        );
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        out.write_all(head.as_bytes())?;
        if !head_only {
            out.write_all(&self.body)?;
        }
        out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<Request, Bad> {
        read_request(&mut BufReader::new(raw))
    }

    #[test]
    fn requests_forms_and_cookies() {
        let r = parse(
            b"POST /login?x=1 HTTP/1.1\r\nCookie: a=1; zocalo_console=abc\r\nContent-Length: 26\r\n\r\nname=ops&password=p%26w+rd",
        )
        .unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/login"));
        assert_eq!(r.cookie("zocalo_console"), Some("abc"));
        assert_eq!(r.form("name").as_deref(), Some("ops"));
        assert_eq!(r.form("password").as_deref(), Some("p&w rd"));
        assert!(!r.close);
    }

    #[test]
    fn bad_requests_are_refused() {
        assert!(matches!(parse(b""), Err(Bad::Gone)));
        assert!(matches!(parse(b"GET /\r\n\r\n"), Err(Bad::Status(s)) if s.starts_with("400")));
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
        assert!(matches!(parse(big.as_bytes()), Err(Bad::Status(s)) if s.starts_with("431")));
        let long = b"POST / HTTP/1.1\r\nContent-Length: 999999\r\n\r\n";
        assert!(matches!(parse(long), Err(Bad::Status(s)) if s.starts_with("413")));
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(parse(chunked), Err(Bad::Status(s)) if s.starts_with("411")));
        assert_eq!(url_decode("%zz%4"), "%zz%4");
        let r = parse(b"POST /api/v1/sessions/n1%3A7/kick HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(r.path, "/api/v1/sessions/n1:7/kick");
    }
}
