"""Reviewer corrections: the overrides file is validated with located errors; an override file and a gate
edited in FlowJo change exactly the affected results, are stored with who/when/why beside the automated
result, and withdrawing them restores the automated results."""

from __future__ import annotations

import shutil
from pathlib import Path
from xml.etree import ElementTree as ET

import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bat_analysis.pipeline import RunOptions, export_gates, load_run, run
from bat_analysis.review.corrections import OverridesError, parse_overrides
from bat_analysis.store import AUTO, REVIEWED, ResultStore


@pytest.fixture(scope="module")
def template():
    from bat_analysis.gating.templates import load_template

    return load_template("bat_ccr3_cd63")


SIMULATION = {"n_patients": 2, "n_events": 6000, "seed": 21, "n_concentrations": 4}  # experiment (conftest.py)


@pytest.fixture(scope="module")
def baseline(stored_run):
    """The module's stored run (conftest.py), never changed: tests copy it (``_fresh_copy``)."""
    return stored_run


def _fresh_copy(baseline: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(baseline, out)
    return out


def _run(experiment, out, **kw):
    return run(RunOptions(data_dir=experiment.out_dir, layout=experiment.layout_path, out=out, workers=1,
                          quiet=True, reports=False, **kw))


def test_every_problem_is_reported_with_its_location(experiment, template):
    doc = {"reviewer": "Jane Doe", "colour": "red", "corrections": [
        {"tube": "nope.fcs", "gate": "basophils", "geometry": {"type": "range", "mins": [0.5, None],
                                                               "maxs": [None, 0.6]}, "reason": "x"},
        {"tube": experiment.tubes[0].file, "gate": "monocytes", "geometry": {"type": "range"}, "reason": "x"},
        {"tube": experiment.tubes[0].file, "gate": "basophils",
         "geometry": {"type": "polygon", "vertices": [[0, 0], [1, "a"]]}, "reason": "x"},
        {"tube": experiment.tubes[0].file, "gate": "basophils",
         "geometry": {"type": "range", "mins": [0.7, 0.1], "maxs": [0.5, 0.4]}},
        {"patient": "P01", "pretreatment": "omalizumab", "threshold": "high", "reason": "bimodal"},
        {"patient": "P07", "threshold": 100.0, "reason": "x"},
        {"tube": experiment.tubes[0].file, "threshold": 10.0, "gate": "basophils",
         "geometry": {"type": "range", "mins": [0.1, None], "maxs": [None, 0.5]}, "reason": "x"},
        "just a string",
    ]}
    with pytest.raises(OverridesError) as info:
        parse_overrides(doc, template, experiment.tubes, source="review.yaml")
    problems = info.value.problems
    expected = [
        "colour: unknown key",
        "corrections[0].tube: 'nope.fcs' is not a file of the layout",
        "corrections[1].gate: 'monocytes' is not a gate of template bat_ccr3_cd63",
        "corrections[2].geometry.vertices: expected a list of >= 3 [x, y] pairs",
        "corrections[3].reason: missing",
        "corrections[3].geometry: dimension 1: min 0.7 must be below max 0.5",
        "corrections[4].threshold: expected a number",
        "corrections[5]: patient 'P07' with pretreatment 'none' is not in the layout",
        "corrections[6]: give either 'geometry' (with 'gate') or 'threshold'",
        "corrections[7]: expected a mapping, got str",
    ]
    for text in expected:
        assert any(p.startswith(text) for p in problems), (text, problems)
    assert len(problems) == len(expected)
    assert "review.yaml" in str(info.value) and "nothing was run" in str(info.value)


def test_a_valid_file_parses(experiment, template):
    tube = experiment.tubes[4]
    doc = {"reviewer": "Jane Doe", "corrections": [
        {"tube": tube.file, "gate": "basophils", "reason": "eosinophils included",
         "geometry": {"type": "range", "mins": [0.5, None], "maxs": [None, 0.6]}},
        {"tube": experiment.tubes[0].file, "threshold": 800, "reviewer": "John Roe", "reason": "bimodal"}]}
    c = parse_overrides(doc, template, experiment.tubes, source="review.yaml")
    assert list(c.gates_for(tube.file)) == ["basophils"] and c.gates_for(experiment.tubes[1].file) == {}
    t0 = experiment.tubes[0]
    assert c.thresholds() == {(t0.patient, t0.pretreatment): 800.0}
    gate = c.gate_overrides(template, tube.file)["basophils"]
    assert [d.key for d in gate.dims] == list(template.gate("basophils").dims) and gate.parent == "singlets"
    assert "adjusted by Jane Doe: eosinophils included" in c.note_for(tube.file, tube.patient, tube.pretreatment)
    assert c.sha256_for(tube.file) and c.sha256_for(experiment.tubes[1].file) is None


def test_corrections_read_geometry_like_templates_both_range_spellings(experiment, template):
    """One reader of gate geometry (gating.geometry): min/max as in templates or mins/maxs as stored give the
    same correction, stored with mins/maxs and float numbers."""
    tube = experiment.tubes[4]

    def gate_of(geometry):
        doc = {"reviewer": "J", "corrections": [{"tube": tube.file, "gate": "basophils", "reason": "r",
                                                 "geometry": geometry}]}
        return parse_overrides(doc, template, experiment.tubes, source="o.yaml").gates[0]

    short = gate_of({"type": "range", "min": [0, None], "max": [None, 1]})
    stored = gate_of({"type": "range", "mins": [0.0, None], "maxs": [None, 1.0]})
    assert short.geometry == stored.geometry == {"type": "range", "mins": [0.0, None], "maxs": [None, 1.0]}
    with pytest.raises(OverridesError, match="give mins or min, not both"):
        gate_of({"type": "range", "min": [0, None], "mins": [0, None], "maxs": [None, 1]})


def _allergen_tube(experiment, patient: str):
    return next(t for t in experiment.tubes if t.patient == patient and t.condition == "allergen"
                and t.pretreatment == "none")


@pytest.mark.slow
def test_override_file_changes_exactly_the_affected_results(experiment, baseline, tmp_path):
    out = _fresh_copy(baseline, tmp_path)
    base_tubes = pd.read_csv(baseline / "tubes.csv").set_index("file")
    base_patients = pd.read_csv(baseline / "patients.csv").set_index("patient")
    victim = _allergen_tube(experiment, "P01")
    with ResultStore.in_folder(baseline) as store:
        auto_gate = next(g for g in store.get_tube(victim.file).gates if g.name == "basophils")
        p02_key = store.conn.execute("SELECT cache_key FROM patient_scores WHERE patient='P02'").fetchone()[0]
    # the reviewer keeps only the brighter half of the automated basophil gate (on CCR3)
    xs = [v[0] for v in auto_gate.geometry["vertices"]]
    cut = (min(xs) + max(xs)) / 2
    geometry = {"type": "range", "mins": [cut, None], "maxs": [None, None]}
    geometry["maxs"][1] = max(v[1] for v in auto_gate.geometry["vertices"])
    thr_value = 777.0
    overrides = tmp_path / "review.yaml"
    overrides.write_text(yaml.safe_dump({"reviewer": "Jane Doe", "corrections": [
        {"tube": victim.file, "gate": "basophils", "geometry": geometry, "reason": "dim CCR3 events included"},
        {"patient": "P02", "pretreatment": "omalizumab", "threshold": thr_value, "reviewer": "John Roe",
         "reason": "bimodal negative control"}]}))
    summary = _run(experiment, out, overrides=overrides)
    assert summary.n_gated == 1  # only the corrected tube is gated again

    tubes = pd.read_csv(out / "tubes.csv").set_index("file")
    patients = pd.read_csv(out / "patients.csv").set_index("patient")
    contract = list(base_tubes.columns[:15])
    changed = {f for f in tubes.index if not tubes.loc[f, contract].equals(base_tubes.loc[f, contract])}
    p02_oma = {t.file for t in experiment.tubes if t.patient == "P02" and t.pretreatment == "omalizumab"}
    assert changed == {victim.file} | p02_oma
    assert tubes.loc[victim.file, "n_basophils"] < base_tubes.loc[victim.file, "n_basophils"]
    assert (tubes.loc[sorted(p02_oma), "cd63_threshold"] == thr_value).all()
    assert (tubes.loc[sorted(p02_oma), "threshold_method"] == "manual").all()
    adjusted = set(tubes.index[tubes["manually_adjusted"]])
    assert adjusted == {victim.file} | p02_oma
    assert "adjusted by Jane Doe: dim CCR3 events included" in tubes.loc[victim.file, "review_note"]
    assert "set to 777 by John Roe: bimodal negative control" in tubes.loc[sorted(p02_oma)[0], "review_note"]
    assert not patients.loc["P02"].equals(base_patients.loc["P02"])

    with ResultStore.in_folder(out) as store:
        auto = store.get_tube(victim.file, AUTO)
        reviewed = store.get_tube(victim.file, REVIEWED)
        active = store.active_corrections()
        p02_after = store.conn.execute("SELECT cache_key FROM patient_scores WHERE patient='P02'").fetchone()[0]
    assert next(g for g in auto.gates if g.name == "basophils").geometry == auto_gate.geometry
    rev_gate = next(g for g in reviewed.gates if g.name == "basophils")
    assert rev_gate.method == "override" and rev_gate.geometry["mins"][0] == pytest.approx(cut)
    assert {(e["kind"], e["action"], e["reviewer"], e["reason"]) for e in active} == {
        ("gate", "apply", "Jane Doe", "dim CCR3 events included"),
        ("threshold", "apply", "John Roe", "bimodal negative control")}
    assert all(e["decided_at"] and e["source"] == str(overrides) and e["version"] and e["template_sha256"]
               and e["input_sha256"] for e in active)
    gate_entry = next(e for e in active if e["kind"] == "gate")
    assert gate_entry["before"] == auto_gate.geometry and gate_entry["value"]["mins"][0] == pytest.approx(cut)
    assert p02_after != p02_key
    corrected = {name: (out / name).read_bytes() for name in ("tubes.csv", "patients.csv")}

    # a plain re-run keeps every correction (and says so); the same file given again logs nothing twice
    again = _run(experiment, out)
    assert again.n_gated == 0 and again.corrections_note == "2 reviewer corrections from the store applied"
    assert all((out / name).read_bytes() == data for name, data in corrected.items())
    assert _run(experiment, out, overrides=overrides).corrections_note.startswith(
        "2 reviewer corrections from the store applied (0 new or changed, 0 withdrawn")
    with ResultStore.in_folder(out) as store:
        assert len(store.correction_log()) == 2

    # withdrawing them is an explicit, logged act, and restores the automated results byte for byte
    withdraw = tmp_path / "withdraw.yaml"
    withdraw.write_text(yaml.safe_dump({"reviewer": "Jane Doe", "corrections": [
        {"tube": victim.file, "gate": "basophils", "withdraw": True, "reason": "automated gate was right"},
        {"patient": "P02", "pretreatment": "omalizumab", "withdraw": True, "reason": "threshold was fine"}]}))
    undone = _run(experiment, out, overrides=withdraw)
    assert undone.corrections_note == ("0 reviewer corrections from the store applied "
                                       f"(0 new or changed, 2 withdrawn by {withdraw})")
    for name in ("tubes.csv", "patients.csv"):
        assert (out / name).read_bytes() == (baseline / name).read_bytes(), name
    with ResultStore.in_folder(out) as store:
        assert store.current_variant(victim.file) == AUTO and store.active_corrections() == []
        log = store.correction_log()
    assert [e["action"] for e in log] == ["apply", "apply", "withdraw", "withdraw"]  # the audit trail
    assert log[2]["before"] == gate_entry["value"] and log[2]["reason"] == "automated gate was right"
    assert _run(experiment, out, overrides=withdraw).corrections_note is None  # withdrawn already: nothing logged


def test_a_later_overrides_file_adds_to_the_earlier_ones(experiment, baseline, tmp_path):
    out = _fresh_copy(baseline, tmp_path)
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text(yaml.safe_dump({"reviewer": "Jane Doe", "corrections": [
        {"patient": "P01", "pretreatment": "none", "threshold": 900, "reason": "bimodal"}]}))
    second.write_text(yaml.safe_dump({"reviewer": "John Roe", "corrections": [
        {"patient": "P02", "pretreatment": "none", "threshold": 950, "reason": "bimodal too"},
        {"patient": "P01", "pretreatment": "none", "threshold": 1000, "reason": "second look"}]}))
    _run(experiment, out, overrides=first)
    summary = _run(experiment, out, overrides=second)
    assert summary.corrections_note == (f"2 reviewer corrections from the store applied (2 new or changed, "
                                        f"0 withdrawn by {second})")
    tubes = pd.read_csv(out / "tubes.csv")
    none = tubes[tubes["pretreatment"] == "none"].groupby("patient")["cd63_threshold"].unique()
    assert list(none["P01"]) == [1000.0] and list(none["P02"]) == [950.0]
    with ResultStore.in_folder(out) as store:
        log = store.correction_log()
    assert [(e["patient"], e["value"], e["before"]) for e in log] == [("P01", 900.0, None), ("P02", 950.0, None),
                                                                       ("P01", 1000.0, 900.0)]


def test_withdrawing_a_correction_that_was_never_made_is_refused(experiment, baseline, tmp_path):
    out = _fresh_copy(baseline, tmp_path)
    doc = tmp_path / "withdraw.yaml"
    doc.write_text(yaml.safe_dump({"reviewer": "Jane Doe", "corrections": [
        {"tube": experiment.tubes[0].file, "gate": "basophils", "withdraw": True, "reason": "oops"}]}))
    with pytest.raises(OverridesError, match="no correction in the results store to withdraw"):
        _run(experiment, out, overrides=doc)
    with ResultStore.in_folder(out) as store:
        assert store.correction_log() == [] and store.last_run()["status"] == "completed"  # nothing was run


def test_a_correction_of_a_changed_tube_file_is_stale_not_applied_and_kept(experiment, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(experiment.out_dir, data)
    layout = data / experiment.layout_path.name
    out = tmp_path / "out"
    victim = _allergen_tube(experiment, "P01")
    doc = tmp_path / "review.yaml"
    doc.write_text(yaml.safe_dump({"reviewer": "Jane Doe", "corrections": [
        {"tube": victim.file, "gate": "basophils", "reason": "dim CCR3 events included",
         "geometry": {"type": "range", "mins": [0.5, None], "maxs": [None, 0.9]}}]}))
    opts = dict(data_dir=data, layout=layout, out=out, workers=1, quiet=True, reports=False)
    run(RunOptions(**opts, overrides=doc))
    # the FCS file is exported again (other bytes) after the correction was made
    other = next(t for t in experiment.tubes if t.patient == "P01" and t.condition == "allergen"
                 and t.file != victim.file)
    shutil.copyfile(data / other.file, data / victim.file)
    summary = run(RunOptions(**opts))
    assert summary.corrections_note == "0 reviewer corrections from the store applied, 1 stale (not applied)"
    (note,) = summary.stale
    assert f"gate basophils of {victim.file}" in note and "stale" in note and "the FCS file changed" in note
    tubes = pd.read_csv(out / "tubes.csv").set_index("file")
    assert "CORRECTION_STALE" in tubes.loc[victim.file, "qc_flags"]
    assert not tubes.loc[victim.file, "manually_adjusted"]
    with ResultStore.in_folder(out) as store:
        assert store.current_variant(victim.file) == AUTO  # not applied ...
        (kept,) = store.active_corrections()  # ... and not dropped
        statuses = store.run_corrections(store.last_run()["id"])
    assert kept["file"] == victim.file and [e["status"] for e in statuses] == ["stale"]
    assert load_run(out).results  # the stored run (as 'bat report' reads it) carries the stale flag too
    assert any(f.code == "CORRECTION_STALE" for r in load_run(out).results if r.tube.file == victim.file
               for f in r.flags)


def test_a_correction_made_on_another_template_is_stale(experiment, template):
    from bat_analysis.review._log import from_store

    tube = experiment.tubes[0]
    entry = {"id": 1, "target": ("gate", tube.file, "basophils"), "kind": "gate", "file": tube.file,
             "gate": "basophils", "value": {"type": "range", "mins": [0.5, None], "maxs": [None, 0.9]},
             "reviewer": "Jane", "reason": "eos", "decided_at": "2026-01-01", "source": "r.yaml",
             "input_sha256": "a" * 64, "template_sha256": template.sha256}
    checksums = {tube.file: "a" * 64}
    fine = from_store([entry], template, experiment.tubes, checksums)
    assert list(fine.corrections.gates_for(tube.file)) == ["basophils"] and fine.stale == []
    moved = from_store([{**entry, "template_sha256": "b" * 64}], template, experiment.tubes, checksums)
    assert moved.corrections.gates == [] and "the gating template changed" in moved.stale[0][1]
    gone = from_store([entry], template, experiment.tubes[1:], {})
    assert gone.corrections.gates == [] and gone.statuses[0][1] == "not_in_run"


def _edit_flowjo_gate(wsp: Path, sample_name: str, gate: str, factor: float) -> None:
    """What a reviewer does in FlowJo: drag the left edge of a polygon gate to the right."""
    tree = ET.parse(wsp)
    ns = {"gating": "http://www.isac-net.org/std/Gating-ML/v2.0/gating",
          "data-type": "http://www.isac-net.org/std/Gating-ML/v2.0/datatypes"}
    value = "{http://www.isac-net.org/std/Gating-ML/v2.0/datatypes}value"
    for sample in tree.getroot().iter("Sample"):
        node = sample.find("SampleNode")
        if node is None or node.attrib.get("name") != sample_name:
            continue
        pop = next(p for p in node.iter("Population") if p.attrib.get("name") == gate)
        poly = pop.find("Gate").find("gating:PolygonGate", ns)
        coords = [v.findall("gating:coordinate", ns) for v in poly.findall("gating:vertex", ns)]
        xs = [float(c[0].attrib[value]) for c in coords]
        low = sorted(xs)[len(xs) // 2]
        for c in coords:
            x = float(c[0].attrib[value])
            if x <= low:
                c[0].set(value, repr(x * factor))
        tree.write(wsp, encoding="UTF-8", xml_declaration=True)
        return
    raise AssertionError(f"{sample_name} not in {wsp}")


@pytest.mark.slow
def test_gate_edited_in_flowjo_changes_only_its_tube(experiment, baseline, tmp_path):
    out = _fresh_copy(baseline, tmp_path)
    wsp = export_gates(out, "flowjo", tmp_path / "exported")[0]
    unchanged = _run(experiment, out, gates_from=wsp, reviewer="Jane Doe")
    assert unchanged.n_gated == 0  # the exported gates given back unedited are no correction
    assert (out / "tubes.csv").read_bytes() == (baseline / "tubes.csv").read_bytes()

    victim = _allergen_tube(experiment, "P02")
    _edit_flowjo_gate(wsp, victim.file, "basophils", 2.0)
    summary = _run(experiment, out, gates_from=wsp, reviewer="Jane Doe")
    assert summary.n_gated == 1
    base = pd.read_csv(baseline / "tubes.csv").set_index("file")
    tubes = pd.read_csv(out / "tubes.csv").set_index("file")
    contract = list(base.columns[:15])
    changed = {f for f in tubes.index if not tubes.loc[f, contract].equals(base.loc[f, contract])}
    assert changed == {victim.file}
    assert tubes.loc[victim.file, "n_basophils"] < base.loc[victim.file, "n_basophils"]
    assert bool(tubes.loc[victim.file, "manually_adjusted"])
    assert f"gate basophils adjusted by Jane Doe: gate edited in {wsp.name}" in tubes.loc[victim.file, "review_note"]
    with ResultStore.in_folder(out) as store:
        (review,) = store.active_corrections()
    assert (review["file"], review["gate"], review["source"]) == (victim.file, "basophils", str(wsp))


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                     st.text(max_size=12))
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.one_of(st.text(max_size=10), st.integers()), inner, max_size=5)),
                       max_leaves=25)
_keys = st.sampled_from(["tube", "patient", "pretreatment", "gate", "geometry", "threshold", "reviewer", "reason",
                         "type", "vertices", "mins", "maxs", "mean", "covariance", "distance_square", "x", 3,
                         "withdraw"])
_items = st.dictionaries(_keys, st.one_of(_values, st.sampled_from([True, "basophils", "polygon", "range",
                                                                    "ellipsoid",
                                                                    "P01", "none"])), max_size=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=st.one_of(_values, st.fixed_dictionaries({"corrections": st.lists(_items, max_size=4)},
                                                    optional={"reviewer": _values, 7: _values})))
def test_any_document_gives_corrections_or_a_located_error(doc, experiment, template):
    _check_document(doc, experiment, template)


@pytest.mark.parametrize("doc", [
    {"corrections": [{"patient": "P01", "pretreatment": ["a"], "threshold": 1, "reason": "x", "reviewer": "y"}]},
    {"corrections": [{"tube": "P01_none_fmlp.fcs", "gate": "basophils", "geometry": {"type": ["polygon"]},
                      "reason": "x", "reviewer": "y"}]},
    {1: 2, "colour": 3, "corrections": [{5: 1, "x": 2}]},
])
def test_documents_that_once_crashed(doc, experiment, template):
    _check_document(doc, experiment, template)


def _check_document(doc, experiment, template):
    try:
        corrections = parse_overrides(doc, template, experiment.tubes, source="fuzz.yaml")
    except OverridesError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)
        return
    for c in corrections.gates:  # whatever was accepted builds a gate
        corrections.gate_overrides(template, c.file)


def test_a_plain_rerun_keeps_the_corrections_and_says_so(experiment, baseline, tmp_path):
    from typer.testing import CliRunner

    from bat_analysis.cli import app

    out = _fresh_copy(baseline, tmp_path)
    doc = tmp_path / "review.yaml"
    doc.write_text(yaml.safe_dump({"reviewer": "Jane Doe", "corrections": [
        {"patient": "P01", "pretreatment": "none", "threshold": 900, "reason": "bimodal negative control"}]}))
    args = ["run", str(experiment.out_dir), "--layout", str(experiment.layout_path), "--out", str(out),
            "--workers", "1", "--no-reports"]
    first = CliRunner().invoke(app, [*args, "--overrides", str(doc)])
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(app, args)  # no --overrides this time
    assert again.exit_code == 0, again.output
    tubes = pd.read_csv(out / "tubes.csv")
    p01 = tubes[(tubes["patient"] == "P01") & (tubes["pretreatment"] == "none")]
    assert (p01["cd63_threshold"] == 900.0).all() and p01["manually_adjusted"].all()
    assert "1 reviewer correction from the store applied." in again.output


def _module_imports() -> dict[str, set[str]]:
    """Every module of bat_analysis -> the modules of bat_analysis it imports (at the top or in a function)."""
    import ast

    import bat_analysis

    root = Path(bat_analysis.__file__).resolve().parent
    modules = {}
    for f in root.rglob("*.py"):
        parts = ("bat_analysis", *f.relative_to(root).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    graph: dict[str, set[str]] = {}
    for name, f in modules.items():
        package = name.split(".") if f.name == "__init__.py" else name.split(".")[:-1]
        found = set()
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = ".".join(package[:len(package) - node.level + 1] + [node.module or ""]).strip(".") \
                    if node.level else node.module or ""
                found |= {base} | {f"{base}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def test_review_package_has_no_import_cycle():
    """The review loop (corrections, their file formats, the store's log) imports one way: no module of
    bat_analysis.review can reach itself through the package's imports."""
    graph = _module_imports()
    review = sorted(m for m in graph if m.startswith("bat_analysis.review"))
    assert {"bat_analysis.review.corrections", "bat_analysis.review._exchange"} <= set(review)
    for start in review:
        seen, todo = set(), list(graph[start])
        while todo:
            m = todo.pop()
            assert m != start, f"{start} imports itself through {sorted(seen)}"
            if m not in seen:
                seen.add(m)
                todo += graph[m]
