//! The FTP session state machine: command lines and events in, replies and actions out.
//!
//! # Driving a session
//!
//! A driver owns one [`Session`] per control connection and loops:
//!
//! 1. feed what it read from the control connection with [`Session::handle_input`] (at most
//!    [`Session::input_room`] bytes at a time), or report an event with another `handle_*`;
//! 2. write out all of [`Session::pending_output`], calling [`Session::advance_output`] as bytes
//!    leave, **before** carrying out any action (a `234` must be on the wire before TLS starts,
//!    a `221` before the connection closes);
//! 3. carry out each [`Action`] from [`Session::poll_action`] until it returns `None`, reporting
//!    results back through `handle_*` (which may queue more output and actions: go to 2).
//!
//! Inputs: the bytes of [`handle_input`](Session::handle_input), the results of actions
//! (`handle_passive_opened`, `handle_work_done`, `handle_transfer_done`,
//! `handle_tls_established`), time ([`handle_timeout`](Session::handle_timeout), when
//! [`poll_timeout`](Session::poll_timeout) says), and events of the driver's
//! (`handle_admin_close`, `handle_shutdown`).
//!
//! Timers belong to the session, as in quinn-proto: it says when it next needs to be woken
//! (the login timeout, the idle timeout, a failed login's delay) and handles it; a driver keeps
//! one deadline per connection and no timer policy of its own for the session.
//!
//! The session never blocks: every call on the storage or the authenticator is an
//! [`Action::Work`] for the driver to run where it fits, so an event loop can keep serving other
//! sessions while one waits for a disk, the network or an Argon2 hash. While work, a passive
//! port, a login delay or a TLS handshake is outstanding, the session takes no command.
//!
//! It never reads a clock except through [`Config::clock`] (wall time: listing dates, STOU
//! names, HASH's deadline) and [`Config::now`] (monotonic: its timers), never sleeps, and
//! never touches a socket. Bulk data never passes through it: a transfer
//! action carries an open file handle that the driver pumps.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

pub use crate::work::{Cancel, Done, Lane, Work};

use crate::auth::{Account, AuthError, Authenticator};
use crate::command::{self, BeforeLogin, Command, EpsvArg, ParseError, TransferType};
use crate::line::{LineBuffer, Overflow, MAX_LINE};
use crate::listing;
use crate::path;
use crate::reply::Reply;
use crate::storage::{error_reply, rest_past_end, FileHandle, FileKind, Storage, WriteMode};

/// Settings shared by every session of a server.
pub struct Config {
    pub auth: Arc<dyn Authenticator>,
    /// The address announced in PASV replies instead of the control connection's local one.
    pub masquerade: Option<IpAddr>,
    /// How long a failed login waits before its 530.
    pub login_fail_delay: Duration,
    /// Failed logins after which the session is closed.
    pub max_login_attempts: u32,
    /// Whether AUTH TLS is offered, and whether it is required.
    pub tls: TlsPolicy,
    /// LIST and NLST show dot files without `-a` (`--show-dot-files`).
    pub show_dot_files: bool,
    /// The wall clock: the dates in LIST output, the seed of STOU names, HASH's deadline.
    pub clock: fn() -> SystemTime,
    /// The monotonic clock of the session's timers (a test can give a clock of its own).
    pub now: fn() -> Instant,
    /// How long a client may take to log in.
    pub login_timeout: Duration,
    /// How long a session may sit with nothing running.
    pub idle_timeout: Duration,
    /// Report every command line as an [`Event::Command`] (the driver logs them at debug).
    pub log_commands: bool,
    /// How long one HASH (or XSHA256, ...) may read before it gives up with 451.
    pub hash_timeout: Duration,
}

/// What TLS the server offers on the control connection (RFC 4217).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsPolicy {
    /// No certificate: AUTH TLS is refused.
    Off,
    /// AUTH TLS is offered; clear text is allowed.
    Optional,
    /// No login before AUTH TLS, no data transfer without PROT P.
    Required,
}

impl Config {
    /// A configuration with the defaults of `zocalo serve`.
    pub fn new(auth: Arc<dyn Authenticator>) -> Self {
        Config {
            auth,
            masquerade: None,
            login_fail_delay: Duration::from_secs(1),
            max_login_attempts: 3,
            tls: TlsPolicy::Off,
            show_dot_files: false,
            clock: SystemTime::now,
            now: Instant::now,
            login_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(300),
            log_commands: false,
            hash_timeout: Duration::from_secs(60),
        }
    }
}

/// Something the driver must do on the session's behalf.
#[derive(Debug)]
pub enum Action {
    /// Open a passive listener on the control connection's local address (replacing any open
    /// one) and report it with [`Session::handle_passive_opened`].
    OpenPassive,
    /// Close the passive listener, if any.
    ClosePassive,
    /// Connect or accept the data connection and move the bytes; then report with
    /// [`Session::handle_transfer_done`].
    Transfer(Transfer),
    /// Stop the running transfer and report it as [`Outcome::Aborted`].
    Abort,
    /// Start a TLS handshake on the control connection (the `234` has been written), then call
    /// [`Session::handle_tls_established`].
    StartTls,
    /// Close the control connection (the last reply has been written).
    Close,
    /// Run this storage or authentication work, which may block (a disk, the network, an
    /// Argon2 hash), then hand its result to [`Session::handle_work_done`]. Input is held
    /// meanwhile. Blocking drivers run it inline; an event loop runs it on a worker thread.
    Work(Work),
}

/// Something worth a log line or a metric, for the driver to report: see
/// [`Session::poll_event`]. The core decides what happened; the driver decides where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A login attempt, and why it was refused (the client is told only 530).
    Login { user: String, refused: Option<LoginRefusal> },
    /// A change to the files other than a transfer (DELE, RMD, MKD, RNTO, SITE CHMOD, MFMT):
    /// the command, its path (and RNTO's source), and the reply code it got.
    FileOp { verb: &'static str, path: String, from: Option<String>, code: u16 },
    /// A command line as received, with PASS's argument masked (only with
    /// [`Config::log_commands`]).
    Command(String),
    /// The storage failed a call (a 451 or 452 reply, with its text).
    StorageError(String),
}

/// Why a login was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginRefusal {
    BadCredentials,
    LockedOut,
    HomeMissing,
    /// USER or PASS before AUTH TLS where TLS is required.
    TlsRequired,
    /// The credentials could not be checked now ([`AuthError::Unavailable`]).
    Unavailable,
    /// The credentials were right; the account's policy refused the login.
    Denied(crate::auth::Denial),
}

impl LoginRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            LoginRefusal::BadCredentials => "bad credentials",
            LoginRefusal::LockedOut => "locked out",
            LoginRefusal::HomeMissing => "home missing",
            LoginRefusal::TlsRequired => "TLS required",
            LoginRefusal::Unavailable => "cannot check now",
            LoginRefusal::Denied(why) => why.as_str(),
        }
    }
}

/// What the session does with a [`Done`] once it comes back.
type Then = Box<dyn FnOnce(&mut Session, Done) + Send>;

/// Where the data connection comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// Accept on the passive listener, from the control connection's peer address only.
    Passive,
    /// Connect to this address (already checked against bounce attacks).
    Active(SocketAddr),
}

/// What moves over the data connection.
#[derive(Debug)]
pub enum Body {
    /// Send a file from its current position to the end.
    Send(Box<dyn FileHandle>),
    /// Send a listing, as it is produced (no TYPE A conversion: its lines end in CRLF).
    Listing(Box<dyn FileHandle>),
    /// Receive into a file until the client closes the connection, then call `finish`.
    Receive(Box<dyn FileHandle>),
}

/// A data transfer for the driver to run.
#[derive(Debug)]
pub struct Transfer {
    pub endpoint: Endpoint,
    pub body: Body,
    /// Convert line endings (TYPE A) with [`crate::ascii`].
    pub ascii: bool,
    /// Protect the data connection with TLS (PROT P).
    pub tls: bool,
    /// Bytes moved so far on the wire; the driver adds to it, STAT reads it.
    pub progress: Arc<AtomicU64>,
    /// The account's own bytes per second for this direction; the driver keeps to the lower
    /// of it and the server's.
    pub rate_limit: Option<u64>,
}

/// How a transfer ended.
#[derive(Debug)]
pub enum Outcome {
    Done,
    /// Stopped by [`Action::Abort`].
    Aborted,
    /// No data connection could be made (425).
    NoConnection,
    /// The data connection broke or stalled (426).
    ConnectionLost,
    /// Reading or writing the file failed.
    Storage(std::io::Error),
    /// The server is stopping and the grace period ran out.
    ShuttingDown,
    /// The data connection's TLS handshake failed, or did not resume the control connection's
    /// session when the server requires it.
    TlsRejected,
}

#[derive(Debug)]
enum Login {
    AwaitUser,
    AwaitPass(String),
    LoggedIn(Box<Account>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DataSetup {
    None,
    Passive,
    Active(SocketAddr),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// OpenPassive sent; the reply depends on the port.
    Passive { extended: bool },
    /// A failed login's delay; `close` when the attempts are used up.
    LoginDelay { close: bool },
    /// AUTH TLS accepted; nothing is read until the handshake is done.
    Tls,
    /// An [`Action::Work`] is out; its continuation is in `Session::then`.
    Work,
}

/// What a transfer on the data connection is: a file sent or received, or a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransferKind {
    Retr,
    Stor,
    Appe,
    Stou,
    List,
    Nlst,
    Mlsd,
}

impl TransferKind {
    /// Every kind, in the order of their discriminants (the metrics keep a slot per kind).
    pub const ALL: [TransferKind; 7] = [
        TransferKind::Retr,
        TransferKind::Stor,
        TransferKind::Appe,
        TransferKind::Stou,
        TransferKind::List,
        TransferKind::Nlst,
        TransferKind::Mlsd,
    ];

    /// The command that started it.
    pub fn verb(self) -> &'static str {
        match self {
            TransferKind::Retr => "RETR",
            TransferKind::Stor => "STOR",
            TransferKind::Appe => "APPE",
            TransferKind::Stou => "STOU",
            TransferKind::List => "LIST",
            TransferKind::Nlst => "NLST",
            TransferKind::Mlsd => "MLSD",
        }
    }

    /// A directory listing rather than a file.
    pub fn is_listing(self) -> bool {
        matches!(self, TransferKind::List | TransferKind::Nlst | TransferKind::Mlsd)
    }

    /// Bytes come from the client (an upload).
    pub fn is_upload(self) -> bool {
        matches!(self, TransferKind::Stor | TransferKind::Appe | TransferKind::Stou)
    }
}

impl std::fmt::Display for TransferKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.verb())
    }
}

#[derive(Debug)]
struct Running {
    kind: TransferKind,
    path: String,
    size: Option<u64>,
    progress: Arc<AtomicU64>,
    aborting: bool,
    unique_name: Option<String>,
}

/// Reply bytes a session queues before it stops running commands: a client that pipelines
/// commands without reading the replies costs the server at most this (plus one reply).
pub const OUTPUT_CAP: usize = 32 * 1024;

/// The most of a directory listing that `STAT PATH` sends on the control connection. A reply
/// is built whole, so a STAT of a 100,000-entry directory was a 10 MB reply held by each
/// session that never read it; past this STAT says where it stopped (LIST streams).
pub const STAT_LISTING_CAP: usize = 16 * 1024;

/// One control connection's protocol state. See the module documentation for the polling order.
pub struct Session {
    config: Arc<Config>,
    /// The driver's id for this session (its log lines, `ctl status`), given to the
    /// authenticator with each login.
    id: u64,
    peer: SocketAddr,
    local: SocketAddr,
    input: LineBuffer,
    /// Commands that arrived during a transfer and run after it (at most [`MAX_LINE`] bytes).
    held: VecDeque<Vec<u8>>,
    output: Vec<u8>,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
    login: Login,
    cwd: String,
    transfer_type: TransferType,
    rest: u64,
    rename_from: Option<String>,
    /// OPTS HASH's choice, and the byte range RANG set for the next HASH.
    hash_algorithm: crate::hash::Algorithm,
    hash_range: Option<(u64, u64)>,
    data: DataSetup,
    epsv_all: bool,
    running: Option<Running>,
    wait: Option<Wait>,
    failed_logins: u32,
    closed: bool,
    tls_control: bool,
    protect_data: bool,
    pbsz_done: bool,
    /// What to do with the result of the [`Action::Work`] that is out.
    then: Option<Then>,
    /// What the client called itself (CLNT).
    client_name: Option<String>,
    /// The session's timers, on [`Config::now`]: the login timeout runs from `started`, the
    /// idle timeout from `last_activity` (input, or the end of work, a transfer or a
    /// handshake), and a failed login's delay ends at `wake_at`.
    started: Instant,
    last_activity: Instant,
    wake_at: Option<Instant>,
    /// The verb of the last command run (for the session table: what the session does now).
    last_verb: &'static str,
    /// Closed by a timeout: the driver closes now, writing the last reply only if the socket
    /// takes it at once.
    expired: bool,
}

impl Session {
    /// A new session for a connection from `peer` accepted on `local`; the 220 greeting is
    /// already queued.
    pub fn new(config: Arc<Config>, peer: SocketAddr, local: SocketAddr) -> Self {
        let now = (config.now)();
        let mut s = Session {
            config,
            id: 0,
            peer: canonical(peer),
            local: canonical(local),
            input: LineBuffer::default(),
            held: VecDeque::new(),
            output: Vec::new(),
            actions: VecDeque::new(),
            events: VecDeque::new(),
            login: Login::AwaitUser,
            cwd: String::from("/"),
            transfer_type: TransferType::Image,
            rest: 0,
            rename_from: None,
            hash_algorithm: crate::hash::Algorithm::Sha256,
            hash_range: None,
            data: DataSetup::None,
            epsv_all: false,
            running: None,
            wait: None,
            failed_logins: 0,
            closed: false,
            tls_control: false,
            protect_data: false,
            pbsz_done: false,
            then: None,
            client_name: None,
            started: now,
            last_activity: now,
            wake_at: None,
            last_verb: "",
            expired: false,
        };
        s.reply(220, "zocalo FTP server ready.");
        s
    }

    /// A TLS-from-the-start session (implicit FTPS): the control connection is already secure.
    pub fn new_implicit_tls(config: Arc<Config>, peer: SocketAddr, local: SocketAddr) -> Self {
        let mut s = Session::new(config, peer, local);
        s.tls_control = true;
        s.pbsz_done = true;
        s.protect_data = true;
        s
    }

    // ---- getters -------------------------------------------------------------------------

    /// The logged-in user's name, if any.
    pub fn user(&self) -> Option<&str> {
        match &self.login {
            Login::LoggedIn(a) => Some(&a.name),
            _ => None,
        }
    }

    /// The name the client gave with CLNT, if any.
    pub fn client_name(&self) -> Option<&str> {
        self.client_name.as_deref()
    }

    /// True when the logged-in user is the anonymous account.
    pub fn is_anonymous(&self) -> bool {
        self.account().is_some_and(|a| a.anonymous)
    }

    /// The peer address of the control connection.
    /// Names the session with the driver's id.
    pub fn set_id(&mut self, id: u64) {
        self.id = id;
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// True when nothing is running: the idle timeout applies (a TLS handshake counts: a
    /// client that starts one and goes silent is idle).
    pub fn is_idle(&self) -> bool {
        self.running.is_none() && matches!(self.wait, None | Some(Wait::Tls))
    }

    /// When the session next needs [`handle_timeout`](Self::handle_timeout): the login
    /// timeout, the idle timeout, or the end of a failed login's delay. `None` once closed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        let login = self.user().is_none().then(|| self.started + self.config.login_timeout);
        let idle = self.is_idle().then(|| self.last_activity + self.config.idle_timeout);
        [login, idle, self.wake_at].into_iter().flatten().min()
    }

    /// True when a timeout closed the session: the driver closes the connection at once,
    /// writing the last reply only if the socket takes it without waiting.
    pub fn expired(&self) -> bool {
        self.expired
    }

    /// True once the session has asked to close; it takes no more input.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The running transfer: its kind, path and bytes so far.
    pub fn transfer_status(&self) -> Option<(TransferKind, &str, u64)> {
        let r = self.running.as_ref()?;
        Some((r.kind, &r.path, r.progress.load(Ordering::Relaxed)))
    }

    /// The verb of the last command the session ran ("" before the first).
    pub fn last_command(&self) -> &'static str {
        self.last_verb
    }

    /// When the client last sent something (or work, a transfer or a handshake ended).
    pub fn last_activity(&self) -> Instant {
        self.last_activity
    }

    /// The size of the running transfer's file, when it is known (a download).
    pub fn transfer_size(&self) -> Option<u64> {
        self.running.as_ref().and_then(|r| r.size)
    }

    /// AUTH TLS was accepted and the handshake has not completed: the driver must leave the
    /// control socket's next bytes (the ClientHello) to TLS.
    pub fn tls_starting(&self) -> bool {
        matches!(self.wait, Some(Wait::Tls))
    }

    /// How many bytes [`handle_input`](Self::handle_input) accepts now. Zero means: stop
    /// reading the control connection until an event frees room.
    pub fn input_room(&self) -> usize {
        if self.closed || self.output.len() >= OUTPUT_CAP {
            0
        } else {
            self.input.room()
        }
    }

    // ---- inputs --------------------------------------------------------------------------

    /// Feeds bytes read from the control connection.
    pub fn handle_input(&mut self, bytes: &[u8]) {
        if self.closed {
            return;
        }
        self.last_activity = (self.config.now)();
        if self.input.extend(bytes) == Overflow::LineTooLong {
            self.reply(500, "Command line too long.");
            self.close();
            return;
        }
        self.process();
    }

    /// The driver opened (or failed to open) the passive listener asked for by OpenPassive.
    pub fn handle_passive_opened(&mut self, result: std::io::Result<SocketAddr>) {
        let Some(Wait::Passive { extended }) = self.wait else {
            return;
        };
        self.wait = None;
        match result {
            Ok(addr) if extended => {
                self.data = DataSetup::Passive;
                let text = format!("Entering Extended Passive Mode (|||{}|).", addr.port());
                self.reply(229, &text);
            }
            Ok(addr) => {
                self.data = DataSetup::Passive;
                self.reply_pasv(addr.port());
            }
            Err(_) => self.reply(425, "Cannot open a passive data port."),
        }
        self.process();
    }

    /// The transfer started by the last [`Action::Transfer`] ended.
    pub fn handle_transfer_done(&mut self, outcome: Outcome) {
        let Some(run) = self.running.take() else {
            return;
        };
        self.last_activity = (self.config.now)();
        self.reply_outcome(&run, outcome);
        if run.aborting {
            self.reply(226, "ABOR command successful.");
        }
        self.process();
    }

    /// Time has passed: whatever of the session's timers is due at `now` fires (see
    /// [`poll_timeout`](Self::poll_timeout)). A login or idle timeout says 421 and closes.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        if self.wake_at.is_some_and(|t| t <= now) {
            self.wake_at = None;
            self.login_delay_over();
        }
        if self.closed {
            return;
        }
        if self.user().is_none() && self.started + self.config.login_timeout <= now {
            self.reply(421, "Login timeout; closing control connection.");
            self.expired = true;
            self.close();
        } else if self.is_idle() && self.last_activity + self.config.idle_timeout <= now {
            self.reply(421, "Idle timeout; closing control connection.");
            self.expired = true;
            self.close();
        }
    }

    fn login_delay_over(&mut self) {
        if let Some(Wait::LoginDelay { close }) = self.wait {
            self.wait = None;
            self.reply(530, "Login incorrect.");
            if close {
                self.reply(421, "Too many failed logins; closing.");
                self.close();
            }
        }
        self.process();
    }

    /// The [`Action::Work`] handed out last is done. Its command's reply is queued now.
    pub fn handle_work_done(&mut self, done: Done) {
        if self.wait != Some(Wait::Work) {
            return;
        }
        self.wait = None;
        self.last_activity = (self.config.now)();
        if let Some(then) = self.then.take() {
            if !self.closed {
                then(self, done);
            }
        }
        self.process();
    }

    /// The TLS handshake asked for by [`Action::StartTls`] completed.
    pub fn handle_tls_established(&mut self) {
        if self.wait == Some(Wait::Tls) {
            self.wait = None;
            self.tls_control = true;
            self.last_activity = (self.config.now)();
        }
        self.process();
    }

    /// An administrator closed the session (`zocalo ctl kick`).
    pub fn handle_admin_close(&mut self) {
        if !self.closed {
            self.reply(421, "Session closed by the administrator.");
            self.close();
        }
    }

    /// The server is stopping: say so and close.
    pub fn handle_shutdown(&mut self) {
        if !self.closed {
            self.reply(421, "Server shutting down.");
            self.close();
        }
    }

    // ---- outputs -------------------------------------------------------------------------

    /// Reply bytes waiting to be written to the control connection.
    pub fn pending_output(&self) -> &[u8] {
        &self.output
    }

    /// `n` bytes of [`pending_output`](Self::pending_output) were written. When that frees
    /// room under [`OUTPUT_CAP`], commands held back by it run now, which may queue more output
    /// and actions.
    pub fn advance_output(&mut self, n: usize) {
        let was_full = self.output.len() >= OUTPUT_CAP;
        if n >= self.output.len() {
            if self.output.capacity() > 1024 {
                self.output = Vec::new();
            } else {
                self.output.clear();
            }
        } else {
            self.output.drain(..n);
        }
        if was_full && self.output.len() < OUTPUT_CAP {
            self.process();
        }
    }

    /// The next action to carry out.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next event to report (log, count). Events queue until taken; a driver takes them
    /// after each call into the session.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ---- the state machine ---------------------------------------------------------------

    /// Runs the buffered lines. During a transfer, ABOR, STAT and NOOP run at once and other
    /// commands are held (up to one line's worth of bytes) to run in order after it. After an
    /// ABOR nothing runs until the transfer has ended, so every reply comes in command order;
    /// nothing runs either while [`OUTPUT_CAP`] bytes of replies wait to be written.
    fn process(&mut self) {
        while !self.closed && self.wait.is_none() && self.output.len() < OUTPUT_CAP {
            if self.running.as_ref().is_some_and(|r| r.aborting) {
                break;
            }
            if self.running.is_none() {
                if let Some(line) = self.held.pop_front() {
                    self.run_line(&line);
                    continue;
                }
            }
            let held_bytes: usize = self.held.iter().map(Vec::len).sum();
            if held_bytes >= MAX_LINE {
                break;
            }
            let Some(line) = self.input.next_line() else {
                break;
            };
            if self.running.is_some() && !is_live(&line) {
                self.held.push_back(line);
                continue;
            }
            self.run_line(&line);
        }
    }

    fn run_line(&mut self, line: &[u8]) {
        if self.config.log_commands {
            self.events.push_back(Event::Command(masked(line)));
        }
        match command::parse_line(line) {
            Ok(parsed) => self.run(parsed),
            Err(ParseError::Unknown(verb)) => {
                self.reply(500, &format!("Unknown command {verb:?}."))
            }
            Err(ParseError::Syntax(msg)) => self.reply(501, msg),
            Err(ParseError::Unsupported(msg)) => self.reply(504, msg),
            Err(ParseError::NetworkProtocol) => {
                self.reply(522, "Network protocol not supported, use (1,2)")
            }
        }
    }

    fn run(&mut self, parsed: command::Parsed<'_>) {
        self.last_verb = parsed.verb.name;
        let rename_from = self.rename_from.take();
        if let Some(code) = self.refuse(&parsed) {
            let cmd = parsed.command;
            if code.0 == 530 && matches!(cmd, Command::User(_) | Command::Pass(_)) {
                let user = match (&cmd, &self.login) {
                    (Command::User(name), _) => name.to_string(),
                    (_, Login::AwaitPass(name)) => name.clone(),
                    _ => String::new(),
                };
                let refused = Some(LoginRefusal::TlsRequired);
                self.events.push_back(Event::Login { user, refused });
            }
            self.reply(code.0, code.1);
            return;
        }
        use Command::*;
        match parsed.command {
            User(name) => self.user_cmd(name),
            Pass(password) => self.pass(password),
            Acct => self.reply(202, "ACCT not needed."),
            Quit => self.quit(),
            Rein => self.rein(),
            Host(_) => self.host(),
            Auth(mech) => self.auth(mech),
            Pbsz(size) => self.pbsz(size),
            Prot(level) => self.prot(level),
            Ccc => self.reply(534, "CCC refused: the control connection stays protected."),
            Clnt(name) => self.clnt(name),
            Avbl(p) => self.avbl(p),
            Hash(p) => {
                let range = self.hash_range.take();
                self.hash(p, self.hash_algorithm, range, true)
            }
            Rang(range) => self.rang(range),
            XHash { algorithm, path, range } => self.hash(path, algorithm, range, false),
            Feat => self.feat(),
            Opts(opt) => self.opts(opt),
            Help(arg) => self.help(arg),
            Noop => self.reply(200, "NOOP ok."),
            Syst => self.reply(215, "UNIX Type: L8"),
            Stat(arg) => self.stat(arg),
            Type(t) => self.set_type(t),
            Mode => self.reply(200, "Mode set to S."),
            Stru => self.reply(200, "Structure set to F."),
            Allo => self.reply(202, "No storage allocation necessary."),
            Site(arg) => self.site(arg),
            Pwd => self.pwd(),
            Cwd(p) => self.cwd(p),
            Cdup => self.cwd(".."),
            Mkd(p) => self.mkd(p),
            Rmd(p) => self.simple_write(p, "RMD", "Directory removed.", |s, p| s.rmdir(p)),
            Dele(p) => self.simple_write(p, "DELE", "File deleted.", |s, p| s.remove(p)),
            Rnfr(p) => self.rnfr(p),
            Rnto(p) => self.rnto(rename_from, p),
            Size(p) => self.size(p),
            Mdtm(p) => self.mdtm(p),
            Mfmt { time, path, mdtm } => self.mfmt(time, path, mdtm),
            Mlst(p) => self.mlst(p),
            Rest(offset) => self.set_rest(offset),
            Pasv => self.pasv(false),
            Epsv(arg) => self.epsv(arg),
            Port(addr) | Eprt(addr) => self.port(addr),
            Abor => self.abor(),
            Retr(p) => self.retr(p),
            Stor(p) => self.store(p, TransferKind::Stor),
            Appe(p) => self.store(p, TransferKind::Appe),
            Stou => self.stou(),
            List(a) => self.list(a.path, a.all, ListKind::Long),
            Nlst(a) => self.list(a.path, a.all, ListKind::Names),
            // MLSD is read by programs: it lists everything (RFC 3659 section 7.2).
            Mlsd(p) => self.list(p, true, ListKind::Facts),
        }
    }

    /// The guard shared by all commands: login, TLS policy and write permission.
    /// The guard every command passes first, from its [`command::VERBS`] entry: TLS before
    /// USER/PASS when required, the login, write permission.
    fn refuse(&self, parsed: &command::Parsed<'_>) -> Option<(u16, &'static str)> {
        let verb = parsed.verb;
        let needs_tls = matches!(parsed.command, Command::User(_) | Command::Pass(_));
        if needs_tls && self.config.tls == TlsPolicy::Required && !self.tls_control {
            return Some((530, "TLS required: send AUTH TLS first."));
        }
        let before_login = match verb.before_login {
            BeforeLogin::Always => true,
            BeforeLogin::Never => false,
            BeforeLogin::WithoutArgument => !parsed.has_argument,
        };
        if !before_login && !matches!(self.login, Login::LoggedIn(_)) {
            return Some((530, "Please log in with USER and PASS."));
        }
        if verb.writes && !self.account().is_some_and(|a| a.writable) {
            return Some((550, "Permission denied."));
        }
        let reads = verb.reads || matches!(parsed.command, Command::Stat(Some(_)));
        if reads && !self.account().is_some_and(|a| a.readable) {
            return Some((550, "Permission denied: this account may only upload."));
        }
        None
    }

    // ---- login ---------------------------------------------------------------------------

    fn user_cmd(&mut self, name: &str) {
        let text = if self.config.auth.is_anonymous(name) {
            "Anonymous login ok, send your e-mail address as password."
        } else {
            "Password required."
        };
        self.login = Login::AwaitPass(name.to_string());
        self.cwd = String::from("/");
        self.reply(331, text);
    }

    fn pass(&mut self, password: &str) {
        let user = match std::mem::replace(&mut self.login, Login::AwaitUser) {
            Login::AwaitPass(user) => user,
            Login::AwaitUser => return self.reply(503, "Log in with USER first."),
            logged @ Login::LoggedIn(_) => {
                self.login = logged;
                return self.reply(230, "Already logged in.");
            }
        };
        let (auth, password) = (self.config.auth.clone(), password.to_string());
        let (client, local, tls, session) = (self.peer, self.local, self.tls_control, self.id);
        let name = user.clone();
        let lane = if auth.answers_at_once(&user) { Lane::Inline } else { Lane::Login };
        self.offload(
            lane,
            Cancel::default(),
            move || {
                let password = &password;
                let login =
                    crate::auth::Login { user: &user, password, client, local, tls, session };
                auth.authenticate(&login)
            },
            move |s, result| {
                let refused = result.as_ref().err().map(|e| match e {
                    AuthError::BadCredentials => LoginRefusal::BadCredentials,
                    AuthError::LockedOut => LoginRefusal::LockedOut,
                    AuthError::HomeMissing => LoginRefusal::HomeMissing,
                    AuthError::Unavailable => LoginRefusal::Unavailable,
                    AuthError::Denied(why) => LoginRefusal::Denied(*why),
                });
                s.events.push_back(Event::Login { user: name, refused });
                match result {
                    Ok(account) => {
                        s.login = Login::LoggedIn(Box::new(account));
                        s.cwd = String::from("/");
                        s.reply(230, "Login successful.");
                    }
                    Err(AuthError::Unavailable) => {
                        s.reply(421, "Cannot check logins now; try again later.");
                        s.close();
                    }
                    Err(_) => s.login_failed(),
                }
            },
        );
    }

    fn login_failed(&mut self) {
        self.failed_logins += 1;
        let close = self.failed_logins >= self.config.max_login_attempts;
        self.wait = Some(Wait::LoginDelay { close });
        if self.config.login_fail_delay.is_zero() {
            self.login_delay_over();
        } else {
            self.wake_at = Some((self.config.now)() + self.config.login_fail_delay);
        }
    }

    fn quit(&mut self) {
        self.reply(221, "Goodbye.");
        self.close();
    }

    fn rein(&mut self) {
        self.login = Login::AwaitUser;
        self.cwd = String::from("/");
        self.transfer_type = TransferType::Image;
        self.rest = 0;
        self.epsv_all = false;
        self.reset_data();
        self.reply(220, "Session reset; log in again.");
    }

    fn host(&mut self) {
        match self.login {
            Login::AwaitUser => self.reply(220, "Host accepted."),
            _ => self.reply(503, "HOST must come before USER."),
        }
    }

    // ---- TLS (RFC 4217) ------------------------------------------------------------------

    fn auth(&mut self, mech: &str) {
        let mech = mech.trim();
        if self.config.tls == TlsPolicy::Off {
            return self.reply(502, "TLS is not configured on this server.");
        }
        if !(mech.eq_ignore_ascii_case("TLS")
            || mech.eq_ignore_ascii_case("SSL")
            || mech.eq_ignore_ascii_case("TLS-C"))
        {
            return self.reply(504, "Only AUTH TLS is supported.");
        }
        if self.tls_control {
            return self.reply(503, "Already using TLS.");
        }
        self.reply(234, "AUTH TLS successful.");
        self.wait = Some(Wait::Tls);
        self.actions.push_back(Action::StartTls);
    }

    fn pbsz(&mut self, _size: &str) {
        if !self.tls_control {
            return self.reply(503, "PBSZ needs a TLS control connection.");
        }
        self.pbsz_done = true;
        self.reply(200, "PBSZ=0");
    }

    fn prot(&mut self, level: &str) {
        if !self.tls_control || !self.pbsz_done {
            return self.reply(503, "PROT needs AUTH TLS and PBSZ first.");
        }
        match level.trim().to_ascii_uppercase().as_str() {
            "P" => {
                self.protect_data = true;
                self.reply(200, "Protection level set to P.");
            }
            "C" if self.config.tls == TlsPolicy::Required => {
                self.reply(534, "PROT C refused: the server requires protected data.")
            }
            "C" => {
                self.protect_data = false;
                self.reply(200, "Protection level set to C.");
            }
            "S" | "E" => self.reply(536, "Only PROT C and P are supported."),
            _ => self.reply(504, "Unknown protection level."),
        }
    }

    // ---- information ---------------------------------------------------------------------

    fn feat(&mut self) {
        let tls = self.config.tls != TlsPolicy::Off;
        let algorithms: Vec<String> = crate::hash::ALGORITHMS
            .iter()
            .map(|a| match *a == self.hash_algorithm {
                true => format!("{}*", a.name()),
                false => a.name().to_string(),
            })
            .collect();
        let hash = format!("HASH {}", algorithms.join(";"));
        let mut lines: Vec<&str> = command::VERBS
            .iter()
            .filter(|v| tls || !v.tls)
            .flat_map(|v| v.feat.iter().copied())
            .collect();
        lines.push(&hash);
        lines.sort_unstable();
        let features: Vec<String> = lines.iter().map(|f| format!(" {f}")).collect();
        let mut reply = vec!["Features:"];
        reply.extend(features.iter().map(String::as_str));
        reply.push("End");
        self.reply_multi(211, &reply);
    }

    fn opts(&mut self, opt: &str) {
        let mut words = opt.splitn(2, ' ');
        let name = words.next().unwrap_or("").to_ascii_uppercase();
        let value = words.next().unwrap_or("").trim();
        match name.as_str() {
            "UTF8" if value.eq_ignore_ascii_case("ON") || value.is_empty() => {
                self.reply(200, "UTF8 mode is always on.")
            }
            "UTF8" => self.reply(504, "UTF8 mode cannot be turned off."),
            "MLST" => self.reply(200, "MLST OPTS type;size;modify;perm;UNIX.mode;"),
            "HASH" if value.is_empty() => self.reply(200, self.hash_algorithm.name()),
            "HASH" => match crate::hash::Algorithm::from_name(value) {
                Some(algorithm) => {
                    self.hash_algorithm = algorithm;
                    self.reply(200, algorithm.name())
                }
                None => self.reply(504, "Unknown hash algorithm."),
            },
            _ => self.reply(501, "Unknown option."),
        }
    }

    fn help(&mut self, arg: Option<&str>) {
        if let Some(name) = arg {
            return match command::find(name.trim()) {
                Some(verb) if verb.help => self.reply(214, &format!("{} is supported.", verb.name)),
                _ => self.reply(502, "Unknown command."),
            };
        }
        let names: Vec<&str> = command::VERBS
            .iter()
            .filter(|v| v.help)
            .flat_map(|v| std::iter::once(v.name).chain(v.aliases.iter().copied()))
            .collect();
        let rows: Vec<String> =
            names.chunks(16).map(|row| row.iter().map(|n| format!(" {n:<4}")).collect()).collect();
        let mut lines = vec!["The following commands are recognized:"];
        lines.extend(rows.iter().map(String::as_str));
        lines.push("Help OK.");
        self.reply_multi(214, &lines);
    }

    fn site(&mut self, arg: &str) {
        let (sub, rest) = arg.trim_start().split_once(' ').unwrap_or((arg.trim(), ""));
        match sub.to_ascii_uppercase().as_str() {
            "HELP" => {
                self.reply_multi(214, &["SITE commands recognized:", " CHMOD HELP", "Help OK."])
            }
            "CHMOD" => self.chmod(rest.trim_start()),
            _ => self.reply(502, "Unknown SITE command."),
        }
    }

    /// SITE CHMOD MODE PATH: octal permission bits, masked to 0o777 (no setuid, setgid or
    /// sticky bit can be set); needs write permission.
    fn chmod(&mut self, arg: &str) {
        if !self.writable() {
            return self.reply(550, "Permission denied.");
        }
        let (mode, path) = arg.split_once(' ').unwrap_or((arg, ""));
        let Ok(mode) = u32::from_str_radix(mode, 8) else {
            return self.reply(501, "SITE CHMOD needs an octal mode and a path.");
        };
        if path.is_empty() || mode > 0o7777 {
            return self.reply(501, "SITE CHMOD needs an octal mode and a path.");
        }
        // As vsftpd: an anonymous writer may upload, never change who can read what. And the
        // root of a user's tree keeps its mode: `SITE CHMOD 0 /` would lock every user of that
        // tree out, with no way back over FTP.
        if self.is_anonymous() {
            return self.reply(550, "Anonymous users may not change permissions.");
        }
        let abs = path::resolve(&self.cwd, path);
        if abs == "/" {
            return self.reply(550, "The root directory's permissions cannot be changed.");
        }
        let target = abs.clone();
        self.on_storage(
            move |s| s.set_mode(path::relative(&target), mode & 0o777),
            move |s, r| {
                s.note_op("SITE CHMOD", &abs, None, &r, 200);
                s.reply_result(r, 200, "SITE CHMOD command successful.")
            },
        );
    }

    /// CLNT: the client says its name; kept (at most 64 characters) for the session's logs.
    fn clnt(&mut self, name: &str) {
        self.client_name = Some(name.chars().take(64).collect());
        self.reply(200, "Noted.");
    }

    /// AVBL [PATH]: the bytes free where the path (by default the current directory) lives,
    /// when the storage can tell.
    fn avbl(&mut self, arg: Option<&str>) {
        let abs = path::resolve(&self.cwd, arg.unwrap_or("."));
        self.on_storage(
            move |s| s.available(path::relative(&abs)),
            |s, free| match free {
                Ok(bytes) => s.reply(213, &bytes.to_string()),
                Err(e) => s.reply_error(&e),
            },
        );
    }

    /// HASH (draft-bryan-ftpext-hash: `213 ALGO START-END HEX PATH`) or an X hash command
    /// (`250 HEX`) of a file, or of a byte range of it (END exclusive).
    fn hash(
        &mut self,
        arg: &str,
        algorithm: crate::hash::Algorithm,
        range: Option<(u64, u64)>,
        draft: bool,
    ) {
        let abs = path::resolve(&self.cwd, arg);
        let (clock, limit) = (self.config.clock, self.config.hash_timeout);
        let target = abs.clone();
        let cancel = Cancel::default();
        let stop = cancel.clone();
        let job = move |s: &dyn Storage| {
            let relative = path::relative(&target);
            let meta = s.metadata(relative)?;
            if meta.kind != FileKind::File {
                return Err(crate::storage::wrong_kind(meta.kind));
            }
            let (start, end) = range.unwrap_or((0, meta.size));
            let end = end.min(meta.size);
            if start > end {
                return Err(rest_past_end());
            }
            let mut file = s.open_read(relative, start)?;
            let deadline = clock() + limit;
            let hex =
                crate::hash::digest(algorithm, &mut *file, end - start, clock, deadline, &stop)?;
            Ok((hex, start, end))
        };
        self.on_storage_in(Lane::Bulk, cancel, job, move |s, hashed| match hashed {
            Ok((hex, start, end)) if draft => {
                s.reply(213, &format!("{} {start}-{end} {hex} {abs}", algorithm.name()))
            }
            Ok((hex, ..)) => s.reply(250, &hex),
            Err(e) => s.reply_error(&e),
        });
    }

    /// RANG: the byte range of the next HASH.
    fn rang(&mut self, range: Option<(u64, u64)>) {
        self.hash_range = range;
        match range {
            Some((start, end)) => {
                self.reply(350, &format!("Restarting at {start}. End byte range at {end}."))
            }
            None => self.reply(350, "Byte range reset."),
        }
    }

    /// MFMT (and MDTM with a time): sets the modification time.
    fn mfmt(&mut self, time: SystemTime, arg: &str, mdtm: bool) {
        let abs = path::resolve(&self.cwd, arg);
        let text = match mdtm {
            true => String::from("File modification time set."),
            false => format!("Modify={}; {arg}", listing::time_val(time)),
        };
        let target = abs.clone();
        self.on_storage(
            move |s| s.set_modified(path::relative(&target), time),
            move |s, r| {
                s.note_op("MFMT", &abs, None, &r, 213);
                s.reply_result(r, 213, &text)
            },
        );
    }

    fn stat(&mut self, arg: Option<&str>) {
        match arg {
            Some(p) => self.stat_path(p),
            None => self.stat_session(),
        }
    }

    fn stat_session(&mut self) {
        let mut lines = vec![String::from("zocalo FTP server status:")];
        lines.push(format!(" Connected to {}", self.peer.ip()));
        match self.user() {
            Some(u) => lines.push(format!(" Logged in as {u}")),
            None => lines.push(String::from(" Not logged in")),
        }
        let t = if self.transfer_type == TransferType::Ascii { "ASCII" } else { "BINARY" };
        lines.push(format!(" TYPE: {t}; STRUcture: File; MODE: Stream"));
        lines.push(format!(
            " Control connection: {}",
            if self.tls_control { "TLS" } else { "clear" }
        ));
        match &self.running {
            Some(r) => lines.push(transfer_line(r)),
            None => lines.push(String::from(" No data transfer in progress")),
        }
        lines.push(String::from("End of status."));
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        self.reply_multi(211, &refs);
    }

    fn stat_path(&mut self, arg: &str) {
        let abs = path::resolve(&self.cwd, arg);
        let (target, now) = (abs.clone(), (self.config.clock)());
        let format = listing::Format::Long { now };
        let read = move |s: &dyn Storage| {
            let mut body = Vec::new();
            use std::io::Read as _;
            let mut listing = open_listing(s, &target, None, format, Shown::All)?;
            (&mut *listing).take(STAT_LISTING_CAP as u64 + 1).read_to_end(&mut body)?;
            if body.len() > STAT_LISTING_CAP {
                // Cut at the last whole line, and say so: the rest is LIST's to give.
                let end = body[..STAT_LISTING_CAP].iter().rposition(|&b| b == b'\n');
                body.truncate(end.map_or(0, |e| e + 1));
                body.extend_from_slice(b"... (cut here: LIST gives the whole directory)\r\n");
            }
            Ok(body)
        };
        self.on_storage(read, move |s, r| s.stat_path_done(&abs, r));
    }

    fn stat_path_done(&mut self, abs: &str, listing: std::io::Result<Vec<u8>>) {
        match listing {
            Ok(body) => {
                let body = String::from_utf8_lossy(&body);
                let first = format!("Status of {abs}:");
                let lines: Vec<String> = body.lines().map(|l| format!(" {l}")).collect();
                let mut reply = vec![first.as_str()];
                reply.extend(lines.iter().map(String::as_str));
                reply.push("End of status.");
                self.reply_multi(213, &reply);
            }
            Err(e) => self.reply_error(&e),
        }
    }

    // ---- navigation and files ------------------------------------------------------------

    fn pwd(&mut self) {
        let text = format!("\"{}\" is the current directory.", path::quote(&self.cwd));
        self.reply(257, &text);
    }

    fn cwd(&mut self, arg: &str) {
        let abs = path::resolve(&self.cwd, arg);
        let target = abs.clone();
        let enter = move |s: &dyn Storage| match s.metadata(path::relative(&target))?.kind {
            FileKind::Dir => s.enter(path::relative(&target)),
            _ => Err(std::io::ErrorKind::NotADirectory.into()),
        };
        self.on_storage(enter, move |s, entered| match entered {
            Ok(()) => {
                s.reply(250, &format!("Directory changed to {abs}."));
                s.cwd = abs;
            }
            Err(e) => s.reply_error(&e),
        });
    }

    fn mkd(&mut self, arg: &str) {
        let abs = path::resolve(&self.cwd, arg);
        let target = abs.clone();
        self.on_storage(
            move |s| s.mkdir(path::relative(&target)),
            move |s, made| {
                s.note_op("MKD", &abs, None, &made, 257);
                match made {
                    Ok(()) => s.reply(257, &format!("\"{}\" created.", path::quote(&abs))),
                    Err(e) => s.reply_error(&e),
                }
            },
        );
    }

    fn simple_write(
        &mut self,
        arg: &str,
        verb: &'static str,
        done: &'static str,
        op: fn(&dyn Storage, &str) -> std::io::Result<()>,
    ) {
        let abs = path::resolve(&self.cwd, arg);
        if abs == "/" {
            return self.reply(550, "The root cannot be changed.");
        }
        let target = abs.clone();
        self.on_storage(
            move |s| op(s, path::relative(&target)),
            move |s, r| {
                s.note_op(verb, &abs, None, &r, 250);
                s.reply_result(r, 250, done)
            },
        );
    }

    fn rnfr(&mut self, arg: &str) {
        let abs = path::resolve(&self.cwd, arg);
        if abs == "/" {
            return self.reply(550, "The root cannot be renamed.");
        }
        let target = abs.clone();
        self.on_storage(
            move |s| s.metadata(path::relative(&target)),
            move |s, meta| match meta {
                Ok(_) => {
                    s.rename_from = Some(abs);
                    s.reply(350, "Ready for RNTO.");
                }
                Err(e) => s.reply_error(&e),
            },
        );
    }

    fn rnto(&mut self, from: Option<String>, arg: &str) {
        let Some(from) = from else {
            return self.reply(503, "RNTO must follow RNFR.");
        };
        let to = path::resolve(&self.cwd, arg);
        let (source, target) = (from.clone(), to.clone());
        self.on_storage(
            move |s| s.rename(path::relative(&source), path::relative(&target)),
            move |s, r| {
                s.note_op("RNTO", &to, Some(from), &r, 250);
                s.reply_result(r, 250, "Rename successful.")
            },
        );
    }

    fn size(&mut self, arg: &str) {
        self.file_meta(arg, |m| m.size.to_string());
    }

    fn mdtm(&mut self, arg: &str) {
        self.file_meta(arg, |m| listing::time_val(m.modified));
    }

    /// SIZE and MDTM: 213 and a fact of a regular file.
    fn file_meta(&mut self, arg: &str, fact: fn(&crate::storage::Metadata) -> String) {
        let abs = path::resolve(&self.cwd, arg);
        self.on_storage(
            move |s| s.metadata(path::relative(&abs)),
            move |s, meta| match meta {
                Ok(m) if m.kind == FileKind::File => s.reply(213, &fact(&m)),
                Ok(_) => s.reply(550, "Not a regular file."),
                Err(e) => s.reply_error(&e),
            },
        );
    }

    fn mlst(&mut self, arg: Option<&str>) {
        let abs = path::resolve(&self.cwd, arg.unwrap_or("."));
        let target = abs.clone();
        self.on_storage(
            move |s| s.link_metadata(path::relative(&target)),
            move |s, m| s.mlst_done(&abs, m),
        );
    }

    fn mlst_done(
        &mut self,
        abs: &str,
        meta: std::io::Result<(crate::storage::Metadata, Option<String>)>,
    ) {
        let writable = self.writable();
        match meta {
            Ok((m, link)) => {
                let mut line = Vec::from(&b" "[..]);
                listing::facts_line(&mut line, abs, &m, link.as_deref(), writable, false);
                let (first, facts) = (format!("Listing {abs}"), String::from_utf8_lossy(&line));
                self.reply_multi(250, &[&first, &facts, "End."]);
            }
            Err(e) => self.reply_error(&e),
        }
    }

    fn set_type(&mut self, t: TransferType) {
        self.transfer_type = t;
        let name = if t == TransferType::Ascii { "A" } else { "I" };
        self.reply(200, &format!("Type set to {name}."));
    }

    fn set_rest(&mut self, offset: u64) {
        self.rest = offset;
        self.reply(350, &format!("Restarting at {offset}. Send STOR or RETR."));
    }

    // ---- data connection setup (RFC 959, RFC 2428) ---------------------------------------

    fn pasv(&mut self, extended: bool) {
        if self.epsv_all && !extended {
            return self.reply(503, "EPSV ALL in effect: only EPSV is allowed.");
        }
        if !extended && self.local.is_ipv6() && self.config.masquerade.is_none() {
            return self.reply(425, "PASV is IPv4 only; use EPSV.");
        }
        self.wait = Some(Wait::Passive { extended });
        self.actions.push_back(Action::OpenPassive);
    }

    fn epsv(&mut self, arg: EpsvArg) {
        let family = if self.local.is_ipv4() { 1 } else { 2 };
        match arg {
            EpsvArg::All => {
                self.epsv_all = true;
                self.reply(200, "EPSV ALL ok.");
            }
            EpsvArg::Protocol(Some(p)) if p != family => {
                self.reply(522, &format!("Network protocol not supported, use ({family})"))
            }
            EpsvArg::Protocol(_) => self.pasv(true),
        }
    }

    fn port(&mut self, addr: SocketAddr) {
        if self.epsv_all {
            return self.reply(503, "EPSV ALL in effect: only EPSV is allowed.");
        }
        let addr = canonical(addr);
        if addr.is_ipv4() != self.peer.is_ipv4() {
            let family = if self.peer.is_ipv4() { 1 } else { 2 };
            return self.reply(522, &format!("Network protocol not supported, use ({family})"));
        }
        if addr.ip() != self.peer.ip() || addr.port() < 1024 {
            return self.reply(
                501,
                "Refused: data connections go only to your own address and a port of 1024 or more.",
            );
        }
        self.actions.push_back(Action::ClosePassive);
        self.data = DataSetup::Active(addr);
        self.reply(200, "PORT command successful.");
    }

    fn reset_data(&mut self) {
        if self.data == DataSetup::Passive {
            self.actions.push_back(Action::ClosePassive);
        }
        self.data = DataSetup::None;
    }

    fn abor(&mut self) {
        match &mut self.running {
            Some(run) if !run.aborting => {
                run.aborting = true;
                self.actions.push_back(Action::Abort);
            }
            // Unreachable while `process` holds input during an abort; kept total.
            Some(_) => {}
            None => {
                self.reset_data();
                self.reply(225, "No transfer to abort.");
            }
        }
    }

    // ---- transfers -----------------------------------------------------------------------

    fn retr(&mut self, arg: &str) {
        if self.data_refused() {
            return;
        }
        let abs = path::resolve(&self.cwd, arg);
        let offset = std::mem::take(&mut self.rest);
        let target = abs.clone();
        let open = move |s: &dyn Storage| {
            let meta = s.metadata(path::relative(&target))?;
            if meta.kind != FileKind::File {
                return Err(crate::storage::wrong_kind(meta.kind));
            }
            if offset > meta.size {
                return Err(rest_past_end());
            }
            let file = s.open_read(path::relative(&target), offset)?;
            Ok((file, meta.size))
        };
        self.on_storage(open, move |s, opened| match opened {
            Ok((file, size)) => {
                let remaining = size.saturating_sub(offset);
                let mode = s.mode_name();
                let text =
                    format!("Opening {mode} mode data connection for {abs} ({remaining} bytes).");
                s.start(TransferKind::Retr, abs, Some(size), Body::Send(file), text, None);
            }
            Err(e) => s.reply_error(&e),
        });
    }

    fn store(&mut self, arg: &str, kind: TransferKind) {
        if self.data_refused() {
            return;
        }
        let offset = std::mem::take(&mut self.rest);
        if arg.ends_with('/') {
            return self.reply(553, "A name that ends in / names a directory, not a file.");
        }
        let abs = path::resolve(&self.cwd, arg);
        let mode = match (kind, offset) {
            (TransferKind::Appe, _) => WriteMode::Append,
            (_, 0) => WriteMode::Truncate,
            (_, off) => WriteMode::At(off),
        };
        let target = abs.clone();
        let open = move |s: &dyn Storage| {
            if let WriteMode::At(off) = mode {
                let size = match s.metadata(path::relative(&target)) {
                    Ok(m) => m.size,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
                    Err(e) => return Err(e),
                };
                if off > size {
                    return Err(rest_past_end());
                }
            }
            s.open_write(path::relative(&target), mode)
        };
        self.on_storage(open, move |s, opened| match opened {
            Ok(file) => {
                let text = format!("Ok to send data for {abs}.");
                s.start(kind, abs, None, Body::Receive(file), text, None);
            }
            Err(e) => s.reply_error(&e),
        });
    }

    fn stou(&mut self) {
        if self.data_refused() {
            return;
        }
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let seed = (self.config.clock)()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as u64);
        let cwd = self.cwd.clone();
        let create = move |s: &dyn Storage| {
            for _ in 0..16 {
                let n = COUNTER.fetch_add(1, Ordering::Relaxed);
                let name = format!("stou.{:x}{:04x}", seed, n & 0xffff);
                let abs = path::resolve(&cwd, &name);
                match s.open_write(path::relative(&abs), WriteMode::CreateNew) {
                    Ok(file) => return Ok(Some((name, abs, file))),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                    Err(e) => return Err(e),
                }
            }
            Ok(None)
        };
        self.on_storage(create, |s, created| match created {
            Ok(Some((name, abs, file))) => {
                let text = format!("FILE: {name}");
                s.start(TransferKind::Stou, abs, None, Body::Receive(file), text, Some(name));
            }
            Ok(None) => s.reply(450, "Could not find a unique file name."),
            Err(e) => s.reply_error(&e),
        });
    }

    fn list(&mut self, arg: Option<&str>, all: bool, kind: ListKind) {
        if self.data_refused() {
            return;
        }
        let abs = path::resolve(&self.cwd, arg.unwrap_or("."));
        // `NLST *.bin`, `LIST dir/f?.txt`: the last element is a pattern over its directory
        // (not for MLSD, whose argument RFC 3659 makes a directory).
        let glob = arg.filter(|a| path::is_pattern(a) && !matches!(kind, ListKind::Facts));
        let (target, pattern, arg) = match glob {
            Some(a) => {
                let dir = a.rsplit_once('/').map_or("", |(dir, _)| dir);
                let dir = if dir.is_empty() && a.starts_with('/') { "/" } else { dir };
                let Some(pattern) = path::Glob::new(path::file_name(&abs)) else {
                    let most = path::MAX_PATTERN;
                    return self
                        .reply(501, &format!("Pattern too long (at most {most} characters)."));
                };
                (path::resolve(&self.cwd, dir), Some(pattern), Some(dir.to_string()))
            }
            None => (abs.clone(), None, arg.map(str::to_string)),
        };
        let format = match kind {
            ListKind::Long => listing::Format::Long { now: (self.config.clock)() },
            ListKind::Names => listing::Format::Names {
                prefix: arg
                    .as_deref()
                    .filter(|a| !a.is_empty())
                    .map(|a| format!("{}/", a.trim_end_matches('/')))
                    .unwrap_or_default(),
            },
            ListKind::Facts => listing::Format::Facts { writable: self.writable() },
        };
        let dot_files = all || self.config.show_dot_files;
        let open = move |s: &dyn Storage| {
            let shown = match pattern {
                Some(pattern) => Shown::Matching(pattern),
                None if dot_files => Shown::All,
                None => Shown::NoDotFiles,
            };
            open_listing(s, &target, arg.as_deref(), format, shown)
        };
        self.on_storage(open, move |s, listing| match listing {
            Ok(listing) => {
                let text = String::from("Here comes the directory listing.");
                s.start(kind.transfer(), abs, None, Body::Listing(listing), text, None);
            }
            Err(e) => s.reply_error(&e),
        });
    }

    /// Refuses a transfer command that cannot run (no data connection set up, or clear data
    /// under `--tls required`) before anything is opened, so a refused STOR never truncates.
    fn data_refused(&mut self) -> bool {
        if self.data == DataSetup::None {
            self.reply(425, "Use PORT, PASV or EPSV first.");
            return true;
        }
        if self.config.tls == TlsPolicy::Required && !self.protect_data {
            self.reply(521, "Data connections must be protected: send PROT P.");
            return true;
        }
        false
    }

    fn start(
        &mut self,
        kind: TransferKind,
        path: String,
        size: Option<u64>,
        body: Body,
        text: String,
        unique_name: Option<String>,
    ) {
        let endpoint = match self.data {
            DataSetup::None => return self.reply(425, "Use PORT, PASV or EPSV first."),
            DataSetup::Passive => Endpoint::Passive,
            DataSetup::Active(addr) => Endpoint::Active(addr),
        };
        self.data = DataSetup::None;
        let progress = Arc::new(AtomicU64::new(0));
        let ascii = self.transfer_type == TransferType::Ascii && !matches!(body, Body::Listing(_));
        let tls = self.protect_data;
        self.reply(150, &text);
        let rate_limit = self.account().and_then(|a| match &body {
            Body::Receive(_) => a.rate_up,
            _ => a.rate_down,
        });
        self.actions.push_back(Action::Transfer(Transfer {
            endpoint,
            body,
            ascii,
            tls,
            progress: progress.clone(),
            rate_limit,
        }));
        let aborting = false;
        self.running = Some(Running { kind, path, size, progress, aborting, unique_name });
    }

    fn reply_outcome(&mut self, run: &Running, outcome: Outcome) {
        match outcome {
            Outcome::Done => match &run.unique_name {
                Some(name) => self.reply(226, &format!("Transfer complete; stored as {name}.")),
                None => self.reply(226, "Transfer complete."),
            },
            Outcome::Aborted => self.reply(426, "Connection closed; transfer aborted."),
            Outcome::NoConnection => self.reply(425, "Cannot open data connection."),
            Outcome::ConnectionLost => self.reply(426, "Data connection lost; transfer aborted."),
            Outcome::Storage(e) => self.reply_error(&e),
            Outcome::ShuttingDown => self.reply(426, "Server shutting down; transfer aborted."),
            Outcome::TlsRejected => self.reply(
                522,
                "Data connection TLS failed: it must resume the control connection's session.",
            ),
        }
    }

    // ---- helpers -------------------------------------------------------------------------

    fn account(&self) -> Option<&Account> {
        match &self.login {
            Login::LoggedIn(a) => Some(a),
            _ => None,
        }
    }

    fn writable(&self) -> bool {
        self.account().is_some_and(|a| a.writable)
    }

    /// Hands `job` to the driver as an [`Action::Work`] and holds input until its result comes
    /// back to `then` (through [`Session::handle_work_done`]).
    fn offload<T: Send + 'static>(
        &mut self,
        lane: Lane,
        cancel: Cancel,
        job: impl FnOnce() -> T + Send + 'static,
        then: impl FnOnce(&mut Session, T) + Send + 'static,
    ) {
        self.wait = Some(Wait::Work);
        self.then = Some(Box::new(move |s: &mut Session, done: Done| {
            if let Some(value) = done.take::<T>() {
                then(s, value);
            }
        }));
        self.actions.push_back(Action::Work(Work::in_lane(lane, cancel, job)));
    }

    /// [`offload`](Self::offload) a job on the logged-in user's storage.
    fn on_storage<T: Send + 'static>(
        &mut self,
        job: impl FnOnce(&dyn Storage) -> std::io::Result<T> + Send + 'static,
        then: impl FnOnce(&mut Session, std::io::Result<T>) + Send + 'static,
    ) {
        self.on_storage_in(Lane::Storage, Cancel::default(), job, then);
    }

    /// [`on_storage`](Self::on_storage) in `lane`, cancelled through `cancel`.
    fn on_storage_in<T: Send + 'static>(
        &mut self,
        lane: Lane,
        cancel: Cancel,
        job: impl FnOnce(&dyn Storage) -> std::io::Result<T> + Send + 'static,
        then: impl FnOnce(&mut Session, std::io::Result<T>) + Send + 'static,
    ) {
        let storage = self.account().map(|a| a.storage.clone());
        let job = move || match storage {
            Some(storage) => job(storage.as_ref()),
            None => Err(std::io::ErrorKind::PermissionDenied.into()),
        };
        self.offload(lane, cancel, job, then);
    }

    /// Reports a change to the files as an [`Event::FileOp`] with the code its reply gets.
    fn note_op<T>(
        &mut self,
        verb: &'static str,
        path: &str,
        from: Option<String>,
        result: &std::io::Result<T>,
        ok: u16,
    ) {
        let code = match result {
            Ok(_) => ok,
            Err(e) => error_reply(e).0,
        };
        self.events.push_back(Event::FileOp { verb, path: path.to_string(), from, code });
    }

    fn reply_result(&mut self, result: std::io::Result<()>, code: u16, text: &str) {
        match result {
            Ok(()) => self.reply(code, text),
            Err(e) => self.reply_error(&e),
        }
    }

    fn mode_name(&self) -> &'static str {
        if self.transfer_type == TransferType::Ascii {
            "ASCII"
        } else {
            "BINARY"
        }
    }

    fn reply_pasv(&mut self, port: u16) {
        let ip = match self.config.masquerade.unwrap_or(self.local.ip()) {
            IpAddr::V4(v4) => v4,
            IpAddr::V6(v6) => v6.to_ipv4_mapped().unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
        };
        let [a, b, c, d] = ip.octets();
        let text =
            format!("Entering Passive Mode ({a},{b},{c},{d},{},{}).", port >> 8, port & 0xff);
        self.reply(227, &text);
    }

    fn reply_error(&mut self, err: &std::io::Error) {
        let (code, text) = error_reply(err);
        if (451..500).contains(&code) {
            // The storage itself failed (not a missing file or a refusal): worth an operator's
            // attention.
            self.events.push_back(Event::StorageError(text.clone()));
        }
        self.reply(code, &text);
    }

    fn reply(&mut self, code: u16, text: &str) {
        Reply::new(code, text).write_to(&mut self.output);
    }

    fn reply_multi(&mut self, code: u16, lines: &[&str]) {
        Reply::multi(code, lines).write_to(&mut self.output);
    }

    fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            if self.running.is_some() {
                self.actions.push_back(Action::Abort);
            }
            self.actions.push_back(Action::Close);
        }
    }
}

// ---- listings: built on the storage, wherever the driver runs the work --------------------

/// Which entries of a directory a listing shows.
enum Shown {
    All,
    /// LIST and NLST without `-a`.
    NoDotFiles,
    /// Names matching a wildcard pattern (`NLST *.bin`); the path must be a directory.
    Matching(path::Glob),
}

/// Opens a listing that streams the directory `abs`; a file (not a directory) is listed as
/// its one line, and MLSD of a file is refused (RFC 3659: MLSD lists directories).
fn open_listing(
    s: &dyn Storage,
    abs: &str,
    arg: Option<&str>,
    format: listing::Format,
    shown: Shown,
) -> std::io::Result<Box<dyn FileHandle>> {
    let meta = s.metadata(path::relative(abs))?;
    if meta.kind == FileKind::Dir {
        let stat = !matches!(format, listing::Format::Names { .. });
        let listing = listing::Listing::new(s.open_dir(path::relative(abs), stat)?, format);
        return Ok(Box::new(match shown {
            Shown::All => listing,
            Shown::NoDotFiles => listing.without_dot_files(),
            Shown::Matching(pattern) => listing.matching(pattern),
        }));
    }
    if matches!(shown, Shown::Matching(_)) {
        return Err(std::io::ErrorKind::NotADirectory.into());
    }
    let mut line = Vec::new();
    match format {
        listing::Format::Long { now } => {
            listing::list_line(&mut line, path::file_name(abs), &meta, now)
        }
        listing::Format::Names { .. } => {
            line = format!("{}\r\n", arg.unwrap_or(path::file_name(abs))).into_bytes()
        }
        listing::Format::Facts { .. } => return Err(std::io::ErrorKind::NotADirectory.into()),
    }
    Ok(Box::new(std::io::Cursor::new(line)))
}

#[derive(Debug, Clone, Copy)]
enum ListKind {
    Long,
    Names,
    Facts,
}

impl ListKind {
    fn transfer(self) -> TransferKind {
        match self {
            ListKind::Long => TransferKind::List,
            ListKind::Names => TransferKind::Nlst,
            ListKind::Facts => TransferKind::Mlsd,
        }
    }
}

fn transfer_line(r: &Running) -> String {
    let done = r.progress.load(Ordering::Relaxed);
    match r.size {
        Some(total) => {
            format!(" {} {}: {done} of {total} bytes transferred", r.kind.verb(), r.path)
        }
        None => format!(" {} {}: {done} bytes transferred", r.kind.verb(), r.path),
    }
}

/// Commands answered while a transfer runs: the reason FTP has a second channel.
/// A command line for a log: PASS's argument masked, control characters escaped, at most 200
/// characters.
fn masked(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches(['\r', '\n']);
    let verb = text.split(' ').next().unwrap_or("");
    if verb.eq_ignore_ascii_case("PASS") {
        return format!("{verb} ****");
    }
    text.chars().take(200).flat_map(char::escape_debug).collect()
}

fn is_live(line: &[u8]) -> bool {
    matches!(command::parse(line), Ok(Command::Abor | Command::Noop | Command::Stat(None)))
}

/// IPv4-mapped IPv6 addresses (from a dual-stack socket) compare as the IPv4 address.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}
