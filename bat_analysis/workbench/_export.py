"""``bat review OUT --export review.yaml``: the store's active corrections as an overrides file.

The file is the format ``bat run --overrides`` reads (:mod:`bat_analysis.review.corrections`): each gate correction
with its tube, gate, geometry, reviewer and reason, each threshold correction with its patient, pretreatment
and threshold. Given to a run on the same results folder it logs nothing new (the corrections are already in
force, unchanged); given to a run in another folder it carries them over. Accept and exclude decisions on
whole tubes are not corrections and are not written (they stay in the store's log).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..store import ResultStore


def overrides_document(active: list[dict[str, Any]]) -> dict[str, Any]:
    """An overrides document of the active corrections (``ResultStore.active_corrections``)."""
    items: list[dict[str, Any]] = []
    for e in active:
        common = {"reviewer": e["reviewer"], "reason": e["reason"]}
        if e["kind"] == "gate":
            geometry = {k: v for k, v in e["value"].items() if k not in ("name", "parent", "dims", "transforms",
                                                                          "transform_specs")}
            items.append({"tube": e["file"], "gate": e["gate"], "geometry": geometry, **common})
        elif e["kind"] == "threshold":
            items.append({"patient": e["patient"], "pretreatment": e["pretreatment"],
                          "threshold": float(e["value"]), **common})
    return {"corrections": items}


def export_overrides(out: Path | str, dest: Path | str) -> int:
    """Write the active corrections of a results folder to ``dest`` (YAML); returns how many."""
    import yaml

    from .._fileio import atomic_write_text

    with ResultStore.in_folder(out, create=False) as store:
        doc = overrides_document(store.active_corrections())
    text = ("# the reviewer corrections in force in " + str(Path(out).name) + " (bat review --export)\n"
            + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    atomic_write_text(dest, text)
    return len(doc["corrections"])
