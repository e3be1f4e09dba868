"""Scale benchmark of the analysis chain: aggregate -> significance -> gates -> plots -> section -> report.

Synthesizes a phase-2-like study of N runs (realistic metrics.json + history.csv files, ~20 history rows
each, 2 seeds per arm, about 1% diverged) in a temporary directory, then times each stage calling the same
analysis functions the workflow scripts call, file reading and writing included. Process start-up and
imports (paid once per Snakemake job) are measured separately.

    .venv/bin/python benchmarks/analysis_scale.py                      # N = 100 and 1000
    .venv/bin/python benchmarks/analysis_scale.py --sizes 100 1000 5000 --out results/benchmarks/a.json

Target: the chain at 1000 runs in <= 10 s on a 2-core machine, growth from 100 to 1000 about linear.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analysis.aggregate import aggregate, read_curves, read_runs  # noqa: E402
from analysis.gates import evaluate_gates, gates_markdown  # noqa: E402
from analysis.io import atomic_write_text, write_csv, write_json  # noqa: E402
from analysis.plots import make_plots  # noqa: E402
from analysis.report import section_markdown, write_report  # noqa: E402
from analysis.stats import read_significance, significance_table  # noqa: E402
from analysis.synth import synth_study  # noqa: E402

GATES = {"baseline_sane": {"kind": "baseline_sane"}, "no_crashes": {"kind": "no_crashes"},
         "loss_within_baseline": {"kind": "within_baseline", "margin": 0.05},
         "effective_rank_logged": {"kind": "metric_logged"},
         "beats_baseline": {"kind": "beats_baseline", "min_improvement": 0.01,
                            "arms": ["orthonoise", "orthonoise-anneal"]},
         "effective_rank_higher": {"kind": "metric_higher", "arms": ["selected"]},
         "isotropic_worse": {"kind": "arm_better_than_arm", "better": "selected", "worse": "isotropic"},
         "early_loss_not_worse": {"kind": "not_worse_than_baseline", "step": 100, "arms": ["selected"]}}


def chain(recs: list[dict], res: Path, phase: str = "phase2") -> dict:
    t: dict[str, float] = {}
    ph = res / phase
    keys = ("phase", "role", "model", "arm", "variant", "param", "value", "alpha", "seed", "run_dir")
    meta = [{k: r[k] for k in keys} for r in recs]

    t0 = time.perf_counter()
    runs, curves = aggregate([r["metrics"] for r in recs], [r["history"] for r in recs], meta, phase)
    write_csv(runs, ph / "runs.csv")
    write_csv(curves, ph / "curves.csv")
    t["aggregate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    sig = significance_table(read_runs(ph / "runs.csv"), "muon", confidence=0.95, alpha_level=0.05, power=0.8)
    write_csv(sig, ph / "significance.csv")
    t["significance"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    g = evaluate_gates(read_runs(ph / "runs.csv"), read_significance(ph / "significance.csv"),
                       read_curves(ph / "curves.csv"), GATES, "muon", phase)
    write_json(g, ph / "gates.json")
    atomic_write_text(ph / "gates.md", gates_markdown(g))
    t["gates"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    plots = {k: str(ph / "plots" / f"{k}.png") for k in ("val_loss", "early", "forest", "eff_rank")}
    make_plots(read_runs(ph / "runs.csv"), read_curves(ph / "curves.csv"), plots, "muon", 100, phase=phase)
    t["plots"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    text = section_markdown(phase=phase, question="Which alpha helps?", runs=read_runs(ph / "runs.csv"),
                            significance=read_significance(ph / "significance.csv"),
                            gates=json.loads((ph / "gates.json").read_text()), plots=list(plots.values()),
                            results_root=str(res), arms={"muon": {"class": "Muon"}}, usd_per_gpu_hour=3.5,
                            baseline="muon")
    atomic_write_text(ph / "section.md", text)
    t["section"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    write_report([str(ph / "section.md")], str(res / "reports" / f"{phase}.md"), str(res / "ABLATION_RESULTS.md"),
                 "benchmark", [phase])
    t["report"] = time.perf_counter() - t0
    t["chain_total"] = sum(t.values())
    t["_n_runs"] = len(runs)
    t["_n_curve_rows"] = len(curves)
    t["_n_comparisons"] = len(sig)
    t["_n_diverged"] = int((runs["status"] == "diverged").sum())
    return t


def import_time() -> float:
    """Start-up + imports of one Snakemake analysis job (a fresh interpreter), median of 3."""
    code = ("import time; t=time.perf_counter(); import analysis.aggregate, analysis.stats, analysis.gates, "
            "analysis.plots, analysis.report; print(time.perf_counter()-t)")
    ts = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, cwd=ROOT)
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--rows", type=int, default=20, help="history rows per run")
    ap.add_argument("--repeat", type=int, default=1, help="repeat the chain, keep the fastest")
    ap.add_argument("--target-s", type=float, default=10.0)
    ap.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "analysis_scale.json"))
    args = ap.parse_args(argv)
    out = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
           "rows_per_history": args.rows, "target_s": args.target_s, "sizes": {}}
    for n in args.sizes:
        with tempfile.TemporaryDirectory(prefix=f"analysis_scale_{n}_") as d:
            t0 = time.perf_counter()
            recs = synth_study(Path(d) / "src", n, n_rows=args.rows)
            synth_s = time.perf_counter() - t0
            best = None
            for i in range(args.repeat):
                t = chain(recs, Path(d) / f"results{i}")
                if best is None or t["chain_total"] < best["chain_total"]:
                    best = t
            best["_synthesize_s"] = synth_s
            out["sizes"][str(n)] = best
            print(f"N={n}: " + ", ".join(f"{k}={v:.3f}s" for k, v in best.items() if not k.startswith("_"))
                  + f" ({best['_n_runs']} runs, {best['_n_comparisons']} comparisons)", flush=True)
    out["import_s_per_job"] = import_time()
    sz = sorted(out["sizes"], key=int)
    if len(sz) >= 2:
        lo, hi = out["sizes"][sz[0]], out["sizes"][sz[-1]]
        out["growth"] = {"runs_ratio": hi["_n_runs"] / lo["_n_runs"],
                         **{k: hi[k] / lo[k] for k in hi if not k.startswith("_") and lo[k] > 0}}
    big = out["sizes"].get("1000")
    out["target_met"] = bool(big and big["chain_total"] <= args.target_s)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out[k] for k in ("growth", "import_s_per_job", "target_met") if k in out}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
