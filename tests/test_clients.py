"""Interoperability: real FTP clients that nobody here wrote (curl, lftp, wget).

Run against a few models only (ftplib covers all of them in test_ftplib.py).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from helpers import PASSWORD, USER, file_sha256, need, sha256

CLIENT_MODELS = ["epoll", "uring", "thread", "process"]
CLIENT_TIMEOUT = 60


@pytest.fixture(params=CLIENT_MODELS)
def model(request):
    return request.param


def run(argv, home: Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, HOME=str(home), LC_ALL="C.UTF-8")
    p = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=CLIENT_TIMEOUT)
    if p.returncode != 0:
        raise AssertionError(f"{argv} exited {p.returncode}\nstdout: {p.stdout[-3000:]!r}\n"
                             f"stderr: {p.stderr[-3000:]!r}")
    return p


def make_tree(base: Path) -> dict[str, bytes]:
    files = {
        "readme.txt": b"hello from zocalo\n",
        "empty.bin": b"",
        "data/blob.bin": os.urandom(300_000),
        "data/deeper/leaf.txt": b"leaf\n" * 100,
    }
    for rel, data in files.items():
        p = base / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return files


def assert_tree(base: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        p = base / rel
        assert p.is_file(), f"missing {p}"
        assert sha256(p.read_bytes()) == sha256(data), f"content differs: {rel}"


# ==========================================================================
# curl


def curl(srv, home, *args):
    return run([need("curl"), "-q", "-sS", "--max-time", "30", *args], home)


def test_curl_download(srv, home, work, big):
    (srv.root / "big.bin").write_bytes(big)
    curl(srv, home, "-o", work / "out.bin", srv.url("big.bin"))
    assert file_sha256(work / "out.bin") == sha256(big)


def test_curl_anonymous_download(srv, home, work):
    (srv.root / "pub.txt").write_bytes(b"anonymous content\n")
    curl(srv, home, "-o", work / "pub.txt", srv.url("pub.txt", auth=False))
    assert (work / "pub.txt").read_bytes() == b"anonymous content\n"


def test_curl_upload(srv, home, work):
    data = os.urandom(1_000_003)
    (work / "up.bin").write_bytes(data)
    curl(srv, home, "-T", work / "up.bin", srv.url(""))
    assert sha256((srv.root / "up.bin").read_bytes()) == sha256(data)


def test_curl_pasv_without_epsv(srv, home, work):
    data = os.urandom(200_000)
    (srv.root / "p.bin").write_bytes(data)
    curl(srv, home, "--ftp-pasv", "--disable-epsv", "-o", work / "p.bin", srv.url("p.bin"))
    assert (work / "p.bin").read_bytes() == data


@pytest.mark.parametrize("port_args", [
    ["--ftp-port", "127.0.0.1"],                    # EPRT first, PORT fallback
    ["--ftp-port", "127.0.0.1", "--disable-eprt"],  # PORT only
    ["-P", "-"],                                    # same address as the control connection
], ids=["eprt", "port", "dash"])
def test_curl_active(srv, home, work, port_args):
    data = os.urandom(200_000)
    (srv.root / "a.bin").write_bytes(data)
    curl(srv, home, *port_args, "-o", work / "a.bin", srv.url("a.bin"))
    assert (work / "a.bin").read_bytes() == data
    (work / "b.bin").write_bytes(data[::-1])
    curl(srv, home, *port_args, "-T", work / "b.bin", srv.url(""))
    assert (srv.root / "b.bin").read_bytes() == data[::-1]


def test_curl_list_only(srv, home):
    make_tree(srv.root)
    p = curl(srv, home, "-l", srv.url(""))
    assert sorted(p.stdout.decode().split()) == ["data", "empty.bin", "readme.txt"]


def test_curl_directory_listing(srv, home):
    make_tree(srv.root)
    lines = curl(srv, home, srv.url("data/")).stdout.decode().splitlines()
    assert any(l.endswith(" blob.bin") and " 300000 " in l for l in lines), lines
    assert any(l.startswith("d") and l.endswith(" deeper") for l in lines), lines


def test_curl_create_dirs(srv, home, work):
    (work / "f.txt").write_bytes(b"nested upload\n")
    curl(srv, home, "--ftp-create-dirs", "-T", work / "f.txt", srv.url("a/b/c/f.txt"))
    assert (srv.root / "a" / "b" / "c" / "f.txt").read_bytes() == b"nested upload\n"


def test_curl_resume_download(srv, home, work):
    data = os.urandom(500_000)
    (srv.root / "r.bin").write_bytes(data)
    (work / "r.bin").write_bytes(data[:123_456])
    curl(srv, home, "-C", "-", "-o", work / "r.bin", srv.url("r.bin"))
    assert sha256((work / "r.bin").read_bytes()) == sha256(data)


def test_curl_resume_upload(srv, home, work):
    data = os.urandom(500_000)
    (srv.root / "u.bin").write_bytes(data[:200_000])
    (work / "u.bin").write_bytes(data)
    curl(srv, home, "-C", "-", "-T", work / "u.bin", srv.url("u.bin"))
    assert sha256((srv.root / "u.bin").read_bytes()) == sha256(data)


def test_curl_quote_rename_and_delete(srv, home):
    (srv.root / "x.txt").write_bytes(b"x")
    (srv.root / "y.txt").write_bytes(b"y")
    curl(srv, home, "-Q", "RNFR x.txt", "-Q", "RNTO z.txt", "-Q", "DELE y.txt", "-l", srv.url(""))
    assert sorted(os.listdir(srv.root)) == ["z.txt"]


def test_curl_ipv6(start_server, model, home, work, ipv6):
    srv = start_server(model, ipv6=True)
    data = os.urandom(300_000)
    (srv.root / "six.bin").write_bytes(data)
    curl(srv, home, "-g", "-o", work / "six.bin", srv.url("six.bin", family=6))
    assert (work / "six.bin").read_bytes() == data
    curl(srv, home, "-g", "-T", work / "six.bin", srv.url("back.bin", family=6))
    assert (srv.root / "back.bin").read_bytes() == data
    curl(srv, home, "-g", "-P", "-", "-o", work / "six-active.bin", srv.url("six.bin", family=6))
    assert (work / "six-active.bin").read_bytes() == data


def test_curl_wrong_password_fails(srv, home, work):
    (srv.root / "f.txt").write_bytes(b"x")
    p = subprocess.run([need("curl"), "-q", "-sS", "--max-time", "30", "-o", str(work / "f.txt"),
                        f"ftp://{USER}:wrong@{srv.host}:{srv.port}/f.txt"],
                       env=dict(os.environ, HOME=str(home)), capture_output=True,
                       timeout=CLIENT_TIMEOUT, stdin=subprocess.DEVNULL)
    assert p.returncode == 67, p  # CURLE_LOGIN_DENIED
    assert not (work / "f.txt").exists()


# ==========================================================================
# lftp

LFTP_SETTINGS = ("set ftp:ssl-allow no; set net:max-retries 1; set net:timeout 10; "
                 "set net:reconnect-interval-base 1; set cmd:fail-exit yes; set xfer:clobber on; ")


def lftp(srv, home, work, script: str, passive: bool = True, family: int = 4):
    host, port = srv.addr(family)
    h = f"[{host}]" if family == 6 else host
    mode = "on" if passive else "off"
    full = (LFTP_SETTINGS + f"set ftp:passive-mode {mode}; "
            f"open -u {USER},{PASSWORD} ftp://{h}:{port}; " + script)
    return run([need("lftp"), "-c", full], home, cwd=work)


def test_lftp_put_get(srv, home, work, big):
    (work / "big.bin").write_bytes(big)
    lftp(srv, home, work, "put big.bin -o remote.bin; get remote.bin -o back.bin")
    assert file_sha256(srv.root / "remote.bin") == sha256(big)
    assert file_sha256(work / "back.bin") == sha256(big)


def test_lftp_active_mode(srv, home, work):
    data = os.urandom(400_000)
    (work / "a.bin").write_bytes(data)
    lftp(srv, home, work, "set ftp:port-ipv4 127.0.0.1; put a.bin -o r.bin; get r.bin -o b.bin",
         passive=False)
    assert (srv.root / "r.bin").read_bytes() == data
    assert (work / "b.bin").read_bytes() == data


def test_lftp_mirror_download(srv, home, work):
    files = make_tree(srv.root / "tree")
    lftp(srv, home, work, "mirror tree local")
    assert_tree(work / "local", files)


def test_lftp_mirror_upload(srv, home, work):
    files = make_tree(work / "src")
    lftp(srv, home, work, "mirror -R src uploaded")
    assert_tree(srv.root / "uploaded", files)


def test_lftp_ls_mkdir_mv_rm(srv, home, work):
    (srv.root / "one.txt").write_bytes(b"1")
    (srv.root / "two.txt").write_bytes(b"2")
    out = lftp(srv, home, work, "mkdir newdir; mv one.txt newdir/uno.txt; rm two.txt; "
                                "cls -1; cls -1 newdir").stdout.decode()
    assert sorted(os.listdir(srv.root)) == ["newdir"]
    assert (srv.root / "newdir" / "uno.txt").read_bytes() == b"1"
    assert "newdir" in out and "uno.txt" in out
    out = lftp(srv, home, work, "ls").stdout.decode()
    assert any(l.startswith("d") and l.endswith(" newdir") for l in out.splitlines()), out
    lftp(srv, home, work, "rm newdir/uno.txt; rmdir newdir")
    assert os.listdir(srv.root) == []


def test_lftp_utf8_names(srv, home, work):
    name = "naïve café ☕.txt"
    (work / name).write_bytes(b"utf8")
    lftp(srv, home, work, f"put '{name}'; cls -1")
    assert (srv.root / name).read_bytes() == b"utf8"


def test_lftp_ipv6(start_server, model, home, work, ipv6):
    srv = start_server(model, ipv6=True)
    data = os.urandom(200_000)
    (work / "six.bin").write_bytes(data)
    lftp(srv, home, work, "put six.bin -o r.bin; get r.bin -o b.bin", family=6)
    assert (srv.root / "r.bin").read_bytes() == data
    assert (work / "b.bin").read_bytes() == data


# ==========================================================================
# wget


def wget(home, work, *args):
    return run([need("wget"), "-q", "--tries=1", "--timeout=10", *args], home, cwd=work)


def test_wget_download(srv, home, work, big):
    (srv.root / "big.bin").write_bytes(big)
    wget(home, work, srv.url("big.bin"), "-O", work / "out.bin")
    assert file_sha256(work / "out.bin") == sha256(big)


def test_wget_anonymous_and_active(srv, home, work):
    data = os.urandom(100_000)
    (srv.root / "pub.bin").write_bytes(data)
    wget(home, work, srv.url("pub.bin", auth=False), "-O", work / "pasv.bin")
    wget(home, work, "--no-passive-ftp", srv.url("pub.bin", auth=False), "-O", work / "port.bin")
    assert (work / "pasv.bin").read_bytes() == data
    assert (work / "port.bin").read_bytes() == data


def test_wget_recursive(srv, home, work):
    files = make_tree(srv.root / "tree")
    wget(home, work, "-r", "-nH", "--no-parent", "-P", work / "dl", srv.url("tree/"))
    assert_tree(work / "dl" / "tree", files)


def test_wget_continue(srv, home, work):
    data = os.urandom(400_000)
    (srv.root / "c.bin").write_bytes(data)
    (work / "c.bin").write_bytes(data[:99_999])
    wget(home, work, "-c", srv.url("c.bin"))
    assert sha256((work / "c.bin").read_bytes()) == sha256(data)


def test_tnftp_mget_with_a_wildcard(srv, home, work):
    """tnftp's `mget *.bin` sends `NLST *.bin` and fetches each (relative) name it gets back."""
    (srv.root / "tn").mkdir()
    files = {"a.bin": os.urandom(1000), "b.bin": os.urandom(2000), "c.txt": b"not me"}
    for name, data in files.items():
        (srv.root / "tn" / name).write_bytes(data)
    host, port = srv.addr()
    script = f"user {USER} {PASSWORD}\nbinary\nlcd {work}\ncd /tn\nmget *.bin\nbye\n"
    env = dict(os.environ, HOME=str(home), LC_ALL="C.UTF-8")
    p = subprocess.run([need("tnftp"), "-i", "-n", "-v", host, str(port)], input=script.encode(),
                       env=env, capture_output=True, timeout=CLIENT_TIMEOUT, cwd=work)
    assert p.returncode == 0, p.stdout[-2000:]
    got = sorted(x.name for x in work.iterdir() if x.is_file())
    assert got == ["a.bin", "b.bin"], (got, p.stdout[-2000:])
    for name in got:
        assert (work / name).read_bytes() == files[name]
