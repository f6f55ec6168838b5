//! Object storage for zocalo: the session's [`Storage`] spoken to any S3-compatible service.
//!
//! A path maps to a key under the storage's prefix (`dir/file` → `PREFIX/dir/file`); a directory
//! is a key prefix, made visible when empty by a `dir/` marker object, as the S3 consoles and
//! rclone do. What each FTP command means here (one GET per RETR, multipart STOR, no APPE, copy
//! and delete for a rename) is listed in the README's "Object storage" section and follows from
//! the methods below.
//!
//! Every call is synchronous and bounded in time (connect, answer and per-read timeouts), so a
//! dead storage costs a session a clear 451 and never a hang.

mod client;
mod limits;
mod list;
mod time;
mod upload;

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rusty_s3::{Bucket, Credentials, Method, S3Action, UrlStyle};
use zocalo_proto::storage::{DirStream, FileHandle, FileKind, Metadata, WriteMode};
use zocalo_proto::Storage;

use client::{Client, SIGN_FOR};
pub use upload::{part_size, FIRST_PART};

/// Where the objects live and how to reach them.
#[derive(Clone)]
pub struct S3Config {
    /// `host:port` of the service.
    pub endpoint: String,
    pub bucket: String,
    /// Keys of this storage start with `PREFIX/`; empty for the whole bucket.
    pub prefix: String,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
    /// Speak plain HTTP instead of HTTPS (a test or a private network).
    pub insecure_http: bool,
    /// How long a connection, an answer and each read of a body may take; a body must also
    /// bring 64 KiB per this much time spent waiting for it.
    pub timeout: Duration,
    /// Size of the first parts of a multipart upload.
    pub part_size: usize,
    /// Bytes the part buffers of all uploads may hold at once.
    pub upload_memory: u64,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret key is never printed.
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("region", &self.region)
            .field("insecure_http", &self.insecure_http)
            .finish_non_exhaustive()
    }
}

impl S3Config {
    /// The bucket at `s3://HOST:PORT/BUCKET[/PREFIX]` with these credentials, and the defaults:
    /// region `us-east-1`, HTTPS, a 30 s timeout, parts of [`FIRST_PART`], 512 MiB for the
    /// buffers of uploads.
    pub fn new(location: &str, access_key: String, secret_key: String) -> Result<S3Config, String> {
        let (endpoint, bucket, prefix) = parse_location(location)?;
        Ok(S3Config {
            endpoint,
            bucket,
            prefix,
            region: "us-east-1".into(),
            access_key,
            secret_key,
            insecure_http: false,
            timeout: Duration::from_secs(30),
            part_size: FIRST_PART,
            upload_memory: 512 << 20,
        })
    }
}

/// Splits `s3://HOST:PORT/BUCKET[/PREFIX]` into endpoint, bucket and prefix.
pub fn parse_location(location: &str) -> Result<(String, String, String), String> {
    let bad = || format!("{location}: expected s3://HOST:PORT/BUCKET[/PREFIX]");
    let rest = location.strip_prefix("s3://").ok_or_else(bad)?;
    let (endpoint, path) = rest.split_once('/').ok_or_else(bad)?;
    let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
    let valid_bucket = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b));
    if endpoint.is_empty() || !valid_bucket {
        return Err(bad());
    }
    let prefix = prefix.trim_matches('/');
    if prefix.split('/').any(|p| p == "." || p == "..") || prefix.contains("//") {
        return Err(format!("{location}: the prefix may not hold '.', '..' or empty parts"));
    }
    Ok((endpoint.to_string(), bucket.to_string(), prefix.to_string()))
}

/// A storage over one bucket (and prefix) of an S3 service. Cloning is cheap: the connection
/// pool is shared.
#[derive(Clone)]
pub struct S3Storage {
    client: Arc<Client>,
    /// Prepended to every path: empty, or ends with `/`.
    root: String,
    part_size: usize,
}

impl S3Storage {
    pub fn new(config: &S3Config) -> io::Result<S3Storage> {
        let scheme = if config.insecure_http { "http" } else { "https" };
        let invalid = |e: String| io::Error::new(io::ErrorKind::InvalidInput, e);
        let url: url::Url = format!("{scheme}://{}", config.endpoint)
            .parse()
            .map_err(|e| invalid(format!("S3 endpoint {}: {e}", config.endpoint)))?;
        let bucket = Bucket::new(url, UrlStyle::Path, config.bucket.clone(), config.region.clone())
            .map_err(|e| invalid(format!("S3 bucket {}: {e}", config.bucket)))?;
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::PlatformVerifier)
            .build();
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(config.timeout.min(Duration::from_secs(10))))
            .timeout_send_request(Some(config.timeout))
            .timeout_send_body(Some(config.timeout))
            .timeout_recv_response(Some(config.timeout))
            .timeout_per_read(Some(config.timeout))
            .timeout_per_write(Some(config.timeout))
            .max_idle_connections(256)
            .max_idle_connections_per_host(256)
            .tls_config(tls)
            .build()
            .into();
        let client = Client {
            agent,
            bucket,
            credentials: Credentials::new(config.access_key.clone(), config.secret_key.clone()),
            endpoint: config.endpoint.clone(),
            timeout: config.timeout,
            budget: limits::Budget::new(config.upload_memory),
        };
        let root = match config.prefix.is_empty() {
            true => String::new(),
            false => format!("{}/", config.prefix),
        };
        Ok(S3Storage { client: Arc::new(client), root, part_size: config.part_size.max(5 << 20) })
    }

    /// Checks at start-up that the bucket answers with these credentials, so a wrong endpoint,
    /// bucket or key is an error the operator sees at once.
    pub fn check(&self) -> io::Result<()> {
        let client = &self.client;
        let mut action = client.bucket.list_objects_v2(Some(&client.credentials));
        action.with_max_keys(1);
        client.send(Method::Get, &action.sign(SIGN_FOR), &[], &[]).map(drop).map_err(|e| {
            let bucket = client.bucket.name();
            let text = e.to_string();
            // rustls meeting a plain HTTP answer: the store speaks HTTP, not HTTPS.
            let hint = if text.contains("InvalidContentType") || text.contains("corrupt message") {
                "; the store answered in plain HTTP, not HTTPS: give --s3-insecure-http \
                 (only for a store on a trusted network)"
            } else {
                ""
            };
            io::Error::new(e.kind(), format!("bucket {bucket}: {e}{hint}"))
        })
    }

    /// The same bucket seen from `home` (a users-file account's home: a prefix under this one).
    pub fn with_home(&self, home: &str) -> S3Storage {
        let home = normal_home(home);
        let root = match home.is_empty() {
            true => self.root.clone(),
            false => format!("{}{home}/", self.root),
        };
        S3Storage { root, ..self.clone() }
    }

    /// Makes the directory `home` (each missing level of it) if no object or marker has its
    /// prefix yet: on S3 a home exists once something is under it, so an account's first
    /// login creates it.
    pub fn make_home(&self, home: &str) -> io::Result<()> {
        let home = normal_home(home);
        if home.is_empty() {
            return Ok(());
        }
        let mut path = String::new();
        for part in home.split('/') {
            if !path.is_empty() {
                path.push('/');
            }
            path.push_str(part);
            match self.metadata(&path) {
                Ok(meta) if meta.kind == FileKind::Dir => {}
                Ok(_) => return Err(io::ErrorKind::NotADirectory.into()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    self.put_empty(&format!("{}/", self.key(&path)))?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn key(&self, path: &str) -> String {
        format!("{}{path}", self.root)
    }

    /// The prefix that a directory's entries share (`""` lists the whole root).
    fn dir_prefix(&self, path: &str) -> String {
        match path.is_empty() {
            true => self.root.clone(),
            false => format!("{}{path}/", self.root),
        }
    }

    /// HEAD of one object: `None` when there is none.
    fn head(&self, key: &str) -> io::Result<Option<Metadata>> {
        let client = &self.client;
        let action = client.bucket.head_object(Some(&client.credentials), key);
        let response = match client.send(Method::Head, &action.sign(SIGN_FOR), &[], &[]) {
            Ok(response) => response,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err),
        };
        let header = |name| response.headers().get(name).and_then(|v| v.to_str().ok());
        let size = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        let modified = header("last-modified").and_then(time::parse_http_date);
        Ok(Some(file_metadata(size, modified)))
    }

    /// Whether a directory exists: its marker or any key under it. Returns the first page's
    /// facts: (exists, holds anything but its marker).
    fn probe_dir(&self, path: &str) -> io::Result<(bool, bool)> {
        let prefix = self.dir_prefix(path);
        let mut lister = list::Lister::new(self.client.clone(), prefix, 2);
        let page = lister.page()?;
        Ok((page.marker || !page.entries.is_empty(), !page.entries.is_empty()))
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        let client = &self.client;
        let action = client.bucket.delete_object(Some(&client.credentials), key);
        client.send(Method::Delete, &action.sign(SIGN_FOR), &[], &[]).map(drop)
    }

    fn put_empty(&self, key: &str) -> io::Result<()> {
        let client = &self.client;
        let action = client.bucket.put_object(Some(&client.credentials), key);
        client.send(Method::Put, &action.sign(SIGN_FOR), &[], &[]).map(drop)
    }

    /// Server-side copy of one object (CopyObject up to 5 GiB, a multipart copy beyond).
    fn copy(&self, from: &str, to: &str, size: u64) -> io::Result<()> {
        let client = &self.client;
        let source = format!("/{}/{}", client.bucket.name(), encode_key(from));
        if size > COPY_MAX {
            return self.copy_multipart(&source, to, size);
        }
        let mut action = client.bucket.put_object(Some(&client.credentials), to);
        action.headers_mut().insert("x-amz-copy-source", source.clone());
        let url = action.sign(SIGN_FOR);
        let response = client.send(Method::Put, &url, &[("x-amz-copy-source", &source)], &[])?;
        client.body_error(&client::read_body(response)?, &format!("copy {from}"))
    }

    fn copy_multipart(&self, source: &str, to: &str, size: u64) -> io::Result<()> {
        let client = &self.client;
        let id = client.create_multipart(to)?;
        let mut etags = Vec::new();
        let mut copy_parts = || {
            let (mut start, mut number) = (0u64, 1u16);
            while start < size {
                let end = (start + COPY_PART).min(size) - 1;
                let range = format!("bytes={start}-{end}");
                let mut action =
                    client.bucket.upload_part(Some(&client.credentials), to, number, &id);
                let headers = [("x-amz-copy-source", source), ("x-amz-copy-source-range", &range)];
                for (name, value) in headers {
                    action.headers_mut().insert(name, value);
                }
                let answer = client.send(Method::Put, &action.sign(SIGN_FOR), &headers, &[])?;
                let text = client::read_body(answer)?;
                let etag = text
                    .split_once("<ETag>")
                    .and_then(|(_, rest)| rest.split_once("</ETag>"))
                    .map(|(etag, _)| etag.replace("&quot;", "\""))
                    .ok_or_else(|| io::Error::other("S3 UploadPartCopy answer without an ETag"))?;
                etags.push(etag);
                start = end + 1;
                number += 1;
            }
            client.complete_multipart(to, &id, &etags, false)
        };
        let result = copy_parts();
        if result.is_err() {
            client.abort_multipart(to, &id);
        }
        result
    }

    /// The parent directory of `path` must exist, as on a file system: an upload or MKD into a
    /// directory nobody made is refused rather than inventing it.
    fn check_parent(&self, path: &str) -> io::Result<()> {
        let Some((parent, _)) = path.rsplit_once('/') else {
            return Ok(());
        };
        match self.metadata(parent)?.kind {
            FileKind::Dir => Ok(()),
            _ => Err(io::ErrorKind::NotADirectory.into()),
        }
    }
}

/// A home as a key prefix: `.`, empty and doubled `/` parts dropped (`.` and `/` are the root).
fn normal_home(home: &str) -> String {
    home.split('/').filter(|p| !p.is_empty() && *p != ".").collect::<Vec<_>>().join("/")
}

/// CopyObject copies up to 5 GiB in one request; larger objects are copied in parts of 1 GiB.
const COPY_MAX: u64 = 5 << 30;
const COPY_PART: u64 = 1 << 30;

fn file_metadata(size: u64, modified: Option<SystemTime>) -> Metadata {
    Metadata {
        kind: FileKind::File,
        size,
        modified: modified.unwrap_or(SystemTime::UNIX_EPOCH),
        mode: 0o644,
        nlink: 1,
    }
}

/// A prefix has no time of its own: a directory shows when it was looked at.
fn dir_metadata() -> Metadata {
    Metadata { kind: FileKind::Dir, size: 0, modified: SystemTime::now(), mode: 0o755, nlink: 2 }
}

/// Percent-encodes a key for `x-amz-copy-source`, keeping `/` and the unreserved characters.
fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// What a refused APPE or REST+STOR says: objects cannot be written in place.
fn no_append() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "Appending and resumed uploads are not possible on object storage; upload the whole file",
    )
}

impl Storage for S3Storage {
    fn metadata(&self, path: &str) -> io::Result<Metadata> {
        if path.is_empty() {
            return Ok(dir_metadata());
        }
        if let Some(meta) = self.head(&self.key(path))? {
            return Ok(meta);
        }
        match self.probe_dir(path)? {
            (true, _) => Ok(dir_metadata()),
            (false, _) => Err(io::ErrorKind::NotFound.into()),
        }
    }

    fn list(&self, path: &str) -> io::Result<Vec<zocalo_proto::DirEntry>> {
        let mut stream = self.open_dir(path, true)?;
        let mut all = Vec::new();
        loop {
            let batch = stream.next_batch(1000)?;
            if batch.is_empty() {
                return Ok(all);
            }
            all.extend(batch);
        }
    }

    fn open_dir(&self, path: &str, _stat: bool) -> io::Result<Box<dyn DirStream>> {
        let mut lister = list::Lister::new(self.client.clone(), self.dir_prefix(path), 1000);
        let first = lister.page()?;
        if !path.is_empty() && !first.marker && first.entries.is_empty() {
            // Nothing under the prefix: a file, or nothing at all.
            return Err(match self.head(&self.key(path))? {
                Some(_) => io::ErrorKind::NotADirectory.into(),
                None => io::ErrorKind::NotFound.into(),
            });
        }
        Ok(Box::new(list::Listing::new(lister, first.entries)))
    }

    fn open_read(&self, path: &str, offset: u64) -> io::Result<Box<dyn FileHandle>> {
        let client = &self.client;
        let key = self.key(path);
        let mut action = client.bucket.get_object(Some(&client.credentials), &key);
        let range = format!("bytes={offset}-");
        if offset > 0 {
            action.headers_mut().insert("range", range.clone());
        }
        let headers: &[(&str, &str)] = match offset {
            0 => &[],
            _ => &[("range", &range)],
        };
        match client.send(Method::Get, &action.sign(SIGN_FOR), headers, &[]) {
            Ok(response) => Ok(Box::new(Download {
                body: response.into_body().into_reader(),
                endpoint: client.endpoint.clone(),
                pace: limits::Pace::new(client.timeout),
            })),
            // A REST to exactly the end is an empty transfer, as on a file system.
            Err(err) if zocalo_proto::storage::is_rest_past_end(&err) => match self.head(&key)? {
                Some(meta) if meta.size == offset => Ok(Box::new(io::Cursor::new(Vec::new()))),
                _ => Err(err),
            },
            Err(err) if err.kind() == io::ErrorKind::NotFound => match self.probe_dir(path)?.0 {
                true => Err(io::ErrorKind::IsADirectory.into()),
                false => Err(err),
            },
            Err(err) => Err(err),
        }
    }

    fn open_write(&self, path: &str, mode: WriteMode) -> io::Result<Box<dyn FileHandle>> {
        let create_new = match mode {
            WriteMode::Truncate | WriteMode::At(0) => false,
            WriteMode::CreateNew => true,
            WriteMode::Append | WriteMode::At(_) => return Err(no_append()),
        };
        if path.is_empty() {
            return Err(io::ErrorKind::IsADirectory.into());
        }
        self.check_parent(path)?;
        match self.metadata(path) {
            Ok(meta) if meta.kind == FileKind::Dir => {
                return Err(io::ErrorKind::IsADirectory.into())
            }
            Ok(_) if create_new => return Err(io::ErrorKind::AlreadyExists.into()),
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
        let upload =
            upload::Upload::new(self.client.clone(), self.key(path), create_new, self.part_size);
        Ok(Box::new(upload))
    }

    fn mkdir(&self, path: &str) -> io::Result<()> {
        if path.is_empty() {
            return Err(io::ErrorKind::AlreadyExists.into());
        }
        self.check_parent(path)?;
        match self.metadata(path) {
            Ok(_) => Err(io::ErrorKind::AlreadyExists.into()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                self.put_empty(&format!("{}/", self.key(path)))
            }
            Err(err) => Err(err),
        }
    }

    fn rmdir(&self, path: &str) -> io::Result<()> {
        if path.is_empty() {
            return Err(io::ErrorKind::PermissionDenied.into());
        }
        match self.probe_dir(path)? {
            (false, _) => match self.head(&self.key(path))? {
                Some(_) => Err(io::ErrorKind::NotADirectory.into()),
                None => Err(io::ErrorKind::NotFound.into()),
            },
            (true, true) => Err(io::ErrorKind::DirectoryNotEmpty.into()),
            (true, false) => self.delete(&format!("{}/", self.key(path))),
        }
    }

    fn remove(&self, path: &str) -> io::Result<()> {
        // S3's DELETE succeeds on a missing key: look first, so DELE of nothing is a 550.
        match self.head(&self.key(path))? {
            Some(_) => self.delete(&self.key(path)),
            None if self.probe_dir(path)?.0 => Err(io::ErrorKind::IsADirectory.into()),
            None => Err(io::ErrorKind::NotFound.into()),
        }
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        if from.is_empty() || to.is_empty() {
            return Err(io::ErrorKind::PermissionDenied.into());
        }
        let meta = self.metadata(from)?;
        self.check_parent(to)?;
        match (meta.kind, self.metadata(to)) {
            (_, Ok(target)) if target.kind == FileKind::Dir => {
                return Err(io::ErrorKind::IsADirectory.into())
            }
            (FileKind::Dir, Ok(_)) => return Err(io::ErrorKind::AlreadyExists.into()),
            (_, Ok(_)) => {}
            (_, Err(err)) if err.kind() == io::ErrorKind::NotFound => {}
            (_, Err(err)) => return Err(err),
        }
        if meta.kind == FileKind::Dir {
            // A directory is every key under it: renaming one is only done while it is empty.
            if self.probe_dir(from)?.1 {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "Renaming a directory that is not empty is not possible on object storage",
                ));
            }
            self.put_empty(&format!("{}/", self.key(to)))?;
            return self.delete(&format!("{}/", self.key(from)));
        }
        self.copy(&self.key(from), &self.key(to), meta.size)?;
        self.delete(&self.key(from))
    }

    fn enter(&self, path: &str) -> io::Result<()> {
        match self.metadata(path)?.kind {
            FileKind::Dir => Ok(()),
            _ => Err(io::ErrorKind::NotADirectory.into()),
        }
    }
}

/// RETR's stream: the body of one GET, read as the data connection drains, at no less than
/// the storage's minimum rate.
struct Download {
    body: ureq::BodyReader<'static>,
    endpoint: String,
    pace: limits::Pace,
}

impl Read for Download {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let started = std::time::Instant::now();
        let n = self.body.read(buf).map_err(|e| client::annotate(&e, &self.endpoint))?;
        self.pace.count(started.elapsed(), n, &self.endpoint)?;
        Ok(n)
    }
}

impl Write for Download {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::ErrorKind::Unsupported.into())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl FileHandle for Download {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse() {
        let ok = |s: &str| parse_location(s).unwrap();
        assert_eq!(
            ok("s3://127.0.0.1:8333/files"),
            ("127.0.0.1:8333".into(), "files".into(), "".into())
        );
        assert_eq!(ok("s3://h:1/files/a/b/"), ("h:1".into(), "files".into(), "a/b".into()));
        for bad in ["http://h/b", "s3://h", "s3:///b", "s3://h/B", "s3://h/b/../x", "s3://h/ab"] {
            assert!(parse_location(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn paths_map_to_keys() {
        let config = S3Config::new("s3://127.0.0.1:9/files/site", "k".into(), "s".into()).unwrap();
        let storage = S3Storage::new(&config).unwrap();
        assert_eq!(storage.key("a/b"), "site/a/b");
        assert_eq!(storage.dir_prefix(""), "site/");
        let home = storage.with_home("/alice/");
        assert_eq!(home.key("f"), "site/alice/f");
        assert_eq!(home.dir_prefix("d"), "site/alice/d/");
        assert!(!format!("{config:?}").contains("\"s\""));
        assert_eq!(encode_key("a b/ü+"), "a%20b/%C3%BC%2B");
    }

    #[test]
    fn a_dead_storage_is_a_clear_error() {
        // Port 9 (discard) on loopback has no listener: connection refused, retried, then 451.
        let config = S3Config {
            insecure_http: true,
            timeout: Duration::from_secs(2),
            ..S3Config::new("s3://127.0.0.1:9/files", "k".into(), "s".into()).unwrap()
        };
        let storage = S3Storage::new(&config).unwrap();
        let err = storage.metadata("file").unwrap_err();
        let (code, text) = zocalo_proto::storage::error_reply(&err);
        assert_eq!(code, 451, "{text}");
        assert!(text.contains("127.0.0.1:9"), "{text}");
        assert!(storage.check().is_err());
    }
}
