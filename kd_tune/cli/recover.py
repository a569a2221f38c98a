"""``python -m kd_tune.recover``: bring a sweep's stored state back without training anything.

    python -m kd_tune.recover sync SWEEP_DIR [--mlflow-uri URI]
    python -m kd_tune.recover rebuild SWEEP_DIR [--mlflow-uri URI]

``sync`` sends the MLflow writes a sweep left queued (tracking was behind when it ended;
``<sweep>/tracking/outbox.jsonl``), then makes MLflow show every trial the Parquet
results record: a trial without a child run (a deleted or emptied store) gets one made
from its rows, and the run ids are written back into the results. Rerunning the sweep
does the same at its start.

``rebuild`` makes the Parquet results again from Ray Tune's own records in the sweep
folder (each ``trial_*/result.json``, one line per report; ``error.txt`` of a trial that
failed): an epoch row per reported epoch (the last report of each), and a trial row per
trial the trainer ended (completed or diverged) or that failed; trials still unfinished
get none and resume when the sweep is run again (so do trials a scheduler stopped early,
which Tune's records do not tell from interrupted ones). ``mlflow_run_id`` and ``started_at``
are read back from the trials' MLflow runs (tag ``kd_tune.started_at``), teacher
accuracies from the teacher store; ``reported_at`` and ``finished_at`` come from Tune's
report times (whole seconds). The damaged results are kept beside the new ones as
``<sweep>/.results.damaged-<time>/``. Then it syncs as above.

Both refuse (exit 2) while a driver runs the sweep. Exit codes: 0 done, 1 MLflow did not
answer (the Parquet results are complete; run ``sync`` again later), 2 bad input.

SWEEP_DIR is a local folder or an object store's ``s3://bucket/prefix/NAME`` (credentials
and endpoint from the environment), where Ray Tune keeps its records beside the results;
every read and write goes through :class:`~kd_tune.storage.location.Storage`. An object store has
no rename: there the rebuilt tables are staged in ``<sweep>/.results.rebuilding/`` and
moved into place, and the damaged ones aside, file by file (a server-side copy, then a
delete); locally each is one rename.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kd_tune.core.logs import console
from kd_tune.core.status import STATUS_KEY, TrialStatus
from kd_tune.plan.planner import Trial
from kd_tune.results.trial_tables import (
    RESULTS_DIR,
    ResultsError,
    ResultsWriter,
    epoch_row,
    epochs_table,
    trial_row,
    trials_table,
)
from kd_tune.storage.location import Storage, located, open_storage
from kd_tune.storage.part_table import BATCH_ROWS
from kd_tune.sweep.options import SweepError, driver_folder
from kd_tune.sweep.reports import reported_epochs
from kd_tune.sweep.runner import MANIFEST, sweep_lock
from kd_tune.sweep.tune_callback import error_summary
from kd_tune.teachers.store import TeacherStore
from kd_tune.tracking.mlflow_sink import MlflowSink
from kd_tune.tracking.queue import TrackingQueue
from kd_tune.tracking.tracker import STARTED_TAG, artifact_root, resolve_tracking_uri

log = logging.getLogger(__name__)

SEND_TIMEOUT_S = 3600.0
STAGING = ".results.rebuilding"  # the rebuilt tables, before they replace the sweep's results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kd_tune.recover",
        description="Bring a sweep's stored state back (MLflow runs, Parquet results) without training anything.",
        epilog=__doc__.split("\n\n", 2)[2].replace("``", ""), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("sync", "rebuild"), help="what to do (see below)")
    parser.add_argument("sweep_dir", metavar="SWEEP_DIR",
                        help="the sweep's folder, STORAGE/NAME (local, or s3://bucket/prefix/NAME)")
    parser.add_argument("--mlflow-uri", metavar="URI",
                        help="tracking store (default: the one the sweep used, from SWEEP_DIR/sweep.json)")
    args = parser.parse_args(argv)
    console()
    try:
        storage = open_storage(args.sweep_dir)
        if not storage.is_file(MANIFEST):
            parser.error(f"{located(storage)} is not a sweep folder (no {MANIFEST})")
        manifest = json.loads(storage.read_bytes(MANIFEST))
    except (ValueError, OSError) as err:
        parser.error(str(err))
    uri = args.mlflow_uri or manifest.get("mlflow_uri") or resolve_tracking_uri(None, located(storage.parent))
    try:
        with sweep_lock(storage):
            if args.action == "rebuild":
                rebuild(storage, manifest.get("name", storage.name), tracking_uri=uri)
            return 0 if sync(storage, uri) else 1
    except (SweepError, ResultsError) as err:
        parser.error(str(err))


def sync(sweep_dir: str | Path | Storage, tracking_uri: str) -> bool:
    """Send the sweep's queued MLflow writes, refill MLflow from the results and record the
    run ids in them; False when MLflow does not answer (the writes stay queued)."""
    writer = ResultsWriter(sweep_dir)
    queue = _queue(sweep_dir, tracking_uri)
    waiting = queue.unsent()
    try:
        if not queue.send(timeout=SEND_TIMEOUT_S):
            log.info(f"MLflow at {tracking_uri} does not answer: {queue.unsent()} write(s) still wait in "
                     f"{queue.outbox.path}; run this again later")
            return False
        ids = MlflowSink(queue, uuid.uuid4().hex).mirror(writer)
    except Exception as err:  # the store failed in the middle of the refill
        log.info(f"MLflow at {tracking_uri} failed ({str(err).splitlines()[0][:200]}); run this again later")
        return False
    finally:
        queue.close()
    changed = writer.record_run_ids(ids)
    log.info(f"MLflow at {tracking_uri}: {waiting} queued write(s) sent; {len(ids)} of {len(writer.statuses())} "
             f"recorded trials have their run ({changed} run id(s) updated in the results)")
    return True


def rebuild(sweep_dir: str | Path | Storage, sweep: str, *, tracking_uri: str) -> None:
    """Write the sweep's results again from Ray Tune's trial records (see the module docstring)."""
    storage = open_storage(sweep_dir)
    where = located(storage)
    records = list(tune_records(storage))
    if not records:
        raise SweepError(f"{where} holds no Ray Tune trial records (trial_*/result.json) to rebuild from")
    runs = _mlflow_runs(storage, tracking_uri)
    teacher_acc = TeacherStore(storage.parent / "teachers").test_acc
    storage.delete_dir(STAGING)
    staging = storage / STAGING
    epochs, trials = epochs_table(staging), trials_table(staging)
    batch: list[dict[str, Any]] = []
    finals = []
    for record in records:
        history = [_epoch(sweep, record.trial, report) for report in record.reports]
        batch += history
        if len(batch) >= BATCH_ROWS:
            epochs.append(batch)
            batch = []
        final = record.final_status()
        if final is None:
            continue
        run_id, started_at = runs.get(record.trial.key, (None, None))
        teacher = record.trial.teacher_key
        row = trial_row(sweep=sweep, trial_key=record.trial.key, trial_id=record.trial_id,
                        config=record.trial.config, status=final, history=history, teacher_key=teacher,
                        teacher_test_acc=teacher_acc(teacher) if teacher else None, started_at=started_at,
                        error=record.error if final is TrialStatus.FAILED else None, mlflow_run_id=run_id)
        row["finished_at"] = _time(record.reports[-1])
        finals.append(row)
    epochs.append(batch)
    trials.append(finals)
    epochs.compact()
    trials.compact()
    kept = _set_aside(storage)
    _move(storage, f"{STAGING}/{RESULTS_DIR}", RESULTS_DIR)
    storage.delete_dir(STAGING)
    log.info(f"rebuilt the results of {where} from Ray Tune's records: {len(finals)} trial row(s), "
             f"{sum(len(r.reports) for r in records)} epoch row(s) of {len(records)} trial(s)"
             + (f"; the old results are in {kept}" if kept else ""))


class TuneRecord:
    """One Tune trial's record: its planned trial, Tune id, last report per epoch (oldest
    first) and error text (or None)."""

    def __init__(self, trial: Trial, trial_id: str, reports: list[dict[str, Any]], error: str | None):
        self.trial = trial
        self.trial_id = trial_id
        self.reports = reports
        self.error = error

    def final_status(self) -> TrialStatus | None:
        """The status of its trial row: the trainer's end, else ``failed`` after an error,
        else None (unfinished: it resumes when the sweep is run again)."""
        last = TrialStatus(self.reports[-1].get(STATUS_KEY, "running")) if self.reports else TrialStatus.RUNNING
        if last.ended:
            return last
        return TrialStatus.FAILED if self.error is not None else None


def tune_records(sweep_dir: str | Path | Storage) -> Iterator[TuneRecord]:
    """The trial records Ray Tune keeps in ``sweep_dir`` (``trial_*/result.json`` and ``error.txt``;
    a local folder, a URI or a :class:`~kd_tune.storage.location.Storage`)."""
    storage = open_storage(sweep_dir)
    for folder in storage.list():
        if not folder.is_dir or not fnmatch.fnmatchcase(folder.name, "trial_*"):
            continue
        text = _read_text(storage, f"{folder.path}/result.json")
        if text is None:
            continue
        by_epoch: dict[int, dict[str, Any]] = {}
        planned = None
        for line in text.splitlines():
            try:
                report = json.loads(line)
            except ValueError:
                continue  # a line cut short by a killed driver
            if "epoch" in report and "trial" in report.get("config", {}):
                planned = planned or Trial.from_dict(report["config"]["trial"])
                # A report carries the epochs since the one before it; a retry's replace the earlier ones.
                for epoch in _epochs_of(report):
                    by_epoch[int(epoch["epoch"])] = epoch
        if planned is None:
            continue
        reports = [by_epoch[e] for e in sorted(by_epoch)]
        error_text = _read_text(storage, f"{folder.path}/error.txt")
        error = error_summary(error_text) if error_text is not None else None
        yield TuneRecord(planned, str(reports[-1].get("trial_id", folder.name.removeprefix("trial_"))), reports,
                         error)


def _epochs_of(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The epochs of one Tune report, each with the report's trial id and time; the status is the
    report's on its last epoch, ``running`` before it."""
    epochs = reported_epochs(report)
    common = {"trial_id": report.get("trial_id"), "timestamp": report.get("timestamp")}
    return [{**epoch, **common, STATUS_KEY: report.get(STATUS_KEY, "running") if n == len(epochs) else "running"}
            for n, epoch in enumerate(epochs, 1)]


def _read_text(storage: Storage, rel: str) -> str | None:
    """The text of file ``rel`` (undecodable bytes replaced), or None when there is none."""
    try:
        return storage.read_bytes(rel).decode("utf-8", errors="replace")
    except (FileNotFoundError, IsADirectoryError):
        return None


def _epoch(sweep: str, trial: Trial, report: dict[str, Any]) -> dict[str, Any]:
    row = epoch_row(sweep, trial.key, str(report.get("trial_id", "")), report)
    row["reported_at"] = _time(report)
    return row


def _time(report: dict[str, Any]) -> datetime | None:
    stamp = report.get("timestamp")
    return datetime.fromtimestamp(stamp, UTC) if isinstance(stamp, (int, float)) else None


def _queue(sweep_dir: str | Path | Storage, tracking_uri: str) -> TrackingQueue:
    """The sweep's MLflow queue: its outbox in the driver's folder of the sweep (the sweep folder
    itself on local storage; see :func:`~kd_tune.sweep.options.driver_folder`)."""
    storage = open_storage(sweep_dir)
    return TrackingQueue(driver_folder(storage), tracking_uri, storage.name,
                         artifact_root=artifact_root(storage.parent.uri))


def _mlflow_runs(sweep_dir: str | Path | Storage, tracking_uri: str) -> dict[str, tuple[str, datetime | None]]:
    """Trial key -> (MLflow run id, start recorded in it) of the sweep's child runs ({} when
    MLflow does not answer)."""
    try:
        queue = _queue(sweep_dir, tracking_uri)
    except Exception as err:  # no tracking folder for this storage: the results do not need MLflow
        log.info(f"MLflow at {tracking_uri} cannot be read ({str(err).splitlines()[0][:200]}): mlflow_run_id and "
                 "started_at stay empty")
        return {}
    try:
        if not queue.send(timeout=SEND_TIMEOUT_S):
            raise ConnectionError(f"{queue.unsent()} queued write(s) could not be sent")
        runs = queue.tracker().trial_runs()
    except Exception as err:  # MLflow is not needed for the results themselves
        log.info(f"MLflow at {tracking_uri} cannot be read ({str(err).splitlines()[0][:200]}): mlflow_run_id and "
                 "started_at stay empty")
        return {}
    finally:
        queue.close()
    found = {}
    for key, run in runs.items():
        tag = run.data.tags.get(STARTED_TAG)
        found[key] = (run.info.run_id, datetime.fromisoformat(tag) if tag else None)
    return found


def _set_aside(sweep_dir: str | Path | Storage) -> Path | str | None:
    """Move the current results (and files of the older layout) to ``.results.damaged-<time>``;
    return that folder (a local Path, or its URI on an object store), or None when there were none."""
    storage = open_storage(sweep_dir)
    old = [rel for rel in (RESULTS_DIR, "trials.parquet", "epochs.parquet") if storage.exists(rel)]
    if not old:
        return None
    kept = f".results.damaged-{time.strftime('%Y%m%d-%H%M%S')}"
    storage.makedirs(kept)
    for rel in old:
        _move(storage, rel, f"{kept}/{rel}")
    return located(storage, kept)


def _move(storage: Storage, src: str, dst: str) -> None:
    """Move file or folder ``src`` of ``storage`` to ``dst`` (whose parent exists locally).

    Locally one rename. An object store has no rename (nor folders): each file of ``src`` is
    copied on the store and then deleted, so a move cut short leaves every file in one place or
    both, never none.
    """
    fs = storage.filesystem
    if storage.is_local or storage.is_file(src):
        fs.move(storage.fs_path(src), storage.fs_path(dst))
        return
    for entry in storage.list(src, recursive=True):
        if not entry.is_dir:
            fs.copy_file(storage.fs_path(f"{src}/{entry.path}"), storage.fs_path(f"{dst}/{entry.path}"))
            storage.delete(f"{src}/{entry.path}")
    storage.delete_dir(src)


if __name__ == "__main__":
    sys.exit(main())
