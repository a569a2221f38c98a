"""Shared fixtures: a real single-node Ray cluster on loopback, started with `ray start`,
and registries put back after every test."""
from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from processes import free_port, ray_env, server

from kd_tune.data import DATASETS
from kd_tune.models import MODELS
from kd_tune.train.losses import LOSSES

# Without credentials the AWS clients ask the instance metadata service (a link-local
# address) for some; tests reach nothing but 127.0.0.1. Set before any client exists, and
# inherited by every process the tests start.
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
for _name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL",
              "AWS_ENDPOINT_URL_S3"):
    os.environ.pop(_name, None)


# Node-local caches (generated MNIST-1D signals, sweeps' local folders, copies of stored
# folders) go to a folder of this test session, not to the user's ~/.cache; every process the
# tests start inherits it.
os.environ["KD_TUNE_LOCAL_CACHE"] = tempfile.mkdtemp(prefix="kd-tune-test-cache-")
atexit.register(shutil.rmtree, os.environ["KD_TUNE_LOCAL_CACHE"], ignore_errors=True)


@pytest.fixture(autouse=True)
def _restore_registries():
    """Models, data sets and losses a test registers are gone after it, built-ins stay."""
    saved = [(registry, registry.snapshot()) for registry in (MODELS, DATASETS, LOSSES)]
    yield
    for registry, snapshot in saved:
        registry.restore(snapshot)


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory, s3):
    """``ray start --head`` on 127.0.0.1 with token auth (Ray's default); yields its address.

    Drivers join it with ``--address auto`` (Ray records the running cluster on this
    machine) and the environment of :func:`processes.ray_env`. The node runs with the
    test S3 store's credentials in its environment, as `ray start` on a cluster that keeps
    its sweeps in a bucket does (workers read them from there, never from the driver).
    """
    ray = shutil.which("ray", path=str(Path(sys.executable).parent))
    port = free_port()
    log = tmp_path_factory.mktemp("ray") / "head.log"
    cmd = [ray, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "2",
           "--num-gpus", "0", "--include-dashboard", "false", "--disable-usage-stats", "--block"]
    with server(cmd, port=port, log=log, env=s3.env(ray_env()), ready_text="Ray runtime started"):
        yield f"127.0.0.1:{port}"


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """An S3-compatible store on 127.0.0.1 (moto's server, authentication on); see :mod:`s3_server`."""
    from s3_server import s3_server

    with s3_server(tmp_path_factory.mktemp("s3")) as store:
        yield store


@pytest.fixture
def s3_env(s3, monkeypatch):
    """This process's environment holding the store's credentials and endpoint, for one test."""
    for name, value in s3.env({}).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return s3
