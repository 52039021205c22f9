"""Random valid FCS files written with the project's writer read back exactly: versions 2.0/3.0/3.1, data
types I/F/D, both byte orders, integer widths 8/16/32 with odd $PnR ranges, names and keyword values holding
the delimiter, ``$`` and non-ASCII text, and spillover matrices."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bat_analysis.io.fcs import read_fcs
from bat_analysis.io.fcs_write import write_fcs

NAME_CHARS = st.characters(blacklist_categories=("Cs", "Cc", "Zs"), blacklist_characters=",")
VALUE_CHARS = st.characters(blacklist_categories=("Cs", "Cc"))
names_st = st.text(NAME_CHARS, min_size=1, max_size=12)
value_st = st.text(VALUE_CHARS, min_size=1, max_size=24)
f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@st.composite
def fcs_files(draw: st.DrawFn) -> dict:
    version = draw(st.sampled_from(["2.0", "3.0", "3.1"]))
    datatype = draw(st.sampled_from(["I", "F", "D"]))
    byteorder = draw(st.sampled_from(["<", ">"]))
    n_ch = draw(st.integers(1, 6))
    n_ev = draw(st.integers(1, 40))
    pnn = draw(st.lists(names_st, min_size=n_ch, max_size=n_ch, unique=True))
    pns = draw(st.lists(st.one_of(st.none(), names_st), min_size=n_ch, max_size=n_ch))
    if datatype == "I":
        bits = draw(st.lists(st.sampled_from([8, 16, 32]), min_size=n_ch, max_size=n_ch))
        ranges = [draw(st.integers(2, 2 ** b)) for b in bits]
        cols = [draw(st.lists(st.integers(0, min(r, 2 ** b) - 1), min_size=n_ev, max_size=n_ev))
                for b, r in zip(bits, ranges)]
        events = np.array(cols, dtype=np.float64).T
    else:
        bits = None
        # explicit ranges: the writer's default range from a column maximum above 2**63 fails (reported)
        ranges = [262144] * n_ch
        events = np.array(draw(st.lists(st.lists(f32, min_size=n_ch, max_size=n_ch), min_size=n_ev,
                                        max_size=n_ev)), dtype=np.float64)
    keywords = draw(st.dictionaries(st.from_regex(r"X_[A-Z0-9]{1,8}", fullmatch=True), value_st, max_size=4))
    spillover = None
    if draw(st.booleans()):
        k = draw(st.integers(1, n_ch))
        names = pnn[:k]
        off = draw(st.lists(st.floats(-0.3, 0.3, allow_nan=False), min_size=k * k, max_size=k * k))
        matrix = np.eye(k) + np.array(off).reshape(k, k) * (1 - np.eye(k))
        spillover = (names, matrix)
    return dict(version=version, datatype=datatype, byteorder=byteorder, pnn=pnn, pns=pns, bits=bits,
                ranges=ranges, events=events, keywords=keywords, spillover=spillover)


@pytest.mark.slow
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=fcs_files())
def test_written_files_read_back_exactly(spec: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = write_fcs(Path(tmp) / "t.fcs", spec["events"], spec["pnn"], spec["pns"], version=spec["version"],
                         datatype=spec["datatype"], byteorder=spec["byteorder"], bits=spec["bits"],
                         ranges=spec["ranges"], spillover=spec["spillover"], keywords=spec["keywords"])
        sample = read_fcs(path)
    assert sample.version == spec["version"]
    assert sample.warnings == []
    assert sample.events.dtype == np.float32
    np.testing.assert_array_equal(sample.events, spec["events"].astype(np.float32))
    assert sample.pnn == spec["pnn"]
    assert sample.pns == [p or "" for p in spec["pns"]]
    for key, value in spec["keywords"].items():
        assert sample.keywords[key] == value
    assert sample.keywords["$DATATYPE"] == spec["datatype"]
    assert [c.range for c in sample.channels] == [float(r) for r in spec["ranges"]]
    if spec["bits"] is not None:
        assert [c.bits for c in sample.channels] == spec["bits"]
    if spec["spillover"] is None:
        assert sample.spillover is None
    else:
        names, matrix = spec["spillover"]
        assert sample.spillover is not None
        assert list(sample.spillover.channels) == names
        np.testing.assert_array_equal(sample.spillover.matrix, matrix)


def test_roundtrip_with_unusual_delimiter_values(tmp_path: Path) -> None:
    events = np.array([[1, 2], [3, 4]], dtype=np.float64)
    kw = {"X_A": "/leading", "X_B": "trailing/", "X_C": "/", "X_D": "a//b", "X_E": "$5 $$ $P1N"}
    path = write_fcs(tmp_path / "d.fcs", events, ["A/B", "$C"], ["/x/", None], keywords=kw)
    sample = read_fcs(path)
    assert sample.pnn == ["A/B", "$C"] and sample.pns == ["/x/", ""]
    for key, value in kw.items():
        assert sample.keywords[key] == value
    assert sample.warnings == []


@pytest.mark.parametrize("datatype,byteorder", [("F", "<"), ("F", ">"), ("D", "<"), ("I", ">"), ("I", "<")])
@pytest.mark.parametrize("pad", [0, 1, 2, 3])
def test_read_once_and_hashed_as_read_fcs(tmp_path: Path, datatype: str, byteorder: str, pad: int) -> None:
    """read_fcs_sha256 decodes the events from the bytes it hashed: the same sample as read_fcs and the
    file's SHA-256, with the DATA segment at any byte offset (TEXT padded by a keyword's length; HEADER
    DATA offsets blank) and the events aligned."""
    import hashlib

    from bat_analysis.io.fcs import read_fcs_sha256

    rng = np.random.default_rng(pad)
    events = rng.integers(0, 1000, size=(3000, 5)).astype(np.float64)
    path = write_fcs(tmp_path / "t.fcs", events, ["FSC-A", "SSC-A", "FL1-A", "FL2-A", "Time"],
                     datatype=datatype, byteorder=byteorder, bits=16 if datatype == "I" else None,
                     keywords={"X_PAD": "x" * (pad + 1), "$TIMESTEP": "0.01"})
    variants = [path]
    blank = bytearray(path.read_bytes())  # the same file with blank HEADER DATA offsets (TEXT ones used)
    blank[26:42] = b" " * 16
    variants.append(tmp_path / "blank.fcs")
    variants[-1].write_bytes(bytes(blank))
    variants.append(tmp_path / "trailing.fcs")  # bytes after the data set: hashed, not read as events
    variants[-1].write_bytes(path.read_bytes() + b"\0junk" * 1000)
    for p in variants:
        expected = read_fcs(p)
        sample, sha = read_fcs_sha256(p)
        assert sha == hashlib.sha256(p.read_bytes()).hexdigest()
        assert sample.events.flags.aligned and sample.events.flags.c_contiguous
        np.testing.assert_array_equal(sample.events.view(np.uint32), expected.events.view(np.uint32))
        assert (sample.keywords, sample.warnings, sample.channels) == \
            (expected.keywords, expected.warnings, expected.channels)
