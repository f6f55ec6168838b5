#!/usr/bin/env python3
"""The web console's own cost, side by side in one run: a server (epoll) holding 500 logged-in
sessions that send a NOOP every second, for 30 s, first with no console open, then with the
console open in headless Chromium (polling its overview every second), then without again.
Server CPU seconds over each window and its PSS at the end of each.

    python3 bench/console.py

Loopback only; every phase is bounded (a fixed count and a fixed window)."""

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("ZOCALO_BIN", str(ROOT / "target" / "release" / "zocalo"))

import console_browser  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

SESSIONS = int(os.environ.get("SESSIONS", "500"))
WINDOW = float(os.environ.get("WINDOW", "30"))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pss_kib(pid: int) -> int:
    text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    return int(re.search(r"^Pss:\s+(\d+)", text, re.M)[1])


def login(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    f = s.makefile("rb")
    f.readline()
    for line in (b"USER u\r\n", b"PASS p\r\n"):
        s.sendall(line)
        f.readline()
    return s


def noop_round(socks) -> None:
    for s in socks:
        s.sendall(b"NOOP\r\n")
    for s in socks:
        s.recv(256)


def window(pid: int, socks, during=None) -> tuple[float, int]:
    start, end = cpu_seconds(pid), time.monotonic() + WINDOW
    while time.monotonic() < end:
        t = time.monotonic()
        noop_round(socks)
        if during:
            during()
        time.sleep(max(0.0, 1.0 - (time.monotonic() - t)))
    return cpu_seconds(pid) - start, pss_kib(pid)


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="zocalo-console-bench-"))
    console_browser.console_config(work / "console.toml")
    (work / "root").mkdir()
    port_c = 18000 + os.getpid() % 1000
    proc = subprocess.Popen(
        [os.environ["ZOCALO_BIN"], "serve", "--root", str(work / "root"), "--listen",
         "127.0.0.1:0", "--no-anonymous", "--user", "u:p", "--max-per-ip", "2000",
         "--login-fail-delay-ms", "0", "--config", str(work / "console.toml"),
         "--console", f"127.0.0.1:{port_c}"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        port = int(re.search(r"127\.0\.0\.1:(\d+)", proc.stdout.readline())[1])
        socks = [login(port) for _ in range(SESSIONS)]
        rows = [("no console", *window(proc.pid, socks))]
        with sync_playwright() as p:
            browser = console_browser.launch_browser(p)
            page = browser.new_page()
            console_browser.sign_in(page, f"http://127.0.0.1:{port_c}",
                                    console_browser.ADMIN, console_browser.ADMIN_PW)
            assert page.locator("#sessions tbody tr").count() >= SESSIONS - 5
            rows.append(("console open", *window(proc.pid, socks)))
            browser.close()
        rows.append(("no console again", *window(proc.pid, socks)))
        print(f"{SESSIONS} sessions, a NOOP each per second, {WINDOW:.0f} s windows, epoll")
        print("| phase | server CPU s | CPU per s | PSS KiB |")
        print("|---|---|---|---|")
        for name, cpu, pss in rows:
            print(f"| {name} | {cpu:.2f} | {cpu / WINDOW * 1000:.1f} ms | {pss} |")
        for s in socks:
            s.close()
    finally:
        proc.terminate()
        proc.wait(20)


if __name__ == "__main__":
    main()
