"""The record a searched sweep keeps beside its results: ``<sweep folder>/search.json``.

The driver writes it (whole or not at all) after the search and after the confirmation; the
analysis reads it to tell the search's trials from the confirmation's, for the
``search`` table and the Optuna study rebuilt from ``trials.parquet``. It holds what
was decided once and is not derived again: the space, the settings, each drawn trial
(Optuna's trial number, the trial key, the setting key of
:func:`kd_tune.core.identity.setting_key`) and the selection with its confirmation trials.
Accuracies are fractions in [0, 1]. The folder is a local path, a URI (``s3://...``) or a
:class:`~kd_tune.storage.location.Storage`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kd_tune.plan.search_space import SampledSpace
from kd_tune.storage.location import Storage, located, open_storage

RECORD_FILE = "search.json"
RECORD_FORMAT = 1


@dataclass(frozen=True)
class SearchTrial:
    """One drawn trial: Optuna's trial ``number`` (the order of drawing), its trial key and setting key."""

    number: int
    key: str
    setting: str


@dataclass(frozen=True)
class Selected:
    """A setting chosen after the search (``rank`` 1 is the best), and its confirmation.

    ``val_acc`` is the mean last-epoch validation accuracy of its completed search trials
    (``search_keys``); ``confirm_keys`` are its reruns at full epochs with new seeds.
    """

    rank: int
    setting: str
    label: str
    val_acc: float
    search_keys: tuple[str, ...]
    confirm_keys: tuple[str, ...]


@dataclass(frozen=True)
class SearchRecord:
    """A searched sweep's record (see the module docstring).

    ``settings`` are the search's settings as plain values (``num_samples``,
    ``scheduler``, ``grace_period``, ``reduction_factor``, ``search_seed``, ``seeds``,
    ``confirm_top``, ``confirm_seeds``); ``objective`` is the maximised metric.
    ``pick`` is the rank of the final pick among ``selected`` (the best mean validation
    accuracy over its confirmation seeds), None until the confirmation has ended.
    """

    sweep: str
    objective: str
    space: SampledSpace
    settings: dict[str, Any]
    trials: tuple[SearchTrial, ...]
    selected: tuple[Selected, ...] = ()
    pick: int | None = None

    def write(self, folder: str | Path | Storage) -> Path | str:
        """Write ``folder/search.json``; return it (a local Path, or its URI as a str on an object store)."""
        storage = open_storage(folder)
        storage.write_text(RECORD_FILE, json.dumps({
            "format": RECORD_FORMAT, "sweep": self.sweep, "objective": self.objective,
            "space": self.space.to_json(), "settings": self.settings,
            "trials": [vars(t) for t in self.trials],
            "selected": [{**vars(s), "search_keys": list(s.search_keys), "confirm_keys": list(s.confirm_keys)}
                         for s in self.selected],
            "pick": self.pick,
        }, indent=1))
        return located(storage, RECORD_FILE)

    @classmethod
    def read(cls, folder: str | Path | Storage) -> SearchRecord | None:
        """The record in ``folder``, or None when it has none (not a searched sweep)."""
        storage = open_storage(folder)
        if not storage.is_file(RECORD_FILE):
            return None
        data = storage.read_json(RECORD_FILE)
        if data.get("format") != RECORD_FORMAT:
            raise ValueError(f"{located(storage, RECORD_FILE)}: search record format {data.get('format')!r} is not "
                             f"{RECORD_FORMAT}")
        return cls(
            sweep=data["sweep"], objective=data["objective"], space=SampledSpace.from_json(data["space"]),
            settings=data["settings"], trials=tuple(SearchTrial(**t) for t in data["trials"]),
            selected=tuple(Selected(**{**s, "search_keys": tuple(s["search_keys"]),
                                       "confirm_keys": tuple(s["confirm_keys"])}) for s in data["selected"]),
            pick=data["pick"],
        )

    @property
    def search_keys(self) -> list[str]:
        return [t.key for t in self.trials]

    @property
    def confirm_keys(self) -> list[str]:
        return [k for s in self.selected for k in s.confirm_keys]

    @property
    def final(self) -> Selected | None:
        """The final pick (see ``pick``), or None."""
        return next((s for s in self.selected if s.rank == self.pick), None)
