"""Snakemake checkpoint script: an earlier phase's significance + gates -> results/{phase}/selection.json
(always written; the Snakefile decides whether the phase may go on: gate_passed true, or forced).

input:   significance, gates, optional runs: one file each per declared selection, in the order of the
         phase's `select:` (results/{from}/significance.csv, gates.json, runs.csv: the seeds used in it)
params:  force (bool); selections (the phase's declarations: [{name, from, arms, rule, gate}], study/selections.py;
         without it one selection from candidate_arms, rule and gate, as before);
         list_form (bool: several named selections); carries_baseline (one bool per selection: the phase
         compares with the very baseline of the phase it selects from)
output:  json (selection.json: one record, gate_passed, gates_passed, gate, forced, arm, variant, param,
         value, alpha, model, rule, reason, candidates, winners_curse, baseline_flags, selection_seeds; in the
         list form {"selections": {NAME: record}, gate_passed, forced, reason})
"""
import json

from _script import logged

from analysis.aggregate import read_runs
from analysis.io import as_list, write_json
from analysis.selection import select_arm
from analysis.stats import read_significance

sm = snakemake  # noqa: F821
with logged(sm, "select_arm") as log:
    p = sm.params
    decls = list(getattr(p, "selections", None) or [])
    if not decls:  # one selection given by the single-selection params (candidate_arms, rule, gate)
        arms = getattr(p, "candidate_arms", None)
        decls = [{"name": None, "arms": list(arms) if arms else None, "rule": getattr(p, "rule", None),
                  "gate": getattr(p, "gate", None)}]
    sigs, gates_files = as_list(sm.input.significance), as_list(sm.input.gates)
    runs_files = as_list(sm.input.runs) if "runs" in sm.input.keys() else []
    carried = list(getattr(p, "carries_baseline", None) or [True] * len(decls))
    records = {}
    for i, d in enumerate(decls):
        with open(gates_files[i], encoding="utf-8") as fh:
            gates = json.load(fh)
        seeds = read_runs(runs_files[i])["seed"].tolist() if runs_files else []
        sel = select_arm(read_significance(sigs[i]), gates, bool(p.force), list(d["arms"]) if d.get("arms") else None,
                         rule=str(d.get("rule") or "significant_best"), gate=d.get("gate"), seeds_used=seeds,
                         carries_baseline=bool(carried[i]), name=d.get("name"))
        if bool(getattr(p, "list_form", False)):
            sel["from"] = d.get("from")  # the report names the phase each selection came from
        records[d.get("name")] = sel
        log.info("selection %s: arm=%s variant=%s gate_passed=%s forced=%s: %s", d.get("name") or "", sel["arm"],
                 sel["variant"], sel["gate_passed"], sel["forced"], sel["reason"])
    if bool(getattr(p, "list_form", False)):
        from analysis.selection import combined_record

        write_json(combined_record(records), sm.output.json)
    else:
        write_json(next(iter(records.values())), sm.output.json)
