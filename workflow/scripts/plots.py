"""Snakemake script: runs.csv + curves.csv -> the phase's four PNGs."""
import sys
from pathlib import Path

try:
    import analysis  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))  # noqa: F821

from analysis.aggregate import read_curves, read_runs
from analysis.io import setup_logging
from analysis.plots import make_plots

sm = snakemake  # noqa: F821
log = setup_logging(sm.log[0] if sm.log else None)
try:
    out = {k: sm.output[k] for k in ("val_loss", "early", "alpha", "eff_rank")}
    make_plots(read_runs(sm.input.runs), read_curves(sm.input.curves), out, str(sm.params.baseline),
               int(sm.params.early_steps), phase=str(sm.params.phase))
    log.info("wrote %s", ", ".join(out.values()))
except Exception:
    log.exception("plots failed")
    raise
