"""The teacher store: which students share a teacher, and one real (tiny) teacher stored and loaded."""
from __future__ import annotations

import json
import math
import shutil
from datetime import datetime, timezone

import pytest
import torch

from kd_tune.checkpoint import load_state
from kd_tune.config import RunConfig
from kd_tune.evaluation import accuracy, predict_logits
from kd_tune.teacher_store import STORE_FORMAT, TeacherError, TeacherStore, needs_teacher, teacher_key
from kd_tune.search_space import config_hash
from kd_tune.trainer import load_data

STUDENT = RunConfig(teacher="cnn-8", student="cnn-4", loss="kl", tau=4.0, alpha=0.9, epochs=1, device="cpu")
NOISY = dict(noise_type="symmetric", noise_rate=0.4)


# -- teacher_key -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"loss": "mse"}, {"loss": "ce"}, {"tau": math.inf}, {"alpha": 0.1}, {"seed": 7}, {"student": "mlp-32"},
        {"device": "cuda:1"}, {"device": "auto"}, {"download": True},
        {"loss": "mse", "tau": 1.0, "alpha": 1.0, "seed": 3, "student": "cnn-16", "device": "cuda"},
    ],
)
def test_students_that_differ_only_in_student_settings_share_the_teacher(change):
    assert teacher_key(STUDENT.replace(**change)) == teacher_key(STUDENT)


@pytest.mark.parametrize(
    "change",
    [
        {"teacher": "cnn-16"}, {"teacher_seed": 1}, {"teacher_epochs": 2}, {"epochs": 2}, NOISY,
        {**NOISY, "noise_rate": 0.2}, {**NOISY, "noise_type": "asymmetric"}, {"split_seed": 1}, {"val_size": 0},
        {"lr": 0.05}, {"batch_size": 32}, {"dataset": "cifar10", "data_dir": "/data"},
    ],
)
def test_what_changes_the_teacher_changes_the_key(change):
    assert teacher_key(STUDENT.replace(**change)) != teacher_key(STUDENT)


def test_teacher_epochs_decide_over_the_students_epochs():
    fixed = STUDENT.replace(teacher_epochs=5)
    assert teacher_key(fixed.replace(epochs=1)) == teacher_key(fixed.replace(epochs=9))
    # teacher_epochs=None means "same as epochs": equal to naming that number
    assert teacher_key(STUDENT.replace(epochs=5)) == teacher_key(fixed)
    assert teacher_key(STUDENT.replace(epochs=5)) != teacher_key(STUDENT.replace(epochs=6))


def test_a_clean_teacher_is_shared_by_clean_and_noisy_students():
    clean = STUDENT
    noisy = STUDENT.replace(**NOISY)
    assert teacher_key(noisy) != teacher_key(clean)  # by default the teacher sees the noisy labels
    assert teacher_key(noisy.replace(clean_teacher=True)) == teacher_key(clean)
    assert teacher_key(clean.replace(clean_teacher=True)) == teacher_key(clean)
    asym = STUDENT.replace(noise_type="asymmetric", noise_rate=0.2, clean_teacher=True)
    assert teacher_key(asym) == teacher_key(clean)


def test_the_noise_seed_does_not_matter_to_a_clean_teacher():
    noisy = STUDENT.replace(**NOISY, noise_seed=1, clean_teacher=True)
    assert noisy.teacher_config().noise_type == "none"
    assert teacher_key(noisy) == teacher_key(STUDENT)


def test_teacher_key_is_the_hash_of_the_teacher_run():
    values = STUDENT.teacher_config().to_dict()
    for name in ("teacher", "clean_teacher", "teacher_seed", "teacher_epochs", "device", "download"):
        del values[name]
    assert values["student"] == "cnn-8" and values["loss"] == "ce" and values["seed"] == STUDENT.teacher_seed
    assert teacher_key(STUDENT) == config_hash({**values, "store_format": STORE_FORMAT})
    assert len(teacher_key(STUDENT)) == 16


def test_needs_teacher():
    assert needs_teacher(STUDENT) and needs_teacher(STUDENT.replace(loss="mse"))
    assert not needs_teacher(STUDENT.replace(loss="ce"))


# -- a real store ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("teachers")
    store = TeacherStore(root)
    meta = store.train(STUDENT)
    return store, meta, load_data(STUDENT)


def test_train_writes_weights_and_meta(trained):
    store, meta, _ = trained
    key = teacher_key(STUDENT)
    assert sorted(p.name for p in (store.root / key).iterdir()) == ["meta.json", "progress.json", "teacher.pt"]
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
    assert created.tzinfo is not None and abs((datetime.now(timezone.utc) - created).total_seconds()) < 600


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
    model, record = store.load(STUDENT, data)
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    assert record["key"] == teacher_key(STUDENT)
    device = torch.device("cpu")
    logits = predict_logits(model, data.test.images, data.normalize, device=device)
    assert logits.shape == (len(data.test), data.num_classes)
    # the stored weights are the trained ones: the recorded test accuracy comes back exactly
    assert accuracy(logits, data.test.labels) == pytest.approx(meta["metrics"]["test_acc"], abs=1e-9)
    again, _ = store.load(STUDENT, data)
    assert again is not model
    assert torch.equal(predict_logits(again, data.test.images, data.normalize, device=device), logits)


def test_students_sharing_the_key_load_the_same_teacher(trained):
    store, _, data = trained
    a, _ = store.load(STUDENT, data)
    b, _ = store.load(STUDENT.replace(loss="mse", seed=5, student="mlp-32"), data)
    x = data.normalize(data.test.images[:16])
    assert torch.equal(a(x), b(x))
    with pytest.raises(TeacherError, match="not in the store"):
        store.load(STUDENT.replace(teacher_seed=3), data)


def test_training_the_same_teacher_again_gives_the_same_weights(trained, tmp_path):
    store, meta, _ = trained
    again = TeacherStore(tmp_path).train(STUDENT.replace(loss="mse", seed=9))
    assert again["key"] == meta["key"]
    assert again["metrics"]["test_acc"] == meta["metrics"]["test_acc"]
    first = load_state(store.weights_path(meta["key"]))["model"]
    second = load_state(TeacherStore(tmp_path).weights_path(meta["key"]))["model"]
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
