"""Tables of the paper from kd-tune sweep results (Parquet) as CSV, Markdown or LaTeX.

>>> trials = load_trials("results/tau_grid")          # doctest: +SKIP
>>> print(render(build_tables(trials, "tau_alpha"), "md"))  # doctest: +SKIP

Cells hold the last-epoch test accuracy in percent over completed trials (mean, sample
std with ddof=1, n); see :mod:`analysis.tables` for the conventions and
:mod:`analysis.reference` for the published numbers.
"""
from analysis.reference import load_reference, reference_value
from analysis.render import FORMATS, render
from analysis.results_io import load_epochs, load_teachers, load_trials
from analysis.table_model import CellStats, Table
from analysis.tables import TABLES, build_tables

__all__ = ["TABLES", "FORMATS", "CellStats", "Table", "build_tables", "load_reference",
           "load_epochs", "load_teachers", "load_trials", "reference_value", "render"]
