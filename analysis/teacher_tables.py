"""The tables whose rows or columns are teachers: ``pairs``, ``sequential``, ``noisy_teacher``.

Cells follow :mod:`analysis.tables` (last-epoch test accuracy in percent, mean, sample
std, n over completed trials). What is particular to these three:

- A CE trial trains the student alone; its teacher field does not change it. Its cell
  is placed by student: in ``pairs`` the ``ce`` column of every row with that student,
  in ``sequential`` the ``no teacher (ce)`` row (repeated in every loss column), in
  ``noisy_teacher`` the ``ce`` row (repeated in every teacher column).
- A teacher is shown by its spec (:mod:`kd_tune.core.teacher_spec`); a chain ``A>B`` reads
  ``A -> B -> student`` in a row label.
- Published values (:mod:`analysis.reference`) match on the teacher spec as written, so
  ``wrn-28-4>wrn-16-4 -> wrn-16-2`` finds the paper's sequential row; clean labels only.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

from analysis.table_model import (
    METRIC,
    SETTING_COLUMNS,
    Known,
    Table,
    by_setting,
    clean_reference,
    distilling,
    label_sort_key,
    make_table,
    method_of,
    natural_key,
    teacher_stats,
    unique,
)

BASELINE = "no teacher (ce)"


def _settings(name: str, done: list[dict], other: list[dict]) -> list[tuple[dict[str, Any], list[dict], list[dict]]]:
    """(setting, its completed trials, its other trials) for every setting with a distilling trial."""
    return [(setting, trials, others) for setting, trials, others in by_setting(SETTING_COLUMNS[name], done, other)
            if distilling(trials)]


def _title(setting: dict[str, Any]) -> str:
    head = setting["dataset"] + (f", student {setting['student']}" if "student" in setting else "")
    return f"{head}, noise {setting['noise_type']} {setting['noise_rate']!r}"


def build_pairs(done: list[dict], other: list[dict], reference: bool, known: Known) -> list[Table]:
    """Rows ``teacher -> student`` (the pairs of distilling trials), columns ``ce``, each KL setting, MSE."""
    tables = []
    for setting, trials, others in _settings("pairs", done, other):
        pairs = sorted({(t["teacher"], t["student"]) for t in distilling(trials)},
                       key=lambda p: (natural_key(p[0]), natural_key(p[1])))
        rows = [f"{a} -> {b}" for a, b in pairs]
        columns = sorted(unique(method_of(t) for t in trials), key=label_sort_key)
        placed: dict[tuple[str, str], list[float]] = defaultdict(list)
        for t in trials:
            if t["loss"] == "ce":
                for (_, student), row in zip(pairs, rows):
                    if student == t["student"]:
                        placed[(row, "ce")].append(t[METRIC])
            else:
                placed[(f"{t['teacher']} -> {t['student']}", method_of(t))].append(t[METRIC])
        ref = {(row, c): v for (teacher, student), row in zip(pairs, rows) for c in columns
               if (v := clean_reference(reference, setting, teacher, student, c)) is not None}
        tables.append(make_table("pairs", _title(setting), setting, rows, columns, placed, ref, others,
                             teacher_stats(trials, known)))
    return tables


def _chain(teacher: str, student: str) -> str:
    return " -> ".join([*teacher.split(">"), student])


def build_sequential(done: list[dict], other: list[dict], reference: bool, known: Known) -> list[Table]:
    """Rows: each teacher (chain) of the student, then ``no teacher (ce)``; columns: the KD methods."""
    tables = []
    for setting, trials, others in _settings("sequential", done, other):
        student = setting["student"]
        kd = distilling(trials)
        teachers = sorted({t["teacher"] for t in kd}, key=natural_key)
        rows = [_chain(teacher, student) for teacher in teachers]
        columns = sorted(unique(method_of(t) for t in kd), key=label_sort_key)
        ce = [t for t in trials if t["loss"] == "ce"]
        placed: dict[tuple[str, str], list[float]] = defaultdict(list)
        for t in kd:
            placed[(_chain(t["teacher"], student), method_of(t))].append(t[METRIC])
        if ce:
            rows.append(BASELINE)
            for c in columns:
                placed[(BASELINE, c)] = [t[METRIC] for t in ce]
        ref = {(row, c): v for teacher, row in zip(teachers, rows) for c in columns
               if (v := clean_reference(reference, setting, teacher, student, c)) is not None}
        if ce:
            ref.update({(BASELINE, c): v for c in columns
                        if (v := clean_reference(reference, setting, "", student, "ce")) is not None})
        tables.append(make_table("sequential", _title(setting), setting, rows, columns, placed, ref, others,
                             teacher_stats(trials, known)))
    return tables


def build_noisy_teacher(done: list[dict], other: list[dict], reference: bool, known: Known) -> list[Table]:
    """Rows: ``ce``, each KL setting, MSE; columns: the teacher specs of the distilling trials."""
    tables = []
    for setting, trials, others in _settings("noisy_teacher", done, other):
        columns = sorted({t["teacher"] for t in distilling(trials)}, key=natural_key)
        rows = sorted(unique(method_of(t) for t in trials), key=label_sort_key)
        placed: dict[tuple[str, str], list[float]] = defaultdict(list)
        for t in trials:
            for column in columns if t["loss"] == "ce" else [t["teacher"]]:
                placed[(method_of(t), column)].append(t[METRIC])
        ref = {(r, c): v for r in rows for c in columns
               if (v := clean_reference(reference, setting, c, setting["student"], r)) is not None}
        tables.append(make_table("noisy_teacher", _title(setting), setting, rows, columns, placed, ref, others,
                             teacher_stats(trials, known)))
    return tables


BUILDERS: dict[str, Callable[[list[dict], list[dict], bool, Known], list[Table]]] = {
    "pairs": build_pairs, "sequential": build_sequential, "noisy_teacher": build_noisy_teacher,
}
