"""Teachers: training one with cross-entropy, saving it, and loading it for distillation."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from kd_tune import models
from kd_tune.checkpoint import load_state, save_state
from kd_tune.config import RunConfig
from kd_tune.data import Dataset
from kd_tune.trainer import EpochHook, TrainResult, train

TEACHER_FORMAT = 1


def train_teacher(config: RunConfig, *, data: Dataset | None = None, on_epoch: EpochHook | None = None) -> TrainResult:
    """Train the teacher of ``config`` (the CE run of ``config.teacher_config()``)."""
    return train(config.teacher_config(), data=data, on_epoch=on_epoch)


def save_teacher(path: str | os.PathLike, config: RunConfig, result: TrainResult, data: Dataset) -> Path:
    """Store a trained teacher with the config that trained it and its final metrics."""
    return save_state(
        path,
        {
            "format": TEACHER_FORMAT,
            "arch": config.teacher,
            "num_classes": data.num_classes,
            "in_channels": data.in_channels,
            "config": config.teacher_config().to_dict(),
            "metrics": result.final,
            "model": result.model.state_dict(),
        },
    )


def load_teacher(path: str | os.PathLike, config: RunConfig, data: Dataset) -> tuple[nn.Module, dict[str, Any]]:
    """Load a teacher saved by :func:`save_teacher` for distilling ``config`` on ``data``.

    Returns the network (eval mode, no gradients) and the stored metadata. Raises
    ValueError when the file's architecture, data set or class count do not fit.
    """
    return teacher_from_state(load_state(path), config, data, path=path)


def teacher_from_state(state: dict[str, Any], config: RunConfig, data: Dataset,
                       *, path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """The teacher held in ``state``, a :func:`save_teacher` file already read from ``path``
    (named in errors); see :func:`load_teacher`."""
    if state.get("format") != TEACHER_FORMAT:
        raise ValueError(f"{path}: not a kd-tune teacher file (format {state.get('format')!r})")
    saved_dataset = state["config"].get("dataset")
    mismatches = [
        f"{what}: file has {have!r}, run needs {want!r}"
        for what, have, want in (
            ("architecture", state["arch"], config.teacher),
            ("dataset", saved_dataset, config.dataset),
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
