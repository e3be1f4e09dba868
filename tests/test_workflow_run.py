"""A complete tiny phase through the real workflow, then what re-runs after each kind of change.

One module-scoped run of phase 1 of the CPU twin (shortened to 60 steps), reused by the tests below in
order: a no-op second run, operational changes that re-run nothing, a one-arm change that re-runs
exactly that arm, a behaviour-version bump, an added alpha.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.workflow_helpers import TWIN, bump_version, copy_finished, job_counts, snakemake, write_config

pytestmark = pytest.mark.slow

def configs(wf, *extra):
    return ["--config", "tiny=true", "--configfile", "short.yaml", *extra]


def stale_runs(output: str) -> set[str]:
    return set(re.findall(TWIN + r"/runs/(\S+?)/metrics\.json", "\n".join(
        line for line in output.splitlines() if line.strip().startswith("output:"))))


def mtimes(wf):
    return {p.relative_to(wf).as_posix(): p.stat().st_mtime_ns for p in (wf / TWIN / "runs").rglob("metrics.json")}


@pytest.fixture(scope="module")
def done(tmp_path_factory, short_twin_phase1):
    """A copy of the session's phase 1 (tests/conftest.py; the same config as configs() gives), for this
    module to change."""
    return copy_finished(short_twin_phase1, tmp_path_factory.mktemp("wfrun") / "wf")


def test_phase1_produces_the_report(done):
    report = (done / TWIN / "ABLATION_RESULTS.md").read_text()
    # the copy under reports/ differs only in its image links, which point one level up
    copy = (done / TWIN / "reports" / "phase1.md").read_text()
    assert copy.replace("../phase1/plots/", "phase1/plots/") == report
    for needle in ("phase1", "muon", "orthonoise", "isotropic", "no_crashes", "phase1/plots/val_loss.png"):
        assert needle in report, needle
    gates = json.loads((done / TWIN / "phase1" / "gates.json").read_text())
    assert {g["name"] for g in gates["gates"]} == {"baseline_trains", "no_crashes", "loss_within_baseline",
                                                   "effective_rank_logged", "early_loss_not_worse"}
    for run in (done / TWIN / "runs").rglob("metrics.json"):
        metrics = json.loads(run.read_text())
        assert metrics["status"] in ("ok", "diverged")
        assert metrics["spec"]["fingerprint"] == metrics["fingerprint"]
    assert len(mtimes(done)) == 8
    for png in (done / TWIN / "phase1" / "plots").glob("*.png"):
        assert png.stat().st_size > 1000


def test_second_run_does_nothing(done):
    result = snakemake(done, "phase1", *configs(done), "-n")
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr


def test_operational_changes_rerun_nothing(done):
    write_config(done / "ops.yaml", {"wandb": {"mode": "offline", "project": "elsewhere"},
                                     "training_defaults": {"checkpoint_every": 7, "keep_checkpoints": True},
                                     "models": {"tiny": {"resources": {"cpus_per_gpu": 2, "runtime_min": 99}}}})
    result = snakemake(done, "phase1", *configs(done, "ops.yaml"), "-n")
    counts = job_counts(result.stdout + result.stderr)
    # no run is trained again; the time limit feeds the design check's GPU-hour estimate, so that (seconds
    # of analysis) and what shows it are recomputed
    assert "train" not in counts and "aggregate" not in counts, result.stdout[-3000:]
    assert set(counts) <= {"design", "design_phase", "significance", "gates", "section", "report", "phase1",
                           "total"}, counts
    wandb_only = write_config(done / "ops2.yaml", {"wandb": {"mode": "offline", "project": "elsewhere"},
                                                   "training_defaults": {"checkpoint_every": 7}})
    result = snakemake(done, "phase1", *configs(done, wandb_only.name), "-n")
    assert "Nothing to be done" in result.stdout + result.stderr, result.stdout[-3000:]


def test_one_arm_change_reruns_exactly_that_arm(done):
    write_config(done / "arm.yaml", {"arms": {"isotropic": {"muon": {"rank_threshold": 0.6}}}})
    dry = snakemake(done, "phase1", *configs(done, "arm.yaml"), "-n")
    assert stale_runs(dry.stdout) == {"tiny/isotropic/alpha0.001/seed42", "tiny/isotropic/alpha0.001/seed123"}
    counts = job_counts(dry.stdout)
    assert counts["train"] == 2 and "stdlib_corpus" not in counts
    before = mtimes(done)
    real = snakemake(done, "phase1", *configs(done, "arm.yaml"), "--cores", "2", timeout=900)
    assert real.returncode == 0, real.stderr[-3000:]
    after = mtimes(done)
    changed = {k for k in before if after[k] != before[k]}
    assert changed == {f"{TWIN}/runs/tiny/isotropic/alpha0.001/seed{s}/metrics.json" for s in (42, 123)}
    assert "Nothing to be done" in snakemake(done, "phase1", *configs(done, "arm.yaml"), "-n").stdout


def test_behaviour_version_bump_reruns_that_optimizer_only(done):
    original = bump_version(done, "MuonIsotropic")
    try:
        dry = snakemake(done, "phase1", *configs(done, "arm.yaml"), "-n")
        assert stale_runs(dry.stdout) == {"tiny/isotropic/alpha0.001/seed42",
                                          "tiny/isotropic/alpha0.001/seed123"}
    finally:
        (done / "optim" / "registry.py").write_text(original)


def test_adding_an_alpha_adds_only_its_runs(done):
    write_config(done / "alpha.yaml", {"arms": {"isotropic": {"muon": {"rank_threshold": 0.6}}},
                                       "phases": {"phase1": {"runs": [
                                           {"arm": "orthonoise", "sweep": {"param": "muon.alpha",
                                                                           "values": [1.0e-3, 5.0e-3]}},
                                           {"arm": "isotropic", "sweep": {"param": "muon.alpha", "values": [1.0e-3]}},
                                           {"arm": "orthonoise-anneal", "sweep": {"param": "muon.alpha",
                                                                                  "values": [1.0e-2]}}]}}})
    dry = snakemake(done, "phase1", *configs(done, "alpha.yaml"), "-n")
    assert stale_runs(dry.stdout) == {"tiny/orthonoise/alpha0.005/seed42", "tiny/orthonoise/alpha0.005/seed123"}


def test_a_deleted_run_record_is_trained_again_and_the_report_follows(done):
    record = done / TWIN / "runs" / "tiny" / "muon" / "alpha0" / "seed42" / "metrics.json"
    record.unlink()
    dry = snakemake(done, "phase1", *configs(done, "arm.yaml"), "-n")
    assert stale_runs(dry.stdout) == {"tiny/muon/alpha0/seed42"}
    counts = job_counts(dry.stdout)
    assert counts["train"] == 1 and counts["aggregate"] == 1 and counts["report"] == 1
    real = snakemake(done, "phase1", *configs(done, "arm.yaml"), "--cores", "2", timeout=900)
    assert real.returncode == 0, real.stderr[-3000:]
    assert record.exists()
    assert (done / TWIN / "phase1" / "runs.csv").stat().st_mtime_ns > record.stat().st_mtime_ns


def test_the_twin_never_touches_the_real_study(done):
    dry = snakemake(done, "phase1", "-n")
    out = dry.stdout + dry.stderr
    assert dry.returncode == 0, out[-2000:]
    assert "results/orthonoise/phase1/runs.csv" in out and TWIN + "/" not in out


def test_deleted_records_and_tables_are_made_again(done):
    """Issue 28.5: a deleted history.csv or spec.json of a run, or a phase's runs.csv, was never rebuilt (only
    metrics.json was asked for; an up-to-date report kept the rest out of the DAG)."""
    histories = sorted((done / TWIN / "runs").rglob("history.csv"))
    gone = {histories[0], histories[1].with_name("spec.json"), done / TWIN / "phase1" / "runs.csv"}
    for p in gone:
        p.unlink()
    dry = snakemake(done, "phase1", *configs(done, "arm.yaml"), "-n")
    assert dry.returncode == 0, dry.stderr[-2000:]
    runs = {p.parent.relative_to(done / TWIN / "runs").as_posix() for p in histories[:2]}
    assert stale_runs(dry.stdout) == runs
    assert job_counts(dry.stdout)["aggregate"] == 1
