"""The MLflow sink: one child run per trial under this invocation's parent run.

It owns the sweep's :class:`~kd_tune.tracking.SweepTracker` (layout in
:mod:`kd_tune.tracking`); the driver creates the tracker, opens the parent run before
the trials and ends it after them.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kd_tune.plan import Trial
from kd_tune.sinks.base import TrialSink
from kd_tune.status import TrialStatus
from kd_tune.tracking import TEACHER_TAG, TRIAL_ID_TAG, SweepTracker


class MlflowSink(TrialSink):
    """Starts (or continues) a trial's child run, logs its epochs, ends it with its status."""

    def __init__(self, tracker: SweepTracker):
        self.tracker = tracker
        self._runs: dict[str, str] = {}

    def run_id(self, trial_key: str) -> str | None:
        """The child run of a trial started in this invocation (kept after it ended), else None."""
        return self._runs.get(trial_key)

    def trial_started(self, trial: Trial, trial_id: str) -> None:
        # An unfinished run of an earlier invocation is continued (see SweepTracker.start_trial).
        self._runs[trial.key] = self.tracker.start_trial(
            trial.key, trial.label, trial.config.to_dict(), {TRIAL_ID_TAG: trial_id, TEACHER_TAG: trial.teacher_key}
        )

    def epoch_reported(self, trial: Trial, trial_id: str, metrics: Mapping[str, Any], status: TrialStatus) -> None:
        self.tracker.log_epoch(self._runs[trial.key], metrics)

    def trial_ended(self, trial: Trial, trial_id: str, status: TrialStatus, error: str | None) -> None:
        self.tracker.end_trial(self._runs[trial.key], status)

    def reconcile(self, statuses: Mapping[str, TrialStatus]) -> int:
        """End child runs left RUNNING whose trial has a final status (trial key -> status),
        as a driver stopped between recording a trial and ending its run leaves them;
        return how many were ended."""
        return self.tracker.end_recorded_trials(statuses)
