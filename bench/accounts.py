#!/usr/bin/env python3
"""Logins through each account source, side by side in one run: the users file (Argon2), an
HTTP hook, OpenLDAP (slapd) and PostgreSQL, each with its cache off and on; logins/s from
`zocalo bench --scenario logins` and the server's CPU per login (from /proc). Then NOOP
latency of idle sessions while logins go to a source that answers in 200 ms (the HTTP hook,
delayed), in select, poll and epoll (`--scenario fairness --slow-login`).

    python3 bench/accounts.py            (as root: postgres runs as nobody)

Loopback only; every phase is bounded (`--timeout`, a fixed number of clients)."""

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import helpers  # noqa: E402
from ldap_server import ADMIN_DN, ADMIN_PW, PEOPLE, Slapd, person  # noqa: E402
from pg_server import Postgres  # noqa: E402
from test_accounts import Hook  # noqa: E402

ZOCALO = ROOT / "target" / "release" / "zocalo"
CLIENTS = int(os.environ.get("CLIENTS", "200"))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def serve(work: Path, model: str, extra: list) -> tuple[subprocess.Popen, int]:
    (work / "root" / "zocalo-bench-list").mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([str(ZOCALO), "serve", "--root", str(work / "root"), "--listen",
                             "127.0.0.1:0", "--model", model, "--no-anonymous", "--user", "u:p",
                             "--login-fail-delay-ms", "0", "--max-per-ip", "100000", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    port = int(re.search(r"127\.0\.0\.1:(\d+)", line)[1])
    return proc, port


def bench(port: int, user: str, password: str, *args) -> list[dict]:
    """The metrics of one `zocalo bench` run: [{"name", "value", "unit"}, ...]."""
    r = subprocess.run([str(ZOCALO), "bench", f"ftp://{user}:{password}@127.0.0.1:{port}/",
                        "--json", "--timeout", "120", *args],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    results = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    for result in results:
        for note in result.get("notes", []):
            print(f"  note: {note}", file=sys.stderr)
    return [m for result in results for m in result["metrics"]]


def metric(rows: list[dict], name: str) -> float:
    for row in rows:
        if row["name"] == name:
            return float(row["value"])
    raise KeyError(f"{name} not in {[r['name'] for r in rows]}")


def main():
    work = Path(tempfile.mkdtemp(prefix="zocalo-accounts-bench-"))
    hook = Hook()
    hook.accounts["hana"] = ("hanapw", {"home": "."})
    (work / "ldap").mkdir()
    slapd = Slapd(work / "ldap", [person("lena", "lenapw")])
    pg = Postgres()
    secret = work / "ldap-password"
    secret.write_text(ADMIN_PW)
    users = work / "users"
    subprocess.run([str(ZOCALO), "user", "add", "bob", "--users", str(users)], input="bobpw\n",
                   text=True, check=True, capture_output=True)
    argon = users.read_text().split(":")[1]
    pg.sql("CREATE TABLE ftp_users (name text PRIMARY KEY, pass text, home text)")
    pg.sql(f"INSERT INTO ftp_users VALUES ('pia', '{argon}', '.')")
    # pia's hash is bob's (the same password, bobpw): the same Argon2 cost as the users file.
    query = "SELECT pass AS password, home FROM ftp_users WHERE name = $1"

    def table(kind: str, cache: int) -> str:
        if kind == "http":
            return f'[[auth]]\nkind = "http"\nurl = "{hook.url}"\ncache-seconds = {cache}\n'
        if kind == "ldap":
            return (f'[[auth]]\nkind = "ldap"\nurls = ["{slapd.url}"]\nbase = "{PEOPLE}"\n'
                    f'bind-dn = "{ADMIN_DN}"\nbind-password-file = "{secret}"\n'
                    f'starttls = false\ncache-seconds = {cache}\n')
        return (f'[[auth]]\nkind = "postgres"\nurl = "{pg.url}"\nquery = "{query}"\n'
                f'cache-seconds = {cache}\n')

    cases = [("users file (Argon2)", ["--users", str(users)], "bob", "bobpw")]
    for kind, user, password in [("http", "hana", "hanapw"), ("ldap", "lena", "lenapw"),
                                 ("postgres", "pia", "bobpw")]:
        for cache in (0, 60):
            cfg = work / f"{kind}-{cache}.toml"
            cfg.write_text(table(kind, cache))
            label = f"{kind}, cache {'off' if cache == 0 else f'{cache} s'}"
            cases.append((label, ["--config", str(cfg)], user, password))
    print(f"| source (epoll, {CLIENTS} clients) | logins/s | server CPU ms per login |")
    print("|---|---|---|")
    try:
        for round_ in (1, 2):
            for label, extra, user, password in cases:
                proc, port = serve(work, "epoll", extra)
                try:
                    before = cpu_seconds(proc.pid)
                    rows = bench(port, user, password, "--scenario", "logins", "--clients",
                                 str(CLIENTS))
                    cpu = cpu_seconds(proc.pid) - before
                    rate = metric(rows, "logins")
                    print(f"| {label} (round {round_}) | {rate:.0f} | "
                          f"{1000 * cpu / CLIENTS:.2f} |", flush=True)
                finally:
                    proc.terminate()
                    proc.wait(20)
        # A source that takes 200 ms per login: idle sessions' NOOP latency meanwhile.
        hook.mode, hook.delay = "slow", 0.2
        cfg = work / "slow.toml"
        cfg.write_text(table("http", 0))
        print("\n| model | NOOP p50 ms | NOOP p99 ms | (logins to a source answering in 200 ms) |")
        print("|---|---|---|---|")
        for model in ("select", "poll", "epoll"):
            proc, port = serve(work, model, ["--config", str(cfg)])
            try:
                rows = bench(port, "u", "p", "--scenario", "fairness", "--slow-login",
                             "hana:hanapw", "--fairness-sessions", "20", "--list-entries", "10",
                             "--big-size", "10000000")
                idle = (metric(rows, "idle NOOP p50"), metric(rows, "idle NOOP p99"))
                busy = (metric(rows, "logins NOOP p50"), metric(rows, "logins NOOP p99"))
                print(f"| {model} | {busy[0]:.2f} | {busy[1]:.2f} | idle: p50 {idle[0]:.2f}, "
                      f"p99 {idle[1]:.2f} |", flush=True)
            finally:
                proc.terminate()
                proc.wait(20)
    finally:
        hook.stop()
        slapd.close()
        pg.close()


if __name__ == "__main__":
    main()
