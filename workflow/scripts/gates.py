"""Snakemake script: runs.csv + significance.csv + curves.csv -> gates.json and gates.md."""
from _script import logged

from analysis.aggregate import read_curves, read_runs
from analysis.gates import evaluate_gates, gates_markdown
from analysis.io import atomic_write_text, write_json
from analysis.stats import read_significance

sm = snakemake  # noqa: F821
with logged(sm, "gates") as log:
    res = evaluate_gates(read_runs(sm.input.runs), read_significance(sm.input.significance),
                         read_curves(sm.input.curves), dict(sm.params.gates or {}), str(sm.params.baseline),
                         str(sm.params.phase))
    write_json(res, sm.output.json)
    atomic_write_text(sm.output.md, gates_markdown(res))
    log.info("phase %s gates: passed=%s", res["phase"], res["passed"])
