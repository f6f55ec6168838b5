"""Fixtures for the zocalo functional suite.

* ``model``        -- every server model (overridden in test_clients.py to a few).
* ``start_server`` -- factory: start ``zocalo serve`` on port 0 with a fresh root,
                      wait for its ``listening ftp://...`` lines, SIGTERM it at teardown.
* ``srv``          -- the default server for ``model`` (user alice + read-only anonymous).
* ``big``          -- a 32 MiB random payload, generated once per session (per xdist worker).
* ``seaweed``      -- a three-node SeaweedFS cluster serving S3 on loopback (tests/seaweed.py),
                      once per session; tests using it are marked ``xdist_group("s3")``.

After each passing test body, the clients registered on each server are closed and the
server's open fds, threads and child processes must come back to what they were right
after start-up (polled in /proc with a bounded deadline); otherwise the test fails.
"""

from __future__ import annotations

import os
import subprocess

import pytest

import helpers
from helpers import MODELS


def pytest_configure(config):
    config.addinivalue_line("markers", "concurrent: needs two simultaneous clients (not for iterative)")


@pytest.fixture(params=MODELS)
def model(request):
    return request.param


def pytest_collection_modifyitems(config, items):
    """Tests marked ``concurrent`` need two clients at once, which the iterative model by
    design does not serve: they are not generated for it (nothing is skipped)."""
    kept, dropped = [], []
    for item in items:
        params = getattr(item, "callspec", None)
        model = params.params.get("model") if params else None
        if item.get_closest_marker("concurrent") and model == "iterative":
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture
def start_server(tmp_path):
    started: list[helpers.Server] = []
    count = [0]

    def start(model: str, root=None, **kwargs) -> helpers.Server:
        count[0] += 1
        if root is None:
            root = tmp_path / ("root" if count[0] == 1 else f"root{count[0]}")
            root.mkdir(exist_ok=True)
        srv = helpers.launch(model, root, tmp_path / f"server{count[0]}.log", **kwargs)
        started.append(srv)
        helpers.ACTIVE.append(srv)
        return srv

    yield start

    problems = []
    for srv in started:
        srv.close_clients()
        rc = srv.stop()
        if srv in helpers.ACTIVE:
            helpers.ACTIVE.remove(srv)
        if rc is None:
            problems.append(f"server {srv.argv} did not exit within "
                            f"{helpers.STOP_DEADLINE}s of SIGTERM (killed)")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def home(tmp_path):
    """A private $HOME so no user configuration (~/.curlrc, ~/.lftprc, ~/.wgetrc) leaks in."""
    h = tmp_path / "home"
    h.mkdir()
    return h


@pytest.fixture
def work(tmp_path):
    w = tmp_path / "work"
    w.mkdir()
    return w


@pytest.fixture
def srv(start_server, model):
    return start_server(model)


@pytest.fixture(scope="session")
def big(tmp_path_factory):
    data = os.urandom(32 * 1024 * 1024)
    path = tmp_path_factory.mktemp("big") / "big.bin"
    path.write_bytes(data)
    return data


@pytest.fixture(scope="session")
def seaweed():
    """A started three-node SeaweedFS cluster, stopped (every process, by PID) and removed at
    the end. Session-scoped, so one per xdist worker: tests that use it are marked
    ``@pytest.mark.xdist_group("s3")`` and scripts/test.sh runs ``--dist loadgroup``, which
    sends them all to one worker, one cluster."""
    from seaweed import Cluster  # here, so only the S3 tests need boto3

    cluster = Cluster().start()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="session")
def ipv6():
    if not helpers.have_ipv6():
        pytest.fail("no IPv6 loopback on this machine: the IPv6 tests cannot run")
    return True


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """Leak check: runs after a passing test body, inside the test's own call phase."""
    result = yield
    holder = getattr(item, "page_holder", None)
    if holder is not None:
        holder.close()  # a console test's browser page: its connections must go too
    problems = []
    for srv in list(helpers.ACTIVE):
        srv.close_clients()
        if not srv.alive():
            problems.append(f"server exited during the test with status {srv.proc.returncode}; "
                            f"log tail:\n{srv.log_tail()}")
            continue
        ok, last = srv.wait_baseline()
        if not ok:
            problems.append(
                f"resources did not return to the start-up baseline within "
                f"{helpers.LEAK_DEADLINE}s: baseline {srv.baseline}, now {last}; "
                f"fds now: {helpers.describe_fds(srv.proc.pid)}")
    if problems:
        raise AssertionError("leak check failed:\n" + "\n".join(problems))
    return result



@pytest.fixture(scope="session")
def certs(tmp_path_factory) -> dict:
    """A self-signed certificate for 127.0.0.1 from ``zocalo cert``."""
    out = tmp_path_factory.mktemp("certs")
    p = subprocess.run([str(helpers.zocalo_bin()), "cert", "--self-signed", "--out", str(out)],
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    cert, key = out / "cert.pem", out / "key.pem"
    assert cert.is_file() and key.is_file()
    return {"cert": cert, "key": key}
