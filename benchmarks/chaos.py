"""A chaos soak: a grid sweep and an ASHA search of many short trials under repeated faults.

    python benchmarks/chaos.py --quick            # 24 trials, ~17 faults (about 6 min on 2 idle cores)
    python benchmarks/chaos.py                    # the long form: 384 trials, dozens of faults
    python benchmarks/chaos.py --seed 7 --work /tmp/soak   # another schedule; keep the files

On a 3-node ``ray.cluster_utils.Cluster`` on 127.0.0.1 (token authentication on, a Ray temp
folder of its own), with a real ``mlflow server`` on 127.0.0.1 as the tracking store, it runs
``python sweeps/tau_grid.py`` and then ``python sweeps/tau_search.py`` (ASHA) as a user does,
with ``--address`` the cluster's, into one ``--storage``, on digits with tiny models
(``cnn-8`` teacher, ``cnn-4`` student) and a report and a checkpoint every epoch, while faults
drawn from ``random.Random(--seed)`` hit them (the way Ray's release chaos tests run a
workload under a node and worker killer), on a clock that runs while a driver runs (so a
loaded machine gets the same faults per second of sweep, and none pile up between drivers):

- every ``worker_every_s`` (drawn around it): a worker process running a trial (a Tune
  ``ImplicitFunc`` actor under one of the cluster's raylets) is SIGKILLed;
- every ``node_every_s``: a worker node is removed (its raylet and workers killed) and a
  new one added;
- every ``mlflow_every_s``: the tracking server's process group is SIGKILLed; it is started
  again on the same port and store some seconds later;
- each sweep's driver is SIGKILLed once when a drawn share of its trials has rows, and the
  same command is run again to resume it;
- one Ctrl-C (SIGINT) to the grid's driver the moment a new trial checkpoint appears on the
  storage (Tune writes them while trials run), after a drawn share of the trials; the driver
  must stop within ``--stop-timeout`` seconds with exit code 1, and the same command is run
  again to finish.

An invocation that ends with MLflow still behind (its outbox not sent) is run again, as a user
would (see docs/failures.md). Then it checks, per sweep and in total: the trials planned
(``sweep.json``, or the search's record), one final row per trial and none unplanned, no
duplicate epoch rows, each trial's epochs 1..E once each (E its row's last epoch; a completed
trial's the configured epochs), one FINISHED MLflow child per trial under the sweep's one parent
run, each teacher trained once per key across every invocation, and the search's trial count
and selection after its resume. The last line is::

    chaos: faults=F trials=N rows=N lost=0 duplicated=0 mlflow_missing=0

and the exit code is 1 when anything was lost, duplicated or missing from MLflow, or a driver
did not stop on Ctrl-C. Never part of the test suite; ``tests/benchmarks/test_chaos.py`` checks
the counting on made-up results.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from processes import free_port, mlflow_server  # noqa: E402  (the tests' server, found through the path above)

log = logging.getLogger("chaos")

SMALL = ["--dataset", "digits", "--teacher", "cnn-8", "--student", "cnn-4", "--teacher-epochs", "2",
         "--batch-size", "128"]
# A report and a checkpoint every epoch: the most checkpoint writes for a fault to land in.
EVERY_EPOCH = ["--report-every-s", "0", "--checkpoint-every-s", "0", "--checkpoint-every", "1"]
FAILED = re.compile(r"\nsweep finished in \d+s: [^\n]*?(\d+) failed")
TRAINED = re.compile(r"teacher \S+ \((\w+)\) trained: ")
BEHIND = "MLflow is still behind"
DONE = "\nsweep finished in "  # the closing line of a sweep whose every trial ended
STOPPED = "; rerun the same command to resume it"  # the closing line of an interrupted sweep
TRAINING = " at a time; results in "  # the driver's line as its trials phase starts (grid and search)


@dataclass(frozen=True)
class Size:
    """How big a soak is: the grid's axes, the search's draws, and how often faults come (seconds)."""

    epochs: int
    seeds: int
    taus: str
    alphas: str
    samples: int
    confirm_top: int
    confirm_seeds: int
    worker_every_s: float
    node_every_s: float
    mlflow_every_s: float
    max_failures: int = 8


QUICK = Size(epochs=2, seeds=2, taus="1,inf", alphas="0.5,1", samples=8, confirm_top=1, confirm_seeds=2,
             worker_every_s=20, node_every_s=60, mlflow_every_s=40)
LONG = Size(epochs=2, seeds=20, taus="1,3,inf", alphas="0.1,0.5,1", samples=120, confirm_top=2, confirm_seeds=2,
            worker_every_s=15, node_every_s=60, mlflow_every_s=45)


# --- the schedule -----

@dataclass(frozen=True)
class Fault:
    """A timed fault: at ``at_s`` seconds of the soak's clock, of ``kind`` worker, node or mlflow;
    ``down_s``: how long the tracking server stays down (mlflow only)."""

    at_s: float
    kind: str
    down_s: float = 0.0


def fault_schedule(rng: random.Random, size: Size, horizon_s: float) -> list[Fault]:
    """The timed faults up to ``horizon_s`` seconds of the soak's clock, in time order: each kind
    at intervals drawn uniformly in [0.5, 1.5] x its period (the first from 0)."""
    faults = []
    for kind, every in (("worker", size.worker_every_s), ("node", size.node_every_s),
                        ("mlflow", size.mlflow_every_s)):
        at = rng.uniform(0.5, 1.5) * every
        while at < horizon_s:
            faults.append(Fault(at, kind, rng.uniform(3.0, 15.0) if kind == "mlflow" else 0.0))
            at += rng.uniform(0.5, 1.5) * every
    return sorted(faults, key=lambda f: f.at_s)


# --- the checks (pure: results in, counts out) -----

@dataclass(frozen=True)
class SweepCheck:
    """What one sweep's results and MLflow runs hold against its planned trials (counts of trials
    unless said). ``lost``: planned trials without a final row, or whose row is ``failed``;
    ``duplicated``: extra final rows of a key plus duplicate (trial, epoch) rows; ``mlflow_missing``:
    planned trials without exactly one FINISHED child run, plus parent runs beyond one."""

    name: str
    planned: int
    rows: int
    missing: int
    failed: int
    unplanned: int
    duplicate_rows: int
    duplicate_epochs: int
    bad_epochs: int
    children: int
    mlflow_missing: int
    parents: int

    @property
    def lost(self) -> int:
        return self.missing + self.failed

    @property
    def duplicated(self) -> int:
        return self.duplicate_rows + self.duplicate_epochs + self.unplanned

    def line(self) -> str:
        return (f"{self.name}: planned={self.planned} rows={self.rows} missing={self.missing} failed={self.failed} "
                f"unplanned={self.unplanned} duplicate_rows={self.duplicate_rows} "
                f"duplicate_epochs={self.duplicate_epochs} bad_epochs={self.bad_epochs} mlflow_children="
                f"{self.children} mlflow_missing={self.mlflow_missing} parents={self.parents}")


def check_sweep(name: str, planned: Iterable[str], trials: pd.DataFrame, epochs: pd.DataFrame,
                children: Sequence[tuple[str, str]], parents: int, epochs_wanted: int) -> SweepCheck:
    """Count what ``trials`` (final rows: ``trial_key``, ``status``, ``epoch``), ``epochs`` (``trial_key``,
    ``epoch``) and the MLflow ``children`` ((trial key, run status) of each child) hold against the
    ``planned`` keys; ``parents``: the sweep's parent runs; ``epochs_wanted``: a completed trial's epochs."""
    planned = set(planned)
    keys = set(trials["trial_key"])
    failed = trials["trial_key"].isin(planned) & (trials["status"] == "failed")
    finished = Counter(key for key, status in children if status == "FINISHED")
    return SweepCheck(
        name=name, planned=len(planned), rows=len(trials), missing=len(planned - keys),
        failed=int(trials.loc[failed, "trial_key"].nunique()), unplanned=len(keys - planned),
        duplicate_rows=int(trials["trial_key"].duplicated().sum()),
        duplicate_epochs=int(epochs.duplicated(["trial_key", "epoch"]).sum()),
        bad_epochs=len(bad_epoch_trials(trials, epochs, epochs_wanted)),
        children=len(children),
        mlflow_missing=sum(1 for key in planned if finished[key] != 1) + max(parents - 1, 0) + (parents == 0),
        parents=parents,
    )


def bad_epoch_trials(trials: pd.DataFrame, epochs: pd.DataFrame, epochs_wanted: int) -> list[str]:
    """Trial keys whose epoch rows are not 1..E once each (E: the row's last ``epoch``), or that
    completed short of ``epochs_wanted``."""
    by_key = epochs.groupby("trial_key")["epoch"].apply(lambda e: sorted(int(x) for x in e)).to_dict()
    bad = []
    for row in trials.itertuples(index=False):
        last = int(row.epoch) if not pd.isna(row.epoch) else 0
        complete = row.status != "completed" or last == epochs_wanted
        if by_key.get(row.trial_key, []) != list(range(1, last + 1)) or not complete:
            bad.append(row.trial_key)
    return sorted(set(bad))


def failed_on_the_way(logs: Sequence[str]) -> int:
    """Trials an invocation ended as failed (``sweep finished in ...: N failed``) before the last
    invocation: each was run again by the next invocation, which resumes errored trials."""
    return sum(int(n) for text in logs[:-1] for n in FAILED.findall(text))


def teacher_trainings(logs: Iterable[str]) -> Counter:
    """How often each teacher key was trained to the end, over the drivers' outputs ``logs``."""
    return Counter(key for text in logs for key in TRAINED.findall(text))


def search_problems(record: Any, trials: pd.DataFrame, samples: int, top: int) -> list[str]:
    """What is wrong with a finished search's ``record`` (a :class:`SearchRecord`) given its
    ``trials`` (final rows): the draws must be numbered 0..``samples``-1 with distinct keys, and
    the ``top`` selected settings must be those of the best mean last-epoch validation accuracy
    over their completed search trials, in order, with a final pick."""
    problems = []
    numbers = [t.number for t in record.trials]
    if numbers != list(range(samples)):
        problems.append(f"draws numbered {numbers[:5]}... ({len(numbers)}), not 0..{samples - 1}")
    if len(set(record.search_keys)) != len(record.search_keys):
        problems.append("a trial key drawn twice")
    setting = {t.key: t.setting for t in record.trials}
    done = trials[trials["trial_key"].isin(setting) & (trials["status"] == "completed")]
    means = done.assign(setting=done["trial_key"].map(setting)).groupby("setting")["val_acc"].mean()
    chosen = [s.setting for s in sorted(record.selected, key=lambda s: s.rank)]
    if not _best_of(chosen, means, top):
        best = list(means.sort_values(ascending=False, kind="stable").index[:top])
        problems.append(f"selected {chosen}, the results say {best} (or settings tied with them)")
    if record.final is None:
        problems.append("no final pick")
    return problems


def _best_of(chosen: Sequence[str], means: pd.Series, top: int) -> bool:
    """Whether ``chosen`` (in rank order) are ``top`` settings of the best ``means``, ranked by them;
    settings tied on their mean may be chosen either way (the search breaks ties on other grounds)."""
    if len(chosen) != min(top, len(means)) or not set(chosen) <= set(means.index):
        return False
    values = [means[s] for s in chosen]
    others = means.drop(list(chosen))
    return all(a >= b for a, b in zip(values, values[1:])) and (others.empty or min(values) >= others.max())


def result_line(faults: int, checks: Sequence[SweepCheck]) -> str:
    """The soak's last line."""
    total = sum(c.planned for c in checks)
    rows = sum(c.rows for c in checks)
    return (f"chaos: faults={faults} trials={total} rows={rows} lost={sum(c.lost for c in checks)} "
            f"duplicated={sum(c.duplicated for c in checks)} mlflow_missing={sum(c.mlflow_missing for c in checks)}")


# --- the cluster, the tracking server and the faults -----

class TrackingServer:
    """A real ``mlflow server`` on 127.0.0.1:``port`` with its store in ``folder``, which can be
    killed (its whole process group, SIGKILL) and started again on the same port and store.

    It starts in a thread of its own (about 20 s here, on 2 loaded cores): meanwhile the soak
    goes on watching the drivers and applying faults."""

    def __init__(self, folder: Path, port: int):
        self.folder, self.port = folder, port
        self._stack = contextlib.ExitStack()
        self._proc: subprocess.Popen | None = None
        self._starting: threading.Thread | None = None
        self.back_at: float | None = None  # monotonic time to start it again (None: it runs or is starting)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def up(self) -> bool:
        return self._proc is not None

    def _start(self) -> None:
        self._proc = self._stack.enter_context(mlflow_server(self.folder, self.port))

    def start(self, wait: bool = True) -> None:
        """Start it (in a thread); ``wait``: until it answers."""
        if self._starting is None or not self._starting.is_alive():
            if not self.up:
                self.back_at = None
                self._starting = threading.Thread(target=self._start, name="mlflow-start", daemon=True)
                self._starting.start()
        if wait and self._starting is not None:
            self._starting.join()
            if not self.up:
                raise RuntimeError(f"the tracking server did not start; see {self.folder}/server-*.log")

    def kill(self, down_s: float) -> bool:
        """SIGKILL the server's process group (no clean shutdown) and start it again after ``down_s``
        seconds; False when it was not up."""
        if not self.up:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signal.SIGKILL)
        self.close()
        self.back_at = time.monotonic() + down_s
        return True

    def tick(self) -> None:
        """Start it again once its time down is over."""
        if self.back_at is not None and time.monotonic() >= self.back_at:
            self.start(wait=False)

    def close(self) -> None:
        if self._starting is not None:
            self._starting.join()
        self._stack.close()
        self._proc = None


class Chaos:
    """The loopback cluster (a head and two worker nodes, 1 CPU each) and the faults done to it."""

    def __init__(self, cluster: Any, tracking: TrackingServer, node_env: Mapping[str, str]):
        self.cluster, self.tracking, self.node_env = cluster, tracking, dict(node_env)
        self.done: Counter = Counter()
        self.killed: set[int] = set()

    def raylets(self) -> list[int]:
        from ray._private import ray_constants

        nodes = [self.cluster.head_node, *self.cluster.worker_nodes]
        return [n.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid for n in nodes]

    def trial_workers(self) -> list[int]:
        """Pids of the cluster's worker processes that hold a Tune trial (its function trainable's actor)."""
        import psutil

        found = []
        for raylet in self.raylets():
            with contextlib.suppress(psutil.Error):
                for proc in psutil.Process(raylet).children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        if "ImplicitFunc" in " ".join(proc.cmdline()):
                            found.append(proc.pid)
        return sorted(found)

    def kill_worker(self, rng: random.Random) -> bool:
        workers = [pid for pid in self.trial_workers() if pid not in self.killed]
        if not workers:
            return False
        pid = rng.choice(workers)
        self.killed.add(pid)  # a killed worker lingers a moment before its raylet reaps it
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        log.info(f"fault: killed trial worker {pid}")
        return True

    def replace_node(self, rng: random.Random) -> bool:
        """Remove a worker node without a graceful shutdown, then add a new one."""
        nodes = sorted(self.cluster.worker_nodes, key=lambda n: n.node_id)
        if not nodes:
            return False
        node = rng.choice(nodes)
        self.cluster.remove_node(node, allow_graceful=False)
        self.cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1", env_vars=self.node_env)
        log.info(f"fault: removed node {node.node_id[:8]}, added a new one")
        return True

    def apply(self, fault: Fault, rng: random.Random) -> None:
        """Do ``fault``; counted when it found something to hit."""
        if fault.kind == "worker":
            hit = self.kill_worker(rng)
        elif fault.kind == "node":
            hit = self.replace_node(rng)
        else:
            hit = self.tracking.kill(fault.down_s)
            if hit:
                log.info(f"fault: killed the tracking server, back in {fault.down_s:.0f}s")
        if hit:
            self.done[fault.kind] += 1


@contextlib.contextmanager
def loopback_cluster(env: Mapping[str, str]) -> Iterator[Any]:
    """A head and two worker nodes on 127.0.0.1, 1 CPU each; ``env`` is already this process's."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False, "env_vars": dict(env)})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1", env_vars=dict(env))
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()


# --- driving one sweep through its faults -----

@dataclass(frozen=True)
class Plan:
    """One sweep of the soak: its name, command line, trials (for the kill point) and completed epochs;
    ``kill_share``: the share of its trials with rows when its driver is SIGKILLed; ``interrupt_share``
    (None: no Ctrl-C): the share after which a new checkpoint triggers the Ctrl-C."""

    name: str
    cmd: list[str]
    trials: int
    epochs: int
    kill_share: float
    interrupt_share: float | None = None


@dataclass
class Drive:
    """What happened to one sweep's drivers: their outputs, exit codes and problems seen."""

    logs: list[str] = field(default_factory=list)
    codes: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    stop_s: float | None = None  # how long the driver took to stop after the Ctrl-C


def rows_recorded(sweep_dir: Path) -> int:
    """Final rows in the sweep's results now (0 while there are none, or a part is being merged)."""
    from analysis.results_io import load_trials

    try:
        return len(load_trials(sweep_dir))
    except (OSError, ValueError):
        return 0


def checkpoints(sweep_dir: Path) -> set[str]:
    """The trial checkpoints on the storage now (``trial_*/checkpoint_*``), in any Tune experiment."""
    return {str(p.relative_to(sweep_dir)) for p in sweep_dir.glob("**/trial_*/checkpoint_*")}


class Soak:
    """Runs the sweeps' drivers, applying the timed faults while any driver runs."""

    def __init__(self, chaos: Chaos, faults: list[Fault], rng: random.Random, work: Path, env: Mapping[str, str],
                 stop_timeout_s: float):
        self.chaos, self.faults, self.rng, self.work = chaos, list(faults), rng, work
        self.env, self.stop_timeout_s = dict(env), stop_timeout_s
        self.clock = 0.0  # seconds of the schedule gone: the time drivers ran
        self.last_tick: float | None = None
        self.invocations = 0

    def tick(self, training: bool) -> None:
        """Apply the faults that are due, and bring the tracking server back when its time comes.

        ``training``: the driver has passed its start checks. Until then a tracking fault waits: a
        driver that finds the server down when it starts refuses to run (exit 2, by design)."""
        now = time.monotonic()
        # The schedule's clock runs while a driver runs (between ticks at most 2 s: a tick that
        # waited on a node's start does not let the faults due meanwhile come at once).
        self.clock += min(now - self.last_tick, 2.0) if self.last_tick is not None else 0.0
        self.last_tick = now
        self.chaos.tracking.tick()
        waiting = []
        while self.faults and self.faults[0].at_s <= self.clock:
            fault = self.faults.pop(0)
            if fault.kind == "mlflow" and not training:
                waiting.append(fault)
            else:
                self.chaos.apply(fault, self.rng)
        self.faults[:0] = waiting

    def start(self, plan: Plan, drive: Drive) -> tuple[subprocess.Popen, Path]:
        # A sweep refuses to start while its tracking server does not answer: bring it back first.
        self.chaos.tracking.start()
        self.last_tick = None
        self.invocations += 1
        out = self.work / "logs" / f"{plan.name}-{len(drive.codes) + 1}.log"
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "wb") as sink:
            proc = subprocess.Popen(plan.cmd, stdout=sink, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT,
                                    start_new_session=True)
        log.info(f"{plan.name}: driver {proc.pid} started (invocation {len(drive.codes) + 1})")
        return proc, out

    def end(self, proc: subprocess.Popen, out: Path, drive: Drive) -> int:
        code = proc.wait()
        drive.codes.append(code)
        drive.logs.append(out.read_text(errors="replace"))
        return code

    def run(self, plan: Plan, sweep_dir: Path, max_invocations: int = 8) -> Drive:
        """Run ``plan`` to its end: its driver SIGKILLed once and Ctrl-C'd once (if planned), run
        again after each, and again while MLflow stays behind or an invocation fails, up to
        ``max_invocations``; an invocation that ends in an error (not with its closing lines) is a problem."""
        drive = Drive()
        interrupted = plan.interrupt_share is None
        kill_at = max(1, math.ceil(plan.kill_share * plan.trials))
        interrupt_at = max(1, math.ceil((plan.interrupt_share or 0) * plan.trials))
        killed = False
        seen: set[str] | None = None
        while len(drive.codes) < max_invocations:
            proc, out = self.start(plan, drive)
            try:
                training = False
                while proc.poll() is None:
                    training = training or TRAINING in out.read_text(errors="replace")
                    self.tick(training)
                    rows = rows_recorded(sweep_dir)
                    if not killed and rows >= kill_at:
                        proc.send_signal(signal.SIGKILL)
                        killed = True
                        self.chaos.done["driver_kill"] += 1
                        log.info(f"fault: SIGKILLed the {plan.name} driver at {rows} rows")
                        break
                    if killed and not interrupted and rows >= interrupt_at:
                        now = checkpoints(sweep_dir)
                        if seen is not None and now - seen:
                            self.interrupt(proc, out, plan, drive, rows)
                            interrupted = True
                            break
                        seen = now
                    time.sleep(0.1 if killed and not interrupted and rows >= interrupt_at else 0.5)
            except BaseException:  # the soak itself stopped (Ctrl-C, an error): no driver left behind
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                raise
            code = self.end(proc, out, drive)
            if code == 0 and BEHIND not in drive.logs[-1]:
                return drive
            # A driver that was not SIGKILLed ends with its closing lines; anything else is an error.
            if code != -signal.SIGKILL and not any(end in drive.logs[-1] for end in (DONE, STOPPED)):
                drive.problems.append(f"{plan.name}: invocation {len(drive.codes)} exited {code} without its "
                                      f"closing lines: {drive.logs[-1][-600:]}")
        drive.problems.append(f"{plan.name}: not finished after {max_invocations} invocations")
        return drive

    def interrupt(self, proc: subprocess.Popen, out: Path, plan: Plan, drive: Drive, rows: int) -> None:
        """Ctrl-C the driver (SIGINT to it alone, as a terminal sends it to the foreground job) and
        time its stop; a driver that does not stop in time (then SIGKILLed), or with another exit
        code than 1, is a problem (and one without its closing lines, see :meth:`run`)."""
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        self.chaos.done["ctrl_c"] += 1
        log.info(f"fault: Ctrl-C to the {plan.name} driver at {rows} rows, as a checkpoint was written")
        while proc.poll() is None and time.monotonic() - sent < self.stop_timeout_s:
            self.tick(True)
            time.sleep(0.2)
        drive.stop_s = time.monotonic() - sent
        if proc.poll() is None:
            drive.problems.append(f"{plan.name}: the driver did not stop within {self.stop_timeout_s:.0f}s of Ctrl-C")
            os.killpg(proc.pid, signal.SIGKILL)
        elif proc.returncode != 1:
            drive.problems.append(f"{plan.name}: the driver exited {proc.returncode} after Ctrl-C, not 1")


# --- reading back -----

def mlflow_runs(uri: str, name: str) -> tuple[int, list[tuple[str, str]], list[str]]:
    """(parent runs, (trial key, status) of each trial run, teacher key of each teacher run) of sweep ``name``."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return 0, [], []
    runs = []
    token = None
    while True:
        page = client.search_runs([experiment.experiment_id], max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            break
    role = [(r, r.data.tags.get("kd_tune.role")) for r in runs]
    parents = [r for r, what in role if what == "sweep"]
    parent_ids = {p.info.run_id for p in parents}
    children = [(r.data.tags.get("kd_tune.trial_key", ""), r.info.status) for r, what in role
                if what == "trial" and r.data.tags.get("mlflow.parentRunId") in parent_ids]
    teachers = [r.data.tags.get("kd_tune.teacher_key", "") for r, what in role if what == "teacher"]
    return len(parents), children, teachers


def planned_keys(sweep_dir: Path) -> list[str]:
    """The trial keys a finished sweep planned: a grid's ``sweep.json``, or a search's draws and confirmations."""
    import json

    from kd_tune.results.search_record import SearchRecord

    record = SearchRecord.read(sweep_dir)
    if record is not None:
        return record.search_keys + record.confirm_keys
    return list(json.loads((sweep_dir / "sweep.json").read_text())["trials"])


def check(plan: Plan, sweep_dir: Path, uri: str) -> SweepCheck:
    from analysis.results_io import load_epochs, load_trials

    parents, children, _ = mlflow_runs(uri, plan.name)
    return check_sweep(plan.name, planned_keys(sweep_dir), load_trials(sweep_dir), load_epochs(sweep_dir), children,
                       parents, plan.epochs)


# --- the soak -----

def plans(size: Size, storage: Path, address: str, uri: str, seed: int, rng: random.Random) -> list[Plan]:
    """The grid (SIGKILL, then Ctrl-C) and the search (SIGKILL), each with its kill point drawn from ``rng``."""
    common = ["--address", address, "--storage", str(storage), "--mlflow-uri", uri, *SMALL,
              "--epochs", str(size.epochs), "--max-failures", str(size.max_failures), *EVERY_EPOCH]
    taus, alphas = size.taus.split(","), size.alphas.split(",")
    grid_trials = size.seeds * (len(taus) * len(alphas) + len(alphas) + 1)  # kl, mse, ce
    grid = Plan("chaos_grid", [sys.executable, str(ROOT / "sweeps" / "tau_grid.py"), "--name", "chaos_grid", *common,
                               "--seeds", str(size.seeds), "--taus", size.taus, "--alphas", size.alphas],
                grid_trials, size.epochs, kill_share=rng.uniform(0.15, 0.35), interrupt_share=rng.uniform(0.45, 0.7))
    search = Plan("chaos_search", [sys.executable, str(ROOT / "sweeps" / "tau_search.py"), "--name", "chaos_search",
                                   *common, "--num-samples", str(size.samples), "--scheduler", "asha",
                                   "--grace-period", "1", "--search-seed", str(seed), "--confirm-top",
                                   str(size.confirm_top), "--confirm-seeds", str(size.confirm_seeds)],
                  size.samples, size.epochs, kill_share=rng.uniform(0.3, 0.6))
    return [grid, search]


def soak_env(ray_tmp: Path) -> dict[str, str]:
    """This process's environment for the cluster and the drivers: Ray on loopback only, with a
    temp folder of its own (its address file must not redirect other drivers' ``--address auto``),
    token authentication with a token of this soak's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_TMPDIR=str(ray_tmp), RAY_AUTH_MODE="token",
               RAY_AUTH_TOKEN=secrets.token_hex(32), PYTHONPATH=str(ROOT))
    return env


def report(checks: Sequence[SweepCheck], drives: Sequence[Drive], chaos: Chaos, trainings: Counter,
           teachers: Sequence[str], search: list[str], seconds: float) -> tuple[str, bool]:
    """Print the checks; the last line and whether the soak passed."""
    for c in checks:
        print(c.line())
    for d, c in zip(drives, checks):
        codes = ",".join(map(str, d.codes))
        stop = f", stopped {d.stop_s:.1f}s after Ctrl-C" if d.stop_s is not None else ""
        print(f"{c.name}: invocations={len(d.codes)} exit codes={codes}{stop}; trials an invocation ended as "
              f"failed, run again by the next: {failed_on_the_way(d.logs)}")
    print("faults: " + ", ".join(f"{kind}={n}" for kind, n in sorted(chaos.done.items())))
    twice = {k: n for k, n in trainings.items() if n != 1}
    print(f"teachers: {len(trainings)} trained, {len(twice)} trained more than once {twice or ''}; "
          f"{len(teachers)} teacher runs in MLflow for {len(set(teachers))} keys")
    print(f"search: {'; '.join(search) if search else 'trial count and selection as recorded'}")
    problems = [p for d in drives for p in d.problems]
    for problem in problems:
        print(f"problem: {problem}")
    print(f"soak took {seconds / 60:.1f} min")
    line = result_line(sum(chaos.done.values()), checks)
    ok = not problems and not search and not twice and all(
        c.lost == 0 and c.duplicated == 0 and c.mlflow_missing == 0 and c.bad_epochs == 0 for c in checks)
    return line, ok


def soak(size: Size, seed: int, work: Path, stop_timeout_s: float) -> int:
    rng = random.Random(seed)
    ray_tmp = Path(tempfile.mkdtemp(prefix="kdc-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    env = soak_env(ray_tmp)
    os.environ.update(env)  # before Ray is imported (it reads these once)
    started = time.monotonic()
    tracking = TrackingServer(work / "mlflow", free_port())
    tracking.start()
    try:
        with loopback_cluster({k: env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}) as cluster:
            chaos = Chaos(cluster, tracking, {k: env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")})
            storage = work / "storage"
            runner = Soak(chaos, fault_schedule(rng, size, 6 * 3600), rng, work, env, stop_timeout_s)
            sweeps = plans(size, storage, cluster.address, tracking.uri, seed, rng)
            drives = [runner.run(plan, storage / plan.name) for plan in sweeps]
            tracking.start()
            checks = [check(plan, storage / plan.name, tracking.uri) for plan in sweeps]
            teachers = [key for plan in sweeps for key in mlflow_runs(tracking.uri, plan.name)[2]]
            record = _record(storage / sweeps[1].name)
            from analysis.results_io import load_trials

            search = (["no search record"] if record is None else
                      search_problems(record, load_trials(storage / sweeps[1].name), size.samples, size.confirm_top))
            line, ok = report(checks, drives, chaos, teacher_trainings(log for d in drives for log in d.logs),
                              teachers, search, time.monotonic() - started)
    finally:
        tracking.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    print(line)
    return 0 if ok else 1


def _record(sweep_dir: Path) -> Any:
    from kd_tune.results.search_record import SearchRecord

    return SearchRecord.read(sweep_dir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="the small soak (24 trials; about 6 min on 2 idle cores)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault schedule and the search (default: 0)")
    parser.add_argument("--work", type=Path, help="folder for the storage, MLflow store and logs (kept); "
                        "default: a temporary folder, removed after a soak that passed")
    parser.add_argument("--stop-timeout", type=float, default=180.0, metavar="SECONDS",
                        help="how long a driver may take to stop after Ctrl-C (default: 180)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    size = QUICK if args.quick else LONG
    work = args.work or Path(tempfile.mkdtemp(prefix="kd-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"chaos soak ({'quick' if args.quick else 'long'}), seed {args.seed}, files in {work}", flush=True)
    code = soak(size, args.seed, work, args.stop_timeout)
    if code == 0 and args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
