"""MLflow tracking of a sweep, through ``MlflowClient`` only (no global active run).

Layout: one experiment per sweep name; one parent run per sweep (tags ``kd_tune.role=sweep``,
``kd_tune.sweep`` = the sweep's name and ``kd_tune.sweep_dir`` = its folder, which tells two
sweeps of one name in two storages apart), however often the sweep is invoked; one child
run per trial (tag ``mlflow.parentRunId`` = the parent, ``kd_tune.trial_key``), whose params
are the trial's run config, whose metrics are the per-epoch metrics with ``step`` = epoch,
and whose status mirrors the trial (FINISHED, or FAILED when the trial failed) with the
trial's :class:`~kd_tune.core.status.TrialStatus` in tag ``kd_tune.status`` (a diverged or
stopped run is FINISHED with ``kd_tune.status=diverged`` or ``stopped``). Tags
``kd_tune.trial_id`` and ``kd_tune.teacher_key`` name Tune's trial and the teacher,
``kd_tune.started_at`` the trial row's ``started_at`` (so that results rebuilt from Ray
Tune's records keep it), ``kd_tune.invocation`` the invocation that started a run (so
that starting it again is a no-op), ``kd_tune.refilled`` a run made from the Parquet
results after the store lost it.

Every run created carries the source tags of the invocation (``mlflow.source.name``:
the script; ``mlflow.source.git.commit`` and ``.branch`` when it runs from a git
checkout). The experiment carries ``mlflow.experimentKind`` =
``custom_model_development``, which makes the MLflow UI open it in its Model training
view. What else the runs hold (final metrics, data sets, teacher runs, the parent's
summary) is the MLflow sink's business (:mod:`kd_tune.tracking.mlflow_sink`).

A resumed or re-invoked sweep logs into its parent run again (found by the id the sweep
recorded, else by its ``kd_tune.sweep_dir`` tag; made anew, once, if it was deleted), marks
it RUNNING until the invocation ends, and continues an unfinished trial's child run instead
of opening a second one; epochs it had logged are not logged again. The parent's params are
those of the sweep's first invocation (MLflow keeps a param's first value); each invocation
sets tag ``kd_tune.invocation`` to its own id.

The default tracking store is ``sqlite:///<storage>/mlflow.db`` with artifacts in
``<storage>/mlartifacts``. With an object store as the storage (``s3://...``) the SQLite
file stays on the driver, in its working directory (``./mlflow.db``, MLflow's own
default, where ``mlflow ui`` finds it), and the artifacts go to ``<storage>/mlartifacts``
in the bucket. ``MLFLOW_TRACKING_URI`` or ``--mlflow-uri`` selects another store, e.g. a
tracking server ``http://host:5000``.

``mlflow`` is imported where a method first needs it, not at the top: it takes 1.8-2.1 s to
import (``python -X importtime``, on top of torch, 2 busy cores), which the commands that
import this module for a name or a URI (``--help``, ``--dry-run``, a refused start,
``python -m kd_tune.recover``'s argument checks) need not pay.
"""
from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import os
import posixpath
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from kd_tune.core.clock import now_ms
from kd_tune.core.netcheck import connect_error
from kd_tune.core.status import TrialStatus
from kd_tune.storage.location import is_uri
from kd_tune.storage.locks import held, lock_path

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
SWEEP_TAG = "kd_tune.sweep"
KEY_TAG = "kd_tune.trial_key"
ROLE_TAG = "kd_tune.role"
STATUS_TAG = "kd_tune.status"
TRIAL_ID_TAG = "kd_tune.trial_id"
TEACHER_TAG = "kd_tune.teacher_key"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"  # the UI's Model training view (not its GenAI view)
INVOCATION_TAG = "kd_tune.invocation"
STARTED_TAG = "kd_tune.started_at"
REFILL_TAG = "kd_tune.refilled"
SWEEP_DIR_TAG = "kd_tune.sweep_dir"
_BATCH = 900  # MLflow accepts at most 1000 metrics per log_batch


def default_tracking_uri(storage: str | Path) -> str:
    """The SQLite store in the results folder, ``sqlite:///<storage>/mlflow.db``; for an object
    store, on the driver: ``sqlite:///<working directory>/mlflow.db``."""
    folder = Path.cwd() if is_uri(storage) else Path(storage).absolute()
    return "sqlite:///" + str(folder / "mlflow.db")


def artifact_root(storage: str | Path) -> str:
    """Where the default store keeps artifacts: ``<storage>/mlartifacts`` (in the bucket, for an
    object store)."""
    return f"{str(storage).rstrip('/')}/mlartifacts" if is_uri(storage) else str(Path(storage) / "mlartifacts")


def resolve_tracking_uri(flag: str | None, storage: str | Path) -> str:
    """``--mlflow-uri``, else ``MLFLOW_TRACKING_URI``, else the default SQLite store."""
    return flag or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(storage)


def check_reachable(tracking_uri: str, timeout_s: float = 3.0, answer_within_s: float = 30.0) -> str | None:
    """A problem sentence if a tracking server URI does not answer, or refuses this
    driver's credentials, else None.

    MLflow's own client retries for minutes; a sweep should fail in seconds instead. Nothing
    listening (refused, unreachable: ``timeout_s`` to connect) fails at once. A server that
    accepts the connection is given ``answer_within_s`` to answer one request, asked again
    every ``timeout_s``: a busy server (a loaded machine, a first request that opens its
    store) is slow, not absent. The credentials are those the MLflow client sends:
    ``MLFLOW_TRACKING_USERNAME`` and ``MLFLOW_TRACKING_PASSWORD`` (HTTP basic
    authentication, e.g. ``mlflow server --app-name basic-auth``), or ``MLFLOW_TRACKING_TOKEN``.
    """
    parsed = urlparse(tracking_uri)
    if parsed.scheme not in ("http", "https"):
        return None
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    error = connect_error(parsed.hostname or "", port, timeout_s)
    if error is not None:
        return f"cannot reach the MLflow tracking server at {tracking_uri}: {error}"
    request = urllib.request.Request(tracking_uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1")
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    elif os.environ.get("MLFLOW_TRACKING_TOKEN"):
        request.add_header("Authorization", f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}")
    deadline = time.monotonic() + answer_within_s
    while True:
        try:
            with urllib.request.urlopen(request, timeout=timeout_s):
                return None
        except urllib.error.HTTPError as err:
            if err.code in (401, 403):
                given = "no credentials were given" if not (user or os.environ.get("MLFLOW_TRACKING_TOKEN")) else \
                    "the credentials were refused"
                return (f"the MLflow tracking server at {tracking_uri} requires authentication (HTTP {err.code}) "
                        f"and {given}; set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or "
                        "MLFLOW_TRACKING_TOKEN)")
            return None  # it answers; whatever else is wrong, MLflow's own client will say
        except (OSError, ValueError) as err:
            slow = isinstance(err, TimeoutError) or isinstance(getattr(err, "reason", None), TimeoutError)
            if not slow or time.monotonic() >= deadline:
                waited = f" within {answer_within_s:.0f} s" if slow else ""
                return f"the MLflow tracking server at {tracking_uri} does not answer{waited}: {err}"
            log.info(f"the MLflow tracking server at {tracking_uri} is slow to answer; asking again")


def ui_command(tracking_uri: str) -> str:
    """The command that opens the MLflow UI on this store."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri} in a browser"
    return f"mlflow ui --backend-store-uri {tracking_uri}"


def experiment_url(tracking_uri: str, experiment_id: str) -> str:
    """The UI address of an experiment, in the Model training view.

    MLflow 3.17's UI picks its GenAI or Model training view from its own switch (kept per
    browser, GenAI at first), not from the experiment's ``mlflow.experimentKind`` tag;
    ``workflowType=machine_learning`` in the address sets that switch. For a local store
    the address is that of ``mlflow ui``'s default ``http://127.0.0.1:5000``.
    """
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment_id}?workflowType=machine_learning"


class SweepTracker:
    """Writes a sweep to MLflow (see the module docstring for the layout); synchronous.

    The driver's sinks never call it directly: they queue their writes through
    :class:`kd_tune.tracking.queue.TrackingQueue`, which calls it from its own thread.
    ``invocation`` (an id per sweep invocation, tag ``kd_tune.invocation``) makes
    starting a parent or a trial run idempotent, so queued writes can be replayed.
    """

    def __init__(self, tracking_uri: str, experiment: str, *, artifact_root: str | Path | None = None,
                 sweep_dir: str | None = None, known_parent: str | None = None):
        from mlflow import MlflowClient  # see the module docstring: 2 s of import

        self.tracking_uri = tracking_uri
        with _store_creation_lock(tracking_uri):
            self.client = MlflowClient(tracking_uri=tracking_uri)
            found = self.client.get_experiment_by_name(experiment)
            if found is not None and found.lifecycle_stage == "deleted":
                self.client.restore_experiment(found.experiment_id)  # a deleted experiment keeps its name
            if found is not None:
                self.experiment_id = found.experiment_id
            else:
                location = None
                if artifact_root is None and tracking_uri.startswith("sqlite:///"):
                    # MLflow's own default is ./mlruns in the working directory: a stray folder
                    # wherever the command ran. Beside the database, as the default store does.
                    artifact_root = Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts"
                if artifact_root is not None and tracking_uri.startswith("sqlite:"):
                    location = (str(artifact_root) if is_uri(artifact_root)
                                else Path(artifact_root).absolute().as_uri())
                self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)
            self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
        self.experiment = experiment
        self.sweep_dir = sweep_dir
        self._known_parent = known_parent
        self.parent_id: str | None = None
        self.source = source_tags()
        self._last_step: dict[str, int] = {}

    def start_parent(self, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str],
                     *, invocation: str | None = None) -> str:
        """Open ``invocation``'s parent: the sweep's parent run (see :meth:`sweep_parent`) marked
        RUNNING again, or a new one logged with ``params``; the one already opened for
        ``invocation`` when this write is sent again."""
        existing = self._tagged_parent(invocation) if invocation else None
        if existing is not None:
            self.parent_id = existing
            return existing
        invocation_tag = {INVOCATION_TAG: invocation} if invocation else {}
        found = self.sweep_parent()
        # A parent an interrupted invocation left RUNNING is ended: this sweep's other parents
        # (from before one parent per sweep), or, for a tracker of no sweep, any.
        left = f" and tags.`{SWEEP_DIR_TAG}` = '{self.sweep_dir}'" if self.sweep_dir else ""
        for run in self._search(f"tags.`{ROLE_TAG}` = 'sweep' and attributes.status = 'RUNNING'{left}"):
            if run.info.run_id != found:
                self.client.set_terminated(run.info.run_id, status="KILLED")
        if found is not None:
            self.client.update_run(found, status="RUNNING")
            self._log(found, tags={**tags, **invocation_tag})
            self.parent_id = found
            return found
        run = self.client.create_run(self.experiment_id, run_name=run_name,
                                     tags={ROLE_TAG: "sweep", SWEEP_TAG: self.experiment, **invocation_tag,
                                           **self.source, **tags})
        self.parent_id = self._known_parent = run.info.run_id
        self._log(self.parent_id, params=params)
        return self.parent_id

    def sweep_parent(self) -> str | None:
        """The parent run of this tracker's sweep (``sweep_dir``), if MLflow holds one: the run the
        sweep recorded (``known_parent``) while it is not deleted, else the oldest parent run
        tagged with the sweep's folder (sweeps run before one parent per sweep have several)."""
        if self.sweep_dir is None:
            return None
        if self._known_parent is not None:
            from mlflow.exceptions import MlflowException  # see the module docstring: 2 s of import

            try:
                run = self.client.get_run(self._known_parent)
            except MlflowException:  # gone with an emptied store
                run = None
            if (run is not None and run.info.lifecycle_stage == "active"
                    and run.data.tags.get(SWEEP_DIR_TAG) == self.sweep_dir):
                return self._known_parent
        runs = self._search(f"tags.`{ROLE_TAG}` = 'sweep' and tags.`{SWEEP_DIR_TAG}` = '{self.sweep_dir}'")
        if not runs:
            return None
        self._known_parent = min(runs, key=lambda r: r.info.start_time).info.run_id
        return self._known_parent

    def find_parent(self, invocation: str) -> str | None:
        """The parent run of ``invocation``: the one tagged with it, else the sweep's (every
        invocation of a sweep logs into one parent)."""
        return self._tagged_parent(invocation) or self.sweep_parent()

    def _tagged_parent(self, invocation: str) -> str | None:
        runs = self._search(f"tags.`{ROLE_TAG}` = 'sweep' and tags.`{INVOCATION_TAG}` = '{invocation}'")
        return runs[0].info.run_id if runs else None

    def end_parent(self, status: str = "FINISHED", metrics: Mapping[str, float] | None = None) -> None:
        if self.parent_id is None:
            return
        if metrics:
            self._log(self.parent_id, metrics=metrics, step=0)
        self.client.set_terminated(self.parent_id, status=status)

    def start_trial(self, trial_key: str, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str],
                    metrics: Mapping[str, float] | None = None, *, invocation: str | None = None) -> str:
        """The child run of a trial: the one ``invocation`` started already, the unfinished
        one of an earlier invocation (continued under this parent, ``tags`` set again), or a
        new one (logged with ``params`` and, at step 0, ``metrics``)."""
        invocation_tag = {INVOCATION_TAG: invocation} if invocation else {}
        parent_tag = {PARENT_TAG: self.parent_id} if self.parent_id else {}
        runs = self._search(f"tags.`{KEY_TAG}` = '{trial_key}'")
        # The start of this invocation, sent again: the run as it is.
        started = [r for r in runs if invocation and r.data.tags.get(INVOCATION_TAG) == invocation]
        unfinished = [r for r in runs if r.info.status != "FINISHED"]
        if started or unfinished:
            run_id = (started or unfinished)[0].info.run_id
            if not started:
                self.client.update_run(run_id, status="RUNNING")
                self._log(run_id, tags={**tags, **invocation_tag, **parent_tag})
            history = self.client.get_metric_history(run_id, "epoch")
            self._last_step[run_id] = max((int(m.step) for m in history), default=0)
            return run_id
        run = self.client.create_run(
            self.experiment_id,
            run_name=run_name,
            tags={ROLE_TAG: "trial", **parent_tag, KEY_TAG: trial_key, SWEEP_TAG: self.experiment, **invocation_tag,
                  **self.source, **tags},
        )
        self._log(run.info.run_id, params=params, metrics=metrics)
        self._last_step[run.info.run_id] = 0
        return run.info.run_id

    def start_teacher(self, teacher_key: str, run_name: str, params: Mapping[str, Any]) -> tuple[str, bool]:
        """The run of a teacher (tag ``kd_tune.role=teacher``) under this invocation's parent:
        the experiment's run of that teacher moved here, or a new one. Returns (run id, new)."""
        assert self.parent_id is not None, "start_parent first"
        for run in self._search(f"tags.`{ROLE_TAG}` = 'teacher' and tags.`{TEACHER_TAG}` = '{teacher_key}'"):
            self.client.set_tag(run.info.run_id, PARENT_TAG, self.parent_id)
            return run.info.run_id, False
        run = self.client.create_run(
            self.experiment_id, run_name=run_name,
            tags={ROLE_TAG: "teacher", PARENT_TAG: self.parent_id, TEACHER_TAG: teacher_key,
                  SWEEP_TAG: self.experiment, **self.source},
        )
        self._log(run.info.run_id, params=params)
        return run.info.run_id, True

    def log_values(self, run_id: str, *, metrics: Mapping[str, float] | None = None,
                   params: Mapping[str, Any] | None = None, step: int = 0) -> None:
        """Log metrics (non-numbers skipped) at ``step`` and params (inf as ``inf``, lists comma-joined)."""
        self._log(run_id, metrics=metrics, params=params, step=step)

    def log_dataset(self, run_id: str, name: str, digest: str, source: Mapping[str, Any],
                    profile: Mapping[str, Any] | None = None, context: str = "training") -> None:
        """Record a data set as an input of a run (``log_inputs``): its name, digest, source
        (JSON of ``source``), optional profile, and the context tag ``mlflow.data.context``."""
        from mlflow.entities import Dataset, DatasetInput, InputTag  # loaded with MlflowClient: free here

        dataset = Dataset(name=name, digest=digest, source_type="local", source=json.dumps(source, default=str),
                          profile=json.dumps(profile, default=str) if profile else None)
        self.client.log_inputs(run_id, [DatasetInput(dataset, [InputTag("mlflow.data.context", context)])])

    def log_table(self, run_id: str, frame: Any, artifact_file: str) -> None:
        """A pandas frame as an MLflow table artifact (the UI shows it as a table), replacing the
        run's table of that name. MLflow's own ``log_table`` appends to an existing one, and a
        sweep logs its trials table on its one parent run at every invocation; this writes the
        same file (JSON, pandas' ``split`` orient) and tag as ``log_table`` does, whole."""
        from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS  # loaded with MlflowClient: free here

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / posixpath.basename(artifact_file)
            frame.to_json(path, orient="split", index=False, date_format="iso")
            self.client.log_artifact(run_id, str(path), artifact_path=posixpath.dirname(artifact_file) or None)
        logged = json.loads(self.client.get_run(run_id).data.tags.get(MLFLOW_LOGGED_ARTIFACTS, "[]"))
        entry = {"path": artifact_file, "type": "table"}
        if entry not in logged:
            self.client.set_tag(run_id, MLFLOW_LOGGED_ARTIFACTS, json.dumps([*logged, entry]))

    def log_file(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path=artifact_path)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def log_epoch(self, run_id: str, metrics: Mapping[str, float]) -> None:
        """Log one epoch's metrics at step = epoch (skipped if that step was logged)."""
        self.log_epochs(run_id, [(metrics, now_ms())])

    def log_epochs(self, run_id: str, epochs: Sequence[tuple[Mapping[str, float], int]]) -> None:
        """Log epochs in one request: (metrics with ``epoch``, when it was reported in ms),
        oldest first, each at step = epoch; steps already logged are skipped. A write sent
        again with its original time is stored once."""
        from mlflow.entities import Metric  # loaded with MlflowClient: free here

        metrics = []
        last = self._last_step.get(run_id, 0)
        for values, ms in epochs:
            step = int(values["epoch"])
            if step > last:
                metrics += [Metric(k, float(v), ms, step) for k, v in values.items() if _is_number(v)]
                last = step
        for i in range(0, len(metrics), _BATCH):
            self.client.log_batch(run_id, metrics=metrics[i:i + _BATCH])
        self._last_step[run_id] = last  # only once stored: a failed request is sent again whole

    def end_trial(self, run_id: str, status: TrialStatus, tags: Mapping[str, str] | None = None,
                  metrics: Mapping[str, float] | None = None, step: int = 0) -> None:
        """Mirror the trial's end: ``failed`` -> FAILED, any other status -> FINISHED; the
        status goes in tag ``kd_tune.status`` (with ``tags``); ``metrics`` are logged at ``step``."""
        status = TrialStatus(status)
        self._log(run_id, tags={**(tags or {}), STATUS_TAG: status.value}, metrics=metrics, step=step)
        self.client.set_terminated(run_id, status="FAILED" if status is TrialStatus.FAILED else "FINISHED")

    def record_trial(self, trial_key: str, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str],
                     status: TrialStatus, epochs: Sequence[tuple[Mapping[str, float], int]]) -> str:
        """A finished trial's whole child run at once, under the current parent (a store
        refilled from the Parquet results): ``epochs`` as for :meth:`log_epochs`.

        A run this left unfinished (a refill cut short) is deleted and made again.
        """
        parent_tag = {PARENT_TAG: self.parent_id} if self.parent_id else {}
        for run in self._search(f"tags.`{KEY_TAG}` = '{trial_key}' and tags.`{REFILL_TAG}` = 'yes'"):
            if run.info.status == "RUNNING":
                self.client.delete_run(run.info.run_id)
        run = self.client.create_run(
            self.experiment_id, run_name=run_name,
            tags={ROLE_TAG: "trial", **parent_tag, KEY_TAG: trial_key, SWEEP_TAG: self.experiment, REFILL_TAG: "yes",
                  **tags})
        run_id = run.info.run_id
        self._log(run_id, params=params)
        self._last_step[run_id] = 0
        self.log_epochs(run_id, epochs)
        self.end_trial(run_id, status)
        return run_id

    def trial_runs(self) -> dict[str, Any]:
        """The latest child run of each trial key in the experiment (``mlflow.entities.Run``)."""
        latest: dict[str, Any] = {}
        for run in self._search(f"tags.`{ROLE_TAG}` = 'trial'"):
            key = run.data.tags.get(KEY_TAG)
            if key and (key not in latest or run.info.start_time > latest[key].info.start_time):
                latest[key] = run
        return latest

    def find_trial_run(self, trial_key: str) -> str | None:
        """The latest child run of a trial key, if any."""
        runs = self._search(f"tags.`{KEY_TAG}` = '{trial_key}'")
        return max(runs, key=lambda r: r.info.start_time).info.run_id if runs else None

    def log_artifacts(self, paths: list[Path], artifact_path: str = "tables") -> None:
        if self.parent_id is None:
            return
        for path in paths:
            self.client.log_artifact(self.parent_id, str(path), artifact_path=artifact_path)

    def _search(self, filter_string: str) -> list[Any]:
        """Every run of the experiment matching ``filter_string`` (all pages)."""
        runs: list[Any] = []
        token = None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string=filter_string, max_results=1000,
                                           page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def _log(
        self,
        run_id: str,
        *,
        params: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
        tags: Mapping[str, str] | None = None,
        step: int = 0,
        timestamp_ms: int | None = None,
    ) -> None:
        from mlflow.entities import Metric, Param, RunTag  # loaded with MlflowClient: free here

        now = timestamp_ms if timestamp_ms is not None else now_ms()
        param_list = [Param(k, _param_text(v)) for k, v in (params or {}).items()]
        metric_list = [Metric(k, float(v), now, step) for k, v in (metrics or {}).items() if _is_number(v)]
        tag_list = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        for i in range(0, max(len(metric_list), 1), _BATCH):
            self.client.log_batch(
                run_id,
                metrics=metric_list[i:i + _BATCH],
                params=param_list if i == 0 else [],
                tags=tag_list if i == 0 else [],
            )


def source_tags(script: str | None = None) -> dict[str, str]:
    """MLflow's source tags for a run started by ``script`` (default: this process's
    ``sys.argv[0]``): its path, and the git commit and branch of the checkout it is in."""
    path = Path(script or sys.argv[0] or ".").absolute()
    tags = {"mlflow.source.type": "LOCAL", "mlflow.source.name": str(path)}
    folder = path if path.is_dir() else path.parent
    commit = _git(folder, "rev-parse", "HEAD")
    if commit:
        tags["mlflow.source.git.commit"] = commit
        branch = _git(folder, "rev-parse", "--abbrev-ref", "HEAD")
        if branch and branch != "HEAD":
            tags["mlflow.source.git.branch"] = branch
    return tags


def _git(folder: Path, *args: str) -> str | None:
    """Output of ``git -C folder ARGS``, or None outside a checkout or without git."""
    try:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def _store_creation_lock(tracking_uri: str) -> contextlib.AbstractContextManager[Any]:
    """A lock around the first use of a SQLite store: two processes creating its tables at
    once fail (``table ... already exists``); other stores need none."""
    if not tracking_uri.startswith("sqlite:///"):
        return contextlib.nullcontext()
    database = Path(tracking_uri[len("sqlite:///"):])
    return held(lock_path(database.parent, "mlflow-store"), f"the MLflow store {database}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _param_text(value: Any) -> str:
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)
