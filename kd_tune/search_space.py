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
dropped, so the same run is never trained twice within a sweep.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
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
    the configs themselves are not validated here (see :func:`validate_all`).
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


def validate_all(configs: Sequence[RunConfig]) -> None:
    """Raise one :class:`ConfigError` listing every distinct problem of every config."""
    problems: dict[str, None] = {}
    for config in configs:
        for problem in config.problems():
            problems.setdefault(problem, None)
    if problems:
        raise ConfigError(list(problems))


def config_hash(values: Mapping[str, Any], length: int = 16) -> str:
    """A short, stable hex hash of plain values (inf and NaN spelled out, keys sorted)."""
    text = json.dumps(_plain(values), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def trial_key(config: RunConfig) -> str:
    """The identity of one run: equal for equal configs, across sweeps and restarts.

    ``device`` is left out: where a run executes does not change what it is.
    """
    values = config.to_dict()
    values.pop("device")
    return config_hash(values)


def label(config: RunConfig) -> str:
    """A short human label of the axes that usually vary, e.g. ``kl tau=3 alpha=0.5 seed=1``."""
    parts = [config.loss]
    if config.loss == "kl":
        parts.append(f"tau={config.tau:g}")
    if config.loss != "ce":
        parts.append(f"alpha={config.alpha:g}")
    if config.noise_type != "none":
        parts.append(f"{config.noise_type}={config.noise_rate:g}")
    parts.append(f"seed={config.seed}")
    return " ".join(parts)


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
