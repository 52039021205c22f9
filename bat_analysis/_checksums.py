"""File checksums recorded with every result (resume keys, audit trail): the SHA-256 of a file's bytes."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import BinaryIO

from .io._paths import open_regular_file

#: bytes read and hashed at a time by :func:`read_into_sha256`: each piece is hashed while it is in the cache
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


def read_into_sha256(fh: BinaryIO, into: memoryview, digest: "hashlib._Hash | None" = None) -> tuple[int, str]:
    """Read ``fh`` to its end into ``into`` and return (bytes stored, SHA-256 of every byte read, hex).

    The bytes are hashed piece by piece as they are read (one pass over them, each piece still in the
    cache), so a caller that keeps the file's bytes gets the digest :func:`file_sha256` gives for the same
    file without reading it twice. ``digest``: a SHA-256 already fed with the bytes before ``fh``'s position.
    Bytes beyond ``into``'s length (a file that grew since its size was taken) are hashed, not stored.
    """
    h = digest if digest is not None else hashlib.sha256()
    at, size = 0, len(into)
    while at < size:
        n = fh.readinto(into[at: min(at + _PIECE, size)])  # type: ignore[attr-defined]
        if not n:
            return at, h.hexdigest()
        h.update(into[at: at + n])
        at += n
    while True:  # the file grew: its digest is still that of every byte
        rest = fh.read(_PIECE)
        if not rest:
            return at, h.hexdigest()
        h.update(rest)
