"""A quick reachability probe, so that commands fail in seconds where clients retry for minutes."""
from __future__ import annotations

import socket


def connect_error(host: str, port: int, timeout_s: float = 3.0) -> str | None:
    """Why nothing accepts a TCP connection at ``host:port`` (e.g. "Connection refused"), or None."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as err:
        return err.strerror or str(err)
