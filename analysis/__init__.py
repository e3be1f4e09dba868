"""analysis: aggregate runs, test arms against the baseline, evaluate the study's gates (kinds declared in
gate_kinds.py), check the design's power before any run, select an arm for a later phase, plot, and write
the report. See docs/analysis.md for the rules; workflow/scripts/*.py are the thin Snakemake entry points."""
from .aggregate import aggregate, read_curves, read_runs
from .design import design, design_markdown, warnings_for
from .gates import GATES, evaluate_gates, gates_markdown
from .report import section_markdown, write_report
from .selection import select_arm
from .stats import significance_table, read_significance

__all__ = ["aggregate", "read_runs", "read_curves", "significance_table", "read_significance", "GATES",
           "evaluate_gates", "gates_markdown", "select_arm", "section_markdown", "write_report", "design",
           "design_markdown", "warnings_for"]
