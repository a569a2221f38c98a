"""The pure parts of kd_tune.sweep.cluster: resource checks, packing, addresses (no Ray started)."""
from __future__ import annotations

import os
import time

import pytest
from processes import free_port

from kd_tune.sweep import cluster
from kd_tune.sweep.cluster import (
    CONNECT_TIMEOUT_S,
    ClusterError,
    ClusterInfo,
    _is_loopback,
    check_resources,
    concurrent_trials,
    connect,
    node_summary,
    requested_address,
)

_ENV = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """Every Ray variable the module reads or sets is unset here and restored afterwards."""
    for name in _ENV:
        monkeypatch.setenv(name, "placeholder")  # recorded, so the original comes back after the test
        monkeypatch.delenv(name)


def _node(cpu, gpu=0.0, i=0):
    return {"CPU": float(cpu), "GPU": float(gpu), "node_id": f"n{i}", "ip": f"10.0.0.{i}"}


def _info(*nodes, address="10.0.0.1:6379"):
    return ClusterInfo(address, False, tuple(_node(c, g, i) for i, (c, g) in enumerate(nodes)))


CPU_ONLY = _info((8, 0), (2, 0))
MIXED = _info((4, 1), (2, 0))


def test_totals():
    assert (MIXED.total_cpus, MIXED.total_gpus) == (6.0, 1.0)
    assert (ClusterInfo("embedded", True, ()).total_cpus, ClusterInfo("embedded", True, ()).total_gpus) == (0, 0)


def test_node_summary():
    assert node_summary(MIXED) == "Ray cluster at 10.0.0.1:6379: 2 node(s), 6 CPUs, 1 GPUs"
    embedded = ClusterInfo("embedded", True, (_node(2),))
    assert node_summary(embedded) == "embedded Ray on this machine: 1 node(s), 2 CPUs, 0 GPUs"


# -- check_resources ---------------------------------------------------------------------


def test_requests_that_fit_pass():
    assert check_resources(CPU_ONLY, cpus_per_trial=8, gpus_per_trial=0) is None
    assert check_resources(CPU_ONLY, cpus_per_trial=0.5, gpus_per_trial=0) is None
    assert check_resources(MIXED, cpus_per_trial=4, gpus_per_trial=1) is None
    assert check_resources(MIXED, cpus_per_trial=1, gpus_per_trial=0.25) is None  # fractional GPUs fit


def test_a_gpu_request_on_a_cluster_without_gpus():
    with pytest.raises(ClusterError, match="has no GPUs") as err:
        check_resources(CPU_ONLY, cpus_per_trial=1, gpus_per_trial=0.5)
    assert "--gpus-per-trial 0.5" in str(err.value) and "10.0.0.1:6379" in str(err.value)


def test_more_cpus_than_the_largest_node():
    # 10 CPUs in total, but no single node has 9
    with pytest.raises(ClusterError, match="no node can run a trial with 9 CPUs and 0 GPUs") as err:
        check_resources(CPU_ONLY, cpus_per_trial=9, gpus_per_trial=0)
    assert "largest node: 8 CPUs, 0 GPUs" in str(err.value)


def test_cpus_and_gpus_must_fit_on_the_same_node():
    # the GPU node has 4 CPUs, the 2-CPU node no GPU: 5 CPUs + 1 GPU fit nowhere
    with pytest.raises(ClusterError, match="5 CPUs and 1 GPUs") as err:
        check_resources(MIXED, cpus_per_trial=5, gpus_per_trial=1)
    assert "largest node: 4 CPUs, 1 GPUs" in str(err.value)
    with pytest.raises(ClusterError, match="1.5 GPUs"):
        check_resources(MIXED, cpus_per_trial=1, gpus_per_trial=1.5)


def test_a_cluster_without_nodes():
    with pytest.raises(ClusterError, match="largest node: 0 CPUs, 0 GPUs"):
        check_resources(ClusterInfo("embedded", True, ()), cpus_per_trial=1, gpus_per_trial=0)


# -- concurrent_trials -------------------------------------------------------------------


@pytest.mark.parametrize(
    "info, cpus, gpus, expected",
    [
        (MIXED, 1, 0.25, 4),  # GPU node: min(4 CPUs, 4 quarter GPUs); CPU node: no GPU
        (MIXED, 1, 0, 6),
        (MIXED, 2, 0, 3),
        (MIXED, 3, 0, 1),  # packing is per node: 6 CPUs in total, but 3 fit only on one node
        (MIXED, 1, 1, 1),
        (MIXED, 1, 0.5, 2),
        (CPU_ONLY, 3, 0, 2),
        (CPU_ONLY, 0.5, 0, 20),
        (_info((16, 2), (16, 2)), 2, 0.5, 8),
        (_info((16, 4)), 1, 1, 4),
        (ClusterInfo("embedded", True, ()), 1, 0, 0),
    ],
)
def test_concurrent_trials(info, cpus, gpus, expected):
    assert concurrent_trials(info, cpus_per_trial=cpus, gpus_per_trial=gpus) == expected


def test_concurrent_trials_with_decimal_fractions():
    assert concurrent_trials(_info((16, 1)), cpus_per_trial=1, gpus_per_trial=0.1) == 10
    assert concurrent_trials(_info((16, 1)), cpus_per_trial=1, gpus_per_trial=0.2) == 5
    assert concurrent_trials(_info((1, 0)), cpus_per_trial=0.1, gpus_per_trial=0) == 10


# -- addresses ---------------------------------------------------------------------------


def test_requested_address_without_flag_or_env_is_embedded():
    assert requested_address(None) is None
    assert requested_address("") is None
    assert requested_address("local") is None


def test_requested_address_flag_beats_the_environment(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    assert requested_address("10.1.2.3:6379") == "10.1.2.3:6379"
    assert requested_address("local") is None  # the flag asks for an embedded Ray
    assert requested_address(None) == "auto"
    assert requested_address("") == "auto"  # an empty flag is no flag


@pytest.mark.parametrize("env", ["", "local"])
def test_empty_or_local_ray_address_means_embedded(monkeypatch, env):
    monkeypatch.setenv("RAY_ADDRESS", env)
    assert requested_address(None) is None
    assert requested_address("head:6379") == "head:6379"


@pytest.mark.parametrize(
    "host, loopback",
    [("localhost", True), ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True),
     ("10.0.0.1", False), ("192.168.1.5", False), ("0.0.0.0", False), ("::", False),
     ("example.org", False), ("", False), ("head-node", False)],
)
def test_is_loopback(host, loopback):
    assert _is_loopback(host) is loopback


def test_auth_mode_is_set_when_a_token_file_exists(tmp_path):
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(tmp_path / "no-token")
    cluster._prepare_auth()
    assert "RAY_AUTH_MODE" not in os.environ
    (tmp_path / "token").write_text("secret")
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(tmp_path / "token")
    cluster._prepare_auth()
    assert os.environ["RAY_AUTH_MODE"] == "token"


def test_auth_mode_from_a_token_variable_and_a_user_choice_wins(tmp_path):
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(tmp_path / "no-token")
    os.environ["RAY_AUTH_TOKEN"] = "secret"
    os.environ["RAY_AUTH_MODE"] = "disabled"
    cluster._prepare_auth()
    assert os.environ["RAY_AUTH_MODE"] == "disabled"
    del os.environ["RAY_AUTH_MODE"]
    cluster._prepare_auth()
    assert os.environ["RAY_AUTH_MODE"] == "token"


# -- connect to nothing ------------------------------------------------------------------


@pytest.mark.parametrize("address", ["127.0.0.1", "head:port", "head:"])
def test_connect_rejects_an_address_without_a_port(address):
    import ray

    with pytest.raises(ClusterError, match="is not host:port"):
        connect(address)
    assert not ray.is_initialized()


def test_connect_to_a_closed_port_fails_fast_without_starting_ray(tmp_path):
    import ray  # imported up front: the time below is the connect attempt's

    os.environ["RAY_AUTH_TOKEN_PATH"] = str(tmp_path / "no-token")
    port = free_port()  # bound and released: nothing listens there
    started = time.monotonic()
    with pytest.raises(ClusterError) as err:
        connect(f"127.0.0.1:{port}")
    seconds = time.monotonic() - started
    assert seconds < CONNECT_TIMEOUT_S + 2
    text = str(err.value)
    assert f"cannot reach a Ray cluster at '127.0.0.1:{port}'" in text
    assert "ray start --head" in text
    assert not ray.is_initialized()
    # the address came from RAY_ADDRESS just as well
    os.environ["RAY_ADDRESS"] = f"localhost:{port}"
    with pytest.raises(ClusterError, match=f"'localhost:{port}'"):
        connect(None)
    assert not ray.is_initialized()
