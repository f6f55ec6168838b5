//! The client-side and standalone commands: `zocalo tftp`, `zocalo get`, `zocalo put`.

use std::fs::File;
use std::io::{self, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use zocalo_tftp::{ClientOptions, TftpStorage};

use zocalo_client::bench::{self, BenchOptions};
use zocalo_client::{DataMode, OpError, OpOptions, Progress};

use crate::cli::{
    BenchArgs, ClientOpts, LsArgs, MirrorArgs, PutArgs, TftpArgs, TransferArgs, TransferOpts,
};
use crate::services::tftp::StorageAdapter;
use crate::storage::local::LocalFs;
use crate::sys::shutdown::Shutdown;

/// `zocalo tftp`: TFTP alone, until SIGTERM or SIGINT.
pub fn tftp(args: TftpArgs) -> Result<(), String> {
    let root = match args.root {
        Some(r) => r,
        None => std::env::current_dir().map_err(|e| e.to_string())?,
    };
    let model: crate::models::Model = args.model.parse()?;
    let storage =
        Arc::new(LocalFs::open(&root, false).map_err(|e| format!("{}: {e}", root.display()))?);
    let socket = crate::services::tftp::bind(args.listen).map_err(|e| e.to_string())?;
    let shutdown = Shutdown::new().map_err(|e| e.to_string())?;
    shutdown.install_signal_handlers().map_err(|e| e.to_string())?;
    let stop = shutdown.flag().map_err(|e| e.to_string())?;
    let addr = socket.local_addr().map_err(|e| e.to_string())?;
    println!("listening tftp://{addr} model={model} root={}", root.display());
    io::stdout().flush().map_err(|e| e.to_string())?;
    let adapter: Arc<dyn TftpStorage> = Arc::new(StorageAdapter::new(storage));
    let config = zocalo_tftp::ServerConfig { write_allowed: args.write, ..Default::default() };
    zocalo_tftp::serve(socket, adapter, config, model.tftp(), &stop).map_err(|e| e.to_string())
}

/// A parsed `tftp://host[:port]/path`.
struct TftpUrl {
    addr: SocketAddr,
    path: String,
}

fn parse_tftp(url: &str) -> Result<Option<TftpUrl>, String> {
    let Some(rest) = url.strip_prefix("tftp://") else {
        return Ok(None);
    };
    let (host, path) = rest.split_once('/').ok_or_else(|| format!("{url}: no path"))?;
    let host = if host
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.ends_with(':') && p.parse::<u16>().is_ok())
    {
        host.to_string()
    } else {
        format!("{host}:69")
    };
    let addr = host
        .to_socket_addrs()
        .map_err(|e| format!("{host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host}: no address"))?;
    Ok(Some(TftpUrl { addr, path: format!("/{path}") }))
}

fn tftp_options(opts: &TransferOpts) -> ClientOptions {
    ClientOptions {
        blksize: opts.blksize,
        windowsize: opts.windowsize,
        tsize: true,
        ..Default::default()
    }
}

fn dest_for(url_path: &str, dest: Option<PathBuf>) -> PathBuf {
    dest.unwrap_or_else(|| PathBuf::from(url_path.rsplit('/').next().unwrap_or("download")))
}

/// A failed command: what to print and the exit code (see `zocalo_client::exit_code`).
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub code: u8,
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure { message, code: 1 }
    }
}

impl From<OpError> for Failure {
    fn from(e: OpError) -> Self {
        Failure { code: zocalo_client::exit_code(&e) as u8, message: e.to_string() }
    }
}

fn op_options(opts: &ClientOpts, resume: bool) -> OpOptions {
    let mut o = OpOptions { resume, ..OpOptions::default() };
    o.client.mode = if opts.active { DataMode::Active } else { DataMode::Passive };
    o.client.explicit_tls = opts.tls;
    o.client.tls.cacert = opts.cacert.clone();
    o.client.tls.insecure = opts.insecure;
    o.progress = if opts.quiet { Progress::Never } else { Progress::Auto };
    o
}

/// `zocalo get URL [DEST]`.
pub fn get(args: TransferArgs) -> Result<(), Failure> {
    let started = std::time::Instant::now();
    let quiet = args.opts.quiet;
    let report = |n: u64| {
        if !quiet {
            eprintln!("{}", zocalo_client::ops::summary("received", n, started.elapsed()));
        }
    };
    let Some(url) = parse_tftp(&args.url)? else {
        let opts = op_options(&args.opts, args.transfer.resume);
        report(zocalo_client::get(&args.url, args.dest.as_deref(), &opts)?);
        return Ok(());
    };
    let dest = dest_for(&url.path, args.dest);
    let opts = tftp_options(&args.transfer);
    if dest == Path::new("-") {
        let mut out = io::stdout().lock();
        let n =
            zocalo_tftp::get(url.addr, &url.path, &mut out, &opts).map_err(|e| tftp_failure(&e))?;
        report(n);
        return Ok(());
    }
    let local = |e: io::Error| format!("{}: {e}", dest.display());
    let mut part = zocalo_client::ops::PartFile::create(&dest).map_err(local)?;
    let n =
        zocalo_tftp::get(url.addr, &url.path, part.file(), &opts).map_err(|e| tftp_failure(&e))?;
    part.commit().map_err(local)?;
    report(n);
    Ok(())
}

/// `zocalo put FILE URL`.
pub fn put(args: PutArgs) -> Result<(), Failure> {
    let started = std::time::Instant::now();
    let quiet = args.opts.quiet;
    let report = |n: u64| {
        if !quiet {
            eprintln!("{}", zocalo_client::ops::summary("sent", n, started.elapsed()));
        }
    };
    let Some(url) = parse_tftp(&args.url)? else {
        let opts = op_options(&args.opts, args.transfer.resume);
        report(zocalo_client::put(&args.file, &args.url, &opts)?);
        return Ok(());
    };
    let mut file = File::open(&args.file).map_err(|e| format!("{}: {e}", args.file.display()))?;
    let size = file.metadata().ok().map(|m| m.len());
    let opts = tftp_options(&args.transfer);
    let n = zocalo_tftp::put(url.addr, &url.path, &mut file, size, &opts)
        .map_err(|e| tftp_failure(&e))?;
    report(n);
    Ok(())
}

fn tftp_failure(e: &zocalo_tftp::ClientError) -> Failure {
    let code = match e {
        zocalo_tftp::ClientError::Io(_) => 3,
        zocalo_tftp::ClientError::Transfer(_) => 6,
    };
    Failure { message: e.to_string(), code }
}

/// `zocalo ls URL`.
pub fn ls(args: LsArgs) -> Result<(), Failure> {
    let mut out = io::stdout().lock();
    zocalo_client::ls(&args.url, &op_options(&args.opts, false), &mut out)?;
    Ok(())
}

/// `zocalo mirror URL DIR`.
pub fn mirror(args: MirrorArgs) -> Result<(), Failure> {
    let mut opts = op_options(&args.opts, args.resume);
    opts.delete = args.delete;
    let s = match args.reverse {
        true => zocalo_client::mirror_up(&args.dir, &args.url, &opts)?,
        false => zocalo_client::mirror(&args.url, &args.dir, &opts)?,
    };
    let links = match s.links {
        0 => String::new(),
        n => format!(", {n} links and special files not copied"),
    };
    eprintln!(
        "{} files ({} bytes), {} directories, {} unchanged, {} deleted{links}",
        s.files, s.bytes, s.dirs, s.skipped, s.deleted
    );
    Ok(())
}

/// `zocalo bench URL`.
pub fn bench(args: BenchArgs) -> Result<(), Failure> {
    let url = args.url.clone();
    let opts = bench_options(args)?;
    let results = bench::run(&url, &opts, &mut io::stdout())?;
    let failed: Vec<&str> =
        results.iter().filter(|r| r.failed_entirely()).map(|r| r.scenario.as_str()).collect();
    if !failed.is_empty() {
        return Err(format!("every session failed in: {}", failed.join(", ")).into());
    }
    Ok(())
}

fn bench_options(a: BenchArgs) -> Result<BenchOptions, String> {
    let mut o = BenchOptions::default();
    for s in &a.scenario {
        o.scenarios.push(s.parse().map_err(|e: String| e)?);
    }
    if let Some(c) = &a.concurrency {
        o.concurrency = c
            .split(',')
            .map(|n| n.trim().parse().map_err(|_| format!("bad concurrency {n:?}")))
            .collect::<Result<_, _>>()?;
    }
    if let Some(p) = &a.poller {
        o.backend = p.parse().map_err(|e| format!("{e}"))?;
    }
    o.label = a.label;
    o.clients = a.clients.unwrap_or(o.clients);
    o.sessions = a.sessions.unwrap_or(o.sessions);
    o.idle = a.idle.unwrap_or(o.idle);
    o.big_size = a.big_size.unwrap_or(o.big_size);
    o.multi_size = a.multi_size.unwrap_or(o.multi_size);
    o.small_size = a.small_size.unwrap_or(o.small_size);
    o.list_entries = a.list_entries.unwrap_or(o.list_entries);
    o.create_listing = a.create_listing;
    o.server_pid = a.server_pid;
    o.fairness_sessions = a.fairness_sessions.unwrap_or(o.fairness_sessions);
    if let Some(login) = &a.slow_login {
        let (user, pass) = login.split_once(':').ok_or("--slow-login takes USER:PASSWORD")?;
        o.slow_login = Some((user.to_string(), pass.to_string()));
    }
    o.timeout = a.timeout.map_or(o.timeout, std::time::Duration::from_secs);
    o.json = a.json;
    o.report = a.report;
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tftp_urls() {
        let u = parse_tftp("tftp://127.0.0.1:6969/a/b.bin").unwrap().unwrap();
        assert_eq!(u.addr, "127.0.0.1:6969".parse().unwrap());
        assert_eq!(u.path, "/a/b.bin");
        let u = parse_tftp("tftp://[::1]:70/x").unwrap().unwrap();
        assert_eq!(u.addr, "[::1]:70".parse().unwrap());
        let u = parse_tftp("tftp://127.0.0.1/x").unwrap().unwrap();
        assert_eq!(u.addr.port(), 69);
        assert!(parse_tftp("ftp://h/x").unwrap().is_none());
        assert!(parse_tftp("tftp://127.0.0.1:5").is_err());
    }
}
