"""Two zocalo nodes behind HAProxy, sharing state through Redis and files through S3, on
loopback, for the cluster tests (tests/test_cluster.py).

    client 127.0.0.5X ─> HAProxy 127.0.0.10:PORT ─(PROXY v2 from 127.0.0.1)─> n1 127.0.0.11:PORT
                                                                        └─> n2 127.0.0.12:PORT
    passive data: 127.0.0.10:<n1's range> ─> n1, 127.0.0.10:<n2's range> ─> n2 (same port)

* Redis (`redis-server`, no persistence) holds what the nodes share: lock-outs, the session
  counts of `--max-connections` / `--max-per-ip`, and the session table `zocalo ctl status`
  shows for every node.
* Each node (`zocalo serve --model epoll`) listens on its own address, on the same port, trusts
  PROXY headers from 127.0.0.1 (HAProxy's `source`), announces 127.0.0.10 in PASV replies
  (`--masquerade`) from a passive range of its own, answers HAProxy's agent checks on an agent
  port, and opens an admin socket. Both serve one key prefix of the SeaweedFS bucket of the
  `seaweed` fixture, through the same S3 gateway, so that both see the same objects at once.
* HAProxy (`mode tcp`) balances control connections round robin over the two nodes
  (`send-proxy-v2`, health checks with a PROXY v2 LOCAL header, agent checks), and forwards
  each node's passive range to that node.

Nothing here sleeps to wait for readiness: every wait polls with a bounded deadline. Every
process is stopped by its PID (SIGTERM, then SIGKILL after a grace period) and dies with the
Python process that started it (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import csv
import ftplib
import io
import os
import random
import re
import select
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import helpers
from helpers import (PASSWORD, TIMEOUT, USER, ReusingFTP_TLS, close_client, die_with_parent,
                     poll_until)

BALANCER = "127.0.0.10"
NODE_HOSTS = ("127.0.0.11", "127.0.0.12")
NODE_NAMES = ("n1", "n2")
PROXY_FROM = "127.0.0.1"  # HAProxy's source address, the one the nodes trust
CLIENT_IP = "127.0.0.50"  # the real client's address, as the nodes must see it
PASSIVE_COUNT = 20  # passive ports per node

START_DEADLINE = 20.0  # a node's `listening` line, Redis's PONG, HAProxy's stats socket
READY_DEADLINE = 20.0  # until HAProxy sees both nodes up (checks every 500 ms)
STOP_GRACE = 10.0  # SIGTERM to exit, before SIGKILL
LOG_DEADLINE = 10.0  # a session's lines to reach a node's log



def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _hold(host: str, port: int) -> socket.socket | None:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((host, port))
        return s
    except OSError:
        s.close()
        return None


def free_blocks(wants: list[tuple[int, tuple[str, ...]]]) -> list[int]:
    """For each (count, hosts) of `wants`, the first port of `count` consecutive ports free on
    every one of `hosts`; no two blocks overlap. Ports are drawn below the kernel's ephemeral
    range, where no outgoing connection and no port-0 listener takes one between this check
    and the bind of the process that gets it. Every port is held until all are chosen."""
    low = _ephemeral_low()
    rng = random.Random(os.urandom(8))
    held: list[socket.socket] = []
    taken: set[int] = set()
    firsts: list[int] = []
    try:
        for count, hosts in wants:
            for _ in range(500):
                first = rng.randrange(10000, max(low - count, 10001))
                ports = range(first, first + count)
                if taken.intersection(ports):
                    continue
                got = []
                for port in ports:
                    for host in hosts:
                        s = _hold(host, port)
                        if s is None:
                            break
                        got.append(s)
                    else:
                        continue
                    break
                else:
                    held += got
                    taken.update(ports)
                    firsts.append(first)
                    break
                for s in got:
                    s.close()
            else:
                raise AssertionError(f"no {count} free consecutive ports on {hosts}")
        return firsts
    finally:
        for s in held:
            s.close()


def _read_from(path: Path, offset: int = 0) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _stop(procs: list[subprocess.Popen]) -> list[subprocess.Popen]:
    """SIGTERM each running process by its PID, SIGKILL those still there after STOP_GRACE.
    Returns the processes that needed SIGKILL."""
    running = [p for p in procs if p is not None and p.poll() is None]
    for p in running:
        p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    hung = []
    for p in running:
        try:
            p.wait(max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            hung.append(p)
            p.kill()
            p.wait(STOP_GRACE)
    return hung


# --------------------------------------------------------------------------
# PROXY protocol headers, built by hand

PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_v2(src: tuple[str, int] | None, dst: tuple[str, int] | None, *, local: bool = False,
             length: int | None = None, tail: bytes | None = None) -> bytes:
    """A PROXY protocol v2 header: PROXY (0x21) TCP4 (0x11) from src to dst, or LOCAL (0x20)
    with no address (family 0x00) when `local` and no src. `length` overrides the length
    field; `tail` the bytes after the 16-byte fixed part."""
    if src is not None:
        fam = 0x11
        body = (socket.inet_aton(src[0]) + socket.inet_aton(dst[0])
                + src[1].to_bytes(2, "big") + dst[1].to_bytes(2, "big"))
    else:
        fam, body = 0x00, b""
    if tail is not None:
        body = tail
    n = len(body) if length is None else length
    return PROXY_V2_SIGNATURE + bytes([0x20 if local else 0x21, fam]) + n.to_bytes(2, "big") + body


def proxy_v1(src: tuple[str, int], dst: tuple[str, int]) -> bytes:
    return f"PROXY TCP4 {src[0]} {dst[0]} {src[1]} {dst[1]}\r\n".encode()


# --------------------------------------------------------------------------
# Clients with a source address of their own


class SourceCtl(helpers.Ctl):
    """helpers.Ctl from a chosen source address (the real client's, e.g. 127.0.0.50)."""

    def __init__(self, host: str, port: int, source: str, timeout: float = TIMEOUT):
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0))
        self.buf = b""
        self.source = source
        self.local_port = self.sock.getsockname()[1]



# --------------------------------------------------------------------------
# The nodes


class Node:
    def __init__(self, index: int, cluster: "Cluster"):
        self.index = index
        self.name = NODE_NAMES[index]
        self.host = NODE_HOSTS[index]
        self.cluster = cluster
        self.log_path = cluster.root / f"{self.name}.log"
        self.socket = cluster.root / f"{self.name}.sock"
        self.passive = range(cluster.passive_first[index],
                             cluster.passive_first[index] + PASSIVE_COUNT)
        self.proc: subprocess.Popen | None = None
        self.stdout: list[str] = []

    def argv(self) -> list[str]:
        c = self.cluster
        argv = [str(helpers.zocalo_bin()), "serve",
                "--listen", f"{self.host}:{c.port}", "--model", "epoll",
                "--proxy-protocol-from", f"{PROXY_FROM}/32",
                "--passive-ports", f"{self.passive.start}-{self.passive.stop - 1}",
                "--masquerade", BALANCER,
                "--shared-state", f"redis://127.0.0.1:{c.redis_port}/",
                "--node-name", self.name,
                "--agent", f"{self.host}:{c.agent_port}",
                "--admin-socket", str(self.socket),
                "--write", "--user", f"{USER}:{PASSWORD}",
                "--login-fail-delay-ms", "0", "--shutdown-grace", str(c.grace),
                "--storage", c.storage, "--s3-insecure-http", "--s3-timeout", "10"]
        if c.certs is not None:
            argv += ["--tls-cert", str(c.certs["cert"]), "--tls-key", str(c.certs["key"])]
        if c.console_tokens is not None:
            argv += ["--console", f"{self.host}:{c.console_port}",
                     "--config", str(c.root / "console.toml")]
        return argv + [str(x) for x in c.extra]

    def start(self) -> None:
        c = self.cluster
        argv = self.argv()
        env = {**os.environ, "AWS_ACCESS_KEY_ID": c.seaweed.access_key,
               "AWS_SECRET_ACCESS_KEY": c.seaweed.secret_key}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=log, cwd=c.root, env=env,
                                         preexec_fn=die_with_parent)
        want = f"listening ftp://{self.host}:{c.port}"
        fd = self.proc.stdout.fileno()
        buf = b""
        deadline = time.monotonic() + START_DEADLINE
        for _ in range(10000):
            lines = buf.decode("utf-8", "replace").splitlines()
            if any(line.startswith(want) for line in lines):
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.name} did not print {want!r} within "
                                     f"{START_DEADLINE}s; stdout {lines!r}\n{self.log_tail()}")
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                self.proc.wait(STOP_GRACE)
                raise AssertionError(f"{self.name} exited with {self.proc.returncode} before "
                                     f"listening: {' '.join(argv)}\n{self.log_tail()}")
            buf += chunk
        self.stdout += buf.decode("utf-8", "replace").splitlines(keepends=True)
        # Keep reading stdout so the node never blocks on a full pipe.
        threading.Thread(target=helpers.drain_lines,
                         args=(self.proc.stdout, self.stdout, 50), daemon=True).start()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, by PID."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(STOP_GRACE)

    def log(self, since: int = 0) -> str:
        return _read_from(self.log_path, since)

    def log_tail(self, n: int = 60) -> str:
        return f"--- {self.name} log {self.log_path}:\n" + "\n".join(self.log().splitlines()[-n:])

    def agent_answer(self, timeout: float = 5.0) -> bytes:
        """What the agent port writes to a fresh connection (up to its close)."""
        with socket.create_connection((self.host, self.cluster.agent_port), timeout=timeout,
                                      source_address=(PROXY_FROM, 0)) as s:
            return helpers.read_all(s, limit=4096)


# --------------------------------------------------------------------------
# The cluster


class Cluster:
    """Redis, two zocalo nodes and HAProxy. `extra`: more `zocalo serve` flags for both nodes;
    `certs`: the `certs` fixture, for FTPS; `grace`: the nodes' --shutdown-grace."""

    def __init__(self, seaweed, extra=(), certs: dict | None = None, grace: int = 2,
                 console: bool = False):
        self.seaweed = seaweed
        self.extra = list(extra)
        self.certs = certs
        self.grace = grace
        self.root = Path(tempfile.mkdtemp(prefix="zocalo-cluster-"))  # short: unix sockets
        self.prefix = f"c-{uuid.uuid4().hex[:12]}"
        self.storage = f"s3://{seaweed.endpoint(0)}/{seaweed.bucket}/{self.prefix}"
        all_hosts = (BALANCER, *NODE_HOSTS, PROXY_FROM)
        (self.port, self.agent_port, self.redis_port, self.console_port, p1, p2) = free_blocks([
            (1, all_hosts), (1, all_hosts), (1, all_hosts), (1, all_hosts),
            (PASSIVE_COUNT, all_hosts), (PASSIVE_COUNT, all_hosts)])
        # The web console on every node (its own address, the same port), with the accounts
        # of tests/console_browser.py; the API tokens made for it.
        self.console_tokens: dict | None = None
        if console:
            import console_browser
            self.console_tokens = console_browser.console_config(self.root / "console.toml")
        self.passive_first = (p1, p2)
        self.nodes = [Node(i, self) for i in range(2)]
        self.redis: subprocess.Popen | None = None
        self.haproxy: subprocess.Popen | None = None
        self.haproxy_cfg = self.root / "haproxy.cfg"
        self.haproxy_sock = self.root / "haproxy.sock"
        self.haproxy_log = self.root / "haproxy.log"
        self.redis_log = self.root / "redis.log"
        self.clients: list = []
        self.started_in: float | None = None

    # -- addresses

    @property
    def balancer(self) -> tuple[str, int]:
        return BALANCER, self.port

    def node_addr(self, i: int) -> tuple[str, int]:
        return NODE_HOSTS[i], self.port

    def key(self, path: str) -> str:
        """The bucket key of a file the nodes serve at `path`."""
        return f"{self.prefix}/{path.lstrip('/')}"

    # -- life cycle

    def start(self) -> "Cluster":
        began = time.monotonic()
        try:
            self._start_redis()
            for node in self.nodes:
                node.start()
            for node in self.nodes:
                self._wait_node_ready(node)
            self._start_haproxy()
            self.wait_servers(self.all_up, READY_DEADLINE,
                              "HAProxy to see both nodes up (checks and agents)")
        except BaseException:
            self.close()
            raise
        self.started_in = time.monotonic() - began
        return self

    def _start_redis(self) -> None:
        self.redis = helpers.start_redis(self.redis_port, self.root, self.redis_log,
                                         START_DEADLINE)

    def kill_redis(self) -> None:
        """SIGKILL Redis, by PID (an outage; `start_redis()` brings an empty one back on the
        same port)."""
        assert self.redis is not None
        self.redis.kill()
        self.redis.wait(STOP_GRACE)

    def start_redis(self) -> None:
        assert self.redis is None or self.redis.poll() is not None, "Redis is running"
        self._start_redis()

    def redis_cmd(self, *words: bytes) -> bytes:
        """One command to Redis (RESP), its raw first reply chunk; b"" if it does not answer."""
        return helpers.redis_cmd(self.redis_port, *words)

    def _wait_node_ready(self, node: Node) -> None:
        """Until the node's agent port answers and its admin socket serves `status`."""

        def agent():
            if not node.alive():
                raise AssertionError(f"{node.name} exited with {node.proc.returncode}\n"
                                     f"{node.log_tail()}")
            try:
                return node.agent_answer(2.0).startswith(b"up")
            except OSError:
                return False

        assert poll_until(agent, START_DEADLINE, 0.05), (
            f"{node.name}'s agent port {node.host}:{self.agent_port} never answered `up`\n"
            f"{node.log_tail()}")
        assert poll_until(node.socket.exists, START_DEADLINE, 0.05), f"no {node.socket}"
        out = self.ctl(node.index, "status")
        assert out.returncode == 0, f"ctl status on {node.name}: {out.stderr}{out.stdout}"

    def haproxy_config(self) -> str:
        n1, n2 = self.nodes
        lines = [
            "global",
            f"    stats socket {self.haproxy_sock} level admin",
            "    maxconn 4000",
            "    log stderr format short local0 info",
            "",
            "defaults",
            "    mode tcp",
            "    log global",
            "    option tcplog",
            "    timeout connect 3s",
            "    timeout client 60s",
            "    timeout server 60s",
            "    timeout check 2s",
            "",
            "frontend ftp",
            f"    bind {BALANCER}:{self.port}",
            "    default_backend ftp",
            "",
            "backend ftp",
            "    balance roundrobin",
            "    option redispatch",
            "    retries 2",
            f"    source {PROXY_FROM}",
        ]
        for node in (n1, n2):
            lines.append(f"    server {node.name} {node.host}:{self.port} send-proxy-v2 check "
                         f"check-send-proxy inter 500ms agent-check agent-port "
                         f"{self.agent_port} agent-inter 500ms")
        for node in (n1, n2):
            lines += [
                "",
                f"frontend pasv_{node.name}",
                f"    bind {BALANCER}:{node.passive.start}-{node.passive.stop - 1}",
                f"    default_backend pasv_{node.name}",
                "",
                f"backend pasv_{node.name}",
                f"    source {PROXY_FROM}",
                f"    server {node.name} {node.host} send-proxy-v2",
            ]
        return "\n".join(lines) + "\n"

    def check_haproxy_config(self) -> subprocess.CompletedProcess:
        self.haproxy_cfg.write_text(self.haproxy_config())
        return subprocess.run([helpers.need("haproxy"), "-c", "-f", str(self.haproxy_cfg)],
                              capture_output=True, text=True, timeout=30)

    def _start_haproxy(self) -> None:
        checked = self.check_haproxy_config()
        assert checked.returncode == 0, f"haproxy -c: {checked.stdout}{checked.stderr}"
        with open(self.haproxy_log, "ab") as log:
            self.haproxy = subprocess.Popen(
                [helpers.need("haproxy"), "-f", str(self.haproxy_cfg), "-db"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.root,
                preexec_fn=die_with_parent)

        def answers():
            if self.haproxy.poll() is not None:
                raise AssertionError(f"haproxy exited with {self.haproxy.returncode}:\n"
                                     f"{_read_from(self.haproxy_log)[-3000:]}")
            return self.haproxy_cmd("show info").startswith("Name:")

        assert poll_until(answers, START_DEADLINE, 0.05), "HAProxy's stats socket never answered"

    def haproxy_cmd(self, command: str) -> str:
        """One command on HAProxy's stats socket; its answer ("" if it does not answer)."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(5)
                s.connect(str(self.haproxy_sock))
                s.sendall(command.encode() + b"\n")
                return helpers.read_all(s, limit=1 << 22).decode("utf-8", "replace")
        except OSError:
            return ""

    def servers(self, backend: str = "ftp") -> dict[str, dict]:
        """`show stat` rows of `backend`'s servers, by server name (status: UP, DOWN, DRAIN,
        MAINT...; check_status, agent_status: L4OK, L7OK, L4CON...)."""
        text = self.haproxy_cmd("show stat")
        if not text.startswith("# "):
            return {}
        rows = csv.DictReader(io.StringIO(text[2:]))
        return {r["svname"]: r for r in rows
                if r.get("pxname") == backend and r.get("svname") not in ("FRONTEND", "BACKEND")}

    @staticmethod
    def all_up(servers: dict) -> bool:
        """Both nodes UP, their health checks and agents answered (`show stat` marks a check
        running with "* ")."""
        return all(servers.get(n, {}).get("status") == "UP"
                   and "L4OK" in servers[n].get("check_status", "")
                   and "L7OK" in servers[n].get("agent_status", "") for n in NODE_NAMES)

    def wait_servers(self, predicate, timeout: float, what: str) -> dict:
        last: list = [{}]

        def once():
            if self.haproxy is not None and self.haproxy.poll() is not None:
                raise AssertionError(f"haproxy exited with {self.haproxy.returncode}:\n"
                                     f"{_read_from(self.haproxy_log)[-3000:]}")
            last[0] = self.servers()
            return predicate(last[0])

        if not poll_until(once, timeout, 0.1):
            brief = {n: {k: r.get(k) for k in ("status", "check_status", "agent_status", "weight")}
                     for n, r in last[0].items()}
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; HAProxy "
                                 f"says {brief}\n{self.report()}")
        return last[0]

    def close(self) -> list[str]:
        """Close the clients, stop every process by PID, remove the directory. Returns the
        problems: a live node (not killed by a test) that needed SIGKILL after SIGTERM."""
        self.close_clients()
        problems = []
        procs = [self.haproxy] + [n.proc for n in self.nodes]
        hung = _stop([p for p in procs if p is not None])
        for node in self.nodes:
            if node.proc in hung:
                problems.append(f"{node.name} did not exit within {STOP_GRACE}s of SIGTERM\n"
                                f"{node.log_tail()}")
        _stop([self.redis] if self.redis is not None else [])
        shutil.rmtree(self.root, ignore_errors=True)
        return problems

    def report(self) -> str:
        parts = [n.log_tail() for n in self.nodes]
        parts.append(f"--- haproxy:\n{_read_from(self.haproxy_log)[-3000:]}")
        return "\n".join(parts)

    # -- nodes

    def kill_node(self, i: int) -> None:
        self.nodes[i].kill()

    def log(self, i: int, since: int = 0) -> str:
        return self.nodes[i].log(since)

    def marks(self) -> list[int]:
        """Where each node's log ends now (for `node_of(..., since=marks)`)."""
        return [_size(n.log_path) for n in self.nodes]

    def ctl(self, i: int, *args: str, timeout: float = 20.0) -> subprocess.CompletedProcess:
        """`zocalo ctl --socket <node i's admin socket> ARGS`."""
        return subprocess.run([str(helpers.zocalo_bin()), "ctl", "--socket",
                               str(self.nodes[i].socket), *map(str, args)],
                              capture_output=True, text=True, timeout=timeout)

    def sessions(self, i: int) -> list[dict]:
        """`ctl status` on node i, its `session key=value ...` lines as dicts."""
        out = self.ctl(i, "status")
        assert out.returncode == 0, f"ctl status on {NODE_NAMES[i]}: {out.stderr}{out.stdout}"
        rows = []
        for line in out.stdout.splitlines():
            if line.startswith("session "):
                rows.append(dict(re.findall(r'(\w+)=("[^"]*"|\S+)', line)) | {"line": line})
        return rows

    def node_of(self, port: int, ip: str = CLIENT_IP, since: list[int] | None = None,
                timeout: float = LOG_DEADLINE) -> int:
        """The node (0 for n1, 1 for n2) whose log names the client ip:port as a session's
        peer (`peer=IP:PORT` in the session span), after `since` (marks()); polled."""
        pattern = re.compile(re.escape(f"peer={ip}:{port}") + r"[}\s,]")
        since = since or [0, 0]
        found: list[int] = []

        def look():
            found[:] = [i for i in range(2) if pattern.search(self.log(i, since[i]))]
            return found

        assert poll_until(look, timeout, 0.05), (
            f"no node logged peer={ip}:{port} within {timeout}s\n{self.report()}")
        assert len(found) == 1, f"both nodes logged peer={ip}:{port}\n{self.report()}"
        return found[0]

    def served_by(self, client) -> int:
        """The node serving a client of `ftp()` or `raw()`."""
        return self.node_of(client.zport, client.zsource, client.zmarks)

    # -- clients through the balancer (or straight to a node)

    def ftp(self, source: str = CLIENT_IP, login: bool = True, tls: bool = False,
            addr: tuple[str, int] | None = None, timeout: float = TIMEOUT) -> ftplib.FTP:
        """An ftplib client from `source`, connected through the balancer (or to `addr`)."""
        marks = self.marks()
        if tls:
            ctx = ssl.create_default_context(cafile=str(self.certs["cert"]))
            ctx.check_hostname = False  # the certificate names 127.0.0.1, not the balancer
            ftp = ReusingFTP_TLS(context=ctx, timeout=timeout, encoding="utf-8",
                                 source_address=(source, 0))
        else:
            ftp = ftplib.FTP(timeout=timeout, encoding="utf-8", source_address=(source, 0))
        self.clients.append(ftp)
        host, port = addr or self.balancer
        ftp.connect(host, port, source_address=(source, 0))
        ftp.zport, ftp.zsource, ftp.zmarks = ftp.sock.getsockname()[1], source, marks
        if login:
            ftp.login(USER, PASSWORD)
        return ftp

    def raw(self, source: str = CLIENT_IP, addr: tuple[str, int] | None = None,
            greet: bool = True, timeout: float = TIMEOUT) -> SourceCtl:
        """A raw control connection from `source`, through the balancer (or to `addr`)."""
        marks = self.marks()
        host, port = addr or self.balancer
        c = SourceCtl(host, port, source, timeout=timeout)
        c.zport, c.zsource, c.zmarks = c.local_port, source, marks
        self.clients.append(c)
        if greet:
            code, text = c.reply()
            assert code == 220, f"greeting: {text}"
        return c

    def close_clients(self) -> None:
        for c in self.clients:
            close_client(c)
        self.clients.clear()
