"""The MLflow writes of a sweep: one frozen dataclass per kind of write, one handler per dataclass.

A sink says what it wants written by building a write (e.g. :class:`StartTrial`) and
putting it in the sweep's :class:`~kd_tune.tracking.queue.TrackingQueue`; the queue keeps
it as one JSON line of its outbox (:meth:`Write.to_json`) and its sending thread reads it
back (:func:`from_json`) and hands it to :func:`send`, which calls
:class:`~kd_tune.tracking.tracker.SweepTracker`. A new kind of write is one dataclass here
(a subclass of :class:`Write` with its ``op``) and one ``@send.register`` handler below it.

The JSON line of a write is ``{"op": OP, KEY: VALUE, ...}``, its fields in order, each under
the key its field's metadata names (``inv``, ``key``, ...: the outbox's format since the
first kd-tune with an outbox, which these classes read and write unchanged). A field's
``convert`` makes its value plain JSON when the write is made (a copy of a mapping, a
path as text), so a write read back from its line equals the write that was put.

Writes name trials by trial key and parent runs by invocation id, never by MLflow run id
(unknown until the run exists); :class:`RunIds` resolves them while sending.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from kd_tune.core.clock import now_ms
from kd_tune.core.status import TrialStatus
from kd_tune.tracking.tracker import SweepTracker

WRITES: dict[str, type[Write]] = {}  # op -> its dataclass


def _field(key: str | None = None, convert: Callable[[Any], Any] | None = None, **options: Any) -> Any:
    """A write's field, kept under JSON ``key`` (default: its name), made plain by ``convert``."""
    return field(metadata={"key": key, "convert": convert}, **options)


def _mapping(value: Mapping[str, Any] | None) -> dict[str, Any]:
    return dict(value or {})


def _plain(value: Any) -> Any:
    """``value`` as JSON reads it back (anything JSON cannot hold as its text)."""
    return json.loads(json.dumps(value, default=str))


def _numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numeric values of ``metrics`` as floats (text, None and booleans left out)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _texts(values: Sequence[Any]) -> list[str]:
    return [str(v) for v in values]


@dataclass(frozen=True)
class Write:
    """One MLflow write of the outbox; subclasses name their ``op``."""

    op: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "op" in cls.__dict__:
            assert cls.op not in WRITES, f"two writes named {cls.op!r}"
            WRITES[cls.op] = cls

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.metadata.get("convert") is not None:
                object.__setattr__(self, f.name, f.metadata["convert"](getattr(self, f.name)))

    def to_json(self) -> dict[str, Any]:
        """The outbox record: ``{"op": ..., key: value, ...}``."""
        return {"op": self.op, **{_key(f): getattr(self, f.name) for f in dataclasses.fields(self)}}


def _key(f: dataclasses.Field) -> str:
    return f.metadata.get("key") or f.name


def from_json(record: Mapping[str, Any]) -> Write:
    """The write an outbox record holds (keys the write has defaults for may be missing).

    Raises ValueError for a record of an unknown kind."""
    kind = WRITES.get(record.get("op"))  # type: ignore[arg-type]
    if kind is None:
        raise ValueError(f"unknown tracking write {record.get('op')!r}")
    return kind(**{f.name: record[_key(f)] for f in dataclasses.fields(kind) if _key(f) in record})


class RunIds:
    """What the sender learned of MLflow: trial key -> run id, invocation -> parent run id."""

    def __init__(self) -> None:
        self.trials: dict[str, str] = {}
        self.parents: dict[str, str] = {}

    def trial(self, tracker: SweepTracker, trial_key: str) -> str | None:
        """The run of a trial: the one started here, else its latest (started by an earlier process)."""
        if trial_key not in self.trials:
            found = tracker.find_trial_run(trial_key)
            if found is None:
                return None
            self.trials[trial_key] = found
        return self.trials[trial_key]

    def use_parent(self, tracker: SweepTracker, invocation: str) -> bool:
        """Make the parent run of ``invocation`` the tracker's current parent; False when it has none."""
        parent = self.parents.get(invocation) or tracker.find_parent(invocation)
        if parent is None:
            return False
        self.parents[invocation] = tracker.parent_id = parent
        return True


@functools.singledispatch
def send(write: Write, tracker: SweepTracker, ids: RunIds) -> None:
    """Make ``write`` in MLflow through ``tracker`` (one handler per kind of write)."""
    raise TypeError(f"no handler for the tracking write {type(write).__name__}")


# -- the parent run -------------------------------------------------------------------------


@dataclass(frozen=True)
class StartParent(Write):
    """Open the parent run of ``invocation`` (see :meth:`SweepTracker.start_parent`)."""

    op: ClassVar[str] = "parent"
    invocation: str = _field("inv")
    run_name: str = _field("name")
    params: Mapping[str, Any] = _field(convert=_mapping)
    tags: Mapping[str, str] = _field(convert=_mapping)


@send.register
def _(write: StartParent, tracker: SweepTracker, ids: RunIds) -> None:
    ids.parents[write.invocation] = tracker.start_parent(write.run_name, write.params, write.tags,
                                                         invocation=write.invocation)


@dataclass(frozen=True)
class LogTable(Write):
    """A table (``columns``, ``rows``) as the MLflow table artifact ``name`` of the parent run."""

    op: ClassVar[str] = "table"
    invocation: str = _field("inv")
    columns: Sequence[str] = _field(convert=list)
    rows: Sequence[Sequence[Any]] = _field(convert=lambda rows: [list(r) for r in rows])
    name: str = _field()


@send.register
def _(write: LogTable, tracker: SweepTracker, ids: RunIds) -> None:
    if ids.use_parent(tracker, write.invocation):
        # Not at the top: pandas takes 0.3-0.5 s to import (measured, 2 busy cores); mlflow has
        # imported it by the time a write is sent, so this costs nothing, and importing this
        # module (every sweep command does) stays free of it.
        import pandas as pd

        tracker.log_table(tracker.parent_id, pd.DataFrame(write.rows, columns=write.columns), write.name)


@dataclass(frozen=True)
class LogParentValues(Write):
    """Params and metrics of the parent run (e.g. the best setting)."""

    op: ClassVar[str] = "values"
    invocation: str = _field("inv")
    params: Mapping[str, Any] = _field(convert=_mapping)
    metrics: Mapping[str, float] = _field(convert=_mapping)


@send.register
def _(write: LogParentValues, tracker: SweepTracker, ids: RunIds) -> None:
    if ids.use_parent(tracker, write.invocation):
        tracker.log_values(tracker.parent_id, params=write.params, metrics=write.metrics)


@dataclass(frozen=True)
class LogArtifacts(Write):
    """Files as artifacts of the parent run, under ``artifact_dir`` (files gone meanwhile are skipped)."""

    op: ClassVar[str] = "artifacts"
    invocation: str = _field("inv")
    paths: Sequence[str | Path] = _field(convert=_texts)
    artifact_dir: str = _field("dir", default="tables")


@send.register
def _(write: LogArtifacts, tracker: SweepTracker, ids: RunIds) -> None:
    if ids.use_parent(tracker, write.invocation):
        tracker.log_artifacts([Path(p) for p in write.paths if Path(p).is_file()], write.artifact_dir)


@dataclass(frozen=True)
class EndParent(Write):
    """End the parent run of ``invocation`` with ``status`` (MLflow's: FINISHED, KILLED, ...)."""

    op: ClassVar[str] = "end_parent"
    invocation: str = _field("inv")
    status: str = _field()
    metrics: Mapping[str, float] | None = _field(convert=_mapping, default=None)


@send.register
def _(write: EndParent, tracker: SweepTracker, ids: RunIds) -> None:
    if ids.use_parent(tracker, write.invocation):
        tracker.end_parent(write.status, write.metrics)


# -- trial runs -----------------------------------------------------------------------------


@dataclass(frozen=True)
class StartTrial(Write):
    """The child run of a trial (see :meth:`SweepTracker.start_trial`); ``metrics`` are logged at
    step 0 when the run is made (not when it is continued)."""

    op: ClassVar[str] = "trial"
    invocation: str = _field("inv")
    trial_key: str = _field("key")
    run_name: str = _field("name")
    params: Mapping[str, Any] = _field(convert=_mapping)
    tags: Mapping[str, str] = _field(convert=_mapping)
    metrics: Mapping[str, float] | None = _field(convert=_mapping, default=None)


@send.register
def _(write: StartTrial, tracker: SweepTracker, ids: RunIds) -> None:
    ids.use_parent(tracker, write.invocation)
    ids.trials[write.trial_key] = tracker.start_trial(write.trial_key, write.run_name, write.params, write.tags,
                                                      write.metrics, invocation=write.invocation)


@dataclass(frozen=True)
class LogEpoch(Write):
    """One epoch's metrics (numbers only) of a trial, at the time it was reported (ms)."""

    op: ClassVar[str] = "epoch"
    trial_key: str = _field("key")
    metrics: Mapping[str, float] = _field(convert=_numbers)
    reported_ms: int = _field("t", default_factory=now_ms)


@dataclass(frozen=True)
class Epochs(Write):
    """Consecutive :class:`LogEpoch` writes of one trial, sent as one request (made by the
    sender, never stored)."""

    trial_key: str
    epochs: Sequence[LogEpoch]


@send.register
def _(write: Epochs, tracker: SweepTracker, ids: RunIds) -> None:
    run_id = ids.trial(tracker, write.trial_key)
    if run_id is not None:
        tracker.log_epochs(run_id, [(e.metrics, e.reported_ms) for e in write.epochs])


@send.register
def _(write: LogEpoch, tracker: SweepTracker, ids: RunIds) -> None:
    send(Epochs(write.trial_key, (write,)), tracker, ids)


@dataclass(frozen=True)
class LogDataset(Write):
    """A data set as an input of the trial's run (see :meth:`SweepTracker.log_dataset`)."""

    op: ClassVar[str] = "dataset"
    trial_key: str = _field("key")
    name: str = _field()
    digest: str = _field()
    source: Mapping[str, Any] = _field(convert=_plain)
    profile: Mapping[str, Any] = _field(convert=_mapping)


@send.register
def _(write: LogDataset, tracker: SweepTracker, ids: RunIds) -> None:
    run_id = ids.trial(tracker, write.trial_key)
    if run_id is not None:
        tracker.log_dataset(run_id, write.name, write.digest, write.source, write.profile)


@dataclass(frozen=True)
class LogFile(Write):
    """A file of the queue's ``files/`` folder as an artifact of the trial's run, under
    ``artifact_dir``; the file is removed once sent."""

    op: ClassVar[str] = "file"
    trial_key: str = _field("key")
    path: str | Path = _field(convert=str)
    artifact_dir: str = _field("dir")


@send.register
def _(write: LogFile, tracker: SweepTracker, ids: RunIds) -> None:
    run_id, path = ids.trial(tracker, write.trial_key), Path(write.path)
    if run_id is not None and path.is_file():
        tracker.log_file(run_id, path, write.artifact_dir)
    path.unlink(missing_ok=True)


@dataclass(frozen=True)
class EndTrial(Write):
    """End a trial's run with its status (see :meth:`SweepTracker.end_trial`); ``metrics`` at ``step``."""

    op: ClassVar[str] = "end"
    trial_key: str = _field("key")
    status: TrialStatus | str = _field(convert=lambda status: TrialStatus(status).value)
    tags: Mapping[str, str] | None = _field(convert=_mapping, default=None)
    metrics: Mapping[str, float] | None = _field(convert=_mapping, default=None)
    step: int = _field(default=0)


@send.register
def _(write: EndTrial, tracker: SweepTracker, ids: RunIds) -> None:
    run_id = ids.trial(tracker, write.trial_key)
    if run_id is not None:
        tracker.end_trial(run_id, TrialStatus(write.status), write.tags, metrics=write.metrics, step=write.step)


# -- teacher runs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordTeacher(Write):
    """A teacher's whole run (tag ``kd_tune.role=teacher``) under the invocation's parent: its
    per-epoch ``history``, final ``metrics`` at ``step`` and its data set (:class:`LogDataset`'s
    fields); a teacher that has a run already is only moved there."""

    op: ClassVar[str] = "teacher"
    invocation: str = _field("inv")
    teacher_key: str = _field("tkey")
    run_name: str = _field("name")
    params: Mapping[str, Any] = _field(convert=_mapping)
    history: Sequence[Mapping[str, Any]] = _field(convert=lambda history: [dict(h) for h in history])
    metrics: Mapping[str, float] = _field(convert=_mapping)
    step: int = _field()
    dataset: Mapping[str, Any] = _field(convert=_plain)


@send.register
def _(write: RecordTeacher, tracker: SweepTracker, ids: RunIds) -> None:
    if not ids.use_parent(tracker, write.invocation):
        return
    run_id, new = tracker.start_teacher(write.teacher_key, write.run_name, write.params)
    if new:
        tracker.log_epochs(run_id, [(h, now_ms()) for h in write.history])
        tracker.log_values(run_id, metrics=write.metrics, step=write.step)
        dataset = write.dataset
        tracker.log_dataset(run_id, dataset["name"], dataset["digest"], dataset["source"], dataset["profile"])
        tracker.end_run(run_id)
