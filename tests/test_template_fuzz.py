"""Fuzzing gating templates: the shipped YAML templates with keys dropped or renamed, values of the wrong type,
unknown methods and markers, parent cycles, damaged bytes, and random YAML, are either valid Templates or are
refused with one TemplateError whose every problem is located; never another exception or a hang. Example
counts are bounded to keep CI fast; set ``BAT_FUZZ_EXAMPLES`` (examples per test) for a longer run."""

from __future__ import annotations

import copy
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bat_analysis.errors import TemplateError
from bat_analysis.gating.templates import (SCATTER_DIMS, Template, list_templates, load_template, method_names,
                                           method_params, parse_template, templates_dir, validate_template)
from test_layout_fuzz import no_hang

EXAMPLES = int(os.environ.get("BAT_FUZZ_EXAMPLES", "25"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MAX_PROBLEM_CHARS = 2000
SOURCE = "fuzz.yaml"

NAMES = list_templates()
TEXTS = {name: (templates_dir() / f"{name}.yaml").read_text(encoding="utf-8") for name in NAMES}
DOCS = {name: yaml.safe_load(text) for name, text in TEXTS.items()}
shipped = st.sampled_from(NAMES)


def _located(problem: str) -> bool:
    """``where: what`` with a message after the place (``gates[2] (cells).params.bins: expected ...``)."""
    where, sep, what = problem.partition(": ")
    return bool(sep) and bool(what.strip())


def _one_line(value: Any) -> bool:
    """Not a text with a line break (keys with line breaks under qc:/analysis: hit a known bug, tested alone)."""
    return not isinstance(value, str) or value.splitlines() in ([], [value])


def check_text(text: str) -> Template | TemplateError:
    """Parse ``text``: a coherent Template, or a TemplateError whose problems are all located (and short)."""
    with no_hang():
        try:
            template = parse_template(text, source=SOURCE)
        except TemplateError as exc:
            assert exc.source == SOURCE and str(exc).startswith(SOURCE)
            assert exc.problems, str(exc)
            for p in exc.problems:
                assert isinstance(p, str) and _located(p), p
                assert len(p) <= MAX_PROBLEM_CHARS, p[:300]
            return exc
    names = [g.name for g in template.gates]
    assert template.gates and len(set(names)) == len(names)
    assert template.population in names
    valid_dims = set(SCATTER_DIMS) | set(template.panel)
    for g in template.gates:
        assert g.method in method_names() and set(g.dims) <= valid_dims, g
        assert g.parent is None or g.parent in names
        seen, cur = {g.name}, g.parent
        while cur is not None:  # acyclic
            assert cur not in seen, (g.name, cur)
            seen.add(cur)
            cur = template.gate(cur).parent
        for k, v in g.params.items():
            spec = method_params(g.method)[k]
            if spec.kind in ("number", "integer"):
                assert isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v), (g.name, k, v)
    assert set(template.identification) <= set(template.panel) and set(template.activation) <= set(template.panel)
    return template


def check_doc(doc: Any) -> Template | TemplateError:
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return check_text(yaml.dump(doc, Dumper=dumper, allow_unicode=True, sort_keys=False))


def problems_of(doc: Any) -> list[str]:
    result = check_doc(doc)
    assert isinstance(result, TemplateError), "the mutated template was accepted"
    return result.problems


def loc(doc: dict[str, Any], i: int) -> str:
    """How problems name gate ``i`` of ``doc``."""
    return f"gates[{i}] ({doc['gates'][i]['name']})"


def test_shipped_templates_survive_the_yaml_round_trip() -> None:
    for name in NAMES:
        result = check_doc(DOCS[name])
        assert isinstance(result, Template) and result.name == name


# ------------------------------------------------------------------------------------------- random mutations
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(-1e6, 1e6, allow_nan=False),
    st.text(max_size=12),
    st.sampled_from(["", "fixed", "cluster_2d", "kmeans", "inside", "outside", "fallback", "not_gated", "none",
                     "file", "matrix", "logicle", "CCR3", "CD63", "CD999", "FSC-A", "Time", "basophils", "cells",
                     "margin", "acquisition_qc", "singlets", "negative_control", "percentile", "polygon", "range",
                     "1e3", "yes", "~"]),
)
# anything YAML can hold: nested lists and mappings, non-finite and huge numbers, extreme magnitudes
KEY_TEXT = st.text(max_size=6).filter(_one_line)
ANY_VALUE = st.recursive(
    st.one_of(SCALARS, st.floats(), st.integers(), st.binary(max_size=4),
              st.dates()),
    lambda children: st.one_of(st.lists(children, max_size=3),
                               st.dictionaries(st.one_of(KEY_TEXT, st.integers(-3, 3)), children, max_size=3)),
    max_leaves=6,
)


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, prefix + (i,))
    return out


def _get(obj: Any, path: tuple) -> Any:
    for p in path:
        obj = obj[p]
    return obj


def mutate(doc: Any, ops: list[tuple[int, str, Any]]) -> Any:
    """Apply ``(path index, operation, value)`` edits to a deep copy of ``doc``."""
    doc = copy.deepcopy(doc)
    for where, op, value in ops:
        paths = _paths(doc)
        path = paths[where % len(paths)]
        if not path:
            if op == "replace":
                doc = value
            continue
        parent, key = _get(doc, path[:-1]), path[-1]
        if op == "delete":
            del parent[key]
        elif op == "replace":
            parent[key] = value
        elif (op == "rename" and isinstance(parent, dict) and isinstance(value, (str, int)) and _one_line(value)
              and value not in parent):
            parent[value] = parent.pop(key)
        elif op == "duplicate" and isinstance(parent, list):
            parent.insert(key, copy.deepcopy(parent[key]))
        elif op == "wrap":
            parent[key] = [parent[key]]
        elif op == "swap" and isinstance(parent, list) and len(parent) > 1:
            j = (key + 1) % len(parent)
            parent[key], parent[j] = parent[j], parent[key]
    return doc


def ops_of(values: st.SearchStrategy) -> st.SearchStrategy:
    kinds = ["delete", "replace", "replace", "rename", "duplicate", "swap", "wrap"]
    return st.lists(st.tuples(st.integers(0, 10**4), st.sampled_from(kinds), values), min_size=1, max_size=5)


@FUZZ
@given(name=shipped, ops=ops_of(SCALARS))
def test_scalar_mutations(name: str, ops: list) -> None:
    """Keys dropped or renamed, values replaced by scalars of any type or wrapped in a list, items duplicated or
    swapped (transform parameters included)."""
    check_doc(mutate(DOCS[name], ops))


@FUZZ
@given(name=shipped, ops=ops_of(ANY_VALUE))
def test_any_value_mutations(name: str, ops: list) -> None:
    """As above, with nested lists and mappings, non-finite, huge and tiny numbers, bytes and dates."""
    doc = mutate(DOCS[name], ops)
    try:
        check_doc(doc)
    except AssertionError:
        raise
    except Exception as exc:  # report the escaping exception as the test failure
        raise AssertionError(f"{type(exc).__name__} escaped: {exc}") from exc


@FUZZ
@given(text=st.one_of(st.text(max_size=200), st.text(alphabet="{}[]:,-? &*!|>'\"#\n abc1", max_size=120)))
def test_random_text(text: str) -> None:
    check_text(text)


GATE_KEYS = ["name", "parent", "dims", "method", "params", "keep", "min_events", "on_fail", "fallback", "geometry",
             "description"]
flat = st.one_of(SCALARS, st.lists(SCALARS, max_size=3))
shallow = st.one_of(flat, st.dictionaries(KEY_TEXT, st.one_of(flat, st.dictionaries(
    st.sampled_from(["type", "vertices", "min", "max", "mean", "aliases", "required", "bins"]), flat, max_size=3)),
    max_size=3))
SECTIONS = {
    "schema_version": st.one_of(st.just(1), SCALARS), "name": SCALARS, "description": SCALARS,
    "population": SCALARS, "identification": flat, "activation": flat, "panel": shallow,
    "compensation": shallow, "transforms": st.dictionaries(st.sampled_from(["scatter", "fluorescence", "CD63"]),
                                                          st.just({"type": "none"}), max_size=2),
    "gates": st.one_of(shallow, st.lists(st.dictionaries(st.sampled_from(GATE_KEYS), shallow, max_size=6), max_size=4)),
    "reference_gates": st.lists(st.dictionaries(st.sampled_from(["name", "marker", "parent", "reference", "method",
                                                                 "percentile"]), SCALARS), max_size=2),
    "metrics": st.lists(st.dictionaries(st.sampled_from(["name", "marker", "kind"]), SCALARS), max_size=2),
    "qc": shallow, "analysis": shallow,
}


@FUZZ
@given(data=st.data(), keys=st.lists(st.sampled_from(sorted(SECTIONS)), unique=True))
def test_random_documents_with_the_known_sections(data: st.DataObject, keys: list[str]) -> None:
    """Every known section present or not, holding scalars, flat lists or shallow mappings."""
    check_doc({k: data.draw(SECTIONS[k], label=k) for k in keys})


@FUZZ
@given(name=shipped, edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
                                    min_size=1, max_size=6), cut=st.floats(0, 1))
def test_damaged_files_load_and_validate_alike(name: str, edits: list[tuple[float, int]], cut: float) -> None:
    content = bytearray(TEXTS[name].encode("utf-8"))
    for where, value in edits:
        content[int(where * len(content))] = value
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "damaged.yaml"
        path.write_bytes(bytes(content[: int(cut * len(content)) or 1]))
        with no_hang():
            problems = validate_template(path)
            try:
                template = load_template(path)
            except TemplateError as exc:
                assert exc.source == str(path)
                assert (exc.problems or [str(exc)]) == problems
                assert all(_located(p) or p.startswith(str(path)) for p in problems), problems
            else:
                assert problems == [] and template.source == str(path)


# ------------------------------------------------------------------------------------------- located problems
@FUZZ
@given(name=shipped, i=st.integers(0, 20), method=st.one_of(
    st.sampled_from(["", "Fixed", "flowrate", "kmeans", "cluster-2d", "FLOW_RATE"]), st.text(max_size=10)))
def test_unknown_method(name: str, i: int, method: str) -> None:
    if method in method_names():
        return
    doc = copy.deepcopy(DOCS[name])
    i %= len(doc["gates"])
    doc["gates"][i]["method"] = method
    problems = problems_of(doc)
    assert len(problems) == 1 and problems[0].startswith(f"{loc(doc, i)}.method: unknown method"), problems


def _descendants(gates: list[dict[str, Any]], i: int) -> list[int]:
    """Indices of gate ``i`` and of every gate below it."""
    out = []
    for j, g in enumerate(gates):
        cur = g["name"]
        while cur is not None:
            if cur == gates[i]["name"]:
                out.append(j)
                break
            cur = next(x["parent"] for x in gates if x["name"] == cur)
    return out


@FUZZ
@given(name=shipped, i=st.integers(0, 20), pick=st.integers(0, 20))
def test_parent_cycle(name: str, i: int, pick: int) -> None:
    doc = copy.deepcopy(DOCS[name])
    gates = doc["gates"]
    i %= len(gates)
    below = _descendants(gates, i)
    j = below[pick % len(below)]
    gates[i]["parent"] = gates[j]["name"]  # i's parent is i itself or one of its descendants
    problems = problems_of(doc)
    in_cycle = {f"{loc(doc, k)}.parent: cycle: " for k in below}
    assert any(p.startswith(tuple(in_cycle)) for p in problems), problems
    assert all("cycle" in p or p.startswith("gates: no gate starts from all events") for p in problems), problems


@FUZZ
@given(name=shipped, i=st.integers(0, 20), k=st.integers(0, 3),
       marker=st.text(alphabet="ABCDLMNPSTXZ0123456789-+ ", min_size=1, max_size=8))
def test_unknown_marker_in_a_gate(name: str, i: int, k: int, marker: str) -> None:
    doc = copy.deepcopy(DOCS[name])
    if marker in SCATTER_DIMS or marker in doc["panel"]:
        return
    i %= len(doc["gates"])
    dims = doc["gates"][i]["dims"]
    k %= len(dims)
    dims[k] = marker
    problems = problems_of(doc)
    assert len(problems) == 1 and problems[0].startswith(f"{loc(doc, i)}.dims[{k}]: unknown dimension"), problems


@FUZZ
@given(name=shipped, section=st.sampled_from(["identification", "activation", "reference_gates", "metrics"]),
       marker=st.text(alphabet="ABCDLMNPSTXZ0123456789-+ ", min_size=1, max_size=8))
def test_unknown_marker_in_a_section(name: str, section: str, marker: str) -> None:
    doc = copy.deepcopy(DOCS[name])
    if marker in doc["panel"]:
        return
    if section in ("identification", "activation"):
        doc[section].append(marker)
        where = f"{section}[{len(doc[section]) - 1}]: unknown marker"
    else:
        doc[section][0]["marker"] = marker
        where = f"{section}[0].marker: unknown marker"
    problems = problems_of(doc)
    assert len(problems) == 1 and problems[0].startswith(where), problems


def _wrong_values(kind: str, choices: tuple[str, ...]) -> st.SearchStrategy:
    text = st.text(max_size=6).filter(lambda s: s not in choices)
    if kind == "number":
        return st.one_of(text, st.booleans(), st.none(), st.lists(st.integers(), max_size=2))
    if kind == "integer":
        fractional = st.floats(allow_nan=False).filter(lambda x: not math.isfinite(x) or x != int(x))
        return st.one_of(text, st.booleans(), st.none(), fractional)
    if kind == "bool":
        return st.one_of(text, st.integers(), st.none())
    return st.one_of(text, st.integers(), st.none())


@FUZZ
@given(name=shipped, i=st.integers(0, 20), p=st.integers(0, 20), data=st.data())
def test_wrong_parameter_type(name: str, i: int, p: int, data: st.DataObject) -> None:
    doc = copy.deepcopy(DOCS[name])
    gates = doc["gates"]
    i %= len(gates)
    specs = method_params(gates[i]["method"])
    if not specs:
        return
    key = sorted(specs)[p % len(specs)]
    param = specs[key]
    gates[i].setdefault("params", {})[key] = data.draw(_wrong_values(param.kind, param.choices), label="value")
    problems = problems_of(doc)
    assert len(problems) == 1 and problems[0].startswith(f"{loc(doc, i)}.params.{key}: expected "), problems


@FUZZ
@given(name=shipped, i=st.integers(0, 20), p=st.integers(0, 20), below=st.booleans(),
       by=st.floats(1e-3, 1e6))
def test_parameter_out_of_range(name: str, i: int, p: int, below: bool, by: float) -> None:
    doc = copy.deepcopy(DOCS[name])
    gates = doc["gates"]
    i %= len(gates)
    bounded = {k: s for k, s in method_params(gates[i]["method"]).items()
               if s.kind in ("number", "integer") and (s.minimum if below else s.maximum) is not None}
    if not bounded:
        return
    key = sorted(bounded)[p % len(bounded)]
    spec = bounded[key]
    value = spec.minimum - by if below else spec.maximum + by
    if spec.kind == "integer":
        value = math.floor(value) if below else math.ceil(value)
        value += -1 if below and value >= spec.minimum else 1 if not below and value <= spec.maximum else 0
    gates[i].setdefault("params", {})[key] = value
    problems = problems_of(doc)
    assert len(problems) == 1 and problems[0].startswith(f"{loc(doc, i)}.params.{key}: expected a value "), problems


@FUZZ
@given(name=shipped, key=st.sampled_from(["schema_version", "name", "panel", "gates"]))
def test_required_section_dropped(name: str, key: str) -> None:
    doc = copy.deepcopy(DOCS[name])
    del doc[key]
    problems = problems_of(doc)
    assert any(p.startswith(f"{key}: ") for p in problems), problems


@FUZZ
@given(name=shipped, i=st.integers(0, 20), key=st.sampled_from(["name", "dims", "method"]))
def test_required_gate_key_dropped(name: str, i: int, key: str) -> None:
    doc = copy.deepcopy(DOCS[name])
    i %= len(doc["gates"])
    del doc["gates"][i][key]
    problems = problems_of(doc)
    assert any(p.startswith(f"gates[{i}]") and f".{key}: " in p for p in problems), problems


@FUZZ
@given(name=shipped, where=st.sampled_from(["top", "gate", "panel", "compensation"]), i=st.integers(0, 20),
       key=st.text(alphabet="abcdefgxyz_", min_size=1, max_size=8))
def test_unknown_key(name: str, where: str, i: int, key: str) -> None:
    doc = copy.deepcopy(DOCS[name])
    i %= len(doc["gates"])
    target, prefix = {"top": (doc, ""), "gate": (doc["gates"][i], f"{loc(doc, i)}."),
                      "panel": (doc["panel"], "panel."), "compensation": (doc["compensation"], "compensation.")}[where]
    if key in target or (where == "panel" and key in SCATTER_DIMS):
        return
    target[key] = 1
    problems = problems_of(doc)
    assert len(problems) == 1 and problems[0].startswith(f"{prefix}{key}: "), problems


# ------------------------------------------------------------------------------------------- hostile values
def _escapes(doc_or_text: Any) -> Template | TemplateError:
    """``check_doc``/``check_text``, naming the exception type when one other than TemplateError escapes."""
    try:
        return check_text(doc_or_text) if isinstance(doc_or_text, str) else check_doc(doc_or_text)
    except AssertionError:
        raise
    except Exception as exc:
        raise AssertionError(f"{type(exc).__module__}.{type(exc).__name__} escaped: {exc}") from exc


def _set(doc: dict[str, Any], path: tuple, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    _get(doc, path[:-1])[path[-1]] = value
    return doc


@pytest.mark.parametrize("path", [("population",), ("identification", 0), ("activation", 0),
                                  ("reference_gates", 0, "marker"), ("reference_gates", 0, "parent"),
                                  ("metrics", 0, "marker")], ids=lambda p: ".".join(map(str, p)))
@pytest.mark.parametrize("value", [["CD63"], {"CD63": 1}], ids=["list", "mapping"])
def test_list_or_mapping_where_a_name_is_expected(path: tuple, value: Any) -> None:
    """A list or mapping where a marker or gate name belongs (once a TypeError: unhashable type)."""
    result = _escapes(_set(DOCS["bat_ccr3_cd63"], path, value))
    assert isinstance(result, TemplateError)
    where = path[0] + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path[1:])
    assert any(p.startswith(f"{where}: ") for p in result.problems), result.problems


@pytest.mark.parametrize("path,value", [
    (("gates", 3, "params", "n_sd"), math.nan), (("gates", 4, "params", "level"), math.nan),
    (("gates", 3, "params", "min_signal"), math.inf), (("gates", 4, "params", "peak_min_events"), math.inf),
    (("gates", 2, "fallback", "vertices", 1, 0), math.nan), (("gates", 2, "fallback", "vertices", 2, 1), -math.inf),
], ids=["nan_n_sd", "nan_level", "inf_min_signal", "inf_peak_min_events", "nan_vertex", "inf_vertex"])
def test_non_finite_numbers_are_refused(path: tuple, value: float) -> None:
    """NaN and infinity as estimator parameters or geometry (a NaN passes every range comparison)."""
    result = check_doc(_set(DOCS["bat_ccr3_cd63"], path, value))
    assert isinstance(result, TemplateError), f"{path} = {value} accepted"
    assert any(p.startswith(f"gates[{path[1]}]") for p in result.problems), result.problems


@pytest.mark.parametrize("spec", [
    {"type": "logicle", "T": 10**30, "W": 0.5, "M": 4.5, "A": 0},
    {"type": "logicle", "T": 1e-300, "W": 0.5, "M": 4.5, "A": 0},
    {"type": "logicle", "T": 262144, "W": 0.5, "M": 4.5, "A": 1e300},
    {"type": "hyperlog", "T": 262144, "W": 1e-300, "M": 4.5, "A": 0},
    {"type": "hyperlog", "T": 262144, "W": 0.1, "M": 0.5, "A": 0},
], ids=["huge_int_T", "tiny_T", "huge_A", "tiny_W_hyperlog", "ordinary_hyperlog"])
def test_extreme_transform_parameters(spec: dict[str, Any]) -> None:
    """Integers beyond int64 and parameters the transform cannot tabulate (once TypeError or ValueError)."""
    result = _escapes(_set(DOCS["bat_ccr3_cd63"], ("transforms", "fluorescence"), spec))
    assert isinstance(result, TemplateError)
    assert all(p.startswith("transforms.fluorescence") for p in result.problems), result.problems


@pytest.mark.parametrize("text", ["[" * 600 + "]" * 600, "{a: " * 600 + "1" + "}" * 600,
                                  "gates: " + "[" * 600 + "]" * 600], ids=["list", "mapping", "in_gates"])
def test_deeply_nested_yaml(text: str) -> None:
    """About 500 levels make yaml.safe_load raise RecursionError."""
    assert isinstance(_escapes(text), TemplateError)


@pytest.mark.parametrize("depth", [5, 7])
def test_yaml_alias_bomb_gives_a_short_message(depth: int) -> None:
    """A bad value under qc: quoted whole would make the message explode with an alias bomb (9**depth values:
    59 thousand, or 4.8 million expanded)."""
    levels = "abcdefghij"[: depth]
    bomb = "x0: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"x{i}: &{b} [{', '.join(['*' + a] * 9)}]\n" for i, (a, b) in enumerate(zip(levels, levels[1:]), start=1))
    text = TEXTS["bat_ccr3_cd63"].replace("qc: {}", f"qc: {{margin_warn_pct: *{levels[-1]}}}")
    text = text.replace("schema_version: 1", bomb + "schema_version: 1")
    result = check_text(text)  # within the time limit, every problem short
    assert isinstance(result, TemplateError)


@pytest.mark.parametrize("section,key", [("analysis", "\r"), ("analysis", "a\nb"), ("qc", "x\u2028y")],
                         ids=["cr", "lf", "line_separator"])
def test_line_break_in_a_qc_or_analysis_key(section: str, key: str) -> None:
    """A key holding a line break still gives one located 'unknown key' problem, not fragments."""
    doc = copy.deepcopy(DOCS["bat_ccr3_cd63"])
    doc[section] = {key: 1}
    problems = problems_of(doc)  # every problem located, or the check fails
    assert len(problems) == 1 and "unknown key" in problems[0], problems
