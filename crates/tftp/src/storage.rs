//! Where the server's files live: the [`TftpStorage`] trait, and [`DirStorage`], a directory
//! that cannot be escaped.
//!
//! The server normalizes a requested name before the storage sees it (see [`normalize`]), but
//! confinement is the storage's job and is done by the kernel: on Linux [`DirStorage`] opens
//! every path with `openat2(2)` and `RESOLVE_BENEATH`, so neither `..` nor a symbolic link can
//! resolve outside the root. Where `openat2` is missing (Linux before 5.6, other systems) it
//! falls back to resolving the parent directory and checking it is under the root, and refuses
//! a symbolic link as the last component.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Files the TFTP server can read and write.
///
/// `path` is normalized by the server: it starts with `/`, which stands for the root of the
/// storage, and has no empty, `.` or `..` components.
pub trait TftpStorage: Send + Sync {
    /// Opens a file for reading; also returns its size if known (for the tsize option).
    fn open_read(&self, path: &str) -> io::Result<(Box<dyn Read + Send>, Option<u64>)>;
    /// Creates or truncates a file for writing. The receiver calls `flush` once, after the
    /// last block of a complete transfer: a storage that commits uploads (a temporary file
    /// renamed into place, an object-store upload) commits there, and a writer dropped without
    /// that flush was a failed transfer.
    fn open_write(&self, path: &str) -> io::Result<Box<dyn Write + Send>>;
}

/// Normalizes a file name from a request into the form [`TftpStorage`] takes.
///
/// Leading slashes are allowed ("/boot/x" and "boot/x" name the same file), `.` and empty
/// components are dropped. `None` for names that are obviously bad: a `..` component, a
/// backslash or control character, or nothing left after normalizing.
pub fn normalize(name: &str) -> Option<String> {
    if name.chars().any(|c| c.is_control() || c == '\\') {
        return None;
    }
    let mut out = String::with_capacity(name.len() + 1);
    for part in name.split('/').filter(|p| !p.is_empty() && *p != ".") {
        if part == ".." {
            return None;
        }
        out.push('/');
        out.push_str(part);
    }
    (!out.is_empty()).then_some(out)
}

/// A directory on the local file system, confined by the kernel (see the module docs).
#[derive(Debug)]
pub struct DirStorage {
    root: PathBuf,
    #[cfg(target_os = "linux")]
    dir: File,
}

impl DirStorage {
    /// Serves the files under `root`, which must be an existing directory.
    pub fn new(root: impl AsRef<Path>) -> io::Result<Self> {
        let root = root.as_ref().canonicalize()?;
        if !root.is_dir() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "root is not a directory"));
        }
        Ok(DirStorage {
            #[cfg(target_os = "linux")]
            dir: File::open(&root)?,
            root,
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn open(&self, path: &str, write: bool) -> io::Result<File> {
        let relative = path.trim_start_matches('/');
        if relative.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty path"));
        }
        #[cfg(target_os = "linux")]
        match linux::open_beneath(&self.dir, relative, write) {
            Err(err) if err.raw_os_error() == Some(libc::ENOSYS) => {}
            other => return other,
        }
        self.open_checked(relative, write)
    }

    /// Fallback without `openat2`: resolve the parent, check it is under the root, and refuse
    /// to follow a symbolic link in the last component.
    fn open_checked(&self, relative: &str, write: bool) -> io::Result<File> {
        let full = self.root.join(relative);
        let parent = full.parent().unwrap_or(&self.root).canonicalize()?;
        let name = full.file_name().ok_or(io::ErrorKind::InvalidInput)?;
        if !parent.starts_with(&self.root) {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, "outside the root"));
        }
        let target = parent.join(name);
        if target.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink()) {
            let real = target.canonicalize()?;
            if !real.starts_with(&self.root) {
                return Err(io::Error::new(io::ErrorKind::PermissionDenied, "outside the root"));
            }
        }
        let mut options = File::options();
        match write {
            true => options.write(true).create(true).truncate(true),
            false => options.read(true),
        };
        options.open(target)
    }
}

impl TftpStorage for DirStorage {
    fn open_read(&self, path: &str) -> io::Result<(Box<dyn Read + Send>, Option<u64>)> {
        let file = self.open(path, false)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, "not a regular file"));
        }
        Ok((Box::new(file), Some(meta.len())))
    }

    fn open_write(&self, path: &str) -> io::Result<Box<dyn Write + Send>> {
        let file = self.open(path, true)?;
        Ok(Box::new(file))
    }
}

#[cfg(target_os = "linux")]
mod linux {
    //! `openat2(2)` with `RESOLVE_BENEATH`, through the raw system call.

    use std::ffi::CString;
    use std::fs::File;
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd};

    pub(super) fn open_beneath(dir: &File, relative: &str, write: bool) -> io::Result<File> {
        let path = CString::new(relative).map_err(|_| io::ErrorKind::InvalidInput)?;
        let flags = match write {
            true => libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
            false => libc::O_RDONLY,
        };
        // SAFETY: `open_how` is a plain C struct for which all zero bytes are valid.
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = (flags | libc::O_CLOEXEC | libc::O_NOCTTY) as u64;
        how.mode = if write { 0o644 } else { 0 };
        how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS;
        // SAFETY: the pointers are valid for the duration of the call and the size matches.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                path.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the system call returned a new file descriptor that nothing else owns.
        Ok(unsafe { File::from_raw_fd(fd as i32) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_names() {
        assert_eq!(normalize("/a//b/./c").as_deref(), Some("/a/b/c"));
        assert_eq!(normalize("file").as_deref(), Some("/file"));
        for bad in ["", "/", "a/../b", "..", "a\\b", "a\nb", "./."] {
            assert_eq!(normalize(bad), None, "{bad:?}");
        }
    }

    fn scratch_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("zocalo-tftp-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("root/sub")).unwrap();
        dir
    }

    #[test]
    fn dir_storage_stays_inside_root() {
        let dir = scratch_dir("confine");
        std::fs::write(dir.join("secret"), b"secret").unwrap();
        std::fs::write(dir.join("root/sub/ok"), b"ok").unwrap();
        std::os::unix::fs::symlink(dir.join("secret"), dir.join("root/escape")).unwrap();
        std::os::unix::fs::symlink("../secret", dir.join("root/sub/rel")).unwrap();
        std::os::unix::fs::symlink("sub/ok", dir.join("root/inside")).unwrap();
        let storage = DirStorage::new(dir.join("root")).unwrap();

        let (mut file, size) = storage.open_read("/inside").unwrap();
        let mut text = String::new();
        file.read_to_string(&mut text).unwrap();
        assert_eq!((text.as_str(), size), ("ok", Some(2)));
        for bad in ["/escape", "/sub/rel", "/../secret", "/sub"] {
            assert!(storage.open_read(bad).is_err(), "{bad} should be refused");
        }
        assert!(storage.open_write("/escape").is_err());
        assert_eq!(std::fs::read(dir.join("secret")).unwrap(), b"secret");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
