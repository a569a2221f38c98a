"""The result sinks, each driven by recorded trial events (plain calls, no Tune), and the
Tune adapter driven by stand-in Tune trials; real Parquet files and a real MLflow store."""
from __future__ import annotations

import json
import logging
import math
import pickle
import uuid
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from kd_tune.core.config import RunConfig
from kd_tune.core.status import TrialStatus
from kd_tune.plan.planner import plan_trial
from kd_tune.results.parquet_sink import ParquetSink
from kd_tune.results.samples import FEATURES_DIR, SAMPLES_DIR
from kd_tune.results.samples_sink import SamplesSink
from kd_tune.results.sinks import EndedTrial, TeacherRecord, TrialSink
from kd_tune.results.trial_end import TrialEnd
from kd_tune.results.trial_tables import EPOCH_METRICS, epochs_table, read_epochs, read_trials
from kd_tune.sweep.console import ConsoleProgress
from kd_tune.sweep.tune_callback import TuneSinks
from kd_tune.tracking.mlflow_sink import MlflowSink, best_setting
from kd_tune.tracking.queue import TrackingQueue
from kd_tune.tracking.tracker import (
    KEY_TAG,
    PARENT_TAG,
    STATUS_TAG,
    TEACHER_TAG,
    TRIAL_ID_TAG,
    SweepTracker,
    default_tracking_uri,
)
from kd_tune.tracking.writes import StartParent
from kd_tune.train.measurements import measure

COMPLETED, DIVERGED, STOPPED, FAILED, RUNNING = (TrialStatus.COMPLETED, TrialStatus.DIVERGED, TrialStatus.STOPPED,
                                                 TrialStatus.FAILED, TrialStatus.RUNNING)


def planned(seed: int = 0, epochs: int = 3, **kw):
    return plan_trial(RunConfig(epochs=epochs, seed=seed, **kw))


def metrics(epoch: int, val_acc: float = 0.7, test_acc: float = 0.75, loss: float = 0.5) -> dict:
    return {"epoch": epoch, "train_loss": loss, "train_acc": 0.8, "val_acc": val_acc, "test_acc": test_acc,
            "test_logit_mse": 0.1, "test_agreement": 0.9, "lr": 0.02, "epoch_time_s": 0.5,
            "teacher_forward_samples": 0.0}


def no_teacher(teacher_key: str) -> None:
    return None


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run_trial(sinks, trial, trial_id, history, status, error=None):
    """The events of one trial, as the adapter sends them, to each sink in order."""
    for sink in sinks:
        sink.trial_started(trial, trial_id)
    for epoch_metrics in history:
        for sink in sinks:
            sink.epoch_reported(trial, trial_id, epoch_metrics, RUNNING)
    for sink in sinks:
        sink.trial_ended(trial, trial_id, status, error)


def trial_rows(folder):
    return read_trials(folder).to_pylist()


def epoch_rows(folder):
    """The stored epoch rows, by trial key and epoch."""
    return sorted(read_epochs(folder).to_pylist(), key=lambda r: (r["trial_key"], r["epoch"]))


# -- ParquetSink -----------------------------------------------------------------------------


def test_parquet_final_rows_and_epoch_rows(tmp_path):
    done, diverged, failed = planned(0), planned(1, teacher_seed=1), planned(2, loss="mse")
    teachers: dict[str, float] = {}
    sink = ParquetSink(tmp_path, sweep="s", teacher_acc=teachers.get, run_id=lambda key: f"run-{key}")
    teachers[done.teacher_key] = 0.93  # trained after the sink was made: asked when the row is written
    run_trial([sink], done, "t_0", [metrics(1, 0.5, 0.4), metrics(2, 0.8, 0.7), metrics(3, 0.8, 0.9)], COMPLETED)
    run_trial([sink], diverged, "t_1", [metrics(1), metrics(2, math.nan, 0.1, loss=math.nan)], DIVERGED)
    run_trial([sink], failed, "t_2", [], FAILED, "RuntimeError: boom")

    rows = {r["trial_key"]: r for r in trial_rows(tmp_path)}
    assert set(rows) == {done.key, diverged.key, failed.key}
    row = rows[done.key]
    assert (row["status"], row["trial_id"], row["sweep"], row["epoch"]) == ("completed", "t_0", "s", 3)
    # best epoch on validation (the earlier of two equal ones), never on test
    assert (row["best_val_acc"], row["best_val_epoch"], row["test_acc_at_best_val"]) == (0.8, 2, 0.7)
    assert row["test_acc"] == 0.9 and row["train_time_s"] == pytest.approx(1.5)
    assert (row["teacher_key"], row["teacher_test_acc"]) == (done.teacher_key, 0.93)
    assert row["mlflow_run_id"] == f"run-{done.key}"
    assert row["started_at"] is not None and row["started_at"] <= row["finished_at"]
    assert (rows[diverged.key]["status"], rows[diverged.key]["diverged_epoch"]) == ("diverged", 2)
    assert rows[diverged.key]["teacher_test_acc"] is None  # not in the mapping
    assert rows[failed.key]["status"] == "failed" and rows[failed.key]["error"] == "RuntimeError: boom"
    assert rows[failed.key]["epoch"] is None and rows[failed.key]["diverged_epoch"] is None

    epochs = epoch_rows(tmp_path)
    assert [(r["epoch"], r["trial_id"]) for r in epochs if r["trial_key"] == done.key] == \
        [(1, "t_0"), (2, "t_0"), (3, "t_0")]
    assert [r["epoch"] for r in epochs if r["trial_key"] == diverged.key] == [1, 2]
    assert math.isnan([r for r in epochs if r["trial_key"] == diverged.key][1]["train_loss"])


def test_parquet_keeps_one_row_per_key_after_a_retry(tmp_path):
    trial = planned(0, epochs=4)
    sink = ParquetSink(tmp_path, sweep="s", teacher_acc=no_teacher)
    sink.trial_started(trial, "t_0")
    for epoch in (1, 2):
        sink.epoch_reported(trial, "t_0", metrics(epoch), RUNNING)
    sink.checkpointed(trial)
    sink.epoch_reported(trial, "t_0", metrics(3, val_acc=0.1), RUNNING)
    sink.trial_retried(trial, "OSError: lost")
    # the retry restarts from the checkpoint of epoch 2: epoch 3 again, then 4
    for epoch, val_acc in ((3, 0.95), (4, 0.6)):
        sink.epoch_reported(trial, "t_0", metrics(epoch, val_acc=val_acc), RUNNING)
    sink.trial_ended(trial, "t_0", COMPLETED, None)

    rows = trial_rows(tmp_path)
    assert len(rows) == 1 and (rows[0]["status"], rows[0]["epoch"], rows[0]["best_val_epoch"]) == ("completed", 4, 3)
    epochs = epoch_rows(tmp_path)
    assert [(r["epoch"], r["val_acc"]) for r in epochs] == [(1, 0.7), (2, 0.7), (3, 0.95), (4, 0.6)]


def test_parquet_flushes_before_tune_saves_its_state_at_the_end_and_at_most_every_5_s(tmp_path):
    clock = Clock()
    trial, other = planned(0), planned(1)
    sink = ParquetSink(tmp_path, sweep="s", teacher_acc=no_teacher, clock=clock)
    sink.trial_started(trial, "t_0")
    sink.epoch_reported(trial, "t_0", metrics(1), RUNNING)
    clock.now += 4.9
    sink.epoch_reported(trial, "t_0", metrics(2), RUNNING)
    sink.checkpointed(trial)
    assert epoch_rows(tmp_path) == []  # within 5 s: held in memory
    clock.now += 0.2
    sink.epoch_reported(trial, "t_0", metrics(3), RUNNING)
    assert [r["epoch"] for r in epoch_rows(tmp_path)] == [1, 2, 3]
    sink.epoch_reported(trial, "t_0", metrics(4), RUNNING)
    assert len(epoch_rows(tmp_path)) == 3  # the 5 s count again from that flush
    sink.saving_state()  # Tune is about to save the checkpoint each trial resumes from
    assert len(epoch_rows(tmp_path)) == 4
    sink.trial_started(other, "t_1")
    sink.epoch_reported(other, "t_1", metrics(1), RUNNING)
    sink.trial_ended(other, "t_1", STOPPED, None)
    assert len(epoch_rows(tmp_path)) == 5 and len(trial_rows(tmp_path)) == 1
    sink.epoch_reported(trial, "t_0", metrics(5), RUNNING)
    assert len(epochs_table(tmp_path).parts()) > 1
    sink.experiment_ended()
    assert len(epoch_rows(tmp_path)) == 6
    assert len(epochs_table(tmp_path).parts()) == 1  # compacted at the end


def test_record_run_ids_sets_the_rows_that_differ(tmp_path):
    a, b, c = planned(0), planned(1), planned(2)
    sink = ParquetSink(tmp_path, sweep="s", teacher_acc=no_teacher, run_id={a.key: "ra", b.key: "rb"}.get)
    for trial in (a, b, c):
        run_trial([sink], trial, f"t_{trial.config.seed}", [metrics(1)], COMPLETED)
    assert {r["trial_key"]: r["mlflow_run_id"] for r in trial_rows(tmp_path)} == {a.key: "ra", b.key: "rb",
                                                                                  c.key: None}
    assert sink.writer.record_run_ids({a.key: "ra", b.key: "rb-new", c.key: "rc", "unknown": "rx"}) == 2
    assert {r["trial_key"]: r["mlflow_run_id"] for r in trial_rows(tmp_path)} == {a.key: "ra", b.key: "rb-new",
                                                                                  c.key: "rc"}


def test_parquet_statuses_and_finished_keys_of_a_resumed_sweep(tmp_path):
    trials = {status: planned(seed) for seed, status in enumerate((COMPLETED, DIVERGED, STOPPED, FAILED))}
    first = ParquetSink(tmp_path, sweep="s", teacher_acc=no_teacher)
    for status, trial in trials.items():
        run_trial([first], trial, f"t_{status}", [metrics(1)], status, "E" if status == FAILED else None)
    running = planned(9)
    first.trial_started(running, "t_9")
    first.epoch_reported(running, "t_9", metrics(1), RUNNING)
    first.saving_state()

    again = ParquetSink(tmp_path, sweep="s", teacher_acc=no_teacher)
    assert again.statuses() == {trial.key: status for status, trial in trials.items()}
    assert all(isinstance(s, TrialStatus) for s in again.statuses().values())
    assert again.finished_keys() == {trials[COMPLETED].key, trials[DIVERGED].key, trials[STOPPED].key}


def test_parquet_reconcile_writes_rows_tune_ended_but_a_killed_driver_did_not(tmp_path):
    done, unrecorded, diverged, partial, failed = (planned(s, epochs=2) for s in range(5))
    first = ParquetSink(tmp_path, sweep="s", teacher_acc={done.teacher_key: 0.9}.get)
    run_trial([first], done, "t_done", [metrics(1), metrics(2)], COMPLETED)
    run_trial([first], failed, "t_failed", [metrics(1), metrics(2)], FAILED, "E")
    for trial, history in ((unrecorded, [metrics(1), metrics(2)]), (diverged, [metrics(1, loss=math.nan)]),
                           (partial, [metrics(1)])):
        first.trial_started(trial, f"t_{trial.config.seed}")
        for m in history:
            first.epoch_reported(trial, f"t_{trial.config.seed}", m, RUNNING)
    first.saving_state()  # flushes; the driver is killed before the other rows are written

    again = ParquetSink(tmp_path, sweep="s", teacher_acc={done.teacher_key: 0.9}.get, run_id=lambda key: None)
    written = again.reconcile([
        EndedTrial(done, "t_done", COMPLETED, 2),  # recorded: kept as it is
        EndedTrial(failed, "t_failed", COMPLETED, 2),  # has a row: kept
        EndedTrial(unrecorded, "t_1", COMPLETED, 2),
        EndedTrial(diverged, "t_2", DIVERGED, 1),
        EndedTrial(partial, "t_3", COMPLETED, 2),  # epoch 2 was not flushed: no row
    ])
    assert written == [unrecorded.key, diverged.key]
    rows = {r["trial_key"]: r for r in trial_rows(tmp_path)}
    assert set(rows) == {done.key, failed.key, unrecorded.key, diverged.key}
    assert (rows[unrecorded.key]["status"], rows[unrecorded.key]["epoch"], rows[unrecorded.key]["trial_id"]) == \
        ("completed", 2, "t_1")
    assert rows[unrecorded.key]["started_at"] is None and rows[unrecorded.key]["teacher_test_acc"] == 0.9
    assert (rows[diverged.key]["status"], rows[diverged.key]["diverged_epoch"]) == ("diverged", 1)
    assert rows[failed.key]["status"] == "failed"
    assert rows[done.key]["trial_id"] == "t_done" and rows[done.key]["started_at"] is not None


# -- MlflowSink ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow")
    uri = default_tracking_uri(folder)
    SweepTracker(uri, "warm-up")  # creates the tables once
    return {"uri": uri, "client": MlflowClient(tracking_uri=uri)}


class Invocation:
    """One driver invocation's MLflow side: a queue in ``folder`` with its parent run opened;
    ``send()`` sends what the sinks queued, in this thread."""

    def __init__(self, store, folder, experiment, **sink_options):
        self.queue = TrackingQueue(folder, store["uri"], experiment)
        self.id = uuid.uuid4().hex
        self.queue.put(StartParent(self.id, experiment, {}, {}))
        self.sink = MlflowSink(self.queue, self.id, **sink_options)
        self.send()

    def send(self):
        assert self.queue.send(timeout=60) and self.queue.unsent() == 0

    @property
    def parent(self):
        return self.queue.parent_id(self.id)


def _steps(client, run_id, metric):
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, metric))


def test_mlflow_child_runs_mirror_the_trials(store, tmp_path):
    client = store["client"]
    invocation = Invocation(store, tmp_path, "sink-layout")
    sink = invocation.sink
    trials = {status: planned(seed) for seed, status in enumerate((COMPLETED, DIVERGED, STOPPED, FAILED))}
    for status, trial in trials.items():
        run_trial([sink], trial, f"t_{trial.config.seed}", [metrics(1), dict(metrics(2), lr=None)], status,
                  "E" if status == FAILED else None)
    assert sink.run_id(trials[COMPLETED].key) is None  # queued: nothing sent yet
    invocation.send()

    expected = {COMPLETED: "FINISHED", DIVERGED: "FINISHED", STOPPED: "FINISHED", FAILED: "FAILED"}
    for status, trial in trials.items():
        run = client.get_run(sink.run_id(trial.key))
        assert run.info.status == expected[status], status
        tags = run.data.tags
        assert tags[STATUS_TAG] == status.value and tags[KEY_TAG] == trial.key
        assert tags[PARENT_TAG] == invocation.parent and tags[TRIAL_ID_TAG] == f"t_{trial.config.seed}"
        assert tags[TEACHER_TAG] == trial.teacher_key
        assert run.info.run_name == trial.label
        assert run.data.params["seed"] == str(trial.config.seed) and run.data.params["tau"] == "4.0"
    run_id = sink.run_id(trials[COMPLETED].key)
    assert _steps(client, run_id, "val_acc") == [(1, 0.7), (2, 0.7)]
    assert _steps(client, run_id, "lr") == [(1, 0.02)]  # a metric not reported is not logged
    assert sink.run_id("unknown") is None


def test_mlflow_continues_the_unfinished_run_of_an_earlier_invocation(store, tmp_path):
    client = store["client"]
    trial = planned(0)
    first = Invocation(store, tmp_path, "sink-resume")
    first.sink.trial_started(trial, "t_0")
    for epoch in (1, 2):
        first.sink.epoch_reported(trial, "t_0", metrics(epoch, val_acc=0.1 * epoch), RUNNING)
    first.send()
    # the driver dies: the child run stays RUNNING

    again = Invocation(store, tmp_path, "sink-resume")
    run_trial([again.sink], trial, "t_0", [metrics(2, val_acc=0.99), metrics(3, val_acc=0.3)], COMPLETED)
    again.send()
    assert again.sink.run_id(trial.key) == first.sink.run_id(trial.key)
    run = client.get_run(again.sink.run_id(trial.key))
    assert run.info.status == "FINISHED" and run.data.tags[PARENT_TAG] == again.parent
    assert _steps(client, run.info.run_id, "val_acc") == [(1, 0.1), (2, 0.2), (3, 0.3)]


def test_mirror_ends_runs_of_recorded_trials_and_refills_missing_ones(store, tmp_path, caplog):
    client = store["client"]
    invocation = Invocation(store, tmp_path / "q", "sink-mirror")
    parquet = ParquetSink(tmp_path / "sweep", sweep="s", teacher_acc=no_teacher, run_id=invocation.sink.run_id)
    done, stopped, unrecorded, lost = planned(0), planned(1), planned(2), planned(3, loss="mse")
    for trial in (done, stopped, unrecorded):
        invocation.sink.trial_started(trial, f"t_{trial.config.seed}")
    invocation.send()
    # rows of `done` and `stopped` were written, then the driver died before ending their runs;
    # `lost` has rows only (its run was deleted by hand)
    run_trial([parquet], done, "t_0", [metrics(1)], COMPLETED)
    run_trial([parquet], stopped, "t_1", [metrics(1)], STOPPED)
    run_trial([parquet], lost, "t_3", [metrics(1, val_acc=0.25), metrics(2, val_acc=0.5)], COMPLETED)
    caplog.set_level(logging.INFO, logger="kd_tune")

    def console_lines():
        return [r.getMessage() for r in caplog.records if r.name == "kd_tune.tracking.mlflow_sink"]

    ids = invocation.sink.mirror(parquet.writer)
    runs = {t.key: client.get_run(ids[t.key]) for t in (done, stopped, lost)}
    assert set(ids) == {done.key, stopped.key, lost.key}
    assert {k: r.info.status for k, r in runs.items()} == {done.key: "FINISHED", stopped.key: "FINISHED",
                                                          lost.key: "FINISHED"}
    assert runs[stopped.key].data.tags[STATUS_TAG] == "stopped"
    assert client.get_run(invocation.sink.run_id(unrecorded.key)).info.status == "RUNNING"  # no row: left alone
    refilled = runs[lost.key]
    assert refilled.data.tags[PARENT_TAG] == invocation.parent and refilled.data.tags[KEY_TAG] == lost.key
    assert refilled.data.params["loss"] == "mse" and refilled.info.run_name == lost.label
    assert _steps(client, refilled.info.run_id, "val_acc") == [(1, 0.25), (2, 0.5)]
    lines = console_lines()
    assert lines == [f"MLflow holds 2 of the 3 trials recorded in {tmp_path / 'sweep'}: refilling 1 from the "
                     "Parquet results", "MLflow refilled: 1 trial run(s) made from the Parquet results"]
    assert invocation.sink.mirror(parquet.writer) == ids and len(console_lines()) == 2  # whole now
    assert client.get_run(invocation.sink.run_id(unrecorded.key)).info.status == "RUNNING"
    # The sweep is complete: a run no row records (a search's draw whose driver died before
    # Tune saved it) will never be continued, so it is ended, not left RUNNING under the parent.
    assert invocation.sink.mirror(parquet.writer, sweep_complete=True) == ids
    assert client.get_run(invocation.sink.run_id(unrecorded.key)).info.status == "KILLED"
    assert console_lines()[-1].startswith("MLflow: ended 1 trial run(s) KILLED")


# -- ConsoleProgress -------------------------------------------------------------------------


def console_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "kd_tune.sweep.console"]


def test_console_lines_of_ended_and_retried_trials(caplog):
    caplog.set_level(logging.INFO, logger="kd_tune.sweep.console")
    clock = Clock()
    console = ConsoleProgress(5, 1, clock=clock)
    done, diverged, failed, stopped = planned(0), planned(1, loss="mse"), planned(2, loss="ce"), planned(3)
    for trial in (done, diverged, failed, stopped):
        console.trial_started(trial, "t")
    console.epoch_reported(done, "t", metrics(3, test_acc=0.97222), COMPLETED)
    console.epoch_reported(diverged, "t", metrics(2, loss=math.nan), DIVERGED)
    console.epoch_reported(stopped, "t", metrics(2, test_acc=0.5), RUNNING)
    clock.now += 1.44
    console.trial_ended(done, "t", COMPLETED, None)
    console.trial_ended(diverged, "t", DIVERGED, None)
    console.trial_retried(failed, "RuntimeError: boom")
    console.trial_ended(failed, "t", FAILED, "RuntimeError: boom")
    clock.now += 1.0
    console.trial_ended(stopped, "t", STOPPED, None)
    assert console_lines(caplog) == [
        "[2/5] kl tau=4 alpha=0.9 seed=0: completed, test acc 97.22% after 3 epochs (1.4s)",
        "[3/5] mse alpha=0.9 seed=1: diverged at epoch 2 (1.4s)",
        "retrying ce seed=2 after an error: RuntimeError: boom",
        "[4/5] ce seed=2: failed (RuntimeError: boom)",
        "[5/5] kl tau=4 alpha=0.9 seed=3: stopped, test acc 50.00% after 2 epochs (2.4s)",
    ]


def test_console_running_line_at_most_every_30_s(caplog):
    caplog.set_level(logging.INFO, logger="kd_tune.sweep.console")
    clock = Clock()
    console = ConsoleProgress(3, 1, clock=clock)
    trial = planned(0, epochs=20)
    console.trial_started(trial, "t")
    console.epoch_reported(trial, "t", metrics(1), RUNNING)
    clock.now += 30.5
    console.epoch_reported(trial, "t", metrics(2, test_acc=0.901), RUNNING)
    clock.now += 29.0
    console.epoch_reported(trial, "t", metrics(3), RUNNING)
    clock.now += 1.5
    console.epoch_reported(trial, "t", metrics(4, test_acc=0.5), RUNNING)
    assert console_lines(caplog) == ["[1/3] running kl tau=4 alpha=0.9 seed=0: epoch 2/20, test acc 90.10%",
                     "[1/3] running kl tau=4 alpha=0.9 seed=0: epoch 4/20, test acc 50.00%"]


# -- TuneSinks -------------------------------------------------------------------------------


class Recorder(TrialSink):
    """A sink that keeps the events it gets, as (event, trial key, details...)."""

    def __init__(self, events: list):
        self.events = events

    def trial_started(self, trial, trial_id):
        self.events.append(("started", trial.key, trial_id))

    def epoch_reported(self, trial, trial_id, metrics, status):
        self.events.append(("epoch", trial.key, metrics["epoch"], status))

    def checkpointed(self, trial):
        self.events.append(("checkpointed", trial.key))

    def trial_retried(self, trial, error):
        self.events.append(("retried", trial.key, error))

    def trial_ended(self, trial, trial_id, status, error):
        self.events.append(("ended", trial.key, status, error))

    def experiment_ended(self):
        self.events.append(("experiment_ended",))


def tune_trial(trial, trial_id, error_file=None, status="RUNNING", last_result=None, retries_left=False):
    """A stand-in for Tune's trial object: the attributes the adapter reads (``should_recover``:
    whether the trial had retries left when Tune errored it)."""
    return SimpleNamespace(trial_id=trial_id, config={"trial": trial.to_dict()}, error_file=error_file,
                           status=status, last_result=last_result or {}, should_recover=lambda: retries_left)


def report(epoch, status, **extra):
    return dict(metrics(epoch), kd_status=status.value, training_iteration=epoch, time_this_iter_s=0.1, **extra)


def test_a_report_of_gathered_epochs_is_an_epoch_event_each_the_last_with_its_status():
    events: list = []
    adapter = TuneSinks([Recorder(events)])
    trial = planned(0)
    t = tune_trial(trial, "t")
    gathered = [metrics(e) for e in (1, 2, 3)]
    adapter.on_trial_result(0, [], t, report(3, RUNNING, kd_epochs=gathered[:3]))
    adapter.on_trial_result(0, [], t, report(4, COMPLETED, kd_epochs=[metrics(4)]))
    assert events == [("started", trial.key, "t"), ("epoch", trial.key, 1, RUNNING), ("epoch", trial.key, 2, RUNNING),
                      ("epoch", trial.key, 3, RUNNING), ("epoch", trial.key, 4, COMPLETED)]


def test_adapter_decides_only_failed_and_stopped(tmp_path):
    events: list = []
    adapter = TuneSinks([Recorder(events)])
    trials = {name: planned(seed) for seed, name in enumerate(("completed", "diverged", "stopped", "failed"))}
    t = {name: tune_trial(trial, f"t_{name}") for name, trial in trials.items()}
    error_file = tmp_path / "error.txt"
    error_file.write_text("Traceback (most recent call last):\n  File x\nRuntimeError: boom\n\n")
    t["failed"].error_file = str(error_file)

    adapter.on_trial_start(0, [], t["completed"])
    adapter.on_trial_result(0, [], t["completed"], report(1, RUNNING))
    adapter.on_trial_result(0, [], t["completed"], report(2, COMPLETED))
    adapter.on_trial_complete(0, [], t["completed"])
    adapter.on_trial_result(0, [], t["diverged"], report(1, DIVERGED))
    adapter.on_trial_complete(0, [], t["diverged"])
    adapter.on_trial_result(0, [], t["stopped"], report(1, RUNNING))
    adapter.on_trial_complete(0, [], t["stopped"])
    adapter.on_trial_start(0, [], t["failed"])
    adapter.on_trial_recover(0, [], t["failed"])
    adapter.on_trial_start(0, [], t["failed"])  # the retry starts again: not a new trial
    adapter.on_trial_error(0, [], t["failed"])
    adapter.on_experiment_end([])

    c, d, s, f = (trials[n].key for n in ("completed", "diverged", "stopped", "failed"))
    assert events == [
        ("started", c, "t_completed"), ("epoch", c, 1, RUNNING), ("epoch", c, 2, COMPLETED),
        ("ended", c, COMPLETED, None),
        ("started", d, "t_diverged"), ("epoch", d, 1, DIVERGED), ("ended", d, DIVERGED, None),
        ("started", s, "t_stopped"), ("epoch", s, 1, RUNNING), ("ended", s, STOPPED, None),
        ("started", f, "t_failed"), ("retried", f, "RuntimeError: boom"), ("ended", f, FAILED, "RuntimeError: boom"),
        ("experiment_ended",),
    ]
    adapter.on_trial_result(0, [], t["completed"], report(2, COMPLETED))  # ended: nothing follows
    assert events[-1] == ("experiment_ended",)


def test_a_trial_errored_with_retries_left_is_retried_not_ended(tmp_path):
    """Tune errors a trial whose worker died while a reused actor was reset for it, retries
    left or not: the adapter records it as retried and lost (the runner resumes it), except in
    the runner's last round, where it is failed."""
    events: list = []
    adapter = TuneSinks([Recorder(events)])
    lost, failed = planned(0), planned(1)
    error_file = tmp_path / "error.txt"
    error_file.write_text("ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task.\n")
    adapter.on_trial_error(0, [], tune_trial(lost, "t_0", error_file=str(error_file), retries_left=True))
    adapter.on_trial_error(0, [], tune_trial(failed, "t_1", error_file=str(error_file)))
    error = "ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task."
    assert events == [("started", lost.key, "t_0"), ("retried", lost.key, error),
                      ("started", failed.key, "t_1"), ("ended", failed.key, FAILED, error)]
    assert adapter.lost == {lost.key} and adapter.open_trials == 0

    last_round: list = []
    adapter = TuneSinks([Recorder(last_round)], keep_lost=False)
    adapter.on_trial_error(0, [], tune_trial(lost, "t_0", error_file=str(error_file), retries_left=True))
    assert last_round[-1] == ("ended", lost.key, FAILED, error) and adapter.lost == set()


def test_adapter_error_text_without_an_error_file():
    events: list = []
    adapter = TuneSinks([Recorder(events)])
    trial = planned(0)
    adapter.on_trial_error(0, [], tune_trial(trial, "t_0", error_file="/nonexistent/error.txt"))
    assert events[-1] == ("ended", trial.key, FAILED, "unknown error")


def test_adapter_skips_every_event_of_a_recorded_trial():
    events: list = []
    recorded, other = planned(0), planned(1)
    adapter = TuneSinks([Recorder(events)], skip={recorded.key})
    replay = tune_trial(recorded, "t_0")
    adapter.on_trial_start(0, [], replay)
    adapter.on_trial_result(0, [], replay, report(3, COMPLETED))
    adapter.on_checkpoint(0, [], replay, checkpoint=None)
    adapter.on_trial_recover(0, [], replay)
    adapter.on_trial_complete(0, [], replay)
    adapter.on_trial_error(0, [], replay)
    assert events == []
    adapter.on_checkpoint(0, [], tune_trial(other, "t_1"), checkpoint=None)
    assert events == [("started", other.key, "t_1"), ("checkpointed", other.key)]


def test_adapter_passes_the_trainer_metrics_only(store, tmp_path):
    trial = planned(0, epochs=1)
    invocation = Invocation(store, tmp_path / "q", "adapter-metrics")
    adapter = TuneSinks([invocation.sink])
    t = tune_trial(trial, "t_0")
    adapter.on_trial_result(0, [], t, report(1, COMPLETED, pid=123, timestamp=1.7e9))
    adapter.on_trial_complete(0, [], t)
    invocation.send()
    run = store["client"].get_run(invocation.sink.run_id(trial.key))
    # Tune's own keys (pid, timestamp) are not logged; inv_tau is the KL trial's temperature.
    assert set(run.data.metrics) == {"epoch", *EPOCH_METRICS, "inv_tau"}


def test_ended_in_tune_lists_trials_the_trainer_ended(tmp_path):
    done, diverged, interrupted, errored, pending = (planned(s, epochs=2) for s in range(5))
    adapter = TuneSinks([])
    adapter.on_experiment_end([
        tune_trial(done, "t_0", status="TERMINATED", last_result=report(2, COMPLETED)),
        tune_trial(diverged, "t_1", status="TERMINATED", last_result=report(1, DIVERGED)),
        # Tune marks the trials it stops on an interruption TERMINATED too: left out
        tune_trial(interrupted, "t_2", status="TERMINATED", last_result=report(1, RUNNING)),
        tune_trial(errored, "t_3", status="ERROR", last_result=report(2, COMPLETED)),
        tune_trial(pending, "t_4", status="PENDING"),
    ])
    assert adapter.ended_in_tune == (EndedTrial(done, "t_0", COMPLETED, 2), EndedTrial(diverged, "t_1", DIVERGED, 1))


def test_a_pickled_adapter_unpickles_as_the_current_one():
    events: list = []
    earlier = TuneSinks([])
    current = TuneSinks([Recorder(events)])
    restored = pickle.loads(pickle.dumps([earlier, current]))
    assert restored[0] is current and restored[1] is current
    restored[0].on_experiment_end([])
    assert events == [("experiment_ended",)]


# -- all sinks together ----------------------------------------------------------------------


def test_a_killed_driver_leaves_nothing_open_after_the_next_invocation(store, tmp_path):
    """A trial Tune ended whose row was not written, and a recorded one whose run was not ended."""
    client = store["client"]
    done, unrecorded, partial = (planned(s, epochs=2) for s in range(3))
    first = Invocation(store, tmp_path / "q", "killed")
    parquet = ParquetSink(tmp_path, sweep="s", teacher_acc=no_teacher, run_id=first.sink.run_id)
    adapter = TuneSinks([parquet, first.sink])
    t = {trial.key: tune_trial(trial, f"t_{trial.config.seed}") for trial in (done, unrecorded, partial)}
    for trial, epochs in ((done, 2), (unrecorded, 2), (partial, 1)):
        for epoch in range(1, epochs + 1):
            adapter.on_trial_result(0, [], t[trial.key], report(epoch, COMPLETED if epoch == 2 else RUNNING))
    assert adapter.get_state() is None  # Tune saves its state: the sinks flush, the adapter keeps nothing
    first.send()
    # `done` gets its final row, but the driver stops before its child run is ended
    parquet.trial_ended(done, "t_0", COMPLETED, None)
    runs = {trial.key: first.sink.run_id(trial.key) for trial in (done, unrecorded, partial)}

    # the next invocation: Tune holds `done` and `unrecorded` as finished and runs nothing
    again = ParquetSink(tmp_path, sweep="s", teacher_acc=no_teacher)
    adapter = TuneSinks([again], skip=again.finished_keys())
    adapter.on_experiment_end([
        tune_trial(trial, f"t_{trial.config.seed}", status="TERMINATED", last_result=report(2, COMPLETED))
        for trial in (done, unrecorded)
    ])
    again.reconcile(adapter.ended_in_tune)
    Invocation(store, tmp_path / "other", "killed-2").sink.mirror(again.writer)  # another sweep's store: no effect
    assert client.get_run(runs[done.key]).info.status == "RUNNING"
    ids = Invocation(store, tmp_path / "q", "killed").sink.mirror(again.writer)
    assert again.writer.record_run_ids(ids) == 1  # `unrecorded`: its row was written without the run id

    rows = read_trials(tmp_path).to_pandas().set_index("trial_key")
    assert sorted(rows.index) == sorted([done.key, unrecorded.key])
    assert rows.loc[unrecorded.key, "status"] == "completed" and rows.loc[unrecorded.key, "epoch"] == 2
    assert rows.loc[done.key, "mlflow_run_id"] == runs[done.key]
    assert rows.loc[unrecorded.key, "mlflow_run_id"] == runs[unrecorded.key]
    status = {key: client.get_run(run).info.status for key, run in runs.items()}
    assert status == {done.key: "FINISHED", unrecorded.key: "FINISHED", partial.key: "RUNNING"}


def test_a_search_records_a_trial_end_once_tune_has_saved_the_trial():
    events: list = []
    adapter = TuneSinks([Recorder(events)], hold_new=True)
    early, late = planned(0), planned(1)
    a, b = tune_trial(early, "t_a"), tune_trial(late, "t_b")
    adapter.on_trial_start(0, [], a)
    assert adapter.get_state() is None  # Tune saved its state: trial a is in it
    adapter.on_trial_start(0, [], b)
    for trial in (a, b):
        adapter.on_trial_result(0, [], trial, report(1, COMPLETED))
        adapter.on_trial_complete(0, [], trial)
    # b is not in any saved state yet: a driver killed now leaves no row of it.
    assert [e for e in events if e[0] == "ended"] == [("ended", early.key, COMPLETED, None)]
    adapter.get_state()
    assert [e for e in events if e[0] == "ended"] == [("ended", early.key, COMPLETED, None),
                                                      ("ended", late.key, COMPLETED, None)]
    adapter.get_state()
    assert len([e for e in events if e[0] == "ended"]) == 2
# -- end measurements: the adapter, the samples sink, the MLflow runs ---------------------


def measured_end(seed: int = 0, weights=None) -> TrialEnd:
    gen = torch.Generator().manual_seed(seed)
    logits, teacher = torch.randn(12, 4, generator=gen), torch.randn(12, 4, generator=gen)
    m = measure(logits, torch.arange(12) % 4, torch.randn(12, 3, generator=gen), teacher)
    return TrialEnd(m.of_classes([0, 1]), noise_hash="abc123", weights=weights)


class EndRecorder(Recorder):
    def trial_measured(self, trial, trial_id, end):
        self.events.append(("measured", trial.key, end.measurements.summary["ece"]))


def test_adapter_takes_the_end_payload_out_of_the_result_and_sends_it(tmp_path):
    events: list = []
    trial = planned(0, epochs=1)
    end = measured_end()
    result = report(1, COMPLETED, kd_end=end)
    adapter = TuneSinks([EndRecorder(events)])
    adapter.on_trial_result(0, [], tune_trial(trial, "t_0"), result)
    assert "kd_end" not in result  # Tune stores the result after its callbacks: the arrays never reach it
    # Tune formats every result into debug messages: the payload's text is one short line.
    assert repr(end) == "TrialEnd(12 test samples, 6 feature rows, weights not kept)"
    assert events[-2:] == [("epoch", trial.key, 1, COMPLETED), ("measured", trial.key, end.measurements.summary["ece"])]


def test_measured_trials_get_summary_columns_and_part_files(tmp_path):
    trial, unmeasured = planned(0, epochs=1), planned(1, epochs=1)
    end = measured_end()
    parquet = ParquetSink(tmp_path, sweep="s", teacher_acc=no_teacher)
    samples = SamplesSink(tmp_path, feature_classes=[0, 1])
    sinks = [parquet, samples]
    for sink in sinks:
        sink.trial_started(trial, "t_0")
        sink.epoch_reported(trial, "t_0", metrics(1), COMPLETED)
        sink.trial_measured(trial, "t_0", end)
        sink.trial_ended(trial, "t_0", COMPLETED, None)
    run_trial(sinks, unmeasured, "t_1", [metrics(1)], DIVERGED)
    rows = {r["trial_key"]: r for r in read_trials(tmp_path).to_pylist()}
    assert rows[trial.key]["ece"] == end.measurements.summary["ece"]
    assert rows[trial.key]["tld_median"] == pytest.approx(float(np.median(end.measurements.values["tld"])))
    assert math.isnan(rows[unmeasured.key]["ece"])
    frame = pd.read_parquet(tmp_path / SAMPLES_DIR)
    assert frame["key"].unique().tolist() == [trial.key] and len(frame) == 12
    teacher = TeacherRecord(trial.teachers[-1], {"metrics": {"test_acc": 0.9}}, measured_end(3).measurements)
    samples.teacher_ready(teacher)
    features = pd.read_parquet(tmp_path / FEATURES_DIR)
    assert set(features.loc[features["role"] == "teacher", "label"]) == {0, 1}


def test_mlflow_runs_hold_final_numbers_data_set_weights_and_teacher(store, tmp_path):
    trial = planned(0, epochs=2)
    parquet = ParquetSink(tmp_path, sweep="s", teacher_acc=lambda key: 0.93)
    invocation = Invocation(store, tmp_path, "comparing", trial_row=parquet.trial_row)
    mlflow = invocation.sink
    weights = {"format": 1, "arch": "cnn-4", "model": {"w": np.ones(2, dtype=np.float32)}}
    for sink in (parquet, mlflow):
        sink.trial_started(trial, "t_0")
        for epoch in (1, 2):
            sink.epoch_reported(trial, "t_0", metrics(epoch, val_acc=0.5 + epoch / 10), RUNNING)
        sink.trial_measured(trial, "t_0", measured_end(weights=weights))
        sink.trial_ended(trial, "t_0", COMPLETED, None)
    invocation.send()
    client = store["client"]
    run = client.get_run(mlflow.run_id(trial.key))
    row = parquet.trial_row(trial.key)
    for name in ("best_val_acc", "test_acc_at_best_val", "teacher_test_acc", "ece", "entropy_median"):
        assert run.data.metrics[name] == pytest.approx(row[name]), name
    assert run.data.metrics["inv_tau"] == pytest.approx(1 / trial.config.tau)
    assert run.info.run_name == trial.label
    (dataset,) = run.inputs.dataset_inputs
    assert dataset.dataset.name == "digits" and json.loads(dataset.dataset.profile)["train_labels_sha256"] == "abc123"
    # Other training labels, another data set digest.
    other = Invocation(store, tmp_path / "other", "comparing-2")
    other.sink.trial_started(trial, "t_0")
    other.sink.trial_measured(trial, "t_0", TrialEnd(measured_end().measurements, noise_hash="different"))
    other.send()
    (moved,) = client.get_run(other.sink.run_id(trial.key)).inputs.dataset_inputs
    assert moved.dataset.digest != dataset.dataset.digest
    path = client.download_artifacts(run.info.run_id, "model/student.pt", str(tmp_path / "dl"))
    saved = torch.load(path, weights_only=True)
    assert saved["arch"] == "cnn-4" and torch.equal(saved["model"]["w"], torch.ones(2))
    assert not list(invocation.queue.files_dir.rglob("*.pt"))  # a file waits in the sweep folder only until sent

    teacher = TeacherRecord(trial.teachers[-1], {"metrics": {"test_acc": 0.75, "epoch": 2},
                                                 "history": [metrics(1), metrics(2)], "noise_hash": None},
                          measured_end(5).measurements)
    mlflow.teacher_ready(teacher)
    invocation.send()
    again = Invocation(store, tmp_path / "again", "comparing")  # a resumed invocation: the teacher run moves
    again.sink.teacher_ready(teacher)
    again.send()
    found = client.search_runs([again.queue.experiment_id()], "tags.`kd_tune.role` = 'teacher'")
    assert len(found) == 1 and found[0].data.tags[PARENT_TAG] == again.parent
    # The last epoch holds the final accuracy: one value per step, none logged twice.
    assert _steps(client, found[0].info.run_id, "test_acc") == [(1, 0.75), (2, 0.75)]
    assert _steps(client, found[0].info.run_id, "train_loss") == [(1, 0.5), (2, 0.5)]


def test_best_setting_is_chosen_on_mean_validation_accuracy():
    def row(loss, tau, alpha, seed, val, test):
        return {**RunConfig(loss=loss, tau=tau, alpha=alpha, seed=seed).to_dict(), "status": "completed",
                "best_val_acc": val, "test_acc_at_best_val": test, "test_acc": test}

    rows = [row("kl", 4.0, 0.9, 0, 0.90, 0.70), row("kl", 4.0, 0.9, 1, 0.70, 0.70),  # mean val 0.80
            row("mse", 1.0, 1.0, 0, 0.85, 0.99), row("mse", 1.0, 1.0, 1, 0.85, 0.99),  # mean val 0.85
            {**row("kl", 1.0, 0.9, 0, 0.99, 0.5), "status": "diverged"}]
    params, values = best_setting(rows)
    # The diverged trial's higher validation accuracy does not count; seed is never a setting.
    assert params == {"best.loss": "mse", "best.tau": 1.0, "best.alpha": 1.0}
    assert values == {"best.val_acc": pytest.approx(0.85), "best.test_acc_at_best_val": pytest.approx(0.99),
                      "best.test_acc": pytest.approx(0.99), "best.n": 2.0}
    assert best_setting([rows[-1]]) is None
