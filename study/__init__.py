"""The study plan: a study file -> runs, phases, run specs and fingerprints (no torch here)."""

from study.checks import PlanError
from study.launch import launcher
from study.load import StudyFileError, load_study
from study.plan import SELECTED, Plan, PhaseRun, Run, fmt_value, read_selection, variant_label

__all__ = ["SELECTED", "Plan", "PlanError", "PhaseRun", "Run", "StudyFileError", "fmt_value", "launcher",
           "load_study", "read_selection", "variant_label"]
