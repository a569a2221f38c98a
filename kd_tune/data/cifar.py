"""CIFAR-10 and CIFAR-100 read from torchvision's on-disk layout into uint8 tensors.

The layout is the extracted official archive (``cifar-10-batches-py/``,
``cifar-100-python/``); its batch files are Python pickles. They are parsed with
:func:`kd_tune.data.safe_pickle.load_cifar_pickle`, which admits plain containers and
numpy arrays only, so a crafted file is refused before any code of it runs
(torchvision's own loader unpickles without restriction). Then every file is checked:
a dict with a uint8 ``data`` array of shape (N, 3072) and N labels in range, and the
class names in the meta file.

Checksums: a full copy (50,000 training and 10,000 test images, as both official
archives hold) must be the official one: each file's md5 is compared with the one
torchvision lists for it, and a damaged or modified copy is refused, naming the file.
Smaller copies in the same format (subsets, the tests' files) cannot be official and
are parsed and checked only. ``download`` fetches the official archive with
torchvision (the archive's md5 checked) when files are missing.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kd_tune.data.base import DataError, SourceData, Split
from kd_tune.data.safe_pickle import RefusedPickle, load_cifar_pickle

ROW = 3 * 32 * 32  # one image per row: 1024 red, then 1024 green, then 1024 blue values
OFFICIAL_SIZES = (50_000, 10_000)  # training and test images of both official archives


@dataclass(frozen=True)
class _Spec:
    """One CIFAR variant; file names, md5s and the archive come from torchvision's tables."""

    title: str
    table_class: str  # torchvision's dataset class (in torchvision.datasets), read for its constants only
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    label_key: str

    @property
    def tables(self) -> type:
        # Imported when CIFAR is loaded, not with kd_tune.data: torchvision.datasets pulls in
        # torchvision.models and torch._dynamo, about 3 s (measured with -X importtime) that
        # every sweep's driver and --help paid for data sets they never read.
        import torchvision.datasets

        return getattr(torchvision.datasets, self.table_class)

    @property
    def folder(self) -> str:
        return self.tables.base_folder

    @property
    def train_files(self) -> list[str]:
        return [name for name, _ in self.tables.train_list]

    @property
    def test_files(self) -> list[str]:
        return [name for name, _ in self.tables.test_list]

    @property
    def meta_file(self) -> str:
        return self.tables.meta["filename"]

    @property
    def files(self) -> list[str]:
        return self.train_files + self.test_files + [self.meta_file]

    @property
    def official_md5(self) -> dict[str, str]:
        tables = self.tables
        return {**dict(tables.train_list + tables.test_list), tables.meta["filename"]: tables.meta["md5"]}


CIFAR10_SPEC = _Spec(
    title="CIFAR-10",
    table_class="CIFAR10",
    num_classes=10,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
    label_key="labels",
)
CIFAR100_SPEC = _Spec(
    title="CIFAR-100",
    table_class="CIFAR100",
    num_classes=100,
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
    label_key="fine_labels",
)


def expected_layout(spec: _Spec, data_dir: str | None) -> str:
    """Human-readable description of where the files must be and how to get them."""
    root = data_dir if data_dir is not None else "<data_dir>"
    files = ", ".join(spec.files)
    return (
        f"{spec.title} is expected in torchvision's layout: {os.path.join(root, spec.folder)}/ "
        f"holding {files} (the extracted {spec.tables.filename}). Pass --download (download=True) on a "
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
    missing = [f for f in spec.files if not os.path.isfile(os.path.join(folder, f))]
    if missing and download:
        _download(spec, data_dir)
    elif not os.path.isdir(folder):
        raise DataError(f"folder {folder!r} not found. {expected_layout(spec, data_dir)}")
    elif missing:
        raise DataError(f"missing {', '.join(missing)} in {folder!r}. {expected_layout(spec, data_dir)}")

    train = _read_split(spec, folder, data_dir, spec.train_files)
    test = _read_split(spec, folder, data_dir, spec.test_files)
    class_names = _read_names(spec, folder, data_dir)
    if (len(train), len(test)) == OFFICIAL_SIZES:
        _check_official(spec, folder)
    return SourceData(
        train=train,
        test=test,
        num_classes=spec.num_classes,
        max_value=255.0,
        mean=spec.mean,
        std=spec.std,
        class_names=class_names,
    )


def _download(spec: _Spec, data_dir: str) -> None:
    # torchvision's utilities cost about 1.8 CPU-s to import beyond torch; only a download needs them.
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        download_and_extract_archive(spec.tables.url, data_dir, filename=spec.tables.filename,
                                     md5=spec.tables.tgz_md5)
    except Exception as exc:  # network errors and a bad archive md5 alike
        raise DataError(f"could not download {spec.title} into {data_dir!r} ({type(exc).__name__}: {exc}). "
                        f"{expected_layout(spec, data_dir)}") from exc


def _unpickle(spec: _Spec, path: str, data_dir: str) -> Any:
    try:
        return load_cifar_pickle(path)
    except RefusedPickle as exc:
        raise DataError(f"refused to load {path!r}: {exc}; a CIFAR file holds only dicts, lists, strings, "
                        f"numbers and numpy arrays, so this file is not CIFAR data (or was tampered with) "
                        f"and none of it was run. {expected_layout(spec, data_dir)}") from None
    except (OSError, EOFError, ValueError, TypeError, pickle.UnpicklingError) as exc:
        raise DataError(f"could not read {path!r} ({type(exc).__name__}: {exc}). "
                        f"{expected_layout(spec, data_dir)}") from None


def _read_split(spec: _Spec, folder: str, data_dir: str, names: list[str]) -> Split:
    images, labels = [], []
    for name in names:
        path = os.path.join(folder, name)
        entry = _unpickle(spec, path, data_dir)
        problem = _batch_problem(spec, entry)
        if problem is not None:
            raise DataError(f"{spec.title} file {path!r}: {problem}. {expected_layout(spec, data_dir)}")
        images.append(entry["data"])
        labels.append(np.asarray(entry[spec.label_key], dtype=np.int64))
    # One contiguous NCHW array up front: the rows are already channel-major.
    stacked = np.ascontiguousarray(np.concatenate(images).reshape(-1, 3, 32, 32))
    return Split(torch.from_numpy(stacked), torch.from_numpy(np.concatenate(labels)))


def _batch_problem(spec: _Spec, entry: Any) -> str | None:
    """What is wrong with one unpickled batch, or None."""
    if not isinstance(entry, dict) or not isinstance(entry.get("data"), np.ndarray) or spec.label_key not in entry:
        return (f"each batch file must be a pickled dict with a uint8 'data' array of shape (N, {ROW}) and a "
                f"list {spec.label_key!r} of N labels")
    data, labels = entry["data"], np.asarray(entry[spec.label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != ROW:
        return f"images have dtype {data.dtype} and shape {data.shape}, expected uint8 (N, {ROW})"
    if labels.shape != (data.shape[0],) or (labels.size and labels.dtype.kind not in "iu"):
        return f"{labels.size} labels of dtype {labels.dtype} for {data.shape[0]} images"
    if labels.size and (labels.min() < 0 or labels.max() >= spec.num_classes):
        return f"labels span [{labels.min()}, {labels.max()}], expected [0, {spec.num_classes})"
    if data.shape[0] == 0:
        return "no images"
    return None


def _read_names(spec: _Spec, folder: str, data_dir: str) -> tuple[str, ...]:
    path = os.path.join(folder, spec.meta_file)
    entry = _unpickle(spec, path, data_dir)
    key = spec.tables.meta["key"]
    names = entry.get(key) if isinstance(entry, dict) else None
    if not isinstance(names, list) or len(names) != spec.num_classes or not all(isinstance(n, str) for n in names):
        count = len(names) if isinstance(names, list) else 0
        raise DataError(f"{spec.meta_file} in {folder!r} lists {count} class names under {key!r}, expected "
                        f"{spec.num_classes}. {expected_layout(spec, data_dir)}")
    return tuple(names)


def _check_official(spec: _Spec, folder: str) -> None:
    """A full copy must be byte-for-byte the official files (md5 as torchvision lists it)."""
    for name, official in spec.official_md5.items():
        path = os.path.join(folder, name)
        with open(path, "rb") as handle:
            digest = hashlib.file_digest(handle, "md5").hexdigest()
        if digest != official:
            raise DataError(
                f"{path!r} is not the official {spec.title} file {name}: md5 {digest}, the official one is "
                f"{official}. A copy with the official archive's 50,000 training and 10,000 test images must "
                f"be the official one; this one is damaged or modified. Delete {folder!r} and download it "
                f"again (--download)."
            )
