"""Teacher specs: the text that names a teacher, parsed into a small tree.

A teacher is named wherever ``--teacher`` is (sweeps, ``python -m kd_tune.run``, search
spaces) by one of:

- ``ARCH``: trained with cross-entropy, e.g. ``wrn-28-4``;
- ``ARCH@E``: under-trained: the teacher's full recipe (its learning-rate schedule is
  that of the full run) stopped after epoch ``E``, e.g. ``wrn-28-4@20``;
- ``A>B``: sequential distillation: ``B`` distilled from ``A``, then ``B`` teaches.
  Chains of any length (``A>B>C``). A step may name its loss: ``A>B[kl:3]`` (KL at
  tau 3), ``A>B[kl:3:0.9]`` (and alpha 0.9), ``A>B[mse]``, ``A>B[mse:0.5]``; without
  one, the step uses the loss, tau and alpha of the trial the teacher serves;
- ``A+B+C`` or ``3xA``: an ensemble whose logits are the *mean* of its members' logits
  (``3xA``: three seeds of ``A``: the teacher seed, seed + 1, seed + 2). Members are
  ``ARCH`` or ``ARCH@E``. An ensemble may start a chain (``3xA>B``).

:func:`parse` returns a :class:`Single`, :class:`Ensemble` or :class:`Step`;
``str()`` of any of them is the canonical spelling, so equal teachers print equally.
Architecture names are checked by the model registry elsewhere
(:mod:`kd_tune.train.validation`); this module checks only the grammar.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

# An architecture name as the model registry spells them: a letter, then letters, digits, "_", "." or "-".
_ARCH = r"[A-Za-z][A-Za-z0-9_.-]*?"
_SINGLE = re.compile(rf"(?P<arch>{_ARCH})(?:@(?P<stop>\d+))?")
_REPEAT = re.compile(rf"(?P<count>\d+)x(?P<member>{_ARCH}(?:@\d+)?)")
_STEP = re.compile(rf"(?P<arch>{_ARCH})(?:\[(?P<loss>[^\]]*)\])?")
STEP_LOSSES = ("kl", "mse")


class SpecError(ValueError):
    """A teacher spec that does not follow the grammar; the message says what is allowed."""


@dataclass(frozen=True)
class StepLoss:
    """The loss of one distillation step: ``kl`` with ``tau``, or ``mse``; ``alpha`` None
    means the alpha of the trial the teacher serves."""

    loss: str
    tau: float | None = None
    alpha: float | None = None

    def __str__(self) -> str:
        parts = [self.loss] + ([_number(self.tau)] if self.tau is not None else [])
        return ":".join(parts + ([_number(self.alpha)] if self.alpha is not None else []))


@dataclass(frozen=True)
class Single:
    """One network trained with cross-entropy; ``stop_epoch`` stops its full recipe early;
    ``seed_offset`` is added to the teacher seed (members of ``NxA``)."""

    arch: str
    stop_epoch: int | None = None
    seed_offset: int = 0

    def __str__(self) -> str:
        return self.arch + (f"@{self.stop_epoch}" if self.stop_epoch is not None else "")


@dataclass(frozen=True)
class Ensemble:
    """Members whose logits are averaged."""

    members: tuple[Single, ...]

    def __str__(self) -> str:
        arches = {(m.arch, m.stop_epoch) for m in self.members}
        offsets = [m.seed_offset for m in self.members]
        if len(arches) == 1 and offsets == list(range(len(self.members))):
            return f"{len(self.members)}x{self.members[0]}"
        return "+".join(str(m) for m in self.members)


@dataclass(frozen=True)
class Step:
    """``arch`` distilled from ``source`` with ``loss`` (None: the serving trial's loss)."""

    source: Single | Ensemble | Step
    arch: str
    loss: StepLoss | None = None

    def __str__(self) -> str:
        return f"{self.source}>{self.arch}" + (f"[{self.loss}]" if self.loss is not None else "")


Spec = Single | Ensemble | Step


def parse(text: str) -> Spec:
    """The tree of teacher spec ``text`` (see the module docstring); raises :class:`SpecError`."""
    if not isinstance(text, str) or not text.strip():
        raise SpecError(f"teacher spec {text!r} is empty; give an architecture, e.g. wrn-28-4")
    # Spaces carry no meaning ("a > b [kl:3]" is "a>b[kl:3]").
    parts = "".join(text.split()).split(">")
    if any(not p for p in parts):
        raise SpecError(f"teacher spec {text!r} has an empty step; write chains as A>B>C")
    node: Spec = _parse_start(parts[0], text)
    for part in parts[1:]:
        match = _STEP.fullmatch(part)
        if match is None:
            raise SpecError(f"teacher spec {text!r}: step {part!r} is not ARCH or ARCH[LOSS] "
                            "(e.g. wrn-16-4, wrn-16-4[kl:3], wrn-16-4[mse])")
        loss = None if match["loss"] is None else _parse_step_loss(match["loss"], text)
        node = Step(node, match["arch"], loss)
    return node


def architectures(spec: Spec) -> list[str]:
    """Every architecture a spec trains, in training order (members, then each step)."""
    if isinstance(spec, Single):
        return [spec.arch]
    if isinstance(spec, Ensemble):
        return [m.arch for m in spec.members]
    return architectures(spec.source) + [spec.arch]


def stop_epochs(spec: Spec) -> list[int]:
    """The stop epoch of every under-trained ``ARCH@E`` a spec names."""
    if isinstance(spec, Single):
        return [spec.stop_epoch] if spec.stop_epoch is not None else []
    if isinstance(spec, Ensemble):
        return [e for m in spec.members for e in stop_epochs(m)]
    return stop_epochs(spec.source)


def _parse_start(text: str, whole: str) -> Single | Ensemble:
    repeat = _REPEAT.fullmatch(text)
    if repeat is not None:
        count = int(repeat["count"])
        if count < 2:
            raise SpecError(f"teacher spec {whole!r}: an ensemble {text!r} needs at least 2 members")
        member = _parse_single(repeat["member"], whole)
        return Ensemble(tuple(Single(member.arch, member.stop_epoch, offset) for offset in range(count)))
    members = [_parse_single(m, whole) for m in text.split("+")]
    if len(members) == 1:
        return members[0]
    # Members of one architecture and stop epoch are different seeds, in order of appearance.
    seen: dict[tuple[str, int | None], int] = {}
    numbered = []
    for m in members:
        offset = seen.get((m.arch, m.stop_epoch), 0)
        seen[(m.arch, m.stop_epoch)] = offset + 1
        numbered.append(Single(m.arch, m.stop_epoch, offset))
    return Ensemble(tuple(numbered))


def _parse_single(text: str, whole: str) -> Single:
    match = _SINGLE.fullmatch(text)
    if match is None:
        raise SpecError(f"teacher spec {whole!r}: {text!r} is not ARCH or ARCH@EPOCH (e.g. wrn-28-4, wrn-28-4@20)")
    stop = None if match["stop"] is None else int(match["stop"])
    if stop is not None and stop < 1:
        raise SpecError(f"teacher spec {whole!r}: stop epoch {stop} must be >= 1")
    return Single(match["arch"], stop)


def _parse_step_loss(text: str, whole: str) -> StepLoss:
    fields = text.split(":")
    name, numbers = fields[0], fields[1:]
    allowed = "kl:TAU, kl:TAU:ALPHA, mse or mse:ALPHA"
    try:
        values = [float(n) for n in numbers]
    except ValueError:
        raise SpecError(f"teacher spec {whole!r}: step loss [{text}] is not one of {allowed}") from None
    if name == "kl" and len(values) in (1, 2):
        loss = StepLoss("kl", values[0], values[1] if len(values) == 2 else None)
    elif name == "mse" and len(values) in (0, 1):
        loss = StepLoss("mse", None, values[0] if values else None)
    else:
        raise SpecError(f"teacher spec {whole!r}: step loss [{text}] is not one of {allowed}")
    if loss.tau is not None and not (loss.tau > 0):
        raise SpecError(f"teacher spec {whole!r}: tau {loss.tau:g} must be > 0 (finite or inf)")
    if loss.alpha is not None and not 0.0 <= loss.alpha <= 1.0:
        raise SpecError(f"teacher spec {whole!r}: alpha {loss.alpha:g} must be in [0, 1]")
    return loss


def _number(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:g}"
