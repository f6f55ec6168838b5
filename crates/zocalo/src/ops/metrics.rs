//! What the server counts, rendered in the Prometheus text format (the HTTP side that serves
//! it is [`crate::services::metrics_http`]).
//!
//! Every counter is an atomic in one anonymous shared mapping made before the first fork, so
//! the `process` model's children count into the same table the metrics endpoint reads (as the
//! session table and the lock-out table do). Counting is a relaxed atomic add wherever the
//! thing happens; before [`init`] (the client, unit tests) it does nothing.

use std::fmt::Write as _;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use zocalo_proto::session::TransferKind;

/// One counter (or gauge) of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Counter {
    /// Also the source of session ids: unique across the `process` model's children.
    SessionsTotal,
    SessionsOpen,
    LoginsAccepted,
    LoginsBadCredentials,
    LoginsLockedOut,
    LoginsHomeMissing,
    LoginsTlsRequired,
    LoginsUnavailable,
    LoginsDenied,
    LockOuts,
    RefusedMaxConnections,
    RefusedMaxPerIp,
    RefusedDescriptors,
    RefusedFdSetsize,
    RefusedShutdown,
    RefusedPoolFull,
    BytesSent,
    BytesReceived,
    TlsHandshakes,
    TlsFailures,
    /// Handshake steps an event loop put off to its next turn (its turn's budget was spent).
    TlsHandshakesDeferred,
    StorageErrors,
    FileOpsOk,
    FileOpsFailed,
    TftpReadOk,
    TftpReadFailed,
    TftpWriteOk,
    TftpWriteFailed,
    /// TFTP requests refused (busy, too many from an address, a file that cannot be opened).
    TftpRefused,
    /// Connections from a trusted balancer closed for a bad or missing PROXY header.
    ProxyRefused,
    /// Redis calls of `--shared-state` that failed (the node then uses its local limits).
    SharedStateErrors,
    /// 1 while the node drains (`ctl drain`): the agent tells the balancer `drain`.
    Draining,
    /// Hook runs that failed (an exit status, an HTTP error, a timeout, no answer).
    HooksFailed,
    /// Events dropped because their hook queue was full.
    HooksDropped,
    /// Uploads a check refused.
    UploadsRefused,
    /// Jobs waiting for a worker (the event loops' lanes, the pool's queue): a gauge.
    WorkQueued,
    /// Workers running a job (or, in the pool model, serving a session): a gauge.
    WorkBusy,
    /// Worker threads started (event loops' lanes, the pool's workers).
    WorkThreads,
    /// Reloads done; also the generation the reopening files compare (see `logs`).
    Reloads,
}

const COUNTERS: usize = Counter::Reloads as usize + 1;

/// Transfers are counted by kind and result: two slots per [`TransferKind`].
const TRANSFERS: usize = COUNTERS;

/// Histogram bounds in seconds, for transfers and for listings.
const BUCKETS: [f64; 12] =
    [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 3600.0];
/// Each histogram: one slot per bucket, then the sum in microseconds, then the count.
const HISTOGRAM: usize = BUCKETS.len() + 2;
const TRANSFER_SECONDS: usize = TRANSFERS + TransferKind::ALL.len() * 2;
const LISTING_SECONDS: usize = TRANSFER_SECONDS + HISTOGRAM;
const HOOK_SECONDS: usize = LISTING_SECONDS + HISTOGRAM;
const SLOTS: usize = HOOK_SECONDS + HISTOGRAM;

static TABLE: OnceLock<&'static [AtomicU64]> = OnceLock::new();
static NODE: OnceLock<String> = OnceLock::new();

/// Maps the table (before any fork) and names the node the metrics are labelled with.
pub fn init(node: &str) -> io::Result<()> {
    let _ = NODE.set(node.to_string());
    if TABLE.get().is_some() {
        return Ok(());
    }
    let ptr = crate::ops::shm::map_zeroed(SLOTS * std::mem::size_of::<AtomicU64>())?;
    // SAFETY: the mapping is zeroed (a valid AtomicU64 each), aligned to a page, never unmapped,
    // and only ever accessed through these atomics.
    let table = unsafe { std::slice::from_raw_parts(ptr.cast::<AtomicU64>(), SLOTS) };
    let _ = TABLE.set(table);
    Ok(())
}

fn slot(index: usize) -> Option<&'static AtomicU64> {
    TABLE.get().map(|t| &t[index])
}

fn bump(index: usize, n: u64) {
    if let Some(s) = slot(index) {
        s.fetch_add(n, Ordering::Relaxed);
    }
}

pub fn add(counter: Counter, n: u64) {
    bump(counter as usize, n);
}

pub fn inc(counter: Counter) {
    add(counter, 1);
}

pub fn dec(counter: Counter) {
    if let Some(s) = slot(counter as usize) {
        s.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Starts draining (`ctl drain`): the agent answers `drain` from now on, in every process.
pub fn start_draining() {
    if let Some(s) = slot(Counter::Draining as usize) {
        s.store(1, Ordering::Relaxed);
    }
}

/// Stops draining (`ctl undrain`).
pub fn stop_draining() {
    if let Some(s) = slot(Counter::Draining as usize) {
        s.store(0, Ordering::Relaxed);
    }
}

/// Whether `ctl drain` was said.
pub fn draining() -> bool {
    get(Counter::Draining as usize) != 0
}

/// A counter's value now.
pub fn value(counter: Counter) -> u64 {
    get(counter as usize)
}

fn get(index: usize) -> u64 {
    slot(index).map_or(0, |s| s.load(Ordering::Relaxed))
}

/// A new session: counted, and given its id (shown by `ctl status` and in every log line).
pub fn session_opened() -> u64 {
    inc(Counter::SessionsOpen);
    match slot(Counter::SessionsTotal as usize) {
        Some(s) => s.fetch_add(1, Ordering::Relaxed) + 1,
        None => {
            static LOCAL: AtomicU64 = AtomicU64::new(0);
            LOCAL.fetch_add(1, Ordering::Relaxed) + 1
        }
    }
}

/// How many reloads happened (the log files reopen when it changes).
pub fn reload_generation() -> u64 {
    get(Counter::Reloads as usize)
}

/// Sessions open now (every process of the server).
pub fn sessions_open() -> u64 {
    get(Counter::SessionsOpen as usize)
}

pub fn session_closed() {
    dec(Counter::SessionsOpen);
}

/// A finished transfer or listing: its result, bytes and duration.
pub fn transfer(kind: TransferKind, complete: bool, bytes: u64, took: Duration) {
    bump(TRANSFERS + kind as usize * 2 + usize::from(!complete), 1);
    add(if kind.is_upload() { Counter::BytesReceived } else { Counter::BytesSent }, bytes);
    observe(if kind.is_listing() { LISTING_SECONDS } else { TRANSFER_SECONDS }, took);
}

/// A hook ran (whatever its result), for so long.
pub fn hook_ran(took: Duration) {
    observe(HOOK_SECONDS, took);
}

fn observe(base: usize, took: Duration) {
    let seconds = took.as_secs_f64();
    if let Some(i) = BUCKETS.iter().position(|b| seconds <= *b) {
        bump(base + i, 1);
    }
    bump(base + BUCKETS.len(), took.as_micros() as u64);
    bump(base + BUCKETS.len() + 1, 1);
}

/// The Prometheus text exposition of the table.
pub fn render() -> String {
    let node = NODE.get().map_or("", String::as_str);
    let node = node.replace('\\', "\\\\").replace('"', "\\\"");
    let mut out = String::with_capacity(8 * 1024);
    let mut family = |name: &str, kind: &str, help: &str, series: &[(&str, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in series {
            let sep = if labels.is_empty() { "" } else { "," };
            let _ = writeln!(out, "{name}{{node=\"{node}\"{sep}{labels}}} {value}");
        }
    };
    use Counter::*;
    let c = |counter: Counter| get(counter as usize);
    family("zocalo_sessions_total", "counter", "Sessions admitted.", &[("", c(SessionsTotal))]);
    family("zocalo_sessions_open", "gauge", "Sessions open now.", &[("", c(SessionsOpen))]);
    family(
        "zocalo_logins_total",
        "counter",
        "Login attempts by result.",
        &[
            ("result=\"accepted\"", c(LoginsAccepted)),
            ("result=\"bad_credentials\"", c(LoginsBadCredentials)),
            ("result=\"locked_out\"", c(LoginsLockedOut)),
            ("result=\"home_missing\"", c(LoginsHomeMissing)),
            ("result=\"tls_required\"", c(LoginsTlsRequired)),
            ("result=\"unavailable\"", c(LoginsUnavailable)),
            ("result=\"denied\"", c(LoginsDenied)),
        ],
    );
    family("zocalo_reloads_total", "counter", "Reloads (SIGHUP, ctl reload).", &[("", c(Reloads))]);
    family("zocalo_lockouts_total", "counter", "Addresses locked out.", &[("", c(LockOuts))]);
    family(
        "zocalo_proxy_refused_total",
        "counter",
        "Connections from a trusted balancer closed for a bad or missing PROXY header.",
        &[("", c(ProxyRefused))],
    );
    family(
        "zocalo_shared_state_errors_total",
        "counter",
        "Calls to the shared state (Redis) that failed.",
        &[("", c(SharedStateErrors))],
    );
    family(
        "zocalo_hooks_failed_total",
        "counter",
        "Hook runs that failed (exit status, HTTP error, timeout, no answer).",
        &[("", c(HooksFailed))],
    );
    family(
        "zocalo_hooks_dropped_total",
        "counter",
        "Events dropped because their hook queue was full.",
        &[("", c(HooksDropped))],
    );
    family(
        "zocalo_uploads_refused_total",
        "counter",
        "Uploads an upload check refused.",
        &[("", c(UploadsRefused))],
    );
    family("zocalo_draining", "gauge", "1 while the node drains.", &[("", c(Draining))]);
    family("zocalo_work_queued", "gauge", "Jobs waiting for a worker.", &[("", c(WorkQueued))]);
    family("zocalo_workers_busy", "gauge", "Workers running a job.", &[("", c(WorkBusy))]);
    family("zocalo_workers", "gauge", "Worker threads.", &[("", c(WorkThreads))]);
    family(
        "zocalo_refusals_total",
        "counter",
        "Connections refused with 421, by cause.",
        &[
            ("cause=\"max_connections\"", c(RefusedMaxConnections)),
            ("cause=\"max_per_ip\"", c(RefusedMaxPerIp)),
            ("cause=\"descriptors\"", c(RefusedDescriptors)),
            ("cause=\"fd_setsize\"", c(RefusedFdSetsize)),
            ("cause=\"shutdown\"", c(RefusedShutdown)),
            ("cause=\"pool_full\"", c(RefusedPoolFull)),
        ],
    );
    family("zocalo_sent_bytes_total", "counter", "Data bytes sent.", &[("", c(BytesSent))]);
    family(
        "zocalo_received_bytes_total",
        "counter",
        "Data bytes received.",
        &[("", c(BytesReceived))],
    );
    let transfers: Vec<(String, u64)> = TransferKind::ALL
        .iter()
        .flat_map(|&kind| {
            [("ok", 0), ("failed", 1)].map(|(result, i)| {
                let slot = TRANSFERS + kind as usize * 2 + i;
                (format!("command=\"{kind}\",result=\"{result}\""), get(slot))
            })
        })
        .collect();
    let transfers: Vec<(&str, u64)> = transfers.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    family("zocalo_transfers_total", "counter", "Transfers and listings.", &transfers);
    family(
        "zocalo_tls_handshakes_total",
        "counter",
        "TLS handshakes by result.",
        &[("result=\"ok\"", c(TlsHandshakes)), ("result=\"failed\"", c(TlsFailures))],
    );
    family(
        "zocalo_tls_handshakes_deferred_total",
        "counter",
        "TLS handshake steps an event loop put off to its next turn.",
        &[("", c(TlsHandshakesDeferred))],
    );
    family(
        "zocalo_storage_errors_total",
        "counter",
        "Storage calls that failed.",
        &[("", c(StorageErrors))],
    );
    family(
        "zocalo_file_operations_total",
        "counter",
        "DELE, RMD, MKD, RNTO, SITE CHMOD and MFMT by result.",
        &[("result=\"ok\"", c(FileOpsOk)), ("result=\"failed\"", c(FileOpsFailed))],
    );
    family(
        "zocalo_tftp_transfers_total",
        "counter",
        "TFTP transfers by direction and result.",
        &[
            ("direction=\"read\",result=\"ok\"", c(TftpReadOk)),
            ("direction=\"read\",result=\"failed\"", c(TftpReadFailed)),
            ("direction=\"write\",result=\"ok\"", c(TftpWriteOk)),
            ("direction=\"write\",result=\"failed\"", c(TftpWriteFailed)),
        ],
    );
    family(
        "zocalo_tftp_refused_total",
        "counter",
        "TFTP requests refused (busy, too many from an address, a file that cannot be opened).",
        &[("", c(TftpRefused))],
    );
    histogram(
        &mut out,
        &node,
        "zocalo_transfer_duration_seconds",
        "RETR, STOR, APPE, STOU.",
        TRANSFER_SECONDS,
    );
    histogram(
        &mut out,
        &node,
        "zocalo_listing_duration_seconds",
        "LIST, NLST, MLSD.",
        LISTING_SECONDS,
    );
    histogram(
        &mut out,
        &node,
        "zocalo_hook_duration_seconds",
        "Hook runs (programs and URLs, checks included); the count is the runs.",
        HOOK_SECONDS,
    );
    out
}

fn histogram(out: &mut String, node: &str, name: &str, help: &str, base: usize) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    let mut cumulative = 0;
    for (i, bound) in BUCKETS.iter().enumerate() {
        cumulative += get(base + i);
        let _ = writeln!(out, "{name}_bucket{{node=\"{node}\",le=\"{bound}\"}} {cumulative}");
    }
    let count = get(base + BUCKETS.len() + 1);
    let _ = writeln!(out, "{name}_bucket{{node=\"{node}\",le=\"+Inf\"}} {count}");
    let sum = get(base + BUCKETS.len()) as f64 / 1e6;
    let _ = writeln!(out, "{name}_sum{{node=\"{node}\"}} {sum}");
    let _ = writeln!(out, "{name}_count{{node=\"{node}\"}} {count}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_render_in_the_text_format() {
        init("test-node").unwrap();
        let id = session_opened();
        assert!(session_opened() > id);
        inc(Counter::LoginsAccepted);
        transfer(TransferKind::Retr, true, 1000, Duration::from_millis(3));
        transfer(TransferKind::List, false, 10, Duration::from_secs(2));
        let text = render();
        assert!(text.contains("zocalo_logins_total{node=\"test-node\",result=\"accepted\"} 1"));
        assert!(text.contains("zocalo_sent_bytes_total{node=\"test-node\"} 1010"));
        assert!(text.contains("command=\"RETR\",result=\"ok\"} 1"));
        assert!(text.contains("command=\"LIST\",result=\"failed\"} 1"));
        assert!(text.contains(
            "zocalo_transfer_duration_seconds_bucket{node=\"test-node\",le=\"0.005\"} 1"
        ));
        assert!(text.contains("zocalo_listing_duration_seconds_count{node=\"test-node\"} 1"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
