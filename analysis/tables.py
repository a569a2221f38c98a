"""Building the paper's tables from a frame of trials (see :func:`build_tables`).

Conventions:

- The number in every cell is the last-epoch test accuracy ``test_acc`` (a fraction in
  the Parquet) in PERCENT: each trial's ``100 * test_acc``, then over the trials of the
  cell (normally one per seed) the mean, the sample standard deviation (ddof=1) and the
  count n. With n == 1 the sample std is undefined and stored as NaN (blank in CSV,
  left out in Markdown/LaTeX).
- Only trials with ``status == "completed"`` enter a cell. Diverged and failed trials of
  the same setting are counted in ``Table.excluded``.
- Labels print numbers with ``{:g}`` (infinity as ``inf``); trials whose tau/alpha/rate
  print the same label share a cell. Tau sorts numerically with ``inf`` last.
- CE trials do not depend on tau or alpha (sweeps store them with alpha=0.0), so those
  two columns are ignored for them; in the ``tau_alpha`` table the ``ce`` row repeats the
  same CE statistics in every alpha column, as the reference line of each column.
  For ``mse`` tau is ignored.
- Reference values (published, percent; see :mod:`analysis.reference`) are attached
  only to clean-label cells: settings with noise_type ``none``, and the ``rate=0``
  column of a ``noise`` table.
- Every table names the teachers of its distilling trials with their test accuracy
  (``Table.teachers``, percent): the trials' ``teacher_test_acc``, and the train
  accuracy and kind from ``teachers.parquet`` where the sweep wrote one.
- The ``pairs``, ``sequential`` and ``noisy_teacher`` tables (:mod:`analysis.teacher_tables`)
  put CE trials by student: a student trained alone has no teacher, so its CE cell is
  the same in every row (or column) of that student.
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
from kd_tune.core.status import TrialStatus

TABLES = ("tau_alpha", "loss", "noise", "search", "pairs", "sequential", "noisy_teacher", "logit_losses")
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
}
ROW_HEADERS = {"tau_alpha": "method", "loss": "teacher -> student", "noise": "method", "search": "selected setting",
               "pairs": "teacher -> student", "sequential": "teacher -> student", "noisy_teacher": "method",
               "logit_losses": "method"}
TABLE_HELP = {
    "tau_alpha": "rows 'kl tau=T' (inf last), 'mse', 'ce' x columns 'alpha=A'; one table per "
                 "(dataset, teacher, student, noise_type, noise_rate); the ce row repeats the "
                 "CE result (which has no alpha) in every column",
    "loss": "rows 'teacher -> student' x columns 'ce', 'kl tau=T alpha=A', 'mse alpha=A'; "
            "one table per (dataset, noise_type, noise_rate)",
    "noise": "rows 'ce', 'kl tau=T alpha=A', 'mse alpha=A' x columns 'rate=R'; one table per "
             "(dataset, teacher, student, noise_type); clean runs (noise none) form the rate=0 "
             "column of every noisy table",
    "search": "a searched sweep's selected settings (rank. setting) x columns 'val (search)', "
              "'val (confirmation)', 'test (confirmation)'; the protocol in a line under it; needs the "
              "sweep's search.json",
    "pairs": "rows 'teacher -> student' x columns 'ce', 'kl tau=T alpha=A', 'mse alpha=A'; one table per "
             "(dataset, noise_type, noise_rate); the ce column is the student trained alone, the same in "
             "every row of that student",
    "sequential": "rows 'teacher -> student' (a chain A>B as 'A -> B -> student') and 'no teacher (ce)' x "
                  "columns 'kl tau=T alpha=A', 'mse alpha=A'; one table per (dataset, student, noise_type, "
                  "noise_rate); the ce row repeats the CE result in every column",
    "noisy_teacher": "rows 'ce', 'kl tau=T alpha=A', 'mse alpha=A' x columns teacher spec (e.g. cnn-32, "
                     "cnn-32@1); one table per (dataset, student, noise_type, noise_rate); each teacher's "
                     "train and test accuracy under it (from teachers.parquet)",
    "logit_losses": "rows 'ce', 'kl tau=T alpha=A', 'kl+ls ...', 'dkd ...', 'dist ...', 'mse ...', 'mse+std ...' x "
                    "columns 'test acc', 'logit distance', 'logit-mean gap'; one table per (dataset, teacher, "
                    "student, noise_type, noise_rate); published CIFAR-100 numbers of other papers beside "
                    "(analysis/loss_tables.py)",
}
REQUIRED_COLUMNS = ("status", "dataset", "teacher", "student", "noise_type", "noise_rate",
                    "loss", "tau", "alpha", METRIC)
# Read when present: what names a trial's teacher and its accuracy (older frames lack them).
TEACHER_COLUMNS = {"teacher_key": None, "teacher_test_acc": math.nan, "clean_teacher": False}
# Read when present: kl or mse on z-scored logits is another method than the paper's; its
# loss reads "kl+std" / "mse+std" here, which these tables leave out (the logit_losses table
# of analysis.loss_tables shows it). Results from before the column are plain kl and mse.
STANDARDIZE_COLUMN = "standardize"
_LOSS_RANK = {"ce": 0, "kl": 1, "mse": 2}


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
        elif token in _LOSS_RANK:
            rank = _LOSS_RANK[token]
    return (rank, tuple(numbers), label)


def _label_params(label: str) -> dict[str, Any]:
    """Inverse of :func:`method_label` (and of ``alpha=A``, ``rate=R``)."""
    out: dict[str, Any] = {}
    for token in label.split(" "):
        m = _PART.match(token)
        if m:
            out[m.group(1)] = float(m.group(2))
        elif token in _LOSS_RANK:
            out["loss"] = token
    return out


def _unique(labels: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(labels))


# ---------------------------------------------------------------- building

def _check_columns(trials: pd.DataFrame) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in trials.columns]
    if missing:
        raise ValueError(f"the trials lack column(s): {', '.join(missing)}")


def _float(value: Any) -> float:
    return math.nan if value is None or pd.isna(value) else float(value)


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
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


def teacher_index(teachers: pd.DataFrame | None) -> dict[str, dict[str, Any]]:
    """``teachers.parquet`` rows (:func:`analysis.results_io.load_teachers`) by teacher key."""
    if teachers is None or teachers.empty:
        return {}
    return {str(r["teacher_key"]): r for r in teachers.to_dict("records")}


def teacher_stats(trials: Iterable[Mapping[str, Any]],
                  known: Mapping[str, Mapping[str, Any]]) -> tuple[TeacherStats, ...]:
    """The teachers of the distilling trials among ``trials`` (records as :func:`_records`
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
        label = labels[key] + (f" (for {_method_of(t)})" if shared[labels[key]] > 1 else "")
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


_DIGITS = re.compile(r"(\d+)")


def natural_key(text: str) -> tuple:
    """Sort key that orders numbers inside names by value: cnn-4 < cnn-8 < cnn-16."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in _DIGITS.split(text) if part)


def _stats(values: list[float]) -> CellStats:
    a = np.asarray(values, dtype=float)
    std = float(np.std(a, ddof=1)) if a.size > 1 else math.nan
    return CellStats(mean=float(np.mean(a)), std=std, n=int(a.size))


def _table(name: str, title: str, setting: dict[str, Any], rows: list[str],
           columns: list[str], placed: dict[tuple[str, str], list[float]],
           reference: dict[tuple[str, str], float], excluded: list[dict],
           teachers: tuple[TeacherStats, ...] = ()) -> Table:
    cells = {(r, c): _stats(placed[(r, c)]) for r in rows for c in columns if placed.get((r, c))}
    return Table(name=name, title=title, setting=setting, rows=rows, columns=columns,
                 cells=cells, reference=reference,
                 excluded=dict(sorted(Counter(str(t["status"]) for t in excluded).items())), teachers=teachers)


def _group(records: list[dict], keys: tuple[str, ...]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[tuple(r[k] for k in keys)].append(r)
    return groups


def _method_ref(dataset: str, teacher: str, student: str, method: str) -> float | None:
    p = _label_params(method)
    return reference_value(dataset, teacher, student, p.get("loss", ""), p.get("tau"), p.get("alpha"))


def _pair(t: dict) -> str:
    return f"{t['teacher']} -> {t['student']}"


def _setting_title(setting: dict[str, Any], with_rate: bool = True) -> str:
    head = setting["dataset"]
    if "teacher" in setting:
        head += f" {setting['teacher']} -> {setting['student']}"
    noise = f"noise {setting['noise_type']}"
    if with_rate:
        noise += f" {setting['noise_rate']!r}"
    return f"{head}, {noise}"


def _build_tau_alpha(done: list[dict], other: list[dict], reference: bool,
                     known: Mapping[str, Mapping[str, Any]]) -> list[Table]:
    keys = SETTING_COLUMNS["tau_alpha"]
    others = _group(other, keys)
    tables = []
    for key, trials in sorted(_group(done, keys).items()):
        setting = dict(zip(keys, key))
        kd = [t for t in trials if t["loss"] in ("kl", "mse")]
        if not kd:
            continue  # no alpha columns: nothing to tabulate
        columns = _unique(f"alpha={fmt_number(a)}" for a in sorted(t["alpha"] for t in kd))
        taus = sorted(t["tau"] for t in trials if t["loss"] == "kl")
        rows = _unique(f"kl tau={fmt_number(x)}" for x in taus)
        rows += [loss for loss in ("mse", "ce") if any(t["loss"] == loss for t in trials)]
        placed: dict[tuple[str, str], list[float]] = defaultdict(list)
        for t in trials:
            if t["loss"] == "kl":
                placed[(f"kl tau={fmt_number(t['tau'])}", f"alpha={fmt_number(t['alpha'])}")].append(t[METRIC])
            elif t["loss"] == "mse":
                placed[("mse", f"alpha={fmt_number(t['alpha'])}")].append(t[METRIC])
            elif t["loss"] == "ce":
                for c in columns:
                    placed[("ce", c)].append(t[METRIC])
        ref: dict[tuple[str, str], float] = {}
        if reference and setting["noise_type"] == "none":
            for r in rows:
                for c in columns:
                    method = f"{r} {c}" if r != "ce" else r
                    v = _method_ref(setting["dataset"], setting["teacher"], setting["student"], method)
                    if v is not None:
                        ref[(r, c)] = v
        excluded = [t for t in others.get(key, []) if t["loss"] in _LOSS_RANK]
        tables.append(_table("tau_alpha", _setting_title(setting), setting, rows, columns,
                             placed, ref, excluded, teacher_stats(trials, known)))
    return tables


def _method_of(t: dict) -> str:
    return method_label(t["loss"], t["tau"], t["alpha"])


def _build_loss(done: list[dict], other: list[dict], reference: bool,
                known: Mapping[str, Mapping[str, Any]]) -> list[Table]:
    keys = SETTING_COLUMNS["loss"]
    others = _group(other, keys)
    tables = []
    for key, trials in sorted(_group(done, keys).items()):
        setting = dict(zip(keys, key))
        trials = [t for t in trials if t["loss"] in _LOSS_RANK]
        if not trials:
            continue
        pairs = sorted({(t["teacher"], t["student"]) for t in trials})
        rows = [f"{a} -> {b}" for a, b in pairs]
        columns = sorted(_unique(_method_of(t) for t in trials), key=label_sort_key)
        placed: dict[tuple[str, str], list[float]] = defaultdict(list)
        for t in trials:
            placed[(_pair(t), _method_of(t))].append(t[METRIC])
        ref: dict[tuple[str, str], float] = {}
        if reference and setting["noise_type"] == "none":
            for (teacher, student), r in zip(pairs, rows):
                for c in columns:
                    v = _method_ref(setting["dataset"], teacher, student, c)
                    if v is not None:
                        ref[(r, c)] = v
        excluded = [t for t in others.get(key, []) if t["loss"] in _LOSS_RANK]
        tables.append(_table("loss", _setting_title(setting), setting, rows, columns,
                             placed, ref, excluded, teacher_stats(trials, known)))
    return tables


def _build_noise(done: list[dict], other: list[dict], reference: bool,
                 known: Mapping[str, Mapping[str, Any]]) -> list[Table]:
    triple = ("dataset", "teacher", "student")
    others = _group(other, triple)
    tables = []
    for key, trials in sorted(_group(done, triple).items()):
        trials = [t for t in trials if t["loss"] in _LOSS_RANK]
        noisy = sorted({t["noise_type"] for t in trials if t["noise_type"] != "none"})
        for noise_type in noisy or ["none"]:
            setting = dict(zip(triple, key), noise_type=noise_type)

            def belongs(t: dict, noise_type: str = noise_type) -> bool:
                return t["noise_type"] in (noise_type, "none")

            def rate(t: dict) -> str:
                return "rate=0" if t["noise_type"] == "none" else f"rate={fmt_number(t['noise_rate'])}"

            chosen = [t for t in trials if belongs(t)]
            rows = sorted(_unique(_method_of(t) for t in chosen), key=label_sort_key)
            columns = sorted(_unique(rate(t) for t in chosen), key=label_sort_key)
            placed: dict[tuple[str, str], list[float]] = defaultdict(list)
            for t in chosen:
                placed[(_method_of(t), rate(t))].append(t[METRIC])
            ref: dict[tuple[str, str], float] = {}
            if reference and "rate=0" in columns:
                for r in rows:
                    v = _method_ref(setting["dataset"], setting["teacher"], setting["student"], r)
                    if v is not None:
                        ref[(r, "rate=0")] = v
            excluded = [t for t in others.get(key, []) if belongs(t) and t["loss"] in _LOSS_RANK]
            tables.append(_table("noise", _setting_title(setting, with_rate=False), setting,
                                 rows, columns, placed, ref, excluded, teacher_stats(chosen, known)))
    return tables


_BUILDERS = {"tau_alpha": _build_tau_alpha, "loss": _build_loss, "noise": _build_noise}


def build_tables(trials: pd.DataFrame, table: str, *, reference: bool = True,
                 records: Mapping[str, Any] | None = None, teachers: pd.DataFrame | None = None) -> list[Table]:
    """The tables of kind ``table`` (one of :data:`TABLES`), one per distinct setting.

    ``trials`` is a frame as :func:`analysis.load_trials` returns it. Cells use the
    completed trials only (see the module docstring for units and conventions); an
    empty list means no completed trial fits the table. ``reference=True`` attaches the
    published values where a clean-label cell matches one. The ``search`` table needs
    ``records``: sweep name -> its :class:`~kd_tune.results.search_record.SearchRecord` (see
    :mod:`analysis.search_table`). ``teachers`` is the sweeps' ``teachers.parquet``
    (:func:`analysis.results_io.load_teachers`): the teachers' train accuracy and kind under
    each table (the ``noisy_teacher`` table needs it for the train accuracy). Raises
    ValueError for an unknown table or missing columns.
    """
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}; choose one of: {', '.join(TABLES)}")
    _check_columns(trials)
    known = teacher_index(teachers)
    if table == "search":
        from analysis.search_table import search_tables

        return search_tables(trials, records or {}, known)
    if table == "logit_losses":
        from analysis.loss_tables import logit_loss_tables

        return logit_loss_tables(trials, reference=reference, known=known)
    completed = trials["status"] == TrialStatus.COMPLETED
    done = _records(trials[completed])
    other = _records(trials[~completed])
    if table in _BUILDERS:
        return _BUILDERS[table](done, other, reference, known)
    from analysis.teacher_tables import BUILDERS

    return BUILDERS[table](done, other, reference, known)
