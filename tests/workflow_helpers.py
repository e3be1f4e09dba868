"""Run the real Snakemake CLI on a private copy of the workflow (tests never touch the repo's results/)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
# Everything a workflow run needs; the packages are copied too, so the workflow's code (and the
# behaviour versions the fingerprints read) is the copy's, which a test may edit.
WORKFLOW_PARTS = ["Snakefile", "rules", "config", "profiles", "envs", "report", "workflow",
                  "optim", "trainer", "study", "analysis"]


# The CPU twin's phase 1 shortened to 60 steps: what the workflow tests run for real
# (`snakemake phase1 --config tiny=true --configfile short.yaml`: merged over the study's twin).
SHORT_TINY = {
    "training_defaults": {"eval_every": 20, "eval_at_steps": [20, 40, 60], "checkpoint_every": 20,
                          "warmup_steps": 5},
    "models": {"tiny": {"steps": 60}, "tiny-large": {"steps": 60}, "tiny-scratch": {"steps": 60}},
    "wandb": {"mode": "disabled"},
    "phases": {"phase1": {"gates": {
        "no_crashes": {"kind": "no_crashes"},
        "loss_within_baseline": {"kind": "within_baseline", "margin": 0.05},
        "effective_rank_logged": {"kind": "metric_logged", "metric": "eff_rank_mean"},
        "early_loss_not_worse": {"kind": "not_worse_than_baseline", "step": 20, "margin": 0.01}}},
        # the later phases' gate steps must be steps these shorter models evaluate (checked before any job)
        "phase2": {"gates": {"early_loss_not_worse": {"step": 20}}},
        "phase3": {"gates": {"early_loss_not_worse": {"step": 20}}}},
}
TWIN = "results/orthonoise-tiny"  # where the default study's CPU twin writes


def copy_workflow(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for part in WORKFLOW_PARTS:
        src = REPO / part
        if src.is_dir():
            shutil.copytree(src, dest / part, ignore=shutil.ignore_patterns("__pycache__"),
                            dirs_exist_ok=True)
        else:
            shutil.copy2(src, dest / part)
    return dest


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def snakemake(workdir: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """`snakemake ARGS` in workdir, as a user types it; never raises on a non-zero exit."""
    cmd = [sys.executable, "-m", "snakemake", *args]
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout)


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run: rule -> count (including 'total')."""
    counts, in_table = {}, False
    for line in output.splitlines():
        if line.startswith("Job stats:"):
            in_table, counts = True, {}
            continue
        if in_table:
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                counts[parts[0]] = int(parts[1])
            elif counts and not line.strip():
                in_table = False
    return counts


def custom_study(wf: Path, name: str, mutate) -> str:
    """A copy of config/studies/NAME.yaml changed by mutate(study) (lists and gates replaced, not merged,
    which a --configfile overlay cannot do), written into the workflow copy; returns `study=PATH`."""
    study = yaml.safe_load((wf / "config" / "studies" / f"{name}.yaml").read_text())
    mutate(study)
    path = wf / f"custom-{name}.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return f"study={path.name}"


def put(*path_value):
    """A mutation of a study (for custom_study and the planning tests): put(KEY, ..., KEY, VALUE) sets the
    value at that path of keys."""
    *path, value = path_value

    def mutate(c):
        node = c
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return mutate


def copy_finished(src: Path, dest: Path) -> Path:
    """A finished workflow directory copied with its results, logs and Snakemake's records (mtimes kept, so
    Snakemake finds it as up to date as the original)."""
    shutil.copytree(src, dest, symlinks=True)
    return dest


def bump_version(code_root: Path, name: str) -> str:
    """Add one to the behaviour version of optimizer class or feature NAME in code_root's optim/registry.py
    (what a change to its numbers must do); returns the file's text before, to restore it."""
    import re

    registry = Path(code_root) / "optim" / "registry.py"
    original = registry.read_text()
    pattern = rf'("{re.escape(name)}": (?:Optimizer\("[\w.]+", version=|\())(\d+)'
    text, n = re.subn(pattern, lambda m: f"{m[1]}{int(m[2]) + 1}", original)
    assert n == 1, f"no version of {name} in {registry}"
    registry.write_text(text)
    return original


def start_early(request, fixture: str, needed_by: str) -> None:
    """Sets up the (session) fixture `fixture` now, if a test of this session asks for `needed_by`; else does
    nothing (a lone module run must not train what nobody reads). For fixtures that start a run in the
    background, so that it trains while the tests of the calling module wait."""
    if any(needed_by in getattr(item, "fixturenames", ()) for item in request.session.items):
        request.getfixturevalue(fixture)
