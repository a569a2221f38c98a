"""The driver's two stages before the trials: teachers trained once, their logits cached once.

Both run as Ray tasks with one trial's resources (on a GPU where trials get one), in
parallel as far as the cluster allows, and both read what to do from the plan: the
distinct teacher keys of distilling trials, and the distinct teacher-logit cache keys.
What exists already (in the teacher store, in the cache) is reused, by every later
sweep too. The task functions (in :mod:`kd_tune.trainable`) run in workers and take
plain values only.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kd_tune.logit_cache import LogitCache
from kd_tune.plan import Plan
from kd_tune.sweep_options import SweepOptions
from kd_tune.teacher_store import TeacherError, TeacherStore
from kd_tune.trainable import BUILT_ELSEWHERE, build_logits_task, train_teacher_task

PROGRESS_S = 30.0  # how often the stages report work in progress


def ensure_teachers(plan: Plan, store: TeacherStore, options: SweepOptions,
                    *, log: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Make sure every teacher the plan's distilling trials need is in ``store``; return their records.

    Raises :class:`TeacherError` when a teacher cannot be trained.
    """
    needed = plan.teachers()
    missing = {k: t for k, t in needed.items() if not store.has(k)}
    log(f"teachers: {len(needed)} needed, {len(needed) - len(missing)} in the store, {len(missing)} to train")
    pending = {_task(train_teacher_task, options).remote(str(store.root), k, t.config.to_dict(),
                                                         str(options.noise_dir)): k
               for k, t in missing.items()}

    def still_training(key: str) -> None:
        done = store.progress(key)
        if done is not None:
            acc = "" if done["test_acc"] is None else f", test acc {100 * done['test_acc']:.2f}%"
            log(f"teacher {needed[key].teacher} ({key}): epoch {done['epoch']}/{done['epochs']}{acc}")

    def trained(key: str, meta: dict[str, Any]) -> None:
        how = "trained by another sweep meanwhile" if meta.get(BUILT_ELSEWHERE) else "trained"
        log(f"teacher {needed[key].teacher} ({key}) {how}: test acc {100 * meta['metrics']['test_acc']:.2f}% "
            f"in {meta['train_seconds']:.1f}s")

    def failed(key: str, cause: BaseException) -> None:
        raise TeacherError(f"training teacher {key} failed: {cause}") from None

    _await_tasks(pending, on_done=trained, on_wait=still_training, on_error=failed)
    return {k: store.meta(k) for k in needed}


def ensure_teacher_logits(plan: Plan, store: TeacherStore, options: SweepOptions,
                          *, log: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Fill the teacher-logit cache once per cache key of the plan; return the metas that exist.

    Every teacher must be in ``store``. A build that fails is reported and not fatal: the
    trials that need it try again themselves, and fail and are recorded one by one if it
    still fails.
    """
    cache = LogitCache(options.logits_dir)
    needed = plan.caches()
    missing = {k: t for k, t in needed.items() if not cache.has(k)}
    log(f"teacher logits ({options.teacher_cache}): {len(needed)} view set(s) needed, "
        f"{len(needed) - len(missing)} cached, {len(missing)} to compute")
    pending = {_task(build_logits_task, options).remote(str(store.root), str(cache.root), t.to_dict(),
                                                        str(options.noise_dir)): k
               for k, t in missing.items()}

    def built(key: str, meta: dict[str, Any]) -> None:
        views, samples, classes = meta["train_shape"]
        how = ", computed by another sweep meanwhile" if meta.get(BUILT_ELSEWHERE) else ""
        log(f"teacher logits {key} (teacher {needed[key].teacher}): {views} view(s) x {samples} samples x "
            f"{classes} classes, {meta['bytes'] / 1e6:.1f} MB, in {meta['build_seconds']:.1f}s{how}")

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
