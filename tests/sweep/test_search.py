"""The search's parts without a cluster: the planner of drawn trials (a real Optuna study),
the settings' checks, the study rebuilt from real Parquet rows, and the search table."""
from __future__ import annotations

import math

import optuna
import pytest
from recorded import BASE, SPACE, recorded_search

from analysis import build_tables, load_trials, render
from analysis.study import history, importances, rebuild_study, write_study_views
from kd_tune.core.config import ConfigError
from kd_tune.core.identity import setting_key, trial_key
from kd_tune.plan.planner import Trial
from kd_tune.plan.search_space import SampledSpace, loguniform
from kd_tune.results.search_record import SearchRecord
from kd_tune.sweep.options import SweepError, SweepOptions
from kd_tune.sweep.runner import write_manifest
from kd_tune.sweep.search import SamplePlanner, Search, SearchSettings, prepare_search

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_the_planner_plans_each_draw_once_and_a_repeated_setting_trains_the_next_seed():
    space = SampledSpace.of({"loss": ["kl", "mse"], "alpha": [0.5, 1.0]})  # 4 settings
    planner = SamplePlanner(space, BASE, "float32", seeds=1)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = []
    for number in range(12):
        config = planner(study.ask())
        assert config["search"]["number"] == number
        drawn.append((Trial.from_dict(config["trial"]), config["search"]["setting"]))
    seeds: dict[str, list[int]] = {}
    for trial, setting in drawn:
        assert trial.key == trial_key(trial.config) and setting == setting_key(trial.config)
        assert trial.cache_key is not None and trial.distils
        seeds.setdefault(setting, []).append(trial.config.seed)
    assert len(seeds) == 4 and all(s == list(range(len(s))) for s in seeds.values())
    assert len({t.key for t, _ in drawn}) == 12


def test_drawn_trials_take_the_training_seeds_in_turn():
    planner = SamplePlanner(SPACE, BASE, None, seeds=3)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=2))
    seeds = [Trial.from_dict(planner(study.ask())["trial"]).config.seed for _ in range(7)]
    assert seeds == [0, 1, 2, 0, 1, 2, 0]  # a continuous space: every setting is new
    one = SamplePlanner(SampledSpace.of({"alpha": [0.5]}), BASE, None, seeds=3)  # a single setting
    study = optuna.create_study(direction="maximize")
    seeds = [Trial.from_dict(one(study.ask())["trial"]).config.seed for _ in range(5)]
    assert seeds == [0, 1, 2, 3, 4]


def test_a_draw_of_mse_carries_no_tau_parameter():
    planner = SamplePlanner(SPACE, BASE, None)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(20):
        ot_trial = study.ask()
        trial = Trial.from_dict(planner(ot_trial)["trial"])
        assert ("tau" in ot_trial.params or "tau_point" in ot_trial.params) == (trial.config.loss == "kl")
        assert trial.cache_key is None  # the teacher runs online without a cache
        assert SPACE.params(trial.config.to_dict()) == ot_trial.params


@pytest.mark.parametrize(("settings", "epochs", "message"), [
    (SearchSettings(num_samples=0), 3, "--num-samples must be >= 1, got 0"),
    (SearchSettings(grace_period=4), 3, "--grace-period 4 must be in [1, --epochs 3]"),
    (SearchSettings(reduction_factor=1), 3, "--reduction-factor must be > 1"),
    (SearchSettings(scheduler="hyperband"), 3, "--scheduler 'hyperband' must be one of asha, none"),
    (SearchSettings(confirm_seeds=0), 3, "--confirm-seeds must be >= 1"),
])
def test_settings_problems(settings, epochs, message):
    assert any(message in p for p in settings.problems(epochs))
    assert SearchSettings(grace_period=4, scheduler="none").problems(3) == []


def test_a_search_needs_validation_data_and_one_teacher_per_range(tmp_path):
    options = SweepOptions(name="s", storage=tmp_path)
    with pytest.raises(SweepError, match="needs a validation split"):
        prepare_search(Search(SPACE, BASE.replace(val_size=0), SearchSettings()), options)
    with pytest.raises(ConfigError, match="lr is drawn from a range, and the teacher depends on it"):
        prepare_search(Search(SPACE.replace("lr", loguniform(0.005, 0.1)), BASE, SearchSettings()), options)
    # A choice of lr values is fine: each gets its teacher; a CE-only space needs no teacher.
    plan = prepare_search(Search(SPACE.replace("lr", SampledSpace.of({"lr": [0.01, 0.05]}).blocks[0][0][1]),
                                 BASE, SearchSettings()), options)
    assert len(plan.teacher_nodes) == 2
    ce = SampledSpace.of({"loss": ["ce"], "lr": loguniform(0.005, 0.1)})
    assert prepare_search(Search(ce, BASE, SearchSettings()), options).teacher_nodes == {}
    assert not tmp_path.joinpath("s").exists()


def test_a_choice_of_teacher_specs_gets_every_teacher_a_draw_can_need(tmp_path):
    # A chain's default step takes the trial's loss, tau and alpha: every combination is a teacher.
    teachers = ["cnn-8", "cnn-8>cnn-4", "2xcnn-4"]
    space = SampledSpace.of({"loss": ["kl"], "teacher": teachers, "tau": [1.0, 3.0], "alpha": [0.5, 1.0]},
                            {"loss": ["mse"], "teacher": teachers, "alpha": [0.5, 1.0]})
    plan = prepare_search(Search(space, BASE, SearchSettings()), SweepOptions(name="s", storage=tmp_path))
    kinds = [node.kind for node in plan.teacher_nodes.values()]
    # cnn-8; a step per kl (tau, alpha) and per mse alpha; two cnn-4 seeds and their ensemble.
    assert kinds.count("sequential") == 4 + 2 and kinds.count("ensemble") == 1 and len(kinds) == 1 + 6 + 3
    planner = SamplePlanner(space, BASE, "float32")
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=3))
    drawn = [Trial.from_dict(planner(study.ask())["trial"]) for _ in range(40)]
    assert {t.config.teacher for t in drawn} == {"cnn-8", "cnn-8>cnn-4", "2xcnn-4"}
    assert all(t.teacher_key in plan.teacher_nodes and t.cache_key in plan.caches() for t in drawn)
    # A range the chain's steps depend on would need a teacher per draw.
    ranged = space.replace("tau", loguniform(1, 10))
    with pytest.raises(ConfigError, match="tau is drawn from a range, and the teacher depends on it"):
        prepare_search(Search(ranged, BASE, SearchSettings()), SweepOptions(name="s", storage=tmp_path))
    fixed = SampledSpace.of({"loss": ["kl"], "teacher": ["cnn-8", "cnn-8>cnn-4[kl:3]"], "tau": loguniform(1, 10)})
    assert len(prepare_search(Search(fixed, BASE, SearchSettings()),
                              SweepOptions(name="s", storage=tmp_path)).teacher_nodes) == 2


def test_a_name_reused_for_another_search_is_refused(tmp_path):
    options = SweepOptions(name="s", storage=tmp_path)
    search = Search(SPACE, BASE, SearchSettings(num_samples=10))
    write_manifest(options, search.manifest(), "sqlite:///unused.db")
    prepare_search(search, options)  # the same search resumes
    # ... on other resources too: the thread count is where trials run, not what is searched.
    prepare_search(search, SweepOptions(name="s", storage=tmp_path, cpus_per_trial=2))
    with pytest.raises(SweepError, match=r"was started with other search settings \(num_samples\)"):
        prepare_search(Search(SPACE, BASE, SearchSettings(num_samples=20)), options)
    with pytest.raises(SweepError, match="was started with other search settings \\(base\\)"):
        prepare_search(Search(SPACE, BASE.replace(lr=0.1), SearchSettings(num_samples=10)), options)


# -- the study and the table, from real Parquet rows -------------------------------------------


def test_the_rebuilt_study_holds_the_search_and_its_best_trial_is_the_best_row(tmp_path):
    record, keys = recorded_search(tmp_path / "s")
    rows = load_trials(tmp_path / "s")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = rebuild_study(rows, record, storage=storage)
    study = rebuild_study(rows, record, storage=storage)  # rebuilt again: replaced, not doubled
    study = optuna.load_study(study_name="s", storage=storage)
    assert [t.user_attrs["trial_key"] for t in study.trials] == keys  # drawing order; no confirmation trials
    assert [t.state.name for t in study.trials] == ["COMPLETE", "PRUNED", "COMPLETE", "FAIL", "COMPLETE"]
    search_rows = rows.set_index("trial_key").loc[keys]
    best = search_rows[search_rows["status"] == "completed"]["val_acc"].idxmax()
    assert study.best_trial.user_attrs["trial_key"] == best == keys[2]
    assert study.best_value == pytest.approx(0.95)
    assert study.trials[2].params == {"loss": "kl", "tau_point": math.inf, "alpha": 0.9}
    assert study.trials[0].params == {"loss": "kl", "tau_point": "range", "tau": 3.0, "alpha": 0.4}
    assert study.trials[1].params == {"loss": "mse", "alpha": 0.7}  # an MSE trial has no tau
    assert study.trials[1].intermediate_values == {1: pytest.approx(0.6)}

    table = history(study)
    assert list(table["state"]) == ["complete", "pruned", "complete", "fail", "complete"]
    assert table["best_val_acc"].tolist() == pytest.approx([90, 90, 95, 95, 95])
    assert table.loc[1, "epoch"] == 1 and table.loc[1, "val_acc"] == pytest.approx(60)
    assert set(importances(study)["parameter"]) <= {"loss", "tau_point", "tau", "alpha"}


def test_study_views_are_written_as_tables_and_figures(tmp_path):
    recorded_search(tmp_path / "s")
    paths = write_study_views(tmp_path / "s")
    names = {p.relative_to(tmp_path / "s").as_posix() for p in paths}
    assert {"tables/importances.csv", "tables/importances.md", "tables/history.csv", "tables/history.md",
            "figures/optimization_history.png"} <= names
    assert (tmp_path / "s" / "figures" / "optimization_history.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "optuna.db").is_file()
    with pytest.raises(FileNotFoundError, match="not a searched sweep"):
        write_study_views(tmp_path)


def test_the_search_table_reports_confirmation_test_accuracy_under_its_protocol(tmp_path):
    record, keys = recorded_search(tmp_path / "s")
    rows = load_trials(tmp_path / "s")
    (table,) = build_tables(rows, "search", records={"s": record})
    assert table.rows == ["1. kl tau=inf alpha=0.9 (final)"]
    assert table.stats(table.rows[0], "val (search)").mean == pytest.approx(95)
    confirm = table.stats(table.rows[0], "test (confirmation)")
    assert (confirm.mean, confirm.n) == (pytest.approx(76.5), 2) and confirm.std == pytest.approx(0.7071, abs=1e-4)
    assert table.excluded == {"diverged": 1, "stopped": 1}
    text = render([table], "md")
    assert "| 1. kl tau=inf alpha=0.9 (final) | 95.00 (1) | 91.50 ± 0.71 (2) | 76.50 ± 0.71 (2) |" in text
    assert SearchRecord.read(tmp_path / "s") == record
    assert "Protocol: the top 1 settings by validation accuracy (last epoch) over 5 search trials" in text
    assert "mean ± std (n seeds)" in text and "excluded: 1 diverged, 1 stopped" in text
    assert "mean $\\pm$ std" in render([table], "latex")
    assert build_tables(rows, "search", records={}) == []
