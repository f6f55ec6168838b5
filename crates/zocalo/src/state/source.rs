//! What every account source answers ([`Lookup`]) through one trait ([`Source`]), and the
//! cache of positive answers every source sits behind ([`Cached`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use zocalo_proto::Login;

use crate::state::policy::Policy;

/// Seconds a source has to answer, unless its table says otherwise.
pub fn default_timeout() -> u64 {
    5
}

/// Seconds a positive answer is kept, unless its table says otherwise.
pub fn default_cache() -> u64 {
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

/// A source behind a cache of its positive answers.
pub struct Cached {
    inner: Box<dyn Source>,
    ttl: Duration,
    /// A random salt of this process, so the cache's digests say nothing outside it.
    salt: [u8; 16],
    entries: Mutex<HashMap<String, Entry>>,
}

/// A cached answer: the digest of the password it was for, the policy, and until when.
type Entry = (Vec<u8>, Policy, Instant);

/// Cached accounts at most; past that the expired ones are dropped, then the cache is cleared.
const CACHE_MAX: usize = 100_000;

impl Cached {
    pub fn new(inner: Box<dyn Source>, ttl: Duration) -> Self {
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

impl Source for Cached {
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
        Login { user, password, client, local: client, tls: false, session: 0 }
    }

    #[test]
    fn the_cache_keeps_positive_answers_for_the_same_password_only() {
        let inner: &'static Counting =
            Box::leak(Box::new(Counting(AtomicUsize::new(0), Lookup::Found(Policy::default()))));
        let cached = Cached::new(Box::new(inner), Duration::from_secs(60));
        assert!(matches!(cached.lookup(&login("bob", "pw")), Lookup::Found(_)));
        assert!(matches!(cached.lookup(&login("bob", "pw")), Lookup::Found(_)));
        assert_eq!(inner.0.load(Ordering::Relaxed), 1, "the second came from the cache");
        cached.lookup(&login("bob", "other"));
        assert_eq!(inner.0.load(Ordering::Relaxed), 2, "another password asks the source");
        let refusing: &'static Counting =
            Box::leak(Box::new(Counting(AtomicUsize::new(0), Lookup::Refused)));
        let cached = Cached::new(Box::new(refusing), Duration::from_secs(60));
        cached.lookup(&login("bob", "pw"));
        cached.lookup(&login("bob", "pw"));
        assert_eq!(refusing.0.load(Ordering::Relaxed), 2, "refusals are not cached");
    }
}
