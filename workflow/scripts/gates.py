"""Snakemake script: one phase's runs.csv + curves.csv -> gates.json and gates.md.

input:   runs (results/{phase}/runs.csv), curves (results/{phase}/curves.csv);
         optional significance (the table a later phase's selection reads: the gates' own 'selected' when
         no earlier selection gives it; the gates run their own one-sided tests);
         optional selection (the selection.json this phase took its arm from; the gates' 'selected');
         optional design (design.json of the design check: its noise sd for this phase drives the power check)
params:  phase (str), baseline (arm name), gates ({instance: {kind: K, ...settings}}, resolved again with
         analysis.gate_kinds.resolve), optional selection (the same dict as a param, instead of the input),
         optional power_floor (the study's default for statistical gates that set none), optional pick (the
         later phase's `select:` from this phase, {arms, rule}: 'selected' is that selection's pick)
output:  json (gates.json), md (gates.md); optional csv (gates.csv: one row per gate, for snakemake --report)
"""
import json

from _script import logged

from analysis.aggregate import read_curves, read_runs
from analysis.gates import evaluate_gates, gates_markdown, gates_table
from analysis.io import atomic_write_text, write_csv, write_json
from analysis.stats import read_significance

sm = snakemake  # noqa: F821


def _load(name):
    if name in sm.input.keys():
        with open(sm.input[name], encoding="utf-8") as fh:
            return json.load(fh)
    return None


with logged(sm, "gates") as log:
    p = sm.params
    selection = _load("selection") or getattr(p, "selection", None)
    design = _load("design") or {}
    noise = (design.get("noise") or {}).get(str(p.phase))
    sig = read_significance(sm.input.significance) if "significance" in sm.input.keys() else None
    res = evaluate_gates(read_runs(sm.input.runs), sig, read_curves(sm.input.curves), dict(p.gates or {}),
                         str(p.baseline), str(p.phase), selection=selection,
                         noise_sd=(noise or {}).get("sd"), power_floor=getattr(p, "power_floor", None),
                         pick=getattr(p, "pick", None))
    write_json(res, sm.output.json)
    atomic_write_text(sm.output.md, gates_markdown(res))
    if "csv" in sm.output.keys():
        write_csv(gates_table(res), sm.output.csv)
    log.info("phase %s gates: passed=%s", res["phase"], res["passed"])
