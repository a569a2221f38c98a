"""Small models for quick experiments on scikit-learn's 8x8 digits (and 32x32).

``cnn-W``: three 3x3 convolutions, features ``(B, 4W)``::

    conv3x3(in, W)   - BN - ReLU
    conv3x3(W, 2W)   - BN - ReLU
    maxpool 2x2
    conv3x3(2W, 4W)  - BN - ReLU
    global average pool

``mlp-H``: one hidden layer, features ``(B, H)``::

    AdaptiveAvgPool2d(8)   (identity on 8x8 digits, averages larger images down)
    flatten -> Linear(in * 64, H) - ReLU

cnn-32 is teacher-sized, cnn-4 / cnn-8 / mlp-H are student-sized.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from kd_tune.models.classifier import Classifier
from kd_tune.models.initialization import init_weights


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    # Bias-free: the following BN has its own shift.
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, 1, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


def small_cnn_body(width: int, in_channels: int = 3) -> tuple[nn.Sequential, int]:
    """``(B, in_channels, H, W) -> (B, 4 * width)`` for any ``H, W >= 2``."""
    if width < 1:
        raise ValueError(f"CNN width must be >= 1, got {width}")
    body = nn.Sequential(
        OrderedDict(
            block1=_conv_bn_relu(in_channels, width),
            block2=_conv_bn_relu(width, 2 * width),
            pool=nn.MaxPool2d(2),
            block3=_conv_bn_relu(2 * width, 4 * width),
            gap=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
        )
    )
    return body, 4 * width


def small_cnn(width: int, *, num_classes: int, in_channels: int = 3) -> Classifier:
    """``cnn-{width}`` as an initialised :class:`Classifier`."""
    body, feature_dim = small_cnn_body(width, in_channels)
    return init_weights(Classifier(body, feature_dim, num_classes))


def mlp_body(hidden: int, in_channels: int = 3) -> tuple[nn.Sequential, int]:
    """``(B, in_channels, H, W) -> (B, hidden)`` for any ``H, W >= 1``."""
    if hidden < 1:
        raise ValueError(f"MLP hidden size must be >= 1, got {hidden}")
    body = nn.Sequential(
        OrderedDict(
            # Fixing the spatial size makes the first Linear's width independent
            # of the input resolution.
            pool=nn.AdaptiveAvgPool2d(8),
            flatten=nn.Flatten(),
            hidden=nn.Linear(in_channels * 64, hidden),
            relu=nn.ReLU(),
        )
    )
    return body, hidden


def mlp(hidden: int, *, num_classes: int, in_channels: int = 3) -> Classifier:
    """``mlp-{hidden}`` as an initialised :class:`Classifier`."""
    body, feature_dim = mlp_body(hidden, in_channels)
    return init_weights(Classifier(body, feature_dim, num_classes))
