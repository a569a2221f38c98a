"""The results writer's cost per trial and the driver's memory, as a sweep grows.

    python benchmarks/writer_scale.py [--trials 10000] [--small 100] [--epochs 200]

Drives the driver's real Parquet path (``ParquetSink`` over ``ResultsWriter``) with the
events of a sweep, one trial after another, as the Tune adapter sends them: trial
started, one report per epoch (a checkpoint every 5 epochs), trial ended, Tune saving
its experiment state every 50 trials, and the experiment's end (which compacts each
table into one part). No Ray, no training: only the writer is measured.

Two sweeps, each in a fresh folder: ``--small`` trials, then ``--trials`` trials, both
with ``--epochs`` epochs per trial. Per-trial cost = the writer's wall time for the whole
sweep (end compaction included) / trials; the marginal cost is that of the last 100
trials. Memory: the driver process's peak resident set (ru_maxrss) after each sweep, and
its growth over the resident set before the first sweep (imports of Ray, torch and
pyarrow included there).
Prints a table, then ``writer_cost_<trials>_vs_<small>=R`` last (R = per-trial cost of the
large sweep / per-trial cost of the small one; flat is 1).
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

from analysis.results_io import find_sweeps
from kd_tune.core.config import RunConfig
from kd_tune.core.status import TrialStatus
from kd_tune.plan.planner import plan_trial
from kd_tune.results.parquet_sink import ParquetSink
from kd_tune.results.trial_tables import epochs_table, read_trials, trials_table

CHECKPOINT_EVERY = 5
SAVE_STATE_EVERY = 50  # trials between Tune's experiment-state saves


def _metrics(epoch: int, epochs: int) -> dict[str, float]:
    acc = 0.1 + 0.8 * epoch / epochs
    return {"epoch": epoch, "train_loss": 2.0 / epoch, "train_acc": acc, "val_acc": acc - 0.01, "test_acc": acc - 0.02,
            "test_logit_mse": 0.5 / epoch, "test_agreement": acc, "lr": 0.1, "epoch_time_s": 1.0,
            "teacher_forward_samples": 0.0}


def record(folder: Path, trials: int, epochs: int) -> tuple[float, float]:
    """Record ``trials`` trials of ``epochs`` epochs; return (total writer seconds, seconds of the last 100)."""
    sink = ParquetSink(folder, sweep="scale", teacher_acc=lambda key: 0.9, run_id=lambda key: "run")
    spent = last = 0.0
    for i in range(trials):
        trial = plan_trial(RunConfig(seed=i, epochs=epochs))
        reports = [_metrics(e, epochs) for e in range(1, epochs + 1)]
        started = time.perf_counter()
        sink.trial_started(trial, f"t_{i}")
        for metrics in reports:
            sink.epoch_reported(trial, f"t_{i}", metrics, TrialStatus.RUNNING)
            if metrics["epoch"] % CHECKPOINT_EVERY == 0:
                sink.checkpointed(trial)
        sink.trial_ended(trial, f"t_{i}", TrialStatus.COMPLETED, None)
        if (i + 1) % SAVE_STATE_EVERY == 0:
            sink.saving_state()
        seconds = time.perf_counter() - started
        spent += seconds
        if i >= trials - 100:
            last += seconds
        if (i + 1) % 1000 == 0:
            print(f"  {i + 1} trials recorded, {spent:.0f}s", file=sys.stderr)
    started = time.perf_counter()
    sink.experiment_ended()
    end = time.perf_counter() - started
    return spent + end, last + end


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10_000, help="trials of the large sweep (default: 10000)")
    parser.add_argument("--small", type=int, default=100, help="trials of the small sweep (default: 100)")
    parser.add_argument("--epochs", type=int, default=200, help="epochs per trial (default: 200)")
    args = parser.parse_args()
    rows = []
    before = peak_rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        for n in (args.small, args.trials):
            folder = Path(tmp) / f"sweep_{n}"
            total, last = record(folder, n, args.epochs)
            assert find_sweeps(folder) == [folder] and read_trials(folder).num_rows == n
            parts = len(trials_table(folder).parts()) + len(epochs_table(folder).parts())
            size = sum(p.stat().st_size for p in (folder / "results").rglob("*.parquet")) / 1e6
            rows.append((n, total, total / n, last / min(n, 100), peak_rss_mb(), parts, size))
    print(f"peak RSS before the first sweep: {before:.0f} MB")
    print(f"{'trials':>7} {'epochs':>7} {'writer s':>9} {'s/trial':>8} {'last 100 s/trial':>17} "
          f"{'peak RSS MB':>12} {'growth MB':>10} {'parts':>6} {'MB':>7}")
    for n, total, per_trial, marginal, rss, parts, size in rows:
        print(f"{n:>7} {args.epochs:>7} {total:>9.1f} {per_trial:>8.4f} {marginal:>17.4f} {rss:>12.0f} "
              f"{rss - before:>10.0f} {parts:>6} {size:>7.1f}")
    ratio = rows[1][2] / rows[0][2]
    print(f"writer_cost_{args.trials}_vs_{args.small}={ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
