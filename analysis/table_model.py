"""The table model every table kind builds, and what the builders share.

- :class:`Table` (one table for one setting) of :class:`CellStats` (one cell), with the
  :class:`TeacherStats` of its teachers; :data:`SETTING_COLUMNS`, what a table of each kind
  is one per;
- trial rows as plain records in percent (:func:`trial_records`), split by setting
  (:func:`by_setting`, :func:`distilling`), a cell's statistics (:func:`cell_stats`, :func:`make_table`);
- labels (:func:`method_label`, :func:`method_of`) and their order (:func:`label_sort_key`,
  :func:`natural_key`); the published value of a cell (:func:`method_ref`, :func:`clean_reference`);
- the teachers under a table (:func:`teacher_index`, :func:`teacher_stats`).

The conventions (units, which trials enter, how labels print) are in :mod:`analysis.tables`.
"""
from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from analysis.reference import fmt_number, reference_value

METRIC = "test_acc"
SETTING_COLUMNS: dict[str, tuple[str, ...]] = {
    "tau_alpha": ("dataset", "teacher", "student", "noise_type", "noise_rate"),
    "loss": ("dataset", "noise_type", "noise_rate"),
    "noise": ("dataset", "teacher", "student", "noise_type"),
    "search": ("sweep", "dataset", "teacher", "student"),
    "pairs": ("dataset", "noise_type", "noise_rate"),
    "sequential": ("dataset", "student", "noise_type", "noise_rate"),
    "noisy_teacher": ("dataset", "student", "noise_type", "noise_rate"),
    "logit_losses": ("dataset", "teacher", "student", "noise_type", "noise_rate"),
    "data_size": ("dataset", "teacher", "student", "noise_type", "noise_rate"),
}
REQUIRED_COLUMNS = ("status", "dataset", "teacher", "student", "noise_type", "noise_rate",
                    "loss", "tau", "alpha", METRIC)
# Read when present: what names a trial's teacher and its accuracy (older frames lack them).
TEACHER_COLUMNS = {"teacher_key": None, "teacher_test_acc": math.nan, "clean_teacher": False}
# Read when present: kl or mse on z-scored logits is another method than the paper's; its
# loss reads "kl+std" / "mse+std" in the records, which the paper's tables leave out (the
# logit_losses table of analysis.loss_tables shows it). Results from before the column are
# plain kl and mse.
STANDARDIZE_COLUMN = "standardize"
# The losses the tables know, in the order their labels sort.
LOSS_RANK = {"ce": 0, "kl": 1, "mse": 2}

Known = Mapping[str, Mapping[str, Any]]


@dataclass(frozen=True)
class CellStats:
    """Statistics of one cell, in percent: mean, sample std (ddof=1, NaN when n == 1), n."""

    mean: float
    std: float
    n: int


@dataclass(frozen=True)
class TeacherStats:
    """A teacher of a table's distilling trials: ``label`` (its spec, and the labels it
    trained on when they were noisy), ``kind`` (``ce``, ``undertrained``, ``sequential``,
    ``ensemble``; empty when unknown), test and train accuracy in percent (NaN: unknown)."""

    label: str
    test_acc: float
    train_acc: float = math.nan
    kind: str = ""


@dataclass(frozen=True)
class Table:
    """One table for one setting.

    ``setting`` maps the setting columns of the table kind (``SETTING_COLUMNS[name]``) to
    their values. ``cells`` holds statistics for each (row, column) with at least one
    completed trial (absent: no trials). ``reference`` holds published values (percent)
    for the cells that have one (possibly cells without trials). ``excluded`` counts the
    trials of this setting that were not completed, by status. ``teachers`` are the
    teachers of its distilling trials (see :func:`teacher_stats`).
    """

    name: str
    title: str
    setting: dict[str, Any]
    rows: list[str]
    columns: list[str]
    cells: dict[tuple[str, str], CellStats]
    reference: dict[tuple[str, str], float] = field(default_factory=dict)
    excluded: dict[str, int] = field(default_factory=dict)
    metric: str = METRIC
    note: str = ""
    teachers: tuple[TeacherStats, ...] = ()

    def stats(self, row: str, column: str) -> CellStats | None:
        """The cell's statistics, or None when it has no completed trial."""
        return self.cells.get((row, column))


# ---------------------------------------------------------------- labels

def method_label(loss: str, tau: float | None = None, alpha: float | None = None) -> str:
    """``ce``, ``kl tau=T alpha=A`` or ``mse alpha=A`` (alpha left out when None)."""
    parts = [loss]
    if loss == "kl" and tau is not None:
        parts.append(f"tau={fmt_number(tau)}")
    if loss != "ce" and alpha is not None:
        parts.append(f"alpha={fmt_number(alpha)}")
    return " ".join(parts)


def method_of(t: Mapping[str, Any]) -> str:
    """The :func:`method_label` of a trial record."""
    return method_label(t["loss"], t["tau"], t["alpha"])


_PART = re.compile(r"^(\w+)=(.+)$")


def label_sort_key(label: str) -> tuple:
    """Sort key of a column/row label: loss ce < kl < mse, then its numbers (inf last)."""
    rank, numbers = -1, []
    for token in label.split(" "):
        m = _PART.match(token)
        if m:
            try:
                numbers.append(float(m.group(2)))
            except ValueError:
                numbers.append(math.inf)
        elif token in LOSS_RANK:
            rank = LOSS_RANK[token]
    return (rank, tuple(numbers), label)


def _label_params(label: str) -> dict[str, Any]:
    """Inverse of :func:`method_label` (and of ``alpha=A``, ``rate=R``)."""
    out: dict[str, Any] = {}
    for token in label.split(" "):
        m = _PART.match(token)
        if m:
            out[m.group(1)] = float(m.group(2))
        elif token in LOSS_RANK:
            out["loss"] = token
    return out


def unique(labels: Iterable[str]) -> list[str]:
    """``labels`` without repeats, in the order they first come."""
    return list(dict.fromkeys(labels))


_DIGITS = re.compile(r"(\d+)")


def natural_key(text: str) -> tuple:
    """Sort key that orders numbers inside names by value: cnn-4 < cnn-8 < cnn-16."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in _DIGITS.split(text) if part)


# ---------------------------------------------------------------- published values

def method_ref(dataset: str, teacher: str, student: str, method: str) -> float | None:
    """The published value of the cell of ``method`` (a :func:`method_label`), or None."""
    p = _label_params(method)
    return reference_value(dataset, teacher, student, p.get("loss", ""), p.get("tau"), p.get("alpha"))


def clean_reference(reference: bool, setting: Mapping[str, Any], teacher: str, student: str,
                    method: str) -> float | None:
    """:func:`method_ref` where ``reference`` is asked for and the setting has clean labels; else None."""
    if not reference or setting["noise_type"] != "none":
        return None
    return method_ref(setting["dataset"], teacher, student, method)


# ---------------------------------------------------------------- trials

def check_columns(trials: pd.DataFrame) -> None:
    """Raise ValueError naming the :data:`REQUIRED_COLUMNS` that ``trials`` lacks."""
    missing = [c for c in REQUIRED_COLUMNS if c not in trials.columns]
    if missing:
        raise ValueError(f"the trials lack column(s): {', '.join(missing)}")


def _float(value: Any) -> float:
    return math.nan if value is None or pd.isna(value) else float(value)


def trial_records(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Plain dicts of the required (and teacher) columns; accuracies converted to percent."""
    columns = [*REQUIRED_COLUMNS, *(c for c in (*TEACHER_COLUMNS, STANDARDIZE_COLUMN) if c in df.columns)]
    out = []
    for r in df[columns].to_dict("records"):
        for k, default in TEACHER_COLUMNS.items():
            r.setdefault(k, default)
        standardized = r.pop(STANDARDIZE_COLUMN, None)
        if standardized is not None and not pd.isna(standardized) and bool(standardized):
            r["loss"] += "+std"
        for k in ("noise_rate", "tau", "alpha"):
            r[k] = _float(r[k])
        r[METRIC] = 100.0 * _float(r[METRIC])
        r["teacher_test_acc"] = 100.0 * _float(r["teacher_test_acc"])
        out.append(r)
    return out


def _group(records: list[dict], keys: tuple[str, ...]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[tuple(r[k] for k in keys)].append(r)
    return groups


def by_setting(keys: tuple[str, ...], done: list[dict],
               other: list[dict]) -> list[tuple[dict[str, Any], list[dict], list[dict]]]:
    """(setting, its completed trials, its other trials) for each distinct value of ``keys`` among the
    completed trials ``done`` (records), in order of value; ``setting`` maps ``keys`` to that value."""
    others = _group(other, keys)
    return [(dict(zip(keys, key)), trials, others.get(key, [])) for key, trials in sorted(_group(done, keys).items())]


def distilling(trials: list[dict]) -> list[dict]:
    """The records of ``trials`` that distil (loss ``kl`` or ``mse``)."""
    return [t for t in trials if t["loss"] in ("kl", "mse")]


def cell_stats(values: list[float]) -> CellStats:
    """Mean, sample std (ddof=1; NaN for one value) and count of ``values``."""
    a = np.asarray(values, dtype=float)
    std = float(np.std(a, ddof=1)) if a.size > 1 else math.nan
    return CellStats(mean=float(np.mean(a)), std=std, n=int(a.size))


def make_table(name: str, title: str, setting: dict[str, Any], rows: list[str],
               columns: list[str], placed: dict[tuple[str, str], list[float]],
               reference: dict[tuple[str, str], float], excluded: list[dict],
               teachers: tuple[TeacherStats, ...] = ()) -> Table:
    """A :class:`Table` whose cells are the :func:`cell_stats` of the values ``placed`` in them and whose
    ``excluded`` counts the ``excluded`` records by status."""
    cells = {(r, c): cell_stats(placed[(r, c)]) for r in rows for c in columns if placed.get((r, c))}
    return Table(name=name, title=title, setting=setting, rows=rows, columns=columns,
                 cells=cells, reference=reference,
                 excluded=dict(sorted(Counter(str(t["status"]) for t in excluded).items())), teachers=teachers)


# ---------------------------------------------------------------- teachers

def teacher_index(teachers: pd.DataFrame | None) -> dict[str, dict[str, Any]]:
    """``teachers.parquet`` rows (:func:`analysis.results_io.load_teachers`) by teacher key."""
    if teachers is None or teachers.empty:
        return {}
    return {str(r["teacher_key"]): r for r in teachers.to_dict("records")}


def teacher_stats(trials: Iterable[Mapping[str, Any]], known: Known) -> tuple[TeacherStats, ...]:
    """The teachers of the distilling trials among ``trials`` (records as :func:`trial_records`
    makes them), one per teacher key, in label order.

    Test accuracy is the trials' ``teacher_test_acc``, else that of ``known`` (teacher key
    -> ``teachers.parquet`` row, fractions), which also gives the train accuracy, the kind
    and the label (its spec, a chain's step losses spelled out). A teacher trained on
    noisy labels says so in its label; two teachers of one label name the method they
    served.
    """
    first: dict[str, Mapping[str, Any]] = {}
    for t in trials:
        if t["loss"] != "ce" and t.get("teacher_key"):
            first.setdefault(str(t["teacher_key"]), t)
    labels = {key: _teacher_label(t, known.get(key, {}).get("spec")) for key, t in first.items()}
    shared = Counter(labels.values())
    out = []
    for key, t in first.items():
        row = known.get(key, {})
        label = labels[key] + (f" (for {method_of(t)})" if shared[labels[key]] > 1 else "")
        test = t["teacher_test_acc"]
        if math.isnan(test):
            test = 100.0 * _float(row.get("test_acc"))
        out.append(TeacherStats(label=label, test_acc=test, train_acc=100.0 * _float(row.get("train_acc")),
                                kind=str(row.get("kind") or "")))
    return tuple(sorted(out, key=lambda s: natural_key(s.label)))


def _teacher_label(t: Mapping[str, Any], spec: str | None) -> str:
    # teachers.parquet spells a chain's steps out (cnn-32>cnn-8[kl:3]); a trial row does not.
    label = str(spec or t["teacher"])
    noisy = t["noise_type"] != "none" and t["noise_rate"] > 0 and not t.get("clean_teacher")
    return f"{label} ({t['noise_type']} {fmt_number(t['noise_rate'])} labels)" if noisy else label
