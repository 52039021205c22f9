"""Hostile YAML and XML inputs (trust issue item 11): every parser shares one set of guards and every failure
is a located error -- exit 2 with one message and no traceback on the command line.

Each hostile input is given where a technician or reviewer gives it: a template (``--template``), an
overrides file (``--overrides``), edited gates (``--gates-from``, as ``.wsp`` and as ``.xml``), an XLSX
layout; the guards themselves are tested on :mod:`bat_analysis._safe_parse`.
"""

from __future__ import annotations

import re
import time
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bat_analysis.cli import app
from bat_analysis.errors import BatError, GatingError, InputParseError, LayoutError, TemplateError
from bat_analysis._safe_parse import MAX_NUMBER_CHARS, MAX_YAML_DEPTH, load_yaml, read_xml

CORPUS = Path(__file__).resolve().parents[1] / ".." / "shared" / "fcs_corpus"
FLOWJO = CORPUS / "flowjo"
needs_corpus = pytest.mark.skipif(not FLOWJO.is_dir(), reason=f"FlowJo workspaces not found at {FLOWJO}")
runner = CliRunner()

BIG_INT = "9" * 5000  # Python refuses int() of more than 4,300 digits (ValueError)
DEEP = "[" * 100_000  # 100,000-deep nesting: RecursionError in yaml's composer
# the classic "billion laughs" in YAML: 9 levels of 9 aliases each, 9**9 = 387 million strings once expanded
ALIAS_BOMB = ('a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
              + "".join(f"{b}: &{b} [{','.join(['*' + a] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi")))
HOSTILE_YAML = {"5000_digit_int": f"x: {BIG_INT}\n", "5000_digit_float": f"x: 0.{BIG_INT}\n",
                "deep_list": DEEP, "deep_mapping": "{a: " * 100_000, "alias_bomb": ALIAS_BOMB,
                "self_alias": "a: &a [1, *a]\n", "bad_date": "when: 2024-13-45\n", "nul": "a: \x00\n"}

# XML with a DTD: internal entities (billion laughs), a parameter entity, an external entity
LAUGHS = ('<!DOCTYPE Workspace [<!ENTITY l0 "lol">'
          + "".join(f'<!ENTITY l{i + 1} "{f"&l{i};" * 10}">' for i in range(9)) + "]>")
PARAMETER = '<!DOCTYPE Workspace [<!ENTITY % p "<!ENTITY e \'FSC-A\'>"> %p;]>'
EXTERNAL = '<!DOCTYPE Workspace [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
DTDS = {"billion_laughs": (LAUGHS, "&l9;"), "parameter_entity": (PARAMETER, "&e;"),
        "external_entity": (EXTERNAL, "&e;")}


def _one_error_line(result) -> str:
    """The exit-2 message: no traceback, a located 'error:' line first."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    first = result.output.strip().splitlines()[0]
    assert first.startswith("error: "), result.output
    return result.output


# ---------------------------------------------------------------------------------------------- the guards
@pytest.mark.parametrize("name", sorted(HOSTILE_YAML))
def test_hostile_yaml_is_a_located_error_at_once(name: str) -> None:
    t0 = time.perf_counter()
    with pytest.raises(InputParseError) as err:
        load_yaml(HOSTILE_YAML[name], source="in.yaml", what="template")
    assert time.perf_counter() - t0 < 5
    assert err.value.source == "in.yaml"
    assert re.match(r"(line \d+, column \d+|character \d+)$", err.value.where or ""), str(err.value)
    assert len(str(err.value)) < 400 and "\n" not in str(err.value)


def test_alias_bomb_is_small_and_refused() -> None:
    assert len(ALIAS_BOMB) < 700
    with pytest.raises(InputParseError, match="aliases"):
        load_yaml(ALIAS_BOMB)


def test_limits_are_at_the_documented_values() -> None:
    """Just within each limit loads; one beyond is refused."""
    assert load_yaml("x: " + "1" * MAX_NUMBER_CHARS) == {"x": int("1" * MAX_NUMBER_CHARS)}
    with pytest.raises(InputParseError, match="too long"):
        load_yaml("x: " + "1" * (MAX_NUMBER_CHARS + 1))
    assert load_yaml("[" * MAX_YAML_DEPTH + "]" * MAX_YAML_DEPTH) is not None
    with pytest.raises(InputParseError, match="nested"):
        load_yaml("[" * (MAX_YAML_DEPTH + 1) + "]" * (MAX_YAML_DEPTH + 1))
    # aliases count as often as used, and nest: 60 levels under an alias used 60 levels deep is 120
    deep = "[" * 60 + "]" * 60
    with pytest.raises(InputParseError, match="expanded"):
        load_yaml(f"a: &a {deep}\nb: {'[' * 59}*a{']' * 59}\n")
    assert load_yaml("a: &a [1, 2]\nb: [*a, *a]\n") == {"a": [1, 2], "b": [[1, 2], [1, 2]]}


@pytest.mark.parametrize("name", sorted(DTDS))
def test_xml_with_a_dtd_is_refused_not_expanded(name: str) -> None:
    dtd, use = DTDS[name]
    data = f'<?xml version="1.0"?>\n{dtd}\n<Workspace>{use}</Workspace>'.encode()
    with pytest.raises(InputParseError, match="DTD") as err:
        read_xml(data, source="w.wsp")
    assert err.value.where == "line 2, column 1"


def test_xml_nesting_and_garbage_are_located(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InputParseError, match="nested more than 256"):
        read_xml(b"<a>" * 100_000 + b"</a>" * 100_000)
    with pytest.raises(InputParseError, match="not well-formed") as err:
        read_xml(b"<Workspace>\n  <x></y>\n</Workspace>", source="w.wsp")
    assert err.value.where == "line 2, column 8"
    import bat_analysis._safe_parse as safe_parse

    assert safe_parse.MAX_XML_ELEMENTS == 2_000_000
    monkeypatch.setattr(safe_parse, "MAX_XML_ELEMENTS", 1000)  # the limit is read at each call
    read_xml(b"<a>" + b"<b/>" * 999 + b"</a>")
    with pytest.raises(InputParseError, match="more than 1,000 elements"):
        read_xml(b"<a>" + b"<b/>" * 1000 + b"</a>")
    with pytest.raises(InputParseError, match="LookupError"):
        read_xml(b'<?xml version="1.0" encoding="no-such-encoding"?><a/>')


# ---------------------------------------------------------------------------------------------- templates
@pytest.mark.parametrize("name", ["5000_digit_int", "deep_list", "alias_bomb"])
def test_hostile_template(name: str) -> None:
    from bat_analysis.gating.templates import parse_template

    text = HOSTILE_YAML[name]
    if name == "5000_digit_int":  # inside an otherwise valid template
        from bat_analysis.gating.templates import templates_dir

        text = (templates_dir() / "bat_ccr3_cd63.yaml").read_text().replace("schema_version: 1",
                                                                            f"schema_version: {BIG_INT}")
    with pytest.raises(TemplateError) as err:
        parse_template(text, source="t.yaml")
    (problem,) = err.value.problems
    assert re.match(r"line \d+, column \d+: ", problem), problem


# ---------------------------------------------------------------------------------------------- the command line
@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """A data folder with a valid layout: the run refuses its inputs before reading any FCS file."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("neg.fcs", "fmlp.fcs"):
        (data / name).write_bytes(b"not read")
    (data / "layout.csv").write_text("file,patient,condition,allergen,concentration,unit,pretreatment\n"
                                     "neg.fcs,P1,negative_control,,,,none\nfmlp.fcs,P1,fmlp,,,,none\n")
    return data


def _run(folder: Path, *extra: str):
    return runner.invoke(app, ["run", str(folder), "--layout", str(folder / "layout.csv"), "--out",
                               str(folder.parent / "out"), "--workers", "1", "--quiet", "--no-reports", *extra])


@pytest.mark.parametrize("name", ["5000_digit_int", "deep_list", "alias_bomb"])
def test_hostile_overrides_file_exits_2(folder: Path, name: str) -> None:
    path = folder.parent / "review.yaml"
    path.write_text(HOSTILE_YAML[name] if name != "5000_digit_int" else
                    f"reviewer: Jane Doe\ncorrections:\n  - patient: P1\n    pretreatment: none\n"
                    f"    threshold: {BIG_INT}\n    reason: x\n")
    out = _one_error_line(_run(folder, "--overrides", str(path)))
    assert str(path) in out and re.search(r"line \d+, column \d+", out), out


@pytest.mark.parametrize("name", ["5000_digit_int", "deep_list", "alias_bomb"])
def test_hostile_template_exits_2(folder: Path, name: str) -> None:
    path = folder.parent / "panel.yaml"
    path.write_text(HOSTILE_YAML[name])
    out = _one_error_line(_run(folder, "--template", str(path)))
    assert str(path) in out and re.search(r"line \d+, column \d+", out), out
    shown = runner.invoke(app, ["templates", "show", str(path)])
    assert shown.exit_code == 2 and "Traceback" not in shown.output
    checked = runner.invoke(app, ["templates", "validate", str(path)])  # 1: 'this template is invalid'
    assert checked.exit_code == 1 and re.search(r"line \d+, column \d+: ", checked.output), checked.output


def _workspace_text() -> str:
    return (FLOWJO / "flowkit_simple" / "simple_poly_and_rect.wsp").read_text(encoding="utf-8")


def _with_dtd(text: str, dtd: str, use: str) -> str:
    """A corpus workspace with a DTD before its root and an entity used as a population name."""
    text = text.replace('<Workspace ', dtd + '\n<Workspace ', 1)
    return text.replace('<Population name="poly1"', f'<Population name="{use}"', 1)


@needs_corpus
@pytest.mark.parametrize("suffix", [".wsp", ".xml"])
@pytest.mark.parametrize("name", sorted(DTDS))
def test_gates_from_with_a_dtd_exits_2(folder: Path, name: str, suffix: str) -> None:
    path = folder.parent / f"edited{suffix}"
    path.write_text(_with_dtd(_workspace_text(), *DTDS[name]), encoding="utf-8")
    out = _one_error_line(_run(folder, "--gates-from", str(path)))
    assert "DTD" in out and str(path) in out and "line 2, column" in out, out


@needs_corpus
@pytest.mark.parametrize("reader", ["read_workspace", "read_gatingml"])
def test_an_entity_is_never_expanded(tmp_path: Path, reader: str) -> None:
    """A harmless internal entity: the readers refuse the DTD rather than expand it (they once did)."""
    from bat_analysis.gating import flowjo, gatingml

    if reader == "read_workspace":
        path, text = tmp_path / "w.wsp", _workspace_text()
        read = flowjo.read_workspace
    else:
        path, text = tmp_path / "g.xml", (FLOWJO / "flowsom" / "manualGating.xml").read_text(encoding="utf-8")
        read = gatingml.read_gatingml
    text = text.replace("?>", '?>\n<!DOCTYPE x [<!ENTITY n "1">]>', 1) if text.startswith("<?xml") else \
        '<!DOCTYPE x [<!ENTITY n "1">]>\n' + text
    path.write_text(text, encoding="utf-8")
    with pytest.raises(GatingError, match="DTD"):
        read(path)


def _strip_linear_ranges(text: str) -> str:
    return re.sub(r"(<transforms:linear)[^>]*?(>)", r'\1 gain="1"\2', text)


@needs_corpus
@pytest.mark.parametrize("wsp,fcs", [("flowsom/gating.wsp", "flowsom/68983.fcs"),
                                     ("flowkit_simple/simple_poly_and_rect.wsp",
                                      "flowkit_simple/data_set_simple_line_100.fcs"),
                                     ("flowkit_simple/simple_diamond_example_quad_gate.wsp",
                                      "flowkit_simple/test_data_diamond_01.fcs")])
def test_linear_transform_without_range_is_read_with_flowjo_defaults(tmp_path: Path, wsp: str, fcs: str) -> None:
    """FlowKit raised TypeError; FlowJo's default range is filled in, with a warning, and the gates hold the
    same events (a linear scale's range changes no membership)."""
    from bat_analysis.gating.flowjo import WorkspaceWarning, read_workspace
    from bat_analysis.io.fcs import read_fcs

    original = FLOWJO / wsp
    stripped = tmp_path / "stripped.wsp"
    stripped.write_text(_strip_linear_ranges(original.read_text(encoding="utf-8")), encoding="utf-8")
    assert "minRange" not in stripped.read_text(encoding="utf-8").split("<transforms:linear", 1)[1][:80]
    with pytest.warns(WorkspaceWarning, match="FlowJo's defaults"):
        got = read_workspace(stripped)
    want = read_workspace(original)
    assert got.keys() == want.keys()
    sample = read_fcs(FLOWJO / fcs)
    for name in got:
        a = got[name].document.evaluate(sample.events, sample.pnn)
        b = want[name].document.evaluate(sample.events, sample.pnn)
        assert a.keys() == b.keys() and all((a[g] == b[g]).all() for g in a)
        assert got[name].counts == want[name].counts


@needs_corpus
def test_flowkit_failure_is_a_located_error(folder: Path) -> None:
    """FlowKit's own exceptions (here a TypeError from a biex transform without pos) name the file."""
    from bat_analysis.gating.flowjo import read_workspace

    text = (FLOWJO / "flowsom" / "gating.wsp").read_text(encoding="utf-8")
    broken = re.sub(r'(<transforms:biex[^>]*?)\stransforms:pos="[^"]*"', r"\1", text)
    assert broken != text
    path = folder.parent / "broken.wsp"
    path.write_text(broken, encoding="utf-8")
    with pytest.raises(GatingError, match=r"could not be read \(FlowKit: TypeError") as err:
        read_workspace(path)
    assert err.value.source == str(path)
    out = _one_error_line(_run(folder, "--gates-from", str(path)))
    assert "FlowKit: TypeError" in out and str(path) in out


@needs_corpus
def test_flowjo_workspace_saved_as_xml_is_recognised(tmp_path: Path) -> None:
    from bat_analysis.review._exchange import _documents
    from bat_analysis.gating.flowjo import read_workspace

    saved = tmp_path / "gating.xml"
    saved.write_bytes((FLOWJO / "flowsom" / "gating.wsp").read_bytes())
    docs = {d.path_name: d.document for d in _documents(saved)}
    want = read_workspace(FLOWJO / "flowsom" / "gating.wsp")
    assert docs.keys() == want.keys()
    assert [g.name for g in docs["68983.fcs"].gates] == want["68983.fcs"].gate_names()
    gml = tmp_path / "named.wsp"  # and Gating-ML is Gating-ML whatever its extension
    gml.write_bytes((FLOWJO / "flowsom" / "manualGating.xml").read_bytes())
    assert [d.path_name for d in _documents(gml)] == ["named"]
    other = tmp_path / "other.xml"
    other.write_text("<html><body/></html>")
    with pytest.raises(BatError, match="neither a FlowJo workspace nor a Gating-ML"):
        _documents(other)


# ---------------------------------------------------------------------------------------------- layouts (openpyxl)
def _xlsx_with_entity(path: Path) -> None:
    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["file", "patient", "condition"])
    sheet.append(["neg.fcs", "PATIENT", "negative_control"])
    book.save(path)
    with zipfile.ZipFile(path) as z:
        parts = {n: z.read(n) for n in z.namelist()}
    sheet_xml = parts["xl/worksheets/sheet1.xml"].decode()
    assert ">PATIENT<" in sheet_xml  # openpyxl writes inline strings
    sheet_xml = '<!DOCTYPE worksheet [<!ENTITY p "P1">]>' + sheet_xml.replace(">PATIENT<", ">&p;<")
    parts["xl/worksheets/sheet1.xml"] = sheet_xml.encode()
    with zipfile.ZipFile(path, "w") as z:
        for n, b in parts.items():
            z.writestr(n, b)


def test_xlsx_layout_with_an_entity_is_refused(folder: Path) -> None:
    """openpyxl parses with defusedxml when it is installed (a dependency now): entities are refused."""
    from bat_analysis.io.layout import read_layout

    import defusedxml

    path = folder / "layout.xlsx"
    _xlsx_with_entity(path)  # without defusedxml openpyxl expands it: the patient reads 'P1'
    with pytest.raises(LayoutError, match="cannot read the workbook") as err:
        read_layout(path, folder)
    causes, exc = [], err.value
    while exc is not None:
        causes.append(exc)
        exc = exc.__cause__ or exc.__context__
    assert any(isinstance(c, defusedxml.EntitiesForbidden) for c in causes), causes


def test_xlsx_layout_needs_openpyxl_with_defusedxml(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import openpyxl

    from bat_analysis.io.layout import read_layout

    path = folder / "layout.xlsx"
    _xlsx_with_entity(path)
    monkeypatch.setattr(openpyxl, "DEFUSEDXML", False)
    with pytest.raises(LayoutError, match="defusedxml"):
        read_layout(path, folder)


def test_csv_layout_with_an_over_long_cell_is_located(folder: Path) -> None:
    """The csv module refuses a cell over 131,072 characters with csv.Error (a traceback before)."""
    from bat_analysis.io.layout import read_layout

    path = folder / "layout.csv"
    path.write_text("file,patient,condition\nneg.fcs,P1,negative_control\n\"" + "x" * 200_000 + "\",P1,fmlp\n")
    with pytest.raises(LayoutError, match="cannot be read as CSV") as err:
        read_layout(path, folder)
    assert err.value.problems == ["line 3: expected delimited text"]
