//! A bound on password hashes at once, across threads and the `process` model's forks.
//!
//! An Argon2 check holds about 19 MiB while it runs. Without a bound, 200 clients that send
//! `PASS` at the same moment (unknown users are hashed too, so timing tells nothing) hold
//! 200 of those buffers, and the lock-out cannot help because none has failed yet. With it,
//! a login waits for a permit and then hashes: memory stays at `permits` buffers, and since
//! the cores are busy anyway, logins are no slower in total.
//!
//! The count lives in memory shared before the first fork and waits on a futex (not a
//! process-private one), so it bounds every child at once. A holder that dies (SIGKILL) would
//! keep its permit, so a wait is bounded: past it the login is refused as unavailable (421)
//! rather than hashed without the bound.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a login waits for a permit before it is refused as unavailable.
const WAIT: Duration = Duration::from_secs(20);

struct Gate {
    in_use: &'static AtomicU32,
    permits: u32,
}

static GATE: OnceLock<Gate> = OnceLock::new();

/// Sets the bound: at most `permits` hashes at once in this process and its later forks. Call
/// before the first fork; without it, hashes are not bounded (the `user` commands).
pub fn init(permits: u32) -> std::io::Result<()> {
    let ptr = crate::ops::shm::map_zeroed(std::mem::size_of::<AtomicU32>())?;
    // SAFETY: the mapping is page-aligned, zeroed (a valid AtomicU32) and never unmapped.
    let in_use = unsafe { &*ptr.cast::<AtomicU32>() };
    let _ = GATE.set(Gate { in_use, permits: permits.max(1) });
    Ok(())
}

/// The default bound: one hash per core, at least two.
pub fn default_permits() -> u32 {
    std::thread::available_parallelism().map_or(2, |n| n.get() as u32).max(2)
}

/// A permit to hash; given back when dropped.
pub struct Permit(Option<&'static AtomicU32>);

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(in_use) = self.0 {
            in_use.fetch_sub(1, Ordering::Release);
            futex_wake(in_use);
        }
    }
}

/// Waits for a permit; `None` if none came within the bound.
pub fn acquire() -> Option<Permit> {
    let Some(gate) = GATE.get() else {
        return Some(Permit(None));
    };
    let deadline = Instant::now() + WAIT;
    loop {
        let now = gate.in_use.load(Ordering::Acquire);
        if now < gate.permits {
            let next = now + 1;
            if gate.in_use.compare_exchange(now, next, Ordering::AcqRel, Ordering::Acquire).is_ok()
            {
                return Some(Permit(Some(gate.in_use)));
            }
            continue;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        futex_wait(gate.in_use, now, left.min(Duration::from_millis(500)));
    }
}

/// Hashes in progress now.
#[cfg(test)]
fn in_use() -> u32 {
    GATE.get().map_or(0, |g| g.in_use.load(Ordering::Relaxed))
}

fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` is a valid, aligned u32 for the duration of the call and `ts` outlives it;
    // FUTEX_WAIT (not _PRIVATE) works on memory shared across processes. A spurious or timed
    // out wake is fine: the caller looks again.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAIT, expected, &ts as *const _);
    }
}

fn futex_wake(word: &AtomicU32) {
    // SAFETY: as above; waking nobody is harmless.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn at_most_the_permits_run_at_once() {
        // The gate is the process's: other tests that hash may hold a permit meanwhile, so the
        // test counts its own holders, and the bound is checked on the gate's count.
        init(2).unwrap();
        let (peak, running) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (peak, running) = (peak.clone(), running.clone());
                std::thread::spawn(move || {
                    let permit = acquire().expect("a permit within the bound");
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    assert!(in_use() <= 2, "never more than the permits");
                    std::thread::sleep(Duration::from_millis(20));
                    running.fetch_sub(1, Ordering::SeqCst);
                    drop(permit);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(peak.load(Ordering::SeqCst), 2);
        // Every permit was given back: both can be held at once again.
        let both = (acquire().expect("a first permit"), acquire().expect("a second permit"));
        assert_eq!(in_use(), 2);
        drop(both);
    }
}
