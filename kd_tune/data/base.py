"""Plain containers shared by the data modules.

Images are always kept as raw ``uint8`` tensors in ``(N, C, H, W)`` layout, exactly as
stored on disk (no scaling); normalisation happens per batch on the training device
(see :meth:`kd_tune.data.Dataset.normalize`). Labels are ``int64`` class indices.
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

    images: ``uint8`` tensor ``(N, C, H, W)`` of raw pixel values in ``[0, max_value]``.
    labels: ``int64`` tensor ``(N,)`` of class indices.
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        # Checked once here so that nothing downstream has to guess dtypes or layouts.
        if not isinstance(self.images, torch.Tensor) or self.images.dtype != torch.uint8:
            raise TypeError(f"Split.images must be a uint8 tensor, got {_describe(self.images)}")
        if self.images.dim() != 4:
            raise ValueError(f"Split.images must be (N, C, H, W), got shape {tuple(self.images.shape)}")
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
        if self.test.images.shape[1:] != self.train.images.shape[1:]:
            raise ValueError(
                f"train and test images differ in shape: {tuple(self.train.images.shape[1:])} "
                f"vs {tuple(self.test.images.shape[1:])}"
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
