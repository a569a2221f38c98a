"""CIFAR-10/100 read through torchvision's parsing from small files in the official format."""

from __future__ import annotations

import collections
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cifar_files import CIFAR10_NAMES, CIFAR100_FINE_NAMES, write_cifar10, write_cifar100

from kd_tune.data import DataError, load_dataset


@pytest.fixture
def cifar10_dir(tmp_path):
    """(data_dir, written): five training batches of 4 images and 6 test images."""
    return tmp_path, write_cifar10(tmp_path)


@pytest.fixture
def cifar100_dir(tmp_path):
    """(data_dir, written): 30 training and 8 test images."""
    return tmp_path, write_cifar100(tmp_path)


def _file_pixel(data: np.ndarray, n: int, c: int, i: int, j: int) -> int:
    # The CIFAR row layout: 1024 red, then 1024 green, then 1024 blue values, row-major.
    return int(data[n, c * 1024 + i * 32 + j])


def test_fixture_matches_the_official_pickle_format(cifar10_dir, cifar100_dir):
    _, written = cifar10_dir
    with open(written["folder"] / "data_batch_1", "rb") as handle:
        entry = pickle.load(handle, encoding="bytes")  # the CIFAR web page's recipe
    assert entry[b"data"].dtype == np.uint8 and entry[b"data"].shape == (4, 3072)
    assert isinstance(entry[b"labels"], list)
    with open(cifar100_dir[1]["folder"] / "meta", "rb") as handle:
        meta = pickle.load(handle, encoding="bytes")
    assert len(meta[b"fine_label_names"]) == 100 and len(meta[b"coarse_label_names"]) == 20


def test_cifar10_round_trip(cifar10_dir):
    root, written = cifar10_dir
    ds = load_dataset("cifar10", str(root))
    assert ds.train.images.shape == (20, 3, 32, 32) and ds.test.images.shape == (6, 3, 32, 32)
    assert ds.train.images.dtype == torch.uint8 and ds.train.labels.dtype == torch.int64
    assert ds.train.images.is_contiguous()
    assert (ds.num_classes, ds.in_channels, ds.image_size, ds.max_value) == (10, 3, 32, 255)
    assert ds.augment is True and ds.class_names == CIFAR10_NAMES
    assert ds.mean == (0.4914, 0.4822, 0.4465) and ds.std == (0.2470, 0.2435, 0.2616)
    for split, data, labels in ((ds.train, written["train_data"], written["train_labels"]),
                                (ds.test, written["test_data"], written["test_labels"])):
        assert split.labels.tolist() == labels.tolist()
        for n, c, i, j in [(0, 0, 0, 0), (1, 2, 31, 31), (len(labels) - 1, 1, 5, 17), (3, 0, 31, 0)]:
            assert int(split.images[n, c, i, j]) == _file_pixel(data, n, c, i, j)
        assert np.array_equal(split.images.reshape(len(labels), 3072).numpy(), data)


def test_cifar10_val_and_noise(cifar10_dir):
    root, written = cifar10_dir
    ds = load_dataset("cifar10", root, val_size=5, split_seed=1,
                      noise_type="asymmetric", noise_rate=0.9, noise_seed=0)
    assert len(ds.train) == 15 and len(ds.val) == 5
    pool = set(map(bytes, written["train_data"]))
    assert set(map(bytes, ds.val.images.reshape(5, -1).numpy())) <= pool
    assert ds.noise_hash is not None
    names = [CIFAR10_NAMES[c] for c in ds.clean_train_labels]
    noisy = [CIFAR10_NAMES[c] for c in ds.train.labels]
    mapping = {"truck": "automobile", "bird": "airplane", "deer": "horse", "cat": "dog", "dog": "cat"}
    assert all(after in (before, mapping.get(before)) for before, after in zip(names, noisy))


def test_cifar100_round_trip(cifar100_dir):
    root, written = cifar100_dir
    ds = load_dataset("cifar100", str(root))
    assert ds.train.images.shape == (30, 3, 32, 32) and ds.test.images.shape == (8, 3, 32, 32)
    assert ds.num_classes == 100 and ds.class_names == CIFAR100_FINE_NAMES
    assert ds.mean == (0.5071, 0.4865, 0.4409) and ds.std == (0.2673, 0.2564, 0.2762)
    # Fine labels, not coarse ones.
    assert ds.train.labels.tolist() == written["train_labels"].tolist()
    assert ds.test.labels.tolist() == written["test_labels"].tolist()
    assert int(ds.train.images[7, 1, 30, 2]) == _file_pixel(written["train_data"], 7, 1, 30, 2)
    assert np.array_equal(ds.test.images.reshape(8, 3072).numpy(), written["test_data"])
    noisy = load_dataset("cifar100", str(root), noise_type="asymmetric", noise_rate=0.5)
    assert torch.equal(noisy.test.labels, ds.test.labels)


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match=r"cifar-10-batches-py.*data_batch_1.*--download"):
        load_dataset("cifar10", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=r"cifar-100-python.*train, test, meta.*--download"):
        load_dataset("cifar100", str(tmp_path))


@pytest.mark.parametrize("missing", ["data_batch_3", "batches.meta", "test_batch"])
def test_missing_file(cifar10_dir, missing):
    root, written = cifar10_dir
    (written["folder"] / missing).unlink()
    with pytest.raises(DataError, match=rf"missing {missing}.*cifar-10-batches-py.*--download"):
        load_dataset("cifar10", str(root))


@pytest.mark.parametrize("name", ["data_batch_2", "test_batch", "batches.meta"])
def test_garbage_file(cifar10_dir, name):
    root, written = cifar10_dir
    (written["folder"] / name).write_bytes(b"this is not a pickle")
    with pytest.raises(DataError, match=r"cifar-10-batches-py.*--download"):
        load_dataset("cifar10", str(root))


def test_python3_bytes_keys_are_malformed(cifar100_dir):
    # A Python 3 pickle of b"data" keys is not the official format; say so clearly.
    root, written = cifar100_dir
    data = written["train_data"]
    (written["folder"] / "train").write_bytes(
        pickle.dumps({b"data": data, b"fine_labels": [0] * len(data)}))
    with pytest.raises(DataError, match=r"'data' array of shape \(N, 3072\).*cifar-100-python"):
        load_dataset("cifar100", str(root))


def test_wrong_image_size(cifar10_dir):
    import cifar_files

    root, written = cifar10_dir
    odd = np.zeros((3, 3 * 16 * 16), dtype=np.uint8)  # 16x16 images cannot be CIFAR
    (written["folder"] / "test_batch").write_bytes(
        cifar_files.py2_pickle({b"data": odd, b"labels": [0, 1, 2]}))
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        load_dataset("cifar10", str(root))


def test_labels_out_of_range(cifar10_dir):
    import cifar_files

    root, written = cifar10_dir
    (written["folder"] / "test_batch").write_bytes(
        cifar_files.py2_pickle({b"data": written["test_data"], b"labels": [10] * 6}))
    with pytest.raises(DataError, match=r"labels span \[10, 10\]"):
        load_dataset("cifar10", str(root))


# -- safe loading: a crafted file runs nothing; a full copy must be the official one --------


class _WritesAFile:
    """Unpickling this with pickle.load runs its reduce: it writes ``path``."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').write('ran')",))


class _CallsOsSystem:
    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.mark.parametrize("name, payload", [
    ("data_batch_1", lambda ran: {"data": _WritesAFile(ran), "labels": [0]}),
    ("test_batch", lambda ran: [_CallsOsSystem(ran)]),
    ("batches.meta", lambda ran: {"label_names": _WritesAFile(ran)}),
    ("data_batch_3", lambda ran: collections.OrderedDict(data=np.zeros((1, 3072), np.uint8), labels=[0])),
])
def test_a_crafted_pickle_is_refused_and_runs_nothing(cifar10_dir, tmp_path, name, payload):
    root, written = cifar10_dir
    ran = tmp_path / "ran"
    (written["folder"] / name).write_bytes(pickle.dumps(payload(ran), protocol=2))
    with pytest.raises(DataError, match=rf"refused to load '.*{name}': it names .*, which CIFAR data never "
                                        "contains.*none of it was run"):
        load_dataset("cifar10", str(root))
    assert not ran.exists()
    # The way torchvision reads the files would have run it: the test can fail.
    if name != "data_batch_3":
        with open(written["folder"] / name, "rb") as handle:
            pickle.load(handle, encoding="latin1")
        assert ran.exists()


def test_a_crafted_pickle_is_refused_by_the_sweep_command_before_anything_runs(cifar10_dir, tmp_path, capsys):
    from sweep_runs import TAU_GRID

    from kd_tune.cli.sweep import load_spec, main

    root, written = cifar10_dir
    ran = tmp_path / "ran"
    (written["folder"] / "data_batch_2").write_bytes(pickle.dumps({"data": _WritesAFile(ran)}, protocol=2))
    storage = tmp_path / "results"
    spec = load_spec(Path(TAU_GRID))
    for extra in (["--dry-run"], []):
        with pytest.raises(SystemExit) as exit_info:
            main(spec, ["--preset", "digits", "--dataset", "cifar10", "--data-dir", str(root), "--storage",
                        str(storage), *extra])
        assert exit_info.value.code == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
        assert len(errors) == 1 and "refused to load" in errors[0] and "data_batch_2" in errors[0]
        assert not ran.exists() and not storage.exists()


@pytest.mark.parametrize("dataset, title, write, first, test_file", [
    ("cifar10", "CIFAR-10", lambda root: write_cifar10(root, per_batch=10_000, test_size=10_000),
     "data_batch_1", "test_batch"),
    ("cifar100", "CIFAR-100", lambda root: write_cifar100(root, train_size=50_000, test_size=10_000),
     "train", "test"),
])
def test_a_full_copy_must_be_the_official_one(tmp_path, dataset, title, write, first, test_file):
    import cifar_files

    # 50,000 training and 10,000 test images in the official format, but not the official
    # bytes: a damaged or modified copy, refused by md5.
    written = write(tmp_path)
    with pytest.raises(DataError, match=rf"'.*{first}' is not the official {title} file {first}: "
                                        r"md5 [0-9a-f]{32}, the official one is [0-9a-f]{32}.*--download"):
        load_dataset(dataset, str(tmp_path))
    # One test image fewer is a subset, not a copy of the official archive: it loads.
    labels = written["test_labels"][1:].tolist()
    label_keys = {b"labels": labels} if dataset == "cifar10" else {b"fine_labels": labels, b"coarse_labels": labels}
    (written["folder"] / test_file).write_bytes(
        cifar_files.py2_pickle({b"data": written["test_data"][1:], **label_keys}))
    assert len(load_dataset(dataset, str(tmp_path)).test) == 9_999


def test_torchvision_is_imported_only_when_cifar_is_read(cifar10_dir):
    # It pulls in torchvision.models and torch._dynamo (about 3 s): every driver, worker and
    # --help paid for it before. Reading CIFAR (the tables of file names and md5s) needs it.
    root, _ = cifar10_dir
    code = ("import sys, kd_tune.cli.sweep, kd_tune.sweep.trainable; print('torchvision' in sys.modules); "
            "from kd_tune.data.cifar import load_cifar10_source; "
            f"print(len(load_cifar10_source({str(root)!r}).train.labels), 'torchvision' in sys.modules)")
    before, images, after = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                           check=True).stdout.split()
    assert (before, after) == ("False", "True") and int(images) > 0
