"""Searched sweeps: Optuna's TPE draws settings through Ray Tune, ASHA stops the weak ones
early, the best settings are selected on validation accuracy and then confirmed.

Ray Tune's own parts do the searching and stopping: ``OptunaSearch`` (Optuna's
``TPESampler``, seeded by ``--search-seed``) behind a ``ConcurrencyLimiter``, and the
``ASHAScheduler`` (or none), all maximising the objective :data:`OBJECTIVE`, the
validation accuracy each epoch reports. Test accuracy steers nothing.

One sweep, after the checks of :func:`prepare_search`:

1. the teachers and teacher-logit caches the space needs are made first, planned from
   the corner configs of the space and every combination of the choices the teacher
   depends on (a choice of teacher specs; tau and alpha when a chain's steps take the
   trial's loss); a range the teacher would depend on is refused;
2. the search: each draw becomes a planned :class:`~kd_tune.plan.planner.Trial` in one place,
   :class:`SamplePlanner`, Optuna's define-by-run space, called by the searcher in the
   driver; the trial travels as ``{"trial": Trial.to_dict(), "search": {...}}`` like a
   grid's. Every trial trains seed 0 (with ``seeds`` > 1, trial n trains seed n mod
   seeds), or the next seed its setting has not trained yet, so no run is trained
   twice. One seed is the default because ASHA compares trials at a rung: with mixed
   seeds it compares seeds (digits, ``--seeds 3``: MSE trials' validation accuracy at
   epoch 2 was 41% with seed 0 and 24% with seed 1, and ASHA stopped 128 of 129 seed-1
   trials over three searches);
3. selection: the ``confirm_top`` settings with the best mean last-epoch validation
   accuracy over their completed search trials (ASHA-stopped trials never compete);
4. confirmation: each selected setting rerun at full epochs with ``confirm_seeds``
   seeds it did not use in the search, as ordinary trials of the sweep (a grid in the
   Tune experiment ``<sweep>/confirm``); the final pick is the selected setting with the
   best mean validation accuracy over its confirmation seeds (a lucky seed in the
   search does not decide alone). Test accuracy is reported for every selected
   setting; it chose nothing.

``<sweep>/search.json`` (:mod:`kd_tune.results.search_record`) records the drawn trials and the
selection. Rerunning the same command resumes: Tune restores the searcher's state with
the experiment (what Optuna drew and learnt), so finished trials are kept and the
search continues to ``num_samples`` trials.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kd_tune.core import identity
from kd_tune.core.config import ConfigError, RunConfig
from kd_tune.core.status import TrialStatus
from kd_tune.plan.planner import Plan, Trial, plan_trial, plan_trials
from kd_tune.plan.search_space import SampledSpace, canonical
from kd_tune.results.search_record import SearchRecord, SearchTrial, Selected
from kd_tune.results.trial_tables import read_trials
from kd_tune.sweep.options import SweepError, SweepOptions
from kd_tune.sweep.runner import (
    SweepOutcome,
    TuneRun,
    check_manifest,
    check_options,
    concurrency,
    load_plan_data,
    recording,
)
from kd_tune.train.validation import validate_all

# Ray and Optuna (0.24 CPU-s) are imported inside the functions that use it: `import ray` costs 0.5 CPU-s and Ray Tune
# 1.6 CPU-s (measured on a 2-core machine), which the driver's checks, --dry-run and a refused
# command line do without.

log = logging.getLogger(__name__)

OBJECTIVE = "val_acc"
SCHEDULERS = ("asha", "none")
SEARCHES = ("grid", "optuna")
# Optuna user attribute of a drawn trial: its setting key (identity.setting_key).
SETTING_ATTR = "kd_tune.setting"
SEED_ATTR = "kd_tune.seed"
# Seconds between Tune's saves of the experiment state; a trial's end is recorded after the next save.
STATE_SAVE_S = "2"


@dataclass(frozen=True)
class SearchSettings:
    """How a search runs (the command line's search flags).

    ``num_samples`` trials are drawn; ``scheduler`` ``asha`` stops trials early at
    rungs ``grace_period`` x ``reduction_factor``^k epochs, keeping the top
    1/``reduction_factor`` of each rung; ``search_seed`` seeds the TPE sampler; the
    drawn trials take the training seeds 0..``seeds``-1 in turn; ``confirm_top`` settings are
    rerun with ``confirm_seeds`` new seeds each (0: no confirmation).
    """

    num_samples: int = 60
    scheduler: str = "asha"
    grace_period: int = 2
    reduction_factor: float = 3.0
    search_seed: int = 0
    seeds: int = 1
    confirm_top: int = 3
    confirm_seeds: int = 3

    def problems(self, epochs: int) -> list[str]:
        """Every problem with these settings for runs of ``epochs`` epochs, as sentences."""
        p = []
        if self.num_samples < 1:
            p.append(f"--num-samples must be >= 1, got {self.num_samples}")
        if self.scheduler not in SCHEDULERS:
            p.append(f"--scheduler {self.scheduler!r} must be one of {', '.join(SCHEDULERS)}")
        elif self.scheduler == "asha":
            if not 1 <= self.grace_period <= epochs:
                p.append(f"--grace-period {self.grace_period} must be in [1, --epochs {epochs}]: ASHA's first rung "
                         "is at that epoch")
            if not self.reduction_factor > 1:
                p.append(f"--reduction-factor must be > 1, got {self.reduction_factor:g}")
        if self.search_seed < 0:
            p.append(f"--search-seed must be >= 0, got {self.search_seed}")
        if self.seeds < 1:
            p.append(f"--seeds must be >= 1, got {self.seeds}")
        if self.confirm_top < 0:
            p.append(f"--confirm-top must be >= 0, got {self.confirm_top}")
        if self.confirm_seeds < 1:
            p.append(f"--confirm-seeds must be >= 1, got {self.confirm_seeds}")
        return p


@dataclass(frozen=True)
class Search:
    """A searched sweep: the space drawn from, the fixed settings of every run, and how it runs."""

    space: SampledSpace
    base: RunConfig
    settings: SearchSettings

    def manifest(self) -> dict[str, Any]:
        """What ``sweep.json`` records: a rerun under the same name must search the same way.

        The thread count is left out, as trial keys leave it out: a search resumed with
        another ``--cpus-per-trial`` is the same search (each trial records its count).
        """
        base = identity.identity_values(self.base)  # fields added since, at their old value: as before them
        del base["threads"]
        return {"search": {"base": base, "space": self.space.to_json(), **dataclasses.asdict(self.settings)}}

    def params(self) -> dict[str, Any]:
        """The MLflow parent run's params."""
        return {"search": "optuna", "objective": f"{OBJECTIVE} (max)", "space": self.space.text(),
                **dataclasses.asdict(self.settings)}


@dataclass(frozen=True)
class SamplePlanner:
    """Optuna's define-by-run space for Ray's ``OptunaSearch``: the one place a draw becomes a trial.

    Called by the searcher (in the driver) with an Optuna trial; draws a config from
    ``space`` on top of ``base`` and plans it (:func:`kd_tune.plan.planner.plan_trial`, which
    computes its keys). Trial ``n`` trains seed ``n % seeds``, or, when its setting
    trained that seed already, the next seed (cycling through 0..seeds-1, then beyond)
    it has not. Returns the Tune config: ``{"trial": Trial.to_dict(), "search":
    {"number": n, "setting": key}}``.
    """

    space: SampledSpace
    base: RunConfig
    cache_dtype: str | None
    seeds: int = 1

    def __call__(self, ot_trial: Any) -> dict[str, Any]:
        config = self.space.sample(ot_trial, self.base)
        setting = identity.setting_key(config)
        used = {t.user_attrs[SEED_ATTR] for t in ot_trial.study.get_trials(deepcopy=False)
                if t.number != ot_trial.number and t.user_attrs.get(SETTING_ATTR) == setting}
        turn = ((ot_trial.number + i) % self.seeds for i in range(self.seeds))
        seed = next(s for s in itertools.chain(turn, itertools.count(self.seeds)) if s not in used)
        ot_trial.set_user_attr(SETTING_ATTR, setting)
        ot_trial.set_user_attr(SEED_ATTR, seed)
        trial = plan_trial(config.replace(seed=seed), cache_dtype=self.cache_dtype)
        return {"trial": trial.to_dict(), "search": {"number": ot_trial.number, "setting": setting}}


def prepare_search(search: Search, options: SweepOptions) -> Plan:
    """Check everything a search needs before anything is written; return the plan of the stages.

    The plan holds the corner configs of the space (:meth:`SampledSpace.corners`): their
    teachers, teacher-logit caches and data are those of every draw. Raises
    :class:`SweepError` or :class:`~kd_tune.core.config.ConfigError` listing the problems,
    :class:`~kd_tune.data.DataError` for unusable data.
    """
    check_options(options)
    search = with_threads(search, options)
    problems = search.settings.problems(search.base.epochs)
    if search.base.val_size < 1:
        problems.append("a search maximises validation accuracy and needs a validation split: set --val-size > 0 "
                        "(the paper preset holds none out)")
    if problems:
        raise SweepError("; ".join(problems))
    corners = search.space.corners(search.base)
    validate_all(corners)
    _check_one_teacher_per_range(search, corners, options.cache_dtype)
    # Every combination of the choices the teacher depends on (a choice of teacher specs, a
    # chain's default step loss): no draw may need a teacher the stages did not make.
    stages = search.space.tied_combinations(search.base, lambda c: plan_trial(c, cache_dtype=None).teacher_key)
    validate_all(stages)
    # The training seeds matter to the caches of an augmented data set.
    plan = plan_trials([c.replace(seed=s) for c in stages for s in range(search.settings.seeds)],
                       cache_dtype=options.cache_dtype)
    load_plan_data(plan, options)
    check_manifest(options, search.manifest())
    return plan


def with_threads(search: Search, options: SweepOptions) -> Search:
    """``search`` whose base config names its trials' CPU threads (:meth:`SweepOptions.with_threads`)."""
    return dataclasses.replace(search, base=options.with_threads(search.base))


def run_search(
    search: Search,
    options: SweepOptions,
    *,
    finalize: Callable[[Path], list[Path]] | None = None,
) -> SweepOutcome:
    """Run a searched sweep (see the module docstring) and record it; return where the results are.

    ``finalize(sweep_dir)`` runs at the end (the record written) and returns files to
    attach to the MLflow parent run. Raises like :func:`kd_tune.sweep.runner.run_sweep`.
    """
    started = time.perf_counter()
    search = with_threads(search, options)
    stages = prepare_search(search, options)
    settings = search.settings
    with recording(options, search.manifest(), search.params(),
                   done=lambda finished: searched_and_confirmed(SearchRecord.read(options.sweep_dir), settings,
                                                                finished)) as recorder:
        before = SearchRecord.read(options.sweep_dir)
        if recorder.info is None:
            return recorder.ended_before(stages, before.search_keys + before.confirm_keys, finalize, started)
        recorder.stages(stages)
        done = len(recorder.parquet.finished_keys() - set(before.confirm_keys if before else ()))
        slots = concurrency(recorder.info, options)
        log.info(f"search {options.name!r}: {settings.num_samples} trials drawn by TPE, {_stopping(settings)}, "
                 f"maximising {OBJECTIVE} ({done} already finished), up to {slots} at a time; results in "
                 f"{options.sweep_dir}")
        os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", STATE_SAVE_S)
        fit_started = time.perf_counter()
        configs = recorder.fit(
            TuneRun(options.sweep_dir, search_alg=_searcher(search, options.cache_dtype, slots),
                    scheduler=_scheduler(settings, search.base.epochs), num_samples=settings.num_samples,
                    metric=OBJECTIVE, report_epochs=asha_rungs(settings, search.base.epochs)),
            total=settings.num_samples, done=done, hold_new=True)
        trials = {c["trial"]["key"]: Trial.from_dict(c["trial"]) for c in configs}
        drawn = tuple(sorted((SearchTrial(c["search"]["number"], c["trial"]["key"], c["search"]["setting"])
                             for c in configs), key=lambda t: t.number))
        record = SearchRecord(options.name, OBJECTIVE, search.space, dataclasses.asdict(settings), drawn)
        statuses = recorder.parquet.statuses()
        searched = len(drawn) == settings.num_samples and all(t.key in statuses for t in drawn)
        if searched and settings.confirm_top > 0:
            # Selected once: a resumed confirmation keeps the recorded selection.
            selected = before.selected if before and before.selected else \
                _select(record, trials, options.sweep_dir)
            selected, plan = _confirm(dataclasses.replace(record, selected=selected), trials,
                                      settings.confirm_seeds, options.cache_dtype)
            record = dataclasses.replace(record, selected=selected)
            record.write(options.sweep_dir)
            log.info(f"confirmation: the top {len(selected)} setting(s) by {OBJECTIVE}, {settings.confirm_seeds} new "
                     f"seed(s) each, {search.base.epochs} epochs: {len(plan.trials)} trials")
            recorder.stages(plan)
            recorder.fit(TuneRun.grid(options.sweep_dir / "confirm", plan), total=len(plan.trials),
                         done=len(recorder.finished(plan.keys)))
            record = dataclasses.replace(record, pick=_pick(record, options.sweep_dir))
        record.write(options.sweep_dir)
        return recorder.finish(record.search_keys + record.confirm_keys, finalize, started,
                               time.perf_counter() - fit_started, undrawn=settings.num_samples - len(drawn))


def searched_and_confirmed(record: SearchRecord | None, settings: SearchSettings, finished: set[str]) -> bool:
    """Whether the search ``record`` describes is over: every draw of ``settings`` made and
    finished (``finished``: the keys of the trials the results record as finished), and the
    confirmation too, its pick made, when the settings ask for one."""
    if record is None or len(record.trials) != settings.num_samples or not set(record.search_keys) <= finished:
        return False
    return settings.confirm_top == 0 or (record.pick is not None and set(record.confirm_keys) <= finished)


def _stopping(settings: SearchSettings) -> str:
    if settings.scheduler == "none":
        return "no early stopping"
    return f"ASHA stopping from epoch {settings.grace_period} (keeps 1/{settings.reduction_factor:g} per rung)"


def _searcher(search: Search, cache_dtype: str | None, slots: int) -> Any:
    """Ray Tune's OptunaSearch (seeded TPE) over the space, at most ``slots`` trials at once."""
    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # multivariate + group: TPE models the parameters that occur together (a KL draw's tau
    # with its alpha) jointly, the documented way for conditional spaces.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=search.settings.search_seed, multivariate=True, group=True)
    planner = SamplePlanner(search.space, search.base, cache_dtype, search.settings.seeds)
    return ConcurrencyLimiter(OptunaSearch(planner, metric=OBJECTIVE, mode="max", sampler=sampler),
                              max_concurrent=slots)


def _scheduler(settings: SearchSettings, epochs: int) -> Any:
    """ASHA on the epoch count (rungs grace x factor^k < epochs), or None."""
    if settings.scheduler == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="epoch", max_t=epochs, grace_period=settings.grace_period,
                         reduction_factor=settings.reduction_factor)


def asha_rungs(settings: SearchSettings, epochs: int) -> frozenset[int]:
    """The epochs at which ASHA decides (empty without it): the first epoch at or past each rung
    ``grace x factor^k`` below ``epochs`` (one bracket, as Ray Tune's ASHA counts its rungs). A
    trial reports there whatever its schedule, so gathered reports decide as per-epoch ones."""
    if settings.scheduler == "none":
        return frozenset()
    count = int(math.log(epochs / settings.grace_period) / math.log(settings.reduction_factor) + 1)
    return frozenset(math.ceil(settings.grace_period * settings.reduction_factor ** k) for k in range(count))


def _select(record: SearchRecord, trials: Mapping[str, Trial], sweep_dir: Path) -> tuple[Selected, ...]:
    """The ``confirm_top`` settings by mean last-epoch validation accuracy of their completed search trials.

    Ties (accuracy on a small validation set comes in steps) go to the better mean best
    validation accuracy over the epochs, then to the setting drawn first. Only completed
    trials compete: a stopped trial's accuracy is from an earlier epoch.
    """
    rows = read_trials(sweep_dir).to_pandas().set_index("trial_key")
    scores: dict[str, list[tuple[str, float, float]]] = {}
    for drawn in record.trials:
        if drawn.key in rows.index and rows.at[drawn.key, "status"] == TrialStatus.COMPLETED:
            value = float(rows.at[drawn.key, OBJECTIVE])
            if math.isfinite(value):
                scores.setdefault(drawn.setting, []).append((drawn.key, value, float(rows.at[drawn.key,
                                                                                          "best_val_acc"])))
    # dicts keep the order of drawing: sorted() is stable, so full ties go to the earlier draw.
    ranked = sorted(scores.items(), key=lambda item: (-_mean(v for _, v, _ in item[1]),
                                                       -_mean(b for *_, b in item[1])))
    ranked = ranked[:record.settings["confirm_top"]]
    if len(ranked) < record.settings["confirm_top"]:
        log.info(f"only {len(ranked)} setting(s) completed the search; confirming those")
    return tuple(
        Selected(rank=rank, setting=setting, label=record.space.label(trials[group[0][0]].config.to_dict()),
                 val_acc=_mean(v for _, v, _ in group), search_keys=tuple(k for k, *_ in group), confirm_keys=())
        for rank, (setting, group) in enumerate(ranked, 1)
    )


def _pick(record: SearchRecord, sweep_dir: Path) -> int | None:
    """The rank of the selected setting with the best mean validation accuracy over its completed
    confirmation trials (ties: the better rank); None until every confirmation trial has ended."""
    rows = read_trials(sweep_dir).to_pandas().set_index("trial_key")
    if not all(key in rows.index for key in record.confirm_keys):
        return None
    means = {}
    for chosen in record.selected:
        confirm = rows.loc[list(chosen.confirm_keys)]
        values = confirm.loc[confirm["status"] == TrialStatus.COMPLETED, OBJECTIVE].dropna()
        if len(values):
            means[chosen.rank] = float(values.mean())
    return max(means, key=lambda rank: (means[rank], -rank)) if means else None


def _confirm(record: SearchRecord, trials: Mapping[str, Trial], seeds: int,
             cache_dtype: str | None) -> tuple[tuple[Selected, ...], Plan]:
    """The confirmation trials: each selected setting with the first ``seeds`` seeds its search did not use."""
    selected, planned = [], []
    for chosen in record.selected:
        mine = [trials[t.key] for t in record.trials if t.setting == chosen.setting]
        used = {t.config.seed for t in mine}
        fresh = list(itertools.islice((s for s in itertools.count() if s not in used), seeds))
        plan = plan_trials([mine[0].config.replace(seed=s) for s in fresh], cache_dtype=cache_dtype)
        planned += plan.trials
        selected.append(dataclasses.replace(chosen, confirm_keys=tuple(plan.keys)))
    return tuple(selected), Plan(tuple(planned))


def _check_one_teacher_per_range(search: Search, corners: list[RunConfig], cache_dtype: str | None) -> None:
    """A range the teacher depends on (at any corner of the space) would need a teacher per draw: refused."""
    problems = []
    for loss, name, dist in search.space.ranges():
        for corner in corners:
            if loss and corner.loss != loss:
                continue
            ends = [plan_trial(canonical(corner.replace(**{name: x})), cache_dtype=cache_dtype)
                    for x in (dist.low, dist.high)]
            if ends[0].distils and ends[0].teacher_key != ends[1].teacher_key:
                problems.append(f"{name} is drawn from a range, and the teacher depends on it (a teacher trains with "
                                f"its students' data and recipe, and a chain's steps with their loss, tau and alpha "
                                f"unless its spec names them): every draw would need its own teacher; give {name} "
                                "a choice of values (each gets its teacher, trained first) or fix it")
    if problems:
        raise ConfigError(list(dict.fromkeys(problems)))


def _mean(values: Any) -> float:
    values = list(values)
    return sum(values) / len(values)
