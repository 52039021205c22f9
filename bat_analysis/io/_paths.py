"""Which input files may be opened: a layout's entries stay inside the data folder, and only regular files are read.

``resolve_data_file`` turns a layout's ``file`` entry into the real path of the file it names (symbolic links
followed), refusing an absolute path, a ``..`` that climbs out of the data folder and a link whose target is
outside it (unless the caller allows files outside), a missing file, and anything that is not a regular file.
``open_regular_file`` is the one way input files (FCS files, layout sheets, files hashed for the record) are
opened: it refuses FIFOs, devices, sockets, directories and the kernel's pseudo-files (``/proc``, ``/sys``:
regular by their mode, but their size is not their content and reading some of them never ends) both before
opening and, on the open descriptor, after it, so a file swapped between the check and the open is refused
too; a FIFO is opened non-blocking, so it never hangs the caller. Refusals raise ``DataFileError``
(``kind`` missing / outside / not_regular); other operating-system errors (permissions) propagate as ``OSError``.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

from ..errors import DataFileError

__all__ = ["resolve_data_file", "open_regular_file", "OUTSIDE_HINT"]

OUTSIDE_HINT = "a file inside the data folder; to read files elsewhere, run with --allow-outside-data-dir"
_EXPECTED_FILE = "an FCS file, which is a regular file"


def _not_regular(st: os.stat_result) -> str | None:
    """Why a file of this mode is not a regular file, or None when it is one."""
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return None
    for test, what in ((stat.S_ISDIR, "a folder (directory)"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return what
    return "a special file"


def _pseudo_filesystem(statvfs: os.statvfs_result | None) -> bool:
    """Whether a file lives on a kernel pseudo-filesystem (/proc, /sys, cgroup...): one with no storage blocks."""
    return statvfs is not None and statvfs.f_blocks == 0


def _refusal(st: os.stat_result, vfs: os.statvfs_result | None) -> str | None:
    what = _not_regular(st)
    if what is not None:
        return f"is {what}, not a regular file"
    if _pseudo_filesystem(vfs):
        return "is a file of the kernel (/proc, /sys), not a regular file"
    return None


def _statvfs(target: str | int) -> os.statvfs_result | None:
    try:
        if isinstance(target, int):
            return os.fstatvfs(target) if hasattr(os, "fstatvfs") else None
        return os.statvfs(target) if hasattr(os, "statvfs") else None
    except OSError:
        return None


def open_regular_file(path: str | os.PathLike[str], *, follow_symlinks: bool = True) -> BinaryIO:
    """Open ``path`` for binary reading if it is a regular file; raise ``DataFileError`` (kind ``not_regular``)
    otherwise, without blocking. ``follow_symlinks=False`` also refuses a symbolic link in the last component
    (for a path already resolved and checked: a link put in its place afterwards is not followed).
    ``FileNotFoundError`` and other ``OSError`` propagate as ``open()`` raises them."""
    name = os.fspath(path)
    st = os.stat(name, follow_symlinks=follow_symlinks)
    why = _refusal(st, _statvfs(name) if stat.S_ISREG(st.st_mode) else None)
    if why is not None:
        raise DataFileError(why, kind="not_regular", source=str(name), expected=_EXPECTED_FILE)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(name, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_symlinks:
            raise DataFileError("is a symbolic link, not a regular file", kind="not_regular", source=str(name),
                                expected=_EXPECTED_FILE) from None
        raise
    try:
        why = _refusal(os.fstat(fd), _statvfs(fd))
        if why is not None:
            raise DataFileError(why, kind="not_regular", source=str(name), expected=_EXPECTED_FILE)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _climbs_out(entry: Path) -> bool:
    """Whether a relative entry, read as text, leaves its folder (``..`` beyond its own depth)."""
    return os.path.normpath(entry).split(os.sep)[0] == os.pardir


def resolve_data_file(data_dir: str | os.PathLike[str], entry: str | os.PathLike[str], *,
                      allow_outside: bool = False) -> Path:
    """The real path (symbolic links resolved) of the file a layout names ``entry``, relative to ``data_dir``.

    Refused with ``DataFileError`` (``detail`` and ``expected`` in a technician's words): an absolute path, an
    entry whose ``..`` climbs out of the data folder, or a link whose target is outside it (kind ``outside``;
    all three allowed with ``allow_outside``), a file that does not exist (kind ``missing``), and anything
    that is not a regular file or whose name holds a NUL character (kind ``not_regular``, see
    ``open_regular_file``). A link inside the data folder to another file inside it is followed.
    """
    folder = Path(data_dir)
    source = str(entry)
    if "\x00" in source:  # no operating system's file name holds one; os.stat would raise ValueError
        raise DataFileError("contains a NUL character, which no file name can hold", kind="not_regular",
                            source=source, expected="the name of an FCS file in the data folder")
    raw = Path(entry)
    if not allow_outside:
        if raw.is_absolute() or raw.anchor:
            raise DataFileError(f"is an absolute path, outside the data folder {folder}", kind="outside",
                                source=source, expected=OUTSIDE_HINT)
        if _climbs_out(raw):
            raise DataFileError(f"climbs out of the data folder {folder} with '..'", kind="outside",
                                source=source, expected=OUTSIDE_HINT)
    candidate = raw if raw.is_absolute() else folder / raw
    try:
        real = candidate.resolve(strict=True)
    except FileNotFoundError:
        raise DataFileError(f"not found in {folder}", kind="missing", source=source,
                            expected="an existing FCS file") from None
    except (OSError, RuntimeError) as exc:  # a link loop (RuntimeError before Python 3.13), no permission...
        raise DataFileError(f"cannot be followed to a file ({exc})", kind="not_regular", source=source,
                            expected=_EXPECTED_FILE) from None
    if not allow_outside:
        try:
            root = folder.resolve(strict=True)
        except (OSError, RuntimeError):
            raise DataFileError(f"not found: the data folder {folder} does not exist", kind="missing",
                                source=source, expected="an existing FCS file") from None
        if not real.is_relative_to(root):
            raise DataFileError(f"is a link to {real}, outside the data folder {folder}", kind="outside",
                                source=source, expected=OUTSIDE_HINT)
    try:
        st = os.stat(real)
    except OSError as exc:
        raise DataFileError(f"cannot be read ({exc.strerror or exc})", kind="not_regular", source=source,
                            expected=_EXPECTED_FILE) from None
    why = _refusal(st, _statvfs(str(real)) if stat.S_ISREG(st.st_mode) else None)
    if why is not None:
        raise DataFileError(why, kind="not_regular", source=source, expected=_EXPECTED_FILE)
    return real
