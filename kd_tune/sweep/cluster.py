"""Connecting to Ray and checking that a sweep's resource request can ever be met.

Address rules (``--address``, else ``RAY_ADDRESS``):

- none (or ``local``): start an embedded Ray on this machine, sized to its CPUs and GPUs;
- ``auto``: join the cluster started on this machine with ``ray start``;
- ``host:port``: join that cluster's head node (its GCS port, 6379 by default).

Joining fails within seconds with :class:`ClusterError` when nothing listens at the
address (Ray itself would retry for minutes). Clusters started by ``ray start`` use
token authentication; when a token is present (``~/.ray/auth_token``,
``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH``) ``RAY_AUTH_MODE=token`` is set for the
driver unless the user chose a mode.

Loopback by default: the embedded Ray, and the driver of a cluster on a loopback
address, keep every Ray process on 127.0.0.1 (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``,
set before Ray is imported: Ray reads it once, and without it Ray listens on every
interface and swaps a loopback address for the machine's interface address, where a
loopback cluster does not listen).
"""
from __future__ import annotations

import ipaddress
import logging
import os
import sys
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kd_tune.core.netcheck import connect_error
from kd_tune.storage.location import Storage

log = logging.getLogger(__name__)

# Ray is imported inside the functions that use it: `import ray` costs 0.5 CPU-s and Ray Tune
# 1.6 CPU-s (measured on a 2-core machine), which the driver's checks, --dry-run and a refused
# command line do without.

CONNECT_TIMEOUT_S = 3.0


class ClusterError(RuntimeError):
    """The cluster cannot be reached, or can never run what the sweep asks for."""


@dataclass(frozen=True)
class ClusterInfo:
    """What the driver is connected to: ``embedded`` or the address joined, and its nodes.

    ``nodes`` lists each alive node: ``CPU`` and ``GPU`` counts (floats), ``node_id``, ``ip``.
    """

    address: str
    embedded: bool
    nodes: tuple[dict[str, Any], ...]

    @property
    def total_cpus(self) -> float:
        return sum(n.get("CPU", 0.0) for n in self.nodes)

    @property
    def total_gpus(self) -> float:
        return sum(n.get("GPU", 0.0) for n in self.nodes)


def requested_address(address: str | None) -> str | None:
    """The address to join: the flag, else ``RAY_ADDRESS``; None (or ``local``) means embedded."""
    value = address if address else os.environ.get("RAY_ADDRESS") or None
    return None if value in (None, "", "local") else value


def connect(address: str | None, *, num_cpus: int | None = None, num_gpus: int | None = None,
            env_vars: Mapping[str, str] | None = None) -> ClusterInfo:
    """Connect the driver to Ray (see the module docstring for the address rules); ``env_vars``
    are set in this job's workers (never a credential: Ray keeps them in its job record)."""
    runtime_env = {"env_vars": dict(env_vars)} if env_vars else None
    target = requested_address(address)
    if target is None or (target != "auto" and _is_loopback(target.rpartition(":")[0])):
        _loopback_only()
    if target is not None:
        # Ray reads the auth mode when it is imported: set it before the first import.
        _prepare_auth()
    import ray

    if ray.is_initialized():
        ray.shutdown()
    if target is None:
        os.environ.pop("RAY_ADDRESS", None)  # an empty RAY_ADDRESS would be read as "join"
        ray.init(
            address="local",  # a new instance even when `ray start` runs on this machine
            num_cpus=num_cpus or os.cpu_count() or 1,
            num_gpus=num_gpus,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=True,
            logging_level="warning",
            runtime_env=runtime_env,
        )
        return ClusterInfo("embedded", True, _alive_nodes())
    resolved = _resolve(target)
    _check_listening(target, resolved)
    try:
        ray.init(address=resolved, log_to_driver=False, logging_level="warning", runtime_env=runtime_env)
    except (ConnectionError, RuntimeError) as err:
        raise ClusterError(
            f"could not join the Ray cluster at {target!r} ({resolved}): {err}. A cluster started with "
            "`ray start` needs its auth token (~/.ray/auth_token, or RAY_AUTH_TOKEN) and RAY_AUTH_MODE=token "
            "set before Ray is imported"
        ) from None
    return ClusterInfo(resolved, False, _alive_nodes())


def check_resources(info: ClusterInfo, *, cpus_per_trial: float, gpus_per_trial: float) -> None:
    """Raise :class:`ClusterError` if no node can ever hold one trial's request.

    Tune would otherwise wait forever for resources that never appear. The request
    itself (CPUs > 0, GPUs >= 0) was checked with the sweep's options.
    """
    if gpus_per_trial > 0 and info.total_gpus == 0:
        raise ClusterError(
            f"--gpus-per-trial {gpus_per_trial:g} was requested, but the cluster ({info.address}) has no GPUs; "
            "use --gpus-per-trial 0 to train on CPUs"
        )
    fits = [n for n in info.nodes if n.get("CPU", 0.0) >= cpus_per_trial and n.get("GPU", 0.0) >= gpus_per_trial]
    if not fits:
        largest = max(info.nodes, key=lambda n: (n.get("CPU", 0.0), n.get("GPU", 0.0)), default={})
        raise ClusterError(
            f"no node can run a trial with {cpus_per_trial:g} CPUs and {gpus_per_trial:g} GPUs "
            f"(largest node: {largest.get('CPU', 0.0):g} CPUs, {largest.get('GPU', 0.0):g} GPUs); "
            "lower --cpus-per-trial/--gpus-per-trial"
        )


def concurrent_trials(info: ClusterInfo, *, cpus_per_trial: float, gpus_per_trial: float) -> int:
    """How many trials the cluster can run at once (packing each node separately)."""
    total = 0
    for node in info.nodes:
        # The small tolerance counts 1 / 0.1 as 10 despite binary rounding.
        fit = int(node.get("CPU", 0.0) / cpus_per_trial + 1e-9)
        if gpus_per_trial > 0:
            fit = min(fit, int(node.get("GPU", 0.0) / gpus_per_trial + 1e-9))
        total += fit
    return total


def _alive_nodes() -> tuple[dict[str, Any], ...]:
    import ray

    return tuple(
        {"CPU": float(n["Resources"].get("CPU", 0.0)), "GPU": float(n["Resources"].get("GPU", 0.0)),
         "node_id": n["NodeID"], "ip": n.get("NodeManagerAddress", "")}
        for n in ray.nodes() if n.get("Alive")
    )


def _resolve(target: str) -> str:
    """``host:port`` to join: ``target`` itself, or for ``auto`` the cluster ``ray start``
    recorded on this machine (a loopback one kept on loopback)."""
    if target != "auto":
        return target
    try:
        from ray._private.services import canonicalize_bootstrap_address
        from ray._private.utils import read_ray_address

        recorded = read_ray_address()
        if recorded and _is_loopback(recorded.rpartition(":")[0]):
            _loopback_only()
            return recorded
        resolved = canonicalize_bootstrap_address("auto")
    except Exception as err:  # Ray's own lookup failed: treat as "no cluster"
        raise ClusterError(f"--address auto: no Ray cluster found on this machine ({err})") from None
    if not resolved:
        raise ClusterError(
            "--address auto: no Ray cluster was started on this machine; run `ray start --head` "
            "(or leave --address out to use an embedded Ray)"
        )
    return resolved


def _check_listening(target: str, resolved: str) -> None:
    host, sep, port = resolved.rpartition(":")
    if not sep or not port.isdigit():
        raise ClusterError(f"--address {target!r} is not host:port (nor auto)")
    error = connect_error(host, int(port), CONNECT_TIMEOUT_S)
    if error is not None:
        raise ClusterError(
            f"cannot reach a Ray cluster at {target!r} ({resolved}): {error}. "
            "Start one with `ray start --head`, check the address, or leave --address out "
            "to use an embedded Ray."
        )


def _loopback_only() -> None:
    """Keep this driver's Ray on 127.0.0.1. Set before Ray is imported; when Ray was
    imported already (a program that imported it before connecting), its switch is set too."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = False


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _prepare_auth() -> None:
    if "RAY_AUTH_MODE" in os.environ:
        return
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if os.environ.get("RAY_AUTH_TOKEN") or token_file.is_file():
        os.environ["RAY_AUTH_MODE"] = "token"


def node_summary(info: ClusterInfo) -> str:
    """One line: where the driver is connected and what the cluster holds."""
    where = "embedded Ray on this machine" if info.embedded else f"Ray cluster at {info.address}"
    return f"{where}: {len(info.nodes)} node(s), {info.total_cpus:g} CPUs, {info.total_gpus:g} GPUs"


def check_shared_storage(info: ClusterInfo, storage: Storage) -> None:
    """Make sure every node reaches ``storage``: on a multi-node cluster a local path must be a
    shared mount; an object store must answer every node with the credentials of its own
    environment (a node without them would fail every trial it ran).

    A marker file written here must be visible from a task pinned to each node; a path
    that exists only on the driver's disk would scatter teachers, checkpoints and
    results across machines. A node that left the cluster after ``info`` listed it is left out.
    """
    if storage.is_local and len(info.nodes) < 2:
        return
    if not storage.is_local:
        problems = {node: p for node, p in _on_each_node(info, _storage_problem, storage).items() if p}
        if problems:
            node, problem = next(iter(problems.items()))
            raise ClusterError(f"node(s) {', '.join(problems)} cannot use the storage: {problem} (on {node}); set "
                               "the credentials (and AWS_ENDPOINT_URL) in the environment of `ray start` on "
                               "every node")
        return
    folder = storage.local_path
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / f".kd_tune_probe_{uuid.uuid4().hex}"
    marker.write_text("probe")
    try:
        missing = [node for node, seen in _on_each_node(info, os.path.exists, str(marker)).items() if not seen]
    finally:
        marker.unlink(missing_ok=True)
    if missing:
        raise ClusterError(
            f"--storage {str(folder)!r} is local to this machine: node(s) {', '.join(missing)} cannot see it. "
            "On a multi-node cluster use a path on a shared file system (e.g. NFS) mounted at the same place "
            "on every node, or an object store (s3://bucket/prefix)."
        )


def _on_each_node(info: ClusterInfo, function: Any, *args: Any) -> dict[str, Any]:
    """``function(*args)`` run by a task pinned to each node of ``info``; the results by node (its
    address, and its id's first 8 characters when several nodes share the address).

    A node that left the cluster after ``info`` listed it (a preempted machine) is left out with
    a line saying so: it runs no trial, and a task pinned to it can never run (Ray refuses it,
    ``TaskUnschedulableError``). An error on a node still alive is raised.
    """
    import ray
    from ray.exceptions import RayError
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0)(function)
    per_address = Counter(n["ip"] for n in info.nodes)
    refs = {n["node_id"]: task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=n["node_id"],
                                                                                          soft=False)).remote(*args)
            for n in info.nodes}
    results = {}
    for node in info.nodes:
        name = node["ip"] if node["ip"] and per_address[node["ip"]] == 1 else f"{node['ip']} {node['node_id'][:8]}"
        try:
            results[name] = ray.get(refs[node["node_id"]], timeout=60)
        except RayError:
            if any(n["node_id"] == node["node_id"] for n in _alive_nodes()):
                raise
            log.info(f"node {name} left the cluster during the storage check; it is left out")
    return results


def _storage_problem(storage: Storage) -> str | None:
    return storage.problem()
