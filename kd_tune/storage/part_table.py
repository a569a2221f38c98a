"""A keyed Parquet table kept as a folder of part files: appended to, never rewritten whole.

A table is a folder holding only Parquet files named ``part-<seq>-<level>.parquet``
(``seq`` a 9-digit sequence number, larger is newer; ``level`` how often its rows were
merged). Each part has the table's schema, so the folder is a Parquet data set that
``pyarrow.dataset``, pandas, DuckDB and Polars open directly. The folder is a
:class:`~kd_tune.storage.location.Storage`: a local folder or a prefix of an object store, one code
path. A part is written whole or not at all (:meth:`Storage.writer`): locally as a hidden
file (``.part-...tmp``) moved into place, on an object store as one upload that becomes
visible when complete; so a reader never sees half a part. A part is removed with
:meth:`Storage.delete`; nothing is ever renamed.

One writer (one process) appends: every :meth:`PartTable.append` writes one new part of
the rows given, so the cost of an append is the size of the rows, not of the table.
Parts are merged in tiers to keep their number small: when ``FANOUT`` parts of one level
exist, they become one part of the next level, so each row is rewritten only about
``log_FANOUT(rows)`` times in all; :meth:`PartTable.compact` merges everything into one
part (at the end of a sweep). Merges stream record batches, so memory stays bounded by
a batch, not by the table.

Exactly one row per key: a row whose key is already stored replaces the stored row.
The writer says which keys it replaces; the new part is written first and the old rows
are then removed from the older parts (each rewritten without them), so a writer killed
in between leaves two rows of a key, never none; :meth:`PartTable.check` (run by the
writer when it opens a table) keeps the newest of them, and :meth:`PartTable.read`
returns one row per key in any case.

Every page is written with a CRC checksum and verified on every read, so a damaged part
(truncated, overwritten, one flipped bit) raises :class:`DamagedPartError` naming the
file (its local path or URI) instead of returning wrong numbers.
"""
from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from kd_tune.storage.location import Storage, located, open_storage

FANOUT = 16  # parts of one level merged into one part of the next
BATCH_ROWS = 65_536  # rows per row group written and per batch read
_PART = re.compile(r"^part-(\d{9})-(\d+)\.parquet$")
_READ_TRIES = 5  # a reader racing the writer's merges lists the parts again


class DamagedPartError(ValueError):
    """A part file cannot be read back (truncated, overwritten, a checksum mismatch);
    ``path`` is its local path, or its URI (a str) on an object store."""

    def __init__(self, path: Path | str, cause: BaseException):
        self.path = path
        super().__init__(f"{path} is damaged ({type(cause).__name__}: {cause})")


@dataclass(frozen=True)
class Part:
    """One part file: its path (a local Path, or a URI str on an object store), sequence
    number (newer is larger) and merge level."""

    path: Path | str
    seq: int
    level: int

    @property
    def name(self) -> str:
        """The file's name in the table's folder."""
        return str(self.path).rsplit("/", 1)[-1]


class PartTable:
    """The part files of one keyed table in ``folder`` (see the module docstring).

    ``folder`` is a local path, a URI (``s3://bucket/prefix/table``) or a
    :class:`~kd_tune.storage.location.Storage`; :attr:`folder` is the local Path for a local folder,
    else the URI (a str), and :attr:`storage` the Storage. ``key`` names the columns that
    identify a row. Creating the object reads and writes nothing; the folder is created by
    the first append.
    """

    def __init__(self, folder: str | Path | Storage, schema: pa.Schema, key: Sequence[str]):
        self.storage = open_storage(folder)
        self.folder = located(self.storage)
        self.schema = schema
        self.key = tuple(key)
        self._own: list[Part] | None = None  # the writer's parts, listed once and kept current

    # -- reading ---------------------------------------------------------------------------

    def parts(self) -> list[Part]:
        """The table's parts, oldest first."""
        found = []
        for entry in self.storage.list():
            match = _PART.match(entry.path)
            if match and not entry.is_dir:
                found.append(Part(located(self.storage, entry.path), int(match[1]), int(match[2])))
        return sorted(found, key=lambda p: p.seq)

    def batches(self, part: Part, columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
        """The record batches of one part in the table's schema (a column the part lacks,
        written by an older version, is null); raises :class:`DamagedPartError`."""
        return self._batches(self.storage / part.name, columns)

    def read_file(self, path: str | Path | Storage, *, where: Mapping[str, Collection[Any]] | None = None
                  ) -> pa.Table:
        """One Parquet file of this table's rows (e.g. of an older layout), in the table's
        schema, one row per key; raises :class:`DamagedPartError`. ``path`` is a local
        path, a URI or the :class:`~kd_tune.storage.location.Storage` of the file (``folder / name``)."""
        file = open_storage(path)
        return _newest_per_key(_select(pa.Table.from_batches(list(self._batches(file)), self.schema), where),
                               self.key)

    def _batches(self, file: Storage, columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
        try:
            with file.open_input_file("") as source:
                reader = pq.ParquetFile(source, page_checksum_verification=True)
                present = set(reader.schema_arrow.names)
                wanted = list(columns) if columns is not None else self.schema.names
                for batch in reader.iter_batches(batch_size=BATCH_ROWS,
                                                 columns=[c for c in wanted if c in present]):
                    yield _conform(batch, pa.schema([self.schema.field(c) for c in wanted]))
        except FileNotFoundError:
            raise
        except (pa.ArrowException, OSError) as err:
            raise DamagedPartError(located(file), err) from None

    def read(self, columns: Sequence[str] | None = None, *, where: Mapping[str, Collection[Any]] | None = None
             ) -> pa.Table:
        """The table (one row per key, the newest), or the rows whose column values are
        in ``where`` (column -> allowed values); only ``columns`` (the key is added)."""
        wanted = None if columns is None else list(dict.fromkeys([*self.key, *columns]))
        schema = self.schema if wanted is None else pa.schema([self.schema.field(c) for c in wanted])
        for attempt in range(_READ_TRIES):
            try:
                pieces = [_select(pa.Table.from_batches(list(self.batches(part, wanted)), schema), where)
                          for part in self.parts()]
                break
            except FileNotFoundError:
                if attempt == _READ_TRIES - 1:
                    raise
        table = pa.concat_tables(pieces) if pieces else schema.empty_table()
        return _newest_per_key(table, self.key)

    def check(self, columns: Sequence[str] = ()) -> pa.Table:
        """Read every page of every part (checksums included) and keep only the newest row
        of each key, removing older ones from disk (a writer killed while replacing rows
        leaves two); return the key and ``columns`` of the stored rows.

        Raises :class:`DamagedPartError` naming the first part that cannot be read.
        """
        wanted = list(dict.fromkeys([*self.key, *columns]))
        schema = pa.schema([self.schema.field(c) for c in wanted])
        parts = self._parts()
        pieces = []
        for i, part in enumerate(parts):
            table = pa.Table.from_batches([b.select(wanted) for b in self.batches(part)], schema)
            pieces.append(table.append_column("_part", pa.array([i] * table.num_rows, pa.int64())))
        if not pieces:
            return schema.empty_table()
        stored = pa.concat_tables(pieces)
        newest = _newest_per_key(stored, self.key)
        if newest.num_rows < stored.num_rows:
            # Older rows of a key that a newer part holds again: each part rewritten without them.
            last = {tuple(r[c] for c in self.key): r["_part"] for r in newest.select([*self.key, "_part"]).to_pylist()}
            counts = stored.group_by(list(self.key)).aggregate([("_part", "count")])
            twice = {tuple(r[c] for c in self.key)
                     for r in counts.filter(pc.greater(counts["_part_count"], 1)).to_pylist()}
            for i, part in enumerate(parts):
                self._rewrite_without(part, {k for k in twice if last[k] != i})
        return newest.drop_columns(["_part"])

    # -- writing (one writer) --------------------------------------------------------------

    def append(self, rows: Sequence[Mapping[str, Any]] | pa.Table, replaces: Collection[tuple] = ()) -> None:
        """Store ``rows`` as a new part; ``replaces``: keys (tuples, in ``key`` order) among
        them that older parts hold, whose old rows are then removed."""
        table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(list(rows), schema=self.schema)
        if table.num_rows == 0:
            return
        new = self._write([table.to_batches(BATCH_ROWS)], level=0)
        if replaces:
            self._remove(set(replaces), keep=new)
        self._merge_full_levels()

    def compact(self) -> None:
        """Merge every part into one (nothing to do with one part or none)."""
        parts = self._parts()
        if len(parts) > 1:
            self._merge(parts, level=max(p.level for p in parts) + 1)

    # -- helpers -----------------------------------------------------------------------------

    def _key_schema(self) -> pa.Schema:
        return pa.schema([self.schema.field(c) for c in self.key])

    def _parts(self) -> list[Part]:
        if self._own is None:
            self._own = self.parts()
        return list(self._own)

    def _next_seq(self) -> int:
        parts = self._parts()
        return parts[-1].seq + 1 if parts else 1

    def _write(self, batch_lists: Iterable[Iterable[pa.RecordBatch]], level: int) -> Part:
        self.storage.makedirs()
        seq = self._next_seq()
        name = f"part-{seq:09d}-{level}.parquet"
        with self.storage.writer(name) as handle, pq.ParquetWriter(handle, self.schema,
                                                                     write_page_checksum=True) as out:
            for batches in batch_lists:
                for batch in batches:
                    out.write_batch(batch, row_group_size=BATCH_ROWS)
        part = Part(located(self.storage, name), seq, level)
        self._own = [*self._parts(), part]
        return part

    def _merge(self, parts: list[Part], level: int) -> None:
        # The merged part is written before the merged ones are removed: a writer killed in
        # between leaves duplicate rows, which check() removes, never a lost row.
        self._write((self.batches(p) for p in parts), level)
        for part in parts:
            self._unlink(part)

    def _merge_full_levels(self) -> None:
        while True:
            levels: dict[int, list[Part]] = {}
            for part in self._parts():
                levels.setdefault(part.level, []).append(part)
            full = [parts for parts in levels.values() if len(parts) >= FANOUT]
            if not full:
                return
            parts = full[0]
            self._merge(parts, parts[0].level + 1)

    def _remove(self, keys: set[tuple], keep: Part) -> None:
        for part in self._parts():
            if part.seq != keep.seq:
                self._rewrite_without(part, keys)

    def _rewrite_without(self, part: Part, keys: set[tuple]) -> int:
        """Rewrite ``part`` without the rows of ``keys``; return how many it dropped."""
        if not keys:
            return 0
        stored = pa.Table.from_batches(list(self.batches(part, self.key)), self._key_schema())
        first = pc.is_in(stored[self.key[0]], value_set=pa.array(sorted({k[0] for k in keys}),
                                                                  self.schema.field(self.key[0]).type))
        candidates = pc.indices_nonzero(first).to_pylist()
        if not candidates:
            return 0
        rows = stored.take(candidates).to_pylist()
        drop = {i for i, row in zip(candidates, rows) if tuple(row[c] for c in self.key) in keys}
        if not drop:
            return 0
        table = pa.Table.from_batches(list(self.batches(part)), self.schema)
        kept = table.filter(pa.array([i not in drop for i in range(table.num_rows)]))
        if kept.num_rows == 0:
            self._unlink(part)
            return len(drop)
        # A whole new version of the part in place of the old one (an object store's PUT
        # replaces the object whole; locally a file moved over it).
        with self.storage.writer(part.name) as handle:
            pq.write_table(kept, handle, row_group_size=BATCH_ROWS, write_page_checksum=True)
        return len(drop)

    def _unlink(self, part: Part) -> None:
        self.storage.delete(part.name)
        self._own = [p for p in self._parts() if p.seq != part.seq]


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """``batch`` with exactly ``schema``'s columns (missing ones null, types cast)."""
    columns = []
    for field in schema:
        if field.name in batch.schema.names:
            column = batch.column(field.name)
            columns.append(column if column.type == field.type else column.cast(field.type))
        else:
            columns.append(pa.nulls(batch.num_rows, field.type))
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _select(table: pa.Table, where: Mapping[str, Collection[Any]] | None) -> pa.Table:
    if not where:
        return table
    mask = None
    for column, values in where.items():
        test = pc.is_in(table[column], value_set=pa.array(list(values), table.schema.field(column).type))
        mask = test if mask is None else pc.and_(mask, test)
    return table.filter(mask)


def _newest_per_key(table: pa.Table, key: tuple[str, ...]) -> pa.Table:
    """One row per key: the last one (rows come oldest part first)."""
    if table.num_rows < 2:
        return table
    numbered = table.append_column("_row", pa.array(range(table.num_rows), pa.int64()))
    last = numbered.group_by(list(key), use_threads=False).aggregate([("_row", "max")])["_row_max"]
    if len(last) == table.num_rows:
        return table
    return table.take(pc.take(last, pc.sort_indices(last)))
