"""Deterministic, stratified carving of a validation split out of a training pool."""

from __future__ import annotations

import numpy as np


def stratified_split(labels: np.ndarray, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return sorted index arrays ``(train_idx, val_idx)`` with ``len(val_idx) == val_size``.

    Each class contributes ``val_size * n_c / N`` samples, rounded by largest remainder
    (ties to the lower class index), so class proportions in the validation split match the
    pool to within one sample per class; which samples of a class are taken is drawn with
    ``numpy.random.default_rng(seed)``. The quota of a class never exceeds its size
    because ``val_size < N``. Indices are returned sorted so both splits keep pool order.
    """
    labels = np.asarray(labels)
    total = labels.shape[0]
    if isinstance(val_size, bool) or not isinstance(val_size, (int, np.integer)):
        raise ValueError(f"val_size={val_size!r} must be an integer")
    if not 0 <= val_size < total:
        raise ValueError(
            f"val_size={val_size} must be in [0, {total - 1}]: the training pool has {total} samples "
            f"and at least one must stay for training"
        )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"split_seed={seed!r} must be a non-negative integer")
    if val_size == 0:
        return np.arange(total, dtype=np.int64), np.zeros(0, dtype=np.int64)

    classes, counts = np.unique(labels, return_counts=True)
    exact = val_size * counts / total
    quota = np.floor(exact).astype(np.int64)
    shortfall = val_size - int(quota.sum())
    # Stable sort on the negative remainder: largest remainder first, ties by class order.
    order = np.argsort(-(exact - quota), kind="stable")
    quota[order[:shortfall]] += 1

    rng = np.random.default_rng(seed)
    chosen = []
    for cls, take in zip(classes, quota):
        members = np.flatnonzero(labels == cls)
        # Permute every class (even when take == 0) so the stream does not depend on quotas.
        chosen.append(rng.permutation(members)[:take])
    val_idx = np.sort(np.concatenate(chosen)).astype(np.int64)
    keep = np.ones(total, dtype=bool)
    keep[val_idx] = False
    return np.flatnonzero(keep).astype(np.int64), val_idx
