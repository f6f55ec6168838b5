//! `zocalo serve`: bind, drop privileges, announce, run the chosen model.

use std::io::{self, Write};
use std::sync::Arc;

use zocalo_proto::session::{Config, TlsPolicy};

use crate::admin::Admin;
use crate::cli::Settings;
use crate::conn::Ctx;
use crate::data::Rates;
use crate::limits::{Limits, SharedGuard};
use crate::models::{self, Listener, Model, Server};
use crate::net;
use crate::registry::Registry;
use crate::shutdown::{Reload, Shutdown};
use crate::tls::Tls;
use crate::users::{Users, UsersConfig};
use crate::xferlog::Xferlog;

/// Runs the server until SIGTERM or SIGINT.
pub fn run(settings: Settings) -> io::Result<()> {
    raise_fd_limit();
    let shutdown = Shutdown::new()?;
    shutdown.install_signal_handlers()?;
    let reuse_port = matches!(settings.model, Model::Event(_, n) if n > 1);
    let plain = settings.listen.iter().map(|a| (a, false));
    let implicit = settings.implicit_tls.iter().map(|a| (a, true));
    let listeners = plain
        .chain(implicit)
        .map(|(addr, implicit_tls)| {
            let sock = net::listen_first(*addr, settings.backlog, reuse_port)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
            Ok(Listener { sock, implicit_tls })
        })
        .collect::<io::Result<Vec<Listener>>>()?;
    let tftp_socket = settings.tftp.map(crate::tftp::bind).transpose()?;
    if let Some(user) = &settings.run_as {
        drop_privileges(user)?;
    }
    let (mut server, root_storage) = build(&settings, listeners, shutdown)?;
    let mut lines = announcements(&server.listeners, &settings)?;
    if let Some(socket) = tftp_socket {
        let addr = socket.local_addr()?;
        let (write, mut model) = (settings.anonymous_write, crate::tftp::model(settings.model));
        if settings.s3.is_some() && matches!(model, zocalo_tftp::Model::Event(_)) {
            // Each S3 request is a network round trip: on an event loop one transfer would
            // hold up all the others, so TFTP gets a thread per transfer instead.
            model = zocalo_tftp::Model::Thread;
        }
        let shutdown = &server.ctx.shutdown;
        if settings.model == Model::Process {
            crate::tftp::fork(socket, root_storage, write, model, shutdown, &server.listeners)?;
        } else {
            crate::tftp::spawn(socket, root_storage, write, model, shutdown)?;
        }
        lines.push(format!("listening tftp://{addr}"));
    }
    if let (Some(path), Some(registry)) = (&settings.admin_socket, &server.ctx.registry) {
        let mut summary = vec![format!("model {}", settings.model)];
        summary.extend(lines.iter().cloned());
        let admin = Admin::bind(path, registry.clone(), server.users.clone(), summary)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let shutdown = server.ctx.shutdown.clone();
        match settings.model {
            Model::Process => admin.fork(shutdown, server.reload.clone(), &server.listeners)?,
            _ => drop(admin.spawn(shutdown)?),
        }
    }
    if settings.model != Model::Process {
        spawn_reloader(server.reload.clone(), server.ctx.shutdown.clone(), server.users.clone())?;
    }
    server.ready = Some(Box::new(move || {
        let mut out = io::stdout().lock();
        for line in &lines {
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
    }));
    match &settings.s3 {
        Some(_) => tracing::info!(model = %settings.model, "serving"),
        None => tracing::info!(model = %settings.model, root = %settings.root.display(), "serving"),
    }
    // A fact of the machine read once, here, before the `process` model forks: its children
    // inherit it instead of each reading /proc again.
    crate::net::ephemeral_range();
    models::run(settings.model, server)
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
    let tls = match &settings.tls {
        Some(t) => Some(Tls::load(&t.cert, &t.key, t.require_reuse)?),
        None => None,
    };
    let guard = Arc::new(SharedGuard::new(settings.max_login_failures, settings.ban_time)?);
    let users = Users::new(
        UsersConfig {
            root: settings.root.clone(),
            anonymous: settings.anonymous.then_some(settings.anonymous_write),
            plain: settings.users_plain.clone(),
            users_file: settings.users_file.clone(),
            atomic_uploads: settings.atomic_uploads,
            s3: match &settings.s3 {
                Some(config) => Some(open_s3(config)?),
                None => None,
            },
        },
        guard,
    )?;
    let root_storage = users.root_storage();
    let users = Arc::new(users);
    let mut config = Config::new(users.clone());
    config.masquerade = settings.masquerade;
    config.show_dot_files = settings.show_dot_files;
    config.login_fail_delay = settings.login_fail_delay;
    config.tls = match &settings.tls {
        None => TlsPolicy::Off,
        Some(t) if t.required => TlsPolicy::Required,
        Some(_) => TlsPolicy::Optional,
    };
    let ctx = Ctx {
        config: Arc::new(config),
        passive_ports: settings.passive_ports.clone(),
        idle_timeout: settings.idle_timeout,
        data_timeout: settings.data_timeout,
        grace: settings.shutdown_grace,
        shutdown,
        tls,
        xferlog: match &settings.xferlog {
            Some(path) => Some(Arc::new(
                Xferlog::open(path)
                    .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?,
            )),
            None => None,
        },
        rates: Rates { down: settings.max_rate_down, up: settings.max_rate_up },
        login_timeout: settings.login_timeout,
        registry: match &settings.admin_socket {
            Some(_) => Some(Arc::new(Registry::new(settings.max_connections.min(65_536))?)),
            None => None,
        },
    };
    let workers = match settings.model {
        Model::Pool(n) => n,
        _ => 1,
    };
    let reload = Reload::new()?;
    reload.install_signal_handler()?;
    let server = Server {
        ready: None,
        reload,
        users,
        reserve: Arc::new(net::FdReserve::new()),
        ctx: Arc::new(ctx),
        limits: Limits::new(settings.max_connections, settings.max_per_ip),
        listeners,
        pool_queue: settings.pool_queue.unwrap_or(workers),
        backlog: settings.backlog,
    };
    Ok((server, root_storage))
}

/// Carries out a reload (SIGHUP, `ctl reload`): re-reads the users file. One that fails keeps
/// the accounts it had and says why.
pub fn reload_settings(users: &Users) {
    match users.reload() {
        Ok(n) => tracing::info!(accounts = n, "reloaded the users file"),
        Err(e) => tracing::warn!("reload failed, keeping the previous settings: {e}"),
    }
}

/// Reloads whenever asked, on a small thread of its own, until the server stops.
fn spawn_reloader(reload: Reload, shutdown: Shutdown, users: Arc<Users>) -> io::Result<()> {
    std::thread::Builder::new().name("zocalo-reload".into()).spawn(move || {
        while crate::shutdown::wait_unless_stopped(reload.fd(), &shutdown) {
            if reload.take() {
                reload_settings(&users);
            }
        }
    })?;
    Ok(())
}

/// One `listening ftp://ADDR` line per listener, printed once the model accepts connections.
fn announcements(listeners: &[Listener], settings: &Settings) -> io::Result<Vec<String>> {
    let model = settings.model;
    let root = match &settings.s3 {
        Some(s3) => format!("s3://{}/{}/{}", s3.endpoint, s3.bucket, s3.prefix),
        None => settings.root.display().to_string(),
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
