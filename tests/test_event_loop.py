"""The event-loop models never do slow work on the loop's thread: storage and authentication
run on worker threads, so one session's large listing or Argon2 login does not hold the others.
Asserted by the order of events, not by time."""

from __future__ import annotations

import os
import select
import socket
import subprocess

import pytest

import helpers

EVENT_MODELS = ["select", "poll", "epoll", "uring"]
ENTRIES = 50_000


@pytest.fixture(scope="module")
def crowded(tmp_path_factory):
    root = tmp_path_factory.mktemp("crowded")
    big = root / "big"
    big.mkdir()
    for i in range(ENTRIES):
        os.close(os.open(big / f"file-{i:06d}.dat", os.O_CREAT | os.O_WRONLY, 0o644))
    return root


def start_stalled_listing(srv, c: helpers.Ctl, verb: str):
    """Starts a listing of /big on a data connection with a 4 KiB receive buffer and reads its
    first bytes; the caller then stops reading. Returns the data socket and those bytes."""
    port = int(c.cmd("EPSV")[1].split("|||")[1].split("|")[0])
    data = socket.socket()
    data.settimeout(helpers.TIMEOUT)
    data.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    data.connect((srv.host, port))
    c.send(f"{verb} /big")
    assert c.reply()[0] == 150
    first = data.recv(4096)
    assert first, "the listing never started"
    return data, first


def not_yet_answered(c: helpers.Ctl) -> bool:
    return not c.buf and not select.select([c.sock], [], [], 0)[0]


@pytest.mark.parametrize("model", EVENT_MODELS)
@pytest.mark.parametrize("verb", ["LIST", "MLSD"])
def test_noop_is_answered_while_another_listing_is_produced(start_server, crowded, model, verb):
    """A listing is produced as its data connection drains; while its reader stalls, the listing
    is neither finished nor holding the loop: another session's NOOP is answered, then the
    listing completes once read."""
    srv = start_server(model, root=crowded)
    lister, other = srv.ctl(), srv.ctl()
    lister.login()
    other.login()
    data, first = start_stalled_listing(srv, lister, verb)
    assert other.cmd("NOOP")[0] == 200
    assert not_yet_answered(lister), f"{verb} finished though nobody read it"
    received = first + helpers.read_all(data)
    data.close()
    assert lister.reply()[0] == 226
    assert received.count(b"\n") == ENTRIES


@pytest.mark.parametrize("model", EVENT_MODELS)
def test_noop_is_answered_while_another_client_logs_in_to_an_argon2_account(
        start_server, tmp_path, model):
    users = tmp_path / "users.txt"
    subprocess.run([str(helpers.zocalo_bin()), "user", "add", "bob", "--users", str(users)],
                   input="bobpw\n", text=True, check=True, timeout=60)
    srv = start_server(model, extra=["--users", users])
    hashing, other = srv.ctl(), srv.ctl()
    other.login()
    assert hashing.cmd("USER bob")[0] == 331
    hashing.send("PASS bobpw")
    answered_first = 0
    for _ in range(20):
        assert other.cmd("NOOP")[0] == 200
        answered_first += not_yet_answered(hashing)
    assert answered_first > 0, "no NOOP was answered while the Argon2 hash was computed"
    assert hashing.reply()[0] == 230


def rss_kib(pid: int) -> int:
    total = 0
    for p in [pid, *helpers._children_of(pid)]:
        with open(f"/proc/{p}/status") as f:
            total += next((int(l.split()[1]) for l in f if l.startswith("VmRSS:")), 0)
    return total


# Not the process model: each child's RSS counts the pages it shares with its parent.
@pytest.mark.parametrize("model", ["epoll", "uring", "thread"])
@pytest.mark.parametrize("verb", ["LIST", "MLSD"])
def test_stalled_listings_of_a_large_directory_cost_little_memory(
        start_server, crowded, model, verb):
    srv = start_server(model, root=crowded)
    before = rss_kib(srv.proc.pid)
    stalled = []
    for _ in range(30):
        c = srv.ctl()
        c.login()
        data, _ = start_stalled_listing(srv, c, verb)
        stalled.append((c, data))
    grown = rss_kib(srv.proc.pid) - before
    # Each listing built whole was about 3.5 MB (50,000 entries); streamed, a few hundred KiB.
    assert grown < 20 * 1024, f"30 stalled listings took {grown} KiB"
    for c, data in stalled:
        data.close()
