"""A batch with damaged files: ``bat run`` over a simulated experiment in which some tubes are replaced by an
empty file, a non-FCS file, truncated DATA, an inconsistent $TOT, a missing marker, NaN values or no events.
Each damaged tube's row says qc_status=fail with a flag and a reason naming the problem (a spillover matrix
that is unusable — unknown channel, singular — included: such a tube is never gated uncompensated), every other
tube is analysed exactly as in an undamaged run, and the exit status is 0; a batch where every file is damaged
exits non-zero and says why, file by file."""

from __future__ import annotations

import csv
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from guards import no_hang

from bat_analysis.cli import app
from bat_analysis.io.fcs import read_fcs, read_fcs_keywords
from bat_analysis.io.fcs_write import write_fcs
from bat_analysis.pipeline import RunOptions, run

runner = CliRunner()
N_EVENTS = 10_000


def _data_range(path: Path) -> tuple[int, int]:
    kw = read_fcs_keywords(path)
    return int(kw["$BEGINDATA"]), int(kw["$ENDDATA"])


def _same_width(raw: bytes, old: bytes, new: bytes) -> bytes:
    """``raw`` with the one occurrence of ``old`` replaced by ``new`` of the same length (offsets stay valid)."""
    assert len(old) == len(new) and raw.count(old) == 1, (old, raw.count(old))
    return raw.replace(old, new)


def empty(path: Path) -> bytes:
    return b""


def not_fcs(path: Path) -> bytes:
    return b"file,patient,condition\nP01_none_fmlp.fcs,P01,fmlp\n" * 20


def truncated_data(path: Path) -> bytes:
    begin, end = _data_range(path)
    return path.read_bytes()[: begin + (end - begin) // 2]


def tot_inconsistent(path: Path) -> bytes:
    return _same_width(path.read_bytes(), f"/$TOT/{N_EVENTS}/".encode(), f"/$TOT/{N_EVENTS + 2000}/".encode())


def marker_absent(path: Path) -> bytes:
    return _same_width(path.read_bytes(), b"/CD63/", b"/CDx3/")  # the activation marker's $PnS renamed


def nan_values(path: Path) -> bytes:
    raw = bytearray(path.read_bytes())
    begin, _ = _data_range(path)
    for event in (10, 500, 4000):  # float32 little-endian NaN in the first channel of three events
        at = begin + event * 4 * int(read_fcs_keywords(path)["$PAR"])
        raw[at:at + 4] = np.array([np.nan], dtype="<f4").tobytes()
    return bytes(raw)


def zero_events(path: Path) -> bytes:
    sample = read_fcs(path)
    target = path.with_suffix(".zero.tmp")
    write_fcs(target, np.zeros((0, len(sample.channels)), dtype=np.float32), [c.pnn for c in sample.channels],
              [c.pns for c in sample.channels])
    content = target.read_bytes()
    target.unlink()
    return content


def spillover_unknown_channel(path: Path) -> bytes:
    raw = path.read_bytes()
    spill = read_fcs_keywords(path)["$SPILLOVER"].encode()
    assert b",PE-Cy7-A," in spill
    return _same_width(raw, spill, spill.replace(b",PE-Cy7-A,", b",PE-Cy9-A,"))


def spillover_singular(path: Path) -> bytes:
    sample = read_fcs(path)
    matrix = sample.spillover.matrix.copy()
    matrix[1] = matrix[0]
    target = path.with_suffix(".singular.tmp")
    write_fcs(target, sample.events, [c.pnn for c in sample.channels], [c.pns for c in sample.channels],
              ranges=float(sample.keywords["$P1R"]), spillover=(list(sample.spillover.channels), matrix))
    content = target.read_bytes()
    target.unlink()
    return content


# each damage that stops the tube, and what the reason given for the tube must name
DAMAGES: dict[str, tuple[Callable[[Path], bytes], str]] = {
    "empty": (empty, r"HEADER.*(file is )?empty"),
    "not_fcs": (not_fcs, r"HEADER.*(not start with 'FCS'|not an FCS)"),
    "truncated_data": (truncated_data, r"DATA segment .*file \d+ bytes|truncated"),
    "tot_inconsistent": (tot_inconsistent, r"\$TOT"),
    "marker_absent": (marker_absent, r"marker 'CD63' not found"),
    "nan_values": (nan_values, r"non-finite|NaN"),
    "zero_events": (zero_events, r"\$TOT.*no events"),
}
# damages the reader accepts (the spillover is reported unusable) but gating refuses: never gated uncompensated
FLAGGED: dict[str, tuple[Callable[[Path], bytes], str]] = {
    "spillover_unknown_channel": (spillover_unknown_channel, r"\$SPILLOVER.*unknown channels 'PE-Cy9-A'"),
    "spillover_singular": (spillover_singular, r"\$SPILLOVER.*singular"),
}


# the experiment fixture (tests/conftest.py): enough basophils (>= 200, the default QC limit) in few events, to
# keep the batch quick
SIMULATION = {"n_patients": 1, "n_events": N_EVENTS, "seed": 21, "n_concentrations": 3, "basophil_pct": (2.5, 3.0)}


@pytest.fixture(scope="module")
def reference(experiment, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """tubes.csv rows of an undamaged run, by file."""
    out = tmp_path_factory.mktemp("batch_bad_reference")
    run(RunOptions(data_dir=experiment.out_dir, layout=experiment.layout_path, out=out, workers=2, quiet=True,
                   reports=False))
    return {row["file"]: row for row in _rows(out / "tubes.csv")}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _damaged_copy(experiment, folder: Path, victims: dict[str, str]) -> Path:
    """A copy of the experiment's folder with the file of each ``victims`` entry (file -> damage) damaged."""
    data = folder / "data"
    shutil.copytree(experiment.out_dir, data)
    for file, damage in victims.items():
        make, _ = {**DAMAGES, **FLAGGED}[damage]
        content = make(experiment.out_dir / file)
        (data / file).write_bytes(content)
    return data


def test_damages_are_what_they_claim(experiment, tmp_path: Path) -> None:
    """Each damaged file is refused by the reader (so the batch test below tests what it says)."""
    from bat_analysis.errors import BatError

    good = experiment.out_dir / experiment.tubes[1].file
    assert read_fcs(good).n_events == N_EVENTS
    for name, (make, pattern) in DAMAGES.items():
        path = tmp_path / f"{name}.fcs"
        path.write_bytes(make(good))
        if name == "marker_absent":
            from bat_analysis.io.markers import resolve_marker

            sample = read_fcs(path)
            with pytest.raises(BatError, match="CD63"):
                resolve_marker(sample.channels, "CD63", source=str(path))
            continue
        with pytest.raises(BatError) as info:
            read_fcs(path)
        assert re.search(pattern, str(info.value)), (name, str(info.value))
    for name, (make, pattern) in FLAGGED.items():
        path = tmp_path / f"{name}.fcs"
        path.write_bytes(make(good))
        sample = read_fcs(path)
        assert sample.spillover is None and sample.n_events == N_EVENTS
        assert re.search(pattern, f"{sample.spillover_error} {' '.join(sample.warnings)}"), (name, sample.warnings)


@pytest.mark.slow
def test_damaged_tubes_fail_alone_and_the_batch_completes(experiment, reference, tmp_path: Path) -> None:
    controls = [t.file for t in experiment.tubes if t.condition == "negative_control"]
    candidates = [t.file for t in experiment.tubes if t.file not in controls]
    assert len(candidates) >= len(DAMAGES) + len(FLAGGED) + 1
    victims = dict(zip(candidates, [*DAMAGES, *FLAGGED]))
    data = _damaged_copy(experiment, tmp_path, victims)
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(data), "--layout", str(data / "layout.csv"), "--out", str(out),
                                 "--workers", "2", "--no-reports"])
    assert result.exit_code == 0, result.output
    assert f"{len(DAMAGES) + len(FLAGGED)} tube(s) could not be gated" in result.output
    for file in victims:
        assert f"  - {file}: " in result.output, file

    rows = _rows(out / "tubes.csv")
    assert [r["file"] for r in rows] == [t.file for t in experiment.tubes]
    for row in rows:
        file = row["file"]
        if file in victims:
            damage = victims[file]
            pattern = {**DAMAGES, **FLAGGED}[damage][1]
            assert row["qc_status"] == "fail", (damage, row)
            assert "TUBE_NOT_GATED" in row["qc_flags"].split(";"), (damage, row["qc_flags"])
            assert file in row["error"] and re.search(pattern, row["error"]), (damage, row["error"])
            # the reason once in the row: in the error column; the QC reasons name the flag
            assert "TUBE_NOT_GATED" in row["qc_reasons"].split("; "), (damage, row["qc_reasons"])
            assert not re.search(pattern, row["qc_reasons"]), (damage, row["qc_reasons"])
            assert row["n_basophils"] in ("", "0") and row["pct_cd63"] == "", (damage, row)
        else:  # analysed, and exactly as in the undamaged run
            assert row["qc_status"] != "fail" and int(row["n_basophils"]) >= 200, row
            assert row == reference[file], {k: (row[k], reference[file][k]) for k in row
                                            if row[k] != reference[file].get(k)}
    assert (out / "patients.csv").is_file()


def test_a_batch_of_only_damaged_files_exits_non_zero_naming_each(experiment, tmp_path: Path) -> None:
    files = [t.file for t in experiment.tubes]
    damages = list(DAMAGES)
    victims = {file: damages[i % len(damages)] for i, file in enumerate(files)}
    data = _damaged_copy(experiment, tmp_path, victims)
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", str(data), "--layout", str(data / "layout.csv"), "--out", str(out),
                                 "--workers", "2", "--no-reports", "--quiet"])
    assert result.exit_code == 1, result.output
    n = len(files)
    assert f"no tube could be analysed ({n} of {n} failed)" in result.output, result.output
    listed = [line.strip()[2:] for line in result.output.splitlines() if line.strip().startswith("- ")]
    assert len(listed) == min(n, 10), listed
    for line in listed:
        file, _, reason = line.partition(": ")
        assert file in victims and re.search(DAMAGES[victims[file]][1], reason), line
    assert "bat inspect" in result.output
    assert not (out / "tubes.csv").exists() and not (out / "patients.csv").exists()
    from bat_analysis.store import ResultStore

    with ResultStore.in_folder(out) as store:
        last = store.runs()[-1]
    assert (last["status"], last["n_failed"], last["n_tubes"]) == ("failed", n, n)


# more damages, checked on the per-tube task the batch maps (fast: no whole run)
def _edit(old: bytes, new: bytes) -> Callable[[Path], bytes]:
    return lambda path: _same_width(path.read_bytes(), old, new)


def _header_data_end_beyond_file(path: Path) -> bytes:
    raw = path.read_bytes()
    return raw[:34] + b"%8d" % (len(raw) + 1000) + raw[42:]  # HEADER bytes 34-41: end of DATA


REFUSED: dict[str, tuple[Callable[[Path], bytes], str]] = {
    "par_missing": (_edit(b"/$PAR/", b"/$PXR/"), r"\$PAR.*missing"),
    "byteord_unknown": (_edit(b"/$BYTEORD/1,2,3,4/", b"/$BYTEORD/9,9,9,9/"), r"\$BYTEORD.*'9,9,9,9'"),
    "delimiter_doubled": (_edit(b"/$TOT/", b"//TOT/"), r"delimiter"),
    "datatype_unknown": (_edit(b"/$DATATYPE/F/", b"/$DATATYPE/X/"), r"\$DATATYPE.*'X'"),
    "histogram_mode": (_edit(b"/$MODE/L/", b"/$MODE/H/"), r"\$MODE.*list mode"),
    "identification_marker_absent": (_edit(b"/CCR3/", b"/CD63/"), r"marker 'CCR3' not found"),
    "marker_name_not_utf8": (_edit(b"/CCR3/", b"/CCR\xe9/"), r"marker 'CCR3' not found"),
}
TOLERATED: dict[str, tuple[Callable[[Path], bytes], str, str]] = {
    "header_offsets_beyond_file": (_header_data_end_beyond_file, "FCS_WARNING", r"HEADER DATA offsets .* differ"),
    "duplicate_channel_names": (_edit(b"/$P2N/FSC-H/", b"/$P2N/FSC-A/"), "FCS_WARNING",
                                r"duplicate channel names .*FSC-A"),
}


@pytest.mark.parametrize("damage", sorted(REFUSED))
def test_more_damages_fail_their_tube_with_the_reason(experiment, tmp_path: Path, damage: str) -> None:
    from bat_analysis.gating.templates import load_template
    from bat_analysis.pipeline import GateTask, gate_one

    tube = experiment.tubes[2]
    make, pattern = REFUSED[damage]
    path = tmp_path / tube.file
    path.write_bytes(make(experiment.out_dir / tube.file))
    result = gate_one(GateTask(path=str(path), tube=tube, template=load_template("bat_ccr3_cd63")))
    assert not result.ok and result.n_basophils == 0 and re.search(pattern, result.error), result.error
    fails = [f for f in result.flags if f.severity == "fail"]
    assert fails and all(tube.file in f.message for f in fails)
    assert result.file_sha256 is not None and len(result.file_sha256) == 64


@pytest.mark.parametrize("damage", sorted(TOLERATED))
def test_tolerated_oddities_are_analysed_with_a_flag(experiment, tmp_path: Path, damage: str) -> None:
    from bat_analysis.gating.templates import load_template
    from bat_analysis.pipeline import GateTask, gate_one

    tube = experiment.tubes[2]
    make, code, pattern = TOLERATED[damage]
    path = tmp_path / tube.file
    path.write_bytes(make(experiment.out_dir / tube.file))
    result = gate_one(GateTask(path=str(path), tube=tube, template=load_template("bat_ccr3_cd63")))
    assert result.ok and result.n_basophils > 0, result.error
    assert any(f.code == code and f.severity == "warn" and re.search(pattern, f.message) for f in result.flags), \
        result.flags


# files that are not files: a FIFO, a device, a /proc file are refused at once by every reader, never waited on


def _special_files(tmp_path: Path) -> list[tuple[Path, str]]:
    """(path, what the refusal says) for each non-regular file this system has."""
    found = []
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.fcs")
        found.append((tmp_path / "pipe.fcs", "is a FIFO (named pipe), not a regular file"))
    for path, what in ((Path("/proc/self/pagemap"), "is a file of the kernel (/proc, /sys), not a regular file"),
                       (Path("/dev/zero"), "is a character device, not a regular file")):
        if path.exists():
            found.append((path, what))
    if not found:
        pytest.skip("no FIFO, /proc or /dev on this system")
    return found


def test_readers_refuse_special_files_at_once(tmp_path: Path) -> None:
    from bat_analysis._checksums import file_sha256
    from bat_analysis.errors import BatError, DataFileError, FcsFormatError

    for path, what in _special_files(tmp_path):
        with no_hang(10, "reading a non-regular file"):
            with pytest.raises(FcsFormatError, match=re.escape(f"{path}: {what}")):
                read_fcs(path)
            with pytest.raises(FcsFormatError, match=re.escape(what)):
                read_fcs_keywords(path)
            with pytest.raises(DataFileError, match=re.escape(what)) as info:
                file_sha256(path)
            assert info.value.kind == "not_regular" and isinstance(info.value, BatError)
            result = runner.invoke(app, ["inspect", str(path)])
        assert result.exit_code == 2 and f"error: {path}: {what}" in result.output, (path, result.output)


def test_a_tube_whose_file_became_a_fifo_fails_alone(experiment, tmp_path: Path) -> None:
    """The file was checked when the layout was read, then replaced by a FIFO: the tube fails, nothing hangs."""
    from bat_analysis.gating.templates import load_template
    from bat_analysis.pipeline import GateTask, gate_one

    if not hasattr(os, "mkfifo"):
        pytest.skip("FIFOs are a POSIX feature")
    tube = experiment.tubes[2]
    os.mkfifo(tmp_path / tube.file)
    with no_hang(10, "reading a non-regular file"):
        result = gate_one(GateTask(path=str(tmp_path / tube.file), tube=tube, template=load_template("bat_ccr3_cd63")))
    assert not result.ok and "is a FIFO (named pipe), not a regular file" in result.error, result.error
    assert result.file_sha256 is None and any(f.severity == "fail" and tube.file in f.message for f in result.flags)


def test_a_truncated_tube_says_so_once_in_plain_words(experiment, tmp_path: Path) -> None:
    """Its row leads with the technician's sentence (how much the header announces, how much is there, what to
    do), then the technical detail, and gives the reason once (trust issue item 19)."""
    victim = next(t.file for t in experiment.tubes if t.condition == "allergen")
    data = _damaged_copy(experiment, tmp_path, {victim: "truncated_data"})
    begin, end = _data_range(experiment.out_dir / victim)
    present = (data / victim).stat().st_size - begin
    out = tmp_path / "out"
    summary = run(RunOptions(data_dir=data, layout=data / "layout.csv", out=out, workers=2, quiet=True,
                             reports=False))
    assert [f for f, _ in summary.failed] == [victim]
    row = next(r for r in _rows(out / "tubes.csv") if r["file"] == victim)
    sentence = (f"the file is incomplete: its header announces {round((end - begin + 1) / 1000)} kB of data, it "
                f"holds {round(present / 1000)} kB — export it again from the cytometer")
    assert row["error"].startswith(f"{data / victim}: {sentence} — $ENDDATA: DATA segment {begin}-{end}"), \
        row["error"]
    text = " | ".join(row.values())
    assert text.count("the file is incomplete") == 1 and text.count("$ENDDATA") == 1, row
    assert row["qc_status"] == "fail" and row["qc_flags"] == "TUBE_NOT_GATED" and row["qc_reasons"] == \
        "TUBE_NOT_GATED", row


@pytest.mark.skipif(__import__("multiprocessing").get_start_method() != "fork",
                    reason="the hang is injected into forked workers by patching the parent")
def test_a_tube_that_hangs_is_stopped_at_the_time_limit_and_the_batch_completes(
        experiment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    import bat_analysis.gating.tube as tube_module

    victim = next(t.file for t in experiment.tubes if t.condition == "allergen")
    real = tube_module.gate_tube

    def hanging(path, tube, template, **options):
        if tube.file == victim:
            time.sleep(3600)
        return real(path, tube, template, **options)

    monkeypatch.setattr(tube_module, "gate_tube", hanging)

    out = tmp_path / "out"
    with no_hang(180, "the batch (the hung tube was not stopped)"):
        result = runner.invoke(app, ["run", str(experiment.out_dir), "--layout", str(experiment.layout_path),
                                     "--out", str(out), "--workers", "2", "--tube-timeout", "5", "--no-reports"])
    assert result.exit_code == 0, result.output
    assert "1 tube(s) could not be gated" in result.output
    assert f"  - {victim}: gating took longer than 5 s and was stopped" in result.output
    rows = {r["file"]: r for r in _rows(out / "tubes.csv")}
    assert rows[victim]["qc_status"] == "fail" and rows[victim]["qc_flags"] == "TUBE_TIMEOUT"
    assert rows[victim]["error"].startswith("gating took longer than 5 s")
    assert all(r["qc_status"] != "fail" for f, r in rows.items() if f != victim)


def test_tube_timeout_must_not_be_negative(experiment, tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", str(experiment.out_dir), "--layout", str(experiment.layout_path),
                                 "--out", str(tmp_path / "out"), "--tube-timeout", "-1"])
    assert result.exit_code == 2 and "--tube-timeout" in result.output


def test_a_tube_stopped_at_the_time_limit_is_gated_again_by_a_re_run(experiment, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A time limit is not a property of the file: re-running (e.g. with a longer --tube-timeout) gates the tube
    again, while the other tubes are reused."""
    import bat_analysis.pipeline as pipeline

    victim = next(t.file for t in experiment.tubes if t.condition == "allergen")
    real = pipeline.run_local

    def one_times_out(tasks, workers, timeout_s=None):  # as if the victim had taken too long
        for i, result in real(tasks, workers, timeout_s):
            yield i, (pipeline.timed_out(tasks[i], 7) if tasks[i].tube.file == victim else result)

    monkeypatch.setattr(pipeline, "run_local", one_times_out)
    out = tmp_path / "out"
    options = RunOptions(data_dir=experiment.out_dir, layout=experiment.layout_path, out=out, workers=2, quiet=True,
                         reports=False)
    first = run(options)
    assert [f for f, _ in first.failed] == [victim] and first.failed[0][1].startswith("gating took longer than 7 s")
    monkeypatch.setattr(pipeline, "run_local", real)
    again = run(options)
    assert again.n_failed == 0 and again.n_gated == 1 and again.n_reused == len(experiment.tubes) - 1
