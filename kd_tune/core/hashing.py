"""sha256 as kd-tune writes it: lowercase hex, of text (UTF-8), bytes or a file's contents.

Keys are the first 16 hex digits (64 bits) of a digest; checksums are whole (64 digits).
Imports nothing but the standard library.
"""
from __future__ import annotations

import hashlib
import os

KEY_LENGTH = 16  # hex digits of a short key


def sha256_hex(data: str | bytes, length: int | None = None) -> str:
    """The sha256 of ``data`` (text is encoded as UTF-8) as hex: all 64 digits, or the first ``length``."""
    digest = hashlib.sha256(data.encode("utf-8") if isinstance(data, str) else data).hexdigest()
    return digest if length is None else digest[:length]


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 (64 hex digits) of the file at ``path``, read in chunks (any size)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
