"""The ``logit_losses`` table: the logit-loss family side by side, one table per setting.

A setting is (dataset, teacher, student, noise_type, noise_rate). Rows are methods, one
per loss family and its settings: ``ce``; ``kl tau=T``; ``kl+ls tau=T`` (kl with
``standardize``: logit standardization); ``dkd tau=T``; ``dist tau=T``; ``mse``;
``mse+std`` (mse of z-scored logits); then ``alpha=A`` and every loss option away from
its published value (``dkd_beta=6``). Columns, each ``mean ± std (n)`` over the completed
trials (seeds) of the row:

- ``test acc``: last-epoch test accuracy in percent;
- ``logit distance``: each trial's mean over the test samples of ``||z_s - z_t||_2``
  (logit units; the trials table's ``logit_distance_mean``);
- ``logit-mean gap``: each trial's mean over the test samples of
  ``mean_k z_s - mean_k z_t`` (logit units; ``logit_mean_gap_mean``): KL leaves the logit
  mean free, MSE pins it, standardization removes it from the loss altogether.

On clean labels a ``test acc`` cell of a pair with published numbers of other papers
(:func:`analysis.reference.published_value`, CIFAR-100) carries that number in brackets:
published, with its own recipe, not a run of kd-tune. Trials written before the loss
options existed (no ``standardize`` column) are plain kl, mse and ce.
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from analysis.reference import fmt_number, published_value
from analysis.table_model import CellStats, Table, natural_key, teacher_stats
from kd_tune.core.config import LOSS_OPTIONS
from kd_tune.core.status import TrialStatus

NAME = "logit_losses"
SETTING = ("dataset", "teacher", "student", "noise_type", "noise_rate")
FAMILIES = ("ce", "kl", "kl+ls", "dkd", "dist", "mse", "mse+std")
# column label -> (trials-table column, factor to the unit shown)
COLUMNS: dict[str, tuple[str, float]] = {
    "test acc": ("test_acc", 100.0),
    "logit distance": ("logit_distance_mean", 1.0),
    "logit-mean gap": ("logit_mean_gap_mean", 1.0),
}
NOTE = ("test acc: last-epoch test accuracy ({percent}); logit distance ||z_s - z_t||_2 and logit-mean gap "
        "mean_k z_s - mean_k z_t (logit units): each trial's mean over the test set; every cell mean {pm} std "
        "(n seeds) over completed trials")
PUBLISHED_NOTE = "; [published: another paper's CIFAR-100 number for the pair, its own recipe, not ours]"
_READ = ("status", *SETTING, "loss", "tau", "alpha", "standardize", *(n for n in LOSS_OPTIONS if n != "standardize"),
         "teacher_key", "teacher_test_acc", "clean_teacher", *(c for c, _ in COLUMNS.values()))
_DEFAULTS: dict[str, Any] = {"standardize": False, "teacher_key": None, "teacher_test_acc": math.nan,
                             "clean_teacher": False, "logit_distance_mean": math.nan, "logit_mean_gap_mean": math.nan}


def family(loss: str, standardize: Any) -> str:
    """A trial's method family: its loss, ``kl+ls`` / ``mse+std`` when its logits were z-scored."""
    if _flag(standardize):
        return {"kl": "kl+ls", "mse": "mse+std"}.get(loss, f"{loss}+std")
    return loss


def method_label(record: Mapping[str, Any]) -> str:
    """``dkd tau=4 alpha=0.9`` (options away from their published values added, ``dkd_beta=6``)."""
    loss = record["loss"]
    parts = [family(loss, record.get("standardize"))]
    if loss not in ("ce", "mse"):
        parts.append(f"tau={fmt_number(record['tau'])}")
    if loss != "ce":
        parts.append(f"alpha={fmt_number(record['alpha'])}")
    for name, option in LOSS_OPTIONS.items():
        value = record.get(name)
        if loss in option.losses and option.kind is not bool and not _missing(value) and value != option.default:
            parts.append(f"{name}={fmt_number(value)}")
    return " ".join(parts)


def _sort_key(label: str) -> tuple:
    head, *rest = label.split(" ")
    rank = FAMILIES.index(head) if head in FAMILIES else len(FAMILIES)
    return (rank, natural_key(" ".join(rest)))


def logit_loss_tables(trials: pd.DataFrame, *, reference: bool = True,
                      known: Mapping[str, Mapping[str, Any]] | None = None) -> list[Table]:
    """The ``logit_losses`` tables of a frame of trials (:func:`analysis.load_trials`), one per setting."""
    records = _records(trials)
    done = [r for r in records if r["status"] == TrialStatus.COMPLETED]
    other: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        if r["status"] != TrialStatus.COMPLETED:
            other[tuple(r[k] for k in SETTING)].append(r)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in done:
        groups[tuple(r[k] for k in SETTING)].append(r)
    tables = []
    for key in sorted(groups, key=lambda k: tuple(str(v) for v in k)):
        trials_here = groups[key]
        setting = dict(zip(SETTING, key))
        by_row: dict[str, list[dict]] = defaultdict(list)
        for r in trials_here:
            by_row[method_label(r)].append(r)
        rows = sorted(by_row, key=_sort_key)
        cells = {}
        for row in rows:
            for column, (source, factor) in COLUMNS.items():
                values = [factor * r[source] for r in by_row[row] if not _missing(r[source])]
                if values:
                    cells[(row, column)] = _stats(values)
        published = _published(setting, rows) if reference and setting["noise_type"] == "none" else {}
        note = NOTE + (PUBLISHED_NOTE if published else "")
        title = (f"{setting['dataset']} {setting['teacher']} -> {setting['student']}, "
                 f"noise {setting['noise_type']} {setting['noise_rate']!r}")
        excluded = dict(sorted(Counter(str(r["status"]) for r in other.get(key, [])).items()))
        tables.append(Table(name=NAME, title=title, setting=setting, rows=rows, columns=list(COLUMNS), cells=cells,
                            reference=published, excluded=excluded, note=note,
                            teachers=teacher_stats(trials_here, known or {})))
    return tables


def _published(setting: Mapping[str, Any], rows: list[str]) -> dict[tuple[str, str], float]:
    out = {}
    for row in rows:
        found = published_value(setting["dataset"], setting["teacher"], setting["student"], row.split(" ")[0])
        if found is not None:
            out[(row, "test acc")] = found[0]
    return out


def _records(trials: pd.DataFrame) -> list[dict[str, Any]]:
    """Plain dicts of the columns the table reads; a column older results lack takes its default."""
    frame = trials[[c for c in _READ if c in trials.columns]]
    out = []
    for r in frame.to_dict("records"):
        for name in _READ:
            r.setdefault(name, _DEFAULTS.get(name))
        for name in ("noise_rate", "tau", "alpha", "test_acc", "teacher_test_acc"):
            r[name] = _float(r[name])
        # teacher_stats reads the teacher's accuracy in percent.
        r["teacher_test_acc"] = 100.0 * r["teacher_test_acc"]
        out.append(r)
    return out


def _stats(values: list[float]) -> CellStats:
    a = np.asarray(values, dtype=float)
    return CellStats(mean=float(a.mean()), std=float(a.std(ddof=1)) if a.size > 1 else math.nan, n=int(a.size))


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def _flag(value: Any) -> bool:
    return not _missing(value) and bool(value)


def _float(value: Any) -> float:
    return math.nan if _missing(value) else float(value)
