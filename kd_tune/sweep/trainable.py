"""Worker-side entry points: the Ray Tune trainable and the tasks of the teacher and cache stages.

The trainable is a thin adapter from one planned trial to :func:`kd_tune.train.trainer.train`.
A trial's Tune config is ``{"trial": Trial.to_dict()}`` (:mod:`kd_tune.plan.planner`): every key
it needs (teacher, cache, data) was computed by the planner and is read, not recomputed.
The trainable reports its epochs' metrics through ``ray.tune.report`` together with
``kd_status``, the status the trainer decided for the last of them (``running``,
``completed`` or ``diverged``), several epochs in one report (``kd_epochs``) and a
checkpoint now and then as the invocation's :class:`~kd_tune.sweep.reports.ReportSchedule`
says, the last epoch always with a checkpoint; it resumes from ``ray.tune.get_checkpoint()``
after a failure or a restored sweep. A checkpoint of the last epoch makes a restarted
trial report its final metrics again without training. The last report also carries
``kd_timing`` (:class:`~kd_tune.sweep.reports.TrialTiming`: where the trial's time went).

The last report of a completed trial also carries its :class:`~kd_tune.results.trial_end.TrialEnd`
(under ``kd_end``): the trainer's end-of-run test measurements, with the penultimate
features of the test samples of ``feature_classes`` only, the hash of its training
labels, and with ``log_models`` its final weights. The driver's sinks write them.

A distilling trial takes the teacher's outputs from the teacher-logit cache
(:mod:`kd_tune.teachers.logit_cache`, memory-mapped, built by the driver's cache stage and, if it
is missing, by the trial) when its plan names a cache; otherwise it runs the teacher
online.

Teachers and caches are shared by every sweep in the storage: the tasks that make them
hold a lock per key (:mod:`kd_tune.storage.store_lock`: a flock on a local folder, a lease on an
object store), so two sweeps that need the same one at once build it once, the other
waiting for it; the record a task returns then says ``built_by_another_sweep``.

Where things are (the teacher store, the cache, the noisy labels, this node's copies
folder) and how trials checkpoint and report come in one
:class:`~kd_tune.sweep.context.WorkerContext`, the same for every trial and task of an
invocation.

Fixed cost per trial is kept low for actor reuse: the data set, the teacher and the
cached logits are held in the worker process (a few entries, keyed by what identifies
them), so a reused actor loads them once, not once per trial.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import torch

from kd_tune.core.config import RunConfig
from kd_tune.core.runtime import use_threads
from kd_tune.core.status import STATUS_KEY, TrialStatus
from kd_tune.plan.planner import Trial
from kd_tune.plan.teacher_dag import TeacherNode
from kd_tune.results.trial_end import END_KEY, TrialEnd
from kd_tune.storage.store_lock import storage_held
from kd_tune.sweep.context import WorkerContext
from kd_tune.sweep.reports import EPOCHS_KEY, TIMING_KEY, TrialReports, TrialTiming
from kd_tune.teachers.logit_cache import LogitCache, ensure_cached
from kd_tune.teachers.store import TeacherError, TeacherStore
from kd_tune.teachers.training import TEACHER_FORMAT
from kd_tune.train.checkpoint import load_state, save_state
from kd_tune.train.measurements import EndMeasurements
from kd_tune.train.trainer import EpochEnd, load_data, train

# Ray is imported inside the functions that use it: `import ray` costs 0.5 CPU-s and Ray Tune
# 1.6 CPU-s (measured on a 2-core machine), which the driver's checks, --dry-run and a refused
# command line do without.

STATE_FILE = "state.pt"
BUILT_ELSEWHERE = "built_by_another_sweep"
_CACHE_ENTRIES = 3

T = TypeVar("T")
_held: dict[str, OrderedDict[Hashable, Any]] = {"data": OrderedDict(), "teacher": OrderedDict(),
                                                 "logits": OrderedDict()}


def distill_trial(config: dict[str, Any], *, context: WorkerContext) -> None:
    """Run one planned sweep trial (called by Ray Tune in a worker); ``context`` is the invocation's."""
    from ray import tune

    started = time.perf_counter()
    timing = TrialTiming()
    trial = Trial.from_dict(config["trial"])
    run = trial.config.replace(device=assigned_device(trial.config.device))
    use_threads(run_threads(run))
    data = _held_or_load("data", trial.data_key, lambda: load_data(run, noise_dir=context.noise_dir))
    store = context.teacher_store()
    teacher = logits = None
    if trial.cache_key is not None:
        cache = context.logit_cache()
        meta = _cached_once(trial, data, store, cache, run.device)
        # Held per build: a cache rebuilt during the sweep is mapped afresh, not served from the old map.
        logits = _held_or_load("logits", (str(context.logits_dir), trial.cache_key, meta["created_at"]),
                               lambda: cache.load(trial.cache_key))
    elif trial.distils or store.has(trial.teacher_key):
        # A CE trial with a stored teacher reports its agreement with it; it does without a damaged one.
        try:
            teacher, _ = _held_or_load("teacher", (trial.teacher_key, run.device),
                                       lambda: store.load(trial.teacher_key, data))
        except TeacherError:
            if trial.distils:
                raise

    def trial_end(measurements: EndMeasurements, weights: Callable[[], dict[str, torch.Tensor]]) -> TrialEnd:
        began = time.perf_counter()
        record = None
        if context.log_models:
            # The teacher file format: a logged student can be distilled from (--teacher-checkpoint).
            record = {"format": TEACHER_FORMAT, "arch": run.student, "num_classes": data.num_classes,
                      "in_channels": data.in_channels, "config": trial.config.to_dict(),
                      # numpy, not tensors: Ray Tune refuses tensors in reported results.
                      "model": {k: v.detach().cpu().numpy() for k, v in weights().items()}}
        end = TrialEnd(measurements.of_classes(context.feature_classes), data.noise_hash, record)
        timing.end_s += time.perf_counter() - began
        return end

    def last(report: dict[str, Any]) -> dict[str, Any]:
        """``report`` as the trial's last: with where its time went."""
        timing.wall_s = time.perf_counter() - started
        return {**report, TIMING_KEY: dataclasses.asdict(timing)}

    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume = load_state(os.path.join(folder, STATE_FILE))
        if resume["epoch"] >= run.epochs:
            # The trial had finished; the driver may not have recorded it before it stopped.
            # Training from the final state runs no epoch; it measures the final weights again.
            result = train(run, data=data, teacher=teacher, teacher_logits=logits, resume_state=resume)
            timing.setup_s = time.perf_counter() - started
            tune.report(last({**result.final, STATUS_KEY: TrialStatus.COMPLETED.value,
                              END_KEY: trial_end(result.measurements, result.model.state_dict)}))
            return
    reports = TrialReports(context.schedule, resumed_epoch=int(resume["epoch"]) if resume else 0)
    timing.setup_s = time.perf_counter() - started

    def on_epoch(end: EpochEnd) -> None:
        report_now, checkpoint = reports.epoch(end.metrics, end.status)
        if not report_now:
            return
        report = {**end.metrics, STATUS_KEY: end.status.value, EPOCHS_KEY: reports.take()}
        if end.measurements is not None:
            report[END_KEY] = trial_end(end.measurements, lambda: end.state()["model"])
        if end.status.ended:
            report = last(report)
        began = time.perf_counter()
        if not checkpoint:
            tune.report(report)
            timing.reports_s += time.perf_counter() - began
            timing.reports += 1
            return
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, STATE_FILE)
            save_state(path, end.state())
            timing.checkpoint_bytes += os.path.getsize(path)
            tune.report(report, checkpoint=tune.Checkpoint.from_directory(folder))
        timing.checkpoints_s += time.perf_counter() - began
        timing.checkpoints += 1

    train(run, data=data, teacher=teacher, teacher_logits=logits, on_epoch=on_epoch, resume_state=resume)


def train_teacher_task(context: WorkerContext, node: dict[str, Any], *after: Any) -> dict[str, Any]:
    """Make one teacher node into the store (a Ray task of the teacher stage), or only measure
    it when the store has it without measurements; return its record.

    ``node`` is :meth:`TeacherNode.to_dict`; ``after`` are the records of the tasks that
    made its sources (Ray runs this task once they are done; their values are not used).
    """
    planned = TeacherNode.from_dict(node)
    planned = dataclasses.replace(planned, run=planned.run.replace(device=assigned_device(planned.run.device)))
    use_threads(run_threads(planned.run))
    store = context.teacher_store()
    with store.building(planned.key):
        if not store.has(planned.key):
            return store.train(planned, noise_dir=context.noise_dir)
        if not store.has_measurements(planned.key):
            return store.measure(planned, noise_dir=context.noise_dir)
        return {**store.meta(planned.key), BUILT_ELSEWHERE: True}


def build_logits_task(context: WorkerContext, trial: dict[str, Any]) -> dict[str, Any]:
    """Fill the teacher-logit cache of one planned trial (a Ray task of the cache stage); return the cache's meta.

    A cache built on an object store stays on this node as its copy (``context.local_cache``).
    """
    planned = Trial.from_dict(trial)
    device = assigned_device(planned.config.device)
    use_threads(run_threads(planned.config))
    data = load_data(planned.config, noise_dir=context.noise_dir)
    return _cached_once(planned, data, context.teacher_store(), context.logit_cache(), device)


def _cached_once(trial: Trial, data: Any, store: TeacherStore, cache: LogitCache, device: str) -> dict[str, Any]:
    """:func:`ensure_cached` under the cache key's lock: one builder per key across sweeps.

    On an object store an intact cache is used without the lock (the lease is a few
    requests to the store, and a node's first fetch of a large cache would otherwise
    hold every other node's trials): only a missing or damaged one is built under it.
    """
    key = trial.cache_key
    if not cache.storage.is_local and cache.has(key):
        with contextlib.suppress(OSError, ValueError):  # removed or rebuilt meanwhile: see under the lock
            if cache.problem(key, teacher_sha256=store.weights_digest(trial.teacher_key)) is None:
                return {**cache.meta(key), BUILT_ELSEWHERE: True}
    with storage_held(cache.storage, key, f"teacher logits {key}"):
        existed = cache.has(trial.cache_key)
        meta = ensure_cached(trial, data, store, cache, device=device)
    return {**meta, BUILT_ELSEWHERE: True} if existed else meta


def assigned_device(device: str) -> str:
    """A worker's device for a run's ``device`` setting: as set, or for ``auto`` the GPU
    Ray assigned to this worker when there is one, else the CPU."""
    if device != "auto":
        return device
    import ray

    return "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"


def run_threads(config: RunConfig) -> int:
    """The CPU threads a worker runs ``config`` at: the count the driver planned
    (:meth:`~kd_tune.sweep.options.SweepOptions.with_threads`), or for a trial planned
    without one (a sweep started before the count was recorded) its CPU share, at least 1,
    never every core of the node."""
    if config.threads is not None:
        return config.threads
    import ray

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    return max(1, int(cpus))


def _held_or_load(kind: str, key: Hashable, load: Callable[[], T]) -> T:
    """The worker's held ``kind`` entry for ``key``, loading it on a miss (a small LRU)."""
    held = _held[kind]
    if key in held:
        held.move_to_end(key)
        return held[key]
    value = load()
    held[key] = value
    while len(held) > _CACHE_ENTRIES:
        held.popitem(last=False)
    return value
