"""Load: 200 clients connected to one server at the same time, each moving its own file.

For every concurrent model (the iterative model serves one client at a time by design and
is not generated here): all 200 control connections are opened and greeted first, then all
200 log in, and only then does each client upload and download its own ~64 KiB random file,
checked by sha256 both on the server's disk and on the way back.

Plus the pool model's queue limit: beyond its busy workers and its queue, a client is told
421 at once instead of waiting.
"""

from __future__ import annotations

import concurrent.futures
import ftplib
import os
import time

import pytest

from helpers import PASSWORD, TIMEOUT, USER, download, sha256, upload

CLIENTS = 200
FILE_SIZE = 64 * 1024
WORKERS = 32  # test-side threads driving the 200 sessions
DEADLINE = 120.0  # for the whole load test (connect, login, transfers)

LOAD_MODELS = ["process", "thread", "pool:200", "select", "poll", "epoll", "uring"]


@pytest.fixture(params=LOAD_MODELS)
def model(request):
    return request.param


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    assert left > 0, "load test deadline exceeded"
    return left


def _run_all(pool, fn, items, deadline: float) -> list:
    """Run fn over items on the pool; every result must arrive before the deadline."""
    futures = [pool.submit(fn, *item) for item in items]
    done, pending = concurrent.futures.wait(futures, timeout=_left(deadline))
    for f in pending:
        f.cancel()
    assert not pending, f"{len(pending)} of {len(futures)} clients did not finish in time"
    return [f.result() for f in futures]  # re-raises the first client failure


@pytest.mark.concurrent
def test_200_simultaneous_clients_upload_and_download(start_server, model):
    srv = start_server(model, extra=["--max-per-ip", CLIENTS + 10])
    deadline = time.monotonic() + DEADLINE
    payloads = [os.urandom(FILE_SIZE + i) for i in range(CLIENTS)]  # distinct sizes too

    def connect(i: int) -> ftplib.FTP:
        ftp = ftplib.FTP(timeout=TIMEOUT, encoding="utf-8")
        srv.clients.append(ftp)  # closed (QUIT) before the leak check, even on failure
        ftp.connect(srv.host, srv.port)
        assert ftp.getwelcome().startswith("220"), (i, ftp.getwelcome())
        return ftp

    def login(i: int, ftp: ftplib.FTP) -> str:
        return ftp.login(USER, PASSWORD)

    def transfer(i: int, ftp: ftplib.FTP) -> tuple[str, str]:
        name = f"client{i:03d}.bin"
        resp = upload(ftp, name, payloads[i])
        assert resp.startswith("226"), (i, resp)
        assert ftp.size(name) == len(payloads[i])
        back = download(ftp, name)
        return sha256(back), ftp.sendcmd("NOOP")

    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        # 1. every control connection open and greeted (none of them closed yet)
        clients = _run_all(pool, connect, [(i,) for i in range(CLIENTS)], deadline)
        assert len(clients) == CLIENTS

        # 2. all 200 log in while all 200 are connected
        replies = _run_all(pool, login, list(enumerate(clients)), deadline)
        assert all(r.startswith("230") for r in replies), [r for r in replies if not r.startswith("230")][:3]
        # the server really holds them all at once
        if model == "process":
            assert srv.resources()["children"] == CLIENTS, srv.resources()
        elif model == "thread":
            assert srv.resources()["threads"] >= CLIENTS, srv.resources()
        assert srv.resources()["fds"] >= CLIENTS or model == "process", srv.resources()

        # 3. all 200 transfer, still all connected
        results = _run_all(pool, transfer, list(enumerate(clients)), deadline)

    for i, (digest, noop) in enumerate(results):
        assert digest == sha256(payloads[i]), f"client {i}: downloaded content differs"
        assert noop.startswith("200"), (i, noop)
        on_disk = (srv.root / f"client{i:03d}.bin").read_bytes()
        assert sha256(on_disk) == sha256(payloads[i]), f"client {i}: stored content differs"
    # every session is still alive after the load
    for ftp in clients[:: CLIENTS // 10]:
        assert ftp.sendcmd("NOOP").startswith("200")


def test_pool_admits_a_burst_up_to_workers_plus_queue(start_server):
    # The bound is sessions admitted (served or waiting), not jobs in a channel: a burst that
    # fits must not be refused while workers are still waking up to take their jobs.
    srv = start_server("pool:4", extra=["--pool-queue", "4"])
    burst = [srv.ctl(greet=False) for _ in range(8)]
    greetings = [c.reply() for c in burst[:4]]
    assert [code for code, _ in greetings] == [220] * 4, greetings
    for c in burst[4:]:
        assert not c.readable(0.2), "a queued client was answered while every worker was busy"
    extra = srv.ctl(greet=False)
    code, text = extra.reply()
    assert code == 421 and "busy" in text.lower(), text
    # each session that ends lets one queued client in
    for served, queued in zip(burst[:4], burst[4:]):
        assert served.cmd("QUIT")[0] == 221
        code, text = queued.reply()
        assert code == 220, text


def test_pool_queue_full_gets_421_at_once(start_server):
    srv = start_server("pool:1", extra=["--pool-queue", "1"])
    first = srv.ctl()  # holds the only worker
    first.login()
    second = srv.ctl(greet=False)  # accepted, waits in the queue: no greeting yet
    assert not second.readable(0.3), "a queued client was greeted while the only worker was busy"
    third = srv.ctl(greet=False)  # worker busy and queue full
    t0 = time.monotonic()
    code, text = third.reply()
    assert code == 421, text
    assert "busy" in text.lower(), text
    assert time.monotonic() - t0 < TIMEOUT / 2, "the 421 must come at once, not after a wait"
    assert third.wait_closed(), "the refused client was not disconnected"
    assert not second.readable(0), "the queued client got something before the worker was free"
    # the worker frees up: the queued client is served, in order
    assert first.cmd("QUIT")[0] == 221
    assert second.readable(TIMEOUT), "the queued client was never served"
    code, text = second.reply()
    assert code == 220, text
    second.login()
    assert second.cmd("NOOP")[0] == 200


def test_the_default_pool_serves_an_ordinary_parallel_load(start_server):
    srv = start_server("pool", extra=["--max-per-ip", 300])
    clients = [srv.ctl(greet=False) for _ in range(120)]
    for c in clients:
        code, text = c.reply()
        assert code == 220, f"refused or not greeted: {text}"
    for c in clients:
        assert c.cmd("NOOP")[0] == 200
