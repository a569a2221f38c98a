"""The MLflow outbox and its sender, against a real ``mlflow server`` that is killed and
started again (its own process group, 127.0.0.1), and a real SQLite store."""
from __future__ import annotations

import logging
import multiprocessing
import threading
import time
import uuid

import pytest
from mlflow import MlflowClient
from processes import end_group, free_port, mlflow_server

from kd_tune.core.status import TrialStatus
from kd_tune.tracking.queue import Outbox, TrackingQueue
from kd_tune.tracking.tracker import KEY_TAG, PARENT_TAG, STATUS_TAG, SweepTracker, default_tracking_uri
from kd_tune.tracking.writes import EndParent, EndTrial, LogEpoch, StartParent, StartTrial


def epochs(queue, key, first, last):
    for epoch in range(first, last + 1):
        queue.put(LogEpoch(key, {"epoch": epoch, "val_acc": epoch / 10, "note": "not a number"}))


def steps(client, run_id, metric="val_acc"):
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, metric))


class Lines:
    """The queue's console lines, as the sweep's console shows them (its INFO records)."""

    def __init__(self, caplog):
        caplog.set_level(logging.INFO, logger="kd_tune")
        self.caplog = caplog

    def _lines(self):
        return [r.getMessage() for r in self.caplog.records if r.name == "kd_tune.tracking.queue"]

    def __len__(self):
        return len(self._lines())

    def __getitem__(self, i):
        return self._lines()[i]

    def __iter__(self):
        return iter(self._lines())


def wait_for(condition, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


# -- the outbox ----------------------------------------------------------------------------


def test_the_outbox_keeps_unsent_writes_across_processes(tmp_path):
    outbox = Outbox(tmp_path / "tracking")
    assert outbox.unsent() == [] and outbox.count() == 0 and not (tmp_path / "tracking").exists()
    for i in range(5):
        outbox.put({"op": "epoch", "i": i, "x": float("nan")})
    first = outbox.unsent(limit=2)
    assert [w["i"] for _, w in first] == [0, 1]
    outbox.mark_sent(first[-1][0])
    outbox.close()
    # a driver killed in the middle of a write leaves half a line: it never happened
    with open(tmp_path / "tracking" / "outbox.jsonl", "a") as handle:
        handle.write('{"op": "epoch", "i"')

    again = Outbox(tmp_path / "tracking")  # the next process
    assert again.count() == 3 and [w["i"] for _, w in again.unsent()] == [2, 3, 4]
    again.put({"op": "epoch", "i": 5})
    writes = again.unsent()
    assert [w["i"] for _, w in writes] == [2, 3, 4, 5]
    again.mark_sent(writes[-1][0])
    assert again.count() == 0 and (tmp_path / "tracking" / "outbox.jsonl").stat().st_size == 0  # emptied


# -- sending -----------------------------------------------------------------------------


def served_queue(tmp_path, experiment, caplog):
    """(port, uri, console lines, queue, invocation id) for a server to come on a free port."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    return port, uri, Lines(caplog), TrackingQueue(tmp_path / "sweep", uri, experiment), uuid.uuid4().hex


@pytest.mark.slow
def test_writes_queued_while_the_server_is_down_are_sent_once_it_answers(tmp_path, caplog):
    port, uri, lines, queue, invocation = served_queue(tmp_path, "outage", caplog)
    queue.put(StartParent(invocation, "outage 1", {"trials": 1}, {}))
    queue.put(StartTrial(invocation, "key-a", "kl tau=4", {"tau": 4.0}, {}))
    epochs(queue, "key-a", 1, 3)
    queue.put(EndTrial("key-a", TrialStatus.COMPLETED))
    queue.put(EndParent(invocation, "FINISHED"))
    assert not queue.send(timeout=30) and queue.unsent() == 7
    assert len(lines) == 1 and lines[0].startswith(f"tracking is behind: MLflow at {uri} does not answer")
    assert str(tmp_path / "sweep" / "tracking" / "outbox.jsonl") in lines[0]
    queue.close()

    outbox = tmp_path / "sweep" / "tracking" / "outbox.jsonl"
    written = outbox.read_bytes()
    with mlflow_server(tmp_path, port):
        again = TrackingQueue(tmp_path / "sweep", uri, "outage")  # the next run, or sync
        assert again.send(timeout=120) and again.unsent() == 0
        client = MlflowClient(uri)
        run = client.get_run(again.run_id("key-a"))
        assert run.info.status == "FINISHED" and run.data.tags[STATUS_TAG] == "completed"
        assert run.data.tags[PARENT_TAG] == again.parent_id(invocation)
        assert client.get_run(again.parent_id(invocation)).info.status == "FINISHED"
        assert steps(client, run.info.run_id) == [(1, 0.1), (2, 0.2), (3, 0.3)]

        # sending the same writes again (a driver killed before it recorded them as sent) changes nothing
        outbox.write_bytes(written)
        (tmp_path / "sweep" / "tracking" / "outbox.sent").write_text("0")
        replay = TrackingQueue(tmp_path / "sweep", uri, "outage")
        assert replay.unsent() == 7 and replay.send(timeout=120)
        runs = client.search_runs([run.info.experiment_id])
        assert len(runs) == 2  # the parent and the trial, once each
        assert steps(client, run.info.run_id) == [(1, 0.1), (2, 0.2), (3, 0.3)]


@pytest.mark.slow
def test_a_server_killed_mid_sweep_holds_nothing_up_and_is_caught_up_with(tmp_path, caplog):
    port, uri, lines, queue, invocation = served_queue(tmp_path, "killed", caplog)
    with mlflow_server(tmp_path, port) as proc:
        queue.put(StartParent(invocation, "killed 1", {}, {}))
        queue.start()
        queue.put(StartTrial(invocation, "key-a", "a", {"seed": 0}, {}))
        epochs(queue, "key-a", 1, 2)
        wait_for(lambda: queue.unsent() == 0)
        end_group(proc)  # the tracking server dies
        # the sweep goes on: every write returns at once and is kept
        epochs(queue, "key-a", 3, 5)
        queue.put(EndTrial("key-a", TrialStatus.COMPLETED))
        queue.put(StartTrial(invocation, "key-b", "b", {"seed": 1}, {}))
        epochs(queue, "key-b", 1, 2)
        wait_for(lambda: any(line.startswith("tracking is behind") for line in lines))
        assert queue.unsent() > 0
    with mlflow_server(tmp_path, port):  # back, with the same store
        wait_for(lambda: any(line.startswith("tracking caught up") for line in lines))
        queue.put(EndTrial("key-b", TrialStatus.DIVERGED))
        queue.put(EndParent(invocation, "FINISHED"))
        assert queue.stop(timeout=60)
        assert [line.split(":")[0] for line in lines] == ["tracking is behind", "tracking caught up"]
        client = MlflowClient(uri)
        a, b = client.get_run(queue.run_id("key-a")), client.get_run(queue.run_id("key-b"))
        assert (a.info.status, b.info.status, b.data.tags[STATUS_TAG]) == ("FINISHED", "FINISHED", "diverged")
        assert steps(client, a.info.run_id) == [(e, e / 10) for e in range(1, 6)]
        assert steps(client, b.info.run_id) == [(1, 0.1), (2, 0.2)]


def test_a_write_mlflow_refuses_is_skipped_and_the_rest_is_sent(tmp_path, caplog):
    uri = default_tracking_uri(tmp_path)
    lines = Lines(caplog)
    queue = TrackingQueue(tmp_path / "sweep", uri, "refused")
    invocation = uuid.uuid4().hex
    queue.put(StartParent(invocation, "p", {}, {}))
    queue.put(StartTrial(invocation, "gone", "gone", {}, {}))
    queue.put(StartTrial(invocation, "kept", "kept", {}, {}))
    assert queue.send(timeout=60)
    client = MlflowClient(uri)
    client.delete_run(queue.run_id("gone"))  # deleted by hand while the sweep runs
    epochs(queue, "gone", 1, 1)
    epochs(queue, "kept", 1, 2)
    assert queue.send(timeout=60) and queue.unsent() == 0
    assert len(lines) == 1 and lines[0].startswith("MLflow refused a write (epoch gone)") and "skipped" in lines[0]
    assert steps(client, queue.run_id("kept")) == [(1, 0.1), (2, 0.2)]


def test_starting_runs_is_idempotent_per_invocation(tmp_path):
    uri = default_tracking_uri(tmp_path)
    first = SweepTracker(uri, "idempotent")
    parent = first.start_parent("p", {"a": 1}, {}, invocation="inv-1")
    run = first.start_trial("k", "k", {"seed": 1}, {}, invocation="inv-1")
    first.end_trial(run, TrialStatus.COMPLETED)
    second = SweepTracker(uri, "idempotent")  # the same writes sent again by a later process
    assert second.start_parent("p", {"a": 1}, {}, invocation="inv-1") == parent
    assert second.start_trial("k", "k", {"seed": 1}, {}, invocation="inv-1") == run
    assert second.find_trial_run("k") == run and second.find_parent("inv-1") == parent
    # a later invocation opens a parent of its own and a new run for a finished trial
    assert second.start_parent("p", {}, {}, invocation="inv-2") != parent
    assert second.start_trial("k", "k", {"seed": 1}, {}, invocation="inv-2") != run
    client = MlflowClient(uri)
    assert len(client.search_runs([first.experiment_id], f"tags.`{KEY_TAG}` = 'k'")) == 2


def _create_store(uri: str, name: str, barrier: threading.Barrier) -> None:
    barrier.wait()
    SweepTracker(uri, name)


def test_processes_creating_the_sqlite_store_at_once_all_succeed(tmp_path):
    uri = default_tracking_uri(tmp_path)
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(3)
    workers = [context.Process(target=_create_store, args=(uri, f"sweep-{i}", barrier)) for i in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    names = {e.name for e in MlflowClient(uri).search_experiments()}
    assert {"sweep-0", "sweep-1", "sweep-2"} <= names
    assert not (tmp_path / ".locks").exists()  # the creation lock leaves nothing behind


@pytest.fixture(autouse=True)
def _no_client_retries(monkeypatch):
    """The queue sets these for the driver; set here so that each test starts the same way."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
