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

The key hashes everything the logits depend on (:func:`cache_key`): the teacher's
weights, the data settings (data set, data dir, validation split, label noise), the
augmentation (on or off, and with it the seed, epoch count and batch size that fix
views and batches), AMP and the storage dtype. A change to any of them gives another
key, so a stale cache is never read; it is rebuilt under the new key.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kd_tune.atomic import write_text
from kd_tune.config import RunConfig
from kd_tune.data import Dataset
from kd_tune.search_space import config_hash
from kd_tune.teacher_store import TeacherStore, teacher_key
from kd_tune.teacher_logits import TeacherLogits, compute_teacher_logits, forward_count, train_shape, view_count

CACHE_FORMAT = 1
CACHE_MODES = ("float32", "float16", "off")
DTYPES = {"float32": torch.float32, "float16": torch.float16}
_NUMPY = {torch.float32: np.float32, torch.float16: np.float16}
_SPLITS = ("train", "val", "test")


def cache_key(config: RunConfig, weights: str, *, augment: bool, dtype: str = "float32") -> str:
    """The cache key of ``config``'s teacher views: a hash of what the logits depend on.

    ``weights`` is the teacher's :func:`~kd_tune.teacher_logits.weights_digest`;
    ``augment`` is the data set's augmentation flag; ``dtype`` is ``float32`` or
    ``float16``. Without augmentation the seed, epochs and batch size are left out:
    every run on that data then shares one single-view cache (its logits were computed
    in one batch order, so they match other orders to float rounding).
    """
    if dtype not in DTYPES:
        raise ValueError(f"teacher cache dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    data = config.data_settings()
    data.pop("download")
    values: dict[str, Any] = {
        "format": CACHE_FORMAT, "teacher_weights": weights, "data": data, "augment": augment,
        "views": view_count(augment, config.epochs), "amp": config.amp, "dtype": dtype,
    }
    if augment:
        values.update(seed=config.seed, batch_size=config.batch_size)
    return config_hash(values)


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
                "created_at": datetime.now(timezone.utc).isoformat(), **(extra or {}),
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


def teacher_cache_key(config: RunConfig, store: TeacherStore, *, augment: bool, dtype: str = "float32") -> str:
    """:func:`cache_key` of ``config``'s teacher as stored in ``store`` (which must hold it)."""
    return cache_key(config, store.weights_digest(teacher_key(config)), augment=augment, dtype=dtype)


def ensure_cached(
    config: RunConfig,
    data: Dataset,
    store: TeacherStore,
    cache: LogitCache,
    *,
    dtype: str = "float32",
    device: torch.device | str = "cpu",
) -> tuple[str, dict[str, Any]]:
    """The cache key and meta of ``config``'s teacher views, building the cache if it is missing."""
    key = teacher_cache_key(config, store, augment=data.augment, dtype=dtype)
    if cache.has(key):
        return key, cache.meta(key)
    teacher, _ = store.load(config, data)
    return key, cache.build(key, teacher, data, config, dtype=dtype, device=device,
                            extra={"teacher_key": teacher_key(config)})
