//! Waiting on a few descriptors at once without registering them: one poll(2) call over a
//! caller's array. For the places that wait on one, two or three descriptors (a blocking
//! session, a blocking accept loop, a signal's eventfd), where a [`crate::Poller`] would be a
//! system call more for nothing.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// One descriptor to wait on, and what came of it (poll(2)'s `struct pollfd`). A negative fd
/// is ignored, as poll(2) does.
pub type PollFd = libc::pollfd;

/// A [`PollFd`] watching `fd` for reading (`readable`) or writing.
pub fn watch(fd: RawFd, readable: bool, writable: bool) -> PollFd {
    let mut events = 0;
    if readable {
        events |= libc::POLLIN;
    }
    if writable {
        events |= libc::POLLOUT;
    }
    libc::pollfd { fd, events, revents: 0 }
}

/// A [`PollFd`] that poll(2) skips.
pub const NONE: PollFd = libc::pollfd { fd: -1, events: 0, revents: 0 };

/// True if poll(2) reported anything for `fd` (readiness, hang-up or error).
pub fn fired(fd: &PollFd) -> bool {
    fd.revents != 0
}

/// Waits until one of `fds` is ready or `timeout` passes (`None`: forever); a signal ends the
/// wait early as "nothing ready". Returns how many are ready.
pub fn wait(fds: &mut [PollFd], timeout: Option<Duration>) -> io::Result<usize> {
    // SAFETY: `fds` is a valid, initialised slice of pollfd of the length passed.
    let ret = unsafe {
        libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, crate::timeout_ms(timeout))
    };
    crate::ready_count(ret)
}

/// Waits for `fd` to be readable (or writable), at most `timeout`; false on timeout. A signal
/// does not end the wait early.
pub fn wait_one(fd: RawFd, writable: bool, timeout: Duration) -> io::Result<bool> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let mut fds = [watch(fd, !writable, writable)];
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if wait(&mut fds, Some(left))? == 1 {
            return Ok(true);
        }
        if left.is_zero() {
            return Ok(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Waker;
    use std::os::fd::AsRawFd;

    #[test]
    fn waits_for_a_woken_descriptor_and_times_out_on_a_quiet_one() {
        let waker = Waker::new().unwrap();
        assert!(!wait_one(waker.as_raw_fd(), false, Duration::from_millis(5)).unwrap());
        waker.wake().unwrap();
        assert!(wait_one(waker.as_raw_fd(), false, Duration::from_secs(5)).unwrap());
        let mut fds = [NONE, watch(waker.as_raw_fd(), true, false)];
        assert_eq!(wait(&mut fds, Some(Duration::ZERO)).unwrap(), 1);
        assert!(!fired(&fds[0]) && fired(&fds[1]));
    }
}
