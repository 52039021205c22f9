"""Write FCS 2.0 / 3.0 / 3.1 files: integer, float or double data, either byte order, with spillover.

FlowIO's own writer produces only little-endian FCS 3.1 float files; the simulator and the reader's
round-trip tests need every combination the standard allows, so this module writes the segments itself.

Layout of a written file: HEADER (58 bytes, padded to ``TEXT_START``), TEXT, DATA. There is no ANALYSIS
segment and no supplemental TEXT. Offsets are inclusive byte positions as the standard defines them; an
offset that does not fit the HEADER's 8 characters (> 99,999,999) is written as 0 there and read from
``$BEGINDATA``/``$ENDDATA`` in TEXT (FCS 3.x only; FCS 2.0 has no such keywords, so such files are refused).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import FcsFormatError
from .._fileio import atomic_open

__all__ = ["write_fcs", "VERSIONS", "DATATYPES", "TEXT_START"]

VERSIONS = ("2.0", "3.0", "3.1")
DATATYPES = ("I", "F", "D")
TEXT_START = 256
_HEADER_MAX = 99_999_999
_INT_BITS = (8, 16, 32)
_INT_DTYPES = {8: "u1", 16: "u2", 32: "u4"}
# keywords this writer computes itself; a caller may not set them through ``keywords``
_STRUCTURAL = {
    "$BEGINDATA", "$ENDDATA", "$BEGINANALYSIS", "$ENDANALYSIS", "$BEGINSTEXT", "$ENDSTEXT",
    "$BYTEORD", "$DATATYPE", "$MODE", "$NEXTDATA", "$PAR", "$TOT", "$SPILLOVER", "$SPILL",
}


def _fail(path: Path, field: str, message: str, expected: str | None = None) -> FcsFormatError:
    return FcsFormatError(message, source=str(path), field=field, expected=expected)


def _per_channel(value: int | float | Sequence[int | float] | None, n: int, name: str,
                 path: Path) -> list | None:
    if value is None:
        return None
    if np.isscalar(value):
        return [value] * n
    values = list(value)  # type: ignore[arg-type]
    if len(values) != n:
        raise _fail(path, name, f"{len(values)} values given for {n} channels", f"one value per channel")
    return values


def _format_number(x: float) -> str:
    """A short exact text form for keyword values (integers without a decimal point)."""
    x = float(x)
    if x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return repr(x)


def _spillover_text(spillover: tuple[Sequence[str], np.ndarray], pnn: Sequence[str],
                    path: Path, field: str) -> str:
    try:
        names, matrix = spillover
    except (TypeError, ValueError):
        raise _fail(path, field, "spillover must be a pair (channel names, matrix)",
                    "(names, n×n matrix)") from None
    names = [str(n) for n in names]
    matrix = np.asarray(matrix, dtype=float)
    n = len(names)
    if matrix.shape != (n, n):
        raise _fail(path, field, f"spillover matrix of shape {matrix.shape} for {n} channel names",
                    f"a {n}×{n} matrix")
    if len(set(names)) != n:
        raise _fail(path, field, f"duplicate channel names in spillover: {names}", "distinct names")
    unknown = [x for x in names if x not in pnn]
    if unknown:
        raise _fail(path, field, f"spillover names {unknown} are not channels ($PnN) of the file",
                    f"names among {list(pnn)}")
    if not np.all(np.isfinite(matrix)):
        raise _fail(path, field, "spillover matrix has non-finite values", "finite numbers")
    return ",".join([str(n), *names, *(_format_number(v) for v in matrix.ravel())])


def _escape(text: str, delimiter: str) -> str:
    return text.replace(delimiter, delimiter * 2)


def _text_segment(pairs: list[tuple[str, str]], delimiter: str) -> bytes:
    body = delimiter + "".join(
        f"{_escape(k, delimiter)}{delimiter}{_escape(v, delimiter)}{delimiter}" for k, v in pairs
    )
    return body.encode("utf-8")


def _header(version: str, offsets: Sequence[int]) -> bytes:
    """HEADER: version, then (begin, end) of TEXT, DATA, ANALYSIS; a pair that does not fit in 8 digits is 0, 0."""
    pairs = [(offsets[i], offsets[i + 1]) for i in range(0, 6, 2)]
    fields = "".join(f"{b:>8d}{e:>8d}" if max(b, e) <= _HEADER_MAX else f"{0:>8d}{0:>8d}" for b, e in pairs)
    head = f"FCS{version}    {fields}".encode("ascii")
    assert len(head) == 58
    return head.ljust(TEXT_START, b" ")


def _data_bytes(events: np.ndarray, datatype: str, bits: list[int], byteorder: str) -> bytes:
    if datatype == "F":
        return np.ascontiguousarray(events, dtype=np.dtype(np.float32).newbyteorder(byteorder)).tobytes()
    if datatype == "D":
        return np.ascontiguousarray(events, dtype=np.dtype(np.float64).newbyteorder(byteorder)).tobytes()
    if len(set(bits)) == 1:
        dtype = np.dtype(_INT_DTYPES[bits[0]]).newbyteorder(byteorder)
        return np.ascontiguousarray(events.astype(dtype)).tobytes()
    record = np.dtype([(f"c{i}", np.dtype(_INT_DTYPES[b]).newbyteorder(byteorder)) for i, b in enumerate(bits)])
    out = np.empty(events.shape[0], dtype=record)
    for i in range(events.shape[1]):
        out[f"c{i}"] = events[:, i]
    return out.tobytes()


def write_fcs(
    path: str | os.PathLike[str],
    events: np.ndarray,
    pnn: Sequence[str],
    pns: Sequence[str | None] | None = None,
    *,
    version: str = "3.1",
    datatype: str = "F",
    byteorder: str = "<",
    bits: int | Sequence[int] | None = None,
    ranges: float | Sequence[float] | None = None,
    spillover: tuple[Sequence[str], np.ndarray] | None = None,
    keywords: Mapping[str, object] | None = None,
    delimiter: str = "/",
) -> Path:
    """Write ``events`` (n_events × n_channels) as an FCS file at ``path`` and return the path.

    ``pnn``/``pns``: channel names ($PnN) and optional marker names ($PnS; ``None`` or "" leaves one out).
    ``datatype``: "F" (float32), "D" (float64) or "I" (unsigned integers of ``bits`` 8/16/32, one width
    for all channels or one per channel; values must be whole numbers in [0, $PnR)). ``ranges``: $PnR,
    one for all or per channel (default: 2**bits for "I", else the larger of 262144 and the channel's
    maximum). ``byteorder``: "<" ($BYTEORD 1,2,3,4) or ">" (4,3,2,1). ``spillover``: (channel names,
    matrix), written as $SPILLOVER (3.1) or $SPILL (2.0/3.0). ``keywords``: other TEXT keywords
    (values are converted to text; values containing the delimiter are escaped by doubling it).
    The file is written to a temporary name beside ``path`` and renamed into place.
    """
    path = Path(path)
    _check_format(path, version, datatype, byteorder, delimiter)
    events = np.asarray(events)
    pnn = _checked_channels(path, events, pnn, pns)
    bit_list, range_list = _widths_and_ranges(path, events, pnn, datatype, bits, ranges)
    fixed, channel_pairs, extra = _keyword_pairs(path, events.shape, pnn, pns, version, datatype, byteorder,
                                                 bit_list, range_list, spillover, keywords)
    data = _data_bytes(events, datatype, bit_list, byteorder)
    assert len(data) == events.shape[0] * sum(bit_list) // 8
    text, offsets = _text_and_offsets(path, version, delimiter, fixed + channel_pairs + extra, len(data))
    with atomic_open(path, "wb") as fh:
        fh.write(_header(version, offsets))
        fh.write(text)
        fh.write(data)
    return path


def _check_format(path: Path, version: str, datatype: str, byteorder: str, delimiter: str) -> None:
    """The file format asked for: version, data type, byte order and TEXT delimiter."""
    if version not in VERSIONS:
        raise _fail(path, "version", f"unsupported FCS version {version!r}", " or ".join(VERSIONS))
    if datatype not in DATATYPES:
        raise _fail(path, "$DATATYPE", f"unsupported data type {datatype!r}", "I, F or D")
    if byteorder not in ("<", ">"):
        raise _fail(path, "$BYTEORD", f"unsupported byte order {byteorder!r}",
                    "'<' (little-endian) or '>' (big-endian)")
    if len(delimiter) != 1 or not (0x20 < ord(delimiter) < 0x7F):
        raise _fail(path, "delimiter", f"unusable delimiter {delimiter!r}", "one printable ASCII character")


def _checked_channels(path: Path, events: np.ndarray, pnn: Sequence[str],
                      pns: Sequence[str | None] | None) -> list[str]:
    """The events' shape and values and the channel names checked; returns the $PnN names as text."""
    if events.ndim != 2:
        raise _fail(path, "events", f"events of shape {events.shape}", "a 2-D array n_events × n_channels")
    n_channels = events.shape[1]
    if n_channels == 0:
        raise _fail(path, "$PAR", "no channels", "at least one channel")
    names = [str(x) for x in pnn]
    if len(names) != n_channels:
        raise _fail(path, "$PnN", f"{len(names)} channel names for {n_channels} data columns",
                    "one name per column")
    if any(not x.strip() for x in names):
        raise _fail(path, "$PnN", "an empty channel name", "non-empty names")
    if len(set(names)) != n_channels:
        raise _fail(path, "$PnN", f"duplicate channel names {names}", "distinct names")
    if pns is not None and len(pns) != n_channels:
        raise _fail(path, "$PnS", f"{len(pns)} marker names for {n_channels} data columns",
                    "one (or None) per column")
    if not np.issubdtype(events.dtype, np.number):
        raise _fail(path, "events", f"non-numeric events of dtype {events.dtype}", "numbers")
    if not np.all(np.isfinite(events)):
        bad = np.unique(np.nonzero(~np.isfinite(events))[1])
        raise _fail(path, "events", f"non-finite values (NaN or inf) in channels {[names[i] for i in bad]}",
                    "finite numbers")
    return names


def _widths_and_ranges(path: Path, events: np.ndarray, pnn: list[str], datatype: str,
                       bits: int | Sequence[int] | None, ranges: float | Sequence[float] | None
                       ) -> tuple[list[int], list]:
    """$PnB and $PnR of every channel; integer data must be whole numbers within both."""
    n_events, n_channels = events.shape
    if datatype == "I":
        bit_list = _per_channel(16 if bits is None else bits, n_channels, "$PnB", path)
        assert bit_list is not None
        for b in bit_list:
            if b not in _INT_BITS:
                raise _fail(path, "$PnB", f"integer width {b} bits", "8, 16 or 32")
    else:
        width = 32 if datatype == "F" else 64
        if bits is not None and any(b != width for b in _per_channel(bits, n_channels, "$PnB", path) or []):
            raise _fail(path, "$PnB", f"bits {bits} with $DATATYPE {datatype}", f"{width}")
        bit_list = [width] * n_channels
    range_list = _per_channel(ranges, n_channels, "$PnR", path)
    if range_list is None:
        if datatype == "I":
            range_list = [2 ** b for b in bit_list]
        else:
            col_max = events.max(axis=0) if n_events else np.zeros(n_channels)
            range_list = [max(262144, int(np.ceil(m))) for m in col_max]
    for i, r in enumerate(range_list):
        if not np.isfinite(float(r)) or r <= 0:
            raise _fail(path, f"$P{i + 1}R", f"range {r}", "a positive number")
    if datatype == "I":
        _check_integers(path, events, pnn, bit_list, range_list)
        range_list = [int(r) for r in range_list]
    return bit_list, range_list


def _check_integers(path: Path, events: np.ndarray, pnn: list[str], bit_list: list[int], range_list: list) -> None:
    """Integer data: whole numbers in [0, min($PnR, 2**$PnB)) in every channel."""
    if not events.shape[0]:
        return
    whole = np.all(events == np.floor(events))
    if not whole:
        raise _fail(path, "events", "non-integer values for $DATATYPE I", "whole numbers")
    col_min = events.min(axis=0)
    col_max = events.max(axis=0)
    for i in range(events.shape[1]):
        limit = min(int(range_list[i]), 2 ** bit_list[i])
        if col_min[i] < 0 or col_max[i] >= limit:
            raise _fail(path, f"$P{i + 1}R",
                        f"channel {pnn[i]} has values in [{col_min[i]}, {col_max[i]}]",
                        f"integers in [0, {limit}) for {bit_list[i]}-bit data with $PnR {range_list[i]}")


def _keyword_pairs(path: Path, shape: tuple[int, ...], pnn: list[str], pns: Sequence[str | None] | None,
                   version: str, datatype: str, byteorder: str, bit_list: list[int], range_list: list,
                   spillover: tuple[Sequence[str], np.ndarray] | None, keywords: Mapping[str, object] | None
                   ) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[tuple[str, str]]]:
    """TEXT keywords but the offsets: the fixed ones, the channels' and the extra ones (spillover, caller's).

    A caller's keyword may replace a channel keyword ($PnE, ...) but not one the writer computes; keywords are
    case-insensitive and each may be given once.
    """
    n_events, n_channels = shape
    byteord = "1,2,3,4" if byteorder == "<" else "4,3,2,1"
    fixed: list[tuple[str, str]] = [("$BYTEORD", byteord), ("$DATATYPE", datatype), ("$MODE", "L"),
                                    ("$NEXTDATA", "0"), ("$PAR", str(n_channels)), ("$TOT", str(n_events))]
    channel_pairs: list[tuple[str, str]] = []
    for i in range(n_channels):
        k = i + 1
        channel_pairs.append((f"$P{k}N", pnn[i]))
        if pns is not None and pns[i] is not None and str(pns[i]).strip():
            channel_pairs.append((f"$P{k}S", str(pns[i])))
        channel_pairs.append((f"$P{k}B", str(bit_list[i])))
        channel_pairs.append((f"$P{k}E", "0,0"))
        channel_pairs.append((f"$P{k}R", _format_number(range_list[i])))
    extra: list[tuple[str, str]] = []
    if spillover is not None:
        key = "$SPILLOVER" if version == "3.1" else "$SPILL"
        extra.append((key, _spillover_text(spillover, pnn, path, key)))
    channel_keys = {k for k, _ in channel_pairs}
    for key, value in (keywords or {}).items():
        key = str(key)
        if not key.strip():
            raise _fail(path, "keywords", "an empty keyword name", "non-empty keyword names")
        if key.upper() in _STRUCTURAL:
            raise _fail(path, key, "this keyword is computed by the writer", "it left out of keywords")
        text = value if isinstance(value, str) else (
            _format_number(value) if isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
            else str(value))
        if text == "":
            raise _fail(path, key, "an empty keyword value (FCS cannot represent it)", "a non-empty value")
        if key.upper() in {c.upper() for c in channel_keys}:
            channel_pairs = [(k, text) if k.upper() == key.upper() else (k, v) for k, v in channel_pairs]
        else:
            extra.append((key, text))
    seen: set[str] = set()
    for key, _ in fixed + channel_pairs + extra:
        if key.upper() in seen:
            raise _fail(path, key, "keyword given twice (keywords are case-insensitive)", "unique keywords")
        seen.add(key.upper())
    return fixed, channel_pairs, extra


def _text_and_offsets(path: Path, version: str, delimiter: str, pairs: list[tuple[str, str]], data_len: int
                      ) -> tuple[bytes, list[int]]:
    """The TEXT segment and the HEADER's offsets (TEXT, DATA, ANALYSIS) for ``data_len`` bytes of DATA.

    TEXT's length depends on the digits of $BEGINDATA/$ENDDATA, so it is laid out until they are stable.
    """
    text_begin = TEXT_START
    begin_data = end_data = 0
    for _ in range(10):
        offset_pairs: list[tuple[str, str]] = []
        if version != "2.0":
            offset_pairs = [("$BEGINANALYSIS", "0"), ("$ENDANALYSIS", "0"), ("$BEGINSTEXT", "0"),
                            ("$ENDSTEXT", "0"), ("$BEGINDATA", str(begin_data)), ("$ENDDATA", str(end_data))]
        text = _text_segment(offset_pairs + pairs, delimiter)
        text_end = text_begin + len(text) - 1
        new_begin = text_end + 1
        new_end = new_begin + data_len - 1 if data_len else new_begin
        if not data_len:
            new_begin = new_end = 0
        if (new_begin, new_end) == (begin_data, end_data):
            break
        begin_data, end_data = new_begin, new_end
    else:  # pragma: no cover - the digit count converges in two or three passes
        raise _fail(path, "$BEGINDATA", "data offsets did not converge", "a stable TEXT segment")
    if text_end > _HEADER_MAX:
        raise _fail(path, "TEXT", "TEXT segment ends beyond byte 99,999,999", "a smaller TEXT segment")
    if version == "2.0" and end_data > _HEADER_MAX:
        raise _fail(path, "DATA", f"data end at byte {end_data} does not fit an FCS 2.0 HEADER",
                    "FCS 3.0 or 3.1 for data beyond byte 99,999,999")
    return text, [text_begin, text_end, begin_data, end_data, 0, 0]
