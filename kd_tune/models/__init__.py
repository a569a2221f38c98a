"""Model zoo for kd_tune: build teachers and students by name.

    from kd_tune.models import build
    model = build("wrn-40-2", num_classes=100)
    logits, features = model(images, return_features=True)  # (B, 100), (B, 128)

Every model maps ``(B, in_channels, H, W)`` images (or, the 1-D models of
:mod:`kd_tune.models.signal`, ``(B, in_channels, L)`` signals) to logits
``(B, num_classes)``; with ``return_features=True`` it also returns the
penultimate representation ``(B, model.feature_dim)`` (the input of the final
linear layer) from the same forward pass. See :func:`model_patterns` for the
available names and :func:`register_model` to add architectures.

May import: :mod:`kd_tune.core`. Independent of :mod:`kd_tune.data`.
"""

from kd_tune.models import catalog as _catalog  # noqa: F401  (registers built-ins)
from kd_tune.models.classifier import Classifier
from kd_tune.models.initialization import init_weights
from kd_tune.models.registry import MODELS, ModelBuilder, build, model_patterns, register_model

__all__ = [
    "MODELS",
    "Classifier",
    "ModelBuilder",
    "build",
    "init_weights",
    "model_patterns",
    "register_model",
]
