"""Fuzzing the FCS reader: valid files with mutated bytes, keywords and offsets are either read correctly or
refused with a BatError; never another exception. Example counts are bounded to keep CI fast; set
``BAT_FUZZ_EXAMPLES`` for a longer run."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bat_analysis.errors import BatError
from bat_analysis.io.fcs import FcsSample, read_fcs
from test_fcs_bad_inputs import build_fcs

EXAMPLES = int(os.environ.get("BAT_FUZZ_EXAMPLES", "120"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _channel_pairs(names: list[str], bits: list[int], ranges: list[str], extra: dict[int, dict[str, str]]
                   ) -> list[tuple[str, str]]:
    pairs = []
    for i, (name, b, r) in enumerate(zip(names, bits, ranges), start=1):
        channel = {f"$P{i}N": name, f"$P{i}B": str(b), f"$P{i}E": "0,0", f"$P{i}R": r}
        channel.update(extra.get(i, {}))
        pairs += list(channel.items())
    return pairs


def _seed_int() -> tuple[list[tuple[str, str]], bytes, str]:
    rng = np.random.default_rng(3)
    tot = 20
    cols = [rng.integers(0, 1000, tot).astype(">u2"), rng.integers(0, 1 << 20, tot).astype(">u4"),
            rng.integers(0, 256, tot).astype(">u1")]
    rec = np.empty(tot, dtype=[("a", ">u2"), ("b", ">u4"), ("c", ">u1")])
    rec["a"], rec["b"], rec["c"] = cols
    pairs = [("$BYTEORD", "4,3,2,1"), ("$DATATYPE", "I"), ("$MODE", "L"), ("$NEXTDATA", "0"), ("$PAR", "3"),
             ("$TOT", str(tot)), ("$TIMESTEP", "0.01")]
    pairs += _channel_pairs(["FSC-A", "FL1-A", "Time"], [16, 32, 8], ["1000", "1048576", "256"],
                            {2: {"$P2E": "4,0", "$P2S": "CD63"}, 1: {"$P1G": "2"}})
    return pairs, rec.tobytes(), "3.0"


def _seed_float() -> tuple[list[tuple[str, str]], bytes, str]:
    rng = np.random.default_rng(4)
    events = rng.normal(500, 200, size=(16, 3)).astype("<f4")
    pairs = [("$BYTEORD", "1,2,3,4"), ("$DATATYPE", "F"), ("$MODE", "L"), ("$NEXTDATA", "0"), ("$PAR", "3"),
             ("$TOT", "16"), ("$SPILLOVER", "2,FITC-A,PE-A,1,0.1,0.05,1"), ("$COM", "lab $1/2")]
    pairs += _channel_pairs(["SSC-A", "FITC-A", "PE-A"], [32, 32, 32], ["262144"] * 3,
                            {2: {"$P2S": "CD63 FITC"}, 3: {"$P3S": "CD203c"}})
    return pairs, events.tobytes(), "3.1"


def _seed_double_v2() -> tuple[list[tuple[str, str]], bytes, str]:
    events = np.arange(24, dtype=">f8").reshape(12, 2)
    pairs = [("$BYTEORD", "4,3,2,1"), ("$DATATYPE", "D"), ("$MODE", "L"), ("$NEXTDATA", "0"), ("$PAR", "2"),
             ("$TOT", "12")]
    pairs += _channel_pairs(["FS", "SS"], [64, 64], ["1024", "1024"], {})
    return pairs, events.tobytes(), "2.0"


SEEDS = [_seed_int(), _seed_float(), _seed_double_v2()]
INTERESTING = ["", " ", "0", "-1", "1", "2", "3", "7", "16", "24", "33", "64", "99999999999999999999", "1e308",
               "nan", "inf", "abc", "*", "4,3,2,1", "1,2,3,4", "3,4,1,2", "I", "F", "D", "A", "C", "L", "4,0",
               "0,0", "2,1", "x,y", "1,FSC-A,1", "2,FITC-A,PE-A,1,1,1,1", "/", "//", "é", "\u2603", "\u00b9",
               "\u00b9,\u00b2", "1_0", "2,\u00b9,\u00b2,1,0,0,1"]


def check(content: bytes) -> FcsSample | None:
    """Read ``content``: a correct FcsSample, or a BatError (returns None); anything else fails the test."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.fcs"
        path.write_bytes(content)
        try:
            sample = read_fcs(path)
        except BatError as exc:
            assert str(exc)
            return None
    assert sample.events.dtype == np.float32
    assert sample.events.shape == (sample.n_events, len(sample.channels))
    assert sample.n_events >= 1
    assert np.isfinite(sample.events).all()
    assert all(isinstance(w, str) for w in sample.warnings)
    return sample


def test_seeds_are_valid() -> None:
    for pairs, data, version in SEEDS:
        sample = check(build_fcs(pairs, data, version=version))
        assert sample is not None and sample.warnings == []


@FUZZ
@given(seed=st.sampled_from(range(len(SEEDS))),
       edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=8))
def test_byte_mutations(seed: int, edits: list[tuple[float, int]]) -> None:
    pairs, data, version = SEEDS[seed]
    content = bytearray(build_fcs(pairs, data, version=version))
    for where, value in edits:
        content[int(where * len(content))] = value
    check(bytes(content))


@FUZZ
@given(seed=st.sampled_from(range(len(SEEDS))), cut=st.floats(0, 1), insert=st.binary(max_size=6),
       at=st.floats(0, 1))
def test_truncation_and_insertion(seed: int, cut: float, insert: bytes, at: float) -> None:
    pairs, data, version = SEEDS[seed]
    content = build_fcs(pairs, data, version=version)
    check(content[: int(cut * len(content))])
    pos = int(at * len(content))
    check(content[:pos] + insert + content[pos:])


@FUZZ
@given(seed=st.sampled_from(range(len(SEEDS))), data=st.data())
def test_keyword_mutations(seed: int, data: st.DataObject) -> None:
    pairs, events, version = SEEDS[seed]
    pairs = list(pairs)
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(pairs) - 1))
        action = data.draw(st.sampled_from(["value", "text", "drop", "duplicate", "rename"]))
        key, value = pairs[i]
        if action == "value":
            pairs[i] = (key, data.draw(st.sampled_from(INTERESTING)))
        elif action == "text":
            pairs[i] = (key, data.draw(st.text(max_size=12)))
        elif action == "drop":
            del pairs[i]
        elif action == "duplicate":
            pairs.insert(i, (key, data.draw(st.sampled_from(INTERESTING))))
        else:
            pairs[i] = (data.draw(st.sampled_from(["$TOT", "$PAR", "$P1B", "$P9N", "$NEXTDATA", "", "$X"])), value)
        if not pairs:
            break
    check(build_fcs(pairs, events, version=version))


@FUZZ
@given(seed=st.sampled_from(range(len(SEEDS))),
       fields=st.lists(st.tuples(st.integers(0, 5),
                                 st.one_of(st.integers(-9999999, 99999999).map(str), st.just(""),
                                           st.text("0123456789 -+.e", max_size=8))), min_size=1, max_size=4),
       text_offsets=st.lists(st.tuples(st.sampled_from(["$BEGINDATA", "$ENDDATA", "$BEGINSTEXT", "$ENDSTEXT",
                                                        "$BEGINANALYSIS", "$ENDANALYSIS", "$NEXTDATA"]),
                                       st.integers(-10, 10 ** 9)), max_size=3))
def test_offset_mutations(seed: int, fields: list[tuple[int, str]], text_offsets: list[tuple[str, int]]) -> None:
    pairs, data, version = SEEDS[seed]
    pairs = list(pairs) + [(k, str(v)) for k, v in text_offsets if k not in ("$BEGINDATA", "$ENDDATA")]
    content = bytearray(build_fcs(pairs, data, version=version))
    for key, value in text_offsets:
        if key in ("$BEGINDATA", "$ENDDATA"):
            tag = f"/{key}/".encode()
            start = content.index(tag) + len(tag)
            content[start:start + 10] = f"{value % 10 ** 10:010d}".encode()
    for index, text in fields:
        lo = 10 + 8 * index
        content[lo:lo + 8] = text[:8].rjust(8).encode()
    check(bytes(content))
