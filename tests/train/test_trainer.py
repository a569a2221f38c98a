"""The plain-PyTorch training loop: metrics, determinism, resume, divergence, optimizer."""
from __future__ import annotations

import math

import pytest
import torch

from kd_tune import models
from kd_tune.core.config import RunConfig
from kd_tune.core.status import TrialStatus
from kd_tune.teachers.training import load_teacher, save_teacher, train_teacher
from kd_tune.train.checkpoint import load_state, save_state
from kd_tune.train.optim import build_optimizer, build_scheduler
from kd_tune.train.trainer import EpochEnd, load_data, train

METRICS = {"epoch", "train_loss", "train_acc", "val_acc", "test_acc", "test_logit_mse", "test_agreement",
           "lr", "epoch_time_s", "teacher_forward_samples"}
TINY = RunConfig(loss="ce", epochs=3, teacher_epochs=8, student="cnn-4", teacher="cnn-8", val_size=100)


@pytest.fixture(scope="module")
def data():
    return load_data(TINY)


@pytest.fixture(scope="module")
def teacher(data):
    return train_teacher(TINY, data=data)


def without_times(history):
    """The science of a history: without wall times and teacher work (a resumed run redoes its test pass)."""
    return [{k: v for k, v in h.items() if k not in ("epoch_time_s", "teacher_forward_samples")} for h in history]


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_teacher_learns_digits(teacher):
    assert teacher.status == TrialStatus.COMPLETED
    assert len(teacher.history) == 8
    assert teacher.final["test_acc"] > 0.8
    assert set(teacher.final) == METRICS
    assert math.isnan(teacher.final["test_agreement"])  # no teacher of its own


@pytest.mark.parametrize("loss", ["kl", "mse"])
def test_distillation_reports_every_metric(data, teacher, loss):
    cfg = TINY.replace(loss=loss, tau=math.inf if loss == "kl" else 1.0, alpha=1.0, epochs=8)
    result = train(cfg, data=data, teacher=teacher.model)
    assert result.status == TrialStatus.COMPLETED
    assert [h["epoch"] for h in result.history] == list(range(1, 9))
    for h in result.history:
        assert set(h) == METRICS
        assert all(math.isfinite(v) for v in h.values())
        assert 0 <= h["test_agreement"] <= 1 and h["test_logit_mse"] >= 0
    assert result.final["test_agreement"] > 0.5


def test_teacher_metrics_are_consistent(data, teacher):
    # agreement and logit MSE computed by the trainer match a direct evaluation
    result = train(TINY.replace(loss="kl", tau=4.0, epochs=1), data=data, teacher=teacher.model)
    assert result.model.training is False
    with torch.no_grad():
        x = data.normalize(data.test.images)
        zs, zt = result.model(x), teacher.model(x)
    assert result.final["test_logit_mse"] == pytest.approx(((zs - zt) ** 2).mean().item(), rel=1e-5)
    assert result.final["test_agreement"] == pytest.approx((zs.argmax(1) == zt.argmax(1)).float().mean().item())
    assert result.final["test_acc"] == pytest.approx((zs.argmax(1) == data.test.labels).float().mean().item())


def test_kd_needs_a_teacher(data):
    with pytest.raises(ValueError, match="needs a teacher"):
        train(TINY.replace(loss="kl"), data=data)


def test_two_runs_with_one_seed_are_identical(data, teacher):
    cfg = TINY.replace(loss="kl", tau=4.0, seed=3)
    a = train(cfg, data=data, teacher=teacher.model)
    b = train(cfg, data=data, teacher=teacher.model)
    assert without_times(a.history) == without_times(b.history)
    assert same_weights(a.model, b.model)
    c = train(cfg.replace(seed=4), data=data, teacher=teacher.model)
    assert without_times(c.history) != without_times(a.history)


def test_resumed_run_ends_identical_to_uninterrupted(tmp_path, data, teacher):
    cfg = TINY.replace(loss="mse", alpha=0.5, epochs=4, lr=0.02, schedule="step", milestones=(2, 3), gamma=0.5)
    saved = {}

    def keep_epoch_2(end):
        if end.metrics["epoch"] == 2:
            saved["path"] = save_state(tmp_path / "ckpt.pt", end.state())

    full = train(cfg, data=data, teacher=teacher.model, on_epoch=keep_epoch_2)
    state = load_state(saved["path"])  # through weights_only=True loading
    assert state["epoch"] == 2
    torch.manual_seed(12345)  # resumption must not depend on the caller's RNG
    resumed = train(cfg, data=data, teacher=teacher.model, resume_state=state)
    assert without_times(resumed.history) == without_times(full.history)
    assert [h["lr"] for h in full.history] == [0.02, 0.02, 0.01, 0.005]
    assert same_weights(resumed.model, full.model)
    # A run may resume at another thread count (as on another device): where it runs is not what it is.
    # (The count in effect now, so that the test leaves torch's setting as it found it.)
    elsewhere = train(cfg.replace(threads=torch.get_num_threads()), data=data, teacher=teacher.model,
                      resume_state=state)
    assert elsewhere.status is TrialStatus.COMPLETED and len(elsewhere.history) == 4


def test_resume_refuses_a_different_config(tmp_path, data, teacher):
    states = []
    train(TINY.replace(epochs=1), data=data, on_epoch=lambda end: states.append(end.state()))
    with pytest.raises(ValueError, match="lr"):
        train(TINY.replace(epochs=1, lr=0.5), data=data, resume_state=states[0])


def test_divergence_stops_the_run(data, teacher):
    ends = []
    result = train(TINY.replace(loss="mse", alpha=1.0, lr=1e6, epochs=5, schedule="constant"),
                   data=data, teacher=teacher.model, on_epoch=ends.append)
    assert result.status == TrialStatus.DIVERGED
    assert result.diverged_epoch == len(result.history) < 5
    assert not math.isfinite(result.history[-1]["train_loss"])
    assert [e.status for e in ends] == [TrialStatus.RUNNING] * (len(ends) - 1) + [TrialStatus.DIVERGED]
    assert all(math.isnan(ends[-1].metrics[k]) for k in ("train_acc", "val_acc", "test_acc", "test_agreement"))


def test_the_epoch_hook_reports_metrics_status_and_state(data, teacher):
    ends: list[EpochEnd] = []
    result = train(TINY.replace(loss="kl", tau=4.0), data=data, teacher=teacher.model, on_epoch=ends.append)
    assert [e.status for e in ends] == [TrialStatus.RUNNING, TrialStatus.RUNNING, TrialStatus.COMPLETED]
    assert [e.metrics for e in ends] == list(result.history)
    ends[0].metrics["test_acc"] = -1.0  # the hook gets a copy: the result's history is not the caller's
    assert result.history[0]["test_acc"] >= 0
    # A run resumed from its last epoch has nothing left to do and is completed as it was.
    resumed = train(TINY.replace(loss="kl", tau=4.0), data=data, teacher=teacher.model,
                    resume_state=ends[-1].state(), on_epoch=ends.append)
    assert resumed.status == TrialStatus.COMPLETED and len(ends) == 3
    assert without_times(resumed.history) == without_times(result.history)


def test_weight_decay_skips_one_dimensional_parameters():
    torch.manual_seed(0)
    model = models.build("cnn-4", 10, 1)
    cfg = RunConfig(lr=0.1, weight_decay=0.01, momentum=0.0, nesterov=False)
    opt = build_optimizer(model, cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    (0.0 * sum(p.sum() for p in model.parameters())).backward()  # zero gradient: only decay moves weights
    opt.step()
    for name, p in model.named_parameters():
        if p.ndim > 1:
            assert torch.allclose(p, before[name] * (1 - 0.1 * 0.01)), name
        else:  # BN weights and biases, layer biases
            assert torch.equal(p, before[name]), name


def test_cosine_schedule_reaches_zero():
    model = models.build("mlp-4", 10, 1)
    cfg = RunConfig(schedule="cosine", epochs=4, lr=0.1)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == 0.1 and lrs[2] == pytest.approx(0.05) and opt.param_groups[0]["lr"] == pytest.approx(0.0)


def test_teacher_file_round_trip(tmp_path, data, teacher):
    path = save_teacher(tmp_path / "t.pt", TINY.teacher_config(), teacher, data)
    model, meta = load_teacher(path, TINY, data)
    assert same_weights(model, teacher.model)
    assert meta["metrics"]["test_acc"] == teacher.final["test_acc"]
    assert not any(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="architecture"):
        load_teacher(path, TINY.replace(teacher="cnn-32"), data)
