"""Compensation: equal to FlowKit's, only the channels asked for, float32, keyword parsing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bat_analysis.errors import FcsFormatError, GatingError
from bat_analysis.gating.compensation import Spillover, compensate, parse_spillover

CORPUS = Path(__file__).resolve().parents[1] / ".." / "shared" / "fcs_corpus"
COMP_FILE = CORPUS / "instruments" / "flowkit" / "test_comp_example.fcs"


def test_small_matrix_by_hand() -> None:
    s = Spillover(("A", "B"), np.array([[1.0, 0.2], [0.1, 1.0]]))
    true = np.array([[100.0, 50.0], [10.0, 1000.0]])
    raw = np.column_stack([true @ s.matrix, [7.0, 8.0]]).astype(np.float32)  # third column not a detector
    comp = compensate(raw, ["A", "B", "Time"], s)
    assert comp.dtype == np.float32
    np.testing.assert_allclose(comp[:, :2], true, rtol=1e-5)
    np.testing.assert_array_equal(comp[:, 2], raw[:, 2])
    only = compensate(raw, ["A", "B", "Time"], s, channels=["Time", "B"])
    assert only.shape == (2, 2)
    np.testing.assert_allclose(only, np.column_stack([raw[:, 2], true[:, 1]]), rtol=1e-5)
    assert np.array_equal(raw[:, :2], (true @ s.matrix).astype(np.float32))  # input untouched


def test_equal_to_flowutils_on_random_data() -> None:
    from flowutils.compensate import compensate as fu_compensate

    rng = np.random.default_rng(1)
    m = np.eye(4) + rng.uniform(0, 0.3, (4, 4)) * (1 - np.eye(4))
    raw = rng.uniform(-200, 2e5, (5000, 6))
    ours = compensate(raw, list("abcdef"), (list("bcde"), m), dtype=np.float64)
    np.testing.assert_allclose(ours, fu_compensate(raw, m, [1, 2, 3, 4]), rtol=1e-10, atol=1e-8)


def test_errors_name_the_problem() -> None:
    s = Spillover(("A", "B"), np.eye(2))
    with pytest.raises(GatingError, match="absent"):
        compensate(np.zeros((3, 2)), ["A", "C"], s)
    with pytest.raises(GatingError, match="unknown channels"):
        compensate(np.zeros((3, 2)), ["A", "B"], s, channels=["Z"])
    with pytest.raises(GatingError, match="singular"):
        compensate(np.zeros((3, 2)), ["A", "B"], Spillover(("A", "B"), np.ones((2, 2))))
    with pytest.raises(GatingError, match="does not match"):
        Spillover(("A", "B"), np.eye(3))


def test_keyword_parsing() -> None:
    s = parse_spillover("2,FL1-A,FL2-A,1,0.25,0.1,1")
    assert s is not None and s.channels == ("FL1-A", "FL2-A") and s.keyword == "$SPILLOVER"
    np.testing.assert_array_equal(s.matrix, [[1, 0.25], [0.1, 1]])
    with pytest.raises(FcsFormatError, match=r"\$SPILLOVER"):
        parse_spillover("3,FL1-A,1,0")
    assert parse_spillover("0") is None  # a file declaring no matrix


def test_the_file_reader_uses_the_one_spillover_type_and_parser() -> None:
    """``FcsSample.spillover`` is the compensation's :class:`Spillover` (no second class to convert)."""
    from types import SimpleNamespace

    from bat_analysis.io import fcs

    assert fcs.Spillover is Spillover and fcs.parse_spillover is parse_spillover
    channels = [SimpleNamespace(pnn="FL1-A", pns="CD63"), SimpleNamespace(pnn="FL2-A", pns="")]
    s = parse_spillover("2,CD63,fl2-a,1,0.25,0.1,1", channels, keyword="$SPILL")
    assert s is not None and s.channels == ("FL1-A", "FL2-A") and s.keyword == "$SPILL"
    assert parse_spillover("2,2,1,1,0.25,0.1,1", channels).channels == ("FL2-A", "FL1-A")  # by number
    with pytest.raises(FcsFormatError, match="unknown channels 'FL9'"):
        parse_spillover("2,FL1-A,FL9,1,0,0,1", channels)


@pytest.mark.filterwarnings("ignore:FCS file .* reported incorrect data offset")
@pytest.mark.skipif(not COMP_FILE.exists(), reason=f"FCS corpus not available at {COMP_FILE}")
def test_equal_to_flowkit_on_a_real_lsrii_file() -> None:
    import flowkit as fk

    sample = fk.Sample(str(COMP_FILE), ignore_offset_error=True)
    spill_text = sample.metadata.get("spill") or sample.metadata.get("spillover")
    matrix = fk.Matrix(spill_text, list(parse_spillover(spill_text).channels))
    sample.apply_compensation(matrix)
    expected = sample.get_events(source="comp")
    raw = sample.get_events(source="raw").astype(np.float32)
    ours = compensate(raw, sample.pnn_labels, matrix)
    # float32 arithmetic against FlowKit's float64 solve: agreement to float32 resolution of the raw scale
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6 * float(np.abs(raw).max()))
    picked = compensate(raw, sample.pnn_labels, matrix, channels=[matrix.detectors[2], sample.pnn_labels[0]])
    np.testing.assert_array_equal(picked[:, 0], ours[:, sample.pnn_labels.index(matrix.detectors[2])])


def test_single_channel_product_equals_the_gathered_product() -> None:
    """One or two channels of a row-major float32 matrix are computed without gathering the detectors."""
    rng = np.random.default_rng(7)
    m = np.eye(4) + rng.uniform(0, 0.3, (4, 4)) * (1 - np.eye(4))
    raw = rng.uniform(-200, 2e5, (20000, 7)).astype(np.float32)
    names = list("abcdefg")
    s = Spillover(tuple("bdeg"), m)
    gathered = (raw[:, [1, 3, 4, 6]] @ s.inverse.astype(np.float32))
    for wanted in (["d"], ["g", "b"]):
        got = compensate(raw, names, s, channels=wanted)
        ref = gathered[:, ["bdeg".index(c) for c in wanted]]
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6 * float(np.abs(raw).max()))
    # a NaN in a column that is not a detector must not leak into the compensated channel
    raw[5, 0] = np.nan
    got = compensate(raw, names, s, channels=["d"])
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got[:, 0], gathered[:, 1], rtol=1e-6, atol=1e-6 * float(np.nanmax(np.abs(raw))))


def channel_rows(raw, names, s, wanted, copied=()):  # noqa: ANN001, ANN201 - the channel-major layout
    return compensate(raw, names, s, wanted, copied=copied, channel_major=True)


def test_channel_rows_copy_exactly_and_compensate_like_compensate() -> None:
    rng = np.random.default_rng(8)
    m = np.eye(3) + rng.uniform(0, 0.3, (3, 3)) * (1 - np.eye(3))
    raw = rng.uniform(-200, 2e5, (30000, 6)).astype(np.float32)
    names = ["FSC-A", "SSC-A", "B", "C", "D", "Time"]
    s = Spillover(("SSC-A", "C", "D"), m)
    rows = channel_rows(raw, names, s, ["Time", "C", "FSC-A", "SSC-A"], copied=["SSC-A"])
    assert rows.shape == (4, len(raw)) and rows.dtype == np.float32 and rows.flags.c_contiguous
    assert np.array_equal(rows[0], raw[:, 5]) and np.array_equal(rows[2], raw[:, 0])
    assert np.array_equal(rows[3], raw[:, 1])  # a detector asked to be copied is not compensated
    ref = compensate(raw, names, s, channels=["C"])[:, 0]
    np.testing.assert_allclose(rows[1], ref, rtol=1e-6, atol=1e-6 * float(np.abs(raw).max()))
    assert np.array_equal(channel_rows(raw, names, None, ["B"])[0], raw[:, 2])
    raw[3, 4] = np.inf  # a non-finite detector value: copied channels stay exact, the others follow compensate
    rows = channel_rows(raw, names, s, ["FSC-A", "C"])
    assert np.array_equal(rows[0], raw[:, 0])
    np.testing.assert_array_equal(np.isfinite(rows[1]), np.isfinite(compensate(raw, names, s, channels=["C"])[:, 0]))
    with pytest.raises(GatingError, match="absent"):
        channel_rows(raw, names, Spillover(("C", "Z"), np.eye(2)), ["C"])
    with pytest.raises(GatingError, match="unknown"):
        channel_rows(raw, names, s, ["Z"])
