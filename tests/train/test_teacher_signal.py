"""Teacher signals: online, cached and no teacher answer the training loop alike."""
from __future__ import annotations

import pytest
import torch
from cifar_files import tiny_cifar10_run

from kd_tune import models
from kd_tune.core.config import RunConfig
from kd_tune.data import epoch_batches
from kd_tune.train.teacher_logits import compute_teacher_logits
from kd_tune.train.teacher_signal import CachedTeacher, NoTeacher, OnlineTeacher, teacher_signal

CPU = torch.device("cpu")
# 180 training images in batches of 32 (the last one partial), 20 validation, 40 test.
CIFAR = RunConfig(dataset="cifar10", student="cnn-4", teacher="cnn-8", val_size=20, epochs=2, batch_size=32,
                  loss="kl", tau=4.0, alpha=0.9)


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
    config, data, teacher = tiny_cifar10_run(tmp_path_factory.mktemp("cifar"), CIFAR, teacher_seed=11)
    assert data.augment and len(data.train) == 180 and len(data.test) == 40
    return config, data, teacher


def epoch_targets(signal, config, data, epoch):
    """What ``signal`` answers for every batch of ``epoch``, in the training loop's order."""
    signal.start_epoch(epoch)
    return [signal.batch(idx, data.normalize(views))
            for idx, views in epoch_batches(data.train.images, seed=config.seed, epoch=epoch,
                                            batch_size=config.batch_size, augment=data.augment)]


def test_cached_and_online_signals_give_the_same_batch_logits(cifar):
    config, data, teacher = cifar
    online = OnlineTeacher(teacher, data, device=CPU)
    cached = CachedTeacher(compute_teacher_logits(teacher, data, config), device=CPU)
    for epoch in range(config.epochs):
        online_rows = epoch_targets(online, config, data, epoch)
        cached_rows = epoch_targets(cached, config, data, epoch)
        assert len(online_rows) == len(cached_rows) == 6
        for a, b in zip(online_rows, cached_rows):
            assert a.dtype == b.dtype == torch.float32 and a.shape == b.shape and a.shape[1] == 10
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cached.test_logits(), online.test_logits(), rtol=1e-5, atol=1e-6)


def test_views_change_with_the_epoch(cifar):
    # A cached signal that ignored the epoch would serve epoch 0's views forever.
    config, data, teacher = cifar
    cached = CachedTeacher(compute_teacher_logits(teacher, data, config), device=CPU)
    every = torch.arange(len(data.train))
    rows = []
    for epoch in range(2):
        cached.start_epoch(epoch)
        rows.append(cached.batch(every, data.normalize(data.train.images)))
    assert rows[0].shape == rows[1].shape == (180, 10) and not torch.equal(rows[0], rows[1])


def test_online_teacher_counts_its_forward_samples(cifar):
    config, data, teacher = cifar
    fresh = models.build("cnn-8", data.num_classes, data.in_channels)
    fresh.load_state_dict(teacher.state_dict())
    assert fresh.training
    online = OnlineTeacher(fresh, data, device=CPU)
    # Frozen in place: eval mode (BN running statistics), no gradients.
    assert not any(p.requires_grad for p in fresh.parameters()) and not fresh.training
    # The test set runs once, at construction, and is reported with the first epoch.
    epoch_targets(online, config, data, 0)
    assert online.take_forward_samples() == 180 + 40
    epoch_targets(online, config, data, 1)
    assert online.take_forward_samples() == 180
    assert online.take_forward_samples() == 0
    with torch.no_grad():
        direct = teacher(data.normalize(data.test.images))
    torch.testing.assert_close(online.test_logits(), direct, rtol=1e-5, atol=1e-5)


def test_cached_teacher_never_runs_the_teacher(cifar):
    config, data, teacher = cifar
    logits = compute_teacher_logits(teacher, data, config, dtype=torch.float16)
    cached = CachedTeacher(logits, device=CPU)
    with pytest.raises(RuntimeError, match="before start_epoch"):
        cached.batch(torch.tensor([0, 1]), data.normalize(data.train.images[:2]))
    rows = epoch_targets(cached, config, data, 1)
    assert all(r.dtype == torch.float32 for r in rows)  # float16 storage, float32 targets
    idx = torch.tensor([3, 179, 0])
    assert torch.equal(cached.batch(idx, data.normalize(data.train.images[idx])), logits.train[1][idx].float())
    assert cached.take_forward_samples() == 0
    assert torch.equal(cached.test_logits(), logits.test.float())


def test_no_teacher_gives_nothing_but_optional_test_logits(cifar):
    _, data, _ = cifar
    none = NoTeacher()
    none.start_epoch(0)
    assert none.batch(torch.tensor([0]), data.normalize(data.train.images[:1])) is None
    assert none.test_logits() is None and none.take_forward_samples() == 0
    test = torch.randn(40, 10)
    reference = NoTeacher(test, forward_samples=40)
    assert reference.batch(torch.tensor([0]), data.normalize(data.train.images[:1])) is None
    assert reference.test_logits() is test
    assert reference.take_forward_samples() == 40 and reference.take_forward_samples() == 0


def test_the_factory_picks_the_source_from_loss_and_teacher(cifar):
    config, data, teacher = cifar
    logits = compute_teacher_logits(teacher, data, config)
    assert isinstance(teacher_signal(config, data, teacher=teacher, device=CPU), OnlineTeacher)
    assert isinstance(teacher_signal(config, data, teacher_logits=logits, device=CPU), CachedTeacher)
    assert teacher_signal(config.replace(loss="ce"), data, device=CPU).test_logits() is None

    # CE with a teacher: no per-batch target, but the test logits for agreement (and their cost).
    ce = teacher_signal(config.replace(loss="ce"), data, teacher=teacher, device=CPU)
    ce.start_epoch(0)
    assert ce.batch(torch.tensor([0]), data.normalize(data.train.images[:1])) is None
    assert ce.test_logits().shape == (40, 10) and ce.take_forward_samples() == 40
    ce_cached = teacher_signal(config.replace(loss="ce"), data, teacher_logits=logits, device=CPU)
    assert isinstance(ce_cached, NoTeacher) and ce_cached.take_forward_samples() == 0
    assert torch.equal(ce_cached.test_logits(), logits.test)


def test_the_factory_refuses_what_cannot_train(cifar):
    config, data, teacher = cifar
    logits = compute_teacher_logits(teacher, data, config)
    with pytest.raises(ValueError, match="not both"):
        teacher_signal(config, data, teacher=teacher, teacher_logits=logits, device=CPU)
    with pytest.raises(ValueError, match="needs a teacher"):
        teacher_signal(config.replace(loss="mse"), data, device=CPU)
    with pytest.raises(ValueError, match=r"train is \(2, 180, 10\), the run needs \(3, 180, 10\)"):
        teacher_signal(config.replace(epochs=3), data, teacher_logits=logits, device=CPU)
