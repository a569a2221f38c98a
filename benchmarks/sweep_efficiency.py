"""Where a sweep's trials phase goes beyond the students' own compute, old settings and new, side by side.

    python benchmarks/sweep_efficiency.py                 # the default tau_grid sweep, twice
    python benchmarks/sweep_efficiency.py --seeds 1       # a stated subset: one seed of it

Runs ``sweeps/tau_grid.py``'s sweep (its defaults, the cpu preset, an embedded Ray sized to
this machine, 1 CPU per trial) twice into one storage, one after the other:

- **old**: the settings kd-tune had before reports were gathered (one report per epoch, a
  checkpoint every 5 epochs): ``--report-every-s 0 --checkpoint-every-s 0 --checkpoint-every 5``;
- **new**: the defaults (reports every 10 s of training, a checkpoint every 30 s of
  training and at the end).

The teacher and its logit cache are made by the first run and reused by the second, outside
the trials phase. Per trial, on average, from each trial's last report (``kd_timing``, see
:class:`kd_tune.sweep.reports.TrialTiming`) and its row: the training loop (the epochs' own
times, ``train_time_s``), set-up (data, teacher or cached logits), reports (count, seconds),
checkpoints (count, bytes, seconds), the end measurements gathered for the driver, and what
Ray Tune and the driver add (the trial's span on the driver less its time in the trainable).

``trials_phase_vs_compute`` = the trials phase's wall time / (the summed training loops /
CPU slots). ``per_trial_outside_loop_s`` = a trial's wall time outside its training loop, on
average: its span on the driver (what the console prints beside it: from Tune starting it to
its end recorded) less its training loop (``train_time_s``), plus the wait before it on its
worker after the previous trial there ended (Tune handing the actor over). The first trial
of each actor also pays the actor's one-time set-up (the data set, the logit cache, the first
optimizer's import of ``torch._dynamo``).

The phase's slot-seconds outside the loops, ``(phase x slots - the summed loops) / trials``, hold
that and two costs of the sweep as a whole, printed apart: each slot's start and end of the
phase (Tune starting its actors: a worker process importing Ray Tune and torch; the experiment
closing), and each slot's idle time after its last trial while another slot still runs one
(57 trials of equal length on 2 slots end with one running alone). The last line gives
``trials_phase_vs_compute`` and ``per_trial_outside_loop_s`` for the new defaults, the phase's
slot-seconds per trial, then the old settings' figures for comparison.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.results_io import load_trials
from kd_tune.cli.sweep import build_parser, expand_args, load_spec, options_from_args
from kd_tune.sweep.reports import TIMING_KEY
from kd_tune.sweep.runner import SweepOutcome, run_sweep

ROOT = Path(__file__).resolve().parents[1]
OLD = ["--report-every-s", "0", "--checkpoint-every-s", "0", "--checkpoint-every", "5"]


def run(storage: Path, name: str, flags: list[str]) -> tuple[SweepOutcome, pd.DataFrame]:
    """One run of the default tau_grid sweep with ``flags``; its outcome and a row per trial with
    its timing."""
    spec = load_spec(ROOT / "sweeps" / "tau_grid.py")
    args = build_parser(spec).parse_args(["--storage", str(storage), "--name", name, *flags])
    outcome = run_sweep(expand_args(spec, args), options_from_args(args))
    return outcome, trial_table(outcome.sweep_dir.local_path)


def trial_table(sweep_dir: Path) -> pd.DataFrame:
    """A row per trial of the sweep in ``sweep_dir``: its results row, its timing and what it spent
    outside its loop, in the order the trials started."""
    trials = load_trials(sweep_dir).set_index("trial_id")
    timing = pd.DataFrame.from_dict(_timings(sweep_dir), orient="index")
    return outside_loop(trials.join(timing, how="inner"))


def outside_loop(trials: pd.DataFrame) -> pd.DataFrame:
    """``trials`` (``started_at``, ``finished_at``, ``train_time_s``, ``wall_s``, ``pid``) in the
    order they started, with what each spent outside its loop: ``tune_and_driver_s``,
    ``handover_s`` (NaN for a worker's first trial) and ``outside_s``, in seconds."""
    span = (trials["finished_at"] - trials["started_at"]).dt.total_seconds()
    trials["tune_and_driver_s"] = span - trials["wall_s"]
    trials = trials.sort_values("started_at")
    # The wait on its worker before a trial: from the previous trial's end there to its start.
    trials["handover_s"] = (trials["started_at"] - trials.groupby("pid")["finished_at"].shift()).dt.total_seconds()
    trials["outside_s"] = span - trials["train_time_s"] + trials["handover_s"].fillna(0.0)
    return trials


def _timings(sweep_dir: Path) -> dict[str, dict[str, Any]]:
    """Tune trial id -> the ``kd_timing`` of its last report (from Tune's ``result.json``) and
    the worker process it ran in (``pid``)."""
    out = {}
    for result in sweep_dir.glob("trial_*/result.json"):
        for line in reversed(result.read_text().splitlines()):
            report = json.loads(line)
            if TIMING_KEY in report:
                out[report["trial_id"]] = {**report[TIMING_KEY], "pid": report["pid"]}
                break
    return out


def summary(outcome: SweepOutcome, trials: pd.DataFrame, slots: int) -> dict[str, float]:
    compute = float(trials["train_time_s"].sum())
    first, last = trials["started_at"].min(), trials["finished_at"].max()
    per_worker = trials.groupby("pid")
    return {
        "trials": len(trials),
        "phase_s": outcome.fit_seconds,
        "ratio": outcome.fit_seconds / (compute / slots),
        "slot_outside_s": (outcome.fit_seconds * slots - compute) / len(trials),
        # The phase's start and end: before any trial started and after the last one ended, per slot.
        "phase_edges_s": (outcome.fit_seconds - (last - first).total_seconds()) * slots / len(trials),
        "idle_tail_s": float((last - per_worker["finished_at"].max()).dt.total_seconds().sum()) / len(trials),
        "first_on_worker_s": float(per_worker["outside_s"].first().mean()),
        "later_on_worker_s": float(trials["outside_s"].drop(per_worker.head(1).index).mean()),
        **{column: float(trials[column].mean()) for column in (
            "train_time_s", "setup_s", "reports", "reports_s", "checkpoints", "checkpoint_bytes", "checkpoints_s",
            "end_s", "tune_and_driver_s", "handover_s", "outside_s")},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=None, help="seeds of the sweep (default: its own, 3)")
    parser.add_argument("--storage", type=Path, help="keep the results here (default: a temporary folder)")
    args = parser.parse_args()
    slots = os.cpu_count() or 1
    seeds = ["--seeds", str(args.seeds)] if args.seeds else []
    with tempfile.TemporaryDirectory() as tmp:
        storage = args.storage or Path(tmp)
        rows = {}
        for label, flags in (("old", OLD), ("new", [])):
            outcome, trials = run(storage, f"efficiency_{label}", [*flags, *seeds])
            rows[label] = summary(outcome, trials, slots)
            print(f"{label}: {rows[label]['trials']} trials, trials phase {rows[label]['phase_s']:.1f}s", flush=True)
    report(rows, slots)
    return 0


def report(rows: dict[str, dict[str, float]], slots: int) -> None:
    """Print the old and new :func:`summary` side by side, then the last line."""
    print(f"\nPer trial, on average (seconds unless said), {slots} CPU slots, 1 CPU per trial:")
    print("| | old (a report per epoch, a checkpoint every 5 epochs) | new (defaults) |\n|---|---:|---:|")
    lines = [("training loop (train_time_s)", "train_time_s", "{:.2f}"), ("set-up: data, teacher or cached logits",
             "setup_s", "{:.3f}"), ("reports (count)", "reports", "{:.1f}"), ("reports", "reports_s", "{:.3f}"),
             ("checkpoints (count)", "checkpoints", "{:.1f}"), ("checkpoint bytes", "checkpoint_bytes", "{:,.0f}"),
             ("checkpoints", "checkpoints_s", "{:.3f}"), ("end measurements for the driver", "end_s", "{:.3f}"),
             ("Ray Tune and the driver (span less the trainable)", "tune_and_driver_s", "{:.3f}"),
             ("hand-over: wait on the worker after its previous trial", "handover_s", "{:.3f}"),
             ("outside the loop, a trial's wall time (per_trial_outside_loop_s)", "outside_s", "{:.3f}"),
             ("  the first trial of each worker", "first_on_worker_s", "{:.3f}"),
             ("  every later trial", "later_on_worker_s", "{:.3f}"),
             ("phase slot-seconds outside the loops, per trial", "slot_outside_s", "{:.3f}"),
             ("  of which the phase's start and end (actors starting, closing)", "phase_edges_s", "{:.3f}"),
             ("  of which slots idle after their last trial", "idle_tail_s", "{:.3f}"),
             ("trials phase / (compute / slots)", "ratio", "{:.3f}")]
    for title, key, fmt in lines:
        print(f"| {title} | {fmt.format(rows['old'][key])} | {fmt.format(rows['new'][key])} |")
    new, old = rows["new"], rows["old"]
    print(f"trials_phase_vs_compute={new['ratio']:.3f} per_trial_outside_loop_s={new['outside_s']:.3f} "
          f"slot_s_outside_loop_per_trial={new['slot_outside_s']:.3f} "
          f"old_trials_phase_vs_compute={old['ratio']:.3f} old_per_trial_outside_loop_s={old['outside_s']:.3f} "
          f"old_slot_s_outside_loop_per_trial={old['slot_outside_s']:.3f}")


if __name__ == "__main__":
    sys.exit(main())
