"""Accuracy and time per run of the `cpu` preset: teacher, CE baseline, KL and MSE students.

    python benchmarks/cpu_preset.py [--seeds 3]

Trains the preset's teacher once, then the student with CE, KL (tau 4, alpha 0.9) and
MSE (alpha 1) for each seed, and prints last-epoch test accuracy as mean +- std over
seeds and wall seconds per run, plus each loss's time per run relative to CE.
"""
from __future__ import annotations

import argparse
import statistics
import time

from kd_tune.core.config import preset
from kd_tune.teachers.training import train_teacher
from kd_tune.train.trainer import load_data, train

LOSSES = {
    "ce": {"loss": "ce"},
    "kl tau=4 alpha=0.9": {"loss": "kl", "tau": 4.0, "alpha": 0.9},
    "mse alpha=1": {"loss": "mse", "alpha": 1.0},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="student seeds per loss (default 3)")
    args = parser.parse_args()
    base = preset("cpu")
    data = load_data(base)
    started = time.perf_counter()
    teacher = train_teacher(base, data=data)
    print(f"teacher {base.teacher}: test acc {100 * teacher.final['test_acc']:.2f}% "
          f"({time.perf_counter() - started:.1f}s, {base.teacher_epochs or base.epochs} epochs)")
    print(f"student {base.student}, {base.epochs} epochs, {args.seeds} seeds")
    print(f"{'loss':<22}{'test acc % (mean +- std)':>26}{'s/run':>8}{'vs ce':>7}")
    ce_seconds = None
    for name, changes in LOSSES.items():
        accs, seconds = [], []
        for seed in range(args.seeds):
            started = time.perf_counter()
            result = train(base.replace(seed=seed, **changes), data=data, teacher=teacher.model)
            seconds.append(time.perf_counter() - started)
            accs.append(100 * result.final["test_acc"])
        per_run = statistics.mean(seconds)
        ce_seconds = ce_seconds or per_run
        std = statistics.stdev(accs) if len(accs) > 1 else float("nan")
        print(f"{name:<22}{statistics.mean(accs):>17.2f} +- {std:.2f}{per_run:>8.2f}{per_run / ce_seconds:>7.2f}")


if __name__ == "__main__":
    main()
