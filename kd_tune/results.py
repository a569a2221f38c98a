"""The sweep's Parquet results: ``epochs.parquet`` and ``trials.parquet``, written by one writer.

Both files live in the sweep folder ``<storage>/<name>/`` and are rewritten atomically
(temporary file + rename), so a reader never sees half a file and a killed driver
leaves the last complete version.

``trials.parquet``: one row per trial, keyed by ``trial_key`` (a hash of the run
config, stable across retries and resumed sweeps; a rerun replaces the row):
``sweep``, ``trial_key``, ``trial_id`` (Ray Tune's id), ``status`` (a
:class:`~kd_tune.status.TrialStatus` value: completed | diverged | stopped | failed),
``error``, ``diverged_epoch``; every :class:`RunConfig` field as a
column (``tau`` float64 with inf for infinity, ``milestones`` list<int64>);
``teacher_key``, ``teacher_test_acc``; the last epoch's metrics (``epoch``,
``train_loss``, ``train_acc``, ``val_acc``, ``test_acc``, ``test_logit_mse``,
``test_agreement``); ``best_val_acc``, ``best_val_epoch``, ``test_acc_at_best_val``
(selected on validation, never on test); ``train_time_s`` (sum of epoch times,
seconds); the end-of-run test measurements of :mod:`kd_tune.measurements` (``ece``,
``<quantity>_mean`` and ``<quantity>_median``; NaN when the trial was not measured:
diverged, stopped, failed, or written by the Parquet sink's reconcile after a killed driver);
``started_at``, ``finished_at`` (UTC); ``mlflow_run_id``.

``epochs.parquet``: one row per (trial_key, epoch): ``sweep``, ``trial_key``,
``trial_id``, ``epoch`` and the per-epoch metrics of :mod:`kd_tune.trainer`
(accuracies are fractions in [0, 1], times in seconds, ``teacher_forward_samples`` a
count), plus ``reported_at`` (UTC).
A resumed trial that reports an epoch again replaces that row.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from kd_tune.atomic import atomic_write
from kd_tune.config import RunConfig, field_types
from kd_tune.measurements import SUMMARY
from kd_tune.status import TrialStatus

TRIALS_FILE = "trials.parquet"
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


def utc_now() -> datetime:
    return datetime.now(UTC)


def epoch_row(sweep: str, trial_key: str, trial_id: str, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The ``epochs.parquet`` row of one reported epoch."""
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
    """The ``trials.parquet`` row of a finished trial from its epoch history (oldest first).

    ``diverged_epoch`` is the last epoch of a ``diverged`` trial (the trainer stops there).
    ``measured`` is the summary of the trial's end measurements (NaN columns without).
    """
    status = TrialStatus(status)
    last = history[-1] if history else {}
    row: dict[str, Any] = {
        "sweep": sweep, "trial_key": trial_key, "trial_id": trial_id, "status": status.value, "error": error,
        "diverged_epoch": int(last["epoch"]) if status is TrialStatus.DIVERGED and last else None,
    }
    row.update(config.to_dict())
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


class ResultsWriter:
    """Holds a sweep's rows and rewrites its two Parquet files; the driver's only writer.

    Rows already on disk are loaded first, so a resumed sweep keeps them; rows are
    keyed (trials by ``trial_key``, epochs by ``(trial_key, epoch)``) and a newer row
    replaces an older one, which gives exactly one final row per trial after retries.
    """

    def __init__(self, sweep_dir: str | Path):
        self.sweep_dir = Path(sweep_dir)
        self.trials: dict[str, dict[str, Any]] = {r["trial_key"]: r for r in _read(self.trials_path)}
        self.epochs: dict[tuple[str, int], dict[str, Any]] = {
            (r["trial_key"], r["epoch"]): r for r in _read(self.epochs_path)
        }
        self._dirty = False

    @property
    def trials_path(self) -> Path:
        return self.sweep_dir / TRIALS_FILE

    @property
    def epochs_path(self) -> Path:
        return self.sweep_dir / EPOCHS_FILE

    def add_epoch(self, row: Mapping[str, Any]) -> None:
        self.epochs[(row["trial_key"], row["epoch"])] = dict(row)
        self._dirty = True

    def history(self, trial_key: str) -> list[dict[str, Any]]:
        """The epoch rows of one trial, oldest first."""
        return [r for (key, _), r in sorted(self.epochs.items(), key=lambda kv: kv[0]) if key == trial_key]

    def finish_trial(self, row: Mapping[str, Any]) -> None:
        self.trials[row["trial_key"]] = dict(row)
        self._dirty = True

    def flush(self) -> None:
        """Write both files if anything changed since the last flush."""
        if not self._dirty:
            return
        epochs = sorted(self.epochs.values(), key=lambda r: (r["trial_key"], r["epoch"]))
        _write(self.epochs_path, epochs, EPOCHS_SCHEMA)
        _write(self.trials_path, list(self.trials.values()), TRIALS_SCHEMA)
        self._dirty = False


def _read(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return pq.read_table(path).to_pylist()


def _write(path: Path, rows: list[dict[str, Any]], schema: pa.Schema) -> None:
    table = pa.Table.from_pylist(rows, schema=schema)
    with atomic_write(path) as handle:
        pq.write_table(table, handle)
