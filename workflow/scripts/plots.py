"""Snakemake script: runs.csv + curves.csv -> the phase's four PNGs.

input:   runs, curves
params:  phase, baseline, early_steps; optional gates (the phase's gate instances: the forest plot draws
         beats_baseline's and within_baseline's thresholds)
output:  val_loss, early, forest, eff_rank (PNG paths; the old name `alpha` is accepted for `forest`)
"""
from _script import logged

from analysis.aggregate import read_curves, read_runs
from analysis.plots import make_plots

sm = snakemake  # noqa: F821
with logged(sm, "plots") as log:
    names = [k for k in ("val_loss", "early", "forest", "alpha", "eff_rank") if k in sm.output.keys()]
    out = {k: sm.output[k] for k in names}
    make_plots(read_runs(sm.input.runs), read_curves(sm.input.curves), out, str(sm.params.baseline),
               int(sm.params.early_steps), phase=str(sm.params.phase), gates=dict(getattr(sm.params, "gates", None) or {}))
    log.info("wrote %s", ", ".join(out.values()))
