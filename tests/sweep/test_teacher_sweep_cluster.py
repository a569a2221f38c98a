"""End to end: a sweep over composite teachers against a real `ray start` cluster.

A user's sweep script (written to a temporary folder) distils a student on digits from
a chain, an ensemble and an under-trained teacher; the test reads back the teacher
store, ``teachers.parquet``, ``trials.parquet`` and the MLflow teacher runs.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from processes import ray_env

from analysis.results_io import load_teachers, load_trials

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = '''
import sys
from kd_tune.cli.sweep import SweepSpec, main

SPEC = SweepSpec(name="teachers", description="composite teachers", seeds=1, table="tau_alpha", space=[
    {"loss": ["kl"], "tau": [3.0], "alpha": [1.0], "teacher": TEACHERS},
    {"loss": ["ce"]},
])
if __name__ == "__main__":
    sys.exit(main(SPEC))
'''


def sweep(tmp_path: Path, name: str, teachers: list[str]) -> subprocess.CompletedProcess:
    script = tmp_path / f"{name}.py"
    script.write_text(textwrap.dedent(SCRIPT).replace("TEACHERS", repr(teachers)))
    cmd = [sys.executable, str(script), "--address", "auto", "--storage", str(tmp_path / "results"), "--name", name,
           "--preset", "digits", "--student", "cnn-4", "--epochs", "2", "--teacher-epochs", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=ray_env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_a_chain_an_ensemble_and_an_undertrained_teacher_end_to_end(ray_cluster, tmp_path):
    proc = sweep(tmp_path, "composite", ["cnn-8>cnn-4", "2xcnn-4", "cnn-8@1"])
    out = proc.stdout
    assert "teachers: 6 needed, 0 in the store, 6 to train" in out
    # Each node after the nodes it is made from.
    assert out.index("teacher cnn-8 (") < out.index("teacher cnn-8>cnn-4 (")
    assert out.rindex("teacher cnn-4 (") < out.index("teacher 2xcnn-4 (")
    assert "made (mean of its members' logits)" in out

    sweep_dir = tmp_path / "results" / "composite"
    teachers = load_teachers(sweep_dir).set_index("spec", drop=False)
    assert len(teachers) == 6 and teachers["teacher_key"].is_unique and set(teachers["sweep"]) == {"composite"}
    assert sorted(teachers["spec"]) == ["2xcnn-4", "cnn-4", "cnn-4", "cnn-8", "cnn-8>cnn-4", "cnn-8@1"]
    by_kind = teachers.groupby("kind")["spec"].apply(sorted).to_dict()
    assert by_kind == {"ce": ["cnn-4", "cnn-4", "cnn-8"], "ensemble": ["2xcnn-4"], "sequential": ["cnn-8>cnn-4"],
                       "undertrained": ["cnn-8@1"]}
    assert teachers.loc["2xcnn-4", "architecture"] == "cnn-4+cnn-4"
    assert pd.isna(teachers.loc["2xcnn-4", "epochs_trained"]) and teachers.loc["2xcnn-4", "seconds"] == 0
    assert teachers.loc["cnn-8@1", "epochs_trained"] == 1 and teachers.loc["cnn-8>cnn-4", "epochs_trained"] == 2
    trained = teachers[teachers["kind"] != "ensemble"]
    assert (trained["seconds"] > 0).all()
    assert teachers["train_acc"].between(0, 1).all() and teachers["test_acc"].between(0, 1).all()
    assert str(teachers["epochs_trained"].dtype) == "Int64"

    trials = load_trials(sweep_dir)
    assert set(trials["status"]) == {"completed"} and len(trials) == 4
    distilled = trials[trials["loss"] == "kl"].set_index("teacher")
    assert set(distilled.index) == {"cnn-8>cnn-4", "2xcnn-4", "cnn-8@1"}
    for spec, row in distilled.iterrows():
        assert row["teacher_key"] == teachers.loc[spec, "teacher_key"]
        assert row["teacher_test_acc"] == pytest.approx(teachers.loc[spec, "test_acc"])

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("composite")
    runs = client.search_runs([experiment.experiment_id], "tags.`kd_tune.role` = 'teacher'")
    assert {r.data.tags["kd_tune.teacher_key"] for r in runs} == set(teachers["teacher_key"])
    chain = next(r for r in runs if r.data.params["teacher_spec"] == "cnn-8>cnn-4")
    assert chain.data.params["teacher_kind"] == "sequential" and chain.data.params["loss"] == "kl"
    assert chain.data.params["teacher"] == "cnn-8" and chain.data.params["student"] == "cnn-4"
    assert chain.data.metrics["test_acc"] == pytest.approx(teachers.loc["cnn-8>cnn-4", "test_acc"])

    # A later sweep reuses every stored node of a longer chain and trains only its new step.
    again = sweep(tmp_path, "longer", ["cnn-8>cnn-4>cnn-8[mse]"])
    assert "teachers: 3 needed, 2 in the store, 1 to train" in again.stdout
    longer = load_teachers(tmp_path / "results" / "longer")
    assert set(longer["spec"]) == {"cnn-8", "cnn-8>cnn-4", "cnn-8>cnn-4>cnn-8[mse]"}
    assert set(longer["teacher_key"]) & set(teachers["teacher_key"]) == set(
        teachers.loc[["cnn-8", "cnn-8>cnn-4"], "teacher_key"])
