"""Optuna's own views of a searched sweep: its study rebuilt from ``trials.parquet``.

    python -m analysis.study results/tau_search      # tables, figures and the Optuna storage

:func:`rebuild_study` makes an Optuna study from the sweep's rows and its record
(``search.json``): one trial per drawn trial in the order Optuna drew them, with the
parameters the space drew (:meth:`~kd_tune.plan.search_space.SampledSpace.params`, read back
from the run's config) and their distributions. The value is the last-epoch validation
accuracy (a fraction) of a completed trial; a trial the scheduler stopped early is
PRUNED with its validation accuracy at the epoch it stopped as an intermediate value; a
diverged or failed one is FAIL. Confirmation trials are not part of it.

:func:`write_study_views` keeps the study in an Optuna storage, SQLite at
``STORAGE/optuna.db`` (study name = the sweep's name), so Optuna's tools open it
(``optuna.load_study(study_name=NAME, storage="sqlite:///STORAGE/optuna.db")``,
``optuna-dashboard sqlite:///STORAGE/optuna.db``), and writes the parameter
importances (Optuna's default evaluator, PED-ANOVA, which handles conditional
parameters such as tau) and the optimisation history as tables
(``NAME/tables/importances.{csv,md}``, ``history.{csv,md}``) and as Optuna's matplotlib
figures (``NAME/figures/param_importances.png``, ``optimization_history.png``).

The sweep folder may be on an object store (``s3://bucket/prefix/NAME`` or a
:class:`~kd_tune.storage.Storage`): the results and ``search.json`` are read from it and
the tables and figures written into it. SQLite cannot live there, so by default the
study is kept in a local copy of ``STORAGE/optuna.db`` (downloaded first when it exists,
so other sweeps' studies stay) that is uploaded back whole when written; download it to
open it with Optuna's tools.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from analysis.figures import pyplot
from analysis.results_io import load_trials
from kd_tune.core.status import TrialStatus
from kd_tune.results.search_record import SearchRecord
from kd_tune.storage import Storage, located, open_storage

STUDY_DB = "optuna.db"


def study_storage(sweep_dir: str | Path | Storage) -> str:
    """The Optuna storage URL of a sweep's study: SQLite beside the sweep folder (``STORAGE/optuna.db``).

    For a sweep on an object store this is the URI of that file (``s3://.../optuna.db``), not
    an Optuna URL: download the file and open it as ``sqlite:///FILE``.
    """
    sweep = open_storage(sweep_dir)
    if sweep.is_local:
        return "sqlite:///" + str(sweep.local_path.parent / STUDY_DB)
    return sweep.parent.uri_of(STUDY_DB)


@contextlib.contextmanager
def _study_db(sweep: Storage) -> Iterator[str]:
    """The Optuna storage URL to write the sweep's study into; for an object store a local copy of
    ``STORAGE/optuna.db``, uploaded back whole at the end of the block."""
    if sweep.is_local:
        yield study_storage(sweep)
        return
    with tempfile.TemporaryDirectory(prefix="kd-tune-optuna-") as folder:
        db = Path(folder) / STUDY_DB
        if sweep.parent.is_file(STUDY_DB):
            sweep.parent.download(STUDY_DB, db)
        yield "sqlite:///" + str(db)
        sweep.parent.upload(db, STUDY_DB)


def rebuild_study(trials: pd.DataFrame, record: SearchRecord, *, storage: str | None = None) -> Any:
    """The search of ``record`` as an Optuna study (see the module docstring); in memory without ``storage``.

    In a ``storage``, a study of the same name is replaced. Trials without a row yet
    (an interrupted search) are left out.
    """
    rows = trials[trials["sweep"] == record.sweep].set_index("trial_key")
    distributions = record.space.distributions()
    made = []
    for drawn in record.trials:
        if drawn.key not in rows.index:
            continue
        row = rows.loc[drawn.key]
        params = record.space.params(row)
        value, status = float(row[record.objective]), row["status"]
        attrs = {"trial_key": drawn.key, "status": status, "label": record.space.label(row), "epoch": int(row["epoch"])}
        state, intermediate = optuna.trial.TrialState.FAIL, None
        if status == TrialStatus.COMPLETED and math.isfinite(value):
            state = optuna.trial.TrialState.COMPLETE
        elif status == TrialStatus.STOPPED and math.isfinite(value):
            state, intermediate = optuna.trial.TrialState.PRUNED, {int(row["epoch"]): value}
        made.append(optuna.trial.create_trial(
            state=state, value=value if state == optuna.trial.TrialState.COMPLETE else None, params=params,
            distributions={name: distributions[name] for name in params}, user_attrs=attrs,
            intermediate_values=intermediate))
    if storage is not None and record.sweep in optuna.get_all_study_names(storage):
        optuna.delete_study(study_name=record.sweep, storage=storage)
    study = optuna.create_study(study_name=record.sweep, storage=storage, direction="maximize")
    study.add_trials(made)
    return study


def importances(study: Any) -> pd.DataFrame:
    """Parameter -> importance (summing to 1, largest first); empty when too few trials completed."""
    try:
        found = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError):
        found = {}
    return pd.DataFrame({"parameter": list(found), "importance": list(found.values())})


def history(study: Any) -> pd.DataFrame:
    """One row per trial in drawing order: number, trial key, setting, state, the epoch it ended at,
    its validation accuracy there and the best of the completed trials so far (percent)."""
    out, best = [], math.nan
    for trial in study.trials:
        ended = trial.value if trial.value is not None else next(iter(trial.intermediate_values.values()), None)
        if trial.value is not None and not trial.value * 100.0 <= best:
            best = 100.0 * trial.value
        out.append({"number": trial.number, "trial_key": trial.user_attrs["trial_key"],
                    "setting": trial.user_attrs["label"], "state": trial.state.name.lower(),
                    "epoch": trial.user_attrs["epoch"], "val_acc": 100.0 * ended if ended is not None else math.nan,
                    "best_val_acc": best})
    return pd.DataFrame(out, columns=["number", "trial_key", "setting", "state", "epoch", "val_acc", "best_val_acc"])


def write_study_views(sweep_dir: str | Path | Storage, *, storage: str | None = None) -> list[Path | str]:
    """Rebuild the sweep's study into ``storage`` (default :func:`study_storage`; for a sweep on
    an object store, ``optuna.db`` beside it, see the module docstring) and write its views.

    Returns the files written (tables, then figures): local Paths, or URIs (str) on an
    object store. Raises FileNotFoundError when the folder holds no searched sweep.
    """
    sweep = open_storage(sweep_dir)
    record = SearchRecord.read(sweep)
    if record is None:
        raise FileNotFoundError(f"{located(sweep)}: no search.json; not a searched sweep (--search optuna)")
    trials = load_trials(sweep)
    with contextlib.nullcontext(storage) if storage else _study_db(sweep) as url:
        study = rebuild_study(trials, record, storage=url)
    paths: list[Path | str] = []
    ranked = importances(study)
    views = (("importances", ranked, f"parameter importances for {record.objective} (Optuna, PED-ANOVA)"),
             ("history", history(study), f"optimisation history ({record.objective} in %)"))
    for name, frame, title in views:
        for rel, text in ((f"tables/{name}.csv", frame.to_csv(index=False)),
                          (f"tables/{name}.md", f"### {record.sweep}: {title}\n\n" + markdown(frame))):
            sweep.write_text(rel, text)
            paths.append(located(sweep, rel))
    if any(t.state.name == "COMPLETE" for t in study.trials):
        pyplot("Agg")
        # Imported here, not at the top: it imports matplotlib, about 0.28 s of CPU more for `import analysis.study`
        # (measured: median of 5 timed imports after analysis.study, on 2 shared cores), which rebuilding a study
        # (rebuild_study, importances, history) or asking for its storage (study_storage) would pay for nothing.
        import optuna.visualization.matplotlib as plots

        paths.append(_figure(sweep, "figures/optimization_history.png", plots.plot_optimization_history, study))
        if len(ranked):
            paths.append(_figure(sweep, "figures/param_importances.png", plots.plot_param_importances, study))
    return paths


def markdown(frame: pd.DataFrame) -> str:
    """A frame as a Markdown table (floats with 4 significant digits)."""
    def cell(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "|".join("---" for _ in frame.columns) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _figure(sweep: Storage, rel: str, plot: Callable[[Any], Any], study: Any) -> Path | str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        axes = plot(study)
    figure = axes.figure
    figure.set_size_inches(7, 4.5)
    with sweep.writer(rel) as handle:
        figure.savefig(handle, format="png", dpi=120, bbox_inches="tight")
    pyplot().close(figure)
    return located(sweep, rel)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", metavar="SWEEP_DIR",
                        help="a searched sweep's folder (holding search.json), local or s3://bucket/prefix/NAME")
    parser.add_argument("--storage", metavar="URL",
                        help="Optuna storage to keep the study in (default: sqlite:///STORAGE/optuna.db)")
    args = parser.parse_args(argv)
    try:
        paths = write_study_views(args.sweep_dir, storage=args.storage)
    except (FileNotFoundError, ValueError) as exc:
        parser.error(str(exc))
    sweep = open_storage(args.sweep_dir)
    print(sweep.read_text("tables/importances.md"))
    for path in paths:
        print(f"wrote {path}")
    print(f"study {sweep.name!r} in {args.storage or study_storage(sweep)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
