"""The recorder's clean-up after Tune returns, with a real Parquet folder and MLflow store."""
from __future__ import annotations

import pandas as pd

from kd_tune.config import RunConfig
from kd_tune.recorder import SweepRecorder
from kd_tune.results import ResultsWriter, epoch_row, trial_row
from kd_tune.search_space import trial_key
from kd_tune.teacher_store import TeacherStore
from kd_tune.tracking import SweepTracker, default_tracking_uri


def metrics(epoch: int, loss: float = 0.5) -> dict:
    return {"epoch": epoch, "train_loss": loss, "train_acc": 0.8, "val_acc": 0.7, "test_acc": 0.75,
            "test_logit_mse": 0.1, "test_agreement": 0.9, "lr": 0.02, "epoch_time_s": 0.1}


def test_reconcile_closes_what_a_killed_driver_left_open(tmp_path):
    done, unrecorded, partial = (RunConfig(epochs=2, seed=s) for s in range(3))
    keys = {trial_key(c): c for c in (done, unrecorded, partial)}
    writer = ResultsWriter(tmp_path / "sweep")
    tracker = SweepTracker(default_tracking_uri(tmp_path), "s", artifact_root=tmp_path / "art")
    tracker.start_parent("s", {}, {})
    runs = {key: tracker.start_trial(key, key, config.to_dict(), {}) for key, config in keys.items()}
    for config in (done, unrecorded):
        for epoch in (1, 2):
            writer.add_epoch(epoch_row("s", trial_key(config), "t", metrics(epoch)))
    writer.add_epoch(epoch_row("s", trial_key(partial), "t", metrics(1)))
    # `done` has its final row, but the driver stopped before its child run was ended;
    # `unrecorded` reported every epoch, but its final row was never written.
    writer.finish_trial(trial_row(sweep="s", trial_key=trial_key(done), trial_id="t", config=done,
                                  status="completed", history=writer.history(trial_key(done)),
                                  teacher_key=None, teacher_test_acc=None, started_at=None))

    recorder = SweepRecorder(sweep="s", writer=writer, tracker=tracker, teachers=TeacherStore(tmp_path / "t"),
                             total=3, log=lambda _: None)
    recorder.reconcile(keys)

    rows = pd.read_parquet(tmp_path / "sweep" / "trials.parquet").set_index("trial_key")
    assert sorted(rows.index) == sorted([trial_key(done), trial_key(unrecorded)])
    assert rows.loc[trial_key(unrecorded), "status"] == "completed" and rows.loc[trial_key(unrecorded), "epoch"] == 2
    status = {key: tracker.client.get_run(run).info.status for key, run in runs.items()}
    assert status == {trial_key(done): "FINISHED", trial_key(unrecorded): "FINISHED", trial_key(partial): "RUNNING"}
