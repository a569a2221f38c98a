"""The sweep command line: planning the trials, and bad input refused before anything runs."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kd_tune.cli.sweep import build_parser, expand_args, main, search_args
from kd_tune.core.config import RunConfig
from kd_tune.core.identity import trial_key
from kd_tune.sweep.search import SearchSettings

ROOT = Path(__file__).resolve().parents[2]


def load_spec(name: str):
    spec = importlib.util.spec_from_file_location(f"sweep_{name}", ROOT / "sweeps" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SPEC


TAU_GRID = load_spec("tau_grid")
LABEL_NOISE = load_spec("label_noise")
TAU_SEARCH = load_spec("tau_search")


def configs_of(spec, *argv: str):
    return expand_args(spec, build_parser(spec).parse_args(list(argv)))


def test_tau_grid_default_space():
    configs = configs_of(TAU_GRID)
    assert len(configs) == (5 * 3 + 3 + 1) * 3
    kl = {(c.tau, c.alpha) for c in configs if c.loss == "kl"}
    assert kl == {(t, a) for t in (1.0, 3.0, 5.0, 20.0, math.inf) for a in (0.1, 0.5, 1.0)}
    assert {c.alpha for c in configs if c.loss == "mse"} == {0.1, 0.5, 1.0}
    assert [(c.tau, c.alpha) for c in configs if c.loss == "ce"] == [(1.0, 0.0)] * 3
    assert {c.seed for c in configs} == {0, 1, 2}
    assert {c.dataset for c in configs} == {"mnist1d"} and {c.student for c in configs} == {"cnn1d-6"}
    assert len({trial_key(c) for c in configs}) == len(configs)
    # digits stays by name, with the keys its trials always had
    digits = configs_of(TAU_GRID, "--preset", "digits")
    assert {c.dataset for c in digits} == {"digits"} and {c.student for c in digits} == {"cnn-4"}
    assert RunConfig(tau=3.0, alpha=0.5, seed=1) in digits


def test_axis_flags_replace_axes_and_losses_filter_blocks():
    configs = configs_of(TAU_GRID, "--taus", "0.5,inf", "--alphas", "1", "--losses", "kl,ce", "--seeds", "2",
                         "--epochs", "3", "--student", "mlp-16")
    assert sorted((c.loss, c.tau, c.alpha, c.seed) for c in configs) == sorted(
        [("kl", t, 1.0, s) for t in (0.5, math.inf) for s in (0, 1)] + [("ce", 1.0, 0.0, s) for s in (0, 1)])
    assert {c.epochs for c in configs} == {3} and {c.student for c in configs} == {"mlp-16"}


def test_label_noise_space_shares_the_clean_runs():
    configs = configs_of(LABEL_NOISE, "--seeds", "1")
    clean = [c for c in configs if c.noise_rate == 0.0]
    assert {c.noise_type for c in clean} == {"none"} and len(clean) == 6  # ce, 4 kl, mse
    assert len(configs) == 6 * 7
    assert {c.clean_teacher for c in configs} == {False}
    assert {c.clean_teacher for c in configs_of(LABEL_NOISE, "--clean-teacher")} == {True}
    rates = configs_of(LABEL_NOISE, "--seeds", "1", "--noise-types", "symmetric", "--noise-rates", "0.4")
    assert {(c.noise_type, c.noise_rate) for c in rates} == {("symmetric", 0.4)}


@pytest.mark.parametrize(
    ("spec", "argv", "message"),
    [
        (TAU_GRID, ["--losses", "kl,hinge"], "'hinge' unknown; allowed: ce, kl, mse"),
        (TAU_GRID, ["--taus", "0,3"], "tau"),
        (TAU_GRID, ["--taus", "-1"], "tau"),
        (TAU_GRID, ["--alphas", "1.5"], "alpha"),
        (TAU_GRID, ["--taus", "x"], "not a comma-separated list of numbers"),
        (TAU_GRID, ["--noise-type", "symmetric", "--noise-rate", "1.0"], "noise_rate=1.0"),
        (TAU_GRID, ["--preset", "digits", "--dataset", "cifar100", "--data-dir", "/nonexistent/cifar"],
         "/nonexistent/cifar"),
        (TAU_GRID, ["--dataset", "cifar100"], "needs data_dir"),
        (TAU_GRID, ["--student", "vgg-99"], "student='vgg-99'"),
        (TAU_GRID, ["--seeds", "0"], "--seeds must be >= 1"),
        (TAU_GRID, ["--cpus-per-trial", "0"], "--cpus-per-trial must be > 0"),
        (TAU_GRID, ["--storage", "s3://bucket/results"], "no credentials found; set AWS_ACCESS_KEY_ID"),
        (TAU_GRID, ["--storage", "s3://bucket/results", "--storage-endpoint", "127.0.0.1:9000"], "http:// or https://"),
        (TAU_GRID, ["--storage", "gs://bucket/results"], "sweeps can write to local folders and S3"),
        (TAU_GRID, ["--teacher-cache", "bf16"],
         "--teacher-cache 'bf16' must be one of float32, float16, off (on means float32)"),
        (TAU_GRID, ["--name", "teacher_logits"], "must be a plain folder name (not 'teachers' or 'teacher_logits'"),
        (TAU_GRID, ["--mlflow-uri", "http://127.0.0.1:9"], "cannot reach the MLflow tracking server at http://127.0.0.1:9"),
        (TAU_GRID, ["--val-size", "100000"], "mnist1d: val_size=100000 must be in [0, 3999]"),
        (TAU_GRID, ["--val-size", "100000", "--dry-run", "--preset", "digits"],
         "digits: val_size=100000 must be in [0, 1436]"),
        (TAU_GRID, ["--feature-classes", "0,x"], "not a comma-separated list of class indices"),
        (TAU_GRID, ["--feature-classes", "1,1"], "class indices must be distinct and >= 0"),
        (TAU_GRID, ["--feature-classes", "0,10"], "--feature-classes 0,10: mnist1d has classes 0..9"),
        (LABEL_NOISE, ["--noise-rates", "0.2,1.0"], "noise_rate=1.0"),
        (LABEL_NOISE, ["--noise-types", "gaussian"], "noise_type='gaussian'"),
        (TAU_SEARCH, ["--search-space", "tau=normal:1,4"], "tau=normal:1,4: unknown distribution 'normal'"),
        (TAU_SEARCH, ["--search-space", "alpha=uniform:0.8,0.2"], "alpha: the range [0.8, 0.2] is empty"),
        (TAU_SEARCH, ["--search-space", "alpha"], "'alpha' is not FIELD=DISTRIBUTION"),
        (TAU_SEARCH, ["--search-space", "alpha=uniform:0,2"], "alpha=2.0 is not allowed"),
        (TAU_SEARCH, ["--search-space", "loss=choice:kl"], "choose the losses with --losses"),
        (TAU_SEARCH, ["--num-samples", "0"], "--num-samples must be >= 1, got 0"),
        (TAU_SEARCH, ["--epochs", "4", "--grace-period", "5"], "--grace-period 5 must be in [1, --epochs 4]"),
        (TAU_SEARCH, ["--reduction-factor", "1"], "--reduction-factor must be > 1"),
        (TAU_SEARCH, ["--scheduler", "pbt"], "invalid choice: 'pbt'"),
        (TAU_SEARCH, ["--seeds", "0"], "--seeds must be >= 1, got 0"),
        (TAU_SEARCH, ["--search", "grid"], "this sweep is a search and has no grid"),
        (TAU_SEARCH, ["--preset", "paper", "--data-dir", "/nonexistent"], "needs a validation split"),
        (TAU_SEARCH, ["--search-space", "lr=loguniform:0.005,0.1"], "lr is drawn from a range, and the teacher"),
        (TAU_SEARCH, ["--losses", "ce"], "this sweep has no ce runs; it has kl, mse"),
        (TAU_GRID, ["--num-samples", "10", "--grace-period", "2"], "--num-samples, --grace-period: for --search "
         "optuna only"),
        (TAU_GRID, ["--teacher", "cnn-32>>cnn-8"], "teacher='cnn-32>>cnn-8': teacher spec 'cnn-32>>cnn-8' has an "
         "empty step"),
        (TAU_GRID, ["--teacher", "cnn-32>vgg-99"], "teacher='cnn-32>vgg-99': 'vgg-99'"),
        (TAU_GRID, ["--teacher", "cnn-32@30", "--teacher-epochs", "20"], "stop epoch 30 is beyond the teacher's 20"),
        (TAU_GRID, ["--teacher", "cnn-32>cnn-8[huber]"], "step loss [huber] is not one of kl:TAU"),
        (TAU_SEARCH, ["--search-space", "teacher=choice:cnn-32,3xvgg-99"], "teacher='3xvgg-99': 'vgg-99'"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, spec, argv, message):
    storage = tmp_path / "results"
    with pytest.raises(SystemExit) as exit_info:
        main(spec, ["--storage", str(storage), *argv] if "--storage" not in argv else argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not storage.exists()


def a_file(root: Path) -> tuple[Path, str]:
    (root / "results").write_text("not a folder")
    return root / "results", f"--storage '{root / 'results'}' is a file, not a folder"


def inside_a_file(root: Path) -> tuple[Path, str]:
    (root / "file").write_text("not a folder")
    return root / "file" / "results", f"--storage '{root / 'file' / 'results'}' cannot be created: " \
                                      f"'{root / 'file'}' is a file, not a folder"


def read_only(root: Path) -> tuple[Path, str]:
    (root / "results").mkdir(mode=0o555)
    return root / "results", f"--storage '{root / 'results'}' is not writable"


def inside_read_only(root: Path) -> tuple[Path, str]:
    (root / "ro").mkdir(mode=0o555)
    return root / "ro" / "results", f"--storage '{root / 'ro' / 'results'}' cannot be created: " \
                                    f"'{root / 'ro'}' is not writable"


def sweep_folder_read_only(root: Path) -> tuple[Path, str]:
    (root / "results").mkdir()
    (root / "results" / "tau_grid").mkdir(mode=0o555)
    return root / "results", f"--storage '{root / 'results'}': '{root / 'results' / 'tau_grid'}' is not writable"


def as_unprivileged(cmd: list[str]) -> list[str]:
    """``cmd`` run so that mode bits bind it: root writes through them, but not from a user
    namespace of its own (where it is an unprivileged user)."""
    if os.geteuid() != 0:
        return cmd
    if subprocess.run(["unshare", "--user", "true"], capture_output=True).returncode != 0:
        pytest.skip("running as root without unprivileged user namespaces: no folder is read-only to root")
    return ["unshare", "--user", *cmd]


@pytest.mark.parametrize("make", [a_file, inside_a_file, read_only, inside_read_only, sweep_folder_read_only])
def test_unusable_storage_exits_2_before_ray_starts(tmp_path, make):
    storage, message = make(tmp_path)
    cmd = [sys.executable, str(ROOT / "sweeps" / "tau_grid.py"), "--storage", str(storage), "--epochs", "1"]
    if "read_only" in make.__name__:
        cmd = as_unprivileged(cmd)
    before = sorted(tmp_path.rglob("*"))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].endswith(f"error: {message}"), proc.stderr
    assert "Ray" not in proc.stdout  # it stopped before connecting
    assert sorted(tmp_path.rglob("*")) == before


def test_a_name_reused_with_other_trials_is_refused(tmp_path, capsys):
    storage = tmp_path / "results"
    (storage / "tau_grid").mkdir(parents=True)
    (storage / "tau_grid" / "sweep.json").write_text('{"name": "tau_grid", "trials": {"abc": {}}}')
    with pytest.raises(SystemExit) as exit_info:
        main(TAU_GRID, ["--storage", str(storage), "--seeds", "1"])
    assert exit_info.value.code == 2
    assert "was started with other trials (19 new, 1 left out)" in capsys.readouterr().err


def test_resuming_with_float16_logits_after_float32_is_refused(tmp_path, capsys):
    storage = tmp_path / "results"
    configs = expand_args(TAU_GRID, build_parser(TAU_GRID).parse_args(["--seeds", "1"]))
    manifest = {"name": "tau_grid", "teacher_cache": "float32", "trials": {trial_key(c): {} for c in configs}}
    (storage / "tau_grid").mkdir(parents=True)
    (storage / "tau_grid" / "sweep.json").write_text(json.dumps(manifest))
    with pytest.raises(SystemExit) as exit_info:
        main(TAU_GRID, ["--storage", str(storage), "--seeds", "1", "--teacher-cache", "float16"])
    assert exit_info.value.code == 2
    assert "started with --teacher-cache float32, and float16 logits change results" in capsys.readouterr().err
    # float32 and the online teacher train the same students: switching between them is allowed.
    assert main(TAU_GRID, ["--storage", str(storage), "--seeds", "1", "--teacher-cache", "off", "--dry-run"]) == 0


def test_dry_run_lists_trials_and_writes_nothing(tmp_path, capsys):
    storage = tmp_path / "results"
    assert main(TAU_GRID, ["--storage", str(storage), "--dry-run", "--gpus-per-trial", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "57 trials, each 1 CPU and 0.5 GPU" in out and "teachers: 1 (0 already in" in out
    assert "teacher cache: float32" in out
    assert "kl tau=inf alpha=0.5 seed=2" in out and "dry run: nothing was run or written" in out
    assert not storage.exists()


def test_dry_run_shows_the_teacher_dag(tmp_path, capsys):
    storage = tmp_path / "results"
    argv = ["--preset", "digits", "--storage", str(storage), "--dry-run", "--seeds", "1", "--losses", "kl,ce",
            "--taus", "3", "--alphas", "1", "--teacher-epochs", "20", "--teacher", "cnn-32@5 + cnn-16 > cnn-8"]
    assert main(TAU_GRID, argv) == 0
    out = capsys.readouterr().out
    assert "teachers: 4 (0 already in" in out
    lines = [line.split() for line in out.splitlines() if line.lstrip().startswith("#")]
    assert [(line[0], line[2], line[3]) for line in lines] == [
        ("#1", "undertrained", "cnn-32@5:"), ("#2", "ce", "cnn-16:"), ("#3", "ensemble", "cnn-32@5+cnn-16:"),
        ("#4", "sequential", "cnn-32@5+cnn-16>cnn-8:")]
    assert "stopped after epoch 5 of 20" in out and "mean logits of #1, #2" in out
    assert "kl tau=3 alpha=1 from #3" in out and out.count("[to train]") == 3 and "[to make]" in out
    assert not storage.exists()


def test_help_explains_the_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(TAU_GRID, ["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--address", "--storage", "--mlflow-uri", "--gpus-per-trial", "--taus", "--dry-run", "--preset",
                 "--teacher-cache"):
        assert flag in out
    assert "rerun the same" in out.lower() or "rerun with the same name" in out


def test_search_flags_shape_the_space_and_the_settings():
    args = build_parser(TAU_SEARCH).parse_args(
        ["--taus", "1,inf", "--search-space", "alpha=uniform:0.5,1", "--losses", "kl", "--num-samples", "7",
         "--scheduler", "none", "--search-seed", "4", "--confirm-top", "0", "--epochs", "5"])
    search = search_args(TAU_SEARCH, args)
    assert search.space.text() == "kl: tau=choice:1,inf alpha=uniform:0.5,1"
    assert search.settings == SearchSettings(num_samples=7, scheduler="none", search_seed=4, confirm_top=0)
    assert search.base.epochs == 5 and search.base.student == "cnn1d-6"
    # A grid sweep searches its grid's values with --search optuna.
    grid = search_args(TAU_GRID, build_parser(TAU_GRID).parse_args(["--search", "optuna"]))
    assert grid.space.text() == ("kl: tau=choice:1,3,5,20,inf alpha=choice:0.1,0.5,1 | mse: alpha=choice:0.1,0.5,1 "
                                 "| ce:")
    assert grid.settings.num_samples == 60


def test_search_dry_run_writes_nothing(tmp_path, capsys):
    storage = tmp_path / "results"
    assert main(TAU_SEARCH, ["--storage", str(storage), "--dry-run", "--num-samples", "30"]) == 0
    out = capsys.readouterr().out
    assert "search 'tau_search': 30 trials drawn by TPE (seed 0) from kl: tau=loguniform:0.25,64+inf" in out
    assert "scheduler asha (grace 2 epochs, factor 3); then the top 3 rerun with 3 new seeds each" in out
    assert "teachers: 1 (0 already in" in out and "dry run: nothing was run or written" in out
    assert not storage.exists()


# -- the loss family: its sweep, the option axes ----------------------------------------------

LOGIT_LOSSES = load_spec("logit_losses")


def test_logit_losses_runs_each_loss_at_its_published_settings_clean_and_noisy():
    configs = configs_of(LOGIT_LOSSES, "--preset", "digits")  # digits: the run whose key is pinned below
    assert len(configs) == 7 * 2 * 5 and len({trial_key(c) for c in configs}) == len(configs)
    methods = {(c.loss, c.tau, c.standardize, c.dkd_beta, c.dist_beta) for c in configs}
    assert methods == {("ce", 1.0, False, None, None), ("kl", 4.0, False, None, None), ("kl", 2.0, True, None, None),
                       ("dkd", 4.0, False, 8.0, None), ("dist", 4.0, False, None, 1.0), ("mse", 1.0, False, None, None),
                       ("mse", 1.0, True, None, None)}
    assert {(c.noise_type, c.noise_rate) for c in configs} == {("none", 0.0), ("symmetric", 0.4)}
    assert {c.alpha for c in configs if c.loss != "ce"} == {0.9} and {c.dkd_warmup for c in configs} == {None, 20}
    # its clean kl trial of seed 0 is the digits preset's default run, with the key that run always had
    kl = next(c for c in configs if c.loss == "kl" and not c.standardize and c.noise_rate == 0 and c.seed == 0)
    assert kl == RunConfig() and trial_key(kl) == "73c8890bcf7da59c"


def test_an_option_axis_goes_to_the_losses_that_read_it():
    dkd = configs_of(LOGIT_LOSSES, "--dkd-beta", "1,4,8", "--noise-rates", "0", "--seeds", "1")
    assert sorted(c.dkd_beta for c in dkd if c.loss == "dkd") == [1.0, 4.0, 8.0] and len(dkd) == 9
    grid = configs_of(TAU_GRID, "--standardize", "on,off", "--seeds", "1")
    assert sorted(c.standardize for c in grid if c.loss == "kl" and c.tau == 1 and c.alpha == 1) == [False, True]
    assert len([c for c in grid if c.loss == "mse"]) == 6 and [c.standardize for c in grid if c.loss == "ce"] == [False]
    assert len(configs_of(TAU_GRID, "--standardize", "off", "--seeds", "1")) == 19  # the grid as it was


@pytest.mark.parametrize(("spec", "argv", "message"), [
    (TAU_GRID, ["--dkd-beta", "4"], "--dkd-beta: no loss of this sweep reads dkd_beta"),
    (TAU_GRID, ["--standardize", "maybe"], "'maybe' is not on or off"),
    (LOGIT_LOSSES, ["--taus", "inf", "--losses", "dkd"], "tau=inf is the limit of kl only"),
    (TAU_SEARCH, ["--search-space", "dkd_beta=uniform:1,8"], "dkd_beta: no block of this space has a loss"),
])
def test_bad_option_flags_exit_2(tmp_path, capsys, spec, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(spec, ["--storage", str(tmp_path / "results"), *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_tau_search_searches_the_family_when_asked():
    def space(*argv):
        return search_args(TAU_SEARCH, build_parser(TAU_SEARCH).parse_args(list(argv))).space.text()

    assert space() == "kl: tau=loguniform:0.25,64+inf alpha=uniform:0,1 | mse: alpha=uniform:0,1"
    assert space("--losses", "kl,dkd", "--search-space", "dkd_beta=loguniform:1,16") == (
        "kl: tau=loguniform:0.25,64+inf alpha=uniform:0,1 | dkd: alpha=uniform:0,1 dkd_alpha=choice:1 "
        "dkd_beta=loguniform:1,16 dkd_warmup=choice:20")
    assert space("--search-space", "standardize=choice:false,true") == (
        "kl: tau=loguniform:0.25,64+inf alpha=uniform:0,1 standardize=choice:False,True | mse: alpha=uniform:0,1 "
        "standardize=choice:False,True")
    assert "dist: tau=loguniform:1,8 alpha=uniform:0,1 dist_beta=uniform:0.5,4" in search_args(
        LOGIT_LOSSES, build_parser(LOGIT_LOSSES).parse_args(["--search", "optuna"])).space.text()
