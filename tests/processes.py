"""Servers that tests start: each in its own process group, ended by that group's id."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen, log: Path, ready_text: str | None = None) -> None:
    """Wait until ``port`` accepts connections (and ``ready_text`` is in the log, if given)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if ready_text is None or ready_text in log.read_text(errors="replace"):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        time.sleep(0.3)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s:\n{log.read_text()[-3000:]}")


def end_group(proc: subprocess.Popen, grace: float = 4.0) -> None:
    """SIGTERM the process group, then SIGKILL what is left after ``grace`` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@contextlib.contextmanager
def server(cmd: Sequence[str], *, port: int, log: Path, env: dict[str, str] | None = None,
           timeout: float = 90.0, ready_text: str | None = None) -> Iterator[subprocess.Popen]:
    """Run ``cmd`` in a new process group until it listens on ``port``; end the group after."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_for_port(port, timeout, proc, log, ready_text)
        yield proc
    finally:
        end_group(proc)


@contextlib.contextmanager
def mlflow_server(folder: Path, port: int, *, auth_config: Path | None = None) -> Iterator[subprocess.Popen]:
    """``mlflow server`` on 127.0.0.1:``port`` with its store in ``folder`` (the same store
    again when started again), in its own process group; with ``auth_config`` (an ini file)
    it runs ``--app-name basic-auth``."""
    import secrets
    import sys

    mlflow = str(Path(sys.executable).parent / "mlflow")
    cmd = [mlflow, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{folder}/db.sqlite", "--default-artifact-root", (folder / "art").as_uri()]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    folder.mkdir(parents=True, exist_ok=True)
    if auth_config is not None:
        cmd += ["--app-name", "basic-auth"]
        env.update(MLFLOW_AUTH_CONFIG_PATH=str(auth_config), MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16))
    with server(cmd, port=port, log=folder / f"server-{time.monotonic_ns()}.log", env=env, timeout=120) as proc:
        yield proc


def ray_env() -> dict[str, str]:
    """Environment for a loopback-only single-node cluster and the drivers that join it."""
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    env.pop("RAY_ADDRESS", None)
    return env


def descendants(pid: int) -> set[int]:
    """``pid`` and every process below it (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                parent = int(stat[stat.rindex(")") + 2:].split()[1])
                children.setdefault(parent, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        current = todo.pop()
        if current not in found:
            found.add(current)
            todo += children.get(current, [])
    return found


def listening_sockets(pids: set[int]) -> list[tuple[str, int, int]]:
    """The TCP sockets the processes ``pids`` listen on: (address, port, pid); IPv4 addresses
    mapped into IPv6 (``::ffff:127.0.0.1``) are given as IPv4."""
    import ipaddress

    inodes: dict[int, int] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes[int(target[8:-1])] = pid
    found = []
    for table, size in (("tcp", 4), ("tcp6", 16)):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] != "0A" or int(fields[9]) not in inodes:  # 0A: LISTEN
                    continue
                address, port = fields[1].split(":")
                raw = bytes.fromhex(address)
                # /proc prints each 32-bit word in host (little-endian) order
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, size, 4))
                ip = ipaddress.ip_address(raw)
                ip = getattr(ip, "ipv4_mapped", None) or ip
                found.append((str(ip), int(port, 16), inodes[int(fields[9])]))
    return found
