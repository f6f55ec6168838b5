//! The event-loop model ([`Model::Event`](super::Model::Event)): one thread runs every transfer.
//!
//! # The loop
//!
//! Every socket is non-blocking and registered, level-triggered, in one [`Poller`] (select, poll
//! or epoll, chosen at run time): the listener under token 0, and each transfer's own socket (its
//! transfer ID, a fresh port, as in the other models) under a token that is never reused. Each
//! turn of the loop:
//!
//! 1. stops if the shutdown flag is set; running transfers are then aborted with ERROR 0;
//! 2. waits for readiness until the earliest timer is due, but at most 200 ms, so that the flag
//!    is seen in time;
//! 3. reads each ready transfer socket: datagrams from the transfer's peer feed its machine;
//!    anything from elsewhere gets ERROR 5 and the transfer goes on;
//! 4. reads the listener, after the transfers so that a transfer that just ended makes room:
//!    a new request (the same checks and duplicate suppression as the other
//!    models) gets a socket and a transfer machine, which sends its first packet at once, or
//!    ERROR 0 "server busy" when [`ServerConfig::max_transfers`](super::ServerConfig) are
//!    running or the backend could not watch the new socket (select and `FD_SETSIZE`);
//! 5. fires the timers that are due ([`Transfer::handle_timeout`]: retransmission, give-up,
//!    end of the dally).
//!
//! Whenever a transfer has handled something it is *settled*: what it wants to send is sent,
//! then it is removed if finished, or else its next deadline goes on the timer heap.
//!
//! # Timers
//!
//! A [`BinaryHeap`] of `(deadline, id)`, earliest first, with lazy deletion. A transfer
//! remembers the deadline it has in the heap; an entry that does not match is stale and skipped
//! when it comes up. A deadline that moves *later* (every ACK restarts the retransmission clock)
//! is not pushed at all: the earlier entry fires, finds nothing due, and pushes the new
//! deadline. So each transfer has about one entry, and a timer costs O(log n) however many
//! transfers run.
//!
//! # Sending and reading
//!
//! A send that would block (socket buffer full) queues the packet on the transfer, which also
//! watches for writability until its queue has drained, so packets still leave in order. Each
//! readiness event reads at most [`READ_BATCH`] datagrams from a socket, so one fast peer cannot
//! starve the others. File reads and writes are blocking calls made by the loop thread, one
//! block at a time; the page cache usually makes them quick.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zocalo_poller::{is_fd_too_large, new_poller, Backend, Event, Interest, Poller, Token};

use super::{classify, log_outcome, parse_request, refuse, send_error, start, Context, Job};
use crate::driver::{self, grow_receive_buffer, reject_stranger, SHUTDOWN_POLL};
use crate::packet::MAX_PACKET_LEN;
use crate::transfer::Transfer;

/// The listening socket's token; transfers get 1, 2, 3...
const LISTENER: Token = Token(0);

/// Datagrams read from one socket per readiness event.
const READ_BATCH: usize = 32;

/// Runs the event loop on `listener` until the shutdown flag is set or the listener fails.
pub(super) fn serve(listener: &UdpSocket, ctx: &Context<'_>, backend: Backend) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let mut poller = new_poller(backend)?;
    poller.register(listener.as_raw_fd(), LISTENER, Interest::READABLE)?;
    let mut server = EventLoop {
        ctx,
        listener,
        poller,
        transfers: HashMap::new(),
        timers: Timers::default(),
        next_id: LISTENER.0 + 1,
        buf: vec![0; MAX_PACKET_LEN + 1],
    };
    let result = server.run();
    server.abort_all("server shutting down");
    result
}

struct EventLoop<'a> {
    ctx: &'a Context<'a>,
    listener: &'a UdpSocket,
    poller: Box<dyn Poller>,
    transfers: HashMap<usize, Slot>,
    timers: Timers,
    next_id: usize,
    buf: Vec<u8>,
}

impl EventLoop<'_> {
    fn run(&mut self) -> io::Result<()> {
        let mut events = Vec::new();
        let mut due = Vec::new();
        while !self.ctx.shutdown.load(Ordering::Relaxed) {
            self.poller.wait(&mut events, Some(self.wait_time(Instant::now())))?;
            let mut requests = false;
            for event in &events {
                match event.token {
                    LISTENER => requests = true,
                    Token(id) => self.on_transfer_event(id, event),
                }
            }
            // After the transfers, so that a slot freed in this turn can take a new request.
            if requests {
                self.accept()?;
            }
            self.fire_timers(Instant::now(), &mut due);
        }
        tracing::info!(transfers = self.transfers.len(), "tftp server shutting down");
        Ok(())
    }

    /// Until the earliest timer, but never longer than the shutdown poll interval.
    fn wait_time(&self, now: Instant) -> Duration {
        let until_timer = self.timers.next().map(|at| at.saturating_duration_since(now));
        until_timer.map_or(SHUTDOWN_POLL, |wait| wait.min(SHUTDOWN_POLL))
    }

    fn on_transfer_event(&mut self, id: usize, event: &Event) {
        if event.readable {
            self.receive(id);
        }
        // Writable: `settle` flushes the queued packets.
        self.settle(id);
    }

    /// Reads requests from the listener.
    fn accept(&mut self) -> io::Result<()> {
        for _ in 0..READ_BATCH {
            let Some((len, peer)) = driver::receive(self.listener, &mut self.buf)? else {
                break;
            };
            let Some(job) = classify(self.listener, self.ctx, peer, &self.buf[..len]) else {
                continue;
            };
            if job.replacing {
                self.drop_replaced(job.peer);
            }
            if !self.admit(&job) {
                self.ctx.end_job(job.peer, job.generation, &job.replaced);
            }
        }
        Ok(())
    }

    /// Drops, without a word, the transfer of `peer` that a newer request replaced.
    fn drop_replaced(&mut self, peer: SocketAddr) {
        let replaced = |slot: &Slot| slot.peer == peer && slot.replaced.load(Ordering::Relaxed);
        let old = self.transfers.iter().find(|(_, slot)| replaced(slot)).map(|(id, _)| *id);
        if let Some(id) = old {
            if let Some(slot) = self.transfers.get_mut(&id) {
                // Nothing to send: the client has moved on. One that lingered after its last
                // block (the dally) still logs its outcome.
                slot.broken = slot.machine.outcome().is_none();
            }
            self.remove(id);
        }
    }

    /// Starts a transfer for `job`, or refuses it; true if a transfer started.
    fn admit(&mut self, job: &Job) -> bool {
        if self.transfers.len() >= self.ctx.config.max_transfers {
            return self.busy(job.peer);
        }
        let Some((request, write)) = parse_request(&job.datagram) else {
            return false;
        };
        let socket = match transfer_socket(self.ctx.local) {
            Ok(socket) => socket,
            Err(err) => {
                tracing::warn!(%err, "cannot bind transfer socket");
                return false;
            }
        };
        // Checked before the file is opened: a refused WRQ must not truncate anything.
        if !self.can_watch(&socket) {
            return self.busy(job.peer);
        }
        match start(self.ctx, &request, write) {
            Ok(machine) => {
                let slot = Slot::new(socket, job, machine, request.filename);
                self.insert(slot)
            }
            Err((code, message)) => {
                self.ctx.refused();
                send_error(&socket, job.peer, code, &message);
                false
            }
        }
    }

    /// Whether the poller can watch `socket` (select cannot watch fds at or past FD_SETSIZE).
    fn can_watch(&self, socket: &UdpSocket) -> bool {
        let fd = usize::try_from(socket.as_raw_fd()).unwrap_or(usize::MAX);
        self.poller.capacity_limit().is_none_or(|limit| fd < limit)
    }

    /// Answers "server busy" from the listener; false, for [`EventLoop::admit`].
    fn busy(&self, peer: SocketAddr) -> bool {
        refuse(self.listener, self.ctx, peer, "server busy");
        false
    }

    fn insert(&mut self, slot: Slot) -> bool {
        let id = self.next_id;
        let fd = slot.socket.as_raw_fd();
        if let Err(err) = self.poller.register(fd, Token(id), Interest::READABLE) {
            if is_fd_too_large(&err) {
                return self.busy(slot.peer);
            }
            tracing::warn!(%err, "cannot watch transfer socket");
            return false;
        }
        self.next_id += 1;
        self.transfers.insert(id, slot);
        self.settle(id);
        true
    }

    /// Feeds a transfer the datagrams waiting on its socket.
    fn receive(&mut self, id: usize) {
        let Some(slot) = self.transfers.get_mut(&id) else {
            return;
        };
        for _ in 0..READ_BATCH {
            if slot.broken {
                break;
            }
            match driver::receive(&slot.socket, &mut self.buf) {
                Ok(Some((len, from))) => slot.handle(from, &self.buf[..len]),
                Ok(None) => break,
                Err(err) => return slot.fail(&err),
            }
        }
    }

    /// Sends what `id` has to send, then removes it if it is done, or else updates what the
    /// poller watches for it and its timer.
    fn settle(&mut self, id: usize) {
        let Some(slot) = self.transfers.get_mut(&id) else {
            return;
        };
        slot.flush();
        if slot.done() {
            return self.remove(id);
        }
        let interest = slot.wanted_interest();
        if interest != slot.interest {
            match self.poller.reregister(slot.socket.as_raw_fd(), Token(id), interest) {
                Ok(()) => slot.interest = interest,
                Err(err) => tracing::warn!(%err, "cannot change what a transfer watches"),
            }
        }
        self.timers.schedule(id, &mut slot.scheduled, slot.machine.poll_timeout());
    }

    fn fire_timers(&mut self, now: Instant, due: &mut Vec<(Instant, usize)>) {
        self.timers.pop_due(now, due);
        for (at, id) in due.drain(..) {
            let Some(slot) = self.transfers.get_mut(&id) else {
                continue;
            };
            if slot.scheduled != Some(at) {
                continue; // stale: a newer entry stands for this transfer
            }
            slot.scheduled = None;
            if slot.machine.poll_timeout().is_some_and(|deadline| deadline <= now) {
                slot.machine.handle_timeout(now);
            }
            self.settle(id);
        }
    }

    fn remove(&mut self, id: usize) {
        let Some(slot) = self.transfers.remove(&id) else {
            return;
        };
        if let Err(err) = self.poller.deregister(slot.socket.as_raw_fd()) {
            tracing::warn!(%err, "cannot stop watching a transfer socket");
        }
        if !slot.broken {
            log_outcome(slot.peer, &slot.name, slot.machine.outcome());
        }
        self.ctx.end_job(slot.peer, slot.generation, &slot.replaced);
    }

    /// Ends every transfer, sending each peer ERROR 0 with `message` (best effort).
    fn abort_all(&mut self, message: &str) {
        let ids: Vec<usize> = self.transfers.keys().copied().collect();
        for id in ids {
            if let Some(slot) = self.transfers.get_mut(&id) {
                slot.machine.abort(message);
                slot.flush();
            }
            self.remove(id);
        }
    }
}

/// A socket for one transfer: the listener's IP, a fresh port, non-blocking.
fn transfer_socket(local: SocketAddr) -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind(SocketAddr::new(local.ip(), 0))?;
    socket.set_nonblocking(true)?;
    grow_receive_buffer(&socket);
    Ok(socket)
}

/// One running transfer.
struct Slot {
    socket: UdpSocket,
    peer: SocketAddr,
    /// The generation of the request it serves and its replaced flag (see [`Job`]).
    generation: u64,
    replaced: Arc<AtomicBool>,
    machine: Box<dyn Transfer>,
    name: String,
    /// The deadline this transfer has in the timer heap, if any.
    scheduled: Option<Instant>,
    /// Packets that could not be sent yet, oldest first.
    backlog: VecDeque<Vec<u8>>,
    /// What the poller watches the socket for.
    interest: Interest,
    /// The socket failed; the transfer is dropped without another word.
    broken: bool,
}

impl Slot {
    fn new(socket: UdpSocket, job: &Job, machine: Box<dyn Transfer>, name: &str) -> Self {
        Slot {
            socket,
            peer: job.peer,
            generation: job.generation,
            replaced: Arc::clone(&job.replaced),
            machine,
            name: name.to_string(),
            scheduled: None,
            backlog: VecDeque::new(),
            interest: Interest::READABLE,
            broken: false,
        }
    }

    /// One datagram from `from`: the peer's goes to the machine, a stranger's gets ERROR 5.
    fn handle(&mut self, from: SocketAddr, datagram: &[u8]) {
        if from != self.peer {
            return reject_stranger(&self.socket, from, datagram);
        }
        self.machine.handle_datagram(datagram, Instant::now());
        // Send after every datagram, as the blocking driver does, so nothing queued is
        // overwritten by the next one.
        self.flush();
    }

    fn flush(&mut self) {
        if self.broken {
            return;
        }
        if let Err(err) = self.try_flush() {
            self.fail(&err);
        }
    }

    /// Sends the backlog, then what the machine has to send; what would block is queued.
    fn try_flush(&mut self) -> io::Result<()> {
        while let Some(packet) = self.backlog.front() {
            if !send(&self.socket, packet, self.peer)? {
                break;
            }
            self.backlog.pop_front();
        }
        while let Some(packet) = self.machine.poll_transmit() {
            if !self.backlog.is_empty() || !send(&self.socket, packet, self.peer)? {
                self.backlog.push_back(packet.to_vec());
            }
        }
        Ok(())
    }

    fn fail(&mut self, err: &io::Error) {
        tracing::warn!(peer = %self.peer, name = self.name, %err, "transfer socket failed");
        self.machine.abort("socket error");
        self.backlog.clear();
        self.broken = true;
    }

    fn done(&self) -> bool {
        self.broken || (self.machine.is_finished() && self.backlog.is_empty())
    }

    fn wanted_interest(&self) -> Interest {
        match self.backlog.is_empty() {
            true => Interest::READABLE,
            false => Interest::BOTH,
        }
    }
}

/// Sends one datagram: true if it left (or was lost, which the timers repair), false if it
/// would block and must wait for writability.
fn send(socket: &UdpSocket, packet: &[u8], to: SocketAddr) -> io::Result<bool> {
    match socket.send_to(packet, to) {
        Ok(_) => Ok(true),
        Err(err)
            if matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) =>
        {
            Ok(false)
        }
        Err(err) if driver::transient(&err) => Ok(true),
        Err(err) => Err(err),
    }
}

/// Deadlines of transfers, earliest first, with lazy deletion (see the module docs).
#[derive(Debug, Default)]
struct Timers {
    heap: BinaryHeap<Reverse<(Instant, usize)>>,
}

impl Timers {
    /// Makes sure `id` is woken by `want`. `scheduled` is the deadline `id` already has in the
    /// heap: an entry is pushed only if `want` is earlier (a later one is pushed when the
    /// earlier entry comes up and finds nothing to do).
    fn schedule(&mut self, id: usize, scheduled: &mut Option<Instant>, want: Option<Instant>) {
        let Some(at) = want else {
            return;
        };
        if scheduled.is_none_or(|current| at < current) {
            self.heap.push(Reverse((at, id)));
            *scheduled = Some(at);
        }
    }

    /// The earliest deadline in the heap (possibly stale, which only means an early wake-up).
    fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// Moves every entry due at `now` into `due`, earliest first.
    fn pop_due(&mut self, now: Instant, due: &mut Vec<(Instant, usize)>) {
        while let Some(&Reverse((at, id))) = self.heap.peek() {
            if at > now {
                break;
            }
            self.heap.pop();
            due.push((at, id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_push_only_earlier_deadlines() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        let mut scheduled = None;
        timers.schedule(1, &mut scheduled, Some(t0 + Duration::from_secs(2)));
        timers.schedule(1, &mut scheduled, Some(t0 + Duration::from_secs(3)));
        assert_eq!(timers.heap.len(), 1, "a later deadline waits for the earlier entry");
        assert_eq!(scheduled, Some(t0 + Duration::from_secs(2)));
        timers.schedule(1, &mut scheduled, Some(t0 + Duration::from_secs(1)));
        assert_eq!(timers.heap.len(), 2);
        assert_eq!(scheduled, Some(t0 + Duration::from_secs(1)));
        timers.schedule(1, &mut scheduled, None);
        assert_eq!(timers.heap.len(), 2);
    }

    #[test]
    fn timers_pop_due_in_order() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        for (id, secs) in [(1, 5), (2, 1), (3, 3), (4, 9)] {
            timers.schedule(id, &mut None, Some(t0 + Duration::from_secs(secs)));
        }
        assert_eq!(timers.next(), Some(t0 + Duration::from_secs(1)));
        let mut due = Vec::new();
        timers.pop_due(t0 + Duration::from_secs(5), &mut due);
        let ids: Vec<usize> = due.iter().map(|&(_, id)| id).collect();
        assert_eq!(ids, [2, 3, 1]);
        assert_eq!(timers.next(), Some(t0 + Duration::from_secs(9)));
    }
}
