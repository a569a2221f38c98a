"""Label noise: rates, maps, determinism, persistence, and that it only touches training labels."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from cifar_files import CIFAR10_NAMES, CIFAR100_COARSE_NAMES, CIFAR100_FINE_NAMES

from kd_tune.data import (
    DataError,
    apply_label_noise,
    asymmetric_map,
    label_hash,
    load_dataset,
    load_noisy_labels,
    save_noisy_labels,
)


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return np.random.default_rng(123).integers(0, 10, size=20000)


@pytest.mark.parametrize("num_classes", [2, 10])
@pytest.mark.parametrize("rate", [0.0, 0.2, 0.5, 0.8])
def test_symmetric_rate_and_never_same_class(labels, rate, num_classes):
    labels = labels % num_classes
    noisy = apply_label_noise(labels, num_classes, noise_type="symmetric", rate=rate, seed=7)
    # If a flip could land on the true class, the changed fraction would be
    # rate * (K - 1) / K (0.4 instead of 0.8 for K = 2): outside the tolerance.
    changed = noisy != labels
    assert noisy.dtype == np.int64 and noisy.shape == labels.shape
    assert abs(changed.mean() - rate) < 0.02
    assert noisy.min() >= 0 and noisy.max() < num_classes


def test_symmetric_targets_are_uniform_over_other_classes(labels):
    noisy = apply_label_noise(labels, 10, noise_type="symmetric", rate=0.6, seed=1)
    moved = noisy != labels
    # A symmetric flip never lands on the true class, so "moved" == "was chosen" and the
    # difference mod K is uniform on 1..K-1 (never 0).
    shift = (noisy[moved] - labels[moved]) % 10
    assert set(np.unique(shift)) == set(range(1, 10))
    freq = np.bincount(shift, minlength=10)[1:] / shift.size
    assert np.all(np.abs(freq - 1 / 9) < 0.015)


def test_input_is_not_modified_and_tensors_work(labels):
    before = labels.copy()
    from_tensor = apply_label_noise(torch.from_numpy(labels), 10, noise_type="symmetric", rate=0.3, seed=2)
    from_array = apply_label_noise(labels, 10, noise_type="symmetric", rate=0.3, seed=2)
    assert np.array_equal(labels, before) and np.array_equal(from_tensor, from_array)


def test_determinism_and_seed_dependence(labels):
    a = apply_label_noise(labels, 10, noise_type="symmetric", rate=0.4, seed=11)
    b = apply_label_noise(labels, 10, noise_type="symmetric", rate=0.4, seed=11)
    c = apply_label_noise(labels, 10, noise_type="symmetric", rate=0.4, seed=12)
    assert np.array_equal(a, b)
    assert (a != c).mean() > 0.3


def test_higher_rates_corrupt_a_superset(labels):
    low = apply_label_noise(labels, 10, noise_type="symmetric", rate=0.2, seed=5) != labels
    high = apply_label_noise(labels, 10, noise_type="symmetric", rate=0.4, seed=5) != labels
    assert np.all(high[low])


def test_cifar10_asymmetric_map_by_name():
    mapping = asymmetric_map("cifar10", CIFAR10_NAMES)
    by_name = {CIFAR10_NAMES[s]: CIFAR10_NAMES[t] for s, t in mapping.items()}
    assert by_name == {"truck": "automobile", "bird": "airplane", "deer": "horse", "cat": "dog", "dog": "cat"}
    # Resolved by name, not by position: a shuffled name order gives the same pairs.
    shuffled = list(reversed(CIFAR10_NAMES))
    assert {shuffled[s]: shuffled[t] for s, t in asymmetric_map("cifar10", shuffled).items()} == by_name


def test_cifar100_map_cycles_within_superclasses():
    mapping = asymmetric_map("cifar100", CIFAR100_FINE_NAMES)
    assert sorted(mapping) == list(range(100)) and sorted(mapping.values()) == list(range(100))
    # Spot checks against the published superclass list (fine labels sorted by index).
    name = CIFAR100_FINE_NAMES.__getitem__
    index = {n: i for i, n in enumerate(CIFAR100_FINE_NAMES)}
    expected_pairs = {
        "beaver": "dolphin", "whale": "beaver", "aquarium_fish": "flatfish", "trout": "aquarium_fish",
        "maple_tree": "oak_tree", "willow_tree": "maple_tree", "baby": "boy", "woman": "baby",
        "lawn_mower": "rocket", "tractor": "lawn_mower", "bicycle": "bus", "train": "bicycle",
    }
    for source, target in expected_pairs.items():
        assert name(mapping[index[source]]) == target
    # Every class lies on a cycle of length exactly 5 and never maps to itself.
    cycles = set()
    for start in range(100):
        cycle, current = [start], mapping[start]
        while current != start:
            cycle.append(current)
            current = mapping[current]
        assert len(cycle) == 5
        cycles.add(frozenset(cycle))
    assert len(cycles) == 20 == len(CIFAR100_COARSE_NAMES)


def test_cifar100_map_agrees_with_coarse_labels_of_fine_classes():
    # Each cycle must be one superclass: the same coarse label for all five members.
    from kd_tune.data.noise import CIFAR100_SUPERCLASSES

    assert tuple(CIFAR100_SUPERCLASSES) == CIFAR100_COARSE_NAMES
    mapping = asymmetric_map("cifar100", CIFAR100_FINE_NAMES)
    coarse_of = {n: c for c, members in CIFAR100_SUPERCLASSES.items() for n in members}
    for s, t in mapping.items():
        assert coarse_of[CIFAR100_FINE_NAMES[s]] == coarse_of[CIFAR100_FINE_NAMES[t]]


def test_cifar100_wrong_names_rejected():
    with pytest.raises(ValueError, match="cifar100"):
        asymmetric_map("cifar100", [f"class{i}" for i in range(100)])


def test_digits_map():
    assert asymmetric_map("digits", [str(d) for d in range(10)]) == {2: 7, 3: 8, 5: 6, 6: 5, 7: 1}


def test_asymmetric_noise_follows_the_map(labels):
    class_map = {2: 7, 3: 8, 5: 6, 6: 5, 7: 1}
    noisy = apply_label_noise(labels, 10, noise_type="asymmetric", rate=0.3, seed=3, class_map=class_map)
    moved = noisy != labels
    assert np.all(np.isin(labels[moved], list(class_map)))
    assert all(noisy[i] == class_map[labels[i]] for i in np.flatnonzero(moved))
    in_map = np.isin(labels, list(class_map))
    assert abs(moved[in_map].mean() - 0.3) < 0.02
    # Overall realised rate is lower: only mapped classes can change.
    assert abs(moved.mean() - 0.3 * in_map.mean()) < 0.02


def test_asymmetric_needs_a_map(labels):
    with pytest.raises(ValueError, match="class_map"):
        apply_label_noise(labels, 10, noise_type="asymmetric", rate=0.2, seed=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(noise_type="gaussian", rate=0.1), "noise_type='gaussian'.*symmetric"),
        (dict(noise_type="symmetric", rate=1.0), r"noise_rate=1.0.*\[0, 1\)"),
        (dict(noise_type="symmetric", rate=-0.1), r"noise_rate=-0.1"),
        (dict(noise_type="symmetric", rate=float("nan")), "noise_rate=nan"),
        (dict(noise_type="none", rate=0.2), "noise_rate=0.2.*none"),
    ],
)
def test_bad_noise_arguments(labels, kwargs, match):
    with pytest.raises(ValueError, match=match):
        apply_label_noise(labels, 10, seed=0, **kwargs)
    with pytest.raises(ValueError, match=match):
        load_dataset("digits", noise_type=kwargs["noise_type"], noise_rate=kwargs["rate"])


def test_noise_only_touches_training_labels():
    clean = load_dataset("digits", val_size=150)
    noisy = load_dataset("digits", val_size=150, noise_type="symmetric", noise_rate=0.4, noise_seed=9)
    assert torch.equal(noisy.val.labels, clean.val.labels)
    assert torch.equal(noisy.test.labels, clean.test.labels)
    assert torch.equal(noisy.train.images, clean.train.images)
    assert torch.equal(noisy.clean_train_labels, clean.train.labels)
    assert abs((noisy.train.labels != clean.train.labels).float().mean().item() - 0.4) < 0.05
    assert noisy.noise_hash == label_hash(noisy.train.labels) and clean.noise_hash is None
    again = load_dataset("digits", val_size=150, noise_type="symmetric", noise_rate=0.4, noise_seed=9)
    other = load_dataset("digits", val_size=150, noise_type="symmetric", noise_rate=0.4, noise_seed=10)
    assert again.noise_hash == noisy.noise_hash != other.noise_hash


def test_digits_asymmetric_through_load_dataset():
    ds = load_dataset("digits", noise_type="asymmetric", noise_rate=0.5, noise_seed=0)
    clean, noisy = ds.clean_train_labels.numpy(), ds.train.labels.numpy()
    class_map = {2: 7, 3: 8, 5: 6, 6: 5, 7: 1}
    in_map = np.isin(clean, list(class_map))
    assert np.array_equal(noisy[~in_map], clean[~in_map])
    moved = noisy != clean
    assert set(np.unique(clean[moved])) == set(class_map)
    assert np.array_equal(noisy[moved], np.vectorize(class_map.get)(clean[moved]))


def test_label_hash():
    a = label_hash(np.array([1, 2, 3], dtype=np.int32))
    assert a == label_hash(torch.tensor([1, 2, 3])) == label_hash([1, 2, 3])
    assert a != label_hash([1, 2, 4]) and a != label_hash([1, 2, 3, 0])
    assert len(a) == 64 and int(a, 16) >= 0


def test_save_reload_round_trip(tmp_path, labels):
    path = tmp_path / "sub" / "noisy.npz"
    digest = save_noisy_labels(path, labels, dataset="x", rate=0.2)
    assert digest == label_hash(labels)
    assert np.array_equal(load_noisy_labels(path), labels)
    assert os.listdir(path.parent) == ["noisy.npz"]  # the temporary file was moved, not left


def test_tampered_file_is_rejected(tmp_path, labels):
    path = tmp_path / "noisy.npz"
    save_noisy_labels(path, labels)
    with np.load(path) as archive:
        meta = archive["meta"]
    changed = labels.copy()
    changed[0] = (changed[0] + 1) % 10
    # Same stored hash, one label altered.
    with open(path, "wb") as handle:
        np.savez(handle, labels=changed, meta=meta)
    with pytest.raises(DataError, match="corrupted"):
        load_noisy_labels(path)
    path.write_bytes(b"not an npz file")
    with pytest.raises(DataError, match="not a valid"):
        load_noisy_labels(path)


def test_noise_dir_persists_and_reloads(tmp_path):
    kwargs = dict(val_size=100, noise_type="symmetric", noise_rate=0.3, noise_seed=4, noise_dir=str(tmp_path))
    first = load_dataset("digits", **kwargs)
    files = os.listdir(tmp_path)
    assert len(files) == 1 and files[0].startswith("digits-symmetric-rate0.3-seed4")
    assert np.array_equal(load_noisy_labels(tmp_path / files[0]), first.train.labels.numpy())

    # Rewrite the file with different (validly hashed) labels: a reload must return them,
    # proving the labels come from the file rather than being drawn again.
    path = tmp_path / files[0]
    with np.load(path) as archive:
        import json

        meta = json.loads(str(archive["meta"]))
    meta.pop("label_hash"), meta.pop("num_labels")
    replaced = (first.train.labels.numpy() + 1) % 10
    save_noisy_labels(path, replaced, **meta)
    reloaded = load_dataset("digits", **kwargs)
    assert np.array_equal(reloaded.train.labels.numpy(), replaced)
    assert reloaded.noise_hash == label_hash(replaced)

    # A damaged file is refused, not silently redrawn.
    raw = bytearray(path.read_bytes())
    path.write_bytes(bytes(raw[: len(raw) // 2]))
    with pytest.raises(DataError):
        load_dataset("digits", **kwargs)


def test_noise_file_from_other_data_is_refused(tmp_path):
    kwargs = dict(noise_type="symmetric", noise_rate=0.3, noise_seed=4, noise_dir=str(tmp_path))
    load_dataset("digits", val_size=100, **kwargs)
    (name,) = os.listdir(tmp_path)
    # Pretend the stored file was made for other clean labels.
    save_noisy_labels(tmp_path / name, load_noisy_labels(tmp_path / name), clean_label_hash="0" * 64)
    with pytest.raises(DataError, match="different training labels"):
        load_dataset("digits", val_size=100, **kwargs)
