"""analysis: aggregate runs, test arms against the baseline, evaluate the study's gates (kinds declared in
gate_kinds.py), check the design's power before any run, select an arm for a later phase, plot, and write
the report. See docs/analysis.md for the rules; workflow/scripts/*.py are the thin Snakemake entry points.

The names below are imported lazily, so `import analysis.gate_kinds` (the config checks) and
`analysis.design.design` (the dry run) do not pay for pandas and matplotlib."""
import importlib

_WHERE = {"aggregate": "aggregate", "read_runs": "aggregate", "read_curves": "aggregate",
          "design_markdown": "design", "warnings_for": "design",  # the function design: analysis.design.design
          "GATES": "gates", "evaluate_gates": "gates", "gates_markdown": "gates",
          "section_markdown": "report", "write_report": "report", "select_arm": "selection",
          "significance_table": "stats", "read_significance": "stats"}
__all__ = list(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")
