//! Where what happens becomes log lines and metrics: the session's events (logins, changes to
//! the files, commands, storage failures), a connection's life, and every refusal. Both drivers
//! call these, inside the session's span, so each line carries the session id that
//! `zocalo ctl status` shows.

use std::net::SocketAddr;
use std::time::Instant;

use zocalo_proto::{Event, LoginRefusal, Session};

use crate::ops::metrics::{self, Counter};

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

/// Reports the events the session queued since the last call.
pub fn events(session: &mut Session) {
    while let Some(event) = session.poll_event() {
        match event {
            Event::Login { user, refused: None } => {
                metrics::inc(Counter::LoginsAccepted);
                tracing::info!(user, "login accepted");
            }
            Event::Login { user, refused: Some(why) } => {
                metrics::inc(match why {
                    LoginRefusal::BadCredentials => Counter::LoginsBadCredentials,
                    LoginRefusal::LockedOut => Counter::LoginsLockedOut,
                    LoginRefusal::HomeMissing => Counter::LoginsHomeMissing,
                    LoginRefusal::TlsRequired => Counter::LoginsTlsRequired,
                    LoginRefusal::Unavailable => Counter::LoginsUnavailable,
                    LoginRefusal::Denied(_) => Counter::LoginsDenied,
                });
                tracing::warn!(user, reason = why.as_str(), "login refused");
            }
            Event::FileOp { verb, path, from, code } => {
                let ok = code < 400;
                metrics::inc(if ok { Counter::FileOpsOk } else { Counter::FileOpsFailed });
                let user = session.user().unwrap_or("");
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
    match peer {
        Some(peer) => tracing::info!(%peer, cause = text, "connection refused with 421"),
        None => tracing::info!(cause = text, "connection refused with 421"),
    }
}
