//! The table of live sessions that `zocalo ctl status` reads and `kick` acts on.
//!
//! It is a fixed array of slots in an anonymous shared mapping created before any fork, so the
//! `process` model's children write their sessions where the parent (which answers the admin
//! socket) can read them. Each slot has one writer, the session's own driver, which publishes
//! with a sequence counter (odd while writing); readers retry until they see an even, unchanged
//! counter. Every field is an atomic, so there are no data races even across processes.
//!
//! A kick marks the slot and shuts down the reading side of the control socket: the driver sees
//! end-of-file, notices the mark, says `421` and closes. In the `process` model the parent
//! cannot reach the child's socket, so it sends SIGUSR1 and the child does the shutdown itself.

use std::fmt::Write as _;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use crate::ops::shm::{load_text, store_text};

const TEXT_WORDS: usize = 22;
const TEXT_BYTES: usize = TEXT_WORDS * 8;

/// One session's published state (256 bytes).
#[repr(C)]
struct Slot {
    seq: AtomicU32,
    kick: AtomicU32,
    id: AtomicU64,
    pid: AtomicI32,
    fd: AtomicI32,
    bytes: AtomicU64,
    /// The running transfer's size plus one (0: unknown or none).
    total: AtomicU64,
    /// When the running transfer started, in milliseconds since the Unix epoch (0: none).
    started_ms: AtomicU64,
    /// When the client last did something, in milliseconds since the Unix epoch.
    active_ms: AtomicU64,
    /// The last command's verb, up to 8 ASCII bytes, NUL-padded.
    verb: AtomicU64,
    /// `peer \t user \t transfer`, NUL-padded.
    text: [AtomicU64; TEXT_WORDS],
}

/// The shared slot table. Session ids come from the metrics table's session counter, which
/// lives in a shared mapping too, so ids stay unique across the processes of the `process`
/// model and match the ids in the log lines.
pub struct Registry {
    /// Where the next claim starts looking: just past the slot claimed last (a word of the
    /// mapping's header, shared by the processes of the `process` model).
    cursor: *const AtomicU64,
    slots: *mut Slot,
    len: usize,
}

const HEADER: usize = 64;

// SAFETY: all access to the mapping goes through atomics; the mapping lives as long as the
// registry (it is never unmapped while a process uses it).
unsafe impl Send for Registry {}
// SAFETY: as above.
unsafe impl Sync for Registry {}

/// A session's hold on its slot; frees it when dropped.
pub struct Entry {
    registry: Arc<Registry>,
    index: Option<usize>,
}

/// What a reader sees of one session.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct SessionView {
    pub id: u64,
    pub pid: i32,
    pub peer: String,
    pub user: String,
    /// The running transfer, `VERB PATH` ("" when none).
    pub transfer: String,
    pub bytes: u64,
    /// The running transfer's size, when known.
    #[serde(default)]
    pub total: Option<u64>,
    /// When the running transfer started, ms since the Unix epoch (0: none).
    #[serde(default)]
    pub started_ms: u64,
    /// When the client last did something, ms since the Unix epoch.
    #[serde(default)]
    pub active_ms: u64,
    /// The last command's verb.
    #[serde(default)]
    pub command: String,
}

pub use crate::ops::status::now_ms;

static KICK_FD: AtomicI32 = AtomicI32::new(-1);

impl Registry {
    /// Maps room for `len` sessions (shared with forked children).
    pub fn new(len: usize) -> io::Result<Self> {
        let len = len.clamp(1, 65_536);
        let size = HEADER + len * std::mem::size_of::<Slot>();
        let ptr = crate::ops::shm::map_zeroed(size)?;
        // SAFETY: the slots start HEADER bytes into the mapping, which is page-aligned and
        // `size` bytes long.
        let slots = unsafe { ptr.cast::<u8>().add(HEADER).cast::<Slot>() };
        // The header's first word: zeroed, aligned, never otherwise used.
        let cursor = ptr.cast::<AtomicU64>().cast_const();
        Ok(Registry { cursor, slots, len })
    }

    fn slot(&self, i: usize) -> &Slot {
        // SAFETY: `i < len`, inside the mapping, which outlives `self`.
        unsafe { &*self.slots.add(i) }
    }

    /// Claims a free slot for a new session (none when the table is full: the session runs
    /// but is not listed). The search starts past the slot claimed last and wraps: sessions
    /// come and go in roughly the order they came, so the slots ahead of the cursor are
    /// mostly free and a claim looks at one or two, where a search from slot 0 stepped over
    /// every session still open.
    pub fn enter(self: &Arc<Self>, fd: RawFd, peer: &str, id: u64) -> Entry {
        // SAFETY: the cursor points into the mapping, which outlives `self`.
        let cursor = unsafe { &*self.cursor };
        let start = cursor.load(Ordering::Relaxed) as usize % self.len;
        for i in (start..self.len).chain(0..start) {
            let slot = self.slot(i);
            if slot.id.compare_exchange(0, id, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                slot.kick.store(0, Ordering::Relaxed);
                // SAFETY: getpid has no preconditions.
                slot.pid.store(unsafe { libc::getpid() }, Ordering::Relaxed);
                for field in [&slot.total, &slot.started_ms, &slot.verb] {
                    field.store(0, Ordering::Relaxed);
                }
                slot.active_ms.store(now_ms(), Ordering::Relaxed);
                slot.fd.store(fd, Ordering::Release);
                cursor.store((i + 1) as u64, Ordering::Relaxed);
                let entry = Entry { registry: self.clone(), index: Some(i) };
                entry.publish(peer, "", "", 0);
                return entry;
            }
        }
        Entry { registry: self.clone(), index: None }
    }

    /// Every session now listed.
    pub fn sessions(&self) -> Vec<SessionView> {
        let mut all: Vec<SessionView> = (0..self.len).filter_map(|i| self.read(i)).collect();
        // Slots are claimed round the table: list the sessions in the order they came.
        all.sort_unstable_by_key(|v| v.id);
        all
    }

    fn read(&self, i: usize) -> Option<SessionView> {
        let slot = self.slot(i);
        for _ in 0..100 {
            let before = slot.seq.load(Ordering::Acquire);
            let id = slot.id.load(Ordering::Acquire);
            if id == 0 {
                return None;
            }
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let text = load_text(&slot.text);
            let (pid, bytes) =
                (slot.pid.load(Ordering::Relaxed), slot.bytes.load(Ordering::Relaxed));
            let total = slot.total.load(Ordering::Relaxed).checked_sub(1);
            let started_ms = slot.started_ms.load(Ordering::Relaxed);
            let verb = load_text(std::slice::from_ref(&slot.verb));
            if slot.seq.load(Ordering::Acquire) == before {
                let mut v = view(id, pid, bytes, &text);
                v.command = verb;
                v.active_ms = slot.active_ms.load(Ordering::Relaxed);
                (v.total, v.started_ms) = (total, started_ms);
                return Some(v);
            }
        }
        None
    }

    /// Asks session `id` to leave. False if no such session is listed. Id 0 marks a free slot
    /// and never names a session; a slot whose process is gone is never signalled.
    pub fn kick(&self, id: u64) -> bool {
        if id == 0 {
            return false;
        }
        for i in 0..self.len {
            let slot = self.slot(i);
            if slot.id.load(Ordering::Acquire) != id {
                continue;
            }
            let pid = slot.pid.load(Ordering::Relaxed);
            if pid <= 0 {
                return false;
            }
            slot.kick.store(1, Ordering::Release);
            // SAFETY: getpid has no preconditions.
            if pid != unsafe { libc::getpid() } {
                // SAFETY: signalling a child of ours that serves this session.
                return unsafe { libc::kill(pid, libc::SIGUSR1) } == 0;
            }
            let fd = slot.fd.load(Ordering::Acquire);
            if fd < 0 || slot.id.load(Ordering::Acquire) != id {
                return false;
            }
            // SAFETY: a session frees its slot before it closes its socket, and the id was
            // checked just now; in the narrow race where the session ends in between, the
            // worst case is a spurious SHUT_RD on a recycled descriptor.
            unsafe { libc::shutdown(fd, libc::SHUT_RD) };
            return true;
        }
        false
    }

    /// Frees every slot held by process `pid`, which has exited (the `process` model's parent
    /// calls this as it reaps a child): a child killed before it could free its slot leaves no
    /// phantom session, and its pid, which the system may reuse, is never signalled.
    pub fn release_pid(&self, pid: i32) {
        for i in 0..self.len {
            let slot = self.slot(i);
            if slot.id.load(Ordering::Acquire) != 0 && slot.pid.load(Ordering::Relaxed) == pid {
                slot.pid.store(0, Ordering::Relaxed);
                slot.fd.store(-1, Ordering::Relaxed);
                slot.id.store(0, Ordering::Release);
            }
        }
    }
}

impl SessionView {
    /// The session's `ctl status` line on node `node`.
    pub fn line(&self, node: &str) -> String {
        let user = if self.user.is_empty() { "-" } else { &self.user };
        let transfer = if self.transfer.is_empty() { "-" } else { &self.transfer };
        format!(
            "session id={} node={node} pid={} peer={} user={user} transfer={transfer:?} bytes={}",
            self.id, self.pid, self.peer, self.bytes
        )
    }
}

/// The address part of a published peer (`IP:PORT`, `[IPv6]:PORT`).
pub fn peer_ip(peer: &str) -> Option<std::net::IpAddr> {
    peer.parse::<std::net::SocketAddr>().ok().map(|a| a.ip().to_canonical())
}

fn view(id: u64, pid: i32, bytes: u64, text: &str) -> SessionView {
    let mut parts = text.splitn(3, '\t');
    let mut next = || parts.next().unwrap_or("").to_string();
    let (peer, user, transfer) = (next(), next(), next());
    SessionView { id, pid, peer, user, transfer, bytes, ..SessionView::default() }
}

impl Entry {
    /// True once an administrator asked this session to leave.
    pub fn kicked(&self) -> bool {
        self.index.is_some_and(|i| self.registry.slot(i).kick.load(Ordering::Acquire) != 0)
    }

    /// Publishes the session's state (one writer per slot).
    pub fn publish(&self, peer: &str, user: &str, transfer: &str, bytes: u64) {
        let Some(i) = self.index else {
            return;
        };
        let slot = self.registry.slot(i);
        let mut joined = String::with_capacity(TEXT_BYTES);
        let _ = write!(joined, "{peer}\t{user}\t{transfer}");
        let seq = slot.seq.fetch_add(1, Ordering::AcqRel);
        store_text(&slot.text, &joined);
        slot.bytes.store(bytes, Ordering::Relaxed);
        slot.seq.store(seq.wrapping_add(2) & !1, Ordering::Release);
    }

    /// Publishes the running transfer's size and start (after [`Entry::publish`] named it).
    pub fn transfer_started(&self, total: Option<u64>, started_ms: u64) {
        if let Some(i) = self.index {
            let slot = self.registry.slot(i);
            slot.total.store(total.map_or(0, |t| t.saturating_add(1)), Ordering::Relaxed);
            slot.started_ms.store(started_ms, Ordering::Relaxed);
        }
    }

    /// Publishes the last command's verb and when the client was last active.
    pub fn activity(&self, verb: &str, active_ms: u64) {
        if let Some(i) = self.index {
            let slot = self.registry.slot(i);
            store_text(std::slice::from_ref(&slot.verb), verb);
            slot.active_ms.store(active_ms, Ordering::Relaxed);
        }
    }

    /// Publishes only the byte count of the running transfer.
    pub fn progress(&self, bytes: u64) {
        if let Some(i) = self.index {
            self.registry.slot(i).bytes.store(bytes, Ordering::Relaxed);
        }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        if let Some(i) = self.index {
            let slot = self.registry.slot(i);
            slot.fd.store(-1, Ordering::Relaxed);
            slot.pid.store(0, Ordering::Relaxed);
            slot.id.store(0, Ordering::Release);
        }
    }
}

/// In a `process` child: SIGUSR1 shuts down the reading side of this control socket.
pub fn install_child_kick(fd: RawFd) {
    KICK_FD.store(fd, Ordering::SeqCst);
    let _ = crate::sys::shutdown::set_handler(libc::SIGUSR1, on_kick, 0);
}

extern "C" fn on_kick(_sig: libc::c_int) {
    let fd = KICK_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: shutdown(2) is async-signal-safe.
        unsafe { libc::shutdown(fd, libc::SHUT_RD) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_read_and_release() {
        let r = Arc::new(Registry::new(2).unwrap());
        let a = r.enter(-1, "127.0.0.1:5", 1);
        a.publish("127.0.0.1:5", "alice", "RETR /x", 10);
        let (sock, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let b = r.enter(std::os::fd::AsRawFd::as_raw_fd(&sock), "[::1]:6", 2);
        let c = r.enter(-1, "no room", 3);
        assert!(c.index.is_none());
        let list = r.sessions();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].user, "alice");
        assert_eq!(list[0].transfer, "RETR /x");
        assert_eq!(list[0].bytes, 10);
        assert_eq!(list[1].peer, "[::1]:6");
        drop(a);
        assert_eq!(r.sessions().len(), 1);
        assert!(!b.kicked());
        assert!(r.kick(2));
        assert!(b.kicked());
        assert!(!r.kick(9999));
        assert!(!r.kick(0), "id 0 is a free slot, never a session");
        // SAFETY: getpid has no preconditions.
        r.release_pid(unsafe { libc::getpid() });
        assert!(r.sessions().is_empty() && !r.kick(2), "released slots are gone");
    }

    #[test]
    fn claims_go_round_the_table() {
        let r = Arc::new(Registry::new(3).unwrap());
        let index = |e: &Entry| e.index.unwrap();
        let (a, b) = (r.enter(-1, "a", 1), r.enter(-1, "b", 2));
        assert_eq!((index(&a), index(&b)), (0, 1));
        drop(a);
        // Past the cursor first, then round to the slot freed at the start.
        let c = r.enter(-1, "c", 3);
        let d = r.enter(-1, "d", 4);
        assert_eq!((index(&c), index(&d)), (2, 0));
        assert!(r.enter(-1, "full", 5).index.is_none());
        let ids: Vec<u64> = r.sessions().iter().map(|v| v.id).collect();
        assert_eq!(ids, [2, 3, 4], "listed in the order they came");
        drop((b, c, d));
    }

    #[test]
    fn long_text_is_cut_on_a_char_boundary() {
        let r = Arc::new(Registry::new(1).unwrap());
        let e = r.enter(-1, "p", 4);
        e.publish("p", "ü", &"ñ".repeat(300), 0);
        let v = &r.sessions()[0];
        assert!(v.transfer.starts_with("ññ"));
        assert!(v.transfer.len() < TEXT_BYTES);
    }
}
