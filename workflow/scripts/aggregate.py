"""Snakemake script: every run's metrics.json + history.csv -> results/{phase}/runs.csv and curves.csv."""
import sys
from pathlib import Path

try:
    import analysis  # noqa: F401
except ImportError:  # not installed: use the repository checkout
    sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))  # noqa: F821

from analysis.aggregate import aggregate
from analysis.io import as_list, setup_logging, write_csv

sm = snakemake  # noqa: F821
log = setup_logging(sm.log[0] if sm.log else None)
try:
    runs, curves = aggregate(as_list(sm.input.metrics), as_list(sm.input.histories), list(sm.params.runs),
                             str(sm.params.phase))
    write_csv(runs, sm.output.runs)
    write_csv(curves, sm.output.curves)
    log.info("wrote %s (%d rows) and %s (%d rows)", sm.output.runs, len(runs), sm.output.curves, len(curves))
except Exception:
    log.exception("aggregate failed")
    raise
