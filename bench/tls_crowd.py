#!/usr/bin/env python3
"""NOOP latency of one plain session while crowds of TLS handshakes with an RSA-4096 key arrive
at once (issue 26, item 15): 8 rounds of 64 clients that connect, meet at a barrier and send
AUTH TLS and their ClientHello together. Event-loop model; each binary in turn, in one run.

    python3 bench/tls_crowd.py BINARY [BINARY...]

Loopback only; bounded: 8 rounds of 64 handshakes per binary."""

import ftplib
import os
import re
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROUNDS, CROWD = 8, 64
MODEL = os.environ.get("MODEL", "epoll")


def serve(binary, cert, key, root):
    p = subprocess.Popen([binary, "serve", "--root", root, "--listen", "127.0.0.1:0",
                          "--user", "u:p", "--model", MODEL, "--max-per-ip", "1000",
                          "--login-fail-delay-ms", "0", "--tls-cert", cert, "--tls-key", key],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return p, int(re.search(r":(\d+) ", p.stdout.readline())[1])


def run(binary, cert, key, root):
    p, port = serve(binary, cert, key, root)
    context = ssl.create_default_context(cafile=cert)
    lat, stop = [], threading.Event()
    probe = ftplib.FTP(timeout=30)
    probe.connect("127.0.0.1", port)
    probe.login("u", "p")

    def noops():
        while not stop.is_set():
            t = time.perf_counter()
            probe.voidcmd("NOOP")
            lat.append(time.perf_counter() - t)

    prober = threading.Thread(target=noops)
    prober.start()
    for _ in range(ROUNDS):
        barrier = threading.Barrier(CROWD)

        def one():
            c = ftplib.FTP_TLS(context=context, timeout=60)
            c.connect("127.0.0.1", port)
            barrier.wait(30)
            c.auth()
            c.close()

        crowd = [threading.Thread(target=one) for _ in range(CROWD)]
        for t in crowd:
            t.start()
        for t in crowd:
            t.join(60)
    stop.set()
    prober.join()
    probe.quit()
    p.terminate()
    p.wait(10)
    lat.sort()
    q = lambda f: lat[min(len(lat) - 1, int(f * len(lat)))] * 1000  # noqa: E731
    return len(lat), statistics.median(lat) * 1000, q(0.99), lat[-1] * 1000


def main():
    with tempfile.TemporaryDirectory() as d:
        cert, key = f"{d}/cert.pem", f"{d}/key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:4096", "-nodes", "-days", "2",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", key, "-out", cert], check=True, capture_output=True)
        print(f"{MODEL}, {ROUNDS} rounds of {CROWD} RSA-4096 handshakes at once; NOOP latency")
        print("| binary | NOOPs | p50 ms | p99 ms | max ms |")
        print("|---|---|---|---|---|")
        for binary in sys.argv[1:]:
            n, p50, p99, worst = run(binary, cert, key, d)
            print(f"| {binary} | {n} | {p50:.2f} | {p99:.2f} | {worst:.2f} |", flush=True)


if __name__ == "__main__":
    main()
