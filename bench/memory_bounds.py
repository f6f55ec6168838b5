"""Server memory (RSS, epoll model) with 30 stalled LISTs of ROOT/zocalo-bench-list, and while
one client pipelines STAT for 5 s without reading a reply.

    python3 bench/memory_bounds.py ROOT BINARY [BINARY...]
"""
import re
import socket
import subprocess
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))


def serve(binary, root):
    p = subprocess.Popen([binary, "serve", "--root", root, "--listen", "127.0.0.1:0",
                          "--user", "u:p", "--model", "epoll", "--max-per-ip", "1000"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return p, int(re.search(r":(\d+) ", p.stdout.readline())[1])


def login(port):
    c = socket.create_connection(("127.0.0.1", port), timeout=30)
    f = c.makefile("rb")
    f.readline()
    for line in ("USER u", "PASS p"):
        c.sendall(line.encode() + b"\r\n")
        f.readline()
    return c, f


def stalled_listings(binary, root):
    p, port = serve(binary, root)
    socks = []
    try:
        before = rss_kib(p.pid)
        for _ in range(30):
            c, f = login(port)
            c.sendall(b"EPSV\r\n")
            dport = int(f.readline().split(b"|||")[1].split(b"|")[0])
            d = socket.socket()
            d.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            d.connect(("127.0.0.1", dport))
            c.sendall(b"LIST zocalo-bench-list\r\n")
            f.readline()
            d.recv(100)
            socks += [c, d]
        time.sleep(2)  # a benchmark: let every listing reach its stall
        return before, rss_kib(p.pid)
    finally:
        for s in socks:
            s.close()
        p.kill()
        p.wait()


def pipelined_stat(binary, root):
    p, port = serve(binary, root)
    try:
        before = rss_kib(p.pid)
        c, _ = login(port)
        c.setblocking(False)
        chunk, end = b"STAT\r\n" * 10000, time.monotonic() + 5
        while time.monotonic() < end:
            try:
                c.send(chunk)
            except BlockingIOError:
                time.sleep(0.01)
        after = rss_kib(p.pid)
        c.close()
        return before, after
    finally:
        p.kill()  # an old server can keep growing on what it buffered
        p.wait()


root = sys.argv[1]
for binary in sys.argv[2:]:
    for name, measure in [("30 stalled LISTs", stalled_listings), ("5 s of pipelined STAT", pipelined_stat)]:
        b, a = measure(binary, root)
        print(f"{binary}: {name}: {b / 1024:.1f} -> {a / 1024:.1f} MiB (+{(a - b) / 1024:.1f})")
