//! The TFTP server: requests arrive on one listening socket, and each transfer gets a new socket
//! of its own (RFC 1350 section 4: the server's transfer ID is a fresh port), bound to the
//! listener's IP with port 0. That is the "new channel per client" of the socket notes.
//!
//! How transfers are scheduled is the server [`Model`]: one at a time ([`Model::Iterative`]), a
//! thread each ([`Model::Thread`]), a fixed pool of workers behind a bounded queue
//! ([`Model::Pool`]), or one thread multiplexing every transfer socket with select, poll or
//! epoll ([`Model::Event`], see the `event` module). The transfers themselves are the sans-IO
//! machines of [`crate::transfer`]: the threaded models run each with a small blocking driver,
//! the event loop runs them all from readiness events and a timer heap.
//!
//! Shutdown: [`serve`] looks at the shutdown flag at least every 200 ms and returns once it is
//! set, after telling running transfers to stop (they send ERROR 0) and joining every thread it
//! started. No panic: malformed requests get an ERROR packet and nothing else.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use zocalo_poller::Backend;

use crate::driver::{self, drive, Peer, StopAt, Stops};
use crate::options::{negotiate, Direction, Limits, Options};
use crate::packet::{emit_error, ErrorCode, Mode, Packet, Request, MAX_BLKSIZE, MAX_PACKET_LEN};
use crate::storage::{normalize, TftpStorage};
use crate::transfer::{self, error_code_for, Outcome, Receiver, Sender, Start, Transfer};

mod event;

/// Server settings.
#[derive(Clone, Copy, Debug)]
pub struct ServerConfig {
    /// Whether WRQ is allowed; when false writes get ERROR 2 (access violation).
    pub write_allowed: bool,
    /// Retransmission timeout when the client does not negotiate one.
    pub timeout: Duration,
    /// Timeouts in a row before a transfer is abandoned.
    pub max_retries: u32,
    /// Largest blksize granted (at most 65464).
    pub max_blksize: u16,
    /// Largest windowsize granted.
    pub max_windowsize: u16,
    /// Requests waiting for a worker in [`Model::Pool`] before "server busy".
    pub queue_len: usize,
    /// Transfers running (or queued) at once, in every model; past that, requests get ERROR 0
    /// "server busy". (With select, a transfer whose socket is numbered at or above
    /// `FD_SETSIZE` is refused the same way, whatever this says.)
    pub max_transfers: usize,
    /// Transfers one client address may have running (or queued) at once, so that one address
    /// that floods requests cannot keep others out. Tens, so that a host fetching files in
    /// parallel never meets it.
    pub max_per_client: usize,
    /// How long a client has to acknowledge the transfer's first packet before it is given up
    /// (and stops counting against its address).
    pub first_answer: Duration,
    /// The largest RFC 2349 timeout granted, in seconds; a request asking for more has the
    /// option left out of the OACK (the RFC lets a server only echo it or omit it), and runs
    /// with the server's own timeout. With `max_retries`, it bounds how long a transfer waits
    /// for a peer that never answers.
    pub max_timeout: u8,
    /// Called for each request refused (busy, too many from the address, a file that cannot
    /// be opened): the embedding server counts them.
    pub on_refused: Option<fn()>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            write_allowed: false,
            timeout: Duration::from_secs(1),
            max_retries: 5,
            max_blksize: MAX_BLKSIZE,
            max_windowsize: 64,
            queue_len: 16,
            max_transfers: 512,
            max_per_client: 32,
            max_timeout: 10,
            first_answer: Duration::from_secs(3),
            on_refused: None,
        }
    }
}

impl ServerConfig {
    fn transfer_config(&self) -> transfer::Config {
        transfer::Config {
            timeout: self.timeout,
            max_retries: self.max_retries,
            first_answer: Some(self.first_answer),
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            max_blksize: self.max_blksize,
            max_windowsize: self.max_windowsize,
            max_timeout: self.max_timeout,
        }
    }
}

/// How the server schedules transfers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Model {
    /// One transfer at a time, on the thread that called [`serve`]; other clients wait.
    Iterative,
    /// A new thread for every transfer.
    Thread,
    /// This many worker threads; requests queue up to [`ServerConfig::queue_len`], and past
    /// that get ERROR 0 "server busy".
    Pool(usize),
    /// One thread, non-blocking sockets watched by this readiness backend, and a timer heap:
    /// up to [`ServerConfig::max_transfers`] transfers at once, past that "server busy".
    Event(Backend),
}

/// A request that passed the listener's checks, waiting for a transfer to serve it.
#[derive(Clone, Debug)]
struct Job {
    peer: SocketAddr,
    datagram: Vec<u8>,
    /// Which request of `peer` this is, so that a transfer replaced by a newer request from
    /// the same port does not mark the newer one finished when it ends.
    generation: u64,
    /// Set when a newer request from the same address and port replaces this transfer.
    replaced: Arc<AtomicBool>,
    /// This request replaced a transfer that was still running for the same peer.
    replacing: bool,
}

/// What a transfer needs from the server, shared by every thread.
struct Context<'a> {
    storage: &'a dyn TftpStorage,
    config: ServerConfig,
    local: SocketAddr,
    shutdown: &'a AtomicBool,
    recent: Recent,
    load: Load,
}

impl Context<'_> {
    /// A request was refused: the embedding server hears of it.
    fn refused(&self) {
        if let Some(f) = self.config.on_refused {
            f();
        }
    }

    /// A job is over (served, refused or dropped): its peer may ask again, and its place in
    /// the load counts is free.
    ///
    /// A transfer that a newer request replaced hands its place to that request instead.
    fn end_job(&self, peer: SocketAddr, generation: u64, replaced: &AtomicBool) {
        if self.recent.finish(peer, generation, replaced) {
            self.load.release(peer.ip());
        }
    }
}

/// Transfers admitted and not yet ended, in all and per client address.
#[derive(Debug, Default)]
struct Load {
    per_client: Mutex<HashMap<IpAddr, usize>>,
    /// Refusals since the last "server busy" log line, and when that line was written.
    refused: Mutex<(u64, Option<Instant>)>,
}

/// How often "server busy" may be logged.
const BUSY_LOG_EVERY: Duration = Duration::from_secs(10);

impl Load {
    /// Counts a new transfer for `ip`, or says why not.
    fn admit(&self, ip: IpAddr, config: &ServerConfig) -> Result<(), &'static str> {
        let Ok(mut per_client) = self.per_client.lock() else {
            return Ok(());
        };
        let total: usize = per_client.values().sum();
        if total >= config.max_transfers {
            return Err("server busy");
        }
        let mine = per_client.entry(ip).or_insert(0);
        if *mine >= config.max_per_client {
            return Err("too many transfers from your address");
        }
        *mine += 1;
        Ok(())
    }

    fn release(&self, ip: IpAddr) {
        if let Ok(mut per_client) = self.per_client.lock() {
            if let Some(n) = per_client.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    per_client.remove(&ip);
                }
            }
        }
    }

    /// Logs a refusal, at most one line per [`BUSY_LOG_EVERY`] with the count since the last.
    fn log_refusal(&self, peer: SocketAddr, why: &str) {
        let Ok(mut refused) = self.refused.lock() else {
            return;
        };
        refused.0 += 1;
        let now = Instant::now();
        if refused.1.is_none_or(|t| now.duration_since(t) >= BUSY_LOG_EVERY) {
            tracing::warn!(%peer, refused = refused.0, "tftp request refused: {why}");
            *refused = (0, Some(now));
        }
    }
}

/// Requests being served or just served, so that a client's retransmitted request does not
/// start a second transfer (RFC 1350 section 4: the transfer is named by its pair of ports).
///
/// A *different* request from the same address and port while a transfer for it still runs
/// means that transfer is dead: the client has moved on (tftp-hpa asks for the next file from
/// the same port). The new request replaces it at once instead of waiting for its timeout.
#[derive(Debug, Default)]
struct Recent {
    entries: Mutex<HashMap<SocketAddr, RecentEntry>>,
    generations: AtomicU64,
}

#[derive(Debug)]
struct RecentEntry {
    request: Vec<u8>,
    finished: Option<Instant>,
    generation: u64,
    replaced: Arc<AtomicBool>,
}

/// What [`Recent::admit`] found.
#[derive(Debug)]
enum Admission {
    /// The same request again, being served or just served: dropped.
    Repeated,
    /// A new request, with its generation and the flag that a later one would set.
    New { generation: u64, replaced: Arc<AtomicBool>, replacing: bool },
}

/// Entries kept at most; past that, finished ones are forgotten first.
const RECENT_CAP: usize = 4096;

impl Recent {
    /// Whether `request` from `peer` is new, and records it as being served if so. A request
    /// identical to one being served, or finished less than `grace` ago, is a repeat. A new
    /// request replaces the transfer still running for the same `peer` (its flag is set).
    fn admit(&self, peer: SocketAddr, request: &[u8], now: Instant, grace: Duration) -> Admission {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        let replaced = Arc::new(AtomicBool::new(false));
        let new =
            |replacing| Admission::New { generation, replaced: Arc::clone(&replaced), replacing };
        let Ok(mut entries) = self.entries.lock() else {
            return new(false);
        };
        let fresh = |e: &RecentEntry| e.finished.is_none_or(|at| now.duration_since(at) < grace);
        if entries.len() >= RECENT_CAP {
            entries.retain(|_, e| fresh(e));
        }
        let mut replacing = false;
        if let Some(old) = entries.get(&peer) {
            if old.request == request && fresh(old) {
                return Admission::Repeated;
            }
            if old.finished.is_none() {
                old.replaced.store(true, Ordering::Relaxed);
                replacing = true;
            }
        }
        let entry = RecentEntry {
            request: request.to_vec(),
            finished: None,
            generation,
            replaced: Arc::clone(&replaced),
        };
        if entries.len() < RECENT_CAP || entries.contains_key(&peer) {
            entries.insert(peer, entry);
        }
        new(replacing)
    }

    /// The transfer of `generation` for `peer` is over. False if a newer request replaced
    /// it: that request has taken over its place in the load counts. The flag is read under
    /// the lock that [`Recent::admit`] sets it under, so a transfer that ends just as it is
    /// replaced is counted once.
    fn finish(&self, peer: SocketAddr, generation: u64, replaced: &AtomicBool) -> bool {
        let Ok(mut entries) = self.entries.lock() else {
            return true;
        };
        if replaced.load(Ordering::Relaxed) {
            return false;
        }
        if let Some(entry) = entries.get_mut(&peer).filter(|e| e.generation == generation) {
            entry.finished = Some(Instant::now());
        }
        true
    }
}

/// Serves TFTP on an already bound `socket` until `shutdown` becomes true.
///
/// Returns an error only if the listening socket fails; a failed transfer is logged and the
/// server goes on.
pub fn serve(
    socket: UdpSocket,
    storage: Arc<dyn TftpStorage>,
    config: ServerConfig,
    model: Model,
    shutdown: &AtomicBool,
) -> io::Result<()> {
    socket.set_read_timeout(Some(driver::SHUTDOWN_POLL))?;
    let mut config = config;
    if let Model::Pool(workers) = model {
        // One address holds at most half the workers, but at least four: a client's next
        // request may come while the server still lingers on its last uploads' final ACKs.
        config.max_per_client = config.max_per_client.min((workers / 2).max(4));
    }
    let ctx = Context {
        storage: storage.as_ref(),
        config,
        local: socket.local_addr()?,
        shutdown,
        recent: Recent::default(),
        load: Load::default(),
    };
    tracing::info!(addr = %ctx.local, ?model, "tftp server listening");
    thread::scope(|scope| match model {
        Model::Iterative => listen(&socket, &ctx, &mut |job| run_job(&ctx, job)),
        Model::Thread => listen(&socket, &ctx, &mut |job| {
            let ctx = &ctx;
            thread::Builder::new()
                .name("tftp-transfer".into())
                .spawn_scoped(scope, move || run_job(ctx, job))
                .map(drop)
                .unwrap_or_else(|err| tracing::warn!(%err, "cannot spawn transfer thread"));
        }),
        Model::Pool(workers) => serve_pool(&socket, &ctx, scope, workers.max(1)),
        Model::Event(backend) => event::serve(&socket, &ctx, backend),
    })
}

fn serve_pool<'scope>(
    socket: &UdpSocket,
    ctx: &'scope Context<'scope>,
    scope: &'scope thread::Scope<'scope, '_>,
    workers: usize,
) -> io::Result<()> {
    let (queue, jobs) = mpsc::sync_channel::<Job>(ctx.config.queue_len);
    let jobs = Arc::new(Mutex::new(jobs));
    for _ in 0..workers {
        let jobs = Arc::clone(&jobs);
        scope.spawn(move || worker(ctx, &jobs));
    }
    listen(socket, ctx, &mut |job| enqueue(socket, ctx, &queue, job))
    // Dropping `queue` here lets the workers drain the queue and exit.
}

fn worker(ctx: &Context<'_>, jobs: &Mutex<mpsc::Receiver<Job>>) {
    loop {
        let next = match jobs.lock() {
            Ok(jobs) => jobs.recv(),
            Err(_) => return,
        };
        match next {
            Ok(job) => run_job(ctx, job),
            Err(_) => return,
        }
    }
}

fn enqueue(socket: &UdpSocket, ctx: &Context<'_>, queue: &SyncSender<Job>, job: Job) {
    match queue.try_send(job) {
        Ok(()) => {}
        Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
            ctx.end_job(job.peer, job.generation, &job.replaced);
            refuse(socket, ctx, job.peer, "server busy");
        }
    }
}

/// Answers ERROR 0 with `why` from the listener, and logs it (rate-limited).
fn refuse(socket: &UdpSocket, ctx: &Context<'_>, peer: SocketAddr, why: &str) {
    ctx.refused();
    ctx.load.log_refusal(peer, why);
    send_error(socket, peer, ErrorCode::NOT_DEFINED, why);
}

/// The listening loop: every valid request becomes a [`Job`] for `dispatch`.
fn listen(socket: &UdpSocket, ctx: &Context<'_>, dispatch: &mut dyn FnMut(Job)) -> io::Result<()> {
    let mut buf = vec![0u8; MAX_PACKET_LEN + 1];
    while !ctx.shutdown.load(Ordering::Relaxed) {
        let Some((len, peer)) = driver::receive(socket, &mut buf)? else {
            continue;
        };
        if let Some(job) = classify(socket, ctx, peer, &buf[..len]) {
            dispatch(job);
        }
    }
    tracing::info!("tftp server shutting down");
    Ok(())
}

/// Looks at one datagram that arrived on the listener: a new request becomes a [`Job`];
/// anything else is answered with an ERROR (or, a repeated request or a stray ERROR, dropped).
fn classify(
    socket: &UdpSocket,
    ctx: &Context<'_>,
    peer: SocketAddr,
    datagram: &[u8],
) -> Option<Job> {
    match Packet::parse(datagram) {
        Ok(Packet::Rrq(_) | Packet::Wrq(_)) => {
            let admission = ctx.recent.admit(peer, datagram, Instant::now(), ctx.config.timeout);
            let Admission::New { generation, replaced, replacing } = admission else {
                tracing::debug!(%peer, "repeated request ignored");
                return None;
            };
            if replacing {
                tracing::info!(%peer, "new request from the same port: its old transfer is dropped");
            }
            let job = Job { peer, datagram: datagram.to_vec(), generation, replaced, replacing };
            // A replacing request takes over the old transfer's place in the load counts.
            let admitted = if replacing { Ok(()) } else { ctx.load.admit(peer.ip(), &ctx.config) };
            match admitted {
                Ok(()) => return Some(job),
                Err(why) => {
                    ctx.recent.finish(peer, job.generation, &job.replaced);
                    refuse(socket, ctx, peer, why);
                }
            }
        }
        // A stray ERROR needs no answer (and answering could start a ping-pong).
        Ok(Packet::Error { .. }) => {}
        Ok(_) => send_error(socket, peer, ErrorCode::ILLEGAL_OPERATION, "expected RRQ or WRQ"),
        Err(err) => send_error(socket, peer, err.error_code(), &err.to_string()),
    }
    None
}

fn send_error(socket: &UdpSocket, to: SocketAddr, code: ErrorCode, message: &str) {
    let mut packet = Vec::new();
    emit_error(&mut packet, code, message);
    if let Err(err) = socket.send_to(&packet, to) {
        tracing::debug!(%to, %err, "cannot send error");
    }
}

/// Serves one request on a new socket: the new transfer ID.
fn run_job(ctx: &Context<'_>, job: Job) {
    serve_request(ctx, &job);
    ctx.end_job(job.peer, job.generation, &job.replaced);
}

fn serve_request(ctx: &Context<'_>, job: &Job) {
    if ctx.shutdown.load(Ordering::Relaxed) {
        return;
    }
    // The listener only queues requests that parse.
    let Some((request, write)) = parse_request(&job.datagram) else {
        return;
    };
    let socket = match UdpSocket::bind(SocketAddr::new(ctx.local.ip(), 0)) {
        Ok(socket) => socket,
        Err(err) => return tracing::warn!(%err, "cannot bind transfer socket"),
    };
    match start(ctx, &request, write) {
        Ok(mut machine) => run_transfer(ctx, &socket, job, machine.as_mut(), request),
        Err((code, message)) => {
            ctx.refused();
            send_error(&socket, job.peer, code, &message)
        }
    }
}

fn run_transfer(
    ctx: &Context<'_>,
    socket: &UdpSocket,
    job: &Job,
    machine: &mut dyn Transfer,
    request: Request<'_>,
) {
    let (name, peer) = (request.filename, job.peer);
    let stops = Stops { shutdown: Some(ctx.shutdown), replaced: Some(&job.replaced) };
    let result = drive(socket, machine, Peer::Known(peer), StopAt::Finished, stops, &mut |_, _| {});
    match result {
        Err(err) => tracing::warn!(%peer, name, %err, "transfer socket failed"),
        Ok(()) => log_outcome(peer, name, machine.outcome()),
    }
}

fn log_outcome(peer: SocketAddr, name: &str, outcome: Option<&Outcome>) {
    match outcome {
        Some(Outcome::Complete { bytes }) => {
            tracing::info!(%peer, name, bytes, "transfer complete")
        }
        Some(Outcome::Failed(err)) => tracing::info!(%peer, name, %err, "transfer failed"),
        None => {}
    }
}

/// A request datagram as a [`Request`] and whether it is a write (WRQ).
fn parse_request(datagram: &[u8]) -> Option<(Request<'_>, bool)> {
    match Packet::parse(datagram) {
        Ok(Packet::Rrq(request)) => Some((request, false)),
        Ok(Packet::Wrq(request)) => Some((request, true)),
        _ => None,
    }
}

type Refusal = (ErrorCode, String);

/// Checks a request, opens the file and builds the transfer machine for it.
fn start(
    ctx: &Context<'_>,
    request: &Request<'_>,
    write: bool,
) -> Result<Box<dyn Transfer>, Refusal> {
    if request.mode == Mode::Mail {
        return Err((ErrorCode::ILLEGAL_OPERATION, "mail mode is not supported".into()));
    }
    let path = normalize(request.filename)
        .ok_or_else(|| (ErrorCode::ACCESS_VIOLATION, "illegal file name".to_string()))?;
    if write && !ctx.config.write_allowed {
        return Err((ErrorCode::ACCESS_VIOLATION, "writing is not allowed".into()));
    }
    let requested = Options::from_list(&request.options);
    match write {
        false => start_read(ctx, &path, request.mode, &requested),
        true => start_write(ctx, &path, request.mode, &requested),
    }
}

fn start_read(
    ctx: &Context<'_>,
    path: &str,
    mode: Mode,
    requested: &Options,
) -> Result<Box<dyn Transfer>, Refusal> {
    let (source, size) = ctx.storage.open_read(path).map_err(refusal)?;
    let granted = negotiate(requested, mode, Direction::Read { size }, &ctx.config.limits());
    let start = Start::Server { granted, total: size };
    let sender = Sender::new(source, mode, start, ctx.config.transfer_config(), Instant::now());
    Ok(Box::new(sender))
}

fn start_write(
    ctx: &Context<'_>,
    path: &str,
    mode: Mode,
    requested: &Options,
) -> Result<Box<dyn Transfer>, Refusal> {
    let sink = ctx.storage.open_write(path).map_err(refusal)?;
    let granted = negotiate(requested, mode, Direction::Write, &ctx.config.limits());
    let start = Start::Server { granted, total: requested.tsize };
    let receiver = Receiver::new(sink, mode, start, ctx.config.transfer_config(), Instant::now());
    Ok(Box::new(receiver))
}

fn refusal(err: io::Error) -> Refusal {
    if err.kind() != io::ErrorKind::NotFound {
        tracing::info!("tftp request refused: {err}");
    }
    (error_code_for(&err), crate::transfer::error_message_for(&err).to_string())
}
