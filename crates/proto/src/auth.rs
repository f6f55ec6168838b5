//! Authentication, in two steps as libunftp does it: the session hands over the credentials
//! with the peer's address, the provider answers with an [`Account`] or a refusal.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use crate::storage::Storage;

/// A logged-in user: a name for logs, the storage rooted at their home, and their permission.
#[derive(Clone)]
pub struct Account {
    pub name: String,
    pub storage: Arc<dyn Storage>,
    pub writable: bool,
    pub anonymous: bool,
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Account")
            .field("name", &self.name)
            .field("writable", &self.writable)
            .field("anonymous", &self.anonymous)
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
}

/// Checks credentials. Implementations must take the same time for unknown users as for wrong
/// passwords, so that timing does not enumerate users.
pub trait Authenticator: Send + Sync {
    fn authenticate(&self, user: &str, password: &str, peer: IpAddr) -> Result<Account, AuthError>;

    /// Whether `user` names the anonymous account (only changes the 331 text).
    fn is_anonymous(&self, user: &str) -> bool {
        user.eq_ignore_ascii_case("anonymous") || user.eq_ignore_ascii_case("ftp")
    }
}
