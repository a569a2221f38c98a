"""The wall clock as kd-tune records it: UTC, as a datetime, ISO 8601 text or milliseconds.

Durations are measured with :func:`time.perf_counter` or :func:`time.monotonic` where
they are taken; this module is for points in time that are stored or sent.
Imports nothing but the standard library.
"""
from __future__ import annotations

import time
from datetime import UTC, datetime


def utc_now() -> datetime:
    """Now, as a timezone-aware UTC datetime (what the Parquet tables store)."""
    return datetime.now(UTC)


def utc_iso(timespec: str = "auto") -> str:
    """Now in UTC as ISO 8601 text with its offset, e.g. ``2025-01-31T12:00:00+00:00``
    (``timespec`` as :meth:`datetime.isoformat`: ``"seconds"``, ``"microseconds"``, ...)."""
    return utc_now().isoformat(timespec=timespec)


def now_ms() -> int:
    """Now as whole milliseconds since the Unix epoch (MLflow's timestamps)."""
    return int(time.time() * 1000)
