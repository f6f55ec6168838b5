//! What a reload (SIGHUP, `zocalo ctl reload`) refreshes, and SIGUSR1's session dump: asked
//! for by the reload thread, the `process` model's accept loop and the admin channel alike.

use std::path::PathBuf;
use std::sync::Arc;

use crate::state::registry::Registry;
use crate::state::users::Users;
use crate::sys::shutdown::Reload;
use crate::sys::tls::Tls;

/// What a reload (SIGHUP, `zocalo ctl reload`) refreshes: the users file, the TLS certificate
/// and key, and the log files (reopened by path, for logrotate); and SIGUSR1's session table.
#[derive(Clone)]
pub struct Reloader {
    pub users: Arc<Users>,
    /// The certificate and key, and where they are read from.
    pub tls: Option<(Tls, PathBuf, PathBuf)>,
    pub sessions: Arc<Registry>,
}

impl Reloader {
    /// Carries out what `reload` (SIGHUP, `ctl reload`) and SIGUSR1 asked for since last time.
    pub fn answer(&self, reload: &Reload) {
        let (reload_asked, dump_asked) = reload.take();
        if reload_asked {
            let _ = self.reload();
        }
        if dump_asked {
            self.dump_sessions();
        }
    }

    /// Reloads each part; a part that fails keeps its old settings and says why, the others go
    /// ahead. Returns the summary (`Err` if anything failed).
    pub fn reload(&self) -> Result<String, String> {
        crate::ops::systemd::notify("RELOADING=1");
        let (done, failed) = self.reload_parts();
        crate::ops::metrics::inc(crate::ops::metrics::Counter::Reloads);
        crate::ops::systemd::notify("READY=1");
        let result = summarize(done, &failed);
        match &result {
            Ok(summary) => tracing::info!("{summary}"),
            Err(e) => tracing::warn!("{e}"),
        }
        result
    }

    /// What a reload would say, checked on this process's own copies: the `process` model's
    /// admin process answers with it while its parent does the reload that counts.
    pub fn check(&self) -> Result<String, String> {
        let (done, failed) = self.reload_parts();
        summarize(done, &failed)
    }

    fn reload_parts(&self) -> (Vec<String>, Vec<String>) {
        let mut done = Vec::new();
        let mut failed = Vec::new();
        match self.users.reload() {
            Ok(_) if !self.users.has_users_file() => {}
            Ok(n) => done.push(format!("{n} accounts from the users file")),
            Err(e) => failed.push(format!("users file: {e}")),
        }
        if let Some((tls, cert, key)) = &self.tls {
            match tls.reload(cert, key) {
                Ok(()) => done.push(String::from("the TLS certificate and key")),
                Err(e) => failed.push(e.to_string()),
            }
        }
        (done, failed)
    }

    /// SIGUSR1: the session table, one log line per session.
    pub fn dump_sessions(&self) {
        let sessions = self.sessions.sessions();
        tracing::info!(sessions = sessions.len(), "session table (SIGUSR1)");
        for s in sessions {
            tracing::info!(
                id = s.id,
                pid = s.pid,
                peer = s.peer,
                user = s.user,
                transfer = s.transfer,
                bytes = s.bytes,
                "session"
            );
        }
    }
}

fn summarize(mut done: Vec<String>, failed: &[String]) -> Result<String, String> {
    done.push(String::from("the log files (reopened)"));
    let summary = format!("reloaded: {}", done.join(", "));
    match failed.is_empty() {
        true => Ok(summary),
        false => {
            Err(format!("{summary}; failed, kept the previous settings: {}", failed.join("; ")))
        }
    }
}
