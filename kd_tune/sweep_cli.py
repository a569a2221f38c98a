"""The command line every sweep script shares: flags, checks, the run, and the closing table.

A sweep script is a search space and defaults handed to :func:`main`::

    SPEC = SweepSpec(name="tau_grid", description="...", space=TAU_GRID, table="tau_alpha")
    if __name__ == "__main__":
        sys.exit(main(SPEC))

Exit codes: 0 every trial ended (completed or diverged), 1 trials failed, a teacher
failed or the sweep was interrupted (rerun the same command to resume), 2 bad command
line or input (nothing was run or written).
"""
from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kd_tune.cli_args import add_config_arguments, config_from_args
from kd_tune.cluster import ClusterError
from kd_tune.config import ConfigError, RunConfig
from kd_tune.data import DataError
from kd_tune.losses import loss_names
from kd_tune.plan import Plan
from kd_tune.results import ResultsError
from kd_tune.search_space import SearchSpace, expand
from kd_tune.sweep_options import SweepError, SweepOptions
from kd_tune.teacher_store import TeacherError, TeacherStore


def parse_float_list(text: str) -> tuple[float, ...]:
    """Comma-separated numbers, ``inf`` allowed: ``1,3,inf``."""
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers (e.g. 1,3,inf)") from None
    if not values:
        raise argparse.ArgumentTypeError("the list is empty")
    return values


def parse_name_list(text: str) -> tuple[str, ...]:
    """Comma-separated names: ``kl,mse``."""
    values = tuple(part.strip() for part in text.split(",") if part.strip())
    if not values:
        raise argparse.ArgumentTypeError("the list is empty")
    return values


@dataclass(frozen=True)
class Axis:
    """A search axis the command line can replace: ``--flag v1,v2`` sets ``field`` in every block that has it."""

    flag: str
    field: str
    parse: Callable[[str], tuple[Any, ...]]
    help: str


COMMON_AXES = (
    Axis("--taus", "tau", parse_float_list, "temperatures of the kl loss, e.g. 1,3,inf (inf = logit matching)"),
    Axis("--alphas", "alpha", parse_float_list, "KD weights in [0, 1], e.g. 0.1,0.5,1"),
)


@dataclass(frozen=True)
class SweepSpec:
    """A study: its search space, fixed defaults and the table it ends with.

    ``space`` is a sequence of blocks (see :mod:`kd_tune.search_space`); ``defaults``
    override the preset before the user's flags; ``axes`` are extra list flags.
    """

    name: str
    description: str
    space: SearchSpace
    seeds: int = 3
    table: str = "tau_alpha"
    defaults: Mapping[str, Any] = field(default_factory=dict)
    axes: tuple[Axis, ...] = ()


def build_parser(spec: SweepSpec, prog: str | None = None) -> argparse.ArgumentParser:
    axes = COMMON_AXES + spec.axes
    parser = argparse.ArgumentParser(
        prog=prog,
        description=spec.description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_EPILOG,
    )
    run = parser.add_argument_group("where and how it runs")
    run.add_argument("--address", metavar="ADDR",
                     help="Ray cluster to join: auto (started here with `ray start`) or host:port; "
                     "default: $RAY_ADDRESS, else an embedded Ray on this machine")
    run.add_argument("--name", default=spec.name, help=f"sweep name: folder under --storage, MLflow experiment; "
                     f"rerun with the same name to resume (default: {spec.name})")
    run.add_argument("--storage", default="results",
                     help="results folder (default: ./results); on a multi-node cluster a path on a shared file system")
    run.add_argument("--mlflow-uri", metavar="URI",
                     help="MLflow tracking store (default: $MLFLOW_TRACKING_URI, else sqlite:///STORAGE/mlflow.db)")
    run.add_argument("--cpus-per-trial", type=float, default=1.0, metavar="N",
                     help="CPUs per trial and teacher task (default: 1)")
    run.add_argument("--gpus-per-trial", type=float, default=0.0, metavar="N",
                     help="GPUs per trial, fractional allowed, e.g. 0.25 (default: 0)")
    run.add_argument("--max-concurrent", type=int, metavar="N",
                     help="at most N trials at once (default: as resources allow)")
    run.add_argument("--checkpoint-every", type=int, default=5, metavar="EPOCHS",
                     help="checkpoint each trial every EPOCHS epochs and at the end (default: 5)")
    run.add_argument("--max-failures", type=int, default=2, metavar="N", help="retries of a failing trial (default: 2)")
    run.add_argument("--teacher-cache", type=_cache_mode, default="float32", metavar="MODE",
                     help="how distilling trials get the teacher's outputs: float32 (or on) = logits computed once "
                     "per teacher and view set and shared by all trials, exact; float16 = half the cache size, "
                     "changes losses by rounding; off = the teacher runs online in every trial (default: float32)")
    run.add_argument("--dry-run", action="store_true",
                     help="list the trials, teachers and resources; run and write nothing")
    grid = parser.add_argument_group("search space")
    grid.add_argument("--seeds", type=int, default=spec.seeds, metavar="N",
                      help=f"seeds 0..N-1 per setting (default: {spec.seeds})")
    grid.add_argument("--losses", type=parse_name_list, metavar="LIST",
                      help=f"losses to run, from {','.join(_space_losses(spec.space))} (default: all)")
    for axis in axes:
        grid.add_argument(axis.flag, type=axis.parse, dest=f"axis_{axis.field}", metavar="LIST",
                          help=f"{axis.help} (default: {_default_values(spec.space, axis.field)})")
    excluded = ("loss", "seed", *(a.field for a in axes))
    add_config_arguments(parser, exclude=excluded)
    return parser


def expand_args(spec: SweepSpec, args: argparse.Namespace) -> list[RunConfig]:
    """The run configs the parsed flags describe (canonical, unique; not yet validated)."""
    given = vars(args)
    defaults = {k: v for k, v in spec.defaults.items() if k not in given}
    base = config_from_args(argparse.Namespace(**defaults, **given))
    space = _apply_axes(spec.space, args, spec.axes)
    if args.losses is not None:
        unknown = [name for name in args.losses if name not in loss_names()]
        if unknown:
            raise ConfigError([f"--losses: {', '.join(map(repr, unknown))} unknown; "
                               f"allowed: {', '.join(loss_names())}"])
        absent = [name for name in args.losses if name not in _space_losses(space)]
        if absent:
            raise ConfigError([f"--losses: this sweep has no {', '.join(absent)} runs; "
                               f"it has {', '.join(_space_losses(space))}"])
        space = [b for b in space if set(b.get("loss", [base.loss])) & set(args.losses)]
        space = [{**b, "loss": [x for x in b["loss"] if x in args.losses]} if "loss" in b else b for b in space]
    if args.seeds < 1:
        raise ConfigError([f"--seeds must be >= 1, got {args.seeds}"])
    return expand(base, space, seeds=range(args.seeds))


def main(spec: SweepSpec, argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Parse flags, check, run the sweep, print the table and where everything is."""
    parser = build_parser(spec, prog)
    args = parser.parse_args(argv)
    from kd_tune.sweep import prepare, run_sweep

    options = SweepOptions(
        name=args.name, storage=args.storage, address=args.address, mlflow_uri=args.mlflow_uri,
        cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
        max_concurrent=args.max_concurrent, checkpoint_every=args.checkpoint_every,
        max_failures=args.max_failures, teacher_cache=args.teacher_cache,
    )
    try:
        configs = expand_args(spec, args)
        if args.dry_run:
            _print_plan(prepare(configs, options), options)
            return 0
    except (ConfigError, SweepError, DataError) as err:
        parser.error(str(err))
    try:
        # run_sweep repeats every check of the dry run before it writes anything.
        outcome = run_sweep(configs, options, finalize=lambda folder: _write_tables(folder, spec.table))
    except (ClusterError, SweepError, ConfigError, DataError, ResultsError) as err:
        parser.error(str(err))
    except TeacherError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    _print_summary(outcome, spec.table)
    return 0 if not outcome.interrupted and outcome.counts.get("failed", 0) == 0 else 1


def _write_tables(sweep_dir: Path, table: str) -> list[Path]:
    import analysis
    from kd_tune.atomic import write_text

    tables = analysis.build_tables(analysis.load_trials(sweep_dir), table)
    if not tables:
        return []
    out = sweep_dir / "tables"
    paths = []
    for fmt, suffix in (("csv", "csv"), ("md", "md")):
        paths.append(write_text(out / f"{table}.{suffix}", analysis.render(tables, fmt)))
    return paths


def _print_summary(outcome: Any, table: str) -> None:
    from kd_tune.results import epochs_table, trials_table
    from kd_tune.tracking import ui_command

    counts = ", ".join(f"{n} {what}" for what, n in outcome.counts.items() if n)
    print(f"\nsweep finished in {outcome.seconds:.0f}s: {counts}" if not outcome.interrupted
          else f"\nsweep stopped after {outcome.seconds:.0f}s: {counts}; rerun the same command to resume it")
    md = [p for p in outcome.artifacts if p.suffix == ".md"]
    if md:
        print()
        print(md[0].read_text())
    print(f"Parquet:  {trials_table(outcome.sweep_dir).folder}/\n          {epochs_table(outcome.sweep_dir).folder}/")
    for path in outcome.artifacts:
        if path.suffix == ".csv":
            print(f"CSV:      {path}")
    print(f"MLflow:   {outcome.tracking_uri} (experiment {outcome.sweep_dir.name!r})")
    print(f"          {ui_command(outcome.tracking_uri)}")
    print(f"Tables:   python -m analysis {outcome.sweep_dir} --table {table} --format csv --out {table}.csv")


def _print_plan(plan: Plan, options: SweepOptions) -> None:
    store = TeacherStore(options.teachers_dir)
    teachers = plan.teachers()
    print(f"sweep {options.name!r}: {len(plan.trials)} trials, each {options.cpus_per_trial:g} CPU "
          f"and {options.gpus_per_trial:g} GPU; storage {options.sweep_dir}")
    print(f"teachers: {len(teachers)} ({sum(store.has(k) for k in teachers)} already in {store.root}); "
          f"teacher cache: {options.teacher_cache}")
    for key, trial in teachers.items():
        config = trial.config
        print(f"  {key}  {trial.teacher} on {config.dataset} (noise {config.noise_type} {config.noise_rate:g}"
              f"{', clean teacher' if config.clean_teacher else ''}), {config.teacher_epochs or config.epochs} epochs")
    for i, trial in enumerate(plan.trials, 1):
        teacher = trial.teacher_key if trial.distils else "-"
        print(f"  {i:4d}  {trial.key}  {trial.teacher}->{trial.config.student}  {trial.label}  teacher {teacher}")
    print("dry run: nothing was run or written")


def _cache_mode(text: str) -> str:
    # The one check of the mode is SweepOptions.problems(); "on" is its alias for float32.
    return "float32" if text == "on" else text


def _apply_axes(space: SearchSpace, args: argparse.Namespace, extra: tuple[Axis, ...]) -> list[dict[str, Any]]:
    blocks = [dict(b) for b in space]
    for axis in COMMON_AXES + extra:
        values = getattr(args, f"axis_{axis.field}", None)
        if values is None:
            continue
        if not any(axis.field in b for b in blocks):
            raise ConfigError([f"{axis.flag}: this sweep has no {axis.field} axis"])
        blocks = [{**b, axis.field: list(values)} if axis.field in b else b for b in blocks]
    return blocks


def _space_losses(space: SearchSpace) -> list[str]:
    names: list[str] = []
    for block in space:
        for name in block.get("loss", []):
            if name not in names:
                names.append(name)
    return names


def _default_values(space: SearchSpace, name: str) -> str:
    values: list[Any] = []
    for block in space:
        for value in block.get(name, []):
            if value not in values:
                values.append(value)
    return ",".join("inf" if isinstance(v, float) and math.isinf(v) else f"{v:g}" if isinstance(v, float) else str(v)
                    for v in values)


_EPILOG = """\
Results: STORAGE/NAME/results/trials/ (one row per trial) and results/epochs/ (one row per
trial and epoch), folders of Parquet files; tables in STORAGE/NAME/tables/, MLflow runs in
sqlite:///STORAGE/mlflow.db (one parent run per invocation, one child run per trial).
Interrupted? Rerun the same command: finished trials are kept, unfinished ones continue
from their last checkpoint.

On a cluster: `ray start --head` on one node, `ray start --address HEAD:6379` on the
others, then run this with --address auto and --storage on a shared file system.
Exit codes: 0 done, 1 failed trials/teacher or interrupted, 2 bad input (nothing written)."""
