"""File locks on the storage: one driver per sweep name, one builder per teacher and per
teacher-logit cache, one creator of the default MLflow store.

A lock is a file held with ``flock``. The kernel releases it when its holder exits, how
ever it exits, so a crashed driver never leaves a lock held: its file stays behind with
the holder's record, and the next process takes the lock over and says whose it was.
(On NFS, Linux forwards ``flock`` to the server's lock manager, which frees the locks of
a lost client after its grace period.) The file records the holder (host, pid, start
time, what for) so that a process refused can name it.

Locks live in a ``.locks`` folder: ``<storage>/.locks/`` for sweeps and the MLflow store,
``<store root>/.locks/`` for teachers and caches. A released lock's file is removed, and
so are the folders the lock created, so a refused or failed start leaves nothing behind.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

LOCKS_DIR = ".locks"
POLL_S = 0.5  # how often a waiting process tries again


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) a lock: host name, process id, start time (UTC, ISO) and purpose."""

    host: str
    pid: int
    started_at: str
    purpose: str = ""

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, started {self.started_at}"


class LockBusy(RuntimeError):
    """The lock is held by another process (``holder``, None when its record is unreadable)."""

    def __init__(self, path: Path, holder: Holder | None):
        self.path = path
        self.holder = holder
        who = holder.describe() if holder else "another process"
        super().__init__(f"{path} is held by {who}")


def lock_path(folder: str | Path, name: str) -> Path:
    """The file of lock ``name`` for the things under ``folder``: ``<folder>/.locks/<name>.lock``."""
    return Path(folder) / LOCKS_DIR / f"{name}.lock"


class FileLock:
    """An exclusive lock on ``path`` (see the module docstring); ``purpose`` goes in its record."""

    def __init__(self, path: str | Path, purpose: str = ""):
        self.path = Path(path)
        self.purpose = purpose
        self.previous: Holder | None = None  # the record a dead holder left, when taken over
        self._fd: int | None = None
        self._created: list[Path] = []

    def acquire(self, *, wait: float = 0.0, on_wait: Callable[[Holder | None], None] | None = None) -> FileLock:
        """Take the lock; when it is held, try again for ``wait`` seconds (``math.inf``:
        until it is free), calling ``on_wait(holder)`` once, then raise :class:`LockBusy`."""
        deadline = time.monotonic() + wait
        told = False
        while True:
            try:
                if self._try():
                    return self
                continue  # the file changed under us: try again at once
            except LockBusy as busy:
                if time.monotonic() >= deadline:
                    self._remove_created()
                    raise
                if on_wait is not None and not told:
                    on_wait(busy.holder)
                    told = True
            time.sleep(POLL_S)

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
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise LockBusy(self.path, holder) from None
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
        record = Holder(socket.gethostname(), os.getpid(), datetime.now(UTC).isoformat(timespec="seconds"),
                        self.purpose)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record.__dict__).encode(), 0)
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


@contextlib.contextmanager
def held(path: str | Path, purpose: str, *, log: Callable[[str], None] | None = None) -> Iterator[FileLock]:
    """Hold lock ``path`` for the block, waiting as long as another process holds it
    (``log`` says once whom it waits for)."""
    def waiting(holder: Holder | None) -> None:
        if log is not None:
            log(f"waiting for {purpose}, held by {holder.describe() if holder else 'another process'}")

    lock = FileLock(path, purpose).acquire(wait=float("inf"), on_wait=waiting)
    try:
        yield lock
    finally:
        lock.release()
