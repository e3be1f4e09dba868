"""Snakemake script: runs.csv -> significance.csv (each arm vs the baseline of the same model/family)."""
import sys
from pathlib import Path

try:
    import analysis  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))  # noqa: F821

from analysis.aggregate import read_runs
from analysis.io import setup_logging, write_csv
from analysis.stats import significance_table

sm = snakemake  # noqa: F821
log = setup_logging(sm.log[0] if sm.log else None)
try:
    p = sm.params
    table = significance_table(read_runs(sm.input.runs), str(p.baseline), confidence=float(p.confidence),
                               alpha_level=float(p.alpha_level), power=float(p.power), metric=str(p.metric))
    write_csv(table, sm.output.table)
    log.info("wrote %s (%d comparisons)", sm.output.table, len(table))
except Exception:
    log.exception("significance failed")
    raise
