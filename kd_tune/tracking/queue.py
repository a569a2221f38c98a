"""MLflow writes that never hold up a sweep and are never lost: a durable outbox, sent by one thread.

The driver's MLflow sink does not call MLflow. Each write (start a run, log an epoch, end
a run, ...: a :class:`~kd_tune.tracking.writes.Write`) becomes one JSON line appended to
``<sweep>/tracking/outbox.jsonl``, and :meth:`TrackingQueue.put` returns. One background
thread reads the lines in order and sends each through its handler
(:func:`kd_tune.tracking.writes.send`, which calls
:class:`~kd_tune.tracking.tracker.SweepTracker`), and records in ``outbox.sent`` how far it got
(the file is emptied once everything is sent). When the tracking store does not answer
(a server down, a locked SQLite file), the thread keeps the writes and tries again after
a pause that grows to 10 s; the console says once that tracking is behind and once when
it has caught up (logger ``kd_tune.tracking.queue``, INFO). Writes left unsent are sent when
the store answers again: later in the same sweep, at the start of the next run of the sweep, or with
``python -m kd_tune.recover sync SWEEP_DIR``.

Writes name trials by trial key and parent runs by invocation id, never by MLflow run id
(unknown until the run exists); the sender resolves them. Sending a write twice (a
driver killed before it recorded what it sent) is harmless: starting runs is idempotent
(tag ``kd_tune.invocation``), metrics carry the time they were reported (MLflow stores
an identical metric once), ending a run again changes nothing. A write MLflow refuses
for good (an invalid value, a run deleted by hand) is skipped with one line, so that it
cannot hold back the others.

A new kind of write is a dataclass and its handler in :mod:`kd_tune.tracking.writes`; this
module needs no change.

The REST client's own retries (minutes) are turned off for the driver
(``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0``, ``MLFLOW_HTTP_REQUEST_TIMEOUT=10`` unless set):
this queue retries instead, off the Tune loop. The client's "View run at" line per run
is turned off too (``MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT``): the console is the sweep's.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from kd_tune.storage.atomic import write_text
from kd_tune.tracking.tracker import SweepTracker
from kd_tune.tracking.writes import Epochs, LogEpoch, RunIds, Write, from_json, send

TRACKING_DIR = "tracking"
OUTBOX = "outbox.jsonl"
SENT = "outbox.sent"
MAX_PAUSE_S = 10.0
_BATCH = 200  # writes read from the outbox at a time
# MLflow error codes that say "this write is wrong", not "the store is not there".
_REFUSED = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS", "INVALID_STATE"}

log = logging.getLogger(__name__)


def quiet_quick_client() -> None:
    """Make the MLflow REST client fail in seconds instead of retrying for minutes, and
    print nothing of its own (each unless set)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")


class Outbox:
    """The durable list of writes not yet sent: ``outbox.jsonl`` and the byte offset in ``outbox.sent``.

    One process appends (under a thread lock) and one thread sends. Files are made on
    the first write, so an outbox nobody wrote to leaves nothing on disk.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / OUTBOX
        self._sent_path = self.folder / SENT
        self._lock = threading.Lock()
        self._handle: Any = None
        if self.path.is_file():
            data = self.path.read_bytes()
            if data and not data.endswith(b"\n"):
                # A writer killed in the middle of a line: that write never happened.
                with open(self.path, "r+b") as handle:
                    handle.truncate(data.rfind(b"\n") + 1)

    def put(self, write: Mapping[str, Any]) -> None:
        line = json.dumps(write, separators=(",", ":"), allow_nan=True) + "\n"
        with self._lock:
            if self._handle is None:
                self.folder.mkdir(parents=True, exist_ok=True)
                self._handle = open(self.path, "a", encoding="utf-8")  # noqa: SIM115  (kept open; closed in close())
            self._handle.write(line)
            self._handle.flush()  # in the OS: it survives the driver being killed

    def unsent(self, limit: int = _BATCH) -> list[tuple[int, dict[str, Any]]]:
        """Up to ``limit`` writes not yet sent, each with the offset just after it."""
        offset = self._sent()
        if not self.path.is_file():
            return []
        with open(self.path, "rb") as handle:
            handle.seek(offset)
            writes = []
            for line in handle:
                if not line.endswith(b"\n") or len(writes) == limit:
                    break
                offset += len(line)
                writes.append((offset, json.loads(line)))
        return writes

    def mark_sent(self, offset: int) -> None:
        """Everything before byte ``offset`` was sent; an outbox entirely sent is emptied."""
        with self._lock:
            if self.path.is_file() and offset >= self.path.stat().st_size:
                with open(self.path, "r+b") as handle:
                    handle.truncate(0)
                offset = 0
            write_text(self._sent_path, str(offset))

    def count(self) -> int:
        """How many writes are not yet sent."""
        offset = self._sent()
        if not self.path.is_file():
            return 0
        with open(self.path, "rb") as handle:
            handle.seek(offset)
            return handle.read().count(b"\n")

    def close(self) -> None:
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None

    def _sent(self) -> int:
        try:
            offset = int(self._sent_path.read_text())
        except (OSError, ValueError):
            return 0
        size = self.path.stat().st_size if self.path.is_file() else 0
        return offset if offset <= size else 0


class TrackingQueue:
    """The sweep's MLflow writes, queued in the outbox of ``sweep_dir`` and sent by one thread.

    ``tracking_uri``, ``experiment`` and ``artifact_root`` are those of
    :class:`~kd_tune.tracking.tracker.SweepTracker`. :meth:`put` returns at once. Use
    :meth:`send` to send in the caller's thread (before the sweep, or in a sync command),
    :meth:`start` and :meth:`stop` around the sweep.
    """

    def __init__(self, sweep_dir: str | Path, tracking_uri: str, experiment: str, *,
                 artifact_root: str | Path | None = None):
        quiet_quick_client()
        self.outbox = Outbox(Path(sweep_dir) / TRACKING_DIR)
        self.tracking_uri = tracking_uri
        self._connect = lambda: SweepTracker(tracking_uri, experiment, artifact_root=artifact_root)
        self._tracker: SweepTracker | None = None
        self._ids = RunIds()  # as sent
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._deadline = 0.0
        self._behind_since: float | None = None

    # -- writes (never block) --------------------------------------------------------------

    def put(self, write: Write) -> None:
        """Queue ``write`` (kept in the outbox at once, sent by the sending thread)."""
        self.outbox.put(write.to_json())
        self._wake.set()

    @property
    def files_dir(self) -> Path:
        """Where files waiting to be sent (:class:`~kd_tune.tracking.writes.LogFile`) are kept (in the
        sweep folder, so they survive the driver)."""
        return self.outbox.folder / "files"

    # -- what was sent ---------------------------------------------------------------------

    def run_id(self, trial_key: str) -> str | None:
        """The MLflow run of a trial, once its start was sent (else None)."""
        return self._ids.trials.get(trial_key)

    def run_ids(self) -> dict[str, str]:
        return dict(self._ids.trials)

    def parent_id(self, invocation: str) -> str | None:
        return self._ids.parents.get(invocation)

    def experiment_id(self) -> str | None:
        """The MLflow experiment's id once connected (else None: the store never answered)."""
        return self._tracker.experiment_id if self._tracker is not None else None

    def unsent(self) -> int:
        return self.outbox.count()

    @property
    def behind(self) -> bool:
        """Whether the last attempt to send failed."""
        return self._behind_since is not None

    def tracker(self) -> SweepTracker:
        """The connected MLflow client (connecting on first use; raises when the store does not answer)."""
        if self._tracker is None:
            self._tracker = self._connect()
        return self._tracker

    # -- sending ---------------------------------------------------------------------------

    def send(self, timeout: float) -> bool:
        """Send in this thread until nothing is left (True) or the store fails or
        ``timeout`` seconds pass (False). Not while the thread runs."""
        assert self._thread is None, "the sending thread is running"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if not self._send_some():
                    self._caught_up()
                    return True
            except Exception as err:  # the store does not answer: kept for later
                self._fell_behind(err)
                return False
        return False

    def start(self) -> None:
        """Send from a background thread from now on."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="kd_tune-tracking", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> bool:
        """Let the thread send what is left for at most ``timeout`` seconds (less when the
        store does not answer), then stop it; True when everything was sent."""
        if self._thread is not None:
            self._deadline = time.monotonic() + timeout
            self._stop.set()
            self._wake.set()
            # A request in flight can take the client's timeout to fail.
            self._thread.join(timeout + float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")) + 5)
            self._thread = None
        return self.outbox.count() == 0

    def close(self) -> None:
        self.outbox.close()

    def _run(self) -> None:
        pause = 0.5
        while True:
            stopping = self._stop.is_set()
            if stopping and time.monotonic() > self._deadline:
                return
            try:
                sent = self._send_some()
            except Exception as err:  # the store does not answer: try again later
                self._fell_behind(err)
                if stopping:
                    return
                self._stop.wait(pause)
                pause = min(2 * pause, MAX_PAUSE_S)
                continue
            pause = 0.5
            if not sent:
                self._caught_up()
                if stopping:
                    return
                self._wake.wait(0.5)
                self._wake.clear()

    def _send_some(self) -> bool:
        """Send the next batch of writes; False when there was none. Raises when the store fails."""
        records = self.outbox.unsent()
        if not records:
            return False
        tracker = self.tracker()
        done = 0
        try:
            for write, offset in _batched(records):
                self._send_refusable(tracker, write)
                done = offset
        finally:
            if done:
                self.outbox.mark_sent(done)
        return True

    def _send_refusable(self, tracker: SweepTracker, write: Write) -> None:
        # Not at the top: mlflow takes 1.8-2.1 s to import (measured, 2 busy cores); the
        # connected SweepTracker has imported it by now, so this costs nothing.
        from mlflow.exceptions import MlflowException

        try:
            send(write, tracker, self._ids)
        except MlflowException as err:
            if err.error_code not in _REFUSED:
                raise
            first = write.epochs[0] if isinstance(write, Epochs) else write
            log.info("MLflow refused a write (%s %s): %s; skipped", first.op, getattr(first, "trial_key", ""),
                     str(err.message).splitlines()[0][:200])

    def _fell_behind(self, err: BaseException) -> None:
        if self._behind_since is None:
            self._behind_since = time.monotonic()
            reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
            log.info("tracking is behind: MLflow at %s does not answer (%s); the sweep goes on and its MLflow "
                     "writes wait in %s", self.tracking_uri, reason, self.outbox.path)

    def _caught_up(self) -> None:
        if self._behind_since is not None:
            seconds = time.monotonic() - self._behind_since
            self._behind_since = None
            log.info("tracking caught up: MLflow at %s has every write again (after %.0fs)", self.tracking_uri, seconds)



def _batched(records: list[tuple[int, dict[str, Any]]]) -> Iterator[tuple[Write, int]]:
    """The writes of outbox ``records`` (each with the offset just after it), in order, with
    consecutive epochs of one trial joined into one :class:`~kd_tune.tracking.writes.Epochs`
    (one request) at the offset of the last. A record that cannot be read raises once the
    writes before it are out."""
    pending: tuple[Write, int] | None = None
    for offset, record in records:
        try:
            write = from_json(record)
        except (ValueError, TypeError, KeyError):
            if pending is not None:
                yield pending
            raise
        before = pending[0] if pending is not None else None
        if isinstance(write, LogEpoch) and isinstance(before, (LogEpoch, Epochs)) \
                and before.trial_key == write.trial_key:
            epochs = before.epochs if isinstance(before, Epochs) else (before,)
            pending = (Epochs(write.trial_key, (*epochs, write)), offset)
            continue
        if pending is not None:
            yield pending
        pending = (write, offset)
    if pending is not None:
        yield pending
