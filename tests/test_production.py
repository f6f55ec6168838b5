"""Running zocalo in production: metrics scraped by a real Prometheus, /health, session logs,
log rotation with SIGHUP, certificate reload, SIGUSR1's session table.
"""
from __future__ import annotations

import ftplib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

import helpers
from helpers import USER, PASSWORD, free_port, poll_until


def metrics_port(srv) -> int:
    """The port of `listening metrics http://...` (printed with the listen lines)."""
    line = poll_until(lambda: next((l for l in srv.stdout_tail if "metrics http://" in l), None), 10)
    assert line, f"no metrics listener reported: {srv.stdout_tail}"
    return int(re.search(r"http://127\.0\.0\.1:(\d+)/", line)[1])


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def scraped(text: str, name: str, **labels) -> float | None:
    """One sample of the exposition text, found by name and (some of) its labels."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name + "{"):
            continue
        head, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            return float(value)
    return None


class Prometheus:
    """Debian's prometheus scraping one target every second, stopped by PID at the end."""

    def __init__(self, tmp_path: Path, target_port: int):
        binary = helpers.need("prometheus")
        self.port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            "scrape_configs:\n  - job_name: zocalo\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n")
        self.log = open(tmp_path / "prometheus.log", "ab")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL)
        ready = poll_until(lambda: self._ready(), 30, interval=0.2)
        assert ready, f"prometheus did not become ready: {(tmp_path / 'prometheus.log').read_text()[-2000:]}"

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.proc.returncode}")
        try:
            return http_get(self.port, "/-/ready")[0] == 200
        except OSError:
            return False

    def query(self, expr: str) -> float | None:
        q = urllib.parse.urlencode({"query": expr})
        status, body = http_get(self.port, f"/api/v1/query?{q}")
        result = json.loads(body)["data"]["result"] if status == 200 else []
        return float(result[0]["value"][1]) if result else None

    def wait_value(self, expr: str, want: float, timeout: float = 20) -> float | None:
        """The value once Prometheus has scraped it equal to `want` (or the last one seen)."""
        seen = [None]

        def check():
            seen[0] = self.query(expr)
            return seen[0] == want

        poll_until(check, timeout, interval=0.5)
        return seen[0]

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


@pytest.mark.parametrize("model", ["epoll", "uring", "process", "thread"])
def test_prometheus_scrapes_what_happened(start_server, model, tmp_path):
    """Known traffic, then Prometheus's HTTP API is asked for each counter: logins accepted and
    refused, transfers, bytes, file operations, sessions. In the process model the counters
    come from the children, through the shared table."""
    srv = start_server(model, write=True, fail_delay_ms=0,
                       extra=["--metrics", "127.0.0.1:0", "--node-name", "node-a"])
    port = metrics_port(srv)
    # The launcher's probe session (and nothing else) came before.
    base = scraped(http_get(port, "/metrics")[1], "zocalo_sessions_total")
    prom = Prometheus(tmp_path, port)
    try:
        data = os.urandom(300_000)
        ftp = srv.ftp()
        helpers.upload(ftp, "up.bin", data)
        assert helpers.download(ftp, "up.bin") == data
        ftp.mkd("made")
        ftp.nlst()
        ftp.quit()
        for _ in range(2):
            with pytest.raises(ftplib.error_perm, match="^530"):
                srv.ftp(password="wrong")
        n = 'node="node-a"'
        checks = {
            f'zocalo_logins_total{{{n},result="accepted"}}': 1,
            f'zocalo_logins_total{{{n},result="bad_credentials"}}': 2,
            f'zocalo_transfers_total{{{n},command="STOR",result="ok"}}': 1,
            f'zocalo_transfers_total{{{n},command="RETR",result="ok"}}': 1,
            f'zocalo_transfers_total{{{n},command="NLST",result="ok"}}': 1,
            f'zocalo_received_bytes_total{{{n}}}': len(data),
            f'zocalo_file_operations_total{{{n},result="ok"}}': 1,
            f'zocalo_sessions_total{{{n}}}': base + 3,
            f'zocalo_transfer_duration_seconds_count{{{n}}}': 2,
        }
        for expr, want in checks.items():
            assert prom.wait_value(expr, want) == want, expr
        # Sent bytes: the file plus the NLST listing ("made\nup.bin\n" with CRLF).
        sent = prom.wait_value(f'zocalo_sent_bytes_total{{{n}}}', len(data) + 14)
        assert sent == len(data) + 14
        assert prom.wait_value(f'zocalo_sessions_open{{{n}}}', 2) == 2, "the failed logins' sessions"
        srv.close_clients()
        assert prom.wait_value(f'zocalo_sessions_open{{{n}}}', 0) == 0
    finally:
        prom.stop()


@pytest.mark.parametrize("model", ["epoll", "uring", "process"])
def test_health_says_draining_during_the_grace_period(start_server, model, big):
    srv = start_server(model, write=True, extra=["--metrics", "127.0.0.1:0",
                                                 "--shutdown-grace", "8"])
    port = metrics_port(srv)
    assert http_get(port, "/health") == (200, "ok\n")
    status, text = http_get(port, "/metrics")
    assert status == 200 and "zocalo_sessions_total" in text
    assert http_get(port, "/nothing")[0] == 404
    ftp = srv.ftp()
    helpers.upload(ftp, "big.bin", big)
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd("RETR big.bin")  # read nothing: the transfer keeps the server up
    conn.recv(1)
    srv.proc.send_signal(signal.SIGTERM)
    got = poll_until(lambda: http_get(port, "/health")[0] == 503, 5)
    assert got, "health did not turn to 503 after SIGTERM"
    assert srv.proc.poll() is None, "the server left before its grace period"
    conn.close()
    srv.close_clients()
    assert srv.proc.wait(15) == 0
    helpers.ACTIVE.remove(srv)


@pytest.mark.parametrize("model", ["epoll", "uring", "thread", "process"])
def test_drain_and_undrain_reach_health_and_the_agent(start_server, model, tmp_path):
    admin, agent = tmp_path / "admin.sock", helpers.free_port()
    srv = start_server(model, extra=["--metrics", "127.0.0.1:0", "--admin-socket", admin,
                                     "--agent", f"127.0.0.1:{agent}"])
    port = metrics_port(srv)

    def ctl(*args):
        r = subprocess.run([str(helpers.zocalo_bin()), "ctl", "--socket", str(admin), *args],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        return r.stdout

    def agent_says() -> bytes:
        with socket.create_connection(("127.0.0.1", agent), timeout=10) as s:
            return helpers.read_all(s, limit=4096)

    assert poll_until(lambda: agent_says().startswith(b"up"), 10), "the agent answers up"
    assert "/health 503" in ctl("drain")
    assert http_get(port, "/health") == (503, "draining\n")
    assert agent_says().startswith(b"drain")
    assert srv.ftp().sendcmd("NOOP").startswith("200"), "a direct client is still served"
    assert "again" in ctl("undrain")
    assert http_get(port, "/health") == (200, "ok\n")
    assert agent_says().startswith(b"up")


def read_log(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def test_session_log_lines(start_server, tmp_path):
    """Every kind of event gets its line, with the session id; no password ever appears."""
    log = tmp_path / "zocalo.log"
    users = tmp_path / "users"
    subprocess.run([str(helpers.zocalo_bin()), "user", "add", "homeless", "--users", str(users),
                    "--home", "no/such/dir"], input="pw-homeless\n", text=True, check=True,
                   timeout=60)
    srv = start_server("epoll", write=True, fail_delay_ms=0,
                       extra=["--log-file", log, "--max-login-failures", "3", "--ban-time", "60",
                              "--users", users])
    ftp = srv.ftp()
    ftp.mkd("d")
    helpers.upload(ftp, "d/f.txt", b"x")
    ftp.rename("d/f.txt", "d/g.txt")
    ftp.sendcmd("SITE CHMOD 600 d/g.txt")
    ftp.delete("d/g.txt")
    ftp.rmd("d")
    ftp.quit()
    with pytest.raises(ftplib.error_perm, match="^530"):
        srv.ftp("homeless", "pw-homeless")
    for _ in range(3):
        with pytest.raises(ftplib.error_perm, match="^530"):
            srv.ftp(USER, "secret-wrong-pass")
    with pytest.raises(ftplib.error_perm, match="^530"):
        srv.ftp(USER, PASSWORD)  # locked out now
    srv.close_clients()
    # Another server allows one session per address: the second is refused, and logged.
    small = start_server("epoll", extra=["--log-file", tmp_path / "small.log", "--max-per-ip", "1"])
    held = small.ctl()
    assert small.ctl(greet=False).reply()[0] == 421
    held.close()
    text = poll_until(lambda: (t := read_log(log)).count("connection closed") >= 7 and t, 10)
    assert text, read_log(log)
    session = re.compile(r"session\{id=(\d+) peer=127\.0\.0\.1:\d+\}")
    for needle in ["connection opened", "login accepted", 'command="MKD"', 'command="RNTO"',
                   'command="DELE"', 'command="RMD"', 'command="SITE CHMOD"',
                   'reason="bad credentials"', 'reason="locked out"', 'reason="home missing"',
                   'transfer verb="STOR"']:
        lines = [l for l in text.splitlines() if needle in l]
        assert lines, f"no {needle!r} line in:\n{text}"
        assert session.search(lines[0]), f"no session id in {lines[0]!r}"
    assert "address locked out" in text
    assert re.search(r"connection closed duration_ms=\d+ bytes=\d+", text)
    refusals = poll_until(lambda: "connection refused with 421" in read_log(tmp_path / "small.log"), 5)
    assert refusals, read_log(tmp_path / "small.log")
    assert "too many connections from the address" in read_log(tmp_path / "small.log")
    assert "secret-wrong-pass" not in text and PASSWORD not in text


def test_tls_required_refusal_and_debug_commands_are_logged_without_passwords(
        start_server, tmp_path, certs):
    log = tmp_path / "zocalo.log"
    env_before = os.environ.get("ZOCALO_LOG")
    os.environ["ZOCALO_LOG"] = "debug"
    try:
        srv = start_server("thread", extra=["--log-file", log, "--tls-cert", certs["cert"],
                                            "--tls-key", certs["key"], "--tls", "required",
                                            "--log-format", "json"])
    finally:
        if env_before is None:
            del os.environ["ZOCALO_LOG"]
        else:
            os.environ["ZOCALO_LOG"] = env_before
    c = srv.ctl()
    assert c.cmd(f"USER {USER}")[0] == 530
    c.close()
    ftps = unverified_ftps(srv.port)
    ftps.login(USER, PASSWORD)
    ftps.quit()
    closed = poll_until(lambda: read_log(log).count('"connection closed"') >= 3, 10)
    assert closed, read_log(log)
    events = [json.loads(l) for l in read_log(log).splitlines()]
    refused = [e for e in events if e["fields"].get("reason") == "TLS required"]
    assert refused and refused[0]["span"]["id"] >= 1
    commands = [e["fields"]["line"] for e in events if e["fields"].get("message") == "command"]
    assert "PASS ****" in commands and f"USER {USER}" in commands, commands
    assert PASSWORD not in read_log(log)


@pytest.mark.parametrize("model", ["epoll", "uring", "process"])
def test_logrotate_sighup_moves_both_logs_without_dropping_a_session(start_server, model, tmp_path):
    """The logrotate dance: rename the xferlog and the log file, SIGHUP; the next transfer (by a
    session that was already logged in) lands in the new files, and that session goes on."""
    xfer, log = tmp_path / "xferlog", tmp_path / "zocalo.log"
    srv = start_server(model, write=True, extra=["--xferlog", xfer, "--log-file", log])
    ftp = srv.ftp()
    helpers.upload(ftp, "one.txt", b"one")
    assert poll_until(lambda: "/one.txt" in read_log(xfer), 5)
    xfer.rename(tmp_path / "xferlog.1")
    log.rename(tmp_path / "zocalo.log.1")
    srv.proc.send_signal(signal.SIGHUP)
    assert poll_until(lambda: "reloaded" in read_log(log) + read_log(tmp_path / "zocalo.log.1"), 5)
    helpers.upload(ftp, "two.txt", b"two")
    assert ftp.sendcmd("NOOP").startswith("200"), "the session survived the reload"
    ftp.quit()
    assert poll_until(lambda: "/two.txt" in read_log(xfer), 5), read_log(xfer)
    assert "/two.txt" not in read_log(tmp_path / "xferlog.1")
    assert "/one.txt" not in read_log(xfer)
    assert poll_until(lambda: "two.txt" in read_log(log), 5), read_log(log)
    assert srv.alive()


def unverified_ftps(port: int) -> ftplib.FTP_TLS:
    """An FTPS client connected to the server (these tests look at certificates themselves)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ftps = ftplib.FTP_TLS(context=ctx, timeout=10)
    ftps.connect("127.0.0.1", port)
    return ftps


def peer_cert(port: int) -> bytes:
    """The DER certificate an explicit-FTPS session is shown."""
    ftps = unverified_ftps(port)
    ftps.auth()
    der = ftps.sock.getpeercert(binary_form=True)
    ftps.quit()
    return der


def make_cert(tmp_path: Path, name: str) -> Path:
    out = tmp_path / name
    subprocess.run([str(helpers.zocalo_bin()), "cert", "--self-signed", "--out", str(out)],
                   check=True, capture_output=True, timeout=60)
    return out


@pytest.mark.parametrize("model", ["epoll", "uring", "process"])
def test_certificate_reload(start_server, model, tmp_path):
    """A new certificate swapped in and reloaded: new sessions see it, a session already in TLS
    keeps transferring; a reload with a broken key keeps the certificate it had."""
    a, b = make_cert(tmp_path, "a"), make_cert(tmp_path, "b")
    live = tmp_path / "live"
    shutil.copytree(a, live)
    log = tmp_path / "zocalo.log"
    srv = start_server(model, write=True, extra=["--tls-cert", live / "cert.pem", "--tls-key",
                                                 live / "key.pem", "--log-file", log])
    first = peer_cert(srv.port)
    old = unverified_ftps(srv.port)
    old.login(USER, PASSWORD)
    old.prot_p()
    helpers.upload(old, "before.bin", b"before")
    for name in ("cert.pem", "key.pem"):
        shutil.copy(b / name, live / name)
    srv.proc.send_signal(signal.SIGHUP)
    assert poll_until(lambda: "TLS certificate" in read_log(log), 5), read_log(log)
    second = peer_cert(srv.port)
    assert second != first, "a new session still got the old certificate"
    assert second == ssl.PEM_cert_to_DER_cert((b / "cert.pem").read_text())
    helpers.upload(old, "after.bin", os.urandom(100_000))
    assert helpers.download(old, "before.bin") == b"before"
    old.quit()
    (live / "key.pem").write_text("not a key\n")
    srv.proc.send_signal(signal.SIGHUP)
    assert poll_until(lambda: "kept the previous settings" in read_log(log), 5), read_log(log)
    assert "key.pem" in read_log(log)
    assert peer_cert(srv.port) == second


def test_sigusr1_logs_the_session_table(start_server, tmp_path):
    log = tmp_path / "zocalo.log"
    srv = start_server("thread", extra=["--log-file", log])
    ftp = srv.ftp()
    ftp.voidcmd("NOOP")  # by its 200, the table shows the login
    srv.proc.send_signal(signal.SIGUSR1)
    dumped = lambda: 'user="alice"' in read_log(log).partition("SIGUSR1")[2]
    text = poll_until(dumped, 5) and read_log(log)
    assert text and "session table (SIGUSR1) sessions=1" in text, read_log(log)
    assert "reloaded" not in text, "SIGUSR1 must not reload"
    assert ftp.sendcmd("NOOP").startswith("200")
    ftp.quit()
