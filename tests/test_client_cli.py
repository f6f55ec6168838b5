"""`zocalo get` as a user runs it: a download never destroys the local file it would replace."""

from __future__ import annotations

import subprocess

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
