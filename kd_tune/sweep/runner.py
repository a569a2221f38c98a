"""The sweep runner (driver side): from run configs to results, one way through.

:func:`run_sweep` plans the trials once (:mod:`kd_tune.plan.planner`), checks everything that
can be checked before anything is written (options, configs, data, a name reused with
other trials), connects to Ray (embedded or a cluster) and checks the resources, trains
each distinct teacher once and fills the teacher-logit cache once per key
(:mod:`kd_tune.sweep.teacher_stage`), opens the MLflow parent run and runs ``tune.Tuner`` with
actor reuse. The result sinks (Parquet, samples and teachers in :mod:`kd_tune.results`, MLflow, console) are the
one writer, behind one Tune callback. Rerunning with the same name restores the Tune
experiment: finished trials are kept, unfinished ones continue from their last
checkpoint.

Folder layout under ``storage``: an absolute local path (a shared file system on a
multi-node cluster) or an object store (``s3://bucket/prefix``); every file goes through
:mod:`kd_tune.storage.location`, so the layout is the same on both::

    teachers/<teacher key>/     teacher.pt + meta.json, shared by all sweeps in storage
    teacher_logits/<cache key>/ cached teacher logits (kd_tune.teachers.logit_cache), shared likewise
    <name>/sweep.json           the sweep's trials (config per trial key)
    <name>/results/trials/      one row per trial (Parquet part files; see kd_tune.results.trial_tables)
    <name>/results/epochs/      one row per trial and epoch
    <name>/teachers.parquet     one row per teacher node the sweep used (kd_tune.results.teacher_table)
    <name>/samples.parquet/     per-sample end measurements, one part file per trial and teacher
    <name>/features.parquet/    penultimate features of the feature classes, likewise (kd_tune.results.samples)
    <name>/figures/             figures written at the end (PNG, PDF)
    <name>/noise/               the persisted noisy labels
    <name>/tracking/            MLflow writes not yet sent (kd_tune.tracking.queue)
    <name>/tables/              tables written at the end (CSV, Markdown)
    <name>/...                  Ray Tune's experiment state and trial checkpoints
    mlflow.db, mlartifacts/     the default MLflow store (on an object store: mlartifacts/ only;
                                the SQLite file stays on the driver, see kd_tune.tracking.tracker)
    .locks/                     lock files of running sweeps (kd_tune.storage.locks, kd_tune.storage.store_lock)

On an object store the driver keeps its MLflow outbox, and copies of the tables and
figures for MLflow, in a folder of its own (:attr:`SweepOptions.driver_dir`), and each
node keeps copies of the teacher-logit caches its trials map (:mod:`kd_tune.storage.local_copies`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kd_tune.core.config import RunConfig
from kd_tune.core.logs import KeptWarnings
from kd_tune.core.status import TrialStatus
from kd_tune.plan.planner import Plan, plan_trials
from kd_tune.plan.teacher_dag import TeacherNode
from kd_tune.results.parquet_sink import ParquetSink
from kd_tune.results.samples_sink import SamplesSink
from kd_tune.results.sinks import TeacherRecord
from kd_tune.results.teachers_sink import TeachersSink
from kd_tune.results.trial_tables import ResultsWriter
from kd_tune.storage.location import Storage, open_storage, s3_filesystem
from kd_tune.storage.locks import LockBusy
from kd_tune.storage.store_lock import storage_lock
from kd_tune.sweep.cluster import (
    ClusterInfo,
    check_resources,
    check_shared_storage,
    concurrent_trials,
    connect,
    node_summary,
)
from kd_tune.sweep.console import ConsoleProgress
from kd_tune.sweep.context import WorkerContext
from kd_tune.sweep.options import SweepError, SweepOptions
from kd_tune.sweep.teacher_stage import ensure_teacher_logits, ensure_teachers
from kd_tune.sweep.trainable import distill_trial
from kd_tune.teachers.store import TeacherStore
from kd_tune.tracking.mlflow_sink import MlflowSink
from kd_tune.tracking.queue import TrackingQueue
from kd_tune.tracking.tracker import SWEEP_DIR_TAG, artifact_root, check_reachable, resolve_tracking_uri
from kd_tune.tracking.writes import EndParent, StartParent
from kd_tune.train.trainer import load_data
from kd_tune.train.validation import validate_all

# Ray is imported inside the functions that use it: `import ray` costs 0.5 CPU-s and Ray Tune
# 1.6 CPU-s (measured on a 2-core machine), which the driver's checks, --dry-run and a refused
# command line do without.

log = logging.getLogger(__name__)

MANIFEST = "sweep.json"
PARENT_KEY = "mlflow_parent_run_id"  # in sweep.json: the sweep's one MLflow parent run
START_SEND_S = 60.0  # at most this long sending an earlier run's queued MLflow writes before the trials
END_SEND_S = 30.0  # at most this long sending queued MLflow writes after the trials


@dataclass(frozen=True)
class SweepOutcome:
    """Where a finished (or interrupted) sweep left its results, and how its trials ended.

    ``counts`` maps each final status (and ``missing``: no final row) to a number of
    trials; ``seconds`` is the whole run, ``fit_seconds`` the Tune phase (after the
    teacher and cache stages); ``warnings`` are the invocation's warnings (a teacher at
    chance, a damaged teacher or cache made again), to be said again under the table.
    ``trained`` is False when every trial had finished before the invocation: it started no
    Ray and wrote the tables and figures again from the results.
    """

    sweep_dir: Storage
    tracking_uri: str
    parent_run_id: str | None
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    fit_seconds: float = 0.0
    interrupted: bool = False
    artifacts: tuple[Path, ...] = ()  # local files (on an object store: the driver's copies)
    warnings: tuple[str, ...] = ()
    experiment_id: str | None = None
    trained: bool = True


def check_options(options: SweepOptions) -> None:
    """Raise :class:`SweepError` listing every problem of the options (and an unreachable tracking server)."""
    problems = options.problems()
    unreachable = check_reachable(resolve_tracking_uri(options.mlflow_uri, options.storage)) if not problems else None
    if unreachable:
        problems.append(unreachable)
    if problems:
        raise SweepError("; ".join(problems))


def prepare(configs: Sequence[RunConfig], options: SweepOptions) -> Plan:
    """Plan the trials of ``configs`` and run every check that needs no cluster; write nothing.

    Each config without ``threads`` gets the trial's CPU share (:meth:`SweepOptions.with_threads`).
    Checks the options (and that a tracking server answers), every config, each distinct
    data setting (loaded once, which finds a missing or broken data dir), and that a
    reused ``--name`` holds the same trials. Raises :class:`~kd_tune.core.config.ConfigError`,
    :class:`SweepError` or :class:`~kd_tune.data.DataError`.
    """
    check_options(options)
    if not configs:
        raise SweepError("the search space is empty: no trial to run")
    configs = [options.with_threads(c) for c in configs]
    validate_all(configs)
    plan = plan_trials(configs, cache_dtype=options.cache_dtype)
    load_plan_data(plan, options)
    check_manifest(options, _grid_manifest(plan))
    return plan


def load_plan_data(plan: Plan, options: SweepOptions) -> None:
    """Load each distinct data setting of ``plan`` once: a missing or broken data dir fails here,
    and so do ``--feature-classes`` the data set does not have."""
    for config in plan.data().values():
        classes = load_data(config).num_classes
        if options.feature_classes and max(options.feature_classes) >= classes:
            raise SweepError(f"--feature-classes {','.join(map(str, options.feature_classes))}: {config.dataset} "
                             f"has classes 0..{classes - 1}")


def run_sweep(
    configs: Sequence[RunConfig],
    options: SweepOptions,
    *,
    finalize: Callable[[Storage], list[Path]] | None = None,
) -> SweepOutcome:
    """Run every config as a Tune trial and record the results; return where they are.

    ``finalize(sweep_dir)`` (the sweep's :class:`~kd_tune.storage.location.Storage`) runs after the
    trials, before the MLflow parent run ends, and returns local files (tables, figures)
    to attach to it, each under its folder's name.
    Raises the errors of :func:`prepare`, :class:`SweepError` when another driver runs
    the same sweep, :class:`~kd_tune.results.trial_tables.ResultsError` when the stored results are
    damaged and :class:`~kd_tune.sweep.cluster.ClusterError`, all before writing anything;
    :class:`~kd_tune.teachers.store.TeacherError` when a teacher fails.
    """
    started = time.perf_counter()
    plan = prepare(configs, options)
    with recording(options, _grid_manifest(plan), {"trials": len(plan.trials)},
                   done=lambda finished: set(plan.keys) <= finished) as recorder:
        if recorder.info is None:
            return recorder.ended_before(plan, plan.keys, finalize, started)
        recorder.stages(plan)
        log.info(f"sweep {options.name!r}: {len(plan.trials)} trials ({len(recorder.finished(plan.keys))} already "
                 f"finished), up to {concurrency(recorder.info, options)} at a time; results in {options.sweep_dir}")
        fit_started = time.perf_counter()
        recorder.fit(TuneRun.grid(options.sweep_dir, plan), total=len(plan.trials),
                     done=len(recorder.finished(plan.keys)))
        return recorder.finish(plan.keys, finalize, started, time.perf_counter() - fit_started)


def _grid_manifest(plan: Plan) -> dict[str, Any]:
    return {"trials": {t.key: t.config.to_dict() for t in plan.trials}}


@contextlib.contextmanager
def sweep_lock(sweep_dir: Storage | str | Path) -> Iterator[None]:
    """Hold the lock of the sweep in ``sweep_dir`` (``<storage>/.locks/sweep-<name>.lock``)
    for the block: one process at a time runs or repairs a sweep, on a local folder
    (``flock``) or an object store (a lease, :mod:`kd_tune.storage.store_lock`). Raises
    :class:`SweepError` naming the process that holds it."""
    sweep_dir = open_storage(sweep_dir)
    name, storage = sweep_dir.name, sweep_dir.parent
    lock = storage_lock(storage, f"sweep-{name}", f"sweep {name}")
    try:
        lock.acquire()
    except LockBusy as busy:
        who = busy.holder.describe() if busy.holder else "another process"
        raise SweepError(f"sweep {name!r} in {storage} is already running ({who}); wait for it to end, or pick "
                         "another --name") from None
    if lock.previous is not None:
        log.info(f"sweep {name!r}: the process that held it before ({lock.previous.describe()}) stopped without "
                 "releasing it; taking over")
    try:
        yield
    finally:
        lock.release()


def connect_checked(options: SweepOptions) -> ClusterInfo:
    """Join Ray as ``options.address`` says and check that a trial fits and the storage is shared."""
    env = {}
    if options.storage_endpoint:
        # Workers reopen the storage from its URI: they read the endpoint from their environment.
        env = {"AWS_ENDPOINT_URL_S3": options.storage_endpoint}
        os.environ.update(env)
    info = connect(options.address, env_vars=env)
    log.info(node_summary(info))
    check_resources(info, cpus_per_trial=options.cpus_per_trial, gpus_per_trial=options.gpus_per_trial)
    check_shared_storage(info, options.store)
    return info


def write_manifest(options: SweepOptions, content: dict[str, Any], tracking_uri: str,
                   parent: str | None = None) -> None:
    """Write ``sweep.json`` (name, teacher cache, MLflow store, the sweep's MLflow parent run
    when known, and ``content``: the trials, or a search's settings)."""
    options.sweep_dir.makedirs()
    options.sweep_dir.write_text(MANIFEST, json.dumps(
        {"name": options.name, "teacher_cache": options.teacher_cache, "mlflow_uri": tracking_uri,
         **({PARENT_KEY: parent} if parent else {}), **content}, indent=1))


def recorded_parent(options: SweepOptions) -> str | None:
    """The MLflow parent run id the sweep recorded in ``sweep.json`` (None: none yet)."""
    if not options.sweep_dir.is_file(MANIFEST):
        return None
    return options.sweep_dir.read_json(MANIFEST).get(PARENT_KEY)


def _keep_parent(options: SweepOptions, sent: str | None, recorded: str | None) -> str | None:
    """Record the parent run MLflow now holds in ``sweep.json`` when it is not the recorded one."""
    if sent is not None and sent != recorded:
        manifest = options.sweep_dir.read_json(MANIFEST)
        options.sweep_dir.write_text(MANIFEST, json.dumps({**manifest, PARENT_KEY: sent}, indent=1))
    return sent or recorded


@dataclass(frozen=True)
class TuneRun:
    """One Tune experiment of a sweep: its folder, what it samples, and how trials are stopped.

    ``path`` is the experiment folder (resumed when it holds one), on the sweep's storage. A
    grid gives ``param_space``; a search gives ``search_alg`` (already limited in concurrency),
    ``num_samples``, the maximised ``metric`` and optionally a ``scheduler``, with the
    epochs it decides at (``report_epochs``: every trial reports them).
    """

    path: Storage
    param_space: dict[str, Any] = field(default_factory=dict)
    search_alg: Any = None
    scheduler: Any = None
    num_samples: int = 1
    metric: str | None = None
    report_epochs: frozenset[int] = frozenset()

    @classmethod
    def grid(cls, path: Storage, plan: Plan) -> TuneRun:
        """Every planned trial of ``plan`` once: ``{"trial": grid_search([Trial.to_dict(), ...])}``."""
        from ray import tune

        return cls(path, {"trial": tune.grid_search([t.to_dict() for t in plan.trials])})


class Recorder:
    """What one invocation writes through: the sinks (Parquet, samples, MLflow, console) and the
    teacher store, with the cluster ``info`` it runs on (None: every trial had finished before
    this invocation, and Ray was not started).

    Made by :func:`recording`, which opens and ends the MLflow parent run; ``status`` is
    the parent's end status (FAILED until :meth:`finish` decides).
    """

    def __init__(self, options: SweepOptions, info: ClusterInfo | None, results: Any, queue: Any, invocation: str,
                 kept: KeptWarnings):
        self.options = options
        self.info = info
        self.queue = queue
        self.invocation = invocation
        self.status = "FAILED"
        self.kept = kept
        # What the workers need, one per invocation: its check token has stored caches checksummed
        # once per node and invocation.
        self.context = WorkerContext.of(options)
        self.store = TeacherStore(options.teachers_dir)
        self.parquet = ParquetSink(results, sweep=options.name, teacher_acc=self.store.test_acc,
                                   run_id=lambda key: self.mlflow.run_id(key))
        # The MLflow sink logs a trial's final row, which the Parquet sink (before it) has just written.
        self.mlflow = MlflowSink(queue, invocation, started_at=self.parquet.started_at,
                                 trial_row=self.parquet.trial_row)
        self.samples = SamplesSink(options.sweep_dir, options.feature_classes)
        self.teachers = TeachersSink(options.sweep_dir, sweep=options.name)

    def finished(self, keys: Sequence[str]) -> set[str]:
        """The keys among ``keys`` whose trials finished before this invocation."""
        return self.parquet.finished_keys() & set(keys)

    def stages(self, plan: Plan) -> None:
        """Train the plan's missing teacher nodes, then fill its missing teacher-logit caches;
        record each node (its ``teachers.parquet`` row, measurements and MLflow run)."""
        records = ensure_teachers(plan, self.store, self.options, self.context)
        if self.options.cache_dtype is not None:
            ensure_teacher_logits(plan, self.store, self.options, self.context)
        for key, node in plan.teacher_nodes.items():
            self._teacher_ready(node, records[key])

    def fit(self, run: TuneRun, *, total: int, done: int, hold_new: bool = False) -> list[dict[str, Any]]:
        """Run (or resume) one Tune experiment, recording every trial; return the Tune configs
        (``{"trial": Trial.to_dict(), ...}``) of its trials that reported, in Tune's order.

        ``total`` and ``done`` (finished before) count the experiment's trials for the
        progress lines. ``hold_new``: a
        trial's end is recorded only once Tune's experiment state holds the trial (a
        search draws trials as it goes; see :class:`~kd_tune.sweep.tune_callback.TuneSinks`).
        """
        # Imported here: it imports Ray Tune (see the note on imports above).
        from kd_tune.sweep.tune_callback import TuneSinks

        console = ConsoleProgress(total=total, done=done)
        rounds = self.options.max_failures + 1
        for round_ in range(1, rounds + 1):
            # The row is written before the MLflow run is ended: a driver killed in between leaves
            # a RUNNING run, which finish() ends, never a finished run without its row.
            callback = TuneSinks([self.parquet, self.samples, self.mlflow, console],
                                 skip=self.parquet.finished_keys(), hold_new=hold_new, keep_lost=round_ < rounds)
            results = _fit(self.options, callback, run, self.context)
            self.parquet.reconcile(callback.ended_in_tune)
            if not callback.lost or not _ended_by_itself(results, total, callback):
                break
            # Tune errored these trials with retries left (a worker lost while it was handed to
            # them, which Tune does not retry; see kd_tune.sweep.tune_callback): resuming the
            # experiment resumes them, as rerunning the command would.
            log.warning(f"{len(callback.lost)} trial(s) lost their worker as it was handed to them, which Ray Tune "
                        f"does not retry; resuming the sweep to run them (round {round_ + 1} of at most {rounds})")
        done = self.parquet.finished_keys()
        # Tune's result for a trial holds its config only once the trial reported: a Ctrl-C while
        # trials still waited for a slot leaves results without one. Such a trial has nothing to
        # prune, and it runs when the sweep is resumed.
        reported = [r for r in results if r.config is not None]
        prune_checkpoints(run.path, [r.path for r in reported if r.path and r.config["trial"]["key"] in done])
        return [result.config for result in reported]

    def ended_before(self, stages: Plan, keys: Sequence[str], finalize: Callable[[Storage], list[Path]] | None,
                     started: float) -> SweepOutcome:
        """The invocation of a sweep whose every trial had finished: no Ray, nothing trained.

        Its teachers (``stages``: the plan whose teacher nodes the sweep used) are recorded
        again from the teacher store, and MLflow was made whole from the results when the
        invocation began; then :meth:`finish` writes the tables and figures again."""
        log.info(f"sweep {self.options.name!r}: all {len(keys)} trials finished before; nothing to train "
                 "(Ray not started), tables and figures written again from the results")
        for key, node in stages.teacher_nodes.items():
            if self.store.has(key):
                self._teacher_ready(node, self.store.meta(key))
        return dataclasses.replace(self.finish(keys, finalize, started, 0.0), trained=False)

    def _teacher_ready(self, node: TeacherNode, record: Mapping[str, Any]) -> None:
        teacher = TeacherRecord(node, record, self.store.measurements(node.key))
        for sink in (self.parquet, self.samples, self.teachers, self.mlflow):
            sink.teacher_ready(teacher)

    def finish(self, keys: Sequence[str], finalize: Callable[[Storage], list[Path]] | None, started: float,
               fit_seconds: float, *, undrawn: int = 0) -> SweepOutcome:
        """End what a killed driver left open, count ``keys`` by status (and ``undrawn`` trials a
        search has yet to draw as missing), finalize; the outcome."""
        counts = _counts(self.parquet.statuses(), list(keys))
        counts["missing"] += undrawn
        interrupted = counts["missing"] > 0
        artifacts = tuple(finalize(self.options.sweep_dir)) if finalize is not None else ()
        self.mlflow.sweep_ended(self.parquet.trial_rows(), artifacts)
        self.status = "KILLED" if interrupted else ("FINISHED" if counts[TrialStatus.FAILED] == 0 else "FAILED")
        return SweepOutcome(self.options.sweep_dir, self.queue.tracking_uri, self.queue.parent_id(self.invocation),
                            counts, time.perf_counter() - started, fit_seconds, interrupted, artifacts,
                            tuple(self.kept.messages), self.queue.experiment_id())


@contextlib.contextmanager
def recording(options: SweepOptions, manifest: dict[str, Any], params: Mapping[str, Any], *,
              done: Callable[[set[str]], bool] = lambda finished: False) -> Iterator[Recorder]:
    """One invocation of a sweep, from its lock to its MLflow parent run's end.

    Holds the sweep's lock (:func:`sweep_lock`), opens (and so checks) its stored results
    before Ray starts, joins Ray and checks the cluster (:func:`connect_checked`) unless
    ``done`` says the sweep has nothing left to run (given the keys of the trials the results
    record as finished; the recorder's ``info`` is then None), writes ``sweep.json``
    (``manifest``: the trials, or a search's settings), then opens the MLflow parent run
    through the durable queue: the sweep's one parent, found again (``params``, beside the
    resources, are logged when it is made). Writes an earlier run left unsent go first, then
    MLflow is checked against the results. At the end the parent run gets the recorder's
    status (KILLED on Ctrl-C) and the queue is given a while to catch up; what it could not
    send waits for the next run. The parent's id is kept in ``sweep.json`` once MLflow has it.
    """
    with sweep_lock(options.sweep_dir), KeptWarnings() as kept:
        # Opening the results checks them: a damaged file stops here, before Ray starts.
        results = ResultsWriter(options.sweep_dir)
        finished = {key for key, status in results.statuses().items() if status.finished}
        info = None if done(finished) else connect_checked(options)
        tracking_uri = resolve_tracking_uri(options.mlflow_uri, options.storage)
        parent = recorded_parent(options)
        write_manifest(options, manifest, tracking_uri, parent)
        invocation = uuid.uuid4().hex
        if options.on_object_store and options.store.endpoint:
            # MLflow's own S3 client (boto3) sends the artifacts; it reads its endpoint here.
            os.environ.setdefault("MLFLOW_S3_ENDPOINT_URL", options.store.endpoint)
        queue = TrackingQueue(options.driver_dir, tracking_uri, options.name,
                              artifact_root=artifact_root(options.storage), sweep=str(options.sweep_dir),
                              known_parent=parent)
        queue.put(StartParent(
            invocation, options.name,
            {**params, "cpus_per_trial": options.cpus_per_trial, "gpus_per_trial": options.gpus_per_trial,
             "cluster": info.address if info else "none", "storage": str(options.storage),
             "teacher_cache": options.teacher_cache},
            {SWEEP_DIR_TAG: str(options.sweep_dir)},
        ))
        recorder = Recorder(options, info, results, queue, invocation, kept)
        if queue.send(timeout=START_SEND_S):
            parent = _keep_parent(options, queue.parent_id(invocation), parent)
            _mirror(recorder)
        queue.start()
        try:
            yield recorder
        except KeyboardInterrupt:
            recorder.status = "KILLED"
            raise
        finally:
            queue.put(EndParent(invocation, recorder.status))
            if queue.stop(timeout=END_SEND_S):
                _keep_parent(options, queue.parent_id(invocation), parent)
                complete = recorder.status == "FINISHED" and done(
                    {key for key, status in results.statuses().items() if status.finished})
                _mirror(recorder, sweep_complete=complete)
                # Run ids recorded by the mirror came after the tables' compaction at the experiment's end.
                recorder.parquet.writer.compact()
            else:
                log.info(f"MLflow is still behind: {queue.unsent()} write(s) wait in {queue.outbox.path}; they are "
                         f"sent on the next run of this sweep, or with `python -m kd_tune.recover sync "
                         f"{options.sweep_dir}` (the Parquet results are complete)")
            queue.close()


def _mirror(recorder: Recorder, *, sweep_complete: bool = False) -> None:
    """MLflow made whole from the results (refilled, stale runs ended) and the run ids
    recorded in the results; a store that fails meanwhile is left for the next run."""
    try:
        ids = recorder.mlflow.mirror(recorder.parquet.writer, sweep_complete=sweep_complete)
        recorder.parquet.writer.record_run_ids(ids)
    except Exception as err:  # MLflow is a view of the results: the sweep goes on without it
        log.info(f"could not check MLflow against the results ({str(err).splitlines()[0][:200]}); it is checked "
                 "again on the next run of this sweep")


def check_manifest(options: SweepOptions, wanted: Mapping[str, Any]) -> None:
    """A reused name must hold the same sweep, and float16 logits must not be mixed with float32.

    ``wanted`` is what :func:`write_manifest` will record: ``trials`` (trial key -> config)
    for a grid, ``search`` (its settings as plain values) for a search.
    """
    if not options.sweep_dir.is_file(MANIFEST):
        return
    recorded = options.sweep_dir.read_json(MANIFEST)
    where = f"sweep {options.name!r} in {options.storage}"
    again = "rerun it with the same flags to resume it, or pick another --name"
    if ("search" in recorded) != ("search" in wanted):
        kind = "a search" if "search" in recorded else "a grid"
        raise SweepError(f"{where} was started as {kind}; {again}")
    if "search" in wanted:
        before, now = recorded["search"], json.loads(json.dumps(wanted["search"]))
        changed = sorted(k for k in {*before, *now} if before.get(k) != now.get(k))
        if changed:
            raise SweepError(f"{where} was started with other search settings ({', '.join(changed)}); {again}")
    else:
        stored, keys = set(recorded["trials"]), set(wanted["trials"])
        if stored != keys:
            raise SweepError(f"{where} was started with other trials ({len(keys - stored)} new, "
                             f"{len(stored - keys)} left out); {again}")
    # float32 logits and the online teacher give the same students; float16 does not.
    before = recorded.get("teacher_cache", "off")
    if before != options.teacher_cache and "float16" in (before, options.teacher_cache):
        raise SweepError(
            f"sweep {options.name!r} started with --teacher-cache {before}, and float16 logits change "
            f"results; resume it with --teacher-cache {before}, or pick another --name"
        )


def _fit(options: SweepOptions, callback: Any, run: TuneRun, context: WorkerContext) -> Any:
    """Run the Tune experiment ``run``, or resume it when its folder holds one; return Tune's ResultGrid.

    ``context`` is what every trial is handed besides its config.
    """
    # Tune's own console table and default loggers are replaced by the sinks; the JSON
    # logger stays for Tune's own result bookkeeping.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback


    if run.report_epochs:
        context = dataclasses.replace(context, schedule=dataclasses.replace(context.schedule,
                                                                            report_epochs=run.report_epochs))
    trainable = tune.with_resources(
        tune.with_parameters(distill_trial, context=context),
        {"cpu": options.cpus_per_trial, "gpu": options.gpus_per_trial},
    )
    # Tune keeps its experiment state and checkpoints on the sweep's storage: a local path, or
    # an object store through a pyarrow file system (made from the environment's credentials,
    # so the pickles Tune writes carry none).
    filesystem = None if run.path.is_local else s3_filesystem(run.path)
    path = run.path.fs_path()
    if tune.Tuner.can_restore(path, storage_filesystem=filesystem):
        # Tune restores the searcher's state with the experiment (what it drew and learnt).
        tuner = tune.Tuner.restore(path, trainable=trainable, param_space=run.param_space or None,
                                   resume_unfinished=True, resume_errored=True, storage_filesystem=filesystem)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=run.param_space,
            tune_config=tune.TuneConfig(
                reuse_actors=True, trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
                # A searcher comes limited already (ConcurrencyLimiter); a grid is limited here.
                max_concurrent_trials=None if run.search_alg is not None else options.max_concurrent,
                search_alg=run.search_alg, scheduler=run.scheduler, num_samples=run.num_samples,
                metric=run.metric, mode="max" if run.metric else None,
            ),
            run_config=tune.RunConfig(
                name=run.path.name, storage_path=run.path.parent.fs_path(), storage_filesystem=filesystem,
                verbose=0, callbacks=[callback, JsonLoggerCallback()],
                failure_config=tune.FailureConfig(max_failures=options.max_failures),
                # Tune keeps every checkpoint while a trial runs: with num_to_keep it deletes
                # older ones before its saved state stops naming them, so a driver killed in
                # that window left a trial that could never resume ("checkpoint does not exist
                # on storage anymore"), and on an object store it forced a full upload of the
                # experiment folder every num_to_keep checkpoints. Finished trials are pruned
                # to their last checkpoint by prune_checkpoints.
                checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
            ),
        )
    return tuner.fit()


def _ended_by_itself(results: Any, total: int, callback: Any) -> bool:
    """Whether Tune ran the experiment to its end (not stopped by a Ctrl-C): it holds all
    ``total`` trials, each reported or errored (a Ctrl-C leaves waiting trials with neither)
    and ended through the adapter (trials running at a Ctrl-C are stopped without an end)."""
    return (len(results) == total and all(r.config is not None or r.error is not None for r in results)
            and not callback.open_trials)


def prune_checkpoints(experiment: Storage, trial_paths: Sequence[str]) -> int:
    """Remove all but the newest checkpoint of each finished trial (``trial_paths``: Tune's
    trial folders, their last part being the folder's name in ``experiment``); the number
    removed. Only finished trials (their rows recorded) are given: none resumes from an
    older checkpoint, and the newest lets Tune report a restarted trial's end again."""
    removed = 0
    for path in trial_paths:
        trial = experiment / str(path).rstrip("/").rsplit("/", 1)[-1]
        checkpoints = sorted(e.path for e in trial.list() if e.is_dir and e.path.startswith("checkpoint_"))
        for name in checkpoints[:-1]:
            trial.delete_dir(name)
            removed += 1
    return removed


def _counts(statuses: dict[str, TrialStatus], keys: list[str]) -> dict[str, int]:
    ended = (TrialStatus.COMPLETED, TrialStatus.DIVERGED, TrialStatus.STOPPED, TrialStatus.FAILED)
    counts = {**{status.value: 0 for status in ended}, "missing": 0}
    for key in keys:
        status = statuses.get(key)
        counts[status.value if status is not None else "missing"] += 1
    return counts


def concurrency(info: ClusterInfo, options: SweepOptions) -> int:
    """How many trials run at once: what the cluster holds, at most ``--max-concurrent``."""
    fit = concurrent_trials(info, cpus_per_trial=options.cpus_per_trial, gpus_per_trial=options.gpus_per_trial)
    return min(fit, options.max_concurrent) if options.max_concurrent else fit


__all__ = ["Recorder", "SweepError", "SweepOptions", "SweepOutcome", "TuneRun", "check_manifest", "check_options",
           "concurrency", "connect_checked", "load_plan_data", "prepare", "recording", "run_sweep", "write_manifest"]
