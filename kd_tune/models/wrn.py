"""Pre-activation Wide ResNet ``wrn-D-W`` (Zagoruyko & Komodakis, BMVC 2016).

Layout for CIFAR-shaped input (any ``H, W >= 8``; the two stride-2 groups
reduce the spatial size by 4 and global pooling removes the rest):

    conv3x3(in_channels, 16)
    group1: n blocks, width 16W, stride 1
    group2: n blocks, width 32W, stride 2
    group3: n blocks, width 64W, stride 2
    BN - ReLU - global average pool  -> features (B, 64W)
    Linear(64W, num_classes)

with ``n = (D - 4) / 6``. Each block is BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus a
shortcut; no dropout. Convolutions have no bias (a BN always follows or
precedes them).

Parameter counts at 100 classes: wrn-16-2 703,284; wrn-40-2 2,255,156;
wrn-28-4 5,872,180 (the 0.70M / 2.26M / 5.87M usually quoted in KD papers).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F

from kd_tune.models.classifier import Classifier
from kd_tune.models.initialization import init_weights


class PreActBlock(nn.Module):
    """Pre-activation basic block ``(B, in, H, W) -> (B, out, H/stride, W/stride)``.

    When the shape changes the shortcut is a bias-free 1x1 convolution applied to
    the *pre-activated* input ``relu(bn1(x))``, as in the original WRN code: the
    identity path then never carries an un-normalised tensor across a change
    of width.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.shortcut: nn.Conv2d | None = None
        if in_channels != out_channels or stride != 1:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(F.relu(self.bn2(out)))
        skip = x if self.shortcut is None else self.shortcut(pre)
        return out + skip


def _group(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
    # Only the first block of a group changes width / resolution.
    layers = [PreActBlock(in_channels, out_channels, stride)]
    layers += [PreActBlock(out_channels, out_channels, 1) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def wide_resnet_body(depth: int, width: int, in_channels: int = 3) -> tuple[nn.Sequential, int]:
    """Build the WRN feature extractor ``(B, in_channels, H, W) -> (B, 64 * width)``.

    Returns:
        ``(body, feature_dim)``; weights are not initialised here.

    Raises:
        ValueError: if ``depth`` is not ``6n + 4`` with ``n >= 1`` or ``width < 1``.
    """
    if depth < 10 or (depth - 4) % 6 != 0:
        raise ValueError(
            f"WRN depth must be 6n+4 with n >= 1 (10, 16, 22, 28, 40, ...), got {depth}"
        )
    if width < 1:
        raise ValueError(f"WRN width must be >= 1, got {width}")
    n = (depth - 4) // 6
    widths = (16 * width, 32 * width, 64 * width)
    body = nn.Sequential(
        OrderedDict(
            stem=nn.Conv2d(in_channels, 16, 3, 1, padding=1, bias=False),
            group1=_group(16, widths[0], n, stride=1),
            group2=_group(widths[0], widths[1], n, stride=2),
            group3=_group(widths[1], widths[2], n, stride=2),
            # Pre-activation blocks end on a conv, so the final BN-ReLU
            # normalises the sum before pooling.
            bn=nn.BatchNorm2d(widths[2]),
            relu=nn.ReLU(),
            pool=nn.AdaptiveAvgPool2d(1),
            flatten=nn.Flatten(),
        )
    )
    return body, widths[2]


def wide_resnet(depth: int, width: int, *, num_classes: int, in_channels: int = 3) -> Classifier:
    """``wrn-{depth}-{width}`` as an initialised :class:`Classifier`."""
    body, feature_dim = wide_resnet_body(depth, width, in_channels)
    return init_weights(Classifier(body, feature_dim, num_classes))
