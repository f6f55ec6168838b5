//! A blocking FTP/FTPS client: one control connection, one data connection at a time.
//!
//! [`Client::open`] connects (IPv4 or IPv6), starts TLS when asked (implicit for `ftps://`,
//! explicit AUTH TLS with [`ClientOptions::explicit_tls`]), logs in (anonymous when the URL has
//! no user) and switches to binary. Data connections are passive by default (EPSV, falling back
//! to PASV once the server refuses EPSV) or active (PORT, or EPRT for IPv6). With TLS, data
//! connections are protected (PBSZ 0, PROT P) and share the control connection's rustls
//! configuration, so rustls resumes the session; [`Client::data_resumed`] says whether it did.
//!
//! What it does not do: ASCII-mode conversion, ABOR, proxies, or more than one transfer at a
//! time. Every socket operation is bounded by [`ClientOptions::timeout`].

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConfig, ClientConnection, HandshakeKind, StreamOwned};
use rustls_pki_types::ServerName;

use crate::listing::{self, Entry};
use crate::reply::{Reply, ReplyParser, MAX_LINE};
use crate::tls::{self, TlsOptions};
use crate::url::{FtpUrl, Scheme};

/// Bytes moved per read or write on a data connection.
const CHUNK: usize = 256 * 1024;

/// Who opens the data connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DataMode {
    /// The client connects to the server (EPSV, else PASV).
    #[default]
    Passive,
    /// The server connects to the client (PORT, or EPRT for IPv6).
    Active,
}

/// How to connect; the URL says where and as whom.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub mode: DataMode,
    /// Send AUTH TLS on an `ftp://` URL (`ftps://` is implicit TLS whatever this says).
    pub explicit_tls: bool,
    pub tls: TlsOptions,
    /// Bound on connecting and on each read or write.
    pub timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            mode: DataMode::Passive,
            explicit_tls: false,
            tls: TlsOptions::default(),
            timeout: Duration::from_secs(30),
        }
    }
}

/// What went wrong, with the server's reply when there was one.
#[derive(Debug)]
pub enum FtpError {
    /// Could not reach the server, or TLS could not be set up.
    Connect(String),
    /// The control connection broke or timed out.
    Io(io::Error),
    /// The server sent something that is not an FTP reply, or an unexpected one.
    Protocol(String),
    /// USER/PASS refused.
    Login(Reply),
    /// A command was refused (4xx or 5xx).
    Refused { command: String, reply: Reply },
    /// The data connection failed, or the transfer did not complete.
    Transfer(String),
}

impl fmt::Display for FtpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FtpError::Connect(msg) => write!(f, "cannot connect: {msg}"),
            FtpError::Io(e) => write!(f, "control connection: {e}"),
            FtpError::Protocol(msg) => write!(f, "protocol error: {msg}"),
            FtpError::Login(reply) => write!(f, "login refused: {reply}"),
            FtpError::Refused { command, reply } => write!(f, "{command}: {reply}"),
            FtpError::Transfer(msg) => write!(f, "transfer failed: {msg}"),
        }
    }
}

impl std::error::Error for FtpError {}

impl From<io::Error> for FtpError {
    fn from(e: io::Error) -> FtpError {
        FtpError::Io(e)
    }
}

pub type Result<T> = std::result::Result<T, FtpError>;

/// A TCP stream, plain or wrapped in TLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.sock,
        }
    }

    /// Sends TLS close_notify (if any) and half-closes, so the peer sees a clean end of file,
    /// then reads until the peer closes too. Closing with unread bytes (a TLS 1.3 session
    /// ticket, say) would send a reset that can overtake the upload's last bytes.
    fn finish_writing(&mut self) -> io::Result<()> {
        if let Stream::Tls(s) = self {
            s.conn.send_close_notify();
            s.flush()?;
        }
        self.tcp().shutdown(Shutdown::Write)?;
        io::copy(self, &mut io::sink()).map(drop)
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            // Many servers close data connections without close_notify; the 226 that follows
            // on the control connection is what says the transfer is complete.
            Stream::Tls(s) => match s.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
                other => other,
            },
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// The most a listing (LIST, NLST, MLSD) may hold: about 600,000 entries.
const MAX_LISTING: u64 = 64 << 20;

/// The TLS settings of a protected session: one configuration (and session store) for all.
#[derive(Clone)]
struct TlsContext {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl TlsContext {
    /// Wraps `tcp` and completes the handshake, reporting whether the session was resumed.
    fn wrap(&self, mut tcp: TcpStream) -> Result<(Stream, bool)> {
        let mut conn = ClientConnection::new(self.config.clone(), self.name.clone())
            .map_err(|e| FtpError::Connect(format!("TLS: {e}")))?;
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp).map_err(|e| {
                let host = match &self.name {
                    ServerName::DnsName(d) => d.as_ref().to_string(),
                    ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
                    _ => String::new(),
                };
                FtpError::Connect(format!("TLS handshake: {}", crate::tls::explain(&e, &host)))
            })?;
        }
        let resumed = conn.handshake_kind() == Some(HandshakeKind::Resumed);
        Ok((Stream::Tls(Box::new(StreamOwned::new(conn, tcp))), resumed))
    }
}

/// A data connection being set up: connected already (passive) or awaiting the server (active).
enum PendingData {
    Connected(TcpStream),
    Listening(TcpListener),
}

/// One logged-in (or about to be) FTP session.
pub struct Client {
    ctrl: BufReader<Stream>,
    parser: ReplyParser,
    opts: ClientOptions,
    peer: SocketAddr,
    tls: Option<TlsContext>,
    protect_data: bool,
    epsv_refused: bool,
    data_resumed: Option<bool>,
    /// The server's greeting.
    pub welcome: Reply,
}

impl Client {
    /// Connects, starts TLS as the URL and options ask, logs in and selects binary mode.
    pub fn open(url: &FtpUrl, opts: &ClientOptions) -> Result<Client> {
        let mut client = Client::connect(url, opts)?;
        let user = url.user.as_deref().unwrap_or("anonymous");
        let pass = url.password.as_deref().unwrap_or("zocalo@");
        client.login(user, pass)?;
        if client.tls.is_some() {
            client.protect()?;
        }
        client.binary()?;
        Ok(client)
    }

    /// Connects and reads the greeting; with TLS asked for, secures the control connection.
    pub fn connect(url: &FtpUrl, opts: &ClientOptions) -> Result<Client> {
        let tcp = connect_tcp(&url.authority(), opts.timeout)?;
        let peer = tcp.peer_addr()?;
        let tls = match (url.scheme, opts.explicit_tls) {
            (Scheme::Ftp, false) => None,
            _ => Some(TlsContext {
                config: tls::client_config(&opts.tls).map_err(FtpError::Connect)?,
                name: tls::server_name(&url.host).map_err(FtpError::Connect)?,
            }),
        };
        let stream = match (&tls, url.scheme) {
            (Some(ctx), Scheme::Ftps) => ctx.wrap(tcp)?.0,
            _ => Stream::Plain(tcp),
        };
        let mut client = Client {
            ctrl: BufReader::new(stream),
            parser: ReplyParser::new(),
            opts: opts.clone(),
            peer,
            tls,
            protect_data: false,
            epsv_refused: false,
            data_resumed: None,
            welcome: Reply { code: 0, lines: Vec::new() },
        };
        client.welcome = client.greeting()?;
        if url.scheme == Scheme::Ftp && client.tls.is_some() {
            client.auth_tls()?;
        }
        Ok(client)
    }

    /// USER, then PASS if asked for.
    pub fn login(&mut self, user: &str, pass: &str) -> Result<()> {
        let reply = self.command(&format!("USER {user}"))?;
        let reply =
            if reply.is_intermediate() { self.command(&format!("PASS {pass}"))? } else { reply };
        match reply.code {
            230 | 202 => Ok(()),
            _ => Err(FtpError::Login(reply)),
        }
    }

    /// Sends one command line and reads its reply, whatever the code.
    pub fn command(&mut self, line: &str) -> Result<Reply> {
        let stream = self.ctrl.get_mut();
        stream.write_all(line.as_bytes())?;
        stream.write_all(b"\r\n")?;
        stream.flush()?;
        self.read_reply()
    }

    /// Sends a command and requires a 2yz (or 3yz when `intermediate`) reply.
    fn expect(&mut self, line: &str, intermediate: bool) -> Result<Reply> {
        let reply = self.command(line)?;
        if reply.is_ok() || (intermediate && reply.is_intermediate()) {
            return Ok(reply);
        }
        Err(refused(line, reply))
    }

    /// Reads the next complete reply from the control connection.
    pub fn read_reply(&mut self) -> Result<Reply> {
        let mut line = String::new();
        loop {
            line.clear();
            let n = (&mut self.ctrl).take(MAX_LINE as u64).read_line(&mut line)?;
            if n == 0 {
                let msg = "the server closed the control connection";
                return Err(FtpError::Io(io::Error::new(io::ErrorKind::UnexpectedEof, msg)));
            }
            let parsed = self.parser.feed_line(&line);
            if let Some(reply) = parsed.map_err(|e| FtpError::Protocol(e.to_string()))? {
                return Ok(reply);
            }
        }
    }

    fn greeting(&mut self) -> Result<Reply> {
        let mut reply = self.read_reply()?;
        if reply.code == 120 {
            reply = self.read_reply()?;
        }
        if reply.code != 220 {
            return Err(FtpError::Connect(format!("server refused the session: {reply}")));
        }
        Ok(reply)
    }

    /// AUTH TLS, then the handshake on the control connection.
    fn auth_tls(&mut self) -> Result<()> {
        let reply = self.command("AUTH TLS")?;
        if reply.code != 234 {
            return Err(FtpError::Connect(format!("AUTH TLS refused: {reply}")));
        }
        let ctx = self.tls.clone().expect("auth_tls runs only with a TLS context");
        let Stream::Plain(tcp) = self.ctrl.get_ref() else {
            return Err(FtpError::Protocol("AUTH TLS on a TLS connection".into()));
        };
        let tcp = tcp.try_clone()?;
        self.ctrl = BufReader::new(ctx.wrap(tcp)?.0);
        Ok(())
    }

    /// PBSZ 0 and PROT P: protect the data connections too.
    fn protect(&mut self) -> Result<()> {
        self.expect("PBSZ 0", false)?;
        self.expect("PROT P", false)?;
        self.protect_data = true;
        Ok(())
    }

    /// TYPE I.
    pub fn binary(&mut self) -> Result<()> {
        self.expect("TYPE I", false).map(drop)
    }

    /// CWD.
    pub fn cwd(&mut self, path: &str) -> Result<()> {
        self.expect(&format!("CWD {path}"), false).map(drop)
    }

    /// MKD; returns the reply (257 with the created path).
    pub fn mkd(&mut self, path: &str) -> Result<Reply> {
        self.expect(&format!("MKD {path}"), false)
    }

    /// RMD.
    pub fn rmd(&mut self, path: &str) -> Result<()> {
        self.expect(&format!("RMD {path}"), false).map(drop)
    }

    /// DELE.
    pub fn dele(&mut self, path: &str) -> Result<()> {
        self.expect(&format!("DELE {path}"), false).map(drop)
    }

    /// SIZE (RFC 3659), in bytes.
    pub fn size(&mut self, path: &str) -> Result<u64> {
        let line = format!("SIZE {path}");
        let reply = self.expect(&line, false)?;
        reply
            .first_line()
            .trim()
            .parse()
            .map_err(|_| FtpError::Protocol(format!("bad SIZE reply: {reply}")))
    }

    /// MDTM (RFC 3659): the file's modification time, UTC to the second.
    pub fn mdtm(&mut self, path: &str) -> Result<std::time::SystemTime> {
        let reply = self.expect(&format!("MDTM {path}"), false)?;
        let text = reply.first_line().trim().to_string();
        zocalo_proto::listing::parse_time_val(&text)
            .ok_or_else(|| FtpError::Protocol(format!("bad MDTM reply: {reply}")))
    }

    /// Sets a file's modification time: MFMT, or where the server does not know it the
    /// `MDTM TIME PATH` form that vsftpd and others accept. False if neither worked.
    pub fn set_modified(&mut self, path: &str, time: std::time::SystemTime) -> bool {
        let stamp = zocalo_proto::listing::time_val(time);
        for line in [format!("MFMT {stamp} {path}"), format!("MDTM {stamp} {path}")] {
            match self.command(&line) {
                Ok(reply) if reply.code / 100 == 2 => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    }

    /// QUIT, ignoring a server that already closed.
    pub fn quit(mut self) -> Result<()> {
        self.command("QUIT").map(drop)
    }

    /// Whether the last protected data connection resumed the TLS session (`None`: no TLS data
    /// connection yet).
    pub fn data_resumed(&self) -> Option<bool> {
        self.data_resumed
    }

    /// Whether the control connection is protected by TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self.ctrl.get_ref(), Stream::Tls(_))
    }

    /// RETR `path` from byte `offset` (REST) into `sink`; `progress` gets each chunk's size.
    pub fn retr(
        &mut self,
        path: &str,
        offset: u64,
        sink: &mut dyn Write,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64> {
        self.restart(offset)?;
        let command = format!("RETR {path}");
        let mut data = self.start_transfer(&command)?;
        let copied = copy(&mut data, sink, progress);
        drop(data);
        self.finish_transfer(&command, copied)
    }

    /// STOR `path` from `source`, starting at byte `offset` of the remote file (REST).
    pub fn stor(
        &mut self,
        path: &str,
        offset: u64,
        source: &mut dyn Read,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64> {
        self.restart(offset)?;
        let command = format!("STOR {path}");
        let mut data = self.start_transfer(&command)?;
        let copied = copy(source, &mut data, progress).and_then(|n| {
            data.finish_writing()?;
            Ok(n)
        });
        drop(data);
        self.finish_transfer(&command, copied)
    }

    /// LIST `path` as the server formats it.
    pub fn list(&mut self, path: &str) -> Result<String> {
        self.text_listing(&with_arg("LIST", path))
    }

    /// NLST `path`: names only.
    pub fn nlst(&mut self, path: &str) -> Result<Vec<String>> {
        let body = self.text_listing(&with_arg("NLST", path))?;
        Ok(body.lines().map(|l| l.trim_end().to_owned()).collect())
    }

    /// MLSD `path`, parsed.
    pub fn mlsd(&mut self, path: &str) -> Result<Vec<Entry>> {
        let body = self.text_listing(&with_arg("MLSD", path))?;
        Ok(listing::parse_mlsd(&body))
    }

    /// MLSD, or LIST parsed as best we can when the server does not know MLSD.
    pub fn entries(&mut self, path: &str) -> Result<Vec<Entry>> {
        match self.mlsd(path) {
            Err(FtpError::Refused { reply, .. }) if matches!(reply.code, 500 | 502) => {
                Ok(listing::parse_list(&self.list(path)?))
            }
            other => other,
        }
    }

    /// Runs a listing command and returns its body.
    fn text_listing(&mut self, command: &str) -> Result<String> {
        let mut body = Vec::new();
        let mut data = self.start_transfer(command)?;
        // A listing that never ends fails instead of growing the client without bound.
        let mut bounded = (&mut data).take(MAX_LISTING + 1);
        let copied = copy(&mut bounded, &mut body, &mut |_| {});
        drop(data);
        if body.len() as u64 > MAX_LISTING {
            let _ = self.finish_transfer(command, copied);
            return Err(FtpError::Protocol(format!(
                "{command}: the listing is longer than {} MiB; refused",
                MAX_LISTING >> 20
            )));
        }
        self.finish_transfer(command, copied)?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    fn restart(&mut self, offset: u64) -> Result<()> {
        if offset > 0 {
            self.expect(&format!("REST {offset}"), true)?;
        }
        Ok(())
    }

    /// Prepares the data connection, sends `command`, and returns the connection once the server
    /// has answered 1yz.
    fn start_transfer(&mut self, command: &str) -> Result<Stream> {
        let pending = self.prepare_data()?;
        let reply = self.command(command)?;
        if !reply.is_preliminary() {
            return Err(refused(command, reply));
        }
        let tcp = match pending {
            PendingData::Connected(tcp) => tcp,
            PendingData::Listening(listener) => accept(&listener, self.opts.timeout)?,
        };
        tcp.set_read_timeout(Some(self.opts.timeout))?;
        tcp.set_write_timeout(Some(self.opts.timeout))?;
        match (&self.tls, self.protect_data) {
            (Some(ctx), true) => {
                let (stream, resumed) = ctx.wrap(tcp)?;
                self.data_resumed = Some(resumed);
                Ok(stream)
            }
            _ => Ok(Stream::Plain(tcp)),
        }
    }

    /// Reads the transfer's final reply; a local copy error wins over a 2yz reply.
    fn finish_transfer(&mut self, command: &str, copied: io::Result<u64>) -> Result<u64> {
        let reply = self.read_reply()?;
        let n = copied.map_err(|e| FtpError::Transfer(format!("{command}: {e} ({reply})")))?;
        if !reply.is_ok() {
            return Err(FtpError::Transfer(format!("{command}: {reply}")));
        }
        Ok(n)
    }

    fn prepare_data(&mut self) -> Result<PendingData> {
        match self.opts.mode {
            DataMode::Passive => {
                let addr = self.passive_addr()?;
                let tcp = TcpStream::connect_timeout(&addr, self.opts.timeout)
                    .map_err(|e| FtpError::Transfer(format!("data connection to {addr}: {e}")))?;
                Ok(PendingData::Connected(tcp))
            }
            DataMode::Active => self.active_listener().map(PendingData::Listening),
        }
    }

    /// EPSV (RFC 2428), or PASV once EPSV has been refused.
    fn passive_addr(&mut self) -> Result<SocketAddr> {
        if !self.epsv_refused {
            let reply = self.command("EPSV")?;
            if reply.code == 229 {
                let port = zocalo_proto::command::epsv_reply_port(&reply.text())
                    .ok_or_else(|| FtpError::Protocol(format!("bad EPSV reply: {reply}")))?;
                return Ok(SocketAddr::new(self.peer.ip(), port));
            }
            if reply.code / 100 != 5 || self.peer.is_ipv6() {
                return Err(refused("EPSV", reply));
            }
            self.epsv_refused = true;
        }
        let reply = self.expect("PASV", false)?;
        let addr = zocalo_proto::command::pasv_reply_addr(&format!("227 {}", reply.text()))
            .ok_or_else(|| FtpError::Protocol(format!("bad PASV reply: {reply}")))?;
        // Only the port is taken: the data connection goes where the control connection went,
        // as curl's --ftp-skip-pasv-ip does by default. A server behind NAT may announce an
        // address of no use to us, and a hostile one could name another host for an upload to
        // be sent to (curl's CVE-2020-8284).
        Ok(SocketAddr::new(self.peer.ip(), addr.port()))
    }

    /// Listens on the control connection's local address and tells the server with PORT/EPRT.
    fn active_listener(&mut self) -> Result<TcpListener> {
        let local = self.ctrl.get_ref().tcp().local_addr()?;
        let listener = TcpListener::bind(SocketAddr::new(local.ip(), 0))?;
        let port = listener.local_addr()?.port();
        let line = match local.ip() {
            IpAddr::V4(ip) => {
                let [a, b, c, d] = ip.octets();
                format!("PORT {a},{b},{c},{d},{},{}", port >> 8, port & 0xff)
            }
            IpAddr::V6(ip) => format!("EPRT |2|{ip}|{port}|"),
        };
        self.expect(&line, false)?;
        Ok(listener)
    }
}

fn with_arg(command: &str, path: &str) -> String {
    if path.is_empty() {
        command.to_owned()
    } else {
        format!("{command} {path}")
    }
}

fn refused(command: &str, reply: Reply) -> FtpError {
    // Never echo a password back into an error message.
    let command = if command.starts_with("PASS ") { "PASS" } else { command };
    FtpError::Refused { command: command.to_owned(), reply }
}

/// Resolves `authority` and connects to the first address that answers.
fn connect_tcp(authority: &str, timeout: Duration) -> Result<TcpStream> {
    let addrs =
        authority.to_socket_addrs().map_err(|e| FtpError::Connect(format!("{authority}: {e}")))?;
    let mut last = format!("{authority}: no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(tcp) => {
                tcp.set_read_timeout(Some(timeout))?;
                tcp.set_write_timeout(Some(timeout))?;
                tcp.set_nodelay(true)?;
                return Ok(tcp);
            }
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(FtpError::Connect(last))
}

/// Accepts the server's active-mode data connection, waiting at most `timeout`.
fn accept(listener: &TcpListener, timeout: Duration) -> Result<TcpStream> {
    if !zocalo_poller::fds::wait_one(listener.as_raw_fd(), false, timeout).unwrap_or(false) {
        return Err(FtpError::Transfer("the server did not open the data connection".into()));
    }
    let (tcp, _) = listener.accept().map_err(|e| FtpError::Transfer(format!("accept: {e}")))?;
    Ok(tcp)
}

/// Copies until end of file, reporting each chunk.
fn copy(from: &mut dyn Read, to: &mut dyn Write, progress: &mut dyn FnMut(u64)) -> io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return to.flush().map(|_| total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        total += n as u64;
        progress(n as u64);
    }
}
