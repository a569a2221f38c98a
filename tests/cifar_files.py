"""Writes small CIFAR-10/100 files in the exact on-disk format of the official archives.

The official batches were pickled by Python 2, so their dict keys and class names are
Python 2 ``str`` objects: ``pickle.load(f, encoding="bytes")`` (the CIFAR web page's
recipe) yields ``b"data"`` keys, and torchvision's ``encoding="latin1"`` yields ``"data"``.
A plain Python 3 pickle of ``b"data"`` would load as bytes under both, so this writer
emits bytes as Python 2 strings (SHORT_BINSTRING / BINSTRING opcodes), like the originals.
"""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

import numpy as np

CIFAR10_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)

# The real meta file lists fine and coarse names alphabetically (= label index order).
CIFAR100_FINE_NAMES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom",
    "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle",
    "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)
CIFAR100_COARSE_NAMES = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates", "people",
    "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
)


class _Py2Pickler(pickle._Pickler):
    """Pure-Python pickler that writes ``bytes`` the way Python 2 wrote ``str``."""

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def py2_pickle(obj: object) -> bytes:
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def _batch(data: np.ndarray, labels: dict[bytes, list[int]], tag: bytes) -> bytes:
    names = [b"img_%d.png" % i for i in range(len(data))]
    return py2_pickle({b"batch_label": tag, b"data": data, **labels, b"filenames": names})


def write_cifar10(root: Path, per_batch: int = 4, test_size: int = 6, seed: int = 0) -> dict:
    """Write ``root/cifar-10-batches-py`` with five training batches; return what was written."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    train_data, train_labels = [], []
    for b in range(1, 6):
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        (folder / f"data_batch_{b}").write_bytes(
            _batch(data, {b"labels": labels}, b"training batch %d of 5" % b))
        train_data.append(data)
        train_labels += labels
    test_data = rng.integers(0, 256, size=(test_size, 3072), dtype=np.uint8)
    test_labels = [int(v) for v in rng.integers(0, 10, size=test_size)]
    (folder / "test_batch").write_bytes(
        _batch(test_data, {b"labels": test_labels}, b"testing batch 1 of 1"))
    (folder / "batches.meta").write_bytes(py2_pickle({
        b"num_cases_per_batch": per_batch,
        b"label_names": [n.encode() for n in CIFAR10_NAMES],
        b"num_vis": 3072,
    }))
    return {
        "folder": folder,
        "train_data": np.concatenate(train_data),
        "train_labels": np.array(train_labels),
        "test_data": test_data,
        "test_labels": np.array(test_labels),
    }


def write_cifar100(root: Path, train_size: int = 30, test_size: int = 8, seed: int = 0) -> dict:
    """Write ``root/cifar-100-python`` (train, test, meta); return what was written."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    written = {"folder": folder}
    for split, size in (("train", train_size), ("test", test_size)):
        data = rng.integers(0, 256, size=(size, 3072), dtype=np.uint8)
        fine = [int(v) for v in rng.integers(0, 100, size=size)]
        coarse = [int(v) for v in rng.integers(0, 20, size=size)]
        (folder / split).write_bytes(
            _batch(data, {b"fine_labels": fine, b"coarse_labels": coarse}, split.encode()))
        written[f"{split}_data"] = data
        written[f"{split}_labels"] = np.array(fine)
    (folder / "meta").write_bytes(py2_pickle({
        b"fine_label_names": [n.encode() for n in CIFAR100_FINE_NAMES],
        b"coarse_label_names": [n.encode() for n in CIFAR100_COARSE_NAMES],
    }))
    return written


def tiny_cifar10_run(root: Path, config, *, teacher_seed: int):
    """``config`` on a tiny CIFAR-10 written to ``root`` and read by the real loader, and a teacher.

    200 training images (``config.val_size`` of them held out) and 40 test images; the
    teacher is an untrained ``cnn-8`` drawn with ``teacher_seed`` (a fixed network is all
    the cache and signal tests need). Returns (config with data_dir, data, teacher).
    """
    import torch

    from kd_tune import models
    from kd_tune.train.trainer import load_data

    write_cifar10(root, per_batch=40, test_size=40)
    config = config.replace(data_dir=str(root))
    data = load_data(config)
    torch.manual_seed(teacher_seed)
    return config, data, models.build("cnn-8", data.num_classes, data.in_channels).eval()
