"""The paper's tables and figures from kd-tune sweep results: reads what a sweep recorded, never a model.

>>> trials = load_trials("results/tau_grid")          # doctest: +SKIP
>>> print(render(build_tables(trials, "tau_alpha"), "md"))  # doctest: +SKIP

Owns:

- :mod:`~analysis.results_io`: loading a sweep's results (trials, epochs, teachers,
  per-sample measurements and features), local or on an object store;
- :mod:`~analysis.table_model`: the :class:`Table` of :class:`CellStats` and what the
  table builders share; :mod:`~analysis.method_tables` (``tau_alpha``, ``loss``, ``noise``),
  :mod:`~analysis.search_table` (``search``), :mod:`~analysis.teacher_tables` (``pairs``,
  ``sequential``, ``noisy_teacher``); :mod:`~analysis.tables`, every kind and
  :func:`build_tables`;
- :mod:`~analysis.render`: CSV, Markdown and LaTeX; :mod:`~analysis.reference`: the
  published numbers;
- :mod:`~analysis.figures`: the figures (matplotlib); :mod:`~analysis.study`: a search's
  Optuna study rebuilt from Parquet;
- the command lines ``python -m analysis`` and ``python -m analysis.study``.

Cells hold the last-epoch test accuracy in percent over completed trials (mean, sample
std with ddof=1, n); see :mod:`analysis.tables` for the conventions and
:mod:`analysis.reference` for the published numbers.

May import: :mod:`kd_tune.results` and the layers below it (:mod:`kd_tune.storage`,
:mod:`kd_tune.core`, ...); never :mod:`kd_tune.sweep`, :mod:`kd_tune.tracking` or
:mod:`kd_tune.cli`. Within kd-tune only :mod:`kd_tune.cli` (the command line) imports it;
the benchmarks and tests use it from above. Its modules log to ``logging`` loggers named
after them; the command line shows their messages.
"""
from analysis.reference import load_reference, reference_value
from analysis.render import FORMATS, render
from analysis.results_io import load_epochs, load_teachers, load_trials
from analysis.table_model import CellStats, Table
from analysis.tables import TABLES, build_tables

__all__ = ["TABLES", "FORMATS", "CellStats", "Table", "build_tables", "load_reference",
           "load_epochs", "load_teachers", "load_trials", "reference_value", "render"]
