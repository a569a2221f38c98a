"""When a trial reports to the driver and when it saves a checkpoint.

Every ``tune.report`` of a function trainable is a round trip: the trial's thread waits
until the driver has taken the result (Ray Tune runs function trainables with
synchronous reporting). A digits or MNIST-1D epoch lasts a few tens of milliseconds, so
one report per epoch costs about as much as the epoch; one checkpoint costs a state file
written and copied into the trial's folder on the storage. So a trial gathers its epochs
and sends them together:

- **Reports**: at the latest every ``report_every_s`` seconds of training, and always for
  the last epoch, a diverged epoch, an epoch with a checkpoint and every epoch in
  ``report_epochs`` (where a scheduler decides: ASHA's rungs; a result at exactly those
  epochs keeps its decisions those of a report per epoch). A report carries every epoch
  since the previous one (``kd_epochs``); its top-level metrics are its last epoch's.
- **Checkpoints**: after ``checkpoint_every_s`` seconds of training since the last one,
  or every ``checkpoint_every`` epochs, and at the end. A trial killed or retried continues
  from a checkpoint no older than that interval; a trial shorter than it is started again.

Seconds of training are the trainer's own epoch times (``epoch_time_s``), so the schedule
depends on the work done, not on how long the driver took to answer. A schedule never
changes a number: saving a state reads the RNG states, it does not draw from them.
"""
from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from kd_tune.core.status import TrialStatus

EPOCHS_KEY = "kd_epochs"  # a report's epochs since the previous report, oldest first
TIMING_KEY = "kd_timing"  # on a trial's last report: where its time went (seconds, counts)


@dataclass(frozen=True)
class ReportSchedule:
    """How often a trial reports and checkpoints (see the module docstring).

    ``report_every_s``: seconds of training between reports (0: every epoch).
    ``checkpoint_every_s``: seconds of training between checkpoints (None or 0: by epochs
    only). ``checkpoint_every``: epochs between checkpoints (None: by time only). A trial's
    last epoch is always reported and checkpointed. ``report_epochs``: epochs that are
    always reported.
    """

    report_every_s: float = 10.0
    checkpoint_every_s: float | None = 30.0
    checkpoint_every: int | None = None
    report_epochs: frozenset[int] = field(default_factory=frozenset)

    def problems(self) -> list[str]:
        """What is wrong with the schedule, as command-line advice."""
        p = []
        if self.report_every_s < 0:
            p.append(f"--report-every-s must be >= 0 seconds, got {self.report_every_s}")
        if self.checkpoint_every_s is not None and self.checkpoint_every_s < 0:
            p.append(f"--checkpoint-every-s must be >= 0 seconds, got {self.checkpoint_every_s}")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            p.append(f"--checkpoint-every must be >= 1 epoch, got {self.checkpoint_every}")
        return p


class TrialReports:
    """One trial's side of a :class:`ReportSchedule`: fed every epoch's metrics and status, it
    says whether to report now and whether with a checkpoint, and hands over the epochs to send."""

    def __init__(self, schedule: ReportSchedule, *, resumed_epoch: int = 0) -> None:
        self.schedule = schedule
        self._pending: list[dict[str, Any]] = []
        self._since_report = 0.0
        self._since_checkpoint = 0.0
        self._last_checkpoint = resumed_epoch

    def epoch(self, metrics: Mapping[str, Any], status: TrialStatus) -> tuple[bool, bool]:
        """Take one epoch's ``metrics`` (with ``epoch``, ``epoch_time_s``) and the trainer's status;
        return (report now, with a checkpoint)."""
        self._pending.append(dict(metrics))
        seconds = float(metrics.get("epoch_time_s") or 0.0)
        self._since_report += seconds
        self._since_checkpoint += seconds
        epoch = int(metrics["epoch"])
        if status is TrialStatus.DIVERGED:
            return True, False  # nothing worth resuming from
        s = self.schedule
        checkpoint = status.ended or (
            bool(s.checkpoint_every_s) and self._since_checkpoint >= s.checkpoint_every_s
        ) or (s.checkpoint_every is not None and epoch - self._last_checkpoint >= s.checkpoint_every)
        report = checkpoint or epoch in s.report_epochs or self._since_report >= s.report_every_s
        if checkpoint:
            self._since_checkpoint, self._last_checkpoint = 0.0, epoch
        return report, checkpoint

    def take(self) -> list[dict[str, Any]]:
        """The epochs not yet sent, oldest first (then none are pending)."""
        taken, self._pending, self._since_report = self._pending, [], 0.0
        return taken


@dataclass
class TrialTiming:
    """Where one trial's time went in its worker, in seconds (and counts), up to its last report:
    ``setup_s`` (data, teacher or cached logits, a checkpoint to resume from), ``reports_s`` and
    ``reports`` (reports without a checkpoint: the waits for the driver), ``checkpoints_s``,
    ``checkpoints`` and ``checkpoint_bytes`` (state files written and reported), ``end_s`` (the
    end measurements gathered for the driver); ``wall_s`` is the whole, from the trainable's
    start to its last report. The training loop is the rest, the epochs' own times."""

    setup_s: float = 0.0
    reports_s: float = 0.0
    reports: int = 0
    checkpoints_s: float = 0.0
    checkpoints: int = 0
    checkpoint_bytes: int = 0
    end_s: float = 0.0
    wall_s: float = 0.0


def reported_epochs(result: Mapping[str, Any], metrics: Collection[str] | None = None) -> list[dict[str, Any]]:
    """The epochs a result carries, oldest first: its ``kd_epochs``, or the result itself (a
    report of one epoch, as trials reported before reports gathered epochs). Each as ``epoch``
    and ``metrics`` (None where absent), or whole when ``metrics`` is None."""
    epochs = result.get(EPOCHS_KEY) or [result]
    if metrics is None:
        return [dict(e) for e in epochs]
    return [{"epoch": e["epoch"], **{m: e.get(m) for m in metrics}} for e in epochs]
