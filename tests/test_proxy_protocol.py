"""PROXY protocol headers straight to the server, in every model (the HAProxy tests in
test_cluster.py run one model through a real balancer), and shared state in a real Redis:
what a node does when Redis goes away and comes back.

The server trusts 127.0.0.2 (`--proxy-protocol-from 127.0.0.2/32`); the tests play the balancer
from there, and untrusted clients from 127.0.0.1 (the suite's start-up probe) and 127.0.0.60.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import time

import pytest

import helpers
from helpers import PASSWORD, USER, Ctl, poll_until

TRUST = ["--proxy-protocol-from", "127.0.0.2/32", "--proxy-header-timeout", "2"]
BALANCER = "127.0.0.2"
CLIENT = "192.0.2.44"  # the address the headers claim


def v2(src: str, sport: int, dst: str = "127.0.0.10", dport: int = 21) -> bytes:
    return (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack(">H", 12)
            + socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack(">HH", sport, dport))


LOCAL_V2 = b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x20, 0x00, 0, 0])


def from_balancer(host: str, port: int) -> socket.socket:
    return socket.create_connection((host, port), timeout=10, source_address=(BALANCER, 0))


def proxied(server, header: bytes) -> Ctl:
    c = _wrap(from_balancer(server.host, server.port))
    c.sock.sendall(header)
    return c


def closed_without_greeting(c: Ctl, timeout: float = 10.0) -> bool:
    """True when the server closes the connection without writing a byte."""
    c.sock.settimeout(timeout)
    try:
        return c.sock.recv(100) == b""
    except ConnectionResetError:
        return True


@pytest.mark.concurrent
def test_a_header_gives_the_client_address_everywhere(start_server, model, tmp_path):
    admin = tmp_path / "admin.sock"
    xferlog = tmp_path / "xferlog"
    server = start_server(model, write=True,
                          extra=TRUST + ["--admin-socket", admin, "--xferlog", xferlog])
    (server.root / "hello.txt").write_bytes(b"hello through a balancer\n")
    c = proxied(server, v2(CLIENT, 40001) + b"USER " + USER.encode() + b"\r\n")
    code, text = c.reply()
    assert code == 220, text
    # The USER line came in the same segment as the header: it stayed in the socket.
    code, text = c.reply()
    assert code == 331, text
    assert c.cmd(f"PASS {PASSWORD}")[0] == 230
    code, text = c.cmd("EPSV")
    assert code == 229, text
    port = int(text.split("|||")[1].split("|")[0])
    # The passive data connection comes from the balancer too, with its own header.
    data = from_balancer(server.host, port)
    data.sendall(v2(CLIENT, 40002, dport=port))
    c.send("RETR hello.txt")
    assert c.reply()[0] in (125, 150)
    assert helpers.read_all(data) == b"hello through a balancer\n"
    data.close()
    assert c.reply()[0] == 226
    status = subprocess.run([str(helpers.zocalo_bin()), "ctl", "--socket", str(admin), "status"],
                            capture_output=True, text=True, timeout=10).stdout
    assert f"peer={CLIENT}:40001" in status, status
    assert c.cmd("QUIT")[0] == 221
    c.close()
    assert poll_until(lambda: f"peer={CLIENT}:40001" in server.log_path.read_text(), 10)
    assert poll_until(lambda: xferlog.exists() and CLIENT in xferlog.read_text(), 10), \
        "the xferlog names the client, not the balancer"


@pytest.mark.concurrent
def test_data_connection_must_come_from_the_same_client(start_server, model):
    server = start_server(model, extra=TRUST + ["--data-timeout", "3"])
    (server.root / "f").write_bytes(b"secret")
    c = proxied(server, v2(CLIENT, 40011))
    assert c.reply()[0] == 220
    c.login()
    code, text = c.cmd("EPSV")
    port = int(text.split("|||")[1].split("|")[0])
    thief = from_balancer(server.host, port)
    thief.sendall(v2("192.0.2.99", 40012, dport=port))
    c.send("RETR f")
    code, text = c.final_reply()
    assert code == 425, f"a data connection from another client was taken: {text}"
    assert closed_without_greeting(_wrap(thief), 10)
    assert "refused a data connection from another address" in server.log_path.read_text()


def _wrap(sock: socket.socket) -> Ctl:
    c = Ctl.__new__(Ctl)
    c.sock, c.buf = sock, b""
    return c


@pytest.mark.parametrize("model", ["thread", "epoll", "uring"])
def test_a_full_gate_says_so_once_a_second_not_once_a_connection(start_server, model):
    """4,096 headers pending fill the gate; the next connections are closed, and the log says
    so in a line a second with a count, not a line each (issue 26, item 15)."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 16384), hard))
    server = start_server(model, nofile=16384,
                          extra=[*TRUST[:2], "--proxy-header-timeout", "60",
                                 "--max-connections", "10000"])
    held = []
    try:
        held = [from_balancer(server.host, server.port) for _ in range(4096)]
        extra = [from_balancer(server.host, server.port) for _ in range(150)]
        closed = [c for c in extra if closed_without_greeting(_wrap(c), 10)]
        assert len(closed) >= 100, f"only {len(closed)} of 150 were closed at the full gate"
        log = server.log_path.read_text()
        lines = [l for l in log.splitlines() if "too many PROXY headers pending" in l]
        assert 1 <= len(lines) <= 5, f"{len(lines)} lines for {len(closed)} closed connections"
        for c in extra:
            c.close()
    finally:
        for c in held:
            c.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    # The gate empties with its clients, and a good header is served again.
    good = poll_until(lambda: _served(server), 20)
    assert good, "a proxied client was not served after the gate emptied"


def _served(server) -> bool:
    c = proxied(server, v2(CLIENT, 40077))
    try:
        return c.reply()[0] == 220
    except OSError:
        return False
    finally:
        c.sock.close()


BAD_HEADERS = {
    "garbage": b"GET / HTTP/1.0\r\n\r\n",
    "v1 bad address": b"PROXY TCP4 999.1.1.1 127.0.0.1 1000 21\r\n",
    "v2 wrong length": v2(CLIENT, 1)[:14] + struct.pack(">H", 4) + b"\x01\x02\x03\x04",
    "v2 oversized": v2(CLIENT, 1)[:14] + struct.pack(">H", 65535),
    "truncated v2": v2(CLIENT, 1)[:20],
}


@pytest.mark.concurrent
@pytest.mark.parametrize("bad", sorted(BAD_HEADERS))
def test_bad_headers_close_the_connection_and_harm_nobody(start_server, model, bad):
    server = start_server(model, extra=TRUST)
    good = proxied(server, v2(CLIENT, 40021))
    assert good.reply()[0] == 220
    good.login()
    c = proxied(server, BAD_HEADERS[bad])
    if bad == "truncated v2":
        c.sock.shutdown(socket.SHUT_WR)  # the balancer went away mid-header
    assert closed_without_greeting(c), f"{bad}: the server answered"
    c.close()
    assert good.cmd("NOOP")[0] == 200
    assert poll_until(lambda: "closed a connection from a trusted balancer"
                      in server.log_path.read_text(), 10)
    assert server.alive()


@pytest.mark.concurrent
def test_a_slow_header_times_out_while_others_are_served(start_server, model):
    server = start_server(model, extra=TRUST)
    slow = _wrap(from_balancer(server.host, server.port))
    header = b"PROXY TCP4 192.0.2.5 127.0.0.1 1000 21\r\n"
    started = time.monotonic()
    other = None
    for i, byte in enumerate(header[:12]):
        try:
            slow.sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            break  # closed at its deadline (2 s) while the bytes still trickled in
        if i == 3:
            # Meanwhile another client is served at once.
            other = proxied(server, v2(CLIENT, 40031))
            assert other.reply()[0] == 220
            other.login()
        time.sleep(0.2)  # the slowness under test, not a wait for readiness
    assert other is not None, "the slow header was cut before the other client came"
    assert closed_without_greeting(slow, 10)
    assert time.monotonic() - started < 10
    assert "no whole PROXY header in time" in server.log_path.read_text()
    assert other.cmd("NOOP")[0] == 200


def test_a_local_header_is_served_as_the_balancer(start_server, model):
    server = start_server(model, extra=TRUST)
    c = proxied(server, LOCAL_V2)
    assert c.reply()[0] == 220
    assert c.cmd("QUIT")[0] == 221
    assert c.wait_closed()
    # A health check (every few seconds per node) is not logged as a session at info level;
    # a real client's session is.
    client = proxied(server, v2(CLIENT, 40051))
    assert client.reply()[0] == 220
    assert client.cmd("QUIT")[0] == 221
    assert poll_until(lambda: f"peer={CLIENT}:40051" in server.log_path.read_text(), 10)
    opened = [line for line in server.log_path.read_text().splitlines()
              if "connection opened" in line]
    assert not [line for line in opened if f"peer={BALANCER}" in line], opened


def test_headers_from_untrusted_addresses_are_unknown_commands(start_server):
    server = start_server("epoll", extra=TRUST)
    s = socket.create_connection((server.host, server.port), timeout=10,
                                 source_address=("127.0.0.60", 0))
    c = _wrap(s)
    assert c.reply()[0] == 220
    code, text = c.cmd("PROXY TCP4 1.2.3.4 5.6.7.8 1 2")
    assert 500 <= code < 600, text
    c.login()
    assert "peer=127.0.0.60" in server.log_path.read_text()


def test_implicit_tls_after_the_header(start_server, certs):
    import ssl
    server = start_server("epoll", implicit_tls=1,
                          extra=TRUST + ["--tls-cert", certs["cert"], "--tls-key", certs["key"],
                                         "--implicit-tls", "127.0.0.1:0"])
    fam, host, port = server.tls_addrs[0]
    raw = from_balancer(host, port)
    raw.sendall(v2(CLIENT, 40041))
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    tls = ctx.wrap_socket(raw)
    c = _wrap(tls)
    assert c.reply()[0] == 220
    c.login()
    assert poll_until(lambda: f"peer={CLIENT}:40041" in server.log_path.read_text(), 10)


# ---- shared state: Redis goes away and comes back ----------------------------------------


class Redis:
    def __init__(self, tmp_path, port: int | None = None):
        self.port = port or helpers.free_port()
        self.proc = helpers.start_redis(self.port, tmp_path, tmp_path / "redis.log")

    def stop(self) -> None:
        helpers.stop_process(self.proc)


@pytest.fixture
def redis(tmp_path):
    started: list[Redis] = []

    def start(port: int | None = None) -> Redis:
        r = Redis(tmp_path, port)
        started.append(r)
        return r

    yield start
    for r in started:
        r.stop()


@pytest.mark.parametrize("model", ["thread", "process", "epoll", "uring"])
def test_without_redis_a_node_serves_on_local_limits_and_picks_redis_up_again(
        start_server, redis, model):
    r = redis()
    url = f"redis://127.0.0.1:{r.port}/"
    server = start_server(model, extra=["--shared-state", url, "--max-per-ip", "2",
                                        "--node-name", "solo"])
    first = server.ctl()
    first.login()
    r.stop()
    # Redis is gone: sessions still start, and the local limit still holds.
    second = server.ctl()
    second.login()
    assert poll_until(lambda: "shared state unreachable" in server.log_path.read_text(), 15)
    third = server.ctl(greet=False)
    code, text = third.reply()
    assert code == 421, f"--max-per-ip 2 does not hold without Redis: {text}"
    third.close()
    second.cmd("QUIT")
    second.close()
    # Redis is back on the same port: the node rewrites its counts and uses it again.
    r2 = redis(r.port)
    assert poll_until(lambda: "shared state reachable again" in server.log_path.read_text(), 20)

    def counted() -> bool:
        out = subprocess.run(["redis-cli", "-p", str(r2.port), "HGET", "zocalo:conn:solo", "*"],
                             capture_output=True, text=True, timeout=5).stdout.strip()
        return out == "1"
    assert poll_until(counted, 15), "the node did not rewrite its count (one session) in Redis"
    # A lock-out recorded in Redis by another node holds here.
    subprocess.run(["redis-cli", "-p", str(r2.port), "SET", "zocalo:lock:127.0.0.1", "1",
                    "EX", "60"], check=True, capture_output=True, timeout=5)
    locked = server.ctl()
    locked.send(f"USER {USER}")
    assert locked.reply()[0] == 331
    code, text = locked.cmd(f"PASS {PASSWORD}")
    assert code == 530, f"a lock-out from Redis was not honoured: {text}"
    locked.close()
    first.close()
