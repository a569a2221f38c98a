"""A node lost between the driver's node listing and its storage check is left out (found by
benchmarks/chaos.py: the rerun driver crashed with Ray's TaskUnschedulableError).

Runs a real two-node ``ray.cluster_utils.Cluster`` on 127.0.0.1 in a subprocess, with a Ray
folder and token of its own.
"""
from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from processes import ray_env

ROOT = Path(__file__).resolve().parents[2]

LOST = """
import json, logging, sys
logging.basicConfig(level=logging.INFO, format="%(message)s")
from ray.cluster_utils import Cluster
import ray
from kd_tune.storage.location import open_storage
from kd_tune.sweep.cluster import check_shared_storage, connect

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1",
                                                        "include_dashboard": False})
worker = cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
cluster.wait_for_nodes()
try:
    info = connect(cluster.address)
    cluster.remove_node(worker, allow_graceful=False)  # preempted after the listing
    check_shared_storage(info, open_storage(sys.argv[1]))
    print(json.dumps({"listed": len(info.nodes), "lost": worker.node_id}))
finally:
    ray.shutdown()
    cluster.shutdown()
"""


@pytest.mark.slow
def test_a_node_lost_after_the_listing_is_left_out_of_the_storage_check(tmp_path):
    env = ray_env()
    ray_tmp = tempfile.mkdtemp(prefix="kdl-", dir="/tmp")  # short: Ray's socket paths have a length limit
    env.update(RAY_TMPDIR=ray_tmp, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32),
               PYTHONPATH=str(ROOT))
    try:
        proc = subprocess.run([sys.executable, "-c", LOST, str(tmp_path / "storage")], capture_output=True,
                              text=True, timeout=120, env=env, cwd=ROOT)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["listed"] == 2
    assert f"node 127.0.0.1 {result['lost'][:8]} left the cluster during the storage check; it is left out" \
        in proc.stderr, proc.stderr[-3000:]
    assert list((tmp_path / "storage").iterdir()) == []  # the marker was removed
