//! The last events of the node (logins accepted and refused, lock-outs, transfers, refusals,
//! console actions), for the web console: a ring of [`SLOTS`] fixed slots in a shared mapping
//! made before any fork, so every process of the `process` model writes where the console
//! reads.
//!
//! A writer takes the next sequence number `n` (one atomic add) and owns slot `n % SLOTS`: it
//! marks the slot's stamp odd (`2n + 1`), writes the fields, then marks it `2n + 2`. A reader
//! takes a slot only if its stamp is `2n + 2` before and after reading it, so it never sees a
//! half-written event, and an event overwritten meanwhile is skipped, not garbled.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use serde::Serialize;

use crate::ops::shm;

/// Events kept.
pub const SLOTS: usize = 256;
const TEXT_WORDS: usize = 30;

#[repr(C)]
struct Slot {
    stamp: AtomicU64,
    at_ms: AtomicU64,
    /// `kind \t user \t peer \t detail`, NUL-padded.
    text: [AtomicU64; TEXT_WORDS],
}

struct Ring {
    next: &'static AtomicU64,
    slots: &'static [Slot],
}

static RING: OnceLock<Ring> = OnceLock::new();

/// One event as the console shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct EventView {
    pub seq: u64,
    pub at_ms: u64,
    pub kind: String,
    pub user: String,
    pub peer: String,
    pub detail: String,
}

/// Maps the ring (before any fork); events recorded before are dropped.
pub fn init() -> std::io::Result<()> {
    if RING.get().is_some() {
        return Ok(());
    }
    let size = 64 + SLOTS * std::mem::size_of::<Slot>();
    let ptr = crate::ops::shm::map_zeroed(size)?;
    // SAFETY: the mapping is zeroed (valid atomics), page-aligned, `size` bytes, never
    // unmapped, and only accessed through these atomics.
    let ring = unsafe {
        Ring {
            next: &*ptr.cast::<AtomicU64>(),
            slots: std::slice::from_raw_parts(ptr.add(64).cast::<Slot>(), SLOTS),
        }
    };
    let _ = RING.set(ring);
    Ok(())
}

/// Records an event (nothing if the ring was never mapped: no console).
pub fn record(kind: &str, user: &str, peer: &str, detail: &str) {
    let Some(ring) = RING.get() else {
        return;
    };
    let n = ring.next.fetch_add(1, Ordering::AcqRel);
    let slot = &ring.slots[(n % SLOTS as u64) as usize];
    let joined = format!("{kind}\t{user}\t{peer}\t{detail}");
    slot.stamp.store(2 * n + 1, Ordering::Release);
    slot.at_ms.store(crate::ops::status::now_ms(), Ordering::Relaxed);
    shm::store_text(&slot.text, &joined);
    slot.stamp.store(2 * n + 2, Ordering::Release);
}

/// The last `max` events, newest first.
pub fn last(max: usize) -> Vec<EventView> {
    let Some(ring) = RING.get() else {
        return Vec::new();
    };
    let next = ring.next.load(Ordering::Acquire);
    let first = next.saturating_sub(max.min(SLOTS) as u64);
    (first..next).rev().filter_map(|n| read(ring, n)).collect()
}

fn read(ring: &Ring, n: u64) -> Option<EventView> {
    let slot = &ring.slots[(n % SLOTS as u64) as usize];
    if slot.stamp.load(Ordering::Acquire) != 2 * n + 2 {
        return None;
    }
    let at_ms = slot.at_ms.load(Ordering::Relaxed);
    let text = shm::load_text(&slot.text);
    if slot.stamp.load(Ordering::Acquire) != 2 * n + 2 {
        return None;
    }
    let mut parts = text.splitn(4, '\t').map(str::to_string);
    let mut next = || parts.next().unwrap_or_default();
    Some(EventView { seq: n, at_ms, kind: next(), user: next(), peer: next(), detail: next() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_first_and_the_oldest_overwritten() {
        init().unwrap();
        for i in 0..SLOTS + 5 {
            record("login", &format!("u{i}"), "127.0.0.1:1", "accepted");
        }
        let events = last(3);
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].user, format!("u{}", SLOTS + 4));
        assert_eq!(events[2].user, format!("u{}", SLOTS + 2));
        assert_eq!(events[0].detail, "accepted");
        assert_eq!(last(10_000).len(), SLOTS, "the ring holds SLOTS events");
        record("x", &"ñ".repeat(400), "", "");
        assert!(last(1)[0].user.starts_with("ññ"), "cut on a character boundary");
    }
}
