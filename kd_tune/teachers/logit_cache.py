"""The teacher-logit cache on disk: one folder per (teacher, view set), shared by every trial.

Layout under the cache root (``<storage>/teacher_logits`` in sweeps)::

    <key>/train.npy   (V, N, K) logits on the training views (see kd_tune.train.teacher_logits)
    <key>/val.npy     (N_val, K)
    <key>/test.npy    (N_test, K)
    <key>/meta.json   key, teacher key, shapes, dtype, each file's size and sha256,
                      seconds, teacher forward samples

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

The key (:func:`kd_tune.core.identity.cache_key`, computed once by the planner) hashes
everything the logits depend on: the teacher (its key in the teacher store), the data
settings (data set, data dir, validation split, label noise), the augmentation (on or
off, and with it the seed, epoch count and batch size that fix views and batches), AMP
and the storage dtype. ``meta.json`` records the sha256 of the teacher weights the
logits came from; :func:`ensure_cached` uses a cache only with those very weights and
rebuilds it otherwise, so a stale cache is never read. Every kind of teacher node is
cached the same way: an ensemble's cache holds its mean logits, and its digest is that
of its members' weights (:mod:`kd_tune.teachers.store`).

Integrity: nothing is mapped that does not match ``meta.json``. Every load checks each
file's ``.npy`` header (shape, dtype) and size against it (microseconds), and
:meth:`LogitCache.problem` also checks each file's sha256, computed when the cache was
built. The checksum reads every byte (about 0.1 s per 160 MB, 2.5 s for the paper's
4 GB, on this project's 2-core machine), so a sweep checks it once per node: the
driver before the trials start (its cache stage), and on every other node the first
trial that maps the cache, under a node-wide file lock, leaving a marker in the node's
temporary folder keyed by the cache folder, its checksums and a token drawn once per
sweep invocation; later trials on that node with that token find the marker and skip
the read. A damaged cache (rows reordered, payload overwritten, a file truncated or
replaced) is derived data: it is removed, with a warning naming it, and built again.

On an object store (``--storage s3://...``) the layout is the same, but a folder cannot
be renamed into place: the builder computes the cache in a node-local temporary folder
and uploads it file by file, ``meta.json`` last, so a key whose ``meta.json`` exists is
still complete and a failed build leaves no ``meta.json`` (its files, if any, are
removed; a key without ``meta.json`` is absent). Object stores cannot be memory-mapped:
trials map a node-local copy (:class:`kd_tune.storage.local_copies.LocalCopies`, under
``local_cache``), downloaded once per node and checked file by file against the sha256
``meta.json`` records when it is fetched, which is this store's once-per-node
checksum (the ``token`` is not needed there). The node that built a cache keeps what it
uploaded as its copy. On a local folder (or NFS) no copy is made: the files are mapped
where they are.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kd_tune.core.clock import utc_iso
from kd_tune.core.config import RunConfig
from kd_tune.core.hashing import KEY_LENGTH, file_sha256, sha256_hex
from kd_tune.core.identity import CACHE_DTYPES
from kd_tune.data import Dataset
from kd_tune.plan.planner import Trial
from kd_tune.storage.atomic import write_text
from kd_tune.storage.local_copies import CopyError, LocalCopies
from kd_tune.storage.location import Storage, open_storage
from kd_tune.storage.locks import locked
from kd_tune.teachers.store import TeacherStore
from kd_tune.train.teacher_logits import TeacherLogits, compute_teacher_logits, forward_count, train_shape

log = logging.getLogger(__name__)

CACHE_FORMAT = 3  # 3: meta.json records each file's size and sha256
DTYPES = {name: getattr(torch, name) for name in CACHE_DTYPES}
_NUMPY = {torch.float32: np.float32, torch.float16: np.float16}
_SPLITS = ("train", "val", "test")
_MARKS_KEPT_S = 7 * 24 * 3600  # markers and locks untouched this long are removed
_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


class CacheError(ValueError):
    """A teacher-logit cache's files do not match its ``meta.json`` (the message names the file)."""


class LogitCache:
    """Reads and builds cached teacher logits under ``root``: a local (shared) folder, or a
    :class:`~kd_tune.storage.location.Storage` or URI (``s3://...``) of an object store.

    ``local_cache`` is where an object store's caches are copied to be memory-mapped on
    this node (a folder or :class:`~kd_tune.storage.local_copies.LocalCopies`; None:
    :func:`~kd_tune.storage.local_copies.default_local_cache`); unused for a local ``root``.
    ``check_token`` is drawn once per sweep invocation: with it, this node reads each
    cache's checksum once per token (see the module docstring); without, on every check.
    """

    def __init__(self, root: str | os.PathLike | Storage, *,
                 local_cache: str | os.PathLike | LocalCopies | None = None, check_token: str | None = None):
        self.storage = open_storage(root)
        self.check_token = check_token
        self._local_cache = local_cache
        self._copies = local_cache if isinstance(local_cache, LocalCopies) else None

    @property
    def root(self) -> Path | Storage:
        """The cache root: a local path, or the object store's :class:`~kd_tune.storage.location.Storage`."""
        return self.storage.local_path if self.storage.is_local else self.storage

    @property
    def copies(self) -> LocalCopies:
        """This node's copies of the caches of an object store (made on first use)."""
        if self._copies is None:
            self._copies = LocalCopies(self._local_cache)
        return self._copies

    def path(self, key: str) -> Path | Storage:
        """The folder of cache ``key`` (complete once its ``meta.json`` exists)."""
        return self.root / key

    def uri(self, key: str, name: str = "") -> str:
        """The path or URI of cache ``key``'s folder, or of its file ``name``."""
        return self.storage.uri_of(f"{key}/{name}" if name else key)

    def has(self, key: str) -> bool:
        if self.storage.is_local:
            return (self.storage.local_path / key / "meta.json").is_file()
        return self.storage.is_file(f"{key}/meta.json")

    def meta(self, key: str) -> dict[str, Any]:
        return json.loads(self.storage.read_bytes(f"{key}/meta.json"))

    def remove(self, key: str) -> None:
        """Delete cache ``key`` (moved aside first, so readers never see half a folder; on an
        object store its ``meta.json`` goes first, so the key is absent at once)."""
        if not self.storage.is_local:
            self.storage.delete(f"{key}/meta.json")
            self.storage.delete_dir(key)
            return
        root = self.storage.local_path
        if not (root / key).exists():
            return
        aside = Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".old", dir=root))
        os.rename(root / key, aside / key)
        shutil.rmtree(aside, ignore_errors=True)

    def problem(self, key: str, *, teacher_sha256: str | None = None) -> str | None:
        """Why cache ``key`` must not be used (a sentence naming the folder or file), or None.

        Checks, in order: ``meta.json`` can be read and is of this format; the logits
        came from the teacher weights ``teacher_sha256`` (when given); every file's
        header and size match ``meta.json``; every file's sha256 is the one recorded at
        build. With the cache's ``check_token`` the sha256 is checked once per node and
        token (see the module docstring); without, on every call. On
        an object store the sha256 is checked when this node's copy is fetched (once per
        node: the fetch here is what trials on this node use then).
        """
        folder = self.uri(key)
        try:
            meta = self.meta(key)
        except (OSError, ValueError) as err:
            return f"teacher-logit cache {folder}: meta.json cannot be read ({err})"
        if meta.get("format") != CACHE_FORMAT:
            return (f"teacher-logit cache {folder} has format {meta.get('format')!r}, not {CACHE_FORMAT} "
                    "(made by an older kd-tune, without checksums)")
        if teacher_sha256 is not None and meta.get("teacher_weights_sha256") != teacher_sha256:
            return f"teacher-logit cache {folder} was made from other teacher weights than the stored teacher's"
        if self.storage.is_local:
            local = self.storage.local_path / key
            return _layout_problem(local, meta) or _checksum_problem_once(local, meta, self.check_token)
        try:
            copy = self._fetch(key, meta)
        except (CopyError, KeyError, TypeError) as err:
            return f"teacher-logit cache file {err}" if isinstance(err, CopyError) else \
                f"teacher-logit cache {folder}: meta.json records no files ({type(err).__name__}: {err})"
        try:
            return _layout_problem(copy, meta, shown=folder)
        finally:
            self.copies.release(copy)

    def local_folder(self, key: str) -> Path:
        """The local folder whose files are mapped for cache ``key``: the stored folder itself on a
        local store, else this node's copy (fetched, and then held in use until :meth:`load`'s arrays
        or the process are gone)."""
        if self.storage.is_local:
            return self.storage.local_path / key
        try:
            return self._fetch(key, self.meta(key))
        except CopyError as err:
            raise CacheError(f"teacher-logit cache file {err}") from None

    def _fetch(self, key: str, meta: dict[str, Any]) -> Path:
        files = sorted(meta["files"])
        return self.copies.fetch(self.storage / key, key, files, {n: meta["files"][n]["sha256"] for n in files})

    def load(self, key: str) -> TeacherLogits:
        """The cached logits of ``key``, memory-mapped (pages are read on first use, never copied).

        Raises :class:`CacheError` when a file's header or size does not match ``meta.json``
        (the content checksum is :meth:`problem`'s job; on an object store it is also
        checked when this node's copy is fetched).
        """
        if not self.has(key):
            raise FileNotFoundError(f"no teacher-logit cache {key} under {self.root}")
        meta = self.meta(key)
        if self.storage.is_local:
            folder = self.storage.local_path / key
        else:
            try:
                folder = self._fetch(key, meta)
            except CopyError as err:
                raise CacheError(f"teacher-logit cache file {err}") from None
        try:
            problem = _layout_problem(folder, meta, shown=None if self.storage.is_local else self.uri(key))
            if problem is not None:
                raise CacheError(problem)
            # Copy-on-write maps are writable for torch.from_numpy, yet share the page cache
            # with every other reader as long as nobody writes (nobody does).
            arrays = {s: np.load(folder / f"{s}.npy", mmap_mode="c") for s in _SPLITS}
        except BaseException:
            if not self.storage.is_local:
                self.copies.release(folder)
            raise
        if not self.storage.is_local:
            # The copy stays in use (never evicted) while any of its arrays is mapped.
            for array in arrays.values():
                self.copies.hold(folder)
                weakref.finalize(array, self.copies.release, folder)
            self.copies.release(folder)
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
        logits are written straight into a memory-mapped file, view by view; each file's
        size and sha256 are recorded in ``meta.json`` (read back from the written file).
        With a ``check_token``, this node counts the new cache as checked for it. On an
        object store the files are computed in a node-local folder and uploaded,
        ``meta.json`` last (see the module docstring).
        """
        if self.has(key):
            return self.meta(key)
        if not self.storage.is_local:
            return self._build_and_upload(key, teacher, data, config, dtype=dtype, device=device, extra=extra)
        root = self.storage.local_path
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".tmp", dir=root))
        try:
            meta = _compute(tmp, key, teacher, data, config, dtype=dtype, device=device, extra=extra)
            write_text(tmp / "meta.json", json.dumps(meta, indent=2))
            try:
                os.rename(tmp, root / key)
            except OSError:
                if not self.has(key):
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # another builder finished first
                return self.meta(key)
            _mark_checked(root / key, meta, self.check_token)
            return meta
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _build_and_upload(self, key: str, teacher: nn.Module, data: Dataset, config: RunConfig, *, dtype: str,
                          device: torch.device | str, extra: dict[str, Any] | None) -> dict[str, Any]:
        stored = self.storage / key
        tmp = self.copies.staging(stored, key)
        uploaded: list[str] = []
        try:
            meta = _compute(tmp, key, teacher, data, config, dtype=dtype, device=device, extra=extra)
            for name in meta["files"]:
                uploaded.append(name)
                stored.upload(tmp / name, name)
            # Last: its presence says the cache is complete.
            stored.write_json("meta.json", meta, indent=2)
        except BaseException:
            if uploaded and not stored.exists("meta.json"):
                with contextlib.suppress(Exception):  # what is left is absent anyway (no meta.json)
                    stored.delete_dir("")
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        try:
            # What was just uploaded is this node's copy already: trials here download nothing.
            self.copies.adopt(stored, key, tmp, {n: f["sha256"] for n, f in meta["files"].items()})
        except OSError as err:
            log.warning(f"the teacher-logit cache {stored.uri} was stored, but this node could not keep "
                          f"its copy in {self.copies.folder} ({err}); trials here will download it")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return meta


def _compute(tmp: Path, key: str, teacher: nn.Module, data: Dataset, config: RunConfig, *, dtype: str,
             device: torch.device | str, extra: dict[str, Any] | None) -> dict[str, Any]:
    """Write the cache's array files into the local folder ``tmp``; return its meta (not written)."""
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
    files = {f"{s}.npy": {"bytes": (tmp / f"{s}.npy").stat().st_size, "sha256": file_sha256(tmp / f"{s}.npy")}
             for s in _SPLITS}
    return {
        "key": key, "format": CACHE_FORMAT, "dtype": dtype, "augment": data.augment,
        "views": shape[0], "train_shape": list(shape), "val_shape": list(logits.val.shape),
        "test_shape": list(logits.test.shape), "bytes": sum(f["bytes"] for f in files.values()),
        "files": files, "teacher_forward_samples": forward_count(data, config.epochs),
        "build_seconds": time.perf_counter() - started, "device": str(device),
        "created_at": utc_iso(), **(extra or {}),
    }


def ensure_cached(
    trial: Trial,
    data: Dataset,
    store: TeacherStore,
    cache: LogitCache,
    *,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """The meta of ``trial``'s teacher-logit cache, checked, building it when missing or unusable.

    The trial's teacher must be in ``store``. A cache that :func:`intact_meta` rejects
    (made from other weights than the stored teacher's, or damaged) is removed and built
    again from the stored teacher.
    """
    meta = intact_meta(trial, store, cache)
    if meta is not None:
        return meta
    teacher, _ = store.load(trial.teacher_key, data)
    return cache.build(trial.cache_key, teacher, data, trial.config, dtype=trial.cache_dtype, device=device,
                       extra={"teacher_key": trial.teacher_key,
                              "teacher_weights_sha256": store.weights_digest(trial.teacher_key)})


def intact_meta(trial: Trial, store: TeacherStore, cache: LogitCache) -> dict[str, Any] | None:
    """The meta of ``trial``'s cache when it exists and :meth:`LogitCache.problem` finds nothing.

    A cache with a problem (stale or damaged) is removed, after a warning that names the
    problem; then, as when there is no cache, None.
    """
    key = trial.cache_key
    if key is None:
        raise ValueError(f"trial {trial.key} ({trial.label}) reads no teacher-logit cache")
    if not cache.has(key):
        return None
    problem = cache.problem(key, teacher_sha256=store.weights_digest(trial.teacher_key))
    if problem is None:
        return cache.meta(key)
    log.warning(f"{problem}; computing it again")
    cache.remove(key)
    return None


def _layout_problem(folder: Path, meta: dict[str, Any], *, shown: str | None = None) -> str | None:
    """Whether each array file's header (shape, dtype) and size are what ``meta.json`` records.

    The files are read in the local ``folder``; messages name them under ``shown`` (the
    stored folder's URI, for a node's copy) when given."""
    for split in _SPLITS:
        local = folder / f"{split}.npy"
        path: Path | str = local if shown is None else f"{shown}/{split}.npy"
        try:
            want = tuple(meta[f"{split}_shape"]), np.dtype(meta["dtype"])
            recorded = meta["files"][local.name]["bytes"]
            with open(local, "rb") as handle:
                version = np.lib.format.read_magic(handle)
                if version not in _NPY_HEADERS:
                    raise ValueError(f".npy version {version} is not one the cache writes")
                shape, fortran, dtype = _NPY_HEADERS[version](handle)
                data_at = handle.tell()
            size = local.stat().st_size
        except (OSError, ValueError, KeyError, TypeError) as err:
            return f"teacher-logit cache file {path} cannot be read ({type(err).__name__}: {err})"
        if (shape, dtype) != want or fortran:
            return (f"teacher-logit cache file {path} holds {dtype} {shape}, its meta.json records "
                    f"{want[1]} {want[0]}")
        if size != recorded or size != data_at + math.prod(shape) * dtype.itemsize:
            return f"teacher-logit cache file {path} is {size} bytes, its meta.json records {recorded}"
    return None


def _checksum_problem(folder: Path, meta: dict[str, Any]) -> str | None:
    for name, record in meta["files"].items():
        digest = file_sha256(folder / name)
        if digest != record["sha256"]:
            return (f"teacher-logit cache file {folder / name} does not hold what was written "
                    f"(sha256 {digest[:12]}..., recorded {record['sha256'][:12]}...)")
    return None


def _checksum_problem_once(folder: Path, meta: dict[str, Any], token: str | None) -> str | None:
    """:func:`_checksum_problem`, skipped when this node already checked these files with ``token``."""
    marks = _marks_dir() if token is not None else None
    if marks is None:
        return _checksum_problem(folder, meta)
    marker, lock = _marker_paths(marks, folder, meta, token)
    with locked(lock):  # other trials on this node wait for the one check, then find its marker
        if marker.exists():
            return None
        problem = _checksum_problem(folder, meta)
        if problem is None:
            _mark_checked(folder, meta, token)
        return problem


def _mark_checked(folder: Path, meta: dict[str, Any], token: str | None) -> None:
    """Leave this node's marker: ``folder`` holds ``meta``'s checksums, checked for ``token``."""
    marks = _marks_dir() if token is not None else None
    if marks is None:
        return
    marker, _ = _marker_paths(marks, folder, meta, token)
    for old in marks.glob(marker.name.split(".")[0] + ".*.ok"):  # one marker per folder, the newest
        old.unlink(missing_ok=True)
    marker.touch()
    for old in marks.iterdir():  # folders long gone; at worst a cache is checked once more
        with contextlib.suppress(OSError):
            if time.time() - old.stat().st_mtime > _MARKS_KEPT_S:
                old.unlink()


def _marker_paths(marks: Path, folder: Path, meta: dict[str, Any], token: str) -> tuple[Path, Path]:
    place = sha256_hex(str(folder), KEY_LENGTH)
    sums = json.dumps({n: f["sha256"] for n, f in meta["files"].items()}, sort_keys=True)
    check = sha256_hex(f"{sums}|{token}", KEY_LENGTH)
    return marks / f"{place}.{check}.ok", marks / f"{place}.lock"


def _marks_dir() -> Path | None:
    """This node's folder of checked-cache markers (None when it cannot be made: check every time)."""
    marks = Path(tempfile.gettempdir()) / f"kd_tune-{os.getuid()}" / "checked-caches"
    try:
        marks.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return marks
