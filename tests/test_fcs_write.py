"""The FCS writer: every version, data type, byte order and bit width reads back exactly (FlowIO, FlowKit and
the project's reader), offsets obey the standard, delimiters are escaped, bad input is refused clearly."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import flowio
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bat_analysis.errors import FcsFormatError
from bat_analysis.io import fcs_write
from bat_analysis.io.fcs import read_fcs, read_fcs_keywords
from bat_analysis.io.fcs_write import write_fcs

NAMES = ["FSC-A", "SSC-A", "FITC-A", "PE-A", "Time"]


def _events(rng: np.random.Generator, datatype: str, n: int = 200, bits: int = 16) -> np.ndarray:
    if datatype == "I":
        return rng.integers(0, 2 ** bits, size=(n, len(NAMES))).astype(np.float64)
    return rng.normal(1000.0, 400.0, size=(n, len(NAMES)))


def _header_offsets(path: Path) -> tuple[str, list[int]]:
    head = path.read_bytes()[:58]
    return head[:6].decode(), [int(head[10 + 8 * i:18 + 8 * i]) for i in range(6)]


@pytest.mark.parametrize("version,datatype,byteorder",
                         list(itertools.product(["2.0", "3.0", "3.1"], "IFD", "<>")))
def test_round_trip_flowio_exact(tmp_path: Path, version: str, datatype: str, byteorder: str) -> None:
    rng = np.random.default_rng(1)
    ev = _events(rng, datatype)
    path = write_fcs(tmp_path / "x.fcs", ev, NAMES, [None, None, "CD63", "CCR3", None], version=version,
                     datatype=datatype, byteorder=byteorder)
    fd = flowio.FlowData(str(path))
    got = fd.as_array(preprocess=False)
    want = ev.astype(np.float32) if datatype == "F" else ev
    assert got.shape == ev.shape
    assert np.array_equal(got, want)
    assert fd.text["byteord"] == ("1,2,3,4" if byteorder == "<" else "4,3,2,1")
    assert fd.text["datatype"] == datatype
    assert fd.text["p3s"] == "CD63" and "p1s" not in fd.text
    assert _header_offsets(path)[0] == f"FCS{version}"


@pytest.mark.parametrize("datatype", "IFD")
def test_round_trip_project_reader(tmp_path: Path, datatype: str) -> None:
    rng = np.random.default_rng(2)
    ev = _events(rng, datatype, bits=8)
    path = write_fcs(tmp_path / "x.fcs", ev, NAMES, version="3.0", datatype=datatype, byteorder=">",
                     bits=8 if datatype == "I" else None)
    sample = read_fcs(path)
    want = ev.astype(np.float32)
    assert np.array_equal(sample.events, want)
    assert sample.pnn == NAMES
    assert sample.warnings == []


def test_variable_integer_widths_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    ev = np.column_stack([rng.integers(0, 256, 300), rng.integers(0, 65536, 300),
                          rng.integers(0, 2 ** 32, 300, dtype=np.uint64)]).astype(np.float64)
    for order in "<>":
        path = write_fcs(tmp_path / f"v{order == '<'}.fcs", ev, ["A", "B", "C"], version="3.0", datatype="I",
                         bits=[8, 16, 32], byteorder=order)
        got = flowio.FlowData(str(path)).as_array(preprocess=False)
        assert np.array_equal(got, ev)
        text = read_fcs_keywords(path)
        assert [text[f"$P{i}B"] for i in (1, 2, 3)] == ["8", "16", "32"]
        _, offsets = _header_offsets(path)
        assert offsets[3] - offsets[2] + 1 == 300 * (1 + 2 + 4)


def test_offsets_follow_the_standard(tmp_path: Path) -> None:
    ev = np.arange(40, dtype=np.float64).reshape(8, 5)
    path = write_fcs(tmp_path / "x.fcs", ev, NAMES)
    raw = path.read_bytes()
    _, (t0, t1, d0, d1, a0, a1) = _header_offsets(path)
    text = read_fcs_keywords(path)
    assert raw[t0:t0 + 1] == b"/" and raw[t1:t1 + 1] == b"/"  # TEXT starts and ends with the delimiter
    assert (int(text["$BEGINDATA"]), int(text["$ENDDATA"])) == (d0, d1)
    assert d0 == t1 + 1 and d1 == len(raw) - 1 and d1 - d0 + 1 == ev.size * 4
    assert (a0, a1) == (0, 0)
    assert np.array_equal(np.frombuffer(raw[d0:d1 + 1], "<f4").reshape(8, 5), ev.astype(np.float32))


def test_blank_header_offsets_beyond_99999999(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Offsets that do not fit the HEADER are written as 0 there and read from $BEGINDATA/$ENDDATA."""
    monkeypatch.setattr(fcs_write, "_HEADER_MAX", 1000)
    rng = np.random.default_rng(4)
    ev = rng.normal(size=(100, 5))
    path = write_fcs(tmp_path / "big.fcs", ev, NAMES)
    _, (t0, t1, d0, d1, _, _) = _header_offsets(path)
    assert (t0, d0, d1) == (256, 0, 0) and t1 < 1000
    text = read_fcs_keywords(path)
    assert int(text["$BEGINDATA"]) == t1 + 1 and int(text["$ENDDATA"]) == path.stat().st_size - 1
    assert np.array_equal(read_fcs(path).events, ev.astype(np.float32))
    with pytest.raises(FcsFormatError, match="FCS 2.0"):
        write_fcs(tmp_path / "old.fcs", ev, NAMES, version="2.0")
    assert not (tmp_path / "old.fcs").exists()


@pytest.mark.slow
def test_real_file_beyond_99999999_bytes(tmp_path: Path) -> None:
    n = 2_600_000  # 2.6M events x 10 channels x 4 bytes = 104 MB
    ev = np.zeros((n, 10), dtype=np.float32)
    ev[:, 0] = np.arange(n, dtype=np.float32)
    names = [f"C{i}" for i in range(10)]
    path = write_fcs(tmp_path / "huge.fcs", ev, names)
    _, (_, _, d0, d1, _, _) = _header_offsets(path)
    assert (d0, d1) == (0, 0)
    text = read_fcs_keywords(path)
    assert int(text["$ENDDATA"]) == path.stat().st_size - 1 > 99_999_999
    got = read_fcs(path).events
    assert got.shape == (n, 10) and np.array_equal(got[:, 0], ev[:, 0])


@pytest.mark.parametrize("version,key", [("3.1", "$SPILLOVER"), ("3.0", "$SPILL"), ("2.0", "$SPILL")])
def test_spillover_keyword_and_compensation(tmp_path: Path, version: str, key: str) -> None:
    import flowkit as fk

    rng = np.random.default_rng(5)
    ev = rng.normal(2000.0, 500.0, size=(500, 5))
    spill = np.array([[1.0, 0.21], [0.013, 1.0]])
    path = write_fcs(tmp_path / "s.fcs", ev, NAMES, version=version, spillover=(["FITC-A", "PE-A"], spill))
    text = read_fcs_keywords(path)
    assert text[key] == "2,FITC-A,PE-A,1,0.21,0.013,1"
    other = "$SPILL" if key == "$SPILLOVER" else "$SPILLOVER"
    assert other not in text
    sample = fk.Sample(str(path))
    sample.apply_compensation(text[key])
    comp = sample.get_events("comp")
    want = ev[:, 2:4].astype(np.float32).astype(np.float64) @ np.linalg.inv(spill)
    np.testing.assert_allclose(comp[:, 2:4], want, rtol=1e-6, atol=1e-6)
    ours = read_fcs(path).spillover
    assert ours is not None and list(ours.channels) == ["FITC-A", "PE-A"]
    np.testing.assert_array_equal(np.asarray(ours.matrix), spill)


@pytest.mark.parametrize("value", ["a/b", "/leading", "trailing/", "two//slashes", "/"])
def test_delimiter_in_values_is_escaped(tmp_path: Path, value: str) -> None:
    ev = np.ones((3, 5))
    path = write_fcs(tmp_path / "d.fcs", ev, NAMES, ["CD63/LAMP3", None, None, None, None],
                     keywords={"$COM": value, "$SRC": "after"})
    raw = path.read_bytes()
    assert b"CD63//LAMP3" in raw
    assert b"/$COM/" + value.replace("/", "//").encode() + b"/$SRC/after/" in raw
    text = read_fcs_keywords(path)
    assert text["$COM"] == value
    assert text["$P1S"] == "CD63/LAMP3"
    assert text["$SRC"] == "after"


def test_other_delimiter(tmp_path: Path) -> None:
    path = write_fcs(tmp_path / "p.fcs", np.ones((2, 5)), NAMES, keywords={"$COM": "a|b/c"}, delimiter="|")
    raw = path.read_bytes()
    assert raw[256:257] == b"|" and b"a||b/c" in raw
    assert read_fcs_keywords(path)["$COM"] == "a|b/c"


def test_ranges_and_keywords(tmp_path: Path) -> None:
    ev = np.array([[1.0, 2.0, 3.0, 4.0, 300000.5]])
    path = write_fcs(tmp_path / "r.fcs", ev, NAMES, keywords={"$CYT": "Sim", "$TIMESTEP": 0.01, "$P1R": 1024})
    text = read_fcs_keywords(path)
    assert text["$CYT"] == "Sim" and text["$TIMESTEP"] == "0.01"
    assert text["$P1R"] == "1024"  # a caller may override a channel keyword
    assert text["$P2R"] == "262144" and text["$P5R"] == "300001"  # default: max(262144, ceil(max))
    assert text["$P1E"] == "0,0" and text["$P1B"] == "32" and text["$MODE"] == "L"
    assert text["$TOT"] == "1" and text["$PAR"] == "5" and text["$NEXTDATA"] == "0"


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "a.fcs"
    path.write_bytes(b"old")
    write_fcs(path, np.ones((4, 5)), NAMES)
    assert path.read_bytes()[:6] == b"FCS3.1"
    with pytest.raises(FcsFormatError):
        write_fcs(path, np.full((4, 5), np.nan), NAMES)
    assert path.read_bytes()[:6] == b"FCS3.1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.fcs"]
    mask = os.umask(0o022)
    os.umask(mask)
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~mask)  # an ordinary file: 0666 less the umask


def test_empty_data_set(tmp_path: Path) -> None:
    path = write_fcs(tmp_path / "e.fcs", np.empty((0, 5)), NAMES)
    text = read_fcs_keywords(path)
    assert text["$TOT"] == "0" and text["$BEGINDATA"] == "0" and text["$ENDDATA"] == "0"
    assert path.stat().st_size == int(_header_offsets(path)[1][1]) + 1  # nothing after TEXT


@pytest.mark.parametrize("kwargs,field", [
    (dict(events=np.full((2, 5), np.nan)), "events"),
    (dict(events=np.ones((2, 4))), "$PnN"),
    (dict(pnn=["A", "A", "B", "C", "D"]), "$PnN"),
    (dict(pnn=["A", "", "B", "C", "D"]), "$PnN"),
    (dict(pns=["x"]), "$PnS"),
    (dict(version="3.2"), "version"),
    (dict(datatype="A"), "$DATATYPE"),
    (dict(byteorder="middle"), "$BYTEORD"),
    (dict(datatype="I", events=np.full((2, 5), 1.5)), "events"),
    (dict(datatype="I", events=np.full((2, 5), -1.0)), "$P1R"),
    (dict(datatype="I", bits=16, events=np.full((2, 5), 70000.0)), "$P1R"),
    (dict(datatype="I", bits=16, ranges=1024, events=np.full((2, 5), 1024.0)), "$P1R"),
    (dict(datatype="I", bits=12), "$PnB"),
    (dict(datatype="F", bits=64), "$PnB"),
    (dict(ranges=[1, 2]), "$PnR"),
    (dict(ranges=-5), "$P1R"),
    (dict(spillover=(["FITC-A", "APC-A"], np.eye(2))), "$SPILLOVER"),
    (dict(spillover=(["FITC-A"], np.eye(2))), "$SPILLOVER"),
    (dict(version="3.0", spillover=(["FITC-A", "PE-A"], [[1, np.inf], [0, 1]])), "$SPILL"),
    (dict(keywords={"$TOT": "5"}), "$TOT"),
    (dict(keywords={"$com": ""}), "$com"),
    (dict(keywords={"$CYT": "a", "$cyt": "b"}), "$cyt"),
    (dict(delimiter="ab"), "delimiter"),
])
def test_bad_input_refused_with_field(tmp_path: Path, kwargs: dict, field: str) -> None:
    args = dict(events=np.ones((2, 5)), pnn=NAMES)
    args.update(kwargs)
    target = tmp_path / "bad.fcs"
    with pytest.raises(FcsFormatError) as info:
        write_fcs(target, args.pop("events"), args.pop("pnn"), **args)
    assert info.value.field == field
    assert str(target) in str(info.value)
    assert not target.exists()


_DATATYPE_BITS = st.sampled_from([("I", 8), ("I", 16), ("I", 32), ("F", 32), ("D", 64)])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(version=st.sampled_from(["2.0", "3.0", "3.1"]), dt_bits=_DATATYPE_BITS, order=st.sampled_from("<>"),
       n_events=st.integers(1, 50), n_channels=st.integers(1, 6), seed=st.integers(0, 2 ** 32 - 1))
def test_random_files_read_back_exactly(tmp_path: Path, version: str, dt_bits: tuple[str, int], order: str,
                                        n_events: int, n_channels: int, seed: int) -> None:
    datatype, bits = dt_bits
    rng = np.random.default_rng(seed)
    if datatype == "I":
        ev = rng.integers(0, 2 ** bits, size=(n_events, n_channels), dtype=np.uint64).astype(np.float64)
    else:
        ev = rng.normal(0.0, 1e4, size=(n_events, n_channels))
    names = [f"P{i}" for i in range(n_channels)]
    path = write_fcs(tmp_path / f"h{os.getpid()}.fcs", ev, names, version=version, datatype=datatype,
                     byteorder=order, bits=bits)
    fd = flowio.FlowData(str(path))
    got = fd.as_array(preprocess=False).reshape(n_events, n_channels)
    want = ev.astype(np.float32) if datatype == "F" else ev
    assert np.array_equal(got, want)
    assert fd.channel_count == n_channels and fd.event_count == n_events


_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(_TEXT, min_size=1, max_size=4), pns=_TEXT, delimiter=st.sampled_from(["/", "|", "\\", "*"]))
def test_random_keyword_values_read_back(tmp_path: Path, values: list[str], pns: str, delimiter: str) -> None:
    """Any printable value, the delimiter included (doubled on writing), reads back unchanged."""
    keywords = {f"BAT KEY {i}": v for i, v in enumerate(values)}
    path = write_fcs(tmp_path / "k.fcs", np.ones((2, 2)), ["FSC-A", "FITC-A"], [None, pns], keywords=keywords,
                     delimiter=delimiter)
    text = read_fcs_keywords(path)
    for key, value in keywords.items():
        assert text[key] == value
    if pns.strip():
        assert text["$P2S"] == pns


def test_default_range_of_huge_float_values(tmp_path: Path) -> None:
    """A float column beyond 2**63 gets a $PnR from its maximum instead of a TypeError."""
    from bat_analysis.io.fcs import read_fcs

    path = write_fcs(tmp_path / "huge.fcs", np.array([[1.9e19]], dtype=np.float32), ["A"])
    sample = read_fcs(path)
    assert sample.events[0, 0] == np.float32(1.9e19)
    assert sample.channels[0].range >= 1.9e19
