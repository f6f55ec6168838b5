//! The poll(2) backend: an array of `pollfd` handed to the kernel on every call.
//!
//! Cost: each `wait` copies all registered entries into the kernel, which polls every one of
//! them, and we scan the array for results: O(registered fds) per call, however few are ready.
//! There is no FD_SETSIZE cap; the limit is RLIMIT_NOFILE.
//!
//! The array is dense: a map from fd to index finds an entry, and deregistering moves the last
//! entry into the hole (`swap_remove`), so both are O(1).

use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use crate::{already_registered, negative_fd, not_registered, ready_count, timeout_ms};
use crate::{Event, Interest, Poller, Token};

/// A [`crate::Poller`] over poll(2). See the module docs for its cost.
#[derive(Default)]
pub struct PollPoller {
    /// What the kernel sees; `regs[i]` belongs to `fds[i]`.
    fds: Vec<libc::pollfd>,
    regs: Vec<(Token, Interest)>,
    index: HashMap<RawFd, usize>,
}

impl PollPoller {
    pub fn new() -> PollPoller {
        PollPoller::default()
    }

    fn position(&self, fd: RawFd) -> io::Result<usize> {
        self.index.get(&fd).copied().ok_or_else(|| not_registered(fd))
    }

    /// Pushes an event for each entry with non-zero `revents`, stopping after `ready` of them.
    fn collect(&self, ready: usize, events: &mut Vec<Event>) {
        let entries = self.fds.iter().zip(&self.regs);
        let ready_entries = entries.filter(|(pfd, _)| pfd.revents != 0).take(ready);
        for (pfd, &(token, interest)) in ready_entries {
            events.push(event(token, interest, pfd.revents));
        }
    }
}

impl Poller for PollPoller {
    fn register(&mut self, fd: RawFd, token: Token, interest: Interest) -> io::Result<()> {
        if fd < 0 {
            return Err(negative_fd(fd));
        }
        if self.index.contains_key(&fd) {
            return Err(already_registered(fd));
        }
        self.index.insert(fd, self.fds.len());
        self.fds.push(libc::pollfd { fd, events: poll_events(interest), revents: 0 });
        self.regs.push((token, interest));
        Ok(())
    }

    fn reregister(&mut self, fd: RawFd, token: Token, interest: Interest) -> io::Result<()> {
        let i = self.position(fd)?;
        self.fds[i].events = poll_events(interest);
        self.regs[i] = (token, interest);
        Ok(())
    }

    fn deregister(&mut self, fd: RawFd) -> io::Result<()> {
        let i = self.position(fd)?;
        self.index.remove(&fd);
        self.fds.swap_remove(i);
        self.regs.swap_remove(i);
        if let Some(moved) = self.fds.get(i) {
            self.index.insert(moved.fd, i);
        }
        Ok(())
    }

    fn wait(&mut self, events: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()> {
        events.clear();
        let nfds = self.fds.len() as libc::nfds_t;
        // SAFETY: `fds` points to `nfds` initialised pollfd entries that we borrow mutably for
        // the duration of the call; the kernel writes only their `revents` fields.
        let ret = unsafe { libc::poll(self.fds.as_mut_ptr(), nfds, timeout_ms(timeout)) };
        let ready = ready_count(ret)?;
        self.collect(ready, events);
        Ok(())
    }

    fn name(&self) -> &'static str {
        "poll"
    }

    fn capacity_limit(&self) -> Option<usize> {
        None
    }
}

fn poll_events(interest: Interest) -> libc::c_short {
    let mut events = 0;
    if interest.readable() {
        events |= libc::POLLIN;
    }
    if interest.writable() {
        events |= libc::POLLOUT;
    }
    events
}

fn event(token: Token, interest: Interest, revents: libc::c_short) -> Event {
    let has = |flag: libc::c_short| revents & flag != 0;
    let raw = Event {
        token,
        readable: has(libc::POLLIN),
        writable: has(libc::POLLOUT),
        hup: has(libc::POLLHUP),
        error: has(libc::POLLERR | libc::POLLNVAL),
    };
    raw.normalized(interest)
}
