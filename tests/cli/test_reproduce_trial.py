"""A sweep trial records its CPU thread count, and `python -m kd_tune.run` at that count reproduces it.

A sweep trial runs at its CPU share (1 thread by default); a direct run at torch's
default (all cores). CPU floats depend on the count, so the record must carry it and the
direct run must be able to take it: the same config at the same count is bitwise the trial.
"""
from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from mlflow import MlflowClient
from processes import ray_env

from analysis import load_trials
from kd_tune.core.config import PRESETS, RunConfig
from kd_tune.results.trial_tables import FINAL_METRICS
from kd_tune.sweep.options import SweepOptions

ROOT = Path(__file__).resolve().parents[2]


def run_flags(row: pd.Series) -> list[str]:
    """The `kd_tune.cli.run` flags that give a trials-table row's config (the fields off the cpu preset)."""
    flags = []
    for field in dataclasses.fields(RunConfig):
        value = row[field.name]
        if isinstance(value, float) and math.isnan(value) or value is None:
            continue
        flag = "--" + field.name.replace("_", "-")
        if field.name == "milestones":
            value = tuple(int(m) for m in value)
        if value == getattr(PRESETS["cpu"], field.name):
            continue
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        elif field.name == "milestones":
            flags += [flag, ",".join(map(str, value))]
        else:
            flags += [flag, str(value)]
    return flags


@pytest.mark.slow
def test_a_direct_run_at_the_trials_threads_reproduces_the_sweep_trial(ray_cluster, tmp_path):
    sweep = subprocess.run(
        [sys.executable, str(ROOT / "sweeps" / "tau_grid.py"), "--address", "auto", "--storage", str(tmp_path),
         "--name", "repro", "--preset", "digits", "--teacher", "cnn-8", "--student", "cnn-4", "--teacher-epochs", "2",
         "--epochs", "3",
         "--seeds", "1", "--losses", "kl,mse", "--taus", "3", "--alphas", "0.5"],
        capture_output=True, text=True, timeout=400, env=ray_env(), cwd=ROOT)
    assert sweep.returncode == 0, sweep.stdout[-3000:] + sweep.stderr[-3000:]
    trials = load_trials(tmp_path / "repro").set_index("trial_key")
    assert len(trials) == 2 and set(trials["status"]) == {"completed"}
    # A trial's CPU share is 1 CPU by default: it ran at 1 thread, and says so.
    assert trials["threads"].tolist() == [1, 1] and str(trials["threads"].dtype) == "int64"
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    for key, row in trials.iterrows():
        assert client.get_run(row["mlflow_run_id"]).data.params["threads"] == "1", key

    for key, row in trials.iterrows():
        out = tmp_path / f"{key}.json"
        direct = subprocess.run([sys.executable, "-m", "kd_tune.run", *run_flags(row), "--output-json", str(out)],
                                capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert direct.returncode == 0, direct.stderr[-3000:]
        assert f"{row['student']}, {row['loss']}, 1 CPU thread(s)" in direct.stdout
        payload: dict[str, Any] = json.loads(out.read_text())
        assert payload["config"]["threads"] == 1
        # Bitwise: the teacher (trained again here), the student, every final metric.
        assert {m: payload["final"][m] for m in FINAL_METRICS} == {m: row[m] for m in FINAL_METRICS}, key


@pytest.mark.parametrize("cpus, threads", [(1.0, 1), (0.5, 1), (2.0, 2), (2.5, 2)])
def test_a_sweep_trial_runs_at_its_cpu_share(tmp_path, cpus, threads):
    options = SweepOptions(name="s", storage=tmp_path, cpus_per_trial=cpus)
    assert options.with_threads(RunConfig()).threads == threads
    # A count given with --threads is kept.
    assert options.with_threads(RunConfig(threads=3)).threads == 3
