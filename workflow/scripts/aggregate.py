"""Snakemake script: every run's metrics.json + history.csv -> results/{phase}/runs.csv and curves.csv.

input:   metrics (list), optional histories (list, same order; default: history.csv beside each metrics.json)
params:  runs (list of {phase, role, model, arm, variant, param, value, alpha, seed, run_dir}, same order),
         phase
output:  runs (runs.csv), curves (curves.csv)
"""
from pathlib import Path

from _script import logged

from analysis.aggregate import aggregate
from analysis.io import as_list, write_csv

sm = snakemake  # noqa: F821
with logged(sm, "aggregate") as log:
    metrics = as_list(sm.input.metrics)
    histories = (as_list(sm.input.histories) if "histories" in sm.input.keys()
                 else [str(Path(m).with_name("history.csv")) for m in metrics])
    runs, curves = aggregate(metrics, histories, list(sm.params.runs), str(sm.params.phase))
    write_csv(runs, sm.output.runs)
    write_csv(curves, sm.output.curves)
    log.info("wrote %s (%d rows) and %s (%d rows)", sm.output.runs, len(runs), sm.output.curves, len(curves))
