"""The samples sink: each measured trial's and teacher's per-sample values and features as Parquet parts.

Layout and columns in :mod:`kd_tune.results.samples`. A trial's parts are written when its end
measurements arrive (``trial_measured``), a teacher's when the driver announces it
(``teacher_ready``; a teacher the store has no measurements for is left out). Each part
is one file written once, so the cost per trial does not grow with the sweep.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from kd_tune.plan.planner import Trial
from kd_tune.results.samples import write_parts
from kd_tune.results.sinks import TeacherRecord, TrialSink
from kd_tune.results.trial_end import TrialEnd
from kd_tune.storage.location import Storage, located, open_storage


class SamplesSink(TrialSink):
    """Writes ``samples.parquet/`` and ``features.parquet/`` parts in ``sweep_dir``; a
    teacher's features are kept for the test samples of ``feature_classes`` (a trial
    sends only those). ``sweep_dir`` is a local path, a URI or a
    :class:`~kd_tune.storage.location.Storage` (:attr:`sweep_dir`: a local Path, or the URI)."""

    def __init__(self, sweep_dir: str | Path | Storage, feature_classes: Sequence[int]):
        self.storage = open_storage(sweep_dir)
        self.sweep_dir = located(self.storage)
        self.feature_classes = tuple(feature_classes)

    def trial_measured(self, trial: Trial, trial_id: str, end: TrialEnd) -> None:
        write_parts(self.storage, "trial", trial.key, end.measurements)

    def teacher_ready(self, teacher: TeacherRecord) -> None:
        if teacher.measurements is not None:
            write_parts(self.storage, "teacher", teacher.key, teacher.measurements.of_classes(self.feature_classes))
