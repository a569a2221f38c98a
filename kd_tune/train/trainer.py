"""The training loop: plain PyTorch, no Ray or MLflow.

One loop serves both stages: a teacher is trained with ``loss="ce"`` and no teacher;
a student is distilled from a fixed teacher with the configured loss. Where the
teacher's logits come from (the network online, a cache, or nowhere) is
:mod:`kd_tune.train.teacher_signal`'s business, not the loop's. Callers observe progress
through ``on_epoch``, which gets an :class:`EpochEnd` per epoch: the metrics, the run's
status, and the full state to save; passing that state back as ``resume_state``
continues the run exactly where it stopped.

Metrics per epoch (accuracies in [0, 1], times in seconds):
``epoch`` (1-based), ``train_loss`` (mean total loss over the epoch's samples),
``train_acc`` (on the noisy training labels and augmented views actually trained on),
``val_acc``, ``test_acc``, ``test_logit_mse`` (student vs teacher logits on the test
set, mean over samples and classes), ``test_agreement`` (top-1 agreement with the
teacher on the test set), ``lr`` (learning rate used during the epoch),
``epoch_time_s`` (wall time of the epoch, training and evaluation) and
``teacher_forward_samples`` (samples the teacher network ran forward on during the
epoch: its training views, plus the test set in a run's first epoch; 0 when cached
:class:`~kd_tune.train.teacher_logits.TeacherLogits` supply the teacher's outputs).
Metrics that need a missing part (no validation split, no teacher) are NaN.

A run that completes is measured once on the test set after its last epoch
(:mod:`kd_tune.train.measurements`: logit distance to the teacher, logit-mean gap, feature
norm, entropy, top-logit difference, ECE), from the last epoch's own test pass (its
logits and penultimate features) and the teacher's test logits; the last
:class:`EpochEnd` and the :class:`TrainResult` carry them. A diverged run is not measured.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from kd_tune import models
from kd_tune.core.config import RunConfig
from kd_tune.core.runtime import (
    amp_dtype,
    autocast,
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
    use_threads,
)
from kd_tune.core.status import TrialStatus
from kd_tune.data import Dataset, epoch_batches, load_dataset
from kd_tune.train.evaluation import evaluate, predict_outputs
from kd_tune.train.losses import run_loss
from kd_tune.train.measurements import EndMeasurements, measure
from kd_tune.train.optim import build_optimizer, build_scheduler
from kd_tune.train.teacher_logits import TeacherLogits
from kd_tune.train.teacher_signal import TeacherSignal, teacher_signal
from kd_tune.train.validation import validate_run

STATE_FORMAT = 1
# What a diverged epoch cannot measure: it reports them as NaN.
_EVAL_METRICS = ("train_acc", "val_acc", "test_acc", "test_logit_mse", "test_agreement")


@dataclass(frozen=True, eq=False)
class EpochEnd:
    """What ``on_epoch`` receives after every epoch of :func:`train`.

    ``metrics`` is the epoch's metrics (a copy; keys in the module docstring).
    ``status`` is ``RUNNING`` after an epoch that is not the last, ``COMPLETED`` after
    the last one, ``DIVERGED`` when this epoch's training loss is NaN or infinite
    (the run stops there). ``state()`` returns the full training state, for a
    checkpoint that a later ``train(..., resume_state=...)`` continues from.
    ``measurements``: the end-of-run test measurements, after the last epoch of a
    completed run only (None otherwise).
    """

    metrics: dict[str, float]
    status: TrialStatus
    state: Callable[[], dict[str, Any]] = field(repr=False)
    measurements: EndMeasurements | None = field(default=None, repr=False)


EpochHook = Callable[[EpochEnd], None]


@dataclass(frozen=True, eq=False)
class TrainResult:
    """Outcome of :func:`train`.

    ``status`` is ``COMPLETED`` or ``DIVERGED``; ``diverged_epoch`` is the 1-based epoch
    whose loss was NaN or infinite (None otherwise); ``history`` has one metrics dict
    per epoch run; ``model`` is the trained network (in eval mode); ``measurements``
    the end-of-run test measurements of a completed run (None when it diverged).
    """

    status: TrialStatus
    history: tuple[dict[str, float], ...]
    model: nn.Module = field(repr=False)
    diverged_epoch: int | None = None
    measurements: EndMeasurements | None = field(default=None, repr=False)

    @property
    def final(self) -> dict[str, float]:
        """Metrics of the last epoch run (empty if none ran)."""
        return dict(self.history[-1]) if self.history else {}


@dataclass(frozen=True, eq=False)
class _Learner:
    """The student and what updates it: the parts of a training state besides RNG and history."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler


def load_data(config: RunConfig, *, noise_dir: str | None = None) -> Dataset:
    """The data set a config trains on: split, and with its label noise applied.

    With ``noise_dir`` the noisy labels are persisted there (and reused when present).
    """
    return load_dataset(**config.data_settings(), noise_dir=noise_dir)


def train(
    config: RunConfig,
    *,
    data: Dataset | None = None,
    teacher: nn.Module | None = None,
    teacher_logits: TeacherLogits | None = None,
    on_epoch: EpochHook | None = None,
    resume_state: dict[str, Any] | None = None,
    stop_epoch: int | None = None,
) -> TrainResult:
    """Train ``config.student`` on ``data`` with ``config.loss`` against ``teacher``.

    Args:
        config: the run; validated here. For a teacher use ``config.teacher_config()``.
            ``config.threads``, when set, becomes torch's CPU thread count (process-wide)
            before anything runs; None leaves the count as it is.
        data: the data set (default: :func:`load_data` of ``config``).
        teacher: fixed teacher network, required unless ``config.loss == "ce"``; it is
            moved to the run's device and kept in eval mode without gradients. With
            ``ce`` it is optional and only feeds the teacher-agreement metrics.
        teacher_logits: the teacher's outputs computed ahead
            (:func:`kd_tune.train.teacher_logits.compute_teacher_logits` for this config, or
            :mod:`kd_tune.teachers.logit_cache`), used instead of running ``teacher``; give one
            of the two. The student is the same as with the teacher online.
        on_epoch: called after every epoch with an :class:`EpochEnd`.
        resume_state: a state from :attr:`EpochEnd.state` to continue from.
        stop_epoch: stop after this 1-based epoch (an under-trained run): every epoch up
            to it is the full run's, learning rate included (the schedule spans all
            ``config.epochs``); the run completes there and is measured. None: all epochs.

    Raises ValueError for a bad config, a ``stop_epoch`` outside 1..``config.epochs``,
    both or (distilling) neither of ``teacher`` and ``teacher_logits``, logits that do
    not fit the run, or a ``resume_state`` of another config.
    """
    validate_run(config)
    last = config.epochs if stop_epoch is None else stop_epoch
    if not 1 <= last <= config.epochs:
        raise ValueError(f"stop_epoch={stop_epoch} must be in 1..{config.epochs} (the run's epochs)")
    run = _start(config, data, teacher, teacher_logits, resume_state)
    measured: EndMeasurements | None = None
    for epoch in range(run.start_epoch, last):
        metrics, status, measured = _epoch(run, epoch, last)
        if on_epoch is not None:
            on_epoch(EpochEnd(dict(metrics), status, run.state, measured))
        if status is TrialStatus.DIVERGED:
            return TrainResult(status, tuple(run.history), run.learner.model.eval(), diverged_epoch=epoch + 1)
    if measured is None and run.history and len(run.data.test):
        # Resumed from the state of a finished run: no epoch ran here, the weights are final.
        measured = measure_model(run.learner.model, run.data, run.signal.test_logits(), device=run.device,
                                 amp=run.amp)
    return TrainResult(TrialStatus.COMPLETED, tuple(run.history), run.learner.model.eval(), measurements=measured)


@dataclass(eq=False)
class _Run:
    """One run under way: what :func:`train` set up, and the history so far."""

    config: RunConfig
    data: Dataset
    device: torch.device
    amp: bool  # autocast on (CUDA with config.amp)
    signal: TeacherSignal
    learner: _Learner
    loss_fn: Callable[..., torch.Tensor]
    start_epoch: int
    history: list[dict[str, float]]
    train_x: torch.Tensor  # the training images and labels, on the device
    train_y: torch.Tensor

    def state(self) -> dict[str, Any]:
        """The full training state now (see :attr:`EpochEnd.state`)."""
        return _training_state(self.config, self.learner, self.history)


def _start(config: RunConfig, data: Dataset | None, teacher: nn.Module | None, teacher_logits: TeacherLogits | None,
           resume_state: dict[str, Any] | None) -> _Run:
    """Threads, seeds, data, the teacher's side, the student and its optimiser, in this order (it
    fixes the random draws), then the state resumed from."""
    device = resolve_device(config.device)
    use_threads(config.threads)
    seed_everything(config.seed, config.deterministic)
    data = data if data is not None else load_data(config)
    amp = config.amp and device.type == "cuda"
    # Computes an online teacher's test logits now: the teacher is fixed, once per run is enough.
    signal = teacher_signal(config, data, teacher=teacher, teacher_logits=teacher_logits, device=device, amp=amp)
    model = models.build(config.student, data.num_classes, data.in_channels).to(device)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config)
    scaler = torch.amp.GradScaler("cuda", enabled=amp and amp_dtype(device) == torch.float16)
    learner = _Learner(model, optimizer, scheduler, scaler)
    loss_fn = run_loss(config)
    start_epoch, history = _resume(resume_state, config, learner) if resume_state is not None else (0, [])
    # Small data sets live on the device whole: no loader, no per-item Python.
    return _Run(config, data, device, amp, signal, learner, loss_fn, start_epoch, history,
                data.train.images.to(device), data.train.labels.to(device))


def _epoch(run: _Run, epoch: int, last: int) -> tuple[dict[str, float], TrialStatus, EndMeasurements | None]:
    """Train 0-based ``epoch`` and measure it; its metrics join the history. Returns (metrics,
    status, the end measurements when this epoch completes the run)."""
    started = time.perf_counter()
    lr = run.learner.optimizer.param_groups[0]["lr"]
    loss_sum, correct = _train_epoch(run, epoch)
    train_loss = loss_sum.item() / len(run.train_y)
    metrics: dict[str, float] = {"epoch": epoch + 1, "train_loss": train_loss, "lr": lr,
                                 "teacher_forward_samples": run.signal.take_forward_samples()}
    diverged = not math.isfinite(train_loss)
    status = _epoch_status(diverged, epoch + 1, last)
    measured = None
    if diverged:
        metrics.update(dict.fromkeys(_EVAL_METRICS, math.nan))
    else:
        metrics["train_acc"] = correct.item() / len(run.train_y)
        measured = _evaluate(run, metrics, status)
    metrics["epoch_time_s"] = time.perf_counter() - started
    run.history.append(metrics)
    return metrics, status, measured


def _train_epoch(run: _Run, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass over the training views of ``epoch``, then the schedule's step; returns the
    summed loss and the count of correct predictions (on the device: no host sync per step)."""
    config, data, learner = run.config, run.data, run.learner
    learner.model.train()
    run.signal.start_epoch(epoch)
    loss_sum = torch.zeros((), device=run.device)
    correct = torch.zeros((), dtype=torch.int64, device=run.device)
    for idx, images in epoch_batches(run.train_x, seed=config.seed, epoch=epoch, batch_size=config.batch_size,
                                     augment=data.augment):
        x = data.normalize(images)
        y = run.train_y[idx]
        with autocast(run.device, run.amp):
            student_logits = learner.model(x)
        target = run.signal.batch(idx, x)
        # Losses in float32 whatever autocast did: small tau divides logits. The 1-based
        # epoch is for losses with a schedule of their own (dkd's warmup).
        loss = run.loss_fn(student_logits.float(), target, y, epoch + 1)
        learner.optimizer.zero_grad(set_to_none=True)
        learner.scaler.scale(loss).backward()
        learner.scaler.step(learner.optimizer)
        learner.scaler.update()
        loss_sum += loss.detach() * len(idx)
        correct += (student_logits.argmax(1) == y).sum()
    learner.scheduler.step()
    return loss_sum, correct


def _evaluate(run: _Run, metrics: dict[str, float], status: TrialStatus) -> EndMeasurements | None:
    """Add the epoch's evaluation metrics to ``metrics``; when the epoch ends the run, return its
    end measurements (from this epoch's own test pass and its features)."""
    model, data = run.learner.model, run.data
    test_logits, test_features = predict_outputs(model, data.test.images, data.normalize, device=run.device,
                                                 amp=run.amp, features=status.ended)
    metrics.update(evaluate(model, data, run.signal.test_logits(), device=run.device, amp=run.amp,
                            test_logits=test_logits))
    if status.ended and len(data.test):
        return measure(test_logits, data.test.labels, test_features, run.signal.test_logits())
    return None


def measure_model(model: nn.Module, data: Dataset, teacher_test: torch.Tensor | None, *,
                  device: torch.device, amp: bool = False) -> EndMeasurements:
    """The end-of-run measurements of ``model`` on ``data``'s test set (see :mod:`kd_tune.train.measurements`)."""
    logits, features = predict_outputs(model, data.test.images, data.normalize, device=device, amp=amp,
                                       features=True)
    return measure(logits, data.test.labels, features, teacher_test)


def _epoch_status(diverged: bool, epochs_done: int, epochs: int) -> TrialStatus:
    if diverged:
        return TrialStatus.DIVERGED
    return TrialStatus.COMPLETED if epochs_done == epochs else TrialStatus.RUNNING


def _training_state(config: RunConfig, learner: _Learner, history: list[dict[str, float]]) -> dict[str, Any]:
    """Everything a run needs to continue bitwise as if never stopped (see :func:`_resume`)."""
    return {
        "format": STATE_FORMAT,
        "epoch": len(history),
        "config": config.to_dict(),
        "model": learner.model.state_dict(),
        "optimizer": learner.optimizer.state_dict(),
        "scheduler": learner.scheduler.state_dict(),
        "scaler": learner.scaler.state_dict(),
        "rng": rng_state(),
        "history": [dict(h) for h in history],
    }


def _resume(state: dict[str, Any], config: RunConfig, learner: _Learner) -> tuple[int, list[dict[str, float]]]:
    """Load ``state`` into ``learner`` and the global RNGs; return (epochs done, history).

    Raises ValueError when ``state`` has another format or was saved for another config.
    """
    if state.get("format") != STATE_FORMAT:
        raise ValueError(f"training state format {state.get('format')!r} is not {STATE_FORMAT}")
    # Where a run executes is not part of what it is: a run may resume on other hardware
    # or at another thread count (it then continues with other, equally valid, floats).
    saved = RunConfig.from_dict(state["config"]).replace(device=config.device, threads=config.threads)
    if saved != config:
        changed = sorted(k for k, v in config.to_dict().items() if saved.to_dict()[k] != v)
        raise ValueError(f"resume_state was saved for a different config (fields differ: {', '.join(changed)})")
    learner.model.load_state_dict(state["model"])
    learner.optimizer.load_state_dict(state["optimizer"])
    learner.scheduler.load_state_dict(state["scheduler"])
    learner.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    return int(state["epoch"]), [dict(h) for h in state["history"]]
