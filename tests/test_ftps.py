"""FTPS (RFC 4217): explicit AUTH TLS and implicit TLS, with real clients (curl, lftp) and
Python's ftplib.FTP_TLS, against a few models.

The certificate comes from ``zocalo cert --self-signed`` (valid for 127.0.0.1); ftplib
verifies it against itself as the CA, curl and lftp are told not to verify (-k).
Where a client must really protect control and data, the server runs with
``--tls required`` so that any plaintext login or transfer would be refused.
"""

from __future__ import annotations

import ftplib
import os
import socket
import ssl
import subprocess
from pathlib import Path

import pytest

import helpers
from helpers import (PASSWORD, TIMEOUT, USER, ReusingFTP_TLS, download, file_sha256, need,
                     sha256, upload)

TLS_MODELS = ["epoll", "uring", "thread", "process", "select"]
CLIENT_TIMEOUT = 30
UPLOADS = 4  # curl uploads per test (TLS 1.3 upload truncation is intermittent)


@pytest.fixture(params=TLS_MODELS)
def model(request):
    return request.param


@pytest.fixture
def tls_server(start_server, model, certs):
    """Factory: a server with the certificate and one implicit-TLS listener."""

    def start(*flags):
        return start_server(model, implicit_tls=1,
                            extra=["--tls-cert", certs["cert"], "--tls-key", certs["key"],
                                   "--implicit-tls", "127.0.0.1:0", *flags])

    return start


def run(argv, home: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, HOME=str(home), LC_ALL="C.UTF-8")
    p = subprocess.run([str(a) for a in argv], env=env, stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=CLIENT_TIMEOUT)
    if check and p.returncode != 0:
        raise AssertionError(f"{argv} exited {p.returncode}\nstdout: {p.stdout[-3000:]!r}\n"
                             f"stderr: {p.stderr[-3000:]!r}")
    return p


def tls_port(srv) -> int:
    assert srv.tls_addrs, "no implicit TLS listener reported"
    return srv.tls_addrs[0][2]


def client_context(certs) -> ssl.SSLContext:
    """Verifies the server's self-signed certificate (and its 127.0.0.1 name)."""
    return ssl.create_default_context(cafile=str(certs["cert"]))



def ftps(srv, certs, cls=ReusingFTP_TLS, login: bool = True, prot_p: bool = True, context=None):
    ftp = cls(context=context or client_context(certs), timeout=TIMEOUT, encoding="utf-8")
    srv.clients.append(ftp)
    ftp.connect(srv.host, srv.port)
    if login:
        ftp.login(USER, PASSWORD)  # FTP_TLS.login sends AUTH TLS first
        assert isinstance(ftp.sock, ssl.SSLSocket)
        if prot_p:
            assert ftp.prot_p().startswith("200")
    return ftp


# ==========================================================================
# curl


def curl(home, *args, check=True):
    return run([need("curl"), "-q", "-sS", "--max-time", "20", *args], home, check=check)


def curl_uploads(home, url_of, work, count: int = UPLOADS) -> dict[str, bytes]:
    """Several curl uploads (each a separate curl run, like separate users). Returns what was
    sent, by name."""
    sent = {}
    for i in range(count):
        name = f"up{i}.bin"
        sent[name] = os.urandom(700_000 + i)
        (work / name).write_bytes(sent[name])
        curl(home, "-T", work / name, *url_of(name))
    return sent


def test_curl_explicit_tls_download_upload_list(tls_server, home, work):
    srv = tls_server("--tls", "required")
    data = os.urandom(3_000_000)
    (srv.root / "down.bin").write_bytes(data)
    curl(home, "--ssl-reqd", "-k", "-o", work / "down.bin", srv.url("down.bin"))
    assert file_sha256(work / "down.bin") == sha256(data)

    sent = curl_uploads(home, lambda n: ["--ssl-reqd", "-k", srv.url(n)], work)
    for name, up in sent.items():
        assert sha256((srv.root / name).read_bytes()) == sha256(up), name

    listing = curl(home, "--ssl-reqd", "-k", srv.url("")).stdout.decode()
    assert "down.bin" in listing and "up0.bin" in listing, listing
    names = curl(home, "--ssl-reqd", "-k", "--list-only", srv.url("")).stdout.decode().split()
    assert sorted(names) == sorted(["down.bin", *sent]), names


def test_curl_plain_refused_by_tls_required_server(tls_server, home, work):
    srv = tls_server("--tls", "required")
    (srv.root / "f.txt").write_bytes(b"secret")
    p = curl(home, "-o", work / "f.txt", srv.url("f.txt"), check=False)
    assert p.returncode != 0, "a plaintext login was accepted by a --tls required server"
    assert not (work / "f.txt").exists() or (work / "f.txt").read_bytes() != b"secret"


def test_curl_implicit_tls(tls_server, home, work):
    srv = tls_server("--tls", "required")
    data = os.urandom(2_000_000)
    (srv.root / "down.bin").write_bytes(data)
    url = f"ftps://{USER}:{PASSWORD}@127.0.0.1:{tls_port(srv)}/"
    curl(home, "-k", "-o", work / "down.bin", url + "down.bin")
    assert file_sha256(work / "down.bin") == sha256(data)
    sent = curl_uploads(home, lambda n: ["-k", url + n], work)
    for name, up in sent.items():
        assert sha256((srv.root / name).read_bytes()) == sha256(up), name
    names = curl(home, "-k", "--list-only", url).stdout.decode().split()
    assert sorted(names) == sorted(["down.bin", *sent]), names


def test_curl_implicit_port_speaks_no_plaintext(tls_server, home, work):
    srv = tls_server()
    with socket.create_connection(("127.0.0.1", tls_port(srv)), timeout=TIMEOUT) as s:
        s.sendall(b"USER alice\r\n")  # not a TLS ClientHello
        s.settimeout(TIMEOUT)
        try:
            got = s.recv(4096)
        except ConnectionResetError:
            got = b""
    assert not got.startswith(b"220") and not got.startswith(b"331"), got


# ==========================================================================
# lftp


LFTP_TLS = ("set ftp:ssl-force yes; set ftp:ssl-protect-data yes; set ssl:verify-certificate no; "
            "set net:max-retries 1; set net:timeout 10; set net:reconnect-interval-base 1; ")


def lftp(srv, home, script: str):
    return run([need("lftp"), "-c",
                LFTP_TLS + f"open -u {USER},{PASSWORD} ftp://127.0.0.1:{srv.port}; {script}"], home)


def test_lftp_tls_get_put_ls(tls_server, home, work):
    srv = tls_server("--tls", "required")
    data = os.urandom(2_500_000)
    (srv.root / "down.bin").write_bytes(data)
    up = os.urandom(900_000)
    (work / "up.bin").write_bytes(up)
    p = lftp(srv, home, f"get down.bin -o {work / 'got.bin'}; put {work / 'up.bin'} -o sent.bin; ls")
    assert file_sha256(work / "got.bin") == sha256(data)
    assert sha256((srv.root / "sent.bin").read_bytes()) == sha256(up)
    out = p.stdout.decode()
    assert "down.bin" in out and "sent.bin" in out, out


def test_lftp_tls_with_require_reuse(tls_server, home, work):
    """lftp resumes the control session on its data connections: several transfers in one
    session must all work under --tls-require-reuse."""
    srv = tls_server("--tls", "required", "--tls-require-reuse")
    (srv.root / "a.txt").write_bytes(b"first\n")
    (srv.root / "b.txt").write_bytes(b"second\n")
    p = lftp(srv, home, "cat a.txt; cat b.txt; ls")
    out = p.stdout.decode()
    assert "first" in out and "second" in out and "b.txt" in out, out


# ==========================================================================
# ftplib.FTP_TLS


def test_ftplib_tls_transfers_with_checksums(tls_server, certs):
    srv = tls_server()
    data = os.urandom(4_000_000)
    (srv.root / "down.bin").write_bytes(data)
    ftp = ftps(srv, certs)
    assert ftp.sock.version() in ("TLSv1.2", "TLSv1.3")
    assert sha256(download(ftp, "down.bin")) == sha256(data)
    up = os.urandom(2_000_000)
    assert upload(ftp, "up.bin", up).startswith("226")
    assert sha256((srv.root / "up.bin").read_bytes()) == sha256(up)
    assert sorted(ftp.nlst()) == ["down.bin", "up.bin"]
    assert ftp.reused[0] is True, "the first data connection did not resume the control session"
    assert ftp.sendcmd("NOOP").startswith("200")


def test_ftplib_every_data_connection_resumes_the_session(tls_server, certs):
    srv = tls_server()
    (srv.root / "f.txt").write_bytes(b"payload")
    ftp = ftps(srv, certs)
    for _ in range(3):
        assert download(ftp, "f.txt") == b"payload"
    assert ftp.reused == [True, True, True], \
        f"data connections resuming the control session, per transfer: {ftp.reused}"


def test_ftplib_tls_12_with_require_reuse(tls_server, certs):
    srv = tls_server("--tls-require-reuse")
    (srv.root / "f.txt").write_bytes(b"payload")
    ctx = client_context(certs)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ftp = ReusingFTP_TLS(context=ctx, timeout=TIMEOUT, encoding="utf-8")
    srv.clients.append(ftp)
    ftp.connect(srv.host, srv.port)
    ftp.login(USER, PASSWORD)
    ftp.prot_p()
    assert ftp.sock.version() == "TLSv1.2"
    assert download(ftp, "f.txt") == b"payload"
    assert upload(ftp, "g.txt", b"more").startswith("226")
    assert ftp.nlst() == ["f.txt", "g.txt"]
    assert ftp.reused == [True, True, True]


def test_ftplib_require_reuse_several_transfers(tls_server, certs):
    """A client that resumes the control session on every data connection (the default TLS
    version, 1.3) must be able to make more than one transfer under --tls-require-reuse."""
    srv = tls_server("--tls-require-reuse")
    data = os.urandom(500_000)
    (srv.root / "f.bin").write_bytes(data)
    ftp = ftps(srv, certs)
    results = []
    for step in ("RETR", "STOR", "NLST", "RETR"):
        try:
            if step == "RETR":
                results.append((step, sha256(download(ftp, "f.bin")) == sha256(data)))
            elif step == "STOR":
                results.append((step, upload(ftp, "g.bin", data).startswith("226")))
            else:
                results.append((step, sorted(ftp.nlst()) == ["f.bin", "g.bin"]))
        except (ftplib.Error, OSError) as e:
            results.append((step, f"{type(e).__name__}: {e}"))
            break
    assert results == [("RETR", True), ("STOR", True), ("NLST", True), ("RETR", True)], \
        f"results per transfer: {results}; resumed per data connection: {ftp.reused}"


def test_require_reuse_refuses_a_fresh_tls_session(tls_server, certs):
    srv = tls_server("--tls-require-reuse")
    (srv.root / "f.txt").write_bytes(b"payload" * 1000)
    ftp = ftps(srv, certs)
    ftp.voidcmd("TYPE I")
    host, port = ftp.makepasv()
    raw = socket.create_connection((host, port), timeout=TIMEOUT)
    try:
        ftp.putcmd("RETR f.txt")
        fresh = client_context(certs)  # a new context: no session to resume
        got = b""
        try:
            conn = fresh.wrap_socket(raw, server_hostname="127.0.0.1")
            assert conn.session_reused is False
            raw = conn
            got = conn.recv(65536)
            for _ in range(100):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                got += chunk
        except (ssl.SSLError, OSError):
            pass
    finally:
        raw.close()
    codes = []
    for _ in range(3):
        resp = ftp.getmultiline()
        codes.append(resp[:3])
        if resp[0] != "1":
            break
    assert "226" not in codes, f"a data connection with a fresh TLS session was served: {codes}"
    assert codes[-1] in ("522", "425", "426"), codes
    assert got != b"payload" * 1000
    # the session is still usable, and a resuming data connection still works
    assert ftp.sendcmd("NOOP").startswith("200")


def test_require_reuse_refuses_another_sessions_ticket(tls_server, certs):
    """The data connection must resume *this* control connection's session, not any session
    (e.g. one taken from another client's control connection)."""
    srv = tls_server("--tls-require-reuse")
    (srv.root / "f.txt").write_bytes(b"payload" * 1000)
    ctx = client_context(certs)  # one client context, two control connections
    victim = ftps(srv, certs, context=ctx)
    other = ftps(srv, certs, context=ctx)  # its session is never used by itself
    victim.voidcmd("TYPE I")
    host, port = victim.makepasv()
    raw = socket.create_connection((host, port), timeout=TIMEOUT)
    victim.putcmd("RETR f.txt")
    got = b""
    try:
        conn = victim.context.wrap_socket(raw, server_hostname="127.0.0.1",
                                          session=other.sock.session)
        raw = conn
        for _ in range(100):
            chunk = conn.recv(65536)
            if not chunk:
                break
            got += chunk
    except (ssl.SSLError, OSError):
        pass
    finally:
        raw.close()
    codes = []
    for _ in range(3):
        resp = victim.getmultiline()
        codes.append(resp[:3])
        if resp[0] != "1":
            break
    assert "226" not in codes, \
        f"a data connection resuming another control connection's session was served: {codes}"
    assert other.sendcmd("NOOP").startswith("200")


# ==========================================================================
# Policy refusals


def test_tls_required_refuses_user_before_auth(tls_server):
    srv = tls_server("--tls", "required")
    c = srv.ctl()
    code, text = c.cmd(f"USER {USER}")
    assert code == 530, text
    code, text = c.cmd(f"PASS {PASSWORD}")
    assert code in (503, 530), text
    assert c.cmd("PWD")[0] == 530  # not logged in
    # a plaintext client can still leave cleanly
    code, text = c.cmd("QUIT")
    assert code == 221, text
    assert c.wait_closed()


def test_tls_required_refuses_retr_without_prot_p(tls_server, certs):
    srv = tls_server("--tls", "required")
    (srv.root / "f.txt").write_bytes(b"secret")
    ftp = ftps(srv, certs, prot_p=False)
    assert ftp.sendcmd("PBSZ 0").startswith("200")
    ftp.voidcmd("TYPE I")
    ftp.makepasv()
    with pytest.raises(ftplib.error_perm, match="^521"):
        ftp.sendcmd("RETR f.txt")  # refused before any data connection is used
    # after PROT P the same session can transfer
    assert ftp.prot_p().startswith("200")
    assert download(ftp, "f.txt") == b"secret"


@pytest.mark.parametrize("atomic", [False, True], ids=["plain", "atomic"])
def test_tls_required_refused_uploads_touch_nothing(tls_server, certs, atomic):
    """STOR/APPE/STOU refused with 521 (no PROT P) must not create, truncate or leave
    anything behind."""
    srv = tls_server("--tls", "required", *(["--atomic-uploads"] if atomic else []))
    (srv.root / "g.txt").write_bytes(b"precious content")
    ftp = ftps(srv, certs, prot_p=False)
    assert ftp.sendcmd("PBSZ 0").startswith("200")
    ftp.voidcmd("TYPE I")
    for cmd in ("STOR g.txt", "APPE g.txt", "STOR new.txt", "STOU"):
        ftp.makepasv()
        with pytest.raises(ftplib.error_perm, match="^521"):
            ftp.sendcmd(cmd)
    names = sorted(p.name for p in srv.root.iterdir())
    assert names == ["g.txt"], f"a refused upload created files: {names}"
    assert (srv.root / "g.txt").read_bytes() == b"precious content", \
        "an upload refused with 521 truncated the existing file"


def test_tls_required_refuses_prot_c(tls_server, certs):
    srv = tls_server("--tls", "required")
    ftp = ftps(srv, certs)
    with pytest.raises(ftplib.error_perm, match="^534"):
        ftp.sendcmd("PROT C")
    # still protected: a transfer works
    (srv.root / "f.txt").write_bytes(b"x")
    assert download(ftp, "f.txt") == b"x"


@pytest.mark.parametrize("policy", ["optional", "required"])
def test_ccc_refused(tls_server, certs, policy):
    srv = tls_server("--tls", policy)
    ftp = ftps(srv, certs)
    with pytest.raises(ftplib.error_perm, match="^534"):
        ftp.sendcmd("CCC")
    assert isinstance(ftp.sock, ssl.SSLSocket)
    assert ftp.sendcmd("NOOP").startswith("200")  # control still TLS and in sync


def test_auth_tls_pbsz_prot_replies(tls_server, certs):
    srv = tls_server()
    ftp = ftps(srv, certs, login=False)
    assert ftp.auth().startswith("234")
    assert ftp.sock.version() in ("TLSv1.2", "TLSv1.3")
    assert ftp.sendcmd("PBSZ 0").startswith("200")
    assert ftp.sendcmd("PROT P").startswith("200")
    assert ftp.sendcmd("PROT C").startswith("200")  # allowed when TLS is optional
    ftp.login(USER, PASSWORD)
    (srv.root / "c.txt").write_bytes(b"clear data")
    assert download(ftp, "c.txt") == b"clear data"  # PROT C: plaintext data connection


def test_optional_tls_still_serves_plain_clients(tls_server):
    srv = tls_server()
    (srv.root / "p.txt").write_bytes(b"plain")
    ftp = srv.ftp()
    assert download(ftp, "p.txt") == b"plain"


def test_implicit_tls_ftplib(tls_server, certs):
    srv = tls_server("--tls", "required")
    data = os.urandom(300_000)
    (srv.root / "f.bin").write_bytes(data)
    ctx = client_context(certs)
    raw = socket.create_connection(("127.0.0.1", tls_port(srv)), timeout=TIMEOUT)
    sock = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    ftp = ReusingFTP_TLS(context=ctx, timeout=TIMEOUT, encoding="utf-8")
    srv.clients.append(ftp)
    ftp.host, ftp.port, ftp.af = "127.0.0.1", tls_port(srv), socket.AF_INET
    ftp.sock = sock
    ftp.file = sock.makefile("r", encoding="utf-8")
    ftp.welcome = ftp.getresp()
    assert ftp.welcome.startswith("220"), ftp.welcome
    ftplib.FTP.login(ftp, USER, PASSWORD)  # no AUTH TLS: already protected
    assert ftp.prot_p().startswith("200")
    assert sha256(download(ftp, "f.bin")) == sha256(data)
    assert upload(ftp, "g.bin", data).startswith("226")
    assert sha256((srv.root / "g.bin").read_bytes()) == sha256(data)


def test_a_client_hello_on_a_clear_data_connection_is_logged(start_server, certs):
    """A client that speaks TLS on its data connection without PROT P (aioftp in implicit
    FTPS) waits for the data timeout: the server's debug log says why."""
    srv = start_server("epoll", env={"ZOCALO_LOG": "debug"},
                       extra=["--tls-cert", certs["cert"], "--tls-key", certs["key"],
                              "--data-timeout", "1"])
    (srv.root / "big.bin").write_bytes(os.urandom(16 * 1024 * 1024))
    ftp = ftps(srv, certs, prot_p=False)
    ftp.voidcmd("TYPE I")
    host, port = ftp.makepasv()
    data = socket.create_connection((host, port), timeout=TIMEOUT)
    ftp.sock.sendall(b"RETR big.bin\r\n")
    ctx = client_context(certs)
    hello = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(*hello, server_hostname="127.0.0.1")
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    data.sendall(hello[1].read())  # the ClientHello, and nothing read back
    assert helpers.poll_until(lambda: "TLS ClientHello on a clear data connection"
                              in srv.log_tail(200), 15, 0.1), srv.log_tail()
    data.close()


@pytest.mark.parametrize("model", TLS_MODELS)
def test_an_ftps_upload_cut_by_a_bare_fin_is_not_complete(start_server, certs, model):
    """Without TLS close_notify the end of an upload could be anyone's cut: 426, and an atomic
    upload leaves nothing (vsftpd's strict_ssl_read_eof)."""
    srv = start_server(model, write=True,
                       extra=["--tls-cert", certs["cert"], "--tls-key", certs["key"],
                              "--atomic-uploads"])
    ftp = ftps(srv, certs)
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd("STOR cut.bin")
    conn.sendall(b"x" * 100_000)
    conn.close()  # no unwrap(): a TCP FIN without close_notify
    with pytest.raises(ftplib.error_temp, match="^426"):
        ftp.voidresp()
    assert not (srv.root / "cut.bin").exists()
    # ftplib's own upload ends with close_notify: complete.
    assert upload(ftp, "whole.bin", b"y" * 100_000).startswith("226")
    assert (srv.root / "whole.bin").read_bytes() == b"y" * 100_000
