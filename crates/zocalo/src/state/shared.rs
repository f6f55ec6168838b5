//! State that the nodes of a cluster share, kept in Redis (`--shared-state redis://...`): the
//! connection counts behind `--max-connections` and `--max-per-ip`, failed-login lock-outs, and
//! the session table that `zocalo ctl status` and `kick` see on every node.
//!
//! Keys (all under `zocalo:`):
//!
//! - `nodes`: the set of node names that have run.
//! - `conn:NODE`: a hash of this node's open sessions, `*` in all and one field per client
//!   address. A Lua script admits a connection atomically against the sum over every live node;
//!   the hash expires after [`LEASE`] unless its node renews it, so a node that dies leaves no
//!   phantom sessions. Each node rewrites its own hash from its session table whenever it
//!   (re)connects, which also repairs the releases it could not send during an outage.
//! - `sessions:NODE`: a hash of the sessions (JSON) by session id, rewritten every [`TICK`] with
//!   the same lease.
//! - `kick:NODE`: ids that another node's `ctl kick NODE:ID` asked this node to close.
//! - `node:NODE`: the node as the web console shows it (JSON, with the console on), with the
//!   same lease; `ask:NODE`: `drain`, `undrain` or `reload` asked by another node's console.
//! - `fail:ADDR` and `lock:ADDR`: failed logins within the ban time and the lock-out itself.
//! - `seats:NODE`: this node's sessions per account name, for `max_sessions`; the same lease
//!   and the same rewrite as `conn:NODE`. A script takes a seat against the sum over the live
//!   nodes.
//! - `quota:USER`: the quota tally of an account (`bytes` and `files`), kept without a lease:
//!   it is the cluster's count of what the storage holds. A missing key (a new account, a Redis
//!   restarted empty) is counted again from storage at the account's next upload.
//!
//! Every call has a short timeout. When Redis does not answer, the node logs it once, counts
//! `zocalo_shared_state_errors_total`, serves on its local limits and lock-outs (which it keeps
//! all along) and tries Redis again after [`RETRY`]; it logs again when Redis is back.
//!
//! Which thread calls: the admitting thread (the blocking models' accept loop, the event loop's
//! workers, never the loop itself), the login's worker for lock-outs, and the sync thread (a
//! process of its own in the `process` model) for the lease, the table, kicks and releases.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use redis::{Connection, RedisResult, Script};

use crate::state::registry::{Registry, SessionView};
use crate::sys::shutdown::Shutdown;

/// How long a node's entries outlive it.
pub const LEASE: Duration = Duration::from_secs(10);
/// How often the sync thread renews the lease, publishes the table and looks for kicks.
pub const TICK: Duration = Duration::from_secs(1);
/// How long to wait before trying an unreachable Redis again.
pub const RETRY: Duration = Duration::from_secs(1);
/// Every this many ticks the sync thread rewrites this node's counts from its session table,
/// whatever happened: a count can drift without any call failing here (another process's call
/// timed out after Redis ran it, in the `process` model), and the rewrite bounds how long.
const REWRITE_EVERY: u32 = 10;
/// Connections kept open for the admitting and login threads: a caller takes one for its call
/// and puts it back, so this many callers (the event loop's workers) never wait behind each
/// other's round trips. The sync thread keeps the pool full while Redis answers, so the node
/// holds a constant number of descriptors.
const POOL: usize = 4;
/// Connect, read and write timeout of every call.
const TIMEOUT: Duration = Duration::from_millis(500);

const ADMIT: &str = r"
local total, same = 0, 0
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local key = 'zocalo:conn:' .. node
  local all = redis.call('HGET', key, '*')
  if all then
    total = total + tonumber(all)
    same = same + tonumber(redis.call('HGET', key, ARGV[1]) or '0')
  end
end
if total >= tonumber(ARGV[2]) then return 1 end
if same >= tonumber(ARGV[3]) then return 2 end
redis.call('SADD', KEYS[1], ARGV[5])
redis.call('HINCRBY', KEYS[2], '*', 1)
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
redis.call('EXPIRE', KEYS[2], ARGV[4])
return 0
";

const RELEASE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HINCRBY', KEYS[1], '*', -1) < 0 then redis.call('HSET', KEYS[1], '*', 0) end
if redis.call('HINCRBY', KEYS[1], ARGV[1], -1) <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return 1
";

const SEAT: &str = r"
local total = 0
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  total = total + tonumber(redis.call('HGET', 'zocalo:seats:' .. node, ARGV[1]) or '0')
end
if total >= tonumber(ARGV[2]) then return 0 end
redis.call('SADD', KEYS[1], ARGV[4])
redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
";

const UNSEAT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HINCRBY', KEYS[1], ARGV[1], -1) <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return 1
";

/// Adds to a tally that exists (a missing one is counted from storage when next needed, which
/// then includes this change), never below 0.
const QUOTA_ADD: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i, field in ipairs({'bytes', 'files'}) do
  if redis.call('HINCRBY', KEYS[1], field, ARGV[i]) < 0 then redis.call('HSET', KEYS[1], field, 0) end
end
return 1
";

const FAIL: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
if n >= tonumber(ARGV[1]) then redis.call('SET', KEYS[2], '1', 'EX', ARGV[2]) end
return n
";

fn quota_key(user: &str) -> String {
    format!("zocalo:quota:{user}")
}

/// The error of a tally call while Redis does not answer (the client sees `451` with it; the
/// log already says that Redis is down).
fn unreachable() -> io::Error {
    io::Error::other("quota tally unavailable")
}

/// What [`Shared::kick`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    Asked,
    NoNode,
    NoSession,
}

/// Which of the cluster's limits a connection would go over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// `--max-connections`, counted over every node.
    Cluster,
    /// `--max-per-ip`, counted over every node.
    Address,
}

/// What the sync thread gives back for a caller that must not wait on Redis (the event loop
/// drops permits and accounts on its own thread).
#[derive(Debug)]
enum Release {
    Connection(IpAddr),
    Seat(String),
}

/// A session's seat in the cluster-wide count of its account's sessions; given back when
/// dropped.
#[derive(Debug)]
pub struct SharedSeat {
    shared: Arc<Shared>,
    user: String,
}

impl Drop for SharedSeat {
    fn drop(&mut self) {
        self.shared.give_back(Release::Seat(std::mem::take(&mut self.user)));
    }
}

/// The shared state of one node.
pub struct Shared {
    client: redis::Client,
    /// Where Redis is, for log lines (the URL without its password).
    location: String,
    node: String,
    max_total: usize,
    max_per_ip: usize,
    max_failures: u32,
    ban: Duration,
    /// The connections of the admitting and login threads.
    pool: Mutex<Pool>,
    returned: Condvar,
    /// Set while Redis is unreachable: calls fail at once until then.
    down_until: Mutex<Option<Instant>>,
    /// A call failed: Redis may have applied it or not (a timeout), so the counts may have
    /// drifted; the sync thread rewrites them at its next tick.
    drifted: AtomicBool,
    /// Set when the sync thread runs in this process: releases go to it, off the caller's
    /// thread (the event loop drops its permits on the loop).
    releases: OnceLock<Sender<Release>>,
    scripts: Scripts,
    /// The node's snapshot for the web console (JSON), published every tick when set.
    snapshot: OnceLock<Snapshot>,
    /// Where a `reload` asked by another node's console goes.
    reload: OnceLock<crate::sys::shutdown::Reload>,
}

/// Does `drain`, `undrain` or `reload` on this node, as a console asked; false for anything
/// else.
pub fn carry_out(what: &str, reload: &crate::sys::shutdown::Reload) -> bool {
    match what {
        "drain" => crate::ops::metrics::start_draining(),
        "undrain" => crate::ops::metrics::stop_draining(),
        "reload" => reload.ask(),
        _ => return false,
    }
    true
}

/// Makes this node's console snapshot from its sessions, read once per tick (see
/// [`Shared::publish_snapshot`]).
pub type Snapshot = Box<dyn Fn(&[SessionView]) -> String + Send + Sync>;

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("node", &self.node).finish_non_exhaustive()
    }
}

/// The pool's connections, all opened by process `pid` (a forked child must not talk on its
/// parent's connections: it starts a pool of its own).
struct Pool {
    pid: i32,
    idle: Vec<Connection>,
    /// Open connections, idle or lent out.
    open: usize,
}

struct Scripts {
    admit: Script,
    release: Script,
    seat: Script,
    unseat: Script,
    quota_add: Script,
    fail: Script,
}

/// Settings of [`Shared::open`].
pub struct Options<'a> {
    pub url: &'a str,
    pub node: &'a str,
    pub max_total: usize,
    pub max_per_ip: usize,
    pub max_failures: u32,
    pub ban: Duration,
    /// Open the pool's connections at start and keep it full from the sync thread (false in
    /// the `process` model, whose parent makes one call at a time and whose sync loop runs in
    /// another process).
    pub keep_full: bool,
}

impl Shared {
    /// Checks the URL and tries Redis once. A Redis that does not answer does not stop the
    /// start: the node serves on its local limits and says so.
    pub fn open(o: &Options) -> io::Result<Arc<Self>> {
        let client = redis::Client::open(o.url).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("--shared-state {}: {e}", o.url))
        })?;
        let location = match o.url.rsplit_once('@') {
            Some((_, host)) => format!("redis://{host}"),
            None => o.url.to_string(),
        };
        let shared = Arc::new(Shared {
            client,
            location,
            node: o.node.to_string(),
            max_total: o.max_total,
            max_per_ip: o.max_per_ip,
            max_failures: o.max_failures.max(1),
            ban: o.ban.max(Duration::from_secs(1)),
            pool: Mutex::new(Pool { pid: 0, idle: Vec::new(), open: 0 }),
            returned: Condvar::new(),
            down_until: Mutex::new(None),
            drifted: AtomicBool::new(false),
            releases: OnceLock::new(),
            snapshot: OnceLock::new(),
            reload: OnceLock::new(),
            scripts: Scripts {
                admit: Script::new(ADMIT),
                release: Script::new(RELEASE),
                seat: Script::new(SEAT),
                unseat: Script::new(UNSEAT),
                quota_add: Script::new(QUOTA_ADD),
                fail: Script::new(FAIL),
            },
        });
        // One try at start. A Redis that answers and refuses this node (a password missing or
        // wrong) is a mistake in the settings, not an outage: it stops the start.
        match shared
            .connect()
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c).map(|_| c))
        {
            Ok(c) => {
                {
                    let mut pool = shared.lock_pool();
                    pool.idle.push(c);
                    pool.open += 1;
                }
                if o.keep_full {
                    shared.fill();
                }
                tracing::info!(redis = %shared.location, node = %shared.node, "shared state");
            }
            Err(e)
                if e.kind() == redis::ErrorKind::AuthenticationFailed
                    || e.code().is_some_and(|c| matches!(c, "NOAUTH" | "WRONGPASS" | "NOPERM")) =>
            {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "--shared-state {}: Redis refused this node: {e} (give the password \
                         in the URL, redis://:PASSWORD@HOST:PORT/)",
                        shared.location
                    ),
                ));
            }
            Err(e) => {
                shared.down(&e);
                tracing::warn!(
                    redis = %shared.location,
                    "shared state unreachable at start; serving on local limits until it answers"
                );
            }
        }
        Ok(shared)
    }

    fn connect(&self) -> RedisResult<Connection> {
        let c = self.client.get_connection_with_timeout(TIMEOUT)?;
        c.set_read_timeout(Some(TIMEOUT))?;
        c.set_write_timeout(Some(TIMEOUT))?;
        Ok(c)
    }

    /// Runs `f` on this process's connection; `None` when Redis is down or the call fails.
    fn call<T>(&self, f: impl Fn(&mut Connection) -> RedisResult<T>) -> Option<T> {
        if self
            .down_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|t| t > Instant::now())
        {
            return None;
        }
        let taken = match self.take() {
            Ok(c) => c,
            Err(e) => {
                self.down(&e);
                return None;
            }
        };
        let pooled = taken.is_some();
        let mut c = match taken {
            Some(c) => c,
            None => match self.connect() {
                Ok(c) => c,
                Err(e) => {
                    self.lock_pool().open -= 1;
                    self.returned.notify_one();
                    self.down(&e);
                    return None;
                }
            },
        };
        let mut result = f(&mut c);
        if pooled
            && result
                .as_ref()
                .is_err_and(|e| !e.is_timeout() && (e.is_io_error() || e.is_connection_dropped()))
        {
            // An idle connection that Redis closed (a restart): one more try on a new one. A
            // Redis that timed out is not asked again: a call costs one timeout at most.
            match self.connect() {
                Ok(fresh) => {
                    c = fresh;
                    result = f(&mut c);
                }
                Err(e) => result = Err(e),
            }
        }
        let mut pool = self.lock_pool();
        match result {
            Ok(v) => {
                pool.idle.push(c);
                drop(pool);
                self.returned.notify_one();
                self.up();
                Some(v)
            }
            Err(e) => {
                pool.open -= 1;
                drop(pool);
                self.returned.notify_one();
                self.down(&e);
                None
            }
        }
    }

    /// This process's pool (a fork's child drops its parent's without closing them).
    fn lock_pool(&self) -> MutexGuard<'_, Pool> {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        if pool.pid != pid {
            pool.idle.drain(..).for_each(std::mem::forget);
            *pool = Pool { pid, idle: Vec::new(), open: 0 };
        }
        pool
    }

    /// An idle connection, or `None` with room counted for a new one; waits (up to the call
    /// timeout) while all are lent out.
    fn take(&self) -> RedisResult<Option<Connection>> {
        let deadline = Instant::now() + TIMEOUT;
        let mut pool = self.lock_pool();
        loop {
            if let Some(c) = pool.idle.pop() {
                return Ok(Some(c));
            }
            if pool.open < POOL {
                pool.open += 1;
                return Ok(None);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let busy = (redis::ErrorKind::Io, "every shared-state connection is busy");
                return Err(busy.into());
            }
            pool = self.returned.wait_timeout(pool, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Opens the pool's missing connections (at start, and from the sync thread once Redis
    /// answers again).
    fn fill(&self) {
        loop {
            {
                let mut pool = self.lock_pool();
                if pool.open >= POOL {
                    return;
                }
                pool.open += 1;
            }
            match self.connect() {
                Ok(c) => {
                    self.lock_pool().idle.push(c);
                    self.returned.notify_one();
                }
                Err(_) => {
                    self.lock_pool().open -= 1;
                    return;
                }
            }
        }
    }

    fn up(&self) {
        let mut down = self.down_until.lock().unwrap_or_else(|e| e.into_inner());
        if down.take().is_some() {
            tracing::info!(redis = %self.location, "shared state reachable again");
        }
    }

    fn down(&self, e: &redis::RedisError) {
        crate::ops::metrics::inc(crate::ops::metrics::Counter::SharedStateErrors);
        self.drifted.store(true, Ordering::Release);
        let mut down = self.down_until.lock().unwrap_or_else(|e| e.into_inner());
        if down.is_none() {
            tracing::warn!(
                redis = %self.location,
                "shared state unreachable ({e}); serving on local limits and lock-outs"
            );
        }
        *down = Some(Instant::now() + RETRY);
    }

    fn conn_key(&self) -> String {
        format!("zocalo:conn:{}", self.node)
    }

    /// Counts a connection from `ip` across the cluster. `None`: Redis did not answer (the
    /// local count decides alone).
    pub fn admit(&self, ip: IpAddr) -> Option<Result<(), Full>> {
        let verdict: i64 = self.call(|c| {
            self.scripts
                .admit
                .key("zocalo:nodes")
                .key(self.conn_key())
                .arg(ip.to_string())
                .arg(self.max_total)
                .arg(self.max_per_ip)
                .arg(LEASE.as_secs())
                .arg(&self.node)
                .invoke(c)
        })?;
        Some(match verdict {
            0 => Ok(()),
            1 => Err(Full::Cluster),
            _ => Err(Full::Address),
        })
    }

    /// Gives back a connection [`admit`](Self::admit) counted.
    pub fn release(&self, ip: IpAddr) {
        self.give_back(Release::Connection(ip));
    }

    fn give_back(&self, what: Release) {
        match self.releases.get() {
            Some(tx) => drop(tx.send(what)),
            None => drop(self.release_now(&what, None)),
        }
    }

    /// Whether Redis answered (the sync thread drops a connection that did not: a reply that
    /// comes after its timeout would be read as the next call's).
    fn release_now(&self, what: &Release, on: Option<&mut Connection>) -> bool {
        let run = |c: &mut Connection| -> RedisResult<i64> {
            match what {
                Release::Connection(ip) => {
                    self.scripts.release.key(self.conn_key()).arg(ip.to_string()).invoke(c)
                }
                Release::Seat(user) => {
                    self.scripts.unseat.key(self.seats_key()).arg(user).invoke(c)
                }
            }
        };
        match on {
            Some(c) => run(c).is_ok(),
            None => self.call(run).is_some(),
        }
    }

    fn seats_key(&self) -> String {
        format!("zocalo:seats:{}", self.node)
    }

    /// Takes a seat for `user` if the cluster has fewer than `max` of its sessions:
    /// `Some(None)` when it has `max`; `None` when Redis did not answer (the node's own count
    /// decides alone).
    pub fn take_seat(self: &Arc<Self>, user: &str, max: u32) -> Option<Option<SharedSeat>> {
        let taken: i64 = self.call(|c| {
            self.scripts
                .seat
                .key("zocalo:nodes")
                .key(self.seats_key())
                .arg(user)
                .arg(max)
                .arg(LEASE.as_secs())
                .arg(&self.node)
                .invoke(c)
        })?;
        Some((taken == 1).then(|| SharedSeat { shared: self.clone(), user: user.to_string() }))
    }

    /// `user`'s quota tally: `Ok(None)` when it has none yet.
    pub fn quota_get(&self, user: &str) -> io::Result<Option<(u64, u64)>> {
        let (bytes, files): (Option<u64>, Option<u64>) = self
            .call(|c| redis::cmd("HMGET").arg(quota_key(user)).arg("bytes").arg("files").query(c))
            .ok_or_else(unreachable)?;
        Ok(bytes.zip(files))
    }

    /// Sets `user`'s tally; `only_if_missing`: unless another node set it meanwhile.
    pub fn quota_set(&self, user: &str, used: (u64, u64), only_if_missing: bool) -> io::Result<()> {
        let key = quota_key(user);
        self.call(|c| {
            if only_if_missing {
                let set: bool = redis::cmd("HSETNX").arg(&key).arg("bytes").arg(used.0).query(c)?;
                if !set {
                    return Ok(());
                }
            }
            redis::cmd("HSET").arg(&key).arg("bytes").arg(used.0).arg("files").arg(used.1).query(c)
        })
        .ok_or_else(unreachable)
    }

    /// Forgets `user`'s tally: the next upload counts it again.
    pub fn quota_clear(&self, user: &str) -> io::Result<()> {
        self.call(|c| redis::cmd("DEL").arg(quota_key(user)).query::<()>(c)).ok_or_else(unreachable)
    }

    /// Adds to `user`'s tally, if it has one.
    pub fn quota_add(&self, user: &str, bytes: i64, files: i64) -> io::Result<()> {
        self.call(|c| {
            self.scripts.quota_add.key(quota_key(user)).arg(bytes).arg(files).invoke::<i64>(c)
        })
        .map(drop)
        .ok_or_else(unreachable)
    }

    /// Whether another node (or this one) locked `ip` out. `None`: Redis did not answer.
    pub fn is_locked(&self, ip: IpAddr) -> Option<bool> {
        self.call(|c| redis::cmd("EXISTS").arg(format!("zocalo:lock:{ip}")).query(c))
    }

    /// Counts a failed login from `ip` for every node; true when this one locked it out.
    pub fn record_failure(&self, ip: IpAddr) -> Option<bool> {
        let n: u64 = self.call(|c| {
            self.scripts
                .fail
                .key(format!("zocalo:fail:{ip}"))
                .key(format!("zocalo:lock:{ip}"))
                .arg(self.max_failures)
                .arg(self.ban.as_secs())
                .invoke(c)
        })?;
        Some(n == u64::from(self.max_failures))
    }

    /// Asks `node` to close session `id` (it does within a [`TICK`]), if that node publishes
    /// such a session.
    pub fn kick(&self, node: &str, id: u64) -> Option<Kick> {
        let (key, table) = (format!("zocalo:kick:{node}"), format!("zocalo:sessions:{node}"));
        self.call(|c| {
            let (live, listed): (bool, bool) =
                redis::pipe().exists(&table).hexists(&table, id).query(c)?;
            if !live {
                return Ok(Kick::NoNode);
            }
            if !listed {
                return Ok(Kick::NoSession);
            }
            redis::pipe()
                .rpush(&key, id)
                .ignore()
                .expire(&key, LEASE.as_secs() as i64)
                .ignore()
                .query::<()>(c)?;
            Ok(Kick::Asked)
        })
    }

    /// The names of the nodes that have run, this one left out, in order.
    fn other_nodes(&self, c: &mut Connection) -> RedisResult<Vec<String>> {
        let mut nodes: Vec<String> = redis::cmd("SMEMBERS").arg("zocalo:nodes").query(c)?;
        nodes.retain(|n| *n != self.node);
        nodes.sort();
        Ok(nodes)
    }

    /// Every other live node's sessions, by node name.
    pub fn other_sessions(&self) -> Option<Vec<(String, Vec<SessionView>)>> {
        self.call(|c| {
            let mut out = Vec::new();
            for node in self.other_nodes(c)? {
                let key = format!("zocalo:sessions:{node}");
                let live: bool = redis::cmd("EXISTS").arg(&key).query(c)?;
                if !live {
                    continue;
                }
                let table: HashMap<String, String> = redis::cmd("HGETALL").arg(&key).query(c)?;
                let mut sessions: Vec<SessionView> = table
                    .into_iter()
                    .filter(|(id, _)| id != "-")
                    .filter_map(|(_, json)| serde_json::from_str(&json).ok())
                    .collect();
                sessions.sort_by_key(|s| s.id);
                out.push((node, sessions));
            }
            Ok(out)
        })
    }

    /// Publishes `snapshot(sessions)` (this node as the console shows it) every tick from now on.
    pub fn publish_snapshot(&self, snapshot: Snapshot, reload: crate::sys::shutdown::Reload) {
        let _ = self.snapshot.set(snapshot);
        let _ = self.reload.set(reload);
    }

    /// The other live nodes' console snapshots (JSON), by node name.
    pub fn other_snapshots(&self) -> Option<Vec<(String, String)>> {
        self.call(|c| {
            let mut out = Vec::new();
            for node in self.other_nodes(c)? {
                let json: Option<String> =
                    redis::cmd("GET").arg(format!("zocalo:node:{node}")).query(c)?;
                if let Some(json) = json {
                    out.push((node, json));
                }
            }
            Ok(out)
        })
    }

    /// Asks `node` to `drain`, `undrain` or `reload` (it does within a [`TICK`]).
    pub fn ask(&self, node: &str, what: &str) -> Option<Kick> {
        let key = format!("zocalo:ask:{node}");
        self.call(|c| {
            let live: bool = redis::cmd("EXISTS").arg(format!("zocalo:node:{node}")).query(c)?;
            if !live {
                return Ok(Kick::NoNode);
            }
            redis::pipe()
                .rpush(&key, what)
                .ignore()
                .expire(&key, LEASE.as_secs() as i64)
                .ignore()
                .query::<()>(c)?;
            Ok(Kick::Asked)
        })
    }

    /// The sync loop, to run until `shutdown` (see `models::spawn_service`): releases, the
    /// lease, the session table and kicks. It has a connection of its own (short calls, one
    /// tick a second), so it never waits behind an admission. `in_process`: it runs in this
    /// process (a thread), which then sends it the releases of its permits.
    pub fn sync_service(
        self: &Arc<Self>,
        registry: Arc<Registry>,
        shutdown: Shutdown,
        in_process: bool,
    ) -> impl FnOnce(bool) + Send + 'static {
        let (tx, rx) = mpsc::channel();
        if in_process {
            let _ = self.releases.set(tx.clone());
        }
        let shared = self.clone();
        move |_| {
            // A sender lives as long as the loop, so its receiver only ever times out.
            let _sender = tx;
            shared.sync(&registry, &shutdown, &rx, in_process)
        }
    }

    /// `in_process`: the sync loop runs in the process whose pool the callers use (it keeps
    /// it full); in the `process` model it runs in a process of its own.
    fn sync(
        &self,
        registry: &Registry,
        shutdown: &Shutdown,
        releases: &Receiver<Release>,
        in_process: bool,
    ) {
        let mut conn: Option<Connection> = None;
        let mut failing = false;
        let mut next_tick = Instant::now();
        let mut ticks: u32 = 0;
        while !shutdown.is_triggered() {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match releases.recv_timeout(wait.min(Duration::from_millis(200))) {
                Ok(what) => {
                    // Not connected: the rewrite at the next connection accounts for it.
                    if let Some(c) = conn.as_mut() {
                        if !self.release_now(&what, Some(c)) {
                            conn = None;
                            self.drifted.store(true, Ordering::Release);
                        }
                    }
                    continue;
                }
                Err(RecvTimeoutError::Timeout) if Instant::now() < next_tick => continue,
                Err(_) => {}
            }
            next_tick = Instant::now() + TICK;
            let fresh = conn.is_none();
            if fresh {
                match self.connect() {
                    Ok(c) => conn = Some(c),
                    Err(e) => {
                        if !failing {
                            self.down(&e);
                        }
                        failing = true;
                        continue;
                    }
                }
            }
            let Some(c) = conn.as_mut() else { continue };
            ticks = ticks.wrapping_add(1);
            let rewrite = fresh
                || self.drifted.swap(false, Ordering::AcqRel)
                || ticks.is_multiple_of(REWRITE_EVERY);
            match self.heartbeat(c, registry, rewrite) {
                Ok(()) => {
                    if failing {
                        self.up();
                    }
                    failing = false;
                    if in_process {
                        self.fill();
                    }
                }
                Err(e) => {
                    conn = None;
                    if !failing {
                        self.down(&e);
                    }
                    failing = true;
                }
            }
        }
        // Leaving: the other nodes stop counting and listing this node's sessions at once.
        if let Some(c) = conn.as_mut() {
            let _: RedisResult<()> = redis::pipe()
                .del(self.conn_key())
                .ignore()
                .del(format!("zocalo:sessions:{}", self.node))
                .ignore()
                .del(format!("zocalo:node:{}", self.node))
                .ignore()
                .del(self.seats_key())
                .ignore()
                .query(c);
        }
    }

    /// Does what another node's console asked of this one.
    fn answer_ask(&self, what: &str) {
        if self.reload.get().is_some_and(|reload| carry_out(what, reload)) {
            tracing::warn!(what, "asked by another node's console");
        }
    }

    /// One tick: renew the lease, publish the session table, act on kicks; after a
    /// (re)connection, rewrite this node's counts from its session table.
    fn heartbeat(&self, c: &mut Connection, registry: &Registry, rewrite: bool) -> RedisResult<()> {
        let sessions = registry.sessions();
        let lease = LEASE.as_secs() as i64;
        let (conn_key, table_key) = (self.conn_key(), format!("zocalo:sessions:{}", self.node));
        let seats_key = self.seats_key();
        let mut pipe = redis::pipe();
        pipe.atomic().sadd("zocalo:nodes", &self.node).ignore();
        if rewrite {
            let mut per_ip: HashMap<String, usize> = HashMap::new();
            for s in &sessions {
                if let Some(ip) = crate::state::registry::peer_ip(&s.peer) {
                    *per_ip.entry(ip.to_string()).or_default() += 1;
                }
            }
            pipe.del(&conn_key).ignore().hset(&conn_key, "*", sessions.len()).ignore();
            for (ip, n) in per_ip {
                pipe.hset(&conn_key, ip, n).ignore();
            }
            let mut per_user: HashMap<&str, usize> = HashMap::new();
            for s in sessions.iter().filter(|s| !s.user.is_empty()) {
                *per_user.entry(&s.user).or_default() += 1;
            }
            pipe.del(&seats_key).ignore();
            for (user, n) in per_user {
                pipe.hset(&seats_key, user, n).ignore();
            }
        } else {
            // Created by the first admission if it is not there; never with a count of its own.
            pipe.hset_nx(&conn_key, "*", 0).ignore();
        }
        pipe.expire(&conn_key, lease).ignore().expire(&seats_key, lease).ignore();
        // "-" keeps the table present (and so the node listed) while it has no sessions.
        pipe.del(&table_key).ignore().hset(&table_key, "-", "").ignore();
        for s in &sessions {
            pipe.hset(&table_key, s.id, serde_json::to_string(s).unwrap_or_default()).ignore();
        }
        pipe.expire(&table_key, lease).ignore();
        if let Some(snapshot) = self.snapshot.get() {
            let json = snapshot(&sessions);
            pipe.set_ex(format!("zocalo:node:{}", self.node), json, LEASE.as_secs()).ignore();
        }
        pipe.query::<()>(c)?;
        let kick_key = format!("zocalo:kick:{}", self.node);
        let (ids, _): (Vec<u64>, ()) =
            redis::pipe().atomic().lrange(&kick_key, 0, -1).del(&kick_key).query(c)?;
        for id in ids {
            if registry.kick(id) {
                tracing::info!(id, "session kicked from another node");
            }
        }
        if self.snapshot.get().is_some() {
            let ask_key = format!("zocalo:ask:{}", self.node);
            let (asks, _): (Vec<String>, ()) =
                redis::pipe().atomic().lrange(&ask_key, 0, -1).del(&ask_key).query(c)?;
            for what in asks {
                self.answer_ask(&what);
            }
        }
        Ok(())
    }
}
