//! Work a session hands its driver: blocking storage or authentication calls that the
//! driver runs inline (the blocking models) or on a worker lane (the event loops), and the
//! result it hands back. The session never sees a thread.

use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Work the session needs done before it can answer a command. It owns everything it needs
/// (an `Arc` of the storage, resolved paths), so it can run on any thread.
pub struct Work {
    job: Box<dyn FnOnce() -> Done + Send>,
    lane: Lane,
    cancel: Cancel,
}

/// Which of a driver's worker lanes a job waits in. An event loop gives each lane threads of
/// its own, so no kind of work queues behind another: a login never waits for a file, and
/// neither waits for a hash of a large file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Getting in: checking a password (an Argon2 hash, an account source) or admission.
    Login,
    /// Short storage calls: stat, list a batch, open, a transfer's file write.
    Storage,
    /// Long storage work bounded only by a deadline (HASH and the X hash commands).
    Bulk,
    /// Work that needs no I/O and no costly computation (the check of an in-memory account):
    /// a driver runs it at once on its own thread, saving two thread wake-ups.
    Inline,
}

/// Asks running or queued [`Work`] to stop: a driver cancels the work of a connection that is
/// gone, a worker skips a job cancelled before it starts, and long work (a hash) checks it as
/// it goes.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

impl Work {
    /// Storage work that returns `job`'s value (a driver uses it for its own blocking calls).
    pub fn new<T: Send + 'static>(job: impl FnOnce() -> T + Send + 'static) -> Work {
        Work::in_lane(Lane::Storage, Cancel::default(), job)
    }

    /// Work for `lane`, cancelled through `cancel`.
    pub fn in_lane<T: Send + 'static>(
        lane: Lane,
        cancel: Cancel,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Work {
        Work { job: Box::new(move || Done(Box::new(job()))), lane, cancel }
    }

    pub fn lane(&self) -> Lane {
        self.lane
    }

    /// A handle that cancels this work.
    pub fn canceller(&self) -> Cancel {
        self.cancel.clone()
    }

    /// Does the work (blocking) and returns the result for [`crate::session::Session::handle_work_done`].
    pub fn run(self) -> Done {
        (self.job)()
    }
}

impl Done {
    /// The value of a [`Work::new`] job, if it is a `T`.
    pub fn take<T: 'static>(self) -> Option<T> {
        self.0.downcast().ok().map(|b| *b)
    }
}

impl std::fmt::Debug for Work {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Work")
    }
}

/// The result of a [`Work`], opaque to the driver.
pub struct Done(Box<dyn Any + Send>);

impl std::fmt::Debug for Done {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Done")
    }
}
