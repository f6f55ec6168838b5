//! The select(2) backend: the oldest and most portable, and the one the class notes start with.
//!
//! Cost: each `wait` copies two fd_sets (256 bytes) and passes `maxfd + 1` to the kernel, which
//! scans every bit below it; we then scan the same range for results. That is O(highest fd),
//! not O(registered fds): one connection on fd 900 costs as much as 900 connections.
//!
//! Cap: an fd_set is a fixed bitmap of [`FD_SETSIZE`] (1024) bits, so descriptors numbered 1024
//! or more cannot be watched at all, however few are open. Writing such a bit is undefined
//! behaviour in C; [`SelectPoller::register`] refuses it with [`io::ErrorKind::InvalidInput`]
//! wrapping [`FdTooLarge`], and the server answers that connection `421` and closes it.
//!
//! The registered set is kept as two master fd_sets (copied, not rebuilt, before each call),
//! a table of tokens indexed by fd, and the highest registered fd.

use std::error::Error;
use std::fmt;
use std::io;
use std::mem;
use std::os::fd::RawFd;
use std::ptr;
use std::time::Duration;

use crate::{already_registered, negative_fd, not_registered, ready_count};
use crate::{Event, Interest, Poller, Token};

/// The number of descriptors an fd_set can hold: select can watch only fds `0..FD_SETSIZE`.
pub const FD_SETSIZE: usize = libc::FD_SETSIZE;

/// True if select can watch `fd`, that is `0 <= fd < FD_SETSIZE`. Check it right after
/// `accept` to answer `421` before doing anything else with the connection.
pub fn fits_select(fd: RawFd) -> bool {
    usize::try_from(fd).is_ok_and(|fd| fd < FD_SETSIZE)
}

/// The error inside the [`io::Error`] (kind [`io::ErrorKind::InvalidInput`]) returned when
/// select is asked to watch a descriptor at or above [`FD_SETSIZE`]. Test for it with
/// [`crate::is_fd_too_large`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdTooLarge {
    pub fd: RawFd,
}

impl fmt::Display for FdTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fd {} exceeds FD_SETSIZE ({FD_SETSIZE})", self.fd)
    }
}

impl Error for FdTooLarge {}

/// A [`crate::Poller`] over select(2). See the module docs for its cost and its cap.
pub struct SelectPoller {
    read_set: FdSet,
    write_set: FdSet,
    /// `slots[fd]` is the registration of `fd`, if any; never longer than `FD_SETSIZE`.
    slots: Vec<Option<(Token, Interest)>>,
    /// The highest registered fd, or -1.
    max_fd: RawFd,
}

impl SelectPoller {
    pub fn new() -> SelectPoller {
        SelectPoller {
            read_set: FdSet::new(),
            write_set: FdSet::new(),
            slots: Vec::new(),
            max_fd: -1,
        }
    }

    /// Refuses a descriptor that an fd_set cannot hold.
    fn check(fd: RawFd) -> io::Result<()> {
        if fd < 0 {
            return Err(negative_fd(fd));
        }
        if !fits_select(fd) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, FdTooLarge { fd }));
        }
        Ok(())
    }

    fn slot(&self, fd: RawFd) -> Option<(Token, Interest)> {
        self.slots.get(fd as usize).copied().flatten()
    }

    fn set(&mut self, fd: RawFd, token: Token, interest: Interest) {
        let i = fd as usize;
        if self.slots.len() <= i {
            self.slots.resize(i + 1, None);
        }
        self.slots[i] = Some((token, interest));
        self.read_set.put(fd, interest.readable());
        self.write_set.put(fd, interest.writable());
        self.max_fd = self.max_fd.max(fd);
    }

    fn clear(&mut self, fd: RawFd) {
        self.slots[fd as usize] = None;
        self.read_set.put(fd, false);
        self.write_set.put(fd, false);
        while self.slots.last() == Some(&None) {
            self.slots.pop();
        }
        self.max_fd = self.slots.len() as RawFd - 1;
    }

    /// Pushes an event for each fd set in the result sets, stopping after `ready` bits.
    fn collect(&self, read: &FdSet, write: &FdSet, mut ready: usize, events: &mut Vec<Event>) {
        for fd in 0..=self.max_fd {
            if ready == 0 {
                break;
            }
            let (readable, writable) = (read.contains(fd), write.contains(fd));
            if !(readable || writable) {
                continue;
            }
            ready = ready.saturating_sub(usize::from(readable) + usize::from(writable));
            if let Some((token, _)) = self.slot(fd) {
                events.push(Event { token, readable, writable, hup: false, error: false });
            }
        }
    }
}

impl Default for SelectPoller {
    fn default() -> SelectPoller {
        SelectPoller::new()
    }
}

impl Poller for SelectPoller {
    fn register(&mut self, fd: RawFd, token: Token, interest: Interest) -> io::Result<()> {
        Self::check(fd)?;
        if self.slot(fd).is_some() {
            return Err(already_registered(fd));
        }
        self.set(fd, token, interest);
        Ok(())
    }

    fn reregister(&mut self, fd: RawFd, token: Token, interest: Interest) -> io::Result<()> {
        Self::check(fd)?;
        if self.slot(fd).is_none() {
            return Err(not_registered(fd));
        }
        self.set(fd, token, interest);
        Ok(())
    }

    fn deregister(&mut self, fd: RawFd) -> io::Result<()> {
        Self::check(fd)?;
        if self.slot(fd).is_none() {
            return Err(not_registered(fd));
        }
        self.clear(fd);
        Ok(())
    }

    fn wait(&mut self, events: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()> {
        events.clear();
        let (mut read, mut write) = (self.read_set.clone(), self.write_set.clone());
        let mut tv = timeout.map(timeval);
        let tv_ptr = tv.as_mut().map_or(ptr::null_mut(), |tv| tv as *mut libc::timeval);
        // SAFETY: both sets are valid, initialised fd_sets that live across the call, the
        // except set may be null, `tv_ptr` is null or points to `tv` which outlives the call,
        // and `max_fd + 1 <= FD_SETSIZE` so the kernel reads and writes only within the sets.
        let ret = unsafe {
            libc::select(self.max_fd + 1, &mut read.0, &mut write.0, ptr::null_mut(), tv_ptr)
        };
        let ready = ready_count(ret)?;
        self.collect(&read, &write, ready, events);
        Ok(())
    }

    fn name(&self) -> &'static str {
        "select"
    }

    fn capacity_limit(&self) -> Option<usize> {
        Some(FD_SETSIZE)
    }
}

/// A `libc::fd_set` whose operations are safe because every fd is checked first.
#[derive(Clone)]
struct FdSet(libc::fd_set);

impl FdSet {
    fn new() -> FdSet {
        // SAFETY: fd_set is a plain array of integers, for which all zeroes is a valid value
        // (the empty set, which is what FD_ZERO would write).
        FdSet(unsafe { mem::zeroed() })
    }

    /// Adds `fd` if `on`, removes it otherwise.
    fn put(&mut self, fd: RawFd, on: bool) {
        assert!(fits_select(fd), "fd {fd} out of fd_set range");
        // SAFETY: `fd` is in 0..FD_SETSIZE (asserted above), so the macros touch a bit inside
        // `self.0`, which is a valid fd_set borrowed mutably for the call.
        unsafe {
            match on {
                true => libc::FD_SET(fd, &mut self.0),
                false => libc::FD_CLR(fd, &mut self.0),
            }
        }
    }

    fn contains(&self, fd: RawFd) -> bool {
        assert!(fits_select(fd), "fd {fd} out of fd_set range");
        // SAFETY: `fd` is in 0..FD_SETSIZE (asserted above) and `self.0` is a valid fd_set.
        unsafe { libc::FD_ISSET(fd, &self.0) }
    }
}

fn timeval(t: Duration) -> libc::timeval {
    libc::timeval {
        tv_sec: libc::time_t::try_from(t.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_usec: t.subsec_micros() as libc::suseconds_t,
    }
}
