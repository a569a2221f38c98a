"""The logit-loss family's KD terms with their gradients written out: one autograd node each.

The losses are defined in :mod:`kd_tune.train.losses` (notation, conventions and units
there). Here each of DKD, DIST, KL on z-scores (logit standardization) and MSE on z-scores
is computed together with its gradient with respect to the student's logits, in one pass
without autograd, and handed to autograd as a single node whose backward is one multiply.

Why: on a small CPU student a training step is a few milliseconds and a loss's cost is
mostly its count of small kernels, each with its autograd bookkeeping
(``benchmarks/loss_cost.py``). On the cpu preset's student, recorded by autograd, DIST cost
1.40x a CE step and DKD 1.32x; in closed form 1.17x and 1.22x.

The gradients, per sample, with ``g`` the upstream gradient of a quantity and B the batch:

* softmax ``p = softmax(a)``: ``dL/da = p * (g - <g, p>)``.
* z-score ``u = c / ((s + eps) * tau)`` with ``c = z - mean(z)``, ``s`` the sample std
  (divisor K - 1): ``dL/dz = (g - mean(g)) / D - <g, c> * c / (D * (s + eps) * (K - 1) * s)``
  with ``D = (s + eps) * tau``. ``c / s`` is bounded (by sqrt(K - 1)); where ``s`` is 0, ``c``
  is 0 too and the second part is 0 (``s`` is clamped at the dtype's smallest normal number).
* DKD at temperature T, ``a = z / T``, target ``y``, ``q`` the distribution over the other
  classes (0 at ``y``) and ``p_y`` the target's probability, student ``s`` and teacher ``t``:
  TCKD is the binary KL of ``sigmoid(a_y - logsumexp_{k != y} a_k)``, whose derivative in
  that difference is ``p_y(s) - p_y(t)``, and the difference has the derivative ``e_y - q(s)``
  in ``a``; NCKD is the KL of ``q``, a softmax over the other classes, with the derivative
  ``q(s) - q(t)``. So ``dDKD/dz = (w * T / B) * (alpha_tc * (p_y(s) - p_y(t)) * (e_y - q(s)) +
  beta_nc * (q(s) - q(t)))``.
* DIST: a Pearson correlation ``rho = <r, r_t>`` of unit vectors ``r = c / |c|`` has
  ``drho/dc = (r_t - rho * r) / |c|`` (``|c|`` clamped below at ``PEARSON_EPS``; a clamped
  vector's gradient is taken as ``r_t / PEARSON_EPS``, which is exact for ``c = 0``, the one
  case that meets the clamp in practice: a uniform softened distribution). The per-class
  vectors are centred over the batch; the centring's backward pass, which subtracts the
  batch mean, is left out because both unit vectors are already centred, so the gradient
  has a zero batch mean up to rounding.

Each term is once differentiable (no second derivatives). The teacher's logits get no
gradient: a distillation step never trains the teacher. Every gradient is checked against
autograd through the formula in float64 (``tests/train/test_logit_losses.py``).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

Tensor = torch.Tensor
ValueAndGrad = Callable[..., tuple[Tensor, Tensor]]

STD_EPS = 1e-7
"""Added to the sample standard deviation of a z-score (the value of Sun et al.'s code)."""
PEARSON_EPS = 1e-8
"""Lower clamp of each centred vector's norm in a Pearson correlation (DIST's code)."""


class _WithGradient(torch.autograd.Function):
    """``value`` in the forward pass, ``upstream * grad`` in the backward pass, both from one
    call of ``value_and_grad(student_logits, *args)``."""

    @staticmethod
    def forward(ctx: Any, student_logits: Tensor, value_and_grad: ValueAndGrad, args: tuple) -> Tensor:
        value, grad = value_and_grad(student_logits, *args)
        ctx.save_for_backward(grad)
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, upstream: Tensor) -> tuple[Tensor, None, None]:
        (grad,) = ctx.saved_tensors
        return upstream * grad, None, None


def with_gradient(value_and_grad: ValueAndGrad, student_logits: Tensor, *args: Any) -> Tensor:
    """The scalar ``value_and_grad(student_logits, *args)[0]``, differentiable in
    ``student_logits`` through the returned gradient (the second item, shaped like the logits)."""
    return _WithGradient.apply(student_logits, value_and_grad, args)


# -- building blocks -------------------------------------------------------------------------------


def _zscore(logits: Tensor, tau: float) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """Per-sample z-scores over the classes divided by ``tau``,
    ``(z - mean_k z) / ((std_k z + STD_EPS) * tau)`` with the sample std (divisor K - 1), and
    what their backward pass needs: the centred logits,
    the std and the denominator ``(std + STD_EPS) * tau`` (tau folded into the (B, 1) factor:
    one (B, K) kernel fewer)."""
    std, mean = torch.std_mean(logits, dim=1, keepdim=True)
    centred = logits - mean
    denominator = (std + STD_EPS) * tau
    return centred / denominator, (centred, std, denominator)


def _zscore_backward(upstream: Tensor, saved: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    """The gradient in the logits of a quantity whose gradient in the z-scores is ``upstream``."""
    centred, std, denominator = saved
    k = centred.shape[1]
    along = (upstream * centred).sum(dim=1, keepdim=True) / (denominator * (std + STD_EPS) * (k - 1))
    # c / s is bounded; formed first so that no product of small factors underflows to 0 / 0.
    direction = centred / std.clamp_min(torch.finfo(std.dtype).tiny)
    return (upstream - upstream.mean(dim=1, keepdim=True)) / denominator - direction * along


def _softmax_backward(probs: Tensor, upstream: Tensor) -> Tensor:
    return probs * (upstream - (upstream * probs).sum(dim=1, keepdim=True))


# -- the terms -----------------------------------------------------------------------------------


def kl_of_z_scores(student_logits: Tensor, teacher_logits: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """``tau**2 * KL(softmax(s(z_t)/tau) || softmax(s(z_s)/tau))``, batch mean, and its gradient;
    at ``tau = inf`` the limit ``1/(2K) * ||c(s(z_s) - s(z_t))||**2``, batch mean."""
    batch, k = student_logits.shape
    if math.isinf(tau):
        u_s, saved = _zscore(student_logits, 1.0)
        diff = u_s - _zscore(teacher_logits, 1.0)[0]
        centred = diff - diff.mean(dim=1, keepdim=True)
        value = centred.pow(2).sum() / (2.0 * k * batch)
        return value, _zscore_backward(centred / (k * batch), saved)
    u_s, saved = _zscore(student_logits, tau)
    log_p_s = F.log_softmax(u_s, dim=1)
    log_p_t = F.log_softmax(_zscore(teacher_logits, tau)[0], dim=1)
    value = tau * tau * F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    upstream = (log_p_s.exp() - log_p_t.exp()) * (tau * tau / batch)
    return value, _zscore_backward(upstream, saved)


def mse_of_z_scores(student_logits: Tensor, teacher_logits: Tensor) -> tuple[Tensor, Tensor]:
    """``MSE(s(z_s), s(z_t))`` over batch and classes, and its gradient."""
    u_s, saved = _zscore(student_logits, 1.0)
    diff = u_s - _zscore(teacher_logits, 1.0)[0]
    value = diff.pow(2).mean()
    return value, _zscore_backward(diff * (2.0 / diff.numel()), saved)


def dkd_log_probs(logits: Tensor, index: Tensor) -> Tensor:
    """Per sample, ``[log p_t, log(1 - p_t), log q_k for every class k]`` (shape (B, 2 + K)):
    the binary [target, rest] distribution, then the distribution over the other classes,
    whose target entry is 0 (on both sides of a KL its summand is then exp(0) * (0 - 0) = 0).
    ``log(1 - p_t)`` is a log-sum-exp over the other classes: exact where ``p_t`` rounds to 1."""
    log_p = F.log_softmax(logits, dim=1)
    rest = log_p.scatter(1, index, -math.inf)
    log_rest = rest.logsumexp(dim=1, keepdim=True)
    return torch.cat((log_p.gather(1, index), log_rest, (rest - log_rest).scatter(1, index, 0.0)), dim=1)


def dkd(student_logits: Tensor, teacher_logits: Tensor, tau: float, targets: Tensor, weight: float,
        alpha_tc: float, beta_nc: float) -> tuple[Tensor, Tensor]:
    """``weight * tau**2 * (alpha_tc * TCKD + beta_nc * NCKD)``, batch means, and its gradient."""
    batch = student_logits.shape[0]
    index = targets.unsqueeze(1)
    log_s = dkd_log_probs(student_logits / tau, index)
    log_t = dkd_log_probs(teacher_logits / tau, index)
    summands = F.kl_div(log_s, log_t, reduction="none", log_target=True)  # (B, 2 + K)
    scale = weight * tau * tau / batch
    value = scale * (alpha_tc * summands[:, :2].sum() + beta_nc * summands[:, 2:].sum())
    probs_s, probs_t = log_s.exp(), log_t.exp()
    # q is exp of the stored log q with its target entry (stored as log 1) set to 0.
    q_s, q_t = probs_s[:, 2:].scatter(1, index, 0.0), probs_t[:, 2:].scatter(1, index, 0.0)
    target_pull = (probs_s[:, :1] - probs_t[:, :1]) * alpha_tc
    toward_target = (-q_s).scatter_(1, index, 1.0)  # e_y - q(s)
    grad = (target_pull * toward_target + beta_nc * (q_s - q_t)) * (scale / tau)
    return value, grad


def _unit(centred: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """``centred`` over its norm along ``dim`` (clamped below at ``PEARSON_EPS``), and that norm."""
    norm = torch.linalg.vector_norm(centred, dim=dim, keepdim=True).clamp_min(PEARSON_EPS)
    return centred / norm, norm


def dist(student_logits: Tensor, teacher_logits: Tensor, tau: float, beta: float,
         gamma: float) -> tuple[Tensor, Tensor]:
    """``tau**2 * (beta * inter + gamma * intra)`` (DIST) and its gradient.

    A probability vector's mean over the K classes is 1/K, so the per-sample vectors are
    centred with 1/K (equal to centring with the mean up to float rounding).
    """
    batch, k = student_logits.shape
    p_s = F.softmax(student_logits / tau, dim=1)
    p_t = F.softmax(teacher_logits / tau, dim=1)
    rows, row_norm = _unit(p_s - 1.0 / k, dim=1)
    rows_t = _unit(p_t - 1.0 / k, dim=1)[0]
    columns, column_norm = _unit(p_s - p_s.mean(dim=0, keepdim=True), dim=0)
    columns_t = _unit(p_t - p_t.mean(dim=0, keepdim=True), dim=0)[0]
    rho_rows = (rows * rows_t).sum(dim=1, keepdim=True)  # (B, 1): each sample's correlation
    rho_columns = (columns * columns_t).sum(dim=0, keepdim=True)  # (1, K): each class's
    # 1 - mean correlation, over samples (inter) and over classes (intra).
    value = (tau * tau) * (beta * (1.0 - rho_rows.sum() / batch) + gamma * (1.0 - rho_columns.sum() / k))
    upstream = ((rows_t - rho_rows * rows) / row_norm * (-tau * tau * beta / batch)
                + (columns_t - rho_columns * columns) / column_norm * (-tau * tau * gamma / k))
    return value, _softmax_backward(p_s, upstream) / tau
