"""The training loop: plain PyTorch, no Ray or MLflow.

One loop serves both stages: a teacher is trained with ``loss="ce"`` and no teacher;
a student is distilled from a fixed teacher with the configured loss. Callers observe
progress through ``on_epoch`` and can save the full state it hands them; passing that
state back as ``resume_state`` continues the run exactly where it stopped.

Metrics per epoch (accuracies in [0, 1], times in seconds):
``epoch`` (1-based), ``train_loss`` (mean total loss over the epoch's samples),
``train_acc`` (on the noisy training labels and augmented views actually trained on),
``val_acc``, ``test_acc``, ``test_logit_mse`` (student vs teacher logits on the test
set, mean over samples and classes), ``test_agreement`` (top-1 agreement with the
teacher on the test set), ``lr`` (learning rate used during the epoch),
``epoch_time_s`` (wall time of the epoch, training and evaluation) and
``teacher_forward_samples`` (samples the teacher network ran forward on during the
epoch: its training views, plus the test set in a run's first epoch; 0 when cached
:class:`~kd_tune.teacher_logits.TeacherLogits` supply the teacher's outputs).
Metrics that need a missing part (no validation split, no teacher) are NaN.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from kd_tune import models
from kd_tune.config import RunConfig
from kd_tune.data import Dataset, epoch_batches, load_dataset
from kd_tune.evaluation import accuracy, predict_logits, teacher_agreement
from kd_tune.losses import make_loss
from kd_tune.optim import build_optimizer, build_scheduler
from kd_tune.runtime import amp_dtype, autocast, resolve_device, rng_state, seed_everything, set_rng_state
from kd_tune.teacher_logits import TeacherLogits

STATE_FORMAT = 1
COMPLETED = "completed"
DIVERGED = "diverged"

EpochHook = Callable[[dict[str, float], Callable[[], dict[str, Any]]], None]


@dataclass(frozen=True, eq=False)
class TrainResult:
    """Outcome of :func:`train`.

    ``status`` is ``completed`` or ``diverged``; ``diverged_epoch`` is the 1-based epoch
    whose loss was NaN or infinite (None otherwise); ``history`` has one metrics dict
    per epoch run; ``model`` is the trained network (in eval mode).
    """

    status: str
    history: tuple[dict[str, float], ...]
    model: nn.Module = field(repr=False)
    diverged_epoch: int | None = None

    @property
    def final(self) -> dict[str, float]:
        """Metrics of the last epoch run (empty if none ran)."""
        return dict(self.history[-1]) if self.history else {}


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
) -> TrainResult:
    """Train ``config.student`` on ``data`` with ``config.loss`` against ``teacher``.

    Args:
        config: the run; validated here. For a teacher use ``config.teacher_config()``.
        data: the data set (default: :func:`load_data` of ``config``).
        teacher: fixed teacher network, required unless ``config.loss == "ce"``; it is
            kept in eval mode without gradients. With ``ce`` it is optional and only
            feeds the teacher-agreement metrics.
        teacher_logits: the teacher's outputs computed ahead
            (:func:`kd_tune.teacher_logits.compute_teacher_logits` for this config, or
            :mod:`kd_tune.logit_cache`), used instead of running ``teacher``; give one
            of the two. The student is the same as with the teacher online.
        on_epoch: called after every epoch with the metrics and a function that
            returns the full training state (for checkpoints).
        resume_state: a state from ``on_epoch`` to continue from.
    """
    config.validate()
    if teacher is not None and teacher_logits is not None:
        raise ValueError("give teacher or teacher_logits, not both")
    if teacher is None and teacher_logits is None and config.loss != "ce":
        raise ValueError(f"loss={config.loss!r} needs a teacher; only loss='ce' trains without one")
    device = resolve_device(config.device)
    seed_everything(config.seed, config.deterministic)
    data = data if data is not None else load_data(config)
    if teacher_logits is not None:
        teacher_logits.check(data, config.epochs)
    model = models.build(config.student, data.num_classes, data.in_channels).to(device)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config)
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype(device) == torch.float16)
    loss_fn = make_loss(config.loss, tau=config.tau, alpha=config.alpha)

    history: list[dict[str, float]] = []
    start_epoch = 0
    if resume_state is not None:
        _check_resumable(resume_state, config)
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        scaler.load_state_dict(resume_state["scaler"])
        set_rng_state(resume_state["rng"])
        history = [dict(h) for h in resume_state["history"]]
        start_epoch = int(resume_state["epoch"])

    # Small data sets live on the device whole: no loader, no per-item Python.
    train_x = data.train.images.to(device)
    train_y = data.train.labels.to(device)
    if teacher is not None:
        teacher = teacher.to(device).eval().requires_grad_(False)
    eval_args = {"device": device, "amp": use_amp}
    # The teacher is fixed: its evaluation logits are computed once per run.
    teacher_test = None
    teacher_samples = 0
    if teacher_logits is not None:
        teacher_test = teacher_logits.test.to(device).float()
    elif teacher is not None:
        teacher_test = predict_logits(teacher, data.test.images, data.normalize, **eval_args)
        teacher_samples = len(data.test)
    distil = config.loss != "ce"

    def state() -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "epoch": len(history),
            "config": config.to_dict(),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rng_state(),
            "history": [dict(h) for h in history],
        }

    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        model.train()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        # One epoch's cached views move to the device once (a no-op for memory-mapped CPU logits).
        cached = teacher_logits.epoch_view(epoch).to(device) if teacher_logits is not None and distil else None
        for idx, images in epoch_batches(train_x, seed=config.seed, epoch=epoch, batch_size=config.batch_size,
                                         augment=data.augment):
            x = data.normalize(images)
            y = train_y[idx]
            target = None
            with autocast(device, use_amp):
                student_logits = model(x)
                if teacher is not None and distil:
                    with torch.no_grad():
                        target = teacher(x)
                    teacher_samples += len(idx)
            if cached is not None:
                target = cached[idx]
            # Losses in float32 whatever autocast did: small tau divides logits.
            loss = loss_fn(student_logits.float(), None if target is None else target.float(), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            # Accumulated on the device: no host sync per step.
            loss_sum += loss.detach() * len(idx)
            correct += (student_logits.argmax(1) == y).sum()
        scheduler.step()

        train_loss = loss_sum.item() / len(train_y)
        metrics: dict[str, float] = {"epoch": epoch + 1, "train_loss": train_loss, "lr": lr,
                                     "teacher_forward_samples": teacher_samples}
        teacher_samples = 0
        if not math.isfinite(train_loss):
            metrics.update(dict.fromkeys(["train_acc", "val_acc", "test_acc", "test_logit_mse", "test_agreement"], math.nan))
            metrics["epoch_time_s"] = time.perf_counter() - started
            history.append(metrics)
            if on_epoch is not None:
                on_epoch(dict(metrics), state)
            return TrainResult(DIVERGED, tuple(history), model.eval(), diverged_epoch=epoch + 1)
        test_logits = predict_logits(model, data.test.images, data.normalize, **eval_args)
        val_logits = predict_logits(model, data.val.images, data.normalize, **eval_args)
        logit_mse, agreement = teacher_agreement(test_logits, teacher_test)
        metrics.update(
            train_acc=correct.item() / len(train_y),
            val_acc=accuracy(val_logits, data.val.labels),
            test_acc=accuracy(test_logits, data.test.labels),
            test_logit_mse=logit_mse,
            test_agreement=agreement,
            epoch_time_s=time.perf_counter() - started,
        )
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(dict(metrics), state)
    return TrainResult(COMPLETED, tuple(history), model.eval())


def _check_resumable(state: dict[str, Any], config: RunConfig) -> None:
    if state.get("format") != STATE_FORMAT:
        raise ValueError(f"training state format {state.get('format')!r} is not {STATE_FORMAT}")
    # Where a run executes is not part of what it is: a run may resume on other hardware.
    saved = RunConfig.from_dict(state["config"]).replace(device=config.device)
    if saved != config:
        changed = sorted(k for k, v in config.to_dict().items() if saved.to_dict()[k] != v)
        raise ValueError(f"resume_state was saved for a different config (fields differ: {', '.join(changed)})")
