"""The web console (`--console`), in a real browser: headless Chromium driven by Playwright
(tests/console_browser.py), against a real server; real FTP clients (curl, ftplib) make the
sessions it shows. The API is also called as a script would, with urllib.

The two-node part (a drain through the console, HAProxy then sending new sessions to the other
node) is in tests/test_cluster.py with the rest of the cluster.
"""
from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request

import pytest
from playwright.sync_api import sync_playwright

import helpers
from console_browser import (ADMIN, ADMIN_PW, PAGE_DEADLINE_MS, VIEWER, VIEWER_PW,
                             console_config, launch_browser, shot, sign_in)
from helpers import poll_until

BIG = 96 * 1024 * 1024  # a download that a rate-limited curl keeps running for a while
CURL_RATE = "1M"
DEADLINE = 30.0


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = launch_browser(p)
        try:
            yield b
        finally:
            b.close()


class Page:
    """A page of a browser context of its own, closed when the test body ends (within the
    test, before the server's leak check: the console closes the browser's kept-alive
    connections 2 s after the page stops polling)."""

    def __init__(self, browser):
        self.context = browser.new_context()
        self.page = self.context.new_page()

    def close(self):
        if self.context is not None:
            self.context.close()
            self.context = None


@pytest.fixture
def page(browser, request):
    holder = Page(browser)
    request.node.page_holder = holder
    yield holder.page
    holder.close()


@pytest.fixture
def console(start_server, tmp_path):
    """Factory: a server with the console, in `model`; returns (server, base URL, tokens)."""
    def start(model: str = "epoll", extra=()):
        tokens = console_config(tmp_path / "console.toml")
        port = helpers.free_port()
        root = tmp_path / f"root-{model.replace(':', '-')}"
        root.mkdir()
        with open(root / "big.bin", "wb") as f:
            f.truncate(BIG)
        srv = start_server(model, root=root, extra=[
            "--config", tmp_path / "console.toml", "--console", f"127.0.0.1:{port}", *extra])
        base = f"http://127.0.0.1:{port}"
        assert poll_until(lambda: _status(base + "/health") == 200, 10, 0.05), srv.log_tail()
        return srv, base, tokens
    return start


def _status(url: str, **kwargs) -> int:
    return api(url, **kwargs)[0]


def api(url: str, token: str | None = None, method: str = "GET", headers=None):
    """(status, JSON body or text) of one API call."""
    request = urllib.request.Request(url, method=method, headers=dict(headers or {}))
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            status, body = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    except OSError:
        return 0, None
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode("utf-8", "replace")


def slow_download(srv) -> subprocess.Popen:
    return subprocess.Popen(
        [helpers.need("curl"), "-s", "--limit-rate", CURL_RATE, "-m", "120", "-o", "/dev/null",
         srv.url("big.bin")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def progress_of(page) -> int | None:
    bar = page.locator('#sessions tr:has(td.transfer:text-is("RETR /big.bin")) progress')
    if bar.count() == 0:
        return None
    value = bar.first.get_attribute("value")
    return int(float(value)) if value else None


def test_a_page_loaded_without_signing_in_gets_the_sign_in_page(console, page):
    srv, base, _ = console()
    for path in ("/", "/index.html", "/console.js", "/api-less/anything"):
        response = page.goto(base + path)
        assert response.headers["content-type"].startswith("text/html"), path
        assert page.locator("form#sign-in").count() == 1, f"{path}: {page.content()[:300]}"
    shot(page, "sign-in")
    assert api(base + "/api/v1/sessions")[0] == 401
    assert api(base + "/api/v1/overview")[0] == 401
    assert api(base + "/health")[0] == 200, "/health needs no sign-in"
    page.fill("#name", ADMIN)
    page.fill("#password", "not the password")
    page.click("#submit")
    assert "Wrong name or password" in page.inner_text("body")
    assert page.locator("form#sign-in").count() == 1


@pytest.mark.parametrize("model", ["epoll", "uring", "process"])
def test_sign_in_watch_a_download_move_and_kick_it(console, page, model):
    srv, base, _ = console(model)
    sign_in(page, base, ADMIN, ADMIN_PW)
    cookie = next(c for c in page.context.cookies() if c["name"] == "zocalo_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict", cookie
    assert page.inner_text(".node .model-name") == model
    curl = slow_download(srv)
    try:
        assert poll_until(lambda: progress_of(page) is not None, DEADLINE, 0.1), \
            f"no download in the sessions table\n{srv.log_tail()}"
        first = progress_of(page)
        assert poll_until(lambda: (progress_of(page) or 0) > first, DEADLINE, 0.1), \
            f"the progress bar stayed at {first}"
        row = page.locator('#sessions tr:has(td.transfer:text-is("RETR /big.bin"))').first
        assert helpers.USER in row.inner_text() and "RETR" in row.inner_text()
        assert int(row.locator("progress").get_attribute("max")) == BIG
        shot(page, f"sessions-{model}")
        assert poll_until(lambda: page.locator(".node svg .unit").count() > 0, 5, 0.1)
        row.locator("button.kick").click()
        # The client's connections are closed: curl ends, short of the whole file.
        curl.wait(DEADLINE)
        assert curl.returncode != 0, "curl finished the download although it was kicked"
        assert poll_until(lambda: progress_of(page) is None, DEADLINE, 0.1), \
            "the kicked session is still listed"
        assert poll_until(lambda: "kick" in page.inner_text("#events"), DEADLINE, 0.1)
        assert "console action" in srv.log_path.read_text() and f'console_user="{ADMIN}"' in \
            srv.log_path.read_text(), "the action is logged with the console user"
        shot(page, f"after-kick-{model}")
    finally:
        if curl.poll() is None:
            curl.kill()
            curl.wait()


def test_a_view_user_sees_and_cannot_kick(console, page):
    srv, base, _ = console()
    held = srv.ftp()
    sign_in(page, base, VIEWER, VIEWER_PW)
    assert poll_until(lambda: page.locator("#sessions tbody tr").count() >= 1, DEADLINE, 0.1)
    assert page.locator("button.kick").count() == 0, "a view user is offered kick"
    assert page.locator("button.act-drain").count() == 0
    shot(page, "view-role")
    # Even sent by hand, with the page's own CSRF token, the kick is refused.
    status = page.evaluate("""async () => {
        const me = await (await fetch('/api/v1/me')).json();
        const sessions = await (await fetch('/api/v1/sessions')).json();
        const r = await fetch('/api/v1/sessions/' + sessions[0].key + '/kick',
                              {method: 'POST', headers: {'X-CSRF-Token': me.csrf}});
        return r.status;
    }""")
    assert status == 403
    assert held.sendcmd("NOOP").startswith("200"), "the session was kicked"


def test_a_forged_post_without_the_csrf_token_is_refused(console, page):
    srv, base, _ = console()
    held = srv.ftp()
    sign_in(page, base, ADMIN, ADMIN_PW)
    sessions = page.evaluate("async () => (await fetch('/api/v1/sessions')).json()")
    key = sessions[0]["key"]
    # The browser sends the cookie (same site) but the request lacks the token, or has a
    # wrong one: what a forged form or script would send.
    for headers in ({}, {"X-CSRF-Token": "0" * 64}):
        r = page.request.post(f"{base}/api/v1/sessions/{key}/kick", headers=headers)
        assert r.status == 403, (headers, r.status, r.text())
        assert "CSRF" in r.json()["error"]
    r = page.request.post(f"{base}/api/v1/nodes/x/drain")
    assert r.status == 403
    assert api(base + "/health")[0] == 200, "a forged drain was carried out"
    assert held.sendcmd("NOOP").startswith("200"), "a forged kick was carried out"


def test_the_api_with_a_token_and_without(console):
    srv, base, tokens = console()
    held = srv.ftp()
    assert api(base + "/api/v1/sessions")[0] == 401
    assert api(base + "/api/v1/sessions", token="f" * 64)[0] == 401
    status, sessions = api(base + "/api/v1/sessions", token=tokens["view"])
    assert status == 200 and len(sessions) == 1 and sessions[0]["user"] == helpers.USER
    status, nodes = api(base + "/api/v1/nodes", token=tokens["view"])
    assert status == 200 and nodes[0]["model"]["model"] == "epoll"
    node = nodes[0]["node"]
    assert api(f"{base}/api/v1/nodes/{node}/drain", token=tokens["view"],
               method="POST")[0] == 403
    assert api(base + "/health")[0] == 200
    status, body = api(f"{base}/api/v1/nodes/{node}/drain", token=tokens["admin"], method="POST")
    assert status == 200 and body["ok"], body
    assert api(base + "/health")[0] == 503, "drained: /health says so"
    assert api(f"{base}/api/v1/nodes/{node}/undrain", token=tokens["admin"],
               method="POST")[0] == 200
    assert api(base + "/health")[0] == 200
    status, body = api(f"{base}/api/v1/sessions/{sessions[0]['key']}/kick",
                       token=tokens["admin"], method="POST")
    assert status == 200, body
    assert held.sock.recv(4096).startswith(b"421"), "the kicked session was told 421"
    assert api(f"{base}/api/v1/sessions/{node}:999999/kick", token=tokens["admin"],
               method="POST")[0] == 404
    status, events = api(base + "/api/v1/events", token=tokens["view"])
    assert status == 200
    actions = [e["detail"] for e in events if e["kind"] == "console"]
    assert any(a.startswith("kick ") for a in actions) and f"drain {node}" in actions, actions
    assert any(e["kind"] == "login" and e["user"] == helpers.USER for e in events), events


def test_failed_sign_ins_lock_the_address_out(console, page):
    srv, base, _ = console(extra=["--max-login-failures", 3])
    for _ in range(3):
        page.goto(base + "/")
        page.fill("#name", ADMIN)
        page.fill("#password", "guess")
        page.click("#submit")
        assert "Wrong name or password" in page.inner_text("body")
    page.fill("#name", ADMIN)
    page.fill("#password", ADMIN_PW)
    page.click("#submit")
    assert "Too many failed sign-ins" in page.inner_text("body")
    assert page.locator("form#sign-in").count() == 1
    shot(page, "locked-out")
    # The same table as FTP's: the address's FTP logins are locked out too.
    c = srv.ctl()
    c.send(f"USER {helpers.USER}")
    c.reply()
    assert c.cmd(f"PASS {helpers.PASSWORD}")[0] == 530
    c.close()


def test_plain_http_off_loopback_is_refused_at_start(tmp_path):
    out = subprocess.run([str(helpers.zocalo_bin()), "serve", "--root", str(tmp_path),
                          "--listen", "127.0.0.1:0", "--console", "0.0.0.0:0"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert "--console-insecure" in out.stderr and "--tls-cert" in out.stderr, out.stderr
