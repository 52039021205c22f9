"""File checksums recorded with every result (resume keys, audit trail)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from .io._paths import open_regular_file


def file_sha256(path: str | Path, *, follow_symlinks: bool = True) -> str:
    """SHA-256 of a file's bytes, as lowercase hex.

    Only a regular file is read (``open_regular_file``): a FIFO, a device or a /proc file raises
    ``DataFileError`` at once instead of hanging or hashing endless bytes; a missing or unreadable file raises
    ``OSError``; ``follow_symlinks=False`` refuses a link (for a path already resolved and checked).
    Read through a small buffer: hashing a memory map would be ~10% faster but counts every page of the
    file in the worker's resident memory (a whole event matrix more at the peak).
    """
    with open_regular_file(path, follow_symlinks=follow_symlinks) as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
