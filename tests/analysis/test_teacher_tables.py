"""The pairs, sequential and noisy_teacher tables, and the teachers under every table, from
results folders written with the project's writers (trial rows from known numbers); each
cell is checked against the mean computed from the Parquet files."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis import build_tables, load_teachers, load_trials, render
from kd_tune.core.config import RunConfig
from kd_tune.plan.planner import plan_trial
from kd_tune.plan.search_space import expand
from kd_tune.results.teacher_table import TEACHERS_SCHEMA, write_teachers
from kd_tune.results.trial_tables import ResultsWriter, trial_row

KD = [{"loss": ["kl"], "tau": [3.0, math.inf], "alpha": [1.0]}, {"loss": ["mse"], "alpha": [1.0]}]
TEACHER_ACC = {"cnn-32": 0.99, "cnn-8": 0.95, "cnn-32@1": 0.31, "cnn-32>cnn-8": 0.96, "cnn-16+cnn-8": 0.97}


def write_results(folder, configs, *, seed_acc=None, statuses=None, sweep="s") -> pd.DataFrame:
    """One completed 3-epoch trial row per config (random test accuracy unless ``seed_acc``),
    written by the sweep's writer; returns the trials as analysis reads them back."""
    rng = np.random.default_rng(len(configs))
    writer = ResultsWriter(folder)
    for i, config in enumerate(configs):
        planned = plan_trial(config)
        acc = seed_acc(config) if seed_acc else float(rng.uniform(0.5, 1.0))
        history = [{"epoch": 3, "train_loss": 0.1, "train_acc": 0.9, "val_acc": acc, "test_acc": acc,
                    "epoch_time_s": 0.1}]
        status = (statuses or {}).get(i, "completed")
        writer.finish_trial(trial_row(
            sweep=sweep, trial_key=planned.key, trial_id=f"t{i}", config=config, status=status,
            history=history if status == "completed" else history[:0], teacher_key=planned.teacher_key,
            teacher_test_acc=TEACHER_ACC.get(config.teacher), started_at=None))
    writer.flush()
    return load_trials(folder)


def teacher_row(trials: pd.DataFrame, spec: str, kind: str, train: float, test: float, epochs: int | None) -> dict:
    key = trials.loc[trials["teacher"] == spec, "teacher_key"].iloc[0]
    return {"sweep": "s", "teacher_key": key, "spec": spec, "kind": kind, "architecture": spec.split("@")[0],
            "epochs_trained": epochs, "train_acc": train, "test_acc": test, "seconds": 1.5}


def mean(trials: pd.DataFrame, **where) -> tuple[float, int]:
    """Mean test accuracy in percent and n over the completed trials matching ``where``, with pandas."""
    sel = trials[trials["status"] == "completed"]
    for column, value in where.items():
        sel = sel[sel[column] == value]
    return 100 * sel["test_acc"].mean(), len(sel)


def assert_cell(table, row, column, want):
    stats = table.stats(row, column)
    assert stats is not None, (row, column)
    assert (stats.mean, stats.n) == (pytest.approx(want[0], rel=1e-12), want[1])


def test_pairs_table_puts_ce_by_student_and_names_every_teacher(tmp_path):
    base = RunConfig(epochs=3)
    pairs = [("cnn-32", "cnn-4"), ("cnn-8", "cnn-4"), ("cnn-8", "cnn-32"), ("cnn-16+cnn-8", "cnn-4")]
    space = [{**block, "teacher": [t], "student": [s]} for t, s in pairs for block in KD]
    space += [{"loss": ["ce"], "teacher": ["cnn-8"], "student": ["cnn-4", "cnn-32"]}]
    configs = expand(base, space, seeds=range(3))
    trials = write_results(tmp_path / "s", configs, statuses={0: "diverged"})
    [table] = build_tables(trials, "pairs")
    assert table.rows == ["cnn-8 -> cnn-4", "cnn-8 -> cnn-32", "cnn-16+cnn-8 -> cnn-4", "cnn-32 -> cnn-4"]
    assert table.columns == ["ce", "kl tau=3 alpha=1", "kl tau=inf alpha=1", "mse alpha=1"]
    for teacher, student in pairs:
        row = f"{teacher} -> {student}"
        assert_cell(table, row, "ce", mean(trials, loss="ce", student=student))  # the student alone
        for tau, column in ((3.0, "kl tau=3 alpha=1"), (math.inf, "kl tau=inf alpha=1")):
            assert_cell(table, row, column, mean(trials, loss="kl", tau=tau, teacher=teacher, student=student))
        assert_cell(table, row, "mse alpha=1", mean(trials, loss="mse", teacher=teacher, student=student))
    assert table.stats("cnn-32 -> cnn-4", "kl tau=3 alpha=1").n == 2 and table.excluded == {"diverged": 1}
    assert [(t.label, t.test_acc) for t in table.teachers] == [
        ("cnn-8", 95.0), ("cnn-16+cnn-8", 97.0), ("cnn-32", 99.0)]
    text = render([table], "md")
    assert "| cnn-8 -> cnn-32 |" in text
    assert "Teachers: cnn-8: test 95.00%; cnn-16+cnn-8: test 97.00%; cnn-32: test 99.00%" in text


def test_sequential_table_rows_are_chains_with_the_published_numbers(tmp_path):
    base = RunConfig(dataset="cifar100", data_dir="/unused", val_size=0, student="wrn-16-2", epochs=3)
    teachers = ["wrn-28-4", "wrn-28-4>wrn-16-4", "wrn-16-4"]
    space = [{**block, "teacher": teachers} for block in KD] + [{"loss": ["ce"], "teacher": ["wrn-28-4"]}]
    configs = expand(base, space, seeds=range(2))
    trials = write_results(tmp_path / "s", configs)
    [table] = build_tables(trials, "sequential")
    assert table.setting == {"dataset": "cifar100", "student": "wrn-16-2", "noise_type": "none", "noise_rate": 0.0}
    assert table.rows == ["wrn-16-4 -> wrn-16-2", "wrn-28-4 -> wrn-16-2", "wrn-28-4 -> wrn-16-4 -> wrn-16-2",
                          "no teacher (ce)"]
    assert table.columns == ["kl tau=3 alpha=1", "kl tau=inf alpha=1", "mse alpha=1"]
    for teacher in teachers:
        row = " -> ".join([*teacher.split(">"), "wrn-16-2"])
        assert_cell(table, row, "kl tau=3 alpha=1", mean(trials, loss="kl", tau=3.0, teacher=teacher))
        assert_cell(table, row, "mse alpha=1", mean(trials, loss="mse", teacher=teacher))
    for column in table.columns:
        assert_cell(table, "no teacher (ce)", column, mean(trials, loss="ce"))
    assert table.reference == {
        ("wrn-16-4 -> wrn-16-2", "kl tau=3 alpha=1"): 74.84,
        ("wrn-28-4 -> wrn-16-2", "kl tau=3 alpha=1"): 74.24,
        ("wrn-28-4 -> wrn-16-2", "kl tau=inf alpha=1"): 75.51,
        ("wrn-28-4 -> wrn-16-4 -> wrn-16-2", "kl tau=3 alpha=1"): 74.52,
        **{("no teacher (ce)", c): 72.56 for c in table.columns}}


def test_noisy_teacher_table_states_each_teachers_train_and_test_accuracy(tmp_path):
    base = RunConfig(epochs=3)
    space = [{**block, "teacher": ["cnn-32", "cnn-32@1"]} for block in KD] + [{"loss": ["ce"]}]
    configs = expand(base, space, seeds=range(3))
    trials = write_results(tmp_path / "s", configs)
    write_teachers(tmp_path / "s", [teacher_row(trials, "cnn-32", "ce", 1.0, 0.99, 3),
                                    teacher_row(trials, "cnn-32@1", "undertrained", 0.521, 0.314, 1)])
    [table] = build_tables(trials, "noisy_teacher", teachers=load_teachers(tmp_path / "s"))
    assert table.columns == ["cnn-32", "cnn-32@1"]
    assert table.rows == ["ce", "kl tau=3 alpha=1", "kl tau=inf alpha=1", "mse alpha=1"]
    for teacher in table.columns:
        assert_cell(table, "ce", teacher, mean(trials, loss="ce"))
        assert_cell(table, "kl tau=inf alpha=1", teacher, mean(trials, loss="kl", tau=math.inf, teacher=teacher))
        assert_cell(table, "mse alpha=1", teacher, mean(trials, loss="mse", teacher=teacher))
    text = render([table], "md")
    # test accuracy from the trials' rows, train accuracy and kind from teachers.parquet
    assert "Teachers: cnn-32 (ce): train 100.00%, test 99.00%; cnn-32@1 (undertrained): train 52.10%, test 31.00%" \
        in text
    assert "cnn-32@1 (undertrained): train 52.10\\%, test 31.00\\%" in render([table], "latex")


def test_a_chain_serving_two_losses_is_two_teachers(tmp_path):
    space = [{**block, "teacher": ["cnn-32>cnn-8"]} for block in KD]
    trials = write_results(tmp_path / "s", expand(RunConfig(epochs=3), space))
    [table] = build_tables(trials, "sequential")
    labels = [t.label for t in table.teachers]
    # the step loss is the serving trial's: KL at tau 3, KL at tau inf and MSE trained three networks
    assert labels == ["cnn-32>cnn-8 (for kl tau=3 alpha=1)", "cnn-32>cnn-8 (for kl tau=inf alpha=1)",
                      "cnn-32>cnn-8 (for mse alpha=1)"]


def test_every_table_states_the_teachers_test_accuracy(tmp_path):
    space = [{**b, "noise_type": ["symmetric"], "noise_rate": [0.0, 0.4]} for b in [*KD, {"loss": ["ce"]}]]
    base = RunConfig(epochs=3)
    configs = expand(base, space)
    trials = write_results(tmp_path / "s", configs)
    assert trials["teacher_key"].nunique() == 2  # the teacher trained on noisy labels is another
    for name in ("tau_alpha", "loss", "noise", "pairs", "sequential", "noisy_teacher"):
        tables = build_tables(trials, name)
        assert tables, name
        for table in tables:
            assert table.teachers and all(t.test_acc == 99.0 for t in table.teachers), name
    [noise] = build_tables(trials, "noise")
    assert [t.label for t in noise.teachers] == ["cnn-32", "cnn-32 (symmetric 0.4 labels)"]
    clean = write_results(tmp_path / "clean", expand(base.replace(clean_teacher=True), space,
                                                    seeds=range(1)))
    assert [[t.label for t in table.teachers] for table in build_tables(clean, "tau_alpha")] == [["cnn-32"]] * 2


def test_load_teachers_without_the_file_is_an_empty_frame_with_the_columns(tmp_path):
    write_results(tmp_path / "a", expand(RunConfig(epochs=3), KD), sweep="a")
    empty = load_teachers(tmp_path / "a")
    assert list(empty.columns) == TEACHERS_SCHEMA.names and empty.empty
    trials = write_results(tmp_path / "b", expand(RunConfig(epochs=3), KD), sweep="b")
    write_teachers(tmp_path / "b", [teacher_row(trials, "cnn-32", "ce", 1.0, 0.99, 3)])
    both = load_teachers(tmp_path)  # a folder of sweep folders: the rows of those that have one
    assert both["spec"].tolist() == ["cnn-32"] and both["epochs_trained"].tolist() == [3]
