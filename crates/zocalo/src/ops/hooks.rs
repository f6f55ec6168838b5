//! Events out: the config file's `[[hook]]` tables run a program or POST to a URL when
//! something happens (an upload arrives, a partner logs in, a file is deleted), the way
//! Pure-FTPd's `pure-uploadscript`, ProFTPD's mod_exec and SFTPGo's hooks do.
//!
//! - An [`Event`] has one schema for every kind ([`KINDS`]): what happened, to whom (the user,
//!   the client's real address behind a balancer, the node, the session id) and when.
//! - A hook with `command = [...]` runs that program (no shell unless the command is one) with
//!   the event in `ZOCALO_*` environment variables and as JSON on its standard input, within
//!   `timeout-seconds` (then its process group is killed); its output goes to the log.
//! - A hook with `url = "..."` POSTs the JSON (HTTPS verified; with `secret-file`, an
//!   `X-Zocalo-Signature: sha256=HEX` header, the HMAC-SHA256 of the body), retried with
//!   backoff on a 5xx or no answer.
//!
//! Hooks run off the sessions, on [`LANES`] threads per process, each with a bounded queue: a
//! session's events all go to one lane (by session id), so they run in the order they
//! happened. A full queue drops the event, counts it and logs once per [`DROP_LOG_EVERY`];
//! nothing ever waits for a hook but a check.
//!
//! **Checks** (`check = true`, `upload` only) are the exception: they run in the upload's own
//! finish, before the file is put in place (`state::checks`), and their verdict decides
//! whether it is.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::ops::metrics::{self, Counter};

/// The event kinds a hook may ask for.
pub const KINDS: &[&str] = &[
    "login",
    "upload",
    "download",
    "delete",
    "rename",
    "mkdir",
    "rmdir",
    "chmod",
    "mtime",
    "quota-exceeded",
    "session-end",
];

/// Threads (and queues) per process: a session's events always go to the same one.
pub const LANES: usize = 4;
/// Events waiting per lane before new ones are dropped.
pub const QUEUE: usize = 256;
/// A full queue is logged at most this often (with the count dropped since).
pub const DROP_LOG_EVERY: Duration = Duration::from_secs(10);
/// Output of a program kept for the log (the rest is read and dropped).
const OUTPUT_KEPT: usize = 4096;

/// One `[[hook]]` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct HookConfig {
    /// The kinds of event this hook gets (see [`KINDS`]).
    pub events: Vec<String>,
    /// A program and its arguments.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Or a URL to POST the event to.
    #[serde(default)]
    pub url: Option<String>,
    /// PEM file of the certificates to trust for `url` [default: the system's].
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A file whose content signs each POST (`X-Zocalo-Signature`).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Seconds a program may run, or an HTTP call may take.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
    /// Further tries of a URL after a 5xx or no answer (0.5 s, then twice as long each time).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// An upload check: the file is put in place only if the hook says yes.
    #[serde(default)]
    pub check: bool,
    /// What a check that does not answer in time decides.
    #[serde(default)]
    pub on_timeout: OnTimeout,
}

fn default_timeout() -> u64 {
    30
}

fn default_retries() -> u32 {
    3
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnTimeout {
    #[default]
    Refuse,
    Keep,
}

/// What happened. Every kind has the same fields; those that do not apply are left out of the
/// JSON and of the environment.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub event: &'static str,
    /// RFC 3339, UTC, to the millisecond.
    pub time: String,
    pub node: String,
    pub session: u64,
    pub user: String,
    /// The client's address (the PROXY header's, behind a balancer).
    pub client: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// A rename's old path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// A transfer's end: all of it (true) or aborted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub complete: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// A login's: `accepted` or `refused`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<&'static str>,
    /// Why a login was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// An upload check's: the file to look at, not yet in place.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

impl Event {
    /// An event of `kind` now, with the other fields empty.
    pub fn new(kind: &'static str, session: u64, user: &str, client: SocketAddr) -> Self {
        Event {
            event: kind,
            time: rfc3339(SystemTime::now()),
            node: String::new(),
            session,
            user: user.to_string(),
            client: client.to_string(),
            path: None,
            from: None,
            bytes: None,
            complete: None,
            duration_ms: None,
            result: None,
            reason: None,
            file: None,
        }
    }

    /// The `ZOCALO_*` variables of a program's environment.
    fn env(&self) -> Vec<(String, String)> {
        let mut out = vec![
            ("ZOCALO_EVENT".into(), self.event.to_string()),
            ("ZOCALO_TIME".into(), self.time.clone()),
            ("ZOCALO_NODE".into(), self.node.clone()),
            ("ZOCALO_SESSION".into(), self.session.to_string()),
            ("ZOCALO_USER".into(), self.user.clone()),
            ("ZOCALO_CLIENT".into(), self.client.clone()),
        ];
        let mut opt = |name: &str, value: Option<String>| {
            if let Some(v) = value {
                out.push((name.to_string(), v));
            }
        };
        opt("ZOCALO_PATH", self.path.clone());
        opt("ZOCALO_FROM", self.from.clone());
        opt("ZOCALO_BYTES", self.bytes.map(|b| b.to_string()));
        opt("ZOCALO_COMPLETE", self.complete.map(|c| c.to_string()));
        opt("ZOCALO_DURATION_MS", self.duration_ms.map(|d| d.to_string()));
        opt("ZOCALO_RESULT", self.result.map(str::to_string));
        opt("ZOCALO_REASON", self.reason.clone());
        opt("ZOCALO_FILE", self.file.clone());
        out
    }
}

/// `2026-12-07T13:05:09.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let c = zocalo_proto::listing::civil(t);
    let ms = t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.subsec_millis());
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}

/// A check's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// Refused, with the one line the client sees after `550`.
    Refuse(String),
}

/// One hook, ready to run.
struct Hook {
    config: HookConfig,
    /// For log lines: the program or the URL.
    name: String,
    agent: Option<ureq::Agent>,
    secret: Option<Vec<u8>>,
}

/// How one run ended.
enum Ran {
    /// Exit 0, or a 2xx; the first line of the output or body.
    Yes(String),
    /// Another exit status or answer; its first line.
    No(String),
    TimedOut,
    /// Could not run or reach it at all.
    Failed(String),
}

/// The hooks of one server.
pub struct Hooks {
    hooks: Arc<Vec<Hook>>,
    node: String,
    lanes: Mutex<Lanes>,
    dropped: crate::ops::logs::Throttle,
}

/// The lane threads of one process (a `process`-model child starts its own).
struct Lanes {
    pid: i32,
    senders: Vec<SyncSender<Job>>,
    pending: Arc<Pending>,
}

/// Jobs queued or running in this process, for [`Hooks::drain`] to wait on.
#[derive(Default)]
struct Pending {
    count: Mutex<usize>,
    zero: Condvar,
}

impl Pending {
    fn add(&self) {
        *self.count.lock().unwrap_or_else(|e| e.into_inner()) += 1;
    }

    fn done(&self) {
        let mut n = self.count.lock().unwrap_or_else(|e| e.into_inner());
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.zero.notify_all();
        }
    }
}

struct Job {
    hook: usize,
    event: Arc<Event>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks").field("hooks", &self.hooks.len()).finish_non_exhaustive()
    }
}

impl Hooks {
    /// The hooks of the `[[hook]]` tables; `None` when there are none. An unknown event kind,
    /// a table with neither or both of `command` and `url`, or a check on other events than
    /// `upload` is an error.
    pub fn open(configs: &[HookConfig], node: &str) -> Result<Option<Arc<Self>>, String> {
        if configs.is_empty() {
            return Ok(None);
        }
        let mut hooks = Vec::new();
        for (i, c) in configs.iter().enumerate() {
            let what = format!("[[hook]] {}", i + 1);
            if c.events.is_empty() {
                return Err(format!("{what}: events is empty"));
            }
            if let Some(bad) = c.events.iter().find(|e| !KINDS.contains(&e.as_str())) {
                return Err(format!("{what}: unknown event {bad:?} (known: {})", KINDS.join(", ")));
            }
            if c.check && c.events.iter().any(|e| e != "upload") {
                return Err(format!("{what}: check = true is for events = [\"upload\"] only"));
            }
            let (name, agent) = match (&c.command, &c.url) {
                (Some(argv), None) if !argv.is_empty() => (argv.join(" "), None),
                (None, Some(url)) => {
                    let timeout = Duration::from_secs(c.timeout_seconds.max(1));
                    let agent = crate::ops::web::agent(c.ca_file.as_deref(), timeout)
                        .map_err(|e| format!("{what}: {e}"))?;
                    (url.clone(), Some(agent))
                }
                _ => return Err(format!("{what}: give one of command = [...] or url = \"...\"")),
            };
            let secret = match &c.secret_file {
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .map_err(|e| format!("{what}: {}: {e}", path.display()))?
                        .trim_end_matches(['\r', '\n'])
                        .as_bytes()
                        .to_vec(),
                ),
                None => None,
            };
            hooks.push(Hook { config: c.clone(), name, agent, secret });
        }
        Ok(Some(Arc::new(Hooks {
            hooks: Arc::new(hooks),
            node: node.to_string(),
            lanes: Mutex::new(Lanes { pid: 0, senders: Vec::new(), pending: Arc::default() }),
            dropped: crate::ops::logs::Throttle::new(DROP_LOG_EVERY),
        })))
    }

    /// Whether some hook (not a check) wants events of `kind`: callers skip building them.
    pub fn wants(&self, kind: &str) -> bool {
        self.hooks.iter().any(|h| !h.config.check && h.config.events.iter().any(|e| e == kind))
    }

    /// Whether uploads are checked.
    pub fn checks_uploads(&self) -> bool {
        self.hooks.iter().any(|h| h.config.check)
    }

    /// Queues `event` for every hook that wants it; never waits.
    pub fn emit(&self, mut event: Event) {
        let wanted: Vec<usize> = (0..self.hooks.len())
            .filter(|&i| {
                let c = &self.hooks[i].config;
                !c.check && c.events.iter().any(|e| e == event.event)
            })
            .collect();
        if wanted.is_empty() {
            return;
        }
        event.node.clone_from(&self.node);
        let event = Arc::new(event);
        let lane = event.session as usize % LANES;
        let lanes = self.lanes();
        for hook in wanted {
            lanes.pending.add();
            if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
                lanes.senders[lane].try_send(Job { hook, event: event.clone() })
            {
                lanes.pending.done();
                self.dropped_one(&event);
            }
        }
    }

    /// Starts this process's lanes now.
    pub fn start(&self) {
        drop(self.lanes());
    }

    /// This process's lanes, started on first use (and again in a forked child, whose
    /// parent's threads did not come with it).
    fn lanes(&self) -> std::sync::MutexGuard<'_, Lanes> {
        let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        if lanes.pid != pid {
            lanes.pid = pid;
            lanes.pending = Arc::default();
            let pending = lanes.pending.clone();
            lanes.senders = (0..LANES)
                .map(|i| {
                    let (tx, rx) = mpsc::sync_channel::<Job>(QUEUE);
                    let (hooks, pending) = (self.hooks.clone(), pending.clone());
                    let spawned = std::thread::Builder::new()
                        .name(format!("hooks-{i}"))
                        .spawn(move || lane(&hooks, &pending, rx));
                    if let Err(e) = spawned {
                        tracing::warn!("cannot start a hook thread: {e}");
                    }
                    tx
                })
                .collect();
        }
        lanes
    }

    fn dropped_one(&self, event: &Event) {
        metrics::inc(Counter::HooksDropped);
        if let Some(held) = self.dropped.allow() {
            tracing::warn!(
                dropped = held + 1,
                event = event.event,
                user = %event.user,
                "hook queue full: events dropped"
            );
        }
    }

    /// Waits up to `within` for the queued events of this process to run (a stop, a
    /// `process`-model child's end).
    pub fn drain(&self, within: Duration) {
        let pending = {
            let lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
            // SAFETY: getpid has no preconditions.
            if lanes.pid != unsafe { libc::getpid() } {
                return;
            }
            lanes.pending.clone()
        };
        let count = pending.count.lock().unwrap_or_else(|e| e.into_inner());
        let _ = pending.zero.wait_timeout_while(count, within, |n| *n > 0);
    }

    /// Runs the upload checks on `event` (whose `file` names the bytes), in order; the first
    /// that refuses decides. Runs on the caller's thread: the upload waits for it.
    pub fn check(&self, mut event: Event) -> Verdict {
        event.node.clone_from(&self.node);
        for hook in self.hooks.iter().filter(|h| h.config.check) {
            let ran = run(hook, &event);
            let verdict = match ran {
                Ran::Yes(_) => Verdict::Keep,
                Ran::No(line) if line.is_empty() => {
                    Verdict::Refuse("Upload refused by the server's check.".into())
                }
                Ran::No(line) => Verdict::Refuse(line),
                Ran::TimedOut if hook.config.on_timeout == OnTimeout::Keep => Verdict::Keep,
                Ran::TimedOut => Verdict::Refuse("Upload check timed out.".into()),
                Ran::Failed(_) => Verdict::Refuse("Upload check failed.".into()),
            };
            match &verdict {
                Verdict::Keep => {}
                Verdict::Refuse(why) => {
                    metrics::inc(Counter::UploadsRefused);
                    tracing::info!(
                        path = event.path.as_deref().unwrap_or(""),
                        user = %event.user,
                        reason = %why,
                        hook = %hook.name,
                        "upload refused by its check"
                    );
                    return verdict;
                }
            }
        }
        Verdict::Keep
    }
}

/// One run of `hook` on `event`: counted, timed and logged.
fn run(hook: &Hook, event: &Event) -> Ran {
    let began = Instant::now();
    let json = serde_json::to_vec(event).unwrap_or_default();
    let ran = match (&hook.config.command, &hook.agent) {
        (Some(argv), _) => run_program(argv, event, &json, hook.timeout()),
        (None, Some(agent)) => post(hook, agent, event, &json),
        (None, None) => Ran::Failed("nothing to run".into()),
    };
    metrics::hook_ran(began.elapsed());
    let ms = began.elapsed().as_millis() as u64;
    let (kind, user, path) = (event.event, &event.user, event.path.as_deref().unwrap_or(""));
    match &ran {
        Ran::Yes(out) => {
            tracing::debug!(hook = %hook.name, event = kind, %user, path, ms, "hook ran");
            if !out.is_empty() && !hook.config.check {
                tracing::info!(hook = %hook.name, event = kind, output = %out, "hook output");
            }
        }
        Ran::No(out) => {
            metrics::inc(Counter::HooksFailed);
            // A check's refusal is logged with its verdict (`Hooks::check`).
            if !hook.config.check {
                tracing::warn!(hook = %hook.name, event = kind, %user, path, output = %out,
                    ms, "hook failed");
            }
        }
        Ran::TimedOut => {
            metrics::inc(Counter::HooksFailed);
            tracing::warn!(hook = %hook.name, event = kind, %user, path, ms,
                "hook timed out and was stopped");
        }
        Ran::Failed(why) => {
            metrics::inc(Counter::HooksFailed);
            tracing::warn!(hook = %hook.name, event = kind, %user, path, ms,
                "hook could not run: {why}");
        }
    }
    ran
}

impl Hook {
    fn timeout(&self) -> Duration {
        Duration::from_secs(self.config.timeout_seconds.max(1))
    }
}

/// A lane's thread: runs its queue's jobs in order, for good.
fn lane(hooks: &[Hook], pending: &Pending, jobs: Receiver<Job>) {
    for job in jobs {
        run(&hooks[job.hook], &job.event);
        pending.done();
    }
}

/// The first line of `out`, printable and short: what a client or a log line may show.
fn first_line(out: &[u8]) -> String {
    let text = String::from_utf8_lossy(out);
    let line = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
    line.chars().filter(|c| !c.is_control()).take(200).collect()
}

/// Runs a program with the event in its environment and on its standard input; kills its
/// process group at `timeout`.
fn run_program(argv: &[String], event: &Event, json: &[u8], timeout: Duration) -> Ran {
    use std::os::unix::process::CommandExt;
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors we then own; the result is checked.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Ran::Failed(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: both descriptors were just made by pipe2 and are owned here only.
    let (out_r, out_w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let err_w = match out_w.try_clone() {
        Ok(fd) => fd,
        Err(e) => return Ran::Failed(e.to_string()),
    };
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .envs(event.env())
        .stdin(Stdio::piped())
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w))
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Ran::Failed(format!("{}: {e}", argv[0])),
    };
    drop(cmd); // closes the parent's copies of the write ends
    if let Some(mut stdin) = child.stdin.take() {
        // Small (a few hundred bytes): fits in the pipe whether or not the program reads it.
        let _ = stdin.write_all(json);
    }
    let pid = child.id() as i32;
    let mut reader = std::fs::File::from(out_r);
    // SAFETY: fcntl on a descriptor we own.
    unsafe { libc::fcntl(reader.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    let mut kept = Vec::new();
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    let mut eof = false;
    // The exit is seen through a pidfd (Linux 5.3); without one, every 20 ms.
    // SAFETY: pidfd_open on our own child; the result is checked.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    // SAFETY: a descriptor pidfd_open just made, owned here only.
    let pidfd = (pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd) });
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break None;
        }
        let mut pfds = [
            libc::pollfd {
                fd: pidfd.as_ref().map_or(-1, |f| f.as_raw_fd()),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if eof { -1 } else { reader.as_raw_fd() },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let wait =
            if pidfd.is_some() { left.as_millis().min(60_000) } else { left.as_millis().min(20) };
        // SAFETY: two pollfds on descriptors we own (-1 entries are ignored).
        unsafe { libc::poll(pfds.as_mut_ptr(), 2, wait.max(1) as i32) };
        eof |= read_some(&mut reader, &mut buf, &mut kept);
    };
    let status = match status {
        Some(s) => s,
        None => {
            // SAFETY: signalling the process group the child leads (process_group(0)).
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            let _ = child.wait();
            return Ran::TimedOut;
        }
    };
    read_some(&mut reader, &mut buf, &mut kept);
    let line = first_line(&kept);
    match status.success() {
        true => Ran::Yes(line),
        false => Ran::No(line),
    }
}

/// Reads what the pipe has now into `kept` (up to [`OUTPUT_KEPT`]); true at its end.
fn read_some(reader: &mut std::fs::File, buf: &mut [u8], kept: &mut Vec<u8>) -> bool {
    loop {
        match reader.read(buf) {
            Ok(0) => return true,
            Ok(n) => {
                let room = OUTPUT_KEPT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
            Err(_) => return false,
        }
    }
}

/// POSTs the event, retrying a 5xx or no answer.
fn post(hook: &Hook, agent: &ureq::Agent, event: &Event, json: &[u8]) -> Ran {
    let url = hook.config.url.as_deref().unwrap_or("");
    let signature = hook.secret.as_ref().map(|key| format!("sha256={}", hex(&hmac(key, json))));
    let mut backoff = Duration::from_millis(500);
    let mut last = Ran::Failed("not tried".into());
    for attempt in 0..=hook.config.retries {
        if attempt > 0 {
            std::thread::sleep(backoff);
            backoff *= 2;
        }
        let mut request = agent
            .post(url)
            .header("Content-Type", "application/json")
            .header("X-Zocalo-Event", event.event);
        if let Some(s) = &signature {
            request = request.header("X-Zocalo-Signature", s);
        }
        match request.send(json) {
            Ok(mut answer) => {
                let status = answer.status().as_u16();
                let body = answer.body_mut().with_config().limit(64 * 1024).read_to_vec();
                let line = first_line(&body.unwrap_or_default());
                match status {
                    200..=299 => return Ran::Yes(line),
                    500..=599 => last = Ran::No(format!("HTTP {status}: {line}")),
                    _ => {
                        return Ran::No(if line.is_empty() {
                            format!("HTTP {status}")
                        } else {
                            line
                        })
                    }
                }
            }
            Err(ureq::Error::Timeout(_)) if hook.config.check => return Ran::TimedOut,
            Err(e) => last = Ran::Failed(e.to_string()),
        }
    }
    last
}

/// HMAC-SHA256 (RFC 2104).
pub fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(message);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A file the check reads: where an upload's bytes are while they wait for the verdict.
pub fn fd_path(fd: std::os::fd::RawFd) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{fd}")).ok().filter(|p| p.is_absolute())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(hex(&mac), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn a_bad_table_is_refused() {
        let base = HookConfig {
            events: vec!["upload".into()],
            command: Some(vec!["true".into()]),
            url: None,
            ca_file: None,
            secret_file: None,
            timeout_seconds: 1,
            retries: 0,
            check: false,
            on_timeout: OnTimeout::Refuse,
        };
        assert!(Hooks::open(std::slice::from_ref(&base), "n").unwrap().is_some());
        let unknown = HookConfig { events: vec!["uploaded".into()], ..base.clone() };
        assert!(Hooks::open(&[unknown], "n").unwrap_err().contains("unknown event"));
        let both = HookConfig { url: Some("http://127.0.0.1:1/".into()), ..base.clone() };
        assert!(Hooks::open(&[both], "n").is_err());
        let check = HookConfig { events: vec!["delete".into()], check: true, ..base };
        assert!(Hooks::open(&[check], "n").is_err());
    }

    #[test]
    fn a_program_gets_the_event_and_a_slow_one_is_stopped() {
        let event = Event {
            path: Some("/a.txt".into()),
            ..Event::new("upload", 7, "bob", "127.0.0.1:5000".parse().unwrap())
        };
        let json = serde_json::to_vec(&event).unwrap();
        let argv: Vec<String> =
            ["sh", "-c", "read -r line; echo \"$ZOCALO_USER $ZOCALO_PATH\"; exit 3"]
                .map(String::from)
                .into();
        match run_program(&argv, &event, &json, Duration::from_secs(5)) {
            Ran::No(line) => assert_eq!(line, "bob /a.txt"),
            _ => panic!("expected a refusal"),
        }
        let slow: Vec<String> = ["sh", "-c", "sleep 30"].map(String::from).into();
        let began = Instant::now();
        assert!(matches!(
            run_program(&slow, &event, &json, Duration::from_millis(300)),
            Ran::TimedOut
        ));
        assert!(began.elapsed() < Duration::from_secs(10));
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }
}
