"""How a trial (or a teacher's training run) stands: one enum for every module.

The training loop decides a run's status epoch by epoch (``running`` until its last
epoch, then ``completed``; ``diverged`` at the first epoch whose training loss is NaN
or infinite). The sweep adds ``failed`` (the trial raised, after its retries) and
``stopped`` (an early-stopping scheduler ended it before its last epoch). Everything
downstream (the Tune adapter, the Parquet and MLflow sinks, the tables) reads these
values and never decides them again.
"""
from __future__ import annotations

from enum import StrEnum

# The key of a Tune result that carries the trainer's status of the reported epoch.
STATUS_KEY = "kd_status"


class TrialStatus(StrEnum):
    """A run's status; the string values are what Parquet, MLflow tags and tables store."""

    RUNNING = "running"
    COMPLETED = "completed"
    DIVERGED = "diverged"
    FAILED = "failed"
    STOPPED = "stopped"

    @property
    def ended(self) -> bool:
        """Whether the run is over (every status but ``running``)."""
        return self is not TrialStatus.RUNNING

    @property
    def finished(self) -> bool:
        """Whether the run ended by itself or by the scheduler, not by an error: a final
        result that a resumed sweep keeps (``completed``, ``diverged``, ``stopped``)."""
        return self in (TrialStatus.COMPLETED, TrialStatus.DIVERGED, TrialStatus.STOPPED)
