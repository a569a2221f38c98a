"""Loading sweep results: the ``trials.parquet`` file(s) the sweep writer produces."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

TRIALS_FILE = "trials.parquet"


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
