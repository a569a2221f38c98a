"""Plain containers shared by the data modules.

Inputs come in two layouts, both kept exactly as stored or generated (no scaling):
images as raw ``uint8`` tensors ``(N, C, H, W)`` (digits, CIFAR), and 1-D signals as
``float32`` tensors ``(N, C, L)`` (MNIST-1D). Normalisation happens per batch on the
training device (see :meth:`kd_tune.data.Dataset.normalize`). Labels are ``int64`` class
indices. The field keeps the name ``images`` for both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


class DataError(ValueError):
    """Data are missing or malformed.

    The message always says which layout was expected and how to obtain the data.
    """


@dataclass(frozen=True)
class Split:
    """One split of a data set, held in memory.

    images: ``uint8`` tensor ``(N, C, H, W)`` of raw pixel values in ``[0, max_value]``, or
        ``float32`` tensor ``(N, C, L)`` of 1-D signals.
    labels: ``int64`` tensor ``(N,)`` of class indices.
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        # Checked once here so that nothing downstream has to guess dtypes or layouts.
        layouts = {torch.uint8: 4, torch.float32: 3}  # images (N, C, H, W); signals (N, C, L)
        if not isinstance(self.images, torch.Tensor) or self.images.dtype not in layouts:
            raise TypeError(f"Split.images must be a uint8 or float32 tensor, got {_describe(self.images)}")
        if self.images.dim() != layouts[self.images.dtype]:
            layout = "uint8 images (N, C, H, W)" if self.images.dtype == torch.uint8 else "float32 signals (N, C, L)"
            raise ValueError(f"Split.images must be {layout}, got shape {tuple(self.images.shape)}")
        if not isinstance(self.labels, torch.Tensor) or self.labels.dtype != torch.int64:
            raise TypeError(f"Split.labels must be an int64 tensor, got {_describe(self.labels)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"Split.labels must have shape ({self.images.shape[0]},) to match the images, "
                f"got {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: torch.Tensor) -> Split:
        """The samples at ``indices`` (an int64 index tensor), in that order."""
        return Split(self.images[indices], self.labels[indices])


@dataclass(frozen=True, eq=False)
class SourceData:
    """What a registered data-set loader returns: the full training pool and the test split.

    ``load_dataset`` carves the validation split out of ``train`` and applies label noise,
    so loaders only read files. ``mean``/``std`` are per channel in units of
    ``pixel / max_value``. ``asymmetric_map`` optionally gives the class map for
    asymmetric label noise (class index -> class index); when it is None,
    :func:`kd_tune.data.asymmetric_map` is asked by data-set name. Whether the data set
    is augmented is not the loader's business: it is fixed when the data set is registered
    (:func:`kd_tune.data.register_dataset`).
    """

    train: Split
    test: Split
    num_classes: int
    max_value: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...]
    asymmetric_map: dict[int, int] | None = field(default=None)

    def __post_init__(self) -> None:
        channels = self.train.images.shape[1]
        train, test = self.train.images, self.test.images
        if test.shape[1:] != train.shape[1:] or test.dtype != train.dtype:
            raise ValueError(
                f"train and test images differ in dtype or shape: {train.dtype} {tuple(train.shape[1:])} "
                f"vs {test.dtype} {tuple(test.shape[1:])}"
            )
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError(f"mean and std need one value per channel ({channels})")
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"{len(self.class_names)} class names for {self.num_classes} classes"
            )


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor of dtype {value.dtype}"
    return type(value).__name__
