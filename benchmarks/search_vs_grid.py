"""TPE + ASHA against the default tau_grid grid, at the grid's budget in trial-epochs, side by side.

    python benchmarks/search_vs_grid.py [--search-seeds 3] [--num-samples 110] [--preset digits]

One run, embedded Ray, at the recipe this comparison was set for: 20 epochs (``RECIPES``),
on the cpu preset (MNIST-1D, cnn1d-25 -> cnn1d-6, lr 0.05: a quarter of its 80 epochs, so
that the grid and a search cost about half a default tau_grid run) or, with ``--preset
digits``, on digits (cnn-32 -> cnn-4, lr 0.02, the recipe the budgets were first set for);
the budget below and ``--num-samples`` 110 are counted in those 20 epochs. One storage
(the teacher, trained with the same recipe, is trained once):

- grid: the default ``python sweeps/tau_grid.py`` (57 trials: kl tau x alpha, mse x
  alpha, ce; 3 seeds): 57 x 20 = 1140 trial-epochs. The reference is its configuration
  with the best mean last-epoch validation accuracy over its 3 seeds (not its luckiest
  trial).
- search: ``python sweeps/tau_search.py`` with its defaults (kl: tau log-uniform
  [0.25, 64] or inf, alpha uniform [0, 1]; mse: alpha; TPE + ASHA with grace 2 epochs
  and factor 3; every search trial seed 0) once per search seed; ``--num-samples`` is
  set so that the search and its confirmation (top 3 settings x 3 new seeds x 20 epochs
  = 180 trial-epochs) stay within the grid's budget; the trial-epochs actually spent
  are printed.

For each it prints: the trial-epochs spent; the best validation accuracy found (one
trial); the trial-epochs spent, trials in the order they finished, until a completed
trial first reached within 0.5 points of the reference; and the selected configuration
with its validation and test accuracy over seeds (grid: the reference over its 3 seeds;
search: its final pick, the best of its 3 confirmed settings by mean validation accuracy
over their confirmation seeds, none of which the search used; like the reference, the
best of several means).

Last line: ``search_epochs_vs_grid=R best_val_search_minus_grid=D``. R: the search's
trial-epochs until first within 0.5 points of the reference (mean over search seeds)
divided by the grid's total trial-epochs (what the grid spends to know its best); inf
if a search seed never got there. D: the search's selected configuration's mean
validation accuracy over its confirmation seeds minus the reference, in points (mean
over search seeds). Both sides chose on validation accuracy only. Target: R <= 0.5 with D >= -0.3.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from analysis import load_trials
from kd_tune.cli.sweep import SweepSpec, build_parser, expand_args, search_args
from kd_tune.cli.sweep import load_spec as load_sweep_spec
from kd_tune.results.search_record import SearchRecord
from kd_tune.sweep.runner import SweepOptions, run_sweep
from kd_tune.sweep.search import run_search

ROOT = Path(__file__).resolve().parents[1]
WITHIN = 0.5  # points of validation accuracy
# The recipe the budgets were set for, per preset, given to the grid and the search alike: 20 epochs.
RECIPES = {"cpu": ["--preset", "cpu", "--epochs", "20"],
           "digits": ["--preset", "digits", "--lr", "0.02", "--epochs", "20"]}


def load_spec(name: str) -> SweepSpec:
    """The SweepSpec of ``sweeps/<name>.py``."""
    return load_sweep_spec(ROOT / "sweeps" / f"{name}.py")


def epochs_until(trials: pd.DataFrame, target: float) -> int | None:
    """Trial-epochs spent, trials in finishing order, until a completed trial's val acc reaches ``target``."""
    spent = 0
    for _, row in trials.sort_values("finished_at").iterrows():
        spent += int(row["epoch"])
        if row["status"] == "completed" and 100 * row["val_acc"] >= target:
            return spent
    return None


def seeds_stats(rows: pd.DataFrame, metric: str) -> tuple[float, float, int]:
    values = [100 * v for v in rows[metric]]
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else math.nan, len(values)


def fmt(stats: tuple[float, float, int]) -> str:
    mean, std, n = stats
    return f"{mean:.2f} ± {std:.2f} ({n})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--search-seeds", type=int, default=3, help="searches, seeds 0..N-1 (default: 3)")
    parser.add_argument("--num-samples", type=int, default=110, help="trials per search (default: 110)")
    parser.add_argument("--storage", type=Path, help="keep the results here (default: a temporary folder)")
    parser.add_argument("--preset", choices=sorted(RECIPES), default="cpu",
                        help="cpu (MNIST-1D, default) or digits, each at its recipe of RECIPES")
    args = parser.parse_args()
    recipe = RECIPES[args.preset]
    with tempfile.TemporaryDirectory() as tmp:
        storage = args.storage or Path(tmp)
        grid_spec, search_spec = load_spec("tau_grid"), load_spec("tau_search")
        started = time.perf_counter()
        grid_out = run_sweep(expand_args(grid_spec, build_parser(grid_spec).parse_args(recipe)),
                             SweepOptions(name="grid", storage=storage))
        print(f"grid: {sum(grid_out.counts.values())} trials in {time.perf_counter() - started:.0f}s", flush=True)
        grid = load_trials(grid_out.sweep_dir)
        done = grid[grid["status"] == "completed"]
        # Everything but loss, tau, alpha and the seed is fixed in the grid: those name a configuration.
        means = done.groupby(["loss", "tau", "alpha"])["val_acc"].mean()
        reference = 100 * means.max()
        chosen = done.set_index(["loss", "tau", "alpha"]).loc[[means.idxmax()]]
        grid_epochs = int(grid["epoch"].sum())
        rows = [("grid (57 trials, 3 seeds)", grid_epochs, 100 * done["val_acc"].max(),
                 epochs_until(grid, reference - WITHIN), _label(*means.idxmax()),
                 fmt(seeds_stats(chosen, "val_acc")) + " (reference)", fmt(seeds_stats(chosen, "test_acc")))]
        ratios, deltas = [], []
        for seed in range(args.search_seeds):
            started = time.perf_counter()
            flags = [*recipe, "--num-samples", str(args.num_samples), "--search-seed", str(seed)]
            search = search_args(search_spec, build_parser(search_spec).parse_args(flags))
            out = run_search(search, SweepOptions(name=f"search_seed{seed}", storage=storage))
            record = SearchRecord.read(out.sweep_dir)
            trials = load_trials(out.sweep_dir).set_index("trial_key")
            searched = trials.loc[record.search_keys]
            top = record.final
            confirm = trials.loc[list(top.confirm_keys)]
            confirm = confirm[confirm["status"] == "completed"]
            spent = int(trials["epoch"].sum())
            until = epochs_until(searched.reset_index(), reference - WITHIN)
            val = seeds_stats(confirm, "val_acc")
            ratios.append(until / grid_epochs if until is not None else math.inf)
            deltas.append(val[0] - reference)
            stopped = int((searched["status"] == "stopped").sum())
            print(f"search seed {seed}: {len(searched)} trials ({stopped} stopped by ASHA) + {len(confirm)} "
                  f"confirmation trials in {time.perf_counter() - started:.0f}s", flush=True)
            done_search = searched[searched["status"] == "completed"]
            rows.append((f"TPE + ASHA, search seed {seed}", spent, 100 * done_search["val_acc"].max(), until,
                         top.label, fmt(val) + " (confirmation)", fmt(seeds_stats(confirm, "test_acc"))))
    print(f"\nreference: the grid's best configuration by mean validation accuracy, {reference:.2f}%; "
          f"within {WITHIN} points: >= {reference - WITHIN:.2f}%\n")
    print("| run | trial-epochs | best val % (one trial) | trial-epochs until within 0.5 of the reference | "
          "selected | val % of selected | test % of selected |")
    print("|---|---:|---:|---:|---|---:|---:|")
    for name, spent, best, until, label, val, test in rows:
        print(f"| {name} | {spent} | {best:.2f} | {until if until is not None else 'not reached'} | {label} | "
              f"{val} | {test} |")
    ratio = statistics.mean(ratios)
    print(f"\nsearch_epochs_vs_grid={ratio:.3f} best_val_search_minus_grid={statistics.mean(deltas):.2f}")
    return 0


def _label(loss: str, tau: float, alpha: float) -> str:
    if loss == "ce":
        return "ce"
    return f"{loss}{f' tau={tau:g}' if loss == 'kl' else ''} alpha={alpha:g}"


if __name__ == "__main__":
    sys.exit(main())
