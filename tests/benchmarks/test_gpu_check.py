"""benchmarks/gpu_check.py: its one-line exit without CUDA, and its parts on the CPU at tiny sizes."""
from __future__ import annotations

import math
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import torch

from kd_tune import models
from kd_tune.results.trial_tables import ResultsWriter, epoch_row

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_check  # noqa: E402
from gpu_check import EAGER, MODES, TINY, WHOLE_GPU, MemorySample, PackingError, Variant  # noqa: E402

CPU = torch.device("cpu")
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def teacher():
    return gpu_check.build_teacher(TINY, CPU)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the script would run the check")
def test_without_cuda_it_says_so_in_one_line_and_exits_0():
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    lines = (proc.stdout + proc.stderr).splitlines()
    assert proc.returncode == 0
    assert len(lines) == 1, lines
    assert "no CUDA device found" in lines[0]


def test_script_on_cpu_prints_table_and_last_line():
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--tiny", "--skip-packing",
                           "--no-compile"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    match = re.fullmatch(r"gpu_kd_cached_vs_ce=(\d+\.\d{3}) packing_4_vs_1=nan", lines[-1])
    assert match, lines[-1]
    assert 0 < float(match.group(1)) < 100
    assert sum(line.endswith("| PASS |") for line in lines) == 5
    assert not any("FAIL" in line for line in lines)
    assert any("cache build" in line and "per epoch of views" in line for line in lines)


def test_correctness_checks_pass_on_cpu(teacher):
    checks = gpu_check.correctness(TINY, CPU, teacher)
    assert len(checks) == 5
    assert all(c.passed for c in checks), checks


def test_reduced_precision_check_measures_a_real_difference(teacher):
    # CPU bf16 autocast rounds: the differences are not zero, so zero tolerances must fail.
    strict = gpu_check.check_reduced_precision(TINY, CPU, teacher, tolerances={"loss_rel": 0.0, "grad_rel": 0.0})
    assert not any(c.passed for c in strict)
    loose = gpu_check.check_reduced_precision(TINY, CPU, teacher)
    assert all(c.passed for c in loose)


def test_weight_and_metric_comparisons_see_differences():
    torch.manual_seed(0)
    a = models.build("cnn-4", 10, 3)
    b = models.build("cnn-4", 10, 3)  # the next draw: other weights
    assert gpu_check.max_weight_difference(a, a) == 0.0
    assert gpu_check.max_weight_difference(a, b) > 0.0
    assert gpu_check.max_weight_difference(a, models.build("cnn-8", 10, 3)) == math.inf
    run = ({"epoch": 1, "train_loss": 2.0, "val_acc": math.nan, "epoch_time_s": 1.0},)
    assert gpu_check.same_metrics(run, ({**run[0], "val_acc": float("nan"), "epoch_time_s": 9.0},))
    assert not gpu_check.same_metrics(run, ({**run[0], "train_loss": 2.0 + 1e-12},))
    assert not gpu_check.same_metrics(run, run + run)


def test_step_speed_on_cpu(teacher):
    before = torch.are_deterministic_algorithms_enabled()
    variants = (EAGER, Variant("channels_last", channels_last=True), Variant("nondeterministic", deterministic=False))
    speed = gpu_check.step_speed(TINY, CPU, teacher, variants)
    assert not speed.failed
    assert set(speed.seconds) == {(v.label, m) for v in variants for m in MODES}
    assert all(0 < s < 60 for s in speed.seconds.values())
    assert 0 < speed.ratio(EAGER.label, "cached", "ce") < math.inf
    verdict = gpu_check.verdict(speed, "channels_last")
    assert re.match(r"(helps|hurts|no clear effect) \(x\d+\.\d\d mean speed\)", verdict)
    assert gpu_check.recommendation(speed)
    assert torch.are_deterministic_algorithms_enabled() == before  # the variant's setting was undone


def write_sweep(folder: Path, epochs: dict[str, list[tuple[float, float]]], statuses: dict[str, str]) -> None:
    """A sweep's Parquet files as the driver writes them: per trial, (end in s after T0, epoch seconds) per epoch."""
    writer = ResultsWriter(folder)
    for key, rows in epochs.items():
        for epoch, (end, seconds) in enumerate(rows, 1):
            row = epoch_row("pack", key, f"id-{key}", {"epoch": epoch, "epoch_time_s": seconds})
            row["reported_at"] = T0 + timedelta(seconds=end)
            writer.add_epoch(row)
    for key, status in statuses.items():
        writer.finish_trial({"sweep": "pack", "trial_key": key, "trial_id": f"id-{key}", "status": status})
    writer.flush()


def test_packing_throughput_sums_rates_while_all_trials_run(tmp_path):
    # Trial a: 3 epochs of 2 s ending at 2, 4, 6 s; trial b: 3 epochs of 4 s ending at 5, 9, 13 s.
    write_sweep(tmp_path, {"a": [(2, 2), (4, 2), (6, 2)], "b": [(5, 4), (9, 4), (13, 4)]},
                {"a": "completed", "b": "completed"})
    result = gpu_check.read_packing_results(tmp_path, samples_per_epoch=1000, batch=100, expected_trials=2)
    # Epoch 1 left out: a trains [2, 6] at 500/s, b [5, 13] at 250/s; both run in [5, 6].
    assert result.trials == 2
    assert result.window_s == pytest.approx(1.0)
    assert result.samples_per_s == pytest.approx(750.0)
    assert result.step_ms == pytest.approx(1000 * 3.0 / 10)  # mean epoch 3 s over 10 steps


def test_packing_throughput_without_overlap_counts_the_whole_span(tmp_path):
    write_sweep(tmp_path, {"a": [(2, 2), (4, 2)], "b": [(10, 2), (12, 2)]}, {"a": "completed", "b": "completed"})
    result = gpu_check.read_packing_results(tmp_path, samples_per_epoch=1000, batch=100, expected_trials=2)
    assert result.window_s == 0.0
    assert result.samples_per_s == pytest.approx(2000 / 10)  # two epochs in [2, 12]


def test_packing_results_need_every_trial_completed(tmp_path):
    write_sweep(tmp_path, {"a": [(2, 2), (4, 2)], "b": [(2, 2)]}, {"a": "completed", "b": "failed"})
    with pytest.raises(PackingError, match="1 of 2 trials completed"):
        gpu_check.read_packing_results(tmp_path, samples_per_epoch=1000, batch=100, expected_trials=2)


def test_trial_window_and_memory_peaks(tmp_path):
    write_sweep(tmp_path, {"a": [(2, 2), (4, 2)]}, {"a": "completed"})
    start, end = gpu_check.trial_window(tmp_path)
    assert (start - T0.timestamp(), end - T0.timestamp()) == pytest.approx((0.0, 4.0))
    t = T0.timestamp()
    samples = [
        MemorySample(t + 1, 11, 900.0, "ray::ImplicitFunc.train"),
        MemorySample(t + 3, 11, 1200.0, "ray::ImplicitFunc.train"),
        MemorySample(t + 9, 11, 5000.0, "ray::ImplicitFunc.train"),  # after the trials
        MemorySample(t + 2, 12, 700.0, ""),  # title unreadable: counted
        MemorySample(t + 2, 13, 3000.0, "ray::IDLE"),  # a finished task's worker holding its cache
        MemorySample(t + 2, 14, 4000.0, "ray::train_teacher_task()"),
        MemorySample(t + 2, WHOLE_GPU, 8000.0, ""),
        MemorySample(t + 9, WHOLE_GPU, 9000.0, ""),  # after the trials
    ]
    assert gpu_check.trial_memory_peaks(samples, (start, end)) == {11: 1200.0, 12: 700.0}
    assert gpu_check.whole_gpu_peak(samples, (start, end)) == 8000.0
    assert gpu_check.whole_gpu_peak(samples[:6], (start, end)) is None


def test_sweep_command_asks_for_packed_trials(tmp_path):
    cmd = gpu_check.sweep_command(TINY, tmp_path / "cifar", tmp_path / "storage", 4, 0.25)
    flags = dict(zip(cmd[2::2], cmd[3::2]))
    assert cmd[1].endswith("sweeps/tau_grid.py")
    assert flags["--gpus-per-trial"] == "0.25" and flags["--max-concurrent"] == "4" and flags["--seeds"] == "4"
    assert flags["--losses"] == "kl" and float(flags["--taus"]) == 4.0 and float(flags["--alphas"]) == 0.9
    assert flags["--name"] == "pack4" and flags["--preset"] == "paper"
