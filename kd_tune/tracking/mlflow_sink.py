"""The MLflow sink: runs made for comparing trials, under this invocation's parent run.

It never calls MLflow in a Tune callback: every write (a :mod:`~kd_tune.tracking.writes`
dataclass) goes to the sweep's :class:`~kd_tune.tracking.queue.TrackingQueue` (a durable
outbox sent by one thread),
so a slow or absent tracking server costs the sweep nothing (layout of the runs in
:mod:`kd_tune.tracking.tracker`). The driver opens the parent run before the trials and ends it
after them, through the same queue. What the runs hold:

- **Child run per trial** (named by its label, e.g. ``kl tau=4 alpha=0.9 seed=1``):
  params = the run config (``threads``: the CPU threads it ran at); per-epoch metrics
  (step = epoch); ``inv_tau`` = 1/tau for KL trials (0 for tau = inf, which a chart
  cannot place; absent for MSE and CE), so the chart view can plot against
  temperature; at the end the final and selected numbers of its trials-table row
  (``best_val_acc``, ``best_val_epoch``, ``test_acc_at_best_val``, ``teacher_test_acc``,
  ``train_time_s``, ``ece`` and the ``<quantity>_mean``/``_median`` summaries;
  ``test_acc`` is the last epoch's); the data set it trained on as an input (name, a
  digest of the data settings and the
  training labels' hash); with ``--log-models`` its final weights as ``model/student.pt``.
- **Teacher run** per teacher node (tag ``kd_tune.role=teacher``; every member of an
  ensemble, every step of a chain and the composite teacher itself): the run that
  trained it with ``teacher_kind`` and ``teacher_spec`` as params, per-epoch curves,
  final metrics (``train_acc``, ``test_acc``, ``train_time_s``) and end measurements,
  its data set.
- **Parent run** at the end: the trials as an MLflow table (``trials.json``), the best
  setting by mean validation accuracy over seeds (params ``best.<field>``, metrics
  ``best.val_acc`` and more), and the sweep's tables and figures as artifacts.

Parquet is the record and MLflow a view of it: :meth:`MlflowSink.mirror` makes the view
whole again from the record (runs missing from a deleted or emptied store are refilled,
runs left RUNNING by a killed driver are ended).
"""
from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from kd_tune.core.config import RunConfig
from kd_tune.core.identity import config_hash, data_identity
from kd_tune.core.status import TrialStatus
from kd_tune.data import dataset_source
from kd_tune.plan.planner import Trial, label
from kd_tune.results.sinks import TeacherRecord, TrialSink
from kd_tune.results.trial_end import TrialEnd
from kd_tune.results.trial_tables import EPOCH_METRICS, ResultsWriter, read_epochs
from kd_tune.storage.atomic import atomic_write
from kd_tune.tracking.queue import TrackingQueue
from kd_tune.tracking.tracker import PARENT_TAG, STARTED_TAG, TEACHER_TAG, TRIAL_ID_TAG
from kd_tune.tracking.writes import (
    EndTrial,
    LogArtifacts,
    LogDataset,
    LogEpoch,
    LogFile,
    LogParentValues,
    LogTable,
    RecordTeacher,
    StartTrial,
)
from kd_tune.train.measurements import SUMMARY

# Numbers of a trials-table row logged on the trial's child run when it ends.
ROW_METRICS = ("best_val_acc", "best_val_epoch", "test_acc_at_best_val", "teacher_test_acc", "train_time_s",
               *SUMMARY)
# Columns of the parent's trials table.
TABLE_COLUMNS = ("trial_key", "status", "dataset", "teacher", "student", "noise_type", "noise_rate", "loss", "tau",
                 "alpha", "seed", "threads", "test_acc", "best_val_acc", "test_acc_at_best_val", "teacher_test_acc",
                 "train_time_s", *SUMMARY, "mlflow_run_id")
# Config fields that never tell two settings apart in a sweep's best-setting search.
_NOT_A_SETTING = ("seed", "device", "threads", "data_dir", "download", "milestones")


REFILL_CHUNK = 200  # trials refilled per read of the epochs table

log = logging.getLogger(__name__)


def _no_row(trial_key: str) -> None:  # a sink without a Parquet record
    return None


def _unknown(trial_key: str) -> datetime | None:
    return None


class MlflowSink(TrialSink):
    """Queues the sweep's runs (see the module docstring).

    ``invocation`` identifies this invocation's parent run; ``started_at(trial_key)`` is
    the trial's start as the Parquet row records it (tag ``kd_tune.started_at``);
    ``trial_row(trial_key)`` returns a trial's final trials-table row (or None), asked
    when the trial ends, after the Parquet sink has recorded it.
    """

    def __init__(self, queue: TrackingQueue, invocation: str, *,
                 started_at: Callable[[str], datetime | None] = _unknown,
                 trial_row: Callable[[str], Mapping[str, Any] | None] = _no_row):
        self.queue = queue
        self.invocation = invocation
        self._started_at = started_at
        self._trial_row = trial_row

    def run_id(self, trial_key: str) -> str | None:
        """The child run of a trial, once the queue has sent its start (else None)."""
        return self.queue.run_id(trial_key)

    def trial_started(self, trial: Trial, trial_id: str) -> None:
        # An unfinished run of an earlier invocation is continued (see SweepTracker.start_trial).
        started = self._started_at(trial.key)
        tags = {TRIAL_ID_TAG: trial_id, TEACHER_TAG: trial.teacher_key or "",
                **({STARTED_TAG: started.isoformat()} if started else {})}
        self.queue.put(StartTrial(self.invocation, trial.key, trial.label, trial.config.to_dict(), tags,
                                  {"inv_tau": inv_tau(trial.config.tau)} if trial.config.loss == "kl" else None))

    def epoch_reported(self, trial: Trial, trial_id: str, metrics: Mapping[str, Any], status: TrialStatus) -> None:
        self.queue.put(LogEpoch(trial.key, metrics))

    def trial_measured(self, trial: Trial, trial_id: str, end: TrialEnd) -> None:
        self.queue.put(LogDataset(trial.key, **dataset_fields(trial.config, end.noise_hash)))
        if end.weights is not None:
            weights = {**end.weights, "model": {k: torch.as_tensor(v) for k, v in end.weights["model"].items()}}
            path = self.queue.files_dir / trial.key / "student.pt"
            with atomic_write(path) as handle:
                torch.save(weights, handle)
            self.queue.put(LogFile(trial.key, path, "model"))

    def trial_ended(self, trial: Trial, trial_id: str, status: TrialStatus, error: str | None) -> None:
        row = self._trial_row(trial.key) or {}
        self.queue.put(EndTrial(trial.key, status, metrics={m: row.get(m) for m in ROW_METRICS},
                                step=int(row.get("epoch") or 0)))

    def teacher_ready(self, teacher: TeacherRecord) -> None:
        node = teacher.node
        final = dict(teacher.meta.get("metrics", {}))
        # A teacher has no teacher: its logit distance and mean gap are NaN, left out here.
        measured = {k: v for k, v in (teacher.measurements.summary if teacher.measurements else {}).items()
                    if math.isfinite(v)}
        history = teacher.meta.get("history", [])
        # A trained node's last epoch already holds its accuracies at this step; an ensemble has no epochs.
        logged = set(history[-1]) if history else set()
        accuracies = {k: final.get(k) for k in ("test_acc", "train_acc") if k not in logged}
        self.queue.put(RecordTeacher(
            self.invocation, node.key, f"teacher {node.spec} ({node.key})",
            {**node.run.to_dict(), "teacher_kind": node.kind, "teacher_spec": node.spec}, history,
            {**measured, **accuracies, "train_time_s": teacher.meta.get("train_seconds")},
            int(final.get("epoch") or 0), dataset_fields(node.run, teacher.meta.get("noise_hash"))))

    def sweep_ended(self, rows: Sequence[Mapping[str, Any]], artifacts: Iterable[Path]) -> None:
        """The parent run's summary: the trials table, the best setting, the tables and figures
        (``artifacts``, each logged under its folder's name, e.g. ``tables/``, ``figures/``)."""
        if rows:
            frame = trials_table(rows)
            self.queue.put(LogTable(self.invocation, list(frame.columns), frame.astype(object).values.tolist(),
                                    "trials.json"))
            best = best_setting(rows)
            if best is not None:
                self.queue.put(LogParentValues(self.invocation, *best))
        folders: dict[str, list[Path]] = {}
        for path in artifacts:
            folders.setdefault(Path(path).parent.name, []).append(Path(path))
        for folder, paths in folders.items():
            self.queue.put(LogArtifacts(self.invocation, paths, folder))

    def mirror(self, writer: ResultsWriter, *, sweep_complete: bool = False) -> dict[str, str]:
        """Make MLflow show every trial the results record, synchronously (call it while
        the queue's thread is stopped and nothing is left to send); return trial key ->
        run id of every recorded trial that has a run.

        A recorded trial without a child run (a deleted or emptied store, or a run deleted
        by hand) gets one made from its Parquet rows, under this invocation's parent; a
        run still RUNNING whose trial has a final row is ended with that row's status.
        With ``sweep_complete`` (nothing of the sweep is left to run), a RUNNING child with
        no row is ended KILLED: a search's draw whose driver died before Tune saved it, which
        no later invocation runs. Otherwise such a run is left for the invocation that
        continues its trial.
        """
        tracker = self.queue.tracker()
        tracker.parent_id = self.queue.parent_id(self.invocation) or tracker.find_parent(self.invocation)
        runs = tracker.trial_runs()
        recorded = writer.statuses()
        ids = {key: runs[key].info.run_id for key in recorded if key in runs}
        for key, status in recorded.items():
            if key in runs and runs[key].info.status == "RUNNING":
                tracker.end_trial(ids[key], status)
            if key in runs and tracker.parent_id and runs[key].data.tags.get(PARENT_TAG) != tracker.parent_id:
                # Under the sweep's one parent: a parent made anew (the old one deleted), or
                # children of the several parents of a sweep run before one parent per sweep.
                tracker.client.set_tag(ids[key], PARENT_TAG, tracker.parent_id)
        orphans = [run for key, run in runs.items() if key not in recorded and run.info.status == "RUNNING"
                   and run.data.tags.get(PARENT_TAG) == tracker.parent_id] if sweep_complete else []
        for run in orphans:
            tracker.end_run(run.info.run_id, "KILLED")
        if orphans:
            log.info("MLflow: ended %d trial run(s) KILLED that no trial of the finished sweep records (a draw "
                     "its driver did not live to save)", len(orphans))
        missing = [key for key in recorded if key not in runs]
        if not missing:
            return ids
        log.info("MLflow holds %d of the %d trials recorded in %s: refilling %d from the Parquet results",
                 len(recorded) - len(missing), len(recorded), writer.sweep_dir, len(missing))
        own_parent = tracker.parent_id is None  # a sync outside a sweep: a parent run for the refilled runs
        if own_parent:
            tracker.start_parent(f"{tracker.experiment} refill", {}, {}, invocation=self.invocation)
        for start in range(0, len(missing), REFILL_CHUNK):
            chunk = missing[start:start + REFILL_CHUNK]
            epochs: dict[str, list[tuple[dict[str, Any], int]]] = {key: [] for key in chunk}
            for row in sorted(read_epochs(writer.sweep_dir, chunk).to_pylist(), key=lambda r: r["epoch"]):
                metrics = {"epoch": row["epoch"], **{m: row[m] for m in EPOCH_METRICS}}
                epochs[row["trial_key"]].append((metrics, int(row["reported_at"].timestamp() * 1000)))
            for row in writer.read_trials(chunk):
                config = RunConfig.from_dict({f.name: row[f.name] for f in dataclasses.fields(RunConfig)})
                tags = {TRIAL_ID_TAG: row["trial_id"] or "", TEACHER_TAG: row["teacher_key"] or ""}
                if row["started_at"] is not None:
                    tags[STARTED_TAG] = row["started_at"].isoformat()
                ids[row["trial_key"]] = tracker.record_trial(row["trial_key"], label(config), config.to_dict(), tags,
                                                             TrialStatus(row["status"]), epochs[row["trial_key"]])
        if own_parent:
            tracker.end_parent("FINISHED")
        log.info("MLflow refilled: %d trial run(s) made from the Parquet results", len(missing))
        return ids


def inv_tau(tau: float) -> float:
    """1/tau, with 0 for tau = inf (logit matching): temperature as a number a chart can plot."""
    return 0.0 if math.isinf(tau) else 1.0 / tau


def dataset_fields(config: RunConfig, labels_hash: str | None) -> dict[str, Any]:
    """The data a run trained on, as :meth:`SweepTracker.log_dataset`'s fields: named by data
    set (and noise), digest of its settings and training labels. The source holds the settings
    and, for a generated data set (mnist1d), the generator's arguments; the digest covers the
    settings as the data key does (fields added later left out at their old value), so a run
    from before them keeps its digest."""
    settings = data_identity(config)
    source = {**settings, **dataset_source(config.dataset, config.data_samples)}
    noise = "" if config.noise_type == "none" else f" {config.noise_type} {config.noise_rate:g}"
    return {"name": f"{config.dataset}{noise}", "digest": config_hash({**settings, "train_labels": labels_hash}),
            "source": source, "profile": {"train_labels_sha256": labels_hash or "clean labels"}}


def trials_table(rows: Sequence[Mapping[str, Any]]) -> Any:
    """The parent's trials table: one row per trial, :data:`TABLE_COLUMNS`, tau as text (``inf``)."""
    # Here, not at the top: pandas takes 0.3-0.5 s to import (measured, 2 busy cores), which
    # commands that never end a sweep (--help, --dry-run, a refused start) need not pay.
    import pandas as pd

    frame = pd.DataFrame([{c: row.get(c) for c in TABLE_COLUMNS} for row in rows], columns=list(TABLE_COLUMNS))
    frame["tau"] = [f"{t:g}" if t is not None else None for t in frame["tau"]]
    return frame.sort_values(["loss", "tau", "alpha", "seed"], kind="stable").reset_index(drop=True)


def best_setting(rows: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], dict[str, float]] | None:
    """The setting (config fields that vary across the completed trials, seed aside) with the
    highest mean ``best_val_acc`` over its trials, as (params ``best.<field>``, metrics
    ``best.val_acc``, ``best.test_acc_at_best_val``, ``best.test_acc``, ``best.n``); None
    without a completed trial with a validation accuracy. Chosen on validation, never on test.
    """
    done = [r for r in rows if r.get("status") == TrialStatus.COMPLETED.value
            and r.get("best_val_acc") is not None and math.isfinite(r["best_val_acc"])]
    if not done:
        return None
    fields = [f for f in RunConfig().to_dict() if f not in _NOT_A_SETTING]
    varying = [f for f in fields if len({repr(r.get(f)) for r in done}) > 1] or ["loss"]
    groups: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
    for row in done:
        groups.setdefault(tuple(repr(row.get(f)) for f in varying), []).append(row)

    def mean(members: list[Mapping[str, Any]], column: str) -> float:
        return sum(float(m[column]) for m in members) / len(members)

    members = max(groups.values(), key=lambda g: mean(g, "best_val_acc"))
    params = {f"best.{f}": members[0].get(f) for f in varying}
    metrics = {"best.val_acc": mean(members, "best_val_acc"),
               "best.test_acc_at_best_val": mean(members, "test_acc_at_best_val"),
               "best.test_acc": mean(members, "test_acc"), "best.n": float(len(members))}
    return params, metrics
