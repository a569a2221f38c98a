"""Node-local copies of stored folders: what trials memory-map when the store is an object store.

An object store cannot be memory-mapped, so a teacher-logit cache kept there
(:mod:`kd_tune.teachers.logit_cache`) is downloaded to a folder on the node's own disk and mapped
from there. :class:`LocalCopies` keeps those copies, one per stored folder, shared by
every trial on the node: the first trial that needs one downloads it, under a file lock
of the node, while the others wait for it and then use the same copy. Each file is
checked against the sha256 its record names before the copy is used (a mismatch
removes the copy and raises :class:`CopyError` naming the stored file's URI), so a
stored folder is read and verified once per node, however many trials use it.

Where (:func:`default_local_cache`): ``$KD_TUNE_LOCAL_CACHE``, else
``$XDG_CACHE_HOME/kd-tune``, else ``~/.cache/kd-tune`` (``--local-cache`` in sweeps).
Layout under that folder::

    copies/<store>/<key>/          the copy: the stored folder's files
    copies/<store>/<key>/.copy.json  its record, written last (a copy with one is complete):
                                   the stored folder's URI, key, each file's sha256, bytes,
                                   downloads (times it was downloaded), reuses (times a
                                   fetch found it ready), built (made here by the node that
                                   built the stored folder, not downloaded), fetched_at,
                                   last_used (UTC ISO times)
    copies/<store>/.<key>.lock     held (exclusive flock) while the copy is fetched or evicted
    copies/<store>/.<key>.use      held shared (flock) by each process that uses the copy

``<store>`` is the first 16 hex digits of the sha256 of the stored folder's parent URI
(``s3://bucket/prefix/teacher_logits``), so two stores' keys never meet. A copy whose
record names other checksums than a fetch asks for (the stored folder was built again)
is replaced; processes still mapping the old files keep them until they unmap them
(Linux keeps removed files that are mapped).

Bound: :attr:`LocalCopies.max_bytes` (``$KD_TUNE_LOCAL_CACHE_MAX_BYTES``, default 50 GB).
After each download the least recently used complete copies that no process uses (no
shared ``.use`` lock) are removed until the copies fit; copies in use are never removed,
so the bound can be exceeded while they are. ``python -m kd_tune.local_copies list``
shows the copies (URI, key, size, last use, downloads, reuses) and ``prune
[--keep-bytes N]`` removes unused ones, least recently used first, until N bytes remain.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kd_tune.core.clock import utc_iso
from kd_tune.core.hashing import KEY_LENGTH, file_sha256, sha256_hex
from kd_tune.storage.atomic import write_text
from kd_tune.storage.location import Storage
from kd_tune.storage.locks import locked, open_locked

ENV_FOLDER = "KD_TUNE_LOCAL_CACHE"
ENV_MAX_BYTES = "KD_TUNE_LOCAL_CACHE_MAX_BYTES"
DEFAULT_MAX_BYTES = 50 * 10**9
RECORD = ".copy.json"
_SIZES = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


class CopyError(RuntimeError):
    """A stored folder could not be copied to this node whole and intact (the message names its URI)."""


def default_local_cache() -> Path:
    """The node-local folder of copies: ``$KD_TUNE_LOCAL_CACHE``, ``$XDG_CACHE_HOME/kd-tune`` or
    ``~/.cache/kd-tune``."""
    if os.environ.get(ENV_FOLDER):
        return Path(os.environ[ENV_FOLDER]).expanduser().absolute()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser().absolute() / "kd-tune"
    return Path.home() / ".cache" / "kd-tune"


def parse_bytes(text: str | int) -> int:
    """``"50G"``, ``"500M"``, ``"1.5T"``, ``"1234"`` (decimal units) as a count of bytes."""
    if isinstance(text, int):
        return text
    value = str(text).strip().upper().removesuffix("B")
    unit = value[-1:] if value[-1:] in _SIZES and not value[-1:].isdigit() else ""
    try:
        count = float(value[: len(value) - len(unit)]) * _SIZES[unit]
    except ValueError:
        raise ValueError(f"{text!r} is not a size in bytes (e.g. 50G, 500M, 1234)") from None
    if count < 0:
        raise ValueError(f"{text!r}: a size cannot be negative")
    return int(count)


def _default_max_bytes() -> int:
    return parse_bytes(os.environ[ENV_MAX_BYTES]) if os.environ.get(ENV_MAX_BYTES) else DEFAULT_MAX_BYTES


@dataclass(frozen=True)
class Copy:
    """One complete copy (see the module docstring for its record's fields)."""

    folder: Path
    uri: str
    key: str
    bytes: int
    downloads: int
    reuses: int
    built: int
    fetched_at: str
    last_used: str


class LocalCopies:
    """The node-local copies kept under ``folder`` (default :func:`default_local_cache`), at most
    ``max_bytes`` of them not in use (see the module docstring)."""

    def __init__(self, folder: str | os.PathLike | None = None, *, max_bytes: int | str | None = None):
        self.folder = Path(folder).expanduser().absolute() if folder is not None else default_local_cache()
        self.max_bytes = _default_max_bytes() if max_bytes is None else parse_bytes(max_bytes)

    def __repr__(self) -> str:
        return f"LocalCopies({str(self.folder)!r})"

    @property
    def copies_dir(self) -> Path:
        return self.folder / "copies"

    def place(self, stored: Storage, key: str) -> Path:
        """Where the copy of ``stored`` (the folder of ``key``) lives on this node."""
        store = sha256_hex(stored.parent.uri, KEY_LENGTH)
        return self.copies_dir / store / key

    # -- fetching ---------------------------------------------------------------------------

    def fetch(self, stored: Storage, key: str, files: Sequence[str], sha256: Mapping[str, str]) -> Path:
        """The local folder holding ``files`` of ``stored``, downloaded once per node and checked.

        ``sha256`` maps file names to the digests they must have (files it does not name,
        e.g. a record, are not checked). A copy already here with those very digests is
        reused; one with others is replaced. Concurrent callers on this node (threads or
        processes) wait for one download and share its copy. Raises :class:`CopyError`
        naming the stored file when a download does not match its digest (the copy is
        removed), or when a file cannot be downloaded.

        The caller holds a use of the copy from here on (it is never evicted while
        used): :meth:`release` it when done, or keep it for the life of the process.
        """
        target = self.place(stored, key)
        wanted = {name: sha256[name] for name in files if name in sha256}
        with self._locked(target):
            record = _read_record(target)
            if record is not None and record.get("uri") == stored.uri and record.get("sha256") == wanted \
                    and all((target / name).is_file() for name in files):
                record["reuses"] = int(record.get("reuses", 0)) + 1
                record["last_used"] = utc_iso("microseconds")
                _write_record(target, record)
                self._use(target)
                return target
            downloads = int(record.get("downloads", 0)) if record is not None else 0
            self._download(stored, key, files, wanted, target, downloads)
            self._use(target)
        self.prune(self.max_bytes, spare={target})
        return target

    def adopt(self, stored: Storage, key: str, source: Path, sha256: Mapping[str, str]) -> Path:
        """Make the local folder ``source`` (what was just uploaded to ``stored``, built on this node)
        the copy of ``stored``, moved, not downloaded; return its place. Its files are those of ``source``."""
        target = self.place(stored, key)
        files = sorted(p.name for p in source.iterdir() if p.is_file())
        with self._locked(target), self._replacing(target) as staging:
            for name in files:
                shutil.move(source / name, staging / name)
            record = _new_record(stored, key, files, dict(sha256), staging, downloads=0)
            record["built"] = 1
            _write_record(staging, record)
        self.prune(self.max_bytes, spare={target})
        return target

    def _download(self, stored: Storage, key: str, files: Sequence[str], wanted: dict[str, str], target: Path,
                  downloads: int) -> None:
        with self._replacing(target) as staging:
            for name in files:
                try:
                    stored.download(name, staging / name)
                except OSError as err:
                    raise CopyError(f"{stored.uri_of(name)} cannot be copied to this node "
                                    f"({type(err).__name__}: {err})") from None
                if name in wanted:
                    digest = file_sha256(staging / name)
                    if digest != wanted[name]:
                        raise CopyError(f"{stored.uri_of(name)} does not hold what was written (sha256 "
                                        f"{digest[:12]}..., recorded {wanted[name][:12]}...); the local copy "
                                        f"was removed")
            _write_record(staging, _new_record(stored, key, files, wanted, staging, downloads=downloads + 1))

    @contextlib.contextmanager
    def _replacing(self, target: Path) -> Iterator[Path]:
        """A new staging folder beside ``target`` for the block to fill; then the copy at ``target``
        (of an earlier build of the stored folder, if any) is removed and the staging folder
        renamed into its place. A block that raises leaves ``target`` as it was and no staging."""
        staging = _new_staging(target.parent, target.name)
        try:
            yield staging
            self._remove(target)
            os.rename(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def staging(self, stored: Storage, key: str) -> Path:
        """A new empty local folder beside the copy of ``stored``, on the same file system, to build
        in before :meth:`adopt` (the caller removes it if it does not adopt it)."""
        parent = self.place(stored, key).parent
        parent.mkdir(parents=True, exist_ok=True)
        return _new_staging(parent, key)

    # -- use and eviction -------------------------------------------------------------------

    def hold(self, folder: Path) -> None:
        """Take one more use of the copy at ``folder`` (one :meth:`release` gives it up)."""
        _USES.acquire(Path(folder))

    def uses(self, folder: Path) -> int:
        """How many uses of the copy at ``folder`` this process holds."""
        return _USES.count(Path(folder))

    def release(self, folder: Path) -> None:
        """Give up one use of the copy at ``folder`` (from :meth:`fetch`)."""
        _USES.release(Path(folder))

    def in_use(self, folder: Path) -> bool:
        """Whether any process (this one included) uses the copy at ``folder``."""
        with locked(_side(folder, "use"), wait=False) as unused:
            return not unused

    def copies(self) -> list[Copy]:
        """Every complete copy here, least recently used first."""
        found = []
        for record_path in sorted(self.copies_dir.glob(f"*/*/{RECORD}")):
            folder = record_path.parent
            if folder.name.startswith("."):
                continue
            record = _read_record(folder)
            if record is None:
                continue
            found.append(Copy(folder, str(record.get("uri", "?")), str(record.get("key", folder.name)),
                              int(record.get("bytes", 0)), int(record.get("downloads", 0)),
                              int(record.get("reuses", 0)), int(record.get("built", 0)),
                              str(record.get("fetched_at", "")), str(record.get("last_used", ""))))
        return sorted(found, key=lambda c: (c.last_used, str(c.folder)))

    def prune(self, keep_bytes: int | None = None, *, spare: set[Path] = frozenset()) -> list[Copy]:
        """Remove complete copies not in use, least recently used first, until those left hold at
        most ``keep_bytes`` (default :attr:`max_bytes`); ``spare`` are never removed. Also removes
        what interrupted fetches left. Returns the copies removed."""
        keep = self.max_bytes if keep_bytes is None else keep_bytes
        self._remove_leftovers()
        copies = self.copies()
        total = sum(c.bytes for c in copies)
        removed = []
        for copy in copies:
            if total <= keep:
                break
            if copy.folder in spare:
                continue
            with locked(_side(copy.folder, "lock"), wait=False) as ours:
                if not ours or self.in_use(copy.folder):
                    continue
                self._remove(copy.folder)
            total -= copy.bytes
            removed.append(copy)
        return removed

    def _remove_leftovers(self) -> None:
        for staging in [*self.copies_dir.glob("*/.*.tmp"), *self.copies_dir.glob("*/.*.old")]:
            with contextlib.suppress(OSError):
                # Staging folders are written under their key's lock; a stale one was left by a
                # process that died. One older than a day is surely no longer written.
                if time.time() - staging.stat().st_mtime > 24 * 3600:
                    shutil.rmtree(staging, ignore_errors=True)

    def _use(self, folder: Path) -> None:
        _USES.acquire(folder)

    @staticmethod
    def _remove(folder: Path) -> None:
        """Remove a copy: its record first (it is incomplete at once), then it, moved aside."""
        if not folder.exists():
            return
        (folder / RECORD).unlink(missing_ok=True)
        aside = folder.parent / f".{folder.name}.{os.getpid()}.{threading.get_ident()}.old"
        os.rename(folder, aside)
        shutil.rmtree(aside, ignore_errors=True)

    @staticmethod
    def _locked(folder: Path) -> contextlib.AbstractContextManager[bool]:
        """The exclusive lock of the copy at ``folder``: other fetchers of this copy wait here."""
        folder.parent.mkdir(parents=True, exist_ok=True)
        return locked(_side(folder, "lock"))


class _Uses:
    """This process's uses of copies: one shared flock per copy, held while the count is above 0."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[Path, list[int]] = {}  # folder -> [fd, count]

    def acquire(self, folder: Path) -> None:
        with self._lock:
            entry = self._held.get(folder)
            if entry is None:
                fd = open_locked(_side(folder, "use"), shared=True)
                assert fd is not None
                entry = self._held[folder] = [fd, 0]
            entry[1] += 1

    def release(self, folder: Path) -> None:
        with self._lock:
            entry = self._held.get(folder)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] <= 0:
                os.close(entry[0])
                del self._held[folder]

    def count(self, folder: Path) -> int:
        with self._lock:
            entry = self._held.get(Path(folder))
            return entry[1] if entry else 0


_USES = _Uses()


def _new_staging(parent: Path, key: str) -> Path:
    """A new empty folder ``.<key>.<random>.tmp`` in ``parent`` (what :meth:`LocalCopies.prune` cleans up)."""
    return Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".tmp", dir=parent))


def _side(folder: Path, kind: str) -> Path:
    return folder.parent / f".{folder.name}.{kind}"


def _new_record(stored: Storage, key: str, files: Sequence[str], wanted: dict[str, str], folder: Path, *,
                downloads: int) -> dict[str, Any]:
    now = utc_iso("microseconds")
    return {"uri": stored.uri, "key": key, "files": list(files), "sha256": wanted,
            "bytes": sum((folder / name).stat().st_size for name in files), "downloads": downloads, "reuses": 0,
            "built": 0, "fetched_at": now, "last_used": now}


def _read_record(folder: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((folder / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _write_record(folder: Path, record: dict[str, Any]) -> None:
    write_text(folder / RECORD, json.dumps(record, indent=2))


# -- the command line -------------------------------------------------------------------------


def _human(count: int) -> str:
    for unit, size in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kd_tune.local_copies",
                                     description="The node-local copies of stored teacher-logit caches.")
    folder_help = f"the local copies folder (default ${ENV_FOLDER}, $XDG_CACHE_HOME/kd-tune or ~/.cache/kd-tune)"
    parser.add_argument("--folder", default=None, help=folder_help)
    # --folder before or after the command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--folder", default=argparse.SUPPRESS, help=folder_help)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", parents=[common], help="list the copies: URI, key, size, last use, downloads, reuses")
    prune = commands.add_parser("prune", parents=[common],
                                help="remove copies no process uses, least recently used first")
    prune.add_argument("--keep-bytes", default=None,
                       help=f"keep at most this much (e.g. 10G; default ${ENV_MAX_BYTES} or 50G; 0 removes every "
                            "copy not in use)")
    args = parser.parse_args(argv)
    copies = LocalCopies(args.folder)
    if args.command == "list":
        found = copies.copies()
        for copy in found:
            use = "  in use" if copies.in_use(copy.folder) else ""
            print(f"{copy.uri}  key {copy.key}  {_human(copy.bytes)}  last used {copy.last_used}  "
                  f"downloads {copy.downloads}  reuses {copy.reuses}{use}")
        print(f"{len(found)} cop{'y' if len(found) == 1 else 'ies'}, {_human(sum(c.bytes for c in found))} "
              f"in {copies.folder}")
        return 0
    try:
        keep = copies.max_bytes if args.keep_bytes is None else parse_bytes(args.keep_bytes)
    except ValueError as err:
        parser.error(str(err))
    removed = copies.prune(keep)
    for copy in removed:
        print(f"removed {copy.uri} (key {copy.key}, {_human(copy.bytes)}, last used {copy.last_used})")
    left = copies.copies()
    print(f"{len(removed)} removed, {len(left)} left ({_human(sum(c.bytes for c in left))}) in {copies.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
