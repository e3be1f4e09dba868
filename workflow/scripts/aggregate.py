"""Snakemake script: every run's metrics.json + history.csv -> results/{phase}/runs.csv and curves.csv.

input:   metrics (list), histories (list, same order)
params:  runs (list of {phase, role, model, arm, variant, param, value, alpha, seed, run_dir}, same order),
         phase
output:  runs (runs.csv), curves (curves.csv)
"""
from _script import logged

from analysis.aggregate import aggregate
from analysis.io import as_list, write_csv

sm = snakemake  # noqa: F821
with logged(sm, "aggregate") as log:
    runs, curves = aggregate(as_list(sm.input.metrics), as_list(sm.input.histories), list(sm.params.runs),
                             str(sm.params.phase))
    write_csv(runs, sm.output.runs)
    write_csv(curves, sm.output.curves)
    log.info("wrote %s (%d rows) and %s (%d rows)", sm.output.runs, len(runs), sm.output.curves, len(curves))
