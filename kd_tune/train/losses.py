"""Distillation losses: the paper's (CE, KL at a temperature, MSE on logits) and the logit-loss family.

The paper: Kim et al., IJCAI 2021. The family: DKD, logit standardization, DIST, MSE on z-scores.

Notation: ``z_s`` student logits and ``z_t`` teacher logits, both of shape (B, K) for a
batch of B samples and K classes; ``y`` the hard labels the student trains on, int64 of
shape (B,) (under label noise the noisy ones); ``p^T = softmax(z / T)``. Every loss is a
scalar: a mean over the batch (per sample: a sum over classes, unless said otherwise).
Logits are in logit units; losses in nats (times the factors stated).

One mixing rule for every loss but ``ce``: ``total = (1 - alpha) * CE(z_s, y) + alpha * KD``
for every alpha in [0, 1], 0 and 1 included (no jump at 0: the KD term keeps its factors).
``KD`` is the loss's term:

* ``ce``:  ``CE(z_s, y)``, the usual cross-entropy with hard labels. It ignores the
  teacher, ``tau``, ``alpha`` and every option.
* ``kl``:  ``KD_tau = tau**2 * KL(softmax(z_t / tau) || softmax(z_s / tau))``, the KL summed
  over the K classes and averaged over the batch (``batchmean``). The ``tau**2`` keeps
  the gradient scale independent of tau (Hinton et al. 2015).
  ``tau = inf`` is the limit of ``KD_tau``: ``1/(2K) * ||c(z_s) - c(z_t)||**2``
  where ``c(z) = z - mean_k(z)`` centres each logit vector. Its gradient with respect
  to one sample's student logits is ``(c(z_s) - c(z_t)) / K`` (times 1/B from the
  batch mean). The limit is computed as a loss and differentiated by autograd.
  Any finite ``tau > 0`` is allowed, ``tau < 1`` included; as ``tau -> 0`` the KL
  term tends to label matching (the paper's proposition: ``KD_tau / tau`` tends to
  ``max_k z_s - z_s[argmax z_t]``).
  With ``standardize`` (logit standardization, Sun et al., CVPR 2024) both logit
  vectors are first replaced by their z-scores ``s(z)`` (below), then the same KD_tau:
  ``tau`` is then the paper's *base* temperature (2 in its CIFAR runs). At ``tau = inf``
  it is ``1/(2K) * ||s(z_s) - s(z_t)||**2``, half of standardized ``mse``.
* ``mse``: ``MSE(z_s, z_t)``, the mean squared error between the logit vectors averaged
  over batch and classes (``torch.nn.MSELoss()`` default), i.e. ``||z_s - z_t||**2 / (B * K)``.
  With ``standardize`` it is ``MSE(s(z_s), s(z_t))``; per sample that is
  ``(2(K-1)/K) * (1 - Pearson(z_s, z_t))`` (Pearson across the K classes; with the
  population std in ``s`` it would be ``2 * (1 - Pearson)``): the bridge from the paper's
  MSE to DIST. tau is unused.
* ``dkd`` (Decoupled KD, Zhao et al., CVPR 2022): ``w(e) * (a * TCKD + b * NCKD)`` with
  ``a = dkd_alpha`` (1), ``b = dkd_beta`` (8), both parts batch means times ``tau**2``:
  ``TCKD = KL([p_t(teacher), 1 - p_t(teacher)] || [p_t(student), 1 - p_t(student)])`` the
  binary target-class KL and ``NCKD = KL(q(teacher) || q(student))`` with ``q`` the
  distribution over the K - 1 other classes (``p^T`` without the target, renormalised),
  where ``t = y``: the target is the label the student trains on, the noisy one under label
  noise. Per sample, at one temperature,
  ``KL(p^T(teacher) || p^T(student)) = TCKD + (1 - p_t(teacher)) * NCKD`` (the paper's
  decomposition): KL weighs NCKD down where the teacher is confident; DKD does not.
  ``w(e) = min(e / dkd_warmup, 1)`` for the 1-based epoch ``e`` (1 with a warmup of 0):
  epoch 1 weighs ``1/warmup``, as in the reference code (mdistiller), whose epochs start at
  1. ``tau`` must be finite.
* ``dist`` (Huang et al., NeurIPS 2022): ``tau**2 * (beta * inter + gamma * intra)`` with
  ``inter = 1 - mean_b Pearson(p^tau_s[b, :], p^tau_t[b, :])`` (across classes, per
  sample) and ``intra = 1 - mean_k Pearson(p^tau_s[:, k], p^tau_t[:, k])`` (across the
  batch, per class); ``beta = dist_beta`` (1), ``gamma = dist_gamma`` (1). The intra term
  couples the samples of a batch: it depends on the batch size. ``tau`` must be finite.

The z-score (``standardize``): ``s(z) = (z - mean_k z) / (std_k z + 1e-7)``, ``std`` the
sample standard deviation (divisor K - 1, torch's default, as the paper's code and
torchdistill compute it). For constant logits (std 0) ``s(z) = 0`` and the gradient is
finite (at most ``1e7`` times the upstream gradient). Pearson correlations are cosines of
centred vectors, each norm clamped below at ``1e-8`` (the reference code's eps): for a
constant vector the correlation is 0 and gradients stay finite. ``standardize``, ``dkd``
and ``dist`` are computed with their gradients written out, one autograd node each
(:mod:`kd_tune.train.closed_form`, which states the gradients): on a small CPU student a
loss's cost is mostly its count of small kernels (``benchmarks/loss_cost.py``). No gradient
reaches the teacher logits, which a distillation step never trains.

Each published method's own weighting, in the mixing rule above: a paper's
``c_ce * CE + c_kd * KD`` is ``(c_ce + c_kd)`` times ours at ``alpha = c_kd / (c_ce + c_kd)``,
and plain SGD (momentum, Nesterov and coupled weight decay included) steps with it as the
paper's run does at learning rate times ``c_ce + c_kd`` and weight decay divided by it.
DKD (CE + DKD term): alpha 0.5, lr x2, weight decay /2. Logit standardization
(0.1 * CE + 9 * KD): alpha 90/91, lr x9.1, weight decay /9.1. DIST (CE + DIST term):
alpha 0.5, lr x2, weight decay /2.

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
(:func:`register_kd_term`); the CE mixing rule is shared by all of them. A registered
entry's info names the :data:`kd_tune.core.config.LOSS_OPTIONS` it reads (``options``) and
whether it needs the labels and the epoch (``context``).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from kd_tune.core.config import LOSS_OPTIONS, RunConfig, loss_option_problems, tau_alpha_problems
from kd_tune.core.registry import Registry
from kd_tune.train import closed_form
from kd_tune.train.closed_form import dkd_log_probs, with_gradient

Tensor = torch.Tensor
KDTerm = Callable[..., Tensor]


class LossFn(Protocol):
    """``fn(z_s, z_t, y, epoch=None) -> scalar``: a validated total loss (see :func:`make_loss`)."""

    def __call__(self, student_logits: Tensor, teacher_logits: Tensor | None, targets: Tensor,
                 epoch: int | None = None) -> Tensor: ...


LOSSES: Registry[KDTerm] = Registry("loss")
"""KD terms by loss name. ``ce`` is not an entry: it has no KD term, and the name is
reserved by :func:`register_kd_term`. A term is called ``term(z_s, z_t, tau, **options)``,
and with ``targets=y, epoch=e`` too when registered with ``context=True``."""


@LOSSES.register("kl", options=("standardize",))
def kl_term(student_logits: Tensor, teacher_logits: Tensor, tau: float, *, standardize: bool = False) -> Tensor:
    """``tau**2 * KL(softmax(z_t/tau) || softmax(z_s/tau))``, batch mean; tau may be inf.

    With ``standardize`` both logit vectors are z-scored first (logit standardization);
    the teacher's side is then a constant (no gradient reaches it).
    """
    if standardize:
        return with_gradient(closed_form.kl_of_z_scores, student_logits, teacher_logits, tau)
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


@LOSSES.register("mse", options=("standardize",))
def mse_term(student_logits: Tensor, teacher_logits: Tensor, tau: float, *, standardize: bool = False) -> Tensor:
    """Mean squared error between (z-scored, with ``standardize``) logit vectors over batch
    and classes; tau is unused."""
    del tau
    if standardize:
        return with_gradient(closed_form.mse_of_z_scores, student_logits, teacher_logits)
    return F.mse_loss(student_logits, teacher_logits)


def dkd_parts(student_logits: Tensor, teacher_logits: Tensor, targets: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """Per sample (shape (B,) each, no ``tau**2``): DKD's TCKD and NCKD at temperature ``tau``.

    TCKD is the KL of the binary [target, rest] distributions, NCKD the KL of the
    distributions over the non-target classes (teacher first in both), from the log
    probabilities of :func:`kd_tune.train.closed_form.dkd_log_probs`. For analysis and
    tests; a training step takes :func:`dkd_term`, which computes their batch means and
    the gradient in one node.
    """
    index = targets.unsqueeze(1)
    summands = F.kl_div(dkd_log_probs(student_logits / tau, index), dkd_log_probs(teacher_logits / tau, index),
                        reduction="none", log_target=True)  # (B, 2 + K)
    return summands[:, :2].sum(dim=1), summands[:, 2:].sum(dim=1)


def dkd_weight(epoch: int | None, warmup: int) -> float:
    """DKD's warmup factor ``min(epoch / warmup, 1)`` for the 1-based ``epoch`` (1 without warmup)."""
    if warmup == 0:
        return 1.0
    if epoch is None:
        raise ValueError("loss 'dkd' with a warmup needs the 1-based epoch of the batch (epoch=...)")
    return min(epoch / warmup, 1.0)


@LOSSES.register("dkd", options=("dkd_alpha", "dkd_beta", "dkd_warmup"), context=True)
def dkd_term(student_logits: Tensor, teacher_logits: Tensor, tau: float, *, targets: Tensor, epoch: int | None,
             dkd_alpha: float = 1.0, dkd_beta: float = 8.0, dkd_warmup: int = 20) -> Tensor:
    """``min(epoch / warmup, 1) * tau**2 * (dkd_alpha * TCKD + dkd_beta * NCKD)``, batch means."""
    return with_gradient(closed_form.dkd, student_logits, teacher_logits, tau, targets,
                         dkd_weight(epoch, dkd_warmup), dkd_alpha, dkd_beta)


@LOSSES.register("dist", options=("dist_beta", "dist_gamma"))
def dist_term(student_logits: Tensor, teacher_logits: Tensor, tau: float, *, dist_beta: float = 1.0,
              dist_gamma: float = 1.0) -> Tensor:
    """``tau**2 * (dist_beta * inter + dist_gamma * intra)``: one minus the mean Pearson
    correlation of the softened probabilities, per sample (inter) and per class (intra)."""
    return with_gradient(closed_form.dist, student_logits, teacher_logits, tau, dist_beta, dist_gamma)


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


def resolve_options(loss: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Every loss option's value for a ``loss`` run: ``options`` (field -> value), a missing
    or None one at its published default for a loss that reads it, else unset."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(LOSS_OPTIONS))
    if unknown:
        raise ValueError(f"unknown loss option(s): {', '.join(unknown)}; known: {', '.join(LOSS_OPTIONS)}")
    out = {}
    for name, option in LOSS_OPTIONS.items():
        value = options.get(name)
        out[name] = value if value is not None else option.default if loss in option.losses else option.unset
    return out


def check_loss_args(loss: str, tau: float, alpha: float, options: Mapping[str, Any] | None = None) -> list[str]:
    """Return every problem with (loss, tau, alpha, options) as a readable sentence; empty if valid."""
    problems = loss_name_problems(loss) + tau_alpha_problems(tau, alpha)
    try:
        values = resolve_options(loss, options)
    except ValueError as err:
        return problems + [str(err)]
    return problems + loss_option_problems(loss, tau, values)


def make_loss(loss: str, *, tau: float = 1.0, alpha: float = 1.0,
              options: Mapping[str, Any] | None = None) -> LossFn:
    """Validate (loss, tau, alpha, options) once and return ``fn(z_s, z_t, y, epoch=None) -> scalar``.

    ``options``: the loss's :data:`~kd_tune.core.config.LOSS_OPTIONS` (field -> value; a
    missing one at its published default). ``epoch`` is the 1-based epoch of the batch;
    ``dkd`` with a warmup needs it, the other losses ignore it. The returned function does
    no per-call checks (no host-device syncs), which is what a training loop wants;
    :func:`distillation_loss` is the checked variant. For ``ce`` the teacher logits may be None.
    """
    problems = check_loss_args(loss, tau, alpha, options)
    if problems:
        raise ValueError("; ".join(problems))
    tau, alpha = float(tau), float(alpha)
    if loss == "ce":
        def ce(student_logits: Tensor, teacher_logits: Tensor | None, targets: Tensor,
               epoch: int | None = None) -> Tensor:
            return F.cross_entropy(student_logits, targets)

        return ce
    term = LOSSES.get(loss)
    info = LOSSES.info(loss)
    values = resolve_options(loss, options)
    kwargs = {name: values[name] for name in info.get("options", ())}
    context = bool(info.get("context", False))

    def mixed(student_logits: Tensor, teacher_logits: Tensor | None, targets: Tensor,
              epoch: int | None = None) -> Tensor:
        if context:
            kd = term(student_logits, teacher_logits, tau, targets=targets, epoch=epoch, **kwargs)
        else:
            kd = term(student_logits, teacher_logits, tau, **kwargs)
        if alpha == 1.0:
            # Skipping CE here changes nothing numerically ((1 - 1) * CE == 0) and
            # saves its cost in the pure-distillation setting the paper focuses on.
            return kd
        return (1.0 - alpha) * F.cross_entropy(student_logits, targets) + alpha * kd

    return mixed


def run_loss(config: RunConfig) -> LossFn:
    """:func:`make_loss` for ``config``: its loss, tau, alpha and loss options."""
    return make_loss(config.loss, tau=config.tau, alpha=config.alpha, options=config.loss_options())


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    targets: Tensor,
    *,
    loss: str,
    tau: float = 1.0,
    alpha: float = 1.0,
    options: Mapping[str, Any] | None = None,
    epoch: int | None = None,
) -> Tensor:
    """Total distillation loss for one batch (scalar), following the module docstring.

    Args:
        student_logits: (B, K) raw student logits.
        teacher_logits: (B, K) raw teacher logits; may be None for ``loss="ce"``.
        targets: (B,) int64 class indices in [0, K): the labels the student trains on
            (``dkd``'s target class).
        loss: ``"ce"``, ``"kl"``, ``"mse"``, ``"dkd"``, ``"dist"`` or a registered KD term.
        tau: temperature for ``kl``, ``dkd`` and ``dist``; any value > 0, ``float("inf")``
            for the limit (``kl`` only).
        alpha: weight of the KD term in [0, 1]; the CE weight is ``1 - alpha``.
        options: the loss's options (``standardize``, ``dkd_alpha``, ...; see
            :data:`~kd_tune.core.config.LOSS_OPTIONS`), missing ones at their published defaults.
        epoch: the 1-based epoch (``dkd``'s warmup).

    Raises:
        ValueError: naming the argument, its value and what is allowed.
    """
    loss_fn = make_loss(loss, tau=tau, alpha=alpha, options=options)
    _check_tensors(student_logits, teacher_logits, targets, needs_teacher=loss != "ce")
    return loss_fn(student_logits, teacher_logits, targets, epoch)


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
