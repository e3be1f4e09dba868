"""Snakemake script: runs.csv -> significance.csv (each arm vs the baseline of the same model/family).

input:   runs (results/{phase}/runs.csv); optional design (design.json: its noise sd for the phase sets the MDE)
params:  phase (optional, for the design lookup), baseline, confidence, alpha_level, power, metric
output:  table (significance.csv)
"""
import json

from _script import logged

from analysis.aggregate import read_runs
from analysis.io import write_csv
from analysis.stats import significance_table

sm = snakemake  # noqa: F821
with logged(sm, "significance") as log:
    p = sm.params
    noise = None
    if "design" in sm.input.keys():
        with open(sm.input.design, encoding="utf-8") as fh:
            noise = ((json.load(fh).get("noise") or {}).get(str(getattr(p, "phase", ""))) or {}).get("sd")
    table = significance_table(read_runs(sm.input.runs), str(p.baseline), confidence=float(p.confidence),
                               alpha_level=float(p.alpha_level), power=float(p.power), metric=str(p.metric),
                               noise_sd=noise)
    write_csv(table, sm.output.table)
    log.info("wrote %s (%d comparisons)", sm.output.table, len(table))
