//! FTPS with rustls (RFC 4217): the server configuration, a non-blocking TLS stream that both
//! drivers use on control and data connections, and `zocalo cert --self-signed`.
//!
//! Each control connection gets its own TLS scope ([`Tls::for_session`]): a session cache that
//! only it and its own data connections share. A data connection can therefore resume only its
//! own control connection's session, so `--tls-require-reuse` (which vsftpd and ProFTPD apply
//! by default) really ties each data connection to its control connection. The cache hands a
//! session out as often as it is asked (TLS 1.3 tickets are otherwise single-use, and clients
//! present the control connection's ticket on every data connection), and data connections
//! send no TLS 1.3 tickets of their own: an upload-only client never reads them, and its close
//! would then reset the connection and lose the end of the upload (curl issue #6149).

use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::server::{ServerSessionMemoryCache, StoresServerSessions};
use rustls::{HandshakeKind, ServerConfig, ServerConnection};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Plaintext rustls may buffer for sending before writers are told to wait.
const BUFFER_LIMIT: usize = 256 * 1024;

/// The server's TLS setup, or one control connection's scope of it.
#[derive(Clone)]
pub struct Tls {
    pub config: Arc<ServerConfig>,
    /// The same, for data connections: no TLS 1.3 tickets.
    pub data_config: Arc<ServerConfig>,
    /// Refuse data connections that do not resume the control connection's session.
    pub require_reuse: bool,
    /// The server-wide setup's current configuration, which a reload replaces: sessions that
    /// start afterwards get the new certificate, running ones keep theirs. `None` in a
    /// session's scope.
    current: Option<Arc<RwLock<Arc<ServerConfig>>>>,
}

/// A rustls configuration from a PEM certificate chain and private key; errors name the file.
fn server_config(cert: &Path, key: &Path) -> io::Result<Arc<ServerConfig>> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| io::Error::other(format!("TLS certificate {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(io::Error::other(format!(
            "TLS certificate {}: no certificate in it",
            cert.display()
        )));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| io::Error::other(format!("TLS key {}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| {
            io::Error::other(format!("TLS key {} for {}: {e}", key.display(), cert.display()))
        })?;
    Ok(Arc::new(config))
}

/// A session cache whose entries can be resumed more than once.
#[derive(Debug)]
struct Reusable(Arc<ServerSessionMemoryCache>);

impl StoresServerSessions for Reusable {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.0.put(key, value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.get(key)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.get(key)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

impl Tls {
    /// Loads a PEM certificate chain and private key.
    pub fn load(cert: &Path, key: &Path, require_reuse: bool) -> io::Result<Self> {
        let config = server_config(cert, key)?;
        let current = Some(Arc::new(RwLock::new(config.clone())));
        Ok(Tls { data_config: config.clone(), config, require_reuse, current })
    }

    /// Loads the certificate and key again (a reload); on any error the old ones stay.
    pub fn reload(&self, cert: &Path, key: &Path) -> io::Result<()> {
        let config = server_config(cert, key)?;
        if let Some(current) = &self.current {
            *current.write().unwrap_or_else(|e| e.into_inner()) = config;
        }
        Ok(())
    }

    /// The scope of one control connection: a session cache of its own, shared with its data
    /// connections only.
    pub fn for_session(&self) -> Tls {
        let cache: Arc<dyn StoresServerSessions> =
            Arc::new(Reusable(ServerSessionMemoryCache::new(8)));
        let base = match &self.current {
            Some(current) => current.read().unwrap_or_else(|e| e.into_inner()).clone(),
            None => self.config.clone(),
        };
        let mut control = (*base).clone();
        control.session_storage = cache;
        let mut data = control.clone();
        data.send_tls13_tickets = 0;
        let (config, data_config) = (Arc::new(control), Arc::new(data));
        Tls { config, data_config, require_reuse: self.require_reuse, current: None }
    }

    /// A server-side TLS stream for a control connection (the handshake happens as bytes flow).
    pub fn accept(&self, sock: TcpStream) -> io::Result<TlsStream> {
        Self::wrap(&self.config, sock)
    }

    /// A server-side TLS stream for a data connection.
    pub fn accept_data(&self, sock: TcpStream) -> io::Result<TlsStream> {
        Self::wrap(&self.data_config, sock)
    }

    fn wrap(config: &Arc<ServerConfig>, sock: TcpStream) -> io::Result<TlsStream> {
        let mut conn = ServerConnection::new(config.clone()).map_err(io::Error::other)?;
        conn.set_buffer_limit(Some(BUFFER_LIMIT));
        Ok(TlsStream { conn, sock, eof: false, truncated: false, counted: false })
    }
}

/// A TLS connection over a non-blocking socket: `read` and `write` return `WouldBlock` when the
/// socket does, like a plain `TcpStream`.
pub struct TlsStream {
    conn: ServerConnection,
    sock: TcpStream,
    eof: bool,
    /// The peer closed the TCP connection without a TLS close_notify: whatever it sent may
    /// have been cut by anyone on the path (vsftpd's `strict_ssl_read_eof`).
    truncated: bool,
    /// The handshake's outcome went into the metrics (a success once it completes; a stream
    /// dropped before that counts as a failure).
    counted: bool,
}

impl Drop for TlsStream {
    fn drop(&mut self) {
        if !self.counted {
            crate::ops::metrics::inc(crate::ops::metrics::Counter::TlsFailures);
        }
    }
}

impl TlsStream {
    /// Still negotiating.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// True when the handshake resumed an earlier session.
    pub fn resumed(&self) -> bool {
        self.conn.handshake_kind() == Some(HandshakeKind::Resumed)
    }

    /// TLS records wait to be written to the socket.
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Decrypted bytes are buffered and can be read without touching the socket.
    pub fn has_buffered(&mut self) -> bool {
        self.conn.process_new_packets().is_ok_and(|s| s.plaintext_bytes_to_read() > 0)
    }

    /// Writes buffered TLS records; `WouldBlock` when the socket is full.
    pub fn flush_tls(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut self.sock) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Drives the handshake as far as the socket allows; `Ok(true)` once it is complete.
    pub fn handshake(&mut self) -> io::Result<bool> {
        while self.conn.is_handshaking() {
            self.flush_tls()?;
            if !self.conn.is_handshaking() {
                break;
            }
            if self.read_records()? == 0 {
                return Err(ErrorKind::UnexpectedEof.into());
            }
        }
        match self.flush_tls() {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Sends close_notify (best effort; the socket may be full).
    pub fn close(&mut self) {
        self.conn.send_close_notify();
        let _ = self.flush_tls();
    }

    fn read_records(&mut self) -> io::Result<usize> {
        let n = loop {
            match self.conn.read_tls(&mut self.sock) {
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        if n == 0 {
            self.eof = true;
            return Ok(0);
        }
        if let Err(e) = self.conn.process_new_packets() {
            let _ = self.flush_tls();
            return Err(io::Error::new(ErrorKind::InvalidData, e));
        }
        if !self.counted && !self.conn.is_handshaking() {
            self.counted = true;
            crate::ops::metrics::inc(crate::ops::metrics::Counter::TlsHandshakes);
        }
        Ok(n)
    }

    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
                    self.truncated = true;
                    return Ok(0);
                }
                Err(e) => return Err(e),
            }
            if self.eof {
                return Ok(0);
            }
            if let Err(e) = self.flush_tls() {
                if e.kind() != ErrorKind::WouldBlock {
                    return Err(e);
                }
            }
            // At the socket's end the reader says how the peer left: Ok(0) after its
            // close_notify, UnexpectedEof after a bare TCP close (the next turn).
            self.read_records()?;
        }
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.conn.wants_write() {
            self.flush_tls()?;
        }
        let n = self.conn.writer().write(buf)?;
        match self.flush_tls() {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock && n > 0 => {}
            Err(e) => return Err(e),
        }
        if n == 0 && !buf.is_empty() {
            return Err(ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_tls()
    }
}

/// A control or data connection, in clear or in TLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
    /// Left behind by a failed upgrade; every operation fails.
    Closed,
}

fn closed() -> io::Error {
    io::Error::from(ErrorKind::NotConnected)
}

impl Stream {
    pub fn fd(&self) -> RawFd {
        match self {
            Stream::Plain(s) => s.as_raw_fd(),
            Stream::Tls(t) => t.fd(),
            Stream::Closed => -1,
        }
    }

    /// Output is buffered in TLS and needs the socket to become writable.
    pub fn wants_write(&self) -> bool {
        matches!(self, Stream::Tls(t) if t.wants_write())
    }

    /// Bytes can be read without waiting for the socket.
    pub fn has_buffered(&mut self) -> bool {
        match self {
            Stream::Tls(t) => t.has_buffered(),
            Stream::Plain(_) | Stream::Closed => false,
        }
    }

    pub fn is_handshaking(&self) -> bool {
        matches!(self, Stream::Tls(t) if t.is_handshaking())
    }

    /// Pushes out buffered TLS records.
    pub fn flush_tls(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(_) => Ok(()),
            Stream::Tls(t) => t.flush_tls(),
            Stream::Closed => Err(closed()),
        }
    }

    /// Wraps a plain control stream in TLS (implicit FTPS).
    pub fn upgrade(self, tls: &Tls) -> io::Result<Stream> {
        self.wrap(|sock| tls.accept(sock))
    }

    /// Wraps a plain data stream in TLS (PROT P).
    pub fn upgrade_data(self, tls: &Tls) -> io::Result<Stream> {
        self.wrap(|sock| tls.accept_data(sock))
    }

    fn wrap(self, accept: impl FnOnce(TcpStream) -> io::Result<TlsStream>) -> io::Result<Stream> {
        match self {
            Stream::Plain(sock) => Ok(Stream::Tls(Box::new(accept(sock)?))),
            tls_already => Ok(tls_already),
        }
    }

    /// Wraps a clear stream in TLS where it stands; the descriptor keeps its number.
    pub fn upgrade_in_place(&mut self, tls: &Tls) -> io::Result<()> {
        if let Stream::Plain(sock) = std::mem::replace(self, Stream::Closed) {
            *self = Stream::Tls(Box::new(tls.accept(sock)?));
        }
        Ok(())
    }

    /// Whether the stream ended with a bare TCP close rather than TLS's close_notify.
    pub fn truncated(&self) -> bool {
        matches!(self, Stream::Tls(t) if t.truncated)
    }

    /// Sends close_notify on a TLS stream.
    pub fn close(&mut self) {
        if let Stream::Tls(t) = self {
            t.close();
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(t) => t.read(buf),
            Stream::Closed => Err(closed()),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(t) => t.write(buf),
            Stream::Closed => Err(closed()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_tls()
    }
}

/// Writes `cert.pem` and `key.pem` for a self-signed certificate for localhost into `dir`.
pub fn self_signed(dir: &Path, names: &[String], force: bool) -> io::Result<()> {
    for file in ["cert.pem", "key.pem"] {
        let path = dir.join(file);
        if !force && path.exists() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists; --force replaces it", path.display()),
            ));
        }
    }
    let mut names = names.to_vec();
    if names.is_empty() {
        names = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    }
    let cert = rcgen::generate_simple_self_signed(names).map_err(io::Error::other)?;
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("cert.pem"), cert.cert.pem())?;
    let key_path = dir.join("key.pem");
    std::fs::write(&key_path, cert.signing_key.serialize_pem())?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))
}
