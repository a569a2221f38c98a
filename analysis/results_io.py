"""Loading sweep results: the Parquet files a sweep writes (the only thing analysis reads).

``trials.parquet`` and ``epochs.parquet`` (:mod:`kd_tune.results`), the part-file
data sets ``samples.parquet/`` and ``features.parquet/`` (:mod:`kd_tune.samples`), and
``teachers.parquet`` (one row per teacher node a sweep used, written by the driver).
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

TRIALS_FILE = "trials.parquet"
EPOCHS_FILE = "epochs.parquet"
SAMPLES_DIR = "samples.parquet"
FEATURES_DIR = "features.parquet"
TEACHERS_FILE = "teachers.parquet"
# The columns of teachers.parquet and their pandas dtypes. kind: ce, undertrained,
# sequential or ensemble; architecture: an ensemble's members joined by "+";
# epochs_trained: null for an ensemble; accuracies in [0, 1] (an ensemble's: of its
# mean logits); seconds: wall seconds to train it (0 for an ensemble).
TEACHER_COLUMNS = {"sweep": "string", "teacher_key": "string", "spec": "string", "kind": "string",
                   "architecture": "string", "epochs_trained": "Int64", "train_acc": "float64",
                   "test_acc": "float64", "seconds": "float64"}


def find_trial_files(path: str | os.PathLike) -> list[Path]:
    """The Parquet files under ``path``.

    ``path`` is a ``trials.parquet`` file, a sweep folder holding one, or a folder whose
    direct subfolders are sweep folders (``*/trials.parquet``, sorted by name).
    Raises FileNotFoundError with a readable message when there is none.
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if (path / TRIALS_FILE).is_file():
        return [path / TRIALS_FILE]
    found = sorted(p for p in path.glob(f"*/{TRIALS_FILE}") if p.is_file())
    if not found:
        raise FileNotFoundError(
            f"{path}: no {TRIALS_FILE} in this folder or in its direct subfolders")
    return found


def load_trials(path: str | os.PathLike) -> pd.DataFrame:
    """All trials of one sweep folder, or of every sweep folder directly under ``path``.

    Returns one row per trial with the columns of ``trials.parquet`` (frames of several
    sweeps are concatenated; the ``sweep`` column tells them apart). Every status is kept
    (completed, diverged, failed); the tables use only ``status == "completed"`` rows.
    Accuracies stay fractions in [0, 1] here; the tables convert them to percent.
    """
    frames = [pd.read_parquet(p) for p in find_trial_files(path)]
    if len(frames) == 1:
        return frames[0]
    return pd.concat(frames, ignore_index=True)


def sweep_dirs(path: str | os.PathLike) -> list[Path]:
    """The sweep folders of ``path`` (see :func:`find_trial_files`)."""
    return [p.parent for p in find_trial_files(path)]


def load_epochs(path: str | os.PathLike) -> pd.DataFrame:
    """The ``epochs.parquet`` rows of the sweep folder(s) of ``path`` (empty frame when none)."""
    files = [d / EPOCHS_FILE for d in sweep_dirs(path) if (d / EPOCHS_FILE).is_file()]
    return _concat([pd.read_parquet(f) for f in files])


def load_teachers(path: str | os.PathLike) -> pd.DataFrame:
    """The ``teachers.parquet`` rows of the sweep folder(s) of ``path``: one row per teacher
    node a sweep used (every ensemble member, every intermediate student of a chain, the
    composite teacher itself), columns :data:`TEACHER_COLUMNS`. A sweep without the file
    (an older sweep, or one that has not trained its teachers yet) adds no rows; with none
    at all the frame is empty, with those columns. The same teacher used by several sweeps
    has a row in each (the ``sweep`` column tells them apart).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = [d / TEACHERS_FILE for d in sweep_dirs(path) if (d / TEACHERS_FILE).is_file()]
    # epochs_trained stays an integer column with an ensemble's null (pandas' Int64).
    frames = [pq.read_table(f).to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get) for f in files]
    if not frames:
        return pd.DataFrame({name: pd.Series(dtype=dtype) for name, dtype in TEACHER_COLUMNS.items()})
    return _concat(frames)


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
    for sweep in sweep_dirs(path):
        if (sweep / folder).is_dir() and any((sweep / folder).glob("part-*.parquet")):
            frames.append(ds.dataset(sweep / folder, format="parquet").to_table(columns=columns).to_pandas())
    return _concat(frames)


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    if not frames:
        return pd.DataFrame()
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
