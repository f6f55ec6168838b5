//! SIGTERM and SIGINT: a descriptor that becomes readable, and stays readable, once the server
//! is asked to stop.
//!
//! The signal handler only writes to an eventfd (async-signal-safe). Nobody ever drains it, so
//! every poll set that contains it (each accept loop, each connection, each event loop, and the
//! children of the process model, which inherit it across fork) sees the stop.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use zocalo_poller::{fds, Waker};

static SIGNAL_FD: AtomicI32 = AtomicI32::new(-1);
static RELOAD_FD: AtomicI32 = AtomicI32::new(-1);

/// The server-wide stop signal.
#[derive(Clone)]
pub struct Shutdown {
    waker: Arc<Waker>,
}

impl Shutdown {
    pub fn new() -> io::Result<Self> {
        Ok(Shutdown { waker: Arc::new(Waker::new()?) })
    }

    /// Routes SIGTERM and SIGINT to this signal (once per process).
    pub fn install_signal_handlers(&self) -> io::Result<()> {
        SIGNAL_FD.store(self.waker.as_raw_fd(), Ordering::SeqCst);
        for sig in [libc::SIGTERM, libc::SIGINT] {
            set_handler(sig, on_signal, 0)?;
        }
        // SAFETY: ignoring SIGPIPE is always sound; broken pipes become EPIPE errors.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        Ok(())
    }

    /// True once a stop was asked for.
    pub fn is_triggered(&self) -> bool {
        fds::wait_one(self.fd(), false, Duration::ZERO).unwrap_or(false)
    }

    /// A flag that becomes true once a stop is asked for, for code that polls a flag rather than
    /// a descriptor (the TFTP server). A small thread waits on the descriptor to set it.
    pub fn flag(&self) -> io::Result<Arc<AtomicBool>> {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, fd) = (stop.clone(), self.fd());
        std::thread::Builder::new().name("zocalo-stop".into()).spawn(move || {
            while !fds::wait_one(fd, false, Duration::from_secs(3600)).unwrap_or(true) {}
            flag.store(true, Ordering::SeqCst);
        })?;
        Ok(stop)
    }

    /// The descriptor to watch for readability.
    pub fn fd(&self) -> RawFd {
        self.waker.as_raw_fd()
    }
}

/// SIGHUP (what logrotate's postrotate sends) and `zocalo ctl reload`: a descriptor that
/// becomes readable when a reload is asked for. Whoever reloads drains it. Forked children
/// share it, so the `process` model's admin process asks its parent through it.
#[derive(Clone)]
pub struct Reload {
    waker: Arc<Waker>,
}

impl Reload {
    pub fn new() -> io::Result<Self> {
        Ok(Reload { waker: Arc::new(Waker::new()?) })
    }

    /// Routes SIGHUP to this descriptor (once per process), instead of its default: to exit.
    pub fn install_signal_handler(&self) -> io::Result<()> {
        RELOAD_FD.store(self.waker.as_raw_fd(), Ordering::SeqCst);
        set_handler(libc::SIGHUP, on_reload, 0)
    }

    /// Asks for a reload, as SIGHUP does.
    pub fn ask(&self) {
        let _ = self.waker.wake();
    }

    /// What was asked for since the last call: (a reload, a session-table dump). SIGUSR1
    /// wakes the same descriptor as SIGHUP, so the wakes beyond the dumps are reloads.
    pub fn take(&self) -> (bool, bool) {
        let readable = fds::wait_one(self.fd(), false, Duration::ZERO).unwrap_or(false);
        let wakes = match readable {
            true => self.waker.drain_count().unwrap_or(0),
            false => 0,
        };
        let dumps = DUMPS.swap(0, Ordering::SeqCst);
        (wakes > dumps, dumps > 0)
    }

    /// The descriptor to watch for readability.
    pub fn fd(&self) -> RawFd {
        self.waker.as_raw_fd()
    }
}

extern "C" fn on_reload(_sig: libc::c_int) {
    wake_from_handler(&RELOAD_FD);
}

/// SIGUSR1s not yet taken: each asks for the session table in the log (read by whoever
/// watches the reload descriptor, which the signal wakes too).
static DUMPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

extern "C" fn on_dump(_sig: libc::c_int) {
    DUMPS.fetch_add(1, Ordering::SeqCst);
    wake_from_handler(&RELOAD_FD);
}

/// Routes SIGUSR1 (whose default is to exit) to a dump of the session table; needs the
/// reload handler's descriptor.
pub fn install_dump_handler() -> io::Result<()> {
    set_handler(libc::SIGUSR1, on_dump, 0)
}

/// Installs `handler` for `sig` with SA_RESTART (and `flags`). The handler must be
/// async-signal-safe.
pub fn set_handler(
    sig: libc::c_int,
    handler: extern "C" fn(libc::c_int),
    flags: libc::c_int,
) -> io::Result<()> {
    // SAFETY: a fully initialised sigaction; callers pass async-signal-safe handlers.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as *const () as usize;
        action.sa_flags = libc::SA_RESTART | flags;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(sig, &action, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

extern "C" fn on_signal(_sig: libc::c_int) {
    wake_from_handler(&SIGNAL_FD);
}

/// The body of every signal handler here: makes the eventfd stored in `slot` readable (one
/// write(2), async-signal-safe), errno left as it was.
pub(crate) fn wake_from_handler(slot: &AtomicI32) {
    let fd = slot.load(Ordering::SeqCst);
    if fd >= 0 {
        let saved = io::Error::last_os_error().raw_os_error().unwrap_or(0);
        let one: u64 = 1;
        // SAFETY: write(2) on an eventfd with an 8-byte buffer is async-signal-safe.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
        // SAFETY: restoring errno through the libc accessor.
        unsafe { *libc::__errno_location() = saved };
    }
}

/// Waits until `fd` is readable (true) or the server is asked to stop (false): the loop of
/// the small threads that serve the admin channel and reloads.
pub(crate) fn wait_unless_stopped(fd: RawFd, shutdown: &Shutdown) -> bool {
    let mut polled = [fds::watch(fd, true, false), fds::watch(shutdown.fd(), true, false)];
    loop {
        match fds::wait(&mut polled, None) {
            Ok(0) => {}
            Ok(_) => return !fds::fired(&polled[1]),
            Err(_) => return false,
        }
    }
}
