"""A worker lost while Ray Tune hands its idle actor to the next trial costs that trial nothing.

Tune retries a trial whose worker dies only if the trial is RUNNING; with actor reuse the next
trial waits PENDING for the actor's ``reset``, and a worker that dies then errored the trial at
once whatever ``--max-failures`` said (found by ``benchmarks/chaos.py``). The sweep now resumes
such trials within the same invocation. ``sweeps/tau_grid.py`` on an embedded Ray, one trial at a
time, with the worker SIGKILLed in Tune's loop as the first trial ends (``worker_killer.py``)."""
from __future__ import annotations

from pathlib import Path

import pytest
from processes import ray_env
from sweep_runs import one_parent, run_sweep, sweep_cmd

from analysis.results_io import load_epochs, load_trials


@pytest.mark.slow
def test_a_worker_lost_during_the_next_trials_reset_is_resumed_in_the_same_invocation(tmp_path):
    marker = tmp_path / "killed.pid"
    env = dict(ray_env(), RAY_TUNE_CALLBACKS="worker_killer.KillWorkerAtFirstEnd", KD_TEST_KILL_MARKER=str(marker),
               PYTHONPATH=str(Path(__file__).parent))
    # One slot: every trial after the first is handed the first one's actor.
    cmd = sweep_cmd(tmp_path, "reset", "--epochs", "2", "--seeds", "1", "--losses", "mse,ce", "--alphas", "0.5,1",
                    "--cpus-per-trial", "2", "--max-failures", "2", address=None)
    proc = run_sweep(cmd, env=env)
    out = proc.stdout + proc.stderr
    assert marker.exists(), out[-3000:]  # the worker was killed
    assert proc.returncode == 0, out[-4000:]
    assert "lost their worker as it was handed to them" in out, out[-4000:]
    trials, epochs = load_trials(tmp_path / "reset"), load_epochs(tmp_path / "reset")
    assert len(trials) == 3 and set(trials["status"]) == {"completed"}, trials[["trial_key", "status", "error"]]
    assert not epochs.duplicated(["trial_key", "epoch"]).any()
    assert sorted(epochs.groupby("trial_key")["epoch"].apply(list).tolist()) == [[1, 2]] * 3
    _, _, children = one_parent(tmp_path, "reset")
    assert sorted(c.info.status for c in children) == ["FINISHED"] * 3
