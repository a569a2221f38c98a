"""Loading sweep results: the Parquet data a sweep writes (the only thing analysis reads).

A sweep keeps them in ``<sweep>/results/trials/`` and ``<sweep>/results/epochs/`` (Parquet
part files; layout in :mod:`kd_tune.results`); sweeps of the older layout kept
``<sweep>/trials.parquet`` and ``<sweep>/epochs.parquet``. Both are read here, one row per
key, through :func:`kd_tune.results.read_trials` and :func:`kd_tune.results.read_epochs`.
The teacher nodes a sweep used are ``<sweep>/teachers.parquet``
(:mod:`kd_tune.teacher_table`). The per-sample end measurements are the part-file data
sets ``<sweep>/samples.parquet/`` and ``<sweep>/features.parquet/`` (:mod:`kd_tune.samples`).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa

from kd_tune.results import RESULTS_DIR, TRIALS_FILE, has_results, read_epochs, read_trials
from kd_tune.samples import FEATURES_DIR, SAMPLES_DIR


def find_sweeps(path: str | os.PathLike) -> list[Path]:
    """The sweep folders ``path`` names.

    ``path`` is a sweep folder, its ``results`` folder or one of its table folders, or a
    folder whose direct subfolders are sweep folders (sorted by name). Raises
    FileNotFoundError with a readable message when there is none.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or directory" if not path.exists() else f"{path}: not a folder")
    if has_results(path):
        return [path]
    for sweep in (path.parent, path.parent.parent):  # <sweep>/results, <sweep>/results/trials
        if RESULTS_DIR in path.relative_to(sweep).parts[:1] and has_results(sweep):
            return [sweep]
    found = sorted(p for p in path.iterdir() if p.is_dir() and has_results(p))
    if not found:
        raise FileNotFoundError(
            f"{path}: no sweep results ({RESULTS_DIR}/trials/ or {TRIALS_FILE}) in this folder or in its direct "
            "subfolders")
    return found


def load_trials(path: str | os.PathLike) -> pd.DataFrame:
    """All trials of one sweep folder, or of every sweep folder directly under ``path``.

    ``path`` may also be a single Parquet file of trial rows. Returns one row per trial
    with the columns of the trials table (frames of several sweeps are concatenated;
    the ``sweep`` column tells them apart). Every status is kept (completed, diverged,
    failed); the tables use only ``status == "completed"`` rows. Accuracies stay
    fractions in [0, 1] here; the tables convert them to percent. A damaged file raises
    :class:`kd_tune.results.ResultsError` (a ValueError) naming it.
    """
    if Path(path).is_file():
        return pd.read_parquet(path)
    return _load(path, read_trials)


def load_epochs(path: str | os.PathLike) -> pd.DataFrame:
    """All epoch rows of one sweep folder, or of every sweep folder directly under ``path``
    (one row per trial and epoch, in no particular order)."""
    return _load(path, read_epochs)


def _load(path: str | os.PathLike, read: Callable[[Path], pa.Table]) -> pd.DataFrame:
    frames = [read(sweep).to_pandas() for sweep in find_sweeps(path)]
    if len(frames) == 1:
        return frames[0]
    return pd.concat(frames, ignore_index=True)


def load_teachers(path: str | os.PathLike) -> pd.DataFrame:
    """The ``teachers.parquet`` rows of the sweep folder(s) of ``path``: one row per teacher
    node a sweep used (every ensemble member, every intermediate student of a chain, the
    composite teacher itself; columns in :mod:`kd_tune.teacher_table`, ``epochs_trained``
    as pandas' nullable Int64). A sweep without the file adds no rows; with none at all the
    frame is empty, with those columns. The same teacher used by several sweeps has a row
    in each (the ``sweep`` column tells them apart).
    """
    import pyarrow.parquet as pq

    from kd_tune.teacher_table import TEACHERS_FILE, TEACHERS_SCHEMA

    files = [d / TEACHERS_FILE for d in find_sweeps(path) if (d / TEACHERS_FILE).is_file()]
    tables = [pq.read_table(f) for f in files] or [TEACHERS_SCHEMA.empty_table()]
    # epochs_trained stays an integer column with an ensemble's null (pandas' Int64).
    return pd.concat([t.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get) for t in tables],
                     ignore_index=True)


def load_samples(path: str | os.PathLike, columns: list[str] | None = None) -> pd.DataFrame:
    """The per-sample end measurements of the sweep folder(s) of ``path``: every part of
    ``samples.parquet/`` (``columns`` only, when given; empty frame when there is none)."""
    return _load_parts(path, SAMPLES_DIR, columns)


def load_features(path: str | os.PathLike, columns: list[str] | None = None) -> pd.DataFrame:
    """The penultimate features of the sweep folder(s) of ``path`` (``features.parquet/``)."""
    return _load_parts(path, FEATURES_DIR, columns)


def _load_parts(path: str | os.PathLike, folder: str, columns: list[str] | None) -> pd.DataFrame:
    import pyarrow.dataset as ds

    frames = []
    for sweep in find_sweeps(path):
        if (sweep / folder).is_dir() and any((sweep / folder).glob("part-*.parquet")):
            frames.append(ds.dataset(sweep / folder, format="parquet").to_table(columns=columns).to_pandas())
    return _concat(frames)


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    if not frames:
        return pd.DataFrame()
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
