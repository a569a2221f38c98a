"""The Parquet sink: epoch rows and final trial rows in the sweep's result tables.

It owns the sweep's :class:`~kd_tune.results.trial_tables.ResultsWriter` (schemas and files are
described in :mod:`kd_tune.results.trial_tables`). Each flush appends one part per table, so writes
are batched: before Ray Tune saves its experiment state (a resumed trial re-reports only
the epochs after the checkpoint that state names, so every epoch before it must be on
disk first), at every trial's end (its row is on disk before its MLflow run is ended),
and otherwise at most every 5 s. At the experiment's end each table is compacted into
one part.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from kd_tune.core.clock import utc_now
from kd_tune.core.status import TrialStatus
from kd_tune.plan.planner import Trial
from kd_tune.results.sinks import EndedTrial, TrialSink
from kd_tune.results.trial_end import TrialEnd
from kd_tune.results.trial_tables import ResultsWriter, epoch_row, trial_row
from kd_tune.storage.location import Storage

FLUSH_EVERY_S = 5.0


def _no_run_id(trial_key: str) -> str | None:  # a sweep without MLflow
    return None


class ParquetSink(TrialSink):
    """Writes one sweep's epochs and trials tables.

    ``teacher_acc(teacher_key)`` is a teacher's test accuracy or None (the rows'
    ``teacher_test_acc``) and ``run_id(trial_key)`` the trial's MLflow child run or None
    (``mlflow_run_id``); both are asked when a trial's row is written. ``clock`` is a
    monotonic clock in seconds. Rows already in the folder are kept. ``sweep_dir`` is a
    local path, a URI (``s3://...``), a :class:`~kd_tune.storage.location.Storage`, or the sweep's
    writer, opened already.
    """

    def __init__(
        self,
        sweep_dir: str | Path | Storage | ResultsWriter,
        *,
        sweep: str,
        teacher_acc: Callable[[str], float | None],
        run_id: Callable[[str], str | None] = _no_run_id,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.writer = sweep_dir if isinstance(sweep_dir, ResultsWriter) else ResultsWriter(sweep_dir)
        self.sweep = sweep
        self._teacher_acc = teacher_acc
        self._run_id = run_id
        self._clock = clock
        self._started_at: dict[str, datetime] = {}
        self._measured: dict[str, dict[str, float]] = {}
        self._last_row: dict[str, Any] | None = None
        self._last_flush = clock()

    # -- what is recorded ----------------------------------------------------------------

    def trial_rows(self) -> list[dict[str, Any]]:
        """Every final row of the trials table, in no particular order (read from disk)."""
        return self.writer.read_trials()

    def trial_row(self, trial_key: str) -> dict[str, Any] | None:
        """The final row of one trial, or None: the row just written when it is that trial's
        (the MLflow sink asks right after), else read from disk."""
        if self._last_row is not None and self._last_row["trial_key"] == trial_key:
            return self._last_row
        rows = self.writer.read_trials([trial_key])
        return rows[0] if rows else None

    def statuses(self) -> dict[str, TrialStatus]:
        """Trial key -> status of every final row."""
        return self.writer.statuses()

    def started_at(self, trial_key: str) -> datetime | None:
        """When a trial running in this invocation started (UTC), else None."""
        return self._started_at.get(trial_key)

    def finished_keys(self) -> set[str]:
        """Trial keys whose final row says the trial finished (see :attr:`TrialStatus.finished`):
        a resumed sweep keeps these results and does not record the trials again."""
        return {key for key, status in self.statuses().items() if status.finished}

    # -- events ----------------------------------------------------------------------------

    def trial_started(self, trial: Trial, trial_id: str) -> None:
        self._started_at[trial.key] = utc_now()

    def epoch_reported(self, trial: Trial, trial_id: str, metrics: Mapping[str, Any], status: TrialStatus) -> None:
        self.writer.add_epoch(epoch_row(self.sweep, trial.key, trial_id, metrics))
        if self._clock() - self._last_flush > FLUSH_EVERY_S:
            self._flush()

    def trial_measured(self, trial: Trial, trial_id: str, end: TrialEnd) -> None:
        self._measured[trial.key] = end.measurements.summary

    def saving_state(self) -> None:
        self._flush()

    def trial_ended(self, trial: Trial, trial_id: str, status: TrialStatus, error: str | None) -> None:
        self._finish(trial, trial_id, status, error, self._started_at.pop(trial.key, None))
        self._flush()

    def experiment_ended(self) -> None:
        self.writer.compact()
        self._last_flush = self._clock()

    # -- after Tune returns ----------------------------------------------------------------

    def reconcile(self, ended: Iterable[EndedTrial]) -> list[str]:
        """Write the final rows a killed driver did not: return the keys written.

        Tune may have recorded a trial as ended before the driver that ran it wrote its
        row; a later invocation does not run it again. Such a trial gets its row from the
        epoch history, when it has no row yet and the history reaches the epoch of Tune's
        last result (epochs after the last flush are lost with the driver; then the trial
        stays without a row). ``started_at`` is unknown there: None.
        """
        written = []
        recorded = self.writer.statuses()
        for item in ended:
            history = self.writer.history(item.trial.key)
            if item.trial.key in recorded or not history or history[-1]["epoch"] < item.epoch:
                continue
            self._finish(item.trial, item.trial_id, item.status, None, None)
            written.append(item.trial.key)
        self._flush()
        return written

    # -- helpers -----------------------------------------------------------------------------

    def _finish(self, trial: Trial, trial_id: str, status: TrialStatus, error: str | None,
                started_at: datetime | None) -> None:
        self._last_row = trial_row(
            sweep=self.sweep, trial_key=trial.key, trial_id=trial_id, config=trial.config, status=status,
            history=self.writer.history(trial.key), teacher_key=trial.teacher_key,
            teacher_test_acc=self._teacher_acc(trial.teacher_key), started_at=started_at, error=error,
            mlflow_run_id=self._run_id(trial.key), measured=self._measured.pop(trial.key, None),
        )
        self.writer.finish_trial(self._last_row)

    def _flush(self) -> None:
        self.writer.flush()
        self._last_flush = self._clock()
