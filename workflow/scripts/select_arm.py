"""Snakemake checkpoint script: phase-2 significance + gates -> results/phase3/selection.json (always written;
the Snakefile decides whether phase 3 may go on)."""
import json

from _script import logged

from analysis.io import write_json
from analysis.selection import select_arm
from analysis.stats import read_significance

sm = snakemake  # noqa: F821
with logged(sm, "select_arm") as log:
    with open(sm.input.gates, encoding="utf-8") as fh:
        gates = json.load(fh)
    arms = getattr(sm.params, "candidate_arms", None)  # optional: restrict the candidates
    sel = select_arm(read_significance(sm.input.significance), gates, bool(sm.params.force),
                     list(arms) if arms else None)
    write_json(sel, sm.output.json)
    log.info("selection: arm=%s alpha=%s gate_passed=%s forced=%s: %s", sel["arm"], sel["alpha"],
             sel["gate_passed"], sel["forced"], sel["reason"])
