"""The sweep-efficiency benchmark's arithmetic, on made-up trials of two workers."""
from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

from benchmarks.sweep_efficiency import outside_loop, summary


def made_up_trials() -> pd.DataFrame:
    """Worker 1 runs a (0-11 s) and c (11.5-21 s); worker 2 runs b (1-10 s) alone, then idles."""
    at = pd.Timestamp("2026-01-01", tz="UTC")
    rows = {"a": (1, 0.0, 11.0, 8.0), "b": (2, 1.0, 10.0, 8.5), "c": (1, 11.5, 21.0, 9.0)}
    frame = pd.DataFrame(
        {"pid": [r[0] for r in rows.values()], "started_at": [at + pd.Timedelta(seconds=r[1]) for r in rows.values()],
         "finished_at": [at + pd.Timedelta(seconds=r[2]) for r in rows.values()],
         "train_time_s": [r[3] for r in rows.values()]}, index=list(rows))
    frame["wall_s"] = frame["train_time_s"] + 0.5
    for column in ("setup_s", "reports", "reports_s", "checkpoints", "checkpoint_bytes", "checkpoints_s", "end_s"):
        frame[column] = 0.0
    return frame


def test_a_trials_time_outside_its_loop_and_the_phases_slot_seconds():
    trials = outside_loop(made_up_trials())
    assert list(trials.index) == ["a", "b", "c"]
    assert trials.loc["c", "handover_s"] == pytest.approx(0.5) and trials["handover_s"].isna().sum() == 2
    # span less the loop, plus the hand-over: a 11 - 8, b 9 - 8.5, c 9.5 - 9 + 0.5
    assert trials["outside_s"].tolist() == pytest.approx([3.0, 0.5, 1.0])
    got = summary(SimpleNamespace(fit_seconds=23.0), trials, slots=2)
    assert got["ratio"] == pytest.approx(23.0 / (25.5 / 2))
    assert got["outside_s"] == pytest.approx(1.5)
    assert got["slot_outside_s"] == pytest.approx((23.0 * 2 - 25.5) / 3)
    assert got["phase_edges_s"] == pytest.approx((23.0 - 21.0) * 2 / 3)  # before the first start, after the last end
    assert got["idle_tail_s"] == pytest.approx(11.0 / 3)  # worker 2 idles from 10 s to 21 s
    assert got["first_on_worker_s"] == pytest.approx((3.0 + 0.5) / 2) and got["later_on_worker_s"] == pytest.approx(1.0)
