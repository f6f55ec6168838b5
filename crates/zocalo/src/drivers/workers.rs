//! The event loop's worker threads. Storage and authentication calls ([`Work`]) run here,
//! never on the loop's thread, the way nginx's `thread_pool` and libuv's threadpool take
//! blocking calls off their loops. A finished job is queued with its connection's [`Key`] and
//! the loop is woken through an eventfd that its poller watches.
//!
//! Jobs wait in one of three lanes ([`Lane`]), each with threads of its own: logins (password
//! hashes, account sources, admission), short storage calls, and long storage work (hashes of
//! files). So a login never queues behind file work, and eight clients hashing huge files take
//! the bulk lane's threads and nothing else. A job whose connection is gone is cancelled: it is
//! skipped if it has not started, and a hash stops at its next chunk.
//!
//! The pool is small and fixed; the queues need no bound of their own, because a session
//! waiting for work takes no other command, so each connection has at most one job out.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

use zocalo_poller::Waker;
use zocalo_proto::session::{Done, Lane, Work};

/// Worker threads per event loop, for a local file system: its calls are short, mostly CPU.
pub const THREADS: usize = 4;

/// Worker threads per event loop for network storage (S3): each call mostly waits for an
/// answer, and an upload's write waits while its previous part is sent, so more of them keep
/// the loop's other sessions from queueing behind a few slow requests (nginx's thread_pool
/// defaults to 32 for the same reason).
pub const NETWORK_THREADS: usize = 16;

/// Threads of the login lane: checks of a password at a time per loop (an Argon2 hash holds
/// about 19 MiB while it runs, so this also bounds the loop's memory for them).
pub const LOGIN_THREADS: usize = 2;

/// Threads of the bulk lane (file hashes).
pub const BULK_THREADS: usize = 2;

/// Which connection a job belongs to: its slot and a serial number, so that a result that comes
/// back after its connection closed (and the slot was reused) is dropped; and whose it is: the
/// session's (`transfer` 0) or that transfer's file I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    pub index: usize,
    pub serial: u64,
    pub transfer: u64,
}

/// A finished job, for the loop to hand to its session.
pub struct Finished {
    pub key: Key,
    pub done: Done,
}

struct Shared {
    finished: Mutex<Vec<Finished>>,
    waker: Waker,
}

pub struct Workers {
    login: Sender<(Key, Work)>,
    storage: Sender<(Key, Work)>,
    bulk: Sender<(Key, Work)>,
    shared: Arc<Shared>,
}

impl Workers {
    /// Starts `storage` workers for short storage calls, and the login and bulk lanes' own.
    pub fn start(storage: usize) -> io::Result<Self> {
        let shared = Arc::new(Shared { finished: Mutex::new(Vec::new()), waker: Waker::new()? });
        let lane = |name: &str, threads: usize| -> io::Result<Sender<(Key, Work)>> {
            let (jobs, queue) = mpsc::channel::<(Key, Work)>();
            let queue = Arc::new(Mutex::new(queue));
            crate::ops::metrics::add(
                crate::ops::metrics::Counter::WorkThreads,
                threads.max(1) as u64,
            );
            for i in 0..threads.max(1) {
                let (queue, shared) = (queue.clone(), shared.clone());
                std::thread::Builder::new()
                    .name(format!("zocalo-{name}-{i}"))
                    .spawn(move || work(&queue, &shared))?;
            }
            Ok(jobs)
        };
        Ok(Workers {
            login: lane("login", LOGIN_THREADS)?,
            storage: lane("work", storage)?,
            bulk: lane("bulk", BULK_THREADS)?,
            shared,
        })
    }

    /// Queues `work` for `key`'s connection, in its lane.
    pub fn submit(&self, key: Key, work: Work) {
        let lane = match work.lane() {
            // Inline work reaches a lane only from a driver that chose not to run it itself.
            Lane::Login | Lane::Inline => &self.login,
            Lane::Storage => &self.storage,
            Lane::Bulk => &self.bulk,
        };
        // The workers outlive the loop's senders, so a send cannot fail while the loop runs.
        crate::ops::metrics::inc(crate::ops::metrics::Counter::WorkQueued);
        let _ = lane.send((key, work));
    }

    /// What finished since the last call; makes the eventfd unreadable again.
    pub fn take_finished(&self) -> Vec<Finished> {
        let _ = self.shared.waker.drain();
        std::mem::take(&mut *self.shared.finished.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl AsRawFd for Workers {
    /// Readable while finished jobs wait for the loop.
    fn as_raw_fd(&self) -> RawFd {
        self.shared.waker.as_raw_fd()
    }
}

/// How much nicer than the loop a worker runs. An Argon2 hash keeps a core busy for a good
/// part of a second: on a machine with few cores, workers at the loop's own priority take turns
/// with it, and every session's NOOP waits for the scheduler. Niced, they yield to the loop
/// whenever it has something to do, and still get all the CPU it leaves.
const NICENESS: libc::c_int = 5;

/// One worker: runs jobs until the loop (and its sender) is gone.
fn work(queue: &Mutex<Receiver<(Key, Work)>>, shared: &Shared) {
    // SAFETY: gettid and setpriority have no memory preconditions; on Linux, PRIO_PROCESS with
    // a thread id sets that thread's niceness alone (raising it needs no privilege).
    unsafe {
        let tid = libc::gettid() as libc::id_t;
        let now = libc::getpriority(libc::PRIO_PROCESS, tid);
        libc::setpriority(libc::PRIO_PROCESS, tid, (now + NICENESS).min(19));
    }
    loop {
        let next = queue.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok((key, job)) = next else {
            return;
        };
        use crate::ops::metrics::{dec, inc, Counter};
        dec(Counter::WorkQueued);
        if job.canceller().is_cancelled() {
            // Its connection closed while it waited: nobody is left to take its result.
            continue;
        }
        inc(Counter::WorkBusy);
        let done = job.run();
        dec(Counter::WorkBusy);
        shared.finished.lock().unwrap_or_else(|e| e.into_inner()).push(Finished { key, done });
        let _ = shared.waker.wake();
    }
}
