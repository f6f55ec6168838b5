"""Limits and abuse: lock-outs after failed logins (every model, the process model included),
login and idle timeouts, slowloris clients, bandwidth limits, the transfer log and the
structured log (which never contains a password)."""

from __future__ import annotations

import json
import os
import re
import socket

import pytest

import helpers
from helpers import MODELS

CONCURRENT = [m for m in MODELS if m != "iterative"]


@pytest.mark.parametrize("model", MODELS)
def test_lockout_after_failed_logins_spans_connections(start_server, model):
    srv = start_server(model, extra=["--max-login-failures", 2, "--ban-time", 60])
    for _ in range(2):
        c = srv.ctl()
        assert c.cmd("USER alice")[0] == 331
        assert c.cmd("PASS wrong")[0] == 530
        c.cmd("QUIT")
        c.close()
    c = srv.ctl()
    assert c.cmd("USER alice")[0] == 331
    code, text = c.cmd(f"PASS {helpers.PASSWORD}")
    assert code == 530, f"the right password is refused while locked out: {text}"
    c.cmd("QUIT")
    c.close()


@pytest.mark.parametrize("model", ["epoll", "uring", "thread", "process"])
def test_login_timeout(start_server, model):
    srv = start_server(model, extra=["--login-timeout", 1])
    c = srv.ctl()
    assert c.readable(10), "no 421 within the bound"
    code, text = c.reply()
    assert code == 421 and "Login timeout" in text
    assert c.wait_closed()


@pytest.mark.parametrize("model", ["epoll", "uring", "thread", "process", "select"])
def test_idle_timeout_after_login(start_server, model):
    srv = start_server(model, extra=["--idle-timeout", 1])
    c = srv.ctl()
    c.login()
    assert c.readable(10)
    code, text = c.reply()
    assert code == 421 and "Idle" in text
    assert c.wait_closed()


@pytest.mark.parametrize("model", CONCURRENT)
def test_slowloris_clients_cost_others_nothing(start_server, model):
    extra = ["--max-per-ip", 1000]
    if model.startswith("pool"):
        model = "pool:120"
    srv = start_server(model, extra=extra)
    srv.root.joinpath("f.bin").write_bytes(os.urandom(256 * 1024))
    slow = []
    for _ in range(100):
        c = srv.ctl()
        c.sock.sendall(b"US")  # half a command, then nothing: one byte at a time, forever
        slow.append(c)
    for c in slow[:50]:
        c.sock.sendall(b"E")
    ftp = srv.ftp()
    data = helpers.download(ftp, "f.bin")
    assert data == srv.root.joinpath("f.bin").read_bytes()
    assert ftp.sendcmd("NOOP").startswith("200")
    for c in slow:
        c.close()


def test_bandwidth_limit_holds(start_server):
    rate = 200_000
    # The same 200,000 bytes/s, once with a unit (kB: powers of 1000).
    srv = start_server("epoll", extra=["--max-rate-down", "200kB", "--max-rate-up", rate])
    payload = os.urandom(600_000)
    srv.root.joinpath("f.bin").write_bytes(payload)
    ftp = srv.ftp()
    took_down = helpers.download_seconds(ftp, "f.bin", payload)
    took_up = helpers.upload_seconds(ftp, "up.bin", payload)
    assert srv.root.joinpath("up.bin").read_bytes() == payload
    # A token bucket with a burst of rate/10 cannot move 600 kB at 200 kB/s in under 2.5 s.
    assert took_down >= 2.5, f"download limit not applied: {took_down:.2f}s"
    assert took_up >= 2.5, f"upload limit not applied: {took_up:.2f}s"


@pytest.mark.parametrize("model", ["epoll", "uring", "process"])
def test_xferlog_records_transfers(start_server, tmp_path, model):
    log = tmp_path / "xferlog"
    srv = start_server(model, extra=["--xferlog", log])
    ftp = srv.ftp()
    helpers.upload(ftp, "a b.txt", b"12345")
    assert helpers.download(ftp, "a b.txt") == b"12345"
    ftp.quit()
    srv.clients.remove(ftp)
    def two_lines():
        lines = log.read_text().splitlines() if log.exists() else []
        return lines if len(lines) >= 2 else None

    lines = helpers.poll_until(two_lines, 5)
    assert lines, "xferlog lines missing"
    pattern = (r"^\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4} \d+ 127\.0\.0\.1 5 /a_b\.txt b _ "
               r"([io]) r alice ftp 0 \* c$")
    directions = [re.match(pattern, line)[1] for line in lines]
    assert directions == ["i", "o"], lines


def test_json_logs_never_contain_passwords(start_server, tmp_path):
    secret = "s3cret-Pa55-never-logged"
    srv = start_server("epoll", users=(("bob", secret),),
                       extra=["--log-format", "json"])
    ftp = srv.ftp("bob", secret)
    helpers.upload(ftp, "x", b"x")
    bad = srv.ctl()
    bad.cmd("USER bob")
    bad.cmd("PASS also-secret-wrong")
    bad.close()
    ftp.quit()
    srv.clients.remove(ftp)
    text = helpers.poll_until(
        lambda: t if '"transfer"' in (t := srv.log_path.read_text()) else None, 5)
    assert text, "no transfer log line"
    assert secret not in text and "also-secret-wrong" not in text
    records = [json.loads(l) for l in text.splitlines() if l.startswith("{")]
    assert any(r["fields"].get("message") == "transfer" and r["fields"].get("user") == "bob"
               for r in records)


# --------------------------------------------------------------------------
# Hostile clients: a session that cannot be written to, stalled handshakes


HOSTILE_MODELS = ["epoll", "uring", "poll", "select", "thread", "process"]


def unreading_client(srv, lines: bytes, login: bool = False) -> socket.socket:
    """A control connection with a 4 KiB receive buffer that sends `lines` as far as the
    server takes them (bounded) and then reads nothing."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(helpers.TIMEOUT)
    s.connect(srv.addr())
    if login:
        f = s.makefile("rb")
        assert f.readline().startswith(b"220")
        s.sendall(f"USER {helpers.USER}\r\n".encode())
        assert f.readline().startswith(b"331")
        s.sendall(f"PASS {helpers.PASSWORD}\r\n".encode())
        assert f.readline().startswith(b"230")
    s.setblocking(False)
    sent = 0
    for _ in range(10_000):
        if sent >= len(lines):
            break
        try:
            sent += s.send(lines[sent:sent + 65536])
        except BlockingIOError:
            break
    return s


def rss_kib(pid: int) -> int:
    """Memory of the server and its children (the process model's sessions), as proportional
    set size: a page a forked child shares with its parent counts once, not once per process
    (VmRSS would count the binary and every page the parent touched before the fork again in
    each child)."""
    total = 0
    for p in [pid, *helpers._children_of(pid)]:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += next((int(l.split()[1]) for l in f if l.startswith("Pss:")), 0)
        except OSError:
            pass
    return total


def assert_others_served_after_timeout(srv, bystander, expect: str) -> None:
    """The bystander connected after the attacker, so its timeout comes later: its 421 proves
    the attacker's timeout has fired; then a new client must be served at once."""
    assert bystander.readable(15), "the bystander's timeout never fired: the loop is stuck"
    code, text = bystander.reply()
    assert code == 421 and expect in text, text
    fresh = srv.ctl()
    assert fresh.cmd("NOOP")[0] == 200
    fresh.cmd("QUIT")


@pytest.mark.parametrize("model", HOSTILE_MODELS)
def test_login_timeout_closes_a_session_that_reads_nothing(start_server, model):
    srv = start_server(model, extra=["--login-timeout", 2, "--idle-timeout", 120])
    attacker = unreading_client(srv, b"HELP\r\n" * 20_000)
    bystander = srv.ctl()
    assert_others_served_after_timeout(srv, bystander, "Login timeout")
    attacker.close()
    assert rss_kib(srv.proc.pid) < 64 * 1024
    srv.close_clients()
    ok, last = srv.wait_baseline()
    assert ok, f"resources not released: {last} vs {srv.baseline}"


@pytest.mark.parametrize("model", HOSTILE_MODELS)
def test_idle_timeout_closes_a_session_that_reads_nothing(start_server, model):
    srv = start_server(model, extra=["--idle-timeout", 2])
    attacker = unreading_client(srv, b"HELP\r\n" * 20_000, login=True)
    bystander = srv.ctl()
    bystander.login()
    assert_others_served_after_timeout(srv, bystander, "Idle")
    # Closed by the server while its last reply cannot be written: the descriptor goes even
    # though the attacker never reads.
    srv.close_clients()
    ok, last = srv.wait_baseline()
    attacker.close()
    assert ok, f"the attacker's session outlived its timeout: {last} vs {srv.baseline}"


@pytest.mark.parametrize("model", HOSTILE_MODELS)
def test_pipelined_commands_whose_replies_are_not_read_cost_little(start_server, model):
    srv = start_server(model, extra=["--idle-timeout", 60])
    before = rss_kib(srv.proc.pid)
    attackers = [unreading_client(srv, b"STAT\r\n" * 50_000, login=True) for _ in range(4)]
    ftp = srv.ftp()
    assert ftp.sendcmd("NOOP").startswith("200")
    grown = rss_kib(srv.proc.pid) - before
    assert grown < 16 * 1024, f"the server grew by {grown} KiB"
    for a in attackers:
        a.close()


def tls_flags(certs):
    return ["--tls-cert", certs["cert"], "--tls-key", certs["key"]]


@pytest.mark.parametrize("model", HOSTILE_MODELS)
def test_a_stalled_auth_tls_handshake_is_under_the_login_timeout(start_server, model, certs):
    srv = start_server(model, extra=[*tls_flags(certs), "--login-timeout", 2,
                                     "--idle-timeout", 120])
    attacker = srv.ctl()
    assert attacker.cmd("AUTH TLS")[0] == 234
    bystander = srv.ctl()
    assert_others_served_after_timeout(srv, bystander, "Login timeout")
    assert attacker.wait_closed(10), "the stalled handshake outlived the login timeout"


@pytest.mark.parametrize("model", HOSTILE_MODELS)
def test_a_stalled_auth_tls_handshake_after_login_is_under_the_idle_timeout(
        start_server, model, certs):
    srv = start_server(model, extra=[*tls_flags(certs), "--idle-timeout", 2])
    attacker = srv.ctl()
    attacker.login()
    assert attacker.cmd("AUTH TLS")[0] == 234
    assert attacker.wait_closed(10), "the stalled handshake outlived the idle timeout"


# --------------------------------------------------------------------------
# Resources one client can take


# The process model's parent holds no session descriptor: each child has its own table.
@pytest.mark.parametrize("model", ["epoll", "uring", "poll", "select", "thread"])
def test_at_the_descriptor_limit_clients_get_421_and_service_resumes(start_server, model):
    srv = start_server(model, nofile=64, extra=["--max-per-ip", 1000])
    keeper = srv.ctl()
    keeper.login()
    crowd = [socket.create_connection(srv.addr(), timeout=helpers.TIMEOUT) for _ in range(120)]
    answers = [s.recv(64)[:3] for s in crowd]
    assert b"421" in answers, "nobody was refused: the limit was not reached"
    assert all(a in (b"220", b"421", b"") for a in answers), set(answers)
    assert keeper.cmd("NOOP")[0] == 200, "an open session stopped being served"
    for s in crowd:
        s.close()

    def served():
        try:
            c = helpers.Ctl(*srv.addr(), timeout=2)
        except OSError:
            return False
        try:
            return c.reply()[0] == 220
        except (OSError, EOFError):
            return False
        finally:
            c.close()

    assert helpers.poll_until(served, 10), "accepting never resumed"
    text = srv.log_path.read_text(errors="replace")
    warnings = [l for l in text.splitlines() if "accept" in l and "WARN" in l]
    assert 1 <= len(warnings) <= 3, f"{len(warnings)} warnings: {warnings[:3]}"
    assert "open-file limit" in text


def test_the_default_per_address_limit_protects(start_server):
    srv = start_server("epoll")
    held = [srv.ctl() for _ in range(50)]
    extra = srv.ctl(greet=False)
    code, text = extra.reply()
    assert code == 421, text
    held.pop().close()

    def admitted():
        c = srv.ctl(greet=False)
        return c.reply()[0] == 220

    assert helpers.poll_until(admitted, 10)


@pytest.mark.parametrize("model", ["epoll", "uring", "thread", "process"])
def test_an_unused_passive_port_closes_after_the_data_timeout(start_server, model):
    base = 20000 + (os.getpid() % 400) * 20 + (hash(model) % 2) * 10
    ports = f"{base}-{base + 3}"
    srv = start_server(model, extra=["--passive-ports", ports, "--data-timeout", 1])
    hoarders = [srv.ctl() for _ in range(4)]
    for h in hoarders:
        h.login()
        assert h.cmd("PASV")[0] == 227
    late = srv.ctl()
    late.login()
    assert late.cmd("PASV")[0] == 425, "the range should be taken"
    assert helpers.poll_until(lambda: late.cmd("PASV")[0] == 227, 10), \
        "the hoarded passive ports never closed"
    hoarders[0].send("LIST")
    code, _ = hoarders[0].final_reply()
    assert code == 425, "a transfer on an expired passive port must say 425"
