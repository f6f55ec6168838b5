#!/usr/bin/env python3
"""100 concurrent 10 MB uploads through zocalo on S3 with two builds side by side (say, 4 and
16 worker threads per loop): python3 bench/s3_workers.py BINARY_A BINARY_B."""
import sys
from pathlib import Path
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE)); sys.path.insert(0, str(HERE.parent / "tests"))
import shutil
import tempfile
import s3 as bench
from seaweed import Cluster
cluster = Cluster().start()
work = Path(tempfile.mkdtemp())
out = []
try:
    for rnd in (1, 2):
        for label, binary in ((sys.argv[1], sys.argv[1]), (sys.argv[2], sys.argv[2])):
            bench.ZOCALO = Path(binary)
            out.append(f"### {label}, round {rnd}")
            bench.many_uploads(cluster, work, 100, out)
finally:
    cluster.close()
    shutil.rmtree(work, ignore_errors=True)
    print("\n".join(out))
