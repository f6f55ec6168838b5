//! `zocalo serve`'s settings, each written once: one field of [`Settings`] is its flag
//! (clap's derive), its configuration-file key (serde, the same name: `--max-per-ip` is
//! `max-per-ip`), its default and its help. [`Settings::load`] merges the two without a line
//! per setting: the file is read into a TOML table, the flags given on the command line (clap
//! says which) are laid over it by name, and the result is read into [`Settings`] again. So a
//! key takes what its flag takes (`listen = "127.0.0.1:2121"` or a list of them; sizes as
//! `"10M"` or a number), and adding a setting is adding a field.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::{ArgAction, Args, FromArgMatches, ValueEnum};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::models::Model;
pub use crate::state::policy::parse_size;
use crate::state::sources::SourceConfig;
use crate::sys::net::Cidr;

/// Sessions per client address by default: enough for a person's parallel transfers and a
/// mirror tool, and one address cannot take the passive ports or the server (SFTPGo's default
/// is 20). Behind a NAT or for load tests, raise it with `--max-per-ip`.
pub const DEFAULT_MAX_PER_IP: usize = 50;

/// `zocalo serve`: every setting, as a flag and as a key of the `--config` file.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct Settings {
    /// Directory to serve [default: the current directory].
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Address to listen on; repeat for more (e.g. 127.0.0.1:2121, [::1]:2121, port 0 for any).
    #[arg(long, default_values_t = [SocketAddr::from(([127, 0, 0, 1], 2121))])]
    #[serde(deserialize_with = "one_or_many")]
    pub listen: Vec<SocketAddr>,
    /// A read-write account rooted at --root, NAME:PASSWORD (repeatable).
    #[arg(long, value_name = "NAME:PASSWORD")]
    #[serde(deserialize_with = "one_or_many")]
    pub user: Vec<PlainUser>,
    /// A users file: `name:argon2-hash:home:r|rw` per line (see `zocalo user add`).
    #[arg(long, value_name = "FILE")]
    pub users: Option<PathBuf>,
    /// Allow anonymous logins (USER anonymous or ftp).
    #[arg(long, conflicts_with = "no_anonymous", default_value_t = true, action = ArgAction::SetTrue)]
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
    pub passive_ports: Option<PortRange>,
    /// Address announced in PASV replies (for NAT).
    #[arg(long, value_name = "ADDR")]
    pub masquerade: Option<IpAddr>,
    /// TOML file with the same settings as these flags.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Server model: iterative, process, thread, pool[:N], select, poll, epoll[:N], uring[:N].
    #[arg(long, default_value_t = Model::default())]
    pub model: Model,
    /// Listen backlog.
    #[arg(long, default_value_t = 1024)]
    pub backlog: i32,
    /// Sessions in all; more get 421.
    #[arg(long, default_value_t = 10_000)]
    pub max_connections: usize,
    /// Sessions per client address; more get 421.
    #[arg(long, default_value_t = DEFAULT_MAX_PER_IP)]
    pub max_per_ip: usize,
    /// Seconds a session may sit idle before 421.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub idle_timeout: u64,
    /// Seconds a data connection may stall (or fail to arrive) before 425/426, and an unused
    /// passive port stays open.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub data_timeout: u64,
    /// Seconds running transfers may continue after SIGTERM/SIGINT.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub shutdown_grace: u64,
    /// Milliseconds a failed login waits before its 530.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub login_fail_delay_ms: u64,
    /// Failed logins from one address before it is locked out.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub max_login_failures: u32,
    /// Seconds an address stays locked out.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub ban_time: u64,
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
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// PEM certificate chain for FTPS (see `zocalo cert --self-signed`).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for FTPS.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// FTPS policy: off, optional or required (no login before AUTH TLS, no data without
    /// PROT P) [default: optional when a certificate is given].
    #[arg(long, value_enum, value_name = "POLICY")]
    pub tls: Option<TlsPolicy>,
    /// Refuse TLS data connections that do not resume the control connection's session.
    #[arg(long)]
    pub tls_require_reuse: bool,
    /// Listen for implicit FTPS (TLS from the first byte, as ftps:// URLs expect); repeatable.
    #[arg(long, value_name = "ADDR")]
    #[serde(deserialize_with = "one_or_many")]
    pub implicit_tls: Vec<SocketAddr>,
    /// Also serve TFTP on this UDP address, from the same root (anonymous permissions).
    #[arg(long, value_name = "ADDR")]
    pub tftp: Option<SocketAddr>,
    /// TFTP transfers one client address may have at once (a flood's bound; a transfer whose
    /// client never answered is given up after 3 s).
    #[arg(long, value_name = "N", default_value_t = 32)]
    pub tftp_max_per_ip: usize,
    /// Open the admin channel (AF_UNIX SOCK_SEQPACKET, mode 0600) for `zocalo ctl`.
    #[arg(long, value_name = "PATH")]
    pub admin_socket: Option<PathBuf>,
    /// Log every transfer to this file in the xferlog format.
    #[arg(long, value_name = "FILE")]
    pub xferlog: Option<PathBuf>,
    /// Per-session download limit per second, e.g. 10M, 500KiB, 2MB.
    #[arg(long, value_name = "SIZE")]
    pub max_rate_down: Option<Size>,
    /// Per-session upload limit per second, e.g. 10M, 500KiB, 2MB.
    #[arg(long, value_name = "SIZE")]
    pub max_rate_up: Option<Size>,
    /// Seconds a client has to log in before 421.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub login_timeout: u64,
    /// Where the files live: s3://HOST:PORT/BUCKET[/PREFIX] serves a bucket of an S3-compatible
    /// service (credentials from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or the config
    /// file's s3-access-key and s3-secret-key) [default: the local directory --root].
    #[arg(long, value_name = "LOCATION")]
    pub storage: Option<String>,
    /// Region that S3 requests are signed for.
    #[arg(long, value_name = "REGION", default_value = "us-east-1")]
    pub s3_region: String,
    /// Speak plain HTTP to the S3 service instead of HTTPS (a test or a private network).
    #[arg(long)]
    pub s3_insecure_http: bool,
    /// Seconds an S3 request may take to connect, to answer, and per read; a download must also
    /// bring 64 KiB per this many seconds of waiting for the store.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub s3_timeout: u64,
    /// MiB that the part buffers of all S3 uploads may hold at once; an upload that finds none
    /// left waits up to --s3-timeout, then fails with 451.
    #[arg(long, value_name = "MIB", default_value_t = 512)]
    pub s3_upload_memory: u64,
    /// The S3 access key: a key of the file only, never a flag (`ps` would show it).
    #[arg(skip)]
    pub s3_access_key: Option<String>,
    /// The S3 secret key: a key of the file only.
    #[arg(skip)]
    pub s3_secret_key: Option<String>,
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
    #[serde(skip)]
    pub inetd: bool,
    /// Connections from these addresses (a load balancer such as HAProxy) must begin with a
    /// PROXY protocol header (v1 or v2), whose client address then counts everywhere. Repeat
    /// the flag for more than one range, e.g. 10.0.0.0/24.
    #[arg(long, value_name = "CIDR")]
    #[serde(deserialize_with = "one_or_many")]
    pub proxy_protocol_from: Vec<Cidr>,
    /// Seconds a trusted balancer has to send its PROXY header.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    pub proxy_header_timeout: u64,
    /// Keep lock-outs, connection limits and the session table in Redis, shared by every node
    /// given the same URL (redis://HOST:PORT/[DB]).
    #[arg(long, value_name = "URL")]
    pub shared_state: Option<String>,
    /// Answer HAProxy's agent-check on this address: `up ready`, or `drain` while the node
    /// drains (`zocalo ctl drain`, or a stop under way).
    #[arg(long, value_name = "ADDR")]
    pub agent: Option<SocketAddr>,
    /// Where the bytes and files of accounts with a quota are tallied [default: the users
    /// file's name with .quota after it].
    #[arg(long, value_name = "FILE")]
    pub quota_file: Option<PathBuf>,
    /// Account sources (`[[auth]]` tables of the file only), tried in order after `--user`
    /// and `--users`.
    #[arg(skip)]
    pub auth: Vec<SourceConfig>,
    /// Events out to programs and URLs, and upload checks (`[[hook]]` tables of the file
    /// only).
    #[arg(skip)]
    pub hook: Vec<crate::ops::hooks::HookConfig>,
    /// Serve the web console and its JSON API on this address (HTTPS with --tls-cert; plain
    /// HTTP only on a loopback address unless --console-insecure).
    #[arg(long, value_name = "ADDR")]
    pub console: Option<SocketAddr>,
    /// Let the console speak plain HTTP on an address that is not loopback (behind a proxy
    /// that adds TLS, or on a private network).
    #[arg(long)]
    pub console_insecure: bool,
    /// Console accounts (`[[console-user]]` tables of the file only; see `zocalo console user`).
    #[arg(skip)]
    pub console_user: Vec<crate::services::console::auth::ConsoleUser>,
    /// Console API tokens (`[[console-token]]` tables; see `zocalo console token`).
    #[arg(skip)]
    pub console_token: Vec<crate::services::console::auth::ConsoleToken>,

    // What `load` derives from the settings above.
    /// FTPS, when a certificate and key are given and the policy is not `off`.
    #[arg(skip)]
    #[serde(skip)]
    pub ftps: Option<TlsSettings>,
    /// The bucket of `--storage` (`None`: the local directory `root`).
    #[arg(skip)]
    #[serde(skip)]
    pub s3: Option<zocalo_s3::S3Config>,
}

/// A TOML type error in the words of the settings (`expected usize` says nothing to a person).
fn in_words(message: &str) -> String {
    let mut out = message.to_string();
    for t in ["usize", "u64", "u32", "u16", "u8", "i64", "i32"] {
        out = out.replace(&format!("expected {t}"), "expected a whole number (such as 30)");
    }
    out.replace("expected f64", "expected a number")
}

/// Flags that say opposite things (clap refuses both on one command line): when one of a pair
/// is given there, both are taken from the command line, not the file.
const PARTNERS: [(&str, &str); 1] = [("anonymous", "no-anonymous")];

impl Default for Settings {
    /// The defaults, as clap gives them to a `serve` with no flags: written once, on the
    /// fields above.
    fn default() -> Self {
        let command = Settings::augment_args(clap::Command::new("serve"));
        let matches = command.get_matches_from(["serve"]);
        Settings::from_arg_matches(&matches).expect("the defaults parse")
    }
}

impl Settings {
    /// Lays the flags given on the command line (`given`: clap's ids of those whose value
    /// came from there) over the `--config` file over the defaults, then derives what the
    /// server needs ([`Self::ftps`], [`Self::s3`], the root and node name).
    pub fn load(flags: Settings, given: &[String]) -> Result<Settings, String> {
        let mut table = match &flags.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                // Read once into the settings for errors with their line, column and the
                // valid keys; then as a table to lay the flags over.
                toml::from_str::<Settings>(&text)
                    .map_err(|e| format!("{}: {}", path.display(), in_words(&e.to_string())))?;
                toml::from_str::<toml::Table>(&text)
                    .map_err(|e| format!("{}: {e}", path.display()))?
            }
            None => toml::Table::new(),
        };
        let from_flags = toml::Table::try_from(&flags).map_err(|e| e.to_string())?;
        let mut keys: Vec<String> = given.iter().map(|id| id.replace('_', "-")).collect();
        for (a, b) in PARTNERS {
            if keys.iter().any(|k| k == a || k == b) {
                keys.extend([a.to_string(), b.to_string()]);
            }
        }
        for key in keys {
            match from_flags.get(&key) {
                Some(value) => table.insert(key, value.clone()),
                None => table.remove(&key),
            };
        }
        let mut settings: Settings =
            toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| e.to_string())?;
        (settings.config, settings.inetd) = (flags.config, flags.inetd);
        settings.derive()?;
        Ok(settings)
    }

    /// Fills in what the settings imply, and refuses combinations that cannot work.
    fn derive(&mut self) -> Result<(), String> {
        if self.root.is_none() {
            self.root = Some(std::env::current_dir().map_err(|e| e.to_string())?);
        }
        if self.quota_file.is_none() {
            self.quota_file = crate::state::quota::default_path(self.users.as_deref());
        }
        if self.node_name.is_none() {
            self.node_name = Some(host_name());
        }
        // An upload check holds the file under a temporary name until its verdict.
        self.atomic_uploads |= self.hook.iter().any(|h| h.check);
        self.anonymous &= !self.no_anonymous;
        self.no_anonymous = !self.anonymous;
        self.ftps = tls_settings(
            self.tls_cert.clone(),
            self.tls_key.clone(),
            self.tls,
            self.tls_require_reuse,
        )?;
        if self.ftps.is_none() && !self.implicit_tls.is_empty() {
            return Err("--implicit-tls needs --tls-cert and --tls-key".into());
        }
        self.s3 = match &self.storage {
            None => None,
            Some(location) => Some(zocalo_s3::S3Config {
                region: self.s3_region.clone(),
                insecure_http: self.s3_insecure_http,
                timeout: Duration::from_secs(self.s3_timeout),
                upload_memory: self.s3_upload_memory.max(1) << 20,
                ..s3_config(location, self.s3_access_key.clone(), self.s3_secret_key.clone())?
            }),
        };
        Ok(())
    }

    /// The directory served (after [`Self::load`], always known).
    pub fn root(&self) -> &Path {
        self.root.as_deref().unwrap_or(Path::new("."))
    }

    /// This node's name (after [`Self::load`], always known).
    pub fn node_name(&self) -> &str {
        self.node_name.as_deref().unwrap_or("zocalo")
    }

    pub fn json_logs(&self) -> bool {
        self.log_format == LogFormat::Json
    }

    /// A rate limit of 0 is none.
    pub fn rate_down(&self) -> Option<u64> {
        self.max_rate_down.map(|s| s.0).filter(|r| *r > 0)
    }

    pub fn rate_up(&self) -> Option<u64> {
        self.max_rate_up.map(|s| s.0).filter(|r| *r > 0)
    }
}

/// FTPS settings.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub required: bool,
    pub require_reuse: bool,
}

/// `--tls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsPolicy {
    Off,
    Optional,
    Required,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    Text,
    Json,
}

/// `--user NAME:PASSWORD`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlainUser {
    pub name: String,
    pub password: String,
}

impl FromStr for PlainUser {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        match spec.split_once(':') {
            Some((name, pass)) if !name.is_empty() => {
                Ok(PlainUser { name: name.into(), password: pass.into() })
            }
            _ => Err(format!("--user wants NAME:PASSWORD, got {spec:?}")),
        }
    }
}

impl fmt::Display for PlainUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.password)
    }
}

/// `--passive-ports A-B`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRange(pub RangeInclusive<u16>);

impl FromStr for PortRange {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let bad = || format!("--passive-ports wants A-B with 1024 <= A <= B, got {spec:?}");
        let (a, b) = spec.split_once('-').ok_or_else(bad)?;
        let (a, b): (u16, u16) =
            (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?);
        if a < 1024 || a > b {
            return Err(bad());
        }
        Ok(PortRange(a..=b))
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.0.start(), self.0.end())
    }
}

/// A number of bytes, written as [`parse_size`] reads it (in the file, a plain number too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl FromStr for Size {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        parse_size(text).map(Size)
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Number(u64),
            Text(String),
        }
        match Written::deserialize(d)? {
            Written::Number(n) => Ok(Size(n)),
            Written::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// Serde as text for the types whose flag is parsed with `FromStr` and shown with `Display`:
/// the file's key then takes exactly what the flag takes.
macro_rules! as_text {
    ($($t:ty),*) => {$(
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}

as_text!(Model, Cidr, PlainUser, PortRange);

/// A list key also takes one value, as its repeatable flag does.
fn one_or_many<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written<T> {
        One(T),
        Many(Vec<T>),
    }
    Ok(match Written::deserialize(d)? {
        Written::One(one) => vec![one],
        Written::Many(many) => many,
    })
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
    policy: Option<TlsPolicy>,
    require_reuse: bool,
) -> Result<Option<TlsSettings>, String> {
    let required = match policy {
        Some(TlsPolicy::Off) => return Ok(None),
        Some(TlsPolicy::Required) => true,
        Some(TlsPolicy::Optional) | None => false,
    };
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(TlsSettings { cert, key, required, require_reuse })),
        (None, None) if policy.is_none() => Ok(None),
        _ => Err("FTPS needs both --tls-cert and --tls-key".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Parses `serve ARGS` as the command line does, and loads it.
    fn serve(args: &[&str]) -> Result<Settings, String> {
        let command = Settings::augment_args(clap::Command::new("serve"));
        let matches = command
            .try_get_matches_from(std::iter::once("serve").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        let flags = Settings::from_arg_matches(&matches).map_err(|e| e.to_string())?;
        Settings::load(flags, &given(&matches))
    }

    fn given(matches: &clap::ArgMatches) -> Vec<String> {
        crate::cli::given_on_command_line(matches)
    }

    fn with_file(text: &str, args: &[&str]) -> Result<Settings, String> {
        let dir = std::env::temp_dir().join(format!("zocalo-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Tests run in parallel: each file gets a name of its own.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("{n}.toml"));
        std::fs::write(&path, text).unwrap();
        let path = path.display().to_string();
        let mut all = vec!["--config", &path];
        all.extend_from_slice(args);
        let result = serve(&all);
        let _ = std::fs::remove_file(&path);
        result
    }

    #[test]
    fn defaults() {
        let s = serve(&[]).unwrap();
        assert_eq!(s.listen, vec!["127.0.0.1:2121".parse().unwrap()]);
        assert!(s.anonymous && !s.write);
        assert_eq!(s.model, Model::default());
        assert_eq!((s.max_per_ip, s.idle_timeout, s.backlog), (DEFAULT_MAX_PER_IP, 300, 1024));
        assert!(s.ftps.is_none() && s.s3.is_none());
    }

    #[test]
    fn ranges_and_users() {
        assert_eq!("50000-50010".parse::<PortRange>().unwrap().0, 50000..=50010);
        assert!("10-20".parse::<PortRange>().is_err());
        assert!("6000-5000".parse::<PortRange>().is_err());
        let u: PlainUser = "a:b:c".parse().unwrap();
        assert_eq!((u.name.as_str(), u.password.as_str()), ("a", "b:c"));
        assert!(":x".parse::<PlainUser>().is_err());
    }

    #[test]
    fn the_file_is_overridden_by_the_flags_given() {
        let file = "model = \"thread\"\nmax-per-ip = 3\nlisten = [\"127.0.0.1:0\"]\nbacklog = 7\n";
        let s = with_file(file, &["--max-per-ip", "5"]).unwrap();
        assert_eq!(s.model, Model::Thread);
        assert_eq!(s.max_per_ip, 5, "the flag wins");
        assert_eq!(s.backlog, 7, "a default flag does not hide the file's key");
        assert_eq!(s.listen, vec!["127.0.0.1:0".parse().unwrap()]);
        let s = with_file(file, &["--listen", "127.0.0.1:9", "--listen", "[::1]:9"]).unwrap();
        assert_eq!(s.listen.len(), 2, "a list flag replaces the file's list");
    }

    #[test]
    fn a_key_takes_what_its_flag_takes() {
        let file = "listen = \"127.0.0.1:21\"\nmax-rate-down = \"10M\"\nmax-rate-up = 2048\n\
                    proxy-protocol-from = \"10.0.0.0/8\"\npassive-ports = \"50000-50100\"\n\
                    tls = \"off\"\nuser = \"alice:secret\"\nlog-format = \"json\"\n";
        let s = with_file(file, &[]).unwrap();
        assert_eq!(s.listen, vec!["127.0.0.1:21".parse().unwrap()]);
        assert_eq!((s.rate_down(), s.rate_up()), (Some(10 << 20), Some(2048)));
        assert_eq!(s.proxy_protocol_from, vec!["10.0.0.0/8".parse().unwrap()]);
        assert_eq!(s.passive_ports.as_ref().unwrap().0, 50000..=50100);
        assert_eq!(s.user[0].name, "alice");
        assert!(s.json_logs());
    }

    #[test]
    fn file_errors_say_where_and_what_is_valid() {
        let e = with_file("backlog = 1\nnonsense = 1\n", &[]).unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        assert!(e.contains("nonsense") && e.contains("max-per-ip"), "{e}");
        let e = with_file("listen = \"not an address\"\n", &[]).unwrap_err();
        assert!(e.contains("line 1"), "{e}");
        let e = with_file("max-rate-up = \"10X\"\n", &[]).unwrap_err();
        assert!(e.contains("unknown unit"), "{e}");
    }

    #[test]
    fn anonymous_and_no_anonymous_together_are_refused_and_each_beats_the_file() {
        let both = serve(&["--anonymous", "--no-anonymous"]).unwrap_err();
        assert!(both.contains("cannot be used with"), "{both}");
        assert!(serve(&["--no-anonymous", "--anonymous"]).is_err());
        assert!(!serve(&["--no-anonymous"]).unwrap().anonymous);
        assert!(!with_file("anonymous = false\n", &[]).unwrap().anonymous);
        assert!(with_file("no-anonymous = true\n", &["--anonymous"]).unwrap().anonymous);
        assert!(!with_file("anonymous = true\n", &["--no-anonymous"]).unwrap().anonymous);
    }

    #[test]
    fn every_flag_is_a_key_of_the_same_name() {
        // The file's parser lists its keys when it meets one it does not know.
        let keys = toml::from_str::<Settings>("no-such-key = 1\n").unwrap_err().to_string();
        let cli = crate::cli::Cli::command();
        let serve = cli.find_subcommand("serve").unwrap();
        for arg in serve.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            assert_eq!(long, arg.get_id().as_str().replace('_', "-"), "flag and field differ");
            if !matches!(long, "config" | "inetd" | "help") {
                assert!(keys.contains(&format!("`{long}`")), "--{long} has no key: {keys}");
            }
        }
        assert!(with_file("s3-access-key = \"k\"\n", &[]).is_ok(), "file-only keys");
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
