"""Search spaces: block expansion and canonical configs."""
from __future__ import annotations

import math
import re

import optuna
import pytest

from kd_tune.core.config import ConfigError, RunConfig
from kd_tune.core.identity import trial_key
from kd_tune.plan.search_space import (
    Choice,
    Range,
    SampledSpace,
    canonical,
    describe,
    expand,
    loguniform,
    parse_distribution,
    uniform,
)

BASE = RunConfig()



def _points(configs, *names):
    return [tuple(getattr(c, n) for n in names) for c in configs]


# -- expand ------------------------------------------------------------------------------


def test_one_block_is_a_cartesian_product_rightmost_axis_fastest():
    configs = expand(BASE, [{"tau": [1, 3], "alpha": [0.1, 0.5, 1.0]}])
    assert _points(configs, "loss", "tau", "alpha", "seed") == [
        ("kl", 1.0, 0.1, 0), ("kl", 1.0, 0.5, 0), ("kl", 1.0, 1.0, 0),
        ("kl", 3.0, 0.1, 0), ("kl", 3.0, 0.5, 0), ("kl", 3.0, 1.0, 0),
    ]
    # every other field comes from the base
    assert {c.replace(tau=BASE.tau, alpha=BASE.alpha) for c in configs} == {BASE}


def test_tau_values_become_floats():
    configs = expand(BASE, [{"tau": [1, 20]}])
    assert [type(c.tau) for c in configs] == [float, float]
    assert [c.tau for c in configs] == [1.0, 20.0]


def test_seeds_are_innermost():
    configs = expand(BASE, [{"alpha": [0.1, 0.5]}], seeds=[7, 3])
    assert _points(configs, "alpha", "seed") == [(0.1, 7), (0.1, 3), (0.5, 7), (0.5, 3)]


def test_space_is_the_union_of_its_blocks_in_order():
    space = [
        {"loss": ["kl"], "tau": [1, math.inf], "alpha": [0.5, 1.0]},
        {"loss": ["mse"], "alpha": [0.5]},
        {"loss": ["ce"]},
    ]
    configs = expand(BASE, space, seeds=range(2))
    assert _points(configs, "loss", "tau", "alpha", "seed") == [
        ("kl", 1.0, 0.5, 0), ("kl", 1.0, 0.5, 1), ("kl", 1.0, 1.0, 0), ("kl", 1.0, 1.0, 1),
        ("kl", math.inf, 0.5, 0), ("kl", math.inf, 0.5, 1), ("kl", math.inf, 1.0, 0), ("kl", math.inf, 1.0, 1),
        ("mse", 1.0, 0.5, 0), ("mse", 1.0, 0.5, 1),
        ("ce", 1.0, 0.0, 0), ("ce", 1.0, 0.0, 1),
    ]


def test_an_empty_block_is_the_base_config_itself():
    assert expand(BASE, [{}], seeds=[0]) == [BASE]
    assert expand(BASE, [], seeds=[0]) == []


def test_duplicates_are_dropped_keeping_the_first_position():
    space = [
        {"loss": ["ce"], "tau": [1, 3, 5], "alpha": [0.1, 0.9]},  # 6 points, all the one CE run
        {"loss": ["kl"], "tau": [3]},
        {"loss": ["kl"], "tau": [3.0, 5.0]},  # tau 3 again (int vs float)
        {"loss": ["ce"]},  # the CE run again
    ]
    configs = expand(BASE, space, seeds=[0, 1])
    assert _points(configs, "loss", "tau", "alpha", "seed") == [
        ("ce", 1.0, 0.0, 0), ("ce", 1.0, 0.0, 1),
        ("kl", 3.0, 0.9, 0), ("kl", 3.0, 0.9, 1),
        ("kl", 5.0, 0.9, 0), ("kl", 5.0, 0.9, 1),
    ]
    assert len({trial_key(c) for c in configs}) == 6


def test_noise_rate_zero_of_both_noise_types_is_one_clean_run():
    configs = expand(BASE, [{"noise_type": ["symmetric", "asymmetric"], "noise_rate": [0.0, 0.2]}])
    assert _points(configs, "noise_type", "noise_rate") == [
        ("none", 0.0), ("symmetric", 0.2), ("asymmetric", 0.2),
    ]


def test_unknown_and_empty_axes_and_no_seeds_are_all_reported_at_once():
    space = [{"temperature": [1, 2], "alpha": []}, {"loss": ["kl"], "lossy": ["x"]}]
    with pytest.raises(ConfigError) as err:
        expand(BASE, space, seeds=[])
    assert err.value.problems == [
        "search axis 'temperature' is not a config field",
        "search axis 'alpha' has no values",
        "search axis 'lossy' is not a config field",
        "at least one seed is needed",
    ]
    assert "temperature" in str(err.value) and "at least one seed" in str(err.value)


def test_expand_does_not_validate_the_configs():
    configs = expand(BASE, [{"alpha": [2.0], "loss": ["hinge"]}])
    assert _points(configs, "loss", "alpha") == [("hinge", 2.0)]


# -- canonical ---------------------------------------------------------------------------


def test_canonical_ce_has_tau_1_and_alpha_0():
    c = canonical(BASE.replace(loss="ce", tau=7.0, alpha=0.3))
    assert (c.loss, c.tau, c.alpha) == ("ce", 1.0, 0.0)


def test_canonical_mse_has_tau_1_and_keeps_alpha():
    c = canonical(BASE.replace(loss="mse", tau=math.inf, alpha=0.3))
    assert (c.loss, c.tau, c.alpha) == ("mse", 1.0, 0.3)


def test_canonical_kl_keeps_tau_and_alpha():
    cfg = BASE.replace(loss="kl", tau=math.inf, alpha=0.3)
    assert canonical(cfg) == cfg


def test_canonical_noise_rate_zero_means_no_noise():
    assert canonical(BASE.replace(noise_type="asymmetric", noise_rate=0.0)).noise_type == "none"
    noisy = BASE.replace(noise_type="asymmetric", noise_rate=0.4)
    assert canonical(noisy) == noisy


def test_canonical_is_idempotent():
    cfg = BASE.replace(loss="ce", tau=3.0, alpha=0.5, noise_type="symmetric", noise_rate=0.0)
    once = canonical(cfg)
    assert canonical(once) == once
    assert once == BASE.replace(loss="ce", tau=1.0, alpha=0.0)


def test_milestones_axis_with_list_values():
    configs = expand(BASE.replace(schedule="step"), [{"milestones": [[5, 10], [3]]}])
    assert [c.milestones for c in configs] == [(5, 10), (3,)]


def test_an_iterator_axis_is_expanded():
    configs = expand(BASE, [{"alpha": iter([0.1, 0.5])}])
    assert [c.alpha for c in configs] == [0.1, 0.5]


# -- sampled spaces ------------------------------------------------------------------------

TAU_SEARCH = SampledSpace.of(
    {"loss": ["kl"], "tau": loguniform(0.25, 64, points=[math.inf]), "alpha": uniform(0, 1)},
    {"loss": ["mse"], "alpha": uniform(0, 1)},
)


def test_command_line_distributions():
    assert parse_distribution("tau", "loguniform:0.25,64+inf") == Range(0.25, 64.0, True, (math.inf,))
    assert parse_distribution("alpha", "uniform:0,1") == Range(0.0, 1.0)
    assert parse_distribution("tau", "choice:1,3,inf") == Choice((1.0, 3.0, math.inf))
    assert parse_distribution("batch_size", "choice:32,64") == Choice((32, 64))
    assert parse_distribution("student", "choice:cnn-4,mlp-16") == Choice(("cnn-4", "mlp-16"))
    for dist in (Range(0.25, 64.0, True, (math.inf,)), Choice((1.0, math.inf)), Range(0.0, 1.0)):
        assert parse_distribution("tau", describe(dist)) == dist


@pytest.mark.parametrize(("field", "text", "message"), [
    ("tau", "normal:1,2", "unknown distribution 'normal'; use choice:V1,V2,..., uniform:LOW,HIGH"),
    ("tau", "uniform:1", "a range needs LOW,HIGH"),
    ("tau", "uniform:1,x", "'x' is not a number"),
    ("alpha", "choice:", "a choice needs at least one value"),
    ("batch_size", "choice:32,64.5", "'64.5' is not an integer"),
    ("temperature", "uniform:1,2", "'temperature' is not a config field"),
])
def test_bad_command_line_distributions(field, text, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_distribution(field, text)


@pytest.mark.parametrize(("blocks", "message"), [
    ([{"alpha": uniform(1, 0)}], "alpha: the range [1, 0] is empty (LOW must be < HIGH)"),
    ([{"alpha": uniform(0.5, 0.5)}], "alpha: the range [0.5, 0.5] is empty"),
    ([{"tau": loguniform(0, 4)}], "tau: a log-uniform range needs LOW > 0, got 0"),
    ([{"tau": uniform(1, math.inf)}], "needs finite ends (add inf as a point: +inf)"),
    ([{"loss": uniform(0, 1)}], "loss: a range needs a numeric field (loss is str)"),
    ([{"batch_size": uniform(16.5, 64)}], "an integer range needs integer ends"),
    ([{"seed": [0, 1]}], "seed is not drawn"),
    ([{"alpha": []}], "alpha: the choice has no values"),
    ([{"loss": ["mse"], "tau": uniform(1, 2)}], "the mse block draws tau, which mse does not use"),
    ([{"loss": ["ce"], "alpha": uniform(0, 1)}], "the ce block draws alpha, which ce does not use"),
    ([{"loss": ["kl"], "alpha": uniform(0, 1)}, {"loss": ["kl", "mse"]}], "loss 'kl' is in blocks 1 and 2"),
    ([{"loss": ["kl"], "alpha": uniform(0, 1)}, {"loss": ["mse"], "alpha": uniform(0, 0.5)}],
     "alpha has two distributions (uniform:0,1 and uniform:0,0.5)"),
    ([{"loss": ["kl"]}, {"alpha": [0.5]}], "block 2 names no loss"),
    ([{"alpha": 0.5}], "alpha: 0.5 is not a distribution"),
])
def test_bad_sampled_spaces_list_their_problems(blocks, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        SampledSpace.of(*blocks)


def test_a_draw_is_canonical_and_its_parameters_read_back_from_the_config():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(40):
        ot_trial = study.ask()
        config = TAU_SEARCH.sample(ot_trial, BASE)
        assert canonical(config) == config and config.seed == BASE.seed
        assert TAU_SEARCH.params(config.to_dict()) == ot_trial.params
        assert set(ot_trial.params) == ({"loss", "tau_point", "alpha"} | ({"tau"} if config.tau != math.inf else set())
                                        if config.loss == "kl" else {"loss", "alpha"})
        assert config.loss == "mse" or config.tau == math.inf or 0.25 <= config.tau <= 64
        seen.add((config.loss, config.tau == math.inf))
    assert seen == {("kl", True), ("kl", False), ("mse", False)}
    assert set(TAU_SEARCH.distributions()) == {"loss", "tau_point", "tau", "alpha"}


def test_integer_fields_draw_integers_and_a_single_choice_is_fixed():
    space = SampledSpace.of({"batch_size": uniform(16, 128), "alpha": [0.5]})
    ot_trial = optuna.create_study().ask()
    config = space.sample(ot_trial, BASE)
    assert isinstance(config.batch_size, int) and 16 <= config.batch_size <= 128 and config.alpha == 0.5
    assert list(ot_trial.params) == ["batch_size"]


def test_a_grid_is_a_sampled_space_of_choices():
    grid = [{"loss": ["kl"], "tau": [1, 3, math.inf], "alpha": [0.1, 1.0]}, {"loss": ["mse"], "alpha": [0.1, 1.0]},
            {"loss": ["ce"]}]
    space = SampledSpace.from_grid(grid)
    assert space.losses() == ["kl", "mse", "ce"]
    assert space.values("tau") == "choice:1,3,inf" and space.values("alpha") == "choice:0.1,1"
    assert space.text() == "kl: tau=choice:1,3,inf alpha=choice:0.1,1 | mse: alpha=choice:0.1,1 | ce:"
    assert SampledSpace.from_json(space.to_json()) == space


def test_corners_reach_every_end_and_choice_per_loss():
    corners = TAU_SEARCH.corners(BASE)
    assert {(c.loss, c.tau, c.alpha) for c in corners} == {
        ("kl", 0.25, 0.0), ("kl", 64.0, 0.0), ("kl", math.inf, 0.0), ("kl", 0.25, 1.0), ("mse", 1.0, 0.0),
        ("mse", 1.0, 1.0)}
    assert {c.seed for c in corners} == {0}


def test_replace_and_with_losses():
    space = TAU_SEARCH.replace("alpha", Choice((0.5,))).replace("lr", loguniform(0.005, 0.1))
    assert space.values("alpha") == "choice:0.5" and space.values("lr") == "loguniform:0.005,0.1"
    assert all(dict(block)["lr"] == loguniform(0.005, 0.1) for block in space.blocks)
    assert space.with_losses(["mse"]).losses() == ["mse"] and not space.with_losses(["mse"]).values("tau")
    assert space.label({**BASE.to_dict(), "loss": "kl", "tau": math.inf, "lr": 0.0123}) == "kl tau=inf lr=0.0123"


# -- loss options -------------------------------------------------------------------------


def test_canonical_unsets_the_options_a_loss_does_not_read_and_fills_its_own():
    kl = canonical(BASE.replace(loss="kl", dkd_beta=4.0, dist_gamma=2.0))
    assert (kl.dkd_beta, kl.dist_gamma, kl.standardize) == (None, None, False) and kl == BASE
    ce = canonical(BASE.replace(loss="ce", standardize=True))
    assert ce.standardize is False and ce == canonical(BASE.replace(loss="ce"))
    dkd = canonical(BASE.replace(loss="dkd", standardize=True))
    assert (dkd.dkd_alpha, dkd.dkd_beta, dkd.dkd_warmup, dkd.standardize) == (1.0, 8.0, 20, False)
    dist = canonical(BASE.replace(loss="dkd", dkd_beta=6.0).replace(loss="dist"))
    assert (dist.dkd_beta, dist.dist_beta, dist.dist_gamma) == (None, 1.0, 1.0)
    assert canonical(BASE.replace(loss="mse", standardize=True)).standardize is True


def test_an_option_axis_collapses_on_the_losses_that_do_not_read_it():
    configs = expand(BASE, [{"loss": ["kl", "dkd"], "dkd_beta": [1, 4, 8], "standardize": [False, True]}])
    kl = [c for c in configs if c.loss == "kl"]
    dkd = [c for c in configs if c.loss == "dkd"]
    assert sorted(c.standardize for c in kl) == [False, True] and {c.dkd_beta for c in kl} == {None}
    assert sorted(c.dkd_beta for c in dkd) == [1.0, 4.0, 8.0] and {c.standardize for c in dkd} == {False}
    assert len({trial_key(c) for c in configs}) == len(configs) == 5


def test_a_block_may_not_draw_an_option_its_loss_does_not_read():
    with pytest.raises(ConfigError, match="the kl block draws dkd_beta, which kl does not use"):
        SampledSpace.of({"loss": ["kl"], "tau": [1.0, 4.0], "dkd_beta": uniform(1, 8)})
    with pytest.raises(ConfigError, match="the dist block draws standardize"):
        SampledSpace.of({"loss": ["dist"], "standardize": [False, True]})


def test_an_option_added_to_a_space_goes_to_the_blocks_that_read_it():
    space = SampledSpace.of({"loss": ["kl"], "tau": [1.0, 4.0]}, {"loss": ["mse"], "alpha": uniform(0, 1)},
                            {"loss": ["dkd"], "alpha": uniform(0, 1)}, {"loss": ["ce"]})
    assert space.replace("standardize", Choice((False, True))).text() == (
        "kl: tau=choice:1,4 standardize=choice:False,True | mse: alpha=uniform:0,1 standardize=choice:False,True | "
        "dkd: alpha=uniform:0,1 | ce:")
    assert "dkd: alpha=uniform:0,1 dkd_beta=loguniform:1,16" in space.replace("dkd_beta", loguniform(1, 16)).text()
    with pytest.raises(ConfigError, match="no block of this space has a loss that reads it"):
        space.with_losses(["kl", "ce"]).replace("dist_beta", uniform(1, 2))


def test_a_drawn_option_reaches_the_config():
    space = SampledSpace.of({"loss": ["dkd"], "alpha": [0.5], "dkd_beta": loguniform(1, 16), "dkd_warmup": [0, 20]})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        config = space.sample(study.ask(), BASE)
        assert config.loss == "dkd" and 1 <= config.dkd_beta <= 16 and config.dkd_warmup in (0, 20)
        assert config.validate() is config
