"""The sweep's Parquet results: two keyed tables in ``<sweep>/results/``, written by one writer.

Layout (apart from Ray Tune's own files in the sweep folder, so that the folder holds
nothing but Parquet)::

    <storage>/<name>/results/trials/part-*.parquet   one row per trial
    <storage>/<name>/results/epochs/part-*.parquet   one row per trial and epoch

Each table folder is a Parquet data set (:mod:`kd_tune.storage.part_table`): open it with
``pyarrow.dataset.dataset(folder)``, ``pandas.read_parquet(folder)``, DuckDB's
``read_parquet('folder/*.parquet')`` or Polars' ``scan_parquet('folder/*.parquet')``;
:func:`read_trials` and :func:`read_epochs` (and ``analysis.load_trials``) read them with
one row per key guaranteed. The writer appends a part per flush and merges parts in
tiers, so its cost per trial does not grow with the sweep, and it keeps only the epochs of
running trials in memory. At the end of a sweep each table is compacted into one part.
Every page carries a checksum: a damaged part raises :class:`ResultsError` naming the
file and the command that rebuilds the results from Ray Tune's own records.

``trials``: one row per trial, keyed by ``trial_key`` (a hash of the run
config, stable across retries and resumed sweeps; a rerun replaces the row):
``sweep``, ``trial_key``, ``trial_id`` (Ray Tune's id), ``status`` (a
:class:`~kd_tune.core.status.TrialStatus` value: completed | diverged | stopped | failed),
``error``, ``diverged_epoch``; every :class:`RunConfig` field as a
column (``tau`` float64 with inf for infinity, ``milestones`` list<int64>; a loss option,
``standardize``, ``dkd_alpha``, ``dkd_beta``, ``dkd_warmup``, ``dist_beta``,
``dist_gamma``, is null where the row's loss does not read it, and in rows written
before these columns existed: :meth:`RunConfig.from_dict` reads null as unset);
``teacher_key``, ``teacher_test_acc``; the last epoch's metrics (``epoch``,
``train_loss``, ``train_acc``, ``val_acc``, ``test_acc``, ``test_logit_mse``,
``test_agreement``); ``best_val_acc``, ``best_val_epoch``, ``test_acc_at_best_val``
(selected on validation, never on test); ``train_time_s`` (sum of epoch times,
seconds); the end-of-run test measurements of :mod:`kd_tune.train.measurements` (``ece``,
``<quantity>_mean`` and ``<quantity>_median``; NaN when the trial was not measured:
diverged, stopped, failed, or written by the Parquet sink's reconcile after a killed driver);
``started_at``, ``finished_at`` (UTC); ``mlflow_run_id``.

``epochs``: one row per (trial_key, epoch): ``sweep``, ``trial_key``,
``trial_id``, ``epoch`` and the per-epoch metrics of :mod:`kd_tune.train.trainer`
(accuracies are fractions in [0, 1], times in seconds, ``teacher_forward_samples`` a
count), plus ``reported_at`` (UTC).
A resumed trial that reports an epoch again replaces that row.

Sweeps written before this layout kept ``trials.parquet`` and ``epochs.parquet`` in the
sweep folder itself; the writer moves them into the tables when it opens the sweep, and
the readers read either.

Every function here taking a sweep folder takes a local path, a URI
(``s3://bucket/prefix/NAME``) or a :class:`~kd_tune.storage.location.Storage`: one code path reads
and writes both. What they hand back as a location (:func:`results_dir`,
:attr:`ResultsWriter.sweep_dir`, :attr:`ResultsWriter.trials_dir`, ...) is a local Path
for a local folder and the URI (a str) on an object store.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Collection, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from kd_tune.core.clock import utc_now
from kd_tune.core.config import RunConfig, field_types
from kd_tune.core.status import TrialStatus
from kd_tune.storage.location import Storage, located, open_storage
from kd_tune.storage.part_table import DamagedPartError, PartTable
from kd_tune.train.measurements import SUMMARY

RESULTS_DIR = "results"
TRIALS_TABLE = "trials"
EPOCHS_TABLE = "epochs"
TRIALS_FILE = "trials.parquet"  # the layout before results/: one file per table in the sweep folder
EPOCHS_FILE = "epochs.parquet"

EPOCH_METRICS = ("train_loss", "train_acc", "val_acc", "test_acc", "test_logit_mse", "test_agreement", "lr",
                 "epoch_time_s", "teacher_forward_samples")
FINAL_METRICS = ("train_loss", "train_acc", "val_acc", "test_acc", "test_logit_mse", "test_agreement")
_TIME = pa.timestamp("us", tz="UTC")


# Parquet types of RunConfig's field types (tuple[int, ...] is the milestones list).
_ARROW_TYPES = {str: pa.string(), bool: pa.bool_(), int: pa.int64(), float: pa.float64(),
                tuple[int, ...]: pa.list_(pa.int64())}


def _config_fields() -> list[pa.Field]:
    types = field_types()
    return [pa.field(f.name, _ARROW_TYPES[types[f.name][0]]) for f in dataclasses.fields(RunConfig)]


TRIALS_SCHEMA = pa.schema(
    [
        pa.field("sweep", pa.string()),
        pa.field("trial_key", pa.string()),
        pa.field("trial_id", pa.string()),
        pa.field("status", pa.string()),
        pa.field("error", pa.string()),
        pa.field("diverged_epoch", pa.int64()),
        *_config_fields(),
        pa.field("teacher_key", pa.string()),
        pa.field("teacher_test_acc", pa.float64()),
        pa.field("epoch", pa.int64()),
        *(pa.field(m, pa.float64()) for m in FINAL_METRICS),
        pa.field("best_val_acc", pa.float64()),
        pa.field("best_val_epoch", pa.int64()),
        pa.field("test_acc_at_best_val", pa.float64()),
        pa.field("train_time_s", pa.float64()),
        *(pa.field(m, pa.float64()) for m in SUMMARY),
        pa.field("started_at", _TIME),
        pa.field("finished_at", _TIME),
        pa.field("mlflow_run_id", pa.string()),
    ]
)

EPOCHS_SCHEMA = pa.schema(
    [
        pa.field("sweep", pa.string()),
        pa.field("trial_key", pa.string()),
        pa.field("trial_id", pa.string()),
        pa.field("epoch", pa.int64()),
        *(pa.field(m, pa.float64()) for m in EPOCH_METRICS),
        pa.field("reported_at", _TIME),
    ]
)


def epoch_row(sweep: str, trial_key: str, trial_id: str, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The epochs-table row of one reported epoch."""
    row = {"sweep": sweep, "trial_key": trial_key, "trial_id": trial_id, "epoch": int(metrics["epoch"])}
    row.update({m: float(metrics.get(m, math.nan)) for m in EPOCH_METRICS})
    row["reported_at"] = utc_now()
    return row


def trial_row(
    *,
    sweep: str,
    trial_key: str,
    trial_id: str,
    config: RunConfig,
    status: TrialStatus,
    history: list[Mapping[str, Any]],
    teacher_key: str | None,
    teacher_test_acc: float | None,
    started_at: datetime | None,
    error: str | None = None,
    mlflow_run_id: str | None = None,
    measured: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The trials-table row of a finished trial from its epoch history (oldest first).

    ``diverged_epoch`` is the last epoch of a ``diverged`` trial (the trainer stops there).
    ``measured`` is the summary of the trial's end measurements (NaN columns without).
    """
    status = TrialStatus(status)
    last = history[-1] if history else {}
    row: dict[str, Any] = {
        "sweep": sweep, "trial_key": trial_key, "trial_id": trial_id, "status": status.value, "error": error,
        "diverged_epoch": int(last["epoch"]) if status is TrialStatus.DIVERGED and last else None,
    }
    row.update(config.table_values())  # a loss option the loss does not read: null
    row.update(teacher_key=teacher_key, teacher_test_acc=teacher_test_acc)
    row["epoch"] = int(last["epoch"]) if last else None
    row.update({m: float(last.get(m, math.nan)) if last else None for m in FINAL_METRICS})
    with_val = [h for h in history if math.isfinite(float(h.get("val_acc", math.nan)))]
    # max() keeps the first of equal values: the earliest epoch reaching the best accuracy.
    best = max(with_val, key=lambda h: float(h["val_acc"])) if with_val else None
    row["best_val_acc"] = float(best["val_acc"]) if best else None
    row["best_val_epoch"] = int(best["epoch"]) if best else None
    row["test_acc_at_best_val"] = float(best["test_acc"]) if best else None
    row["train_time_s"] = float(sum(float(h.get("epoch_time_s", 0.0)) for h in history))
    row.update({m: float((measured or {}).get(m, math.nan)) for m in SUMMARY})
    row.update(started_at=started_at, finished_at=utc_now(), mlflow_run_id=mlflow_run_id)
    return row


class ResultsError(ValueError):
    """A sweep's results cannot be read: a damaged Parquet file (named in the message)."""


def rebuild_command(sweep_dir: str | Path | Storage) -> str:
    """The command that rebuilds a sweep's results from Ray Tune's own trial records."""
    return f"python -m kd_tune.recover rebuild {located(open_storage(sweep_dir))}"


@contextlib.contextmanager
def _named_damage(sweep: Storage) -> Iterator[None]:
    try:
        yield
    except DamagedPartError as err:
        raise ResultsError(f"the results of sweep {sweep.name!r} cannot be read: {err}; rebuild them from "
                           f"Ray Tune's records with `{rebuild_command(sweep)}`") from None


def results_dir(sweep_dir: str | Path | Storage) -> Path | str:
    """The folder of a sweep's result tables: ``<sweep_dir>/results`` (a local Path, or the
    URI on an object store)."""
    return located(open_storage(sweep_dir) / RESULTS_DIR)


def trials_table(sweep_dir: str | Path | Storage) -> PartTable:
    return PartTable(open_storage(sweep_dir) / RESULTS_DIR / TRIALS_TABLE, TRIALS_SCHEMA, ("trial_key",))


def epochs_table(sweep_dir: str | Path | Storage) -> PartTable:
    return PartTable(open_storage(sweep_dir) / RESULTS_DIR / EPOCHS_TABLE, EPOCHS_SCHEMA, ("trial_key", "epoch"))


def has_results(sweep_dir: str | Path | Storage) -> bool:
    """Whether ``sweep_dir`` holds a trials table (or a ``trials.parquet`` of the older layout)."""
    sweep = open_storage(sweep_dir)
    return bool(trials_table(sweep).parts()) or sweep.is_file(TRIALS_FILE)


def read_trials(sweep_dir: str | Path | Storage, trial_keys: Collection[str] | None = None) -> pa.Table:
    """The trial rows of a sweep (of ``trial_keys`` only, if given), one per trial.

    Raises :class:`ResultsError` for a damaged file.
    """
    sweep = open_storage(sweep_dir)
    return _read(sweep, trials_table(sweep), TRIALS_FILE, trial_keys)


def read_epochs(sweep_dir: str | Path | Storage, trial_keys: Collection[str] | None = None) -> pa.Table:
    """The epoch rows of a sweep (of ``trial_keys`` only, if given), one per trial and epoch,
    in no particular order. Raises :class:`ResultsError` for a damaged file."""
    sweep = open_storage(sweep_dir)
    return _read(sweep, epochs_table(sweep), EPOCHS_FILE, trial_keys)


def _read(sweep: Storage, table: PartTable, legacy: str, trial_keys: Collection[str] | None) -> pa.Table:
    where = None if trial_keys is None else {"trial_key": trial_keys}
    with _named_damage(sweep):
        if not table.parts() and sweep.is_file(legacy):
            return table.read_file(sweep / legacy, where=where)
        return table.read(where=where)


class ResultsWriter:
    """The one writer of a sweep's two tables (layout in the module docstring).

    Opening it checks every stored page (a damaged file raises :class:`ResultsError`),
    keeps one row per key, moves files of the older layout into the tables, and holds in
    memory only the status of each stored trial and its last stored epoch. Rows are keyed
    (trials by ``trial_key``, epochs by ``(trial_key, epoch)``) and a newer row replaces
    an older one, stored or not, which gives exactly one final row per trial after retries
    and resumes. Added rows reach disk at :meth:`flush`.

    ``sweep_dir`` is a local path, a URI or a :class:`~kd_tune.storage.location.Storage`;
    :attr:`storage` is its Storage, :attr:`sweep_dir` (and :attr:`trials_dir`,
    :attr:`epochs_dir`) a local Path, or the URI (a str) on an object store.
    """

    def __init__(self, sweep_dir: str | Path | Storage):
        self.storage = open_storage(sweep_dir)
        self.sweep_dir = located(self.storage)
        self._trials = trials_table(self.storage)
        self._epochs = epochs_table(self.storage)
        with _named_damage(self.storage):
            for table, legacy in ((self._trials, TRIALS_FILE), (self._epochs, EPOCHS_FILE)):
                _adopt(self.storage, legacy, table)
            trials = self._trials.check(["status"])
            epochs = self._epochs.check()
        self._status = {k: TrialStatus(s) for k, s in zip(trials["trial_key"].to_pylist(),
                                                          trials["status"].to_pylist())}
        self._stored_trials = set(self._status)
        last = epochs.group_by("trial_key").aggregate([("epoch", "max")])
        self._stored_epoch: dict[str, int] = dict(zip(last["trial_key"].to_pylist(), last["epoch_max"].to_pylist()))
        self._live: dict[str, dict[int, dict[str, Any]]] = {}  # epochs of the trials running here
        self._new_epochs: dict[tuple[str, int], dict[str, Any]] = {}
        self._new_trials: dict[str, dict[str, Any]] = {}

    @property
    def trials_dir(self) -> Path | str:
        return self._trials.folder

    @property
    def epochs_dir(self) -> Path | str:
        return self._epochs.folder

    def statuses(self) -> dict[str, TrialStatus]:
        """Trial key -> status of every final row, stored or added."""
        return dict(self._status)

    def add_epoch(self, row: Mapping[str, Any]) -> None:
        key, epoch = row["trial_key"], int(row["epoch"])
        self._history(key)[epoch] = self._new_epochs[(key, epoch)] = dict(row)

    def history(self, trial_key: str) -> list[dict[str, Any]]:
        """The epoch rows of one trial, oldest first (stored ones included)."""
        rows = self._live.get(trial_key)
        if rows is None:
            rows = self._stored_history(trial_key)
        return [rows[e] for e in sorted(rows)]

    def finish_trial(self, row: Mapping[str, Any]) -> None:
        key = row["trial_key"]
        self._new_trials[key] = dict(row)
        self._status[key] = TrialStatus(row["status"])
        self._live.pop(key, None)  # a trial ends once per invocation: its epochs are no longer needed

    def flush(self) -> None:
        """Append the rows added since the last flush (epochs first, then the trial rows
        that summarise them); rows replacing stored ones remove those."""
        if self._new_epochs:
            replaced = [k for k in self._new_epochs if k[1] <= self._stored_epoch.get(k[0], 0)]
            self._epochs.append(list(self._new_epochs.values()), replaces=replaced)
            for key, epoch in self._new_epochs:
                self._stored_epoch[key] = max(epoch, self._stored_epoch.get(key, 0))
            self._new_epochs = {}
        if self._new_trials:
            replaced = [(k,) for k in self._new_trials if k in self._stored_trials]
            self._trials.append(list(self._new_trials.values()), replaces=replaced)
            self._stored_trials.update(self._new_trials)
            self._new_trials = {}

    def compact(self) -> None:
        """Flush, then merge each table into one part (at the end of a sweep)."""
        self.flush()
        self._epochs.compact()
        self._trials.compact()

    def read_trials(self, trial_keys: Collection[str] | None = None) -> list[dict[str, Any]]:
        """The stored trial rows (of ``trial_keys`` only, if given), after a flush."""
        self.flush()
        return read_trials(self.storage, trial_keys).to_pylist()

    def update_trials(self, changes: Mapping[str, Mapping[str, Any]]) -> None:
        """Change columns of stored trial rows: trial key -> {column: new value}."""
        rows = self.read_trials(changes)
        for row in rows:
            row.update(changes[row["trial_key"]])
        self._trials.append(rows, replaces=[(row["trial_key"],) for row in rows])

    def record_run_ids(self, run_ids: Mapping[str, str]) -> int:
        """Set ``mlflow_run_id`` of stored rows to ``run_ids`` (trial key -> MLflow run id)
        where it differs: a run made after its row was written (tracking was behind) or
        made again (a refilled store). Returns how many rows changed."""
        changes = {r["trial_key"]: {"mlflow_run_id": run_ids[r["trial_key"]]} for r in self.read_trials(run_ids)
                   if r["mlflow_run_id"] != run_ids[r["trial_key"]]}
        if changes:
            self.update_trials(changes)
        return len(changes)

    def _history(self, trial_key: str) -> dict[int, dict[str, Any]]:
        rows = self._live.get(trial_key)
        if rows is None:
            rows = self._live[trial_key] = self._stored_history(trial_key)
        return rows

    def _stored_history(self, trial_key: str) -> dict[int, dict[str, Any]]:
        rows = {e: r for (k, e), r in self._new_epochs.items() if k == trial_key}
        if trial_key in self._stored_epoch:
            with _named_damage(self.storage):
                stored = self._epochs.read(where={"trial_key": [trial_key]}).to_pylist()
            rows = {**{r["epoch"]: r for r in stored}, **rows}
        return rows


def _adopt(sweep: Storage, legacy: str, table: PartTable) -> None:
    """Move a table file of the older layout (``<sweep>/trials.parquet``) into ``table``: its
    rows are appended as a part, then the file is deleted (no rename, also on an object store)."""
    if sweep.is_file(legacy):
        table.append(table.read_file(sweep / legacy))
        sweep.delete(legacy)
