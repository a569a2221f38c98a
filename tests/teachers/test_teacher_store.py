"""The teacher store: which students share a teacher, and one real (tiny) teacher stored and loaded."""
from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime

import numpy as np
import pytest
import torch

from kd_tune.core.config import RunConfig
from kd_tune.core.identity import teacher_key
from kd_tune.plan.teacher_dag import teacher_dag
from kd_tune.teachers.store import DamagedTeacher, TeacherError, TeacherStore, at_chance
from kd_tune.train.checkpoint import load_state
from kd_tune.train.evaluation import accuracy, predict_logits
from kd_tune.train.trainer import load_data

STUDENT = RunConfig(teacher="cnn-8", student="cnn-4", loss="kl", tau=4.0, alpha=0.9, epochs=1, device="cpu")
NOISY = dict(noise_type="symmetric", noise_rate=0.4)


# -- a real store ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("teachers")
    store = TeacherStore(root)
    meta = store.train(teacher_dag(STUDENT)[-1])
    return store, meta, load_data(STUDENT)


def test_train_writes_weights_and_meta(trained):
    store, meta, _ = trained
    key = teacher_key(STUDENT)
    assert sorted(p.name for p in (store.root / key).iterdir()) == ["measurements.npz", "meta.json", "progress.json",
                                                                   "teacher.pt"]
    assert store.progress(key) == {"epoch": 1, "epochs": 1, "test_acc": meta["metrics"]["test_acc"]}
    assert store.progress("0" * 16) is None
    assert store.weights_path(key) == store.root / key / "teacher.pt"
    on_disk = json.loads(store.meta_path(key).read_text())
    assert on_disk["key"] == meta["key"] == key
    assert on_disk["config"] == STUDENT.teacher_config().to_dict()
    assert on_disk["config"]["student"] == "cnn-8" and on_disk["config"]["loss"] == "ce"
    metrics = on_disk["metrics"]
    assert metrics["epoch"] == 1
    assert 0.0 <= metrics["test_acc"] <= 1.0 and 0.0 <= metrics["val_acc"] <= 1.0
    assert metrics["test_acc"] == meta["metrics"]["test_acc"]
    assert on_disk["train_seconds"] > 0
    created = datetime.fromisoformat(on_disk["created_at"])
    assert created.tzinfo is not None and abs((datetime.now(UTC) - created).total_seconds()) < 600


def test_has_and_meta(trained, tmp_path):
    store, meta, _ = trained
    key = teacher_key(STUDENT)
    assert store.has(key)
    assert store.meta(key)["key"] == key
    assert store.meta(key)["metrics"]["test_acc"] == meta["metrics"]["test_acc"]
    other = teacher_key(STUDENT.replace(teacher_seed=1))
    assert not store.has(other)
    with pytest.raises(TeacherError, match=f"teacher {other} is not in the store"):
        store.meta(other)
    # without meta.json (written last) a key is not complete
    partial = TeacherStore(tmp_path)
    (tmp_path / key).mkdir()
    shutil.copy(store.weights_path(key), partial.weights_path(key))
    assert not partial.has(key)
    with pytest.raises(TeacherError):
        partial.meta(key)


def test_load_gives_the_stored_teacher_in_eval_mode(trained):
    store, meta, data = trained
    model, record = store.load(teacher_key(STUDENT), data)
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    assert record["key"] == teacher_key(STUDENT)
    device = torch.device("cpu")
    logits = predict_logits(model, data.test.images, data.normalize, device=device)
    assert logits.shape == (len(data.test), data.num_classes)
    # the stored weights are the trained ones: the recorded test accuracy comes back exactly
    assert accuracy(logits, data.test.labels) == pytest.approx(meta["metrics"]["test_acc"], abs=1e-9)
    again, _ = store.load(teacher_key(STUDENT), data)
    assert again is not model
    assert torch.equal(predict_logits(again, data.test.images, data.normalize, device=device), logits)


def test_students_sharing_the_key_load_the_same_teacher(trained):
    store, _, data = trained
    a, _ = store.load(teacher_key(STUDENT), data)
    other = STUDENT.replace(loss="mse", seed=5, student="mlp-32")
    b, _ = store.load(teacher_key(other), data)
    x = data.normalize(data.test.images[:16])
    assert torch.equal(a(x), b(x))
    with pytest.raises(TeacherError, match="not in the store"):
        store.load(teacher_key(STUDENT.replace(teacher_seed=3)), data)


def test_training_the_same_teacher_again_gives_the_same_weights(trained, tmp_path):
    store, meta, _ = trained
    other = STUDENT.replace(loss="mse", seed=9)
    again = TeacherStore(tmp_path).train(teacher_dag(other)[-1])
    assert again["key"] == meta["key"]
    assert again["metrics"]["test_acc"] == meta["metrics"]["test_acc"]
    first = load_state(store.weights_path(meta["key"]))["model"]
    second = load_state(TeacherStore(tmp_path).weights_path(meta["key"]))["model"]
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


# -- a damaged teacher is found before anything uses it ------------------------------------


def damaged_copy(store: TeacherStore, root) -> TeacherStore:
    """A copy of ``store`` to damage, leaving the module's store intact."""
    shutil.copytree(store.root, root)
    return TeacherStore(root)


def test_a_truncated_teacher_is_named_and_never_loaded(trained, tmp_path):
    store, _, data = trained
    key = teacher_key(STUDENT)
    copy = damaged_copy(store, tmp_path / "store")
    assert copy.verify(key) is None
    path = copy.weights_path(key)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    problem = copy.verify(key)
    assert problem is not None and str(path) in problem and "cannot be read" in problem
    with pytest.raises(DamagedTeacher, match=f"teacher file {path} cannot be read"):
        copy.load(key, data)
    copy.discard(key)
    assert not copy.has(key) and not path.exists()


def test_a_teacher_file_holding_other_weights_is_refused(trained, tmp_path):
    # A valid teacher file, but not the one meta.json records (e.g. copied from another key).
    store, _, data = trained
    key = teacher_key(STUDENT)
    copy = damaged_copy(store, tmp_path / "store")
    state = load_state(copy.weights_path(key))
    state["model"] = {k: v + 1 if v.is_floating_point() else v for k, v in state["model"].items()}
    torch.save(state, copy.weights_path(key))
    problem = copy.verify(key)
    assert problem is not None and "holds other weights than its meta.json records" in problem
    assert str(copy.weights_path(key)) in problem
    with pytest.raises(DamagedTeacher, match="holds other weights"):
        copy.load(key, data)


def record(acc: float, classes: int = 10, samples: int = 360) -> dict:
    return {"key": "k", "config": {"student": "cnn-8"}, "metrics": {"test_acc": acc},
            "num_classes": classes, "test_samples": samples}


def test_a_teacher_at_chance_is_named_and_a_trained_one_is_not(trained):
    _, meta, _ = trained
    assert (meta["num_classes"], meta["test_samples"]) == (10, 360)
    assert meta["metrics"]["test_acc"] > 0.15 and at_chance(meta) is None  # one epoch: 19% on digits
    warning = at_chance(record(0.1028))
    assert warning.startswith("teacher cnn-8 (k) is at chance: test acc 10.28% on 360 images of 10 classes")
    # Three standard errors above chance: 14.7% for 360 digits, 1.3% for CIFAR-100's 10,000 images.
    assert at_chance(record(0.146)) is not None and at_chance(record(0.148)) is None
    assert at_chance(record(0.0129, 100, 10_000)) is not None and at_chance(record(0.0131, 100, 10_000)) is None
    assert at_chance({"key": "k", "config": {}, "metrics": {"test_acc": 0.1}}) is None  # an older record
def test_a_teacher_is_stored_with_its_history_and_measurements(trained):
    store, meta, data = trained
    key = teacher_key(STUDENT)
    assert [h["epoch"] for h in store.meta(key)["history"]] == [1]
    measured = store.measurements(key)
    assert measured is not None and len(measured.labels) == len(data.test)
    assert measured.features.shape[0] == len(data.test)  # every test sample: sweeps pick their classes
    assert measured.values["correct"].mean() == pytest.approx(meta["metrics"]["test_acc"])


def test_a_teacher_stored_without_measurements_is_measured_not_retrained(trained, tmp_path):
    store, _, _ = trained
    key = teacher_key(STUDENT)
    copy = TeacherStore(tmp_path)
    shutil.copytree(store.root / key, copy.root / key)
    copy.measurements_path(key).unlink()
    assert copy.measurements(key) is None
    weights = copy.weights_path(key).read_bytes()
    copy.measure(teacher_dag(STUDENT)[-1])
    assert copy.weights_path(key).read_bytes() == weights
    assert np.array_equal(copy.measurements(key).values["tld"], store.measurements(key).values["tld"])
