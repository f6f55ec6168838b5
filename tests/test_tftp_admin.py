"""TFTP served by the zocalo binary (real tftp-hpa and atftp clients, and zocalo's own client)
and the admin channel (`zocalo ctl`) end to end, in several server models."""

from __future__ import annotations

import os
import re
import select
import socket
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

import helpers
from helpers import poll_until
from helpers import need

TFTP_RE = re.compile(r"listening tftp://127\.0\.0\.1:(\d+)")
DEADLINE = 20


class TftpServer:
    """`zocalo serve --tftp` or `zocalo tftp`, waited for through its `listening tftp://` line."""

    def __init__(self, argv: list[str], log: Path):
        with open(log, "ab") as err:
            self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err,
                                         stdin=subprocess.DEVNULL)
        self.port = self._wait_port()

    def _wait_port(self) -> int:
        buf, deadline = b"", time.monotonic() + DEADLINE
        fd = self.proc.stdout.fileno()
        while time.monotonic() < deadline:
            r, _, _ = select.select([fd], [], [], deadline - time.monotonic())
            if not r:
                continue
            chunk = os.read(fd, 4096)
            assert chunk, "server exited before listening"
            buf += chunk
            m = TFTP_RE.search(buf.decode(errors="replace"))
            if m:
                return int(m[1])
        raise AssertionError(f"no tftp listener reported; stdout {buf!r}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(DEADLINE)


@pytest.fixture
def tftp_root(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "small.txt").write_bytes(b"hello\nworld\n")
    (root / "blob.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    return root


@pytest.fixture(params=["iterative", "thread", "pool:4", "epoll", "uring"])
def served(request, tftp_root, tmp_path):
    argv = [str(helpers.zocalo_bin()), "serve", "--root", str(tftp_root), "--listen",
            "127.0.0.1:0", "--tftp", "127.0.0.1:0", "--write", "--model", request.param]
    server = TftpServer(argv, tmp_path / "serve.log")
    yield server
    assert server.stop() == 0


def test_tftp_hpa_get(served, tftp_root, tmp_path):
    out = tmp_path / "got.bin"
    subprocess.run([need("tftp"), "127.0.0.1", str(served.port), "-m", "binary", "-c", "get",
                    "blob.bin", str(out)], check=True, timeout=DEADLINE)
    assert helpers.file_sha256(out) == helpers.file_sha256(tftp_root / "blob.bin")


@pytest.mark.parametrize("model", ["thread", "pool:4", "epoll", "uring"])
def test_abandoned_transfers_stop_counting_against_their_address(tftp_root, tmp_path, model):
    argv = [str(helpers.zocalo_bin()), "serve", "--root", str(tftp_root), "--listen",
            "127.0.0.1:0", "--tftp", "127.0.0.1:0", "--model", model, "--tftp-max-per-ip", "3"]
    server = TftpServer(argv, tmp_path / "serve.log")
    try:
        # Three clients ask for a file with a 10 s timeout option, get their OACK, and vanish:
        # five retries of 10 s would keep them counted for a minute.
        socks = []
        for _ in range(3):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            s.settimeout(5)
            s.sendto(b"\x00\x01blob.bin\x00octet\x00timeout\x0010\x00", ("127.0.0.1", server.port))
            socks.append(s)
        for s in socks:
            answer, _ = s.recvfrom(2048)
            assert answer[:2] == b"\x00\x06", f"an OACK: {answer!r}"
            s.close()
        got = tmp_path / "got.bin"

        def fetched() -> bool:
            got.unlink(missing_ok=True)
            subprocess.run([need("tftp"), "127.0.0.1", str(server.port), "-m", "binary", "-c",
                            "get", "small.txt", str(got)], capture_output=True, timeout=DEADLINE)
            return got.exists() and got.read_bytes() == (tftp_root / "small.txt").read_bytes()

        assert poll_until(fetched, 10, 0.2), "an honest client waited for the dead transfers"
    finally:
        assert server.stop() == 0


def test_atftp_put_with_blksize_and_windowsize(served, tftp_root, tmp_path):
    src = tmp_path / "up.bin"
    src.write_bytes(os.urandom(1024 * 1024 + 3))
    subprocess.run([need("atftp"), "--option", "blksize 1428", "--option", "windowsize 8",
                    "-p", "-l", str(src), "-r", "up.bin", "127.0.0.1", str(served.port)],
                   check=True, timeout=DEADLINE, capture_output=True)
    assert helpers.file_sha256(tftp_root / "up.bin") == helpers.file_sha256(src)


def test_zocalo_client_get_and_put(served, tftp_root, tmp_path):
    zocalo = str(helpers.zocalo_bin())
    url = f"tftp://127.0.0.1:{served.port}"
    got = tmp_path / "got.bin"
    subprocess.run([zocalo, "get", f"{url}/blob.bin", str(got), "--blksize", "1428",
                    "--windowsize", "16"], check=True, timeout=DEADLINE, capture_output=True)
    assert helpers.file_sha256(got) == helpers.file_sha256(tftp_root / "blob.bin")
    subprocess.run([zocalo, "put", str(got), f"{url}/copy.bin"], check=True, timeout=DEADLINE,
                   capture_output=True)
    assert helpers.file_sha256(tftp_root / "copy.bin") == helpers.file_sha256(got)


def test_tftp_paths_are_confined(served, tftp_root, tmp_path):
    (tftp_root.parent / "secret").write_text("outside")
    os.symlink(tftp_root.parent / "secret", tftp_root / "link")
    for name in ["../secret", "/../secret", "link"]:
        p = subprocess.run([need("tftp"), "127.0.0.1", str(served.port), "-m", "binary", "-c",
                            "get", name, str(tmp_path / "x")], timeout=DEADLINE,
                           capture_output=True, text=True)
        got = (tmp_path / "x").read_text() if (tmp_path / "x").exists() else ""
        assert "outside" not in got, name
        assert "Error" in p.stdout + p.stderr or p.returncode != 0, name


def test_standalone_tftp_is_read_only_by_default(tftp_root, tmp_path):
    argv = [str(helpers.zocalo_bin()), "tftp", "--root", str(tftp_root), "--listen",
            "127.0.0.1:0"]
    server = TftpServer(argv, tmp_path / "tftp.log")
    try:
        src = tmp_path / "up.txt"
        src.write_text("no")
        p = subprocess.run([need("atftp"), "-p", "-l", str(src), "-r", "up.txt", "127.0.0.1",
                            str(server.port)], timeout=DEADLINE, capture_output=True, text=True)
        assert p.returncode != 0
        assert not (tftp_root / "up.txt").exists()
        got = tmp_path / "small.txt"
        subprocess.run([need("tftp"), "127.0.0.1", str(server.port), "-m", "binary", "-c", "get",
                        "small.txt", str(got)], check=True, timeout=DEADLINE)
        assert got.read_bytes() == b"hello\nworld\n"
    finally:
        assert server.stop() == 0


# ---- the admin channel ------------------------------------------------------------------

ADMIN_MODELS = ["epoll", "uring", "thread", "process", "pool:4", "select", "iterative"]


def ctl(sock: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(helpers.zocalo_bin()), "ctl", "--socket", str(sock), *args],
                          capture_output=True, text=True, timeout=DEADLINE)


@pytest.fixture(params=ADMIN_MODELS)
def admin_srv(request, start_server, tmp_path):
    sock = tmp_path / "admin.sock"
    srv = start_server(request.param, extra=["--admin-socket", sock])
    return srv, sock


def test_admin_socket_is_private_seqpacket(admin_srv):
    _, sock = admin_srv
    mode = os.stat(sock).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600


def test_admin_status_lists_sessions_and_transfers(admin_srv, big):
    srv, sock = admin_srv
    srv.root.joinpath("big.bin").write_bytes(big)
    ftp = srv.ftp()
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd("RETR big.bin")
    conn.recv(4096)
    out = ctl(sock, "status")
    assert out.returncode == 0, out.stderr
    assert f"listening ftp://127.0.0.1:{srv.port}" in out.stdout
    assert "sessions 1" in out.stdout
    line = next(l for l in out.stdout.splitlines() if l.startswith("session "))
    assert f"user={helpers.USER}" in line
    assert 'transfer="RETR /big.bin"' in line
    assert int(re.search(r"bytes=(\d+)", line)[1]) > 0
    rest = helpers.read_all(conn)
    conn.close()
    assert 4096 + len(rest) >= len(big) - 4096
    ftp.voidresp()


def test_admin_kick_closes_with_421(admin_srv):
    srv, sock = admin_srv
    c = srv.ctl()
    c.login()
    status = ctl(sock, "status").stdout
    session = re.search(r"session id=(\d+)", status)[1]
    out = ctl(sock, "kick", session)
    assert out.returncode == 0 and f"kicked session {session}" in out.stdout
    code, text = c.reply()
    assert code == 421 and "administrator" in text
    assert c.wait_closed()
    assert ctl(sock, "kick", "99999").returncode != 0


def test_admin_reload_reads_new_users_without_dropping_sessions(start_server, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "bob").mkdir()
    users = tmp_path / "users.txt"
    zocalo = str(helpers.zocalo_bin())
    subprocess.run([zocalo, "user", "add", "bob", "--users", str(users), "--home", "bob"],
                   input="bobpw\n", text=True, check=True, timeout=DEADLINE)
    sock = tmp_path / "admin.sock"
    srv = start_server("epoll", root=root, extra=["--admin-socket", sock, "--users", users])
    bob = srv.ftp("bob", "bobpw")
    with pytest.raises(Exception):
        srv.ftp("carol", "carolpw")
    subprocess.run([zocalo, "user", "add", "carol", "--users", str(users), "--read-only"],
                   input="carolpw\n", text=True, check=True, timeout=DEADLINE)
    out = ctl(sock, "reload")
    assert out.returncode == 0 and "2 accounts" in out.stdout
    carol = srv.ftp("carol", "carolpw")
    assert helpers.code_of(carol, "MKD x") == 550
    assert bob.pwd() == "/"


def test_admin_kick_of_a_free_slot_or_unknown_id_harms_nothing(admin_srv):
    srv, sock = admin_srv
    c = srv.ctl()
    c.login()
    for target in ["0", "99999"]:
        out = ctl(sock, "kick", target)
        assert out.returncode != 0
        assert f"no session {target}" in out.stdout + out.stderr
    assert srv.alive()
    assert c.cmd("NOOP")[0] == 200, "a session was hurt by a kick of no session"


def test_silent_admin_clients_never_delay_ftp_service(start_server, tmp_path):
    sock = tmp_path / "admin.sock"
    srv = start_server("process", extra=["--admin-socket", sock])
    silent = []
    for _ in range(3):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.connect(str(sock))
        silent.append(s)
    # Each silent client held the old accept loop for 2 s: three of them, 6 s.
    c = helpers.Ctl(*srv.addr(), timeout=3)
    srv.clients.append(c)
    assert c.reply()[0] == 220
    c.login()
    out = ctl(sock, "status")
    assert out.returncode == 0 and "sessions 1" in out.stdout, out.stdout
    for s in silent:
        s.close()


def test_a_failed_tftp_download_leaves_the_local_file_alone(served, tmp_path):
    report = tmp_path / "report.txt"
    report.write_text("precious\n")
    p = subprocess.run([str(helpers.zocalo_bin()), "get",
                        f"tftp://127.0.0.1:{served.port}/missing.txt", str(report)],
                       capture_output=True, timeout=DEADLINE)
    assert p.returncode != 0
    assert report.read_text() == "precious\n"
    assert sorted(x.name for x in tmp_path.iterdir() if x.name.startswith(".")) == []


def start_serve(root, *extra) -> subprocess.Popen:
    return subprocess.Popen([str(helpers.zocalo_bin()), "serve", "--root", str(root),
                             "--listen", "127.0.0.1:0", *map(str, extra)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def refused_start(root, *extra) -> tuple[int | None, str]:
    """Starts a server that must refuse to start: its exit status and stderr. One that starts
    after all is killed (status None), so a failing test leaves no server behind."""
    server = start_serve(root, *extra)
    try:
        _, err = server.communicate(timeout=DEADLINE)
        return server.returncode, err
    except subprocess.TimeoutExpired:
        server.kill()
        server.communicate()
        return None, "still running"


def test_start_errors_name_what_is_wrong(tmp_path):
    """An admin socket in a missing directory, and a Redis that wants a password: the start
    fails with what to do."""
    status, err = refused_start(tmp_path, "--admin-socket", tmp_path / "missing" / "admin.sock")
    assert status not in (0, None), err
    assert f"the directory {tmp_path / 'missing'} does not exist" in err, err
    port = helpers.free_port()
    redis = helpers.start_redis(port, tmp_path, tmp_path / "redis.log",
                                extra=["--requirepass", "s3cret"])
    try:
        status, err = refused_start(tmp_path, "--shared-state", f"redis://127.0.0.1:{port}/")
        assert status not in (0, None), err
        assert "Redis refused this node" in err and "redis://:PASSWORD@" in err, err
        assert "s3cret" not in err
    finally:
        helpers.stop_process(redis)


def test_a_missing_file_is_said_in_words(served, tmp_path):
    p = subprocess.run([need("tftp"), "127.0.0.1", str(served.port), "-m", "binary", "-c", "get",
                        "nothing.bin", str(tmp_path / "x")], capture_output=True, text=True,
                       timeout=DEADLINE)
    said = p.stdout + p.stderr
    assert "File not found" in said and "os error" not in said, said


def test_refused_tftp_requests_are_counted(tftp_root, tmp_path):
    from test_production import http_get, scraped
    metrics = helpers.free_port()
    argv = [str(helpers.zocalo_bin()), "serve", "--root", str(tftp_root), "--listen",
            "127.0.0.1:0", "--tftp", "127.0.0.1:0", "--metrics", f"127.0.0.1:{metrics}"]
    server = TftpServer(argv, tmp_path / "serve.log")
    try:
        for name in ("nothing.bin", "nor-this.bin"):
            subprocess.run([need("tftp"), "127.0.0.1", str(server.port), "-m", "binary", "-c",
                            "get", name, str(tmp_path / "x")], capture_output=True,
                           timeout=DEADLINE)
        text = http_get(metrics, "/metrics")[1]
        assert scraped(text, "zocalo_tftp_refused_total") == 2, text
    finally:
        assert server.stop() == 0


def test_a_second_server_never_takes_a_live_admin_socket(start_server, tmp_path):
    sock = tmp_path / "admin.sock"
    srv = start_server("epoll", extra=["--admin-socket", sock])
    status, err = refused_start(srv.root, "--admin-socket", sock)
    assert status not in (0, None), err
    assert "admin.sock" in err and "another server" in err, err
    out = ctl(sock, "status")
    assert out.returncode == 0 and "sessions" in out.stdout, "the first server lost its socket"


def test_a_stale_admin_socket_is_replaced_and_a_file_is_not(tmp_path):
    sock = tmp_path / "admin.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stale.bind(str(sock))
    stale.close()  # bound, never listening: nobody answers
    server = start_serve(tmp_path, "--admin-socket", sock)
    try:
        assert helpers.poll_until(lambda: ctl(sock, "status").returncode == 0, 10)
    finally:
        server.terminate()
        server.wait(DEADLINE)
    plain = tmp_path / "notes.txt"
    plain.write_text("keep me\n")
    status, err = refused_start(tmp_path, "--admin-socket", plain)
    assert status not in (0, None) and "not a socket" in err, err
    assert plain.read_text() == "keep me\n"
