"""File checksums recorded with every result (resume keys, audit trail): the SHA-256 of a file's bytes."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import BinaryIO

from .io._paths import open_regular_file

#: bytes read and hashed at a time by :func:`sha256_reading`: each piece is hashed while it is in the cache
_PIECE = 1 << 16


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


def sha256_reading(fh: BinaryIO, start: int, into: memoryview) -> tuple[int, str]:
    """SHA-256 of every byte of ``fh`` (read from its beginning, as lowercase hex), storing its bytes
    ``start .. start + len(into)`` in ``into`` on the way; returns (bytes stored, digest).

    One pass: each piece is hashed as it is read, while it is in the cache, so a reader that needs a
    segment of the file gets it and the digest :func:`file_sha256` gives without reading the file twice.
    Fewer bytes are stored when the file ends before ``start + len(into)``.
    """
    h = hashlib.sha256()
    fh.seek(0)
    scratch = memoryview(bytearray(_PIECE))
    left = start
    while left > 0:  # before the segment: hashed only
        n = fh.readinto(scratch[: min(_PIECE, left)])  # type: ignore[attr-defined]
        if not n:
            return 0, h.hexdigest()
        h.update(scratch[:n])
        left -= n
    stored = 0
    while stored < len(into):
        n = fh.readinto(into[stored: min(stored + _PIECE, len(into))])  # type: ignore[attr-defined]
        if not n:
            return stored, h.hexdigest()
        h.update(into[stored: stored + n])
        stored += n
    while True:  # after it: hashed only
        n = fh.readinto(scratch)  # type: ignore[attr-defined]
        if not n:
            return stored, h.hexdigest()
        h.update(scratch[:n])
