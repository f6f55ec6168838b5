//! What the server knows across connections, shared by the drivers and the services:
//!
//! - [`users`]: accounts and their storage, from `--user`, the users file and the account
//!   [`sources`] of `[[auth]]` ([`http`], [`ldap`], [`postgres`], each behind the cache of
//!   [`source`]), each account with its [`policy`] and its [`seats`]; [`passwords`]: hashes;
//!   [`hashes`]: a bound on password hashes at once, across forks; [`quota`] and [`checks`]:
//!   an account's storage held to its quota and its uploads to their check;
//! - [`limits`]: connection counts and login lock-outs; [`shared`]: the same across a cluster,
//!   in Redis (with its sync loop);
//! - [`registry`]: the session table; [`reload`]: what SIGHUP and `ctl reload` refresh.

/// The `Storage` methods a wrapper of an account's storage (its quota, its upload checks)
/// passes straight to the storage it wraps, `self.inner`: everything but writing, removing,
/// renaming and the space left, which the wrappers may each keep to themselves.
macro_rules! forward_storage {
    () => {
        fn metadata(&self, path: &str) -> io::Result<Metadata> {
            self.inner.metadata(path)
        }

        fn link_metadata(&self, path: &str) -> io::Result<(Metadata, Option<String>)> {
            self.inner.link_metadata(path)
        }

        fn list(&self, path: &str) -> io::Result<Vec<DirEntry>> {
            self.inner.list(path)
        }

        fn names(&self, path: &str) -> io::Result<Vec<String>> {
            self.inner.names(path)
        }

        fn open_read(&self, path: &str, offset: u64) -> io::Result<Box<dyn FileHandle>> {
            self.inner.open_read(path, offset)
        }

        fn mkdir(&self, path: &str) -> io::Result<()> {
            self.inner.mkdir(path)
        }

        fn rmdir(&self, path: &str) -> io::Result<()> {
            self.inner.rmdir(path)
        }

        fn enter(&self, path: &str) -> io::Result<()> {
            self.inner.enter(path)
        }

        fn set_modified(&self, path: &str, time: SystemTime) -> io::Result<()> {
            self.inner.set_modified(path, time)
        }

        fn set_mode(&self, path: &str, mode: u32) -> io::Result<()> {
            self.inner.set_mode(path, mode)
        }

        fn open_dir(&self, path: &str, stat: bool) -> io::Result<Box<dyn DirStream>> {
            self.inner.open_dir(path, stat)
        }
    };
}

pub mod checks;
pub mod hashes;
pub mod http;
pub mod ldap;
pub mod limits;
pub mod passwords;
pub mod policy;
pub mod postgres;
pub mod quota;
pub mod registry;
pub mod reload;
pub mod seats;
pub mod shared;
pub mod source;
pub mod sources;
pub mod users;
