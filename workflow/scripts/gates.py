"""Snakemake script: runs.csv + significance.csv + curves.csv -> gates.json and gates.md."""
import sys
from pathlib import Path

try:
    import analysis  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1]))  # noqa: F821

from analysis.aggregate import read_curves, read_runs
from analysis.gates import evaluate_gates, gates_markdown
from analysis.io import atomic_write_text, setup_logging, write_json
from analysis.stats import read_significance

sm = snakemake  # noqa: F821
log = setup_logging(sm.log[0] if sm.log else None)
try:
    res = evaluate_gates(read_runs(sm.input.runs), read_significance(sm.input.significance),
                         read_curves(sm.input.curves), dict(sm.params.gates or {}), str(sm.params.baseline),
                         str(sm.params.phase))
    write_json(res, sm.output.json)
    atomic_write_text(sm.output.md, gates_markdown(res))
    log.info("phase %s gates: passed=%s", res["phase"], res["passed"])
except Exception:
    log.exception("gates failed")
    raise
