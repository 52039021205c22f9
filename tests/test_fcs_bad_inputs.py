"""Damaged and unusual FCS files: each is refused with an FcsFormatError naming the file, the field and what
was expected, or read with the oddity recorded in ``warnings`` where the standard's intent is unambiguous."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from guards import no_hang

from bat_analysis.errors import BatError, FcsFormatError, MarkerError
from bat_analysis.io.fcs import HEADER_LENGTH, read_fcs, read_fcs_sha256
from bat_analysis.io.markers import resolve_marker

PLACEHOLDER = "0" * 10


def build_fcs(pairs: list[tuple[str, str]], data: bytes, *, version: str = "3.1", delim: bytes = b"/",
              text_start: int = 256, offsets: bool = True) -> bytes:
    """Bytes of an FCS file with the given TEXT keywords (delimiters in them doubled) and DATA segment.

    ``$BEGINDATA``/``$ENDDATA`` are added (``offsets=True``) and filled, like the HEADER, with the real offsets."""
    d = delim.decode("latin-1")
    all_pairs = list(pairs)
    if offsets:
        all_pairs = [("$BEGINDATA", PLACEHOLDER), ("$ENDDATA", PLACEHOLDER)] + all_pairs
    body = d + "".join(f"{k.replace(d, d * 2)}{d}{v.replace(d, d * 2)}{d}" for k, v in all_pairs)
    text = body.encode("utf-8")
    text_end = text_start + len(text) - 1
    data_start = text_end + 1 if data else 0
    data_end = data_start + len(data) - 1 if data else 0
    if offsets:
        text = text.replace(PLACEHOLDER.encode(), f"{data_start:010d}".encode(), 1)
        text = text.replace(PLACEHOLDER.encode(), f"{data_end:010d}".encode(), 1)
    header = f"FCS{version}    {text_start:>8}{text_end:>8}{data_start:>8}{data_end:>8}{0:>8}{0:>8}"
    return header.encode("ascii").ljust(text_start, b" ") + text + data


def float_file(events: np.ndarray, names: list[str], *, order: str = "<", extra: list[tuple[str, str]] = (),
               version: str = "3.1") -> bytes:
    """A list-mode float32 FCS file of ``events`` named ``names``."""
    events = np.asarray(events, dtype=np.float32)
    pairs = [("$BYTEORD", "1,2,3,4" if order == "<" else "4,3,2,1"), ("$DATATYPE", "F"), ("$MODE", "L"),
             ("$NEXTDATA", "0"), ("$PAR", str(events.shape[1])), ("$TOT", str(events.shape[0]))]
    for i, name in enumerate(names, start=1):
        pairs += [(f"$P{i}N", name), (f"$P{i}B", "32"), (f"$P{i}E", "0,0"), (f"$P{i}R", "262144")]
    pairs += list(extra)
    return build_fcs(pairs, events.astype(np.dtype("float32").newbyteorder(order)).tobytes(), version=version)


EVENTS = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.5]], dtype=np.float32)
NAMES = ["FSC-A", "SSC-A", "FITC-A"]


def write(tmp_path: Path, content: bytes, name: str = "tube.fcs") -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def refused(path: Path, field_part: str, *, message_part: str | None = None, **kwargs) -> FcsFormatError:
    """Assert read_fcs refuses ``path`` with an FcsFormatError naming the file and the field, and that
    read_fcs_sha256 (the file read once, in memory, and hashed) refuses it with the same error."""
    with pytest.raises(FcsFormatError) as info:
        read_fcs(path, **kwargs)
    err = info.value
    if set(kwargs) <= {"dataset", "panel"}:
        with pytest.raises(FcsFormatError) as hashed:
            read_fcs_sha256(path, **kwargs)
        assert (str(hashed.value), hashed.value.field) == (str(err), err.field)
    assert err.source == str(path)
    assert err.field is not None and field_part in err.field, (err.field, str(err))
    assert str(path) in str(err)
    if message_part is not None:
        assert message_part in str(err), str(err)
    return err


def test_builder_makes_a_valid_file(tmp_path: Path) -> None:
    sample = read_fcs(write(tmp_path, float_file(EVENTS, NAMES)))
    np.testing.assert_array_equal(sample.events, EVENTS)
    assert sample.pnn == NAMES
    assert sample.warnings == []


def test_empty_file(tmp_path: Path) -> None:
    err = refused(write(tmp_path, b""), "HEADER", message_part="empty")
    assert err.expected


def test_not_an_fcs_file(tmp_path: Path) -> None:
    content = b"file,patient,condition\n" + b"a.fcs,P1,negative_control\n" * 5
    refused(write(tmp_path, content), "HEADER", message_part="does not start with 'FCS'")


def test_unknown_version(tmp_path: Path) -> None:
    content = bytearray(float_file(EVENTS, NAMES))
    content[3:6] = b"9.9"
    refused(write(tmp_path, bytes(content)), "HEADER", message_part="unknown version")


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(FcsFormatError, match="not found"):
        read_fcs(tmp_path / "absent.fcs")
    with pytest.raises(FcsFormatError, match="directory"):
        read_fcs(tmp_path)


def test_truncated_header(tmp_path: Path) -> None:
    refused(write(tmp_path, float_file(EVENTS, NAMES)[:30]), "HEADER", message_part="58-byte")


def test_truncated_text(tmp_path: Path) -> None:
    content = float_file(EVENTS, NAMES)
    refused(write(tmp_path, content[:300]), "TEXT", message_part="outside the file")


def test_truncated_data(tmp_path: Path) -> None:
    content = float_file(EVENTS, NAMES)
    err = refused(write(tmp_path, content[:-10]), "$ENDDATA")
    assert "36 bytes" in str(err) or "cannot be reconciled" in str(err)


def test_header_offsets_not_numbers(tmp_path: Path) -> None:
    content = bytearray(float_file(EVENTS, NAMES))
    content[10:18] = b"  abc123"
    refused(write(tmp_path, bytes(content)), "HEADER bytes 10-17", message_part="not a number")


@pytest.mark.parametrize("tot", ["4", "2"])
def test_tot_inconsistent_with_data(tmp_path: Path, tot: str) -> None:
    content = float_file(EVENTS, NAMES).replace(b"/$TOT/3/", f"/$TOT/{tot}/".encode())
    refused(write(tmp_path, content), "$ENDDATA", message_part="cannot be reconciled")


def test_par_inconsistent_with_channels(tmp_path: Path) -> None:
    content = float_file(EVENTS, NAMES).replace(b"/$PAR/3/", b"/$PAR/4/")
    refused(write(tmp_path, content), "$P4B", message_part="missing")


def test_par_smaller_than_data(tmp_path: Path) -> None:
    content = float_file(EVENTS, NAMES).replace(b"/$PAR/3/", b"/$PAR/2/")
    refused(write(tmp_path, content), "$ENDDATA", message_part="cannot be reconciled")


def test_data_offsets_outside_file(tmp_path: Path) -> None:
    content = float_file(EVENTS, NAMES)
    for key, value in (b"$BEGINDATA/", b"0099999000"), (b"$ENDDATA/", b"0099999035"):
        start = content.index(key) + len(key)
        content = content[:start] + value + content[start + 10:]
    head = bytearray(content)
    head[26:42] = b"       0       0"  # blank HEADER offsets, as for a large file
    refused(write(tmp_path, bytes(head)), "$BEGINDATA", message_part="outside the file")


def test_text_offsets_outside_file(tmp_path: Path) -> None:
    content = bytearray(float_file(EVENTS, NAMES))
    content[18:26] = b"  900000"
    refused(write(tmp_path, bytes(content)), "TEXT", message_part="outside the file")


@pytest.mark.parametrize("keyword, field", [("$DATATYPE", "$DATATYPE"), ("$BYTEORD", "$BYTEORD"),
                                            ("$PAR", "$PAR"), ("$TOT", "$TOT"), ("$P2B", "$P2B"),
                                            ("$P3R", "$P3R")])
def test_missing_required_keyword(tmp_path: Path, keyword: str, field: str) -> None:
    renamed = "X" + keyword[1:]  # same length, so every offset stays valid
    content = float_file(EVENTS, NAMES).replace(f"/{keyword}/".encode(), f"/{renamed}/".encode())
    refused(write(tmp_path, content), field)


def test_delimiter_must_not_be_a_letter(tmp_path: Path) -> None:
    content = bytearray(float_file(EVENTS, NAMES))
    text_start = int(content[10:18])
    content[text_start] = ord("A")
    refused(write(tmp_path, bytes(content)), "TEXT", message_part="starts with")


def test_doubled_delimiter_that_breaks_pairs(tmp_path: Path) -> None:
    pairs = [("$BYTEORD", "1,2,3,4"), ("$DATATYPE", "F"), ("$MODE", "L"), ("$NEXTDATA", "0"), ("$PAR", "1"),
             ("$TOT", "1"), ("$P1N", "FSC-A"), ("$P1B", "32"), ("$P1E", "0,0"), ("$P1R", "1024")]
    good = build_fcs(pairs, np.array([1.0], dtype="<f4").tobytes())
    # "$P1N/FSC-A/" -> "$P1N/FSC-A//$X/": a stray keyword without a value (odd number of fields)
    bad = good.replace(b"/$P1B/32/", b"/$P1B/32/$X/")
    bad = bytearray(bad)
    text_end = int(bad[18:26]) + 3
    bad[18:26] = f"{text_end:>8}".encode()
    refused(write(tmp_path, bytes(bad)), "TEXT", message_part="no value")


def test_escaped_delimiters_and_dollar_signs_kept(tmp_path: Path) -> None:
    extra = [("$COM", "cost $5/tube $$"), ("$SRC", "a//b"), ("PLATE", "/starts with the delimiter")]
    sample = read_fcs(write(tmp_path, float_file(EVENTS, NAMES, extra=extra)))
    assert sample.keywords["$COM"] == "cost $5/tube $$"
    assert sample.keywords["$SRC"] == "a//b"
    assert sample.keywords["PLATE"] == "/starts with the delimiter"


def test_empty_values_written_as_doubled_delimiters(tmp_path: Path) -> None:
    content = float_file(EVENTS, NAMES, extra=[("$COM", "X"), ("$SMNO", "Y")])
    content = content.replace(b"/$COM/X/$SMNO/Y/", b"/$COM//$SMNO//  ")  # same length, empty values
    sample = read_fcs(write(tmp_path, content))
    assert sample.keywords["$COM"] == "" and sample.keywords["$SMNO"] == ""
    assert any("empty value" in w for w in sample.warnings)
    np.testing.assert_array_equal(sample.events, EVENTS)


def test_non_ascii_utf8_values_read_exactly(tmp_path: Path) -> None:
    extra = [("$P3S", "CD63 µ-FITC"), ("$OP", "Zoë Ångström")]
    sample = read_fcs(write(tmp_path, float_file(EVENTS, NAMES, extra=extra)))
    assert sample.pns[2] == "CD63 µ-FITC"
    assert sample.keywords["$OP"] == "Zoë Ångström"
    assert sample.warnings == []


def test_non_utf8_values_read_as_latin1_with_warning(tmp_path: Path) -> None:
    content = float_file(EVENTS, NAMES, extra=[("$OP", "Zoe")]).replace(b"/$OP/Zoe/", b"/$OP/Zo\xeb/")
    sample = read_fcs(write(tmp_path, content))
    assert sample.keywords["$OP"] == "Zoë"
    assert any("$OP" in w and "Latin-1" in w for w in sample.warnings)


def test_duplicate_channel_names(tmp_path: Path) -> None:
    names = ["FSC-A", "FITC-A", "FITC-A"]
    content = float_file(EVENTS, names, extra=[("$P2S", "CD63"), ("$P3S", "CD63")])
    sample = read_fcs(write(tmp_path, content))
    assert any("duplicate channel names" in w and "FITC-A" in w for w in sample.warnings)
    with pytest.raises(MarkerError) as info:
        sample.column("FITC-A")
    assert info.value.field == "$PnN"
    with pytest.raises(MarkerError, match="ambiguous"):
        resolve_marker(sample.channels, "CD63", source=str(sample.path))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_event_values(tmp_path: Path, bad: float) -> None:
    events = EVENTS.copy()
    events[1, 2] = bad
    path = write(tmp_path, float_file(events, NAMES))
    refused(path, "DATA", message_part="FITC-A (1)")
    sample = read_fcs(path, allow_nonfinite=True)
    assert any("non-finite" in w for w in sample.warnings)
    assert not np.isfinite(sample.events[1, 2])


def test_log_scaling_overflow_is_refused(tmp_path: Path) -> None:
    content = float_file(EVENTS * 1000, NAMES).replace(b"/$P3E/0,0/", b"/$P3E/9,1/")
    content = content.replace(b"/$P3R/262144/", b"/$P3R/000001/")
    refused(write(tmp_path, content), "DATA", message_part="non-finite")


def test_zero_events(tmp_path: Path) -> None:
    content = float_file(np.zeros((0, 3), dtype=np.float32), NAMES)
    refused(write(tmp_path, content), "$TOT", message_part="no events")


def _spill_file(value: str) -> bytes:
    return float_file(EVENTS, NAMES, extra=[("$SPILLOVER", value)])


@pytest.mark.parametrize("value, phrase", [
    ("2,SSC-A,PE-A,1,0.1,0.2,1", "unknown channels 'PE-A'"),
    ("2,SSC-A,FITC-A,1,1,1,1", "singular"),
    ("2,SSC-A,FITC-A,1,0.1", "fields for a 2x2 matrix"),
    ("two,SSC-A,FITC-A,1,0,0,1", "not an integer"),
    ("2,SSC-A,FITC-A,1,x,0,1", "non-numeric"),
])
def test_unusable_spillover(tmp_path: Path, value: str, phrase: str) -> None:
    path = write(tmp_path, _spill_file(value))
    sample = read_fcs(path)
    assert sample.spillover is None
    assert any(phrase in w for w in sample.warnings), sample.warnings
    with pytest.raises(FcsFormatError) as info:
        sample.require_spillover()
    assert phrase in str(info.value) and str(path) in str(info.value)
    refused(path, "$SPILLOVER", message_part=phrase, strict_spillover=True)


def test_valid_spillover(tmp_path: Path) -> None:
    sample = read_fcs(write(tmp_path, _spill_file("2,SSC-A,FITC-A,1,0.125,0.25,1")))
    assert sample.spillover is not None and sample.spillover.channels == ("SSC-A", "FITC-A")
    np.testing.assert_array_equal(sample.spillover.matrix, [[1, 0.125], [0.25, 1]])
    assert sample.require_spillover() is sample.spillover


def test_no_spillover(tmp_path: Path) -> None:
    sample = read_fcs(write(tmp_path, float_file(EVENTS, NAMES)))
    assert sample.spillover is None
    with pytest.raises(FcsFormatError, match="no spillover"):
        sample.require_spillover()


@pytest.mark.parametrize("keyword, value, field", [
    ("$BYTEORD", "3,4,1,2", "$BYTEORD"), ("$DATATYPE", "X", "$DATATYPE"), ("$MODE", "C", "$MODE"),
    ("$P1E", "4", "$P1E"), ("$P1E", "a,b", "$P1E"), ("$TOT", "-3", "$TOT"), ("$P1R", "abc", "$P1R"),
    ("$P1B", "16", "$P1B"),
])
def test_bad_keyword_values(tmp_path: Path, keyword: str, value: str, field: str) -> None:
    pairs = [("$BYTEORD", "1,2,3,4"), ("$DATATYPE", "F"), ("$MODE", "L"), ("$NEXTDATA", "0"), ("$PAR", "1"),
             ("$TOT", "2"), ("$P1N", "FSC-A"), ("$P1B", "32"), ("$P1E", "0,0"), ("$P1R", "1024")]
    pairs = [(k, value if k == keyword else v) for k, v in pairs]
    path = write(tmp_path, build_fcs(pairs, np.array([1.0, 2.0], dtype="<f4").tobytes()))
    refused(path, field)


def test_integer_bit_masks_and_off_by_one_end(tmp_path: Path) -> None:
    pairs = [("$BYTEORD", "4,3,2,1"), ("$DATATYPE", "I"), ("$MODE", "L"), ("$NEXTDATA", "0"), ("$PAR", "2"),
             ("$TOT", "2"), ("$P1N", "FSC"), ("$P1B", "16"), ("$P1E", "0,0"), ("$P1R", "1000"),
             ("$P2N", "FL1"), ("$P2B", "16"), ("$P2E", "0,0"), ("$P2R", "65536")]
    data = np.array([[0xFC00 | 5, 0xFC00 | 5], [1023, 1024]], dtype=">u2").tobytes()
    content = build_fcs(pairs, data)
    # make $ENDDATA and the HEADER end one byte too far (vendor off-by-one)
    end = len(content) - 1
    content = content.replace(f"{end:010d}".encode(), f"{end + 1:010d}".encode())
    head = bytearray(content)
    head[34:42] = f"{end + 1:>8}".encode()
    sample = read_fcs(write(tmp_path, bytes(head) + b"\x00"))
    np.testing.assert_array_equal(sample.events, [[5, 0xFC05], [1023, 1024]])
    assert any("off-by-one" in w for w in sample.warnings)


def test_header_and_text_offsets_disagree(tmp_path: Path) -> None:
    content = bytearray(float_file(EVENTS, NAMES))
    content[26:34] = f"{int(content[26:34]) - 4:>8}".encode()  # HEADER data start 4 bytes early
    sample = read_fcs(write(tmp_path, bytes(content)))
    np.testing.assert_array_equal(sample.events, EVENTS)
    assert any("differ from TEXT" in w for w in sample.warnings)


def test_nextdata_pointing_back_is_ignored(tmp_path: Path) -> None:
    content = float_file(EVENTS, NAMES).replace(b"/$NEXTDATA/0/", b"/$NEXTDATA/1/")
    sample = read_fcs(write(tmp_path, content))
    assert sample.n_datasets == 1
    assert any("$NEXTDATA" in w for w in sample.warnings)


def test_two_data_sets_second_without_datatype(tmp_path: Path) -> None:
    second_events = EVENTS[:2] * 10
    first = float_file(EVENTS, NAMES).replace(b"/$NEXTDATA/0/", b"/$NEXTDATA/" + PLACEHOLDER.encode() + b"/")
    head = bytearray(first)
    shift = len(PLACEHOLDER) - 1  # the TEXT grew: move the HEADER and TEXT data offsets along
    text_end, data_start, data_end = (int(head[a:a + 8]) for a in (18, 26, 34))
    head[18:42] = f"{text_end + shift:>8}{data_start + shift:>8}{data_end + shift:>8}".encode()
    first = bytes(head)
    for key, value in (("$BEGINDATA", data_start), ("$ENDDATA", data_end)):
        first = first.replace(f"/{key}/{value:010d}/".encode(), f"/{key}/{value + shift:010d}/".encode())
    first = first.replace(PLACEHOLDER.encode() + b"/", f"{len(first):010d}/".encode(), 1) \
        if first.count(PLACEHOLDER.encode()) else first
    first = first.replace(b"/$NEXTDATA/" + PLACEHOLDER.encode(), f"/$NEXTDATA/{len(first):010d}".encode())
    second = float_file(second_events, NAMES).replace(b"/$DATATYPE/F/", b"/XDATATYPE/F/")
    path = write(tmp_path, first + second)
    s0 = read_fcs(path)
    np.testing.assert_array_equal(s0.events, EVENTS)
    assert s0.n_datasets == 2
    s1 = read_fcs(path, dataset=1)
    np.testing.assert_array_equal(s1.events, second_events)
    assert any("$DATATYPE missing in data set 1" in w for w in s1.warnings)


def test_ascii_delimited_data(tmp_path: Path) -> None:
    pairs = [("$BYTEORD", "1,2,3,4"), ("$DATATYPE", "A"), ("$MODE", "L"), ("$NEXTDATA", "0"), ("$PAR", "2"),
             ("$TOT", "3"), ("$P1N", "FSC"), ("$P1B", "*"), ("$P1E", "0,0"), ("$P1R", "1024"),
             ("$P2N", "SSC"), ("$P2B", "*"), ("$P2E", "0,0"), ("$P2R", "1024")]
    sample = read_fcs(write(tmp_path, build_fcs(pairs, b"1 2\n3 4\n5 6\n")))
    np.testing.assert_array_equal(sample.events, [[1, 2], [3, 4], [5, 6]])


def test_every_refusal_is_a_bat_error(tmp_path: Path) -> None:
    assert issubclass(FcsFormatError, BatError)


class _FakeFrame:
    def __init__(self, values: np.ndarray) -> None:
        self._values = values

    def to_numpy(self) -> np.ndarray:
        return self._values


def test_fcsparser_fallback_is_opt_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    content = float_file(EVENTS, NAMES).replace(b"/$TOT/3/", b"/$TOT/2/")
    path = write(tmp_path, content)
    calls = []

    def parse(source: str, **kwargs):
        calls.append(kwargs)
        meta = {"$BYTEORD": "1,2,3,4", "$DATATYPE": "F", "$PAR": 3, "$TOT": 2,
                "__header__": {"FCS format": "FCS3.1"}}
        for i, name in enumerate(NAMES, start=1):
            meta.update({f"$P{i}N": name, f"$P{i}B": 32, f"$P{i}E": "0,0", f"$P{i}R": 262144})
        return meta, _FakeFrame(EVENTS[:2].copy())

    monkeypatch.setitem(sys.modules, "fcsparser", types.SimpleNamespace(parse=parse))
    refused(path, "$ENDDATA")  # off by default
    assert calls == []
    sample = read_fcs(path, fallback=True)
    np.testing.assert_array_equal(sample.events, EVENTS[:2])
    assert sample.version == "3.1" and sample.pnn == NAMES
    assert any("read with fcsparser" in w and "cannot be reconciled" in w for w in sample.warnings)

    def broken(source: str, **kwargs):
        raise KeyError("$TOT")

    monkeypatch.setitem(sys.modules, "fcsparser", types.SimpleNamespace(parse=broken))
    err = refused(path, "$ENDDATA", fallback=True)
    assert "fcsparser fallback failed too" in str(err)


def test_fcsparser_fallback_without_fcsparser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "fcsparser", None)  # import fails
    path = write(tmp_path, float_file(EVENTS, NAMES).replace(b"/$TOT/3/", b"/$TOT/2/"))
    err = refused(path, "$ENDDATA", fallback=True)
    assert "fallback failed" not in str(err)


def test_real_fcsparser_fallback(tmp_path: Path) -> None:
    pytest.importorskip("fcsparser", reason="fcsparser is an optional extra (bat-analysis[fcsparser])")
    path = write(tmp_path, float_file(EVENTS, NAMES).replace(b"/$TOT/3/", b"/$TOT/2/"))
    sample = read_fcs(path, fallback=True)
    np.testing.assert_array_equal(sample.events, EVENTS[:2])
    assert any("read with fcsparser" in w for w in sample.warnings)


def test_junk_nextdata_reads_the_first_data_set(tmp_path: Path) -> None:
    sample = read_fcs(write(tmp_path, float_file(EVENTS, NAMES).replace(b"/$NEXTDATA/0/", b"/$NEXTDATA/x/")))
    np.testing.assert_array_equal(sample.events, EVENTS)
    assert sample.n_datasets == 1
    assert any("$NEXTDATA 'x'" in w for w in sample.warnings)


def test_data_beyond_99999999_bytes_read_from_text_offsets(tmp_path: Path) -> None:
    """A (sparse) file whose DATA starts beyond byte 99,999,999: HEADER offsets are 0, TEXT has them."""
    begin = 100_000_000
    data = EVENTS.astype("<f4").tobytes()
    content = float_file(EVENTS, NAMES)
    for key, value in ((b"$BEGINDATA/", begin), (b"$ENDDATA/", begin + len(data) - 1)):
        start = content.index(key) + len(key)
        content = content[:start] + f"{value:010d}".encode() + content[start + 10:]
    head = bytearray(content[: int(content[18:26]) + 1])  # HEADER and TEXT
    head[26:42] = f"{0:>8}{0:>8}".encode()
    path = tmp_path / "large.fcs"
    with open(path, "wb") as fh:
        fh.write(bytes(head))
        fh.seek(begin)
        fh.write(data)
    sample = read_fcs(path)
    np.testing.assert_array_equal(sample.events, EVENTS)
    assert not any("blank" in w for w in sample.warnings)


# ----------------------------------------------------------------------------- hostile $NEXTDATA chains
def shared_text_chain(n_sets: int = 10_000, n_filler: int = 120_000) -> bytes:
    """An FCS file of ``n_sets`` HEADERs packed one after another, all pointing to one TEXT segment (with
    ``n_filler`` extra keywords) whose ``$NEXTDATA`` is 58: every HEADER is the next data set of the one before.
    Data set 0 is valid (3 events); about 1.7 MB."""
    text_at = HEADER_LENGTH * n_sets
    pairs = [("$BEGINDATA", PLACEHOLDER), ("$ENDDATA", PLACEHOLDER), ("$BYTEORD", "1,2,3,4"), ("$DATATYPE", "F"),
             ("$MODE", "L"), ("$NEXTDATA", str(HEADER_LENGTH)), ("$PAR", "3"), ("$TOT", "3")]
    for i, name in enumerate(NAMES, start=1):
        pairs += [(f"$P{i}N", name), (f"$P{i}B", "32"), (f"$P{i}E", "0,0"), (f"$P{i}R", "262144")]
    pairs += [(f"F{k:05d}", "x") for k in range(n_filler)]
    text = ("/" + "".join(f"{k}/{v}/" for k, v in pairs)).encode()
    data_at = text_at + len(text)
    data = EVENTS.astype("<f4").tobytes()
    text = text.replace(PLACEHOLDER.encode(), f"{data_at:010d}".encode(), 1)
    text = text.replace(PLACEHOLDER.encode(), f"{data_at + len(data) - 1:010d}".encode(), 1)
    text_end = text_at + len(text) - 1
    headers = b"".join(f"FCS3.1    {text_at - b:>8}{text_end - b:>8}{0:>8}{0:>8}{0:>8}{0:>8}".encode()
                       for b in range(0, text_at, HEADER_LENGTH))
    return headers + text + data


@pytest.fixture()
def time_limit():
    """Fail a test that runs longer than 60 s instead of hanging the suite."""
    with no_hang(60, "the reader"):
        yield


def test_data_sets_sharing_one_text_are_refused_with_work_bounded_by_the_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, time_limit) -> None:
    import bat_analysis.io.fcs as fcs

    content = shared_text_chain()
    assert 1_500_000 < len(content) < 2_000_000
    path = write(tmp_path, content)
    tokenized: list[int] = []
    real = fcs._tokenize

    def counting(raw, delim, lenient):
        tokenized.append(len(raw))
        return real(raw, delim, lenient)

    monkeypatch.setattr(fcs, "_tokenize", counting)
    sample = read_fcs(path)
    np.testing.assert_array_equal(sample.events, EVENTS)
    assert sample.n_datasets == 1
    assert any("$NEXTDATA 58" in w and "overlapping data sets are not read" in w for w in sample.warnings), \
        sample.warnings
    assert sum(tokenized) <= 2 * len(content)  # each TEXT byte read once (twice if the lenient reading is tried)
    with pytest.raises(FcsFormatError, match=r"data set 5 requested, the file has 1 .*overlapping"):
        read_fcs(path, dataset=5)


def test_nextdata_into_own_data_segment_is_refused(tmp_path: Path) -> None:
    """A data set whose $NEXTDATA points inside its own DATA segment: what lies there is not a data set."""
    inner = float_file(EVENTS, NAMES)
    inner += b"\0" * (-len(inner) % 4)
    pairs = [("$BYTEORD", "1,2,3,4"), ("$DATATYPE", "F"), ("$MODE", "L"), ("$NEXTDATA", PLACEHOLDER),
             ("$PAR", "1"), ("$TOT", str(len(inner) // 4)), ("$P1N", "FSC-A"), ("$P1B", "32"), ("$P1E", "0,0"),
             ("$P1R", "262144")]
    outer = build_fcs(pairs, inner)  # the DATA segment holds a whole FCS file
    begin = int(outer[26:34])
    outer = outer.replace(f"/$NEXTDATA/{PLACEHOLDER}/".encode(), f"/$NEXTDATA/{begin:010d}/".encode())
    path = write(tmp_path, outer)
    sample = read_fcs(path, allow_nonfinite=True)
    assert sample.n_datasets == 1
    assert any("inside that data set" in w for w in sample.warnings), sample.warnings
    with pytest.raises(FcsFormatError, match="overlapping"):
        read_fcs(path, dataset=1)


# ----------------------------------------------------------------------------------------------- ASCII DATA
def ascii_file(fields: list[bytes], n_events: int, npar: int, widths: list[int] | None, data: bytes) -> bytes:
    """An FCS file of ASCII DATA ``data``: fixed ``widths`` ($PnB), or delimited ($PnB ``*``) when None."""
    pairs = [("$BYTEORD", "1,2,3,4"), ("$DATATYPE", "A"), ("$MODE", "L"), ("$NEXTDATA", "0"),
             ("$PAR", str(npar)), ("$TOT", str(n_events))]
    for i in range(1, npar + 1):
        pairs += [(f"$P{i}N", f"FL{i}"), (f"$P{i}B", "*" if widths is None else str(widths[i - 1])),
                  (f"$P{i}E", "0,0"), (f"$P{i}R", "1024")]
    return build_fcs(pairs, data)


def python_floats(fields: list[bytes], n_events: int, npar: int) -> np.ndarray:
    """The reference: every field parsed by Python's float, one object per value (the former decoder)."""
    return np.array([float(f) for f in fields[: n_events * npar]], dtype=np.float64).reshape(n_events, npar)


ASCII_SPELLINGS = [b"0", b"7", b"1023", b"0012", b"+5", b"3.", b".25", b"12.5", b"1e2", b"2.5E-1", b"-0",
                   b"999.999", b"1_0"]


@pytest.mark.parametrize("chunk", [7, 64, 1 << 20])
def test_ascii_delimited_values_equal_python_floats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    chunk: int) -> None:
    import bat_analysis.io.fcs as fcs

    monkeypatch.setattr(fcs, "_ASCII_CHUNK", chunk)  # values cut by chunk boundaries are joined again
    rng = np.random.default_rng(3)
    n_events, npar = 400, 3
    fields = [ASCII_SPELLINGS[i] for i in rng.integers(0, len(ASCII_SPELLINGS), n_events * npar)]
    separators = [b" ", b"\t", b",", b"\r\n", b"  ", b", ", b"\n"]
    data = b"  " + b"".join(f + separators[i % len(separators)] for i, f in enumerate(fields)) + b"99 98\n"
    sample = read_fcs(write(tmp_path, ascii_file(fields, n_events, npar, None, data)), scale=False)
    expected = python_floats(fields, n_events, npar)
    np.testing.assert_array_equal(sample.events, expected.astype(np.float32))
    scaled = read_fcs(tmp_path / "tube.fcs")
    np.testing.assert_array_equal(scaled.events, expected.astype(np.float32))


@pytest.mark.parametrize("chunk", [5, 1 << 20])
def test_ascii_fixed_width_values_equal_python_floats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      chunk: int) -> None:
    import bat_analysis.io.fcs as fcs

    monkeypatch.setattr(fcs, "_ASCII_CHUNK", chunk)
    rng = np.random.default_rng(4)
    n_events, widths = 300, [4, 6, 3]
    fields = []
    for _ in range(n_events):
        for w in widths:
            fitting = [f for f in ASCII_SPELLINGS if len(f) <= w]
            f = fitting[rng.integers(0, len(fitting))]
            fields.append(f.rjust(w) if rng.random() < 0.5 else f.ljust(w))  # padded either side
    sample = read_fcs(write(tmp_path, ascii_file(fields, n_events, 3, widths, b"".join(fields))), scale=False)
    np.testing.assert_array_equal(sample.events, python_floats(fields, n_events, 3).astype(np.float32))


@pytest.mark.parametrize("widths", [None, [4, 4]])
def test_ascii_non_numeric_or_missing_values_are_refused(tmp_path: Path, widths) -> None:
    sep = b" " if widths is None else b""
    bad = [b"0001", b"00x2", b"0003", b"0004"]
    refused(write(tmp_path, ascii_file(bad, 2, 2, widths, sep.join(bad))), "DATA", message_part="non-numeric")
    short = [b"0001", b"0002", b"0003"]
    pairs_ok = ascii_file(short, 2, 2, widths, sep.join(short) + (b"" if widths is None else b"0004"))
    if widths is None:
        refused(write(tmp_path, pairs_ok, "short.fcs"), "DATA", message_part="3 ASCII values for 2 events x 2")


def test_ascii_data_is_decoded_within_four_times_the_event_matrix(tmp_path: Path) -> None:
    """Memory: numpy conversion a chunk at a time, not one Python object per value (the former decoder peaked at
    22x the event matrix on this file)."""
    import tracemalloc

    rng = np.random.default_rng(5)
    n_events, npar = 300_000, 8
    values = rng.integers(0, 1024, size=(n_events, npar))
    data = ("\n".join(" ".join(map(str, row)) for row in values.tolist()) + "\n").encode()
    path = write(tmp_path, ascii_file([], n_events, npar, None, data))
    tracemalloc.start()
    try:
        sample = read_fcs(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(sample.events, values.astype(np.float32))
    assert peak <= 4 * sample.events.nbytes, (peak / sample.events.nbytes)


# ------------------------------------------------------------------------------ damaged files, in plain words
def test_truncated_data_is_explained_in_a_technicians_words_first(tmp_path: Path) -> None:
    path = write(tmp_path, float_file(EVENTS, NAMES)[:-10])
    err = refused(path, "$ENDDATA")
    assert str(err).startswith(f"{path}: the file is incomplete: its header announces 36 bytes of data, it holds "
                               f"26 bytes — export it again from the cytometer — $ENDDATA: DATA segment "), str(err)
    assert err.summary and err.summary.startswith("the file is incomplete")


def test_truncation_sizes_are_given_in_kilobytes(tmp_path: Path) -> None:
    events = np.arange(120_000 * 3, dtype=np.float32).reshape(-1, 3)  # 1,440,000 bytes of data
    content = float_file(events, NAMES)
    begin = int(content[26:34])
    path = write(tmp_path, content[: begin + 880_000])
    err = refused(path, "$ENDDATA")
    assert "the file is incomplete: its header announces 1.4 MB of data, it holds 880 kB — export it again from " \
           "the cytometer" in str(err), str(err)


def test_truncated_text_and_header_are_explained_in_a_technicians_words(tmp_path: Path) -> None:
    content = float_file(EVENTS, NAMES)
    text_start, text_end = int(content[10:18]), int(content[18:26])
    err = refused(write(tmp_path, content[:300], "text.fcs"), "TEXT")
    assert str(err).startswith(f"{tmp_path / 'text.fcs'}: the file is incomplete: its header announces "
                               f"{text_end - text_start + 1} bytes of keywords, it holds {300 - text_start} bytes — "
                               f"export it again from the cytometer — TEXT offsets: "), str(err)
    err = refused(write(tmp_path, content[:30], "header.fcs"), "HEADER")
    assert "the file is incomplete: it holds only 30 bytes, less than an FCS header — export it again" in str(err)
    err = refused(write(tmp_path, b"", "empty.fcs"), "HEADER")
    assert str(err).startswith(f"{tmp_path / 'empty.fcs'}: the file is empty — export it again from the cytometer")


def test_a_tot_that_disagrees_with_a_whole_file_is_not_called_incomplete(tmp_path: Path) -> None:
    path = write(tmp_path, float_file(EVENTS, NAMES).replace(b"/$TOT/3/", b"/$TOT/4/"))
    err = refused(path, "$ENDDATA")
    assert str(err).startswith(f"{path}: the file is damaged: its header announces 48 bytes of data, its data "
                               f"segment holds 36 bytes — export it again from the cytometer — $ENDDATA: "), str(err)


def test_a_file_that_is_not_fcs_says_so_first(tmp_path: Path) -> None:
    path = write(tmp_path, b"file,patient\n" * 10)
    err = refused(path, "HEADER")
    assert str(err).startswith(f"{path}: this is not an FCS file — check that the layout names the tube's FCS "
                               f"export — HEADER at byte 0: does not start with 'FCS'"), str(err)


@pytest.mark.parametrize("row", [0, 16_383, 16_384, 40_000])
def test_non_finite_event_value_in_any_block_of_events(tmp_path: Path, row: int) -> None:
    """The finiteness check runs over blocks of events (as they are scaled): a NaN in any block, the last one
    included, is found."""
    from bat_analysis.io.fcs import _SCALE_ROWS

    assert _SCALE_ROWS == 16_384  # the rows above sit on both sides of a block's end
    events = np.tile(EVENTS, (40_001 // len(EVENTS) + 1, 1))[:40_001]
    events[row, 1] = np.nan
    (tmp_path / "ok").mkdir()
    assert read_fcs(write(tmp_path / "ok", float_file(np.delete(events, row, axis=0), NAMES))).n_events == 40_000
    refused(write(tmp_path, float_file(events, NAMES)), "DATA", message_part="non-finite")
