"""``<storage>/<name>/teachers.parquet``: one row per teacher node a sweep used.

Every node of every teacher the sweep's distilling trials need (:mod:`kd_tune.plan.teacher_dag`):
each ensemble member, each intermediate student of a chain and the composite teacher
itself. Columns:

- ``sweep`` (str), ``teacher_key`` (str, the key in the teacher store), ``spec`` (str, the
  canonical spec of the node, e.g. ``cnn-32>cnn-8[kl:3]``), ``kind`` (str: ``ce``,
  ``undertrained``, ``sequential`` or ``ensemble``), ``architecture`` (str; an ensemble's
  members joined by ``+``);
- ``epochs_trained`` (int64; null for an ensemble, which trains nothing);
- ``train_acc``, ``test_acc`` (float64 in [0, 1]; a trained node's are those of its last
  epoch, ``train_acc`` on the augmented views it trained on; an ensemble's are those of
  its mean logits, ``train_acc`` on the unaugmented training images);
- ``seconds`` (float64, wall seconds it took to train; 0 for an ensemble; as recorded
  when the store first made it, also for a teacher a later sweep reuses).

The driver writes it (the teachers sink, after the teacher stage), rewriting the file
whole (:meth:`kd_tune.storage.location.Storage.writer`) with the rows it had and the new ones, one
per key; analysis reads it through :func:`analysis.results_io.load_teachers`. The sweep
folder is a local path, a URI (``s3://...``) or a :class:`~kd_tune.storage.location.Storage`.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from kd_tune.plan.teacher_dag import TeacherNode
from kd_tune.storage.location import Storage, located, open_storage

TEACHERS_FILE = "teachers.parquet"

TEACHERS_SCHEMA = pa.schema([
    pa.field("sweep", pa.string()),
    pa.field("teacher_key", pa.string()),
    pa.field("spec", pa.string()),
    pa.field("kind", pa.string()),
    pa.field("architecture", pa.string()),
    pa.field("epochs_trained", pa.int64()),
    pa.field("train_acc", pa.float64()),
    pa.field("test_acc", pa.float64()),
    pa.field("seconds", pa.float64()),
])


def teacher_row(sweep: str, node: TeacherNode, meta: Mapping[str, Any]) -> dict[str, Any]:
    """The row of one node, from its plan record and the store's record ``meta``."""
    metrics = meta.get("metrics", {})
    # Records written before the store kept a history hold the last epoch's number.
    epochs = (len(meta["history"]) if meta.get("history") else int(metrics["epoch"])) if node.trains else None
    return {"sweep": sweep, "teacher_key": node.key, "spec": node.spec, "kind": node.kind, "architecture": node.arch,
            "epochs_trained": epochs, "train_acc": metrics.get("train_acc"),
            "test_acc": metrics.get("test_acc"), "seconds": float(meta.get("train_seconds") or 0.0)}


def write_teachers(sweep_dir: str | Path | Storage, rows: Iterable[Mapping[str, Any]]) -> Path | str:
    """Add ``rows`` to the sweep's ``teachers.parquet`` (a row of a key already there replaces it);
    return the file (a local Path, or its URI as a str on an object store)."""
    sweep = open_storage(sweep_dir)
    by_key = {row["teacher_key"]: row for row in read_teachers(sweep)}
    by_key.update({row["teacher_key"]: dict(row) for row in rows})
    table = pa.Table.from_pylist(list(by_key.values()), schema=TEACHERS_SCHEMA)
    with sweep.writer(TEACHERS_FILE) as handle:
        pq.write_table(table, handle)
    return located(sweep, TEACHERS_FILE)


def read_teachers(sweep_dir: str | Path | Storage) -> list[dict[str, Any]]:
    """The rows of the sweep's ``teachers.parquet`` (none when it has none)."""
    table = read_teachers_table(sweep_dir)
    return table.to_pylist() if table is not None else []


def read_teachers_table(sweep_dir: str | Path | Storage) -> pa.Table | None:
    """The sweep's ``teachers.parquet`` as a table, or None when it has none."""
    sweep = open_storage(sweep_dir)
    if not sweep.is_file(TEACHERS_FILE):
        return None
    with sweep.open_input_file(TEACHERS_FILE) as source:
        return pq.read_table(source)
