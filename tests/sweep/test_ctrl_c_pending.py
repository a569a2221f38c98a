"""Ctrl-C of a grid sweep while some of its trials have not started stops it cleanly (found by
benchmarks/chaos.py: the driver ended in a TypeError, since Tune's result for a trial that never
reported has no config). ``sweeps/tau_grid.py`` on an embedded Ray, 2 CPUs a trial."""
from __future__ import annotations

import signal

import pytest
from sweep_runs import start_sweep, sweep_cmd
from test_sweep_failures import stored_rows, wait_for


@pytest.mark.slow
def test_ctrl_c_with_trials_not_started_stops_cleanly(tmp_path):
    # mse at 2 alphas and ce, 2 seeds: 6 trials, which Tune makes at once (pending) and runs as
    # slots free up (--max-concurrent would make them one by one: none would be pending).
    cmd = sweep_cmd(tmp_path, "pending", "--epochs", "2", "--seeds", "2", "--losses", "mse,ce", "--alphas",
                    "0.5,1", "--cpus-per-trial", "2", address=None)
    log = tmp_path / "driver.log"
    driver = start_sweep(cmd, log)
    try:
        wait_for(lambda: stored_rows(tmp_path / "pending") >= 1, driver)
        driver.send_signal(signal.SIGINT)
        driver.wait(timeout=120)
    finally:
        driver.kill()
        driver.wait()
    out = log.read_text()
    assert driver.returncode == 1, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert "; rerun the same command to resume it" in out
    assert 1 <= stored_rows(tmp_path / "pending") < 6
