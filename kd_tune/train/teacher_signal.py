"""The teacher's side of a training run: its logits on each batch and on the test set.

The training loop asks one :class:`TeacherSignal` for "the teacher's logits on this
batch" and never asks where they come from. Three sources answer:

- :class:`OnlineTeacher`: a fixed network run forward on every batch;
- :class:`CachedTeacher`: logits computed ahead (:class:`~kd_tune.train.teacher_logits.TeacherLogits`),
  gathered by sample index;
- :class:`NoTeacher`: nothing per batch (cross-entropy runs), optionally with the test
  logits of a teacher for the agreement metrics.

:func:`teacher_signal` picks the source for a run. Conventions shared by all three:
logits are raw (not softmaxed), returned as float32 on the run's device, one row per
sample; ``idx`` are dataset indices of the batch (on the device, as
:func:`~kd_tune.data.epoch_batches` yields them) and ``x`` the normalized views the
student trains on. A cached and an online signal answer the same rows for the same
views (bitwise on the same device, see :mod:`kd_tune.train.teacher_logits`).
"""
from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from kd_tune.core.config import RunConfig
from kd_tune.core.runtime import autocast
from kd_tune.data import Dataset
from kd_tune.train.evaluation import predict_logits
from kd_tune.train.teacher_logits import TeacherLogits


class TeacherSignal(Protocol):
    """What the training loop needs of a teacher; see the module docstring for conventions."""

    def start_epoch(self, epoch: int) -> None:
        """Prepare the batches of 0-based ``epoch``; called once before its first batch."""

    def batch(self, idx: torch.Tensor, x: torch.Tensor) -> torch.Tensor | None:
        """Float32 ``(B, K)`` teacher logits on the views ``x`` of samples ``idx``; None without a teacher."""

    def test_logits(self) -> torch.Tensor | None:
        """Float32 ``(N_test, K)`` teacher logits on the unaugmented test set; None without a teacher."""

    def take_forward_samples(self) -> int:
        """Samples the teacher network ran forward on since the last call; resets the count."""


class OnlineTeacher:
    """A fixed teacher network run on every batch, in eval mode, without gradients.

    The network is moved to ``device`` and frozen in place. Its test-set logits are
    computed once, here, and counted in the first :meth:`take_forward_samples`. With
    ``amp`` the teacher runs under the autocast the student uses (:func:`~kd_tune.core.runtime.autocast`).
    """

    def __init__(self, teacher: nn.Module, data: Dataset, *, device: torch.device, amp: bool = False) -> None:
        self._teacher = teacher.to(device).eval().requires_grad_(False)
        self._device = device
        self._amp = amp
        self._test = predict_logits(self._teacher, data.test.images, data.normalize, device=device, amp=amp)
        self._samples = len(data.test)

    def start_epoch(self, epoch: int) -> None:
        """Nothing to prepare: the teacher sees each batch as it comes."""

    @torch.no_grad()
    def batch(self, idx: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The teacher's float32 logits on ``x``."""
        with autocast(self._device, self._amp):
            logits = self._teacher(x)
        # A shape, not a value: counting costs no device sync.
        self._samples += len(idx)
        return logits.float()

    def test_logits(self) -> torch.Tensor:
        """The teacher's test-set logits (computed once, on the device)."""
        return self._test

    def take_forward_samples(self) -> int:
        """Batch samples since the last call, plus the test set on the first call."""
        samples, self._samples = self._samples, 0
        return samples


class CachedTeacher:
    """Teacher logits computed ahead, looked up by sample index; the teacher never runs.

    Each epoch's ``(N, K)`` view moves to ``device`` once in :meth:`start_epoch` (a
    no-op for CPU logits on the CPU), so a batch is a gather on the device with no
    host round trip. ``logits`` must fit the run (:meth:`TeacherLogits.check`).
    """

    def __init__(self, logits: TeacherLogits, *, device: torch.device) -> None:
        self._logits = logits
        self._device = device
        self._test = logits.test.to(device).float()
        self._view: torch.Tensor | None = None

    def start_epoch(self, epoch: int) -> None:
        """Move the views of ``epoch`` to the device."""
        self._view = self._logits.epoch_view(epoch).to(self._device)

    def batch(self, idx: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Rows ``idx`` of this epoch's view, as float32 (``x`` is not needed)."""
        if self._view is None:
            raise RuntimeError("CachedTeacher.batch before start_epoch")
        return self._view[idx].float()

    def test_logits(self) -> torch.Tensor:
        """The cached test-set logits (on the device, float32)."""
        return self._test

    def take_forward_samples(self) -> int:
        """Always 0: cached logits need no teacher forward pass."""
        return 0


class NoTeacher:
    """No per-batch teacher, as in a cross-entropy run.

    ``test`` (float32, on the device) still feeds the agreement metrics when a CE run
    has a teacher; ``forward_samples`` is the teacher work spent on it, reported once.
    """

    def __init__(self, test: torch.Tensor | None = None, forward_samples: int = 0) -> None:
        self._test = test
        self._samples = forward_samples

    def start_epoch(self, epoch: int) -> None:
        """Nothing to prepare."""

    def batch(self, idx: torch.Tensor, x: torch.Tensor) -> None:
        """Always None: there is no teacher target."""
        return None

    def test_logits(self) -> torch.Tensor | None:
        """The test logits given at construction, if any."""
        return self._test

    def take_forward_samples(self) -> int:
        """``forward_samples`` on the first call, 0 afterwards."""
        samples, self._samples = self._samples, 0
        return samples


def teacher_signal(
    config: RunConfig,
    data: Dataset,
    *,
    teacher: nn.Module | None = None,
    teacher_logits: TeacherLogits | None = None,
    device: torch.device,
    amp: bool = False,
) -> TeacherSignal:
    """The teacher signal of a run of ``config`` on ``data``.

    Distilling (``config.loss`` other than ``ce``) uses ``teacher`` online or
    ``teacher_logits`` cached, whichever is given. A CE run trains on no teacher
    target; given a teacher (or its logits) it still gets the test logits for the
    agreement metrics. ``amp`` is whether the student trains under autocast.

    Raises ValueError when both sources are given, when a distilling run has neither,
    or when ``teacher_logits`` do not fit ``data`` trained for ``config.epochs`` epochs.
    """
    if teacher is not None and teacher_logits is not None:
        raise ValueError("give teacher or teacher_logits, not both")
    distil = config.loss != "ce"
    if teacher is not None:
        online = OnlineTeacher(teacher, data, device=device, amp=amp)
        return online if distil else NoTeacher(online.test_logits(), online.take_forward_samples())
    if teacher_logits is not None:
        teacher_logits.check(data, config.epochs)
        cached = CachedTeacher(teacher_logits, device=device)
        return cached if distil else NoTeacher(cached.test_logits())
    if distil:
        raise ValueError(f"loss={config.loss!r} needs a teacher; only loss='ce' trains without one")
    return NoTeacher()
