"""CIFAR ResNets: ``resnet-N`` and the wide ``resnet-Nx4`` of the CRD and DKD code.

``resnet-N``: He et al., CVPR 2016, section 4.2. ``resnet-Nx4``: the code of Tian et al.
(CRD, ICLR 2020), used by Zhao et al. (DKD, CVPR 2022).

Layout (``N = 6n + 2``; widths w0..w3 = 16, 16, 32, 64 for ``resnet-N`` and 32, 64, 128,
256 for ``resnet-Nx4``):

    conv3x3(in_channels, w0) - BN - ReLU
    stage1: n blocks, width w1, stride 1
    stage2: n blocks, width w2, stride 2
    stage3: n blocks, width w3, stride 2
    global average pool  -> features (B, w3)
    Linear(w3, num_classes)

``resnet-8x4`` has 1,233,540 parameters and ``resnet-32x4`` 7,433,860 at 100 classes,
the 1.23M and 7.43M of the DKD paper's tables (the CRD code's models, whose first stage
also widens 32 -> 64 through a projection shortcut, as here).

Blocks are post-activation: conv3x3-BN-ReLU-conv3x3-BN, add shortcut, ReLU.

Shortcut choice: where the shape changes (the first block of stages 2 and 3)
we use a projection, 1x1 conv (stride 2) + BN -- the paper's option B --
rather than option A (zero-padded identity). It is simpler, has no
parameter-free hack, and is what most KD code bases use. It adds
2,752 parameters over option A: resnet-20 has **272,474 parameters at 10
classes** (278,324 at 100 classes) versus 269,722 with option A; both round
to the paper's "0.27M".
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F

from kd_tune.models.classifier import Classifier
from kd_tune.models.initialization import init_weights


class BasicBlock(nn.Module):
    """Post-activation basic block ``(B, in, H, W) -> (B, out, H/stride, W/stride)``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if in_channels != out_channels or stride != 1:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def _stage(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [BasicBlock(in_channels, out_channels, stride)]
    layers += [BasicBlock(out_channels, out_channels, 1) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


RESNET_WIDTHS = (16, 16, 32, 64)
RESNET_X4_WIDTHS = (32, 64, 128, 256)


def cifar_resnet_body(depth: int, in_channels: int = 3,
                      widths: tuple[int, int, int, int] = RESNET_WIDTHS) -> tuple[nn.Sequential, int]:
    """Build the ResNet feature extractor ``(B, in_channels, H, W) -> (B, widths[3])``.

    Returns:
        ``(body, feature_dim)``; weights are not initialised here.

    Raises:
        ValueError: if ``depth`` is not ``6n + 2`` with ``n >= 1``.
    """
    if depth < 8 or (depth - 2) % 6 != 0:
        raise ValueError(
            f"ResNet depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...), got {depth}"
        )
    n = (depth - 2) // 6
    body = nn.Sequential(
        OrderedDict(
            stem=nn.Conv2d(in_channels, widths[0], 3, 1, padding=1, bias=False),
            stem_bn=nn.BatchNorm2d(widths[0]),
            stem_relu=nn.ReLU(),
            stage1=_stage(widths[0], widths[1], n, stride=1),
            stage2=_stage(widths[1], widths[2], n, stride=2),
            stage3=_stage(widths[2], widths[3], n, stride=2),
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
        )
    )
    return body, widths[3]


def cifar_resnet(depth: int, *, num_classes: int, in_channels: int = 3) -> Classifier:
    """``resnet-{depth}`` as an initialised :class:`Classifier`."""
    body, feature_dim = cifar_resnet_body(depth, in_channels)
    return init_weights(Classifier(body, feature_dim, num_classes))


def cifar_resnet_x4(depth: int, *, num_classes: int, in_channels: int = 3) -> Classifier:
    """``resnet-{depth}x4`` (the CRD code's ``resnet{depth}x4``: widths 32, 64, 128, 256), initialised."""
    body, feature_dim = cifar_resnet_body(depth, in_channels, RESNET_X4_WIDTHS)
    return init_weights(Classifier(body, feature_dim, num_classes))
