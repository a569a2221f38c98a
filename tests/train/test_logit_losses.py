"""The logit-loss family (DKD, logit standardization, DIST, standardized MSE), each checked
against its formula written out here, plus the identities that tie them together."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kd_tune.train.closed_form import PEARSON_EPS, STD_EPS
from kd_tune.train.losses import (
    distillation_loss,
    dkd_parts,
    dkd_term,
    dkd_weight,
    kl_term,
    loss_names,
    make_loss,
)

B, K = 8, 6


def logits(seed: int, scale: float = 2.0, shape: tuple[int, int] = (B, K)) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.fixture
def batch():
    return logits(0), logits(1), torch.tensor([0, 1, 2, 3, 4, 5, 0, 3])


# -- the formulas, written out ------------------------------------------------------------------


def softmax(z):
    e = torch.exp(z - z.max(1, keepdim=True).values)
    return e / e.sum(1, keepdim=True)


def ref_ce(zs, y):
    return (torch.log(torch.exp(zs).sum(1)) - zs[torch.arange(len(y)), y]).mean()


def kl_rows(p, q):
    """KL(p || q) of each row, summed over its entries."""
    return (p * (torch.log(p) - torch.log(q))).sum(1)


def zscore(z, ddof=1):
    """(z - mean) / (std + eps) per row; ddof=1: the sample std, ddof=0: the population std."""
    mean = z.sum(1, keepdim=True) / z.shape[1]
    std = torch.sqrt(((z - mean) ** 2).sum(1, keepdim=True) / (z.shape[1] - ddof))
    return (z - mean) / (std + STD_EPS)


def pearson(a, b):
    """Pearson correlation of two 1-d arrays (numpy's, an independent implementation)."""
    return float(np.corrcoef(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))[0, 1])


def ref_dkd_parts(zs, zt, y, tau):
    """TCKD and NCKD per sample from probabilities: the binary [target, rest] split, and the
    other classes renormalised with the target's column removed."""
    ps, pt = softmax(zs / tau), softmax(zt / tau)
    tckd, nckd = [], []
    for i, t in enumerate(y.tolist()):
        bs = torch.stack([ps[i, t], 1 - ps[i, t]])
        bt = torch.stack([pt[i, t], 1 - pt[i, t]])
        tckd.append((bt * torch.log(bt / bs)).sum())
        keep = [k for k in range(zs.shape[1]) if k != t]
        qs, qt = ps[i, keep] / ps[i, keep].sum(), pt[i, keep] / pt[i, keep].sum()
        nckd.append((qt * torch.log(qt / qs)).sum())
    return torch.stack(tckd), torch.stack(nckd)


def ref_dist(zs, zt, tau, beta, gamma):
    ps, pt = softmax(zs / tau).numpy(), softmax(zt / tau).numpy()
    inter = 1 - np.mean([pearson(ps[i], pt[i]) for i in range(ps.shape[0])])
    intra = 1 - np.mean([pearson(ps[:, k], pt[:, k]) for k in range(ps.shape[1])])
    return tau**2 * (beta * inter + gamma * intra)


# -- each loss against its formula --------------------------------------------------------------


def test_the_family_is_registered():
    assert loss_names()[:5] == ["ce", "kl", "mse", "dkd", "dist"]


@pytest.mark.parametrize("tau", [1.0, 2.0, 4.0])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_kl_with_standardization_is_kl_of_the_z_scores(batch, tau, alpha):
    zs, zt, y = batch
    got = distillation_loss(zs, zt, y, loss="kl", tau=tau, alpha=alpha, options={"standardize": True})
    kd = tau**2 * kl_rows(softmax(zscore(zt) / tau), softmax(zscore(zs) / tau)).mean()
    assert torch.allclose(got, (1 - alpha) * ref_ce(zs, y) + alpha * kd, rtol=1e-12, atol=1e-12)


def test_standardization_stays_exact_for_a_large_offset_and_a_small_spread():
    """Logits of mean 1000 and spread 0.01 in float32: the z-scores subtract the mean before
    any division, so the loss matches the float64 formula."""
    zs64 = 1000.0 + 0.01 * logits(11)
    zt64 = -500.0 + 0.05 * logits(12)
    y = torch.zeros(B, dtype=torch.int64)
    want = 4.0 * kl_rows(softmax(zscore(zt64) / 2.0), softmax(zscore(zs64) / 2.0)).mean()
    got = make_loss("kl", tau=2.0, alpha=1.0, options={"standardize": True})(zs64.float(), zt64.float(), y)
    assert float(got) == pytest.approx(float(want), rel=1e-3)


def test_standardization_removes_each_samples_logit_shift_and_scale(batch):
    zs, zt, y = batch
    shifted = 3.0 * zs + torch.arange(B, dtype=torch.float64)[:, None]  # per-sample shift, common scale
    for loss in ("kl", "mse"):
        a = distillation_loss(zs, zt, y, loss=loss, alpha=1.0, options={"standardize": True})
        b = distillation_loss(shifted, zt, y, loss=loss, alpha=1.0, options={"standardize": True})
        assert torch.allclose(a, b, rtol=1e-6), loss


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_standardized_mse_is_the_mse_of_the_z_scores(batch, alpha):
    zs, zt, y = batch
    got = distillation_loss(zs, zt, y, loss="mse", tau=7.0, alpha=alpha, options={"standardize": True})
    want = ((zscore(zs) - zscore(zt)) ** 2).sum() / (B * K)
    assert torch.allclose(got, (1 - alpha) * ref_ce(zs, y) + alpha * want, rtol=1e-12)


@pytest.mark.parametrize("tau", [1.0, 4.0])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_dkd_matches_its_formula(batch, tau, alpha):
    zs, zt, y = batch
    a, b, warmup, epoch = 1.5, 6.0, 20, 5
    got = distillation_loss(zs, zt, y, loss="dkd", tau=tau, alpha=alpha, epoch=epoch,
                            options={"dkd_alpha": a, "dkd_beta": b, "dkd_warmup": warmup})
    tckd, nckd = ref_dkd_parts(zs, zt, y, tau)
    kd = min(epoch / warmup, 1.0) * tau**2 * (a * tckd.mean() + b * nckd.mean())
    assert torch.allclose(got, (1 - alpha) * ref_ce(zs, y) + alpha * kd, rtol=1e-10)


def test_dkd_has_the_published_defaults(batch):
    zs, zt, y = batch
    tckd, nckd = ref_dkd_parts(zs, zt, y, 4.0)
    got = distillation_loss(zs, zt, y, loss="dkd", tau=4.0, alpha=1.0, epoch=40)
    assert torch.allclose(got, 16.0 * (1.0 * tckd.mean() + 8.0 * nckd.mean()), rtol=1e-10)


@pytest.mark.parametrize("tau", [0.5, 1.0, 4.0, 20.0])
def test_kl_decomposes_into_tckd_and_weighted_nckd_per_sample(batch, tau):
    """Zhao et al.'s identity: KL(p_t || p_s) = TCKD + (1 - p_target(teacher)) * NCKD."""
    zs, zt, y = batch
    tckd, nckd = dkd_parts(zs, zt, y, tau)
    kl = kl_rows(softmax(zt / tau), softmax(zs / tau))
    p_target = softmax(zt / tau)[torch.arange(B), y]
    assert torch.allclose(kl, tckd + (1 - p_target) * nckd, rtol=1e-10, atol=1e-14)
    # and with the loss's own factors: the batch mean times tau**2 is kl's term
    assert torch.allclose(tau**2 * (tckd + (1 - p_target) * nckd).mean(), kl_term(zs, zt, tau), rtol=1e-10)


def test_dkd_targets_are_the_labels_given(batch):
    """The target class is the label the student trains on: other labels, another loss."""
    zs, zt, y = batch
    noisy = (y + 1) % K
    clean = distillation_loss(zs, zt, y, loss="dkd", tau=4.0, alpha=1.0, epoch=30)
    other = distillation_loss(zs, zt, noisy, loss="dkd", tau=4.0, alpha=1.0, epoch=30)
    tckd, nckd = ref_dkd_parts(zs, zt, noisy, 4.0)
    assert not torch.allclose(clean, other)
    assert torch.allclose(other, 16.0 * (tckd.mean() + 8.0 * nckd.mean()), rtol=1e-10)


def test_dkd_stays_exact_where_the_target_probability_rounds_to_one():
    zs = torch.tensor([[40.0, 0.0, 1.0, -2.0]], dtype=torch.float32)
    zt = torch.tensor([[60.0, 2.0, -1.0, 0.5]], dtype=torch.float32)
    y = torch.tensor([0])
    tckd, nckd = dkd_parts(zs, zt, y, 1.0)
    _, want_n = ref_dkd_parts(zs.double(), zt.double(), y, 1.0)
    assert torch.isfinite(tckd).all() and torch.isfinite(nckd).all()
    # 1 - p_target is ~1e-17 in float64 already; NCKD (a distribution over the rest) is exact.
    assert torch.allclose(nckd.double(), want_n, rtol=1e-5)
    # TCKD is ~e**-38 here (both binary distributions are (1, ~0)): zero to float32 rounding.
    assert abs(float(tckd)) < 1e-12


def test_dkd_warmup_rises_linearly_from_epoch_one():
    assert dkd_weight(1, 20) == 1 / 20 and dkd_weight(10, 20) == 0.5
    assert dkd_weight(20, 20) == dkd_weight(200, 20) == 1.0
    assert dkd_weight(None, 0) == dkd_weight(1, 0) == 1.0
    with pytest.raises(ValueError, match="epoch"):
        dkd_weight(None, 20)


def test_dkd_without_an_epoch_is_refused_when_it_warms_up(batch):
    zs, zt, y = batch
    with pytest.raises(ValueError, match="1-based epoch"):
        make_loss("dkd", tau=4.0, alpha=0.5)(zs, zt, y)
    no_warmup = make_loss("dkd", tau=4.0, alpha=1.0, options={"dkd_warmup": 0})(zs, zt, y)
    assert torch.allclose(no_warmup, dkd_term(zs, zt, 4.0, targets=y, epoch=99))


@pytest.mark.parametrize("tau", [1.0, 4.0])
@pytest.mark.parametrize("beta, gamma", [(1.0, 1.0), (2.0, 0.5), (0.0, 1.0)])
def test_dist_matches_its_formula(batch, tau, beta, gamma):
    zs, zt, y = batch
    got = distillation_loss(zs, zt, y, loss="dist", tau=tau, alpha=1.0,
                            options={"dist_beta": beta, "dist_gamma": gamma})
    assert float(got) == pytest.approx(ref_dist(zs, zt, tau, beta, gamma), rel=1e-10, abs=1e-12)


def test_dist_mixes_with_ce_by_alpha(batch):
    zs, zt, y = batch
    got = distillation_loss(zs, zt, y, loss="dist", tau=4.0, alpha=0.25)
    assert float(got) == pytest.approx(0.75 * float(ref_ce(zs, y)) + 0.25 * ref_dist(zs, zt, 4.0, 1.0, 1.0),
                                       rel=1e-10)


# -- the written-out gradients against autograd on the formulas ---------------------------------


def torch_pearson_mean(a, b, dim):
    """Mean Pearson correlation along ``dim`` of two 2-d tensors, differentiable in ``a``."""
    ca, cb = a - a.mean(dim, keepdim=True), b - b.mean(dim, keepdim=True)
    return ((ca * cb).sum(dim) / (ca.norm(dim=dim) * cb.norm(dim=dim))).mean()


def formula(loss, tau, options, zs, zt, y, epoch):
    """The KD term written out above, as autograd sees it (float64)."""
    if loss == "kl" and math.isinf(tau):
        d = zscore(zs) - zscore(zt)
        return ((d - d.mean(1, keepdim=True)) ** 2).sum(1).mean() / (2 * K)
    if loss == "kl":
        return tau**2 * kl_rows(softmax(zscore(zt) / tau), softmax(zscore(zs) / tau)).mean()
    if loss == "mse":
        return ((zscore(zs) - zscore(zt)) ** 2).mean()
    if loss == "dkd":
        tckd, nckd = ref_dkd_parts(zs, zt, y, tau)
        weight = min(epoch / options.get("dkd_warmup", 20), 1.0)
        a, b = options.get("dkd_alpha", 1.0), options.get("dkd_beta", 8.0)
        return weight * tau**2 * (a * tckd.mean() + b * nckd.mean())
    ps, pt = softmax(zs / tau), softmax(zt / tau)
    inter, intra = 1 - torch_pearson_mean(ps, pt, 1), 1 - torch_pearson_mean(ps, pt, 0)
    return tau**2 * (options.get("dist_beta", 1.0) * inter + options.get("dist_gamma", 1.0) * intra)


@pytest.mark.parametrize("loss, tau, options", [
    ("kl", 2.0, {"standardize": True}), ("kl", 0.5, {"standardize": True}), ("kl", math.inf, {"standardize": True}),
    ("mse", 1.0, {"standardize": True}), ("dkd", 4.0, {}), ("dkd", 1.0, {"dkd_alpha": 2.0, "dkd_beta": 3.0}),
    ("dist", 4.0, {}), ("dist", 1.0, {"dist_beta": 2.0, "dist_gamma": 0.5}),
])
@pytest.mark.parametrize("seed", [0, 1])
def test_written_out_gradients_equal_autograd_on_the_formula(loss, tau, options, seed):
    """The family's gradients (kd_tune.train.closed_form) against autograd through the
    formulas of this file, in float64, KD term alone and mixed with CE; the teacher gets none."""
    zs, zt = logits(20 + seed, scale=3.0), logits(30 + seed, scale=3.0)
    y = torch.tensor([0, 1, 2, 3, 4, 5, 0, 3]).roll(seed)
    for alpha in (1.0, 0.3, 0.0):
        ours, theirs = zs.clone().requires_grad_(True), zs.clone().requires_grad_(True)
        teacher = zt.clone().requires_grad_(True)
        value = make_loss(loss, tau=tau, alpha=alpha, options=options)(ours, teacher, y, 7)
        want = (1 - alpha) * ref_ce(theirs, y) + alpha * formula(loss, tau, options, theirs, zt, y, 7)
        (value * 3.0).backward()  # an upstream gradient other than 1 reaches it too
        (want * 3.0).backward()
        assert torch.allclose(value, want, rtol=1e-10, atol=1e-13)
        assert torch.allclose(ours.grad, theirs.grad, rtol=1e-8, atol=1e-12), (alpha, ours.grad - theirs.grad)
        assert teacher.grad is None


def test_written_out_gradients_hold_for_far_apart_and_float32_logits():
    """Float32 logits of spread 30 (probabilities near 0 and 1) against the float64 formula."""
    zs, zt = logits(40, scale=15.0), logits(41, scale=15.0)
    y = torch.tensor([0, 1, 2, 3, 4, 5, 0, 3])
    for loss, tau, options in (("dkd", 1.0, {}), ("dist", 1.0, {}), ("kl", 2.0, {"standardize": True})):
        ours = zs.float().requires_grad_(True)
        theirs = zs.clone().requires_grad_(True)
        make_loss(loss, tau=tau, alpha=1.0, options=options)(ours, zt.float(), y, 30).backward()
        formula(loss, tau, options, theirs, zt, y, 30).backward()
        scale = float(theirs.grad.abs().max())
        assert torch.allclose(ours.grad.double(), theirs.grad, rtol=1e-4, atol=1e-5 * scale), loss


def test_the_family_is_once_differentiable(batch):
    zs, zt, y = batch
    z = zs.clone().requires_grad_(True)
    value = make_loss("dist", tau=4.0, alpha=1.0)(z, zt, y)
    (grad,) = torch.autograd.grad(value, z, create_graph=True)
    with pytest.raises(RuntimeError):
        grad.sum().backward()


# -- identities between the losses --------------------------------------------------------------


def test_standardized_mse_is_one_minus_pearson_per_sample():
    """MSE of z-scores = (2(K-1)/K)(1 - Pearson) with the sample std, 2(1 - Pearson) with the
    population one; the loss uses the sample std."""
    for seed, k in ((3, 6), (4, 10), (5, 100)):
        zs, zt = logits(seed, shape=(5, k)), logits(seed + 10, shape=(5, k))
        rho = torch.tensor([pearson(zs[i], zt[i]) for i in range(5)], dtype=torch.float64)
        per_sample_sample_std = ((zscore(zs, ddof=1) - zscore(zt, ddof=1)) ** 2).mean(1)
        per_sample_population = ((zscore(zs, ddof=0) - zscore(zt, ddof=0)) ** 2).mean(1)
        assert torch.allclose(per_sample_sample_std, 2 * (k - 1) / k * (1 - rho), rtol=1e-6, atol=1e-9)
        assert torch.allclose(per_sample_population, 2 * (1 - rho), rtol=1e-6, atol=1e-9)
        got = make_loss("mse", alpha=1.0, options={"standardize": True})(zs, zt, None)
        assert float(got) == pytest.approx(float((2 * (k - 1) / k * (1 - rho)).mean()), rel=1e-6)


def test_kl_with_standardization_at_infinite_tau_is_half_the_standardized_mse(batch):
    zs, zt, y = batch
    limit = make_loss("kl", tau=math.inf, alpha=1.0, options={"standardize": True})(zs, zt, y)
    mse = make_loss("mse", alpha=1.0, options={"standardize": True})(zs, zt, y)
    assert torch.allclose(limit, 0.5 * mse, rtol=1e-12)
    large = make_loss("kl", tau=1e4, alpha=1.0, options={"standardize": True})(zs, zt, y)
    assert float(large) == pytest.approx(float(limit), rel=1e-3)


# -- constant logits ----------------------------------------------------------------------------


@pytest.mark.parametrize("loss, tau, options", [
    ("kl", 2.0, {"standardize": True}), ("kl", math.inf, {"standardize": True}),
    ("mse", 1.0, {"standardize": True}), ("dkd", 4.0, {}), ("dist", 4.0, {}), ("kl", 4.0, {}),
])
@pytest.mark.parametrize("which", ["student", "teacher", "both"])
def test_constant_logits_give_finite_losses_and_gradients(loss, tau, options, which):
    zs, zt = logits(7, shape=(4, K)).float(), logits(8, shape=(4, K)).float()
    if which in ("student", "both"):
        zs = torch.full_like(zs, 3.0)
    if which in ("teacher", "both"):
        zt = torch.full_like(zt, -1.0)
    zs.requires_grad_(True)
    y = torch.tensor([0, 1, 2, 3])
    value = make_loss(loss, tau=tau, alpha=0.5, options=options)(zs, zt, y, 25)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(zs.grad).all()


def test_the_eps_values_are_the_reference_codes():
    assert STD_EPS == 1e-7 and PEARSON_EPS == 1e-8


# -- arguments -----------------------------------------------------------------------------------


@pytest.mark.parametrize("loss, tau, options, words", [
    ("kl", 4.0, {"dkd_beta": 3.0}, ["dkd_beta=3.0", "dkd only"]),
    ("dkd", 4.0, {"standardize": True}, ["standardize=True", "kl or mse"]),
    ("dkd", math.inf, {}, ["tau=inf", "dkd"]),
    ("dist", math.inf, {}, ["tau=inf", "dist"]),
    ("dkd", 4.0, {"dkd_beta": -1.0}, ["dkd_beta=-1.0", ">= 0"]),
    ("dkd", 4.0, {"dkd_warmup": 2.5}, ["dkd_warmup=2.5", "integer"]),
    ("dist", 4.0, {"dist_gamma": math.nan}, ["dist_gamma=nan"]),
    ("kl", 4.0, {"temperature": 3.0}, ["temperature", "unknown"]),
])
def test_bad_options_are_named(batch, loss, tau, options, words):
    zs, zt, y = batch
    with pytest.raises(ValueError) as err:
        distillation_loss(zs, zt, y, loss=loss, tau=tau, options=options, epoch=1)
    for word in words:
        assert word in str(err.value)


# -- in the training loop -----------------------------------------------------------------------


def test_the_trainer_hands_dkd_the_one_based_epoch():
    """Epoch e of a dkd run weighs its KD term min(e / warmup, 1): at alpha 1 the first epochs'
    training losses scale with 1/warmup, 2/warmup against a run without warmup."""
    from kd_tune import models
    from kd_tune.core.config import RunConfig
    from kd_tune.train.trainer import load_data, train

    config = RunConfig(loss="dkd", alpha=1.0, epochs=2, student="cnn-4", teacher="cnn-8", lr=1e-6, momentum=0.0,
                       nesterov=False, val_size=0, device="cpu", threads=1)
    data = load_data(config)
    torch.manual_seed(0)
    teacher = models.build("cnn-8", data.num_classes, data.in_channels)
    losses = {w: [h["train_loss"] for h in train(config.replace(dkd_warmup=w), data=data, teacher=teacher).history]
              for w in (0, 8)}
    # lr 1e-6: the student barely moves, so each epoch's loss is the warmup weight times the same term
    assert losses[8][0] / losses[0][0] == pytest.approx(1 / 8, rel=1e-3)
    assert losses[8][1] / losses[0][1] == pytest.approx(2 / 8, rel=1e-3)
