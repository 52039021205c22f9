"""The BAT simulator: populations in whole-blood proportions with the right phenotypes, spillover written and
invertible, determinism, dose-response truth, each scenario and naming style, files readable and labelled."""

from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from bat_analysis.errors import BatError
from bat_analysis.io.fcs import read_fcs
from bat_analysis.io.layout import read_layout
from bat_analysis.io.markers import DEFAULT_ALIASES
from bat_analysis.simulate import (
    BASOPHIL, CLOG, CONTROL_CONDITIONS, DEBRIS, DOUBLET, EOSINOPHIL, KINDS, LYMPHOCYTE, MONOCYTE, NAMING_STYLES,
    NEUTROPHIL,
    POPULATIONS, SATURATED, SCENARIOS, TIMESTEP, load_labels, make_patient, response, simulate_experiment,
    simulate_tube, spillover_matrix,
)


def four_pl(concentration: float, bottom: float, top: float, ec50: float, hill: float) -> float:
    """The documented 4PL on concentration, written here independently of the code under test."""
    return bottom + (top - bottom) / (1.0 + 10.0 ** ((math.log10(ec50) - math.log10(concentration)) * hill))

LEUKOCYTES = (LYMPHOCYTE, MONOCYTE, NEUTROPHIL, EOSINOPHIL, BASOPHIL)


@pytest.fixture(scope="module")
def big_tube():
    return simulate_tube(n_events=100_000, pct_activated=40.0, seed=7)


def _share(tube, code: int) -> float:
    leuko = np.isin(tube.population, LEUKOCYTES)
    return float(np.count_nonzero(tube.population == code)) / float(np.count_nonzero(leuko))


def test_population_proportions(big_tube) -> None:
    pop = big_tube.population
    assert 0.005 <= _share(big_tube, BASOPHIL) <= 0.0105
    assert 0.50 <= _share(big_tube, NEUTROPHIL) <= 0.66
    assert 0.20 <= _share(big_tube, LYMPHOCYTE) <= 0.34
    assert 0.04 <= _share(big_tube, MONOCYTE) <= 0.10
    assert 0.01 <= _share(big_tube, EOSINOPHIL) <= 0.05
    n = pop.size
    assert 0.05 <= np.count_nonzero(pop == DEBRIS) / n <= 0.15
    assert 0.02 <= np.count_nonzero(pop == DOUBLET) / n <= 0.055
    assert np.count_nonzero(pop == CLOG) == 0  # no artefact without a scenario
    assert np.count_nonzero(pop == SATURATED) / n < 0.005
    assert big_tube.events.shape == (100_000, 10) and big_tube.events.dtype == np.float32


def test_phenotypes(big_tube) -> None:
    ev, pop = big_tube.events, big_tube.population
    comp = big_tube.compensated()
    m = {k: i for i, k in enumerate(big_tube.markers)}

    def med(code: int, col: np.ndarray) -> float:
        return float(np.median(col[pop == code]))

    ssc = ev[:, 2]
    # basophils: SSC-low, eosinophils SSC-high; both CCR3+
    assert med(BASOPHIL, ssc) < 0.5 * med(MONOCYTE, ssc) and med(EOSINOPHIL, ssc) > 1.2 * med(NEUTROPHIL, ssc)
    ccr3 = comp[:, m["CCR3"]]
    assert med(BASOPHIL, ccr3) > 20 * med(LYMPHOCYTE, ccr3) and med(EOSINOPHIL, ccr3) > 20 * med(NEUTROPHIL, ccr3)
    # CD123+ HLA-DR- basophils; HLA-DR+ monocytes
    assert med(BASOPHIL, comp[:, m["CD123"]]) > 5 * med(MONOCYTE, comp[:, m["CD123"]])
    assert med(MONOCYTE, comp[:, m["HLA-DR"]]) > 50 * max(med(BASOPHIL, comp[:, m["HLA-DR"]]), 1.0)
    assert med(BASOPHIL, comp[:, m["CD203c"]]) > 20 * med(NEUTROPHIL, comp[:, m["CD203c"]])
    # singlets: FSC-H tracks FSC-A; doublets have a larger area/height ratio
    ratio = ev[:, 0] / np.maximum(ev[:, 1], 1.0)
    assert med(DOUBLET, ratio) > 1.5 * med(LYMPHOCYTE, ratio)
    # activated basophils: CD63 and CD203c high
    baso = big_tube.basophil
    act = big_tube.activated
    assert not np.any(act & ~baso)
    cd63 = comp[:, m["CD63"]]
    assert np.median(cd63[act]) > 8 * np.median(cd63[baso & ~act])
    assert np.median(comp[act, m["CD203c"]]) > 1.5 * np.median(comp[baso & ~act, m["CD203c"]])


def test_spillover_is_applied_and_invertible(big_tube) -> None:
    names, matrix = big_tube.spillover
    assert np.allclose(np.diag(matrix), 1.0) and matrix[0, 1] > 0.1  # FITC spills into PE
    baso = big_tube.basophil
    raw = big_tube.events[:, [big_tube.pnn.index(n) for n in names]]
    comp = big_tube.compensated()
    # uncompensated, the PE channel (CCR3) of basophils carries ~22 % of the FITC (CD63) signal, which
    # varies with activation independently of CCR3; compensated, it does not
    slope_raw = np.polyfit(comp[baso, 0], raw[baso, 1], 1)[0]
    slope_comp = np.polyfit(comp[baso, 0], comp[baso, 1], 1)[0]
    assert 0.12 <= slope_raw <= 0.32 and abs(slope_comp) < 0.1
    np.testing.assert_allclose(comp @ matrix, raw, rtol=1e-4, atol=0.05)


def test_spillover_written_as_keyword(tmp_path: Path) -> None:
    exp = simulate_experiment(tmp_path, n_patients=1, n_events=3000, seed=2, n_concentrations=2)
    sample = read_fcs(exp.files[0])
    assert sample.spillover is not None and sample.spillover.keyword == "$SPILLOVER"
    np.testing.assert_allclose(np.asarray(sample.spillover.matrix), spillover_matrix(), atol=1e-12)
    assert list(sample.spillover.channels) == exp.truth["spillover"]["channels"]


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    args = dict(n_patients=2, n_events=2000, n_concentrations=3, scenario="mixed")
    a = simulate_experiment(tmp_path / "a", seed=5, **args)
    b = simulate_experiment(tmp_path / "b", seed=5, **args)
    c = simulate_experiment(tmp_path / "c", seed=6, **args)
    assert _digest(a.out_dir) == _digest(b.out_dir)
    da, dc = _digest(a.out_dir), _digest(c.out_dir)
    assert all(da[f] != dc[f] for f in da if f.endswith(".fcs"))
    t1 = simulate_tube(n_events=1000, seed=3)
    t2 = simulate_tube(n_events=1000, seed=3)
    assert np.array_equal(t1.events, t2.events) and np.array_equal(t1.population, t2.population)


def test_response_is_the_4pl_on_concentration() -> None:
    c = np.logspace(-3, 3, 61)
    y = response(c, dict(bottom=2.0, top=80.0, ec50=0.5, hill=1.3))
    assert np.all(np.diff(y) > 0)
    assert response(0.5, dict(bottom=2.0, top=80.0, ec50=0.5, hill=1.3)) == pytest.approx(41.0)
    assert y[0] == pytest.approx(2.0, abs=0.1) and y[-1] == pytest.approx(80.0, abs=0.1)
    # 10 times the EC50 with Hill 1 gives bottom + (top - bottom) * 10/11
    assert response(10.0, dict(bottom=0.0, top=100.0, ec50=1.0, hill=1.0)) == pytest.approx(100.0 * 10.0 / 11.0)


@pytest.mark.parametrize("kind", KINDS)
def test_patient_kinds_match_their_class(kind: str) -> None:
    for seed in range(10):
        p = make_patient("P", kind, np.random.default_rng(seed))
        none, oma = p.curves["none"], p.curves["omalizumab"]
        for curve in (none, oma):
            assert 0.8 <= curve["hill"] <= 2.0 and 0 <= curve["bottom"] <= 25 and curve["top"] <= 100
        assert 0.1 <= none["ec50"] <= 10.0
        # the AUC of net %CD63+ over log10 concentration by the trapezoid rule, computed here independently
        x = np.log10(p.concentrations)

        def auc(curve: dict[str, float]) -> float:
            net = [four_pl(c, **curve) - curve["bottom"] for c in p.concentrations]
            return sum((x[i + 1] - x[i]) * (net[i] + net[i + 1]) / 2 for i in range(len(x) - 1))

        inhibition = 100 * (1 - auc(oma) / auc(none))
        if kind == "non_releaser":
            assert p.auc_inhibition_pct is None  # no untreated response to inhibit
        else:
            assert p.auc_inhibition_pct == pytest.approx(inhibition)
        if kind == "responder":
            assert inhibition >= 80
        elif kind == "partial":
            assert 20 <= inhibition < 80
        elif kind == "non_responder":
            assert inhibition < 20
        else:  # non-releaser: no IgE-mediated release, fMLP works
            assert p.anti_fceri_pct["none"] - p.spontaneous_pct < 5
            assert none["top"] - none["bottom"] < 5
        if kind != "non_releaser":
            assert p.anti_fceri_pct["none"] - p.spontaneous_pct >= 10
        assert p.fmlp_pct["none"] - p.spontaneous_pct >= 5


# the experiment fixture (tests/conftest.py)
SIMULATION = {"n_patients": 4, "n_events": 8000, "seed": 21, "n_concentrations": 5, "basophil_pct": (8.0, 10.0)}


def test_experiment_files_layout_truth(experiment) -> None:
    exp = experiment
    assert len(exp.tubes) == 4 * 2 * (3 + 5)
    assert read_layout(exp.layout_path) == exp.tubes
    truth = json.loads(exp.truth_path.read_text())
    assert truth["populations"] == list(POPULATIONS)
    assert set(truth["tubes"]) == {t.file for t in exp.tubes}
    assert [truth["patients"][p]["kind"] for p in ("P01", "P02", "P03", "P04")] == list(KINDS)
    with exp.layout_path.open() as fh:
        rows = list(csv.DictReader(fh))
    assert {r["condition"] for r in rows} == {"negative_control", "anti_fceri", "fmlp", "allergen"}
    assert {r["pretreatment"] for r in rows} == {"none", "omalizumab"}
    for tube in exp.tubes[:3]:
        pop, act = exp.labels(tube.file)
        events = read_fcs(exp.out_dir / tube.file).events
        assert pop.shape == (events.shape[0],) and act.dtype == bool
        with np.load(exp.labels_path) as data:
            assert np.array_equal(data[f"{tube.file}:basophil"], pop == BASOPHIL)
    with pytest.raises(BatError, match="no labels"):
        load_labels(exp.labels_path, "nope.fcs")


def test_dose_response_truth_respected(experiment) -> None:
    truth = experiment.truth
    for file, t in truth["tubes"].items():
        p = truth["patients"][t["patient"]]
        arm = p["arms"][t["pretreatment"]]
        if t["condition"] == "allergen":
            want = four_pl(t["concentration"], **arm["curve"])
        elif t["condition"] == "negative_control":
            want = p["spontaneous_pct"]
        else:
            want = arm[f"{t['condition']}_pct"]
        assert t["pct_cd63_expected"] == pytest.approx(float(want))
        n = t["n_basophils"]
        q = want / 100
        # the labelled activated fraction is a binomial draw around the generating value
        assert abs(t["pct_cd63_true"] - want) <= 100 * 4.5 * math.sqrt(q * (1 - q) / n) + 0.5, file
        assert t["pct_cd63_true"] == pytest.approx(100 * t["n_activated"] / n)
        # a perfect gate with the 97.5th-percentile rule lands close to the labels when the negative control
        # has fewer activated basophils than the 2.5 % the rule assumes
        neg = next(x for x in truth["tubes"].values() if x["patient"] == t["patient"]
                   and x["pretreatment"] == t["pretreatment"] and x["condition"] == "negative_control")
        # (resting cells above the threshold add up to ~2.5 % plus the sampling error of two percentiles)
        if neg["pct_cd63_true"] < 2.0:
            assert -2.0 <= t["pct_cd63_ref_threshold"] - t["pct_cd63_true"] <= 6.5, file
        # the resting-peak rule's truth (the control's resting basophils' 97.5th percentile) counts every labelled
        # activated basophil above it, whatever the control's activated share, plus about 2.5 % of the resting
        assert neg["cd63_threshold_resting_ref"] <= neg["cd63_threshold_ref"] + 1e-9
        assert t["pct_cd63_resting_ref"] >= t["pct_cd63_ref_threshold"] - 1e-9
        assert -3.0 <= t["pct_cd63_resting_ref"] - t["pct_cd63_true"] <= 7.0, file
    for pid, p in truth["patients"].items():
        files = {f: t for f, t in truth["tubes"].items() if t["patient"] == pid and t["condition"] == "allergen"}
        for arm in ("none", "omalizumab"):
            series = sorted((t["concentration"], t["cd203c_median_true"], t["pct_cd63_true"])
                            for t in files.values() if t["pretreatment"] == arm)
            if p["kind"] != "non_releaser" and arm == "none":
                assert series[-1][2] > series[0][2] + 20  # the response rises with the dose
                assert series[-1][1] > series[0][1] * 1.3  # and CD203c with it


def test_truth_is_json_without_nan(experiment) -> None:
    text = experiment.truth_path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert "definitions" in json.loads(text)


@pytest.mark.parametrize("naming", NAMING_STYLES)
def test_naming_styles_resolve_markers(tmp_path: Path, naming: str) -> None:
    exp = simulate_experiment(tmp_path, n_patients=1, n_events=1500, seed=4, naming=naming, n_concentrations=2,
                              include_cd107a=True)
    sample = read_fcs(exp.files[0])
    resolved = {c.marker: c.pnn for c in sample.channels if c.marker}
    assert resolved == exp.truth["markers"]
    assert set(resolved) == {"CD63", "CCR3", "HLA-DR", "CD123", "CD203c", "CD107a"}
    assert all(m in DEFAULT_ALIASES for m in resolved)
    pnn = sample.pnn
    if naming == "beckman":
        assert pnn[:4] == ["FS INT", "FS PEAK", "SS INT", "SS PEAK"] and pnn[-1] == "TIME"
        assert resolved["CD63"] == "FL1 INT"
    elif naming == "marker_in_pnn":
        assert resolved["CD63"] == "CD63 FITC-A" and all(not c.pns for c in sample.channels)
    elif naming == "bd":
        assert resolved["CD63"] == "FITC-A"
    else:
        assert [c.pns for c in sample.channels if c.pnn == resolved["CCR3"]] == ["CD193 (CCR3)"]


@pytest.mark.parametrize("version,datatype,byteorder", [("2.0", "I", ">"), ("3.0", "D", "<"), ("3.1", "F", ">")])
def test_fcs_variants_hold_the_simulated_events(version: str, datatype: str, byteorder: str) -> None:
    tube = simulate_tube(n_events=2000, seed=9, datatype=datatype, scenario="saturation")
    if datatype == "I":
        assert np.array_equal(tube.events, np.rint(tube.events)) and tube.events.min() >= 0
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = tube.write(Path(d) / "t.fcs", version=version, datatype=datatype, byteorder=byteorder)
        sample = read_fcs(path)
        assert np.array_equal(sample.events[:, :-1], tube.events[:, :-1])
        # Time is stored in units of $TIMESTEP; read back in seconds
        np.testing.assert_allclose(sample.events[:, -1], tube.events[:, -1] * TIMESTEP, rtol=1e-6)
        assert sample.version == version and sample.keywords["$TIMESTEP"] == str(TIMESTEP)


def test_integer_file_needs_an_integer_tube(tmp_path: Path) -> None:
    with pytest.raises(BatError, match="whole numbers"):
        simulate_tube(n_events=500, seed=1).write(tmp_path / "x.fcs", datatype="I")
    assert not (tmp_path / "x.fcs").exists()


def test_experiment_in_integer_big_endian_fcs2(tmp_path: Path) -> None:
    exp = simulate_experiment(tmp_path, n_patients=1, n_events=1500, seed=8, version="2.0", datatype="I",
                              byteorder=">", n_concentrations=2)
    sample = read_fcs(exp.files[0])
    assert sample.version == "2.0" and sample.keywords["$DATATYPE"] == "I"
    assert sample.keywords["$BYTEORD"] == "4,3,2,1" and sample.spillover.keyword == "$SPILL"


# --- scenarios -----------------------------------------------------------------------------------------

def test_clog_scenario() -> None:
    tube = simulate_tube(n_events=30_000, seed=11, scenario="clog")
    pop, t = tube.population, tube.events[:, -1] * TIMESTEP
    assert np.all(np.diff(t) >= 0)  # events in acquisition order
    frac = np.count_nonzero(pop == CLOG) / pop.size
    assert 0.06 <= frac <= 0.12
    clog_t = t[pop == CLOG]
    assert clog_t.max() - clog_t.min() <= 0.6 + 1e-6  # a burst ...
    gaps = np.diff(t[pop != CLOG])
    assert gaps.max() > 2.0  # ... after a stop of the flow
    rate = np.histogram(t, bins=np.arange(0, t.max() + 0.25, 0.25))[0]
    assert rate.max() > 3 * np.median(rate)
    assert tube.artefacts == ("clog",)


def test_saturation_scenario() -> None:
    tube = simulate_tube(n_events=30_000, seed=12, scenario="saturation")
    ev, pop = tube.events, tube.population
    top = 262143.0
    at_margin = (ev[:, 0] >= top) | (ev[:, 2] >= top)
    assert 0.05 <= at_margin.mean() <= 0.085
    assert np.all(at_margin[pop == SATURATED])
    assert tube.artefacts == ("saturation",)


def test_low_basophils_scenario() -> None:
    counts = [simulate_tube(n_events=50_000, seed=s, scenario="low_basophils").n_basophils for s in range(5)]
    assert all(100 <= c <= 200 for c in counts), counts


def test_high_background_scenario() -> None:
    tube = simulate_tube(n_events=60_000, seed=13, scenario="high_background", condition="negative_control")
    p = make_patient("P", "responder", np.random.default_rng(0), scenarios=("high_background",))
    assert 8.0 <= p.spontaneous_pct <= 15.0
    assert 8.0 <= tube.pct_cd63_expected <= 15.0
    assert abs(tube.pct_cd63_true - tube.pct_cd63_expected) < 6.0


def test_eosinophil_rich_scenario() -> None:
    tube = simulate_tube(n_events=30_000, seed=14, scenario="eosinophil_rich")
    assert 0.09 <= _share(tube, EOSINOPHIL) <= 0.21
    ssc = tube.events[:, 2]
    # eosinophils reach lower SSC than usual but stay above the basophils
    assert np.percentile(ssc[tube.population == EOSINOPHIL], 1) > np.percentile(ssc[tube.basophil], 99)


def test_mixed_scenario_spreads_artefacts(tmp_path: Path) -> None:
    exp = simulate_experiment(tmp_path, n_patients=4, n_events=1500, seed=3, scenario="mixed", n_concentrations=5)
    scen = [exp.truth["patients"][p]["scenarios"] for p in exp.truth["patients"]]
    assert sorted(s for x in scen for s in x) == ["eosinophil_rich", "high_background", "low_basophils"]
    artefacts = [a for t in exp.truth["tubes"].values() for a in t["artefacts"] if a in ("clog", "saturation")]
    assert 1 <= len(artefacts) <= 20


def test_refusals() -> None:
    with pytest.raises(BatError, match="unknown scenario"):
        simulate_tube(scenario="volcano")
    with pytest.raises(BatError, match="use simulate_experiment"):
        simulate_tube(scenario="mixed")
    with pytest.raises(BatError, match="unknown patient kind"):
        simulate_tube(kind="sometimes")
    with pytest.raises(BatError, match="unknown naming"):
        simulate_tube(naming="sony")
    with pytest.raises(BatError, match="pct_activated"):
        simulate_tube(pct_activated=120.0)
    with pytest.raises(BatError, match="concentration"):
        simulate_tube(condition="allergen")
    assert set(SCENARIOS) >= {"clean", "clog", "saturation", "low_basophils", "high_background", "eosinophil_rich"}


def test_pct_activated_override() -> None:
    tube = simulate_tube(n_events=40_000, seed=1, pct_activated=50.0)
    assert tube.pct_cd63_expected == 50.0
    assert abs(tube.pct_cd63_true - 50.0) < 10.0


def test_simulate_command(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from bat_analysis._commands import simulate_cmd

    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """Test application."""

    simulate_cmd.register(app)
    runner = CliRunner()
    out = tmp_path / "sim"
    args = ["simulate", str(out), "--patients", "2", "--events", "800", "--seed", "4", "--concentrations", "3",
            "--kinds", "responder,non_releaser", "--naming", "beckman", "--fcs-version", "3.0", "--datatype", "I",
            "--byteorder", "big", "--scenario", "clog", "--scenario", "eosinophil_rich", "--anti-ige",
            "--bell-fraction", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "wrote 28 FCS files" in result.output and "P02: non_releaser" in result.output
    assert (out / "P01_omalizumab_anti_ige.fcs").is_file()
    truth = json.loads((out / "truth.json").read_text())
    assert truth["parameters"]["scenario"] == ["clog", "eosinophil_rich"]
    assert truth["parameters"]["byteorder"] == ">" and truth["parameters"]["naming"] == "beckman"
    assert truth["patients"]["P01"]["high_dose_inhibition"] is not None
    sample = read_fcs(out / "P01_none_negative_control.fcs")
    assert sample.version == "3.0" and sample.keywords["$BYTEORD"] == "4,3,2,1"
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "not empty" in again.output
    bad = runner.invoke(app, ["simulate", str(tmp_path / "x"), "--naming", "sony"])
    assert bad.exit_code == 2 and "unknown naming style" in bad.output
    # replicates and an arm written in another unit, as the library function takes them
    reps = tmp_path / "reps"
    done = runner.invoke(app, ["simulate", str(reps), "--patients", "1", "--events", "600", "--concentrations", "2",
                               "--replicates", "2", "--arm-unit", "omalizumab=ug/mL"])
    assert done.exit_code == 0, done.output
    assert "wrote 20 FCS files" in done.output
    tubes = read_layout(reps / "layout.csv")
    assert {t.replicate for t in tubes} == {"1", "2"} and (reps / "P01_none_negative_control_r2.fcs").is_file()
    assert {t.unit for t in tubes if t.condition == "allergen"} == {"ng/mL", "ug/mL"}
    assert json.loads((reps / "truth.json").read_text())["parameters"]["replicates"] == 2
    for wrong, said in ((["--arm-unit", "omalizumab"], "expected ARM=UNIT"),
                        (["--arm-unit", "placebo=ug/mL"], "which is not simulated"),
                        (["--arm-unit", "omalizumab=parsec"], "'parsec' is not a unit"),
                        (["--replicates", "4"], "--replicates")):
        refused = runner.invoke(app, ["simulate", str(tmp_path / "w"), "--events", "500", *wrong])
        assert refused.exit_code == 2 and said in refused.output, (wrong, refused.output)
        assert not (tmp_path / "w" / "layout.csv").exists()


def test_anti_ige_control_suppressed_by_omalizumab(tmp_path: Path) -> None:
    exp = simulate_experiment(tmp_path, n_patients=2, n_events=600, seed=6, n_concentrations=2,
                              kinds=("responder", "non_responder"),
                              controls=("negative_control", "anti_fceri", "anti_ige", "fmlp"))
    assert sum(t.condition == "anti_ige" for t in exp.tubes) == 4
    responder, non_responder = exp.truth["patients"]["P01"], exp.truth["patients"]["P02"]
    base = responder["spontaneous_pct"]
    assert responder["arms"]["none"]["anti_ige_pct"] - base >= 30
    assert responder["arms"]["omalizumab"]["anti_ige_pct"] - base <= 0.3 * (
        responder["arms"]["none"]["anti_ige_pct"] - base)
    assert non_responder["arms"]["omalizumab"]["anti_ige_pct"] >= 0.9 * non_responder["arms"]["none"]["anti_ige_pct"]
    with pytest.raises(BatError, match="controls"):
        simulate_experiment(tmp_path / "x", controls=("anti_fceri",))


def test_bell_shaped_response(tmp_path: Path) -> None:
    exp = simulate_experiment(tmp_path, n_patients=2, n_events=600, seed=8, n_concentrations=6, bell_fraction=1.0,
                              kinds=("non_responder", "responder"))
    p = exp.truth["patients"]["P01"]
    bell = p["high_dose_inhibition"]
    assert 0.3 <= bell["drop"] <= 0.6
    curve = p["arms"]["none"]["curve"]
    expected = {t["concentration"]: t["pct_cd63_expected"] for t in exp.truth["tubes"].values()
                if t["patient"] == "P01" and t["pretreatment"] == "none" and t["condition"] == "allergen"}
    conc = sorted(expected)
    # the response peaks below the highest concentration, and matches the documented formula
    assert expected[conc[-1]] < max(expected.values())
    for c in conc:
        rise = four_pl(c, **curve) - curve["bottom"]
        want = curve["bottom"] + rise * (1 - bell["drop"] * c ** 2 / (bell["ic50"] ** 2 + c ** 2))
        assert expected[c] == pytest.approx(want)
    assert exp.truth["patients"]["P02"]["auc_inhibition_pct"] >= 80
    # without it, the same seed gives the plain 4PL (and unchanged data)
    plain = simulate_experiment(tmp_path / "plain", n_patients=2, n_events=600, seed=8, n_concentrations=6,
                                kinds=("non_responder", "responder"))
    assert plain.truth["patients"]["P01"]["high_dose_inhibition"] is None


def test_arm_units_write_the_same_doses_in_another_unit(tmp_path: Path) -> None:
    one = simulate_experiment(tmp_path / "one", n_patients=1, n_events=1500, seed=3, n_concentrations=3)
    mixed = simulate_experiment(tmp_path / "mixed", n_patients=1, n_events=1500, seed=3, n_concentrations=3,
                                arm_units={"omalizumab": "µg/mL"})
    a, b = read_layout(one.layout_path), read_layout(mixed.layout_path)
    assert [(t.file, t.condition) for t in a] == [(t.file, t.condition) for t in b]
    for ta, tb in zip(a, b):
        if tb.condition == "allergen" and tb.pretreatment == "omalizumab":
            assert tb.unit == "µg/mL" and tb.concentration == pytest.approx(ta.concentration * 1e-3, rel=1e-9)
        else:
            assert (tb.concentration, tb.unit) == (ta.concentration, ta.unit)
    for name in ("P01_omalizumab_negative_control.fcs", "P01_omalizumab_allergen_birch_1.fcs"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "mixed" / name).read_bytes()
    with pytest.raises(BatError, match="arm_units"):
        simulate_experiment(tmp_path / "bad", n_patients=1, n_events=1500, arm_units={"omalizumab": "BU/mL"})
    with pytest.raises(BatError, match="'placebo', which is not simulated"):  # would be silently unused
        simulate_experiment(tmp_path / "bad2", n_patients=1, n_events=1500, arm_units={"placebo": "µg/mL"})


def test_replicates_are_independent_tubes_in_a_replicate_column(tmp_path: Path) -> None:
    exp = simulate_experiment(tmp_path, n_patients=1, n_events=1500, seed=3, n_concentrations=2, replicates=2,
                              arms=("none",))
    tubes = read_layout(exp.layout_path)
    assert len(tubes) == 2 * (len(CONTROL_CONDITIONS) + 2)
    assert [t.replicate for t in tubes[:2]] == ["1", "2"]
    a, b = tubes[0], tubes[1]
    assert (a.condition, a.concentration) == (b.condition, b.concentration) and a.file != b.file
    assert (tmp_path / a.file).read_bytes() != (tmp_path / b.file).read_bytes()  # independent draws
    with pytest.raises(BatError, match="replicates"):
        simulate_experiment(tmp_path / "bad", n_patients=1, n_events=1500, replicates=4)
