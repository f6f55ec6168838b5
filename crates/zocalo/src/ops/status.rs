//! What the console shows of this node's server model at work: the model and its threads or
//! processes, the workers' queue, the descriptors in use against the limit. The model is
//! recorded once at start ([`set_model`]); the rest is read when asked.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::ops::metrics::{self, Counter};

/// Milliseconds since the Unix epoch now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

struct Started {
    model: String,
    /// Event loops (1 for the other models).
    loops: usize,
    at_ms: u64,
}

static STARTED: OnceLock<Started> = OnceLock::new();

/// Records the model (`epoll:2`, `pool:8`, ...) and its number of event loops, at start.
pub fn set_model(model: String, loops: usize) {
    let _ = STARTED.set(Started { model, loops, at_ms: now_ms() });
}

/// The server model at work, as the console draws it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ModelView {
    pub model: String,
    pub loops: usize,
    /// Threads of the process that answers (every model but `process` serves in one).
    pub threads: u64,
    /// Worker threads (event loops' lanes, pool workers), busy ones, jobs waiting.
    pub workers: u64,
    pub busy: u64,
    pub queued: u64,
    /// Descriptors open in the process that answers, and its limit.
    pub fds: u64,
    pub fd_limit: u64,
    pub started_ms: u64,
}

/// The model at work now.
pub fn model_view() -> ModelView {
    let started = STARTED.get();
    ModelView {
        model: started.map_or_else(String::new, |s| s.model.clone()),
        loops: started.map_or(1, |s| s.loops),
        threads: threads(),
        workers: metrics::value(Counter::WorkThreads),
        busy: metrics::value(Counter::WorkBusy),
        queued: metrics::value(Counter::WorkQueued),
        fds: std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64),
        fd_limit: fd_limit(),
        started_ms: started.map_or(0, |s| s.at_ms),
    }
}

fn threads() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

fn fd_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 0;
    }
    limit.rlim_cur
}
