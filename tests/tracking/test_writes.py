"""The typed MLflow writes: their outbox lines are the format of every earlier kd-tune, both
ways, and an outbox written before the writes were typed is still sent (a real SQLite store)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from mlflow import MlflowClient

from kd_tune.core.status import TrialStatus
from kd_tune.tracking.queue import TrackingQueue
from kd_tune.tracking.tracker import KEY_TAG, PARENT_TAG, ROLE_TAG, STATUS_TAG, TEACHER_TAG, default_tracking_uri
from kd_tune.tracking.writes import (
    WRITES,
    EndParent,
    EndTrial,
    LogArtifacts,
    LogDataset,
    LogEpoch,
    LogFile,
    LogParentValues,
    LogTable,
    RecordTeacher,
    StartParent,
    StartTrial,
    Write,
    from_json,
)

# One write of each kind, as the outbox of kd-tune before typed writes held them (the lines
# TrackingQueue.start_parent, .start_trial, .log_epoch, ... of commit 9b67bfd wrote, byte for
# byte); FILE and ARTIFACT are replaced by paths of the test.
OLD_OUTBOX = """\
{"op":"parent","inv":"inv1","name":"parent run","params":{"trials":2,"tau":Infinity},"tags":{"t":"x"}}
{"op":"trial","inv":"inv1","key":"k1","name":"kl tau=4","params":{"tau":4.0,"milestones":[1,2]},\
"tags":{"kd_tune.trial_id":"t1"},"metrics":{"inv_tau":0.25}}
{"op":"epoch","key":"k1","metrics":{"epoch":1.0,"val_acc":0.5},"t":1796579354536}
{"op":"epoch","key":"k1","metrics":{"epoch":2.0,"val_acc":0.75},"t":1796579354537}
{"op":"dataset","key":"k1","name":"digits","digest":"abc","source":{"dir":"/x"},"profile":{"p":1}}
{"op":"file","key":"k1","path":"FILE","dir":"model"}
{"op":"end","key":"k1","status":"completed","tags":{},"metrics":{"best_val_acc":0.5},"step":3}
{"op":"teacher","inv":"inv1","tkey":"tk","name":"teacher cnn-8","params":{"a":1},\
"history":[{"epoch":1,"test_acc":0.9}],"metrics":{"test_acc":0.9},"step":1,\
"dataset":{"name":"d","digest":"g","source":{"s":"/y"},"profile":{}}}
{"op":"table","inv":"inv1","columns":["a","b"],"rows":[[1,"x"]],"name":"trials.json"}
{"op":"values","inv":"inv1","params":{"best.loss":"kl"},"metrics":{"best.val_acc":0.5}}
{"op":"artifacts","inv":"inv1","paths":["ARTIFACT"],"dir":"tables"}
{"op":"end_parent","inv":"inv1","status":"FINISHED","metrics":{}}
"""

# The same writes, made as the sinks make them now (values as the sinks pass them).
NEW_WRITES = [
    StartParent("inv1", "parent run", {"trials": 2, "tau": math.inf}, {"t": "x"}),
    StartTrial("inv1", "k1", "kl tau=4", {"tau": 4.0, "milestones": [1, 2]}, {"kd_tune.trial_id": "t1"},
               {"inv_tau": 0.25}),
    LogEpoch("k1", {"epoch": 1, "val_acc": 0.5, "note": "not a number", "flag": True}, 1796579354536),
    LogEpoch("k1", {"epoch": 2, "val_acc": 0.75}, 1796579354537),
    LogDataset("k1", "digits", "abc", {"dir": Path("/x")}, {"p": 1}),
    LogFile("k1", Path("FILE"), "model"),
    EndTrial("k1", TrialStatus.COMPLETED, metrics={"best_val_acc": 0.5}, step=3),
    RecordTeacher("inv1", "tk", "teacher cnn-8", {"a": 1}, [{"epoch": 1, "test_acc": 0.9}], {"test_acc": 0.9}, 1,
                  {"name": "d", "digest": "g", "source": {"s": Path("/y")}, "profile": {}}),
    LogTable("inv1", ["a", "b"], [(1, "x")], "trials.json"),
    LogParentValues("inv1", {"best.loss": "kl"}, {"best.val_acc": 0.5}),
    LogArtifacts("inv1", [Path("ARTIFACT")], "tables"),
    EndParent("inv1", "FINISHED"),
]


def test_every_kind_of_write_has_a_line_of_the_old_outbox():
    assert {json.loads(line)["op"] for line in OLD_OUTBOX.splitlines()} == set(WRITES)


def test_writes_are_written_as_the_old_outbox_lines_and_read_back_equal(tmp_path):
    queue = TrackingQueue(tmp_path / "sweep", "sqlite:///unused.db", "x")
    for write in NEW_WRITES:
        queue.put(write)
    queue.close()
    assert (tmp_path / "sweep" / "tracking" / "outbox.jsonl").read_text() == OLD_OUTBOX  # byte for byte
    for write, line in zip(NEW_WRITES, OLD_OUTBOX.splitlines(), strict=True):
        assert from_json(json.loads(line)) == write


def test_records_of_older_versions_without_optional_keys_are_read():
    assert from_json({"op": "trial", "inv": "i", "key": "k", "name": "n", "params": {}, "tags": {}}).metrics == {}
    end = from_json({"op": "end", "key": "k", "status": "diverged", "tags": {}})
    assert (end.status, end.metrics, end.step) == ("diverged", {}, 0)
    with pytest.raises(ValueError, match="unknown tracking write 'rename'"):
        from_json({"op": "rename", "key": "k"})


def test_each_op_names_one_write_class():
    assert all(issubclass(kind, Write) and kind.op == op for op, kind in WRITES.items())


def test_an_outbox_written_before_typed_writes_is_sent(tmp_path):
    uri = default_tracking_uri(tmp_path)
    sweep = tmp_path / "sweep"
    (sweep / "tracking").mkdir(parents=True)
    model, table = tmp_path / "student.pt", tmp_path / "tau_alpha.csv"
    model.write_bytes(b"weights")
    table.write_text("a,b\n1,x\n")
    (sweep / "tracking" / "outbox.jsonl").write_text(
        OLD_OUTBOX.replace("FILE", str(model)).replace("ARTIFACT", str(table)))

    queue = TrackingQueue(sweep, uri, "old-outbox", artifact_root=tmp_path / "mlartifacts")  # next run, or sync
    assert queue.unsent() == 12
    assert queue.send(timeout=120) and queue.unsent() == 0
    client = MlflowClient(uri)
    parent = client.get_run(queue.parent_id("inv1"))
    assert parent.info.status == "FINISHED" and parent.info.run_name == "parent run"
    assert parent.data.params["tau"] == "inf" and parent.data.tags["t"] == "x"
    assert parent.data.params["best.loss"] == "kl" and parent.data.metrics["best.val_acc"] == 0.5
    parent_files = {a.path for a in client.list_artifacts(parent.info.run_id, "tables")}
    assert {"tables/tau_alpha.csv"} <= parent_files and "trials.json" in {a.path for a in
                                                                          client.list_artifacts(parent.info.run_id)}

    trial = client.get_run(queue.run_id("k1"))
    assert trial.info.status == "FINISHED" and trial.data.tags[STATUS_TAG] == "completed"
    assert trial.data.tags[PARENT_TAG] == parent.info.run_id and trial.data.tags[KEY_TAG] == "k1"
    assert trial.data.params["milestones"] == "1,2" and trial.data.metrics["inv_tau"] == 0.25
    history = sorted((m.step, m.value, m.timestamp) for m in client.get_metric_history(trial.info.run_id, "val_acc"))
    assert history == [(1, 0.5, 1796579354536), (2, 0.75, 1796579354537)]
    assert trial.data.metrics["best_val_acc"] == 0.5
    (dataset,) = trial.inputs.dataset_inputs
    assert dataset.dataset.name == "digits" and json.loads(dataset.dataset.source) == {"dir": "/x"}
    assert [a.path for a in client.list_artifacts(trial.info.run_id, "model")] == ["model/student.pt"]
    assert not model.exists()  # sent: the queue's copy is removed

    (teacher,) = client.search_runs([parent.info.experiment_id], f"tags.`{ROLE_TAG}` = 'teacher'")
    assert teacher.data.tags[TEACHER_TAG] == "tk" and teacher.data.tags[PARENT_TAG] == parent.info.run_id
    assert teacher.info.status == "FINISHED" and teacher.data.metrics["test_acc"] == 0.9
