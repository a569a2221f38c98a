"""The ``search`` table: a searched sweep's selected settings, their search and confirmation accuracies.

One table per searched sweep, from its ``trials.parquet`` rows and its record
(``search.json``, :mod:`kd_tune.results.search_record`), which says which trials the search drew
and which reran each selected setting. Rows are the selected settings in rank order
(``1. kl tau=3.21 alpha=0.432``, the final pick marked ``(final)``); columns, in percent,
mean ± sample std (n):

- ``val (search)``: last-epoch validation accuracy of the setting's completed search
  trials (what selected it; the best of many draws, so optimistic);
- ``val (confirmation)``, ``test (confirmation)``: last-epoch validation and test
  accuracy over the confirmation seeds (new seeds, full epochs): the reported numbers.

The line under the table states the protocol; ``excluded`` counts the search trials that
did not complete (stopped early by the scheduler, diverged, failed).
"""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from analysis.table_model import CellStats, Known, Table, cell_stats, teacher_stats, trial_records
from kd_tune.core.status import TrialStatus
from kd_tune.results.search_record import SearchRecord
from kd_tune.storage import Storage, open_storage

COLUMNS = ("val (search)", "val (confirmation)", "test (confirmation)")


def search_tables(trials: pd.DataFrame, records: Mapping[str, SearchRecord],
                  known: Known | None = None) -> list[Table]:
    """One ``search`` table per sweep in ``records`` (sweep name -> record) with a selection.

    ``trials`` is a frame as :func:`analysis.load_trials` returns it (several sweeps may
    be in it, told apart by the ``sweep`` column); ``known`` its teachers by key
    (:func:`analysis.table_model.teacher_index`).
    """
    tables = []
    for sweep, record in records.items():
        if not record.selected:
            continue
        rows = trials[trials["sweep"] == sweep].set_index("trial_key")
        drawn = rows.loc[[k for k in record.search_keys if k in rows.index]]
        first = rows.loc[record.selected[0].search_keys[0]]
        setting = {"sweep": sweep, **{k: first[k] for k in ("dataset", "teacher", "student")}}
        cells: dict[tuple[str, str], CellStats] = {}
        labels = []
        for chosen in record.selected:
            label = f"{chosen.rank}. {chosen.label}" + (" (final)" if chosen.rank == record.pick else "")
            labels.append(label)
            confirm = _completed(rows, chosen.confirm_keys)
            for column, frame, metric in zip(COLUMNS, (_completed(rows, chosen.search_keys), confirm, confirm),
                                             ("val_acc", "val_acc", "test_acc")):
                if len(frame):
                    cells[(label, column)] = cell_stats([100.0 * float(v) for v in frame[metric]])
        seeds = record.settings["confirm_seeds"]
        note = (f"Protocol: the top {len(record.selected)} settings by validation accuracy (last epoch) over "
                f"{len(drawn)} search trials; each rerun at full epochs with {seeds} new seeds; final: the best "
                f"by mean validation accuracy over those seeds; reported: test accuracy ({{percent}}) at the last "
                f"epoch, mean {{pm}} std (n seeds). Test accuracy chose nothing.")
        excluded = Counter(str(s) for s in drawn["status"] if s != TrialStatus.COMPLETED)
        tables.append(Table(
            name="search", title=f"{sweep}: {setting['dataset']} {setting['teacher']} -> {setting['student']}",
            setting=setting, rows=labels, columns=list(COLUMNS), cells=cells,
            excluded=dict(sorted(excluded.items())), note=note,
            teachers=teacher_stats(trial_records(rows.reset_index()), known or {}),
        ))
    return tables


def load_records(path: str | os.PathLike | Storage) -> dict[str, SearchRecord]:
    """The search records of a sweep folder, or of the sweep folders directly under ``path`` (a local
    folder, a URI or a :class:`~kd_tune.storage.Storage`): sweep name -> record."""
    storage = open_storage(path)
    folders = [storage, *(storage / e.path for e in storage.list() if e.is_dir)] if storage.is_dir() else []
    records = (SearchRecord.read(folder) for folder in folders)
    return {record.sweep: record for record in records if record is not None}


def _completed(rows: pd.DataFrame, keys: Sequence[str]) -> Any:
    frame = rows.loc[[k for k in keys if k in rows.index]]
    return frame[frame["status"] == TrialStatus.COMPLETED]
