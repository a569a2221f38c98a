"""Synthetic label noise on training labels, and its persistence.

Conventions:

- Noise is drawn from its own ``numpy.random.Generator`` seeded with the noise seed, so
  the noisy labels are a pure function of (clean labels, noise type, rate, seed) and are
  identical for every trial that shares them.
- One uniform number per sample decides whether that sample is corrupted (``u < rate``).
  The same seed therefore corrupts nested sets of samples as the rate grows: the samples
  flipped at rate 0.2 are a subset of those flipped at rate 0.4.
- ``symmetric``: with probability ``rate`` a label becomes a uniformly drawn *different*
  class, so the realised fraction of changed labels is ``rate`` in expectation.
- ``asymmetric``: with probability ``rate`` a label ``c`` that is a key of the class map
  becomes ``map[c]``; labels of classes outside the map never change. The realised
  overall fraction of changed labels is therefore ``rate`` times the fraction of samples
  whose class is in the map (CIFAR-10: 5 of 10 classes, so about ``rate / 2``).

Persistence: a noisy-label file is a local path or a location on an object store (an
``s3://...`` URI, or a :class:`~kd_tune.storage.location.Storage` naming the file); either is
read and written through :class:`~kd_tune.storage.location.Storage`, whole or not at all.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from kd_tune.core.config import noise_problems
from kd_tune.data.base import DataError
from kd_tune.storage.location import Storage, open_storage

# CIFAR-10 asymmetric noise of Patrini et al. 2017 (also used by the KD/noise literature):
# visually similar classes are confused, by class name.
CIFAR10_ASYMMETRIC = {
    "truck": "automobile",
    "bird": "airplane",
    "deer": "horse",
    "cat": "dog",
    "dog": "cat",
}

# MNIST convention of Patrini et al. 2017, used for scikit-learn's digits (class names are
# the digits as strings): 2 -> 7, 3 -> 8, 5 <-> 6, 7 -> 1. Digits 0, 1, 4, 8, 9 never change.
DIGITS_ASYMMETRIC = {"2": "7", "3": "8", "5": "6", "6": "5", "7": "1"}

# The 20 CIFAR-100 superclasses (coarse labels, in coarse-label index order) and their
# five fine classes, as in the data set's documentation and meta file.
CIFAR100_SUPERCLASSES: dict[str, tuple[str, ...]] = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}


def validate_noise(noise_type: str, rate: float, seed: int) -> float:
    """Check noise arguments (:func:`kd_tune.core.config.noise_problems`); return the rate as a float.

    Raises ValueError naming every problem.
    """
    # numpy scalars come from arrays of settings; the checks speak plain Python numbers.
    rate = float(rate) if isinstance(rate, (np.floating, np.integer)) else rate
    seed = int(seed) if isinstance(seed, np.integer) else seed
    problems = noise_problems(noise_type, rate, seed)
    if problems:
        raise ValueError("; ".join(problems))
    return float(rate)


def apply_label_noise(
    labels: np.ndarray | torch.Tensor | Sequence[int],
    num_classes: int,
    *,
    noise_type: str,
    rate: float,
    seed: int,
    class_map: dict[int, int] | None = None,
) -> np.ndarray:
    """Return a noisy copy of ``labels`` (int64 numpy array); the input is not modified.

    ``class_map`` (class index -> class index) is required for ``asymmetric`` noise and
    ignored otherwise. See the module docstring for the exact conventions.
    """
    rate = validate_noise(noise_type, rate, seed)
    clean = _as_int64(labels)
    if clean.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {clean.shape}")
    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes!r} must be at least 1")
    if clean.size and (clean.min() < 0 or clean.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got range [{clean.min()}, {clean.max()}]")
    if noise_type == "none":
        return clean.copy()

    rng = np.random.default_rng(seed)
    # Draw every random number for every sample, whatever the labels and the rate, so the
    # stream (and thus the choice of corrupted samples) depends on the seed and N only.
    corrupt = rng.random(clean.size) < rate
    if noise_type == "symmetric":
        if num_classes < 2:
            raise ValueError("symmetric noise needs at least 2 classes")
        # An offset in 1..K-1 added modulo K is a uniform draw among the K-1 other classes.
        offsets = rng.integers(1, num_classes, size=clean.size)
        return np.where(corrupt, (clean + offsets) % num_classes, clean)

    if class_map is None:
        raise ValueError("asymmetric noise needs a class_map (class index -> class index)")
    table = np.arange(num_classes, dtype=np.int64)
    for source, target in class_map.items():
        for value in (source, target):
            if not 0 <= int(value) < num_classes:
                raise ValueError(f"class_map entry {source} -> {target} is outside [0, {num_classes})")
        table[int(source)] = int(target)
    return np.where(corrupt, table[clean], clean)


def asymmetric_map(dataset: str, class_names: Sequence[str]) -> dict[int, int]:
    """Class-index map for asymmetric noise on a built-in data set, resolved by class name.

    - ``cifar10``: truck -> automobile, bird -> airplane, deer -> horse, cat <-> dog.
    - ``cifar100``: each class -> the next class of its superclass, cyclically, in
      fine-label index order: twenty 5-cycles, one per superclass.
    - ``digits`` and ``mnist1d``: 2 -> 7, 3 -> 8, 5 <-> 6, 7 -> 1 (MNIST convention of Patrini
      et al. 2017; MNIST-1D's classes are the digits, made from their outlines).
    """
    names = [str(n) for n in class_names]
    index = {name: i for i, name in enumerate(names)}
    if len(index) != len(names):
        raise ValueError(f"class names of {dataset!r} are not unique")
    if dataset in ("cifar10", "digits", "mnist1d"):
        by_name = CIFAR10_ASYMMETRIC if dataset == "cifar10" else DIGITS_ASYMMETRIC
        missing = sorted(n for pair in by_name.items() for n in pair if n not in index)
        if missing:
            raise ValueError(f"asymmetric noise for {dataset!r} needs the classes {missing}, not in {names}")
        return {index[s]: index[t] for s, t in by_name.items()}
    if dataset == "cifar100":
        expected = {n for members in CIFAR100_SUPERCLASSES.values() for n in members}
        if set(names) != expected:
            unknown = sorted(set(names) - expected)
            absent = sorted(expected - set(names))
            raise ValueError(
                f"class names of 'cifar100' do not match the CIFAR-100 fine labels "
                f"(unknown: {unknown[:5]}, missing: {absent[:5]})"
            )
        result: dict[int, int] = {}
        for members in CIFAR100_SUPERCLASSES.values():
            cycle = sorted(index[n] for n in members)
            for k, source in enumerate(cycle):
                result[source] = cycle[(k + 1) % len(cycle)]
        return result
    raise ValueError(
        f"no asymmetric noise map for dataset={dataset!r}; built-in maps: cifar10, cifar100, digits "
        f"(a registered loader can supply its own map)"
    )


def label_hash(labels: np.ndarray | torch.Tensor | Sequence[int]) -> str:
    """SHA-256 hex digest of labels as little-endian int64 (dtype and container do not matter)."""
    array = _as_int64(labels)
    digest = hashlib.sha256()
    digest.update(f"int64{array.shape}".encode())
    digest.update(np.ascontiguousarray(array, dtype="<i8").tobytes())
    return digest.hexdigest()


def _place(path: str | os.PathLike | Storage) -> tuple[Storage, str]:
    """The folder holding the file ``path`` (a local path, a URI or a Storage of the file), and its name."""
    where = open_storage(path)
    return where.parent, where.name


def save_noisy_labels(path: str | os.PathLike | Storage, labels: Any, **meta: Any) -> str:
    """Write labels (and JSON-serialisable ``meta``) to an ``.npz`` file; return their hash.

    ``path`` is a local path, a URI (``s3://...``) or a :class:`~kd_tune.storage.location.Storage`
    of the file. Written whole or not at all (locally: to a temporary file in the same
    folder moved into place with ``os.replace``), so concurrent trials writing the same
    labels never leave a partial file.
    """
    array = _as_int64(labels)
    digest = label_hash(array)
    record = dict(meta, label_hash=digest, num_labels=int(array.size))
    folder, name = _place(path)
    with folder.writer(name) as handle:
        np.savez(handle, labels=array, meta=np.array(json.dumps(record, sort_keys=True)))
    return digest


def read_noisy_labels(path: str | os.PathLike | Storage) -> tuple[np.ndarray, dict[str, Any]]:
    """Labels and metadata from a file written by :func:`save_noisy_labels`, hash verified."""
    try:
        folder, name = _place(path)
        with np.load(io.BytesIO(folder.read_bytes(name)), allow_pickle=False) as archive:
            labels = archive["labels"]
            meta = json.loads(str(archive["meta"]))
    except FileNotFoundError:
        raise DataError(f"noisy-label file {str(path)!r} does not exist") from None
    except Exception as exc:  # any parse failure means the file is not ours or is damaged
        raise DataError(
            f"noisy-label file {str(path)!r} is not a valid .npz written by save_noisy_labels "
            f"({type(exc).__name__}: {exc}); delete it to have the labels drawn again"
        ) from exc
    if labels.dtype != np.int64 or labels.ndim != 1 or "label_hash" not in meta:
        raise DataError(f"noisy-label file {str(path)!r} lacks int64 labels or a stored hash; delete it")
    actual = label_hash(labels)
    if actual != meta["label_hash"]:
        raise DataError(
            f"noisy-label file {str(path)!r} is corrupted: stored hash {meta['label_hash']} but the "
            f"labels hash to {actual}; delete it to have the labels drawn again"
        )
    return labels, meta


def load_noisy_labels(path: str | os.PathLike | Storage) -> np.ndarray:
    """Labels from a file written by :func:`save_noisy_labels`; DataError if the hash mismatches."""
    return read_noisy_labels(path)[0]


def noise_file_name(
    dataset: str, noise_type: str, rate: float, seed: int, val_size: int, split_seed: int
) -> str:
    """File name that identifies one set of noisy labels (``repr`` keeps the rate exact)."""
    return f"{dataset}-{noise_type}-rate{float(rate)!r}-seed{seed}-val{val_size}-split{split_seed}.npz"


def _as_int64(labels: Any) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    array = np.asarray(labels)
    if array.dtype.kind not in "iu" and array.size:
        raise ValueError(f"labels must be integers, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)
