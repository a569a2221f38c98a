"""Batch-level RandomCrop(pad) + horizontal flip whose randomness is a pure function of
(seed, epoch, sample index).

Each sample's crop offset and flip come from a counter-based hash instead of a stateful
random generator, so the view a sample gets in an epoch does not depend on which batch it
lands in, the batch order, the number of data-loader workers or the device. That lets a
fixed teacher's logits for every (epoch, sample) view be computed once and reused by many
students.

The hash is 32-bit ``lowbias32`` (C. Wellons' integer hash prospector). All arithmetic is
done in int64 with values kept below 2**32 and multiplications split into 16-bit halves,
so nothing overflows: results are exact and identical for Python ints, CPU tensors and
CUDA tensors.
"""

from __future__ import annotations

from typing import TypeVar

import torch

_MASK32 = 0xFFFFFFFF
_Int = TypeVar("_Int", int, torch.Tensor)

# Distinct stream constants (odd, 32-bit) for the three per-sample draws.
_STREAM_DY, _STREAM_DX, _STREAM_FLIP = 0x9E3779B9, 0x85EBCA77, 0xC2B2AE3D


def _mul32(x: _Int, constant: int) -> _Int:
    """``(x * constant) mod 2**32`` for ``0 <= x < 2**32`` without exceeding 2**48."""
    low, high = constant & 0xFFFF, constant >> 16
    return ((x * low) + (((x * high) & 0xFFFF) << 16)) & _MASK32


def _mix32(x: _Int) -> _Int:
    """lowbias32: a bijective avalanche mix of a 32-bit value (input masked to 32 bits)."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _key(seed: int, epoch: int) -> int:
    """Fold an arbitrary non-negative (seed, epoch) pair into one 32-bit key."""
    key = 0x6A09E667
    for value in (seed, epoch):
        # Feed every 32-bit word so large seeds are not truncated, and the word count so
        # (seed, epoch) pairs cannot alias by shifting words between them.
        words = [value & _MASK32]
        value >>= 32
        while value:
            words.append(value & _MASK32)
            value >>= 32
        for word in words + [len(words)]:
            key = _mix32(key ^ word)
    return key


def augment_params(
    indices: torch.Tensor, *, epoch: int, seed: int, padding: int = 4
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample ``(dy, dx, flip)`` for sample ``indices``, on the indices' device.

    ``dy, dx`` (int64, in ``[0, 2 * padding]``) are the top-left corner of the crop window
    in the zero-padded image; ``flip`` (bool) says whether the crop is mirrored left-right.
    """
    for name, value in (("epoch", epoch), ("seed", seed), ("padding", padding)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name}={value!r} must be a non-negative integer")
    if indices.dim() != 1 or indices.dtype.is_floating_point or indices.dtype == torch.bool:
        raise ValueError(f"indices must be a 1-D integer tensor, got {indices.dtype} {tuple(indices.shape)}")
    idx = indices.to(torch.int64)
    # Indices above 2**32 are folded in through their high word rather than wrapped.
    base = _mix32(_mix32((idx & _MASK32) ^ _key(seed, epoch)) ^ (idx >> 32))
    span = 2 * padding + 1
    # Modulo bias is < span / 2**32, far below anything measurable.
    dy = _mix32(base ^ _STREAM_DY) % span
    dx = _mix32(base ^ _STREAM_DX) % span
    flip = (_mix32(base ^ _STREAM_FLIP) & 1) == 1
    return dy, dx, flip


def augment_batch(
    images: torch.Tensor, indices: torch.Tensor, *, epoch: int, seed: int, padding: int = 4
) -> torch.Tensor:
    """RandomCrop(H x W, padding, zero fill) + random horizontal flip (p = 0.5) of a batch.

    images: raw ``(N, C, H, W)`` tensor (uint8 pixels, before normalisation, so the padding
    is pixel value 0 as in torchvision's ``RandomCrop(32, padding=4)``); indices: ``(N,)``
    dataset indices of the samples. Returns a new tensor of the same shape, dtype and
    device. Sample ``n`` gets the view fixed by ``(seed, epoch, indices[n])`` only.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if indices.shape != (images.shape[0],):
        raise ValueError(f"indices must have shape ({images.shape[0]},), got {tuple(indices.shape)}")
    dy, dx, flip = augment_params(indices.to(images.device), epoch=epoch, seed=seed, padding=padding)
    n, c, h, w = images.shape
    padded = images.new_zeros((n, c, h + 2 * padding, w + 2 * padding))
    padded[:, :, padding : padding + h, padding : padding + w] = images
    device = images.device
    rows = torch.arange(h, device=device).unsqueeze(0) + dy.unsqueeze(1)  # (N, H)
    cols = torch.arange(w, device=device).unsqueeze(0) + dx.unsqueeze(1)  # (N, W)
    # A flipped view reads the crop's columns right to left.
    cols = torch.where(flip.unsqueeze(1), cols.flip(1), cols)
    batch = torch.arange(n, device=device)
    # Advanced indices around the channel slice put (N, H, W) first, channels last.
    view = padded[batch[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return view.permute(0, 3, 1, 2).contiguous()
