"""Registers the built-in architecture families with the registry.

Imported for its side effect by ``kd_tune.models``. Digit groups use
``(0|[1-9]\\d*)`` so that each model has exactly one name ("wrn-016-2" is
rejected rather than silently aliasing "wrn-16-2"), while "cnn-0" still reaches
its builder and gets a specific error message.
"""

from __future__ import annotations

from kd_tune.models.registry import register_model
from kd_tune.models.resnet import cifar_resnet, cifar_resnet_x4
from kd_tune.models.signal import cnn1d, gru, logistic_regression, mlp1d
from kd_tune.models.small import mlp, small_cnn
from kd_tune.models.wrn import wide_resnet

_INT = r"(0|[1-9]\d*)"

register_model(
    rf"wrn-{_INT}-{_INT}",
    wide_resnet,
    "pre-activation wide ResNet (Zagoruyko & Komodakis 2016), D = 6n+4 (n >= 1), W >= 1; "
    "e.g. wrn-16-2, wrn-40-2, wrn-28-4",
    display="wrn-D-W",
)
register_model(
    rf"resnet-{_INT}",
    cifar_resnet,
    "CIFAR ResNet (He et al. 2016), N = 6n+2 (n >= 1); e.g. resnet-20, resnet-32, resnet-56, resnet-110",
    display="resnet-N",
)
register_model(
    rf"resnet-{_INT}x4",
    cifar_resnet_x4,
    "wide CIFAR ResNet of the CRD/DKD code (widths 32, 64, 128, 256), N = 6n+2; resnet-8x4 (1.23M parameters "
    "at 100 classes), resnet-32x4 (7.43M)",
    display="resnet-Nx4",
)
register_model(
    rf"cnn-{_INT}",
    small_cnn,
    "3-conv CNN for 8x8 digits or 32x32 images, W >= 1 base channels, 4W features; "
    "e.g. cnn-32 (teacher), cnn-4 / cnn-8 (students)",
    display="cnn-W",
)
register_model(
    rf"mlp-{_INT}",
    mlp,
    "one-hidden-layer MLP on input average-pooled to 8x8, H >= 1 hidden units (= features)",
    display="mlp-H",
)
register_model(
    "logreg",
    logistic_regression,
    "logistic regression on a 1-D signal (MNIST-1D, 40 steps): the linear head alone",
)
register_model(
    rf"mlp1d-{_INT}",
    mlp1d,
    "MLP on a 1-D signal (MNIST-1D), two hidden layers of H units; e.g. mlp1d-100",
    display="mlp1d-H",
)
register_model(
    rf"cnn1d-{_INT}",
    cnn1d,
    "1-D CNN (MNIST-1D), three stride-2 convolutions of W channels with BN, 5W features; "
    "e.g. cnn1d-25 (teacher), cnn1d-6 (student)",
    display="cnn1d-W",
)
register_model(
    rf"gru-{_INT}",
    gru,
    "bidirectional GRU of H units on a 1-D signal (MNIST-1D), every step's output as features; e.g. gru-6",
    display="gru-H",
)
