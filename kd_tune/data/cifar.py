"""CIFAR-10 and CIFAR-100 read from torchvision's on-disk layout into uint8 tensors.

Files are parsed by torchvision's own ``CIFAR10``/``CIFAR100`` classes. Their md5 check is
relaxed to "file present" (every per-file md5 is set to None, which torchvision's
``check_integrity`` treats as "exists"): it would reject any copy that is not byte-for-byte
the official archive, and the shape/label checks below catch damaged files with a clearer
message. A download still verifies the archive's md5.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.datasets import CIFAR10, CIFAR100

from .base import DataError, SourceData, Split

IMAGE_SHAPE = (32, 32, 3)  # torchvision keeps HWC after parsing


class _CIFAR10Present(CIFAR10):
    """torchvision's CIFAR10 with the per-file md5 check reduced to an existence check."""

    train_list = [[name, None] for name, _ in CIFAR10.train_list]
    test_list = [[name, None] for name, _ in CIFAR10.test_list]
    meta = dict(CIFAR10.meta, md5=None)


class _CIFAR100Present(CIFAR100):
    """torchvision's CIFAR100 with the per-file md5 check reduced to an existence check."""

    train_list = [[name, None] for name, _ in CIFAR100.train_list]
    test_list = [[name, None] for name, _ in CIFAR100.test_list]
    meta = dict(CIFAR100.meta, md5=None)


@dataclass(frozen=True)
class _Spec:
    title: str
    dataset_class: type
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    archive: str
    label_key: str

    @property
    def folder(self) -> str:
        return self.dataset_class.base_folder

    @property
    def files(self) -> list[str]:
        cls = self.dataset_class
        return [n for n, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]


CIFAR10_SPEC = _Spec(
    title="CIFAR-10",
    dataset_class=_CIFAR10Present,
    num_classes=10,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
    archive="cifar-10-python.tar.gz",
    label_key="labels",
)
CIFAR100_SPEC = _Spec(
    title="CIFAR-100",
    dataset_class=_CIFAR100Present,
    num_classes=100,
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
    archive="cifar-100-python.tar.gz",
    label_key="fine_labels",
)


def expected_layout(spec: _Spec, data_dir: str | None) -> str:
    """Human-readable description of where the files must be and how to get them."""
    root = data_dir if data_dir is not None else "<data_dir>"
    files = ", ".join(spec.files)
    return (
        f"{spec.title} is expected in torchvision's layout: {os.path.join(root, spec.folder)}/ "
        f"holding {files} (the extracted {spec.archive}). Pass --download (download=True) on a "
        f"machine with internet access, or put the extracted files there yourself."
    )


def load_cifar10_source(data_dir: str | None, download: bool = False) -> SourceData:
    """Loader for ``cifar10`` (see :func:`_load`)."""
    return _load(CIFAR10_SPEC, data_dir, download)


def load_cifar100_source(data_dir: str | None, download: bool = False) -> SourceData:
    """Loader for ``cifar100`` (fine labels; see :func:`_load`)."""
    return _load(CIFAR100_SPEC, data_dir, download)


def _load(spec: _Spec, data_dir: str | None, download: bool) -> SourceData:
    """Both splits as uint8 ``(N, 3, 32, 32)`` tensors (max_value 255) with int64 labels."""
    if data_dir is None:
        raise DataError(f"no data_dir given. {expected_layout(spec, None)}")
    data_dir = os.fspath(data_dir)
    folder = os.path.join(data_dir, spec.folder)
    if not download:
        if not os.path.isdir(folder):
            raise DataError(f"folder {folder!r} not found. {expected_layout(spec, data_dir)}")
        missing = [f for f in spec.files if not os.path.isfile(os.path.join(folder, f))]
        if missing:
            raise DataError(f"missing {', '.join(missing)} in {folder!r}. {expected_layout(spec, data_dir)}")

    train = _parse(spec, data_dir, train=True, download=download)
    test = _parse(spec, data_dir, train=False, download=False)
    class_names = tuple(str(n) for n in train.classes)
    if len(class_names) != spec.num_classes:
        raise DataError(
            f"{spec.dataset_class.meta['filename']} in {folder!r} lists {len(class_names)} class names "
            f"under {spec.dataset_class.meta['key']!r}, expected {spec.num_classes}. "
            f"{expected_layout(spec, data_dir)}"
        )
    return SourceData(
        train=_to_split(spec, train, folder, data_dir),
        test=_to_split(spec, test, folder, data_dir),
        num_classes=spec.num_classes,
        max_value=255.0,
        mean=spec.mean,
        std=spec.std,
        class_names=class_names,
    )


def _parse(spec: _Spec, data_dir: str, *, train: bool, download: bool):
    try:
        return spec.dataset_class(root=data_dir, train=train, download=download)
    except DataError:
        raise
    except Exception as exc:  # pickle, key, reshape and network errors all mean unusable data
        what = "download or read" if download else "read"
        raise DataError(
            f"could not {what} {spec.title} from {os.path.join(data_dir, spec.folder)!r} "
            f"({type(exc).__name__}: {exc}). Each batch file must be a pickled dict with a uint8 "
            f"'data' array of shape (N, 3072) and a list {spec.label_key!r} of N labels. "
            f"{expected_layout(spec, data_dir)}"
        ) from exc


def _to_split(spec: _Spec, parsed, folder: str, data_dir: str) -> Split:
    data = np.asarray(parsed.data)
    labels = np.asarray(parsed.targets)
    split = "training" if parsed.train else "test"
    problem = None
    if data.dtype != np.uint8 or data.ndim != 4 or data.shape[1:] != IMAGE_SHAPE:
        problem = f"images have dtype {data.dtype} and shape {data.shape}, expected uint8 (N, 32, 32, 3)"
    elif labels.shape != (data.shape[0],) or (labels.size and labels.dtype.kind not in "iu"):
        problem = f"{labels.size} labels of dtype {labels.dtype} for {data.shape[0]} images"
    elif labels.size and (labels.min() < 0 or labels.max() >= spec.num_classes):
        problem = f"labels span [{labels.min()}, {labels.max()}], expected [0, {spec.num_classes})"
    elif data.shape[0] == 0:
        problem = "no images"
    if problem is not None:
        raise DataError(f"{spec.title} {split} files in {folder!r}: {problem}. {expected_layout(spec, data_dir)}")
    # One contiguous NCHW copy up front; training then indexes whole batches of it.
    images = torch.from_numpy(np.ascontiguousarray(data.transpose(0, 3, 1, 2)))
    return Split(images, torch.from_numpy(labels.astype(np.int64)))
