"""The study plan: config -> runs, phases, run specs and fingerprints (no torch here)."""

from study.launch import launcher
from study.plan import PHASES, Plan, PlanError, PhaseRun, Run, fmt_alpha, read_selection

__all__ = ["PHASES", "Plan", "PlanError", "PhaseRun", "Run", "fmt_alpha", "launcher", "read_selection"]
