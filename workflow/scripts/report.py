"""Snakemake script: the phases' sections -> results/reports/{phase}.md and the latest report.

input:   sections (section.md per phase, in phase order); optional design_md (design.md of the design check);
         optional design_json (design.json: its planned cost per phase) with runs (runs.csv per phase, in
         phase order): the cost table, planned beside measured and projected (analysis/costs.py)
params:  title (escaped here), phases, latest (default results/ABLATION_RESULTS.md); optional usd_per_gpu_hour;
         optional tiny (bool: say in the first lines that this is the CPU twin), summary (or description: the
         study's text, escaped here)
output:  md; optional html (the landing page of `snakemake --report`: needs the inputs gates, runs (per
         phase, in phase order), design_csv, optional selections, and params questions ({phase: text}))
"""
from pathlib import Path

from _script import logged

from analysis.io import as_list
from analysis.report import write_report

sm = snakemake  # noqa: F821
with logged(sm, "report") as log:
    p = sm.params
    latest = str(getattr(p, "latest", "results/ABLATION_RESULTS.md"))
    design_md = Path(sm.input.design_md).read_text(encoding="utf-8") if "design_md" in sm.input.keys() else ""
    text = getattr(p, "summary", None) or getattr(p, "description", None) or ""
    cost_md = ""
    if "design_json" in sm.input.keys() and "runs" in sm.input.keys():
        import json

        from analysis.aggregate import read_runs
        from analysis.costs import cost_markdown, cost_rows

        dj = json.loads(Path(sm.input.design_json).read_text(encoding="utf-8"))
        runs = {ph: read_runs(f) for ph, f in zip(as_list(p.phases), as_list(sm.input.runs))}
        usd = float(getattr(p, "usd_per_gpu_hour", 0) or 0)
        cost_md = cost_markdown(cost_rows(dj.get("cost") or {}, runs, usd), dj.get("rows") or [], usd,
                                tiny=bool(getattr(p, "tiny", False)))
    write_report(as_list(sm.input.sections), str(sm.output.md), latest, str(p.title), as_list(p.phases),
                 tiny=bool(getattr(p, "tiny", False)), description=str(text), design_md=design_md,
                 cost_md=cost_md)
    log.info("wrote %s and %s", sm.output.md, latest)
    if "html" in sm.output.keys():
        import json

        from analysis.html import landing_html
        from analysis.io import atomic_write_text

        phases = as_list(p.phases)
        selections = {Path(f).parent.name: json.loads(Path(f).read_text()) for f in as_list(sm.input.selections)}
        entries = [{"phase": ph, "question": str(dict(p.questions)[ph]), "runs_csv": runs,
                    "gates": json.loads(Path(gates).read_text()), "selection": selections.get(ph)}
                   for ph, gates, runs in zip(phases, as_list(sm.input.gates), as_list(sm.input.runs))]
        atomic_write_text(sm.output.html, landing_html(str(p.title), str(text), entries, sm.input.design_csv,
                                                       tiny=bool(getattr(p, "tiny", False))))
        log.info("wrote %s", sm.output.html)
