"""End to end on object storage: sweeps with ``--storage s3://kd-tune-test/...`` against a real
S3-compatible server (moto, authentication on) and a real `ray start` cluster, run as a
user runs them; then read back through the same clients kd-tune uses.

Everything a sweep stores goes to the bucket: results, teachers, the teacher-logit cache,
sweep.json, tables, figures, Ray Tune's state and checkpoints and the MLflow artifacts;
the working directory holds only the driver's MLflow file. A killed driver resumes; a
second sweep reuses the stored teacher and cache; each node downloads a cache once.
"""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from processes import ray_env
from sweep_runs import SMALL, TAU_GRID, mlflow_runs

from analysis.results_io import load_epochs, load_trials
from kd_tune.storage.location import open_storage

GRID = ["--epochs", "2", "--seeds", "2", "--taus", "3,inf", "--alphas", "1", "--checkpoint-every", "1"]
TRIALS = 2 * (2 + 1 + 1)  # seeds x (kl tau 3, kl tau inf, mse, ce)


def s3_sweep(s3, uri: str, name: str, local_cache, *extra: str, address: str = "auto") -> list[str]:
    return [sys.executable, TAU_GRID, "--address", address, "--storage", uri, "--name", name,
            "--local-cache", str(local_cache), *SMALL, *extra]


def copy_records(folder) -> list[dict]:
    """The records of the node-local cache copies in ``folder`` (kd_tune.storage.local_copies)."""
    return [json.loads(p.read_text()) for p in sorted(Path(folder).glob("copies/*/*/.copy.json"))]


def check_copies_once(caches, trials) -> None:
    """Each node holds one copy of the one cache, downloaded at most once (not at all on the
    node that built it), and the trials' uses of it were served from that copy."""
    records = [copy_records(folder) for folder in caches]
    assert [len(r) for r in records] == [1] * len(caches), records
    assert all(r[0]["downloads"] == (0 if r[0]["built"] else 1) for r in records), records
    uses = sum(r[0]["downloads"] + r[0]["reuses"] + int(r[0]["built"]) for r in records)
    assert uses >= int((trials["loss"] != "ce").sum()), records


def run(cmd, cwd, env, timeout=400) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)


@pytest.mark.slow
def test_a_sweep_on_s3_resumes_is_reused_and_leaves_only_mlflow_here(ray_cluster, s3, tmp_path):
    env = s3.env(ray_env())
    work = tmp_path / "work"
    work.mkdir()
    prefix = "sweeps-e2e"
    uri = s3.uri(prefix)
    cache = tmp_path / "local-cache"
    cmd = s3_sweep(s3, uri, "tiny", cache, *GRID)
    store = open_storage(uri, endpoint=s3.endpoint)

    # The driver is killed once some trials have rows in the bucket; the same command resumes.
    with open(tmp_path / "first.log", "wb") as out:
        driver = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=work)
    try:
        deadline = time.monotonic() + 300
        with pytest.MonkeyPatch.context() as m:
            for key, value in s3.env({}).items():
                m.setenv(key, value)
            while time.monotonic() < deadline and driver.poll() is None:
                if store.exists("tiny/results/trials") and len(load_trials(store / "tiny")) >= 2:
                    break
                time.sleep(0.5)
        assert driver.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.kill()
        driver.wait()
    proc = run(cmd, work, env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "already finished)" in proc.stdout and "(0 already finished)" not in proc.stdout
    assert "the process that held it before (pid " in proc.stdout  # the killed driver's lease, taken over

    with pytest.MonkeyPatch.context() as m:
        for key, value in s3.env({}).items():
            m.setenv(key, value)
        trials, epochs = load_trials(store / "tiny"), load_epochs(store / "tiny")
    assert len(trials) == TRIALS and trials["trial_key"].is_unique and set(trials["status"]) == {"completed"}
    assert len(epochs) == TRIALS * 2 and not epochs.duplicated(["trial_key", "epoch"]).any()

    keys = s3.keys(prefix)
    has = lambda start, end="": any(k.startswith(start) and k.endswith(end) for k in keys)  # noqa: E731
    assert has("tiny/results/trials/part-", ".parquet") and has("tiny/results/epochs/part-", ".parquet")
    assert has("teachers/", "/teacher.pt") and has("teachers/", "/meta.json")
    assert has("teacher_logits/", "/meta.json")
    for name in ("tiny/sweep.json", "tiny/teachers.parquet", "tiny/tables/tau_alpha.csv", "tiny/figures/tau.png"):
        assert name in keys, name
    # Ray Tune's own state: the experiment, each trial's records and checkpoints
    assert has("tiny/experiment_state-", ".json") and "tiny/tuner.pkl" in keys, keys
    assert has("tiny/trial_", "/result.json") and any(k.startswith("tiny/trial_") and "/checkpoint_" in k
                                                       for k in keys), keys
    assert has("mlartifacts/")  # MLflow's artifacts (the parent's tables and figures)
    assert not has(".locks/", ".lock")  # released
    assert sorted(p.name for p in work.iterdir()) == ["mlflow.db"]

    # No credential in anything the sweep wrote or printed.
    secret, access = s3.secret_key.encode(), s3.access_key.encode()
    client = s3.client()
    for key in keys:
        body = client.get_object(Bucket=s3.bucket, Key=f"{prefix}/{key}")["Body"].read()
        assert secret not in body and access not in body, key
    db = (work / "mlflow.db").read_bytes()
    assert secret not in db and access not in db
    assert s3.secret_key not in out and s3.access_key not in out

    _, parents, children = mlflow_runs(f"sqlite:///{work / 'mlflow.db'}", "tiny")
    assert len(children) == TRIALS and {c.info.status for c in children} == {"FINISHED"}
    assert all(p.info.artifact_uri.startswith(f"{uri}/mlartifacts/") for p in parents)
    assert "storage" in parents[0].data.params and s3.secret_key not in json.dumps(parents[0].data.params)

    # The tables through analysis, straight from the bucket, equal the ones the sweep uploaded.
    table = run([sys.executable, "-m", "analysis", f"{uri}/tiny", "--table", "tau_alpha", "--format", "csv"],
                work, env, timeout=120)
    assert table.returncode == 0, table.stderr
    uploaded = client.get_object(Bucket=s3.bucket, Key=f"{prefix}/tiny/tables/tau_alpha.csv")["Body"].read()
    assert table.stdout.strip() == uploaded.decode().strip()

    # Ray Tune's own reader opens the experiment on the URI.
    analysis = run([sys.executable, "-c", (
        "import sys; from ray.tune import ExperimentAnalysis; "
        "from kd_tune.storage.location import open_storage, s3_filesystem;"
        "s = open_storage(sys.argv[1]); a = ExperimentAnalysis(s.fs_path(), storage_filesystem=s3_filesystem(s));"
        "print(len(a.trials))"), f"{uri}/tiny"], work, env, timeout=120)
    assert analysis.returncode == 0, analysis.stderr[-3000:]
    assert int(analysis.stdout.split()[-1]) == TRIALS

    # A second sweep on the same storage trains no teacher and computes no cache.
    again = run(s3_sweep(s3, uri, "again", cache, "--epochs", "1", "--seeds", "1", "--taus", "3", "--alphas", "1",
                         "--losses", "kl"), work, env)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert "teachers: 1 needed, 1 in the store, 0 to train" in again.stdout
    assert "1 cached, 0 to compute" in again.stdout
    # One node (this machine, the driver's too): one copy of the one cache for both sweeps.
    (record,) = copy_records(cache)
    assert record["downloads"] <= 1 and record["uri"].startswith(f"{uri}/teacher_logits/"), record


@pytest.mark.parametrize(("change", "message"), [
    ({"AWS_SECRET_ACCESS_KEY": "wrong"}, "refused the credentials"),
    ({"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, "does not answer"),
    ({"bucket": "no-such-bucket"}, "bucket 'no-such-bucket' does not exist"),
])
def test_bad_object_storage_is_refused_in_seconds_before_ray(s3, tmp_path, change, message):
    env = s3.env(ray_env())
    bucket = change.pop("bucket", s3.bucket)
    env.update(change)
    started = time.monotonic()
    proc = run([sys.executable, TAU_GRID, "--storage", f"s3://{bucket}/x", *SMALL], tmp_path, env, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert "Ray" not in proc.stdout  # before Ray started
    assert time.monotonic() - started < 30
    assert "wrong" not in proc.stderr and s3.secret_key not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written here


TWO_NODES = """
import json, os, subprocess, sys
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before Ray is imported: loopback only
os.environ["RAY_AUTH_MODE"] = "token"  # auth on, with the token of ~/.ray/auth_token, as the driver expects
from ray.cluster_utils import Cluster

caches, cmd = json.loads(sys.argv[1]), json.loads(sys.argv[2])
cluster = Cluster(initialize_head=True, head_node_args={
    "num_cpus": 1, "node_ip_address": "127.0.0.1", "env_vars": {"KD_TUNE_LOCAL_CACHE": caches[0]}})
cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1", env_vars={"KD_TUNE_LOCAL_CACHE": caches[1]})
cluster.wait_for_nodes()
try:
    done = subprocess.run([*cmd, "--address", cluster.address], capture_output=True, text=True, timeout=400)
finally:
    cluster.shutdown()
print(json.dumps({"rc": done.returncode, "out": done.stdout, "err": done.stderr}))
"""


def test_on_two_nodes_each_node_downloads_the_cache_once(s3, tmp_path):
    # Each raylet runs with the store's credentials and a local cache of its own, as two
    # machines would; the driver keeps its own local cache too.
    env = s3.env(ray_env())
    # A Ray folder of its own (the session cluster's stays untouched), short for Ray's socket paths.
    ray_tmp = tempfile.mkdtemp(prefix="kdr-", dir="/tmp")
    env["RAY_TMPDIR"] = ray_tmp
    caches = [str(tmp_path / "node-a"), str(tmp_path / "node-b")]
    env["KD_TUNE_LOCAL_CACHE"] = str(tmp_path / "driver")
    uri = s3.uri()
    cmd = [sys.executable, TAU_GRID, "--storage", uri, "--name", "two", *SMALL, "--epochs", "1", "--seeds", "3",
           "--taus", "3", "--alphas", "1", "--losses", "kl,mse"]
    try:
        proc = run([sys.executable, "-c", TWO_NODES, json.dumps(caches), json.dumps(cmd)], tmp_path, env, timeout=600)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["rc"] == 0, (result["out"] + result["err"])[-4000:]
    assert ": 2 node(s), 2 CPUs" in result["out"], result["out"][:2000]
    with pytest.MonkeyPatch.context() as m:
        for key, value in s3.env({}).items():
            m.setenv(key, value)
        trials = load_trials(open_storage(uri) / "two")
    assert len(trials) == 6 and set(trials["status"]) == {"completed"}
    check_copies_once(caches, trials)
