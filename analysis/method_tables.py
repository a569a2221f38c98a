"""The paper's three tables of methods: ``tau_alpha``, ``loss``, ``noise``.

Cells follow :mod:`analysis.tables` (last-epoch test accuracy in percent, mean, sample std,
n over completed trials); each builder takes the completed and the other trials as records
(:func:`analysis.table_model.trial_records`) and returns one :class:`~analysis.table_model.Table`
per setting:

- ``tau_alpha``: rows ``kl tau=T`` (inf last), ``mse``, ``ce`` x columns ``alpha=A``; the ``ce``
  row repeats the CE statistics in every column;
- ``loss``: rows ``teacher -> student`` x columns ``ce``, ``kl tau=T alpha=A``, ``mse alpha=A``;
- ``noise``: rows the methods x columns ``rate=R``; clean runs are the ``rate=0`` column of
  every noisy table of their dataset, teacher and student.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

from analysis.reference import fmt_number
from analysis.table_model import (
    LOSS_RANK,
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
    method_ref,
    teacher_stats,
    unique,
)


def _known_losses(trials: list[dict]) -> list[dict]:
    return [t for t in trials if t["loss"] in LOSS_RANK]


def _title(setting: dict[str, Any], with_rate: bool = True) -> str:
    head = setting["dataset"]
    if "teacher" in setting:
        head += f" {setting['teacher']} -> {setting['student']}"
    noise = f"noise {setting['noise_type']}"
    if with_rate:
        noise += f" {setting['noise_rate']!r}"
    return f"{head}, {noise}"


def build_tau_alpha(done: list[dict], other: list[dict], reference: bool, known: Known) -> list[Table]:
    """Rows ``kl tau=T``, ``mse``, ``ce``; columns ``alpha=A``; a setting without KL or MSE has no table."""
    tables = []
    for setting, trials, others in by_setting(SETTING_COLUMNS["tau_alpha"], done, other):
        kd = distilling(trials)
        if not kd:
            continue  # no alpha columns: nothing to tabulate
        columns = unique(f"alpha={fmt_number(a)}" for a in sorted(t["alpha"] for t in kd))
        taus = sorted(t["tau"] for t in trials if t["loss"] == "kl")
        rows = unique(f"kl tau={fmt_number(x)}" for x in taus)
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
        ref = {(r, c): v for r in rows for c in columns
               if (v := clean_reference(reference, setting, setting["teacher"], setting["student"],
                                        f"{r} {c}" if r != "ce" else r)) is not None}
        tables.append(make_table("tau_alpha", _title(setting), setting, rows, columns,
                                 placed, ref, _known_losses(others), teacher_stats(trials, known)))
    return tables


def build_loss(done: list[dict], other: list[dict], reference: bool, known: Known) -> list[Table]:
    """Rows ``teacher -> student``; columns ``ce``, each KL setting, each MSE setting."""
    tables = []
    for setting, trials, others in by_setting(SETTING_COLUMNS["loss"], done, other):
        trials = _known_losses(trials)
        if not trials:
            continue
        pairs = sorted({(t["teacher"], t["student"]) for t in trials})
        rows = [f"{a} -> {b}" for a, b in pairs]
        columns = sorted(unique(method_of(t) for t in trials), key=label_sort_key)
        placed: dict[tuple[str, str], list[float]] = defaultdict(list)
        for t in trials:
            placed[(f"{t['teacher']} -> {t['student']}", method_of(t))].append(t[METRIC])
        ref = {(r, c): v for (teacher, student), r in zip(pairs, rows) for c in columns
               if (v := clean_reference(reference, setting, teacher, student, c)) is not None}
        tables.append(make_table("loss", _title(setting), setting, rows, columns,
                                 placed, ref, _known_losses(others), teacher_stats(trials, known)))
    return tables


def build_noise(done: list[dict], other: list[dict], reference: bool, known: Known) -> list[Table]:
    """Rows: the methods; columns ``rate=R``, the clean runs as ``rate=0``; one table per noise type."""
    tables = []
    for triple, trials, others in by_setting(("dataset", "teacher", "student"), done, other):
        trials = _known_losses(trials)
        noisy = sorted({t["noise_type"] for t in trials if t["noise_type"] != "none"})
        for noise_type in noisy or ["none"]:
            setting = dict(triple, noise_type=noise_type)

            def belongs(t: dict, noise_type: str = noise_type) -> bool:
                return t["noise_type"] in (noise_type, "none")

            def rate(t: dict) -> str:
                return "rate=0" if t["noise_type"] == "none" else f"rate={fmt_number(t['noise_rate'])}"

            chosen = [t for t in trials if belongs(t)]
            rows = sorted(unique(method_of(t) for t in chosen), key=label_sort_key)
            columns = sorted(unique(rate(t) for t in chosen), key=label_sort_key)
            placed: dict[tuple[str, str], list[float]] = defaultdict(list)
            for t in chosen:
                placed[(method_of(t), rate(t))].append(t[METRIC])
            ref: dict[tuple[str, str], float] = {}
            if reference and "rate=0" in columns:  # the clean column of a noisy table
                for r in rows:
                    v = method_ref(setting["dataset"], setting["teacher"], setting["student"], r)
                    if v is not None:
                        ref[(r, "rate=0")] = v
            excluded = [t for t in _known_losses(others) if belongs(t)]
            tables.append(make_table("noise", _title(setting, with_rate=False), setting,
                                     rows, columns, placed, ref, excluded, teacher_stats(chosen, known)))
    return tables


BUILDERS: dict[str, Callable[[list[dict], list[dict], bool, Known], list[Table]]] = {
    "tau_alpha": build_tau_alpha, "loss": build_loss, "noise": build_noise,
}
