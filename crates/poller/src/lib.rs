//! Readiness notification for zocalo's event-loop server model.
//!
//! A [`Poller`] watches file descriptors and says which ones are ready to read or write. There
//! are four backends, one file each, chosen at run time with [`Backend`] and [`new_poller`]
//! (mio picks one at compile time; we want users to compare them):
//!
//! | backend            | cost of one `wait`                     | limit                        |
//! |--------------------|----------------------------------------|------------------------------|
//! | [`SelectPoller`]   | O(highest fd): copy and scan bit sets  | fds below [`FD_SETSIZE`]     |
//! | [`PollPoller`]     | O(registered fds): the kernel walks all| none (RLIMIT_NOFILE)         |
//! | [`EpollPoller`]    | O(ready fds): the kernel keeps the set | none (RLIMIT_NOFILE)         |
//! | [`UringPoller`]    | O(ready fds), one call with the turn's changes | none (RLIMIT_NOFILE) |
//!
//! io_uring is a completion system: besides readiness (emulated with one-shot polls, see
//! [`uring`]) its poller offers a [`Ring`] of operations the kernel carries out itself
//! (accept, receive, send), which a caller reaches through [`Poller::ring`].
//!
//! All four are **level-triggered** and report what select(2) would: a hang-up or an error makes
//! a descriptor watched for reading readable, and an error makes one watched for writing
//! writable, so the caller finds out by reading or writing. poll and epoll also set
//! [`Event::hup`] and [`Event::error`]; select cannot tell them apart from data.
//!
//! What this crate does *not* do: it never reads, writes, accepts or closes a registered
//! descriptor, keeps no buffers and no timers, and is not edge-triggered. A [`Waker`] (an
//! eventfd) lets another thread or a signal handler interrupt a `wait`. [`fds`] waits on a few
//! descriptors with one poll(2) call and no registration, for blocking code.
//!
//! Linux only (epoll and eventfd).

use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::str::FromStr;
use std::time::Duration;

mod epoll;
pub mod fds;
mod poll;
mod select;
pub mod uring;
mod waker;

pub use epoll::EpollPoller;
pub use poll::PollPoller;
pub use select::{fits_select, FdTooLarge, SelectPoller, FD_SETSIZE};
pub use uring::{Ring, UringPoller};
pub use waker::Waker;

/// The caller's name for a registered descriptor, handed back in each [`Event`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(pub usize);

/// What readiness to watch for. There is no empty interest: deregister instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Interest {
    readable: bool,
    writable: bool,
}

impl Interest {
    /// Watch for data to read, a pending accept, end of file, hang-up or error.
    pub const READABLE: Interest = Interest { readable: true, writable: false };
    /// Watch for room in the send buffer, a finished connect, or error.
    pub const WRITABLE: Interest = Interest { readable: false, writable: true };
    /// Watch for both.
    pub const BOTH: Interest = Interest { readable: true, writable: true };

    pub fn readable(self) -> bool {
        self.readable
    }

    pub fn writable(self) -> bool {
        self.writable
    }
}

/// One ready descriptor, as reported by [`Poller::wait`].
///
/// `readable` and `writable` are only ever set for interests that were registered. `hup` and
/// `error` are set by poll and epoll whatever the interest (the kernel always reports them);
/// select never sets them, but then reports the descriptor readable or writable instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub token: Token,
    pub readable: bool,
    pub writable: bool,
    /// The peer hung up (POLLHUP / EPOLLHUP).
    pub hup: bool,
    /// The descriptor has a pending error (POLLERR / EPOLLERR), or is invalid (POLLNVAL).
    pub error: bool,
}

impl Event {
    /// Applies select(2)'s rules to what poll or epoll reported for an fd with `interest`:
    /// hang-up and error count as readable, error as writable, and only for watched interests.
    fn normalized(mut self, interest: Interest) -> Event {
        self.readable = interest.readable && (self.readable || self.hup || self.error);
        self.writable = interest.writable && (self.writable || self.error);
        self
    }
}

/// Watches file descriptors for readiness, level-triggered.
///
/// Errors are consistent across backends: registering a descriptor twice is
/// [`io::ErrorKind::AlreadyExists`], reregistering or deregistering an unknown one is
/// [`io::ErrorKind::NotFound`], and a descriptor the backend cannot watch is
/// [`io::ErrorKind::InvalidInput`] (see [`is_fd_too_large`]).
pub trait Poller: Send {
    /// Starts watching `fd`; its events will carry `token`.
    fn register(&mut self, fd: RawFd, token: Token, interest: Interest) -> io::Result<()>;

    /// Changes the token and interest of an already registered `fd`.
    fn reregister(&mut self, fd: RawFd, token: Token, interest: Interest) -> io::Result<()>;

    /// Stops watching `fd`. Call it before closing `fd`.
    fn deregister(&mut self, fd: RawFd) -> io::Result<()>;

    /// Clears `events`, then blocks until at least one registered descriptor is ready, the
    /// timeout expires (`None`: never) or a signal arrives, and fills `events` with the ready
    /// ones. A signal (EINTR) returns `Ok` with no events.
    fn wait(&mut self, events: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()>;

    /// The backend's name, as [`Backend`] parses it.
    fn name(&self) -> &'static str;

    /// `Some(n)` if only descriptors numbered below `n` can be registered (select), `None` if
    /// the only limit is the process's RLIMIT_NOFILE.
    fn capacity_limit(&self) -> Option<usize>;

    /// The completion-based operations of a backend that has them (io_uring).
    fn ring(&mut self) -> Option<&mut dyn Ring> {
        None
    }
}

/// Which readiness system call to use (io_uring: one-shot polls, plus its [`Ring`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    Select,
    Poll,
    Epoll,
    Uring,
}

impl Backend {
    /// Every backend, in the order the class notes introduce them.
    pub const ALL: [Backend; 4] = [Backend::Select, Backend::Poll, Backend::Epoll, Backend::Uring];

    pub fn name(self) -> &'static str {
        match self {
            Backend::Select => "select",
            Backend::Poll => "poll",
            Backend::Epoll => "epoll",
            Backend::Uring => "uring",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The error of parsing a [`Backend`] from a string other than `select`, `poll`, `epoll` or
/// `uring`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseBackendError(String);

impl fmt::Display for ParseBackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown poller backend {:?} (expected select, poll, epoll or uring)", self.0)
    }
}

impl std::error::Error for ParseBackendError {}

impl FromStr for Backend {
    type Err = ParseBackendError;

    /// Parses `select`, `poll`, `epoll` or `uring`, ignoring ASCII case.
    fn from_str(s: &str) -> Result<Backend, ParseBackendError> {
        Backend::ALL
            .into_iter()
            .find(|b| b.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| ParseBackendError(s.to_owned()))
    }
}

/// Creates a poller of the chosen backend.
pub fn new_poller(backend: Backend) -> io::Result<Box<dyn Poller>> {
    Ok(match backend {
        Backend::Select => Box::new(SelectPoller::new()),
        Backend::Poll => Box::new(PollPoller::new()),
        Backend::Epoll => Box::new(EpollPoller::new()?),
        Backend::Uring => Box::new(UringPoller::new()?),
    })
}

/// True if `err` is a poller refusing a descriptor it cannot watch (select and a descriptor at
/// or above [`FD_SETSIZE`]). The server answers such a connection `421` and closes it.
pub fn is_fd_too_large(err: &io::Error) -> bool {
    err.get_ref().is_some_and(|e| e.is::<FdTooLarge>())
}

/// A timeout in milliseconds for poll(2) and epoll_wait(2): -1 for none, rounded up so that a
/// sub-millisecond timeout does not become a busy loop, and capped at `c_int::MAX`.
fn timeout_ms(timeout: Option<Duration>) -> libc::c_int {
    let Some(t) = timeout else { return -1 };
    let ms = t.as_nanos().div_ceil(1_000_000);
    libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX)
}

/// The result of a readiness system call, with EINTR turned into "nothing ready".
fn ready_count(ret: libc::c_int) -> io::Result<usize> {
    if ret >= 0 {
        return Ok(ret as usize);
    }
    let err = io::Error::last_os_error();
    match err.kind() {
        io::ErrorKind::Interrupted => Ok(0),
        _ => Err(err),
    }
}

fn already_registered(fd: RawFd) -> io::Error {
    io::Error::new(io::ErrorKind::AlreadyExists, format!("fd {fd} is already registered"))
}

fn not_registered(fd: RawFd) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("fd {fd} is not registered"))
}

fn negative_fd(fd: RawFd) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("fd {fd} is negative"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_ms_rounds_up_and_saturates() {
        assert_eq!(timeout_ms(None), -1);
        assert_eq!(timeout_ms(Some(Duration::ZERO)), 0);
        assert_eq!(timeout_ms(Some(Duration::from_micros(1))), 1);
        assert_eq!(timeout_ms(Some(Duration::from_millis(1500))), 1500);
        assert_eq!(timeout_ms(Some(Duration::MAX)), libc::c_int::MAX);
    }

    #[test]
    fn backend_parses_and_displays() {
        for b in Backend::ALL {
            assert_eq!(b.to_string().parse::<Backend>(), Ok(b));
        }
        assert_eq!("EPOLL".parse::<Backend>(), Ok(Backend::Epoll));
        assert!("kqueue".parse::<Backend>().is_err());
    }

    #[test]
    fn poller_name_matches_backend() {
        for b in Backend::ALL {
            assert_eq!(new_poller(b).unwrap().name(), b.name());
        }
    }

    #[test]
    fn only_select_has_a_capacity_limit() {
        let limit = |b| new_poller(b).unwrap().capacity_limit();
        assert_eq!(limit(Backend::Select), Some(FD_SETSIZE));
        assert_eq!(limit(Backend::Poll), None);
        assert_eq!(limit(Backend::Epoll), None);
        assert_eq!(limit(Backend::Uring), None);
    }
}
