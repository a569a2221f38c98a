"""The teacher-logit cache on disk: one folder per (teacher, view set), shared by every trial.

Layout under the cache root (``<storage>/teacher_logits`` in sweeps)::

    <key>/train.npy   (V, N, K) logits on the training views (see kd_tune.teacher_logits)
    <key>/val.npy     (N_val, K)
    <key>/test.npy    (N_test, K)
    <key>/meta.json   key, teacher key, shapes, dtype, seconds, teacher forward samples

A folder is built under a temporary name and renamed into place whole: a key folder
that exists is complete, and two builders of one key cannot mix their files (the first
rename wins, the second discards its copy). Readers memory-map the arrays
copy-on-write and never write them, so all trial processes on a node share one copy
through the OS page cache and none holds a private copy; on a cluster each node reads
the files from the shared storage once.

Size: ``V * N * K`` values of 4 bytes (float32, the default) or 2 (float16). CIFAR-100
with all 50,000 training images is 20.0 MB per epoch of views (10.0 MB in float16), so
the paper's 200 epochs take 4.0 GB per teacher and augmentation seed. Digits has no
augmentation and needs a single view: 1,257 x 10 x 4 bytes = 50 KB (default split).

The key (:func:`kd_tune.identity.cache_key`, computed once by the planner) hashes
everything the logits depend on: the teacher (its key in the teacher store), the data
settings (data set, data dir, validation split, label noise), the augmentation (on or
off, and with it the seed, epoch count and batch size that fix views and batches), AMP
and the storage dtype. ``meta.json`` records the sha256 of the teacher weights the
logits came from; :func:`ensure_cached` uses a cache only with those very weights and
rebuilds it otherwise, so a stale cache is never read.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kd_tune.atomic import write_text
from kd_tune.config import RunConfig
from kd_tune.data import Dataset
from kd_tune.identity import CACHE_DTYPES
from kd_tune.plan import Trial
from kd_tune.teacher_logits import TeacherLogits, compute_teacher_logits, forward_count, train_shape
from kd_tune.teacher_store import TeacherStore

CACHE_FORMAT = 2
DTYPES = {name: getattr(torch, name) for name in CACHE_DTYPES}
_NUMPY = {torch.float32: np.float32, torch.float16: np.float16}
_SPLITS = ("train", "val", "test")


class LogitCache:
    """Reads and builds cached teacher logits under ``root`` (an absolute, shared path)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        """The folder of cache ``key`` (complete once its ``meta.json`` exists)."""
        return self.root / key

    def has(self, key: str) -> bool:
        return (self.path(key) / "meta.json").is_file()

    def meta(self, key: str) -> dict[str, Any]:
        return json.loads((self.path(key) / "meta.json").read_text())

    def remove(self, key: str) -> None:
        """Delete cache ``key`` (moved aside first, so readers never see half a folder)."""
        if not self.path(key).exists():
            return
        aside = Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".old", dir=self.root))
        os.rename(self.path(key), aside / key)
        shutil.rmtree(aside, ignore_errors=True)

    def load(self, key: str) -> TeacherLogits:
        """The cached logits of ``key``, memory-mapped (pages are read on first use, never copied)."""
        if not self.has(key):
            raise FileNotFoundError(f"no teacher-logit cache {key} under {self.root}")
        # Copy-on-write maps are writable for torch.from_numpy, yet share the page cache
        # with every other reader as long as nobody writes (nobody does).
        arrays = {s: np.load(self.path(key) / f"{s}.npy", mmap_mode="c") for s in _SPLITS}
        return TeacherLogits(**{s: torch.from_numpy(a) for s, a in arrays.items()})

    def build(
        self,
        key: str,
        teacher: nn.Module,
        data: Dataset,
        config: RunConfig,
        *,
        dtype: str = "float32",
        device: torch.device | str = "cpu",
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Compute ``teacher``'s logits for ``config``'s views into folder ``key``; return its meta.

        Does nothing but return the meta when the key is already complete. The training
        logits are written straight into a memory-mapped file, view by view.
        """
        if self.has(key):
            return self.meta(key)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".tmp", dir=self.root))
        try:
            started = time.perf_counter()
            torch_dtype = DTYPES[dtype]
            shape = train_shape(data, config.epochs)
            train = np.lib.format.open_memmap(tmp / "train.npy", mode="w+", dtype=_NUMPY[torch_dtype], shape=shape)
            logits = compute_teacher_logits(teacher, data, config, device=device, dtype=torch_dtype,
                                            train_out=torch.from_numpy(train))
            train.flush()
            del train
            np.save(tmp / "val.npy", logits.val.numpy())
            np.save(tmp / "test.npy", logits.test.numpy())
            meta = {
                "key": key, "format": CACHE_FORMAT, "dtype": dtype, "augment": data.augment,
                "views": shape[0], "train_shape": list(shape), "val_shape": list(logits.val.shape),
                "test_shape": list(logits.test.shape), "bytes": int(sum(
                    (tmp / f"{s}.npy").stat().st_size for s in _SPLITS)),
                "teacher_forward_samples": forward_count(data, config.epochs),
                "build_seconds": time.perf_counter() - started, "device": str(device),
                "created_at": datetime.now(UTC).isoformat(), **(extra or {}),
            }
            write_text(tmp / "meta.json", json.dumps(meta, indent=2))
            try:
                os.rename(tmp, self.path(key))
            except OSError:
                if not self.has(key):
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # another builder finished first
            return self.meta(key)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def ensure_cached(
    trial: Trial,
    data: Dataset,
    store: TeacherStore,
    cache: LogitCache,
    *,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """The meta of ``trial``'s teacher-logit cache, building it when it is missing.

    The trial's teacher must be in ``store``. A cache made from other weights than the
    stored teacher's (the teacher was trained again) is stale: it is removed and built
    again from the stored teacher.
    """
    key = trial.cache_key
    if key is None:
        raise ValueError(f"trial {trial.key} ({trial.label}) reads no teacher-logit cache")
    digest = store.weights_digest(trial.teacher_key)
    if cache.has(key):
        meta = cache.meta(key)
        if meta.get("teacher_weights_sha256") == digest:
            return meta
        cache.remove(key)
    teacher, _ = store.load(trial.teacher_key, trial.config, data)
    return cache.build(key, teacher, data, trial.config, dtype=trial.cache_dtype, device=device,
                       extra={"teacher_key": trial.teacher_key, "teacher_weights_sha256": digest})
