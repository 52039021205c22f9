"""Do other readers see the same gates? FlowKit on `bat export-gates` output against the tool's own counts.

For a finished run, the gates are exported both ways (`bat export-gates --format flowjo` and `--format gatingml`)
and analysed by FlowKit on the same FCS files: the FlowJo workspace with ``flowkit.Workspace`` (files found from
each sample's ``DataSet uri``) and each tube's Gating-ML document with ``flowkit.parse_gating_xml`` and
``GatingStrategy.gate_sample``. Every gate the tool recorded with a count is compared with FlowKit's count for the
gate of that name; a gate the export left out (a gate that was not set) is listed apart, not compared.

    PYTHONPATH=. python benchmarks/flowkit_agreement.py                 # a simulated plate and the demo data
    PYTHONPATH=. python benchmarks/flowkit_agreement.py --plate-only --patients 2
    PYTHONPATH=. python benchmarks/flowkit_agreement.py --run OUT        # an existing 'bat run' output folder

Prints, per source and format, "N of M gates equal" and the first differences.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Agreement:
    """Gates compared (tube, gate, tool's count, FlowKit's count) for one export format."""

    fmt: str
    equal: int = 0
    differ: list[tuple[str, str, int, int | None]] = field(default_factory=list)
    not_exported: int = 0

    @property
    def total(self) -> int:
        return self.equal + len(self.differ)

    def line(self) -> str:
        text = f"{self.fmt}: {self.equal} of {self.total} gates equal"
        if self.not_exported:
            text += f" ({self.not_exported} gates not set, not exported)"
        return text


def _data_dir(out: Path) -> Path:
    import json

    from bat_analysis.pipeline import load_run
    from bat_analysis.store import ResultStore

    stored = load_run(out, score=False)
    with ResultStore.in_folder(out, create=False) as store:
        run = next(r for r in store.runs() if r["id"] == stored.run_id)
    return Path(json.loads(run["info_json"] or "{}").get("data_dir") or ".")


def compare_with_flowkit(out: Path, dest: Path) -> list[Agreement]:
    """Export the gates of the run in ``out`` under ``dest`` and compare FlowKit's counts with the tool's."""
    import flowkit as fk

    from bat_analysis.pipeline import export_gates, load_run

    stored = load_run(out, score=False)
    data_dir = _data_dir(out)
    results = [r for r in stored.results if r.ok and r.gates]
    agreements = []

    wsp_paths = export_gates(out, "flowjo", dest / "flowjo")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ws = fk.Workspace(str(wsp_paths[0]), find_fcs_files_from_wsp=True)
        ws.analyze_samples(use_mp=False)
        report = ws.get_analysis_report()
    fk_counts = {(str(row.sample_id), str(row.gate_name)): int(row["count"]) for _, row in report.iterrows()}
    agreements.append(_compare("flowjo workspace", results, lambda tube, gate: fk_counts.get((tube, gate))))

    gml_paths = export_gates(out, "gatingml", dest / "gatingml")
    gml_counts: dict[tuple[str, str], int] = {}
    by_tube = _gatingml_by_tube(gml_paths, dest / "gatingml", results)
    for res in results:
        xml = by_tube.get(res.tube.file)
        if xml is None:
            continue
        fcs = Path(res.tube.file) if Path(res.tube.file).is_absolute() else data_dir / res.tube.file
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            strategy = fk.parse_gating_xml(str(xml))
            gated = strategy.gate_sample(fk.Sample(str(fcs)))
        for _, row in gated.report.iterrows():
            gml_counts[(res.tube.file, str(row.gate_name))] = int(row["count"])
    agreements.append(_compare("gating-ml", results, lambda tube, gate: gml_counts.get((tube, gate))))
    return agreements


def _gatingml_by_tube(paths: list[Path], root: Path, results: list) -> dict[str, Path]:
    """Which exported Gating-ML file holds which tube's gates (the export mirrors the tube's relative path)."""
    by_rel = {p.relative_to(root).with_suffix("").as_posix(): p for p in paths}
    out = {}
    for res in results:
        key = Path(res.tube.file).with_suffix("").as_posix()
        if key in by_rel:
            out[res.tube.file] = by_rel[key]
    return out


def _compare(fmt: str, results: list, flowkit_count) -> Agreement:
    agreement = Agreement(fmt)
    for res in results:
        for rec in res.gates:
            if not rec.geometry:
                agreement.not_exported += 1
                continue
            theirs = flowkit_count(res.tube.file, rec.name)
            if theirs is not None and theirs == int(rec.count):
                agreement.equal += 1
            else:
                agreement.differ.append((res.tube.file, rec.name, int(rec.count), theirs))
    return agreement


def _run(data_dir: Path, layout: Path, out: Path, workers: int) -> None:
    from bat_analysis.pipeline import RunOptions, run

    run(RunOptions(data_dir=data_dir, layout=layout, out=out, workers=workers, quiet=True, reports=False))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="an existing 'bat run' output folder (nothing simulated)")
    ap.add_argument("--plate-only", action="store_true", help="the simulated plate only, not the demo data")
    ap.add_argument("--patients", type=int, default=8, help="patients of the simulated plate (12 tubes each)")
    ap.add_argument("--events", type=int, default=30_000, help="events per simulated tube")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--show", type=int, default=10, help="differences printed per format")
    args = ap.parse_args(argv)

    sources: list[tuple[str, Path]] = []
    with tempfile.TemporaryDirectory(prefix="flowkit_agreement_") as tmp:
        tmp_path = Path(tmp)
        if args.run:
            sources.append((str(args.run), args.run))
        else:
            from bat_analysis.simulate import simulate_experiment

            exp = simulate_experiment(tmp_path / "plate", n_patients=args.patients, n_events=args.events, seed=11,
                                      scenario="mixed", n_concentrations=3)
            _run(exp.out_dir, exp.layout_path, tmp_path / "plate_out", args.workers)
            sources.append((f"simulated plate ({len(exp.tubes)} tubes, scenario mixed)", tmp_path / "plate_out"))
            if not args.plate_only:
                demo = Path(__file__).resolve().parent.parent / "sample_fcs"
                _run(demo, demo / "layout.csv", tmp_path / "demo_out", args.workers)
                sources.append(("demo sample_fcs", tmp_path / "demo_out"))
        all_equal = True
        for label, out in sources:
            print(label)
            for agreement in compare_with_flowkit(out, tmp_path / "export" / Path(out).name):
                print("  " + agreement.line())
                for tube, gate, ours, theirs in agreement.differ[:args.show]:
                    print(f"    {tube}: {gate}: tool {ours}, FlowKit {theirs}")
                all_equal &= not agreement.differ
    return 0 if all_equal else 1


if __name__ == "__main__":
    sys.exit(main())
