"""Channel resolution: one rule for gating a tube and for exchanging its gates."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from bat_analysis.errors import MarkerError
from bat_analysis.gating._channels import resolve_channels
from bat_analysis.gating.templates import load_template
from bat_analysis.io.fcs import Channel


def _sample(*names: tuple[str, str]) -> SimpleNamespace:
    return SimpleNamespace(channels=[Channel(i, pnn, pns, 262144.0, 32, 1.0, 0.0, 0.0)
                                     for i, (pnn, pns) in enumerate(names)])


FULL = (("FSC-A", ""), ("FSC-H", ""), ("SSC-A", ""), ("FL1-A", "CD63"), ("FL2-A", "CCR3"), ("Time", ""))


def test_every_dimension_and_panel_marker_is_found() -> None:
    template = load_template("bat_ccr3_cd63")
    found, flags = resolve_channels(_sample(*FULL), template, "P01.fcs")
    assert {k: c.pnn for k, c in found.items()} == {"FSC-A": "FSC-A", "FSC-H": "FSC-H", "SSC-A": "SSC-A",
                                                    "Time": "Time", "CCR3": "FL2-A", "CD63": "FL1-A"}
    assert flags == []
    gates_only, _ = resolve_channels(_sample(*FULL), template, "P01.fcs", panel=False)
    assert "CD63" not in gates_only and set(gates_only) == set(found) - {"CD63"}


def test_what_may_be_missing() -> None:
    """No time channel and no FSC-H (not the population gate's): warnings; a required marker that no gate
    uses is needed for gating but not for exchanging gates; a population gate's scatter is always needed."""
    template = load_template("bat_ccr3_cd63")
    sample = _sample(("FSC-A", ""), ("SSC-A", ""), ("FL1-A", "CD63"), ("FL2-A", "CCR3"))
    found, flags = resolve_channels(sample, template, "data/P01.fcs")
    assert {f.code for f in flags} == {"NO_TIME_CHANNEL", "SCATTER_CHANNEL_MISSING"}
    assert all(f.message.startswith("P01.fcs: ") for f in flags) and "FSC-H" not in found
    # exporting the gates of such a tube: the same rule (its FSC-H gate was not set, so it is not exported)
    found, flags = resolve_channels(sample, template, "data/P01.fcs", panel=False)
    assert "FSC-H" not in found and "SCATTER_CHANNEL_MISSING" in {f.code for f in flags}
    no_cd63 = _sample(("FSC-A", ""), ("FSC-H", ""), ("SSC-A", ""), ("FL2-A", "CCR3"))
    with pytest.raises(MarkerError, match="CD63"):
        resolve_channels(no_cd63, template, "P01.fcs")
    found, _ = resolve_channels(no_cd63, template, "P01.fcs", panel=False)
    assert found["CCR3"].pnn == "FL2-A"
    with pytest.raises(MarkerError):
        resolve_channels(_sample(("FSC-A", ""), ("FL1-A", "CD63"), ("FL2-A", "CCR3")), template, "P01.fcs",
                         panel=False)
