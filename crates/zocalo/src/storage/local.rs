//! The local file system as a [`Storage`], confined by the kernel.
//!
//! Every path is opened relative to a root directory descriptor with openat2(2) and
//! `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`: the kernel refuses any resolution that would leave
//! the root, whether by `..`, an absolute path or a symlink (inside or outside the root), so no
//! string check stands between a client and `/etc`. Operations that name a final component
//! (mkdir, unlink, rename) first open the parent directory that way, then act on a single name.

use std::ffi::CStr;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use std::time::{Duration, SystemTime};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat};
use zocalo_proto::storage::{
    wrong_kind, DirEntry, DirStream, FileHandle, FileKind, Metadata, Storage, WriteMode,
};

/// A directory tree served from disk.
#[derive(Debug)]
pub struct LocalFs {
    root: OwnedFd,
    atomic_uploads: bool,
}

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_MAGICLINKS);

impl LocalFs {
    /// Opens `root` as the confinement directory. Fails if openat2 is unavailable (Linux < 5.6).
    pub fn open(root: &Path, atomic_uploads: bool) -> io::Result<Self> {
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let root = rustix::fs::open(root, flags, Mode::empty())?;
        let fs = LocalFs { root, atomic_uploads };
        fs.open_at("", OFlags::PATH | OFlags::DIRECTORY).map_err(|e| {
            io::Error::new(e.kind(), format!("openat2 with RESOLVE_BENEATH is required: {e}"))
        })?;
        Ok(fs)
    }

    fn open_at(&self, path: &str, flags: OFlags) -> io::Result<OwnedFd> {
        self.open_mode(path, flags, Mode::empty())
    }

    /// Opens a file to transfer, refusing anything but a regular file. The open itself is
    /// non-blocking, so a named pipe never makes it wait for a writer (or a reader), and a
    /// device is never read; the flag is cleared again once the file is known to be regular.
    fn open_regular(&self, path: &str, flags: OFlags, mode: Mode) -> io::Result<File> {
        let flags = flags | OFlags::NONBLOCK | OFlags::NOCTTY;
        let fd = self.open_mode(path, flags, mode).map_err(|e| match e.raw_os_error() {
            // A pipe without a reader (or a device without its hardware) opened for writing.
            Some(libc::ENXIO) => wrong_kind(FileKind::Other),
            _ => e,
        })?;
        let found = kind(&rustix::fs::fstat(&fd)?);
        if found != FileKind::File {
            return Err(wrong_kind(found));
        }
        rustix::fs::fcntl_setfl(&fd, rustix::fs::fcntl_getfl(&fd)? - OFlags::NONBLOCK)?;
        Ok(File::from(fd))
    }

    fn open_mode(&self, path: &str, flags: OFlags, mode: Mode) -> io::Result<OwnedFd> {
        let path = if path.is_empty() { "." } else { path };
        let fd = rustix::fs::openat2(&self.root, path, flags | OFlags::CLOEXEC, mode, RESOLVE)?;
        Ok(fd)
    }

    /// Opens the parent directory of `path` and returns it with the final name.
    fn parent<'p>(&self, path: &'p str) -> io::Result<(OwnedFd, &'p str)> {
        let (dir, name) = match path.rfind('/') {
            Some(i) => (&path[..i], &path[i + 1..]),
            None => ("", path),
        };
        if name.is_empty() || name == "." || name == ".." {
            return Err(io::ErrorKind::InvalidFilename.into());
        }
        let fd = self.open_at(dir, OFlags::PATH | OFlags::DIRECTORY)?;
        Ok((fd, name))
    }

    /// Opens an upload's target without truncating it: the truncation (to zero, or to the REST
    /// offset) waits for [`FileHandle::begin`], and a file this call created is removed again
    /// if the upload never begins. So a STOR that fails before its data connection is up
    /// leaves the old file, or no file, as it was.
    fn open_file_write(&self, path: &str, mode: WriteMode) -> io::Result<LocalFile> {
        let append = if mode == WriteMode::Append { OFlags::APPEND } else { OFlags::empty() };
        let create = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | append;
        let perm = Mode::from_raw_mode(0o644);
        let (file, created) = match self.open_regular(path, create, perm) {
            Ok(file) => (file, true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && mode != WriteMode::CreateNew => {
                (self.open_regular(path, OFlags::WRONLY | append, Mode::empty())?, false)
            }
            Err(e) => return Err(e),
        };
        let truncate_to = match mode {
            WriteMode::Truncate => Some(0),
            WriteMode::At(offset) if offset > file.metadata()?.len() => {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "REST beyond end of file"));
            }
            WriteMode::At(offset) => Some(offset),
            WriteMode::Append | WriteMode::CreateNew => None,
        };
        let created = if created { Some(self.parent(path)?) } else { None };
        let created = created.map(|(dir, name)| Created { dir, name: name.to_string() });
        Ok(LocalFile { file, rename: None, truncate_to, created, begun: false })
    }

    /// CWD needs a directory the user can open, not just one that exists.
    fn can_open_dir(&self, path: &str) -> io::Result<()> {
        self.open_at(path, OFlags::RDONLY | OFlags::DIRECTORY).map(drop)
    }

    /// An upload to a temporary name in the same directory, renamed over `path` by `finish`.
    fn open_atomic(&self, path: &str) -> io::Result<LocalFile> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        match self.metadata(path) {
            Ok(meta) if meta.kind != FileKind::File => return Err(wrong_kind(meta.kind)),
            _ => {}
        }
        let (dir, name) = self.parent(path)?;
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let temp = format!(".{name}.zocalo-part-{}-{seq}", std::process::id());
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::CLOEXEC;
        let fd =
            rustix::fs::openat2(&dir, temp.as_str(), flags, Mode::from_raw_mode(0o644), RESOLVE)?;
        let rename = Some(PendingRename { dir, temp, name: name.to_string() });
        Ok(LocalFile {
            file: File::from(fd),
            rename,
            truncate_to: None,
            created: None,
            begun: false,
        })
    }
}

/// Names read and stat-ed at a time when a whole directory is read.
const BATCH: usize = 256;

/// A batch of NUL-terminated names in one allocation.
#[derive(Default)]
struct NameBatch {
    bytes: Vec<u8>,
    count: usize,
}

impl NameBatch {
    fn push(&mut self, name: &CStr) {
        self.bytes.extend_from_slice(name.to_bytes_with_nul());
        self.count += 1;
    }

    fn len(&self) -> usize {
        self.count
    }

    fn names(&self) -> impl Iterator<Item = &CStr> {
        let mut rest = self.bytes.as_slice();
        std::iter::from_fn(move || {
            let name = CStr::from_bytes_until_nul(rest).ok()?;
            rest = &rest[name.to_bytes_with_nul().len()..];
            Some(name)
        })
    }
}

fn kind(stat: &Stat) -> FileKind {
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile => FileKind::File,
        FileType::Directory => FileKind::Dir,
        FileType::Symlink => FileKind::Symlink,
        _ => FileKind::Other,
    }
}

#[allow(clippy::unnecessary_cast)] // st_nlink is not u64 on every target
fn metadata(stat: &Stat) -> Metadata {
    let secs = stat.st_mtime.max(0) as u64;
    Metadata {
        kind: kind(stat),
        size: stat.st_size.max(0) as u64,
        modified: SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
        mode: stat.st_mode & 0o7777,
        nlink: stat.st_nlink as u64,
    }
}

impl Storage for LocalFs {
    fn metadata(&self, path: &str) -> io::Result<Metadata> {
        let fd = self.open_at(path, OFlags::PATH)?;
        Ok(metadata(&rustix::fs::fstat(&fd)?))
    }

    fn link_metadata(&self, path: &str) -> io::Result<(Metadata, Option<String>)> {
        if path.is_empty() {
            return Ok((self.metadata(path)?, None));
        }
        let (dir, name) = self.parent(path)?;
        let meta = metadata(&rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)?);
        let link = match meta.kind {
            FileKind::Symlink => rustix::fs::readlinkat(&dir, name, Vec::new())
                .ok()
                .map(|target| target.to_string_lossy().into_owned()),
            _ => None,
        };
        Ok((meta, link))
    }

    fn list(&self, path: &str) -> io::Result<Vec<DirEntry>> {
        self.read_whole(path, true)
    }

    fn set_modified(&self, path: &str, time: SystemTime) -> io::Result<()> {
        let fd = self.open_at(path, OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY)?;
        let secs = time.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let omit = rustix::fs::Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_OMIT };
        let modified = rustix::fs::Timespec { tv_sec: secs as i64, tv_nsec: 0 };
        let times = rustix::fs::Timestamps { last_access: omit, last_modification: modified };
        Ok(rustix::fs::futimens(&fd, &times)?)
    }

    fn available(&self, path: &str) -> io::Result<u64> {
        let fd = self.open_at(path, OFlags::PATH)?;
        let vfs = rustix::fs::fstatvfs(&fd)?;
        Ok(vfs.f_bavail.saturating_mul(vfs.f_frsize))
    }

    fn set_mode(&self, path: &str, mode: u32) -> io::Result<()> {
        let fd = self.open_at(path, OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY)?;
        Ok(rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode & 0o777))?)
    }

    fn open_dir(&self, path: &str, stat: bool) -> io::Result<Box<dyn DirStream>> {
        let fd = self.open_at(path, OFlags::RDONLY | OFlags::DIRECTORY)?;
        let dir = rustix::fs::Dir::read_from(&fd)?;
        let fs = LocalFs { root: self.root.try_clone()?, atomic_uploads: self.atomic_uploads };
        Ok(Box::new(LocalDir { fs, fd, dir, stat }))
    }

    fn names(&self, path: &str) -> io::Result<Vec<String>> {
        Ok(self.read_whole(path, false)?.into_iter().map(|e| e.name).collect())
    }

    fn open_read(&self, path: &str, offset: u64) -> io::Result<Box<dyn FileHandle>> {
        let mut file = self.open_regular(path, OFlags::RDONLY, Mode::empty())?;
        file.seek(SeekFrom::Start(offset))?;
        Ok(Box::new(LocalFile {
            file,
            rename: None,
            truncate_to: None,
            created: None,
            begun: true,
        }))
    }

    fn open_write(&self, path: &str, mode: WriteMode) -> io::Result<Box<dyn FileHandle>> {
        if self.atomic_uploads && mode == WriteMode::Truncate {
            return Ok(Box::new(self.open_atomic(path)?));
        }
        Ok(Box::new(self.open_file_write(path, mode)?))
    }

    fn mkdir(&self, path: &str) -> io::Result<()> {
        let (dir, name) = self.parent(path)?;
        Ok(rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o755))?)
    }

    fn rmdir(&self, path: &str) -> io::Result<()> {
        let (dir, name) = self.parent(path)?;
        Ok(rustix::fs::unlinkat(&dir, name, AtFlags::REMOVEDIR)?)
    }

    fn remove(&self, path: &str) -> io::Result<()> {
        let (dir, name) = self.parent(path)?;
        Ok(rustix::fs::unlinkat(&dir, name, AtFlags::empty())?)
    }

    fn enter(&self, path: &str) -> io::Result<()> {
        self.can_open_dir(path)
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let (from_dir, from_name) = self.parent(from)?;
        let (to_dir, to_name) = self.parent(to)?;
        Ok(rustix::fs::renameat(&from_dir, from_name, &to_dir, to_name)?)
    }
}

impl LocalFs {
    /// A whole directory, read through the same batches as the streamed listings.
    fn read_whole(&self, path: &str, stat: bool) -> io::Result<Vec<DirEntry>> {
        let mut dir = self.open_dir(path, stat)?;
        let mut entries = Vec::new();
        loop {
            let batch = dir.next_batch(BATCH)?;
            if batch.is_empty() {
                return Ok(entries);
            }
            entries.extend(batch);
        }
    }

    /// Stats each name of `batch` in `dir` (not following symbolic links, whose targets are
    /// read instead) and appends the entries; a name that vanished since it was read is left
    /// out.
    fn stat_batch(&self, dir: &OwnedFd, batch: &NameBatch, out: &mut Vec<DirEntry>) {
        for name in batch.names() {
            if name.to_bytes() == b"." || name.to_bytes() == b".." {
                continue;
            }
            let Ok(stat) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) else {
                continue;
            };
            let meta = metadata(&stat);
            // A link is listed as a link, with its target: a client walking the tree must not
            // descend into it as if it were a copy (and loop).
            let link = match meta.kind {
                FileKind::Symlink => rustix::fs::readlinkat(dir, name, Vec::new())
                    .ok()
                    .map(|target| target.to_string_lossy().into_owned()),
                _ => None,
            };
            let name = name.to_string_lossy().into_owned();
            out.push(DirEntry { name, meta, link });
        }
    }
}

/// A directory read a batch at a time, for the listings that stream. Each batch is read and
/// stat-ed on the calling thread (a worker thread, in the event loop).
struct LocalDir {
    fs: LocalFs,
    fd: OwnedFd,
    dir: rustix::fs::Dir,
    stat: bool,
}

impl DirStream for LocalDir {
    fn next_batch(&mut self, max: usize) -> io::Result<Vec<DirEntry>> {
        let mut out = Vec::new();
        // A batch of only `.`, `..` or names that vanished is skipped: empty means the end.
        while out.is_empty() {
            let mut names = NameBatch::default();
            while names.len() < max.max(1) {
                match self.dir.read() {
                    Some(entry) => names.push(entry?.file_name()),
                    None => break,
                }
            }
            if names.len() == 0 {
                break;
            }
            if self.stat {
                self.fs.stat_batch(&self.fd, &names, &mut out);
                continue;
            }
            for name in names.names() {
                if name.to_bytes() != b"." && name.to_bytes() != b".." {
                    let name = name.to_string_lossy().into_owned();
                    out.push(DirEntry { name, meta: Metadata::unknown(), link: None });
                }
            }
        }
        Ok(out)
    }
}

#[derive(Debug)]
struct PendingRename {
    dir: OwnedFd,
    temp: String,
    name: String,
}

/// A file being read or written by a transfer.
#[derive(Debug)]
struct LocalFile {
    file: File,
    rename: Option<PendingRename>,
    /// Truncate here (and write from here) when the upload begins.
    truncate_to: Option<u64>,
    /// This open created the file: remove it if the upload never begins.
    created: Option<Created>,
    begun: bool,
}

#[derive(Debug)]
struct Created {
    dir: OwnedFd,
    name: String,
}

impl Read for LocalFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }
}

impl Write for LocalFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl FileHandle for LocalFile {
    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.file.as_raw_fd())
    }

    fn begin(&mut self) -> io::Result<()> {
        if let Some(offset) = self.truncate_to.take() {
            self.file.set_len(offset)?;
            self.file.seek(SeekFrom::Start(offset))?;
        }
        self.begun = true;
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> io::Result<()> {
        if let Some(r) = self.rename.take() {
            self.file.sync_data()?;
            rustix::fs::renameat(&r.dir, r.temp.as_str(), &r.dir, r.name.as_str())?;
        }
        Ok(())
    }
}

impl Drop for LocalFile {
    fn drop(&mut self) {
        if let Some(r) = self.rename.take() {
            let _ = rustix::fs::unlinkat(&r.dir, r.temp.as_str(), AtFlags::empty());
        }
        if let (Some(c), false) = (self.created.take(), self.begun) {
            let _ = rustix::fs::unlinkat(&c.dir, c.name.as_str(), AtFlags::empty());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> (std::path::PathBuf, LocalFs) {
        let dir = std::env::temp_dir().join(format!(
            "zocalo-fs-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("root/sub")).unwrap();
        std::fs::write(dir.join("secret"), b"outside").unwrap();
        std::fs::write(dir.join("root/a.txt"), b"inside").unwrap();
        std::os::unix::fs::symlink(dir.join("secret"), dir.join("root/out")).unwrap();
        std::os::unix::fs::symlink("a.txt", dir.join("root/in")).unwrap();
        let fs = LocalFs::open(&dir.join("root"), false).unwrap();
        (dir, fs)
    }

    #[test]
    fn a_large_directory_lists_every_entry_once() {
        let (dir, fs) = tree();
        let big = dir.join("root/big");
        std::fs::create_dir(&big).unwrap();
        let count = BATCH * 5 + 17; // several batches and a partial one
        for i in 0..count {
            std::fs::write(big.join(format!("f{i:05}")), vec![b'x'; i % 7]).unwrap();
        }
        std::fs::create_dir(big.join("subdir")).unwrap();
        std::os::unix::fs::symlink("f00003", big.join("link")).unwrap();
        std::os::unix::fs::symlink("../../secret", big.join("escape")).unwrap();
        let mut entries = fs.list("big").unwrap();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(entries.len(), count + 3);
        let find = |name: &str| entries.iter().find(|e| e.name == name).map(|e| e.meta.clone());
        for i in [0, 1, BATCH, count - 1] {
            let meta = find(&format!("f{i:05}")).unwrap();
            assert_eq!((meta.kind, meta.size), (FileKind::File, (i % 7) as u64), "f{i:05}");
        }
        assert_eq!(find("subdir").unwrap().kind, FileKind::Dir);
        assert_eq!(find("link").unwrap().kind, FileKind::Symlink, "a link is listed as a link");
        let target = |name: &str| entries.iter().find(|e| e.name == name).unwrap().link.clone();
        assert_eq!(target("link").as_deref(), Some("f00003"));
        assert_eq!(find("escape").unwrap().kind, FileKind::Symlink, "not resolved outside");
        assert_eq!(target("escape").as_deref(), Some("../../secret"));
        let mut names = fs.names("big").unwrap();
        names.sort();
        let listed: Vec<_> = entries.iter().map(|e| e.name.clone()).collect();
        assert_eq!(names, listed);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn symlinks_and_dotdot_cannot_leave_the_root() {
        let (dir, fs) = tree();
        assert!(fs.open_read("out", 0).is_err());
        assert!(fs.open_read("../secret", 0).is_err());
        assert!(fs.open_read("sub/../../secret", 0).is_err());
        assert!(fs.metadata("out").is_err());
        let mut data = String::new();
        fs.open_read("in", 0).unwrap().read_to_string(&mut data).unwrap();
        assert_eq!(data, "inside");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_named_pipe_is_refused_without_waiting() {
        let (dir, fs) = tree();
        use std::os::unix::ffi::OsStrExt;
        let fifo = std::ffi::CString::new(dir.join("root/pipe").as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o666) }, 0);
        // Blocking opens would wait here for ever: there is no writer and no reader.
        let refused = |e: io::Error| zocalo_proto::storage::error_reply(&e);
        let not_a_file = (550, "Not a regular file.".to_string());
        assert_eq!(refused(fs.open_read("pipe", 0).unwrap_err()), not_a_file);
        for mode in [WriteMode::Truncate, WriteMode::Append, WriteMode::At(0)] {
            assert_eq!(refused(fs.open_write("pipe", mode).unwrap_err()), not_a_file);
        }
        let atomic = LocalFs::open(&dir.join("root"), true).unwrap();
        assert_eq!(
            refused(atomic.open_write("pipe", WriteMode::Truncate).unwrap_err()),
            not_a_file
        );
        assert_eq!(fs.metadata("pipe").unwrap().kind, FileKind::Other, "the pipe is still there");
    }

    #[test]
    fn listing_and_mutations() {
        let (dir, fs) = tree();
        let mut names: Vec<String> = fs.list("").unwrap().into_iter().map(|e| e.name).collect();
        names.sort();
        assert_eq!(names, ["a.txt", "in", "out", "sub"]);
        fs.mkdir("sub/d").unwrap();
        fs.rename("a.txt", "sub/d/b.txt").unwrap();
        assert_eq!(fs.metadata("sub/d/b.txt").unwrap().size, 6);
        assert!(fs.rmdir("sub/d").is_err());
        fs.remove("sub/d/b.txt").unwrap();
        fs.rmdir("sub/d").unwrap();
        assert!(fs.mkdir("..").is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_upload_that_never_begins_changes_nothing() {
        let (dir, fs) = tree();
        let f = fs.open_write("a.txt", WriteMode::Truncate).unwrap();
        drop(f);
        assert_eq!(std::fs::read(dir.join("root/a.txt")).unwrap(), b"inside");
        let f = fs.open_write("new.txt", WriteMode::Truncate).unwrap();
        assert!(dir.join("root/new.txt").exists());
        drop(f);
        assert!(!dir.join("root/new.txt").exists(), "a file created for nothing is removed");
        let mut f = fs.open_write("a.txt", WriteMode::At(2)).unwrap();
        f.begin().unwrap();
        f.write_all(b"XY").unwrap();
        f.finish().unwrap();
        assert_eq!(std::fs::read(dir.join("root/a.txt")).unwrap(), b"inXY");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn atomic_upload_replaces_only_when_finished() {
        let (dir, _) = tree();
        let fs = LocalFs::open(&dir.join("root"), true).unwrap();
        let mut f = fs.open_write("a.txt", WriteMode::Truncate).unwrap();
        f.write_all(b"new").unwrap();
        assert_eq!(std::fs::read(dir.join("root/a.txt")).unwrap(), b"inside");
        f.finish().unwrap();
        assert_eq!(std::fs::read(dir.join("root/a.txt")).unwrap(), b"new");
        let mut f = fs.open_write("a.txt", WriteMode::Truncate).unwrap();
        f.write_all(b"broken").unwrap();
        drop(f);
        assert_eq!(std::fs::read(dir.join("root/a.txt")).unwrap(), b"new");
        let leftovers = std::fs::read_dir(dir.join("root")).unwrap().count();
        assert_eq!(leftovers, 4, "the temporary file is removed");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
