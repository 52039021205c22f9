"""Is a reviewer's population plausible? A corrected gate compared with the automated one of the same tube.

A gate typed in the wrong units, or dragged around the wrong cluster, still gates *something*; without a
check the tube passes QC with a population that is not basophils. :func:`implausible_gate_flags` compares the
population gated with a reviewer's correction (from ``bat review``, an overrides file or an edited FlowJo
workspace alike) with the automated result of the same tube and returns a ``MANUAL_GATE_IMPLAUSIBLE``
warning naming each reason:

- its count is more than ``COUNT_RATIO`` times above or below the automated count;
- it is more than ``MAX_SHARE_OF_PARENT`` of its parent (basophils are well under 1–2 % of leukocytes);
- the median of a gating marker (e.g. CCR3) is more than ``MEDIAN_FACTOR`` times off the automated
  population's median (the gate sits on another cluster).

The limits are deliberately wide [suggested]: a correction that trims or widens the automated gate passes;
a gate around another population does not.
"""

from __future__ import annotations

import math

import numpy as np

from ..records import Flag, TubeResult

FLAG = "MANUAL_GATE_IMPLAUSIBLE"
COUNT_RATIO = 3.0
MAX_SHARE_OF_PARENT = 0.10
MEDIAN_FACTOR = 4.0
MIN_EVENTS = 20  # fewer events on either side: counts and medians are not compared


def _gate(result: TubeResult, name: str):  # noqa: ANN202
    return next((g for g in result.gates if g.name == name), None)


def implausible_gate_flags(automated: TubeResult | None, corrected: TubeResult, population: str,
                           corrected_gates: set[str] | frozenset[str] = frozenset()) -> list[Flag]:
    """``[Flag(MANUAL_GATE_IMPLAUSIBLE, warn, reasons)]`` when the corrected result's ``population`` looks
    like another population than the automated one's; ``[]`` otherwise (or when either was not gated).
    ``corrected_gates`` names the corrected gates (for the message)."""
    if automated is None or not automated.ok or not corrected.ok:
        return []
    reasons = []
    n_auto, n_new = int(automated.n_basophils or 0), int(corrected.n_basophils or 0)
    if n_auto >= MIN_EVENTS and (n_new > COUNT_RATIO * n_auto or n_new * COUNT_RATIO < n_auto):
        reasons.append(f"{n_new} {population} against {n_auto} with the automated gate")
    gate = _gate(corrected, population)
    if gate is not None and gate.parent_count and gate.count / gate.parent_count > MAX_SHARE_OF_PARENT:
        reasons.append(f"{100.0 * gate.count / gate.parent_count:.0f}% of {gate.parent or 'all events'} "
                       f"(more than {100 * MAX_SHARE_OF_PARENT:.0f}%)")
    dims = gate.dims if gate is not None else ()
    for marker in dims:
        a = (automated.basophil_values or {}).get(marker)
        b = (corrected.basophil_values or {}).get(marker)
        if a is None or b is None or len(a) < MIN_EVENTS or len(b) < MIN_EVENTS:
            continue
        ma, mb = float(np.median(a)), float(np.median(b))
        if ma > 0 and (mb <= 0 or abs(math.log(mb / ma)) > math.log(MEDIAN_FACTOR)):
            reasons.append(f"median {marker} {mb:.0f} against {ma:.0f} in the automated {population}")
    if not reasons:
        return []
    which = ", ".join(sorted(corrected_gates)) or population
    return [Flag(FLAG, "warn", f"the corrected gate ({which}) is implausible for {population}: "
                               + "; ".join(reasons) + "; check that its corners are in the plot's units")]
