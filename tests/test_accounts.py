"""Accounts beyond `--user`: a policy per account (perm r/rw/w, rates, allowed and denied
addresses, TLS required, disabled) from the users file that `zocalo user` manages, and
`[[auth]]` account sources of kind "http" (an external hook, here a real HTTP server on
loopback that the test runs), with ftplib, curl and lftp, in epoll, thread and process."""

import ftplib
import json
import os
import signal
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import helpers
from helpers import TIMEOUT, need

MODELS = ["epoll", "uring", "thread", "process"]


class Hook:
    """An account hook: answers each POSTed login from `accounts` (user -> (password,
    fields)); `mode` makes it fail: "down" (500), "slow" (answers after `delay`), "garbage"."""

    def __init__(self):
        self.accounts: dict = {}
        self.unknown_is_refusal = False
        self.mode = "ok"
        self.delay = 0.0
        self.requests: list = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = json.loads(body)
                hook.requests.append(request)
                if hook.mode == "down":
                    return self.answer(500, b"no")
                if hook.mode == "slow":
                    time.sleep(hook.delay)
                if hook.mode == "garbage":
                    return self.answer(200, b"{not json")
                known = hook.accounts.get(request["user"])
                if known is None:
                    answer = {"ok": False, "known": hook.unknown_is_refusal}
                elif known[0] != request["password"]:
                    answer = {"ok": False}
                else:
                    answer = {"ok": True, **known[1]}
                self.answer(200, json.dumps(answer).encode())

            def answer(self, code, body):
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the server gave up waiting (the "slow" hook)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/login"

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook():
    h = Hook()
    yield h
    h.stop()


def config(tmp_path, *tables: str, name: str = "zocalo.toml"):
    path = tmp_path / name
    path.write_text("\n".join(tables))
    return path


def http_table(url: str, cache: int = 60, timeout: int = 2) -> str:
    return (f'[[auth]]\nkind = "http"\nurl = "{url}"\ncache-seconds = {cache}\n'
            f'timeout-seconds = {timeout}\n')


def login_code(srv, user: str, password: str) -> str:
    """The reply to PASS (230, 530, 421...)."""
    ftp = ftplib.FTP()
    ftp.connect(srv.host, srv.port, timeout=TIMEOUT)
    try:
        ftp.sendcmd(f"USER {user}")
        return ftp.sendcmd(f"PASS {password}")
    except ftplib.all_errors as e:
        return str(e)
    finally:
        helpers.close_client(ftp)


def login_while_others_go_on(srv, other, user: str, password: str) -> tuple[str, float]:
    """Logs in as `user` on a thread while the `other` session sends NOOPs, each answered;
    returns the reply to PASS and how long the login took."""
    started = time.monotonic()
    result = []
    t = threading.Thread(target=lambda: result.append(login_code(srv, user, password)))
    t.start()
    for _ in range(5):
        assert other.sendcmd("NOOP").startswith("200"), "other sessions go on"
    t.join(TIMEOUT)
    assert result, "the login never ended"
    return result[0], time.monotonic() - started


def zocalo_user(*args, password: str | None = None):
    r = subprocess.run([str(helpers.zocalo_bin()), "user", *map(str, args)],
                       input=None if password is None else password + "\n",
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


# --------------------------------------------------------------------------------------------
# The HTTP hook


@pytest.mark.parametrize("model", MODELS)
def test_a_hook_account_logs_in_with_ftplib_curl_and_lftp(start_server, tmp_path, hook, model):
    curl, lftp = need("curl"), need("lftp")
    hook.accounts["hana"] = ("s3cret", {"home": "hana", "perm": "rw"})
    srv = start_server(model, anonymous=False, users=(),
                       extra=["--config", config(tmp_path, http_table(hook.url))])
    (srv.root / "hana").mkdir()
    (srv.root / "hana" / "hello.txt").write_bytes(b"hello hana\n")
    ftp = srv.ftp(user="hana", password="s3cret")
    helpers.upload(ftp, "up.bin", b"x" * 10_000)
    assert (srv.root / "hana" / "up.bin").read_bytes() == b"x" * 10_000, "the hook's home"
    assert helpers.download(ftp, "hello.txt") == b"hello hana\n"
    got = subprocess.run([curl, "-sS", "--max-time", "20",
                          f"ftp://hana:s3cret@127.0.0.1:{srv.port}/hello.txt"],
                         capture_output=True, timeout=30)
    assert got.returncode == 0 and got.stdout == b"hello hana\n", got.stderr
    listed = subprocess.run([lftp, "-c", f"set net:max-retries 1; open -u hana,s3cret "
                             f"ftp://127.0.0.1:{srv.port}; cls -1"],
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and "up.bin" in listed.stdout, listed.stderr
    req = hook.requests[0]
    assert req["user"] == "hana" and req["password"] == "s3cret"
    assert req["client"] == "127.0.0.1" and req["local"] == "127.0.0.1" and req["tls"] is False


def test_a_wrong_password_is_refused_and_an_unknown_user_falls_through(start_server, tmp_path,
                                                                     hook):
    second = Hook()
    try:
        hook.accounts["hana"] = ("right", {"home": "."})
        second.accounts["carol"] = ("pw", {"home": ".", "perm": "r"})
        second.accounts["hana"] = ("wrong", {"home": "."})
        users = tmp_path / "users"
        zocalo_user("add", "bob", "--users", users, password="bobpw")
        cfg = config(tmp_path, http_table(hook.url), http_table(second.url))
        srv = start_server("epoll", anonymous=False, users=(),
                           extra=["--config", cfg, "--users", users])
        assert login_code(srv, "bob", "bobpw").startswith("230"), "the users file first"
        assert login_code(srv, "carol", "pw").startswith("230"), "unknown to the first hook"
        # The first hook knows hana: its no is the answer, the second is never asked.
        assert login_code(srv, "hana", "wrong").startswith("530")
        assert all(r["user"] != "hana" for r in second.requests)
        assert login_code(srv, "nobody", "x").startswith("530")
        # Names that would be filters or SQL elsewhere are only names here.
        assert login_code(srv, "*)(uid=*", "x").startswith("530")
        assert login_code(srv, "' OR '1'='1", "' OR '1'='1").startswith("530")
        ftp = srv.ftp(user="carol", password="pw")
        assert helpers.code_of(ftp, "MKD d") == 550, "carol is read-only"
    finally:
        second.stop()


@pytest.mark.parametrize("mode", ["down", "slow", "garbage", "gone"])
def test_a_failing_hook_fails_closed_without_holding_up_others(start_server, tmp_path, hook,
                                                               mode):
    hook.accounts["hana"] = ("pw", {"home": "."})
    srv = start_server("epoll", extra=["--config", config(tmp_path, http_table(hook.url, 0))])
    other = srv.ftp()  # the --user account: no hook involved
    hook.mode, hook.delay = mode, 4.0
    if mode == "gone":
        hook.stop()
    # Other sessions are answered while the login waits on the hook.
    reply, took = login_while_others_go_on(srv, other, "hana", "pw")
    assert reply.startswith("421"), reply
    assert took < 2 + 3, f"the hook's 2 s timeout was not kept: {took:.1f}s"
    assert helpers.poll_until(lambda: "account source failed" in srv.log_tail(200), 5), \
        srv.log_tail()
    assert f'source="http {hook.url}"' in srv.log_tail(200)
    if mode != "gone":
        hook.mode = "ok"
        assert login_code(srv, "hana", "pw").startswith("230"), "logins resume"


def test_a_changed_password_takes_effect_within_the_cache_time(start_server, tmp_path, hook):
    hook.accounts["hana"] = ("old", {"home": "."})
    srv = start_server("thread", extra=["--config", config(tmp_path, http_table(hook.url, 2))])
    assert login_code(srv, "hana", "old").startswith("230")
    asked = len(hook.requests)
    hook.accounts["hana"] = ("new", {"home": "."})
    assert login_code(srv, "hana", "old").startswith("230"), "served from the cache"
    assert len(hook.requests) == asked, "the cache answered"
    assert login_code(srv, "hana", "new").startswith("230"), "another password asks the hook"
    # The cached old password expires within the cache time (2 s).
    refused = helpers.poll_until(
        lambda: login_code(srv, "hana", "old").startswith("530") or None, 6, 0.25)
    assert refused, "the old password was still accepted after the cache time"


def test_a_hook_policy_applies(start_server, tmp_path, hook, certs):
    hook.accounts["drop"] = ("pw", {"home": ".", "perm": "w"})
    hook.accounts["off"] = ("pw", {"home": ".", "disabled": True})
    hook.accounts["far"] = ("pw", {"home": ".", "allow": "10.0.0.0/8"})
    hook.accounts["secure"] = ("pw", {"home": ".", "perm": "rw", "tls_required": True})
    hook.accounts["odd"] = ("pw", {"home": ".", "colour": "red"})
    srv = start_server("epoll", extra=["--config", config(tmp_path, http_table(hook.url)),
                                       "--tls-cert", certs["cert"], "--tls-key", certs["key"]])
    (srv.root / "f.txt").write_bytes(b"secret")
    ftp = srv.ftp(user="drop", password="pw")
    helpers.upload(ftp, "in.bin", b"dropped")
    assert (srv.root / "in.bin").read_bytes() == b"dropped"
    for cmd in ["RETR f.txt", "SIZE f.txt", "MLST f.txt", "STAT /"]:
        assert helpers.code_of(ftp, cmd) == 550, cmd
    with pytest.raises(ftplib.error_perm, match="550"):
        ftp.nlst()
    for user, reason in [("off", "account disabled"), ("far", "address not allowed"),
                         ("secure", "TLS required for this account")]:
        assert login_code(srv, user, "pw").startswith("530"), user
        assert helpers.poll_until(lambda: reason in srv.log_tail(300), 5), srv.log_tail()
    ctx = ssl.create_default_context(cafile=str(certs["cert"]))
    tls = helpers.ReusingFTP_TLS(context=ctx, timeout=TIMEOUT)
    tls.connect(srv.host, srv.port)
    assert tls.login("secure", "pw").startswith("230"), "with TLS the login goes ahead"
    helpers.close_client(tls)
    # A field zocalo does not know is never silently dropped: the answer is malformed.
    assert login_code(srv, "odd", "pw").startswith("421")
    assert "colour" in srv.log_tail(300)


# --------------------------------------------------------------------------------------------
# The users file and `zocalo user`


@pytest.mark.parametrize("model", MODELS)
def test_users_file_policies_and_zocalo_user(start_server, tmp_path, model):
    users = tmp_path / "users"
    zocalo_user("add", "bob", "--users", users, "--home", "bob", password="pw1")
    zocalo_user("add", "drop", "--users", users, "--perm", "w", password="pw2")
    zocalo_user("add", "eve", "--users", users, "deny=127.0.0.0/8", password="pw3")
    listed = zocalo_user("list", "--users", users)
    assert listed.splitlines() == ["bob home=bob perm=rw", "drop home=. perm=w",
                                   "eve home=. perm=rw deny=127.0.0.0/8"]
    assert "argon2" not in listed
    srv = start_server(model, anonymous=False, users=(), extra=["--users", users])
    (srv.root / "bob").mkdir()
    assert login_code(srv, "bob", "pw1").startswith("230")
    assert login_code(srv, "eve", "pw3").startswith("530"), "denied address"
    drop = srv.ftp(user="drop", password="pw2")
    helpers.upload(drop, "x.bin", b"abc")
    assert helpers.code_of(drop, "RETR x.bin") == 550
    # A password change and a disabled account take effect at the next reload.
    zocalo_user("set", "bob", "--users", users, "--password", password="pw9")
    zocalo_user("set", "drop", "--users", users, "disabled=true")
    zocalo_user("del", "eve", "--users", users)
    os.kill(srv.proc.pid, signal.SIGHUP)
    assert helpers.poll_until(lambda: login_code(srv, "bob", "pw9").startswith("230") or None,
                              10, 0.1), srv.log_tail()
    assert login_code(srv, "bob", "pw1").startswith("530")
    assert login_code(srv, "drop", "pw2").startswith("530")
    assert login_code(srv, "eve", "pw3").startswith("530")
    assert "disabled=true" in zocalo_user("list", "--users", users)


def test_a_users_file_rate_limit_holds(start_server, tmp_path):
    users = tmp_path / "users"
    zocalo_user("add", "slow", "--users", users, "rate_down=200kB", "rate_up=200kB",
                password="pw")
    srv = start_server("epoll", anonymous=False, extra=["--users", users])
    payload = os.urandom(600_000)
    (srv.root / "f.bin").write_bytes(payload)
    ftp = srv.ftp(user="slow", password="pw")
    took_down = helpers.download_seconds(ftp, "f.bin", payload)
    took_up = helpers.upload_seconds(ftp, "up.bin", payload)
    # A token bucket with a burst of rate/10 cannot move 600 kB at 200 kB/s in under 2.5 s.
    assert took_down >= 2.5, f"the account's download limit was not applied: {took_down:.2f}s"
    assert took_up >= 2.5, f"the account's upload limit was not applied: {took_up:.2f}s"
    # The --user account beside it has no limit of its own.
    fast = srv.ftp()
    assert helpers.download_seconds(fast, "f.bin", payload) < 2.5


def test_a_bad_users_file_or_auth_table_stops_the_start(tmp_path):
    bad = tmp_path / "users"
    zocalo_user("add", "bob", "--users", bad, password="pw")
    bad.write_text(bad.read_text().strip() + ":quota_files=ten\n")
    r = subprocess.run([str(helpers.zocalo_bin()), "serve", "--root", str(tmp_path),
                        "--listen", "127.0.0.1:0", "--users", str(bad)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "line 1" in r.stderr and "quota_files" in r.stderr, r.stderr
    cfg = config(tmp_path, '[[auth]]\nkind = "http"\nurl = "http://127.0.0.1:1/"\nnonsense = 1\n')
    r = subprocess.run([str(helpers.zocalo_bin()), "serve", "--root", str(tmp_path),
                        "--listen", "127.0.0.1:0", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "nonsense" in r.stderr, r.stderr
    # A search account with no password would bind unauthenticated: refused at start.
    cfg = config(tmp_path, '[[auth]]\nkind = "ldap"\nurls = ["ldap://127.0.0.1:1"]\n'
                 'base = "dc=x"\nfilter = "(uid={user})"\nbind-dn = "cn=reader,dc=x"\n',
                 name="ldap.toml")
    r = subprocess.run([str(helpers.zocalo_bin()), "serve", "--root", str(tmp_path),
                        "--listen", "127.0.0.1:0", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "bind-password-file" in r.stderr, r.stderr


# --------------------------------------------------------------------------------------------
# LDAP: a real slapd


@pytest.fixture
def slapd(tmp_path):
    from ldap_server import person, Slapd
    entries = [
        person("lena", "lenapw", home="lena", perm="rw"),
        person("rita", "ritapw", perm="r"),
        person("gone", "gonepw", extra={"description": "TRUE"}),
        person("slowpoke", "slowpw", extra={"departmentNumber": "200kB"}),
    ]
    (tmp_path / "ldap").mkdir()
    server = Slapd(tmp_path / "ldap", entries)
    yield server
    server.close()


def ldap_table(tmp_path, urls, cache: int = 60, timeout: int = 2, starttls: bool = False,
               ca_file=None) -> str:
    from ldap_server import ADMIN_DN, ADMIN_PW, PEOPLE
    secret = tmp_path / "ldap-password"
    secret.write_text(ADMIN_PW + "\n")
    quoted = ", ".join(f'"{u}"' for u in urls)
    return (f'[[auth]]\nkind = "ldap"\nurls = [{quoted}]\nbase = "{PEOPLE}"\n'
            f'filter = "(&(objectClass=inetOrgPerson)(uid={{user}}))"\n'
            f'bind-dn = "{ADMIN_DN}"\nbind-password-file = "{secret}"\n'
            f'starttls = {"true" if starttls else "false"}\n'
            + (f'ca-file = "{ca_file}"\n' if ca_file else "") +
            f'cache-seconds = {cache}\ntimeout-seconds = {timeout}\n'
            f'[auth.attributes]\nhome = "homeDirectory"\nperm = "employeeType"\n'
            f'disabled = "description"\nrate_down = "departmentNumber"\n')


@pytest.mark.parametrize("model", MODELS)
def test_an_ldap_account_logs_in_and_its_attributes_apply(start_server, tmp_path, slapd, model):
    curl = need("curl")
    cfg = config(tmp_path, ldap_table(tmp_path, [slapd.url]))
    srv = start_server(model, anonymous=False, users=(), extra=["--config", cfg])
    (srv.root / "lena").mkdir()
    (srv.root / "lena" / "f.txt").write_bytes(b"from the directory\n")
    ftp = srv.ftp(user="lena", password="lenapw")
    assert helpers.download(ftp, "f.txt") == b"from the directory\n", "homeDirectory is the home"
    helpers.upload(ftp, "up.txt", b"up")
    assert (srv.root / "lena" / "up.txt").read_bytes() == b"up"
    got = subprocess.run([curl, "-sS", "--max-time", "20",
                          f"ftp://lena:lenapw@127.0.0.1:{srv.port}/f.txt"],
                         capture_output=True, timeout=30)
    assert got.stdout == b"from the directory\n", got.stderr
    assert login_code(srv, "lena", "wrong").startswith("530")
    assert login_code(srv, "lena", "").startswith("530"), "an empty password never binds"
    rita = srv.ftp(user="rita", password="ritapw")
    assert helpers.code_of(rita, "MKD d") == 550, "employeeType r: read only"
    assert login_code(srv, "gone", "gonepw").startswith("530"), "description TRUE: disabled"


def test_ldap_filter_injection_is_a_name_and_unknown_users_fall_through(start_server, tmp_path,
                                                                       slapd, hook):
    hook.accounts["hookuser"] = ("pw", {"home": "."})
    cfg = config(tmp_path, ldap_table(tmp_path, [slapd.url]), http_table(hook.url))
    srv = start_server("epoll", anonymous=False, users=(), extra=["--config", cfg])
    assert login_code(srv, "hookuser", "pw").startswith("230"), "not in the directory"
    for name in ["*", "*)(uid=*", "lena)(|(uid=*", "*)(objectClass=*"]:
        for password in ["lenapw", "ritapw", ""]:
            assert login_code(srv, name, password).startswith("530"), (name, password)
    # Each of those reached the hook as the name it was: the directory found no one.
    assert {"*", "*)(uid=*"} <= {r["user"] for r in hook.requests}


def test_a_directory_down_or_stalled_fails_closed_and_the_next_url_is_tried(start_server,
                                                                          tmp_path, slapd):
    dead = f"ldap://127.0.0.1:{helpers.free_port()}"
    cfg = config(tmp_path, ldap_table(tmp_path, [dead, slapd.url], cache=0))
    srv = start_server("epoll", extra=["--config", cfg])
    (srv.root / "lena").mkdir()
    assert login_code(srv, "lena", "lenapw").startswith("230"), "the second URL answered"
    other = srv.ftp()
    for stall in [slapd.pause, slapd.stop]:
        stall()
        reply, took = login_while_others_go_on(srv, other, "lena", "lenapw")
        assert reply.startswith("421"), (stall.__name__, reply)
        assert took < 2 * 2 + 3, "bounded by the timeouts"
        if stall == slapd.pause:
            slapd.resume()
    assert "account source failed" in srv.log_tail(300)
    slapd.start()
    assert helpers.poll_until(
        lambda: login_code(srv, "lena", "lenapw").startswith("230") or None, 10, 0.2), \
        "logins resume when the directory is back"


def test_an_ldap_rate_applies(start_server, tmp_path, slapd):
    cfg = config(tmp_path, ldap_table(tmp_path, [slapd.url]))
    srv = start_server("thread", extra=["--config", cfg])
    payload = os.urandom(600_000)
    (srv.root / "f.bin").write_bytes(payload)
    ftp = srv.ftp(user="slowpoke", password="slowpw")
    took = helpers.download_seconds(ftp, "f.bin", payload)
    assert took >= 2.5, f"departmentNumber 200kB as rate_down was not applied: {took:.2f}s"


def test_ldap_over_starttls_and_ldaps_is_verified(start_server, tmp_path, certs):
    from ldap_server import person, Slapd
    (tmp_path / "ldap").mkdir()
    server = Slapd(tmp_path / "ldap", [person("tess", "tesspw")], tls=certs)
    try:
        for url, starttls in [(server.url, True), (server.tls_url, False)]:
            cfg = config(tmp_path, ldap_table(tmp_path, [url], starttls=starttls,
                                              ca_file=certs["cert"]), name=f"{starttls}.toml")
            srv = start_server("epoll", extra=["--config", cfg])
            assert login_code(srv, "tess", "tesspw").startswith("230"), (url, srv.log_tail())
            assert login_code(srv, "tess", "nope").startswith("530")
        # Without the certificate among the trusted ones, TLS fails and so does the login.
        cfg = config(tmp_path, ldap_table(tmp_path, [server.url], starttls=True), name="x.toml")
        srv = start_server("epoll", extra=["--config", cfg])
        assert login_code(srv, "tess", "tesspw").startswith("421")
        assert "account source failed" in srv.log_tail(100)
    finally:
        server.close()


# --------------------------------------------------------------------------------------------
# PostgreSQL: a real server


@pytest.fixture
def pg(tmp_path):
    import bcrypt
    from pg_server import Postgres
    server = Postgres()
    argon = tmp_path / "argon-users"
    zocalo_user("add", "x", "--users", argon, password="argonpw")
    argon_hash = argon.read_text().split(":")[1]
    sha512 = subprocess.run(["openssl", "passwd", "-6", "shapw"], capture_output=True,
                            text=True, check=True).stdout.strip()
    bcrypt_hash = bcrypt.hashpw(b"bcryptpw", bcrypt.gensalt(4)).decode()
    server.sql("CREATE TABLE ftp_users (name text PRIMARY KEY, pass text NOT NULL, "
               "home text, perm text, rate_down text, disabled boolean)")
    for name, hash_, home, perm, disabled in [("pia", argon_hash, "pia", "rw", False),
                                               ("sam", sha512, ".", "r", False),
                                               ("bea", bcrypt_hash, ".", "w", False),
                                               ("old", argon_hash, ".", "rw", True)]:
        server.sql(f"INSERT INTO ftp_users VALUES ('{name}', '{hash_}', '{home}', '{perm}', "
                   f"NULL, {str(disabled).lower()})")
    yield server
    server.close()


def pooled(srv):
    """The source keeps its database connection open for the next login (a pool): the leak
    check's baseline is taken with it."""
    srv.measure_baseline()


def pg_table(url: str, cache: int = 60, timeout: int = 2) -> str:
    query = ("SELECT pass AS password, home, perm, rate_down, disabled FROM ftp_users "
             "WHERE name = $1")
    return (f'[[auth]]\nkind = "postgres"\nurl = "{url}"\nquery = "{query}"\n'
            f'cache-seconds = {cache}\ntimeout-seconds = {timeout}\npool-size = 2\n')


@pytest.mark.parametrize("model", MODELS)
def test_a_database_account_logs_in_with_each_kind_of_hash(start_server, tmp_path, pg, model):
    lftp = need("lftp")
    srv = start_server(model, anonymous=False, users=(),
                       extra=["--config", config(tmp_path, pg_table(pg.url))])
    (srv.root / "pia").mkdir()
    assert login_code(srv, "pia", "argonpw").startswith("230")
    pooled(srv)
    ftp = srv.ftp(user="pia", password="argonpw")
    helpers.upload(ftp, "a.txt", b"argon")
    assert (srv.root / "pia" / "a.txt").read_bytes() == b"argon", "the home column"
    sam = srv.ftp(user="sam", password="shapw")
    assert helpers.code_of(sam, "MKD d") == 550, "perm r"
    bea = srv.ftp(user="bea", password="bcryptpw")
    helpers.upload(bea, "b.txt", b"bcrypt")
    assert helpers.code_of(bea, "RETR b.txt") == 550, "perm w: upload only"
    listed = subprocess.run([lftp, "-c", f"set net:max-retries 1; open -u sam,shapw "
                             f"ftp://127.0.0.1:{srv.port}; cls -1"],
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and "b.txt" in listed.stdout, listed.stderr
    for user, password in [("pia", "wrong"), ("sam", "argonpw"), ("old", "argonpw"),
                           ("nobody", "x")]:
        assert login_code(srv, user, password).startswith("530"), user


def test_sql_injection_as_a_user_name_is_only_a_name(start_server, tmp_path, pg):
    srv = start_server("epoll", anonymous=False, users=(),
                       extra=["--config", config(tmp_path, pg_table(pg.url))])
    assert login_code(srv, "nobody", "x").startswith("530")
    pooled(srv)
    for name in ["' OR '1'='1", "pia' --", "x'; DROP TABLE ftp_users; --", "pia' OR name='pia"]:
        assert login_code(srv, name, "argonpw").startswith("530"), name
    assert pg.sql("SELECT count(*) FROM ftp_users").strip() == "4", "the table is whole"


def test_a_database_down_or_stalled_fails_closed(start_server, tmp_path, pg):
    srv = start_server("epoll", extra=["--config", config(tmp_path, pg_table(pg.url, cache=0))])
    (srv.root / "pia").mkdir()
    assert login_code(srv, "pia", "argonpw").startswith("230")
    pooled(srv)
    other = srv.ftp()
    for stall in [pg.pause, pg.stop]:
        stall()
        reply, took = login_while_others_go_on(srv, other, "pia", "argonpw")
        assert reply.startswith("421"), (stall.__name__, reply)
        assert took < 2 + 3, "bounded by the timeout"
        if stall == pg.pause:
            pg.resume()
    assert "account source failed" in srv.log_tail(300)
    assert "postgres postgresql://postgres@127.0.0.1" in srv.log_tail(300)
    pg.start()
    assert helpers.poll_until(
        lambda: login_code(srv, "pia", "argonpw").startswith("230") or None, 15, 0.2), \
        "logins resume when the database is back"


@pytest.mark.parametrize("model", MODELS)
def test_sessions_per_account_are_bounded_and_given_back(start_server, tmp_path, model):
    users = tmp_path / "users"
    zocalo_user("add", "duo", "--users", users, "max_sessions=2", password="pw")
    srv = start_server(model, extra=["--users", users])
    first, second = srv.ftp(user="duo", password="pw"), srv.ftp(user="duo", password="pw")
    assert login_code(srv, "duo", "pw").startswith("530"), "a third session at once"
    assert helpers.poll_until(lambda: "too many sessions for this account" in srv.log_tail(100),
                              5), srv.log_tail()
    assert srv.ftp().sendcmd("NOOP").startswith("200"), "other accounts are not counted"
    first.quit()
    srv.clients.remove(first)
    third = helpers.poll_until(lambda: login_code(srv, "duo", "pw").startswith("230") or None,
                               5, 0.05)
    assert third, "the seat came back when the session ended"
    assert second.sendcmd("REIN").startswith("220")
    # REIN logged the second session out: two may log in again.
    a, b = srv.ftp(user="duo", password="pw"), srv.ftp(user="duo", password="pw")
    assert a.sendcmd("NOOP").startswith("200") and b.sendcmd("NOOP").startswith("200")
    assert login_code(srv, "duo", "pw").startswith("530")


# --------------------------------------------------------------------------------------------
# Quotas


@pytest.mark.parametrize("model", MODELS)
def test_a_quota_stops_uploads_at_the_limit_and_keeps_its_tally(start_server, tmp_path, model):
    curl = need("curl")
    users = tmp_path / "users"
    zocalo_user("add", "q", "--users", users, "--home", "q", "quota_bytes=100000",
                "quota_files=4", password="pw")
    admin = tmp_path / "admin.sock"
    srv = start_server(model, anonymous=False, extra=["--users", users, "--admin-socket", admin])
    home = srv.root / "q"
    home.mkdir()
    (home / "seed.bin").write_bytes(b"s" * 10_000)  # there before the first login: counted
    ftp = srv.ftp(user="q", password="pw")
    assert helpers.reply_of(ftp, "AVBL").startswith("213 90000")
    helpers.upload(ftp, "a.bin", b"a" * 50_000)
    assert helpers.reply_of(ftp, "AVBL").startswith("213 40000")
    # Crossing the quota: 552, and the new file is gone.
    with pytest.raises(ftplib.error_perm, match="^552"):
        helpers.upload(ftp, "big.bin", os.urandom(60_000))
    assert not (home / "big.bin").exists(), "nothing over the quota is left"
    assert not [p for p in home.iterdir() if p.name.startswith(".")], "no temporary file left"
    # An overwrite that would cross keeps the old content.
    with pytest.raises(ftplib.error_perm, match="^552"):
        helpers.upload(ftp, "a.bin", os.urandom(95_000))
    assert (home / "a.bin").read_bytes() == b"a" * 50_000, "the old file is kept"
    # An APPE that would cross is cut back to what was there.
    with pytest.raises(ftplib.error_perm, match="^552"):
        helpers.upload(ftp, "a.bin", os.urandom(45_000), cmd="APPE")
    assert (home / "a.bin").read_bytes() == b"a" * 50_000, "the APPE is cut back"
    # An overwrite within the quota: the old size is given back.
    helpers.upload(ftp, "a.bin", b"b" * 80_000)
    assert helpers.reply_of(ftp, "AVBL").startswith("213 10000")
    # DELE gives the bytes back; curl sees the same quota.
    assert ftp.delete("a.bin").startswith("250")
    assert helpers.reply_of(ftp, "AVBL").startswith("213 90000")
    put = subprocess.run([curl, "-sS", "--max-time", "20", "-T", "-",
                          f"ftp://q:pw@127.0.0.1:{srv.port}/c.bin"],
                         input=os.urandom(95_000), capture_output=True, timeout=30)
    # curl's exit code for 552, CURLE_REMOTE_DISK_FULL: "Exceeded storage allocation".
    assert put.returncode == 70, put.stderr
    assert not (home / "c.bin").exists()
    # The file count: seed.bin + 3 more, then a fifth file is refused before a byte moves.
    for name in ("f1", "f2", "f3"):
        helpers.upload(ftp, name, b"x")
    with pytest.raises(ftplib.error_perm, match="^552"):
        helpers.upload(ftp, "f4", b"x")
    # RNTO over a file gives the replaced file back.
    ftp.rename("f1", "f2")
    helpers.upload(ftp, "f4", b"x")
    tally = (tmp_path / "users.quota").read_text()
    assert tally == f"q {10_000 + 3} 4\n", tally

    def ctl(*args):
        r = subprocess.run([str(helpers.zocalo_bin()), "ctl", "--socket", str(admin), "quota",
                            *args], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        return r.stdout

    assert ctl("q") == "q: 10003 bytes of 100000, 4 files of 4\n"
    # Files put there behind the server's back are found by a recount.
    (home / "f2").unlink()
    (home / "sub").mkdir()
    (home / "sub" / "more.bin").write_bytes(b"m" * 500)
    assert ctl("q", "--recount") == "q: 10502 bytes of 100000, 4 files of 4\n"
