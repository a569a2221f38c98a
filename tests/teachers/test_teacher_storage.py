"""Teachers, teacher-logit caches and noisy labels on an object store: a real S3-compatible server
(moto, auth on), against the same things stored in a local folder.

A teacher stored to s3:// loads back bitwise the one stored locally, and a damaged one is named
by its URI; two processes that need one teacher on S3 train it once (the lease lock); a cache is
uploaded with meta.json last (a failed build leaves none: the cache is absent), mapped from a
node-local copy downloaded once per node, and an object that does not hold what was written fails
its checksum at fetch and is built again; noisy labels come back from the bucket as stored.
"""
from __future__ import annotations

import gc
import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kd_tune.core.config import RunConfig
from kd_tune.data import load_dataset
from kd_tune.data.base import DataError
from kd_tune.data.noise import label_hash, load_noisy_labels, noise_file_name, read_noisy_labels, save_noisy_labels
from kd_tune.plan.planner import plan_trial
from kd_tune.storage.local_copies import RECORD, LocalCopies
from kd_tune.storage.location import open_storage
from kd_tune.sweep.context import WorkerContext, local_cache_of, location
from kd_tune.sweep.trainable import BUILT_ELSEWHERE, build_logits_task
from kd_tune.teachers.logit_cache import CacheError, LogitCache, ensure_cached, intact_meta
from kd_tune.teachers.store import DamagedTeacher, TeacherStore
from kd_tune.train.evaluation import predict_logits
from kd_tune.train.trainer import load_data

ROOT = Path(__file__).resolve().parents[2]
CONFIG = RunConfig(student="cnn-4", teacher="cnn-8", epochs=2, teacher_epochs=1, val_size=100, loss="mse",
                   device="cpu", threads=1)
NOISE = dict(val_size=100, noise_type="symmetric", noise_rate=0.3, noise_seed=4)


@pytest.fixture(scope="module")
def s3m(s3):
    """The store's credentials and endpoint in this process's environment, for the whole module."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in s3.env({}).items():
            patch.setenv(name, value)
        patch.delenv("AWS_SESSION_TOKEN", raising=False)
        patch.delenv("AWS_PROFILE", raising=False)
        yield s3


def bucket_prefix(uri: str) -> str:
    """``s3://bucket/a/b`` -> ``a/b``."""
    return uri.split("/", 3)[3]


def objects(s3m, uri: str) -> list[str]:
    """The objects under ``uri``, relative to it, but for folder markers (pyarrow leaves an empty
    ``folder/`` object where it deleted a folder's last file)."""
    return [k for k in s3m.keys(bucket_prefix(uri)) if k and not k.endswith("/")]


@pytest.fixture(scope="module")
def stores(s3m, tmp_path_factory):
    """(trial, data, local store, S3 store, S3 uri): one teacher trained into each store."""
    trial = plan_trial(CONFIG)
    local = TeacherStore(tmp_path_factory.mktemp("teachers"))
    local.train(trial.teachers[-1])
    uri = s3m.uri()
    remote = TeacherStore(f"{uri}/teachers")
    remote.train(trial.teachers[-1])
    return trial, load_data(CONFIG), local, remote, uri


@pytest.fixture(scope="module")
def local_cache(stores, tmp_path_factory):
    trial, data, local, _, _ = stores
    cache = LogitCache(tmp_path_factory.mktemp("logits"))
    ensure_cached(trial, data, local, cache)
    return cache


# -- teachers ------------------------------------------------------------------------------


def test_a_teacher_stored_on_s3_loads_back_bitwise_the_one_stored_locally(stores, s3m):
    trial, data, local, remote, uri = stores
    key = trial.teacher_key
    assert s3m.keys(bucket_prefix(f"{uri}/teachers/{key}")) == ["measurements.npz", "meta.json", "progress.json",
                                                                 "teacher.pt"]
    assert str(remote.root) == f"{uri}/teachers" and str(remote.weights_path(key)) == f"{uri}/teachers/{key}/teacher.pt"
    assert remote.has(key) and remote.has_measurements(key) and remote.verify(key) is None
    assert remote.progress(key) == local.progress(key)
    ours, theirs = remote.meta(key), local.meta(key)
    assert ours["weights_sha256"] == theirs["weights_sha256"]
    assert ours["metrics"]["test_acc"] == theirs["metrics"]["test_acc"]
    stored = torch.load(io.BytesIO(remote.storage.read_bytes(f"{key}/teacher.pt")), weights_only=True)["model"]
    on_disk = torch.load(local.weights_path(key), weights_only=True)["model"]
    assert stored.keys() == on_disk.keys() and all(torch.equal(stored[k], on_disk[k]) for k in stored)
    model, record = remote.load(key, data)
    assert record == ours and not model.training
    cpu = torch.device("cpu")
    assert torch.equal(predict_logits(model, data.test.images, data.normalize, device=cpu),
                       predict_logits(local.load(key, data)[0], data.test.images, data.normalize, device=cpu))
    a, b = remote.measurements(key), local.measurements(key)
    assert np.array_equal(a.features, b.features) and np.array_equal(a.values["tld"], b.values["tld"])
    assert a.summary["ece"] == b.summary["ece"]
    assert remote.measurements("0" * 16) is None and remote.progress("0" * 16) is None


def copy_teacher(store: TeacherStore, key: str, uri: str) -> TeacherStore:
    copy = TeacherStore(uri)
    for name in ("meta.json", "teacher.pt", "measurements.npz"):
        copy.storage.write_bytes(f"{key}/{name}", store.storage.read_bytes(f"{key}/{name}"))
    return copy


def test_a_damaged_teacher_in_the_bucket_is_named_by_its_uri_and_never_loaded(stores, s3m):
    trial, data, _, remote, _ = stores
    key = trial.teacher_key
    uri = f"{s3m.uri()}/teachers"
    copy = copy_teacher(remote, key, uri)
    assert copy.verify(key) is None
    weights = f"{uri}/{key}/teacher.pt"
    raw = remote.storage.read_bytes(f"{key}/teacher.pt")
    client = s3m.client()
    client.put_object(Bucket=s3m.bucket, Key=bucket_prefix(weights), Body=raw[: len(raw) // 2])  # truncated
    problem = copy.verify(key)
    assert problem is not None and problem.startswith(f"teacher file {weights} cannot be read")
    with pytest.raises(DamagedTeacher, match=f"teacher file {weights} cannot be read"):
        copy.load(key, data)

    state = torch.load(io.BytesIO(raw), weights_only=True)
    state["model"] = {k: v + 1 if v.is_floating_point() else v for k, v in state["model"].items()}
    altered = io.BytesIO()
    torch.save(state, altered)
    client.put_object(Bucket=s3m.bucket, Key=bucket_prefix(weights), Body=altered.getvalue())
    problem = copy.verify(key)
    assert problem is not None and problem.startswith(f"teacher file {weights} holds other weights than its "
                                                      "meta.json records")
    with pytest.raises(DamagedTeacher, match="holds other weights"):
        copy.load(key, data)
    copy.discard(key)
    assert not copy.has(key) and objects(s3m, f"{uri}/{key}") == ["measurements.npz"]


BUILD = """
import json, sys
from kd_tune.sweep.context import WorkerContext
from kd_tune.sweep.trainable import BUILT_ELSEWHERE, train_teacher_task
sys.stdin.readline()  # start together
context = WorkerContext(teachers_dir=sys.argv[1], logits_dir=sys.argv[1], noise_dir=None)
record = train_teacher_task(context, json.loads(sys.argv[2]))
print(json.dumps({"elsewhere": bool(record.get(BUILT_ELSEWHERE)), "created_at": record["created_at"]}))
"""


def test_two_processes_needing_one_teacher_on_s3_train_it_once(s3m, tmp_path):
    uri = f"{s3m.uri()}/teachers"
    node = plan_trial(CONFIG).teachers[-1]
    env = {**s3m.env(), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", BUILD, uri, json.dumps(node.to_dict())], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = [p.communicate("go\n", timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    records = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert sorted(r["elsewhere"] for r in records) == [False, True]  # one trained it, the other waited and found it
    assert records[0]["created_at"] == records[1]["created_at"] == TeacherStore(uri).meta(node.key)["created_at"]
    assert [k for k in s3m.keys(bucket_prefix(uri)) if k.endswith(".lock")] == []  # the lease was given back


# -- teacher-logit caches ------------------------------------------------------------------------


def test_a_cache_built_into_s3_is_uploaded_meta_last_and_mapped_from_one_local_copy_per_node(
        stores, local_cache, s3m, tmp_path):
    trial, data, local, remote, _ = stores
    key = trial.cache_key
    uri = f"{s3m.uri()}/teacher_logits"
    node_a = LogitCache(uri, local_cache=tmp_path / "node-a")
    teacher, _ = remote.load(trial.teacher_key, data)

    # A build that fails after its arrays were uploaded (its meta.json cannot be written) leaves
    # no meta.json, so the cache is absent, and removes what it uploaded.
    with pytest.raises(TypeError):
        node_a.build(key, teacher, data, trial.config, extra={"not json": object()})
    assert not node_a.has(key) and objects(s3m, uri) == []
    assert intact_meta(trial, remote, node_a) is None
    with pytest.raises(FileNotFoundError, match=f"no teacher-logit cache {key}"):
        node_a.load(key)

    meta = ensure_cached(trial, data, remote, node_a)
    assert objects(s3m, f"{uri}/{key}") == ["meta.json", "test.npy", "train.npy", "val.npy"]
    assert meta == node_a.meta(key) and meta["files"] == local_cache.meta(key)["files"]
    assert meta["teacher_weights_sha256"] == local.weights_digest(trial.teacher_key)
    # The node that built it keeps what it uploaded as its copy: it downloads nothing.
    built = node_a.copies.place(node_a.storage / key, key)
    record = json.loads((built / RECORD).read_text())
    assert (record["built"], record["downloads"]) == (1, 0)

    # Another node: its trials map one copy, downloaded once however many trials use it.
    node_b = LogitCache(uri, local_cache=tmp_path / "node-b")
    assert node_b.problem(key, teacher_sha256=remote.weights_digest(trial.teacher_key)) is None
    expected = local_cache.load(key)
    for _ in range(3):
        logits = LogitCache(uri, local_cache=tmp_path / "node-b").load(key)
        for split in ("train", "val", "test"):
            assert torch.equal(getattr(logits, split), getattr(expected, split))
    copy = node_b.local_folder(key)
    node_b.copies.release(copy)
    assert copy.is_relative_to(tmp_path / "node-b" / "copies")
    assert sorted(p.name for p in copy.iterdir()) == [RECORD, "test.npy", "train.npy", "val.npy"]
    record = json.loads((copy / RECORD).read_text())
    assert (record["downloads"], record["reuses"], record["uri"]) == (1, 4, f"{uri}/{key}")
    # Mapped, so in use: never evicted while a trial holds the arrays.
    assert node_b.copies.in_use(copy)
    del logits
    gc.collect()
    assert not node_b.copies.in_use(copy)
    assert [c.key for c in LocalCopies(tmp_path / "node-b").prune(0)] == [key] and not copy.exists()


def test_a_cache_object_that_does_not_hold_what_was_written_fails_at_fetch_and_is_built_again(
        stores, local_cache, s3m, tmp_path, caplog):
    trial, data, _, remote, _ = stores
    key = trial.cache_key
    uri = f"{s3m.uri()}/teacher_logits"
    ensure_cached(trial, data, remote, LogitCache(uri, local_cache=tmp_path / "node-a"))
    train = f"{uri}/{key}/train.npy"
    raw = bytearray(open_storage(uri).read_bytes(f"{key}/train.npy"))
    raw[-7] ^= 0x55  # one payload byte: the header and size still match meta.json
    s3m.client().put_object(Bucket=s3m.bucket, Key=bucket_prefix(train), Body=bytes(raw))

    node_c = LogitCache(uri, local_cache=tmp_path / "node-c")
    problem = node_c.problem(key)
    assert problem is not None and problem.startswith(f"teacher-logit cache file {train} does not hold what was "
                                                      "written (sha256 ")
    with pytest.raises(CacheError, match=f"teacher-logit cache file {train} does not hold what was written"):
        node_c.load(key)
    assert node_c.copies.copies() == [] and not node_c.copies.place(node_c.storage / key, key).exists()

    caplog.set_level(logging.WARNING, logger="kd_tune.teachers.logit_cache")
    meta = ensure_cached(trial, data, remote, node_c)
    assert warnings_of(caplog) == [f"{problem}; computing it again"]
    assert meta["files"] == local_cache.meta(key)["files"]
    assert torch.equal(node_c.load(key).train, local_cache.load(key).train)


def test_the_cache_task_builds_into_s3_once_and_then_finds_it(stores, local_cache, s3m, tmp_path):
    trial, _, _, remote, _ = stores
    uri = f"{s3m.uri()}/teacher_logits"
    context = WorkerContext(teachers_dir=location(remote.storage), logits_dir=location(uri), noise_dir=None,
                            local_cache=str(tmp_path / "node"))
    built = build_logits_task(context, trial.to_dict())
    assert BUILT_ELSEWHERE not in built and built["files"] == local_cache.meta(trial.cache_key)["files"]
    found = build_logits_task(context, trial.to_dict())
    assert found == {**built, BUILT_ELSEWHERE: True}
    [copy] = LocalCopies(tmp_path / "node").copies()  # the builder's copy, used by the second call
    assert (copy.built, copy.downloads, copy.reuses) == (1, 0, 1)
    assert [k for k in s3m.keys(bucket_prefix(uri)) if k.endswith(".lock")] == []


def test_the_stage_hands_workers_paths_as_strings_and_object_stores_as_storage(s3m, tmp_path):
    assert location(tmp_path) == str(tmp_path) and location(str(tmp_path)) == str(tmp_path) and location(None) is None
    where = location(f"{s3m.uri()}/teachers")
    assert not isinstance(where, str) and str(where).startswith("s3://") and where.endpoint == s3m.endpoint
    assert location(open_storage(tmp_path)) == str(tmp_path)

    class Options:
        local_cache = tmp_path / "copies"

    assert local_cache_of(Options()) == str(tmp_path / "copies") and local_cache_of(object()) is None


# -- noisy labels ----------------------------------------------------------------------------------


def test_noisy_labels_persisted_to_s3_reload_identical(s3m, tmp_path):
    uri = f"{s3m.uri()}/noise"
    first = load_dataset("digits", **NOISE, noise_dir=uri)
    name = noise_file_name("digits", "symmetric", 0.3, 4, 100, 0)
    assert objects(s3m, uri) == [name]
    local = load_dataset("digits", **NOISE, noise_dir=str(tmp_path))
    assert np.array_equal(first.train.labels.numpy(), local.train.labels.numpy())
    assert first.noise_hash == local.noise_hash
    stored, meta = read_noisy_labels(f"{uri}/{name}")
    assert np.array_equal(stored, first.train.labels.numpy()) and meta["label_hash"] == first.noise_hash

    # A reload reads the stored file (other, validly hashed labels come back), through a URI or a Storage.
    meta.pop("label_hash"), meta.pop("num_labels")
    replaced = (stored + 1) % 10
    save_noisy_labels(open_storage(uri) / name, replaced, **meta)
    for where in (uri, open_storage(uri)):
        again = load_dataset("digits", **NOISE, noise_dir=where)
        assert np.array_equal(again.train.labels.numpy(), replaced) and again.noise_hash == label_hash(replaced)

    raw = open_storage(uri).read_bytes(name)
    s3m.client().put_object(Bucket=s3m.bucket, Key=bucket_prefix(f"{uri}/{name}"), Body=raw[: len(raw) // 2])
    with pytest.raises(DataError, match=f"noisy-label file '{uri}/{name}' is not a valid .npz"):
        load_dataset("digits", **NOISE, noise_dir=uri)
    with pytest.raises(DataError, match="does not exist"):
        load_noisy_labels(f"{uri}/nothing.npz")


def warnings_of(caplog) -> list[str]:
    """The warnings the teacher-logit cache said."""
    return [r.getMessage() for r in caplog.records
            if r.name == "kd_tune.teachers.logit_cache" and r.levelno == logging.WARNING]
