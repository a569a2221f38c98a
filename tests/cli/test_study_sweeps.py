"""sweeps/pairs.py, sweeps/sequential.py and sweeps/noisy_teacher.py: the trials each plans
under both presets and its flags, bad input refused, and each run end to end as a user runs
it against a real `ray start` cluster on digits with tiny models, its table checked
against the Parquet files."""
from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from processes import ray_env

from analysis import load_teachers, load_trials
from kd_tune.cli.sweep import build_parser, expand_args, main
from kd_tune.train.validation import validate_all

ROOT = Path(__file__).resolve().parents[2]


def load_sweep(name: str):
    spec = importlib.util.spec_from_file_location(f"sweep_{name}", ROOT / "sweeps" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PAIRS, SEQUENTIAL, NOISY = (load_sweep(n) for n in ("pairs", "sequential", "noisy_teacher"))
PAPER = ["--preset", "paper", "--data-dir", "/unused/cifar"]
DIGITS = ["--preset", "digits"]


def configs_of(module, *argv: str):
    return expand_args(module.SPEC, build_parser(module.SPEC).parse_args(list(argv)))


def settings(configs) -> set[tuple]:
    return {(c.teacher, c.student, c.loss, c.tau, c.alpha) for c in configs}


def test_pairs_digits_preset_holds_students_of_several_sizes_one_larger_than_its_teacher_and_an_ensemble():
    configs = configs_of(PAIRS, *DIGITS)
    kd = [c for c in configs if c.loss != "ce"]
    assert {(c.teacher, c.student) for c in kd} == set(PAIRS.DIGITS_PAIRS)
    assert {"cnn-4", "cnn-8", "cnn-16", "mlp-32"} <= {c.student for c in kd if c.teacher == "cnn-32"}
    assert ("cnn-8", "cnn-32") in {(c.teacher, c.student) for c in kd}  # the student is the larger network
    assert any("+" in c.teacher for c in kd)
    assert {(c.loss, c.tau, c.alpha) for c in kd} == {("kl", 3.0, 1.0), ("kl", 20.0, 1.0), ("kl", math.inf, 1.0),
                                                      ("mse", 1.0, 1.0)}
    # CE once per student (5 students), whichever teachers teach it
    ce = [c for c in configs if c.loss == "ce"]
    assert sorted(c.student for c in ce if c.seed == 0) == ["cnn-16", "cnn-32", "cnn-4", "cnn-8", "mlp-32"]
    assert len(configs) == (len(PAIRS.DIGITS_PAIRS) * 4 + 5) * 3 and {c.dataset for c in configs} == {"digits"}


def test_pairs_cpu_preset_is_the_same_design_on_mnist1d():
    configs = configs_of(PAIRS)
    kd = [c for c in configs if c.loss != "ce"]
    assert {(c.teacher, c.student) for c in kd} == set(PAIRS.CPU_PAIRS)
    assert {"cnn1d-6", "cnn1d-12", "mlp1d-100", "gru-6"} <= {c.student for c in kd if c.teacher == "cnn1d-25"}
    assert ("cnn1d-6", "cnn1d-25") in {(c.teacher, c.student) for c in kd} and any("+" in c.teacher for c in kd)
    assert {c.dataset for c in configs} == {"mnist1d"}
    validate_all(configs)


def test_pairs_paper_preset_is_the_papers_table_and_the_precursors_pairs():
    configs = configs_of(PAIRS, *PAPER)
    pairs = {(c.teacher, c.student) for c in configs if c.loss != "ce"}
    assert pairs == set(PAIRS.PAPER_PAIRS)
    assert {s for t, s in pairs if t == "wrn-28-4"} == {"wrn-16-2", "wrn-16-4", "wrn-28-2", "wrn-40-2"}
    assert {t for t, s in pairs if s == "wrn-16-2" and "+" not in t} == {"wrn-28-4", "wrn-16-4", "wrn-16-6",
                                                                          "wrn-28-2", "wrn-40-2"}
    assert {c.dataset for c in configs} == {"cifar100"} and {c.epochs for c in configs} == {200}


def test_pairs_flag_rebuilds_the_space_and_the_axes_apply():
    configs = configs_of(PAIRS, *DIGITS, "--pairs", "cnn-8:cnn-4, cnn-4:cnn-8", "--taus", "inf", "--losses", "kl,ce",
                         "--seeds", "1")
    assert settings(configs) == {("cnn-8", "cnn-4", "kl", math.inf, 1.0), ("cnn-4", "cnn-8", "kl", math.inf, 1.0),
                                 ("cnn-8", "cnn-4", "ce", 1.0, 0.0), ("cnn-4", "cnn-8", "ce", 1.0, 0.0)}


def test_sequential_spaces():
    cpu = configs_of(SEQUENTIAL, "--seeds", "1")
    assert {c.teacher for c in cpu} == {"cnn1d-25", "cnn1d-25>cnn1d-12", "cnn1d-12"}
    assert {c.student for c in cpu} == {"cnn1d-6"}
    configs = configs_of(SEQUENTIAL, *DIGITS, "--seeds", "1")
    teachers = {"cnn-32", "cnn-32>cnn-8", "cnn-8"}
    assert settings(configs) == ({(t, "cnn-4", "kl", 3.0, 1.0) for t in teachers}
                                 | {(t, "cnn-4", "mse", 1.0, 1.0) for t in teachers}
                                 | {("cnn-32", "cnn-4", "ce", 1.0, 0.0)})
    paper = {c.teacher for c in configs_of(SEQUENTIAL, *PAPER)}
    assert paper == {"wrn-28-4", "wrn-28-4>wrn-16-4", "wrn-16-4"}
    assert {c.student for c in configs_of(SEQUENTIAL, *PAPER)} == {"wrn-16-2"}
    chain = configs_of(SEQUENTIAL, *DIGITS, "--chain", "cnn-16,cnn-4", "--student", "mlp-16", "--seeds", "2")
    assert {c.teacher for c in chain} == {"cnn-16", "cnn-16>cnn-4", "cnn-4"} and len(chain) == 7 * 2
    assert {c.student for c in chain} == {"mlp-16"}


def test_noisy_teacher_spaces():
    assert {c.teacher for c in configs_of(NOISY) if c.loss != "ce"} == {"cnn1d-25", "cnn1d-25@1"}
    configs = configs_of(NOISY, *DIGITS)
    kd = [c for c in configs if c.loss != "ce"]
    assert {c.teacher for c in kd} == {"cnn-32", "cnn-32@1"}
    assert {c.tau for c in kd if c.loss == "kl"} == {0.5, 1.0, 3.0, 5.0, 20.0, math.inf}
    assert {c.alpha for c in kd} == {1.0}
    assert len(configs) == (2 * 7 + 1) * 3  # CE (the student alone) once
    assert {c.teacher for c in configs_of(NOISY, *PAPER) if c.loss != "ce"} == {"wrn-28-4", "wrn-28-4@10"}
    mine = configs_of(NOISY, *DIGITS, "--teachers", "cnn-8,cnn-8@2,cnn-16", "--taus", "1", "--seeds", "1")
    assert {c.teacher for c in mine} == {"cnn-8", "cnn-8@2", "cnn-16"} and len(mine) == 3 * 2 + 1


@pytest.mark.parametrize(("module", "argv", "message"), [
    (PAIRS, ["--pairs", "cnn-32"], "'cnn-32' is not TEACHER:STUDENT"),
    (PAIRS, ["--pairs", "cnn-32:vgg-9"], "student='vgg-9'"),
    (PAIRS, ["--student", "cnn-8"], "unrecognized arguments: --student"),
    (PAIRS, ["--search", "optuna"], "each loss picks one block"),
    (SEQUENTIAL, ["--chain", "cnn-32"], "'cnn-32' is not T,M"),
    (SEQUENTIAL, ["--chain", "cnn-32,cnn-99x"], "cnn-99x"),
    (NOISY, ["--teachers", ","], "--teachers needs at least one teacher spec"),
    (NOISY, ["--teachers", "cnn-32@0"], "stop epoch 0 must be >= 1"),
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, module, argv, message):
    storage = tmp_path / "results"
    with pytest.raises(SystemExit) as exit_info:
        main(module.SPEC, ["--storage", str(storage), *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not storage.exists()


@pytest.mark.parametrize(("module", "trials"), [(PAIRS, 111), (SEQUENTIAL, 21), (NOISY, 45)])
def test_dry_run_plans_every_trial_and_teacher_and_writes_nothing(tmp_path, capsys, module, trials):
    storage = tmp_path / "results"
    assert main(module.SPEC, ["--storage", str(storage), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"{trials} trials, each 1 CPU" in out and "dry run: nothing was run or written" in out
    assert not storage.exists()


# -- end to end, against a real `ray start` cluster -------------------------------------------------


def run_script(name: str, storage: Path, *argv: str, seeds: int = 1) -> subprocess.CompletedProcess:
    # One seed where the study's own rows are the point; the sequential test keeps two, so that
    # a table's mean over seeds is checked end to end once.
    cmd = [sys.executable, str(ROOT / "sweeps" / f"{name}.py"), "--address", "auto", "--storage", str(storage),
           "--epochs", "2", "--seeds", str(seeds), *DIGITS, *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ray_env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def csv_table(sweep_dir: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(sweep_dir / "tables" / f"{name}.csv").set_index("row")


def mean(trials: pd.DataFrame, seeds: int = 1, **where) -> float:
    sel = trials
    for column, value in where.items():
        sel = sel[sel[column] == value]
    assert len(sel) == seeds, where  # one trial per seed
    return 100 * sel["test_acc"].mean()


def method(row: pd.Series) -> str:
    tau = "inf" if math.isinf(row["tau"]) else f"{row['tau']:g}"
    return {"ce": "ce", "kl": f"kl tau={tau} alpha={row['alpha']:g}", "mse": f"mse alpha={row['alpha']:g}"}[row["loss"]]


def test_pairs_end_to_end(ray_cluster, tmp_path):
    proc = run_script("pairs", tmp_path, "--name", "pairs", "--pairs", "cnn-8:cnn-4,cnn-4:cnn-8,cnn-4+cnn-8:cnn-4",
                      "--taus", "3,inf", "--teacher-epochs", "2")
    sweep = tmp_path / "pairs"
    trials = load_trials(sweep)
    assert len(trials) == 3 * 3 + 2 and set(trials["status"]) == {"completed"}
    table = csv_table(sweep, "pairs")
    assert list(table.index) == ["cnn-4 -> cnn-8", "cnn-4+cnn-8 -> cnn-4", "cnn-8 -> cnn-4"]
    for _, row in trials.drop_duplicates(["teacher", "student", "loss", "tau"]).iterrows():
        if row["loss"] == "ce":  # the student alone: the ce cell of every row of that student
            for label in [r for r in table.index if r.endswith(f"-> {row['student']}")]:
                assert table.loc[label, "ce mean"] == pytest.approx(mean(trials, loss="ce", student=row["student"]))
        else:
            want = mean(trials, teacher=row["teacher"], student=row["student"], loss=row["loss"], tau=row["tau"])
            assert table.loc[f"{row['teacher']} -> {row['student']}", f"{method(row)} mean"] == pytest.approx(want)
    teachers = load_teachers(sweep)
    ensemble = teachers[teachers["kind"] == "ensemble"]
    assert ensemble["spec"].tolist() == ["cnn-4+cnn-8"] and ensemble["epochs_trained"].isna().all()
    assert teachers["test_acc"].between(0, 1).all() and set(teachers["kind"]) == {"ce", "ensemble"}
    assert "Teachers: cnn-4 (ce): train" in proc.stdout and "cnn-4+cnn-8 (ensemble): train" in proc.stdout


def test_sequential_end_to_end(ray_cluster, tmp_path):
    proc = run_script("sequential", tmp_path, "--name", "seq", "--chain", "cnn-8,cnn-4", "--student", "cnn-2",
                      "--teacher-epochs", "2", seeds=2)
    sweep = tmp_path / "seq"
    trials = load_trials(sweep)
    assert len(trials) == 7 * 2 and set(trials["status"]) == {"completed"}
    table = csv_table(sweep, "sequential")
    assert list(table.index) == ["cnn-4 -> cnn-2", "cnn-8 -> cnn-2", "cnn-8 -> cnn-4 -> cnn-2", "no teacher (ce)"]
    for teacher in ("cnn-4", "cnn-8", "cnn-8>cnn-4"):
        row = " -> ".join([*teacher.split(">"), "cnn-2"])
        assert table.loc[row, "kl tau=3 alpha=1 mean"] == pytest.approx(mean(trials, 2, teacher=teacher, loss="kl"))
        assert table.loc[row, "mse alpha=1 mean"] == pytest.approx(mean(trials, 2, teacher=teacher, loss="mse"))
    for column in ("kl tau=3 alpha=1 mean", "mse alpha=1 mean"):
        assert table.loc["no teacher (ce)", column] == pytest.approx(mean(trials, 2, loss="ce"))
    # the chain's middle network was distilled twice, with each trial's loss: two sequential nodes
    chains = load_teachers(sweep).query("kind == 'sequential'")
    assert len(chains) == 2 and chains["teacher_key"].nunique() == 2
    assert trials.loc[trials["teacher"] == "cnn-8>cnn-4", "teacher_key"].nunique() == 2
    assert "no teacher (ce)" in proc.stdout


@pytest.mark.slow
def test_noisy_teacher_end_to_end(ray_cluster, tmp_path):
    proc = run_script("noisy_teacher", tmp_path, "--name", "noisy", "--teachers", "cnn-8,cnn-8@1", "--taus", "1,inf",
                      "--teacher-epochs", "3")
    sweep = tmp_path / "noisy"
    trials = load_trials(sweep)
    assert len(trials) == 2 * 3 + 1 and set(trials["status"]) == {"completed"}
    table = csv_table(sweep, "noisy_teacher")
    for teacher in ("cnn-8", "cnn-8@1"):
        assert table.loc["ce", f"{teacher} mean"] == pytest.approx(mean(trials, loss="ce"))
        for _, row in trials[trials["teacher"] == teacher].drop_duplicates(["loss", "tau"]).iterrows():
            want = mean(trials, teacher=teacher, loss=row["loss"], tau=row["tau"])
            assert table.loc[method(row), f"{teacher} mean"] == pytest.approx(want)
    teachers = load_teachers(sweep).set_index("spec")
    assert teachers.loc["cnn-8@1", "kind"] == "undertrained" and teachers.loc["cnn-8@1", "epochs_trained"] == 1
    assert teachers.loc["cnn-8", "epochs_trained"] == 3
    under = teachers.loc["cnn-8@1"]
    assert f"cnn-8@1 (undertrained): train {100 * under['train_acc']:.2f}%, test {100 * under['test_acc']:.2f}%" \
        in proc.stdout
