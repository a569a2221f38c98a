"""The MLflow sink: runs made for comparing trials, under this invocation's parent run.

It owns the sweep's :class:`~kd_tune.tracking.SweepTracker` (layout in
:mod:`kd_tune.tracking`); the driver creates the tracker, opens the parent run before
the trials and ends it after them. What the runs hold:

- **Child run per trial** (named by its label, e.g. ``kl tau=4 alpha=0.9 seed=1``):
  params = the run config (``threads``: the CPU threads it ran at); per-epoch metrics
  (step = epoch); ``inv_tau`` = 1/tau for KL trials (0 for tau = inf, which a chart
  cannot place; absent for MSE and CE), so the chart view can plot against
  temperature; at the end the final and selected numbers of its ``trials.parquet`` row
  (``best_val_acc``, ``best_val_epoch``, ``test_acc_at_best_val``, ``teacher_test_acc``,
  ``train_time_s``, ``ece`` and the ``<quantity>_mean``/``_median`` summaries;
  ``test_acc`` is the last epoch's); the data set it trained on as an input
  (:meth:`SweepTracker.log_dataset`: name, a digest of the data settings and the
  training labels' hash); with ``--log-models`` its final weights as ``model/student.pt``.
- **Teacher run** per teacher (tag ``kd_tune.role=teacher``): its config, per-epoch
  curves, final metrics and end measurements, its data set.
- **Parent run** at the end: the trials as an MLflow table (``trials.json``), the best
  setting by mean validation accuracy over seeds (params ``best.<field>``, metrics
  ``best.val_acc`` and more), and the sweep's tables and figures as artifacts.
"""
from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kd_tune.config import RunConfig
from kd_tune.identity import config_hash
from kd_tune.measurements import SUMMARY
from kd_tune.plan import Trial
from kd_tune.sinks.base import TeacherRecord, TrialSink
from kd_tune.status import TrialStatus
from kd_tune.tracking import TEACHER_TAG, TRIAL_ID_TAG, SweepTracker
from kd_tune.trial_end import TrialEnd

# Numbers of a trials.parquet row logged on the trial's child run when it ends.
ROW_METRICS = ("best_val_acc", "best_val_epoch", "test_acc_at_best_val", "teacher_test_acc", "train_time_s",
               *SUMMARY)
# Columns of the parent's trials table.
TABLE_COLUMNS = ("trial_key", "status", "dataset", "teacher", "student", "noise_type", "noise_rate", "loss", "tau",
                 "alpha", "seed", "threads", "test_acc", "best_val_acc", "test_acc_at_best_val", "teacher_test_acc",
                 "train_time_s", *SUMMARY, "mlflow_run_id")
# Config fields that never tell two settings apart in a sweep's best-setting search.
_NOT_A_SETTING = ("seed", "device", "threads", "data_dir", "download", "milestones")


def _no_row(trial_key: str) -> None:  # a sink without a Parquet record
    return None


class MlflowSink(TrialSink):
    """Writes the sweep's runs (see the module docstring).

    ``trial_row(trial_key)`` returns a trial's final ``trials.parquet`` row (or None);
    it is asked when the trial ends, after the Parquet sink has recorded it.
    """

    def __init__(self, tracker: SweepTracker, *, trial_row: Callable[[str], Mapping[str, Any] | None] = _no_row):
        self.tracker = tracker
        self._trial_row = trial_row
        self._runs: dict[str, str] = {}

    def run_id(self, trial_key: str) -> str | None:
        """The child run of a trial started in this invocation (kept after it ended), else None."""
        return self._runs.get(trial_key)

    def trial_started(self, trial: Trial, trial_id: str) -> None:
        # An unfinished run of an earlier invocation is continued (see SweepTracker.start_trial).
        self._runs[trial.key] = self.tracker.start_trial(
            trial.key, trial.label, trial.config.to_dict(), {TRIAL_ID_TAG: trial_id, TEACHER_TAG: trial.teacher_key},
            metrics={"inv_tau": inv_tau(trial.config.tau)} if trial.config.loss == "kl" else None,
        )

    def epoch_reported(self, trial: Trial, trial_id: str, metrics: Mapping[str, Any], status: TrialStatus) -> None:
        self.tracker.log_epoch(self._runs[trial.key], metrics)

    def trial_measured(self, trial: Trial, trial_id: str, end: TrialEnd) -> None:
        run_id = self._runs[trial.key]
        _log_dataset(self.tracker, run_id, trial.config, end.noise_hash)
        if end.weights is not None:
            import torch

            weights = {**end.weights, "model": {k: torch.as_tensor(v) for k, v in end.weights["model"].items()}}
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "student.pt"
                torch.save(weights, path)
                self.tracker.log_file(run_id, path, "model")

    def trial_ended(self, trial: Trial, trial_id: str, status: TrialStatus, error: str | None) -> None:
        row = self._trial_row(trial.key) or {}
        self.tracker.end_trial(self._runs[trial.key], status, metrics={m: row.get(m) for m in ROW_METRICS},
                               step=int(row.get("epoch") or 0))

    def teacher_ready(self, teacher: TeacherRecord) -> None:
        config = teacher.trial.config.teacher_config()
        run_id, new = self.tracker.start_teacher(teacher.key, f"teacher {teacher.trial.teacher} ({teacher.key})",
                                                 config.to_dict())
        if not new:
            return
        for epoch in teacher.meta.get("history", []):
            self.tracker.log_epoch(run_id, epoch)
        final = dict(teacher.meta.get("metrics", {}))
        # A teacher has no teacher: its logit distance and mean gap are NaN, left out here.
        measured = {k: v for k, v in (teacher.measurements.summary if teacher.measurements else {}).items()
                    if math.isfinite(v)}
        self.tracker.log_values(run_id, metrics={**measured, "test_acc": final.get("test_acc")},
                                step=int(final.get("epoch") or 0))
        _log_dataset(self.tracker, run_id, config, teacher.meta.get("noise_hash"))
        self.tracker.end_run(run_id)

    def sweep_ended(self, rows: Sequence[Mapping[str, Any]], artifacts: Iterable[Path]) -> None:
        """The parent run's summary: the trials table, the best setting, the tables and figures
        (``artifacts``, each logged under its folder's name, e.g. ``tables/``, ``figures/``)."""
        parent = self.tracker.parent_id
        if parent is None:
            return
        if rows:
            self.tracker.log_table(parent, trials_table(rows), "trials.json")
            best = best_setting(rows)
            if best is not None:
                self.tracker.log_values(parent, params=best[0], metrics=best[1])
        for path in artifacts:
            self.tracker.log_artifacts([Path(path)], Path(path).parent.name)

    def reconcile(self, statuses: Mapping[str, TrialStatus]) -> int:
        """End child runs left RUNNING whose trial has a final status (trial key -> status),
        as a driver stopped between recording a trial and ending its run leaves them;
        return how many were ended."""
        return self.tracker.end_recorded_trials(statuses)


def inv_tau(tau: float) -> float:
    """1/tau, with 0 for tau = inf (logit matching): temperature as a number a chart can plot."""
    return 0.0 if math.isinf(tau) else 1.0 / tau


def _log_dataset(tracker: SweepTracker, run_id: str, config: RunConfig, labels_hash: str | None) -> None:
    """The data a run trained on: named by data set (and noise), digest of its settings and training labels."""
    settings = config.data_settings()
    settings.pop("download", None)
    noise = "" if config.noise_type == "none" else f" {config.noise_type} {config.noise_rate:g}"
    tracker.log_dataset(run_id, f"{config.dataset}{noise}", config_hash({**settings, "train_labels": labels_hash}),
                        source=settings, profile={"train_labels_sha256": labels_hash or "clean labels"})


def trials_table(rows: Sequence[Mapping[str, Any]]) -> Any:
    """The parent's trials table: one row per trial, :data:`TABLE_COLUMNS`, tau as text (``inf``)."""
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
