"""The GPU path, checked and measured in one run of a few minutes.

    python benchmarks/gpu_check.py                          # on a machine with CUDA
    python benchmarks/gpu_check.py --steps 20 --skip-packing --no-compile   # shorter
    python benchmarks/gpu_check.py --device cpu --tiny      # every part on the CPU, tiny sizes

Without a CUDA device (and without ``--device cpu``) it prints one line saying so and
exits 0. Data are CIFAR-shaped random images held on the device (3x32x32 uint8, 100
classes, batch 128), teacher WRN-28-4, student WRN-16-2; the KD loss is KL with tau 4
and alpha 0.9 throughout.

1. Correctness (each row PASS or FAIL with the measured difference):
   (a) one KD step in reduced precision (the library's autocast: bf16 on GPUs that have
       it; on the CPU, CPU bf16 autocast) against float32 (TF32 off) on the same batch
       and weights: relative loss difference and relative L2 difference of the whole
       student gradient, against the tolerances in ``TOLERANCES``;
   (b) a 2-epoch :func:`kd_tune.train.trainer.train` run (lr drop after epoch 1) resumed from
       its epoch-1 checkpoint, written and read back with :mod:`kd_tune.train.checkpoint`,
       against the uninterrupted run: weights and per-epoch metrics bitwise equal;
   (c) the cached teacher logits (:func:`kd_tune.train.teacher_logits.compute_teacher_logits`)
       against the teacher run online on the trainer's views under the same autocast,
       and the student trained from the cache against the student trained with the
       teacher online: bitwise equal.
2. Speed, side by side in one run: the trainer's step (augmented views, autocast,
   float32 loss, SGD) reproduced in a loop so its layout can vary: CE only, KD with
   cached logits, KD with the teacher online; eager (the library today), channels_last,
   torch.compile, both, and deterministic kernels off (cudnn.benchmark). One warm-up
   epoch, then per variant and mode the fastest of ``--rounds`` epochs of ``--steps``
   steps, interleaved; ms per step and samples per second.
3. Packing: ``sweeps/tau_grid.py`` as a subprocess (embedded Ray) on a synthetic
   CIFAR-100 in torchvision's on-disk format, N = 1, 2 and 4 KL trials with
   ``--gpus-per-trial 0.25 --max-concurrent N``. Aggregate samples per second from
   the epochs table: the sum of the trials' training rates over the time all N trials
   were training at once (first epoch left out: start-up). GPU memory from polling
   ``nvidia-smi`` every 0.5 s while the trials train: the peak of each trial process
   (Ray's idle workers and teacher/cache tasks left out) and of the whole GPU. The
   packing data set has ``--pack-samples`` images, trials run ``--pack-epochs`` epochs
   (teacher: 1 epoch); on the CPU the trials share its cores instead of a GPU.
4. The teacher-cache build: :func:`compute_teacher_logits` on ``--build-samples``
   samples (one view), scaled to seconds per epoch of CIFAR-100 views (50,000 x 100).

Prints a table, then as its last line exactly ``gpu_kd_cached_vs_ce=A packing_4_vs_1=B``:
A = eager KD step with cached logits / eager CE step; B = aggregate samples/s of 4
packed trials / 1 trial (``nan`` when packing is skipped or failed). Exit code 0 when
every check passed and the eager steps and the packing sweeps ran, 1 otherwise (a
channels_last or compile variant that cannot run is reported, not fatal).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from analysis.results_io import load_epochs, load_trials
from kd_tune import models
from kd_tune.core.config import RunConfig, preset
from kd_tune.core.runtime import amp_dtype, autocast, resolve_device, seed_everything
from kd_tune.data import Dataset, Split, epoch_batches
from kd_tune.train.checkpoint import load_state, save_state
from kd_tune.train.losses import make_loss
from kd_tune.train.optim import build_optimizer
from kd_tune.train.teacher_logits import TeacherLogits, compute_teacher_logits, forward_count
from kd_tune.train.trainer import EpochEnd, TrainResult, train

REPO = Path(__file__).resolve().parent.parent
CLASSES = 100
CIFAR_TRAIN = 50_000  # CIFAR-100 training images: the unit of "one epoch of views"
TAU, ALPHA = 4.0, 0.9
IN_MEMORY = "(in memory)"
PACK_COUNTS = (1, 2, 4)
PACK_GPU_SHARE = 0.25
SWEEP_TIMEOUT_S = 900  # one packing sweep; a few minutes on a GPU, so this means it hangs
MODES = ("ce", "cached", "online")
# Reduced vs full precision for one KD step (relative differences). Measured here with
# CPU bf16 autocast on this check's batch, WRN-28-4 -> WRN-16-2: loss 1.5e-3, gradient
# 1.8e-2; bf16 keeps 8 bits of mantissa, so errors of a few 1e-3 per op add up over 16
# layers. The bounds leave about 3x room for other kernels (cuDNN's are not oneDNN's).
TOLERANCES = {"loss_rel": 1e-2, "grad_rel": 5e-2}
# The sweep's worker processes that are not trials (Ray's process titles).
NON_TRIAL_TITLES = ("IDLE", "train_teacher_task", "build_logits_task")
WHOLE_GPU = -1  # the pid of a MemorySample that is the whole GPU's memory in use


@dataclass(frozen=True)
class Sizes:
    """Model names and sample counts of one run of the check (counts in samples or steps)."""

    teacher: str
    student: str
    batch: int
    steps: int  # timed steps per round (one epoch of full batches)
    rounds: int  # timed rounds after the warm-up round
    check_batches: int  # steps per epoch in the correctness runs
    test_samples: int
    build_samples: int
    pack_samples: int  # training images of the packing sweeps' data set
    pack_test: int
    pack_epochs: int


FULL = Sizes("wrn-28-4", "wrn-16-2", batch=128, steps=50, rounds=3, check_batches=8, test_samples=256,
             build_samples=10_000, pack_samples=20_000, pack_test=1_000, pack_epochs=4)
TINY = Sizes("wrn-10-1", "cnn-4", batch=32, steps=2, rounds=1, check_batches=2, test_samples=32,
             build_samples=256, pack_samples=256, pack_test=32, pack_epochs=2)


@dataclass(frozen=True)
class Check:
    """One correctness row: what was compared, the measured difference, the bound, the verdict."""

    name: str
    measured: str
    bound: str
    passed: bool


# ---------------------------------------------------------------- data and models


def _random_split(n: int, generator: torch.Generator) -> Split:
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=generator, dtype=torch.uint8)
    return Split(images, torch.randint(0, CLASSES, (n,), generator=generator))


def synthetic_cifar(num_train: int, num_test: int) -> Dataset:
    """Random CIFAR-100-shaped images (uint8, augmented like CIFAR), no validation split.

    The check is about numerics and speed, not accuracy; the statistics are CIFAR-100's.
    """
    generator = torch.Generator().manual_seed(0)
    train_split, test_split = _random_split(num_train, generator), _random_split(num_test, generator)
    empty = Split(torch.empty((0, 3, 32, 32), dtype=torch.uint8), torch.empty(0, dtype=torch.int64))
    return Dataset(name="cifar100", train=train_split, val=empty, test=test_split,
                   clean_train_labels=train_split.labels, num_classes=CLASSES, in_channels=3, image_size=32,
                   max_value=255.0, mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762), augment=True,
                   class_names=tuple(f"c{i}" for i in range(CLASSES)), noise_hash=None)


def kd_config(sizes: Sizes, device: str, **overrides: Any) -> RunConfig:
    """The paper recipe (CIFAR-100, KL tau 4, alpha 0.9, SGD, step schedule) at these sizes on ``device``."""
    # The data are handed to the trainer in memory, so data_dir is never read.
    settings = dict(data_dir=IN_MEMORY, teacher=sizes.teacher, student=sizes.student, batch_size=sizes.batch,
                    loss="kl", tau=TAU, alpha=ALPHA, device=device)
    return preset("paper", **{**settings, **overrides}).validate()


def build_teacher(sizes: Sizes, device: torch.device) -> nn.Module:
    """The teacher network with fixed random weights (seed 0), in eval mode on ``device``."""
    torch.manual_seed(0)
    return models.build(sizes.teacher, CLASSES, 3).to(device).eval()


def max_weight_difference(a: nn.Module, b: nn.Module) -> float:
    """Largest absolute difference over every tensor of two state dicts (inf if they differ in layout)."""
    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys() or any(sa[k].shape != sb[k].shape for k in sa):
        return math.inf
    return max((sa[k].double() - sb[k].double()).abs().max().item() for k in sa)


def same_metrics(a: tuple[dict[str, float], ...], b: tuple[dict[str, float], ...]) -> bool:
    """Whether two runs' per-epoch metrics are equal, wall times and teacher work aside; NaN equals NaN.

    (A resumed run redoes its teacher's test pass; metrics without a split, e.g. val_acc, are NaN.)
    """
    skip = ("epoch_time_s", "teacher_forward_samples")
    if len(a) != len(b) or any(x.keys() != y.keys() for x, y in zip(a, b)):
        return False
    return all(x[k] == y[k] or (math.isnan(x[k]) and math.isnan(y[k]))
               for x, y in zip(a, b) for k in x if k not in skip)


# ---------------------------------------------------------------- 1. correctness


def reduced_precision(device: torch.device) -> AbstractContextManager:
    """The library's autocast on CUDA; on the CPU (where it is a no-op) CPU bf16 autocast, to exercise the check."""
    if device.type == "cuda":
        return autocast(device, True)
    return torch.autocast("cpu", dtype=torch.bfloat16)


def reduced_dtype(device: torch.device) -> torch.dtype:
    """The dtype :func:`reduced_precision` computes in."""
    return amp_dtype(device) if device.type == "cuda" else torch.bfloat16


@contextlib.contextmanager
def full_float32() -> Iterator[None]:
    """float32 without TF32, so the reference is the full-precision result (TF32 is on for cuDNN by default)."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def kd_step_gradients(student: nn.Module, teacher: nn.Module, x: torch.Tensor, y: torch.Tensor,
                      precision: AbstractContextManager) -> tuple[float, torch.Tensor]:
    """(loss, the student's whole gradient as one float64 vector) of one KD step, as the trainer computes it."""
    loss_fn = make_loss("kl", tau=TAU, alpha=ALPHA)
    student.zero_grad(set_to_none=True)
    with precision:
        student_logits = student(x)
        with torch.no_grad():
            teacher_logits = teacher(x)
    loss = loss_fn(student_logits.float(), teacher_logits.float(), y)
    loss.backward()
    grad = torch.cat([p.grad.detach().double().flatten() for p in student.parameters()])
    return loss.item(), grad


def check_reduced_precision(sizes: Sizes, device: torch.device, teacher: nn.Module,
                            tolerances: dict[str, float] = TOLERANCES) -> list[Check]:
    """1(a): one KD step in reduced precision against float32 on the same batch and weights."""
    data = synthetic_cifar(sizes.batch, sizes.test_samples)
    x = data.normalize(data.train.images.to(device))
    y = data.train.labels.to(device)
    torch.manual_seed(1)
    student = models.build(sizes.student, CLASSES, 3).to(device).train()
    with full_float32():
        loss32, grad32 = kd_step_gradients(student, teacher, x, y, contextlib.nullcontext())
    # The first step moved the BN running statistics; in train mode they do not enter the output.
    loss16, grad16 = kd_step_gradients(student, teacher, x, y, reduced_precision(device))
    loss_rel = abs(loss16 - loss32) / abs(loss32)
    grad_rel = ((grad16 - grad32).norm() / grad32.norm()).item()
    dtype = str(reduced_dtype(device)).removeprefix("torch.")
    return [
        Check(f"KD step {dtype} vs float32: loss ({loss32:.4f})", f"{loss_rel:.1e} relative",
              f"<= {tolerances['loss_rel']:.0e}", loss_rel <= tolerances["loss_rel"]),
        Check(f"KD step {dtype} vs float32: student gradient, L2", f"{grad_rel:.1e} relative",
              f"<= {tolerances['grad_rel']:.0e}", grad_rel <= tolerances["grad_rel"]),
    ]


def check_resume(data: Dataset, config: RunConfig, logits: TeacherLogits) -> tuple[Check, TrainResult]:
    """1(b): a run resumed from its epoch-1 checkpoint file against the uninterrupted run; also returns the latter."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.pt"

        def keep_first(end: EpochEnd) -> None:
            if end.metrics["epoch"] == 1:
                save_state(path, end.state())

        whole = train(config, data=data, teacher_logits=logits, on_epoch=keep_first)
        resumed = train(config, data=data, teacher_logits=logits, resume_state=load_state(path))
    weights = max_weight_difference(whole.model, resumed.model)
    same_history = same_metrics(whole.history, resumed.history)
    check = Check(f"run resumed after epoch 1 of {config.epochs} vs uninterrupted",
                  f"weights max |diff| {weights:.1e}, metrics {'equal' if same_history else 'DIFFER'}",
                  "bitwise", weights == 0.0 and same_history)
    return check, whole


def online_teacher_difference(teacher: nn.Module, data: Dataset, config: RunConfig, logits: TeacherLogits,
                              device: torch.device) -> float:
    """Largest |cached - online| teacher logit over every training view; the online pass is made as the trainer's."""
    amp = config.amp and device.type == "cuda"
    images = data.train.images.to(device)
    worst = 0.0
    seed_everything(config.seed, config.deterministic)  # the kernel choices of a training run
    with torch.no_grad():
        for epoch in range(config.epochs):
            cached = logits.epoch_view(epoch).to(device)
            for idx, views in epoch_batches(images, seed=config.seed, epoch=epoch, batch_size=config.batch_size,
                                            augment=data.augment):
                with autocast(device, amp):
                    online = teacher(data.normalize(views))
                worst = max(worst, (online.float() - cached[idx].float()).abs().max().item())
    return worst


def check_cache(teacher: nn.Module, data: Dataset, config: RunConfig, logits: TeacherLogits,
                from_cache: TrainResult, device: torch.device) -> list[Check]:
    """1(c): cached vs online teacher logits, and the student trained from each."""
    logit_diff = online_teacher_difference(teacher, data, config, logits, device)
    online = train(config, data=data, teacher=teacher)
    weights = max_weight_difference(from_cache.model, online.model)
    same_history = same_metrics(from_cache.history, online.history)
    return [
        Check("teacher logits: cache vs online, every view", f"max |diff| {logit_diff:.1e}", "bitwise",
              logit_diff == 0.0),
        Check(f"student after {config.epochs} epochs: from cache vs teacher online",
              f"weights max |diff| {weights:.1e}, metrics {'equal' if same_history else 'DIFFER'}", "bitwise",
              weights == 0.0 and same_history),
    ]


def correctness(sizes: Sizes, device: torch.device, teacher: nn.Module) -> list[Check]:
    """Every check of part 1, in order."""
    checks = check_reduced_precision(sizes, device, teacher)
    # Two epochs with the lr drop between them, so the resume has schedule state to restore.
    config = kd_config(sizes, str(device), epochs=2, milestones=(1,))
    data = synthetic_cifar(sizes.check_batches * sizes.batch, sizes.test_samples)
    logits = compute_teacher_logits(teacher, data, config, device=device)
    resume, whole = check_resume(data, config, logits)
    return checks + [resume] + check_cache(teacher, data, config, logits, whole, device)


# ---------------------------------------------------------------- 2. speed


@dataclass(frozen=True)
class Variant:
    """A way to run the same training step: memory layout, compilation, kernel determinism."""

    label: str
    channels_last: bool = False
    compiled: bool = False
    deterministic: bool = True  # the library default (RunConfig.deterministic)


EAGER = Variant("eager (library today)")
VARIANTS = (
    EAGER,
    Variant("channels_last", channels_last=True),
    Variant("torch.compile", compiled=True),
    Variant("channels_last + torch.compile", channels_last=True, compiled=True),
    Variant("deterministic off (cudnn.benchmark)", deterministic=False),
)


@contextlib.contextmanager
def determinism(on: bool) -> Iterator[None]:
    """Deterministic kernels on or off (as :func:`kd_tune.core.runtime.seed_everything` sets them), restored
    afterwards."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(on, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = on, not on
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]


@dataclass
class StepRig:
    """What one variant steps: its student (with optimizer and scaler) and its teacher, laid out as the variant says."""

    variant: Variant
    student: nn.Module
    teacher: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler


def build_rig(variant: Variant, teacher: nn.Module, config: RunConfig, device: torch.device) -> StepRig:
    """A fresh student (seed 0) and a copy of ``teacher``, in the variant's layout, compiled if it says so."""
    torch.manual_seed(0)
    student = models.build(config.student, CLASSES, 3).to(device).train()
    teacher = copy.deepcopy(teacher).eval().requires_grad_(False)
    if variant.channels_last:
        student = student.to(memory_format=torch.channels_last)
        teacher = teacher.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(student, config)
    if variant.compiled:
        student, teacher = torch.compile(student), torch.compile(teacher)
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp and amp_dtype(device) == torch.float16)
    return StepRig(variant, student, teacher, optimizer, scaler)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so host clocks measure it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_epoch(rig: StepRig, mode: str, data: Dataset, train_x: torch.Tensor, train_y: torch.Tensor,
               cached: torch.Tensor, config: RunConfig, device: torch.device, epoch: int) -> float:
    """Seconds per step over one epoch of the trainer's step (views, autocast, float32 loss, SGD) in ``mode``."""
    loss_fn = make_loss("ce") if mode == "ce" else make_loss("kl", tau=TAU, alpha=ALPHA)
    use_amp = config.amp and device.type == "cuda"
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    steps = 0
    synchronize(device)
    started = time.perf_counter()
    with determinism(rig.variant.deterministic):
        for idx, images in epoch_batches(train_x, seed=config.seed, epoch=epoch, batch_size=config.batch_size,
                                         augment=data.augment):
            x = data.normalize(images)
            if rig.variant.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = train_y[idx]
            target = cached[idx] if mode == "cached" else None
            with autocast(device, use_amp):
                student_logits = rig.student(x)
                if mode == "online":
                    with torch.no_grad():
                        target = rig.teacher(x)
            loss = loss_fn(student_logits.float(), None if target is None else target.float(), y)
            rig.optimizer.zero_grad(set_to_none=True)
            rig.scaler.scale(loss).backward()
            rig.scaler.step(rig.optimizer)
            rig.scaler.update()
            loss_sum += loss.detach() * len(idx)
            correct += (student_logits.argmax(1) == y).sum()
            steps += 1
        synchronize(device)
    return (time.perf_counter() - started) / steps


@dataclass
class SpeedResult:
    """Seconds per step per (variant label, mode); variants that could not run, with the reason."""

    seconds: dict[tuple[str, str], float] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    batch: int = 0

    def ratio(self, variant: str, mode: str, over: str) -> float:
        """Step time of ``mode`` over step time of ``over`` within one variant."""
        return self.seconds[(variant, mode)] / self.seconds[(variant, over)]

    def speedup(self, variant: str, mode: str) -> float:
        """Eager step time over this variant's step time in ``mode`` (> 1: the variant is faster)."""
        return self.seconds[(EAGER.label, mode)] / self.seconds[(variant, mode)]


def step_speed(sizes: Sizes, device: torch.device, teacher: nn.Module, variants: tuple[Variant, ...]) -> SpeedResult:
    """Part 2: every (variant, mode) step time, interleaved over rounds after a warm-up round; the fastest round."""
    config = kd_config(sizes, str(device), epochs=1)
    data = synthetic_cifar(sizes.steps * sizes.batch, sizes.test_samples)
    cached = compute_teacher_logits(teacher, data, config, device=device).epoch_view(0).to(device)
    train_x, train_y = data.train.images.to(device), data.train.labels.to(device)
    result = SpeedResult(batch=sizes.batch)
    rigs = {v.label: build_rig(v, teacher, config, device) for v in variants}
    times: dict[tuple[str, str], list[float]] = {}
    for round_ in range(sizes.rounds + 1):  # round 0 warms up kernels, allocator, autotuning and compilation
        for label, rig in list(rigs.items()):
            for mode in MODES:
                try:
                    seconds = time_epoch(rig, mode, data, train_x, train_y, cached, config, device, epoch=0)
                except Exception as err:  # noqa: BLE001 - a variant that cannot run is reported, not fatal
                    result.failed[label] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                    del rigs[label]
                    times = {key: v for key, v in times.items() if key[0] != label}
                    break
                if round_:
                    times.setdefault((label, mode), []).append(seconds)
        print(f"  speed: round {round_}/{sizes.rounds} done", file=sys.stderr)
    result.seconds = {key: min(values) for key, values in times.items()}
    return result


def verdict(speed: SpeedResult, label: str) -> str:
    """Whether a variant helps: its geometric-mean speedup over the three modes against eager."""
    gain = math.prod(speed.speedup(label, m) for m in MODES) ** (1 / len(MODES))
    word = "helps" if gain >= 1.05 else "hurts" if gain <= 0.95 else "no clear effect"
    return f"{word} (x{gain:.2f} mean speed)"


def recommendation(speed: SpeedResult) -> str:
    """The variant that should become the default, from what was measured (eager if nothing helps by 5%)."""
    gains = {label: math.prod(speed.speedup(label, m) for m in MODES) ** (1 / len(MODES))
             for label, _ in speed.seconds if label != EAGER.label}
    best = max(gains, key=gains.get, default=None)
    if best is None or gains[best] < 1.05:
        return "keep eager: no variant was 5% faster"
    note = " (gives up bitwise repeatability and the cache's bitwise exactness)" if "deterministic" in best else ""
    return f"{best}, x{gains[best]:.2f} mean speed{note}"


# ---------------------------------------------------------------- 4. cache build


def build_seconds_per_cifar_epoch(sizes: Sizes, device: torch.device, teacher: nn.Module) -> float:
    """Part 4: seconds :func:`compute_teacher_logits` takes per 50,000 views, measured on ``build_samples``, scaled."""
    config = kd_config(sizes, str(device), epochs=1)
    data = synthetic_cifar(sizes.build_samples, sizes.test_samples)
    compute_teacher_logits(teacher, data, config, device=device)  # warm-up: kernels, allocator
    synchronize(device)
    started = time.perf_counter()
    compute_teacher_logits(teacher, data, config, device=device)
    synchronize(device)
    per_sample = (time.perf_counter() - started) / forward_count(data, config.epochs)
    return per_sample * CIFAR_TRAIN


# ---------------------------------------------------------------- 3. packing


@dataclass(frozen=True)
class Throughput:
    """Aggregate training rate of the trials of one sweep while all of them ran at once.

    ``samples_per_s``: the trials' training rates summed over the common window (or,
    when the trials never all ran at once, every counted sample over the whole span);
    ``window_s``: length of that common window in seconds (0 when there was none);
    ``trials``: trials counted; ``step_ms``: mean epoch time per step of one trial.
    """

    samples_per_s: float
    window_s: float
    trials: int
    step_ms: float


class PackingError(RuntimeError):
    """A packing sweep did not give usable results."""


def epoch_intervals(epochs: pd.DataFrame, skip_epochs: int) -> pd.DataFrame:
    """Rows after the first ``skip_epochs`` epochs with ``start``/``end`` (seconds since 1970) of each epoch."""
    rows = epochs[epochs["epoch"] > skip_epochs].copy()
    # reported_at is stamped when the driver records the epoch, right after it ends.
    reported = pd.to_datetime(rows["reported_at"], utc=True)
    rows["end"] = (reported - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)
    rows["start"] = rows["end"] - rows["epoch_time_s"]
    return rows


def concurrent_throughput(epochs: pd.DataFrame, samples_per_epoch: int, batch: int, skip_epochs: int = 1) -> Throughput:
    """Aggregate samples/s of the trials in ``epochs`` (rows of the epochs table) while all trained at once."""
    rows = epoch_intervals(epochs, skip_epochs)
    if rows.empty:
        raise PackingError(f"no epochs after epoch {skip_epochs} were recorded")
    rows["rate"] = samples_per_epoch / rows["epoch_time_s"]
    per_trial = rows.groupby("trial_key")
    window_start, window_end = float(per_trial["start"].min().max()), float(per_trial["end"].max().min())
    step_ms = 1000 * float(rows["epoch_time_s"].mean()) / math.ceil(samples_per_epoch / batch)
    trials = per_trial.ngroups
    if window_end <= window_start:
        span = float(rows["end"].max() - rows["start"].min())
        return Throughput(samples_per_epoch * len(rows) / span, 0.0, trials, step_ms)
    overlap = (rows["end"].clip(upper=window_end) - rows["start"].clip(lower=window_start)).clip(lower=0)
    rate = float((rows["rate"] * overlap).sum()) / (window_end - window_start)
    return Throughput(rate, window_end - window_start, trials, step_ms)


def read_packing_results(sweep_dir: Path, samples_per_epoch: int, batch: int, expected_trials: int,
                         skip_epochs: int = 1) -> Throughput:
    """Throughput of a finished packing sweep from its trials and epochs tables."""
    trials = load_trials(sweep_dir)
    completed = trials[trials["status"] == "completed"]
    if len(completed) != expected_trials:
        raise PackingError(f"{len(completed)} of {expected_trials} trials completed "
                           f"(statuses: {', '.join(trials['status'])})")
    epochs = load_epochs(sweep_dir)
    epochs = epochs[epochs["trial_key"].isin(completed["trial_key"])]
    return concurrent_throughput(epochs, samples_per_epoch, batch, skip_epochs)


def trial_window(sweep_dir: Path) -> tuple[float, float]:
    """(start, end) in seconds since 1970 of the sweep's training: first epoch start to last epoch end."""
    rows = epoch_intervals(load_epochs(sweep_dir), skip_epochs=0)
    return float(rows["start"].min()), float(rows["end"].max())


@dataclass(frozen=True)
class MemorySample:
    """One ``nvidia-smi`` reading: wall time (s since 1970), process, GPU memory (MiB) and its process title."""

    time: float
    pid: int
    mib: float
    title: str


def trial_memory_peaks(samples: list[MemorySample], window: tuple[float, float]) -> dict[int, float]:
    """Peak MiB per trial process inside ``window``; idle workers and teacher/cache tasks left out."""
    peaks: dict[int, float] = {}
    for s in samples:
        if s.pid != WHOLE_GPU and window[0] <= s.time <= window[1] and not any(t in s.title for t in NON_TRIAL_TITLES):
            peaks[s.pid] = max(peaks.get(s.pid, 0.0), s.mib)
    return peaks


def _process_title(pid: int) -> str:
    # Ray names its workers through argv ("ray::IDLE", "ray::ImplicitFunc.train"); a pid
    # from another namespace reads as "" and counts as a trial.
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""


class GpuMemoryPoller:
    """Polls per-process GPU memory with ``nvidia-smi`` in a background thread; ``available`` False without it."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.available = shutil.which("nvidia-smi") is not None
        self.samples: list[MemorySample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> GpuMemoryPoller:
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            now = time.time()
            apps = _nvidia_smi("--query-compute-apps=pid,used_memory")
            self.samples += [MemorySample(now, pid, mib, _process_title(pid)) for pid, mib in apps]
            # The whole GPU too: in some containers nvidia-smi lists no processes.
            gpus = _nvidia_smi("--query-gpu=index,memory.used")
            self.samples += [MemorySample(now, WHOLE_GPU, mib, "") for _, mib in gpus]


def _nvidia_smi(query: str) -> list[tuple[int, float]]:
    """(integer key, MiB) per row of an ``nvidia-smi`` query of two columns; rows that do not parse are skipped."""
    try:
        out = subprocess.run(["nvidia-smi", query, "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []  # a missed reading, not a reason to stop polling
    rows = []
    for line in out.splitlines():
        key, _, mib = (part.strip() for part in line.partition(","))
        with contextlib.suppress(ValueError):
            rows.append((int(key), float(mib)))
    return rows


def whole_gpu_peak(samples: list[MemorySample], window: tuple[float, float]) -> float | None:
    """Peak MiB in use on the GPU(s) inside ``window`` (summed over GPUs per reading); None without readings."""
    totals: dict[float, float] = {}
    for s in samples:
        if s.pid == WHOLE_GPU and window[0] <= s.time <= window[1]:
            totals[s.time] = totals.get(s.time, 0.0) + s.mib
    return max(totals.values(), default=None)


@dataclass(frozen=True)
class PackingRun:
    """One packing sweep: throughput, peak GPU MiB per trial process and of the whole GPU, its wall seconds."""

    trials: int
    gpu_share: float
    throughput: Throughput
    memory_mib: dict[int, float]
    whole_gpu_mib: float | None
    wall_s: float


def sweep_command(sizes: Sizes, data_dir: Path, storage: Path, n: int, gpu_share: float) -> list[str]:
    """``sweeps/tau_grid.py`` running ``n`` KL trials (seeds 0..n-1) at once, ``gpu_share`` GPU each."""
    cpus = min(1.0, (os.cpu_count() or 1) / n)  # a 2-core CPU machine still runs all n at once
    return [sys.executable, str(REPO / "sweeps" / "tau_grid.py"), "--preset", "paper", "--data-dir", str(data_dir),
            "--teacher", sizes.teacher, "--student", sizes.student, "--batch-size", str(sizes.batch),
            "--epochs", str(sizes.pack_epochs), "--teacher-epochs", "1", "--seeds", str(n), "--taus", str(TAU),
            "--alphas", str(ALPHA), "--losses", "kl", "--storage", str(storage), "--name", f"pack{n}",
            "--gpus-per-trial", f"{gpu_share:g}", "--cpus-per-trial", f"{cpus:g}", "--max-concurrent", str(n),
            "--checkpoint-every", str(sizes.pack_epochs)]


def run_packing_sweep(sizes: Sizes, data_dir: Path, storage: Path, n: int, gpu_share: float) -> PackingRun:
    """Run one packing sweep as a subprocess while polling GPU memory; its log goes to ``storage/packN.log``."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # an embedded Ray on this machine
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    log = storage / f"pack{n}.log"
    storage.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        with GpuMemoryPoller() as poller, open(log, "w") as out:
            code = subprocess.run(sweep_command(sizes, data_dir, storage, n, gpu_share), cwd=REPO, env=env,
                                  stdout=out, stderr=subprocess.STDOUT, timeout=SWEEP_TIMEOUT_S).returncode
    except subprocess.TimeoutExpired:
        code = f"nothing: it was stopped after {SWEEP_TIMEOUT_S} s"
    wall = time.perf_counter() - started
    if code != 0:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        raise PackingError(f"the {n}-trial sweep exited {code}; last lines of {log}:\n{tail}")
    sweep_dir = storage / f"pack{n}"
    throughput = read_packing_results(sweep_dir, sizes.pack_samples, sizes.batch, n)
    window = trial_window(sweep_dir)
    return PackingRun(n, gpu_share, throughput, trial_memory_peaks(poller.samples, window),
                      whole_gpu_peak(poller.samples, window), wall)


def packing(sizes: Sizes, device: torch.device, root: Path) -> dict[int, PackingRun]:
    """Part 3: 1, 2 and 4 trials at once on one GPU (on the CPU: at once on its cores), one sweep each."""
    sys.path.insert(0, str(REPO / "tests"))
    from cifar_files import write_cifar100

    data_dir = root / "cifar"
    write_cifar100(data_dir, train_size=sizes.pack_samples, test_size=sizes.pack_test, seed=0)
    share = PACK_GPU_SHARE if device.type == "cuda" else 0.0
    runs = {}
    for n in PACK_COUNTS:
        runs[n] = run_packing_sweep(sizes, data_dir, root / "storage", n, share)
        print(f"  packing: {n} trial(s) done in {runs[n].wall_s:.0f}s", file=sys.stderr)
    return runs


# ---------------------------------------------------------------- report


def describe_device(device: torch.device) -> str:
    """One line: the device, torch and CUDA versions."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return (f"{props.name}, {props.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, "
                f"CUDA {torch.version.cuda}, autocast {str(amp_dtype(device)).removeprefix('torch.')}")
    return f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads), torch {torch.__version__}"


def print_checks(checks: list[Check]) -> None:
    for c in checks:
        print(f"| 1 | {c.name} | {c.measured} (bound: {c.bound}) | {'PASS' if c.passed else 'FAIL'} |")


def print_speed(speed: SpeedResult) -> None:
    labels = list(dict.fromkeys(label for label, _ in speed.seconds))
    compared = EAGER.label in labels
    for label in labels:
        times = {m: speed.seconds[(label, m)] for m in MODES}
        cells = ", ".join(f"{m} {1000 * t:.2f} ms ({speed.batch / t:,.0f}/s)" for m, t in times.items())
        ratios = (f"cached/ce {speed.ratio(label, 'cached', 'ce'):.3f}, "
                  f"online/cached {speed.ratio(label, 'online', 'cached'):.3f}")
        word = f"; {verdict(speed, label)}" if compared and label != EAGER.label else ""
        print(f"| 2 | step, {label} | {cells}; {ratios}{word} | |")
    for label, reason in speed.failed.items():
        print(f"| 2 | step, {label} | could not run: {reason} | {'FAIL' if label == EAGER.label else ''} |")
    if compared:
        print(f"| 2 | should become the default | {recommendation(speed)} | |")


def print_packing(runs: dict[int, PackingRun] | None, error: str | None) -> None:
    if error is not None:
        print(f"| 3 | packing sweeps | {error.splitlines()[0]} | FAIL |")
        return
    if runs is None:
        print("| 3 | packing sweeps | skipped | |")
        return
    for n, run in runs.items():
        t = run.throughput
        memory = (f"peak GPU memory per trial process {max(run.memory_mib.values()):,.0f} MiB "
                  f"({len(run.memory_mib)} processes)" if run.memory_mib else "GPU memory per process: not measured")
        if run.whole_gpu_mib is not None:
            memory += f", whole GPU {run.whole_gpu_mib:,.0f} MiB"
        together = f"all {t.trials} at once for {t.window_s:.1f} s" if t.window_s > 0 else "never all at once"
        where = f"per GPU, {run.gpu_share:g} GPU each" if run.gpu_share else "at once on the CPU"
        print(f"| 3 | {n} trial(s) {where} | {t.samples_per_s:,.0f} samples/s aggregate "
              f"({together}), {t.step_ms:.1f} ms/step per trial, {memory}; sweep {run.wall_s:.0f} s | |")


def packing_ratio(runs: dict[int, PackingRun] | None) -> float:
    """Aggregate throughput of 4 packed trials over 1 (nan without both)."""
    if not runs or 4 not in runs or 1 not in runs:
        return math.nan
    return runs[4].throughput.samples_per_s / runs[1].throughput.samples_per_s


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default: cuda)")
    parser.add_argument("--tiny", action="store_true",
                        help=f"tiny sizes ({TINY.teacher} -> {TINY.student}, batch {TINY.batch}, a few samples), "
                        "to exercise every part quickly")
    parser.add_argument("--steps", type=int, help=f"timed steps per round in part 2 (default: {FULL.steps})")
    parser.add_argument("--rounds", type=int, help=f"timed rounds in part 2 after a warm-up (default: {FULL.rounds})")
    parser.add_argument("--build-samples", type=int,
                        help=f"samples of the cache build in part 4 (default: {FULL.build_samples:,})")
    parser.add_argument("--pack-samples", type=int,
                        help=f"training images of the packing sweeps (default: {FULL.pack_samples:,})")
    parser.add_argument("--pack-epochs", type=int,
                        help=f"epochs of each packing trial, >= 2 (default: {FULL.pack_epochs})")
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile variants of part 2")
    parser.add_argument("--skip-packing", action="store_true", help="leave out part 3 (the sweeps)")
    args = parser.parse_args(argv)
    for name in ("steps", "rounds", "build_samples", "pack_samples"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.pack_epochs is not None and args.pack_epochs < 2:
        parser.error("--pack-epochs must be >= 2 (the first epoch is start-up and is left out)")
    return args


def sizes_from(args: argparse.Namespace) -> Sizes:
    """FULL or TINY with the command line's overrides."""
    base = TINY if args.tiny else FULL
    given = {k: getattr(args, k) for k in ("steps", "rounds", "build_samples", "pack_samples", "pack_epochs")
             if getattr(args, k) is not None}
    return replace(base, **given)


def cuda_missing(spec: str) -> bool:
    """True when ``spec`` names a CUDA device and none is usable (quietly: no driver warnings)."""
    if not spec.startswith("cuda"):
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return not torch.cuda.is_available()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if cuda_missing(args.device):
        print(f"gpu_check: no CUDA device found (torch {torch.__version__}); nothing to check here "
              "(--device cpu --tiny exercises the parts on the CPU)")
        return 0
    device = resolve_device(args.device)
    sizes = sizes_from(args)
    seed_everything(0, True)  # before any CUDA work: cuBLAS reads its workspace setting once
    teacher = build_teacher(sizes, device)
    started = time.perf_counter()
    print("part 1: correctness ...", file=sys.stderr)
    checks = correctness(sizes, device, teacher)
    print("part 2: step speed ...", file=sys.stderr)
    variants = tuple(v for v in VARIANTS if not (args.no_compile and v.compiled))
    speed = step_speed(sizes, device, teacher, variants)
    print("part 4: cache build ...", file=sys.stderr)
    build_s = build_seconds_per_cifar_epoch(sizes, device, teacher)
    runs, pack_error = None, None
    if not args.skip_packing:
        print("part 3: packing sweeps ...", file=sys.stderr)
        with tempfile.TemporaryDirectory() as tmp:
            try:
                runs = packing(sizes, device, Path(tmp))
            except PackingError as err:
                pack_error = str(err)
                print(pack_error, file=sys.stderr)

    print(f"\ngpu_check: {describe_device(device)}; {sizes.teacher} -> {sizes.student}, batch {sizes.batch}, "
          f"{CLASSES} classes, KL tau {TAU:g} alpha {ALPHA:g}; {time.perf_counter() - started:.0f} s")
    print("| part | measurement | value | verdict |\n|---|---|---|---|")
    print_checks(checks)
    print_speed(speed)
    print_packing(runs, pack_error)
    megabytes = CIFAR_TRAIN * CLASSES * 4 / 1e6
    print(f"| 4 | cache build, {sizes.teacher} | {build_s:.2f} s per epoch of views ({CIFAR_TRAIN:,} x {CLASSES}, "
          f"{megabytes:.1f} MB float32); measured on {sizes.build_samples:,} samples and scaled | |")
    cached_vs_ce = speed.ratio(EAGER.label, "cached", "ce") if (EAGER.label, "ce") in speed.seconds else math.nan
    print(f"gpu_kd_cached_vs_ce={cached_vs_ce:.3f} packing_4_vs_1={packing_ratio(runs):.3f}")
    # A variant the library does not use (compile, channels_last) may fail to run; the eager path may not.
    ok = all(c.passed for c in checks) and EAGER.label not in speed.failed and pack_error is None
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
