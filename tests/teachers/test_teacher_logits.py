"""The teacher-logit cache: exact views, equivalence with the online teacher, keys, files."""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import uuid

import numpy as np
import pytest
import torch
from cifar_files import tiny_cifar10_run

from kd_tune import models
from kd_tune.core.config import RunConfig
from kd_tune.core.identity import cache_key, teacher_key, weights_digest
from kd_tune.plan.planner import plan_trial
from kd_tune.teachers.logit_cache import CacheError, LogitCache, ensure_cached
from kd_tune.teachers.store import TeacherStore
from kd_tune.train.losses import make_loss
from kd_tune.train.teacher_logits import TeacherLogits, compute_teacher_logits, forward_count
from kd_tune.train.trainer import load_data, train

# Batches of 32 over 180 training images: five full batches and a partial one.
CIFAR = RunConfig(dataset="cifar10", student="cnn-4", teacher="cnn-8", val_size=20, epochs=3, batch_size=32,
                  lr=0.05, teacher_epochs=1)


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    config, data, teacher = tiny_cifar10_run(tmp_path_factory.mktemp("cifar"), CIFAR, teacher_seed=7)
    assert data.augment and len(data.train) == 180
    return config, data, teacher


def science(history):
    return [{k: v for k, v in h.items() if k not in ("epoch_time_s", "teacher_forward_samples")} for h in history]


@pytest.mark.parametrize("loss,tau,alpha", [("kl", 4.0, 0.9), ("mse", 1.0, 0.5)])
def test_cached_teacher_trains_the_same_student_as_the_online_teacher(tmp_path, cifar, loss, tau, alpha):
    config, data, teacher = cifar
    config = config.replace(loss=loss, tau=tau, alpha=alpha)
    online = train(config, data=data, teacher=teacher)

    cache = LogitCache(tmp_path)
    key = cache_key(config, teacher_key(config), augment=data.augment)
    cache.build(key, teacher, data, config)
    cached = train(config, data=data, teacher_logits=cache.load(key))

    assert science(cached.history) == science(online.history)
    for name, value in online.model.state_dict().items():
        torch.testing.assert_close(cached.model.state_dict()[name], value, rtol=1e-5, atol=1e-6)
    # The cached run never ran the teacher; the online one ran it on every view and the test set.
    assert [h["teacher_forward_samples"] for h in cached.history] == [0, 0, 0]
    assert [h["teacher_forward_samples"] for h in online.history] == [180 + 40, 180, 180]
    assert cache.meta(key)["teacher_forward_samples"] == forward_count(data, config.epochs) == 3 * 180 + 20 + 40


def test_views_differ_by_epoch_and_match_the_teacher_on_each_view(cifar):
    config, data, teacher = cifar
    logits = compute_teacher_logits(teacher, data, config)
    assert logits.train.shape == (3, 180, 10) and logits.views == 3
    assert not torch.equal(logits.epoch_view(0), logits.epoch_view(1))
    # Row i of view e is the teacher on sample i's view in epoch e, whatever batch it was in.
    from kd_tune.data import augment_batch

    idx = torch.tensor([5, 100, 179])
    views = augment_batch(data.train.images[idx], idx, epoch=2, seed=config.seed)
    with torch.no_grad():
        direct = teacher(data.normalize(views))
    torch.testing.assert_close(logits.epoch_view(2)[idx], direct, rtol=1e-5, atol=1e-5)
    with pytest.raises(IndexError, match="outside the 3 cached views"):
        logits.epoch_view(3)


def test_data_without_augmentation_needs_one_view(tmp_path):
    config = RunConfig(student="cnn-4", teacher="cnn-8", epochs=4, val_size=100)
    data = load_data(config)
    assert not data.augment
    teacher = models.build("cnn-8", data.num_classes, data.in_channels).eval()
    cache = LogitCache(tmp_path)
    key = cache_key(config, teacher_key(config), augment=False)
    meta = cache.build(key, teacher, data, config)
    assert meta["views"] == 1 and meta["train_shape"] == [1, len(data.train), 10]
    loaded = cache.load(key)
    assert torch.equal(loaded.epoch_view(0), loaded.epoch_view(3))
    # Without augmentation every seed and epoch count shares the one view set.
    assert cache_key(config.replace(seed=5, epochs=9), teacher_key(config), augment=False) == key


def test_float16_cache_halves_the_size_and_changes_losses_only_by_rounding(tmp_path, cifar):
    config, data, teacher = cifar
    cache = LogitCache(tmp_path)
    tkey = teacher_key(config)
    full = cache.build(cache_key(config, tkey, augment=True), teacher, data, config)
    half = cache.build(cache_key(config, tkey, augment=True, dtype="float16"), teacher, data, config,
                       dtype="float16")
    assert half["bytes"] < 0.55 * full["bytes"]
    z32 = cache.load(full["key"]).epoch_view(0)
    z16 = cache.load(half["key"]).epoch_view(0)
    assert z16.dtype == torch.float16 and z32.dtype == torch.float32
    student = torch.randn_like(z32)
    labels = data.train.labels
    losses = (make_loss("kl", tau=4.0, alpha=1.0), make_loss("kl", tau=1.0, alpha=1.0),
              make_loss("mse", tau=1.0, alpha=1.0))
    for loss in losses:
        exact, rounded = loss(student, z32, labels), loss(student, z16.float(), labels)
        assert math.isclose(rounded.item(), exact.item(), rel_tol=1e-3)


def test_logits_that_do_not_fit_the_run_are_refused(cifar):
    config, data, teacher = cifar
    logits = compute_teacher_logits(teacher, data, config.replace(epochs=2))
    with pytest.raises(ValueError, match=r"train is \(2, 180, 10\), the run needs \(3, 180, 10\)"):
        train(config.replace(loss="mse"), data=data, teacher_logits=logits)
    # A cache with more views than the run has epochs serves the shorter run.
    longer = compute_teacher_logits(teacher, data, config.replace(epochs=4))
    longer.check(data, 3)
    with pytest.raises(ValueError, match="not both"):
        train(config.replace(loss="mse"), data=data, teacher=teacher, teacher_logits=logits)


def test_a_failed_build_leaves_nothing_and_a_finished_key_is_not_rebuilt(tmp_path, cifar):
    config, data, teacher = cifar

    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("teacher exploded")

    cache = LogitCache(tmp_path / "cache")
    with pytest.raises(RuntimeError, match="exploded"):
        cache.build("k1", Broken(), data, config)
    assert not cache.has("k1") and os.listdir(cache.root) == []

    first = cache.build("k2", teacher, data, config)
    again = cache.build("k2", Broken(), data, config)  # complete: nothing runs
    assert again == first and sorted(os.listdir(cache.root)) == ["k2"]


def test_ensure_cached_builds_the_planned_key_from_the_stored_teacher(tmp_path):
    config = RunConfig(student="cnn-4", teacher="cnn-8", epochs=2, teacher_epochs=1, val_size=100, loss="mse")
    trial = plan_trial(config)
    store = TeacherStore(tmp_path / "teachers")
    meta = store.train(trial.teachers[-1])
    data = load_data(config)
    cache = LogitCache(tmp_path / "logits")
    built = ensure_cached(trial, data, store, cache)
    assert built["key"] == trial.cache_key == cache_key(config, teacher_key(config), augment=False)
    assert built["teacher_key"] == trial.teacher_key
    assert built["teacher_weights_sha256"] == meta["weights_sha256"]
    again = ensure_cached(plan_trial(config.replace(seed=3, alpha=0.2)), data, store, cache)
    assert again == built and os.listdir(cache.root) == [trial.cache_key]
    logits = cache.load(trial.cache_key)
    assert isinstance(logits, TeacherLogits) and logits.test.shape == (len(data.test), 10)
    teacher, _ = store.load(trial.teacher_key, data)
    assert torch.equal(logits.test, compute_teacher_logits(teacher, data, config).test)
    result = train(config, data=data, teacher_logits=logits)
    assert result.status == "completed" and result.final["test_agreement"] >= 0


def test_a_cache_made_from_other_weights_is_rebuilt_from_the_stored_teacher(tmp_path):
    config = RunConfig(student="cnn-4", teacher="cnn-8", epochs=2, teacher_epochs=1, val_size=100, loss="mse")
    trial = plan_trial(config)
    store = TeacherStore(tmp_path / "teachers")
    store.train(trial.teachers[-1])
    data = load_data(config)
    cache = LogitCache(tmp_path / "logits")
    # A cache under the planned key, but computed by another network (a teacher trained again).
    stranger = models.build("cnn-8", data.num_classes, data.in_channels).eval()
    cache.build(trial.cache_key, stranger, data, config,
                extra={"teacher_key": trial.teacher_key, "teacher_weights_sha256": weights_digest(stranger)})
    stale = cache.load(trial.cache_key).test.clone()
    rebuilt = ensure_cached(trial, data, store, cache)
    assert rebuilt["teacher_weights_sha256"] == store.weights_digest(trial.teacher_key)
    teacher, _ = store.load(trial.teacher_key, data)
    fresh = cache.load(trial.cache_key).test
    assert torch.equal(fresh, compute_teacher_logits(teacher, data, config).test)
    assert not torch.equal(fresh, stale)
    assert sorted(os.listdir(cache.root)) == [trial.cache_key]


# -- a damaged cache is found before a trial maps it, and built again ------------------------


@pytest.fixture(scope="module")
def stored(tmp_path_factory, cifar):
    """(trial, data, store, cache): a stored teacher and the cache ensure_cached built from it."""
    config, data, _ = cifar
    trial = plan_trial(config.replace(loss="mse", alpha=1.0))
    root = tmp_path_factory.mktemp("stored")
    store = TeacherStore(root / "teachers")
    store.train(trial.teachers[-1])
    cache = LogitCache(root / "logits")
    ensure_cached(trial, data, store, cache)
    return trial, data, store, cache


def copy_of(cache: LogitCache, root) -> LogitCache:
    shutil.copytree(cache.root, root)
    return LogitCache(root)


def reorder_rows(folder):
    rows = np.load(folder / "train.npy", mmap_mode="r+")
    rows[:, [0, 1]] = rows[:, [1, 0]]
    rows.flush()


def random_payload(folder):
    # A valid header of the right shape and dtype, and the right size: only the checksum sees it.
    shape = np.load(folder / "train.npy", mmap_mode="r").shape
    np.save(folder / "train.npy", np.random.default_rng(0).standard_normal(shape, dtype=np.float32))


def truncate(folder):
    path = folder / "train.npy"
    path.write_bytes(path.read_bytes()[:-100])


def replace_val(folder):
    np.save(folder / "val.npy", np.zeros((3, 10), dtype=np.float32))


def older_format(folder):
    meta = json.loads((folder / "meta.json").read_text())
    meta["format"] = 2
    del meta["files"]
    (folder / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("damage, named, message, loads", [
    (reorder_rows, "train.npy", "does not hold what was written", True),
    (random_payload, "train.npy", "does not hold what was written", True),
    (truncate, "train.npy", "is 21628 bytes, its meta.json records 21728", False),
    (replace_val, "val.npy", "holds float32 (3, 10), its meta.json records float32 (20, 10)", False),
    (older_format, "", "has format 2, not 3 (made by an older kd-tune, without checksums)", False),
])
def test_a_damaged_cache_is_named_and_built_again(tmp_path, stored, damage, named, message, loads, caplog):
    trial, data, store, original = stored
    cache = copy_of(original, tmp_path / "logits")
    fresh = {split: getattr(cache.load(trial.cache_key), split).clone() for split in ("train", "val", "test")}
    folder = cache.path(trial.cache_key)
    assert cache.problem(trial.cache_key) is None
    damage(folder)

    problem = cache.problem(trial.cache_key)
    assert problem is not None and message in problem and str(folder / named) in problem
    if loads:  # the layout still matches meta.json: only the checksum finds it
        cache.load(trial.cache_key)
    elif named:
        with pytest.raises(CacheError, match=f"teacher-logit cache file {folder / named}"):
            cache.load(trial.cache_key)

    caplog.set_level(logging.WARNING, logger="kd_tune.teachers.logit_cache")
    meta = ensure_cached(trial, data, store, cache)
    assert warnings_of(caplog) == [f"{problem}; computing it again"]
    assert cache.problem(trial.cache_key) is None and meta == cache.meta(trial.cache_key)
    rebuilt = cache.load(trial.cache_key)
    for split, logits in fresh.items():
        assert torch.equal(getattr(rebuilt, split), logits)
    assert sorted(os.listdir(cache.root)) == [trial.cache_key]


def test_the_checksum_is_read_once_per_node_and_token(tmp_path, stored):
    trial, data, store, original = stored
    token, other = uuid.uuid4().hex, uuid.uuid4().hex
    cache = LogitCache(tmp_path / "logits", check_token=token)
    # The builder counts the cache it wrote as checked for its token.
    ensure_cached(trial, data, store, cache)
    reorder_rows(cache.path(trial.cache_key))
    assert cache.problem(trial.cache_key) is None  # not read again on this node
    assert "does not hold what was written" in LogitCache(cache.root, check_token=other).problem(trial.cache_key)
    assert "does not hold what was written" in LogitCache(cache.root).problem(trial.cache_key)  # no token: every time

    # A check that passes leaves the marker too; layout is checked on every call regardless.
    checked = LogitCache(copy_of(original, tmp_path / "checked").root, check_token=other)
    assert checked.problem(trial.cache_key) is None
    random_payload(checked.path(trial.cache_key))
    assert checked.problem(trial.cache_key) is None
    truncate(checked.path(trial.cache_key))
    assert "is 21628 bytes" in checked.problem(trial.cache_key)


def warnings_of(caplog) -> list[str]:
    """The warnings the teacher-logit cache said."""
    return [r.getMessage() for r in caplog.records
            if r.name == "kd_tune.teachers.logit_cache" and r.levelno == logging.WARNING]
