"""Several named selections per phase (issue 19: "tuned AdamW vs tuned Muon on fresh seeds"): the plan and
the real DAG run each family's own pick, each gate judges its own selection's arm, the design counts per
selection, a control is never 'selected', and every malformed reference is refused before any job.

The study is tests/data/tuned_baselines.yaml: one sweep phase (Muon and AdamW learning rates), a confirm
phase with the selections muon_lr and adamw_lr."""

from __future__ import annotations

import copy
import itertools
import json
import os
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

from analysis.gates import evaluate_gates
from analysis.selection import combined_record, select_arm
from analysis.stats import significance_table
from study import Plan, PlanError, load_study
from study.selections import carries_baseline
from tests.workflow_helpers import REPO, copy_workflow, snakemake

STUDY_FILE = REPO / "tests" / "data" / "tuned_baselines.yaml"


def study(mutate=None) -> dict:
    raw = yaml.safe_load(STUDY_FILE.read_text())
    if mutate:
        mutate(raw)
    return raw


def plan_of(raw) -> Plan:
    return Plan(copy.deepcopy(raw))  # the checks fill the schema's defaults in, in place


def _loaded(raw) -> dict:
    cfg = copy.deepcopy(raw)
    Plan(cfg)
    return cfg


# ------------------------------------------------------------------------------------ synthetic tables
def runs_table(phase, rows):
    """rows: (role, arm, variant, {seed: loss})."""
    out = []
    for role, arm, variant, losses in rows:
        for seed, loss in losses.items():
            swept = variant.startswith("lr")  # the setting the label stands for, as runs.csv has it
            out.append(dict(phase=phase, role=role, model="tiny", arm=arm, variant=variant,
                            param=f"{'adamw' if arm == 'adamw' else 'muon'}.lr" if swept else "",
                            value=float(variant[2:].split("+")[0]) if swept else np.nan,
                            alpha=0.0, seed=seed, status="ok", final_val_loss=loss, eff_rank_mean=10.0,
                            gpu_hours=0.0, wall_time_s=1.0, wandb_id="", run_dir=""))
    return pd.DataFrame(out)


def sweep_tables(adamw_default=3.10):
    """The sweep's runs: Muon best at lr0.03, AdamW best at lr0.01 (both clear of their other rate)."""
    seeds = (1, 2)
    j = {1: -0.002, 2: 0.002}
    rows = [("baseline", "adamw", "default", {s: adamw_default + j[s] for s in seeds}),
            ("arm", "muon", "lr0.01", {s: 2.95 + j[s] for s in seeds}),
            ("arm", "muon", "lr0.03", {s: 2.80 + j[s] for s in seeds}),
            ("arm", "adamw", "lr0.001", {s: 3.05 + j[s] for s in seeds}),
            ("arm", "adamw", "lr0.01", {s: 2.90 + j[s] for s in seeds})]
    runs = runs_table("sweep", rows)
    return runs, significance_table(runs, "adamw")


def sweep_selection(gates=None, carried=(False, False)):
    runs, sig = sweep_tables()
    gates = gates or {"passed": True, "gates": [{"name": "no_crashes", "kind": "no_crashes", "verdict": "PASS"}]}
    recs = {name: dict(select_arm(sig, gates, arms=[arm], rule="lowest_mean", gate="no_crashes",
                                  seeds_used=[1, 2], carries_baseline=c, name=name), **{"from": "sweep"})
            for (name, arm), c in zip((("muon_lr", "muon"), ("adamw_lr", "adamw")), carried)}
    return combined_record(recs)


# ------------------------------------------------------------------------------------------------ plan
def test_the_plan_runs_each_familys_own_pick():
    p = plan_of(study())
    sel = sweep_selection()
    assert sel["selections"]["muon_lr"]["variant"] == "lr0.03" and sel["selections"]["adamw_lr"]["variant"] == "lr0.01"
    runs = p.phase_runs("confirm", sel)
    assert {(pr.role, pr.run.arm, pr.run.variant, pr.run.seed) for pr in runs} == {
        ("baseline", "adamw", "lr0.01", 7), ("baseline", "adamw", "lr0.01", 8),
        ("arm", "muon", "lr0.03", 7), ("arm", "muon", "lr0.03", 8)}
    # the baseline trains AdamW at the rate its own sweep chose: the run's spec carries it
    base = next(pr.run for pr in runs if pr.role == "baseline")
    assert p.optimizer(base)["adamw"]["lr"] == 0.01 and runs[0].run_dir.endswith("tiny/adamw/lr0.01/seed7")
    # every combination of the two selections is a possible plan (the Snakefile's wildcards cover them all)
    assert len(p.possible_selections("confirm")) == 4
    assert {r.key for r in p.all_runs()} >= {f"tiny/{a}/{v}/seed{s}" for a, v in (("adamw", "lr0.001"),
                                              ("muon", "lr0.01")) for s in (7, 8)}
    with pytest.raises(PlanError, match=r"confirm needs the arm selected from sweep \(selected:adamw_lr\)"):
        p.phase_runs("confirm", {"selections": {"muon_lr": sel["selections"]["muon_lr"]}})


def test_the_single_mapping_form_is_unchanged():
    """The three studies plan the same runs: their fingerprints are tests/test_study_fingerprints.py's; here
    the single mapping still reads as 'selected' and its record is select_arm's dict."""
    cfg, _, _ = load_study({"study": "ngpt"}, REPO)
    p = Plan(cfg)
    sel = {"arm": "muon", "variant": "lr0.01", "param": "muon.lr"}
    assert {pr.run.variant for pr in p.phase_runs("geodesic", sel)} == {"lr0.01"}
    assert cfg["phases"]["geodesic"]["select"]["rule"] == "lowest_mean"  # defaults still filled in


# ---------------------------------------------------------------------------------------- the real DAG
_CLOCK = itertools.count(1.7e9, 10)


def _fake_upstream(wf, target_args, sel_record, gates_json):
    """Every output the dry run of the confirm target lists, made oldest first (so nothing upstream needs to
    run), with the sweep's gates.json and the confirm phase's selection.json as given: the checkpoint's
    result is then known and Snakemake plans the confirm phase's own runs."""
    out = snakemake(wf, "confirm", "-n", *target_args)
    assert out.returncode == 0, out.stderr + out.stdout
    files = sorted({f.strip() for line in (out.stdout + out.stderr).splitlines()
                    if line.strip().startswith("output:") for f in line.split(":", 1)[1].split(",")})
    order = ("/data/", "/runs/", "/design.", "/runs.csv", "/curves.csv", "/significance.csv", "/gates.",
             "/selection.json")  # each rule's outputs after its inputs'
    rank = lambda f: next(i for i, part in enumerate(order) if part in f)  # noqa: E731
    for f in sorted(files, key=rank):
        path = wf / f
        path.parent.mkdir(parents=True, exist_ok=True)
        text = (json.dumps(sel_record) if f.endswith("selection.json") else
                json.dumps(gates_json) if f.endswith("sweep/gates.json") else "{}")
        path.write_text(text)
        t = next(_CLOCK)  # later than every file made before (a second study shares the corpus)
        os.utime(path, (t, t))
    return files


@pytest.fixture(scope="module")
def wf(tmp_path_factory):
    wf = copy_workflow(tmp_path_factory.mktemp("wf_sel"))
    shutil.copy(STUDY_FILE, wf / "tuned.yaml")
    return wf


# the faked files have no Snakemake records (code, params): only their mtimes can say they are up to date
MTIME_ONLY = ("--rerun-triggers", "mtime")
PASS_GATES = {"phase": "sweep", "passed": True, "gates": [{"name": "no_crashes", "kind": "no_crashes", "verdict": "PASS"}]}


def test_a_two_selection_confirm_phase_plans_each_families_pick_in_the_dag(wf):
    args = ("--config", "study=tuned.yaml")
    _fake_upstream(wf, args, sweep_selection(), PASS_GATES)
    res = snakemake(wf, "confirm", "-n", *args, *MTIME_ONLY)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    trains = set(re.findall(r"results/tuned/runs/(\S+?)/metrics\.json", "\n".join(
        line for line in out.splitlines() if line.strip().startswith("output:"))))
    assert trains == {f"tiny/{a}/{v}/seed{s}" for a, v in (("adamw", "lr0.01"), ("muon", "lr0.03")) for s in (7, 8)}
    assert "confirm: takes sweep's selection (muon_lr: muon lr0.03, adamw_lr: adamw lr0.01); its 4 runs" in out
    assert "carries on the baseline" not in out  # the baseline is re-tuned: not the sweep's flagged default


def test_a_flagged_baseline_carried_on_is_said_before_the_phase_runs(wf, tmp_path):
    """The confirm phase keeps the sweep's untuned AdamW default as its baseline; the sweep's baseline_sane
    gate flagged it: the dry run says so before the confirm runs are submitted."""
    raw = yaml.safe_load(STUDY_FILE.read_text())
    raw["phases"]["confirm"]["baseline"] = "adamw"
    raw["phases"]["confirm"]["runs"] = [{"arm": "selected:muon_lr"}, {"arm": "selected:adamw_lr"}]
    raw["study"]["name"] = "tuned-carried"
    (wf / "carried.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    cfg = _loaded(raw)
    assert [carries_baseline(cfg, "confirm", d) for d in cfg["phases"]["confirm"]["select"]] == [True, True]
    flag = {"name": "baseline_trains", "kind": "baseline_sane", "verdict": "FAIL",
            "detail": "tiny: baseline mean 3.1000 is 10.7% above the best arm"}
    gates = {"phase": "sweep", "passed": False, "gates": PASS_GATES["gates"] + [flag]}
    sel = sweep_selection({"passed": False, "gates": PASS_GATES["gates"] + [flag]}, carried=(True, True))
    assert all("WARNING" in r["reason"] for r in sel["selections"].values())
    args = ("--config", "study=carried.yaml")
    _fake_upstream(wf, args, sel, gates)
    res = snakemake(wf, "confirm", "-n", *args, *MTIME_ONLY)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    assert "confirm: WARNING: carries on the baseline that the phase it selects from flagged (baseline_trains" in out
    assert "10.7% above the best arm" in out


# ---------------------------------------------------------------------------------------------- gates
def confirm_runs(muon=2.70, adamw=2.90, other=None):
    j, k = {7: -0.001, 8: 0.001, 9: 0.0}, {7: 0.002, 8: 0.0, 9: -0.001}  # seed noise (no zero-spread pairs)
    rows = [("baseline", "adamw", "lr0.01", {s: adamw + j[s] for s in (7, 8, 9)}),
            ("arm", "muon", "lr0.03", {s: muon + k[s] for s in (7, 8, 9)})]
    if other:
        rows += other
    return runs_table("confirm", rows)


def test_each_gate_judges_its_own_selections_pick():
    sel = sweep_selection()
    # a decoy muon configuration that is not the pick: 'selected:muon_lr' must not judge it
    runs = confirm_runs(other=[("arm", "muon", "lr0.01", {s: 3.5 for s in (7, 8, 9)}),
                               ("arm", "adamw", "lr0.001", {s: 2.0 for s in (7, 8, 9)})])
    gates = {"muon_beats": {"kind": "beats_baseline", "min_improvement": 0.0, "arms": ["selected:muon_lr"]},
             "adamw_pick_near": {"kind": "within_baseline", "margin": 0.05, "arms": ["selected:adamw_lr"]},
             "muon_vs_adamw_pick": {"kind": "arm_better_than_arm", "better": "selected:muon_lr",
                                    "worse": "selected:adamw_lr"}}
    res = evaluate_gates(runs, None, None, gates, "adamw", "confirm", selection=sel, noise_sd=0.005)
    g = {x["name"]: x for x in res["gates"]}
    labels = {n: [h["label"] for h in x["values"]["hypotheses"]] for n, x in g.items()}
    assert labels["muon_beats"] == ["tiny/muon lr0.03"], labels
    assert g["muon_beats"]["verdict"] == "PASS"
    assert "'selected:muon_lr' = muon lr0.03 (from the earlier phase's selection)" in g["muon_beats"]["detail"]
    # the AdamW pick (lr0.01) is the baseline itself here: no non-baseline configuration is judged
    assert labels["adamw_pick_near"] == [] and g["adamw_pick_near"]["verdict"] == "INSUFFICIENT"
    # with both picks as arms (the baseline another configuration), each side is its own selection's
    runs2 = runs_table("confirm", [("baseline", "adamw", "default", {s: 3.1 + 0.001 * (s % 3) for s in (7, 8, 9)}),
                                   ("arm", "muon", "lr0.03", {s: 2.7 + 0.001 * (s % 2) for s in (7, 8, 9)}),
                                   ("arm", "adamw", "lr0.01", {s: 2.9 - 0.002 * (s % 2) for s in (7, 8, 9)}),
                                   ("arm", "adamw", "lr0.001", {s: 2.0 for s in (7, 8, 9)})])
    res2 = evaluate_gates(runs2, None, None, gates, "adamw", "confirm", selection=sel, noise_sd=0.005)
    g2 = {x["name"]: x for x in res2["gates"]}
    assert [h["label"] for h in g2["muon_vs_adamw_pick"]["values"]["hypotheses"]] == [
        "tiny/muon lr0.03 vs tiny/adamw lr0.01"]
    assert g2["muon_vs_adamw_pick"]["verdict"] == "PASS"
    assert [h["label"] for h in g2["adamw_pick_near"]["values"]["hypotheses"]] == ["tiny/adamw lr0.01"]
    # a reference the phase does not have judges nothing and says so
    bad = evaluate_gates(runs2, None, None, {"x": {"kind": "beats_baseline", "arms": ["selected:nope"]}},
                         "adamw", "confirm", selection=sel, noise_sd=0.005)["gates"][0]
    assert bad["verdict"] == "INSUFFICIENT" and "no such selection" in bad["detail"]


def test_the_design_counts_every_variant_each_selection_stands_for():
    from analysis.design import _count
    from analysis.gate_kinds import resolve
    ph = {"baseline": "adamw", "configs": [dict(model="m", arm="adamw", variant="lr0.01", role="baseline")]
          + [dict(model="m", arm="muon", variant=f"lr0.03+projection_every{k}", role="arm") for k in (1, 3, 5)]
          + [dict(model="m", arm="normuon", variant="lr0.01", role="arm")],
          "selected_arms": {"selected:muon_lr": ["muon"], "selected:nor": ["normuon"]}}
    cnt = lambda s: _count(resolve("g", s)[0], ph)  # noqa: E731
    assert cnt({"kind": "beats_baseline", "arms": ["selected:muon_lr"]}) == 3
    assert cnt({"kind": "beats_baseline", "arms": ["selected:nor"]}) == 1
    assert cnt({"kind": "beats_baseline", "arms": ["selected:muon_lr", "selected:nor"]}) == 4
    assert cnt({"kind": "arm_better_than_arm", "better": "selected:muon_lr", "worse": "selected:nor"}) == 3


# ------------------------------------------------------------------------------------- never a control
def test_selected_is_never_a_control():
    """A phase's own 'selected' (no earlier selection, no later one: what a direct call can still ask)
    leaves out the arms its gates compare against, even when the control is truly best."""
    j = {1: -0.001, 2: 0.001, 3: 0.0}
    runs = runs_table("p", [("baseline", "muon", "default", {s: 3.0 + j[s] for s in j}),
                            ("arm", "on", "alpha0.01", {s: 2.97 + j[s] for s in j}),
                            ("arm", "iso", "alpha0.01", {s: 2.80 - 2 * j[s] + 0.001 * (s == 3) for s in j})])
    gates = {"iso": {"kind": "arm_better_than_arm", "better": "selected", "worse": "iso"},
             "rank": {"kind": "metric_higher", "arms": ["selected"]}}
    res = evaluate_gates(runs, None, None, gates, "muon", "p", noise_sd=0.005)
    for g in res["gates"]:
        labels = [h["label"] for h in g["values"]["hypotheses"]]
        assert labels and all(x.startswith("tiny/on alpha0.01") for x in labels), (g["name"], labels)
        assert "every arm but the baseline and the controls (iso)" in g["detail"]
    assert res["gates"][0]["verdict"] == "FAIL"  # the control is better: the data exclude the claim


def test_selected_in_a_phase_nothing_selects_from_is_refused():
    def mutate(raw):
        raw["phases"]["sweep"]["gates"]["best_beats"] = {"kind": "beats_baseline", "arms": ["selected"]}
        del raw["phases"]["confirm"]
    with pytest.raises(PlanError, match=r"phases\.sweep\.gates\.best_beats\.arms: 'selected' means the pick of a "
                                        r"later phase's select: from this phase, and no phase selects from it"):
        plan_of(study(mutate))
    # with the confirm phase, the sweep's own gates may name its later selections' picks
    def later(raw):
        raw["phases"]["sweep"]["gates"]["best_muon"] = {"kind": "beats_baseline", "arms": ["selected:muon_lr"]}
    plan_of(study(later))


# ---------------------------------------------------------------------------------------- bad configs
@pytest.mark.parametrize("mutate, message", [
    (lambda c: c["phases"]["confirm"]["runs"].__setitem__(0, {"arm": "selected:muon"}),
     r"phases\.confirm\.runs\[0\]\.arm: 'selected:muon' names no selection of this phase \(.*allowed: "
     r"selected:adamw_lr, selected:muon_lr\)"),
    (lambda c: c["phases"]["confirm"].__setitem__("baseline", {"arm": "adamw", "value": "selected"}),
     r"phases\.confirm\.baseline\.value: 'selected' is ambiguous: this phase declares 2 selections; name one "
     r"\(.*allowed: selected:adamw_lr, selected:muon_lr\)"),
    (lambda c: c["phases"]["confirm"]["gates"].__setitem__("g", {"kind": "beats_baseline", "arms": ["selected:x"]}),
     r"phases\.confirm\.gates\.g\.arms: 'selected:x' names no selection of this phase \(allowed: "
     r"selected:adamw_lr, selected:muon_lr\)"),
    (lambda c: c["phases"]["confirm"]["gates"].__setitem__("g", {"kind": "beats_baseline", "arms": ["selected"]}),
     r"phases\.confirm\.gates\.g\.arms: 'selected' is ambiguous: this phase declares 2 selections"),
    (lambda c: c["phases"]["confirm"]["select"][1].__setitem__("name", "muon_lr"),
     r"phases\.confirm\.select\[1\]\.name: 'muon_lr' is declared twice in phases\.confirm\.select"),
    (lambda c: c["phases"]["confirm"]["select"][1].__setitem__("from", "confirm"),
     r"phases\.confirm\.select\[1\]\.from: 'confirm' is not a phase before confirm \(earlier phases: sweep\)"),
    (lambda c: c["phases"]["confirm"]["select"][0].__setitem__("arms", ["sgd"]),
     r"phases\.confirm\.select\[0\]\.arms: 'sgd' is not an arm of sweep"),
    (lambda c: c["phases"]["confirm"]["runs"].__setitem__(0, {"arm": "selected:muon_lr", "value": "selected:adamw_lr"}),
     r"phases\.confirm\.runs\[0\]\.value: 'selected:adamw_lr' beside arm 'selected:muon_lr'"),
    (lambda c: c["phases"]["sweep"]["runs"].append({"arm": "muon", "value": "selected:muon_lr"}),
     r"phases\.sweep\.runs\[2\]\.value: 'selected:muon_lr' needs phases\.sweep\.select"),
    (lambda c: c["phases"]["confirm"].__setitem__("scratch", {"model": "tiny2", "seeds": [3, 4]}),
     r"phases\.confirm\.scratch\.selection: None is missing: the phase declares several selections; name the one "
     r"whose arm the scratch pair trains \(allowed: muon_lr, adamw_lr\)"),
    (lambda c: c["phases"]["confirm"]["select"][0].pop("name"),
     r"phases\.confirm\.select\[0\]: 'name' is a required property"),  # the schema: a list entry needs its name
    (lambda c: c["phases"]["confirm"]["runs"].__setitem__(0, {"arm": "muon", "value": "selected:Bad name"}),
     r"phases\.confirm\.runs\[0\]\.value: 'selected:Bad name' is not allowed \('selected', or 'selected:NAME'"),
])
def test_bad_selection_references_are_refused_before_any_job(mutate, message):
    def full(c):
        c["models"]["tiny2"] = dict(c["models"]["tiny"])
        mutate(c)
    with pytest.raises(PlanError, match=message):
        plan_of(study(full))


def test_an_adamw_arm_taking_muons_selected_value_is_refused():
    """muon_lr sets muon.lr: an AdamW arm cannot take it (the key, the value and what is allowed)."""
    def mutate(c):
        c["phases"]["confirm"]["baseline"] = {"arm": "adamw", "value": "selected:muon_lr"}
    with pytest.raises(PlanError, match=r"phases\.confirm\.baseline\.value: the value selected from sweep "
                                        r"\(selected:muon_lr\) sets muon\.lr, which is not a setting of arm adamw"):
        plan_of(study(mutate))


# -------------------------------------------------------------------------------------------- report
def test_the_report_has_one_selection_section_each():
    from analysis.report import section_markdown
    sel = sweep_selection()
    runs = confirm_runs()
    sig = significance_table(runs, "adamw")
    gates = evaluate_gates(runs, sig, None, {"no_crashes": {"kind": "no_crashes"}}, "adamw", "confirm",
                           selection=sel)
    md = section_markdown(phase="confirm", question="Q?", runs=runs, significance=sig, gates=gates, plots=[],
                          results_root="/tmp", arms={}, usd_per_gpu_hour=1.0, baseline="adamw", selection=sel)
    assert "### Selection muon_lr (from sweep)" in md and "### Selection adamw_lr (from sweep)" in md
    assert md.index("### Selection muon_lr") < md.index("### Selection adamw_lr")
    muon_part = md[md.index("### Selection muon_lr"):md.index("### Selection adamw_lr")]
    assert "selected: **muon** lr0.03" in muon_part and "a re-run on new seeds would pick muon lr0.03 again" in muon_part
    assert "Selection muon_lr: Winner's curse" in md and "Selection adamw_lr: Winner's curse" in md


def test_the_landing_page_and_status_name_each_selection(tmp_path):
    from analysis.html import landing_html
    from cli.commands import _selection_summary
    sel = sweep_selection()
    runs_csv = tmp_path / "runs.csv"
    confirm_runs().to_csv(runs_csv, index=False)
    html = landing_html("T", "S", [{"phase": "confirm", "question": "Q?", "runs_csv": str(runs_csv),
                                    "gates": {"passed": None, "gates": []}, "selection": sel}])
    assert "Selection muon_lr: <strong>muon</strong> (lr0.03)" in html
    assert "Selection adamw_lr: <strong>adamw</strong> (lr0.01)" in html
    summary = _selection_summary(sel)
    assert summary["selections"] == {"muon_lr": {"arm": "muon", "variant": "lr0.03", "gate_passed": True},
                                     "adamw_lr": {"arm": "adamw", "variant": "lr0.01", "gate_passed": True}}
