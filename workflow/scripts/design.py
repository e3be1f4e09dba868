"""Snakemake script: the design check (analysis/design.py), before any GPU-hour.

input:   optional runs (list: the runs.csv of phases that already exist; phase i's noise estimate pools
         the phases before it in params.order); nothing else, so it runs in a dry study
params:  phases ({phase: {seeds, baseline, configs: [{model, arm, variant, role}], gates: {instance: {kind,
         ...}}, gpu_hours_per_run: number | {model: number} | None, n_runs (optional)}}),
         order (phase names in study order; default the keys of phases),
         prior_sd (sd of the per-seed final loss as a fraction of the loss when no earlier phase measured
         it; default 0.005), prior_sd_other (for metric_higher / reaches_target_sooner; default 0.05),
         usd_per_gpu_hour (default 0), power_target (default 0.8), power_floor (the study's default for
         statistical gates that set none; default each gate's own, 0.8), tiny (the CPU twin: the cost lines
         say they are the twin's time limits at the real study's price)
output:  csv (design.csv: one row per phase x statistical gate, analysis.design.COLUMNS),
         md (design.md: the table and one line per underpowered gate with the seeds that fix it),
         json (design.json: {"rows": [...], "warnings": [...], "noise": {phase: {"sd", "source"}}, "cost":
         {phase: {runs, runs_by_model, gpu_hours_per_run, gpu_hours}}}; the gates and significance scripts read
         its noise sd, the report its planned cost (analysis/costs.py)); optional html (design.html: the table as a page
         for `snakemake --report`, with the underpowered gates' lines)
Underpowered gates are logged as warnings.
"""
import json

from _script import logged

import pandas as pd

from analysis.aggregate import read_runs
from analysis.design import COLUMNS, design, design_markdown, noise_from_runs, warnings_for
from analysis.io import as_list, atomic_write_text, write_csv, write_json

sm = snakemake  # noqa: F821
with logged(sm, "design") as log:
    p = sm.params
    # a dict, or JSON text (the workflow passes it untracked: GPU-hour estimates must not re-run the analysis)
    phases = p.phases if isinstance(p.phases, dict) else json.loads(str(p.phases))
    order = list(getattr(p, "order", None) or phases)
    tables = [read_runs(x) for x in as_list(sm.input.runs)] if "runs" in sm.input.keys() else []
    noise = noise_from_runs(tables, order)
    prior = float(getattr(p, "prior_sd", None) or 0.005)
    rows = design({k: phases[k] for k in order if k in phases}, prior_sd=prior,
                  prior_sd_other=float(getattr(p, "prior_sd_other", None) or 0.05), noise=noise,
                  usd_per_gpu_hour=float(getattr(p, "usd_per_gpu_hour", 0) or 0),
                  power_target=float(getattr(p, "power_target", None) or 0.8),
                  power_floor=getattr(p, "power_floor", None))
    from analysis.costs import planned, project_design_rows

    # a phase's own design check has the earlier phases' runs as inputs (its noise): their measured GPU-h
    # project its at-80% cost too; the whole study's check has none and stays the plan
    rows = project_design_rows(rows, phases, tables)
    warn = warnings_for(rows)
    for w in warn:
        log.warning("%s", w)
    write_csv(pd.DataFrame(rows, columns=COLUMNS), sm.output.csv)
    atomic_write_text(sm.output.md, design_markdown(rows, tiny=bool(getattr(p, "tiny", False))))
    all_noise = {ph: {"sd": noise.get(ph, (prior, "prior"))[0], "source": noise.get(ph, (prior, "prior"))[1]}
                 for ph in order}
    cost = {ph: planned(phases[ph]) for ph in order if ph in phases}  # the report sets the measured beside it
    write_json({"rows": rows, "warnings": warn, "noise": all_noise, "cost": cost}, sm.output.json)
    if "html" in sm.output.keys():
        from analysis.html import csv_table_html, e, page

        notes = "".join(f"<li>{e(w)}</li>" for w in warn)
        atomic_write_text(sm.output.html, page("Design check", csv_table_html(sm.output.csv, table_id="table")
                                               + (f"<ul>{notes}</ul>" if notes else "")))
    log.info("design check: %d rows, %d underpowered", len(rows), len(warn))
