"""The sweep runner (driver side): from run configs to results, one way through.

:func:`run_sweep` plans the trials once (:mod:`kd_tune.plan`), checks everything that
can be checked before anything is written (options, configs, data, a name reused with
other trials), connects to Ray (embedded or a cluster) and checks the resources, trains
each distinct teacher once and fills the teacher-logit cache once per key
(:mod:`kd_tune.teacher_stage`), opens the MLflow parent run and runs ``tune.Tuner`` with
actor reuse. The result sinks (:mod:`kd_tune.sinks`: Parquet, MLflow, console) are the
one writer, behind one Tune callback. Rerunning with the same name restores the Tune
experiment: finished trials are kept, unfinished ones continue from their last
checkpoint.

Folder layout under ``storage`` (absolute; a shared file system on a multi-node cluster)::

    teachers/<teacher key>/     teacher.pt + meta.json, shared by all sweeps in storage
    teacher_logits/<cache key>/ cached teacher logits (kd_tune.logit_cache), shared likewise
    <name>/sweep.json           the sweep's trials (config per trial key)
    <name>/results/trials/      one row per trial (Parquet part files; see kd_tune.results)
    <name>/results/epochs/      one row per trial and epoch
    <name>/noise/               the persisted noisy labels
    <name>/tracking/            MLflow writes not yet sent (kd_tune.tracking_queue)
    <name>/tables/              tables written at the end (CSV, Markdown)
    <name>/...                  Ray Tune's experiment state and trial checkpoints
    mlflow.db, mlartifacts/     the default MLflow store
    .locks/                     lock files of running sweeps (kd_tune.locks)
"""
from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kd_tune.atomic import write_text
from kd_tune.cluster import ClusterInfo, check_resources, check_shared_storage, concurrent_trials, connect, node_summary
from kd_tune.config import RunConfig
from kd_tune.plan import Plan, plan_trials
from kd_tune.status import TrialStatus
from kd_tune.sweep_options import SweepError, SweepOptions
from kd_tune.trainer import load_data
from kd_tune.validation import validate_all

MANIFEST = "sweep.json"
START_SEND_S = 60.0  # at most this long sending an earlier run's queued MLflow writes before the trials
END_SEND_S = 30.0  # at most this long sending queued MLflow writes after the trials


@dataclass(frozen=True)
class SweepOutcome:
    """Where a finished (or interrupted) sweep left its results, and how its trials ended.

    ``counts`` maps each final status (and ``missing``: no final row) to a number of
    trials; ``seconds`` is the whole run, ``fit_seconds`` the Tune phase (after the
    teacher and cache stages).
    """

    sweep_dir: Path
    tracking_uri: str
    parent_run_id: str | None
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    fit_seconds: float = 0.0
    interrupted: bool = False
    artifacts: tuple[Path, ...] = ()


def prepare(configs: Sequence[RunConfig], options: SweepOptions) -> Plan:
    """Plan the trials of ``configs`` and run every check that needs no cluster; write nothing.

    Checks the options (and that a tracking server answers), every config, each distinct
    data setting (loaded once, which finds a missing or broken data dir), and that a
    reused ``--name`` holds the same trials. Raises :class:`~kd_tune.config.ConfigError`,
    :class:`SweepError` or :class:`~kd_tune.data.DataError`.
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
    plan = plan_trials(configs, cache_dtype=options.cache_dtype)
    for config in plan.data().values():
        load_data(config)
    _check_manifest(plan, options)
    return plan


def run_sweep(
    configs: Sequence[RunConfig],
    options: SweepOptions,
    *,
    finalize: Callable[[Path], list[Path]] | None = None,
    log: Callable[[str], None] = print,
) -> SweepOutcome:
    """Run every config as a Tune trial and record the results; return where they are.

    ``finalize(sweep_dir)`` runs after the trials, before the MLflow parent run ends,
    and returns files (tables) to attach to it. Raises the errors of :func:`prepare`,
    :class:`SweepError` when another driver runs the same sweep,
    :class:`~kd_tune.results.ResultsError` when the stored results are damaged and
    :class:`~kd_tune.cluster.ClusterError`, all before writing anything;
    :class:`~kd_tune.teacher_store.TeacherError` when a teacher fails.
    """
    started = time.perf_counter()
    plan = prepare(configs, options)
    with sweep_lock(options.sweep_dir, log=log):
        return _run(plan, options, finalize, log, started)


@contextlib.contextmanager
def sweep_lock(sweep_dir: Path, *, log: Callable[[str], None] = print) -> Iterator[None]:
    """Hold the lock of the sweep in ``sweep_dir`` (``<storage>/.locks/sweep-<name>.lock``)
    for the block: one process at a time runs or repairs a sweep. Raises
    :class:`SweepError` naming the process that holds it."""
    from kd_tune.locks import FileLock, LockBusy, lock_path

    name, storage = sweep_dir.name, sweep_dir.parent
    lock = FileLock(lock_path(storage, f"sweep-{name}"), f"sweep {name}")
    try:
        lock.acquire()
    except LockBusy as busy:
        who = busy.holder.describe() if busy.holder else "another process"
        raise SweepError(f"sweep {name!r} in {storage} is already running ({who}); wait for it to end, or pick "
                         "another --name") from None
    if lock.previous is not None:
        log(f"sweep {name!r}: the process that held it before ({lock.previous.describe()}) stopped without "
            "releasing it; taking over")
    try:
        yield
    finally:
        lock.release()


def _run(plan: Plan, options: SweepOptions, finalize: Callable[[Path], list[Path]] | None,
         log: Callable[[str], None], started: float) -> SweepOutcome:
    from kd_tune.results import ResultsWriter

    sweep_dir = options.sweep_dir
    # Opening the results checks them: a damaged file stops here, before Ray starts.
    results = ResultsWriter(sweep_dir)
    info = connect(options.address)  # before anything imports Ray (kd_tune.sinks does)
    log(node_summary(info))
    check_resources(info, cpus_per_trial=options.cpus_per_trial, gpus_per_trial=options.gpus_per_trial)
    check_shared_storage(info, options.storage)

    from kd_tune.sinks import ConsoleProgress, MlflowSink, ParquetSink, TuneSinks
    from kd_tune.teacher_stage import ensure_teacher_logits, ensure_teachers
    from kd_tune.teacher_store import TeacherStore
    from kd_tune.tracking import resolve_tracking_uri
    from kd_tune.tracking_queue import TrackingQueue

    store = TeacherStore(options.teachers_dir)
    parquet = ParquetSink(results, sweep=options.name, teacher_acc=store.test_acc,
                          run_id=lambda key: mlflow_sink.run_id(key))

    sweep_dir.mkdir(parents=True, exist_ok=True)
    tracking_uri = resolve_tracking_uri(options.mlflow_uri, options.storage)
    write_text(sweep_dir / MANIFEST, json.dumps(
        {"name": options.name, "teacher_cache": options.teacher_cache, "mlflow_uri": tracking_uri,
         "trials": {t.key: t.config.to_dict() for t in plan.trials}}, indent=1))
    invocation = uuid.uuid4().hex
    queue = TrackingQueue(sweep_dir, tracking_uri, options.name, artifact_root=options.storage / "mlartifacts",
                          log=log)
    queue.start_parent(invocation, f"{options.name} {time.strftime('%Y-%m-%d %H:%M:%S')}",
                       {"trials": len(plan.trials), "cpus_per_trial": options.cpus_per_trial,
                        "gpus_per_trial": options.gpus_per_trial, "cluster": info.address,
                        "storage": str(options.storage), "teacher_cache": options.teacher_cache},
                       {"kd_tune.sweep_dir": str(sweep_dir)})
    mlflow_sink = MlflowSink(queue, invocation, started_at=parquet.started_at)
    # Writes an earlier run left unsent go first; then MLflow is checked against the results.
    if queue.send(timeout=START_SEND_S):
        _mirror(mlflow_sink, parquet, log)
    queue.start()
    status = "FAILED"
    try:
        finished = parquet.finished_keys() & set(plan.keys)
        log(f"sweep {options.name!r}: {len(plan.trials)} trials ({len(finished)} already finished), "
            f"up to {_concurrency(info, options)} at a time; results in {sweep_dir}")
        ensure_teachers(plan, store, options, log=log)
        if options.cache_dtype is not None:
            ensure_teacher_logits(plan, store, options, log=log)
        console = ConsoleProgress(total=len(plan.trials), done=len(finished), log=log)
        # The row is written before the MLflow run is ended: a driver killed in between leaves
        # a RUNNING run, which the next run's mirror ends, never a finished run without its row.
        callback = TuneSinks([parquet, mlflow_sink, console], skip=finished)
        fit_started = time.perf_counter()
        _fit(plan, options, callback)
        fit_seconds = time.perf_counter() - fit_started
        parquet.reconcile(callback.ended_in_tune)
        counts = _counts(parquet.statuses(), plan.keys)
        interrupted = counts["missing"] > 0
        artifacts = tuple(finalize(sweep_dir)) if finalize is not None else ()
        queue.log_artifacts(invocation, list(artifacts))
        status = "KILLED" if interrupted else ("FINISHED" if counts["failed"] == 0 else "FAILED")
        return SweepOutcome(sweep_dir, tracking_uri, queue.parent_id(invocation), counts,
                            time.perf_counter() - started, fit_seconds, interrupted, artifacts)
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        queue.end_parent(invocation, status)
        if queue.stop(timeout=END_SEND_S):
            _mirror(mlflow_sink, parquet, log)
        else:
            log(f"MLflow is still behind: {queue.unsent()} write(s) wait in {queue.outbox.path}; they are sent on "
                f"the next run of this sweep, or with `python -m kd_tune.recover sync {sweep_dir}` (the Parquet "
                "results are complete)")
        queue.close()


def _mirror(mlflow_sink: Any, parquet: Any, log: Callable[[str], None]) -> None:
    """MLflow made whole from the results (refilled, stale runs ended) and the run ids
    recorded in the results; a store that fails meanwhile is left for the next run."""
    try:
        parquet.writer.record_run_ids(mlflow_sink.mirror(parquet.writer, log=log))
    except Exception as err:  # MLflow is a view of the results: the sweep goes on without it
        log(f"could not check MLflow against the results ({str(err).splitlines()[0][:200]}); it is checked "
            "again on the next run of this sweep")


def _check_manifest(plan: Plan, options: SweepOptions) -> None:
    """A reused name must hold the same trials, and float16 logits must not be mixed with float32."""
    manifest = options.sweep_dir / MANIFEST
    if not manifest.is_file():
        return
    recorded = json.loads(manifest.read_text())
    stored = set(recorded["trials"])
    wanted = set(plan.keys)
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


def _fit(plan: Plan, options: SweepOptions, callback: Any) -> None:
    """Run the Tune experiment, or resume it when the sweep folder holds one."""
    # Tune's own console table and default loggers are replaced by the sinks; the JSON
    # logger stays for Tune's own result bookkeeping.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    from kd_tune.trainable import distill_trial

    trainable = tune.with_resources(
        tune.with_parameters(
            distill_trial, teachers_dir=str(options.teachers_dir), logits_dir=str(options.logits_dir),
            noise_dir=str(options.noise_dir), checkpoint_every=options.checkpoint_every,
        ),
        {"cpu": options.cpus_per_trial, "gpu": options.gpus_per_trial},
    )
    param_space = {"trial": tune.grid_search([t.to_dict() for t in plan.trials])}
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
                callbacks=[callback, JsonLoggerCallback()],
                failure_config=tune.FailureConfig(max_failures=options.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            ),
        )
    tuner.fit()


def _counts(statuses: dict[str, TrialStatus], keys: list[str]) -> dict[str, int]:
    counts = {"completed": 0, "diverged": 0, "stopped": 0, "failed": 0, "missing": 0}
    for key in keys:
        status = statuses.get(key)
        counts[status.value if status is not None else "missing"] += 1
    return counts


def _concurrency(info: ClusterInfo, options: SweepOptions) -> int:
    fit = concurrent_trials(info, cpus_per_trial=options.cpus_per_trial, gpus_per_trial=options.gpus_per_trial)
    return min(fit, options.max_concurrent) if options.max_concurrent else fit


__all__ = ["SweepError", "SweepOptions", "SweepOutcome", "prepare", "run_sweep"]
