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

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::state::http::{Http, HttpConfig};
use crate::state::ldap::{Ldap, LdapConfig};
use crate::state::postgres::{PgConfig, Postgres};
use crate::state::source::{Cached, Source};

/// One `[[auth]]` table of the config file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum SourceConfig {
    Http(HttpConfig),
    Ldap(LdapConfig),
    Postgres(PgConfig),
}

/// Opens the sources of the `[[auth]]` tables, each behind its cache.
pub fn open(configs: &[SourceConfig]) -> Result<Vec<Box<dyn Source>>, String> {
    configs
        .iter()
        .map(|c| {
            let (source, cache): (Box<dyn Source>, u64) = match c {
                SourceConfig::Http(h) => (Box::new(Http::new(h)?), h.cache_seconds),
                SourceConfig::Ldap(l) => (Box::new(Ldap::new(l)?), l.cache_seconds),
                SourceConfig::Postgres(p) => (Box::new(Postgres::new(p)?), p.cache_seconds),
            };
            Ok(Box::new(Cached::new(source, Duration::from_secs(cache))) as Box<dyn Source>)
        })
        .collect()
}
