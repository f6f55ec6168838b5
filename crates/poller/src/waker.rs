//! A [`Waker`]: an eventfd that interrupts a [`crate::Poller::wait`] from another thread or a
//! signal handler.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// An eventfd (non-blocking, close-on-exec) to register, READABLE, in any poller.
///
/// [`wake`](Waker::wake) makes it readable, so a `wait` returns its token; the loop then calls
/// [`drain`](Waker::drain) to make it unreadable again. Wakes before a drain coalesce into one.
/// Share it with `Arc`, or keep it in a static for a signal handler.
#[derive(Debug)]
pub struct Waker {
    fd: OwnedFd,
}

impl Waker {
    pub fn new() -> io::Result<Waker> {
        // SAFETY: eventfd takes no pointers; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
        Ok(Waker { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    /// Makes the eventfd readable. Async-signal-safe: one write(2), no allocation, no lock.
    /// A counter already near its maximum (EAGAIN) is already readable, so that is `Ok` too.
    /// It sets errno on failure, as any system call does: a signal handler should save and
    /// restore errno around it.
    pub fn wake(&self) -> io::Result<()> {
        let one: u64 = 1;
        // SAFETY: we pass a pointer to 8 readable bytes that live across the call.
        let ret = unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        ok_unless_would_block(ret)
    }

    /// Resets the counter to zero so the eventfd stops being readable. `Ok` if it already was.
    pub fn drain(&self) -> io::Result<()> {
        self.drain_count().map(drop)
    }

    /// Like [`drain`](Self::drain), and says how many wakes it drained (0 if none).
    pub fn drain_count(&self) -> io::Result<u64> {
        let mut count: u64 = 0;
        // SAFETY: we pass a pointer to 8 writable bytes that live across the call.
        let ret = unsafe { libc::read(self.fd.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
        ok_unless_would_block(ret).map(|()| count)
    }
}

impl AsRawFd for Waker {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for Waker {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn ok_unless_would_block(ret: isize) -> io::Result<()> {
    if ret >= 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.kind() {
        io::ErrorKind::WouldBlock => Ok(()),
        _ => Err(err),
    }
}
