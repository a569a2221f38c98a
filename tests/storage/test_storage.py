"""The storage layer, on a local folder and on a real S3-compatible server (moto, auth on):
writes whole or absent, conditional creates won once, clear one-line refusals in seconds,
no credential in a pickle, and locks that hold across processes on either."""
from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time

import pytest

from kd_tune.storage.location import Storage, StorageError, open_storage
from kd_tune.storage.locks import LockBusy
from kd_tune.storage.store_lock import LeaseLock, storage_lock


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    if request.param == "local":
        return open_storage(tmp_path / "store")
    s3 = request.getfixturevalue("s3_env")
    return open_storage(s3.uri())


def test_bytes_round_trip_and_listing(storage):
    storage.write_bytes("a/b.bin", b"\x00\x01" * 1000)
    storage.write_json("a/c.json", {"x": 1})
    (storage / "a").write_text("d/e.txt", "hello")
    assert storage.read_bytes("a/b.bin") == b"\x00\x01" * 1000
    assert storage.read_json("a/c.json") == {"x": 1}
    assert (storage / "a" / "d").read_text("e.txt") == "hello"
    assert storage.is_file("a/b.bin") and storage.is_dir("a") and not storage.exists("nothing")
    assert [(e.path, e.size) for e in storage.list("a")] == [("b.bin", 2000), ("c.json", 8), ("d", None)]
    assert [e.path for e in storage.list("a", recursive=True) if not e.is_dir] == ["b.bin", "c.json", "d/e.txt"]
    assert storage.list("nothing") == []
    storage.delete("a/b.bin")
    storage.delete("a/b.bin")  # twice is fine
    assert not storage.exists("a/b.bin")
    storage.delete_dir("a")
    assert not storage.exists("a/c.json")
    with pytest.raises(FileNotFoundError):
        storage.read_bytes("a/c.json")


def test_a_write_that_fails_leaves_nothing(storage):
    storage.write_bytes("kept.bin", b"old")
    with pytest.raises(RuntimeError), storage.writer("kept.bin") as out:
        out.write(b"new, half")
        raise RuntimeError("the writer died")
    with pytest.raises(RuntimeError), storage.writer("never.bin") as out:
        out.write(b"x" * 100_000)
        raise RuntimeError("the writer died")
    assert storage.read_bytes("kept.bin") == b"old"
    assert not storage.exists("never.bin")
    assert [e.path for e in storage.list(recursive=True) if not e.is_dir] == ["kept.bin"]


def test_upload_and_download_are_whole_files(storage, tmp_path):
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(3 << 20))
    storage.upload(source, "x/big.bin")
    copy = storage.download("x/big.bin", tmp_path / "copies" / "big.bin")
    assert copy.read_bytes() == source.read_bytes()
    assert storage.size("x/big.bin") == 3 << 20
    assert not [p for p in (tmp_path / "copies").iterdir() if p.name != "big.bin"]  # no temporary left


def test_a_conditional_create_is_won_exactly_once(storage):
    wins: list[int] = []
    barrier = threading.Barrier(6)

    def create(who: int) -> None:
        barrier.wait()
        if storage.create_exclusive("once", str(who).encode()):
            wins.append(who)

    threads = [threading.Thread(target=create, args=(who,)) for who in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(wins) == 1
    assert storage.read_bytes("once") == str(wins[0]).encode()


def test_a_pickled_storage_carries_no_credential(s3_env):
    storage = open_storage(s3_env.uri())
    storage.write_bytes("probe", b"1")  # the file system exists and is in use
    blob = pickle.dumps(storage)
    assert s3_env.secret_key.encode() not in blob and s3_env.access_key.encode() not in blob
    assert pickle.loads(blob).read_bytes("probe") == b"1"  # credentials come from the environment
    assert pickle.loads(blob).endpoint == s3_env.endpoint


def test_bad_locations_are_one_line_within_seconds(s3, monkeypatch):
    for name, value in s3.env({}).items():
        monkeypatch.setenv(name, value)
    assert open_storage(s3.uri()).problem() is None
    cases = {
        "wrong secret": ({"AWS_SECRET_ACCESS_KEY": "wrong"}, s3.uri(), "refused the credentials"),
        "unknown key": ({"AWS_ACCESS_KEY_ID": "AKIANOSUCHKEY"}, s3.uri(), "refused the credentials"),
        "no bucket": ({}, "s3://no-such-bucket/x", "bucket 'no-such-bucket' does not exist"),
        "no server": ({"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, s3.uri(), "does not answer"),
    }
    for what, (env, uri, expected) in cases.items():
        with monkeypatch.context() as m:
            for name, value in env.items():
                m.setenv(name, value)
            started = time.monotonic()
            problem = open_storage(uri).problem()
            assert problem is not None and expected in problem, what
            assert time.monotonic() - started < 10, what
            assert "\n" not in problem and s3.secret_key not in problem and "wrong" not in problem, what
    with monkeypatch.context() as m:
        m.delenv("AWS_ACCESS_KEY_ID")
        m.delenv("AWS_SECRET_ACCESS_KEY")
        m.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        m.setenv("AWS_CONFIG_FILE", "/nonexistent")
        m.setenv("AWS_EC2_METADATA_DISABLED", "true")
        assert "no credentials" in open_storage(s3.uri()).problem()


def test_uris_kd_tune_cannot_use_are_refused(tmp_path):
    with pytest.raises(StorageError, match="no credentials in the URI"):
        open_storage("s3://key:secret@bucket/x")
    with pytest.raises(StorageError, match="names no bucket"):
        open_storage("s3:///x")
    with pytest.raises(StorageError, match="--storage-endpoint"):
        open_storage("s3://bucket/x?endpoint_override=h")
    with pytest.raises(StorageError, match="http:// or https://"):
        open_storage("s3://bucket/x", endpoint="127.0.0.1:9000")
    (tmp_path / "file").write_text("")
    assert "is a file" in open_storage(tmp_path / "file").problem()
    assert "cannot be created" in open_storage(tmp_path / "file" / "below").problem()
    with pytest.raises(StorageError, match="only on local folders and S3"):
        Storage("gs://bucket/x").conditional()


def test_locks_exclude_and_name_the_holder(storage):
    first = storage_lock(storage, "sweep-a", "sweep a").acquire()
    with pytest.raises(LockBusy) as busy:
        storage_lock(storage, "sweep-a", "sweep a").acquire()
    assert busy.value.holder.pid == os.getpid() and busy.value.holder.purpose == "sweep a"
    with storage_lock(storage, "sweep-b", "another sweep"):
        pass
    first.release()
    again = storage_lock(storage, "sweep-a", "sweep a").acquire()
    assert again.previous is None
    again.release()


HOLD = """
import sys, time
from kd_tune.storage.location import open_storage
from kd_tune.storage.store_lock import storage_lock
storage_lock(open_storage(sys.argv[1]), "sweep-k", "a test holder").acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_a_lease_of_a_dead_process_on_this_host_is_taken_over_at_once(s3_env):
    storage = open_storage(s3_env.uri())
    holder = subprocess.Popen([sys.executable, "-c", HOLD, storage.uri], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockBusy):
            storage_lock(storage, "sweep-k").acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = storage_lock(storage, "sweep-k", "next").acquire()
    assert lock.previous.pid == holder.pid and lock.previous.purpose == "a test holder"
    lock.release()


def test_a_lease_is_renewed_while_held_and_stale_once_not(s3_env, caplog):
    caplog.set_level(logging.INFO, logger="kd_tune")
    storage = open_storage(s3_env.uri())
    held = LeaseLock(storage, ".locks/k.lock", "renewing", lease_s=1.5).acquire()
    time.sleep(3.5)  # more than two leases: renewals keep it
    with pytest.raises(LockBusy):
        LeaseLock(storage, ".locks/k.lock", lease_s=1.5).acquire()
    held.release()
    # A holder on another host that stopped renewing: free once its lease has passed. Its lease
    # (4 s) outlasts the seconds a loaded machine may take to get from writing it to waiting.
    record = {"host": "elsewhere", "pid": 1, "started_at": "2026-01-01T00:00:00+00:00", "purpose": "gone",
              "lease_s": 4.0}
    assert storage.create_exclusive(".locks/k.lock", json.dumps(record).encode())
    started = time.monotonic()
    lock = LeaseLock(storage, ".locks/k.lock", lease_s=1.5).acquire(wait=30)
    waited = [r.getMessage() for r in caplog.records if r.name == "kd_tune.storage.locks"]
    assert len(waited) == 1 and "held by pid 1 on elsewhere" in waited[0] and 0.5 < time.monotonic() - started < 20
    assert lock.previous.host == "elsewhere"
    lock.release()
    assert not storage.exists(".locks/k.lock")
