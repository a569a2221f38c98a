"""The driver's one writer: a Ray Tune callback that turns trial events into results.

Trials only report; this callback, running in the driver, writes the Parquet files
(:class:`kd_tune.results.ResultsWriter`) and the MLflow runs
(:class:`kd_tune.tracking.SweepTracker`) and prints one progress line per finished
trial. Workers therefore need no access to the tracking store, and no two processes
write one file.
"""
from __future__ import annotations

import math
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from ray import tune

from kd_tune.config import RunConfig
from kd_tune.results import EPOCH_METRICS, ResultsWriter, epoch_row, trial_row, utc_now
from kd_tune.search_space import label, trial_key
from kd_tune.teacher_store import TeacherStore, teacher_key
from kd_tune.tracking import SweepTracker

_FLUSH_EVERY_S = 5.0
_PROGRESS_EVERY_S = 30.0  # a line about running trials at most this often, for long trials
_active: "SweepRecorder | None" = None


def _active_recorder() -> tune.Callback:
    # Tune pickles its callbacks into the experiment (tuner.pkl) and unpickles them when a
    # sweep is restored. Unpickling yields the recorder of the *current* invocation, so a
    # resumed sweep writes with fresh writers and this invocation's MLflow parent run.
    return _active if _active is not None else tune.Callback()


class SweepRecorder(tune.Callback):
    """Writes every trial event of one sweep invocation to Parquet and MLflow."""

    def __init__(
        self,
        *,
        sweep: str,
        writer: ResultsWriter,
        tracker: SweepTracker | None,
        teachers: TeacherStore,
        total: int,
        log: Callable[[str], None] = print,
    ):
        global _active
        self.sweep = sweep
        self.writer = writer
        self.tracker = tracker
        self.teachers = teachers
        self.total = total
        self.log = log
        self._trials: dict[str, dict[str, Any]] = {}
        self._last_flush = self._last_progress = time.monotonic()
        self.finished = {k for k, row in writer.trials.items() if row["status"] in ("completed", "diverged")}
        self.failed: set[str] = set()
        _active = self

    def __reduce__(self) -> tuple[Callable[[], tune.Callback], tuple[()]]:
        return _active_recorder, ()

    # -- Tune events -------------------------------------------------------------------

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._info(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        state = self._info(trial)
        if state["replay"]:
            return
        metrics = {"epoch": result["epoch"], **{m: result.get(m) for m in EPOCH_METRICS}}
        self.writer.add_epoch(epoch_row(self.sweep, state["key"], trial.trial_id, metrics))
        state["status"] = result.get("kd_status", state["status"])
        if self.tracker is not None:
            self.tracker.log_epoch(state["run_id"], metrics)
        if time.monotonic() - self._last_flush > _FLUSH_EVERY_S:
            self._flush()
        if time.monotonic() - self._last_progress > _PROGRESS_EVERY_S:
            self._last_progress = time.monotonic()
            done = len(self.finished) + len(self.failed)
            self.log(f"[{done}/{self.total}] running {state['label']}: epoch {int(metrics['epoch'])}/"
                     f"{state['config'].epochs}, test acc {100 * float(metrics['test_acc']):.2f}%")

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        # Every epoch up to a checkpoint is on disk before the checkpoint can be resumed
        # from: a resumed trial re-reports only the epochs after it.
        self._flush()

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        state = self._info(trial)
        self.log(f"retrying {state['label']} after an error: {_error_text(trial)}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        state = self._info(trial)
        status = state["status"] if state["status"] in ("completed", "diverged") else "completed"
        self._finish(trial, state, status, None)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, self._info(trial), "failed", _error_text(trial))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._flush()

    def reconcile(self, configs: dict[str, RunConfig]) -> None:
        """After Tune returns: close what a driver killed at the wrong moment left open.

        A trial Tune had marked finished before the driver wrote its final row gets the
        row from its epoch history; child runs of trials with a final row are ended.
        """
        for key, config in configs.items():
            history = self.writer.history(key)
            if key in self.writer.trials or not history or history[-1]["epoch"] < config.epochs:
                continue
            diverged = not math.isfinite(float(history[-1]["train_loss"]))
            tkey = teacher_key(config)
            self.writer.finish_trial(trial_row(
                sweep=self.sweep, trial_key=key, trial_id=history[-1]["trial_id"], config=config,
                status="diverged" if diverged else "completed", history=history, teacher_key=tkey,
                teacher_test_acc=self.teachers.test_acc(tkey), started_at=None,
            ))
        self._flush()
        if self.tracker is not None:
            self.tracker.end_recorded_trials({k: row["status"] for k, row in self.writer.trials.items()})

    # -- helpers -------------------------------------------------------------------------

    def _info(self, trial: Any) -> dict[str, Any]:
        state = self._trials.get(trial.trial_id)
        if state is not None:
            return state
        config = RunConfig.from_dict(trial.config["run"])
        key = trial_key(config)
        tkey = teacher_key(config)
        teacher_acc = self.teachers.test_acc(tkey)
        recorded = self.writer.trials.get(key)
        state = {
            "config": config, "key": key, "label": label(config), "teacher_key": tkey,
            "teacher_acc": teacher_acc, "started_at": utc_now(), "status": "running", "run_id": None,
            # Finished and recorded, but Tune's own state had not caught up when the driver
            # stopped: the trial only replays its final checkpoint, and nothing is rewritten.
            "replay": recorded is not None and recorded["status"] in ("completed", "diverged"),
        }
        if state["replay"]:
            state["run_id"] = recorded["mlflow_run_id"]
        elif self.tracker is not None:
            state["run_id"] = self.tracker.start_trial(
                key, state["label"], config.to_dict(),
                {"kd_tune.trial_id": trial.trial_id, "kd_tune.teacher_key": tkey},
            )
        self._trials[trial.trial_id] = state
        return state

    def _finish(self, trial: Any, state: dict[str, Any], status: str, error: str | None) -> None:
        if state["replay"]:
            del self._trials[trial.trial_id]
            return
        history = self.writer.history(state["key"])
        row = trial_row(
            sweep=self.sweep, trial_key=state["key"], trial_id=trial.trial_id, config=state["config"],
            status=status, history=history, teacher_key=state["teacher_key"],
            teacher_test_acc=state["teacher_acc"], started_at=state["started_at"], error=error,
            mlflow_run_id=state["run_id"],
        )
        self.writer.finish_trial(row)
        self._flush()
        if self.tracker is not None and state["run_id"] is not None:
            self.tracker.end_trial(state["run_id"], status, {"kd_tune.status": status})
        (self.failed if status == "failed" else self.finished).add(state["key"])
        self.log(_progress_line(len(self.finished) + len(self.failed), self.total, state, row))
        del self._trials[trial.trial_id]

    def _flush(self) -> None:
        self.writer.flush()
        self._last_flush = time.monotonic()


def _progress_line(done: int, total: int, state: dict[str, Any], row: dict[str, Any]) -> str:
    head = f"[{done}/{total}] {state['label']}: {row['status']}"
    if row["status"] == "failed":
        return f"{head} ({row['error']})"
    seconds = (row["finished_at"] - state["started_at"]).total_seconds() if isinstance(state["started_at"], datetime) else 0.0
    if row["status"] == "diverged":
        return f"{head} at epoch {row['diverged_epoch']} ({seconds:.1f}s)"
    return f"{head}, test acc {100 * row['test_acc']:.2f}% after {row['epoch']} epochs ({seconds:.1f}s)"


def _error_text(trial: Any) -> str:
    """The last line of the trial's error trace (its exception), from Tune's error file."""
    text = ""
    # Tune writes the trace beside the trial's local staging folder first and syncs it to
    # storage later, so the local file is the one present when the callback runs.
    path = getattr(trial, "error_file", None)
    if path and Path(path).is_file():
        text = Path(path).read_text(errors="replace")
    elif hasattr(trial, "get_error"):
        text = str(trial.get_error() or "")
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else "unknown error"
