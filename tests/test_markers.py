"""Marker resolution ($PnS first, then $PnN, decorations, ambiguity, absence) and scatter/time recognition."""

from __future__ import annotations

from pathlib import Path

import pytest

from bat_analysis.errors import MarkerError
from bat_analysis.io.fcs import Channel, read_fcs
from bat_analysis.io.markers import (DEFAULT_PANEL, Panel, find_scatter, find_time, is_time_name, label_matches,
                                     resolve_marker)

CORPUS = Path(__file__).resolve().parents[1] / ".." / "shared" / "fcs_corpus"


def chans(*specs: tuple[str, str] | str) -> list[Channel]:
    out = []
    for i, spec in enumerate(specs):
        pnn, pns = (spec, "") if isinstance(spec, str) else spec
        out.append(Channel(i, pnn, pns, 262144.0, 32, 1.0, 0.0, 0.0))
    return out


@pytest.mark.parametrize("label, marker", [
    ("CD193 (CCR3)", "CCR3"), ("CCR3", "CCR3"), ("ccr3", "CCR3"), ("BV421-A :: CCR3", "CCR3"),
    ("CD63-FITC", "CD63"), ("CD63 FITC", "CD63"), ("FITC-A <CD63>", "CD63"), ("LAMP-3", "CD63"),
    ("CD203c PE", "CD203c"), ("ENPP3-APC", "CD203c"), ("HLA-DR", "HLA-DR"), ("HLA DR PerCP", "HLA-DR"),
    ("HLADR-PerCP", "HLA-DR"), ("MHCII", "HLA-DR"), ("CD123 PE-Cy7", "CD123"), ("IL3RA", "CD123"),
    ("CD107a-BV510", "CD107a"), ("LAMP-1", "CD107a"), ("Avidin-FITC", "avidin"), ("CD45 V500", "CD45"),
    ("CD3-APC", "CD3"),
])
def test_decorated_labels_resolve(label: str, marker: str) -> None:
    channels = chans(("FSC-A", ""), ("B1-A", label), ("B2-A", "other"))
    assert resolve_marker(channels, marker).pnn == "B1-A"


@pytest.mark.parametrize("label, alias", [("CD34", "CD3"), ("CD33 PE", "CD3"), ("CD630", "CD63"),
                                          ("PE-CD203", "CD203c"), ("HLA-A2", "HLA-DR")])
def test_no_false_matches(label: str, alias: str) -> None:
    assert not label_matches(label, alias)


def test_pns_is_matched_before_pnn() -> None:
    channels = chans(("CD63", "CD203c"), ("FITC-A", "CD63"))
    assert resolve_marker(channels, "CD63").pnn == "FITC-A"
    assert resolve_marker(channels, "CD203c").pnn == "CD63"


def test_pnn_used_when_no_pns_matches() -> None:
    channels = chans("FSC-A", "SSC-A", "BV421-A :: CCR3", "PE-A")
    assert resolve_marker(channels, "CD193").pnn == "BV421-A :: CCR3"


def test_area_channel_preferred_over_height() -> None:
    channels = chans(("FITC-A", "CD63"), ("FITC-H", "CD63"))
    assert resolve_marker(channels, "CD63").pnn == "FITC-A"


def test_ambiguity_lists_the_channels() -> None:
    channels = chans(("FITC-A", "CD63"), ("PE-A", "CD63-PE"), ("APC-A", "CD203c"))
    with pytest.raises(MarkerError) as info:
        resolve_marker(channels, "CD63", source="tube.fcs")
    text = str(info.value)
    assert "ambiguous" in text and "tube.fcs" in text
    for name in ("FITC-A", "PE-A", "APC-A (CD203c)"):
        assert name in text


def test_absence_lists_the_channels() -> None:
    channels = chans("FSC-A", "SSC-A", ("PE-A", "CD203c"))
    with pytest.raises(MarkerError) as info:
        resolve_marker(channels, "CCR3", source="tube.fcs")
    err = info.value
    assert "not found" in str(err)
    assert "FSC-A, SSC-A, PE-A (CD203c)" in str(err)
    assert "CCR3 | CD193" in str(err)
    assert err.field == "$PnS/$PnN"


def test_custom_aliases() -> None:
    channels = chans(("FL1-A", "Activation marker"), ("FL2-A", "CD63"))
    assert resolve_marker(channels, "act", aliases=["Activation marker"]).pnn == "FL1-A"
    panel = Panel({"act": ("Activation marker",)})
    assert panel.identify(channels[0]) == "act"
    assert panel.identify(channels[1]) is None


def test_panel_identify_default() -> None:
    channels = chans(("BV421-A", "CD193 (CCR3)"), ("PE-A", "CD203c"), "FSC-A")
    assert [DEFAULT_PANEL.identify(c) for c in channels] == ["CCR3", "CD203c", None]


@pytest.mark.parametrize("names, kind, measure, expected", [
    (["FSC-A", "FSC-H", "FSC-W", "SSC-A", "SSC-H", "SSC-W"], "FSC", "H", "FSC-H"),
    (["FSC-A", "FSC-H", "FSC-W", "SSC-A", "SSC-H", "SSC-W"], "SSC", "W", "SSC-W"),
    (["FS INT", "FS PEAK", "SS INT", "SS PEAK", "FS TOF"], "FSC", "A", "FS INT"),
    (["FS INT", "FS PEAK", "SS INT", "SS PEAK", "FS TOF"], "FSC", "H", "FS PEAK"),
    (["FS INT", "FS PEAK", "SS INT", "SS PEAK", "FS TOF"], "FSC", "W", "FS TOF"),
    (["FS INT", "FS PEAK", "SS INT", "SS PEAK"], "SSC", "A", "SS INT"),
    (["FSC-Height", "FSC-Area", "SSC-Height"], "FSC", "H", "FSC-Height"),
    (["FS Lin", "SS Lin", "FL1 Log"], "FSC", "A", "FS Lin"),
    (["FSC LogH", "FSC LogA", "FSC LinH", "FSC LinA"], "FSC", "A", "FSC LinA"),
    (["FSC LogH", "FSC LogA", "FSC LinH", "FSC LinA"], "FSC", "H", "FSC LinH"),
    (["SSC-B-A", "SSC-A", "FSC-A"], "SSC", "A", "SSC-A"),
    (["FSC-HLin", "FSC-HLog", "SSC-HLin"], "FSC", "H", "FSC-HLin"),
    (["FSC", "SSC", "FL1"], "SSC", "A", "SSC"),
    (["Forward Scatter", "Side Scatter"], "SSC", "A", "Side Scatter"),
])
def test_scatter_names(names: list[str], kind: str, measure: str, expected: str) -> None:
    assert find_scatter(chans(*names), kind, measure).pnn == expected


def test_scatter_absent() -> None:
    with pytest.raises(MarkerError, match="no SSC-A"):
        find_scatter(chans("FSC-A", "FL1-A", "FSC-H"), "SSC", "A")


def test_fluorescence_is_not_scatter() -> None:
    with pytest.raises(MarkerError):
        find_scatter(chans("FSCAN", "FS-FITC", "SSC3 dye"), "FSC", "A")


@pytest.mark.parametrize("name, is_time", [("Time", True), ("TIME", True), ("time", True), ("HDR-T", True),
                                           ("Time (s)", True), ("Timer-FITC", False), ("FSC-A", False),
                                           ("Time Lapse Dye", False)])
def test_time_names(name: str, is_time: bool) -> None:
    assert is_time_name(name) is is_time


def test_find_time_prefers_exact() -> None:
    assert find_time(chans("HDR-T", "FSC-A", "Time")).pnn == "Time"
    assert find_time(chans("HDR-T", "FSC-A")).pnn == "HDR-T"
    assert find_time(chans("FSC-A", "SSC-A")) is None


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"real FCS corpus not found at {CORPUS}")
@pytest.mark.parametrize("rel, fsc, ssc, time", [
    ("instruments/flowkit/test_comp_example.fcs", "FSC-A", "SSC-A", "Time"),
    ("instruments/cytoflow/Beckman Coulter - Gallios.LMD", "FS INT LIN", "SS INT LIN", "TIME"),
    ("instruments/cytoflow/Cytek xP5.fcs", "FSC", "SSC", "TIME"),
    ("instruments/flowio/fcs_files/variable_int_example.fcs", "FSC LinA", "SSC LinA", "Time"),
    ("instruments/fcsparser/MiltenyiBiotec/FCS3.1/EY_2013-07-19_PBS_FCS_3.1_Well_A1.001.fcs", "FSC-A", "SSC-A",
     "Time"),
])
def test_real_files_scatter_and_time(rel: str, fsc: str, ssc: str, time: str | None) -> None:
    sample = read_fcs(CORPUS / rel)
    assert find_scatter(sample.channels, "FSC", "A").pnn == fsc
    assert find_scatter(sample.channels, "SSC", "A").pnn == ssc
    found = find_time(sample.channels)
    assert (found.pnn if found else None) == time


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"real FCS corpus not found at {CORPUS}")
def test_real_file_markers() -> None:
    sample = read_fcs(CORPUS / "instruments/flowkit/test_comp_example.fcs")
    assert resolve_marker(sample.channels, "CD3").pnn == "PE-Cy7-A"
    assert sample.channels[7].marker == "CD3"
    with pytest.raises(MarkerError) as info:
        resolve_marker(sample.channels, "CD63", source=str(sample.path))
    assert "PacBlu-A (CD4)" in str(info.value)
