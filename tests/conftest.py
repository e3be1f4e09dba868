"""Session-wide fixtures: workflow results that several test modules read, made once."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.workflow_helpers import SHORT_TINY, copy_workflow, write_config

SHORT_TINY_ARGS = ("--config", "tiny=true", "--configfile", "short.yaml")


@pytest.fixture(scope="session")
def short_twin_phase1_started(tmp_path_factory):
    """Starts the run short_twin_phase1 waits for, in the background, and yields (workflow, process, log).
    A module whose tests mostly wait (tests/test_slurm_cluster.py: Slurm's status polling) asks for it early
    through tests.workflow_helpers.start_early, so that the run's CPU time fills those waits."""
    wf = copy_workflow(tmp_path_factory.mktemp("short_twin_phase1"))
    write_config(wf / "short.yaml", SHORT_TINY)
    log = wf / "snakemake.out"
    with open(log, "w") as out:  # a file, not a pipe: nobody reads it while it runs
        proc = subprocess.Popen([sys.executable, "-m", "snakemake", "phase1", *SHORT_TINY_ARGS, "--cores", "2"],
                                cwd=wf, stdout=out, stderr=subprocess.STDOUT, text=True)
    yield wf, proc, log
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def short_twin_phase1(short_twin_phase1_started):
    """Phase 1 of the default study's CPU twin, shortened (SHORT_TINY), run once by real Snakemake for the
    session: tests/test_workflow_run.py works on a copy of it (copy_finished), tests/test_slurm_workflow.py
    compares the Slurm runs with its records. Read it; copy it before changing anything."""
    wf, proc, log = short_twin_phase1_started
    try:
        proc.wait(timeout=1200)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 0, log.read_text()[-4000:]
    return wf
