"""select(2) watches descriptors below FD_SETSIZE (1024) only: a connection the select model
cannot watch gets a clean 421 and is closed, and the connections it can watch keep working."""

from __future__ import annotations

import resource
import socket

import helpers


def test_select_refuses_past_fd_setsize_with_421(start_server):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2500:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    srv = start_server("select", extra=["--backlog", 1024, "--max-per-ip", 2000])
    held, refused = [], 0
    try:
        for _ in range(1100):
            s = socket.create_connection((srv.host, srv.port), timeout=helpers.TIMEOUT)
            buf = b""
            for _ in range(100):
                chunk = s.recv(4096)
                buf += chunk
                if not chunk or b"\n" in buf:
                    break
            if buf.startswith(b"421"):
                refused += 1
                assert b"select" in buf, buf
                s.close()
            else:
                assert buf.startswith(b"220"), buf
                held.append(s)
        assert refused > 0, "no connection was refused past FD_SETSIZE"
        assert len(held) > 900, f"only {len(held)} connections were served"
        # The watched sessions still work: the oldest one logs in.
        first = held[0]
        first.sendall(f"USER {helpers.USER}\r\n".encode())
        assert first.recv(4096).startswith(b"331")
        first.sendall(f"PASS {helpers.PASSWORD}\r\n".encode())
        assert first.recv(4096).startswith(b"230")
    finally:
        for s in held:
            s.close()
