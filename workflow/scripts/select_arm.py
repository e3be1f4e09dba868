"""Snakemake checkpoint script: an earlier phase's significance + gates -> results/{phase}/selection.json
(always written; the Snakefile decides whether the phase may go on: gate_passed true, or forced).

input:   significance (results/{from}/significance.csv), gates (results/{from}/gates.json);
         optional runs (results/{from}/runs.csv: the seeds used in the selection, for the report)
params:  force (bool); optional candidate_arms (list of arm names or None), rule ('significant_best' |
         'lowest_mean', default significant_best), gate (name of the from-phase gate that must PASS,
         or None: the from-phase's overall verdict)
output:  json (selection.json: gate_passed, gates_passed, gate, forced, arm, variant, param, value, alpha,
         model, rule, reason, candidates, winners_curse, selection_seeds)
"""
import json

from _script import logged

from analysis.aggregate import read_runs
from analysis.io import write_json
from analysis.selection import select_arm
from analysis.stats import read_significance

sm = snakemake  # noqa: F821
with logged(sm, "select_arm") as log:
    p = sm.params
    with open(sm.input.gates, encoding="utf-8") as fh:
        gates = json.load(fh)
    arms = getattr(p, "candidate_arms", None)
    seeds = read_runs(sm.input.runs)["seed"].tolist() if "runs" in sm.input.keys() else []
    sel = select_arm(read_significance(sm.input.significance), gates, bool(p.force),
                     list(arms) if arms else None, rule=str(getattr(p, "rule", None) or "significant_best"),
                     gate=getattr(p, "gate", None), seeds_used=seeds)
    write_json(sel, sm.output.json)
    log.info("selection: arm=%s variant=%s gate_passed=%s forced=%s: %s", sel["arm"], sel["variant"],
             sel["gate_passed"], sel["forced"], sel["reason"])
