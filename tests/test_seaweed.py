"""The SeaweedFS fixture itself (tests/seaweed.py): three nodes that really are one S3 store,
that keeps working with a node down, and that rclone (the benchmark's reference) can write to.

No zocalo here: if these fail, the S3 tests of zocalo cannot mean anything.
"""

from __future__ import annotations

import os
import subprocess

import pytest
from botocore.exceptions import EndpointConnectionError

from helpers import file_sha256, need, sha256
from seaweed import rclone_env, rclone_s3_args

pytestmark = pytest.mark.xdist_group("s3")

PREFIX = "test_seaweed/"  # the bucket is shared by every S3 test of the session
REPLICATE_DEADLINE = 30.0  # how long a node may take to see an object stored through another
OUTAGE_DEADLINE = 90.0  # how long the cluster may take to write again after losing a node


def test_object_stored_through_one_node_reads_back_through_every_node(seaweed):
    """Three gateways, one store: the filers share their metadata and the volumes hold the data
    wherever it is asked for."""
    data = os.urandom(3 * 1024 * 1024 + 17)
    key = PREFIX + "replicated.bin"
    seaweed.s3_client(0).put_object(Bucket=seaweed.bucket, Key=key, Body=data)
    for i in (1, 2):
        seaweed.wait_for(lambda: seaweed.object_sha256(key, i) == sha256(data),
                         REPLICATE_DEADLINE, f"node {i} to serve {key} stored through node 0")


def test_cluster_writes_and_reads_with_a_node_killed(seaweed):
    """Node 2 (its master, volume server, filer and S3 gateway) is SIGKILLed: what was stored
    before stays readable (two copies of every volume), node 0 still stores and serves objects
    -- after a new Raft election if node 2's master led, which takes about 30 s -- and node 2,
    once restarted, serves what was written without it."""
    before = {f"{PREFIX}before-kill-{n}.bin": os.urandom(64 * 1024) for n in range(8)}
    for key, data in before.items():  # eight objects: some land on volumes with a copy on node 2
        seaweed.s3_client(0).put_object(Bucket=seaweed.bucket, Key=key, Body=data)
    seaweed.wait_replicated(before)  # their metadata too, or they die with node 2 for a while
    data = os.urandom(256 * 1024)
    key = PREFIX + "written-while-node-2-is-down.bin"

    def put_and_get():
        s3 = seaweed.s3_client(0)
        s3.put_object(Bucket=seaweed.bucket, Key=key, Body=data)
        return s3.get_object(Bucket=seaweed.bucket, Key=key)["Body"].read() == data

    seaweed.kill_node(2)
    try:
        for old, old_data in before.items():
            seaweed.wait_for(lambda: seaweed.object_sha256(old) == sha256(old_data),
                             OUTAGE_DEADLINE, f"node 0 to serve {old} with node 2 killed")
        seaweed.wait_for(put_and_get, OUTAGE_DEADLINE,
                         "a put and get through node 0 with node 2 killed")
    finally:
        seaweed.start_node(2)  # the session's cluster goes on whole, whatever happened
    seaweed.wait_for(lambda: seaweed.object_sha256(key, 2) == sha256(data),
                     REPLICATE_DEADLINE, "the restarted node 2 to serve the object")


def test_cluster_comes_back_after_an_outage(seaweed):
    """Every node stopped at once (an outage: gateways refuse connections), then started
    again: the objects are all still there, served by every node."""
    data = os.urandom(128 * 1024)
    key = PREFIX + "survives-the-outage.bin"
    seaweed.s3_client(0).put_object(Bucket=seaweed.bucket, Key=key, Body=data)
    seaweed.wait_replicated([key])
    seaweed.stop_all()
    try:
        with pytest.raises(EndpointConnectionError):
            seaweed.s3_client(1, timeout=3).head_object(Bucket=seaweed.bucket, Key=key)
    finally:
        seaweed.start_all()
    for i in range(3):
        assert seaweed.object_sha256(key, i) == sha256(data)


@pytest.mark.parametrize("size_mib", [1, 12], ids=["single-put", "multipart"])
def test_rclone_copies_a_file_into_the_bucket(seaweed, tmp_path, size_mib):
    """rclone writes straight to the bucket with flags only (no config file); with a 5 MiB
    upload cutoff, 12 MiB goes as a three-part multipart upload."""
    rclone = need("rclone")
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(size_mib * 1024 * 1024 + 5))
    key = f"{PREFIX}rclone-{size_mib}.bin"
    p = subprocess.run(
        [rclone, "copyto", str(src), f":s3:{seaweed.bucket}/{key}", *rclone_s3_args(seaweed),
         "--s3-upload-cutoff", "5M", "--s3-chunk-size", "5M", "--retries", "1",
         "--low-level-retries", "1"],
        capture_output=True, text=True, timeout=120, env=rclone_env(tmp_path),
        stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr
    assert seaweed.object_sha256(key) == file_sha256(src)
    head = seaweed.s3_client(0).head_object(Bucket=seaweed.bucket, Key=key)
    assert head["ContentLength"] == src.stat().st_size
    parts = "3" if size_mib == 12 else ""  # a multipart upload's ETag ends in -PARTS
    assert head["ETag"].strip('"').partition("-")[2] == parts, head["ETag"]
