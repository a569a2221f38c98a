"""What each loss costs per training step, against CE's, with the teacher's logits cached.

    python benchmarks/loss_cost.py [--rounds 15] [--steps 40] [--threads 1] [--preset cpu] [--student cnn-16]

One student step as the trainer takes it (:mod:`kd_tune.train.trainer`): the preset's student
on a batch of the preset's training data, the loss of :func:`kd_tune.train.losses.run_loss`
in float32 against the teacher's logits for that batch (computed once ahead, as the
teacher-logit cache supplies them: no teacher runs during the steps), zero_grad,
backward, SGD step. Losses: ce; kl at tau 4; kl with standardize at tau 2 (LS); dkd at
tau 4 (published options, past its warmup); dist at tau 4; mse; mse with standardize;
all KD losses at the preset's alpha, so each also computes CE (except at alpha 1).

Each round runs ``--steps`` steps of every loss in turn (the order rotated per round, after
a warm-up round), one student per loss kept across rounds. Times are the process's CPU
time (``time.process_time``), not wall time: on a shared machine other processes' load
stretches wall time by whatever share of a core this one gets, CPU time much less. Per
loss: the median over rounds of CPU ms per step, and the median over rounds of its time
divided by CE's time in the same round (side by side). At ``--threads 1``, a sweep trial's
default, so every step runs on this thread. The issue's bound: no loss above 1.10 x CE.

Last line: ``max_ratio=R loss=NAME``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

from kd_tune import models
from kd_tune.core.config import PRESETS, RunConfig
from kd_tune.data import epoch_batches
from kd_tune.train.losses import run_loss
from kd_tune.train.optim import build_optimizer
from kd_tune.train.trainer import load_data

BOUND = 1.10


def losses(base: RunConfig) -> dict[str, RunConfig]:
    """The configs compared, by name: CE and every KD loss at the preset's alpha."""
    return {
        "ce": base.replace(loss="ce", tau=1.0, alpha=0.0),
        "kl tau=4": base.replace(loss="kl", tau=4.0),
        "kl+ls tau=2": base.replace(loss="kl", tau=2.0, standardize=True),
        "dkd tau=4": base.replace(loss="dkd", tau=4.0),
        "dist tau=4": base.replace(loss="dist", tau=4.0),
        "mse": base.replace(loss="mse", tau=1.0),
        "mse+std": base.replace(loss="mse", tau=1.0, standardize=True),
    }


class Stepper:
    """One student and optimiser for one loss config; :meth:`run` times ``steps`` training steps."""

    def __init__(self, config: RunConfig, data, teacher_logits: torch.Tensor):
        torch.manual_seed(config.seed)
        self.model = models.build(config.student, data.num_classes, data.in_channels)
        self.optimizer = build_optimizer(self.model, config)
        self.loss_fn = run_loss(config)
        self.data, self.teacher_logits, self.config = data, teacher_logits, config
        self.epoch = 0

    def run(self, steps: int) -> float:
        """CPU seconds per step over ``steps`` steps (epochs of the training data, in order, as
        needed): the process's CPU time, which other processes' load does not inflate as it
        does wall time (at one thread every step runs on this thread)."""
        done, started = 0, time.process_time()
        while done < steps:
            for idx, images in epoch_batches(self.data.train.images, seed=0, epoch=self.epoch,
                                             batch_size=self.config.batch_size, augment=self.data.augment):
                x = self.data.normalize(images)
                logits = self.model(x)
                # Epoch 1 + warmup: dkd's weight is 1, the steady state of a run.
                loss = self.loss_fn(logits.float(), self.teacher_logits[idx], self.data.train.labels[idx], 1000)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                done += 1
                if done == steps:
                    break
            self.epoch += 1
        return (time.process_time() - started) / steps


def measure(base: RunConfig, rounds: int, steps: int) -> dict[str, tuple[float, float]]:
    """Per loss: (median ms per step, median ratio to CE in the same round)."""
    data = load_data(base)
    torch.manual_seed(0)
    teacher = models.build(base.teacher, data.num_classes, data.in_channels).eval()
    with torch.no_grad():  # an untrained teacher: its logits' values do not change the cost
        teacher_logits = teacher(data.normalize(data.train.images)).float()
    steppers = {name: Stepper(config, data, teacher_logits) for name, config in losses(base).items()}
    names = list(steppers)
    times: dict[str, list[float]] = {name: [] for name in names}
    ratios: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(rounds + 1):  # round 0 warms up allocator and kernels
        order = names[round_ % len(names):] + names[:round_ % len(names)]
        seconds = {name: steppers[name].run(steps) for name in order}
        if round_:
            for name in names:
                times[name].append(seconds[name])
                ratios[name].append(seconds[name] / seconds["ce"])
        print(f"  round {round_}/{rounds} done", file=sys.stderr, flush=True)
    return {name: (1e3 * statistics.median(times[name]), statistics.median(ratios[name])) for name in names}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds (default: 15)")
    parser.add_argument("--steps", type=int, default=40, help="steps per loss per round (default: 40)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1, a trial's)")
    parser.add_argument("--preset", default="cpu", choices=sorted(PRESETS), help="the student, data and batch")
    parser.add_argument("--student", help="another student than the preset's (the cost of a loss is per step, not "
                        "per parameter: a larger student shows smaller ratios)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    base = PRESETS[args.preset].replace(device="cpu")
    if args.student:
        base = base.replace(student=args.student)
    load = os.getloadavg()[0]
    results = measure(base, args.rounds, args.steps)
    print(f"student {base.student} on {base.dataset}, batch {base.batch_size}, alpha {base.alpha:g}, "
          f"{args.threads} thread(s), teacher logits cached; load average {load:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after ({os.cpu_count()} CPUs)")
    print(f"{'loss':<14}{'ms/step':>10}{'x CE':>8}")
    for name, (ms, ratio) in results.items():
        flag = "" if ratio <= BOUND else f"  above {BOUND:.2f}"
        print(f"{name:<14}{ms:>10.3f}{ratio:>8.3f}{flag}")
    worst = max((n for n in results if n != "ce"), key=lambda n: results[n][1])
    print(f"max_ratio={results[worst][1]:.3f} loss={worst.split(' ')[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
