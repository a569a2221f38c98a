"""Identities: the one place where kd-tune turns settings and weights into keys.

Every key is a short hex hash of plain values (:func:`config_hash`), so equal settings
give equal keys on every machine, in every process and across restarts:

- :func:`trial_key`: one run (every config field but where it executes: ``device`` and
  ``threads``); names a trial's rows in Parquet and its MLflow child run;
- :func:`setting_key`: a run without its seed; a search groups the trials of one sampled
  setting (its repeats and its confirmation seeds) by it;
- :func:`teacher_key`: the teacher a run distils from (its architecture, seed, recipe,
  and the data and label noise it trains on); names its folder in the teacher store;
  :func:`undertrained_key`, :func:`sequential_key`, :func:`ensemble_key`: the other
  nodes of a teacher spec's DAG (``ARCH@E``, a step ``A>B``, ``A+B``), each covering
  the whole recipe of the nodes it is made from (:mod:`kd_tune.plan.teacher_dag`);
- :func:`data_key`: the data a run sees (data set, files, split, label noise);
- :func:`cache_key`: the teacher's logits on the views a run trains on; names a folder of
  the teacher-logit cache;
- :func:`weights_digest`: sha256 of a network's weights; the teacher store records it so
  that a cache or a load can check it has the teacher it was made for.

The planner (:mod:`kd_tune.plan.planner`) calls these once per trial; every later stage reads
the keys from the planned trial instead of computing them again.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from kd_tune.core.config import RunConfig
from kd_tune.core.hashing import KEY_LENGTH, sha256_hex

if TYPE_CHECKING:
    import torch
    from torch import nn

# Part of every teacher key: bump it when the stored teacher's format or recipe changes.
TEACHER_KEY_FORMAT = 1
# Part of every cache key: bump it when the cache's layout or contents change.
CACHE_KEY_FORMAT = 2
# How cached teacher logits can be stored.
CACHE_DTYPES = ("float32", "float16")
# Where a run executes: the device and the CPU thread count. They change floats (a run is
# bitwise repeatable at an equal count only), not what the run is, so no key holds them.
_EXECUTION = ("device", "threads")
# Fields of a student config that teacher_config() has already folded into the teacher's run.
_NOT_TEACHER_IDENTITY = ("teacher", "clean_teacher", "teacher_seed", "teacher_epochs", *_EXECUTION, "download")
# Fields added to RunConfig after keys were first stored, each with the value at which a
# key leaves it out: a config that holds it there is a run that existed before the field,
# and keeps the key it had (Parquet rows, MLflow runs, teacher folders, caches, resumes).
# The loss options (kd_tune.core.config.LOSS_OPTIONS) at their unset values.
_ADDED_FIELDS: dict[str, Any] = {
    "standardize": False,
    "dkd_alpha": None,
    "dkd_beta": None,
    "dkd_warmup": None,
    "dist_beta": None,
    "dist_gamma": None,
    # The generated data sets' size and the data-size study's fraction (issue 21).
    "data_samples": None,
    "data_fraction": 1.0,
}


def config_hash(values: Mapping[str, Any], length: int = KEY_LENGTH) -> str:
    """A short, stable hex hash of plain values (inf and NaN spelled out, keys sorted)."""
    text = json.dumps(_plain(values), sort_keys=True, separators=(",", ":"))
    return sha256_hex(text, length)


def identity_values(config: RunConfig) -> dict[str, Any]:
    """:meth:`RunConfig.to_dict` without the fields of ``_ADDED_FIELDS`` that hold the value at
    which a key leaves them out: what every key below hashes, so that adding a field to
    RunConfig keeps the keys of every config from before it."""
    return _without_added_defaults(config.to_dict())


def _without_added_defaults(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` without the ``_ADDED_FIELDS`` present in it at the value that leaves them out."""
    return {name: value for name, value in values.items()
            if name not in _ADDED_FIELDS or value != _ADDED_FIELDS[name]}


def trial_key(config: RunConfig) -> str:
    """The identity of one run: equal for equal configs, across sweeps and restarts.

    ``device`` and ``threads`` are left out: where a run executes does not change what it is.
    """
    values = identity_values(config)
    for name in _EXECUTION:
        values.pop(name)
    return config_hash(values)


def setting_key(config: RunConfig) -> str:
    """The identity of a run's setting: every field but ``seed``, ``device`` and ``threads``.

    The runs of one setting with different seeds share it: a search reruns a selected
    setting with new seeds and groups its trials by this key.
    """
    values = identity_values(config)
    for name in (*_EXECUTION, "seed"):
        values.pop(name)
    return config_hash(values)


def teacher_key(config: RunConfig) -> str:
    """The identity of ``config``'s teacher when ``config.teacher`` is one architecture
    (``ARCH``) trained with cross-entropy: data, split, label noise, architecture, seed, recipe.

    Two student configs with the same key distil from the very same teacher. The
    execution device and thread count are not part of it. Any other teacher spec is a small
    DAG of nodes (:mod:`kd_tune.plan.teacher_dag`) whose keys come from this function and the
    three below.
    """
    return _recipe_key(config.teacher_config())


def undertrained_key(full: str, stop_epoch: int) -> str:
    """The identity of ``ARCH@E``: the CE teacher of key ``full`` (its whole recipe, the
    learning-rate schedule of all its epochs included) stopped after epoch ``stop_epoch``."""
    return config_hash({"kind": "undertrained", "full": full, "stop_epoch": stop_epoch,
                        "store_format": TEACHER_KEY_FORMAT})


def sequential_key(run: RunConfig, source: str) -> str:
    """The identity of one step of a chain: ``run`` (the student's architecture, its
    loss, tau and alpha, data, seed and recipe) distilled from the teacher of key
    ``source``, which covers every step before it."""
    return _recipe_key(run, kind="sequential", source=source)


def ensemble_key(members: Sequence[str]) -> str:
    """The identity of an ensemble: its members' keys, in order (each covers its recipe)."""
    return config_hash({"kind": "ensemble", "members": list(members), "store_format": TEACHER_KEY_FORMAT})


def _recipe_key(run: RunConfig, **extra: Any) -> str:
    """The hash of the run that trains a teacher (``extra`` added): every field but those
    :meth:`RunConfig.teacher_config` has folded into it, and the device."""
    values = identity_values(run)
    for name in _NOT_TEACHER_IDENTITY:
        values.pop(name)
    if values["noise_type"] == "none" or values["noise_rate"] == 0.0:
        # A teacher on clean labels draws no noise: one teacher whatever the noise seed.
        values.update(noise_type="none", noise_rate=0.0, noise_seed=0)
    values["store_format"] = TEACHER_KEY_FORMAT
    return config_hash({**values, **extra})


def data_key(config: RunConfig) -> str:
    """The identity of the data a run sees: data set, files, validation split, label noise.

    ``download`` is left out: fetching the files does not change them.
    """
    return config_hash(data_identity(config))


def data_identity(config: RunConfig) -> dict[str, Any]:
    """:meth:`RunConfig.data_settings` as keys hash them: without ``download`` (fetching the files
    does not change them) and without an added field at the value that leaves it out."""
    values = config.data_settings()
    values.pop("download")
    return _without_added_defaults(values)


def cache_key(config: RunConfig, teacher: str, *, augment: bool, dtype: str = "float32") -> str:
    """The key of the teacher's logits on the views ``config`` trains on.

    ``teacher`` is the run's :func:`teacher_key`; ``augment`` is the data set's
    augmentation flag (from its registration); ``dtype`` is ``float32`` or ``float16``.
    Without augmentation the seed, epochs and batch size are left out: every run on
    that data then shares one single-view cache (its logits were computed in one batch
    order, so they match other orders to float rounding). The teacher's weights are not
    in the key (they do not exist when trials are planned); the cache records their
    :func:`weights_digest` and is used only with the teacher it was made from.
    """
    if dtype not in CACHE_DTYPES:
        raise ValueError(f"teacher cache dtype {dtype!r} is not one of {', '.join(CACHE_DTYPES)}")
    values: dict[str, Any] = {
        "format": CACHE_KEY_FORMAT, "teacher": teacher, "data": data_key(config), "augment": augment,
        "views": config.epochs if augment else 1, "amp": config.amp, "dtype": dtype,
    }
    if augment:
        values.update(seed=config.seed, batch_size=config.batch_size)
    return config_hash(values)


def weights_digest(weights: nn.Module | Mapping[str, torch.Tensor]) -> str:
    """sha256 (hex) of a network's state dict: names, dtypes, shapes and raw bytes, in name order."""
    # kd_tune.core imports no torch (2.2 CPU-s): keys and plans are computed without it.
    import torch

    state = weights.state_dict() if isinstance(weights, torch.nn.Module) else weights
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        # Viewing as bytes covers every dtype (bfloat16 included), which numpy cannot.
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
