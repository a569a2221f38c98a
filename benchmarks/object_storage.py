"""Local storage against an S3-compatible object store, side by side in one run.

    python benchmarks/object_storage.py [--quick] [--skip-sweeps] [--views 8]

Needs the test extra (``pip install -e ".[test]"``): the object store is moto's server,
started on 127.0.0.1 (``tests/s3_server.py``), reached through the same pyarrow and boto3
clients kd-tune uses against AWS. Loopback has no network latency or bandwidth limit, so
the numbers bound kd-tune's own cost of object storage (spooling, whole-file uploads,
listing instead of renaming), not a real store's.

1. The default ``python sweeps/tau_grid.py`` twice, one after the other on an embedded
   Ray: ``--storage`` a local folder, then ``--storage s3://kd-tune-test/bench``; wall
   time of each (the whole command) and the bytes each stores (the storage folder, or
   the bucket's objects under the prefix plus the driver's ``mlflow.db``), and the CPU
   seconds the store's server spent meanwhile: moto is a Python server on the same 2
   cores as the trials, so its work is charged to the S3 run here, where a real store
   would do it elsewhere. ``--quick`` runs both at 1 seed and 10 epochs.
2. A node fetching a CIFAR-100-sized teacher-logit cache: ``--views`` views of 50,000 x
   100 float32 logits (20 MB a view), stored in the bucket, downloaded and checked
   (sha256) into a node-local copy (``kd_tune.storage.local_copies``); then a second trial on the
   same node finding the copy.

Last line: ``s3_vs_local_sweep=R fetch_cifar100_cache_s=T`` (R: S3 wall time / local).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from s3_server import s3_server  # noqa: E402  (the tests' server, found through the path above)

from kd_tune.core.hashing import file_sha256  # noqa: E402
from kd_tune.storage.local_copies import LocalCopies  # noqa: E402
from kd_tune.storage.location import open_storage  # noqa: E402

SAMPLES, CLASSES = 50_000, 100  # CIFAR-100's training set


def _sweep(storage: str, work: Path, env: dict[str, str], quick: bool) -> float:
    cmd = [sys.executable, str(ROOT / "sweeps" / "tau_grid.py"), "--storage", storage, "--local-cache",
           str(work / "local-cache")]
    if quick:
        cmd += ["--seeds", "1", "--epochs", "10"]
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"the sweep on {storage} failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return seconds


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _local_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _stored_bytes(s3, prefix: str) -> int:
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=prefix + "/")
    return sum(o["Size"] for page in pages for o in page.get("Contents", []))


def _fetch(s3, folder: Path, views: int) -> tuple[float, float, float, int]:
    """(upload s, first fetch s, second fetch s, bytes) of a synthetic cache of ``views`` views."""
    stored = open_storage(s3.uri("bench-cache")) / "k"  # the stored folder of one cache key
    rng = np.random.default_rng(0)
    source = folder / "cache-source"
    source.mkdir()
    digests = {}
    for view in range(views):
        name = f"view-{view}.npy"
        np.save(source / name, rng.standard_normal((SAMPLES, CLASSES), dtype=np.float32))
        digests[name] = file_sha256(source / name)
    started = time.perf_counter()
    for name in digests:
        stored.upload(source / name, name)
    upload = time.perf_counter() - started
    copies = LocalCopies(folder / "node-copies")
    started = time.perf_counter()
    first = copies.fetch(stored, "k", list(digests), digests)
    fetched = time.perf_counter() - started
    started = time.perf_counter()
    again = copies.fetch(stored, "k", list(digests), digests)
    reused = time.perf_counter() - started
    assert first == again
    copies.release(first)
    copies.release(again)
    return upload, fetched, reused, sum((source / n).stat().st_size for n in digests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="both sweeps at 1 seed and 10 epochs")
    parser.add_argument("--skip-sweeps", action="store_true", help="only the cache fetch")
    parser.add_argument("--views", type=int, default=8, help="views of the synthetic cache (default: 8)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kd-tune-s3-bench-") as tmp:
        folder = Path(tmp)
        with s3_server(folder) as s3:
            # This process (the cache fetch) and the sweeps reach the loopback store only.
            os.environ.update(s3.env({}), AWS_EC2_METADATA_DISABLED="true")
            env = dict(os.environ)
            ratio = float("nan")
            if not args.skip_sweeps:
                (folder / "local").mkdir()
                (folder / "s3").mkdir()
                local_s = _sweep(str(folder / "local" / "results"), folder / "local", env, args.quick)
                before = _cpu_seconds(s3.pid)
                s3_s = _sweep(s3.uri("bench"), folder / "s3", env, args.quick)
                server_cpu = _cpu_seconds(s3.pid) - before
                local_b = _local_bytes(folder / "local" / "results")
                s3_b = _stored_bytes(s3, "bench")
                db_b = (folder / "s3" / "mlflow.db").stat().st_size
                ratio = s3_s / local_s
                what = "1 seed, 10 epochs" if args.quick else "the default grid"
                print(f"sweeps/tau_grid.py ({what}), embedded Ray, one after the other:")
                print("| storage | wall s | bytes stored |")
                print("|---|---:|---:|")
                print(f"| local folder | {local_s:.1f} | {local_b:,} (mlflow.db included) |")
                print(f"| s3:// (moto on 127.0.0.1) | {s3_s:.1f} | {s3_b:,} in the bucket + {db_b:,} "
                      "mlflow.db on the driver |")
                print(f"the store's server used {server_cpu:.0f} CPU-s of the 2 cores during the S3 run")
            upload, fetched, reused, size = _fetch(s3, folder, args.views)
            print(f"\nCIFAR-100-sized cache: {args.views} views x {SAMPLES} x {CLASSES} float32 = {size / 1e6:.0f} MB")
            print(f"  upload to the bucket:        {upload:.2f} s ({size / upload / 1e6:.0f} MB/s)")
            print(f"  first fetch on a node:       {fetched:.2f} s ({size / fetched / 1e6:.0f} MB/s, sha256 "
                  "checked)")
            print(f"  a later trial on that node:  {reused * 1000:.1f} ms")
            print(f"s3_vs_local_sweep={ratio:.2f} fetch_cifar100_cache_s={fetched:.2f}")


if __name__ == "__main__":
    main()
