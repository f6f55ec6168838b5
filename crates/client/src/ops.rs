//! What `zocalo get`, `put`, `ls` and `mirror` do, on top of [`Client`].
//!
//! Each operation opens one session, does its work, and quits. A progress bar (size, rate, time
//! left) is drawn on standard error only when standard output is a terminal. Failures are
//! [`OpError`]s that carry the server's reply, and [`exit_code`] maps them to the exit codes
//! scripts can rely on:
//!
//! | code | meaning                                                                    |
//! |------|----------------------------------------------------------------------------|
//! | 0    | success                                                                    |
//! | 1    | anything else (a bug, say)                                                 |
//! | 2    | usage: a bad URL or argument                                               |
//! | 3    | connection: cannot connect, TLS failed, the control connection broke       |
//! | 4    | login refused                                                              |
//! | 5    | the server refused a file operation with a permanent 5yz reply             |
//! | 6    | transfer failed: the data connection broke, a 4yz reply, an incomplete end |
//! | 7    | local file error (cannot read or write the local file)                     |
//!
//! It does not parse flags (the binary does) nor print anything but listings and the bar.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, IsTerminal, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};

use crate::ftp::{Client, ClientOptions, FtpError};
use crate::listing::Kind;
use crate::url::{FtpUrl, UrlError};

/// Deepest directory tree `mirror` descends into.
pub const MAX_MIRROR_DEPTH: usize = 32;

/// When to draw a progress bar.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Progress {
    /// Only when standard output is a terminal.
    #[default]
    Auto,
    Never,
}

/// Options shared by the operations.
#[derive(Clone, Debug, Default)]
pub struct OpOptions {
    pub client: ClientOptions,
    /// `--continue`: resume a partial transfer with REST (get, put) or skip complete files
    /// (mirror).
    pub resume: bool,
    pub progress: Progress,
}

/// Why an operation failed.
#[derive(Debug)]
pub enum OpError {
    Usage(String),
    Ftp(FtpError),
    Local { path: PathBuf, error: io::Error },
}

impl fmt::Display for OpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpError::Usage(msg) => write!(f, "{msg}"),
            OpError::Ftp(e) => write!(f, "{e}"),
            OpError::Local { path, error } => write!(f, "{}: {error}", path.display()),
        }
    }
}

impl std::error::Error for OpError {}

impl From<FtpError> for OpError {
    fn from(e: FtpError) -> OpError {
        OpError::Ftp(e)
    }
}

impl From<UrlError> for OpError {
    fn from(e: UrlError) -> OpError {
        OpError::Usage(e.to_string())
    }
}

/// The process exit code for a failure (see the module documentation).
pub fn exit_code(err: &OpError) -> i32 {
    match err {
        OpError::Usage(_) => 2,
        OpError::Ftp(FtpError::Connect(_) | FtpError::Io(_) | FtpError::Protocol(_)) => 3,
        OpError::Ftp(FtpError::Login(_)) => 4,
        OpError::Ftp(FtpError::Refused { reply, .. }) if reply.code >= 500 => 5,
        OpError::Ftp(FtpError::Refused { .. } | FtpError::Transfer(_)) => 6,
        OpError::Local { .. } => 7,
    }
}

/// What a mirror did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MirrorSummary {
    pub files: u64,
    pub dirs: u64,
    pub bytes: u64,
    /// Files left alone because `--continue` found them complete.
    pub skipped: u64,
}

/// Downloads `url` to `dest` (a file, a directory to put it in, `-` for standard output, or
/// `None` for the URL's file name in the current directory). Returns the bytes received.
pub fn get(url: &str, dest: Option<&Path>, opts: &OpOptions) -> Result<u64, OpError> {
    let url = FtpUrl::parse(url)?;
    let name = url.file_name().ok_or_else(|| OpError::Usage(format!("{url} names no file")))?;
    let dest = local_target(dest, name);
    let mut client = Client::open(&url, &opts.client)?;
    let received = match &dest {
        None => retr_to_stdout(&mut client, &url.path)?,
        Some(path) => retr_to_file(&mut client, &url.path, path, opts)?,
    };
    client.quit()?;
    Ok(received)
}

/// Uploads `file` to `url` (a path ending in `/` gets the file's name). Returns bytes sent.
pub fn put(file: &Path, url: &str, opts: &OpOptions) -> Result<u64, OpError> {
    let mut url = FtpUrl::parse(url)?;
    if url.path.ends_with('/') {
        let name = file
            .file_name()
            .ok_or_else(|| OpError::Usage(format!("{} has no file name", file.display())))?;
        url.path.push_str(&name.to_string_lossy());
    }
    let mut source = File::open(file).map_err(|e| local(file, e))?;
    let total = source.metadata().map_err(|e| local(file, e))?.len();
    let mut client = Client::open(&url, &opts.client)?;
    let offset = if opts.resume { client.size(&url.path).unwrap_or(0).min(total) } else { 0 };
    source.seek(SeekFrom::Start(offset)).map_err(|e| local(file, e))?;
    let bar = progress_bar(opts, Some(total), offset);
    let sent = client.stor(&url.path, offset, &mut source, &mut |n| bar.inc(n))?;
    bar.finish_and_clear();
    client.quit()?;
    Ok(sent)
}

/// Writes the LIST of `url`'s path to `out`, as the server formats it.
pub fn ls(url: &str, opts: &OpOptions, out: &mut dyn Write) -> Result<(), OpError> {
    let url = FtpUrl::parse(url)?;
    let mut client = Client::open(&url, &opts.client)?;
    let body = client.list(&url.path)?;
    out.write_all(body.as_bytes()).map_err(|e| local(Path::new("<stdout>"), e))?;
    client.quit()?;
    Ok(())
}

/// Downloads the tree at `url` into `dir` (MLSD, or LIST when MLSD is refused).
pub fn mirror(url: &str, dir: &Path, opts: &OpOptions) -> Result<MirrorSummary, OpError> {
    let url = FtpUrl::parse(url)?;
    let mut client = Client::open(&url, &opts.client)?;
    let mut summary = MirrorSummary::default();
    let root = url.path.trim_end_matches('/').to_owned();
    mirror_dir(&mut client, &root, dir, opts, 0, &mut summary)?;
    client.quit()?;
    Ok(summary)
}

fn mirror_dir(
    client: &mut Client,
    remote: &str,
    local_dir: &Path,
    opts: &OpOptions,
    depth: usize,
    summary: &mut MirrorSummary,
) -> Result<(), OpError> {
    if depth > MAX_MIRROR_DEPTH {
        return Err(OpError::Usage(format!("{remote}: deeper than {MAX_MIRROR_DEPTH} levels")));
    }
    fs::create_dir_all(local_dir).map_err(|e| local(local_dir, e))?;
    summary.dirs += 1;
    let listing_path = if remote.is_empty() { "/" } else { remote };
    for entry in client.entries(listing_path)? {
        if entry.name.contains('/') || entry.name == "." || entry.name == ".." {
            continue; // a hostile listing must not write outside `local_dir`
        }
        let child_remote = format!("{remote}/{}", entry.name);
        let child_local = local_dir.join(&entry.name);
        match entry.kind {
            Kind::Dir => mirror_dir(client, &child_remote, &child_local, opts, depth + 1, summary)?,
            Kind::File => {
                mirror_file(client, &child_remote, &child_local, entry.size, opts, summary)?
            }
            Kind::Link | Kind::Other => {}
        }
    }
    Ok(())
}

fn mirror_file(
    client: &mut Client,
    remote: &str,
    path: &Path,
    size: Option<u64>,
    opts: &OpOptions,
    summary: &mut MirrorSummary,
) -> Result<(), OpError> {
    let have = fs::metadata(path).map(|m| m.len()).ok();
    if opts.resume && have.is_some() && have == size {
        summary.skipped += 1;
        return Ok(());
    }
    summary.bytes += retr_to_file(client, remote, path, opts)?;
    summary.files += 1;
    Ok(())
}

/// `None` means standard output.
fn local_target(dest: Option<&Path>, name: &str) -> Option<PathBuf> {
    match dest {
        Some(p) if p == Path::new("-") => None,
        Some(p) if p.is_dir() => Some(p.join(name)),
        Some(p) => Some(p.to_owned()),
        None => Some(PathBuf::from(name)),
    }
}

fn retr_to_stdout(client: &mut Client, remote: &str) -> Result<u64, OpError> {
    let stdout = io::stdout();
    let mut lock = stdout.lock();
    Ok(client.retr(remote, 0, &mut lock, &mut |_| {})?)
}

/// RETR into `path`, appending from its current size with `--continue`.
fn retr_to_file(
    client: &mut Client,
    remote: &str,
    path: &Path,
    opts: &OpOptions,
) -> Result<u64, OpError> {
    let total = client.size(remote).ok();
    let offset = match fs::metadata(path) {
        Ok(m) if opts.resume => m.len(),
        _ => 0,
    };
    if opts.resume && total.is_some_and(|t| offset > t) {
        let t = total.unwrap_or(0);
        let why = format!("cannot resume: the local file has {offset} bytes, the remote one {t}");
        return Err(local(path, io::Error::new(io::ErrorKind::InvalidData, why)));
    }
    if opts.resume && Some(offset) == total {
        return Ok(0);
    }
    let bar = progress_bar(opts, total, offset);
    if offset > 0 {
        // --continue: the bytes already there are the start of the file; append in place.
        let mut file = OpenOptions::new().append(true).open(path).map_err(|e| local(path, e))?;
        let received = client.retr(remote, offset, &mut file, &mut |n| bar.inc(n))?;
        bar.finish_and_clear();
        file.sync_all().map_err(|e| local(path, e))?;
        return Ok(received);
    }
    let mut part = PartFile::create(path).map_err(|e| local(path, e))?;
    let received = client.retr(remote, 0, part.file(), &mut |n| bar.inc(n))?;
    bar.finish_and_clear();
    part.commit().map_err(|e| local(path, e))?;
    Ok(received)
}

/// A download in progress: written to a temporary name beside its destination and renamed
/// over it only once complete, so a failed or refused download never destroys the file that
/// was there (curl likewise opens its output only when data arrives). Dropped uncommitted, it
/// removes the temporary file.
pub struct PartFile {
    file: File,
    temp: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl PartFile {
    pub fn create(dest: &Path) -> io::Result<PartFile> {
        let name = dest.file_name().map_or_else(|| "download".into(), |n| n.to_string_lossy());
        let temp = dest.with_file_name(format!(".{name}.zocalo-part-{}", std::process::id()));
        let file = OpenOptions::new().write(true).create_new(true).open(&temp)?;
        Ok(PartFile { file, temp, dest: dest.to_owned(), committed: false })
    }

    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// The download is complete: flush it to disk and put it in place.
    pub fn commit(mut self) -> io::Result<()> {
        self.file.sync_all()?;
        fs::rename(&self.temp, &self.dest)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for PartFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// A bar on standard error when standard output is a terminal, a hidden one otherwise.
fn progress_bar(opts: &OpOptions, total: Option<u64>, done: u64) -> ProgressBar {
    if opts.progress == Progress::Never || !io::stdout().is_terminal() {
        return ProgressBar::hidden();
    }
    let template = match total {
        Some(_) => "{bytes}/{total_bytes} [{bar:30}] {bytes_per_sec} ETA {eta}",
        None => "{bytes} {bytes_per_sec} {elapsed}",
    };
    let style = ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let bar = total.map_or_else(ProgressBar::no_length, ProgressBar::new);
    bar.set_style(style);
    bar.set_position(done);
    bar
}

fn local(path: &Path, error: io::Error) -> OpError {
    OpError::Local { path: path.to_owned(), error }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply::Reply;

    fn reply(code: u16) -> Reply {
        Reply { code, lines: vec!["text".into()] }
    }

    #[test]
    fn exit_codes_are_stable() {
        let refused =
            |code| OpError::Ftp(FtpError::Refused { command: "RETR x".into(), reply: reply(code) });
        assert_eq!(exit_code(&OpError::Usage("x".into())), 2);
        assert_eq!(exit_code(&OpError::Ftp(FtpError::Connect("x".into()))), 3);
        assert_eq!(exit_code(&OpError::Ftp(FtpError::Login(reply(530)))), 4);
        assert_eq!(exit_code(&refused(550)), 5);
        assert_eq!(exit_code(&refused(450)), 6);
        assert_eq!(exit_code(&OpError::Ftp(FtpError::Transfer("x".into()))), 6);
        let io = io::Error::other("x");
        assert_eq!(exit_code(&local(Path::new("f"), io)), 7);
    }

    #[test]
    fn error_text_carries_the_reply() {
        let err =
            OpError::Ftp(FtpError::Refused { command: "RETR /nope".into(), reply: reply(550) });
        assert_eq!(err.to_string(), "RETR /nope: 550 text");
    }

    #[test]
    fn local_target_rules() {
        assert_eq!(local_target(Some(Path::new("-")), "f"), None);
        assert_eq!(local_target(None, "f"), Some(PathBuf::from("f")));
        let dir = std::env::temp_dir();
        assert_eq!(local_target(Some(&dir), "f"), Some(dir.join("f")));
    }
}
