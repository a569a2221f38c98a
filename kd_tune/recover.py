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
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kd_tune.part_table import BATCH_ROWS
from kd_tune.plan import Trial
from kd_tune.results import (
    RESULTS_DIR,
    ResultsError,
    ResultsWriter,
    epoch_row,
    epochs_table,
    trial_row,
    trials_table,
)
from kd_tune.status import STATUS_KEY, TrialStatus
from kd_tune.sweep import MANIFEST, sweep_lock
from kd_tune.sweep_options import SweepError
from kd_tune.tracking import STARTED_TAG, resolve_tracking_uri

SEND_TIMEOUT_S = 3600.0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kd_tune.recover",
        description="Bring a sweep's stored state back (MLflow runs, Parquet results) without training anything.",
        epilog=__doc__.split("\n\n", 2)[2].replace("``", ""), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("sync", "rebuild"), help="what to do (see below)")
    parser.add_argument("sweep_dir", type=Path, metavar="SWEEP_DIR", help="the sweep's folder, STORAGE/NAME")
    parser.add_argument("--mlflow-uri", metavar="URI",
                        help="tracking store (default: the one the sweep used, from SWEEP_DIR/sweep.json)")
    args = parser.parse_args(argv)
    sweep_dir = args.sweep_dir.absolute()
    if not (sweep_dir / MANIFEST).is_file():
        parser.error(f"{sweep_dir} is not a sweep folder (no {MANIFEST})")
    manifest = json.loads((sweep_dir / MANIFEST).read_text())
    uri = args.mlflow_uri or manifest.get("mlflow_uri") or resolve_tracking_uri(None, sweep_dir.parent)
    try:
        with sweep_lock(sweep_dir):
            if args.action == "rebuild":
                rebuild(sweep_dir, manifest.get("name", sweep_dir.name), tracking_uri=uri)
            return 0 if sync(sweep_dir, uri) else 1
    except (SweepError, ResultsError) as err:
        parser.error(str(err))


def sync(sweep_dir: Path, tracking_uri: str, *, log: Callable[[str], None] = print) -> bool:
    """Send the sweep's queued MLflow writes, refill MLflow from the results and record the
    run ids in them; False when MLflow does not answer (the writes stay queued)."""
    from kd_tune.sinks import MlflowSink

    writer = ResultsWriter(sweep_dir)
    queue = _queue(sweep_dir, tracking_uri, log)
    waiting = queue.unsent()
    try:
        if not queue.send(timeout=SEND_TIMEOUT_S):
            log(f"MLflow at {tracking_uri} does not answer: {queue.unsent()} write(s) still wait in "
                f"{queue.outbox.path}; run this again later")
            return False
        ids = MlflowSink(queue, uuid.uuid4().hex).mirror(writer, log=log)
    except Exception as err:  # the store failed in the middle of the refill
        log(f"MLflow at {tracking_uri} failed ({str(err).splitlines()[0][:200]}); run this again later")
        return False
    finally:
        queue.close()
    changed = writer.record_run_ids(ids)
    log(f"MLflow at {tracking_uri}: {waiting} queued write(s) sent; {len(ids)} of {len(writer.statuses())} "
        f"recorded trials have their run ({changed} run id(s) updated in the results)")
    return True


def rebuild(sweep_dir: Path, sweep: str, *, tracking_uri: str, log: Callable[[str], None] = print) -> None:
    """Write the sweep's results again from Ray Tune's trial records (see the module docstring)."""
    from kd_tune.teacher_store import TeacherStore

    records = list(tune_records(sweep_dir))
    if not records:
        raise SweepError(f"{sweep_dir} holds no Ray Tune trial records (trial_*/result.json) to rebuild from")
    runs = _mlflow_runs(sweep_dir, tracking_uri, log)
    teachers = TeacherStore(sweep_dir.parent / "teachers")
    staging = sweep_dir / ".results.rebuilding"
    shutil.rmtree(staging, ignore_errors=True)
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
                        teacher_test_acc=teachers.test_acc(teacher) if teacher else None, started_at=started_at,
                        error=record.error if final is TrialStatus.FAILED else None, mlflow_run_id=run_id)
        row["finished_at"] = _time(record.reports[-1])
        finals.append(row)
    epochs.append(batch)
    trials.append(finals)
    epochs.compact()
    trials.compact()
    kept = _set_aside(sweep_dir)
    (staging / RESULTS_DIR).rename(sweep_dir / RESULTS_DIR)
    staging.rmdir()
    log(f"rebuilt the results of {sweep_dir} from Ray Tune's records: {len(finals)} trial row(s), "
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


def tune_records(sweep_dir: Path) -> Iterator[TuneRecord]:
    """The trial records Ray Tune keeps in ``sweep_dir`` (``trial_*/result.json`` and ``error.txt``)."""
    from kd_tune.sinks.tune_callback import error_summary

    for folder in sorted(sweep_dir.glob("trial_*")):
        results = folder / "result.json"
        if not results.is_file():
            continue
        by_epoch: dict[int, dict[str, Any]] = {}
        planned = None
        for line in results.read_text(errors="replace").splitlines():
            try:
                report = json.loads(line)
            except ValueError:
                continue  # a line cut short by a killed driver
            if "epoch" in report and "trial" in report.get("config", {}):
                planned = planned or Trial.from_dict(report["config"]["trial"])
                by_epoch[int(report["epoch"])] = report  # a retry's report replaces the earlier one
        if planned is None:
            continue
        reports = [by_epoch[e] for e in sorted(by_epoch)]
        error_file = folder / "error.txt"
        error = error_summary(error_file.read_text(errors="replace")) if error_file.is_file() else None
        yield TuneRecord(planned, str(reports[-1].get("trial_id", folder.name.removeprefix("trial_"))), reports,
                         error)


def _epoch(sweep: str, trial: Trial, report: dict[str, Any]) -> dict[str, Any]:
    row = epoch_row(sweep, trial.key, str(report.get("trial_id", "")), report)
    row["reported_at"] = _time(report)
    return row


def _time(report: dict[str, Any]) -> datetime | None:
    stamp = report.get("timestamp")
    return datetime.fromtimestamp(stamp, UTC) if isinstance(stamp, (int, float)) else None


def _queue(sweep_dir: Path, tracking_uri: str, log: Callable[[str], None]) -> Any:
    from kd_tune.tracking_queue import TrackingQueue

    return TrackingQueue(sweep_dir, tracking_uri, sweep_dir.name, artifact_root=sweep_dir.parent / "mlartifacts",
                         log=log)


def _mlflow_runs(sweep_dir: Path, tracking_uri: str, log: Callable[[str], None]
                 ) -> dict[str, tuple[str, datetime | None]]:
    """Trial key -> (MLflow run id, start recorded in it) of the sweep's child runs ({} when
    MLflow does not answer)."""
    queue = _queue(sweep_dir, tracking_uri, log)
    try:
        if not queue.send(timeout=SEND_TIMEOUT_S):
            raise ConnectionError(f"{queue.unsent()} queued write(s) could not be sent")
        runs = queue.tracker().trial_runs()
    except Exception as err:  # MLflow is not needed for the results themselves
        log(f"MLflow at {tracking_uri} cannot be read ({str(err).splitlines()[0][:200]}): mlflow_run_id and "
            "started_at stay empty")
        return {}
    finally:
        queue.close()
    found = {}
    for key, run in runs.items():
        tag = run.data.tags.get(STARTED_TAG)
        found[key] = (run.info.run_id, datetime.fromisoformat(tag) if tag else None)
    return found


def _set_aside(sweep_dir: Path) -> Path | None:
    """Move the current results (and files of the older layout) to ``.results.damaged-<time>``."""
    old = [p for p in (sweep_dir / RESULTS_DIR, sweep_dir / "trials.parquet", sweep_dir / "epochs.parquet")
           if p.exists()]
    if not old:
        return None
    kept = sweep_dir / f".results.damaged-{time.strftime('%Y%m%d-%H%M%S')}"
    kept.mkdir()
    for path in old:
        path.rename(kept / path.name)
    return kept


if __name__ == "__main__":
    sys.exit(main())
