"""The MLflow sink: one child run per trial under this invocation's parent run.

It never calls MLflow in a Tune callback: every write goes to the sweep's
:class:`~kd_tune.tracking_queue.TrackingQueue` (a durable outbox sent by one thread),
so a slow or absent tracking server costs the sweep nothing (layout of the runs in
:mod:`kd_tune.tracking`). The driver opens the parent run before the trials and ends it
after them, through the same queue.

Parquet is the record and MLflow a view of it: :meth:`MlflowSink.mirror` makes the view
whole again from the record (runs missing from a deleted or emptied store are refilled,
runs left RUNNING by a killed driver are ended).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from kd_tune.config import RunConfig
from kd_tune.plan import Trial, label
from kd_tune.results import EPOCH_METRICS, ResultsWriter, read_epochs
from kd_tune.sinks.base import TrialSink
from kd_tune.status import TrialStatus
from kd_tune.tracking import STARTED_TAG, TEACHER_TAG, TRIAL_ID_TAG
from kd_tune.tracking_queue import TrackingQueue

REFILL_CHUNK = 200  # trials refilled per read of the epochs table


def _unknown(trial_key: str) -> datetime | None:
    return None


class MlflowSink(TrialSink):
    """Queues each trial's child run: started (or continued), its epochs, its end with the status.

    ``invocation`` identifies this invocation's parent run; ``started_at(trial_key)`` is
    the trial's start as the Parquet row records it (tag ``kd_tune.started_at``).
    """

    def __init__(self, queue: TrackingQueue, invocation: str, *,
                 started_at: Callable[[str], datetime | None] = _unknown):
        self.queue = queue
        self.invocation = invocation
        self._started_at = started_at

    def run_id(self, trial_key: str) -> str | None:
        """The child run of a trial, once the queue has sent its start (else None)."""
        return self.queue.run_id(trial_key)

    def trial_started(self, trial: Trial, trial_id: str) -> None:
        # An unfinished run of an earlier invocation is continued (see SweepTracker.start_trial).
        started = self._started_at(trial.key)
        tags = {TRIAL_ID_TAG: trial_id, TEACHER_TAG: trial.teacher_key or "",
                **({STARTED_TAG: started.isoformat()} if started else {})}
        self.queue.start_trial(self.invocation, trial.key, trial.label, trial.config.to_dict(), tags)

    def epoch_reported(self, trial: Trial, trial_id: str, metrics: Mapping[str, Any], status: TrialStatus) -> None:
        self.queue.log_epoch(trial.key, metrics)

    def trial_ended(self, trial: Trial, trial_id: str, status: TrialStatus, error: str | None) -> None:
        self.queue.end_trial(trial.key, status)

    def mirror(self, writer: ResultsWriter, *, log: Callable[[str], None] = print) -> dict[str, str]:
        """Make MLflow show every trial the results record, synchronously (call it while
        the queue's thread is stopped and nothing is left to send); return trial key ->
        run id of every recorded trial that has a run.

        A recorded trial without a child run (a deleted or emptied store, or a run deleted
        by hand) gets one made from its Parquet rows, under this invocation's parent; a
        run still RUNNING whose trial has a final row is ended with that row's status.
        """
        tracker = self.queue.tracker()
        tracker.parent_id = self.queue.parent_id(self.invocation) or tracker.find_parent(self.invocation)
        runs = tracker.trial_runs()
        recorded = writer.statuses()
        ids = {key: runs[key].info.run_id for key in recorded if key in runs}
        for key, status in recorded.items():
            if key in runs and runs[key].info.status == "RUNNING":
                tracker.end_trial(ids[key], status)
        missing = [key for key in recorded if key not in runs]
        if not missing:
            return ids
        log(f"MLflow holds {len(recorded) - len(missing)} of the {len(recorded)} trials recorded in "
            f"{writer.sweep_dir}: refilling {len(missing)} from the Parquet results")
        own_parent = tracker.parent_id is None  # a sync outside a sweep: a parent run for the refilled runs
        if own_parent:
            tracker.start_parent(f"{tracker.experiment} refill", {}, {}, invocation=self.invocation)
        for start in range(0, len(missing), REFILL_CHUNK):
            chunk = missing[start:start + REFILL_CHUNK]
            epochs: dict[str, list[tuple[dict[str, Any], int]]] = {key: [] for key in chunk}
            for row in sorted(read_epochs(writer.sweep_dir, chunk).to_pylist(), key=lambda r: r["epoch"]):
                metrics = {"epoch": row["epoch"], **{m: row[m] for m in EPOCH_METRICS}}
                epochs[row["trial_key"]].append((metrics, int(row["reported_at"].timestamp() * 1000)))
            for row in writer.read_trials(chunk):
                config = RunConfig.from_dict({f.name: row[f.name] for f in dataclasses.fields(RunConfig)})
                tags = {TRIAL_ID_TAG: row["trial_id"] or "", TEACHER_TAG: row["teacher_key"] or ""}
                if row["started_at"] is not None:
                    tags[STARTED_TAG] = row["started_at"].isoformat()
                ids[row["trial_key"]] = tracker.record_trial(row["trial_key"], label(config), config.to_dict(), tags,
                                                             TrialStatus(row["status"]), epochs[row["trial_key"]])
        if own_parent:
            tracker.end_parent("FINISHED")
        log(f"MLflow refilled: {len(missing)} trial run(s) made from the Parquet results")
        return ids
