"""The paper's qualitative claims, checked on the cpu preset: our numbers and a verdict for each.

    python benchmarks/paper_claims.py                       # run the sweeps (embedded Ray), then judge
    python benchmarks/paper_claims.py --address auto        # ... on a running Ray cluster
    python benchmarks/paper_claims.py --from results        # judge sweeps already in results/, train nothing
    python benchmarks/paper_claims.py --storage /tmp/r --epochs 3 --seeds 2    # other flags go to every sweep

It runs, through the sweep scripts' own entry point (``sweeps/*.py``'s SPEC and
:func:`kd_tune.cli.sweep.main`, exactly what ``python sweeps/NAME.py`` does), into
``--storage``: ``tau_grid``, ``label_noise``, ``noisy_teacher`` and ``sequential`` with
their defaults, and ``tau_inf_rescaled``: ``python sweeps/tau_grid.py --name
tau_inf_rescaled --losses kl --taus inf --alphas 1 --lr 2*LR --weight-decay WD/2`` (LR, WD:
the recipe's). A sweep already complete in the storage is not trained again (rerunning a
sweep with its name resumes it). ``--from STORAGE`` only reads those folders.

The statistical rule. Each claim is a difference d between two sets of per-seed values
(test accuracy in points, or test logit MSE), with the standard error of a difference of
means, se = sqrt(s_a^2/n_a + s_b^2/n_b) (sample variances), or a regression slope with its
standard error; z = d / se, printed for every claim. The rule lives in
:mod:`analysis.claims`, shared with ``benchmarks/loss_claims.py``.

- "A beats B": holds if z > 2; does not hold if z < -2; else not distinguishable at this n.
- "A is at least as good as B" (A is the best): holds if d - 2 se > -0.5 points (the
  interval's lower end above a margin: d >= 0 alone held on any noise); does not hold if
  z < -2; else not distinguishable at this n.
- "A and B agree": holds if |d| + 2 se <= 1 point (equal within 1 point); does not hold if
  |z| > 2; else not distinguishable at this n.

"The best" setting of a group is the one with the highest mean validation accuracy (test
accuracy decides nothing; without a validation split, test accuracy chooses and the
claim says so). The claims:

1. KD beats CE: the best KD setting (kl or mse, any tau and alpha) vs CE (tau_grid).
2. At alpha 1, accuracy rises with tau from 1: the slope of per-seed test accuracy on the
   rank of tau (1, 3, 5, 20, inf -> 0..4), KL at alpha 1 (tau_grid).
3. MSE is at least as good as the best KL: the best MSE setting vs the best KL (tau_grid).
4. tau = inf and MSE agree once the factor 2 is accounted for. At equal alpha, KL at tau =
   inf has half of MSE's gradient (for the logits' centred part): (c(z_s) - c(z_t)) / K
   against 2 (z_s - z_t) / K. We compare at alpha 1 with the learning rate doubled and the
   weight decay halved for tau = inf (tau_inf_rescaled), which makes its SGD step that of
   MSE but for the logit mean, which KL ignores, against MSE alpha 1 (tau_grid). Halving
   alpha instead (MSE at alpha 0.5) gives the same KD gradient but adds CE at weight 0.5;
   it is printed beside. The teacher trains with its students' recipe, so the rescaled run
   distils from its own teacher (both teachers' test accuracy printed).
5. Small tau is the most robust under label noise: symmetric noise at rate 0.4, the best KD
   setting with tau <= 1 vs the best other KD setting (label_noise).
6. With an under-trained teacher, small tau is best: the best KD setting with tau <= 1 vs the
   best other, distilling from the under-trained teacher (ARCH@E; noisy_teacher).
7. Sequential distillation helps when the capacity gap is large: T -> M -> S beats T -> S,
   KL at tau 3 (7a) and MSE (7b) (sequential).
8. MSE students' logits are closer to the teacher's than KL's at large tau: test logit MSE
   of MSE at alpha 1 vs the closest of KL at tau 20 and tau = inf, alpha 1 (tau_grid).

Last line: ``claims_held=K/N``. A claim whose results are missing is counted as not held.
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

from analysis import load_trials
from analysis.claims import FAILS, HOLDS, NOT_JUDGED, UNCLEAR, Claim, difference, report, slope, verdict  # noqa: F401 (tests read them here)
from analysis.claims import RULE as STATISTICS
from analysis.claims import numbers as statistics
from analysis.reference import fmt_number
from analysis.table_model import method_label
from kd_tune.cli.args import config_from_args
from kd_tune.cli.sweep import SweepSpec, build_parser
from kd_tune.cli.sweep import load_spec as load_sweep_spec
from kd_tune.cli.sweep import main as sweep_main

ROOT = Path(__file__).resolve().parents[1]


def load_spec(script: str) -> SweepSpec:
    """The SweepSpec of ``sweeps/<script>.py``."""
    return load_sweep_spec(ROOT / "sweeps" / f"{script}.py")


def sweeps(lr: float, weight_decay: float) -> list[tuple[str, str, list[str]]]:
    """(name, script, flags) of every sweep the claims read, for a recipe with ``lr`` and ``weight_decay``."""
    rescaled = ["--losses", "kl", "--taus", "inf", "--alphas", "1", "--lr", repr(2 * lr),
                "--weight-decay", repr(weight_decay / 2)]
    return [("tau_grid", "tau_grid", []), ("tau_inf_rescaled", "tau_grid", rescaled),
            ("label_noise", "label_noise", []), ("noisy_teacher", "noisy_teacher", []),
            ("sequential", "sequential", [])]


# -- the rule: analysis.claims (shared with benchmarks/loss_claims.py) ------------------------


# -- reading the results ----------------------------------------------------------------------


@dataclass(frozen=True)
class Group:
    """One setting's completed trials: per-seed test accuracy (points) and test logit MSE,
    and the mean validation accuracy (points; NaN without a validation split)."""

    label: str
    loss: str
    tau: float
    acc: tuple[float, ...]
    logit_mse: tuple[float, ...]
    val: float

    def text(self, metric: str = "acc") -> str:
        v = np.asarray(getattr(self, metric), dtype=float)
        std = f" ± {v.std(ddof=1):.2f}" if v.size > 1 else ""
        return f"{self.label} {v.mean():.2f}{std}{'%' if metric == 'acc' else ''} (n={v.size})"


def groups(trials: pd.DataFrame, **where) -> list[Group]:
    """The completed trials matching ``where`` (column -> value, or a predicate on the column's
    values), one group per setting (teacher, student, loss, tau, alpha, noise, lr, weight decay)."""
    sel = trials[trials["status"] == "completed"]
    for column, want in where.items():
        sel = sel[sel[column].map(want).astype(bool)] if callable(want) else sel[sel[column] == want]
    keys = ["teacher", "student", "loss", "tau", "alpha", "noise_type", "noise_rate", "lr", "weight_decay"]
    return [Group(label=method_label(first["loss"], first["tau"], first["alpha"]), loss=first["loss"],
                  tau=float(first["tau"]), acc=tuple(100 * g["test_acc"]), logit_mse=tuple(g["test_logit_mse"]),
                  val=float(100 * g["val_acc"].mean()))
            for _, g in sel.groupby(keys, sort=True) for first in [g.iloc[0]]]


def best(candidates: list[Group]) -> tuple[Group, str]:
    """The candidate with the highest mean validation accuracy (test accuracy when none has one), and a note."""
    if all(math.isnan(g.val) for g in candidates):
        return max(candidates, key=lambda g: np.mean(g.acc)), ", chosen on test: no validation split"
    return max(candidates, key=lambda g: -math.inf if math.isnan(g.val) else g.val), ""


# -- the claims -------------------------------------------------------------------------------


class Missing(Exception):
    """The results a claim needs are not in the storage."""


Results = Callable[[str], pd.DataFrame]
Judged = tuple[str, str]  # the numbers a claim rests on, its verdict


def compare(kind: str, a: Group, b: Group, a_what: str, b_what: str, metric: str = "acc") -> Judged:
    d, se = difference(getattr(a, metric), getattr(b, metric))
    numbers = f"{a_what}: {a.text(metric)} vs {b_what}: {b.text(metric)}; {statistics(d, se)}"
    return numbers, verdict(kind, d, se)


def _need(found: list[Group], what: str) -> list[Group]:
    if not found:
        raise Missing(what)
    return found


def _one(found: list[Group], what: str) -> Group:
    found = _need(found, what)
    if len(found) > 1:
        raise Missing(f"{what}: {len(found)} settings where one was expected")
    return found[0]


def kd_beats_ce(results: Results) -> Judged:
    grid = results("tau_grid")
    kd, note = best(_need(groups(grid, loss=lambda x: x in ("kl", "mse")), "tau_grid: kl/mse trials"))
    ce = _one(groups(grid, loss="ce"), "tau_grid: ce trials")
    return compare("beats", kd, ce, f"best KD{note}", "CE")


def rises_with_tau(results: Results) -> Judged:
    found = _need(groups(results("tau_grid"), loss="kl", alpha=1.0, tau=lambda t: t >= 1.0),
                  "tau_grid: kl trials at alpha 1")
    found.sort(key=lambda g: g.tau)
    b, se = slope([rank for rank, g in enumerate(found) for _ in g.acc], [v for g in found for v in g.acc])
    means = ", ".join(f"{fmt_number(g.tau)}: {np.mean(g.acc):.2f}" for g in found)
    return (f"kl alpha=1, mean test acc % by tau ({means}); slope per tau step: {statistics(b, se)}",
            verdict("beats", b, se))


def mse_at_least_best_kl(results: Results) -> Judged:
    grid = results("tau_grid")
    mse, mse_note = best(_need(groups(grid, loss="mse"), "tau_grid: mse trials"))
    kl, kl_note = best(_need(groups(grid, loss="kl"), "tau_grid: kl trials"))
    return compare("at_least", mse, kl, f"best MSE{mse_note}", f"best KL{kl_note}")


def inf_agrees_with_mse(results: Results) -> Judged:
    rescaled, grid = results("tau_inf_rescaled"), results("tau_grid")
    inf = _one(groups(rescaled, loss="kl", tau=math.inf, alpha=1.0), "tau_inf_rescaled: kl tau=inf alpha=1 trials")
    mse = _one(groups(grid, loss="mse", alpha=1.0), "tau_grid: mse alpha=1 trials")
    numbers, judged = compare("agree", inf, mse, "tau=inf at lr x2, weight decay /2", "MSE")
    # A teacher trains with its students' recipe, so the rescaled run has its own teacher.
    context = [f"teachers (each trained with its run's recipe): test {_teacher_acc(rescaled)} and "
               f"{_teacher_acc(grid)}"]
    for label, found in (("tau=inf at the recipe's lr", groups(grid, loss="kl", tau=math.inf, alpha=1.0)),
                         ("MSE at alpha 0.5 (the same KD gradient as tau=inf at alpha 1, plus CE at weight 0.5)",
                          groups(grid, loss="mse", alpha=0.5))):
        context += [f"{label}: {found[0].text()}"] if found else []
    return numbers + "\n     " + "; ".join(context), judged


def _teacher_acc(trials: pd.DataFrame) -> str:
    accs = trials.loc[trials["loss"] != "ce", "teacher_test_acc"].dropna().unique()
    return "/".join(f"{100 * a:.2f}%" for a in accs) or "unknown"


def _small_tau_best(found: list[Group], where: str) -> Judged:
    small = [g for g in found if g.loss == "kl" and g.tau <= 1.0]
    small_best, small_note = best(_need(small, f"{where}: kl trials with tau <= 1"))
    other_best, other_note = best(_need([g for g in found if g not in small], f"{where}: kl tau > 1 or mse trials"))
    return compare("at_least", small_best, other_best, f"best tau <= 1{small_note}", f"best other{other_note}")


def small_tau_robust_to_noise(results: Results) -> Judged:
    found = groups(results("label_noise"), loss=lambda x: x in ("kl", "mse"), noise_type="symmetric", noise_rate=0.4)
    return _small_tau_best(found, "label_noise, symmetric 0.4")


def small_tau_with_undertrained_teacher(results: Results) -> Judged:
    trials = results("noisy_teacher")
    found = groups(trials, loss=lambda x: x in ("kl", "mse"), teacher=lambda t: "@" in t)
    numbers, judged = _small_tau_best(found, "noisy_teacher, an ARCH@E teacher")
    teachers = sorted({t for t in trials["teacher"] if "@" in t})
    return f"teacher {', '.join(teachers)}: {numbers}", judged


def sequential_helps(results: Results, loss: str) -> Judged:
    trials = results("sequential")
    chains = sorted({t for t in trials["teacher"] if ">" in t})
    if not chains:
        raise Missing("sequential: trials distilling from a chain T>M")
    chain, student = chains[0], trials["student"].iloc[0]
    big = chain.split(">")[0]
    where = {"loss": loss, **({"tau": 3.0} if loss == "kl" else {})}
    via = _one(groups(trials, teacher=chain, **where), f"sequential: {loss} trials from {chain}")
    direct = _one(groups(trials, teacher=big, **where), f"sequential: {loss} trials from {big}")
    return compare("beats", via, direct, f"{chain.replace('>', ' -> ')} -> {student}", f"{big} -> {student}")


def mse_logits_closest(results: Results) -> Judged:
    grid = results("tau_grid")
    mse = _one(groups(grid, loss="mse", alpha=1.0), "tau_grid: mse alpha=1 trials")
    large = _need(groups(grid, loss="kl", alpha=1.0, tau=lambda t: t >= 20.0), "tau_grid: kl alpha=1, tau >= 20")
    closest = min(large, key=lambda g: np.mean(g.logit_mse))
    # The claim is "KL's logit MSE exceeds MSE's": KL first.
    return compare("beats", closest, mse, "test logit MSE, closest KL with tau >= 20", "MSE", metric="logit_mse")


CLAIMS: tuple[tuple[str, str, Callable[[Results], Judged]], ...] = (
    ("1", "KD beats CE", kd_beats_ce),
    ("2", "At alpha 1, accuracy rises with tau from 1", rises_with_tau),
    ("3", "MSE is at least as good as the best KL", mse_at_least_best_kl),
    ("4", "tau=inf and MSE agree once the factor 2 is accounted for", inf_agrees_with_mse),
    ("5", "Small tau is the most robust under label noise", small_tau_robust_to_noise),
    ("6", "With an under-trained teacher, small tau is best", small_tau_with_undertrained_teacher),
    ("7a", "Sequential distillation helps when the capacity gap is large (kl tau=3)",
     lambda results: sequential_helps(results, "kl")),
    ("7b", "Sequential distillation helps when the capacity gap is large (mse)",
     lambda results: sequential_helps(results, "mse")),
    ("8", "MSE students' logits are closer to the teacher's than KL's at large tau", mse_logits_closest),
)


def judge(storage: Path) -> list[Claim]:
    """Every claim, judged on the sweep folders in ``storage`` (missing results: not held, and why)."""
    cache: dict[str, pd.DataFrame] = {}

    def results(name: str) -> pd.DataFrame:
        if name not in cache:
            try:
                cache[name] = load_trials(storage / name)
            except FileNotFoundError as err:
                raise Missing(str(err)) from None
        return cache[name]

    claims = []
    for number, statement, rule in CLAIMS:
        try:
            numbers, judged = rule(results)
        except Missing as err:
            numbers, judged = f"no results: {err}", NOT_JUDGED
        claims.append(Claim(number, statement, numbers, judged))
    return claims


RULE = STATISTICS + " 'Best' settings are chosen on validation accuracy."



def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     usage="python benchmarks/paper_claims.py [--from STORAGE | --storage DIR "
                                           "[--address ADDR] [SWEEP FLAGS ...]]")
    parser.add_argument("--from", dest="source", type=Path, metavar="STORAGE",
                        help="judge the sweeps already in STORAGE (its tau_grid/, label_noise/, ... folders); "
                             "run nothing")
    parser.add_argument("--storage", type=Path, default=Path("results"),
                        help="where the sweeps run and are judged (default: ./results)")
    parser.add_argument("--address", metavar="ADDR",
                        help="Ray cluster to join (auto or host:port); default: $RAY_ADDRESS, else an embedded Ray")
    args, sweep_flags = parser.parse_known_args(argv)
    if args.source is not None:
        if sweep_flags or args.address:
            parser.error("--from only reads results: it takes no --address and no sweep flags")
        if not args.source.is_dir():
            parser.error(f"--from {args.source}: no such folder")
        print(report(judge(args.source), RULE))
        return 0
    status = run_sweeps(args.storage, args.address, sweep_flags)
    if status:
        return status
    print(report(judge(args.storage), RULE))
    return 0


def run_sweeps(storage: Path, address: str | None, flags: list[str]) -> int:
    """Run every sweep of :func:`sweeps` into ``storage`` with ``flags`` added; the first failing exit code, or 0."""
    where = ["--storage", str(storage), *(["--address", address] if address else [])]
    # The recipe the sweeps will use, so that tau_inf_rescaled doubles that learning rate.
    base = load_spec("tau_grid")
    config = config_from_args(build_parser(base).parse_args(flags))
    walls = []
    for name, script, extra in sweeps(config.lr, config.weight_decay):
        print(f"\n=== {name}: python sweeps/{script}.py --name {name} {' '.join(extra + flags)}", flush=True)
        started = time.perf_counter()
        code = sweep_main(load_spec(script), ["--name", name, *where, *flags, *extra],
                          prog=f"python sweeps/{script}.py")
        walls.append(f"{name} {time.perf_counter() - started:.0f}s")
        if code:
            print(f"paper_claims: sweep {name} ended with exit code {code}; rerun the same command to resume it",
                  file=sys.stderr)
            return code
    print(f"\nwall time per sweep (this machine, {os.cpu_count()} CPUs): {', '.join(walls)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
