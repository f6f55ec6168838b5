"""Graceful shutdown: what clients see when the server gets SIGTERM.

* idle sessions get ``421 Server shutting down.`` and are closed; the server exits 0;
* a transfer that cannot finish within --shutdown-grace is aborted with 426 (never 226),
  then 421; with --atomic-uploads the destination is never replaced by a partial file;
* a transfer that the client completes within the grace ends with 226, then 421;
* once the server has stopped, new connections are refused (or closed without a 220).

These tests stop the server themselves, so each detaches it from the leak check
(``helpers.ACTIVE``) once it has exited.
"""

from __future__ import annotations

import ftplib
import os
import re
import signal
import socket

import pytest

import helpers
from helpers import TIMEOUT, poll_until, read_all, read_exactly, sha256

SHUTDOWN_MODELS = ["epoll", "uring", "thread", "process", "pool:4", "select"]
EXIT_DEADLINE = 8.0  # how long the server may take to exit once its sessions are over
REFUSE_DEADLINE = 5.0  # how long a new client after SIGTERM may wait to be refused


@pytest.fixture(params=SHUTDOWN_MODELS)
def model(request):
    return request.param


def sigterm(srv) -> None:
    assert srv.alive(), "server died before the test sent SIGTERM"
    srv.proc.send_signal(signal.SIGTERM)


def wait_exit(srv, timeout: float = EXIT_DEADLINE) -> int:
    """Wait (bounded) for the server to exit; detach it from the leak check."""
    try:
        rc = srv.proc.wait(timeout)
    except Exception:
        raise AssertionError(f"server still running {timeout}s after SIGTERM; log:\n{srv.log_tail()}")
    if srv in helpers.ACTIVE:
        helpers.ACTIVE.remove(srv)
    return rc


def expect_closed_without_greeting(srv) -> str:
    """A new connection must be refused, or closed without a 220. Returns what happened."""
    try:
        sock = socket.create_connection((srv.host, srv.port), timeout=REFUSE_DEADLINE)
    except (ConnectionRefusedError, ConnectionResetError):
        return "refused"
    with sock:
        c = helpers.Ctl.__new__(helpers.Ctl)
        c.sock, c.buf = sock, b""
        try:
            line = c.readline()
        except (EOFError, ConnectionResetError):
            return "closed"
        except TimeoutError:
            raise AssertionError(f"a new client after SIGTERM was accepted but left hanging "
                                 f"(no reply, not closed) for {REFUSE_DEADLINE}s") from None
        assert not line.startswith("220"), f"a new client was greeted after SIGTERM: {line!r}"
        assert line.startswith("421"), f"unexpected reply to a new client after SIGTERM: {line!r}"
        assert c.wait_closed(), "the refused client was not disconnected"
        return "421"


def start_paused_retr(srv, size: int):
    """Log in, start a RETR of `size` random bytes, read the first 64 KiB, then stop reading
    (the server blocks on full socket buffers). Returns (ctl, data socket, data, first bytes)."""
    data = os.urandom(size)
    (srv.root / "down.bin").write_bytes(data)
    c = srv.ctl()
    c.login()
    assert c.cmd("TYPE I")[0] == 200
    code, text = c.cmd("EPSV")
    assert code == 229, text
    port = int(text.split("|")[-2])
    d = socket.create_connection((srv.host, port), timeout=TIMEOUT)
    c.send("RETR down.bin")
    code, text = c.reply()
    assert code in (125, 150), text
    first = read_exactly(d, 65536)
    assert first == data[:65536]
    return c, d, data, first


# ==========================================================================


def test_idle_client_gets_421_and_server_exits_0(start_server, model):
    srv = start_server(model, extra=["--shutdown-grace", "2"])
    c = srv.ctl()
    c.login()
    assert c.cmd("NOOP")[0] == 200
    sigterm(srv)
    code, text = c.reply()
    assert code == 421, text
    assert "shutting down" in text.lower(), text
    assert c.wait_closed(), "the server did not close the idle session after its 421"
    assert wait_exit(srv) == 0
    assert expect_closed_without_greeting(srv) == "refused"


def test_not_logged_in_client_also_gets_421(start_server, model):
    srv = start_server(model, extra=["--shutdown-grace", "2"])
    c = srv.ctl()  # greeted, never logged in
    sigterm(srv)
    code, text = c.reply()
    assert code == 421, text
    assert c.wait_closed()
    assert wait_exit(srv) == 0


@pytest.mark.parametrize("variant", ["plain", "atomic-new", "atomic-existing"])
def test_upload_stalled_past_the_grace_gets_426_then_421(start_server, model, variant):
    atomic = variant.startswith("atomic")
    extra = ["--shutdown-grace", "1"] + (["--atomic-uploads"] if atomic else [])
    srv = start_server(model, extra=extra)
    old = b"the old content must survive\n" * 100
    if variant == "atomic-existing":
        (srv.root / "up.bin").write_bytes(old)
    part = os.urandom(100_000)

    c = srv.ctl()
    c.login()
    assert c.cmd("TYPE I")[0] == 200
    code, text = c.cmd("EPSV")
    assert code == 229, text
    port = int(text.split("|")[-2])
    d = socket.create_connection((srv.host, port), timeout=TIMEOUT)
    try:
        c.send("STOR up.bin")
        code, text = c.reply()
        assert code in (125, 150), text
        d.sendall(part)

        # wait (bounded) until the server has written all we sent, then pause: the upload
        # is now running and stalled under the client's control
        def written():
            if atomic:
                temps = [p for p in srv.root.iterdir() if p.name.startswith(".up.bin.zocalo-part-")]
                return temps and temps[0].stat().st_size == len(part)
            p = srv.root / "up.bin"
            return p.exists() and p.stat().st_size == len(part)

        assert poll_until(written, TIMEOUT), "the server never wrote the first part of the upload"
        sigterm(srv)
        code, text = c.reply()
        assert code == 426, f"a transfer cut short by shutdown must get 426, got: {text}"
        code, text = c.reply()
        assert code == 421, text
        assert c.wait_closed()
    finally:
        d.close()
    assert wait_exit(srv) == 0

    names = sorted(p.name for p in srv.root.iterdir())
    assert not [n for n in names if "zocalo-part" in n], f"temporary file left behind: {names}"
    if variant == "atomic-new":
        assert not (srv.root / "up.bin").exists(), "an aborted atomic upload created the file"
    elif variant == "atomic-existing":
        assert (srv.root / "up.bin").read_bytes() == old, "an aborted atomic upload replaced the file"
    else:
        got = (srv.root / "up.bin").read_bytes()
        assert part.startswith(got), "stored bytes must be a prefix of what was sent"


def test_download_completed_within_grace_gets_226_then_421(start_server, model):
    srv = start_server(model, extra=["--shutdown-grace", "20"])
    c, d, data, first = start_paused_retr(srv, 16 * 1024 * 1024)
    idle = srv.ctl()
    idle.login()
    try:
        sigterm(srv)
        # the idle session is told at once: the server has seen the signal
        code, text = idle.reply()
        assert code == 421, text
        assert idle.wait_closed()
        assert srv.alive(), "the server exited before the running transfer finished"
        rest = read_all(d)
    finally:
        d.close()
    assert sha256(first + rest) == sha256(data), "download cut or corrupted by the shutdown"
    code, text = c.reply()
    assert code == 226, f"a transfer completed within the grace must get 226, got: {text}"
    code, text = c.reply()
    assert code == 421, text
    assert c.wait_closed()
    assert wait_exit(srv) == 0


def test_new_connections_refused_during_the_grace(start_server, model):
    """While a transfer keeps the server alive in its grace period, a new client must be
    refused at once (listener closed) or closed without a 220 -- not left hanging."""
    srv = start_server(model, extra=["--shutdown-grace", "20"])
    c, d, data, first = start_paused_retr(srv, 16 * 1024 * 1024)
    idle = srv.ctl()
    idle.login()
    try:
        sigterm(srv)
        code, text = idle.reply()  # proof that the server has seen the signal
        assert code == 421, text
        outcome = expect_closed_without_greeting(srv)
        assert outcome in ("refused", "closed", "421"), outcome
        assert srv.alive(), "the server exited before the running transfer finished"
        rest = read_all(d)  # let the transfer end so the server exits now
    finally:
        d.close()
    assert sha256(first + rest) == sha256(data)
    assert c.final_reply()[0] == 226
    assert wait_exit(srv) == 0


def test_download_stalled_past_the_grace_gets_426_not_226(start_server, model):
    srv = start_server(model, extra=["--shutdown-grace", "1"])
    c, d, data, first = start_paused_retr(srv, 16 * 1024 * 1024)
    try:
        sigterm(srv)
        code, text = c.reply()  # the client never reads on: the grace runs out
        assert code == 426, f"an unfinished transfer must get 426 at the end of the grace: {text}"
        code, text = c.reply()
        assert code == 421, text
        assert c.wait_closed()
    finally:
        d.close()
    assert wait_exit(srv) == 0
    assert sha256((srv.root / "down.bin").read_bytes()) == sha256(data)


def test_ftplib_client_sees_421_as_error(start_server, model):
    """A library client blocked in a command gets a clean error, not a hang."""
    srv = start_server(model, extra=["--shutdown-grace", "2"])
    ftp = srv.ftp()
    assert ftp.sendcmd("NOOP").startswith("200")
    sigterm(srv)
    with pytest.raises(ftplib.error_temp, match="^421"):
        ftp.getresp()
    assert wait_exit(srv) == 0


def test_a_stop_is_logged_and_leaves_no_admin_socket(start_server, model, tmp_path):
    admin = tmp_path / "admin.sock"
    srv = start_server(model, extra=["--shutdown-grace", "2", "--admin-socket", admin])
    # A transfer that stalls keeps its session through the grace period.
    c, d, _, _ = start_paused_retr(srv, 64 * 1024 * 1024)
    assert admin.exists()
    sigterm(srv)
    assert wait_exit(srv) == 0
    d.close()
    log = srv.log_path.read_text(errors="replace")
    stopping = [line for line in log.splitlines() if "stopping" in line]
    assert stopping and "grace_s=2" in stopping[0] and "sessions=1" in stopping[0], log[-2000:]
    assert any(re.search(r" stopped( stop_ms=\d+)?$", line) for line in log.splitlines()), (
        log[-2000:])
    assert poll_until(lambda: not admin.exists(), 5), "the admin socket was left behind"
