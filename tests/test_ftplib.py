"""Functional suite: Python's ftplib (and raw sockets) against every server model.

Each test starts its own server on port 0 with a fresh root directory (``srv``), so
tests are independent and run in parallel with ``pytest -n 2``.
"""

from __future__ import annotations

import calendar
import concurrent.futures
import ftplib
import io
import os
import random
import re
import socket
import subprocess
import time

import pytest

from helpers import (PASSWORD, TIMEOUT, USER, code_of, download, have_ipv6, poll_until, read_all,
                     read_exactly, sha256, upload, use_epsv, zocalo_bin)

MTIME = calendar.timegm((2020, 1, 2, 3, 4, 5, 0, 0, 0))  # 2020-01-02 03:04:05 UTC
MTIME_STR = "20200102030405"


def put_file(root, name: str, data: bytes, mtime: int | None = None):
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def is_5xx(code: int) -> bool:
    return 500 <= code < 600


# ==========================================================================
# Login


def test_user_gets_331_then_password_230(srv):
    ftp = srv.ftp(user=None)
    assert ftp.getwelcome().startswith("220")
    assert ftp.sendcmd(f"USER {USER}").startswith("331")
    assert ftp.sendcmd(f"PASS {PASSWORD}").startswith("230")
    assert ftp.pwd() == "/"


@pytest.mark.parametrize("name", ["anonymous", "ftp"])
def test_anonymous_login(srv, name):
    put_file(srv.root, "pub.txt", b"public\n")
    ftp = srv.ftp(user=name, password="guest@example.org")
    assert ftp.pwd() == "/"
    assert download(ftp, "pub.txt") == b"public\n"


def test_bad_password_gets_530(srv):
    ftp = srv.ftp(user=None)
    assert ftp.sendcmd(f"USER {USER}").startswith("331")
    with pytest.raises(ftplib.error_perm, match="^530"):
        ftp.sendcmd("PASS not-the-password")
    # the session is still usable: a correct login now works
    ftp.login(USER, PASSWORD)
    assert ftp.pwd() == "/"


def test_unknown_user_gets_331_then_530(srv):
    """No user enumeration: USER always answers 331."""
    ftp = srv.ftp(user=None)
    assert ftp.sendcmd("USER nobody-like-this").startswith("331")
    with pytest.raises(ftplib.error_perm, match="^530"):
        ftp.sendcmd("PASS whatever")


def test_no_anonymous_refuses_anonymous(start_server, model):
    srv = start_server(model, anonymous=False)
    ftp = srv.ftp(user=None)
    assert ftp.sendcmd("USER anonymous").startswith("331")
    with pytest.raises(ftplib.error_perm, match="^530"):
        ftp.sendcmd("PASS guest@")


def test_failed_login_is_delayed(start_server, model):
    srv = start_server(model, fail_delay_ms=500)
    ftp = srv.ftp(user=None)
    ftp.sendcmd(f"USER {USER}")
    t0 = time.monotonic()
    with pytest.raises(ftplib.error_perm, match="^530"):
        ftp.sendcmd("PASS wrong")
    assert time.monotonic() - t0 >= 0.4, "a failed login must be answered after a delay"


@pytest.mark.concurrent
def test_failed_login_delay_does_not_stall_other_clients(start_server, model):
    srv = start_server(model, fail_delay_ms=1500)
    slow = srv.ctl()
    assert slow.cmd(f"USER {USER}")[0] == 331
    slow.send("PASS wrong")
    fast = srv.ctl()  # greeting must arrive even though `slow` is being delayed
    fast.login()
    assert fast.cmd("NOOP")[0] == 200
    assert not slow.readable(0), "the delayed 530 arrived before another client was served"
    code, text = slow.reply()
    assert code == 530, text


def test_commands_before_login_get_530(srv):
    ftp = srv.ftp(user=None)
    for cmd in ("PWD", "CWD /", "LIST", "RETR x", "STOR x", "MKD d", "SIZE x"):
        assert code_of(ftp, cmd) == 530, cmd


def test_pass_without_user_gets_503(srv):
    ftp = srv.ftp(user=None)
    assert code_of(ftp, "PASS secret") == 503


# ==========================================================================
# Transfers


@pytest.mark.parametrize("size", [0, 1, 65536, "32MiB"])
def test_upload_download_checksum(srv, big, size):
    data = big if size == "32MiB" else os.urandom(size)
    ftp = srv.ftp()
    upload(ftp, "payload.bin", data)
    assert sha256((srv.root / "payload.bin").read_bytes()) == sha256(data)
    assert ftp.size("payload.bin") == len(data)
    assert sha256(download(ftp, "payload.bin")) == sha256(data)


def test_retr_missing_file_550(srv):
    ftp = srv.ftp()
    with pytest.raises(ftplib.error_perm, match="^550"):
        download(ftp, "no-such-file")


def test_rest_resumes_retr(srv):
    data = os.urandom(200_000)
    put_file(srv.root, "r.bin", data)
    ftp = srv.ftp()
    assert download(ftp, "r.bin", rest=70_001) == data[70_001:]
    assert download(ftp, "r.bin", rest=len(data)) == b""


def test_rest_resumes_stor(srv):
    data = os.urandom(300_000)
    ftp = srv.ftp()
    upload(ftp, "s.bin", data[:123_457])
    upload(ftp, "s.bin", data[123_457:], rest=123_457)
    assert sha256((srv.root / "s.bin").read_bytes()) == sha256(data)
    assert sha256(download(ftp, "s.bin")) == sha256(data)


def test_appe_appends(srv):
    a, b = os.urandom(10_000), os.urandom(20_000)
    ftp = srv.ftp()
    upload(ftp, "ap.bin", a, cmd="APPE")  # APPE creates a missing file
    upload(ftp, "ap.bin", b, cmd="APPE")
    assert (srv.root / "ap.bin").read_bytes() == a + b


def test_stou_creates_unique_files(srv):
    put_file(srv.root, "existing", b"keep")
    ftp = srv.ftp()
    ftp.voidcmd("TYPE I")
    made = []
    for payload in (b"first unique", b"second unique"):
        before = set(os.listdir(srv.root))
        conn = ftp.transfercmd("STOU")
        conn.sendall(payload)
        conn.close()
        assert ftp.voidresp()[:3] in ("226", "250")
        new = set(os.listdir(srv.root)) - before
        assert len(new) == 1, new
        name = new.pop()
        assert (srv.root / name).read_bytes() == payload
        made.append(name)
    assert made[0] != made[1]
    assert (srv.root / "existing").read_bytes() == b"keep"


def test_rename(srv):
    put_file(srv.root, "old.txt", b"content")
    ftp = srv.ftp()
    ftp.mkd("dir")
    ftp.rename("old.txt", "dir/new.txt")
    assert not (srv.root / "old.txt").exists()
    assert (srv.root / "dir" / "new.txt").read_bytes() == b"content"
    with pytest.raises(ftplib.error_perm, match="^550"):
        ftp.sendcmd("RNFR does-not-exist")


def test_rnto_without_rnfr_503(srv):
    ftp = srv.ftp()
    assert code_of(ftp, "RNTO whatever") == 503


def test_dele(srv):
    put_file(srv.root, "gone.txt", b"x")
    ftp = srv.ftp()
    assert ftp.delete("gone.txt").startswith("250")
    assert not (srv.root / "gone.txt").exists()
    with pytest.raises(ftplib.error_perm, match="^550"):
        ftp.delete("gone.txt")


# ==========================================================================
# Directories


def test_mkd_cwd_pwd_cdup_rmd(srv):
    ftp = srv.ftp()
    assert ftp.mkd("d1") in ("/d1", "d1")
    assert (srv.root / "d1").is_dir()
    ftp.cwd("d1")
    assert ftp.pwd() == "/d1"
    ftp.mkd("d2")
    ftp.cwd("d2")
    assert ftp.pwd() == "/d1/d2"
    assert ftp.sendcmd("CDUP")[:3] in ("200", "250")
    assert ftp.pwd() == "/d1"
    ftp.cwd("/")
    with pytest.raises(ftplib.error_perm, match="^550"):
        ftp.rmd("d1")  # not empty
    ftp.rmd("d1/d2")
    ftp.rmd("/d1")
    assert not (srv.root / "d1").exists()
    with pytest.raises(ftplib.error_perm, match="^550"):
        ftp.cwd("d1")


def test_x_forms_of_directory_commands(srv):
    ftp = srv.ftp()
    assert ftp.sendcmd("XMKD xd").startswith("257")
    assert (srv.root / "xd").is_dir()
    assert ftp.sendcmd("XCWD xd").startswith("250")
    assert '"/xd"' in ftp.sendcmd("XPWD")
    assert ftp.sendcmd("XCUP")[:3] in ("200", "250")
    assert '"/"' in ftp.sendcmd("XPWD")
    assert ftp.sendcmd("XRMD xd").startswith("250")
    assert not (srv.root / "xd").exists()


def test_cwd_into_file_fails(srv):
    put_file(srv.root, "plain.txt", b"x")
    ftp = srv.ftp()
    with pytest.raises(ftplib.error_perm, match="^550"):
        ftp.cwd("plain.txt")
    assert ftp.pwd() == "/"


def test_mkd_existing_fails(srv):
    (srv.root / "here").mkdir()
    ftp = srv.ftp()
    with pytest.raises(ftplib.error_perm, match="^550"):
        ftp.mkd("here")


# ==========================================================================
# Listings and file facts


@pytest.fixture
def tree(srv):
    put_file(srv.root, "alpha.txt", b"a" * 123, mtime=MTIME)
    put_file(srv.root, "sub/inner.txt", b"inner")
    return srv


def test_list(tree):
    ftp = tree.ftp()
    lines: list[str] = []
    ftp.retrlines("LIST", lines.append)
    alpha = [l for l in lines if l.endswith(" alpha.txt")]
    sub = [l for l in lines if l.endswith(" sub")]
    assert len(alpha) == 1 and len(sub) == 1, lines
    assert alpha[0].startswith("-") and " 123 " in alpha[0], alpha
    assert sub[0].startswith("d"), sub
    inner: list[str] = []
    ftp.retrlines("LIST sub", inner.append)
    assert any(l.endswith(" inner.txt") for l in inner), inner


def test_nlst(tree):
    ftp = tree.ftp()
    assert sorted(ftp.nlst()) == ["alpha.txt", "sub"]
    assert [n.rsplit("/", 1)[-1] for n in ftp.nlst("sub")] == ["inner.txt"]


def test_mlsd_facts(tree):
    ftp = tree.ftp()
    entries = {name: facts for name, facts in ftp.mlsd()
               if facts.get("type", "").lower() not in ("cdir", "pdir")}
    assert set(entries) == {"alpha.txt", "sub"}
    alpha, sub = entries["alpha.txt"], entries["sub"]
    assert alpha["type"].lower() == "file"
    assert alpha["size"] == "123"
    assert alpha["modify"].startswith(MTIME_STR)
    assert sub["type"].lower() == "dir"
    assert re.fullmatch(r"\d{14}(\.\d+)?", sub["modify"])


def test_mlst(tree):
    ftp = tree.ftp()
    resp = ftp.sendcmd("MLST alpha.txt")
    lines = resp.splitlines()
    assert lines[0].startswith("250-") and lines[-1].startswith("250"), resp
    entry = lines[1]
    assert entry.startswith(" "), "the MLST fact line starts with a space"
    facts = entry.strip().lower()
    assert "type=file;" in facts and "size=123;" in facts and f"modify={MTIME_STR}" in facts
    assert entry.rstrip().endswith("alpha.txt")
    with pytest.raises(ftplib.error_perm, match="^550"):
        ftp.sendcmd("MLST missing.txt")


def test_size_and_mdtm(tree):
    ftp = tree.ftp()
    ftp.voidcmd("TYPE I")
    assert ftp.sendcmd("SIZE alpha.txt") == "213 123"
    resp = ftp.sendcmd("MDTM alpha.txt")
    assert resp.startswith("213 " + MTIME_STR), resp
    with pytest.raises(ftplib.error_perm, match="^550"):
        ftp.sendcmd("SIZE missing.txt")
    with pytest.raises(ftplib.error_perm, match="^550"):
        ftp.sendcmd("MDTM missing.txt")
    with pytest.raises(ftplib.error_perm, match="^550"):
        ftp.sendcmd("SIZE sub")


# ==========================================================================
# ASCII mode

LINES_LF = b"one\ntwo\n\nthree four\n"


def ascii_corpus() -> bytes:
    rng = random.Random(959)
    words = [b"ftp", b"zocalo", b"line", b"a", b"", b"x" * 300]
    return b"".join(b" ".join(rng.choice(words) for _ in range(rng.randrange(6))) + b"\n"
                    for _ in range(20_000))


def test_ascii_retr_sends_crlf(srv):
    put_file(srv.root, "lines.txt", LINES_LF)
    ftp = srv.ftp()
    ftp.voidcmd("TYPE A")
    conn = ftp.transfercmd("RETR lines.txt")
    raw = read_all(conn)
    conn.close()
    ftp.voidresp()
    assert raw == LINES_LF.replace(b"\n", b"\r\n")
    got: list[str] = []
    ftp.retrlines("RETR lines.txt", got.append)
    assert got == ["one", "two", "", "three four"]
    # TYPE I gives the bytes on disk exactly
    assert download(ftp, "lines.txt") == LINES_LF


def test_ascii_stor_stores_lf(srv):
    ftp = srv.ftp()
    ftp.storlines("STOR up.txt", io.BytesIO(b"alpha\nbeta\r\ngamma\n"))  # sends CRLF lines
    assert (srv.root / "up.txt").read_bytes() == b"alpha\nbeta\ngamma\n"


def test_ascii_large_both_directions(srv):
    lf = ascii_corpus()
    crlf = lf.replace(b"\n", b"\r\n")
    ftp = srv.ftp()
    ftp.voidcmd("TYPE A")
    conn = ftp.transfercmd("STOR big.txt")
    conn.sendall(crlf)
    conn.close()
    ftp.voidresp()
    assert sha256((srv.root / "big.txt").read_bytes()) == sha256(lf)
    ftp.voidcmd("TYPE A")
    conn = ftp.transfercmd("RETR big.txt")
    raw = read_all(conn)
    conn.close()
    ftp.voidresp()
    assert sha256(raw) == sha256(crlf)


def test_binary_mode_is_byte_exact(srv):
    data = b"x\r\ny\nz\r\r\n\x00\xff"
    ftp = srv.ftp()
    upload(ftp, "b.bin", data)
    assert (srv.root / "b.bin").read_bytes() == data
    assert download(ftp, "b.bin") == data


# ==========================================================================
# Informational and parameter commands


def test_feat(srv):
    ftp = srv.ftp(user=None)  # FEAT is allowed before login
    resp = ftp.sendcmd("FEAT")
    lines = resp.splitlines()
    assert lines[0].startswith("211-") and lines[-1].startswith("211 "), resp
    body = lines[1:-1]
    assert all(l.startswith(" ") for l in body), body
    feats = {l.strip().upper() for l in body}
    for needed in ("SIZE", "MDTM", "REST STREAM", "UTF8", "HOST"):
        assert needed in feats, f"FEAT lacks {needed}: {sorted(feats)}"
    mlst = [f for f in feats if f.startswith("MLST ")]
    assert mlst, f"FEAT lacks MLST: {sorted(feats)}"
    for fact in ("TYPE", "SIZE", "MODIFY"):
        assert fact in mlst[0], mlst


def test_help(srv):
    ftp = srv.ftp()
    assert ftp.sendcmd("HELP").startswith("214")
    assert ftp.sendcmd("HELP RETR").startswith("214")


def test_site_help(srv):
    ftp = srv.ftp()
    assert ftp.sendcmd("SITE HELP")[:3] in ("200", "214")


def test_syst(srv):
    ftp = srv.ftp()
    assert ftp.sendcmd("SYST").startswith("215 ")


def test_noop_and_allo(srv):
    ftp = srv.ftp()
    assert ftp.sendcmd("NOOP").startswith("200")
    assert ftp.sendcmd("ALLO 1000")[:3] in ("200", "202")


def test_stat_without_argument(srv):
    ftp = srv.ftp()
    resp = ftp.sendcmd("STAT")
    lines = resp.splitlines()
    assert lines[0].startswith("211-") and lines[-1].startswith("211 "), resp


def test_stat_with_path(tree):
    ftp = tree.ftp()
    resp = ftp.sendcmd("STAT /")
    assert resp[:3] in ("211", "212", "213"), resp
    assert "alpha.txt" in resp and "sub" in resp
    resp = ftp.sendcmd("STAT alpha.txt")
    assert resp[:3] in ("211", "212", "213") and "alpha.txt" in resp, resp


@pytest.mark.parametrize("cmd,expected", [
    ("TYPE A", 200), ("TYPE A N", 200), ("TYPE I", 200), ("TYPE L 8", 200),
    ("TYPE E", 504), ("MODE S", 200), ("MODE B", 504), ("MODE C", 504),
    ("STRU F", 200), ("STRU R", 504), ("STRU P", 504),
])
def test_type_mode_stru(srv, cmd, expected):
    ftp = srv.ftp()
    assert code_of(ftp, cmd) == expected


def test_bad_parameters_are_501_or_504(srv):
    ftp = srv.ftp()
    for cmd in ("TYPE Z", "MODE Z", "STRU Z"):
        assert code_of(ftp, cmd) in (501, 504), cmd


def test_unknown_command_500_or_502(srv):
    ftp = srv.ftp()
    assert code_of(ftp, "FROBNICATE now") in (500, 502)
    assert code_of(ftp, "SITE FROBNICATE") in (500, 501, 502, 504)
    assert ftp.sendcmd("NOOP").startswith("200")


def test_host_before_login(srv):
    ftp = srv.ftp(user=None)
    assert ftp.sendcmd("HOST 127.0.0.1").startswith("220")
    ftp.login(USER, PASSWORD)
    assert code_of(ftp, "HOST 127.0.0.1") == 503  # RFC 7151: not after login


def test_rein_resets_the_session(srv):
    ftp = srv.ftp()
    ftp.mkd("d")
    ftp.cwd("d")
    assert ftp.sendcmd("REIN").startswith("220")
    assert code_of(ftp, "PWD") == 530
    ftp.login(USER, PASSWORD)
    assert ftp.pwd() == "/"


def test_opts_utf8_on(srv):
    ftp = srv.ftp()
    assert ftp.sendcmd("OPTS UTF8 ON")[:3] in ("200", "202")


def test_utf8_file_names(srv):
    name = "héllo wörld — 日本語 ✓.txt"
    dname = "dossier_été"
    ftp = srv.ftp()
    ftp.sendcmd("OPTS UTF8 ON")
    upload(ftp, name, b"unicode")
    assert (srv.root / name).read_bytes() == b"unicode"
    assert name in ftp.nlst()
    assert download(ftp, name) == b"unicode"
    assert any(n == name for n, _ in ftp.mlsd())
    ftp.mkd(dname)
    ftp.cwd(dname)
    assert ftp.pwd() == "/" + dname
    assert (srv.root / dname).is_dir()


# ==========================================================================
# Data connections: PASV, EPSV, PORT, EPRT, IPv6


def test_pasv_reply(srv):
    ftp = srv.ftp()
    resp = ftp.sendcmd("PASV")
    m = re.search(r"(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)", resp)
    assert resp.startswith("227") and m, resp
    assert m.group(1, 2, 3, 4) == ("127", "0", "0", "1")


def test_epsv_transfer(srv):
    data = os.urandom(100_000)
    put_file(srv.root, "e.bin", data)
    ftp = srv.ftp()
    assert re.match(r"^229 .*\(\|\|\|\d+\|\)", ftp.sendcmd("EPSV 1"))
    use_epsv(ftp)
    assert download(ftp, "e.bin") == data
    upload(ftp, "e2.bin", data)
    assert (srv.root / "e2.bin").read_bytes() == data


def test_epsv_all_refuses_pasv_and_port(srv):
    put_file(srv.root, "f.txt", b"after epsv all")
    ftp = srv.ftp()
    assert ftp.sendcmd("EPSV ALL").startswith("2")
    assert is_5xx(code_of(ftp, "PASV"))
    assert is_5xx(code_of(ftp, "PORT 127,0,0,1,200,10"))
    use_epsv(ftp)
    assert download(ftp, "f.txt") == b"after epsv all"


def test_port_active_mode(srv):
    data = os.urandom(500_000)
    put_file(srv.root, "a.bin", data)
    ftp = srv.ftp()
    ftp.set_pasv(False)
    assert download(ftp, "a.bin") == data
    upload(ftp, "a2.bin", data)
    assert (srv.root / "a2.bin").read_bytes() == data
    lines: list[str] = []
    ftp.retrlines("LIST", lines.append)
    assert any(l.endswith(" a.bin") for l in lines)


def test_eprt_ipv4_active_mode(srv):
    data = os.urandom(100_000)
    put_file(srv.root, "x.bin", data)
    ftp = srv.ftp()
    ftp.voidcmd("TYPE I")
    with socket.create_server(("127.0.0.1", 0)) as ls:
        ls.settimeout(TIMEOUT)
        assert ftp.sendcmd(f"EPRT |1|127.0.0.1|{ls.getsockname()[1]}|").startswith("200")
        assert ftp.sendcmd("RETR x.bin")[:3] in ("125", "150")
        conn, peer = ls.accept()
        with conn:
            conn.settimeout(TIMEOUT)
            assert peer[0] == "127.0.0.1"
            got = read_all(conn)
    ftp.voidresp()
    assert got == data


def test_ipv6_epsv(start_server, model, ipv6):
    srv = start_server(model, ipv6=True)
    data = os.urandom(300_000)
    put_file(srv.root, "six.bin", data)
    ftp = srv.ftp(family=6)  # ftplib uses EPSV on an IPv6 control connection
    assert ftp.sock.getpeername()[0] == "::1"
    assert download(ftp, "six.bin") == data
    upload(ftp, "six2.bin", data)
    assert (srv.root / "six2.bin").read_bytes() == data
    assert "six.bin" in ftp.nlst()
    ftp.quit()  # (one client at a time, for the iterative model)
    # the IPv4 listener still works alongside
    assert download(srv.ftp(), "six.bin") == data


def test_ipv6_eprt_active_mode(start_server, model, ipv6):
    srv = start_server(model, ipv6=True)
    data = os.urandom(100_000)
    put_file(srv.root, "six.bin", data)
    ftp = srv.ftp(family=6)
    ftp.set_pasv(False)  # ftplib sends EPRT |2|::1|port| on IPv6
    assert download(ftp, "six.bin") == data


def test_masquerade_and_passive_port_range(start_server, model):
    # Let the kernel choose a free port, then give it to the server as its range.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        pport = probe.getsockname()[1]
    srv = start_server(model, extra=["--masquerade", "10.0.0.1", "--passive-ports", f"{pport}-{pport}"])
    data = os.urandom(50_000)
    put_file(srv.root, "m.bin", data)
    ftp = srv.ftp()
    ftp.voidcmd("TYPE I")
    host, port = ftplib.parse227(ftp.sendcmd("PASV"))
    assert (host, port) == ("10.0.0.1", pport)
    # connect to where the control connection goes, never to the masqueraded address
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as conn:
        assert ftp.sendcmd("RETR m.bin")[:3] in ("125", "150")
        got = read_all(conn)
    ftp.voidresp()
    assert got == data


# ==========================================================================
# The control channel stays live during a transfer


def start_big_retr(srv, big):
    (srv.root / "big.bin").write_bytes(big)
    ftp = srv.ftp()
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd("RETR big.bin")
    first = read_exactly(conn, 65536)
    assert first == big[:65536]
    return ftp, conn, first


def test_noop_during_retr(srv, big):
    ftp, conn, first = start_big_retr(srv, big)
    with conn:
        ftp.sock.sendall(b"NOOP\r\n")
        assert ftp.getmultiline().startswith("200")
        rest = read_all(conn)
    assert ftp.voidresp().startswith("226")
    assert sha256(first + rest) == sha256(big)


def test_stat_during_retr_shows_progress(srv, big):
    ftp, conn, first = start_big_retr(srv, big)
    with conn:
        ftp.sock.sendall(b"STAT\r\n")
        resp = ftp.getmultiline()
        rest = read_all(conn)
    lines = resp.splitlines()
    assert lines[0][:4] in ("211-", "213-") and len(lines) >= 2, resp
    assert re.search(r"\d+", resp) and re.search(r"bytes", resp, re.I), resp
    assert ftp.voidresp().startswith("226")
    assert sha256(first + rest) == sha256(big)


def test_abor_during_retr(srv, big):
    put_file(srv.root, "small.txt", b"still usable")
    ftp, conn, _ = start_big_retr(srv, big)
    with conn:
        ftp.sock.sendall(b"ABOR\r\n")
        codes = [ftp.getmultiline()[:3]]
        if codes[0] == "426":
            codes.append(ftp.getmultiline()[:3])
    assert codes in (["426", "226"], ["426", "225"]), codes
    assert ftp.sendcmd("NOOP").startswith("200")
    assert download(ftp, "small.txt") == b"still usable"
    assert sha256((srv.root / "big.bin").read_bytes()) == sha256(big)


def test_abor_during_stor(srv):
    sent = os.urandom(256 * 1024)
    ftp = srv.ftp()
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd("STOR partial.bin")
    with conn:
        conn.sendall(sent)
        ftp.sock.sendall(b"ABOR\r\n")
        codes = [ftp.getmultiline()[:3]]
        if codes[0] == "426":
            codes.append(ftp.getmultiline()[:3])
    assert codes in (["426", "226"], ["426", "225"], ["226"], ["225"]), codes
    assert ftp.sendcmd("NOOP").startswith("200")
    path = srv.root / "partial.bin"
    if path.exists():
        assert sent.startswith(path.read_bytes()), "stored bytes must be a prefix of what was sent"


def test_abor_without_transfer(srv):
    ftp = srv.ftp()
    assert ftp.sendcmd("ABOR")[:3] in ("225", "226")
    assert ftp.sendcmd("NOOP").startswith("200")


# ==========================================================================
# Confinement: .., absolute paths, symlinks


def test_cwd_dotdot_stays_inside_root(srv):
    put_file(srv.root, "marker.txt", b"m")
    ftp = srv.ftp()
    for target in ("../../..", "..", "/..", "/../../etc"):
        code = code_of(ftp, f"CWD {target}")
        assert code in (250, 550), (target, code)
        assert ftp.pwd() == "/", target
    ftp.cwd("../../..")
    assert ftp.pwd() == "/"
    assert "marker.txt" in ftp.nlst()


def test_cdup_at_root_stays_at_root(srv):
    ftp = srv.ftp()
    assert ftp.sendcmd("CDUP")[:3] in ("200", "250")
    assert ftp.pwd() == "/"


def test_retr_outside_root_refused(srv):
    (srv.root / "sub").mkdir()
    ftp = srv.ftp()
    ftp.cwd("sub")
    for path in ("../../etc/passwd", "../../../../../../../../etc/passwd", "/etc/passwd",
                 "/../etc/passwd", "..%2f..%2fetc%2fpasswd"):
        with pytest.raises(ftplib.error_perm, match="^55"):
            download(ftp, path)
    for path in ("../../etc/passwd", "/etc/passwd"):
        assert is_5xx(code_of(ftp, f"SIZE {path}"))


def test_root_absolute_paths_map_to_root(srv):
    put_file(srv.root, "etc/passwd", b"not the real one")
    ftp = srv.ftp()
    assert download(ftp, "/etc/passwd") == b"not the real one"
    ftp.cwd("/etc")
    assert download(ftp, "../../../etc/passwd") == b"not the real one"


def test_symlinks_out_of_root_refused(srv, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"secret")
    os.symlink(outside, srv.root / "out_dir")
    os.symlink(outside / "secret.txt", srv.root / "out_file")
    os.symlink("/etc", srv.root / "etc_link")
    ftp = srv.ftp()
    for path in ("etc_link", "out_dir"):
        with pytest.raises(ftplib.error_perm, match="^550"):
            ftp.cwd(path)
        assert ftp.pwd() == "/"
    for path in ("etc_link/passwd", "out_dir/secret.txt", "out_file"):
        with pytest.raises(ftplib.error_perm, match="^55"):
            download(ftp, path)
        assert is_5xx(code_of(ftp, f"SIZE {path}")), path
    with pytest.raises(ftplib.error_perm, match="^55"):
        upload(ftp, "out_dir/planted.txt", b"evil")
    with pytest.raises(ftplib.error_perm, match="^55"):
        ftp.mkd("out_dir/newdir")
    with pytest.raises(ftplib.error_perm, match="^55"):
        ftp.delete("out_dir/secret.txt")
    assert sorted(os.listdir(outside)) == ["secret.txt"]
    assert (outside / "secret.txt").read_bytes() == b"secret"


def test_mlst_of_a_symlink_agrees_with_mlsd(srv):
    (srv.root / "real.txt").write_bytes(b"real")
    os.symlink("real.txt", srv.root / "alias.txt")
    ftp = srv.ftp()
    listed = {name: facts for name, facts in ftp.mlsd()}
    assert listed["alias.txt"]["type"] == "OS.unix=slink:real.txt", listed
    reply = ftp.sendcmd("MLST alias.txt")
    facts_line = reply.splitlines()[1]
    assert "type=OS.unix=slink:real.txt;" in facts_line, reply
    assert "type=file;" in ftp.sendcmd("MLST real.txt").splitlines()[1]


# ==========================================================================
# Bounce attacks, hostile input


def test_port_to_foreign_address_refused(srv):
    ftp = srv.ftp()
    # 10.0.0.1 is not the client's address: refused before any connection is made
    assert is_5xx(code_of(ftp, "PORT 10,0,0,1,195,80"))
    assert is_5xx(code_of(ftp, "EPRT |1|10.0.0.1|50000|"))
    assert ftp.sendcmd("NOOP").startswith("200")


def test_port_to_privileged_port_refused(srv):
    ftp = srv.ftp()
    assert is_5xx(code_of(ftp, "PORT 127,0,0,1,0,21"))
    assert is_5xx(code_of(ftp, "EPRT |1|127.0.0.1|21|"))
    assert is_5xx(code_of(ftp, "PORT 127,0,0,1,3,255"))  # 1023


def test_malformed_port_and_eprt_501(srv):
    ftp = srv.ftp()
    for cmd in ("PORT 1,2,3", "PORT 127,0,0,1,300,1", "EPRT garbage", "EPRT |1|127.0.0.1|99999|"):
        assert code_of(ftp, cmd) in (500, 501), cmd


def test_unsupported_network_protocol_522(srv):
    """RFC 2428: an unsupported network protocol in EPRT/EPSV gets 522."""
    ftp = srv.ftp()
    assert code_of(ftp, "EPRT |9|127.0.0.1|5000|") == 522
    assert code_of(ftp, "EPSV 9") == 522
    assert code_of(ftp, "EPSV 2") == 522  # IPv6 data connection on an IPv4 control connection


def test_overlong_line_gets_500_and_server_survives(srv):
    c = srv.ctl()
    try:
        c.sock.sendall(b"A" * 100_000)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server closed the connection after its cap
    try:
        code, text = c.reply()
        assert code == 500, text
    except ConnectionResetError:
        pass  # the 500 may be discarded by the RST of a close with unread input
    c.close()
    other = srv.ctl()
    other.login()
    assert other.cmd("NOOP")[0] == 200


def test_anonymous_is_read_only(srv):
    put_file(srv.root, "ro.txt", b"read only")
    (srv.root / "rodir").mkdir()
    ftp = srv.ftp(user="anonymous", password="guest@")
    assert download(ftp, "ro.txt") == b"read only"
    with pytest.raises(ftplib.error_perm, match="^550"):
        upload(ftp, "new.txt", b"x")
    with pytest.raises(ftplib.error_perm, match="^550"):
        upload(ftp, "ro.txt", b"x", cmd="APPE")
    with pytest.raises(ftplib.error_perm, match="^550"):
        ftp.mkd("newdir")
    with pytest.raises(ftplib.error_perm, match="^550"):
        ftp.rmd("rodir")
    with pytest.raises(ftplib.error_perm, match="^550"):
        ftp.delete("ro.txt")
    with pytest.raises(ftplib.error_perm, match="^550"):
        ftp.rename("ro.txt", "moved.txt")
    assert sorted(os.listdir(srv.root)) == ["ro.txt", "rodir"]
    assert (srv.root / "ro.txt").read_bytes() == b"read only"


def test_anonymous_with_write(start_server, model):
    srv = start_server(model, write=True)
    ftp = srv.ftp(user="anonymous", password="guest@")
    upload(ftp, "anon.txt", b"anonymous upload")
    assert (srv.root / "anon.txt").read_bytes() == b"anonymous upload"


# ==========================================================================
# Timeouts


def test_idle_timeout_sends_421_and_closes(start_server, model):
    srv = start_server(model, extra=["--idle-timeout", "1"])
    c = srv.ctl()
    c.login()
    code, text = c.reply()  # nothing sent: the next thing we hear is the timeout
    assert code == 421, text
    assert c.wait_closed()


def test_data_timeout_when_client_never_connects(start_server, model):
    srv = start_server(model, extra=["--data-timeout", "1"])
    put_file(srv.root, "f.bin", b"x" * 1000)
    c = srv.ctl()
    c.login()
    assert c.cmd("TYPE I")[0] == 200
    assert c.cmd("PASV")[0] == 227
    t0 = time.monotonic()
    c.send("RETR f.bin")
    code, text = c.final_reply()
    assert code in (425, 426), text
    assert time.monotonic() - t0 < TIMEOUT


# ==========================================================================
# Server models: sequential, concurrent, limits


def test_many_sequential_sessions(srv):
    put_file(srv.root, "s.txt", b"seq")
    for _ in range(20):
        ftp = srv.ftp()
        assert download(ftp, "s.txt") == b"seq"
        ftp.quit()


def test_iterative_second_client_waits(start_server):
    srv = start_server("iterative")
    first = srv.ctl()
    first.login()
    second = srv.ctl(greet=False)
    assert not second.readable(0.5), "iterative model greeted a second client concurrently"
    assert first.cmd("QUIT")[0] == 221
    assert second.readable(TIMEOUT)
    code, text = second.reply()
    assert code == 220, text
    second.login()
    assert second.cmd("NOOP")[0] == 200


@pytest.mark.concurrent
def test_second_client_served_while_first_idles(srv):
    first = srv.ctl()
    first.login()
    second = srv.ctl()  # greeting must come while `first` is still connected
    second.login()
    assert second.cmd("NOOP")[0] == 200
    assert first.cmd("NOOP")[0] == 200


@pytest.mark.concurrent
def test_parallel_downloads(srv):
    files = {f"p{i}.bin": os.urandom(1_000_000 + i) for i in range(4)}
    for name, data in files.items():
        put_file(srv.root, name, data)
    clients = [srv.ftp() for _ in files]  # all connected at once

    def fetch(args):
        ftp, name = args
        return name, sha256(download(ftp, name))

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = dict(pool.map(fetch, zip(clients, files), timeout=60))
    assert results == {n: sha256(d) for n, d in files.items()}


def _connect_expecting_welcome(srv):
    c = srv.ctl(greet=False)
    code, _ = c.reply()
    if code == 220:
        return c
    c.close()
    return None


@pytest.mark.concurrent
def test_max_connections(start_server, model):
    srv = start_server(model, extra=["--max-connections", "2"])
    a = srv.ctl()
    srv.ctl()
    c = srv.ctl(greet=False)
    code, text = c.reply()
    assert code == 421, text
    assert c.wait_closed()
    assert a.cmd("QUIT")[0] == 221
    assert a.wait_closed()
    # the freed slot is reusable (the server may learn of the close a moment later)
    assert poll_until(lambda: _connect_expecting_welcome(srv), 5.0, 0.05)


@pytest.mark.concurrent
def test_max_per_ip(start_server, model):
    six = have_ipv6()
    srv = start_server(model, ipv6=six, extra=["--max-per-ip", "1", "--max-connections", "10"])
    srv.ctl()
    b = srv.ctl(greet=False)
    code, text = b.reply()
    assert code == 421, text
    if six:
        other_ip = srv.ctl(family=6)  # ::1 is another client address: not limited
        other_ip.login()


# ---- every command gets exactly one reply, in order; REST and names checked first ---------


def pasv_data(ctl) -> socket.socket:
    code, text = ctl.cmd("EPSV")
    assert code == 229, text
    port = int(re.search(r"\|\|\|(\d+)\|", text)[1])
    return socket.create_connection((ctl.sock.getpeername()[0], port), timeout=TIMEOUT)


def retr_under_way(srv, big):
    """A control connection whose RETR of a 32 MiB file has started and is not being read."""
    put_file(srv.root, "big.bin", big)
    c = srv.ctl()
    c.login()
    c.cmd("TYPE I")
    data = pasv_data(c)
    c.send("RETR big.bin")
    assert c.reply()[0] == 150
    data.recv(4096)
    return c, data


def test_pipelined_commands_after_abor_are_answered_in_order(srv, big):
    c, data = retr_under_way(srv, big)
    c.sock.sendall(b"ABOR\r\nNOOP\r\nNOOP\r\nPWD\r\n")
    codes = [c.reply()[0] for _ in range(5)]
    data.close()
    assert codes == [426, 226, 200, 200, 257], codes


def test_a_thousand_aborts_get_a_thousand_replies(srv, big):
    c, data = retr_under_way(srv, big)
    c.sock.sendall(b"ABOR\r\n" * 1000 + b"NOOP\r\n")
    codes = []
    for _ in range(1100):
        code = c.reply()[0]
        codes.append(code)
        if code == 200:
            break
    data.close()
    assert codes[:2] == [426, 226], codes[:5]
    assert codes[2:] == [225] * 999 + [200], (len(codes), sorted(set(codes)))


def test_rest_past_the_end_is_refused_and_creates_nothing(start_server, model):
    srv = start_server(model, write=True)
    put_file(srv.root, "f.bin", b"x" * 100)
    ftp = srv.ftp()
    ftp.voidcmd("TYPE I")
    for offset in ["101", "9223372036854775808"]:
        ftp.sendcmd(f"REST {offset}")
        with pytest.raises(ftplib.error_perm, match="^554"):
            ftp.retrbinary("RETR f.bin", lambda b: None)
        ftp.sendcmd(f"REST {offset}")
        with pytest.raises(ftplib.error_perm, match="^554"):
            ftp.storbinary("STOR new.bin", io.BytesIO(b"data"))
        assert not (srv.root / "new.bin").exists(), "a refused STOR created a file"
    assert (srv.root / "f.bin").read_bytes() == b"x" * 100


def test_a_name_ending_in_a_slash_is_refused_for_uploads(start_server, model):
    srv = start_server(model, write=True)
    ftp = srv.ftp()
    for verb in ["STOR", "APPE"]:
        with pytest.raises(ftplib.error_perm, match="^553"):
            ftp.storbinary(f"{verb} newf/", io.BytesIO(b"data"))
    assert not (srv.root / "newf").exists()


def test_a_second_server_on_an_address_in_use_fails_to_start(start_server, model):
    srv = start_server(model)
    second = subprocess.run([str(zocalo_bin()), "serve", "--root", str(srv.root), "--listen",
                             f"127.0.0.1:{srv.port}", "--model", model],
                            stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert second.returncode != 0, "a second server started on an address in use"
    assert f"127.0.0.1:{srv.port}" in second.stderr and "in use" in second.stderr, second.stderr
    assert "listening" not in second.stdout
    ftp = srv.ftp()
    assert ftp.sendcmd("NOOP").startswith("200")


def test_mfmt_and_mdtm_with_a_time_set_the_modification_time(srv):
    put_file(srv.root, "f.txt", b"x")
    put_file(srv.root, "g.txt", b"y")
    ftp = srv.ftp()
    assert "MFMT" in ftp.sendcmd("FEAT")
    assert ftp.sendcmd("MFMT 20200102030405 f.txt") == "213 Modify=20200102030405; f.txt"
    assert int(os.stat(srv.root / "f.txt").st_mtime) == MTIME
    assert ftp.sendcmd("MDTM f.txt") == "213 20200102030405"
    assert ftp.sendcmd("MDTM 20200102030405 g.txt").startswith("213")
    assert int(os.stat(srv.root / "g.txt").st_mtime) == MTIME
    assert code_of(ftp, "MFMT 20200102030405 missing.txt") == 550
    ftp.quit()  # the iterative model serves one client at a time
    srv.clients.remove(ftp)
    anon = srv.ftp("anonymous", "a@b")
    assert code_of(anon, "MFMT 20210102030405 f.txt") == 550, "anonymous is read-only"
    assert int(os.stat(srv.root / "f.txt").st_mtime) == MTIME


def test_site_chmod_sets_permission_bits_but_never_setuid(srv):
    put_file(srv.root, "f.txt", b"x")
    ftp = srv.ftp()
    assert "CHMOD" in ftp.sendcmd("SITE HELP")
    assert ftp.sendcmd("SITE CHMOD 600 f.txt").startswith("200")
    assert os.stat(srv.root / "f.txt").st_mode & 0o7777 == 0o600
    assert ftp.sendcmd("SITE CHMOD 4755 f.txt").startswith("200")
    assert os.stat(srv.root / "f.txt").st_mode & 0o7777 == 0o755, "setuid was set"
    assert code_of(ftp, "SITE CHMOD 9z f.txt") == 501
    ftp.quit()  # the iterative model serves one client at a time
    srv.clients.remove(ftp)
    anon = srv.ftp("anonymous", "a@b")
    assert code_of(anon, "SITE CHMOD 777 f.txt") == 550
    assert os.stat(srv.root / "f.txt").st_mode & 0o7777 == 0o755


def test_dot_files_are_listed_only_when_asked_for(start_server, model, tmp_path):
    for show in (False, True):
        root = tmp_path / f"dots-{show}"
        root.mkdir()
        put_file(root, ".hidden", b"h")
        put_file(root, "seen.txt", b"s")
        srv = start_server(model, root=root, extra=["--show-dot-files"] if show else [])
        ftp = srv.ftp()
        names = lambda cmd: [l.split()[-1] for l in list_lines(ftp, cmd)]
        assert names("LIST") == ([".hidden", "seen.txt"] if show else ["seen.txt"])
        for option in ("-a", "-la", "-al"):
            assert ".hidden" in names(f"LIST {option}"), option
        assert (".hidden" in ftp.nlst()) == show
        assert ".hidden" in [n for n, _ in ftp.mlsd()], "MLSD lists everything"
        ftp.quit()
        srv.clients.remove(ftp)


def list_lines(ftp, cmd: str) -> list[str]:
    lines: list[str] = []
    ftp.retrlines(cmd, lines.append)
    return lines


def test_clnt_and_avbl(srv):
    c = srv.ctl()
    assert c.cmd("CLNT NcFTP 3.2.6 linux-x86_64-glibc2.36")[0] == 200, "CLNT before login"
    c.login()
    code, text = c.cmd("AVBL")
    assert code == 213, text
    free = os.statvfs(srv.root)
    expected = free.f_bavail * free.f_frsize
    assert abs(int(text.split()[1]) - expected) <= 64 * 1024 * 1024, (text, expected)
    assert c.cmd("AVBL missing-dir")[0] == 550


# ==========================================================================
# File hashes (HASH, OPTS HASH, RANG, XSHA256 ...) and symbolic links in listings


def test_hash_commands(srv):
    import hashlib
    import zlib
    data = os.urandom(300_000)
    (srv.root / "h.bin").write_bytes(data)
    ftp = srv.ftp()
    feat = ftp.sendcmd("FEAT")
    assert "HASH SHA-256*;SHA-512;SHA-1;MD5;CRC32" in feat
    reply = ftp.sendcmd("HASH h.bin")
    assert reply == f"213 SHA-256 0-{len(data)} {hashlib.sha256(data).hexdigest()} /h.bin"
    assert ftp.sendcmd("OPTS HASH MD5") == "200 MD5"
    assert ftp.sendcmd("OPTS HASH") == "200 MD5"
    assert ftp.sendcmd("RANG 10 1000").startswith("350")
    assert ftp.sendcmd("HASH h.bin") == f"213 MD5 10-1000 {hashlib.md5(data[10:1000]).hexdigest()} /h.bin"
    assert code_of(ftp, "OPTS HASH SHA-3") == 504
    assert ftp.sendcmd("XSHA1 h.bin") == f"250 {hashlib.sha1(data).hexdigest()}"
    assert ftp.sendcmd("XSHA512 h.bin") == f"250 {hashlib.sha512(data).hexdigest()}"
    assert ftp.sendcmd("XCRC h.bin 0 5") == f"250 {zlib.crc32(data[:5]):08x}"
    assert ftp.sendcmd("XMD5 h.bin") == f"250 {hashlib.md5(data).hexdigest()}"
    assert code_of(ftp, "HASH missing.bin") == 550
    assert code_of(ftp, "HASH /") == 550
    ftp.quit()


def test_symbolic_links_are_listed_as_links(srv, tmp_path):
    (srv.root / "dir1" / "dir12").mkdir(parents=True)
    (srv.root / "dir1" / "dir12" / "f.txt").write_bytes(b"through the link")
    os.symlink("dir1/dir12", srv.root / "dir32")
    os.symlink("nowhere", srv.root / "broken")
    ftp = srv.ftp()
    lines = []
    ftp.retrlines("LIST", lines.append)
    link = [l for l in lines if l.endswith("dir32 -> dir1/dir12")]
    assert link and link[0].startswith("l"), lines
    assert any(l.startswith("l") and l.endswith("broken -> nowhere") for l in lines), lines
    facts = dict(ftp.mlsd())
    assert facts["dir32"]["type"] == "OS.unix=slink:dir1/dir12"
    assert facts["broken"]["type"] == "OS.unix=slink:nowhere"
    # A link inside the root still works as a path.
    assert download(ftp, "dir32/f.txt") == b"through the link"
    ftp.quit()
