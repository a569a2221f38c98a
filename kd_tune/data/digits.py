"""scikit-learn's bundled handwritten digits (8x8, grey levels 0..16): works offline.

The 1797 images are split once into a fixed test set of 360 samples (stratified,
``random_state=0``) and a training pool of 1437; the split does not depend on any
user seed so every run of the study tests on the same images.
"""

from __future__ import annotations

import numpy as np
import torch

from kd_tune.data.base import SourceData, Split

TEST_SIZE = 360
MAX_VALUE = 16.0  # load_digits stores integer grey levels 0..16


def load_digits_source(data_dir: str | None = None, download: bool = False) -> SourceData:
    """Loader for ``digits``; ``data_dir`` and ``download`` are unused (data ship with sklearn)."""
    # Imported here: scikit-learn is slow to import and only this data set needs it.
    # scikit-learn costs 1.7 CPU-s to import: only a digits run pays it.
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.rint(bunch.images).astype(np.uint8)[:, None, :, :]  # (N, 1, 8, 8)
    labels = bunch.target.astype(np.int64)
    pool_idx, test_idx = train_test_split(
        np.arange(labels.size), test_size=TEST_SIZE, stratify=labels, random_state=0
    )
    # Sorted so the order of the pool does not depend on how sklearn shuffles internally.
    pool_idx, test_idx = np.sort(pool_idx), np.sort(test_idx)

    pool = images[pool_idx].astype(np.float64) / MAX_VALUE
    mean = tuple(float(m) for m in pool.mean(axis=(0, 2, 3)))
    std = tuple(float(s) for s in pool.std(axis=(0, 2, 3)))
    return SourceData(
        train=Split(torch.from_numpy(images[pool_idx]), torch.from_numpy(labels[pool_idx])),
        test=Split(torch.from_numpy(images[test_idx]), torch.from_numpy(labels[test_idx])),
        num_classes=10,
        max_value=MAX_VALUE,
        mean=mean,
        std=std,
        class_names=tuple(str(c) for c in range(10)),
    )
