"""SGD and learning-rate schedules of the paper's recipe."""
from __future__ import annotations

import torch
from torch import nn

from kd_tune.core.config import RunConfig


def build_optimizer(model: nn.Module, config: RunConfig) -> torch.optim.SGD:
    """SGD with momentum (Nesterov by default); weight decay only on parameters with >1 dim.

    One-dimensional parameters are BN weights and biases and layer biases; the paper's
    code excludes exactly those from weight decay.
    """
    decayed = [p for p in model.parameters() if p.ndim > 1]
    plain = [p for p in model.parameters() if p.ndim <= 1]
    return torch.optim.SGD(
        [{"params": decayed, "weight_decay": config.weight_decay}, {"params": plain, "weight_decay": 0.0}],
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
    )


def build_scheduler(optimizer: torch.optim.Optimizer, config: RunConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch schedule: ``step`` (x gamma at each milestone), ``cosine`` (to 0 at the end), ``constant``."""
    if config.schedule == "step":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(config.milestones), gamma=config.gamma)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
