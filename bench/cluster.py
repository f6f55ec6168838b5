#!/usr/bin/env python3
"""What a balancer and shared state cost: logins/s, sessions/s at 100 clients and the server's
CPU per session, side by side in one run, for

  direct        one node, no PROXY protocol, no shared state (the baseline)
  direct+redis  the same node with --shared-state (each admission is a Redis script)
  haproxy-1     through HAProxy (send-proxy-v2) to that node
  haproxy-2     through HAProxy to two nodes sharing Redis

and the time a lock-out earned on one node takes to hold on the other. Everything runs on
loopback (HAProxy on 127.0.0.10, nodes on 127.0.0.11 and .12, Redis on 127.0.0.1); every process
is stopped by its PID at the end. Each configuration runs ROUNDS times, alternating, and the table
shows each round's figures.

    python3 bench/cluster.py [--rounds 2] [--sessions 2000]

Needs haproxy and redis-server (scripts/test.sh installs them) and target/release/zocalo.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ZOCALO = os.environ.get("ZOCALO_BIN", str(ROOT / "target/release/zocalo"))
TICK = os.sysconf("SC_CLK_TCK")
USER, PASSWORD = "bench", "bench-pass"
DEADLINE = 20.0


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(host: str, port: int, proc: subprocess.Popen) -> None:
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {host}:{port} after {DEADLINE}s")


def cpu(pid: int) -> float:
    """User and system CPU seconds of `pid` and its reaped children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / TICK


class Procs:
    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def start(self, argv, log: Path) -> subprocess.Popen:
        out = open(log, "ab")
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL)
        out.close()
        self.procs.append(p)
        return p

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        self.procs.clear()


def haproxy_cfg(port: int, nodes: list[tuple[str, int]], sock: Path) -> str:
    servers = "\n".join(
        f"    server n{i + 1} {host}:{p} send-proxy-v2" for i, (host, p) in enumerate(nodes))
    return f"""global
    maxconn 4000
    stats socket {sock} level admin
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend ftp
    bind 127.0.0.10:{port}
    default_backend nodes
backend nodes
    balance roundrobin
    source 127.0.0.2
{servers}
"""


def node(procs: Procs, tmp: Path, name: str, host: str, port: int, redis: str | None,
         proxy: bool) -> subprocess.Popen:
    argv = [ZOCALO, "serve", "--root", str(tmp / "files"), "--listen", f"{host}:{port}",
            "--model", "epoll", "--user", f"{USER}:{PASSWORD}", "--no-anonymous",
            "--login-fail-delay-ms", "0", "--node-name", name, "--max-per-ip", "100000",
            "--max-login-failures", "5"]
    if redis:
        argv += ["--shared-state", redis]
    if proxy:
        argv += ["--proxy-protocol-from", "127.0.0.2/32"]
    p = procs.start(argv, tmp / f"{name}.log")
    wait_port(host, port, p)
    return p


def bench(url: str, sessions: int) -> dict[str, float]:
    out = subprocess.run(
        [ZOCALO, "bench", url, "--scenario", "logins", "--scenario", "sessions",
         "--clients", "100", "--concurrency", "100", "--sessions", str(sessions),
         "--small-size", "1KiB", "--timeout", "120"],
        capture_output=True, text=True, timeout=600, check=True).stdout
    got = {}
    for key, pattern in (("logins/s", r"logins\s+logins\s+(\d+) logins/s"),
                         ("sessions/s", r"sessions-c100\s+sessions\s+(\d+) sessions/s"),
                         ("failures", r"sessions-c100\s+failures\s+(\d+)")):
        m = re.search(pattern, out)
        if not m:
            raise SystemExit(f"no {key} in the bench output:\n{out}")
        got[key] = float(m[1])
    return got


def run_config(tmp: Path, config: str, sessions: int) -> dict[str, float]:
    procs = Procs()
    try:
        redis_port = free_port("127.0.0.1")
        redis = None
        if config != "direct":
            r = procs.start(["redis-server", "--bind", "127.0.0.1", "--port", str(redis_port),
                             "--save", "", "--appendonly", "no"], tmp / "redis.log")
            wait_port("127.0.0.1", redis_port, r)
            redis = f"redis://127.0.0.1:{redis_port}/"
        port = free_port("127.0.0.11")
        proxied = config.startswith("haproxy")
        nodes = [node(procs, tmp, "n1", "127.0.0.11", port, redis, proxied)]
        if config == "haproxy-2":
            nodes.append(node(procs, tmp, "n2", "127.0.0.12", port, redis, proxied))
        watched = list(nodes)
        if proxied:
            front = free_port("127.0.0.10")
            cfg = tmp / "haproxy.cfg"
            hosts = [("127.0.0.11", port)] + ([("127.0.0.12", port)] if len(nodes) > 1 else [])
            cfg.write_text(haproxy_cfg(front, hosts, tmp / "haproxy.sock"))
            h = procs.start(["haproxy", "-f", str(cfg), "-db"], tmp / "haproxy.log")
            wait_port("127.0.0.10", front, h)
            url = f"ftp://{USER}:{PASSWORD}@127.0.0.10:{front}/"
            watched.append(h)
        else:
            url = f"ftp://{USER}:{PASSWORD}@127.0.0.11:{port}/"
        if redis:
            watched.append(procs.procs[0])
        before = [cpu(p.pid) for p in watched]
        got = bench(url, sessions)
        after = [cpu(p.pid) for p in watched]
        total = 100 + sessions  # the logins scenario's clients and the sessions scenario's
        used = [a - b for a, b in zip(after, before)]
        got["node µs/session"] = sum(used[:len(nodes)]) / total * 1e6
        got["haproxy µs/session"] = used[len(nodes)] / total * 1e6 if proxied else 0.0
        got["redis µs/session"] = used[-1] / total * 1e6 if redis else 0.0
        return got
    finally:
        procs.stop()


def lockout_propagation(tmp: Path) -> float:
    """Milliseconds from the failed login that locks an address out on n1 to the first login
    with the right password that n2 refuses, both through their own PROXY headers."""
    procs = Procs()
    try:
        redis_port = free_port("127.0.0.1")
        r = procs.start(["redis-server", "--bind", "127.0.0.1", "--port", str(redis_port),
                         "--save", "", "--appendonly", "no"], tmp / "redis.log")
        wait_port("127.0.0.1", redis_port, r)
        redis = f"redis://127.0.0.1:{redis_port}/"
        port = free_port("127.0.0.11")
        node(procs, tmp, "n1", "127.0.0.11", port, redis, False)
        node(procs, tmp, "n2", "127.0.0.12", port, redis, False)

        def login(host: str, password: str) -> bytes:
            with socket.create_connection((host, port), source_address=("127.0.0.77", 0)) as s:
                f = s.makefile("rb")
                f.readline()
                s.sendall(f"USER {USER}\r\nPASS {password}\r\n".encode())
                f.readline()
                return f.readline()

        for _ in range(4):
            assert login("127.0.0.11", "wrong").startswith(b"530")
        locked_at = None
        login("127.0.0.11", "wrong")
        locked_at = time.perf_counter()
        for _ in range(1000):
            if login("127.0.0.12", PASSWORD).startswith(b"530"):
                return (time.perf_counter() - locked_at) * 1000
        raise SystemExit("n2 never refused the locked-out address")
    finally:
        procs.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--sessions", type=int, default=2000)
    args = ap.parse_args()
    configs = ["direct", "direct+redis", "haproxy-1", "haproxy-2"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="zocalo-cluster-bench-") as t:
        tmp = Path(t)
        (tmp / "files").mkdir()
        for rnd in range(args.rounds):
            for config in configs:
                got = run_config(tmp, config, args.sessions)
                rows.append((rnd + 1, config, got))
                print(f"round {rnd + 1} {config:13} " + "  ".join(
                    f"{k} {v:.0f}" for k, v in got.items()), flush=True)
        propagation = [lockout_propagation(tmp) for _ in range(3)]
    print()
    print("| round | configuration | logins/s | sessions/s (c=100) | node CPU µs/session "
          "| HAProxy CPU µs/session | Redis CPU µs/session |")
    print("|---|---|---|---|---|---|---|")
    for rnd, config, g in rows:
        print(f"| {rnd} | {config} | {g['logins/s']:.0f} | {g['sessions/s']:.0f} | "
              f"{g['node µs/session']:.0f} | {g['haproxy µs/session']:.0f} | "
              f"{g['redis µs/session']:.0f} |")
    print()
    print("lock-out propagation n1 -> n2 (ms): " + ", ".join(f"{p:.2f}" for p in propagation))
    sys.exit(0)


if __name__ == "__main__":
    main()
