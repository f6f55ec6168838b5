//! Sessions at once per account (`max_sessions`), counted across threads and the `process`
//! model's forks: a table in memory shared before the first fork, one atomic word per account,
//! its high 40 bits a hash of the name and its low 24 bits the count. Taking a seat is one
//! compare-and-swap that checks the name and the limit together; a slot whose count is 0 may
//! be taken over by another name with the same one swap, so the table never fills with names
//! no longer logged in. Two names whose hashes agree in 40 bits share a count (a refusal too
//! many). Two first logins of a name at the very same moment may claim two slots, and that name
//! may then have up to twice its sessions until both counts drop to 0.
//!
//! A seat is given back when the session's account is dropped (logout, REIN, the connection's
//! end). A `process` child killed outright (SIGKILL at the end of the grace period) keeps its
//! seats until the server restarts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Accounts with sessions at once, at most.
const SLOTS: usize = 4096;
const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;

static TABLE: OnceLock<&'static [AtomicU64]> = OnceLock::new();

/// Maps the table; call before the first fork. Without it (the `user` commands, unit tests) a
/// table private to the process is used.
pub fn init() -> std::io::Result<()> {
    let size = SLOTS * std::mem::size_of::<AtomicU64>();
    let ptr = crate::ops::shm::map_zeroed(size)?;
    // SAFETY: the mapping is page-aligned, zeroed (valid AtomicU64s), SLOTS long and never
    // unmapped.
    let table = unsafe { std::slice::from_raw_parts(ptr.cast::<AtomicU64>(), SLOTS) };
    let _ = TABLE.set(table);
    Ok(())
}

fn table() -> &'static [AtomicU64] {
    TABLE.get_or_init(|| Box::leak((0..SLOTS).map(|_| AtomicU64::new(0)).collect()))
}

/// One session's seat; given back when dropped.
#[derive(Debug)]
pub struct Seat(&'static AtomicU64);

impl Drop for Seat {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A hash of `name` in the high bits, never 0 (a free slot).
fn tag(name: &str) -> u64 {
    // FNV-1a: stable across processes (the table is shared), and names are short.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.as_bytes() {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    (h << COUNT_BITS).max(1 << COUNT_BITS)
}

/// Takes a seat for `name` if it has fewer than `max` sessions now; `None` if it has `max`
/// (or the table is full of accounts with sessions).
pub fn take(name: &str, max: u32) -> Option<Seat> {
    let table = table();
    let tag = tag(name);
    let start = (tag >> COUNT_BITS) as usize % SLOTS;
    let max = u64::from(max).min(COUNT_MASK);
    // The account's own slot, if it has one, comes first in its probe sequence up to the
    // first free one; a free slot is claimed only when no slot of its own was met.
    let mut free = None;
    for i in 0..SLOTS {
        let slot = &table[(start + i) % SLOTS];
        let mut word = slot.load(Ordering::Acquire);
        loop {
            let (owner, count) = (word & !COUNT_MASK, word & COUNT_MASK);
            if owner == tag {
                if count >= max {
                    return None;
                }
                match slot.compare_exchange(word, word + 1, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => return Some(Seat(slot)),
                    Err(now) => {
                        word = now;
                        continue;
                    }
                }
            }
            if count == 0 && free.is_none() {
                free = Some(slot);
            }
            break;
        }
        if word == 0 {
            break; // never used: the account's slot is not further on
        }
    }
    let slot = free?;
    if max == 0 {
        return None;
    }
    let word = slot.load(Ordering::Acquire);
    if word & COUNT_MASK == 0
        && slot.compare_exchange(word, tag | 1, Ordering::AcqRel, Ordering::Acquire).is_ok()
    {
        return Some(Seat(slot));
    }
    // Lost the slot to another login meanwhile: look again.
    take(name, max as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seats_are_counted_per_name_and_given_back() {
        let a: Vec<Seat> = (0..3).map(|_| take("seats-alice", 3).unwrap()).collect();
        assert!(take("seats-alice", 3).is_none(), "a fourth session is refused");
        let b = take("seats-bob", 1).unwrap();
        assert!(take("seats-bob", 1).is_none());
        drop(a);
        assert!(take("seats-alice", 1).is_some(), "seats come back when dropped");
        drop(b);
        let again = take("seats-bob", 1);
        assert!(again.is_some());
        assert!(take("seats-carol", 0).is_none(), "max 0: no session");
    }
}
