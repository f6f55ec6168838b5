"""Events out (`[[hook]]` tables): real programs (sh scripts written here) and a real HTTP
receiver (tests/webhook_receiver.py, a process of its own, stopped by PID) get every kind of
event with its fields; an upload check keeps or refuses a file before the client hears 226
(ftplib, curl, lftp); hooks that hang are stopped, a receiver that fails is retried, a dead
one is logged, and a full queue drops with a counted line while sessions go on."""
from __future__ import annotations

import ftplib
import hashlib
import hmac
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import helpers
from helpers import PASSWORD, USER, need, poll_until

MODELS = ["epoll", "uring", "thread", "process"]
KINDS = ["login", "upload", "download", "delete", "rename", "mkdir", "rmdir", "chmod", "mtime",
         "quota-exceeded", "session-end"]
TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def config(tmp_path: Path, *tables: str) -> Path:
    path = tmp_path / "zocalo.toml"
    path.write_text("\n".join(tables))
    return path


def recorder(tmp_path: Path) -> tuple[Path, Path]:
    """A program that appends each event's JSON (its standard input) to events.jsonl and its
    ZOCALO_EVENT, ZOCALO_PATH and ZOCALO_BYTES to env.log; returns both logs' paths."""
    events, env = tmp_path / "events.jsonl", tmp_path / "env.log"
    prog = script(tmp_path, "record.sh",
                  f'printf "%s %s %s\\n" "$ZOCALO_EVENT" "$ZOCALO_PATH" "$ZOCALO_BYTES" >> {env}\n'
                  f'line=$(cat)\nprintf "%s\\n" "$line" >> {events}\n')
    return prog, events


def read_events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def table(command=None, url=None, events=KINDS, **more) -> str:
    lines = ["[[hook]]", f"events = {json.dumps(list(events))}"]
    if command is not None:
        lines.append(f"command = {json.dumps([str(c) for c in command])}")
    if url is not None:
        lines.append(f'url = "{url}"')
    for key, value in more.items():
        lines.append(f"{key.replace('_', '-')} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


class Receiver:
    """tests/webhook_receiver.py as a process of its own."""

    def __init__(self, tmp_path: Path, fail_first: int = 0):
        self.log = tmp_path / f"received-{fail_first}.jsonl"
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("webhook_receiver.py")), str(self.log),
             str(fail_first)], stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.startswith("listening "), line
        self.url = f"http://127.0.0.1:{int(line.split()[1])}/hook"

    def received(self) -> list[dict]:
        return read_events(self.log)

    def stop(self):
        helpers.stop_process(self.proc)


@pytest.fixture
def receivers(tmp_path):
    started: list[Receiver] = []

    def start(fail_first: int = 0) -> Receiver:
        r = Receiver(tmp_path, fail_first)
        started.append(r)
        return r

    yield start
    for r in started:
        r.stop()


def zocalo_user(*args, password: str):
    r = subprocess.run([str(helpers.zocalo_bin()), "user", *map(str, args)], input=password + "\n",
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("model", MODELS)
def test_every_kind_of_event_reaches_a_program_in_order(start_server, tmp_path, model):
    prog, log = recorder(tmp_path)
    users = tmp_path / "users"
    zocalo_user("add", "q", "--users", users, "--home", "q", "quota_bytes=1000", password="pw")
    cfg = config(tmp_path, table(command=[prog]))
    srv = start_server(model, write=True, extra=["--config", cfg, "--users", users,
                                                 "--node-name", "hooknode"])
    (srv.root / "q").mkdir()
    with pytest.raises(ftplib.error_perm):
        srv.ftp(USER, "wrong")
    ftp = srv.ftp()
    port = ftp.sock.getsockname()[1]
    helpers.upload(ftp, "a.txt", b"hello hooks")
    assert helpers.download(ftp, "a.txt") == b"hello hooks"
    ftp.mkd("d")
    ftp.rmd("d")
    ftp.rename("a.txt", "b.txt")
    assert ftp.sendcmd("SITE CHMOD 600 b.txt").startswith("200")
    assert ftp.sendcmd("MFMT 20200102030405 b.txt").startswith("213")
    ftp.delete("b.txt")
    ftp.quit()
    srv.clients.remove(ftp)
    q = srv.ftp("q", "pw")
    with pytest.raises(ftplib.error_perm, match="^552"):
        helpers.upload(q, "big.bin", os.urandom(5000))
    q.quit()
    srv.clients.remove(q)

    def ended() -> bool:
        return sum(e["event"] == "session-end" for e in read_events(log)) == 2

    assert poll_until(ended, 20, 0.05), read_events(log)
    got = read_events(log)
    mine = [e for e in got if e["client"] == f"127.0.0.1:{port}"]
    assert [e["event"] for e in mine] == [
        "login", "upload", "download", "mkdir", "rmdir", "rename", "chmod", "mtime", "delete",
        "session-end"], mine
    for e in got:
        assert e["node"] == "hooknode" and TIME_RE.match(e["time"]) and e["session"] > 0, e
    by_kind = {e["event"]: e for e in mine}
    assert by_kind["login"]["result"] == "accepted" and by_kind["login"]["user"] == USER
    assert by_kind["upload"]["path"] == "/a.txt" and by_kind["upload"]["bytes"] == 11
    assert by_kind["upload"]["complete"] is True
    assert by_kind["download"]["bytes"] == 11
    assert by_kind["rename"]["from"] == "/a.txt" and by_kind["rename"]["path"] == "/b.txt"
    assert by_kind["session-end"]["bytes"] == 22
    assert len({e["session"] for e in mine}) == 1
    refused = [e for e in got if e["event"] == "login" and e.get("result") == "refused"]
    assert refused and refused[0]["reason"] == "bad credentials", got
    over = [e for e in got if e["user"] == "q"]
    assert [e["event"] for e in over] == ["login", "upload", "quota-exceeded", "session-end"], over
    assert over[1]["complete"] is False and over[2]["path"] == "/big.bin"
    assert "upload /a.txt 11" in (tmp_path / "env.log").read_text()


# --------------------------------------------------------------------------------------------
# Upload checks

VIRUS_CHECK = 'if grep -q VIRUS "$ZOCALO_FILE"; then echo "infected: test signature"; exit 1; fi\n'


@pytest.mark.parametrize("model", MODELS)
def test_a_refusing_check_leaves_no_file_and_the_client_sees_why(start_server, tmp_path, model):
    check = script(tmp_path, "check.sh", VIRUS_CHECK)
    cfg = config(tmp_path, table(command=[check], events=["upload"], check=True))
    srv = start_server(model, write=True, extra=["--config", cfg])
    ftp = srv.ftp()
    with pytest.raises(ftplib.error_perm, match="^550 infected: test signature"):
        helpers.upload(ftp, "bad.bin", b"a VIRUS inside")
    assert helpers.upload(ftp, "good.bin", b"clean").startswith("226")
    assert sorted(os.listdir(srv.root)) == ["good.bin"], "no file and no temporary file left"
    # An overwrite that the check refuses keeps the old file.
    with pytest.raises(ftplib.error_perm, match="^550"):
        helpers.upload(ftp, "good.bin", b"VIRUS")
    assert (srv.root / "good.bin").read_bytes() == b"clean"
    # APPE writes in place: a refusal cuts it back.
    with pytest.raises(ftplib.error_perm, match="^550"):
        helpers.upload(ftp, "good.bin", b" VIRUS", cmd="APPE")
    assert (srv.root / "good.bin").read_bytes() == b"clean"
    if model != "epoll":
        return
    src = tmp_path / "bad.txt"
    src.write_bytes(b"VIRUS from curl")
    curl = subprocess.run([need("curl"), "-sS", "-v", "-T", str(src),
                           f"ftp://{USER}:{PASSWORD}@127.0.0.1:{srv.port}/curl.txt"],
                          capture_output=True, text=True, timeout=30)
    assert curl.returncode != 0 and "550 infected: test signature" in curl.stderr, curl.stderr
    lftp = subprocess.run([need("lftp"), "-u", f"{USER},{PASSWORD}", "-e",
                           f"set net:max-retries 1; put {src} -o lftp.txt; bye",
                           f"ftp://127.0.0.1:{srv.port}"],
                          capture_output=True, text=True, timeout=60)
    assert "infected: test signature" in lftp.stdout + lftp.stderr, (lftp.stdout, lftp.stderr)
    assert sorted(os.listdir(srv.root)) == ["good.bin"]


@pytest.mark.parametrize("model", MODELS)
def test_a_keeping_check_makes_the_file_appear_only_after_its_verdict(start_server, tmp_path,
                                                                      model):
    started, go = tmp_path / "started", tmp_path / "go"
    check = script(tmp_path, "check.sh",
                   f"touch {started}\n"
                   f"for i in $(seq 300); do [ -e {go} ] && exit 0; sleep 0.05; done\nexit 1\n")
    cfg = config(tmp_path, table(command=[check], events=["upload"], check=True))
    srv = start_server(model, write=True, extra=["--config", cfg])
    uploader, other = srv.ftp(), srv.ftp()
    reply: list = []
    t = threading.Thread(target=lambda: reply.append(helpers.upload(uploader, "held.bin",
                                                                    b"held" * 1000)))
    t.start()
    try:
        assert poll_until(started.exists, 20, 0.02), "the check never ran"
        assert other.nlst() == [], "the held file is not listed"
        with pytest.raises(ftplib.error_perm, match="^550"):
            helpers.download(other, "held.bin")
        assert not reply, "no reply before the verdict"
        assert not (srv.root / "held.bin").exists()
    finally:
        go.touch()
        t.join(30)
    assert reply and reply[0].startswith("226"), reply
    assert (srv.root / "held.bin").read_bytes() == b"held" * 1000
    assert other.nlst() == ["held.bin"]
    assert other.sendcmd("NOOP").startswith("200")


def test_hooks_that_hang_are_stopped_and_sessions_go_on(start_server, tmp_path):
    prog, log = recorder(tmp_path)
    hang = script(tmp_path, "hang.sh", "sleep 60\n")
    cfg = config(tmp_path,
                 table(command=[hang], events=["upload"], timeout_seconds=1),
                 table(command=[prog], events=["upload"]))
    srv = start_server("epoll", write=True, extra=["--config", cfg])
    ftp = srv.ftp()
    helpers.upload(ftp, "x.bin", b"x")
    assert ftp.sendcmd("NOOP").startswith("200")
    assert poll_until(lambda: "hook timed out and was stopped" in srv.log_tail(200), 15, 0.1), (
        srv.log_tail())
    assert poll_until(lambda: [e["event"] for e in read_events(log)] == ["upload"], 10, 0.05), (
        "the next hook ran after the hung one was stopped")
    assert not subprocess.run(["pgrep", "-f", str(hang)], capture_output=True).stdout, (
        "the hung program was killed")
    # A check that hangs refuses by default, or keeps with on-timeout = "keep".
    for on_timeout, expect in (("refuse", "550 Upload check timed out"), ("keep", "226")):
        cfg = config(tmp_path, table(command=[hang], events=["upload"], check=True,
                                     timeout_seconds=1, on_timeout=on_timeout))
        srv = start_server("epoll", write=True, extra=["--config", cfg])
        ftp = srv.ftp()
        assert helpers.reply_of(ftp, "NOOP").startswith("200")
        try:
            got = helpers.upload(ftp, f"{on_timeout}.bin", b"y")
        except ftplib.error_perm as e:
            got = str(e)
        assert got.startswith(expect), got
        assert (srv.root / f"{on_timeout}.bin").exists() == (on_timeout == "keep")


def test_a_webhook_is_signed_retried_and_a_dead_one_is_logged(start_server, tmp_path,
                                                             receivers):
    flaky, checker = receivers(fail_first=2), receivers()
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    dead = f"http://127.0.0.1:{helpers.free_port()}/nobody"
    cfg = config(tmp_path,
                 table(url=flaky.url, events=["upload", "delete"], secret_file=str(secret)),
                 table(url=dead, events=["upload"], retries=1, timeout_seconds=2),
                 table(url=checker.url, events=["upload"], check=True, timeout_seconds=5))
    srv = start_server("epoll", write=True, extra=["--config", cfg])
    ftp = srv.ftp()
    assert helpers.upload(ftp, "a.txt", b"webhook").startswith("226")
    with pytest.raises(ftplib.error_perm, match="^550 refused by the receiver"):
        helpers.upload(ftp, "b.refuse", b"no")
    assert sorted(os.listdir(srv.root)) == ["a.txt"]
    ftp.delete("a.txt")
    # The flaky receiver answered 500 twice: the first event was sent three times, in order.
    assert poll_until(lambda: len(flaky.received()) == 5, 20, 0.1), flaky.received()
    got = flaky.received()
    bodies = [json.loads(r["body"]) for r in got]
    assert [(b["event"], b["path"]) for b in bodies] == [
        ("upload", "/a.txt")] * 3 + [("upload", "/b.refuse"), ("delete", "/a.txt")], bodies
    for r in got:
        want = hmac.new(b"s3cret", r["body"].encode(), hashlib.sha256).hexdigest()
        headers = {k.lower(): v for k, v in r["headers"].items()}
        assert headers["x-zocalo-signature"] == f"sha256={want}"
        assert headers["x-zocalo-event"] == json.loads(r["body"])["event"]
        assert headers["content-type"] == "application/json"
    assert [json.loads(r["body"])["path"] for r in checker.received()] == ["/a.txt", "/b.refuse"]

    def dead_logged():
        return any("hook could not run" in line and "nobody" in line
                   for line in srv.log_tail(300).splitlines())

    assert poll_until(dead_logged, 20, 0.1), srv.log_tail()
    assert ftp.sendcmd("NOOP").startswith("200")


def test_a_full_queue_drops_with_a_counted_line_while_sessions_go_on(start_server, tmp_path):
    slow = script(tmp_path, "slow.sh", "sleep 0.2\n")
    cfg = config(tmp_path, table(command=[slow], events=["upload"]))
    srv = start_server("epoll", write=True, extra=["--config", cfg, "--metrics", "127.0.0.1:0",
                                                   "--shutdown-grace", "1"])
    ftp, other = srv.ftp(), srv.ftp()
    began = time.monotonic()
    for i in range(1000):
        helpers.upload(ftp, f"f{i}", b"x")
        if i % 100 == 0:
            assert other.sendcmd("NOOP").startswith("200")
        assert time.monotonic() - began < 120, f"only {i} uploads in 120 s"
    assert poll_until(lambda: "hook queue full: events dropped" in srv.log_tail(2000), 10), (
        srv.log_tail())
    newcomer = srv.ftp()
    assert newcomer.sendcmd("NOOP").startswith("200")
    from test_production import http_get, metrics_port, scraped
    text = http_get(metrics_port(srv), "/metrics")[1]
    dropped = scraped(text, "zocalo_hooks_dropped_total")
    assert dropped is not None and dropped > 0, text
    assert scraped(text, "zocalo_hook_duration_seconds_count") > 0
    # Hooks are still running the queue: a stop waits for them for its grace period only.
    srv.close_clients()
    began = time.monotonic()
    assert srv.stop() is not None
    helpers.ACTIVE.remove(srv)
    assert time.monotonic() - began < 8, "the stop waited for the whole queue"
