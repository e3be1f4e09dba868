"""Phase 3's checkpoint: the arm comes from phase 2's results; a failed phase-2 gate stops phase 3
unless the config forces it. Real runs of a shrunken CPU twin."""

from __future__ import annotations

import json

import pytest

from tests.workflow_helpers import TWIN, copy_workflow, custom_study, snakemake, write_config

pytestmark = pytest.mark.slow

SMALL = {
    "wandb": {"mode": "disabled"},
    "training_defaults": {"eval_every": 20, "eval_at_steps": [20, 40], "checkpoint_every": 20,
                          "warmup_steps": 5},
    "models": {"tiny": {"steps": 40}, "tiny-large": {"steps": 40}, "tiny-scratch": {"steps": 40}},
}
ALPHA = {"param": "muon.alpha", "values": [1.0e-2]}
STUDY = "study=custom-orthonoise.yaml"


def shrink(study):
    """Phases of one arm each; phase 2's gate asks for an improvement no 40-step run can show."""
    p = study["phases"]
    p["phase1"].update(runs=[{"arm": "orthonoise", "sweep": ALPHA}], gates={"no_crashes": {"kind": "no_crashes"}})
    p["phase2"].update(runs=[{"arm": "orthonoise", "sweep": ALPHA}],
                       gates={"beats_baseline": {"kind": "beats_baseline", "min_improvement": 0.5}})
    p["phase3"].update(runs=[{"arm": "selected"}], seeds=[7, 8],
                       select={"from": "phase2", "gate": "beats_baseline", "rule": "significant_best"},
                       gates={"no_crashes": {"kind": "no_crashes"},
                              "scratch_faster": {"kind": "reaches_target_sooner"}})


@pytest.fixture(scope="module")
def wf(tmp_path_factory):
    wf = copy_workflow(tmp_path_factory.mktemp("wf3"))
    write_config(wf / "small.yaml", SMALL)
    assert custom_study(wf, "orthonoise", shrink) == STUDY
    return wf


def test_failed_phase2_gate_stops_phase3(wf):
    result = snakemake(wf, "phase3", "--config", "tiny=true", STUDY, "--configfile", "small.yaml", "--cores", "2",
                       timeout=900)
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "phase3 stops here: the phase2 gate did not pass" in out, out[-3000:]
    assert "phases.phase3.force: true" in out
    selection = json.loads((wf / TWIN / "phase3" / "selection.json").read_text())
    assert selection["gate_passed"] is not True and selection["forced"] is False
    assert not (wf / TWIN / "runs" / "tiny-large").exists()  # no phase-3 run was started


def test_forced_phase3_runs_the_selected_arm(wf):
    write_config(wf / "force.yaml", {"phases": {"phase3": {"force": True}}})
    result = snakemake(wf, "phase3", "--config", "tiny=true", STUDY, "--configfile", "small.yaml", "force.yaml",
                       "--cores", "2", timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    selection = json.loads((wf / TWIN / "phase3" / "selection.json").read_text())
    assert selection["forced"] is True and selection["arm"] == "orthonoise"
    # Snakemake's step total grows when the selection adds phase 3's runs: the workflow says why
    assert f"phase3: takes phase2's selection ({selection['arm']} {selection['variant']}); its " in result.stderr
    arm_dir = wf / TWIN / "runs" / "tiny-large" / selection["arm"] / selection["variant"]
    assert len(list(arm_dir.rglob("metrics.json"))) == 2
    assert len(list((wf / TWIN / "runs" / "tiny-scratch").rglob("metrics.json"))) == 4  # pair x 2 seeds
    report = (wf / TWIN / "ABLATION_RESULTS.md").read_text()
    assert "phase1" in report and "phase2" in report and "phase3" in report
