//! Authentication, in two steps as libunftp does it: the session hands over the credentials
//! with the peer's address, the provider answers with an [`Account`] or a refusal.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::storage::Storage;

/// A logged-in user: a name for logs, the storage rooted at their home, their permission,
/// and the limits of their account.
#[derive(Clone)]
pub struct Account {
    pub name: String,
    pub storage: Arc<dyn Storage>,
    pub writable: bool,
    /// False for an upload-only drop box (`perm = "w"`): no listing, no download.
    pub readable: bool,
    pub anonymous: bool,
    /// Bytes per second this account's downloads may take (`None`: the server's limit).
    pub rate_down: Option<u64>,
    /// Bytes per second for its uploads.
    pub rate_up: Option<u64>,
    /// Held as long as the session is logged in as this account (a per-user session count
    /// gives its place back when it is dropped).
    pub seat: Option<Arc<dyn Send + Sync>>,
}

impl Account {
    /// An account that may read, with no limits of its own.
    pub fn new(name: &str, storage: Arc<dyn Storage>, writable: bool, anonymous: bool) -> Self {
        Account {
            name: name.to_string(),
            storage,
            writable,
            readable: true,
            anonymous,
            rate_down: None,
            rate_up: None,
            seat: None,
        }
    }
}

/// One login attempt, as the session hands it over.
#[derive(Debug, Clone)]
pub struct Login<'a> {
    pub user: &'a str,
    pub password: &'a str,
    /// The client's address (a trusted balancer's PROXY header may have given it).
    pub client: SocketAddr,
    /// The server's address the client connected to.
    pub local: SocketAddr,
    /// The control connection is protected by TLS.
    pub tls: bool,
    /// The driver's id of the session (0 when it gave none).
    pub session: u64,
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Account")
            .field("name", &self.name)
            .field("writable", &self.writable)
            .field("readable", &self.readable)
            .field("anonymous", &self.anonymous)
            .field("rate_down", &self.rate_down)
            .field("rate_up", &self.rate_up)
            .finish()
    }
}

/// Why a login was refused. The client is told the same thing in every case (530).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    /// Unknown user or wrong password: the two are never told apart.
    BadCredentials,
    /// Too many failures from this address; try later.
    LockedOut,
    /// The password was right but the account's home cannot be opened.
    HomeMissing,
    /// The credentials could not be checked now (the server is too busy, or an account
    /// source is down): answered 421, and never counted as a failed login.
    Unavailable,
    /// The account's policy refuses this login (the client is told only 530).
    Denied(Denial),
}

/// Why an account's policy refused a login with the right credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    Disabled,
    AddressNotAllowed,
    /// The account needs TLS and the control connection is clear.
    TlsRequired,
    /// The account has as many sessions as it may.
    TooManySessions,
}

impl Denial {
    pub fn as_str(self) -> &'static str {
        match self {
            Denial::Disabled => "account disabled",
            Denial::AddressNotAllowed => "address not allowed",
            Denial::TlsRequired => "TLS required for this account",
            Denial::TooManySessions => "too many sessions for this account",
        }
    }
}

/// Checks credentials. Implementations must take the same time for unknown users as for wrong
/// passwords, so that timing does not enumerate users.
pub trait Authenticator: Send + Sync {
    fn authenticate(&self, login: &Login<'_>) -> Result<Account, AuthError>;

    /// Whether checking `user` needs no I/O and no costly hash (an in-memory account), so that
    /// an event loop may check it on its own thread instead of a worker's.
    fn answers_at_once(&self, _user: &str) -> bool {
        false
    }

    /// Whether `user` names the anonymous account (only changes the 331 text).
    fn is_anonymous(&self, user: &str) -> bool {
        user.eq_ignore_ascii_case("anonymous") || user.eq_ignore_ascii_case("ftp")
    }
}
