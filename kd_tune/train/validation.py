"""Whole-run validation: a config's own field checks plus the checks that need the registries.

:meth:`kd_tune.core.config.RunConfig.problems` checks each field on its own terms; here the
names are checked against what is registered (data sets, model architectures that
build, every architecture a teacher spec names, losses). Every command validates with :func:`validate_run` (or
:func:`validate_all` for a sweep) before anything runs, so a bad name fails with one
clear list of problems instead of deep inside a worker.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from kd_tune import models
from kd_tune.core import teacher_spec
from kd_tune.core.config import ConfigError, RunConfig
from kd_tune.data import dataset_generated, dataset_input_shape, dataset_names, dataset_needs_files
from kd_tune.train.losses import loss_name_problems


def run_problems(config: RunConfig) -> list[str]:
    """Every problem with ``config``: its field checks, then names the registries do not know."""
    p: list[str] = []
    if config.dataset not in dataset_names():
        p.append(f"dataset={config.dataset!r} is unknown; allowed: {', '.join(dataset_names())}")
    elif dataset_needs_files(config.dataset) and not config.data_dir:
        p.append(f"dataset={config.dataset!r} needs data_dir (a directory in torchvision's format)")
    elif config.data_samples is not None and not dataset_generated(config.dataset):
        p.append(f"data_samples={config.data_samples!r} applies to generated data sets only (mnist1d); "
                 f"dataset={config.dataset!r} is read as it is")
    shape = dataset_input_shape(config.dataset) if config.dataset in dataset_names() else None
    p += teacher_problems(config, shape)
    p += _model_problems("student", config.student, shape=shape, dataset=config.dataset)
    p += loss_name_problems(config.loss)
    return p + config.problems()


def teacher_problems(config: RunConfig, shape: tuple[int, ...] | None = None) -> list[str]:
    """Problems with ``config.teacher``, a teacher spec (:mod:`kd_tune.core.teacher_spec`): its
    grammar, every architecture it names (each taking inputs of ``shape``, one sample's, when
    given), each stop epoch within the teacher's epochs."""
    try:
        spec = teacher_spec.parse(config.teacher)
    except teacher_spec.SpecError as err:
        return [f"teacher={config.teacher!r}: {err}"]
    p = []
    for arch in dict.fromkeys(teacher_spec.architectures(spec)):
        p += _model_problems("teacher", arch, config.teacher, shape=shape, dataset=config.dataset)
    epochs = config.teacher_epochs or config.epochs
    for stop in teacher_spec.stop_epochs(spec):
        if stop > epochs:
            p.append(f"teacher={config.teacher!r}: stop epoch {stop} is beyond the teacher's {epochs} epochs "
                     "(teacher_epochs, or epochs when it is not set)")
    return p


def _model_problems(role: str, name: str, spec: str | None = None, *, shape: tuple[int, ...] | None = None,
                    dataset: str = "") -> list[str]:
    """Whether ``name`` builds and, given one sample's ``shape``, takes a batch of such inputs."""
    found = _model_problem(name, shape)
    if found is None:
        return []
    stage, problem = found
    where = f"{role}={name!r}" if spec is None or spec == name else f"{role}={spec!r}: {name!r}"
    if stage == "input":
        kind = f"{shape[1]}-step signals" if len(shape) == 2 else "x".join(map(str, shape[1:])) + " images"
        return [f"{where} does not take the inputs of dataset={dataset!r} ({shape[0]}-channel {kind}): {problem}"]
    return [f"{where}: {problem}"]


@functools.lru_cache(maxsize=256)
def _model_problem(name: str, shape: tuple[int, ...] | None) -> tuple[str, str] | None:
    """None, or where ``name`` failed (``build``, or ``input``: on a batch of ``shape``) and why."""
    # Cached: a sweep validates every trial's config, thousands of them, over a few models.
    # Built for real on the CPU and run on a batch of 2 zeros: 0.5 s for wrn-40-2 here. Not on
    # the meta device: its kernels for the initialisers' random fills import torch._dynamo, 3 s
    # of every sweep's start-up (measured). fork_rng: the caller's global RNG is left as it was.
    with torch.random.fork_rng(devices=[]):
        try:
            model = models.build(name, num_classes=10, in_channels=shape[0] if shape else 3)
        except ValueError as err:
            return "build", str(err)
        if shape is None:
            return None
        try:
            with torch.no_grad():
                model.eval()(torch.zeros((2, *shape)))
        except RuntimeError as err:
            return "input", str(err).splitlines()[0][:160]
    return None


def validate_run(config: RunConfig) -> RunConfig:
    """Raise :class:`ConfigError` listing every problem of ``config`` at once; return it if valid."""
    problems = run_problems(config)
    if problems:
        raise ConfigError(problems)
    return config


def validate_all(configs: Sequence[RunConfig]) -> None:
    """Raise one :class:`ConfigError` listing every distinct problem of every config."""
    problems: dict[str, None] = {}
    for config in configs:
        for problem in run_problems(config):
            problems.setdefault(problem, None)
    if problems:
        raise ConfigError(list(problems))
