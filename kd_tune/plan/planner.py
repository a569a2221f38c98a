"""The planner: run configs become :class:`Trial` records, once, before anything runs.

A planned trial carries everything later stages need to know about it: its config, its
trial key, its teacher (key, spec and the DAG of teacher nodes it is made from, see
:mod:`kd_tune.plan.teacher_dag`), the key of the teacher-logit cache it reads (if any), the
key of its data and a human label. The teacher stage, the cache stage, Tune's
``param_space``, the trainable, the result sinks and ``--dry-run`` all read these
fields; none of them computes a key again. A trial travels through Ray as the plain
dict of :meth:`Trial.to_dict`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from kd_tune.core import identity
from kd_tune.core.config import LOSS_OPTIONS, RunConfig
from kd_tune.data import dataset_augments
from kd_tune.plan.teacher_dag import TeacherNode, teacher_dag


@dataclass(frozen=True)
class Trial:
    """One planned run of a sweep.

    ``teacher`` is the teacher's canonical spec (e.g. ``cnn-32`` or ``cnn-32>cnn-8``);
    ``teachers`` its DAG (:func:`~kd_tune.plan.teacher_dag.teacher_dag`: the nodes it is made
    from, sources first, the teacher itself last, whose key is ``teacher_key``);
    ``distils`` says whether training needs the teacher's outputs (every loss but
    ``ce``; a CE trial still reports agreement with its teacher when one is stored);
    ``cache_key`` names the teacher-logit cache the trial reads and ``cache_dtype`` how
    its logits are stored (``float32`` or ``float16``); both None when the trial runs
    the teacher online or does not distil.
    """

    config: RunConfig
    key: str
    teacher_key: str
    teacher: str
    distils: bool
    cache_key: str | None
    cache_dtype: str | None
    data_key: str
    label: str
    teachers: tuple[TeacherNode, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (the config as :meth:`RunConfig.to_dict`): a Tune trial config."""
        return {"run": self.config.to_dict(), "key": self.key, "teacher_key": self.teacher_key,
                "teacher": self.teacher, "distils": self.distils, "cache_key": self.cache_key,
                "cache_dtype": self.cache_dtype, "data_key": self.data_key, "label": self.label,
                "teachers": [node.to_dict() for node in self.teachers]}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Trial:
        """Inverse of :meth:`to_dict`; reads the keys, computes nothing."""
        fields = dict(values)
        return cls(config=RunConfig.from_dict(fields.pop("run")),
                   teachers=tuple(TeacherNode.from_dict(n) for n in fields.pop("teachers")), **fields)


@dataclass(frozen=True)
class Plan:
    """A sweep's trials in order, and the teachers, caches and data sets they share."""

    trials: tuple[Trial, ...]

    @property
    def keys(self) -> list[str]:
        return [t.key for t in self.trials]

    @cached_property
    def teacher_nodes(self) -> dict[str, TeacherNode]:
        """Every distinct teacher node distilling trials need (each trial's teacher and every
        node it is made from): key -> node, in dependency order (a node after its sources)."""
        out: dict[str, TeacherNode] = {}
        for trial in self.trials:
            if trial.distils:
                for node in trial.teachers:
                    out.setdefault(node.key, node)
        return out

    def caches(self) -> dict[str, Trial]:
        """The distinct teacher-logit caches: cache key -> the trial whose batches build it.

        The lowest seed wins, so a single-view cache (no augmentation, shared by every
        seed) is computed in the same batches whatever the order of the trials.
        """
        out: dict[str, Trial] = {}
        for trial in sorted(self.trials, key=lambda t: t.config.seed):
            if trial.cache_key is not None:
                out.setdefault(trial.cache_key, trial)
        return out

    def data(self) -> dict[str, RunConfig]:
        """The distinct data settings: data key -> the config of its first trial."""
        out: dict[str, RunConfig] = {}
        for trial in self.trials:
            out.setdefault(trial.data_key, trial.config)
        return out


def plan_trials(configs: Sequence[RunConfig], *, cache_dtype: str | None = "float32") -> Plan:
    """Plan ``configs`` (canonical and unique, see :func:`kd_tune.plan.search_space.expand`).

    ``cache_dtype`` is how distilling trials read the teacher's logits from the cache
    (``float32`` or ``float16``), or None when they run the teacher online.
    """
    return Plan(tuple(plan_trial(c, cache_dtype=cache_dtype) for c in configs))


def plan_trial(config: RunConfig, *, cache_dtype: str | None = "float32") -> Trial:
    """The planned trial of one config (see :func:`plan_trials`)."""
    teachers = teacher_dag(config)
    teacher = teachers[-1].key
    distils = config.loss != "ce"
    cached = distils and cache_dtype is not None
    cache = identity.cache_key(config, teacher, augment=dataset_augments(config.dataset), dtype=cache_dtype) \
        if cached else None
    return Trial(config=config, key=identity.trial_key(config), teacher_key=teacher, teacher=config.teacher,
                 distils=distils, cache_key=cache, cache_dtype=cache_dtype if cached else None,
                 data_key=identity.data_key(config), label=label(config), teachers=teachers)


def label(config: RunConfig) -> str:
    """A short human label of the axes that usually vary, e.g. ``kl tau=3 alpha=0.5 seed=1``;
    ``kl std tau=2 ...`` with ``standardize``, a loss option away from its published value
    by its name (``dkd tau=4 alpha=0.5 dkd_beta=6 seed=0``)."""
    parts = [config.loss]
    if config.standardize:
        parts.append("std")
    if config.loss not in ("ce", "mse"):
        parts.append(f"tau={config.tau:g}")
    if config.loss != "ce":
        parts.append(f"alpha={config.alpha:g}")
    for name, option in LOSS_OPTIONS.items():
        value = getattr(config, name)
        if config.loss in option.losses and option.kind is not bool and value != option.default:
            parts.append(f"{name}={value:g}")
    if config.noise_type != "none":
        parts.append(f"{config.noise_type}={config.noise_rate:g}")
    if config.data_fraction != 1.0:  # the data-size study's axis
        parts.append(f"fraction={config.data_fraction:g}")
    parts.append(f"seed={config.seed}")
    return " ".join(parts)
