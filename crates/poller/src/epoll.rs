//! The epoll(7) backend: the kernel keeps the interest list, so a call pays only for what is
//! ready.
//!
//! Cost: `register`, `reregister` and `deregister` are one epoll_ctl(2) each; a `wait` returns
//! only ready descriptors, O(ready fds), however many are registered. There is no FD_SETSIZE
//! cap; the limit is RLIMIT_NOFILE. We use it level-triggered, like select and poll, so that the
//! three backends behave the same; edge-triggered mode is not offered.
//!
//! Each kernel event carries its fd in the `u64` data; a table indexed by fd gives back the
//! token and the interest (needed to apply select's rules to hang-ups and errors).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use crate::{negative_fd, not_registered, ready_count, timeout_ms};
use crate::{Event, Interest, Poller, Token};

/// How many events one `wait` can return; more ready descriptors wait for the next call.
const EVENT_BUFFER: usize = 256;

/// A [`crate::Poller`] over epoll(7). The epoll descriptor is closed on drop.
pub struct EpollPoller {
    epfd: OwnedFd,
    buffer: Vec<libc::epoll_event>,
    /// `slots[fd]` is the registration of `fd`, if any.
    slots: Vec<Option<(Token, Interest)>>,
}

impl EpollPoller {
    pub fn new() -> io::Result<EpollPoller> {
        // SAFETY: epoll_create1 takes no pointers; the result is checked before use.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
        let epfd = unsafe { OwnedFd::from_raw_fd(fd) };
        let buffer = Vec::with_capacity(EVENT_BUFFER);
        Ok(EpollPoller { epfd, buffer, slots: Vec::new() })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, interest: Interest) -> io::Result<()> {
        let mut ev = libc::epoll_event { events: epoll_events(interest), u64: fd as u64 };
        // SAFETY: `ev` is a valid epoll_event that outlives the call (the kernel copies it).
        let ret = unsafe { libc::epoll_ctl(self.epfd.as_raw_fd(), op, fd, &mut ev) };
        match ret {
            0 => Ok(()),
            _ => Err(io::Error::last_os_error()),
        }
    }

    fn slot(&self, fd: RawFd) -> Option<(Token, Interest)> {
        self.slots.get(usize::try_from(fd).ok()?).copied().flatten()
    }

    fn set_slot(&mut self, fd: RawFd, reg: Option<(Token, Interest)>) {
        let i = fd as usize;
        if self.slots.len() <= i {
            self.slots.resize(i + 1, None);
        }
        self.slots[i] = reg;
    }

    /// Turns a kernel event into ours, or `None` for an fd no longer registered.
    fn event(&self, ev: &libc::epoll_event) -> Option<Event> {
        let (token, interest) = self.slot(ev.u64 as RawFd)?;
        let has = |flag: libc::c_int| ev.events & flag as u32 != 0;
        let raw = Event {
            token,
            readable: has(libc::EPOLLIN),
            writable: has(libc::EPOLLOUT),
            hup: has(libc::EPOLLHUP),
            error: has(libc::EPOLLERR),
        };
        Some(raw.normalized(interest))
    }
}

impl Poller for EpollPoller {
    fn register(&mut self, fd: RawFd, token: Token, interest: Interest) -> io::Result<()> {
        if fd < 0 {
            return Err(negative_fd(fd));
        }
        self.ctl(libc::EPOLL_CTL_ADD, fd, interest)?;
        self.set_slot(fd, Some((token, interest)));
        Ok(())
    }

    fn reregister(&mut self, fd: RawFd, token: Token, interest: Interest) -> io::Result<()> {
        if self.slot(fd).is_none() {
            return Err(not_registered(fd));
        }
        self.ctl(libc::EPOLL_CTL_MOD, fd, interest)?;
        self.set_slot(fd, Some((token, interest)));
        Ok(())
    }

    fn deregister(&mut self, fd: RawFd) -> io::Result<()> {
        if self.slot(fd).is_none() {
            return Err(not_registered(fd));
        }
        self.set_slot(fd, None);
        // The interest is ignored by EPOLL_CTL_DEL.
        self.ctl(libc::EPOLL_CTL_DEL, fd, Interest::READABLE)
    }

    fn wait(&mut self, events: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()> {
        events.clear();
        self.buffer.clear();
        let cap = self.buffer.capacity().min(libc::c_int::MAX as usize) as libc::c_int;
        let (epfd, buf) = (self.epfd.as_raw_fd(), self.buffer.as_mut_ptr());
        // SAFETY: `buf` points to writable room for `cap` epoll_events owned by `self.buffer`,
        // which is not touched until the call returns.
        let ret = unsafe { libc::epoll_wait(epfd, buf, cap, timeout_ms(timeout)) };
        let ready = ready_count(ret)?;
        // SAFETY: epoll_wait initialised the first `ready` entries, and `ready <= cap`.
        unsafe { self.buffer.set_len(ready) };
        events.extend(self.buffer.iter().filter_map(|ev| self.event(ev)));
        Ok(())
    }

    fn name(&self) -> &'static str {
        "epoll"
    }

    fn capacity_limit(&self) -> Option<usize> {
        None
    }
}

fn epoll_events(interest: Interest) -> u32 {
    let mut events = 0;
    if interest.readable() {
        events |= libc::EPOLLIN;
    }
    if interest.writable() {
        events |= libc::EPOLLOUT;
    }
    events as u32
}
