"""The ``data_size`` table: the student's test accuracy against the fraction of the training
split it trained on (the teacher always trained on all of it), a row per method.

Rows are the methods (``ce``, ``kl tau=T alpha=A``, ``mse alpha=A``) and columns
``fraction=F`` (F the trial's ``data_fraction``; results from before the field are 1);
one table per (dataset, teacher, student, noise_type, noise_rate). Cells follow
:mod:`analysis.tables`: last-epoch test accuracy in percent, mean, sample std and n over the
completed trials. No published values: the paper has no such table.
"""
from __future__ import annotations

from collections import defaultdict

import pandas as pd

from analysis.reference import fmt_number
from analysis.table_model import (
    METRIC,
    SETTING_COLUMNS,
    Known,
    Table,
    by_setting,
    label_sort_key,
    make_table,
    method_of,
    teacher_stats,
    trial_records,
)
from kd_tune.core.status import TrialStatus

FRACTION = "data_fraction"


def fractions(trials: pd.DataFrame) -> pd.Series:
    """Each trial's ``data_fraction`` (1.0 where the column is missing or null: rows from before it)."""
    if FRACTION not in trials.columns:
        return pd.Series(1.0, index=trials.index)
    return trials[FRACTION].astype(float).fillna(1.0)


def _records(trials: pd.DataFrame) -> list[dict]:
    records = trial_records(trials)
    for record, fraction in zip(records, fractions(trials)):
        record[FRACTION] = float(fraction)
    return records


def column(fraction: float) -> str:
    """The column label of a fraction: ``fraction=0.25``."""
    return f"fraction={fmt_number(fraction)}"


def data_size_tables(trials: pd.DataFrame, known: Known) -> list[Table]:
    """One :class:`Table` per setting: rows the methods, columns the fractions (ascending)."""
    completed = trials["status"] == TrialStatus.COMPLETED
    done, other = _records(trials[completed]), _records(trials[~completed])
    tables = []
    for setting, found, others in by_setting(SETTING_COLUMNS["data_size"], done, other):
        rows = sorted({method_of(t) for t in found}, key=label_sort_key)
        columns = [column(f) for f in sorted({t[FRACTION] for t in found})]
        placed: dict[tuple[str, str], list[float]] = defaultdict(list)
        for t in found:
            placed[(method_of(t), column(t[FRACTION]))].append(t[METRIC])
        title = (f"{setting['dataset']} {setting['teacher']} -> {setting['student']}, noise "
                 f"{setting['noise_type']} {setting['noise_rate']!r}; the teacher on all the training data")
        tables.append(make_table("data_size", title, setting, rows, columns, placed, {}, others,
                                 teacher_stats(found, known)))
    return tables
