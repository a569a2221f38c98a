"""Loading sweep results: the Parquet data a sweep writes (the only thing analysis reads).

A sweep keeps them in ``<sweep>/results/trials/`` and ``<sweep>/results/epochs/`` (Parquet
part files; layout in :mod:`kd_tune.results.trial_tables`); sweeps of the older layout kept
``<sweep>/trials.parquet`` and ``<sweep>/epochs.parquet``. Both are read here, one row per
key, through :func:`kd_tune.results.trial_tables.read_trials` and :func:`kd_tune.results.trial_tables.read_epochs`.
The teacher nodes a sweep used are ``<sweep>/teachers.parquet``
(:mod:`kd_tune.results.teacher_table`). The per-sample end measurements are the part-file data
sets ``<sweep>/samples.parquet/`` and ``<sweep>/features.parquet/`` (:mod:`kd_tune.results.samples`).

Every ``path`` here is a local path, a URI of an object store (``s3://bucket/prefix/NAME``;
credentials and endpoint from the environment, see :mod:`kd_tune.storage.location`) or a
:class:`~kd_tune.storage.Storage`: one code path reads both.
"""
from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from kd_tune.results.samples import FEATURES_DIR, SAMPLES_DIR
from kd_tune.results.teacher_table import TEACHERS_SCHEMA, read_teachers_table
from kd_tune.results.trial_tables import RESULTS_DIR, TRIALS_FILE, has_results, read_epochs, read_trials
from kd_tune.storage import Storage, located, open_storage

Location = str | os.PathLike | Storage


def find_sweeps(path: Location) -> list[Path | str]:
    """The sweep folders ``path`` names (local Paths, or URIs as str on an object store).

    ``path`` is a sweep folder, its ``results`` folder or one of its table folders, or a
    folder whose direct subfolders are sweep folders (sorted by name). Raises
    FileNotFoundError with a readable message when there is none.
    """
    return [located(sweep) for sweep in sweep_storages(path)]


def sweep_storages(path: Location) -> list[Storage]:
    """The sweep folders ``path`` names, as :class:`~kd_tune.storage.Storage` (see :func:`find_sweeps`)."""
    storage = open_storage(path)
    where = located(storage)
    if not storage.is_dir():
        raise FileNotFoundError(f"{where}: no such file or directory" if not storage.exists()
                                else f"{where}: not a folder")
    if has_results(storage):
        return [storage]
    if storage.name == RESULTS_DIR and has_results(storage.parent):  # <sweep>/results
        return [storage.parent]
    if storage.parent.name == RESULTS_DIR and has_results(storage.parent.parent):  # <sweep>/results/trials
        return [storage.parent.parent]
    found = [storage / entry.path for entry in storage.list() if entry.is_dir]
    found = [sweep for sweep in found if has_results(sweep)]
    if not found:
        raise FileNotFoundError(
            f"{where}: no sweep results ({RESULTS_DIR}/trials/ or {TRIALS_FILE}) in this folder or in its direct "
            "subfolders")
    return found


def load_trials(path: Location) -> pd.DataFrame:
    """All trials of one sweep folder, or of every sweep folder directly under ``path``.

    ``path`` may also be a single Parquet file of trial rows. Returns one row per trial
    with the columns of the trials table (frames of several sweeps are concatenated;
    the ``sweep`` column tells them apart). Every status is kept (completed, diverged,
    failed); the tables use only ``status == "completed"`` rows. Accuracies stay
    fractions in [0, 1] here; the tables convert them to percent. A damaged file raises
    :class:`kd_tune.results.trial_tables.ResultsError` (a ValueError) naming it.
    """
    storage = open_storage(path)
    if storage.is_file():
        if storage.is_local:
            return pd.read_parquet(storage.local_path)
        with storage.open_input_file("") as source:
            return pd.read_parquet(source)
    return _load(storage, read_trials)


def load_epochs(path: Location) -> pd.DataFrame:
    """All epoch rows of one sweep folder, or of every sweep folder directly under ``path``
    (one row per trial and epoch, in no particular order)."""
    return _load(path, read_epochs)


def _load(path: Location, read: Callable[[Storage], pa.Table]) -> pd.DataFrame:
    frames = [read(sweep).to_pandas() for sweep in sweep_storages(path)]
    if len(frames) == 1:
        return frames[0]
    return pd.concat(frames, ignore_index=True)


def load_teachers(path: Location) -> pd.DataFrame:
    """The ``teachers.parquet`` rows of the sweep folder(s) of ``path``: one row per teacher
    node a sweep used (every ensemble member, every intermediate student of a chain, the
    composite teacher itself; columns in :mod:`kd_tune.results.teacher_table`, ``epochs_trained``
    as pandas' nullable Int64). A sweep without the file adds no rows; with none at all the
    frame is empty, with those columns. The same teacher used by several sweeps has a row
    in each (the ``sweep`` column tells them apart).
    """
    found = (read_teachers_table(sweep) for sweep in sweep_storages(path))
    tables = [t for t in found if t is not None] or [TEACHERS_SCHEMA.empty_table()]
    # epochs_trained stays an integer column with an ensemble's null (pandas' Int64).
    return pd.concat([t.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get) for t in tables],
                     ignore_index=True)


def load_samples(path: Location, columns: list[str] | None = None) -> pd.DataFrame:
    """The per-sample end measurements of the sweep folder(s) of ``path``: every part of
    ``samples.parquet/`` (``columns`` only, when given; empty frame when there is none)."""
    return _load_parts(path, SAMPLES_DIR, columns)


def load_features(path: Location, columns: list[str] | None = None) -> pd.DataFrame:
    """The penultimate features of the sweep folder(s) of ``path`` (``features.parquet/``)."""
    return _load_parts(path, FEATURES_DIR, columns)


def _load_parts(path: Location, folder: str, columns: list[str] | None) -> pd.DataFrame:
    frames = []
    for sweep in sweep_storages(path):
        if any(fnmatch.fnmatchcase(e.path, "part-*.parquet") and not e.is_dir for e in sweep.list(folder)):
            data = ds.dataset(sweep.fs_path(folder), filesystem=sweep.filesystem, format="parquet")
            frames.append(data.to_table(columns=columns).to_pandas())
    return _concat(frames)


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    if not frames:
        return pd.DataFrame()
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
