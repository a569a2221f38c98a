"""MLflow writes that never hold up a sweep and are never lost: a durable outbox, sent by one thread.

The driver's MLflow sink does not call MLflow. Each write (start a run, log an epoch, end
a run, ...) becomes one JSON line appended to ``<sweep>/tracking/outbox.jsonl``, and the
call returns. One background thread sends the lines in order through
:class:`~kd_tune.tracking.tracker.SweepTracker` and records in ``outbox.sent`` how far it got
(the file is emptied once everything is sent). When the tracking store does not answer
(a server down, a locked SQLite file), the thread keeps the writes and tries again after
a pause that grows to 10 s; the console says once that tracking is behind and once when
it has caught up. Writes left unsent are sent when the store answers again: later in the
same sweep, at the start of the next run of the sweep, or with
``python -m kd_tune.recover sync SWEEP_DIR``.

Writes name trials by trial key and parent runs by invocation id, never by MLflow run id
(unknown until the run exists); the sender resolves them. Sending a write twice (a
driver killed before it recorded what it sent) is harmless: starting runs is idempotent
(tag ``kd_tune.invocation``), metrics carry the time they were reported (MLflow stores
an identical metric once), ending a run again changes nothing. A write MLflow refuses
for good (an invalid value, a run deleted by hand) is skipped with one line, so that it
cannot hold back the others.

A new kind of write is a method here that puts a record ``{"op": NAME, ...}`` and a
branch in :meth:`TrackingQueue._apply` that sends it.

The REST client's own retries (minutes) are turned off for the driver
(``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0``, ``MLFLOW_HTTP_REQUEST_TIMEOUT=10`` unless set):
this queue retries instead, off the Tune loop. The client's "View run at" line per run
is turned off too (``MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT``): the console is the sweep's.
"""
from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kd_tune.core.clock import now_ms
from kd_tune.core.status import TrialStatus
from kd_tune.storage.atomic import write_text
from kd_tune.tracking.tracker import SweepTracker

TRACKING_DIR = "tracking"
OUTBOX = "outbox.jsonl"
SENT = "outbox.sent"
MAX_PAUSE_S = 10.0
_BATCH = 200  # writes read from the outbox at a time
# MLflow error codes that say "this write is wrong", not "the store is not there".
_REFUSED = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS", "INVALID_STATE"}


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
    :class:`~kd_tune.tracking.tracker.SweepTracker`; ``log`` takes the console lines. The write
    methods return at once. Use :meth:`send` to send in the caller's thread (before the
    sweep, or in a sync command), :meth:`start` and :meth:`stop` around the sweep.
    """

    def __init__(self, sweep_dir: str | Path, tracking_uri: str, experiment: str, *,
                 artifact_root: str | Path | None = None, log: Callable[[str], None] = print):
        quiet_quick_client()
        self.outbox = Outbox(Path(sweep_dir) / TRACKING_DIR)
        self.tracking_uri = tracking_uri
        self._connect = lambda: SweepTracker(tracking_uri, experiment, artifact_root=artifact_root)
        self._tracker: SweepTracker | None = None
        self._log = log
        self._runs: dict[str, str] = {}  # trial key -> run id, as sent
        self._parents: dict[str, str] = {}  # invocation -> parent run id
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._deadline = 0.0
        self._behind_since: float | None = None

    # -- writes (never block) --------------------------------------------------------------

    def start_parent(self, invocation: str, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> None:
        self._put({"op": "parent", "inv": invocation, "name": run_name, "params": dict(params), "tags": dict(tags)})

    def start_trial(self, invocation: str, trial_key: str, run_name: str, params: Mapping[str, Any],
                    tags: Mapping[str, str], metrics: Mapping[str, float] | None = None) -> None:
        """``metrics`` are logged at step 0 when the run is made (not when it is continued)."""
        self._put({"op": "trial", "inv": invocation, "key": trial_key, "name": run_name, "params": dict(params),
                   "tags": dict(tags), "metrics": dict(metrics or {})})

    def log_epoch(self, trial_key: str, metrics: Mapping[str, Any]) -> None:
        numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self._put({"op": "epoch", "key": trial_key, "metrics": numbers, "t": now_ms()})

    def log_dataset(self, trial_key: str, name: str, digest: str, source: Mapping[str, Any],
                    profile: Mapping[str, Any]) -> None:
        """A data set as an input of the trial's run (see :meth:`SweepTracker.log_dataset`)."""
        self._put({"op": "dataset", "key": trial_key, "name": name, "digest": digest,
                   "source": json.loads(json.dumps(source, default=str)), "profile": dict(profile)})

    def log_file(self, trial_key: str, path: Path, artifact_path: str) -> None:
        """A file of the queue's ``files/`` folder as an artifact of the trial's run; the file
        is removed once sent."""
        self._put({"op": "file", "key": trial_key, "path": str(path), "dir": artifact_path})

    @property
    def files_dir(self) -> Path:
        """Where files waiting to be sent are kept (in the sweep folder, so they survive the driver)."""
        return self.outbox.folder / "files"

    def end_trial(self, trial_key: str, status: TrialStatus, tags: Mapping[str, str] | None = None, *,
                  metrics: Mapping[str, float] | None = None, step: int = 0) -> None:
        self._put({"op": "end", "key": trial_key, "status": TrialStatus(status).value, "tags": dict(tags or {}),
                   "metrics": dict(metrics or {}), "step": step})

    def record_teacher(self, invocation: str, teacher_key: str, run_name: str, params: Mapping[str, Any],
                       history: Sequence[Mapping[str, Any]], metrics: Mapping[str, float], step: int,
                       dataset: Mapping[str, Any]) -> None:
        """A teacher's whole run (tag ``kd_tune.role=teacher``) under the invocation's parent:
        its per-epoch ``history``, final ``metrics`` at ``step`` and its data set
        (:meth:`log_dataset`'s fields); a teacher that has a run already is only moved there."""
        self._put({"op": "teacher", "inv": invocation, "tkey": teacher_key, "name": run_name, "params": dict(params),
                   "history": [dict(h) for h in history], "metrics": dict(metrics), "step": step,
                   "dataset": json.loads(json.dumps(dataset, default=str))})

    def log_table(self, invocation: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], name: str) -> None:
        """A table (``columns``, ``rows``) as an MLflow table artifact ``name`` of the parent run."""
        self._put({"op": "table", "inv": invocation, "columns": list(columns), "rows": [list(r) for r in rows],
                   "name": name})

    def log_parent_values(self, invocation: str, params: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
        self._put({"op": "values", "inv": invocation, "params": dict(params), "metrics": dict(metrics)})

    def log_artifacts(self, invocation: str, paths: Sequence[Path], artifact_path: str = "tables") -> None:
        self._put({"op": "artifacts", "inv": invocation, "paths": [str(p) for p in paths], "dir": artifact_path})

    def end_parent(self, invocation: str, status: str, metrics: Mapping[str, float] | None = None) -> None:
        self._put({"op": "end_parent", "inv": invocation, "status": status, "metrics": dict(metrics or {})})

    # -- what was sent ---------------------------------------------------------------------

    def run_id(self, trial_key: str) -> str | None:
        """The MLflow run of a trial, once its start was sent (else None)."""
        return self._runs.get(trial_key)

    def run_ids(self) -> dict[str, str]:
        return dict(self._runs)

    def parent_id(self, invocation: str) -> str | None:
        return self._parents.get(invocation)

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

    def _put(self, write: dict[str, Any]) -> None:
        self.outbox.put(write)
        self._wake.set()

    def _send_some(self) -> bool:
        """Send the next batch of writes; False when there was none. Raises when the store fails."""
        writes = self.outbox.unsent()
        if not writes:
            return False
        tracker = self.tracker()
        done = 0
        try:
            i = 0
            while i < len(writes):
                # Consecutive epochs of one trial go out as one request.
                first = writes[i][1]
                j = i + 1
                while first["op"] == "epoch" and j < len(writes) and writes[j][1].get("key") == first["key"] \
                        and writes[j][1]["op"] == "epoch":
                    j += 1
                self._apply_refusable(tracker, [w for _, w in writes[i:j]])
                done = writes[j - 1][0]
                i = j
        finally:
            if done:
                self.outbox.mark_sent(done)
        return True

    def _apply_refusable(self, tracker: SweepTracker, writes: list[dict[str, Any]]) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self._apply(tracker, writes)
        except MlflowException as err:
            if err.error_code not in _REFUSED:
                raise
            self._log(f"MLflow refused a write ({writes[0]['op']} {writes[0].get('key', '')}): "
                      f"{str(err.message).splitlines()[0][:200]}; skipped")

    def _apply(self, tracker: SweepTracker, writes: list[dict[str, Any]]) -> None:
        write = writes[0]
        op = write["op"]
        if op == "epoch":
            run_id = self._run_of(tracker, write["key"])
            if run_id is not None:
                tracker.log_epochs(run_id, [(w["metrics"], w["t"]) for w in writes])
        elif op == "parent":
            self._parents[write["inv"]] = tracker.start_parent(write["name"], write["params"], write["tags"],
                                                               invocation=write["inv"])
        elif op == "trial":
            self._use_parent(tracker, write["inv"])
            self._runs[write["key"]] = tracker.start_trial(write["key"], write["name"], write["params"],
                                                           write["tags"], write.get("metrics"),
                                                           invocation=write["inv"])
        elif op == "end":
            run_id = self._run_of(tracker, write["key"])
            if run_id is not None:
                tracker.end_trial(run_id, TrialStatus(write["status"]), write["tags"], metrics=write.get("metrics"),
                                  step=write.get("step", 0))
        elif op == "dataset":
            run_id = self._run_of(tracker, write["key"])
            if run_id is not None:
                tracker.log_dataset(run_id, write["name"], write["digest"], write["source"], write["profile"])
        elif op == "file":
            run_id, path = self._run_of(tracker, write["key"]), Path(write["path"])
            if run_id is not None and path.is_file():
                tracker.log_file(run_id, path, write["dir"])
            path.unlink(missing_ok=True)
        elif op == "teacher":
            if self._use_parent(tracker, write["inv"]):
                run_id, new = tracker.start_teacher(write["tkey"], write["name"], write["params"])
                if new:
                    tracker.log_epochs(run_id, [(h, now_ms()) for h in write["history"]])
                    tracker.log_values(run_id, metrics=write["metrics"], step=write["step"])
                    dataset = write["dataset"]
                    tracker.log_dataset(run_id, dataset["name"], dataset["digest"], dataset["source"],
                                        dataset["profile"])
                    tracker.end_run(run_id)
        elif op == "table":
            if self._use_parent(tracker, write["inv"]):
                import pandas as pd

                frame = pd.DataFrame(write["rows"], columns=write["columns"])
                tracker.log_table(tracker.parent_id, frame, write["name"])
        elif op == "values":
            if self._use_parent(tracker, write["inv"]):
                tracker.log_values(tracker.parent_id, params=write["params"], metrics=write["metrics"])
        elif op == "artifacts":
            if self._use_parent(tracker, write["inv"]):
                tracker.log_artifacts([Path(p) for p in write["paths"] if Path(p).is_file()], write["dir"])
        elif op == "end_parent":
            if self._use_parent(tracker, write["inv"]):
                tracker.end_parent(write["status"], write["metrics"])
        else:
            raise ValueError(f"unknown tracking write {op!r} in {self.outbox.path}")

    def _run_of(self, tracker: SweepTracker, trial_key: str) -> str | None:
        # A trial started in an earlier process: its latest run.
        if trial_key not in self._runs:
            found = tracker.find_trial_run(trial_key)
            if found is None:
                return None
            self._runs[trial_key] = found
        return self._runs[trial_key]

    def _use_parent(self, tracker: SweepTracker, invocation: str) -> bool:
        parent = self._parents.get(invocation) or tracker.find_parent(invocation)
        if parent is None:
            return False
        self._parents[invocation] = tracker.parent_id = parent
        return True

    def _fell_behind(self, err: BaseException) -> None:
        if self._behind_since is None:
            self._behind_since = time.monotonic()
            reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
            self._log(f"tracking is behind: MLflow at {self.tracking_uri} does not answer ({reason}); the sweep "
                      f"goes on and its MLflow writes wait in {self.outbox.path}")

    def _caught_up(self) -> None:
        if self._behind_since is not None:
            seconds = time.monotonic() - self._behind_since
            self._behind_since = None
            self._log(f"tracking caught up: MLflow at {self.tracking_uri} has every write again (after {seconds:.0f}s)")
