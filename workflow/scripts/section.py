"""Snakemake script: one phase's tables, gates and plots -> results/{phase}/section.md.

input:   runs, significance, gates (gates.json), plots (list of PNGs: val_loss, early, forest, eff_rank, and
         pareto where the phase has one); optional extra (Markdown files appended to the section: the
         phase's own analyses, e.g. DisTrO's measurement tables);
         optional selection (selection.json of this phase), optional design (design.json of the design check)
params:  phase, question, arms (arm -> settings as used), usd_per_gpu_hour, baseline;
         optional power (0.8), alpha_level (0.05), tiny (bool: the CPU twin; default False)
output:  md (section.md); optional runs_html, significance_html, gates_html (the tables as HTML pages for
         `snakemake --report`, which shows HTML inline)
"""
import json
import os

from _script import logged

from analysis.aggregate import read_runs
from analysis.io import as_list, atomic_write_text
from analysis.report import section_markdown
from analysis.stats import read_significance

sm = snakemake  # noqa: F821


def _load(name):
    if name in sm.input.keys():
        with open(sm.input[name], encoding="utf-8") as fh:
            return json.load(fh)
    return None


with logged(sm, "section") as log:
    p = sm.params
    out = str(sm.output.md)
    results_root = os.path.dirname(os.path.dirname(os.path.abspath(out)))  # results/{phase}/section.md
    text = section_markdown(
        phase=str(p.phase), question=str(p.question), runs=read_runs(sm.input.runs),
        significance=read_significance(sm.input.significance), gates=_load("gates"), plots=as_list(sm.input.plots),
        results_root=results_root, arms=dict(p.arms or {}), usd_per_gpu_hour=float(p.usd_per_gpu_hour),
        baseline=str(p.baseline), selection=_load("selection"), design=_load("design"),
        power=float(getattr(p, "power", 0.8)), alpha_level=float(getattr(p, "alpha_level", 0.05)),
        tiny=bool(getattr(p, "tiny", False)))
    for extra in (as_list(sm.input.extra) if "extra" in sm.input.keys() else []):
        # a phase's own analyses (DisTrO's measurement tables, the Pareto table): appended as written
        with open(extra, encoding="utf-8") as fh:
            text = text.rstrip() + "\n\n" + fh.read().strip() + "\n"
    atomic_write_text(out, text)
    log.info("wrote %s", out)
    if "runs_html" in sm.output.keys():
        from analysis.html import csv_page, gates_page

        phase = str(p.phase)
        atomic_write_text(sm.output.runs_html, csv_page(sm.input.runs, f"{phase}: runs", table_id="table"))
        atomic_write_text(sm.output.significance_html, csv_page(sm.input.significance, f"{phase}: significance"))
        atomic_write_text(sm.output.gates_html, gates_page(_load("gates") or {}, phase))
