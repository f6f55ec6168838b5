"""The io_uring model: it really runs on a ring, it keeps replies in order and other sessions
served when a client does not read its replies, and where io_uring is forbidden it refuses to
start with a message that says so (and the other models are not touched)."""

from __future__ import annotations

import ctypes
import os
import subprocess

import pytest

import helpers

# io_uring_setup(2) is system call 425 on every architecture (numbered after the 2019 unification).
IO_URING_SETUP = 425


def ring_kinds(pid: int) -> set[str]:
    return {link.split("->", 1)[1] for link in helpers.describe_fds(pid)
            if "anon_inode:" in link}


@pytest.mark.parametrize("model, kind", [("uring", "anon_inode:[io_uring]"),
                                         ("uring:2", "anon_inode:[io_uring]"),
                                         ("epoll", "anon_inode:[eventpoll]")])
def test_the_model_waits_on_its_own_kind_of_instance(tmp_path, model, kind):
    srv = helpers.launch(model, tmp_path, tmp_path / "server.log")
    try:
        c = helpers.Ctl(srv.host, srv.port)
        assert c.reply()[0] == 220
        c.login()
        kinds = ring_kinds(srv.proc.pid)
        assert kind in kinds, kinds
        other = "anon_inode:[eventpoll]" if "uring" in kind else "anon_inode:[io_uring]"
        assert other not in kinds, kinds
        c.close()
    finally:
        srv.stop()


def test_a_client_that_does_not_read_its_replies_holds_only_itself(tmp_path):
    """1,500 pipelined STATs of a big directory (16 KiB of reply each, 24 MiB: more than the
    kernel's socket buffers on both ends hold) sent without reading: the
    ring's send waits for room, the session reads no more meanwhile, another session is served
    at once, and then every reply arrives whole and in order."""
    big = tmp_path / "big"
    big.mkdir()
    for i in range(300):
        (big / f"file-with-a-long-name-{i:04d}.dat").write_bytes(b"")
    srv = helpers.launch("uring", tmp_path, tmp_path / "server.log")
    try:
        deaf = helpers.Ctl(srv.host, srv.port)
        assert deaf.reply()[0] == 220
        deaf.login()
        burst = b"".join(b"STAT /big\r\nNOOP\r\n" for _ in range(1500))
        deaf.sock.sendall(burst)
        other = helpers.Ctl(srv.host, srv.port)
        assert other.reply()[0] == 220
        other.login()
        assert other.cmd("NOOP")[0] == 200
        other.close()
        for i in range(1500):
            code, text = deaf.reply()
            assert code == 213 and "name-0000.dat" in text and "name-0179.dat" in text, i
            assert text.endswith("213 End of status."), (i, text[-200:])
            assert deaf.reply()[0] == 200, i
        assert deaf.cmd("QUIT")[0] == 221
        assert deaf.wait_closed()
    finally:
        srv.stop()


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                ("k", ctypes.c_uint)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


_LIBC = ctypes.CDLL(None, use_errno=True)
# Load the system call number; if io_uring_setup, fail it with EPERM; allow everything else:
# what the default seccomp profiles of Docker and containerd do since 2023.
_PROGRAM = (SockFilter * 4)(
    SockFilter(0x20, 0, 0, 0),                    # BPF_LD | BPF_W | BPF_ABS: seccomp_data.nr
    SockFilter(0x15, 0, 1, IO_URING_SETUP),       # BPF_JMP | BPF_JEQ | BPF_K
    SockFilter(0x06, 0, 0, 0x00050000 | 1),       # BPF_RET: SECCOMP_RET_ERRNO | EPERM
    SockFilter(0x06, 0, 0, 0x7FFF0000),           # BPF_RET: SECCOMP_RET_ALLOW
)
_FPROG = SockFprog(len(_PROGRAM), _PROGRAM)


def forbid_io_uring():
    """In the child before exec: install the filter (no_new_privs lets an unprivileged process)."""
    if _LIBC.prctl(38, 1, 0, 0, 0) != 0:              # PR_SET_NO_NEW_PRIVS
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
    if _LIBC.prctl(22, 2, ctypes.byref(_FPROG), 0, 0) != 0:  # PR_SET_SECCOMP, FILTER
        raise OSError(ctypes.get_errno(), "PR_SET_SECCOMP")


def test_forbidden_io_uring_stops_the_uring_model_at_start_and_nothing_else(tmp_path):
    argv = [str(helpers.zocalo_bin()), "serve", "--root", str(tmp_path),
            "--listen", "127.0.0.1:0", "--anonymous"]
    refused = subprocess.run(argv + ["--model", "uring"], preexec_fn=forbid_io_uring,
                             capture_output=True, text=True, timeout=30,
                             stdin=subprocess.DEVNULL)
    assert refused.returncode != 0
    assert "io_uring is not available: io_uring is forbidden here" in refused.stderr, \
        refused.stderr
    assert "panicked" not in refused.stderr
    # Under the same filter, epoll serves as ever.
    srv = helpers.launch("epoll", tmp_path, tmp_path / "server.log",
                         preexec=forbid_io_uring)
    try:
        c = helpers.Ctl(srv.host, srv.port)
        assert c.reply()[0] == 220
        c.login()
        assert c.cmd("NOOP")[0] == 200
        c.close()
        status = open(f"/proc/{srv.proc.pid}/status").read()
        assert "Seccomp:\t2" in status, "the filter was not in force"
    finally:
        srv.stop()
    assert os.path.isdir(tmp_path)
