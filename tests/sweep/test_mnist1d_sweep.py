"""End to end on MNIST-1D: ``python sweeps/data_size.py --address auto`` (the cpu preset's data set,
1-D models, the student on two fractions of the data) against a real `ray start` cluster,
read back from Parquet, the ``data_size`` table and figure, and MLflow (the dataset input with
the generator's arguments); and the sweep's dry run."""
from __future__ import annotations

import importlib.util
import json
import sys

import pandas as pd
import pytest
from sweep_runs import ROOT, mlflow_runs, run_sweep

from analysis.results_io import load_trials
from kd_tune.cli.sweep import main
from kd_tune.data.mnist1d import generation_args

DATA_SIZE = str(ROOT / "sweeps" / "data_size.py")
# Tiny: a small teacher, 2 epochs, one seed, KL at tau=inf and CE on a quarter and all of the data.
TINY = ["--teacher", "cnn1d-6", "--teacher-epochs", "2", "--epochs", "2", "--seeds", "1", "--losses", "kl,ce",
        "--taus", "inf", "--fractions", "0.25,1"]


def test_data_size_on_mnist1d_end_to_end(ray_cluster, tmp_path):
    proc = run_sweep([sys.executable, DATA_SIZE, "--address", "auto", "--storage", str(tmp_path), "--name", "m1d",
                      *TINY])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # one teacher on all the data; the teacher's logits on each fraction's training signals
    assert "teachers: 1 needed, 0 in the store, 1 to train" in proc.stdout
    assert "teacher logits (float32): 2 view set(s) needed, 0 cached, 2 to compute" in proc.stdout

    sweep = tmp_path / "m1d"
    trials = load_trials(sweep)
    assert len(trials) == 4 and set(trials["status"]) == {"completed"} and set(trials["dataset"]) == {"mnist1d"}
    assert sorted(trials["data_fraction"]) == [0.25, 0.25, 1.0, 1.0] and trials["teacher_key"].nunique() == 1
    assert trials["test_acc"].between(0, 1).all()

    table = pd.read_csv(sweep / "tables" / "data_size.csv").set_index("row")
    for (loss, fraction), group in trials.groupby(["loss", "data_fraction"]):
        row = "ce" if loss == "ce" else "kl tau=inf alpha=1"
        assert table.loc[row, f"fraction={fraction:g} mean"] == pytest.approx(100 * group["test_acc"].mean())
    assert (sweep / "figures" / "data_size.png").is_file()

    client, parents, children = mlflow_runs(tmp_path, "m1d")
    assert len(parents) == 1 and len(children) == 4
    quarter = next(c for c in children if c.data.params.get("data_fraction") == "0.25")
    (data_input,) = client.get_run(quarter.info.run_id).inputs.dataset_inputs
    source = json.loads(data_input.dataset.source)
    assert data_input.dataset.name == "mnist1d" and source["generation"] == generation_args()
    assert source["data_fraction"] == 0.25 and source["name"] == "mnist1d"


def test_data_size_dry_run_lists_its_trials(tmp_path, capsys):
    spec = _load_spec()
    assert main(spec, ["--storage", str(tmp_path / "r"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "60 trials, each 1 CPU" in out and "fraction=0.1 seed=2" in out and "cnn1d-25->cnn1d-6" in out
    assert "dry run: nothing was run or written" in out and not (tmp_path / "r").exists()


def _load_spec():
    spec = importlib.util.spec_from_file_location("sweep_data_size", DATA_SIZE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SPEC
