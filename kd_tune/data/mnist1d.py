"""MNIST-1D (Greydanus and Kobak, ICML 2024): 1-D signals of length 40, generated offline.

The signals are made by the ``mnist1d`` package (``mnist1d.data.make_dataset``) with its
canonical arguments (``get_dataset_args()``): 5000 samples, 4000 train / 1000 test, seed 42.
``data_samples`` replaces ``num_samples`` (the same procedure, a larger set: the 80/20
train/test split stays the package's), so the test set can be made finer than 0.1 points
per sample. Nothing is copied from the package; it is a dependency.

Conventions: signals are ``float32`` tensors ``(N, 1, 40)`` (one channel, length 40) as the
package makes them (no scaling; ``max_value`` 1), normalised per batch with the training
pool's mean and std like every data set. Labels are the digits 0..9 (``int64``).

The generator seeds NumPy's global RNG (and Python's ``random``): the project's own
seeding must not see it, so every RNG state it could touch is saved before the call and
restored after it (:func:`untouched_global_rngs`).

Generation is deterministic and takes seconds (5.2 s for the canonical 5000 signals in one
process at load average 4), and every process of a sweep needs it: the driver, the
teacher stage and each trial actor. So its arrays are kept per process by their arguments
(:func:`generate`), and on disk once per machine: ``<local cache>/mnist1d/<hash of the
arguments>.npz`` (the node-local folder of :func:`kd_tune.storage.local_copies.default_local_cache`:
``$KD_TUNE_LOCAL_CACHE``, ``$XDG_CACHE_HOME/kd-tune`` or ``~/.cache/kd-tune``), written
atomically. The file holds the arguments and a sha256 of the arguments and arrays; a file
that cannot be read, holds other arguments or does not match its sha256 is said in a
warning naming it and generated again. A folder that cannot be written only costs the
generation in every process. The package's canonical arguments are kept there too (see
:func:`generation_args`): a process that finds both files never imports the package.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import json
import logging
import random
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kd_tune.core.identity import config_hash
from kd_tune.data.base import DataError, SourceData, Split
from kd_tune.storage.atomic import atomic_write
from kd_tune.storage.local_copies import default_local_cache

log = logging.getLogger(__name__)

# The published canonical size (4000 train / 1000 test); the package's default.
CANONICAL_SAMPLES = 5000
# Arguments of get_dataset_args() that only say where the published pickle is.
_NOT_GENERATION = ("url",)
_ARRAYS = ("x", "y", "x_test", "y_test")


def generation_args(data_samples: int | None = None) -> dict[str, Any]:
    """The arguments ``make_dataset`` is called with: the package's canonical ones, with
    ``num_samples`` = ``data_samples`` when given. Plain values (lists, numbers, bools)."""
    args = json.loads(_canonical_args())
    if data_samples is not None:
        args["num_samples"] = int(data_samples)
    return args


@functools.lru_cache(maxsize=1)
def _canonical_args() -> str:
    """The package's ``get_dataset_args()`` as canonical JSON, kept on disk per installed version.

    Importing ``mnist1d.data`` imports SciPy's interpolation (2 s in a fresh process here), and
    every process of a sweep needs the arguments (they name the data and its disk copy), most of
    them only to read that copy. So the first process of a machine writes them beside the
    signals (``args-<version>.json``, with their sha256) and the others read them; a file that
    cannot be read or does not match its sha256 is made again.
    """
    version = importlib.metadata.version("mnist1d")
    path = default_local_cache() / "mnist1d" / f"args-{version}.json"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        stored = json.loads(path.read_text())
        if stored["version"] == version and stored["sha256"] == _sha256(stored["args"]):
            return stored["args"]
    from mnist1d.data import get_dataset_args

    args = dict(get_dataset_args(as_dict=True))
    for name in _NOT_GENERATION:
        args.pop(name, None)
    text = json.dumps({k: (list(v) if isinstance(v, tuple) else v) for k, v in args.items()}, sort_keys=True)
    with contextlib.suppress(OSError):
        with atomic_write(path) as handle:
            handle.write(json.dumps({"version": version, "args": text, "sha256": _sha256(text)}).encode())
    return text


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@contextlib.contextmanager
def untouched_global_rngs() -> Iterator[None]:
    """Restore NumPy's and Python's global RNG states and torch's CPU generator on exit."""
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    torch_state = torch.get_rng_state()
    try:
        yield
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
        torch.set_rng_state(torch_state)


def generate(data_samples: int | None = None) -> dict[str, np.ndarray]:
    """The generated arrays ``x`` (N, 40) float, ``y`` (N,), ``x_test``, ``y_test``.

    Kept per process by their arguments' hash: every trial a worker runs on this data
    shares one generation. The caller must not modify the arrays (they are shared).
    """
    # The arguments as canonical JSON: a hashable cache key that says everything generated.
    return _generate_cached(json.dumps(generation_args(data_samples), sort_keys=True))


@functools.lru_cache(maxsize=4)
def _generate_cached(args_json: str) -> dict[str, np.ndarray]:
    path = stored_path(args_json)
    out = _read_stored(path, args_json)
    if out is None:
        out = _make(args_json)
        _store(path, args_json, out)
    for array in out.values():
        array.setflags(write=False)
    return out


def stored_path(args_json: str) -> Path:
    """Where this machine keeps the signals generated with ``args_json`` (see the module docstring)."""
    return default_local_cache() / "mnist1d" / f"{config_hash(json.loads(args_json))}.npz"


def _make(args_json: str) -> dict[str, np.ndarray]:
    from mnist1d.data import make_dataset
    from mnist1d.utils import ObjectView

    args = json.loads(args_json)
    log.info("generating MNIST-1D: %d samples (arguments %s)", args["num_samples"], config_hash(args))
    with untouched_global_rngs():
        data = make_dataset(ObjectView(args))
    return {name: np.ascontiguousarray(data[name]) for name in _ARRAYS}


def _digest(args_json: str, arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256(args_json.encode("utf-8"))
    for name in _ARRAYS:
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _read_stored(path: Path, args_json: str) -> dict[str, np.ndarray] | None:
    """The arrays kept in ``path`` if it holds them whole for ``args_json``; else None (said once)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in _ARRAYS}
            args, digest = str(stored["args"]), str(stored["sha256"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        log.warning("MNIST-1D file %s cannot be read (%s); generating it again", path, err)
        return None
    if args != args_json or digest != _digest(args_json, arrays):
        log.warning("MNIST-1D file %s does not hold what was written (other arguments or a sha256 "
                    "mismatch); generating it again", path)
        return None
    return arrays


def _store(path: Path, args_json: str, arrays: dict[str, np.ndarray]) -> None:
    try:
        with atomic_write(path) as handle:
            np.savez(handle, args=np.asarray(args_json), sha256=np.asarray(_digest(args_json, arrays)), **arrays)
    except OSError as err:
        log.info("MNIST-1D not kept on disk (%s): each process generates it", err)


def load_mnist1d_source(data_dir: str | None = None, download: bool = False, *,
                        data_samples: int | None = None) -> SourceData:
    """Loader for ``mnist1d``; ``data_dir`` and ``download`` are unused (the data are generated).

    The package's train split is the training pool (validation is carved from it by
    :func:`kd_tune.data.load_dataset`); its test split is the test set, as the package makes it.
    """
    arrays = generate(data_samples)
    x, x_test = (np.asarray(arrays[k], dtype=np.float32)[:, None, :] for k in ("x", "x_test"))
    y, y_test = (np.asarray(arrays[k], dtype=np.int64) for k in ("y", "y_test"))
    if len(np.unique(y)) != 10:
        raise DataError(f"MNIST-1D with {data_samples} samples holds {len(np.unique(y))} of the 10 classes "
                        "in its training split; generate more samples")
    mean, std = float(x.mean()), float(x.std())
    return SourceData(
        train=Split(torch.from_numpy(x.copy()), torch.from_numpy(y.copy())),
        test=Split(torch.from_numpy(x_test.copy()), torch.from_numpy(y_test.copy())),
        num_classes=10,
        max_value=1.0,
        mean=(mean,),
        std=(std,),
        class_names=tuple(str(c) for c in range(10)),
    )
