"""Snakemake script: the phases' sections -> results/reports/{phase}.md and results/ABLATION_RESULTS.md."""
import sys
from pathlib import Path

try:
    import analysis  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))  # noqa: F821

from analysis.io import as_list, setup_logging
from analysis.report import write_report

sm = snakemake  # noqa: F821
log = setup_logging(sm.log[0] if sm.log else None)
try:
    p = sm.params
    latest = str(getattr(p, "latest", "results/ABLATION_RESULTS.md"))
    write_report(as_list(sm.input.sections), str(sm.output.md), latest, str(p.title), as_list(p.phases))
    log.info("wrote %s and %s", sm.output.md, latest)
except Exception:
    log.exception("report failed")
    raise
