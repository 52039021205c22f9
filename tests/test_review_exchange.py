"""`bat export-gates` on a run with clogs: every gate of every tube exported, re-imported with identical counts,
and given back with `bat run --gates-from` an unedited export is no correction while an edited gate changes
exactly its tube."""

from __future__ import annotations

import dataclasses
import shutil
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from bat_analysis.cli import app

GML = "http://www.isac-net.org/std/Gating-ML/v2.0/gating"
DT = "http://www.isac-net.org/std/Gating-ML/v2.0/datatypes"
FORMATS = ("gatingml", "flowjo")


# the experiment fixture (tests/conftest.py)
# basophils as in a real acquisition (~100 or more) in few events: fewer form no population and are not gated
SIMULATION = {"n_patients": 1, "n_events": 6000, "seed": 5, "scenario": "clog", "n_concentrations": 2,
              "arms": ("none",), "basophil_pct": (2.5, 3.0)}


def _run(experiment, out: Path, *extra: str):
    result = CliRunner().invoke(app, ["run", str(experiment.out_dir), "--layout", str(experiment.layout_path),
                                      "--out", str(out), "--workers", "1", "--quiet", "--no-reports", *extra])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def baseline(experiment, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export_run") / "out"
    _run(experiment, out)
    return out


@pytest.fixture(scope="module")
def stored(baseline):
    from bat_analysis.pipeline import load_run

    return load_run(baseline, score=False)


def _export(out: Path, fmt: str, dest: Path) -> list[Path]:
    result = CliRunner().invoke(app, ["export-gates", str(out), "--format", fmt, "--dest", str(dest)])
    assert result.exit_code == 0, result.output
    return sorted(dest.glob("*.wsp" if fmt == "flowjo" else "*.xml"))


def _documents(paths: list[Path], fmt: str) -> dict:
    from bat_analysis.gating.flowjo import read_workspace
    from bat_analysis.gating.gatingml import read_gatingml

    if fmt == "flowjo":
        (wsp,) = paths
        return {name: s.document for name, s in read_workspace(wsp).items()}
    return {f"{p.stem}.fcs": read_gatingml(p) for p in paths}


def _fresh_copy(baseline: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(baseline, out)
    return out


def test_clogs_make_boolean_acquisition_gates(stored):
    kinds = [next(g for g in r.gates if g.name == "acquisition_qc").geometry.get("type") for r in stored.results]
    assert len(stored.results) == 5 and kinds.count("boolean") >= 3, kinds


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_reimports_with_identical_counts(fmt, experiment, baseline, stored, tmp_path):
    from bat_analysis.io.fcs import read_fcs

    docs = _documents(_export(baseline, fmt, tmp_path / fmt), fmt)
    assert sorted(docs) == sorted(r.tube.file for r in stored.results)
    n_checked = 0
    for res in stored.results:
        fcs = read_fcs(experiment.out_dir / res.tube.file)
        masks = docs[res.tube.file].evaluate(fcs.events, fcs.pnn, fcs.spillover)
        for rec in res.gates:
            assert rec.geometry, f"{res.tube.file}: gate {rec.name} was not set"
            assert rec.name in masks, f"{res.tube.file}: gate {rec.name} missing from the {fmt} export"
            assert int(masks[rec.name].sum()) == rec.count, f"{res.tube.file}: {rec.name} count differs"
            n_checked += 1
        for member in next(g for g in res.gates if g.name == "acquisition_qc").geometry.get("members", []):
            assert member["name"] in masks  # the time segments travel with the union
    assert n_checked == 5 * len(stored.results)
    if fmt == "flowjo":  # the populations carry our counts for FlowJo's tables
        from bat_analysis.gating.flowjo import flowjo_counts

        written = flowjo_counts(next((tmp_path / fmt).glob("*.wsp")))
        for res in stored.results:
            assert written[res.tube.file][("acquisition_qc",)] == res.gates[0].count
            assert written[res.tube.file][("acquisition_qc", "margin", "cells", "singlets", "basophils")] == \
                next(g for g in res.gates if g.name == "basophils").count


@pytest.mark.parametrize("fmt", FORMATS)
def test_unedited_export_is_no_correction(fmt, stored, experiment, baseline, tmp_path):
    from bat_analysis.io.layout import read_layout
    from bat_analysis.review._load import load_corrections

    paths = _export(baseline, fmt, tmp_path / fmt)
    given = paths[0] if fmt == "flowjo" else tmp_path / fmt
    geometry = {(r.tube.file, g.name): g.geometry for r in stored.results for g in r.gates}
    tubes = read_layout(experiment.layout_path, experiment.out_dir)
    corrections = load_corrections(stored.template, overrides=None, gates_from=given, tubes=tubes,
                                   data_dir=experiment.out_dir, reviewer="Jane Doe",
                                   automated=lambda f, g: geometry.get((f, g)))
    assert corrections.gates == []


def _workspace_tree(wsp: Path, sample_name: str):
    tree = ET.parse(wsp)
    for sample in tree.getroot().iter("Sample"):
        node = sample.find("SampleNode")
        if node is not None and node.attrib.get("name") == sample_name:
            return tree, node
    raise AssertionError(f"{sample_name} not in {wsp}")


def _shift_polygon_left_edge(poly: ET.Element, factor: float) -> None:
    """What a reviewer does in FlowJo: drag the left half of a polygon's vertices to the right."""
    value = f"{{{DT}}}value"
    coords = [v.findall(f"{{{GML}}}coordinate") for v in poly.findall(f"{{{GML}}}vertex")]
    xs = sorted(float(c[0].attrib[value]) for c in coords)
    low = xs[len(xs) // 2]
    for c in coords:
        x = float(c[0].attrib[value])
        if x <= low:
            c[0].set(value, repr(x * factor))


def _clogged(stored) -> str:
    """An allergen tube whose acquisition QC removed a clog (not a control: its gates set no threshold)."""
    return next(r.tube.file for r in stored.results if r.tube.condition == "allergen"
                and next(g for g in r.gates if g.name == "acquisition_qc").geometry.get("type") == "boolean")


def test_unedited_then_edited_workspace_through_bat_run(stored, experiment, baseline, tmp_path):
    """bat run --gates-from: the unedited export changes nothing; a basophil gate moved in FlowJo on a clogged
    tube changes that tube only."""
    from bat_analysis.store import ResultStore

    out = _fresh_copy(baseline, tmp_path)
    (wsp,) = _export(out, "flowjo", tmp_path / "exported")
    _run(experiment, out, "--gates-from", str(wsp), "--reviewer", "Jane Doe")
    assert (out / "tubes.csv").read_bytes() == (baseline / "tubes.csv").read_bytes()
    with ResultStore.in_folder(out) as store:
        assert store.active_corrections() == []

    victim = _clogged(stored)
    tree, node = _workspace_tree(wsp, victim)
    pop = next(p for p in node.iter("Population") if p.attrib.get("name") == "basophils")
    _shift_polygon_left_edge(pop.find("Gate").find(f"{{{GML}}}PolygonGate"), 2.0)
    tree.write(wsp, encoding="UTF-8", xml_declaration=True)
    _run(experiment, out, "--gates-from", str(wsp), "--reviewer", "Jane Doe")
    base = pd.read_csv(baseline / "tubes.csv").set_index("file")
    tubes = pd.read_csv(out / "tubes.csv").set_index("file")
    contract = list(base.columns[:21])  # identity, counts, thresholds, scores, QC
    changed = {f for f in tubes.index if not tubes.loc[f, contract].equals(base.loc[f, contract])}
    assert changed == {victim}
    assert tubes.loc[victim, "n_basophils"] < base.loc[victim, "n_basophils"]
    with ResultStore.in_folder(out) as store:
        (review,) = store.active_corrections()
    assert (review["file"], review["gate"]) == (victim, "basophils")
    # the gates as now applied, exported and given back unedited, are no new correction
    corrected = (out / "tubes.csv").read_bytes()
    (again,) = _export(out, "flowjo", tmp_path / "exported_again")
    _run(experiment, out, "--gates-from", str(again), "--reviewer", "John Roe")
    with ResultStore.in_folder(out) as store:
        assert [e["id"] for e in store.correction_log()] == [review["id"]]
    assert (out / "tubes.csv").read_bytes() == corrected


def test_edited_gatingml_gate_is_one_correction(stored, experiment, baseline, tmp_path):
    from bat_analysis.io.layout import read_layout
    from bat_analysis.review._load import load_corrections

    _export(baseline, "gatingml", tmp_path / "gml")
    victim = _clogged(stored)
    path = tmp_path / "gml" / f"{Path(victim).stem}.xml"
    tree = ET.parse(path)
    poly = next(el for el in tree.getroot() if el.tag == f"{{{GML}}}PolygonGate"
                and el.attrib.get(f"{{{GML}}}id") == "basophils")
    _shift_polygon_left_edge(poly, 1.05)  # display scale: 5% to the right
    tree.write(path, encoding="UTF-8", xml_declaration=True)
    geometry = {(r.tube.file, g.name): g.geometry for r in stored.results for g in r.gates}
    corrections = load_corrections(stored.template, overrides=None, gates_from=tmp_path / "gml",
                                   tubes=read_layout(experiment.layout_path, experiment.out_dir),
                                   data_dir=experiment.out_dir, reviewer="Jane Doe",
                                   automated=lambda f, g: geometry.get((f, g)))
    assert [(c.file, c.gate) for c in corrections.gates] == [(victim, "basophils")]


def test_edited_time_segment_is_refused_not_ignored(stored, experiment, baseline, tmp_path):
    """A clog segment moved in FlowJo cannot be applied as one range correction: said, not silently dropped."""
    from bat_analysis.io.layout import read_layout
    from bat_analysis.review.corrections import OverridesError
    from bat_analysis.review._load import load_corrections

    (wsp,) = _export(baseline, "flowjo", tmp_path / "fj")
    victim = _clogged(stored)
    tree, node = _workspace_tree(wsp, victim)
    seg = next(p for p in node.iter("Population") if p.attrib.get("name") == "acquisition_qc.segment1")
    dim = seg.find("Gate").find(f"{{{GML}}}RectangleGate").find(f"{{{GML}}}dimension")
    dim.set(f"{{{GML}}}max", repr(float(dim.attrib[f"{{{GML}}}max"]) * 0.9))
    tree.write(wsp, encoding="UTF-8", xml_declaration=True)
    geometry = {(r.tube.file, g.name): g.geometry for r in stored.results for g in r.gates}
    with pytest.raises(OverridesError) as err:
        load_corrections(stored.template, overrides=None, gates_from=wsp,
                         tubes=read_layout(experiment.layout_path, experiment.out_dir), data_dir=experiment.out_dir,
                         reviewer="Jane Doe", automated=lambda f, g: geometry.get((f, g)))
    assert any(victim in p and "acquisition_qc" in p for p in err.value.problems), err.value.problems


@pytest.mark.parametrize("fmt", FORMATS)
def test_outside_and_not_gated_gates_are_exported(fmt, stored, experiment, tmp_path):
    """A gate kept on its outside is exported as the NOT of its inside; a gate that was not set is left out
    and its children hang from its parent."""
    from bat_analysis.gating._channels import resolve_channels
    from bat_analysis.review._exchange import _file_gates
    from bat_analysis.gating.flowjo import WorkspaceTube, export_workspace
    from bat_analysis.gating.gatingml import export_gatingml
    from bat_analysis.io.fcs import read_fcs

    res = next(r for r in stored.results if r.tube.file == _clogged(stored))
    path = experiment.out_dir / res.tube.file
    fcs = read_fcs(path)
    channels, _ = resolve_channels(fcs, stored.template, str(path), panel=False)
    acq, margin = res.gates[0], res.gates[1]
    outside = dataclasses.replace(margin, geometry={**margin.geometry, "keep": "outside"})
    not_set = dataclasses.replace(acq, geometry={}, method="not_gated", count=res.n_events,
                                  parent_count=res.n_events)
    spill = {"FCS": (list(fcs.spillover.channels), np.asarray(fcs.spillover.matrix))}
    for records, check in (([acq, outside], "outside"), ([not_set, *res.gates[1:]], "not_set")):
        gates = _file_gates(records, stored.template, channels, True)
        if fmt == "flowjo":
            wsp = export_workspace([WorkspaceTube(path, gates, spill)], tmp_path / f"{check}.wsp")
        else:
            wsp = export_gatingml(gates, tmp_path / f"{check}.xml", spill)
        (doc,) = _documents([wsp], fmt).values()
        masks = doc.evaluate(fcs.events, fcs.pnn, fcs.spillover)
        if check == "outside":
            assert int(masks["margin"].sum()) == acq.count - margin.count > 0
        else:
            assert "acquisition_qc" not in masks and doc.gate("margin").parent is None
            assert int(masks["margin"].sum()) >= margin.count
            assert int(masks["basophils"].sum()) > 0


@pytest.mark.parametrize("fmt", FORMATS)
def test_gate_kept_outside_given_back(fmt, stored, experiment, tmp_path):
    """With a template gate kept on its outside, the exported NOT of its inside given back unedited is no
    correction, and its inside moved by a reviewer is a correction of that inside."""
    from bat_analysis.gating._channels import resolve_channels
    from bat_analysis.review._exchange import _file_gates, _reader_safe_limits, read_edited_gates
    from bat_analysis.gating.flowjo import WorkspaceTube, export_workspace
    from bat_analysis.gating.gatingml import export_gatingml
    from bat_analysis.gating.templates import parse_template
    from bat_analysis.io.fcs import read_fcs

    text = Path(stored.template.source).read_text(encoding="utf-8")
    assert "    method: margin\n" in text
    template = parse_template(text.replace("    method: margin\n", "    method: margin\n    keep: outside\n"))
    assert template.gate("margin").keep == "outside"
    res = next(r for r in stored.results if r.tube.file == _clogged(stored))
    path = experiment.out_dir / res.tube.file
    fcs = read_fcs(path)
    acq, margin = res.gates[0], res.gates[1]
    outside = dataclasses.replace(margin, geometry={**margin.geometry, "keep": "outside"})
    channels, _ = resolve_channels(fcs, template, str(path), panel=False)
    gates = _reader_safe_limits(_file_gates([acq, outside], template, channels, True), fcs)  # as export writes them
    spill = {"FCS": (list(fcs.spillover.channels), np.asarray(fcs.spillover.matrix))}
    if fmt == "flowjo":
        given = export_workspace([WorkspaceTube(path, gates, spill)], tmp_path / "x.wsp")
    else:
        given = export_gatingml(gates, tmp_path / f"{path.stem}.xml", spill)
    geometry = {"acquisition_qc": acq.geometry, "margin": outside.geometry}
    tubes = [r.tube for r in stored.results]

    def edited():
        return read_edited_gates(given, template, tubes, data_dir=experiment.out_dir, reviewer="Jane Doe",
                                 automated=lambda f, g: geometry.get(g) if f == res.tube.file else None)

    assert edited() == []
    # the stored gate no longer matches the exported one: as if the reviewer had moved it in the file
    assert None not in outside.geometry["maxs"]
    geometry["margin"] = {**outside.geometry, "maxs": [v * 0.9 for v in outside.geometry["maxs"]]}
    (fix,) = edited()
    assert (fix.file, fix.gate, fix.geometry["type"]) == (res.tube.file, "margin", "range")
    assert fix.geometry["maxs"] == pytest.approx(outside.geometry["maxs"])


def test_gatingml_export_is_schema_valid(baseline, tmp_path):
    """The clogged tubes' Gating-ML (BooleanGate over the time segments) validates against the Gating-ML 2.0
    schema (the XSD FlowKit ships)."""
    from importlib.resources import files

    from lxml import etree

    xsd = files("flowkit") / "_resources" / "Gating-ML.v2.0.xsd"
    if not xsd.is_file():
        pytest.skip("FlowKit's copy of the Gating-ML 2.0 schema not found")
    schema = etree.XMLSchema(etree.parse(str(xsd)))
    paths = _export(baseline, "gatingml", tmp_path / "gml")
    assert len(paths) == 5
    n_boolean = 0
    for p in paths:
        doc = etree.parse(str(p))
        n_boolean += doc.getroot().find(f"{{{GML}}}BooleanGate") is not None
        assert schema.validate(doc), f"{p.name}: {schema.error_log}"
    assert n_boolean >= 3


def test_workspace_saved_as_xml_without_linear_ranges_through_bat_run(experiment, baseline, tmp_path):
    """A FlowJo workspace saved as .xml is recognised by its root element, and its linear axes without
    minRange/maxRange (FlowKit raised TypeError) are read with FlowJo's defaults: the unedited export is still
    no correction (trust issue item 11)."""
    import re

    from bat_analysis.store import ResultStore

    out = _fresh_copy(baseline, tmp_path)
    (wsp,) = _export(out, "flowjo", tmp_path / "exported")
    text = wsp.read_text(encoding="utf-8")
    stripped = re.sub(r'\s(?:transforms:)?(?:minRange|maxRange)="[^"]*"', "", text)
    assert "<transforms:linear" in stripped and "Range=" not in stripped.split("<transforms:linear", 1)[1][:60]
    saved = tmp_path / "edited_in_flowjo.xml"
    saved.write_text(stripped, encoding="utf-8")
    from bat_analysis.gating.flowjo import WorkspaceWarning

    with pytest.warns(WorkspaceWarning, match="FlowJo's defaults"):
        _run(experiment, out, "--gates-from", str(saved), "--reviewer", "Jane Doe")
    assert (out / "tubes.csv").read_bytes() == (baseline / "tubes.csv").read_bytes()
    with ResultStore.in_folder(out) as store:
        assert store.correction_log() == []


def _flowkit_agreement():
    """benchmarks/flowkit_agreement.py, the comparison of FlowKit's counts with the tool's (one place)."""
    import importlib.util

    pytest.importorskip("flowkit")
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "flowkit_agreement.py"
    spec = importlib.util.spec_from_file_location("flowkit_agreement", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("flowkit_agreement", module)  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_flowkit_counts_equal_the_tools_on_every_gate(baseline, tmp_path):
    """FlowKit (float64 events) on the exported workspace and on the Gating-ML export counts what the tool
    (float32 events) counted, on every gate, the acquisition QC time segments of clogged tubes included."""
    agreements = _flowkit_agreement().compare_with_flowkit(baseline, tmp_path / "export")
    for agreement in agreements:
        assert agreement.total == 25 and agreement.differ == [], agreement.differ


def test_exported_time_limits_keep_float64_neighbours_on_their_side():
    """A range limit one float64 step above the last float32 event (the last time segment's end) is moved
    half a float32 step clear, so that the event's float64 value (up to half a float32 step above) stays
    inside; limits already clear of every event are not moved."""
    from bat_analysis.review._exchange import _separating_limit

    t32 = np.array([1.0, 2.5, 98.76543], dtype=np.float32)
    last = float(t32[-1])
    end = _separating_limit(t32, float(np.nextafter(last, np.inf)))
    half_step = (float(np.nextafter(t32[-1], np.float32(np.inf))) - last) / 2
    assert end > last + half_step
    assert end - last < 1e-6 * last  # within the re-import tolerance: still the same gate
    start = _separating_limit(t32, 1.0)  # the first segment starts on the first event
    assert start < 1.0 - float(1.0 - np.nextafter(np.float32(1.0), np.float32(0))) / 2
    assert _separating_limit(t32, 2.0) == 2.0 and _separating_limit(t32, None) is None
    mid = _separating_limit(t32, 2.5)
    assert 1.0 < mid <= 2.5 and 2.5 - mid < 1e-6


# ------------------------------------------------------------------ same file names in different subfolders
@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """Two patients' folders a/ and b/ holding files of the same names with different data, one layout."""
    import csv
    from types import SimpleNamespace

    from bat_analysis.simulate import simulate_experiment

    root = tmp_path_factory.mktemp("twins")
    rows = []
    for folder, patient, seed in (("a", "P01", 1), ("b", "P02", 2)):
        exp = simulate_experiment(root / folder, n_patients=1, n_events=4000, seed=seed, n_concentrations=2,
                                  arms=("none",), basophil_pct=(2.5, 3.0))
        with exp.layout_path.open(encoding="utf-8", newline="") as fh:
            for row in csv.DictReader(fh):
                rows.append({**row, "file": f"{folder}/{row['file']}", "patient": patient})
    layout = root / "layout.csv"
    with layout.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path_factory.mktemp("twins_run") / "out"
    _run(SimpleNamespace(out_dir=root, layout_path=layout), out)
    from bat_analysis.pipeline import load_run

    return SimpleNamespace(root=root, layout=layout, out=out, stored=load_run(out, score=False))


def _twin_corrections(twins, given):
    from bat_analysis.io.layout import read_layout
    from bat_analysis.review._load import load_corrections

    geometry = {(r.tube.file, g.name): g.geometry for r in twins.stored.results for g in r.gates}
    return load_corrections(twins.stored.template, overrides=None, gates_from=given,
                            tubes=read_layout(twins.layout, twins.root), data_dir=twins.root, reviewer="Jane Doe",
                            automated=lambda f, g: geometry.get((f, g))).gates


def test_same_named_files_are_exported_apart(twins, tmp_path):
    """a/X.fcs and b/X.fcs: one Gating-ML document each (the count printed is the files written), one
    workspace sample each, every document naming its own tube."""
    from bat_analysis.gating.flowjo import read_workspace
    from bat_analysis.gating.gatingml import read_gatingml

    files = sorted(r.tube.file for r in twins.stored.results)
    assert len(files) == 10 and len({Path(f).name for f in files}) == 5
    result = CliRunner().invoke(app, ["export-gates", str(twins.out), "--format", "gatingml",
                                      "--dest", str(tmp_path / "gml")])
    assert result.exit_code == 0, result.output
    assert "Wrote 10 file(s)" in result.output
    assert all(str(Path(f).with_suffix(".xml")) in result.output for f in files)  # each file named
    written = sorted(p.relative_to(tmp_path / "gml").as_posix() for p in (tmp_path / "gml").rglob("*.xml"))
    assert written == sorted(str(Path(f).with_suffix(".xml").as_posix()) for f in files)
    for f in files:
        doc = read_gatingml(tmp_path / "gml" / Path(f).with_suffix(".xml"))
        assert doc.origin["file"] == f
    (wsp,) = _export(twins.out, "flowjo", tmp_path / "fj")
    samples = read_workspace(wsp)
    assert sorted(samples) == files
    assert all(s.keywords["BAT_FILE"] == name for name, s in samples.items())
    a, b = samples[files[0]], samples[files[5]]
    assert Path(files[0]).name == Path(files[5]).name and a.counts != b.counts  # different data, own gates


@pytest.mark.parametrize("fmt", FORMATS)
def test_same_named_files_unedited_export_is_no_correction(fmt, twins, tmp_path):
    paths = _export(twins.out, fmt, tmp_path / fmt)
    assert _twin_corrections(twins, paths[0] if fmt == "flowjo" else tmp_path / fmt) == []


def test_same_named_files_edited_gate_changes_its_own_tube_only(twins, tmp_path):
    _export(twins.out, "gatingml", tmp_path / "gml")
    victim = next(f for f in sorted(r.tube.file for r in twins.stored.results) if f.startswith("b/"))
    path = tmp_path / "gml" / Path(victim).with_suffix(".xml")
    tree = ET.parse(path)
    poly = next(el for el in tree.getroot() if el.tag == f"{{{GML}}}PolygonGate"
                and el.attrib.get(f"{{{GML}}}id") == "basophils")
    _shift_polygon_left_edge(poly, 1.05)
    tree.write(path, encoding="UTF-8", xml_declaration=True)
    assert [(c.file, c.gate) for c in _twin_corrections(twins, tmp_path / "gml")] == [(victim, "basophils")]


def test_gates_are_never_matched_by_file_name_alone(twins, tmp_path):
    """One patient's document copied over the other's, a document known only by its base name, and a
    document whose data changed since the export: each refused by name, nothing applied to another tube."""
    from bat_analysis.review.corrections import OverridesError

    files = sorted(r.tube.file for r in twins.stored.results)
    a_file, b_file = files[0], files[5]
    gml = tmp_path / "gml"
    _export(twins.out, "gatingml", gml)
    a_xml, b_xml = gml / Path(a_file).with_suffix(".xml"), gml / Path(b_file).with_suffix(".xml")

    swapped = tmp_path / "swapped"
    shutil.copytree(gml, swapped)
    shutil.copy(swapped / Path(b_file).with_suffix(".xml"), swapped / Path(a_file).with_suffix(".xml"))
    with pytest.raises(OverridesError) as err:
        _twin_corrections(twins, swapped)
    assert any(b_file in p and "already has its gates" in p for p in err.value.problems), err.value.problems

    # a lone Gating-ML file without the recorded tube, named like both a/X.fcs and b/X.fcs
    lone = tmp_path / "lone" / a_xml.name
    lone.parent.mkdir()
    text = a_xml.read_text(encoding="utf-8")
    start, end = text.index("<data-type:custom_info"), text.index("</data-type:custom_info>")
    lone.write_text(text[:start] + text[end + len("</data-type:custom_info>"):], encoding="utf-8")
    from bat_analysis.gating.gatingml import read_gatingml

    assert read_gatingml(lone).origin == {}
    with pytest.raises(OverridesError) as err:
        _twin_corrections(twins, lone)
    assert any("not a file of the layout" in p for p in err.value.problems), err.value.problems

    # the file recorded at export, with a checksum of other data
    changed = tmp_path / "changed"
    shutil.copytree(gml, changed)
    doc = changed / Path(a_file).with_suffix(".xml")
    sha_a = read_gatingml(a_xml).origin["sha256"]
    sha_b = read_gatingml(b_xml).origin["sha256"]
    assert sha_a != sha_b
    doc.write_text(doc.read_text(encoding="utf-8").replace(sha_a, sha_b), encoding="utf-8")
    with pytest.raises(OverridesError) as err:
        _twin_corrections(twins, changed)
    assert any(a_file in p and "exported for other data" in p for p in err.value.problems), err.value.problems


def test_workspace_with_two_samples_of_one_name_is_refused(twins, tmp_path):
    """Two samples named alike (a workspace written before samples were named by path, or renamed in FlowJo):
    FlowKit would keep one of them; refused instead, naming the sample, with exit code 2 from bat run."""
    from bat_analysis.errors import BatError

    (wsp,) = _export(twins.out, "flowjo", tmp_path / "fj")
    tree = ET.parse(wsp)
    for node in tree.getroot().iter("SampleNode"):
        node.set("name", Path(node.attrib["name"]).name)
    tree.write(wsp, encoding="UTF-8", xml_declaration=True)
    with pytest.raises(BatError, match="several samples are named"):
        _twin_corrections(twins, wsp)
    result = CliRunner().invoke(app, ["run", str(twins.root), "--layout", str(twins.layout), "--out",
                                      str(tmp_path / "out"), "--workers", "1", "--quiet", "--no-reports",
                                      "--gates-from", str(wsp)])
    assert result.exit_code == 2 and "several samples are named" in result.output, result.output


# ------------------------------------------------------------------ an ellipse gate, exported as an ellipse
@pytest.fixture(scope="module")
def ellipse_run(experiment, stored, tmp_path_factory):
    """The clog experiment gated with a template whose 'cells' gate is a fixed ellipse on FSC-A (raw) and
    SSC-A (logicle), placed over the cells the automated gate found."""
    import json as _json
    from types import SimpleNamespace

    from bat_analysis.pipeline import load_run

    verts = np.array(next(g for g in stored.results[0].gates if g.name == "cells").geometry["vertices"])
    mean, cov = verts.mean(axis=0), np.cov(verts.T)
    text = Path(stored.template.source).read_text(encoding="utf-8")
    start = text.index("    method: debris_density\n")
    end = text.index("  - name: singlets")
    geometry = {"type": "ellipsoid", "mean": mean.tolist(), "covariance": cov.tolist(), "distance_square": 2.0}
    text = text[:start] + f"    method: fixed\n    geometry: {_json.dumps(geometry)}\n\n" + text[end:]
    tdir = tmp_path_factory.mktemp("ellipse_template")
    (tdir / "ellipse.yaml").write_text(text, encoding="utf-8")
    out = tdir / "out"
    _run(experiment, out, "--template", str(tdir / "ellipse.yaml"))
    run = load_run(out, score=False)
    kinds = {g.name: g.geometry.get("type") for r in run.results for g in r.gates}
    assert kinds["cells"] == "ellipsoid" and kinds["acquisition_qc"] == "boolean"
    return SimpleNamespace(out=out, stored=run)


@pytest.mark.parametrize("fmt", FORMATS)
def test_ellipse_is_exported_as_an_ellipse_and_given_back_unedited_is_no_correction(fmt, ellipse_run, experiment,
                                                                                    tmp_path):
    from bat_analysis.io.fcs import read_fcs
    from bat_analysis.io.layout import read_layout
    from bat_analysis.review._load import load_corrections

    paths = _export(ellipse_run.out, fmt, tmp_path / fmt)
    for p in paths:
        root = ET.parse(p).getroot()
        assert len(list(root.iter(f"{{{GML}}}EllipsoidGate"))) == (1 if fmt == "gatingml" else 5)
    docs = _documents(paths, fmt)
    for res in ellipse_run.stored.results:
        cells = docs[res.tube.file].gate("cells")
        assert type(cells).__name__ == "EllipsoidGate"
        fcs = read_fcs(experiment.out_dir / res.tube.file)
        masks = docs[res.tube.file].evaluate(fcs.events, fcs.pnn, fcs.spillover)
        assert {g.name: int(masks[g.name].sum()) for g in res.gates} == {g.name: g.count for g in res.gates}
    geometry = {(r.tube.file, g.name): g.geometry for r in ellipse_run.stored.results for g in r.gates}
    corrections = load_corrections(ellipse_run.stored.template, overrides=None,
                                   gates_from=paths[0] if fmt == "flowjo" else tmp_path / fmt,
                                   tubes=read_layout(experiment.layout_path, experiment.out_dir),
                                   data_dir=experiment.out_dir, reviewer="Jane Doe",
                                   automated=lambda f, g: geometry.get((f, g)))
    assert corrections.gates == []


def test_moved_ellipse_in_workspace_is_one_correction(ellipse_run, experiment, tmp_path):
    from bat_analysis.io.layout import read_layout
    from bat_analysis.review._load import load_corrections

    (wsp,) = _export(ellipse_run.out, "flowjo", tmp_path / "fj")
    victim = ellipse_run.stored.results[2].tube.file
    tree, node = _workspace_tree(wsp, victim)
    pop = next(p for p in node.iter("Population") if p.attrib.get("name") == "cells")
    value = f"{{{DT}}}value"
    for vertex in pop.find("Gate").iter(f"{{{GML}}}vertex"):  # the whole ellipse 3 display channels right
        x = vertex.findall(f"{{{GML}}}coordinate")[0]
        x.set(value, repr(float(x.attrib[value]) + 3.0))
    tree.write(wsp, encoding="UTF-8", xml_declaration=True)
    geometry = {(r.tube.file, g.name): g.geometry for r in ellipse_run.stored.results for g in r.gates}
    corrections = load_corrections(ellipse_run.stored.template, overrides=None, gates_from=wsp,
                                   tubes=read_layout(experiment.layout_path, experiment.out_dir),
                                   data_dir=experiment.out_dir, reviewer="Jane Doe",
                                   automated=lambda f, g: geometry.get((f, g))).gates
    assert [(c.file, c.gate, c.geometry["type"]) for c in corrections] == [(victim, "cells", "ellipsoid")]
    moved, before = corrections[0].geometry["mean"], geometry[(victim, "cells")]["mean"]
    top = 262144.0
    assert moved[0] == pytest.approx(before[0] + 3.0 * top / 256, rel=1e-3) and moved[1] == pytest.approx(before[1])


def test_flowkit_counts_equal_the_tools_with_same_named_files(twins, tmp_path):
    """FlowKit finds each workspace sample's own file (samples named by path) and each Gating-ML document's
    (mirrored paths): every gate of both patients' same-named tubes counts what the tool counted."""
    for agreement in _flowkit_agreement().compare_with_flowkit(twins.out, tmp_path / "export"):
        assert agreement.total == 50 and agreement.differ == [], (agreement.fmt, agreement.differ)


@pytest.mark.slow
def test_flowkit_counts_equal_the_tools_on_a_simulated_plate(tmp_path):
    """End to end on 20 tubes with every simulated artefact (clogs, saturation, high background...): FlowKit
    on the exported workspace and on the Gating-ML export equals the tool on every gate."""
    from types import SimpleNamespace

    from bat_analysis.simulate import simulate_experiment

    exp = simulate_experiment(tmp_path / "plate", n_patients=2, n_events=20_000, seed=11, scenario="mixed",
                              n_concentrations=2)
    assert len(exp.tubes) == 20
    _run(SimpleNamespace(out_dir=exp.out_dir, layout_path=exp.layout_path), tmp_path / "out")
    for agreement in _flowkit_agreement().compare_with_flowkit(tmp_path / "out", tmp_path / "export"):
        assert agreement.total == 100 and agreement.differ == [], (agreement.fmt, agreement.differ)


def test_workspace_samples_renamed_in_flowjo_are_matched_by_their_file(twins, tmp_path):
    """Samples renamed and their keywords gone (as FlowJo may leave them): each still goes to its own tube by
    its DataSet uri; with the uri pointing nowhere as well, every sample is refused by name."""
    from bat_analysis.review.corrections import OverridesError

    (wsp,) = _export(twins.out, "flowjo", tmp_path / "fj")
    tree = ET.parse(wsp)
    for k, sample in enumerate(tree.getroot().iter("Sample")):
        keywords = sample.find("Keywords")
        for kw in list(keywords):
            keywords.remove(kw)
        sample.find("SampleNode").set("name", f"tube {k}")
    tree.write(wsp, encoding="UTF-8", xml_declaration=True)
    assert _twin_corrections(twins, wsp) == []
    for sample in tree.getroot().iter("Sample"):
        sample.find("DataSet").set("uri", "file:///nowhere/" + Path(sample.find("DataSet").attrib["uri"]).name)
    tree.write(wsp, encoding="UTF-8", xml_declaration=True)
    with pytest.raises(OverridesError) as err:
        _twin_corrections(twins, wsp)
    assert len(err.value.problems) == 10 and all("not a file of the layout" in p for p in err.value.problems)


def test_gatingml_names_keep_every_tube_apart():
    """Mirrored paths where they are safe and distinct; a name and a hash of the path otherwise (one file
    system's case-insensitive match, another suffix of the same stem, a path leaving the folder)."""
    from bat_analysis.review._exchange import gatingml_names

    files = ["a/P01.fcs", "b/P01.fcs", "P02.fcs", "P02.lmd", "c/X.fcs", "C/x.fcs", "../up.fcs", "/abs/P03.fcs",
             "C:/win/P04.fcs"]
    names = gatingml_names(files)
    assert names["a/P01.fcs"] == "a/P01.xml" and names["b/P01.fcs"] == "b/P01.xml"
    assert len({n.casefold() for n in names.values()}) == len(files)
    for f in ("P02.fcs", "P02.lmd", "c/X.fcs", "C/x.fcs", "../up.fcs", "/abs/P03.fcs", "C:/win/P04.fcs"):
        assert "/" not in names[f] and names[f].endswith(".xml") and len(names[f].rsplit("-", 1)[1]) == 12, names[f]
    assert names == gatingml_names(list(reversed(files)))  # the same tube always gets the same name
