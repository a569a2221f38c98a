"""What a training epoch feeds the network: the sample order and each sample's view.

Both are pure functions of (seed, epoch) and the sample indices, so the student's
training loop and the teacher-logit cache (:mod:`kd_tune.train.teacher_logits`) produce the
very same batches from the same call, and a resumed run sees the batches an
uninterrupted one would.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch

from kd_tune.data.augment import augment_batch


def epoch_order(num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    """The sample order of one epoch: a permutation drawn from (seed, epoch) alone.

    Depending on nothing else (not on the global RNG or earlier epochs) is what makes
    a resumed run see exactly the batches an uninterrupted one would.
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_samples, generator=generator)


def epoch_batches(
    images: torch.Tensor, *, seed: int, epoch: int, batch_size: int, augment: bool
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(indices, views)`` per batch of epoch ``epoch`` (0-based) over uint8 ``images``.

    ``indices`` are dataset indices on the images' device; ``views`` are the raw uint8
    images, cropped and flipped by :func:`~kd_tune.data.augment_batch` when ``augment``
    (the view of a sample depends on (seed, epoch, index) only).
    """
    for idx in epoch_order(len(images), seed, epoch).to(images.device).split(batch_size):
        views = images[idx]
        if augment:
            views = augment_batch(views, idx, epoch=epoch, seed=seed)
        yield idx, views
