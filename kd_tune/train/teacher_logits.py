"""A fixed teacher's raw logits on every view a student trains on, computed once.

A teacher forward pass costs about 2.4 student training steps on the paper's pair
(docs/architecture.md, "Where the cost is"), and a tau/alpha/loss sweep trains many students against one fixed teacher
on the same views. A view is a pure function of (augmentation seed, epoch, sample
index) (:mod:`kd_tune.data.order`), so the teacher's output on it can be computed once
and looked up by every student that trains on it.

What :class:`TeacherLogits` holds, all raw logits (full width: not softmaxed, not top-k;
the MSE loss needs the raw values), in sample-index order:

- ``train``: ``(V, N, K)``, the logits on the training views: with augmentation
  ``V = epochs`` and row ``v`` holds the views epoch ``v`` (0-based) trains on;
  without augmentation ``V = 1``, since every epoch sees the same images;
- ``val``: ``(N_val, K)`` and ``test``: ``(N_test, K)``, on the unaugmented images.

Exactness: :func:`compute_teacher_logits` makes its views with
:func:`~kd_tune.data.epoch_batches`, the function the training loop uses, with the
run's seed, epochs and batch size, and runs the teacher in those very batches under the
same autocast setting. On the same device and thread count a student trained from the
cached logits is therefore bitwise the student trained with the teacher online; on
other hardware the logits agree to float rounding.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from kd_tune.core.config import RunConfig
from kd_tune.core.runtime import autocast, resolve_device
from kd_tune.data import Dataset, epoch_batches
from kd_tune.train.evaluation import predict_logits


@dataclass(frozen=True, eq=False)
class TeacherLogits:
    """A teacher's logits on training views (``(V, N, K)``), validation and test (``(N, K)``).

    Tensors may be memory-mapped (read-only use) and float32 or float16; consumers cast
    gathered rows to float32 before any loss.
    """

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor

    @property
    def views(self) -> int:
        """V: how many distinct training views per sample are held."""
        return int(self.train.shape[0])

    def epoch_view(self, epoch: int) -> torch.Tensor:
        """``(N, K)`` logits on the views of 0-based ``epoch`` (the single view without augmentation)."""
        if self.views == 1:
            return self.train[0]
        if not 0 <= epoch < self.views:
            raise IndexError(f"epoch {epoch} is outside the {self.views} cached views")
        return self.train[epoch]

    def check(self, data: Dataset, epochs: int) -> None:
        """Raise ValueError unless these logits fit ``data`` trained for ``epochs`` epochs."""
        k = data.num_classes
        want = {"train": train_shape(data, epochs), "val": (len(data.val), k), "test": (len(data.test), k)}
        have = {"train": self.train.shape, "val": self.val.shape, "test": self.test.shape}
        problems = []
        for name, shape in want.items():
            got = tuple(have[name])
            # More views than epochs is fine (a longer run's cache); fewer is not.
            ok = got == shape or (name == "train" and data.augment and got[0] >= shape[0] and got[1:] == shape[1:])
            if not ok:
                problems.append(f"{name} is {got}, the run needs {shape}")
        if problems:
            raise ValueError("cached teacher logits do not fit this run: " + "; ".join(problems))


def view_count(augment: bool, epochs: int) -> int:
    """V, the training views per sample a run of ``epochs`` epochs sees."""
    return epochs if augment else 1


def train_shape(data: Dataset, epochs: int) -> tuple[int, int, int]:
    """``(V, N, K)``: the training-view logits a run of ``epochs`` epochs on ``data`` needs."""
    return view_count(data.augment, epochs), len(data.train), data.num_classes


def forward_count(data: Dataset, epochs: int) -> int:
    """Samples the teacher runs forward on to fill a cache: V * N_train + N_val + N_test."""
    views, samples, _ = train_shape(data, epochs)
    return views * samples + len(data.val) + len(data.test)


@torch.no_grad()
def compute_teacher_logits(
    teacher: nn.Module,
    data: Dataset,
    config: RunConfig,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    train_out: torch.Tensor | None = None,
) -> TeacherLogits:
    """Run ``teacher`` once over every view a run of ``config`` trains on, and over val/test.

    The views and batches are those of :func:`kd_tune.train.trainer.train` for ``config``
    (seed, epochs, batch size, AMP); ``device`` is ``auto``, ``cpu``, ``cuda[:N]`` or a
    torch device; results are stored as ``dtype`` on the CPU.
    ``train_out`` (``(V, N, K)``, CPU, e.g. a memory-mapped file) receives the training
    logits instead of a new tensor, so a large cache never has to fit in memory.
    """
    device = resolve_device(device) if isinstance(device, str) else device
    amp = config.amp and device.type == "cuda"
    teacher = teacher.to(device).eval()
    shape = train_shape(data, config.epochs)
    train = train_out if train_out is not None else torch.empty(shape, dtype=dtype)
    if tuple(train.shape) != shape:
        raise ValueError(f"train_out has shape {tuple(train.shape)}, need {shape}")
    images = data.train.images.to(device)
    for view in range(shape[0]):
        out = torch.empty(shape[1:], dtype=torch.float32, device=device)
        for idx, views in epoch_batches(images, seed=config.seed, epoch=view, batch_size=config.batch_size,
                                        augment=data.augment):
            with autocast(device, amp):
                out[idx] = teacher(data.normalize(views)).float()
        train[view] = out.to("cpu", train.dtype)
    val, test = (
        predict_logits(teacher, split.images, data.normalize, device=device, amp=amp).to("cpu", dtype)
        if len(split) else torch.empty(0, data.num_classes, dtype=dtype)
        for split in (data.val, data.test)
    )
    return TeacherLogits(train=train, val=val, test=test)
