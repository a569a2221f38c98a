"""Rendering tables as CSV, Markdown or LaTeX (see :func:`render`).

Markdown/LaTeX cells read ``mean ± std (n)`` with 2 decimals, e.g. ``96.43 ± 0.73 (3)``
(LaTeX: ``96.43 $\\pm$ 0.73 (3)``); the std is left out when n == 1 (``96.43 (1)``), the
cell is empty without trials, and a published value follows in brackets: `` [74.24]``.
Under each table (in the LaTeX caption): its teachers with their accuracies,
``Teacher: cnn-32: test 99.44%`` or, where ``teachers.parquet`` gave the train accuracy and
kind, ``Teachers: cnn-32 (ce): train 100.00%, test 99.44%; cnn-32@1 (undertrained): ...``.

CSV is wide, lossless and for machines: the setting columns of the table kind, then
``row`` (the row label), then for each column label ``c`` (the union over the tables,
sorted) ``c mean``, ``c std``, ``c n`` and, when any table carries reference values,
``c paper``. Numbers are percent at full float precision (``repr``); an empty field is a
missing value (no trials, std with n == 1, no published value); n is 0 without trials.
One CSV holds one table kind.
"""
from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path

from analysis.table_model import SETTING_COLUMNS, CellStats, Table, label_sort_key
from analysis.tables import ROW_HEADERS
from kd_tune.storage import Storage, located, open_storage

FORMATS = ("csv", "md", "latex")
_SUFFIX = {"csv": "csv", "md": "md", "latex": "tex"}


def format_cell(stats: CellStats | None, reference: float | None = None, *,
                pm: str = "±", decimals: int = 2) -> str:
    """``mean ± std (n)`` plus `` [reference]``; empty when neither is there."""
    parts = []
    if stats is not None:
        text = f"{stats.mean:.{decimals}f}"
        if not math.isnan(stats.std):
            text += f" {pm} {stats.std:.{decimals}f}"
        parts.append(f"{text} ({stats.n})")
    if reference is not None:
        parts.append(f"[{reference:.{decimals}f}]")
    return " ".join(parts)


def teachers_text(table: Table, percent: str = "%") -> str:
    """``Teacher: LABEL (KIND): train A%, test B%`` for each of the table's teachers; empty without."""
    parts = []
    for t in table.teachers:
        accuracies = [] if math.isnan(t.train_acc) else [f"train {t.train_acc:.2f}{percent}"]
        accuracies.append("test unknown" if math.isnan(t.test_acc) else f"test {t.test_acc:.2f}{percent}")
        parts.append(f"{t.label}{f' ({t.kind})' if t.kind else ''}: {', '.join(accuracies)}")
    return f"{'Teacher' if len(parts) == 1 else 'Teachers'}: {'; '.join(parts)}" if parts else ""


def _excluded_text(table: Table) -> str:
    return ", ".join(f"{n} {status}" for status, n in table.excluded.items() if n)


def _note(table: Table, pm: str, percent: str) -> str:
    if table.note:
        return table.note.format(pm=pm, percent=percent)
    note = f"Test accuracy ({percent}) at the last epoch: mean {pm} std (n seeds), completed trials"
    if table.reference:
        note += "; [published value]"
    return note


# ---------------------------------------------------------------- Markdown

def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def _markdown(table: Table) -> str:
    header = [ROW_HEADERS[table.name], *table.columns]
    lines = [f"### {_md_escape(table.name)}: {_md_escape(table.title)}", "",
             "| " + " | ".join(_md_escape(h) for h in header) + " |",
             "|" + "|".join([":---"] + ["---:"] * len(table.columns)) + "|"]
    for r in table.rows:
        cells = [format_cell(table.stats(r, c), table.reference.get((r, c))) for c in table.columns]
        lines.append("| " + " | ".join([_md_escape(r), *cells]) + " |")
    lines += ["", _note(table, "±", "%")]
    if table.teachers:
        lines += ["", _md_escape(teachers_text(table))]
    excluded = _excluded_text(table)
    if excluded:
        lines += ["", f"excluded: {excluded}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- LaTeX

_LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                   "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                   "^": r"\textasciicircum{}", "<": r"\textless{}", ">": r"\textgreater{}"}


def latex_escape(text: str) -> str:
    """Plain text for LaTeX: specials escaped, ``->`` as ``$\\rightarrow$``."""
    pieces = str(text).split("->")
    return r"$\rightarrow$".join("".join(_LATEX_SPECIALS.get(ch, ch) for ch in p) for p in pieces)


def _latex(table: Table) -> str:
    caption = f"{latex_escape(table.name)}: {latex_escape(table.title)}. " + _note(table, r"$\pm$", r"\%")
    if table.teachers:
        caption += "; " + latex_escape(teachers_text(table, "%"))
    excluded = _excluded_text(table)
    if excluded:
        caption += f"; excluded: {excluded}"
    header = [ROW_HEADERS[table.name], *table.columns]
    lines = [r"\begin{table}[htbp]", r"\centering", rf"\caption{{{caption}.}}",
             r"\begin{tabular}{l" + "r" * len(table.columns) + "}", r"\toprule",
             " & ".join(latex_escape(h) for h in header) + r" \\", r"\midrule"]
    for r in table.rows:
        cells = [format_cell(table.stats(r, c), table.reference.get((r, c)), pm=r"$\pm$")
                 for c in table.columns]
        lines.append(" & ".join([latex_escape(r), *cells]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- CSV

def _num(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else repr(float(value))


def _csv(tables: Sequence[Table]) -> str:
    kinds = sorted({t.name for t in tables})
    if len(kinds) > 1:
        raise ValueError(f"one CSV holds one table kind, got {', '.join(kinds)}; render each separately")
    setting_columns = list(SETTING_COLUMNS[kinds[0]])
    columns = sorted({c for t in tables for c in t.columns}, key=label_sort_key)
    with_paper = any(t.reference for t in tables)
    stats_names = ("mean", "std", "n", "paper") if with_paper else ("mean", "std", "n")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*setting_columns, "row", *(f"{c} {s}" for c in columns for s in stats_names)])
    for t in tables:
        setting = [_num(v) if isinstance(v, float) else str(v)
                   for v in (t.setting[k] for k in setting_columns)]
        for r in t.rows:
            fields = [*setting, r]
            for c in columns:
                st = t.stats(r, c)
                fields += [_num(st.mean if st else None), _num(st.std if st else None),
                           str(st.n if st else 0)]
                if with_paper:
                    fields.append(_num(t.reference.get((r, c))))
            writer.writerow(fields)
    return buf.getvalue()


def render(tables: Sequence[Table], fmt: str) -> str:
    """The tables as one text in ``fmt``: ``csv``, ``md`` (Markdown) or ``latex``.

    Markdown and LaTeX hold any tables one after the other (LaTeX needs ``booktabs``);
    CSV holds tables of one kind (ValueError otherwise). No tables: an empty string.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if not tables:
        return ""
    if fmt == "csv":
        return _csv(tables)
    one = _markdown if fmt == "md" else _latex
    return "\n".join(one(t) for t in tables)


def write_tables(folder: str | os.PathLike | Storage, name: str, tables: Sequence[Table],
                 formats: Sequence[str] = ("csv", "md")) -> list[Path | str]:
    """Write ``tables`` rendered in each of ``formats`` as ``folder/NAME.csv``, ``NAME.md`` (``NAME.tex``
    for latex), each file whole; ``folder`` is a local folder, a URI (``s3://.../NAME/tables``) or a
    :class:`~kd_tune.storage.Storage`. Returns the files (local Paths, or URIs as str on an object store)."""
    target = open_storage(folder)
    written: list[Path | str] = []
    for fmt in formats:
        rel = f"{name}.{_SUFFIX[fmt]}"
        target.write_text(rel, render(tables, fmt))
        written.append(located(target, rel))
    return written
