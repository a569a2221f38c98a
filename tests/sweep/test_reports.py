"""When a trial reports and checkpoints: epochs gathered by seconds of training, checkpoints
by time or epochs, the last epoch always, a scheduler's rungs exactly where ASHA decides."""
from __future__ import annotations

import random

import pytest
from ray.tune.schedulers import ASHAScheduler

from kd_tune.core.status import TrialStatus
from kd_tune.sweep.reports import EPOCHS_KEY, ReportSchedule, TrialReports, reported_epochs
from kd_tune.sweep.search import SearchSettings, asha_rungs

RUNNING, COMPLETED, DIVERGED = TrialStatus.RUNNING, TrialStatus.COMPLETED, TrialStatus.DIVERGED


def run(schedule: ReportSchedule, times: list[float], *, resumed_epoch: int = 0,
        diverged_at: int | None = None) -> list[tuple[int, bool, list[int]]]:
    """(epoch, with a checkpoint, the epochs it carries) of every report of a trial whose epochs
    take ``times`` seconds, resumed after ``resumed_epoch``."""
    reports = TrialReports(schedule, resumed_epoch=resumed_epoch)
    last = resumed_epoch + len(times)
    out = []
    for epoch, seconds in enumerate(times, resumed_epoch + 1):
        status = DIVERGED if epoch == diverged_at else (COMPLETED if epoch == last else RUNNING)
        now, checkpoint = reports.epoch({"epoch": epoch, "epoch_time_s": seconds}, status)
        if now:
            out.append((epoch, checkpoint, [e["epoch"] for e in reports.take()]))
        if status is DIVERGED:
            break
    return out


def test_epochs_are_gathered_by_seconds_of_training_and_the_last_is_checkpointed():
    schedule = ReportSchedule(report_every_s=1.0, checkpoint_every_s=2.5)
    assert run(schedule, [0.4] * 10) == [
        (3, False, [1, 2, 3]), (6, False, [4, 5, 6]), (7, True, [7]), (10, True, [8, 9, 10])]


def test_a_short_trial_reports_once_and_writes_one_checkpoint():
    assert run(ReportSchedule(), [0.05] * 60) == [(60, True, list(range(1, 61)))]


def test_every_epoch_reported_and_checkpoints_by_epochs_as_before():
    old = ReportSchedule(report_every_s=0, checkpoint_every_s=0, checkpoint_every=5)
    reports = run(old, [0.05] * 12)
    assert [e for e, _, _ in reports] == list(range(1, 13)) and all(len(c) == 1 for _, _, c in reports)
    assert [e for e, checkpoint, _ in reports if checkpoint] == [5, 10, 12]
    # Resumed from the checkpoint of epoch 5: the next ones at 10 and the end, as if never stopped.
    resumed = run(old, [0.05] * 7, resumed_epoch=5)
    assert [e for e, checkpoint, _ in resumed if checkpoint] == [10, 12]


def test_a_diverged_epoch_is_reported_at_once_without_a_checkpoint():
    assert run(ReportSchedule(), [0.1] * 10, diverged_at=4) == [(4, False, [1, 2, 3, 4])]


def test_a_schedulers_epochs_are_always_reported():
    schedule = ReportSchedule(report_epochs=frozenset({1, 3, 9}))
    assert [(e, c) for e, _, c in run(schedule, [0.05] * 12)] == [(1, [1]), (3, [2, 3]), (9, [4, 5, 6, 7, 8, 9]),
                                                                 (12, [10, 11, 12])]


@pytest.mark.parametrize("seed", range(5))
def test_a_checkpoint_is_never_older_than_the_interval(seed):
    rng = random.Random(seed)
    times = [rng.uniform(0.1, 3.0) for _ in range(200)]
    interval = 7.5
    reports = run(ReportSchedule(report_every_s=2.0, checkpoint_every_s=interval), times)
    checkpoints = [0] + [e for e, checkpoint, _ in reports if checkpoint]
    assert checkpoints[-1] == len(times)
    for before, after in zip(checkpoints, checkpoints[1:]):
        # Training since a checkpoint reaches the interval within the epoch that checkpoints next.
        assert sum(times[before:after - 1]) < interval
    carried = [e for _, _, c in reports for e in c]
    assert carried == list(range(1, 201))  # every epoch sent once, in order


@pytest.mark.parametrize(("grace", "factor", "epochs"), [(1, 3, 60), (1, 3, 9), (2, 2, 20), (5, 3, 80), (1, 2.5, 30)])
def test_the_rungs_are_where_rays_asha_decides(grace, factor, epochs):
    settings = SearchSettings(scheduler="asha", grace_period=grace, reduction_factor=factor)
    scheduler = ASHAScheduler(time_attr="epoch", max_t=epochs, grace_period=grace, reduction_factor=factor)
    milestones = [m for bracket in scheduler._brackets for m, _ in bracket._rungs]
    # The first whole epoch at or past each milestone: where a result per epoch would be decided on.
    assert asha_rungs(settings, epochs) == {next(e for e in range(1, epochs + 1) if e >= m) for m in milestones}
    assert asha_rungs(SearchSettings(scheduler="none"), epochs) == frozenset()


def test_a_report_of_one_epoch_from_before_reports_gathered_epochs_is_read_as_one():
    metrics = ("val_acc", "test_acc")
    assert reported_epochs({"epoch": 3, "val_acc": 0.5}, metrics) == [{"epoch": 3, "val_acc": 0.5, "test_acc": None}]
    gathered = {"epoch": 2, "val_acc": 0.6, EPOCHS_KEY: [{"epoch": 1, "val_acc": 0.4}, {"epoch": 2, "val_acc": 0.6}]}
    assert [e["val_acc"] for e in reported_epochs(gathered, metrics)] == [0.4, 0.6]
