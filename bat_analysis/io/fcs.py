"""Reading FCS 2.0 / 3.0 / 3.1 files from any cytometer.

HEADER and TEXT are parsed here (keeping every ``$`` inside values, honouring doubled delimiters), the
DATA segment is decoded with numpy, and events are scaled as the standard says, giving the same values
as FlowIO's preprocessed events wherever FlowIO reads a file: integer bit masks from ``$PnR``, ``$PnE``
log amplification (``f2 = 0`` read as 1), ``$PnG`` gain, ``$TIMESTEP`` on the time channel (whose gain is
ignored). Vendors' quirks that can be resolved unambiguously are read and recorded in
``FcsSample.warnings``: HEADER/TEXT offset discrepancies, blank HEADER offsets of large files, an
off-by-one ``$ENDDATA``, several data sets, keywords spilled into the ANALYSIS segment, a junk
``$TIMESTEP``. Anything else raises ``FcsFormatError`` naming the file, the field and what was expected.
``read_fcs_sha256`` gives the same sample and the file's SHA-256 (``file_sha256``'s), hashing the bytes in
the pass that reads the DATA segment.
"""

from __future__ import annotations

import math
import mmap
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import DataFileError, FcsFormatError
# the one spillover type and $SPILLOVER parser live with compensation (FcsSample.spillover is one)
from ..gating.compensation import Spillover, parse_spillover
from .markers import DEFAULT_PANEL, Panel, find_time
from ._paths import open_regular_file

HEADER_LENGTH = 58
_VERSIONS = ("FCS2.0", "FCS3.0", "FCS3.1", "FCS3.2")
_MAX_CHANNELS = 10_000
_MAX_DATASETS = 10_000


@dataclass(frozen=True)
class Channel:
    """One parameter of an FCS file (``index`` is the 0-based column of ``FcsSample.events``)."""

    index: int
    pnn: str
    pns: str
    range: float
    bits: int | None
    gain: float
    log_decades: float
    log_zero: float
    marker: str | None = None

    @property
    def label(self) -> str:
        """``$PnS`` when present, else ``$PnN``."""
        return self.pns or self.pnn

    @property
    def is_log(self) -> bool:
        """Whether the stored values were log-amplified (``$PnE`` f1 > 0)."""
        return self.log_decades > 0


@dataclass
class FcsSample:
    """One data set of an FCS file: scaled float32 events, channels, keywords, spillover, warnings."""

    path: Path
    version: str
    n_events: int
    events: np.ndarray
    channels: list[Channel]
    keywords: dict[str, str]
    spillover: Spillover | None
    n_datasets: int
    dataset: int = 0
    warnings: list[str] = field(default_factory=list)
    spillover_error: str | None = None

    @property
    def pnn(self) -> list[str]:
        """``$PnN`` of every channel, in column order."""
        return [c.pnn for c in self.channels]

    @property
    def pns(self) -> list[str]:
        """``$PnS`` of every channel (empty string when absent), in column order."""
        return [c.pns for c in self.channels]

    @property
    def cytometer(self) -> str:
        """``$CYT`` (empty when absent)."""
        return self.keywords.get("$CYT", "").strip()

    def require_spillover(self) -> Spillover:
        """The spillover matrix, or ``FcsFormatError`` saying why the file has no usable one."""
        if self.spillover is not None:
            return self.spillover
        if self.spillover_error:
            raise FcsFormatError(self.spillover_error, source=str(self.path), field="spillover",
                                 expected="a valid $SPILLOVER/$SPILL matrix")
        raise FcsFormatError("the file has no spillover matrix", source=str(self.path),
                             field="$SPILLOVER/$SPILL/SPILL", expected="a spillover matrix keyword")

    def column(self, pnn: str) -> np.ndarray:
        """The events of the channel whose ``$PnN`` is ``pnn`` (refuses duplicated names)."""
        idx = [c.index for c in self.channels if c.pnn == pnn]
        if len(idx) != 1:
            from ..errors import MarkerError

            raise MarkerError(f"{len(idx)} channels named {pnn!r}", source=str(self.path), field="$PnN",
                              expected="exactly one channel of that name")
        return self.events[:, idx[0]]


_EXPORT_AGAIN = "export it again from the cytometer"


def _size_text(n: int) -> str:
    """A byte count as people read it: ``36 bytes``, ``4.2 kB``, ``480 kB``, ``1.7 MB``."""
    if n < 1000:
        return f"{n} bytes"
    if n < 10_000:
        return f"{n / 1000:.1f} kB"
    if n < 1_000_000:
        return f"{n / 1000:.0f} kB"
    return f"{n / 1_000_000:.1f} MB"


def _incomplete(announced: int, present: int, what: str) -> str:
    """The technician's sentence for a file that ends before the segment its offsets announce."""
    present = max(present, 0)
    a, p = _size_text(announced), _size_text(present)
    if a == p:  # rounding hides the difference: give the bytes
        a, p = f"{announced:,} bytes", f"{present:,} bytes"
    return f"the file is incomplete: its header announces {a} of {what}, it holds {p} — {_EXPORT_AGAIN}"


# ---------------------------------------------------------------------------------------------- HEADER
@dataclass(frozen=True)
class Header:
    """The 58-byte HEADER of one data set; offsets are relative to ``base`` and None when blank."""

    base: int
    version: str
    text: tuple[int, int]
    data: tuple[int | None, int | None]
    analysis: tuple[int | None, int | None]


def _header_int(buf: bytes, base: int, lo: int, hi: int, source: str) -> int | None:
    raw = buf[base + lo: base + hi + 1]
    text = raw.decode("latin-1").strip()
    if text == "":
        return None
    if not (text.isascii() and text.isdigit()):
        raise FcsFormatError(f"HEADER offset {raw!r} is not a number", source=source,
                             field=f"HEADER bytes {lo}-{hi}", expected="a right-justified ASCII integer")
    return int(text)


def parse_header(buf: bytes, base: int, source: str) -> Header:
    """Parse the HEADER at byte ``base`` of ``buf``."""
    if len(buf) - base < HEADER_LENGTH:
        present = max(len(buf) - base, 0)
        start = bytes(buf[base: base + 3])
        summary = (f"the file is incomplete: it holds only {present} bytes, less than an FCS header — "
                   f"{_EXPORT_AGAIN}") if start and b"FCS".startswith(start) else None
        raise FcsFormatError(f"only {present} bytes where a HEADER begins", source=source,
                             field=f"HEADER at byte {base}", expected=f"a {HEADER_LENGTH}-byte FCS HEADER",
                             summary=summary)
    magic = buf[base: base + 6].decode("latin-1")
    if not magic.startswith("FCS"):
        raise FcsFormatError(f"does not start with 'FCS' but {buf[base:base + 6]!r}", source=source,
                             field=f"HEADER at byte {base}", expected="an FCS file (FCS2.0, FCS3.0 or FCS3.1)",
                             summary=None if base else "this is not an FCS file — check that the layout names the "
                                                        "tube's FCS export")
    if magic not in _VERSIONS:
        raise FcsFormatError(f"unknown version {magic!r}", source=source, field=f"HEADER at byte {base}",
                             expected="FCS2.0, FCS3.0 or FCS3.1")
    t0 = _header_int(buf, base, 10, 17, source)
    t1 = _header_int(buf, base, 18, 25, source)
    if not t0 or not t1 or t1 < t0:
        raise FcsFormatError(f"TEXT segment offsets {t0}-{t1} are invalid", source=source,
                             field="HEADER bytes 10-25", expected="TEXT begin >= 58 and end > begin")
    d0 = _header_int(buf, base, 26, 33, source)
    d1 = _header_int(buf, base, 34, 41, source)
    try:
        a0 = _header_int(buf, base, 42, 49, source)
        a1 = _header_int(buf, base, 50, 57, source)
    except FcsFormatError:
        a0 = a1 = None
    return Header(base, magic[3:], (t0, t1), (d0, d1), (a0, a1))


# ------------------------------------------------------------------------------------------------ TEXT
def _tokenize(raw: bytes, delim: bytes, lenient: bool) -> tuple[list[bytes], int, bool]:
    """Split a TEXT segment into fields. Standard: a doubled delimiter is a literal delimiter. Lenient (for
    writers that put empty values as two delimiters): a doubled delimiter right after a keyword ends an empty
    value. Returns (fields, number of empty values, whether unterminated text trailed the last delimiter)."""
    n = len(raw)
    tokens: list[bytes] = []
    cur = bytearray()
    i = 1
    empty_values = 0
    while i < n:
        j = raw.find(delim, i)
        if j < 0:
            cur += raw[i:]
            break
        in_value = len(tokens) % 2 == 1
        if lenient and j == i and not cur and in_value:
            tokens.append(b"")
            empty_values += 1
            i = j + 1
            continue
        cur += raw[i:j]
        doubled = j + 1 < n and raw[j + 1: j + 2] == delim
        if doubled and j + 2 < n and in_value:
            cur += delim
            i = j + 2
            continue
        tokens.append(bytes(cur))
        cur = bytearray()
        i = j + 1
        if doubled and in_value:  # a doubled delimiter that ends the segment
            i = n
    trailing = bytes(cur)
    unterminated = bool(trailing.strip(b" \x00\r\n\t"))
    if unterminated:
        tokens.append(trailing)
    return tokens, empty_values, unterminated


def _valid_fields(tokens: list[bytes], delim: bytes, *, values_may_start_with_delim: bool = False) -> bool:
    keys = tokens[::2]
    ok = bool(tokens) and len(tokens) % 2 == 0 and all(k.strip() and delim not in k for k in keys)
    return ok and (values_may_start_with_delim or not any(v.startswith(delim) for v in tokens[1::2]))


def _split_text(raw: bytes, source: str, where: str, warnings: list[str]) -> dict[str, str]:
    """Split a TEXT-like segment into keywords (upper-case) and values (doubled delimiters unescaped)."""
    if len(raw) < 2:
        raise FcsFormatError("TEXT segment is empty", source=source, field=where,
                             expected="a delimiter followed by keyword/value pairs")
    delim = raw[:1]
    if delim in (b" ", b"\x00") or delim.isalnum():
        raise FcsFormatError(f"TEXT segment starts with {delim!r}", source=source, field=where,
                             expected="a delimiter character (not a letter, digit, space or NUL)")
    # Standard reading first. A value that would begin with an (escaped) delimiter more likely means the
    # writer put empty values as two delimiters: then the lenient reading is used if it is consistent.
    tokens, empty_values, unterminated = _tokenize(raw, delim, lenient=False)
    if not _valid_fields(tokens, delim):
        lenient = _tokenize(raw, delim, lenient=True)
        if _valid_fields(lenient[0], delim, values_may_start_with_delim=True):
            tokens, empty_values, unterminated = lenient
    if unterminated:
        warnings.append(f"{where}: does not end with its delimiter")
    if not tokens:
        raise FcsFormatError("TEXT segment has no delimited keywords", source=source, field=where,
                             expected="keyword/value pairs separated by the delimiter")
    if len(tokens) % 2:
        last = tokens[-1].decode("latin-1")
        raise FcsFormatError(f"keyword {last[:40]!r} has no value (odd number of delimited fields, a "
                             f"missing or doubled delimiter)", source=source, field=where,
                             expected="keyword/value pairs separated by single delimiters")
    empty_values = sum(1 for v in tokens[1::2] if not v)
    if empty_values:
        warnings.append(f"{where}: {empty_values} keyword(s) with an empty value (doubled delimiter)")
    out: dict[str, str] = {}
    undecodable: list[str] = []
    for k, v in zip(tokens[::2], tokens[1::2]):
        key = k.decode("latin-1").strip().upper()
        if not key or delim.decode("latin-1") in key:
            raise FcsFormatError(f"malformed keyword {key[:40]!r} (a doubled delimiter or an empty value before "
                                 f"it)", source=source, field=where, expected="non-empty keywords without the "
                                 f"delimiter")
        try:
            value = v.decode("utf-8")
        except UnicodeDecodeError:
            value = v.decode("latin-1")
            undecodable.append(key)
        if key in out and out[key] != value:
            warnings.append(f"{where}: keyword {key} appears twice ({out[key]!r}, {value!r}); the last is used")
        out[key] = value
    if undecodable:
        warnings.append(f"{where}: values of {', '.join(undecodable[:8])} are not UTF-8; read as Latin-1")
    return out


def _kw_int(kw: Mapping[str, str], key: str, source: str, *, required: bool = True,
            minimum: int | None = None) -> int | None:
    value = kw.get(key)
    if value is None or value.strip() == "":
        if required:
            raise FcsFormatError("required keyword missing", source=source, field=key, expected="an integer")
        return None
    text = value.strip()
    try:
        number = int(text)
    except ValueError:
        try:
            as_float = float(text)
        except ValueError:
            as_float = math.nan
        if not math.isfinite(as_float) or as_float != int(as_float):
            raise FcsFormatError(f"value {value!r} is not an integer", source=source, field=key,
                                 expected="an integer") from None
        number = int(as_float)
    if minimum is not None and number < minimum:
        raise FcsFormatError(f"value {number} is out of range", source=source, field=key,
                             expected=f"an integer >= {minimum}")
    return number


def _kw_float(kw: Mapping[str, str], key: str, source: str, default: float) -> float:
    value = kw.get(key)
    if value is None or value.strip() == "":
        return default
    try:
        number = float(value.strip())
    except ValueError:
        raise FcsFormatError(f"value {value!r} is not a number", source=source, field=key,
                             expected="a number") from None
    if not math.isfinite(number):
        raise FcsFormatError(f"value {value!r} is not finite", source=source, field=key, expected="a finite number")
    return number


@dataclass
class _DataSet:
    header: Header
    keywords: dict[str, str]
    warnings: list[str]


def _read_segment(buf: bytes, base: int, lo: int, hi: int, source: str, name: str) -> bytes:
    if lo < 0 or hi < lo or base + hi >= len(buf):
        summary = _incomplete(hi - lo + 1, len(buf) - base - lo, "keywords") if 0 <= lo <= hi else None
        raise FcsFormatError(f"segment {lo}-{hi} lies outside the file's {len(buf)} bytes", source=source,
                             field=f"{name} offsets", expected=f"offsets within the file (< {len(buf) - base})",
                             summary=summary)
    return buf[base + lo: base + hi + 1]


def _parse_dataset_text(buf: bytes, base: int, source: str) -> _DataSet:
    header = parse_header(buf, base, source)
    warnings: list[str] = []
    t0, t1 = header.text
    if t0 < HEADER_LENGTH:
        raise FcsFormatError(f"TEXT begins at byte {t0}, inside the HEADER", source=source,
                             field="HEADER bytes 10-17", expected=f"a TEXT offset >= {HEADER_LENGTH}")
    raw = _read_segment(buf, base, t0, t1, source, "TEXT")
    kw = _split_text(raw, source, "TEXT", warnings)
    # supplemental TEXT (FCS 3.x)
    s0 = _kw_int(kw, "$BEGINSTEXT", source, required=False)
    s1 = _kw_int(kw, "$ENDSTEXT", source, required=False)
    if s0 and s1 and (s0, s1) != (t0, t1):
        try:
            extra = _split_text(_read_segment(buf, base, s0, s1, source, "$BEGINSTEXT/$ENDSTEXT"), source,
                                "supplemental TEXT", warnings)
        except FcsFormatError as exc:
            warnings.append(f"supplemental TEXT ignored: {exc}")
        else:
            for k, v in extra.items():
                kw.setdefault(k, v)
    return _DataSet(header, kw, warnings)


def _analysis_keywords(buf: bytes, ds: _DataSet, source: str) -> dict[str, str]:
    """Keywords of the ANALYSIS segment (some writers continue TEXT there), or {} when unreadable."""
    a0 = _kw_int(ds.keywords, "$BEGINANALYSIS", source, required=False) or ds.header.analysis[0]
    a1 = _kw_int(ds.keywords, "$ENDANALYSIS", source, required=False) or ds.header.analysis[1]
    if not a0 or not a1 or a1 <= a0:
        return {}
    try:
        return _split_text(_read_segment(buf, ds.header.base, a0, a1, source, "ANALYSIS"), source,
                           "ANALYSIS", [])
    except FcsFormatError:
        return {}


def _dataset_end(ds: _DataSet, size: int, source: str) -> int:
    """The first byte after data set ``ds``'s segments, as far as they lie inside the file: its HEADER, TEXT,
    supplemental TEXT and DATA (an ``$ENDDATA`` one byte past the data, a known quirk, is tolerated)."""
    base = ds.header.base
    end = base + max(HEADER_LENGTH, ds.header.text[1] + 1)
    kw = ds.keywords
    for lo_key, hi_key, slack in (("$BEGINSTEXT", "$ENDSTEXT", 1), ("$BEGINDATA", "$ENDDATA", 0)):
        try:
            lo = _kw_int(kw, lo_key, source, required=False)
            hi = _kw_int(kw, hi_key, source, required=False)
        except FcsFormatError:
            continue
        if lo and hi and hi >= lo and base + hi < size:
            end = max(end, base + hi + slack)
    d0, d1 = ds.header.data
    if d0 and d1 and d1 >= d0 and base + d1 < size:
        end = max(end, base + d1)
    return end


def _datasets(buf: bytes, source: str, warnings: list[str]) -> list[_DataSet]:
    """Every data set of the file, each parsed once, following ``$NEXTDATA`` (relative to the current data set).

    A data set must begin after the previous one's segments end: a ``$NEXTDATA`` pointing back, to a data set
    already read, or into the previous data set's bytes (data sets sharing a TEXT segment) ends the chain
    with a warning. The data sets are then disjoint, so reading them all costs at most the file's size.
    """
    size = len(buf)
    found = [_parse_dataset_text(buf, 0, source)]
    while True:
        ds = found[-1]
        base = ds.header.base
        try:
            nxt = _kw_int(ds.keywords, "$NEXTDATA", source, required=False)
        except FcsFormatError:
            warnings.append(f"$NEXTDATA {ds.keywords['$NEXTDATA']!r} of the data set at byte {base} is not a "
                            f"number; no further data set read")
            break
        if not nxt:
            break
        if nxt < 0 or base + nxt + HEADER_LENGTH > size:
            warnings.append(f"$NEXTDATA {nxt} of the data set at byte {base} points outside the file or back; "
                            f"ignored")
            break
        end = _dataset_end(ds, size, source)
        if base + nxt < end:
            warnings.append(f"$NEXTDATA {nxt} of the data set at byte {base} points to byte {base + nxt}, inside "
                            f"that data set (its segments end at byte {end - 1}); overlapping data sets are not "
                            f"read, no further data set read")
            break
        if len(found) == _MAX_DATASETS:
            warnings.append(f"the file announces more than {_MAX_DATASETS:,} data sets; only the first "
                            f"{_MAX_DATASETS:,} are read")
            break
        base += nxt
        if buf[base: base + 3] != b"FCS":
            warnings.append(f"$NEXTDATA points to byte {base}, which does not start a data set; ignored")
            break
        try:
            found.append(_parse_dataset_text(buf, base, source))
        except FcsFormatError as exc:
            warnings.append(f"data set at byte {base} is unreadable and ignored: {exc}")
            break
    return found


# ------------------------------------------------------------------------------------------------ DATA
_INHERITABLE = ("$DATATYPE", "$BYTEORD", "$MODE")


def _byteorder(value: str, source: str) -> str:
    text = value.replace(" ", "").strip()
    parts = text.split(",")
    if parts and all(p.isascii() and p.isdigit() for p in parts):
        nums = [int(p) for p in parts]
        if nums == sorted(nums) and nums[0] == 1:
            return "<"
        if nums == sorted(nums, reverse=True) and nums[-1] == 1:
            return ">"
    raise FcsFormatError(f"unsupported byte order {value!r}", source=source, field="$BYTEORD",
                         expected="1,2,3,4 (little-endian) or 4,3,2,1 (big-endian)")


def _next_power_of_2(x: int) -> int:
    return 1 if x <= 0 else 1 << (x - 1).bit_length()


@dataclass(frozen=True)
class _Layout:
    datatype: str
    order: str
    bits: list[int]
    bytes_per_event: int
    declared_bits: list[int]
    word_stored: tuple[str, ...] = ()


def _layout(kw: Mapping[str, str], npar: int, source: str) -> _Layout:
    datatype = kw.get("$DATATYPE", "").strip().upper()
    if datatype not in ("I", "F", "D", "A"):
        raise FcsFormatError(f"data type {kw.get('$DATATYPE')!r}", source=source, field="$DATATYPE",
                             expected="I, F, D or A")
    order = _byteorder(kw.get("$BYTEORD", ""), source) if datatype != "A" else "<"
    bits: list[int] = []
    word_bits: list[str] = []
    declared: list[int] = []
    for n in range(1, npar + 1):
        key = f"$P{n}B"
        raw = kw.get(key)
        if raw is None:
            raise FcsFormatError("required keyword missing", source=source, field=key,
                                 expected="the bit width of the parameter")
        if datatype == "A" and raw.strip() == "*":
            bits.append(0)
            declared.append(0)
            continue
        b = _kw_int(kw, key, source, minimum=1)
        assert b is not None
        if datatype == "F" and b != 32:
            raise FcsFormatError(f"{b} bits for a float parameter", source=source, field=key, expected="32")
        if datatype == "D" and b != 64:
            raise FcsFormatError(f"{b} bits for a double parameter", source=source, field=key, expected="64")
        if datatype == "I" and b > 64:
            raise FcsFormatError(f"{b}-bit integers", source=source, field=key, expected="at most 64 bits")
        declared.append(b)
        if datatype == "I" and b % 8:
            # e.g. Beckman's 10-bit parameters: stored in whole words, the upper bits masked off
            b = next(w for w in (8, 16, 32, 64) if w >= b)
            word_bits.append(key)
        bits.append(b)
    if datatype == "A":
        if any(b == 0 for b in bits) and not all(b == 0 for b in bits):
            raise FcsFormatError("mixes delimited and fixed-width ASCII parameters", source=source,
                                 field="$PnB", expected="all '*' or all widths")
        per_event = sum(bits)  # ASCII widths are characters
    else:
        per_event = sum(bits) // 8
    return _Layout(datatype, order, bits, per_event, declared, tuple(word_bits))


def _choose_data_offsets(buf: bytes, ds: _DataSet, expected: int | None, per_event: int, source: str,
                         warnings: list[str]) -> tuple[int, int]:
    """(start, byte count) of the DATA segment, reconciling HEADER and TEXT offsets with $TOT."""
    base = ds.header.base
    kw = ds.keywords
    text = (_kw_int(kw, "$BEGINDATA", source, required=False), _kw_int(kw, "$ENDDATA", source, required=False))
    head = ds.header.data
    head_ok = bool(head[0]) and head[1] is not None and head[1] >= head[0]
    text_ok = text[0] is not None and text[1] is not None and text[0] > 0 and text[1] >= text[0]
    if ds.header.version == "2.0":
        order = [("HEADER", head, head_ok), ("TEXT", text, text_ok)]
    else:
        order = [("TEXT", text, text_ok), ("HEADER", head, head_ok)]
    candidates = [(name, (int(o[0]), int(o[1]))) for name, o, ok in order if ok]  # type: ignore[arg-type]
    if not candidates:
        raise FcsFormatError("no DATA segment offsets in HEADER or TEXT", source=source,
                             field="$BEGINDATA/$ENDDATA", expected="the byte offsets of the DATA segment")
    size = len(buf) - base
    in_file = [(n, o) for n, o in candidates if HEADER_LENGTH <= o[0] and o[0] <= size]
    if not in_file:
        name, (s, e) = candidates[0]
        raise FcsFormatError(f"DATA segment {s}-{e} lies outside the file (bytes {HEADER_LENGTH}-{size - 1})",
                             source=source,
                             field="$BEGINDATA" if name == "TEXT" else "HEADER bytes 26-33",
                             expected="a DATA offset inside the file",
                             summary=_incomplete(expected or e - s + 1, 0, "data") if s >= HEADER_LENGTH else None)
    if head_ok and text_ok and head != text:
        note = f"HEADER DATA offsets {head[0]}-{head[1]} differ from TEXT {text[0]}-{text[1]}"
    else:
        note = ""
    if not head_ok and text_ok and ds.header.version != "2.0" and text[1] is not None and text[1] <= 99_999_999:
        # blank HEADER offsets are the standard's way for segments beyond byte 99,999,999, not below it
        warnings.append(f"HEADER DATA offsets are blank although the data end at byte {text[1]}; TEXT offsets used")

    if expected is None:  # no $TOT (allowed in FCS 2.0): the segment length decides
        name, (s, e) = in_file[0]
        length = e - s + 1
        if e >= size:
            raise FcsFormatError(f"DATA segment ends at byte {e}, beyond the file's {size} bytes", source=source,
                                 field="$ENDDATA", expected="a DATA segment inside the file",
                                 summary=_incomplete(length, size - s, "data"))
        if per_event and length % per_event == 1:
            length -= 1
            warnings.append(f"$ENDDATA is one byte past the data (off-by-one); read {length} bytes")
        if per_event and length % per_event:
            raise FcsFormatError(f"DATA segment of {length} bytes is not a whole number of {per_event}-byte "
                                 f"events and $TOT is absent", source=source, field="$ENDDATA",
                                 expected=f"a multiple of {per_event} bytes")
        if note:
            warnings.append(note + f"; used {name}")
        return s, length

    def fits(o: tuple[int, int]) -> bool:
        return o[0] + expected <= size

    # 1. a candidate whose length is exactly $TOT x bytes per event
    for name, o in in_file:
        if o[1] - o[0] + 1 == expected and fits(o):
            if note or name != in_file[0][0]:
                warnings.append((note or f"{in_file[0][0]} DATA offsets unusable") + f"; used {name}, whose "
                                f"length matches $TOT")
            return o[0], expected
    # 2. off-by-one $ENDDATA (end offset exclusive)
    for name, o in in_file:
        if o[1] - o[0] == expected and fits(o):
            warnings.append(f"{name} DATA end offset {o[1]} is one byte past the data (off-by-one); read "
                            f"{expected} bytes from {o[0]}" + (f"; {note}" if note else ""))
            return o[0], expected
    # 3. all candidates agree on the start and the data fit: the end offset alone is wrong
    starts = {o[0] for _, o in in_file}
    if len(starts) == 1 and fits(in_file[0][1]):
        s = in_file[0][1][0]
        ends = {o[1] for _, o in in_file}
        longest = max(e - s + 1 for e in ends)
        if expected < longest < expected + max(per_event, 2):  # padding shorter than one event
            warnings.append(f"DATA segment is {longest} bytes, {longest - expected} more than $TOT x "
                            f"{per_event} bytes per event; the first {expected} bytes read")
            return s, expected
    s, e = in_file[0][1]
    # the segment runs past the end of the file: the file was cut short; else $TOT and the segment disagree
    if e >= size:
        summary = _incomplete(max(expected, e - s + 1), size - s, "data")
    else:
        summary = (f"the file is damaged: its header announces {_size_text(expected)} of data, its data segment "
                   f"holds {_size_text(e - s + 1)} — {_EXPORT_AGAIN}")
    raise FcsFormatError(f"DATA segment {s}-{e} ({e - s + 1} bytes, file {size} bytes) cannot be reconciled "
                         f"with $TOT x bytes per event = {expected}", source=source, field="$ENDDATA",
                         expected=f"{expected} bytes of data", summary=summary)


def _decode_int(raw: np.ndarray, layout: _Layout, n_events: int) -> np.ndarray:
    """Unsigned integers of any byte-aligned widths -> (n_events, n_par) uint64/uint32 array."""
    widths = [b // 8 for b in layout.bits]
    if len(set(widths)) == 1 and widths[0] in (1, 2, 4, 8):
        dt = np.dtype(f"{layout.order}u{widths[0]}")
        return raw.view(dt).reshape(n_events, len(widths))
    rows = raw.reshape(n_events, layout.bytes_per_event)
    out = np.empty((n_events, len(widths)), dtype=np.uint64)
    pos = 0
    for i, w in enumerate(widths):
        block = rows[:, pos: pos + w]
        value = np.zeros(n_events, dtype=np.uint64)
        for k in range(w):
            shift = 8 * (w - 1 - k) if layout.order == ">" else 8 * k
            value |= block[:, k].astype(np.uint64) << np.uint64(shift)
        out[:, i] = value
        pos += w
    return out


#: bytes that separate delimited ASCII values: ASCII white space (what ``bytes.split()`` splits on) and commas
_ASCII_SEPARATOR = np.zeros(256, dtype=bool)
_ASCII_SEPARATOR[list(b" \t\n\r\x0b\x0c,")] = True
_ASCII_CHUNK = 1 << 18  # bytes of ASCII DATA converted at a time: bounds the temporaries whatever the file size
_ASCII_MAX_DIGITS = 64  # a longer delimited value is not a number a cytometer wrote


def _ascii_to_float(text: np.ndarray, source: str) -> np.ndarray:
    """Fixed-width byte strings (numpy ``S``) -> float64, parsed as Python's ``float`` parses them."""
    try:
        return text.astype(np.float64)
    except ValueError:
        raise FcsFormatError("non-numeric ASCII value in DATA", source=source, field="DATA",
                             expected="numbers") from None


def _ascii_chunks(p: Path, buf: bytes | mmap.mmap, offset: int, length: int, step: int
                  ) -> Iterator[np.ndarray]:
    """The bytes ``offset .. offset + length`` of the file as uint8 arrays of at most ``step`` bytes: read from
    the file piece by piece (a memory-mapped DATA segment would stay resident), else viewed in the buffer."""
    for at in range(offset, offset + length, step):
        count = min(step, offset + length - at)
        chunk = _data_array(p, buf, np.dtype(np.uint8), count, at)
        yield chunk


def _decode_ascii(p: Path, buf: bytes | mmap.mmap, offset: int, length: int, layout: _Layout,
                  n_events: int, source: str) -> np.ndarray:
    """ASCII DATA (``$DATATYPE A``) -> (n_events, n_par) float64, converted by numpy a chunk at a time.

    Fixed widths (``$PnB`` characters) are viewed as a record of byte strings per event; delimited values
    (``$PnB`` ``*``, separated by white space or commas) are cut at the separators. Either way the values are
    those of Python's ``float`` on each field, and memory beyond the result is one chunk's worth."""
    npar = len(layout.bits)
    need = n_events * npar
    if all(b == 0 for b in layout.bits):
        return _decode_delimited(p, buf, offset, length, n_events, npar, source)
    width = sum(layout.bits)
    if length < n_events * width:
        raise FcsFormatError(f"{(length // width) * npar} ASCII values for {n_events} events x {npar} parameters",
                             source=source, field="DATA", expected=f"{need} values")
    record = np.dtype({"names": [f"p{i}" for i in range(npar)], "formats": [f"S{b}" for b in layout.bits],
                       "offsets": [int(x) for x in np.cumsum([0, *layout.bits[:-1]])], "itemsize": width})
    out = np.empty((n_events, npar), dtype=np.float64)
    rows_per_chunk = max(1, _ASCII_CHUNK // width)
    row = 0
    for chunk in _ascii_chunks(p, buf, offset, n_events * width, rows_per_chunk * width):
        events = chunk.view(record)
        for i in range(npar):
            out[row: row + events.size, i] = _ascii_to_float(events[f"p{i}"], source)
        row += events.size
    return out


def _decode_delimited(p: Path, buf: bytes | mmap.mmap, offset: int, length: int, n_events: int,
                      npar: int, source: str) -> np.ndarray:
    """The first ``n_events`` x ``npar`` delimited ASCII values of the DATA segment as float64 (more are ignored)."""
    need = n_events * npar
    out = np.empty(need, dtype=np.float64)
    n = 0
    carry = np.empty(0, dtype=np.uint8)  # a value cut by the chunk boundary, completed by the next chunk
    chunks = _ascii_chunks(p, buf, offset, length, _ASCII_CHUNK)
    for k, chunk in enumerate(chunks):
        if n >= need:
            break
        last = (k + 1) * _ASCII_CHUNK >= length
        text = np.concatenate([carry, chunk]) if carry.size else chunk
        body = ~_ASCII_SEPARATOR[text]
        edges = np.flatnonzero(np.diff(body.view(np.int8), prepend=0, append=0))
        starts, ends = edges[0::2], edges[1::2]
        if not last and starts.size and ends[-1] == text.size:  # the value may continue in the next chunk
            carry = text[starts[-1]:].copy()
            starts, ends = starts[:-1], ends[:-1]
        else:
            carry = np.empty(0, dtype=np.uint8)
        starts, ends = starts[: need - n], ends[: need - n]
        if carry.size > _ASCII_MAX_DIGITS and n + starts.size < need:
            raise FcsFormatError(f"an ASCII value of {carry.size} or more characters in DATA", source=source,
                                 field="DATA", expected=f"numbers of at most {_ASCII_MAX_DIGITS} characters")
        if not starts.size:
            continue
        lengths = ends - starts
        widest = int(lengths.max())
        if widest > _ASCII_MAX_DIGITS:
            raise FcsFormatError(f"an ASCII value of {widest} or more characters in DATA", source=source,
                                 field="DATA", expected=f"numbers of at most {_ASCII_MAX_DIGITS} characters")
        cols = np.arange(widest)
        fields = text[np.minimum(starts[:, None] + cols, text.size - 1)]
        fields[cols >= lengths[:, None]] = 0  # NUL padding: ignored by numpy's S type
        out[n: n + starts.size] = _ascii_to_float(fields.view(f"S{widest}").ravel(), source)
        n += starts.size
    if n < need:
        raise FcsFormatError(f"{n} ASCII values for {n_events} events x {npar} parameters", source=source,
                             field="DATA", expected=f"{need} values")
    return out.reshape(n_events, npar)


# --------------------------------------------------------------------------------------------- channels
def _channels(kw: Mapping[str, str], npar: int, layout: _Layout, source: str, panel: Panel,
              warnings: list[str]) -> list[Channel]:
    channels: list[Channel] = []
    for n in range(1, npar + 1):
        pnn = kw.get(f"$P{n}N")
        if pnn is None or not pnn.strip():
            pnn = f"P{n}"
            warnings.append(f"$P{n}N is missing; the channel is called {pnn}")
        pnn = pnn.strip()
        pns = kw.get(f"$P{n}S", "").strip()
        rng_text = kw.get(f"$P{n}R")
        if rng_text is None:
            raise FcsFormatError("required keyword missing", source=source, field=f"$P{n}R",
                                 expected="the parameter's range")
        rng = _kw_float(kw, f"$P{n}R", source, 0.0)
        gain = _kw_float(kw, f"$P{n}G", source, 1.0)
        pne = kw.get(f"$P{n}E")
        decades, log_zero = 0.0, 0.0
        if pne is not None and pne.strip():
            parts = pne.replace(" ", "").split(",")
            try:
                decades, log_zero = float(parts[0]), float(parts[1])
            except (ValueError, IndexError):
                raise FcsFormatError(f"value {pne!r}", source=source, field=f"$P{n}E",
                                     expected="f1,f2 (decades, value at 0)") from None
            if not (math.isfinite(decades) and math.isfinite(log_zero)) or decades < 0 or log_zero < 0:
                raise FcsFormatError(f"value {pne!r}", source=source, field=f"$P{n}E",
                                     expected="non-negative f1,f2")
            if decades > 0 and log_zero == 0:
                log_zero = 1.0
            if decades > 0 and rng <= 0:
                raise FcsFormatError(f"log parameter with range {rng}", source=source, field=f"$P{n}R",
                                     expected="a positive range for a log-amplified parameter")
        bits = layout.declared_bits[n - 1] or None
        ch = Channel(n - 1, pnn, pns, rng, bits, gain, decades, log_zero)
        channels.append(ch)
    names = [c.pnn for c in channels]
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        warnings.append(f"duplicate channel names ($PnN): {', '.join(dups)}")
    known = _IDENTIFIED.setdefault(tuple(panel.aliases.items()), {})
    if len(known) > 4096:
        known.clear()
    out = []
    for c in channels:
        key = (c.pns, c.pnn)
        if key not in known:
            known[key] = panel.identify(c)
        out.append(Channel(c.index, c.pnn, c.pns, c.range, c.bits, c.gain, c.log_decades, c.log_zero, known[key]))
    return out


#: markers identified from channel labels, per panel (its aliases) and label pair ($PnS, $PnN): a batch's
#: files share their labels, and matching every alias against every label costs more than the parse
_IDENTIFIED: dict[tuple[tuple[str, tuple[str, ...]], ...], dict[tuple[str | None, str], str | None]] = {}


def _timestep(kw: Mapping[str, str], warnings: list[str]) -> float | None:
    if "$TIMESTEP" not in kw:
        return None
    text = kw["$TIMESTEP"].strip()
    try:
        timestep = float(text) if text else None
    except ValueError:
        timestep = None
    if timestep is not None and not math.isfinite(timestep):
        timestep = None
    if timestep is None and text:
        warnings.append(f"$TIMESTEP {kw['$TIMESTEP']!r} is not a number; time left in acquisition units")
    return timestep


#: events scaled and checked at a time (:func:`_scale`): a block's rows stay in the cache between its passes
_SCALE_ROWS = 1 << 14


def _scale(values: np.ndarray, channels: list[Channel], layout: _Layout, kw: Mapping[str, str],
           warnings: list[str], scale: bool = True) -> tuple[np.ndarray, bool]:
    """Bit masks, $TIMESTEP, $PnE and $PnG as FlowIO's preprocessing applies them -> (float32 events, whether
    every value is finite).

    The channels to scale are scaled a block of ``_SCALE_ROWS`` events at a time and each block is checked
    for non-finite values right after (one pass over the event matrix for both, where a column of it costs
    a pass over every row); the arithmetic is per value, so the values are those of whole columns."""
    if layout.datatype == "I":
        masks = []
        for c in channels:
            stored = layout.bits[c.index]
            limit = 1 << stored
            if c.bits:
                limit = min(_next_power_of_2(int(c.range)) if c.range >= 1 else limit, 1 << c.bits, limit)
            masks.append(limit - 1)
        if any(m < (1 << layout.bits[i]) - 1 for i, m in enumerate(masks)):
            values = values & np.array(masks, dtype=values.dtype.newbyteorder("="))
    with np.errstate(over="ignore", invalid="ignore"):  # values beyond float32 become inf: refused by name
        events = values.astype(np.float32, copy=not values.flags.writeable)  # byte order, integer -> float
    steps = _scale_steps(channels, kw, warnings) if scale else []
    finite = True
    for i in range(0, len(events), _SCALE_ROWS):
        rows = slice(i, i + _SCALE_ROWS)
        for index, timestep, decades, log_zero, rng, gain in steps:
            # float64 arithmetic as FlowIO's; a step alone is one multiplication (no float64 copy first)
            with np.errstate(over="ignore"):  # overflow gives inf, which read_fcs refuses by name
                x = (np.multiply(values[rows, index], timestep, dtype=np.float64) if timestep is not None
                     else values[rows, index].astype(np.float64))
            if decades > 0:
                with np.errstate(over="ignore"):  # overflow gives inf, which read_fcs refuses by name
                    x = 10 ** (decades * x / rng) * log_zero
            if gain is not None:
                x = x / gain
            with np.errstate(over="ignore", invalid="ignore"):
                events[rows, index] = x
        finite = finite and bool(np.isfinite(events[rows]).all())
    return events, finite


def _scale_steps(channels: list[Channel], kw: Mapping[str, str], warnings: list[str]
                 ) -> list[tuple[int, float | None, float, float, float, float | None]]:
    """The channels :func:`_scale` changes: (column, $TIMESTEP or None, $PnE decades, $PnE zero, $PnR, $PnG or
    None) for the time channel with a step, log-amplified channels and linear ones with a gain (the time
    channel's gain is ignored)."""
    time_ch = find_time(channels)
    timestep = _timestep(kw, warnings) if time_ch is not None else None
    steps = []
    for c in channels:
        is_time = time_ch is not None and c.index == time_ch.index
        gain = 1.0 if is_time else c.gain
        stepped = is_time and timestep is not None
        if not (stepped or c.log_decades > 0 or (gain != 1.0 and gain != 0)):
            continue
        steps.append((c.index, timestep if stepped else None, c.log_decades, c.log_zero, c.range,
                      gain if gain != 1.0 and gain != 0 else None))
    return steps


# ---------------------------------------------------------------------------------------------- spillover
_SPILL_KEYS = ("$SPILLOVER", "$SPILL", "SPILL", "SPILLOVER", "$COMP", "COMP")


def _spillover(kw: Mapping[str, str], channels: list[Channel], source: str, strict: bool,
               warnings: list[str]) -> tuple[Spillover | None, str | None]:
    for key in _SPILL_KEYS:
        if key in kw and kw[key].strip():
            try:
                return parse_spillover(kw[key], channels, keyword=key, source=source), None
            except FcsFormatError as exc:
                if strict:
                    raise
                problem = f"{key}: {str(exc).split(': ', 2)[-1]}"
                warnings.append(f"spillover unusable, {problem}")
                return None, problem
    return None, None


# ----------------------------------------------------------------------------------------------- public
def _load(path: str | os.PathLike[str]) -> tuple[Path, bytes | mmap.mmap, str]:
    """The file's bytes, memory-mapped when possible (the DATA segment is then decoded without a copy)."""
    p = Path(path)
    source = str(p)
    try:
        with open_regular_file(p) as fh:  # a FIFO, device or /proc file is refused, never waited on
            buf = _mapped(fh, source)
    except DataFileError as exc:
        raise FcsFormatError(exc.detail, source=source, expected=exc.expected) from None
    except FileNotFoundError:
        raise FcsFormatError("file not found", source=source, expected="an existing FCS file") from None
    except IsADirectoryError:
        raise FcsFormatError("is a directory", source=source, expected="an FCS file") from None
    except OSError as exc:
        raise FcsFormatError(f"cannot be read: {exc.strerror}", source=source, expected="a readable file") from None
    return p, buf, source


def _mapped(fh: BinaryIO, source: str) -> bytes | mmap.mmap:
    """The open file's bytes, memory-mapped when possible (read otherwise); an empty file is refused."""
    size = os.fstat(fh.fileno()).st_size
    buf: bytes | mmap.mmap = b""
    if size:
        try:
            buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):  # not mappable (a pipe, a special file): read it instead
            buf = fh.read()
    if not buf:
        raise FcsFormatError("file is empty", source=source, field="HEADER", expected="an FCS file",
                             summary=f"the file is empty — {_EXPORT_AGAIN}")
    return buf


#: bytes the DATA segment read by :class:`_OnePass` is aligned to
_DATA_ALIGN = 64


class _OnePass:
    """Reads a file's DATA segment and hashes the whole file in the same pass (``sha256_reading``), when
    :func:`_read` asks for the segment; ``sha256`` is then the file's digest (None until then)."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.sha256: str | None = None

    def data(self, dtype: np.dtype, count: int, offset: int) -> np.ndarray | None:
        """``count`` items at byte ``offset`` (aligned, writeable), or None when the file holds fewer."""
        from .._checksums import sha256_reading

        if self.sha256 is not None:
            return None
        nbytes = count * dtype.itemsize
        raw = np.empty(nbytes + _DATA_ALIGN, dtype=np.uint8)
        shift = -raw.ctypes.data % _DATA_ALIGN
        segment = raw[shift: shift + nbytes]
        stored, self.sha256 = sha256_reading(self.fh, offset, memoryview(segment))
        return segment.view(dtype) if stored == nbytes else None


def _select(buf: bytes, source: str, dataset: int, warnings: list[str]) -> tuple[_DataSet, int]:
    sets = _datasets(buf, source, warnings)
    if not 0 <= dataset < len(sets):
        why = f" ({'; '.join(warnings)})" if warnings else ""
        raise FcsFormatError(f"data set {dataset} requested, the file has {len(sets)}{why}", source=source,
                             field="dataset", expected=f"0..{len(sets) - 1}")
    ds = sets[dataset]
    ds.warnings[:0] = warnings
    if len(sets) > 1:
        ds.warnings.append(f"file holds {len(sets)} data sets; data set {dataset} read")
    missing = [k for k in ("$DATATYPE", "$BYTEORD", "$PAR") if k not in ds.keywords]
    if missing:
        extra = _analysis_keywords(buf, ds, source)
        found = [k for k in missing if k in extra]
        if found:
            for k, v in extra.items():
                ds.keywords.setdefault(k, v)
            ds.warnings.append(f"keywords {', '.join(found)} found in the ANALYSIS segment, not in TEXT")
    if dataset:
        first = sets[0].keywords
        for key in _INHERITABLE:
            if key not in ds.keywords and key in first:
                ds.keywords[key] = first[key]
                ds.warnings.append(f"{key} missing in data set {dataset}; taken from data set 0 ({first[key]})")
    return ds, len(sets)


def read_fcs_keywords(path: str | os.PathLike[str], *, dataset: int = 0) -> dict[str, str]:
    """All TEXT keywords (upper-case keys, ``$`` kept) of one data set, without reading the events."""
    _, buf, source = _load(path)
    ds, _ = _select(buf, source, dataset, [])
    return dict(ds.keywords)


def read_fcs(path: str | os.PathLike[str], *, dataset: int = 0, panel: Panel | None = None,
             strict_spillover: bool = False, allow_nonfinite: bool = False, scale: bool = True,
             fallback: bool = False) -> FcsSample:
    """Read one data set of an FCS file into an ``FcsSample`` with float32 events scaled as the standard says.

    Units: ``events`` are in channel units — log-amplified channels decoded (``$PnE``), linear ones divided by
    their gain (``$PnG``), the time channel multiplied by ``$TIMESTEP`` (seconds) — and are neither compensated
    (``spillover`` holds the file's matrix, applied by gating) nor transformed.
    A malformed spillover keyword (unknown channels, singular, truncated) leaves ``spillover`` None, is recorded in
    ``warnings`` and ``spillover_error`` (``require_spillover()`` raises it); ``strict_spillover=True`` refuses the
    file instead;
    ``scale=False`` returns the stored values (integer bit masks applied, no gain, log or time step);
    ``allow_nonfinite=True`` keeps NaN/inf event values (with a warning) instead of refusing them;
    ``fallback=True`` retries a refused file with fcsparser when that optional extra is installed (its events are
    then scaled here from the keywords, and the refusal is recorded in ``warnings``).
    """
    p, buf, source = _load(path)
    panel = panel or DEFAULT_PANEL
    try:
        return _read(p, buf, source, dataset, panel, strict_spillover, allow_nonfinite, scale)
    except FcsFormatError as exc:
        if not fallback:
            raise
        return _read_with_fcsparser(p, dataset, panel, exc, allow_nonfinite, scale)


def read_fcs_sha256(path: str | os.PathLike[str], *, dataset: int = 0, panel: Panel | None = None
                    ) -> tuple[FcsSample, str]:
    """``read_fcs(path)`` and the SHA-256 of the file's bytes (as ``file_sha256`` gives it), in one pass.

    HEADER and TEXT are parsed from the memory-mapped file as :func:`read_fcs` does; a binary DATA segment
    is then read while every byte of the file is hashed, in one pass (the events decoded from the bytes
    hashed, native float32 in place; no more memory than :func:`read_fcs`). ASCII data are read as
    :func:`read_fcs` reads them and the file hashed after. Opening fails as ``file_sha256`` does
    (``OSError``; ``DataFileError`` for a file that is not regular); every other problem raises
    ``FcsFormatError`` as :func:`read_fcs` does.
    """
    import hashlib

    p = Path(path)
    source = str(p)
    with open_regular_file(p) as fh:
        one_pass = _OnePass(fh)
        sample = _read(p, _mapped(fh, source), source, dataset, panel or DEFAULT_PANEL, False, False, True,
                       one_pass)
        if one_pass.sha256 is None:  # not read in the pass (ASCII data): hashed now
            fh.seek(0)
            one_pass.sha256 = hashlib.file_digest(fh, "sha256").hexdigest()
    return sample, one_pass.sha256


def _read_with_fcsparser(p: Path, dataset: int, panel: Panel, refusal: FcsFormatError, allow_nonfinite: bool,
                         scale: bool) -> FcsSample:
    """Read a file this module refused with fcsparser (optional), or raise the refusal if that is not possible."""
    try:
        import fcsparser
    except ImportError:
        raise refusal from None
    source = str(p)
    try:
        meta, frame = fcsparser.parse(source, data_set=dataset, dtype=None, channel_naming="$PnN")
        values = np.asarray(frame.to_numpy())
    except Exception as exc:  # a third-party reader failing in any way means it cannot read the file either
        raise FcsFormatError(f"{str(refusal).removeprefix(source + ': ')}; the fcsparser fallback failed too "
                             f"({type(exc).__name__}: {exc})", source=source, field=refusal.field,
                             expected=refusal.expected) from None
    kw = {str(k).upper(): str(v) for k, v in meta.items() if not str(k).startswith("__")}
    warnings = [f"read with fcsparser after this reader refused it: {refusal}"]
    npar = values.shape[1] if values.ndim == 2 else 0
    if npar == 0 or values.shape[0] == 0:
        raise refusal
    layout = _layout(kw, npar, source)
    channels = _channels(kw, npar, layout, source, panel, warnings)
    if layout.datatype == "I":
        values = values.astype(np.uint64)
    events, finite = _scale(values, channels, layout, kw, warnings, scale)
    if not allow_nonfinite and not finite:
        raise refusal
    spill, spill_error = _spillover(kw, channels, source, False, warnings)
    return FcsSample(path=p, version=str(meta.get("__header__", {}).get("FCS format", "")).removeprefix("FCS"),
                     n_events=int(values.shape[0]), events=events, channels=channels, keywords=kw, spillover=spill,
                     n_datasets=1, dataset=dataset, warnings=warnings, spillover_error=spill_error)


def _data_array(p: Path, buf: bytes | mmap.mmap, dtype: np.dtype, count: int, offset: int,
                one_pass: _OnePass | None = None) -> np.ndarray:
    """``count`` items of the DATA segment: read in the pass that hashes the file (``one_pass``), else
    straight from the file (fastest), else from the buffer."""
    if one_pass is not None:
        values = one_pass.data(dtype, count, offset)
        if values is not None:
            return values
    if isinstance(buf, mmap.mmap):
        try:
            values = np.fromfile(p, dtype=dtype, count=count, offset=offset)
        except OSError:
            values = np.empty(0, dtype=dtype)
        if values.size == count:
            return values
    return np.frombuffer(buf, dtype=dtype, count=count, offset=offset)


def _read(p: Path, buf: bytes | mmap.mmap, source: str, dataset: int, panel: Panel, strict_spillover: bool,
          allow_nonfinite: bool, scale: bool, one_pass: _OnePass | None = None) -> FcsSample:
    ds, n_datasets = _select(buf, source, dataset, [])
    kw = ds.keywords
    warnings = ds.warnings
    mode = kw.get("$MODE", "L").strip().upper() or "L"
    if mode != "L":
        raise FcsFormatError(f"mode {mode!r} (histogram data)", source=source, field="$MODE",
                             expected="L (list mode)")
    npar = _kw_int(kw, "$PAR", source, minimum=1)
    assert npar is not None
    if npar > _MAX_CHANNELS or npar > len(kw):
        raise FcsFormatError(f"{npar} parameters but only {len(kw)} keywords", source=source, field="$PAR",
                             expected="one $PnB/$PnR/$PnN set per parameter")
    layout = _layout(kw, npar, source)
    if layout.word_stored:
        warnings.append(f"{', '.join(layout.word_stored)}: widths that are not whole bytes, read as "
                        f"{layout.bits[0]}-bit words with the upper bits masked")
    tot = _kw_int(kw, "$TOT", source, required=ds.header.version != "2.0", minimum=0)
    if tot == 0:
        raise FcsFormatError("the file holds no events", source=source, field="$TOT", expected="at least one event")
    if layout.datatype == "A" and layout.bytes_per_event == 0:
        expected = None
        start, length = _choose_data_offsets(buf, ds, None, 0, source, warnings)
    else:
        expected = None if tot is None else tot * layout.bytes_per_event
        start, length = _choose_data_offsets(buf, ds, expected, layout.bytes_per_event, source, warnings)
    if tot is None:
        if layout.bytes_per_event == 0:
            raise FcsFormatError("delimited ASCII data without $TOT", source=source, field="$TOT",
                                 expected="the number of events")
        tot = length // layout.bytes_per_event
        if tot == 0:
            raise FcsFormatError("the DATA segment is empty", source=source, field="$ENDDATA",
                                 expected="at least one event")
    channels = _channels(kw, npar, layout, source, panel, warnings)
    abs_start = ds.header.base + start
    if layout.datatype == "A":
        values: np.ndarray = _decode_ascii(p, buf, abs_start, length, layout, tot, source)
    elif layout.datatype == "I":
        raw = _data_array(p, buf, np.dtype(np.uint8), length, abs_start, one_pass)
        values = _decode_int(raw, layout, tot)
    else:
        dt = np.dtype(f"{layout.order}f{4 if layout.datatype == 'F' else 8}")
        values = _data_array(p, buf, dt, tot * npar, abs_start, one_pass).reshape(tot, npar)
    events, finite = _scale(values, channels, layout, kw, warnings, scale)
    if not finite:
        bad = (~np.isfinite(events)).sum(axis=0)
        which = ", ".join(f"{channels[i].pnn} ({int(bad[i])})" for i in np.flatnonzero(bad))
        if not allow_nonfinite:
            raise FcsFormatError(f"non-finite event values (NaN/inf, or beyond the float32 range) in {which}",
                                 source=source, field="DATA", expected="finite event values")
        warnings.append(f"non-finite event values (NaN/inf) kept in {which}")
    spill, spill_error = _spillover(kw, channels, source, strict_spillover, warnings)
    return FcsSample(path=p, version=ds.header.version, n_events=tot, events=events, channels=channels,
                     keywords=dict(kw), spillover=spill, n_datasets=n_datasets, dataset=dataset,
                     warnings=warnings, spillover_error=spill_error)
