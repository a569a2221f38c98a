"""Every table kind, and :func:`build_tables`, which builds the tables of one kind from a frame of trials.

The kinds (:data:`TABLES`, described in :data:`TABLE_HELP`) are built in these modules:
``tau_alpha``, ``loss`` and ``noise`` in :mod:`analysis.method_tables`; ``search`` in
:mod:`analysis.search_table`; ``pairs``, ``sequential`` and ``noisy_teacher`` in
:mod:`analysis.teacher_tables`; ``logit_losses`` in :mod:`analysis.loss_tables`; ``data_size`` in
:mod:`analysis.data_size_table`. All build
the :class:`~analysis.table_model.Table` of :mod:`analysis.table_model`.

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

from collections.abc import Mapping

import pandas as pd

from analysis.data_size_table import data_size_tables
from analysis.loss_tables import logit_loss_tables
from analysis.method_tables import BUILDERS as METHOD_BUILDERS
from analysis.search_table import search_tables
from analysis.table_model import Table, check_columns, teacher_index, trial_records
from analysis.teacher_tables import BUILDERS as TEACHER_BUILDERS
from kd_tune.core.status import TrialStatus
from kd_tune.results.search_record import SearchRecord

TABLES = ("tau_alpha", "loss", "noise", "search", "pairs", "sequential", "noisy_teacher", "logit_losses", "data_size")
ROW_HEADERS = {"tau_alpha": "method", "loss": "teacher -> student", "noise": "method", "search": "selected setting",
               "pairs": "teacher -> student", "sequential": "teacher -> student", "noisy_teacher": "method",
               "logit_losses": "method", "data_size": "method"}
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
    "data_size": "rows 'ce', 'kl tau=T alpha=A', 'mse alpha=A' x columns 'fraction=F' (the student's share of the "
                 "training split; the teacher trained on all of it); one table per (dataset, teacher, student, "
                 "noise_type, noise_rate)",
}
_BUILDERS = {**METHOD_BUILDERS, **TEACHER_BUILDERS}


def build_tables(trials: pd.DataFrame, table: str, *, reference: bool = True,
                 records: Mapping[str, SearchRecord] | None = None,
                 teachers: pd.DataFrame | None = None) -> list[Table]:
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
    check_columns(trials)
    known = teacher_index(teachers)
    if table == "search":
        return search_tables(trials, records or {}, known)
    if table == "logit_losses":
        return logit_loss_tables(trials, reference=reference, known=known)
    if table == "data_size":
        return data_size_tables(trials, known)
    completed = trials["status"] == TrialStatus.COMPLETED
    return _BUILDERS[table](trial_records(trials[completed]), trial_records(trials[~completed]), reference, known)
