"""End to end: what a sweep survives, run as a user runs it (``sweeps/tau_grid.py`` in a
subprocess, digits, tiny models): a tracking server killed mid-sweep, damaged results and a
deleted MLflow store, two sweeps sharing one storage, and the network it listens on
(loopback Ray, a tracking server with basic authentication)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pandas as pd
import pytest
from processes import descendants, free_port, listening_sockets, mlflow_server, ray_env
from sweep_runs import ROOT, mlflow_runs, run_sweep, start_sweep, sweep_cmd

from analysis.results_io import load_epochs, load_trials
from kd_tune.results.trial_tables import trials_table
from kd_tune.train.measurements import SUMMARY


def recover(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kd_tune.recover", *args], capture_output=True, text=True,
                          timeout=300, env=env or ray_env(), cwd=ROOT)


def metric_history(client, run_id: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, "test_acc"))


def wait_for(condition, process: subprocess.Popen, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, "the sweep ended first"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def stored_rows(sweep_dir) -> int:
    try:
        return len(load_trials(sweep_dir))
    except (FileNotFoundError, ValueError):  # not there yet, or a part merged away while listing
        return 0


@pytest.mark.slow
def test_a_tracking_server_killed_mid_sweep_costs_no_result(ray_cluster, tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    sweep_dir = tmp_path / "outage"
    # kl: 2 taus, mse, ce -> 4 settings x 2 seeds
    cmd = sweep_cmd(tmp_path, "outage", "--epochs", "3", "--seeds", "2", "--taus", "1,inf", "--alphas", "1",
                    "--mlflow-uri", uri, "--checkpoint-every", "1", "--max-concurrent", "1")
    with mlflow_server(tmp_path / "server", port) as server:
        driver = start_sweep(cmd, tmp_path / "sweep.log")
        try:
            wait_for(lambda: stored_rows(sweep_dir) >= 1, driver)
            os.killpg(server.pid, signal.SIGKILL)  # the tracking server dies mid-sweep
            killed_at = stored_rows(sweep_dir)
            # the trials go on while it is down: rows keep reaching Parquet
            wait_for(lambda: stored_rows(sweep_dir) >= killed_at + 2, driver)
            assert driver.wait(400) == 0, (tmp_path / "sweep.log").read_text()[-3000:]
        finally:
            driver.kill()
            driver.wait()
    out = (tmp_path / "sweep.log").read_text()
    assert "Traceback" not in out
    assert out.count("tracking is behind") == 1 and "tracking caught up" not in out
    assert "MLflow is still behind: " in out and f"python -m kd_tune.recover sync {sweep_dir}" in out
    trials, epochs = load_trials(sweep_dir), load_epochs(sweep_dir)
    assert len(trials) == 8 and set(trials["status"]) == {"completed"} and len(epochs) == 24
    assert (sweep_dir / "tracking" / "outbox.jsonl").stat().st_size > 0

    with mlflow_server(tmp_path / "server", port):  # back, with the same store
        proc = recover("sync", str(sweep_dir))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        client, parents, children = mlflow_runs(uri, "outage")
        assert [p.info.status for p in parents] == ["FINISHED"]
        assert len(children) == 8 and {c.info.status for c in children} == {"FINISHED"}
        by_key = {c.data.tags["kd_tune.trial_key"]: c for c in children}
        assert set(by_key) == set(trials["trial_key"])
        rows = load_trials(sweep_dir).set_index("trial_key")
        for key, child in by_key.items():
            assert rows.loc[key, "mlflow_run_id"] == child.info.run_id
            expected = epochs[epochs["trial_key"] == key].sort_values("epoch")
            assert metric_history(client, child.info.run_id) == list(zip(expected["epoch"], expected["test_acc"]))
        assert (sweep_dir / "tracking" / "outbox.jsonl").stat().st_size == 0


@pytest.mark.slow
def test_damaged_results_are_rebuilt_and_a_deleted_mlflow_store_refilled(ray_cluster, tmp_path):
    sweep_dir = tmp_path / "rebuild"
    cmd = sweep_cmd(tmp_path, "rebuild", "--epochs", "2", "--seeds", "1", "--taus", "1", "--alphas", "1",
                    "--checkpoint-every", "1")
    proc = run_sweep(cmd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    before = load_trials(sweep_dir).set_index("trial_key").sort_index()
    epochs_before = load_epochs(sweep_dir).set_index(["trial_key", "epoch"]).sort_index()
    assert len(before) == 3 and before["mlflow_run_id"].notna().all()

    [part] = trials_table(sweep_dir).parts()
    part.path.write_bytes(part.path.read_bytes()[:-64])  # a truncated file
    proc = run_sweep(cmd, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{part.path} is damaged" in proc.stderr
    assert f"python -m kd_tune.recover rebuild {sweep_dir}" in proc.stderr

    proc = recover("rebuild", str(sweep_dir))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 trial row(s), 6 epoch row(s)" in proc.stdout
    after = load_trials(sweep_dir).set_index("trial_key").sort_index()
    # everything kept, mlflow_run_id and started_at included; finished_at to Tune's whole seconds. The
    # end-measurement summaries never reach Tune's records: NaN after a rebuild (samples.parquet/ keeps the values).
    assert after[list(SUMMARY)].isna().all().all() and before[list(SUMMARY)].notna().all().all()
    pd.testing.assert_frame_equal(after.drop(columns=["finished_at", *SUMMARY]),
                                  before.drop(columns=["finished_at", *SUMMARY]))
    # Tune records whole seconds, a moment before the driver writes its row (longer on a loaded machine).
    assert ((before["finished_at"] - after["finished_at"]).dt.total_seconds().between(0, 5)).all()
    epochs_after = load_epochs(sweep_dir).set_index(["trial_key", "epoch"]).sort_index()
    pd.testing.assert_frame_equal(epochs_after.drop(columns="reported_at"), epochs_before.drop(columns="reported_at"))
    assert any(p.name.startswith(".results.damaged-") for p in sweep_dir.iterdir())

    (tmp_path / "mlflow.db").unlink()  # the MLflow store is lost
    proc = run_sweep(cmd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"MLflow holds 0 of the 3 trials recorded in {sweep_dir}: refilling 3" in proc.stdout
    client, parents, children = mlflow_runs(tmp_path, "rebuild")
    assert len(children) == 3 and {c.info.status for c in children} == {"FINISHED"}
    refilled = load_trials(sweep_dir).set_index("trial_key")
    for child in children:
        key = child.data.tags["kd_tune.trial_key"]
        assert refilled.loc[key, "mlflow_run_id"] == child.info.run_id  # the results point at the new runs
        assert child.data.tags["kd_tune.started_at"] == before.loc[key, "started_at"].isoformat()
        assert child.data.params["loss"] == before.loc[key, "loss"]
        expected = epochs_before.loc[key]
        assert metric_history(client, child.info.run_id) == list(zip(expected.index, expected["test_acc"]))
    again = run_sweep(cmd)  # whole again: nothing more to refill
    assert again.returncode == 0 and "refilling" not in again.stdout


@pytest.mark.slow
def test_two_sweeps_sharing_a_storage_build_a_teacher_and_its_cache_once(ray_cluster, tmp_path):
    # Different trials, the same teacher and teacher-logit cache; a fresh storage (no MLflow store yet).
    kl = sweep_cmd(tmp_path, "kl", "--epochs", "1", "--seeds", "2", "--losses", "kl", "--taus", "1", "--alphas", "1")
    mse = sweep_cmd(tmp_path, "mse", "--epochs", "1", "--seeds", "2", "--losses", "mse", "--alphas", "1")
    drivers = [start_sweep(cmd, tmp_path / f"{name}.log") for cmd, name in ((kl, "kl"), (mse, "mse"))]
    try:
        codes = [d.wait(400) for d in drivers]
    finally:
        for driver in drivers:
            driver.kill()
            driver.wait()
    logs = [(tmp_path / f"{name}.log").read_text() for name in ("kl", "mse")]
    assert codes == [0, 0], "\n".join(log[-3000:] for log in logs)
    both = "\n".join(logs)
    assert "Traceback" not in both and "already exists" not in both
    assert len(re.findall(r"teacher cnn-8 \(\w+\) trained: ", both)) == 1  # trained once ...
    assert len([p for p in (tmp_path / "teachers").iterdir() if not p.name.startswith(".")]) == 1  # .locks aside
    builds = [line for line in both.splitlines() if re.match(r"teacher logits \w+ \(teacher cnn-8\): ", line)]
    assert len([line for line in builds if "by another sweep" not in line]) == 1  # ... and its logits once
    for name in ("kl", "mse"):
        trials = load_trials(tmp_path / name)
        assert len(trials) == 2 and set(trials["status"]) == {"completed"}
        _, parents, children = mlflow_runs(tmp_path, name)
        assert [p.info.status for p in parents] == ["FINISHED"] and len(children) == 2


def test_a_loopback_cluster_address_joins(ray_cluster, tmp_path):
    env = ray_env()
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")  # the driver must keep to loopback by itself
    proc = run_sweep(sweep_cmd(tmp_path, "joined", "--epochs", "1", "--seeds", "1", "--losses", "ce",
                               address=ray_cluster), timeout=180, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"Ray cluster at {ray_cluster}: 1 node(s)" in proc.stdout


AUTH_INI = """[mlflow]
default_permission = READ
database_uri = sqlite:///{folder}/basic_auth.db
admin_username = admin
admin_password = {password}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
"""


def _status(url: str, user: str | None = None, password: str | None = None) -> int:
    request = urllib.request.Request(url)
    if user:
        import base64
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.mark.slow
def test_embedded_ray_stays_on_loopback_and_logs_to_a_server_with_basic_auth(tmp_path, monkeypatch):
    password = "kd-tune-Test-4711"
    folder = tmp_path / "server"
    folder.mkdir()
    (folder / "auth.ini").write_text(AUTH_INI.format(folder=folder, password=password))
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in ray_env().items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    cmd = sweep_cmd(tmp_path, "secure", "--epochs", "3", "--seeds", "2", "--taus", "1", "--alphas", "1",
                    "--mlflow-uri", uri, address=None)  # an embedded Ray
    with mlflow_server(folder, port, auth_config=folder / "auth.ini"):
        search = f"{uri}/api/2.0/mlflow/experiments/search?max_results=1"
        assert _status(search) == 401 and _status(search, "admin", "wrong") == 401
        assert _status(search, "admin", password) == 200

        refused = run_sweep(cmd, timeout=120, env=env)  # no credentials: refused before anything starts
        assert refused.returncode == 2 and "requires authentication (HTTP 401)" in refused.stderr
        assert not (tmp_path / "secure").exists()

        env.update(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=password)
        driver = start_sweep(cmd, tmp_path / "sweep.log", env=env)
        sockets = set()
        try:
            while driver.poll() is None:  # every listening socket of the driver and what it started
                sockets |= {(address, port) for address, port, _ in listening_sockets(descendants(driver.pid))}
                time.sleep(0.5)
        finally:
            driver.kill()
            driver.wait()
        out = (tmp_path / "sweep.log").read_text()
        assert driver.returncode == 0, out[-3000:]
        assert "embedded Ray on this machine" in out
        assert len(sockets) >= 3, sockets  # Ray's GCS, raylet, object manager, workers...
        assert {address for address, _ in sockets} <= {"127.0.0.1", "::1"}, sockets

        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        _, parents, children = mlflow_runs(uri, "secure")
        trials = load_trials(tmp_path / "secure")
        assert [p.info.status for p in parents] == ["FINISHED"]
        assert {c.info.run_id for c in children} == set(trials["mlflow_run_id"]) and len(children) == 6


@pytest.fixture(autouse=True)
def _no_mlflow_credentials(monkeypatch):
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
                 "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
