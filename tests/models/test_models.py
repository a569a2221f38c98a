"""Tests for kd_tune.models: registry, architectures, forward contract."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from kd_tune.models import Classifier, build, model_patterns, register_model

# Small members of every family, with inputs they must accept.
CIFAR_MODELS = ["wrn-10-1", "wrn-16-2", "resnet-20", "cnn-4", "mlp-16"]
DIGIT_MODELS = ["cnn-4", "cnn-8", "mlp-32"]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------- architectures


@pytest.mark.parametrize(
    "name, expected",
    [("wrn-16-2", 0.703e6), ("wrn-28-4", 5.872e6), ("wrn-40-2", 2.255e6)],
)
def test_wrn_parameter_counts_match_published(name: str, expected: float) -> None:
    count = n_params(build(name, num_classes=100))
    assert abs(count - expected) / expected < 0.005, count


def test_resnet20_is_about_027m_parameters() -> None:
    # He et al. report 0.27M for 10 classes; projection shortcuts add ~1%.
    count = n_params(build("resnet-20", num_classes=10))
    assert 0.265e6 < count < 0.28e6, count


def test_depth_sets_number_of_blocks() -> None:
    # wrn-D-W: 3 groups of (D-4)/6 blocks; resnet-N: 3 stages of (N-2)/6 blocks.
    wrn = build("wrn-22-1", num_classes=10)
    assert [len(getattr(wrn.body, f"group{i}")) for i in (1, 2, 3)] == [3, 3, 3]
    resnet = build("resnet-32", num_classes=10)
    assert [len(getattr(resnet.body, f"stage{i}")) for i in (1, 2, 3)] == [5, 5, 5]


def test_wrn_feature_dim_is_64_times_width_and_convs_have_no_bias() -> None:
    model = build("wrn-10-3", num_classes=10)
    assert model.feature_dim == 192
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(conv.bias is None for conv in convs)


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_output_shapes_cifar(name: str) -> None:
    model = build(name, num_classes=7).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 7)


@pytest.mark.parametrize("name", DIGIT_MODELS)
def test_output_shapes_digits(name: str) -> None:
    model = build(name, num_classes=10, in_channels=1).eval()
    with torch.no_grad():
        logits, features = model(torch.randn(2, 1, 8, 8), return_features=True)
    assert logits.shape == (2, 10)
    assert features.shape == (2, model.feature_dim)


@pytest.mark.parametrize(
    "name, feature_dim", [("cnn-8", 32), ("mlp-32", 32), ("resnet-20", 64), ("wrn-10-2", 128)]
)
def test_feature_dim(name: str, feature_dim: int) -> None:
    assert build(name, num_classes=10).feature_dim == feature_dim


def test_wrn_accepts_8x8_input() -> None:
    model = build("wrn-10-1", num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)


# ----------------------------------------------------------- forward contract


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_return_features_is_penultimate_layer_in_one_pass(name: str) -> None:
    torch.manual_seed(0)
    model = build(name, num_classes=5).eval()
    assert isinstance(model, Classifier)
    calls = {"body": 0, "fc": 0}
    model.body.register_forward_hook(lambda *_: calls.__setitem__("body", calls["body"] + 1))
    model.fc.register_forward_hook(lambda *_: calls.__setitem__("fc", calls["fc"] + 1))
    x = torch.randn(2, 3, 32, 32)

    with torch.no_grad():
        logits, features = model(x, return_features=True)
        assert calls == {"body": 1, "fc": 1}
        plain = model(x)

    assert features.shape == (2, model.feature_dim)
    assert torch.allclose(logits, plain)
    assert torch.allclose(model.fc(features), logits)


def test_features_carry_gradient_to_body() -> None:
    model = build("cnn-4", num_classes=3, in_channels=1)
    _, features = model(torch.randn(2, 1, 8, 8), return_features=True)
    features.pow(2).sum().backward()
    assert model.body.block1[0].weight.grad is not None
    assert model.fc.weight.grad is None  # features are taken before the head


@pytest.mark.parametrize("name", ["wrn-10-1", "resnet-8", "cnn-4", "mlp-8"])
def test_backward_gives_finite_gradients(name: str) -> None:
    torch.manual_seed(0)
    model = build(name, num_classes=4).train()
    logits = model(torch.randn(2, 3, 32, 32))
    nn.functional.cross_entropy(logits, torch.tensor([0, 3])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


# -------------------------------------------------------------- initialisation


def test_same_seed_gives_identical_weights() -> None:
    def weights(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        return build("resnet-8", num_classes=10).state_dict()

    a, b, c = weights(1), weights(1), weights(2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_initialisation_convention() -> None:
    torch.manual_seed(0)
    model = build("cnn-32", num_classes=10)
    conv = model.body.block3[0]  # 64 -> 128 channels, 3x3
    fan_out = conv.out_channels * 9
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.05)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight))
            assert torch.equal(m.bias, torch.zeros_like(m.bias))
    assert torch.equal(model.fc.bias, torch.zeros_like(model.fc.bias))


# -------------------------------------------------------------------- registry


def test_model_patterns_describe_every_family() -> None:
    lines = model_patterns()
    for family in ("wrn-D-W", "resnet-N", "cnn-W", "mlp-H"):
        assert any(line.startswith(family + " ") for line in lines), family
    assert all(len(line.split(None, 1)) == 2 for line in lines)  # has a description


@pytest.mark.parametrize(
    "name",
    ["foo", "wrn-15-2", "wrn-16-0", "wrn-4-1", "wrn-16", "resnet-21", "resnet-2",
     "cnn-0", "mlp-0", "WRN-16-2", "wrn-016-2", " cnn-4", "cnn-4x"],
)
def test_bad_names_raise_listing_all_patterns(name: str) -> None:
    with pytest.raises(ValueError) as info:
        build(name, num_classes=10)
    message = str(info.value)
    assert repr(name) in message
    for line in model_patterns():
        assert line in message


@pytest.mark.parametrize("num_classes", [1, 0, -3, 2.0, True])
def test_bad_num_classes(num_classes: object) -> None:
    with pytest.raises(ValueError, match=r"num_classes.*>= 2"):
        build("cnn-4", num_classes=num_classes)  # type: ignore[arg-type]


@pytest.mark.parametrize("in_channels", [0, -1, 1.5])
def test_bad_in_channels(in_channels: object) -> None:
    with pytest.raises(ValueError, match=r"in_channels.*>= 1"):
        build("cnn-4", num_classes=10, in_channels=in_channels)  # type: ignore[arg-type]


def test_register_model_makes_name_buildable() -> None:
    seen: list[tuple] = []

    def linear_model(hidden: int, depth: int, *, num_classes: int, in_channels: int) -> Classifier:
        seen.append((hidden, depth, num_classes, in_channels))
        body = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(in_channels * 4, hidden))
        return Classifier(body, hidden, num_classes)

    register_model(r"testlin-(\d+)x(\d+)", linear_model, "test-only linear model", display="testlin-HxD")
    assert any(line.startswith("testlin-HxD") and "test-only linear model" in line
               for line in model_patterns())

    model = build("testlin-6x2", num_classes=3, in_channels=2)
    assert seen == [(6, 2, 3, 2)]
    assert all(type(v) is int for v in seen[0])
    logits, features = model(torch.randn(2, 2, 4, 4), return_features=True)
    assert logits.shape == (2, 3) and features.shape == (2, 6)

    # The new pattern shows up in the error of a name nobody matches.
    with pytest.raises(ValueError, match=re.escape("testlin-HxD")):
        build("testlin-6", num_classes=3)


def test_register_model_second_registration() -> None:
    def builder(width: int, *, num_classes: int, in_channels: int) -> Classifier:
        body = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_channels, width))
        return Classifier(body, width, num_classes)

    register_model(r"testtwice-(\d+)", builder, "test-only", display="testtwice-W")
    register_model(r"testtwice-(\d+)", builder, "test-only", display="testtwice-W")  # same: no-op
    assert sum(line.startswith("testtwice-W") for line in model_patterns()) == 1
    def other(width, **kw):  # another object with the same behaviour
        return builder(width, **kw)

    pattern = r"testtwice-(\d+)"
    with pytest.raises(ValueError, match=f"^{re.escape(f'model pattern {pattern!r} is already registered')}$"):
        register_model(pattern, other, "test-only", display="testtwice-W")
    with pytest.raises(ValueError, match="already registered with different description"):
        register_model(r"testtwice-(\d+)", builder, "another description", display="testtwice-W")
    # Built-ins cannot be replaced either.
    with pytest.raises(ValueError, match="already registered"):
        register_model(r"cnn-(0|[1-9]\d*)", builder, "shadow")
    assert build("testtwice-3", num_classes=2).feature_dim == 3


def test_register_model_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="regular expression"):
        register_model(r"broken-(\d+", lambda *a, **k: None, "bad regex")
    with pytest.raises(TypeError):
        register_model(r"notcallable-(\d+)", "nope", "bad builder")  # type: ignore[arg-type]


def test_builder_breaking_contract_is_reported() -> None:
    register_model(r"testnofeat-(\d+)", lambda n, **_: nn.Linear(n, 2), "no feature_dim")
    with pytest.raises(TypeError, match="feature_dim"):
        build("testnofeat-3", num_classes=2)


@pytest.mark.parametrize("name, published", [("resnet-8x4", 1.23e6), ("resnet-32x4", 7.43e6)])
def test_resnet_x4_parameter_counts_match_the_dkd_papers(name: str, published: float) -> None:
    """The CRD/DKD code's ResNet8x4 and ResNet32x4 at CIFAR-100: 1.23M and 7.43M, as published."""
    model = build(name, num_classes=100)
    assert round(n_params(model) / 1e6, 2) == published / 1e6
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100) and model.feature_dim == 256
    assert [len(getattr(model.body, f"stage{i}")) for i in (1, 2, 3)] == [(int(name[7:-2]) - 2) // 6] * 3
