//! Accounts: anonymous, `--user NAME:PASSWORD` quick-start accounts, a users file with Argon2
//! password hashes, then the account [`sources`](crate::state::sources) of `[[auth]]`, in
//! that order. Every account but the first two has a [`Policy`].
//!
//! The users file has one account per line, `name:argon2-hash:home:perm[:policy]`, where
//! `perm` is `r` (read-only), `rw`, or `w` (upload only), `home` is a directory (relative paths
//! are taken from `--root`), and the optional policy is `key=value` pairs separated by spaces
//! (`rate_down=1M deny=192.0.2.0/24 tls_required=true`). Blank lines and lines starting with
//! `#` are ignored. `zocalo user add`, `set`, `del` and `list` manage it.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use argon2::password_hash::PasswordHash;
use zocalo_proto::{Account, AuthError, Authenticator, Login, Storage};

use crate::ops::hooks::Hooks;
use crate::state::checks::CheckedStorage;
use crate::state::limits::LoginGuard;
use crate::state::passwords::{constant_time_eq, hash_password, verify_bounded, DUMMY_HASH};
use crate::state::policy::{Perm, Policy};
use crate::state::quota::{QuotaStorage, Tally};
use crate::state::shared::{Shared, SharedSeat};
use crate::state::source::{Lookup, Source};
use crate::storage::local::LocalFs;

/// One line of the users file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileUser {
    pub name: String,
    pub hash: String,
    pub home: PathBuf,
    pub perm: Perm,
    /// The fields beyond home and perm.
    pub policy: Policy,
}

impl FileUser {
    /// The line that reads back as this user.
    pub fn line(&self) -> String {
        let (name, hash, home, perm) = (&self.name, &self.hash, self.home.display(), self.perm);
        match self.policy.extra_pairs() {
            extra if extra.is_empty() => format!("{name}:{hash}:{home}:{}", perm.as_str()),
            extra => format!("{name}:{hash}:{home}:{}:{extra}", perm.as_str()),
        }
    }
}

/// Parses a users file's text.
pub fn parse_users(text: &str) -> Result<Vec<FileUser>, String> {
    let mut users = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        users.push(parse_line(line).map_err(|e| format!("users file line {}: {e}", n + 1))?);
    }
    Ok(users)
}

fn parse_line(line: &str) -> Result<FileUser, String> {
    let malformed = || String::from("malformed (name:hash:home:perm[:policy])");
    let (name, rest) = line.split_once(':').ok_or_else(malformed)?;
    let (hash, rest) = rest.split_once(':').ok_or_else(malformed)?;
    // The home may hold a colon: the perm is the last field, or the one before the policy.
    let (home, perm, extra) = match rest.rsplit_once(':') {
        Some((front, last)) if last.parse::<Perm>().is_ok() => (front, last, ""),
        Some((front, extra)) => match front.rsplit_once(':') {
            Some((home, perm)) => (home, perm, extra),
            None => return Err(malformed()),
        },
        None => return Err(malformed()),
    };
    let perm: Perm = perm.parse()?;
    PasswordHash::new(hash).map_err(|_| String::from("the hash is not a PHC string"))?;
    if name.is_empty() {
        return Err(malformed());
    }
    let mut policy = Policy::default();
    for pair in extra.split_whitespace() {
        set_pair(&mut policy, pair)?;
    }
    let home = PathBuf::from(home);
    Ok(FileUser { name: name.into(), hash: hash.into(), home, perm, policy })
}

/// A change to one account of a users file (`zocalo user add` and `set`).
#[derive(Debug, Default)]
pub struct Change {
    pub password: Option<String>,
    pub home: Option<String>,
    pub perm: Option<Perm>,
    /// Policy fields, `key=value`.
    pub pairs: Vec<String>,
}

/// `zocalo user add|set|del|list`: edits the users file and writes it back whole, through a
/// temporary file renamed over it (readable by its owner only: it holds password hashes), so a
/// server re-reading it (SIGHUP, `ctl reload`) never sees half a file. Returns what to print:
/// the listing (`list`), and a note about the account's home for standard error.
pub fn edit_users(file: &Path, name: &str, edit: Edit) -> Result<(String, String), String> {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound && matches!(edit, Edit::Add(_)) => {
            String::new()
        }
        Err(e) => return Err(format!("cannot read the users file {}: {e}", file.display())),
    };
    let mut users = parse_users(&text)?;
    if let Edit::List = edit {
        return Ok((users.iter().map(|u| listing_line(u) + "\n").collect(), String::new()));
    }
    if name.is_empty() || name.contains([':', '\n']) || name.trim() != name {
        return Err(
            "a user name may not be empty or hold ':', spaces at its ends or a newline".into()
        );
    }
    let at = users.iter().position(|u| u.name == name);
    let note = match (edit, at) {
        (Edit::Add(_), Some(_)) => {
            return Err(format!("user {name} already exists in {}", file.display()))
        }
        (Edit::Add(change), None) => {
            let password = change.password.as_deref().ok_or("a new account needs a password")?;
            let mut user = FileUser {
                name: name.to_string(),
                hash: hash_password(password)?,
                home: PathBuf::from(change.home.as_deref().unwrap_or(".")),
                perm: change.perm.unwrap_or(Perm::ReadWrite),
                policy: Policy::default(),
            };
            apply(&mut user, &Change { password: None, ..change })?;
            let note = home_note(&user);
            users.push(user);
            note
        }
        (Edit::List, _) => unreachable!("answered above"),
        (_, None) => return Err(format!("no user {name} in {}", file.display())),
        (Edit::Set(change), Some(i)) => {
            apply(&mut users[i], &change)?;
            home_note(&users[i])
        }
        (Edit::Del, Some(i)) => {
            users.remove(i);
            String::new()
        }
    };
    let mut out = String::new();
    // Comments and blank lines are kept where they were; account lines are rewritten in order.
    let mut pending = users.iter();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            out.push_str(line);
            out.push('\n');
        } else if let Some(u) = pending.next() {
            out.push_str(&u.line());
            out.push('\n');
        }
    }
    for u in pending {
        out.push_str(&u.line());
        out.push('\n');
    }
    write_private(file, &out).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    Ok((String::new(), note))
}

/// What `edit_users` does to the named account.
#[derive(Debug)]
pub enum Edit {
    Add(Change),
    Set(Change),
    Del,
    List,
}

fn apply(user: &mut FileUser, change: &Change) -> Result<(), String> {
    if let Some(password) = &change.password {
        user.hash = hash_password(password)?;
    }
    if let Some(home) = &change.home {
        if home.contains('\n') {
            return Err("a home may not hold a newline".into());
        }
        user.home = PathBuf::from(home);
    }
    if let Some(perm) = change.perm {
        user.perm = perm;
    }
    for pair in &change.pairs {
        set_pair(&mut user.policy, pair)?;
    }
    Ok(())
}

/// One `key=value` policy pair of a users-file line (or of `zocalo user set`, which writes
/// one): home and perm are fields of their own, and a value holds no space (pairs are
/// separated by spaces; lists are comma-separated).
fn set_pair(policy: &mut Policy, pair: &str) -> Result<(), String> {
    let (key, value) = pair.split_once('=').ok_or_else(|| format!("{pair:?} is not key=value"))?;
    if matches!(key, "home" | "perm") {
        return Err(format!("{key} is a field of its own (--{key}), not a policy pair"));
    }
    if value.contains(char::is_whitespace) {
        return Err(format!("{key}: a value may not hold spaces (lists are comma-separated)"));
    }
    policy.set(key, value)
}

/// `user list`: a line per account, without its hash.
fn listing_line(u: &FileUser) -> String {
    let extra = u.policy.extra_pairs();
    let sep = if extra.is_empty() { "" } else { " " };
    format!("{} home={} perm={}{sep}{extra}", u.name, u.home.display(), u.perm.as_str())
}

fn home_note(u: &FileUser) -> String {
    let home = &u.home;
    if home.is_absolute() && !home.is_dir() {
        format!(
            "warning: home {} does not exist yet; {} cannot log in until it does\n",
            home.display(),
            u.name
        )
    } else if !home.is_absolute() {
        format!(
            "note: home {} is relative to the server's --root (or the bucket's prefix)\n",
            home.display()
        )
    } else {
        String::new()
    }
}

fn write_private(file: &Path, text: &str) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("users");
    let tmp = file.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let mut f = std::fs::OpenOptions::new().create_new(true).write(true).mode(0o600).open(&tmp)?;
    let written = f.write_all(text.as_bytes()).and_then(|()| f.sync_all());
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, file)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
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
    /// The `[[auth]]` sources, in order.
    sources: Vec<Box<dyn Source>>,
    /// Where the accounts with a quota are tallied.
    quota_tally: Option<Tally>,
    shared: Option<Arc<Shared>>,
    /// Homes on S3 known to exist (made at an account's first login).
    s3_homes: Mutex<HashSet<String>>,
    /// Hooks with an upload check.
    checks: Option<Arc<Hooks>>,
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
    pub sources: Vec<Box<dyn Source>>,
    pub quota_file: Option<PathBuf>,
    /// `--shared-state`: sessions per account and quota tallies counted over every node.
    pub shared: Option<Arc<Shared>>,
    /// The `[[hook]]` tables: with an upload check, every writable account's uploads wait
    /// for it.
    pub hooks: Option<Arc<Hooks>>,
}

impl Users {
    /// The failed-login lock-outs (the web console's sign-ins count there too).
    pub fn guard(&self) -> Arc<dyn LoginGuard> {
        self.guard.clone()
    }

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
            sources: config.sources,
            quota_tally: match &config.shared {
                Some(shared) => Some(Tally::Shared(shared.clone())),
                None => config.quota_file.map(Tally::File),
            },
            shared: config.shared,
            s3_homes: Mutex::new(HashSet::new()),
            checks: config.hooks.filter(|h| h.checks_uploads()),
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
    fn home_storage(&self, home: &Path, atomic: bool) -> io::Result<Arc<dyn Storage>> {
        if let Some(s3) = &self.s3 {
            // A prefix under the bucket; `..` could name another account's files.
            let home = home.to_str().ok_or(io::ErrorKind::InvalidInput)?;
            if home.split('/').any(|p| p == "..") {
                return Err(io::ErrorKind::InvalidInput.into());
            }
            let known = self.s3_homes.lock().unwrap_or_else(|e| e.into_inner()).contains(home);
            if !known {
                s3.make_home(home)?;
                self.s3_homes.lock().unwrap_or_else(|e| e.into_inner()).insert(home.to_string());
            }
            return Ok(Arc::new(s3.with_home(home)));
        }
        let path = self.root.join(home);
        Ok(Arc::new(LocalFs::open(&path, self.atomic_uploads || atomic)?))
    }

    /// `zocalo ctl quota USER [--recount]`: what the tally says of `user`; with `recount`,
    /// the tally counted again from storage (now for a users-file account, at the next login
    /// for an account of another source, whose home is known only then).
    pub fn quota(&self, user: &str, recount: bool) -> Result<String, String> {
        let tally = self.quota_tally.as_ref().ok_or("no quota-file (and no --shared-state)")?;
        let found = self.file_users.read().unwrap_or_else(|e| e.into_inner()).get(user).cloned();
        if recount {
            let Some(found) = &found else {
                tally.clear(user).map_err(|e| e.to_string())?;
                return Ok(format!("{user}: counted again at its next login\n"));
            };
            let storage = self.home_storage(&found.home, true).map_err(|e| e.to_string())?;
            let used = crate::state::quota::count(storage.as_ref()).map_err(|e| e.to_string())?;
            tally.set(user, used).map_err(|e| e.to_string())?;
        }
        let policy = found.map(|f| f.policy.quota).unwrap_or_default();
        let limit = |n: Option<u64>| n.map_or("-".to_string(), |n| n.to_string());
        match tally.get(user).map_err(|e| e.to_string())? {
            Some((bytes, files)) => Ok(format!(
                "{user}: {bytes} bytes of {}, {files} files of {}\n",
                limit(policy.bytes),
                limit(policy.files)
            )),
            None => Ok(format!("{user}: not counted yet (no login since the tally began)\n")),
        }
    }

    fn check(&self, login: &Login<'_>) -> Result<Account, AuthError> {
        let (user, password) = (login.user, login.password);
        let bad = AuthError::BadCredentials;
        if self.is_anonymous(user) {
            let writable = self.anonymous.ok_or(bad)?;
            return Ok(Account::new("anonymous", self.root_storage(), writable, true));
        }
        if let Some(expected) = self.plain.get(user) {
            return constant_time_eq(expected.as_bytes(), password.as_bytes())
                .then(|| Account::new(user, self.root_storage(), true, false))
                .ok_or(bad);
        }
        let found = self.file_users.read().unwrap_or_else(|e| e.into_inner()).get(user).cloned();
        if let Some(found) = found {
            if !verify_bounded(&found.hash, password)? {
                return Err(bad);
            }
            let home = found.home.to_string_lossy().into_owned();
            return self.open_account(login, &home, found.perm, &found.policy);
        }
        for source in &self.sources {
            match source.lookup(login) {
                Lookup::Unknown => continue,
                Lookup::Refused => return Err(bad),
                Lookup::Found(policy) => {
                    let home = policy.home.clone().unwrap_or_else(|| ".".into());
                    let perm = policy.perm.unwrap_or(Perm::Read);
                    return self.open_account(login, &home, perm, &policy);
                }
                Lookup::Down(why) => {
                    tracing::warn!(source = source.name(), user, "account source failed: {why}");
                    return Err(AuthError::Unavailable);
                }
            }
        }
        if self.users_file.is_some() {
            // As long as a known user's check: no user enumeration by timing.
            verify_bounded(DUMMY_HASH, password)?;
        }
        Err(bad)
    }

    /// The account of a user whose password was right: its policy checked, its home opened.
    fn open_account(
        &self,
        login: &Login<'_>,
        home: &str,
        perm: Perm,
        policy: &Policy,
    ) -> Result<Account, AuthError> {
        policy.check(login).map_err(AuthError::Denied)?;
        let seat = match policy.max_sessions {
            Some(max) => Some(self.take_seat(login.user, max)?),
            None => None,
        };
        // An account with a quota uploads to a temporary name, so an upload stopped at the
        // quota replaces nothing.
        let quota = policy.quota;
        let storage = self.home_storage(Path::new(home), quota.any()).map_err(|e| {
            tracing::warn!(user = login.user, home, "home unusable: {e}");
            AuthError::HomeMissing
        })?;
        let storage = match (quota.any(), &self.quota_tally) {
            (false, _) => storage,
            (true, None) => {
                tracing::warn!(user = login.user, "an account with a quota needs quota-file");
                return Err(AuthError::Unavailable);
            }
            (true, Some(tally)) => {
                Arc::new(QuotaStorage::new(storage, login.user, quota, tally.clone()))
            }
        };
        let mut account = Account::new(login.user, storage, perm.writable(), false);
        account.readable = perm.readable();
        (account.rate_up, account.rate_down) = (policy.rate_up, policy.rate_down);
        account.seat = seat.map(|s| Arc::new(s) as Arc<dyn Send + Sync>);
        Ok(account)
    }

    /// A seat among `user`'s `max` sessions at once: on this node, and with `--shared-state`
    /// over every node (this node's count decides alone while Redis does not answer).
    fn take_seat(&self, user: &str, max: u32) -> Result<Seats, AuthError> {
        let full = AuthError::Denied(zocalo_proto::Denial::TooManySessions);
        let local = crate::state::seats::take(user, max).ok_or(full)?;
        let cluster = match &self.shared {
            Some(shared) => match shared.take_seat(user, max) {
                Some(None) => return Err(full),
                Some(seat) => seat,
                None => None,
            },
            None => None,
        };
        Ok(Seats { _local: local, _cluster: cluster })
    }
}

/// A session's seats, given back when the account is dropped.
#[derive(Debug)]
struct Seats {
    _local: crate::state::seats::Seat,
    _cluster: Option<SharedSeat>,
}

impl Authenticator for Users {
    /// The anonymous account and `--user` accounts are checked in memory (a constant-time
    /// compare, the lock-out table); file accounts hash, sources ask the network.
    fn answers_at_once(&self, user: &str) -> bool {
        self.is_anonymous(user) || self.plain.contains_key(user)
    }

    fn authenticate(&self, login: &Login<'_>) -> Result<Account, AuthError> {
        let peer = login.client.ip();
        if self.guard.is_locked(peer) {
            return Err(AuthError::LockedOut);
        }
        match self.check(login) {
            Ok(mut account) => {
                if let Some(hooks) = self.checks.as_ref().filter(|_| account.writable) {
                    let (user, client, session) = (&account.name, login.client, login.session);
                    let held =
                        CheckedStorage::new(account.storage, hooks.clone(), user, client, session);
                    account.storage = Arc::new(held);
                }
                Ok(account)
            }
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
    use crate::state::passwords::verify;

    #[test]
    fn users_file_round_trip() {
        let hash = hash_password("pw").unwrap();
        let text = format!("# comment\n\nbob:{hash}:/srv/bob:rw\neve:{hash}:eve:r\n");
        let users = parse_users(&text).unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(users[0].home, PathBuf::from("/srv/bob"));
        assert!(users[0].perm.writable() && !users[1].perm.writable());
        assert!(verify(&users[0].hash, "pw"));
        assert!(verify(DUMMY_HASH, "pw"), "the dummy hash is a real Argon2 hash");
        assert!(!verify(&users[0].hash, "wrong"));
    }

    #[test]
    fn malformed_lines_are_reported() {
        assert!(parse_users("bob:nothash:/x:rw\n").is_err());
        assert!(parse_users("bob\n").is_err());
        let hash = hash_password("pw").unwrap();
        let e = parse_users(&format!("bob:{hash}:h:rw:quota_bytes=lots\n")).unwrap_err();
        assert!(e.contains("line 1") && e.contains("not a size"), "{e}");
        assert!(parse_users(&format!("bob:{hash}:h:rw:colour=red\n")).is_err());
    }

    #[test]
    fn policy_pairs_and_colons_in_homes() {
        let hash = hash_password("pw").unwrap();
        let text =
            format!("bob:{hash}:/srv/a:b:w:rate_down=1M deny=192.0.2.0/24\neve:{hash}:c:d:r\n");
        let users = parse_users(&text).unwrap();
        assert_eq!(users[0].home, PathBuf::from("/srv/a:b"));
        assert_eq!(users[0].perm, Perm::Write);
        assert_eq!(users[0].policy.rate_down, Some(1 << 20));
        assert_eq!(users[1].home, PathBuf::from("c:d"));
        assert_eq!(parse_users(&(users[0].line() + "\n")).unwrap()[0], users[0]);
    }

    #[test]
    fn the_users_file_is_edited_in_place() {
        let dir = std::env::temp_dir().join(format!("zocalo-users-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("users");
        std::fs::write(&file, "# accounts\n").unwrap();
        let add = |pw: &str| Change { password: Some(pw.into()), ..Default::default() };
        edit_users(&file, "bob", Edit::Add(add("one"))).unwrap();
        edit_users(&file, "eve", Edit::Add(add("two"))).unwrap();
        assert!(edit_users(&file, "bob", Edit::Add(add("x"))).is_err(), "no duplicates");
        let pairs = vec!["disabled=true".to_string(), "rate_up=2K".to_string()];
        let change = Change { perm: Some(Perm::Read), pairs, ..Default::default() };
        edit_users(&file, "bob", Edit::Set(change)).unwrap();
        let (list, _) = edit_users(&file, "", Edit::List).unwrap();
        assert_eq!(list, "bob home=. perm=r rate_up=2048 disabled=true\neve home=. perm=rw\n");
        edit_users(&file, "eve", Edit::Del).unwrap();
        assert!(edit_users(&file, "eve", Edit::Del).is_err());
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.starts_with("# accounts\nbob:$argon2id$"), "{text}");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
