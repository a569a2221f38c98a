"""File locks: the one place kd-tune calls ``flock``.

:func:`flock` locks an open file shared or exclusive, waiting or not; :func:`locked` and
:func:`open_locked` lock a file by path (made if missing, and kept: node-local side files
such as a copy's ``.lock`` and ``.use`` files, or a checksum marker's lock); :class:`FileLock`
is the named lock of the storage below.

:class:`FileLock` locks on the storage: one driver per sweep name, one builder per
teacher and per teacher-logit cache, one creator of the default MLflow store. A lock is
a file held with an exclusive ``flock``. The kernel releases it when its holder exits, how
ever it exits, so a crashed driver never leaves a lock held: its file stays behind with
the holder's record, and the next process takes the lock over and says whose it was.
(On NFS, Linux forwards ``flock`` to the server's lock manager, which frees the locks of
a lost client after its grace period.) The file records the holder (host, pid, start
time, what for) so that a process refused can name it.

Locks live in a ``.locks`` folder: ``<storage>/.locks/`` for sweeps and the MLflow store,
``<store root>/.locks/`` for teachers and caches. A released lock's file is removed, and
so are the folders the lock created, so a refused or failed start leaves nothing behind.
A process that waits for a lock says once whom it waits for (logger ``kd_tune.storage.locks``,
level INFO).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Self, TypeVar

from kd_tune.core.clock import utc_iso

LOCKS_DIR = ".locks"
POLL_S = 0.5  # how often a waiting process tries again

log = logging.getLogger(__name__)


def flock(fd: int, *, shared: bool = False, wait: bool = True) -> bool:
    """Lock the open file ``fd``: shared (many holders) or exclusive (one); with ``wait``
    until it is granted (True), else at once or not at all (False: another process holds
    a lock that conflicts). The lock lasts until ``fd`` is closed (or the process ends)."""
    operation = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    try:
        fcntl.flock(fd, operation if wait else operation | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def open_locked(path: str | Path, *, shared: bool = False, wait: bool = True) -> int | None:
    """Open ``path`` (made if missing; its folder must exist) and :func:`flock` it; return the
    file descriptor that holds the lock until closed, or None when ``wait`` is False and the
    lock is held elsewhere. The file is never removed."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    if flock(fd, shared=shared, wait=wait):
        return fd
    os.close(fd)
    return None


@contextlib.contextmanager
def locked(path: str | Path, *, shared: bool = False, wait: bool = True) -> Iterator[bool]:
    """Hold :func:`open_locked` ``path`` for the block; yields whether the lock is held
    (always True with ``wait``; False: held elsewhere, and the block runs without it)."""
    fd = open_locked(path, shared=shared, wait=wait)
    try:
        yield fd is not None
    finally:
        if fd is not None:
            os.close(fd)


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) a lock: host name, process id, start time (UTC, ISO) and purpose."""

    host: str
    pid: int
    started_at: str
    purpose: str = ""

    @classmethod
    def this_process(cls, purpose: str) -> Holder:
        """The record of this process taking a lock now, for ``purpose``."""
        return cls(socket.gethostname(), os.getpid(), utc_iso("seconds"), purpose)

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, started {self.started_at}"


class LockBusy(RuntimeError):
    """The lock is held by another process (``holder``, None when its record is unreadable)."""

    def __init__(self, path: Path | str, holder: Holder | None):
        self.path = path
        self.holder = holder
        super().__init__(f"{path} is held by {self.holder_text}")

    @property
    def holder_text(self) -> str:
        return self.holder.describe() if self.holder else "another process"


def lock_path(folder: str | Path, name: str) -> Path:
    """The file of lock ``name`` for the things under ``folder``: ``<folder>/.locks/<name>.lock``."""
    return Path(folder) / LOCKS_DIR / f"{name}.lock"


def retry(attempt: Callable[[], bool], *, wait: float, purpose: str) -> None:
    """Call ``attempt`` until it takes a lock (True; False: try again at once), for at most
    ``wait`` seconds (``math.inf``: until it is free) while it raises :class:`LockBusy`,
    saying once whom it waits for; then raise that :class:`LockBusy`."""
    deadline = time.monotonic() + wait
    told = False
    while True:
        try:
            if attempt():
                return
            continue
        except LockBusy as busy:
            if time.monotonic() >= deadline:
                raise
            if not told:
                log.info("waiting for %s, held by %s", purpose or busy.path, busy.holder_text)
                told = True
        time.sleep(POLL_S)


class FileLock:
    """An exclusive lock on ``path`` (see the module docstring); ``purpose`` goes in its record."""

    def __init__(self, path: str | Path, purpose: str = ""):
        self.path = Path(path)
        self.purpose = purpose
        self.previous: Holder | None = None  # the record a dead holder left, when taken over
        self._fd: int | None = None
        self._created: list[Path] = []

    def acquire(self, *, wait: float = 0.0) -> FileLock:
        """Take the lock; when it is held, try again for ``wait`` seconds (``math.inf``:
        until it is free), saying once whom it waits for, then raise :class:`LockBusy`."""
        try:
            retry(self._try, wait=wait, purpose=self.purpose)
        except LockBusy:
            self._remove_created()
            raise
        return self

    def release(self) -> None:
        """Give the lock up and remove its file (and the folders it created, when empty)."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)  # closing releases the flock
        self._fd = None
        self._remove_created()

    def __enter__(self) -> FileLock:
        return self.acquire() if self._fd is None else self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _try(self) -> bool:
        """Take the lock if it is free (False: its file was replaced meanwhile, try again)."""
        try:
            self._make_parents()
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:
            # A holder releasing meanwhile removed the ``.locks`` folder it had created
            # (between our check of the folder and our open): make it again.
            return False
        if not flock(fd, wait=False):
            holder = _read_holder(fd)
            os.close(fd)
            raise LockBusy(self.path, holder)
        try:
            same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            # The holder released and removed this file between our open and our flock;
            # the lock now lives in a new file (or none).
            os.close(fd)
            return False
        self.previous = _read_holder(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(Holder.this_process(self.purpose).__dict__).encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return True

    def _make_parents(self) -> None:
        missing = []
        folder = self.path.parent
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        for folder in reversed(missing):
            with contextlib.suppress(FileExistsError):
                folder.mkdir()
                self._created.append(folder)

    def _remove_created(self) -> None:
        for folder in reversed(self._created):
            with contextlib.suppress(OSError):
                folder.rmdir()
        self._created = []


def _read_holder(fd: int) -> Holder | None:
    try:
        data = json.loads(os.pread(fd, 4096, 0) or b"null")
        return Holder(**data) if isinstance(data, dict) else None
    except (OSError, ValueError, TypeError):
        return None


class Lock(Protocol):
    """What :func:`hold` needs of a lock (:class:`FileLock`, or a lease on an object store)."""

    def acquire(self, *, wait: float = 0.0) -> Self: ...

    def release(self) -> None: ...


L = TypeVar("L", bound=Lock)


@contextlib.contextmanager
def hold(lock: L) -> Iterator[L]:
    """Hold ``lock`` for the block, waiting as long as another process holds it (and saying
    once whom it waits for)."""
    lock.acquire(wait=math.inf)
    try:
        yield lock
    finally:
        lock.release()


def held(path: str | Path, purpose: str) -> contextlib.AbstractContextManager[FileLock]:
    """:func:`hold` the :class:`FileLock` at ``path``."""
    return hold(FileLock(path, purpose))
