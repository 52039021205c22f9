"""Writing files: the one place where bat_analysis creates, replaces and removes files and folders.

Contract of every atomic write (:func:`atomic_write_bytes`, :func:`atomic_write_text`, :func:`atomic_open`,
:func:`atomic_path`):

* **All or nothing.** The data goes to a temporary file in the target's folder, which then replaces the
  target in one ``os.replace``. A reader, or a run killed at any moment, sees the old file or the new one,
  never half of one. On any failure the temporary is removed and the target is left as it was.
* **No links followed.** The temporary has a unique name (``.NAME.RANDOM.tmp``) and is created with
  ``O_CREAT | O_EXCL | O_NOFOLLOW``: never an existing file, never through a symbolic link planted there.
  ``os.replace`` renames onto the target's *name*: if the target is a symbolic link, the link itself is
  replaced by the new file and whatever it pointed to is left untouched.
* **Durable.** The file's data is flushed and ``fsync``-ed before the rename (and the folder after it, where
  the operating system allows), so that a power cut leaves the old file or the new one.
* **Ordinary permissions.** The file is created with mode ``0666`` masked by the process's umask, like any
  file a program creates (``tempfile.mkstemp``'s ``0600`` made outputs unreadable to colleagues on a
  shared drive).
* **Clear failures.** An ``OSError`` (disk full, permission denied, read-only drive, a link in the way)
  becomes a :class:`~bat_analysis.errors.WriteError` naming the path, the cause in plain words and what to
  do; the original error is chained as its cause.

Folders: :func:`make_dir` creates folders (refusing a symbolic link in place of a folder inside the output
folder), :func:`refuse_link` refuses a link where a file will be opened by path (the SQLite store, the lock
file), :func:`remove_path` removes a file, link or folder tree without following links, and
:func:`replace_dir` swaps a freshly written folder into place, :func:`remove_leftovers` removes the
temporaries a killed process left behind. :func:`create_new_file` writes a file that
must not exist yet (used inside a fresh folder that is swapped in as a whole).
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

from .errors import WriteError

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_BINARY = getattr(os, "O_BINARY", 0)
FILE_MODE = 0o666  # masked by the umask when the file is created
DIR_MODE = 0o777

_CAUSES: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("the disk is full",
                   "free some space on that drive (or choose another --out folder) and run the same command "
                   "again; finished work is kept"),
    errno.EDQUOT: ("your disk quota is used up",
                   "free some space within your quota (or choose another --out folder) and run the same "
                   "command again; finished work is kept"),
    errno.EACCES: ("permission denied",
                   "make the folder writable for you, or choose another --out folder"),
    errno.EPERM: ("the operation is not permitted",
                  "make the folder writable for you, or choose another --out folder"),
    errno.EROFS: ("the drive is read-only",
                  "choose an --out folder on a writable drive"),
    errno.ELOOP: ("it is a symbolic link",
                  "remove the link (bat_analysis never writes through a link in its output folder), or choose "
                  "another --out folder"),
    errno.EIO: ("an input/output error occurred (a failing disk or a lost network drive)",
                "check the drive or the network connection and run the same command again"),
    errno.ENOENT: ("a folder on the way does not exist (it was removed or renamed while writing?)",
                   "check the --out folder and run the same command again"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder",
                    "remove or rename that file, or choose another --out folder"),
    errno.EISDIR: ("a folder is in the way", "remove or rename that folder, or choose another --out folder"),
    errno.ENAMETOOLONG: ("the path is too long for the file system", "choose a shorter --out folder"),
    errno.EMFILE: ("too many files are open", "close other programs and run the same command again"),
}
if hasattr(errno, "EFBIG"):
    _CAUSES[errno.EFBIG] = ("the file is too large for the file system",
                            "choose an --out folder on a drive that allows large files")

# SQLITE_PERM, _READONLY, _IOERR, _FULL, _CANTOPEN as the errno of the same meaning
_SQLITE_ERRNO = {3: errno.EACCES, 8: errno.EROFS, 10: errno.EIO, 13: errno.ENOSPC, 14: errno.EACCES}


def is_write_failure(exc: BaseException) -> bool:
    """Whether an SQLite error means its file could not be written (disk full, read-only, permissions),
    rather than a damaged database or a mistake in a query."""
    return (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF in _SQLITE_ERRNO


def write_error(exc: BaseException, path: Path | str, *, action: str = "write") -> WriteError:
    """A :class:`WriteError` for ``exc`` (an ``OSError`` or an SQLite error) while writing ``path``."""
    if isinstance(exc, WriteError):
        return exc
    code = getattr(exc, "errno", None)
    sqlite_code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    if code is None and sqlite_code in _SQLITE_ERRNO:  # SQLite reports the OS's reason by its own codes
        code = _SQLITE_ERRNO[sqlite_code]
    if code in _CAUSES:
        cause, todo = _CAUSES[code]
        if sqlite_code == 8:
            cause = "the file or its drive is read-only"
    else:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        cause, todo = reason, "check the drive and the folder's permissions, then run the same command again"
    return WriteError(str(path), cause, todo, action=action, detail=f"{type(exc).__name__}: {exc}")


def refuse_link(path: Path | str, *, what: str = "file") -> Path:
    """Raise a :class:`WriteError` if ``path`` is a symbolic link (it will be opened by name)."""
    path = Path(path)
    if path.is_symlink():
        try:
            to = f" (to {os.readlink(path)})"
        except OSError:  # removed meanwhile: it was a link all the same
            to = ""
        raise WriteError(str(path), f"this {what} is a symbolic link{to}", _CAUSES[errno.ELOOP][1])
    return path


def make_dir(path: Path | str, *, inside: Path | str | None = None) -> Path:
    """Create folder ``path`` and its parents. With ``inside`` (e.g. the output folder), every folder below
    ``inside`` down to ``path`` must be a real folder: a symbolic link there is refused (``inside`` itself,
    the folder the user chose, may be a link)."""
    path = Path(path)
    try:
        if inside is None:
            path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            return path
        current = Path(inside)
        current.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        for part in path.relative_to(current).parts:
            current = current / part
            refuse_link(current, what="folder")
            current.mkdir(mode=DIR_MODE, exist_ok=True)
    except OSError as exc:
        raise write_error(exc, path, action="create the folder") from exc
    return path


def _tmp_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")


def _create_exclusive(path: Path) -> int:
    """A new file at ``path``: never an existing one, never through a link (mode 0666 & ~umask)."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC | _BINARY, FILE_MODE)


def _new_temporary(target: Path) -> tuple[int, Path]:
    target.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    for _ in range(100):
        tmp = _tmp_name(target)
        try:
            return _create_exclusive(tmp), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no unique temporary name could be made", str(target))


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable, where the platform allows opening a folder (not Windows)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY | _CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems (network drives) cannot sync a folder; the data is synced
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _discard(tmp: Path) -> None:
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass


@contextmanager
def _committing(tmp: Path, target: Path, durable: bool) -> Iterator[None]:
    """Run the body (which completes the temporary ``tmp``), then put ``tmp`` in place of ``target`` (and sync
    the folder when ``durable``). On any failure the temporary is removed; an ``OSError`` becomes a
    ``WriteError`` naming ``target``."""
    try:
        yield
        os.replace(tmp, target)
        if durable:
            _fsync_dir(target.parent)
    except OSError as exc:
        _discard(tmp)
        raise write_error(exc, target) from exc
    except BaseException:
        _discard(tmp)
        raise


@contextmanager
def atomic_path(target: Path | str, *, durable: bool = True) -> Iterator[Path]:
    """Yield the path of a new, empty temporary file beside ``target``, for libraries that write by path
    (openpyxl, matplotlib, ElementTree, zipfile, pyarrow); on success it replaces ``target``.

    The temporary was created by this function (exclusively, mode 0666 & ~umask); if the library replaced it
    by something else than a regular file, the write is refused."""
    target = Path(target)
    try:
        fd, tmp = _new_temporary(target)
        mode = os.fstat(fd).st_mode
        os.close(fd)
    except OSError as exc:
        raise write_error(exc, target) from exc
    with _committing(tmp, target, durable):
        yield tmp
        st = os.lstat(tmp)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.ELOOP, "the temporary file was replaced by a link", str(tmp))
        fd = os.open(tmp, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
        try:
            if stat.S_IMODE(st.st_mode) != stat.S_IMODE(mode):
                os.fchmod(fd, stat.S_IMODE(mode))
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)


@contextmanager
def atomic_open(target: Path | str, mode: str = "wb", *, encoding: str | None = None,
                newline: str | None = None, durable: bool = True) -> Iterator[IO[Any]]:
    """Yield a file object (``"wb"`` or ``"w"``) writing a temporary beside ``target``; on success it is
    flushed, synced and replaces ``target``."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes a new file: mode 'w' or 'wb', not {mode!r}")
    target = Path(target)
    try:
        fd, tmp = _new_temporary(target)
    except OSError as exc:
        raise write_error(exc, target) from exc
    try:
        if mode == "w":
            fh = os.fdopen(fd, "w", encoding=encoding or "utf-8", newline=newline)
        else:
            fh = os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        _discard(tmp)
        raise
    with _committing(tmp, target, durable), fh:
        yield fh
        fh.flush()
        if durable:
            os.fsync(fh.fileno())


def atomic_write_bytes(target: Path | str, data: bytes, *, durable: bool = True) -> Path:
    """Replace ``target`` with ``data`` atomically (see the module's contract)."""
    with atomic_open(target, "wb", durable=durable) as fh:
        fh.write(data)
    return Path(target)


def atomic_write_text(target: Path | str, text: str, *, encoding: str = "utf-8", durable: bool = True) -> Path:
    """Replace ``target`` with ``text`` (UTF-8, line ends as given) atomically."""
    return atomic_write_bytes(target, text.encode(encoding), durable=durable)


def create_new_file(path: Path | str, data: bytes) -> Path:
    """Write ``data`` to ``path``, which must not exist yet (exclusive create, no link followed, mode
    0666 & ~umask; not synced: for files in a fresh folder swapped in by :func:`replace_dir`)."""
    path = Path(path)
    try:
        fd = _create_exclusive(path)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
    except OSError as exc:
        _discard_quietly(path)
        raise write_error(exc, path) from exc
    return path


def _discard_quietly(path: Path) -> None:
    try:
        if path.is_file() and not path.is_symlink():
            path.unlink()
    except OSError:  # the write already failed; that error is the one reported
        pass


def remove_path(path: Path | str) -> None:
    """Remove a file, a symbolic link (not what it points to) or a folder tree (links inside it are removed,
    never followed). A missing path is fine."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    try:
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except OSError as exc:
        raise write_error(exc, path, action="remove") from exc


_TMP_NAME = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")


def remove_leftovers(folder: Path | str) -> list[str]:
    """Remove the temporaries (files or folders named by this module) that a killed process left in
    ``folder``; call it only while holding the folder's lock. Returns the names removed."""
    folder = Path(folder)
    try:
        names = [e.name for e in os.scandir(folder) if _TMP_NAME.match(e.name)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise write_error(exc, folder, action="list") from exc
    for name in names:
        remove_path(folder / name)
    return names


def temporary_dir(parent: Path | str, name: str) -> Path:
    """A new, empty, real folder ``parent/.NAME.RANDOM.tmp`` (mode 0777 & ~umask)."""
    parent = Path(parent)
    for _ in range(100):
        path = _tmp_name(parent / name)
        try:
            os.mkdir(path, DIR_MODE)
            return path
        except FileExistsError:
            continue
        except OSError as exc:
            raise write_error(exc, parent / name, action="create a folder for") from exc
    raise write_error(FileExistsError(errno.EEXIST, "no unique folder name could be made"), parent / name)


def replace_dir(fresh: Path | str, target: Path | str) -> Path:
    """Put folder ``fresh`` in the place of ``target`` (a folder, a link or nothing), then remove the old one.

    Two renames in the same folder: a crash between them leaves ``target`` absent (never half old, half
    new). A link at ``target`` is moved aside and removed, never followed."""
    fresh, target = Path(fresh), Path(target)
    old = None
    try:
        if os.path.lexists(target):
            old = _tmp_name(target.with_name(target.name + ".old"))
            os.rename(target, old)
        os.rename(fresh, target)
    except OSError as exc:
        raise write_error(exc, target, action="replace the folder") from exc
    if old is not None:
        remove_path(old)
    return target


__all__ = ["FILE_MODE", "atomic_open", "atomic_path", "atomic_write_bytes", "atomic_write_text",
           "create_new_file", "is_write_failure", "make_dir", "refuse_link", "remove_leftovers", "remove_path",
           "replace_dir", "temporary_dir", "write_error"]
