//! The local admin channel: an AF_UNIX SOCK_SEQPACKET socket (mode 0600), the notes' other
//! address family and the socket type that keeps message boundaries.
//!
//! A client sends one message, `status`, `kick [NODE:]ID`, `quota USER [recount]`, `drain`,
//! `undrain` or `reload`, and gets the answer as one or more messages followed by an empty
//! one. `zocalo ctl` is that client.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, SockAddr, Socket, Type};

use crate::state::registry::Registry;
use crate::sys::shutdown::{Reload, Shutdown};

const MAX_MESSAGE: usize = 32 * 1024;
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

/// What the admin channel reports and acts on.
pub struct Admin {
    socket: Socket,
    /// The socket's path, removed when the server stops (by the process that serves it).
    path: Option<PathBuf>,
    /// In the `process` model's admin process: the parent, which must reload too.
    forward: Option<Reload>,
    registry: Arc<Registry>,
    reloader: crate::state::reload::Reloader,
    /// The model and the `listening` lines.
    summary: Vec<String>,
    /// This node's name, in the status lines.
    node: String,
    /// The cluster's shared state, for other nodes' sessions and kicks.
    shared: Option<Arc<crate::state::shared::Shared>>,
}

impl Admin {
    /// Binds the socket at `path` with mode 0600. A stale socket there (no server answers on
    /// it) is replaced; a live one, or anything that is not a socket, is left alone and refused.
    pub fn bind(
        path: &Path,
        registry: Arc<Registry>,
        reloader: crate::state::reload::Reloader,
        summary: Vec<String>,
        node: String,
        shared: Option<Arc<crate::state::shared::Shared>>,
    ) -> io::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.is_dir()) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "the directory {} does not exist: create it (mode 0700, for the \
                         server's user) or give --admin-socket another path",
                    dir.display()
                ),
            ));
        }
        remove_stale(path)?;
        let socket = Socket::new(Domain::UNIX, Type::SEQPACKET.cloexec(), None)?;
        socket.bind(&SockAddr::unix(path)?)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        socket.listen(16)?;
        socket.set_nonblocking(true)?;
        let path = Some(path.to_path_buf());
        Ok(Admin { socket, path, forward: None, registry, reloader, summary, node, shared })
    }

    /// The listening descriptor, for a poll set.
    pub fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// Serves every waiting client (each with a short deadline), without blocking.
    pub fn serve_ready(&self) {
        while let Ok((client, _)) = self.socket.accept() {
            let _ = self.serve_client(client);
        }
    }

    fn serve_client(&self, client: Socket) -> io::Result<()> {
        client.set_nonblocking(false)?;
        client.set_read_timeout(Some(CLIENT_TIMEOUT))?;
        client.set_write_timeout(Some(CLIENT_TIMEOUT))?;
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 512];
        let n = client.recv(&mut buf)?;
        // SAFETY: recv initialised the first `n` bytes.
        let request: Vec<u8> = buf[..n].iter().map(|b| unsafe { b.assume_init() }).collect();
        let reply = self.answer(String::from_utf8_lossy(&request).trim());
        for chunk in reply.as_bytes().chunks(MAX_MESSAGE) {
            client.send(chunk)?;
        }
        client.send(&[])?;
        Ok(())
    }

    /// The text answering one request.
    pub fn answer(&self, request: &str) -> String {
        let mut words = request.split_whitespace();
        match (words.next(), words.next()) {
            (Some("status"), None) => self.status(),
            (Some("kick"), Some(target)) => self.kick(target),
            (Some("quota"), Some(user)) => {
                let recount = match words.next() {
                    None => false,
                    Some("recount") => true,
                    Some(_) => return "error: quota USER [recount]\n".into(),
                };
                match self.reloader.users.quota(user, recount) {
                    Ok(text) => text,
                    Err(e) => format!("error: {e}\n"),
                }
            }
            (Some("drain"), None) => {
                crate::ops::metrics::start_draining();
                tracing::warn!("draining: the agent check answers drain, /health 503");
                "draining: the agent check answers drain and /health 503, so a balancer sends \
                 no new sessions; running sessions go on (`undrain` to undo)\n"
                    .into()
            }
            (Some("undrain"), None) => {
                crate::ops::metrics::stop_draining();
                tracing::warn!("no longer draining: the agent check answers up, /health ok");
                "serving: the agent check answers up ready and /health ok again\n".into()
            }
            (Some("reload"), None) => {
                // In the `process` model the parent reloads (new children fork from it, and
                // only it may talk to systemd); this process answers with the same check.
                let result = match &self.forward {
                    Some(parent) => {
                        parent.ask();
                        self.reloader.check()
                    }
                    None => self.reloader.reload(),
                };
                match result {
                    Ok(summary) => format!("{summary}\n"),
                    Err(e) => format!("error: {e}\n"),
                }
            }
            _ => {
                "error: requests are `status`, `kick [NODE:]ID`, `quota USER [recount]`, `drain`, \
                  `undrain` and `reload`\n"
                    .into()
            }
        }
    }

    fn status(&self) -> String {
        let mut out = String::new();
        for line in &self.summary {
            out.push_str(line);
            out.push('\n');
        }
        let mut lines: Vec<String> =
            self.registry.sessions().iter().map(|s| s.line(&self.node)).collect();
        if let Some(shared) = &self.shared {
            match shared.other_sessions() {
                Some(nodes) => {
                    for (node, remote) in nodes {
                        lines.extend(remote.iter().map(|s| s.line(&node)));
                    }
                }
                None => out.push_str("shared state unreachable: this node's sessions only\n"),
            }
        }
        out.push_str(&format!("sessions {}\n", lines.len()));
        for line in lines {
            out.push_str(&line);
            out.push('\n');
        }
        out
    }

    /// `kick ID` (this node) or `kick NODE:ID` (any node of the cluster).
    fn kick(&self, target: &str) -> String {
        match kick(&self.registry, self.shared.as_deref(), &self.node, target) {
            Kicked::Here(id) => format!("kicked session {id}\n"),
            Kicked::Asked(node, id) => format!("asked node {node} to kick session {id}\n"),
            Kicked::NoSession => format!("error: no session {target}\n"),
            Kicked::NoNode(node) => format!("error: no node {node:?} in the cluster\n"),
            Kicked::Unreachable => "error: shared state unreachable\n".into(),
            Kicked::Alone(node) => {
                format!("error: no node {node} (this node has no --shared-state)\n")
            }
        }
    }

    /// Serves admin clients in a thread of its own until `shutdown` fires.
    pub fn spawn(self, shutdown: Shutdown) -> io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new().name("zocalo-admin".into()).spawn(move || {
            while crate::sys::shutdown::wait_unless_stopped(self.fd(), &shutdown) {
                self.serve_ready();
            }
        })
    }
}

impl Admin {
    /// The `process` model: serves the admin channel in a process of its own, so that no
    /// admin client can delay the accept loop, which must stay single-threaded to fork. It
    /// reads the shared session table, signals the children it kicks, and passes a reload on
    /// to the parent through `reload`.
    pub fn fork(
        mut self,
        shutdown: Shutdown,
        reload: Reload,
        listeners: &[super::Listener],
    ) -> io::Result<()> {
        // The child removes the socket when it stops; the parent only closes its copy.
        let path = self.path.take();
        super::fork(listeners, move || {
            (self.path, self.forward) = (path, Some(reload));
            let served = self.spawn(shutdown)?.join();
            served.map_err(|_| io::Error::other("admin channel"))
        })
    }
}

/// What became of a kick (`ctl kick`, the console's kick button).
#[derive(Debug, PartialEq, Eq)]
pub enum Kicked {
    /// A session of this node, closed now.
    Here(u64),
    /// Another node was asked (it closes the session within a tick).
    Asked(String, u64),
    NoSession,
    NoNode(String),
    /// The shared state did not answer.
    Unreachable,
    /// Another node was named, and this node has no shared state.
    Alone(String),
}

/// Kicks `ID` (this node) or `NODE:ID` (any node of the cluster, through `shared`).
pub fn kick(
    registry: &Registry,
    shared: Option<&crate::state::shared::Shared>,
    this_node: &str,
    target: &str,
) -> Kicked {
    use crate::state::shared::Kick;
    let (node, id) = match target.rsplit_once(':') {
        Some((node, id)) => (Some(node).filter(|n| *n != this_node), id),
        None => (None, target),
    };
    let Ok(id) = id.parse::<u64>() else {
        return Kicked::NoSession;
    };
    match (node, shared) {
        (None, _) if registry.kick(id) => Kicked::Here(id),
        (None, _) => Kicked::NoSession,
        (Some(node), Some(shared)) => match shared.kick(node, id) {
            Some(Kick::Asked) => Kicked::Asked(node.to_string(), id),
            Some(Kick::NoNode) => Kicked::NoNode(node.to_string()),
            Some(Kick::NoSession) => Kicked::NoSession,
            None => Kicked::Unreachable,
        },
        (Some(node), None) => Kicked::Alone(node.to_string()),
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        if let Some(path) = &self.path {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Removes a socket at `path` that no server answers on; refuses to touch a live socket or
/// a file that is not a socket.
fn remove_stale(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(io::ErrorKind::AlreadyExists, "exists and is not a socket"));
    }
    let probe = Socket::new(Domain::UNIX, Type::SEQPACKET.cloexec(), None)?;
    match probe.connect(&SockAddr::unix(path)?) {
        Ok(()) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "another server is answering on this admin socket",
        )),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path),
        Err(e) => Err(e),
    }
}

/// `zocalo ctl`: sends one request and returns the answer.
pub fn request(path: &Path, request: &str) -> io::Result<String> {
    let socket = Socket::new(Domain::UNIX, Type::SEQPACKET.cloexec(), None)?;
    socket.connect(&SockAddr::unix(path)?)?;
    socket.set_read_timeout(Some(Duration::from_secs(10)))?;
    socket.send(request.as_bytes())?;
    let mut answer = Vec::new();
    let mut buf = vec![std::mem::MaybeUninit::<u8>::uninit(); MAX_MESSAGE];
    loop {
        let n = socket.recv(&mut buf)?;
        if n == 0 {
            break;
        }
        // SAFETY: recv initialised the first `n` bytes.
        answer.extend(buf[..n].iter().map(|b| unsafe { b.assume_init() }));
    }
    Ok(String::from_utf8_lossy(&answer).into_owned())
}
