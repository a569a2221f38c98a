"""A small name -> object registry shared by models, data sets and losses.

    MODELS = Registry("model pattern")

    @DATASETS.register("digits", augment=False)   # decorator form: returns the function
    def load_digits(...): ...

    LOSSES.register("kl", kl_term)                # call form: returns kl_term

Conventions, the same for every registry:

* Names are non-empty strings; :meth:`Registry.names` lists them in registration order.
* Each entry may carry metadata given as keyword arguments to ``register``, read back
  with :meth:`Registry.info` (a read-only mapping).
* Registering the same object under the same name with the same metadata again is a
  no-op (importing a module twice, or re-running a notebook cell, is harmless); anything
  else under a taken name is ``ValueError("<kind> 'name' is already registered...")``,
  so an entry is never replaced by accident.
* An unknown name is ``ValueError("unknown <kind> 'name'; known: a, b, c")``, the known
  names sorted.
* :meth:`Registry.snapshot` and :meth:`Registry.restore` save and put back the whole
  registry, so tests can register entries without leaving them behind.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Generic, TypeVar, overload

T = TypeVar("T")
_ABSENT = object()  # tells a metadata key given as None from one not given at all


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registration: the object and its read-only metadata."""

    name: str
    obj: T
    info: Mapping[str, Any]


@dataclass(frozen=True)
class Snapshot(Generic[T]):
    """The entries of a registry of ``kind`` at one moment, in registration order."""

    kind: str
    entries: tuple[Entry[T], ...]


class Registry(Generic[T]):
    """Objects of one kind (models, data sets, ...) by name; see the module docstring.

    ``kind`` names the entries in error messages: ``Registry("dataset")`` reports
    ``unknown dataset 'mnist'; known: cifar10, digits``.
    """

    def __init__(self, kind: str) -> None:
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"kind must be a non-empty string, got {kind!r}")
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()!r})"

    @overload
    def register(self, name: str, obj: None = None, **info: Any) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, obj: T, **info: Any) -> T: ...

    def register(self, name: str, obj: T | None = None, **info: Any) -> T | Callable[[T], T]:
        """Register ``obj`` under ``name`` with metadata ``info``; return ``obj``.

        Without ``obj`` (``None``), return a decorator that registers what it decorates
        and returns it unchanged. Raises ValueError for an empty name or a taken one
        (see the module docstring for the re-registration rule).
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")
        if obj is None:
            def decorator(target: T) -> T:
                return self.register(name, target, **info)

            return decorator
        existing = self._entries.get(name)
        if existing is not None:
            if existing.obj is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            keys = set(existing.info) | set(info)
            changed = sorted(k for k in keys if existing.info.get(k, _ABSENT) != info.get(k, _ABSENT))
            if changed:
                # Same object, other metadata: accepting either silently would hide a bug.
                raise ValueError(
                    f"{self.kind} {name!r} is already registered with different {', '.join(changed)}"
                )
            return obj
        self._entries[name] = Entry(name, obj, MappingProxyType(dict(info)))
        return obj

    def get(self, name: str) -> T:
        """The object registered under ``name``; ValueError listing the known names if none."""
        return self._entry(name).obj

    def info(self, name: str) -> Mapping[str, Any]:
        """The read-only metadata given when ``name`` was registered (may be empty)."""
        return self._entry(name).info

    def names(self) -> list[str]:
        """Registered names in registration order."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def snapshot(self) -> Snapshot[T]:
        """The current entries; later registrations do not change it."""
        return Snapshot(self.kind, tuple(self._entries.values()))

    def restore(self, snapshot: Snapshot[T]) -> None:
        """Make the registry hold exactly the entries of ``snapshot`` again."""
        if not isinstance(snapshot, Snapshot) or snapshot.kind != self.kind:
            raise ValueError(f"not a snapshot of a {self.kind} registry: {snapshot!r}")
        self._entries = {entry.name: entry for entry in snapshot.entries}

    def _entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name is just unknown
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise ValueError(f"unknown {self.kind} {name!r}; known: {known}") from None
