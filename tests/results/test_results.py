"""Parquet results: trial rows from epoch histories, and the one writer's tables of part files."""
from __future__ import annotations

import dataclasses
import math
import os
from datetime import UTC, datetime, timedelta

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from analysis.results_io import load_epochs, load_trials
from kd_tune.core.config import LOSS_OPTIONS, RunConfig
from kd_tune.core.identity import trial_key
from kd_tune.results.trial_tables import (
    EPOCH_METRICS,
    EPOCHS_FILE,
    EPOCHS_SCHEMA,
    TRIALS_FILE,
    TRIALS_SCHEMA,
    ResultsError,
    ResultsWriter,
    epoch_row,
    epochs_table,
    read_epochs,
    read_trials,
    trial_row,
    trials_table,
)
from kd_tune.storage.atomic import atomic_write
from kd_tune.storage.part_table import PartTable

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


def on_disk(folder):
    """Every row stored in a table folder, as a data set reader sees it (no deduplication)."""
    return ds.dataset(folder, format="parquet").to_table().to_pylist()


def test_flush_writes_both_tables_with_exactly_the_schemas(tmp_path):
    writer = ResultsWriter(tmp_path / "sweep")
    assert not (tmp_path / "sweep").exists()  # reading writes nothing
    _fill(writer)
    writer.flush()
    results = tmp_path / "sweep" / "results"
    assert sorted(os.listdir(tmp_path / "sweep")) == ["results"]
    assert sorted(os.listdir(results)) == ["epochs", "trials"]
    for name, schema, rows in (("trials", TRIALS_SCHEMA, 1), ("epochs", EPOCHS_SCHEMA, 3)):
        files = os.listdir(results / name)
        assert len(files) == 1 and files[0].startswith("part-") and files[0].endswith(".parquet")
        dataset = ds.dataset(results / name)  # the folder opens as a data set as it is
        assert dataset.schema.remove_metadata().equals(schema)
        assert dataset.count_rows() == rows
    assert sorted(r["epoch"] for r in on_disk(results / "epochs")) == [1, 2, 3]
    assert [r["best_val_epoch"] for r in on_disk(results / "trials")] == [3]


def test_infinite_tau_and_milestones_round_trip(tmp_path):
    config = RunConfig(tau=math.inf, schedule="step", milestones=(100, 150))
    writer = ResultsWriter(tmp_path)
    _fill(writer, config)
    writer.flush()
    table = read_trials(tmp_path)
    assert table.schema.field("tau").type == pa.float64()
    assert table.column("tau").to_pylist() == [math.inf]
    assert table.schema.field("milestones").type == pa.list_(pa.int64())
    assert table.column("milestones").to_pylist() == [[100, 150]]
    assert table.column("started_at").to_pylist() == [STARTED]
    row = table.to_pylist()[0]
    assert RunConfig.from_dict({f.name: row[f.name] for f in dataclasses.fields(RunConfig)}) == config


def test_a_second_writer_knows_the_stored_rows(tmp_path):
    first = ResultsWriter(tmp_path)
    a = _fill(first, RunConfig(seed=0), trial_id="t_a")
    b = _fill(first, RunConfig(seed=1, tau=math.inf), epochs=2, trial_id="t_b")
    failed = _fill(first, RunConfig(seed=2), epochs=1)
    first.finish_trial(dict(_row(config=RunConfig(seed=2)), status="failed"))
    first.flush()

    second = ResultsWriter(tmp_path)
    assert second.statuses() == {a: "completed", b: "completed", failed: "failed"}
    assert [r["epoch"] for r in second.history(a)] == [1, 2, 3]
    assert [r["val_acc"] for r in second.history(b)] == pytest.approx([0.1, 0.2])
    stored = {r["trial_key"]: r for r in second.read_trials()}
    assert stored[b]["tau"] == math.inf and stored[a]["trial_id"] == "t_a" and stored[a]["started_at"] == STARTED
    assert second.read_trials([b])[0]["trial_key"] == b


def test_resumed_epochs_and_trials_replace_their_rows_on_disk(tmp_path):
    first = ResultsWriter(tmp_path)
    key = _fill(first, epochs=3)
    first.flush()

    second = ResultsWriter(tmp_path)
    # the resumed trial reports epoch 3 again (after its checkpoint at 2) and a new epoch 4
    second.add_epoch(epoch_row("s", key, "t_2", _epoch(3, 0.99, 0.55)))
    second.add_epoch(epoch_row("s", key, "t_2", _epoch(4, 0.10, 0.66)))
    assert [(r["epoch"], r["trial_id"]) for r in second.history(key)] == [(1, "t_1"), (2, "t_1"), (3, "t_2"),
                                                                            (4, "t_2")]
    second.finish_trial(_row(trial_id="t_2", history=second.history(key)))
    second.flush()

    # exactly one row per key in the files themselves, not only through the readers
    epochs = sorted(on_disk(tmp_path / "results" / "epochs"), key=lambda r: r["epoch"])
    assert [(r["epoch"], r["trial_id"]) for r in epochs] == [(1, "t_1"), (2, "t_1"), (3, "t_2"), (4, "t_2")]
    assert epochs[2]["val_acc"] == 0.99
    trials = on_disk(tmp_path / "results" / "trials")
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


def test_flush_without_changes_writes_nothing(tmp_path):
    writer = ResultsWriter(tmp_path)
    writer.flush()
    assert list(tmp_path.iterdir()) == []  # nothing added: nothing written
    _fill(writer)
    writer.flush()
    before = {p: os.stat(p) for p in (tmp_path / "results").rglob("*")}
    writer.flush()
    ResultsWriter(tmp_path).flush()  # opening alone changes nothing either
    now = {p: os.stat(p) for p in (tmp_path / "results").rglob("*")}
    assert set(now) == set(before)
    for path, st in before.items():
        assert (now[path].st_ino, now[path].st_mtime_ns, now[path].st_size) == \
            (st.st_ino, st.st_mtime_ns, st.st_size), path
    writer.add_epoch(epoch_row("s", "other", "t", _epoch(1, 0.1, 0.1)))
    writer.flush()  # a change appends a part and leaves the others as they are
    assert len(epochs_table(tmp_path).parts()) == 2 and len(trials_table(tmp_path).parts()) == 1


def test_a_failing_write_keeps_the_stored_rows_and_leaves_no_temp_files(tmp_path):
    writer = ResultsWriter(tmp_path)
    key = _fill(writer)
    writer.flush()
    files = sorted((tmp_path / "results").rglob("*"))
    bad = dict(writer.read_trials()[0], trial_key="bad", epoch="not a number")
    writer.finish_trial(bad)
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError)):
        writer.flush()
    assert sorted((tmp_path / "results").rglob("*")) == files
    assert read_trials(tmp_path).column("trial_key").to_pylist() == [key]


def test_compact_leaves_one_part_per_table(tmp_path):
    writer = ResultsWriter(tmp_path)
    keys = []
    for seed in range(40):
        keys.append(_fill(writer, RunConfig(seed=seed), trial_id=f"t_{seed}"))
        writer.flush()
    assert 1 < len(epochs_table(tmp_path).parts()) < 40  # merged in tiers as it went
    writer.compact()
    assert len(epochs_table(tmp_path).parts()) == 1 and len(trials_table(tmp_path).parts()) == 1
    assert sorted(read_trials(tmp_path).column("trial_key").to_pylist()) == sorted(keys)
    assert len(on_disk(tmp_path / "results" / "epochs")) == 40 * 3


def test_update_trials_changes_stored_rows(tmp_path):
    writer = ResultsWriter(tmp_path)
    a = _fill(writer, RunConfig(seed=0))
    b = _fill(writer, RunConfig(seed=1))
    writer.flush()
    writer.update_trials({a: {"mlflow_run_id": "new-run"}})
    rows = {r["trial_key"]: r for r in on_disk(tmp_path / "results" / "trials")}
    assert set(rows) == {a, b}
    assert rows[a]["mlflow_run_id"] == "new-run" and rows[b]["mlflow_run_id"] == "run1"
    assert rows[a]["started_at"] == STARTED and rows[a]["test_acc"] == rows[b]["test_acc"]


def _flip_a_value_bit(path):
    """Flip one bit inside a data page of ``path`` (a test accuracy value, 0.2 * epoch)."""
    data = bytearray(path.read_bytes())
    at = data.find(pa.array([0.6000000000000001]).buffers()[1].to_pybytes())
    assert at > 0
    data[at + 3] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "bit flip"])
def test_a_damaged_part_is_named_with_the_rebuild_command(tmp_path, damage):
    writer = ResultsWriter(tmp_path / "sweep")
    _fill(writer)
    writer.flush()
    part = epochs_table(tmp_path / "sweep").parts()[0].path
    if damage == "truncate":
        part.write_bytes(part.read_bytes()[:200])
    elif damage == "garbage":
        part.write_bytes(b"not parquet at all" * 40)
    else:
        _flip_a_value_bit(part)
    for read in (lambda: ResultsWriter(tmp_path / "sweep"), lambda: read_epochs(tmp_path / "sweep"),
                 lambda: load_epochs(tmp_path / "sweep")):
        with pytest.raises(ResultsError) as err:
            read()
        message = str(err.value)
        assert str(part) in message and "python -m kd_tune.recover rebuild" in message and "\n" not in message
    assert read_trials(tmp_path / "sweep").num_rows == 1  # the other table is fine


def test_two_rows_of_a_key_left_by_a_killed_writer_become_one(tmp_path):
    writer = ResultsWriter(tmp_path)
    key = _fill(writer, epochs=2)
    writer.flush()
    # a writer killed between writing the new rows and removing the old ones
    newer = epoch_row("s", key, "t_new", _epoch(2, 0.9, 0.9))
    PartTable(tmp_path / "results" / "epochs", EPOCHS_SCHEMA, ("trial_key", "epoch")).append([newer])
    assert len(on_disk(tmp_path / "results" / "epochs")) == 3
    assert sorted(r["trial_id"] for r in read_epochs(tmp_path).to_pylist()) == ["t_1", "t_new"]  # readers: one

    reopened = ResultsWriter(tmp_path)
    rows = sorted(on_disk(tmp_path / "results" / "epochs"), key=lambda r: r["epoch"])
    assert [(r["epoch"], r["trial_id"]) for r in rows] == [(1, "t_1"), (2, "t_new")]
    assert [r["val_acc"] for r in reopened.history(key)] == [0.1, 0.9]


def test_files_of_the_older_layout_are_moved_into_the_tables(tmp_path):
    writer = ResultsWriter(tmp_path / "new")
    key = _fill(writer)
    writer.flush()
    old = tmp_path / "old"
    old.mkdir()
    pq.write_table(read_trials(tmp_path / "new"), old / TRIALS_FILE)
    pq.write_table(read_epochs(tmp_path / "new"), old / EPOCHS_FILE)
    assert len(load_trials(old)) == 1 and len(load_epochs(old)) == 3  # readable as it is

    adopted = ResultsWriter(old)
    assert adopted.statuses() == {key: "completed"}
    assert sorted(os.listdir(old)) == ["results"]
    # Compared as frames: the unmeasured trial's summary columns are NaN, which never equals itself.
    pd.testing.assert_frame_equal(read_trials(old).to_pandas(), read_trials(tmp_path / "new").to_pandas())


def test_other_readers_open_the_table_folders(tmp_path):
    writer = ResultsWriter(tmp_path)
    for seed in range(3):
        _fill(writer, RunConfig(seed=seed))
        writer.flush()
    trials, epochs = tmp_path / "results" / "trials", tmp_path / "results" / "epochs"
    import pandas as pd
    assert len(pd.read_parquet(trials)) == 3 and len(pd.read_parquet(epochs)) == 9
    duckdb = pytest.importorskip("duckdb")
    assert duckdb.sql(f"select count(*) from read_parquet('{epochs}/*.parquet')").fetchall() == [(9,)]
    polars = pytest.importorskip("polars")
    assert polars.scan_parquet(f"{trials}/*.parquet").collect().height == 3


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


# -- loss options: a column each, null where the loss does not read it ---------------------------


def test_loss_options_are_null_where_the_loss_does_not_read_them(tmp_path):
    configs = [RunConfig(loss="kl", tau=2.0, standardize=True, seed=0), RunConfig(loss="dkd", dkd_beta=6.0, seed=1),
               RunConfig(loss="dist", seed=2), RunConfig(loss="ce", tau=1.0, alpha=0.0, seed=3)]
    writer = ResultsWriter(tmp_path)
    for config in configs:
        _fill(writer, config)
    writer.flush()
    rows = {r["loss"]: r for r in read_trials(tmp_path).to_pylist()}
    assert TRIALS_SCHEMA.field("standardize").type == pa.bool_()
    assert TRIALS_SCHEMA.field("dkd_warmup").type == pa.int64() and TRIALS_SCHEMA.field("dkd_beta").type == pa.float64()
    assert rows["kl"]["standardize"] is True and rows["kl"]["dkd_beta"] is None and rows["kl"]["dist_beta"] is None
    assert (rows["dkd"]["dkd_alpha"], rows["dkd"]["dkd_beta"], rows["dkd"]["dkd_warmup"]) == (1.0, 6.0, 20)
    assert rows["dkd"]["standardize"] is None and rows["dist"]["standardize"] is None
    assert (rows["dist"]["dist_beta"], rows["dist"]["dist_gamma"]) == (1.0, 1.0)
    assert all(rows["ce"][name] is None for name in LOSS_OPTIONS)
    for config in configs:  # every row reads back as its config
        row = next(r for r in rows.values() if r["seed"] == config.seed)
        assert RunConfig.from_dict({f.name: row[f.name] for f in dataclasses.fields(RunConfig)}) == config


def test_results_written_before_the_loss_options_are_read_and_extended(tmp_path):
    """A part without the loss-option columns (as every sweep before them wrote it) reads with
    nulls; its rows are the configs they were; a writer adds new rows beside them."""
    old = RunConfig(loss="kl", tau=3.0, alpha=0.5)
    before = pa.schema([f for f in TRIALS_SCHEMA if f.name not in LOSS_OPTIONS])
    row = {k: v for k, v in _row(config=old).items() if k in before.names}
    folder = tmp_path / "results" / "trials"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([row], schema=before), folder / "part-000000001-0.parquet")
    [stored] = read_trials(tmp_path).to_pylist()
    assert all(stored[name] is None for name in LOSS_OPTIONS)
    assert RunConfig.from_dict({f.name: stored[f.name] for f in dataclasses.fields(RunConfig)}) == old
    assert stored["trial_key"] == trial_key(old)
    writer = ResultsWriter(tmp_path)
    _fill(writer, RunConfig(loss="dkd", seed=1))
    writer.compact()
    frame = load_trials(tmp_path).set_index("loss")
    assert frame.loc["dkd", "dkd_beta"] == 8.0 and pd.isna(frame.loc["kl", "dkd_beta"])
    assert frame.loc["kl", "standardize"] is None or pd.isna(frame.loc["kl", "standardize"])
