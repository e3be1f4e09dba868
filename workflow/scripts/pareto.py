"""Snakemake script: the DisTrO top-k phase's runs.csv -> a Pareto plot of final validation loss against
bytes sent per step per rank, and its Markdown table (analysis/pareto.py).

input:   runs    the phase's runs.csv (analysis/aggregate.py; needs bytes_sent_per_step and
                 allreduce_bytes_per_step, recorded by runs of world size > 1)
params:  phase   the phase name (selects the phase's rows of runs; in the default title)
         baseline  the uncompressed reference arm's name (e.g. muon-ddp): drawn as a reference point and a
                 dashed line at its mean final loss
         title   optional: the plot's title and the table's heading (default "<phase>: final validation loss
                 vs bytes sent per step per rank", no heading in the table)
output:  png     the plot
         md      optional: the Markdown table (arm, variant, n, failures, mean final loss, bytes/step/rank,
                 ratio to all-reduce, on the front)
log:     one file
"""
from _script import logged

from analysis.aggregate import read_runs
from analysis.pareto import make_pareto

sm = snakemake  # noqa: F821
with logged(sm, "pareto") as log:
    title = getattr(sm.params, "title", None)
    md = getattr(sm.output, "md", None)
    s = make_pareto(read_runs(sm.input.runs), str(sm.output.png), str(md) if md else None,
                    str(sm.params.baseline), phase=str(sm.params.phase), title=str(title) if title else None)
    log.info("wrote %s%s (%d configurations)", sm.output.png, f" and {md}" if md else "", len(s))
