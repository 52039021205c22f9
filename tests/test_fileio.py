"""Writing files (bat_analysis._fileio): atomic, never through a link, ordinary permissions, clear failures."""

from __future__ import annotations

import errno
import os
import sqlite3
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from bat_analysis import _fileio as fileio
from bat_analysis.errors import BatError, WriteError
from bat_analysis._fileio import (atomic_open, atomic_path, atomic_write_bytes, atomic_write_text, make_dir,
                                 replace_dir, write_error)


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it."""
    old = os.umask(0o022)
    os.umask(old)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def _outside(tmp_path: Path) -> Path:
    victim = tmp_path / "outside" / "precious.txt"
    victim.parent.mkdir()
    victim.write_text("do not touch\n")
    return victim


def _only(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------------------------------ atomic writes
@pytest.mark.parametrize("write", [
    lambda p: atomic_write_text(p, "new\n"),
    lambda p: atomic_write_bytes(p, b"new\n"),
])
def test_a_link_at_the_target_is_replaced_not_written_through(tmp_path, write):
    victim = _outside(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "tubes.csv").symlink_to(victim)
    write(out / "tubes.csv")
    assert victim.read_text() == "do not touch\n"
    assert not (out / "tubes.csv").is_symlink() and (out / "tubes.csv").read_text() == "new\n"
    assert _only(out) == ["tubes.csv"]


def test_old_fixed_temporary_names_planted_as_links_are_not_followed(tmp_path):
    from bat_analysis.gating.gatingml import export_gatingml  # noqa: F401  (its writer is the helper too)
    from bat_analysis.report._html import write_text

    victim = _outside(tmp_path)
    reports = tmp_path / "out" / "reports"
    reports.mkdir(parents=True)
    for name in (".P01.html.tmp", "P01.html.tmp"):  # the names the reports and exports used to write through
        (reports / name).symlink_to(victim)
    write_text(reports / "P01.html", "<p>report</p>")
    assert victim.read_text() == "do not touch\n"
    assert (reports / "P01.html").read_text() == "<p>report</p>"


def test_temporaries_are_unique_and_created_exclusively(tmp_path, monkeypatch):
    target = tmp_path / "a.txt"
    taken = target.with_name(".a.txt.000000000000.tmp")
    taken.symlink_to(_outside(tmp_path))
    names = iter(["000000000000", "000000000000", "111111111111"])
    monkeypatch.setattr(fileio.secrets, "token_hex", lambda n: next(names))
    atomic_write_text(target, "x")
    assert target.read_text() == "x" and (tmp_path / "outside" / "precious.txt").read_text() == "do not touch\n"
    assert taken.is_symlink()  # the existing name was skipped, not opened


def test_failure_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "tubes.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half of the new fi")
            raise RuntimeError("killed while writing")
    assert target.read_text() == "old\n" and _only(tmp_path) == ["tubes.csv"]
    with atomic_path(target) as tmp:
        tmp.write_text("new\n")
    assert target.read_text() == "new\n" and _only(tmp_path) == ["tubes.csv"]


def test_a_full_disk_is_a_clear_write_error(tmp_path, monkeypatch):
    target = tmp_path / "results.xlsx"
    target.write_bytes(b"old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fileio.os, "fsync", full)
    for write in (lambda: atomic_write_bytes(target, b"new" * 1000), lambda: _by_path(target)):
        with pytest.raises(WriteError) as info:
            write()
        text = str(info.value)
        assert text.startswith(f"cannot write {target}: the disk is full. What to do: free some space")
        assert info.value.source == str(target) and isinstance(info.value, BatError)
        assert isinstance(info.value.__cause__, OSError)
        assert target.read_bytes() == b"old" and _only(tmp_path) == ["results.xlsx"]


def _by_path(target: Path) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")


@pytest.mark.parametrize("code, cause, todo", [
    (errno.EACCES, "permission denied", "make the folder writable"),
    (errno.EROFS, "the drive is read-only", "writable drive"),
    (errno.EDQUOT, "quota", "free some space"),
    (errno.EIO, "input/output error", "check the drive"),
])
def test_causes_in_plain_words(code, cause, todo):
    err = write_error(OSError(code, os.strerror(code)), "/o/tubes.csv")
    assert "cannot write /o/tubes.csv: " in str(err) and cause in str(err) and todo in str(err)


def test_sqlite_full_and_readonly_in_plain_words():
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = 13
    assert "the disk is full" in str(write_error(full, "/o/results.sqlite"))
    ro = sqlite3.OperationalError("attempt to write a readonly database")
    ro.sqlite_errorcode = 8
    assert "read-only" in str(write_error(ro, "/o/results.sqlite"))


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_files_get_ordinary_permissions(tmp_path, umask, mask, mode):
    umask(mask)
    a = atomic_write_text(tmp_path / "a.txt", "x")
    with atomic_path(tmp_path / "b.bin") as tmp:
        tmp.write_bytes(b"x")
    with atomic_open(tmp_path / "c.txt", "w") as fh:
        fh.write("x")
    for p in (a, tmp_path / "b.bin", tmp_path / "c.txt"):
        assert oct(p.stat().st_mode & 0o777) == oct(mode), p


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664)])
def test_table_exports_are_readable_by_colleagues(tmp_path, umask, mask, mode):
    from bat_analysis._outputs import write_tables

    umask(mask)
    df = pd.DataFrame({"file": ["a.fcs"], "pct": [1.5]})
    paths = write_tables(tmp_path, df, df, {"version": "x"}, parquet=True)
    assert [p.name for p in paths] == ["tubes.csv", "patients.csv", "results.xlsx", "tubes.parquet",
                                       "patients.parquet"]
    for p in paths:
        assert oct(p.stat().st_mode & 0o777) == oct(mode), p.name


def test_table_set_is_replaced_as_a_whole(tmp_path, monkeypatch):
    from bat_analysis._outputs import write_tables

    for name in ("tubes.csv", "patients.csv", "results.xlsx"):
        (tmp_path / name).write_text(f"old {name}")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(zipfile.ZipFile, "writestr", full)  # the workbook's zip entries hit a full disk
    df = pd.DataFrame({"file": ["a.fcs"]})
    with pytest.raises(WriteError, match=r"cannot write .*results\.xlsx: the disk is full"):
        write_tables(tmp_path, df, df, {})
    for name in ("tubes.csv", "patients.csv", "results.xlsx"):  # no mix of new CSVs and an old workbook
        assert (tmp_path / name).read_text() == f"old {name}"
    assert _only(tmp_path) == ["patients.csv", "results.xlsx", "tubes.csv"]


# ------------------------------------------------------------------------------------------ folders
def test_make_dir_refuses_a_link_inside_the_output_folder(tmp_path):
    victim = _outside(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "reports").symlink_to(victim.parent)
    with pytest.raises(WriteError, match=r"reports: this folder is a symbolic link .*remove the link"):
        make_dir(out / "reports", inside=out)
    linked_out = tmp_path / "linked_out"
    linked_out.symlink_to(out)  # the folder the user chose may itself be a link
    assert make_dir(linked_out / "review", inside=linked_out).is_dir()


def test_replace_dir_moves_a_link_aside_without_following_it(tmp_path):
    victim = _outside(tmp_path)
    out = tmp_path / "out"
    fresh = out / ".new"
    fresh.mkdir(parents=True)
    (fresh / "index.html").write_text("new")
    (out / "review").symlink_to(victim.parent, target_is_directory=True)
    replace_dir(fresh, out / "review")
    assert victim.read_text() == "do not touch\n" and _only(victim.parent) == ["precious.txt"]
    assert not (out / "review").is_symlink() and (out / "review" / "index.html").read_text() == "new"
    assert _only(out) == ["review"]


def test_gallery_images_folder_link_is_replaced(tmp_path):
    from bat_analysis.report._html import GALLERY_IMAGES, write_gallery
    from bat_analysis.report._views import RunView

    victim = _outside(tmp_path)
    review = tmp_path / "review"
    review.mkdir()
    (review / GALLERY_IMAGES).symlink_to(victim.parent, target_is_directory=True)
    for stale in (f".{GALLERY_IMAGES}.new", f".{GALLERY_IMAGES}.old"):  # the fixed names it used to clear
        (review / stale).symlink_to(victim.parent, target_is_directory=True)
    write_gallery(review, [], RunView({}), {})
    assert _only(victim.parent) == ["precious.txt"] and victim.read_text() == "do not touch\n"
    assert (review / GALLERY_IMAGES).is_dir() and not (review / GALLERY_IMAGES).is_symlink()
