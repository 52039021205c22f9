"""FlowKit's FIXED 4-gate strategy, built with FlowKit's own API: the reference the benchmarks time.

cells polygon (FSC-A/SSC-A) -> singlets polygon (FSC-A/FSC-H) -> basophil polygon (CCR3 logicle / SSC-A)
-> CD63 range (logicle), fluorescence dimensions compensated with the file's ``$SPILLOVER``
(``compensation_ref="FCS"``), geometry fixed for the simulator's scales (``bat_analysis.simulate``). Used by
``bench_gating.py`` (per tube) and ``bench_plate.py`` (a plate, serially).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

# Logicle parameters shared by every fluorescence dimension, as in FlowJo's defaults for 18-bit data.
LOGICLE = {"param_t": 262144.0, "param_w": 0.5, "param_m": 4.5, "param_a": 0.0}
# Fixed geometry for the simulator's scales (bat_analysis.simulate): scatter linear, markers logicle (0..1).
# Vertices lie outside the data range where saturated events (at $PnR - 1) belong inside the gate.
CELLS_POLYGON = [(30_000, -1_000), (270_000, -1_000), (270_000, 270_000), (30_000, 270_000)]  # no debris
SINGLETS_POLYGON = [(20_000, 14_000), (270_000, 189_000), (270_000, 250_000), (20_000, 18_600)]  # FSC-H/A 0.70-0.93
BASOPHIL_POLYGON = [(0.55, -1_000), (1.05, -1_000), (1.05, 45_000), (0.55, 45_000)]  # CCR3 high, SSC low
CD63_RANGE = (0.46, None)  # logicle(~1000), CD63 activated


def flowkit_strategy(scatter: tuple[str, str, str], ccr3: str, cd63: str) -> Any:
    """cells (FSC-A/SSC-A) -> singlets (FSC-A/FSC-H) -> basophils (CCR3/SSC-A) -> CD63+ (range)."""
    import flowkit as fk

    fsc_a, fsc_h, ssc_a = scatter
    gs = fk.GatingStrategy()
    gs.add_transform("logicle", fk.transforms.LogicleTransform(**LOGICLE))
    unc = "uncompensated"
    cells = fk.gates.PolygonGate("cells", [fk.Dimension(fsc_a, unc), fk.Dimension(ssc_a, unc)],
                                 [list(v) for v in CELLS_POLYGON])
    singlets = fk.gates.PolygonGate("singlets", [fk.Dimension(fsc_a, unc), fk.Dimension(fsc_h, unc)],
                                    [list(v) for v in SINGLETS_POLYGON])
    basophils = fk.gates.PolygonGate(
        "basophils",
        [fk.Dimension(ccr3, "FCS", transformation_ref="logicle"), fk.Dimension(ssc_a, unc)],
        [list(v) for v in BASOPHIL_POLYGON])
    cd63_pos = fk.gates.RectangleGate(
        "cd63_pos", [fk.Dimension(cd63, "FCS", transformation_ref="logicle",
                                  range_min=CD63_RANGE[0], range_max=CD63_RANGE[1])])
    gs.add_gate(cells, gate_path=("root",))
    gs.add_gate(singlets, gate_path=("root", "cells"))
    gs.add_gate(basophils, gate_path=("root", "cells", "singlets"))
    gs.add_gate(cd63_pos, gate_path=("root", "cells", "singlets", "basophils"))
    return gs


def flowkit_runner() -> Callable[[Path], dict[str, Any]]:
    import flowkit as fk

    strategies: dict[tuple[str, ...], Any] = {}

    def run(path: Path) -> dict[str, Any]:
        sample = fk.Sample(str(path))
        pnn, pns = sample.pnn_labels, sample.pns_labels
        ccr3 = next(p for p in pns if p.upper() in ("CCR3", "CD193"))
        cd63 = next(p for p in pns if p.upper() == "CD63")
        key = (ccr3, cd63, *pnn)
        if key not in strategies:
            strategies[key] = flowkit_strategy(("FSC-A", "FSC-H", "SSC-A"), ccr3, cd63)
        gs = strategies[key]
        results = gs.gate_sample(sample)
        counts = {g: int(results.get_gate_count(g)) for g in ("cells", "singlets", "basophils", "cd63_pos")}
        gs.clear_cache()  # FlowKit caches compensated events per sample id; a repeat must not reuse them
        return {"n_events": int(sample.event_count), "counts": counts}

    return run


