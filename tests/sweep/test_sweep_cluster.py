"""End to end: sweeps run as a user runs them, against a real `ray start` cluster.

Each test runs ``python sweeps/tau_grid.py --address auto`` in a subprocess on digits
with tiny models and 1-3 epochs, then reads back what it wrote: the Parquet tables,
the MLflow store (through ``MlflowClient``) and the CSV table.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest
from processes import ray_env
from sweep_runs import ROOT, TAU_GRID, mlflow_runs, one_parent, rerun_without_ray, run_sweep, start_sweep, sweep_cmd

from analysis.results_io import load_epochs, load_teachers, load_trials
from kd_tune.core.config import RunConfig
from kd_tune.results.trial_tables import EPOCHS_SCHEMA, TRIALS_SCHEMA
from kd_tune.teachers.training import load_teacher
from kd_tune.train.checkpoint import load_state
from kd_tune.train.trainer import load_data


def test_tiny_grid_end_to_end(ray_cluster, tmp_path):
    proc = run_sweep(sweep_cmd(tmp_path, "tiny", "--epochs", "2", "--seeds", "2", "--taus", "1,inf",
                               "--alphas", "0.5,1", "--checkpoint-every", "1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"Ray cluster at {ray_cluster}" in proc.stdout
    assert "teachers: 1 needed, 0 in the store, 1 to train" in proc.stdout
    # digits has no augmentation: one view set serves every seed and loss.
    assert "teacher logits (float32): 1 view set(s) needed, 0 cached, 1 to compute" in proc.stdout
    # One cache folder (a .locks folder may stay when two builders' locks overlapped there).
    assert len([p for p in (tmp_path / "teacher_logits").iterdir() if not p.name.startswith(".")]) == 1
    assert "mlflow ui --backend-store-uri sqlite:///" in proc.stdout
    assert f"Parquet:  {tmp_path / 'tiny' / 'results' / 'trials'}/" in proc.stdout
    assert "| kl tau=inf |" in proc.stdout  # the closing table

    sweep_dir = tmp_path / "tiny"
    # kl: 2 taus x 2 alphas, mse: 2 alphas, ce: 1 -> 7 settings x 2 seeds
    # The result tables are Parquet folders apart from Tune's files, one part each after the sweep.
    for table, schema in (("trials", TRIALS_SCHEMA), ("epochs", EPOCHS_SCHEMA)):
        dataset = ds.dataset(sweep_dir / "results" / table)
        assert dataset.schema.remove_metadata().equals(schema) and len(dataset.files) == 1
    assert sorted(os.listdir(sweep_dir / "results")) == ["epochs", "trials"]
    trials = load_trials(sweep_dir)
    epochs = load_epochs(sweep_dir)
    assert len(trials) == 14 and trials["trial_key"].is_unique
    assert set(trials["status"]) == {"completed"}
    assert trials["tau"].dtype == "float64" and math.inf in set(trials["tau"])
    assert set(trials.loc[trials["loss"] == "kl", "alpha"]) == {0.5, 1.0}
    assert trials["teacher_test_acc"].between(0, 1).all() and trials["teacher_key"].nunique() == 1
    (teacher,) = load_teachers(sweep_dir).to_dict("records")
    assert (teacher["teacher_key"], teacher["spec"], teacher["kind"], teacher["epochs_trained"]) == \
        (trials["teacher_key"].iloc[0], "cnn-8", "ce", 2)
    assert teacher["test_acc"] == trials["teacher_test_acc"].iloc[0] and teacher["seconds"] > 0
    assert (trials["epoch"] == 2).all() and (trials["finished_at"] >= trials["started_at"]).all()
    assert len(epochs) == 28 and not epochs.duplicated(["trial_key", "epoch"]).any()
    assert trials["mlflow_run_id"].notna().all()
    distilled = epochs["trial_key"].isin(trials.loc[trials["loss"] != "ce", "trial_key"])
    assert (epochs.loc[distilled, "teacher_forward_samples"] == 0).all()  # the cache ran the teacher
    last = epochs[epochs["epoch"] == 2].set_index("trial_key")["test_acc"]
    assert (trials.set_index("trial_key")["test_acc"] == last.loc[trials["trial_key"]]).all()

    client, parents, children = mlflow_runs(tmp_path, "tiny")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 14
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert {c.info.status for c in children} == {"FINISHED"}
    by_key = {c.data.tags["kd_tune.trial_key"]: c for c in children}
    assert set(by_key) == set(trials["trial_key"])
    row = trials[(trials["loss"] == "kl") & (trials["tau"] == math.inf)].iloc[0]
    child = by_key[row["trial_key"]]
    assert child.data.params["tau"] == "inf" and child.data.params["loss"] == "kl"
    assert child.data.params["alpha"] == str(row["alpha"]) and child.data.params["seed"] == str(row["seed"])
    history = client.get_metric_history(child.info.run_id, "test_acc")
    expected = epochs[epochs["trial_key"] == row["trial_key"]].sort_values("epoch")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == [1, 2]
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(expected["test_acc"].tolist())
    artifacts = [a.path for a in client.list_artifacts(parents[0].info.run_id, "tables")]
    assert artifacts == ["tables/tau_alpha.csv", "tables/tau_alpha.md"]
    check_measurements_and_mlflow_views(client, parents[0], children, sweep_dir, trials)

    # The CSV cells are the means over seeds computed from the Parquet rows, in percent.
    table = pd.read_csv(sweep_dir / "tables" / "tau_alpha.csv").set_index("row")
    done = trials[trials["status"] == "completed"]
    for (tau, alpha), group in done[done["loss"] == "kl"].groupby(["tau", "alpha"]):
        cell = table.loc[f"kl tau={tau:g}", f"alpha={alpha:g} mean"]
        assert cell == pytest.approx(100 * group["test_acc"].mean(), abs=1e-9)
        assert table.loc[f"kl tau={tau:g}", f"alpha={alpha:g} n"] == 2
    ce = done[done["loss"] == "ce"]["test_acc"]
    assert table.loc["ce", "alpha=0.5 mean"] == pytest.approx(100 * ce.mean(), abs=1e-9)
    assert table.loc["ce", "alpha=0.5 std"] == pytest.approx(100 * ce.std(), abs=1e-9)

    # A later sweep in the same storage reuses the stored teacher instead of training it;
    # with the teacher online it trains the students the cache trained.
    again = run_sweep(sweep_cmd(tmp_path, "again", "--epochs", "2", "--seeds", "1", "--losses", "mse",
                                "--alphas", "1", "--teacher-cache", "off", "--log-models"))
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "teachers: 1 needed, 1 in the store, 0 to train" in again.stdout
    assert "teacher logits" not in again.stdout
    online = load_trials(tmp_path / "again").set_index("trial_key")
    online_epochs = load_epochs(tmp_path / "again")
    assert (online_epochs["teacher_forward_samples"] > 0).all()
    cached = trials.set_index("trial_key").loc[online.index]
    assert online["train_loss"].tolist() == pytest.approx(cached["train_loss"].tolist(), rel=1e-4)
    assert online["test_acc"].tolist() == pytest.approx(cached["test_acc"].tolist(), abs=0.01)
    # --log-models: the student's final weights, loadable as a teacher of a later run.
    _, _, logged = mlflow_runs(tmp_path, "again")
    path = client.download_artifacts(logged[0].info.run_id, "model/student.pt", str(tmp_path / "dl"))
    config = RunConfig.from_dict(load_state(path)["config"]).replace(teacher="cnn-4")
    model, _ = load_teacher(path, config, load_data(config))
    assert sum(p.numel() for p in model.parameters()) > 0


def check_measurements_and_mlflow_views(client, parent, children, sweep_dir, trials):
    """End measurements in Parquet, figures, and the MLflow runs made for comparing trials."""
    test_size = 360  # digits' test split
    samples = pd.read_parquet(sweep_dir / "samples.parquet")
    assert len(samples) == (len(trials) + 1) * test_size  # every trial and the teacher
    assert set(samples["role"]) == {"trial", "teacher"} and set(samples.loc[samples["role"] == "trial", "key"]) \
        == set(trials["trial_key"])
    by_trial = samples[samples["role"] == "trial"].groupby("key")
    # test_acc is a float32 mean: equal to the share of correct samples to float32 precision.
    assert np.allclose(by_trial["correct"].mean(), trials.set_index("trial_key")["test_acc"]
                       .loc[by_trial.size().index], atol=1e-6)
    assert np.allclose(by_trial["logit_distance"].median(),
                       trials.set_index("trial_key")["logit_distance_median"].loc[by_trial.size().index], rtol=1e-5)
    assert trials["ece"].between(0, 1).all() and trials["feature_norm_mean"].gt(0).all()
    features = pd.read_parquet(sweep_dir / "features.parquet")
    assert set(features["label"]) == {0, 1, 2}
    assert {p.name for p in (sweep_dir / "figures").iterdir()} >= {"heatmap.png", "heatmap.pdf", "tau.png",
                                                                    "features.png", "curves.pdf"}

    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    row = trials[(trials["loss"] == "kl") & (trials["tau"] == math.inf)].iloc[0]
    child = next(c for c in children if c.data.tags["kd_tune.trial_key"] == row["trial_key"])
    assert child.info.run_name == f"kl tau=inf alpha={row['alpha']:g} seed={row['seed']}"
    for metric in ("test_acc_at_best_val", "best_val_acc", "teacher_test_acc", "ece", "logit_distance_mean",
                   "feature_norm_median", "tld_mean"):
        assert child.data.metrics[metric] == pytest.approx(row[metric]), metric
    assert child.data.metrics["inv_tau"] == 0.0
    assert child.data.tags["mlflow.source.name"].endswith("tau_grid.py")
    assert len(child.data.tags["mlflow.source.git.commit"]) == 40
    (dataset,) = child.inputs.dataset_inputs
    assert dataset.dataset.name == "digits" and len(dataset.dataset.digest) == 16
    teachers = client.search_runs([experiment.experiment_id], "tags.`kd_tune.role` = 'teacher'")
    assert len(teachers) == 1 and teachers[0].data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert teachers[0].data.metrics["test_acc"] == pytest.approx(trials["teacher_test_acc"].iloc[0])
    assert [m.step for m in client.get_metric_history(teachers[0].info.run_id, "train_acc")] == [1, 2]
    assert "feature_norm_mean" in teachers[0].data.metrics and "logit_distance_mean" not in teachers[0].data.metrics
    parent = client.get_run(parent.info.run_id)
    assert parent.data.params["best.loss"] in {"kl", "mse", "ce"} and parent.data.metrics["best.n"] == 2
    best = trials.groupby(["loss", "tau", "alpha"])["best_val_acc"].mean().max()
    assert parent.data.metrics["best.val_acc"] == pytest.approx(best)
    # An MLflow table (the UI shows it as one): a JSON artifact listed as a table in the run's tags.
    assert {"path": "trials.json", "type": "table"} in json.loads(parent.data.tags["mlflow.loggedArtifacts"])
    table = pd.read_json(client.download_artifacts(parent.info.run_id, "trials.json", str(sweep_dir.parent / "t")),
                         orient="split")
    assert len(table) == len(trials) and set(table["trial_key"]) == set(trials["trial_key"])
    figures = {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}
    assert {"figures/heatmap.png", "figures/heatmap.pdf"} <= figures


def assert_trials_unchanged(sweep_dir, trials):
    """The results still hold ``trials``, row for row (a re-invocation rewrites no trial)."""
    now = load_trials(sweep_dir).set_index("trial_key").sort_index()
    before = trials.set_index("trial_key").sort_index()
    assert now.index.equals(before.index)
    assert (now["finished_at"] == before["finished_at"]).all() and (now["test_acc"] == before["test_acc"]).all()


@pytest.mark.slow
def test_driver_killed_then_resumed(ray_cluster, tmp_path):
    cmd = sweep_cmd(tmp_path, "resume", "--epochs", "3", "--seeds", "3", "--taus", "1,3,inf",
                    "--alphas", "0.5,1", "--checkpoint-every", "1")
    sweep_dir = tmp_path / "resume"
    driver = start_sweep(cmd, tmp_path / "first.log")
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and driver.poll() is None:
            if (sweep_dir / "results" / "trials").is_dir() and len(load_trials(sweep_dir)) >= 3:
                break
            time.sleep(0.2)
        assert driver.poll() is None, "the sweep ended before it could be interrupted"
        # The same sweep started again while it runs is refused, naming the driver that runs it
        # (held still meanwhile, so that it cannot finish first).
        driver.send_signal(signal.SIGSTOP)
        twice = run_sweep(cmd, timeout=120)
        assert twice.returncode == 2, twice.stdout + twice.stderr
        assert f"sweep 'resume' in {tmp_path} is already running (pid {driver.pid} on " in twice.stderr
        assert "started 20" in twice.stderr and "Traceback" not in twice.stderr
        assert "Ray" not in twice.stdout  # refused before Ray was started
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.kill()
        driver.wait()
    before = load_trials(sweep_dir).set_index("trial_key")
    assert 3 <= len(before) < 27

    proc = run_sweep(cmd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"({len(before)} already finished)" in proc.stdout
    # the killed driver's lock is recognised as left behind, and taken over
    assert f"the process that held it before (pid {driver.pid} on " in proc.stdout

    trials = load_trials(sweep_dir)
    epochs = load_epochs(sweep_dir)
    # kl: 3 taus x 2 alphas, mse: 2 alphas, ce: 1 -> 9 settings x 3 seeds; one final row each
    assert len(trials) == 27 and trials["trial_key"].is_unique and set(trials["status"]) == {"completed"}
    after = trials.set_index("trial_key").loc[before.index]
    # Trials finished before the kill were not run again.
    assert (after["finished_at"] == before["finished_at"]).all()
    assert (after["trial_id"] == before["trial_id"]).all()
    assert len(epochs) == 27 * 3 and not epochs.duplicated(["trial_key", "epoch"]).any()
    # and the files hold one row per key too, not only the readers
    assert ds.dataset(sweep_dir / "results" / "epochs").count_rows() == 27 * 3
    # Every finished trial keeps its last checkpoint only (3 were made, one per epoch).
    folders = sorted(sweep_dir.glob("trial_*"))
    assert len(folders) == 27
    assert {f.name: len(list(f.glob("checkpoint_*"))) for f in folders} == {f.name: 1 for f in folders}

    # One parent for the sweep, through the kill and the resume.
    _, parent, children = one_parent(tmp_path, "resume")
    assert len(children) == 27 and {c.info.status for c in children} == {"FINISHED"}
    assert len({c.data.tags["kd_tune.trial_key"] for c in children}) == 27
    assert set(trials["mlflow_run_id"]) == {c.info.run_id for c in children}
    assert json.loads((sweep_dir / "sweep.json").read_text())["mlflow_parent_run_id"] == parent.info.run_id

    # Invoked twice more once finished: no Ray joined, nothing trained, and still one parent,
    # one child per trial, one run per teacher.
    for _ in range(2):
        rerun_without_ray(cmd)
    client, again, children = one_parent(tmp_path, "resume")
    assert again.info.run_id == parent.info.run_id and len(children) == 27
    teachers = client.search_runs([again.info.experiment_id], "tags.`kd_tune.role` = 'teacher'")
    assert [t.data.tags["mlflow.parentRunId"] for t in teachers] == [parent.info.run_id]  # one teacher, one run
    assert "tables/tau_alpha.csv" in {a.path for a in client.list_artifacts(parent.info.run_id, "tables")}
    assert_trials_unchanged(sweep_dir, trials)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--gpus-per-trial", "1"], "has no GPUs"),
        (["--cpus-per-trial", "3"], "no node can run a trial with 3 CPUs"),
    ],
)
def test_impossible_resources_fail_before_anything_runs(ray_cluster, tmp_path, flags, message):
    proc = run_sweep(sweep_cmd(tmp_path, "bad", "--epochs", "1", *flags), timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert not (tmp_path / "bad").exists() and not (tmp_path / "mlflow.db").exists()


def test_unreachable_address_fails_fast(tmp_path):
    started = time.monotonic()
    cmd = [sys.executable, TAU_GRID, "--address", "127.0.0.1:9", "--storage", str(tmp_path), "--epochs", "1"]
    proc = run_sweep(cmd, timeout=120)
    assert proc.returncode == 2
    assert "cannot reach a Ray cluster at '127.0.0.1:9'" in proc.stderr
    assert time.monotonic() - started < 60
    assert not any(tmp_path.iterdir())


def test_ray_address_environment_is_honoured(tmp_path):
    env = dict(ray_env(), RAY_ADDRESS="127.0.0.1:9")
    proc = subprocess.run([sys.executable, TAU_GRID, "--storage", str(tmp_path), "--epochs", "1"],
                          capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert proc.returncode == 2 and "cannot reach a Ray cluster at '127.0.0.1:9'" in proc.stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_a_failing_trial_is_retried_then_recorded_as_failed(ray_cluster, tmp_path):
    # A stale noisy-label file in the sweep's noise folder (made from other labels) makes
    # every attempt of the noisy student fail in its worker; the clean teacher is fine.
    from kd_tune.data.noise import noise_file_name, save_noisy_labels

    noise = tmp_path / "broken" / "noise"
    save_noisy_labels(noise / noise_file_name("digits", "symmetric", 0.2, 0, 180, 0), [0, 1, 2],
                      clean_label_hash="stale")
    proc = run_sweep(sweep_cmd(tmp_path, "broken", "--epochs", "1", "--seeds", "1", "--losses", "mse",
                               "--alphas", "1", "--noise-type", "symmetric", "--noise-rate", "0.2",
                               "--clean-teacher", "--max-failures", "1"))
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    # The cache stage cannot load the data either; it says so and leaves it to the trial.
    assert "could not be computed: " in proc.stdout and "its trials will try again" in proc.stdout
    assert "retrying mse alpha=1 symmetric=0.2 seed=0 after an error" in proc.stdout
    assert "1 failed" in proc.stdout

    trials = load_trials(tmp_path / "broken")
    assert len(trials) == 1 and trials.loc[0, "status"] == "failed"
    assert "was made from different training labels" in trials.loc[0, "error"]
    _, parents, children = mlflow_runs(tmp_path, "broken")
    assert [p.info.status for p in parents] == ["FAILED"]
    assert [c.info.status for c in children] == ["FAILED"]
    assert children[0].data.tags["kd_tune.status"] == "failed"
