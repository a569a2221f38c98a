"""augment_batch: per-sample views fixed by (seed, epoch, index), true crops of the padded image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kd_tune.data import augment_batch, augment_params
from kd_tune.data.augment import _mix32


def _images(n: int, c: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    # Values >= 1 so zero padding is distinguishable from image content.
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (n, c, size, size), generator=gen, dtype=torch.uint8)


def _reference(image: torch.Tensor, dy: int, dx: int, flip: bool, padding: int = 4) -> torch.Tensor:
    """One sample the slow, obvious way: zero-pad, slice the window, maybe mirror."""
    h, w = image.shape[-2:]
    padded = F.pad(image.to(torch.int32), (padding,) * 4).to(torch.uint8)
    window = padded[:, dy : dy + h, dx : dx + w]
    return window.flip(-1) if flip else window


def test_mix32_matches_plain_uint32_arithmetic():
    values = np.random.default_rng(0).integers(0, 2**32, size=1000, dtype=np.uint64).astype(np.uint32)

    def lowbias32(x: np.ndarray) -> np.ndarray:
        x = x.copy()
        x ^= x >> np.uint32(16)
        x *= np.uint32(0x7FEB352D)  # wraps modulo 2**32 in uint32
        x ^= x >> np.uint32(15)
        x *= np.uint32(0x846CA68B)
        x ^= x >> np.uint32(16)
        return x

    ours = _mix32(torch.from_numpy(values.astype(np.int64))).numpy()
    assert np.array_equal(ours, lowbias32(values).astype(np.int64))
    assert [_mix32(int(v)) for v in values[:20]] == ours[:20].tolist()


def test_shape_dtype_and_matches_reference():
    images = _images(16)
    indices = torch.arange(100, 116)
    out = augment_batch(images, indices, epoch=3, seed=7)
    assert out.shape == images.shape and out.dtype == torch.uint8
    dy, dx, flip = augment_params(indices, epoch=3, seed=7)
    for n in range(16):
        expected = _reference(images[n], int(dy[n]), int(dx[n]), bool(flip[n]))
        assert torch.equal(out[n], expected)


def test_crops_are_shifted_windows_of_the_padded_image():
    # Independent of augment_params: search all 9 x 9 x 2 views for one that matches.
    images = _images(12, c=2)
    out = augment_batch(images, torch.arange(12), epoch=0, seed=1)
    for n in range(12):
        matches = [
            (dy, dx, flip)
            for dy in range(9) for dx in range(9) for flip in (False, True)
            if torch.equal(out[n], _reference(images[n], dy, dx, flip))
        ]
        assert len(matches) == 1


def test_deterministic_and_independent_of_batch_order():
    images = _images(32)
    indices = torch.randperm(1000, generator=torch.Generator().manual_seed(0))[:32]
    out = augment_batch(images, indices, epoch=5, seed=11)
    assert torch.equal(out, augment_batch(images, indices, epoch=5, seed=11))
    perm = torch.randperm(32, generator=torch.Generator().manual_seed(1))
    assert torch.equal(augment_batch(images[perm], indices[perm], epoch=5, seed=11), out[perm])
    # A sample alone in its batch gets the same view as inside the big batch.
    assert torch.equal(augment_batch(images[4:5], indices[4:5], epoch=5, seed=11), out[4:5])
    # int32 indices give the same views as int64 ones.
    assert torch.equal(augment_batch(images, indices.to(torch.int32), epoch=5, seed=11), out)


def test_about_half_flipped_and_offsets_uniform():
    n = 4000
    # Column j holds j + 1: after cropping, the non-zero values increase left to right
    # unless the view was mirrored, so flips can be read off the output.
    ramp = (torch.arange(8, dtype=torch.uint8) + 1).expand(n, 1, 8, 8).contiguous()
    out = augment_batch(ramp, torch.arange(n), epoch=2, seed=3)
    # Column profile: the max over rows is the column's value if any image row is visible
    # (a crop always shows at least 4 of the 8 rows and 4 of the 8 columns), else 0.
    profile = out[:, 0].max(dim=1).values.to(torch.int64)  # (n, W)
    visible = profile > 0
    assert torch.all(visible.sum(1) >= 4)
    masked_min = torch.where(visible, profile, torch.full_like(profile, 100))
    flipped = profile.argmax(1) < masked_min.argmin(1)
    assert 0.46 < flipped.float().mean().item() < 0.54
    dy, dx, flip = augment_params(torch.arange(n), epoch=2, seed=3)
    assert torch.equal(flip, flipped)
    for offsets in (dy, dx):
        freq = torch.bincount(offsets, minlength=9).double() / n
        assert offsets.min() == 0 and offsets.max() == 8
        assert torch.all((freq - 1 / 9).abs() < 0.025)


def test_epochs_and_seeds_give_different_views():
    images = _images(200)
    indices = torch.arange(200)
    base = augment_batch(images, indices, epoch=0, seed=0)
    for kwargs in (dict(epoch=1, seed=0), dict(epoch=0, seed=1), dict(epoch=0, seed=2**40)):
        other = augment_batch(images, indices, **kwargs)
        same = (other == base).flatten(1).all(1).float().mean().item()
        assert same < 0.05  # 1 / 162 expected by chance
    # Neighbouring indices are not correlated either.
    shifted = augment_params(indices + 1, epoch=0, seed=0)
    plain = augment_params(indices, epoch=0, seed=0)
    assert (shifted[0] == plain[0]).float().mean() < 0.25


def test_padding_zero_is_identity_or_flip():
    images = _images(20)
    out = augment_batch(images, torch.arange(20), epoch=0, seed=0, padding=0)
    _, _, flip = augment_params(torch.arange(20), epoch=0, seed=0, padding=0)
    expected = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
    assert torch.equal(out, expected)


def test_bad_arguments():
    images = _images(4)
    with pytest.raises(ValueError, match="indices"):
        augment_batch(images, torch.arange(3), epoch=0, seed=0)
    with pytest.raises(ValueError, match="epoch"):
        augment_batch(images, torch.arange(4), epoch=-1, seed=0)
    with pytest.raises(ValueError, match="indices"):
        augment_batch(images, torch.arange(4.0), epoch=0, seed=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    images = _images(64)
    indices = torch.arange(64) * 997
    cpu = augment_batch(images, indices, epoch=4, seed=9)
    gpu = augment_batch(images.cuda(), indices.cuda(), epoch=4, seed=9)
    assert gpu.device.type == "cuda" and torch.equal(gpu.cpu(), cpu)
