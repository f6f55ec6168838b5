"""A real PostgreSQL server (Debian's postgresql 15) for the account-source tests: initdb into a
temporary directory and `postgres` in the foreground on a port of its own on loopback, both as
the unprivileged user `nobody` (PostgreSQL refuses to run as root), stopped by its PID."""

import glob
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import helpers

NOBODY = 65534


def pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]
    path = shutil.which(name)
    assert path, f"{name} not found (the test command installs Debian's postgresql)"
    return path


def as_nobody():
    helpers.die_with_parent()
    os.setgid(NOBODY)
    os.setuid(NOBODY)


class Postgres:
    def __init__(self):
        # pytest's temporary directories are root's alone (0700): nobody could not reach one.
        directory = Path(tempfile.mkdtemp(prefix="zocalo-pg-"))
        self.dir = directory
        os.chown(directory, NOBODY, NOBODY)
        self.data = directory / "data"
        self.port = helpers.free_port()
        r = subprocess.run([pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U",
                            "postgres", "--no-sync"], capture_output=True, text=True,
                           timeout=120, preexec_fn=as_nobody, cwd=directory)
        assert r.returncode == 0, r.stdout + r.stderr
        self.log = open(directory / "postgres.log", "wb")
        os.chown(directory / "postgres.log", NOBODY, NOBODY)
        self.proc = None
        self.start()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self):
        self.proc = subprocess.Popen(
            [pg_bin("postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.dir),
             "-h", "127.0.0.1", "-c", "fsync=off"],
            stdout=self.log, stderr=self.log, preexec_fn=as_nobody, cwd=self.dir)

        def ready():
            assert self.proc.poll() is None, (self.dir / "postgres.log").read_text()
            r = subprocess.run([pg_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                               capture_output=True, timeout=10)
            return r.returncode == 0 or None

        assert helpers.poll_until(ready, 30, 0.1), "postgres did not get ready within 30 s"

    def sql(self, text: str) -> str:
        r = subprocess.run(["psql", "-v", "ON_ERROR_STOP=1", "-qAt", "-h", "127.0.0.1", "-p",
                            str(self.port), "-U", "postgres", "-d", "postgres", "-c", text],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        return r.stdout

    def stop(self):
        if self.proc:
            # SIGINT: a fast shutdown, which does not wait for zocalo's pooled connections.
            helpers.stop_process(self.proc, 20, signal.SIGINT)
        self.proc = None

    def _signal_all(self, sig):
        # Each backend makes itself a session leader: the postmaster's children are signalled
        # one by one.
        for pid in [self.proc.pid, *helpers._children_of(self.proc.pid)]:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def pause(self):
        """Stalls the server and every backend."""
        self._signal_all(signal.SIGSTOP)

    def resume(self):
        self._signal_all(signal.SIGCONT)

    def close(self):
        if self.proc and self.proc.poll() is None:
            self.resume()
        self.stop()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
