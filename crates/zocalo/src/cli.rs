//! Command-line flags and the TOML configuration file, merged into one [`Settings`].
//!
//! Every `serve` flag has a configuration-file key of the same name (`--max-per-ip` is
//! `max-per-ip`); a flag given on the command line wins over the file.

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

use crate::models::Model;

/// Sessions per client address by default: enough for a person's parallel transfers and a
/// mirror tool, and one address cannot take the passive ports or the server (SFTPGo's default
/// is 20). Behind a NAT or for load tests, raise it with `--max-per-ip`.
pub const DEFAULT_MAX_PER_IP: usize = 50;

/// A size with an optional unit: a plain number of bytes, `K`, `M`, `G`, `T` or `KiB`, `MiB`,
/// `GiB`, `TiB` for powers of 1024 (as curl and rclone read `10M`), `kB`, `MB`, `GB`, `TB` for
/// powers of 1000, `B` for bytes; a decimal number is allowed (`1.5G`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("{text:?} is not a size"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" | "b" => 1,
        "K" | "k" | "KiB" => 1 << 10,
        "M" | "m" | "MiB" => 1 << 20,
        "G" | "g" | "GiB" => 1 << 30,
        "T" | "t" | "TiB" => 1 << 40,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        other => {
            return Err(format!("unknown unit {other:?} in {text:?} (use K, M, G, KiB, MB, ...)"))
        }
    };
    let bytes = value * scale as f64;
    if !bytes.is_finite() || bytes > u64::MAX as f64 {
        return Err(format!("{text:?} is too large"));
    }
    Ok(bytes.round() as u64)
}

#[derive(Debug, Parser)]
#[command(name = "zocalo", version, about = "An FTP server whose server model is a switch")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve FTP (and optionally TFTP) from a directory.
    Serve(Box<ServeArgs>),
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

#[derive(Debug, Subcommand)]
pub enum CtlRequest {
    /// Listeners, model, and each session's node, user, peer and transfer (with
    /// --shared-state, the sessions of every node of the cluster).
    Status,
    /// Close one session with a 421: its id from `status`, or NODE:ID for a session of
    /// another node of the cluster.
    Kick { session: String },
    /// Tell the load balancer (the --agent check) to send this node no new sessions; running
    /// sessions go on. Stop the node once `status` shows none left.
    Drain,
    /// Re-read the users file, reload the TLS certificate, reopen the log files (as SIGHUP);
    /// running sessions keep their accounts and certificates.
    Reload,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add an account; the password is read from standard input (one line).
    Add {
        name: String,
        /// The users file to append to (created if missing).
        #[arg(long)]
        users: PathBuf,
        /// Home directory, absolute or relative to the server's --root.
        #[arg(long, default_value = ".")]
        home: String,
        /// Give the account read access only.
        #[arg(long)]
        read_only: bool,
    },
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
    /// Server model: iterative, thread, pool[:N], select, poll or epoll (process: thread).
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
    /// The load generator's readiness API: select, poll or epoll [default: epoll].
    #[arg(long)]
    pub poller: Option<String>,
    /// JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Write an SVG chart per scenario into this directory.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

/// `zocalo serve`: all settings are optional here so that a config file can supply them.
#[derive(Debug, Args, Default)]
pub struct ServeArgs {
    /// Directory to serve [default: the current directory].
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Address to listen on; repeat for more (e.g. 127.0.0.1:2121, [::1]:2121, port 0 for any)
    /// [default: 127.0.0.1:2121].
    #[arg(long)]
    pub listen: Vec<SocketAddr>,
    /// A read-write account rooted at --root, NAME:PASSWORD (repeatable).
    #[arg(long = "user", value_name = "NAME:PASSWORD")]
    pub users_plain: Vec<String>,
    /// A users file: `name:argon2-hash:home:r|rw` per line (see `zocalo user add`).
    #[arg(long = "users", value_name = "FILE")]
    pub users_file: Option<PathBuf>,
    /// Allow anonymous logins (USER anonymous or ftp) [default].
    #[arg(long, overrides_with = "no_anonymous")]
    pub anonymous: bool,
    /// Refuse anonymous logins.
    #[arg(long)]
    pub no_anonymous: bool,
    /// Let anonymous users write (upload, delete, rename, make directories).
    #[arg(long)]
    pub write: bool,
    /// Passive data ports, A-B [default: odd ports of the kernel's ephemeral range]. A
    /// passive port that no transfer takes closes after the data timeout.
    #[arg(long, value_name = "A-B")]
    pub passive_ports: Option<String>,
    /// Address announced in PASV replies (for NAT).
    #[arg(long, value_name = "ADDR")]
    pub masquerade: Option<IpAddr>,
    /// TOML file with the same settings as these flags.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Server model: iterative, process, thread, pool[:N], select, poll, epoll[:N] [default: epoll].
    #[arg(long)]
    pub model: Option<String>,
    /// Listen backlog [default: 1024].
    #[arg(long)]
    pub backlog: Option<i32>,
    /// Sessions in all; more get 421 [default: 10000].
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Sessions per client address; more get 421 [default: 50].
    #[arg(long)]
    pub max_per_ip: Option<usize>,
    /// Seconds a session may sit idle before 421 [default: 300].
    #[arg(long, value_name = "SECS")]
    pub idle_timeout: Option<u64>,
    /// Seconds a data connection may stall (or fail to arrive) before 425/426, and an unused
    /// passive port stays open [default: 30].
    #[arg(long, value_name = "SECS")]
    pub data_timeout: Option<u64>,
    /// Seconds running transfers may continue after SIGTERM/SIGINT [default: 10].
    #[arg(long, value_name = "SECS")]
    pub shutdown_grace: Option<u64>,
    /// Milliseconds a failed login waits before its 530 [default: 1000].
    #[arg(long, value_name = "MS")]
    pub login_fail_delay_ms: Option<u64>,
    /// Failed logins from one address before it is locked out [default: 10].
    #[arg(long, value_name = "N")]
    pub max_login_failures: Option<u32>,
    /// Seconds an address stays locked out [default: 300].
    #[arg(long, value_name = "SECS")]
    pub ban_time: Option<u64>,
    /// Queue length of the pool model beyond its workers [default: the worker count].
    #[arg(long)]
    pub pool_queue: Option<usize>,
    /// Upload to a temporary name and rename into place only when complete.
    #[arg(long)]
    pub atomic_uploads: bool,
    /// LIST and NLST show dot files without `-a` (MLSD always does).
    #[arg(long)]
    pub show_dot_files: bool,
    /// After binding (e.g. to port 21 as root), switch to this user.
    #[arg(long, value_name = "USER")]
    pub run_as: Option<String>,
    /// Log format: text or json [default: text].
    #[arg(long)]
    pub log_format: Option<String>,
    /// PEM certificate chain for FTPS (see `zocalo cert --self-signed`).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for FTPS.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// FTPS policy: off, optional or required (no login before AUTH TLS, no data without
    /// PROT P) [default: optional when a certificate is given].
    #[arg(long, value_name = "POLICY")]
    pub tls: Option<String>,
    /// Refuse TLS data connections that do not resume the control connection's session.
    #[arg(long)]
    pub tls_require_reuse: bool,
    /// Listen for implicit FTPS (TLS from the first byte, as ftps:// URLs expect); repeatable.
    #[arg(long, value_name = "ADDR")]
    pub implicit_tls: Vec<SocketAddr>,
    /// Also serve TFTP on this UDP address, from the same root (anonymous permissions).
    #[arg(long, value_name = "ADDR")]
    pub tftp: Option<SocketAddr>,
    /// Open the admin channel (AF_UNIX SOCK_SEQPACKET, mode 0600) for `zocalo ctl`.
    #[arg(long, value_name = "PATH")]
    pub admin_socket: Option<PathBuf>,
    /// Log every transfer to this file in the xferlog format.
    #[arg(long, value_name = "FILE")]
    pub xferlog: Option<PathBuf>,
    /// Per-session download limit per second, e.g. 10M, 500KiB, 2MB.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_rate_down: Option<u64>,
    /// Per-session upload limit per second, e.g. 10M, 500KiB, 2MB.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_rate_up: Option<u64>,
    /// Seconds a client has to log in before 421 [default: 60].
    #[arg(long, value_name = "SECS")]
    pub login_timeout: Option<u64>,
    /// Where the files live: s3://HOST:PORT/BUCKET[/PREFIX] serves a bucket of an S3-compatible
    /// service (credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or the config
    /// file's s3-access-key and s3-secret-key) [default: the local directory --root].
    #[arg(long, value_name = "LOCATION")]
    pub storage: Option<String>,
    /// Region that S3 requests are signed for [default: us-east-1].
    #[arg(long, value_name = "REGION")]
    pub s3_region: Option<String>,
    /// Speak plain HTTP to the S3 service instead of HTTPS (a test or a private network).
    #[arg(long)]
    pub s3_insecure_http: bool,
    /// Seconds an S3 request may take to connect, to answer, and per read [default: 30].
    #[arg(long, value_name = "SECS")]
    pub s3_timeout: Option<u64>,
    /// Write logs to this file instead of standard error (reopened on SIGHUP and ctl reload).
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// Serve /metrics (Prometheus text format) and /health on this address.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// This node's name in metrics and `ctl status` [default: the host name].
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// Serve one session on the connection given as standard input and output (inetd,
    /// systemd's Accept=yes); --listen is ignored.
    #[arg(long)]
    pub inetd: bool,
    /// Connections from these addresses (a load balancer such as HAProxy) must begin with a
    /// PROXY protocol header (v1 or v2), whose client address then counts everywhere. Repeat
    /// the flag for more than one range, e.g. 10.0.0.0/24.
    #[arg(long = "proxy-protocol-from", value_name = "CIDR")]
    pub proxy_protocol_from: Vec<String>,
    /// Seconds a trusted balancer has to send its PROXY header [default: 5].
    #[arg(long, value_name = "SECS")]
    pub proxy_header_timeout: Option<u64>,
    /// Keep lock-outs, connection limits and the session table in Redis, shared by every node
    /// given the same URL (redis://HOST:PORT/[DB]).
    #[arg(long, value_name = "URL")]
    pub shared_state: Option<String>,
    /// Answer HAProxy's agent-check on this address: `up ready`, or `drain` while the node
    /// drains (`zocalo ctl drain`, or a stop under way).
    #[arg(long, value_name = "ADDR")]
    pub agent: Option<SocketAddr>,
}

/// The configuration file's keys, mirroring the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct FileConfig {
    root: Option<PathBuf>,
    listen: Option<Vec<SocketAddr>>,
    user: Option<Vec<String>>,
    users: Option<PathBuf>,
    anonymous: Option<bool>,
    no_anonymous: Option<bool>,
    write: Option<bool>,
    passive_ports: Option<String>,
    masquerade: Option<IpAddr>,
    model: Option<String>,
    backlog: Option<i32>,
    max_connections: Option<usize>,
    max_per_ip: Option<usize>,
    idle_timeout: Option<u64>,
    data_timeout: Option<u64>,
    shutdown_grace: Option<u64>,
    login_fail_delay_ms: Option<u64>,
    max_login_failures: Option<u32>,
    ban_time: Option<u64>,
    pool_queue: Option<usize>,
    atomic_uploads: Option<bool>,
    show_dot_files: Option<bool>,
    run_as: Option<String>,
    log_format: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls: Option<String>,
    tls_require_reuse: Option<bool>,
    implicit_tls: Option<Vec<SocketAddr>>,
    tftp: Option<SocketAddr>,
    admin_socket: Option<PathBuf>,
    xferlog: Option<PathBuf>,
    max_rate_down: Option<u64>,
    max_rate_up: Option<u64>,
    login_timeout: Option<u64>,
    storage: Option<String>,
    s3_region: Option<String>,
    s3_insecure_http: Option<bool>,
    s3_timeout: Option<u64>,
    s3_access_key: Option<String>,
    s3_secret_key: Option<String>,
    log_file: Option<PathBuf>,
    metrics: Option<SocketAddr>,
    node_name: Option<String>,
    proxy_protocol_from: Option<Vec<String>>,
    proxy_header_timeout: Option<u64>,
    shared_state: Option<String>,
    agent: Option<SocketAddr>,
}

/// FTPS settings.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub required: bool,
    pub require_reuse: bool,
}

/// Everything `serve` needs, resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    pub root: PathBuf,
    pub listen: Vec<SocketAddr>,
    pub users_plain: Vec<(String, String)>,
    pub users_file: Option<PathBuf>,
    pub anonymous: bool,
    pub anonymous_write: bool,
    pub passive_ports: Option<RangeInclusive<u16>>,
    pub masquerade: Option<IpAddr>,
    pub model: Model,
    pub backlog: i32,
    pub max_connections: usize,
    pub max_per_ip: usize,
    pub idle_timeout: Duration,
    pub data_timeout: Duration,
    pub shutdown_grace: Duration,
    pub login_fail_delay: Duration,
    pub max_login_failures: u32,
    pub ban_time: Duration,
    pub pool_queue: Option<usize>,
    pub atomic_uploads: bool,
    pub show_dot_files: bool,
    pub run_as: Option<String>,
    pub json_logs: bool,
    pub tls: Option<TlsSettings>,
    pub implicit_tls: Vec<SocketAddr>,
    pub tftp: Option<SocketAddr>,
    pub admin_socket: Option<PathBuf>,
    pub xferlog: Option<PathBuf>,
    pub max_rate_down: Option<u64>,
    pub max_rate_up: Option<u64>,
    pub login_timeout: Duration,
    /// `None`: the local directory `root`.
    pub s3: Option<zocalo_s3::S3Config>,
    pub log_file: Option<PathBuf>,
    pub metrics: Option<SocketAddr>,
    pub node_name: String,
    /// Balancers whose connections start with a PROXY header.
    pub proxy_from: Vec<crate::drivers::proxy::Cidr>,
    pub proxy_timeout: Duration,
    pub shared_state: Option<String>,
    pub agent: Option<SocketAddr>,
}

impl Settings {
    /// Merges flags over the config file (if any) over the defaults.
    pub fn resolve(args: &ServeArgs) -> Result<Settings, String> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| format!("{}: {e}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let root = match args.root.clone().or(file.root) {
            Some(r) => r,
            None => std::env::current_dir().map_err(|e| e.to_string())?,
        };
        let listen = pick_vec(&args.listen, file.listen);
        let listen =
            if listen.is_empty() { vec![SocketAddr::from(([127, 0, 0, 1], 2121))] } else { listen };
        let users_plain = pick_vec(&args.users_plain, file.user)
            .iter()
            .map(|u| parse_user(u))
            .collect::<Result<_, _>>()?;
        let anonymous = if args.no_anonymous {
            false
        } else if args.anonymous {
            true
        } else if file.no_anonymous == Some(true) {
            false
        } else {
            file.anonymous.unwrap_or(true)
        };
        let model_name = args.model.clone().or(file.model);
        let model = model_name.map_or(Ok(Model::default()), |m| m.parse())?;
        let passive = args.passive_ports.clone().or(file.passive_ports);
        let log_format =
            args.log_format.clone().or(file.log_format).unwrap_or_else(|| "text".into());
        if !matches!(log_format.as_str(), "text" | "json") {
            return Err(format!("unknown log format {log_format:?}: use text or json"));
        }
        let secs =
            |a: Option<u64>, f: Option<u64>, d: u64| Duration::from_secs(a.or(f).unwrap_or(d));
        let implicit_tls = pick_vec(&args.implicit_tls, file.implicit_tls);
        let tls = tls_settings(
            args.tls_cert.clone().or(file.tls_cert),
            args.tls_key.clone().or(file.tls_key),
            args.tls.clone().or(file.tls),
            args.tls_require_reuse || file.tls_require_reuse.unwrap_or(false),
        )?;
        if tls.is_none() && !implicit_tls.is_empty() {
            return Err("--implicit-tls needs --tls-cert and --tls-key".into());
        }
        Ok(Settings {
            root,
            listen,
            users_plain,
            users_file: args.users_file.clone().or(file.users),
            anonymous,
            anonymous_write: args.write || file.write.unwrap_or(false),
            passive_ports: passive.as_deref().map(parse_range).transpose()?,
            masquerade: args.masquerade.or(file.masquerade),
            model,
            backlog: args.backlog.or(file.backlog).unwrap_or(1024),
            max_connections: args.max_connections.or(file.max_connections).unwrap_or(10_000),
            max_per_ip: args.max_per_ip.or(file.max_per_ip).unwrap_or(DEFAULT_MAX_PER_IP),
            idle_timeout: secs(args.idle_timeout, file.idle_timeout, 300),
            data_timeout: secs(args.data_timeout, file.data_timeout, 30),
            shutdown_grace: secs(args.shutdown_grace, file.shutdown_grace, 10),
            login_fail_delay: Duration::from_millis(
                args.login_fail_delay_ms.or(file.login_fail_delay_ms).unwrap_or(1000),
            ),
            max_login_failures: args.max_login_failures.or(file.max_login_failures).unwrap_or(10),
            ban_time: secs(args.ban_time, file.ban_time, 300),
            pool_queue: args.pool_queue.or(file.pool_queue),
            atomic_uploads: args.atomic_uploads || file.atomic_uploads.unwrap_or(false),
            show_dot_files: args.show_dot_files || file.show_dot_files.unwrap_or(false),
            run_as: args.run_as.clone().or(file.run_as),
            json_logs: log_format == "json",
            tls,
            implicit_tls,
            tftp: args.tftp.or(file.tftp),
            admin_socket: args.admin_socket.clone().or(file.admin_socket),
            xferlog: args.xferlog.clone().or(file.xferlog),
            max_rate_down: args.max_rate_down.or(file.max_rate_down).filter(|r| *r > 0),
            max_rate_up: args.max_rate_up.or(file.max_rate_up).filter(|r| *r > 0),
            login_timeout: secs(args.login_timeout, file.login_timeout, 60),
            log_file: args.log_file.clone().or(file.log_file),
            metrics: args.metrics.or(file.metrics),
            proxy_from: pick_vec(&args.proxy_protocol_from, file.proxy_protocol_from)
                .iter()
                .map(|c| c.parse())
                .collect::<Result<_, _>>()?,
            proxy_timeout: secs(args.proxy_header_timeout, file.proxy_header_timeout, 5),
            shared_state: args.shared_state.clone().or(file.shared_state),
            agent: args.agent.or(file.agent),
            node_name: match args.node_name.clone().or(file.node_name) {
                Some(name) => name,
                None => host_name(),
            },
            s3: match args.storage.clone().or(file.storage) {
                None => None,
                Some(location) => Some(zocalo_s3::S3Config {
                    region: args.s3_region.clone().or(file.s3_region).unwrap_or("us-east-1".into()),
                    insecure_http: args.s3_insecure_http || file.s3_insecure_http.unwrap_or(false),
                    timeout: secs(args.s3_timeout, file.s3_timeout, 30),
                    ..s3_config(&location, file.s3_access_key, file.s3_secret_key)?
                }),
            },
        })
    }
}

/// The machine's host name (the default node name).
fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
    let end = buf.iter().position(|b| *b == 0).unwrap_or(0);
    match rc == 0 && end > 0 {
        true => String::from_utf8_lossy(&buf[..end]).into_owned(),
        false => String::from("zocalo"),
    }
}

/// The bucket and credentials of `--storage s3://...`: keys from the environment first, then
/// the config file; never from the command line, where `ps` would show them.
fn s3_config(
    location: &str,
    file_key: Option<String>,
    file_secret: Option<String>,
) -> Result<zocalo_s3::S3Config, String> {
    let env = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
    let access_key = env("AWS_ACCESS_KEY_ID").or(file_key);
    let secret_key = env("AWS_SECRET_ACCESS_KEY").or(file_secret);
    let (Some(access_key), Some(secret_key)) = (access_key, secret_key) else {
        return Err(format!(
            "{location}: no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, \
             or s3-access-key and s3-secret-key in the config file"
        ));
    };
    zocalo_s3::S3Config::new(location, access_key, secret_key)
}

fn tls_settings(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    policy: Option<String>,
    require_reuse: bool,
) -> Result<Option<TlsSettings>, String> {
    let required = match policy.as_deref() {
        Some("off") => return Ok(None),
        Some("required") => true,
        Some("optional") | None => false,
        Some(other) => return Err(format!("--tls wants off, optional or required, got {other:?}")),
    };
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(TlsSettings { cert, key, required, require_reuse })),
        (None, None) if policy.is_none() => Ok(None),
        _ => Err("FTPS needs both --tls-cert and --tls-key".into()),
    }
}

fn pick_vec<T: Clone>(cli: &[T], file: Option<Vec<T>>) -> Vec<T> {
    if cli.is_empty() {
        file.unwrap_or_default()
    } else {
        cli.to_vec()
    }
}

fn parse_user(spec: &str) -> Result<(String, String), String> {
    match spec.split_once(':') {
        Some((name, pass)) if !name.is_empty() => Ok((name.into(), pass.into())),
        _ => Err(format!("--user wants NAME:PASSWORD, got {spec:?}")),
    }
}

fn parse_range(spec: &str) -> Result<RangeInclusive<u16>, String> {
    let bad = || format!("--passive-ports wants A-B with 1024 <= A <= B, got {spec:?}");
    let (a, b) = spec.split_once('-').ok_or_else(bad)?;
    let (a, b): (u16, u16) =
        (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?);
    if a < 1024 || a > b {
        return Err(bad());
    }
    Ok(a..=b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let s = Settings::resolve(&ServeArgs::default()).unwrap();
        assert_eq!(s.listen, vec!["127.0.0.1:2121".parse().unwrap()]);
        assert!(s.anonymous && !s.anonymous_write);
        assert_eq!(s.model, Model::default());
    }

    #[test]
    fn ranges_and_users() {
        assert_eq!(parse_range("50000-50010").unwrap(), 50000..=50010);
        assert!(parse_range("10-20").is_err());
        assert!(parse_range("6000-5000").is_err());
        assert_eq!(parse_user("a:b:c").unwrap(), ("a".into(), "b:c".into()));
        assert!(parse_user(":x").is_err());
    }

    #[test]
    fn file_config_is_overridden_by_flags() {
        let dir = std::env::temp_dir().join(format!("zocalo-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("z.toml");
        std::fs::write(&path, "model = \"thread\"\nmax-per-ip = 3\nlisten = [\"127.0.0.1:0\"]\n")
            .unwrap();
        let args =
            ServeArgs { config: Some(path.clone()), max_per_ip: Some(5), ..Default::default() };
        let s = Settings::resolve(&args).unwrap();
        assert_eq!(s.model, Model::Thread);
        assert_eq!(s.max_per_ip, 5);
        assert_eq!(s.listen, vec!["127.0.0.1:0".parse().unwrap()]);
        std::fs::write(&path, "nonsense = 1\n").unwrap();
        assert!(Settings::resolve(&args).is_err(), "unknown keys are refused");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn sizes_take_units() {
        assert_eq!(parse_size("20MiB"), Ok(20 << 20));
        assert_eq!(parse_size("10M"), Ok(10 << 20));
        assert_eq!(parse_size("2MB"), Ok(2_000_000));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert!(parse_size("10X").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
