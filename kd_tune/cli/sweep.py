"""The command line every sweep script shares: flags, checks, the run, and the closing table.

A sweep script is a search space and defaults handed to :func:`main`::

    SPEC = SweepSpec(name="tau_grid", description="...", space=TAU_GRID, table="tau_alpha")
    if __name__ == "__main__":
        sys.exit(main(SPEC))

``--search grid`` (the default of a grid sweep) trains every config of the grid;
``--search optuna`` searches the spec's sampled space (``search_space``; without one,
the grid's values as choices) with :mod:`kd_tune.sweep.search`.

Exit codes: 0 every trial ended (completed or diverged), 1 trials failed, a teacher
failed or the sweep was interrupted (rerun the same command to resume), 2 bad command
line or input (nothing was run or written).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import math
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kd_tune.cli.args import add_config_arguments, config_from_args
from kd_tune.core.config import LOSS_OPTIONS, ConfigError, RunConfig
from kd_tune.core.logs import console
from kd_tune.core.status import TrialStatus
from kd_tune.data import DataError
from kd_tune.plan.planner import Plan
from kd_tune.plan.search_space import (
    Choice,
    Distribution,
    SampledSpace,
    SearchSpace,
    expand,
    parse_distribution,
    reading_blocks,
)
from kd_tune.results.trial_tables import ResultsError
from kd_tune.storage.location import Storage
from kd_tune.sweep.cluster import ClusterError
from kd_tune.sweep.options import SweepError, SweepOptions
from kd_tune.sweep.runner import prepare, run_sweep
from kd_tune.sweep.search import SCHEDULERS, SEARCHES, Search, SearchSettings, prepare_search, run_search
from kd_tune.teachers.store import TeacherError, TeacherStore
from kd_tune.tracking.tracker import experiment_url, ui_command
from kd_tune.train.losses import loss_names


def _parse_list(text: str, convert: Callable[[str], Any], what: str) -> tuple[Any, ...]:
    """``text`` split at commas, each part through ``convert``; ``what`` names the list in errors."""
    try:
        values = tuple(convert(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of {what}") from None
    if not values:
        raise argparse.ArgumentTypeError("the list is empty")
    return values


def parse_float_list(text: str) -> tuple[float, ...]:
    """Comma-separated numbers, ``inf`` allowed: ``1,3,inf``."""
    return _parse_list(text, float, "numbers (e.g. 1,3,inf)")


def parse_switch_list(text: str) -> tuple[bool, ...]:
    """Comma-separated switches: ``on,off`` (also true/false, yes/no, 1/0)."""
    words = {"on": True, "true": True, "yes": True, "1": True, "off": False, "false": False, "no": False, "0": False}
    values = []
    for part in (p.strip().lower() for p in text.split(",") if p.strip()):
        if part not in words:
            raise argparse.ArgumentTypeError(f"{part!r} is not on or off (e.g. --standardize on,off)")
        values.append(words[part])
    if not values:
        raise argparse.ArgumentTypeError("the list is empty")
    return tuple(dict.fromkeys(values))


def parse_int_list(text: str) -> tuple[int, ...]:
    """Comma-separated integers: ``0,20``."""
    return _parse_list(text, int, "integers (e.g. 0,20)")


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


@dataclass(frozen=True)
class SpaceFlag:
    """A flag whose value rebuilds the whole space: ``--pairs cnn-32:cnn-4,cnn-8:cnn-32``.

    ``parse`` reads the flag's text (raising ``argparse.ArgumentTypeError``), ``build``
    turns the parsed value into blocks; ``fields`` are the config fields those blocks
    set, which therefore have no flag of their own in that sweep.
    """

    flag: str
    parse: Callable[[str], Any]
    build: Callable[[Any], SearchSpace]
    fields: tuple[str, ...]
    help: str


COMMON_AXES = (
    Axis("--taus", "tau", parse_float_list, "temperatures of kl, dkd and dist, e.g. 1,3,inf (inf = logit matching, kl "
         "only)"),
    Axis("--alphas", "alpha", parse_float_list, "KD weights in [0, 1], e.g. 0.1,0.5,1"),
    # The loss options: an axis goes to the blocks whose losses read it (docs/losses.md).
    Axis("--standardize", "standardize", parse_switch_list,
         "kl and mse: z-score the logits first (kl: logit standardization), e.g. on,off"),
    Axis("--dkd-alpha", "dkd_alpha", parse_float_list, "dkd: weights of the target-class term TCKD, e.g. 1"),
    Axis("--dkd-beta", "dkd_beta", parse_float_list, "dkd: weights of the non-target term NCKD, e.g. 1,4,8"),
    Axis("--dkd-warmup", "dkd_warmup", parse_int_list, "dkd: warmup epochs of the KD term, e.g. 0,20"),
    Axis("--dist-beta", "dist_beta", parse_float_list, "dist: weights of the inter-class term, e.g. 1,2"),
    Axis("--dist-gamma", "dist_gamma", parse_float_list, "dist: weights of the intra-class term, e.g. 1,2"),
)


@dataclass(frozen=True)
class SweepSpec:
    """A study: its search space, fixed defaults and the table it ends with.

    ``space`` is a sequence of blocks (see :mod:`kd_tune.plan.search_space`); ``defaults``
    override the preset before the user's flags; ``axes`` are extra list flags.
    ``search_space`` is what ``--search optuna`` draws from (default: ``space``, each
    axis a choice of its values), ``search`` the default of ``--search`` and
    ``num_samples`` that of ``--num-samples``. ``preset_spaces`` replaces ``space`` under a
    preset (``--preset paper``: the WRN pairs instead of the digits ones); ``space_flag``
    rebuilds it from one flag. ``losses`` is the default of ``--losses`` (empty: every
    loss of the space), so a space may hold blocks that run only when asked for.
    """

    name: str
    description: str
    space: SearchSpace
    seeds: int = 3
    table: str = "tau_alpha"
    defaults: Mapping[str, Any] = field(default_factory=dict)
    axes: tuple[Axis, ...] = ()
    search_space: SampledSpace | None = None
    search: str = "grid"
    num_samples: int = 60
    preset_spaces: Mapping[str, SearchSpace] = field(default_factory=dict)
    space_flag: SpaceFlag | None = None
    losses: tuple[str, ...] = ()

    def space_for(self, preset: str) -> SearchSpace:
        """The grid under ``preset`` (``space`` unless ``preset_spaces`` has its own)."""
        return self.preset_spaces.get(preset, self.space)

    def sampled(self, space: SearchSpace | None = None) -> SampledSpace:
        """The space ``--search optuna`` draws from: ``search_space``, else the grid ``space``
        (default: the spec's own) with each axis a choice of its values."""
        if self.search_space is not None:
            return self.search_space
        return SampledSpace.from_grid(self.space if space is None else space)


# Flags of --search optuna only: (dest, flag). Their argparse default is None, so that
# giving one to a grid sweep is an error rather than silently ignored.
_SEARCH_FLAGS = (("num_samples", "--num-samples"), ("scheduler", "--scheduler"), ("grace_period", "--grace-period"),
                 ("reduction_factor", "--reduction-factor"), ("search_seed", "--search-seed"),
                 ("confirm_top", "--confirm-top"), ("confirm_seeds", "--confirm-seeds"),
                 ("search_space", "--search-space"))


def parse_space_flag(text: str) -> tuple[str, Distribution]:
    """``FIELD=DIST`` of ``--search-space``, e.g. ``lr=loguniform:0.005,0.1`` (see :func:`parse_distribution`)."""
    name, sep, dist = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} is not FIELD=DISTRIBUTION, e.g. alpha=uniform:0,1")
    try:
        return name.strip().replace("-", "_"), parse_distribution(name.strip().replace("-", "_"), dist.strip())
    except ConfigError as err:
        raise argparse.ArgumentTypeError("; ".join(err.problems)) from None


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
    run.add_argument("--storage", default="results", metavar="DIR_OR_URI",
                     help="where results, teachers, caches and Tune's state go: a folder (default: ./results; on a "
                     "multi-node cluster a shared file system) or an object store, s3://bucket/prefix (credentials "
                     "from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the usual AWS chain)")
    run.add_argument("--storage-endpoint", metavar="URL",
                     help="endpoint of an S3-compatible store (MinIO, Ceph), e.g. http://127.0.0.1:9000 "
                     "(default: $AWS_ENDPOINT_URL_S3, else $AWS_ENDPOINT_URL, else AWS)")
    run.add_argument("--local-cache", metavar="DIR",
                     help="node-local folder of the copies of stored teacher-logit caches that trials map, with an "
                     "object-store --storage (default: $KD_TUNE_LOCAL_CACHE, else ~/.cache/kd-tune); see "
                     "`python -m kd_tune.local_copies --help`")
    run.add_argument("--mlflow-uri", metavar="URI",
                     help="MLflow tracking store (default: $MLFLOW_TRACKING_URI, else sqlite:///STORAGE/mlflow.db; "
                     "with an object-store --storage, sqlite:///./mlflow.db on this machine)")
    run.add_argument("--cpus-per-trial", type=float, default=1.0, metavar="N",
                     help="CPUs per trial and teacher task (default: 1)")
    run.add_argument("--gpus-per-trial", type=float, default=0.0, metavar="N",
                     help="GPUs per trial, fractional allowed, e.g. 0.25 (default: 0)")
    run.add_argument("--max-concurrent", type=int, metavar="N",
                     help="at most N trials at once (default: as resources allow)")
    run.add_argument("--checkpoint-every-s", type=float, default=30.0, metavar="SECONDS",
                     help="checkpoint each trial after every SECONDS of training and at its end: a trial killed or "
                     "retried continues from a checkpoint at most that old, and trials shorter than it write one "
                     "checkpoint (default: 30; 0: by --checkpoint-every only)")
    run.add_argument("--checkpoint-every", type=int, default=None, metavar="EPOCHS",
                     help="also checkpoint each trial every EPOCHS epochs (default: off)")
    run.add_argument("--report-every-s", type=float, default=10.0, metavar="SECONDS",
                     help="a trial sends its epochs to the driver together, after every SECONDS of training, at a "
                     "checkpoint, at its end and at a scheduler's rungs; every epoch is recorded either way "
                     "(default: 10; 0: one report per epoch)")
    run.add_argument("--max-failures", type=int, default=2, metavar="N", help="retries of a failing trial (default: 2)")
    run.add_argument("--teacher-cache", type=_cache_mode, default="float32", metavar="MODE",
                     help="how distilling trials get the teacher's outputs: float32 (or on) = logits computed once "
                     "per teacher and view set and shared by all trials, exact; float16 = half the cache size, "
                     "changes losses by rounding; off = the teacher runs online in every trial (default: float32)")
    run.add_argument("--feature-classes", type=_class_list, default=(0, 1, 2), metavar="LIST",
                     help="classes whose test samples' penultimate features are kept in features.parquet for the "
                     "features figure, e.g. 0,1,2 (default: 0,1,2)")
    run.add_argument("--log-models", action="store_true",
                     help="put each trial's final weights in its MLflow run (model/student.pt, loadable with "
                     "--teacher-checkpoint); costs 4 bytes per parameter per trial, e.g. 2.8 MB for WRN-16-2 "
                     "on CIFAR-100 (default: off)")
    run.add_argument("--dry-run", action="store_true",
                     help="list the trials, teachers and resources; run and write nothing")
    defaults = SearchSettings()
    grid = parser.add_argument_group("search space")
    grid.add_argument("--search", choices=SEARCHES, default=spec.search,
                      help=f"grid: train every setting of the grid; optuna: TPE draws --num-samples settings, "
                      f"early stopping, selection, confirmation (default: {spec.search})")
    grid.add_argument("--seeds", type=int, metavar="N",
                      help=f"training seeds 0..N-1: a grid trains each setting with each (default: {spec.seeds}); a "
                      "search's trials take them in turn (default: 1, so that ASHA compares settings, not seeds)")
    grid.add_argument("--losses", type=parse_name_list, metavar="LIST",
                      help=f"losses to run, from {','.join(_losses(spec))} (default: {','.join(spec.losses) or 'all'})")
    for axis in axes:
        grid.add_argument(axis.flag, type=axis.parse, dest=f"axis_{axis.field}", metavar="LIST",
                          help=f"{axis.help}; a search draws from these values (default: {_axis_default(spec, axis)})")
    if spec.space_flag is not None:
        grid.add_argument(spec.space_flag.flag, type=spec.space_flag.parse, dest="space_value", metavar="LIST",
                          help=spec.space_flag.help)
    search = parser.add_argument_group("search (--search optuna)", textwrap.fill(
        "Optuna's TPE (through Ray Tune) draws trials from the space, maximising validation accuracy; ASHA stops "
        f"weak trials early; the top settings are rerun with new seeds. Space: {_search_text(spec)}",
        width=88, initial_indent="  ", subsequent_indent="  "))
    search.add_argument("--num-samples", type=int, metavar="N",
                        help=f"trials the search draws (default: {spec.num_samples})")
    search.add_argument("--search-space", type=parse_space_flag, action="append", metavar="FIELD=DIST",
                        help="draw FIELD from DIST in every block that has it (or in all blocks): choice:V1,V2,..., "
                        "uniform:LOW,HIGH, loguniform:LOW,HIGH; +V adds the value V, e.g. tau=loguniform:0.25,64+inf, "
                        "lr=choice:0.01,0.02,0.05 (repeatable)")
    search.add_argument("--scheduler", choices=SCHEDULERS,
                        help=f"asha: stop trials early (ASHA); none: run every trial to the end "
                        f"(default: {defaults.scheduler})")
    search.add_argument("--grace-period", type=int, metavar="EPOCHS",
                        help=f"ASHA's first rung, in epochs (default: {defaults.grace_period})")
    search.add_argument("--reduction-factor", type=float, metavar="F",
                        help=f"ASHA keeps the top 1/F at each rung; rungs at grace x F^k epochs "
                        f"(default: {defaults.reduction_factor:g})")
    search.add_argument("--search-seed", type=int, metavar="N", help="seed of the TPE sampler (default: 0)")
    search.add_argument("--confirm-top", type=int, metavar="K",
                        help=f"rerun the K best settings by validation accuracy; 0: none "
                        f"(default: {defaults.confirm_top})")
    search.add_argument("--confirm-seeds", type=int, metavar="N",
                        help=f"seeds per rerun, none of them used by that setting in the search "
                        f"(default: {defaults.confirm_seeds})")
    excluded = ("loss", "seed", *(a.field for a in axes), *(spec.space_flag.fields if spec.space_flag else ()))
    add_config_arguments(parser, exclude=excluded)
    return parser


def expand_args(spec: SweepSpec, args: argparse.Namespace) -> list[RunConfig]:
    """The run configs the parsed flags describe (canonical, unique; not yet validated)."""
    base = _base(spec, args)
    given = [flag for dest, flag in _SEARCH_FLAGS if getattr(args, dest, None) is not None]
    if given:
        raise ConfigError([f"{', '.join(given)}: for --search optuna only"])
    if not spec.space:
        raise ConfigError(["this sweep is a search and has no grid: use --search optuna"])
    space = _apply_axes(_space(spec, args), args, spec.axes)
    losses = args.losses if args.losses is not None else spec.losses or None
    if losses is not None:
        _check_losses(losses, _space_losses(space))
        space = [b for b in space if set(b.get("loss", [base.loss])) & set(losses)]
        space = [{**b, "loss": [x for x in b["loss"] if x in losses]} if "loss" in b else b for b in space]
    seeds = spec.seeds if args.seeds is None else args.seeds
    if seeds < 1:
        raise ConfigError([f"--seeds must be >= 1, got {seeds}"])
    return expand(base, space, seeds=range(seeds))


def search_args(spec: SweepSpec, args: argparse.Namespace) -> Search:
    """The search the parsed flags describe (the space checked; settings checked by the runner)."""
    space = spec.sampled(_space(spec, args))
    losses = args.losses if args.losses is not None else spec.losses or None
    if losses is not None:
        _check_losses(losses, space.losses())
        space = space.with_losses(losses)
    for axis in COMMON_AXES + spec.axes:
        values = getattr(args, f"axis_{axis.field}", None)
        if values is not None:
            # A loss option goes to the blocks whose losses read it (a ConfigError when none does).
            if not space.values(axis.field) and axis.field not in LOSS_OPTIONS:
                raise ConfigError([f"{axis.flag}: this sweep has no {axis.field} axis"])
            space = space.replace(axis.field, Choice(tuple(values)))
    for name, dist in args.search_space or ():
        if name == "loss":
            raise ConfigError(["--search-space loss=...: choose the losses with --losses"])
        space = space.replace(name, dist)
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(SearchSettings)
             if getattr(args, f.name, None) is not None}
    settings = SearchSettings(**{"num_samples": spec.num_samples, **given})
    return Search(space, _base(spec, args), settings)


def _space(spec: SweepSpec, args: argparse.Namespace) -> SearchSpace:
    value = getattr(args, "space_value", None)
    return spec.space_for(args.preset) if value is None else spec.space_flag.build(value)


def _base(spec: SweepSpec, args: argparse.Namespace) -> RunConfig:
    given = vars(args)
    defaults = {k: v for k, v in spec.defaults.items() if k not in given}
    return config_from_args(argparse.Namespace(**defaults, **given))


def _check_losses(wanted: Sequence[str], present: Sequence[str]) -> None:
    unknown = [name for name in wanted if name not in loss_names()]
    if unknown:
        raise ConfigError([f"--losses: {', '.join(map(repr, unknown))} unknown; allowed: {', '.join(loss_names())}"])
    absent = [name for name in wanted if name not in present]
    if absent:
        raise ConfigError([f"--losses: this sweep has no {', '.join(absent)} runs; it has {', '.join(present)}"])


def load_spec(script: str | Path) -> SweepSpec:
    """The ``SPEC`` of a sweep script (``sweeps/tau_grid.py``), read without running its ``main``."""
    path = Path(script)
    loader = importlib.util.spec_from_file_location(f"sweep_{path.stem}", path)
    if loader is None or loader.loader is None:
        raise FileNotFoundError(f"no sweep script at {path}")
    module = importlib.util.module_from_spec(loader)
    sys.modules[loader.name] = module  # a dataclass in the script looks its module up while it loads
    loader.loader.exec_module(module)
    return module.SPEC


def options_from_args(args: argparse.Namespace) -> SweepOptions:
    """The :class:`SweepOptions` a sweep's parsed command line asks for."""
    return SweepOptions(
        name=args.name, storage=args.storage, address=args.address, mlflow_uri=args.mlflow_uri,
        cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial,
        max_concurrent=args.max_concurrent, checkpoint_every=args.checkpoint_every,
        checkpoint_every_s=args.checkpoint_every_s, report_every_s=args.report_every_s,
        max_failures=args.max_failures, teacher_cache=args.teacher_cache,
        feature_classes=args.feature_classes, log_models=args.log_models,
        storage_endpoint=args.storage_endpoint, local_cache=args.local_cache,
    )


def main(spec: SweepSpec, argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Parse flags, check, run the sweep (a grid or a search), print the table and where everything is."""
    parser = build_parser(spec, prog)
    args = parser.parse_args(argv)
    console()

    options = options_from_args(args)
    searching = args.search == "optuna"
    table = "search" if searching else spec.table
    try:
        if searching:
            search = search_args(spec, args)
            if args.dry_run:
                _print_search(prepare_search(search, options), search, options)
                return 0
        else:
            configs = expand_args(spec, args)
            if args.dry_run:
                _print_plan(prepare(configs, options), options)
                return 0
    except (ConfigError, SweepError, DataError) as err:
        parser.error(str(err))
    try:
        # The runners repeat every check of the dry run before they write anything.
        if searching:
            outcome = run_search(search, options, finalize=_publishing(options, lambda sweep: [
                *_write_search_views(sweep), *_write_figures(sweep)]))
        else:
            outcome = run_sweep(configs, options, finalize=_publishing(options, lambda sweep: [
                *_write_tables(sweep, spec.table), *_write_figures(sweep)]))
    except (ClusterError, SweepError, ConfigError, DataError, ResultsError) as err:
        parser.error(str(err))
    except TeacherError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    _print_summary(outcome, table)
    return 0 if not outcome.interrupted and outcome.counts.get(TrialStatus.FAILED, 0) == 0 else 1


def _publishing(options: SweepOptions, write: Callable[[Storage], list[Path | str]]) -> Callable[[Storage], list[Path]]:
    """The sweep's ``finalize``: ``write(sweep)`` reads the results from the sweep's storage and
    writes its views (tables, figures) into it; returns them as local files, for MLflow and
    the closing summary. On an object store those are copies in the driver's folder
    (:attr:`SweepOptions.driver_dir`) of the files just uploaded."""
    def publish(sweep: Storage) -> list[Path]:
        written = write(sweep)
        if sweep.is_local:
            return [Path(p) for p in written]
        local = options.driver_dir
        return [sweep.download(rel, local / rel) for rel in (str(uri)[len(sweep.uri) + 1:] for uri in written)]

    return publish


def _write_search_views(sweep: Storage) -> list[Path | str]:
    from analysis.study import write_study_views

    return _write_tables(sweep, "search") + write_study_views(sweep)


def _write_tables(sweep: Storage, table: str) -> list[Path | str]:
    import analysis
    from analysis.render import write_tables
    from analysis.search_table import load_records

    tables = analysis.build_tables(analysis.load_trials(sweep), table, records=load_records(sweep),
                                   teachers=analysis.load_teachers(sweep))
    return write_tables(sweep / "tables", table, tables) if tables else []


def _write_figures(sweep: Storage) -> list[Path | str]:
    """The figures that fit the sweep's results, in ``figures/`` of the sweep (PNG and PDF).

    A figure that cannot be drawn is reported (logger ``analysis.figures``) and left out: the results
    are recorded already.
    """
    from analysis.figures import write_figures

    return write_figures(sweep, sweep / "figures")


def _print_summary(outcome: Any, table: str) -> None:
    counts = ", ".join(f"{n} {what}" for what, n in outcome.counts.items() if n)
    print(f"\nsweep finished in {outcome.seconds:.0f}s: {counts}" if not outcome.interrupted
          else f"\nsweep stopped after {outcome.seconds:.0f}s: {counts}; rerun the same command to resume it")
    if not outcome.trained:
        print("nothing was trained: every trial had finished before this run; the tables and figures below "
              "were written again from the results")
    for path in outcome.artifacts:
        if path.suffix == ".md" and path.stem in (table, "importances"):
            print()
            print(path.read_text())
    for warning in outcome.warnings:
        print(f"warning: {warning}")
    print(f"Parquet:  {outcome.sweep_dir.uri_of('results/trials')}/\n"
          f"          {outcome.sweep_dir.uri_of('results/epochs')}/")
    for path in outcome.artifacts:
        if path.suffix in (".csv", ".png"):
            print(f"{'CSV:' if path.suffix == '.csv' else 'Figure:':<10}{path}")
    if table == "search":
        from analysis.study import study_storage

        print(f"Optuna:   {study_storage(outcome.sweep_dir)} (study {outcome.sweep_dir.name!r})")
    print(f"MLflow:   {outcome.tracking_uri} (experiment {outcome.sweep_dir.name!r})")
    print(f"          {ui_command(outcome.tracking_uri)}")
    if outcome.experiment_id is not None:
        print(f"          {experiment_url(outcome.tracking_uri, outcome.experiment_id)}")
    figures = [p for p in outcome.artifacts if p.suffix == ".png"]
    if figures:
        print(f"Figures:  {figures[0].parent} ({len(figures)} PNG + PDF)")
        if not outcome.sweep_dir.is_local:
            print(f"          {outcome.sweep_dir.uri_of('figures')}/ (uploaded)")
    print(f"Tables:   python -m analysis {outcome.sweep_dir} --table {table} --format csv --out {table}.csv")


def _print_plan(plan: Plan, options: SweepOptions) -> None:
    print(f"sweep {options.name!r}: {len(plan.trials)} trials, each {options.cpus_per_trial:g} CPU "
          f"and {options.gpus_per_trial:g} GPU; storage {options.sweep_dir}")
    _print_teachers(plan, options)
    for i, trial in enumerate(plan.trials, 1):
        teacher = trial.teacher_key if trial.distils else "-"
        print(f"  {i:4d}  {trial.key}  {trial.teacher}->{trial.config.student}  {trial.label}  teacher {teacher}")
    print("dry run: nothing was run or written")


def _class_list(text: str) -> tuple[int, ...]:
    """Comma-separated class indices: ``0,1,2``."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of class indices (e.g. 0,1,2)") \
            from None


def _cache_mode(text: str) -> str:
    # The one check of the mode is SweepOptions.problems(); "on" is its alias for float32.
    return "float32" if text == "on" else text


def _apply_axes(space: SearchSpace, args: argparse.Namespace, extra: tuple[Axis, ...]) -> list[dict[str, Any]]:
    blocks = [dict(b) for b in space]
    for axis in COMMON_AXES + extra:
        values = getattr(args, f"axis_{axis.field}", None)
        if values is None:
            continue
        # A loss option goes to the blocks whose losses read it, whether they list it or not.
        chosen = reading_blocks(axis.field, blocks) if axis.field in LOSS_OPTIONS else \
            [i for i, b in enumerate(blocks) if axis.field in b]
        if not chosen:
            what = f"no loss of this sweep reads {axis.field}" if axis.field in LOSS_OPTIONS else \
                f"this sweep has no {axis.field} axis"
            raise ConfigError([f"{axis.flag}: {what}"])
        blocks = [{**b, axis.field: list(values)} if i in chosen else b for i, b in enumerate(blocks)]
    return blocks


def _print_search(stages: Plan, search: Search, options: SweepOptions) -> None:
    settings = search.settings
    print(f"search {options.name!r}: {settings.num_samples} trials drawn by TPE (seed {settings.search_seed}) from "
          f"{search.space.text()}, {_seeds(settings.seeds)}; scheduler {settings.scheduler}"
          + (f" (grace {settings.grace_period} epochs, factor {settings.reduction_factor:g})"
             if settings.scheduler == "asha" else "")
          + f"; then the top {settings.confirm_top} rerun with {settings.confirm_seeds} new seeds each; "
          f"{search.base.epochs} epochs, each trial {options.cpus_per_trial:g} CPU and {options.gpus_per_trial:g} GPU; "
          f"storage {options.sweep_dir}")
    _print_teachers(stages, options)
    print("dry run: nothing was run or written")


def _print_teachers(plan: Plan, options: SweepOptions) -> None:
    """The teacher DAG: every node the plan needs, in the order it is made, and whether it is stored."""
    store = TeacherStore(options.teachers_dir)
    nodes = plan.teacher_nodes
    print(f"teachers: {len(nodes)} ({sum(store.has(k) for k in nodes)} already in {store.root}); "
          f"teacher cache: {options.teacher_cache}")
    number = {key: i for i, key in enumerate(nodes, 1)}
    for key, node in nodes.items():
        run = node.run
        if node.kind == "ensemble":
            made = "mean logits of " + ", ".join(f"#{number[k]}" for k in node.sources)
        elif node.kind == "sequential":
            loss = f"{run.loss}{f' tau={run.tau:g}' if run.loss == 'kl' else ''} alpha={run.alpha:g}"
            made = f"{loss} from #{number[node.sources[0]]}, seed {run.seed}, {run.epochs} epochs"
        else:
            made = f"CE, seed {run.seed}, " + (f"stopped after epoch {node.stop_epoch} of {run.epochs}"
                                                if node.stop_epoch else f"{run.epochs} epochs")
        noise = f", noise {run.noise_type} {run.noise_rate:g}" if run.noise_type != "none" else ""
        print(f"  #{number[key]:<3d} {key}  {node.kind:<12s} {node.spec}: {made} on {run.dataset}{noise}  "
              f"[{'stored' if store.has(key) else 'to train' if node.trains else 'to make'}]")


def _search_text(spec: SweepSpec) -> str:
    try:
        return spec.sampled().text()
    except ConfigError as err:
        # A grid whose blocks share a loss (a block per teacher/student pair) is no sampled space.
        return f"none: this grid cannot be searched ({err.problems[0]})"


def _seeds(seeds: int) -> str:
    return "every trial seed 0" if seeds == 1 else f"training seeds 0-{seeds - 1} in turn"


def _losses(spec: SweepSpec) -> list[str]:
    return _space_losses(spec.space) if spec.space else spec.sampled().losses()


def _axis_default(spec: SweepSpec, axis: Axis) -> str:
    if spec.space:
        return _default_values(spec.space, axis.field)
    return spec.sampled().values(axis.field)


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
    if not values and name in LOSS_OPTIONS:
        return f"{_option_text(LOSS_OPTIONS[name].default)}, published, for {' and '.join(LOSS_OPTIONS[name].losses)}"
    return ",".join(_option_text(v) for v in values)


def _option_text(v: Any) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    return "inf" if isinstance(v, float) and math.isinf(v) else f"{v:g}" if isinstance(v, float) else str(v)


_EPILOG = """\
A search (--search optuna) maximises validation accuracy; test accuracy is only reported.
It ends with the search table (selected settings, confirmation), parameter importances
and the optimisation history (NAME/tables/, NAME/figures/, STORAGE/optuna.db).

Results: STORAGE/NAME/results/trials/ (one row per trial) and results/epochs/ (one row per
trial and epoch), folders of Parquet files; per-sample end measurements in
samples.parquet/ and features in features.parquet/, tables in STORAGE/NAME/tables/,
figures in STORAGE/NAME/figures/, MLflow runs in sqlite:///STORAGE/mlflow.db (one parent
run per invocation, one child run per trial and per teacher). Interrupted? Rerun the same
command: finished trials are kept, unfinished ones continue from their last checkpoint.

On a cluster: `ray start --head` on one node, `ray start --address HEAD:6379` on the
others, then run this with --address auto and --storage on a shared file system.
Exit codes: 0 done, 1 failed trials/teacher or interrupted, 2 bad input (nothing written)."""
