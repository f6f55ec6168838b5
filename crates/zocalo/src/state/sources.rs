//! Account sources beyond the users file: the config file's `[[auth]]` tables, tried in the
//! order written after `--user` and `--users`. The first source that knows a user decides: a
//! wrong password there is a refusal, not a fall-through to the next.
//!
//! - `kind = "ldap"`: a directory ([`crate::state::ldap`]): search, then bind as the user.
//! - `kind = "postgres"`: a table ([`crate::state::postgres`]): a parameterized query.
//! - `kind = "http"`: an external hook (SFTPGo's `external_auth_hook`, Pure-FTPd's
//!   `pure-authd`): each login is POSTed as JSON `{"user", "password", "client", "local",
//!   "tls"}` to `url`; the answer is `{"ok": true, "home": ..., "perm": ..., policy...}`,
//!   `{"ok": false}` (a wrong password), or `{"ok": false, "known": false}` (not this
//!   source's user: the next one is asked). A timeout, an answer other than 2xx, or a
//!   malformed one fails closed: the login gets 421 and a log line names the source and why.
//!
//! A lookup blocks (it is network I/O): the session runs it as login work, inline in the
//! blocking models and on a Login-lane worker in the event loops, never on a loop thread. A
//! positive answer is cached for `cache-seconds` (60 by default) under a salted SHA-256 of
//! the user and password, so a changed password or a disabled account takes effect within
//! that time; refusals are never cached.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zocalo_proto::Login;

use crate::state::ldap::{Ldap, LdapConfig};
use crate::state::policy::Policy;
use crate::state::postgres::{PgConfig, Postgres};

/// One `[[auth]]` table of the config file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum SourceConfig {
    Http(HttpConfig),
    Ldap(LdapConfig),
    Postgres(PgConfig),
}

/// `kind = "http"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct HttpConfig {
    /// Where each login is POSTed (https:// is verified against the system's CA store or
    /// `ca-file`).
    pub url: String,
    /// PEM file of the certificates to trust for `url`.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Seconds the hook has to answer.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
    /// Seconds a positive answer is kept.
    #[serde(default = "default_cache")]
    pub cache_seconds: u64,
}

fn default_timeout() -> u64 {
    5
}

fn default_cache() -> u64 {
    60
}

/// What a source says of one login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Not this source's user: ask the next.
    Unknown,
    /// This source's user, and the password is wrong.
    Refused,
    /// The password is right; the account's policy.
    Found(Policy),
    /// The source could not answer (down, slow, a malformed answer): why, for the log.
    Down(String),
}

/// An account source.
pub trait Source: Send + Sync {
    /// Its name in log lines (`http https://auth.example/login`).
    fn name(&self) -> &str;
    fn lookup(&self, login: &Login<'_>) -> Lookup;
}

/// Opens the sources of the `[[auth]]` tables, each behind its cache.
pub fn open(configs: &[SourceConfig]) -> Result<Vec<Box<dyn Source>>, String> {
    configs
        .iter()
        .map(|c| match c {
            SourceConfig::Http(h) => {
                let ttl = Duration::from_secs(h.cache_seconds);
                Ok(Box::new(Cached::new(Http::new(h)?, ttl)) as Box<dyn Source>)
            }
            SourceConfig::Ldap(l) => {
                let ttl = Duration::from_secs(l.cache_seconds);
                Ok(Box::new(Cached::new(Ldap::new(l)?, ttl)) as Box<dyn Source>)
            }
            SourceConfig::Postgres(p) => {
                let ttl = Duration::from_secs(p.cache_seconds);
                Ok(Box::new(Cached::new(Postgres::new(p)?, ttl)) as Box<dyn Source>)
            }
        })
        .collect()
}

/// The HTTP hook.
pub struct Http {
    name: String,
    url: String,
    agent: ureq::Agent,
}

impl Http {
    pub fn new(config: &HttpConfig) -> Result<Self, String> {
        let roots = match &config.ca_file {
            None => ureq::tls::RootCerts::PlatformVerifier,
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
                let certs = ureq::tls::parse_pem(&pem)
                    .filter_map(|item| match item {
                        Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                        _ => None,
                    })
                    .collect::<Vec<_>>();
                if certs.is_empty() {
                    return Err(format!("{}: no certificate in it", path.display()));
                }
                ureq::tls::RootCerts::Specific(Arc::new(certs))
            }
        };
        let timeout = Some(Duration::from_secs(config.timeout_seconds.max(1)));
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(timeout)
            .tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build())
            .build()
            .into();
        let name = format!("http {}", config.url);
        Ok(Http { name, url: config.url.clone(), agent })
    }
}

/// The hook's answer.
#[derive(Deserialize)]
struct Answer {
    ok: bool,
    #[serde(default = "yes")]
    known: bool,
    #[serde(flatten)]
    fields: HashMap<String, serde_json::Value>,
}

fn yes() -> bool {
    true
}

impl Source for Http {
    fn name(&self) -> &str {
        &self.name
    }

    fn lookup(&self, login: &Login<'_>) -> Lookup {
        let request = serde_json::json!({
            "user": login.user,
            "password": login.password,
            "client": login.client.ip().to_string(),
            "local": login.local.ip().to_string(),
            "tls": login.tls,
        });
        let sent = self
            .agent
            .post(&self.url)
            .header("Content-Type", "application/json")
            .send(request.to_string());
        let mut response = match sent {
            Ok(r) => r,
            Err(e) => return Lookup::Down(e.to_string()),
        };
        let status = response.status();
        if !status.is_success() {
            return Lookup::Down(format!("answered {status}"));
        }
        let body = match response.body_mut().with_config().limit(64 * 1024).read_to_string() {
            Ok(b) => b,
            Err(e) => return Lookup::Down(format!("reading the answer: {e}")),
        };
        let answer: Answer = match serde_json::from_str(&body) {
            Ok(a) => a,
            Err(e) => return Lookup::Down(format!("a malformed answer: {e}")),
        };
        match (answer.ok, answer.known) {
            (false, false) => Lookup::Unknown,
            (false, true) => Lookup::Refused,
            (true, _) => match policy_of(&answer.fields) {
                Ok(policy) => Lookup::Found(policy),
                Err(e) => Lookup::Down(format!("a malformed answer: {e}")),
            },
        }
    }
}

/// The policy fields of a JSON answer; strings, numbers and booleans are all read as text.
fn policy_of(fields: &HashMap<String, serde_json::Value>) -> Result<Policy, String> {
    let mut policy = Policy::default();
    for (key, value) in fields {
        let text = match value {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => continue,
            serde_json::Value::Bool(_) | serde_json::Value::Number(_) => value.to_string(),
            _ => return Err(format!("{key} is not a string, number or boolean")),
        };
        policy.set(key, &text)?;
    }
    Ok(policy)
}

/// A source behind a cache of its positive answers.
pub struct Cached<S> {
    inner: S,
    ttl: Duration,
    /// A random salt of this process, so the cache's digests say nothing outside it.
    salt: [u8; 16],
    entries: Mutex<HashMap<String, Entry>>,
}

/// A cached answer: the digest of the password it was for, the policy, and until when.
type Entry = (Vec<u8>, Policy, Instant);

/// Cached accounts at most; past that the expired ones are dropped, then the cache is cleared.
const CACHE_MAX: usize = 100_000;

impl<S: Source> Cached<S> {
    pub fn new(inner: S, ttl: Duration) -> Self {
        let mut salt = [0u8; 16];
        use argon2::password_hash::rand_core::RngCore;
        argon2::password_hash::rand_core::OsRng.fill_bytes(&mut salt);
        Cached { inner, ttl, salt, entries: Mutex::new(HashMap::new()) }
    }

    fn digest(&self, login: &Login<'_>) -> Vec<u8> {
        let mut h = Sha256::new();
        h.update(self.salt);
        h.update(login.user.as_bytes());
        h.update([0]);
        h.update(login.password.as_bytes());
        h.finalize().to_vec()
    }
}

impl<S: Source> Source for Cached<S> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn lookup(&self, login: &Login<'_>) -> Lookup {
        let digest = self.digest(login);
        let now = Instant::now();
        {
            let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((d, policy, until)) = entries.get(login.user) {
                if *d == digest && *until > now {
                    return Lookup::Found(policy.clone());
                }
            }
        }
        let found = self.inner.lookup(login);
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match &found {
            Lookup::Found(policy) if !self.ttl.is_zero() => {
                if entries.len() >= CACHE_MAX {
                    entries.retain(|_, (_, _, until)| *until > now);
                    if entries.len() >= CACHE_MAX {
                        entries.clear();
                    }
                }
                entries.insert(login.user.to_string(), (digest, policy.clone(), now + self.ttl));
            }
            // A refusal (or an outage) forgets what was known: a changed password or a
            // disabled account is not served from the cache after the source said no.
            Lookup::Refused | Lookup::Unknown => {
                entries.remove(login.user);
            }
            _ => {}
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Counting(AtomicUsize, Lookup);

    impl Source for &'static Counting {
        fn name(&self) -> &str {
            "counting"
        }
        fn lookup(&self, _: &Login<'_>) -> Lookup {
            self.0.fetch_add(1, Ordering::Relaxed);
            self.1.clone()
        }
    }

    fn login<'a>(user: &'a str, password: &'a str) -> Login<'a> {
        let client = "127.0.0.1:5".parse().unwrap();
        Login { user, password, client, local: client, tls: false }
    }

    #[test]
    fn the_cache_keeps_positive_answers_for_the_same_password_only() {
        let inner: &'static Counting =
            Box::leak(Box::new(Counting(AtomicUsize::new(0), Lookup::Found(Policy::default()))));
        let cached = Cached::new(inner, Duration::from_secs(60));
        assert!(matches!(cached.lookup(&login("bob", "pw")), Lookup::Found(_)));
        assert!(matches!(cached.lookup(&login("bob", "pw")), Lookup::Found(_)));
        assert_eq!(inner.0.load(Ordering::Relaxed), 1, "the second came from the cache");
        cached.lookup(&login("bob", "other"));
        assert_eq!(inner.0.load(Ordering::Relaxed), 2, "another password asks the source");
        let refusing: &'static Counting =
            Box::leak(Box::new(Counting(AtomicUsize::new(0), Lookup::Refused)));
        let cached = Cached::new(refusing, Duration::from_secs(60));
        cached.lookup(&login("bob", "pw"));
        cached.lookup(&login("bob", "pw"));
        assert_eq!(refusing.0.load(Ordering::Relaxed), 2, "refusals are not cached");
    }

    #[test]
    fn answers_map_to_policies() {
        let fields: HashMap<String, serde_json::Value> = serde_json::from_str(
            r#"{"home": "bob", "perm": "w", "rate_down": 1024, "tls_required": true}"#,
        )
        .unwrap();
        let p = policy_of(&fields).unwrap();
        assert_eq!(p.home.as_deref(), Some("bob"));
        assert_eq!(p.rate_down, Some(1024));
        assert!(p.tls_required);
        let bad: HashMap<String, serde_json::Value> =
            serde_json::from_str(r#"{"perm": ["rw"]}"#).unwrap();
        assert!(policy_of(&bad).is_err());
    }
}
