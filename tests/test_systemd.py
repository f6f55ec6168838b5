"""zocalo under systemd's protocols, without a running systemd: socket activation and inetd mode
through `systemd-socket-activate` (Debian's systemd), readiness notifications on a socket of
our own, the unit files in dist/, and start-up errors that name what they are about.
"""
from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
from pathlib import Path

import pytest

import helpers
from helpers import USER, PASSWORD, free_port, poll_until


def accepting(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


class Activated:
    """`systemd-socket-activate [--inetd -a] -l 127.0.0.1:PORT zocalo serve ...`."""

    def __init__(self, tmp_path: Path, inetd: bool):
        self.root = tmp_path / "root"
        self.root.mkdir()
        (self.root / "hello.txt").write_bytes(b"hello from the socket\n")
        self.port = free_port()
        argv = [helpers.need("systemd-socket-activate"), "-l", f"127.0.0.1:{self.port}"]
        if inetd:
            argv[1:1] = ["--inetd", "-a"]
        argv += [str(helpers.zocalo_bin()), "serve", "--root", str(self.root), "--user",
                 f"{USER}:{PASSWORD}", "--login-fail-delay-ms", "0"]
        if inetd:
            argv.append("--inetd")
        self.log = tmp_path / "activate.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        # The activator binds at once (zocalo starts on the first connection).
        assert poll_until(lambda: "Listening on" in self.log.read_text(), 10), self.log.read_text()

    def url(self, path: str) -> str:
        return f"ftp://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{path}"

    def stop(self) -> None:
        helpers.stop_process(self.proc, 10)


@pytest.fixture(params=["socket-activation", "inetd"])
def activated(request, tmp_path):
    a = Activated(tmp_path, inetd=request.param == "inetd")
    yield a
    a.stop()


def test_curl_and_lftp_through_systemd_socket_activate(activated, work, home):
    """Passive downloads and uploads with curl (EPSV and PASV) and lftp, through a listener
    systemd handed over or a connection it accepted."""
    curl = helpers.need("curl")
    got = subprocess.run([curl, "-sS", activated.url("hello.txt")], check=True, timeout=30,
                         capture_output=True).stdout
    assert got == b"hello from the socket\n"
    data = os.urandom(2_000_000)
    src = work / "up.bin"
    src.write_bytes(data)
    subprocess.run([curl, "-sS", "--disable-epsv", "-T", str(src), activated.url("up.bin")],
                   check=True, timeout=30)
    assert (activated.root / "up.bin").read_bytes() == data
    script = (f"set cmd:fail-exit yes; open -u {USER},{PASSWORD} -p {activated.port} 127.0.0.1; "
              f"get up.bin -o {work / 'back.bin'}; put {src} -o again.bin; cls -1; quit")
    out = subprocess.run([helpers.need("lftp"), "-c", script], check=True, timeout=60,
                         capture_output=True, text=True, env={**os.environ, "HOME": str(home)})
    assert (work / "back.bin").read_bytes() == data
    assert (activated.root / "again.bin").read_bytes() == data
    assert "hello.txt" in out.stdout
    assert "Traceback" not in activated.log.read_text()


def test_inetd_mode_writes_nothing_but_ftp_on_the_connection(tmp_path):
    """Standard output is the client's socket: the greeting is the first thing on it."""
    a = Activated(tmp_path, inetd=True)
    try:
        c = helpers.Ctl("127.0.0.1", a.port)
        code, text = c.reply()
        assert code == 220, text
        assert c.cmd(f"USER {USER}")[0] == 331
        assert c.cmd(f"PASS {PASSWORD}")[0] == 230
        assert c.cmd("QUIT")[0] == 221
        assert c.wait_closed(), "the session's process did not close after QUIT"
        c.close()
    finally:
        a.stop()


def test_inetd_refuses_a_standard_input_that_is_not_a_socket(tmp_path):
    p = subprocess.run([str(helpers.zocalo_bin()), "serve", "--inetd", "--root", str(tmp_path)],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert p.returncode != 0
    assert "--inetd needs a connected TCP socket" in p.stderr
    assert p.stdout == ""


@pytest.mark.parametrize("model", ["epoll", "uring", "process"])
def test_readiness_reload_and_stop_notifications(start_server, model, tmp_path):
    """Type=notify: READY=1 once listening, RELOADING=1 then READY=1 around a reload,
    STOPPING=1 on SIGTERM, on the datagram socket named by NOTIFY_SOCKET."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)
    try:
        srv = start_server(model, env={"NOTIFY_SOCKET": str(path)})
        got = sock.recv(4096).decode()
        assert got.startswith("READY=1") and f"MAINPID={srv.proc.pid}" in got, got
        srv.proc.send_signal(signal.SIGHUP)
        assert sock.recv(4096) == b"RELOADING=1"
        assert sock.recv(4096) == b"READY=1"
        srv.proc.send_signal(signal.SIGTERM)
        assert sock.recv(4096) == b"STOPPING=1"
        assert srv.proc.wait(15) == 0
        helpers.ACTIVE.remove(srv)
    finally:
        sock.close()


def test_unit_files_are_complete():
    dist = helpers.REPO / "dist"
    service = (dist / "zocalo.service").read_text()
    for line in ["Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "NoNewPrivileges=yes",
                 "ProtectSystem=strict", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE"]:
        assert line in service, line
    assert "Accept=yes" in (dist / "zocalo-inetd.socket").read_text()
    assert "--inetd" in (dist / "zocalo-inetd@.service").read_text()
    analyze = helpers.need("systemd-analyze")
    for unit in ["zocalo.service", "zocalo.socket", "zocalo-inetd.socket"]:
        p = subprocess.run([analyze, "verify", str(dist / unit)], capture_output=True, text=True,
                           timeout=60)
        # The binary is not installed here; anything else would be a mistake in the unit.
        problems = [l for l in p.stderr.splitlines()
                    if l.strip() and "/usr/local/bin/zocalo" not in l and "zocalo.service" not in l]
        assert not problems, p.stderr


def serve_error(*args: str) -> str:
    p = subprocess.run([str(helpers.zocalo_bin()), "serve", "--listen", "127.0.0.1:0", *args],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert p.returncode != 0, f"serve {args} started"
    return p.stderr


def test_start_up_errors_name_what_they_are_about(tmp_path):
    assert "/nonexistent/root" in serve_error("--root", "/nonexistent/root")
    cert = tmp_path / "cert.pem"
    subprocess.run([str(helpers.zocalo_bin()), "cert", "--self-signed", "--out", str(tmp_path)],
                   check=True, capture_output=True, timeout=60)
    bad_key = tmp_path / "bad-key.pem"
    bad_key.write_text("this is not a key\n")
    err = serve_error("--root", str(tmp_path), "--tls-cert", str(cert), "--tls-key", str(bad_key))
    assert str(bad_key) in err, err
    err = serve_error("--root", str(tmp_path), "--log-file", "/nonexistent/dir/zocalo.log")
    assert "/nonexistent/dir/zocalo.log" in err, err
    err = serve_error("--root", str(tmp_path), "--metrics", "192.0.2.1:1")
    assert "192.0.2.1:1" in err, err


def test_user_add_makes_a_private_file_and_names_unwritable_ones(tmp_path):
    users = tmp_path / "users"
    p = subprocess.run([str(helpers.zocalo_bin()), "user", "add", "bob", "--users", str(users),
                        "--home", str(tmp_path / "missing-home")], input="pw\n", text=True,
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert stat.S_IMODE(users.stat().st_mode) == 0o600
    assert "does not exist" in p.stderr and "missing-home" in p.stderr
    p = subprocess.run([str(helpers.zocalo_bin()), "user", "add", "eve", "--users",
                        "/nonexistent/dir/users"], input="pw\n", text=True, capture_output=True,
                       timeout=60)
    assert p.returncode != 0 and "/nonexistent/dir/users" in p.stderr, p.stderr
