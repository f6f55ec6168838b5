//! Who may use the console: `[[console-user]]` accounts (an Argon2 hash and a role) signing in
//! through the page, and `[[console-token]]` API tokens for scripts (kept as their SHA-256:
//! a token is 32 random bytes, so a fast hash is enough, and a script's every call costs no
//! Argon2).
//!
//! A sign-in gets a session: a random id in a cookie that is `HttpOnly` (no script reads it),
//! `SameSite=Strict` (no other site's page sends it) and `Secure` under HTTPS, and a CSRF token
//! of its own that every action must carry in an `X-CSRF-Token` header. Failed sign-ins count
//! in the same lock-out table as FTP's failed logins, per client address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::state::limits::LoginGuard;
use crate::state::passwords;

/// What a console user or token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// See every page and the API's GETs.
    View,
    /// Also kick sessions, drain, undrain and reload nodes.
    Admin,
}

/// A `[[console-user]]` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleUser {
    pub name: String,
    /// An Argon2 hash in PHC form (`zocalo console user NAME` makes one).
    pub hash: String,
    pub role: Role,
}

/// A `[[console-token]]` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleToken {
    pub name: String,
    /// The token's SHA-256, in hex (`zocalo console token NAME` makes a token and this).
    pub sha256: String,
    pub role: Role,
}

/// Who is asking, once known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Who {
    pub name: String,
    pub role: Role,
    /// The session's CSRF token; `None` for an API token (no cookie, so no CSRF to fear).
    pub csrf: Option<String>,
}

struct Signed {
    who: Who,
    expires: Instant,
}

/// How long a sign-in lasts.
pub const SESSION_LIFE: Duration = Duration::from_secs(8 * 3600);
/// Sign-ins kept at most (the oldest go first).
const SESSIONS_MAX: usize = 1024;

pub struct Auth {
    users: Vec<ConsoleUser>,
    tokens: Vec<ConsoleToken>,
    sessions: Mutex<HashMap<String, Signed>>,
    guard: Arc<dyn LoginGuard>,
}

/// Why a sign-in failed.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    Bad,
    LockedOut,
    Busy,
}

/// 32 random bytes in hex.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    hex(&bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 of a token, in hex, as `[[console-token]]` keeps it.
pub fn token_digest(token: &str) -> String {
    hex(&sha2::Sha256::digest(token.as_bytes()))
}

impl Auth {
    pub fn new(
        users: Vec<ConsoleUser>,
        tokens: Vec<ConsoleToken>,
        guard: Arc<dyn LoginGuard>,
    ) -> Self {
        Auth { users, tokens, sessions: Mutex::new(HashMap::new()), guard }
    }

    /// Checks a name and password from `ip`; a new session's cookie id and who it is.
    pub fn sign_in(
        &self,
        ip: IpAddr,
        name: &str,
        password: &str,
    ) -> Result<(String, Who), Refusal> {
        if self.guard.is_locked(ip) {
            return Err(Refusal::LockedOut);
        }
        let user = self.users.iter().find(|u| u.name == name);
        // An unknown name costs the same hash as a known one: no enumeration by timing.
        let hash = user.map_or(passwords::DUMMY_HASH, |u| u.hash.as_str());
        let matched = passwords::verify_bounded(hash, password).map_err(|_| Refusal::Busy)?;
        let Some(user) = user.filter(|_| matched) else {
            self.guard.record_failure(ip);
            return Err(Refusal::Bad);
        };
        let who = Who { name: user.name.clone(), role: user.role, csrf: Some(random_token()) };
        let id = random_token();
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= SESSIONS_MAX {
            if let Some(oldest) =
                sessions.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| k.clone())
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(id.clone(), Signed { who: who.clone(), expires: now + SESSION_LIFE });
        Ok((id, who))
    }

    /// The signed-in user of a session cookie.
    pub fn session(&self, id: &str) -> Option<Who> {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.get(id).filter(|s| s.expires > Instant::now()).map(|s| s.who.clone())
    }

    pub fn sign_out(&self, id: &str) {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }

    /// The holder of an API token (`Authorization: Bearer TOKEN`).
    pub fn token(&self, token: &str) -> Option<Who> {
        let digest = token_digest(token);
        self.tokens
            .iter()
            .find(|t| {
                passwords::constant_time_eq(
                    t.sha256.to_ascii_lowercase().as_bytes(),
                    digest.as_bytes(),
                )
            })
            .map(|t| Who { name: format!("token:{}", t.name), role: t.role, csrf: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoGuard(Mutex<u32>);
    impl LoginGuard for NoGuard {
        fn is_locked(&self, _: IpAddr) -> bool {
            *self.0.lock().unwrap() >= 2
        }
        fn record_failure(&self, _: IpAddr) {
            *self.0.lock().unwrap() += 1;
        }
    }

    #[test]
    fn sign_in_sessions_tokens_and_lock_out() {
        crate::state::hashes::init(2).unwrap();
        let hash = passwords::hash_password("secret").unwrap();
        let users = vec![ConsoleUser { name: "ops".into(), hash, role: Role::Admin }];
        let token = random_token();
        let tokens = vec![ConsoleToken {
            name: "ci".into(),
            sha256: token_digest(&token),
            role: Role::View,
        }];
        let auth = Auth::new(users, tokens, Arc::new(NoGuard(Mutex::new(0))));
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let (id, who) = auth.sign_in(ip, "ops", "secret").unwrap();
        assert_eq!(who.role, Role::Admin);
        assert_eq!(auth.session(&id), Some(who.clone()));
        assert_ne!(who.csrf.as_deref(), Some(id.as_str()), "the CSRF token is not the cookie");
        auth.sign_out(&id);
        assert_eq!(auth.session(&id), None);
        assert_eq!(auth.token(&token).map(|w| w.role), Some(Role::View));
        assert_eq!(auth.token("wrong"), None);
        assert_eq!(auth.sign_in(ip, "ops", "nope").unwrap_err(), Refusal::Bad);
        assert_eq!(auth.sign_in(ip, "nobody", "secret").unwrap_err(), Refusal::Bad);
        assert_eq!(auth.sign_in(ip, "ops", "secret").unwrap_err(), Refusal::LockedOut);
    }
}
