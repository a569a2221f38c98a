"""Per-sample measurements and penultimate features of a sweep: append-only Parquet part files.

Two data sets in the sweep folder, each a folder of part files that ``pyarrow.dataset``
and ``pandas.read_parquet`` read as one table::

    <sweep>/samples.parquet/part-trial-<trial key>.parquet      one per measured trial
    <sweep>/samples.parquet/part-teacher-<teacher key>.parquet  one per teacher
    <sweep>/features.parquet/part-...                           the same names

A part is written once, whole or not at all (:meth:`kd_tune.storage.location.Storage.writer`:
locally a temporary name starting with ``.``, which readers skip, then a rename; on an
object store one upload, visible when complete), and never grows: a sweep of thousands
of trials adds one small file per trial and never rewrites what is there. Writing a part
again (a trial run again after a killed driver) replaces it whole. The sweep folder is a
local folder or an object store (a path, a URI or a :class:`~kd_tune.storage.location.Storage`).

``samples.parquet`` columns: ``role`` (``trial`` or ``teacher``), ``key`` (the trial key
or the teacher key), ``index`` (int32, test-set index), ``label`` (int32, test label),
``logit_distance``, ``logit_mean_gap``, ``feature_norm``, ``entropy``, ``tld``
(float32; see :mod:`kd_tune.train.measurements`), ``correct`` (bool). One row per test sample.

``features.parquet`` columns: ``role``, ``key``, ``index``, ``label`` as above and
``features`` (list<float32>, the penultimate features), for the test samples of the
sweep's feature classes only.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from kd_tune.storage.location import Storage, located, open_storage
from kd_tune.train.measurements import PER_SAMPLE, EndMeasurements

SAMPLES_DIR = "samples.parquet"
FEATURES_DIR = "features.parquet"
ROLES = ("trial", "teacher")

_KEYS = [pa.field("role", pa.string()), pa.field("key", pa.string()), pa.field("index", pa.int32()),
         pa.field("label", pa.int32())]
SAMPLES_SCHEMA = pa.schema([*_KEYS, *(pa.field(name, pa.float32()) for name in PER_SAMPLE),
                            pa.field("correct", pa.bool_())])
FEATURES_SCHEMA = pa.schema([*_KEYS, pa.field("features", pa.list_(pa.float32()))])


def part_name(role: str, key: str) -> str:
    """The file name of the part of one trial (``role="trial"``) or teacher."""
    if role not in ROLES:
        raise ValueError(f"role {role!r} is not one of {', '.join(ROLES)}")
    return f"part-{role}-{key}.parquet"


def write_parts(sweep_dir: str | Path | Storage, role: str, key: str, measured: EndMeasurements
                ) -> tuple[Path | str, Path | str]:
    """Write the samples part and the features part of one trial or teacher; return their paths
    (local Paths, or URIs as str on an object store).

    ``measured`` holds the features to keep (:meth:`EndMeasurements.of_classes`).
    """
    sweep = open_storage(sweep_dir)
    name = part_name(role, key)
    n = len(measured.labels)
    samples = {"role": [role] * n, "key": [key] * n, "index": np.arange(n, dtype=np.int32),
               "label": measured.labels.astype(np.int32),
               **{q: measured.values[q].astype(np.float32) for q in PER_SAMPLE},
               "correct": measured.values["correct"].astype(bool)}
    kept = measured.feature_index
    width = measured.features.shape[1] if measured.features.ndim == 2 else 0
    flat = pa.array(measured.features.astype(np.float32).reshape(-1), type=pa.float32())
    offsets = pa.array(np.arange(len(kept) + 1, dtype=np.int32) * width, type=pa.int32())
    features = {"role": [role] * len(kept), "key": [key] * len(kept), "index": kept.astype(np.int32),
                "label": measured.labels[kept].astype(np.int32),
                "features": pa.ListArray.from_arrays(offsets, flat)}
    return (_write(sweep, f"{SAMPLES_DIR}/{name}", pa.table(samples, schema=SAMPLES_SCHEMA)),
            _write(sweep, f"{FEATURES_DIR}/{name}", pa.table(features, schema=FEATURES_SCHEMA)))


def _write(sweep: Storage, rel: str, table: pa.Table) -> Path | str:
    # Measured floats do not repeat: a dictionary only adds bytes (about 40% per float
    # column). Keys and labels repeat; test indices count up (delta-packed to almost nothing).
    with sweep.writer(rel) as handle:
        pq.write_table(table, handle, use_dictionary=["role", "key", "label"],
                       column_encoding={"index": "DELTA_BINARY_PACKED"})
    return located(sweep, rel)
