"""Saving and loading training state files: atomic writes, safe loads."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from kd_tune.storage.atomic import atomic_write


def save_state(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` with ``torch.save`` atomically: a crash never leaves half a file."""
    with atomic_write(path) as handle:
        torch.save(state, handle)
    return Path(path)


def load_state(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a state file with ``weights_only=True`` (no arbitrary code runs on load)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    return torch.load(path, map_location=map_location, weights_only=True)
