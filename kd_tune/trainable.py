"""Worker-side entry points: the Ray Tune trainable and the teacher-stage task.

The trainable is a thin adapter from one trial's config to :func:`kd_tune.trainer.train`.

A trial's config is ``{"run": RunConfig.to_dict()}``. The trainable reports every
epoch's metrics through ``ray.tune.report`` (plus ``kd_status``: ``running``,
``completed`` or ``diverged``), saves a checkpoint every ``checkpoint_every`` epochs and
at the end, and resumes from ``ray.tune.get_checkpoint()`` after a failure or a
restored sweep. A checkpoint of the last epoch makes a restarted trial report its
final metrics again without training.

A distilling trial takes the teacher's outputs from the sweep's teacher-logit cache
(:mod:`kd_tune.logit_cache`, memory-mapped, built by the driver's cache stage and, if
it is missing, by the trial) unless the sweep runs with the cache off; then it runs the
teacher online.

Fixed cost per trial is kept low for actor reuse: the data set, the teacher and the
cached logits are held in the worker process (a few entries, keyed by what identifies
them), so a reused actor loads them once, not once per trial.
"""
from __future__ import annotations

import math
import os
import tempfile
from collections import OrderedDict
from typing import Any, Callable, Hashable, TypeVar

import torch
from torch import nn

from kd_tune.checkpoint import load_state, save_state
from kd_tune.config import RunConfig
from kd_tune.data import Dataset
from kd_tune.logit_cache import LogitCache, ensure_cached
from kd_tune.teacher_logits import TeacherLogits
from kd_tune.teacher_store import TeacherStore, teacher_key
from kd_tune.trainer import COMPLETED, DIVERGED, load_data, train

STATE_FILE = "state.pt"
RUNNING = "running"
_CACHE_ENTRIES = 3

T = TypeVar("T")
_data_cache: OrderedDict[Hashable, Dataset] = OrderedDict()
_teacher_cache: OrderedDict[Hashable, tuple[nn.Module, dict[str, Any]]] = OrderedDict()
_logits_cache: OrderedDict[Hashable, TeacherLogits] = OrderedDict()


def distill_trial(
    config: dict[str, Any],
    *,
    teachers_dir: str,
    noise_dir: str,
    checkpoint_every: int,
    logits_dir: str | None = None,
    cache_dtype: str = "float32",
) -> None:
    """Run one sweep trial (called by Ray Tune in a worker).

    With ``logits_dir`` a distilling trial reads the teacher's logits from the cache
    there (stored as ``cache_dtype``); without it, it runs the teacher online.
    """
    from ray import tune

    run = RunConfig.from_dict(config["run"])
    device = assigned_device(run)
    run = run.replace(device=device)
    torch.set_num_threads(cpu_share())
    data = _cached(_data_cache, _data_key(run), lambda: load_data(run, noise_dir=noise_dir))
    teacher = None
    logits = None
    store = TeacherStore(teachers_dir)
    key = teacher_key(run)
    if run.loss != "ce" and logits_dir is not None:
        cache = LogitCache(logits_dir)
        cache_key, _ = ensure_cached(run, data, store, cache, dtype=cache_dtype, device=device)
        logits = _cached(_logits_cache, (logits_dir, cache_key), lambda: cache.load(cache_key))
    elif run.loss != "ce" or store.has(key):
        teacher, _ = _cached(_teacher_cache, (key, device), lambda: store.load(run, data))

    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume = load_state(os.path.join(folder, STATE_FILE))
        if resume["epoch"] >= run.epochs:
            # The trial had finished; the driver may not have recorded it before it stopped.
            tune.report(dict(resume["history"][-1], kd_status=COMPLETED))
            return

    def on_epoch(metrics: dict[str, float], state: Callable[[], dict[str, Any]]) -> None:
        epoch = int(metrics["epoch"])
        diverged = not math.isfinite(metrics["train_loss"])
        status = DIVERGED if diverged else (COMPLETED if epoch == run.epochs else RUNNING)
        report = dict(metrics, kd_status=status)
        if diverged or not (epoch % checkpoint_every == 0 or epoch == run.epochs):
            tune.report(report)
            return
        with tempfile.TemporaryDirectory() as folder:
            save_state(os.path.join(folder, STATE_FILE), state())
            tune.report(report, checkpoint=tune.Checkpoint.from_directory(folder))

    train(run, data=data, teacher=teacher, teacher_logits=logits, on_epoch=on_epoch, resume_state=resume)


def train_teacher_task(teachers_dir: str, config: dict[str, Any], noise_dir: str) -> dict[str, Any]:
    """Train one teacher into the store (a Ray task of the sweep's teacher stage); return its record."""
    run = RunConfig.from_dict(config)
    run = run.replace(device=assigned_device(run))
    torch.set_num_threads(cpu_share())
    return TeacherStore(teachers_dir).train(run, noise_dir=noise_dir)


def build_logits_task(teachers_dir: str, logits_dir: str, config: dict[str, Any], noise_dir: str,
                      dtype: str) -> dict[str, Any]:
    """Fill the teacher-logit cache for one run config (a Ray task of the sweep's cache stage); return its meta."""
    run = RunConfig.from_dict(config)
    device = assigned_device(run)
    torch.set_num_threads(cpu_share())
    data = load_data(run, noise_dir=noise_dir)
    _, meta = ensure_cached(run, data, TeacherStore(teachers_dir), LogitCache(logits_dir), dtype=dtype, device=device)
    return meta


def assigned_device(run: RunConfig) -> str:
    """A worker's device for ``run``: its assigned GPU when Ray gave it one, else the CPU."""
    if run.device != "auto":
        return run.device
    import ray

    return "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"


def cpu_share() -> int:
    """Torch threads = the trial's CPU share (at least 1), not every core of the node."""
    import ray

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    return max(1, int(cpus))


def _data_key(run: RunConfig) -> Hashable:
    return tuple(sorted(run.data_settings().items()))


def _cached(cache: OrderedDict[Hashable, T], key: Hashable, load: Callable[[], T]) -> T:
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    value = load()
    cache[key] = value
    while len(cache) > _CACHE_ENTRIES:
        cache.popitem(last=False)
    return value
