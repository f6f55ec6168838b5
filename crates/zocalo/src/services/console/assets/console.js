// The zocalo console: a client of /api/v1. It polls the overview every second and draws it;
// every value goes in through textContent or an attribute, never as HTML.
"use strict";

let me = null;
const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function size(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

function duration(s) {
  if (s === null || s === undefined) return "";
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
  return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
}

async function post(path) {
  const headers = {};
  if (me && me.csrf) headers["X-CSRF-Token"] = me.csrf;
  const r = await fetch(path, { method: "POST", headers, credentials: "same-origin" });
  let body = {};
  try { body = await r.json(); } catch (e) { /* a redirection */ }
  const msg = document.getElementById("message");
  msg.textContent = body.message || body.error || (r.ok ? "done" : r.status + " " + r.statusText);
  msg.className = r.ok ? "" : "error";
  refresh();
  return r;
}

// The server model at work: its loops, its threads, workers or processes (busy ones filled),
// the jobs waiting for a worker, and the descriptors in use against the limit.
function modelPicture(n) {
  const m = n.model || {};
  const kind = (m.model || "").split(":")[0];
  const w = 340, pic = svg("svg", { width: w, height: 150, class: "model", role: "img" });
  pic.append(svg("title", {}, "model " + m.model));
  let y = 14;
  const row = (label) => { pic.append(svg("text", { x: 0, y }, label)); y += 6; };
  const boxes = (count, busy, shape, cap) => {
    const shown = Math.min(count, cap);
    for (let i = 0; i < shown; i++) {
      const x = 4 + (i % 30) * 11, yy = y + Math.floor(i / 30) * 11;
      const fill = i < busy ? "#3b73c4" : "#c9d6ea";
      pic.append(shape === "circle"
        ? svg("circle", { cx: x + 4, cy: yy + 4, r: 4.5, fill, class: "unit" })
        : svg("rect", { x, y: yy, width: 9, height: 9, fill, class: "unit" }));
    }
    if (count > cap) pic.append(svg("text", { x: 4 + 30 * 11 - 30, y: y + 28 }, "+" + (count - cap)));
    y += 11 * Math.ceil(Math.max(1, shown) / 30) + 12;
  };
  if (["select", "poll", "epoll"].includes(kind)) {
    row(m.loops + " event loop" + (m.loops > 1 ? "s" : "") + " (" + kind + "), " + n.sessions + " sessions on them");
    boxes(m.loops, m.loops, "circle", 30);
    row(m.workers + " workers, " + m.busy + " busy");
    boxes(m.workers, m.busy, "rect", 60);
  } else if (kind === "pool") {
    row(m.workers + " pool workers, " + m.busy + " serving a session");
    boxes(m.workers, m.busy, "rect", 60);
  } else if (kind === "thread") {
    row("a thread per session: " + n.sessions + " session threads (" + m.threads + " in all)");
    boxes(n.sessions, n.sessions, "rect", 60);
  } else if (kind === "process") {
    row("a process per session: " + n.sessions + " children");
    boxes(n.sessions, n.sessions, "rect", 60);
  } else {
    row("iterative: one session at a time, the next ones wait in the backlog");
    boxes(1, n.sessions > 0 ? 1 : 0, "rect", 1);
  }
  const bar = (label, value, max, color) => {
    pic.append(svg("text", { x: 0, y }, label)); y += 4;
    pic.append(svg("rect", { x: 0, y, width: w - 10, height: 8, fill: "#e6e8ec" }));
    const width = max > 0 ? Math.min(1, value / max) * (w - 10) : 0;
    pic.append(svg("rect", { x: 0, y, width, height: 8, fill: color, class: "bar" }));
    y += 20;
  };
  bar("queue: " + m.queued + " jobs waiting", m.queued, Math.max(10, m.queued), "#d08a1a");
  bar("descriptors: " + m.fds + " of " + m.fd_limit, m.fds, m.fd_limit, "#4a9a5a");
  pic.setAttribute("height", y);
  return pic;
}

function drawNodes(nodes) {
  const box = document.getElementById("nodes");
  box.replaceChildren();
  for (const n of nodes) {
    const uptime = Math.floor((Date.now() - (n.model.started_ms || Date.now())) / 1000);
    const card = el("div", { class: "node" + (n.draining ? " draining" : ""), "data-node": n.node },
      el("h3", {}, n.node + " ", el("span", { class: "badge" + (n.draining ? " drain" : "") },
        n.draining ? "draining" : "serving")),
      el("dl", {},
        el("dt", {}, "model"), el("dd", { class: "model-name" }, n.model.model),
        el("dt", {}, "uptime"), el("dd", {}, duration(uptime)),
        el("dt", {}, "sessions"), el("dd", { class: "session-total" }, n.sessions),
        el("dt", {}, "transfers"), el("dd", {}, size(n.bytes_per_s) + "/s")),
      modelPicture(n));
    if (me.role === "admin") {
      const act = (what) => el("button", { type: "button", class: "act-" + what, "data-node": n.node }, what);
      const actions = el("div", {}, n.draining ? act("undrain") : act("drain"), " ", act("reload"));
      actions.addEventListener("click", (e) => {
        const b = e.target.closest("button");
        if (b) post("/api/v1/nodes/" + encodeURIComponent(b.dataset.node) + "/" + b.textContent);
      });
      card.append(actions);
    }
    box.append(card);
  }
}

function drawSessions(sessions) {
  document.getElementById("session-count").textContent = "(" + sessions.length + ")";
  const body = document.querySelector("#sessions tbody");
  body.replaceChildren();
  for (const s of sessions) {
    const progress = s.transfer
      ? (s.total !== null ? el("progress", { max: s.total, value: s.bytes, class: "progress" }) : el("progress", { class: "progress" }))
      : "";
    const shown = s.transfer ? size(s.bytes) + (s.total !== null ? " of " + size(s.total) : "") : "";
    const row = el("tr", { "data-key": s.key },
      el("td", {}, s.node), el("td", {}, s.id), el("td", { class: "user" }, s.user || "-"),
      el("td", {}, s.peer), el("td", {}, s.command),
      el("td", { class: "transfer" }, s.transfer),
      el("td", {}, progress, " ", el("span", { class: "bytes", "data-bytes": s.bytes }, shown)),
      el("td", {}, s.bytes_per_s !== null ? size(s.bytes_per_s) + "/s" : ""),
      el("td", {}, duration(s.eta_s)), el("td", {}, duration(s.idle_s)));
    const cell = el("td", {});
    if (me.role === "admin") {
      const kick = el("button", { type: "button", class: "danger kick" }, "kick");
      kick.addEventListener("click", () => post("/api/v1/sessions/" + encodeURIComponent(s.key) + "/kick"));
      cell.append(kick);
    }
    row.append(cell);
    body.append(row);
  }
}

function drawEvents(events) {
  const body = document.querySelector("#events tbody");
  body.replaceChildren();
  for (const e of events) {
    body.append(el("tr", { class: "event-" + e.kind },
      el("td", {}, new Date(e.at_ms).toLocaleTimeString()), el("td", {}, e.node), el("td", {}, e.kind),
      el("td", {}, e.user), el("td", {}, e.peer), el("td", {}, e.detail)));
  }
}

async function refresh() {
  let r;
  try {
    r = await fetch("/api/v1/overview", { credentials: "same-origin" });
  } catch (e) {
    document.getElementById("message").textContent = "server unreachable";
    return;
  }
  if (r.status === 401) { location.reload(); return; }
  const o = await r.json();
  me = o.me;
  document.getElementById("me").textContent = me.name + " (" + me.role + ")" +
    (o.shared_state === false ? " - shared state unreachable: this node only" : "");
  drawNodes(o.nodes);
  drawSessions(o.sessions);
  drawEvents(o.events);
  document.body.dataset.updated = String(Date.now());
}

document.getElementById("sign-out").addEventListener("click", async () => {
  await post("/logout");
  location.href = "/";
});
refresh();
setInterval(refresh, 1000);
