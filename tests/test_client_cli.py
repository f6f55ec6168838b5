"""`zocalo get` as a user runs it: a download never destroys the local file it would replace."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess

import pytest

import helpers

DEADLINE = 30


def zocalo_get(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(helpers.zocalo_bin()), "get", "--quiet", *map(str, args)],
                          capture_output=True, text=True, timeout=DEADLINE)


def leftovers(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_a_refused_download_keeps_the_local_file(start_server, tmp_path):
    srv = start_server("epoll")
    report = tmp_path / "report.txt"
    report.write_text("precious\n")
    p = zocalo_get(srv.url("/report.txt"), report)
    assert p.returncode == 5, p.stderr
    assert report.read_text() == "precious\n"
    missing = tmp_path / "missing.txt"
    assert zocalo_get(srv.url("/missing.txt"), missing).returncode == 5
    assert not missing.exists(), "a failed download left an empty file"
    assert leftovers(tmp_path) == []


def test_a_complete_download_replaces_the_local_file(start_server, tmp_path):
    srv = start_server("epoll")
    (srv.root / "report.txt").write_bytes(b"new contents\n")
    report = tmp_path / "report.txt"
    report.write_text("old\n")
    p = zocalo_get(srv.url("/report.txt"), report)
    assert p.returncode == 0, p.stderr
    assert report.read_bytes() == b"new contents\n"
    assert leftovers(tmp_path) == []


def test_a_device_a_fifo_or_a_symlink_is_written_through_not_replaced(start_server, tmp_path):
    import stat
    import threading
    srv = start_server("epoll")
    (srv.root / "file.txt").write_bytes(b"through\n")
    # A character device (the same as /dev/null): it stays a device.
    null = tmp_path / "n"
    os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    p = zocalo_get(srv.url("/file.txt"), null)
    assert p.returncode == 0, p.stderr
    assert stat.S_ISCHR(os.lstat(null).st_mode), "the device node was replaced"
    # A FIFO: its reader gets the bytes.
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    p = zocalo_get(srv.url("/file.txt"), fifo)
    reader.join(DEADLINE)
    assert p.returncode == 0, p.stderr
    assert got == [b"through\n"] and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    # A symlink is followed: its target gets the bytes, the link stays a link.
    target = tmp_path / "target.txt"
    target.write_text("old\n")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    p = zocalo_get(srv.url("/file.txt"), link)
    assert p.returncode == 0, p.stderr
    assert link.is_symlink() and target.read_bytes() == b"through\n"
    assert leftovers(tmp_path) == []


def test_continue_with_a_longer_local_file_fails_and_keeps_it(start_server, tmp_path):
    srv = start_server("epoll")
    (srv.root / "f.bin").write_bytes(b"0123456789")
    local = tmp_path / "f.bin"
    local.write_bytes(b"0123456789-and-more")
    p = zocalo_get(srv.url("/f.bin"), local, "--continue")
    assert p.returncode != 0
    assert "cannot resume" in p.stderr
    assert local.read_bytes() == b"0123456789-and-more"
    local.write_bytes(b"01234")
    assert zocalo_get(srv.url("/f.bin"), local, "--continue").returncode == 0
    assert local.read_bytes() == b"0123456789"


def test_bench_fails_when_every_session_failed_and_names_its_units(start_server, tmp_path):
    srv = start_server("epoll")
    bench = [str(helpers.zocalo_bin()), "bench", "--scenario", "logins", "--clients", "5",
             "--timeout", "20", "--json"]
    bad = subprocess.run([*bench, srv.url("/").replace(helpers.PASSWORD, "wrong")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0, "five failed logins of five exited 0"
    assert "every session failed in: logins" in bad.stderr, bad.stderr
    good = subprocess.run([*bench, srv.url("/"), "--report", str(tmp_path / "report")],
                          capture_output=True, text=True, timeout=60)
    assert good.returncode == 0, good.stderr
    assert '"unit":"logins/s"' in good.stdout.replace(" ", ""), good.stdout
    results = (tmp_path / "report" / "results.md").read_text()
    assert results.startswith("Last run: `scenarios=logins clients=5"), results[:200]


def zocalo(*args, env=None, stdin=subprocess.DEVNULL) -> subprocess.CompletedProcess:
    return subprocess.run([str(helpers.zocalo_bin()), *map(str, args)], capture_output=True,
                          text=True, timeout=DEADLINE, env=env, stdin=stdin)


def test_password_from_netrc_and_a_clear_error_without_one(start_server, tmp_path):
    """A URL with a user and no password: ~/.netrc supplies it; with none and no terminal, a
    usage error (exit 2) says where a password can come from (no empty password is sent)."""
    srv = start_server("epoll")
    (srv.root / "f.txt").write_bytes(b"netrc works\n")
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home)}
    url = f"ftp://{helpers.USER}@127.0.0.1:{srv.port}/f.txt"
    p = zocalo("get", "--quiet", url, tmp_path / "none.txt", env=env)
    assert p.returncode == 2, p.stderr
    assert "~/.netrc" in p.stderr and helpers.USER in p.stderr
    (home / ".netrc").write_text(f"machine 127.0.0.1\n  login {helpers.USER}\n"
                                 f"  password {helpers.PASSWORD}\n")
    (home / ".netrc").chmod(0o600)
    p = zocalo("get", "--quiet", url, tmp_path / "got.txt", env=env)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "got.txt").read_bytes() == b"netrc works\n"
    # No user in the URL: .netrc names the account for the host.
    p = zocalo("get", url.replace(f"{helpers.USER}@", ""), tmp_path / "got2.txt", env=env)
    assert p.returncode == 0, p.stderr
    assert "received 12 B in" in p.stderr, "a one-line summary ends the transfer"


def test_ftps_verified_against_the_system_ca_store(start_server, tmp_path, certs):
    """Without --cacert the system's store is used: a self-signed server fails (exit 3), and
    passes once that store (SSL_CERT_FILE) holds its certificate."""
    srv = start_server("epoll", extra=["--tls-cert", certs["cert"], "--tls-key", certs["key"]])
    (srv.root / "f.txt").write_bytes(b"tls\n")
    url = f"ftp://{helpers.USER}:{helpers.PASSWORD}@127.0.0.1:{srv.port}/f.txt"
    env = {**os.environ}
    env.pop("SSL_CERT_DIR", None)
    env["SSL_CERT_FILE"] = "/etc/ssl/certs/ca-certificates.crt"
    p = zocalo("get", "--quiet", "--tls", url, tmp_path / "a.txt", env=env)
    assert p.returncode == 3, p.stderr
    env["SSL_CERT_FILE"] = str(certs["cert"])
    p = zocalo("get", "--quiet", "--tls", url, tmp_path / "b.txt", env=env)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "b.txt").read_bytes() == b"tls\n"


def test_mirror_keeps_times_skips_unchanged_deletes_and_uploads(start_server, tmp_path):
    srv = start_server("epoll", write=True)
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"alpha")
    (src / "sub" / "b.bin").write_bytes(os.urandom(100_000))
    old = 1_600_000_000
    os.utime(src / "a.txt", (old, old))
    url = f"ftp://{helpers.USER}:{helpers.PASSWORD}@127.0.0.1:{srv.port}/site/"
    p = zocalo("mirror", "--quiet", "--reverse", url, src)
    assert p.returncode == 0, p.stderr
    assert (srv.root / "site" / "sub" / "b.bin").read_bytes() == (src / "sub" / "b.bin").read_bytes()
    assert int((srv.root / "site" / "a.txt").stat().st_mtime) == old, "MFMT kept the time"
    p = zocalo("mirror", "--quiet", "--reverse", url, src)
    assert "0 files" in p.stderr and "2 unchanged" in p.stderr, p.stderr
    back = tmp_path / "back"
    p = zocalo("mirror", "--quiet", url, back)
    assert p.returncode == 0, p.stderr
    assert (back / "a.txt").read_bytes() == b"alpha"
    assert int((back / "a.txt").stat().st_mtime) == old, "the download kept the time"
    p = zocalo("mirror", "--quiet", url, back)
    assert "0 files" in p.stderr and "2 unchanged" in p.stderr, p.stderr
    (back / "stale.txt").write_text("gone upstream")
    (src / "a.txt").unlink()
    p = zocalo("mirror", "--quiet", "--reverse", "--delete", url, src)
    assert p.returncode == 0, p.stderr
    assert not (srv.root / "site" / "a.txt").exists()
    p = zocalo("mirror", "--quiet", "--delete", url, back)
    assert p.returncode == 0, p.stderr
    assert not (back / "stale.txt").exists() and not (back / "a.txt").exists()
    assert (back / "sub" / "b.bin").exists()


def test_help_and_flags_agree_with_the_code(tmp_path):
    tftp_help = zocalo("tftp", "--help").stdout
    assert tftp_help.count("127.0.0.1:6969") == 1, tftp_help
    ls_help = zocalo("ls", "--help").stdout
    for flag in ("--blksize", "--windowsize", "--continue"):
        assert flag not in ls_help, flag
    get_help = zocalo("get", "--help").stdout
    assert "--continue" in get_help and "ftp://" in get_help.split("Options")[0]
    assert "--blksize" not in zocalo("mirror", "--help").stdout
    out = tmp_path / "tls"
    first = zocalo("cert", "--self-signed", "--out", out)
    assert first.returncode == 0 and "tls//" not in first.stdout, first.stdout
    key = (out / "key.pem").read_bytes()
    again = zocalo("cert", "--self-signed", "--out", out)
    assert again.returncode != 0 and "--force" in again.stderr
    assert (out / "key.pem").read_bytes() == key
    assert zocalo("cert", "--self-signed", "--out", out, "--force").returncode == 0
    config = tmp_path / "z.toml"
    config.write_text("no-anonymous = true\n")
    root = tmp_path / "root"
    root.mkdir()
    proc = subprocess.Popen([str(helpers.zocalo_bin()), "serve", "--config", str(config),
                             "--root", str(root), "--listen", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        line = proc.stdout.readline().decode()
        port = int(line.split("ftp://127.0.0.1:")[1].split()[0])
        c = helpers.Ctl("127.0.0.1", port)
        assert c.reply()[0] == 220
        assert c.cmd("USER anonymous")[0] == 331
        assert c.cmd("PASS x")[0] == 530, "no-anonymous = true in the config file"
        c.close()
    finally:
        proc.terminate()
        proc.wait(10)


def test_contradictions_and_wrong_types_are_said_plainly(tmp_path, certs):
    both = zocalo("serve", "--anonymous", "--no-anonymous", "--listen", "127.0.0.1:0")
    assert both.returncode == 2 and "cannot be used with" in both.stderr, both.stderr
    config = tmp_path / "z.toml"
    config.write_text('max-per-ip = "ten"\nidle-timeout = -1\n')
    bad = zocalo("serve", "--config", config, "--listen", "127.0.0.1:0")
    assert bad.returncode != 0 and "expected a whole number" in bad.stderr, bad.stderr
    assert "usize" not in bad.stderr and "u64" not in bad.stderr
    # --tls required does not cover TFTP: the start says so.
    root = tmp_path / "root"
    root.mkdir()
    proc = subprocess.Popen([str(helpers.zocalo_bin()), "serve", "--root", str(root), "--listen",
                             "127.0.0.1:0", "--tftp", "127.0.0.1:0", "--tls", "required",
                             "--tls-cert", str(certs["cert"]), "--tls-key", str(certs["key"])],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "listening" in proc.stdout.readline()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "--tls required applies to FTP only" in err, err


def test_a_refused_tftp_put_exits_with_a_documented_code(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    proc = subprocess.Popen([str(helpers.zocalo_bin()), "tftp", "--root", str(root), "--listen",
                             "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        line = proc.stdout.readline().decode()
        port = line.split("tftp://127.0.0.1:")[1].split()[0]
        src = tmp_path / "f.bin"
        src.write_bytes(b"x" * 100)
        p = zocalo("put", src, f"tftp://127.0.0.1:{port}/f.bin")
        assert p.returncode == 6, (p.returncode, p.stderr)  # refused: read-only server
    finally:
        proc.terminate()
        proc.wait(10)


def test_cacert_trusts_the_servers_own_self_signed_certificate(start_server, tmp_path, certs):
    """OpenSSL's usual self-signed certificate (CA:TRUE) given with --cacert is trusted as the
    server's own, as curl and lftp do; other failures say what is wrong in words."""
    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run([helpers.need("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                    "-keyout", key, "-out", cert, "-subj", "/CN=localhost", "-days", "2",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=DEADLINE)
    assert "CA:TRUE" in subprocess.run([helpers.need("openssl"), "x509", "-in", cert, "-noout",
                                        "-text"], capture_output=True, text=True).stdout
    srv = start_server("epoll", extra=["--tls-cert", cert, "--tls-key", key])
    (srv.root / "f.txt").write_bytes(b"pinned\n")
    url = f"ftp://{helpers.USER}:{helpers.PASSWORD}@127.0.0.1:{srv.port}/f.txt"
    p = zocalo("get", "--quiet", "--tls", "--cacert", cert, url, tmp_path / "got.txt")
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "got.txt").read_bytes() == b"pinned\n"
    # Another CA: the refusal says what to do, not a Rust enum.
    p = zocalo("get", "--quiet", "--tls", "--cacert", certs["cert"], url, tmp_path / "no.txt")
    assert p.returncode != 0
    assert "presents a CA certificate as its own; give --cacert FILE" in p.stderr, p.stderr
    assert "OtherError" not in p.stderr and "CaUsedAsEndEntity" not in p.stderr
    # Implicit TLS asked of a plain port: says so.
    plain = f"ftps://{helpers.USER}:{helpers.PASSWORD}@127.0.0.1:{srv.port}/f.txt"
    p = zocalo("get", "--quiet", "--cacert", cert, plain, tmp_path / "no.txt")
    assert p.returncode != 0 and "did not answer in TLS" in p.stderr, p.stderr


@pytest.fixture
def vsftpd(tmp_path):
    """Debian's vsftpd (no MLSD, no MFMT) serving a writable anonymous `pub/`, stopped by PID."""
    from cluster import free_blocks
    port, pasv = free_blocks([(1, ("127.0.0.1",)), (20, ("127.0.0.1",))])
    anon = tmp_path / "vsftpd-root"
    (anon / "pub").mkdir(parents=True)
    anon.chmod(0o755)  # vsftpd refuses a writable anonymous root
    shutil.chown(anon / "pub", "ftp")
    (tmp_path / "vsftpd-empty").mkdir()
    conf = tmp_path / "vsftpd.conf"
    conf.write_text("\n".join([
        "listen=YES", "listen_ipv6=NO", "listen_address=127.0.0.1", f"listen_port={port}",
        "background=NO", "anonymous_enable=YES", "local_enable=NO", "write_enable=YES",
        "anon_upload_enable=YES", "anon_mkdir_write_enable=YES", "anon_other_write_enable=YES",
        f"anon_root={anon}", "no_anon_password=YES", "anon_umask=022", "seccomp_sandbox=NO",
        "pasv_address=127.0.0.1", f"pasv_min_port={pasv}", f"pasv_max_port={pasv + 19}",
        f"secure_chroot_dir={tmp_path / 'vsftpd-empty'}", "xferlog_enable=NO", ""]))
    proc = subprocess.Popen([helpers.need("vsftpd"), str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)

    def answers() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                return s.recv(64).startswith(b"220")
        except OSError:
            if proc.poll() is not None:
                raise AssertionError(f"vsftpd exited with {proc.returncode}")
            return False

    assert helpers.poll_until(answers, 10, 0.05), "vsftpd never greeted"
    yield f"ftp://anonymous:x@127.0.0.1:{port}/pub", anon / "pub"
    helpers.stop_process(proc)


def test_mirror_is_incremental_against_a_server_without_mlsd(vsftpd, tmp_path):
    url, pub = vsftpd
    (pub / "a.txt").write_text("from vsftpd\n")
    os.utime(pub / "a.txt", (1_600_000_000, 1_600_000_000))
    down = tmp_path / "down"
    first = zocalo("mirror", url, down)
    assert first.returncode == 0 and first.stderr.startswith("1 files"), first.stderr
    assert os.stat(down / "a.txt").st_mtime == 1_600_000_000, "the time came from MDTM"
    again = zocalo("mirror", url, down)
    assert again.returncode == 0 and "0 files (0 bytes)" in again.stderr, again.stderr
    assert "1 unchanged" in again.stderr
    # Up: the times are set with MDTM where MFMT is unknown, so the next run sends nothing.
    up = tmp_path / "up"
    up.mkdir()
    (up / "x.txt").write_text("one\n")
    os.utime(up / "x.txt", (1_500_000_000, 1_500_000_000))
    (up / "link").symlink_to("x.txt")
    target = url + "/up"
    sent = zocalo("mirror", "-R", target, up)
    assert sent.returncode == 0 and sent.stderr.startswith("1 files"), sent.stderr
    assert "1 links and special files not copied" in sent.stderr, sent.stderr
    assert os.stat(pub / "up" / "x.txt").st_mtime == 1_500_000_000
    for extra in ([], ["--continue"]):
        again = zocalo("mirror", "-R", *extra, target, up)
        assert again.returncode == 0 and again.stderr.startswith("0 files"), again.stderr


class HostileServer:
    """A server written here that answers a login, then floods: an endless multi-line reply to
    FEAT-less commands (`mode="reply"`), or an endless MLSD listing (`mode="listing"`). It
    stops once the client hangs up, or after `limit` bytes."""

    def __init__(self, mode: str, limit: int = 200 << 20):
        import threading
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.mode, self.limit, self.sent = mode, limit, 0
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def flood(self, sock, line: bytes) -> None:
        chunk = line * (65536 // len(line))
        try:
            while self.sent < self.limit:
                sock.sendall(chunk)
                self.sent += len(chunk)
        except OSError:
            pass

    def serve(self) -> None:
        self.listener.settimeout(DEADLINE)
        try:
            ctrl, _ = self.listener.accept()
        except OSError:
            return
        ctrl.settimeout(DEADLINE)
        f = ctrl.makefile("rb")
        if self.mode == "reply":
            ctrl.sendall(b"220-welcome\r\n")
            self.flood(ctrl, b"220-and more welcome\r\n")
            ctrl.close()
            return
        ctrl.sendall(b"220 hi\r\n")
        data_listener = socket.create_server(("127.0.0.1", 0))
        for raw in f:
            cmd = raw.decode(errors="replace").strip().split(" ")[0].upper()
            if cmd == "USER":
                ctrl.sendall(b"331 password\r\n")
            elif cmd == "PASS":
                ctrl.sendall(b"230 in\r\n")
            elif cmd in ("PASV", "EPSV"):
                p = data_listener.getsockname()[1]
                if cmd == "EPSV":
                    ctrl.sendall(f"229 ok (|||{p}|)\r\n".encode())
                else:
                    ctrl.sendall(f"227 ok (127,0,0,1,{p >> 8},{p & 255})\r\n".encode())
            elif cmd in ("MLSD", "LIST", "NLST"):
                ctrl.sendall(b"150 here it comes\r\n")
                data, _ = data_listener.accept()
                self.flood(data, b"type=file;size=1; f.txt\r\n")
                data.close()
                break
            elif cmd == "QUIT":
                break
            else:
                ctrl.sendall(b"200 ok\r\n")
        ctrl.close()
        data_listener.close()

    def close(self) -> None:
        self.listener.close()
        self.thread.join(DEADLINE)


@pytest.mark.parametrize("mode", ["reply", "listing"])
def test_the_client_bounds_what_a_hostile_server_sends(mode):
    server = HostileServer(mode)
    try:
        p = zocalo("ls", f"ftp://u:p@127.0.0.1:{server.port}/")
        assert p.returncode != 0, p.stderr
        said = {"reply": "never ends it", "listing": "listing is longer than 64 MiB"}[mode]
        assert said in p.stderr, p.stderr[-500:]
        assert server.sent < server.limit, "the client read until the server gave up"
    finally:
        server.close()
