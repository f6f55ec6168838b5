//! `--console ADDR`: the web console and its JSON API, on a listener of its own.
//!
//! The page (a few static files compiled into the binary, no build step) is a client of the
//! API: it polls `GET /api/v1/overview` every second and draws the nodes, their sessions with a
//! transfer's progress, the last events and each node's server model at work. With
//! `--shared-state` every node publishes the same view of itself to Redis each second
//! (`zocalo:node:NODE`, beside the session table), so any node's console shows the whole
//! cluster, and an action on another node travels as a request in Redis that the node carries
//! out at its next tick, as `ctl kick NODE:ID` does.
//!
//! The server is the metrics endpoint's kind: blocking, a thread per connection (at most
//! [`HANDLERS`]), keep-alive with a short idle timeout, every read and write bounded. Under
//! HTTPS (the FTPS certificate) the handshake runs on that thread too.
//!
//! The API (every answer JSON; an unsigned client gets 401):
//!
//! - `GET /api/v1/overview`: `me`, `nodes`, `sessions`, `events` in one answer;
//! - `GET /api/v1/nodes`, `GET /api/v1/sessions`, `GET /api/v1/events`;
//! - `POST /api/v1/sessions/{node}:{id}/kick`;
//! - `POST /api/v1/nodes/{node}/drain`, `.../undrain`, `.../reload`.
//!
//! A POST needs the `admin` role and, with a session cookie, its `X-CSRF-Token`.

pub mod auth;
pub mod http;

use std::io::{self, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use self::auth::{Auth, Refusal, Role, Who};
use self::http::{Bad, Request, Response};
use crate::ops::{recent, status};
use crate::state::registry::{Registry, SessionView};
use crate::state::shared::{Kick, Shared};
use crate::sys::shutdown::{Reload, Shutdown};

/// Connections served at once; one past that is closed at once.
const HANDLERS: usize = 32;
/// How long a request (the first on a connection) may take to arrive, and an answer to leave.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a kept-alive connection may sit idle between requests: longer than the page's
/// one-second poll, short enough that a closed tab's connections go soon (Apache's is 5 s).
const IDLE_TIMEOUT: Duration = Duration::from_secs(2);
/// Requests on one connection.
const KEEP_ALIVE_MAX: usize = 1000;
/// The cookie of a signed-in browser.
const COOKIE: &str = "zocalo_console";
/// Events a node shows.
const EVENTS: usize = 50;

const LOGIN_HTML: &str = include_str!("assets/login.html");
const INDEX_HTML: &str = include_str!("assets/index.html");
const CONSOLE_JS: &str = include_str!("assets/console.js");
const CONSOLE_CSS: &str = include_str!("assets/console.css");

/// Everything a request may need.
pub struct Console {
    pub auth: Auth,
    pub node: String,
    pub registry: Arc<Registry>,
    pub shared: Option<Arc<Shared>>,
    pub reload: Reload,
    /// HTTPS with this configuration (the FTPS certificate).
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// This node as the console shows it, from its `sessions`: the JSON each node publishes for
/// the others.
pub fn node_snapshot(node: &str, sessions: &[SessionView]) -> Value {
    let now = status::now_ms();
    let rate: f64 = sessions.iter().filter_map(|s| rate(s, now)).sum();
    json!({
        "node": node,
        "at_ms": now,
        "sessions": sessions.len(),
        "bytes_per_s": rate as u64,
        "draining": crate::ops::metrics::draining(),
        "model": status::model_view(),
        "events": recent::last(EVENTS),
    })
}

/// A running transfer's mean rate in bytes per second.
fn rate(s: &SessionView, now_ms: u64) -> Option<f64> {
    if s.started_ms == 0 || s.transfer.is_empty() {
        return None;
    }
    let secs = now_ms.saturating_sub(s.started_ms).max(1) as f64 / 1000.0;
    Some(s.bytes as f64 / secs)
}

fn session_json(node: &str, s: &SessionView, now_ms: u64) -> Value {
    let rate = rate(s, now_ms);
    let eta = match (rate, s.total) {
        (Some(r), Some(total)) if r > 0.0 => Some(total.saturating_sub(s.bytes) as f64 / r),
        _ => None,
    };
    json!({
        "node": node,
        "id": s.id,
        "key": format!("{node}:{}", s.id),
        "user": s.user,
        "peer": s.peer,
        "command": s.command,
        "transfer": s.transfer,
        "bytes": s.bytes,
        "total": s.total,
        "bytes_per_s": rate.map(|r| r as u64),
        "eta_s": eta.map(|e| e.ceil() as u64),
        "idle_s": now_ms.saturating_sub(s.active_ms) / 1000,
    })
}

impl Console {
    /// Every node's snapshot, this one's (from its `local` sessions) first, the others from
    /// Redis when shared.
    fn nodes(&self, local: &[SessionView]) -> (Vec<Value>, bool) {
        let mut nodes = vec![node_snapshot(&self.node, local)];
        let mut reachable = true;
        if let Some(shared) = &self.shared {
            match shared.other_snapshots() {
                Some(others) => nodes.extend(
                    others.into_iter().filter_map(|(_, json)| serde_json::from_str(&json).ok()),
                ),
                None => reachable = false,
            }
        }
        (nodes, reachable)
    }

    /// Every node's sessions, this one's (`local`) first.
    fn sessions(&self, local: &[SessionView]) -> Vec<Value> {
        let now = status::now_ms();
        let mut out: Vec<Value> = local.iter().map(|s| session_json(&self.node, s, now)).collect();
        if let Some(others) = self.shared.as_ref().and_then(|s| s.other_sessions()) {
            for (node, sessions) in others {
                out.extend(sessions.iter().map(|s| session_json(&node, s, now)));
            }
        }
        out
    }

    /// The events of every node, newest first.
    fn events(nodes: &[Value]) -> Vec<Value> {
        let mut events: Vec<Value> = nodes
            .iter()
            .flat_map(|n| {
                let node = n["node"].clone();
                n["events"].as_array().cloned().unwrap_or_default().into_iter().map(move |mut e| {
                    e["node"] = node.clone();
                    e
                })
            })
            .collect();
        events.sort_by_key(|e| std::cmp::Reverse(e["at_ms"].as_u64().unwrap_or(0)));
        events.truncate(EVENTS * 2);
        events
    }

    fn overview(&self, who: &Who) -> Value {
        let local = self.registry.sessions();
        let (mut nodes, reachable) = self.nodes(&local);
        let events = Self::events(&nodes);
        for n in &mut nodes {
            if let Some(n) = n.as_object_mut() {
                n.remove("events");
            }
        }
        json!({
            "me": me(who),
            "nodes": nodes,
            "sessions": self.sessions(&local),
            "events": events,
            "shared_state": self.shared.is_some().then_some(reachable),
        })
    }

    /// Answers one request from `peer`.
    fn answer(&self, request: &Request, peer: IpAddr) -> Response {
        let (method, path) = (request.method.as_str(), request.path.as_str());
        let get = matches!(method, "GET" | "HEAD");
        if path == "/health" && get {
            return match crate::ops::metrics::draining() {
                true => Response::text("503 Service Unavailable", "draining\n"),
                false => Response::text("200 OK", "ok\n"),
            };
        }
        if path == "/console.css" && get {
            // The sign-in page's look: the one file besides it that an unsigned client gets.
            return Response::new("200 OK", "text/css; charset=utf-8", CONSOLE_CSS);
        }
        if path == "/favicon.ico" && get {
            return Response::new("204 No Content", "image/x-icon", "");
        }
        if path == "/login" && method == "POST" {
            return self.sign_in(request, peer);
        }
        let cookie = request.cookie(COOKIE);
        let who = match request.header("authorization").and_then(|a| a.strip_prefix("Bearer ")) {
            Some(token) => self.auth.token(token.trim()),
            None => cookie.and_then(|id| self.auth.session(id)),
        };
        let Some(who) = who else {
            return match path.starts_with("/api/") {
                true => Response::json("401 Unauthorized", &json!({"error": "sign in first"})),
                false => Response::new("200 OK", "text/html; charset=utf-8", LOGIN_HTML),
            };
        };
        if method == "POST" {
            // A cookie alone could be a forged cross-site request: it must carry the CSRF
            // token the page was given.
            if let Some(csrf) = &who.csrf {
                let sent = request.header("x-csrf-token").unwrap_or("");
                if !crate::state::passwords::constant_time_eq(sent.as_bytes(), csrf.as_bytes()) {
                    return Response::json(
                        "403 Forbidden",
                        &json!({"error": "missing or wrong CSRF token"}),
                    );
                }
            }
            if path == "/logout" {
                if let Some(id) = cookie {
                    self.auth.sign_out(id);
                }
                return Response::see_other("/").with("Set-Cookie", self.cookie("", 0));
            }
            if who.role != Role::Admin {
                return Response::json(
                    "403 Forbidden",
                    &json!({"error": "the view role cannot act"}),
                );
            }
            return self.act(path, &who, peer);
        }
        if !get {
            return Response::json("405 Method Not Allowed", &json!({"error": "GET or POST"}));
        }
        match path {
            "/" | "/index.html" => Response::new("200 OK", "text/html; charset=utf-8", INDEX_HTML),
            "/console.js" => Response::new("200 OK", "text/javascript; charset=utf-8", CONSOLE_JS),
            "/api/v1/me" => Response::json("200 OK", &me(&who)),
            "/api/v1/overview" => Response::json("200 OK", &self.overview(&who)),
            "/api/v1/nodes" => {
                Response::json("200 OK", &Value::from(self.nodes(&self.registry.sessions()).0))
            }
            "/api/v1/sessions" => {
                Response::json("200 OK", &Value::from(self.sessions(&self.registry.sessions())))
            }
            "/api/v1/events" => Response::json(
                "200 OK",
                &Value::from(Self::events(&self.nodes(&self.registry.sessions()).0)),
            ),
            _ => Response::json("404 Not Found", &json!({"error": "no such page"})),
        }
    }

    fn cookie(&self, value: &str, max_age: u64) -> String {
        let secure = if self.tls.is_some() { "; Secure" } else { "" };
        format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}")
    }

    fn sign_in(&self, request: &Request, peer: IpAddr) -> Response {
        let name = request.form("name").unwrap_or_default();
        let password = request.form("password").unwrap_or_default();
        match self.auth.sign_in(peer, &name, &password) {
            Ok((id, who)) => {
                tracing::info!(console_user = who.name, %peer, "console sign-in");
                recent::record("console", &who.name, &peer.to_string(), "signed in");
                let life = auth::SESSION_LIFE.as_secs();
                Response::see_other("/").with("Set-Cookie", self.cookie(&id, life))
            }
            Err(why) => {
                let text = match why {
                    Refusal::Bad => "Wrong name or password.",
                    Refusal::LockedOut => "Too many failed sign-ins from your address: try later.",
                    Refusal::Busy => "The server is too busy to check a password now: try again.",
                };
                tracing::warn!(console_user = name, %peer, reason = ?why, "console sign-in refused");
                recent::record("console-refused", &name, &peer.to_string(), text);
                let page =
                    LOGIN_HTML.replace("<!--error-->", &format!("<p class=\"error\">{text}</p>"));
                Response::new("401 Unauthorized", "text/html; charset=utf-8", page)
            }
        }
    }

    /// An admin's action: `/api/v1/sessions/{node}:{id}/kick`, `/api/v1/nodes/{node}/{what}`.
    fn act(&self, path: &str, who: &Who, peer: IpAddr) -> Response {
        let outcome = if let Some(target) =
            path.strip_prefix("/api/v1/sessions/").and_then(|p| p.strip_suffix("/kick"))
        {
            self.kick(target).map(|text| (format!("kick {target}"), text))
        } else if let Some((node, what)) =
            path.strip_prefix("/api/v1/nodes/").and_then(|p| p.split_once('/'))
        {
            self.ask(node, what).map(|text| (format!("{what} {node}"), text))
        } else {
            return Response::json("404 Not Found", &json!({"error": "no such action"}));
        };
        match outcome {
            Ok((action, text)) => {
                tracing::warn!(console_user = who.name, %peer, action, "console action");
                recent::record("console", &who.name, &peer.to_string(), &action);
                Response::json("200 OK", &json!({"ok": true, "message": text}))
            }
            Err((status, text)) => Response::json(status, &json!({"ok": false, "error": text})),
        }
    }

    fn kick(&self, target: &str) -> Result<String, (&'static str, String)> {
        use crate::services::admin::{kick, Kicked};
        match kick(&self.registry, self.shared.as_deref(), &self.node, target) {
            Kicked::Here(_) => Ok(format!("kicked session {target}")),
            Kicked::Asked(node, id) => Ok(format!("asked node {node} to kick session {id}")),
            Kicked::NoSession => Err(("404 Not Found", format!("no session {target}"))),
            Kicked::Unreachable => {
                Err(("503 Service Unavailable", "shared state unreachable".into()))
            }
            Kicked::NoNode(node) | Kicked::Alone(node) => {
                Err(("404 Not Found", format!("no node {node}")))
            }
        }
    }

    fn ask(&self, node: &str, what: &str) -> Result<String, (&'static str, String)> {
        if !matches!(what, "drain" | "undrain" | "reload") {
            return Err(("404 Not Found", format!("no action {what}")));
        }
        if node == self.node {
            crate::state::shared::carry_out(what, &self.reload);
            return Ok(format!("{what}: done on {node}"));
        }
        match self.shared.as_ref().map(|s| s.ask(node, what)) {
            Some(Some(Kick::Asked)) => Ok(format!("asked node {node} to {what}")),
            Some(None) => Err(("503 Service Unavailable", "shared state unreachable".into())),
            _ => Err(("404 Not Found", format!("no node {node}"))),
        }
    }
}

fn me(who: &Who) -> Value {
    json!({"name": who.name, "role": who.role, "csrf": who.csrf})
}

/// Serves the console on `listener` until `shutdown`.
pub fn serve(listener: TcpListener, console: Arc<Console>, shutdown: &Shutdown) {
    let _ = listener.set_nonblocking(true);
    let busy = Arc::new(AtomicUsize::new(0));
    let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
    while crate::sys::shutdown::wait_unless_stopped(fd, shutdown) {
        loop {
            let (stream, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if crate::sys::net::out_of_descriptors(&e) => {
                    std::thread::sleep(Duration::from_millis(100));
                    break;
                }
                Err(_) => break,
            };
            if busy.load(Ordering::Relaxed) >= HANDLERS {
                continue; // closed without an answer
            }
            busy.fetch_add(1, Ordering::Relaxed);
            let (console, mine) = (console.clone(), busy.clone());
            let spawned =
                std::thread::Builder::new().name("zocalo-console".into()).spawn(move || {
                    if let Err(e) = console.connection(stream, peer) {
                        tracing::debug!(%peer, %e, "console connection ended");
                    }
                    mine.fetch_sub(1, Ordering::Relaxed);
                });
            if spawned.is_err() {
                busy.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

impl Console {
    fn connection(&self, stream: TcpStream, peer: SocketAddr) -> io::Result<()> {
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let _ = stream.set_nodelay(true);
        let socket = stream.try_clone()?;
        match &self.tls {
            Some(config) => {
                let conn =
                    rustls::ServerConnection::new(config.clone()).map_err(io::Error::other)?;
                self.requests(rustls::StreamOwned::new(conn, stream), &socket, peer)
            }
            None => self.requests(stream, &socket, peer),
        }
    }

    fn requests<S: Read + Write>(
        &self,
        stream: S,
        socket: &TcpStream,
        peer: SocketAddr,
    ) -> io::Result<()> {
        let ip = peer.ip().to_canonical();
        let mut reader = BufReader::new(stream);
        for served in 1..=KEEP_ALIVE_MAX {
            if served == 2 {
                socket.set_read_timeout(Some(IDLE_TIMEOUT))?;
            }
            let request = match http::read_request(&mut reader) {
                Ok(request) => request,
                Err(Bad::Gone) => return Ok(()),
                Err(Bad::Status(status)) => {
                    let r = Response::text(status, "bad request\n");
                    return r.write(reader.get_mut(), false, true);
                }
            };
            let close = request.close || served == KEEP_ALIVE_MAX;
            let response = self.answer(&request, ip);
            response.write(reader.get_mut(), request.method == "HEAD", close)?;
            if close {
                return Ok(());
            }
        }
        Ok(())
    }
}
