//! The command line: each command and its flags. `serve`'s settings are [`Settings`], where
//! each is written once for its flag and its config-file key.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{Args, Parser, Subcommand};

use crate::config::{parse_size, Settings};
use crate::state::policy::Perm;

#[derive(Debug, Parser)]
#[command(name = "zocalo", version, about = "An FTP server whose server model is a switch")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve FTP (and optionally TFTP) from a directory.
    Serve(Box<Settings>),
    /// Manage the accounts of a users file.
    #[command(subcommand)]
    User(UserCommand),
    /// Serve TFTP alone (FTP's connectionless cousin) from a directory.
    Tftp(TftpArgs),
    /// Download: `zocalo get ftp://[USER:PASS@]HOST[:PORT]/PATH [DEST]` (also ftps://, tftp://).
    Get(TransferArgs),
    /// Upload: `zocalo put FILE ftp://[USER:PASS@]HOST[:PORT]/PATH` (also ftps://, tftp://).
    Put(PutArgs),
    /// List a directory: `zocalo ls ftp://HOST/DIR/`.
    Ls(LsArgs),
    /// Copy a directory tree, skipping unchanged files: `zocalo mirror ftp://HOST/DIR/ LOCALDIR`
    /// downloads, `--reverse` uploads.
    Mirror(MirrorArgs),
    /// Measure any FTP server (see bench/compare.sh): `zocalo bench ftp://USER:PASS@HOST:PORT/`.
    Bench(Box<BenchArgs>),
    /// Talk to a running server's admin channel.
    Ctl {
        /// The server's --admin-socket path.
        #[arg(long)]
        socket: PathBuf,
        #[command(subcommand)]
        request: CtlRequest,
    },
    /// Make the `[[console-user]]` and `[[console-token]]` tables of the web console.
    #[command(subcommand)]
    Console(ConsoleCommand),
    /// Make a TLS certificate for FTPS.
    Cert {
        /// Replace cert.pem and key.pem if they exist.
        #[arg(long)]
        force: bool,
        /// A self-signed certificate (the only kind for now): cert.pem and key.pem.
        #[arg(long, required = true)]
        self_signed: bool,
        /// Directory to write cert.pem and key.pem to.
        #[arg(long)]
        out: PathBuf,
        /// Names the certificate is valid for (repeatable) [default: localhost, 127.0.0.1, ::1].
        #[arg(long)]
        name: Vec<String>,
    },
}

/// `zocalo console`: prints a table to add to the `--config` file.
#[derive(Debug, Subcommand)]
pub enum ConsoleCommand {
    /// A `[[console-user]]` table: the password is read from standard input (one line) and
    /// kept as an Argon2 hash.
    User {
        name: String,
        /// `view` (every page) or `admin` (also kick, drain, undrain, reload).
        #[arg(long, value_enum, default_value = "view")]
        role: crate::services::console::auth::Role,
    },
    /// A new API token (printed once, on standard error) and its `[[console-token]]` table,
    /// which keeps only its SHA-256. Scripts send `Authorization: Bearer TOKEN`.
    Token {
        name: String,
        #[arg(long, value_enum, default_value = "view")]
        role: crate::services::console::auth::Role,
    },
}

#[derive(Debug, Subcommand)]
pub enum CtlRequest {
    /// Listeners, model, and each session's node, user, peer and transfer (with
    /// --shared-state, the sessions of every node of the cluster).
    Status,
    /// Close one session with a 421: its id from `status`, or NODE:ID for a session of
    /// another node of the cluster.
    Kick { session: String },
    /// Tell the load balancer to send this node no new sessions: the --agent check answers
    /// `drain` and /health (--metrics) answers 503; running sessions go on, and a client that
    /// connects without a balancer is still served. Stop the node once `status` shows none
    /// left, or `undrain` it.
    Drain,
    /// Undo `drain`: the agent answers `up ready` and /health `ok` again.
    Undrain,
    /// Re-read the users file, reload the TLS certificate, reopen the log files (as SIGHUP);
    /// running sessions keep their accounts and certificates.
    Reload,
    /// An account's quota tally: bytes and files used, and its limits.
    Quota {
        user: String,
        /// Count the account again from its storage (a users-file account now; an account of
        /// another source at its next login).
        #[arg(long)]
        recount: bool,
    },
}

/// `zocalo user`: a users file's accounts. A running server reads the file again on SIGHUP
/// or `zocalo ctl reload`.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add an account; the password is read from standard input (one line).
    Add {
        name: String,
        #[command(flatten)]
        file: UsersFile,
        #[command(flatten)]
        fields: UserFields,
        /// Give the account read access only (the same as --perm r).
        #[arg(long, conflicts_with = "perm")]
        read_only: bool,
    },
    /// Change an account: its home, perm or policy fields; with --password, its password
    /// (read from standard input).
    Set {
        name: String,
        #[command(flatten)]
        file: UsersFile,
        #[command(flatten)]
        fields: UserFields,
        /// Read a new password from standard input.
        #[arg(long)]
        password: bool,
    },
    /// Remove an account.
    Del {
        name: String,
        #[command(flatten)]
        file: UsersFile,
    },
    /// List the accounts (without their hashes).
    List {
        #[command(flatten)]
        file: UsersFile,
    },
}

/// The users file a `zocalo user` command edits.
#[derive(Debug, Args)]
pub struct UsersFile {
    /// The users file (created by `add` if missing).
    #[arg(long)]
    pub users: PathBuf,
}

/// What `user add` and `user set` may give an account.
#[derive(Debug, Args)]
pub struct UserFields {
    /// Home directory, absolute or relative to the server's --root [default for add: .].
    #[arg(long)]
    pub home: Option<String>,
    /// r (read only), rw, or w (upload only: no listing, no download) [default for add: rw].
    #[arg(long, value_name = "PERM")]
    pub perm: Option<Perm>,
    /// Policy fields, KEY=VALUE: rate_up, rate_down (bytes/s, e.g. 1M), allow, deny
    /// (comma-separated CIDRs), tls_required, disabled (true or false).
    #[arg(value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

/// `zocalo tftp`.
#[derive(Debug, Args)]
pub struct TftpArgs {
    /// Directory to serve [default: the current directory].
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// UDP address to listen on.
    #[arg(long, default_value = "127.0.0.1:6969")]
    pub listen: SocketAddr,
    /// Accept write requests (TFTP has no login: this is the anonymous permission).
    #[arg(long)]
    pub write: bool,
    /// Server model: iterative, thread, pool[:N], select, poll, epoll[:N] or uring[:N] (process: thread).
    #[arg(long, default_value = "thread")]
    pub model: String,
}

/// Options shared by the client commands.
#[derive(Debug, Args, Clone, Default)]
pub struct ClientOpts {
    /// Active mode: the server connects back (PORT/EPRT) instead of passive (EPSV/PASV).
    #[arg(long)]
    pub active: bool,
    /// Explicit FTPS on an ftp:// URL (AUTH TLS, PROT P); ftps:// URLs are implicit TLS.
    #[arg(long)]
    pub tls: bool,
    /// PEM file with the certificates to trust [default: the system's CA store].
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// Accept any server certificate (testing only).
    #[arg(long)]
    pub insecure: bool,
    /// Never draw a progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Options of a single transfer (get, put).
#[derive(Debug, Args, Clone, Default)]
pub struct TransferOpts {
    /// Resume a partial transfer with REST.
    #[arg(long = "continue")]
    pub resume: bool,
    /// TFTP block size (RFC 2348).
    #[arg(long)]
    pub blksize: Option<u16>,
    /// TFTP window size (RFC 7440).
    #[arg(long)]
    pub windowsize: Option<u16>,
}

/// `zocalo get URL [DEST]`.
#[derive(Debug, Args)]
pub struct TransferArgs {
    /// The file: ftp://[USER[:PASS]@]HOST[:PORT]/PATH, ftps://... or tftp://HOST[:PORT]/PATH.
    pub url: String,
    /// Where to write [default: the file name from the URL; `-` for standard output].
    pub dest: Option<PathBuf>,
    #[command(flatten)]
    pub opts: ClientOpts,
    #[command(flatten)]
    pub transfer: TransferOpts,
}

/// `zocalo put FILE URL`.
#[derive(Debug, Args)]
pub struct PutArgs {
    /// The local file to upload.
    pub file: PathBuf,
    /// Where to: ftp://[USER[:PASS]@]HOST[:PORT]/PATH (a path ending in / keeps the file's
    /// name), ftps://... or tftp://HOST[:PORT]/PATH.
    pub url: String,
    #[command(flatten)]
    pub opts: ClientOpts,
    #[command(flatten)]
    pub transfer: TransferOpts,
}

/// `zocalo ls URL`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// The directory: ftp://[USER[:PASS]@]HOST[:PORT]/DIR/ or ftps://...
    pub url: String,
    #[command(flatten)]
    pub opts: ClientOpts,
}

/// `zocalo mirror URL DIR` (or `--reverse`: DIR into URL).
#[derive(Debug, Args)]
pub struct MirrorArgs {
    /// The remote directory: ftp://[USER[:PASS]@]HOST[:PORT]/DIR/ or ftps://...
    pub url: String,
    /// The local directory: written into (created if missing), or with --reverse read from.
    pub dir: PathBuf,
    /// Upload: copy the local directory DIR to the server at URL (lftp's mirror -R).
    #[arg(long, short = 'R')]
    pub reverse: bool,
    /// Remove what the source no longer has from the copy.
    #[arg(long)]
    pub delete: bool,
    /// Also skip files of the same size whatever their time, and resume partial downloads.
    #[arg(long = "continue")]
    pub resume: bool,
    #[command(flatten)]
    pub opts: ClientOpts,
}

/// `zocalo bench URL`: the scenarios of pyftpdlib's ftpbench and more.
#[derive(Debug, Args)]
pub struct BenchArgs {
    pub url: String,
    /// transfer, logins, idle-transfer, multi, sessions, memory, listing (repeatable; all if
    /// none), or fairness (only by name).
    #[arg(long)]
    pub scenario: Vec<String>,
    /// The server's name in tables and charts.
    #[arg(long)]
    pub label: Option<String>,
    /// N: sessions for logins, idle-transfer and multi [default: 300].
    #[arg(long)]
    pub clients: Option<usize>,
    /// C: concurrency levels of `sessions`, comma-separated [default: 100,500].
    #[arg(long)]
    pub concurrency: Option<String>,
    /// Sessions run at each concurrency level [default: 2000].
    #[arg(long)]
    pub sessions: Option<usize>,
    /// K: idle sessions for `memory` [default: 2000].
    #[arg(long)]
    pub idle: Option<usize>,
    /// Size of the large file, e.g. 1GiB, 500M, 20MB [default: 1GiB].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub big_size: Option<u64>,
    /// Size of each client's file in `multi` [default: 10MB].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub multi_size: Option<u64>,
    /// Size of the file each session of `sessions` retrieves [default: 1MiB].
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub small_size: Option<u64>,
    /// Entries of the listing directory [default: 10000].
    #[arg(long)]
    pub list_entries: Option<usize>,
    /// Create the listing directory's entries with STOR first.
    #[arg(long)]
    pub create_listing: bool,
    /// K: sessions sending NOOP in a loop during `fairness` [default: 20].
    #[arg(long)]
    pub fairness_sessions: Option<usize>,
    /// An account with a slow login (users-file, Argon2) for `fairness`, USER:PASSWORD.
    #[arg(long, value_name = "USER:PASSWORD")]
    pub slow_login: Option<String>,
    /// The server's pid, for `memory` (RSS and PSS of it and its children).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Deadline of each phase, seconds [default: 120].
    #[arg(long)]
    pub timeout: Option<u64>,
    /// The load generator's readiness API: select, poll, epoll or uring [default: epoll].
    #[arg(long)]
    pub poller: Option<String>,
    /// JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Write an SVG chart per scenario into this directory.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

/// The ids of the arguments whose value came from the command line itself, not a default:
/// what [`Settings::load`] lays over the config file.
pub fn given_on_command_line(matches: &clap::ArgMatches) -> Vec<String> {
    matches
        .ids()
        .filter(|id| matches.value_source(id.as_str()) == Some(ValueSource::CommandLine))
        .map(|id| id.to_string())
        .collect()
}
