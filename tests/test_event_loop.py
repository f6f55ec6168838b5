"""The event-loop models never do slow work on the loop's thread: storage and authentication
run on worker threads, so one session's large listing or Argon2 login does not hold the others.
Asserted by the order of events, not by time."""

from __future__ import annotations

import os
import select
import subprocess

import pytest

import helpers

EVENT_MODELS = ["select", "poll", "epoll"]
ENTRIES = 50_000


@pytest.fixture(scope="module")
def crowded(tmp_path_factory):
    root = tmp_path_factory.mktemp("crowded")
    big = root / "big"
    big.mkdir()
    for i in range(ENTRIES):
        os.close(os.open(big / f"file-{i:06d}.dat", os.O_CREAT | os.O_WRONLY, 0o644))
    return root


def not_yet_answered(c: helpers.Ctl) -> bool:
    return not c.buf and not select.select([c.sock], [], [], 0)[0]


@pytest.mark.parametrize("model", EVENT_MODELS)
@pytest.mark.parametrize("verb", ["LIST", "MLSD"])
def test_noop_is_answered_while_another_listing_is_built(start_server, crowded, model, verb):
    srv = start_server(model, root=crowded)
    lister, other = srv.ctl(), srv.ctl()
    lister.login()
    other.login()
    lister.cmd("EPSV")
    lister.send(f"{verb} /big")
    assert other.cmd("NOOP")[0] == 200
    assert not_yet_answered(lister), f"{verb} of {ENTRIES} entries was answered before a NOOP"
    assert lister.reply()[0] in (150, 425)


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
    for _ in range(5):
        assert other.cmd("NOOP")[0] == 200
        answered_first += not_yet_answered(hashing)
    assert answered_first > 0, "no NOOP was answered while the Argon2 hash was computed"
    assert hashing.reply()[0] == 230
