"""The sweep machinery's fixed cost per trial, beside a bare Ray Tune trial, in one run.

    python benchmarks/sweep_overhead.py [--trials 24]

Both runs use an embedded Ray with this machine's CPUs and 1 CPU per trial.

- kd-tune: ``run_sweep`` over N tiny digits trials (1 epoch, cnn-8 -> cnn-4, KL and MSE),
  with everything a real sweep does: actor reuse, data and teacher cached per actor,
  per-epoch reports, a checkpoint per trial, Parquet rows and MLflow child runs.
- bare Tune: a trainable that imports torch and reports once, ``reuse_actors=True``.

Fixed cost per trial = (Tune-phase wall time x CPU slots - trial compute) / N, in
CPU-seconds; trial compute is the trainer's own epoch time (``train_time_s``).
Prints a table, then ``machinery_s_per_trial=A bare_tune_s_per_trial=B`` last.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

from analysis.results_io import load_trials
from kd_tune.core.config import preset
from kd_tune.plan.search_space import expand
from kd_tune.sweep.runner import SweepOptions, run_sweep


def _bare_trainable(config: dict) -> None:
    import torch  # noqa: F401  (a trial that imports torch: the real trainable's fixed cost)
    from ray import tune

    tune.report({"x": config["i"]})


def bare_tune(trials: int, slots: int, storage: Path) -> float:
    """CPU-seconds per trial of a bare Ray Tune run with actor reuse."""
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    ray.shutdown()
    ray.init(address="local", num_cpus=slots, include_dashboard=False, log_to_driver=False, logging_level="warning")
    tuner = tune.Tuner(
        tune.with_resources(_bare_trainable, {"cpu": 1}),
        param_space={"i": tune.grid_search(list(range(trials)))},
        tune_config=tune.TuneConfig(reuse_actors=True),
        run_config=tune.RunConfig(name="bare", storage_path=str(storage), verbose=0, callbacks=[JsonLoggerCallback()]),
    )
    started = time.perf_counter()
    tuner.fit()
    return (time.perf_counter() - started) * slots / trials


def kd_sweep(trials: int, slots: int, storage: Path) -> tuple[float, float, float]:
    """(fixed CPU-seconds per trial, compute seconds per trial, Tune-phase wall seconds)."""
    base = preset("digits", epochs=1, teacher="cnn-8", teacher_epochs=1, student="cnn-4")
    space = [{"loss": ["kl"], "tau": [1.0, 4.0, math.inf], "alpha": [0.5, 1.0]}, {"loss": ["mse"], "alpha": [0.5, 1.0]}]
    seeds = range(math.ceil(trials / 8))
    configs = expand(base, space, seeds=seeds)[:trials]
    options = SweepOptions(name="overhead", storage=storage, cpus_per_trial=1.0, checkpoint_every=1)
    outcome = run_sweep(configs, options)
    compute = load_trials(outcome.sweep_dir)["train_time_s"].sum()
    return (outcome.fit_seconds * slots - compute) / len(configs), compute / len(configs), outcome.fit_seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=24, help="trials per run (default: 24)")
    args = parser.parse_args()
    slots = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        fixed, compute, wall = kd_sweep(args.trials, slots, Path(tmp) / "kd")
        bare = bare_tune(args.trials, slots, Path(tmp) / "bare")
    print(f"{args.trials} trials, {slots} CPU slots, 1 CPU per trial, actor reuse")
    print("| run | CPU-s per trial |\n|---|---|")
    print(f"| bare Ray Tune trial (imports torch, one report) | {bare:.2f} |")
    print(f"| kd-tune trial, fixed cost (Ray, reports, checkpoint, Parquet, MLflow) | {fixed:.2f} |")
    print(f"| kd-tune trial, compute (1 epoch of digits) | {compute:.2f} |")
    print(f"Tune phase of the kd-tune sweep: {wall:.1f}s wall")
    print(f"machinery_s_per_trial={fixed:.3f} bare_tune_s_per_trial={bare:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
