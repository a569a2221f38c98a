"""Locks on any storage: ``flock`` on a local folder, a renewed lease on an object store.

:func:`storage_lock` gives the lock named ``name`` of a :class:`~kd_tune.storage.location.Storage`,
kept in its ``.locks/`` folder: a :class:`~kd_tune.storage.locks.FileLock` on a local folder or
NFS, a :class:`LeaseLock` on S3. Both have one interface (``acquire(wait=)``,
``release()``, ``previous``) and raise :class:`~kd_tune.storage.locks.LockBusy` naming the holder.

An object store has no ``flock`` and no process that could hold one, so the lock is an
object made by a conditional create (``If-None-Match: *``: of two processes making it at
once, the store lets exactly one succeed). Its holder renews it every
``LEASE_S / 3`` seconds by a conditional overwrite (``If-Match`` its last version). A
lock not renewed for ``LEASE_S`` seconds, judged by the store's own clock (the object's
last-modified time against the ``Date`` of the store's answer, so the nodes' clocks do
not matter), belongs to a process that died: the next process takes it over by a
conditional overwrite of that stale version, which again only one can win. A holder on
this host whose process is gone is recognised at once, without waiting for the lease.
A holder that finds its lock taken over (it could not renew for a whole lease) says so;
work it does after that is no longer exclusive.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading

from kd_tune.storage.location import Storage
from kd_tune.storage.locks import LOCKS_DIR, FileLock, Holder, LockBusy, hold, lock_path, retry

LEASE_S = 30.0  # a lock not renewed for this long (store clock) is stale

log = logging.getLogger(__name__)


def storage_lock(storage: Storage, name: str, purpose: str = "") -> FileLock | LeaseLock:
    """The lock ``name`` for the things under ``storage`` (``<storage>/.locks/<name>.lock``)."""
    if storage.is_local:
        return FileLock(lock_path(storage.local_path, name), purpose)
    return LeaseLock(storage, f"{LOCKS_DIR}/{name}.lock", purpose)


def storage_held(storage: Storage, name: str, purpose: str) -> contextlib.AbstractContextManager[FileLock | LeaseLock]:
    """Hold lock ``name`` of ``storage`` for the block, waiting as long as another process holds
    it (:func:`~kd_tune.storage.locks.hold`)."""
    return hold(storage_lock(storage, name, purpose))


class LeaseLock:
    """An exclusive lock on object ``rel`` of ``storage``, held by a renewed lease (module docstring)."""

    def __init__(self, storage: Storage, rel: str, purpose: str = "", *, lease_s: float = LEASE_S):
        self.storage = storage
        self.rel = rel
        self.purpose = purpose
        self.lease_s = lease_s
        self.previous: Holder | None = None
        self.lost = False  # set when another process took the lock over from this holder
        self._etag: str | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None
        self._writes = storage.conditional()

    @property
    def path(self) -> str:
        return self.storage.uri_of(self.rel)

    def acquire(self, *, wait: float = 0.0) -> LeaseLock:
        """Take the lock; when it is held, try again for ``wait`` seconds (``math.inf``: until
        it is free), saying once whom it waits for, then raise :class:`LockBusy`."""
        retry(self._try, wait=wait, purpose=self.purpose)
        self._start_renewing()
        return self

    def release(self) -> None:
        """Give the lock up (remove its object, unless another process took it over)."""
        if self._etag is None:
            return
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        with contextlib.suppress(Exception):  # a lease left behind expires by itself
            self._writes.delete(self.rel, if_match=self._etag)
        self._etag = None

    def __enter__(self) -> LeaseLock:
        return self.acquire() if self._etag is None else self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _record(self) -> bytes:
        return json.dumps({**Holder.this_process(self.purpose).__dict__, "lease_s": self.lease_s}).encode()

    def _try(self) -> bool:
        """Take the lock if it is free or stale (False: released meanwhile, try again); raise
        :class:`LockBusy` naming its holder when it is held."""
        record = self._record()
        etag = self._writes.put(self.rel, record, if_none_match=True)
        if etag is not None:
            self.previous, self._etag = None, etag
            return True
        current = self._writes.get(self.rel)
        if current is None:
            return False  # released meanwhile
        body, stale_etag, modified, now = current
        holder, lease = _parse(body)
        if not self._stale(holder, lease, now - modified):
            raise LockBusy(self.path, holder or Holder("?", 0, "?", "unreadable lock record"))
        etag = self._writes.put(self.rel, record, if_match=stale_etag)
        if etag is None:  # another process took it over first
            raise LockBusy(self.path, holder or Holder("?", 0, "?", "unreadable lock record"))
        self.previous, self._etag = holder, etag
        return True

    def _stale(self, holder: Holder | None, lease: float, age: float) -> bool:
        """Whether a lock last renewed ``age`` seconds ago (by the store's clock) is left behind."""
        if holder is not None and holder.host == socket.gethostname() and not _alive(holder.pid):
            return True
        return age > lease

    def _start_renewing(self) -> None:
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew, name=f"kd-tune lease {self.rel}", daemon=True)
        self._renewer.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                etag = self._writes.put(self.rel, self._record(), if_match=self._etag)
            except Exception:  # a passing fault: the next renewal tries again, well within the lease
                continue
            if etag is None:
                self.lost = True
                log.warning("the lock %s was taken over by another process (this one could not renew it for "
                            "%g s); what this process does now is no longer exclusive", self.path, self.lease_s)
                return
            self._etag = etag


def _parse(body: bytes) -> tuple[Holder | None, float]:
    try:
        data = json.loads(body)
        lease = float(data.pop("lease_s", LEASE_S))
        return Holder(**data), lease
    except (ValueError, TypeError):
        return None, LEASE_S


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
