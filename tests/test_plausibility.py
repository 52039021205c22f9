"""MANUAL_GATE_IMPLAUSIBLE: a corrected basophil gate around another population is flagged (an overrides
file, as in the README's example, and an edit in bat review alike); a modest correction is not."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from bat_analysis.gating._plausibility import FLAG
from bat_analysis.pipeline import RunOptions, load_run, run

README_POLYGON = [[0.1, 0.5], [0.3, 0.5], [0.3, 0.9], [0.1, 0.9]]  # README's example, used verbatim


@pytest.fixture(scope="module")
def corrected(tmp_path_factory):
    from bat_analysis.simulate import simulate_experiment

    exp = simulate_experiment(tmp_path_factory.mktemp("pl_data"), n_patients=1, n_events=20000, seed=4,
                              n_concentrations=2)
    out = tmp_path_factory.mktemp("pl_out")
    opts = dict(data_dir=exp.out_dir, layout=exp.layout_path, out=out, workers=1, quiet=True, reports=False)
    run(RunOptions(**opts))
    auto = load_run(out).results
    wrong, modest = sorted(auto, key=lambda r: r.tube.file)[:2]
    g = next(g for g in modest.gates if g.name == "basophils")
    v = g.geometry["vertices"]
    cx, cy = sum(p[0] for p in v) / len(v), sum(p[1] for p in v) / len(v)
    trimmed = [[cx + (x - cx) * 0.9, cy + (y - cy) * 0.9] for x, y in v]
    doc = tmp_path_factory.mktemp("pl_doc") / "review.yaml"
    doc.write_text(yaml.safe_dump({"reviewer": "Jane Doe", "corrections": [
        {"tube": wrong.tube.file, "gate": "basophils", "geometry": {"type": "polygon", "vertices": README_POLYGON},
         "reason": "README example"},
        {"tube": modest.tube.file, "gate": "basophils", "geometry": {"type": "polygon", "vertices": trimmed},
         "reason": "trimmed"}]}))
    run(RunOptions(**opts, overrides=doc))
    return out, wrong.tube.file, modest.tube.file


def test_the_readme_example_polygon_is_flagged_a_trimmed_gate_is_not(corrected):
    out, wrong, modest = corrected
    tubes = pd.read_csv(out / "tubes.csv").set_index("file")
    assert FLAG in str(tubes.loc[wrong, "qc_flags"]).split(";")
    assert "implausible" in str(tubes.loc[wrong, "qc_reasons"])
    assert FLAG not in str(tubes.loc[modest, "qc_flags"]).split(";")
    assert not any(FLAG in str(f) for f in tubes.drop(index=[wrong])["qc_flags"])
    stored = {r.tube.file: r for r in load_run(out).results}  # what bat report reads: flagged too
    assert any(f.code == FLAG for f in stored[wrong].flags)
    assert not any(f.code == FLAG for f in stored[modest].flags)


def test_the_workbench_warns_while_editing(corrected):
    from bat_analysis.workbench._session import ReviewSession

    out, wrong, modest = corrected
    session = ReviewSession(out)
    ids = {r.tube.file: i for i, r in enumerate(session.results)}
    flags = [f["code"] for f in session.regate(ids[modest], "basophils",
                                               {"type": "polygon", "vertices": README_POLYGON})["flags"]]
    assert FLAG in flags
    assert FLAG in [f["code"] for f in session.tube(ids[wrong])["flags"]]
    assert FLAG not in [f["code"] for f in session.tube(ids[modest])["flags"]]
