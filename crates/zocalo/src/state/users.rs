//! Accounts: anonymous, `--user NAME:PASSWORD` quick-start accounts, and a users file with
//! Argon2 password hashes.
//!
//! The users file has one account per line, `name:argon2-hash:home:perm`, where `perm` is `r`
//! (read-only) or `rw`, and `home` is a directory (relative paths are taken from `--root`).
//! Blank lines and lines starting with `#` are ignored. `zocalo user add` appends to it.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use zocalo_proto::{Account, AuthError, Authenticator, Storage};

use crate::state::limits::LoginGuard;
use crate::storage::local::LocalFs;

/// One line of the users file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileUser {
    pub name: String,
    pub hash: String,
    pub home: PathBuf,
    pub writable: bool,
}

/// Parses a users file's text.
pub fn parse_users(text: &str) -> Result<Vec<FileUser>, String> {
    let mut users = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        users
            .push(parse_line(line).ok_or_else(|| format!("users file line {}: malformed", n + 1))?);
    }
    Ok(users)
}

fn parse_line(line: &str) -> Option<FileUser> {
    let (name, rest) = line.split_once(':')?;
    let (rest, perm) = rest.rsplit_once(':')?;
    let (hash, home) = rest.split_once(':')?;
    let writable = match perm {
        "rw" => true,
        "r" => false,
        _ => return None,
    };
    PasswordHash::new(hash).ok()?;
    let home = PathBuf::from(home);
    (!name.is_empty()).then(|| FileUser { name: name.into(), hash: hash.into(), home, writable })
}

/// Hashes a password with Argon2id and a random salt, in PHC string form.
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Appends a user to the users file, refusing a duplicate name.
pub fn add_user(
    file: &Path,
    name: &str,
    password: &str,
    home: &str,
    writable: bool,
) -> Result<(), String> {
    if name.is_empty() || name.contains(':') || home.contains('\n') {
        return Err("user names may not be empty or contain ':'".into());
    }
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("cannot read the users file {}: {e}", file.display())),
    };
    if parse_users(&text)?.iter().any(|u| u.name == name) {
        return Err(format!("user {name} already exists in {}", file.display()));
    }
    let perm = if writable { "rw" } else { "r" };
    let line = format!("{name}:{}:{home}:{perm}\n", hash_password(password)?);
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let cannot = |e: io::Error| format!("cannot write the users file {}: {e}", file.display());
    // Created readable by its owner only: it holds password hashes.
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(file)
        .map_err(cannot)?;
    if !text.is_empty() && !text.ends_with('\n') {
        f.write_all(b"\n").map_err(cannot)?;
    }
    f.write_all(line.as_bytes()).map_err(cannot)?;
    let home_path = Path::new(home);
    if home_path.is_absolute() && !home_path.is_dir() {
        eprintln!(
            "zocalo: warning: home {home} does not exist yet; {name} cannot log in until it does"
        );
    } else if !home_path.is_absolute() {
        eprintln!(
            "zocalo: note: home {home} is relative to the server's --root (or the bucket's prefix)"
        );
    }
    Ok(())
}

/// The server's [`Authenticator`].
pub struct Users {
    root: PathBuf,
    root_storage: Arc<dyn Storage>,
    anonymous: Option<bool>,
    plain: HashMap<String, String>,
    users_file: Option<PathBuf>,
    file_users: RwLock<HashMap<String, FileUser>>,
    atomic_uploads: bool,
    /// Files in a bucket instead of under `root`; homes are prefixes in it.
    s3: Option<zocalo_s3::S3Storage>,
    guard: Arc<dyn LoginGuard>,
}

/// How accounts are set up; see `zocalo serve --help`.
pub struct UsersConfig {
    pub root: PathBuf,
    /// `None`: no anonymous login; `Some(writable)`.
    pub anonymous: Option<bool>,
    pub plain: Vec<(String, String)>,
    pub users_file: Option<PathBuf>,
    pub atomic_uploads: bool,
    /// Serve this bucket instead of the directory `root`.
    pub s3: Option<zocalo_s3::S3Storage>,
}

impl Users {
    pub fn new(config: UsersConfig, guard: Arc<dyn LoginGuard>) -> io::Result<Self> {
        let root_storage: Arc<dyn Storage> = match &config.s3 {
            Some(s3) => Arc::new(s3.clone()),
            None => Arc::new(LocalFs::open(&config.root, config.atomic_uploads).map_err(|e| {
                io::Error::new(e.kind(), format!("--root {}: {e}", config.root.display()))
            })?),
        };
        let users = Users {
            root: config.root,
            root_storage,
            anonymous: config.anonymous,
            plain: config.plain.into_iter().collect(),
            users_file: config.users_file,
            file_users: RwLock::new(HashMap::new()),
            atomic_uploads: config.atomic_uploads,
            s3: config.s3,
            guard,
        };
        users.reload().map_err(io::Error::other)?;
        Ok(users)
    }

    /// Re-reads the users file; sessions already logged in keep their accounts.
    pub fn reload(&self) -> Result<usize, String> {
        let Some(file) = &self.users_file else {
            return Ok(0);
        };
        let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
        let users = parse_users(&text)?;
        let count = users.len();
        let map = users.into_iter().map(|u| (u.name.clone(), u)).collect();
        *self.file_users.write().unwrap_or_else(|e| e.into_inner()) = map;
        Ok(count)
    }

    /// Whether accounts come from a users file (what a reload re-reads).
    pub fn has_users_file(&self) -> bool {
        self.users_file.is_some()
    }

    /// The storage shared by the anonymous user and `--user` accounts.
    pub fn root_storage(&self) -> Arc<dyn Storage> {
        self.root_storage.clone()
    }

    /// Opens a users-file account's home for one session (closed when the session ends).
    fn home_storage(&self, home: &Path) -> io::Result<Arc<dyn Storage>> {
        if let Some(s3) = &self.s3 {
            // A prefix under the bucket; `..` could name another account's files.
            let home = home.to_str().ok_or(io::ErrorKind::InvalidInput)?;
            if home.split('/').any(|p| p == "..") {
                return Err(io::ErrorKind::InvalidInput.into());
            }
            return Ok(Arc::new(s3.with_home(home)));
        }
        let path = self.root.join(home);
        Ok(Arc::new(LocalFs::open(&path, self.atomic_uploads)?))
    }

    fn check(&self, user: &str, password: &str) -> Result<Account, AuthError> {
        let bad = AuthError::BadCredentials;
        if self.is_anonymous(user) {
            let writable = self.anonymous.ok_or(bad)?;
            return Ok(self.account("anonymous", self.root_storage(), writable, true));
        }
        if let Some(expected) = self.plain.get(user) {
            return constant_time_eq(expected.as_bytes(), password.as_bytes())
                .then(|| self.account(user, self.root_storage(), true, false))
                .ok_or(bad);
        }
        let found = self.file_users.read().unwrap_or_else(|e| e.into_inner()).get(user).cloned();
        if found.is_none() && self.users_file.is_none() {
            return Err(bad);
        }
        let hash = found.as_ref().map_or(DUMMY_HASH, |u| u.hash.as_str());
        let ok = verify_bounded(hash, password)? && found.is_some();
        let user = found.filter(|_| ok).ok_or(bad)?;
        let storage = self.home_storage(&user.home).map_err(|e| {
            tracing::warn!(user = user.name, home = %user.home.display(), "home unusable: {e}");
            AuthError::HomeMissing
        })?;
        Ok(self.account(&user.name, storage, user.writable, false))
    }

    fn account(
        &self,
        name: &str,
        storage: Arc<dyn Storage>,
        writable: bool,
        anonymous: bool,
    ) -> Account {
        Account { name: name.to_string(), storage, writable, anonymous }
    }
}

/// What an unknown user's password is checked against, so that the check takes as long as a
/// known user's (no user enumeration by timing): a fixed hash with [`hash_password`]'s
/// parameters, so nothing is hashed to make it (each of the `process` model's children did).
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$F10srG7+EE4L4leLCQfNdA$To+Z44bt3+RBqEO3PCfKe1N/PP39DFMALyhUkVtW0aQ";

fn verify(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
        .unwrap_or(false)
}

/// [`verify`] within the bound on hashes at once ([`crate::state::hashes`]).
fn verify_bounded(hash: &str, password: &str) -> Result<bool, AuthError> {
    let _permit = crate::state::hashes::acquire().ok_or(AuthError::Unavailable)?;
    Ok(verify(hash, password))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

impl Authenticator for Users {
    fn authenticate(&self, user: &str, password: &str, peer: IpAddr) -> Result<Account, AuthError> {
        if self.guard.is_locked(peer) {
            return Err(AuthError::LockedOut);
        }
        match self.check(user, password) {
            Ok(account) => Ok(account),
            Err(AuthError::BadCredentials) => {
                self.guard.record_failure(peer);
                Err(AuthError::BadCredentials)
            }
            Err(other) => Err(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_file_round_trip() {
        let hash = hash_password("pw").unwrap();
        let text = format!("# comment\n\nbob:{hash}:/srv/bob:rw\neve:{hash}:eve:r\n");
        let users = parse_users(&text).unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(users[0].home, PathBuf::from("/srv/bob"));
        assert!(users[0].writable && !users[1].writable);
        assert!(verify(&users[0].hash, "pw"));
        assert!(verify(DUMMY_HASH, "pw"), "the dummy hash is a real Argon2 hash");
        assert!(!verify(&users[0].hash, "wrong"));
    }

    #[test]
    fn malformed_lines_are_reported() {
        assert!(parse_users("bob:nothash:/x:rw\n").is_err());
        assert!(parse_users("bob\n").is_err());
    }

    #[test]
    fn constant_time_compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
