"""Snakemake script: the phases' sections -> results/reports/{phase}.md and results/ABLATION_RESULTS.md."""
from _script import logged

from analysis.io import as_list
from analysis.report import write_report

sm = snakemake  # noqa: F821
with logged(sm, "report") as log:
    p = sm.params
    latest = str(getattr(p, "latest", "results/ABLATION_RESULTS.md"))
    write_report(as_list(sm.input.sections), str(sm.output.md), latest, str(p.title), as_list(p.phases))
    log.info("wrote %s and %s", sm.output.md, latest)
