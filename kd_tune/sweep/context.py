"""What a sweep's workers need besides their trial: one small object, made once per invocation.

The driver makes a :class:`WorkerContext` from the sweep's options when an invocation
starts and hands the same one to every trial (through ``tune.with_parameters``) and to
every teacher and cache task. It holds places (the teacher store, the teacher-logit
cache, the noisy labels), the node-local copies folder, the invocation's check token and
how trials checkpoint and report; a worker asks it for its stores instead of being
handed each value through a chain of calls.

Places travel as a local absolute path (a string) or, on an object store, as its
:class:`~kd_tune.storage.location.Storage`, which pickles without credentials and keeps a
``--storage-endpoint`` (a bare URI would lose it); workers read credentials from their own
environment.
"""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Any

from kd_tune.storage.location import Storage, open_storage
from kd_tune.sweep.options import SweepOptions
from kd_tune.sweep.reports import ReportSchedule
from kd_tune.teachers.logit_cache import LogitCache
from kd_tune.teachers.store import TeacherStore

Where = str | Storage  # a local absolute path, or an object store's Storage


def location(where: str | os.PathLike | Storage | None) -> Where | None:
    """What a worker is told of a place (a path, a URI string or a Storage): a local absolute path
    as a string, an object store's location as its :class:`~kd_tune.storage.location.Storage`;
    workers :func:`~kd_tune.storage.location.open_storage` either."""
    if where is None:
        return None
    storage = open_storage(where)
    return str(storage) if storage.is_local else storage


def local_cache_of(options: Any) -> str | None:
    """The node-local copies folder the sweep names (``options.local_cache``), as a string; None: the default."""
    folder = getattr(options, "local_cache", None)
    return None if folder is None else str(folder)


@dataclass(frozen=True)
class WorkerContext:
    """Everything a trial or a stage task needs besides its own trial or teacher node.

    ``teachers_dir``, ``logits_dir``, ``noise_dir``: the teacher store, the teacher-logit
    cache and the folder of persisted noisy labels (see :func:`location`). ``local_cache``:
    this node's folder of copies of an object store's caches (None:
    :func:`~kd_tune.storage.local_copies.default_local_cache`). ``check_token``: drawn once
    per invocation; a cached-logit checksum is read once per node and token
    (:meth:`~kd_tune.teachers.logit_cache.LogitCache.problem`). ``schedule``: when a trial
    reports and checkpoints (:mod:`kd_tune.sweep.reports`). ``feature_classes``:
    the classes whose penultimate features a completed trial sends; ``log_models``:
    whether it sends its final weights.
    """

    teachers_dir: Where
    logits_dir: Where
    noise_dir: Where | None
    local_cache: str | None = None
    check_token: str | None = None
    schedule: ReportSchedule = ReportSchedule()
    feature_classes: tuple[int, ...] = (0, 1, 2)
    log_models: bool = False

    @classmethod
    def of(cls, options: SweepOptions, check_token: str | None = None) -> WorkerContext:
        """The context of one invocation of the sweep ``options`` describe (a new token if none is given)."""
        return cls(teachers_dir=location(options.teachers_dir), logits_dir=location(options.logits_dir),
                   noise_dir=location(options.noise_dir), local_cache=local_cache_of(options),
                   check_token=check_token or uuid.uuid4().hex, schedule=options.schedule,
                   feature_classes=tuple(options.feature_classes), log_models=options.log_models)

    def teacher_store(self) -> TeacherStore:
        """The teacher store, opened in this process."""
        return TeacherStore(self.teachers_dir)

    def logit_cache(self) -> LogitCache:
        """The teacher-logit cache, opened in this process with this node's copies and the check token."""
        return LogitCache(self.logits_dir, local_cache=self.local_cache, check_token=self.check_token)
