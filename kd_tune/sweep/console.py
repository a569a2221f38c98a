"""Console progress: one line per ended or retried trial, and now and then a running one.

Lines (``done`` counts the trials ended so far, those finished before this invocation
included; accuracies in percent, times in seconds since the trial started here)::

    [3/12] kl tau=4 alpha=0.9 seed=1: completed, test acc 97.22% after 20 epochs (1.4s)
    [4/12] kl tau=4 alpha=0.9 seed=2: stopped, test acc 91.05% after 7 epochs (0.6s)
    [5/12] mse alpha=1 seed=0: diverged at epoch 3 (0.2s)
    retrying ce seed=0 after an error: RuntimeError: CUDA out of memory
    [6/12] ce seed=0: failed (RuntimeError: CUDA out of memory)
    [6/12] running kl tau=4 alpha=0.9 seed=3: epoch 5/20, test acc 90.10%

A running line is printed for the trial that reports an epoch when no running line was
printed for 30 s, so that long trials show progress.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from kd_tune.core.status import TrialStatus
from kd_tune.plan.planner import Trial
from kd_tune.results.sinks import TrialSink

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 30.0


class ConsoleProgress(TrialSink):
    """Progress lines of ``total`` trials, ``done`` of them finished before this invocation.

    Each line goes to this module's logger at INFO; ``clock`` is a monotonic clock in seconds.
    """

    def __init__(self, total: int, done: int = 0, *, clock: Callable[[], float] = time.monotonic):
        self.total = total
        self.done = done
        self._clock = clock
        self._started: dict[str, float] = {}
        self._last: dict[str, Mapping[str, Any]] = {}
        self._last_progress = clock()

    def trial_started(self, trial: Trial, trial_id: str) -> None:
        self._started[trial.key] = self._clock()

    def epoch_reported(self, trial: Trial, trial_id: str, metrics: Mapping[str, Any], status: TrialStatus) -> None:
        self._last[trial.key] = metrics
        if self._clock() - self._last_progress > PROGRESS_EVERY_S:
            self._last_progress = self._clock()
            log.info(f"[{self.done}/{self.total}] running {trial.label}: epoch {int(metrics['epoch'])}/"
                      f"{trial.config.epochs}, test acc {_percent(metrics.get('test_acc'))}")

    def trial_retried(self, trial: Trial, error: str) -> None:
        log.info(f"retrying {trial.label} after an error: {error}")

    def trial_ended(self, trial: Trial, trial_id: str, status: TrialStatus, error: str | None) -> None:
        self.done += 1
        seconds = self._clock() - self._started.pop(trial.key, self._clock())
        last = self._last.pop(trial.key, {})
        head = f"[{self.done}/{self.total}] {trial.label}: {status}"
        if status == TrialStatus.FAILED:
            line = f"{head} ({error})"
        elif status == TrialStatus.DIVERGED:
            line = f"{head} at epoch {_epoch(last)} ({seconds:.1f}s)"
        else:
            line = (f"{head}, test acc {_percent(last.get('test_acc'))} after {_epoch(last)} epochs "
                    f"({seconds:.1f}s)")
        log.info(line)


def _epoch(metrics: Mapping[str, Any]) -> Any:
    return int(metrics["epoch"]) if metrics.get("epoch") is not None else None


def _percent(fraction: Any) -> str:
    value = math.nan if fraction is None else float(fraction)
    return f"{100 * value:.2f}%"
