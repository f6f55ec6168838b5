#!/usr/bin/env python3
"""Uploads with hooks, side by side in one run: 1,000 small files (1 KiB) uploaded by 4
sessions with no hook, with an asynchronous webhook on every upload, with a checking program
(`/bin/true`, a process per upload) and with a checking webhook; uploads/s, server CPU per
upload, and the NOOP latency (p50, p99) of 20 idle sessions polled meanwhile from another
process. In epoll, select and thread.

    python3 bench/hooks.py

Loopback only; every phase is bounded (a fixed count, a deadline per phase)."""

import ftplib
import io
import multiprocessing as mp
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ZOCALO = ROOT / "target" / "release" / "zocalo"
FILES = int(os.environ.get("FILES", "1000"))
UPLOADERS = 4
IDLE = 20
DEADLINE = 300


def cpu_seconds(pid: int) -> float:
    """The server's CPU, with that of the children it reaped (the checking programs)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def serve(work: Path, model: str, config: str) -> tuple[subprocess.Popen, int]:
    root = work / f"root-{time.monotonic_ns()}"
    root.mkdir()
    cfg = work / f"hooks-{time.monotonic_ns()}.toml"
    cfg.write_text(config)
    proc = subprocess.Popen([str(ZOCALO), "serve", "--root", str(root), "--listen",
                             "127.0.0.1:0", "--model", model, "--no-anonymous", "--user", "u:p",
                             "--write", "--max-per-ip", "1000", "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    return proc, int(re.search(r"127\.0\.0\.1:(\d+)", line)[1])


def noops(port: int, stop, out) -> None:
    """IDLE sessions, one NOOP each in turn, until `stop`; latencies (ms) into `out`."""
    sessions = []
    for _ in range(IDLE):
        f = ftplib.FTP()
        f.connect("127.0.0.1", port, timeout=30)
        f.login("u", "p")
        sessions.append(f)
    got = []
    began = time.monotonic()
    while not stop.is_set() and time.monotonic() - began < DEADLINE:
        for f in sessions:
            t0 = time.perf_counter()
            f.voidcmd("NOOP")
            got.append((time.perf_counter() - t0) * 1000)
        time.sleep(0.01)
    out.put(got)


def upload(port: int, first: int, count: int) -> None:
    f = ftplib.FTP()
    f.connect("127.0.0.1", port, timeout=30)
    f.login("u", "p")
    data = os.urandom(1024)
    for i in range(first, first + count):
        f.storbinary(f"STOR f{i}", io.BytesIO(data))
    f.quit()


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))] if values else float("nan")


def run(work: Path, model: str, config: str) -> dict:
    proc, port = serve(work, model, config)
    try:
        stop, out = mp.Event(), mp.Queue()
        sampler = mp.Process(target=noops, args=(port, stop, out))
        sampler.start()
        time.sleep(0.5)  # the idle sessions log in before the uploads start
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        per = FILES // UPLOADERS
        threads = [threading.Thread(target=upload, args=(port, k * per, per))
                   for k in range(UPLOADERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(DEADLINE)
        took, cpu = time.monotonic() - t0, cpu_seconds(proc.pid) - cpu0
        stop.set()
        latencies = out.get(timeout=60)
        sampler.join(30)
        return {"uploads/s": per * UPLOADERS / took, "cpu ms/upload": cpu * 1000 / FILES,
                "noop p50 ms": percentile(latencies, 0.5),
                "noop p99 ms": percentile(latencies, 0.99)}
    finally:
        proc.terminate()
        proc.wait(30)


def main():
    work = Path(tempfile.mkdtemp(prefix="zocalo-hooks-bench-"))
    receiver = subprocess.Popen([sys.executable, str(ROOT / "tests" / "webhook_receiver.py"),
                                 str(work / "received.jsonl")], stdout=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{int(receiver.stdout.readline().split()[1])}/hook"
    configs = {
        "no hook": "",
        "async webhook": f'[[hook]]\nevents = ["upload"]\nurl = "{url}"\n',
        "checking program": '[[hook]]\nevents = ["upload"]\ncommand = ["/bin/true"]\n'
                            'check = true\n',
        "checking webhook": f'[[hook]]\nevents = ["upload"]\nurl = "{url}"\ncheck = true\n',
    }
    try:
        print("| model | hooks | uploads/s | server CPU per upload | NOOP p50 | NOOP p99 |")
        print("|---|---|---|---|---|---|")
        for model in ("epoll", "select", "thread"):
            for name, config in configs.items():
                r = run(work, model, config)
                print(f"| {model} | {name} | {r['uploads/s']:,.0f} | {r['cpu ms/upload']:.2f} ms "
                      f"| {r['noop p50 ms']:.2f} ms | {r['noop p99 ms']:.2f} ms |", flush=True)
    finally:
        receiver.terminate()
        receiver.wait(10)


if __name__ == "__main__":
    main()
