"""A sweep is one MLflow parent run however often it is invoked, on an embedded Ray: killed
mid-way, resumed to the end, invoked again (no Ray: nothing left to train), its parent deleted
in MLflow and made again with the children put back under it."""
from __future__ import annotations

import json
import signal
import time

import pytest
from sweep_runs import one_parent, rerun_without_ray, run_sweep, start_sweep, sweep_cmd

from analysis.results_io import load_trials


@pytest.mark.slow
def test_killed_resumed_and_invoked_again_the_sweep_keeps_one_parent(tmp_path):
    cmd = sweep_cmd(tmp_path, "once", "--epochs", "2", "--seeds", "2", "--taus", "1", "--alphas", "1",
                    "--checkpoint-every", "1", "--max-concurrent", "1", address=None)
    sweep_dir = tmp_path / "once"
    driver = start_sweep(cmd, tmp_path / "first.log")
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and driver.poll() is None:
            if (sweep_dir / "results" / "trials").is_dir() and len(load_trials(sweep_dir)) >= 2:
                break
            time.sleep(0.2)
        assert driver.poll() is None, "the sweep ended before it could be killed"
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.kill()
        driver.wait()
    assert 2 <= len(load_trials(sweep_dir)) < 6

    resumed = run_sweep(cmd)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    trials = load_trials(sweep_dir)
    assert len(trials) == 6 and set(trials["status"]) == {"completed"}  # kl, mse, ce x 2 seeds
    client, parent, children = one_parent(tmp_path, "once")
    assert sorted(c.data.tags["kd_tune.trial_key"] for c in children) == sorted(trials["trial_key"])

    again = rerun_without_ray(cmd)
    assert "all 6 trials finished before; nothing to train (Ray not started)" in again.stdout
    assert (sweep_dir / "tables" / "tau_alpha.csv").is_file()
    _, same, children = one_parent(tmp_path, "once")
    assert same.info.run_id == parent.info.run_id and len(children) == 6

    # Deleted in the MLflow UI: the next invocation makes the parent again, once, puts every
    # child back under it and records it in the sweep's folder.
    client.delete_run(parent.info.run_id)
    rerun_without_ray(cmd)
    _, made, children = one_parent(tmp_path, "once")
    assert made.info.run_id != parent.info.run_id and len(children) == 6
    assert json.loads((sweep_dir / "sweep.json").read_text())["mlflow_parent_run_id"] == made.info.run_id
    assert "trials.json" in {a.path for a in client.list_artifacts(made.info.run_id)}
