"""DIST and KL with logit standardization against torchdistill's own losses (DISTLoss,
LogitStdKDLoss), on random logits. torchdistill is in the test extras: without it these
tests fail rather than skip.

torchdistill's conventions, read from its code (torchdistill/losses/mid_level.py, 1.1.5):
DISTLoss returns ``beta * tau**2 * inter + gamma * tau**2 * intra`` with the same Pearson
correlations; LogitStdKDLoss z-scores with ``(z - mean) / (eps + std)`` (sample std, eps
1e-7), returns ``a * CE + b * T**2 * KL_batchmean`` with targets and ``a`` set, and the
KL *without* ``T**2`` when ``a`` is 0 (or no targets are given). So our total at alpha is theirs at
``a = 1 - alpha, b = alpha`` for alpha < 1, and our KD term is ``T**2`` times theirs
without targets.
"""
from __future__ import annotations

import pytest
import torch
from torchdistill.losses.mid_level import DISTLoss, LogitStdKDLoss

from kd_tune.train.losses import make_loss

B, K = 64, 100


def random_logits(seed: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    zs = 3.0 * torch.randn(B, K, generator=generator, dtype=dtype)
    zt = 5.0 * torch.randn(B, K, generator=generator, dtype=dtype) + 1.0
    return zs, zt, torch.randint(0, K, (B,), generator=generator)


def io(logits: torch.Tensor) -> dict:
    return {"fc": {"output": logits}}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tau, beta, gamma", [(1.0, 1.0, 1.0), (4.0, 1.0, 1.0), (4.0, 2.0, 2.0), (2.0, 0.5, 3.0)])
def test_dist_equals_torchdistills_dist_loss(dtype, tau, beta, gamma):
    for seed in range(3):
        zs, zt, y = random_logits(seed, dtype)
        theirs = DISTLoss("fc", "output", "fc", "output", beta=beta, gamma=gamma, tau=tau)(io(zs), io(zt))
        ours = make_loss("dist", tau=tau, alpha=1.0, options={"dist_beta": beta, "dist_gamma": gamma})(zs, zt, y)
        assert abs(float(ours) - float(theirs)) <= 1e-6 * max(1.0, abs(float(theirs)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tau", [1.0, 2.0, 4.0])
@pytest.mark.parametrize("alpha", [0.1, 0.5, 0.9])
def test_kl_with_standardization_equals_torchdistills_logit_std_kd_loss(dtype, tau, alpha):
    for seed in range(3):
        zs, zt, y = random_logits(seed, dtype)
        theirs = LogitStdKDLoss("fc", "output", "fc", "output", temperature=tau, alpha=1 - alpha,
                                beta=alpha)(io(zs), io(zt), targets=y)
        ours = make_loss("kl", tau=tau, alpha=alpha, options={"standardize": True})(zs, zt, y)
        assert abs(float(ours) - float(theirs)) <= 1e-6 * max(1.0, abs(float(theirs)))


@pytest.mark.parametrize("tau", [1.0, 2.0, 4.0])
def test_the_kd_term_alone_is_tau_squared_times_theirs_without_targets(tau):
    zs, zt, y = random_logits(5, torch.float64)
    theirs = LogitStdKDLoss("fc", "output", "fc", "output", temperature=tau, alpha=0.0)(io(zs), io(zt))
    ours = make_loss("kl", tau=tau, alpha=1.0, options={"standardize": True})(zs, zt, y)
    assert abs(float(ours) - tau**2 * float(theirs)) <= 1e-6 * max(1.0, tau**2 * abs(float(theirs)))


def test_agreement_holds_for_the_gradients_too():
    zs, zt, y = random_logits(9, torch.float64)
    grads = []
    for fn in (lambda z: DISTLoss("fc", "output", "fc", "output", tau=4.0)(io(z), io(zt)),
               lambda z: make_loss("dist", tau=4.0, alpha=1.0)(z, zt, y)):
        z = zs.clone().requires_grad_(True)
        fn(z).backward()
        grads.append(z.grad)
    assert torch.allclose(grads[0], grads[1], rtol=1e-6, atol=1e-12)
