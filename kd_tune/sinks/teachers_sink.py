"""The teachers sink: each teacher node of the sweep as a row of ``teachers.parquet``.

Columns and file in :mod:`kd_tune.teacher_table`. The driver announces every node after
the teacher stage (``teacher_ready``); the file is rewritten with each one (a sweep has
a handful of teacher nodes), so it is whole whenever the trials start.
"""
from __future__ import annotations

from pathlib import Path

from kd_tune.sinks.base import TeacherRecord, TrialSink
from kd_tune.teacher_table import teacher_row, write_teachers


class TeachersSink(TrialSink):
    """Writes ``sweep_dir/teachers.parquet`` for sweep ``sweep``."""

    def __init__(self, sweep_dir: str | Path, *, sweep: str):
        self.sweep_dir = Path(sweep_dir)
        self.sweep = sweep

    def teacher_ready(self, teacher: TeacherRecord) -> None:
        write_teachers(self.sweep_dir, [teacher_row(self.sweep, teacher.node, teacher.meta)])
