"""MLflow tracking of sweeps against real stores: a SQLite file and a real tracking server.

The SQLite store is shared by the module (its tables take seconds to create); each test
uses an experiment of its own. The server test starts one ``mlflow server`` for the module.
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from processes import free_port, server

from kd_tune.core.status import TrialStatus
from kd_tune.tracking.tracker import (
    KEY_TAG,
    PARENT_TAG,
    ROLE_TAG,
    STATUS_TAG,
    SWEEP_DIR_TAG,
    SWEEP_TAG,
    SweepTracker,
    default_tracking_uri,
    experiment_url,
    resolve_tracking_uri,
    source_tags,
    ui_command,
)

CONFIG_PARAMS = {"loss": "kl", "tau": math.inf, "alpha": 0.9, "milestones": [100, 150], "data_dir": None,
                 "nesterov": True, "seed": 3}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow")
    uri = default_tracking_uri(folder)
    SweepTracker(uri, "warm-up")  # creates the tables once
    return {"uri": uri, "folder": folder, "client": MlflowClient(tracking_uri=uri)}


def _steps(client, run_id, metric):
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, metric))


# -- URIs and commands -------------------------------------------------------------------


def test_default_tracking_uri_is_an_absolute_sqlite_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert default_tracking_uri("results") == f"sqlite:///{tmp_path}/results/mlflow.db"
    assert default_tracking_uri(tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"


def test_resolve_tracking_uri_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    default = default_tracking_uri(tmp_path)
    assert resolve_tracking_uri(None, tmp_path) == default
    assert resolve_tracking_uri("", tmp_path) == default
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env-host:5000")
    assert resolve_tracking_uri(None, tmp_path) == "http://env-host:5000"
    assert resolve_tracking_uri("http://flag-host:5001", tmp_path) == "http://flag-host:5001"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    assert resolve_tracking_uri(None, tmp_path) == default


def test_ui_command():
    assert ui_command("sqlite:////r/mlflow.db") == "mlflow ui --backend-store-uri sqlite:////r/mlflow.db"
    assert ui_command("http://h:5000") == "open http://h:5000 in a browser"
    assert ui_command("https://mlflow.example.org") == "open https://mlflow.example.org in a browser"


# -- one invocation ----------------------------------------------------------------------


def test_parent_and_child_runs(store):
    client = store["client"]
    tracker = SweepTracker(store["uri"], "layout")
    parent = tracker.start_parent("layout 1", {"trials": 12, "cluster": "embedded"}, {"kd_tune.sweep_dir": "/r/x"})
    run = client.get_run(parent)
    assert run.info.status == "RUNNING" and run.info.experiment_id == tracker.experiment_id
    assert run.info.run_name == "layout 1"
    assert run.data.tags[ROLE_TAG] == "sweep" and run.data.tags[SWEEP_TAG] == "layout"
    assert run.data.tags["kd_tune.sweep_dir"] == "/r/x"
    assert run.data.params == {"trials": "12", "cluster": "embedded"}
    assert PARENT_TAG not in run.data.tags

    child = tracker.start_trial("key-1", "kl tau=inf alpha=0.9 seed=3", CONFIG_PARAMS, {"kd_tune.trial_id": "t_1"})
    run = client.get_run(child)
    assert child != parent and run.info.status == "RUNNING"
    assert run.info.run_name == "kl tau=inf alpha=0.9 seed=3"
    assert run.data.tags[PARENT_TAG] == parent
    assert run.data.tags[KEY_TAG] == "key-1" and run.data.tags[ROLE_TAG] == "trial"
    assert run.data.tags["kd_tune.trial_id"] == "t_1"
    assert run.data.params == {"loss": "kl", "tau": "inf", "alpha": "0.9", "milestones": "100,150",
                               "data_dir": "None", "nesterov": "True", "seed": "3"}


def test_log_epoch_uses_the_epoch_as_step_and_skips_logged_steps(store):
    client = store["client"]
    tracker = SweepTracker(store["uri"], "epochs")
    tracker.start_parent("p", {}, {})
    child = tracker.start_trial("k", "k", {}, {})
    tracker.log_epoch(child, {"epoch": 1, "val_acc": 0.5, "train_loss": 2.0})
    tracker.log_epoch(child, {"epoch": 2, "val_acc": 0.6, "train_loss": 1.0})
    tracker.log_epoch(child, {"epoch": 2, "val_acc": 0.99, "train_loss": 9.0})  # step 2 again: skipped
    tracker.log_epoch(child, {"epoch": 1, "val_acc": 0.98})  # older step: skipped
    tracker.log_epoch(child, {"epoch": 3, "val_acc": 0.7, "train_loss": math.nan, "note": "x", "flag": True,
                              "missing": None})
    assert _steps(client, child, "val_acc") == [(1, 0.5), (2, 0.6), (3, 0.7)]
    assert _steps(client, child, "epoch") == [(1, 1.0), (2, 2.0), (3, 3.0)]
    loss = _steps(client, child, "train_loss")
    assert loss[:2] == [(1, 2.0), (2, 1.0)] and loss[2][0] == 3 and math.isnan(loss[2][1])
    assert set(client.get_run(child).data.metrics) == {"epoch", "val_acc", "train_loss"}


@pytest.mark.parametrize("status, mlflow_status", [
    (TrialStatus.COMPLETED, "FINISHED"), (TrialStatus.DIVERGED, "FINISHED"), (TrialStatus.STOPPED, "FINISHED"),
    (TrialStatus.FAILED, "FAILED"),
])
def test_end_trial_maps_the_status(store, status, mlflow_status):
    client = store["client"]
    tracker = SweepTracker(store["uri"], f"end-{status}")
    tracker.start_parent("p", {}, {})
    child = tracker.start_trial("k", "k", {}, {})
    tracker.end_trial(child, status, {"extra": "x"})
    run = client.get_run(child)
    assert run.info.status == mlflow_status
    assert run.data.tags[STATUS_TAG] == status.value and run.data.tags["extra"] == "x"
    assert run.info.end_time is not None


def test_end_parent_logs_metrics_and_status(store):
    client = store["client"]
    tracker = SweepTracker(store["uri"], "end-parent")
    tracker.end_parent()  # nothing started: nothing to end
    parent = tracker.start_parent("p", {}, {})
    tracker.end_parent("KILLED", {"completed": 3, "failed": 1})
    run = client.get_run(parent)
    assert run.info.status == "KILLED"
    assert run.data.metrics == {"completed": 3.0, "failed": 1.0}


def test_more_metrics_than_one_batch_holds(store):
    client = store["client"]
    tracker = SweepTracker(store["uri"], "big-batch")
    parent = tracker.start_parent("p", {f"p{i}": i for i in range(50)}, {})
    tracker.end_parent("FINISHED", {f"m{i:04d}": float(i) for i in range(1900)})
    data = client.get_run(parent).data
    assert len(data.metrics) == 1900 and data.metrics["m1899"] == 1899.0
    assert len(data.params) == 50


def test_experiment_artifacts_live_under_the_artifact_root(store, tmp_path):
    client = store["client"]
    root = tmp_path / "mlartifacts"
    tracker = SweepTracker(store["uri"], "artifacts", artifact_root=root)
    experiment = client.get_experiment(tracker.experiment_id)
    assert experiment.name == "artifacts"
    assert experiment.artifact_location == root.absolute().as_uri()
    tracker.log_artifacts([tmp_path / "missing.csv"])  # no parent yet: nothing happens
    parent = tracker.start_parent("p", {}, {})
    table = tmp_path / "noise.csv"
    table.write_text("loss,acc\nkl,0.9\n")
    latex = tmp_path / "noise.tex"
    latex.write_text("\\begin{tabular}\n")
    tracker.log_artifacts([table, latex])
    assert sorted(a.path for a in client.list_artifacts(parent, "tables")) == ["tables/noise.csv", "tables/noise.tex"]
    stored = root / parent / "artifacts" / "tables" / "noise.csv"
    assert stored.read_text() == "loss,acc\nkl,0.9\n"
    # a later tracker of the same sweep finds the experiment and keeps its location
    again = SweepTracker(store["uri"], "artifacts", artifact_root=tmp_path / "elsewhere")
    assert again.experiment_id == tracker.experiment_id
    assert client.get_experiment(again.experiment_id).artifact_location == root.absolute().as_uri()


def test_without_an_artifact_root_artifacts_sit_beside_the_sqlite_store(tmp_path, monkeypatch):
    # MLflow's own default, ./mlruns in the working directory, left folders wherever a command ran
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "store"
    store.mkdir()
    uri = default_tracking_uri(store)
    tracker = SweepTracker(uri, "no-root")
    parent = tracker.start_parent("p", {}, {})
    table = tmp_path / "t.csv"
    table.write_text("a\n1\n")
    tracker.log_artifacts([table])
    assert (store / "mlartifacts" / parent / "artifacts" / "tables" / "t.csv").read_text() == "a\n1\n"
    assert not (tmp_path / "mlruns").exists()


# -- a resumed invocation ----------------------------------------------------------------


def test_a_resumed_invocation_continues_unfinished_trials(store):
    client = store["client"]
    first = SweepTracker(store["uri"], "resume")
    p1 = first.start_parent("first", {"trials": 3}, {})
    unfinished = first.start_trial("k-unfinished", "u", {"tau": 4.0}, {})
    first.log_epoch(unfinished, {"epoch": 1, "val_acc": 0.1})
    first.log_epoch(unfinished, {"epoch": 2, "val_acc": 0.2})
    done = first.start_trial("k-done", "d", {"tau": 1.0}, {})
    first.log_epoch(done, {"epoch": 1, "val_acc": 0.4})
    first.end_trial(done, "completed")
    failed = first.start_trial("k-failed", "f", {"tau": 2.0}, {})
    first.end_trial(failed, "failed")
    # the driver dies here: p1 and `unfinished` stay RUNNING

    second = SweepTracker(store["uri"], "resume")
    assert second.experiment_id == first.experiment_id
    p2 = second.start_parent("second", {"trials": 3}, {})
    assert p2 != p1
    assert client.get_run(p1).info.status == "KILLED"
    assert client.get_run(p2).info.status == "RUNNING"

    # the unfinished trial continues in its own child run, moved under the new parent
    again = second.start_trial("k-unfinished", "u", {"tau": 4.0}, {})
    assert again == unfinished
    run = client.get_run(again)
    assert run.info.status == "RUNNING" and run.data.tags[PARENT_TAG] == p2
    second.log_epoch(again, {"epoch": 2, "val_acc": 0.99})  # replayed after a checkpoint: skipped
    second.log_epoch(again, {"epoch": 3, "val_acc": 0.3})
    assert _steps(client, again, "val_acc") == [(1, 0.1), (2, 0.2), (3, 0.3)]
    second.end_trial(again, "completed")
    assert client.get_run(again).info.status == "FINISHED"

    # a FINISHED trial is not reopened: a new child run with the same key starts from step 0
    rerun = second.start_trial("k-done", "d", {"tau": 1.0}, {})
    assert rerun != done
    assert client.get_run(done).info.status == "FINISHED"
    assert client.get_run(done).data.tags[PARENT_TAG] == p1
    assert client.get_run(rerun).data.tags[PARENT_TAG] == p2
    assert client.get_run(rerun).data.params == {"tau": "1.0"}
    second.log_epoch(rerun, {"epoch": 1, "val_acc": 0.45})
    assert _steps(client, rerun, "val_acc") == [(1, 0.45)]
    assert _steps(client, done, "val_acc") == [(1, 0.4)]
    same_key = client.search_runs([second.experiment_id], f"tags.`{KEY_TAG}` = 'k-done'")
    assert sorted(r.info.run_id for r in same_key) == sorted([done, rerun])

    # a FAILED trial is not FINISHED either: its run is reopened for the retry
    retry = second.start_trial("k-failed", "f", {"tau": 2.0}, {})
    assert retry == failed
    assert client.get_run(retry).info.status == "RUNNING"
    assert client.get_run(retry).data.tags[PARENT_TAG] == p2

    # a third invocation ends the second parent, and only the second one
    second.end_parent("FINISHED")
    third = SweepTracker(store["uri"], "resume")
    p3 = third.start_parent("third", {}, {})
    assert client.get_run(p2).info.status == "FINISHED" and client.get_run(p1).info.status == "KILLED"
    assert client.get_run(p3).info.status == "RUNNING"


def test_start_parent_only_kills_parents_of_its_own_sweep(store):
    client = store["client"]
    other = SweepTracker(store["uri"], "other-sweep")
    p_other = other.start_parent("other", {}, {})
    mine = SweepTracker(store["uri"], "my-sweep")
    mine.start_parent("mine", {}, {})
    mine2 = SweepTracker(store["uri"], "my-sweep")
    mine2.start_parent("mine again", {}, {})
    assert client.get_run(p_other).info.status == "RUNNING"
    assert client.get_run(mine.parent_id).info.status == "KILLED"


def test_a_sweep_is_one_parent_run_however_often_it_starts(store):
    client = store["client"]
    here, there = "/r/one", "/elsewhere/one"  # one name in two storages: two sweeps
    first = SweepTracker(store["uri"], "one", sweep_dir=here)
    p1 = first.start_parent("one", {"cluster": "embedded"}, {SWEEP_DIR_TAG: here}, invocation="i1")
    first.end_parent("FINISHED")
    elsewhere = SweepTracker(store["uri"], "one", sweep_dir=there)
    p_there = elsewhere.start_parent("one", {}, {SWEEP_DIR_TAG: there}, invocation="j1")

    # Found again by its tag, with a param of another value (MLflow keeps the first), and again by its id.
    second = SweepTracker(store["uri"], "one", sweep_dir=here)
    assert second.start_parent("one", {"cluster": "auto"}, {SWEEP_DIR_TAG: here}, invocation="i2") == p1
    run = client.get_run(p1)
    assert run.info.status == "RUNNING" and run.data.tags["kd_tune.invocation"] == "i2"
    assert run.data.params == {"cluster": "embedded"}
    assert second.find_parent("i1") == p1  # an earlier invocation's queued writes land in it too
    assert client.get_run(p_there).info.status == "RUNNING"  # the other storage's sweep is left alone
    third = SweepTracker(store["uri"], "one", sweep_dir=here, known_parent=p1)
    assert third.start_parent("one", {}, {SWEEP_DIR_TAG: here}, invocation="i3") == p1

    # Deleted by hand: made anew, once.
    client.delete_run(p1)
    fourth = SweepTracker(store["uri"], "one", sweep_dir=here, known_parent=p1)
    p2 = fourth.start_parent("one", {}, {SWEEP_DIR_TAG: here}, invocation="i4")
    assert p2 != p1 and fourth.sweep_parent() == p2
    fifth = SweepTracker(store["uri"], "one", sweep_dir=here, known_parent=p1)
    assert fifth.start_parent("one", {}, {SWEEP_DIR_TAG: here}, invocation="i5") == p2
    parents = client.search_runs([fifth.experiment_id],
                                 f"tags.`{ROLE_TAG}` = 'sweep' and tags.`{SWEEP_DIR_TAG}` = '{here}'")
    assert [r.info.run_id for r in parents] == [p2]


# -- a real tracking server --------------------------------------------------------------


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow-server")
    mlflow = str(Path(sys.executable).parent / "mlflow")
    port = free_port()
    cmd = [mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{folder}/db.sqlite",
           "--default-artifact-root", (folder / "art").as_uri()]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    with server(cmd, port=port, log=folder / "server.log", env=env, timeout=120):
        yield {"uri": f"http://127.0.0.1:{port}", "folder": folder}


def test_sweep_tracked_on_a_tracking_server(tracking_server, tmp_path):
    uri = tracking_server["uri"]
    tracker = SweepTracker(uri, "served", artifact_root=tmp_path / "ignored-for-servers")
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment(tracker.experiment_id)
    assert experiment.artifact_location.startswith((tracking_server["folder"] / "art").as_uri())
    parent = tracker.start_parent("served 1", {"trials": 1}, {})
    child = tracker.start_trial("key-s", "kl tau=inf", CONFIG_PARAMS, {})
    for epoch, acc in [(1, 0.25), (2, 0.5), (2, 0.9), (3, 0.75)]:
        tracker.log_epoch(child, {"epoch": epoch, "val_acc": acc})
    tracker.end_trial(child, TrialStatus.DIVERGED)
    table = tmp_path / "t.csv"
    table.write_text("a\n1\n")
    tracker.log_artifacts([table])
    tracker.end_parent("FINISHED", {"completed": 1})

    runs = client.search_runs([tracker.experiment_id], f"tags.`{PARENT_TAG}` = '{parent}'")
    assert [r.info.run_id for r in runs] == [child]
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags[STATUS_TAG] == "diverged"
    assert run.data.tags[KEY_TAG] == "key-s"
    assert run.data.params["tau"] == "inf" and run.data.params["milestones"] == "100,150"
    assert _steps(client, child, "val_acc") == [(1, 0.25), (2, 0.5), (3, 0.75)]
    parent_run = client.get_run(parent)
    assert parent_run.info.status == "FINISHED" and parent_run.data.metrics == {"completed": 1.0}
    assert parent_run.data.tags[ROLE_TAG] == "sweep"
    assert [a.path for a in client.list_artifacts(parent, "tables")] == ["tables/t.csv"]
    assert not (tmp_path / "ignored-for-servers").exists()

    # a resumed invocation against the server
    resumed = SweepTracker(uri, "served")
    p2 = resumed.start_parent("served 2", {}, {})
    assert client.get_run(parent).info.status == "FINISHED"  # ended properly: left alone
    assert resumed.start_trial("key-s", "kl tau=inf", CONFIG_PARAMS, {}) != child  # FINISHED: a new run
    assert client.get_run(p2).info.status == "RUNNING"


def test_experiments_are_made_for_the_model_training_view(store):
    tracker = SweepTracker(store["uri"], "kind")
    assert store["client"].get_experiment(tracker.experiment_id).tags["mlflow.experimentKind"] == \
        "custom_model_development"
    assert experiment_url("sqlite:////r/mlflow.db", "7") == \
        "http://127.0.0.1:5000/#/experiments/7?workflowType=machine_learning"
    assert experiment_url("http://h:5000/", "7") == "http://h:5000/#/experiments/7?workflowType=machine_learning"


def test_source_tags_name_the_script_and_its_checkout(tmp_path):
    here = source_tags(__file__)
    assert here["mlflow.source.name"] == str(Path(__file__).absolute())
    assert len(here["mlflow.source.git.commit"]) == 40
    outside = source_tags(str(tmp_path / "script.py"))
    assert outside == {"mlflow.source.type": "LOCAL", "mlflow.source.name": str(tmp_path / "script.py")}
