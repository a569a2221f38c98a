"""Published reference numbers, carried with the package as ``paper_tables.csv``.

Sources (top-1 test accuracy in percent, CIFAR-100, 200 epochs, from the code of the
paper, github jhoon-oh/kd_data; single runs or best of three):

- ``precursor-table-12``: the tau x alpha grid for WRN-28-4 -> WRN-16-2 from "When does
  Knowledge Distillation Help?" (the same authors' earlier submission on the same code,
  Supplementary.pdf in that repository). Its tau=3, alpha=1 entry (74.24) equals the
  IJCAI 2021 paper's.
- ``precursor-table-4``: CE baselines of each architecture trained alone.
- ``ijcai-2021-text``: numbers quoted in the text of Kim et al., IJCAI 2021
  (sequential distillation).

- Rows of table ``logit_losses`` are published numbers of *other* papers, not of Kim et
  al. and not of kd-tune: CIFAR-100 (240 epochs, the CRD/DKD recipe), pairs ResNet32x4 ->
  ResNet8x4 (kd-tune's ``resnet-32x4`` -> ``resnet-8x4``) and WRN-40-2 -> WRN-16-2, one
  number per method family (``kl``: KD at tau 4 with CE weight 0.1, i.e. alpha 0.9;
  ``dkd``; ``dist``; ``kl+ls``: KD with logit standardization at base temperature 2).
  ``zhao-cvpr2022-dkd-table1``: Zhao et al., "Decoupled Knowledge Distillation", CVPR
  2022, Table 1 (its KD column quotes CRD, Tian et al., ICLR 2020);
  ``...-beta6``: the same table, DKD run with beta 6 for that pair;
  ``huang-neurips2022-dist-table``: Huang et al., "Knowledge Distillation from A Stronger
  Teacher", NeurIPS 2022, CIFAR-100 table; ``sun-cvpr2024-ls-table``: Sun et al., "Logit
  Standardization in Knowledge Distillation", CVPR 2024, CIFAR-100 table (KD + ours).
  :func:`published_value` reads them; :mod:`analysis.loss_tables` shows them beside a run
  of the same pair, marked published.

``tau`` may be ``inf`` (the logit-matching limit of the KL loss).

How rows map onto table cells (see :func:`reference_value`): a KD cell (loss ``kl``
with its tau, or ``mse``) matches a row of table ``tau_alpha`` or ``sequential`` with the
same dataset, teacher, student, loss, tau (kl only) and alpha; a CE cell matches the
``baseline`` row of its student (the baseline does not depend on teacher or alpha).
Values are compared as the tables print them (``{:g}``), so ``1`` matches ``1.0``.
Only clean-label cells (noise_type ``none``) receive reference values; that check is
the caller's (:mod:`analysis.tables`).
"""
from __future__ import annotations

import csv
import math
from functools import lru_cache
from importlib import resources

REFERENCE_FILE = "paper_tables.csv"
# table kinds of the CSV searched for KD cells, first match wins
_KD_TABLES = ("tau_alpha", "sequential")


def fmt_number(value: float) -> str:
    """A tau/alpha/rate value as labels print it: ``{:g}``, infinity as ``inf``."""
    value = float(value)
    return "inf" if math.isinf(value) and value > 0 else f"{value:g}"


@lru_cache(maxsize=1)
def load_reference() -> tuple[dict[str, str], ...]:
    """The rows of the carried ``paper_tables.csv`` as dicts of strings (value in percent)."""
    text = resources.files(__package__).joinpath(REFERENCE_FILE).read_text(encoding="utf-8")
    return tuple(csv.DictReader(text.splitlines()))


@lru_cache(maxsize=1)
def _index() -> dict[tuple[str, ...], float]:
    index: dict[tuple[str, ...], float] = {}
    rows = [r for r in load_reference() if r["metric"] == "test_acc"]
    for row in rows:
        if row["table"] == "baseline" and row["loss"] == "ce":
            index.setdefault((row["dataset"], row["student"], "ce"), float(row["value"]))
    for table in _KD_TABLES:  # first match wins, in _KD_TABLES order
        for row in rows:
            if row["table"] != table or row["loss"] not in ("kl", "mse"):
                continue
            tau = fmt_number(float(row["tau"])) if row["loss"] == "kl" else ""
            key = (row["dataset"], row["teacher"], row["student"], row["loss"], tau,
                   fmt_number(float(row["alpha"])))
            index.setdefault(key, float(row["value"]))
    return index


def reference_value(dataset: str, teacher: str, student: str, loss: str,
                    tau: float | None = None, alpha: float | None = None) -> float | None:
    """The published test accuracy (percent) for one clean-label cell, or None.

    ``loss`` is ``ce``, ``kl`` or ``mse``. For ``ce`` only dataset and student matter
    (the CE baseline of the student). For ``kl`` tau and alpha must be given; for ``mse``
    alpha.
    """
    if loss == "ce":
        return _index().get((dataset, student, "ce"))
    if alpha is None or (loss == "kl" and tau is None):
        return None
    tau_label = fmt_number(tau) if loss == "kl" else ""
    return _index().get((dataset, teacher, student, loss, tau_label, fmt_number(alpha)))


def published_value(dataset: str, teacher: str, student: str, family: str) -> tuple[float, str] | None:
    """The published test accuracy (percent) of a method family on one pair, with its source,
    from the ``logit_losses`` rows of the reference table (other papers' numbers), or None.

    ``family`` is ``kl``, ``dkd``, ``dist`` or ``kl+ls`` (:mod:`analysis.loss_tables`'s
    family names); the published runs' own recipes and hyperparameters are in the source.
    """
    for row in load_reference():
        if (row["table"], row["dataset"], row["teacher"], row["student"], row["loss"]) == \
                ("logit_losses", dataset, teacher, student, family) and row["metric"] == "test_acc":
            return float(row["value"]), row["source"]
    return None
