"""Parquet results: trial rows from epoch histories, and the one writer's atomic files."""
from __future__ import annotations

import dataclasses
import math
import os
from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kd_tune.atomic import atomic_write
from kd_tune.config import RunConfig
from kd_tune.identity import trial_key
from kd_tune.results import (
    EPOCH_METRICS,
    EPOCHS_FILE,
    EPOCHS_SCHEMA,
    TRIALS_FILE,
    TRIALS_SCHEMA,
    ResultsWriter,
    epoch_row,
    trial_row,
)

STARTED = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


def _epoch(epoch, val_acc, test_acc, time_s=1.5, **extra):
    return {"epoch": epoch, "train_loss": 1.0 / epoch, "train_acc": 0.5 + epoch / 100, "val_acc": val_acc,
            "test_acc": test_acc, "test_logit_mse": 0.25 * epoch, "test_agreement": 0.9, "lr": 0.1,
            "epoch_time_s": time_s, **extra}


HISTORY = [
    _epoch(1, 0.50, 0.40, 1.0),
    _epoch(2, 0.80, 0.70, 2.0),
    _epoch(3, 0.70, 0.90, 3.0),
    _epoch(4, 0.80, 0.75, 4.0),  # ties the best val_acc of epoch 2: the earlier epoch wins
    _epoch(5, 0.60, 0.95, 0.5),
]


def _row(config=RunConfig(), status="completed", history=HISTORY, **kw):
    args = dict(sweep="s", trial_key=trial_key(config), trial_id="t_1", config=config, status=status,
                history=history, teacher_key="teach", teacher_test_acc=0.93, started_at=STARTED,
                mlflow_run_id="run1")
    args.update(kw)
    return trial_row(**args)


# -- trial_row ---------------------------------------------------------------------------


def test_trial_row_best_val_is_the_earliest_epoch_with_the_max_val_acc():
    row = _row()
    assert row["best_val_acc"] == 0.80
    assert row["best_val_epoch"] == 2
    assert row["test_acc_at_best_val"] == 0.70  # from epoch 2, not the best test epoch (5)


def test_trial_row_last_epoch_metrics_and_time_sum():
    row = _row()
    assert row["epoch"] == 5
    assert row["test_acc"] == 0.95 and row["val_acc"] == 0.60
    assert row["train_loss"] == pytest.approx(0.2) and row["test_logit_mse"] == 1.25
    assert row["train_time_s"] == pytest.approx(10.5)
    assert row["status"] == "completed" and row["diverged_epoch"] is None and row["error"] is None
    assert (row["sweep"], row["trial_id"], row["teacher_key"], row["teacher_test_acc"]) == ("s", "t_1", "teach", 0.93)
    assert row["started_at"] == STARTED and row["mlflow_run_id"] == "run1"
    now = datetime.now(UTC)
    assert now - timedelta(minutes=1) < row["finished_at"] <= now


def test_trial_row_ignores_nan_val_acc():
    history = [_epoch(1, math.nan, 0.1), _epoch(2, 0.3, 0.2), _epoch(3, math.nan, 0.99)]
    row = _row(history=history)
    assert (row["best_val_acc"], row["best_val_epoch"], row["test_acc_at_best_val"]) == (0.3, 2, 0.2)


def test_trial_row_without_any_val_acc_has_no_best():
    row = _row(history=[_epoch(1, math.nan, 0.1)])
    assert (row["best_val_acc"], row["best_val_epoch"], row["test_acc_at_best_val"]) == (None, None, None)
    row = _row(history=[{k: v for k, v in _epoch(1, 0.0, 0.1).items() if k != "val_acc"}])
    assert row["best_val_acc"] is None and math.isnan(row["val_acc"])


def test_trial_row_diverged_epoch_only_when_diverged():
    history = HISTORY[:2] + [dict(_epoch(3, math.nan, math.nan), train_loss=math.nan)]
    diverged = _row(status="diverged", history=history)
    assert diverged["diverged_epoch"] == 3 and diverged["epoch"] == 3
    assert diverged["best_val_epoch"] == 2
    for status in ("completed", "failed"):
        assert _row(status=status, history=history)["diverged_epoch"] is None


def test_trial_row_of_a_trial_without_epochs():
    row = _row(status="failed", history=[], error="boom")
    assert row["error"] == "boom" and row["diverged_epoch"] is None
    assert row["epoch"] is None and row["test_acc"] is None and row["best_val_acc"] is None
    assert row["train_time_s"] == 0.0
    # still writable
    pa.Table.from_pylist([row], schema=TRIALS_SCHEMA)


def test_trial_row_has_every_config_field_and_exactly_the_schema_columns():
    config = RunConfig(tau=math.inf, schedule="step", milestones=(100, 150), seed=4)
    row = _row(config=config)
    for f in dataclasses.fields(RunConfig):
        assert f.name in row, f.name
    assert row["tau"] == math.inf and row["milestones"] == [100, 150] and row["seed"] == 4
    assert row["data_dir"] is None and row["device"] == "auto"
    assert list(row) == TRIALS_SCHEMA.names


def test_schemas_have_the_documented_types():
    assert TRIALS_SCHEMA.field("tau").type == pa.float64()
    assert TRIALS_SCHEMA.field("milestones").type == pa.list_(pa.int64())
    assert TRIALS_SCHEMA.field("teacher_epochs").type == pa.int64()
    assert TRIALS_SCHEMA.field("data_dir").type == pa.string()
    assert TRIALS_SCHEMA.field("nesterov").type == pa.bool_()
    assert TRIALS_SCHEMA.field("finished_at").type == pa.timestamp("us", tz="UTC")
    assert EPOCHS_SCHEMA.names == ["sweep", "trial_key", "trial_id", "epoch", *EPOCH_METRICS, "reported_at"]


def test_epoch_row_fills_missing_metrics_with_nan():
    row = epoch_row("s", "k", "t", {"epoch": 3.0, "train_loss": 2, "val_acc": 0.5})
    assert row["epoch"] == 3 and isinstance(row["epoch"], int)
    assert row["train_loss"] == 2.0 and isinstance(row["train_loss"], float)
    assert math.isnan(row["test_acc"]) and math.isnan(row["epoch_time_s"])
    assert set(row) == set(EPOCHS_SCHEMA.names)
    assert row["reported_at"].tzinfo is not None


# -- ResultsWriter -----------------------------------------------------------------------


def _fill(writer, config=RunConfig(), epochs=3, trial_id="t_1"):
    key = trial_key(config)
    for e in range(1, epochs + 1):
        writer.add_epoch(epoch_row("s", key, trial_id, _epoch(e, 0.1 * e, 0.2 * e)))
    writer.finish_trial(_row(config=config, trial_id=trial_id, history=writer.history(key)))
    return key


def test_flush_writes_both_files_with_exactly_the_schemas(tmp_path):
    writer = ResultsWriter(tmp_path / "sweep")
    assert not (tmp_path / "sweep").exists()  # reading writes nothing
    _fill(writer)
    writer.flush()
    trials = pq.read_table(tmp_path / "sweep" / TRIALS_FILE)
    epochs = pq.read_table(tmp_path / "sweep" / EPOCHS_FILE)
    assert trials.schema.remove_metadata().equals(TRIALS_SCHEMA.remove_metadata())
    assert epochs.schema.remove_metadata().equals(EPOCHS_SCHEMA.remove_metadata())
    assert trials.num_rows == 1 and epochs.num_rows == 3
    assert epochs.column("epoch").to_pylist() == [1, 2, 3]
    assert trials.column("best_val_epoch").to_pylist() == [3]
    assert sorted(os.listdir(tmp_path / "sweep")) == [EPOCHS_FILE, TRIALS_FILE]


def test_infinite_tau_and_milestones_round_trip(tmp_path):
    config = RunConfig(tau=math.inf, schedule="step", milestones=(100, 150))
    writer = ResultsWriter(tmp_path)
    _fill(writer, config)
    writer.flush()
    table = pq.read_table(tmp_path / TRIALS_FILE)
    assert table.schema.field("tau").type == pa.float64()
    assert table.column("tau").to_pylist() == [math.inf]
    assert table.schema.field("milestones").type == pa.list_(pa.int64())
    assert table.column("milestones").to_pylist() == [[100, 150]]
    assert table.column("started_at").to_pylist() == [STARTED]
    row = table.to_pylist()[0]
    assert RunConfig.from_dict({f.name: row[f.name] for f in dataclasses.fields(RunConfig)}) == config


def test_a_second_writer_loads_the_rows_on_disk(tmp_path):
    first = ResultsWriter(tmp_path)
    a = _fill(first, RunConfig(seed=0), trial_id="t_a")
    b = _fill(first, RunConfig(seed=1, tau=math.inf), epochs=2, trial_id="t_b")
    first.flush()

    second = ResultsWriter(tmp_path)
    assert set(second.trials) == {a, b}
    assert set(second.epochs) == {(a, 1), (a, 2), (a, 3), (b, 1), (b, 2)}
    assert second.trials[b]["tau"] == math.inf and second.trials[a]["trial_id"] == "t_a"
    assert second.trials[a]["started_at"] == STARTED
    assert [r["epoch"] for r in second.history(a)] == [1, 2, 3]
    assert [r["val_acc"] for r in second.history(b)] == pytest.approx([0.1, 0.2])
    for key in (a, b):
        for name in ("best_val_acc", "best_val_epoch", "epoch", "test_acc", "train_time_s", "milestones"):
            assert second.trials[key][name] == first.trials[key][name], name


def test_resumed_epochs_and_trials_replace_their_rows(tmp_path):
    first = ResultsWriter(tmp_path)
    key = _fill(first, epochs=3)
    first.flush()

    second = ResultsWriter(tmp_path)
    # the resumed trial reports epoch 3 again (after its checkpoint at 2) and a new epoch 4
    second.add_epoch(epoch_row("s", key, "t_2", _epoch(3, 0.99, 0.55)))
    second.add_epoch(epoch_row("s", key, "t_2", _epoch(4, 0.10, 0.66)))
    second.finish_trial(_row(trial_id="t_2", history=second.history(key)))
    second.flush()

    epochs = pq.read_table(tmp_path / EPOCHS_FILE).to_pylist()
    assert [(r["epoch"], r["trial_id"]) for r in epochs] == [(1, "t_1"), (2, "t_1"), (3, "t_2"), (4, "t_2")]
    assert epochs[2]["val_acc"] == 0.99
    trials = pq.read_table(tmp_path / TRIALS_FILE).to_pylist()
    assert len(trials) == 1
    assert (trials[0]["trial_id"], trials[0]["epoch"], trials[0]["best_val_epoch"]) == ("t_2", 4, 3)
    assert trials[0]["test_acc_at_best_val"] == 0.55


def test_history_is_sorted_by_epoch_and_per_trial(tmp_path):
    writer = ResultsWriter(tmp_path)
    for e in (3, 1, 2):
        writer.add_epoch(epoch_row("s", "k1", "t", _epoch(e, 0.1, 0.1)))
    writer.add_epoch(epoch_row("s", "k0", "t", _epoch(1, 0.1, 0.1)))
    assert [r["epoch"] for r in writer.history("k1")] == [1, 2, 3]
    assert [r["trial_key"] for r in writer.history("k0")] == ["k0"]
    assert writer.history("nope") == []


def test_flush_without_changes_does_not_rewrite(tmp_path):
    writer = ResultsWriter(tmp_path)
    writer.flush()
    assert list(tmp_path.iterdir()) == []  # nothing added: nothing written
    _fill(writer)
    writer.flush()
    before = {name: os.stat(tmp_path / name) for name in (TRIALS_FILE, EPOCHS_FILE)}
    writer.flush()
    ResultsWriter(tmp_path).flush()  # loading alone changes nothing either
    for name, st in before.items():
        now = os.stat(tmp_path / name)
        assert (now.st_ino, now.st_mtime_ns, now.st_size) == (st.st_ino, st.st_mtime_ns, st.st_size), name
    # a change does rewrite (atomic replace: a new inode)
    writer.add_epoch(epoch_row("s", "other", "t", _epoch(1, 0.1, 0.1)))
    writer.flush()
    assert os.stat(tmp_path / EPOCHS_FILE).st_ino != before[EPOCHS_FILE].st_ino


def test_a_failing_write_keeps_the_previous_file_and_leaves_no_temp_files(tmp_path):
    writer = ResultsWriter(tmp_path)
    key = _fill(writer)
    writer.flush()
    old = (tmp_path / TRIALS_FILE).read_bytes()
    bad = dict(writer.trials[key], trial_key="bad", epoch="not a number")
    writer.finish_trial(bad)
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError)):
        writer.flush()
    assert (tmp_path / TRIALS_FILE).read_bytes() == old
    assert pq.read_table(tmp_path / TRIALS_FILE).column("trial_key").to_pylist() == [key]
    assert sorted(os.listdir(tmp_path)) == [EPOCHS_FILE, TRIALS_FILE]


def test_atomic_write_failing_inside_the_block_keeps_the_old_file(tmp_path):
    target = tmp_path / "sub" / "x.bin"
    with atomic_write(target) as handle:
        handle.write(b"old")
    assert target.read_bytes() == b"old"
    with pytest.raises(RuntimeError, match="half"):
        with atomic_write(target) as handle:
            handle.write(b"new, half wri")
            raise RuntimeError("half written")
    assert target.read_bytes() == b"old"
    assert os.listdir(target.parent) == ["x.bin"]
