"""The sink interface: a sweep's trial events, as plain calls, for one output each.

A sink turns trial events into one output (the Parquet files, the MLflow runs, the
console lines) and owns that output's client. Only the Tune adapter
(:mod:`kd_tune.sweep.tune_callback`) knows Ray Tune; it calls each sink, in the order
it was given them, with these events of one driver invocation:

- ``trial_started``: once per trial, before any other event of that trial (a retry
  does not start it again);
- ``epoch_reported``: per reported epoch. After a retry or in a resumed sweep a trial
  restarts from its last checkpoint and reports the epochs after it again;
- ``trial_measured``: a completed trial's :class:`~kd_tune.results.trial_end.TrialEnd` (its end
  measurements), right after the epoch report that carried it, before ``trial_ended``;
- ``checkpointed``: the trial saved a checkpoint with its last reported epoch;
- ``saving_state``: Tune is about to save its experiment state (which trials ended,
  which checkpoint each one resumes from); what was reported before must be durable
  now, since a resumed sweep does not report it again;
- ``trial_retried``: Tune restarts the trial after an error (the error's text);
- ``trial_ended``: once, with the final status (``failed`` with the error text);
- ``experiment_ended``: Tune's experiment is over (also when it was interrupted).

Outside Tune, the driver sends ``teacher_ready`` once per teacher node of the sweep
(every node of every teacher's DAG, sources first) after the teacher stage, before any
trial event (in every invocation: a resumed sweep sends it again).

A trial whose final result was recorded before this invocation produces no events.
Statuses are decided upstream (the trainer, and the adapter for ``failed`` and
``stopped``); sinks record them and never decide them again.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kd_tune.core.status import TrialStatus
from kd_tune.plan.planner import Trial
from kd_tune.plan.teacher_dag import TeacherNode
from kd_tune.results.trial_end import TrialEnd
from kd_tune.train.measurements import EndMeasurements


@dataclass(frozen=True, eq=False)
class TeacherRecord:
    """A teacher node of the sweep as the teacher store holds it.

    ``node``: the planned node (:class:`~kd_tune.plan.teacher_dag.TeacherNode`: its key, kind,
    spec and the run that trained it); ``meta``: the store's record (final metrics,
    ``history`` when the store has it, training seconds); ``measurements``: its
    end-of-run test measurements on its own outputs, every test sample's features (None
    when the store has none).
    """

    node: TeacherNode
    meta: Mapping[str, Any]
    measurements: EndMeasurements | None

    @property
    def key(self) -> str:
        return self.node.key


class TrialSink:
    """One output of a sweep; every event is a no-op unless the sink overrides it."""

    def trial_started(self, trial: Trial, trial_id: str) -> None:
        pass

    def epoch_reported(self, trial: Trial, trial_id: str, metrics: Mapping[str, Any], status: TrialStatus) -> None:
        """``metrics``: ``epoch`` and the trainer's per-epoch metrics (None where not reported)."""

    def trial_measured(self, trial: Trial, trial_id: str, end: TrialEnd) -> None:
        pass

    def checkpointed(self, trial: Trial) -> None:
        pass

    def saving_state(self) -> None:
        pass

    def trial_retried(self, trial: Trial, error: str) -> None:
        pass

    def trial_ended(self, trial: Trial, trial_id: str, status: TrialStatus, error: str | None) -> None:
        pass

    def experiment_ended(self) -> None:
        pass

    def teacher_ready(self, teacher: TeacherRecord) -> None:
        pass


@dataclass(frozen=True)
class EndedTrial:
    """A trial that Tune's own state says the trainer ended: its last result's status
    (``completed`` or ``diverged``) and epoch. The input of
    :meth:`kd_tune.results.parquet_sink.ParquetSink.reconcile`."""

    trial: Trial
    trial_id: str
    status: TrialStatus
    epoch: int
