"""The loss conventions (kd_tune.train.losses, docs/architecture.md), checked against formulas written out here."""
from __future__ import annotations

import math

import pytest
import torch

from kd_tune.train.losses import distillation_loss, loss_names, make_loss, register_kd_term

B, K = 6, 5


def logits(seed: int, scale: float = 2.0) -> torch.Tensor:
    return scale * torch.randn(B, K, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.fixture
def batch():
    zs, zt = logits(0), logits(1)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    return zs, zt, y


def ref_ce(zs, y):
    # -log softmax(z)[y], written out: log(sum exp z) - z[y]
    return (torch.log(torch.exp(zs).sum(1)) - zs[torch.arange(len(y)), y]).mean()


def ref_kl(zs, zt, tau):
    pt = torch.exp(zt / tau) / torch.exp(zt / tau).sum(1, keepdim=True)
    ps = torch.exp(zs / tau) / torch.exp(zs / tau).sum(1, keepdim=True)
    return tau**2 * (pt * (torch.log(pt) - torch.log(ps))).sum(1).mean()


def c(z):
    """Each logit vector minus its mean over classes."""
    return z - z.mean(1, keepdim=True)


def ref_limit(zs, zt):
    return ((c(zs) - c(zt)) ** 2).sum(1).mean() / (2 * K)


def ref_mse(zs, zt):
    return ((zs - zt) ** 2).sum() / (B * K)


def grad_of(fn, zs):
    zs = zs.clone().requires_grad_(True)
    fn(zs).backward()
    return zs.grad


@pytest.mark.parametrize("tau", [0.5, 1.0, 3.0, 20.0])
@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5, 1.0])
def test_kl_total_matches_formula(batch, tau, alpha):
    zs, zt, y = batch
    got = distillation_loss(zs, zt, y, loss="kl", tau=tau, alpha=alpha)
    want = (1 - alpha) * ref_ce(zs, y) + alpha * ref_kl(zs, zt, tau)
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_mse_total_matches_formula(batch, alpha):
    zs, zt, y = batch
    got = distillation_loss(zs, zt, y, loss="mse", alpha=alpha, tau=7.0)
    want = (1 - alpha) * ref_ce(zs, y) + alpha * ref_mse(zs, zt)
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)
    # MSE ignores tau
    assert torch.equal(got, distillation_loss(zs, zt, y, loss="mse", alpha=alpha, tau=0.1))


def test_ce_ignores_teacher_tau_alpha(batch):
    zs, zt, y = batch
    want = ref_ce(zs, y)
    for tau, alpha in [(1.0, 0.0), (4.0, 0.9), (math.inf, 1.0)]:
        got = distillation_loss(zs, zt, y, loss="ce", tau=tau, alpha=alpha)
        assert torch.allclose(got, want, rtol=1e-12)
    assert torch.allclose(distillation_loss(zs, None, y, loss="ce"), want, rtol=1e-12)


@pytest.mark.parametrize("loss", ["kl", "mse"])
def test_continuous_in_alpha_at_both_ends(batch, loss):
    zs, zt, y = batch
    kd_only = distillation_loss(zs, zt, y, loss=loss, tau=3.0, alpha=1.0)
    near_one = distillation_loss(zs, zt, y, loss=loss, tau=3.0, alpha=1.0 - 1e-9)
    assert abs(float(kd_only - near_one)) < 1e-7
    ce_only = distillation_loss(zs, zt, y, loss=loss, tau=3.0, alpha=0.0)
    near_zero = distillation_loss(zs, zt, y, loss=loss, tau=3.0, alpha=1e-9)
    assert abs(float(ce_only - near_zero)) < 1e-7
    assert torch.allclose(ce_only, ref_ce(zs, y))


def test_kl_gradient_matches_analytic(batch):
    # d/dz_s [tau^2 KL(p_t || p_s)] = tau (p_s - p_t) per sample, / B for the batch mean
    zs, zt, y = batch
    tau = 2.5
    g = grad_of(lambda z: distillation_loss(z, zt, y, loss="kl", tau=tau, alpha=1.0), zs)
    want = tau * (torch.softmax(zs / tau, 1) - torch.softmax(zt / tau, 1)) / B
    assert torch.allclose(g, want, rtol=1e-9, atol=1e-12)


def test_mse_gradient_matches_analytic(batch):
    zs, zt, y = batch
    g = grad_of(lambda z: distillation_loss(z, zt, y, loss="mse", alpha=1.0), zs)
    assert torch.allclose(g, 2 * (zs - zt) / (B * K), rtol=1e-10)


def test_infinite_tau_is_the_logit_matching_limit(batch):
    zs, zt, y = batch
    got = distillation_loss(zs, zt, y, loss="kl", tau=math.inf, alpha=1.0)
    assert torch.allclose(got, ref_limit(zs, zt), rtol=1e-12)
    g = grad_of(lambda z: distillation_loss(z, zt, y, loss="kl", tau=math.inf, alpha=1.0), zs)
    assert torch.allclose(g, (c(zs) - c(zt)) / K / B, rtol=1e-10, atol=1e-14)
    # mixing with CE follows the same alpha rule
    mixed = distillation_loss(zs, zt, y, loss="kl", tau=math.inf, alpha=0.4)
    assert torch.allclose(mixed, 0.6 * ref_ce(zs, y) + 0.4 * ref_limit(zs, zt), rtol=1e-12)


@pytest.mark.parametrize("alpha", [0.1, 0.5, 1.0])
def test_infinite_tau_has_half_the_gradient_of_mse(batch, alpha):
    # On logits whose vectors differ by no constant, MSE's KD gradient is twice the tau=inf
    # limit's; at weight alpha, the limit at 2 alpha / (1 + alpha) scaled by (1 + alpha) is MSE.
    zs, zt, y = batch
    zs, zt = c(zs), c(zt)
    kd = {name: grad_of(lambda z, n=name, t=tau: distillation_loss(z, zt, y, loss=n, tau=t, alpha=1.0), zs)
          for name, tau in (("kl", math.inf), ("mse", 1.0))}
    assert torch.allclose(kd["mse"], 2 * kd["kl"], rtol=1e-10, atol=1e-14)
    beta = 2 * alpha / (1 + alpha)
    mse = grad_of(lambda z: distillation_loss(z, zt, y, loss="mse", alpha=alpha), zs)
    limit = grad_of(lambda z: distillation_loss(z, zt, y, loss="kl", tau=math.inf, alpha=beta), zs)
    assert torch.allclose(mse, (1 + alpha) * limit, rtol=1e-10, atol=1e-14)
    # Same alpha, same learning rate: not the same step (KL's KD pull is half as strong).
    same = grad_of(lambda z: distillation_loss(z, zt, y, loss="kl", tau=math.inf, alpha=alpha), zs)
    assert not torch.allclose(mse, same, rtol=1e-3)


def test_large_tau_approaches_limit_like_one_over_tau(batch):
    zs, zt, y = batch
    limit = ref_limit(zs, zt)
    limit_grad = (c(zs) - c(zt)) / K / B
    loss_err, grad_err = [], []
    for tau in (1e3, 1e4, 1e5):
        loss_err.append(abs(float(distillation_loss(zs, zt, y, loss="kl", tau=tau) - limit)))
        g = grad_of(lambda z, tau=tau: distillation_loss(z, zt, y, loss="kl", tau=tau), zs)
        grad_err.append(float((g - limit_grad).abs().max()))
    for errs in (loss_err, grad_err):
        assert errs[0] < 1e-2 * float(limit.abs() + limit_grad.abs().max())
        # each tenfold tau shrinks the error about tenfold (first-order convergence)
        for a, b in zip(errs, errs[1:]):
            assert 5 < a / b < 20, errs


def test_small_tau_approaches_label_matching(batch):
    # Proposition (Kim et al.): as tau -> 0, KD_tau / tau -> max_k z_s - z_s[argmax z_t], and
    # grad(KD_tau) / tau -> onehot(argmax z_s) - onehot(argmax z_t): matching predicted labels.
    zs, zt, y = batch
    top_s, top_t = zs.argmax(1), zt.argmax(1)
    hinge = (zs.max(1).values - zs[torch.arange(B), top_t]).mean()
    label_grad = (torch.nn.functional.one_hot(top_s, K) - torch.nn.functional.one_hot(top_t, K)) / B
    errs = []
    for tau in (1e-1, 1e-2, 1e-3):
        val = distillation_loss(zs, zt, y, loss="kl", tau=tau) / tau
        g = grad_of(lambda z, tau=tau: distillation_loss(z, zt, y, loss="kl", tau=tau), zs) / tau
        errs.append((abs(float(val - hinge)), float((g - label_grad).abs().max())))
        assert torch.isfinite(val)
    assert errs[-1][0] < 1e-2 and errs[-1][1] < 1e-6
    assert errs[0][0] > errs[-1][0]


def test_tiny_tau_stays_finite_with_far_apart_logits():
    zs = torch.tensor([[50.0, -50.0, 0.0]])
    zt = torch.tensor([[-50.0, 50.0, 0.0]])
    val = distillation_loss(zs, zt, torch.tensor([0]), loss="kl", tau=1e-4, alpha=1.0)
    assert torch.isfinite(val) and val > 0


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"loss": "kl", "tau": 0.0}, ["tau=0.0", "> 0"]),
        ({"loss": "kl", "tau": -1.0}, ["tau=-1.0"]),
        ({"loss": "kl", "tau": math.nan}, ["tau=nan"]),
        ({"loss": "kl", "alpha": 1.5}, ["alpha=1.5", "[0, 1]"]),
        ({"loss": "kl", "alpha": -0.1}, ["alpha=-0.1"]),
        ({"loss": "hinge"}, ["loss='hinge'", "ce", "kl", "mse"]),
    ],
)
def test_bad_arguments_are_named(batch, kwargs, words):
    zs, zt, y = batch
    with pytest.raises(ValueError) as err:
        distillation_loss(zs, zt, y, **kwargs)
    for word in words:
        assert word in str(err.value)


def test_bad_tensors_are_named(batch):
    zs, zt, y = batch
    with pytest.raises(ValueError, match="teacher_logits shape"):
        distillation_loss(zs, zt[:, :3], y, loss="kl")
    with pytest.raises(ValueError, match="targets must have shape"):
        distillation_loss(zs, zt, y[:3], loss="kl")
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        distillation_loss(zs, zt, torch.tensor([0, 1, 2, 3, 5, 0]), loss="kl")
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        distillation_loss(zs, zt, torch.tensor([0, 1, 2, 3, -1, 0]), loss="ce")
    with pytest.raises(ValueError, match="teacher_logits=None"):
        distillation_loss(zs, None, y, loss="mse")


def test_registered_term_mixes_with_ce(batch):
    zs, zt, y = batch
    register_kd_term("l1_test", lambda s, t, tau: (s - t).abs().mean())
    assert "l1_test" in loss_names()
    got = make_loss("l1_test", alpha=0.25)(zs, zt, y)
    assert torch.allclose(got, 0.75 * ref_ce(zs, y) + 0.25 * (zs - zt).abs().mean())


def test_kd_term_second_registration():
    def term(s, t, tau):
        return (s - t).abs().max()

    register_kd_term("max_test", term)
    register_kd_term("max_test", term)  # the same term again: a no-op
    assert loss_names() == ["ce", "kl", "mse", "dkd", "dist", "max_test"]
    with pytest.raises(ValueError, match="^loss 'max_test' is already registered$"):
        register_kd_term("max_test", lambda s, t, tau: s.sum())
    with pytest.raises(ValueError, match="^loss 'kl' is already registered$"):
        register_kd_term("kl", lambda s, t, tau: s.sum())
    with pytest.raises(ValueError, match="^loss 'ce' is already registered$"):
        register_kd_term("ce", term)
    with pytest.raises(TypeError, match="callable"):
        register_kd_term("none_test", None)  # type: ignore[arg-type]
    assert loss_names() == ["ce", "kl", "mse", "dkd", "dist", "max_test"]
