"""The planner: trials planned once, with every key a later stage reads."""
from __future__ import annotations

import math

import pytest

from kd_tune.core import identity
from kd_tune.core.config import RunConfig
from kd_tune.plan.planner import Trial, label, plan_trial, plan_trials
from kd_tune.plan.search_space import expand

BASE = RunConfig()


# -- labels ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config, text",
    [
        (RunConfig(loss="kl", tau=3.0, alpha=0.5, seed=1), "kl tau=3 alpha=0.5 seed=1"),
        (RunConfig(loss="kl", tau=math.inf, alpha=1.0), "kl tau=inf alpha=1 seed=0"),
        (RunConfig(loss="kl", tau=0.5, alpha=0.1), "kl tau=0.5 alpha=0.1 seed=0"),
        (RunConfig(loss="mse", tau=9.0, alpha=0.9, seed=2), "mse alpha=0.9 seed=2"),
        (RunConfig(loss="ce", tau=9.0, alpha=0.9), "ce seed=0"),
        (RunConfig(loss="ce", noise_type="symmetric", noise_rate=0.4, seed=4), "ce symmetric=0.4 seed=4"),
        (RunConfig(loss="kl", tau=4.0, alpha=1.0, noise_type="asymmetric", noise_rate=0.2),
         "kl tau=4 alpha=1 asymmetric=0.2 seed=0"),
    ],
)
def test_label(config, text):
    assert label(config) == text


SPACE = [{"loss": ["kl"], "tau": [1.0, math.inf], "alpha": [0.5]}, {"loss": ["mse"], "alpha": [1.0]},
         {"loss": ["ce"]}]


def test_a_planned_trial_carries_every_key_once_computed():
    config = BASE.replace(tau=3.0, seed=2)
    trial = plan_trial(config)
    assert trial.config == config and trial.key == identity.trial_key(config)
    assert trial.teacher_key == identity.teacher_key(config) and trial.teacher == config.teacher
    assert trial.data_key == identity.data_key(config) and trial.label == "kl tau=3 alpha=0.9 seed=2"
    assert trial.distils and trial.cache_dtype == "float32"
    assert trial.cache_key == identity.cache_key(config, trial.teacher_key, augment=False)


def test_ce_trials_and_a_cache_turned_off_read_no_cache():
    ce = plan_trial(BASE.replace(loss="ce", tau=1.0, alpha=0.0))
    assert not ce.distils and ce.cache_key is None and ce.cache_dtype is None
    online = plan_trial(BASE, cache_dtype=None)
    assert online.distils and online.cache_key is None and online.cache_dtype is None
    half = plan_trial(BASE, cache_dtype="float16")
    assert half.cache_dtype == "float16" and half.cache_key != plan_trial(BASE).cache_key


def test_a_trial_round_trips_through_plain_values():
    trial = plan_trial(BASE.replace(tau=math.inf))
    values = trial.to_dict()
    assert values["run"]["tau"] == math.inf and Trial.from_dict(values) == trial
    assert all(isinstance(v, (str, bool, dict, list, type(None))) for v in values.values())


def test_the_plan_lists_shared_teachers_caches_and_data_once():
    configs = expand(BASE, SPACE, seeds=range(3))
    plan = plan_trials(configs)
    assert plan.keys == [identity.trial_key(c) for c in configs]
    # one teacher for every distilling trial; digits has no augmentation: one cache for all seeds
    assert list(plan.teacher_nodes) == [identity.teacher_key(BASE)]
    caches = plan.caches()
    assert len(caches) == 1 and next(iter(caches.values())).config.seed == 0
    assert list(plan.data()) == [identity.data_key(BASE)]


def test_the_lowest_seed_builds_a_shared_cache_whatever_the_order():
    configs = list(reversed(expand(BASE, [{"alpha": [0.5]}], seeds=range(3))))
    assert [c.seed for c in configs] == [2, 1, 0]
    assert next(iter(plan_trials(configs).caches().values())).config.seed == 0


def test_noisy_and_clean_teachers_are_planned_apart():
    noisy = BASE.replace(noise_type="symmetric", noise_rate=0.4)
    plan = plan_trials([BASE, noisy, noisy.replace(clean_teacher=True)])
    assert len(plan.teacher_nodes) == 2 and len(plan.data()) == 2
