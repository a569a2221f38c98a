"""Does a student recipe converge? Training loss at the end of each loss/tau of the default sweeps.

    python benchmarks/convergence.py                        # the cpu preset's recipe, every row, 1 seed
    python benchmarks/convergence.py --recipe lr=0.05,epochs=60 --recipe lr=0.02,epochs=20 \\
        --taus 0.5,3,20,inf --alphas 1 --noise-rates 0,0.4 --noise-types symmetric

Rows are the student settings of the default sweeps (direct runs, no Ray): `tau_grid`
(kl tau {1, 3, 5, 20, inf} x alpha {0.1, 0.5, 1}, mse x alpha, ce), `label_noise`
(symmetric/asymmetric noise at {0.2, 0.4, 0.6} x ce, kl tau {0.5, 1, 4, 20} at alpha 1,
mse) and the noisy-teacher sweep's smallest temperature (kl tau 0.5 at alpha 1, clean
labels). `--sweeps`, `--losses`, `--taus`, `--alphas`, `--noise-types` and
`--noise-rates` keep a subset. Each `--recipe` (RunConfig fields, e.g.
`lr=0.05,epochs=60,schedule=cosine`) overrides the cpu preset; its teacher is trained
with that recipe (once per label-noise setting), and every row is trained from it for
each seed. The teacher's logits are computed once per run, as a sweep's cache does.
Each teacher is judged as well: its own row (`teacher ARCH`, its CE run at its seed, and
the same run longer) comes first, and counts in the verdict line.

Per row, the training loss (the mean total loss over an epoch's samples: what the row
optimises) `tail` epochs before the end (the last `--tail` fraction, 15% by default) and
at the end, its fall over the tail relative to the final loss, and train and test
accuracy. With a cosine schedule the last epochs' learning rate is tiny and the tail
flattens whether or not the run has converged, so each row is also trained for
`--longer` times the epochs (1.33 by default: 80 for 60; same teacher, the schedule
stretched), and the table shows how much lower that run ends. Verdict: `plateau` when
the loss falls by at most `--rtol` x its final value + `--atol` both over the tail and
to the longer run's end (numpy's `isclose`; the absolute part is for losses that end
near 0, such as CE on clean labels, which keep falling towards 0 in relative terms with
train accuracy 1); else `still falling`. Last line per recipe: `plateau=K/N
recipe=...`. Runs use `--threads` CPU threads (1 by default, as a sweep trial).
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kd_tune.cli.args import parse_tau
from kd_tune.cli.sweep import load_spec as load_sweep_spec
from kd_tune.core.config import ConfigError, RunConfig, field_types, preset
from kd_tune.core.identity import teacher_key
from kd_tune.plan.search_space import expand
from kd_tune.teachers.training import train_teacher
from kd_tune.train.teacher_logits import compute_teacher_logits
from kd_tune.train.trainer import TrainResult, load_data, train
from kd_tune.train.validation import validate_run

SWEEPS_DIR = Path(__file__).resolve().parent.parent / "sweeps"
# The noisy-teacher sweep's temperature that neither tau_grid nor label_noise has on clean labels.
NOISY_TEACHER = [{"loss": ["kl"], "tau": [0.5], "alpha": [1.0]}]
SWEEPS = ("tau_grid", "label_noise", "noisy_teacher")


@dataclass(frozen=True)
class RowResult:
    """One row's training losses, means over seeds: ``tail`` epochs before the end, at the end,
    and at the end of the longer run (None without one)."""

    label: str
    noise: str
    loss_before: float
    loss_end: float
    train_acc: float
    test_acc: float
    loss_longer: float | None
    seconds: float

    @property
    def tail_change(self) -> float:
        """Fall of the loss over the tail relative to the final loss, (before - end) / end; > 0 while falling."""
        return (self.loss_before - self.loss_end) / self.loss_end

    @property
    def longer_change(self) -> float | None:
        """How much lower the longer run ends, relative to this run's final loss (> 0: lower)."""
        if self.loss_longer is None:
            return None
        return (self.loss_end - self.loss_longer) / self.loss_end

    def plateau(self, rtol: float, atol: float) -> bool:
        """The loss falls by at most ``rtol * final + atol`` over the tail and to the longer run's end."""
        bound = rtol * self.loss_end + atol
        return self.loss_before - self.loss_end <= bound and (
            self.loss_longer is None or self.loss_end - self.loss_longer <= bound)


def sweep_rows(names: Sequence[str], base: RunConfig) -> list[RunConfig]:
    """The canonical student configs (seed 0) of the named default sweeps, in order, without duplicates."""
    configs: list[RunConfig] = []
    for name in names:
        space = NOISY_TEACHER if name == "noisy_teacher" else _load_spec(name).space
        configs += [c for c in expand(base, space) if c not in configs]
    return configs


def _load_spec(name: str) -> Any:
    return load_sweep_spec(SWEEPS_DIR / f"{name}.py")


def keep(config: RunConfig, args: argparse.Namespace) -> bool:
    """Whether the row filters of the command line keep ``config``."""
    if args.losses and config.loss not in args.losses:
        return False
    if args.taus and config.loss == "kl" and config.tau not in args.taus:
        return False
    if args.alphas and config.loss != "ce" and config.alpha not in args.alphas:
        return False
    if args.noise_rates and config.noise_rate not in args.noise_rates:
        return False
    return not (args.noise_types and config.noise_type != "none" and config.noise_type not in args.noise_types)


def label(config: RunConfig) -> str:
    if config.loss == "ce":
        return "ce"
    tau = "inf" if math.isinf(config.tau) else f"{config.tau:g}"
    return f"kl tau={tau} alpha={config.alpha:g}" if config.loss == "kl" else f"mse alpha={config.alpha:g}"


def noise_label(config: RunConfig) -> str:
    return "clean" if config.noise_type == "none" else f"{config.noise_type} {config.noise_rate:g}"


def parse_recipe(text: str) -> dict[str, Any]:
    """``lr=0.05,epochs=60,schedule=cosine`` -> RunConfig field values (empty text: the preset)."""
    types = field_types()
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in types:
            raise argparse.ArgumentTypeError(f"{part!r} is not FIELD=VALUE with a RunConfig field, e.g. lr=0.05")
        kind = types[name][0]
        try:
            out[name] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"{part!r}: {value!r} is not a {kind.__name__}") from None
    return out


def recipe_text(recipe: dict[str, Any], config: RunConfig) -> str:
    shown = {"lr": config.lr, "epochs": config.epochs, "schedule": config.schedule, **recipe}
    return ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())


def run_rows(rows: list[RunConfig], args: argparse.Namespace, recipe: dict[str, Any]) -> list[RowResult]:
    """Train the rows' teachers (and, if asked, each again for longer), then every row (each
    seed; and longer, if asked) under ``recipe``; print a Markdown table with a row per teacher
    first, then a row per student setting as it ends."""
    configs = [validate_run(c.replace(**{"threads": args.threads, **recipe})) for c in rows]
    tail = max(1, round(args.tail * configs[0].epochs))
    print("\n" + _header(tail, configs[0].epochs, args), flush=True)
    teachers: dict[str, Any] = {}
    results = []
    for config in configs:
        key = teacher_key(config)
        if config.loss != "ce" and key not in teachers:
            started = time.perf_counter()
            data = load_data(config)
            fit = train_teacher(config, data=data)
            teachers[key] = fit.model
            run = config.teacher_config()
            longer = _train(run.replace(epochs=round(args.longer * run.epochs)), data, None) if args.longer else None
            results.append(_result(f"teacher {config.teacher}", config, [fit], longer and [longer], tail, started))
            print(_row_line(results[-1], args), flush=True)
    for config in configs:
        data = load_data(config)
        teacher = teachers.get(teacher_key(config)) if config.loss != "ce" else None
        started = time.perf_counter()
        runs = [_train(config.replace(seed=s), data, teacher) for s in range(args.seeds)]
        longer_runs = None
        if args.longer:
            epochs = round(args.longer * config.epochs)
            longer_runs = [_train(config.replace(seed=s, epochs=epochs), data, teacher) for s in range(args.seeds)]
        results.append(_result(label(config), config, runs, longer_runs, tail, started))
        print(_row_line(results[-1], args), flush=True)
    return results


def _result(name: str, config: RunConfig, runs: Sequence[TrainResult], longer: Sequence[TrainResult] | None,
            tail: int, started: float) -> RowResult:
    """A row from its runs (means over seeds) and, if trained, its longer runs."""
    return RowResult(
        name, noise_label(config),
        loss_before=statistics.mean(r.history[-1 - tail]["train_loss"] for r in runs),
        loss_end=statistics.mean(r.final["train_loss"] for r in runs),
        train_acc=statistics.mean(r.final["train_acc"] for r in runs),
        test_acc=statistics.mean(r.final["test_acc"] for r in runs),
        loss_longer=statistics.mean(r.final["train_loss"] for r in longer) if longer else None,
        seconds=time.perf_counter() - started,
    )


def _train(config: RunConfig, data: Any, teacher: Any) -> TrainResult:
    logits = compute_teacher_logits(teacher, data, config) if teacher is not None else None
    return train(config, data=data, teacher_logits=logits)


def _row_line(r: RowResult, args: argparse.Namespace) -> str:
    longer = r.longer_change
    longer_cells = f" {r.loss_longer:.4f} | {100 * longer:+.1f}% |" if longer is not None else ""
    verdict = "plateau" if r.plateau(args.rtol, args.atol) else "still falling"
    return (f"| {r.label} | {r.noise} | {r.loss_before:.4f} | {r.loss_end:.4f} | {100 * r.tail_change:+.1f}% | "
            f"{r.train_acc:.4f} | {r.test_acc:.4f} |{longer_cells} {verdict} | {r.seconds:.1f} |")


def _header(tail: int, epochs: int, args: argparse.Namespace) -> str:
    longer = round(args.longer * epochs) if args.longer else None
    longer_cells = f" loss @{longer} | @{longer} lower by |" if longer else ""
    head = (f"| row | labels | loss @{epochs - tail} | loss @{epochs} | fall, last {tail} | train acc | test acc |"
            f"{longer_cells} verdict | s |")
    return head + "\n" + "|---" * (head.count("|") - 1) + "|"


def parse_floats(text: str) -> tuple[float, ...]:
    return tuple(parse_tau(part) for part in text.split(",") if part.strip())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python benchmarks/convergence.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=parse_recipe, action="append", metavar="FIELD=V,...",
                        help="a candidate recipe over the cpu preset, e.g. lr=0.05,epochs=60 (repeatable; "
                        "default: the preset itself)")
    parser.add_argument("--seeds", type=int, default=1, help="student seeds per row (default: 1)")
    parser.add_argument("--sweeps", type=lambda t: tuple(t.split(",")), default=SWEEPS,
                        help=f"default sweeps whose rows to train (default: {','.join(SWEEPS)})")
    parser.add_argument("--losses", type=lambda t: tuple(t.split(",")), help="keep these losses, e.g. kl,mse")
    parser.add_argument("--taus", type=parse_floats, help="keep kl rows at these temperatures, e.g. 0.5,3,20,inf")
    parser.add_argument("--alphas", type=parse_floats, help="keep kl/mse rows at these alphas")
    parser.add_argument("--noise-rates", type=parse_floats, help="keep rows at these label-noise rates (0: clean)")
    parser.add_argument("--noise-types", type=lambda t: tuple(t.split(",")),
                        help="keep noisy rows of these types: symmetric, asymmetric")
    parser.add_argument("--tail", type=float, default=0.15,
                        help="fraction of the epochs over which the loss's fall is measured (default: 0.15)")
    parser.add_argument("--longer", type=float, default=1.33, metavar="F",
                        help="also train each row for F times the epochs and compare its final loss; 0: off "
                        "(default: 1.33)")
    parser.add_argument("--rtol", type=float, default=0.05,
                        help="plateau: the loss falls by at most rtol x its final value + atol (default: 0.05)")
    parser.add_argument("--atol", type=float, default=0.005,
                        help="the absolute part of that bound, for losses that end near 0 (default: 0.005)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per run (default: 1, as a sweep trial)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    unknown = [s for s in args.sweeps if s not in SWEEPS]
    if unknown or args.seeds < 1 or not 0 < args.tail < 1 or args.threads < 1 or (args.longer and args.longer <= 1):
        parser.error(f"--sweeps from {','.join(SWEEPS)}; --seeds >= 1; --tail in (0, 1); --threads >= 1; "
                     "--longer > 1 (or 0: off)")
    recipes = args.recipe or [{}]
    try:
        for recipe in recipes:
            preset("cpu", **recipe).validate()
    except (ConfigError, TypeError) as err:
        parser.error(str(err))
    base = preset("cpu")
    rows = [c for c in sweep_rows(args.sweeps, base) if keep(c, args)]
    if not rows:
        parser.error("the filters keep no row")
    print(f"convergence: {len(rows)} rows x {args.seeds} seed(s) x {len(recipes)} recipe(s), "
          f"{args.threads} thread(s) per run", flush=True)
    verdicts = []
    for recipe in recipes:
        config = base.replace(**recipe)
        print(f"\n### recipe {recipe_text(recipe, config)}\n", flush=True)
        results = run_rows(rows, args, recipe)
        held = sum(r.plateau(args.rtol, args.atol) for r in results)
        verdicts.append(f"plateau={held}/{len(results)} recipe={recipe_text(recipe, config)}")
        print(f"\n{verdicts[-1]}: {sum(r.seconds for r in results):.0f}s of training", flush=True)
    print()
    print("\n".join(verdicts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
