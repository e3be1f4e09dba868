"""Snakemake script: runs.csv -> significance.csv (each arm vs the baseline of the same model/family)."""
from _script import logged

from analysis.aggregate import read_runs
from analysis.io import write_csv
from analysis.stats import significance_table

sm = snakemake  # noqa: F821
with logged(sm, "significance") as log:
    p = sm.params
    table = significance_table(read_runs(sm.input.runs), str(p.baseline), confidence=float(p.confidence),
                               alpha_level=float(p.alpha_level), power=float(p.power), metric=str(p.metric))
    write_csv(table, sm.output.table)
    log.info("wrote %s (%d comparisons)", sm.output.table, len(table))
