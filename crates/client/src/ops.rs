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
use std::time::SystemTime;

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
    /// `mirror --delete`: remove what the source no longer has.
    pub delete: bool,
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
    /// Files left alone: the same size and time on both sides (or complete, with
    /// `--continue`).
    pub skipped: u64,
    /// Files and directories removed by `--delete`.
    pub deleted: u64,
    /// Symbolic links (and other entries that are neither files nor directories) not copied:
    /// a link is not followed, it could lead out of the tree or round in a loop.
    pub links: u64,
}

/// Downloads `url` to `dest` (a file, a directory to put it in, `-` for standard output, or
/// `None` for the URL's file name in the current directory). Returns the bytes received.
pub fn get(url: &str, dest: Option<&Path>, opts: &OpOptions) -> Result<u64, OpError> {
    let mut url = FtpUrl::parse(url)?;
    crate::credentials::complete(&mut url).map_err(OpError::Usage)?;
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
    crate::credentials::complete(&mut url).map_err(OpError::Usage)?;
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

/// What a server wrote, made safe for a terminal: control characters (an escape sequence could
/// retitle the window, move the cursor or hide text) are shown as `\xNN`; line ends and tabs
/// stay.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' | '\t' | '\r' => out.push(c),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

/// Writes the LIST of `url`'s path to `out`, as the server formats it (control characters
/// shown, see [`printable`]).
pub fn ls(url: &str, opts: &OpOptions, out: &mut dyn Write) -> Result<(), OpError> {
    let mut url = FtpUrl::parse(url)?;
    crate::credentials::complete(&mut url).map_err(OpError::Usage)?;
    let mut client = Client::open(&url, &opts.client)?;
    let body = printable(&client.list(&url.path)?);
    out.write_all(body.as_bytes()).map_err(|e| local(Path::new("<stdout>"), e))?;
    client.quit()?;
    Ok(())
}

/// Downloads the tree at `url` into `dir` (MLSD, or LIST when MLSD is refused).
pub fn mirror(url: &str, dir: &Path, opts: &OpOptions) -> Result<MirrorSummary, OpError> {
    let mut url = FtpUrl::parse(url)?;
    crate::credentials::complete(&mut url).map_err(OpError::Usage)?;
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
    let mut seen = std::collections::HashSet::new();
    for entry in children(client, remote)? {
        let child_remote = format!("{remote}/{}", entry.name);
        let child_local = local_dir.join(&entry.name);
        match entry.kind {
            Kind::Dir => mirror_dir(client, &child_remote, &child_local, opts, depth + 1, summary)?,
            Kind::File => mirror_file(client, &child_remote, &child_local, &entry, opts, summary)?,
            Kind::Link | Kind::Other => summary.links += 1,
        }
        seen.insert(entry.name);
    }
    if opts.delete {
        for local_entry in fs::read_dir(local_dir).map_err(|e| local(local_dir, e))? {
            let local_entry = local_entry.map_err(|e| local(local_dir, e))?;
            let name = local_entry.file_name().to_string_lossy().into_owned();
            if seen.contains(&name) || name.contains(".zocalo-part-") {
                continue;
            }
            let path = local_entry.path();
            let is_dir = local_entry.file_type().is_ok_and(|t| t.is_dir());
            let removed = if is_dir { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
            removed.map_err(|e| local(&path, e))?;
            summary.deleted += 1;
        }
    }
    Ok(())
}

/// The entries of a remote directory (`""` is the root) whose names can be used as a path's
/// last part: a hostile listing's `..` or `a/b` must not lead a mirror outside its tree.
fn children(client: &mut Client, remote: &str) -> Result<Vec<crate::listing::Entry>, OpError> {
    let path = if remote.is_empty() { "/" } else { remote };
    let mut entries = client.entries(path)?;
    // An empty name or one with a NUL cannot name a local file: skipped, as a mirror skips
    // what it cannot copy, rather than ending the whole mirror.
    entries.retain(|e| {
        !e.name.is_empty() && !e.name.contains(['/', '\0']) && e.name != "." && e.name != ".."
    });
    Ok(entries)
}

/// Same size, and the same time to the second when the server gives one: nothing to copy.
fn unchanged(local: &fs::Metadata, size: Option<u64>, modified: Option<SystemTime>) -> bool {
    let same_time = match (modified, local.modified()) {
        (Some(remote), Ok(here)) => seconds(remote) == seconds(here),
        _ => false,
    };
    Some(local.len()) == size && same_time
}

fn seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn mirror_file(
    client: &mut Client,
    remote: &str,
    path: &Path,
    entry: &crate::listing::Entry,
    opts: &OpOptions,
    summary: &mut MirrorSummary,
) -> Result<(), OpError> {
    let here = fs::symlink_metadata(path).ok();
    let complete = here.as_ref().is_some_and(|m| Some(m.len()) == entry.size);
    // A LIST (a server without MLSD) gives no time to trust: MDTM does, for a file that is
    // here already and could be the same.
    let modified = match entry.modified {
        None if complete => client.mdtm(remote).ok(),
        known => known,
    };
    if here.as_ref().is_some_and(|m| unchanged(m, entry.size, modified))
        || (opts.resume && complete)
    {
        summary.skipped += 1;
        return Ok(());
    }
    summary.bytes += retr_to_file(client, remote, path, opts)?;
    summary.files += 1;
    let modified = match modified {
        None => client.mdtm(remote).ok(),
        known => known,
    };
    if let Some(time) = modified {
        // Keep the server's time, so the next mirror sees the file unchanged.
        let file = File::options().write(true).open(path).map_err(|e| local(path, e))?;
        file.set_modified(time).map_err(|e| local(path, e))?;
    }
    Ok(())
}

/// Uploads the tree at `dir` into `url` (`mirror --reverse`, lftp's `mirror -R`): makes the
/// directories, sends files that differ in size or time (and sets their time with MFMT),
/// and with `--delete` removes what the local tree no longer has.
pub fn mirror_up(dir: &Path, url: &str, opts: &OpOptions) -> Result<MirrorSummary, OpError> {
    let mut url = FtpUrl::parse(url)?;
    crate::credentials::complete(&mut url).map_err(OpError::Usage)?;
    if !dir.is_dir() {
        return Err(local(dir, io::Error::new(io::ErrorKind::NotADirectory, "not a directory")));
    }
    let mut client = Client::open(&url, &opts.client)?;
    let mut summary = MirrorSummary::default();
    let root = url.path.trim_end_matches('/').to_owned();
    mirror_up_dir(&mut client, dir, &root, opts, 0, &mut summary)?;
    client.quit()?;
    Ok(summary)
}

fn mirror_up_dir(
    client: &mut Client,
    local_dir: &Path,
    remote: &str,
    opts: &OpOptions,
    depth: usize,
    summary: &mut MirrorSummary,
) -> Result<(), OpError> {
    if depth > MAX_MIRROR_DEPTH {
        return Err(OpError::Usage(format!("{}: too deep", local_dir.display())));
    }
    if !remote.is_empty() {
        // 550 when it exists already; a real failure shows up at the listing just below.
        let _ = client.mkd(remote);
    }
    summary.dirs += 1;
    let there: std::collections::HashMap<String, crate::listing::Entry> =
        children(client, remote)?.into_iter().map(|e| (e.name.clone(), e)).collect();
    let mut names = Vec::new();
    for entry in fs::read_dir(local_dir).map_err(|e| local(local_dir, e))? {
        let entry = entry.map_err(|e| local(local_dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // A link is not followed (it could lead out of the tree or round in a loop).
        let meta = fs::symlink_metadata(entry.path()).map_err(|e| local(&entry.path(), e))?;
        let child_remote = format!("{remote}/{name}");
        if meta.is_dir() {
            mirror_up_dir(client, &entry.path(), &child_remote, opts, depth + 1, summary)?;
        } else if meta.is_file() {
            let remote_entry = there.get(&name);
            let same_size = remote_entry.is_some_and(|r| r.size == Some(meta.len()));
            // Without MLSD the listing's times cannot be trusted: MDTM, for a file that could
            // be the same.
            let modified = match remote_entry.map(|r| r.modified) {
                Some(None) if same_size => client.mdtm(&child_remote).ok(),
                other => other.flatten(),
            };
            let size = remote_entry.and_then(|r| r.size);
            if (remote_entry.is_some() && unchanged(&meta, size, modified))
                || (opts.resume && same_size)
            {
                summary.skipped += 1;
            } else {
                summary.bytes += stor_file(client, &entry.path(), &child_remote, &meta, opts)?;
                summary.files += 1;
            }
        } else {
            summary.links += 1;
            continue;
        }
        names.push(name);
    }
    if opts.delete {
        for (name, entry) in &there {
            if names.contains(name) {
                continue;
            }
            remove_remote(client, &format!("{remote}/{name}"), entry.kind, 0)?;
            summary.deleted += 1;
        }
    }
    Ok(())
}

fn stor_file(
    client: &mut Client,
    path: &Path,
    remote: &str,
    meta: &fs::Metadata,
    opts: &OpOptions,
) -> Result<u64, OpError> {
    let mut source = File::open(path).map_err(|e| local(path, e))?;
    let bar = progress_bar(opts, Some(meta.len()), 0);
    let sent = client.stor(remote, 0, &mut source, &mut |n| bar.inc(n))?;
    bar.finish_and_clear();
    if let Ok(time) = meta.modified() {
        // A server that can set no time: the next mirror compares sizes and times again.
        client.set_modified(remote, time);
    }
    Ok(sent)
}

fn remove_remote(client: &mut Client, path: &str, kind: Kind, depth: usize) -> Result<(), OpError> {
    if kind == Kind::Dir {
        if depth > MAX_MIRROR_DEPTH {
            return Err(OpError::Usage(format!("{path}: too deep to delete")));
        }
        for entry in children(client, path)? {
            remove_remote(client, &format!("{path}/{}", entry.name), entry.kind, depth + 1)?;
        }
        client.rmd(path)?;
    } else {
        client.dele(path)?;
    }
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
        return complete(remote, offset + received, total).map(|()| received);
    }
    let mut part = PartFile::create(path).map_err(|e| local(path, e))?;
    let received = client.retr(remote, 0, part.file(), &mut |n| bar.inc(n))?;
    bar.finish_and_clear();
    // A short download leaves the local file as it was (the part file goes when dropped).
    complete(remote, received, total)?;
    part.commit().map_err(|e| local(path, e))?;
    Ok(received)
}

/// Fails a download that ended with fewer bytes than the server's SIZE gave: a 226 after a
/// cut connection is not a complete file.
fn complete(remote: &str, got: u64, size: Option<u64>) -> Result<(), OpError> {
    match size {
        Some(size) if got < size => Err(OpError::Ftp(FtpError::Protocol(format!(
            "short download of {remote}: {got} of {size} bytes arrived"
        )))),
        _ => Ok(()),
    }
}

/// A download in progress: written to a temporary name beside its destination and renamed
/// over it only once complete, so a failed or refused download never destroys the file that
/// was there (curl likewise opens its output only when data arrives). Dropped uncommitted, it
/// removes the temporary file.
///
/// That safety is for regular files. A destination that is something else (a device such as
/// `/dev/null`, a FIFO) or a symlink is written to as it is, the symlink followed, as curl's
/// `-o` and wget's `-O` do: a rename would replace the device node or the link itself.
pub struct PartFile {
    file: File,
    /// The temporary name, or `None` when writing through to the destination.
    temp: Option<PathBuf>,
    dest: PathBuf,
    committed: bool,
}

impl PartFile {
    pub fn create(dest: &Path) -> io::Result<PartFile> {
        let through = fs::symlink_metadata(dest).is_ok_and(|m| !m.file_type().is_file());
        if through {
            let file = OpenOptions::new().write(true).truncate(true).open(dest)?;
            return Ok(PartFile { file, temp: None, dest: dest.to_owned(), committed: false });
        }
        let name = dest.file_name().map_or_else(|| "download".into(), |n| n.to_string_lossy());
        let temp = dest.with_file_name(format!(".{name}.zocalo-part-{}", std::process::id()));
        let file = OpenOptions::new().write(true).create_new(true).open(&temp)?;
        Ok(PartFile { file, temp: Some(temp), dest: dest.to_owned(), committed: false })
    }

    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// The download is complete: flush it to disk and put it in place.
    pub fn commit(mut self) -> io::Result<()> {
        match &self.temp {
            Some(temp) => {
                self.file.sync_all()?;
                fs::rename(temp, &self.dest)?;
            }
            // A device or a FIFO may not sync; what it was given is written.
            None => self.file.flush()?,
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for PartFile {
    fn drop(&mut self) {
        if let Some(temp) = self.temp.as_ref().filter(|_| !self.committed) {
            let _ = fs::remove_file(temp);
        }
    }
}

/// A bar on standard error when standard output is a terminal, a hidden one otherwise.
fn progress_bar(opts: &OpOptions, total: Option<u64>, done: u64) -> ProgressBar {
    if opts.progress == Progress::Never || !io::stdout().is_terminal() {
        return ProgressBar::hidden();
    }
    // The bar takes what the terminal's width leaves, so the line never wraps (40 columns
    // still fit the counts and the rate).
    let template = match total {
        Some(_) => "{bytes}/{total_bytes} {wide_bar} {bytes_per_sec} {eta}",
        None => "{bytes} {wide_bar} {bytes_per_sec} {elapsed}",
    };
    let style = ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    let bar = total.map_or_else(ProgressBar::no_length, ProgressBar::new).with_position(done);
    bar.set_style(style);
    // A resumed transfer's rate counts only the bytes moved now, not those already on disk.
    bar.reset_eta();
    bar
}

/// The one line printed when a transfer ends, as curl and lftp print one:
/// `received 20.0 MiB in 1.2 s (16.7 MiB/s)`.
pub fn summary(verb: &str, bytes: u64, took: std::time::Duration) -> String {
    let secs = took.as_secs_f64().max(1e-3);
    format!("{verb} {} in {secs:.1} s ({}/s)", human(bytes as f64), human(bytes as f64 / secs))
}

fn human(bytes: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{value:.0} B"),
        _ => format!("{value:.1} {}", UNITS[unit]),
    }
}

fn local(path: &Path, error: io::Error) -> OpError {
    OpError::Local { path: path.to_owned(), error }
}

#[cfg(test)]
mod printable_tests {
    #[test]
    fn control_characters_are_shown_not_sent() {
        let shown = super::printable("550 \x1b]0;owned\x07no\x1b[2J\r\nok\tñ");
        assert_eq!(shown, "550 \\x1b]0;owned\\x07no\\x1b[2J\r\nok\tñ");
        assert!(!shown.contains('\x1b'));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply::Reply;

    fn reply(code: u16) -> Reply {
        Reply { code, lines: vec!["text".into()] }
    }

    #[test]
    fn summaries_read_like_curls() {
        let line = summary("received", 20 << 20, std::time::Duration::from_millis(1200));
        assert_eq!(line, "received 20.0 MiB in 1.2 s (16.7 MiB/s)");
        assert_eq!(
            summary("sent", 10, std::time::Duration::from_secs(2)),
            "sent 10 B in 2.0 s (5 B/s)"
        );
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
