"""When a trial reports and checkpoints does not change what it computes: the same small sweep
with the old schedule (a report per epoch, a checkpoint every epoch) and with the defaults
(reports gathered by seconds of training, a checkpoint by time and at the end) records the
same epochs and the same final rows, number for number."""
from __future__ import annotations

import pandas as pd
import pytest
from sweep_runs import run_sweep, sweep_cmd

from analysis.results_io import load_epochs, load_trials

# Ids (Tune's, MLflow's), clocks and durations differ between any two runs; every other column must not.
_NOT_COMPARED = {"sweep"}


def _numbers(frame: pd.DataFrame) -> pd.DataFrame:
    keep = [c for c in frame.columns if c not in _NOT_COMPARED and not c.endswith(("_id", "_at", "_s"))]
    return frame[keep].sort_values([k for k in ("trial_key", "epoch") if k in keep]).reset_index(drop=True)


@pytest.mark.slow
def test_the_report_and_checkpoint_schedule_does_not_change_the_numbers(ray_cluster, tmp_path):
    runs = {"old": ["--report-every-s", "0", "--checkpoint-every-s", "0", "--checkpoint-every", "1"],
            "new": []}
    for name, flags in runs.items():
        cmd = sweep_cmd(tmp_path, name, "--epochs", "3", "--seeds", "1", "--taus", "4", "--alphas", "1",
                        "--losses", "kl,mse", *flags)
        proc = run_sweep(cmd)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    epochs = {name: _numbers(load_epochs(tmp_path / name)) for name in runs}
    trials = {name: _numbers(load_trials(tmp_path / name)) for name in runs}
    assert len(epochs["old"]) == 2 * 3 and set(trials["old"]["status"]) == {"completed"}
    pd.testing.assert_frame_equal(epochs["old"], epochs["new"], check_exact=True)
    pd.testing.assert_frame_equal(trials["old"], trials["new"], check_exact=True)
