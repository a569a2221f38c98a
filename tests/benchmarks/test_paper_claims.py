"""benchmarks/paper_claims.py: the statistical rule, and the verdicts on results folders written
with the project's writers for the configs the sweep scripts plan (a case where every claim
holds, one where none does), read back with --from."""
from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest

from kd_tune.cli.sweep import build_parser, expand_args
from kd_tune.core.config import preset
from kd_tune.plan.planner import plan_trial
from kd_tune.results.trial_tables import ResultsWriter, trial_row

ROOT = Path(__file__).resolve().parents[2]


def load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


CLAIMS = load(ROOT / "benchmarks" / "paper_claims.py", "paper_claims")


HOLDING = {"ce": 0.90, "noisy labels": (0.95, 0.90), "under-trained": (0.90, 0.80), "chain": 0.98,
           "rescaled": 0.97, "mse": (0.97, 0.93), "kl": (0.92, 0.01, 0.91), "mse logit": 0.1}
FAILING = {"ce": 0.99, "noisy labels": (0.85, 0.95), "under-trained": (0.70, 0.85), "chain": 0.80,
           "rescaled": 0.80, "mse": (0.85, 0.84), "kl": (0.95, -0.01, 0.94), "mse logit": 5.0}


def world(config, numbers: dict) -> tuple[float, float]:
    """(test accuracy, test logit MSE) of ``config`` in a world of ``numbers``: HOLDING, where every
    claim holds, or FAILING, where none does. Pairs are (small tau, the rest) or (alpha 1, the rest);
    "kl" is (at tau 1, per tau step, at alpha < 1) with tau steps 1, 3, 5, 20, inf."""
    small = config.loss == "kl" and config.tau <= 1.0
    logit_mse = numbers["mse logit"] if config.loss == "mse" else 1.0
    if config.loss == "ce":
        return numbers["ce"], 2.0
    if config.noise_rate > 0:
        return numbers["noisy labels"][0 if small else 1], logit_mse
    if "@" in config.teacher:
        return numbers["under-trained"][0 if small else 1], logit_mse
    if ">" in config.teacher:
        return numbers["chain"], logit_mse
    if config.lr != preset("cpu").lr:  # tau=inf at twice the learning rate: MSE's step
        return numbers["rescaled"], logit_mse
    if config.loss == "mse":
        return numbers["mse"][0 if config.alpha == 1.0 else 1], logit_mse
    at_one, step, other = numbers["kl"]
    rank = {3.0: 1, 5.0: 2, 20.0: 3, math.inf: 4}.get(config.tau, 0)  # other sweeps' taus: as tau 1
    return (at_one + step * rank if config.alpha == 1.0 else other), logit_mse


def write_storage(storage: Path, numbers: dict) -> None:
    """Every sweep paper_claims reads, with the configs its sweep script plans and the world's numbers
    (seed s adds s/10 points, so that seeds differ)."""
    base = preset("cpu")
    for name, script, flags in CLAIMS.sweeps(base.lr, base.weight_decay):
        spec = CLAIMS.load_spec(script)
        writer = ResultsWriter(storage / name)
        for i, config in enumerate(expand_args(spec, build_parser(spec).parse_args(flags))):
            planned = plan_trial(config)
            acc, logit_mse = world(config, numbers)
            acc += config.seed / 1000
            history = [{"epoch": config.epochs, "train_loss": 0.1, "train_acc": 0.99, "val_acc": acc,
                        "test_acc": acc, "test_logit_mse": logit_mse + config.seed / 100, "epoch_time_s": 0.1}]
            writer.finish_trial(trial_row(sweep=name, trial_key=planned.key, trial_id=f"t{i}", config=config,
                                          status="completed", history=history, teacher_key=planned.teacher_key,
                                          teacher_test_acc=0.99, started_at=None))
        writer.flush()


def run_from(storage: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "paper_claims.py"), "--from", str(storage)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


@pytest.mark.parametrize(("kind", "d", "se", "want"), [
    ("beats", 3.0, 1.0, "holds"), ("beats", 1.0, 1.0, "not distinguishable at this n"),
    ("beats", -3.0, 1.0, "does not hold"), ("beats", 1.0, math.nan, "not distinguishable at this n"),
    ("beats", 0.5, 0.0, "holds"),
    # at least as good: d - 2 se > -0.5 points; a positive d with a wide interval is not enough
    ("at_least", 0.1, 0.2, "holds"), ("at_least", -0.3, 0.05, "holds"), ("at_least", 0.0, 0.2, "holds"),
    ("at_least", 0.1, 5.0, "not distinguishable at this n"), ("at_least", 0.28, 0.92, "not distinguishable at this n"),
    ("at_least", -1.0, 1.0, "not distinguishable at this n"), ("at_least", -3.0, 1.0, "does not hold"),
    ("agree", 0.2, 0.3, "holds"), ("agree", 0.2, 0.5, "not distinguishable at this n"),
    ("agree", 2.5, 1.0, "does not hold"),
])
def test_the_rule(kind, d, se, want):
    assert CLAIMS.verdict(kind, d, se) == want


def test_difference_and_slope_with_their_standard_errors():
    d, se = CLAIMS.difference([1.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0])
    assert d == 2.0 and se == pytest.approx(math.sqrt(1.0 / 3))
    b, se = CLAIMS.slope([0, 1, 2, 3], [1.0, 3.0, 5.0, 7.0])
    assert b == pytest.approx(2.0) and se == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(CLAIMS.difference([1.0], [2.0, 3.0])[1])


def test_every_claim_holds_on_results_that_show_them(tmp_path):
    write_storage(tmp_path, HOLDING)
    proc = run_from(tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-1] == "claims_held=9/9"
    verdicts = [line for line in lines if line.startswith("[")]
    assert len(verdicts) == 9 and all(line.endswith(": holds") for line in verdicts), proc.stdout
    # every claim prints its z beside d and se
    numbers = [lines[lines.index(v) + 1] for v in verdicts]
    assert all(", z = " in line for line in numbers), numbers
    # the numbers are the per-seed means of the Parquet rows: CE at 90% plus 0, 0.1, 0.2 points
    assert "CE: ce 90.10 ± 0.10% (n=3)" in proc.stdout
    assert "best KD: mse alpha=1 97.10 ± 0.10% (n=3)" in proc.stdout


def test_claims_that_do_not_hold_are_reported_as_such(tmp_path):
    write_storage(tmp_path, FAILING)
    proc = run_from(tmp_path)
    assert proc.returncode == 0, proc.stderr
    verdicts = [line for line in proc.stdout.splitlines() if line.startswith("[")]
    assert len(verdicts) == 9 and all(line.endswith(": does not hold") for line in verdicts), proc.stdout
    assert proc.stdout.splitlines()[-1] == "claims_held=0/9"


def test_missing_results_are_not_held_and_say_what_is_missing(tmp_path):
    write_storage(tmp_path, HOLDING)
    for name in ("label_noise", "sequential"):
        for path in sorted((tmp_path / name).rglob("*"), reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        (tmp_path / name).rmdir()
    proc = run_from(tmp_path)
    assert proc.stdout.splitlines()[-1] == "claims_held=6/9"
    assert "[5] Small tau is the most robust under label noise: not judged (no results)" in proc.stdout
    assert "label_noise: no such file or directory" in proc.stdout


def test_bad_command_lines_exit_2(tmp_path):
    proc = run_from(tmp_path / "missing")
    assert proc.returncode == 2 and "no such folder" in proc.stderr
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "paper_claims.py"), "--from", str(tmp_path),
                           "--epochs", "3"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2 and "--from only reads results" in proc.stderr
