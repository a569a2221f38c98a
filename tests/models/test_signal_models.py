"""The 1-D models for MNIST-1D: shapes, feature widths, the Classifier contract, teacher specs."""
from __future__ import annotations

import pytest
import torch

from kd_tune.core.config import preset
from kd_tune.models import build
from kd_tune.train.validation import run_problems

# name -> feature width (the input of the head)
SIGNAL_MODELS = {"logreg": 40, "mlp1d-100": 100, "cnn1d-25": 125, "cnn1d-6": 30, "gru-6": 480}


@pytest.mark.parametrize(("name", "features"), SIGNAL_MODELS.items())
def test_signal_models_map_signals_to_logits_and_features(name, features):
    torch.manual_seed(0)
    model = build(name, num_classes=10, in_channels=1)
    x = torch.randn(5, 1, 40)
    logits, feats = model(x, return_features=True)
    assert logits.shape == (5, 10) and feats.shape == (5, features) and model.feature_dim == features
    assert torch.equal(model(x), logits)
    logits.sum().backward()  # every parameter trains
    assert all(p.grad is not None for p in model.parameters())


def test_logreg_is_the_head_alone_and_widths_scale():
    assert sum(p.numel() for p in build("logreg", 10, 1).parameters()) == 40 * 10 + 10
    assert build("cnn1d-12", 10, 1).feature_dim == 60 and build("gru-3", 10, 1).feature_dim == 240
    # other lengths and channels are resampled to 40 steps
    assert build("cnn1d-6", 10, 2)(torch.randn(3, 2, 64)).shape == (3, 10)
    with pytest.raises(ValueError, match="invalid model name"):
        build("cnn1d-0", 10, 1)


def test_weights_depend_on_the_seed_only():
    torch.manual_seed(3)
    a = build("gru-6", 10, 1).state_dict()
    torch.manual_seed(3)
    b = build("gru-6", 10, 1).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_signal_models_are_valid_teachers_and_students_of_the_cpu_preset():
    for teacher in ("cnn1d-25+gru-6+mlp1d-100", "cnn1d-25>gru-6[mse]", "gru-6@3"):
        assert run_problems(preset("cpu", teacher=teacher, student="logreg")) == []
    assert any("data_samples" in p for p in run_problems(preset("digits", data_samples=1000)))
