"""Teachers: training one (any node of a teacher DAG), saving it, and loading it for distillation."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kd_tune import models
from kd_tune.core.config import RunConfig
from kd_tune.core.runtime import resolve_device
from kd_tune.core.status import TrialStatus
from kd_tune.data import Dataset
from kd_tune.plan.teacher_dag import TeacherNode
from kd_tune.train.checkpoint import load_state, save_state
from kd_tune.train.evaluation import accuracy, predict_logits, predict_outputs
from kd_tune.train.measurements import measure
from kd_tune.train.trainer import EpochHook, TrainResult, train

TEACHER_FORMAT = 1


class MeanLogits(nn.Module):
    """An ensemble: the mean of its members' raw logits (not their sum, nor the mean of
    their probabilities), computed in float32.

    With ``return_features`` it also returns the members' penultimate features side by
    side (``(B, sum of the members' feature_dim)``), the representation the ensemble's
    logits are a linear function of.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.feature_dim = sum(int(getattr(m, "feature_dim", 0)) for m in members)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor | tuple[torch.Tensor,
                                                                                               torch.Tensor]:
        outputs = [m(x, return_features=return_features) for m in self.members]
        logits = [o[0] if return_features else o for o in outputs]
        mean = torch.stack([z.float() for z in logits]).mean(0)
        if return_features:
            return mean, torch.cat([o[1].float() for o in outputs], dim=1)
        return mean


def train_teacher(config: RunConfig, *, data: Dataset | None = None, on_epoch: EpochHook | None = None) -> TrainResult:
    """Train the teacher of ``config`` (the CE run of ``config.teacher_config()``; ``config.teacher``
    one architecture)."""
    return train(config.teacher_config(), data=data, on_epoch=on_epoch)


def train_node(node: TeacherNode, data: Dataset, sources: Sequence[nn.Module], *,
               on_epoch: EpochHook | None = None) -> TrainResult:
    """Make teacher ``node`` on ``data`` (its run's data) from the networks of its sources, in order.

    ``ce``: its run; ``undertrained``: its run stopped after ``stop_epoch`` (the
    schedule is that of all the run's epochs); ``sequential``: its run distilled from
    ``sources[0]`` (run online); ``ensemble``: no training: the :class:`MeanLogits` of
    ``sources``, evaluated once, with a history of one entry at epoch 0 (``train_acc`` on
    the unaugmented training images and their labels, ``val_acc``, ``test_acc``).
    """
    if node.kind == "ensemble":
        return _evaluate_ensemble(MeanLogits(sources), data, node.run)
    teacher = sources[0] if node.kind == "sequential" else None
    return train(node.run, data=data, teacher=teacher, on_epoch=on_epoch, stop_epoch=node.stop_epoch)


def _evaluate_ensemble(model: MeanLogits, data: Dataset, run: RunConfig) -> TrainResult:
    device = resolve_device(run.device)
    amp = run.amp and device.type == "cuda"
    model = model.to(device).eval().requires_grad_(False)
    train_logits = predict_logits(model, data.train.images, data.normalize, device=device, amp=amp)
    val_logits = predict_logits(model, data.val.images, data.normalize, device=device, amp=amp)
    test_logits, features = predict_outputs(model, data.test.images, data.normalize, device=device, amp=amp,
                                            features=True)
    metrics = {"epoch": 0, "train_acc": accuracy(train_logits, data.train.labels),
               "val_acc": accuracy(val_logits, data.val.labels), "test_acc": accuracy(test_logits, data.test.labels)}
    measured = measure(test_logits, data.test.labels, features) if len(data.test) else None
    return TrainResult(TrialStatus.COMPLETED, (metrics,), model, measurements=measured)


def teacher_state(run: RunConfig, result: TrainResult, data: Dataset) -> dict[str, Any]:
    """What a teacher file holds: the trained network, the run that trained it (``run.student``
    is its architecture) and its final metrics."""
    return {
        "format": TEACHER_FORMAT,
        "arch": run.student,
        "num_classes": data.num_classes,
        "in_channels": data.in_channels,
        "config": run.to_dict(),
        "metrics": result.final,
        "model": result.model.state_dict(),
    }


def save_teacher(path: str | os.PathLike, run: RunConfig, result: TrainResult, data: Dataset) -> Path:
    """Store a trained network with the run that trained it (``run.student`` is its
    architecture) and its final metrics (:func:`teacher_state`)."""
    return save_state(path, teacher_state(run, result, data))


def load_teacher(path: str | os.PathLike, config: RunConfig, data: Dataset) -> tuple[nn.Module, dict[str, Any]]:
    """Load a teacher saved by :func:`save_teacher` for distilling ``config`` on ``data``.

    Returns the network (eval mode, no gradients) and the stored metadata. Raises
    ValueError when the file's architecture (``config.teacher``), data set or class
    count do not fit.
    """
    return teacher_from_state(load_state(path), config.teacher, config.dataset, data, path=path)


def teacher_from_state(state: dict[str, Any], arch: str, dataset: str, data: Dataset,
                       *, path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """The network held in ``state``, a :func:`save_teacher` file already read from ``path``
    (named in errors), checked to be ``arch`` trained on ``dataset`` for ``data``'s shape;
    see :func:`load_teacher`."""
    if state.get("format") != TEACHER_FORMAT:
        raise ValueError(f"{path}: not a kd-tune teacher file (format {state.get('format')!r})")
    saved_dataset = state["config"].get("dataset")
    mismatches = [
        f"{what}: file has {have!r}, run needs {want!r}"
        for what, have, want in (
            ("architecture", state["arch"], arch),
            ("dataset", saved_dataset, dataset),
            ("num_classes", state["num_classes"], data.num_classes),
            ("in_channels", state["in_channels"], data.in_channels),
        )
        if have != want
    ]
    if mismatches:
        raise ValueError(f"teacher checkpoint {str(path)!r} does not fit this run: " + "; ".join(mismatches))
    model = models.build(state["arch"], state["num_classes"], state["in_channels"])
    model.load_state_dict(state["model"])
    meta = {k: v for k, v in state.items() if k != "model"}
    return model.eval().requires_grad_(False), meta
