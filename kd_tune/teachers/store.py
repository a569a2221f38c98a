"""The teacher store: each distinct teacher node trained once, kept on disk under its key.

Layout under the store root (``<storage>/teachers`` in sweeps)::

    <key>/teacher.pt   weights and config (kd_tune.teachers.training format); none for an ensemble
    <key>/meta.json    key, kind, spec, architecture, source keys, the run that trained it,
                       final metrics, epoch history, training seconds, time stamp, sha256 of
                       the weights (the teacher-logit cache is keyed by it), hash of the
                       training labels when they are noisy
    <key>/measurements.npz  its end-of-run test measurements (kd_tune.train.measurements), every
                       test sample's features included
    <key>/progress.json the last finished epoch while it trains (for progress lines)

Every node of a teacher DAG (:mod:`kd_tune.plan.teacher_dag`) is an entry: a CE teacher, an
under-trained one, each step of a chain (its network), and an ensemble, which holds no
weights of its own: it records its members' keys, and loading it loads them and averages
their logits (:class:`~kd_tune.teachers.training.MeanLogits`). Its ``weights_sha256`` is the
sha256 of its members' digests, in order.

``meta.json`` is written last, so a key whose ``meta.json`` exists is complete. The key
is a hash of everything that decides the trained teacher (computed once by the
planner), so every trial and every later sweep that needs the same teacher finds it.

Every read of ``teacher.pt`` is checked against the ``weights_sha256`` that ``meta.json``
recorded (:meth:`TeacherStore.load`, :meth:`TeacherStore.verify`), an ensemble's record
against its members': a truncated, replaced or altered file raises
:class:`DamagedTeacher` naming the file, never a bare zip-reader error, and is never
used. A teacher is derived data: the sweep's teacher stage discards a damaged one and
trains it again.

The root is a local (shared) folder or an object store (``s3://bucket/prefix``; a
:class:`~kd_tune.storage.location.Storage`): every file is read and written through
:class:`~kd_tune.storage.location.Storage`, whole or not at all, in the same layout. The lock of a
key (:meth:`TeacherStore.building`, one builder per key across sweeps and nodes) is a
``flock`` on a local folder and a lease on an object store (:mod:`kd_tune.storage.store_lock`).
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kd_tune.core.clock import utc_iso
from kd_tune.core.hashing import sha256_hex
from kd_tune.core.identity import weights_digest
from kd_tune.core.runtime import resolve_device
from kd_tune.core.status import TrialStatus
from kd_tune.data import Dataset
from kd_tune.plan.teacher_dag import TeacherNode
from kd_tune.storage.location import Storage, open_storage
from kd_tune.storage.store_lock import storage_held
from kd_tune.teachers.training import MeanLogits, teacher_from_state, teacher_state, train_node
from kd_tune.train.measurements import EndMeasurements
from kd_tune.train.trainer import EpochEnd, load_data, measure_model


class TeacherError(RuntimeError):
    """A teacher could not be trained (it diverged), is missing from the store or is damaged."""


class DamagedTeacher(TeacherError):
    """A stored ``teacher.pt`` cannot be read, or holds other weights than its ``meta.json`` records."""


class TeacherStore:
    """Reads and writes of a teacher store rooted at ``root``: an absolute, shared local path, or a
    :class:`~kd_tune.storage.location.Storage` or URI (``s3://...``) of an object store."""

    def __init__(self, root: str | os.PathLike | Storage):
        self.storage = open_storage(root)

    @property
    def root(self) -> Path | Storage:
        """The store's root: a local path, or the object store's :class:`~kd_tune.storage.location.Storage`."""
        return self.storage.local_path if self.storage.is_local else self.storage

    def uri(self, key: str, name: str = "") -> str:
        """The path or URI of teacher ``key``'s folder, or of its file ``name``."""
        return self.storage.uri_of(f"{key}/{name}" if name else key)

    def weights_path(self, key: str) -> Path | Storage:
        return self.root / key / "teacher.pt"

    def meta_path(self, key: str) -> Path | Storage:
        return self.root / key / "meta.json"

    def progress(self, key: str) -> dict[str, Any] | None:
        """The last epoch record of a teacher being trained (None before its first epoch)."""
        try:
            return json.loads(self.storage.read_bytes(f"{key}/progress.json"))
        except (OSError, ValueError):
            return None

    def measurements_path(self, key: str) -> Path | Storage:
        return self.root / key / "measurements.npz"

    def has_measurements(self, key: str) -> bool:
        """Whether teacher ``key``'s end-of-run test measurements are stored."""
        return self.storage.is_file(f"{key}/measurements.npz")

    def measurements(self, key: str) -> EndMeasurements | None:
        """Teacher ``key``'s end-of-run test measurements, None when the store has none
        (a teacher stored before kd-tune measured teachers: see :meth:`measure`)."""
        try:
            data = self.storage.read_bytes(f"{key}/measurements.npz")
        except FileNotFoundError:
            return None
        return EndMeasurements.load(io.BytesIO(data))

    def _save_measurements(self, key: str, measured: EndMeasurements) -> None:
        with self.storage.writer(f"{key}/measurements.npz") as out:
            measured.write(out)

    def measure(self, node: TeacherNode, *, noise_dir: str | os.PathLike | Storage | None = None) -> dict[str, Any]:
        """Measure a stored teacher that has no measurements yet; return its record."""
        data = load_data(node.run, noise_dir=noise_dir)
        model, meta = self.load(node.key, data)
        device = resolve_device(node.run.device)
        self._save_measurements(node.key, measure_model(model.to(device), data, None, device=device))
        return meta

    @contextlib.contextmanager
    def building(self, key: str) -> Iterator[Any]:
        """Hold the lock of teacher ``key`` for the block: one builder per key, across sweeps
        and nodes (``<root>/.locks/<key>.lock``: a flock, or a lease on an object store)."""
        with storage_held(self.storage, key, f"teacher {key}") as lock:
            yield lock

    def has(self, key: str) -> bool:
        """Whether teacher ``key`` is complete: its record and (but for an ensemble) its weights."""
        if not self.storage.is_file(f"{key}/meta.json"):
            return False
        return self.storage.is_file(f"{key}/teacher.pt") or _kind(self._record(key)) == "ensemble"

    def meta(self, key: str) -> dict[str, Any]:
        """The stored record of teacher ``key`` (raises :class:`TeacherError` if absent)."""
        if not self.has(key):
            raise TeacherError(f"teacher {key} is not in the store at {self.root}")
        return self._record(key)

    def _record(self, key: str) -> dict[str, Any]:
        return json.loads(self.storage.read_bytes(f"{key}/meta.json"))

    def test_acc(self, key: str) -> float | None:
        """The stored teacher's final test accuracy in [0, 1] (None if it is not stored)."""
        return self.meta(key)["metrics"].get("test_acc") if self.has(key) else None

    def weights_digest(self, key: str) -> str:
        """sha256 of teacher ``key``'s weights (recorded at training; computed for older stores)."""
        digest = self.meta(key).get("weights_sha256")
        return digest if digest else weights_digest(self._read(key)["model"])

    def load(self, key: str, data: Dataset) -> tuple[nn.Module, dict[str, Any]]:
        """Teacher ``key`` (eval mode, no gradients) for distilling on ``data``, and its record.

        An ensemble is the :class:`~kd_tune.teachers.training.MeanLogits` of its members, each
        loaded and checked. Raises :class:`DamagedTeacher` when a file is not the teacher
        its ``meta.json`` records, ValueError when the teacher does not fit ``data``.
        """
        meta = self.meta(key)
        if _kind(meta) == "ensemble":
            members = [self.load(member, data)[0] for member in meta["sources"]]
            self._check_members(key, meta)
            return MeanLogits(members).eval().requires_grad_(False), meta
        state = self._read(key)
        model, _ = teacher_from_state(state, meta["config"]["student"], meta["config"]["dataset"], data,
                                      path=self.weights_path(key))
        return model, meta

    def verify(self, key: str) -> str | None:
        """Why stored teacher ``key`` must not be used (a sentence naming its file), or None if it is intact.

        Reads the whole file and hashes its weights: about 0.06 s for WRN-28-4 (24 MB) on
        2 cores; an ensemble verifies each member.
        """
        try:
            meta = self.meta(key)
            if _kind(meta) != "ensemble":
                self._read(key)
                return None
            for member in meta["sources"]:
                problem = self.verify(member) if self.has(member) else f"its member {member} is not in the store"
                if problem is not None:
                    return f"ensemble teacher {key}: {problem}"
            self._check_members(key, meta)
        except DamagedTeacher as err:
            return str(err)
        return None

    def _check_members(self, key: str, meta: dict[str, Any]) -> None:
        """An ensemble's record names the members the store holds now (weights as when it was made)."""
        digest = members_digest([self.weights_digest(member) for member in meta["sources"]])
        if digest != meta.get("weights_sha256"):
            raise DamagedTeacher(f"ensemble teacher {self.meta_path(key)} was made from other member weights than "
                                 "the store holds now")

    def discard(self, key: str) -> None:
        """Remove teacher ``key`` from the store; ``meta.json`` goes first, so the key is incomplete at once."""
        for name in ("meta.json", "teacher.pt", "progress.json"):
            self.storage.delete(f"{key}/{name}")

    def _read(self, key: str) -> dict[str, Any]:
        """The state in ``teacher.pt``, checked against the digest ``meta.json`` records."""
        recorded = self.meta(key).get("weights_sha256")
        path = self.weights_path(key)
        try:
            # The whole file, then torch reads it from memory: one code path for a local file and an object.
            state = torch.load(io.BytesIO(self.storage.read_bytes(f"{key}/teacher.pt")), map_location="cpu",
                               weights_only=True)
            digest = weights_digest(state["model"])
        except Exception as err:  # torch's errors (zip reader, unpickler) name no file
            first = str(err).split(". ")[0]  # torch's zip error goes on for five sentences
            raise DamagedTeacher(f"teacher file {path} cannot be read ({type(err).__name__}: {first})") from None
        if recorded and digest != recorded:
            raise DamagedTeacher(f"teacher file {path} holds other weights than its meta.json records "
                                 f"(sha256 {digest[:12]}..., recorded {recorded[:12]}...)")
        return state

    def train(self, node: TeacherNode, *, noise_dir: str | os.PathLike | Storage | None = None) -> dict[str, Any]:
        """Make teacher ``node`` (its sources already stored), store it under its key and
        return its record (:func:`kd_tune.teachers.training.train_node`).

        Raises :class:`TeacherError` when its training diverges.
        """
        key, run = node.key, node.run
        data = load_data(run, noise_dir=noise_dir)
        sources = [self.load(source, data)[0] for source in node.sources]
        last = node.stop_epoch or run.epochs
        started = time.perf_counter()

        def progress(end: EpochEnd) -> None:
            record = {"epoch": int(end.metrics["epoch"]), "epochs": last, "test_acc": _finite(end.metrics["test_acc"])}
            self.storage.write_text(f"{key}/progress.json", json.dumps(record))

        result = train_node(node, data, sources, on_epoch=progress)
        seconds = time.perf_counter() - started if node.trains else 0.0
        if result.status != TrialStatus.COMPLETED:
            raise TeacherError(
                f"teacher {node.spec} ({key}) diverged at epoch {result.diverged_epoch}; "
                "lower the learning rate or check the data"
            )
        if node.trains:
            with self.storage.writer(f"{key}/teacher.pt") as out:
                torch.save(teacher_state(run, result, data), out)
            digest = weights_digest(result.model)
        else:
            digest = members_digest([self.weights_digest(source) for source in node.sources])
        self.storage.makedirs(key)
        if result.measurements is not None:
            self._save_measurements(key, result.measurements)
        meta = {
            "key": key,
            "kind": node.kind,
            "spec": node.spec,
            "arch": node.arch,
            "sources": list(node.sources),
            "stop_epoch": node.stop_epoch,
            "config": run.to_dict(),
            # NaN (metrics a teacher has no partner for) as null: meta.json stays strict JSON.
            "metrics": {k: _finite(v) for k, v in result.final.items()},
            "history": [{k: _finite(v) for k, v in epoch.items()} for epoch in result.history] if node.trains else [],
            "train_seconds": seconds,
            "weights_sha256": digest,
            # What chance accuracy is for this teacher (see at_chance).
            "num_classes": data.num_classes,
            "test_samples": len(data.test),
            "noise_hash": data.noise_hash,
            "created_at": utc_iso(),
        }
        self.storage.write_text(f"{key}/meta.json", json.dumps(meta, indent=2))
        return meta


def members_digest(digests: list[str]) -> str:
    """An ensemble's weights digest: sha256 of its members' weight digests, in order."""
    return sha256_hex("|".join(digests))


def _kind(meta: dict[str, Any]) -> str:
    # Records written before teacher specs are all CE teachers.
    return meta.get("kind", "ce")


def at_chance(meta: dict[str, Any]) -> str | None:
    """A warning when a stored teacher's test accuracy is no better than chance, else None.

    Chance is 1/K for K classes; "no better" means within three standard errors of it on
    the teacher's test set (sqrt(p(1-p)/n) for p = 1/K and n test images): 14.7% for
    digits (10 classes, 360 images), 1.3% for CIFAR-100 (10,000 images). Records written
    before K and n were kept are not judged.
    """
    acc, classes, samples = meta["metrics"].get("test_acc"), meta.get("num_classes"), meta.get("test_samples")
    if acc is None or not classes or not samples:
        return None
    chance = 1.0 / classes
    if acc > chance + 3.0 * math.sqrt(chance * (1.0 - chance) / samples):
        return None
    name = meta.get("spec", meta["config"]["student"])
    return (f"teacher {name} ({meta['key']}) is at chance: test acc {100 * acc:.2f}% "
            f"on {samples} images of {classes} classes (chance {100 * chance:.2f}%); its students learn nothing "
            "from it: check its learning rate, epochs and data")


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
