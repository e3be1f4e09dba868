"""Session-wide fixtures: workflow results that several test modules read, made once."""

from __future__ import annotations

import pytest

from tests.workflow_helpers import SHORT_TINY, copy_workflow, snakemake, write_config

SHORT_TINY_ARGS = ("--config", "tiny=true", "--configfile", "short.yaml")


@pytest.fixture(scope="session")
def short_twin_phase1(tmp_path_factory):
    """Phase 1 of the default study's CPU twin, shortened (SHORT_TINY), run once by real Snakemake for the
    session: tests/test_workflow_run.py works on a copy of it (copy_finished), tests/test_slurm_workflow.py
    compares the Slurm runs with its records. Read it; copy it before changing anything."""
    wf = copy_workflow(tmp_path_factory.mktemp("short_twin_phase1"))
    write_config(wf / "short.yaml", SHORT_TINY)
    result = snakemake(wf, "phase1", *SHORT_TINY_ARGS, "--cores", "2", timeout=1200)
    assert result.returncode == 0, result.stderr[-4000:]
    return wf
