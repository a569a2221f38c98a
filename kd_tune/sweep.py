"""The sweep runner (driver side): from a list of run configs to results, in the order of DESIGN.md.

:func:`run_sweep` connects to Ray (embedded or a cluster), checks everything that can
be checked before anything is written (configs, resources, data, storage, a name
reused with other trials), then trains each distinct teacher once and fills the
teacher-logit cache once per teacher and view set (both as Ray tasks), opens the MLflow
parent run and runs ``tune.Tuner`` with actor reuse. The
:class:`~kd_tune.recorder.SweepRecorder` callback is the one writer of Parquet rows and
MLflow child runs. Rerunning with the same name restores the Tune experiment: finished
trials are kept, unfinished ones continue from their last checkpoint.

Folder layout under ``storage`` (absolute; a shared file system on a multi-node cluster)::

    teachers/<teacher key>/     teacher.pt + meta.json, shared by all sweeps in storage
    teacher_logits/<cache key>/ cached teacher logits (kd_tune.logit_cache), shared likewise
    <name>/sweep.json           the sweep's trials (config per trial key)
    <name>/trials.parquet       one row per trial       (see kd_tune.results)
    <name>/epochs.parquet       one row per trial and epoch
    <name>/noise/               the persisted noisy labels
    <name>/tables/              tables written at the end (CSV, Markdown)
    <name>/...                  Ray Tune's experiment state and trial checkpoints
    mlflow.db, mlartifacts/     the default MLflow store
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from kd_tune.atomic import write_text
from kd_tune.cluster import ClusterError, ClusterInfo, check_resources, check_shared_storage, concurrent_trials, connect, node_summary
from kd_tune.config import RunConfig
from kd_tune.logit_cache import CACHE_MODES, LogitCache, teacher_cache_key
from kd_tune.search_space import trial_key, validate_all
from kd_tune.teacher_store import TeacherError, TeacherStore, needs_teacher, teacher_key
from kd_tune.trainer import load_data

MANIFEST = "sweep.json"
_SHARED_DIRS = ("teachers", "teacher_logits")
_PROGRESS_S = 30.0  # how often the teacher and cache stages report work in progress


class SweepError(ValueError):
    """The sweep cannot start as asked (storage, name reused with other trials, ...)."""


@dataclass(frozen=True)
class SweepOptions:
    """How and where a sweep runs (everything except the run configs).

    ``storage`` is made absolute; ``cpus_per_trial``/``gpus_per_trial`` are Ray resource
    requests per trial and per teacher task (GPUs may be fractional);
    ``checkpoint_every`` is in epochs; ``max_failures`` retries per trial;
    ``teacher_cache`` is how distilling trials get the teacher's outputs: ``float32``
    or ``float16`` logits from the shared cache, or ``off`` (the teacher runs online).
    """

    name: str
    storage: Path
    address: str | None = None
    mlflow_uri: str | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None
    checkpoint_every: int = 5
    max_failures: int = 2
    teacher_cache: str = "float32"

    def __post_init__(self) -> None:
        if _is_uri(str(self.storage)):
            return  # refused by problems(); a Path would mangle "s3://..."
        object.__setattr__(self, "storage", Path(os.path.expanduser(str(self.storage))).absolute())

    @property
    def sweep_dir(self) -> Path:
        return self.storage / self.name

    @property
    def teachers_dir(self) -> Path:
        return self.storage / "teachers"

    @property
    def logits_dir(self) -> Path:
        return self.storage / "teacher_logits"

    def problems(self) -> list[str]:
        p = []
        if not self.name or "/" in self.name or self.name.startswith(".") or self.name in _SHARED_DIRS:
            p.append(f"--name {self.name!r} must be a plain folder name (not {' or '.join(map(repr, _SHARED_DIRS))}, "
                     "no '/')")
        if _is_uri(str(self.storage)):
            p.append(f"--storage {str(self.storage)!r}: URIs are not supported; mount the bucket or share a file system and give its path")
        if self.cpus_per_trial <= 0:
            p.append(f"--cpus-per-trial must be > 0, got {self.cpus_per_trial:g}")
        if self.gpus_per_trial < 0:
            p.append(f"--gpus-per-trial must be >= 0, got {self.gpus_per_trial:g}")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            p.append(f"--max-concurrent must be >= 1, got {self.max_concurrent}")
        if self.checkpoint_every < 1:
            p.append(f"--checkpoint-every must be >= 1 epoch, got {self.checkpoint_every}")
        if self.max_failures < 0:
            p.append(f"--max-failures must be >= 0, got {self.max_failures}")
        if self.teacher_cache not in CACHE_MODES:
            p.append(f"--teacher-cache {self.teacher_cache!r} must be one of {', '.join(CACHE_MODES)}")
        return p


def _is_uri(text: str) -> bool:
    return "://" in text


@dataclass(frozen=True)
class SweepOutcome:
    """Where a finished (or interrupted) sweep left its results, and how its trials ended.

    ``seconds`` is the whole run, ``fit_seconds`` the Tune phase (after the teacher stage).
    """

    sweep_dir: Path
    tracking_uri: str
    parent_run_id: str | None
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    fit_seconds: float = 0.0
    interrupted: bool = False
    artifacts: tuple[Path, ...] = ()


def check_before_start(configs: list[RunConfig], options: SweepOptions) -> None:
    """Every check that needs no cluster: options, configs, data, a reused name.

    Raises :class:`~kd_tune.config.ConfigError`, :class:`SweepError` or
    :class:`~kd_tune.data.DataError`; writes nothing.
    """
    from kd_tune.tracking import check_reachable, resolve_tracking_uri

    problems = options.problems()
    unreachable = check_reachable(resolve_tracking_uri(options.mlflow_uri, options.storage)) if not problems else None
    if unreachable:
        problems.append(unreachable)
    if problems:
        raise SweepError("; ".join(problems))
    if not configs:
        raise SweepError("the search space is empty: no trial to run")
    validate_all(configs)
    seen: set[tuple] = set()
    for config in configs:
        # Loading each distinct data setting once in the driver finds a missing or broken
        # data dir before any trial starts (and before anything is written).
        settings = tuple(sorted(config.data_settings().items()))
        if settings not in seen:
            seen.add(settings)
            load_data(config)
    manifest = options.sweep_dir / MANIFEST
    if manifest.is_file():
        recorded = json.loads(manifest.read_text())
        stored = set(recorded["trials"])
        wanted = {trial_key(c) for c in configs}
        if stored != wanted:
            raise SweepError(
                f"sweep {options.name!r} in {options.storage} was started with other trials "
                f"({len(wanted - stored)} new, {len(stored - wanted)} left out); rerun it with the same "
                "flags to resume it, or pick another --name"
            )
        # float32 logits and the online teacher give the same students; float16 does not.
        before = recorded.get("teacher_cache", "off")
        if before != options.teacher_cache and "float16" in (before, options.teacher_cache):
            raise SweepError(
                f"sweep {options.name!r} started with --teacher-cache {before}, and float16 logits change "
                f"results; resume it with --teacher-cache {before}, or pick another --name"
            )


def run_sweep(
    configs: list[RunConfig],
    options: SweepOptions,
    *,
    finalize: Callable[[Path], list[Path]] | None = None,
    log: Callable[[str], None] = print,
) -> SweepOutcome:
    """Run every config as a Tune trial and record the results; return where they are.

    ``finalize(sweep_dir)`` runs after the trials, before the MLflow parent run ends,
    and returns files (tables) to attach to it. Raises the errors of
    :func:`check_before_start` and :class:`~kd_tune.cluster.ClusterError` before
    writing anything; :class:`~kd_tune.teacher_store.TeacherError` when a teacher fails.
    """
    started = time.perf_counter()
    check_before_start(configs, options)
    info = connect(options.address)
    log(node_summary(info))
    check_resources(info, cpus_per_trial=options.cpus_per_trial, gpus_per_trial=options.gpus_per_trial)
    check_shared_storage(info, options.storage)

    from kd_tune.recorder import SweepRecorder
    from kd_tune.results import ResultsWriter
    from kd_tune.tracking import SweepTracker, resolve_tracking_uri

    sweep_dir = options.sweep_dir
    sweep_dir.mkdir(parents=True, exist_ok=True)
    keys = [trial_key(c) for c in configs]
    write_text(sweep_dir / MANIFEST, json.dumps(
        {"name": options.name, "teacher_cache": options.teacher_cache,
         "trials": {k: c.to_dict() for k, c in zip(keys, configs)}}, indent=1))
    tracking_uri = resolve_tracking_uri(options.mlflow_uri, options.storage)
    tracker = SweepTracker(tracking_uri, options.name, artifact_root=options.storage / "mlartifacts")
    writer = ResultsWriter(sweep_dir)
    done_before = sum(1 for k in keys if writer.trials.get(k, {}).get("status") in ("completed", "diverged"))
    parent = tracker.start_parent(
        f"{options.name} {time.strftime('%Y-%m-%d %H:%M:%S')}",
        {"trials": len(configs), "cpus_per_trial": options.cpus_per_trial,
         "gpus_per_trial": options.gpus_per_trial, "cluster": info.address,
         "storage": str(options.storage), "teacher_cache": options.teacher_cache},
        {"kd_tune.sweep_dir": str(sweep_dir)},
    )
    log(f"sweep {options.name!r}: {len(configs)} trials ({done_before} already finished), "
        f"up to {_concurrency(info, options)} at a time; results in {sweep_dir}")
    status = "FAILED"
    try:
        store = TeacherStore(options.teachers_dir)
        ensure_teachers(configs, store, options, log=log)
        if options.teacher_cache != "off":
            ensure_teacher_logits(configs, store, options, log=log)
        recorder = SweepRecorder(sweep=options.name, writer=writer, tracker=tracker, teachers=store,
                                 total=len(configs), log=log)
        fit_started = time.perf_counter()
        _fit(configs, options, recorder)
        fit_seconds = time.perf_counter() - fit_started
        recorder.reconcile(dict(zip(keys, configs)))
        counts = _counts(writer, keys)
        interrupted = counts["missing"] > 0
        artifacts = tuple(finalize(sweep_dir)) if finalize is not None else ()
        tracker.log_artifacts(list(artifacts))
        status = "KILLED" if interrupted else ("FINISHED" if counts["failed"] == counts["missing"] == 0 else "FAILED")
        return SweepOutcome(sweep_dir, tracking_uri, parent, counts, time.perf_counter() - started,
                            fit_seconds, interrupted, artifacts)
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.end_parent(status)


def ensure_teachers(configs: list[RunConfig], store: TeacherStore, options: SweepOptions,
                    *, log: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Make sure every distinct teacher of ``configs`` is in ``store``; return their records.

    Missing teachers are trained once each, as Ray tasks with one trial's resources,
    in parallel as far as the cluster allows.
    """
    from kd_tune.trainable import train_teacher_task

    needed = {teacher_key(c): c for c in configs if needs_teacher(c)}
    missing = {k: c for k, c in needed.items() if not store.has(k)}
    log(f"teachers: {len(needed)} needed, {len(needed) - len(missing)} in the store, {len(missing)} to train")
    noise_dir = str(options.sweep_dir / "noise")
    pending = {_task(train_teacher_task, options).remote(str(store.root), c.to_dict(), noise_dir): k
               for k, c in missing.items()}

    def still_training(key: str) -> None:
        done = store.progress(key)
        if done is not None:
            acc = "" if done["test_acc"] is None else f", test acc {100 * done['test_acc']:.2f}%"
            log(f"teacher {needed[key].teacher} ({key}): epoch {done['epoch']}/{done['epochs']}{acc}")

    def trained(key: str, meta: dict[str, Any]) -> None:
        log(f"teacher {needed[key].teacher} ({key}) trained: test acc {100 * meta['metrics']['test_acc']:.2f}% "
            f"in {meta['train_seconds']:.1f}s")

    def failed(key: str, cause: BaseException) -> None:
        raise TeacherError(f"training teacher {key} failed: {cause}") from None

    _await_tasks(pending, on_done=trained, on_wait=still_training, on_error=failed)
    return {k: store.meta(k) for k in needed}


def ensure_teacher_logits(configs: list[RunConfig], store: TeacherStore, options: SweepOptions,
                          *, log: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Fill the teacher-logit cache once per teacher and view set that ``configs`` distil from.

    Every teacher must be in ``store``. Missing caches are built as Ray tasks with one
    trial's resources (on a GPU where trials get one); returns the metas of the caches
    that exist, by key. A build that fails is reported and not fatal: the trials that
    need it try again themselves, and fail and are recorded one by one if it still fails.
    """
    from kd_tune.trainable import build_logits_task

    cache = LogitCache(options.logits_dir)
    augment: dict[str, bool] = {}
    needed: dict[str, RunConfig] = {}
    # Lowest seed first: a single-view cache is then computed in the same batches
    # whatever the order of the trials.
    for config in sorted(configs, key=lambda c: c.seed):
        if not needs_teacher(config):
            continue
        if config.dataset not in augment:  # augmentation is a property of the data set
            augment[config.dataset] = load_data(config).augment
        key = teacher_cache_key(config, store, augment=augment[config.dataset], dtype=options.teacher_cache)
        needed.setdefault(key, config)
    missing = {k: c for k, c in needed.items() if not cache.has(k)}
    log(f"teacher logits ({options.teacher_cache}): {len(needed)} view set(s) needed, "
        f"{len(needed) - len(missing)} cached, {len(missing)} to compute")
    noise_dir = str(options.sweep_dir / "noise")
    pending = {
        _task(build_logits_task, options).remote(str(store.root), str(cache.root), c.to_dict(), noise_dir,
                                                  options.teacher_cache): k
        for k, c in missing.items()
    }

    def built(key: str, meta: dict[str, Any]) -> None:
        views, samples, classes = meta["train_shape"]
        log(f"teacher logits {key} (teacher {needed[key].teacher}): {views} view(s) x {samples} samples x "
            f"{classes} classes, {meta['bytes'] / 1e6:.1f} MB, in {meta['build_seconds']:.1f}s")

    def failed(key: str, cause: BaseException) -> None:
        log(f"teacher logits {key} (teacher {needed[key].teacher}) could not be computed: {cause}; "
            "its trials will try again")

    _await_tasks(pending, on_done=built, on_wait=lambda key: log(f"teacher logits {key}: computing"),
                 on_error=failed)
    return {k: cache.meta(k) for k in needed if cache.has(k)}


def _task(function: Callable[..., Any], options: SweepOptions) -> Any:
    """``function`` as a Ray task with one trial's resources, retried like a trial."""
    import ray

    return ray.remote(function).options(
        num_cpus=options.cpus_per_trial, num_gpus=options.gpus_per_trial, max_retries=options.max_failures
    )


def _await_tasks(pending: dict[Any, str], *, on_done: Callable[[str, Any], None], on_wait: Callable[[str], None],
                 on_error: Callable[[str, BaseException], None]) -> None:
    """Wait for Ray tasks (object ref -> key), calling ``on_done`` with each result,
    ``on_error`` with each task's exception and, every 30 s, ``on_wait`` per unfinished key."""
    import ray

    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=_PROGRESS_S)
        if not ready:
            for key in pending.values():
                on_wait(key)
            continue
        key = pending.pop(ready[0])
        try:
            result = ray.get(ready[0])
        except ray.exceptions.RayTaskError as err:
            on_error(key, err.cause if isinstance(err.cause, Exception) else err)
            continue
        on_done(key, result)


def _fit(configs: list[RunConfig], options: SweepOptions, recorder: Any) -> None:
    """Run the Tune experiment, or resume it when the sweep folder holds one."""
    # Tune's own console table and default loggers are replaced by the recorder's lines
    # and Parquet files; the JSON logger stays for Tune's own result bookkeeping.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    from kd_tune.trainable import distill_trial

    trainable = tune.with_resources(
        tune.with_parameters(
            distill_trial, teachers_dir=str(options.teachers_dir),
            noise_dir=str(options.sweep_dir / "noise"), checkpoint_every=options.checkpoint_every,
            logits_dir=None if options.teacher_cache == "off" else str(options.logits_dir),
            cache_dtype="float32" if options.teacher_cache == "off" else options.teacher_cache,
        ),
        {"cpu": options.cpus_per_trial, "gpu": options.gpus_per_trial},
    )
    param_space = {"run": tune.grid_search([c.to_dict() for c in configs])}
    path = str(options.sweep_dir)
    if tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable=trainable, param_space=param_space,
                                   resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                reuse_actors=True, max_concurrent_trials=options.max_concurrent,
                trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
            ),
            run_config=tune.RunConfig(
                name=options.name, storage_path=str(options.storage), verbose=0,
                callbacks=[recorder, JsonLoggerCallback()],
                failure_config=tune.FailureConfig(max_failures=options.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            ),
        )
    tuner.fit()


def _counts(writer: Any, keys: list[str]) -> dict[str, int]:
    counts = {"completed": 0, "diverged": 0, "failed": 0, "missing": 0}
    for key in keys:
        row = writer.trials.get(key)
        counts[row["status"] if row else "missing"] += 1
    return counts


def _concurrency(info: ClusterInfo, options: SweepOptions) -> int:
    fit = concurrent_trials(info, cpus_per_trial=options.cpus_per_trial, gpus_per_trial=options.gpus_per_trial)
    return min(fit, options.max_concurrent) if options.max_concurrent else fit


__all__ = ["ClusterError", "SweepError", "SweepOptions", "SweepOutcome", "check_before_start", "ensure_teacher_logits",
           "ensure_teachers", "run_sweep"]
