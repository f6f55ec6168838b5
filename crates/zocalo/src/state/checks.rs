//! Upload checks (`[[hook]]` with `check = true`): an account's storage wrapped so that an
//! upload is put in place only once the check said yes, and the client's `226` (or `550` with
//! the check's reason) comes after the verdict.
//!
//! The bytes wait where the storage keeps an unfinished upload: on a local disk the temporary
//! file of an atomic upload (checks turn `--atomic-uploads` on; the check reads it through the
//! path of its open descriptor, `/proc/self/fd/N`), on S3 an unfinished multipart upload whose
//! bytes are also copied to a spool file in the system's temporary directory for the check to
//! read. Keep: the storage's own finish puts the file in place (the rename, the multipart
//! completion). Refuse: the handle is dropped unfinished (the temporary file is removed, the
//! multipart upload aborted). STOU, APPE and REST+STOR write in place on a local disk: a
//! refusal cuts the file back to its old size, or removes it if the upload made it.
//!
//! The check runs in the upload's finish, so an event loop runs that finish with long work
//! ([`FileHandle::slow_finish`]), never in the lane that short storage calls and logins use.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use zocalo_proto::storage::DirStream;
use zocalo_proto::{DirEntry, FileHandle, FileKind, Metadata, Storage, WriteMode};

use crate::ops::hooks::{Event, Hooks, Verdict};

/// An account's storage whose uploads wait for their check.
pub struct CheckedStorage {
    inner: Arc<dyn Storage>,
    hooks: Arc<Hooks>,
    user: String,
    client: SocketAddr,
    session: u64,
}

impl CheckedStorage {
    pub fn new(
        inner: Arc<dyn Storage>,
        hooks: Arc<Hooks>,
        user: &str,
        client: SocketAddr,
        session: u64,
    ) -> Self {
        CheckedStorage { inner, hooks, user: user.to_string(), client, session }
    }
}

impl Storage for CheckedStorage {
    forward_storage!();

    fn open_write(&self, path: &str, mode: WriteMode) -> io::Result<Box<dyn FileHandle>> {
        let old = self.inner.metadata(path).ok().filter(|m| m.kind == FileKind::File);
        let file = self.inner.open_write(path, mode)?;
        let spool = match file.raw_fd() {
            Some(_) => None,
            None => Some(Spool::create()?),
        };
        Ok(Box::new(CheckedHandle {
            file: Some(file),
            spool,
            mode,
            old_size: old.as_ref().map_or(0, |m| m.size),
            new_file: old.is_none(),
            path: path.to_string(),
            inner: self.inner.clone(),
            hooks: self.hooks.clone(),
            user: self.user.clone(),
            client: self.client,
            session: self.session,
            began: Instant::now(),
        }))
    }

    fn remove(&self, path: &str) -> io::Result<()> {
        self.inner.remove(path)
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.inner.rename(from, to)
    }

    fn available(&self, path: &str) -> io::Result<u64> {
        self.inner.available(path)
    }
}

/// A copy of an upload's bytes for its check, removed when dropped.
struct Spool {
    file: File,
    path: PathBuf,
    written: u64,
}

impl Spool {
    fn create() -> io::Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let name =
            format!("zocalo-check-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let path = std::env::temp_dir().join(name);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        Ok(Spool { file, path, written: 0 })
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// An upload waiting for its check at its finish.
struct CheckedHandle {
    file: Option<Box<dyn FileHandle>>,
    spool: Option<Spool>,
    mode: WriteMode,
    old_size: u64,
    new_file: bool,
    path: String,
    inner: Arc<dyn Storage>,
    hooks: Arc<Hooks>,
    user: String,
    client: SocketAddr,
    session: u64,
    began: Instant,
}

impl CheckedHandle {
    fn file(&mut self) -> io::Result<&mut Box<dyn FileHandle>> {
        self.file.as_mut().ok_or_else(|| io::Error::other("upload already finished"))
    }

    /// The file the check reads, and the bytes the upload holds.
    fn to_check(&self, file: &dyn FileHandle) -> Option<(PathBuf, u64)> {
        if let Some(spool) = &self.spool {
            return Some((spool.path.clone(), spool.written));
        }
        let fd = file.raw_fd()?;
        let path = crate::ops::hooks::fd_path(fd)?;
        let size = std::fs::metadata(&path).map_or(0, |m| m.len());
        Some((path, size))
    }

    /// A refused upload that wrote in place: cut back to what was there, or removed.
    fn undo_in_place(&self, file: Box<dyn FileHandle>) {
        if self.mode == WriteMode::Truncate {
            return; // unfinished: it replaces nothing
        }
        if self.new_file {
            drop(file);
            let _ = self.inner.remove(&self.path);
        } else if let Some(fd) = file.raw_fd() {
            // SAFETY: ftruncate on the handle's own open descriptor.
            unsafe { libc::ftruncate(fd, self.old_size as libc::off_t) };
        }
    }
}

impl Read for CheckedHandle {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file()?.read(buf)
    }
}

impl Write for CheckedHandle {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file()?.write(buf)?;
        if let Some(spool) = &mut self.spool {
            spool.file.write_all(&buf[..n])?;
            spool.written += n as u64;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file()?.flush()
    }
}

impl FileHandle for CheckedHandle {
    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        self.file.as_ref().and_then(|f| f.raw_fd())
    }

    fn begin(&mut self) -> io::Result<()> {
        self.file()?.begin()
    }

    fn slow_finish(&self) -> bool {
        true
    }

    fn finish(mut self: Box<Self>) -> io::Result<()> {
        let file = self.file.take().ok_or_else(|| io::Error::other("upload already finished"))?;
        if let Some(spool) = &mut self.spool {
            spool.file.flush()?;
        }
        let verdict = match self.to_check(file.as_ref()) {
            Some((path, bytes)) => {
                let mut event = Event::new("upload", self.session, &self.user, self.client);
                event.path = Some(format!("/{}", self.path));
                event.bytes = Some(bytes);
                event.complete = Some(true);
                event.duration_ms = Some(self.began.elapsed().as_millis() as u64);
                event.file = Some(path.to_string_lossy().into_owned());
                self.hooks.check(event)
            }
            None => {
                tracing::warn!(path = %self.path, "upload check: no file to show it; refused");
                Verdict::Refuse("Upload check failed.".into())
            }
        };
        match verdict {
            Verdict::Keep => file.finish(),
            Verdict::Refuse(why) => {
                self.undo_in_place(file);
                Err(zocalo_proto::storage::refused(why))
            }
        }
    }
}
