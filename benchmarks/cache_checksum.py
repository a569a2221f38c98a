"""What checking a teacher-logit cache costs, beside what building and loading it cost.

    python benchmarks/cache_checksum.py [--views 8] [--rounds 5] [--teacher-samples 256]

A CIFAR-100-sized cache: ``--views`` epochs of views of 50,000 random CIFAR-shaped
training images, 100 classes, float32 (20 MB per view: 160 MB at 8 views, 4 GB at the
paper's 200), plus 10,000 test images. Measured in one run, each but the build the median of
``--rounds`` rounds:

- build (once): :meth:`kd_tune.teachers.logit_cache.LogitCache.build` with a stand-in teacher
  (one linear layer): the views, a cheap forward pass, the writes and the checksum at
  the end, i.e. everything of a real build but the teacher's own cost;
- the real teacher's cost: WRN-28-4 forward passes on ``--teacher-samples`` images on
  this machine, per sample, and projected to the whole cache;
- the checksum on its own (:meth:`LogitCache.problem` without a token: every byte read
  and hashed), from the page cache (warm) and with the files' pages dropped first
  (``posix_fadvise(DONTNEED)`` on the cache's files only: cold, read from disk);
- the header and size check every load makes, and ``LogitCache.load`` (memory maps);
- reading every view once, as a trial does over its epochs, warm and cold;
- a second check on this node with the same token (the marker is found).

Prints a table, then as its last line exactly
``checksum_vs_build=A checksum_vs_read=B checksum_vs_wrn_build=C``: the warm checksum
over the stand-in build, over one warm read of every view, and over the projected
WRN-28-4 build.
"""
from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from kd_tune import models
from kd_tune.core.config import RunConfig
from kd_tune.data import SourceData, Split, register_dataset
from kd_tune.teachers.logit_cache import LogitCache
from kd_tune.train.trainer import load_data

TRAIN, TEST, CLASSES = 50_000, 10_000, 100


def _cifar100_shaped(_data_dir: str | None, _download: bool) -> SourceData:
    """Random CIFAR-100-shaped images: the benchmark measures time, not accuracy."""
    generator = torch.Generator().manual_seed(0)

    def split(n: int) -> Split:
        images = torch.randint(0, 256, (n, 3, 32, 32), generator=generator, dtype=torch.uint8)
        return Split(images, torch.randint(0, CLASSES, (n,), generator=generator))

    return SourceData(train=split(TRAIN), test=split(TEST), num_classes=CLASSES, max_value=255.0,
                      mean=(0.507, 0.487, 0.441), std=(0.267, 0.256, 0.276),
                      class_names=tuple(f"c{i}" for i in range(CLASSES)))


def _median_seconds(rounds: int, run: Callable[[], object], before: Callable[[], None] = lambda: None) -> float:
    times = []
    for _ in range(rounds):
        before()
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _drop_pages(folder: Path) -> None:
    """Evict this cache's files from the page cache (only theirs; nothing else on the machine)."""
    for path in folder.glob("*.npy"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _read_every_view(cache: LogitCache, key: str) -> float:
    logits = cache.load(key)
    return float(sum(logits.epoch_view(v).sum() for v in range(logits.views)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--views", type=int, default=8, help="epochs of views in the cache (default: 8)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per measurement, median kept (default: 5)")
    parser.add_argument("--teacher-samples", type=int, default=256,
                        help="images the WRN-28-4 forward cost is measured on (default: 256)")
    args = parser.parse_args()
    if args.views < 1 or args.rounds < 1 or args.teacher_samples < 1:
        parser.error("--views, --rounds and --teacher-samples must be >= 1")

    register_dataset("bench-cifar100-shaped", _cifar100_shaped, augment=True)
    config = RunConfig(dataset="bench-cifar100-shaped", teacher="wrn-28-4", student="wrn-16-2", epochs=args.views,
                       batch_size=128, val_size=0, loss="kl", device="cpu")
    data = load_data(config)
    stand_in = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, CLASSES)).eval()
    samples = args.views * TRAIN + TEST

    with tempfile.TemporaryDirectory(prefix="kd-checksum-") as root:
        cache = LogitCache(Path(root) / "logits")
        print(f"  building {args.views} views ...", file=sys.stderr)
        started = time.perf_counter()
        meta = cache.build("bench", stand_in, data, config)
        build = time.perf_counter() - started
        folder = cache.path("bench")
        assert cache.problem("bench") is None
        drop = functools.partial(_drop_pages, folder)

        checksum_warm = _median_seconds(args.rounds, lambda: cache.problem("bench"))
        checksum_cold = _median_seconds(args.rounds, lambda: cache.problem("bench"), before=drop)
        load = _median_seconds(args.rounds, lambda: cache.load("bench"))
        read_warm = _median_seconds(args.rounds, lambda: _read_every_view(cache, "bench"))
        read_cold = _median_seconds(args.rounds, lambda: _read_every_view(cache, "bench"), before=drop)
        token = uuid.uuid4().hex
        cache.problem("bench", token=token)
        marked = _median_seconds(args.rounds, lambda: cache.problem("bench", token=token))

    torch.manual_seed(0)
    teacher = models.build("wrn-28-4", CLASSES, 3).eval()
    images = data.normalize(data.train.images[: args.teacher_samples])
    with torch.no_grad():
        teacher(images[:8])  # warm-up
        started = time.perf_counter()
        for batch in images.split(128):
            teacher(batch)
        per_sample = (time.perf_counter() - started) / len(images)
    wrn_build = per_sample * samples

    size_mb = meta["bytes"] / 1e6
    print(f"\ncache_checksum benchmark: {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {args.views} views x {TRAIN:,} x {CLASSES} float32 + {TEST:,} test "
          f"= {size_mb:.1f} MB; median of {args.rounds}")
    print("| measurement | seconds | MB/s |\n|---|---|---|")
    rows = [  # (title, seconds, whether every byte of the cache was read)
        ("build, stand-in teacher (views, writes, checksum)", build, False),
        (f"build, WRN-28-4 teacher, projected ({1000 * per_sample:.2f} ms per sample x {samples:,})", wrn_build,
         False),
        ("checksum (sha256 of every file), warm page cache", checksum_warm, True),
        ("checksum, cold (files' pages dropped first)", checksum_cold, True),
        ("checksum again on this node, same token (marker found)", marked, False),
        ("load: header and size check + memory maps", load, False),
        ("read every view once (what a trial reads), warm", read_warm, True),
        ("read every view once, cold", read_cold, True),
    ]
    for title, seconds, whole in rows:
        print(f"| {title} | {seconds:.4f} | {f'{size_mb / seconds:,.0f}' if whole else ''} |")
    print(f"checksum_vs_build={checksum_warm / build:.3f} checksum_vs_read={checksum_warm / read_warm:.3f} "
          f"checksum_vs_wrn_build={checksum_warm / wrn_build:.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
