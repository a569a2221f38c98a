"""Running ``sweeps/tau_grid.py`` as a user does, for the end-to-end tests, and reading back
what it wrote."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mlflow import MlflowClient
from processes import ray_env

ROOT = Path(__file__).resolve().parents[1]
TAU_GRID = str(ROOT / "sweeps" / "tau_grid.py")
# digits by name: these tests pin digits-sized models and timings, not the cpu preset.
SMALL = ["--preset", "digits", "--teacher", "cnn-8", "--student", "cnn-4", "--teacher-epochs", "2"]


def sweep_cmd(storage: Path, name: str, *extra: str, address: str | None = "auto") -> list[str]:
    """The command line of a small digits sweep (joining the cluster at ``address``; None: embedded Ray)."""
    where = ["--address", address] if address else []
    return [sys.executable, TAU_GRID, *where, "--storage", str(storage), "--name", name, *SMALL, *extra]


def run_sweep(cmd: list[str], timeout: float = 400, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env or ray_env(), cwd=ROOT)


# Runs a sweep script as ``python SCRIPT ARGS`` does, then says whether Ray was ever imported.
_WITHOUT_RAY = """
import runpy, sys
sys.argv = sys.argv[1:]
code = 0
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as end:
    code = end.code
print("ray imported:", "ray" in sys.modules)
sys.exit(code)
"""


def rerun_without_ray(cmd: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Invoke a finished sweep again (``cmd`` as for :func:`sweep_cmd`) and check that it exits 0,
    says it trained nothing and never imported Ray (so never started or joined a cluster)."""
    proc = run_sweep([cmd[0], "-c", _WITHOUT_RAY, *cmd[1:]], timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "nothing was trained: every trial had finished before this run" in proc.stdout
    assert proc.stdout.rstrip().endswith("ray imported: False"), proc.stdout[-2000:]
    return proc


def one_parent(uri: str | Path, name: str) -> tuple[MlflowClient, object, list]:
    """(client, the sweep's one parent run, its trial runs); fails unless MLflow holds exactly one
    parent for the sweep, FINISHED, and every trial run is its child."""
    client, parents, children = mlflow_runs(uri, name)
    assert [p.info.status for p in parents] == ["FINISHED"], [(p.info.run_name, p.info.status) for p in parents]
    parent = parents[0]
    assert {c.data.tags.get("mlflow.parentRunId") for c in children} == {parent.info.run_id}
    return client, parent, children


def start_sweep(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """The sweep as a background process writing its output to ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env or ray_env(), cwd=ROOT)


def mlflow_runs(uri: str | Path, name: str) -> tuple[MlflowClient, list, list]:
    """(client, parent runs, trial runs) of sweep ``name`` in a tracking store: a URI, or a
    storage folder holding the default ``mlflow.db``."""
    if isinstance(uri, Path):
        uri = f"sqlite:///{uri / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("kd_tune.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("kd_tune.role") == "trial"]
    return client, parents, children
