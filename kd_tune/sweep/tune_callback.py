"""The one Ray Tune adapter: Tune's callbacks become the sinks' plain trial events.

:class:`TuneSinks` is the only ``tune.Callback`` of the sweep that writes results. It
reads the planned :class:`~kd_tune.plan.planner.Trial` from each Tune trial's config
(``{"trial": Trial.to_dict()}``), keeps each trial's last reported status (the
``kd_status`` of the trainable's reports), and calls the sinks in the order given
(events in :mod:`kd_tune.results.sinks`). It decides only two statuses: ``failed`` (Tune
gave up on the trial after its retries) and ``stopped`` (Tune completed a trial whose
last report was still ``running``: a scheduler stopped it early).

A completed trial's last result carries its end measurements (``kd_end``, see
:mod:`kd_tune.results.trial_end`); the adapter takes them out of the result, which Tune allows
its callbacks to change before it stores it, and sends them as ``trial_measured``. The
adapter must therefore be the first callback of the run: those after it (Tune's JSON
logger) and Tune's own experiment state never see the arrays.

A trial Tune ends in error while it still had retries left is not ended here but counted as
:attr:`TuneSinks.lost`: Tune retries only a trial that is RUNNING when it fails, and a trial
handed a reused actor waits PENDING until the actor's ``reset`` returns, so a worker that
dies in that window (a lost node, a killed process) errors the trial at once whatever
``--max-failures`` says. The runner then resumes the experiment (errored trials included)
within the same invocation; see :meth:`kd_tune.sweep.runner.Recorder.fit`.

A restored sweep replays the final checkpoint of a trial that was recorded before the
driver stopped; every event of a trial in ``skip`` (trial keys) is skipped, so nothing
is written twice.

With ``hold_new`` (a search, whose trials are drawn as it goes) a trial's end reaches
the sinks only once Tune's experiment state, saved with the searcher's, holds the trial:
Tune saves it every few seconds and calls :meth:`TuneSinks.get_state` as it does. A
driver killed in between leaves no row of a trial the restored search does not know,
so the search draws a replacement and the results keep exactly its trials.

Tune pickles its callbacks into the experiment and unpickles them when a sweep is
restored; a pickled adapter unpickles as the adapter of the current invocation (the one
constructed last in this process), so a resumed sweep writes through this
invocation's sinks and clients.
"""
from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.experiment import Trial as TuneTrial

from kd_tune.core.status import STATUS_KEY, TrialStatus
from kd_tune.plan.planner import Trial
from kd_tune.results.sinks import EndedTrial, TrialSink
from kd_tune.results.trial_end import END_KEY, TrialEnd
from kd_tune.results.trial_tables import EPOCH_METRICS
from kd_tune.sweep.reports import reported_epochs

_TRAINER_ENDED = (TrialStatus.COMPLETED, TrialStatus.DIVERGED)
_current: TuneSinks | None = None


def _current_adapter() -> tune.Callback:
    return _current if _current is not None else tune.Callback()


class TuneSinks(tune.Callback):
    """Sends a sweep's trial events to ``sinks``, in order; skips the trials in ``skip``.

    Put the Parquet sink before the MLflow sink: a trial's row is then on disk before
    its child run is ended, and a driver killed in between leaves a RUNNING run, which
    :meth:`kd_tune.tracking.mlflow_sink.MlflowSink.reconcile` ends in the next invocation.

    After the experiment, :attr:`ended_in_tune` lists the trials that Tune holds as
    finished with a last result from the trainer's end (``completed`` or ``diverged``),
    for :meth:`kd_tune.results.parquet_sink.ParquetSink.reconcile`.
    """

    def __init__(self, sinks: Sequence[TrialSink], *, skip: Collection[str] = (), hold_new: bool = False,
                 keep_lost: bool = True):
        global _current
        self.sinks = tuple(sinks)
        self.skip = frozenset(skip)
        self.hold_new = hold_new
        self.keep_lost = keep_lost
        self.lost: set[str] = set()  # trial keys Tune ended in error with retries left (see the module doc)
        self.ended_in_tune: tuple[EndedTrial, ...] = ()
        self._trials: dict[str, Trial] = {}  # Tune trial id -> the trial, while it runs
        self._status: dict[str, TrialStatus] = {}  # Tune trial id -> last reported status
        self._ignored: set[str] = set()  # Tune trial ids: recorded before, or ended here
        self._unsaved: set[str] = set()  # Tune trial ids first seen after Tune last saved its state
        self._held: list[tuple[Any, TrialStatus, str | None]] = []  # ends waiting for that save
        _current = self

    def __reduce__(self) -> tuple[Callable[[], tune.Callback], tuple[()]]:
        return _current_adapter, ()

    # -- Tune's callbacks --------------------------------------------------------------------

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._trial(trial)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        # Tune lets callbacks change the result in place before it stores it: the end
        # payload (per-sample arrays) leaves here and never reaches Tune's state files.
        end: TrialEnd | None = result.pop(END_KEY, None)
        planned = self._trial(trial)
        if planned is None:
            return
        status = TrialStatus(result.get(STATUS_KEY, self._status[trial.trial_id]))
        self._status[trial.trial_id] = status
        epochs = reported_epochs(result, EPOCH_METRICS)
        for n, metrics in enumerate(epochs, 1):
            # The report's status is its last epoch's; the epochs before it were running.
            epoch_status = status if n == len(epochs) else TrialStatus.RUNNING
            for sink in self.sinks:
                sink.epoch_reported(planned, trial.trial_id, metrics, epoch_status)
        if end is not None:
            for sink in self.sinks:
                sink.trial_measured(planned, trial.trial_id, end)

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        planned = self._trial(trial)
        if planned is not None:
            for sink in self.sinks:
                sink.checkpointed(planned)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        planned = self._trial(trial)
        if planned is not None:
            error = _error_text(trial)
            for sink in self.sinks:
                sink.trial_retried(planned, error)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = self._status.get(trial.trial_id, TrialStatus.RUNNING)
        self._end(trial, last if last.ended else TrialStatus.STOPPED, None)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.keep_lost and trial.should_recover():
            self._lose(trial)
        else:
            self._end(trial, TrialStatus.FAILED, _error_text(trial))

    @property
    def open_trials(self) -> int:
        """Trials started and not yet ended (nor lost), ends held for Tune's next save included."""
        return len(self._trials)

    def get_state(self) -> dict | None:
        """Tune calls this while it saves its experiment state: after writing the trials and
        the searcher to the driver's staging folder, before syncing them to storage (the
        checkpoint each trial resumes from). The trials seen so far are in that state, so
        their held ends are recorded now; then the sinks make what was reported durable.
        The adapter itself keeps no state there."""
        self._unsaved.clear()
        held, self._held = self._held, []
        for tune_trial, status, error in held:
            self._end(tune_trial, status, error)
        for sink in self.sinks:
            sink.saving_state()
        return None

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        for sink in self.sinks:
            sink.experiment_ended()
        self.ended_in_tune = tuple(_ended_by_trainer(trials))

    # -- helpers -------------------------------------------------------------------------------

    def _trial(self, tune_trial: Any) -> Trial | None:
        """The planned trial, started on its first event; None when its events are skipped."""
        trial_id = tune_trial.trial_id
        if trial_id in self._ignored:
            return None
        planned = self._trials.get(trial_id)
        if planned is not None:
            return planned
        planned = Trial.from_dict(tune_trial.config["trial"])
        if planned.key in self.skip:
            self._ignored.add(trial_id)
            return None
        self._trials[trial_id] = planned
        self._status[trial_id] = TrialStatus.RUNNING
        if self.hold_new:
            self._unsaved.add(trial_id)
        for sink in self.sinks:
            sink.trial_started(planned, trial_id)
        return planned

    def _end(self, tune_trial: Any, status: TrialStatus, error: str | None) -> None:
        planned = self._trial(tune_trial)
        if planned is None:
            return
        if tune_trial.trial_id in self._unsaved:
            self._held.append((tune_trial, status, error))
            return
        for sink in self.sinks:
            sink.trial_ended(planned, tune_trial.trial_id, status, error)
        self._forget(tune_trial.trial_id)

    def _lose(self, tune_trial: Any) -> None:
        """Record a trial Tune errored with retries left as retried, not ended: the runner resumes it."""
        planned = self._trial(tune_trial)
        if planned is None:
            return
        error = _error_text(tune_trial)
        for sink in self.sinks:
            sink.trial_retried(planned, error)
        self.lost.add(planned.key)
        self._forget(tune_trial.trial_id)

    def _forget(self, trial_id: str) -> None:
        """Stop tracking a trial this invocation ended or lost; later events of it are ignored."""
        del self._trials[trial_id], self._status[trial_id]
        self._unsaved.discard(trial_id)
        self._ignored.add(trial_id)


def _ended_by_trainer(tune_trials: Sequence[Any]) -> list[EndedTrial]:
    """The trials Tune holds as TERMINATED whose last result is the trainer's end.

    A last result still ``running`` is left out: Tune also marks the trials it stops
    when the experiment is interrupted as TERMINATED (they resume in the next
    invocation), which cannot be told apart from a scheduler's stop here.
    """
    ended = []
    for tune_trial in tune_trials:
        result = getattr(tune_trial, "last_result", None) or {}
        terminated = getattr(tune_trial, "status", None) == TuneTrial.TERMINATED
        if not terminated or result.get(STATUS_KEY) not in _TRAINER_ENDED:
            continue
        ended.append(EndedTrial(Trial.from_dict(tune_trial.config["trial"]), tune_trial.trial_id,
                                TrialStatus(result[STATUS_KEY]), int(result["epoch"])))
    return ended


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
    return error_summary(text)


def error_summary(trace: str) -> str:
    """The last line of an error trace (its exception), at most 500 characters."""
    lines = [line for line in trace.strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else "unknown error"
