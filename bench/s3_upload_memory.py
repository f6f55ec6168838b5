#!/usr/bin/env python3
"""What slow S3 uploads hold, during and after (issue 26, item 14): 50 clients of one account
each STOR 7 MiB at 1 MiB/s into a store that answers at once (tests/hostile_s3.py in its
answering mode: the memory measured is the server's, not the store's). Server PSS sampled
every 0.2 s (peak), then 2 s after the last upload ended, per model, in one run.

    python3 bench/s3_upload_memory.py

Loopback only; bounded: 50 uploads of 7 MiB, a 120 s deadline per model."""

import ftplib
import io
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("ZOCALO_BIN", str(ROOT / "target" / "release" / "zocalo"))

import helpers  # noqa: E402
from hostile_s3 import HostileS3  # noqa: E402
from test_abuse import rss_kib as pss_kib  # noqa: E402  (PSS of the server and its children)

CLIENTS, SIZE, RATE = 50, 7 << 20, 1 << 20


class Slow(io.RawIOBase):
    """SIZE bytes, read at RATE bytes a second."""

    def __init__(self):
        self.left, self.start, self.sent = SIZE, time.monotonic(), 0

    def readable(self):
        return True

    def readinto(self, b):
        if self.left == 0:
            return 0
        due = self.start + self.sent / RATE
        time.sleep(max(0.0, due - time.monotonic()))
        n = min(len(b), self.left, 64 << 10)
        b[:n] = b"z" * n
        self.left -= n
        self.sent += n
        return n


def run(model: str, tmp: Path) -> tuple[int, int, int, int]:
    store = HostileS3()
    env = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
    srv = helpers.launch(model, tmp, tmp / f"{model}.log", write=True, env=env, root_flag=False,
                         extra=["--storage", store.location, "--s3-insecure-http",
                                "--max-per-ip", "200", "--max-connections", "400"])
    try:
        base = pss_kib(srv.proc.pid)
        done: list = []

        def upload(i):
            c = ftplib.FTP(timeout=60)
            c.connect(*srv.addr(4))
            c.login(helpers.USER, helpers.PASSWORD)
            done.append(c.storbinary(f"STOR f{i}", Slow()))
            c.quit()

        threads = [threading.Thread(target=upload, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        peak, deadline = base, time.monotonic() + 120
        while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
            peak = max(peak, pss_kib(srv.proc.pid))
            time.sleep(0.2)
        for t in threads:
            t.join(1)
        time.sleep(2)
        after = pss_kib(srv.proc.pid)
        ok = sum(r.startswith("226") for r in done)
        return base, peak, after, ok
    finally:
        srv.stop()
        store.stop()


def main():
    print(f"{CLIENTS} uploads of {SIZE >> 20} MiB at {RATE >> 20} MiB/s each, PSS in MiB")
    print("| model | at start | peak | 2 s after | uploads 226 |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as d:
        for model in ["epoll", "thread", "pool:64", "process"]:
            base, peak, after, ok = run(model, Path(d))
            print(f"| {model} | {base / 1024:.0f} | {peak / 1024:.0f} | {after / 1024:.0f} "
                  f"| {ok}/{CLIENTS} |", flush=True)


if __name__ == "__main__":
    main()
