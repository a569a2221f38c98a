"""Models for 1-D signals ``(B, C, L)`` (MNIST-1D, length 40): the benchmark's baselines.

Greydanus and Kobak (ICML 2024) publish logistic regression 32%, MLP 68%, GRU 91% and CNN
94% test accuracy on the canonical MNIST-1D; these are kd-tune's versions of the four, built
to the same shapes (``benchmarks/mnist1d_baselines.py`` trains each with CE). Every body
first resamples the signal to :data:`LENGTH` steps (``AdaptiveAvgPool1d``, the identity on
MNIST-1D) so that layer widths do not depend on the input length.

- ``logreg``: the linear head on the flattened signal; features ``(B, C * 40)``.
- ``mlp1d-H``: two hidden layers of H units with ReLU; features ``(B, H)``.
- ``cnn1d-W``: three convolutions of W channels (kernel 5 then 3, 3; stride 2 each, so
  40 -> 19 -> 10 -> 5 steps), each conv - BN - ReLU, flattened; features ``(B, 5W)``.
- ``gru-H``: a one-layer bidirectional GRU of H units per direction over the 40 steps,
  every step's output flattened; features ``(B, 80H)``.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from kd_tune.models.classifier import Classifier
from kd_tune.models.initialization import init_weights

LENGTH = 40  # MNIST-1D's final_seq_length
_CNN_STEPS = 5  # 40 steps after three stride-2 convolutions


def _check(what: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{what} must be >= 1, got {value}")


def logistic_regression(*, num_classes: int, in_channels: int = 1) -> Classifier:
    """``logreg``: softmax regression on the raw (normalised) signal."""
    body = nn.Sequential(OrderedDict(pool=nn.AdaptiveAvgPool1d(LENGTH), flatten=nn.Flatten()))
    return init_weights(Classifier(body, in_channels * LENGTH, num_classes))


def mlp1d(hidden: int, *, num_classes: int, in_channels: int = 1) -> Classifier:
    """``mlp1d-{hidden}``: Linear(C * 40, H) - ReLU - Linear(H, H) - ReLU, then the head."""
    _check("MLP hidden size", hidden)
    body = nn.Sequential(
        OrderedDict(
            pool=nn.AdaptiveAvgPool1d(LENGTH),
            flatten=nn.Flatten(),
            hidden1=nn.Linear(in_channels * LENGTH, hidden),
            relu1=nn.ReLU(),
            hidden2=nn.Linear(hidden, hidden),
            relu2=nn.ReLU(),
        )
    )
    return init_weights(Classifier(body, hidden, num_classes))


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int) -> nn.Sequential:
    # Bias-free: the following BN has its own shift.
    return nn.Sequential(
        nn.Conv1d(in_channels, out_channels, kernel, stride=2, padding=1, bias=False),
        nn.BatchNorm1d(out_channels),
        nn.ReLU(),
    )


def cnn1d(width: int, *, num_classes: int, in_channels: int = 1) -> Classifier:
    """``cnn1d-{width}``: the benchmark's CNN (25 channels published) with BatchNorm."""
    _check("CNN width", width)
    body = nn.Sequential(
        OrderedDict(
            pool=nn.AdaptiveAvgPool1d(LENGTH),
            block1=_conv_bn_relu(in_channels, width, 5),
            block2=_conv_bn_relu(width, width, 3),
            block3=_conv_bn_relu(width, width, 3),
            flatten=nn.Flatten(),
        )
    )
    return init_weights(Classifier(body, width * _CNN_STEPS, num_classes))


class _GRUBody(nn.Module):
    """``(B, C, L) -> (B, 40 * 2H)``: a bidirectional GRU's outputs at every step, flattened."""

    def __init__(self, hidden: int, in_channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool1d(LENGTH)
        self.gru = nn.GRU(in_channels, hidden, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = self.pool(x).transpose(1, 2)  # (B, 40, C): time along dim 1 for batch_first
        out, _ = self.gru(steps)
        return out.flatten(1)


def gru(hidden: int, *, num_classes: int, in_channels: int = 1) -> Classifier:
    """``gru-{hidden}``: the benchmark's GRU (6 units published), bidirectional."""
    _check("GRU hidden size", hidden)
    return init_weights(Classifier(_GRUBody(hidden, in_channels), LENGTH * 2 * hidden, num_classes))
