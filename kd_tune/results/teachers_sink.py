"""The teachers sink: each teacher node of the sweep as a row of ``teachers.parquet``.

Columns and file in :mod:`kd_tune.results.teacher_table`. The driver announces every node after
the teacher stage (``teacher_ready``); the file is rewritten with each one (a sweep has
a handful of teacher nodes), so it is whole whenever the trials start.
"""
from __future__ import annotations

from pathlib import Path

from kd_tune.results.sinks import TeacherRecord, TrialSink
from kd_tune.results.teacher_table import teacher_row, write_teachers
from kd_tune.storage.location import Storage, located, open_storage


class TeachersSink(TrialSink):
    """Writes ``sweep_dir/teachers.parquet`` for sweep ``sweep`` (``sweep_dir``: a local path, a
    URI or a :class:`~kd_tune.storage.location.Storage`; :attr:`sweep_dir` a local Path, or the URI)."""

    def __init__(self, sweep_dir: str | Path | Storage, *, sweep: str):
        self.storage = open_storage(sweep_dir)
        self.sweep_dir = located(self.storage)
        self.sweep = sweep

    def teacher_ready(self, teacher: TeacherRecord) -> None:
        write_teachers(self.storage, [teacher_row(self.sweep, teacher.node, teacher.meta)])
