"""The one model shape every architecture in kd_tune shares: a body plus a linear head.

Distillation losses need both the logits and the penultimate representation of
teacher and student. Keeping the final ``nn.Linear`` outside the architecture-
specific body means every model exposes the same two tensors in the same way,
and a new architecture only has to supply a body ``(B, C, H, W) -> (B, F)``.
"""

from __future__ import annotations

import torch
from torch import nn


class Classifier(nn.Module):
    """``body`` maps images to feature vectors, ``fc`` maps features to logits.

    Args:
        body: module taking ``(B, C, H, W)`` and returning ``(B, feature_dim)``.
        feature_dim: width ``F`` of the body's output.
        num_classes: number of output logits.

    Attributes:
        body: the feature extractor.
        fc: ``nn.Linear(feature_dim, num_classes)``.
        feature_dim: ``F``, also the input width of ``fc``.
        num_classes: number of logits.
    """

    def __init__(self, body: nn.Module, feature_dim: int, num_classes: int) -> None:
        super().__init__()
        if feature_dim < 1:
            raise ValueError(f"feature_dim must be >= 1, got {feature_dim}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.body = body
        self.fc = nn.Linear(feature_dim, num_classes)
        self.feature_dim = int(feature_dim)
        self.num_classes = int(num_classes)

    def forward(
        self, x: torch.Tensor, return_features: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Run the body once and the head once.

        Args:
            x: images ``(B, C, H, W)``.
            return_features: also return the penultimate representation.

        Returns:
            logits ``(B, num_classes)``, or ``(logits, features)`` with features
            ``(B, feature_dim)`` when ``return_features`` is true. ``features`` is
            exactly the tensor fed to ``fc`` (not detached), so feature-based
            losses backpropagate into the body.
        """
        features = self.body(x)
        logits = self.fc(features)
        if return_features:
            return logits, features
        return logits
