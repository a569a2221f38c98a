"""How and where a sweep runs: everything but its trials, checked before anything starts."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kd_tune.core.config import RunConfig
from kd_tune.core.hashing import KEY_LENGTH, sha256_hex
from kd_tune.core.identity import CACHE_DTYPES
from kd_tune.storage.local_copies import default_local_cache
from kd_tune.storage.location import Storage, StorageError, is_uri, open_storage
from kd_tune.sweep.reports import ReportSchedule

CACHE_MODES = (*CACHE_DTYPES, "off")
SHARED_DIRS = ("teachers", "teacher_logits")


class SweepError(ValueError):
    """The sweep cannot start as asked (storage, name reused with other trials, ...)."""


@dataclass(frozen=True)
class SweepOptions:
    """How and where a sweep runs (everything except the run configs).

    ``storage`` is a local folder (made absolute) or a URI (``s3://bucket/prefix``;
    ``storage_endpoint`` the endpoint of an S3-compatible store, else
    ``$AWS_ENDPOINT_URL``); the folders (``sweep_dir``, ``teachers_dir``, ...) are
    :class:`~kd_tune.storage.location.Storage` either way. ``local_cache`` is the node-local folder
    of copies of stored teacher-logit caches (None: the user's cache folder, see
    :mod:`kd_tune.storage.local_copies`). ``cpus_per_trial``/``gpus_per_trial`` are Ray resource
    requests per trial and per teacher task (GPUs may be fractional); a trial's CPU
    threads are its CPU share (:meth:`with_threads`);
    a trial reports its epochs every ``report_every_s`` seconds of training and saves a
    checkpoint every ``checkpoint_every_s`` seconds of training or ``checkpoint_every``
    epochs, and at its end (see :mod:`kd_tune.sweep.reports`); ``max_failures`` retries per trial;
    ``teacher_cache`` is how distilling trials get the teacher's outputs: ``float32``
    or ``float16`` logits from the shared cache, or ``off`` (the teacher runs online);
    ``feature_classes`` are the classes whose test samples' penultimate features are kept
    (``features.parquet``); ``log_models`` puts each trial's final weights in its MLflow run.
    """

    name: str
    storage: Path | str
    address: str | None = None
    mlflow_uri: str | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None
    checkpoint_every: int | None = None
    checkpoint_every_s: float | None = 30.0
    report_every_s: float = 10.0
    max_failures: int = 2
    teacher_cache: str = "float32"
    feature_classes: tuple[int, ...] = (0, 1, 2)
    log_models: bool = False
    storage_endpoint: str | None = None
    local_cache: str | None = None

    @property
    def schedule(self) -> ReportSchedule:
        """When trials report and checkpoint (no scheduler's epochs: a search adds its rungs)."""
        return ReportSchedule(report_every_s=self.report_every_s, checkpoint_every_s=self.checkpoint_every_s,
                              checkpoint_every=self.checkpoint_every)

    def __post_init__(self) -> None:
        if is_uri(self.storage):
            object.__setattr__(self, "storage", str(self.storage).rstrip("/"))  # a Path would mangle "s3://..."
        else:
            object.__setattr__(self, "storage", Path(os.path.expanduser(str(self.storage))).absolute())

    @property
    def store(self) -> Storage:
        """The storage root (raises :class:`~kd_tune.storage.location.StorageError` for a URI kd-tune cannot use)."""
        return open_storage(self.storage, endpoint=self.storage_endpoint)

    @property
    def on_object_store(self) -> bool:
        return is_uri(self.storage)

    @property
    def sweep_dir(self) -> Storage:
        return self.store / self.name

    @property
    def teachers_dir(self) -> Storage:
        return self.store / "teachers"

    @property
    def logits_dir(self) -> Storage:
        return self.store / "teacher_logits"

    @property
    def noise_dir(self) -> Storage:
        return self.sweep_dir / "noise"

    @property
    def driver_dir(self) -> Path:
        """The driver's own folder of this sweep (see :func:`driver_folder`)."""
        return driver_folder(self.sweep_dir, self.local_cache)

    @property
    def cache_dtype(self) -> str | None:
        """The dtype distilling trials read cached logits in; None with the cache off."""
        return None if self.teacher_cache == "off" else self.teacher_cache

    @property
    def trial_threads(self) -> int:
        """CPU threads of a trial and of a stage task: its CPU share rounded down, at least 1."""
        return max(1, int(self.cpus_per_trial))

    def with_threads(self, config: RunConfig) -> RunConfig:
        """``config`` with ``threads`` = :attr:`trial_threads` unless it names a count already.

        The driver sets it once, before planning: the trial carries it to its worker, which
        runs at that count, and the records (Parquet, MLflow) show it.
        """
        return config if config.threads is not None else config.replace(threads=self.trial_threads)

    def problems(self) -> list[str]:
        """Every problem with these options, as readable sentences (empty when valid)."""
        p = []
        if not self.name or "/" in self.name or self.name.startswith(".") or self.name in SHARED_DIRS:
            p.append(f"--name {self.name!r} must be a plain folder name (not {' or '.join(map(repr, SHARED_DIRS))}, "
                     "no '/')")
        p += self._storage_problems()
        if self.cpus_per_trial <= 0:
            p.append(f"--cpus-per-trial must be > 0, got {self.cpus_per_trial:g}")
        if self.gpus_per_trial < 0:
            p.append(f"--gpus-per-trial must be >= 0, got {self.gpus_per_trial:g}")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            p.append(f"--max-concurrent must be >= 1, got {self.max_concurrent}")
        p += self.schedule.problems()
        if self.max_failures < 0:
            p.append(f"--max-failures must be >= 0, got {self.max_failures}")
        if any(c < 0 for c in self.feature_classes) or len(set(self.feature_classes)) != len(self.feature_classes):
            p.append(f"--feature-classes {','.join(map(str, self.feature_classes))}: class indices must be distinct "
                     "and >= 0")
        if self.teacher_cache not in CACHE_MODES:
            p.append(f"--teacher-cache {self.teacher_cache!r} must be one of {', '.join(CACHE_MODES)} "
                     "(on means float32)")
        return p

    def _storage_problems(self) -> list[str]:
        """Whether the storage can be used: a writable folder, or an object store that answers,
        accepts the credentials and has the bucket (checked in seconds, before anything starts)."""
        try:
            store = self.store
        except StorageError as err:
            return [str(err)]
        if store.is_local:
            root = store.local_path
            return _local_problems(root, tuple(root / d for d in (self.name, *SHARED_DIRS)))
        if store.scheme != "s3":
            return [f"--storage {store.uri}: sweeps can write to local folders and S3 (s3://, also MinIO or Ceph) "
                    "only; kd-tune cannot make the conditional writes the sweep's locks need on other stores "
                    "(python -m analysis can read them)"]
        problem = store.problem()
        return [problem] if problem else []


def driver_folder(sweep: Storage, local_cache: str | os.PathLike | None = None) -> Path:
    """The driver's own folder of sweep ``sweep``: the sweep folder itself on local storage; on an
    object store a folder on the driver's disk, under the local cache (``local_cache``, default
    :func:`~kd_tune.storage.local_copies.default_local_cache`): ``<local cache>/sweeps/<digest of the
    sweep's URI>``. It holds the MLflow writes not yet sent (``tracking/``) and copies of the
    tables and figures written into the sweep folder, for MLflow to attach."""
    if sweep.is_local:
        return sweep.local_path
    root = Path(local_cache) if local_cache else default_local_cache()
    return root / "sweeps" / sha256_hex(sweep.uri, KEY_LENGTH)


def _local_problems(storage: Path, inside: tuple[Path, ...]) -> list[str]:
    """Whether a sweep can write ``storage`` and the folders ``inside`` it that exist; writes nothing.

    A missing ``storage`` must be creatable: its nearest existing parent must be a
    writable folder. Writable means writable by this process (a read-only mount is
    not, for any user).
    """
    problem = open_storage(storage).problem()
    if problem is not None or not storage.exists():
        return [problem] if problem else []
    flag = f"--storage {str(storage)!r}"
    for folder in inside:
        if folder.exists() and not folder.is_dir():
            return [f"{flag}: {str(folder)!r} is a file, not a folder"]
        if folder.exists() and not os.access(folder, os.W_OK | os.X_OK):
            return [f"{flag}: {str(folder)!r} is not writable"]
    return []
