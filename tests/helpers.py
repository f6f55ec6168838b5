"""Shared helpers for the zocalo functional suite: launching the server,
raw control connections, resource (leak) accounting and small FTP utilities.

Everything here talks only to 127.0.0.1 / ::1, on ports chosen by the kernel.
Every wait is bounded in time; nothing sleeps to wait for readiness.
"""

from __future__ import annotations

import ctypes
import ftplib
import hashlib
import os
import re
import resource
import select
import signal
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
USER = "alice"
PASSWORD = "wonder-land"
TIMEOUT = 10.0  # socket timeout for every client operation (seconds)
START_DEADLINE = 15.0  # how long the server may take to print its listen lines
STOP_DEADLINE = 10.0  # how long the server may take to exit after SIGTERM
LEAK_DEADLINE = 5.0  # how long resources may take to return to the baseline

MODELS = ["iterative", "process", "thread", "pool:8", "select", "poll", "epoll", "uring", "epoll:2"]

LISTEN_RE = re.compile(r"^listening ftp://(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<v4>[0-9.]+)):(?P<port>\d+)")
# Implicit FTPS listeners (--implicit-tls ADDR): `listening ftps://ADDR ...`.
LISTEN_TLS_RE = re.compile(r"^listening ftps://(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<v4>[0-9.]+)):(?P<port>\d+)")

# Servers started during the current test (one pytest process = one test at a time).
ACTIVE: list["Server"] = []


def need(tool: str) -> str:
    """The path of a real client the tests use; scripts/test.sh installs them all."""
    path = shutil.which(tool)
    if not path:
        raise AssertionError(f"{tool} is not installed: scripts/test.sh installs it")
    return path


def zocalo_bin() -> Path:
    return Path(os.environ.get("ZOCALO_BIN") or REPO / "target" / "release" / "zocalo")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def have_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def poll_until(predicate, timeout: float, interval: float = 0.02):
    """Evaluate predicate() until it returns a truthy value or `timeout` expires.

    Bounded in time and in iterations; returns the last value."""
    deadline = time.monotonic() + timeout
    value = predicate()
    for _ in range(int(timeout / interval) + 2):
        if value or time.monotonic() >= deadline:
            break
        time.sleep(interval)
        value = predicate()
    return value


# --------------------------------------------------------------------------
# /proc accounting


def _children_of(pid: int) -> list[int]:
    """Child processes of pid (including zombies not yet reaped)."""
    tasks = Path(f"/proc/{pid}/task")
    kids: list[int] = []
    found_children_file = False
    try:
        for t in tasks.iterdir():
            cf = t / "children"
            if cf.exists():
                found_children_file = True
                kids += [int(x) for x in cf.read_text().split()]
    except FileNotFoundError:
        return []
    if found_children_file:
        return kids
    # Kernel without CONFIG_PROC_CHILDREN: scan /proc/*/stat for the parent pid.
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            kids.append(int(entry.name))
    return kids


def resources(pid: int) -> dict:
    return {
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": len(os.listdir(f"/proc/{pid}/task")),
        "children": len(_children_of(pid)),
    }


def describe_fds(pid: int) -> list[str]:
    out = []
    for fd in sorted(os.listdir(f"/proc/{pid}/fd"), key=int):
        try:
            out.append(f"{fd}->{os.readlink(f'/proc/{pid}/fd/{fd}')}")
        except OSError:
            pass
    return out


# --------------------------------------------------------------------------
# Processes the tests start, and clients they open

try:  # resolved here, not in the forked child: no dynamic loading between fork and exec
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None


def die_with_parent() -> None:
    """A `preexec_fn`: SIGKILL the child when the test process dies, so nothing outlives it."""
    if _prctl is not None:
        _prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def stop_process(proc: subprocess.Popen, grace: float = STOP_DEADLINE,
                 sig: int = signal.SIGTERM) -> bool:
    """`sig` (SIGTERM) by PID, SIGKILL if it is still there after `grace`; True if it needed
    SIGKILL."""
    if proc.poll() is not None:
        return False
    proc.send_signal(sig)
    try:
        proc.wait(grace)
        return False
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(grace)
        return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (for a service whose port must be named up front)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def redis_cmd(port: int, *words: bytes) -> bytes:
    """One command to the Redis on 127.0.0.1:`port` (RESP); its raw first reply chunk, or b""
    if it does not answer."""
    req = b"*%d\r\n" % len(words) + b"".join(b"$%d\r\n%s\r\n" % (len(w), w) for w in words)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(req)
            return s.recv(65536)
    except OSError:
        return b""


def start_redis(port: int, directory: Path, log_path: Path,
                deadline: float = START_DEADLINE, extra=()) -> subprocess.Popen:
    """Debian's redis-server on 127.0.0.1:`port`, no persistence, in the foreground; returns
    once it answers PING (or refuses it for want of a password, with `--requirepass` in
    `extra`). Stop it by PID (stop_process)."""
    argv = [need("redis-server"), "--bind", "127.0.0.1", "--port", str(port), "--save", "",
            "--appendonly", "no", "--dir", str(directory), *extra]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, cwd=directory,
                                preexec_fn=die_with_parent)

    def tail() -> str:
        return Path(log_path).read_text(errors="replace")[-3000:]

    def pong():
        if proc.poll() is not None:
            raise AssertionError(f"redis-server exited with {proc.returncode}:\n{tail()}")
        return redis_cmd(port, b"PING").startswith((b"+PONG\r\n", b"-NOAUTH"))

    if not poll_until(pong, deadline, 0.05):
        stop_process(proc)
        raise AssertionError(f"redis-server did not answer PING within {deadline}s:\n{tail()}")
    return proc


def close_client(c) -> None:
    """Closes a client a test opened: an ftplib client says QUIT first (briefly)."""
    if isinstance(c, ftplib.FTP):
        try:
            if c.sock is not None:
                c.sock.settimeout(2)
                c.quit()
        except (OSError, EOFError, ftplib.Error, ValueError):
            pass
    c.close()


class ReusingFTP_TLS(ftplib.FTP_TLS):
    """FTP_TLS that resumes the control connection's TLS session on each data connection,
    as FTPS clients (and --tls-require-reuse) expect; stock ftplib does not. Records, for each
    data connection, whether the session was really resumed."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reused: list = []

    def ntransfercmd(self, cmd, rest=None):
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            conn = self.context.wrap_socket(conn, server_hostname=self.host,
                                            session=self.sock.session)
            self.reused.append(conn.session_reused)
        return conn, size


# --------------------------------------------------------------------------
# Raw control connection


class Ctl:
    """A raw FTP control connection: exact bytes, no client-side cleverness."""

    def __init__(self, host: str, port: int, timeout: float = TIMEOUT):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""

    def readline(self, max_len: int = 1 << 20) -> str:
        for _ in range(100000):
            i = self.buf.find(b"\n")
            if i >= 0:
                line, self.buf = self.buf[: i + 1], self.buf[i + 1:]
                return line.decode("utf-8", "replace").rstrip("\r\n")
            if len(self.buf) > max_len:
                raise AssertionError("reply line too long")
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("server closed the control connection")
            self.buf += chunk
        raise AssertionError("unbounded reply")

    def reply(self) -> tuple[int, str]:
        """Read one (possibly multi-line) reply; return (code, full text)."""
        first = self.readline()
        assert re.match(r"^\d{3}[ -]", first + " "), f"malformed reply line: {first!r}"
        lines = [first]
        if first[3:4] == "-":
            for _ in range(10000):
                line = self.readline()
                lines.append(line)
                if line[:3] == first[:3] and line[3:4] == " ":
                    break
            else:
                raise AssertionError("multi-line reply never ended")
        return int(first[:3]), "\n".join(lines)

    def final_reply(self) -> tuple[int, str]:
        """Skip 1xx preliminary replies and return the first completion reply."""
        for _ in range(10):
            code, text = self.reply()
            if code >= 200:
                return code, text
        raise AssertionError("too many preliminary replies")

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode("utf-8") + b"\r\n")

    def cmd(self, line: str) -> tuple[int, str]:
        self.send(line)
        return self.reply()

    def login(self, user: str = USER, password: str = PASSWORD) -> None:
        code, text = self.cmd(f"USER {user}")
        assert code == 331, text
        code, text = self.cmd(f"PASS {password}")
        assert code == 230, text

    def readable(self, timeout: float) -> bool:
        """Wait (bounded) for data or EOF on the control socket."""
        if self.buf:
            return True
        r, _, _ = select.select([self.sock], [], [], timeout)
        return bool(r)

    def wait_closed(self, timeout: float = TIMEOUT) -> bool:
        """True if the server closes the connection within `timeout` (data is drained)."""
        deadline = time.monotonic() + timeout
        for _ in range(10000):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            r, _, _ = select.select([self.sock], [], [], left)
            if not r:
                return False
            try:
                if not self.sock.recv(65536):
                    return True
            except (ConnectionResetError, BrokenPipeError):
                return True
        return False

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


# --------------------------------------------------------------------------
# ftplib helpers


def code_of(ftp: ftplib.FTP, line: str) -> int:
    """Send a command and return the reply code, whatever it is (no exception)."""
    try:
        resp = ftp.sendcmd(line)
    except ftplib.Error as e:
        resp = str(e)
    return int(resp[:3])


def reply_of(ftp: ftplib.FTP, line: str) -> str:
    try:
        return ftp.sendcmd(line)
    except ftplib.Error as e:
        return str(e)


def download(ftp: ftplib.FTP, path: str, rest=None) -> bytes:
    chunks: list[bytes] = []
    ftp.retrbinary(f"RETR {path}", chunks.append, rest=rest)
    return b"".join(chunks)


def upload(ftp: ftplib.FTP, path: str, data: bytes, cmd: str = "STOR", rest=None) -> str:
    import io

    return ftp.storbinary(f"{cmd} {path}", io.BytesIO(data), rest=rest)


def download_seconds(ftp: ftplib.FTP, path: str, expected: bytes) -> float:
    """Downloads `path`, checks it is `expected`, and says how long it took."""
    start = time.monotonic()
    got = download(ftp, path)
    took = time.monotonic() - start
    assert got == expected, f"{path}: {len(got)} bytes, not the {len(expected)} expected"
    return took


def upload_seconds(ftp: ftplib.FTP, path: str, data: bytes) -> float:
    """Uploads `data` to `path` and says how long it took."""
    start = time.monotonic()
    upload(ftp, path, data)
    return time.monotonic() - start


def read_exactly(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    for _ in range(n + 1):
        if len(out) >= n:
            break
        chunk = sock.recv(min(65536, n - len(out)))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def read_all(sock: socket.socket, limit: int = 1 << 31) -> bytes:
    out = bytearray()
    for _ in range(limit // 1024 + 2):
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        out += chunk
        if len(out) > limit:
            raise AssertionError("data connection sent more than expected")
    return bytes(out)


def use_epsv(ftp: ftplib.FTP) -> None:
    """Make an IPv4 ftplib session open passive data connections with EPSV."""

    def makepasv():
        resp = ftp.sendcmd("EPSV")
        assert resp.startswith("229"), resp
        _, port = ftplib.parse229(resp, ftp.sock.getpeername())
        return ftp.sock.getpeername()[0], port

    ftp.makepasv = makepasv


# --------------------------------------------------------------------------
# The server process


class Server:
    def __init__(self, proc: subprocess.Popen, root: Path, addrs, log_path: Path, argv):
        self.proc = proc
        self.root = root
        self.addrs = addrs  # list of (family, host, port)
        self.log_path = log_path
        self.argv = argv
        self.clients: list = []
        self.baseline = resources(proc.pid)
        self.stdout_tail: list[str] = []
        self.tls_addrs: list = []  # implicit FTPS listeners, (family, host, port)

    # -- addresses
    def addr(self, family: int = 4) -> tuple[str, int]:
        want = socket.AF_INET6 if family == 6 else socket.AF_INET
        for fam, host, port in self.addrs:
            if fam == want:
                return host, port
        raise AssertionError(f"server has no IPv{family} listener")

    @property
    def host(self) -> str:
        return self.addr(4)[0]

    @property
    def port(self) -> int:
        return self.addr(4)[1]

    @property
    def port6(self) -> int:
        return self.addr(6)[1]

    def url(self, path: str = "", family: int = 4, auth: bool = True) -> str:
        host, port = self.addr(family)
        h = f"[{host}]" if family == 6 else host
        cred = f"{USER}:{PASSWORD}@" if auth else ""
        return f"ftp://{cred}{h}:{port}/{path}"

    # -- clients (registered so they are closed before the leak check)
    def ftp(self, user: str | None = USER, password: str = PASSWORD, family: int = 4,
            timeout: float = TIMEOUT) -> ftplib.FTP:
        ftp = ftplib.FTP(timeout=timeout, encoding="utf-8")
        self.clients.append(ftp)
        host, port = self.addr(family)
        ftp.connect(host, port)
        if user is not None:
            ftp.login(user, password)
        return ftp

    def ctl(self, family: int = 4, greet: bool = True, timeout: float = TIMEOUT) -> Ctl:
        host, port = self.addr(family)
        c = Ctl(host, port, timeout=timeout)
        self.clients.append(c)
        if greet:
            code, text = c.reply()
            assert code == 220, f"greeting: {text}"
        return c

    def close_clients(self) -> None:
        for c in self.clients:
            close_client(c)
        self.clients.clear()

    # -- leak accounting
    def resources(self) -> dict:
        return resources(self.proc.pid)

    def wait_baseline(self, timeout: float = LEAK_DEADLINE) -> tuple[bool, dict]:
        last = {}

        def back():
            nonlocal last
            if self.proc.poll() is not None:
                return True
            last = self.resources()
            return last == self.baseline

        ok = bool(poll_until(back, timeout))
        return ok, last

    def measure_baseline(self) -> None:
        """Baseline for the leak check, taken once start-up is really over.

        A listener accepts connections (kernel backlog) before the server's driver
        (event loop, pool, ...) is necessarily set up, so first prove each listener is
        served -- one probe session per listener: greeting, QUIT, close -- then wait
        (bounded) until the fd/thread/child counts stop changing and no child remains."""
        for fam, host, port in self.addrs:
            probe = Ctl(host, port, timeout=START_DEADLINE)
            try:
                code, text = probe.reply()
                assert code == 220, f"probe greeting: {text}"
                code, text = probe.cmd("QUIT")
                assert code == 221, f"probe QUIT: {text}"
                assert probe.wait_closed(STOP_DEADLINE), "server did not close after QUIT"
            finally:
                probe.close()
        history: list[dict] = []

        def settled():
            history.append(self.resources())
            recent = history[-5:]
            return (len(recent) == 5 and all(r == recent[0] for r in recent)
                    and recent[0]["children"] == self.helper_children)

        assert poll_until(settled, LEAK_DEADLINE), f"resources never settled after start-up: {history[-5:]}"
        self.baseline = history[-1]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def stop(self) -> int | None:
        """SIGTERM, then wait (bounded). Returns the exit status, None if it hung."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_DEADLINE)
                return None
        return self.proc.returncode


def drain_lines(stream, sink: list, keep: int = 20) -> None:
    """Reads a child's output to its end (so the child never blocks on a full pipe), keeping
    the last `keep` lines in `sink`."""
    for raw in iter(stream.readline, b""):
        sink.append(raw.decode("utf-8", "replace"))
        del sink[:-keep]


def launch(model: str, root: Path, log_path: Path, *, users=((USER, PASSWORD),),
           anonymous: bool = True, write: bool = False, ipv4: bool = True, ipv6: bool = False,
           fail_delay_ms: int | None = 0, extra=(), implicit_tls: int = 0,
           nofile: int | None = None, env: dict | None = None, root_flag: bool = True,
           preexec=None) -> Server:
    """Start the server. `implicit_tls`: how many `listening ftps://` lines (from
    --implicit-tls ADDR in `extra`) to wait for, besides the plain listeners. `env`: variables
    added to the server's environment (S3 credentials). `root_flag`: pass --root (the server
    still runs in `root`). `preexec`: also run in the child before exec (a seccomp filter)."""
    binary = zocalo_bin()
    if not binary.exists():
        raise AssertionError(f"zocalo binary not found at {binary} "
                             "(cargo build --release, or set ZOCALO_BIN)")
    argv = [str(binary), "serve"] + (["--root", str(root)] if root_flag else [])
    if ipv4:
        argv += ["--listen", "127.0.0.1:0"]
    if ipv6:
        argv += ["--listen", "[::1]:0"]
    argv += ["--model", model]
    for name, password in users:
        argv += ["--user", f"{name}:{password}"]
    argv.append("--anonymous" if anonymous else "--no-anonymous")
    if write:
        argv.append("--write")
    if fail_delay_ms is not None:
        argv += ["--login-fail-delay-ms", str(fail_delay_ms)]
    argv += [str(x) for x in extra]
    expected = int(ipv4) + int(ipv6)

    log = open(log_path, "ab")
    def limit_fds():
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        if preexec is not None:
            preexec()

    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=log, cwd=root, preexec_fn=limit_fds,
                            env=None if env is None else {**os.environ, **env})
    log.close()
    addrs: list = []
    tls_addrs: list = []
    seen: list[str] = []
    buf = b""
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + START_DEADLINE
    try:
        for _ in range(10000):
            if len(addrs) >= expected and len(tls_addrs) >= implicit_tls:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"server did not report {expected} listener(s) within "
                                     f"{START_DEADLINE}s; stdout so far: {seen!r}")
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                proc.wait(STOP_DEADLINE)
                raise AssertionError(f"server exited with {proc.returncode} before listening; "
                                     f"stdout {seen!r}; stderr:\n{log_path.read_text(errors='replace')[-3000:]}")
            buf += chunk
            while b"\n" in buf and (len(addrs) < expected or len(tls_addrs) < implicit_tls):
                raw, buf = buf.split(b"\n", 1)
                line = raw.decode("utf-8", "replace").strip()
                seen.append(line)
                t = LISTEN_TLS_RE.match(line)
                if t:
                    fam = socket.AF_INET6 if t["v6"] else socket.AF_INET
                    tls_addrs.append((fam, t["v6"] or t["v4"], int(t["port"])))
                    continue
                m = LISTEN_RE.match(line)
                if m:
                    if m["v6"]:
                        addrs.append((socket.AF_INET6, m["v6"], int(m["port"])))
                    else:
                        addrs.append((socket.AF_INET, m["v4"], int(m["port"])))
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait(STOP_DEADLINE)
        raise
    # Lines that came in the same read as the last listener's (`listening tftp://...`).
    seen += [raw.decode("utf-8", "replace").strip() for raw in buf.split(b"\n")[:-1]]
    server = Server(proc, root, addrs, log_path, argv)
    # The process model serves TFTP, the admin channel, the metrics, the shared state's sync
    # loop, the agent check and the console in child processes of their own.
    args = [str(a) for a in argv]
    server.helper_children = (model == "process") * (
        ("--admin-socket" in args) + ("--tftp" in args) + ("--metrics" in args)
        + ("--shared-state" in args) + ("--agent" in args) + ("--console" in args))
    server.tls_addrs = tls_addrs
    server.stdout_tail = seen
    # Keep reading stdout so the server can never block on a full pipe.
    threading.Thread(target=drain_lines, args=(proc.stdout, server.stdout_tail), daemon=True).start()
    try:
        server.measure_baseline()
    except BaseException:
        server.stop()
        raise
    return server
