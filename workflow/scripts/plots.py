"""Snakemake script: runs.csv + curves.csv -> the phase's four PNGs."""
from _script import logged

from analysis.aggregate import read_curves, read_runs
from analysis.plots import make_plots

sm = snakemake  # noqa: F821
with logged(sm, "plots") as log:
    out = {k: sm.output[k] for k in ("val_loss", "early", "alpha", "eff_rank")}
    make_plots(read_runs(sm.input.runs), read_curves(sm.input.curves), out, str(sm.params.baseline),
               int(sm.params.early_steps), phase=str(sm.params.phase))
    log.info("wrote %s", ", ".join(out.values()))
