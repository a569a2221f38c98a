"""benchmarks/convergence.py: the plateau rule, the rows it takes from the default sweeps, one tiny run."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from convergence import RowResult, build_parser, keep, sweep_rows  # noqa: E402

from kd_tune.core.config import preset  # noqa: E402


def row(before: float, end: float, longer: float | None) -> RowResult:
    return RowResult("kl tau=3 alpha=1", "clean", before, end, 1.0, 1.0, longer, 0.0)


def test_plateau_is_isclose_over_the_tail_and_against_the_longer_run():
    assert row(0.41, 0.40, 0.39).plateau(0.05, 0.005)          # 0.01 <= 0.025 both ways
    assert not row(0.45, 0.40, None).plateau(0.05, 0.005)      # the tail still falls
    assert not row(0.40, 0.40, 0.30).plateau(0.05, 0.005)      # flat tail, but longer ends far lower
    # Near 0 the absolute part decides: CE on clean labels keeps halving towards 0.
    assert row(0.0100, 0.0090, 0.0060).plateau(0.05, 0.005)
    assert row(0.41, 0.40, 0.30).longer_change == pytest.approx(0.25)


def test_rows_are_the_default_sweeps_settings_once_each():
    rows = sweep_rows(("tau_grid", "label_noise", "noisy_teacher"), preset("cpu"))
    # tau_grid: 15 kl + 3 mse + ce; label_noise: 7 label settings x 6 losses, of which its clean
    # ce, kl tau 1, kl tau 20 and mse (alpha 1) are tau_grid's; the noisy-teacher row (kl tau 0.5,
    # clean) is label_noise's.
    assert len(rows) == len(set(rows)) == 19 + 42 - 4
    assert sum(r.loss == "kl" and r.tau == 0.5 and r.noise_type == "none" for r in rows) == 1
    args = build_parser().parse_args(["--taus", "0.5,inf", "--alphas", "1", "--noise-rates", "0"])
    kept = [r for r in rows if keep(r, args)]
    assert sorted((r.loss, r.tau) for r in kept) == [("ce", 1.0), ("kl", 0.5), ("kl", math.inf), ("mse", 1.0)]


def test_a_tiny_run_prints_each_row_and_the_verdict_line():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "convergence.py"), "--recipe", "epochs=3,teacher=cnn1d-6",
         "--sweeps", "tau_grid", "--losses", "kl,ce", "--taus", "inf", "--alphas", "1", "--longer", "1.5"],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| row | labels | loss @2 | loss @3 | fall, last 1 | train acc | test acc | loss @4 |" in proc.stdout
    assert "| kl tau=inf alpha=1 | clean |" in proc.stdout and "| ce | clean |" in proc.stdout
    # The teacher is judged too, in its own row before the students'.
    assert proc.stdout.index("| teacher cnn1d-6 | clean |") < proc.stdout.index("| kl tau=inf alpha=1 |")
    assert proc.stdout.strip().splitlines()[-1].startswith("plateau=")
    assert proc.stdout.strip().splitlines()[-1].endswith("/3 recipe=lr=0.05,epochs=3,schedule=cosine,teacher=cnn1d-6")


@pytest.mark.parametrize("flags", [["--recipe", "nosuch=1"], ["--longer", "0.5"], ["--losses", "hinge"]])
def test_bad_input_exits_2(flags):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "convergence.py"), *flags],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 2 and "error:" in proc.stderr
