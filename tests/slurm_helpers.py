"""What the Slurm tests share: the CI profile's partition and account, and whether the cluster is up."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / "profiles" / "slurm-ci"
_DEFAULTS = yaml.safe_load((PROFILE / "config.yaml").read_text())["default-resources"]
PARTITION = str(_DEFAULTS["slurm_partition"])
ACCOUNT = str(_DEFAULTS["slurm_account"])
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
            "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


def cluster_problem() -> str | None:
    """Why the local cluster cannot be used (the skip reason), or None when it is up."""
    if shutil.which("sinfo") is None:
        return "sinfo not found: Slurm is not installed (scripts/slurm_local.sh install)"
    try:
        out = subprocess.run(["sinfo", "-h", "-p", PARTITION, "-o", "%t"], capture_output=True,
                             text=True, timeout=3)
    except subprocess.TimeoutExpired:
        return "sinfo got no answer in 3 s: the local Slurm cluster is not up (scripts/slurm_local.sh up)"
    states = out.stdout.split()
    if out.returncode != 0 or not any(s.rstrip("*~#") in ("idle", "mix", "alloc") for s in states):
        why = (out.stderr.strip().splitlines() or [f"partition {PARTITION!r}: {states or 'no nodes'}"])[-1]
        return f"local Slurm cluster is not up (scripts/slurm_local.sh up): {why}"
    return None
