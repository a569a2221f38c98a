"""Evaluation of a classifier on a data split: logits (and penultimate features), accuracy,
agreement with a teacher."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from kd_tune.core.runtime import autocast
from kd_tune.data import Dataset

EVAL_BATCH = 1024


def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    *,
    device: torch.device,
    amp: bool = False,
    batch_size: int = EVAL_BATCH,
) -> torch.Tensor:
    """Raw float32 logits (N, K) of ``model`` in eval mode on uint8 ``images`` (N, C, H, W).

    The caller's train/eval mode is restored afterwards.
    """
    return predict_outputs(model, images, normalize, device=device, amp=amp, batch_size=batch_size)[0]


@torch.no_grad()
def predict_outputs(
    model: nn.Module,
    images: torch.Tensor,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    *,
    device: torch.device,
    amp: bool = False,
    batch_size: int = EVAL_BATCH,
    features: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Raw float32 logits (N, K) and, with ``features``, the float32 penultimate features
    (N, F) of ``model`` in eval mode on uint8 ``images`` (N, C, H, W); None otherwise.

    The caller's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    logits, feats = [], []
    for chunk in images.split(batch_size):
        with autocast(device, amp):
            out = model(normalize(chunk.to(device, non_blocking=True)), return_features=features)
        if features:
            out, rep = out
            feats.append(rep.float())
        logits.append(out.float())
    model.train(was_training)
    if not logits:
        return torch.empty(0, 0, device=device), (torch.empty(0, 0, device=device) if features else None)
    return torch.cat(logits), (torch.cat(feats) if features else None)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in [0, 1]; NaN for an empty split."""
    if len(labels) == 0:
        return math.nan
    return (logits.argmax(1) == labels.to(logits.device)).float().mean().item()


def teacher_agreement(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None) -> tuple[float, float]:
    """(logit MSE averaged over samples and classes, top-1 agreement in [0, 1]); NaNs without teacher."""
    if teacher_logits is None or len(student_logits) == 0:
        return math.nan, math.nan
    mse = (student_logits - teacher_logits).pow(2).mean().item()
    agree = (student_logits.argmax(1) == teacher_logits.argmax(1)).float().mean().item()
    return mse, agree


def evaluate(
    model: nn.Module,
    data: Dataset,
    teacher_test: torch.Tensor | None,
    *,
    device: torch.device,
    amp: bool = False,
    test_logits: torch.Tensor | None = None,
) -> dict[str, float]:
    """A model's epoch-end metrics on ``data``'s validation and test splits.

    Returns ``val_acc`` and ``test_acc`` (top-1 on the unaugmented images, in [0, 1];
    NaN for an empty split), ``test_logit_mse`` and ``test_agreement`` (against the
    teacher's test logits ``teacher_test``; NaN without them), in that order.
    ``test_logits``: the model's test logits when the caller has them already.
    """
    if test_logits is None:
        test_logits = predict_logits(model, data.test.images, data.normalize, device=device, amp=amp)
    val_logits = predict_logits(model, data.val.images, data.normalize, device=device, amp=amp)
    logit_mse, agreement = teacher_agreement(test_logits, teacher_test)
    return {
        "val_acc": accuracy(val_logits, data.val.labels),
        "test_acc": accuracy(test_logits, data.test.labels),
        "test_logit_mse": logit_mse,
        "test_agreement": agreement,
    }
