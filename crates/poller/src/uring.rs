//! The io_uring backend: the program hands the kernel operations and collects their
//! completions, one `io_uring_enter(2)` for a whole turn's submissions and its wait.
//!
//! It serves two ways at once:
//!
//! - **Readiness**, as the other backends ([`crate::Poller`]): each registered descriptor has one
//!   one-shot `IORING_OP_POLL_ADD` in the kernel. When it completes the descriptor is reported,
//!   and the poll is armed again at the start of the next [`Poller::wait`], in the same system
//!   call that waits; a descriptor still ready then completes at once. That is what makes it
//!   level-triggered like select, poll and epoll, so the event loop cannot tell the difference.
//!   Changing an interest costs no system call of its own (epoll_ctl is one): the remove and
//!   the new poll ride along with the next wait.
//! - **Completions** ([`Ring`]): a multishot accept per listener (one submission, a completion
//!   per connection), receives into a ring of buffers the kernel picks from (so a session
//!   waiting for its next command holds no receive buffer: the buffer is chosen when data
//!   arrives, copied out in the same turn and given back), and sends whose buffer the ring
//!   owns until the kernel is done with it.
//!
//! Who owns what: a send's buffer belongs to the ring from [`Ring::send`] until its
//! [`Done::Sent`] hands it back; the receive buffers belong to the ring for ever, and received
//! bytes are copied into [`Ring::take_completions`]'s byte arena. An operation in flight holds
//! its own reference to the socket: closing the descriptor does not end it, so a caller closing
//! a connection [cancels](Ring::cancel) its operations and waits for their last completion
//! before it reuses the token.
//!
//! Needs Linux 5.19 (multishot accept, provided-buffer rings); [`UringPoller::new`] fails with
//! a message naming the cause where io_uring is missing or forbidden (a seccomp profile, or
//! `kernel.io_uring_disabled`).

use std::collections::HashMap;
use std::io;
use std::ops::Range;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use crate::{already_registered, negative_fd, not_registered};
use crate::{Event, Interest, Poller, Token};

/// Submission queue entries; more pushed in one turn are submitted early, in batches.
const SQ_ENTRIES: u32 = 1024;
/// Completion queue entries (the kernel keeps overflowing ones on a list, nothing is lost).
const CQ_ENTRIES: u32 = 8192;
/// Receive buffers the kernel picks from, and the size of each: a control channel's commands
/// are short lines; a longer burst arrives over several completions.
const RECV_BUFFERS: u16 = 512;
const RECV_BUFFER_SIZE: usize = 2048;
const BUFFER_GROUP: u16 = 0;

/// The low bits of an operation's user data say what it is.
const OP_BITS: u32 = 3;
const OP_ACCEPT: u64 = 1;
const OP_RECV: u64 = 2;
const OP_SEND: u64 = 3;
const OP_POLL: u64 = 4;
/// A poll remove or a cancel: its own completion says nothing we need.
const OP_QUIET: u64 = 5;

/// A completion-based operation, for [`Ring::cancel`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Accept,
    Recv,
    Send,
}

impl Op {
    fn code(self) -> u64 {
        match self {
            Op::Accept => OP_ACCEPT,
            Op::Recv => OP_RECV,
            Op::Send => OP_SEND,
        }
    }
}

/// What a completion-based operation came to.
#[derive(Debug)]
pub enum Done {
    /// A connection accepted by a multishot accept.
    Accepted(io::Result<OwnedFd>),
    /// Bytes received: their place in the byte arena of [`Ring::take_completions`] (empty: end
    /// of file). A cancelled receive is `Err` with `ECANCELED`.
    Received(io::Result<Range<usize>>),
    /// A send finished: how many bytes went, and the buffer back.
    Sent(io::Result<usize>, Vec<u8>),
}

/// One completion, for the token its operation was submitted with.
#[derive(Debug)]
pub struct Completion {
    pub token: Token,
    pub done: Done,
    /// The operation goes on (a multishot accept that will complete again).
    pub more: bool,
}

/// The completion side of [`UringPoller`]. At most one operation of each [`Op`] per token is in
/// flight; a second one is refused with `AlreadyExists`.
pub trait Ring {
    /// Accepts connections on `listener` until cancelled or an error ends it (its completion
    /// then has `more == false`, and the caller arms it again or falls back to accept(2)).
    fn accept_multishot(&mut self, listener: RawFd, token: Token) -> io::Result<()>;
    /// Receives up to `max` bytes from `fd` into a buffer the kernel picks.
    fn recv(&mut self, fd: RawFd, token: Token, max: usize) -> io::Result<()>;
    /// Sends `buf` (all of it, or the part the completion says).
    fn send(&mut self, fd: RawFd, token: Token, buf: Vec<u8>) -> io::Result<()>;
    /// Asks the kernel to cancel `op` for `token`; its completion still comes (with
    /// `ECANCELED`, or its result if it finished first).
    fn cancel(&mut self, token: Token, op: Op);
    /// Hands the queued operations to the kernel now, without waiting. Call it before closing
    /// a descriptor that queued operations name: the kernel resolves a descriptor number when
    /// it takes the operation, and by then the number could be another connection's.
    fn submit(&mut self) -> io::Result<()>;
    /// Moves the completions of the last wait into `into`, and swaps the bytes they received
    /// into `bytes` (both are cleared first).
    fn take_completions(&mut self, into: &mut Vec<Completion>, bytes: &mut Vec<u8>);
}

/// A poll registration: one one-shot poll in the kernel while `armed`.
#[derive(Clone, Copy)]
struct Registration {
    token: Token,
    interest: Interest,
    /// Tells this registration's poll completions from an earlier one's of the same fd.
    generation: u32,
    armed: bool,
}

/// A [`crate::Poller`] and a [`Ring`] over one io_uring instance.
pub struct UringPoller {
    ring: IoUring,
    /// `polls[fd]`.
    polls: Vec<Option<Registration>>,
    next_generation: u32,
    /// Descriptors reported by the last wait: armed again at the next one if still registered.
    rearm: Vec<RawFd>,
    /// Receives in flight: descriptor and limit, to submit again when buffers ran out.
    recvs: HashMap<usize, (RawFd, u32)>,
    /// Sends in flight, with their buffers.
    sends: HashMap<usize, Vec<u8>>,
    accepts: HashMap<usize, RawFd>,
    buffers: Option<Buffers>,
    completions: Vec<Completion>,
    arena: Vec<u8>,
    /// The last wait's completion queue entries (kept for its capacity).
    cqes: Vec<cqueue::Entry>,
}

fn user_data(token: Token, op: u64) -> u64 {
    (token.0 as u64) << OP_BITS | op
}

fn poll_data(fd: RawFd, generation: u32) -> u64 {
    u64::from(generation) << 32 | (fd as u64) << OP_BITS | OP_POLL
}

fn poll_mask(interest: Interest) -> u32 {
    let mut mask = 0;
    if interest.readable() {
        mask |= libc::POLLIN;
    }
    if interest.writable() {
        mask |= libc::POLLOUT;
    }
    mask as u32
}

/// Explains a failed io_uring_setup(2) in the words a user needs.
fn unavailable(e: io::Error) -> io::Error {
    let why = match e.raw_os_error() {
        Some(libc::ENOSYS) => "this kernel has no io_uring (Linux 5.19 or later is needed)",
        Some(libc::EPERM) => {
            "io_uring is forbidden here (kernel.io_uring_disabled, or a seccomp profile such as \
             a container runtime's default)"
        }
        Some(libc::ENOMEM) => "the kernel refused io_uring's memory (RLIMIT_MEMLOCK?)",
        _ => "io_uring_setup failed",
    };
    io::Error::new(e.kind(), format!("io_uring is not available: {why} ({e})"))
}

impl UringPoller {
    pub fn new() -> io::Result<UringPoller> {
        let ring = IoUring::builder()
            .setup_cqsize(CQ_ENTRIES)
            .setup_submit_all()
            .build(SQ_ENTRIES)
            .map_err(unavailable)?;
        if !ring.params().is_feature_ext_arg() || !ring.params().is_feature_nodrop() {
            let e = "io_uring here is too old (Linux 5.19 or later is needed)";
            return Err(io::Error::new(io::ErrorKind::Unsupported, e));
        }
        Ok(UringPoller {
            ring,
            polls: Vec::new(),
            next_generation: 0,
            rearm: Vec::new(),
            recvs: HashMap::new(),
            sends: HashMap::new(),
            accepts: HashMap::new(),
            buffers: None,
            completions: Vec::new(),
            arena: Vec::new(),
            cqes: Vec::new(),
        })
    }

    /// Queues one submission, submitting what is queued first if the queue is full.
    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every pointer an entry carries (a send's buffer, the receive buffers)
            // stays valid until its completion: `sends` and `buffers` own them.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return Ok(());
            }
            match self.ring.submit() {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                // Completions are waiting to be reaped: they will be at the next wait.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn registration(&mut self, fd: RawFd) -> Option<&mut Registration> {
        self.polls.get_mut(usize::try_from(fd).ok()?)?.as_mut()
    }

    fn arm(&mut self, fd: RawFd) -> io::Result<()> {
        let Some(reg) = self.registration(fd) else { return Ok(()) };
        if reg.armed {
            return Ok(());
        }
        reg.armed = true;
        let (mask, data) = (poll_mask(reg.interest), poll_data(fd, reg.generation));
        self.push(opcode::PollAdd::new(types::Fd(fd), mask).build().user_data(data))
    }

    /// Cancels the armed poll of `fd`, if any (its completion will be stale).
    fn disarm(&mut self, fd: RawFd) -> io::Result<()> {
        let Some(reg) = self.registration(fd) else { return Ok(()) };
        if !reg.armed {
            return Ok(());
        }
        reg.armed = false;
        let data = poll_data(fd, reg.generation);
        self.push(opcode::PollRemove::new(data).build().user_data(OP_QUIET))
    }

    fn fresh_generation(&mut self) -> u32 {
        self.next_generation = self.next_generation.wrapping_add(1);
        self.next_generation
    }

    fn submit_recv(&mut self, fd: RawFd, token: Token, max: u32) -> io::Result<()> {
        let entry = opcode::Recv::new(types::Fd(fd), std::ptr::null_mut(), max)
            .buf_group(BUFFER_GROUP)
            .build()
            .flags(squeue::Flags::BUFFER_SELECT)
            .user_data(user_data(token, OP_RECV));
        self.push(entry)
    }

    /// Turns one completion into an event, a [`Completion`], or nothing.
    fn reap(&mut self, cqe: &cqueue::Entry, events: &mut Vec<Event>) -> io::Result<()> {
        let data = cqe.user_data();
        let (op, res, flags) = (data & ((1 << OP_BITS) - 1), cqe.result(), cqe.flags());
        let token = Token((data >> OP_BITS) as usize);
        let error = || io::Error::from_raw_os_error(-res);
        match op {
            OP_POLL => {
                let fd = ((data >> OP_BITS) & 0x1FFF_FFFF) as RawFd;
                let generation = (data >> 32) as u32;
                let Some(reg) = self.registration(fd) else { return Ok(()) };
                if reg.generation != generation || !reg.armed {
                    return Ok(());
                }
                reg.armed = false;
                let (token, interest) = (reg.token, reg.interest);
                self.rearm.push(fd);
                let has = |flag: libc::c_short| res >= 0 && res & libc::c_int::from(flag) != 0;
                let raw = Event {
                    token,
                    readable: has(libc::POLLIN) || has(libc::POLLPRI),
                    writable: has(libc::POLLOUT),
                    hup: has(libc::POLLHUP) || has(libc::POLLRDHUP),
                    error: res < 0 || has(libc::POLLERR) || has(libc::POLLNVAL),
                };
                events.push(raw.normalized(interest));
            }
            OP_ACCEPT => {
                let more = cqueue::more(flags);
                if !more {
                    self.accepts.remove(&token.0);
                }
                // SAFETY: a successful accept's result is a new descriptor nothing else owns.
                let done = match res {
                    fd if fd >= 0 => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
                    _ => Err(error()),
                };
                self.completions.push(Completion { token, done: Done::Accepted(done), more });
            }
            OP_RECV => {
                let bid = cqueue::buffer_select(flags);
                let done = match (res, bid) {
                    (n, _) if n == -libc::ENOBUFS => {
                        // ENOBUFS: every buffer was taken in this turn; they are back now.
                        if let Some(&(fd, max)) = self.recvs.get(&token.0) {
                            return self.submit_recv(fd, token, max);
                        }
                        Err(error())
                    }
                    (n, Some(bid)) if n >= 0 => {
                        let buffers = self.buffers.as_mut().expect("a receive had buffers");
                        let start = self.arena.len();
                        self.arena.extend_from_slice(&buffers.get(bid)[..n as usize]);
                        buffers.give_back(bid);
                        Ok(start..self.arena.len())
                    }
                    (n, None) if n >= 0 => Ok(self.arena.len()..self.arena.len()),
                    (_, bid) => {
                        if let (Some(bid), Some(b)) = (bid, self.buffers.as_mut()) {
                            b.give_back(bid);
                        }
                        Err(error())
                    }
                };
                self.recvs.remove(&token.0);
                let done = Done::Received(done);
                self.completions.push(Completion { token, done, more: false });
            }
            OP_SEND => {
                let buf = self.sends.remove(&token.0).unwrap_or_default();
                let done = Done::Sent(if res >= 0 { Ok(res as usize) } else { Err(error()) }, buf);
                self.completions.push(Completion { token, done, more: false });
            }
            _ => {}
        }
        Ok(())
    }
}

impl Poller for UringPoller {
    fn register(&mut self, fd: RawFd, token: Token, interest: Interest) -> io::Result<()> {
        let i = usize::try_from(fd).map_err(|_| negative_fd(fd))?;
        if self.polls.get(i).is_some_and(Option::is_some) {
            return Err(already_registered(fd));
        }
        if self.polls.len() <= i {
            self.polls.resize(i + 1, None);
        }
        let generation = self.fresh_generation();
        self.polls[i] = Some(Registration { token, interest, generation, armed: false });
        self.arm(fd)
    }

    fn reregister(&mut self, fd: RawFd, token: Token, interest: Interest) -> io::Result<()> {
        let Some(reg) = self.registration(fd) else { return Err(not_registered(fd)) };
        if reg.interest == interest {
            reg.token = token;
            return Ok(());
        }
        let armed = reg.armed;
        self.disarm(fd)?;
        let generation = self.fresh_generation();
        let reg = self.registration(fd).expect("registered");
        (reg.token, reg.interest, reg.generation) = (token, interest, generation);
        // Not armed: it was reported in this turn and is armed again at the next wait.
        match armed {
            true => self.arm(fd),
            false => Ok(()),
        }
    }

    fn deregister(&mut self, fd: RawFd) -> io::Result<()> {
        if self.registration(fd).is_none() {
            return Err(not_registered(fd));
        }
        self.disarm(fd)?;
        self.polls[fd as usize] = None;
        Ok(())
    }

    fn wait(&mut self, events: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()> {
        events.clear();
        self.completions.clear();
        self.arena.clear();
        for fd in std::mem::take(&mut self.rearm) {
            self.arm(fd)?;
        }
        let ts = timeout.map(types::Timespec::from);
        let mut args = types::SubmitArgs::new();
        if let Some(ts) = &ts {
            args = args.timespec(ts);
        }
        let want = usize::from(self.ring.completion().is_empty());
        match self.ring.submitter().submit_with_args(want, &args) {
            Ok(_) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::ETIME | libc::EBUSY)) => {
            }
            Err(e) => return Err(e),
        }
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.clear();
        cqes.extend(self.ring.completion());
        let reaped = cqes.iter().try_for_each(|cqe| self.reap(cqe, events));
        self.cqes = cqes;
        reaped
    }

    fn name(&self) -> &'static str {
        "uring"
    }

    fn capacity_limit(&self) -> Option<usize> {
        None
    }

    fn ring(&mut self) -> Option<&mut dyn Ring> {
        Some(self)
    }
}

impl Ring for UringPoller {
    fn accept_multishot(&mut self, listener: RawFd, token: Token) -> io::Result<()> {
        if self.accepts.insert(token.0, listener).is_some() {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "an accept is in flight"));
        }
        let flags = libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
        let entry = opcode::AcceptMulti::new(types::Fd(listener))
            .flags(flags)
            .build()
            .user_data(user_data(token, OP_ACCEPT));
        self.push(entry)
    }

    fn recv(&mut self, fd: RawFd, token: Token, max: usize) -> io::Result<()> {
        if self.buffers.is_none() {
            self.buffers = Some(Buffers::register(&self.ring)?);
        }
        let max = max.clamp(1, RECV_BUFFER_SIZE) as u32;
        if self.recvs.insert(token.0, (fd, max)).is_some() {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "a receive is in flight"));
        }
        self.submit_recv(fd, token, max)
    }

    fn send(&mut self, fd: RawFd, token: Token, buf: Vec<u8>) -> io::Result<()> {
        if self.sends.contains_key(&token.0) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "a send is in flight"));
        }
        let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        let entry = opcode::Send::new(types::Fd(fd), buf.as_ptr(), len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(user_data(token, OP_SEND));
        // The Vec's heap block does not move when the Vec itself moves into the map.
        self.sends.insert(token.0, buf);
        self.push(entry)
    }

    fn cancel(&mut self, token: Token, op: Op) {
        let in_flight = match op {
            Op::Accept => self.accepts.contains_key(&token.0),
            Op::Recv => self.recvs.contains_key(&token.0),
            Op::Send => self.sends.contains_key(&token.0),
        };
        if in_flight {
            let entry = opcode::AsyncCancel::new(user_data(token, op.code()));
            let _ = self.push(entry.build().user_data(OP_QUIET));
        }
    }

    fn submit(&mut self) -> io::Result<()> {
        match self.ring.submit() {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EBUSY)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn take_completions(&mut self, into: &mut Vec<Completion>, bytes: &mut Vec<u8>) {
        into.clear();
        bytes.clear();
        std::mem::swap(into, &mut self.completions);
        std::mem::swap(bytes, &mut self.arena);
    }
}

/// The provided-buffer ring: `RECV_BUFFERS` entries the kernel takes buffers from, and the
/// buffers. Registered with the ring on the first receive.
struct Buffers {
    entries: *mut types::BufRingEntry,
    memory: *mut u8,
    tail: u16,
}

// SAFETY: the pointers are owned by this struct alone, which lives in one poller.
unsafe impl Send for Buffers {}

impl Buffers {
    fn register(ring: &IoUring) -> io::Result<Buffers> {
        let entries_layout =
            std::alloc::Layout::from_size_align(usize::from(RECV_BUFFERS) * 16, 4096).unwrap();
        let memory_layout =
            std::alloc::Layout::from_size_align(usize::from(RECV_BUFFERS) * RECV_BUFFER_SIZE, 64)
                .unwrap();
        // SAFETY: both layouts have a non-zero size.
        let (entries, memory) = unsafe {
            (
                std::alloc::alloc_zeroed(entries_layout) as *mut types::BufRingEntry,
                std::alloc::alloc(memory_layout),
            )
        };
        if entries.is_null() || memory.is_null() {
            return Err(io::ErrorKind::OutOfMemory.into());
        }
        // SAFETY: `entries` is page-aligned room for RECV_BUFFERS entries, which is never freed
        // (see Drop) and so outlives the registration.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                entries as u64,
                RECV_BUFFERS,
                BUFFER_GROUP,
                0,
            )
        }
        .map_err(|e| {
            let e = format!("io_uring here lacks provided-buffer rings (Linux 5.19+): {e}");
            io::Error::new(io::ErrorKind::Unsupported, e)
        })?;
        let mut buffers = Buffers { entries, memory, tail: 0 };
        for bid in 0..RECV_BUFFERS {
            buffers.give_back(bid);
        }
        Ok(buffers)
    }

    fn get(&self, bid: u16) -> &[u8] {
        let start = usize::from(bid) * RECV_BUFFER_SIZE;
        // SAFETY: `bid` < RECV_BUFFERS (the kernel hands back ids we gave it), so the range
        // lies in `memory`; the kernel is done writing it once its completion is seen.
        unsafe { std::slice::from_raw_parts(self.memory.add(start), RECV_BUFFER_SIZE) }
    }

    /// Puts buffer `bid` back in the ring for the kernel to pick.
    fn give_back(&mut self, bid: u16) {
        let slot = usize::from(self.tail & (RECV_BUFFERS - 1));
        // SAFETY: `slot` < RECV_BUFFERS entries; the entry at the tail is ours until the tail
        // moves past it, and the tail is published with release ordering after it is written.
        unsafe {
            let entry = &mut *self.entries.add(slot);
            entry.set_addr(self.memory.add(usize::from(bid) * RECV_BUFFER_SIZE) as u64);
            entry.set_len(RECV_BUFFER_SIZE as u32);
            entry.set_bid(bid);
            self.tail = self.tail.wrapping_add(1);
            let tail = types::BufRingEntry::tail(self.entries) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

// The buffer memory is never freed: the ring's teardown in the kernel runs after close(2)
// returns and may still touch it, and a poller lives as long as its event loop.
