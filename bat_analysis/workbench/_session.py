"""What the review workbench knows of one results folder: its last completed run, the review state derived
from the store's corrections log, and re-gating a tube with an edited gate (any 2-D polygon or range gate
drawn over its density: :data:`EDITABLE_TYPES`; a 1-D gate such as the acquisition-QC time gate drawn over its
parent's histogram, :func:`timeline`: its kept window's two ends draggable; the geometry is checked as a
correction's is).

A tube is addressed by its number in the run (``tube_id``: its position in the run's sorted input files),
never by a path: the only files read are the results store and the run's own input FCS files (resolved
inside the run's data folder as ``bat run`` does).

Re-gating keeps the last few tubes' read FCS samples in memory (:class:`SampleCache`, least recently used
out), so that an edit re-gates from the events in memory (compensation of the gating channels and the gates
after the edited one) instead of reading and decoding the file again.

A re-gated tube is checked against its automated result (:mod:`bat_analysis.gating._plausibility`), and
the patient can be scored again with the edit (:meth:`ReviewSession.patient_preview`: its class and its
arms' dose-response points and fitted curves per allergen, :func:`curve_data`; nothing is stored).

Decisions (accept, correct, exclude, revert; sign off a patient) are appended to the corrections log
(:meth:`ResultStore.append_corrections`); the state shown is derived from the log each time
(:func:`bat_analysis.review._status.review_state`). A gate or threshold correction is applied by every later
``bat run``; an exclusion drops the tube from scoring (here at once, in the patient preview; in ``bat report``
and ``bat run``); accept, exclude and sign-off reach the tables' review-status columns
(:mod:`bat_analysis.review._status`).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import BatError
from ..records import Flag, TubeResult
from ..review._status import TubeState, review_state, signoffs
from ..store import ResultStore

QUEUE_ORDER = ("failed", "flagged", "unreviewed", "reviewed")
EDITABLE_TYPES = ("polygon", "range")  # drawn over a 2-D density: corners or sides draggable
SOURCE = "bat review"


class ReviewError(BatError):
    """A request the workbench refuses (unknown tube, a geometry that does not fit the gate, no reason)."""


class SampleCache:
    """The read FCS samples of the last ``size`` tubes (least recently used dropped first)."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str, read: Any) -> Any:
        with self._lock:
            if path in self._items:
                self._items.move_to_end(path)
                return self._items[path]
        sample = read(path)
        with self._lock:
            self._items[path] = sample
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return sample

    def __len__(self) -> int:
        return len(self._items)


MAX_REASON = 2000


def check_reason(reason: str) -> None:
    if len(reason) > MAX_REASON:
        raise ReviewError("the reason is too long", field="reason", expected=f"at most {MAX_REASON} characters")


def _finite(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def view_extent(g: Any) -> list[float]:
    """The plotting window of a 2-D gate: its density's bin edges, widened to hold the polygon's vertices or
    the range's finite limits (with a 3 % margin), as [x0, x1, y0, y1] in the gate's plotting coordinates."""
    ex, ey = (np.asarray(e, dtype=float) for e in g.density_edges)
    xs, ys = [float(ex[0]), float(ex[-1])], [float(ey[0]), float(ey[-1])]
    for v in g.geometry.get("vertices") or ():
        if len(v) == 2 and all(_finite(c) is not None for c in v):
            xs.append(float(v[0]))
            ys.append(float(v[1]))
    if g.geometry.get("type") == "range":  # a range's finite sides
        for side in ("mins", "maxs"):
            limits = list(g.geometry.get(side) or ())
            if len(limits) == 2:
                xs += [float(limits[0])] if _finite(limits[0]) is not None else []
                ys += [float(limits[1])] if _finite(limits[1]) is not None else []
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    if (x0, y0) == (float(ex[0]), float(ey[0])) and (x1, y1) == (float(ex[-1]), float(ey[-1])):
        return [x0, x1, y0, y1]
    dx, dy = (x1 - x0) * 0.03, (y1 - y0) * 0.03
    return [x0 - dx, x1 + dx, y0 - dy, y1 + dy]


def _windows(geo: Mapping[str, Any]) -> list[list[float | None]] | None:
    """The kept windows of a 1-D gate's geometry as [low, high] pairs (None: open): one for a range, one per
    member for a union of ranges (acquisition QC's kept time segments); None for any other geometry."""
    def window(g: Any) -> list[float | None] | None:
        if not isinstance(g, Mapping) or g.get("type") != "range":
            return None
        mins, maxs = g.get("mins"), g.get("maxs")
        if not isinstance(mins, list) or not isinstance(maxs, list) or len(mins) != 1 or len(maxs) != 1:
            return None
        ends = [None if v is None else _finite(v) for v in (mins[0], maxs[0])]
        if any(e is None and v is not None for e, v in zip(ends, (mins[0], maxs[0]))):
            return None  # an end that is neither open nor a finite number
        return ends

    if geo.get("type") == "boolean" and geo.get("op") == "or" and isinstance(geo.get("members"), list):
        found = [window(m) for m in geo["members"]]
        return None if not found or any(w is None for w in found) else found  # type: ignore[return-value]
    one = window(geo)
    return None if one is None else [one]


def timeline(g: Any, geometry: Mapping[str, Any]) -> dict[str, Any] | None:
    """A 1-D gate drawn over its parent's histogram as the run stored it (the acquisition-QC gate over the
    events per time bin): the bin edges and counts, and the kept windows of ``geometry`` (:func:`_windows`;
    None when it is no range or union of ranges: drawn, not editable). None for a gate without a stored 1-D
    histogram, or one whose numbers do not fit together (the store is read as untrusted)."""
    edges = g.density_edges or ()
    if len(g.dims) != 1 or g.density is None or len(edges) != 1:
        return None
    e = np.asarray(edges[0], dtype=float).ravel()
    counts = np.asarray(g.density, dtype=float).ravel()
    if len(e) < 2 or len(e) != len(counts) + 1 or not np.isfinite(e).all() or not np.all(np.diff(e) > 0) \
            or not np.isfinite(counts).all():
        return None
    return {"edges": e.tolist(), "counts": counts.tolist(), "windows": _windows(geometry)}


def _class_rows(patients: Any, patient: str) -> list[dict[str, Any]]:
    """Per allergen of one patient: class, confidence, reason and AUC inhibition (a patients table's rows)."""
    rows = []
    for row in patients.to_dict(orient="records"):
        if str(row.get("patient")) != patient:
            continue
        rows.append({"allergen": str(row.get("allergen")), "class": str(row.get("class") or ""),
                     "confidence": str(row.get("class_confidence") or ""),
                     "reason": str(row.get("class_reason") or ""),
                     "auc_inhibition_pct": _finite(row.get("auc_inhibition_pct")),
                     "cd_max_none": _finite(row.get("cd_max_none"))})
    return rows


CURVE_POINTS = 60


def curve_data(fit: Any) -> dict[str, Any]:
    """One arm's dose response as numbers to draw: the measured points (concentration, %, used in the
    fit or not, the tube), the fitted 4PL at ``CURVE_POINTS`` concentrations over the points' range (a
    tenth of it beyond each end; empty when not fitted) and the EC50 (None unless accepted)."""
    conc = np.asarray(fit.concentrations, dtype=float)
    y = np.asarray(fit.y, dtype=float)
    used = np.asarray(fit.used, dtype=bool) if np.size(fit.used) == conc.size else np.ones(conc.size, bool)
    files = list(fit.files) if len(fit.files) == conc.size else [""] * conc.size
    points = [{"conc": float(c), "pct": _finite(v), "used": bool(u), "file": str(f)}
              for c, v, u, f in zip(conc, y, used, files) if _finite(c) is not None and c > 0]
    curve: list[list[float]] = []
    if fit.fitted and points:
        lx = np.log10([p["conc"] for p in points])
        pad = 0.1 * ((lx.max() - lx.min()) or 1.0)
        xs = np.linspace(lx.min() - pad, lx.max() + pad, CURVE_POINTS)
        curve = [[float(10.0 ** x), float(v)] for x, v in zip(xs, fit.curve(xs)) if math.isfinite(v)]
    return {"arm": fit.arm, "unit": fit.unit or "", "status": fit.status, "points": points, "curve": curve,
            "ec50": _finite(fit.ec50) if fit.status == "ok" else None,
            "reason": "" if fit.status == "ok" else (fit.ec50_reason or "")}


def _curves(fits: Mapping[tuple[str, str, str], Any], patient: str,
            stored: Mapping[tuple[str, str, str], Any]) -> list[dict[str, Any]]:
    """Per allergen of one patient (sorted), its arms' dose responses now and as stored (None: no such fit)."""
    keys = [k for k in list(fits) + list(stored) if k[0] == patient]
    out = []
    for allergen in sorted({a for _, a, _ in keys}):
        arms = sorted({arm for _, a, arm in keys if a == allergen}, key=lambda a: (a != "none", a))
        out.append({"allergen": allergen, "arms": [
            {"arm": arm, **{name: curve_data(src[(patient, allergen, arm)]) if (patient, allergen, arm) in src else None
                            for name, src in (("now", fits), ("stored", stored))}} for arm in arms]})
    return out


def _signoff_text(entry: Mapping[str, Any] | None) -> str | None:
    return None if entry is None else f"signed off by {entry['reviewer']} on {entry['decided_at']}"


class ReviewSession:
    """One results folder opened for review (thread-safe for the single reviewer it serves)."""

    def __init__(self, out: Path | str, *, cache_size: int = 4) -> None:
        from ..pipeline import load_run

        self.out = Path(out)
        self.stored = load_run(self.out)
        self.template = self.stored.template
        self.results = sorted(self.stored.results, key=lambda r: r.tube.file)
        self.by_file = {r.tube.file: r for r in self.results}
        with self._store() as store:
            run = next(r for r in store.runs() if r["id"] == self.stored.run_id)
            self.checksums = {f: s for f, s in store.inputs(run["id"]).items() if ":" not in f}
        self.data_dir = Path(run["info"].get("data_dir") or ".")
        self.allow_outside = bool(run["info"].get("allow_outside_data_dir"))
        self.samples = SampleCache(cache_size)
        self._automated: dict[str, TubeResult | None] = {}
        self.lock = threading.Lock()
        self.config = self.stored.scores.config if self.stored.scores is not None else None
        tubes_df = self.stored.scores.tubes if self.stored.scores is not None else None
        self._rows = ({str(r["file"]): r for r in tubes_df.to_dict(orient="records")}
                      if tubes_df is not None and "file" in tubes_df else {})

    def _store(self) -> ResultStore:
        return ResultStore.in_folder(self.out, create=False)

    # ------------------------------------------------------------------ look-ups
    def result(self, tube_id: int) -> TubeResult:
        if not 0 <= tube_id < len(self.results):
            raise ReviewError("no such tube in this run", field="tube", expected=f"0 to {len(self.results) - 1}")
        return self.results[tube_id]

    def state(self) -> dict[str, TubeState]:
        with self._store() as store:
            return review_state(store.correction_log())

    def qc_status(self, r: TubeResult) -> str:
        row = self._rows.get(r.tube.file)
        if row is not None and isinstance(row.get("qc_status"), str):
            return row["qc_status"]
        from ..analysis.qc import status_of

        return status_of(r.flags)

    def flag_codes(self, r: TubeResult) -> list[str]:
        row = self._rows.get(r.tube.file) or {}
        table = row.get("qc_flags") if isinstance(row.get("qc_flags"), str) else ""
        return sorted({f.code for f in r.flags} | {c for c in table.split(";") if c})

    def queue(self, *, patient: str | None = None, flag: str | None = None,
              status: str | None = None) -> dict[str, Any]:
        """The tubes ordered failed → flagged → unreviewed → reviewed (then by file), filtered, with counts."""
        states = self.state()
        items = []
        for i, r in enumerate(self.results):
            st = states.get(r.tube.file, TubeState())
            qc = self.qc_status(r)
            review = st.status
            group = ("reviewed" if review != "unreviewed" else "failed" if qc == "fail"
                     else "flagged" if qc == "warn" else "unreviewed")
            items.append({"id": i, "file": r.tube.file, "patient": r.tube.patient, "pretreatment": r.tube.pretreatment,
                          "condition": r.tube.condition, "allergen": r.tube.allergen,
                          "concentration": _finite(r.tube.concentration), "n_basophils": r.n_basophils,
                          "qc": qc, "flags": self.flag_codes(r), "review": review, "group": group})
        counts = {g: sum(1 for it in items if it["group"] == g) for g in QUEUE_ORDER}
        counts["left"] = sum(1 for it in items if it["review"] == "unreviewed")
        counts["total"] = len(items)
        shown = [it for it in items
                 if (patient is None or it["patient"] == patient) and (flag is None or flag in it["flags"])
                 and (status is None or it["review"] == status or it["group"] == status)]
        shown.sort(key=lambda it: (QUEUE_ORDER.index(it["group"]), it["file"]))
        return {"tubes": shown, "counts": counts, "patients": sorted({r.tube.patient for r in self.results}),
                "flags": sorted({c for it in items for c in it["flags"]})}

    # ------------------------------------------------------------------ one tube
    def _thresholds(self) -> dict[tuple[str, str], float]:
        """The threshold corrections in force in the log: (patient, arm) -> value."""
        with self._store() as store:
            active = store.active_corrections()
        return {(e["patient"], e["pretreatment"]): float(e["value"]) for e in active if e["kind"] == "threshold"}

    def threshold(self, r: TubeResult) -> float | None:
        """The activation threshold of the tube's patient and arm: a correction in force, else the run's."""
        corrected = self._thresholds().get((r.tube.patient, r.tube.pretreatment))
        if corrected is not None:
            return corrected
        scores = self.stored.scores
        if scores is None or self.config is None:
            return None
        marker = self.config.markers.primary_marker.lower()
        for (p, a, m), t in scores.thresholds.items():
            if p == r.tube.patient and a == r.tube.pretreatment and m.lower() == marker:
                return _finite(t.value)
        return None

    def pct_cd63(self, r: TubeResult, threshold: float | None) -> float | None:
        from ..analysis.metrics import pct_above

        if threshold is None or self.config is None:
            return None
        marker = self.config.markers.primary_marker.lower()
        values = next((v for k, v in (r.basophil_values or {}).items() if k.lower() == marker), None)
        return None if values is None else _finite(pct_above(values, threshold))

    def numbers(self, r: TubeResult, flags: list[Flag] | None = None) -> dict[str, Any]:
        """Counts, %CD63+ and QC of a (possibly re-gated) result."""
        from ..analysis.qc import basophil_count_flags, fraction_flags, status_of, unique_flags

        thr = self.threshold(r)
        if flags is None:
            flags = list(r.flags)
            if self.config is not None and r.error is None:
                flags += basophil_count_flags(int(r.n_basophils or 0), self.config.qc)
                flags += fraction_flags(r.event_fractions or {}, self.config.qc)
        flags = unique_flags(flags)
        return {"n_events": r.n_events, "n_basophils": r.n_basophils, "threshold": thr,
                "pct_cd63": self.pct_cd63(r, thr), "qc": status_of(flags) if flags or r.error is None else "fail",
                "flags": [{"code": f.code, "severity": f.severity, "message": f.message} for f in flags],
                "gate_counts": [{"name": g.name, "count": g.count, "parent_count": g.parent_count, "method": g.method}
                          for g in r.gates]}

    def tube(self, tube_id: int) -> dict[str, Any]:
        r = self.result(tube_id)
        st = self.state().get(r.tube.file, TubeState())
        gates = []
        for k, g in enumerate(r.gates):
            edges = [np.asarray(e, dtype=float).tolist() for e in (g.density_edges or ())]
            editable = (g.geometry.get("type") in EDITABLE_TYPES and len(g.dims) == 2 and len(edges) == 2
                        and g.density is not None)
            geometry = st.gates[g.name]["value"] if g.name in st.gates else g.geometry
            line = timeline(g, geometry)
            editable = editable or (line is not None and line["windows"] is not None)
            gates.append({"index": k, "name": g.name, "parent": g.parent, "dims": list(g.dims),
                          "geometry": geometry, "count": g.count, "parent_count": g.parent_count,
                          "method": g.method, "has_density": g.density is not None and len(edges) == 2,
                          "extent": view_extent(g) if len(edges) == 2 else None, "editable": editable,
                          "timeline": line,
                          "automated": g.geometry if g.name not in st.gates else st.gates[g.name]["before"]})
        t = r.tube
        row = self._rows.get(t.file) or {}
        # a correction or exclusion made since the last run: show the tube as the next run will score it
        numbers = (self._checked_numbers(r, self._as_decided(self._regated(r), st), set(st.gates))
                   if st.gates and r.error is None else self.numbers(self._as_decided(r, st)))
        return {"id": tube_id, "file": t.file, "patient": t.patient, "pretreatment": t.pretreatment,
                "condition": t.condition, "allergen": t.allergen, "concentration": _finite(t.concentration),
                "unit": t.unit, "error": r.error, "population": self.template.population, "gates": gates,
                "qc_status": self.qc_status(r), "review": st.status, "decision": st.decision,
                "corrected_gates": sorted(st.gates), "signoff": _signoff_text(self.signoffs().get(t.patient)),
                "stored_pct_cd63": _finite(row.get("pct_cd63")),
                **numbers}

    def density_png(self, tube_id: int, gate_index: int) -> bytes:
        """The stored density of one gate's parent as a PNG spanning exactly the density's bin edges."""
        from ..report.plots import PngRenderer, _density_image

        r = self.result(tube_id)
        if not 0 <= gate_index < len(r.gates):
            raise ReviewError("no such gate", field="gate", expected=f"0 to {len(r.gates) - 1}")
        g = r.gates[gate_index]
        edges = [np.asarray(e, dtype=float) for e in (g.density_edges or ())]
        if g.density is None or len(edges) != 2:
            raise ReviewError("this gate has no 2-D density", field="gate", expected="a 2-D gate")

        x0, x1, y0, y1 = view_extent(g)

        def draw(ax: Any) -> None:
            _density_image(ax, np.asarray(g.density), edges[0], edges[1])
            ax.set_xlim(x0, x1)
            ax.set_ylim(y0, y1)
            ax.set_axis_off()

        png = PngRenderer(dpi=100).render("gate", g.name, draw, size=(4.2, 4.2),
                                          margins=dict(left=0.0, right=1.0, bottom=0.0, top=1.0))
        return png.data

    # ------------------------------------------------------------------ re-gating
    def _path(self, r: TubeResult) -> str:
        from ..pipeline import resolve_file

        return str(resolve_file(self.data_dir, r.tube, allow_outside=self.allow_outside))

    def overrides_for(self, r: TubeResult, gate: str | None, geometry: Mapping[str, Any] | None
                      ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """The gate objects to re-gate with (the tube's active corrections, the edited gate on top), and the
        edited geometry checked against the template (ReviewError naming what is wrong)."""
        from ..review.corrections import build_gate, check_geometry

        st = self.state().get(r.tube.file, TubeState())
        geos = {name: e["value"] for name, e in st.gates.items()}
        checked = None
        if gate is not None:
            try:
                n_dims = len(self.template.gate(gate).dims)
            except KeyError:
                raise ReviewError(f"{gate!r} is not a gate of template {self.template.name}", field="gate",
                                  expected=", ".join(g.name for g in self.template.gates)) from None
            problems: list[str] = []
            checked = check_geometry("geometry", geometry, n_dims, problems)
            if checked is None:
                raise ReviewError("the edited gate is not a valid geometry: " + "; ".join(problems)[:400],
                                  field="geometry",
                                  expected="the gate's polygon vertices or range limits in its plotting coordinates")
            geos[gate] = checked
        return {name: build_gate(self.template, name, geo) for name, geo in geos.items()}, checked

    def _regated(self, r: TubeResult, gate: str | None = None, geometry: Mapping[str, Any] | None = None
                 ) -> TubeResult:
        """The tube gated again from its (cached) FCS sample with its active corrections and ``gate`` set to
        ``geometry`` (checked by :meth:`overrides_for`)."""
        from ..gating.tube import gate_sample
        from ..io.fcs import read_fcs

        overrides, _ = self.overrides_for(r, gate, geometry)
        path = self._path(r)
        sample = self.samples.get(path, read_fcs)
        return gate_sample(sample, r.tube, self.template, overrides=overrides, source=path)

    def automated(self, file: str) -> TubeResult | None:
        """The automated result of a tube (the store keeps it beside a corrected one)."""
        from ..store import AUTO

        if file not in self._automated:
            with self._store() as store:
                self._automated[file] = store.get_tube(file, AUTO)
        return self._automated[file]

    def _checked_numbers(self, r: TubeResult, new: TubeResult, gates: set[str]) -> dict[str, Any]:
        """:meth:`numbers` of a re-gated result, with the plausibility check against the automated one."""
        from ..gating._plausibility import implausible_gate_flags

        new.flags.extend(implausible_gate_flags(self.automated(r.tube.file), new, self.template.population, gates))
        return self.numbers(new)

    def regate(self, tube_id: int, gate: str, geometry: Mapping[str, Any]) -> dict[str, Any]:
        """Re-gate a tube from its FCS file with ``gate`` set to ``geometry``: new counts, %CD63+, QC (with
        ``MANUAL_GATE_IMPLAUSIBLE`` when the population does not look like the automated one's)."""
        r = self.result(tube_id)
        _, checked = self.overrides_for(r, gate, geometry)
        corrected = set(self.state().get(r.tube.file, TubeState()).gates) | {gate}
        out = self._checked_numbers(r, self._regated(r, gate, checked), corrected)
        out["geometry"] = checked
        return out

    # ------------------------------------------------------------------ the activation threshold
    def _activation(self, r: TubeResult) -> tuple[Any, np.ndarray] | None:
        """The activation marker's dimension (with the template's display transform) and this tube's
        basophil values of it; None when the tube has none."""
        from ..gating.tube import template_dimension

        if self.config is None:
            return None
        marker = self.config.markers.primary_marker.lower()
        key = next((k for k in (r.basophil_values or {}) if k.lower() == marker), None)
        if key is None:
            return None
        return template_dimension(self.template, key), np.asarray(r.basophil_values[key], dtype=np.float64)

    def histogram(self, tube_id: int) -> dict[str, Any] | None:
        """The tube's basophils on the activation marker (display scale, 80 bins) with the threshold; the
        threshold is editable on a negative control (it applies to the patient and arm)."""
        from ..gating import estimators as est

        r = self.result(tube_id)
        got = self._activation(r)
        if got is None or len(got[1]) == 0:
            return None
        dim, values = got
        thr = self.threshold(r)
        lo, hi = est.scale_limits(dim, values)
        scaled = est.to_scale(dim, values)
        t_scale = float(est.to_scale(dim, np.array([thr]))[0]) if thr is not None else None
        if t_scale is not None:
            lo, hi = min(lo, t_scale), max(hi, t_scale)
        counts, edges = np.histogram(scaled, bins=80, range=(lo, hi))
        return {"marker": dim.key, "edges": edges.tolist(), "counts": counts.tolist(), "threshold": thr,
                "threshold_scale": t_scale, "editable": r.tube.condition == "negative_control"}

    def threshold_from_scale(self, tube_id: int, scale_value: Any) -> float:
        """A threshold dragged on the histogram (display scale) in compensated linear units."""
        from ..gating import estimators as est

        r = self.result(tube_id)
        got = self._activation(r)
        x = _finite(scale_value)
        if got is None or x is None:
            raise ReviewError("no threshold to move here", field="threshold",
                              expected="a finite position on a tube with activation-marker values")
        value = float(est.from_scale(got[0], np.array([x]))[0])
        if not math.isfinite(value):
            raise ReviewError("the threshold is off the scale", field="threshold", expected="a finite value")
        return value

    def threshold_preview(self, tube_id: int, scale_value: Any) -> dict[str, Any]:
        """This tube's %CD63+ with a threshold dragged to ``scale_value``."""
        r = self.result(tube_id)
        value = self.threshold_from_scale(tube_id, scale_value)
        return {"threshold": value, "pct_cd63": self.pct_cd63(r, value), "before": self.threshold(r)}

    # ------------------------------------------------------------------ the patient
    def _as_decided(self, r: TubeResult, st: TubeState) -> TubeResult:
        """The result as scoring sees it now: flagged ``EXCLUDED_BY_REVIEWER`` when its latest decision is an
        exclusion, without that flag when the exclusion was reverted since the run."""
        from dataclasses import replace

        from ..analysis.score import EXCLUDED_FLAG, excluded_by_reviewer
        from ..review._status import exclusion_message

        if st.decision == "exclude" and not excluded_by_reviewer(r):
            return replace(r, flags=[*r.flags, Flag(EXCLUDED_FLAG, "fail", exclusion_message(st.decision_entry or {}))])
        if st.decision != "exclude" and excluded_by_reviewer(r):
            return replace(r, flags=[f for f in r.flags if f.code != EXCLUDED_FLAG])
        return r

    def patient_preview(self, tube_id: int, gate: str | None = None,
                        geometry: Mapping[str, Any] | None = None, threshold: Any = None) -> dict[str, Any]:
        """The patient's classification and dose-response curves per allergen as stored, and with the
        tube's edited gate or a threshold dragged on its histogram (``threshold``, display scale; and every
        gate correction and exclusion of the patient's tubes made since the run): the patient's tubes
        scored again. ``curves``: per allergen, per arm, the measured points and the fitted 4PL curve
        (:func:`curve_data`), now and as stored."""
        from ..analysis.score import score_experiment

        r = self.result(tube_id)
        patient = r.tube.patient
        states = self.state()
        group = []
        for other in self.results:
            if other.tube.patient != patient:
                continue
            st = states.get(other.tube.file, TubeState())
            if other is r and gate is not None:
                _, checked = self.overrides_for(r, gate, geometry)
                now = self._regated(r, gate, checked)
            elif st.gates and other.error is None:
                now = self._regated(other)
            else:
                now = other
            group.append(self._as_decided(now, st))
        thresholds = {k: v for k, v in self._thresholds().items() if k[0] == patient}
        if threshold is not None:  # dragged on the histogram (display scale): for this tube's arm
            thresholds[(patient, r.tube.pretreatment)] = self.threshold_from_scale(tube_id, threshold)
        scores = score_experiment(group, self.config, threshold_overrides=thresholds or None)
        stored = self.stored.scores
        return {"patient": patient, "now": _class_rows(scores.patients, patient),
                "stored": _class_rows(stored.patients, patient) if stored is not None else [],
                "curves": _curves(scores.fits, patient, stored.fits if stored is not None else {})}

    # ------------------------------------------------------------------ decisions
    def decide(self, tube_id: int, action: str, *, reviewer: str, reason: str = "",
               gate: str | None = None, geometry: Mapping[str, Any] | None = None,
               threshold: Any = None) -> list[int]:
        """Append a decision to the corrections log: ``accept``, ``correct`` (gate + geometry), ``exclude``,
        ``revert`` (withdraw the tube's corrections and decision) or ``threshold`` (on a negative control: the
        CD63 threshold of its patient and arm, dragged to ``threshold`` on the display scale). Returns the log
        entry ids."""
        from .. import __version__
        from ..review._log import correction_basis

        reviewer = (reviewer or "").strip()
        reason = (reason or "").strip()
        if not reviewer:
            raise ReviewError("say who you are first", field="reviewer", expected="the reviewer's name")
        check_reason(reason)
        if action in ("correct", "exclude", "revert", "threshold") and not reason:
            raise ReviewError(f"{action}: give a reason", field="reason", expected="why, in a few words")
        r = self.result(tube_id)
        file = r.tube.file
        st = self.state().get(file, TubeState())
        common = {"reviewer": reviewer, "reason": reason or "accepted as gated", "source": SOURCE,
                  "version": __version__, "template_sha256": self.template.sha256}
        basis = correction_basis("gate", ("gate", file, ""), [r.tube], self.checksums)
        entries: list[dict[str, Any]] = []
        if action == "correct":
            if gate is None or geometry is None:
                raise ReviewError("correct: which gate and what geometry", field="geometry",
                                  expected="the edited gate")
            _, checked = self.overrides_for(r, gate, geometry)
            before = st.gates[gate]["value"] if gate in st.gates else next(
                (g.geometry for g in r.gates if g.name == gate), None)
            entries.append({**common, "action": "apply", "kind": "gate", "file": file, "gate": gate,
                            "value": checked, "before": before, "input_sha256": basis})
            entries.append({**common, "action": "accept", "kind": "tube", "file": file, "value": None,
                            "before": None, "input_sha256": basis})
        elif action == "threshold":
            if not reason:
                raise ReviewError("threshold: give a reason", field="reason", expected="why, in a few words")
            if r.tube.condition != "negative_control":
                raise ReviewError("the threshold is set on the negative control", field="action",
                                  expected="a negative-control tube of the patient and arm")
            value = self.threshold_from_scale(tube_id, threshold)
            target = ("threshold", r.tube.patient, r.tube.pretreatment)
            entries.append({**common, "action": "apply", "kind": "threshold", "patient": r.tube.patient,
                            "pretreatment": r.tube.pretreatment, "value": value, "before": self.threshold(r),
                            "input_sha256": correction_basis("threshold", target,
                                                             [x.tube for x in self.results], self.checksums)})
        elif action in ("accept", "exclude"):
            entries.append({**common, "action": action, "kind": "tube", "file": file, "value": None,
                            "before": None, "input_sha256": basis})
        elif action == "revert":
            for name, e in sorted(st.gates.items()):
                entries.append({**common, "action": "withdraw", "kind": "gate", "file": file, "gate": name,
                                "value": None, "before": e["value"], "input_sha256": basis})
            if st.decision is not None:
                entries.append({**common, "action": "withdraw", "kind": "tube", "file": file, "value": None,
                                "before": None, "input_sha256": basis})
            if not entries:
                raise ReviewError("nothing to revert: this tube has no decision", field="action",
                                  expected="a tube that was accepted, corrected or excluded")
        else:
            raise ReviewError(f"unknown decision {action!r:.40}", field="action",
                              expected="accept, correct, exclude or revert")
        with self.lock, self._store() as store:
            return store.append_corrections(entries)

    def signoffs(self) -> dict[str, dict[str, Any]]:
        """Per patient signed off (not withdrawn, and no decision on its tubes since), its sign-off entry."""
        with self._store() as store:
            return signoffs(store.correction_log(), {r.tube.file: r.tube.patient for r in self.results})

    def sign_off(self, patient: str, *, reviewer: str, reason: str = "", withdraw: bool = False) -> list[int]:
        """Sign a patient off ("reviewed and approved": every tube of it reviewed), or withdraw the sign-off
        (with a reason). Appended to the corrections log."""
        from .. import __version__

        reviewer, reason = (reviewer or "").strip(), (reason or "").strip()
        if not reviewer:
            raise ReviewError("say who you are first", field="reviewer", expected="the reviewer's name")
        check_reason(reason)
        files = [r.tube.file for r in self.results if r.tube.patient == patient]
        if not files:
            raise ReviewError("no such patient in this run", field="patient",
                              expected="a patient of the run's layout")
        signed = patient in self.signoffs()
        if withdraw:
            if not signed:
                raise ReviewError("this patient is not signed off", field="action", expected="a signed-off patient")
            if not reason:
                raise ReviewError("withdrawing a sign-off: give a reason", field="reason",
                                  expected="why, in a few words")
        else:
            states = self.state()
            left = [f for f in files if states.get(f, TubeState()).status == "unreviewed"]
            if left:
                raise ReviewError(f"{len(left)} tube(s) of this patient are not reviewed yet (first: {left[0]})",
                                  field="patient", expected="every tube accepted, corrected or excluded first")
        entry = {"action": "withdraw" if withdraw else "signoff", "kind": "patient", "patient": patient,
                 "value": None, "before": None, "reviewer": reviewer, "reason": reason or "reviewed and approved",
                 "source": SOURCE, "version": __version__, "template_sha256": self.template.sha256,
                 "input_sha256": None}
        with self.lock, self._store() as store:
            return store.append_corrections([entry])

    def history(self, tube_id: int) -> list[dict[str, Any]]:
        """The log entries about one tube, oldest first."""
        file = self.result(tube_id).tube.file
        with self._store() as store:
            log = store.correction_log()
        return [{k: e.get(k) for k in ("id", "action", "kind", "gate", "reviewer", "reason", "decided_at",
                                        "source", "version", "value", "before")}
                for e in log if e["kind"] in ("gate", "tube") and e["file"] == file]
