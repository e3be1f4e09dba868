"""The nGPT and DisTrO studies end to end on their CPU twins, shortened: every phase, the selections, the
measurement tables and the Pareto plot, through the real Snakemake CLI (one run of each study)."""

from __future__ import annotations

import json

import pytest

from tests.workflow_helpers import copy_workflow, custom_study, snakemake, write_config

pytestmark = pytest.mark.slow

SHORT = {"wandb": {"mode": "disabled"},
         "training_defaults": {"eval_every": 10, "eval_at_steps": [10, 20], "checkpoint_every": 10,
                               "warmup_steps": 2}}


def run_all(tmp_path_factory, study, overlay, mutate=None):
    wf = copy_workflow(tmp_path_factory.mktemp(study))
    write_config(wf / "short.yaml", {**SHORT, **overlay})
    chosen = custom_study(wf, study, mutate) if mutate else f"study={study}"
    args = ("all", "--config", chosen, "tiny=true", "--configfile", "short.yaml", "--cores", "2")
    result = snakemake(wf, *args, timeout=1500)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    again = snakemake(wf, *args, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr, again.stdout[-3000:]
    return wf, wf / "results" / f"{study}-tiny"


def test_ngpt_twin_runs_its_five_campaigns(tmp_path_factory):
    overlay = {"models": {"ngpt-tiny": {"steps": 20}}}

    def shrink(study):  # one seed a phase (each selection's gate is no_crashes; no assertion needs a second)
        p, t = study["phases"], study["tiny"]["phases"]
        for phase, seeds in (("infra", [42]), ("lr_sweep", [42]), ("geodesic", [1]), ("advanced", [1]),
                             ("projection", [1])):
            t.setdefault(phase, {})["seeds"] = seeds
        t["lr_sweep"]["runs"] = [{"arm": "muon", "sweep": {"param": "muon.lr", "values": [0.01, 0.03]}}]
        p["advanced"]["runs"] = [{"arm": a, "value": "selected"} for a in ("normuon", "muon-wd", "muon-cautious")]
        p["advanced"]["gates"] = {"no_crashes": {"kind": "no_crashes"},
                                  "cautious_beats_plain_decay": {"kind": "arm_better_than_arm",
                                                                 "better": "muon-cautious", "worse": "muon-wd"}}
        t["projection"]["runs"] = [
            {"arm": "muon", "value": "selected", "sweep": {"param": "training.projection_every", "values": [3]}},
            {"arm": "adamw", "sweep": {"param": "training.projection_every", "values": [1, 3]}}]

    wf, res = run_all(tmp_path_factory, "ngpt", overlay, shrink)
    report = (res / "ABLATION_RESULTS.md").read_text()
    for phase in ("infra", "lr_sweep", "geodesic", "advanced", "projection"):
        assert f"## {phase.replace('_', chr(92) + '_')}" in report or f"## {phase}" in report, phase
    selection = json.loads((res / "geodesic" / "selection.json").read_text())
    assert selection["arm"] == "muon" and selection["param"] == "muon.lr" and selection["value"] in (0.01, 0.03)
    lazy = res / "runs" / "ngpt-tiny" / "muon" / f"{selection['variant']}+projection_every3"
    spec = json.loads((lazy / "seed1" / "spec.json").read_text())
    assert spec["training"]["projection_every"] == 3 and spec["optimizer"]["muon"]["lr"] == selection["value"]
    metrics = json.loads((lazy / "seed1" / "metrics.json").read_text())
    assert metrics["diagnostics"]["weight_norm_dev_mean"] > 0  # lazy projection lets the norms drift
    gates = json.loads((res / "projection" / "gates.json").read_text())
    lazy_gate = next(g for g in gates["gates"] if g["name"] == "lazy_muon_not_worse")
    assert "nothing to judge" not in json.dumps(lazy_gate)  # the baseline's arm at k=3 is judged against k=1


def test_distro_twin_measures_compresses_and_sweeps_topk(tmp_path_factory):
    overlay = {"models": {"tiny-dp2": {"steps": 20}},
               "arms": {"muon-ddp": {"capture": {"steps": [10, 20]}}},
               "phases": {"measure": {"measure": {"max_per_file": 4, "topk": [0.05, 0.25], "cond_topk": [0.25]}}}}

    def shrink(study):  # 11 two-process runs instead of 22: one seed a phase, the top-k sweep at two values
        study["tiny"]["phases"]["measure"]["seeds"] = study["tiny"]["phases"]["compress"]["seeds"] = [42]
        study["tiny"]["phases"]["topk"].update(seeds=[1], runs=[
            {"arm": "selected", "sweep": {"param": "muon.topk", "values": [0.01, 0.25]}},
            {"arm": "demo", "sweep": {"param": "muon.topk", "values": [0.01, 0.25]}}])

    wf, res = run_all(tmp_path_factory, "distro", overlay, shrink)
    report = (res / "ABLATION_RESULTS.md").read_text()
    assert (res / "measure" / "measure.md").exists() and (res / "topk" / "plots" / "pareto.png").exists()
    assert "pareto.png" in report
    runs = (res / "topk" / "runs.csv").read_text()
    assert "topk0.01" in runs and "topk0.25" in runs and "bytes_sent_per_step" in runs.splitlines()[0]
    capture = res / "runs" / "tiny-dp2" / "muon-ddp" / "default" / "seed42" / "captures"
    assert sorted(p.name for p in capture.glob("*.pt")) == ["step10.pt", "step20.pt"]
