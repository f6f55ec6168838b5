//! What one slow or dead store may cost the server: a body that trickles is cut off
//! ([`Pace`]), and the part buffers of every upload together hold at most a fixed amount of
//! memory ([`Budget`]).

use std::io;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The least a GET body must bring in each window of the storage's timeout spent waiting for
/// it: 64 KiB, so about 2 KiB/s with the default 30 s. Only the time spent inside reads counts,
/// so a download held back by a slow FTP client (the store's socket waiting for us) is never
/// cut.
pub(crate) const MIN_BYTES_PER_WINDOW: u64 = 64 * 1024;

/// The minimum rate of one body being read; see [`MIN_BYTES_PER_WINDOW`].
pub(crate) struct Pace {
    window: Duration,
    /// Time spent inside reads, and bytes they brought, since the window began.
    waited: Duration,
    got: u64,
}

impl Pace {
    pub(crate) fn new(window: Duration) -> Pace {
        Pace { window, waited: Duration::ZERO, got: 0 }
    }

    /// Counts one read that took `took` and brought `n` bytes; an error once a whole window
    /// of waiting brought less than the minimum.
    pub(crate) fn count(&mut self, took: Duration, n: usize, endpoint: &str) -> io::Result<()> {
        self.waited += took;
        self.got += n as u64;
        if self.waited < self.window {
            return Ok(());
        }
        if self.got < MIN_BYTES_PER_WINDOW {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "S3 storage at {endpoint} sent {} bytes in {} s, under the least allowed \
                     ({} KiB per {} s)",
                    self.got,
                    self.waited.as_secs(),
                    MIN_BYTES_PER_WINDOW / 1024,
                    self.window.as_secs().max(1),
                ),
            ));
        }
        (self.waited, self.got) = (Duration::ZERO, 0);
        Ok(())
    }
}

/// Bytes that the part buffers of all uploads of one storage may hold at once. An upload takes
/// its share as its buffer fills, [`STEP`] at a time, and gives it back when the part has been
/// sent (or dropped); one that finds nothing left waits for a share up to the storage's timeout,
/// then fails with a clear error. So a store that stops answering holds the memory of the
/// budget, not of every upload's parts.
pub(crate) struct Budget {
    limit: u64,
    used: Mutex<u64>,
    freed: Condvar,
}

/// How much of the budget an upload takes at a time.
pub(crate) const STEP: usize = 1 << 20;

impl Budget {
    pub(crate) fn new(limit: u64) -> Arc<Budget> {
        Arc::new(Budget { limit, used: Mutex::new(0), freed: Condvar::new() })
    }

    /// Takes `n` bytes of the budget, waiting up to `wait` for them.
    pub(crate) fn take(self: &Arc<Self>, n: u64, wait: Duration) -> io::Result<Share> {
        let deadline = Instant::now() + wait;
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        // A single share larger than the whole budget (a budget under one part) is let through
        // alone, so that it cannot wait for ever.
        while *used > 0 && *used + n > self.limit {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::OutOfMemory,
                    format!(
                        "uploads to object storage hold all the memory allowed them ({} MiB, \
                         --s3-upload-memory); try again later",
                        self.limit >> 20
                    ),
                ));
            }
            used = self.freed.wait_timeout(used, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        *used += n;
        Ok(Share { budget: self.clone(), bytes: n })
    }

    #[cfg(test)]
    fn used(&self) -> u64 {
        *self.used.lock().unwrap()
    }
}

/// A part of the budget, given back when dropped.
pub(crate) struct Share {
    budget: Arc<Budget>,
    bytes: u64,
}

impl Share {
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Adds `other` to this share.
    pub(crate) fn join(&mut self, mut other: Share) {
        self.bytes += std::mem::take(&mut other.bytes);
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        if self.bytes == 0 {
            return;
        }
        let mut used = self.budget.used.lock().unwrap_or_else(|e| e.into_inner());
        *used -= self.bytes;
        drop(used);
        self.budget.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trickle_is_cut_after_one_window_of_waiting() {
        let window = Duration::from_secs(30);
        let mut pace = Pace::new(window);
        // A fast body never trips it, however long it runs.
        for _ in 0..100 {
            pace.count(Duration::from_secs(1), 1 << 20, "h:1").unwrap();
        }
        // One byte every 20 s: cut at the second read.
        let mut pace = Pace::new(window);
        pace.count(Duration::from_secs(20), 1, "h:1").unwrap();
        let err = pace.count(Duration::from_secs(20), 1, "h:1").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("sent 2 bytes in 40 s"), "{err}");
    }

    #[test]
    fn the_budget_waits_then_refuses_and_shares_come_back() {
        let budget = Budget::new(2 << 20);
        let a = budget.take(1 << 20, Duration::ZERO).unwrap();
        let mut b = budget.take(1 << 20, Duration::ZERO).unwrap();
        let err = budget.take(1 << 20, Duration::from_millis(20)).err().unwrap();
        assert_eq!(err.kind(), io::ErrorKind::OutOfMemory);
        drop(a);
        let c = budget.take(1 << 20, Duration::ZERO).unwrap();
        b.join(c);
        assert_eq!((b.bytes(), budget.used()), (2 << 20, 2 << 20));
        // A waiter gets its share as soon as another gives one back.
        let waiter = {
            let budget = budget.clone();
            std::thread::spawn(move || budget.take(1 << 20, Duration::from_secs(10)).map(drop))
        };
        drop(b);
        waiter.join().unwrap().unwrap();
        assert_eq!(budget.used(), 0);
        // A share larger than the budget passes when it is alone.
        drop(budget.take(8 << 20, Duration::ZERO).unwrap());
    }
}
