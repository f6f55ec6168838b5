//! Where what happens becomes log lines and metrics: the session's events (logins, changes to
//! the files, commands, storage failures), a connection's life, and every refusal. Both drivers
//! call these, inside the session's span, so each line carries the session id that
//! `zocalo ctl status` shows.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use zocalo_proto::session::{Outcome, TransferKind};
use zocalo_proto::{Event, LoginRefusal, Session};

use crate::ops::hooks::{self, Hooks};
use crate::ops::metrics::{self, Counter};
use crate::ops::recent;

/// A session's way to the hooks: its events become [`hooks::Event`]s for those that want them.
pub struct Emitter {
    pub hooks: Arc<Hooks>,
    pub session: u64,
    /// The client's address (the PROXY header's, behind a balancer).
    pub client: SocketAddr,
}

impl Emitter {
    /// An event of `kind` by `user`, if a hook wants that kind.
    fn event(&self, kind: &'static str, user: &str) -> Option<hooks::Event> {
        self.hooks.wants(kind).then(|| hooks::Event::new(kind, self.session, user, self.client))
    }

    fn login(&self, user: &str, refused: Option<LoginRefusal>) {
        if let Some(mut e) = self.event("login", user) {
            e.result = Some(if refused.is_some() { "refused" } else { "accepted" });
            e.reason = refused.map(|r| r.as_str().to_string());
            self.hooks.emit(e);
        }
    }

    /// A change to the files that succeeded.
    fn file_op(&self, verb: &str, path: &str, from: Option<&str>, user: &str) {
        let kind = match verb {
            "DELE" => "delete",
            "RMD" | "XRMD" => "rmdir",
            "MKD" | "XMKD" => "mkdir",
            "RNTO" => "rename",
            "SITE CHMOD" => "chmod",
            "MFMT" | "MDTM" => "mtime",
            _ => return,
        };
        if let Some(mut e) = self.event(kind, user) {
            e.path = Some(path.to_string());
            e.from = from.map(str::to_string);
            self.hooks.emit(e);
        }
    }

    /// A transfer ended (listings are not events).
    pub fn transfer(
        &self,
        kind: TransferKind,
        path: &str,
        bytes: u64,
        outcome: &Outcome,
        user: &str,
        took: Duration,
    ) {
        if kind.is_listing() {
            return;
        }
        let name = if kind.is_upload() { "upload" } else { "download" };
        if let Some(mut e) = self.event(name, user) {
            e.path = Some(path.to_string());
            e.bytes = Some(bytes);
            e.complete = Some(matches!(outcome, Outcome::Done));
            e.duration_ms = Some(took.as_millis() as u64);
            self.hooks.emit(e);
        }
        let over = matches!(outcome, Outcome::Storage(err)
            if err.kind() == std::io::ErrorKind::QuotaExceeded);
        if let Some(mut e) = self.event("quota-exceeded", user).filter(|_| over) {
            e.path = Some(path.to_string());
            e.bytes = Some(bytes);
            self.hooks.emit(e);
        }
    }

    /// A logged-in session ended.
    pub fn session_end(&self, user: &str, since: Instant, bytes: u64) {
        if let Some(mut e) = self.event("session-end", user) {
            e.bytes = Some(bytes);
            e.duration_ms = Some(since.elapsed().as_millis() as u64);
            self.hooks.emit(e);
        }
    }
}

/// A connection was admitted: counted, given its id and the span every line of the session is
/// logged in, logged. `quiet`: a balancer's health check (every few seconds per node), whose
/// opening and closing are logged at debug only.
pub fn opened(peer: SocketAddr, quiet: bool) -> (u64, tracing::Span) {
    let id = metrics::session_opened();
    let span = tracing::info_span!("session", id, peer = %peer);
    span.in_scope(|| match quiet {
        true => tracing::debug!("health check connection opened"),
        false => tracing::info!("connection opened"),
    });
    (id, span)
}

/// A connection ended (inside its span).
pub fn closed(since: Instant, bytes: u64, quiet: bool) {
    metrics::session_closed();
    let duration_ms = since.elapsed().as_millis() as u64;
    match quiet {
        true => tracing::debug!(duration_ms, bytes, "health check connection closed"),
        false => tracing::info!(duration_ms, bytes, "connection closed"),
    }
}

/// Reports the events the session queued since the last call (to the hooks too, through
/// `emitter`).
pub fn events(session: &mut Session, emitter: Option<&Emitter>) {
    while let Some(event) = session.poll_event() {
        match event {
            Event::Login { user, refused: None } => {
                metrics::inc(Counter::LoginsAccepted);
                recent::record("login", &user, &session.peer().to_string(), "accepted");
                tracing::info!(user, "login accepted");
                if let Some(e) = emitter {
                    e.login(&user, None);
                }
            }
            Event::Login { user, refused: Some(why) } => {
                if let Some(e) = emitter {
                    e.login(&user, Some(why));
                }
                metrics::inc(match why {
                    LoginRefusal::BadCredentials => Counter::LoginsBadCredentials,
                    LoginRefusal::LockedOut => Counter::LoginsLockedOut,
                    LoginRefusal::HomeMissing => Counter::LoginsHomeMissing,
                    LoginRefusal::TlsRequired => Counter::LoginsTlsRequired,
                    LoginRefusal::Unavailable => Counter::LoginsUnavailable,
                    LoginRefusal::Denied(_) => Counter::LoginsDenied,
                });
                tracing::warn!(user, reason = why.as_str(), "login refused");
                let peer = session.peer().to_string();
                recent::record("login-refused", &user, &peer, why.as_str());
            }
            Event::FileOp { verb, path, from, code } => {
                let ok = code < 400;
                metrics::inc(if ok { Counter::FileOpsOk } else { Counter::FileOpsFailed });
                let user = session.user().unwrap_or("");
                if let Some(e) = emitter.filter(|_| ok) {
                    e.file_op(verb, &path, from.as_deref(), user);
                }
                match from {
                    Some(from) => {
                        tracing::info!(command = verb, from, path, code, user, "file operation")
                    }
                    None => tracing::info!(command = verb, path, code, user, "file operation"),
                }
            }
            Event::Command(line) => tracing::debug!(line, "command"),
            Event::StorageError(error) => {
                metrics::inc(Counter::StorageErrors);
                tracing::warn!(error, "storage error");
            }
        }
    }
}

/// Why a connection was refused with 421 before it had a session.
#[derive(Debug, Clone, Copy)]
pub enum Refused {
    MaxConnections,
    MaxPerIp,
    FdSetsize,
    Shutdown,
    PoolFull,
}

/// Counts and logs a refusal.
pub fn refused(cause: Refused, peer: Option<SocketAddr>) {
    let (counter, text) = match cause {
        Refused::MaxConnections => (Counter::RefusedMaxConnections, "too many connections"),
        Refused::MaxPerIp => (Counter::RefusedMaxPerIp, "too many connections from the address"),
        Refused::FdSetsize => (Counter::RefusedFdSetsize, "past select(2)'s FD_SETSIZE"),
        Refused::Shutdown => (Counter::RefusedShutdown, "shutting down"),
        Refused::PoolFull => (Counter::RefusedPoolFull, "the pool and its queue are full"),
    };
    metrics::inc(counter);
    let shown = peer.map(|p| p.to_string()).unwrap_or_default();
    recent::record("refused", "", &shown, text);
    match peer {
        Some(peer) => tracing::info!(%peer, cause = text, "connection refused with 421"),
        None => tracing::info!(cause = text, "connection refused with 421"),
    }
}
