//! The storage provider the session calls, and the one mapping from storage errors to replies.
//!
//! Paths given to a [`Storage`] are relative to its root, normalised by [`crate::path`], with
//! `/` separators and no leading `/` (the root is `""`). A storage must confine every path to
//! its root itself; the lexical normalisation is not a security boundary.

use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::RawFd;
use std::time::SystemTime;

/// What kind of object a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Other,
}

/// The facts the listings need about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub kind: FileKind,
    pub size: u64,
    pub modified: SystemTime,
    /// Unix permission bits (`0o755`); only for display.
    pub mode: u32,
    pub nlink: u64,
}

/// One entry of a directory listing.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: String,
    pub meta: Metadata,
    /// A symbolic link's target, as stored in the link (listed, never followed here).
    pub link: Option<String>,
}

/// How STOR, APPE and STOU open their target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Create or truncate (STOR).
    Truncate,
    /// Create or append (APPE).
    Append,
    /// Create if needed, keep contents, write from this offset (STOR after REST).
    At(u64),
    /// Create; fail if the name exists (STOU).
    CreateNew,
}

/// An open file that a driver pumps bytes through. Bulk data never passes through the core.
pub trait FileHandle: Read + Write + Send {
    /// The descriptor, when there is one, so a driver can use sendfile(2) or splice(2).
    fn raw_fd(&self) -> Option<RawFd> {
        None
    }

    /// Called once when the data connection of an upload is up, before the first byte: a
    /// storage that opened the file without truncating it truncates it now, so an upload
    /// refused or abandoned before any data arrives never destroys the old contents.
    fn begin(&mut self) -> io::Result<()> {
        Ok(())
    }

    /// Called once after the last byte of an upload was written. An atomic upload renames its
    /// temporary file into place here; until then nothing replaced the old file.
    fn finish(self: Box<Self>) -> io::Result<()> {
        Ok(())
    }

    /// Whether [`finish`](Self::finish) may take long (an upload check waits for its
    /// verdict there): an event loop then runs it with long work, not with short calls.
    fn slow_finish(&self) -> bool {
        false
    }
}

/// A few bytes in memory (a one-line listing) as a handle.
impl FileHandle for std::io::Cursor<Vec<u8>> {}

impl fmt::Debug for dyn FileHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FileHandle")
    }
}

/// A file system as the session sees it. Calls are synchronous; see the module doc for paths.
pub trait Storage: Send + Sync {
    fn metadata(&self, path: &str) -> io::Result<Metadata>;

    /// The facts of `path` itself, a symlink not followed, with a link's target (MLST, to
    /// agree with the listings). Storages without links answer [`Self::metadata`].
    fn link_metadata(&self, path: &str) -> io::Result<(Metadata, Option<String>)> {
        Ok((self.metadata(path)?, None))
    }
    /// Entries of a directory, without `.` and `..`, in any order.
    fn list(&self, path: &str) -> io::Result<Vec<DirEntry>>;
    /// Names of a directory's entries, without `.` and `..`, in any order (NLST, which needs no
    /// metadata: a storage that can skip it should).
    fn names(&self, path: &str) -> io::Result<Vec<String>> {
        Ok(self.list(path)?.into_iter().map(|e| e.name).collect())
    }
    /// Opens a regular file for reading, positioned at `offset`.
    fn open_read(&self, path: &str, offset: u64) -> io::Result<Box<dyn FileHandle>>;
    fn open_write(&self, path: &str, mode: WriteMode) -> io::Result<Box<dyn FileHandle>>;
    fn mkdir(&self, path: &str) -> io::Result<()>;
    fn rmdir(&self, path: &str) -> io::Result<()>;
    fn remove(&self, path: &str) -> io::Result<()>;
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;

    /// Checks that a directory may be entered (CWD); by default, that it exists.
    fn enter(&self, path: &str) -> io::Result<()> {
        self.metadata(path).map(drop)
    }

    /// Sets the modification time of a file or directory (MFMT).
    fn set_modified(&self, _path: &str, _time: SystemTime) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }

    /// Bytes free for new data where `path` lives (AVBL).
    fn available(&self, _path: &str) -> io::Result<u64> {
        Err(io::ErrorKind::Unsupported.into())
    }

    /// Sets the permission bits of a file or directory (SITE CHMOD); `mode` is at most 0o777.
    fn set_mode(&self, _path: &str, _mode: u32) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }

    /// Opens a directory to read a batch of entries at a time (the listings stream them).
    /// With `stat` false the entries' metadata may be left at its default (NLST needs names
    /// only). By default, reads the whole directory with [`list`](Self::list) or
    /// [`names`](Self::names); a storage with large directories should stream.
    fn open_dir(&self, path: &str, stat: bool) -> io::Result<Box<dyn DirStream>> {
        let entries = match stat {
            true => self.list(path)?,
            false => {
                let names = self.names(path)?.into_iter();
                names.map(|name| DirEntry { name, meta: Metadata::unknown(), link: None }).collect()
            }
        };
        Ok(Box::new(entries.into_iter()))
    }
}

/// A directory being read, a batch at a time.
pub trait DirStream: Send {
    /// Up to `max` more entries (without `.` and `..`); empty once the directory is exhausted.
    fn next_batch(&mut self, max: usize) -> io::Result<Vec<DirEntry>>;
}

impl DirStream for std::vec::IntoIter<DirEntry> {
    fn next_batch(&mut self, max: usize) -> io::Result<Vec<DirEntry>> {
        Ok(self.by_ref().take(max).collect())
    }
}

impl Metadata {
    /// What an entry read without its metadata carries.
    pub fn unknown() -> Metadata {
        Metadata {
            kind: FileKind::Other,
            size: 0,
            modified: SystemTime::UNIX_EPOCH,
            mode: 0,
            nlink: 1,
        }
    }
}

/// The reply for a failed storage call: the single place where errors become FTP codes.
pub fn error_reply(err: &io::Error) -> (u16, String) {
    use io::ErrorKind::*;
    if is_rest_past_end(err) {
        return (554, "REST position is past the end of the file.".into());
    }
    if err.get_ref().is_some_and(|e| e.is::<NotAFile>()) {
        return (550, "Not a regular file.".into());
    }
    if let Some(Refused(why)) = err.get_ref().and_then(|e| e.downcast_ref::<Refused>()) {
        return (550, why.clone());
    }
    /// Linux's ELOOP: O_NOFOLLOW or RESOLVE_NO_SYMLINKS met a symlink.
    const ELOOP: i32 = 40;
    if err.raw_os_error() == Some(ELOOP) {
        return (550, "Path leaves the root or loops; refused.".into());
    }
    let text = match err.kind() {
        NotFound => "No such file or directory.",
        PermissionDenied | ReadOnlyFilesystem => "Permission denied.",
        AlreadyExists => "File exists.",
        NotADirectory => "Not a directory.",
        IsADirectory => "Is a directory.",
        DirectoryNotEmpty => "Directory not empty.",
        CrossesDevices => "Path leaves the root or loops; refused.",
        StorageFull => return (452, "Insufficient storage space.".into()),
        // RFC 959's "exceeded storage allocation": the account's quota (or a disk quota).
        QuotaExceeded => return (552, "Quota exceeded.".into()),
        InvalidFilename | InvalidInput => return (553, "File name not allowed.".into()),
        // A storage that says why (object storage's APPE) answers for that parameter only.
        Unsupported => match err.get_ref() {
            Some(why) => return (504, format!("{why}.")),
            None => return (502, "Not supported by this storage.".into()),
        },
        _ => return (451, format!("Local error: {err}.")),
    };
    (550, text.into())
}

/// A REST offset beyond the file's end, for RETR or STOR: answered 554 (RFC 959's "requested
/// action not taken"), before anything is opened or created.
#[derive(Debug)]
pub struct RestPastEnd;

impl std::fmt::Display for RestPastEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("REST position past the end of the file")
    }
}

impl std::error::Error for RestPastEnd {}

/// Whether `err` is [`RestPastEnd`].
pub fn is_rest_past_end(err: &io::Error) -> bool {
    err.get_ref().is_some_and(|e| e.is::<RestPastEnd>())
}

/// The error for [`RestPastEnd`].
pub fn rest_past_end() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, RestPastEnd)
}

/// A transfer or hash of something that is neither a regular file nor a directory (a named
/// pipe, a device, a socket): refused before it is read or written, since opening a FIFO waits
/// for its other end and a device's reads have no end.
#[derive(Debug)]
pub struct NotAFile;

impl std::fmt::Display for NotAFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not a regular file")
    }
}

impl std::error::Error for NotAFile {}

/// The server refused a file for a reason of its own (an upload check's verdict): answered
/// `550` with that one line.
#[derive(Debug)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// The error for [`Refused`].
pub fn refused(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, Refused(why))
}

/// The error for [`NotAFile`].
pub fn not_a_file() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, NotAFile)
}

/// The error for opening `kind` as a file: a directory is [`io::ErrorKind::IsADirectory`],
/// anything else [`not_a_file`].
pub fn wrong_kind(kind: FileKind) -> io::Error {
    match kind {
        FileKind::Dir => io::ErrorKind::IsADirectory.into(),
        _ => not_a_file(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_replies() {
        let code = |k: io::ErrorKind| error_reply(&io::Error::from(k)).0;
        assert_eq!(code(io::ErrorKind::NotFound), 550);
        assert_eq!(code(io::ErrorKind::PermissionDenied), 550);
        assert_eq!(code(io::ErrorKind::StorageFull), 452);
        assert_eq!(code(io::ErrorKind::CrossesDevices), 550);
        assert_eq!(code(io::ErrorKind::InvalidFilename), 553);
        assert_eq!(code(io::ErrorKind::Other), 451);
        assert_eq!(error_reply(&rest_past_end()).0, 554);
        assert_eq!(error_reply(&not_a_file()), (550, "Not a regular file.".into()));
        assert_eq!(code(io::ErrorKind::IsADirectory), 550);
        assert_eq!(code(io::ErrorKind::Unsupported), 502);
        let why = io::Error::new(io::ErrorKind::Unsupported, "Not on object storage");
        assert_eq!(error_reply(&why), (504, "Not on object storage.".into()));
    }
}
