"""Faults: clients that vanish mid-transfer, a killed worker process, file-system permission
errors, aborted atomic uploads and a full disk. After each, the server must still serve,
and the leak check (conftest) must find its fds/threads/children back at the baseline.
"""

from __future__ import annotations

import ftplib
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest

from helpers import (TIMEOUT, _children_of, download, poll_until, read_all, read_exactly,
                     sha256, upload)

FAULT_MODELS = ["epoll", "uring", "thread", "process"]
NOBODY_UID = 65534


@pytest.fixture(params=FAULT_MODELS)
def model(request):
    return request.param


def rst_close(sock: socket.socket) -> None:
    """Close abruptly: SO_LINGER 0 makes the kernel send RST instead of FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def epsv_port(c) -> int:
    code, text = c.cmd("EPSV")
    assert code == 229, text
    return int(text.split("|")[-2])


def open_transfer(srv, c, command: str) -> socket.socket:
    """On a logged-in raw control connection: TYPE I, EPSV, connect, send `command`, 150."""
    assert c.cmd("TYPE I")[0] == 200
    port = epsv_port(c)
    d = socket.create_connection((srv.host, port), timeout=TIMEOUT)
    c.send(command)
    code, text = c.reply()
    assert code in (125, 150), text
    return d


def assert_server_serves(srv, name: str = "ok.txt", data: bytes = b"still serving\n") -> None:
    (srv.root / name).write_bytes(data)
    ftp = srv.ftp()
    assert ftp.sendcmd("NOOP").startswith("200")
    assert download(ftp, name) == data
    ftp.quit()


def part_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".zocalo-part-" in p.name)


# ==========================================================================
# Clients vanishing mid-transfer


@pytest.mark.parametrize("how", ["rst", "fin"])
def test_client_vanishes_mid_retr(start_server, model, how):
    srv = start_server(model)
    data = os.urandom(16 * 1024 * 1024)
    (srv.root / "big.bin").write_bytes(data)
    c = srv.ctl()
    c.login()
    d = open_transfer(srv, c, "RETR big.bin")
    assert read_exactly(d, 100_000) == data[:100_000]
    close = rst_close if how == "rst" else socket.socket.close
    close(d)
    close(c.sock)
    srv.clients.remove(c)
    assert_server_serves(srv)
    assert sha256((srv.root / "big.bin").read_bytes()) == sha256(data)


@pytest.mark.parametrize("how", ["rst", "fin"])
def test_client_vanishes_mid_stor(start_server, model, how):
    srv = start_server(model)
    sent = os.urandom(300_000)
    c = srv.ctl()
    c.login()
    d = open_transfer(srv, c, "STOR up.bin")
    d.sendall(sent)
    # the server has the bytes before the client disappears
    assert poll_until(lambda: (srv.root / "up.bin").exists()
                      and (srv.root / "up.bin").stat().st_size == len(sent), TIMEOUT)
    close = rst_close if how == "rst" else socket.socket.close
    close(c.sock)  # control first: the server must not wait for a reply it cannot send
    close(d)
    srv.clients.remove(c)
    assert_server_serves(srv)
    assert sent.startswith((srv.root / "up.bin").read_bytes())


def test_client_vanishes_between_pasv_and_transfer(start_server, model):
    srv = start_server(model)
    c = srv.ctl()
    c.login()
    epsv_port(c)  # a passive listener is now open for this session
    rst_close(c.sock)
    srv.clients.remove(c)
    assert_server_serves(srv)


# ==========================================================================
# Process model: a killed child


def test_killing_one_child_leaves_other_sessions_alone(start_server):
    srv = start_server("process", extra=["--max-connections", "2"])
    data = os.urandom(1_000_000)
    (srv.root / "f.bin").write_bytes(data)
    pid = srv.proc.pid

    a = srv.ctl()
    a.login()
    kids_a = set(_children_of(pid))
    assert len(kids_a) == 1, kids_a
    b = srv.ftp()
    kids_ab = set(_children_of(pid))
    assert len(kids_ab) == 2, kids_ab
    (victim,) = kids_a

    os.kill(victim, signal.SIGKILL)
    assert a.wait_closed(), "the killed child's client was not disconnected"
    # the other session carries on, data connections included
    assert b.sendcmd("NOOP").startswith("200")
    assert sha256(download(b, "f.bin")) == sha256(data)
    assert upload(b, "g.bin", data).startswith("226")
    assert sha256((srv.root / "g.bin").read_bytes()) == sha256(data)
    # the dead child is reaped and its connection slot (max 2) is released
    assert poll_until(lambda: victim not in _children_of(pid), TIMEOUT), "killed child not reaped"

    def welcomed():
        c = srv.ctl(greet=False)
        code, text = c.reply()
        if code == 220:
            return c
        assert code == 421, text
        c.close()
        return None

    c = poll_until(welcomed, 5.0, 0.05)
    assert c, "the killed child's connection slot was never released"
    c.login()
    assert c.cmd("NOOP")[0] == 200
    assert b.sendcmd("NOOP").startswith("200")


# ==========================================================================
# File-system permissions, as an unprivileged user (root bypasses permission bits)


@pytest.fixture
def public_root():
    """A root directory `nobody` can reach: pytest's tmp_path lives under a 0700 directory."""
    d = Path(tempfile.mkdtemp(prefix="zocalo-perm-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    for p in d.rglob("*"):
        try:
            p.chmod(0o755 if p.is_dir() else 0o644)
        except OSError:
            pass
    shutil.rmtree(d, ignore_errors=True)


def uid_gid_groups(pid: int) -> tuple[list[int], list[int], list[int]]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = [int(x) for x in value.split()] if key in ("Uid", "Gid", "Groups") else value
    return fields["Uid"], fields["Gid"], fields.get("Groups", [])


def test_run_as_nobody_and_permission_errors(start_server, model, public_root):
    root = public_root
    (root / "ok.txt").write_bytes(b"readable\n")
    (root / "ok.txt").chmod(0o644)
    (root / "secret.txt").write_bytes(b"top secret\n")
    (root / "secret.txt").chmod(0o000)
    (root / "locked").mkdir()
    (root / "locked" / "inside.txt").write_bytes(b"hidden\n")
    (root / "locked").chmod(0o000)
    (root / "drop").mkdir()
    os.chown(root / "drop", NOBODY_UID, -1)

    srv = start_server(model, root=root, extra=["--run-as", "nobody"])
    uid, gid, groups = uid_gid_groups(srv.proc.pid)
    assert uid == [NOBODY_UID] * 4, f"Uid line: {uid}"
    assert gid[0] != 0 and len(set(gid)) == 1, f"Gid line: {gid}"
    assert 0 not in groups, f"supplementary groups still include root: {groups}"

    ftp = srv.ftp()
    if model == "process":
        kids = _children_of(srv.proc.pid)
        assert kids and all(uid_gid_groups(k)[0] == [NOBODY_UID] * 4 for k in kids)
    assert download(ftp, "ok.txt") == b"readable\n"

    for cmd in ("RETR secret.txt", "LIST locked", "NLST locked",
                "RETR locked/inside.txt", "STOR new.txt", "MKD newdir", "DELE ok.txt",
                "RNTO renamed.txt"):
        try:
            if cmd.startswith(("RETR", "LIST", "NLST")):
                resp = ftp.retrbinary(cmd, lambda _: None)
            elif cmd.startswith("STOR"):
                resp = upload(ftp, "new.txt", b"x")
            elif cmd.startswith("RNTO"):
                assert ftp.sendcmd("RNFR ok.txt").startswith("350")  # it exists
                resp = ftp.sendcmd(cmd)  # but the directory is not writable
            else:
                resp = ftp.sendcmd(cmd)
        except (ftplib.error_perm, ftplib.error_temp) as e:
            resp = str(e)
        assert resp.startswith("550"), f"{cmd}: expected 550, got {resp!r}"
        assert "permission denied" in resp.lower(), f"{cmd}: unclear message {resp!r}"
        assert ftp.sendcmd("NOOP").startswith("200"), f"session broken after {cmd}"

    assert not (root / "new.txt").exists() and not (root / "newdir").exists()
    assert (root / "ok.txt").read_bytes() == b"readable\n"
    # where nobody may write, it can
    assert upload(ftp, "drop/mine.txt", b"written by nobody").startswith("226")
    assert (root / "drop" / "mine.txt").stat().st_uid == NOBODY_UID
    assert download(ftp, "drop/mine.txt") == b"written by nobody"


def test_cwd_into_unreadable_directory_refused(start_server, model, public_root):
    """`cd` into a mode-000 directory fails for an unprivileged user; CWD must too (550),
    rather than succeed and leave the client in a directory it cannot list."""
    (public_root / "locked").mkdir()
    (public_root / "locked").chmod(0o000)
    (public_root / "open").mkdir()
    srv = start_server(model, root=public_root, extra=["--run-as", "nobody"])
    ftp = srv.ftp()
    assert ftp.cwd("open").startswith("250")
    assert ftp.cwd("/").startswith("250")
    try:
        resp = ftp.sendcmd("CWD locked")
    except ftplib.error_perm as e:
        resp = str(e)
    assert resp.startswith("550"), f"CWD into a directory nobody cannot enter: {resp!r}"
    assert ftp.pwd() == "/"


# ==========================================================================
# Uploads refused before any data moves must not touch the file


@pytest.mark.parametrize("atomic", [False, True], ids=["plain", "atomic"])
def test_refused_stor_does_not_truncate_existing_file(start_server, model, atomic):
    srv = start_server(model, extra=["--atomic-uploads"] if atomic else [])
    (srv.root / "keep.txt").write_bytes(b"precious content")
    c = srv.ctl()
    c.login()
    code, text = c.cmd("STOR keep.txt")  # no PORT/PASV/EPSV first
    assert code == 425, text
    code, text = c.cmd("APPE keep.txt")
    assert code == 425, text
    assert (srv.root / "keep.txt").read_bytes() == b"precious content", \
        "a STOR refused with 425 (no data connection set up) truncated the existing file"
    assert sorted(p.name for p in srv.root.iterdir()) == ["keep.txt"]
    assert c.cmd("NOOP")[0] == 200


@pytest.mark.parametrize("atomic", [False, True], ids=["plain", "atomic"])
def test_stor_whose_data_connection_never_comes_keeps_existing_file(start_server, model, atomic):
    """PASV, STOR, and the client never connects: 425 after --data-timeout, file untouched."""
    srv = start_server(model, extra=["--data-timeout", "1", *(["--atomic-uploads"] if atomic else [])])
    (srv.root / "keep.txt").write_bytes(b"precious content")
    c = srv.ctl()
    c.login()
    assert c.cmd("TYPE I")[0] == 200
    epsv_port(c)
    c.send("STOR keep.txt")
    code, text = c.final_reply()
    assert code in (425, 426), text
    assert (srv.root / "keep.txt").read_bytes() == b"precious content", \
        "a STOR that never got its data connection truncated the existing file"
    assert sorted(p.name for p in srv.root.iterdir()) == ["keep.txt"]
    assert c.cmd("NOOP")[0] == 200


# ==========================================================================
# Atomic uploads interrupted half way


@pytest.mark.parametrize("how", ["abor", "control-close", "rst"])
def test_atomic_upload_interrupted_keeps_old_file(start_server, model, how):
    """abor: ABOR on the control connection; control-close: the client closes its control
    connection (the data connection stays open, idle, until the server gave up the upload);
    rst: both connections reset. (A FIN on the data connection is, in stream mode, the
    normal end of an upload, so it is not an interruption.)"""
    srv = start_server(model, extra=["--atomic-uploads"])
    old = b"old content, must survive\n" * 1000
    (srv.root / "target.bin").write_bytes(old)
    part = os.urandom(500_000)
    c = srv.ctl()
    c.login()
    d = open_transfer(srv, c, "STOR target.bin")
    d.sendall(part)
    assert poll_until(lambda: any((srv.root / n).stat().st_size == len(part)
                                  for n in part_files(srv.root)), TIMEOUT), \
        f"no temporary upload file of the sent size: {sorted(p.name for p in srv.root.iterdir())}"
    assert (srv.root / "target.bin").read_bytes() == old, "replaced before the upload completed"
    if how == "abor":
        c.send("ABOR")
        codes = [c.reply()[0]]
        if codes[0] == 426:
            codes.append(c.reply()[0])
        d.close()
        assert codes in ([426, 226], [426, 225], [225], [226]), codes
        assert c.cmd("NOOP")[0] == 200
    elif how == "control-close":
        c.sock.close()
        srv.clients.remove(c)
        try:
            assert poll_until(lambda: not part_files(srv.root), TIMEOUT), \
                f"upload not abandoned after its control connection closed: {part_files(srv.root)}"
        finally:
            d.close()
    else:
        rst_close(c.sock)
        rst_close(d)
        srv.clients.remove(c)
    assert poll_until(lambda: not part_files(srv.root), TIMEOUT), \
        f"temporary file left behind: {part_files(srv.root)}"
    assert (srv.root / "target.bin").read_bytes() == old, "an interrupted upload replaced the file"
    assert_server_serves(srv)


def test_atomic_upload_data_connection_dropped_keeps_old_file(start_server, model):
    """The data connection breaks (RST) while the control connection stays: 426, old file
    intact, no temporary file, session usable."""
    srv = start_server(model, extra=["--atomic-uploads"])
    old = b"previous version\n" * 500
    (srv.root / "target.bin").write_bytes(old)
    c = srv.ctl()
    c.login()
    d = open_transfer(srv, c, "STOR target.bin")
    d.sendall(os.urandom(200_000))
    assert poll_until(lambda: part_files(srv.root), TIMEOUT)
    rst_close(d)
    code, text = c.final_reply()
    assert code in (426, 451), f"a broken upload must not be reported complete: {text}"
    assert not part_files(srv.root)
    assert (srv.root / "target.bin").read_bytes() == old
    assert c.cmd("NOOP")[0] == 200


# ==========================================================================
# Disk full


@pytest.fixture
def small_fs(tmp_path):
    """A 1 MiB tmpfs at <root>/small (root = the directory start_server will use)."""
    mnt = tmp_path / "root" / "small"
    mnt.mkdir(parents=True)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                       capture_output=True, timeout=30)
    if p.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs for the disk-full test: {p.stderr!r}")
    yield mnt
    p = subprocess.run(["umount", str(mnt)], capture_output=True, timeout=30)
    if p.returncode != 0:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


@pytest.mark.parametrize("atomic", [False, True], ids=["plain", "atomic"])
def test_disk_full_gets_452_and_session_survives(small_fs, start_server, model, atomic):
    srv = start_server(model, extra=["--atomic-uploads"] if atomic else [])
    old = b"kept\n" * 100
    (small_fs / "big.bin").write_bytes(old)
    (srv.root / "small.txt").write_bytes(b"small file\n")
    c = srv.ctl()
    c.login()
    d = open_transfer(srv, c, "STOR small/big.bin")
    payload = os.urandom(3 * 1024 * 1024)  # three times the file system's size
    try:
        for i in range(0, len(payload), 65536):
            d.sendall(payload[i:i + 65536])
    except OSError:
        pass  # the server may stop reading once the disk is full
    finally:
        d.close()
    code, text = c.final_reply()
    assert code == 452, f"a full disk must be reported as 452: {text}"
    # the session goes on
    assert c.cmd("NOOP")[0] == 200
    assert c.cmd("TYPE I")[0] == 200
    port = epsv_port(c)
    with socket.create_connection((srv.host, port), timeout=TIMEOUT) as d2:
        c.send("RETR small.txt")
        assert c.reply()[0] in (125, 150)
        assert read_all(d2) == b"small file\n"
    assert c.final_reply()[0] == 226
    if atomic:
        assert (small_fs / "big.bin").read_bytes() == old, "a failed atomic upload replaced the file"
        assert not part_files(small_fs), f"temporary file left behind: {part_files(small_fs)}"
    # once space is freed, uploads to that file system work again
    ftp = srv.ftp()
    if not atomic:
        ftp.delete("small/big.bin")
    assert upload(ftp, "small/fits.txt", b"fits now").startswith("226")
    assert (small_fs / "fits.txt").read_bytes() == b"fits now"
    assert_server_serves(srv)
