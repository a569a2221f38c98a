"""The data_size table and figure: test accuracy against the student's fraction of the data."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from analysis import build_tables
from analysis.figures import NoData, data_size


def frame(rows: list[tuple[str, float, float, int, float]], *, with_fraction: bool = True) -> pd.DataFrame:
    """Trials (loss, tau, fraction, seed, test acc as a fraction) of one setting."""
    records = [{"status": "completed", "dataset": "mnist1d", "teacher": "cnn1d-25", "student": "cnn1d-6",
                "noise_type": "none", "noise_rate": 0.0, "loss": loss, "tau": tau,
                "alpha": 0.0 if loss == "ce" else 1.0, "test_acc": acc, "seed": seed, "data_fraction": fraction}
               for loss, tau, fraction, seed, acc in rows]
    out = pd.DataFrame(records)
    return out if with_fraction else out.drop(columns="data_fraction")


ROWS = [("ce", 1.0, 0.25, 0, 0.50), ("ce", 1.0, 0.25, 1, 0.52), ("ce", 1.0, 1.0, 0, 0.80),
        ("kl", math.inf, 0.25, 0, 0.70), ("kl", math.inf, 1.0, 0, 0.85), ("mse", 1.0, 1.0, 0, 0.86)]


def test_rows_are_methods_columns_fractions_cells_percent():
    (table,) = build_tables(frame(ROWS), "data_size")
    assert table.columns == ["fraction=0.25", "fraction=1"]
    assert table.rows == ["ce", "kl tau=inf alpha=1", "mse alpha=1"]
    cell = table.stats("ce", "fraction=0.25")
    assert cell.mean == pytest.approx(51.0) and cell.n == 2
    assert table.stats("mse alpha=1", "fraction=0.25") is None


def test_results_from_before_the_field_are_the_whole_data_and_draw_no_figure():
    (table,) = build_tables(frame(ROWS[2:3], with_fraction=False), "data_size")
    assert table.columns == ["fraction=1"]
    with pytest.raises(NoData):
        data_size(frame(ROWS[2:3], with_fraction=False))
    assert data_size(frame(ROWS)) is not None
