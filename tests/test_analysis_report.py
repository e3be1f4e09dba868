"""plots (non-empty PNGs in awkward cases), section and report, and the Snakemake entry scripts end to end."""
import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.aggregate import aggregate
from analysis.gates import evaluate_gates
from analysis.io import write_csv
from analysis.plots import make_plots
from analysis.report import parse_summary, section_markdown, write_report
from analysis.stats import significance_table
from analysis.synth import write_run

ROOT = Path(__file__).resolve().parents[1]
GATES1 = {"baseline_sane": {"kind": "baseline_sane"}, "no_crashes": {"kind": "no_crashes"},
          "loss_within_baseline": {"kind": "within_baseline", "margin": 0.05},
          "effective_rank_logged": {"kind": "metric_logged"},
          "beats_baseline": {"kind": "beats_baseline", "min_improvement": 0.01}}
PLOTS = ("val_loss", "early", "forest", "eff_rank")
PNG = b"\x89PNG\r\n\x1a\n"
ARMS = {"muon": {"class": "Muon", "muon": {"lr": 0.02}},
        "orthonoise": {"class": "MuonOrthoNoise", "muon": {"lr": 0.02, "alpha": 0.001}},
        "isotropic": {"class": "MuonIsotropic", "muon": {"lr": 0.02, "alpha": 0.001}}}


def study(tmp_path, seeds=(1, 2), diverge=True, alphas=(1e-3,)):
    recs = []
    for s in seeds:
        recs.append(write_run(tmp_path, model="tiny", arm="muon", alpha=0.0, seed=s, final_loss=3.0 + 0.01 * s,
                              role="baseline"))
        for a in alphas:
            recs.append(write_run(tmp_path, model="tiny", arm="orthonoise", alpha=a, seed=s,
                                  final_loss=2.95 + 0.01 * s + 0.004 * (s % 2), eff_rank=25.0))
            div = diverge and s == seeds[-1]
            recs.append(write_run(tmp_path, model="tiny", arm="isotropic", alpha=a, seed=s, final_loss=3.1,
                                  status="diverged" if div else "ok", diverged_step=150 if div else None))
    keys = ("phase", "role", "model", "arm", "variant", "param", "value", "alpha", "seed", "run_dir")
    meta = [{k: r[k] for k in keys} for r in recs]
    return recs, meta


def chain(tmp_path, seeds=(1, 2), diverge=True, alphas=(1e-3,)):
    recs, meta = study(tmp_path / "runs_root", seeds, diverge, alphas)
    runs, curves = aggregate([r["metrics"] for r in recs], [r["history"] for r in recs], meta, "phase1")
    sig = significance_table(runs, "muon")
    gates = evaluate_gates(runs, sig, curves, GATES1, "muon", "phase1")
    res = tmp_path / "results"
    plots = {k: str(res / "phase1" / "plots" / f"{k}.png") for k in PLOTS}
    make_plots(runs, curves, plots, "muon", 100, phase="phase1")
    return runs, curves, sig, gates, plots, res


@pytest.mark.parametrize("seeds,diverge,alphas", [((1, 2), True, (1e-3,)), ((1,), False, (1e-3,)),
                                                  ((1,), True, (1e-3, 1e-2)), ((1, 2, 3), False, (1e-4, 1e-3, 5e-2))])
def test_plots_nonempty(tmp_path, seeds, diverge, alphas):
    *_, plots, _ = chain(tmp_path, seeds, diverge, alphas)
    for p in plots.values():
        data = Path(p).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, p


def test_plots_deterministic_and_empty_inputs(tmp_path):
    runs, curves, *_ = chain(tmp_path)
    out1 = {k: str(tmp_path / "a" / f"{k}.png") for k in PLOTS}
    out2 = {k: str(tmp_path / "b" / f"{k}.png") for k in PLOTS}
    make_plots(runs, curves, out1, "muon", 100)
    make_plots(runs, curves, out2, "muon", 100)
    for k in out1:
        assert Path(out1[k]).read_bytes() == Path(out2[k]).read_bytes()
    out3 = {k: str(tmp_path / "c" / f"{k}.png") for k in out1}
    make_plots(runs.iloc[0:0], curves.iloc[0:0], out3, "muon", 100)
    assert all(Path(p).read_bytes().startswith(PNG) for p in out3.values())
    nan_rank = curves.assign(eff_rank_mean=np.nan)
    make_plots(runs, nan_rank, out3, "muon", 10)  # nothing to draw in eff_rank and early: still PNGs
    assert all(Path(p).stat().st_size > 1000 for p in out3.values())


def test_section_and_report(tmp_path):
    runs, curves, sig, gates, plots, res = chain(tmp_path)
    text = section_markdown(phase="phase1", question="Does OrthoNoise train?", runs=runs, significance=sig,
                            gates=gates, plots=list(plots.values()), results_root=str(res), arms=ARMS,
                            usd_per_gpu_hour=3.5, baseline="muon")
    assert "Does OrthoNoise train?" in text
    assert "| model | role | arm | variant | seed | status |" in text          # runs table
    assert "| model | configuration | test | n arm/base |" in text            # significance table
    assert "| gate | kind | verdict | claim tested | observed | detail |" in text  # gates table
    assert "**Baseline sanity (baseline_sane): PASS.**" in text
    assert text.index("Baseline sanity") < text.index("### Gates")
    assert "### Noise trigger rate per configuration" in text
    assert "![Validation loss vs step](phase1/plots/val_loss.png)" in text
    assert "diverged @ 150" in text and "\"class\": \"MuonOrthoNoise\"" in text
    assert "detects with 80% power only true differences larger than" in text
    assert "seed-to-seed noise cancel" not in text and "less sensitive" not in text
    assert "insufficient" in text  # the diverged isotropic arm has 1 usable seed
    s = parse_summary(text)
    assert s["phase"] == "phase1" and s["passed"] is False and s["n_runs"] == 6
    sec = res / "phase1" / "section.md"
    sec.write_text(text)
    latest = res / "ABLATION_RESULTS.md"
    out = res / "reports" / "phase1.md"
    write_report([str(sec)], str(out), str(latest), "OrthoNoise ablations", ["phase1", "phase2"])
    rep, lat = out.read_text(), latest.read_text()
    assert rep.startswith("# OrthoNoise ablations") and "## Summary" in rep and "**FAILED**" in rep
    assert "| phase | question | gates |" in rep and "phase2" in rep  # not run yet
    assert "](phase1/plots/val_loss.png)" in lat and "](../phase1/plots/val_loss.png)" in rep
    assert rep.replace("../phase1/", "phase1/") == lat
    for line in lat.splitlines():
        if line.startswith("!["):
            assert (res / line.split("](")[1].rstrip(")")).is_file()


class NL(list):
    """A stand-in for snakemake.io.Namedlist: a list with named attributes and keys()."""

    def __init__(self, items=(), **named):
        super().__init__(items)
        self._names = list(named)
        for k, v in named.items():
            setattr(self, k, v)

    def keys(self):
        return self._names

    def __getitem__(self, k):
        return getattr(self, k) if isinstance(k, str) else super().__getitem__(k)


def sm(input, output, params, log):
    return type("SM", (), {"input": NL(**input), "output": NL(**output), "params": NL(**params),
                           "log": NL([log]), "scriptdir": str(ROOT / "workflow" / "scripts")})()


def script(name, snakemake):
    # Snakemake puts the script's directory on sys.path (for workflow/scripts/_script.py); so does this
    scripts = str(ROOT / "workflow" / "scripts")
    if scripts not in sys.path:
        sys.path.insert(0, scripts)
    runpy.run_path(str(ROOT / "workflow" / "scripts" / f"{name}.py"), init_globals={"snakemake": snakemake})


def test_scripts_end_to_end(tmp_path):
    recs, meta = study(tmp_path / "r")
    res = tmp_path / "results"
    ph = res / "phase1"
    lg = str(tmp_path / "logs" / "x.log")
    script("aggregate", sm({"metrics": [r["metrics"] for r in recs], "histories": [r["history"] for r in recs]},
                           {"runs": str(ph / "runs.csv"), "curves": str(ph / "curves.csv")},
                           {"runs": meta, "phase": "phase1"}, lg))
    script("significance", sm({"runs": str(ph / "runs.csv")}, {"table": str(ph / "significance.csv")},
                              {"baseline": "muon", "confidence": 0.95, "alpha_level": 0.05, "power": 0.8,
                               "metric": "final_val_loss"}, lg))
    gates = dict(GATES1, early_loss_not_worse={"kind": "not_worse_than_baseline", "step": 100})
    script("gates", sm({"runs": str(ph / "runs.csv"), "significance": str(ph / "significance.csv"),
                        "curves": str(ph / "curves.csv")}, {"json": str(ph / "gates.json"), "md": str(ph / "gates.md"),
                                                     "csv": str(ph / "gates.csv")},
                       {"phase": "phase1", "gates": gates, "baseline": "muon"}, lg))
    g = json.loads((ph / "gates.json").read_text())
    assert g["passed"] is False and [x["name"] for x in g["gates"]] == list(gates)
    assert list(pd.read_csv(ph / "gates.csv")["gate"]) == list(gates)
    plots = {k: str(ph / "plots" / f"{k}.png") for k in PLOTS}
    script("plots", sm({"runs": str(ph / "runs.csv"), "curves": str(ph / "curves.csv")}, plots,
                       {"phase": "phase1", "baseline": "muon", "early_steps": 100}, lg))
    p3 = res / "phase3"
    script("select_arm", sm({"significance": str(ph / "significance.csv"), "gates": str(ph / "gates.json")},
                            {"json": str(p3 / "selection.json")}, {"force": False}, lg))
    sel = json.loads((p3 / "selection.json").read_text())
    assert set(sel) >= {"gate_passed", "forced", "arm", "variant", "param", "value", "model", "rule", "reason",
                        "candidates", "winners_curse"}
    assert sel["gate_passed"] is False and sel["arm"] == "orthonoise"
    common = {"runs": str(ph / "runs.csv"), "significance": str(ph / "significance.csv"),
              "gates": str(ph / "gates.json"), "plots": list(plots.values())}
    params = {"phase": "phase1", "question": "Q1?", "arms": ARMS, "usd_per_gpu_hour": 3.5, "baseline": "muon"}
    script("section", sm(common, {"md": str(ph / "section.md")}, params, lg))
    script("section", sm(dict(common, selection=str(p3 / "selection.json")), {"md": str(p3 / "section.md")},
                         dict(params, phase="phase3"), lg))
    assert "Arm selected from an earlier phase" in (p3 / "section.md").read_text()
    script("report", sm({"sections": [str(ph / "section.md"), str(p3 / "section.md")]},
                        {"md": str(res / "reports" / "phase3.md")},
                        {"title": "T", "phases": ["phase1", "phase3"], "latest": str(res / "ABLATION_RESULTS.md")},
                        lg))
    latest = (res / "ABLATION_RESULTS.md").read_text()
    assert latest.count("<!-- phase-summary") == 2 and "| gate | kind | verdict |" in latest
    assert Path(lg).read_text().strip()  # logging went to the log file
    # insufficient rows keep p empty in the CSV
    sig = pd.read_csv(ph / "significance.csv")
    assert sig.loc[sig["verdict"] == "insufficient", "p"].isna().all()


def test_empty_phase_chain(tmp_path):
    """A phase without runs still yields every output (verdicts INSUFFICIENT, messages in the plots)."""
    from analysis.aggregate import read_curves, read_runs
    from analysis.gates import GATES
    from analysis.stats import read_significance
    ph = tmp_path / "results" / "phase3"
    runs, curves = aggregate([], [], [], "phase3")
    write_csv(runs, ph / "runs.csv")
    write_csv(curves, ph / "curves.csv")
    runs, curves = read_runs(ph / "runs.csv"), read_curves(ph / "curves.csv")
    sig = significance_table(runs, "muon")
    write_csv(sig, ph / "significance.csv")
    sig = read_significance(ph / "significance.csv")
    gates = {g: {"kind": g, **({"arms": ["on"]} if g == "metric_higher" else {}),
                 **({"better": "a", "worse": "b"} if g == "arm_better_than_arm" else {}),
                 **({"arms": ["a"], "worse": "b"} if g == "any_better_than_arm" else {}),
                 **({"arms": ["a"]} if g == "equal_bytes" else {}),
                 **({"arm": "a", "ref": "b", "start": "x1"} if g == "interaction" else {})} for g in GATES}
    res = evaluate_gates(runs, sig, curves, gates, "muon", "phase3")
    assert res["passed"] is None and {g["verdict"] for g in res["gates"]} == {"INSUFFICIENT"}
    plots = {k: str(ph / "plots" / f"{k}.png") for k in PLOTS}
    make_plots(runs, curves, plots, "muon", 100)
    text = section_markdown(phase="phase3", question="Q", runs=runs, significance=sig, gates=res,
                            plots=list(plots.values()), results_root=str(tmp_path / "results"), arms={},
                            usd_per_gpu_hour=1.0, baseline="muon")
    assert "_No runs._" in text and "INCONCLUSIVE" in text
