//! Limits that span connections: how many sessions in all and per address, and failed-login
//! lock-outs. They live in one place for the whole server (the parent, in the process model),
//! never in each connection's own state.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::state::shared::{Full, Shared};

/// Connection counters.
#[derive(Debug)]
pub struct Limits {
    max_total: usize,
    max_per_ip: usize,
    state: Mutex<Counts>,
    /// `--shared-state`: the counts across every node, checked after the local ones.
    shared: Option<Arc<Shared>>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Why a connection was turned away; the text goes into its 421.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    TooManyConnections,
    TooManyFromAddress,
}

impl Refusal {
    /// The cause for the logs and metrics.
    pub fn cause(self) -> crate::ops::observe::Refused {
        match self {
            Refusal::TooManyConnections => crate::ops::observe::Refused::MaxConnections,
            Refusal::TooManyFromAddress => crate::ops::observe::Refused::MaxPerIp,
        }
    }

    pub fn reply(self) -> zocalo_proto::reply::Reply<'static> {
        use zocalo_proto::reply::Reply;
        match self {
            Refusal::TooManyConnections => {
                Reply::new(421, "Too many connections; try again later.")
            }
            Refusal::TooManyFromAddress => {
                Reply::new(421, "Too many connections from your address.")
            }
        }
    }
}

/// A counted connection; dropping it releases the count.
#[derive(Debug)]
pub struct Permit {
    limits: Arc<Limits>,
    ip: IpAddr,
    /// Counted in the shared state too.
    shared: bool,
    /// Counted at all (a balancer's health check is not).
    counted: bool,
}

impl Limits {
    pub fn new(max_total: usize, max_per_ip: usize, shared: Option<Arc<Shared>>) -> Arc<Self> {
        Arc::new(Limits { max_total, max_per_ip, state: Mutex::new(Counts::default()), shared })
    }

    /// A permit that counts nothing: a trusted balancer's health check (a PROXY `LOCAL`
    /// header) is served without taking a client's place.
    pub fn exempt(self: &Arc<Self>, ip: IpAddr) -> Permit {
        Permit { limits: self.clone(), ip, shared: false, counted: false }
    }

    /// Whether [`admit`](Self::admit) asks Redis (a network call: the event loop hands it to a
    /// worker).
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Counts a new connection from `ip` here and, with `--shared-state`, across the cluster
    /// (when Redis answers; else the local count decides alone), or refuses it.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Refusal> {
        let ip = ip.to_canonical();
        let mut permit = self.admit_here(ip)?;
        if let Some(shared) = &self.shared {
            match shared.admit(ip) {
                Some(Ok(())) => permit.shared = true,
                Some(Err(Full::Cluster)) => return Err(Refusal::TooManyConnections),
                Some(Err(Full::Address)) => return Err(Refusal::TooManyFromAddress),
                None => {}
            }
        }
        Ok(permit)
    }

    fn admit_here(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Refusal> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.total >= self.max_total {
            return Err(Refusal::TooManyConnections);
        }
        let n = s.per_ip.entry(ip).or_default();
        if *n >= self.max_per_ip {
            return Err(Refusal::TooManyFromAddress);
        }
        *n += 1;
        s.total += 1;
        Ok(Permit { limits: self.clone(), ip, shared: false, counted: true })
    }

    fn release(&self, ip: IpAddr) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.total = s.total.saturating_sub(1);
        if let Some(n) = s.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                s.per_ip.remove(&ip);
            }
        }
    }
}

impl Permit {
    /// Drops the permit without releasing anything: a `process`-model child's copy of its
    /// parent's permit, which the parent releases when it reaps the child.
    pub fn forget(self) {
        std::mem::forget(self);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.counted {
            return;
        }
        self.limits.release(self.ip);
        if let (true, Some(shared)) = (self.shared, &self.limits.shared) {
            shared.release(self.ip);
        }
    }
}

/// Failed-login accounting per address.
pub trait LoginGuard: Send + Sync {
    fn is_locked(&self, ip: IpAddr) -> bool;
    fn record_failure(&self, ip: IpAddr);
}

/// Locks an address out for `ban` after `max_failures` failed logins within that time.
///
/// The table lives in an anonymous shared mapping made before any fork, so failures counted by
/// one `process`-model child lock the address out for all of them (pyftpdlib's bug #436 is
/// counting per child). Buckets are found by hashing the address, with a short linear probe;
/// when the probe finds no room the oldest entry it saw is reused. Every field is an atomic.
pub struct SharedGuard {
    buckets: *const Bucket,
    len: usize,
    max_failures: u32,
    ban: Duration,
    epoch: Instant,
}

// SAFETY: the mapping is only accessed through atomics and lives as long as the guard.
unsafe impl Send for SharedGuard {}
// SAFETY: as above.
unsafe impl Sync for SharedGuard {}

#[repr(C)]
struct Bucket {
    /// The address as 16 bytes (IPv4 mapped), in two words; all zero when free.
    addr: [AtomicU64; 2],
    failures: AtomicU32,
    /// Milliseconds since `epoch` of the last failure.
    last: AtomicU64,
}

const PROBES: usize = 8;

impl SharedGuard {
    pub fn new(max_failures: u32, ban: Duration) -> std::io::Result<Self> {
        let len = 4096;
        let size = len * std::mem::size_of::<Bucket>();
        let ptr = crate::ops::shm::map_zeroed(size)?;
        let epoch = Instant::now();
        Ok(SharedGuard { buckets: ptr.cast(), len, max_failures, ban, epoch })
    }

    fn bucket(&self, i: usize) -> &Bucket {
        // SAFETY: `i % len` is inside the mapping, which outlives `self`.
        unsafe { &*self.buckets.add(i % self.len) }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    fn find(&self, key: [u64; 2]) -> Option<&Bucket> {
        let start = hash(key);
        (0..PROBES).map(|p| self.bucket(start + p)).find(|b| words(b) == key)
    }

    fn claim(&self, key: [u64; 2]) -> &Bucket {
        if let Some(b) = self.find(key) {
            return b;
        }
        let start = hash(key);
        let oldest = (0..PROBES)
            .map(|p| self.bucket(start + p))
            .min_by_key(|b| if words(b) == [0, 0] { 0 } else { b.last.load(Ordering::Relaxed) })
            .unwrap_or_else(|| self.bucket(start));
        oldest.failures.store(0, Ordering::Relaxed);
        oldest.addr[0].store(key[0], Ordering::Relaxed);
        oldest.addr[1].store(key[1], Ordering::Relaxed);
        oldest
    }
}

fn key(ip: IpAddr) -> [u64; 2] {
    let bytes = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    let (hi, lo) = bytes.split_at(8);
    [
        u64::from_be_bytes(hi.try_into().unwrap_or([0; 8])),
        u64::from_be_bytes(lo.try_into().unwrap_or([0; 8])),
    ]
}

fn words(b: &Bucket) -> [u64; 2] {
    [b.addr[0].load(Ordering::Relaxed), b.addr[1].load(Ordering::Relaxed)]
}

fn hash(key: [u64; 2]) -> usize {
    let h = (key[0] ^ key[1].rotate_left(29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (h >> 32) as usize
}

impl LoginGuard for SharedGuard {
    fn is_locked(&self, ip: IpAddr) -> bool {
        let Some(b) = self.find(key(ip)) else {
            return false;
        };
        let age = self.now_ms().saturating_sub(b.last.load(Ordering::Relaxed));
        age < self.ban.as_millis() as u64 && b.failures.load(Ordering::Relaxed) >= self.max_failures
    }

    fn record_failure(&self, ip: IpAddr) {
        let b = self.claim(key(ip));
        let now = self.now_ms();
        if now.saturating_sub(b.last.load(Ordering::Relaxed)) >= self.ban.as_millis() as u64 {
            b.failures.store(0, Ordering::Relaxed);
        }
        let failures = b.failures.fetch_add(1, Ordering::Relaxed) + 1;
        b.last.store(now, Ordering::Relaxed);
        if failures == self.max_failures {
            crate::ops::metrics::inc(crate::ops::metrics::Counter::LockOuts);
            let secs = self.ban.as_secs();
            tracing::warn!(address = %ip, failures, secs, "address locked out after failed logins");
            let detail = format!("{failures} failed logins: locked out for {secs} s");
            crate::ops::recent::record("lockout", "", &ip.to_string(), &detail);
        }
    }
}

/// Lock-outs with `--shared-state`: the local table always counts (it decides alone while Redis
/// does not answer), and an address locked out on any node is locked out here.
pub struct ClusterGuard {
    pub local: SharedGuard,
    pub shared: Arc<Shared>,
}

impl LoginGuard for ClusterGuard {
    fn is_locked(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.local.is_locked(ip) || self.shared.is_locked(ip).unwrap_or(false)
    }

    fn record_failure(&self, ip: IpAddr) {
        let ip = ip.to_canonical();
        self.local.record_failure(ip);
        if self.shared.record_failure(ip) == Some(true) {
            tracing::warn!(address = %ip, "address locked out on every node of the cluster");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_and_per_ip() {
        let limits = Limits::new(3, 2, None);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let p1 = limits.admit(a).unwrap();
        let _p2 = limits.admit(a).unwrap();
        assert_eq!(limits.admit(a).unwrap_err(), Refusal::TooManyFromAddress);
        let _p3 = limits.admit(b).unwrap();
        assert_eq!(limits.admit(b).unwrap_err(), Refusal::TooManyConnections);
        drop(p1);
        assert!(limits.admit(a).is_ok());
    }

    #[test]
    fn lockout_after_failures() {
        let g = SharedGuard::new(2, Duration::from_secs(60)).unwrap();
        let ip: IpAddr = "::1".parse().unwrap();
        assert!(!g.is_locked(ip));
        g.record_failure(ip);
        assert!(!g.is_locked(ip));
        g.record_failure(ip);
        assert!(g.is_locked(ip));
        assert!(!g.is_locked("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn lockout_is_shared_with_a_forked_child() {
        let g = SharedGuard::new(1, Duration::from_secs(60)).unwrap();
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        // SAFETY: the child only records a failure in the shared table and exits.
        match unsafe { libc::fork() } {
            0 => {
                g.record_failure(ip);
                unsafe { libc::_exit(0) }
            }
            pid => {
                let mut status = 0;
                unsafe { libc::waitpid(pid, &mut status, 0) };
            }
        }
        assert!(g.is_locked(ip), "the parent sees the child's failure");
    }
}
