"""Teacher nodes trained for real (tiny models on digits): ARCH@E, chains and ensembles in the store."""
from __future__ import annotations

import shutil

import pytest
import torch

from kd_tune.core.config import RunConfig
from kd_tune.plan.planner import plan_trial
from kd_tune.plan.teacher_dag import teacher_dag
from kd_tune.teachers.logit_cache import LogitCache, ensure_cached
from kd_tune.teachers.store import TeacherError, TeacherStore
from kd_tune.train.evaluation import accuracy, predict_logits
from kd_tune.train.trainer import EpochEnd, load_data, train

RUN = RunConfig(teacher="cnn-8", student="cnn-4", loss="kl", tau=4.0, alpha=0.9, epochs=2, val_size=100,
                device="cpu", lr=0.05)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data():
    return load_data(RUN)


def logits(model, data) -> torch.Tensor:
    return predict_logits(model, data.test.images, data.normalize, device=CPU)


def test_a_run_stopped_at_epoch_e_is_the_full_run_up_to_e(data):
    config = RUN.teacher_config().replace(epochs=3, schedule="cosine")
    states = {}

    def keep(end: EpochEnd) -> None:
        states[int(end.metrics["epoch"])] = {k: v.clone() for k, v in end.state()["model"].items()}

    full = train(config, data=data, on_epoch=keep)
    stopped = train(config, data=data, stop_epoch=2)
    assert [h["lr"] for h in stopped.history] == [h["lr"] for h in full.history[:2]]
    # The cosine schedule of 3 epochs, not of 2: the learning rate of epoch 2 is that of the full run.
    assert stopped.history[1]["lr"] == pytest.approx(0.05 * 0.75)
    assert stopped.status == "completed" and stopped.measurements is not None
    assert all(torch.equal(stopped.model.state_dict()[k], v) for k, v in states[2].items())
    with pytest.raises(ValueError, match="stop_epoch=4 must be in 1..3"):
        train(config, data=data, stop_epoch=4)


def test_an_undertrained_teacher_is_stored_with_its_accuracies(tmp_path, data):
    store = TeacherStore(tmp_path)
    (node,) = teacher_dag(RUN.replace(teacher="cnn-8@1"))
    meta = store.train(node)
    assert meta["kind"] == "undertrained" and meta["stop_epoch"] == 1 and len(meta["history"]) == 1
    assert meta["config"]["epochs"] == RUN.epochs  # the full recipe, stopped early
    assert 0 <= meta["metrics"]["train_acc"] <= 1 and 0 <= meta["metrics"]["test_acc"] <= 1
    model, _ = store.load(node.key, data)
    assert accuracy(logits(model, data), data.test.labels) == pytest.approx(meta["metrics"]["test_acc"])
    assert store.progress(node.key)["epochs"] == 1


def test_a_chain_is_trained_in_order_each_step_from_the_one_before(tmp_path, data):
    store = TeacherStore(tmp_path)
    first, step = teacher_dag(RUN.replace(teacher="cnn-8>cnn-4[mse:0.5]"))
    with pytest.raises(TeacherError, match=f"teacher {first.key} is not in the store"):
        store.train(step)  # its source first
    store.train(first)
    meta = store.train(step)
    assert (meta["kind"], meta["spec"], meta["arch"], meta["sources"]) == ("sequential", "cnn-8>cnn-4[mse:0.5]",
                                                                          "cnn-4", [first.key])
    assert (meta["config"]["loss"], meta["config"]["alpha"], meta["config"]["teacher"]) == ("mse", 0.5, "cnn-8")
    # The step distilled from the first network: the same run with it as the teacher, by hand.
    source, _ = store.load(first.key, data)
    again = train(step.run, data=data, teacher=source)
    assert again.history[-1]["train_loss"] == meta["metrics"]["train_loss"]
    assert meta["history"][0]["teacher_forward_samples"] > 0
    model, _ = store.load(step.key, data)
    assert torch.equal(logits(model, data), logits(again.model, data))


@pytest.fixture(scope="module")
def ensemble(tmp_path_factory, data):
    """A stored ensemble of three digits CNNs (two seeds of cnn-8 and a cnn-4) and its nodes."""
    store = TeacherStore(tmp_path_factory.mktemp("teachers"))
    nodes = teacher_dag(RUN.replace(teacher="cnn-8+cnn-4+cnn-8", teacher_epochs=1))
    for node in nodes:
        store.train(node)
    return store, nodes


def test_an_ensembles_logits_are_the_mean_of_its_members(ensemble, data):
    store, nodes = ensemble
    *members, whole = nodes
    model, meta = store.load(whole.key, data)
    parts = torch.stack([logits(store.load(m.key, data)[0], data) for m in members])
    mean = logits(model, data)
    torch.testing.assert_close(mean, parts.mean(0), rtol=0, atol=1e-6)
    assert not torch.allclose(mean, parts.sum(0))  # the mean, not the paper's sum
    assert meta["metrics"]["test_acc"] == pytest.approx(accuracy(parts.mean(0), data.test.labels))
    train_logits = predict_logits(model, data.train.images, data.normalize, device=CPU)
    assert meta["metrics"]["train_acc"] == pytest.approx(accuracy(train_logits, data.train.labels))
    assert meta["train_seconds"] == 0.0 and meta["history"] == []
    assert not store.weights_path(whole.key).exists() and store.has(whole.key)
    assert store.measurements(whole.key).values["correct"].mean() == pytest.approx(meta["metrics"]["test_acc"])


def test_an_ensembles_cache_holds_its_mean_logits(ensemble, data, tmp_path):
    store, nodes = ensemble
    trial = plan_trial(RUN.replace(teacher="cnn-8+cnn-4+cnn-8", teacher_epochs=1))
    assert trial.teacher_key == nodes[-1].key
    meta = ensure_cached(trial, data, store, LogitCache(tmp_path))
    assert meta["teacher_weights_sha256"] == store.weights_digest(trial.teacher_key)
    cached = LogitCache(tmp_path).load(trial.cache_key)
    members = torch.stack([logits(store.load(m.key, data)[0], data) for m in nodes[:-1]])
    torch.testing.assert_close(cached.test, members.mean(0), rtol=0, atol=1e-6)


def test_an_ensemble_whose_member_changed_is_refused(ensemble, data, tmp_path):
    store, nodes = ensemble
    copy = TeacherStore(tmp_path / "copy")
    shutil.copytree(store.root, copy.root)
    whole = nodes[-1]
    assert copy.verify(whole.key) is None
    # A member trained again with other weights (here: another member's record and file).
    member = nodes[0].key
    shutil.copy(copy.meta_path(nodes[1].key), copy.meta_path(member))
    shutil.copy(copy.weights_path(nodes[1].key), copy.weights_path(member))
    problem = copy.verify(whole.key)
    assert problem is not None and "made from other member weights" in problem
    copy.weights_path(member).write_bytes(b"not a teacher")
    assert f"ensemble teacher {whole.key}: teacher file" in copy.verify(whole.key)
