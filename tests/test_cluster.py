"""Two zocalo nodes behind HAProxy (tests/cluster.py): PROXY protocol v2 from the balancer on
control and passive data connections, state shared through Redis (lock-outs, per-address
limits, the session table of `zocalo ctl`), HAProxy agent checks and drain, a node killed in
the middle of a download, and malformed PROXY headers sent straight to a node.

Real clients (ftplib, curl, lftp) talk to the balancer 127.0.0.10 from addresses of their own
(127.0.0.5X), so that the address a node sees through the PROXY header (the client's) differs
from the TCP peer (HAProxy's 127.0.0.1). Each test uses a client address of its own, so the
lock-out and the per-address counts of one test never reach another. Files live in one key
prefix of the SeaweedFS bucket (the `seaweed` fixture), served by both nodes.

Most tests share one cluster (`shared`); those that change a cluster for good (a per-address
limit of 2, a drained node, a killed node) start their own (`fresh`).
"""
from __future__ import annotations

import ftplib
import json
import os
import re
import select
import signal
import socket
import subprocess
import time
import uuid

import pytest

import helpers
from cluster import (BALANCER, CLIENT_IP, NODE_NAMES, PROXY_FROM, PROXY_V2_SIGNATURE,
                     Cluster, proxy_v1, proxy_v2)
from helpers import PASSWORD, USER, poll_until, sha256

pytestmark = pytest.mark.xdist_group("s3")

MiB = 1024 * 1024
LOCKOUT = 3  # --max-login-failures of the shared cluster
HEADER_TIMEOUT = 2  # --proxy-header-timeout of the shared cluster
CLIENT_TIMEOUT = 120  # a whole curl or lftp run
TABLE_DEADLINE = 5  # another node's session in `ctl status` (the table is rewritten every 1 s)
LEASE_DEADLINE = 30  # a dead node's sessions out of `ctl status` (their lease is 10 s)

# One client address per test (see the module's docstring).
PER_IP_IP = "127.0.0.51"
LOCK_IP = "127.0.0.52"
CTL_IP = "127.0.0.53"
KILL_IP = "127.0.0.54"
DRAIN_IP = "127.0.0.55"
KEEPER_IP = "127.0.0.56"
OTHER_IP = "127.0.0.57"
UNTRUSTED_IP = "127.0.0.60"
THIEF_IP = "127.0.0.61"
MAXCONN_IPS = ("127.0.0.62", "127.0.0.63", "127.0.0.64")
REDIS_IP = "127.0.0.65"
STOP_IP = "127.0.0.66"
ACCOUNT_IP = "127.0.0.67"
DRIFT_IP = "127.0.0.68"
CONSOLE_IP = "127.0.0.69"


@pytest.fixture(scope="module")
def shared_cluster(seaweed, certs):
    cluster = Cluster(seaweed, certs=certs, extra=[
        "--max-login-failures", LOCKOUT, "--ban-time", 300,
        "--proxy-header-timeout", HEADER_TIMEOUT]).start()
    try:
        yield cluster
    finally:
        problems = cluster.close()
    assert not problems, "\n".join(problems)


@pytest.fixture
def shared(shared_cluster):
    """The module's cluster; after the test its clients are closed and both nodes must still
    be running."""
    yield shared_cluster
    shared_cluster.close_clients()
    dead = [n.name for n in shared_cluster.nodes if not n.alive()]
    assert not dead, f"node(s) {dead} exited during the test\n{shared_cluster.report()}"


@pytest.fixture
def fresh(seaweed):
    """Factory: a cluster of the test's own, with more `zocalo serve` flags."""
    started: list[Cluster] = []

    def start(*extra, grace: int = 2, console: bool = False) -> Cluster:
        cluster = Cluster(seaweed, extra=extra, grace=grace, console=console).start()
        started.append(cluster)
        return cluster

    yield start
    problems = []
    for cluster in started:
        problems += cluster.close()
    assert not problems, "\n".join(problems)


def run(argv, home, timeout: float = CLIENT_TIMEOUT) -> subprocess.CompletedProcess:
    env = dict(os.environ, HOME=str(home), LC_ALL="C.UTF-8")
    p = subprocess.run([str(a) for a in argv], env=env, stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=timeout)
    if p.returncode != 0:
        raise AssertionError(f"{argv} exited {p.returncode}\nstdout: {p.stdout[-3000:]!r}\n"
                             f"stderr: {p.stderr[-3000:]!r}")
    return p


def has_peer(line: str, ip: str) -> bool:
    """Whether a log line names `ip` as its session's (or transfer's) peer."""
    return re.search(r"peer=" + re.escape(ip) + r"[:\s}]", line + " ") is not None


def unique(suffix: str = ".bin") -> str:
    return f"f-{uuid.uuid4().hex[:10]}{suffix}"


def transfer_line(cluster: Cluster, verb: str, path: str, since=None,
                  timeout: float = 10) -> tuple[int, str]:
    """The node that logged the transfer `verb path` (after `since`), and its line."""
    needle = f'transfer verb="{verb}" path="/{path.lstrip("/")}"'
    since = since or [0, 0]
    found: list = []

    def look():
        found[:] = [(i, line) for i in range(2)
                    for line in cluster.log(i, since[i]).splitlines() if needle in line]
        return found

    assert poll_until(look, timeout, 0.05), f"no node logged {needle!r}\n{cluster.report()}"
    assert len({i for i, _ in found}) == 1, f"both nodes logged {needle!r}: {found}"
    return found[0]


def session_lines(cluster: Cluster, i: int, ip: str, port: int, since=None) -> list[str]:
    """Node i's log lines of the session of client ip:port."""
    tag = f"peer={ip}:{port}"
    return [line for line in cluster.log(i, (since or [0, 0])[i]).splitlines()
            if re.search(re.escape(tag) + r"[}\s,]", line)]


def session_logged(cluster: Cluster, i: int, ip: str, port: int, needles, since=None,
                   timeout: float = 10) -> list[str]:
    """Node i's lines of the session of client ip:port, once each of `needles` is in one
    (a line is written after the reply it logs: polled)."""
    lines: list[str] = []

    def look():
        lines[:] = session_lines(cluster, i, ip, port, since)
        return all(any(n in line for line in lines) for n in needles)

    assert poll_until(look, timeout, 0.05), (
        f"{NODE_NAMES[i]} never logged {needles} for the session of {ip}:{port}:\n"
        + "\n".join(lines) + "\n" + cluster.report())
    return lines


def on_node(cluster: Cluster, i: int, source: str, attempts: int = 4, login: bool = True):
    """A raw session through the balancer served by node i (round robin alternates the
    nodes: at most a few connections); those that land on the other node are closed."""
    for _ in range(attempts):
        c = cluster.raw(source)
        if cluster.served_by(c) == i:
            if login:
                c.login()
            return c
        c.close()
    raise AssertionError(f"{attempts} connections through the balancer, none on "
                         f"{NODE_NAMES[i]}\n{cluster.report()}")


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """Everything the peer sends until it closes (True) or `timeout` passes (False)."""
    got = bytearray()
    deadline = time.monotonic() + timeout
    for _ in range(100000):
        left = deadline - time.monotonic()
        if left <= 0:
            return bytes(got), False
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return bytes(got), False
        except (ConnectionResetError, BrokenPipeError):
            return bytes(got), True
        if not chunk:
            return bytes(got), True
        got += chunk
    return bytes(got), False


def noop_time(c) -> float:
    began = time.monotonic()
    code, text = c.cmd("NOOP")
    assert code == 200, text
    return time.monotonic() - began


# ==========================================================================
# Files across nodes, data connections through the balancer


def test_upload_on_one_node_list_and_download_on_the_other(shared):
    c = shared
    data = os.urandom(5 * MiB + 123)
    name = unique()
    up = c.ftp()
    a = c.served_by(up)
    assert helpers.upload(up, name, data).startswith("226")
    up.quit()
    down = c.ftp()
    b = c.served_by(down)
    assert a != b, f"round robin sent both sessions to {NODE_NAMES[a]}"
    down.voidcmd("TYPE I")
    assert name in down.nlst()
    lines: list[str] = []
    down.retrlines("LIST", lines.append)
    assert any(line.endswith(" " + name) and f" {len(data)} " in line for line in lines), lines
    assert down.size(name) == len(data)
    got = helpers.download(down, name)
    assert sha256(got) == sha256(data)
    down.quit()
    assert c.seaweed.object_sha256(c.key(name)) == sha256(data)


def test_curl_uploads_lftp_lists_and_downloads_on_the_other_node(shared, work, home):
    c = shared
    data = os.urandom(3 * MiB + 5)
    name = unique()
    src = work / "src.bin"
    src.write_bytes(data)
    marks = c.marks()
    host, port = c.balancer
    run([helpers.need("curl"), "-sS", "--interface", CLIENT_IP, "-T", src,
         f"ftp://{USER}:{PASSWORD}@{host}:{port}/{name}"], home)
    up, line = transfer_line(c, "STOR", name, marks)
    assert has_peer(line, CLIENT_IP), line
    assert f"bytes={len(data)}" in line, line
    back = work / "back.bin"
    script = (f"set net:socket-bind-ipv4 {CLIENT_IP}; set cmd:fail-exit yes; "
              "set ftp:ssl-allow no; "
              f"open -u {USER},{PASSWORD} -p {port} {host}; cls -1; get {name} -o {back}; quit")
    out = run([helpers.need("lftp"), "-c", script], home).stdout.decode()
    assert name in out.split(), out
    down, line = transfer_line(c, "RETR", name, marks)
    assert has_peer(line, CLIENT_IP), line
    assert down != up, f"round robin sent curl and lftp to {NODE_NAMES[up]}"
    assert sha256(back.read_bytes()) == sha256(data)


def test_pasv_and_epsv_through_the_balancer_on_both_nodes(shared):
    c = shared
    data = os.urandom(2 * MiB + 7)
    name = unique()
    sessions = [c.ftp(), c.ftp()]
    nodes = [c.served_by(f) for f in sessions]
    assert sorted(nodes) == [0, 1], f"round robin: {nodes}"
    assert helpers.upload(sessions[0], name, data).startswith("226")
    for ftp, i in zip(sessions, nodes):
        node = c.nodes[i]
        # PASV announces the balancer (--masquerade) and a port of the serving node's range,
        # and that announced address is where the data connection goes.
        resp = ftp.sendcmd("PASV")
        host, port = ftplib.parse227(resp)
        assert host == BALANCER, resp
        assert port in node.passive, f"{resp}: not in {node.name}'s {node.passive}"
        ftp.trust_server_pasv_ipv4_address = True
        assert helpers.download(ftp, name) == data
        # EPSV: a port of the same range, on the control connection's address (the balancer).
        resp = ftp.sendcmd("EPSV")
        assert resp.startswith("229"), resp
        _, port = ftplib.parse229(resp, ftp.sock.getpeername())
        assert port in node.passive, f"{resp}: not in {node.name}'s {node.passive}"
        helpers.use_epsv(ftp)
        assert helpers.download(ftp, name, rest=MiB) == data[MiB:]
        other = unique()
        assert helpers.upload(ftp, other, data[:1000]).startswith("226")
        assert sorted(n for n in ftp.nlst() if n in (name, other)) == sorted([name, other])
        assert c.seaweed.object_sha256(c.key(other)) == sha256(data[:1000])
    for ftp in sessions:
        ftp.quit()


def test_a_passive_port_taken_through_the_balancer_by_another_address_is_refused(shared):
    """Another address that reaches a session's passive port first (through the balancer,
    which names it in the PROXY header) is refused; the session's own client then gets its
    data connection."""
    c = shared
    data = os.urandom(300_000)
    name = unique()
    ftp = c.ftp()
    i = c.served_by(ftp)
    helpers.upload(ftp, name, data)
    marks = c.marks()
    ftp.voidcmd("TYPE I")
    host, port = ftplib.parse227(ftp.sendcmd("PASV"))
    assert host == BALANCER
    # The other address connects first, then the client; the node accepts them in that order
    # once RETR starts the transfer. The client connects only once HAProxy has the other
    # address's connection to the node up (its passive backend counts it), so the two reach the
    # node's listen queue in that order too.
    thief = socket.create_connection((BALANCER, port), timeout=10,
                                     source_address=(THIEF_IP, 0))
    backend, node = f"pasv_{NODE_NAMES[i]}", NODE_NAMES[i]
    assert poll_until(lambda: int(c.servers(backend).get(node, {}).get("scur") or 0) >= 1, 10), \
        f"HAProxy never connected the other address to {node}: {c.servers(backend)}"
    conn = socket.create_connection((BALANCER, port), timeout=10,
                                    source_address=(CLIENT_IP, 0))
    code = ftp.sendcmd(f"RETR {name}")[:3]
    assert code in ("125", "150"), code
    body = helpers.read_all(conn)
    conn.close()
    assert ftp.voidresp().startswith("226")
    assert body == data
    got, closed = read_until_closed(thief, 10)
    thief.close()
    assert closed and got == b"", f"the other address's data connection: {got!r}, {closed}"
    assert poll_until(lambda: any(
        "refused a data connection" in line and THIEF_IP in line
        for line in c.log(i, marks[i]).splitlines()), 5), c.nodes[i].log_tail()
    ftp.quit()


def test_ftps_through_the_balancer(shared, work, home):
    """Explicit FTPS (AUTH TLS, PROT P) through the balancer: TLS on top of the PROXY header
    on control and data connections; each data connection lands on the node that holds the
    TLS session, so it resumes it."""
    c = shared
    data = os.urandom(MiB + 11)
    name = unique()
    ftp = c.ftp(tls=True, login=False)
    ftp.login(USER, PASSWORD)  # AUTH TLS first
    assert ftp.prot_p().startswith("200")
    assert helpers.upload(ftp, name, data).startswith("226")
    assert helpers.download(ftp, name) == data
    helpers.use_epsv(ftp)
    assert helpers.download(ftp, name, rest=1000) == data[1000:]
    assert len(ftp.reused) == 3 and all(ftp.reused), f"session resumption: {ftp.reused}"
    ftp.quit()
    marks = c.marks()
    back = work / "back.bin"
    host, port = c.balancer
    run([helpers.need("curl"), "-sS", "-k", "--ssl-reqd", "--interface", CLIENT_IP,
         "-o", back, f"ftp://{USER}:{PASSWORD}@{host}:{port}/{name}"], home)
    assert sha256(back.read_bytes()) == sha256(data)
    _, line = transfer_line(c, "RETR", name, marks)
    assert has_peer(line, CLIENT_IP), line


def test_each_node_logs_and_lists_the_real_client_address(shared):
    c = shared
    marks = c.marks()
    name = unique(".txt")
    sessions = [c.ftp(), c.ftp()]
    nodes = [c.served_by(f) for f in sessions]
    assert sorted(nodes) == [0, 1], f"round robin: {nodes}"
    helpers.upload(sessions[0], name, b"hello\n")
    for ftp, i in zip(sessions, nodes):
        assert helpers.download(ftp, name) == b"hello\n"
        session_logged(c, i, CLIENT_IP, ftp.zport, ["login accepted", 'transfer verb="RETR"'],
                       marks)
        listed = [s for s in c.sessions(i) if s.get("peer") == f"{CLIENT_IP}:{ftp.zport}"]
        assert len(listed) == 1, c.ctl(i, "status").stdout
        assert listed[0].get("user") == USER, listed[0]["line"]
    # No session of this test was seen as coming from HAProxy's address.
    for i in range(2):
        for line in c.log(i, marks[i]).splitlines():
            if "login accepted" in line or "transfer verb=" in line:
                assert not has_peer(line, PROXY_FROM), line
    for ftp in sessions:
        ftp.quit()


# ==========================================================================
# State shared through Redis


def test_lockout_earned_on_one_node_holds_on_the_other(shared):
    c = shared
    marks = c.marks()
    first = c.raw(LOCK_IP)
    a = c.served_by(first)
    for k in range(LOCKOUT):
        code, text = first.cmd(f"USER {USER}")
        assert code == 331, text
        code, text = first.cmd(f"PASS wrong-{k}")
        assert code == 530, f"failure {k + 1}: {text}"
    first.close()
    second = on_node(c, 1 - a, LOCK_IP, login=False)
    code, text = second.cmd(f"USER {USER}")
    assert code == 331, text
    code, text = second.cmd(f"PASS {PASSWORD}")
    assert code == 530, f"the right password is refused while locked out: {text}"
    session_logged(c, 1 - a, LOCK_IP, second.zport, ['reason="locked out"'], marks)
    # Every failure was on the first node: the other one learnt of them through Redis.
    other = [line for line in c.log(1 - a, marks[1 - a]).splitlines()
             if f"peer={LOCK_IP}:" in line and 'reason="bad credentials"' in line]
    assert not other, other
    # Another address logs in on that node all the same.
    fine = on_node(c, 1 - a, OTHER_IP)
    assert fine.cmd("NOOP")[0] == 200


def admitted_once_a_slot_frees(c, ip: str) -> None:
    """A new session from `ip` is admitted (polled: the other node learns of the freed slot
    through Redis), logs in and works."""
    admitted: list = []

    def one_more():
        s = c.raw(ip, greet=False)
        try:
            code, _ = s.reply()
        except (EOFError, OSError):
            code = None
        if code == 220:
            admitted.append(s)
            return True
        s.close()
        return False

    assert poll_until(one_more, 10, 0.1), "no session admitted after one of the two ended"
    admitted[0].login()
    assert admitted[0].cmd("NOOP")[0] == 200


def test_max_per_ip_counts_sessions_on_every_node(fresh):
    c = fresh("--max-per-ip", 2)
    s1 = c.raw(PER_IP_IP)
    s1.login()
    s2 = c.raw(PER_IP_IP)
    s2.login()
    assert sorted([c.served_by(s1), c.served_by(s2)]) == [0, 1], "round robin"
    third = c.raw(PER_IP_IP, greet=False)
    code, text = third.reply()
    assert code == 421, f"a third session from {PER_IP_IP} on either node: {text}"
    assert third.wait_closed()
    # Other addresses are not limited by this one's count.
    other = c.raw(OTHER_IP)
    other.login()
    code, text = s1.cmd("QUIT")
    assert code == 221, text
    assert s1.wait_closed()
    admitted_once_a_slot_frees(c, PER_IP_IP)
    assert s2.cmd("NOOP")[0] == 200


def test_max_connections_counts_sessions_on_every_node(fresh):
    c = fresh("--max-connections", 2)
    s1 = c.raw(MAXCONN_IPS[0])
    s1.login()
    s2 = c.raw(MAXCONN_IPS[1])
    s2.login()
    assert sorted([c.served_by(s1), c.served_by(s2)]) == [0, 1], "round robin"
    for k in range(2):  # one on each node (round robin)
        third = c.raw(MAXCONN_IPS[2], greet=False)
        code, text = third.reply()
        assert code == 421, f"session {k + 3} of the cluster: {text}"
        assert third.wait_closed()
    code, text = s1.cmd("QUIT")
    assert code == 221, text
    assert s1.wait_closed()
    admitted_once_a_slot_frees(c, MAXCONN_IPS[2])
    assert s2.cmd("NOOP")[0] == 200


def test_counts_made_while_redis_hangs_are_given_back(fresh):
    c = fresh("--max-per-ip", 3)
    redis_pid = c.redis.pid
    os.kill(redis_pid, signal.SIGSTOP)  # Redis accepts connections and never answers
    try:
        # Sessions come and go while every Redis call times out (some of them may be run by
        # Redis when it wakes up, after their caller gave up).
        began, logins = time.monotonic(), []
        for _ in range(40):
            if time.monotonic() - began > 3 and len(logins) >= 4:
                break
            t0 = time.monotonic()
            s = c.raw(DRIFT_IP)
            s.login()
            logins.append(time.monotonic() - t0)
            assert s.cmd("QUIT")[0] == 221
            assert s.wait_closed()
            c.clients.remove(s)
    finally:
        os.kill(redis_pid, signal.SIGCONT)
    # One Redis call's timeout (500 ms) per login at most, never two or three.
    assert max(logins) < 1.4, f"logins while Redis hangs took {logins}"

    def counted() -> int:
        total = 0
        for name in NODE_NAMES:
            got = c.redis_cmd(b"HGET", f"zocalo:conn:{name}".encode(), DRIFT_IP.encode())
            if got.startswith(b"$") and not got.startswith(b"$-1"):
                total += int(got.split(b"\r\n")[1])
        return total

    assert poll_until(lambda: counted() == 0, 25, 0.5), (
        f"{counted()} phantom sessions of {DRIFT_IP} in Redis\n{c.report()}")
    held = [c.raw(DRIFT_IP) for _ in range(3)]
    for s in held:
        s.login()
    # Admitted while the node still waited to try Redis again, or counted: the rewrite of
    # each node's part makes the count right either way.
    assert poll_until(lambda: counted() == 3, 25, 0.5), f"{counted()} of 3\n{c.report()}"


def test_ctl_status_and_kick_span_the_nodes(shared):
    c = shared
    s1 = on_node(c, 0, CTL_IP)
    s2 = on_node(c, 1, CTL_IP)

    def mine(rows, s):
        return [r for r in rows if r.get("peer") == f"{CTL_IP}:{s.zport}"]

    # Each node rewrites its part of the shared table every second (shared::TICK).
    rows: list = []

    def listed():
        rows[:] = c.sessions(0)  # asked of n1
        return mine(rows, s2)

    assert poll_until(listed, TABLE_DEADLINE, 0.2), (
        f"n1's status never listed n2's session {CTL_IP}:{s2.zport}:\n"
        f"{c.ctl(0, 'status').stdout}")
    assert [r.get("node") for r in mine(rows, s1)] == ["n1"], rows
    there = mine(rows, s2)
    assert [r.get("node") for r in there] == ["n2"], rows
    assert there[0].get("user") == USER, there[0]["line"]
    assert poll_until(lambda: [r.get("node") for r in mine(c.sessions(1), s1)] == ["n1"],
                      TABLE_DEADLINE, 0.2), (
        f"n2 never listed n1's session:\n{c.ctl(1, 'status').stdout}")
    out = c.ctl(0, "kick", f"n2:{there[0]['id']}")
    assert out.returncode == 0, f"{out.stdout}{out.stderr}"
    assert s2.readable(10), "the kicked session heard nothing"
    try:
        code, text = s2.reply()
        assert code == 421, text
    except (EOFError, ConnectionResetError):
        pass
    assert s2.wait_closed()
    assert poll_until(lambda: not mine(c.sessions(0), s2), 10, 0.2), c.ctl(0, "status").stdout
    assert s1.cmd("NOOP")[0] == 200, "the other session goes on"
    own = mine(c.sessions(0), s1)
    assert own, "n1's own session is still listed"
    # A plain id is a session of the node asked.
    out = c.ctl(0, "kick", own[0]["id"])
    assert out.returncode == 0, f"{out.stdout}{out.stderr}"
    code, text = s1.reply()
    assert code == 421, text
    assert s1.wait_closed()


# ==========================================================================
# A node killed, a node drained, Redis lost


def test_download_resumes_on_the_other_node_after_a_kill(fresh, seaweed):
    c = fresh()
    data = os.urandom(50 * MiB)
    name = unique()
    seaweed.s3_client(0, timeout=120).put_object(Bucket=seaweed.bucket, Key=c.key(name),
                                                 Body=data)
    ftp = c.ftp(KILL_IP)
    a = c.served_by(ftp)
    b = 1 - a
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd(f"RETR {name}")
    got = bytearray(helpers.read_exactly(conn, MiB))
    assert len(got) == MiB
    listed = poll_until(lambda: [r.get("node") for r in c.sessions(b)
                                 if r.get("peer") == f"{KILL_IP}:{ftp.zport}"], TABLE_DEADLINE, 0.2)
    assert listed == [NODE_NAMES[a]], c.ctl(b, "status").stdout
    c.kill_node(a)
    conn.settimeout(10)
    for _ in range(len(data) // 4096 + 2):
        try:
            chunk = conn.recv(1 << 20)
        except OSError:
            break
        if not chunk:
            break
        got += chunk
    conn.close()
    assert len(got) < len(data), "the whole file came before the kill"
    assert bytes(got) == data[:len(got)], "what came before the kill is not the file's start"
    with pytest.raises((EOFError, OSError, ftplib.Error)):
        ftp.voidresp()
    ftp.close()
    # A client reconnects: HAProxy may first try the dead node, then redispatches.
    again = None
    errors = []
    for _ in range(3):
        try:
            again = c.ftp(KILL_IP)
            break
        except (EOFError, OSError, ftplib.Error) as e:
            errors.append(repr(e))
    assert again is not None, f"no session through the balancer after the kill: {errors}"
    assert c.served_by(again) == b
    rest = helpers.download(again, name, rest=len(got))
    assert sha256(bytes(got) + rest) == sha256(data)
    again.quit()
    # The dead node's sessions leave the shared table when their lease runs out.
    gone = poll_until(lambda: not any(r.get("node") == NODE_NAMES[a] for r in c.sessions(b)),
                      LEASE_DEADLINE, 0.5)
    assert gone, c.ctl(b, "status").stdout
    assert c.nodes[b].alive()


def session_on_n1(c: Cluster, ip: str) -> ftplib.FTP:
    """A logged-in session from `ip` that the balancer (round robin) gave to n1."""
    for _ in range(4):
        ftp = c.ftp(ip)
        if c.served_by(ftp) == 0:
            return ftp
        ftp.quit()
    raise AssertionError("no session on n1 through the balancer")


def test_drain_sends_new_sessions_to_the_other_node(fresh):
    c = fresh()
    held = session_on_n1(c, DRAIN_IP)
    out = c.ctl(0, "drain")
    assert out.returncode == 0, f"{out.stdout}{out.stderr}"
    assert c.nodes[0].agent_answer() == b"drain\n", "n1's agent after drain"
    assert c.nodes[1].agent_answer() == b"up ready\n", "n2's agent"
    c.wait_servers(lambda s: s.get("n1", {}).get("status", "").startswith("DRAIN")
                   and s.get("n2", {}).get("status") == "UP", 10, "HAProxy to drain n1")
    for k in range(4):
        s = c.raw(DRAIN_IP)
        assert c.served_by(s) == 1, f"new session {k + 1} went to the drained n1"
        s.login()
        assert s.cmd("QUIT")[0] == 221
        s.close()
    # n1 still serves the session it had, data connections included.
    assert held.sendcmd("NOOP").startswith("200")
    name = unique()
    assert helpers.upload(held, name, b"still here\n").startswith("226")
    assert helpers.download(held, name) == b"still here\n"
    held.quit()


def test_the_console_shows_both_nodes_and_drains_one_for_haproxy(fresh):
    """n2's web console, in headless Chromium: it lists n1's session beside its own nodes,
    and its `drain` button on n1's card reaches n1 through Redis; HAProxy then sends every new
    session to n2, and `undrain` brings n1 back."""
    from playwright.sync_api import sync_playwright

    import console_browser
    c = fresh(console=True)
    held = session_on_n1(c, CONSOLE_IP)
    base = f"http://{c.nodes[1].host}:{c.console_port}"
    with sync_playwright() as p:
        browser = console_browser.launch_browser(p)
        try:
            page = browser.new_page()
            console_browser.sign_in(page, base, console_browser.ADMIN, console_browser.ADMIN_PW)
            n1 = page.locator('.node[data-node="n1"]')
            assert poll_until(lambda: n1.count() == 1, TABLE_DEADLINE, 0.1), \
                page.inner_text("#nodes")
            assert poll_until(lambda: page.locator(
                '#sessions tr[data-key^="n1:"]').count() >= 1, TABLE_DEADLINE, 0.1), \
                "n1's session is not listed on n2's console"
            console_browser.shot(page, "cluster-before-drain")
            n1.locator("button.act-drain").click()
            assert poll_until(lambda: c.nodes[0].agent_answer() == b"drain\n", 10, 0.2), \
                "n1's agent never answered drain"
            c.wait_servers(lambda s: s.get("n1", {}).get("status", "").startswith("DRAIN")
                           and s.get("n2", {}).get("status") == "UP", 10, "HAProxy to drain n1")
            for k in range(4):
                s = c.raw(CONSOLE_IP)
                assert c.served_by(s) == 1, f"new session {k + 1} went to the drained n1"
                s.close()
            assert poll_until(lambda: "draining" in n1.inner_text(), TABLE_DEADLINE, 0.1)
            console_browser.shot(page, "cluster-drained")
            assert held.sendcmd("NOOP").startswith("200"), "n1's running session was cut"
            page.locator('.node[data-node="n1"] button.act-undrain').click()
            assert poll_until(lambda: c.nodes[0].agent_answer() == b"up ready\n", 10, 0.2)
            log = c.nodes[0].log()
            assert "asked by another node's console" in log, c.nodes[0].log_tail()
            assert 'console_user="ops"' in c.nodes[1].log(), "n2 logs the console user"
            page.close()
        finally:
            browser.close()
    held.quit()


def test_sessions_go_on_while_redis_is_down_and_are_shared_again_after(fresh):
    c = fresh()
    held = on_node(c, 1, REDIS_IP)  # a session on n2

    def n1_lists_held():
        return [r.get("node") for r in c.sessions(0)
                if r.get("peer") == f"{REDIS_IP}:{held.zport}"] == ["n2"]

    assert poll_until(n1_lists_held, TABLE_DEADLINE, 0.2), c.ctl(0, "status").stdout
    c.kill_redis()
    # Without Redis each node serves on its own limits: logins and transfers go on, on both.
    nodes = set()
    for k in range(2):
        began = time.monotonic()
        ftp = c.ftp(REDIS_IP)
        nodes.add(c.served_by(ftp))
        name = unique()
        assert helpers.upload(ftp, name, b"no redis\n").startswith("226")
        assert helpers.download(ftp, name) == b"no redis\n"
        ftp.quit()
        took = time.monotonic() - began
        assert took < 5, f"a session without Redis took {took:.1f}s"
    assert nodes == {0, 1}, f"round robin: {nodes}"
    assert held.cmd("NOOP")[0] == 200
    assert all(n.alive() for n in c.nodes)
    # A new, empty Redis: each node writes its part of the table again.
    c.start_redis()
    assert poll_until(n1_lists_held, 15, 0.5), (
        f"n1 never listed n2's session again after Redis came back:\n"
        f"{c.ctl(0, 'status').stdout}\n{c.report()}")
    assert held.cmd("NOOP")[0] == 200


# ==========================================================================
# Accounts whose limits span the nodes


def account_on_node(c: Cluster, i: int, user: str, password: str) -> ftplib.FTP:
    """An ftplib session through the balancer served by node i, logged in as `user`."""
    for _ in range(4):
        ftp = c.ftp(ACCOUNT_IP, login=False)
        if c.served_by(ftp) == i:
            ftp.login(user, password)
            return ftp
        helpers.close_client(ftp)
    raise AssertionError(f"4 connections through the balancer, none on {NODE_NAMES[i]}")


def pass_reply(c: Cluster, user: str, password: str) -> str:
    ftp = c.ftp(ACCOUNT_IP, login=False)
    try:
        return ftp.login(user, password)
    except ftplib.all_errors as e:
        return str(e)
    finally:
        helpers.close_client(ftp)


def test_sessions_per_account_and_the_quota_span_the_nodes(fresh, tmp_path):
    users = tmp_path / "users"
    for line in (["duo", "max_sessions=2"], ["q", "--home", "q", "quota_bytes=100000"]):
        r = subprocess.run([str(helpers.zocalo_bin()), "user", "add", line[0], "--users",
                            str(users), *line[1:]], input="pw\n", capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    # A login hook on both nodes: the client it is told of is the real one, not HAProxy.
    logins = tmp_path / "logins.jsonl"
    record = tmp_path / "record.sh"
    record.write_text(f'#!/bin/sh\nline=$(cat)\nprintf "%s\\n" "$line" >> {logins}\n')
    record.chmod(0o755)
    cfg = tmp_path / "hooks.toml"
    cfg.write_text(f'[[hook]]\nevents = ["login"]\ncommand = ["{record}"]\n')
    c = fresh("--users", users, "--config", cfg)
    # Sessions at once: one on each node fills the account's two seats.
    first, second = account_on_node(c, 0, "duo", "pw"), account_on_node(c, 1, "duo", "pw")
    port = first.sock.getsockname()[1]

    def login_events():
        if not logins.exists():
            return []
        return [json.loads(line) for line in logins.read_text().splitlines() if line]

    assert poll_until(lambda: any(e["client"] == f"{ACCOUNT_IP}:{port}" and e["node"] == "n1"
                                  for e in login_events())
                      and {e["node"] for e in login_events()} == {"n1", "n2"}, 10, 0.1), (
        login_events())
    assert all(e["client"].startswith(ACCOUNT_IP + ":") for e in login_events()), login_events()
    for _ in range(2):  # through either node
        assert pass_reply(c, "duo", "pw").startswith("530"), "a third session at once"
    assert pass_reply(c, USER, PASSWORD).startswith("230"), "other accounts are not counted"
    first.quit()
    c.clients.remove(first)
    assert poll_until(lambda: pass_reply(c, "duo", "pw").startswith("230"), 10, 0.1), (
        "the seat given back on n1 is free for the cluster")
    assert second.sendcmd("NOOP").startswith("200")

    # The quota: one tally for both nodes.
    on1, on2 = account_on_node(c, 0, "q", "pw"), account_on_node(c, 1, "q", "pw")
    assert helpers.upload(on1, "a.bin", b"a" * 60_000).startswith("226")
    assert helpers.reply_of(on2, "AVBL").startswith("213 40000"), "n2 sees n1's upload"
    with pytest.raises(ftplib.error_perm, match="^552"):
        helpers.upload(on2, "b.bin", os.urandom(50_000))
    assert "b.bin" not in on1.nlst(), "nothing over the quota is left"
    assert on2.delete("a.bin").startswith("250")
    assert helpers.reply_of(on1, "AVBL").startswith("213 100000"), "n1 sees n2's DELE"
    assert helpers.upload(on2, "b.bin", b"b" * 30_000).startswith("226")
    out = c.ctl(0, "quota", "q")
    assert out.stdout == "q: 30000 bytes of 100000, 1 files of -\n", out

    # Redis down: the quota account's uploads are refused clearly, its downloads go on.
    c.kill_redis()
    with pytest.raises(ftplib.error_temp, match="^451 .*quota tally unavailable"):
        helpers.upload(on1, "c.bin", b"c" * 10)
    assert helpers.download(on1, "b.bin") == b"b" * 30_000
    # An empty Redis: the tally is counted again from the bucket at the next upload.
    c.start_redis()

    def uploads():
        try:
            return helpers.upload(on1, "c.bin", b"c" * 10_000).startswith("226")
        except ftplib.error_temp:
            return False

    assert poll_until(uploads, 15, 0.5), c.report()
    # n2 tries Redis again within a second of its last failure (451 until then).
    avbl: list[str] = []

    def n2_answers() -> bool:
        avbl.append(helpers.reply_of(on2, "AVBL"))
        return not avbl[-1].startswith("451")

    assert poll_until(n2_answers, 15, 0.5), avbl
    assert avbl[-1].startswith("213 60000"), avbl


# ==========================================================================
# PROXY headers straight to a node


def test_bad_proxy_headers_from_the_trusted_address_are_closed(shared):
    c = shared
    node = c.nodes[0]
    addr = c.node_addr(0)
    keeper = on_node(c, 0, KEEPER_IP)
    src, dst = ("127.0.0.58", 40000), addr
    cases = {
        "truncated v2": proxy_v2(src, dst)[:20],
        "v2 length 65535 and nothing after": proxy_v2(src, dst, length=65535, tail=b""),
        "v2 TCP4 with a 4-byte address block": proxy_v2(src, dst, tail=b"\x7f\x00\x00\x01")
        + b"USER alice\r\n",
        "v2 with version 3": b"\r\n\r\n\x00\r\nQUIT\n\x31\x11\x00\x0c" + bytes(12),
        "v1 with a bad address": f"PROXY TCP4 999.1.1.1 {dst[0]} 1234 {dst[1]}\r\n".encode(),
        "v1 over 107 bytes": b"PROXY TCP4 " + b"1" * 200 + b"\r\n",
        "v1 ended by LF alone": proxy_v1(src, dst).replace(b"\r\n", b"\n"),
        "v2 command 2 (neither LOCAL nor PROXY)": b"\r\n\r\n\x00\r\nQUIT\n\x22\x11\x00\x0c"
        + bytes(12),
        "garbage": b"GET / HTTP/1.0\r\n\r\n",
    }

    def refused(port: int, since: int) -> list[str]:
        """The node's lines saying it closed the connection from 127.0.0.1:port for its
        PROXY header (they name the balancer's address, there being no session)."""
        tag = re.compile(re.escape(f"{PROXY_FROM}:{port}") + r"\b")
        return [line for line in node.log(since).splitlines()
                if tag.search(line) and re.search(r"PROXY\b.*\bheader", line)]

    since = c.marks()[0]
    began = time.monotonic()
    socks, ports = {}, {}
    for name, payload in cases.items():
        s = socket.create_connection(addr, timeout=10, source_address=(PROXY_FROM, 0))
        s.sendall(payload)
        socks[name] = s
        ports[name] = s.getsockname()[1]
    # The other session is served while those wait for the rest of their headers.
    assert noop_time(keeper) < 1.0
    for name, s in socks.items():
        got, closed = read_until_closed(s, HEADER_TIMEOUT + 5 - (time.monotonic() - began))
        s.close()
        assert closed, f"{name}: still open {HEADER_TIMEOUT + 5}s after its header"
        assert not got.startswith(b"220") and b"220 " not in got, f"{name}: got {got!r}"
    for name, port in ports.items():
        assert poll_until(lambda: refused(port, since), 5), (
            f"{name}: no log line on the PROXY header of {PROXY_FROM}:{port}\n{node.log_tail()}")
    assert noop_time(keeper) < 1.0
    assert node.alive()

    # A valid v1 header sent one byte per 200 ms: it would end after the header timeout.
    slow = socket.create_connection(addr, timeout=10, source_address=(PROXY_FROM, 0))
    slow_port = slow.getsockname()[1]
    header = proxy_v1(("127.0.0.58", 40001), dst)
    assert len(header) * 0.2 > HEADER_TIMEOUT + 2
    began = time.monotonic()
    sent = 0
    for k, byte in enumerate(header):
        try:
            slow.sendall(bytes([byte]))
        except OSError:
            break
        sent += 1
        if k % 5 == 0:
            assert noop_time(keeper) < 1.0, "the slow header holds the other session up"
        if time.monotonic() - began > HEADER_TIMEOUT + 4:
            break
        # One byte per 200 ms (the slowness under test); readable: the server closed.
        readable, _, _ = select.select([slow], [], [], 0.2)
        if readable:
            break
    got, closed = read_until_closed(slow, HEADER_TIMEOUT + 5 - (time.monotonic() - began))
    elapsed = time.monotonic() - began
    slow.close()
    assert closed and b"220" not in got, f"slow header: {got!r}, closed={closed}"
    assert sent < len(header), "the whole slow header went through"
    assert HEADER_TIMEOUT - 0.5 <= elapsed <= HEADER_TIMEOUT + 4, (
        f"closed {elapsed:.1f}s after the first byte (header timeout {HEADER_TIMEOUT}s)")
    assert poll_until(lambda: refused(slow_port, since), 5), (
        f"slow header: no log line on {PROXY_FROM}:{slow_port}\n{node.log_tail()}")
    assert node.alive()
    assert noop_time(keeper) < 1.0


def test_valid_proxy_headers_from_the_trusted_address(shared):
    """What the PROXY protocol spec says a receiver accepts: the session is the header's
    source address (IPv6 too), or the proxy's own for LOCAL and UNKNOWN; TLVs after the
    addresses are skipped, and a command sent in the same packet as the header is kept."""
    c = shared
    addr = c.node_addr(0)
    v6 = (socket.inet_pton(socket.AF_INET6, "2001:db8::1")
          + socket.inet_pton(socket.AF_INET6, "::1")
          + (4444).to_bytes(2, "big") + (21).to_bytes(2, "big"))
    cases = [
        # HAProxy's health check: a v2 LOCAL header, then the session of the proxy itself.
        ("v2 LOCAL", proxy_v2(None, None, local=True), None),
        ("v2 LOCAL with addresses", proxy_v2(("127.0.0.58", 1), addr, local=True), None),
        ("v1 UNKNOWN", b"PROXY UNKNOWN\r\n", None),
        ("v2 TCP4", proxy_v2(("127.0.0.58", 4321), addr), ("127.0.0.58", 4321)),
        ("v1 TCP4", proxy_v1(("127.0.0.59", 5555), addr), ("127.0.0.59", 5555)),
        ("v2 TCP4 with TLVs", proxy_v2(("127.0.0.58", 4322), addr, tail=(
            socket.inet_aton("127.0.0.58") + socket.inet_aton(addr[0]) + (4322).to_bytes(2, "big")
            + addr[1].to_bytes(2, "big") + b"\x04\x00\x03abc" + b"\x05\x00\x05an-id")),
         ("127.0.0.58", 4322)),
        ("v2 TCP6", PROXY_V2_SIGNATURE + b"\x21\x21" + len(v6).to_bytes(2, "big") + v6,
         ("[2001:db8::1]", 4444)),
        ("v1 TCP6", b"PROXY TCP6 2001:db8::2 ::1 5556 21\r\n", ("[2001:db8::2]", 5556)),
    ]
    for name, header, client in cases:
        for pipelined in (False, True):
            marks = c.marks()
            s = c.raw(PROXY_FROM, addr=addr, greet=False)
            # Pipelined: the first command in the same segment as the header.
            s.sock.sendall(header + (b"NOOP\r\n" if pipelined else b""))
            code, text = s.reply()
            assert code == 220, f"{name}: {text}"
            if pipelined:
                code, text = s.reply()
                assert code == 200, f"{name}: NOOP sent with the header: {text}"
            ip, port = client or (PROXY_FROM, s.zport)
            # The login is logged in the session's span whatever the header (a LOCAL session's
            # opening is logged at debug only: that is what health checks look like).
            s.login()
            assert c.node_of(port, ip, since=marks) == 0, name
            session_logged(c, 0, ip, port, ["login accepted"], marks)
            assert s.cmd("QUIT")[0] == 221
            s.close()


def test_proxy_line_from_an_untrusted_address_is_an_unknown_command(shared):
    c = shared
    marks = c.marks()
    s = c.raw(UNTRUSTED_IP, addr=c.node_addr(0))  # a 220 at once: no header expected
    code, text = s.cmd("PROXY TCP4 1.2.3.4 5.6.7.8 1 2")
    assert 500 <= code < 600, text
    s.login()
    assert s.cmd("NOOP")[0] == 200
    assert c.node_of(s.zport, UNTRUSTED_IP, since=marks) == 0
    assert "peer=1.2.3.4" not in c.log(0, marks[0])
    assert s.cmd("QUIT")[0] == 221


# ==========================================================================
# What `zocalo serve --help` and `zocalo ctl --help` promise


def test_a_stopping_node_tells_the_balancer_to_drain(fresh, seaweed):
    """`--agent` answers `drain` while a stop is under way (SIGTERM, a transfer still running
    within --shutdown-grace), as `zocalo serve --help` says; the transfer completes."""
    c = fresh(grace=10)
    data = os.urandom(40 * MiB)  # more than the socket buffers on the way hold
    name = unique()
    seaweed.s3_client(0, timeout=60).put_object(Bucket=seaweed.bucket, Key=c.key(name),
                                                Body=data)
    ftp = c.ftp(STOP_IP)
    a = c.served_by(ftp)
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd(f"RETR {name}")
    got = helpers.read_exactly(conn, 65536)
    assert len(got) == 65536
    c.nodes[a].proc.send_signal(signal.SIGTERM)
    answers: list = []

    def drain():
        try:
            answers.append(c.nodes[a].agent_answer(1.0))
        except OSError as e:
            answers.append(repr(e))
        return answers[-1] == b"drain\n"

    drained = poll_until(drain, 3, 0.1)
    alive = c.nodes[a].alive()
    rest = helpers.read_all(conn)
    conn.close()
    assert sha256(got + rest) == sha256(data), "the running transfer did not complete"
    assert ftp.voidresp().startswith("226")
    assert alive, "the node exited at once, with a transfer running"
    assert drained, f"{NODE_NAMES[a]}'s agent during the stop: {answers[:3]} ... {answers[-1:]}"


def test_ctl_kick_of_an_unknown_node_or_session_fails(shared):
    """As `kick ID` of no session fails, so does `kick NODE:ID` naming no node of the cluster
    or no session of that node (the shared table says which exist): an operator's typo is
    not reported as done."""
    c = shared
    s2 = on_node(c, 1, CTL_IP)
    assert poll_until(lambda: any(r.get("peer") == f"{CTL_IP}:{s2.zport}"
                                  for r in c.sessions(0)), TABLE_DEADLINE, 0.2)
    for target in ("n9:1", "n2:99999", ":1"):
        out = c.ctl(0, "kick", target)
        assert out.returncode != 0, f"kick {target}: exit 0, {out.stdout.strip()!r}"
    assert s2.cmd("NOOP")[0] == 200, "a kick of nothing closed a session"
