"""Snakemake script: one phase's tables, gates and plots -> results/{phase}/section.md."""
import json
import os

from _script import logged

from analysis.aggregate import read_runs
from analysis.io import as_list, atomic_write_text
from analysis.report import section_markdown
from analysis.stats import read_significance

sm = snakemake  # noqa: F821
with logged(sm, "section") as log:
    p = sm.params
    with open(sm.input.gates, encoding="utf-8") as fh:
        gates = json.load(fh)
    selection = None
    if "selection" in sm.input.keys():
        with open(sm.input.selection, encoding="utf-8") as fh:
            selection = json.load(fh)
    out = str(sm.output.md)
    results_root = os.path.dirname(os.path.dirname(os.path.abspath(out)))  # results/{phase}/section.md
    text = section_markdown(
        phase=str(p.phase), question=str(p.question), runs=read_runs(sm.input.runs),
        significance=read_significance(sm.input.significance), gates=gates, plots=as_list(sm.input.plots),
        results_root=results_root, arms=dict(p.arms or {}), usd_per_gpu_hour=float(p.usd_per_gpu_hour),
        baseline=str(p.baseline), selection=selection,
        power=float(getattr(p, "power", 0.8)), alpha_level=float(getattr(p, "alpha_level", 0.05)))
    atomic_write_text(out, text)
    log.info("wrote %s", out)
