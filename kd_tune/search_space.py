"""Search spaces: blocks of axes expanded into the list of run configs a sweep trains.

A search space is a sequence of *blocks*. Each block maps config field names to the
values to try; a block expands to the Cartesian product of its axes, and the space to
the union of its blocks. Blocks let one sweep hold a non-rectangular grid, e.g. KL over
tau x alpha, MSE over alpha only, and a single CE baseline::

    TAU_GRID = (
        {"loss": ["kl"], "tau": [1, 3, 5, 20, math.inf], "alpha": [0.1, 0.5, 1.0]},
        {"loss": ["mse"], "alpha": [0.1, 0.5, 1.0]},
        {"loss": ["ce"]},
    )

Every expanded config is put in canonical form (:func:`canonical`) and duplicates are
dropped, so the same run is never trained twice within a sweep. :mod:`kd_tune.plan` turns the
configs into planned trials.
"""
from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from kd_tune.config import ConfigError, RunConfig

Block = Mapping[str, Sequence[Any]]
SearchSpace = Sequence[Block]

_FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig))


def canonical(config: RunConfig) -> RunConfig:
    """The canonical form of a run: settings that cannot change it get fixed values.

    - ``ce`` uses neither tau nor alpha: stored as tau=1, alpha=0 (as for teachers).
    - ``mse`` has no temperature: tau=1.
    - noise rate 0 is no noise, whatever the type: noise_type="none", and without noise
      the noise seed draws nothing: noise_seed=0.
    """
    if config.loss == "ce":
        config = config.replace(tau=1.0, alpha=0.0)
    elif config.loss == "mse":
        config = config.replace(tau=1.0)
    if config.noise_rate == 0.0:
        config = config.replace(noise_type="none", noise_seed=0)
    return config


def expand(base: RunConfig, space: SearchSpace, *, seeds: Iterable[int] = (0,)) -> list[RunConfig]:
    """Every config of ``space`` on top of ``base``, for each seed, canonical and unique.

    Order: blocks in order, axes varying fastest from the right, seeds innermost.
    Raises :class:`ConfigError` for an axis that is not a config field or has no values;
    the configs themselves are not validated here (see :func:`kd_tune.validation.validate_all`).
    """
    seeds = list(seeds)
    blocks = [{name: list(values) for name, values in block.items()} for block in space]
    problems = []
    for block in blocks:
        for name, values in block.items():
            if name not in _FIELDS:
                problems.append(f"search axis {name!r} is not a config field")
            elif not values:
                problems.append(f"search axis {name!r} has no values")
    if not seeds:
        problems.append("at least one seed is needed")
    if problems:
        raise ConfigError(problems)
    configs: dict[RunConfig, None] = {}
    for block in blocks:
        names = list(block)
        for values in itertools.product(*(block[n] for n in names)):
            point = dict(zip(names, values))
            for seed in seeds:
                configs.setdefault(canonical(base.replace(**point, seed=seed)), None)
    return list(configs)
