"""zocalo serving a bucket of a real three-node SeaweedFS cluster (`--storage s3://...`).

Real clients (curl, lftp, ftplib, rclone's FTP backend, tftp-hpa) talk to zocalo; what lands in
the bucket is read back through the S3 API (boto3), never through zocalo. Each test gets its own
key prefix, so the tests share one cluster (the `seaweed` fixture, one per xdist group).

The leak check of the other suites (descriptors back to the start-up baseline) does not apply
here: the server keeps idle HTTP connections to S3 pooled by design. The servers are stopped by
PID at the end of each test all the same.
"""
from __future__ import annotations

import concurrent.futures
import ftplib
import os
import socket
import struct
import subprocess
import time
import tempfile
import uuid
from pathlib import Path

import pytest

import helpers
from helpers import USER, PASSWORD, sha256

pytestmark = pytest.mark.xdist_group("s3")

S3_MODELS = ["iterative", "process", "thread", "pool:8", "select", "poll", "epoll", "uring", "epoll:2"]


class S3Server:
    """A zocalo serving `prefix` of the cluster's bucket through node `node`'s S3 gateway."""

    def __init__(self, cluster, tmp_path, model="epoll", node=0, extra=(), timeout=5):
        self.cluster = cluster
        self.prefix = f"t-{uuid.uuid4().hex[:12]}"
        self.s3 = cluster.s3_client(node, timeout=30)
        env = {"AWS_ACCESS_KEY_ID": cluster.access_key,
               "AWS_SECRET_ACCESS_KEY": cluster.secret_key}
        location = f"s3://{cluster.endpoint(node)}/{cluster.bucket}/{self.prefix}"
        self.srv = helpers.launch(
            model, tmp_path, tmp_path / f"zocalo-{self.prefix}.log", write=True, env=env,
            root_flag=False,
            extra=["--storage", location, "--s3-insecure-http", "--s3-timeout", str(timeout),
                   *extra])

    def key(self, path: str) -> str:
        return f"{self.prefix}/{path.lstrip('/')}"

    def object_sha256(self, path: str) -> str:
        return self.cluster.object_sha256(self.key(path))

    def keys(self) -> list[str]:
        out, token = [], None
        while True:
            args = {"Bucket": self.cluster.bucket, "Prefix": self.prefix + "/"}
            if token:
                args["ContinuationToken"] = token
            page = self.s3.list_objects_v2(**args)
            out += [o["Key"][len(self.prefix) + 1:] for o in page.get("Contents", [])]
            token = page.get("NextContinuationToken")
            if not token:
                return out

    def pending_uploads(self) -> list:
        got = self.s3.list_multipart_uploads(Bucket=self.cluster.bucket, Prefix=self.prefix + "/")
        return got.get("Uploads", [])

    def put(self, path: str, data: bytes) -> None:
        self.s3.put_object(Bucket=self.cluster.bucket, Key=self.key(path), Body=data)

    def stop(self):
        self.srv.close_clients()
        return self.srv.stop()


@pytest.fixture
def s3srv(seaweed, tmp_path):
    started = []

    def start(**kwargs) -> S3Server:
        server = S3Server(seaweed, tmp_path, **kwargs)
        started.append(server)
        return server

    yield start
    codes = [server.stop() for server in started]
    assert None not in codes, "a server did not exit within the stop deadline of SIGTERM"


@pytest.mark.parametrize("model", S3_MODELS)
def test_every_model_stores_lists_and_serves_objects(s3srv, model):
    """STOR, LIST, RETR, SIZE, MKD, RNFR/RNTO, DELE and RMD in every model; what is stored is
    checked in the bucket through S3."""
    server = s3srv(model=model)
    data = os.urandom(3 * 1024 * 1024 + 17)
    ftp = server.srv.ftp()
    assert ftp.mkd("dir") == "/dir"
    assert helpers.upload(ftp, "dir/file.bin", data).startswith("226")
    assert server.object_sha256("dir/file.bin") == sha256(data)
    assert "dir/" in server.keys(), "MKD makes a dir/ marker object"
    assert ftp.size("dir/file.bin") == len(data)
    assert ftp.nlst("dir") == ["file.bin"] or ftp.nlst("dir") == ["dir/file.bin"]
    assert helpers.download(ftp, "dir/file.bin") == data
    assert helpers.download(ftp, "dir/file.bin", rest=1000) == data[1000:]
    ftp.rename("dir/file.bin", "dir/moved.bin")
    assert server.object_sha256("dir/moved.bin") == sha256(data)
    assert "dir/file.bin" not in server.keys()
    with pytest.raises(ftplib.error_perm, match="^550"):
        ftp.rmd("dir")
    ftp.delete("dir/moved.bin")
    ftp.rmd("dir")
    assert server.keys() == []
    ftp.quit()


def test_curl_upload_lands_in_the_bucket_and_downloads_back(s3srv, work, big):
    server = s3srv()
    src = work / "big.bin"
    src.write_bytes(big)
    url = server.srv.url("/up/big.bin")
    subprocess.run([helpers.need("curl"), "-sS", "--ftp-create-dirs", "-T", str(src), url],
                   check=True, timeout=120)
    assert server.object_sha256("up/big.bin") == sha256(big)
    got = subprocess.run([helpers.need("curl"), "-sS", url], check=True, timeout=120,
                         capture_output=True).stdout
    assert sha256(got) == sha256(big)
    # A ranged download (curl -C) is one GET from the REST offset.
    part = subprocess.run([helpers.need("curl"), "-sS", "-C", str(len(big) - 4096), url],
                          check=True, timeout=60, capture_output=True).stdout
    assert part == big[-4096:]


def test_lftp_mirror_both_ways(s3srv, work, home):
    server = s3srv()
    src = work / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    files = {"a.txt": b"alpha\n", "sub/b.bin": os.urandom(200_000),
             "sub/deeper/c.bin": os.urandom(9 * 1024 * 1024 + 3), "empty": b""}
    for name, data in files.items():
        (src / name).write_bytes(data)
    back = work / "back"
    script = (f"set cmd:fail-exit yes; open -u {USER},{PASSWORD} -p {server.srv.port} "
              f"127.0.0.1; mirror -R {src} site; mirror site {back}; quit")
    subprocess.run([helpers.need("lftp"), "-c", script], check=True, timeout=120,
                   env={**os.environ, "HOME": str(home)})
    for name, data in files.items():
        assert server.object_sha256(f"site/{name}") == sha256(data), name
        assert (back / name).read_bytes() == data, name


def test_rclone_ftp_backend_copies_and_checks(s3srv, work, home):
    """rclone's FTP backend (not its S3 one) against zocalo on S3: copy up, check, copy back."""
    server = s3srv()
    src = work / "src"
    src.mkdir()
    files = {f"f{i}.bin": os.urandom(50_000 * (i + 1)) for i in range(5)}
    for name, data in files.items():
        (src / name).write_bytes(data)
    rclone = helpers.need("rclone")
    env = {**os.environ, "HOME": str(home), "RCLONE_CONFIG": str(home / "rclone.conf")}
    obscured = subprocess.run([rclone, "obscure", PASSWORD], check=True, capture_output=True,
                              text=True, env=env).stdout.strip()
    remote = f":ftp,host=127.0.0.1,port={server.srv.port},user={USER},pass={obscured}:"
    run = lambda *args: subprocess.run([rclone, *args], check=True, timeout=120, env=env,
                                       capture_output=True, text=True)
    run("copy", str(src), remote + "r")
    for name, data in files.items():
        assert server.object_sha256(f"r/{name}") == sha256(data), name
    run("check", "--size-only", str(src), remote + "r")
    run("copy", remote + "r", str(work / "back"))
    for name, data in files.items():
        assert (work / "back" / name).read_bytes() == data


def test_listings_follow_every_page(s3srv):
    """2,500 objects, three pages of ListObjectsV2: LIST, NLST and MLSD show every one."""
    server = s3srv()
    names = [f"n{i:05d}" for i in range(2500)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda n: server.put(f"many/{n}", b"x"), names))
    ftp = server.srv.ftp()
    assert sorted(ftp.nlst("many")) in (names, [f"many/{n}" for n in names])
    lines = []
    ftp.retrlines("LIST many", lines.append)
    assert len(lines) == 2500
    assert sorted(name for name, _ in ftp.mlsd("many")) == names
    ftp.quit()


def test_commands_with_object_storage_meanings(s3srv):
    """APPE and REST+STOR are refused with 504 and say why; STOU never overwrites; a
    non-empty directory is not renamed; DELE of nothing is 550; MDTM comes from HEAD."""
    server = s3srv()
    ftp = server.srv.ftp()
    helpers.upload(ftp, "f.txt", b"0123456789")
    with pytest.raises(ftplib.error_perm, match="^504 .*object storage"):
        helpers.upload(ftp, "f.txt", b"more", cmd="APPE")
    with pytest.raises(ftplib.error_perm, match="^504 .*object storage"):
        helpers.upload(ftp, "f.txt", b"tail", rest=5)
    assert server.object_sha256("f.txt") == sha256(b"0123456789"), "nothing was truncated"
    reply = helpers.upload(ftp, "f.txt", b"unique", cmd="STOU")
    stored = reply.split()[-1].rstrip(".")
    assert stored != "f.txt" and server.object_sha256(stored) == sha256(b"unique")
    assert ftp.sendcmd("MDTM f.txt").startswith("213 2")
    ftp.mkd("d")
    helpers.upload(ftp, "d/x", b"x")
    with pytest.raises(ftplib.error_perm, match="^504 .*not empty"):
        ftp.rename("d", "e")
    ftp.mkd("empty")
    ftp.rename("empty", "renamed")
    assert "renamed/" in server.keys() and "empty/" not in server.keys()
    with pytest.raises(ftplib.error_perm, match="^550"):
        ftp.delete("missing")
    with pytest.raises(ftplib.error_perm, match="^550"):
        ftp.cwd("missing")
    with pytest.raises(ftplib.error_perm, match="^550"):
        helpers.upload(ftp, "nodir/x", b"x")
    ftp.quit()


@pytest.mark.parametrize("how", ["abor", "reset"])
def test_an_abandoned_upload_never_replaces_the_object(s3srv, how):
    """A STOR stopped after several parts, by ABOR or by a reset data connection, leaves the
    old object whole and no parts behind. (A data connection closed cleanly is, in FTP's
    stream mode, the end of the file: that upload is complete.)"""
    server = s3srv()
    old = os.urandom(100_000)
    server.put("keep.bin", old)
    ftp = server.srv.ftp()
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd("STOR keep.bin")
    chunk = os.urandom(1 << 20)
    for _ in range(20):  # 20 MiB: at least two parts went up
        conn.sendall(chunk)
    if how == "abor":
        ftp.sock.sendall(b"ABOR\r\n")
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()  # with SO_LINGER 0: a reset, not an end of file
    if how == "abor":
        lines = [ftp.getline() for _ in range(2)]
        assert lines[0][:3] in ("426", "225", "226") and lines[-1][:3] in ("225", "226"), lines
    else:
        with pytest.raises(ftplib.Error, match="^4"):
            ftp.voidresp()
    pending = helpers.poll_until(lambda: server.pending_uploads() == [], 20)
    assert pending, f"parts left behind: {server.pending_uploads()}"
    assert server.object_sha256("keep.bin") == sha256(old)
    assert ftp.sendcmd("NOOP").startswith("200")
    ftp.quit()


def test_users_file_homes_are_prefixes(s3srv, seaweed, tmp_path):
    users = tmp_path / "users"
    subprocess.run([str(helpers.zocalo_bin()), "user", "add", "--users", str(users), "--home",
                    "bob", "bob"], input="builder\n", text=True, check=True, timeout=60)
    server = s3srv(extra=["--users", str(users)])
    ftp = server.srv.ftp("bob", "builder")
    helpers.upload(ftp, "mine.txt", b"bob's")
    assert server.object_sha256("bob/mine.txt") == sha256(b"bob's")
    assert ftp.nlst() == ["mine.txt"]
    ftp.quit()


def test_a_default_home_is_the_root_and_a_missing_home_is_made(s3srv, tmp_path):
    users = tmp_path / "users"
    for name, home in (("dot", []), ("new", ["--home", "a/b"])):
        subprocess.run([str(helpers.zocalo_bin()), "user", "add", "--users", str(users), *home,
                        name], input="pw\n", text=True, check=True, timeout=60)
    assert users.read_text().startswith("dot:") and ":.:rw\n" in users.read_text(), "home `.`"
    server = s3srv(extra=["--users", str(users)])
    admin = server.srv.ftp()
    helpers.upload(admin, "top.txt", b"top")
    admin.mkd("sub")
    # `.` is the root: its listing and its directories are the root's.
    dot = server.srv.ftp("dot", "pw")
    assert sorted(dot.nlst()) == ["sub", "top.txt"]
    assert dot.cwd("sub").startswith("250")
    # A home that nothing is under yet is made at the first login, each level of it.
    new = server.srv.ftp("new", "pw")
    assert {"a/", "a/b/"} <= set(server.keys()), server.keys()
    assert new.nlst() == []
    helpers.upload(new, "mine.txt", b"new's")
    assert server.object_sha256("a/b/mine.txt") == sha256(b"new's")
    assert dot.nlst("/a") == ["/a/b"]
    for c in (admin, dot, new):
        c.quit()


def test_an_upload_check_completes_the_object_only_after_its_verdict(s3srv, tmp_path):
    check = tmp_path / "check.sh"
    seen = tmp_path / "seen"
    # The check reads the spool copy of the bytes; it records what it saw.
    check.write_text(f'#!/bin/sh\ncat "$ZOCALO_FILE" >> {seen}\n'
                     'if grep -q VIRUS "$ZOCALO_FILE"; then echo "infected"; exit 1; fi\n')
    check.chmod(0o755)
    cfg = tmp_path / "hooks.toml"
    cfg.write_text(f'[[hook]]\nevents = ["upload"]\ncommand = ["{check}"]\ncheck = true\n')
    server = s3srv(extra=["--config", str(cfg)])
    ftp = server.srv.ftp()
    with pytest.raises(ftplib.error_perm, match="^550 infected"):
        helpers.upload(ftp, "bad.bin", b"VIRUS in a bucket")
    assert server.keys() == [], "a refused upload leaves no object"
    assert server.pending_uploads() == [], "and no unfinished multipart upload"
    good = os.urandom(200_000)
    assert helpers.upload(ftp, "good.bin", good).startswith("226")
    assert server.object_sha256("good.bin") == sha256(good)
    assert seen.read_bytes() == b"VIRUS in a bucket" + good, "the check saw the bytes"
    assert not list(Path(tempfile.gettempdir()).glob(f"zocalo-check-{server.srv.proc.pid}-*"))
    ftp.quit()


def test_tftp_serves_the_same_bucket(s3srv, work, tmp_path):
    server = s3srv(extra=["--tftp", "127.0.0.1:0"])
    tftp_line = lambda: next((l for l in server.srv.stdout_tail if "tftp://" in l), None)
    line = helpers.poll_until(tftp_line, 10)
    assert line, f"no tftp listener reported: {server.srv.stdout_tail}"
    port = line.split("tftp://", 1)[1].split()[0].rsplit(":", 1)[1]
    data = os.urandom(700_000)
    server.put("boot.img", data)
    out = work / "boot.img"
    subprocess.run([helpers.need("tftp"), "127.0.0.1", port, "-m", "binary", "-c", "get",
                    "boot.img", str(out)], check=True, timeout=60, cwd=work)
    assert out.read_bytes() == data


# -- faults: a storage node lost mid-transfer, and the whole storage gone

FAULT_SIZE = 100 * 1024 * 1024


def _stored_sha256(server, path: str, timeout: float = 60) -> str | None:
    """The object's SHA-256 once the cluster serves it again: right after a node dies, reads
    may fail (or say NoSuchKey) until the masters have elected a leader and the filers
    caught up, about 15 s."""
    got = []

    def read():
        try:
            got.append(server.object_sha256(path))
            return True
        except Exception:
            return False

    helpers.poll_until(read, timeout, interval=0.5)
    return got[-1] if got else None


def _final_reply(ftp, conn) -> str:
    """Closes the data connection and returns the transfer's final reply; a transfer either
    completed or ended with a 4xx reply that says what happened."""
    conn.close()
    try:
        reply = ftp.voidresp()
    except ftplib.Error as e:
        reply = str(e)
    assert reply.startswith("226") or reply[:1] == "4", reply
    return reply


@pytest.fixture
def fault_data(tmp_path_factory):
    return os.urandom(FAULT_SIZE)


def _restart(seaweed, i: int) -> None:
    if not seaweed.nodes[i].alive():
        seaweed.start_node(i)


def test_storage_node_killed_during_an_upload(s3srv, seaweed, fault_data):
    """Node 3 is SIGKILLed while 100 MiB go up through node 1's gateway: the upload completes
    with the right bytes or ends with a 4xx, what was stored before is intact, and the server
    keeps serving."""
    server = s3srv(timeout=10)
    before = os.urandom(2 * 1024 * 1024)
    server.put("before.bin", before)
    # Stored means: every filer has its metadata (SeaweedFS copies it asynchronously).
    seaweed.wait_replicated([server.key("before.bin")])
    ftp = server.srv.ftp(timeout=60)
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd("STOR big.bin")
    try:
        view = memoryview(fault_data)
        step = 1 << 20
        for offset in range(0, FAULT_SIZE, step):
            if offset == 30 * step:
                seaweed.kill_node(2)
            try:
                conn.sendall(view[offset:offset + step])
            except OSError:
                break  # the server ended the transfer: its reply says why
        reply = _final_reply(ftp, conn)
        assert _stored_sha256(server, "before.bin") == sha256(before)
        assert ftp.sendcmd("NOOP").startswith("200")
        assert helpers.download(ftp, "before.bin") == before
        ftp.quit()
        # The new object's metadata may live in the killed node's filer until it is back.
        _restart(seaweed, 2)
        if reply.startswith("226"):
            assert _stored_sha256(server, "big.bin") == sha256(fault_data)
    finally:
        _restart(seaweed, 2)


def test_storage_node_killed_during_a_download(s3srv, seaweed, fault_data):
    server = s3srv(timeout=10)
    # Setting up, not what is tested: right after the previous test's node restart the cluster
    # may still be electing a leader, and a PUT then times out.
    seaweed.wait_for(lambda: server.put("big.bin", fault_data) or True, 120,
                     "the cluster to store the 100 MiB object")
    seaweed.wait_replicated([server.key("big.bin")])
    ftp = server.srv.ftp(timeout=60)
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd("RETR big.bin")
    got = bytearray()
    try:
        while True:
            chunk = conn.recv(1 << 20)
            if not chunk:
                break
            got += chunk
            if len(got) >= 30 << 20 and seaweed.nodes[1].alive():
                seaweed.kill_node(1)
        reply = _final_reply(ftp, conn)
        if reply.startswith("226"):
            assert sha256(bytes(got)) == sha256(fault_data)
        else:
            assert bytes(got) == fault_data[:len(got)], "what arrived is a prefix of the file"
        assert ftp.sendcmd("NOOP").startswith("200")
        assert _stored_sha256(server, "big.bin") == sha256(fault_data)
        ftp.quit()
    finally:
        _restart(seaweed, 1)


def test_whole_storage_down_answers_451_and_service_resumes(s3srv, seaweed):
    """Every node stopped: commands that need the storage answer 451 within the request
    timeout, commands that do not still work, and when the cluster is back so is the service."""
    server = s3srv(timeout=3)
    data = os.urandom(300_000)
    server.put("kept.bin", data)
    seaweed.wait_replicated([server.key("kept.bin")])
    ftp = server.srv.ftp(timeout=30)
    seaweed.stop_all()
    try:
        for line in ("SIZE kept.bin", "MKD d", "DELE kept.bin", "CWD elsewhere"):
            started = time.monotonic()
            reply = helpers.reply_of(ftp, line)
            assert reply.startswith("451"), f"{line}: {reply}"
            assert "unreachable" in reply or "S3" in reply, reply
            assert time.monotonic() - started < 20, f"{line} took too long"
        with pytest.raises(ftplib.error_temp, match="^451"):
            helpers.download(ftp, "kept.bin")
        with pytest.raises(ftplib.error_temp, match="^451"):
            helpers.upload(ftp, "new.bin", b"x")
        assert ftp.sendcmd("NOOP").startswith("200")
        assert ftp.pwd() == "/"
    finally:
        seaweed.start_all()
    # Back: the cluster answers again (its first requests after a restart can still time out
    # while its masters settle), and the same session is served the same bytes.
    seaweed.wait_for(lambda: helpers.download(ftp, "kept.bin") == data, 60,
                     "zocalo to serve kept.bin again")
    # Writes need the volume servers too, which can settle after the reads are back (a run
    # saw a read served and the next upload's 3 s request time out): retried the same way.
    seaweed.wait_for(lambda: helpers.upload(ftp, "after.bin", b"back"), 60,
                     "zocalo to store after.bin")
    assert server.object_sha256("after.bin") == sha256(b"back")
    ftp.quit()


def test_a_plain_http_store_without_the_flag_says_which_flag(seaweed, tmp_path):
    env = {**os.environ, "AWS_ACCESS_KEY_ID": seaweed.access_key,
           "AWS_SECRET_ACCESS_KEY": seaweed.secret_key}
    p = subprocess.run([str(helpers.zocalo_bin()), "serve", "--listen", "127.0.0.1:0",
                        "--storage", f"s3://{seaweed.endpoint(0)}/{seaweed.bucket}/x"],
                       capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert p.returncode != 0, p.stderr
    assert "plain HTTP" in p.stderr and "--s3-insecure-http" in p.stderr, p.stderr
