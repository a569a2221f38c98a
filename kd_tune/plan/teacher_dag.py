"""A run's teacher as a small DAG of nodes, each trained once and stored under its key.

A teacher spec (:mod:`kd_tune.core.teacher_spec`) names a teacher made of other teachers;
:func:`teacher_dag` resolves it against the run that distils from it into
:class:`TeacherNode` records, sources before what is made from them, the run's teacher
last. Four kinds of node:

- ``ce``: ``ARCH`` (or an ensemble member), trained with cross-entropy by the run's
  teacher recipe (:meth:`RunConfig.teacher_config`: data, label noise unless
  ``clean_teacher``, ``teacher_seed``, ``teacher_epochs``, the optimiser and schedule);
  a member of ``NxA`` trains with ``teacher_seed + i``;
- ``undertrained``: ``ARCH@E``, that same CE run (its learning-rate schedule is the one
  of all its epochs) stopped after epoch ``E``;
- ``sequential``: one step ``A>B``: ``B`` distilled from the node ``A`` by the same
  recipe, with the step's loss, or by default the loss, tau, alpha and loss options of
  the run it serves (so a chain's default steps, and their keys, follow the run's loss);
- ``ensemble``: ``A+B`` or ``NxA``: nothing is trained; its logits are the mean of its
  members' logits.

Keys come from :mod:`kd_tune.core.identity`, each covering the whole recipe of what the node
is made from, so a plain ``ARCH`` keeps the key :func:`kd_tune.core.identity.teacher_key`
always gave it. The planner (:mod:`kd_tune.plan.planner`) calls :func:`teacher_dag` once per
trial; the teacher stage, the store and ``--dry-run`` read the nodes it made.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kd_tune.core import identity, teacher_spec
from kd_tune.core.config import RunConfig
from kd_tune.core.teacher_spec import Ensemble, Single, Spec, Step, StepLoss

KINDS = ("ce", "undertrained", "sequential", "ensemble")


@dataclass(frozen=True)
class TeacherNode:
    """One teacher of a DAG.

    ``key``: its key in the teacher store; ``kind``: one of :data:`KINDS`; ``spec``: the
    canonical spec of the subtree it stands for (e.g. ``cnn-32>cnn-8[kl:3]``); ``arch``:
    the architecture trained (for an ensemble its members' joined by ``+``); ``run``: the
    run that trains it (``student`` is ``arch``; for a step ``teacher`` is the source's
    spec and ``loss``, ``tau``, ``alpha`` the step's; for an ensemble, which trains
    nothing, the data and evaluation settings); ``sources``: the keys of the nodes it is
    made from (a step's source, an ensemble's members), all earlier in the DAG;
    ``stop_epoch``: the 1-based epoch after which an ``undertrained`` node stops.
    """

    key: str
    kind: str
    spec: str
    arch: str
    run: RunConfig
    sources: tuple[str, ...] = ()
    stop_epoch: int | None = None

    @property
    def trains(self) -> bool:
        """Whether making this node trains a network (every kind but ``ensemble``)."""
        return self.kind != "ensemble"

    def to_dict(self) -> dict[str, Any]:
        """Plain values (the run as :meth:`RunConfig.to_dict`)."""
        return {"key": self.key, "kind": self.kind, "spec": self.spec, "arch": self.arch,
                "run": self.run.to_dict(), "sources": list(self.sources), "stop_epoch": self.stop_epoch}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TeacherNode:
        """Inverse of :meth:`to_dict`."""
        fields = dict(values)
        return cls(run=RunConfig.from_dict(fields.pop("run")), sources=tuple(fields.pop("sources")), **fields)


def teacher_dag(config: RunConfig) -> tuple[TeacherNode, ...]:
    """The nodes of ``config``'s teacher, each once, sources first; the last is the teacher.

    ``config.teacher`` must be a valid spec (:func:`kd_tune.train.validation.validate_run`).
    """
    nodes: dict[str, TeacherNode] = {}
    _resolve(teacher_spec.parse(config.teacher), config, nodes)
    return tuple(nodes.values())


def _resolve(spec: Spec, config: RunConfig, nodes: dict[str, TeacherNode]) -> TeacherNode:
    """Add ``spec``'s node (after the nodes it is made from) to ``nodes``; return it."""
    if isinstance(spec, Single):
        node = _single(spec, config)
    elif isinstance(spec, Ensemble):
        members = [_resolve(m, config, nodes) for m in spec.members]
        arch = "+".join(m.arch for m in spec.members)
        node = TeacherNode(identity.ensemble_key([m.key for m in members]), "ensemble", str(spec), arch,
                           config.teacher_config().replace(student=arch), tuple(m.key for m in members))
    else:
        source = _resolve(spec.source, config, nodes)
        run = _step_run(spec, config)
        node = TeacherNode(identity.sequential_key(run, source.key), "sequential", str(spec), spec.arch, run,
                           (source.key,))
    nodes.setdefault(node.key, node)
    return node


def _single(spec: Single, config: RunConfig) -> TeacherNode:
    member = config.replace(teacher=spec.arch, teacher_seed=config.teacher_seed + spec.seed_offset)
    run = member.teacher_config()
    full = identity.teacher_key(member)
    if spec.stop_epoch is None:
        return TeacherNode(full, "ce", str(spec), spec.arch, run)
    return TeacherNode(identity.undertrained_key(full, spec.stop_epoch), "undertrained", str(spec), spec.arch, run,
                       stop_epoch=spec.stop_epoch)


def _step_run(step: Step, config: RunConfig) -> RunConfig:
    """The run that trains ``step.arch`` from its source: the teacher recipe with the step's loss."""
    loss = step.loss or StepLoss(config.loss, config.tau, config.alpha)
    tau = loss.tau if loss.tau is not None else config.tau
    alpha = loss.alpha if loss.alpha is not None else config.alpha
    if loss.loss == "mse":
        tau = 1.0  # MSE has no temperature (as kd_tune.plan.search_space.canonical stores it)
    # A default step distils as the run does, its loss options included (dkd's weights, the
    # standardize switch); a step that names its loss takes that loss's published options.
    options = config.loss_options() if step.loss is None else {}
    return config.teacher_config().replace(student=step.arch, teacher=str(step.source), loss=loss.loss, tau=tau,
                                           alpha=alpha, **options)
