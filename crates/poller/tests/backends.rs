//! The same readiness tests, run against every backend.
//!
//! No test sleeps to wait for readiness: each one makes a descriptor ready (or not) first, then
//! waits. `BOUND` is only a guard so that a broken backend fails instead of hanging.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::thread::JoinHandleExt;
use std::sync::{mpsc, Arc, Once, OnceLock};
use std::thread;
use std::time::Duration;

use zocalo_poller::{fits_select, is_fd_too_large, new_poller, Backend, Event, Interest};
use zocalo_poller::{Poller, Token, Waker, FD_SETSIZE};

/// Runs each listed test function once per backend, in modules `select`, `poll`, `epoll` and `uring`.
macro_rules! for_each_backend {
    ($($test:ident),* $(,)?) => {
        for_each_backend!(@backend select, Select, $($test),*);
        for_each_backend!(@backend poll, Poll, $($test),*);
        for_each_backend!(@backend epoll, Epoll, $($test),*);
        for_each_backend!(@backend uring, Uring, $($test),*);
    };
    (@backend $module:ident, $variant:ident, $($test:ident),*) => {
        mod $module {
            $(
                #[test]
                fn $test() {
                    super::$test(zocalo_poller::Backend::$variant);
                }
            )*
        }
    };
}

for_each_backend!(
    readable_after_peer_writes_unix,
    readable_after_peer_writes_tcp,
    listener_readable_when_connection_pending,
    writable_when_send_buffer_has_room,
    both_interests_in_one_event,
    deregister_stops_events,
    reregister_changes_interest,
    tokens_survive_deregistering_others,
    hang_up_is_reported,
    pipe_hang_up_is_readable,
    timeout_returns_no_events,
    empty_poller_times_out,
    signal_interrupts_wait_without_error,
    waker_wakes_wait_from_another_thread,
    fd_above_fd_setsize,
    errors_are_consistent,
);

const NOW: Option<Duration> = Some(Duration::ZERO);
const BOUND: Option<Duration> = Some(Duration::from_secs(20));

fn poller(backend: Backend) -> Box<dyn Poller> {
    new_poller(backend).expect("create poller")
}

fn wait(p: &mut dyn Poller, timeout: Option<Duration>) -> Vec<Event> {
    let mut events = Vec::new();
    p.wait(&mut events, timeout).expect("wait");
    events
}

fn only(events: &[Event]) -> Event {
    assert_eq!(events.len(), 1, "expected exactly one event, got {events:?}");
    events[0]
}

fn unix_pair() -> (UnixStream, UnixStream) {
    UnixStream::pair().expect("socketpair")
}

fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    (server, client)
}

fn readable_after_peer_writes_unix(backend: Backend) {
    let (a, mut peer) = unix_pair();
    readable_after_peer_writes(backend, a.as_raw_fd(), &mut peer);
}

fn readable_after_peer_writes_tcp(backend: Backend) {
    let (a, mut peer) = tcp_pair();
    readable_after_peer_writes(backend, a.as_raw_fd(), &mut peer);
}

fn readable_after_peer_writes(backend: Backend, fd: RawFd, peer: &mut impl Write) {
    let mut p = poller(backend);
    p.register(fd, Token(7), Interest::READABLE).unwrap();
    assert!(wait(&mut *p, NOW).is_empty(), "readable before any data");
    peer.write_all(b"hello").unwrap();
    let ev = only(&wait(&mut *p, BOUND));
    assert_eq!((ev.token, ev.readable, ev.writable), (Token(7), true, false));
}

fn listener_readable_when_connection_pending(backend: Backend) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut p = poller(backend);
    p.register(listener.as_raw_fd(), Token(1), Interest::READABLE).unwrap();
    assert!(wait(&mut *p, NOW).is_empty());
    let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let ev = only(&wait(&mut *p, BOUND));
    assert!(ev.readable && ev.token == Token(1));
}

fn writable_when_send_buffer_has_room(backend: Backend) {
    let (a, _peer) = tcp_pair();
    let mut p = poller(backend);
    p.register(a.as_raw_fd(), Token(3), Interest::WRITABLE).unwrap();
    let ev = only(&wait(&mut *p, BOUND));
    assert_eq!((ev.token, ev.readable, ev.writable), (Token(3), false, true));
}

fn both_interests_in_one_event(backend: Backend) {
    let (a, mut peer) = unix_pair();
    peer.write_all(b"x").unwrap();
    let mut p = poller(backend);
    p.register(a.as_raw_fd(), Token(4), Interest::BOTH).unwrap();
    let ev = only(&wait(&mut *p, BOUND));
    assert!(ev.readable && ev.writable, "{ev:?}");
}

fn deregister_stops_events(backend: Backend) {
    let (a, mut peer) = unix_pair();
    peer.write_all(b"x").unwrap();
    let mut p = poller(backend);
    p.register(a.as_raw_fd(), Token(1), Interest::READABLE).unwrap();
    assert_eq!(only(&wait(&mut *p, BOUND)).token, Token(1));
    p.deregister(a.as_raw_fd()).unwrap();
    assert!(wait(&mut *p, NOW).is_empty(), "event after deregister");
    p.register(a.as_raw_fd(), Token(2), Interest::READABLE).unwrap();
    assert_eq!(only(&wait(&mut *p, BOUND)).token, Token(2));
}

fn reregister_changes_interest(backend: Backend) {
    let (a, mut peer) = unix_pair();
    let fd = a.as_raw_fd();
    let mut p = poller(backend);
    p.register(fd, Token(1), Interest::READABLE).unwrap();
    assert!(wait(&mut *p, NOW).is_empty());
    p.reregister(fd, Token(2), Interest::WRITABLE).unwrap();
    let ev = only(&wait(&mut *p, BOUND));
    assert_eq!((ev.token, ev.readable, ev.writable), (Token(2), false, true));
    peer.write_all(b"x").unwrap();
    p.reregister(fd, Token(3), Interest::READABLE).unwrap();
    let ev = only(&wait(&mut *p, BOUND));
    assert_eq!((ev.token, ev.readable, ev.writable), (Token(3), true, false));
}

/// Exercises the backends' bookkeeping (poll's swap_remove, select's max fd).
fn tokens_survive_deregistering_others(backend: Backend) {
    let pairs: Vec<_> = (0..4).map(|_| unix_pair()).collect();
    let mut p = poller(backend);
    for (i, (a, _)) in pairs.iter().enumerate() {
        p.register(a.as_raw_fd(), Token(10 + i), Interest::READABLE).unwrap();
    }
    p.deregister(pairs[0].0.as_raw_fd()).unwrap();
    p.deregister(pairs[3].0.as_raw_fd()).unwrap();
    for (_, peer) in &pairs {
        let mut peer: &UnixStream = peer;
        peer.write_all(b"x").unwrap();
    }
    let mut tokens: Vec<_> = wait(&mut *p, BOUND).iter().map(|e| e.token).collect();
    tokens.sort();
    assert_eq!(tokens, [Token(11), Token(12)]);
}

fn hang_up_is_reported(backend: Backend) {
    let (mut a, peer) = unix_pair();
    let mut p = poller(backend);
    p.register(a.as_raw_fd(), Token(5), Interest::READABLE).unwrap();
    assert!(wait(&mut *p, NOW).is_empty());
    drop(peer);
    let ev = only(&wait(&mut *p, BOUND));
    assert!(ev.readable, "hang-up must make the fd readable: {ev:?}");
    // select cannot tell a hang-up from data; the others say so.
    assert_eq!(ev.hup, backend != Backend::Select, "{ev:?}");
    assert_eq!(a.read(&mut [0; 8]).unwrap(), 0, "read after hang-up is end of file");
}

/// A pipe whose writer is gone reports only POLLHUP, not POLLIN: the backends must still call
/// it readable, as select does.
fn pipe_hang_up_is_readable(backend: Backend) {
    let (reader, writer) = pipe();
    let mut p = poller(backend);
    p.register(reader.as_raw_fd(), Token(6), Interest::READABLE).unwrap();
    assert!(wait(&mut *p, NOW).is_empty());
    drop(writer);
    let ev = only(&wait(&mut *p, BOUND));
    assert_eq!((ev.token, ev.readable, ev.writable), (Token(6), true, false), "{ev:?}");
}

/// A pipe, as (read end, write end).
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: pipe2 succeeded, so both are fresh descriptors owned by nothing else.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn timeout_returns_no_events(backend: Backend) {
    let (a, _peer) = unix_pair();
    let mut p = poller(backend);
    p.register(a.as_raw_fd(), Token(1), Interest::READABLE).unwrap();
    let stale = Event { token: Token(99), readable: true, writable: true, hup: true, error: true };
    let mut events = vec![stale];
    p.wait(&mut events, Some(Duration::from_millis(20))).unwrap();
    assert!(events.is_empty(), "{events:?}");
}

fn empty_poller_times_out(backend: Backend) {
    let mut p = poller(backend);
    assert!(wait(&mut *p, Some(Duration::from_millis(1))).is_empty());
}

extern "C" fn ignore_signal(_: libc::c_int) {}

/// Installs a do-nothing SIGUSR1 handler, so the signal interrupts system calls (EINTR).
fn install_sigusr1_handler() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // SAFETY: the sigaction struct is zeroed (a valid empty mask, no flags) and then given
        // a handler that does nothing, which is trivially async-signal-safe.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = ignore_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            assert_eq!(libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()), 0);
        }
    });
}

fn signal_interrupts_wait_without_error(backend: Backend) {
    install_sigusr1_handler();
    let (a, _peer) = unix_pair();
    let mut p = poller(backend);
    p.register(a.as_raw_fd(), Token(1), Interest::READABLE).unwrap();
    let (tx, rx) = mpsc::channel();
    let waiter = thread::spawn(move || {
        let mut events = Vec::new();
        let res = p.wait(&mut events, Some(Duration::from_secs(60)));
        tx.send(res.map(|()| events.len())).unwrap();
    });
    // Signal until the wait returns: a signal that lands before the wait starts is lost.
    let tid = waiter.as_pthread_t();
    let result = loop {
        // SAFETY: `waiter` is not joined yet, so `tid` names a thread that exists or is a zombie.
        unsafe { libc::pthread_kill(tid, libc::SIGUSR1) };
        if let Ok(result) = rx.recv_timeout(Duration::from_millis(50)) {
            break result;
        }
    };
    waiter.join().unwrap();
    assert_eq!(result.expect("EINTR must not be an error"), 0);
}

fn waker_wakes_wait_from_another_thread(backend: Backend) {
    let waker = Arc::new(Waker::new().unwrap());
    let mut p = poller(backend);
    p.register(waker.as_raw_fd(), Token(42), Interest::READABLE).unwrap();
    assert!(wait(&mut *p, NOW).is_empty(), "awake before wake()");
    let remote = Arc::clone(&waker);
    let waking = thread::spawn(move || remote.wake().unwrap());
    let ev = only(&wait(&mut *p, BOUND));
    assert_eq!((ev.token, ev.readable), (Token(42), true));
    waking.join().unwrap();
    waker.drain().unwrap();
    assert!(wait(&mut *p, NOW).is_empty(), "still awake after drain()");
}

/// Makes sure the soft RLIMIT_NOFILE allows descriptor `fd`.
fn allow_fd(fd: RawFd) {
    let want = fd as libc::rlim_t + 1;
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid rlimit for getrlimit to fill and setrlimit to read.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur < want {
            assert!(lim.rlim_max >= want, "hard RLIMIT_NOFILE below {want}");
            lim.rlim_cur = want;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
        }
    }
}

/// Duplicates `fd` onto the number `target`, which the caller owns from then on.
fn dup_to(fd: RawFd, target: RawFd) -> OwnedFd {
    // SAFETY: dup2 takes no pointers; the result is checked.
    let ret = unsafe { libc::dup2(fd, target) };
    assert_eq!(ret, target, "dup2: {}", io::Error::last_os_error());
    // SAFETY: `target` is now a descriptor that only this OwnedFd owns.
    unsafe { OwnedFd::from_raw_fd(target) }
}

/// select refuses a descriptor at or above FD_SETSIZE; poll and epoll watch it as any other.
fn fd_above_fd_setsize(backend: Backend) {
    // A different number per backend, as the tests run in parallel threads of one process.
    let target = 1100 + Backend::ALL.iter().position(|&b| b == backend).unwrap() as RawFd;
    allow_fd(target);
    let (a, mut peer) = unix_pair();
    let high = dup_to(a.as_raw_fd(), target);
    let mut p = poller(backend);
    let result = p.register(high.as_raw_fd(), Token(8), Interest::READABLE);
    assert!(!fits_select(target) && target as usize >= FD_SETSIZE);
    if backend == Backend::Select {
        let err = result.expect_err("select must refuse fd >= FD_SETSIZE");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(is_fd_too_large(&err), "{err}");
        assert!(err.to_string().contains("exceeds FD_SETSIZE"), "{err}");
        assert_eq!(p.capacity_limit(), Some(FD_SETSIZE));
        return;
    }
    result.unwrap();
    peer.write_all(b"x").unwrap();
    assert_eq!(only(&wait(&mut *p, BOUND)).token, Token(8));
    p.deregister(high.as_raw_fd()).unwrap();
}

fn errors_are_consistent(backend: Backend) {
    let (a, _peer) = unix_pair();
    let fd = a.as_raw_fd();
    let mut p = poller(backend);
    let kind = |r: io::Result<()>| r.unwrap_err().kind();
    assert_eq!(kind(p.reregister(fd, Token(1), Interest::READABLE)), io::ErrorKind::NotFound);
    assert_eq!(kind(p.deregister(fd)), io::ErrorKind::NotFound);
    p.register(fd, Token(1), Interest::READABLE).unwrap();
    let twice = p.register(fd, Token(1), Interest::READABLE);
    assert_eq!(kind(twice), io::ErrorKind::AlreadyExists);
    assert!(!is_fd_too_large(&p.deregister(-1).unwrap_err()));
}

/// The waker's descriptor for the signal handler below; set once.
static SIGNAL_WAKER: OnceLock<Waker> = OnceLock::new();

extern "C" fn wake_from_signal(_: libc::c_int) {
    if let Some(waker) = SIGNAL_WAKER.get() {
        let _ = waker.wake();
    }
}

/// A signal handler wakes the loop through the waker (the self-pipe trick, with an eventfd).
/// One test for all backends, because the handler and its waker are process-wide.
#[test]
fn waker_wakes_from_signal_handler() {
    let waker = SIGNAL_WAKER.get_or_init(|| Waker::new().unwrap());
    // SAFETY: the handler only reads an initialised OnceLock and calls `wake`, one write(2);
    // the zeroed sigaction is a valid empty mask with no flags.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = wake_from_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        assert_eq!(libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut()), 0);
    }
    for backend in Backend::ALL {
        let mut p = poller(backend);
        p.register(waker.as_raw_fd(), Token(9), Interest::READABLE).unwrap();
        assert!(wait(&mut *p, NOW).is_empty(), "{backend}: awake before the signal");
        // SAFETY: raise delivers SIGUSR2 to this thread, whose handler is installed above.
        assert_eq!(unsafe { libc::raise(libc::SIGUSR2) }, 0);
        assert_eq!(only(&wait(&mut *p, BOUND)).token, Token(9), "{backend}");
        waker.drain().unwrap();
    }
}

#[test]
fn wakes_coalesce_and_drain_is_idempotent() {
    let waker = Waker::new().unwrap();
    waker.drain().unwrap();
    for _ in 0..3 {
        waker.wake().unwrap();
    }
    let mut p = poller(Backend::Poll);
    p.register(waker.as_raw_fd(), Token(1), Interest::READABLE).unwrap();
    assert_eq!(only(&wait(&mut *p, NOW)).token, Token(1));
    waker.drain().unwrap();
    assert!(wait(&mut *p, NOW).is_empty(), "one drain must consume every wake");
}
