"""Every real FCS file of the shared corpus is read (or refused for the documented reason) and its events
equal FlowIO's preprocessed events wherever FlowIO can read the file, with or without its relaxing options."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from bat_analysis.errors import BatError, FcsFormatError
from bat_analysis.io.fcs import read_fcs

CORPUS = Path(__file__).resolve().parents[1] / ".." / "shared" / "fcs_corpus"
pytestmark = [
    pytest.mark.corpus,
    pytest.mark.skipif(not CORPUS.is_dir(), reason=f"real FCS corpus not found at {CORPUS}"),
]

FOLDERS = ("instruments", "gatingml2", "flowjo")


def _files() -> list[str]:
    if not CORPUS.is_dir():
        return []
    found = []
    for folder in FOLDERS:
        for p in sorted((CORPUS / folder).rglob("*")):
            if p.is_file() and p.suffix.lower() in (".fcs", ".lmd"):
                found.append(p.relative_to(CORPUS).as_posix())
    return found


FILES = _files()

# the two truly broken files, and the reason each is refused
REFUSED = {
    "instruments/fcsparser/corrupted/corrupted.fcs": ("HEADER at byte 0", "58-byte"),
    "instruments/fcsparser/cytek-nl-2000/sample_header.fcs": ("$BEGINDATA", "outside the file"),
}

# files FlowIO cannot read even with its relaxing options: checked against an independent decoding below
NO_FLOWIO = {
    ("instruments/cytoflow/Cytek xP5.fcs", 0),  # 24-bit integers
    ("instruments/fcsparser/Cytek_xP5/Cytek_xP5.fcs", 0),  # 24-bit integers
    ("instruments/flowcal/Data003.fcs", 0),  # 24-bit integers
    ("instruments/cytoflow/Partec - CyFlow v2.9.fcs", 0),  # FlowIO's keyword parser loses $DATATYPE
    ("instruments/fcsparser/fake_large_fcs/fake_large_fcs.fcs", 0),  # blank HEADER offsets
    ("instruments/cytoflow/Beckman Coulter - Cytomics FC500.LMD", 0),  # 10-bit values in 16-bit words
}


def _flowio_events(path: Path, dataset: int) -> np.ndarray | None:
    """FlowIO's preprocessed events for one data set: strict first, then relaxed (offset errors and
    discrepancies ignored, several data sets, a junk $TIMESTEP read as 1); None if FlowIO still fails."""
    import flowio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if dataset == 0:
                return flowio.FlowData(str(path)).as_array()
        except Exception:  # FlowIO refuses many of these files; the relaxed attempt follows
            pass
        try:
            fd = flowio.read_multiple_data_sets(str(path), ignore_offset_error=True,
                                                ignore_offset_discrepancy=True)[dataset]
        except Exception:
            return None
        try:
            return fd.as_array()
        except ValueError:
            if fd.text.get("timestep", "").strip() and not _is_number(fd.text["timestep"]):
                fd.text["timestep"] = ""  # FlowIO reads a blank time step as 1
                return fd.as_array()
            raise


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def test_corpus_is_complete() -> None:
    assert len(FILES) == 55


@pytest.mark.parametrize("rel", FILES)
def test_file_read_or_refused(rel: str) -> None:
    path = CORPUS / rel
    if rel in REFUSED:
        field, phrase = REFUSED[rel]
        with pytest.raises(FcsFormatError) as info:
            read_fcs(path)
        assert info.value.field == field
        assert phrase in str(info.value)
        assert str(path) in str(info.value)
        return
    sample = read_fcs(path)
    assert sample.events.dtype == np.float32
    assert sample.events.shape == (sample.n_events, len(sample.channels))
    assert np.isfinite(sample.events).all()
    tot = sample.keywords.get("$TOT")
    if tot is not None:
        assert sample.n_events == int(tot)
    for k in range(sample.n_datasets):
        other = sample if k == 0 else read_fcs(path, dataset=k)
        if (rel, k) in NO_FLOWIO:
            continue
        expected = _flowio_events(path, k)
        assert expected is not None, f"FlowIO could not read data set {k} of {rel}"
        assert other.events.shape == expected.shape
        np.testing.assert_array_equal(other.events, expected.astype(np.float32))


@pytest.mark.parametrize("rel", FILES)
def test_read_once_and_hashed_as_read_fcs(rel: str) -> None:
    """read_fcs_sha256 (the file read once into memory, hashed as it is read, events decoded from those
    bytes) gives read_fcs's sample, or its refusal, and file_sha256's checksum."""
    from bat_analysis._checksums import file_sha256
    from bat_analysis.io.fcs import read_fcs_sha256

    path = CORPUS / rel
    try:
        expected = read_fcs(path)
    except FcsFormatError as exc:
        with pytest.raises(FcsFormatError) as info:
            read_fcs_sha256(path)
        assert (str(info.value), info.value.field) == (str(exc), exc.field)
        return
    sample, sha = read_fcs_sha256(path)
    assert sha == file_sha256(path)
    assert sample.events.dtype == expected.events.dtype and sample.events.flags.aligned
    np.testing.assert_array_equal(sample.events.view(np.uint32), expected.events.view(np.uint32))
    assert (sample.channels, sample.keywords, sample.warnings, sample.n_datasets, sample.version) == \
        (expected.channels, expected.keywords, expected.warnings, expected.n_datasets, expected.version)
    assert (sample.spillover is None) == (expected.spillover is None)
    if sample.spillover is not None:
        np.testing.assert_array_equal(sample.spillover.matrix, expected.spillover.matrix)


def _independent_ints(path: Path, sample, n: int = 200) -> np.ndarray:
    """Decode the first n events' integers with int.from_bytes, independently of the reader's numpy path."""
    buf = path.read_bytes()
    start = int(sample.keywords["$BEGINDATA"])
    big = sample.keywords["$BYTEORD"].startswith("4")
    widths = [int(sample.keywords[f"$P{i + 1}B"]) // 8 for i in range(len(sample.channels))]
    out = np.zeros((n, len(widths)))
    pos = start
    for e in range(n):
        for c, w in enumerate(widths):
            out[e, c] = int.from_bytes(buf[pos: pos + w], "big" if big else "little")
            pos += w
    return out


@pytest.mark.parametrize("rel", ["instruments/cytoflow/Cytek xP5.fcs", "instruments/flowcal/Data003.fcs"])
def test_24_bit_integers(rel: str) -> None:
    path = CORPUS / rel
    sample = read_fcs(path)
    raw = read_fcs(path, scale=False)
    assert [c.bits for c in sample.channels] == [24] * len(sample.channels)
    ints = _independent_ints(path, sample)
    for c in sample.channels:
        mask = (1 << int(np.ceil(np.log2(c.range)))) - 1
        expected = np.bitwise_and(ints[:, c.index].astype(np.int64), mask).astype(np.float64)
        np.testing.assert_array_equal(raw.events[:200, c.index], expected.astype(np.float32))
        if c.log_decades:
            scaled = 10 ** (c.log_decades * expected / c.range) * c.log_zero
            np.testing.assert_array_equal(sample.events[:200, c.index], scaled.astype(np.float32))


def test_partec_keywords_flowio_loses() -> None:
    path = CORPUS / "instruments/cytoflow/Partec - CyFlow v2.9.fcs"
    sample = read_fcs(path)
    assert sample.keywords["$DATATYPE"] == "I"
    assert sample.n_events == 72989
    ints = _independent_ints(path, sample)
    raw = read_fcs(path, scale=False)
    np.testing.assert_array_equal(raw.events[:200], ints.astype(np.float32))
    assert any("off-by-one" in w for w in sample.warnings)


def test_blank_header_offsets_read_from_text() -> None:
    """fake_large_fcs is the Fortessa file with blank HEADER offsets (as for a file beyond 99,999,999 bytes)."""
    large = read_fcs(CORPUS / "instruments/fcsparser/fake_large_fcs/fake_large_fcs.fcs")
    same = read_fcs(CORPUS / "instruments/fcsparser/Fortessa/FCS_3.0_Fortessa_PBS_Specimen_001_A1_A01.fcs")
    np.testing.assert_array_equal(large.events, same.events)
    assert any("HEADER DATA offsets are blank" in w for w in large.warnings)


def test_flowio_truth_arrays() -> None:
    truth = CORPUS / "instruments" / "flowio" / "truth"
    files = CORPUS / "instruments" / "flowio" / "fcs_files"
    raw = np.load(truth / "data1_original_events.npy")
    pre = np.load(truth / "data1_preprocessed.npy")
    b01 = np.load(truth / "B01 KC-A-W---91-US_preprocessed_events.npy")
    np.testing.assert_array_equal(read_fcs(files / "data1.fcs", scale=False).events, raw.astype(np.float32))
    np.testing.assert_array_equal(read_fcs(files / "data1.fcs").events, pre.astype(np.float32))
    np.testing.assert_array_equal(read_fcs(files / "B01 KC-A-W---91-US.fcs").events, b01.astype(np.float32))


def test_multiple_data_sets() -> None:
    guava = CORPUS / "instruments/fcsparser/GuavaMuse/Guava Muse.fcs"
    counts = [read_fcs(guava, dataset=k).n_events for k in range(4)]
    assert counts == [108, 50081, 111496, 50037]
    assert read_fcs(guava).n_datasets == 4
    with pytest.raises(FcsFormatError) as info:
        read_fcs(guava, dataset=4)
    assert info.value.field == "dataset"

def test_ten_bit_values_in_sixteen_bit_words() -> None:
    path = CORPUS / "instruments/cytoflow/Beckman Coulter - Cytomics FC500.LMD"
    lmd = read_fcs(path, scale=False)
    assert lmd.n_datasets == 2 and lmd.version == "2.0"
    assert [c.bits for c in lmd.channels] == [10, 10, 10, 10]
    assert any("16-bit words" in w for w in lmd.warnings)
    buf = path.read_bytes()
    start = int(buf[26:34])
    words = [int.from_bytes(buf[start + 2 * i: start + 2 * i + 2], "little") for i in range(400)]
    expected = np.array([w & 1023 for w in words], dtype=np.float32).reshape(100, 4)
    np.testing.assert_array_equal(lmd.events[:100], expected)
    assert read_fcs(path, dataset=1).version == "3.0"


@pytest.mark.parametrize("rel, phrase", [
    ("instruments/flowkit/data_start_offset_discrepancy_example.fcs", "HEADER DATA offsets 5555-6188 differ"),
    ("instruments/flowkit/data_stop_offset_discrepancy_example.fcs", "HEADER DATA offsets 6081-6944 differ"),
    ("instruments/cytoflow/Beckman Coulter - Cyan.fcs", "differ from TEXT"),
    ("instruments/flowkit/test_comp_example.fcs", "off-by-one"),
    ("instruments/flowio/fcs_files/variable_int_example.fcs", "$TIMESTEP 'xxxxxxxxx' is not a number"),
    ("instruments/fcsparser/MiltenyiBiotec/FCS3.1/EY_2013-07-19_PBS_FCS_3.1_Well_A1.001.fcs",
     "spillover unusable"),
    ("instruments/fcsparser/MiltenyiBiotec/FCS3.1/SG_2014-09-26_Duplicate_Names.fcs", "off-by-one"),
])
def test_quirks_are_recorded(rel: str, phrase: str) -> None:
    sample = read_fcs(CORPUS / rel)
    assert any(phrase in w for w in sample.warnings), sample.warnings


def test_spillover_from_spill_keyword() -> None:
    sample = read_fcs(CORPUS / "instruments/flowkit/test_comp_example.fcs")
    assert sample.spillover is not None
    assert sample.spillover.keyword == "SPILL"
    n = len(sample.spillover.channels)
    assert sample.spillover.matrix.shape == (n, n)
    assert set(sample.spillover.channels) <= set(sample.pnn)
    np.testing.assert_array_equal(np.diag(sample.spillover.matrix), np.ones(n))


def test_spillover_named_by_parameter_number() -> None:
    sample = read_fcs(CORPUS / "instruments/cytoflow/Accuri - C6.fcs")
    assert sample.spillover is not None
    assert sample.spillover.channels[:4] == ("FL1-A", "FL2-A", "FL3-A", "FL4-A")


def test_dollar_signs_inside_values_are_kept() -> None:
    sample = read_fcs(CORPUS / "instruments/cytoflow/Partec - CyFlow v2.9.fcs")
    keys_with_dollar = [k for k in sample.keywords if "$" in k[1:]]
    assert keys_with_dollar  # e.g. P$PMODE3, which FlowIO reads as "pmode3"


def test_refusals_are_bat_errors() -> None:
    for rel in REFUSED:
        with pytest.raises(BatError):
            read_fcs(CORPUS / rel)
