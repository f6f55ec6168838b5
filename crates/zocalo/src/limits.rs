//! Limits that span connections: how many sessions in all and per address, and failed-login
//! lock-outs. They live in one place for the whole server (the parent, in the process model),
//! never in each connection's own state.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Connection counters.
#[derive(Debug)]
pub struct Limits {
    max_total: usize,
    max_per_ip: usize,
    state: Mutex<Counts>,
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
    pub fn reply(self) -> &'static [u8] {
        match self {
            Refusal::TooManyConnections => b"421 Too many connections; try again later.\r\n",
            Refusal::TooManyFromAddress => b"421 Too many connections from your address.\r\n",
        }
    }
}

/// A counted connection; dropping it releases the count.
#[derive(Debug)]
pub struct Permit {
    limits: Arc<Limits>,
    ip: IpAddr,
}

impl Limits {
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Limits { max_total, max_per_ip, state: Mutex::new(Counts::default()) })
    }

    /// Counts a new connection from `ip`, or refuses it.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Refusal> {
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
        Ok(Permit { limits: self.clone(), ip })
    }

    /// Connections now counted.
    pub fn active(&self) -> usize {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).total
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

impl Drop for Permit {
    fn drop(&mut self) {
        self.limits.release(self.ip);
    }
}

/// Failed-login accounting per address.
pub trait LoginGuard: Send + Sync {
    fn is_locked(&self, ip: IpAddr) -> bool;
    fn record_failure(&self, ip: IpAddr);
}

/// Locks an address out for `ban` after `max_failures` failed logins within that time.
#[derive(Debug)]
pub struct MemoryGuard {
    max_failures: u32,
    ban: Duration,
    state: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl MemoryGuard {
    pub fn new(max_failures: u32, ban: Duration) -> Self {
        MemoryGuard { max_failures, ban, state: Mutex::new(HashMap::new()) }
    }
}

impl LoginGuard for MemoryGuard {
    fn is_locked(&self, ip: IpAddr) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match s.get(&ip) {
            Some(&(n, since)) if since.elapsed() < self.ban => n >= self.max_failures,
            Some(_) => {
                s.remove(&ip);
                false
            }
            None => false,
        }
    }

    fn record_failure(&self, ip: IpAddr) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if s.len() > 100_000 {
            let ban = self.ban;
            s.retain(|_, (_, since)| since.elapsed() < ban);
        }
        let entry = s.entry(ip).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= self.ban {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
        entry.1 = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_and_per_ip() {
        let limits = Limits::new(3, 2);
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
        let g = MemoryGuard::new(2, Duration::from_secs(60));
        let ip: IpAddr = "::1".parse().unwrap();
        assert!(!g.is_locked(ip));
        g.record_failure(ip);
        assert!(!g.is_locked(ip));
        g.record_failure(ip);
        assert!(g.is_locked(ip));
    }
}
