"""Claims about the logit-loss family, judged on the ``logit_losses`` sweep: our numbers and a verdict each.

    python benchmarks/loss_claims.py                        # run sweeps/logit_losses.py (embedded Ray), then judge
    python benchmarks/loss_claims.py --from results         # judge results/logit_losses, train nothing
    python benchmarks/loss_claims.py --storage /tmp/r --seeds 8   # other flags go to the sweep

It runs ``sweeps/logit_losses.py`` through its own entry point (the script's SPEC and
:func:`kd_tune.cli.sweep.main`, what ``python sweeps/logit_losses.py`` does) into
``--storage`` under the name ``logit_losses`` (a complete sweep there is not trained again),
then judges its trials. ``--from STORAGE`` only reads ``STORAGE/logit_losses``.

The statistical rule is :mod:`analysis.claims`, shared with ``benchmarks/paper_claims.py``
(``difference``, ``verdict``, ``z_score`` and the thresholds), so the two scripts judge alike: d is a
difference of means of per-seed test accuracies (points), se = sqrt(s_a^2/n_a + s_b^2/n_b),
z = d / se. "A beats B" holds if z > 2, does not hold if z < -2, else not distinguishable at
this n. "A and B agree" holds if |d| + 2 se <= 1 point, does not hold if |z| > 2, else not
distinguishable. Where the sweep holds several settings of a method (other --taus, --dkd-beta
values), the one with the highest mean validation accuracy stands for it.

Each claim is judged on clean labels (a) and under 40% symmetric label noise (b), every
method at the sweep's alpha (the cpu preset's 0.9: equal mixing with CE for all, not each
paper's own weighting; docs/losses.md):

1. DKD beats KL (Zhao et al.: 76.32 vs 73.33 on CIFAR-100, ResNet32x4 -> ResNet8x4).
2. Logit standardization improves KL: KL+LS beats KL (Sun et al.: 76.62 vs 73.33).
3. Standardized MSE and DIST agree: both match a correlation of the teacher's, MSE of
   z-scores per sample is (2(K-1)/K)(1 - Pearson) of the logits, DIST 1 - Pearson of the
   softened probabilities plus a per-class term.

Last line: ``claims_held=K/N``; a claim whose results are missing is counted as not held.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import claims, load_trials
from analysis.loss_tables import family, method_label
from kd_tune.cli.sweep import load_spec
from kd_tune.cli.sweep import main as sweep_main

ROOT = Path(__file__).resolve().parents[1]
SWEEP = "logit_losses"
NOISE = (("a", "clean labels", "none", 0.0), ("b", "40% symmetric label noise", "symmetric", 0.4))


HOLDS, NOT_JUDGED = claims.HOLDS, claims.NOT_JUDGED


@dataclass(frozen=True)
class Method:
    """One setting's completed trials: per-seed test accuracy (points) and mean validation accuracy."""

    label: str
    acc: tuple[float, ...]
    val: float

    def text(self) -> str:
        v = np.asarray(self.acc)
        std = f" ± {v.std(ddof=1):.2f}" if v.size > 1 else ""
        return f"{self.label} {v.mean():.2f}{std}% (n={v.size})"


class Missing(Exception):
    """The trials a claim needs are not in the results."""


def methods(trials: pd.DataFrame, fam: str, noise_type: str, noise_rate: float) -> list[Method]:
    """The settings of method family ``fam`` (``kl``, ``kl+ls``, ``dkd``, ``dist``, ``mse+std``, ...)
    among the completed trials of one noise setting, one :class:`Method` each."""
    done = trials[(trials["status"] == "completed") & (trials["noise_type"] == noise_type)
                  & np.isclose(trials["noise_rate"], noise_rate)]
    standardize = done["standardize"] if "standardize" in done else pd.Series(False, index=done.index)
    done = done[[family(loss, std) == fam for loss, std in zip(done["loss"], standardize)]]
    by_label: dict[str, list[dict]] = {}
    for record in done.to_dict("records"):
        by_label.setdefault(method_label(record), []).append(record)
    return [Method(label, tuple(100 * r["test_acc"] for r in rows), float(np.mean([100 * r["val_acc"] for r in rows])))
            for label, rows in sorted(by_label.items())]


def chosen(trials: pd.DataFrame, fam: str, noise_type: str, noise_rate: float) -> tuple[Method, str]:
    """The family's setting with the highest mean validation accuracy (test accuracy without a
    validation split, said in the note)."""
    found = methods(trials, fam, noise_type, noise_rate)
    if not found:
        raise Missing(f"no completed {fam} trials at noise {noise_type} {noise_rate:g}")
    if len(found) == 1:
        return found[0], ""
    if all(math.isnan(m.val) for m in found):
        return max(found, key=lambda m: np.mean(m.acc)), " (chosen on test: no validation split)"
    return max(found, key=lambda m: -math.inf if math.isnan(m.val) else m.val), " (best on validation)"


def compare(kind: str, trials: pd.DataFrame, a: str, b: str, noise_type: str, noise_rate: float) -> tuple[str, str]:
    """(the numbers, the verdict) of ``a`` against ``b`` under the shared rule."""
    first, first_note = chosen(trials, a, noise_type, noise_rate)
    second, second_note = chosen(trials, b, noise_type, noise_rate)
    d, se = claims.difference(first.acc, second.acc)
    numbers = f"{first.text()}{first_note} vs {second.text()}{second_note}; {claims.numbers(d, se)}"
    return numbers, claims.verdict(kind, d, se)


# (number, statement, kind, a, b)
CLAIMS: tuple[tuple[str, str, str, str, str], ...] = (
    ("1", "DKD beats KL", "beats", "dkd", "kl"),
    ("2", "logit standardization improves KL (KL+LS beats KL)", "beats", "kl+ls", "kl"),
    ("3", "standardized MSE and DIST agree", "agree", "mse+std", "dist"),
)


def judge(trials: pd.DataFrame) -> list[claims.Claim]:
    """Every claim on clean labels (a) and under noise (b)."""
    out = []
    for number, statement, kind, a, b in CLAIMS:
        for suffix, where, noise_type, noise_rate in NOISE:
            try:
                numbers, verdict = compare(kind, trials, a, b, noise_type, noise_rate)
            except Missing as err:
                numbers, verdict = f"no results: {err}", NOT_JUDGED
            out.append(claims.Claim(number + suffix, f"{statement}, {where}", numbers, verdict))
    return out


RULE = claims.RULE + " Every method at the sweep's alpha."



def main(argv: Sequence[str] | None = None, *, run: Callable[..., int] = sweep_main) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     usage="python benchmarks/loss_claims.py [--from STORAGE | --storage DIR "
                                           "[--address ADDR] [SWEEP FLAGS ...]]")
    parser.add_argument("--from", dest="source", type=Path, metavar="STORAGE",
                        help="judge STORAGE/logit_losses, already run; run nothing")
    parser.add_argument("--storage", type=Path, default=Path("results"),
                        help="where the sweep runs and is judged (default: ./results)")
    parser.add_argument("--address", metavar="ADDR",
                        help="Ray cluster to join (auto or host:port); default: $RAY_ADDRESS, else an embedded Ray")
    args, sweep_flags = parser.parse_known_args(argv)
    if args.source is not None:
        if sweep_flags or args.address:
            parser.error("--from only reads results: it takes no --address and no sweep flags")
        if not (args.source / SWEEP).is_dir():
            parser.error(f"--from {args.source}: no {SWEEP}/ folder in it")
        print(claims.report(judge(load_trials(args.source / SWEEP)), RULE))
        return 0
    where = ["--storage", str(args.storage), *(["--address", args.address] if args.address else [])]
    print(f"=== {SWEEP}: python sweeps/{SWEEP}.py {' '.join(sweep_flags)}", flush=True)
    started = time.perf_counter()
    spec = load_spec(ROOT / "sweeps" / f"{SWEEP}.py")
    code = run(spec, ["--name", SWEEP, *where, *sweep_flags], prog=f"python sweeps/{SWEEP}.py")
    if code:
        print(f"loss_claims: the sweep ended with exit code {code}; rerun the same command to resume it",
              file=sys.stderr)
        return code
    print(f"\nsweep wall time {time.perf_counter() - started:.0f}s (this machine, {os.cpu_count()} CPUs)\n")
    print(claims.report(judge(load_trials(args.storage / SWEEP)), RULE))
    return 0


if __name__ == "__main__":
    sys.exit(main())
