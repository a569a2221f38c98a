"""The driver's two stages before the trials: teachers trained once, their logits cached once.

Both run as Ray tasks with one trial's resources (on a GPU where trials get one), in
parallel as far as the cluster allows, and both read what to do from the plan: the
distinct teacher nodes of distilling trials (:attr:`kd_tune.plan.planner.Plan.teacher_nodes`:
every node of each teacher's DAG, in dependency order), and the distinct teacher-logit
cache keys. A node's task is handed the tasks of its sources as arguments, so Ray runs
it once they are done: the steps of a chain one after the other, independent branches
(an ensemble's members, two chains) at the same time. What exists already (in the
teacher store, in the cache) is reused, by every later sweep too. The task functions
(in :mod:`kd_tune.sweep.trainable`) run in workers and take the invocation's
:class:`~kd_tune.sweep.context.WorkerContext` (where the stores are) and plain values.

Both check what they reuse before a trial uses it: a stored teacher whose file does not
hold the weights its record names (an ensemble: whose members changed), and a cache
whose files do not match their record
(:meth:`kd_tune.teachers.logit_cache.LogitCache.problem`), are derived data: a warning names the
path, and they are removed and made again. A teacher no better than chance
is kept, with a warning.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from kd_tune.plan.planner import Plan
from kd_tune.sweep.context import WorkerContext
from kd_tune.sweep.options import SweepOptions
from kd_tune.sweep.trainable import BUILT_ELSEWHERE, build_logits_task, train_teacher_task
from kd_tune.teachers.logit_cache import intact_meta
from kd_tune.teachers.store import TeacherError, TeacherStore, at_chance

# Ray is imported inside the functions that use it: `import ray` costs 0.5 CPU-s and Ray Tune
# 1.6 CPU-s (measured on a 2-core machine), which the driver's checks, --dry-run and a refused
# command line do without.

log = logging.getLogger(__name__)

PROGRESS_S = 30.0  # how often the stages report work in progress


def ensure_teachers(plan: Plan, store: TeacherStore, options: SweepOptions,
                    context: WorkerContext) -> dict[str, dict[str, Any]]:
    """Make sure every teacher node the plan's distilling trials need is in ``store``, intact and
    with its end measurements; return their records (key -> record, in dependency order).

    Every stored teacher a trial of the plan may load is verified first (CE trials load
    theirs for the agreement metrics): a damaged one is discarded, and trained again
    when a distilling trial needs it. A warning names each damaged teacher and each needed
    teacher at chance accuracy (:func:`~kd_tune.teachers.store.at_chance`). Raises
    :class:`TeacherError` when a teacher cannot be trained.
    """
    needed = plan.teacher_nodes
    for key in dict.fromkeys([*needed, *(t.teacher_key for t in plan.trials)]):
        problem = store.verify(key) if store.has(key) else None
        if problem is not None:
            log.warning(f"{problem}; " + ("training it again" if key in needed else
                                           "removed from the store (this sweep does not need it)"))
            store.discard(key)
    missing = {k for k in needed if not store.has(k)}
    # Teachers stored before kd-tune measured them are measured once, not trained again.
    unmeasured = {k for k in needed if store.has(k) and not store.has_measurements(k)}
    log.info(f"teachers: {len(needed)} needed, {len(needed) - len(missing)} in the store, {len(missing)} to train"
             + (f", {len(unmeasured)} to measure" if unmeasured else ""))
    task = _task(train_teacher_task, options)
    refs: dict[str, Any] = {}
    for key, node in needed.items():  # dependency order: a node's sources have their tasks already
        if key in missing or key in unmeasured:
            after = [refs[source] for source in node.sources if source in refs]
            refs[key] = task.remote(context, node.to_dict(), *after)
    pending = {ref: key for key, ref in refs.items()}

    def still_training(key: str) -> None:
        done = store.progress(key)
        if done is not None:
            acc = "" if done["test_acc"] is None else f", test acc {100 * done['test_acc']:.2f}%"
            log.info(f"teacher {needed[key].spec} ({key}): epoch {done['epoch']}/{done['epochs']}{acc}")

    def trained(key: str, meta: dict[str, Any]) -> None:
        node = needed[key]
        if key in unmeasured:
            log.info(f"teacher {node.spec} ({key}) measured on the test set")
            return
        how = "trained by another sweep meanwhile" if meta.get(BUILT_ELSEWHERE) else \
            "trained" if node.trains else "made (mean of its members' logits)"
        log.info(f"teacher {node.spec} ({key}) {how}: test acc {100 * meta['metrics']['test_acc']:.2f}% "
                 f"in {meta['train_seconds']:.1f}s")

    def failed(key: str, cause: BaseException) -> None:
        raise TeacherError(f"training teacher {needed[key].spec} ({key}) failed: {cause}") from None

    _await_tasks(pending, on_done=trained, on_wait=still_training, on_error=failed)
    records = {k: store.meta(k) for k in needed}
    for record in records.values():
        chance = at_chance(record)
        if chance is not None:
            log.warning(chance)
    return records


def ensure_teacher_logits(plan: Plan, store: TeacherStore, options: SweepOptions,
                          context: WorkerContext) -> dict[str, dict[str, Any]]:
    """Fill the teacher-logit cache once per cache key of the plan; return the metas that exist.

    Every teacher must be in ``store``. Existing caches are checked here, on the driver's
    node, checksum included (with the invocation's check token, so that trials on this
    node do not check again); a stale or damaged one is removed (a warning says why) and
    built again. A build that fails is reported and not fatal: the trials that need it
    try again themselves, and fail and are recorded one by one if it still fails.
    """
    cache = context.logit_cache()
    needed = plan.caches()
    missing = {k: t for k, t in needed.items() if intact_meta(t, store, cache) is None}
    log.info(f"teacher logits ({options.teacher_cache}): {len(needed)} view set(s) needed, "
             f"{len(needed) - len(missing)} cached, {len(missing)} to compute")
    task = _task(build_logits_task, options)
    pending = {task.remote(context, t.to_dict()): k for k, t in missing.items()}

    def built(key: str, meta: dict[str, Any]) -> None:
        views, samples, classes = meta["train_shape"]
        how = ", computed by another sweep meanwhile" if meta.get(BUILT_ELSEWHERE) else ""
        log.info(f"teacher logits {key} (teacher {needed[key].teacher}): {views} view(s) x {samples} samples x "
                 f"{classes} classes, {meta['bytes'] / 1e6:.1f} MB, in {meta['build_seconds']:.1f}s{how}")

    def failed(key: str, cause: BaseException) -> None:
        log.info(f"teacher logits {key} (teacher {needed[key].teacher}) could not be computed: {cause}; "
                 "its trials will try again")

    _await_tasks(pending, on_done=built, on_wait=lambda key: log.info(f"teacher logits {key}: computing"),
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
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=PROGRESS_S)
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
