"""Distillation losses with the conventions of Kim et al. (IJCAI 2021).

Notation: ``z_s`` student logits and ``z_t`` teacher logits, both of shape (B, K)
for a batch of B samples and K classes; ``y`` the (possibly noisy) hard labels,
int64 of shape (B,). Every loss below is a mean over the batch.

* ``ce``:  ``CE(z_s, y)``, the usual cross-entropy with hard labels. It ignores the
  teacher, ``tau`` and ``alpha``.
* ``kl``:  ``(1 - alpha) * CE(z_s, y) + alpha * KD_tau`` with
  ``KD_tau = tau**2 * KL(softmax(z_t / tau) || softmax(z_s / tau))``, the KL summed
  over the K classes and averaged over the batch (``batchmean``). The ``tau**2``
  keeps the gradient scale independent of tau (Hinton et al. 2015) and is applied
  for every alpha, so the total is continuous in alpha on all of [0, 1].
  ``tau = inf`` is the limit of ``KD_tau``: ``1/(2K) * ||c(z_s) - c(z_t)||**2``
  where ``c(z) = z - mean_k(z)`` centres each logit vector. Its gradient with respect
  to one sample's student logits is ``(c(z_s) - c(z_t)) / K`` (times 1/B from the
  batch mean). The limit is computed as a loss and differentiated by autograd.
  Any finite ``tau > 0`` is allowed, ``tau < 1`` included; as ``tau -> 0`` the KL
  term tends to label matching (the paper's proposition: ``KD_tau / tau`` tends to
  ``max_k z_s - z_s[argmax z_t]``).
* ``mse``: ``(1 - alpha) * CE(z_s, y) + alpha * MSE(z_s, z_t)`` where MSE is the mean
  squared error between the logit vectors averaged over batch and classes
  (``torch.nn.MSELoss()`` default), i.e. ``||z_s - z_t||**2 / (B * K)``.

``kl`` at ``tau = inf`` against ``mse``, per sample (drop the common 1/B): with
``d = z_s - z_t`` and ``m = mean_k(d)``, MSE's term ``||d||**2 / K`` has the gradient
``2 d / K = 2 c(d) / K + 2 m / K`` (``c(d) = c(z_s) - c(z_t)``), the limit
``||c(d)||**2 / (2K)`` has ``c(d) / K``. So at the same alpha the MSE term pulls the
centred logits twice as hard, and it also pulls the logit mean, which KL leaves free at
every tau. Where the mean gap is 0, ``mse`` at alpha ``a`` has the gradient of ``kl`` at
``tau = inf`` and alpha ``2a / (1 + a)``, times ``1 + a``: at ``a = 1``, KL at
``tau = inf`` with twice the learning rate steps as MSE does (plain SGD; weight decay,
which is not scaled, aside). Comparing the two at equal alpha and learning rate
compares a KD pull of one strength with one of twice that.

KD terms live in a registry so that a new loss can be added by name
(:func:`register_kd_term`); the CE mixing rule is shared by all of them.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from kd_tune.core.config import tau_alpha_problems
from kd_tune.core.registry import Registry

Tensor = torch.Tensor
KDTerm = Callable[[Tensor, Tensor, float], Tensor]
LossFn = Callable[[Tensor, "Tensor | None", Tensor], Tensor]

LOSSES: Registry[KDTerm] = Registry("loss")
"""KD terms by loss name. ``ce`` is not an entry: it has no KD term, and the name is
reserved by :func:`register_kd_term`."""


@LOSSES.register("kl")
def kl_term(student_logits: Tensor, teacher_logits: Tensor, tau: float) -> Tensor:
    """``tau**2 * KL(softmax(z_t/tau) || softmax(z_s/tau))``, batch mean; tau may be inf."""
    if math.isinf(tau):
        return logit_matching_limit(student_logits, teacher_logits)
    log_p_s = F.log_softmax(student_logits / tau, dim=1)
    log_p_t = F.log_softmax(teacher_logits / tau, dim=1)
    # log_target=True keeps the teacher side in log space: exact for tiny tau, where
    # softmax(z_t/tau) underflows to exact zeros.
    return tau * tau * F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)


def logit_matching_limit(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """The tau -> inf limit of the KL term: ``1/(2K) * ||c(z_s) - c(z_t)||**2``, batch mean."""
    diff = student_logits - teacher_logits
    centred = diff - diff.mean(dim=1, keepdim=True)
    num_classes = student_logits.shape[1]
    return centred.pow(2).sum(dim=1).mean() / (2.0 * num_classes)


@LOSSES.register("mse")
def mse_term(student_logits: Tensor, teacher_logits: Tensor, tau: float) -> Tensor:
    """Mean squared error between logit vectors over batch and classes; tau is unused."""
    del tau
    return F.mse_loss(student_logits, teacher_logits)


def register_kd_term(name: str, term: KDTerm) -> None:
    """Add a KD term ``term(z_s, z_t, tau) -> scalar`` usable as ``loss=name``.

    The total loss is then ``(1 - alpha) * CE + alpha * term``, like ``kl`` and ``mse``.
    Registering the same term under the same name again is a no-op; ``ce`` or another
    taken name is a ValueError.
    """
    if name == "ce":
        raise ValueError(f"loss {name!r} is already registered")
    # Checked here: LOSSES.register(name, None) would quietly return a decorator instead.
    if not callable(term):
        raise TypeError(f"KD term for loss {name!r} must be callable, got {type(term).__name__}")
    LOSSES.register(name, term)


def loss_names() -> list[str]:
    """All valid values of ``loss``: ``ce``, then the KD terms in registration order."""
    return ["ce", *LOSSES.names()]


def loss_name_problems(loss: str) -> list[str]:
    """A problem sentence when ``loss`` is neither ``ce`` nor a registered KD term."""
    if loss in loss_names():
        return []
    return [f"loss={loss!r} is unknown; allowed: {', '.join(loss_names())}"]


def check_loss_args(loss: str, tau: float, alpha: float) -> list[str]:
    """Return every problem with (loss, tau, alpha) as a readable sentence; empty if valid."""
    return loss_name_problems(loss) + tau_alpha_problems(tau, alpha)


def make_loss(loss: str, *, tau: float = 1.0, alpha: float = 1.0) -> LossFn:
    """Validate (loss, tau, alpha) once and return ``fn(z_s, z_t, y) -> scalar``.

    The returned function does no per-call checks (no host-device syncs), which is
    what a training loop wants; :func:`distillation_loss` is the checked variant.
    For ``ce`` the teacher logits may be None.
    """
    problems = check_loss_args(loss, tau, alpha)
    if problems:
        raise ValueError("; ".join(problems))
    tau, alpha = float(tau), float(alpha)
    if loss == "ce":
        return lambda student_logits, teacher_logits, targets: F.cross_entropy(student_logits, targets)
    term = LOSSES.get(loss)

    def mixed(student_logits: Tensor, teacher_logits: Tensor | None, targets: Tensor) -> Tensor:
        kd = term(student_logits, teacher_logits, tau)
        if alpha == 1.0:
            # Skipping CE here changes nothing numerically ((1 - 1) * CE == 0) and
            # saves its cost in the pure-distillation setting the paper focuses on.
            return kd
        return (1.0 - alpha) * F.cross_entropy(student_logits, targets) + alpha * kd

    return mixed


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    targets: Tensor,
    *,
    loss: str,
    tau: float = 1.0,
    alpha: float = 1.0,
) -> Tensor:
    """Total distillation loss for one batch (scalar), following the module docstring.

    Args:
        student_logits: (B, K) raw student logits.
        teacher_logits: (B, K) raw teacher logits; may be None for ``loss="ce"``.
        targets: (B,) int64 class indices in [0, K).
        loss: ``"ce"``, ``"kl"``, ``"mse"`` or a registered KD term.
        tau: temperature for ``kl``; any value > 0, ``float("inf")`` for the limit.
        alpha: weight of the KD term in [0, 1]; the CE weight is ``1 - alpha``.

    Raises:
        ValueError: naming the argument, its value and what is allowed.
    """
    loss_fn = make_loss(loss, tau=tau, alpha=alpha)
    _check_tensors(student_logits, teacher_logits, targets, needs_teacher=loss != "ce")
    return loss_fn(student_logits, teacher_logits, targets)


def _check_tensors(
    student_logits: Tensor, teacher_logits: Tensor | None, targets: Tensor, *, needs_teacher: bool
) -> None:
    if student_logits.ndim != 2:
        raise ValueError(f"student_logits must have shape (B, K); got {tuple(student_logits.shape)}")
    batch, num_classes = student_logits.shape
    if needs_teacher and teacher_logits is None:
        raise ValueError("teacher_logits=None is only allowed with loss='ce'")
    if teacher_logits is not None and teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"teacher_logits shape {tuple(teacher_logits.shape)} must equal "
            f"student_logits shape {tuple(student_logits.shape)}"
        )
    if targets.shape != (batch,):
        raise ValueError(f"targets must have shape ({batch},); got {tuple(targets.shape)}")
    if targets.dtype != torch.int64:
        raise ValueError(f"targets must be int64 class indices; got dtype {targets.dtype}")
    if batch and (int(targets.min()) < 0 or int(targets.max()) >= num_classes):
        raise ValueError(
            f"targets must be class indices in [0, {num_classes}); got values in "
            f"[{int(targets.min())}, {int(targets.max())}]"
        )
