//! Quotas: bytes and files per account (`quota_bytes`, `quota_files`), kept as a tally, not
//! re-walked per upload. The tally of one node lives in a file (`quota-file`, by default the
//! users file's name with `.quota` after it), one `name bytes files` line per account, read and
//! rewritten under an exclusive `flock` so the `process` model's children and a `zocalo ctl`
//! agree. With `--shared-state` the tally of every node is one Redis hash per account
//! (`zocalo:quota:USER`, see `state::shared`). An account with a quota and no tally yet is
//! counted once from its storage, when its first upload or AVBL needs the figure.
//!
//! [`QuotaStorage`] wraps an account's storage. An upload that would take the account over its
//! bytes stops with `552 Quota exceeded` as soon as it crosses: the storage of a quota account
//! writes uploads to a temporary name (local `--atomic-uploads` semantics; S3 uploads are only
//! visible once complete), so a new file is removed and an overwritten one keeps its old
//! content; an APPE is cut back to the size it had. A new file past `quota_files` is refused
//! before a byte moves. DELE and a RNTO over a file give their bytes back; AVBL answers the
//! bytes left.
//!
//! Limits: two uploads racing on one account (on one node or on two) may each pass the check
//! and overshoot by at most what they had in flight together: each is bounded by the room left
//! when it began. While the tally cannot be read (Redis down), uploads of quota accounts are
//! refused with a clear error (`451`); downloads, listings and deletes go on, and a change the
//! tally could not take is logged with the advice to `--recount`.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use zocalo_proto::storage::DirStream;
use zocalo_proto::{DirEntry, FileHandle, FileKind, Metadata, Storage, WriteMode};

use crate::state::shared::Shared;

/// An account's limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quota {
    pub bytes: Option<u64>,
    pub files: Option<u64>,
}

impl Quota {
    pub fn any(self) -> bool {
        self.bytes.is_some() || self.files.is_some()
    }
}

/// Where the tallies are kept.
#[derive(Debug, Clone)]
pub enum Tally {
    /// One node's file.
    File(PathBuf),
    /// Every node's Redis.
    Shared(Arc<Shared>),
}

/// What an account uses: bytes and files.
pub type Used = (u64, u64);

impl Tally {
    /// Runs `f` on the whole table under the file's exclusive lock, writing it back if `f`
    /// changed it.
    fn with_table<T>(
        path: &Path,
        f: impl FnOnce(&mut HashMap<String, Used>) -> T,
    ) -> io::Result<T> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let _lock = Flock::exclusive(&file)?;
        let mut text = String::new();
        file.read_to_string(&mut text)?;
        let mut table: HashMap<String, Used> = text
            .lines()
            .filter_map(|line| {
                let mut parts = line.rsplitn(3, ' ');
                let files = parts.next()?.parse().ok()?;
                let bytes = parts.next()?.parse().ok()?;
                Some((parts.next()?.to_string(), (bytes, files)))
            })
            .collect();
        let before = table.clone();
        let result = f(&mut table);
        if table != before {
            let mut names: Vec<_> = table.iter().collect();
            names.sort();
            let out: String = names.iter().map(|(n, (b, f))| format!("{n} {b} {f}\n")).collect();
            file.set_len(0)?;
            file.rewind()?;
            file.write_all(out.as_bytes())?;
        }
        Ok(result)
    }

    pub fn get(&self, user: &str) -> io::Result<Option<Used>> {
        match self {
            Tally::File(path) => Self::with_table(path, |t| t.get(user).copied()),
            Tally::Shared(shared) => shared.quota_get(user),
        }
    }

    /// Sets `user`'s tally (a recount).
    pub fn set(&self, user: &str, used: Used) -> io::Result<()> {
        match self {
            Tally::File(path) => Self::with_table(path, |t| {
                t.insert(user.to_string(), used);
            }),
            Tally::Shared(shared) => shared.quota_set(user, used, false),
        }
    }

    /// Sets `user`'s first tally, counted from storage, unless another process or node did
    /// meanwhile; returns the tally that holds.
    fn init(&self, user: &str, used: Used) -> io::Result<Used> {
        match self {
            Tally::File(path) => {
                Self::with_table(path, |t| *t.entry(user.to_string()).or_insert(used))
            }
            Tally::Shared(shared) => {
                shared.quota_set(user, used, true)?;
                Ok(shared.quota_get(user)?.unwrap_or(used))
            }
        }
    }

    /// Forgets `user`'s tally: the account is counted again when next needed.
    pub fn clear(&self, user: &str) -> io::Result<()> {
        match self {
            Tally::File(path) => Self::with_table(path, |t| {
                t.remove(user);
            }),
            Tally::Shared(shared) => shared.quota_clear(user),
        }
    }

    /// Adds `bytes` and `files` (either may be negative) to `user`'s tally, if it has one (one
    /// that has none is counted from storage when next needed, which includes this change).
    pub fn add(&self, user: &str, bytes: i64, files: i64) -> io::Result<()> {
        match self {
            Tally::File(path) => Self::with_table(path, |t| {
                if let Some(e) = t.get_mut(user) {
                    e.0 = e.0.saturating_add_signed(bytes);
                    e.1 = e.1.saturating_add_signed(files);
                }
            }),
            Tally::Shared(shared) => shared.quota_add(user, bytes, files),
        }
    }

    /// [`add`](Self::add), logging a change the tally could not take.
    fn record(&self, user: &str, bytes: i64, files: i64) {
        if let Err(e) = self.add(user, bytes, files) {
            tracing::warn!(
                user,
                bytes,
                files,
                "quota tally missed a change ({e}); `zocalo ctl quota {user} --recount` counts again"
            );
        }
    }
}

/// An exclusive flock(2) on a file that outlives it, released when dropped.
struct Flock(std::os::fd::RawFd);

impl Flock {
    fn exclusive(file: &File) -> io::Result<Self> {
        loop {
            // SAFETY: flock on an open descriptor we own; the result is checked.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(Flock(file.as_raw_fd()));
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

impl Drop for Flock {
    fn drop(&mut self) {
        // SAFETY: unlocking a descriptor this guard locked (the file is still open: the guard
        // is dropped first).
        unsafe { libc::flock(self.0, libc::LOCK_UN) };
    }
}

/// What a storage holds: its files' bytes and count, walked once (`--recount`, or an account
/// with a quota and no tally line yet).
pub fn count(storage: &dyn Storage) -> io::Result<Used> {
    let (mut bytes, mut files) = (0u64, 0u64);
    let mut dirs = vec![String::new()];
    while let Some(dir) = dirs.pop() {
        for entry in storage.list(&dir)? {
            let path =
                if dir.is_empty() { entry.name.clone() } else { format!("{dir}/{}", entry.name) };
            match entry.meta.kind {
                FileKind::Dir => dirs.push(path),
                FileKind::File => {
                    bytes += entry.meta.size;
                    files += 1;
                }
                _ => {}
            }
        }
    }
    Ok((bytes, files))
}

fn exceeded() -> io::Error {
    io::Error::new(io::ErrorKind::QuotaExceeded, "Quota exceeded")
}

/// An account's storage, held to its quota.
pub struct QuotaStorage {
    inner: Arc<dyn Storage>,
    user: String,
    quota: Quota,
    tally: Tally,
}

impl QuotaStorage {
    /// Wraps `inner` (whose uploads must replace a file only once complete).
    pub fn new(inner: Arc<dyn Storage>, user: &str, quota: Quota, tally: Tally) -> Self {
        QuotaStorage { inner, user: user.to_string(), quota, tally }
    }

    /// What the account uses, counted from its storage the first time.
    fn used(&self) -> io::Result<Used> {
        if let Some(used) = self.tally.get(&self.user)? {
            return Ok(used);
        }
        let counted = count(self.inner.as_ref())?;
        self.tally.init(&self.user, counted)
    }

    /// The size of the file at `path`, if there is one.
    fn file_size(&self, path: &str) -> Option<u64> {
        self.inner.metadata(path).ok().filter(|m| m.kind == FileKind::File).map(|m| m.size)
    }
}

impl Storage for QuotaStorage {
    forward_storage!();

    fn open_write(&self, path: &str, mode: WriteMode) -> io::Result<Box<dyn FileHandle>> {
        let old = self.file_size(path);
        let (used_bytes, used_files) = self.used()?;
        if old.is_none() && self.quota.files.is_some_and(|max| used_files >= max) {
            return Err(exceeded());
        }
        let old_size = old.unwrap_or(0);
        // The bytes this upload may write: the room left, with what it replaces given back.
        let room = match self.quota.bytes {
            None => u64::MAX,
            Some(max) => {
                let freed = match mode {
                    WriteMode::Truncate | WriteMode::CreateNew => old_size,
                    WriteMode::Append => 0,
                    WriteMode::At(offset) => old_size.saturating_sub(offset),
                };
                max.saturating_sub(used_bytes.saturating_sub(freed))
            }
        };
        let file = self.inner.open_write(path, mode)?;
        Ok(Box::new(QuotaHandle {
            file: Some(file),
            room,
            written: 0,
            old_size,
            new_file: old.is_none(),
            mode,
            user: self.user.clone(),
            tally: self.tally.clone(),
            inner: self.inner.clone(),
            path: path.to_string(),
            settled: false,
        }))
    }

    fn remove(&self, path: &str) -> io::Result<()> {
        let size = self.file_size(path);
        self.inner.remove(path)?;
        if let Some(size) = size {
            self.tally.record(&self.user, -(size as i64), -1);
        }
        Ok(())
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let replaced = self.file_size(to);
        self.inner.rename(from, to)?;
        if let Some(size) = replaced {
            self.tally.record(&self.user, -(size as i64), -1);
        }
        Ok(())
    }

    fn available(&self, path: &str) -> io::Result<u64> {
        match self.quota.bytes {
            Some(max) => {
                let left = max.saturating_sub(self.used()?.0);
                Ok(self.inner.available(path).map_or(left, |free| free.min(left)))
            }
            None => self.inner.available(path),
        }
    }
}

/// An upload held to its room.
struct QuotaHandle {
    file: Option<Box<dyn FileHandle>>,
    room: u64,
    written: u64,
    old_size: u64,
    new_file: bool,
    mode: WriteMode,
    user: String,
    tally: Tally,
    inner: Arc<dyn Storage>,
    path: String,
    /// The tally has this upload's outcome.
    settled: bool,
}

impl QuotaHandle {
    fn file(&mut self) -> io::Result<&mut Box<dyn FileHandle>> {
        self.file.as_mut().ok_or_else(exceeded)
    }

    /// An upload that wrote in place (APPE, REST+STOR) changed the file whether it completed
    /// or not: the tally takes the file's size now.
    fn settle_in_place(&mut self) {
        if self.settled || self.mode == WriteMode::Truncate {
            return;
        }
        self.settled = true;
        let size = self.inner.metadata(&self.path).map_or(self.old_size, |m| m.size);
        let files = i64::from(self.new_file && size > 0);
        self.tally.record(&self.user, size as i64 - self.old_size as i64, files);
    }
}

impl Read for QuotaHandle {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file()?.read(buf)
    }
}

impl Write for QuotaHandle {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written + buf.len() as u64 > self.room {
            // Over: nothing more is written. A file written in place is cut back to its old
            // size; an upload to a temporary name is dropped unfinished, so it replaces
            // nothing.
            if let Some(file) = self.file.take() {
                if matches!(self.mode, WriteMode::Append | WriteMode::At(_)) {
                    if let Some(fd) = file.raw_fd() {
                        // SAFETY: ftruncate on the handle's own open descriptor.
                        unsafe { libc::ftruncate(fd, self.old_size as libc::off_t) };
                    }
                }
                drop(file);
                // A file this upload created in place (STOU, or APPE of a new name) goes.
                if self.new_file && self.mode != WriteMode::Truncate {
                    let _ = self.inner.remove(&self.path);
                }
            }
            self.settled = true;
            return Err(exceeded());
        }
        let n = self.file()?.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file()?.flush()
    }
}

impl FileHandle for QuotaHandle {
    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        self.file.as_ref().and_then(|f| f.raw_fd())
    }

    fn begin(&mut self) -> io::Result<()> {
        self.file()?.begin()
    }

    fn finish(mut self: Box<Self>) -> io::Result<()> {
        let file = self.file.take().ok_or_else(exceeded)?;
        file.finish()?;
        match self.mode {
            WriteMode::Truncate => {
                self.settled = true;
                let delta = self.written as i64 - self.old_size as i64;
                self.tally.record(&self.user, delta, i64::from(self.new_file));
            }
            _ => self.settle_in_place(),
        }
        Ok(())
    }
}

impl Drop for QuotaHandle {
    fn drop(&mut self) {
        self.file.take();
        self.settle_in_place();
    }
}

/// The default tally file: the users file's name with `.quota` after it.
pub fn default_path(users_file: Option<&Path>) -> Option<PathBuf> {
    users_file.map(|f| {
        let mut name = f.as_os_str().to_owned();
        name.push(".quota");
        PathBuf::from(name)
    })
}
