#!/usr/bin/env python3
"""The io_uring model beside epoll, one and two loops each, in one run: `zocalo bench` (this
build's load generator) against each model in turn, alternating, ROUNDS rounds; the server's
CPU time per login and per session read from /proc around each phase. Prints a Markdown table
of medians with the spread (min-max). Loopback only; every phase is bounded by --timeout.

    python3 bench/uring.py [--rounds 3] [--models epoll,uring,epoll:2,uring:2] [--big 1GiB]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(__file__).resolve().parent.parent / "target" / "release" / "zocalo"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def start(model: str, root: Path, out: Path) -> tuple[subprocess.Popen, int]:
    argv = [str(BIN), "serve", "--root", str(root), "--listen", "127.0.0.1:0", "--model", model,
            "--user", "u:p", "--write", "--no-anonymous", "--login-fail-delay-ms", "0",
            "--max-per-ip", "100000", "--log-file", str(out.with_suffix(".log")), "--metrics",
            "127.0.0.1:0"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        m = re.match(r"listening ftp://127\.0\.0\.1:(\d+)", line)
        if m:
            return proc, int(m.group(1))
        if not line:
            break
    proc.kill()
    raise SystemExit(f"{model}: the server did not start")


def bench(port: int, pid: int, args: list[str]) -> tuple[list[dict], float]:
    before = cpu_seconds(pid)
    run = subprocess.run([str(BIN), "bench", f"ftp://u:p@127.0.0.1:{port}/", "--json",
                          "--server-pid", str(pid), "--timeout", "120", *args],
                         capture_output=True, text=True, timeout=900)
    cpu = cpu_seconds(pid) - before
    if run.returncode != 0:
        raise SystemExit(f"bench failed: {run.stderr[-2000:]}")
    return [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")], cpu


def metric(results: list[dict], scenario: str, name: str) -> float | None:
    for r in results:
        if r["scenario"] == scenario:
            for m in r["metrics"]:
                if m["name"] == name:
                    return m["value"]
    return None


def one(model: str, work: Path, big: str, logins: int, sessions: int) -> dict[str, float]:
    root = work / "root"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    proc, port = start(model, root, work / "server.out")
    row: dict[str, float] = {}
    try:
        res, cpu = bench(port, proc.pid, ["--scenario", "logins", "--clients", str(logins)])
        row["logins/s"] = metric(res, "logins", "logins")
        row["CPU per login (ms)"] = cpu * 1000 / logins
        for c in (100, 500):
            res, cpu = bench(port, proc.pid, ["--scenario", "sessions", "--concurrency", str(c),
                                              "--sessions", str(sessions)])
            row[f"sessions/s at {c}"] = metric(res, f"sessions-c{c}", "sessions")
            row[f"CPU per session at {c} (ms)"] = cpu * 1000 / sessions
        res, _ = bench(port, proc.pid, ["--scenario", "memory", "--idle", "2000"])
        row["idle PSS per session (KiB)"] = metric(res, "memory", "pss per session")
        res, _ = bench(port, proc.pid, ["--scenario", "transfer", "--big-size", big])
        for r in res:
            for m in r["metrics"]:
                if m["unit"] == "MB/s":
                    row[f"{r['scenario']} {m['name']} (MB/s)"] = m["value"]
        res, _ = bench(port, proc.pid, ["--scenario", "fairness"])
        for r in res:
            for m in r["metrics"]:
                if m["unit"] == "ms" and "NOOP" in m["name"]:
                    row[f"fairness {m['name']} (ms)"] = m["value"]
    finally:
        proc.terminate()
        proc.wait(30)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--models", default="epoll,uring,epoll:2,uring:2")
    ap.add_argument("--big", default="1GiB")
    ap.add_argument("--logins", type=int, default=3000)
    ap.add_argument("--sessions", type=int, default=2000)
    a = ap.parse_args()
    models = a.models.split(",")
    rows: dict[str, list[dict[str, float]]] = {m: [] for m in models}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.rounds):
            for m in models:
                rows[m].append(one(m, Path(tmp), a.big, a.logins, a.sessions))
                print(f"round {r + 1} {m}: {json.dumps(rows[m][-1])}", file=sys.stderr)
    names: list[str] = []
    for m in models:
        for row in rows[m]:
            names += [n for n in row if n not in names]
    print(f"| measure ({a.rounds} rounds: median, min-max) | " + " | ".join(models) + " |")
    print("|---|" + "---|" * len(models))
    for n in names:
        cells = []
        for m in models:
            vals = [row[n] for row in rows[m] if row.get(n) is not None]
            if not vals:
                cells.append("")
                continue
            fmt = (lambda v: f"{v:,.0f}") if max(vals) >= 100 else (lambda v: f"{v:.2f}")
            cells.append(f"{fmt(statistics.median(vals))} ({fmt(min(vals))}-{fmt(max(vals))})")
        print(f"| {n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
