"""Hostile paths: a checkout under a directory whose name holds shell syntax or spaces runs the rules as
written, and no part of the name is executed (issue 14, item 1)."""

from __future__ import annotations

import pytest

from tests.workflow_helpers import copy_workflow, snakemake

pytestmark = pytest.mark.slow


def test_a_checkout_path_with_shell_syntax_is_never_executed(tmp_path):
    wf = copy_workflow(tmp_path / "x$(touch PWNED)y z" / "wf")
    result = snakemake(wf, "results/data/stdlib/manifest.json", "--cores", "1")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert (wf / "results" / "data" / "stdlib" / "train.bin").stat().st_size > 0
    assert not list(tmp_path.rglob("PWNED")), "a command in the checkout's path was executed"
