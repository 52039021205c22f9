"""File checksums recorded with every result (resume keys, audit trail)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, as lowercase hex.

    Read through a small buffer: hashing a memory map would be ~10% faster but counts every page of
    the file in the worker's resident memory (a whole event matrix more at the peak).
    """
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
