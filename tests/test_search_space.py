"""Search spaces: block expansion and canonical configs."""
from __future__ import annotations

import math

import pytest

from kd_tune.config import ConfigError, RunConfig
from kd_tune.identity import trial_key
from kd_tune.search_space import canonical, expand

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
