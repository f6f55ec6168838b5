//! `zocalo serve`: bind, drop privileges, announce, run the chosen model.

use std::io::{self, Write};
use std::sync::Arc;
use std::time::Duration;

use zocalo_proto::session::{Config, TlsPolicy};

use crate::config::Settings;
use crate::drivers::accept::{Arrival, Door, Entrance, Listener};
use crate::drivers::connection::Ctx;
use crate::drivers::data::Rates;
use crate::models::{self, Model, Server};
use crate::ops::xferlog::Xferlog;
use crate::services;
use crate::services::admin::Admin;
use crate::state::limits::{ClusterGuard, Limits, LoginGuard, SharedGuard};
use crate::state::registry::Registry;
use crate::state::reload::Reloader;
use crate::state::users::{Users, UsersConfig};
use crate::sys::net;
use crate::sys::shutdown::{Reload, Shutdown};
use crate::sys::tls::Tls;

/// Runs the server until SIGTERM or SIGINT.
pub fn run(settings: Settings) -> io::Result<()> {
    raise_fd_limit();
    crate::ops::metrics::init(settings.node_name())?;
    crate::state::hashes::init(crate::state::hashes::default_permits())?;
    crate::state::seats::init()?;
    crate::ops::recent::init()?;
    let loops = match settings.model {
        Model::Event(_, n) => n,
        _ => 1,
    };
    crate::ops::status::set_model(settings.model.to_string(), loops);
    give_back_large_buffers();
    let shutdown = Shutdown::new()?;
    shutdown.install_signal_handlers()?;
    let listeners = listeners(&settings)?;
    let inherited = listeners.first().is_some_and(|l| l.inherited);
    let tftp_socket = settings.tftp.map(crate::services::tftp::bind).transpose()?;
    let metrics_listener = match settings.metrics {
        Some(addr) => Some(std::net::TcpListener::bind(addr).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot listen for metrics on {addr}: {e}"))
        })?),
        None => None,
    };
    let console_listener = match settings.console {
        Some(addr) => Some(console_listener(&settings, addr)?),
        None => None,
    };
    if let Some(user) = &settings.run_as {
        drop_privileges(user)?;
    }
    let (mut server, root_storage) = build(&settings, listeners, shutdown)?;
    server.inherited_listeners = inherited;
    let mut lines = announcements(&server.listeners, &settings)?;
    if let Some(socket) = tftp_socket {
        let addr = socket.local_addr()?;
        if settings.ftps.as_ref().is_some_and(|t| t.required) {
            // TFTP has no TLS: what --tls required protects on FTP, TFTP serves in the clear.
            tracing::warn!(
                tftp = %addr,
                "--tls required applies to FTP only: --tftp serves the same files to anyone, \
                 in the clear, without a login"
            );
        }
        let mut model = settings.model.tftp();
        let config = zocalo_tftp::ServerConfig {
            write_allowed: settings.write,
            max_per_client: settings.tftp_max_per_ip.max(1),
            on_refused: Some(|| {
                crate::ops::metrics::inc(crate::ops::metrics::Counter::TftpRefused)
            }),
            ..zocalo_tftp::ServerConfig::default()
        };
        if settings.s3.is_some() && matches!(model, zocalo_tftp::Model::Event(_)) {
            // Each S3 request is a network round trip: on an event loop one transfer would
            // hold up all the others, so TFTP gets a thread per transfer instead.
            model = zocalo_tftp::Model::Thread;
        }
        let shutdown = &server.ctx.shutdown;
        if settings.model == Model::Process {
            crate::services::tftp::fork(
                socket,
                root_storage,
                config,
                model,
                shutdown,
                &server.listeners,
            )?;
        } else {
            crate::services::tftp::spawn(socket, root_storage, config, model, shutdown)?;
        }
        lines.push(format!("listening tftp://{addr}"));
    }
    if let Some(listener) = metrics_listener {
        lines.push(format!("listening metrics http://{}/metrics", listener.local_addr()?));
        start_metrics(
            listener,
            &server,
            settings.model,
            Duration::from_secs(settings.shutdown_grace),
        )?;
    }
    let registry = server.ctx.registry.clone().ok_or_else(|| io::Error::other("no registry"))?;
    if let Some(shared) = &server.ctx.shared {
        // Every node of a cluster publishes how it is, so that any node's console shows it.
        let node = settings.node_name().to_string();
        let snapshot = move |sessions: &[crate::state::registry::SessionView]| {
            crate::services::console::node_snapshot(&node, sessions).to_string()
        };
        shared.publish_snapshot(Box::new(snapshot), server.reload.clone());
    }
    if let Some(listener) = console_listener {
        lines.push(format!(
            "listening console {}://{}/",
            if server.ctx.tls.is_some() { "https" } else { "http" },
            listener.local_addr()?
        ));
        start_console(listener, &settings, &server, registry.clone())?;
    }
    if let (Some(path), Some(registry)) = (&settings.admin_socket, &server.ctx.registry) {
        let mut summary = vec![format!("model {}", settings.model)];
        summary.extend(lines.iter().cloned());
        let (node, shared) = (settings.node_name().to_string(), server.ctx.shared.clone());
        let admin =
            Admin::bind(path, registry.clone(), server.reloader.clone(), summary, node, shared)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let shutdown = server.ctx.shutdown.clone();
        match settings.model {
            Model::Process => admin.fork(shutdown, server.reload.clone(), &server.listeners)?,
            _ => drop(admin.spawn(shutdown)?),
        }
    }
    if settings.model != Model::Process {
        let (reload, shutdown) = (server.reload.clone(), server.ctx.shutdown.clone());
        spawn_reloader(reload, shutdown, server.reloader.clone())?;
    }
    if let (Some(shared), Some(registry)) = (&server.ctx.shared, &server.ctx.registry) {
        let (registry, shutdown) = (registry.clone(), server.ctx.shutdown.clone());
        // The parent must stay single-threaded to fork: in the `process` model the sync loop
        // gets a process of its own.
        let sync = shared.sync_service(registry, shutdown, settings.model != Model::Process);
        services::spawn(settings.model.services(), &server.listeners, "zocalo-shared", sync)?;
    }
    if let Some(addr) = settings.agent {
        let listener = net::listen(addr, 64, false)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        lines.push(format!("listening agent://{}", listener.local_addr()?));
        let shutdown = server.ctx.shutdown.clone();
        let grace =
            Duration::from_secs(settings.shutdown_grace) + std::time::Duration::from_secs(1);
        let agent = move |own_process: bool| {
            crate::services::agent::serve(&listener, &shutdown, own_process.then_some(grace));
        };
        services::spawn(settings.model.services(), &server.listeners, "zocalo-agent", agent)?;
    }
    server.ready = Some(Box::new(move || {
        let mut out = io::stdout().lock();
        for line in &lines {
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
        crate::ops::systemd::ready();
    }));
    match &settings.s3 {
        Some(_) => tracing::info!(model = %settings.model, "serving"),
        None => {
            tracing::info!(model = %settings.model, root = %settings.root().display(), "serving")
        }
    }
    // A fact of the machine read once, here, before the `process` model forks: its children
    // inherit it instead of each reading /proc again.
    crate::sys::net::ephemeral_range();
    let stopping = log_the_stop(&server.ctx.shutdown, server.ctx.grace)?;
    let shutdown = server.ctx.shutdown.clone();
    let hooks = server.ctx.hooks.clone();
    if let Some(hooks) = hooks.as_ref().filter(|_| settings.model != Model::Process) {
        // Now rather than at the first event: the threads are part of the server from its
        // start (a `process`-model child starts its own).
        hooks.start();
    }
    let grace = server.ctx.grace;
    let served = models::run(settings.model, server);
    // Events of the last sessions still run, for up to the grace period.
    if let Some(hooks) = hooks {
        hooks.drain(grace);
    }
    if let Some(path) = &settings.admin_socket {
        // Ours (a start refuses a live one): a stopped server leaves no socket behind.
        let _ = std::fs::remove_file(path);
    }
    // Its line comes before ours (the stop was asked for, so it is written or about to be).
    let began = match shutdown.is_triggered() {
        true => stopping.join().ok(),
        false => None,
    };
    let took = began.map(|t| t.elapsed().as_millis() as u64);
    match &served {
        Ok(()) => tracing::info!(stop_ms = took, "stopped"),
        Err(e) => tracing::error!(stop_ms = took, "stopped: {e}"),
    }
    served
}

/// Logs when a stop is asked for (SIGTERM, SIGINT), with the grace period and what is still
/// running; returns when that was, once it has been.
fn log_the_stop(
    shutdown: &Shutdown,
    grace: Duration,
) -> io::Result<std::thread::JoinHandle<std::time::Instant>> {
    let fd = shutdown.fd();
    std::thread::Builder::new().name("zocalo-stopping".into()).spawn(move || {
        let hour = Duration::from_secs(3600);
        while !zocalo_poller::fds::wait_one(fd, false, hour).unwrap_or(true) {}
        let at = std::time::Instant::now();
        let sessions = crate::ops::metrics::sessions_open();
        let grace_s = grace.as_secs();
        tracing::info!(
            grace_s,
            sessions,
            "stopping: no new sessions; running transfers get the grace period"
        );
        at
    })
}

/// The FTP listeners: those systemd handed over (socket activation), or else one bound for
/// each `--listen` and `--implicit-tls` address.
fn listeners(settings: &Settings) -> io::Result<Vec<Listener>> {
    let inherited = crate::ops::systemd::listeners()?;
    if !inherited.is_empty() {
        let listeners: Vec<Listener> = inherited
            .into_iter()
            .map(|l| Listener { sock: l.sock, implicit_tls: l.implicit_tls, inherited: true })
            .collect();
        tracing::info!(count = listeners.len(), "serving the listeners handed over by systemd");
        return Ok(listeners);
    }
    let reuse_port = matches!(settings.model, Model::Event(_, n) if n > 1);
    let plain = settings.listen.iter().map(|a| (a, false));
    let implicit = settings.implicit_tls.iter().map(|a| (a, true));
    plain
        .chain(implicit)
        .map(|(addr, implicit_tls)| {
            let sock = net::listen_first(*addr, settings.backlog, reuse_port)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
            Ok(Listener { sock, implicit_tls, inherited: false })
        })
        .collect()
}

/// `serve --inetd`: one session on the connection that inetd (or systemd's `Accept=yes`)
/// accepted and handed over as standard input and output: the notes' process per connection,
/// with ACCEPT done by the super-server. Nothing is written to standard output but FTP.
pub fn run_inetd(settings: Settings) -> io::Result<()> {
    use std::os::fd::FromRawFd;
    crate::ops::metrics::init(settings.node_name())?;
    crate::state::hashes::init(crate::state::hashes::default_permits())?;
    crate::state::seats::init()?;
    crate::ops::recent::init()?;
    let loops = match settings.model {
        Model::Event(_, n) => n,
        _ => 1,
    };
    crate::ops::status::set_model(settings.model.to_string(), loops);
    give_back_large_buffers();
    let shutdown = Shutdown::new()?;
    shutdown.install_signal_handlers()?;
    // SAFETY: dup(2) of standard input has no preconditions; the result is checked.
    let fd = unsafe { libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 3) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor that this process owns.
    let stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    let Ok(peer) = stream.peer_addr() else {
        return Err(io::Error::other("--inetd needs a connected TCP socket on standard input"));
    };
    // Standard output is the client's socket too: nothing else may be written there.
    // SAFETY: /dev/null replaces descriptor 1; the dup2 result is not needed.
    unsafe {
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if null >= 0 {
            libc::dup2(null, 1);
            libc::close(null);
        }
    }
    if let Some(user) = &settings.run_as {
        drop_privileges(user)?;
    }
    let (server, _) = build(&settings, Vec::new(), shutdown)?;
    // The one connection goes through the door as an accepted one would: its PROXY header
    // if it comes from a trusted balancer, then the limits (the cluster's, with
    // --shared-state).
    let ctx = &server.ctx;
    let (limits, reserve) = (server.limits.clone(), server.reserve.clone());
    let mut door = Door::new(limits, reserve, ctx.proxy_from.clone(), ctx.proxy_timeout, false);
    let mut arrival = Once(None);
    door.arrive(stream, peer, false, &mut arrival);
    while arrival.0.is_none() {
        let Some((gate, fd)) = door.held().next() else {
            return Ok(()); // refused, and logged
        };
        let left = door
            .next_deadline()
            .map_or(Duration::ZERO, |at| at.saturating_duration_since(std::time::Instant::now()));
        zocalo_poller::fds::wait_one(fd, false, left)?;
        door.on_gate(gate, &mut arrival);
        door.expire(std::time::Instant::now(), &mut arrival);
    }
    if let Some(Arrival { stream, peer, implicit_tls, permit, .. }) = arrival.0 {
        crate::drivers::blocking::serve(stream, peer, ctx, implicit_tls);
        drop(permit);
    }
    Ok(())
}

/// The inetd path's [`Entrance`]: the one connection let in is kept.
struct Once(Option<Arrival>);

impl Entrance for Once {
    fn enter(&mut self, arrival: Arrival) {
        self.0 = Some(arrival);
    }
}

/// Serves `--metrics` on a thread; in the `process` model in a process of its own (its parent
/// must stay single-threaded to fork), which answers `/health` with 503 through the grace
/// period after a stop, then exits.
fn start_metrics(
    listener: std::net::TcpListener,
    server: &Server,
    model: Model,
    grace: std::time::Duration,
) -> io::Result<()> {
    let shutdown = server.ctx.shutdown.clone();
    let serve = move |exit_after_grace: bool| {
        let stopped_at = std::cell::Cell::new(None::<std::time::Instant>);
        // A stop under way, or `ctl drain`: /health says 503 so that a balancer without the
        // agent check takes the node out too.
        let draining = || shutdown.is_triggered() || crate::ops::metrics::draining();
        let stop = || {
            if !exit_after_grace || !shutdown.is_triggered() {
                return false;
            }
            let at = stopped_at.get().unwrap_or_else(std::time::Instant::now);
            stopped_at.set(Some(at));
            at.elapsed() > grace + std::time::Duration::from_secs(1)
        };
        crate::services::metrics_http::serve(&listener, &draining, &stop);
    };
    services::spawn(model.services(), &server.listeners, "zocalo-metrics", serve)
}

/// Binds the console's listener, refusing plain HTTP off loopback unless told so.
fn console_listener(
    settings: &Settings,
    addr: std::net::SocketAddr,
) -> io::Result<std::net::TcpListener> {
    let https = settings.tls_cert.is_some();
    if !https && !addr.ip().is_loopback() && !settings.console_insecure {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "--console {addr}: plain HTTP would carry passwords and cookies in the clear \
                 off this host; give --tls-cert and --tls-key (the console then speaks HTTPS), \
                 listen on a loopback address, or say --console-insecure"
            ),
        ));
    }
    if settings.console_user.is_empty() && settings.console_token.is_empty() {
        tracing::warn!(
            "--console without a [[console-user]] or [[console-token]]: nobody can sign in \
             (see `zocalo console user NAME`)"
        );
    }
    std::net::TcpListener::bind(addr).map_err(|e| {
        io::Error::new(e.kind(), format!("cannot listen for the console on {addr}: {e}"))
    })
}

/// Serves `--console` on a thread; in the `process` model in a process of its own.
fn start_console(
    listener: std::net::TcpListener,
    settings: &Settings,
    server: &Server,
    registry: Arc<Registry>,
) -> io::Result<()> {
    use crate::services::console::{auth::Auth, Console};
    let guard = server.reloader.users.guard();
    let auth = Auth::new(settings.console_user.clone(), settings.console_token.clone(), guard);
    let tls = server.ctx.tls.as_ref().map(|t| t.for_session().config);
    let console = Arc::new(Console {
        auth,
        node: settings.node_name().to_string(),
        registry,
        shared: server.ctx.shared.clone(),
        reload: server.reload.clone(),
        tls,
    });
    let shutdown = server.ctx.shutdown.clone();
    let serve = move |_| crate::services::console::serve(listener, console, &shutdown);
    services::spawn(settings.model.services(), &server.listeners, "zocalo-console", serve)
}

/// Opens the bucket and checks once that it answers, so a wrong endpoint, bucket or key stops
/// the start with a message naming it.
fn open_s3(config: &zocalo_s3::S3Config) -> io::Result<zocalo_s3::S3Storage> {
    let storage = zocalo_s3::S3Storage::new(config)?;
    storage.check()?;
    tracing::info!(
        endpoint = %config.endpoint,
        bucket = %config.bucket,
        prefix = %config.prefix,
        "serving files from S3"
    );
    Ok(storage)
}

fn build(
    settings: &Settings,
    listeners: Vec<Listener>,
    shutdown: Shutdown,
) -> io::Result<(Server, Arc<dyn zocalo_proto::Storage>)> {
    let tls = match &settings.ftps {
        Some(t) => Some(Tls::load(&t.cert, &t.key, t.require_reuse)?),
        None => None,
    };
    let shared = match &settings.shared_state {
        Some(url) => Some(crate::state::shared::Shared::open(&crate::state::shared::Options {
            url,
            node: settings.node_name(),
            max_total: settings.max_connections,
            max_per_ip: settings.max_per_ip,
            max_failures: settings.max_login_failures,
            ban: Duration::from_secs(settings.ban_time),
            keep_full: settings.model != Model::Process,
        })?),
        None => None,
    };
    let hooks = crate::ops::hooks::Hooks::open(&settings.hook, settings.node_name())
        .map_err(io::Error::other)?;
    let local =
        SharedGuard::new(settings.max_login_failures, Duration::from_secs(settings.ban_time))?;
    let guard: Arc<dyn LoginGuard> = match &shared {
        Some(shared) => Arc::new(ClusterGuard { local, shared: shared.clone() }),
        None => Arc::new(local),
    };
    let users = Users::new(
        UsersConfig {
            root: settings.root().to_path_buf(),
            anonymous: settings.anonymous.then_some(settings.write),
            plain: settings.user.iter().map(|u| (u.name.clone(), u.password.clone())).collect(),
            users_file: settings.users.clone(),
            atomic_uploads: settings.atomic_uploads,
            s3: match &settings.s3 {
                Some(config) => Some(open_s3(config)?),
                None => None,
            },
            sources: crate::state::sources::open(&settings.auth).map_err(io::Error::other)?,
            quota_file: settings.quota_file.clone(),
            shared: shared.clone(),
            hooks: hooks.clone(),
        },
        guard,
    )?;
    let root_storage = users.root_storage();
    let users = Arc::new(users);
    let mut config = Config::new(users.clone());
    config.masquerade = settings.masquerade;
    config.show_dot_files = settings.show_dot_files;
    config.login_fail_delay = Duration::from_millis(settings.login_fail_delay_ms);
    config.login_timeout = Duration::from_secs(settings.login_timeout);
    config.idle_timeout = Duration::from_secs(settings.idle_timeout);
    config.log_commands = tracing::enabled!(target: "zocalo::ops::observe", tracing::Level::DEBUG);
    config.tls = match &settings.ftps {
        None => TlsPolicy::Off,
        Some(t) if t.required => TlsPolicy::Required,
        Some(_) => TlsPolicy::Optional,
    };
    // The session table: `ctl status` and SIGUSR1 read it.
    let registry = Arc::new(Registry::new(settings.max_connections.min(65_536))?);
    let reloader = Reloader {
        users,
        tls: match (&tls, &settings.ftps) {
            (Some(tls), Some(t)) => Some((tls.clone(), t.cert.clone(), t.key.clone())),
            _ => None,
        },
        sessions: registry.clone(),
    };
    let ctx = Ctx {
        config: Arc::new(config),
        passive_ports: settings.passive_ports.as_ref().map(|p| p.0.clone()),
        data_timeout: Duration::from_secs(settings.data_timeout),
        grace: Duration::from_secs(settings.shutdown_grace),
        shutdown,
        tls,
        xferlog: match &settings.xferlog {
            Some(path) => Some(Arc::new(Xferlog::open(path)?)),
            None => None,
        },
        rates: Rates { down: settings.rate_down(), up: settings.rate_up() },
        work_threads: match settings.s3 {
            Some(_) => crate::drivers::workers::NETWORK_THREADS,
            None => crate::drivers::workers::THREADS,
        },
        registry: Some(registry),
        proxy_from: settings.proxy_protocol_from.clone(),
        proxy_timeout: Duration::from_secs(settings.proxy_header_timeout),
        shared: shared.clone(),
        hooks,
    };
    let workers = match settings.model {
        Model::Pool(n) => n,
        _ => 1,
    };
    let reload = Reload::new()?;
    reload.install_signal_handler()?;
    crate::sys::shutdown::install_dump_handler()?;
    let server = Server {
        ready: None,
        reload,
        reloader,
        reserve: Arc::new(net::FdReserve::new()),
        ctx: Arc::new(ctx),
        limits: Limits::new(settings.max_connections, settings.max_per_ip, shared),
        listeners,
        pool_queue: settings.pool_queue.unwrap_or(workers),
        backlog: settings.backlog,
        inherited_listeners: false,
    };
    Ok((server, root_storage))
}

/// Reloads whenever asked, on a small thread of its own, until the server stops.
fn spawn_reloader(reload: Reload, shutdown: Shutdown, reloader: Reloader) -> io::Result<()> {
    std::thread::Builder::new().name("zocalo-reload".into()).spawn(move || {
        while crate::sys::shutdown::wait_unless_stopped(reload.fd(), &shutdown) {
            reloader.answer(&reload);
        }
    })?;
    Ok(())
}

/// One `listening ftp://ADDR` line per listener, printed once the model accepts connections.
fn announcements(listeners: &[Listener], settings: &Settings) -> io::Result<Vec<String>> {
    let model = settings.model;
    let root = match &settings.s3 {
        Some(s3) => format!("s3://{}/{}/{}", s3.endpoint, s3.bucket, s3.prefix),
        None => settings.root().display().to_string(),
    };
    let mut lines = Vec::new();
    for l in listeners {
        let addr = l.sock.local_addr()?;
        let scheme = if l.implicit_tls { "ftps" } else { "ftp" };
        lines.push(format!("listening {scheme}://{addr} model={model} root={root}"));
    }
    Ok(lines)
}

/// Many idle sessions need many descriptors: lift the soft limit to the hard one, and say what
/// the limit is.
fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit with a valid struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    let soft = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit with a valid struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            lim.rlim_cur = soft;
        }
    }
    tracing::info!(from = soft, to = lim.rlim_cur, "open-file limit (RLIMIT_NOFILE)");
}

/// Switches to `user` (its uid, gid, and no supplementary groups) after the privileged bind.
fn drop_privileges(user: &str) -> io::Result<()> {
    let name = std::ffi::CString::new(user).map_err(|_| io::Error::other("bad user name"))?;
    // SAFETY: getpwnam is called before any thread exists; the record is copied at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err(io::Error::other(format!("--run-as: no such user {user:?}")));
    }
    // SAFETY: `pw` is a valid passwd record from getpwnam.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    // SAFETY: plain credential syscalls; each result is checked.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0
            || libc::setgid(gid) != 0
            || libc::setuid(uid) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    tracing::info!(user, uid, gid, "dropped privileges");
    Ok(())
}

/// Makes every allocation of 4 MiB or more its own mapping, unmapped when freed. glibc's
/// default raises that threshold to the largest block freed so far, so after one Argon2 hash
/// (19 MiB) or S3 part (5 MiB+) such blocks came from the heap and were kept after the login
/// or upload ended; with a fixed threshold the memory goes back to the system at once. Data
/// buffers (at most 1 MiB) stay below it.
fn give_back_large_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's tuning; it has no memory preconditions.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}
