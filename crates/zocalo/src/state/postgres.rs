//! `kind = "postgres"`: accounts from a PostgreSQL table, through a parameterized query the
//! site writes (`$1` is the user name, never spliced into the text, so a name is never SQL).
//! The query returns at most one row with named columns: `password` (an Argon2 PHC string, or
//! the `$6$` SHA-512 and `$2b$` bcrypt crypt(3) hashes existing schemas hold) and the policy
//! fields (`home`, `perm`, `rate_down`, ...: text, booleans and integers are all read as text).
//! No row: not this source's user. A NULL column is the default.
//!
//! Connections are pooled (`pool-size`, 4 by default). Each lookup runs on a thread of its own
//! and is waited for at most `timeout-seconds`: the `postgres` crate's blocking client cannot
//! bound a query against a server that stalls, so a stalled lookup is given up (the login gets
//! 421) and its connection with it, and at most `pool-size` lookups are ever out at once, so a
//! stalled database costs at most that many threads. Like `ldap3`, `postgres` runs a Tokio
//! runtime inside its client; it only ever runs on those lookup threads.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use zocalo_proto::Login;

use crate::state::policy::Policy;
use crate::state::source::{Lookup, Source};

/// `kind = "postgres"`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PgConfig {
    /// `postgresql://USER@HOST:PORT/DATABASE` (a password in it is taken, but never logged;
    /// `password-file` is better).
    pub url: String,
    /// A file holding the database password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The query: `$1` is the user name; it returns `password` and the policy columns.
    pub query: String,
    #[serde(default = "default_pool")]
    pub pool_size: usize,
    #[serde(default = "super::source::default_timeout")]
    pub timeout_seconds: u64,
    #[serde(default = "super::source::default_cache")]
    pub cache_seconds: u64,
}

fn default_pool() -> usize {
    4
}

/// The database source.
pub struct Postgres {
    name: String,
    config: postgres::Config,
    query: String,
    timeout: Duration,
    pool_size: usize,
    idle: Arc<Mutex<Vec<postgres::Client>>>,
    out: Arc<AtomicUsize>,
}

impl Postgres {
    pub fn new(c: &PgConfig) -> Result<Self, String> {
        let mut config: postgres::Config =
            c.url.parse().map_err(|e| format!("postgres url: {e}"))?;
        if let Some(path) = &c.password_file {
            let pw =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            config.password(pw.trim_end_matches(['\r', '\n']));
        }
        if !c.query.contains("$1") {
            return Err("the postgres query must take the user name as $1".into());
        }
        let timeout = Duration::from_secs(c.timeout_seconds.max(1));
        config
            .connect_timeout(timeout)
            .keepalives(true)
            .tcp_user_timeout(timeout)
            .options(&format!("-c statement_timeout={}", timeout.as_millis()));
        // Where it connects, for log lines: never the password.
        let host = match config.get_hosts().first() {
            Some(postgres::config::Host::Tcp(h)) => h.clone(),
            Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => String::from("localhost"),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let user = config.get_user().unwrap_or("");
        let shown =
            format!("postgresql://{user}@{host}:{port}/{}", config.get_dbname().unwrap_or(""));
        Ok(Postgres {
            name: format!("postgres {shown}"),
            config,
            query: c.query.clone(),
            timeout,
            pool_size: c.pool_size.max(1),
            idle: Arc::new(Mutex::new(Vec::new())),
            out: Arc::new(AtomicUsize::new(0)),
        })
    }
}

/// What one row said: its password hash and its policy columns as text.
type Row = Option<(String, Vec<(String, String)>)>;

impl Source for Postgres {
    fn name(&self) -> &str {
        &self.name
    }

    fn lookup(&self, login: &Login<'_>) -> Lookup {
        if self.out.fetch_add(1, Ordering::AcqRel) >= self.pool_size {
            self.out.fetch_sub(1, Ordering::AcqRel);
            return Lookup::Down(format!("all {} connections are busy", self.pool_size));
        }
        let (tx, rx) = mpsc::channel();
        let (config, query, user) =
            (self.config.clone(), self.query.clone(), login.user.to_string());
        let (idle, out) = (self.idle.clone(), self.out.clone());
        let spawned = std::thread::Builder::new().name("zocalo-postgres".into()).spawn(move || {
            let taken = idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let client = match taken {
                Some(c) if !c.is_closed() => Ok(c),
                _ => config.connect(postgres::NoTls),
            };
            let result = client.map_err(|e| e.to_string()).and_then(|mut client| {
                let row = fetch(&mut client, &query, &user);
                if !client.is_closed() {
                    idle.lock().unwrap_or_else(|e| e.into_inner()).push(client);
                }
                row
            });
            out.fetch_sub(1, Ordering::AcqRel);
            let _ = tx.send(result);
        });
        if let Err(e) = spawned {
            self.out.fetch_sub(1, Ordering::AcqRel);
            return Lookup::Down(format!("cannot start a lookup: {e}"));
        }
        let row = match rx.recv_timeout(self.timeout) {
            Ok(Ok(row)) => row,
            Ok(Err(e)) => return Lookup::Down(e),
            Err(_) => return Lookup::Down(format!("no answer within {:?}", self.timeout)),
        };
        let Some((hash, columns)) = row else {
            return Lookup::Unknown;
        };
        match crate::state::passwords::check_password(&hash, login.password) {
            Ok(true) => {}
            Ok(false) => return Lookup::Refused,
            Err(e) => return Lookup::Down(e),
        }
        let mut policy = Policy::default();
        for (column, value) in columns {
            if let Err(e) = policy.set(&column, &value) {
                return Lookup::Down(format!("column {column}: {e}"));
            }
        }
        Lookup::Found(policy)
    }
}

/// Runs the query for `user`: its row's password and the other columns as text.
fn fetch(client: &mut postgres::Client, query: &str, user: &str) -> Result<Row, String> {
    let Some(row) = client.query_opt(query, &[&user]).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let mut hash = None;
    let mut columns = Vec::new();
    for (i, column) in row.columns().iter().enumerate() {
        let text = column_text(&row, i).map_err(|e| format!("column {}: {e}", column.name()))?;
        match (column.name(), text) {
            ("password", Some(t)) => hash = Some(t),
            (_, None) => {}
            (name, Some(t)) => columns.push((name.to_string(), t)),
        }
    }
    let hash = hash.ok_or("the query returned no password column (or a NULL one)")?;
    Ok(Some((hash, columns)))
}

/// A column as text: strings, booleans and integers; NULL is `None`.
fn column_text(row: &postgres::Row, i: usize) -> Result<Option<String>, String> {
    use postgres::types::Type;
    let ty = row.columns()[i].type_().clone();
    let text = match ty {
        Type::BOOL => row.try_get::<_, Option<bool>>(i).map(|v| v.map(|b| b.to_string())),
        Type::INT2 => row.try_get::<_, Option<i16>>(i).map(|v| v.map(|n| n.to_string())),
        Type::INT4 => row.try_get::<_, Option<i32>>(i).map(|v| v.map(|n| n.to_string())),
        Type::INT8 => row.try_get::<_, Option<i64>>(i).map(|v| v.map(|n| n.to_string())),
        _ => row.try_get::<_, Option<String>>(i),
    };
    text.map_err(|e| e.to_string())
}
