"""The corrections given to one run: an overrides file and gates edited in FlowJo / Gating-ML, read together.

``bat run --overrides FILE --gates-from FILE`` reads both here (:func:`load_corrections`); the same gate
corrected in both is refused. What the run then does with them (adds them to the store's corrections log,
applies the log's active ones) is :mod:`bat_analysis.review._log`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from ..records import Tube
from .corrections import Corrections, OverridesError, read_overrides
from ._exchange import read_edited_gates


def load_corrections(template: Any, *, overrides: Path | str | None, gates_from: Path | str | None,
                     tubes: Sequence[Tube], data_dir: Path | str | None = None, reviewer: str | None = None,
                     automated: Callable[[str, str], dict[str, Any] | None] | None = None) -> Corrections:
    """The corrections given to a run: the overrides file, plus gates edited in FlowJo / Gating-ML (the run
    adds them to the store's corrections log with :func:`bat_analysis.review._log.plan_log_entries`).

    ``automated(file, gate)`` returns the geometry in force for a stored tube (its active correction, else
    the automated gate); an edited gate equal to it is not a correction.
    """
    out = Corrections()
    if overrides is not None:
        out = read_overrides(overrides, template, tubes, default_reviewer=reviewer)
    if gates_from is not None:
        edited = read_edited_gates(gates_from, template, tubes, data_dir=Path(data_dir or "."), reviewer=reviewer,
                                   automated=automated)
        clash = {(c.file, c.gate) for c in out.gates} & {(c.file, c.gate) for c in edited}
        if clash:
            raise OverridesError("the same gate is corrected in both --overrides and --gates-from",
                                 source=str(gates_from),
                                 problems=[f"{f}: gate {g}" for f, g in sorted(clash)])
        out.gates += edited
    return out


