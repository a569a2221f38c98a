"""The data-set registry, the :class:`Dataset` record and :func:`load_dataset`.

``load_dataset`` is the one entry point: a registered loader reads the files (training
pool + test split), then a validation split is carved from the pool, then label noise is
applied to the remaining training labels only, then (``data_fraction`` < 1) the student's
share of them is kept.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kd_tune.core.registry import Registry
from kd_tune.data.base import DataError, SourceData, Split
from kd_tune.data.cifar import load_cifar10_source, load_cifar100_source
from kd_tune.data.digits import load_digits_source
from kd_tune.data.mnist1d import generation_args, load_mnist1d_source
from kd_tune.data.noise import (
    apply_label_noise,
    asymmetric_map,
    label_hash,
    noise_file_name,
    read_noisy_labels,
    save_noisy_labels,
    validate_noise,
)
from kd_tune.data.splits import stratified_split
from kd_tune.storage.location import Storage, open_storage

Loader = Callable[..., SourceData]
"""A loader is called as ``loader(data_dir, download)`` and returns a :class:`SourceData`; the
loader of a generated data set also takes ``data_samples=`` (int or None: its canonical size)."""

DATASETS: Registry[Loader] = Registry("dataset")
"""Loaders by data-set name, each with ``augment``, ``needs_files`` (bools) and ``generation``
(None, or ``generation(data_samples) -> dict``: the generator's arguments) as info."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded data set: in-memory inputs (uint8 images or float32 signals, see
    :class:`kd_tune.data.Split`) and int64 labels for three splits.

    ``train.labels`` are the noisy labels when noise is on (``clean_train_labels`` keeps
    the originals); ``val`` is carved from the original training data and, like ``test``,
    is always clean. ``image_size`` is the height of an image or the length of a signal.
    ``mean``/``std`` are per channel in units of ``pixel / max_value``.
    ``augment`` says whether training should use :func:`kd_tune.data.augment_batch`; it is
    the flag the data set was registered with (:func:`dataset_augments`).
    ``noise_hash`` is :func:`kd_tune.data.label_hash` of the noisy training labels, or None
    without noise.
    """

    name: str
    train: Split
    val: Split
    test: Split
    clean_train_labels: torch.Tensor
    num_classes: int
    in_channels: int
    image_size: int
    max_value: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool
    class_names: tuple[str, ...]
    noise_hash: str | None

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """A uint8 ``(N, C, H, W)`` or float32 ``(N, C, L)`` batch -> float32
        ``((x / max_value) - mean) / std``, on its device."""
        mean, std = _channel_stats(self.mean, self.std, images.device, images.dim())
        return (images.to(torch.float32) / self.max_value - mean) / std


@functools.lru_cache(maxsize=32)
def _channel_stats(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device, dims: int = 4
) -> tuple[torch.Tensor, torch.Tensor]:
    # normalize() runs once per batch: building these on a GPU each time would cost
    # a host-to-device copy per step.
    shape = (1, len(mean)) + (1,) * (dims - 2)
    return tuple(torch.tensor(v, dtype=torch.float32, device=device).view(shape) for v in (mean, std))


def register_dataset(name: str, loader: Loader, *, augment: bool, needs_files: bool = False,
                     generation: Callable[[int | None], dict[str, Any]] | None = None,
                     input_shape: tuple[int, ...] | None = None) -> None:
    """Make ``loader`` available to :func:`load_dataset` under ``name``.

    ``loader(data_dir, download)`` must return a :class:`kd_tune.data.SourceData`.
    ``augment`` says whether training on this data set uses random crops and flips
    (:func:`kd_tune.data.augment_batch`); it is a property of the data set, known without
    loading it. ``needs_files`` says that the loader reads files from ``data_dir``, so a
    run without one is refused before it starts. ``generation`` marks a generated data set:
    ``generation(data_samples)`` gives the generator's arguments (recorded as the data's
    source in MLflow), and ``load_dataset(..., data_samples=N)`` asks the loader for N
    samples; other data sets refuse ``data_samples``. ``input_shape`` is one sample's shape as
    a model sees it, channels first (``(1, 8, 8)`` for an 8x8 image, ``(1, 40)`` for a signal of
    40 steps): with it, a model that cannot take the data is refused before a run starts (None:
    not checked). Registering the same loader with the same
    flags again is a no-op; anything else under a taken name is a ValueError, so built-in
    data sets cannot be replaced by accident.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"dataset name must be a non-empty string, got {name!r}")
    if not callable(loader):
        raise ValueError(f"loader for dataset {name!r} must be callable, got {type(loader).__name__}")
    # bool only: a truthy string such as "no" would silently turn augmentation on.
    for flag, value in (("augment", augment), ("needs_files", needs_files)):
        if not isinstance(value, bool):
            raise TypeError(f"{flag} for dataset {name!r} must be a bool, got {value!r}")
    if generation is not None and not callable(generation):
        raise TypeError(f"generation for dataset {name!r} must be callable or None, got {generation!r}")
    DATASETS.register(name, loader, augment=augment, needs_files=needs_files, generation=generation,
                      input_shape=input_shape)


def dataset_names() -> list[str]:
    """Names accepted by :func:`load_dataset`, sorted."""
    return sorted(DATASETS.names())


def dataset_augments(name: str) -> bool:
    """Whether training on data set ``name`` uses augmentation; ValueError if unknown."""
    return DATASETS.info(name)["augment"]


def dataset_needs_files(name: str) -> bool:
    """Whether data set ``name`` is read from ``data_dir``; ValueError if unknown."""
    return DATASETS.info(name)["needs_files"]


def dataset_generated(name: str) -> bool:
    """Whether data set ``name`` is generated (takes ``data_samples``); ValueError if unknown."""
    return DATASETS.info(name)["generation"] is not None


def dataset_input_shape(name: str) -> tuple[int, ...] | None:
    """One sample's shape as a model sees it, channels first, if registered; ValueError if unknown."""
    return DATASETS.info(name)["input_shape"]


def dataset_source(name: str, data_samples: int | None = None) -> dict[str, Any]:
    """What the data are made from beyond their settings: a generated data set's generator
    arguments (``{"generation": {...}}``), else nothing. ValueError if unknown."""
    generation = DATASETS.info(name)["generation"]
    return {} if generation is None else {"generation": generation(data_samples)}


def load_dataset(
    name: str,
    data_dir: str | None = None,
    *,
    download: bool = False,
    data_samples: int | None = None,
    data_fraction: float = 1.0,
    val_size: int = 0,
    split_seed: int = 0,
    noise_type: str = "none",
    noise_rate: float = 0.0,
    noise_seed: int = 0,
    noise_dir: str | os.PathLike | Storage | None = None,
) -> Dataset:
    """Load data set ``name``, carve ``val_size`` validation samples, apply label noise.

    ``data_samples`` is the size of a generated data set (None: its canonical size). The
    validation split is stratified and drawn with ``split_seed``. Noise (see
    :mod:`kd_tune.data.noise`) touches the remaining training labels only. With
    ``noise_dir`` (a local folder, an ``s3://...`` URI or a :class:`~kd_tune.storage.location.Storage`),
    the noisy labels are stored there under a name built from (dataset, noise type, rate,
    seed, val_size, split_seed) and later calls reload that file (hash verified) instead
    of drawing again. ``data_fraction`` < 1 then keeps that fraction of the training split
    (stratified, drawn with ``split_seed``; its noisy labels are those of the full split),
    for a student trained on less data; validation and test stay whole. Raises ValueError for bad arguments (an unknown
    name: ``unknown dataset 'name'; known: ...``) and :class:`DataError` for missing or
    malformed data, or a ``val_size`` the training pool cannot hold.
    """
    loader = DATASETS.get(name)
    rate = validate_noise(noise_type, noise_rate, noise_seed)
    where = None if data_dir is None else os.fspath(data_dir)
    if data_samples is not None and not dataset_generated(name):
        raise ValueError(f"data_samples applies to generated data sets only; {name!r} is read as it is")
    generated = dataset_generated(name)
    source = loader(where, download, data_samples=data_samples) if generated else loader(where, download)
    if not isinstance(source, SourceData):
        raise TypeError(f"loader of {name!r} returned {type(source).__name__}, expected SourceData")

    try:
        train_idx, val_idx = stratified_split(source.train.labels.numpy(), val_size, split_seed)
    except ValueError as err:  # a validation split the files cannot hold is a data problem
        raise DataError(f"{name}: {err}") from None
    train = source.train.subset(torch.from_numpy(train_idx))
    val = source.train.subset(torch.from_numpy(val_idx))
    clean = train.labels

    noise_hash = None
    if noise_type != "none":
        # A generated data set's size names its own noisy-label file: other sizes, other labels.
        labelled = name if data_samples is None else f"{name}-n{data_samples}"
        noisy = _noisy_labels(labelled, name, source, clean.numpy(), noise_type, rate, noise_seed,
                              val_size, split_seed, noise_dir)
        noise_hash = label_hash(noisy)
        train = Split(train.images, torch.from_numpy(noisy))
    if data_fraction != 1.0:
        train, clean = _fraction(name, train, clean, data_fraction, split_seed)

    channels, height = source.train.images.shape[1:3]
    return Dataset(
        name=name,
        train=train,
        val=val,
        test=source.test,
        clean_train_labels=clean,
        num_classes=source.num_classes,
        in_channels=int(channels),
        # Non-square images are reported by height (all built-in ones are square); signals by length.
        image_size=int(height),
        max_value=float(source.max_value),
        mean=tuple(source.mean),
        std=tuple(source.std),
        augment=dataset_augments(name),
        class_names=tuple(source.class_names),
        noise_hash=noise_hash,
    )


def _fraction(name: str, train: Split, clean: torch.Tensor, fraction: float,
              seed: int) -> tuple[Split, torch.Tensor]:
    """The stratified ``fraction`` of ``train`` (by its clean labels, so noise does not decide
    which samples stay) and their clean labels; at least one sample."""
    keep = max(1, round(fraction * len(train)))
    if keep >= len(train):
        return train, clean
    try:
        # The "validation" part of a stratified split is the kept share: the same sampler.
        _, kept = stratified_split(clean.numpy(), keep, seed)
    except ValueError as err:
        raise DataError(f"{name}: data_fraction {fraction}: {err}") from None
    index = torch.from_numpy(kept)
    return train.subset(index), clean[index]


def _noisy_labels(
    labelled: str,
    name: str,
    source: SourceData,
    clean: np.ndarray,
    noise_type: str,
    rate: float,
    seed: int,
    val_size: int,
    split_seed: int,
    noise_dir: str | os.PathLike | Storage | None,
) -> np.ndarray:
    identity = dict(dataset=labelled, noise_type=noise_type, noise_rate=rate, noise_seed=seed,
                    val_size=val_size, split_seed=split_seed)
    path: Storage | None = None
    if noise_dir is not None:
        file_name = noise_file_name(labelled, noise_type, rate, seed, val_size, split_seed)
        folder = open_storage(noise_dir)
        path = folder / file_name  # the file as a Storage: an object store's endpoint is kept
        if folder.is_file(file_name):
            noisy, meta = read_noisy_labels(path)
            # The file is only valid for the same clean labels; other files (a different
            # copy of the data set) would silently pair images with foreign labels.
            if noisy.shape != clean.shape or meta.get("clean_label_hash") != label_hash(clean):
                raise DataError(
                    f"noisy-label file {str(path)!r} was made from different training labels "
                    f"({meta.get('num_labels')} labels, clean hash {meta.get('clean_label_hash')}) "
                    f"than the ones loaded now ({clean.size} labels, clean hash {label_hash(clean)}); "
                    f"delete it or use another noise_dir"
                )
            return noisy

    class_map = None
    if noise_type == "asymmetric":
        class_map = source.asymmetric_map
        if class_map is None:
            class_map = asymmetric_map(name, source.class_names)
    noisy = apply_label_noise(clean, source.num_classes, noise_type=noise_type, rate=rate,
                              seed=seed, class_map=class_map)
    if path is not None:
        save_noisy_labels(path, noisy, clean_label_hash=label_hash(clean), **identity)
    return noisy


register_dataset("digits", load_digits_source, augment=False, input_shape=(1, 8, 8))
register_dataset("mnist1d", load_mnist1d_source, augment=False, generation=generation_args, input_shape=(1, 40))
register_dataset("cifar10", load_cifar10_source, augment=True, needs_files=True, input_shape=(3, 32, 32))
register_dataset("cifar100", load_cifar100_source, augment=True, needs_files=True, input_shape=(3, 32, 32))
