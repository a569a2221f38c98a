"""digits loading, validation carving, normalisation and the data-set registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kd_tune.data import (
    DataError,
    Dataset,
    SourceData,
    Split,
    dataset_augments,
    dataset_names,
    dataset_needs_files,
    load_dataset,
    register_dataset,
)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


def test_digits_shapes_and_ranges(digits):
    assert digits.train.images.shape == (1437, 1, 8, 8)
    assert digits.test.images.shape == (360, 1, 8, 8)
    assert digits.val.images.shape == (0, 1, 8, 8) and digits.val.labels.shape == (0,)
    assert digits.train.images.dtype == torch.uint8 and digits.train.labels.dtype == torch.int64
    assert int(digits.train.images.max()) == 16 and int(digits.train.images.min()) == 0
    assert (digits.num_classes, digits.in_channels, digits.image_size) == (10, 1, 8)
    assert digits.max_value == 16 and digits.augment is False
    assert digits.class_names == tuple("0123456789")
    assert digits.noise_hash is None
    assert torch.equal(digits.train.labels, digits.clean_train_labels)


def _rows(images: np.ndarray, labels: np.ndarray) -> list[bytes]:
    """Each (image, label) pair as one byte string, sorted: a multiset to compare."""
    flat = np.column_stack([np.asarray(images).reshape(len(labels), -1), labels]).astype(np.uint8)
    return sorted(map(bytes, flat))


def test_digits_pixels_match_sklearn(digits):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    ours = _rows(
        torch.cat([digits.train.images, digits.test.images]).numpy(),
        torch.cat([digits.train.labels, digits.test.labels]).numpy(),
    )
    # Nothing lost, duplicated or relabelled across the fixed train/test split.
    assert ours == _rows(bunch.data, bunch.target)


def test_digits_test_split_is_stratified(digits):
    overall = np.bincount(np.concatenate([digits.train.labels, digits.test.labels]), minlength=10)
    expected = overall * 360 / overall.sum()
    assert np.all(np.abs(np.bincount(digits.test.labels, minlength=10) - expected) <= 1)


def test_digits_mean_std_are_from_the_training_pool(digits):
    pool = digits.train.images.double() / 16
    assert digits.mean[0] == pytest.approx(float(pool.mean()), rel=1e-9)
    assert digits.std[0] == pytest.approx(float(pool.std(unbiased=False)), rel=1e-9)
    normalized = digits.normalize(digits.train.images)
    assert normalized.dtype == torch.float32 and normalized.shape == digits.train.images.shape
    assert abs(float(normalized.mean())) < 1e-4 and abs(float(normalized.std()) - 1) < 1e-3


def test_normalize_formula(digits):
    batch = torch.tensor([0, 8, 16], dtype=torch.uint8).view(3, 1, 1, 1)
    expected = (torch.tensor([0.0, 0.5, 1.0]) - digits.mean[0]) / digits.std[0]
    assert torch.allclose(digits.normalize(batch).flatten(), expected)


def test_loading_is_deterministic(digits):
    again = load_dataset("digits")
    for a, b in ((digits.train, again.train), (digits.test, again.test)):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_validation_carving(digits):
    carved = load_dataset("digits", val_size=200, split_seed=3)
    assert len(carved.train) == 1237 and len(carved.val) == 200 and len(carved.test) == 360
    assert torch.equal(carved.test.images, digits.test.images)
    # train + val is exactly the pool (as a multiset of image/label rows).
    assert _rows(
        torch.cat([carved.train.images, carved.val.images]).numpy(),
        torch.cat([carved.train.labels, carved.val.labels]).numpy(),
    ) == _rows(digits.train.images.numpy(), digits.train.labels.numpy())
    # Stratified: class counts within one of the pool's proportions.
    pool_counts = np.bincount(digits.train.labels, minlength=10)
    expected = pool_counts * 200 / pool_counts.sum()
    assert np.all(np.abs(np.bincount(carved.val.labels, minlength=10) - expected) < 1)
    same = load_dataset("digits", val_size=200, split_seed=3)
    other = load_dataset("digits", val_size=200, split_seed=4)
    assert torch.equal(same.val.images, carved.val.images)
    assert not torch.equal(other.val.images, carved.val.images)


def test_small_val_still_covers_proportions():
    carved = load_dataset("digits", val_size=5)
    assert len(carved.val) == 5 and len(set(carved.val.labels.tolist())) == 5


@pytest.mark.parametrize("val_size", [1437, 5000, -1])
def test_bad_val_size(val_size):
    with pytest.raises(ValueError, match="val_size"):
        load_dataset("digits", val_size=val_size)


def test_unknown_dataset_names_the_choices():
    with pytest.raises(ValueError, match=r"^unknown dataset 'mnist'; known: cifar10, cifar100, digits, mnist1d$"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match=r"^unknown dataset 'mnist'; known: "):
        dataset_augments("mnist")


def test_builtin_names():
    assert {"digits", "cifar10", "cifar100"} <= set(dataset_names())
    assert dataset_names() == sorted(dataset_names())


def test_builtin_registration_flags():
    assert (dataset_augments("digits"), dataset_augments("cifar10"), dataset_augments("cifar100")) == (
        False, True, True)
    assert (dataset_needs_files("digits"), dataset_needs_files("cifar10"),
            dataset_needs_files("cifar100")) == (False, True, True)
    with pytest.raises(ValueError, match=r"^unknown dataset 'mnist'; known: "):
        dataset_needs_files("mnist")


def test_cifar_without_data_dir_is_a_data_error():
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        load_dataset("cifar10")


def _tiny_loader(data_dir, download):
    images = torch.arange(12 * 2 * 4 * 4, dtype=torch.int64).remainder(200).to(torch.uint8).view(12, 2, 4, 4)
    labels = torch.arange(12) % 3
    return SourceData(
        train=Split(images[:9], labels[:9]), test=Split(images[9:], labels[9:]), num_classes=3,
        max_value=255.0, mean=(0.5, 0.5), std=(0.25, 0.25),
        class_names=("a", "b", "c"), asymmetric_map={0: 1},
    )


def test_register_custom_dataset():
    register_dataset("tiny-test", _tiny_loader, augment=True)
    register_dataset("tiny-test", _tiny_loader, augment=True)  # same loader again: harmless
    with pytest.raises(ValueError, match="^dataset 'tiny-test' is already registered$"):
        register_dataset("tiny-test", lambda d, dl: None, augment=True)
    with pytest.raises(ValueError, match="already registered with different augment"):
        register_dataset("tiny-test", _tiny_loader, augment=False)
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("digits", _tiny_loader, augment=False)
    assert "tiny-test" in dataset_names() and dataset_augments("tiny-test") is True
    assert dataset_needs_files("tiny-test") is False  # the default
    ds = load_dataset("tiny-test", val_size=3, noise_type="asymmetric", noise_rate=0.99, noise_seed=1)
    assert (ds.in_channels, ds.image_size, len(ds.train), len(ds.val), len(ds.test)) == (2, 4, 6, 3, 3)
    assert ds.augment is True  # from the registration, not the loader
    # The loader's own map is used: every class-0 training label moved to class 1 at this rate.
    clean, noisy = ds.clean_train_labels, ds.train.labels
    assert torch.equal(noisy[clean != 0], clean[clean != 0])
    assert (noisy[clean == 0] == 1).float().mean() > 0.5


def test_register_dataset_needs_bool_flags():
    with pytest.raises(TypeError, match="augment"):
        register_dataset("tiny-flag", _tiny_loader)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="augment for dataset 'tiny-flag' must be a bool"):
        register_dataset("tiny-flag", _tiny_loader, augment="no")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="needs_files for dataset 'tiny-flag' must be a bool"):
        register_dataset("tiny-flag", _tiny_loader, augment=False, needs_files=1)  # type: ignore[arg-type]
    assert "tiny-flag" not in dataset_names()
    register_dataset("tiny-flag", _tiny_loader, augment=False, needs_files=True)
    assert dataset_needs_files("tiny-flag") is True


def test_split_rejects_wrong_dtypes():
    with pytest.raises(TypeError, match="uint8 or float32"):
        Split(torch.zeros(2, 1, 2, 2, dtype=torch.float64), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"float32 signals \(N, C, L\), got shape \(2, 1, 2, 2\)"):
        Split(torch.zeros(2, 1, 2, 2), torch.zeros(2, dtype=torch.int64))  # float32 is for 1-D signals
    with pytest.raises(ValueError, match=r"uint8 images \(N, C, H, W\)"):
        Split(torch.zeros(2, 1, 40, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError):
        Split(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64))
