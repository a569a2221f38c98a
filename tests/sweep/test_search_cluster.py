"""End to end: searched sweeps run as a user runs them, against a real `ray start` cluster.

``python sweeps/tau_search.py --address auto`` on digits with tiny models and 2-3 epochs
in a subprocess; then what it wrote is read back: Parquet, the search record, the MLflow
store, the Optuna storage and the tables.
"""
from __future__ import annotations

import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from processes import ray_env
from sweep_runs import mlflow_runs, one_parent, rerun_without_ray, run_sweep

from analysis import load_epochs, load_trials
from kd_tune.results.search_record import SearchRecord

ROOT = Path(__file__).resolve().parents[2]
TAU_SEARCH = str(ROOT / "sweeps" / "tau_search.py")
SMALL = ["--preset", "digits", "--teacher", "cnn-8", "--student", "cnn-4", "--teacher-epochs", "2"]


def search_cmd(storage: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, TAU_SEARCH, "--address", "auto", "--storage", str(storage), "--name", name, *SMALL,
            *extra]


def test_search_with_asha_then_confirmation(ray_cluster, tmp_path):
    proc = run_sweep(search_cmd(tmp_path, "search", "--epochs", "3", "--num-samples", "10", "--grace-period", "1",
                                "--confirm-top", "2", "--confirm-seeds", "2", "--search-seed", "3"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"Ray cluster at {ray_cluster}" in proc.stdout
    assert "search 'search': 10 trials drawn by TPE, ASHA stopping from epoch 1" in proc.stdout
    assert "### search: search: digits cnn-8 -> cnn-4" in proc.stdout
    assert "Protocol: the top 2 settings by validation accuracy" in proc.stdout

    sweep_dir = tmp_path / "search"
    record = SearchRecord.read(sweep_dir)
    trials = load_trials(sweep_dir).set_index("trial_key")
    searched = trials.loc[record.search_keys]
    # --num-samples trials, one row each, drawn in Optuna's order; ASHA stopped some.
    assert len(record.trials) == 10 and [t.number for t in record.trials] == list(range(10))
    assert len(set(record.search_keys)) == 10
    assert set(searched["status"]) <= {"completed", "stopped"} and (searched["status"] == "stopped").any()
    stopped = searched[searched["status"] == "stopped"]
    assert (stopped["epoch"] < 3).all() and (searched.loc[searched["status"] == "completed", "epoch"] == 3).all()
    # Conditional fields: every MSE trial carries the canonical tau, a KL trial its draw.
    assert (searched.loc[searched["loss"] == "mse", "tau"] == 1.0).all()
    kl = searched.loc[searched["loss"] == "kl", "tau"]
    assert all(t == math.inf or 0.25 <= t <= 64 for t in kl)
    assert searched["alpha"].between(0, 1).all() and (searched["seed"] == 0).all()

    # Selection on validation accuracy, then new seeds at full epochs, as ordinary trials of the sweep.
    assert [s.rank for s in record.selected] == [1, 2]
    best = searched[searched["status"] == "completed"]["val_acc"].max()
    assert record.selected[0].val_acc == pytest.approx(best)
    for chosen in record.selected:
        confirm = trials.loc[list(chosen.confirm_keys)]
        origin = trials.loc[chosen.search_keys[0]]
        assert sorted(confirm["seed"]) == [1, 2] and set(confirm["status"]) == {"completed"}
        assert (confirm["epoch"] == 3).all()
        for column in ("loss", "tau", "alpha", "lr", "student", "teacher"):
            assert (confirm[column] == origin[column]).all()
    assert len(trials) == 10 + 4
    # The final pick: the selected setting with the best mean validation accuracy over its new seeds.
    means = {s.rank: trials.loc[list(s.confirm_keys), "val_acc"].mean() for s in record.selected}
    assert means[record.pick] == max(means.values())

    # The search table from the command line, with the protocol and the stopped trials counted apart.
    table = subprocess.run([sys.executable, "-m", "analysis", str(sweep_dir), "--table", "search"],
                           capture_output=True, text=True, cwd=ROOT)
    assert table.returncode == 0, table.stderr
    assert "| selected setting | val (search) | val (confirmation) | test (confirmation) |" in table.stdout
    assert f"excluded: {len(stopped)} stopped" in table.stdout
    first = trials.loc[list(record.selected[0].confirm_keys), "test_acc"] * 100
    assert f"{first.mean():.2f} ± {first.std():.2f} (2)" in table.stdout

    # The Optuna study rebuilt from trials.parquet, kept in STORAGE/optuna.db.
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert len(study.trials) == 10
    assert study.best_trial.user_attrs["trial_key"] == searched[searched["status"] == "completed"]["val_acc"].idxmax()
    assert study.best_value == pytest.approx(best)
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert {t.user_attrs["trial_key"] for t in pruned} == set(stopped.index)
    for name in ("tables/search.md", "tables/importances.csv", "tables/history.csv",
                 "figures/optimization_history.png"):
        assert (sweep_dir / name).is_file(), name

    client, parents, children = mlflow_runs(tmp_path, "search")
    assert [p.info.status for p in parents] == ["FINISHED"]
    artifacts = {a.path for folder in ("tables", "figures") for a in client.list_artifacts(parents[0].info.run_id,
                                                                                          folder)}
    assert {"tables/search.md", "tables/importances.csv", "figures/optimization_history.png"} <= artifacts
    assert len(children) == 14 and {c.info.status for c in children} == {"FINISHED"}
    tags = {c.data.tags["kd_tune.trial_key"]: c.data.tags["kd_tune.status"] for c in children}
    assert {tags[k] for k in stopped.index} == {"stopped"}


@pytest.mark.slow
def test_interrupted_then_killed_search_resumes_with_its_searcher(ray_cluster, tmp_path):
    # No early stopping here: a trial recorded as stopped would be an interrupted one mistaken for it.
    # Room for two interruptions however late a loaded machine delivers the first one: the
    # second waits for 3 more rows, which must come while trials are still to be drawn.
    samples = 16
    cmd = search_cmd(tmp_path, "resume", "--epochs", "2", "--num-samples", str(samples), "--scheduler", "none",
                     "--checkpoint-every", "1", "--confirm-top", "1", "--confirm-seeds", "1")
    sweep_dir = tmp_path / "resume"

    def recorded() -> pd.DataFrame:
        # Read while the driver writes: no results yet, or a part merged away meanwhile, is "none yet".
        try:
            return load_trials(sweep_dir)
        except (OSError, ValueError):
            return pd.DataFrame()

    def run_until(rows: int, sig: signal.Signals) -> subprocess.Popen:
        with open(tmp_path / f"driver-{sig.name}.log", "wb") as log:
            driver = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=ray_env(), cwd=ROOT)
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and driver.poll() is None:
                if len(recorded()) >= rows:
                    break
                time.sleep(0.2)
            assert driver.poll() is None, "the search ended before it could be interrupted"
            driver.send_signal(sig)
            driver.wait(timeout=120)
        finally:
            driver.kill()
            driver.wait()
        return driver

    # Ctrl-C: Tune stops the running trials and saves its state; none is recorded as stopped.
    interrupted = run_until(2, signal.SIGINT)
    assert interrupted.returncode == 1, (tmp_path / "driver-SIGINT.log").read_text()[-3000:]
    first = load_trials(sweep_dir)
    assert set(first["status"]) == {"completed"} and 2 <= len(first) < samples

    killed = run_until(len(first) + 3, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    before = load_trials(sweep_dir).set_index("trial_key")
    assert set(before["status"]) == {"completed"} and len(before) < samples

    proc = run_sweep(cmd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"({len(before)} already finished)" in proc.stdout
    record = SearchRecord.read(tmp_path / "resume")
    trials = load_trials(sweep_dir).set_index("trial_key")
    # The total is --num-samples: the searcher went on from its saved state, drew nothing twice,
    # and the results hold exactly its trials (one row each), plus the confirmation's one.
    assert [t.number for t in record.trials] == list(range(samples))
    assert len(set(record.search_keys)) == samples and len({t.setting for t in record.trials}) == samples
    assert trials.index.is_unique and set(trials.index) == set(record.search_keys) | set(record.confirm_keys)
    assert len(trials) == samples + 1 and set(trials["status"]) == {"completed"}
    # Trials finished before the interruptions were kept, not run again.
    assert set(before.index) <= set(record.search_keys)
    after = trials.loc[before.index]
    assert (after["finished_at"] == before["finished_at"]).all() and (after["trial_id"] == before["trial_id"]).all()
    epochs = load_epochs(sweep_dir)
    assert not epochs.duplicated(["trial_key", "epoch"]).any()

    # One parent through the Ctrl-C, the kill and the resume.
    _, parent, children = one_parent(tmp_path, "resume")
    ended = {c.data.tags["kd_tune.trial_key"]: c.data.tags.get("kd_tune.status") for c in children
             if c.info.status == "FINISHED"}
    assert set(ended) == set(trials.index) and set(ended.values()) == {"completed"}

    # The finished search invoked twice more: no Ray, nothing drawn or trained, one parent still.
    for _ in range(2):
        again = rerun_without_ray(cmd)
        assert f"all {samples + 1} trials finished before" in again.stdout
    assert SearchRecord.read(tmp_path / "resume") == record
    client, same, again_children = one_parent(tmp_path, "resume")
    assert same.info.run_id == parent.info.run_id and len(again_children) == len(children)
    assert "tables/search.md" in {a.path for a in client.list_artifacts(parent.info.run_id, "tables")}
