"""The results side on an object store: the same writers and readers on a real S3-compatible
server (moto, authentication on) as on a local folder, compared row for row with a local
copy written from the same rows."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from recorded import fake_measurements, recorded_search

from analysis.figures import write_figures
from analysis.render import render, write_tables
from analysis.results_io import find_sweeps, load_epochs, load_features, load_samples, load_teachers, load_trials
from analysis.study import study_storage, write_study_views
from analysis.tables import build_tables
from kd_tune.cli.recover import _move, _set_aside, rebuild, tune_records
from kd_tune.core.config import RunConfig
from kd_tune.core.identity import teacher_key, trial_key
from kd_tune.core.status import STATUS_KEY, TrialStatus
from kd_tune.plan.planner import plan_trial
from kd_tune.plan.search_space import expand
from kd_tune.results.samples import write_parts
from kd_tune.results.search_record import SearchRecord
from kd_tune.results.teacher_table import read_teachers, write_teachers
from kd_tune.results.trial_tables import (
    TRIALS_FILE,
    TRIALS_SCHEMA,
    ResultsError,
    ResultsWriter,
    epoch_row,
    epochs_table,
    read_epochs,
    read_trials,
    results_dir,
    trial_row,
    trials_table,
)
from kd_tune.storage.location import open_storage
from kd_tune.storage.part_table import DamagedPartError

REPO = Path(__file__).resolve().parents[2]
SPACE = [{"loss": ["kl"], "tau": [1.0, 4.0, math.inf], "alpha": [0.5, 1.0]}, {"loss": ["mse"], "alpha": [1.0]},
         {"loss": ["ce"]}]


def _plain(value):
    """``value`` with NaN spelled out, so that rows with NaN compare equal."""
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def sorted_rows(table: pa.Table | list[dict], *key: str) -> list[dict]:
    rows = table.to_pylist() if isinstance(table, pa.Table) else table
    return [_plain(r) for r in sorted(rows, key=lambda r: tuple(r[k] for k in key))]


def make_sweep(name: str = "grid", seeds: int = 2) -> list[tuple[str, dict, list[dict], object]]:
    """Rows of a small sweep, made once: (trial key, trial row, epoch rows, end measurements)."""
    base = RunConfig(epochs=3)
    rng = np.random.default_rng(7)
    teacher = teacher_key(base)
    made = []
    for i, config in enumerate(expand(base, SPACE, seeds=range(seeds))):
        key = trial_key(config)
        history = [epoch_row(name, key, f"t{i}", {"epoch": e, "train_loss": 1 / e, "train_acc": 0.2 * e,
                                                  "val_acc": 0.2 * e + 0.1, "test_acc": float(rng.random()),
                                                  "epoch_time_s": 0.1}) for e in (1, 2, 3)]
        measured = fake_measurements(i, 4).of_classes([0, 1, 2])
        row = trial_row(sweep=name, trial_key=key, trial_id=f"t{i}", config=config, status="completed",
                        history=history, teacher_key=teacher, teacher_test_acc=0.9, started_at=None,
                        measured=measured.summary)
        made.append((key, row, history, measured))
    return made


def write_sweep(folder, made) -> None:
    """The rows of :func:`make_sweep` through the real writers: a flush per trial, then compacted."""
    writer = ResultsWriter(folder)
    for key, row, history, measured in made:
        for epoch in history:
            writer.add_epoch(epoch)
        writer.finish_trial(row)
        writer.flush()
        write_parts(folder, "trial", key, measured)
    writer.compact()
    teacher = made[0][1]["teacher_key"]
    write_parts(folder, "teacher", teacher, fake_measurements(99, 6, teacher=True).of_classes([0, 1, 2]))
    write_teachers(folder, [{"sweep": "grid", "teacher_key": teacher, "spec": "cnn-32", "kind": "ce",
                             "architecture": "cnn-32", "epochs_trained": 3, "train_acc": 0.99, "test_acc": 0.9,
                             "seconds": 1.5}])


@pytest.fixture
def bucket(s3_env):
    return open_storage(s3_env.uri())


def test_a_writer_on_s3_keeps_one_row_per_key_as_a_local_writer_does(bucket, s3_env, tmp_path):
    made = make_sweep(seeds=4)  # 32 trials: a flush each, tiered merges on the way
    again = make_sweep(seeds=1)  # seed 0 run again: its epochs and trial rows replace the stored ones
    local, remote = tmp_path / "grid", bucket / "grid"
    for target in (local, remote):
        writer = ResultsWriter(target)
        for _, row, history, _ in made + again:
            for epoch in history:
                writer.add_epoch(epoch)
            writer.finish_trial(row)
            writer.flush()
        if target is remote:
            parts = len(epochs_table(remote).parts())
            assert 1 < parts < len(made + again)  # merged in tiers as it went, on the store too
        writer.record_run_ids({made[0][0]: "run-x"})
        writer.compact()
    assert len(epochs_table(remote).parts()) == 1 and len(trials_table(remote).parts()) == 1
    # pyarrow keeps an emptied folder as a marker object ("results/epochs/"): not a file
    keys = [k for k in s3_env.keys(f"{bucket.uri.split('/', 3)[3]}/grid") if not k.endswith("/")]
    assert keys and all(k.startswith(("results/trials/part-", "results/epochs/part-")) and k.endswith(".parquet")
                        for k in keys)  # nothing but whole parts, no temporary objects
    for read, key in ((read_trials, ("trial_key",)), (read_epochs, ("trial_key", "epoch"))):
        remote_rows, local_rows = sorted_rows(read(remote), *key), sorted_rows(read(local), *key)
        assert remote_rows == local_rows
        assert len({tuple(r[k] for k in key) for r in remote_rows}) == len(remote_rows)  # one row per key
    assert read_trials(remote).num_rows == len(made) and read_epochs(remote).num_rows == 3 * len(made)
    again_keys = {k for k, *_ in again}
    stored = {r["trial_key"]: r for r in read_trials(remote).to_pylist()}
    assert all(stored[k]["finished_at"] == row["finished_at"] for k, row, *_ in again)  # the rerun's row won
    assert stored[made[0][0]]["mlflow_run_id"] == "run-x"
    assert {r["trial_id"] for r in read_epochs(remote, again_keys).to_pylist()} == {row["trial_id"]
                                                                                   for _, row, *_ in again}
    reopened = ResultsWriter(bucket.uri_of("grid"))  # by URI: checks every page in the bucket
    assert reopened.statuses() == ResultsWriter(local).statuses()
    assert reopened.sweep_dir == bucket.uri_of("grid") and results_dir(remote) == bucket.uri_of("grid/results")
    assert trials_table(remote).folder == bucket.uri_of("grid/results/trials")
    assert isinstance(trials_table(local).folder, Path) and results_dir(local) == local / "results"


def test_a_damaged_part_in_the_bucket_is_named_by_its_uri(bucket, s3_env):
    made = make_sweep(seeds=1)
    writer = ResultsWriter(bucket / "sweep")
    for _, row, history, _ in made[:2]:
        for epoch in history:
            writer.add_epoch(epoch)
        writer.finish_trial(row)
    writer.flush()
    [part] = epochs_table(bucket / "sweep").parts()
    assert part.path == bucket.uri_of(f"sweep/results/epochs/{part.name}") and part.path.startswith("s3://")
    key = bucket.uri.split("/", 3)[3] + f"/sweep/results/epochs/{part.name}"
    client = s3_env.client()
    data = client.get_object(Bucket=s3_env.bucket, Key=key)["Body"].read()
    client.put_object(Bucket=s3_env.bucket, Key=key, Body=data[:200])  # a truncated part
    with pytest.raises(DamagedPartError) as err:
        epochs_table(bucket / "sweep").read()
    assert err.value.path == part.path
    for read in (lambda: ResultsWriter(bucket / "sweep"), lambda: read_epochs(bucket / "sweep"),
                 lambda: load_epochs(bucket.uri_of("sweep"))):
        with pytest.raises(ResultsError) as err:
            read()
        message = str(err.value)
        assert f"{part.path} is damaged" in message
        assert f"python -m kd_tune.recover rebuild {bucket.uri_of('sweep')}" in message
    assert read_trials(bucket / "sweep").num_rows == 2  # the other table is fine


def test_a_trials_file_of_the_older_layout_in_the_bucket_is_read_and_adopted(bucket, tmp_path):
    made = make_sweep(seeds=1)
    rows = [row for _, row, *_ in made]
    pq.write_table(pa.Table.from_pylist(rows, schema=TRIALS_SCHEMA), tmp_path / TRIALS_FILE)
    bucket.upload(tmp_path / TRIALS_FILE, f"old/{TRIALS_FILE}")
    assert find_sweeps(bucket.uri) == [bucket.uri_of("old")]  # a folder of sweeps, by URI
    assert sorted_rows(read_trials(bucket / "old"), "trial_key") == sorted_rows(rows, "trial_key")
    ResultsWriter(bucket / "old")
    assert not bucket.exists(f"old/{TRIALS_FILE}") and len(trials_table(bucket / "old").parts()) == 1
    assert sorted_rows(read_trials(bucket / "old"), "trial_key") == sorted_rows(rows, "trial_key")


def test_samples_teachers_and_search_records_round_trip_in_the_bucket(bucket, tmp_path):
    made = make_sweep(seeds=1)
    local, remote = tmp_path / "grid", bucket / "grid"
    for target in (local, remote):
        write_sweep(target, made)
    key = made[0][0]
    samples, features = write_parts(remote, "trial", key, made[0][3])  # written again: replaced whole
    assert samples == remote.uri_of(f"samples.parquet/part-trial-{key}.parquet")
    assert features == remote.uri_of(f"features.parquet/part-trial-{key}.parquet")
    for load in (load_samples, load_features, load_teachers, load_trials, load_epochs):
        got, want = load(remote.uri), load(local)
        assert len(got) > 0
        order = [c for c in ("role", "key", "teacher_key", "trial_key", "index", "epoch") if c in got.columns]
        got = got.sort_values(order, ignore_index=True)
        want = want.sort_values(order, ignore_index=True)
        assert got.drop(columns="features", errors="ignore").equals(want.drop(columns="features", errors="ignore"))
        if "features" in got:
            assert [list(f) for f in got["features"]] == [list(f) for f in want["features"]]
    assert len(load_samples(remote)) == len(made) * len(made[0][3].labels) + 60
    assert read_teachers(remote) == read_teachers(local) and read_teachers(bucket / "nothing") == []
    path = write_teachers(remote, [dict(read_teachers(remote)[0], test_acc=0.5)])  # a row of a key replaces it
    assert path == remote.uri_of("teachers.parquet") and [r["test_acc"] for r in read_teachers(remote)] == [0.5]
    assert load_teachers(remote)["epochs_trained"].dtype.name == "Int64"
    record, _ = recorded_search(tmp_path / "s")
    assert record.write(bucket / "s") == bucket.uri_of("s/search.json")
    assert SearchRecord.read(bucket.uri_of("s")) == record and SearchRecord.read(remote) is None
    assert json.loads(bucket.read_text("s/search.json")) == json.loads((tmp_path / "s" / "search.json").read_text())


def test_the_analysis_cli_prints_the_same_table_from_the_bucket(bucket, s3_env, tmp_path):
    made = make_sweep(seeds=2)
    local = tmp_path / "grid"
    write_sweep(local, made)
    for entry in local.rglob("*"):  # the local copy, uploaded as it is
        if entry.is_file():
            bucket.upload(entry, f"grid/{entry.relative_to(local).as_posix()}")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "analysis", *map(str, args)], cwd=REPO, env=s3_env.env(),
                              capture_output=True, text=True, timeout=60)

    want = cli(local, "--table", "tau_alpha", "--format", "csv")
    assert want.returncode == 0, want.stderr
    assert want.stdout.count("\n") > 1
    for where in (bucket.uri_of("grid"), bucket.uri):  # the sweep, and the folder of sweeps
        got = cli(where, "--table", "tau_alpha", "--format", "csv")
        assert got.returncode == 0, got.stderr
        assert got.stdout == want.stdout
    out = cli(bucket.uri_of("grid/results"), "--table", "tau_alpha", "--format", "md", "--out", tmp_path / "t.md")
    assert out.returncode == 0, out.stderr
    tables = build_tables(load_trials(local), "tau_alpha", teachers=load_teachers(local))
    assert (tmp_path / "t.md").read_text() == render(tables, "md")
    missing = cli(bucket.uri_of("nothing-here"), "--table", "tau_alpha")
    assert missing.returncode == 2 and "no such file or directory" in missing.stderr


def test_figures_tables_and_the_study_are_written_into_the_bucket(bucket, s3_env, tmp_path):
    made = make_sweep(seeds=2)
    local, remote = tmp_path / "grid", bucket / "grid"
    for target in (local, remote):
        write_sweep(target, made)
    names = ("heatmap", "curves", "logit_distance")
    got = write_figures(remote, remote / "figures", names)
    want = write_figures(local, local / "figures", names)
    assert want == [local / "figures" / f"{n}.{s}" for n in names for s in ("png", "pdf")]
    assert got == [remote.uri_of(f"figures/{n}.{s}") for n in names for s in ("png", "pdf")]
    assert remote.read_bytes("figures/heatmap.png")[:4] == b"\x89PNG"
    assert remote.read_bytes("figures/curves.pdf")[:4] == b"%PDF"
    tables = build_tables(load_trials(remote), "tau_alpha")
    files = write_tables(remote / "tables", "tau_alpha", tables)
    assert files == [remote.uri_of("tables/tau_alpha.csv"), remote.uri_of("tables/tau_alpha.md")]
    local_files = write_tables(local / "tables", "tau_alpha", tables)
    assert local_files == [local / "tables" / "tau_alpha.csv", local / "tables" / "tau_alpha.md"]
    assert remote.read_text("tables/tau_alpha.csv") == local_files[0].read_text()

    recorded_search(bucket / "s")  # a searched sweep written into the bucket through the Parquet sink
    paths = write_study_views(bucket / "s")
    rels = {p.removeprefix(bucket.uri_of("s") + "/") for p in paths}
    assert {"tables/importances.csv", "tables/history.md", "figures/optimization_history.png"} <= rels
    assert bucket.read_bytes("s/figures/optimization_history.png")[:4] == b"\x89PNG"
    assert study_storage(bucket / "s") == bucket.uri_of("optuna.db") and bucket.is_file("optuna.db")
    import optuna

    db = bucket.download("optuna.db", tmp_path / "optuna.db")
    assert optuna.get_all_study_names(f"sqlite:///{db}") == ["s"]
    assert len(optuna.load_study(study_name="s", storage=f"sqlite:///{db}").trials) == 5


def _tune_folder(storage, name: str, trial, epochs: int, status: str, error: str | None = None,
                 gathered: bool = False) -> list[dict]:
    """A trial folder as Ray Tune writes it: ``result.json`` (a line per report, the last cut short);
    ``gathered``: one report carrying every epoch (``kd_epochs``), as a trial's reports are now."""
    reports = [{"epoch": e, "trial_id": name, "timestamp": 1_700_000_000 + e, STATUS_KEY: "running" if e < epochs
                else status, "train_loss": 1 / e, "train_acc": 0.3 * e, "val_acc": 0.25 * e, "test_acc": 0.2 * e,
                "epoch_time_s": 1.0, "config": {"trial": trial.to_dict()}} for e in range(1, epochs + 1)]
    if gathered:
        reports = [{**reports[-1], "kd_epochs": [{k: v for k, v in r.items() if k not in ("config", "trial_id",
                                                                                           "timestamp", STATUS_KEY)}
                                                 for r in reports]}]
    text = "".join(json.dumps(r) + "\n" for r in reports) + '{"epoch": 9, "cut'
    storage.write_text(f"trial_{name}/result.json", text)
    if error is not None:
        storage.write_text(f"trial_{name}/error.txt", f"Traceback:\n  ...\n{error}\n")
    return reports


def test_recover_reads_tune_records_from_the_bucket_and_rebuilds_there(bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the tracking store below does not answer
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    done = plan_trial(RunConfig(loss="ce", epochs=2, seed=1))
    gathered = plan_trial(RunConfig(loss="ce", epochs=3, seed=4))
    failed = plan_trial(RunConfig(loss="ce", epochs=3, seed=2))
    running = plan_trial(RunConfig(loss="ce", epochs=4, seed=3))
    sweep = bucket / "sweep"
    for storage in (sweep, open_storage(tmp_path / "sweep")):
        _tune_folder(storage, "a", done, 2, "completed")
        _tune_folder(storage, "b", failed, 1, "running", error="RuntimeError: out of memory")
        _tune_folder(storage, "c", running, 2, "running")
        _tune_folder(storage, "e", gathered, 3, "completed", gathered=True)
        storage.write_text("trial_d/params.json", "{}")  # a trial folder without results yet
        storage.write_text("experiment_state-x.json", "{}")
    records = list(tune_records(sweep.uri))
    assert [r.trial.key for r in records] == [done.key, failed.key, running.key, gathered.key]
    assert [len(r.reports) for r in records] == [2, 1, 2, 3]  # a report of 3 gathered epochs: 3 epochs
    assert [r.error for r in records] == [None, "RuntimeError: out of memory", None, None]
    assert [r.final_status() for r in records] == [TrialStatus.COMPLETED, TrialStatus.FAILED, None,
                                                   TrialStatus.COMPLETED]
    local = list(tune_records(tmp_path / "sweep"))
    assert [(r.trial, r.trial_id, r.reports, r.error) for r in local] == \
        [(r.trial, r.trial_id, r.reports, r.error) for r in records]

    ResultsWriter(sweep).flush()
    trials_table(sweep).append([dict(made_row, sweep="sweep") for _, made_row, *_ in make_sweep(seeds=1)[:1]])
    rebuild(sweep, "sweep", tracking_uri="http://127.0.0.1:9")
    rows = {r["trial_key"]: r for r in read_trials(sweep).to_pylist()}
    assert set(rows) == {done.key, failed.key, gathered.key}  # unfinished: no row; the old row is set aside
    assert rows[done.key]["status"] == "completed" and rows[failed.key]["status"] == "failed"
    assert rows[failed.key]["error"] == "RuntimeError: out of memory"
    assert rows[done.key]["finished_at"].timestamp() == 1_700_000_002
    assert sorted((r["trial_key"], r["epoch"]) for r in read_epochs(sweep).to_pylist()) == sorted(
        [(done.key, 1), (done.key, 2), (failed.key, 1), (running.key, 1), (running.key, 2), (gathered.key, 1),
         (gathered.key, 2), (gathered.key, 3)])
    assert rows[gathered.key]["val_acc"] == 0.75 and rows[gathered.key]["epoch"] == 3
    names = [e.name for e in sweep.list()]
    assert ".results.rebuilding" not in names
    [aside] = [n for n in names if n.startswith(".results.damaged-")]
    assert read_trials(sweep / aside).num_rows == 1  # the old results, kept beside the new ones
    assert len(trials_table(sweep).parts()) == 1 and len(epochs_table(sweep).parts()) == 1

    sweep.write_text("x/a/b.txt", "b")
    sweep.write_text("x/c.txt", "c")
    _move(sweep, "x", "y/z")  # no rename on the store: every file copied, then deleted
    assert [e.path for e in sweep.list("y", recursive=True) if not e.is_dir] == ["z/a/b.txt", "z/c.txt"]
    assert not sweep.exists("x") and sweep.read_text("y/z/a/b.txt") == "b"
    assert _set_aside(bucket / "empty") is None
