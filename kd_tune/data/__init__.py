"""Data sets as in-memory uint8 tensors, validation carving, label noise and augmentation.

Public entry point: :func:`load_dataset`. Built-in data sets: ``digits`` (scikit-learn,
offline), ``cifar10`` and ``cifar100`` (torchvision's on-disk layout). More can be added
with :func:`register_dataset`, which also fixes whether the data set is trained with
augmentation (:func:`dataset_augments`) and whether it is read from ``data_dir``
(:func:`dataset_needs_files`).

May import: :mod:`kd_tune.storage` (noisy labels are persisted on a storage) and
:mod:`kd_tune.core`. Independent of :mod:`kd_tune.models`.
"""

from kd_tune.data.augment import augment_batch, augment_params
from kd_tune.data.base import DataError, SourceData, Split
from kd_tune.data.datasets import (
    DATASETS,
    Dataset,
    dataset_augments,
    dataset_names,
    dataset_needs_files,
    load_dataset,
    register_dataset,
)
from kd_tune.data.noise import (
    apply_label_noise,
    asymmetric_map,
    label_hash,
    load_noisy_labels,
    save_noisy_labels,
)
from kd_tune.data.order import epoch_batches, epoch_order

__all__ = [
    "DATASETS",
    "DataError",
    "Dataset",
    "SourceData",
    "Split",
    "apply_label_noise",
    "asymmetric_map",
    "augment_batch",
    "augment_params",
    "dataset_augments",
    "dataset_names",
    "dataset_needs_files",
    "epoch_batches",
    "epoch_order",
    "label_hash",
    "load_dataset",
    "load_noisy_labels",
    "register_dataset",
    "save_noisy_labels",
]
